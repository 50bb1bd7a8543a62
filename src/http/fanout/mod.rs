//! The fan-out: live events written straight to every subscriber's socket, for SSE responses
//! and `/ws` sockets.
//!
//! Through hyper, a delivery wakes the subscriber's connection task, which polls hyper's
//! dispatcher, the response body, the subscription and the socket's guard before the one
//! `writev` that matters; that costs more than the write itself. Here a live SSE subscriber
//! is a [`Member`] of a [`Hub`] shard, and the shard's task writes each new batch of events
//! to every member's socket with one non-blocking `write` apiece: one chunk of the response
//! (chunked transfer encoding, as hyper would frame it), rendered once per batch and filter
//! and shared by all members.
//!
//! A member the shard cannot write to whole (its socket buffer is full) is *detached*: its
//! own task (the response body, polled by hyper) finishes the partial chunk, then reads the
//! tail after the member's cursor and writes it the same way, waiting for the socket,
//! until it has caught up and *attaches* again. So a slow reader costs the shard nothing,
//! and what it is owed lives in the tail, shared, not in a queue of its own. One that falls
//! out of the tail is cut off, as any live subscriber is (it resumes by cursor), and one
//! whose socket takes nothing for the write-stall time is closed.
//!
//! Only live delivery happens here: the subscription replays from the database and hands
//! over once it is at the tail's head. A response is taken over only when hyper frames it
//! with chunked encoding (HTTP/1.1 `GET`) and its bytes can be kept apart from hyper's.
//!
//! A `/ws` socket is a member the same way, its batches rendered as WebSocket text frames
//! (a server's frames are not masked, so one rendering serves every socket with the filter).
//! Its session task still writes its own frames (answers, pings, the close) through
//! tungstenite; the socket's outlet makes the two writers take turns frame by frame
//! ([`super::net`]), and [`WsWriter`] turns that on before the session writes anything.
//!
//! Who writes when is held by types. A response body gets its bytes to hyper only as
//! [`ToHyper`] chunks, which only its [`SseWriter`] makes, marking hyper busy first; the fan-out
//! writes to the socket only once the writer has been given up to it
//! ([`SseWriter::into_fanout`]), and then only after hyper has written what it was handed.

mod member;

use std::{
    collections::BTreeMap,
    io,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
};

use bytes::{BufMut, Bytes, BytesMut};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::watch;

pub(crate) use self::member::{Ending, Membership};
use self::member::{Member, MemberState, Offered, Stop};
use super::net::Outlet;
use crate::{
    events::{BATCH, Filter, StoredEvent, Tail, tail::TailRead},
    metrics::{METRICS, Transport},
};

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

pub(crate) struct Hub {
    tail: Arc<Tail>,
    shards: Vec<Arc<Shard>>,
    next_shard: AtomicUsize,
    next_id: AtomicU64,
}

/// How a member's batches are written on its socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Framing {
    /// Chunks of a chunked HTTP/1.1 response body of Server-Sent Events.
    Sse,
    /// WebSocket text frames, one per event, holding it as `wrap` says.
    WebSocket(Wrap),
}

/// What a WebSocket text frame holds of its event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Wrap {
    /// The event's JSON (`/ws`).
    Plain,
    /// A Socket.IO EVENT packet: `head` (its type, namespace, `[` and the event's name),
    /// the event's JSON, then its cursor as the last argument.
    SocketIo { head: &'static str },
}

impl Framing {
    fn transport(self) -> Transport {
        match self {
            Self::Sse => Transport::Sse,
            Self::WebSocket(Wrap::Plain) => Transport::Ws,
            Self::WebSocket(Wrap::SocketIo { .. }) => Transport::SocketIo,
        }
    }
}

/// A chunk of an SSE response's body, for hyper. Only an [`SseWriter`] makes one.
pub(crate) struct ToHyper(Bytes);

/// An SSE response's way to its connection: its chunks go through hyper until, live, it is
/// given up to the fan-out.
pub(crate) enum SseWriter {
    /// A connection the fan-out can write to (see [`SseWriter::for_request`]).
    Fanout { hub: Arc<Hub>, outlet: Arc<Outlet> },
    /// Any other: the body writes every chunk through hyper.
    Hyper,
}

