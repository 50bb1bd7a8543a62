//! The SSE fan-out: live events written straight to every subscriber's socket.
//!
//! Through hyper, a delivery wakes the subscriber's connection task, which polls hyper's
//! dispatcher, the response body, the subscription and the socket's guard before the one
//! `writev` that matters: about 4 µs of our code per delivery, on top of the kernel's 7 µs.
//! Here a live SSE subscriber is a [`Member`] of a [`Hub`] shard, and the shard's task writes
//! each new batch of events to every member's socket with one non-blocking `write` apiece:
//! one chunk of the response (chunked transfer encoding, as hyper would frame it), rendered
//! once per batch and filter and shared by all members.
//!
//! A member the shard cannot write to whole (its socket buffer is full) is *detached*: its
//! own task (the response body, polled by hyper) finishes the partial chunk, then reads the
//! bus's tail after the member's cursor and writes it the same way, waiting for the socket,
//! until it has caught up and *attaches* again. So a slow reader costs the shard nothing,
//! and what it is owed lives in the tail, shared, not in a queue of its own. One that falls
//! out of the tail is cut off, as any live subscriber is (it resumes by cursor), and one
//! whose socket takes nothing for the write-stall time is closed.
//!
//! Only live delivery happens here: the subscription replays from the database and hands
//! over once it is at the tail's head. A response is taken over only when hyper frames it
//! with chunked encoding (HTTP/1.1) and its bytes can be kept apart from hyper's (see
//! [`Outlet`]).

use std::{
    collections::BTreeMap,
    io,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll, Waker},
    time::Duration,
};

use bytes::{BufMut, Bytes, BytesMut};
use tokio::{sync::watch, time::Instant};

use super::{ChangeBus, Filter, StoredEvent, bus::TailRead};
use crate::{metrics::METRICS, net::Outlet};

/// Events a shard or a detached member reads from the tail at a time.
const READ_BATCH: usize = 256;
/// The most a detached member renders at a time, in bytes of frames (at least one event):
/// about what a socket that had filled up takes at once, so a reader that stopped holds one
/// such chunk, not a batch.
const DETACHED_CHUNK: usize = 16 * 1024;
/// Members a shard writes to before it lets other tasks run, then takes in the events they
/// committed meanwhile (see [`Chunks::refresh`]). A request, and each statement of a commit,
/// on the shard's thread waits for this: when the round is long (many members, some still
/// filling their buffers), a commit's few round trips to the database would each wait out
/// a long stretch of writes.
const YIELD_EVERY: usize = 64;
/// A keep-alive comment, as one chunk.
const KEEP_ALIVE_CHUNK: &[u8] = b"3\r\n:\n\n\r\n";

pub struct Hub {
    bus: Arc<ChangeBus>,
    shards: Vec<Arc<Shard>>,
    next_shard: AtomicUsize,
    next_id: AtomicU64,
}

/// A set of members and the task that writes to them.
struct Shard {
    state: Mutex<ShardState>,
}

struct ShardState {
    /// The last event the shard has taken for its members: a member whose cursor is here
    /// (or past it) may attach, because the shard's next batch starts after it.
    cursor: i64,
    /// By member id, which is join order: the shard writes to its members in about the order
    /// their connections were opened, so the kernel's structures for those sockets are
    /// walked in about the order they were allocated. In a hash map's order each write
    /// landed somewhere else in memory, and cost ~13 % more (`bench fanout`).
    attached: BTreeMap<u64, Arc<Member>>,
    /// Batches taken so far: each starts at another member (see [`ShardState::in_turn`]).
    batches: u64,
    closed: bool,
}

/// One live SSE response's state, shared by the shard and the response's own task.
struct Member {
    id: u64,
    outlet: Arc<Outlet>,
    filter: Filter,
    state: Mutex<MemberState>,
}

struct MemberState {
    /// In the shard's `attached` map: the shard writes to it.
    attached: bool,
    /// The last event written to the socket, or into `owed`.
    cursor: i64,
    /// The unwritten end of a chunk the socket did not take whole.
    owed: Option<Bytes>,
    end: Option<End>,
    /// The response's task, woken when the member is detached or ended.
    waker: Option<Waker>,
}

/// Why a member stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// The server is shutting down.
    Closed,
    /// Fell out of the tail: it resumes from the log by cursor.
    CutOff,
    /// The socket failed: the peer is gone.
    Failed,
}

