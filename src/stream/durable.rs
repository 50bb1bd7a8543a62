//! The read side of the Durable Streams protocol, with the State Protocol's messages: one
//! stream URL per entity (`/streams/funkos`, `/streams/categories`), read from an offset by
//! catch-up, long-poll or Server-Sent Events, over the same [`Subscription`] as the other
//! transports, so off-the-shelf clients in any language follow the store.
//!
//! - An offset is a cursor written with [`OFFSET_DIGITS`] digits, so offsets sort as text as
//!   they do as numbers; `-1` (the beginning) and `now` are the protocol's two sentinels.
//! - A read from `-1` starts with a snapshot of the current rows, between `snapshot-start`
//!   and `snapshot-end`, read in one database snapshot with the cursor it is at; the changes
//!   after that cursor follow. So a client starts from nothing even after retention pruned
//!   the log's beginning.
//! - A resumed offset older than retention (or one this database never issued) answers 410
//!   with the State Protocol's `reset` control message in the problem body: start again
//!   from `-1`.
//! - The protocol's `Stream-Cursor` here is its collapsing cursor for caches, not the REST
//!   reads' `Stream-Cursor` (a position in the change stream): offsets play that part.
//! - Read-only: appends, creation and deletion answer 405.

use std::{
    hash::{BuildHasher, RandomState},
    time::Duration,
};

use bytes::Bytes;
use poem::{
    http::{StatusCode, header},
    web::Data,
};
use poem_openapi::{
    ApiResponse, Enum, Object, OpenApi,
    param::{Header, Path, Query},
    registry::{MetaHeader, MetaMediaType, MetaResponse, MetaResponses, Registry},
    types::{ToJSON, Type},
};
use serde_json::value::RawValue;
use tokio::time::Instant;

use super::view_of;
use crate::{
    api::{ApiTags, AppState},
    db,
    domain::{
        FieldErrors,
        event::{Entity, EventKind},
        view::{View, ViewChange},
    },
    error::{ApiError, ApiResult, DurableErrors, FieldProblem, PROBLEM_CONTENT_TYPE},
    events::{BATCH, Filter, Next, Start, StoredEvent, Subscription},
    limits::client_ip,
    metrics::{METRICS, Transport},
    stream::poll::{POLL_DEFAULT_TIMEOUT, POLL_MAX_TIMEOUT},
};

/// Digits of an offset: every non-negative `i64` fits.
const OFFSET_DIGITS: usize = 20;
/// How long an SSE response lasts before the server closes it, as the protocol asks, so
/// that caches can collapse new readers onto fresh requests. The client reconnects from its
/// last offset.
const SSE_LIFETIME: Duration = Duration::from_secs(60);
/// Reads of the log one answer makes at most while its filter passes nothing.
const SCANS: usize = 4;
/// Catch-up reads and long-polls that carry data: a range of the log never changes, and a
/// range that ends at the head is still a true prefix of what follows.
const CACHEABLE: &str = "public, max-age=60, stale-while-revalidate=300";
/// Answers that name the head (`HEAD`, `offset=now`, a long-poll's timeout).
const NO_STORE: &str = "no-store";
/// The collapsing cursor counts 20-second intervals from 2024-10-09T00:00:00Z, as the
/// protocol suggests.
const CURSOR_EPOCH: i64 = 1_728_432_000;
const CURSOR_INTERVAL: i64 = 20;
/// Longest protocol cursor accepted (an `i64` has 19 digits).
const CURSOR_DIGITS: usize = 18;
/// How much of a rejected value a problem body quotes.
const QUOTED: usize = 40;

pub(crate) struct DurableApi;

/// A stream this server serves: one per entity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StreamName {
    Funkos,
    Categories,
}

impl StreamName {
    fn parse(raw: &str) -> Option<Self> {
        match raw {
            "funkos" => Some(Self::Funkos),
            "categories" => Some(Self::Categories),
            _ => None,
        }
    }

    /// Its name in the URL, which is also the `type` of its change messages.
    fn as_str(self) -> &'static str {
        match self {
            Self::Funkos => "funkos",
            Self::Categories => "categories",
        }
    }

    fn entity(self) -> Entity {
        match self {
            Self::Funkos => Entity::Funkos,
            Self::Categories => Entity::Categories,
        }
    }

    fn of(name: &str) -> Result<Self, ApiError> {
        Self::parse(name).ok_or_else(|| ApiError::not_found("stream", quoted(name)))
    }
}

/// Where a read starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReadFrom {
    /// `-1` or no offset: a snapshot, then the changes after it.
    Beginning,
    /// `now`: the head, without data.
    Now,
    /// An offset this server issued: the changes after that cursor.
    After(i64),
}

