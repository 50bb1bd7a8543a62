//! Engine.IO v4: sessions, their two transports (HTTP long-polling and WebSocket), the
//! upgrade from polling to WebSocket, and the server's heartbeat.
//!
//! A session's outgoing packets go through one bounded queue, read by exactly one writer at
//! a time: the pending long-poll, or (once upgraded) the WebSocket task. Holding the queue's
//! receiver is what makes a writer, so two overlapping polls, or a poll racing the upgrade,
//! cannot both take packets. Everything that ends a session cancels its `closed` token: the
//! transports, the namespace tasks (child tokens) and the heartbeat all stop on it, and the
//! heartbeat task then drops the session from the registry.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures_util::{SinkExt, StreamExt};
use poem::{
    Body, FromRequest, IntoResponse, Request, Response,
    http::{Method, StatusCode},
    web::websocket::{Message, WebSocket, WebSocketStream},
};
use tokio::sync::{Notify, mpsc};

use crate::events::End;
use tokio_util::sync::CancellationToken;

use super::{
    MAX_PAYLOAD, namespace,
    packet::{self, EngineIn},
};
use crate::{
    api::AppState,
    limits::{StreamSlot, client_ip},
    metrics::Transport,
};

/// Packets queued for one client. When it does not take them, its namespace tasks wait, their
/// subscriptions fall behind the tail, and the tail's bound cuts them off; so this only needs
/// to absorb bursts.
const OUT_QUEUE: usize = 64;
/// How long a client may take between its `2probe` and its `5` (upgrade).
const UPGRADE_TIMEOUT: Duration = Duration::from_secs(10);

/// The open sessions, by id.
#[derive(Default)]
pub(super) struct Engine {
    /// Held only to insert, look up or remove, never across an `.await`.
    sessions: Mutex<HashMap<String, Arc<Session>>>,
}

/// Which transport carries a session's packets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Carrier {
    Polling,
    /// The WebSocket answered the probe; polls get `noop` until the client sends `5`.
    Upgrading,
    WebSocket,
}

/// Why a session ended (logged).
#[derive(Clone, Copy, Debug)]
pub(super) enum SessionEnd {
    /// The client sent `close`, or closed its WebSocket.
    ClientClosed,
    TransportError,
    /// No pong within the timeout, or packets not taken for as long.
    PingTimeout,
    /// A packet this server does not understand.
    ProtocolError,
    /// The stream ended (the subscriber fell behind, the server is shutting down, or the
    /// log could not be read): the client reconnects and resumes.
    Stream(#[expect(dead_code, reason = "read by the log line, through Debug")] End),
}

pub(super) struct Session {
    pub sid: String,
    pub state: AppState,
    /// The cursor of the handshake's query (`cursor`, `lastEventId` or `after`), for tools
    /// that cannot send an `auth` payload (Postman); `auth` wins.
    pub query_cursor: Option<String>,
    /// Packets for the client, in order.
    out: mpsc::Sender<String>,
    /// The single reader of `out`: the pending poll or the WebSocket writer.
    rx: tokio::sync::Mutex<mpsc::Receiver<String>>,
    /// Held only to read or switch, never across an `.await`.
    transport: Mutex<Carrier>,
    /// Releases a pending poll (with `noop`) when the WebSocket answers the probe. One stored
    /// permit, so a poll that arrives just after the probe is released too.
    upgrading: Notify,
    /// A pong arrived.
    pong: Notify,
    /// Cancelled once when the session ends, for whatever reason.
    pub closed: CancellationToken,
    /// The connected namespaces, by path: at most one task each (see
    /// [`namespace::NamespaceSlot`]).
    pub sockets: Mutex<HashMap<&'static str, namespace::NamespaceSlot>>,
    /// The interval between pings, and how long a pong may take.
    heartbeat: Duration,
    /// This session's place among the server's open streams.
    _slot: StreamSlot,
}

impl Session {
    /// Queues a packet without waiting; false when the queue is full (a client flooding
    /// the session with requests it does not read the answers of) or the session is closed.
    pub(super) fn try_send(&self, packet: String) -> bool {
        self.out.try_send(packet).is_ok()
    }

    /// Queues a packet; false once the session is closed or `stop` is cancelled.
    pub(super) async fn send(&self, stop: &CancellationToken, packet: String) -> bool {
        tokio::select! {
            biased;
            () = stop.cancelled() => false,
            sent = self.out.send(packet) => sent.is_ok(),
        }
    }

