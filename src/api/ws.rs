//! `/ws`: the change stream and the store's writes over one WebSocket (DESIGN §3).
//!
//! A thin translator: the stream comes from one [`Subscription`] (replay, filters, resets and
//! the slow-consumer bound all live in `events/`), and every write calls the same `service`
//! function as its REST twin, so answers carry the very status and problem body REST gives.
//! `openapi/asyncapi.yaml` documents the same protocol for client authors.
//!
//! # Connecting
//! `GET /ws?after=<cursor>&entity=<FUNKOS|CATEGORIES>&types=<CREATE,UPDATE,DELETE>` subscribes at
//! connect, like a first `subscribe` (no `after`: live events from now). A malformed cursor or
//! filter answers `400` with a problem body before upgrading (and `503` past the open-stream
//! limits, as SSE). The server speaks the subprotocol `funko-live`: a client that offers
//! subprotocols must offer it. Reading is public; writes follow REST's rule (a bearer token when
//! tokens are configured, else `401`/`403` in the `error` frame). Browsers cannot set headers on
//! a WebSocket, so the token comes either in `Authorization: Bearer <token>` or as a
//! `bearer.<token>` entry in `Sec-WebSocket-Protocol` (e.g.
//! `new WebSocket(url, ["funko-live", "bearer." + token])`); the server never echoes the token.
//!
//! # Frames
//! Text frames, one JSON object each. Change events are the exact JSON SSE sends (`id`,
//! `entity`, `type`, `data`, `createdAt`) and have no `op`; every other frame has one.
//!
//! Server to client:
//! - `{"op":"welcome","cursor":"<head>"}`: always first; `cursor` is the newest event committed
//!   when the socket opened (without `after`, events after exactly this cursor follow).
//! - `{"op":"reset","cursor":"<head>","reason":"expired"|"unknown"}`: the cursor cannot be served;
//!   reload (e.g. `GET /funkos`) and carry on: events after `cursor` follow.
//! - `{"op":"pong"}` answers `ping` (with its `requestId`, when it had one).
//! - `{"op":"result","requestId":…,"status":201|200|204,"body":…,"cursor":"<c>"}` answers a
//!   write: `body` is what REST answers (the resource; `null` for a delete, whose REST answer is
//!   `204 No Content`) and `cursor` is the write's event (REST's `Stream-Cursor`). A `subscribe`
//!   that carries a `requestId` is acknowledged with status 200, body `null` and the cursor the
//!   new subscription starts after; every frame after the acknowledgement is from the new
//!   subscription.
//! - `{"op":"error","requestId":…|null,"status":4xx|5xx,"body":{problem}}`: a refused frame; the
//!   socket stays open. `requestId` is `null` when the frame had none (or was not JSON).
//!
//! Client to server (`requestId`: a string or number of the client's choosing, echoed back):
//! - `{"op":"subscribe","after":"<cursor>"|null,"entity":…|null,"types":[…]|null}` replaces the
//!   current subscription (replay after `after`, then live; `null`: from now); on error the old
//!   one stays.
//! - `{"op":"ping"}`.
//! - `{"op":"create","requestId":"r1","entity":"FUNKOS"|"CATEGORIES","data":{…}}`: REST `POST`.
//! - `{"op":"update","requestId":"r2","entity":…,"id":7,"data":{…}}`: for `FUNKOS` a JSON merge
//!   patch (REST `PATCH`), for `CATEGORIES` a rename (REST `PUT`).
//! - `{"op":"delete","requestId":"r3","entity":…,"id":7}`: REST `DELETE`.
//! - `update` and `delete` of `FUNKOS` take an optional `"ifMatch":"\"3\""`, REST's `If-Match`.
//!
//! Writes run concurrently (at most [`MAX_WRITES_IN_FLIGHT`] per socket) and each is answered
//! exactly once, in completion order. Fields a frame does not use are ignored. A frame that is
//! not JSON, not an object, has no or an unknown `op`, or misses fields gets an `error` (400);
//! a binary frame gets an `error` (415).
//!
//! # Closing
//! The server closes with a code and, as the reason, `{"reason":…,"cursor":"<c>"}`: `cursor` is
//! the position after everything sent before the close frame (filtered-out events included), so
//! a client reconnects with `?after=<c>` and misses nothing.
//! - `1001` (`shutdown`): the server is stopping; reconnect (to another instance).
//! - `1013` (`slow`, "try again later"): the client fell more than the subscriber queue behind
//!   the live stream, as a cut-off SSE client does; reconnect from the cursor.
//! - `1008` (`unresponsive`): the server pings a socket it has not heard from for `keepalive`
//!   (`KEEPALIVE_SECONDS`) and closes it when another `keepalive` passes in silence.
//! - `1009` (`too big`): a frame (or message) over 64 KiB.
//! - `1011` (`error`): the stream failed on the server's side; reconnect from the cursor.

