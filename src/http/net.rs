//! What the server does to each connection's socket, below HTTP (hyper's own header-read
//! timeout, in [`super`], is the slow-loris guard):
//! - a connection that carries no byte either way for the idle timeout is closed;
//! - a connection whose writes make no progress for a while is closed. This is what cuts off
//!   a stream client that stopped reading: hyper stops polling a response body once its own
//!   buffer is full, so the stream (and the subscriber queue bound inside it) never runs
//!   again; failing the stalled write makes hyper drop the connection and free its buffers.
//!   The client resumes by cursor.
//!
//! Both deadlines share one timer per connection, armed lazily: a read or a write only stores
//! the time (no wake-up, no timer work); when the timer fires, it compares that time with the
//! deadline and either closes the connection or re-arms for the new deadline. So a busy
//! stream costs the timer wheel one entry per idle period, not one per delivery.
//!
//! A socket is [`Shared`]: hyper reads and writes it, and once a Server-Sent Events response
//! is streaming live, the fan-out ([`super::fanout`]) writes that response's chunks to it
//! directly through its [`Outlet`], without waking the connection's task. The two never
//! write at once: the fan-out writes only while hyper has nothing buffered and the response's
//! body is not handing hyper bytes.
//!
//! After a WebSocket upgrade whose live events the fan-out writes, the socket has two writers
//! at once: tungstenite (through hyper's upgraded connection: the session's own frames,
//! pongs, the close) and the fan-out (batches of event frames, for each member on the
//! socket). Each writes whole frames, and the outlet's [`Turn`] keeps them apart: the one
//! with a frame half written holds the socket until it has written the rest.

use std::{
    io,
    pin::Pin,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    task::{Context, Poll, Waker},
    time::Duration,
};

use futures_util::task::AtomicWaker;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{
        TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
    time::{Instant, Sleep},
};

/// What a socket tells its [`Guarded`] about writes made outside hyper.
pub(crate) trait Outside {
    /// When bytes were last written to the socket by someone other than hyper.
    fn last_outside_write(&self) -> Option<Instant> {
        None
    }

    /// hyper's flush completed: it holds no unwritten bytes.
    fn flushed(&self) {}
}

/// A connection's TCP socket, shared between hyper (through `AsyncRead`/`AsyncWrite`) and
/// the fan-out (through its [`Outlet`]).
pub(crate) struct Shared {
    read: OwnedReadHalf,
    outlet: Arc<Outlet>,
}

impl Shared {
    pub(crate) fn new(stream: TcpStream) -> Self {
        let (read, write) = stream.into_split();
        Self {
            read,
            outlet: Arc::new(Outlet {
                write,
                hyper_idle: AtomicBool::new(true),
                flushed: AtomicWaker::new(),
                opened: Instant::now(),
                last_write: AtomicU64::new(0),
                framed: AtomicBool::new(false),
                turn: Mutex::new(Turn::default()),
            }),
        }
    }

    pub(crate) fn outlet(&self) -> &Arc<Outlet> {
        &self.outlet
    }
}

/// The write side of a [`Shared`] socket, for a writer outside hyper.
///
/// The rule that keeps the two writers' bytes apart: hyper writes only what a response body
/// hands it, so a body that writes through the outlet must (1) mark hyper busy
/// ([`hand_to_hyper`](Self::hand_to_hyper)) before it hands hyper anything, and (2) write
/// through the outlet only while [`hyper_idle`](Self::hyper_idle), which hyper's completed
/// flush sets again. Only the fan-out's types ([`super::fanout::SseWriter`]) do either.
pub(crate) struct Outlet {
    write: OwnedWriteHalf,
    hyper_idle: AtomicBool,
    /// Woken when hyper's flush completes.
    flushed: AtomicWaker,
    opened: Instant,
    /// Nanoseconds after `opened` of the last write through the outlet.
    last_write: AtomicU64,
    /// Both writers write whole WebSocket frames, taking [`Turn`]s (see [`Outlet::frame_writes`]).
    framed: AtomicBool,
    turn: Mutex<Turn>,
}

