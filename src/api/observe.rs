//! One span per request (method, path), an `answered` event (route, status, latency) at
//! debug level, and the request metrics. The route is the operation id of the matched API
//! operation, so labels stay few.

use std::time::Instant;

use poem::{Endpoint, IntoResponse, Middleware, Request, Response, Result};
use poem_openapi::OperationId;
use tracing::Instrument;

use crate::metrics::{METRICS, RequestLabel, method_label};

pub(crate) struct Observe;

impl<E: Endpoint> Middleware<E> for Observe {
    type Output = ObserveEndpoint<E>;

    fn transform(&self, ep: E) -> Self::Output {
        ObserveEndpoint(ep)
    }
}

pub(crate) struct ObserveEndpoint<E>(E);

impl<E: Endpoint> Endpoint for ObserveEndpoint<E> {
    type Output = Response;

    async fn call(&self, req: Request) -> Result<Self::Output> {
        let method = method_label(req.method());
        // Route, status and latency go on the `answered` event, not into the span: recording
        // a field re-formats the span's fields (the fmt layer), a cost every request would pay
        // for events that at the default level follow no record anyway.
        let span = tracing::info_span!("request", method = %method, path = %req.uri().path());
        let started = Instant::now();
        async move {
            let result = self.0.call(req).await;
            let (response, route) = match result {
                Ok(output) => {
                    let response = output.into_response();
                    let route = response.data::<OperationId>().map(|id| id.0);
                    (response, route)
                }
                Err(err) => {
                    let route = err.data::<OperationId>().map(|id| id.0);
                    (crate::error::render_any_error(err), route)
                }
            };
            let elapsed = started.elapsed();
            let status = response.status().as_u16();
            let route = route.unwrap_or("other");
            tracing::debug!(
                route,
                status,
                latency_ms = elapsed.as_secs_f64() * 1000.0,
                "answered"
            );
            let label = RequestLabel {
                method,
                route,
                status,
            };
            METRICS.requests.get_or_create(&label).inc();
            METRICS
                .request_seconds
                .get_or_create(&label)
                .observe(elapsed.as_secs_f64());
            Ok(response)
        }
        .instrument(span)
        .await
    }
}
