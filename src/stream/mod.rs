//! The change stream's five transports, each a thin translator of a
//! [`Subscription`](crate::events::Subscription)'s steps into its frames: Server-Sent Events
//! ([`sse`]), long-polling ([`poll`]), WebSocket ([`ws`]), Socket.IO ([`socketio`]) and the
//! Durable Streams protocol ([`durable`]). What
//! they share is here, once: how a client says where it starts, how much one step reads, the
//! change event's documented shape, and the WebSocket settings of the two socket transports.

pub(crate) mod durable;
pub(crate) mod poll;
pub(crate) mod socket;
pub(crate) mod socketio;
pub(crate) mod sse;
pub(crate) mod ws;

use poem_openapi::{Object, Union};
use serde_json::Value;

use crate::{
    domain::{
        FieldErrors,
        event::{Entity, EventKind, parse_cursor},
        resource::{Category, Funko},
        view::View,
    },
    error::ApiError,
    events::Start,
};

/// Where a subscription starts, from a cursor written as text (a query parameter, a header):
/// absent or blank, now. `name` is the parameter's, for the error.
pub(crate) fn start_from_text(name: &str, raw: Option<&str>) -> Result<Start, ApiError> {
    // `str::is_empty` by name: with poem-openapi's `Type` in scope, `r.is_empty()` on a
    // `&&str` is `Type::is_empty`, which is always false.
    match raw.map(str::trim).filter(|r| !str::is_empty(r)) {
        None => Ok(Start::Now),
        Some(raw) => parse_cursor(raw)
            .map(Start::After)
            .ok_or_else(|| not_a_cursor(name, &format!("{raw:?}"))),
    }
}

/// Where a subscription starts, from a cursor in JSON (a `/ws` frame's `after`, a Socket.IO
/// `auth` field): a string as in [`start_from_text`], or a non-negative integer; absent or
/// `null`, now.
pub(crate) fn start_from_json(name: &str, value: Option<&Value>) -> Result<Start, ApiError> {
    match value {
        None | Some(Value::Null) => Ok(Start::Now),
        Some(Value::String(raw)) => start_from_text(name, Some(raw)),
        Some(Value::Number(n)) => n
            .as_u64()
            .and_then(|n| i64::try_from(n).ok())
            .map(Start::After)
            .ok_or_else(|| not_a_cursor(name, &n.to_string())),
        Some(other) => Err(not_a_cursor(name, &other.to_string())),
    }
}

/// The list filters of `GET /funkos` that make a subscription a view, checked by its rules;
/// `None` when none is set.
pub(crate) fn view_of(
    category: Option<String>,
    q: Option<String>,
    min_price: Option<f64>,
    max_price: Option<f64>,
) -> Result<Option<View>, ApiError> {
    View::parse(category, q, min_price, max_price).map_err(|errors| ApiError::BadRequest {
        detail: "invalid view filters (category, q, minPrice, maxPrice)".to_owned(),
        errors,
    })
}

/// [`view_of`] from text (a query string): the prices must be numbers.
pub(crate) fn view_from_text(
    field: impl Fn(&str) -> Option<String>,
) -> Result<Option<View>, ApiError> {
    let price = |name: &str| match field(name) {
        None => Ok(None),
        Some(raw) => raw
            .trim()
            .parse::<f64>()
            .map(Some)
            .map_err(|_| ApiError::BadRequest {
                detail: format!("{name} must be a number, not {raw:?}"),
                errors: FieldErrors::single(name, "must be a number"),
            }),
    };
    view_of(
        field("category"),
        field("q"),
        price("minPrice")?,
        price("maxPrice")?,
    )
}

/// [`view_of`] from JSON fields (a `/ws` frame, a Socket.IO `auth`): strings, and numbers for
/// the prices; `null` is absent.
pub(crate) fn view_from_json<'a>(
    field: impl Fn(&str) -> Option<&'a Value>,
) -> Result<Option<View>, ApiError> {
    let wrong = |name: &str, what: &str| ApiError::BadRequest {
        detail: format!("{name} must be {what}"),
        errors: FieldErrors::single(name, format!("must be {what}")),
    };
    let text = |name: &str| match field(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.clone())),
        Some(_) => Err(wrong(name, "a string")),
    };
    let price = |name: &str| match field(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => Ok(n.as_f64()),
        Some(_) => Err(wrong(name, "a number")),
    };
    view_of(
        text("category")?,
        text("q")?,
        price("minPrice")?,
        price("maxPrice")?,
    )
}

fn not_a_cursor(name: &str, shown: &str) -> ApiError {
    ApiError::BadRequest {
        detail: format!("{name} must be a cursor (a decimal event id), not {shown}"),
        errors: FieldErrors::single(name, "must be a cursor: a decimal event id"),
    }
}

/// The resource an event carries.
#[derive(Clone, Debug, Union, serde::Deserialize)]
#[serde(untagged)]
pub(crate) enum EventData {
    Funko(Funko),
    Category(Category),
}

/// A change event, as every transport delivers it (the course project's
/// `{entity, type, data, createdAt}` plus the cursor `id`).
// The documented shape of `StoredEvent::json`, which is rendered once, not from this.
#[derive(Clone, Debug, Object, serde::Deserialize)]
#[oai(rename = "ChangeEvent", rename_all = "camelCase")]
#[serde(rename_all = "camelCase")]
pub(crate) struct ChangeEventDoc {
    /// The cursor: a decimal string, strictly increasing in commit order.
    pub id: String,
    pub entity: Entity,
    #[oai(rename = "type")]
    #[serde(rename = "type")]
    pub kind: EventKind,
    /// The resource after the change, as `GET` returns it.
    pub data: EventData,
    /// RFC 3339 UTC, millisecond precision.
    pub created_at: String,
    /// Only for a view (a subscription with `category`, `q`, `minPrice` or `maxPrice`): what
    /// the change does to the list. `enter` and `update`: upsert `data` by id; `leave`:
    /// remove `data.id`.
    pub view: Option<ViewTag>,
}

/// What a change does to a view's list.
#[derive(Clone, Copy, Debug, poem_openapi::Enum, serde::Deserialize)]
#[oai(rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub(crate) enum ViewTag {
    /// The Funko matches now and did not before.
    Enter,
    /// It matched before and still does.
    Update,
    /// It matched before and does not now (or was deleted).
    Leave,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_blank_cursor_means_now() {
        for raw in [None, Some(""), Some("  ")] {
            assert_eq!(
                start_from_text("after", raw).ok(),
                Some(Start::Now),
                "{raw:?}"
            );
        }
        assert_eq!(
            start_from_text("after", Some(" 42 ")).ok(),
            Some(Start::After(42))
        );
        assert!(start_from_text("after", Some("x")).is_err());
    }

    #[test]
    fn json_cursors_are_strings_or_non_negative_integers() {
        assert_eq!(start_from_json("after", None).ok(), Some(Start::Now));
        assert_eq!(
            start_from_json("after", Some(&json!(null))).ok(),
            Some(Start::Now)
        );
        assert_eq!(
            start_from_json("after", Some(&json!("7"))).ok(),
            Some(Start::After(7))
        );
        assert_eq!(
            start_from_json("after", Some(&json!(7))).ok(),
            Some(Start::After(7))
        );
        for bad in [
            json!(-1),
            json!(1.5),
            json!([1]),
            json!("x"),
            json!(u64::MAX),
        ] {
            let err = start_from_json("after", Some(&bad)).unwrap_err();
            assert_eq!(err.status().as_u16(), 400, "{bad}");
        }
    }
}
