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
        match db::events::prune(bus.db(), retention.max_age.as_secs(), retention.max_events).await {
            Ok(0) => {}
            Ok(pruned) => tracing::info!(pruned, "pruned old events"),
            Err(err) => tracing::warn!(error = %err, "pruning events failed"),
        }
    }
}
