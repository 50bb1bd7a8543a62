//! The `events` table: the outbox every write appends to in its own transaction, and the
//! durable log the stream replays from.

use std::{
    fmt::Write,
    hash::{BuildHasher, RandomState},
};

use sqlx::{AnyConnection, AssertSqlSafe, Row};

use super::{Backend, Db, Placeholders};
use crate::domain::{
    category::SEED,
    event::{Entity, EventKind},
    resource::now_rfc3339,
};

/// An event as the log holds it.
#[derive(Debug)]
pub(crate) struct EventRow {
    /// The cursor.
    pub id: i64,
    pub entity: Entity,
    pub kind: EventKind,
    /// The resource's JSON as `GET` returned it after the change.
    pub data: String,
    /// A Funko UPDATE's or DELETE's Funko before the change, as views read it.
    pub before: Option<String>,
    pub created_at: String,
}

/// An event a write is about to append: the resource's JSON as `GET` returns it.
#[derive(Debug)]
pub(crate) struct NewEvent {
    pub entity: Entity,
    pub kind: EventKind,
    pub data: String,
    /// For a Funko UPDATE or DELETE: the Funko before it, as views read it
    /// ([`ViewFields`](crate::domain::view::ViewFields) JSON).
    pub before: Option<String>,
}

/// The events one write appends, in order: its resource's, then those of any other resource
/// it changed (a category rename changes each of its Funkos). Never empty.
#[derive(Debug)]
pub(crate) struct NewEvents {
    pub first: NewEvent,
    pub rest: Vec<NewEvent>,
}

impl NewEvents {
    /// How many: at least one, by construction.
    pub(crate) fn len(&self) -> usize {
        1 + self.rest.len()
    }
}

impl From<NewEvent> for NewEvents {
    fn from(first: NewEvent) -> Self {
        Self {
            first,
            rest: Vec::new(),
        }
    }
}

impl IntoIterator for NewEvents {
    type Item = NewEvent;
    type IntoIter = std::iter::Chain<std::iter::Once<NewEvent>, std::vec::IntoIter<NewEvent>>;

    fn into_iter(self) -> Self::IntoIter {
        std::iter::once(self.first).chain(self.rest)
    }
}

/// The PostgreSQL channel every append notifies, with the newest appended id as payload.
/// Instances `LISTEN` on it to wake their tailer (`events::listener`).
pub(crate) const NOTIFY_CHANNEL: &str = "funko_events";

/// Most events one `INSERT` appends: keeps its bound values (four an event) well under
/// SQLite's and PostgreSQL's limits however many events a batch's writes bring.
const APPEND_CHUNK: usize = 1000;

/// Appends the events of a batch of writes ([`super::writer`]) inside the batch's
/// transaction, all created at `created_at`, and returns their ids, in the order of `events`.
///
/// # Commit order is cursor order
/// A reader asks for "events after my cursor" and must never skip one. On SQLite that is
/// free: one writer connection, so ids are assigned and committed one batch at a time. On
/// PostgreSQL a sequence value is taken at insert but becomes visible at commit: if two
/// writers ran side by side, the one holding id 11 could commit before the one holding 10,
/// a reader would see 11, move its cursor there, and never see 10.
///
/// Two ways out:
/// - serialise appends: the transaction that takes an id holds a lock until it commits, so
///   ids are handed out and become visible in the same order, and "after my cursor" is
///   always complete. Cost: appends (and their commits) from every instance run one at a
///   time.
/// - a visibility horizon: let writers run in parallel and have readers stop before the
///   oldest id still in flight (from `pg_snapshot_xmin` and a transaction id stored per
///   event, or a "pending" table). Cost: every reader query and the tailer get subtler,
///   and a slow transaction holds back every subscriber on every instance.
///
/// We serialise: on PostgreSQL the batch's transaction began with a transaction-level
/// advisory lock (`db::WRITE_LOCK`), held until commit or rollback. PostgreSQL makes a
/// committed transaction visible before it releases its locks, so when the next batch (of
/// any instance) gets the lock and its ids, every smaller id is already visible. The lock
/// covers the whole batch, not only the append, because its writes' checks (free name,
/// `If-Match`, unused category) must also still hold at commit, as they do on SQLite's
/// single writer.
///
/// The rows of one `INSERT` take increasing ids in the order of its `VALUES` (SQLite's
/// `AUTOINCREMENT`, PostgreSQL's sequence default), so sorting the returned ids (neither
/// promises their order) gives each event its own.
///
/// On PostgreSQL the same statement queues a `NOTIFY` (`pg_notify`) whose payload is the
/// newest id it appended; PostgreSQL delivers it only if and when the transaction commits,
/// after the commit is visible, and once per transaction however many rows repeat it (equal
/// notifications of one transaction are folded). It is only a wake-up: listeners read the
/// table.
pub(crate) async fn append_all(
    conn: &mut AnyConnection,
    backend: Backend,
    events: &[NewEvent],
    created_at: &str,
) -> Result<Vec<i64>, sqlx::Error> {
    let mut ids = Vec::with_capacity(events.len());
    for chunk in events.chunks(APPEND_CHUNK) {
        ids.extend(append_chunk(&mut *conn, backend, chunk, created_at).await?);
    }
    Ok(ids)
}

