//! One `/ws` socket's task: a `select!` over the client's frames, the stream's steps, the
//! writes in flight, the heartbeat and shutdown, with the frames for the client queued in an
//! [`Outbox`] that is flushed meanwhile. The stream is a [`Feed`]: the subscription's replay,
//! then, live, the fan-out's writes (where the connection allows it).

use std::{io, time::Duration};

use futures_util::{StreamExt, future::BoxFuture, stream::FuturesUnordered};
use poem::web::websocket::{Message, WebSocketStream};
use serde_json::Value;
use tokio::time::Instant;

use super::{
    MAX_WRITES_IN_FLIGHT,
    protocol::{self, CloseReason, Command},
};
use crate::{
    api::AppState,
    auth::Credentials,
    domain::event::Reset,
    error::ApiError,
    events::{BATCH, Next, Subscription},
    http::fanout::{Ending as LiveEnding, Membership, StartedWsWriter, Wrap, WsWriter},
    limits::StreamSlot,
    metrics::{METRICS, Transport},
    service::writes::{self, Answer},
    stream::socket::Outbox,
};

/// Frames queued for a client past which the server stops reading its frames, so a client
/// that sends without reading the answers cannot grow the queue.
const MAX_QUEUED_FRAMES: usize = 512;
/// How long the frames before a close frame, and the close frame itself, may take to flush.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// How a socket's loop ended.
enum Ending {
    /// The client closed or went away: nothing more to tell it.
    ByClient,
    /// The server closes, with this reason.
    ByServer(CloseReason),
}

/// One socket's state, owned by its task.
pub(super) struct Session {
    pub(super) state: AppState,
    pub(super) credentials: Credentials,
    pub(super) feed: Feed,
    /// The fan-out's way to this socket, when it has one.
    pub(super) writer: Option<WsWriter>,
    /// This socket's place among the open streams, freed when the task ends.
    pub(super) _slot: StreamSlot,
}

/// Where a socket's events come from.
pub(super) enum Feed {
    /// Its subscription: the replay, and live events where the fan-out cannot write.
    Replay(Subscription),
    /// The fan-out writes its live events.
    Live(Membership),
}

/// What the feed did.
enum Fed {
    Next(Next),
    /// The fan-out's delivery ended.
    Ended(LiveEnding),
}

impl Feed {
    /// The next step: the subscription's, handing the socket to the fan-out once the
    /// subscription is live; or, live, the fan-out's delivery until it ends.
    async fn next(&mut self, fanout: Option<&StartedWsWriter>, write_stall: Duration) -> Fed {
        loop {
            match self {
                Self::Replay(subscription) => match subscription.poll_now(BATCH).await {
                    Some(next) => return Fed::Next(next),
                    None => match fanout {
                        Some(fanout) => {
                            let filter = subscription.filter().clone();
                            *self =
                                Self::Live(fanout.join(Wrap::Plain, filter, subscription.cursor()));
                        }
                        None => subscription.wait().await,
                    },
                },
                Self::Live(membership) => {
                    return Fed::Ended(membership.run(None, write_stall).await);
                }
            }
        }
    }

    fn cursor(&self) -> i64 {
        match self {
            Self::Replay(subscription) => subscription.cursor(),
            Self::Live(membership) => membership.cursor(),
        }
    }

    /// Whether it may take its next step now: the replay only when the previous batch has
    /// been flushed (so the fan-out's first writes follow it on the wire); the fan-out holds
    /// back by itself.
    fn ready(&self, out: &Outbox) -> bool {
        matches!(self, Self::Live(_)) || !out.has_work()
    }

    /// Stops the fan-out's delivery for good (finishing a frame it has half written, so the
    /// socket's own frames can follow); returns the cursor after the last event the client
    /// was sent.
    async fn stop(&self, write_stall: Duration) -> i64 {
        match self {
            Self::Replay(subscription) => subscription.cursor(),
            Self::Live(membership) => {
                // A socket that fails here is gone: the close frame after it goes nowhere.
                let _ = membership.leave(write_stall).await;
                membership.cursor()
            }
        }
    }
}

