//! `/health/live` and `/health/ready`.

use poem::{handler, web::Data};
use poem_openapi::{ApiResponse, OpenApi, payload::PlainText};

use super::{ApiTags, AppState};
use crate::metrics::{METRICS, PoolLabel};

pub(crate) struct HealthApi;

#[derive(ApiResponse)]
pub enum ReadyResponse {
    /// The database answers.
    #[oai(status = 200)]
    Ready(PlainText<String>),
    /// The database does not answer, or the server is shutting down.
    #[oai(status = 503)]
    NotReady(PlainText<String>),
}

#[OpenApi(tag = "ApiTags::Health")]
impl HealthApi {
    /// Liveness: the process answers.
    #[oai(path = "/health/live", method = "get", operation_id = "live")]
    async fn live(&self) -> PlainText<&'static str> {
        PlainText("ok")
    }

    /// Readiness: the database answers and the server is not shutting down.
    #[oai(path = "/health/ready", method = "get", operation_id = "ready")]
    async fn ready(&self, state: Data<&AppState>) -> ReadyResponse {
        if state.tail.closing().is_cancelled() {
            return ReadyResponse::NotReady(PlainText("shutting down".to_owned()));
        }
        match state.store.ping().await {
            Ok(()) => ReadyResponse::Ready(PlainText("ready".to_owned())),
            Err(err) => ReadyResponse::NotReady(PlainText(format!("database: {err}"))),
        }
    }
}

/// `GET /metrics`: Prometheus text. The pools are sampled at each scrape.
#[handler]
pub(crate) fn metrics(state: Data<&AppState>) -> poem::Response {
    let db = state.store.db();
    let pools = [("writer", &db.writer), ("reader", &db.reader)];
    for (pool, handle) in pools {
        let size = i64::from(handle.size());
        let idle = handle.num_idle() as i64;
        let gauge = |state| {
            METRICS
                .db_connections
                .get_or_create(&PoolLabel { pool, state })
        };
        gauge("idle").set(idle);
        gauge("in_use").set(size - idle);
    }
    poem::Response::builder()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(METRICS.render())
}