/// A position in a stream as the protocol writes it: a change-stream cursor with
/// [`OFFSET_DIGITS`] digits, so offsets sort as text as cursors do as numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Offset(i64);

impl std::fmt::Display for Offset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:0width$}", self.0, width = OFFSET_DIGITS)
    }
}

impl Offset {
    /// Exactly [`OFFSET_DIGITS`] digits, of a non-negative `i64`.
    fn parse(raw: &str) -> Option<Self> {
        (raw.len() == OFFSET_DIGITS && raw.bytes().all(|b| b.is_ascii_digit()))
            .then(|| raw.parse().ok().map(Self))
            .flatten()
    }
}

fn parse_offset(raw: Option<&str>) -> Result<ReadFrom, ApiError> {
    match raw {
        None | Some("-1") => Ok(ReadFrom::Beginning),
        Some("now") => Ok(ReadFrom::Now),
        Some(raw) => Offset::parse(raw)
            .map(|offset| ReadFrom::After(offset.0))
            .ok_or_else(|| bad_offset(raw)),
    }
}

fn bad_offset(raw: &str) -> ApiError {
    bad(
        "offset",
        format!("-1, now, or an offset this server issued ({OFFSET_DIGITS} digits)"),
        raw,
    )
}

/// A 400 for query parameter `field`, which must be `rule`, quoting (the start of) `raw`.
fn bad(field: &str, rule: String, raw: &str) -> ApiError {
    ApiError::BadRequest {
        detail: format!("{field} must be {rule}, not {}", quoted(raw)),
        errors: FieldErrors::single(field, format!("must be {rule}")),
    }
}

/// `raw` in quotes, cut to [`QUOTED`] characters.
fn quoted(raw: &str) -> String {
    match raw.char_indices().nth(QUOTED) {
        Some((at, _)) => format!("{:?}…", &raw[..at]),
        None => format!("{raw:?}"),
    }
}

/// How a read waits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Live {
    /// Answer what is there now.
    CatchUp,
    /// Wait for data up to the timeout: 200, or 204 without.
    LongPoll,
    /// Server-Sent Events: `data` and `control` events until the connection's lifetime ends.
    Sse,
}

fn parse_live(raw: Option<&str>) -> Result<Live, ApiError> {
    match raw {
        None => Ok(Live::CatchUp),
        Some("long-poll") => Ok(Live::LongPoll),
        Some("sse") => Ok(Live::Sse),
        Some(raw) => Err(bad("live", "long-poll or sse".to_owned(), raw)),
    }
}

/// The protocol's cursor a client echoes (`cursor=`): an interval number.
fn parse_cursor(raw: Option<&str>) -> Result<Option<i64>, ApiError> {
    match raw {
        None => Ok(None),
        Some(raw)
            if !raw.is_empty()
                && raw.len() <= CURSOR_DIGITS
                && raw.bytes().all(|b| b.is_ascii_digit()) =>
        {
            Ok(raw.parse().ok())
        }
        Some(raw) => Err(bad(
            "cursor",
            "the Stream-Cursor of a previous answer (decimal digits)".to_owned(),
            raw,
        )),
    }
}

/// The collapsing cursor to answer: the current interval, or past the client's when it is
/// not behind it (with jitter of up to an hour), so a cursor never goes back and a cache
/// never serves one answer in a loop.
fn collapsing_cursor(client: Option<i64>) -> String {
    let now = (chrono::Utc::now().timestamp() - CURSOR_EPOCH) / CURSOR_INTERVAL;
    let cursor = match client {
        Some(client) if client >= now => {
            // 1..=3600 seconds, as whole intervals (at least one).
            let jitter_secs = 1 + (RandomState::new().hash_one(client) % 3600) as i64;
            client + (jitter_secs + CURSOR_INTERVAL - 1) / CURSOR_INTERVAL
        }
        _ => now,
    };
    cursor.to_string()
}

/// A State Protocol change message, as written.
#[derive(serde::Serialize)]
struct Change<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    key: String,
    value: &'a RawValue,
    #[serde(skip_serializing_if = "Option::is_none")]
    old_value: Option<&'a RawValue>,
    headers: ChangeHeaders<'a>,
}

#[derive(serde::Serialize)]
struct ChangeHeaders<'a> {
    operation: &'static str,
    timestamp: &'a str,
}

/// What a change message needs of an event's JSON besides its resource.
#[derive(serde::Deserialize)]
struct EventParts<'a> {
    #[serde(rename = "createdAt")]
    created_at: &'a str,
}

