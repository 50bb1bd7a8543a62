//! A session's transport: the carrier it is on (long-polling, a WebSocket being probed, or the
//! upgraded WebSocket) and its packets for the client, in order, until a poll or the socket
//! takes them.

use std::{collections::VecDeque, future::poll_fn, task::Poll};

use futures_util::{StreamExt, stream::SplitStream};
use poem::web::websocket::{Message, WebSocketStream};
use tokio::{sync::oneshot, time::Instant};

use super::{MAX_PAYLOAD, packet, session::Answer};
use crate::{
    http::fanout::{StartedWsWriter, WsWriter},
    stream::socket::Outbox,
};

/// A WebSocket for a session, and the fan-out's way to its connection (started: from its
/// first frame on, the session's writes and the fan-out's take turns).
pub(super) struct SessionSocket {
    pub(super) socket: WebSocketStream,
    pub(super) fanout: Option<StartedWsWriter>,
}

impl SessionSocket {
    /// Before anything is written on `socket`.
    pub(super) fn new(socket: WebSocketStream, writer: Option<WsWriter>) -> Self {
        Self {
            socket,
            fanout: writer.map(WsWriter::start),
        }
    }
}

#[expect(
    clippy::large_enum_variant,
    reason = "one per session, which spends its life in the largest variant"
)]
pub(super) enum Carrier {
    /// Packets wait in `queue` for the client's next GET.
    Polling,
    /// A WebSocket is being probed (`upgrading` once it answered `3probe`); polling goes on,
    /// answered with `noop` once upgrading, until the client sends `5`.
    Probing {
        socket: SessionSocket,
        by: Instant,
        upgrading: bool,
    },
    /// Live namespaces' events may go through the fan-out, when it has `fanout`.
    WebSocket {
        out: Outbox,
        incoming: SplitStream<WebSocketStream>,
        fanout: Option<StartedWsWriter>,
    },
}

/// The carrier, and what waits for a polling client.
pub(super) struct Transport {
    pub(super) carrier: Carrier,
    /// Packets for a polling client, in order.
    pub(super) queue: VecDeque<String>,
    pub(super) pending_poll: Option<oneshot::Sender<Answer>>,
}

impl Transport {
    pub(super) fn new(carrier: Carrier) -> Self {
        Self {
            carrier,
            queue: VecDeque::new(),
            pending_poll: None,
        }
    }

    pub(super) fn send(&mut self, packet: String) {
        match &mut self.carrier {
            Carrier::WebSocket { out, .. } => out.push(Message::Text(packet)),
            _ => self.queue.push_back(packet),
        }
    }

    pub(super) fn backlog(&self) -> usize {
        match &self.carrier {
            Carrier::WebSocket { out, .. } => out.queue.len(),
            _ => self.queue.len(),
        }
    }

    /// Hands the queued packets to a waiting GET, as one payload of at most `MAX_PAYLOAD`.
    pub(super) fn answer_poll(&mut self) {
        if self.queue.is_empty() {
            return;
        }
        let Some(poll) = self.pending_poll.take() else {
            return;
        };
        let mut body = self.queue.pop_front().expect("not empty");
        while let Some(next) = self.queue.front()
            && body.len() + next.len() < MAX_PAYLOAD
        {
            body.push(packet::SEPARATOR);
            body.push_str(next);
            self.queue.pop_front();
        }
        // A GET that went away gives its packets back, in order, for the next one.
        if let Err(Answer::Packets(body)) = poll.send(Answer::Packets(body)) {
            for packet in body.rsplit(packet::SEPARATOR) {
                self.queue.push_front(packet.to_owned());
            }
        }
    }
}

/// What the session's WebSocket did: flushed its queue, or gave a frame.
pub(super) enum SocketEvent {
    Flushed(std::io::Result<()>),
    Frame(Option<Result<Message, std::io::Error>>),
}

/// Flushes the WebSocket's queue while reading its frames (when `read`); pending while
/// neither has anything to do, and always over polling.
pub(super) async fn socket_event(carrier: &mut Carrier, read: bool) -> SocketEvent {
    poll_fn(|cx| match carrier {
        Carrier::WebSocket { out, incoming, .. } => {
            if out.has_work()
                && let Poll::Ready(flushed) = out.poll_flush(cx)
            {
                return Poll::Ready(SocketEvent::Flushed(flushed));
            }
            if read && let Poll::Ready(frame) = incoming.poll_next_unpin(cx) {
                return Poll::Ready(SocketEvent::Frame(frame));
            }
            Poll::Pending
        }
        Carrier::Probing { socket, .. } if read => {
            socket.socket.poll_next_unpin(cx).map(SocketEvent::Frame)
        }
        _ => Poll::Pending,
    })
    .await
}

pub(super) fn probe_deadline(carrier: &Carrier) -> Option<Instant> {
    match carrier {
        Carrier::Probing { by, .. } => Some(*by),
        _ => None,
    }
}
