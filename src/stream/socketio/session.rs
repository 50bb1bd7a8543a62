//! One Engine.IO session's task. It owns all the session is: its transport (long-polling, a
//! WebSocket being probed, or the upgraded WebSocket), its packets for the client in order,
//! its namespaces and their subscriptions, its writes in flight and its heartbeat. The HTTP
//! side ([`super::engine`]) only hands it requests through its inbox, so there is one writer
//! of the packet order and no lock to hold.

use std::{collections::VecDeque, future::poll_fn, sync::Arc, task::Poll, time::Duration};

use futures_util::{
    SinkExt, StreamExt,
    future::BoxFuture,
    stream::{BoxStream, FuturesUnordered, SplitStream},
};
use poem::web::websocket::{Message, WebSocketStream};
use serde_json::{Map, Value};
use tokio::{
    sync::{mpsc, oneshot},
    time::{Instant, sleep_until},
};

use super::{
    MAX_PAYLOAD,
    engine::Engine,
    namespace::{Namespace, read_connect},
    packet::{self, EngineIn, SioIn},
};
use crate::{
    api::AppState,
    auth::Credentials,
    error::ApiError,
    events::{BATCH, Next, Subscription},
    limits::StreamSlot,
    metrics::{METRICS, Transport},
    service::writes,
    stream::{
        socket::Outbox,
        ws::protocol::{self, Command},
    },
};

/// Packets queued for the client past which the session stops taking its requests and reading
/// its subscriptions, until the client reads.
const MAX_QUEUED: usize = 512;
/// Writes one session may have in flight; past it, its further packets wait.
const MAX_WRITES_IN_FLIGHT: usize = 16;
/// How long a client may take from opening a WebSocket for its session to sending `5`.
const UPGRADE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the last packets and the close may take to reach a WebSocket client.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// What the HTTP side hands a session.
pub(super) enum Inbound {
    /// A long-poll GET, answered once there are packets for it.
    Poll(oneshot::Sender<Answer>),
    /// A polling POST's body, answered once all its packets are taken.
    Post(bytes::Bytes, oneshot::Sender<Answer>),
    /// A WebSocket for this session: the probe of an upgrade.
    Socket(Box<WebSocketStream>),
    /// The client broke the protocol at the HTTP level (a body over the limit).
    Abort,
}

/// A session's answer to a polling request.
pub(super) enum Answer {
    /// 200 with this body.
    Packets(String),
    /// 400 with Engine.IO's `Bad request`.
    BadRequest,
}

/// Why a session ended (logged).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ending {
    /// The client sent `close` or closed its WebSocket.
    ByClient,
    /// A packet or request the protocol does not allow.
    ProtocolError,
    /// No pong in time, or no namespace joined in time.
    Timeout,
    /// A subscription ended (too slow, the log unreadable) or the server shuts down: the
    /// client reconnects and recovers.
    Stream,
}

#[expect(
    clippy::large_enum_variant,
    reason = "one per session, which spends its life in the largest variant"
)]
enum Carrier {
    /// Packets wait in `queue` for the client's next GET.
    Polling,
    /// A WebSocket is being probed (`upgrading` once it answered `3probe`); polling goes on,
    /// answered with `noop` once upgrading, until the client sends `5`.
    Probing {
        socket: WebSocketStream,
        by: Instant,
        upgrading: bool,
    },
    WebSocket {
        out: Outbox,
        incoming: SplitStream<WebSocketStream>,
    },
}

/// A namespace the client joined, and its subscription's steps.
struct Joined {
    namespace: &'static Namespace,
    credentials: Credentials,
    steps: BoxStream<'static, Next>,
}

type AckFuture = BoxFuture<'static, Option<String>>;

pub(super) struct Session {
    pub(super) sid: String,
    pub(super) state: AppState,
    pub(super) engine: Arc<Engine>,
    /// The handshake's credentials: its bearer token, origin and host.
    pub(super) credentials: Credentials,
    /// The handshake query's cursor, for clients that cannot send `auth` (Postman).
    pub(super) query_cursor: Option<String>,
    pub(super) inbox: mpsc::Receiver<Inbound>,
    pub(super) slot: StreamSlot,
}