/// What a change message needs of a resource's JSON.
#[derive(serde::Deserialize)]
struct ResourceKey {
    id: i64,
    #[serde(rename = "isDeleted")]
    is_deleted: bool,
}

/// A State Protocol message, rendered once.
type Message = Box<RawValue>;

impl Change<'_> {
    fn render(self) -> Message {
        serde_json::value::to_raw_value(&self).expect("a change message serializes")
    }
}

/// The change message of an event the stream's filter passed: `insert`, `update` or
/// `delete` (a soft delete, or a Funko leaving the view), with the resource as `GET` returns
/// it and, where the log has it, what it recorded of the Funko before.
fn change_message(stream: StreamName, view: Option<&View>, event: &StoredEvent) -> Message {
    let resource: ResourceKey =
        serde_json::from_str(event.data()).expect("a resource has an id and isDeleted");
    let operation = match view.and_then(|view| event.view_change(view)) {
        Some(ViewChange::Enter) => "insert",
        Some(ViewChange::Update) => "update",
        Some(ViewChange::Leave) => "delete",
        // A change to a deleted resource (a category rename touches its deleted Funkos
        // too) keeps it out of a client's state.
        None if resource.is_deleted => "delete",
        None => match event.kind {
            EventKind::Create => "insert",
            EventKind::Update => "update",
            EventKind::Delete => "delete",
        },
    };
    let value: &RawValue = serde_json::from_str(event.data()).expect("events carry JSON");
    let parts: EventParts<'_> = serde_json::from_str(event.json.get()).expect("an event's JSON");
    Change {
        kind: stream.as_str(),
        key: resource.id.to_string(),
        value,
        old_value: event.before().and_then(|b| serde_json::from_str(b).ok()),
        headers: ChangeHeaders {
            operation,
            timestamp: parts.created_at,
        },
    }
    .render()
}

/// A State Protocol control message.
fn control_message(control: &str, at: &str) -> Message {
    serde_json::value::to_raw_value(
        &serde_json::json!({"headers": {"control": control, "offset": at}}),
    )
    .expect("a control message serializes")
}

/// The messages of a snapshot: `snapshot-start`, an `insert` per current row,
/// `snapshot-end`; and the cursor the rows were read at.
async fn snapshot(
    state: &AppState,
    stream: StreamName,
    view: Option<&View>,
) -> Result<(Vec<Message>, i64), ApiError> {
    let mut tx = state.tail.db().begin_read().await?;
    // One transaction is one snapshot: the rows are those of the head read here.
    let (_floor, head) = db::events::bounds(&mut tx).await?;
    let rows: Vec<(i64, String, String)> = match stream {
        StreamName::Funkos => db::funkos::list(&mut tx, &View::everything(view))
            .await?
            .0
            .into_iter()
            .map(|f| (f.id, f.to_json_string(), f.updated_at))
            .collect(),
        StreamName::Categories => db::categories::list(&mut tx, false)
            .await?
            .into_iter()
            .map(|c| (c.id, c.to_json_string(), c.updated_at))
            .collect(),
    };
    tx.commit().await?;
    let at = Offset(head).to_string();
    let mut messages = Vec::with_capacity(rows.len() + 2);
    messages.push(control_message("snapshot-start", &at));
    for (id, json, updated_at) in &rows {
        messages.push(
            Change {
                kind: stream.as_str(),
                key: id.to_string(),
                value: serde_json::from_str(json).expect("a resource serializes to JSON"),
                old_value: None,
                headers: ChangeHeaders {
                    operation: "insert",
                    timestamp: updated_at,
                },
            }
            .render(),
        );
    }
    messages.push(control_message("snapshot-end", &at));
    Ok((messages, head))
}

/// Messages as the JSON array a read answers.
fn json_array(messages: &[Message]) -> String {
    serde_json::to_string(messages).expect("messages serialize")
}

/// What a read gathered: messages, where the next read starts, and whether it reached the
/// head.
struct Gathered {
    messages: Vec<Message>,
    next: i64,
    up_to_date: bool,
}

/// Why a read could not go on from its offset.
enum Stop {
    /// The offset is older than retention (or was never issued here): 410 and a reset.
    Gone,
    Failed(ApiError),
}