    pub(super) fn close(&self, reason: SessionEnd) {
        if !self.closed.is_cancelled() {
            tracing::debug!(sid = %self.sid, ?reason, "Socket.IO session closed");
            self.closed.cancel();
        }
    }

    fn transport(&self) -> Carrier {
        *self.transport.lock().expect("transport lock poisoned")
    }

    fn set_transport(&self, transport: Carrier) {
        *self.transport.lock().expect("transport lock poisoned") = transport;
    }

    /// Handles one Engine.IO packet from either transport.
    fn receive(self: &Arc<Self>, text: &str) -> Result<(), &'static str> {
        match packet::parse_engine(text) {
            Some(EngineIn::Close) => self.close(SessionEnd::ClientClosed),
            Some(EngineIn::Pong) => self.pong.notify_one(),
            Some(EngineIn::Message(message)) => namespace::on_packet(self, message)?,
            // In v4 the server pings; a client's ping or noop needs nothing.
            Some(EngineIn::Ping(_) | EngineIn::Noop) => {}
            Some(EngineIn::Upgrade) => return Err("upgrade packet outside an upgrade"),
            None => return Err("not an Engine.IO packet"),
        }
        Ok(())
    }

    /// The end of a session, whoever starts it: `None` when it is already closed.
    async fn ended(&self) -> Option<SessionEnd> {
        tokio::select! {
            biased;
            () = self.closed.cancelled() => None,
            () = self.state.tail.closing().cancelled() => Some(SessionEnd::Stream(End::Shutdown)),
        }
    }
}

/// An Engine.IO error answer: `{"code","message"}` with status 400.
fn engine_error(code: u8, message: &str) -> Response {
    Response::builder()
        .status(StatusCode::BAD_REQUEST)
        .content_type("application/json")
        .body(serde_json::json!({ "code": code, "message": message }).to_string())
}

fn unknown_transport() -> Response {
    engine_error(0, "Transport unknown")
}

fn unknown_session() -> Response {
    engine_error(1, "Session ID unknown")
}

fn bad_request() -> Response {
    engine_error(3, "Bad request")
}

fn text(body: impl Into<String>) -> Response {
    Response::builder()
        .content_type("text/plain; charset=UTF-8")
        .body(body.into())
}

/// 16 random bytes, hex: session and socket ids.
pub(super) fn random_id() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the OS random source works");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The query parameters Engine.IO reads.
#[derive(Default)]
struct Query {
    eio: Option<String>,
    transport: Option<String>,
    sid: Option<String>,
    cursor: Option<String>,
}

impl Query {
    fn parse(query: Option<&str>) -> Self {
        let mut parsed = Self::default();
        for (key, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            let slot = match &*key {
                "EIO" => &mut parsed.eio,
                "transport" => &mut parsed.transport,
                "sid" => &mut parsed.sid,
                "cursor" | "lastEventId" | "after" => &mut parsed.cursor,
                _ => continue,
            };
            slot.get_or_insert_with(|| value.into_owned());
        }
        parsed
    }
}

impl Engine {
    pub(super) async fn handle(self: &Arc<Self>, mut req: Request) -> poem::Result<Response> {
        if !matches!(req.uri().path(), "" | "/") {
            return Ok(StatusCode::NOT_FOUND.into_response());
        }
        let state = req
            .data::<AppState>()
            .cloned()
            .expect("the routes carry the AppState");
        let query = Query::parse(req.uri().query());
        if query.eio.as_deref() != Some("4") {
            return Ok(engine_error(5, "Unsupported protocol version"));
        }
        let websocket = match query.transport.as_deref() {
            Some("polling") => false,
            Some("websocket") => true,
            _ => return Ok(unknown_transport()),
        };
        let Some(sid) = query.sid else {
            if req.method() != Method::GET {
                return Ok(engine_error(2, "Bad handshake method"));
            }
            let upgrade = if websocket {
                match WebSocket::from_request_without_body(&req).await {
                    Ok(upgrade) => Some(upgrade),
                    Err(_) => return Ok(bad_request()),
                }
            } else {
                None
            };
            let slot = state.slots.acquire(Transport::SocketIo, client_ip(&req))?;
            let transport = if websocket {
                Carrier::WebSocket
            } else {
                Carrier::Polling
            };
            let session = self.open(state, slot, transport, query.cursor);
            let heartbeat = session.heartbeat.as_millis();
            let handshake = packet::open(&session.sid, !websocket, heartbeat, heartbeat);
            return Ok(match upgrade {
                None => text(handshake),
                Some(upgrade) => {
                    // First in the fresh queue: the client reads the handshake first.
                    let _ = session.out.try_send(handshake);
                    websocket_response(upgrade, session, false)
                }
            });
        };
        let session = self
            .sessions
            .lock()
            .expect("sessions lock poisoned")
            .get(&sid)
            .cloned();
        let Some(session) = session else {
            return Ok(unknown_session());
        };
        Ok(match (websocket, req.method()) {
            (false, &Method::GET) => poll(&session).await,
            (false, &Method::POST) => post(&session, req.take_body()).await,
            (true, &Method::GET) if session.transport() == Carrier::Polling => {
                match WebSocket::from_request_without_body(&req).await {
                    Ok(upgrade) => websocket_response(upgrade, session, true),
                    Err(_) => bad_request(),
                }
            }
            _ => bad_request(),
        })
    }