/// The session's moving parts, owned by its task.
struct Live {
    carrier: Carrier,
    /// Packets for a polling client, in order.
    queue: VecDeque<String>,
    pending_poll: Option<oneshot::Sender<Answer>>,
    /// The packets of a POST not yet taken (writes were at their bound), and its answer.
    pending_post: Option<(VecDeque<String>, oneshot::Sender<Answer>)>,
    joined: Vec<Joined>,
    writes: FuturesUnordered<AckFuture>,
    /// A ping awaits its pong: the heartbeat's next tick closes the session.
    pinged: bool,
    /// Until the first CONNECT: the session closes at this instant.
    connect_by: Option<Instant>,
}

impl Live {
    fn send(&mut self, packet: String) {
        match &mut self.carrier {
            Carrier::WebSocket { out, .. } => out.push(Message::Text(packet)),
            _ => self.queue.push_back(packet),
        }
    }

    fn backlog(&self) -> usize {
        match &self.carrier {
            Carrier::WebSocket { out, .. } => out.queue.len(),
            _ => self.queue.len(),
        }
    }

    fn has_room(&self) -> bool {
        self.backlog() < MAX_QUEUED && self.writes.len() < MAX_WRITES_IN_FLIGHT
    }

    /// Hands the queued packets to a waiting GET, as one payload of at most `MAX_PAYLOAD`.
    fn answer_poll(&mut self) {
        if self.queue.is_empty() {
            return;
        }
        let Some(poll) = self.pending_poll.take() else {
            return;
        };
        let mut body = self.queue.pop_front().expect("not empty");
        while let Some(next) = self.queue.front()
            && body.len() + next.len() < MAX_PAYLOAD
        {
            body.push(packet::SEPARATOR);
            body.push_str(next);
            self.queue.pop_front();
        }
        // A GET that went away gives its packets back, in order, for the next one.
        if let Err(Answer::Packets(body)) = poll.send(Answer::Packets(body)) {
            for packet in body.rsplit(packet::SEPARATOR) {
                self.queue.push_front(packet.to_owned());
            }
        }
    }
}

impl Session {
    /// The session's one task. `socket` is the WebSocket of a session opened on one.
    pub(super) async fn run(mut self, socket: Option<WebSocketStream>) {
        let keepalive = self.state.settings.keepalive;
        let now = Instant::now();
        let carrier = match socket {
            None => Carrier::Polling,
            Some(socket) => {
                let (sink, incoming) = socket.split();
                Carrier::WebSocket {
                    out: Outbox::new(sink),
                    incoming,
                }
            }
        };
        let mut live = Live {
            carrier,
            queue: VecDeque::new(),
            pending_poll: None,
            pending_post: None,
            joined: Vec::new(),
            writes: FuturesUnordered::new(),
            pinged: false,
            connect_by: Some(now + self.state.settings.connect_timeout),
        };
        if matches!(live.carrier, Carrier::WebSocket { .. }) {
            live.send(packet::open(
                &self.sid,
                false,
                keepalive.as_millis(),
                keepalive.as_millis(),
            ));
        }
        let closing = self.state.tail.closing().clone();
        let heartbeat = tokio::time::sleep(keepalive);
        tokio::pin!(heartbeat);

        let ending = loop {
            if let Err(ending) = self.take_post(&mut live).await {
                break ending;
            }
            live.answer_poll();
            let room = live.has_room();
            let probe_by = probe_deadline(&live.carrier);
            tokio::select! {
                biased;
                () = closing.cancelled() => break Ending::Stream,
                inbound = self.inbox.recv() => match inbound {
                    // The engine holds the sender while the session is registered.
                    None => break Ending::ProtocolError,
                    Some(inbound) => if let Err(ending) = self.on_inbound(&mut live, inbound) {
                        break ending;
                    },
                },
                event = socket_event(&mut live.carrier, room) => match event {
                    SocketEvent::Flushed(Ok(())) => {}
                    SocketEvent::Flushed(Err(_)) => break Ending::ByClient,
                    SocketEvent::Frame(frame) => if let Err(ending) = self.on_frame(&mut live, frame).await {
                        break ending;
                    },
                },
                // Read only once the previous packets are handed over: a client that stops
                // reading stops its subscriptions, which fall behind the tail and are cut off,
                // exactly as on SSE.
                (index, step) = next_step(&mut live.joined), if live.backlog() == 0 => {
                    if let Err(ending) = on_step(&mut live, index, step) {
                        break ending;
                    }
                }
                Some(ack) = live.writes.next(), if !live.writes.is_empty() => {
                    if let Some(ack) = ack {
                        live.send(ack);
                    }
                }
                () = &mut heartbeat => {
                    if live.pinged {
                        break Ending::Timeout;
                    }
                    // Ahead of the queued packets: a client that reads slowly is not taken
                    // for a dead one.
                    match &mut live.carrier {
                        Carrier::WebSocket { out, .. } => {
                            out.queue.push_front(Message::Text(packet::PING.to_owned()));
                        }
                        _ => live.queue.push_front(packet::PING.to_owned()),
                    }
                    live.pinged = true;
                    heartbeat.as_mut().reset(Instant::now() + keepalive);
                }
                () = until(live.connect_by) => break Ending::Timeout,
                () = until(probe_by) => {
                    // The client did not finish the upgrade: polling goes on.
                    live.carrier = Carrier::Polling;
                    self.engine.probe_failed(&self.sid);
                }
            }
        };
        tracing::debug!(sid = %self.sid, reason = ?ending, "Socket.IO session closed");
        self.close(live, ending).await;
    }

