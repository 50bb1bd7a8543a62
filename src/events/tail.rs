//! [`Tail`]: the process's view of the log's recent end, and the wake-up of every subscriber
//! when it grows.
//!
//! One tailer task appends to the tail, in id order. On PostgreSQL, after a commit (this
//! instance's, or another's through `LISTEN`) it is woken and reads the log after the newest
//! id it holds. Because ids become visible in increasing order (see `db::events::append_all`),
//! "read after my head" never skips an event, and every instance that tails the same database
//! holds the same sequence with the same cursors. On SQLite this process is the only writer,
//! and its write queue hands the tailer each committed batch's events, in commit order
//! (`db::writer::Commit`): the same rows, without reading them back; after a failed batch the
//! tailer reads the log instead. The database is the truth; this is a cache of its end.

use std::{
    collections::VecDeque,
    sync::{
        Arc, RwLock,
        atomic::{AtomicI64, Ordering},
    },
    time::Duration,
};

use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::StoredEvent;
use crate::db::{self, Backend, Db, writer::Commit};

/// How many events the tailer reads from the log per query.
const TAIL_BATCH: i64 = 1000;

/// The recent end of the log: exactly the events with ids in `floor+1..=head`, in order.
#[derive(Debug)]
struct Events {
    events: VecDeque<StoredEvent>,
    floor: i64,
    head: i64,
}

/// What [`Tail::read`] found after a cursor.
pub(crate) enum TailRead {
    /// The events after the cursor that the tail holds (none: the cursor is at the head).
    Events(Vec<StoredEvent>),
    /// The cursor is older than the tail: those events are only in the database.
    Behind,
}

/// The log's tail: what every subscription reads live events from, the head cursor they wait
/// on, and the range of cursors the log serves.
pub(crate) struct Tail {
    db: Db,
    /// The events; held only for copying `Arc`s in or out, never across an `.await`.
    tail: RwLock<Events>,
    /// How many events the tail keeps. A live subscriber that falls further behind than this
    /// is cut off (it resumes from the database by cursor), so this bounds every subscriber's
    /// queue without a queue per subscriber.
    capacity: usize,
    /// The head cursor. Each subscriber holds a receiver and sleeps on `changed()`.
    head: watch::Sender<i64>,
    /// Wakes the tailer: after a local commit (PostgreSQL), on a PostgreSQL notification, or
    /// at shutdown.
    wake: Notify,
    /// SQLite: the write queue's committed batches, taken by the tailer when it starts.
    /// Bounded by the queue: past its capacity unread, writes wait for the tailer.
    commits: std::sync::Mutex<Option<mpsc::Receiver<Commit>>>,
    /// Whether this process's commits reach the tailer through `commits` (so they need no
    /// wake-up and no read of the log).
    pushed: bool,
    /// Cancelled at shutdown: streams end so their clients reconnect elsewhere.
    closing: CancellationToken,
    /// The newest event id known to be committed: raised by this process's writes (before
    /// they answer) and by the tailer. On SQLite this process is the only writer, so it is
    /// the log's head, and subscriptions can check a cursor without asking the database.
    committed: AtomicI64,
    /// Every event above this id is in the log (raised when this process prunes). With
    /// `committed`, the range of cursors this database issued and still serves.
    log_floor: AtomicI64,
}

impl Tail {
    /// A bus whose tail starts at the log's current head.
    pub(crate) async fn new(db: Db, capacity: usize) -> anyhow::Result<Arc<Self>> {
        let mut conn = db.reader.acquire().await?;
        let (floor, head) = db::events::bounds(&mut conn).await?;
        drop(conn);
        let commits = db.take_commits();
        Ok(Arc::new(Self {
            pushed: commits.is_some(),
            commits: std::sync::Mutex::new(commits),
            db,
            tail: RwLock::new(Events {
                events: VecDeque::with_capacity(capacity.min(65_536)),
                floor: head,
                head,
            }),
            capacity: capacity.max(1),
            head: watch::Sender::new(head),
            wake: Notify::new(),
            closing: CancellationToken::new(),
            committed: AtomicI64::new(head),
            log_floor: AtomicI64::new(floor),
        }))
    }

