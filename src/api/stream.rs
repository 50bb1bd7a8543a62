//! `/events` (Server-Sent Events) and `/events/poll` (long-polling): two thin adapters that
//! turn a [`Subscription`]'s steps into frames.

use std::{sync::Arc, time::Duration};

use bytes::{Bytes, BytesMut};
use poem::{
    http::{Method, Version},
    web::Data,
};
use poem_openapi::{
    ApiResponse, Enum, Object, OpenApi,
    param::{Header, Query},
    payload::Payload,
    registry::{MetaMediaType, MetaResponse, MetaResponses, MetaSchemaRef, Registry},
    types::{ToJSON, Type},
};
use tokio::time::Instant;

use super::{ApiTags, AppState, RawJson};
use crate::{
    error::{ApiError, ApiResult, StreamErrors},
    events::{
        ChangeEventDoc, Filter, Reset, Start, StoredEvent, Subscription,
        hub::{Ending, Hub},
        parse_cursor,
        subscription::Next,
    },
    net::Outlet,
};
use crate::{
    limits::{StreamSlot, client_ip},
    metrics::METRICS,
};

/// What the browser waits before reconnecting, sent once at connect.
const RETRY_MS: u64 = 2000;
/// Events read per step of a subscription.
const BATCH: usize = 256;
pub const POLL_DEFAULT_TIMEOUT: u64 = 25;
pub const POLL_MAX_TIMEOUT: u64 = 60;
pub const POLL_DEFAULT_LIMIT: u64 = 100;
/// Reads of the backlog one long-poll makes in a row at most while its filter passes nothing.
const POLL_SCANS: usize = 4;
pub const POLL_MAX_LIMIT: u64 = 1000;

pub struct StreamApi;

/// The `retry:` frame sent once at connect.
fn retry_frame() -> Bytes {
    Bytes::from(format!("retry: {RETRY_MS}\n\n"))
}

/// `event: reset` + `data: {"cursor","reason"}`, without an id.
fn reset_frame(reset: &Reset) -> Bytes {
    Bytes::from(format!(
        "event: reset\ndata: {}\n\n",
        reset.to_json_string()
    ))
}

/// `id: <cursor>` alone: moves the browser's `lastEventId` past events the filter hid (or to
/// a reset's cursor) without firing `onmessage`.
fn cursor_frame(cursor: i64) -> Bytes {
    Bytes::from(format!("id: {cursor}\n\n"))
}

/// The frames of a step's events, and (when the step read past them, through events a filter
/// hid) an `id:` line that moves the browser's cursor to where the step ended.
fn frames(events: Vec<StoredEvent>, cursor: i64) -> Bytes {
    let hidden_after = events.last().is_none_or(|e| e.id < cursor);
    if events.len() == 1 && !hidden_after {
        // The frame every subscriber shares, not copied.
        return events.into_iter().next().expect("one event").sse;
    }
    // Replaying or catching up: one body chunk (and one write) per batch, not one per event.
    let mut batch = BytesMut::with_capacity(events.iter().map(|e| e.sse.len()).sum::<usize>() + 32);
    for event in &events {
        batch.extend_from_slice(&event.sse);
    }
    if hidden_after {
        batch.extend_from_slice(&cursor_frame(cursor));
    }
    batch.freeze()
}

/// A `:` comment that keeps an idle connection open.
const KEEP_ALIVE: &[u8] = b":\n\n";

/// The `GET /events` answer. Before OpenAPI 3.2, the `schema` of `text/event-stream`
/// describes one event as an `EventSource` parser sees it (`data`, `event`, `id`, `retry`),
/// which is how tools such as schemathesis validate a stream; poem-openapi's `EventStream`
/// documents an array of payloads instead, which no event matches.
///
/// The body is written by hand rather than through poem's SSE adapter: each change event's
/// frame is rendered once (`StoredEvent::sse`) and every subscriber gets the same bytes, where
/// the adapter would copy and re-format the JSON for each delivery. Once the subscription is
/// live, the [`Hub`] writes the frames to the socket itself, when it can (see [`Fanout`]).
pub struct SseStream {
    subscription: Subscription,
    reset: Option<Reset>,
    slot: StreamSlot,
    keep_alive: Duration,
    fanout: Option<Fanout>,
}