    /// Takes the packets of a POST that waited for room, then answers it.
    async fn take_post(&mut self, live: &mut Live) -> Result<(), Ending> {
        while live.pending_post.is_some() && live.has_room() {
            let (packets, _) = live.pending_post.as_mut().expect("checked");
            let Some(text) = packets.pop_front() else {
                let (_, answer) = live.pending_post.take().expect("checked");
                let _ = answer.send(Answer::Packets("ok".to_owned()));
                break;
            };
            if let Err(ending) = self.on_engine_packet(live, &text).await {
                if let Some((_, answer)) = live.pending_post.take() {
                    let _ = answer.send(match ending {
                        Ending::ByClient => Answer::Packets("ok".to_owned()),
                        _ => Answer::BadRequest,
                    });
                }
                return Err(ending);
            }
        }
        Ok(())
    }

    fn on_inbound(&mut self, live: &mut Live, inbound: Inbound) -> Result<(), Ending> {
        match inbound {
            Inbound::Poll(answer) => match &live.carrier {
                Carrier::WebSocket { .. } => {
                    let _ = answer.send(Answer::BadRequest);
                }
                // Released so the client can finish the upgrade.
                Carrier::Probing {
                    upgrading: true, ..
                } => {
                    let _ = answer.send(Answer::Packets(packet::NOOP.to_owned()));
                }
                // A GET whose client went away (a proxy's timeout) is no overlap.
                _ if live
                    .pending_poll
                    .as_ref()
                    .is_some_and(|poll| !poll.is_closed()) =>
                {
                    // Overlapping polls: the order of packets could not be kept.
                    let _ = answer.send(Answer::BadRequest);
                    return Err(Ending::ProtocolError);
                }
                _ => live.pending_poll = Some(answer),
            },
            Inbound::Post(body, answer) => {
                let text = match std::str::from_utf8(&body) {
                    Ok(text) if !matches!(live.carrier, Carrier::WebSocket { .. }) => text,
                    _ => {
                        let _ = answer.send(Answer::BadRequest);
                        return Err(Ending::ProtocolError);
                    }
                };
                if live.pending_post.is_some() {
                    let _ = answer.send(Answer::BadRequest);
                    return Err(Ending::ProtocolError);
                }
                let packets = text.split(packet::SEPARATOR).map(str::to_owned).collect();
                live.pending_post = Some((packets, answer));
            }
            Inbound::Socket(socket) => match live.carrier {
                Carrier::Polling => {
                    live.carrier = Carrier::Probing {
                        socket: *socket,
                        by: Instant::now() + UPGRADE_TIMEOUT,
                        upgrading: false,
                    };
                }
                // The engine hands over one socket per session.
                _ => drop(socket),
            },
            Inbound::Abort => return Err(Ending::ProtocolError),
        }
        Ok(())
    }