impl SseWriter {
    /// The fan-out's access to the request's socket: when the server accepted the connection
    /// (not in poem's test client) and hyper frames the body with chunked encoding (an HTTP/1.1
    /// `GET`), which is how the fan-out writes it.
    pub(crate) fn for_request(hub: &Arc<Hub>, request: &poem::Request) -> Self {
        use poem::http::{Method, Version};
        match request.extensions().get::<Arc<Outlet>>() {
            Some(outlet)
                if request.version() == Version::HTTP_11 && request.method() == Method::GET =>
            {
                Self::Fanout {
                    hub: hub.clone(),
                    outlet: outlet.clone(),
                }
            }
            _ => Self::Hyper,
        }
    }

    /// Hands `bytes` to hyper, after telling the socket that hyper holds bytes.
    pub(crate) fn to_hyper(&self, bytes: Bytes) -> ToHyper {
        if let Self::Fanout { outlet, .. } = self {
            outlet.hand_to_hyper();
        }
        ToHyper(bytes)
    }

    /// Gives the socket up to the fan-out from `cursor` on (everything up to it handed to
    /// hyper); `Err(self)` when the fan-out cannot write to this connection.
    pub(crate) fn into_fanout(self, filter: Filter, cursor: i64) -> Result<Membership, Self> {
        match self {
            Self::Fanout { hub, outlet } => Ok(hub.join(outlet, Framing::Sse, filter, cursor)),
            hyper => Err(hyper),
        }
    }
}

/// A `/ws` socket's way into the fan-out: its live events are written by the fan-out, its
/// own frames by tungstenite, taking turns frame by frame.
pub(crate) struct WsWriter {
    hub: Arc<Hub>,
    outlet: Arc<Outlet>,
}

impl WsWriter {
    /// The fan-out's access to the upgraded connection's socket, when the server accepted it
    /// (not in poem's test client). Until [`WsWriter::start`], nothing changes.
    pub(crate) fn for_request(hub: &Arc<Hub>, request: &poem::Request) -> Option<Self> {
        let outlet = request.extensions().get::<Arc<Outlet>>()?;
        Some(Self {
            hub: hub.clone(),
            outlet: outlet.clone(),
        })
    }

    /// Makes the socket's writers take turns. Called by the session before it writes its
    /// first frame, which is why a session has a writer only once it has started.
    pub(crate) fn start(self) -> StartedWsWriter {
        self.outlet.frame_writes();
        StartedWsWriter(self)
    }
}

/// A [`WsWriter`] whose socket's writers take turns: one that may join the fan-out.
pub(crate) struct StartedWsWriter(WsWriter);

impl StartedWsWriter {
    /// Gives live delivery from `cursor` on to the fan-out, until the membership is left.
    /// A socket may have several members (a Socket.IO session's namespaces).
    pub(crate) fn join(&self, wrap: Wrap, filter: Filter, cursor: i64) -> Membership {
        let WsWriter { hub, outlet } = &self.0;
        hub.join(outlet.clone(), Framing::WebSocket(wrap), filter, cursor)
    }
}

/// The response body of a stream of [`ToHyper`] chunks.
pub(crate) fn body(
    chunks: impl futures_util::Stream<Item = io::Result<ToHyper>> + Send + 'static,
) -> poem::Body {
    use futures_util::TryStreamExt;
    poem::Body::from_bytes_stream(chunks.map_ok(|chunk| chunk.0))
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
    /// walked in about the order they were allocated (a hash map's order costs measurably
    /// more: each write lands somewhere else in memory).
    attached: BTreeMap<u64, Arc<Member>>,
    /// Batches taken so far: each starts at another member (see [`ShardState::in_turn`]).
    batches: u64,
    closed: bool,
}