    /// The database whose log this is.
    pub(crate) fn db(&self) -> &Db {
        &self.db
    }

    /// The newest cursor this process has seen.
    pub(crate) fn head(&self) -> i64 {
        *self.head.borrow()
    }

    pub(crate) fn subscribe_head(&self) -> watch::Receiver<i64> {
        self.head.subscribe()
    }

    /// Asks the tailer to look for new events.
    pub(crate) fn wake(&self) {
        self.wake.notify_one();
    }

    /// Records a commit of this process that appended event `id`, and wakes the tailer
    /// unless the write queue hands it the event. Called after the commit and before the
    /// write answers.
    pub(crate) fn committed(&self, id: i64) {
        self.committed.fetch_max(id, Ordering::AcqRel);
        if !self.pushed {
            self.wake();
        }
    }

    /// Records that the log now starts after `floor` (this process pruned it, or found it
    /// pruned).
    pub(crate) fn pruned_to(&self, floor: i64) {
        self.log_floor.fetch_max(floor, Ordering::AcqRel);
    }

    /// The newest floor this process knows of: every cursor below it is gone from the log.
    pub(crate) fn known_floor(&self) -> i64 {
        self.log_floor.load(Ordering::Acquire)
    }

    /// Whether this process's commits reach the tail from its write queue (SQLite): then each
    /// commit is on its way to the tail before it is known committed, so a subscriber that
    /// finds the tail short of [`local_bounds`](Self::local_bounds)' head can wait for it.
    pub(crate) fn pushed(&self) -> bool {
        self.pushed
    }

    /// `(floor, committed)`: the cursors this database can serve, known without a query, when
    /// this process is the only writer (SQLite). `None` on PostgreSQL, where other instances
    /// write and prune: ask the database.
    pub(crate) fn local_bounds(&self) -> Option<(i64, i64)> {
        (self.db.backend == Backend::Sqlite).then(|| {
            (
                self.log_floor.load(Ordering::Acquire),
                self.committed.load(Ordering::Acquire),
            )
        })
    }

    pub(crate) fn closing(&self) -> &CancellationToken {
        &self.closing
    }

    /// Ends every stream and stops the tailer.
    pub(crate) fn close(&self) {
        self.closing.cancel();
        self.wake.notify_one();
    }

    /// The events after `cursor` that the tail holds, at most `max`.
    pub(crate) fn read(&self, cursor: i64, max: usize) -> TailRead {
        let tail = self.tail.read().expect("tail lock poisoned");
        if cursor < tail.floor {
            return TailRead::Behind;
        }
        let start = tail.events.partition_point(|e| e.id <= cursor);
        TailRead::Events(tail.events.range(start..).take(max).cloned().collect())
    }

    /// Reads new events from the log into the tail until it is at the log's head.
    /// Returns how many were added.
    ///
    /// If the log now starts after the tail's head (this instance was away while another
    /// pruned past it), the events in between are gone: the tail starts over at the log's
    /// floor, so every live subscriber behind it falls out of the tail and is reset, never
    /// handed the survivors as if nothing were missing.
    pub(crate) async fn catch_up(&self) -> Result<usize, sqlx::Error> {
        let mut added = 0;
        loop {
            let after = self.tail.read().expect("tail lock poisoned").head;
            let mut conn = self.db.reader.acquire().await?;
            let (rows, floor) =
                db::events::read_after_with_floor(&mut conn, after, TAIL_BATCH).await?;
            drop(conn);
            let mut batch: Vec<StoredEvent> = rows.into_iter().map(StoredEvent::from).collect();
            let full = batch.len() as i64 == TAIL_BATCH;
            if let Some(floor) = floor.filter(|&floor| floor > after) {
                tracing::warn!(
                    head = after,
                    floor,
                    "the log was pruned past this instance's tail; resetting its subscribers"
                );
                self.start_over(floor);
                batch.retain(|e| e.id > floor);
            }
            if batch.is_empty() {
                return Ok(added);
            }
            added += batch.len();
            self.extend(batch);
            if !full {
                return Ok(added);
            }
        }
    }

