//! One Engine.IO session's task. It owns all the session is: its transport (long-polling, a
//! WebSocket being probed, or the upgraded WebSocket), its packets for the client in order,
//! its namespaces and their subscriptions, its writes in flight and its heartbeat. The HTTP
//! side ([`super::engine`]) only hands it requests through its inbox, so there is one writer
//! of the packet order and no lock to hold.

use std::{
    collections::VecDeque,
    future::poll_fn,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::Poll,
    time::Duration,
};

use futures_util::{
    FutureExt, SinkExt, StreamExt,
    future::BoxFuture,
    stream::{BoxStream, FuturesUnordered},
};
use poem::web::websocket::Message;
use serde_json::{Map, Value};
use tokio::{
    sync::{mpsc, oneshot},
    time::{Instant, sleep_until},
};

use super::{
    engine::Engine,
    namespace::{Namespace, read_connect},
    packet::{self, EngineIn, SioIn},
    transport::{Carrier, SessionSocket, SocketEvent, Transport, probe_deadline, socket_event},
    writes,
};
use crate::{
    api::AppState,
    auth::Credentials,
    events::{BATCH, Next, Subscription},
    http::fanout::{Ending as LiveEnding, Membership, Wrap},
    limits::StreamSlot,
    metrics::{self, METRICS},
    stream::socket::Outbox,
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
    Socket(Box<SessionSocket>),
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

/// A namespace the client joined, and where its events come from.
struct Joined {
    namespace: &'static Namespace,
    credentials: Credentials,
    feed: Feed,
}

/// Where a namespace's events come from.
enum Feed {
    /// Its subscription's steps: the replay, and live events until the fan-out can write them.
    Replay(BoxStream<'static, Step>),
    /// At the head, until the packets before its live events are flushed.
    Joining(Subscription),
    /// The fan-out writes its live events; `delivery` is its task's part, until it ends.
    Live {
        membership: Arc<Membership>,
        delivery: BoxFuture<'static, LiveEnding>,
    },
}

/// A namespace's next step.
enum Step {
    Next(Next),
    /// Its subscription is at the head and the fan-out can write to the socket.
    AtHead(Subscription),
    /// The fan-out's delivery ended.
    Ended(LiveEnding),
}

impl Feed {
    /// Stops the fan-out's delivery for good, finishing a frame it has half written so that
    /// the session's own packets can follow.
    async fn stop(self, write_stall: Duration) {
        if let Self::Live { membership, .. } = self {
            let _ = membership.leave(write_stall).await;
        }
    }
}

pub(super) struct Session {
    pub(super) sid: String,
    pub(super) state: AppState,
    pub(super) engine: Arc<Engine>,
    /// The handshake's credentials: its bearer token, origin and host.
    pub(super) credentials: Credentials,
    /// The handshake's query string: a cursor and view filters for clients that cannot
    /// send `auth` (Postman).
    pub(super) query: String,
    pub(super) inbox: mpsc::Receiver<Inbound>,
    pub(super) slot: StreamSlot,
}

/// The session's moving parts, owned by its task.
struct Live {
    transport: Transport,
    /// The packets of a POST not yet taken (writes were at their bound), and its answer.
    pending_post: Option<(VecDeque<String>, oneshot::Sender<Answer>)>,
    joined: Vec<Joined>,
    writes: FuturesUnordered<writes::AckFuture>,
    /// A ping awaits its pong: the heartbeat's next tick closes the session.
    pinged: bool,
    /// Until the first CONNECT: the session closes at this instant.
    connect_by: Option<Instant>,
    /// The transport is a WebSocket the fan-out can write to: namespaces join it once live.
    fanout_ready: Arc<AtomicBool>,
}

impl Live {
    fn send(&mut self, packet: String) {
        self.transport.send(packet);
    }

    fn backlog(&self) -> usize {
        self.transport.backlog()
    }

    fn has_room(&self) -> bool {
        self.backlog() < MAX_QUEUED && self.writes.len() < MAX_WRITES_IN_FLIGHT
    }
}

impl Session {
    /// The session's one task. `socket` is the WebSocket of a session opened on one.
    pub(super) async fn run(mut self, socket: Option<SessionSocket>) {
        let keepalive = self.state.settings.keepalive;
        let now = Instant::now();
        let fanout_ready = Arc::new(AtomicBool::new(false));
        let carrier = match socket {
            None => Carrier::Polling,
            Some(SessionSocket { socket, fanout }) => {
                fanout_ready.store(fanout.is_some(), Ordering::Release);
                let (sink, incoming) = socket.split();
                Carrier::WebSocket {
                    out: Outbox::new(sink),
                    incoming,
                    fanout,
                }
            }
        };
        let mut live = Live {
            transport: Transport::new(carrier),
            pending_post: None,
            joined: Vec::new(),
            writes: FuturesUnordered::new(),
            pinged: false,
            connect_by: Some(now + self.state.settings.connect_timeout),
            fanout_ready,
        };
        if matches!(live.transport.carrier, Carrier::WebSocket { .. }) {
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
            live.transport.answer_poll();
            self.join_fanout(&mut live);
            let room = live.has_room();
            let replay = live.backlog() == 0;
            let probe_by = probe_deadline(&live.transport.carrier);
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
                event = socket_event(&mut live.transport.carrier, room) => match event {
                    SocketEvent::Flushed(Ok(())) => {}
                    SocketEvent::Flushed(Err(_)) => break Ending::ByClient,
                    SocketEvent::Frame(frame) => if let Err(ending) = self.on_frame(&mut live, frame).await {
                        break ending;
                    },
                },
                // Replays read only once the previous packets are handed over: a client that
                // stops reading stops its subscriptions, which fall behind the tail and are cut
                // off, exactly as on SSE. The fan-out holds back by itself.
                (index, step) = next_step(&mut live.joined, replay) => {
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
                    match &mut live.transport.carrier {
                        Carrier::WebSocket { out, .. } => {
                            out.queue.push_front(Message::Text(packet::PING.to_owned()));
                        }
                        _ => live.transport.queue.push_front(packet::PING.to_owned()),
                    }
                    live.pinged = true;
                    heartbeat.as_mut().reset(Instant::now() + keepalive);
                }
                () = until(live.connect_by) => break Ending::Timeout,
                () = until(probe_by) => {
                    // The client did not finish the upgrade: polling goes on.
                    live.transport.carrier = Carrier::Polling;
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
            Inbound::Poll(answer) => match &live.transport.carrier {
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
                    .transport
                    .pending_poll
                    .as_ref()
                    .is_some_and(|poll| !poll.is_closed()) =>
                {
                    // Overlapping polls: the order of packets could not be kept.
                    let _ = answer.send(Answer::BadRequest);
                    return Err(Ending::ProtocolError);
                }
                _ => live.transport.pending_poll = Some(answer),
            },
            Inbound::Post(body, answer) => {
                let text = match std::str::from_utf8(&body) {
                    Ok(text) if !matches!(live.transport.carrier, Carrier::WebSocket { .. }) => {
                        text
                    }
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
            Inbound::Socket(socket) => match live.transport.carrier {
                Carrier::Polling => {
                    live.transport.carrier = Carrier::Probing {
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
        } = &mut live.transport.carrier
        {
            match frame {
                Some(Ok(Message::Text(text))) if text == packet::PROBE && !*upgrading => {
                    let answered = socket
                        .socket
                        .send(Message::Text(packet::PROBE_ANSWER.to_owned()))
                        .await;
                    if answered.is_ok() {
                        *upgrading = true;
                        if let Some(poll) = live.transport.pending_poll.take() {
                            let _ = poll.send(Answer::Packets(packet::NOOP.to_owned()));
                        }
                        return Ok(());
                    }
                }
                Some(Ok(Message::Text(text))) if text == packet::UPGRADE && *upgrading => {
                    let Carrier::Probing { socket, .. } =
                        std::mem::replace(&mut live.transport.carrier, Carrier::Polling)
                    else {
                        unreachable!("matched above");
                    };
                    let SessionSocket { socket, fanout } = socket;
                    let (sink, incoming) = socket.split();
                    let mut out = Outbox::new(sink);
                    out.queue
                        .extend(live.transport.queue.drain(..).map(Message::Text));
                    live.fanout_ready.store(fanout.is_some(), Ordering::Release);
                    live.transport.carrier = Carrier::WebSocket {
                        out,
                        incoming,
                        fanout,
                    };
                    return Ok(());
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => return Ok(()),
                _ => {}
            }
            // Anything else: the probe failed, polling goes on.
            live.transport.carrier = Carrier::Polling;
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
                let left = live.joined.remove(index);
                left.feed.stop(self.state.settings.write_stall).await;
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
                let nsp = joined.namespace.path;
                if let Some(write) =
                    writes::event(&self.state, &joined.credentials, nsp, ack, &name, args)
                {
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
        let connected = read_connect(auth, &self.query)
            .and_then(|connect| Ok((namespace.filter(connect.view.clone())?, connect)));
        let (filter, connect) = match connected {
            Ok(connected) => connected,
            Err(message) => return live.send(packet::connect_error(nsp, &message)),
        };
        let opened = Subscription::open(self.state.tail.clone(), connect.start, filter).await;
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
            feed: Feed::Replay(steps(subscription, live.fanout_ready.clone())),
        });
    }

    /// Hands the namespaces at the head to the fan-out, once the packets before their live
    /// events are flushed (the fan-out's frames must follow them on the wire).
    fn join_fanout(&self, live: &mut Live) {
        let Carrier::WebSocket {
            out,
            fanout: Some(fanout),
            ..
        } = &live.transport.carrier
        else {
            return;
        };
        if out.has_work() {
            return;
        }
        let write_stall = self.state.settings.write_stall;
        for joined in &mut live.joined {
            let Feed::Joining(subscription) = &joined.feed else {
                continue;
            };
            let wrap = Wrap::SocketIo {
                head: joined.namespace.updates_head,
            };
            let membership =
                Arc::new(fanout.join(wrap, subscription.filter().clone(), subscription.cursor()));
            let running = membership.clone();
            joined.feed = Feed::Live {
                membership,
                delivery: async move { running.run(None, write_stall).await }.boxed(),
            };
        }
    }

    /// Ends the session: it leaves the registry first (a client asking again learns it is
    /// gone), writes in flight finish (their acks reach a client still there), and the client
    /// is told: `close` to a pending poll (`noop` when the client closed), a close frame on a
    /// WebSocket.
    async fn close(self, mut live: Live, ending: Ending) {
        self.engine.remove(&self.sid);
        // The fan-out stops first: the packets below must not meet its writes.
        for joined in live.joined.drain(..) {
            joined.feed.stop(self.state.settings.write_stall).await;
        }
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
        match &mut live.transport.carrier {
            Carrier::WebSocket { out, .. } => {
                if ending != Ending::ByClient {
                    out.push(Message::Close(None));
                } else {
                    out.queue.clear();
                }
                let _ = tokio::time::timeout(CLOSE_GRACE, out.flush()).await;
            }
            _ => {
                live.transport.queue.push_back(last.to_owned());
                live.transport.answer_poll();
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

/// A subscription as the stream of its steps; once the fan-out can write to the socket, its
/// last step at the head hands the subscription over ([`Step::AtHead`]).
fn steps(subscription: Subscription, fanout_ready: Arc<AtomicBool>) -> BoxStream<'static, Step> {
    futures_util::stream::unfold(Some(subscription), move |subscription| {
        let fanout_ready = fanout_ready.clone();
        async move {
            let mut subscription = subscription?;
            loop {
                match subscription.poll_now(BATCH).await {
                    Some(next) => return Some((Step::Next(next), Some(subscription))),
                    None if fanout_ready.load(Ordering::Acquire) => {
                        return Some((Step::AtHead(subscription), None));
                    }
                    None => subscription.wait().await,
                }
            }
        }
    })
    .boxed()
}

/// Takes a step of the namespace at `index`.
fn on_step(live: &mut Live, index: usize, step: Step) -> Result<(), Ending> {
    let nsp = live.joined[index].namespace.path;
    let step = match step {
        Step::Next(next) => next,
        Step::AtHead(subscription) => {
            live.joined[index].feed = Feed::Joining(subscription);
            return Ok(());
        }
        Step::Ended(LiveEnding::Clean(_)) => return Err(Ending::Stream),
        Step::Ended(LiveEnding::Abort(_)) => return Err(Ending::ByClient),
    };
    match step {
        Next::Events { events, .. } => {
            METRICS.delivered(metrics::Transport::SocketIo, events.len());
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

/// The next step of any joined namespace, taking them in turn; replays only if `replay`.
async fn next_step(joined: &mut [Joined], replay: bool) -> (usize, Step) {
    if joined.is_empty() {
        return std::future::pending().await;
    }
    let mut first = 0;
    poll_fn(|cx| {
        let count = joined.len();
        for offset in 0..count {
            let index = (first + offset) % count;
            let step = match &mut joined[index].feed {
                Feed::Replay(steps) if replay => match steps.poll_next_unpin(cx) {
                    Poll::Ready(Some(step)) => Some(step),
                    _ => None,
                },
                Feed::Live { delivery, .. } => match delivery.poll_unpin(cx) {
                    Poll::Ready(ending) => Some(Step::Ended(ending)),
                    Poll::Pending => None,
                },
                Feed::Replay(_) | Feed::Joining(_) => None,
            };
            if let Some(step) = step {
                first = index + 1;
                return Poll::Ready((index, step));
            }
        }
        Poll::Pending
    })
    .await
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
