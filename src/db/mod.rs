//! Storage through sqlx's `Any` driver: one set of SQL (with `$n` placeholders, integers for
//! booleans, RFC 3339 text for timestamps) that runs on SQLite and on PostgreSQL.
//! One file per table, and [`writer`] for the writes' group commit; nothing outside `db/`
//! writes SQL.

/// The stream's head cursor as a scalar subquery. Read in the statement that reads rows, it
/// is the position those rows were read at: one statement is one snapshot on both databases.
macro_rules! head_cursor {
    () => {
        "(SELECT COALESCE(MAX(e.id), (SELECT m.value FROM stream_meta m WHERE m.key = 'floor')) \
         FROM events e)"
    };
}

pub(crate) mod categories;
pub(crate) mod events;
pub(crate) mod funkos;
pub(crate) mod writer;

use std::{path::Path, str::FromStr, sync::Arc, time::Duration};

use anyhow::Context;
use sqlx::{
    AnyPool, Executor,
    any::{AnyConnectOptions, AnyPoolOptions},
    pool::PoolConnection,
};
use tokio::sync::{mpsc, watch};
use writer::{Change, Commit, WriteError, WriteQueue};

/// Which database engine is behind the pools.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Backend {
    Sqlite,
    Postgres,
}

/// The pools. Writes are serialised on both engines, so a write sees every write committed
/// before it and event ids commit in order (see [`events::append_all`]):
/// - SQLite: all writes go through a single connection (SQLite has one writer anyway);
/// - PostgreSQL: every write transaction begins with [`WRITE_LOCK`]: a transaction-level
///   advisory lock shared by every instance on the database, held until commit or rollback.
///
/// On both, the writes of [`Db::write`] share transactions, a batch at a time ([`writer`]).
///
/// Reads use their own pool and run in snapshots (SQLite's WAL; PostgreSQL's `REPEATABLE
/// READ`), so a read never waits for a write and its rows match the cursor it reports.
#[derive(Clone, Debug)]
pub(crate) struct Db {
    pub backend: Backend,
    /// Reads; each read of rows and cursor runs in one snapshot ([`Db::begin_read`]).
    pub reader: AnyPool,
    /// Writes: on SQLite exactly one connection; on PostgreSQL a few (the write queue's
    /// batches, pruning, image releases), which queue on [`WRITE_LOCK`] without taking
    /// connections from readers.
    pub writer: AnyPool,
    /// The queue that runs the writes of [`Db::write`] in shared transactions on `writer`
    /// (group commit).
    writes: Arc<WriteQueue>,
    /// The URL the pools were opened with (PostgreSQL's LISTEN needs it).
    pub url: String,
}

pub(crate) type Tx = sqlx::Transaction<'static, sqlx::Any>;

/// Begins a PostgreSQL write transaction and takes the advisory lock that serialises writes
/// across instances, in one round trip. The key is any constant unique to this application:
/// 440056834927 is 0x66756e6b6f, "funko".
macro_rules! write_lock {
    () => {
        "BEGIN; SELECT pg_advisory_xact_lock(440056834927)"
    };
}
const WRITE_LOCK: &str = write_lock!();
/// [`WRITE_LOCK`] for a batch of the write queue, with the savepoint its first write runs in
/// ([`writer`]), still in one round trip.
const WRITE_BATCH: &str = concat!(write_lock!(), "; SAVEPOINT write");

/// PostgreSQL connections per instance: readers (reads, stream replay, the tailer) and
/// writers (which mostly wait on [`WRITE_LOCK`] under load, so a few are enough).
const PG_READERS: u32 = 12;
const PG_WRITERS: u32 = 4;

