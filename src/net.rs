//! Connection-level protection against slow clients: a connection must finish sending its
//! first request's headers within a deadline, or it is closed. (poem does not expose hyper's
//! header-read timeout; the idle timeout alone does not stop a client that trickles a byte
//! now and then.)

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
}

impl<A> HeaderTimeout<A> {
    pub fn new(inner: A, timeout: Duration) -> Self {
        Self { inner, timeout }
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
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