type WriteFuture = BoxFuture<'static, Message>;

impl Session {
    /// The socket's one task: a `select!` over the client's frames, the subscription's next
    /// step, finished writes, the heartbeat and shutdown, with the outbox flushing meanwhile.
    pub(super) async fn run(mut self, socket: WebSocketStream, head: i64, reset: Option<Reset>) {
        // Before the first frame: the fan-out and tungstenite take turns from here on.
        let fanout = self.writer.take().map(WsWriter::start);
        let write_stall = self.state.settings.write_stall;
        let (sink, mut incoming) = socket.split();
        let mut out = Outbox::new(sink);
        out.push(protocol::welcome(head));
        if let Some(reset) = &reset {
            out.push(protocol::reset(reset));
        }
        let mut writes: FuturesUnordered<WriteFuture> = FuturesUnordered::new();
        let closing = self.state.tail.closing().clone();
        let keepalive = self.state.settings.keepalive;
        let mut last_heard = Instant::now();
        let mut pinged = false;
        // One heartbeat timer for the socket's life, re-armed only when it fires: a frame
        // just notes the time, so traffic costs no timer-wheel work.
        let heartbeat = tokio::time::sleep(keepalive);
        tokio::pin!(heartbeat);

        let end = loop {
            tokio::select! {
                flushed = out.flush(), if out.has_work() => {
                    if flushed.is_err() {
                        break Ending::ByClient;
                    }
                }
                // Not read while the client does not read its answers or has enough writes
                // in flight: back-pressure instead of an unbounded queue.
                frame = incoming.next(),
                    if out.queue.len() < MAX_QUEUED_FRAMES && writes.len() < MAX_WRITES_IN_FLIGHT =>
                {
                    last_heard = Instant::now();
                    pinged = false;
                    match frame {
                        None => break Ending::ByClient,
                        Some(Err(err)) => break self.read_failed(&err),
                        Some(Ok(Message::Close(_))) => break Ending::ByClient,
                        Some(Ok(message)) => self.on_message(message, &mut out, &mut writes).await,
                    }
                }
                // A client that stops reading stops the replay (see `Feed::ready`), which
                // falls behind the tail and is cut off when it next reads; live, the fan-out
                // cuts it off the same way. Exactly as on SSE.
                fed = self.feed.next(fanout.as_ref(), write_stall), if self.feed.ready(&out) => match fed {
                    Fed::Next(Next::Events { events, .. }) => {
                        METRICS.delivered(Transport::Ws, events.len());
                        for event in events {
                            out.push(Message::Text(event.json.get().to_owned()));
                        }
                    }
                    Fed::Next(Next::Reset(reset)) => out.push(protocol::reset(&reset)),
                    Fed::Next(Next::End { why, .. }) => break Ending::ByServer(why.into()),
                    Fed::Ended(LiveEnding::Clean(why)) => break Ending::ByServer(why.into()),
                    Fed::Ended(LiveEnding::Abort(_)) => break Ending::ByClient,
                },
                Some(answer) = writes.next(), if !writes.is_empty() => out.push(answer),
                () = &mut heartbeat => {
                    let silence_limit = if pinged { 2 * keepalive } else { keepalive };
                    let due = last_heard + silence_limit;
                    if Instant::now() < due {
                        // The client spoke since the timer was set.
                        heartbeat.as_mut().reset(due);
                        continue;
                    }
                    if pinged {
                        break Ending::ByServer(CloseReason::Unresponsive);
                    }
                    // Ahead of queued events: a client that reads slowly is not taken for
                    // a dead one.
                    out.queue.push_front(Message::Ping(Vec::new()));
                    pinged = true;
                    heartbeat.as_mut().reset(last_heard + 2 * keepalive);
                }
                () = closing.cancelled() => break Ending::ByServer(CloseReason::Shutdown),
            }
        };

        // The fan-out stops first: the frames below must not meet its writes.
        let cursor = self.feed.stop(write_stall).await;
        // Writes in flight finish (dropping one mid-commit could lose the wake-up that tells
        // the bus about its event) and are answered, unless the client is gone.
        while let Some(answer) = writes.next().await {
            out.push(answer);
        }
        match end {
            // Only the socket's own close reply (if the client sent a close) is left to send:
            // flushing sends it.
            Ending::ByClient => {
                out.queue.clear();
                out.unflushed = true;
            }
            Ending::ByServer(reason) => {
                tracing::debug!(reason = reason.as_str(), "closing a WebSocket");
                out.push(reason.frame(cursor));
            }
        }
        let _ = tokio::time::timeout(CLOSE_GRACE, out.flush()).await;
        // Wait for the client's close reply (or EOF), so the socket is not torn down with its
        // frames unread (which would reset the connection under the close frame). Not after a
        // frame too big: that frame would have to be read.
        if matches!(end, Ending::ByServer(reason) if reason != CloseReason::TooBig && reason != CloseReason::Unresponsive)
        {
            let _ = tokio::time::timeout(CLOSE_GRACE, async {
                while let Some(Ok(frame)) = incoming.next().await {
                    if frame.is_close() {
                        break;
                    }
                }
            })
            .await;
            let _ = tokio::time::timeout(CLOSE_GRACE, out.flush()).await;
        }
    }