/// Reads what follows the subscription's cursor now, without waiting: up to a batch of
/// messages, or [`SCANS`] reads of events the filter hides.
async fn gather(
    subscription: &mut Subscription,
    stream: StreamName,
    view: Option<&View>,
) -> Result<Gathered, Stop> {
    let mut gathered = Gathered {
        messages: Vec::new(),
        next: subscription.cursor(),
        up_to_date: false,
    };
    for _ in 0..SCANS {
        match subscription.poll_now(BATCH).await {
            Some(Next::Events { events, cursor }) => {
                gathered
                    .messages
                    .extend(events.iter().map(|e| change_message(stream, view, e)));
                gathered.next = cursor;
                if gathered.messages.len() >= BATCH {
                    break;
                }
            }
            None => {
                gathered.up_to_date = true;
                break;
            }
            // Pruned under this read: what was read stands, and the next read from its
            // offset is answered 410.
            Some(Next::Reset(_)) if gathered.messages.is_empty() => return Err(Stop::Gone),
            Some(Next::Reset(_)) => break,
            Some(Next::End { .. }) if gathered.messages.is_empty() => {
                return Err(Stop::Failed(ApiError::Unavailable(
                    "the stream is unavailable (shutting down, or the database is down); \
                     retry later"
                        .to_owned(),
                )));
            }
            Some(Next::End { .. }) => break,
        }
    }
    Ok(gathered)
}

/// The answer of a read of a Durable Stream: built here, documented by [`ApiResponse`].
pub(crate) struct DurableAnswer(poem::Response);

impl poem::IntoResponse for DurableAnswer {
    fn into_response(self) -> poem::Response {
        self.0
    }
}

/// What one answer's headers say.
struct Meta<'a> {
    stream: StreamName,
    next: i64,
    up_to_date: bool,
    /// The protocol's collapsing cursor.
    cursor: Option<String>,
    /// Where the answered range starts, for its `ETag` (`None`: no `ETag`).
    range_from: Option<&'a str>,
    cache: &'static str,
}

impl Meta<'_> {
    fn etag(&self) -> Option<String> {
        self.range_from
            .map(|from| format!("\"{}:{from}:{}\"", self.stream.as_str(), Offset(self.next)))
    }

    fn apply(&self, builder: poem::ResponseBuilder) -> poem::ResponseBuilder {
        let mut builder = builder
            .header("Stream-Next-Offset", Offset(self.next).to_string())
            .header(header::CACHE_CONTROL, self.cache)
            .header("X-Content-Type-Options", "nosniff")
            .header("Cross-Origin-Resource-Policy", "cross-origin");
        if self.up_to_date {
            builder = builder.header("Stream-Up-To-Date", "true");
        }
        if let Some(cursor) = &self.cursor {
            builder = builder.header("Stream-Cursor", cursor.as_str());
        }
        if let Some(etag) = self.etag() {
            builder = builder.header(header::ETAG, etag);
        }
        builder
    }
}

impl DurableAnswer {
    /// 200 with the messages, or 304 when the client holds this very range already.
    fn messages(meta: &Meta<'_>, messages: &[Message], if_none_match: Option<&str>) -> Self {
        let builder = meta.apply(poem::Response::builder());
        if let (Some(etag), Some(held)) = (meta.etag(), if_none_match)
            && held.split(',').any(|tag| tag.trim() == etag)
        {
            return Self(builder.status(StatusCode::NOT_MODIFIED).finish());
        }
        Self(
            builder
                .content_type("application/json")
                .body(json_array(messages)),
        )
    }

    /// 204: a long-poll that timed out.
    fn no_content(meta: &Meta<'_>) -> Self {
        Self(
            meta.apply(poem::Response::builder())
                .status(StatusCode::NO_CONTENT)
                .finish(),
        )
    }

    /// 410: the offset cannot be served; the problem carries the `reset` to follow.
    fn gone() -> Self {
        let body = GoneProblem {
            kind: "about:blank".to_owned(),
            title: "Gone".to_owned(),
            status: 410,
            detail: "this offset is older than the stream's retention, or was not issued by \
                     this server: start again from offset -1 (a snapshot)"
                .to_owned(),
            errors: None,
            control: ResetControl {
                headers: ResetHeaders {
                    control: ResetKind::Reset,
                    offset: "-1".to_owned(),
                },
            },
        };
        Self(
            poem::Response::builder()
                .status(StatusCode::GONE)
                .content_type(PROBLEM_CONTENT_TYPE)
                .header(header::CACHE_CONTROL, NO_STORE)
                .body(body.to_json_string()),
        )
    }
}

/// One SSE event.
fn sse_event(name: &str, data: &str) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

/// A `control` event: where to resume, the collapsing cursor, and whether the stream is at
/// its head.
fn sse_control(next: i64, cursor: &str, up_to_date: bool) -> Bytes {
    let control = DurableControl {
        stream_next_offset: Offset(next).to_string(),
        stream_cursor: cursor.to_owned(),
        up_to_date: up_to_date.then_some(true),
    };
    sse_event("control", &control.to_json_string())
}

