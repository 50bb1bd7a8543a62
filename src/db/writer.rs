//! Group commit for SQLite: the writes waiting at a moment run one after another in ONE
//! transaction on the single writer connection, so a burst of writes pays one `BEGIN`, one
//! `COMMIT` (one WAL append) and no wait for the connection between them.
//!
//! Every statement is a round trip to sqlx's worker thread of that connection; on a busy core
//! each round trip waits to be scheduled. Sharing the transaction removes two of them per
//! write, and the queue keeps the connection busy instead of handing it from request to request.
//!
//! # What a write may do, and what its neighbours see
//! The writes of a batch run one at a time, in arrival order, each seeing the ones before
//! it, exactly as if each had its own transaction on the single writer (they did before).
//! A write that refuses (see [`WriteError::changed_nothing`]) must leave the transaction as it
//! found it: it refused before changing a row, or its one changing statement failed and SQLite
//! undid that statement alone (a constraint violation aborts the statement, not the
//! transaction). Any other failure may have left half a write behind, so the whole batch rolls
//! back and every write in it fails with [`WriteError::batch_failed`]: nothing is committed,
//! no event exists.
//!
//! No write of a batch is answered before the batch's `COMMIT` returns, refusals included
//! (a 409 may rest on a row an earlier write of the batch staged): if the commit fails,
//! every write of the batch fails, and the caller announces nothing.

use std::{panic::AssertUnwindSafe, sync::Mutex};

use futures_util::{FutureExt, future::BoxFuture};
use sqlx::{AnyConnection, AnyPool};
use tokio::{
    sync::{mpsc, oneshot},
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;

/// What a write can fail with, as the queue needs to know it.
pub trait WriteError: From<sqlx::Error> + Send + 'static {
    /// Whether the write refused and left the transaction as it found it; if not, its
    /// batch is rolled back.
    fn changed_nothing(&self) -> bool;
    /// The error of a write whose batch was not committed (its `BEGIN` or `COMMIT` failed, or
    /// another write of the batch failed): nothing it did was kept, and it may be retried.
    fn batch_failed() -> Self;
}

/// A write: the changes it makes through the connection of its batch's transaction.
pub type Change<T, E> =
    Box<dyn for<'c> FnOnce(&'c mut AnyConnection) -> BoxFuture<'c, Result<T, E>> + Send>;

/// A write with its result type erased, so writes of every type share the queue. Dropping a
/// job unrun drops its reply channel: its caller gets [`WriteError::batch_failed`].
type Job = Box<dyn for<'c> FnOnce(&'c mut AnyConnection) -> BoxFuture<'c, Ran> + Send>;

/// Answers a write that ran: its own result if the batch committed (`true`), else the
/// batch's failure.
type Answer = Box<dyn FnOnce(bool) + Send>;

/// A write that ran in its batch's transaction.
struct Ran {
    /// It failed in a way that may have left part of it behind: the batch must roll back.
    breaks_batch: bool,
    answer: Answer,
}

/// Most writes in one transaction: bounds how long the first of them waits for its answer.
const MAX_BATCH: usize = 128;
/// Writes that may wait for the writer before callers wait to enqueue (backpressure).
const QUEUE: usize = 1024;

/// The queue of SQLite writes and the task that commits them in batches.
#[derive(Debug)]
pub struct WriteQueue {
    /// Writes waiting for the batch task; bounded by [`QUEUE`].
    jobs: mpsc::Sender<Job>,
    /// Stops the batch task (after the batch it is running) at [`WriteQueue::close`].
    closing: CancellationToken,
    /// The batch task, owned here and awaited at close.
    task: Mutex<Option<JoinHandle<()>>>,
}

impl WriteQueue {
    /// Starts the batch task on `writer`, a pool of exactly one connection (the transaction
    /// of a batch takes it, so other users of the pool wait between batches).
    pub fn start(writer: AnyPool) -> Self {
        let (jobs, queue) = mpsc::channel(QUEUE);
        let closing = CancellationToken::new();
        let task = tokio::spawn(run(writer, queue, closing.clone()));
        Self {
            jobs,
            closing,
            task: Mutex::new(Some(task)),
        }
    }

    /// Runs `change` in the next batch and answers after that batch committed (or failed).
    pub async fn write<T, E>(&self, change: Change<T, E>) -> Result<T, E>
    where
        T: Send + 'static,
        E: WriteError,
    {
        let (reply, answer) = oneshot::channel::<Result<T, E>>();
        let job: Job = Box::new(move |conn| {
            Box::pin(async move {
                let result = change(conn).await;
                let breaks_batch = result.as_ref().is_err_and(|err| !err.changed_nothing());
                Ran {
                    breaks_batch,
                    answer: Box::new(move |committed| {
                        // The write that broke its batch answers its own error; the others
                        // of a failed batch, the batch's failure. The caller may have gone
                        // (client disconnected): nothing to tell then.
                        let _ = reply.send(if committed || breaks_batch {
                            result
                        } else {
                            Err(E::batch_failed())
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
    pub async fn close(&self) {
        self.closing.cancel();
        let task = self.task.lock().expect("not poisoned").take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

/// The batch task: takes every write waiting (up to [`MAX_BATCH`]), runs them in one
/// transaction, commits, then answers them all.
async fn run(writer: AnyPool, mut queue: mpsc::Receiver<Job>, closing: CancellationToken) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
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
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let answers = run_batch(&writer, batch.drain(..)).await;
        let committed = answers.is_ok();
        for answer in answers.unwrap_or_else(|answers| answers) {
            answer(committed);
        }
    }
}

/// Runs one batch: `Ok` with the answers when it committed, `Err` with them when it did not.
/// Jobs left unrun (the `BEGIN` failed, or an earlier job broke the batch) are dropped with
/// `jobs`, which answers them as failed.
async fn run_batch(
    writer: &AnyPool,
    mut jobs: impl ExactSizeIterator<Item = Job>,
) -> Result<Vec<Answer>, Vec<Answer>> {
    let mut answers = Vec::with_capacity(jobs.len());
    let mut tx = match writer.begin().await {
        Ok(tx) => tx,
        Err(err) => {
            tracing::error!(error = %err, "could not begin a write transaction");
            return Err(answers);
        }
    };
    let mut broken = false;
    for job in jobs.by_ref() {
        // A panicking write must not end the task that every other write depends on (its
        // reply channel is dropped while unwinding: its caller gets a failure).
        match AssertUnwindSafe(job(&mut tx)).catch_unwind().await {
            Ok(ran) => {
                answers.push(ran.answer);
                if ran.breaks_batch {
                    broken = true;
                    break;
                }
            }
            Err(_) => {
                tracing::error!("a write panicked inside its batch");
                broken = true;
                break;
            }
        }
    }
    drop(jobs);
    if broken {
        tracing::error!(
            writes = answers.len(),
            "a write failed midway: rolling back its batch"
        );
        if let Err(err) = tx.rollback().await {
            tracing::error!(error = %err, "rolling back a failed batch");
        }
        return Err(answers);
    }
    match tx.commit().await {
        Ok(()) => Ok(answers),
        Err(err) => {
            tracing::error!(error = %err, writes = answers.len(), "a batch's commit failed");
            Err(answers)
        }
    }
}