    /// Registers a new session and starts its heartbeat.
    fn open(
        self: &Arc<Self>,
        state: AppState,
        slot: StreamSlot,
        transport: Carrier,
        query_cursor: Option<String>,
    ) -> Arc<Session> {
        let (out, rx) = mpsc::channel(OUT_QUEUE);
        let heartbeat = state.settings.keepalive;
        let session = Arc::new(Session {
            sid: random_id(),
            state,
            query_cursor,
            out,
            rx: tokio::sync::Mutex::new(rx),
            transport: Mutex::new(transport),
            upgrading: Notify::new(),
            pong: Notify::new(),
            closed: CancellationToken::new(),
            sockets: Mutex::default(),
            heartbeat,
            _slot: slot,
        });
        self.sessions
            .lock()
            .expect("sessions lock poisoned")
            .insert(session.sid.clone(), session.clone());
        tokio::spawn(heartbeat_task(self.clone(), session.clone()));
        session
    }
}

/// Pings every `heartbeat` and closes the session when the pong does not come within another
/// `heartbeat` (a polling client that stops polling never gets the ping, so this also ends
/// abandoned sessions). The session's owner task: it removes the session when it ends.
async fn heartbeat_task(engine: Arc<Engine>, session: Arc<Session>) {
    let period = session.heartbeat;
    let reason = loop {
        tokio::select! {
            biased;
            reason = session.ended() => break reason,
            () = tokio::time::sleep(period) => {}
        }
        // A queue that stays full for a whole period is a client that does not read.
        tokio::select! {
            biased;
            reason = session.ended() => break reason,
            sent = tokio::time::timeout(period, session.out.send(packet::PING.to_owned())) => {
                if !matches!(sent, Ok(Ok(()))) {
                    break Some(SessionEnd::PingTimeout);
                }
            }
        }
        tokio::select! {
            biased;
            reason = session.ended() => break reason,
            () = session.pong.notified() => {}
            () = tokio::time::sleep(period) => break Some(SessionEnd::PingTimeout),
        }
    };
    // Unknown before closed: a client told `close` finds the session gone when it asks again.
    engine
        .sessions
        .lock()
        .expect("sessions lock poisoned")
        .remove(&session.sid);
    if let Some(reason) = reason {
        session.close(reason);
    }
}

/// A long-poll: the queued packets, waiting for the first one. A ping comes every heartbeat,
/// so this never waits much longer than that.
async fn poll(session: &Session) -> Response {
    match session.transport() {
        Carrier::Polling => {}
        // The client is switching; release it so it can finish the upgrade.
        Carrier::Upgrading => return text(packet::NOOP),
        Carrier::WebSocket => return bad_request(),
    }
    let Ok(mut rx) = session.rx.try_lock() else {
        // Engine.IO forbids overlapping polls; the packets' order could not be kept.
        session.close(SessionEnd::ProtocolError);
        return bad_request();
    };
    let first = tokio::select! {
        biased;
        () = session.closed.cancelled() => None,
        () = session.upgrading.notified() => return text(packet::NOOP),
        packet = rx.recv() => packet,
    };
    // A closed session answers `close`: socket.io-client then reconnects (and resumes by
    // cursor) unless it was the one that left.
    let Some(mut body) = first else {
        return text(packet::CLOSE);
    };
    while body.len() < MAX_PAYLOAD {
        match rx.try_recv() {
            Ok(packet) => {
                body.push(packet::SEPARATOR);
                body.push_str(&packet);
            }
            Err(_) => break,
        }
    }
    text(body)
}

