//! `GET /events/poll`: long-polling. Each request opens a subscription at its cursor, answers
//! what is there (or waits for the next commit, up to its timeout), and forgets it: any
//! instance can answer any poll.

use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use poem::web::Data;
use poem_openapi::{
    ApiResponse, Object, OpenApi,
    param::Query,
    payload::Payload,
    registry::{MetaSchemaRef, Registry},
    types::Type,
};
use serde_json::value::RawValue;
use tokio::time::Instant;

use super::{ChangeEventDoc, start_from_text, view_of};
use crate::{
    api::{ApiTags, AppState, RawJson},
    domain::{FieldErrors, event::Reset},
    error::{ApiError, ApiResult, StreamErrors},
    events::{BATCH, Filter, Next, StoredEvent, Subscription},
    http::LaterBody,
    limits::client_ip,
    metrics::{METRICS, Transport},
};

pub(crate) const POLL_DEFAULT_TIMEOUT: u64 = 25;
pub(crate) const POLL_MAX_TIMEOUT: u64 = 60;
pub(crate) const POLL_DEFAULT_LIMIT: u64 = 100;
pub(crate) const POLL_MAX_LIMIT: u64 = 1000;
/// Reads of the backlog one long-poll makes in a row at most while its filter passes nothing.
const POLL_SCANS: usize = 4;

pub(crate) struct PollApi;

/// The answer of a long-poll.
#[derive(Debug, Object, serde::Deserialize)]
pub(crate) struct PollResult {
    /// Matching events after `after`, oldest first (absent on a reset).
    #[oai(skip_serializing_if_is_none)]
    pub events: Option<Vec<ChangeEventDoc>>,
    /// Present when the cursor could not be served: reload, then poll from `cursor`.
    #[oai(skip_serializing_if_is_none)]
    pub reset: Option<Reset>,
    /// Send this as `after` next time.
    pub cursor: String,
}

/// A [`PollResult`] as it is written: the events' JSON as rendered once for every transport.
#[derive(serde::Serialize)]
struct PollBody<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    events: Option<Vec<&'a RawValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reset: Option<&'a Reset>,
    cursor: String,
}

impl PollBody<'_> {
    fn events(events: &[StoredEvent], cursor: i64) -> Bytes {
        PollBody {
            events: Some(events.iter().map(|e| &*e.json).collect()),
            reset: None,
            cursor: cursor.to_string(),
        }
        .render()
    }

    fn reset(reset: &Reset) -> Bytes {
        PollBody {
            events: None,
            reset: Some(reset),
            cursor: reset.cursor.clone(),
        }
        .render()
    }

    fn render(&self) -> Bytes {
        serde_json::to_vec(self)
            .expect("a poll answer serializes")
            .into()
    }
}

