//! The read caches. [`FunkoCache`]: every Funko this process has seen, by id, as the JSON
//! `GET /funkos/{id}` answers with, kept current by the change stream itself. [`PageCache`]:
//! pages of the list, until the next write.
//!
//! Each Funko event carries the Funko exactly as `GET` returns it, so the cache applies the
//! tail's events to its map (on the first read after a commit) and a read can be answered
//! without a database round trip. The cache is only trusted when it provably holds every
//! committed write: it is current as of the cursor `at`, and a read uses it only when `at`
//! has reached the newest commit this process knows of ([`Tail::local_bounds`]), which on
//! SQLite is the log's head because this process is the only writer. Otherwise (a write still
//! on its way to the tail, or PostgreSQL, where other instances write) the read goes to the
//! database. A database read refills an entry only when it saw the same cursor, so an entry
//! is never older than the cache's position.
//!
//! A Funko's JSON names its category; a rename appends an UPDATE event for each Funko in it,
//! so the Funkos' own events keep the cache right.

use std::{
    collections::HashMap,
    sync::{Mutex, RwLock},
};

use bytes::Bytes;
use poem_openapi::types::ToJSON;

use crate::{
    domain::{event::Entity, query::FunkoListQuery, resource::Funko},
    events::{StoredEvent, Tail, tail::TailRead},
};

/// Events the cache applies from the tail at a time.
const CATCH_UP_BATCH: usize = 1024;

/// At most this many Funkos are cached (about 300 bytes each); past it the map starts over.
const MAX_ENTRIES: usize = 50_000;

/// A Funko ready to send: its JSON and what the response needs besides.
#[derive(Clone, Debug)]
pub(crate) struct FunkoJson {
    /// The Funko as `GET` returns it.
    pub json: Bytes,
    pub version: i64,
    pub is_deleted: bool,
}

impl FunkoJson {
    /// Reads the fields a response needs from a Funko's JSON; `None` if it is not one.
    pub(crate) fn parse(json: &str) -> Option<(i64, Self)> {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Head {
            id: i64,
            version: i64,
            is_deleted: bool,
        }
        let head: Head = serde_json::from_str(json).ok()?;
        Some((
            head.id,
            Self {
                json: Bytes::copy_from_slice(json.as_bytes()),
                version: head.version,
                is_deleted: head.is_deleted,
            },
        ))
    }
}

impl From<&Funko> for FunkoJson {
    fn from(funko: &Funko) -> Self {
        Self {
            json: funko.to_json_string().into(),
            version: funko.version,
            is_deleted: funko.is_deleted,
        }
    }
}

#[derive(Debug)]
struct Entries {
    /// Every entry is the Funko as of this cursor.
    at: i64,
    by_id: HashMap<i64, FunkoJson>,
}

#[derive(Debug)]
pub(crate) struct FunkoCache {
    /// Held only to copy an entry in or out, never across an `.await`.
    entries: RwLock<Entries>,
}

impl FunkoCache {
    /// An empty cache positioned at cursor `at`.
    pub(crate) fn new(at: i64) -> Self {
        Self {
            entries: RwLock::new(Entries {
                at,
                by_id: HashMap::new(),
            }),
        }
    }

    /// The Funko with this id if the cache is current as of `committed` (it holds every
    /// write up to there, after taking in what the tail has since), with the cursor it is
    /// current as of. `None`: ask the database.
    pub(crate) fn get(&self, id: i64, committed: i64, tail: &Tail) -> Option<(FunkoJson, i64)> {
        {
            let entries = self.entries.read().expect("cache lock poisoned");
            if entries.at >= committed {
                return entries.by_id.get(&id).map(|f| (f.clone(), entries.at));
            }
        }
        let mut entries = self.entries.write().expect("cache lock poisoned");
        while entries.at < committed {
            match tail.read(entries.at, CATCH_UP_BATCH) {
                // The tail has not taken the commit in yet: the database knows.
                TailRead::Events(events) if events.is_empty() => return None,
                TailRead::Events(events) => entries.apply(&events),
                // What happened since is only in the database: start over from the tail.
                TailRead::Behind => {
                    entries.by_id.clear();
                    entries.at = tail.head();
                }
            }
        }
        entries.by_id.get(&id).map(|f| (f.clone(), entries.at))
    }

    /// Stores a Funko read from the database in a snapshot at `cursor`, if that is the
    /// cache's position (a read from another moment could be older than the cache).
    pub(crate) fn fill(&self, id: i64, funko: &FunkoJson, cursor: i64) {
        let mut entries = self.entries.write().expect("cache lock poisoned");
        if entries.at == cursor {
            entries.insert(id, funko.clone());
        }
    }
}

impl Entries {
    /// Applies events from the tail, in order; the cache is then current as of the last.
    fn apply(&mut self, events: &[StoredEvent]) {
        for event in events.iter().filter(|e| e.entity == Entity::Funkos) {
            if let Some((id, funko)) = FunkoJson::parse(event.data()) {
                self.insert(id, funko);
            }
        }
        if let Some(last) = events.last() {
            self.at = last.id;
        }
    }

    fn insert(&mut self, id: i64, funko: FunkoJson) {
        if self.by_id.len() >= MAX_ENTRIES && !self.by_id.contains_key(&id) {
            self.by_id.clear();
        }
        self.by_id.insert(id, funko);
    }
}

/// Past this many bytes of cached pages, the page cache starts over.
const MAX_PAGE_BYTES: usize = 4 << 20;