/// Packets a polling client sends.
async fn post(session: &Arc<Session>, body: Body) -> Response {
    if session.transport() == Carrier::WebSocket {
        return bad_request();
    }
    let bytes = match body.into_bytes_limit(MAX_PAYLOAD).await {
        Ok(bytes) => bytes,
        Err(poem::error::ReadBodyError::PayloadTooLarge) => {
            session.close(SessionEnd::ProtocolError);
            return Response::builder()
                .status(StatusCode::PAYLOAD_TOO_LARGE)
                .content_type("application/json")
                .body(r#"{"code":3,"message":"Bad request"}"#);
        }
        Err(_) => {
            session.close(SessionEnd::TransportError);
            return bad_request();
        }
    };
    let Ok(body) = std::str::from_utf8(&bytes) else {
        session.close(SessionEnd::ProtocolError);
        return bad_request();
    };
    for packet in body.split(packet::SEPARATOR) {
        if let Err(why) = session.receive(packet) {
            tracing::debug!(sid = %session.sid, why, "closing a Socket.IO session");
            session.close(SessionEnd::ProtocolError);
            return bad_request();
        }
    }
    Response::builder().content_type("text/html").body("ok")
}

fn websocket_response(upgrade: WebSocket, session: Arc<Session>, probe: bool) -> Response {
    let config = crate::stream::socket::socket_config(MAX_PAYLOAD);
    // Shutdown waits (within the grace period) for the socket's task to close it.
    let running = session.state.tasks.token();
    upgrade
        .config(config)
        .on_upgrade(move |socket| async move {
            let _running = running;
            run_websocket(session, socket, probe).await
        })
        .into_response()
}

/// A session's WebSocket: after the probe (when it upgrades a polling session), it is the
/// session's transport until either side closes it.
async fn run_websocket(session: Arc<Session>, socket: WebSocketStream, probe: bool) {
    let (mut sink, mut stream) = socket.split();
    if probe && !upgrade(&session, &mut sink, &mut stream).await {
        return;
    }
    // Waits for a pending poll to hand back the queue (the probe answer released it).
    let mut rx = tokio::select! {
        biased;
        () = session.closed.cancelled() => return,
        rx = session.rx.lock() => rx,
    };
    session.set_transport(Carrier::WebSocket);
    loop {
        tokio::select! {
            biased;
            () = session.closed.cancelled() => break,
            frame = stream.next() => match frame {
                Some(Ok(Message::Text(text))) => {
                    if let Err(why) = session.receive(&text) {
                        tracing::debug!(sid = %session.sid, why, "closing a Socket.IO session");
                        session.close(SessionEnd::ProtocolError);
                    }
                }
                Some(Ok(Message::Close(_))) | None => session.close(SessionEnd::ClientClosed),
                Some(Err(_)) => session.close(SessionEnd::TransportError),
                // The socket answers pings itself; binary packets are not used here.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Binary(_))) => {}
            },
            packet = rx.recv() => {
                let Some(packet) = packet else { break };
                // A client that stops reading blocks this send; the heartbeat then closes
                // the session, which ends the send.
                let sent = tokio::select! {
                    biased;
                    () = session.closed.cancelled() => break,
                    sent = sink.send(Message::Text(packet)) => sent.is_ok(),
                };
                if !sent {
                    session.close(SessionEnd::TransportError);
                }
            }
        }
    }
    // socket.io-client reconnects after a close it did not ask for.
    let _ = tokio::time::timeout(Duration::from_secs(1), sink.send(Message::Close(None))).await;
}

/// The upgrade of a polling session: `2probe` -> `3probe`, then `5`. Polling goes on if the
/// client gives up, closes or says anything else.
async fn upgrade(
    session: &Session,
    sink: &mut futures_util::stream::SplitSink<WebSocketStream, Message>,
    stream: &mut futures_util::stream::SplitStream<WebSocketStream>,
) -> bool {
    let deadline = tokio::time::Instant::now() + UPGRADE_TIMEOUT;
    let mut probed = false;
    loop {
        let frame = tokio::select! {
            biased;
            () = session.closed.cancelled() => return false,
            frame = tokio::time::timeout_at(deadline, stream.next()) => frame,
        };
        match frame {
            Ok(Some(Ok(Message::Text(text)))) if text == packet::PROBE && !probed => {
                if sink
                    .send(Message::Text(packet::PROBE_ANSWER.to_owned()))
                    .await
                    .is_err()
                {
                    break;
                }
                probed = true;
                session.set_transport(Carrier::Upgrading);
                session.upgrading.notify_one();
            }
            Ok(Some(Ok(Message::Text(text)))) if text == "5" && probed => return true,
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
            _ => break,
        }
    }
    if probed {
        session.set_transport(Carrier::Polling);
    }
    false
}
