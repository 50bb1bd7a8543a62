//! `/socket.io/`: the change stream for the course project's Socket.IO clients. Engine.IO v4
//! ([`engine`]: HTTP long-polling, WebSocket, the upgrade from one to the other, heartbeats)
//! and Socket.IO v5 ([`namespace`]: namespaces, events), written here on poem because a
//! tower-based server cannot receive poem's WebSocket upgrades (`docs/socketio.md`); the text
//! framing of both is [`packet`]'s.
//!
//! Namespaces `/ws/v1/funkos` and `/ws/v1/categories` each drive one
//! [`Subscription`](crate::events::Subscription) filtered on their entity: the same order,
//! cursors, reset and cut-off rules as SSE, long-poll and `/ws`.

mod engine;
mod namespace;
mod packet;

use std::sync::Arc;

use poem::{Endpoint, Request, Response};
use poem_openapi::OperationId;

/// Largest body a client may POST, and largest WebSocket message; announced in the handshake.
pub(crate) const MAX_PAYLOAD: usize = 1_000_000;

/// The `/socket.io/` endpoint; mount it with `Route::nest("/socket.io", ...)`. It owns the
/// open Engine.IO sessions; every session ends when the change bus closes (shutdown).
pub(crate) struct SocketIo {
    engine: Arc<engine::Engine>,
}

pub(crate) fn endpoint() -> SocketIo {
    SocketIo {
        engine: Arc::default(),
    }
}

impl Endpoint for SocketIo {
    type Output = Response;

    async fn call(&self, req: Request) -> poem::Result<Response> {
        // The route label of the request metrics.
        let route = OperationId("socketio");
        match self.engine.handle(req).await {
            Ok(mut response) => {
                response.set_data(route);
                Ok(response)
            }
            Err(mut err) => {
                err.set_data(route);
                Err(err)
            }
        }
    }
}
