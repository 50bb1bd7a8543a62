//! [`Subscription`]: one subscriber's position in the stream. It replays matching events
//! after its cursor from the database, switches to the in-memory tail once it is within
//! it, and then waits for live events. Every transport drives one of these.
//!
//! No gap, no duplicate at the switch: the cursor is the only state. Each step reads "events
//! with id > cursor" from wherever they are (tail if it reaches back that far, else the
//! database) and moves the cursor to the last id read, matching or not.

use std::sync::Arc;

use tokio::sync::watch;

use super::{
    StoredEvent,
    tail::{Tail, TailRead},
};
use crate::{
    db,
    domain::{
        event::{Entity, EventKind, Reset, ResetReason},
        view::View,
    },
    error::ApiError,
    metrics::{METRICS, ReasonLabel},
};

/// Which events a subscriber wants. The cursor advances past the others all the same.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Filter {
    pub entity: Option<Entity>,
    /// Empty: all types.
    pub types: Vec<EventKind>,
    /// A view: Funko events whose Funko is in it before or after, tagged with `view`.
    pub view: Option<View>,
}

impl Filter {
    /// Parses the `entity` and `types` parameters shared by every transport.
    pub(crate) fn parse<'a>(
        entity: Option<&str>,
        types: impl IntoIterator<Item = &'a str>,
    ) -> Result<Self, ApiError> {
        let entity = match entity.map(str::trim).filter(|e| !e.is_empty()) {
            None => None,
            Some(raw) => Some(Entity::parse(raw).ok_or_else(|| {
                ApiError::bad_request(format!("entity must be FUNKOS or CATEGORIES, not {raw:?}"))
            })?),
        };
        let mut kinds = Vec::new();
        for raw in types
            .into_iter()
            .flat_map(|t| t.split(','))
            .map(str::trim)
            .filter(|t| !t.is_empty())
        {
            let kind = EventKind::parse(raw).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "types must be a comma-separated list of CREATE, UPDATE, DELETE, not {raw:?}"
                ))
            })?;
            if !kinds.contains(&kind) {
                kinds.push(kind);
            }
        }
        Ok(Self {
            entity,
            types: kinds,
            view: None,
        })
    }

    /// Makes this filter a view (when `view` is one): Funko events only, of every type, since
    /// a view must see each event that moves a Funko in or out.
    pub(crate) fn with_view(self, view: Option<View>) -> Result<Self, ApiError> {
        let Some(view) = view else {
            return Ok(self);
        };
        if self.entity == Some(Entity::Categories) {
            return Err(ApiError::bad_request(
                "category, q, minPrice and maxPrice filter Funkos: entity must be FUNKOS or absent",
            ));
        }
        if !self.types.is_empty() {
            return Err(ApiError::bad_request(
                "types cannot be combined with category, q, minPrice or maxPrice: a view needs \
                 every type of event to stay right",
            ));
        }
        Ok(Self {
            entity: Some(Entity::Funkos),
            types: Vec::new(),
            view: Some(view),
        })
    }

    /// The event as this subscriber gets it, if it gets it: itself, or for a view, tagged
    /// with what it does to the view.
    pub(crate) fn pass(&self, event: &StoredEvent) -> Option<StoredEvent> {
        let wanted = self.entity.is_none_or(|e| e == event.entity)
            && (self.types.is_empty() || self.types.contains(&event.kind));
        match &self.view {
            _ if !wanted => None,
            None => Some(event.clone()),
            Some(view) => event.in_view(view),
        }
    }
}

/// Where a subscription begins.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Start {
    /// Live events only, from the current head.
    Now,
    /// Every event after this cursor, then live.
    After(i64),
}

/// What a subscriber gets next: the one answer every transport translates into its frames.
#[derive(Debug)]
pub(crate) enum Next {
    /// The matching events after the previous cursor (possibly none, when every event read
    /// was filtered out) and the cursor after them.
    Events {
        events: Vec<StoredEvent>,
        cursor: i64,
    },
    /// Events after the cursor were pruned: reload, continue from the reset.
    Reset(Reset),
    /// The stream ends; the subscriber resumes from `cursor` (the last one it was given).
    End { why: End, cursor: i64 },
}