impl Db {
    /// Opens the pools, creating a SQLite file's directory when missing. A failure names
    /// the database (its URL without the password) and what to check.
    pub(crate) async fn connect(url: &str) -> anyhow::Result<Self> {
        sqlx::any::install_default_drivers();
        let shown = redacted(url);
        let fail = |what: &str, err: &dyn std::fmt::Display, hint: &str| {
            anyhow::anyhow!("{what}: {err}\n  {hint}")
        };
        const CHECK_URL: &str = "check DATABASE_URL (--database-url)";
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            anyhow::bail!(
                "unsupported database URL {shown}\n  use sqlite://PATH or \
                 postgres://USER:PASSWORD@HOST/DATABASE in DATABASE_URL (--database-url)"
            );
        };
        // A SQLite URL that says nothing of its mode creates its file when missing.
        let url = &match backend {
            Backend::Sqlite if !url.contains("mode=") => {
                let separator = if url.contains('?') { '&' } else { '?' };
                format!("{url}{separator}mode=rwc")
            }
            _ => url.to_owned(),
        };
        let options = AnyConnectOptions::from_str(url).map_err(|err| {
            fail(
                &format!("cannot read the database URL {shown}"),
                &err,
                CHECK_URL,
            )
        })?;
        match backend {
            Backend::Sqlite => {
                if let Some(dir) = sqlite_path(url).and_then(|p| p.parent().map(Path::to_owned))
                    && !dir.as_os_str().is_empty()
                {
                    std::fs::create_dir_all(&dir).map_err(|err| {
                        fail(
                            &format!("cannot create {} for the SQLite database", dir.display()),
                            &err,
                            "check DATABASE_URL (--database-url) and the directory's permissions",
                        )
                    })?;
                }
                let pool = |max: u32| {
                    AnyPoolOptions::new()
                        // A local file does not go stale: no ping round trip per acquire.
                        .test_before_acquire(false)
                        .max_connections(max)
                        .min_connections(1)
                        .acquire_timeout(Duration::from_secs(30))
                        .after_connect(|conn, _| {
                            Box::pin(async move {
                                // WAL: readers never block the writer. NORMAL: a commit survives a
                                // process crash (SIGKILL); only a power cut may lose the last ones.
                                // No automatic checkpoint: it would run (and fsync) inside the
                                // commit of whichever write crossed the threshold, stalling the
                                // whole write queue; [`Db::run_checkpoints`] does it aside.
                                conn.execute(
                                    "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                                     PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON; \
                                     PRAGMA wal_autocheckpoint = 0;",
                                )
                                .await?;
                                Ok(())
                            })
                        })
                        .connect_with(options.clone())
                };
                let open_failed = |err: sqlx::Error| {
                    fail(
                        &format!("cannot open the SQLite database {shown}"),
                        &err,
                        "check DATABASE_URL (--database-url) and that its directory is writable",
                    )
                };
                let writer = pool(1).await.map_err(open_failed)?;
                let reader = pool(8).await.map_err(open_failed)?;
                if !sqlite_plans_are_stable(&reader).await? {
                    tracing::warn!(
                        "SQLite was built without SQLITE_ENABLE_QPSG (build in this repository, \
                         whose .cargo/config.toml sets it): every list and search is planned \
                         afresh on each request"
                    );
                }
                Ok(Self {
                    backend,
                    reader,
                    writes: Arc::new(WriteQueue::start(writer.clone(), backend)),
                    writer,
                    url: url.to_owned(),
                })
            }
            Backend::Postgres => {
                // One connection first, so a failure reports its cause at once rather than
                // the pool's timeout.
                let unreachable = |err: &dyn std::fmt::Display| {
                    fail(
                        &format!("cannot connect to PostgreSQL at {shown}"),
                        err,
                        "check DATABASE_URL (--database-url) and that PostgreSQL runs and is reachable",
                    )
                };
                match tokio::time::timeout(
                    Duration::from_secs(30),
                    <sqlx::AnyConnection as sqlx::Connection>::connect_with(&options),
                )
                .await
                {
                    Ok(Ok(conn)) => sqlx::Connection::close(conn).await?,
                    Ok(Err(err)) => return Err(unreachable(&err)),
                    Err(_) => return Err(unreachable(&"no answer within 30 s")),
                }
                let reader = AnyPoolOptions::new()
                    .max_connections(PG_READERS)
                    .acquire_timeout(Duration::from_secs(30))
                    .connect_with(options.clone())
                    .await
                    .context("connecting to PostgreSQL")?;
                let writer = AnyPoolOptions::new()
                    .max_connections(PG_WRITERS)
                    .acquire_timeout(Duration::from_secs(30))
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            // A write never waits on its client inside its transaction; one
                            // that goes idle there (a stalled or partitioned instance) would
                            // hold every instance's write lock, so PostgreSQL ends it.
                            conn.execute("SET idle_in_transaction_session_timeout = '30s'")
                                .await?;
                            Ok(())
                        })
                    })
                    .connect_with(options)
                    .await
                    .context("connecting to PostgreSQL")?;
                Ok(Self {
                    backend,
                    reader,
                    writes: Arc::new(WriteQueue::start(writer.clone(), backend)),
                    writer,
                    url: url.to_owned(),
                })
            }
        }
    }

    /// Applies the migrations of this backend, then seeds a new database.
    pub(crate) async fn migrate(&self) -> anyhow::Result<()> {
        let migrator = match self.backend {
            Backend::Sqlite => sqlx::migrate!("./migrations/sqlite"),
            Backend::Postgres => sqlx::migrate!("./migrations/postgres"),
        };
        // Several instances may start at once: the migrator takes a lock, the seed too.
        migrator.run(&self.writer).await.context("migrating")?;
        events::init_stream(self).await.context("seeding")?;
        Ok(())
    }

    /// Begins a write transaction outside the write queue (pruning, seeding, image
    /// releases: no events). It runs alone: on SQLite it has the only writer connection; on
    /// PostgreSQL it holds [`WRITE_LOCK`] until it commits or rolls back, so its checks still
    /// hold at commit, as on SQLite.
    pub(crate) async fn begin_write(&self) -> Result<Tx, sqlx::Error> {
        match self.backend {
            Backend::Sqlite => self.writer.begin_with("BEGIN IMMEDIATE").await,
            Backend::Postgres => self.writer.begin_with(WRITE_LOCK).await,
        }
    }

    /// Runs `change` in a write transaction, appends its events, commits, and returns what
    /// it returned with its last event's id, once committed. It sees every write committed
    /// before it, and its checks (a free name, a current version, an unused category) still
    /// hold at commit.
    ///
    /// The transaction is shared with the writes queued beside this one (see [`writer`]): on
    /// SQLite `change` must fail only in ways [`WriteError::changed_nothing`] tells apart; on
    /// PostgreSQL it runs in a savepoint, and any failure undoes it alone.
    ///
    /// The batch runs on the queue's task to its commit or rollback, whatever becomes of the
    /// caller: a write dropped while its batch waits for [`WRITE_LOCK`] (its client gone)
    /// cannot leave PostgreSQL a transaction that takes the lock later and holds it, idle,
    /// stopping every instance's writes.
    pub(crate) async fn write<T, E>(&self, change: Change<T, E>) -> Result<(T, i64), E>
    where
        T: Send + 'static,
        E: WriteError,
    {
        self.writes.write(change).await
    }

    /// SQLite: what the write queue commits, batch by batch in commit order, for the one
    /// tailer of this database's bus; `None` on PostgreSQL (other instances write: the log
    /// is read) and once taken.
    pub(crate) fn take_commits(&self) -> Option<mpsc::Receiver<Commit>> {
        self.writes.take_commits()
    }

    /// Begins a read-only transaction whose statements all see one snapshot (SQLite's
    /// deferred transaction does this; PostgreSQL's default, `READ COMMITTED`, would give
    /// each statement a newer one, and a list's cursor could then run ahead of its rows).
    pub(crate) async fn begin_read(&self) -> Result<Tx, sqlx::Error> {
        match self.backend {
            Backend::Sqlite => self.reader.begin().await,
            Backend::Postgres => {
                self.reader
                    .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                    .await
            }
        }
    }

    /// SQLite: copies the WAL into the database file `after` a write (the bus's head moving),
    /// off the writers' path: a `PASSIVE` checkpoint waits for no reader and no writer, and
    /// its fsync blocks only the connection running it. An idle store is not checkpointed (no
    /// wake-ups). Runs until aborted at shutdown; closing the last connection checkpoints
    /// what is left.
    ///
    /// A trickle of writes (fewer than `batch` events since the last checkpoint) waits until
    /// `batch` have come or none has for `quiet`: the first commit after a checkpoint starts
    /// the WAL again and syncs its header, so a checkpoint after every write of a trickle puts
    /// a fsync into every commit.
    pub(crate) async fn run_checkpoints(
        self,
        after: Duration,
        quiet: Duration,
        batch: i64,
        mut writes: watch::Receiver<i64>,
    ) {
        let mut checkpointed = *writes.borrow_and_update();
        while writes.changed().await.is_ok() {
            tokio::time::sleep(after).await;
            while *writes.borrow_and_update() - checkpointed < batch {
                match tokio::time::timeout(quiet, writes.changed()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return,
                    Err(_) => break,
                }
            }
            checkpointed = *writes.borrow();
            let result = async {
                let mut conn = self.reader.acquire().await?;
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)").await
            }
            .await;
            if let Err(err) = result {
                tracing::warn!(error = %err, "checkpointing the WAL failed; retrying");
            }
        }
    }

    /// Checks that the database answers (for `/health/ready`).
    pub(crate) async fn ping(&self) -> Result<(), sqlx::Error> {
        let mut conn: PoolConnection<sqlx::Any> = self.reader.acquire().await?;
        conn.execute("SELECT 1").await?;
        Ok(())
    }

    pub(crate) async fn close(&self) {
        self.writes.close().await;
        self.writer.close().await;
        self.reader.close().await;
    }
}

