//! Background pruning of the event log by age and count.

use std::{sync::Arc, time::Duration};

use super::Tail;
use crate::db;

/// How long events are kept.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Retention {
    pub max_age: Duration,
    pub max_events: u64,
    pub every: Duration,
}

/// Prunes every `retention.every` until the tail closes.
pub(crate) async fn run(tail: Arc<Tail>, retention: Retention) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(retention.every) => {}
            () = tail.closing().cancelled() => return,
        }
        match prune_once(&tail, retention.max_age, retention.max_events).await {
            Ok(0) => {}
            Ok(pruned) => tracing::info!(pruned, "pruned old events"),
            Err(err) => tracing::warn!(error = %err, "pruning events failed"),
        }
    }
}

/// Deletes events older than `max_age` or beyond the newest `max_events`, and tells the tail
/// where the log now starts. Returns how many were deleted.
pub(crate) async fn prune_once(
    tail: &Tail,
    max_age: Duration,
    max_events: u64,
) -> Result<u64, sqlx::Error> {
    let pruned = db::events::prune(tail.db(), max_age.as_secs(), max_events).await?;
    if pruned > 0 {
        let mut conn = tail.db().reader.acquire().await?;
        let (floor, _) = db::events::bounds(&mut conn).await?;
        tail.pruned_to(floor);
    }
    Ok(pruned)
}
