//! Connection-level protection against slow clients (poem exposes neither hyper's header-read
//! timeout nor its buffer sizes):
//! - a connection must finish sending its first request's headers within a deadline (the idle
//!   timeout alone does not stop a client that trickles a byte now and then);
//! - a connection whose writes make no progress for a while is closed. This is what cuts off
//!   a stream client that stopped reading: hyper stops polling a response body once its own
//!   buffer is full, so the stream (and the subscriber queue bound inside it) never runs
//!   again; failing the stalled write makes hyper drop the connection and free its buffers.
//!   The client resumes by cursor.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use poem::{
    http::uri::Scheme,
    listener::Acceptor,
    web::{LocalAddr, RemoteAddr},
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Wraps an acceptor so that each connection's first header block has a deadline.
pub struct HeaderTimeout<A> {
    inner: A,
    timeout: Duration,
    write_stall: Duration,
}

impl<A> HeaderTimeout<A> {
    /// `timeout`: for the first header block; `write_stall`: how long a write may wait for the
    /// peer to read before the connection is closed.
    pub fn new(inner: A, timeout: Duration, write_stall: Duration) -> Self {
        Self {
            inner,
            timeout,
            write_stall,
        }
    }
}

impl<A: Acceptor> Acceptor for HeaderTimeout<A> {
    type Io = HeaderDeadline<A::Io>;

    fn local_addr(&self) -> Vec<LocalAddr> {
        self.inner.local_addr()
    }

    async fn accept(&mut self) -> io::Result<(Self::Io, LocalAddr, RemoteAddr, Scheme)> {
        let (io, local, remote, scheme) = self.inner.accept().await?;
        let io = HeaderDeadline {
            inner: io,
            deadline: Some(Box::pin(tokio::time::sleep(self.timeout))),
            tail: [0; 3],
            write_stall: self.write_stall,
            stalled: None,
        };
        Ok((io, local, remote, scheme))
    }
}

/// A connection whose reads fail with `TimedOut` if the end of the first header block
/// (`\r\n\r\n`) has not arrived by the deadline.
pub struct HeaderDeadline<T> {
    inner: T,
    /// `None` once the headers are in.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The last bytes read, to find a `\r\n\r\n` split across reads.
    tail: [u8; 3],
    write_stall: Duration,
    /// Running while a write is waiting for the peer; reset by any progress.
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<T> HeaderDeadline<T> {
    /// Tracks a write's outcome: progress clears the stall timer; `Pending` starts it (and
    /// registers for its expiry, so the connection is woken to fail); expiry is an error.
    fn watch_write<R>(
        &mut self,
        cx: &mut Context<'_>,
        result: Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        if result.is_ready() {
            self.stalled = None;
            return result;
        }
        let timer = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(self.write_stall)));
        if timer.as_mut().poll(cx).is_ready() {
            tracing::info!("closing a connection whose peer stopped reading");
            crate::metrics::METRICS.slow_cut_off.inc();
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the peer stopped reading",
            )));
        }
        Poll::Pending
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for HeaderDeadline<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(deadline) = this.deadline.as_mut()
            && deadline.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "request headers took too long",
            )));
        }
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if this.deadline.is_some() && result.is_ready() {
            let new = &buf.filled()[before..];
            let mut window = this.tail.to_vec();
            window.extend_from_slice(new);
            if window.windows(4).any(|w| w == b"\r\n\r\n") {
                this.deadline = None;
            } else {
                let keep = window.len().saturating_sub(3);
                let mut tail = [0u8; 3];
                let last = &window[keep..];
                tail[3 - last.len()..].copy_from_slice(last);
                this.tail = tail;
            }
        }
        result
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for HeaderDeadline<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch_write(cx, result)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch_write(cx, result)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch_write(cx, result)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
