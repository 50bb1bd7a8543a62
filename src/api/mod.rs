//! The REST surface: one `#[OpenApi]` impl per resource (Funkos, categories, images, health)
//! and the live page, the middleware around every route (CORS, `Allow` on 405, one span and
//! the metrics per request), and what handlers share: [`AppState`], the write-auth extractor,
//! the JSON body and the pre-rendered JSON payload. Handlers parse, call one service function,
//! and map the result to a typed response enum.

pub(crate) mod allow;
pub(crate) mod categories;
pub(crate) mod cors;
pub(crate) mod funkos;
pub(crate) mod health;
pub(crate) mod images;
pub(crate) mod observe;
pub(crate) mod page;

use std::sync::Arc;

use poem::{Request, RequestBody};
use poem_openapi::{
    ApiExtractor, ApiExtractorType, ExtractParamOptions, Tags,
    payload::{ParsePayload, Payload},
    registry::{MetaSchema, MetaSchemaRef, Registry},
    types::Type,
};
use serde_json::Value;

use crate::{
    auth::{Caller, WriteAuth, WritePolicy},
    domain::{
        Shape,
        precondition::{IF_MATCH_PATTERN, IfMatch},
    },
    error::ApiError,
    events::Tail,
    http::fanout::Hub,
    limits::StreamSlots,
    service::Store,
};

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// The store's operations.
    pub(crate) store: Arc<Store>,
    /// The log's tail, for the streams.
    pub(crate) tail: Arc<Tail>,
    /// Writes live events to SSE subscribers' sockets.
    pub(crate) hub: Arc<Hub>,
    pub(crate) settings: Arc<Settings>,
    /// Who may write.
    pub(crate) policy: Arc<WritePolicy>,
    /// Places for open streams.
    pub(crate) slots: StreamSlots,
    /// Tasks that outlive their request, awaited at shutdown: upgraded sockets (poem does not
    /// track them) and writes whose client hung up ([`AppState::run_to_end`]).
    pub(crate) tasks: tokio_util::task::TaskTracker,
}

impl AppState {
    /// Runs `work` to its end even if the request that asked for it is dropped (its client
    /// hung up): for a write whose follow-up (removing the image it replaced) must not be
    /// skipped once it has committed.
    pub(crate) async fn run_to_end<T: Send + 'static>(
        &self,
        work: impl Future<Output = Result<T, ApiError>> + Send + 'static,
    ) -> Result<T, ApiError> {
        self.tasks
            .spawn(work)
            .await
            .map_err(|err| ApiError::Internal(err.into()))?
    }

    /// Runs one retention pass now, keeping the newest `keep` events; returns how many it
    /// removed. The pruner does the same on its schedule.
    pub async fn prune_now(&self, keep: u64) -> anyhow::Result<u64> {
        Ok(
            crate::events::retention::prune_once(&self.tail, std::time::Duration::ZERO, keep)
                .await?,
        )
    }

    /// The log's floor (the cursor below its oldest event), as the database holds it.
    pub async fn log_floor(&self) -> anyhow::Result<i64> {
        self.store.log_floor().await
    }
}

/// Proof that a request may write: [`WritePolicy::check`] passed for its token (when tokens
/// are configured) or its origin and host (when writes are open). An operation that takes
/// one is documented with the bearer scheme and refuses (401/403) before reading its body.
pub(crate) struct WriteAccess(());

impl<'a> ApiExtractor<'a> for WriteAccess {
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::SecurityScheme];

    type ParamType = ();
    type ParamRawType = ();

    fn register(registry: &mut Registry) {
        <WriteAuth as ApiExtractor<'a>>::register(registry);
    }

    fn security_schemes() -> Vec<&'static str> {
        <WriteAuth as ApiExtractor<'a>>::security_schemes()
    }

    fn has_security_fallback() -> bool {
        <WriteAuth as ApiExtractor<'a>>::has_security_fallback()
    }

    async fn from_request(
        request: &'a Request,
        body: &mut RequestBody,
        options: ExtractParamOptions<Self::ParamType>,
    ) -> poem::Result<Self> {
        let auth = WriteAuth::from_request(request, body, options).await?;
        let state = request
            .data::<AppState>()
            .expect("the routes carry the AppState");
        state
            .policy
            .check(auth.token(), &Caller::of(request.headers()))?;
        Ok(Self(()))
    }
}

/// The settings handlers read on each request.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    /// Largest JSON body, in bytes.
    pub max_body_bytes: usize,
    /// Interval of SSE keep-alive comments.
    pub keepalive: std::time::Duration,
    /// How long a stream's write may wait for the client before the stream is cut off.
    pub write_stall: std::time::Duration,
    /// How long a request body may take to arrive whole.
    pub body_timeout: std::time::Duration,
    /// How long a Socket.IO session may take to join a namespace.
    pub connect_timeout: std::time::Duration,
}

#[derive(Tags)]
pub(crate) enum ApiTags {
    /// Funkos: the store's products.
    Funkos,
    /// Categories Funkos belong to.
    Categories,
    /// The change stream: every committed write, in order, by cursor.
    Stream,
    /// Liveness and readiness.
    Health,
}

/// A JSON body rendered beforehand (an event's JSON, rendered once and shared; a cached
/// Funko), documented with `T`'s schema.
pub struct RawJson<T>(bytes::Bytes, std::marker::PhantomData<T>);

impl<T> RawJson<T> {
    pub fn new(json: impl Into<bytes::Bytes>) -> Self {
        Self(json.into(), std::marker::PhantomData)
    }
}

impl<T: Type> Payload for RawJson<T> {
    const CONTENT_TYPE: &'static str = "application/json; charset=utf-8";

