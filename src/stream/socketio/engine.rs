//! Engine.IO v4 over HTTP: the handshake, and each later request of a session handed to the
//! session's task ([`super::session`]) through its inbox: a long-poll GET, a POST of packets,
//! or the WebSocket of an upgrade. The registry maps session ids to inboxes, and nothing else.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use futures_util::SinkExt;
use poem::{
    FromRequest, IntoResponse, Request, Response,
    http::{Method, StatusCode},
    web::websocket::{Message, WebSocket},
};
use tokio::sync::{mpsc, oneshot};

use super::{
    MAX_PAYLOAD, packet,
    session::{Answer, Inbound, Session, random_id},
    transport::SessionSocket,
};
use crate::{
    api::AppState, auth::Credentials, http::fanout::WsWriter, limits::client_ip,
    metrics::Transport, stream::socket::socket_config,
};

/// Requests one session may have waiting for its task.
const INBOX: usize = 4;

/// The open sessions, by id.
#[derive(Default)]
pub(super) struct Engine {
    /// Held only to insert, look up or remove, never across an `.await`.
    sessions: Mutex<HashMap<String, Handle>>,
}

#[derive(Clone)]
struct Handle {
    inbox: mpsc::Sender<Inbound>,
    /// The session has (or is probing) a WebSocket: a second one is closed at once.
    websocket: Arc<AtomicBool>,
}

/// An Engine.IO error answer: `{"code","message"}`, with status 400 unless said otherwise.
fn engine_error(status: StatusCode, code: u8, message: &str) -> Response {
    Response::builder()
        .status(status)
        .content_type("application/json")
        .body(serde_json::json!({ "code": code, "message": message }).to_string())
}

fn unknown_session() -> Response {
    engine_error(StatusCode::BAD_REQUEST, 1, "Session ID unknown")
}

fn bad_request() -> Response {
    engine_error(StatusCode::BAD_REQUEST, 3, "Bad request")
}

fn text(body: String) -> Response {
    Response::builder()
        .content_type("text/plain; charset=UTF-8")
        .body(body)
}

/// The query parameters Engine.IO reads.
#[derive(Default)]
struct Query {
    eio: Option<String>,
    transport: Option<String>,
    sid: Option<String>,
}

