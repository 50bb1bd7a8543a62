//! `/ws`: the change stream and the store's writes over one WebSocket (DESIGN §3).

use poem::{IntoResponse, handler, http::StatusCode, web::Data};

use super::AppState;

/// Upgrades to the WebSocket protocol.
#[handler]
pub async fn handler(_state: Data<&AppState>) -> impl IntoResponse {
    StatusCode::NOT_IMPLEMENTED
}