use std::{
    collections::VecDeque,
    future::poll_fn,
    io,
    task::{Context, Poll, ready},
    time::Duration,
};

use futures_util::{
    SinkExt, StreamExt,
    future::BoxFuture,
    stream::{FuturesUnordered, SplitSink},
};
use poem::{
    IntoResponse, Request, Response, handler,
    web::{
        Data,
        websocket::{Message, WebSocket, WebSocketConfig, WebSocketStream},
    },
};
use poem_openapi::types::ToJSON;
use serde_json::{Map, Value, json};
use tokio::time::Instant;

use super::AppState;
use crate::{
    auth::{Caller, WritePolicy},
    db,
    domain::FieldErrors,
    error::ApiError,
    events::{
        ChangeBus, Entity, Filter, Reset, Start, Subscription, parse_cursor, subscription::Next,
    },
    limits::{StreamSlot, client_ip},
    metrics::METRICS,
    service::{
        IfMatch, Written, categories,
        funkos::{self, UpdateMode},
    },
};

/// The largest frame, and the largest message, a client may send; larger ones close the
/// socket with 1009.
pub const MAX_FRAME_BYTES: usize = 64 * 1024;
/// The subprotocol the server selects when a client offers it.
pub const SUBPROTOCOL: &str = "funko-live";
/// Writes one socket may have in flight; past this its frames are not read until one ends.
pub const MAX_WRITES_IN_FLIGHT: usize = 16;
/// Events read per step of the subscription.
const BATCH: usize = 256;
/// Frames queued for a client past which the server stops reading its frames, so a client
/// that sends without reading the answers cannot grow the queue.
const MAX_QUEUED_FRAMES: usize = 512;
/// How long the frames before a close frame, and the close frame itself, may take to flush.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// How much of a socket tungstenite reads at a time. Before every read attempt it zero-fills
/// its buffer up to this much, even when nothing has arrived, which also makes the buffer
/// resident. At its default (128 KiB) that memset was 42 % of the server thread in a
/// 1,000-subscriber WebSocket fan-out (each delivery wakes the socket's task, which polls the
/// read side) and an idle socket cost 134 KiB of RSS; at 4 KiB, 10 KiB (`bench connections`),
/// and a client's frame up to 64 KiB takes a few reads more.
const READ_BUFFER_BYTES: usize = 4 * 1024;

/// The WebSocket settings of `/ws` and Socket.IO: frames and messages up to `max_bytes`.
pub(crate) fn socket_config(max_bytes: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .max_frame_size(Some(max_bytes))
        .max_message_size(Some(max_bytes))
}

/// What a client may ask for (the `op` of its frames).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientOp {
    Subscribe,
    Ping,
    Create,
    Update,
    Delete,
}

impl ClientOp {
    pub const ALL: [Self; 5] = [
        Self::Subscribe,
        Self::Ping,
        Self::Create,
        Self::Update,
        Self::Delete,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Subscribe => "subscribe",
            Self::Ping => "ping",
            Self::Create => "create",
            Self::Update => "update",
            Self::Delete => "delete",
        }
    }

    fn parse(op: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|o| o.as_str() == op)
    }
}

/// The `op` of every frame the server sends other than change events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerOp {
    Welcome,
    Reset,
    Pong,
    Result,
    Error,
}

impl ServerOp {
    pub const ALL: [Self; 5] = [
        Self::Welcome,
        Self::Reset,
        Self::Pong,
        Self::Result,
        Self::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Welcome => "welcome",
            Self::Reset => "reset",
            Self::Pong => "pong",
            Self::Result => "result",
            Self::Error => "error",
        }
    }
}

/// Why the server closes a socket. See the module docs for what a client does about each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    Shutdown,
    TooSlow,
    Unresponsive,
    TooBig,
    Failed,
}

impl CloseReason {
    pub const ALL: [Self; 5] = [
        Self::Shutdown,
        Self::TooSlow,
        Self::Unresponsive,
        Self::TooBig,
        Self::Failed,
    ];

    pub fn code(self) -> u16 {
        match self {
            Self::Shutdown => 1001,
            Self::Unresponsive => 1008,
            Self::TooBig => 1009,
            Self::Failed => 1011,
            Self::TooSlow => 1013,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Shutdown => "shutdown",
            Self::TooSlow => "slow",
            Self::Unresponsive => "unresponsive",
            Self::TooBig => "too big",
            Self::Failed => "error",
        }
    }

    /// The close frame: the code, and the reason with the cursor to resume after (at most
    /// 60 bytes, well under the 123 a close frame allows).
    fn frame(self, cursor: i64) -> Message {
        let reason = json!({"reason": self.as_str(), "cursor": cursor.to_string()});
        Message::close_with(self.code(), reason.to_string())
    }
}

