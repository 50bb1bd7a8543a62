//! `GET /events`: Server-Sent Events. The replay, and live events until the subscription is at
//! the tail's head, go through hyper; from there the fan-out writes the frames itself, when
//! the connection allows it ([`SseWriter`]).

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use poem::web::Data;
use poem_openapi::{
    ApiResponse, Enum, Object, OpenApi,
    param::{Header, Query},
    payload::Payload,
    registry::{MetaMediaType, MetaResponse, MetaResponses, MetaSchemaRef, Registry},
    types::{ToJSON, Type},
};
use tokio::time::Instant;

use super::{ChangeEventDoc, start_from_text, view_of};
use crate::{
    api::{ApiTags, AppState},
    domain::event::Reset,
    error::{ApiResult, StreamErrors},
    events::{BATCH, Filter, Next, StoredEvent, Subscription},
    http::fanout::{self, Ending, SseWriter, ToHyper},
    limits::{StreamSlot, client_ip},
    metrics::{METRICS, Transport},
};

/// What the browser waits before reconnecting, sent once at connect.
const RETRY_MS: u64 = 2000;
/// A `:` comment that keeps an idle connection open.
const KEEP_ALIVE: &[u8] = b":\n\n";

pub(crate) struct SseApi;

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

/// The `GET /events` answer. Before OpenAPI 3.2, the `schema` of `text/event-stream`
/// describes one event as an `EventSource` parser sees it (`data`, `event`, `id`, `retry`),
/// which is how tools such as schemathesis validate a stream; poem-openapi's `EventStream`
/// documents an array of payloads instead, which no event matches.
///
/// The body is written by hand rather than through poem's SSE adapter: each change event's
/// frame is rendered once (`StoredEvent::sse`) and every subscriber gets the same bytes, where
/// the adapter would copy and re-format the JSON for each delivery.
pub(crate) struct SseStream {
    subscription: Subscription,
    end: EndCondition,
    reset: Option<Reset>,
    slot: StreamSlot,
    keep_alive: Duration,
    write_stall: Duration,
    writer: SseWriter,
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
            .body(fanout::body(self.body()))
    }
}

