//! Client events that write: `create`, `update` and `delete`, read as `/ws` frames are,
//! authorised and performed as REST's twins are, and acked with REST's answer.

use futures_util::future::BoxFuture;
use serde_json::Value;

use super::packet;
use crate::{
    api::AppState,
    auth::Credentials,
    error::ApiError,
    service::writes,
    stream::ws::protocol::{self, Command},
};

/// A write in flight: the ACK packet to send when it is done, if the client asked for one.
pub(super) type AckFuture = BoxFuture<'static, Option<String>>;

/// A client event: a write (`create`, `update`, `delete` with `{entity, id, data,
/// ifMatch}`, as `/ws` frames have them) answered with its outcome, or an unknown event,
/// answered with a 400 problem when it asks for an ack.
pub(super) fn event(
    state: &AppState,
    credentials: &Credentials,
    nsp: &'static str,
    ack: Option<u64>,
    name: &str,
    args: Vec<Value>,
) -> Option<AckFuture> {
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
    let authorized = credentials.authorize(&state.policy);
    let state = state.clone();
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