    /// A read error ends the socket: a frame over the limit closes it with 1009, anything
    /// else means the connection is gone. poem flattens tungstenite's errors into
    /// `io::Error`s of kind `Other` carrying their text, so the capacity error is known by it
    /// (the 1009 test fails if that text changes).
    fn read_failed(&self, err: &io::Error) -> Ending {
        let text = err.to_string();
        if err.kind() == io::ErrorKind::Other && text.contains("Message too long") {
            Ending::ByServer(CloseReason::TooBig)
        } else {
            tracing::debug!(error = %err, "WebSocket read failed");
            Ending::ByClient
        }
    }

    async fn on_message(
        &mut self,
        message: Message,
        out: &mut Outbox,
        writes: &mut FuturesUnordered<WriteFuture>,
    ) {
        let text = match message {
            Message::Text(text) => text,
            Message::Binary(_) => {
                let err = ApiError::UnsupportedMediaType(
                    "binary frames are not accepted: send one JSON object per text frame".into(),
                );
                out.push(protocol::error(Value::Null, &err));
                return;
            }
            // The socket answers pings itself; a pong only proves the client is there.
            Message::Ping(_) | Message::Pong(_) | Message::Close(_) => return,
        };
        let (request_id, command) = protocol::parse_frame(&text);
        match command {
            Err(err) => out.push(protocol::error(request_id, &err)),
            Ok(Command::Ping) => out.push(protocol::pong(request_id)),
            Ok(Command::Subscribe { start, filter }) => {
                match Subscription::open(self.state.tail.clone(), start, filter).await {
                    Err(err) => out.push(protocol::error(request_id, &err)),
                    Ok((subscription, reset)) => {
                        self.feed.stop(self.state.settings.write_stall).await;
                        self.feed = Feed::Replay(subscription);
                        if !request_id.is_null() {
                            let ack = Answer {
                                status: 200,
                                body: Value::Null,
                                cursor: self.feed.cursor(),
                            };
                            out.push(protocol::result(request_id, ack));
                        }
                        if let Some(reset) = reset {
                            out.push(protocol::reset(&reset));
                        }
                    }
                }
            }
            Ok(Command::Write(write)) => {
                let authorized = self.credentials.authorize(&self.state.policy);
                let state = self.state.clone();
                writes.push(Box::pin(async move {
                    let outcome = match authorized {
                        Ok(()) => writes::perform(&state.store, write).await,
                        Err(err) => Err(err),
                    };
                    protocol::answer(request_id, outcome)
                }));
            }
        }
    }
}
