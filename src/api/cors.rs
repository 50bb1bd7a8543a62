//! CORS for the origins of `CORS_ORIGINS`: a browser page on one of them may call the API
//! and read its answers, headers included (`Stream-Cursor`, `ETag`, `Location`: the "read,
//! then subscribe from the cursor" rule needs them).
//!
//! Written here rather than taken from `poem::middleware::Cors`, which refuses (403) every
//! request whose `Origin` is not listed: reads and streams from other sites, and this
//! server's own pages too (browsers send `Origin` on every POST and every WebSocket), so a
//! live page on `/ws` broke as soon as any origin was listed. Here CORS only grants browsers
//! permission to read answers; it refuses nothing but a preflight from an unlisted origin.
//! Who may write is decided on every write, CORS or not (`crate::auth`).

use std::sync::Arc;

use poem::{
    Endpoint, IntoResponse, Middleware, Request, Response, Result,
    http::{HeaderValue, Method, StatusCode, header},
};

use crate::error::ProblemBody;

/// The methods a listed origin may use.
const METHODS: &str = "GET, HEAD, POST, PUT, PATCH, DELETE";
/// The response headers a page may read besides the safelisted ones.
const EXPOSED: &str = "Stream-Cursor, ETag, Location, Retry-After, WWW-Authenticate, \
                       Stream-Next-Offset, Stream-Up-To-Date";
/// How long a browser may cache a preflight's answer, in seconds.
const MAX_AGE: &str = "600";

/// The CORS middleware; see the module docs.
#[derive(Clone, Debug)]
pub(crate) struct Cors {
    origins: Arc<Vec<HeaderValue>>,
}

impl Cors {
    pub(crate) fn new(origins: &[String]) -> Self {
        Self {
            origins: Arc::new(
                origins
                    .iter()
                    .filter_map(|o| HeaderValue::from_str(o.trim()).ok())
                    .collect(),
            ),
        }
    }
}

impl<E: Endpoint> Middleware<E> for Cors {
    type Output = CorsEndpoint<E>;

    fn transform(&self, inner: E) -> Self::Output {
        CorsEndpoint {
            inner,
            origins: self.origins.clone(),
        }
    }
}

pub(crate) struct CorsEndpoint<E> {
    inner: E,
    origins: Arc<Vec<HeaderValue>>,
}

impl<E: Endpoint> Endpoint for CorsEndpoint<E> {
    type Output = Response;

    async fn call(&self, request: Request) -> Result<Response> {
        let Some(origin) = request.headers().get(header::ORIGIN).cloned() else {
            return self
                .inner
                .call(request)
                .await
                .map(IntoResponse::into_response);
        };
        let listed = self.origins.contains(&origin);
        let preflight = request.method() == Method::OPTIONS
            && request
                .headers()
                .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
        if preflight {
            if !listed {
                let detail = format!(
                    "the origin {} is not allowed to call this API from a browser: list it in \
                     CORS_ORIGINS",
                    String::from_utf8_lossy(origin.as_bytes())
                );
                return Ok(ProblemBody::new(StatusCode::FORBIDDEN, detail, None).into_response());
            }
            let mut response = Response::builder()
                .status(StatusCode::NO_CONTENT)
                .header(header::ACCESS_CONTROL_ALLOW_METHODS, METHODS)
                .header(header::ACCESS_CONTROL_MAX_AGE, MAX_AGE)
                .finish();
            if let Some(asked) = request
                .headers()
                .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
            {
                response
                    .headers_mut()
                    .insert(header::ACCESS_CONTROL_ALLOW_HEADERS, asked.clone());
            }
            return Ok(allowed(response, origin));
        }
        let mut response = self.inner.get_response(request).await;
        if listed {
            response.headers_mut().insert(
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
                HeaderValue::from_static(EXPOSED),
            );
            return Ok(allowed(response, origin));
        }
        Ok(varies(response))
    }
}

/// An answer a page on `origin` may read.
fn allowed(mut response: Response, origin: HeaderValue) -> Response {
    response
        .headers_mut()
        .insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    varies(response)
}

/// The answer differs by origin: caches must keep the answers apart.
fn varies(mut response: Response) -> Response {
    response
        .headers_mut()
        .append(header::VARY, HeaderValue::from_static("Origin"));
    response
}