/// Who is asking, as the upgrade request said.
#[derive(Clone, Debug, Default)]
struct Credentials {
    /// From `Authorization: Bearer <token>`, else from a `bearer.<token>` subprotocol entry.
    bearer: Option<String>,
    /// The upgrade's `Origin` and `Host`, for the rule of open writes.
    caller: Caller,
}

impl Credentials {
    fn of(request: &Request) -> Self {
        Self {
            bearer: WritePolicy::token_from_upgrade(request.headers()),
            caller: Caller::of(request.headers()),
        }
    }
}

/// The one place a write over the socket is authorised: REST's rule, with the token, origin
/// and host the upgrade request carried, so both answer the same 401/403.
fn authorize_write(state: &AppState, credentials: &Credentials) -> Result<(), ApiError> {
    state
        .policy
        .check(credentials.bearer.as_deref(), &credentials.caller)
}

/// Upgrades to the WebSocket protocol, subscribed as the query asks.
#[handler]
pub async fn handler(
    request: &Request,
    ws: poem::Result<WebSocket>,
    state: Data<&AppState>,
) -> Response {
    match upgrade(request, ws, state.0).await {
        Ok(response) => response,
        Err(err) => err.into_poem_response(),
    }
}

async fn upgrade(
    request: &Request,
    ws: poem::Result<WebSocket>,
    state: &AppState,
) -> Result<Response, ApiError> {
    let (start, filter) = connect_params(request.uri().query().unwrap_or(""))?;
    let ws = ws.map_err(|_| {
        ApiError::bad_request(
            "/ws speaks WebSocket: send a GET with `Upgrade: websocket` (RFC 6455)",
        )
    })?;
    let credentials = Credentials::of(request);
    let slot = state.slots.acquire("ws", client_ip(request))?;
    let (subscription, reset) = Subscription::open(state.bus.clone(), start, filter).await?;
    let head = match (start, &reset) {
        // Exactly where this subscription begins, so nothing falls between welcome and it.
        (Start::Now, _) | (_, Some(_)) => subscription.cursor(),
        (Start::After(_), None) => db_head(&state.bus).await?,
    };
    let session = Session {
        state: state.clone(),
        credentials,
        subscription,
        _slot: slot,
    };
    let config = socket_config(MAX_FRAME_BYTES);
    // Shutdown waits (within the grace period) for the socket's task to send its 1001 close.
    let running = state.tasks.token();
    Ok(ws
        .protocols([SUBPROTOCOL])
        .config(config)
        .on_upgrade(move |socket| async move {
            let _running = running;
            session.run(socket, head, reset).await
        })
        .into_response())
}

/// The newest committed event.
async fn db_head(bus: &ChangeBus) -> Result<i64, ApiError> {
    let mut conn = bus.db().reader.acquire().await?;
    let (_, head) = db::events::bounds(&mut conn).await?;
    Ok(head)
}

/// `after`, `entity` and `types` (repeatable, comma-separated) of the upgrade request.
fn connect_params(query: &str) -> Result<(Start, Filter), ApiError> {
    let mut after = None;
    let mut entity = None;
    let mut types = Vec::new();
    for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
        match &*key {
            "after" => after = Some(value.into_owned()),
            "entity" => entity = Some(value.into_owned()),
            "types" => types.push(value.into_owned()),
            _ => {}
        }
    }
    let start = match after.as_deref().map(str::trim).filter(|a| !a.is_empty()) {
        None => Start::Now,
        Some(raw) => Start::After(parse_cursor(raw).ok_or_else(|| not_a_cursor(raw))?),
    };
    let filter = Filter::parse(entity.as_deref(), types.iter().map(String::as_str))?;
    Ok((start, filter))
}

fn not_a_cursor(raw: &str) -> ApiError {
    ApiError::bad_request(format!(
        "after must be a cursor (a decimal event id), not {raw:?}"
    ))
}

/// One parsed client frame.
enum Command {
    Subscribe { start: Start, filter: Filter },
    Ping,
    Write(Write),
}

/// A write, checked for shape; its body is checked by the service, as on REST.
struct Write {
    entity: Entity,
    action: Action,
}

enum Action {
    Create {
        data: Value,
    },
    Update {
        id: i64,
        data: Value,
        if_match: Option<IfMatch>,
    },
    Delete {
        id: i64,
        if_match: Option<IfMatch>,
    },
}

/// What a successful write answers: REST's status and body, and its event's cursor.
struct Answer {
    status: u16,
    body: Value,
    cursor: i64,
}

impl Answer {
    fn written<T: ToJSON>(status: u16, written: Written<T>) -> Self {
        Self {
            status,
            body: written.resource.to_json().unwrap_or(Value::Null),
            cursor: written.cursor,
        }
    }

    /// REST answers a delete with `204 No Content`: the body is `null`.
    fn deleted<T>(written: Written<T>) -> Self {
        Self {
            status: 204,
            body: Value::Null,
            cursor: written.cursor,
        }
    }
}