/// A database URL as it may be shown: without its password.
pub(crate) fn redacted(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_owned(),
    }
}

/// The file path of a `sqlite:` URL, if it names a file.
fn sqlite_path(url: &str) -> Option<&Path> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next()?;
    (!path.is_empty() && path != ":memory:").then(|| Path::new(path))
}

/// Is this error the violation of a unique index? (A race the pre-check lost: answer 409.)
pub(crate) fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.is_unique_violation())
}

/// Builds `$n` placeholders in order (sqlx's `QueryBuilder` for `Any` writes `?`, which
/// PostgreSQL does not take).
#[derive(Default)]
pub(crate) struct Placeholders(usize);

impl Placeholders {
    pub(crate) fn next(&mut self) -> String {
        self.0 += 1;
        format!("${}", self.0)
    }
}

/// Was the bundled SQLite built with the query planner stability guarantee
/// (`.cargo/config.toml`)? Without it SQLite 3.51 plans a statement again whenever a bound
/// value its planner looked at (a `LIMIT`, `OFFSET` or `LIKE` pattern) is bound again, which
/// sqlx does on every execution, so the statement cache does not save the planning.
async fn sqlite_plans_are_stable(pool: &AnyPool) -> Result<bool, sqlx::Error> {
    let found: Option<i64> = sqlx::query_scalar(
        "SELECT 1 FROM pragma_compile_options WHERE compile_options = 'ENABLE_QPSG'",
    )
    .fetch_optional(pool)
    .await?;
    Ok(found.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sqlite_is_built_with_stable_plans() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::connect(&format!("sqlite://{}/p.db?mode=rwc", dir.path().display()))
            .await
            .unwrap();
        assert!(sqlite_plans_are_stable(&db.reader).await.unwrap());
    }
}
