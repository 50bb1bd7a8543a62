//! `/health/live` and `/health/ready`.

use poem::web::Data;
use poem_openapi::{ApiResponse, OpenApi, payload::PlainText};

use super::{ApiTags, AppState};

pub struct HealthApi;

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
    #[oai(path = "/health/live", method = "get")]
    async fn live(&self) -> PlainText<&'static str> {
        PlainText("ok")
    }

    /// Readiness: the database answers and the server is not shutting down.
    #[oai(path = "/health/ready", method = "get")]
    async fn ready(&self, state: Data<&AppState>) -> ReadyResponse {
        if state.bus.closing().is_cancelled() {
            return ReadyResponse::NotReady(PlainText("shutting down".to_owned()));
        }
        match state.bus.db().ping().await {
            Ok(()) => ReadyResponse::Ready(PlainText("ready".to_owned())),
            Err(err) => ReadyResponse::NotReady(PlainText(format!("database: {err}"))),
        }
    }
}
