//! What the two WebSocket transports (`/ws` and Socket.IO) share: their socket settings, and
//! the [`Outbox`] a socket's one task queues its frames in and flushes from.

use std::{
    collections::VecDeque,
    future::poll_fn,
    io,
    task::{Context, Poll, ready},
};

use futures_util::{SinkExt, stream::SplitSink};
use poem::web::websocket::{Message, WebSocketConfig, WebSocketStream};

/// The largest message a socket client may send past which tungstenite refuses it, and how
/// much of a socket it reads at a time. tungstenite zero-fills its read buffer up to its size
/// before every read attempt, which also makes it resident: 4 KiB keeps an idle socket small
/// and a busy one cheap, and a 64 KiB frame takes a few reads more.
const READ_BUFFER_BYTES: usize = 4 * 1024;

/// The WebSocket settings of `/ws` and Socket.IO: frames and messages up to `max_bytes`.
pub(crate) fn socket_config(max_bytes: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .max_frame_size(Some(max_bytes))
        .max_message_size(Some(max_bytes))
}

/// Frames waiting for the client, and the socket's sending half.
pub(crate) struct Outbox {
    pub(crate) sink: SplitSink<WebSocketStream, Message>,
    /// Bounded by its producers: a socket's task reads its subscriptions, and its client's
    /// requests, only while this is short.
    pub(crate) queue: VecDeque<Message>,
    /// Frames were handed to the socket and not yet flushed.
    pub(crate) unflushed: bool,
}

impl Outbox {
    pub(crate) fn new(sink: SplitSink<WebSocketStream, Message>) -> Self {
        Self {
            sink,
            queue: VecDeque::new(),
            unflushed: false,
        }
    }

    pub(crate) fn push(&mut self, frame: Message) {
        self.queue.push_back(frame);
    }

    pub(crate) fn has_work(&self) -> bool {
        !self.queue.is_empty() || self.unflushed
    }

    /// Writes the queue and flushes it. Cancel-safe: a frame leaves the queue only when the
    /// socket takes it, so a `select!` may drop this at any await.
    pub(crate) async fn flush(&mut self) -> io::Result<()> {
        poll_fn(|cx| self.poll_flush(cx)).await
    }

    pub(crate) fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.queue.is_empty() {
            ready!(self.sink.poll_ready_unpin(cx))?;
            let frame = self.queue.pop_front().expect("not empty");
            self.sink.start_send_unpin(frame)?;
            self.unflushed = true;
        }
        if self.unflushed {
            ready!(self.sink.poll_flush_unpin(cx))?;
            self.unflushed = false;
        }
        Poll::Ready(Ok(()))
    }
}