impl Write {
    /// Calls the service function REST calls for the same request.
    async fn perform(self, state: &AppState) -> Result<Answer, ApiError> {
        let bus = &state.bus;
        Ok(match (self.entity, self.action) {
            (Entity::Funkos, Action::Create { data }) => {
                Answer::written(201, funkos::create(bus, &data).await?)
            }
            (Entity::Funkos, Action::Update { id, data, if_match }) => Answer::written(
                200,
                funkos::update(
                    bus,
                    &state.images,
                    id,
                    &data,
                    UpdateMode::Merge,
                    if_match.as_ref(),
                )
                .await?,
            ),
            (Entity::Funkos, Action::Delete { id, if_match }) => {
                Answer::deleted(funkos::delete(bus, id, if_match.as_ref()).await?)
            }
            (Entity::Categories, Action::Create { data }) => {
                Answer::written(201, categories::create(bus, &data).await?)
            }
            (Entity::Categories, Action::Update { id, data, .. }) => {
                Answer::written(200, categories::update(bus, id, &data, None).await?)
            }
            (Entity::Categories, Action::Delete { id, .. }) => {
                Answer::deleted(categories::delete(bus, id, None).await?)
            }
        })
    }
}

/// Parses a text frame: its `requestId` (`null` when absent or unusable) and its command.
fn parse_frame(text: &str) -> (Value, Result<Command, ApiError>) {
    let value: Value = match crate::domain::parse_json_strictly(text.as_bytes()) {
        Ok(value) => value,
        Err(err) => {
            let detail = format!("the frame is not valid JSON: {err}");
            return (Value::Null, Err(ApiError::bad_request(detail)));
        }
    };
    let Value::Object(frame) = value else {
        return (
            Value::Null,
            Err(ApiError::bad_request("a frame must be a JSON object")),
        );
    };
    let request_id = match frame.get("requestId") {
        None | Some(Value::Null) => Value::Null,
        Some(id @ (Value::String(_) | Value::Number(_))) => id.clone(),
        Some(_) => {
            return (
                Value::Null,
                Err(invalid(
                    "the frame's requestId is invalid",
                    "requestId",
                    "must be a string or a number",
                )),
            );
        }
    };
    let command = match frame.get("op") {
        None | Some(Value::Null) => Err(invalid(
            "the frame has no op",
            "op",
            format!("required: one of {}", op_names()),
        )),
        Some(Value::String(op)) => match ClientOp::parse(op) {
            Some(op) => parse_command(op, &frame, !request_id.is_null()),
            None => Err(invalid(
                format!("unknown op {op:?}"),
                "op",
                format!("must be one of {}", op_names()),
            )),
        },
        Some(_) => Err(invalid(
            "the frame's op is invalid",
            "op",
            format!("must be a string, one of {}", op_names()),
        )),
    };
    (request_id, command)
}

fn op_names() -> String {
    ClientOp::ALL.map(ClientOp::as_str).join(", ")
}

fn invalid(detail: impl Into<String>, field: &str, message: impl Into<String>) -> ApiError {
    ApiError::BadRequest {
        detail: detail.into(),
        errors: FieldErrors::single(field, message),
    }
}

