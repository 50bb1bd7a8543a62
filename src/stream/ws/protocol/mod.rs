//! The `/ws` protocol's frames as types: what a client sends ([`parse_frame`] reads a text
//! frame into a [`Command`]) and what the server sends ([`ServerFrame`]), both JSON objects
//! told apart by their `op`. `openapi/asyncapi.yaml` documents them for client authors.
//!
//! A client frame is deserialised into an `op`-tagged enum whose fields take any JSON value
//! ([`Field`]), then each field is checked, so a frame with several broken fields is answered
//! with all of them listed, as REST lists field errors.

use poem::web::websocket::Message;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::{
    domain::{
        FieldErrors,
        event::{Entity, Reset, ResetReason},
        parse_json_strictly,
        precondition::IfMatch,
    },
    error::{ApiError, ProblemBody},
    events::{End, Filter, Start},
    service::writes::{Action, Answer, Write},
    stream::{start_from_json, view_from_json},
};

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

/// Why the server closes a socket; the module docs of `/ws` say what a client does about each.
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
    pub fn frame(self, cursor: i64) -> Message {
        #[derive(Serialize)]
        struct Why<'a> {
            reason: &'a str,
            cursor: String,
        }
        let why = Why {
            reason: self.as_str(),
            cursor: cursor.to_string(),
        };
        Message::close_with(
            self.code(),
            serde_json::to_string(&why).expect("serializes"),
        )
    }
}

impl From<End> for CloseReason {
    fn from(end: End) -> Self {
        match end {
            End::Slow => Self::TooSlow,
            End::Shutdown => Self::Shutdown,
            End::Failed => Self::Failed,
        }
    }
}

/// One parsed client frame.
pub(crate) enum Command {
    Subscribe { start: Start, filter: Filter },
    Ping,
    Write(Write),
}

/// A field of a client frame as sent: absent (or `null`), or any other JSON value, checked
/// afterwards. Deserialising one never fails.
#[derive(Default)]
enum Field {
    #[default]
    Absent,
    Sent(Value),
}

impl<'de> Deserialize<'de> for Field {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(match Value::deserialize(deserializer)? {
            Value::Null => Self::Absent,
            value => Self::Sent(value),
        })
    }
}

/// A field that may be `null` on purpose (a write's `data`, as a JSON `null` body on REST).
#[derive(Default)]
struct Nullable(Option<Value>);

impl<'de> Deserialize<'de> for Nullable {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Value::deserialize(deserializer).map(|value| Self(Some(value)))
    }
}

/// A client frame by its `op`, fields unchecked. Fields an op does not use are ignored.
#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
enum Frame {
    Subscribe(Box<SubscribeFrame>),
    Ping {},
    Create(WriteFrame),
    Update(WriteFrame),
    Delete(WriteFrame),
}

#[derive(Deserialize)]
struct SubscribeFrame {
    #[serde(default)]
    after: Field,
    #[serde(default)]
    entity: Field,
    #[serde(default)]
    types: Field,
    #[serde(default)]
    category: Field,
    #[serde(default)]
    q: Field,
    #[serde(default, rename = "minPrice")]
    min_price: Field,
    #[serde(default, rename = "maxPrice")]
    max_price: Field,
}