/// The hub's access to a response's socket: present when the server accepted the connection
/// (not in poem's test client) and hyper frames the body with chunked encoding (an HTTP/1.1
/// `GET`), which is how the hub writes it.
pub struct Fanout {
    hub: Arc<Hub>,
    outlet: Arc<Outlet>,
    write_stall: Duration,
}

impl Fanout {
    fn for_request(state: &AppState, request: &poem::Request) -> Option<Self> {
        let outlet = request.extensions().get::<Arc<Outlet>>()?;
        (request.version() == Version::HTTP_11 && request.method() == Method::GET).then(|| Self {
            hub: state.hub.clone(),
            outlet: outlet.clone(),
            write_stall: state.settings.write_stall,
        })
    }
}

impl Payload for SseStream {
    const CONTENT_TYPE: &'static str = "text/event-stream";

    fn schema_ref() -> MetaSchemaRef {
        ServerSentEvent::schema_ref()
    }

    fn register(registry: &mut Registry) {
        ServerSentEvent::register(registry);
        // What a `data` carries.
        ChangeEventDoc::register(registry);
        Reset::register(registry);
    }
}

impl poem::IntoResponse for SseStream {
    fn into_response(self) -> poem::Response {
        poem::Response::builder()
            .content_type("text/event-stream")
            .header("Cache-Control", "no-cache")
            .header("X-Accel-Buffering", "no")
            .body(poem::Body::from_bytes_stream(self.body()))
    }
}

impl SseStream {
    /// The response body: the frames of the replay and of live events until the subscription
    /// is live, through hyper; then the hub's, when there is a [`Fanout`].
    fn body(self) -> impl futures_util::Stream<Item = std::io::Result<Bytes>> + Send + 'static {
        let Self {
            mut subscription,
            reset,
            slot,
            keep_alive,
            fanout,
        } = self;
        // Every frame handed to hyper is announced to the outlet first, so the hub never
        // writes while hyper holds bytes.
        let handing = fanout.as_ref().map(|f| f.outlet.clone());
        let hand = move || {
            if let Some(outlet) = &handing {
                outlet.hand_to_hyper();
            }
        };
        async_stream::stream! {
            // Holds this connection's place until the stream ends.
            let _slot = slot;
            let delivered = METRICS.delivered_counter("sse");
            hand();
            yield Ok(retry_frame());
            if let Some(reset) = reset {
                hand();
                yield Ok(reset_frame(&reset));
                hand();
                yield Ok(cursor_frame(subscription.cursor()));
            }
            // A keep-alive comment only after `keep_alive` without any frame. One timer for
            // the connection's life, re-armed only when it fires: a frame just notes the
            // time, so a delivery costs no timer-wheel work.
            let timer = tokio::time::sleep(keep_alive);
            tokio::pin!(timer);
            let mut last_sent = Instant::now();
            loop {
                match subscription.poll_now(BATCH).await {
                    Ok(Some(Next::Events { events, cursor })) => {
                        last_sent = Instant::now();
                        delivered.inc_by(events.len() as u64);
                        hand();
                        yield Ok(frames(events, cursor));
                    }
                    Ok(Some(Next::Reset(reset))) => {
                        last_sent = Instant::now();
                        hand();
                        yield Ok(reset_frame(&reset));
                        hand();
                        yield Ok(cursor_frame(subscription.cursor()));
                    }
                    // The client reconnects with Last-Event-ID and resumes from the log.
                    Ok(Some(Next::CutOff { .. } | Next::Closed { .. })) => break,
                    Err(err) => {
                        tracing::warn!(error = %err, cursor = subscription.cursor(), "SSE stream failed");
                        break;
                    }
                    // Live: the hub takes over, or this task waits for the next commit.
                    Ok(None) => {
                        if let Some(fanout) = &fanout {
                            let membership = fanout.hub.join(
                                fanout.outlet.clone(),
                                subscription.filter().clone(),
                                subscription.cursor(),
                            );
                            drop(subscription);
                            if let Ending::Abort(err) =
                                membership.run(keep_alive, fanout.write_stall).await
                            {
                                yield Err(err);
                            }
                            break;
                        }
                        tokio::select! {
                            () = subscription.wait() => {}
                            () = &mut timer => {
                                if last_sent.elapsed() >= keep_alive {
                                    last_sent = Instant::now();
                                    yield Ok(Bytes::from_static(KEEP_ALIVE));
                                }
                                timer.as_mut().reset(last_sent + keep_alive);
                            }
                        }
                    }
                }
            }
        }
    }
}