    /// A frame of the WebSocket: of the upgraded transport, or of the probe.
    async fn on_frame(
        &mut self,
        live: &mut Live,
        frame: Option<Result<Message, std::io::Error>>,
    ) -> Result<(), Ending> {
        if let Carrier::Probing {
            socket, upgrading, ..
        } = &mut live.carrier
        {
            match frame {
                Some(Ok(Message::Text(text))) if text == packet::PROBE && !*upgrading => {
                    let answered = socket
                        .send(Message::Text(packet::PROBE_ANSWER.to_owned()))
                        .await;
                    if answered.is_ok() {
                        *upgrading = true;
                        if let Some(poll) = live.pending_poll.take() {
                            let _ = poll.send(Answer::Packets(packet::NOOP.to_owned()));
                        }
                        return Ok(());
                    }
                }
                Some(Ok(Message::Text(text))) if text == packet::UPGRADE && *upgrading => {
                    let Carrier::Probing { socket, .. } =
                        std::mem::replace(&mut live.carrier, Carrier::Polling)
                    else {
                        unreachable!("matched above");
                    };
                    let (sink, incoming) = socket.split();
                    let mut out = Outbox::new(sink);
                    out.queue.extend(live.queue.drain(..).map(Message::Text));
                    live.carrier = Carrier::WebSocket { out, incoming };
                    return Ok(());
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => return Ok(()),
                _ => {}
            }
            // Anything else: the probe failed, polling goes on.
            live.carrier = Carrier::Polling;
            self.engine.probe_failed(&self.sid);
            return Ok(());
        }
        match frame {
            Some(Ok(Message::Text(text))) => self.on_engine_packet(live, &text).await,
            // The socket answers WebSocket pings itself.
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => Ok(()),
            Some(Ok(Message::Binary(_))) => Err(Ending::ProtocolError),
            Some(Ok(Message::Close(_))) | None => Err(Ending::ByClient),
            Some(Err(err)) => {
                tracing::debug!(sid = %self.sid, error = %err, "Socket.IO WebSocket read failed");
                Err(Ending::ProtocolError)
            }
        }
    }

    /// One Engine.IO packet from the client, over either transport.
    async fn on_engine_packet(&mut self, live: &mut Live, text: &str) -> Result<(), Ending> {
        match packet::parse_engine(text) {
            Some(EngineIn::Close) => Err(Ending::ByClient),
            Some(EngineIn::Pong) => {
                live.pinged = false;
                Ok(())
            }
            Some(EngineIn::Message(message)) => match packet::parse_socketio(message) {
                Ok(packet) => self.on_socketio(live, packet).await,
                Err(why) => {
                    tracing::debug!(sid = %self.sid, why, "a malformed Socket.IO packet");
                    Err(Ending::ProtocolError)
                }
            },
            Some(EngineIn::Noop) => Ok(()),
            // The server pings in Engine.IO v4; `5` belongs to an upgrade's WebSocket.
            Some(EngineIn::Ping(_) | EngineIn::Upgrade) | None => Err(Ending::ProtocolError),
        }
    }

    async fn on_socketio(&mut self, live: &mut Live, packet: SioIn<'_>) -> Result<(), Ending> {
        match packet {
            SioIn::Connect { nsp, auth } => {
                let Some(namespace) = Namespace::find(nsp) else {
                    live.send(packet::connect_error(nsp, "Invalid namespace"));
                    return Ok(());
                };
                if position(&live.joined, nsp).is_some() {
                    return Err(Ending::ProtocolError);
                }
                self.connect(live, namespace, &auth).await;
                Ok(())
            }
            SioIn::Disconnect { nsp } => {
                let index = position(&live.joined, nsp).ok_or(Ending::ProtocolError)?;
                live.joined.remove(index);
                Ok(())
            }
            SioIn::Event {
                nsp,
                ack,
                name,
                args,
            } => {
                let index = position(&live.joined, nsp).ok_or(Ending::ProtocolError)?;
                let joined = &live.joined[index];
                if let Some(write) = self.write(joined, ack, &name, args) {
                    live.writes.push(write);
                }
                Ok(())
            }
            SioIn::Ack { nsp } => position(&live.joined, nsp)
                .map(drop)
                .ok_or(Ending::ProtocolError),
        }
    }

    /// Joins a namespace: its subscription from where the CONNECT asks, the CONNECT answer with
    /// the `pid` to recover with, then `connection` (and `reset`, when the start cannot be
    /// served).
    async fn connect(
        &self,
        live: &mut Live,
        namespace: &'static Namespace,
        auth: &Map<String, Value>,
    ) {
        let nsp = namespace.path;
        let connect = match read_connect(auth, self.query_cursor.as_deref()) {
            Ok(connect) => connect,
            Err(message) => return live.send(packet::connect_error(nsp, &message)),
        };
        let opened =
            Subscription::open(self.state.tail.clone(), connect.start, namespace.filter()).await;
        let (subscription, reset) = match opened {
            Ok(opened) => opened,
            Err(err) => return live.send(packet::connect_error(nsp, &err.to_string())),
        };
        // The client recovered iff it gets back the pid it sent: only when nothing was lost.
        let pid = match connect.recovering {
            Some(pid) if reset.is_none() => pid,
            _ => random_id(),
        };
        live.send(packet::connect(nsp, &random_id(), &pid));
        let welcome = Value::from(namespace.welcome).to_string();
        live.send(packet::event(
            nsp,
            "connection",
            &welcome,
            subscription.cursor(),
        ));
        if let Some(reset) = &reset {
            let json = serde_json::to_string(reset).expect("a reset serializes");
            let cursor = subscription.cursor();
            live.send(packet::event(nsp, "reset", &json, cursor));
        }
        let mut credentials = self.credentials.clone();
        if let Some(token) = connect.token {
            credentials.bearer = Some(token);
        }
        live.connect_by = None;
        live.joined.push(Joined {
            namespace,
            credentials,
            steps: steps(subscription),
        });
    }

    /// A client event: a write (`create`, `update`, `delete` with `{entity, id, data,
    /// ifMatch}`, as `/ws` frames have them) answered with its outcome, or an unknown event,
    /// answered with a 400 problem when it asks for an ack.
    fn write(
        &self,
        joined: &Joined,
        ack: Option<u64>,
        name: &str,
        args: Vec<Value>,
    ) -> Option<AckFuture> {
        let nsp = joined.namespace.path;
        let command = match (name, args.into_iter().next()) {
            ("create" | "update" | "delete", Some(Value::Object(mut fields))) => {
                fields.insert("op".into(), name.into());
                fields.insert("requestId".into(), ack.unwrap_or(0).into());
                protocol::read_frame(Value::Object(fields)).1
            }
            ("create" | "update" | "delete", _) => Err(ApiError::bad_request(format!(
                "{name} takes one object: {{entity, id, data, ifMatch}}"
            ))),
            _ => Err(ApiError::bad_request(format!(
                "unknown event {name:?}: the events are create, update and delete"
            ))),
        };
        let authorized = joined.credentials.authorize(&self.state.policy);
        let state = self.state.clone();
        let answer = move |outcome: Result<writes::Answer, ApiError>| {
            let id = ack?;
            let json = match outcome {
                Ok(answer) => serde_json::json!({
                    "status": answer.status,
                    "body": answer.body,
                    "cursor": answer.cursor.to_string(),
                }),
                Err(err) => serde_json::json!({
                    "status": err.status().as_u16(),
                    "body": err.body(),
                }),
            };
            Some(packet::ack(nsp, id, &json.to_string()))
        };
        match command {
            Ok(Command::Write(write)) => Some(Box::pin(async move {
                let outcome = match authorized {
                    Ok(()) => writes::perform(&state.store, write).await,
                    Err(err) => Err(err),
                };
                answer(outcome)
            })),
            Ok(_) => None,
            Err(err) if ack.is_some() => Some(Box::pin(async move { answer(Err(err)) })),
            Err(_) => None,
        }
    }

    /// Ends the session: it leaves the registry first (a client asking again learns it is
    /// gone), writes in flight finish (their acks reach a client still there), and the client
    /// is told: `close` to a pending poll (`noop` when the client closed), a close frame on a
    /// WebSocket.
    async fn close(self, mut live: Live, ending: Ending) {
        self.engine.remove(&self.sid);
        while let Some(ack) = live.writes.next().await {
            if let Some(ack) = ack {
                live.send(ack);
            }
        }
        if let Some((_, answer)) = live.pending_post.take() {
            let _ = answer.send(Answer::BadRequest);
        }
        let last = if ending == Ending::ByClient {
            packet::NOOP
        } else {
            packet::CLOSE
        };
        match &mut live.carrier {
            Carrier::WebSocket { out, .. } => {
                if ending != Ending::ByClient {
                    out.push(Message::Close(None));
                } else {
                    out.queue.clear();
                }
                let _ = tokio::time::timeout(CLOSE_GRACE, out.flush()).await;
            }
            _ => {
                live.queue.push_back(last.to_owned());
                live.answer_poll();
            }
        }
        drop(self.slot);
    }
}

/// Where the namespace `nsp` is among the joined ones.
fn position(joined: &[Joined], nsp: &str) -> Option<usize> {
    let namespace = Namespace::find(nsp)?;
    joined
        .iter()
        .position(|j| std::ptr::eq(j.namespace, namespace))
}

/// A subscription as the stream of its steps.
fn steps(subscription: Subscription) -> BoxStream<'static, Next> {
    futures_util::stream::unfold(subscription, |mut subscription| async move {
        let next = subscription.next(BATCH).await;
        Some((next, subscription))
    })
    .boxed()
}