/// [`append_all`] for at most [`APPEND_CHUNK`] events, in one statement.
async fn append_chunk(
    conn: &mut AnyConnection,
    backend: Backend,
    events: &[NewEvent],
    created_at: &str,
) -> Result<Vec<i64>, sqlx::Error> {
    let mut p = Placeholders::default();
    let now = p.next();
    let mut sql = String::with_capacity(160 + events.len() * 24);
    if backend == Backend::Postgres {
        sql.push_str("WITH e AS (");
    }
    sql.push_str("INSERT INTO events (entity, type, data, prior, created_at) VALUES ");
    for i in 0..events.len() {
        if i > 0 {
            sql.push_str(", ");
        }
        let (entity, kind, data, prior) = (p.next(), p.next(), p.next(), p.next());
        let _ = write!(sql, "({entity}, {kind}, {data}, {prior}, {now})");
    }
    sql.push_str(" RETURNING id");
    if backend == Backend::Postgres {
        let channel = p.next();
        let _ = write!(
            sql,
            ") SELECT id, pg_notify({channel}, (SELECT MAX(id) FROM e)::text) FROM e"
        );
    }
    // Built from placeholders only: every value is bound.
    let mut query = sqlx::query_scalar(AssertSqlSafe(sql)).bind(created_at);
    for event in events {
        query = query
            .bind(event.entity.as_str())
            .bind(event.kind.as_str())
            .bind(&event.data)
            .bind(event.before.as_deref());
    }
    if backend == Backend::Postgres {
        query = query.bind(NOTIFY_CHANNEL);
    }
    let mut ids: Vec<i64> = query.fetch_all(conn).await?;
    if ids.len() != events.len() {
        return Err(sqlx::Error::Protocol(format!(
            "{} events appended, {} ids returned",
            events.len(),
            ids.len()
        )));
    }
    ids.sort_unstable();
    Ok(ids)
}

/// Events after `after`, oldest first, at most `limit`.
pub(crate) async fn read_after(
    conn: &mut AnyConnection,
    after: i64,
    limit: i64,
) -> Result<Vec<EventRow>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT id, entity, type, data, created_at, prior FROM events \
         WHERE id > $1 ORDER BY id LIMIT $2",
    )
    .bind(after)
    .bind(limit)
    .fetch_all(conn)
    .await?;
    rows.iter().map(event_row).collect()
}

/// [`read_after`], with the log's floor as the same statement saw it (so in the same
/// snapshot): `None` when there are no events after `after`. The log always keeps its newest
/// event, so a floor past `after` always comes with events.
pub(crate) async fn read_after_with_floor(
    conn: &mut AnyConnection,
    after: i64,
    limit: i64,
) -> Result<(Vec<EventRow>, Option<i64>), sqlx::Error> {
    let rows = sqlx::query(
        "SELECT id, entity, type, data, created_at, prior, \
         (SELECT m.value FROM stream_meta m WHERE m.key = 'floor') AS floor \
         FROM events WHERE id > $1 ORDER BY id LIMIT $2",
    )
    .bind(after)
    .bind(limit)
    .fetch_all(conn)
    .await?;
    let floor = rows.first().map(|row| row.try_get(6)).transpose()?;
    let events = rows.iter().map(event_row).collect::<Result<_, _>>()?;
    Ok((events, floor))
}

