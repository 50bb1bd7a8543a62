//! A live subscriber's side of the fan-out (an SSE response, a `/ws` socket): its [`Member`]
//! state, which the shard and the subscriber's own task share, and [`Membership::run`], the
//! task's part: it writes while the member is detached and waits while the shard writes.

use std::{
    io,
    sync::{Arc, Mutex},
    task::{Context, Poll, Waker},
    time::Duration,
};

use bytes::Bytes;
use tokio::time::Instant;

use super::{Chunks, DETACHED_CHUNK, Framing, Hub, KEEP_ALIVE_CHUNK, Shard, lock, render};
use crate::{
    events::{BATCH, End, Filter, tail::TailRead},
    http::net::{Outlet, Writer},
    metrics::METRICS,
};

/// One live subscriber's state, shared by the shard and the subscriber's own task.
pub(super) struct Member {
    pub(super) id: u64,
    pub(super) outlet: Arc<Outlet>,
    pub(super) framing: Framing,
    pub(super) filter: Filter,
    pub(super) state: Mutex<MemberState>,
}

pub(super) struct MemberState {
    /// In the shard's `attached` map: the shard writes to it.
    pub(super) attached: bool,
    /// The last event written to the socket, or into `owed`.
    pub(super) cursor: i64,
    /// The unwritten end of a chunk the socket did not take whole.
    pub(super) owed: Option<Bytes>,
    pub(super) end: Option<Stop>,
    /// The response's task, woken when the member is detached or ended.
    pub(super) waker: Option<Waker>,
}

/// Why a member stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Stop {
    /// The server is shutting down.
    Shutdown,
    /// Fell out of the tail: it resumes from the log by cursor.
    Slow,
    /// Writing to the socket failed: the peer is gone.
    SocketFailed,
}

/// How a member's stream ends, for its task.
pub(crate) enum Ending {
    /// Every chunk went out whole: the stream can end properly, for this reason (the
    /// subscriber resumes by cursor either way).
    Clean(End),
    /// It cannot end properly (a chunk is half written, or the socket failed or stalled):
    /// the connection must be dropped.
    Abort(io::Error),
}

/// What [`Member::offer`] did.
pub(super) enum Offered {
    /// Written whole; the number of events.
    Delivered(usize),
    /// Nothing for this member (it already had the batch, or it is not attached).
    Skipped,
    /// The member's own task takes over (the socket did not take the chunk whole, or it
    /// failed, or hyper holds bytes).
    Detached,
}

impl Member {
    /// The shard's delivery of a batch.
    pub(super) fn offer(&self, chunks: &mut Chunks) -> Offered {
        let mut state = lock(&self.state);
        if !state.attached || state.end.is_some() || state.cursor >= chunks.last_id() {
            return Offered::Skipped;
        }
        if !self.outlet.hyper_idle() {
            // Never expected: hyper holds bytes. Its task sorts it out.
            state.detach();
            return Offered::Detached;
        }
        // From the batch's start, or (a member that attached ahead of the shard, or that a
        // refreshed batch reached last round) from its cursor.
        let Some((chunk, n)) = chunks.after(state.cursor, self.framing, &self.filter) else {
            return Offered::Skipped;
        };
        match state.write(self.writer(), &self.outlet, &chunk) {
            Wrote::Whole => {
                state.cursor = chunks.last_id();
                Offered::Delivered(n)
            }
            Wrote::Partly => {
                state.cursor = chunks.last_id();
                state.detach();
                Offered::Detached
            }
            Wrote::Full => {
                state.detach();
                Offered::Detached
            }
            Wrote::Failed => {
                state.finish(Stop::SocketFailed);
                Offered::Detached
            }
        }
    }

    pub(super) fn detach(&self) {
        lock(&self.state).detach();
    }

    /// Who this member is to its socket's outlet.
    fn writer(&self) -> Writer {
        Writer::Outside(self.id)
    }

    pub(super) fn end(&self, end: Stop) {
        lock(&self.state).finish(end);
    }
}

/// What one non-blocking write of a chunk did.
enum Wrote {
    Whole,
    /// Part of it; the rest is in `owed`.
    Partly,
    /// Nothing: the socket is full.
    Full,
    Failed,
}