/// Queues a step of the namespace at `index`.
fn on_step(live: &mut Live, index: usize, step: Next) -> Result<(), Ending> {
    let nsp = live.joined[index].namespace.path;
    match step {
        Next::Events { events, .. } => {
            METRICS.delivered(Transport::SocketIo, events.len());
            for event in events {
                live.send(packet::event(nsp, "updates", event.json.get(), event.id));
            }
        }
        Next::Reset(reset) => {
            let json = serde_json::to_string(&reset).expect("a reset serializes");
            let cursor = reset.cursor.parse().unwrap_or_default();
            live.send(packet::event(nsp, "reset", &json, cursor));
        }
        // The client reconnects and recovers from its last offset.
        Next::End { .. } => return Err(Ending::Stream),
    }
    Ok(())
}

/// The next step of any joined namespace, taking them in turn.
async fn next_step(joined: &mut [Joined]) -> (usize, Next) {
    if joined.is_empty() {
        return std::future::pending().await;
    }
    let mut first = 0;
    poll_fn(|cx| {
        let count = joined.len();
        for offset in 0..count {
            let index = (first + offset) % count;
            if let Poll::Ready(Some(step)) = joined[index].steps.poll_next_unpin(cx) {
                first = index + 1;
                return Poll::Ready((index, step));
            }
        }
        Poll::Pending
    })
    .await
}