/// Why a stream ends. Whatever the reason, the subscriber resumes by cursor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// It fell more than the subscriber queue behind the live stream.
    Slow,
    /// The server is shutting down: resume elsewhere.
    Shutdown,
    /// Reading the log failed (the database is unavailable): retry later.
    Failed,
}

pub(crate) struct Subscription {
    tail: Arc<Tail>,
    cursor: i64,
    filter: Filter,
    head: watch::Receiver<i64>,
    /// Set once the subscriber has been served from the tail: from then on, falling behind
    /// the tail means it is too slow, not that it is replaying.
    live: bool,
    /// The newest cursor known to be committed in the database (from `open`, raised by every
    /// read of the log). Up to it, events are read from the log when the tail lags.
    committed: i64,
}

impl Subscription {
    /// Opens a subscription. A cursor this database cannot serve (pruned, or never issued)
    /// yields a [`Reset`] and a subscription from the head.
    pub(crate) async fn open(
        tail: Arc<Tail>,
        start: Start,
        filter: Filter,
    ) -> Result<(Self, Option<Reset>), ApiError> {
        let head = tail.subscribe_head();
        // "Now" is the newest committed event, which this process's tail may not hold yet;
        // a cursor is checked against the range the log serves. Both come from memory when
        // this process is the only writer (SQLite), else from the database. A cursor past
        // the head in memory is confirmed by the database before it is called unknown: the
        // memory lags the log by a moment after each commit, while a read's Stream-Cursor or
        // the tail may already have handed that cursor out.
        let (floor, db_head) = match tail.local_bounds() {
            Some((floor, head)) if !matches!(start, Start::After(cursor) if cursor > head) => {
                (floor, head)
            }
            _ => {
                let mut conn = tail.db().reader.acquire().await?;
                db::events::bounds(&mut conn).await?
            }
        };
        let reason = match start {
            Start::Now => None,
            Start::After(cursor) if cursor < floor => Some(ResetReason::Expired),
            Start::After(cursor) if cursor > db_head => Some(ResetReason::Unknown),
            Start::After(_) => None,
        };
        if let Some(reason) = reason {
            METRICS
                .resets
                .get_or_create(&ReasonLabel {
                    reason: reason.as_str(),
                })
                .inc();
        } else if matches!(start, Start::After(_)) {
            METRICS.replays.inc();
        }
        let (cursor, reset) = match (start, reason) {
            (Start::After(cursor), None) => (cursor, None),
            (_, reason) => (
                db_head,
                reason.map(|reason| Reset {
                    cursor: db_head.to_string(),
                    reason,
                }),
            ),
        };
        let subscription = Self {
            tail,
            cursor,
            filter,
            head,
            live: false,
            committed: db_head,
        };
        Ok((subscription, reset))
    }

    /// The cursor after everything handed out so far.
    pub(crate) fn cursor(&self) -> i64 {
        self.cursor
    }

    pub(crate) fn filter(&self) -> &Filter {
        &self.filter
    }

    /// The newest cursor known to be committed when this subscription opened (or since).
    pub(crate) fn committed(&self) -> i64 {
        self.committed
    }

    /// Events available now, without waiting for a commit: `None` when the cursor is at the
    /// head. A failure to read the log ends the stream ([`End::Failed`]).
    pub(crate) async fn poll_now(&mut self, max: usize) -> Option<Next> {
        match self.try_poll_now(max).await {
            Ok(next) => next,
            Err(err) => {
                tracing::warn!(error = %err, cursor = self.cursor, "a stream failed");
                Some(self.end(End::Failed))
            }
        }
    }

    fn end(&self, why: End) -> Next {
        Next::End {
            why,
            cursor: self.cursor,
        }
    }

    async fn try_poll_now(&mut self, max: usize) -> Result<Option<Next>, ApiError> {
        loop {
            if let Some(next) = self.try_step(max).await? {
                return Ok(next);
            }
            // The tail is about to receive what is known committed: wait for it there.
            self.wait().await;
        }
    }