/// Which of a framed socket's writers has a frame half written, and the tasks waiting for it
/// to finish.
#[derive(Default)]
struct Turn {
    holder: Option<Writer>,
    waiting: Vec<Waker>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Writer {
    /// tungstenite, through the connection's `AsyncWrite`.
    Socket,
    /// A fan-out member, by its id, through [`Outlet::try_write`] (a Socket.IO session has one
    /// per namespace on the same socket).
    Outside(u64),
}

impl Turn {
    /// Records what a write of `len` bytes by `writer` did: a frame half written holds the
    /// socket; a whole one (tungstenite writes whole frames from its buffer, so all of the
    /// buffer is the end of a frame) lets the others go on.
    fn wrote(&mut self, writer: Writer, written: usize, len: usize) {
        if written < len {
            self.holder = Some(writer);
        } else {
            self.holder = None;
            for waiting in self.waiting.drain(..) {
                waiting.wake();
            }
        }
    }

    /// Whether `writer` may write now: nobody else is mid-frame.
    fn free_for(&self, writer: Writer) -> bool {
        self.holder.is_none_or(|holder| holder == writer)
    }

    /// Like [`Turn::free_for`], registering the task to be woken when it may.
    fn poll_free(&mut self, writer: Writer, cx: &mut Context<'_>) -> Poll<()> {
        if self.free_for(writer) {
            return Poll::Ready(());
        }
        if !self.waiting.iter().any(|w| w.will_wake(cx.waker())) {
            self.waiting.push(cx.waker().clone());
        }
        Poll::Pending
    }
}

impl Outlet {
    fn socket(&self) -> &TcpStream {
        self.write.as_ref()
    }

    /// Whether hyper has written everything it was given.
    pub(super) fn hyper_idle(&self) -> bool {
        self.hyper_idle.load(Ordering::Acquire)
    }

    /// Records that the response body is about to hand hyper bytes.
    pub(super) fn hand_to_hyper(&self) {
        self.hyper_idle.store(false, Ordering::Release);
    }

    /// Like [`hyper_idle`](Self::hyper_idle), registering the task to be woken when hyper's
    /// flush completes if it is not.
    pub(super) fn poll_hyper_idle(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.hyper_idle() {
            return Poll::Ready(());
        }
        self.flushed.register(cx.waker());
        if self.hyper_idle() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// From now on, the connection's own writes (tungstenite's, after a WebSocket upgrade) and
    /// the fan-out's take turns frame by frame. Called before either writes a frame.
    pub(crate) fn frame_writes(&self) {
        self.framed.store(true, Ordering::Release);
    }

    fn is_framed(&self) -> bool {
        self.framed.load(Ordering::Acquire)
    }

    fn turn(&self) -> MutexGuard<'_, Turn> {
        self.turn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// One non-blocking `write` of `len` bytes by `writer`. Framed: `WouldBlock` while another
    /// writer is mid-frame, and what it wrote is recorded in the turn.
    fn write_as(
        &self,
        writer: Writer,
        len: usize,
        write: impl FnOnce(&TcpStream) -> io::Result<usize>,
    ) -> io::Result<usize> {
        if !self.is_framed() {
            return write(self.socket());
        }
        let mut turn = self.turn();
        if !turn.free_for(writer) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let written = write(self.socket())?;
        turn.wrote(writer, written, len);
        Ok(written)
    }

    /// Writes without waiting, as `writer`: `WouldBlock` when the socket's buffer is full,
    /// or when another writer has a frame half written. Only while hyper is idle (see the
    /// type's rule).
    pub(super) fn try_write(&self, writer: Writer, bytes: &[u8]) -> io::Result<usize> {
        let written = self.write_as(writer, bytes.len(), |socket| socket.try_write(bytes))?;
        let since = Instant::now().saturating_duration_since(self.opened);
        self.last_write
            .store(since.as_nanos() as u64, Ordering::Release);
        Ok(written)
    }

    /// hyper's write of `len` bytes: waits for the socket to be writable (and, framed, for
    /// the fan-out to have finished its frame), then `write` (a `try_write`), as tokio's own
    /// `poll_write` does.
    fn poll_write_with(
        &self,
        cx: &mut Context<'_>,
        len: usize,
        mut write: impl FnMut(&TcpStream) -> io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        loop {
            if self.is_framed() {
                std::task::ready!(self.turn().poll_free(Writer::Socket, cx));
            }
            std::task::ready!(self.socket().poll_write_ready(cx))?;
            match self.write_as(Writer::Socket, len, &mut write) {
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
                result => return Poll::Ready(result),
            }
        }
    }

    /// Registers the task for the socket's next writability (framed, once no other writer
    /// is mid-frame).
    pub(super) fn poll_write_ready(
        &self,
        writer: Writer,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        if self.is_framed() {
            std::task::ready!(self.turn().poll_free(writer, cx));
        }
        self.socket().poll_write_ready(cx)
    }

    /// When the outlet last wrote, if it ever did.
    pub(crate) fn last_write(&self) -> Option<Instant> {
        match self.last_write.load(Ordering::Acquire) {
            0 => None,
            nanos => Some(self.opened + Duration::from_nanos(nanos)),
        }
    }
}

impl Outside for Shared {
    fn last_outside_write(&self) -> Option<Instant> {
        self.outlet.last_write()
    }

