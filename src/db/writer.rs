//! Group commit: the writes waiting at a moment run one after another in ONE transaction,
//! their events are appended together, and one `COMMIT` commits them all. On SQLite the
//! transaction runs on the single writer connection; on PostgreSQL it begins by taking the
//! advisory lock that every instance's writes share (`db::WRITE_LOCK`), so each instance
//! sends its writes in batches, one batch of the whole database at a time.
//!
//! Every statement is a round trip (to sqlx's worker thread of SQLite's connection, or to
//! PostgreSQL); on a busy core each waits to be scheduled. A write of a batch costs the
//! statements that change its rows (and on PostgreSQL one `SAVEPOINT`); `BEGIN` and the lock,
//! the events' `INSERT` with its `NOTIFY`, and `COMMIT` are shared by the batch.
//!
//! # What a write may do, and what its neighbours see
//! The writes of a batch run one at a time, in arrival order, each seeing the ones before
//! it, exactly as if each had its own transaction under the write lock. Their events are
//! appended in the same order after the last of them, so event ids follow that order, and
//! all of them become visible at the one commit.
//!
//! A write that fails must not take its neighbours down with it:
//! - PostgreSQL: each write runs in a savepoint, and a write that fails, whatever its error,
//!   is rolled back to it: its own rows go, the others stay. (A failed statement aborts a
//!   PostgreSQL transaction until then, so this is needed even for a refusal.) Only when the
//!   rollback itself fails (the connection is gone) does the whole batch fail.
//! - SQLite: a write that refuses (see [`WriteError::changed_nothing`]) must leave the
//!   transaction as it found it: it refused before changing a row, or its one changing
//!   statement failed and SQLite undid that statement alone (a constraint violation aborts
//!   the statement, not the transaction). Any other failure may have left half a write
//!   behind, so the whole batch rolls back.
//!
//! When a batch fails, nothing of it is committed and no event exists; every write in it
//! fails with [`WriteError::batch_failed`], except one that failed on its own, which answers
//! its own error. No write of a batch is answered before the batch's `COMMIT` returns,
//! refusals included (a 409 may rest on a row an earlier write of the batch staged).
//!
//! # What the bus learns
//! SQLite: after each batch, and before answering its writes, the task sends a [`Commit`] to
//! the bus's tailer: the events it committed, with their ids, or that the log must be read (a
//! failed batch). The channel is FIFO and this task is the only writer of SQLite's log, so
//! the tailer gets every committed event in id order without reading it back.
//! PostgreSQL: other instances write too, so the tailer reads the log, woken by each write
//! (`Tail::committed`) and by the batch's `NOTIFY` on every instance.

use std::{panic::AssertUnwindSafe, sync::Mutex};

use futures_util::{FutureExt, future::BoxFuture};
use sqlx::{AnyConnection, AnyPool, Executor};
use tokio::{
    sync::{mpsc, oneshot},
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;

use super::{
    Backend, WRITE_BATCH,
    events::{self, NewEvent, NewEvents},
};
use crate::domain::resource::now_rfc3339;

/// What a write can fail with, as the queue needs to know it.
pub(crate) trait WriteError: From<sqlx::Error> + Send + 'static {
    /// Whether the write refused and left the transaction as it found it; if not, its
    /// batch is rolled back on SQLite (PostgreSQL rolls back to the write's savepoint).
    fn changed_nothing(&self) -> bool;
    /// The error of a write whose batch was not committed (its `BEGIN` or `COMMIT` failed, or
    /// another write of the batch failed): nothing it did was kept, and it may be retried.
    fn batch_failed() -> Self;
}

/// A write: the rows it changes through the connection of its batch's transaction; it
/// returns its result and the events that describe the change.
pub(crate) type Change<T, E> = Box<
    dyn for<'c> FnOnce(&'c mut AnyConnection) -> BoxFuture<'c, Result<(T, NewEvents), E>> + Send,
>;