impl SseStream {
    /// The response body: the frames of the replay and of live events until the subscription
    /// is live, handed to hyper; then the fan-out's, when the connection allows it.
    fn body(self) -> impl futures_util::Stream<Item = std::io::Result<ToHyper>> + Send + 'static {
        let Self {
            mut subscription,
            mut end,
            reset,
            slot,
            keep_alive,
            write_stall,
            writer,
        } = self;
        async_stream::stream! {
            // Holds this connection's place until the stream ends.
            let _slot = slot;
            let delivered = METRICS.delivered_counter(Transport::Sse);
            yield Ok(writer.to_hyper(Bytes::from(format!("retry: {RETRY_MS}\n\n"))));
            if let Some(reset) = reset {
                yield Ok(writer.to_hyper(reset_frame(&reset)));
                yield Ok(writer.to_hyper(cursor_frame(subscription.cursor())));
            }
            // A keep-alive comment only after `keep_alive` without any frame. One timer for
            // the connection's life, re-armed only when it fires: a frame just notes the
            // time, so a delivery costs no timer-wheel work.
            let timer = tokio::time::sleep(keep_alive);
            tokio::pin!(timer);
            let mut last_sent = Instant::now();
            let deadline = end.deadline();
            tokio::pin!(deadline);
            let mut writer = writer;
            while !end.met() {
                match subscription.poll_now(end.batch()).await {
                    Some(Next::Events { events, cursor }) => {
                        last_sent = Instant::now();
                        delivered.inc_by(events.len() as u64);
                        end.sent(events.len());
                        yield Ok(writer.to_hyper(frames(events, cursor)));
                    }
                    Some(Next::Reset(reset)) => {
                        last_sent = Instant::now();
                        yield Ok(writer.to_hyper(reset_frame(&reset)));
                        yield Ok(writer.to_hyper(cursor_frame(subscription.cursor())));
                    }
                    // The client reconnects with Last-Event-ID and resumes from the log.
                    Some(Next::End { .. }) => break,
                    // Live: the fan-out takes over, or this task waits for the next commit.
                    None => {
                        let filter = subscription.filter().clone();
                        writer = match writer.into_fanout(filter, subscription.cursor()) {
                            Ok(membership) => {
                                drop(subscription);
                                if let Ending::Abort(err) = membership.run(Some(keep_alive), write_stall).await {
                                    yield Err(err);
                                }
                                break;
                            }
                            Err(hyper) => hyper,
                        };
                        tokio::select! {
                            () = subscription.wait() => {}
                            () = &mut deadline => break,
                            () = &mut timer => {
                                if last_sent.elapsed() >= keep_alive {
                                    last_sent = Instant::now();
                                    yield Ok(writer.to_hyper(Bytes::from_static(KEEP_ALIVE)));
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

/// When a stream ends by itself (`maxEvents`, `timeout`): for tools that show a response
/// only once it is complete. Without either, it never does.
struct EndCondition {
    /// Change events still to send.
    remaining: Option<usize>,
    deadline: Option<Instant>,
}

impl EndCondition {
    fn is_set(&self) -> bool {
        self.remaining.is_some() || self.deadline.is_some()
    }

    /// Events to read in the next step: never more than are still to be sent.
    fn batch(&self) -> usize {
        self.remaining.map_or(BATCH, |left| left.min(BATCH))
    }

    fn sent(&mut self, events: usize) {
        if let Some(left) = &mut self.remaining {
            *left = left.saturating_sub(events);
        }
    }

    fn met(&self) -> bool {
        self.remaining == Some(0) || self.deadline.is_some_and(|at| Instant::now() >= at)
    }

    /// Ready at the deadline; never without one.
    fn deadline(&self) -> impl Future<Output = ()> + use<> {
        let at = self.deadline;
        async move {
            match at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
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
pub(crate) struct ServerSentEvent {
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
pub(crate) enum ServerSentEventName {
    Message,
    Reset,
}

#[OpenApi(tag = "ApiTags::Stream")]
impl SseApi {
    /// Change stream (Server-Sent Events)
    ///
    /// Every committed write as `id: <cursor>` + `data: <event JSON>`. Resume with the
    /// `Last-Event-ID` header (browsers send it on reconnect) or `lastEventId`; without either,
    /// live events only. A cursor this server cannot serve yields `event: reset` with the head
    /// cursor: reload, then continue. `:` comments keep idle connections open. Each `data`
    /// is a `ChangeEvent` (a `Reset` on `event: reset`).
    ///
    /// The stream stays open unless `maxEvents` or `timeout` ends it, as tools that show a
    /// response only once it is complete need (Swagger UI's "Try it out", `curl` in a script).
    /// An `EventSource` reconnects after such an end and goes on from its last id.
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
        /// End the stream once it has sent this many change events.
        #[oai(
            name = "maxEvents",
            validator(minimum(value = "1"), maximum(value = "1000"))
        )]
        max_events: Query<Option<u32>>,
        /// End the stream after this many seconds.
        #[oai(validator(minimum(value = "1"), maximum(value = "3600")))]
        timeout: Query<Option<u32>>,
    ) -> ApiResult<SseStream, StreamErrors> {
        let start = match last_event_id.0.as_deref() {
            Some(header) => start_from_text("Last-Event-ID", Some(header)),
            None => start_from_text("lastEventId", last_event_id_query.0.as_deref()),
        }?;
        let view = view_of(category.0, q.0, min_price.0, max_price.0)?;
        let filter = Filter::parse(entity.0.as_deref(), types.0.as_deref())?.with_view(view)?;
        let slot = state.slots.acquire(Transport::Sse, client_ip(request))?;
        let end = EndCondition {
            remaining: max_events.0.map(|n| n as usize),
            deadline: timeout
                .0
                .map(|secs| Instant::now() + Duration::from_secs(secs.into())),
        };
        // A stream that ends by itself stays with hyper, which ends its body properly.
        let writer = if end.is_set() {
            SseWriter::Hyper
        } else {
            SseWriter::for_request(&state.hub, request)
        };
        let (subscription, reset) = Subscription::open(state.tail.clone(), start, filter).await?;
        Ok(SseStream {
            subscription,
            end,
            reset,
            slot,
            keep_alive: state.settings.keepalive,
            write_stall: state.settings.write_stall,
            writer,
        })
    }
}
