//! `/ws`: the change stream and the store's writes over one WebSocket, for clients that also
//! talk back. A thin translator: the stream comes from one
//! [`Subscription`](crate::events::Subscription) (replay, filters, resets and the
//! slow-consumer bound all live in `events/`), and every write goes through the router REST's
//! twins share ([`crate::service::writes`]), so answers carry REST's very status and problem
//! body. The frames are [`protocol`]'s; `openapi/asyncapi.yaml` documents them for client
//! authors, and the README summarises them.
//!
//! `GET /ws?after=<cursor>&entity=&types=` subscribes at connect, like a first `subscribe`; a
//! malformed cursor or filter answers 400 before upgrading (503 past the stream limits). The
//! server speaks the subprotocol `funko-live`. Writes follow REST's rule, with the token of the
//! upgrade (`Authorization: Bearer <t>`, or a `bearer.<t>` subprotocol entry for browsers) and
//! its origin and host. The server closes with a code and, as the reason,
//! `{"reason":…,"cursor":"<c>"}`: a client reconnects with `?after=<c>` and misses nothing.

pub(crate) mod protocol;
mod session;

use poem::{
    IntoResponse, Request, Response, handler,
    web::{Data, websocket::WebSocket},
};

use crate::{
    api::AppState,
    auth::Credentials,
    error::ApiError,
    events::{Filter, Start, Subscription},
    http::fanout::WsWriter,
    limits::client_ip,
    metrics::Transport,
    stream::{socket::socket_config, start_from_text, view_from_text},
};

/// The largest frame, and the largest message, a client may send; larger ones close the
/// socket with 1009.
pub(crate) const MAX_FRAME_BYTES: usize = 64 * 1024;
/// The subprotocol the server selects when a client offers it.
pub(crate) const SUBPROTOCOL: &str = "funko-live";
/// Writes one socket may have in flight; past this its frames are not read until one ends.
pub(crate) const MAX_WRITES_IN_FLIGHT: usize = 16;

/// Upgrades to the WebSocket protocol, subscribed as the query asks.
#[handler]
pub(crate) async fn handler(
    request: &Request,
    ws: poem::Result<WebSocket>,
    state: Data<&AppState>,
) -> Response {
    match upgrade(request, ws, state.0).await {
        Ok(response) => response,
        Err(err) => err.into_poem_response(),
    }
}

async fn upgrade(
    request: &Request,
    ws: poem::Result<WebSocket>,
    state: &AppState,
) -> Result<Response, ApiError> {
    let (start, filter) = connect_params(request.uri().query().unwrap_or(""))?;
    let ws = ws.map_err(|_| {
        ApiError::bad_request(
            "/ws speaks WebSocket: send a GET with `Upgrade: websocket` (RFC 6455)",
        )
    })?;
    let credentials = Credentials::of(request.headers());
    let slot = state.slots.acquire(Transport::Ws, client_ip(request))?;
    let (subscription, reset) = Subscription::open(state.tail.clone(), start, filter).await?;
    let head = match (start, &reset) {
        // Exactly where this subscription begins, so nothing falls between welcome and it.
        (Start::Now, _) | (_, Some(_)) => subscription.cursor(),
        (Start::After(_), None) => subscription.committed(),
    };
    let session = session::Session {
        state: state.clone(),
        credentials,
        feed: session::Feed::Replay(subscription),
        writer: WsWriter::for_request(&state.hub, request),
        _slot: slot,
    };
    // Shutdown waits (within the grace period) for the socket's task to send its 1001 close.
    let running = state.tasks.token();
    Ok(ws
        .protocols([SUBPROTOCOL])
        .config(socket_config(MAX_FRAME_BYTES))
        .on_upgrade(move |socket| async move {
            let _running = running;
            session.run(socket, head, reset).await
        })
        .into_response())
}

/// `after`, `entity`, `types` (repeatable, comma-separated) and the view filters (`category`,
/// `q`, `minPrice`, `maxPrice`) of the upgrade request.
fn connect_params(query: &str) -> Result<(Start, Filter), ApiError> {
    let mut after = None;
    let mut entity = None;
    let mut types = Vec::new();
    let mut view = Vec::new();
    for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
        match &*key {
            "after" => after = Some(value.into_owned()),
            "entity" => entity = Some(value.into_owned()),
            "types" => types.push(value.into_owned()),
            "category" | "q" | "minPrice" | "maxPrice" => {
                view.push((key.into_owned(), value.into_owned()));
            }
            _ => {}
        }
    }
    let start = start_from_text("after", after.as_deref())?;
    let view = view_from_text(|name| {
        view.iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.clone())
    })?;
    let filter =
        Filter::parse(entity.as_deref(), types.iter().map(String::as_str))?.with_view(view)?;
    Ok((start, filter))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn connect_params_parse_like_the_other_transports() {
        assert_eq!(
            connect_params("after=5&entity=funkos&types=CREATE&types=delete").unwrap(),
            (
                Start::After(5),
                Filter::parse(Some("FUNKOS"), ["CREATE", "DELETE"]).unwrap()
            )
        );
        assert_eq!(connect_params("").unwrap(), (Start::Now, Filter::default()));
        for bad in ["after=x", "after=-1", "entity=USERS", "types=UPSERT"] {
            assert_eq!(connect_params(bad).unwrap_err().status().as_u16(), 400);
        }
    }

    proptest! {
        #[test]
        fn any_query_string_parses_or_is_a_400(query in any::<String>()) {
            if let Err(err) = connect_params(&query) {
                prop_assert_eq!(err.status().as_u16(), 400);
            }
        }
    }
}