impl ApiResponse for SseStream {
    fn meta() -> MetaResponses {
        MetaResponses {
            responses: vec![MetaResponse {
                description: "The stream: events after the cursor, then live events as they \
                              commit; a `reset` when the cursor cannot be served.",
                status: Some(200),
                status_range: None,
                content: vec![MetaMediaType {
                    content_type: Self::CONTENT_TYPE,
                    schema: Self::schema_ref(),
                }],
                headers: vec![],
            }],
        }
    }

    fn register(registry: &mut Registry) {
        <Self as Payload>::register(registry);
    }
}

/// One Server-Sent Event of `GET /events`, as an `EventSource` parser sees it.
#[derive(Object)]
pub struct ServerSentEvent {
    /// The cursor: on a change event, its id; alone (no data), the position past events a
    /// filter hid or the cursor of a reset. Absent on a reset itself.
    pub id: Option<String>,
    /// `message` (the default, and every change event) or `reset`.
    pub event: Option<ServerSentEventName>,
    /// A `message`: a `ChangeEvent` as JSON. A `reset`: a `Reset` as JSON.
    pub data: String,
    /// Milliseconds to wait before reconnecting.
    pub retry: Option<u64>,
}

/// The name of a Server-Sent Event.
#[derive(Enum)]
#[oai(rename_all = "lowercase")]
pub enum ServerSentEventName {
    Message,
    Reset,
}

/// The answer of a long-poll.
#[derive(Debug, Object, serde::Deserialize)]
pub struct PollResult {
    /// Matching events after `after`, oldest first (absent on a reset).
    #[oai(skip_serializing_if_is_none)]
    pub events: Option<Vec<ChangeEventDoc>>,
    /// Present when the cursor could not be served: reload, then poll from `cursor`.
    #[oai(skip_serializing_if_is_none)]
    pub reset: Option<Reset>,
    /// Send this as `after` next time.
    pub cursor: String,
}