/// A write with its result type erased, so writes of every type share the queue. Dropping a
/// job unrun drops its reply channel: its caller gets [`WriteError::batch_failed`].
type Job = Box<dyn for<'c> FnOnce(&'c mut AnyConnection) -> BoxFuture<'c, Ran> + Send>;

/// Answers a write that ran, once its batch's fate is known.
type Answer = Box<dyn FnOnce(Fate) + Send>;

/// How a batch ended, for one of its writes.
enum Fate {
    /// Committed; `cursor` is the id of the write's last event (`None` when it refused).
    Committed { cursor: Option<i64> },
    /// Rolled back, or its commit failed.
    Failed,
}

/// A write that ran in its batch's transaction.
struct Ran {
    /// It failed (its rows, if any, must be undone before the next write).
    failed: bool,
    /// It failed in a way that may have left part of it behind: on SQLite the batch must
    /// roll back.
    breaks_batch: bool,
    /// Its events, when it succeeded.
    events: Option<NewEvents>,
    answer: Answer,
}

/// What a batch left in the log, sent to the bus's tailer in commit order.
#[derive(Debug)]
pub(crate) enum Commit {
    /// The batch committed these events, ids increasing, all created at `created_at`
    /// (exactly the rows it inserted).
    Events {
        created_at: String,
        events: Vec<(i64, NewEvent)>,
    },
    /// A batch failed; its `COMMIT` may have failed after SQLite kept it, so the log, not
    /// this channel, says what is there: read it.
    ReadLog,
}

/// Most writes in one transaction: bounds how long the first of them waits for its answer.
const MAX_BATCH: usize = 128;
/// PostgreSQL: at most this many writes a batch. Each write's savepoint is a subtransaction,
/// and a transaction with more than 64 of them overflows PostgreSQL's per-backend cache of
/// them, which makes every concurrent snapshot on the server look them up on disk.
const MAX_BATCH_PG: usize = 64;
/// Writes that may wait for the writer before callers wait to enqueue (backpressure).
const QUEUE: usize = 1024;
/// Batches committed but not yet taken by the tailer before the batch task waits for it
/// (backpressure: the tail never falls unboundedly behind the log).
const COMMITS: usize = 64;

/// The queue of writes and the task that commits them in batches.
#[derive(Debug)]
pub(crate) struct WriteQueue {
    /// Writes waiting for the batch task; bounded by [`QUEUE`].
    jobs: mpsc::Sender<Job>,
    /// Stops the batch task (after the batch it is running) at [`WriteQueue::close`].
    closing: CancellationToken,
    /// The batch task, owned here and awaited at close.
    task: Mutex<Option<JoinHandle<()>>>,
    /// SQLite: what the batch task committed, until the bus takes it
    /// ([`WriteQueue::take_commits`]). Never on PostgreSQL, whose log other instances write.
    commits: Mutex<Option<mpsc::Receiver<Commit>>>,
}

impl WriteQueue {
    /// Starts the batch task on `writer`: on SQLite a pool of exactly one connection (the
    /// transaction of a batch takes it, so other users of the pool wait between batches); on
    /// PostgreSQL the writers' pool, of which a batch takes one connection at a time.
    pub(crate) fn start(writer: AnyPool, backend: Backend) -> Self {
        let (jobs, queue) = mpsc::channel(QUEUE);
        let (committed, commits) = match backend {
            Backend::Sqlite => {
                let (committed, commits) = mpsc::channel(COMMITS);
                (Some(committed), Some(commits))
            }
            Backend::Postgres => (None, None),
        };
        let closing = CancellationToken::new();
        let task = tokio::spawn(run(writer, backend, queue, committed, closing.clone()));
        Self {
            jobs,
            closing,
            task: Mutex::new(Some(task)),
            commits: Mutex::new(commits),
        }
    }

    /// SQLite: the batches' [`Commit`]s, in commit order; `None` once taken, and on
    /// PostgreSQL. The taker must keep
    /// receiving (or drop the receiver): past [`COMMITS`] unread, writes wait.
    pub(crate) fn take_commits(&self) -> Option<mpsc::Receiver<Commit>> {
        self.commits.lock().expect("not poisoned").take()
    }