#[derive(Deserialize)]
struct WriteFrame {
    #[serde(default)]
    entity: Field,
    #[serde(default)]
    id: Field,
    #[serde(default)]
    data: Nullable,
    #[serde(default, rename = "ifMatch")]
    if_match: Field,
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

/// Reads a text frame: its `requestId` (`null` when absent or unusable) and its command.
pub(crate) fn parse_frame(text: &str) -> (Value, Result<Command, ApiError>) {
    match parse_json_strictly(text.as_bytes()) {
        Ok(value) => read_frame(value),
        Err(err) => {
            let detail = format!("the frame is not valid JSON: {err}");
            (Value::Null, Err(ApiError::bad_request(detail)))
        }
    }
}

/// Reads a frame already parsed as JSON (Socket.IO builds one from an event).
pub(crate) fn read_frame(value: Value) -> (Value, Result<Command, ApiError>) {
    if !value.is_object() {
        let err = ApiError::bad_request("a frame must be a JSON object");
        return (Value::Null, Err(err));
    }
    let request_id = match value.get("requestId") {
        None | Some(Value::Null) => Value::Null,
        Some(id @ (Value::String(_) | Value::Number(_))) => id.clone(),
        Some(_) => {
            let err = invalid(
                "the frame's requestId is invalid",
                "requestId",
                "must be a string or a number",
            );
            return (Value::Null, Err(err));
        }
    };
    let frame = match value.get("op") {
        None | Some(Value::Null) => Err(invalid(
            "the frame has no op",
            "op",
            format!("required: one of {}", op_names()),
        )),
        Some(Value::String(op)) if !ClientOp::ALL.iter().any(|o| o.as_str() == op) => Err(invalid(
            format!("unknown op {op:?}"),
            "op",
            format!("must be one of {}", op_names()),
        )),
        Some(Value::String(_)) => Frame::deserialize(value)
            .map_err(|err| invalid(format!("the frame is invalid: {err}"), "op", op_names())),
        Some(_) => Err(invalid(
            "the frame's op is invalid",
            "op",
            format!("must be a string, one of {}", op_names()),
        )),
    };
    let command = frame.and_then(|frame| command(frame, !request_id.is_null()));
    (request_id, command)
}

fn command(frame: Frame, has_request_id: bool) -> Result<Command, ApiError> {
    let (op, write) = match frame {
        Frame::Ping {} => return Ok(Command::Ping),
        Frame::Subscribe(frame) => return subscribe(*frame),
        Frame::Create(write) => (ClientOp::Create, write),
        Frame::Update(write) => (ClientOp::Update, write),
        Frame::Delete(write) => (ClientOp::Delete, write),
    };
    // A write: every missing or mistyped field is listed at once, as REST lists field errors.
    let mut errors = FieldErrors::default();
    if !has_request_id {
        errors.add(
            "requestId",
            "required for create, update and delete: a string or number to match the answer",
        );
    }
    let entity = match write.entity {
        Field::Absent => {
            errors.add("entity", "required: FUNKOS or CATEGORIES");
            None
        }
        Field::Sent(value) => {
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
    let id = match (op, write.id) {
        (ClientOp::Create, _) => None,
        (_, Field::Absent) => {
            errors.add("id", "required: the resource's id");
            None
        }
        (_, Field::Sent(value)) => {
            let id = value.as_i64();
            if id.is_none() {
                errors.add("id", format!("must be an integer, not {value}"));
            }
            id
        }
    };
    // `data: null` goes through, as a JSON `null` body would on REST (and gets REST's answer).
    let data = match (op, write.data.0) {
        (ClientOp::Delete, _) => None,
        (_, None) => {
            errors.add("data", "required: the resource's JSON");
            None
        }
        (_, data) => data,
    };
    let if_match = match write.if_match {
        Field::Absent => None,
        Field::Sent(_) if op == ClientOp::Create => {
            errors.add("ifMatch", "applies to update and delete only");
            None
        }
        Field::Sent(_) if entity == Some(Entity::Categories) => {
            errors.add(
                "ifMatch",
                "applies to FUNKOS only: categories have no version",
            );
            None
        }
        Field::Sent(Value::String(raw)) => Some(IfMatch::parse(&raw)?),
        Field::Sent(_) => {
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

fn subscribe(frame: SubscribeFrame) -> Result<Command, ApiError> {
    let SubscribeFrame {
        after,
        entity,
        types,
        category,
        q,
        min_price,
        max_price,
    } = frame;
    let view = view_from_json(|name| {
        let field = match name {
            "category" => &category,
            "q" => &q,
            "minPrice" => &min_price,
            "maxPrice" => &max_price,
            _ => return None,
        };
        match field {
            Field::Absent => None,
            Field::Sent(value) => Some(value),
        }
    })?;
    let sent = |field: Field| match field {
        Field::Absent => None,
        Field::Sent(value) => Some(value),
    };
    let start = start_from_json("after", sent(after).as_ref())?;
    let entity = match sent(entity) {
        None => None,
        Some(Value::String(entity)) => Some(entity),
        Some(_) => return Err(invalid("invalid filter", "entity", "must be a string")),
    };
    let not_strings = || invalid("invalid filter", "types", "must be an array of strings");
    let types: Vec<String> = match sent(types) {
        None => Vec::new(),
        Some(Value::String(types)) => vec![types],
        Some(Value::Array(types)) => types
            .into_iter()
            .map(|t| match t {
                Value::String(t) => Ok(t),
                _ => Err(not_strings()),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(not_strings()),
    };
    let filter =
        Filter::parse(entity.as_deref(), types.iter().map(String::as_str))?.with_view(view)?;
    Ok(Command::Subscribe { start, filter })
}

/// Every frame the server sends besides change events (which are the events' own JSON).
#[derive(Serialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub(crate) enum ServerFrame<'a> {
    /// Always first: the newest event committed when the socket opened.
    Welcome { cursor: String },
    /// The cursor cannot be served: reload, and carry on from `cursor`.
    Reset {
        cursor: &'a str,
        reason: ResetReason,
    },
    Pong {
        #[serde(rename = "requestId", skip_serializing_if = "Value::is_null")]
        request_id: Value,
    },
    /// A write's answer (or a `subscribe`'s acknowledgement, status 200 and no body).
    Result {
        #[serde(rename = "requestId")]
        request_id: Value,
        status: u16,
        body: Value,
        cursor: String,
    },
    /// A refused frame: the status and problem body REST would answer.
    Error {
        #[serde(rename = "requestId")]
        request_id: Value,
        status: u16,
        body: ProblemBody,
    },
}

impl ServerFrame<'_> {
    pub(crate) fn message(&self) -> Message {
        Message::Text(serde_json::to_string(self).expect("a server frame serializes"))
    }
}

pub(crate) fn welcome(head: i64) -> Message {
    ServerFrame::Welcome {
        cursor: head.to_string(),
    }
    .message()
}

pub(crate) fn reset(reset: &Reset) -> Message {
    ServerFrame::Reset {
        cursor: &reset.cursor,
        reason: reset.reason,
    }
    .message()
}

pub(crate) fn pong(request_id: Value) -> Message {
    ServerFrame::Pong { request_id }.message()
}

pub(crate) fn result(request_id: Value, answer: Answer) -> Message {
    ServerFrame::Result {
        request_id,
        status: answer.status,
        body: answer.body,
        cursor: answer.cursor.to_string(),
    }
    .message()
}

/// The status and problem body REST would answer.
pub(crate) fn error(request_id: Value, err: &ApiError) -> Message {
    ServerFrame::Error {
        request_id,
        status: err.status().as_u16(),
        body: err.body(),
    }
    .message()
}

pub(crate) fn answer(request_id: Value, outcome: Result<Answer, ApiError>) -> Message {
    match outcome {
        Ok(answer) => result(request_id, answer),
        Err(err) => error(request_id, &err),
    }
}

#[cfg(test)]
mod tests;