    /// One look at the tail (or the log). `Ok(None)`: the tail lags a commit it is sure to
    /// receive; wait for the head to move and look again.
    async fn try_step(&mut self, max: usize) -> Result<Option<Option<Next>>, ApiError> {
        if self.tail.closing().is_cancelled() {
            return Ok(Some(Some(self.end(End::Shutdown))));
        }
        // Marked seen before reading, so a head published after this read wakes `next`.
        self.head.borrow_and_update();
        let from_tail = match self.tail.read(self.cursor, max) {
            // The tail has some, and no more is known committed, or the batch is full.
            TailRead::Events(events)
                if !events.is_empty()
                    && (events.len() == max
                        || events.last().is_some_and(|e| e.id >= self.committed)) =>
            {
                self.live = true;
                Some(events)
            }
            TailRead::Events(_) if self.cursor >= self.committed => {
                self.live = true;
                return Ok(Some(None));
            }
            // Known committed but not yet in the tail. When this process's commits are pushed
            // to the tail (SQLite), each one is on its way before anyone learns it committed:
            // a moment's wait for it costs less than a round trip to the log.
            TailRead::Events(_) if self.tail.pushed() => return Ok(None),
            // Committed (this subscription saw it in the database) but not yet in this
            // process's tail, which another instance's commit reaches only through the
            // tailer's next read: read the log, which has all, rather than wait for it.
            TailRead::Events(_) => None,
            // The log was pruned past this subscriber while it was live (another instance
            // pruned while this one was away): it must reload, as after any expired cursor.
            TailRead::Behind if self.live && self.cursor < self.tail.known_floor() => {
                let head = self.tail.head();
                METRICS
                    .resets
                    .get_or_create(&ReasonLabel { reason: "expired" })
                    .inc();
                self.cursor = head;
                return Ok(Some(Some(Next::Reset(Reset {
                    cursor: head.to_string(),
                    reason: ResetReason::Expired,
                }))));
            }
            TailRead::Behind if self.live => {
                tracing::warn!(
                    cursor = self.cursor,
                    "subscriber fell behind the live stream; cutting it off"
                );
                METRICS.slow_cut_off.inc();
                return Ok(Some(Some(self.end(End::Slow))));
            }
            TailRead::Behind => None,
        };
        let batch = match from_tail {
            Some(events) => events,
            None => {
                let mut conn = self.tail.db().begin_read().await?;
                let (floor, head) = db::events::bounds(&mut conn).await?;
                self.committed = self.committed.max(head);
                if self.cursor < floor {
                    METRICS
                        .resets
                        .get_or_create(&ReasonLabel { reason: "expired" })
                        .inc();
                    self.cursor = head;
                    return Ok(Some(Some(Next::Reset(Reset {
                        cursor: head.to_string(),
                        reason: ResetReason::Expired,
                    }))));
                }
                let rows = db::events::read_after(&mut conn, self.cursor, max as i64).await?;
                conn.commit().await?;
                if rows.is_empty() {
                    return Ok(Some(None));
                }
                rows.into_iter().map(StoredEvent::from).collect()
            }
        };
        self.cursor = batch.last().expect("not empty").id;
        let events = batch.iter().filter_map(|e| self.filter.pass(e)).collect();
        Ok(Some(Some(Next::Events {
            events,
            cursor: self.cursor,
        })))
    }

    /// Waits until the head moves past what [`poll_now`](Self::poll_now) last saw, or the
    /// server starts shutting down (the next `poll_now` then ends the stream).
    pub(crate) async fn wait(&mut self) {
        tokio::select! {
            changed = self.head.changed() => {
                if changed.is_err() {
                    // The tail is gone: only possible at shutdown.
                    self.tail.closing().cancelled().await;
                }
            }
            () = self.tail.closing().cancelled() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_parsing_and_matching() {
        let filter = Filter::parse(Some("funkos"), ["CREATE,delete", "CREATE"]).unwrap();
        assert_eq!(filter.entity, Some(Entity::Funkos));
        assert_eq!(filter.types, [EventKind::Create, EventKind::Delete]);
        let event = |entity, kind| StoredEvent::new(1, entity, kind, "{}", "t");
        assert!(
            filter
                .pass(&event(Entity::Funkos, EventKind::Create))
                .is_some()
        );
        assert!(
            filter
                .pass(&event(Entity::Funkos, EventKind::Update))
                .is_none()
        );
        assert!(
            filter
                .pass(&event(Entity::Categories, EventKind::Create))
                .is_none()
        );
        assert!(
            Filter::default()
                .pass(&event(Entity::Categories, EventKind::Update))
                .is_some()
        );
        assert!(Filter::parse(Some("users"), []).is_err());
        assert!(Filter::parse(None, ["UPSERT"]).is_err());
    }
}