fn parse_command(
    op: ClientOp,
    frame: &Map<String, Value>,
    has_request_id: bool,
) -> Result<Command, ApiError> {
    let present = |field: &str| frame.get(field).filter(|v| !v.is_null());
    match op {
        ClientOp::Ping => return Ok(Command::Ping),
        ClientOp::Subscribe => {
            let start = match present("after") {
                None => Start::Now,
                Some(Value::String(raw)) if raw.trim().is_empty() => Start::Now,
                Some(Value::String(raw)) => {
                    Start::After(parse_cursor(raw).ok_or_else(|| not_a_cursor(raw))?)
                }
                Some(Value::Number(n)) if n.as_i64().is_some_and(|n| n >= 0) => {
                    Start::After(n.as_i64().expect("checked"))
                }
                Some(other) => return Err(not_a_cursor(&other.to_string())),
            };
            let entity = match present("entity") {
                None => None,
                Some(Value::String(entity)) => Some(entity.as_str()),
                Some(_) => return Err(invalid("invalid filter", "entity", "must be a string")),
            };
            let types: Vec<&str> = match present("types") {
                None => Vec::new(),
                Some(Value::String(types)) => vec![types],
                Some(Value::Array(types)) => types
                    .iter()
                    .map(Value::as_str)
                    .collect::<Option<_>>()
                    .ok_or_else(|| {
                        invalid("invalid filter", "types", "must be an array of strings")
                    })?,
                Some(_) => {
                    return Err(invalid(
                        "invalid filter",
                        "types",
                        "must be an array of strings",
                    ));
                }
            };
            let filter = Filter::parse(entity, types)?;
            return Ok(Command::Subscribe { start, filter });
        }
        ClientOp::Create | ClientOp::Update | ClientOp::Delete => {}
    }

    // A write: every missing or mistyped field is listed at once, as REST lists field errors.
    let mut errors = FieldErrors::default();
    if !has_request_id {
        errors.add(
            "requestId",
            "required for create, update and delete: a string or number to match the answer",
        );
    }
    let entity = match present("entity") {
        None => {
            errors.add("entity", "required: FUNKOS or CATEGORIES");
            None
        }
        Some(value) => {
            let entity = value.as_str().and_then(Entity::parse);
            if entity.is_none() {
                errors.add(
                    "entity",
                    format!("must be FUNKOS or CATEGORIES, not {value}"),
                );
            }
            entity
        }
    };
    let id = match (op, frame.get("id")) {
        (ClientOp::Create, _) => None,
        (_, None | Some(Value::Null)) => {
            errors.add("id", "required: the resource's id");
            None
        }
        (_, Some(value)) => {
            let id = value.as_i64();
            if id.is_none() {
                errors.add("id", format!("must be an integer, not {value}"));
            }
            id
        }
    };
    // `data: null` goes through, as a JSON `null` body would on REST (and gets REST's answer).
    let data = match (op, frame.get("data")) {
        (ClientOp::Delete, _) => None,
        (_, None) => {
            errors.add("data", "required: the resource's JSON");
            None
        }
        (_, Some(data)) => Some(data.clone()),
    };
    let if_match = match present("ifMatch") {
        None => None,
        Some(_) if op == ClientOp::Create => {
            errors.add("ifMatch", "applies to update and delete only");
            None
        }
        Some(_) if entity == Some(Entity::Categories) => {
            errors.add(
                "ifMatch",
                "applies to FUNKOS only: categories have no version",
            );
            None
        }
        Some(Value::String(raw)) => Some(IfMatch::parse(raw)?),
        Some(_) => {
            errors.add("ifMatch", "must be a string, like an If-Match header");
            None
        }
    };
    if !errors.is_empty() {
        return Err(ApiError::BadRequest {
            detail: format!("the {} frame is incomplete or invalid", op.as_str()),
            errors,
        });
    }
    let entity = entity.expect("checked above");
    let action = match op {
        ClientOp::Create => Action::Create {
            data: data.expect("checked above"),
        },
        ClientOp::Update => Action::Update {
            id: id.expect("checked above"),
            data: data.expect("checked above"),
            if_match,
        },
        _ => Action::Delete {
            id: id.expect("checked above"),
            if_match,
        },
    };
    Ok(Command::Write(Write { entity, action }))
}

fn welcome_frame(head: i64) -> Message {
    frame(json!({"op": ServerOp::Welcome.as_str(), "cursor": head.to_string()}))
}

fn reset_frame(reset: &Reset) -> Message {
    frame(json!({"op": ServerOp::Reset.as_str(), "cursor": reset.cursor, "reason": reset.reason}))
}

fn pong_frame(request_id: Value) -> Message {
    let mut pong = json!({"op": ServerOp::Pong.as_str()});
    if !request_id.is_null() {
        pong["requestId"] = request_id;
    }
    frame(pong)
}

fn result_frame(request_id: Value, answer: Answer) -> Message {
    frame(json!({
        "op": ServerOp::Result.as_str(),
        "requestId": request_id,
        "status": answer.status,
        "body": answer.body,
        "cursor": answer.cursor.to_string(),
    }))
}

/// The status and problem body REST would answer.
fn error_frame(request_id: Value, err: &ApiError) -> Message {
    frame(json!({
        "op": ServerOp::Error.as_str(),
        "requestId": request_id,
        "status": err.status().as_u16(),
        "body": err.body().to_json(),
    }))
}

fn answer_frame(request_id: Value, outcome: Result<Answer, ApiError>) -> Message {
    match outcome {
        Ok(answer) => result_frame(request_id, answer),
        Err(err) => error_frame(request_id, &err),
    }
}

fn frame(value: Value) -> Message {
    Message::Text(value.to_string())
}

/// Frames waiting for the client, and the socket's sending half.
struct Outbox {
    sink: SplitSink<WebSocketStream, Message>,
    /// Bounded by its producers: at most one batch of events (the subscription is only read
    /// when this is empty), and answers, whose requests are not read past
    /// [`MAX_QUEUED_FRAMES`].
    queue: VecDeque<Message>,
    /// Frames were handed to the socket and not yet flushed.
    unflushed: bool,
}

impl Outbox {
    fn push(&mut self, frame: Message) {
        self.queue.push_back(frame);
    }

    fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    fn has_work(&self) -> bool {
        !self.queue.is_empty() || self.unflushed
    }