/// An SSE response: the snapshot when the read starts at the beginning, then a `data` event
/// per step of the subscription with its `control` after it; ends after [`SSE_LIFETIME`],
/// at shutdown, or when the log is pruned under it (the reconnect is then answered 410).
struct SseRead {
    subscription: Subscription,
    stream: StreamName,
    view: Option<View>,
    snapshot: Option<Vec<Message>>,
    client_cursor: Option<i64>,
    slot: crate::limits::StreamSlot,
    keep_alive: Duration,
}

impl SseRead {
    fn into_answer(self) -> DurableAnswer {
        let Self {
            mut subscription,
            stream,
            view,
            snapshot,
            client_cursor,
            slot,
            keep_alive,
        } = self;
        let body = async_stream::stream! {
            let _slot = slot;
            let delivered = METRICS.delivered_counter(Transport::DurableSse);
            let ends = Instant::now() + SSE_LIFETIME;
            let mut sent_up_to: Option<i64> = None;
            let mut pending: Vec<Message> = snapshot.unwrap_or_default();
            let mut next = subscription.cursor();
            while Instant::now() < ends {
                // Gather a batch, then send it with its control once the subscription is
                // at the head (or the batch is full).
                let step = subscription.poll_now(BATCH).await;
                let up_to_date = match step {
                    Some(Next::Events { events, cursor }) => {
                        delivered.inc_by(events.len() as u64);
                        pending.extend(events.iter().map(|e| change_message(stream, view.as_ref(), e)));
                        next = cursor;
                        if pending.len() < BATCH {
                            continue;
                        }
                        false
                    }
                    None => true,
                    Some(Next::Reset(_) | Next::End { .. }) => break,
                };
                let cursor = collapsing_cursor(client_cursor);
                if !pending.is_empty() {
                    yield Ok::<_, std::io::Error>(sse_event("data", &json_array(&pending)));
                    pending.clear();
                    yield Ok(sse_control(next, &cursor, up_to_date));
                    sent_up_to = Some(next);
                } else if sent_up_to != Some(next) {
                    yield Ok(sse_control(next, &cursor, up_to_date));
                    sent_up_to = Some(next);
                }
                if !up_to_date {
                    continue;
                }
                // At the head: wait for a commit, with keep-alive comments while idle.
                let mut woke = false;
                while !woke {
                    tokio::select! {
                        () = subscription.wait() => woke = true,
                        () = tokio::time::sleep_until(ends) => break,
                        () = tokio::time::sleep(keep_alive) => yield Ok(Bytes::from_static(b":\n\n")),
                    }
                }
                if !woke {
                    break;
                }
            }
        };
        DurableAnswer(
            poem::Response::builder()
                .content_type("text/event-stream")
                .header(header::CACHE_CONTROL, NO_STORE)
                .header("X-Accel-Buffering", "no")
                .header("X-Content-Type-Options", "nosniff")
                .header("Cross-Origin-Resource-Policy", "cross-origin")
                .body(poem::Body::from_bytes_stream(body)),
        )
    }
}

