//! One `/ws` socket's task: a `select!` over the client's frames, the subscription's steps,
//! the writes in flight, the heartbeat and shutdown, with the frames for the client queued in
//! an [`Outbox`] that is flushed meanwhile.

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
    pub(super) subscription: Subscription,
    /// This socket's place among the open streams, freed when the task ends.
    pub(super) _slot: StreamSlot,
}

type WriteFuture = BoxFuture<'static, Message>;

impl Session {
    /// The socket's one task: a `select!` over the client's frames, the subscription's next
    /// step, finished writes, the heartbeat and shutdown, with the outbox flushing meanwhile.
    pub(super) async fn run(mut self, socket: WebSocketStream, head: i64, reset: Option<Reset>) {
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
                // Read only when the previous batch has been handed to the socket: a client
                // that stops reading stops the subscription, which falls behind the bus's
                // tail and is cut off when it next reads, exactly as on SSE.
                step = self.subscription.next(BATCH), if out.is_empty() => match step {
                    Next::Events { events, .. } => {
                        METRICS.delivered(Transport::Ws, events.len());
                        for event in events {
                            out.push(Message::Text(event.json.get().to_owned()));
                        }
                    }
                    Next::Reset(reset) => out.push(protocol::reset(&reset)),
                    Next::End { why, .. } => break Ending::ByServer(why.into()),
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
                out.push(reason.frame(self.subscription.cursor()));
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
                        self.subscription = subscription;
                        if !request_id.is_null() {
                            let ack = Answer {
                                status: 200,
                                body: Value::Null,
                                cursor: self.subscription.cursor(),
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