/// How a member's stream ends, for the response body.
pub enum Ending {
    /// Every chunk went out whole: the response can end properly.
    Clean,
    /// It cannot end properly (a chunk is half written, or the socket failed or stalled):
    /// the connection must be dropped.
    Abort(io::Error),
}

impl Hub {
    /// A hub with `shards` shards (one per worker thread), whose tasks run until the bus
    /// closes.
    pub fn start(bus: Arc<ChangeBus>, shards: usize) -> Arc<Self> {
        // Each shard watches the head from the cursor it starts at: no event in between.
        let heads: Vec<_> = (0..shards.max(1)).map(|_| bus.subscribe_head()).collect();
        let hub = Arc::new(Self {
            shards: heads
                .iter()
                .map(|head| {
                    Arc::new(Shard {
                        state: Mutex::new(ShardState {
                            cursor: *head.borrow(),
                            attached: BTreeMap::new(),
                            batches: 0,
                            closed: false,
                        }),
                    })
                })
                .collect(),
            bus,
            next_shard: AtomicUsize::new(0),
            next_id: AtomicU64::new(0),
        });
        for (shard, head) in hub.shards.iter().zip(heads) {
            tokio::spawn(hub.clone().run_shard(shard.clone(), head));
        }
        hub
    }

    /// Takes over a live SSE response at `cursor` (everything up to it already handed to
    /// hyper); [`Membership::run`] then delivers the rest.
    pub fn join(self: &Arc<Self>, outlet: Arc<Outlet>, filter: Filter, cursor: i64) -> Membership {
        let shard = self.next_shard.fetch_add(1, Ordering::Relaxed) % self.shards.len();
        Membership {
            hub: self.clone(),
            shard: self.shards[shard].clone(),
            member: Arc::new(Member {
                id: self.next_id.fetch_add(1, Ordering::Relaxed),
                outlet,
                filter,
                state: Mutex::new(MemberState {
                    attached: false,
                    cursor,
                    owed: None,
                    end: None,
                    waker: None,
                }),
            }),
        }
    }

    async fn run_shard(self: Arc<Self>, shard: Arc<Shard>, mut head: watch::Receiver<i64>) {
        let delivered = METRICS.delivered_counter("sse");
        loop {
            tokio::select! {
                changed = head.changed() => if changed.is_err() { break },
                () = self.bus.closing().cancelled() => break,
            }
            delivered.inc_by(self.distribute(&shard).await);
        }
        let members: Vec<_> = {
            let mut state = lock(&shard.state);
            state.closed = true;
            std::mem::take(&mut state.attached).into_values().collect()
        };
        for member in members {
            member.end(End::Closed);
        }
    }

    /// Writes the events after the shard's cursor to its attached members; returns how many
    /// deliveries it made.
    async fn distribute(&self, shard: &Shard) -> u64 {
        let mut delivered = 0;
        loop {
            let (events, members) = {
                let mut state = lock(&shard.state);
                if state.attached.is_empty() {
                    // Nobody to write to: whoever attaches next starts from the head.
                    state.cursor = state.cursor.max(self.bus.head());
                    return delivered;
                }
                match self.bus.read(state.cursor, READ_BATCH) {
                    TailRead::Events(events) if events.is_empty() => return delivered,
                    TailRead::Events(events) => {
                        state.cursor = events.last().expect("not empty").id;
                        (events, state.in_turn())
                    }
                    TailRead::Behind => {
                        // The shard fell out of the tail: every member reads for itself,
                        // and is cut off if it is out of the tail too.
                        state.cursor = self.bus.head();
                        let members: Vec<_> =
                            std::mem::take(&mut state.attached).into_values().collect();
                        drop(state);
                        for member in members {
                            member.detach();
                        }
                        return delivered;
                    }
                }
            };
            let mut chunks = Chunks::new(events);
            let mut detached = Vec::new();
            for (i, member) in members.iter().enumerate() {
                if i > 0 && i % YIELD_EVERY == 0 {
                    tokio::task::yield_now().await;
                    chunks.refresh(&self.bus);
                }
                match member.offer(&mut chunks) {
                    Offered::Delivered(n) => delivered += n as u64,
                    Offered::Skipped => {}
                    Offered::Detached => detached.push(member.id),
                }
            }
            if !detached.is_empty() {
                let mut state = lock(&shard.state);
                for id in detached {
                    // Unless its task attached it again meanwhile.
                    if let Some(member) = state.attached.get(&id)
                        && !lock(&member.state).attached
                    {
                        state.attached.remove(&id);
                    }
                }
            }
            if chunks.events.len() < READ_BATCH {
                return delivered;
            }
        }
    }
}