#[OpenApi(tag = "ApiTags::Stream")]
impl DurableApi {
    /// Durable Stream (read)
    ///
    /// The Durable Streams protocol's read side in JSON mode, with the State Protocol's
    /// messages: `funkos` and `categories`. Without `live`, a catch-up read; `live=long-poll`
    /// waits for data (200) up to `timeout` (204 without); `live=sse` streams `data` and
    /// `control` events. From `offset=-1` (or none), a snapshot of the current rows between
    /// `snapshot-start` and `snapshot-end` comes first. Resume with `Stream-Next-Offset`
    /// (or a `control` event's `streamNextOffset`). `Stream-Cursor` here is the protocol's
    /// collapsing cursor, to echo as `cursor`. An offset older than retention answers 410
    /// with a `reset` control message: start again from `-1`.
    #[oai(
        path = "/streams/:name",
        method = "get",
        operation_id = "readDurableStream"
    )]
    #[allow(
        clippy::too_many_arguments,
        reason = "one argument per documented parameter"
    )]
    async fn read(
        &self,
        state: Data<&AppState>,
        request: &poem::Request,
        /// The stream: `funkos` or `categories`.
        name: Path<String>,
        /// `-1` (the default): from the beginning, a snapshot first; `now`: from the head;
        /// else an offset this server issued.
        offset: Query<Option<String>>,
        /// `long-poll` or `sse`; absent: a catch-up read.
        live: Query<Option<String>>,
        /// The `Stream-Cursor` of the previous answer (for caches that collapse requests).
        cursor: Query<Option<String>>,
        /// Long-poll only: seconds to wait for data, 0..=60 (default 25).
        timeout: Query<Option<u64>>,
        /// A view of `funkos`: only Funkos of this category (any case). Entering the view is
        /// an `insert`, leaving it a `delete`.
        category: Query<Option<String>>,
        /// A view of `funkos`: only Funkos whose name or description contains this.
        q: Query<Option<String>>,
        /// A view of `funkos`: only Funkos at this price or more.
        #[oai(name = "minPrice")]
        min_price: Query<Option<f64>>,
        /// A view of `funkos`: only Funkos at this price or less.
        #[oai(name = "maxPrice")]
        max_price: Query<Option<f64>>,
        /// An `ETag` of an earlier answer: 304 when this one would be the same.
        #[oai(name = "If-None-Match")]
        if_none_match: Header<Option<String>>,
    ) -> ApiResult<DurableAnswer, DurableErrors> {
        let stream = StreamName::of(&name.0)?;
        let from = parse_offset(offset.0.as_deref())?;
        let live = parse_live(live.0.as_deref())?;
        if live != Live::CatchUp && offset.0.is_none() {
            return Err(bad(
                "offset",
                "given with live (-1, now, or an offset)".to_owned(),
                "",
            )
            .into());
        }
        let client_cursor = parse_cursor(cursor.0.as_deref())?;
        // Checked on every read (clients send their extra parameters on each), used by
        // long-polls.
        let timeout = match timeout.0 {
            None => Duration::from_secs(POLL_DEFAULT_TIMEOUT),
            Some(secs) if secs <= POLL_MAX_TIMEOUT => Duration::from_secs(secs),
            Some(secs) => {
                return Err(bad(
                    "timeout",
                    format!("at most {POLL_MAX_TIMEOUT} seconds"),
                    &secs.to_string(),
                )
                .into());
            }
        };
        let view = view_of(category.0, q.0, min_price.0, max_price.0)?;
        if view.is_some() && stream != StreamName::Funkos {
            return Err(ApiError::bad_request(
                "category, q, minPrice and maxPrice are views of the funkos stream",
            )
            .into());
        }
        let filter = Filter::parse(Some(stream.entity().as_str()), std::iter::empty())?
            .with_view(view.clone())?;
        let if_none_match = if_none_match.0.as_deref();
        let transport = match live {
            Live::CatchUp => None,
            Live::LongPoll => Some(Transport::DurablePoll),
            Live::Sse => Some(Transport::DurableSse),
        };
        let slot = transport
            .map(|t| state.slots.acquire(t, client_ip(request)))
            .transpose()?;

        // The snapshot, for a read from the beginning; else the subscription's start.
        let (snapshot, start) = match from {
            ReadFrom::Beginning => {
                let (messages, head) = snapshot(&state, stream, view.as_ref()).await?;
                (Some(messages), Start::After(head))
            }
            ReadFrom::Now => (None, Start::Now),
            ReadFrom::After(cursor) => (None, Start::After(cursor)),
        };
        let (mut subscription, reset) =
            Subscription::open(state.tail.clone(), start, filter).await?;
        if reset.is_some() {
            return Ok(DurableAnswer::gone());
        }
        let range_from = match from {
            ReadFrom::Beginning => "-1".to_owned(),
            _ => Offset(subscription.cursor()).to_string(),
        };
        // On every answer with data too, so a client's first long-poll already has one.
        let live_cursor = Some(collapsing_cursor(client_cursor));

        if live == Live::Sse {
            let slot = slot.expect("an SSE read holds a slot");
            return Ok(SseRead {
                subscription,
                stream,
                view,
                snapshot,
                client_cursor,
                slot,
                keep_alive: state.settings.keepalive,
            }
            .into_answer());
        }
        if let Some(messages) = snapshot {
            // The snapshot is all there was at its cursor: answered at once, live or not.
            let meta = Meta {
                stream,
                next: subscription.cursor(),
                up_to_date: true,
                cursor: live_cursor,
                range_from: Some(&range_from),
                cache: CACHEABLE,
            };
            return Ok(DurableAnswer::messages(&meta, &messages, if_none_match));
        }
        if from == ReadFrom::Now && live == Live::CatchUp {
            let meta = Meta {
                stream,
                next: subscription.cursor(),
                up_to_date: true,
                cursor: None,
                range_from: None,
                cache: NO_STORE,
            };
            return Ok(DurableAnswer::messages(&meta, &[], None));
        }
        let deadline = Instant::now() + timeout;
        loop {
            let gathered = match gather(&mut subscription, stream, view.as_ref()).await {
                Ok(gathered) => gathered,
                Err(Stop::Gone) => return Ok(DurableAnswer::gone()),
                Err(Stop::Failed(err)) => return Err(err.into()),
            };
            let waits = live == Live::LongPoll
                && gathered.messages.is_empty()
                && gathered.up_to_date
                && Instant::now() < deadline;
            if waits
                && tokio::time::timeout_at(deadline, subscription.wait())
                    .await
                    .is_ok()
            {
                continue;
            }
            let meta = Meta {
                stream,
                next: gathered.next,
                up_to_date: gathered.up_to_date,
                cursor: live_cursor,
                range_from: Some(&range_from),
                cache: CACHEABLE,
            };
            if live == Live::LongPoll && gathered.messages.is_empty() && gathered.up_to_date {
                let meta = Meta {
                    cache: NO_STORE,
                    range_from: None,
                    ..meta
                };
                return Ok(DurableAnswer::no_content(&meta));
            }
            if live == Live::LongPoll {
                METRICS.delivered(Transport::DurablePoll, gathered.messages.len());
            }
            return Ok(DurableAnswer::messages(
                &meta,
                &gathered.messages,
                if_none_match,
            ));
        }
    }

    /// Durable Stream metadata
    ///
    /// The stream's tail offset (`Stream-Next-Offset`) and content type, without a body.
    #[oai(
        path = "/streams/:name",
        method = "head",
        operation_id = "durableStreamMetadata"
    )]
    async fn metadata(
        &self,
        state: Data<&AppState>,
        /// The stream: `funkos` or `categories`.
        name: Path<String>,
    ) -> ApiResult<DurableAnswer, DurableErrors> {
        let stream = StreamName::of(&name.0)?;
        let (subscription, _) =
            Subscription::open(state.tail.clone(), Start::Now, Filter::default()).await?;
        let meta = Meta {
            stream,
            next: subscription.cursor(),
            up_to_date: true,
            cursor: None,
            range_from: None,
            cache: NO_STORE,
        };
        Ok(DurableAnswer(
            meta.apply(poem::Response::builder())
                .content_type("application/json")
                .finish(),
        ))
    }
}