    /// Runs `change` in the next batch and answers after that batch committed (or failed),
    /// with the id of the change's last event. Once queued, the write runs and commits even if
    /// the caller stops waiting (a client that hung up), like a write that reached `COMMIT`.
    pub(crate) async fn write<T, E>(&self, change: Change<T, E>) -> Result<(T, i64), E>
    where
        T: Send + 'static,
        E: WriteError,
    {
        let (reply, answer) = oneshot::channel::<Result<(T, i64), E>>();
        let job: Job = Box::new(move |conn| {
            Box::pin(async move {
                let (result, events) = match change(conn).await {
                    Ok((value, events)) => (Ok(value), Some(events)),
                    Err(err) => (Err(err), None),
                };
                let breaks_batch = result.as_ref().is_err_and(|err| !err.changed_nothing());
                Ran {
                    failed: result.is_err(),
                    breaks_batch,
                    events,
                    answer: Box::new(move |fate| {
                        // The write that broke its batch answers its own error; the others
                        // of a failed batch, the batch's failure. The caller may have gone
                        // (client disconnected): nothing to tell then.
                        let _ = reply.send(match (fate, result) {
                            (Fate::Committed { cursor: Some(id) }, Ok(value)) => Ok((value, id)),
                            (Fate::Committed { .. }, Err(err)) => Err(err),
                            (Fate::Failed, Err(err)) if breaks_batch => Err(err),
                            _ => Err(E::batch_failed()),
                        });
                    }),
                }
            })
        });
        if self.jobs.send(job).await.is_err() {
            return Err(E::batch_failed());
        }
        // Dropped unanswered only if the task ended (closed, or a bug): nothing committed.
        answer.await.unwrap_or_else(|_| Err(E::batch_failed()))
    }