impl ShardState {
    /// The attached members for the next batch: in join order, but starting at another
    /// member each batch. A member's place in the round is its share of the latency, so no
    /// subscriber is always written last (those that joined last would be). The starts
    /// follow the golden ratio, which spreads them evenly over the round at any size.
    fn in_turn(&mut self) -> Vec<Arc<Member>> {
        let mut members: Vec<_> = self.attached.values().cloned().collect();
        let golden = (self.batches as f64 * 0.618_033_988_749_895).fract();
        let len = members.len();
        if len > 1 {
            members.rotate_left((golden * len as f64) as usize % len);
        }
        self.batches += 1;
        members
    }
}

/// The chunks of one batch of events, each rendered once per filter and starting point.
struct Chunks {
    events: Vec<StoredEvent>,
    /// By filter and the index of the first event the chunk carries.
    rendered: Vec<(Filter, usize, Bytes, usize)>,
}

impl Chunks {
    fn new(events: Vec<StoredEvent>) -> Self {
        Self {
            events,
            rendered: Vec::with_capacity(1),
        }
    }

    fn last_id(&self) -> i64 {
        self.events.last().map_or(i64::MIN, |e| e.id)
    }

    /// Takes into the batch the events committed since it was read (up to [`READ_BATCH`]),
    /// for the members the round has not reached yet. When the round takes longer than the
    /// events come (many members, some still filling their buffers), a member would
    /// otherwise wait for the rest of this round and its place in the next one; this way an
    /// event waits at most about one round. The shard's cursor stays where the batch began,
    /// so the members already written get the new events in the next round.
    fn refresh(&mut self, bus: &ChangeBus) {
        let room = READ_BATCH.saturating_sub(self.events.len());
        if room == 0 || bus.head() <= self.last_id() {
            return;
        }
        if let TailRead::Events(newer) = bus.read(self.last_id(), room)
            && !newer.is_empty()
        {
            self.events.extend(newer);
            self.rendered.clear();
        }
    }

    /// What a member at `cursor` is owed of the batch, as one chunk for its filter, and how
    /// many events that carries; `None` when it has the whole batch.
    fn after(&mut self, cursor: i64, filter: &Filter) -> Option<(Bytes, usize)> {
        let start = self.events.partition_point(|e| e.id <= cursor);
        if start == self.events.len() {
            return None;
        }
        if let Some((.., chunk, n)) = self
            .rendered
            .iter()
            .find(|(f, at, ..)| *at == start && f == filter)
        {
            return Some((chunk.clone(), *n));
        }
        let (chunk, n) = render(&self.events[start..], filter).expect("not empty");
        self.rendered
            .push((filter.clone(), start, chunk.clone(), n));
        Some((chunk, n))
    }
}

/// Events as one chunk of a chunked response: the events a filter passes and, when the
/// batch ends in events it hides, an `id:` line that moves the client's cursor past them.
/// `None` for no events.
fn render(events: &[StoredEvent], filter: &Filter) -> Option<(Bytes, usize)> {
    let last = events.last()?.id;
    let matching: Vec<&StoredEvent> = events.iter().filter(|e| filter.matches(e)).collect();
    let trailing = (matching.last().map(|e| e.id) != Some(last)).then(|| format!("id: {last}\n\n"));
    let len = matching.iter().map(|e| e.sse.len()).sum::<usize>()
        + trailing.as_ref().map_or(0, String::len);
    let head = format!("{len:X}\r\n");
    let mut chunk = BytesMut::with_capacity(head.len() + len + 2);
    chunk.put_slice(head.as_bytes());
    for event in &matching {
        chunk.put_slice(&event.sse);
    }
    if let Some(trailing) = trailing {
        chunk.put_slice(trailing.as_bytes());
    }
    chunk.put_slice(b"\r\n");
    Some((chunk.freeze(), matching.len()))
}