fn event_row(row: &sqlx::any::AnyRow) -> Result<EventRow, sqlx::Error> {
    let entity: String = row.try_get(1)?;
    let kind: String = row.try_get(2)?;
    Ok(EventRow {
        id: row.try_get(0)?,
        entity: Entity::parse(&entity).ok_or_else(|| decode_error("entity", &entity))?,
        kind: EventKind::parse(&kind).ok_or_else(|| decode_error("type", &kind))?,
        data: row.try_get(3)?,
        created_at: row.try_get(4)?,
        before: row.try_get(5)?,
    })
}

fn decode_error(column: &str, value: &str) -> sqlx::Error {
    sqlx::Error::Decode(format!("unexpected {column} {value:?} in events").into())
}

/// The stream's bounds as this connection sees them: `(floor, head)`. Every event with an
/// id in `floor+1..=head` is in the log; `head` is the newest event (or `floor` when the log
/// is empty). Inside a read transaction, `head` is the cursor of that snapshot.
pub(crate) async fn bounds(conn: &mut AnyConnection) -> Result<(i64, i64), sqlx::Error> {
    let row = sqlx::query(
        "SELECT m.value, COALESCE((SELECT MAX(id) FROM events), m.value) \
         FROM stream_meta m WHERE m.key = 'floor'",
    )
    .fetch_one(conn)
    .await?;
    Ok((row.try_get(0)?, row.try_get(1)?))
}

/// Sets up a new database: the stream's first cursor and the seed categories.
///
/// A new log starts at a random id rather than 1, so a cursor from another database is
/// almost surely outside this one's range and answered with a reset, not silently misread.
pub(crate) async fn init_stream(db: &Db) -> Result<(), sqlx::Error> {
    // Instances starting together: the write lock lets one seed; the others then see the floor.
    let mut tx = db.begin_write().await?;
    let existing: Option<i64> =
        sqlx::query_scalar("SELECT value FROM stream_meta WHERE key = 'floor'")
            .fetch_optional(&mut *tx)
            .await?;
    if existing.is_some() {
        return tx.commit().await;
    }
    // Never 0: PostgreSQL's sequences start at 1.
    let base =
        (1 + RandomState::new().hash_one(std::process::id()) % ((1 << 31) - 1)) as i64 * (1 << 20);
    match db.backend {
        Backend::Sqlite => {
            sqlx::query("INSERT INTO sqlite_sequence (name, seq) VALUES ('events', $1)")
                .bind(base)
                .execute(&mut *tx)
                .await?;
        }
        Backend::Postgres => {
            sqlx::query("SELECT setval('events_id_seq', $1)")
                .bind(base)
                .execute(&mut *tx)
                .await?;
        }
    }
    sqlx::query("INSERT INTO stream_meta (key, value) VALUES ('floor', $1)")
        .bind(base)
        .execute(&mut *tx)
        .await?;
    let now = now_rfc3339();
    for name in SEED {
        sqlx::query(
            "INSERT INTO categories (name, name_key, created_at, updated_at) VALUES ($1, $2, $3, $3)",
        )
        .bind(*name)
        .bind(crate::domain::name_key(name))
        .bind(&now)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await
}

/// Deletes events older than `max_age_secs` or beyond the newest `max_count`, keeping at
/// least the newest one, and raises the floor to the last deleted id. Returns how many went.
pub(crate) async fn prune(db: &Db, max_age_secs: u64, max_count: u64) -> Result<u64, sqlx::Error> {
    let cutoff = (chrono::Utc::now() - chrono::Duration::seconds(max_age_secs as i64))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let max_count = max_count.max(1) as i64;
    let mut tx = db.begin_write().await?;
    // The newest id that must go: by count, the one `max_count` places below the newest;
    // by age, the newest one older than the cutoff; never the newest event itself.
    let by_count: Option<i64> =
        sqlx::query_scalar("SELECT id FROM events ORDER BY id DESC LIMIT 1 OFFSET $1")
            .bind(max_count)
            .fetch_optional(&mut *tx)
            .await?;
    let by_age: Option<i64> = sqlx::query_scalar(
        "SELECT MAX(id) FROM events WHERE created_at < $1 AND id < (SELECT MAX(id) FROM events)",
    )
    .bind(&cutoff)
    .fetch_one(&mut *tx)
    .await?;
    let Some(upto) = by_count.max(by_age) else {
        return tx.commit().await.map(|()| 0);
    };
    let deleted = sqlx::query("DELETE FROM events WHERE id <= $1")
        .bind(upto)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    sqlx::query("UPDATE stream_meta SET value = $1 WHERE key = 'floor' AND value < $1")
        .bind(upto)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(deleted)
}