/// A [`PollResult`] still to come: its status (200) and headers are final, and the
/// connection awaits its body once the request has left poem's layers ([`LaterBody`]).
pub struct PollAnswer(BoxFuture<'static, Bytes>);

impl Payload for PollAnswer {
    const CONTENT_TYPE: &'static str = <RawJson<PollResult> as Payload>::CONTENT_TYPE;

    fn schema_ref() -> MetaSchemaRef {
        PollResult::schema_ref()
    }

    fn register(registry: &mut Registry) {
        PollResult::register(registry);
    }
}

impl poem::IntoResponse for PollAnswer {
    fn into_response(self) -> poem::Response {
        let mut response = poem::Response::builder()
            .content_type(Self::CONTENT_TYPE)
            .finish();
        LaterBody::attach(&mut response, self.0);
        response
    }
}

#[derive(ApiResponse)]
pub enum PollResponse {
    /// Events (at once when some exist, else as soon as one commits), none on timeout, or a
    /// reset.
    #[oai(status = 200)]
    Ok(PollAnswer),
}

fn out_of_range(field: &str, rule: String) -> ApiError {
    ApiError::BadRequest {
        detail: format!("{field} {rule}"),
        errors: FieldErrors::single(field, rule),
    }
}

#[OpenApi(tag = "ApiTags::Stream")]
impl PollApi {
    /// Change stream (long-polling)
    ///
    /// Answers at once when events after `after` exist; otherwise holds the request until one
    /// commits or `timeout` seconds pass (then `events` is empty). Poll again with the
    /// returned `cursor`. Stateless: any instance can answer any poll.
    #[oai(path = "/events/poll", method = "get", operation_id = "poll")]
    #[allow(
        clippy::too_many_arguments,
        reason = "one argument per documented parameter"
    )]
    async fn poll(
        &self,
        state: Data<&AppState>,
        request: &poem::Request,
        /// The cursor to read after; absent: wait for the next event from now.
        after: Query<Option<String>>,
        /// Seconds to hold the request, 0..=60 (default 25).
        timeout: Query<Option<u64>>,
        /// Most events in one answer, 1..=1000 (default 100).
        limit: Query<Option<u64>>,
        /// Only this entity: FUNKOS or CATEGORIES.
        entity: Query<Option<String>>,
        /// Only these types, comma-separated: CREATE,UPDATE,DELETE.
        types: Query<Option<String>>,
        /// A view: only Funkos of this category (any case), each event tagged `view`.
        category: Query<Option<String>>,
        /// A view: only Funkos whose name or description contains this (any case).
        q: Query<Option<String>>,
        /// A view: only Funkos at this price or more.
        #[oai(name = "minPrice")]
        min_price: Query<Option<f64>>,
        /// A view: only Funkos at this price or less.
        #[oai(name = "maxPrice")]
        max_price: Query<Option<f64>>,
    ) -> ApiResult<PollResponse, StreamErrors> {
        let start = start_from_text("after", after.0.as_deref())?;
        let timeout = timeout.0.unwrap_or(POLL_DEFAULT_TIMEOUT);
        if timeout > POLL_MAX_TIMEOUT {
            return Err(out_of_range(
                "timeout",
                format!("must be at most {POLL_MAX_TIMEOUT} seconds"),
            )
            .into());
        }
        let limit = limit.0.unwrap_or(POLL_DEFAULT_LIMIT);
        if !(1..=POLL_MAX_LIMIT).contains(&limit) {
            return Err(
                out_of_range("limit", format!("must be between 1 and {POLL_MAX_LIMIT}")).into(),
            );
        }
        let view = view_of(category.0, q.0, min_price.0, max_price.0)?;
        let filter = Filter::parse(entity.0.as_deref(), types.0.as_deref())?.with_view(view)?;
        let slot = state.slots.acquire(Transport::Poll, client_ip(request))?;
        let (subscription, reset) = Subscription::open(state.tail.clone(), start, filter).await?;
        let answer: BoxFuture<'static, Bytes> = match reset {
            Some(reset) => Box::pin(std::future::ready(PollBody::reset(&reset))),
            None => Box::pin(async move {
                let _slot = slot;
                let deadline = Instant::now() + Duration::from_secs(timeout);
                answer(subscription, deadline, limit as usize).await
            }),
        };
        Ok(PollResponse::Ok(PollAnswer(answer)))
    }
}

/// What `subscription` has for a poll, at most `limit` events: at once when there is some,
/// else as soon as some commits, else none at `deadline`.
async fn answer(mut subscription: Subscription, deadline: Instant, limit: usize) -> Bytes {
    // Reads of the backlog this poll may make in a row when they find nothing its filter
    // passes: past them it answers the cursor it reached, whatever its timeout. Waiting for
    // new commits starts the count again.
    let mut scans_left = POLL_SCANS;
    loop {
        // Look first, wait after: `timeout=0` still answers what is already there. Reads are
        // at least a batch whatever `limit` is, so a rare filter costs few rounds.
        return match subscription.poll_now(BATCH.max(limit)).await {
            Some(Next::Events { events, cursor }) if events.is_empty() => {
                scans_left -= 1;
                if scans_left > 0 && Instant::now() < deadline {
                    continue;
                }
                PollBody::events(&[], cursor)
            }
            Some(Next::Events { mut events, cursor }) => {
                // Past `limit`, the answer ends at its last event: the next poll goes on from
                // there.
                let cursor = if events.len() > limit {
                    events.truncate(limit);
                    events.last().expect("limit is at least 1").id
                } else {
                    cursor
                };
                METRICS.delivered(Transport::Poll, events.len());
                PollBody::events(&events, cursor)
            }
            Some(Next::Reset(reset)) => PollBody::reset(&reset),
            Some(Next::End { cursor, .. }) => PollBody::events(&[], cursor),
            None => match tokio::time::timeout_at(deadline, subscription.wait()).await {
                Ok(()) => {
                    scans_left = POLL_SCANS;
                    continue;
                }
                Err(_elapsed) => PollBody::events(&[], subscription.cursor()),
            },
        };
    }
}