/// What [`Member::offer`] did.
enum Offered {
    /// Written whole; the number of events.
    Delivered(usize),
    /// Nothing for this member (it already had the batch, or it is not attached).
    Skipped,
    /// The member's own task takes over (the socket did not take the chunk whole, or it
    /// failed, or hyper holds bytes).
    Detached,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Member {
    /// The shard's delivery of a batch.
    fn offer(&self, chunks: &mut Chunks) -> Offered {
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
        let Some((chunk, n)) = chunks.after(state.cursor, &self.filter) else {
            return Offered::Skipped;
        };
        match state.write(&self.outlet, &chunk) {
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
                state.finish(End::Failed);
                Offered::Detached
            }
        }
    }

    fn detach(&self) {
        lock(&self.state).detach();
    }

    fn end(&self, end: End) {
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
    fn write(&mut self, outlet: &Outlet, chunk: &Bytes) -> Wrote {
        match outlet.try_write(chunk) {
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

    fn finish(&mut self, end: End) {
        self.end.get_or_insert(end);
        self.detach();
    }
}

/// A response's place in the hub; leaving it (drop) removes the member.
pub struct Membership {
    hub: Arc<Hub>,
    shard: Arc<Shard>,
    member: Arc<Member>,
}

/// What a detached member's task does next.
enum Step {
    /// Wrote a batch from the tail (or some of it): look again.
    Wrote(usize),
    /// Attached: the shard writes from here on.
    Attached,
    Ended(End),
}

impl Membership {
    /// Delivers live events until the stream ends: waits for hyper to have written what it
    /// was handed, then writes from the tail while the member is detached and lets the shard
    /// write while it is attached. Sends a keep-alive comment after `keep_alive` without a
    /// write; gives up on a socket that takes nothing for `write_stall`.
    pub async fn run(&self, keep_alive: Duration, write_stall: Duration) -> Ending {
        let outlet = &self.member.outlet;
        std::future::poll_fn(|cx| outlet.poll_hyper_idle(cx)).await;
        let delivered = METRICS.delivered_counter("sse");
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

    fn ending(&self, end: End) -> Ending {
        let owed = lock(&self.member.state).owed.is_some();
        match end {
            End::Failed => Ending::Abort(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "writing to the stream's socket failed",
            )),
            _ if owed => Ending::Abort(io::Error::other("the stream ended mid-chunk")),
            End::Closed | End::CutOff => Ending::Clean,
        }
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
            match outlet.try_write(&owed) {
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
            let ready = std::future::poll_fn(|cx| outlet.poll_write_ready(cx));
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

    /// One step of a detached member, with nothing owed: write the tail after its cursor,
    /// or attach when there is none.
    fn step(&self) -> Step {
        let member = &self.member;
        let cursor = {
            let state = lock(&member.state);
            if let Some(end) = state.end {
                return Step::Ended(end);
            }
            state.cursor
        };
        if self.hub.bus.closing().is_cancelled() {
            return Step::Ended(End::Closed);
        }
        let mut events = match self.hub.bus.read(cursor, READ_BATCH) {
            TailRead::Behind => {
                tracing::warn!(
                    cursor,
                    "subscriber fell behind the live stream; cutting it off"
                );
                METRICS.slow_cut_off.inc();
                return Step::Ended(End::CutOff);
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
        let Some((chunk, n)) = render(&events, &member.filter) else {
            return self.attach(cursor);
        };
        let mut state = lock(&member.state);
        state.cursor = events.last().expect("rendered").id;
        match state.write(&member.outlet, &chunk) {
            Wrote::Whole | Wrote::Partly => {}
            Wrote::Full => state.owed = Some(chunk),
            Wrote::Failed => return Step::Ended(End::Failed),
        }
        Step::Wrote(n)
    }

    /// Attaches the member at `cursor` if the shard's next batch starts right after it (or
    /// before it: the shard then writes it only the events after its cursor); else there is
    /// more to read.
    fn attach(&self, cursor: i64) -> Step {
        let mut shard = lock(&self.shard.state);
        if shard.closed {
            return Step::Ended(End::Closed);
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

    /// Waits while attached, sending keep-alives; `None` once detached (there is tail to
    /// write), or how it ended.
    async fn attached(&self, keep_alive: Duration) -> Option<End> {
        let outlet = &self.member.outlet;
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
    fn poll_detached(&self, cx: &mut Context<'_>) -> Poll<Option<End>> {
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
        match state.write(&member.outlet, &chunk) {
            Wrote::Whole => {}
            Wrote::Partly => state.detach(),
            Wrote::Full => {
                state.owed = Some(chunk);
                state.detach();
            }
            Wrote::Failed => state.finish(End::Failed),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Entity, EventKind};

    /// CPU time this thread has used (from `/proc`, in clock ticks of 10 ms).
    fn thread_cpu() -> Duration {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        // The fields after the command name, which is in parentheses.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        Duration::from_millis(ticks * 10)
    }

    /// A member whose socket takes nothing when its keep-alive is due waits for the socket
    /// without using the CPU, and is cut off after the write-stall time.
    #[tokio::test(flavor = "current_thread")]
    async fn a_keep_alive_the_socket_cannot_take_stalls_out_without_spinning() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::db::Db::connect(&format!("sqlite://{}/h.db", dir.path().display()))
            .await
            .unwrap();
        db.migrate().await.unwrap();
        let bus = ChangeBus::new(db, 64).await.unwrap();
        let hub = Hub::start(bus.clone(), 1);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpSocket::new_v4().unwrap();
        client.set_recv_buffer_size(4096).unwrap();
        let _client = client
            .connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        socket2::SockRef::from(&server)
            .set_tcp_notsent_lowat(16 * 1024)
            .unwrap();
        let socket = crate::net::Shared::new(server);
        let outlet = socket.outlet().clone();
        // The client reads nothing: fill the socket until it takes not one more byte.
        while outlet.try_write(b":").is_ok() {}

        let membership = hub.join(outlet, Filter::default(), bus.head());
        let (keep_alive, write_stall) = (Duration::from_millis(50), Duration::from_secs(1));
        let (started, cpu) = (Instant::now(), thread_cpu());
        let ending =
            tokio::time::timeout(5 * write_stall, membership.run(keep_alive, write_stall)).await;
        let (waited, used) = (started.elapsed(), thread_cpu() - cpu);
        assert!(
            matches!(ending, Ok(Ending::Abort(ref err)) if err.kind() == io::ErrorKind::TimedOut),
            "cut off as stalled"
        );
        assert!(
            waited >= write_stall,
            "not before the write-stall time: {waited:?}"
        );
        assert!(used < waited / 4, "{used:?} of CPU in {waited:?}");
        bus.close();
    }

    fn event(id: i64, entity: Entity) -> StoredEvent {
        StoredEvent::new(id, entity, EventKind::Create, "{}", "t")
    }

    /// A chunk as a client's decoder reads it: the size line, then that many bytes, then
    /// CRLF.
    fn dechunk(chunk: &[u8]) -> String {
        let text = std::str::from_utf8(chunk).unwrap();
        let (size, rest) = text.split_once("\r\n").unwrap();
        let size = usize::from_str_radix(size, 16).unwrap();
        assert_eq!(&rest[size..], "\r\n");
        rest[..size].to_owned()
    }

    #[test]
    fn a_batch_is_one_chunk_of_the_frames_the_filter_passes() {
        let events = [event(7, Entity::Funkos), event(8, Entity::Categories)];
        let (all, n) = render(&events, &Filter::default()).unwrap();
        assert_eq!(n, 2);
        assert_eq!(
            dechunk(&all),
            format!(
                "{}{}",
                std::str::from_utf8(&events[0].sse).unwrap(),
                std::str::from_utf8(&events[1].sse).unwrap()
            )
        );
        let funkos = Filter::parse(Some("FUNKOS"), []).unwrap();
        // The batch ends in an event the filter hides: the cursor moves past it too.
        let (some, n) = render(&events, &funkos).unwrap();
        assert_eq!(n, 1);
        assert_eq!(
            dechunk(&some),
            format!("{}id: 8\n\n", std::str::from_utf8(&events[0].sse).unwrap())
        );
        // None pass: the cursor still moves past them.
        let (none, n) = render(&events[1..], &funkos).unwrap();
        assert_eq!(n, 0);
        assert_eq!(dechunk(&none), "id: 8\n\n");
        assert!(render(&[], &funkos).is_none());
        assert_eq!(dechunk(KEEP_ALIVE_CHUNK), ":\n\n");
    }
}
