//! The change stream's engine, transport-agnostic: the event as it enters the process
//! ([`StoredEvent`]), the log's recent end in memory and its tailer ([`tail`]), the PostgreSQL
//! wake-up ([`listener`]), retention ([`retention`]), and [`subscription`]: replay from the
//! database, then live events, the one thing every transport drives.

pub(crate) mod listener;
pub(crate) mod retention;
pub(crate) mod subscription;
pub(crate) mod tail;

use std::sync::{Arc, OnceLock};

use serde_json::value::RawValue;

use crate::{
    db::events::EventRow,
    domain::{
        event::{Entity, EventKind},
        view::{View, ViewChange, ViewFields, ViewKeys},
    },
};

pub(crate) use subscription::{End, Filter, Next, Start, Subscription};

/// Events read from the log or its tail at a time: a subscription's step on every transport,
/// a round of the fan-out.
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
    /// What the log recorded of a Funko event's Funko before the change.
    before: Option<Arc<str>>,
    /// The Funko before and after the change, as views compare them: worked out on the first
    /// view that asks, once for every clone, so streams without views never pay for it.
    sides: Arc<OnceLock<Option<Sides>>>,
}

/// What a view compares: the Funko before the change (none for a CREATE) and after it.
#[derive(Debug)]
struct Sides {
    before: Option<ViewKeys>,
    after: ViewKeys,
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
        Self {
            id,
            entity,
            kind,
            sse: sse_frame(id, &json),
            json: Arc::from(RawValue::from_string(json).expect("serde_json writes JSON")),
            data_at,
            before: None,
            sides: Arc::default(),
        }
    }

    /// Sets what the log recorded of the Funko before the change (its [`ViewFields`]).
    pub(crate) fn with_before(mut self, before: Option<&str>) -> Self {
        self.before = before.map(Arc::from);
        self.sides = Arc::default();
        self
    }

    fn sides(&self) -> Option<&Sides> {
        self.sides
            .get_or_init(|| {
                if self.entity != Entity::Funkos {
                    return None;
                }
                let fields = |json: &str| serde_json::from_str::<ViewFields>(json).ok();
                let after = fields(self.data())?;
                Some(Sides {
                    before: self
                        .before
                        .as_deref()
                        .and_then(fields)
                        .map(|b| ViewKeys::from(&b)),
                    after: ViewKeys::from(&after),
                })
            })
            .as_ref()
    }

    /// The event as `view` sees it: with `"view"` saying whether its Funko enters, stays in
    /// or leaves the view; `None` when the Funko is in the view neither before nor after.
    pub(crate) fn in_view(&self, view: &View) -> Option<Self> {
        let change = self.view_change(view)?;
        let plain = self.json.get();
        let mut json = String::with_capacity(plain.len() + 20);
        json.push_str(&plain[..plain.len() - 1]);
        json.push_str(r#","view":""#);
        json.push_str(change.as_str());
        json.push_str(r#""}"#);
        let json: Arc<RawValue> = Arc::from(RawValue::from_string(json).expect("still JSON"));
        Some(Self {
            sse: sse_frame(self.id, json.get()),
            json,
            ..self.clone()
        })
    }

    /// What the event does to `view`: `None` when its Funko is in the view neither before
    /// nor after (or it is not a Funko event).
    pub(crate) fn view_change(&self, view: &View) -> Option<ViewChange> {
        let sides = self.sides()?;
        let before = sides.before.as_ref().is_some_and(|b| view.matches(b));
        ViewChange::of(before, view.matches(&sides.after))
    }

    /// What the log recorded of a Funko event's Funko before the change: its
    /// [`ViewFields`] as JSON, for an UPDATE or DELETE.
    pub(crate) fn before(&self) -> Option<&str> {
        self.before.as_deref()
    }

    /// The resource's JSON, as `GET` returns it.
    pub(crate) fn data(&self) -> &str {
        &self.json.get()[self.data_at.0 as usize..self.data_at.1 as usize]
    }
}

/// One Server-Sent Events frame: `id: …` and the JSON as `data: …`.
fn sse_frame(id: i64, json: &str) -> bytes::Bytes {
    let mut sse = format!("id: {id}\n");
    // Compact JSON has no line breaks; split anyway so a frame can never be malformed.
    for line in json.lines() {
        sse.push_str("data: ");
        sse.push_str(line);
        sse.push('\n');
    }
    sse.push('\n');
    sse.into()
}

impl From<EventRow> for StoredEvent {
    fn from(row: EventRow) -> Self {
        Self::new(row.id, row.entity, row.kind, &row.data, &row.created_at)
            .with_before(row.before.as_deref())
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