impl MemberState {
    /// Writes `chunk` without waiting, keeping in `owed` what the socket did not take of it.
    fn write(&mut self, writer: Writer, outlet: &Outlet, chunk: &Bytes) -> Wrote {
        if chunk.is_empty() {
            return Wrote::Whole;
        }
        match outlet.try_write(writer, chunk) {
            Ok(written) if written == chunk.len() => Wrote::Whole,
            Ok(written) => {
                self.owed = Some(chunk.slice(written..));
                Wrote::Partly
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => Wrote::Full,
            Err(_) => Wrote::Failed,
        }
    }

    fn detach(&mut self) {
        self.attached = false;
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }

    fn finish(&mut self, end: Stop) {
        self.end.get_or_insert(end);
        self.detach();
    }
}

/// A subscriber's place in the hub; leaving it (drop) removes the member.
pub(crate) struct Membership {
    pub(super) hub: Arc<Hub>,
    pub(super) shard: Arc<Shard>,
    pub(super) member: Arc<Member>,
}

/// What a detached member's task does next.
enum Step {
    /// Wrote a batch from the tail (or some of it): look again.
    Wrote(usize),
    /// Attached: the shard writes from here on.
    Attached,
    Ended(Stop),
}

impl Membership {
    /// Delivers live events until the stream ends: waits for hyper to have written what it
    /// was handed, then writes from the tail while the member is detached and lets the shard
    /// write while it is attached. Sends a keep-alive comment after `keep_alive` without a
    /// write, if given one; gives up on a socket that takes nothing for `write_stall`.
    ///
    /// Cancel-safe: what it has written and owes is in the member, so a task may drop it at
    /// any await (to read its client, say) and run it again.
    pub(crate) async fn run(&self, keep_alive: Option<Duration>, write_stall: Duration) -> Ending {
        let outlet = &self.member.outlet;
        std::future::poll_fn(|cx| outlet.poll_hyper_idle(cx)).await;
        let delivered = METRICS.delivered_counter(self.member.framing.transport());
        let mut since_yield = 0;
        loop {
            if let Err(err) = self.pay_owed(write_stall).await {
                return Ending::Abort(err);
            }
            match self.step() {
                Step::Wrote(n) => {
                    delivered.inc_by(n as u64);
                    since_yield += 1;
                    if since_yield % 16 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
                Step::Attached => {
                    if let Some(end) = self.attached(keep_alive).await {
                        return self.ending(end);
                    }
                }
                Step::Ended(end) => return self.ending(end),
            }
        }
    }

    fn ending(&self, end: Stop) -> Ending {
        let owed = lock(&self.member.state).owed.is_some();
        match end {
            Stop::SocketFailed => Ending::Abort(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "writing to the stream's socket failed",
            )),
            _ if owed => Ending::Abort(io::Error::other("the stream ended mid-chunk")),
            Stop::Shutdown => Ending::Clean(End::Shutdown),
            Stop::Slow => Ending::Clean(End::Slow),
        }
    }

    /// The last event written to the socket, or owed to it.
    pub(crate) fn cursor(&self) -> i64 {
        lock(&self.member.state).cursor
    }

    /// Leaves the hub for good, first writing what the member owes of a chunk (so that the
    /// socket's other writer finds it at a frame's end), up to `write_stall`. The membership
    /// is inert after it.
    pub(crate) async fn leave(&self, write_stall: Duration) -> io::Result<()> {
        {
            let mut shard = lock(&self.shard.state);
            shard.attached.remove(&self.member.id);
            lock(&self.member.state).attached = false;
        }
        self.pay_owed(write_stall).await
    }

    /// Writes the rest of a partly written chunk, waiting for the socket; fails when the
    /// socket takes nothing for `write_stall`.
    async fn pay_owed(&self, write_stall: Duration) -> io::Result<()> {
        let outlet = &self.member.outlet;
        let mut stalled_since = None;
        loop {
            let Some(mut owed) = lock(&self.member.state).owed.take() else {
                return Ok(());
            };
            match outlet.try_write(self.member.writer(), &owed) {
                Ok(written) => {
                    stalled_since = None;
                    if written < owed.len() {
                        let _ = owed.split_to(written);
                        lock(&self.member.state).owed = Some(owed);
                    }
                    continue;
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                Err(err) => return Err(err),
            }
            lock(&self.member.state).owed = Some(owed);
            let since = *stalled_since.get_or_insert_with(Instant::now);
            let ready =
                std::future::poll_fn(|cx| outlet.poll_write_ready(self.member.writer(), cx));
            match tokio::time::timeout_at(since + write_stall, ready).await {
                Ok(ready) => ready?,
                Err(_) => {
                    tracing::info!("closing a stream whose peer stopped reading");
                    METRICS.slow_cut_off.inc();
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the peer stopped reading",
                    ));
                }
            }
        }
    }