    /// Stops the batch task once its current batch is done; later writes fail.
    pub(crate) async fn close(&self) {
        self.closing.cancel();
        let task = self.task.lock().expect("not poisoned").take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

/// The batch task: takes every write waiting (up to [`MAX_BATCH`]), runs them in one
/// transaction, commits, then answers them all.
async fn run(
    writer: AnyPool,
    backend: Backend,
    mut queue: mpsc::Receiver<Job>,
    commits: Option<mpsc::Sender<Commit>>,
    closing: CancellationToken,
) {
    let max_batch = match backend {
        Backend::Sqlite => MAX_BATCH,
        Backend::Postgres => MAX_BATCH_PG,
    };
    let mut batch = Vec::with_capacity(max_batch);
    loop {
        let first = tokio::select! {
            biased;
            () = closing.cancelled() => return,
            job = queue.recv() => match job {
                Some(job) => job,
                None => return,
            },
        };
        batch.push(first);
        while batch.len() < max_batch {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let mut ran = Vec::with_capacity(batch.len());
        let committed = run_batch(&writer, backend, batch.drain(..), &mut ran).await;
        match committed {
            Some((created_at, events)) => {
                // Each write's events are consecutive, in the writes' order: its cursor is
                // the id of its last one.
                let mut ids = events.iter().map(|(id, _)| *id);
                let fates: Vec<_> = ran
                    .iter()
                    .map(|&(_, appended)| {
                        (appended > 0)
                            .then(|| ids.by_ref().take(appended).last())
                            .flatten()
                    })
                    .collect();
                // Sent before answering; a gone receiver (the bus closed) needs nothing.
                if let Some(commits) = &commits
                    && !events.is_empty()
                {
                    let _ = commits.send(Commit::Events { created_at, events }).await;
                }
                for ((answer, _), cursor) in ran.into_iter().zip(fates) {
                    answer(Fate::Committed { cursor });
                }
            }
            None => {
                if let Some(commits) = &commits {
                    let _ = commits.send(Commit::ReadLog).await;
                }
                for (answer, _) in ran {
                    answer(Fate::Failed);
                }
            }
        }
    }
}

/// Runs one batch, pushing the answer of each write that ran (and how many events it
/// appends) to `ran`; returns its events with their ids, in order, and their creation time,
/// when it committed. Jobs left unrun (the `BEGIN` failed, or an earlier job broke the
/// batch) are dropped with `jobs`, which answers them as failed.
async fn run_batch(
    writer: &AnyPool,
    backend: Backend,
    mut jobs: impl Iterator<Item = Job>,
    ran: &mut Vec<(Answer, usize)>,
) -> Option<(String, Vec<(i64, NewEvent)>)> {
    // SQLite, IMMEDIATE: the write lock is taken now, waiting (busy_timeout) for any other
    // holder, such as a tool on the same file. A deferred transaction that read first would
    // fail at its first write instead, since SQLite cannot wait to upgrade a read.
    // PostgreSQL: the write lock and the first write's savepoint, in the same round trip.
    let begin = match backend {
        Backend::Sqlite => "BEGIN IMMEDIATE",
        Backend::Postgres => WRITE_BATCH,
    };
    let mut tx = match writer.begin_with(begin).await {
        Ok(tx) => tx,
        Err(err) => {
            tracing::error!(error = %err, "could not begin a write transaction");
            return None;
        }
    };
    // PostgreSQL: whether the savepoint `write` marks the transaction as it is now, so the
    // next write can be rolled back alone. A write that succeeded moves past it; one rolled
    // back to it leaves it in place.
    let mut savepoint = true;
    let mut events = Vec::with_capacity(ran.capacity());
    for job in jobs.by_ref() {
        if backend == Backend::Postgres && !savepoint {
            // The same name again: a later savepoint hides the earlier ones, which stay
            // (until the commit) and cost nothing more.
            if let Err(err) = tx.execute("SAVEPOINT write").await {
                tracing::error!(error = %err, writes = ran.len(), "a batch's savepoint failed");
                return None;
            }
            savepoint = true;
        }
        // A panicking write must not end the task that every other write depends on (its
        // reply channel is dropped while unwinding: its caller gets a failure).
        let Ok(done) = AssertUnwindSafe(job(&mut tx)).catch_unwind().await else {
            tracing::error!("a write panicked inside its batch: rolling it back");
            return None;
        };
        ran.push((done.answer, done.events.as_ref().map_or(0, NewEvents::len)));
        events.extend(done.events.into_iter().flatten());
        match backend {
            Backend::Postgres if done.failed => {
                if let Err(err) = tx.execute("ROLLBACK TO SAVEPOINT write").await {
                    tracing::error!(
                        error = %err,
                        writes = ran.len(),
                        "rolling back a failed write: rolling back its batch"
                    );
                    return None;
                }
            }
            Backend::Postgres => savepoint = false,
            Backend::Sqlite if done.breaks_batch => {
                tracing::error!(
                    writes = ran.len(),
                    "a write failed midway: rolling back its batch"
                );
                return None;
            }
            Backend::Sqlite => {}
        }
    }
    drop(jobs);
    // Returning early drops `tx`, which rolls the batch back.
    let now = now_rfc3339();
    let ids = match events::append_all(&mut tx, backend, &events, &now).await {
        Ok(ids) => ids,
        Err(err) => {
            tracing::error!(error = %err, writes = ran.len(), "appending a batch's events");
            return None;
        }
    };
    if let Err(err) = tx.commit().await {
        tracing::error!(error = %err, writes = ran.len(), "a batch's commit failed");
        return None;
    }
    Some((now, ids.into_iter().zip(events).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        db::Db,
        domain::event::{Entity, EventKind},
    };

    #[derive(Debug, PartialEq)]
    enum Failure {
        Refused,
        Broke,
        BatchFailed,
        Database(String),
    }

    impl From<sqlx::Error> for Failure {
        fn from(err: sqlx::Error) -> Self {
            Self::Database(err.to_string())
        }
    }

    impl WriteError for Failure {
        fn changed_nothing(&self) -> bool {
            *self == Self::Refused
        }

        fn batch_failed() -> Self {
            Self::BatchFailed
        }
    }

    /// Inserts a category named `name`, then fails with `then` if given.
    fn insert(name: &'static str, then: Option<Failure>) -> Change<&'static str, Failure> {
        Box::new(move |conn| {
            Box::pin(async move {
                sqlx::query(
                    "INSERT INTO categories (name, name_key, created_at, updated_at) \
                     VALUES ($1, $1, 'now', 'now')",
                )
                .bind(name)
                .execute(&mut *conn)
                .await?;
                if let Some(failure) = then {
                    return Err(failure);
                }
                let event = NewEvent {
                    entity: Entity::Categories,
                    kind: EventKind::Create,
                    data: format!("{{\"name\":\"{name}\"}}"),
                    before: None,
                };
                Ok((name, event.into()))
            })
        })
    }

    fn refuse() -> Change<&'static str, Failure> {
        Box::new(|_| Box::pin(async { Err(Failure::Refused) }))
    }

    /// A migrated SQLite database in a temp dir (kept as long as the dir is).
    async fn fresh_db() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::connect(&format!("sqlite://{}/w.db?mode=rwc", dir.path().display()))
            .await
            .unwrap();
        db.migrate().await.unwrap();
        (dir, db)
    }

    async fn names(db: &Db) -> Vec<String> {
        sqlx::query_scalar("SELECT name FROM categories WHERE name LIKE 'w-%' ORDER BY id")
            .fetch_all(&db.reader)
            .await
            .unwrap()
    }

    async fn event_count(db: &Db) -> i64 {
        sqlx::query_scalar("SELECT COUNT(*) FROM events")
            .fetch_one(&db.reader)
            .await
            .unwrap()
    }

    /// One current-thread runtime: the writes of one `join!` are all queued before the
    /// batch task runs, so they share one batch, in this order.
    #[tokio::test]
    async fn a_batch_commits_its_writes_in_order_and_keeps_refusals_apart() {
        let (_dir, db) = fresh_db().await;
        let mut commits = db
            .take_commits()
            .expect("SQLite hands out its commits once");
        assert!(db.take_commits().is_none());
        let (a, refused, b) = tokio::join!(
            db.write(insert("w-a", None)),
            db.write(refuse()),
            db.write(insert("w-b", None)),
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(refused, Err(Failure::Refused));
        assert_eq!((a.0, b.0), ("w-a", "w-b"));
        assert_eq!(b.1, a.1 + 1, "event ids in the writes' order");
        assert_eq!(names(&db).await, ["w-a", "w-b"]);
        assert_eq!(event_count(&db).await, 2);
        // The bus is handed the same events, ids and data, in the same order.
        let Some(Commit::Events { events, .. }) = commits.recv().await else {
            panic!("a committed batch hands over its events");
        };
        let handed: Vec<_> = events
            .iter()
            .map(|(id, e)| (*id, e.data.as_str()))
            .collect();
        assert_eq!(
            handed,
            [(a.1, r#"{"name":"w-a"}"#), (b.1, r#"{"name":"w-b"}"#)]
        );
        db.close().await;
    }

    #[tokio::test]
    async fn a_write_failing_midway_rolls_its_whole_batch_back() {
        let (_dir, db) = fresh_db().await;
        let mut commits = db.take_commits().unwrap();
        let (before, broke, after) = tokio::join!(
            db.write(insert("w-before", None)),
            db.write(insert("w-half", Some(Failure::Broke))),
            db.write(insert("w-after", None)),
        );
        assert_eq!(before, Err(Failure::BatchFailed));
        assert_eq!(broke, Err(Failure::Broke), "its own error");
        assert_eq!(after, Err(Failure::BatchFailed));
        assert!(names(&db).await.is_empty(), "nothing committed");
        assert_eq!(event_count(&db).await, 0, "no event");
        assert!(
            matches!(commits.recv().await, Some(Commit::ReadLog)),
            "after a failed batch the bus reads the log"
        );
        // The queue goes on with the next batch.
        assert_eq!(db.write(insert("w-next", None)).await.unwrap().0, "w-next");
        assert_eq!(names(&db).await, ["w-next"]);
        db.close().await;
    }
}