    fn flushed(&self) {
        if !self.outlet.hyper_idle.swap(true, Ordering::AcqRel) {
            self.outlet.flushed.wake();
        }
    }
}

impl AsyncRead for Shared {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.read).poll_read(cx, buf)
    }
}

/// hyper's writes, through the shared half.
impl AsyncWrite for Shared {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.outlet
            .poll_write_with(cx, buf.len(), |socket| socket.try_write(buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let len = bufs.iter().map(|b| b.len()).sum();
        self.outlet
            .poll_write_with(cx, len, |socket| socket.try_write_vectored(bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(
            socket2::SockRef::from(self.outlet.socket()).shutdown(std::net::Shutdown::Write),
        )
    }
}

/// How long a connection may stay silent and how long a write may wait for the peer.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Deadlines {
    pub idle: Duration,
    pub write_stall: Duration,
}

/// A socket whose reads fail with `TimedOut` once it has been silent for the idle timeout, and
/// whose writes fail with `TimedOut` once one has waited for the peer for the write-stall time.
/// An error is how hyper (or the WebSocket after an upgrade) is told to drop the connection.
pub(crate) struct Guarded<T> {
    inner: T,
    deadlines: Deadlines,
    /// The last read or write that moved bytes (or saw the peer close).
    last_activity: Instant,
    /// When the current write started to wait for the peer; `None` while writes progress.
    stalled_since: Option<Instant>,
    /// The one timer, created on first need and re-armed only when it fires (or when a stall
    /// needs an earlier deadline). Boxed because hyper wants an `Unpin` socket.
    timer: Option<Pin<Box<Sleep>>>,
}

/// Which deadline passed.
enum Expired {
    Idle,
    WriteStall,
}

impl<T> Guarded<T> {
    pub(crate) fn new(inner: T, deadlines: Deadlines) -> Self {
        Self {
            inner,
            deadlines,
            last_activity: Instant::now(),
            stalled_since: None,
            timer: None,
        }
    }

    /// The last read or write that moved bytes, hyper's or another writer's.
    fn last_activity(&self) -> Instant
    where
        T: Outside,
    {
        match self.inner.last_outside_write() {
            Some(outside) => outside.max(self.last_activity),
            None => self.last_activity,
        }
    }

    /// The earliest deadline in force: the write stall's while a write waits, else idleness.
    fn due(&self) -> Instant
    where
        T: Outside,
    {
        let idle = self.last_activity() + self.deadlines.idle;
        match self.stalled_since {
            Some(since) => idle.min(since + self.deadlines.write_stall),
            None => idle,
        }
    }

    /// Polls the timer (registering the task for its expiry) after an I/O call returned
    /// `Pending`; says which deadline passed, if one did.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Option<Expired>
    where
        T: Outside,
    {
        loop {
            let due = self.due();
            let last_activity = self.last_activity();
            let timer = match &mut self.timer {
                Some(timer) => {
                    // Only an earlier deadline (a stall starting) moves the timer now; a later
                    // one (new activity) waits until the timer fires.
                    if due < timer.deadline() {
                        timer.as_mut().reset(due);
                    }
                    timer
                }
                None => self.timer.insert(Box::pin(tokio::time::sleep_until(due))),
            };
            if timer.as_mut().poll(cx).is_pending() {
                return None;
            }
            let now = Instant::now();
            if let Some(since) = self.stalled_since
                && now >= since + self.deadlines.write_stall
            {
                return Some(Expired::WriteStall);
            }
            if now >= last_activity + self.deadlines.idle {
                return Some(Expired::Idle);
            }
            // Fired for a deadline that activity has since moved: re-arm for the new one
            // (`due` is in the future, since neither deadline has passed).
            timer.as_mut().reset(due);
        }
    }

    /// Watches the deadlines after an I/O call returned `Pending`, turning an expired one
    /// into the error that closes the connection. Either side reports either deadline: the
    /// timer wakes the task once, and hyper may then poll only one side.
    fn pending<R>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<R>>
    where
        T: Outside,
    {
        match self.poll_deadline(cx) {
            None => Poll::Pending,
            Some(Expired::WriteStall) => {
                tracing::info!("closing a connection whose peer stopped reading");
                crate::metrics::METRICS.slow_cut_off.inc();
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the peer stopped reading",
                )))
            }
            Some(Expired::Idle) => {
                tracing::debug!("closing an idle connection");
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the connection was idle too long",
                )))
            }
        }
    }

    /// Tracks a write's outcome: progress clears the stall; `Pending` starts it.
    fn watch_write<R>(
        &mut self,
        cx: &mut Context<'_>,
        result: Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>>
    where
        T: Outside,
    {
        if result.is_ready() {
            self.stalled_since = None;
            self.last_activity = Instant::now();
            return result;
        }
        self.stalled_since.get_or_insert_with(Instant::now);
        self.pending(cx)
    }
}