/// A State Protocol message as a read's JSON array carries it: a change (`type`, `key`,
/// `value`, `headers.operation`) or a control message (`headers.control`).
#[derive(Object)]
#[oai(rename = "StateMessage")]
pub(crate) struct StateMessage {
    /// A change: the stream's entity (`funkos`, `categories`).
    #[oai(rename = "type")]
    pub kind: Option<String>,
    /// A change: the resource's id.
    pub key: Option<String>,
    /// A change: the resource as `GET` returns it after the change.
    pub value: Option<serde_json::Value>,
    /// A Funko update or delete: what the log recorded of the Funko before it (name,
    /// description, price, category, isDeleted).
    pub old_value: Option<serde_json::Value>,
    pub headers: StateHeaders,
}

#[derive(Object)]
pub(crate) struct StateHeaders {
    /// A change: what it does.
    pub operation: Option<StateOperation>,
    /// A change: when it committed (RFC 3339).
    pub timestamp: Option<String>,
    /// A control message.
    pub control: Option<StateControl>,
    /// A control message: the offset it refers to (`-1` on a reset: start again from the
    /// beginning).
    pub offset: Option<String>,
}

#[derive(Enum)]
#[oai(rename_all = "lowercase")]
pub(crate) enum StateOperation {
    Insert,
    Update,
    Delete,
}

#[derive(Enum)]
#[oai(rename_all = "kebab-case")]
pub(crate) enum StateControl {
    SnapshotStart,
    SnapshotEnd,
    Reset,
}

/// The `data` of an SSE `control` event.
#[derive(Object)]
#[oai(rename_all = "camelCase")]
pub(crate) struct DurableControl {
    pub stream_next_offset: String,
    /// The protocol's collapsing cursor.
    pub stream_cursor: String,
    #[oai(skip_serializing_if_is_none)]
    pub up_to_date: Option<bool>,
}

/// One Server-Sent Event of a Durable Stream.
#[derive(Object)]
pub(crate) struct DurableServerSentEvent {
    pub event: DurableEventName,
    /// `data`: a JSON array of `StateMessage`s; `control`: a `DurableControl`.
    pub data: String,
}

#[derive(Enum)]
#[oai(rename_all = "lowercase")]
pub(crate) enum DurableEventName {
    Data,
    Control,
}

/// A 410: the problem, with the State Protocol's `reset` to follow.
#[derive(Object)]
#[oai(rename = "GoneProblem")]
pub(crate) struct GoneProblem {
    #[oai(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    #[oai(skip_serializing_if_is_none)]
    pub errors: Option<Vec<FieldProblem>>,
    /// `{"headers":{"control":"reset","offset":"-1"}}`: clear what was read, read from -1.
    pub control: ResetControl,
}

