//! What a request can fail with, rendered once as `application/problem+json` (RFC 9457).
//!
//! Handlers return `Result<_, Problem<S>>` where `S` lists the statuses that operation can
//! answer, so the OpenAPI document shows exactly those; the body is always [`ProblemBody`].

use std::marker::PhantomData;

use poem::http::StatusCode;
use poem_openapi::{
    ApiResponse, Object,
    registry::{MetaMediaType, MetaResponse, MetaResponses, Registry},
    types::{ToJSON, Type},
};

use crate::domain::{FieldErrors, precondition::PreconditionError};

pub(crate) const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";

/// Every way a request can fail. Each variant's doc says its status.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request itself is malformed (JSON syntax, a path or query parameter).
    #[error("{detail}")]
    BadRequest { detail: String, errors: FieldErrors },
    /// 401: a write without a bearer token while tokens are configured.
    #[error("a bearer token is required to write")]
    Unauthorized,
    /// 403: a token that is not one of the configured ones, or an open write off loopback.
    #[error("{0}")]
    Forbidden(String),
    /// 404: no live resource with that id.
    #[error("{entity} {id} not found")]
    NotFound { entity: &'static str, id: String },
    /// 409: a unique name taken, or a category still in use.
    #[error("{0}")]
    Conflict(String),
    /// 408: the body did not arrive within the body timeout.
    #[error("{0}")]
    RequestTimeout(String),
    /// 412: `If-Match` names a version that is no longer current (or an entity tag the
    /// resource does not have).
    #[error("{0}")]
    PreconditionFailed(String),
    /// 413: the body is larger than the limit.
    #[error("the request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    /// 415: a body that is not JSON (or not the media type the operation takes).
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 422: well-formed JSON that breaks the resource's rules.
    #[error("the request breaks {} rule(s)", .0.0.len())]
    Validation(FieldErrors),
    /// 503: the server is shutting down or at a limit; retry later.
    #[error("{0}")]
    Unavailable(String),
    /// 500: a fault on our side; logged with its chain, never shown to the client.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<PreconditionError> for ApiError {
    fn from(err: PreconditionError) -> Self {
        match err {
            PreconditionError::Malformed(detail) => Self::bad_request(detail),
            PreconditionError::Failed(detail) => Self::PreconditionFailed(detail),
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(err: sqlx::Error) -> Self {
        match err {
            // The database is down or overloaded: the client may retry; nothing was changed.
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
                tracing::warn!(error = %err, "database unavailable");
                Self::Unavailable("the database is unavailable; retry later".to_owned())
            }
            err => Self::Internal(err.into()),
        }
    }
}

impl ApiError {
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::BadRequest {
            detail: detail.into(),
            errors: FieldErrors::default(),
        }
    }

    /// 408 for a body that did not arrive within the body timeout.
    pub fn body_timed_out(timeout: std::time::Duration) -> Self {
        Self::RequestTimeout(format!(
            "the body did not arrive within {} s",
            timeout.as_secs()
        ))
    }

    pub fn not_found(entity: &'static str, id: impl ToString) -> Self {
        Self::NotFound {
            entity,
            id: id.to_string(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound { .. } => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::PreconditionFailed(_) => StatusCode::PRECONDITION_FAILED,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The body a client sees. Internal causes are logged here and replaced by a generic text.
    pub fn body(&self) -> ProblemBody {
        let status = self.status();
        let detail = match self {
            Self::Internal(err) => {
                tracing::error!(error = ?err, "internal error");
                "an internal error occurred; it has been logged".to_owned()
            }
            other => other.to_string(),
        };
        let errors = match self {
            Self::Validation(errors) | Self::BadRequest { errors, .. } if !errors.is_empty() => {
                Some(
                    errors
                        .0
                        .iter()
                        .map(|e| FieldProblem {
                            field: e.field.clone(),
                            message: e.message.clone(),
                        })
                        .collect(),
                )
            }
            _ => None,
        };
        ProblemBody::new(status, detail, errors)
    }

    pub fn into_poem_response(self) -> poem::Response {
        poem::error::ResponseError::as_response(&self)
    }
}

impl poem::error::ResponseError for ApiError {
    fn status(&self) -> StatusCode {
        ApiError::status(self)
    }

    fn as_response(&self) -> poem::Response {
        let mut response = self.body().into_response();
        if matches!(self, Self::Unauthorized) {
            response.headers_mut().insert(
                poem::http::header::WWW_AUTHENTICATE,
                poem::http::HeaderValue::from_static("Bearer realm=\"funko-live\""),
            );
        }
        if matches!(self, Self::PayloadTooLarge { .. } | Self::RequestTimeout(_)) {
            // The rest of the body is left unread, so the server drops the connection after
            // this answer; saying so keeps a client from reusing it for its next request.
            response.headers_mut().insert(
                poem::http::header::CONNECTION,
                poem::http::HeaderValue::from_static("close"),
            );
        }
        if matches!(self, Self::Unavailable(_)) {
            response.headers_mut().insert(
                poem::http::header::RETRY_AFTER,
                poem::http::HeaderValue::from_static("1"),
            );
        }
        response
    }
}

/// One broken rule, by field.
#[derive(Clone, Debug, Object, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct FieldProblem {
    /// JSON name of the field or query parameter.
    pub field: String,
    pub message: String,
}

/// An RFC 9457 problem: what went wrong, and for rule violations, each field's error.
#[derive(Clone, Debug, Object, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
#[oai(rename = "Problem")]
pub struct ProblemBody {
    /// A URI naming the kind of problem (`about:blank`: the status says it all).
    #[oai(rename = "type")]
    #[serde(rename = "type")]
    pub kind: String,
    /// The status's reason phrase.
    pub title: String,
    pub status: u16,
    /// What was wrong with this request, in words.
    pub detail: String,
    /// For 400 and 422: each offending field with its message.
    #[oai(skip_serializing_if_is_none)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<FieldProblem>>,
}

impl ProblemBody {
    pub fn new(status: StatusCode, detail: String, errors: Option<Vec<FieldProblem>>) -> Self {
        Self {
            kind: "about:blank".to_owned(),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail,
            errors,
        }
    }

    pub fn into_response(self) -> poem::Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        poem::Response::builder()
            .status(status)
            .content_type(PROBLEM_CONTENT_TYPE)
            .body(self.to_json_string())
    }
}

/// Renders any error that reached the edge (poem's own parse, routing and method errors
/// included) as a problem body.
pub(crate) fn render_any_error(err: poem::Error) -> poem::Response {
    // Keep the operation id (the route label of the request metrics) on the response.
    let operation = err
        .data::<poem_openapi::OperationId>()
        .map(|id| poem_openapi::OperationId(id.0));
    let mut response = render_error(err);
    if let Some(operation) = operation {
        response.set_data(operation);
    }
    response
}

fn render_error(err: poem::Error) -> poem::Response {
    if let Some(api) = err.downcast_ref::<ApiError>() {
        return poem::error::ResponseError::as_response(api);
    }
    if let Some(path) = err.downcast_ref::<poem_openapi::error::ParsePathError>() {
        // Every path parameter here is an id; poem-openapi names them `param0`.
        let errors = FieldErrors::single("id", path.reason.clone());
        return ApiError::BadRequest {
            detail: "the id in the path must be an integer".to_owned(),
            errors,
        }
        .into_poem_response();
    }
    if let Some(param) = err.downcast_ref::<poem_openapi::error::ParseParamError>() {
        let errors = FieldErrors::single(param.name, param.reason.clone());
        return ApiError::BadRequest {
            detail: format!("invalid parameter {}", param.name),
            errors,
        }
        .into_poem_response();
    }
    let status = err.status();
    if status.is_server_error() {
        tracing::error!(error = %err, "unhandled error");
    }
    let detail = if status.is_server_error() {
        "an internal error occurred; it has been logged".to_owned()
    } else {
        err.to_string()
    };
    ProblemBody::new(status, detail, None).into_response()
}

/// A set of error statuses one operation can answer (for its OpenAPI description).
pub trait ErrorStatuses: Send + Sync + 'static {
    const STATUSES: &'static [u16];
}

