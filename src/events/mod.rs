//! The change stream's engine: the event type, the in-memory tail of the log ([`bus`]), its
//! wake-up by other instances on PostgreSQL ([`listener`]), and subscriptions
//! ([`subscription`]) that replay from the database and then follow live events. SSE,
//! long-poll and WebSocket are thin adapters over [`subscription::Subscription`].

pub mod bus;
pub mod cache;
pub mod hub;
pub mod listener;
pub mod retention;
pub mod subscription;

use std::sync::Arc;

use poem_openapi::{Enum, Object, Union};

use crate::model::{Category, Funko};

pub use bus::ChangeBus;
pub use subscription::{Filter, Start, Subscription};

/// Which resource an event is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Enum, serde::Serialize, serde::Deserialize)]
#[oai(rename_all = "SCREAMING_SNAKE_CASE")]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Entity {
    Funkos,
    Categories,
}

impl Entity {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Funkos => "FUNKOS",
            Self::Categories => "CATEGORIES",
        }
    }

    /// Case-insensitive, as filters are typed by hand.
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_uppercase().as_str() {
            "FUNKOS" => Some(Self::Funkos),
            "CATEGORIES" => Some(Self::Categories),
            _ => None,
        }
    }
}

/// What happened to the resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Enum, serde::Serialize, serde::Deserialize)]
#[oai(rename_all = "SCREAMING_SNAKE_CASE")]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EventKind {
    Create,
    Update,
    /// A soft delete: `data.isDeleted` is true.
    Delete,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Create => "CREATE",
            Self::Update => "UPDATE",
            Self::Delete => "DELETE",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_uppercase().as_str() {
            "CREATE" => Some(Self::Create),
            "UPDATE" => Some(Self::Update),
            "DELETE" => Some(Self::Delete),
            _ => None,
        }
    }
}

/// One committed change, as read from the log. Cheap to clone: the JSON every transport
/// sends is rendered once, when the event enters the process, and shared.
#[derive(Clone, Debug)]
pub struct StoredEvent {
    /// The cursor: strictly increasing in commit order.
    pub id: i64,
    pub entity: Entity,
    pub kind: EventKind,
    /// `{"id":"…","entity":…,"type":…,"data":…,"createdAt":…}`, exactly as clients get it.
    pub json: Arc<str>,
    /// Where `data` (the resource) lies in `json`.
    data_at: (u32, u32),
    /// The event as one Server-Sent Events frame (`id: …` + `data: …`), rendered once and
    /// shared by every SSE subscriber: a delivery is a reference count, not a copy.
    pub sse: bytes::Bytes,
}

impl StoredEvent {
    /// `data` is the resource's JSON as `GET` returns it.
    pub fn new(id: i64, entity: Entity, kind: EventKind, data: &str, created_at: &str) -> Self {
        let mut json = format!(
            r#"{{"id":"{id}","entity":"{}","type":"{}","data":"#,
            entity.as_str(),
            kind.as_str()
        );
        let data_at = (json.len() as u32, (json.len() + data.len()) as u32);
        json.push_str(data);
        json.push_str(r#","createdAt":""#);
        json.push_str(created_at);
        json.push_str(r#""}"#);
        let mut sse = format!("id: {id}\n");
        // Compact JSON has no line breaks; split anyway so a frame can never be malformed.
        for line in json.lines() {
            sse.push_str("data: ");
            sse.push_str(line);
            sse.push('\n');
        }
        sse.push('\n');
        Self {
            id,
            entity,
            kind,
            json: json.into(),
            data_at,
            sse: sse.into(),
        }
    }

    /// The resource's JSON, as `GET` returns it.
    pub fn data(&self) -> &str {
        &self.json[self.data_at.0 as usize..self.data_at.1 as usize]
    }
}

/// The resource an event carries.
#[derive(Clone, Debug, Union, serde::Deserialize)]
#[serde(untagged)]
pub enum EventData {
    Funko(Funko),
    Category(Category),
}

/// A change event, as every transport delivers it (the course project's
/// `{entity, type, data, createdAt}` plus the cursor `id`).
#[derive(Clone, Debug, Object, serde::Deserialize)]
#[oai(rename = "ChangeEvent", rename_all = "camelCase")]
#[serde(rename_all = "camelCase")]
pub struct ChangeEventDoc {
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
}

/// Why a subscriber must reload its state instead of resuming.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Enum, serde::Serialize, serde::Deserialize)]
#[oai(rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum ResetReason {
    /// The cursor is older than the retained log: events after it were pruned.
    Expired,
    /// The cursor was never issued here (ahead of the head, or from another database).
    Unknown,
}

impl ResetReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Expired => "expired",
            Self::Unknown => "unknown",
        }
    }
}

/// A reset: reload (for example `GET /funkos`) and continue from `cursor`.
#[derive(Clone, Debug, PartialEq, Eq, Object, serde::Serialize, serde::Deserialize)]
pub struct Reset {
    /// The current head: continue from here after reloading.
    pub cursor: String,
    pub reason: ResetReason,
}

/// Parses a client's cursor: a decimal, non-negative integer.
pub fn parse_cursor(raw: &str) -> Option<i64> {
    let raw = raw.trim();
    if raw.is_empty() || raw.len() > 19 || !raw.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    raw.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_json_has_the_course_project_shape_plus_the_cursor() {
        let event = StoredEvent::new(
            42,
            Entity::Funkos,
            EventKind::Update,
            r#"{"id":7}"#,
            "2026-11-27T19:00:00.123Z",
        );
        let value: serde_json::Value = serde_json::from_str(&event.json).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"id":"42","entity":"FUNKOS","type":"UPDATE","data":{"id":7},
                               "createdAt":"2026-11-27T19:00:00.123Z"})
        );
        assert_eq!(event.data(), r#"{"id":7}"#);
    }

    #[test]
    fn cursors() {
        assert_eq!(parse_cursor("1042"), Some(1042));
        assert_eq!(parse_cursor(" 0 "), Some(0));
        for bad in ["", "-1", "1e3", "abc", "12a", "99999999999999999999", "+5"] {
            assert_eq!(parse_cursor(bad), None, "{bad}");
        }
    }

    #[test]
    fn filters_parse_case_insensitively() {
        assert_eq!(Entity::parse("funkos"), Some(Entity::Funkos));
        assert_eq!(EventKind::parse("Delete"), Some(EventKind::Delete));
        assert_eq!(EventKind::parse("PATCH"), None);
    }
}