    fn schema_ref() -> MetaSchemaRef {
        T::schema_ref()
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}

impl<T: Type> poem::IntoResponse for RawJson<T> {
    fn into_response(self) -> poem::Response {
        poem::Response::builder()
            .content_type(<Self as Payload>::CONTENT_TYPE)
            .body(self.0)
    }
}

/// A JSON request body, read with the configured size limit and checked for syntax here;
/// the resource's rules are checked by the domain, so every field error can be listed.
/// The schema shown in the spec is `T`'s ([`Shape`]), written beside those rules.
pub(crate) struct JsonBody<T>(pub Value, std::marker::PhantomData<T>);

impl<T: Shape + Send> Payload for JsonBody<T> {
    const CONTENT_TYPE: &'static str = "application/json";

    fn check_content_type(content_type: &str) -> bool {
        matches!(content_type.parse::<mime::Mime>(), Ok(mime)
            if mime.type_() == "application"
                && (mime.subtype() == "json" || mime.suffix().is_some_and(|s| s == "json")))
    }

    fn schema_ref() -> MetaSchemaRef {
        MetaSchemaRef::Reference(T::NAME.to_owned())
    }

    /// A stand-in under `T`'s name, which [`openapi_json`] replaces with `T`'s schema.
    fn register(registry: &mut Registry) {
        registry.create_schema::<T, _>(T::NAME.to_owned(), |_| MetaSchema::new("object"));
    }
}

impl<T: Shape + Send> ParsePayload for JsonBody<T> {
    const IS_REQUIRED: bool = true;

    async fn from_request(request: &Request, body: &mut RequestBody) -> poem::Result<Self> {
        let settings = request.data::<AppState>().map(|s| s.settings.clone());
        let limit = settings.as_ref().map_or(1024 * 1024, |s| s.max_body_bytes);
        let timeout = settings.map_or(std::time::Duration::from_secs(60), |s| s.body_timeout);
        check_coding(request)?;
        let declared = request
            .headers()
            .get(poem::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if let Some(len) = declared.filter(|&len| len > limit as u64) {
            // Read what is on its way before answering, up to a bound, so the client gets the
            // answer rather than a reset under a body it is still sending.
            if len <= DRAIN_BYTES {
                let drain = body.take()?.into_bytes_limit(DRAIN_BYTES as usize);
                let _ = tokio::time::timeout(timeout, drain).await;
            }
            return Err(ApiError::PayloadTooLarge { limit }.into());
        }
        let read = body.take()?.into_bytes_limit(limit);
        let bytes = tokio::time::timeout(timeout, read)
            .await
            .map_err(|_| ApiError::body_timed_out(timeout))?
            .map_err(|err| match err {
                poem::error::ReadBodyError::PayloadTooLarge => ApiError::PayloadTooLarge { limit },
                other => ApiError::bad_request(format!("reading the body failed: {other}")),
            })?;
        Ok(Self(parse_json(&bytes)?, std::marker::PhantomData))
    }
}

/// A body declared over the limit but at most this long is read (and dropped) before the 413.
const DRAIN_BYTES: u64 = 8 * 1024 * 1024;

/// 415 for a body in a content coding (`gzip`, say): the server reads bodies as sent.
pub(crate) fn check_coding(request: &Request) -> Result<(), ApiError> {
    match request.headers().get(poem::http::header::CONTENT_ENCODING) {
        Some(coding) if !coding.as_bytes().eq_ignore_ascii_case(b"identity") => {
            Err(ApiError::UnsupportedMediaType(format!(
                "request bodies are read as sent: Content-Encoding {} is not accepted",
                String::from_utf8_lossy(coding.as_bytes())
            )))
        }
        _ => Ok(()),
    }
}

poem_openapi::impl_apirequest_for_payload!(JsonBody<T>, T: Shape + Send);

/// The `If-Match` header as received, documented with [`IF_MATCH_PATTERN`] and read with
/// [`IfMatch::parse`] by the operation, so a bad one answers the same 400 everywhere.
pub(crate) struct IfMatchHeader(pub String);

impl IfMatchHeader {
    pub(crate) fn parse(header: Option<Self>) -> Result<Option<IfMatch>, ApiError> {
        Ok(header.map(|h| IfMatch::parse(&h.0)).transpose()?)
    }
}

impl poem_openapi::types::Type for IfMatchHeader {
    const IS_REQUIRED: bool = true;
    type RawValueType = Self;
    type RawElementValueType = Self;

    fn name() -> std::borrow::Cow<'static, str> {
        "string(if-match)".into()
    }

    fn schema_ref() -> poem_openapi::registry::MetaSchemaRef {
        poem_openapi::registry::MetaSchemaRef::Inline(Box::new(
            poem_openapi::registry::MetaSchema {
                pattern: Some(IF_MATCH_PATTERN.to_owned()),
                ..poem_openapi::registry::MetaSchema::new("string")
            },
        ))
    }

    fn as_raw_value(&self) -> Option<&Self> {
        Some(self)
    }

    fn raw_element_iter<'a>(&'a self) -> Box<dyn Iterator<Item = &'a Self> + 'a> {
        Box::new(std::iter::once(self))
    }
}

impl poem_openapi::types::ParseFromParameter for IfMatchHeader {
    fn parse_from_parameter(value: &str) -> poem_openapi::types::ParseResult<Self> {
        Ok(Self(value.to_owned()))
    }
}

/// Parses a JSON document, answering 400 with the position of a syntax error.
pub(crate) fn parse_json(bytes: &[u8]) -> Result<Value, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("a JSON body is required"));
    }
    crate::domain::parse_json_strictly(bytes)
        .map_err(|err| ApiError::bad_request(format!("the body is not valid JSON: {err}")))
}