/// An [`ApiError`] as the error half of an operation's result, documented with `S`'s statuses.
pub struct Problem<S: ErrorStatuses>(pub ApiError, PhantomData<S>);

impl<S: ErrorStatuses> From<ApiError> for Problem<S> {
    fn from(err: ApiError) -> Self {
        debug_assert!(
            S::STATUSES.contains(&err.status().as_u16()) || err.status().is_server_error(),
            "status {} is not documented for this operation: {err}",
            err.status()
        );
        Self(err, PhantomData)
    }
}

impl<S: ErrorStatuses> From<Problem<S>> for poem::Error {
    fn from(problem: Problem<S>) -> Self {
        poem::Error::from(problem.0)
    }
}

impl<S: ErrorStatuses> poem::IntoResponse for Problem<S> {
    fn into_response(self) -> poem::Response {
        self.0.into_poem_response()
    }
}

impl<S: ErrorStatuses> ApiResponse for Problem<S> {
    fn meta() -> MetaResponses {
        MetaResponses {
            // Any operation may also meet a fault (500) or an unreachable database (503).
            responses: S::STATUSES
                .iter()
                .chain([500, 503].iter().filter(|s| !S::STATUSES.contains(s)))
                .map(|&status| MetaResponse {
                    description: StatusCode::from_u16(status)
                        .ok()
                        .and_then(|s| s.canonical_reason())
                        .unwrap_or("Error"),
                    status: Some(status),
                    status_range: None,
                    content: vec![MetaMediaType {
                        content_type: PROBLEM_CONTENT_TYPE,
                        schema: ProblemBody::schema_ref(),
                    }],
                    headers: vec![],
                })
                .collect(),
        }
    }

    fn register(registry: &mut Registry) {
        ProblemBody::register(registry);
    }
}

/// Declares zero-sized status sets: `statuses!(Read = [400, 404]);`.
macro_rules! statuses {
    ($($(#[$doc:meta])* $name:ident = [$($status:literal),*];)*) => {
        $(
            $(#[$doc])*
            pub(crate) struct $name;
            impl ErrorStatuses for $name {
                const STATUSES: &'static [u16] = &[$($status),*];
            }
        )*
    };
}

statuses! {
    /// Reads of a list: bad query parameters.
    ListErrors = [400];
    /// Reads of one resource by id.
    ReadErrors = [400, 404];
    /// Creates: body problems, auth, conflicts.
    CreateErrors = [400, 401, 403, 408, 409, 413, 415, 422];
    /// Updates by id: as creates, plus unknown ids and stale versions.
    UpdateErrors = [400, 401, 403, 404, 408, 409, 412, 413, 415, 422];
    /// Image uploads: as updates, without conflicts or preconditions.
    UploadErrors = [400, 401, 403, 404, 408, 413, 415, 422];
    /// Deletes by id.
    DeleteErrors = [400, 401, 403, 404, 409, 412];
    /// Stream reads: bad cursor or filter, or at the connection limit.
    StreamErrors = [400, 503];
    /// Durable Stream reads: as stream reads, plus unknown stream names.
    DurableErrors = [400, 404, 503];
}

/// Shorthand for handler results.
pub(crate) type ApiResult<T, S> = Result<T, Problem<S>>;
