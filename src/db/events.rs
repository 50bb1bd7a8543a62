//! The `events` table: the outbox every write appends to in its own transaction, and the
//! durable log the stream replays from.

use std::hash::{BuildHasher, RandomState};

use sqlx::{AnyConnection, Row};

use super::{Backend, Db, Tx};
use crate::{
    domain::category::SEED,
    events::{Entity, EventKind, StoredEvent},
    model::now_rfc3339,
};

/// Key of the PostgreSQL advisory lock that serialises appends (any constant unique to us).
const APPEND_LOCK: i64 = 0x66_75_6e_6b_6f; // "funko"

/// Appends one event inside the caller's transaction and returns it with its cursor.
///
/// On PostgreSQL a sequence value is taken at insert but becomes visible at commit, so two
/// concurrent writers could commit ids out of order and a reader that saw 11 could later
/// miss 10. The transaction-level advisory lock taken here is held until commit: appends are
/// serialised, ids are handed out and become visible in the same order. It is taken last in
/// the write, so only the append and the commit are serial, not the whole write. SQLite has a
/// single writer connection, which gives the same order for free.
pub async fn append(
    tx: &mut Tx,
    backend: Backend,
    entity: Entity,
    kind: EventKind,
    data: &str,
) -> Result<StoredEvent, sqlx::Error> {
    if backend == Backend::Postgres {
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(APPEND_LOCK)
            .execute(&mut **tx)
            .await?;
    }
    let created_at = now_rfc3339();
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO events (entity, type, data, created_at) VALUES ($1, $2, $3, $4) RETURNING id",
    )
    .bind(entity.as_str())
    .bind(kind.as_str())
    .bind(data)
    .bind(&created_at)
    .fetch_one(&mut **tx)
    .await?;
    Ok(StoredEvent::new(id, entity, kind, data, &created_at))
}

/// Events after `after`, oldest first, at most `limit`.
pub async fn read_after(
    conn: &mut AnyConnection,
    after: i64,
    limit: i64,
) -> Result<Vec<StoredEvent>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT id, entity, type, data, created_at FROM events WHERE id > $1 ORDER BY id LIMIT $2",
    )
    .bind(after)
    .bind(limit)
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|row| {
            let entity: String = row.try_get(1)?;
            let kind: String = row.try_get(2)?;
            let data: String = row.try_get(3)?;
            let created_at: String = row.try_get(4)?;
            Ok(StoredEvent::new(
                row.try_get(0)?,
                Entity::parse(&entity).ok_or_else(|| decode_error("entity", &entity))?,
                EventKind::parse(&kind).ok_or_else(|| decode_error("type", &kind))?,
                &data,
                &created_at,
            ))
        })
        .collect()
}

fn decode_error(column: &str, value: &str) -> sqlx::Error {
    sqlx::Error::Decode(format!("unexpected {column} {value:?} in events").into())
}

/// The stream's bounds as this connection sees them: `(floor, head)`. Every event with an
/// id in `floor+1..=head` is in the log; `head` is the newest event (or `floor` when the log
/// is empty). Inside a read transaction, `head` is the cursor of that snapshot.
pub async fn bounds(conn: &mut AnyConnection) -> Result<(i64, i64), sqlx::Error> {
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
pub async fn init_stream(db: &Db) -> Result<(), sqlx::Error> {
    let mut tx = db.begin_write().await?;
    if db.backend == Backend::Postgres {
        // Instances starting together: one seeds, the others then see the floor.
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(APPEND_LOCK)
            .execute(&mut *tx)
            .await?;
    }
    let existing: Option<i64> =
        sqlx::query_scalar("SELECT value FROM stream_meta WHERE key = 'floor'")
            .fetch_optional(&mut *tx)
            .await?;
    if existing.is_some() {
        return tx.commit().await;
    }
    let base = (RandomState::new().hash_one(std::process::id()) % (1 << 31)) as i64 * (1 << 20);
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
pub async fn prune(db: &Db, max_age_secs: u64, max_count: u64) -> Result<u64, sqlx::Error> {
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
