//! On PostgreSQL, how an instance learns of events committed by any instance: it `LISTEN`s
//! on the channel every append notifies ([`db::events::NOTIFY_CHANNEL`]) and wakes the
//! tail's tailer on each notification. The events table stays the truth; a notification only
//! says "look now", so its payload is not even read.
//!
//! A wake-up can be lost (the listener's connection drops, PostgreSQL restarts, the
//! notification queue overflows); an event cannot, because the tailer reads "every event
//! after my head" from the table whenever it wakes. So: every time the listener (re)starts
//! listening, it wakes the tail once to catch up on whatever committed while it was not
//! listening, and the tailer also polls on a timer as a last safety net (see `startup.rs`).

use std::{convert::Infallible, sync::Arc, time::Duration};

use sqlx::postgres::PgListener;

use super::Tail;
use crate::db;

/// First and longest wait before reconnecting after the listener failed.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Listens until the tail closes, reconnecting with backoff whenever the connection fails.
pub(crate) async fn run(tail: Arc<Tail>) {
    let url = tail.db().url.clone();
    let mut backoff = MIN_BACKOFF;
    loop {
        let err = tokio::select! {
            result = listen(&tail, &url, &mut backoff) => {
                let Err(err) = result;
                err
            }
            () = tail.closing().cancelled() => return,
        };
        tracing::warn!(
            error = %err,
            retry_in = ?backoff,
            "listening for new events failed; reconnecting"
        );
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = tail.closing().cancelled() => return,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One listening connection: returns only with the error that ended it.
async fn listen(tail: &Tail, url: &str, backoff: &mut Duration) -> Result<Infallible, sqlx::Error> {
    let mut listener = PgListener::connect(url).await?;
    listener.listen(db::events::NOTIFY_CHANNEL).await?;
    // Listening from here on. Whatever committed before is in the table: catch up once.
    tail.wake();
    *backoff = MIN_BACKOFF;
    tracing::debug!(
        channel = db::events::NOTIFY_CHANNEL,
        "listening for new events"
    );
    loop {
        match listener.try_recv().await? {
            Some(_notification) => tail.wake(),
            // The connection dropped and sqlx opened a new one and listens again: events
            // that committed in between sent their notification to nobody. Catch up.
            None => {
                tracing::warn!("listener connection lost and re-established; catching up");
                tail.wake();
            }
        }
    }
}