    /// Empties the tail and starts it again at `floor`, where the log now starts.
    fn start_over(&self, floor: i64) {
        self.pruned_to(floor);
        let mut tail = self.tail.write().expect("tail lock poisoned");
        tail.events.clear();
        tail.floor = floor;
        tail.head = floor;
    }

    /// Appends events newer than the tail's head, in id order, and publishes the new head.
    /// Only the tailer calls this, so the head moves only here. Older events are skipped: the
    /// tail has them (a log read after a failed batch may run ahead of the pushed batches).
    fn extend(&self, mut batch: Vec<StoredEvent>) {
        let after = self.tail.read().expect("tail lock poisoned").head;
        batch.retain(|e| e.id > after);
        let Some(last) = batch.last().map(|e| e.id) else {
            return;
        };
        {
            let mut tail = self.tail.write().expect("tail lock poisoned");
            tail.events.extend(batch);
            while tail.events.len() > self.capacity {
                let dropped = tail.events.pop_front().expect("longer than capacity");
                tail.floor = dropped.id;
            }
            tail.head = last;
        }
        self.committed.fetch_max(last, Ordering::AcqRel);
        // Published after the tail holds the events: a woken subscriber finds them.
        self.head.send_replace(last);
    }

    /// The tailer on SQLite: appends each batch the write queue committed, in commit order;
    /// after a failed batch, reads the log (retrying until it can) before the next batch, so
    /// nothing committed is skipped. Runs until [`close`](Self::close).
    async fn follow_commits(&self, mut commits: mpsc::Receiver<Commit>) {
        loop {
            let commit = tokio::select! {
                biased;
                () = self.closing.cancelled() => return,
                commit = commits.recv() => commit,
            };
            match commit {
                Some(Commit::Events { created_at, events }) => self.extend(
                    events
                        .into_iter()
                        .map(|(id, e)| {
                            StoredEvent::new(id, e.entity, e.kind, &e.data, &created_at)
                                .with_before(e.before.as_deref())
                        })
                        .collect(),
                ),
                Some(Commit::ReadLog) => {
                    let mut backoff = Duration::from_millis(50);
                    while let Err(err) = self.catch_up().await {
                        tracing::warn!(error = %err, "reading new events failed; retrying");
                        tokio::select! {
                            () = tokio::time::sleep(backoff) => {}
                            () = self.closing.cancelled() => return,
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
                // The write queue closed (shutdown).
                None => return,
            }
        }
    }

    /// The tailer: runs until [`close`](Self::close). `poll_every` bounds how late an event
    /// committed elsewhere may be seen if its wake-up is lost (PostgreSQL); `None` when this
    /// process is the only writer (SQLite).
    pub(crate) async fn run_tailer(self: Arc<Self>, poll_every: Option<Duration>) {
        let commits = self.commits.lock().expect("not poisoned").take();
        if let Some(commits) = commits {
            return self.follow_commits(commits).await;
        }
        let mut backoff = Duration::from_millis(50);
        loop {
            if self.closing.is_cancelled() {
                return;
            }
            match self.catch_up().await {
                Ok(_) => backoff = Duration::from_millis(50),
                Err(err) => {
                    tracing::warn!(error = %err, "reading new events failed; retrying");
                    // A wake-up (a reconnected listener, a local commit) retries at once.
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = self.wake.notified() => {}
                        () = self.closing.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            }
            match poll_every {
                Some(every) => {
                    tokio::select! {
                        () = self.wake.notified() => {}
                        () = tokio::time::sleep(every) => {}
                    }
                }
                None => self.wake.notified().await,
            }
        }
    }
}