impl Hub {
    /// A hub with `shards` shards (one per worker thread), whose tasks run until the tail
    /// closes.
    pub(crate) fn start(tail: Arc<Tail>, shards: usize) -> Arc<Self> {
        // Each shard watches the head from the cursor it starts at: no event in between.
        let heads: Vec<_> = (0..shards.max(1)).map(|_| tail.subscribe_head()).collect();
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
            tail,
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
    fn join(
        self: &Arc<Self>,
        outlet: Arc<Outlet>,
        framing: Framing,
        filter: Filter,
        cursor: i64,
    ) -> Membership {
        let shard = self.next_shard.fetch_add(1, Ordering::Relaxed) % self.shards.len();
        Membership {
            hub: self.clone(),
            shard: self.shards[shard].clone(),
            member: Arc::new(Member {
                id: self.next_id.fetch_add(1, Ordering::Relaxed),
                outlet,
                framing,
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
        let delivered = Delivered::new();
        loop {
            tokio::select! {
                changed = head.changed() => if changed.is_err() { break },
                () = self.tail.closing().cancelled() => break,
            }
            self.distribute(&shard, &delivered).await;
        }
        let members: Vec<_> = {
            let mut state = lock(&shard.state);
            state.closed = true;
            std::mem::take(&mut state.attached).into_values().collect()
        };
        for member in members {
            member.end(Stop::Shutdown);
        }
    }

    /// Writes the events after the shard's cursor to its attached members, counting the
    /// deliveries.
    async fn distribute(&self, shard: &Shard, delivered: &Delivered) {
        loop {
            let (events, members) = {
                let mut state = lock(&shard.state);
                if state.attached.is_empty() {
                    // Nobody to write to: whoever attaches next starts from the head.
                    state.cursor = state.cursor.max(self.tail.head());
                    return;
                }
                match self.tail.read(state.cursor, BATCH) {
                    TailRead::Events(events) if events.is_empty() => return,
                    TailRead::Events(events) => {
                        state.cursor = events.last().expect("not empty").id;
                        (events, state.in_turn())
                    }
                    TailRead::Behind => {
                        // The shard fell out of the tail: every member reads for itself,
                        // and is cut off if it is out of the tail too.
                        state.cursor = self.tail.head();
                        let members: Vec<_> =
                            std::mem::take(&mut state.attached).into_values().collect();
                        drop(state);
                        for member in members {
                            member.detach();
                        }
                        return;
                    }
                }
            };
            let mut chunks = Chunks::new(events);
            let mut detached = Vec::new();
            for (i, member) in members.iter().enumerate() {
                if i > 0 && i % YIELD_EVERY == 0 {
                    tokio::task::yield_now().await;
                    chunks.refresh(&self.tail);
                }
                match member.offer(&mut chunks) {
                    Offered::Delivered(n) => delivered.count(member.framing, n),
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
            if chunks.events.len() < BATCH {
                return;
            }
        }
    }
}

/// The deliveries counters, by transport.
struct Delivered {
    sse: Counter,
    ws: Counter,
    socketio: Counter,
}

impl Delivered {
    fn new() -> Self {
        Self {
            sse: METRICS.delivered_counter(Transport::Sse),
            ws: METRICS.delivered_counter(Transport::Ws),
            socketio: METRICS.delivered_counter(Transport::SocketIo),
        }
    }

    fn count(&self, framing: Framing, events: usize) {
        match framing {
            Framing::Sse => &self.sse,
            Framing::WebSocket(Wrap::Plain) => &self.ws,
            Framing::WebSocket(Wrap::SocketIo { .. }) => &self.socketio,
        }
        .inc_by(events as u64);
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

/// The chunks of one batch of events, each rendered once per framing, filter and starting
/// point.
struct Chunks {
    events: Vec<StoredEvent>,
    rendered: Vec<Rendered>,
}

struct Rendered {
    framing: Framing,
    filter: Filter,
    /// The index of the first event the chunk carries.
    start: usize,
    chunk: Bytes,
    /// The events it carries.
    events: usize,
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

    /// Takes into the batch the events committed since it was read (up to [`BATCH`]),
    /// for the members the round has not reached yet. When the round takes longer than the
    /// events come (many members, some still filling their buffers), a member would
    /// otherwise wait for the rest of this round and its place in the next one; this way an
    /// event waits at most about one round. The shard's cursor stays where the batch began,
    /// so the members already written get the new events in the next round.
    fn refresh(&mut self, tail: &Tail) {
        let room = BATCH.saturating_sub(self.events.len());
        if room == 0 || tail.head() <= self.last_id() {
            return;
        }
        if let TailRead::Events(newer) = tail.read(self.last_id(), room)
            && !newer.is_empty()
        {
            self.events.extend(newer);
            self.rendered.clear();
        }
    }

    /// What a member at `cursor` is owed of the batch, as one chunk in its framing for its
    /// filter, and how many events that carries; `None` when it has the whole batch.
    fn after(&mut self, cursor: i64, framing: Framing, filter: &Filter) -> Option<(Bytes, usize)> {
        let start = self.events.partition_point(|e| e.id <= cursor);
        if start == self.events.len() {
            return None;
        }
        if let Some(done) = self
            .rendered
            .iter()
            .find(|r| r.start == start && r.framing == framing && r.filter == *filter)
        {
            return Some((done.chunk.clone(), done.events));
        }
        let (chunk, events) = render(&self.events[start..], framing, filter).expect("not empty");
        self.rendered.push(Rendered {
            framing,
            filter: filter.clone(),
            start,
            chunk: chunk.clone(),
            events,
        });
        Some((chunk, events))
    }
}

/// Events as one write in `framing`, and how many events it carries (those the filter
/// passes); `None` for no events. A chunk may carry no event and still move the member's
/// cursor past the events the filter hides.
fn render(events: &[StoredEvent], framing: Framing, filter: &Filter) -> Option<(Bytes, usize)> {
    match framing {
        Framing::Sse => sse_chunk(events, filter),
        Framing::WebSocket(wrap) => {
            events.last()?;
            Some(ws_frames(events, wrap, filter))
        }
    }
}

/// Events as WebSocket text frames, one per event the filter passes (empty when it passes
/// none: a socket client's cursor moves only with its events).
fn ws_frames(events: &[StoredEvent], wrap: Wrap, filter: &Filter) -> (Bytes, usize) {
    let matching: Vec<StoredEvent> = events.iter().filter_map(|e| filter.pass(e)).collect();
    let wrapping = match wrap {
        Wrap::Plain => 0,
        // The head, then `,"<cursor>"]`.
        Wrap::SocketIo { head } => head.len() + 24,
    };
    let len = matching
        .iter()
        .map(|e| WS_HEADER_MAX + wrapping + e.json.get().len())
        .sum();
    let mut frames = BytesMut::with_capacity(len);
    for event in &matching {
        let json = event.json.get().as_bytes();
        let (head, id) = match wrap {
            Wrap::Plain => ("", None),
            Wrap::SocketIo { head } => (head, Some(event.id.to_string())),
        };
        let payload_len = head.len() + json.len() + id.as_ref().map_or(0, |id| id.len() + 4);
        // FIN and the text opcode, then the unmasked payload's length (RFC 6455, 5.2).
        frames.put_u8(0x81);
        match payload_len {
            n @ ..=125 => frames.put_u8(n as u8),
            n @ ..=0xffff => {
                frames.put_u8(126);
                frames.put_u16(n as u16);
            }
            n => {
                frames.put_u8(127);
                frames.put_u64(n as u64);
            }
        }
        frames.put_slice(head.as_bytes());
        frames.put_slice(json);
        if let Some(id) = id {
            frames.put_slice(b",\"");
            frames.put_slice(id.as_bytes());
            frames.put_slice(b"\"]");
        }
    }
    (frames.freeze(), matching.len())
}

/// The longest header of an unmasked WebSocket frame.
const WS_HEADER_MAX: usize = 10;

/// Events as one chunk of a chunked response: the events a filter passes and, when the
/// batch ends in events it hides, an `id:` line that moves the client's cursor past them.
/// `None` for no events.
fn sse_chunk(events: &[StoredEvent], filter: &Filter) -> Option<(Bytes, usize)> {
    let last = events.last()?.id;
    let matching: Vec<StoredEvent> = events.iter().filter_map(|e| filter.pass(e)).collect();
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

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests;