    /// One step of a member with nothing owed: write the tail after its cursor, or attach
    /// when there is none. An attached member (a task that runs again after it dropped
    /// [`Membership::run`]) is the shard's to write to.
    fn step(&self) -> Step {
        let member = &self.member;
        let cursor = {
            let state = lock(&member.state);
            if let Some(end) = state.end {
                return Step::Ended(end);
            }
            if state.attached {
                return Step::Attached;
            }
            state.cursor
        };
        if self.hub.tail.closing().is_cancelled() {
            return Step::Ended(Stop::Shutdown);
        }
        let mut events = match self.hub.tail.read(cursor, BATCH) {
            TailRead::Behind => {
                tracing::warn!(
                    cursor,
                    "subscriber fell behind the live stream; cutting it off"
                );
                METRICS.slow_cut_off.inc();
                return Step::Ended(Stop::Slow);
            }
            TailRead::Events(events) => events,
        };
        let mut bytes = 0;
        let fit = events
            .iter()
            .position(|e| {
                bytes += e.sse.len();
                bytes > DETACHED_CHUNK
            })
            .map_or(events.len(), |at| at.max(1));
        events.truncate(fit);
        let Some((chunk, n)) = render(&events, member.framing, &member.filter) else {
            return self.attach(cursor);
        };
        let mut state = lock(&member.state);
        state.cursor = events.last().expect("rendered").id;
        match state.write(member.writer(), &member.outlet, &chunk) {
            Wrote::Whole | Wrote::Partly => {}
            Wrote::Full => state.owed = Some(chunk),
            Wrote::Failed => return Step::Ended(Stop::SocketFailed),
        }
        Step::Wrote(n)
    }

    /// Attaches the member at `cursor` if the shard's next batch starts right after it (or
    /// before it: the shard then writes it only the events after its cursor); else there is
    /// more to read.
    fn attach(&self, cursor: i64) -> Step {
        let mut shard = lock(&self.shard.state);
        if shard.closed {
            return Step::Ended(Stop::Shutdown);
        }
        if cursor < shard.cursor {
            // The tail moved on since it was read.
            return Step::Wrote(0);
        }
        let mut state = lock(&self.member.state);
        if let Some(end) = state.end {
            return Step::Ended(end);
        }
        state.attached = true;
        shard.attached.insert(self.member.id, self.member.clone());
        Step::Attached
    }

    /// Waits while attached, sending keep-alives if it has a period for them; `None` once
    /// detached (there is tail to write), or how it ended.
    async fn attached(&self, keep_alive: Option<Duration>) -> Option<Stop> {
        let outlet = &self.member.outlet;
        let Some(keep_alive) = keep_alive else {
            return std::future::poll_fn(|cx| self.poll_detached(cx)).await;
        };
        loop {
            let since = outlet.last_write().unwrap_or_else(Instant::now);
            let waited = tokio::time::timeout_at(
                since + keep_alive,
                std::future::poll_fn(|cx| self.poll_detached(cx)),
            )
            .await;
            match waited {
                Ok(end) => return end,
                Err(_) => {
                    if outlet
                        .last_write()
                        .is_none_or(|at| at.elapsed() >= keep_alive)
                    {
                        self.keep_alive();
                    }
                }
            }
        }
    }

    /// Ready when the shard detached the member (`None`) or it ended.
    fn poll_detached(&self, cx: &mut Context<'_>) -> Poll<Option<Stop>> {
        let mut state = lock(&self.member.state);
        if let Some(end) = state.end {
            return Poll::Ready(Some(end));
        }
        if !state.attached {
            return Poll::Ready(None);
        }
        if !state
            .waker
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            state.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }

    /// A keep-alive comment, written like a batch (the member's lock keeps it from the
    /// shard's writes). One the socket cannot take whole is owed, like a partly written
    /// batch: the member detaches and its task waits for the socket, up to the write-stall
    /// time.
    fn keep_alive(&self) {
        let member = &self.member;
        let mut state = lock(&member.state);
        if state.owed.is_some() || state.end.is_some() {
            return;
        }
        let chunk = Bytes::from_static(KEEP_ALIVE_CHUNK);
        match state.write(member.writer(), &member.outlet, &chunk) {
            Wrote::Whole => {}
            Wrote::Partly => state.detach(),
            Wrote::Full => {
                state.owed = Some(chunk);
                state.detach();
            }
            Wrote::Failed => state.finish(Stop::SocketFailed),
        }
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        let mut shard = lock(&self.shard.state);
        shard.attached.remove(&self.member.id);
        let mut state = lock(&self.member.state);
        state.attached = false;
        state.waker = None;
    }
}