    /// Writes the queue and flushes it. Cancel-safe: a frame leaves the queue only when the
    /// socket takes it, so a `select!` may drop this at any await.
    async fn flush(&mut self) -> io::Result<()> {
        poll_fn(|cx| self.poll_flush(cx)).await
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.queue.is_empty() {
            ready!(self.sink.poll_ready_unpin(cx))?;
            let frame = self.queue.pop_front().expect("not empty");
            self.sink.start_send_unpin(frame)?;
            self.unflushed = true;
        }
        if self.unflushed {
            ready!(self.sink.poll_flush_unpin(cx))?;
            self.unflushed = false;
        }
        Poll::Ready(Ok(()))
    }
}

/// How a socket's loop ended.
enum End {
    /// The client closed or went away: nothing more to tell it.
    ByClient,
    /// The server closes, with this reason.
    ByServer(CloseReason),
}

/// One socket's state, owned by its task.
struct Session {
    state: AppState,
    credentials: Credentials,
    subscription: Subscription,
    /// This socket's place among the open streams, freed when the task ends.
    _slot: StreamSlot,
}

type WriteFuture = BoxFuture<'static, Message>;

impl Session {
    /// The socket's one task: a `select!` over the client's frames, the subscription's next
    /// step, finished writes, the heartbeat and shutdown, with the outbox flushing meanwhile.
    async fn run(mut self, socket: WebSocketStream, head: i64, reset: Option<Reset>) {
        let (sink, mut incoming) = socket.split();
        let mut out = Outbox {
            sink,
            queue: VecDeque::new(),
            unflushed: false,
        };
        out.push(welcome_frame(head));
        if let Some(reset) = &reset {
            out.push(reset_frame(reset));
        }
        let mut writes: FuturesUnordered<WriteFuture> = FuturesUnordered::new();
        let closing = self.state.bus.closing().clone();
        let keepalive = self.state.settings.keepalive;
        let mut last_heard = Instant::now();
        let mut pinged = false;
        // One heartbeat timer for the socket's life, re-armed only when it fires: a frame
        // just notes the time, so traffic costs no timer-wheel work.
        let heartbeat = tokio::time::sleep(keepalive);
        tokio::pin!(heartbeat);

        let end = loop {
            tokio::select! {
                flushed = out.flush(), if out.has_work() => {
                    if flushed.is_err() {
                        break End::ByClient;
                    }
                }
                // Not read while the client does not read its answers or has enough writes
                // in flight: back-pressure instead of an unbounded queue.
                frame = incoming.next(),
                    if out.queue.len() < MAX_QUEUED_FRAMES && writes.len() < MAX_WRITES_IN_FLIGHT =>
                {
                    last_heard = Instant::now();
                    pinged = false;
                    match frame {
                        None => break End::ByClient,
                        Some(Err(err)) => break self.read_failed(&err),
                        Some(Ok(Message::Close(_))) => break End::ByClient,
                        Some(Ok(message)) => self.on_message(message, &mut out, &mut writes).await,
                    }
                }
                // Read only when the previous batch has been handed to the socket: a client
                // that stops reading stops the subscription, which falls behind the bus's
                // tail and is cut off when it next reads, exactly as on SSE.
                step = self.subscription.next(BATCH), if out.is_empty() => match step {
                    Ok(Next::Events { events, .. }) => {
                        METRICS.delivered("ws", events.len());
                        for event in events {
                            out.push(Message::Text(event.json.to_string()));
                        }
                    }
                    Ok(Next::Reset(reset)) => out.push(reset_frame(&reset)),
                    Ok(Next::CutOff { .. }) => break End::ByServer(CloseReason::TooSlow),
                    Ok(Next::Closed { .. }) => break End::ByServer(CloseReason::Shutdown),
                    Err(err) => {
                        tracing::warn!(error = %err, cursor = self.subscription.cursor(), "WebSocket stream failed");
                        break End::ByServer(CloseReason::Failed);
                    }
                },
                Some(answer) = writes.next(), if !writes.is_empty() => out.push(answer),
                () = &mut heartbeat => {
                    let silence_limit = if pinged { 2 * keepalive } else { keepalive };
                    let due = last_heard + silence_limit;
                    if Instant::now() < due {
                        // The client spoke since the timer was set.
                        heartbeat.as_mut().reset(due);
                        continue;
                    }
                    if pinged {
                        break End::ByServer(CloseReason::Unresponsive);
                    }
                    // Ahead of queued events: a client that reads slowly is not taken for
                    // a dead one.
                    out.queue.push_front(Message::Ping(Vec::new()));
                    pinged = true;
                    heartbeat.as_mut().reset(last_heard + 2 * keepalive);
                }
                () = closing.cancelled() => break End::ByServer(CloseReason::Shutdown),
            }
        };

        // Writes in flight finish (dropping one mid-commit could lose the wake-up that tells
        // the bus about its event) and are answered, unless the client is gone.
        while let Some(answer) = writes.next().await {
            out.push(answer);
        }
        match end {
            // Only the socket's own close reply (if the client sent a close) is left to send:
            // flushing sends it.
            End::ByClient => {
                out.queue.clear();
                out.unflushed = true;
            }
            End::ByServer(reason) => {
                tracing::debug!(reason = reason.as_str(), "closing a WebSocket");
                out.push(reason.frame(self.subscription.cursor()));
            }
        }
        let _ = tokio::time::timeout(CLOSE_GRACE, out.flush()).await;
        // Wait for the client's close reply (or EOF), so the socket is not torn down with its
        // frames unread (which would reset the connection under the close frame). Not after a
        // frame too big: that frame would have to be read.
        if matches!(end, End::ByServer(reason) if reason != CloseReason::TooBig && reason != CloseReason::Unresponsive)
        {
            let _ = tokio::time::timeout(CLOSE_GRACE, async {
                while let Some(Ok(frame)) = incoming.next().await {
                    if frame.is_close() {
                        break;
                    }
                }
            })
            .await;
            let _ = tokio::time::timeout(CLOSE_GRACE, out.flush()).await;
        }
    }