impl Query {
    fn parse(query: Option<&str>) -> Self {
        let mut parsed = Self::default();
        for (key, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            let slot = match &*key {
                "EIO" => &mut parsed.eio,
                "transport" => &mut parsed.transport,
                "sid" => &mut parsed.sid,
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
        let query = Query::parse(req.uri().query());
        if query.eio.as_deref() != Some("4") {
            let status = StatusCode::BAD_REQUEST;
            return Ok(engine_error(status, 5, "Unsupported protocol version"));
        }
        let websocket = match query.transport.as_deref() {
            Some("polling") => false,
            Some("websocket") => true,
            _ => {
                return Ok(engine_error(
                    StatusCode::BAD_REQUEST,
                    0,
                    "Transport unknown",
                ));
            }
        };
        let Some(sid) = query.sid else {
            return self.open(&req, websocket).await;
        };
        let handle = self
            .sessions
            .lock()
            .expect("sessions lock poisoned")
            .get(&sid)
            .cloned();
        let Some(handle) = handle else {
            return Ok(unknown_session());
        };
        Ok(match (websocket, req.method()) {
            (false, &Method::GET) => {
                let (answer, answered) = oneshot::channel();
                ask(&handle, Inbound::Poll(answer), answered).await
            }
            (false, &Method::POST) => match req.take_body().into_bytes_limit(MAX_PAYLOAD).await {
                Ok(body) => {
                    let (answer, answered) = oneshot::channel();
                    ask(&handle, Inbound::Post(body, answer), answered).await
                }
                Err(err) => {
                    let _ = handle.inbox.send(Inbound::Abort).await;
                    match err {
                        poem::error::ReadBodyError::PayloadTooLarge => {
                            engine_error(StatusCode::PAYLOAD_TOO_LARGE, 3, "Bad request")
                        }
                        _ => bad_request(),
                    }
                }
            },
            (true, &Method::GET) => match WebSocket::from_request_without_body(&req).await {
                Ok(upgrade) => {
                    let second = handle.websocket.swap(true, Ordering::AcqRel);
                    let writer = ws_writer(&req);
                    upgrade
                        .config(socket_config(MAX_PAYLOAD))
                        .on_upgrade(move |mut socket| async move {
                            if second {
                                // One WebSocket per session: this one is told so and closed.
                                let _ = socket.send(Message::Close(None)).await;
                                return;
                            }
                            let socket = Box::new(SessionSocket::new(socket, writer));
                            if let Err(mpsc::error::SendError(Inbound::Socket(mut socket))) =
                                handle.inbox.send(Inbound::Socket(socket)).await
                            {
                                let _ = socket.socket.send(Message::Close(None)).await;
                            }
                        })
                        .into_response()
                }
                Err(_) => bad_request(),
            },
            _ => bad_request(),
        })
    }

    /// The handshake: a new session, answered with `open` over polling, or as the first frame
    /// of its WebSocket.
    async fn open(self: &Arc<Self>, req: &Request, websocket: bool) -> poem::Result<Response> {
        if req.method() != Method::GET {
            let status = StatusCode::BAD_REQUEST;
            return Ok(engine_error(status, 2, "Bad handshake method"));
        }
        let upgrade = if websocket {
            match WebSocket::from_request_without_body(req).await {
                Ok(upgrade) => Some(upgrade),
                Err(_) => return Ok(bad_request()),
            }
        } else {
            None
        };
        let state = req
            .data::<AppState>()
            .cloned()
            .expect("the routes carry the AppState");
        let slot = state.slots.acquire(Transport::SocketIo, client_ip(req))?;
        let sid = random_id();
        let (inbox, inbox_rx) = mpsc::channel(INBOX);
        let handle = Handle {
            inbox,
            websocket: Arc::new(AtomicBool::new(websocket)),
        };
        let keepalive = state.settings.keepalive.as_millis();
        let handshake = packet::open(&sid, !websocket, keepalive, keepalive);
        // Shutdown waits (within the grace period) for the session to close.
        let running = state.tasks.token();
        let session = Session {
            sid,
            credentials: Credentials::of(req.headers()),
            state,
            engine: self.clone(),
            query: req.uri().query().unwrap_or_default().to_owned(),
            inbox: inbox_rx,
            slot,
        };
        // Registered once its task runs: a WebSocket that never opens leaves nothing behind.
        let engine = self.clone();
        let register = move |session: &Session| {
            let mut sessions = engine.sessions.lock().expect("sessions lock poisoned");
            sessions.insert(session.sid.clone(), handle);
        };
        Ok(match upgrade {
            None => {
                register(&session);
                tokio::spawn(async move {
                    let _running = running;
                    session.run(None).await;
                });
                text(handshake)
            }
            Some(upgrade) => {
                let writer = ws_writer(req);
                upgrade
                    .config(socket_config(MAX_PAYLOAD))
                    .on_upgrade(move |socket| async move {
                        let _running = running;
                        register(&session);
                        session.run(Some(SessionSocket::new(socket, writer))).await;
                    })
                    .into_response()
            }
        })
    }

    /// A session's end: later requests for it are answered `Session ID unknown`.
    pub(super) fn remove(&self, sid: &str) {
        self.sessions
            .lock()
            .expect("sessions lock poisoned")
            .remove(sid);
    }

    /// A probed WebSocket did not become the transport: another may try.
    pub(super) fn probe_failed(&self, sid: &str) {
        if let Some(handle) = self
            .sessions
            .lock()
            .expect("sessions lock poisoned")
            .get(sid)
        {
            handle.websocket.store(false, Ordering::Release);
        }
    }
}

/// Hands a polling request to its session and waits for the answer.
/// The fan-out's way to a WebSocket request's connection, when it has one.
fn ws_writer(req: &Request) -> Option<WsWriter> {
    let state = req.data::<AppState>()?;
    WsWriter::for_request(&state.hub, req)
}

async fn ask(handle: &Handle, inbound: Inbound, answered: oneshot::Receiver<Answer>) -> Response {
    if handle.inbox.send(inbound).await.is_err() {
        return unknown_session();
    }
    match answered.await {
        Ok(Answer::Packets(body)) => text(body),
        Ok(Answer::BadRequest) => bad_request(),
        // The session ended without answering.
        Err(_) => unknown_session(),
    }
}