#[derive(Object)]
pub(crate) struct ResetControl {
    pub headers: ResetHeaders,
}

#[derive(Object)]
pub(crate) struct ResetHeaders {
    pub control: ResetKind,
    pub offset: String,
}

#[derive(Enum)]
#[oai(rename_all = "lowercase")]
pub(crate) enum ResetKind {
    Reset,
}

fn header_meta(name: &str, description: &str) -> MetaHeader {
    MetaHeader {
        name: name.to_owned(),
        description: Some(description.to_owned()),
        required: false,
        deprecated: false,
        schema: String::schema_ref(),
    }
}

impl ApiResponse for DurableAnswer {
    fn meta() -> MetaResponses {
        let next = || header_meta("Stream-Next-Offset", "The offset to read from next.");
        let up_to_date = || {
            header_meta(
                "Stream-Up-To-Date",
                "`true` when the answer reaches the stream's head.",
            )
        };
        let cursor = || {
            header_meta(
                "Stream-Cursor",
                "The protocol's collapsing cursor, to echo as `cursor` (not a \
                 change-stream cursor).",
            )
        };
        let etag = || header_meta("ETag", "`\"stream:from:to\"`: the range answered.");
        let cache = || header_meta("Cache-Control", "Cacheable ranges, `no-store` heads.");
        MetaResponses {
            responses: vec![
                MetaResponse {
                    description: "The messages from the offset (a JSON array), or the stream \
                                  of `data` and `control` events (`live=sse`); for HEAD, \
                                  the metadata only.",
                    status: Some(200),
                    status_range: None,
                    content: vec![
                        MetaMediaType {
                            content_type: "application/json",
                            schema: Vec::<StateMessage>::schema_ref(),
                        },
                        MetaMediaType {
                            content_type: "text/event-stream",
                            schema: DurableServerSentEvent::schema_ref(),
                        },
                    ],
                    headers: vec![next(), up_to_date(), cursor(), etag(), cache()],
                },
                MetaResponse {
                    description: "A long-poll's timeout: nothing new.",
                    status: Some(204),
                    status_range: None,
                    content: vec![],
                    headers: vec![next(), up_to_date(), cursor(), cache()],
                },
                MetaResponse {
                    description: "The range of `If-None-Match`, unchanged.",
                    status: Some(304),
                    status_range: None,
                    content: vec![],
                    headers: vec![next(), etag(), cache()],
                },
                MetaResponse {
                    description: "The offset is older than retention (or was not issued \
                                  here): the body's `control` is a `reset`; read again \
                                  from -1.",
                    status: Some(410),
                    status_range: None,
                    content: vec![MetaMediaType {
                        content_type: PROBLEM_CONTENT_TYPE,
                        schema: GoneProblem::schema_ref(),
                    }],
                    headers: vec![],
                },
            ],
        }
    }

    fn register(registry: &mut Registry) {
        Vec::<StateMessage>::register(registry);
        DurableServerSentEvent::register(registry);
        DurableControl::register(registry);
        GoneProblem::register(registry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_sort_as_text_as_cursors_do() {
        let cursors = [0, 7, 10, 99, 100, 123_456_789, i64::MAX];
        let offsets: Vec<String> = cursors.iter().map(|&c| Offset(c).to_string()).collect();
        let mut sorted = offsets.clone();
        sorted.sort();
        assert_eq!(offsets, sorted);
        for (cursor, text) in cursors.iter().zip(&offsets) {
            assert_eq!(text.len(), OFFSET_DIGITS);
            assert_eq!(
                parse_offset(Some(text)).ok(),
                Some(ReadFrom::After(*cursor))
            );
        }
    }

    #[test]
    fn offsets_are_the_sentinels_or_ours() {
        assert_eq!(parse_offset(None).ok(), Some(ReadFrom::Beginning));
        assert_eq!(parse_offset(Some("-1")).ok(), Some(ReadFrom::Beginning));
        assert_eq!(parse_offset(Some("now")).ok(), Some(ReadFrom::Now));
        let too_big = "9".repeat(OFFSET_DIGITS);
        for bad in ["", "7", "-2", "NOW", "0000000000000000000x", &too_big] {
            assert!(parse_offset(Some(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_collapsing_cursor_never_goes_back() {
        let now: i64 = collapsing_cursor(None).parse().unwrap();
        assert_eq!(collapsing_cursor(Some(now - 5)), now.to_string());
        for client in [now, now + 1, now + 1000] {
            let next: i64 = collapsing_cursor(Some(client)).parse().unwrap();
            assert!(next > client && next <= client + 180, "{client} -> {next}");
        }
    }
}
