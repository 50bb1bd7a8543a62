//! Background pruning of the event log by age and count (DESIGN §3 "Retention").

use std::{sync::Arc, time::Duration};

use super::ChangeBus;
use crate::db;

/// How long events are kept.
#[derive(Clone, Copy, Debug)]
pub struct Retention {
    pub max_age: Duration,
    pub max_events: u64,
    pub every: Duration,
}

/// Prunes every `retention.every` until the bus closes.
pub async fn run(bus: Arc<ChangeBus>, retention: Retention) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(retention.every) => {}
            () = bus.closing().cancelled() => return,
        }
        match prune_once(&bus, retention.max_age, retention.max_events).await {
            Ok(0) => {}
            Ok(pruned) => tracing::info!(pruned, "pruned old events"),
            Err(err) => tracing::warn!(error = %err, "pruning events failed"),
        }
    }
}

/// Deletes events older than `max_age` or beyond the newest `max_events`, and tells the bus
/// where the log now starts. Returns how many were deleted.
pub async fn prune_once(
    bus: &ChangeBus,
    max_age: Duration,
    max_events: u64,
) -> Result<u64, sqlx::Error> {
    let pruned = db::events::prune(bus.db(), max_age.as_secs(), max_events).await?;
    if pruned > 0 {
        let mut conn = bus.db().reader.acquire().await?;
        let (floor, _) = db::events::bounds(&mut conn).await?;
        bus.pruned_to(floor);
    }
    Ok(pruned)
}