impl<T: AsyncRead + Outside + Unpin> AsyncRead for Guarded<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if result.is_ready() {
            this.last_activity = Instant::now();
            return result;
        }
        this.pending(cx)
    }
}

impl<T: AsyncWrite + Outside + Unpin> AsyncWrite for Guarded<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch_write(cx, result)
    }

    /// A flush moves no byte of its own, so it is not activity: hyper flushes after every
    /// write, and counting those would keep a silent connection's idle deadline fresh.
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = Pin::new(&mut self.inner).poll_flush(cx);
        if let Poll::Ready(Ok(())) = result {
            // hyper flushes its IO only after writing out its own buffer.
            self.inner.flushed();
        }
        result
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

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    use super::*;

    impl Outside for DuplexStream {}

    const DEADLINES: Deadlines = Deadlines {
        idle: Duration::from_secs(120),
        write_stall: Duration::from_secs(10),
    };

    /// A guarded end and its peer; the pipe holds `capacity` unread bytes.
    fn pair(capacity: usize) -> (Guarded<DuplexStream>, DuplexStream) {
        let (ours, theirs) = tokio::io::duplex(capacity);
        (Guarded::new(ours, DEADLINES), theirs)
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_is_closed_at_the_idle_timeout() {
        let (mut guarded, _peer) = pair(64);
        let started = Instant::now();
        let err = guarded.read(&mut [0; 8]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), DEADLINES.idle);
    }

    #[tokio::test(start_paused = true)]
    async fn activity_keeps_a_connection_open_until_it_stops() {
        let (mut guarded, mut peer) = pair(64);
        let started = Instant::now();
        // The peer says something every 15 s for 300 s, then falls silent (but stays).
        let talking = async {
            for _ in 0..20 {
                tokio::time::sleep(Duration::from_secs(15)).await;
                peer.write_all(b":\n\n").await.unwrap();
            }
            peer
        };
        let listening = async {
            let mut frame = [0; 3];
            for _ in 0..20 {
                guarded.read_exact(&mut frame).await.unwrap();
            }
            guarded.read(&mut frame).await.unwrap_err()
        };
        let (_peer, err) = tokio::join!(talking, listening);
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(300) + DEADLINES.idle);
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_the_peer_does_not_read_fails_after_the_stall_time() {
        let (mut guarded, _peer) = pair(16);
        guarded.write_all(&[0; 16]).await.unwrap();
        let started = Instant::now();
        let err = guarded.write_all(&[0; 1]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), DEADLINES.write_stall);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_reader_that_keeps_reading_is_not_cut_off() {
        let (mut guarded, mut peer) = pair(16);
        let started = Instant::now();
        let writing = async {
            // 64 bytes through a 16-byte pipe: every write waits for the peer.
            guarded.write_all(&[0; 64]).await.unwrap();
            guarded.flush().await.unwrap();
        };
        let reading = async {
            let mut buf = [0; 16];
            for _ in 0..4 {
                tokio::time::sleep(Duration::from_secs(9)).await;
                peer.read_exact(&mut buf).await.unwrap();
            }
        };
        tokio::join!(writing, reading);
        assert!(started.elapsed() >= Duration::from_secs(27));
    }
}