/// What the session's WebSocket did: flushed its queue, or gave a frame.
enum SocketEvent {
    Flushed(std::io::Result<()>),
    Frame(Option<Result<Message, std::io::Error>>),
}

/// Flushes the WebSocket's queue while reading its frames (when `read`); pending while
/// neither has anything to do, and always over polling.
async fn socket_event(carrier: &mut Carrier, read: bool) -> SocketEvent {
    poll_fn(|cx| match carrier {
        Carrier::WebSocket { out, incoming } => {
            if out.has_work()
                && let Poll::Ready(flushed) = out.poll_flush(cx)
            {
                return Poll::Ready(SocketEvent::Flushed(flushed));
            }
            if read && let Poll::Ready(frame) = incoming.poll_next_unpin(cx) {
                return Poll::Ready(SocketEvent::Frame(frame));
            }
            Poll::Pending
        }
        Carrier::Probing { socket, .. } if read => {
            socket.poll_next_unpin(cx).map(SocketEvent::Frame)
        }
        _ => Poll::Pending,
    })
    .await
}

fn probe_deadline(carrier: &Carrier) -> Option<Instant> {
    match carrier {
        Carrier::Probing { by, .. } => Some(*by),
        _ => None,
    }
}

async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// 16 random bytes, hex: session, socket and recovery ids.
pub(super) fn random_id() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the OS random source works");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