/// Pages of `GET /funkos` as sent, by query, all read at one cursor: a page is answered from
/// here only while no write has committed since it was read (its cursor is still the newest
/// commit, as in [`FunkoCache::get`]), so any write retires every page at once. A catalogue
/// read far more often than written, its first page above all, is then served without the
/// database. SQLite only, like [`FunkoCache`].
#[derive(Debug, Default)]
pub(crate) struct PageCache {
    /// Held only to copy a page in or out, never across an `.await`.
    pages: Mutex<Pages>,
}

#[derive(Debug, Default)]
struct Pages {
    /// Every page here was read at this cursor.
    at: i64,
    bytes: usize,
    by_query: HashMap<FunkoListQuery, Bytes>,
}

impl PageCache {
    /// The page this query answered at cursor `committed`, if it was read there.
    pub(crate) fn get(&self, query: &FunkoListQuery, committed: i64) -> Option<Bytes> {
        let pages = self.pages.lock().expect("page cache lock poisoned");
        if pages.at != committed {
            return None;
        }
        pages.by_query.get(query).cloned()
    }

    /// Keeps a page read in a snapshot at `cursor`. A page from a newer cursor retires the
    /// older ones; one from an older cursor is dropped.
    pub(crate) fn fill(&self, query: &FunkoListQuery, json: &Bytes, cursor: i64) {
        let mut pages = self.pages.lock().expect("page cache lock poisoned");
        if cursor < pages.at {
            return;
        }
        if cursor > pages.at || pages.bytes + json.len() > MAX_PAGE_BYTES {
            *pages = Pages {
                at: cursor,
                ..Pages::default()
            };
        }
        pages.bytes += json.len();
        if let Some(old) = pages.by_query.insert(query.clone(), json.clone()) {
            pages.bytes -= old.len();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::event::EventKind;

    fn funko_event(event_id: i64, funko_id: i64, version: i64) -> StoredEvent {
        let data =
            format!(r#"{{"id":{funko_id},"name":"n","version":{version},"isDeleted":false}}"#);
        StoredEvent::new(event_id, Entity::Funkos, EventKind::Update, &data, "t")
    }

    fn entries(at: i64) -> Entries {
        Entries {
            at,
            by_id: HashMap::new(),
        }
    }

    #[test]
    fn applies_funko_events_in_order_and_moves_on() {
        let mut entries = entries(10);
        entries.apply(&[funko_event(11, 1, 1), funko_event(12, 1, 2)]);
        assert_eq!((entries.by_id[&1].version, entries.at), (2, 12));
        assert!(!entries.by_id.contains_key(&2), "never seen");
    }

    #[test]
    fn fills_only_from_a_read_at_its_position() {
        let cache = FunkoCache::new(5);
        let (id, funko) = FunkoJson::parse(r#"{"id":3,"version":4,"isDeleted":true}"#).unwrap();
        cache.fill(id, &funko, 4);
        assert!(!cache.entries.read().unwrap().by_id.contains_key(&3));
        cache.fill(id, &funko, 5);
        assert!(cache.entries.read().unwrap().by_id[&3].is_deleted);
    }

    #[test]
    fn a_rename_reaches_it_through_its_funkos_events() {
        let mut entries = entries(0);
        entries.apply(&[funko_event(1, 1, 1)]);
        let rename = StoredEvent::new(2, Entity::Categories, EventKind::Update, r#"{"id":1}"#, "t");
        entries.apply(&[rename, funko_event(3, 1, 2)]);
        assert_eq!((entries.by_id[&1].version, entries.at), (2, 3));
    }

    fn query(page: i64) -> FunkoListQuery {
        FunkoListQuery {
            page,
            limit: 20,
            sort: crate::domain::query::SortField::Id,
            descending: false,
            q: None,
            category: None,
            min_price_cents: None,
            max_price_cents: None,
            include_deleted: false,
        }
    }

    #[test]
    fn a_page_is_served_only_at_the_cursor_it_was_read_at() {
        let pages = PageCache::default();
        let json = Bytes::from_static(b"[1]");
        pages.fill(&query(1), &json, 7);
        assert_eq!(pages.get(&query(1), 7), Some(json));
        assert!(pages.get(&query(1), 8).is_none(), "a write since");
        assert!(pages.get(&query(2), 7).is_none(), "another query");
    }

    #[test]
    fn a_newer_page_retires_the_older_ones_and_an_older_page_is_dropped() {
        let pages = PageCache::default();
        pages.fill(&query(1), &Bytes::from_static(b"[1]"), 7);
        pages.fill(&query(2), &Bytes::from_static(b"[2]"), 8);
        assert!(pages.get(&query(1), 8).is_none());
        pages.fill(&query(1), &Bytes::from_static(b"[old]"), 7);
        assert!(pages.get(&query(1), 8).is_none());
        assert!(pages.get(&query(2), 8).is_some());
    }

    #[test]
    fn past_its_byte_bound_it_starts_over() {
        let pages = PageCache::default();
        let half = Bytes::from(vec![b' '; MAX_PAGE_BYTES / 2 + 1]);
        pages.fill(&query(1), &half, 7);
        pages.fill(&query(1), &half, 7);
        assert!(pages.get(&query(1), 7).is_some(), "a page replacing itself");
        pages.fill(&query(2), &half, 7);
        assert!(pages.get(&query(1), 7).is_none(), "started over");
        assert!(pages.get(&query(2), 7).is_some());
    }
}
