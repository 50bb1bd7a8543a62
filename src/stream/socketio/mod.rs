//! `/socket.io/`: Engine.IO v4 and Socket.IO v5, written here on poem because a tower-based
//! server cannot receive poem's WebSocket upgrades (`docs/socketio.md`). [`engine`] answers
//! the HTTP requests and hands each to its session; [`session`] is one task per session
//! (upgrade, heartbeat, namespaces, writes with acks) over its [`transport`]; [`namespace`] says what
//! each namespace carries and how a CONNECT starts or recovers; [`packet`] is the text
//! framing of both protocols.
//!
//! Each joined namespace is one [`Subscription`](crate::events::Subscription): the same order,
//! cursors, reset and cut-off rules as SSE, long-poll and `/ws`, and its cursor is Socket.IO's
//! recovery offset. Writes are `/ws`'s, through the same service and authorisation.

mod engine;
mod namespace;
mod packet;
mod session;
mod transport;
mod writes;

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
