//! The change stream's engine, transport-agnostic: the event as it enters the process
//! ([`StoredEvent`]), the log's recent end in memory and its tailer ([`tail`]), the PostgreSQL
//! wake-up ([`listener`]), retention ([`retention`]), and [`subscription`]: replay from the
//! database, then live events, the one thing every transport drives.

pub(crate) mod listener;
pub(crate) mod retention;
pub(crate) mod subscription;
pub(crate) mod tail;

use std::sync::Arc;

use serde_json::value::RawValue;

use crate::{
    db::events::EventRow,
    domain::event::{Entity, EventKind},
};

pub(crate) use subscription::{End, Filter, Next, Start, Subscription};

/// Events read from the log or its tail at a time: a subscription's step on every transport,
/// a round of the SSE fan-out.
pub(crate) const BATCH: usize = 256;
pub(crate) use tail::Tail;

/// One committed change, as read from the log. Cheap to clone: what the transports send is
/// rendered once, when the event enters the process, and shared.
#[derive(Clone, Debug)]
pub(crate) struct StoredEvent {
    /// The cursor: strictly increasing in commit order.
    pub id: i64,
    pub entity: Entity,
    pub kind: EventKind,
    /// `{"id":"…","entity":…,"type":…,"data":…,"createdAt":…}`, exactly as clients get it.
    pub json: Arc<RawValue>,
    /// Where `data` (the resource) lies in `json`.
    data_at: (u32, u32),
    /// The event as one Server-Sent Events frame (`id: …` + `data: …`), shared by every SSE
    /// subscriber: a delivery is a reference count, not a copy.
    pub sse: bytes::Bytes,
}

/// The event's JSON, as every transport sends it: the course project's
/// `{entity, type, data, createdAt}` plus the cursor `id`.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Wire<'a> {
    id: String,
    entity: Entity,
    #[serde(rename = "type")]
    kind: EventKind,
    data: &'a RawValue,
    created_at: &'a str,
}

impl StoredEvent {
    /// `data` is the resource's JSON as `GET` returns it (written by this server, so valid).
    pub(crate) fn new(
        id: i64,
        entity: Entity,
        kind: EventKind,
        data: &str,
        created_at: &str,
    ) -> Self {
        let raw: &RawValue = serde_json::from_str(data).expect("events carry JSON");
        let wire = Wire {
            id: id.to_string(),
            entity,
            kind,
            data: raw,
            created_at,
        };
        let json = serde_json::to_string(&wire).expect("an event serializes");
        // `data` follows the three fields before it, none of which can hold this key.
        let start = json.find(r#""data":"#).expect("the data field") + r#""data":"#.len();
        let data_at = (start as u32, (start + raw.get().len()) as u32);
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
            json: Arc::from(RawValue::from_string(json).expect("serde_json writes JSON")),
            data_at,
            sse: sse.into(),
        }
    }

    /// The resource's JSON, as `GET` returns it.
    pub(crate) fn data(&self) -> &str {
        &self.json.get()[self.data_at.0 as usize..self.data_at.1 as usize]
    }
}

impl From<EventRow> for StoredEvent {
    fn from(row: EventRow) -> Self {
        Self::new(row.id, row.entity, row.kind, &row.data, &row.created_at)
    }
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
        let value: serde_json::Value = serde_json::from_str(event.json.get()).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"id":"42","entity":"FUNKOS","type":"UPDATE","data":{"id":7},
                               "createdAt":"2026-11-27T19:00:00.123Z"})
        );
        assert_eq!(event.data(), r#"{"id":7}"#);
        assert_eq!(
            std::str::from_utf8(&event.sse).unwrap(),
            format!("id: 42\ndata: {}\n\n", event.json.get())
        );
    }
}