impl RawJson<PollResult> {
    fn poll(events: &[StoredEvent], cursor: i64) -> Self {
        let mut body =
            String::with_capacity(32 + events.iter().map(|e| e.json.len() + 1).sum::<usize>());
        body.push_str(r#"{"events":["#);
        for (i, event) in events.iter().enumerate() {
            if i > 0 {
                body.push(',');
            }
            body.push_str(&event.json);
        }
        body.push_str(r#"],"cursor":""#);
        body.push_str(&cursor.to_string());
        body.push_str(r#""}"#);
        Self::new(body)
    }

    fn reset(reset: &Reset) -> Self {
        let body = serde_json::json!({ "reset": reset.to_json(), "cursor": reset.cursor });
        Self::new(body.to_string())
    }
}

#[derive(ApiResponse)]
pub enum PollResponse {
    /// Events (at once when some exist, else as soon as one commits), none on timeout, or a
    /// reset.
    #[oai(status = 200)]
    Ok(RawJson<PollResult>),
}

/// Parses an optional cursor parameter.
fn cursor_param(name: &str, raw: Option<&str>) -> Result<Start, ApiError> {
    // `str::is_empty` by name: with poem-openapi's `Type` in scope, `r.is_empty()` on a
    // `&&str` is `Type::is_empty`, which is always false, and an empty cursor was refused.
    match raw.map(str::trim).filter(|r| !str::is_empty(r)) {
        None => Ok(Start::Now),
        Some(raw) => parse_cursor(raw).map(Start::After).ok_or_else(|| {
            ApiError::bad_request(format!(
                "{name} must be a cursor (a decimal event id), not {raw:?}"
            ))
        }),
    }
}

#[OpenApi(tag = "ApiTags::Stream")]
impl StreamApi {
    /// Change stream (Server-Sent Events)
    ///
    /// Every committed write as `id: <cursor>` + `data: <event JSON>`. Resume with the
    /// `Last-Event-ID` header (browsers send it on reconnect) or `lastEventId`; without either,
    /// live events only. A cursor this server cannot serve yields `event: reset` with the head
    /// cursor: reload, then continue. `:` comments keep idle connections open.
    #[oai(path = "/events", method = "get", operation_id = "events")]
    #[allow(
        clippy::too_many_arguments,
        reason = "one argument per documented parameter"
    )]
    async fn events(
        &self,
        state: Data<&AppState>,
        request: &poem::Request,
        #[oai(name = "Last-Event-ID")] last_event_id: Header<Option<String>>,
        /// Cursor to resume after, for the first connect (the header wins when both are sent).
        #[oai(name = "lastEventId")]
        last_event_id_query: Query<Option<String>>,
        /// Only this entity: FUNKOS or CATEGORIES.
        entity: Query<Option<String>>,
        /// Only these types, comma-separated: CREATE,UPDATE,DELETE.
        types: Query<Option<String>>,
    ) -> ApiResult<SseStream, StreamErrors> {
        let (start, name) = match last_event_id.0.as_deref() {
            Some(header) => (Some(header), "Last-Event-ID"),
            None => (last_event_id_query.0.as_deref(), "lastEventId"),
        };
        let start = cursor_param(name, start)?;
        let filter = Filter::parse(entity.0.as_deref(), types.0.as_deref())?;
        let slot = state.slots.acquire("sse", client_ip(request))?;
        let (subscription, reset) = Subscription::open(state.bus.clone(), start, filter).await?;
        Ok(SseStream {
            subscription,
            reset,
            slot,
            keep_alive: state.settings.keepalive,
            fanout: Fanout::for_request(&state, request),
        })
    }

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
    ) -> ApiResult<PollResponse, StreamErrors> {
        let start = cursor_param("after", after.0.as_deref())?;
        let timeout = timeout.0.unwrap_or(POLL_DEFAULT_TIMEOUT);
        if timeout > POLL_MAX_TIMEOUT {
            return Err(ApiError::bad_request(format!(
                "timeout must be at most {POLL_MAX_TIMEOUT} seconds"
            ))
            .into());
        }
        let limit = limit.0.unwrap_or(POLL_DEFAULT_LIMIT);
        if !(1..=POLL_MAX_LIMIT).contains(&limit) {
            return Err(ApiError::bad_request(format!(
                "limit must be between 1 and {POLL_MAX_LIMIT}"
            ))
            .into());
        }
        let filter = Filter::parse(entity.0.as_deref(), types.0.as_deref())?;
        let _slot = state.slots.acquire("poll", client_ip(request))?;
        let (mut subscription, reset) =
            Subscription::open(state.bus.clone(), start, filter).await?;
        if let Some(reset) = reset {
            return Ok(PollResponse::Ok(RawJson::reset(&reset)));
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
        let limit = limit as usize;
        // Reads of the backlog this request may make in a row when they find nothing its
        // filter passes: past them it answers the cursor it reached, whatever its timeout.
        // Waiting for new commits starts the count again.
        let mut scans_left = POLL_SCANS;
        loop {
            // Look first, wait after: `timeout=0` still answers what is already there. Reads
            // are at least a batch whatever `limit` is, so a rare filter costs few rounds.
            let answer = match subscription.poll_now(BATCH.max(limit)).await? {
                Some(Next::Events { events, cursor }) if events.is_empty() => {
                    scans_left -= 1;
                    if scans_left > 0 && tokio::time::Instant::now() < deadline {
                        continue;
                    }
                    RawJson::poll(&[], cursor)
                }
                Some(Next::Events { mut events, cursor }) => {
                    // Past `limit`, the answer ends at its last event: the next poll goes on
                    // from there.
                    let cursor = if events.len() > limit {
                        events.truncate(limit);
                        events.last().expect("limit is at least 1").id
                    } else {
                        cursor
                    };
                    METRICS.delivered("poll", events.len());
                    RawJson::poll(&events, cursor)
                }
                Some(Next::Reset(reset)) => RawJson::reset(&reset),
                Some(Next::CutOff { cursor } | Next::Closed { cursor }) => {
                    RawJson::poll(&[], cursor)
                }
                None => match tokio::time::timeout_at(deadline, subscription.wait()).await {
                    Ok(()) => {
                        scans_left = POLL_SCANS;
                        continue;
                    }
                    Err(_elapsed) => RawJson::poll(&[], subscription.cursor()),
                },
            };
            return Ok(PollResponse::Ok(answer));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_cursor_means_now() {
        for raw in [None, Some(""), Some("  ")] {
            assert_eq!(cursor_param("after", raw).ok(), Some(Start::Now), "{raw:?}");
        }
        assert_eq!(
            cursor_param("after", Some(" 42 ")).ok(),
            Some(Start::After(42))
        );
        assert!(cursor_param("after", Some("x")).is_err());
    }
}