    /// A read error ends the socket: a frame over the limit closes it with 1009, anything
    /// else means the connection is gone. poem flattens tungstenite's errors into
    /// `io::Error`s of kind `Other` carrying their text, so the capacity error is known by it
    /// (the 1009 test fails if that text changes).
    fn read_failed(&self, err: &io::Error) -> End {
        let text = err.to_string();
        if err.kind() == io::ErrorKind::Other && text.contains("Message too long") {
            End::ByServer(CloseReason::TooBig)
        } else {
            tracing::debug!(error = %err, "WebSocket read failed");
            End::ByClient
        }
    }

    async fn on_message(
        &mut self,
        message: Message,
        out: &mut Outbox,
        writes: &mut FuturesUnordered<WriteFuture>,
    ) {
        let text = match message {
            Message::Text(text) => text,
            Message::Binary(_) => {
                let err = ApiError::UnsupportedMediaType(
                    "binary frames are not accepted: send one JSON object per text frame".into(),
                );
                out.push(error_frame(Value::Null, &err));
                return;
            }
            // The socket answers pings itself; a pong only proves the client is there.
            Message::Ping(_) | Message::Pong(_) | Message::Close(_) => return,
        };
        let (request_id, command) = parse_frame(&text);
        match command {
            Err(err) => out.push(error_frame(request_id, &err)),
            Ok(Command::Ping) => out.push(pong_frame(request_id)),
            Ok(Command::Subscribe { start, filter }) => {
                match Subscription::open(self.state.bus.clone(), start, filter).await {
                    Err(err) => out.push(error_frame(request_id, &err)),
                    Ok((subscription, reset)) => {
                        self.subscription = subscription;
                        if !request_id.is_null() {
                            let ack = json!({
                                "op": ServerOp::Result.as_str(),
                                "requestId": request_id,
                                "status": 200,
                                "body": null,
                                "cursor": self.subscription.cursor().to_string(),
                            });
                            out.push(frame(ack));
                        }
                        if let Some(reset) = reset {
                            out.push(reset_frame(&reset));
                        }
                    }
                }
            }
            Ok(Command::Write(write)) => {
                let authorized = authorize_write(&self.state, &self.credentials);
                let state = self.state.clone();
                writes.push(Box::pin(async move {
                    let outcome = match authorized {
                        Ok(()) => write.perform(&state).await,
                        Err(err) => Err(err),
                    };
                    answer_frame(request_id, outcome)
                }));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// JSON values whose objects use the frame's keys, so generated frames reach the
    /// checks of every op.
    fn frame_like() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(|f| json!(f)),
            prop::sample::select(vec![
                "subscribe",
                "ping",
                "create",
                "update",
                "delete",
                "FUNKOS",
                "CATEGORIES",
                "CREATE",
                "*",
                "\"1\"",
                "é",
                "",
            ])
            .prop_map(Value::from),
            any::<String>().prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                prop::collection::btree_map(
                    prop::sample::select(vec![
                        "op",
                        "requestId",
                        "entity",
                        "id",
                        "data",
                        "ifMatch",
                        "after",
                        "types",
                        "name",
                        "x",
                    ])
                    .prop_map(str::to_owned),
                    inner,
                    0..6,
                )
                .prop_map(|map| Value::Object(map.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// No text frame can make the parser panic; a refusal is always a 400.
        #[test]
        fn any_text_frame_parses_or_is_a_400(text in any::<String>()) {
            if let (_, Err(err)) = parse_frame(&text) {
                prop_assert_eq!(err.status().as_u16(), 400);
            }
        }

        #[test]
        fn any_frame_shaped_json_parses_or_is_a_400(frame in frame_like()) {
            if let (_, Err(err)) = parse_frame(&frame.to_string()) {
                prop_assert_eq!(err.status().as_u16(), 400);
            }
        }

        #[test]
        fn any_query_string_parses_or_is_a_400(query in any::<String>()) {
            if let Err(err) = connect_params(&query) {
                prop_assert_eq!(err.status().as_u16(), 400);
            }
        }
    }

    fn parsed(text: &str) -> (Value, Result<Command, ApiError>) {
        parse_frame(text)
    }

    fn bad(text: &str) -> (Value, ApiError) {
        let (id, command) = parsed(text);
        (id, command.err().expect("refused"))
    }

    #[test]
    fn frames_that_are_not_commands_are_400_with_the_request_id_when_known() {
        for text in ["", "nope", "[1]", "{}", r#"{"op":5}"#, r#"{"op":"upsert"}"#] {
            let (id, err) = bad(text);
            assert_eq!(err.status().as_u16(), 400, "{text}");
            assert!(id.is_null());
        }
        let (id, err) = bad(r#"{"op":"create","requestId":"r1","entity":"FUNKOS"}"#);
        assert_eq!(id, json!("r1"));
        let fields: Vec<_> = err
            .body()
            .errors
            .unwrap()
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(fields, ["data"]);
        let (_, err) = bad(r#"{"op":"delete","entity":"USERS","id":"x"}"#);
        let fields: Vec<_> = err
            .body()
            .errors
            .unwrap()
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(fields, ["requestId", "entity", "id"]);
        let (id, err) = bad(r#"{"op":"ping","requestId":{"a":1}}"#);
        assert!(id.is_null());
        assert_eq!(err.status().as_u16(), 400);
    }

    #[test]
    fn writes_and_subscriptions_parse() {
        let (id, command) = parsed(
            r#"{"op":"update","requestId":7,"entity":"funkos","id":3,"data":{},"ifMatch":"\"2\""}"#,
        );
        assert_eq!(id, json!(7));
        let Ok(Command::Write(Write {
            entity: Entity::Funkos,
            action:
                Action::Update {
                    id: 3,
                    if_match: Some(IfMatch::Tags(tags)),
                    ..
                },
        })) = command
        else {
            panic!("an update");
        };
        assert_eq!(tags, ["2"]);
        let (_, err) = bad(
            r#"{"op":"update","requestId":1,"entity":"FUNKOS","id":3,"data":{},"ifMatch":"2"}"#,
        );
        assert_eq!(err.status().as_u16(), 400);
        let (_, err) =
            bad(r#"{"op":"delete","requestId":1,"entity":"CATEGORIES","id":3,"ifMatch":"*"}"#);
        assert_eq!(err.status().as_u16(), 400);

        let (_, command) = parsed(
            r#"{"op":"subscribe","after":"42","entity":"CATEGORIES","types":["CREATE","delete"]}"#,
        );
        let Ok(Command::Subscribe { start, filter }) = command else {
            panic!("a subscribe");
        };
        assert_eq!(start, Start::After(42));
        assert_eq!(
            filter,
            Filter::parse(Some("CATEGORIES"), ["CREATE,DELETE"]).unwrap()
        );
        let (_, command) = parsed(r#"{"op":"subscribe","after":null}"#);
        assert!(matches!(
            command,
            Ok(Command::Subscribe {
                start: Start::Now,
                ..
            })
        ));
        for text in [
            r#"{"op":"subscribe","after":"x"}"#,
            r#"{"op":"subscribe","after":-1}"#,
            r#"{"op":"subscribe","entity":"USERS"}"#,
            r#"{"op":"subscribe","types":["UPSERT"]}"#,
            r#"{"op":"subscribe","types":[1]}"#,
        ] {
            assert_eq!(bad(text).1.status().as_u16(), 400, "{text}");
        }
    }

    #[test]
    fn close_reasons_fit_a_close_frame() {
        for reason in CloseReason::ALL {
            let Message::Close(Some((code, text))) = reason.frame(i64::MAX) else {
                panic!("a close frame");
            };
            assert_eq!(u16::from(code), reason.code());
            assert!(text.len() <= 123, "{text}");
        }
    }

    #[test]
    fn connect_params_parse_like_the_other_transports() {
        assert_eq!(
            connect_params("after=5&entity=funkos&types=CREATE&types=delete").unwrap(),
            (
                Start::After(5),
                Filter::parse(Some("FUNKOS"), ["CREATE", "DELETE"]).unwrap()
            )
        );
        assert_eq!(connect_params("").unwrap(), (Start::Now, Filter::default()));
        for bad in ["after=x", "after=-1", "entity=USERS", "types=UPSERT"] {
            assert_eq!(connect_params(bad).unwrap_err().status().as_u16(), 400);
        }
    }
}
