//! The HTTP server: our own accept loop on hyper's HTTP/1.1 connection, in place of
//! `poem::Server`, so that the connection's limits are ours to set (hyper's header-read
//! timeout and buffer size; see [`Limits`]) and a connection costs one task and no more;
//! the deadlines on each socket ([`net`]); and the one module that writes below hyper, the
//! live fan-out of SSE and WebSocket subscribers ([`fanout`]); and a response whose body the
//! connection awaits after poem's layers have run ([`LaterBody`]).
//!
//! HTTP/1.1 only: `poem::Server` also spoke HTTP/2 with prior knowledge (h2c), which no
//! browser uses without TLS and no client of this server needs; TLS (and so HTTP/2) belongs
//! to the proxy in front.

use std::{future::Future, io, net::SocketAddr, sync::Arc, time::Duration};

use futures_util::future::BoxFuture;
use http_body_util::combinators::BoxBody;
use hyper::{body::Incoming, server::conn::http1};
use hyper_util::rt::{TokioIo, TokioTimer};
use poem::{
    Endpoint,
    http::uri::Scheme,
    web::{LocalAddr, RemoteAddr},
};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::watch,
};
use tokio_util::task::TaskTracker;

pub(crate) mod fanout;
pub(crate) mod net;

use net::{Deadlines, Guarded, Outlet, Shared};

/// hyper's buffer bound per connection, for reading a request head and for queueing response
/// bytes the peer has not read yet. With hyper's default (about 400 KiB), each stream client
/// that stopped reading would hold that much until the write-stall deadline. 16 KiB is twice
/// hyper's minimum: it caps a request head at 16 KiB (a larger one gets 431), which is well
/// above what browsers send (a few KiB, cookies included) and equal to the HTTP/2 header-list
/// limit poem used to set. A stalled stream then holds at most this plus one body chunk.
pub(crate) const MAX_BUF_SIZE: usize = 16 * 1024;

/// How long the accept loop waits after an error such as EMFILE before it accepts again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Per-connection limits.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// A request head must arrive whole within this, counted from when hyper starts waiting
    /// for it (on a kept-alive connection: from the end of the previous response).
    pub header_timeout: Duration,
    /// Idleness and write-stall deadlines, enforced on the socket.
    pub deadlines: Deadlines,
    /// The most of a connection's data the kernel holds unsent (`TCP_NOTSENT_LOWAT`; `None`:
    /// no bound). A client that stops reading absorbs this plus its own receive window before
    /// the server's writes to it stall; until then the server delivers to it like to any
    /// reader, so this bounds how long a non-reading client costs the fan-out. Data in flight
    /// does not count, so it caps no throughput.
    pub notsent_lowat: Option<u32>,
    /// The kernel send buffer of each connection (`None`: the kernel's autotuning, up to
    /// 4 MiB by default).
    pub send_buffer: Option<usize>,
    /// How long open connections get to finish at shutdown before they are dropped.
    pub grace: Duration,
    /// The most connections one client IP may hold open; past it a new one is answered 503
    /// and closed, so one address cannot take every file descriptor.
    pub max_connections_per_ip: usize,
}

/// Open connections by client IP, for [`Limits::max_connections_per_ip`].
#[derive(Clone, Default)]
struct PerIp(Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>);

/// One connection's place among its IP's; freed when dropped.
struct IpSlot {
    counts: PerIp,
    ip: std::net::IpAddr,
}

impl PerIp {
    fn take(&self, ip: std::net::IpAddr, max: usize) -> Option<IpSlot> {
        let mut counts = self.0.lock().expect("not poisoned");
        let count = counts.entry(ip).or_default();
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(IpSlot {
            counts: self.clone(),
            ip,
        })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.0.lock().expect("not poisoned");
        if let Some(count) = counts.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// Answers a connection past its IP's bound with 503 and closes it: after the answer, what
/// the client sent is read and dropped (briefly), so closing does not reset the connection
/// under the answer.
async fn refuse(mut socket: TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = crate::error::ProblemBody::new(
        poem::http::StatusCode::SERVICE_UNAVAILABLE,
        "too many connections from your address; retry later".to_owned(),
        None,
    );
    let body = poem_openapi::types::ToJSON::to_json_string(&body);
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/problem+json\r\n\
         retry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(REFUSAL_TIME, async {
        socket.write_all(answer.as_bytes()).await?;
        socket.shutdown().await?;
        let mut sink = [0u8; 4096];
        while socket.read(&mut sink).await? > 0 {}
        std::io::Result::Ok(())
    })
    .await;
}

/// How long a refused connection is given to take its answer.
const REFUSAL_TIME: Duration = Duration::from_secs(1);

/// Applies the per-connection socket options; a failure only loses the option.
fn tune(socket: &TcpStream, limits: &Limits, remote: SocketAddr) {
    // Every write is a whole response, chunk or frame: Nagle's algorithm could only hold one
    // back until the peer acknowledges the one before.
    if let Err(err) = socket.set_nodelay(true) {
        tracing::debug!(%remote, error = %err, "setting TCP_NODELAY failed");
    }
    let socket = socket2::SockRef::from(socket);
    // The kernel closes a connection whose queued bytes the client leaves unread (its window
    // shut) or unacknowledged for the write-stall time, whoever wrote them: a stream client
    // that stopped reading is cut off even while only keep-alives trickle into its buffers.
    if let Err(err) = socket.set_tcp_user_timeout(Some(limits.deadlines.write_stall)) {
        tracing::debug!(%remote, error = %err, "setting TCP_USER_TIMEOUT failed");
    }
    if let Some(bytes) = limits.notsent_lowat
        && let Err(err) = socket.set_tcp_notsent_lowat(bytes)
    {
        tracing::debug!(%remote, error = %err, "setting TCP_NOTSENT_LOWAT failed");
    }
    if let Some(bytes) = limits.send_buffer
        && let Err(err) = socket.set_send_buffer_size(bytes)
    {
        tracing::debug!(%remote, error = %err, "setting the send buffer failed");
    }
}

/// Where the server is in its life; every connection watches it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Serving,
    /// Finish the request in flight, then close.
    Draining,
    /// Close now.
    Dropping,
}

/// Serves `endpoint` on `listener` until `shutdown` resolves; then stops accepting, asks every
/// connection to close after its request in flight, and drops those still open after
/// `limits.grace`. Upgraded connections (WebSocket) are no longer hyper's: their owner tracks
/// them.
pub(crate) async fn serve<E>(
    listener: TcpListener,
    endpoint: E,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()>
where
    E: Endpoint + 'static,
{
    let endpoint = Arc::new(endpoint);
    let local = LocalAddr(listener.local_addr()?.into());
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(MAX_BUF_SIZE);
    let (phase, watching) = watch::channel(Phase::Serving);
    let connections = TaskTracker::new();
    let per_ip = PerIp::default();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((socket, remote)) => {
                let Some(slot) = per_ip.take(remote.ip(), limits.max_connections_per_ip) else {
                    crate::metrics::METRICS.refused("connections_per_ip");
                    connections.spawn(refuse(socket));
                    continue;
                };
                tune(&socket, &limits, remote);
                let socket = Shared::new(socket);
                let service = Service {
                    endpoint: endpoint.clone(),
                    local: local.clone(),
                    remote,
                    outlet: socket.outlet().clone(),
                };
                let connection = http
                    .serve_connection(
                        TokioIo::new(Guarded::new(socket, limits.deadlines)),
                        service,
                    )
                    .with_upgrades();
                let watching = watching.clone();
                connections.spawn(async move {
                    let _slot = slot;
                    drive(connection, remote, watching).await;
                });
            }
            // The peer gave up before we accepted: nothing to do.
            Err(err) if is_connection_error(&err) => {}
            // Out of file descriptors (EMFILE, ENFILE) or memory: existing connections go on;
            // wait for some to close instead of spinning.
            Err(err) => {
                tracing::warn!(error = %err, "accept failed; retrying shortly");
                tokio::select! {
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                }
            }
        }
    }
    drop(listener);
    connections.close();
    phase.send_replace(Phase::Draining);
    if tokio::time::timeout(limits.grace, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            open = connections.len(),
            "connections still open after the grace period; dropping them"
        );
        phase.send_replace(Phase::Dropping);
        connections.wait().await;
    }
    Ok(())
}

/// Errors that concern one connection, not the listener.
fn is_connection_error(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

type Connection<E> =
    hyper::server::conn::http1::UpgradeableConnection<TokioIo<Guarded<Shared>>, Service<E>>;

/// Runs one connection to its end, following the server's phase.
async fn drive<E: Endpoint + 'static>(
    connection: Connection<E>,
    remote: SocketAddr,
    mut phase: watch::Receiver<Phase>,
) {
    tokio::pin!(connection);
    loop {
        tokio::select! {
            result = &mut connection => {
                if let Err(err) = result {
                    // Peers that vanish, time out or send garbage are routine.
                    tracing::debug!(%remote, error = %err, "connection ended with an error");
                }
                return;
            }
            changed = phase.changed() => {
                if changed.is_err() {
                    return;
                }
                match *phase.borrow_and_update() {
                    Phase::Serving => {}
                    Phase::Draining => connection.as_mut().graceful_shutdown(),
                    Phase::Dropping => return,
                }
            }
        }
    }
}

/// Turns hyper's requests into poem's and back; one per connection.
struct Service<E> {
    endpoint: Arc<E>,
    local: LocalAddr,
    remote: SocketAddr,
    /// The connection's socket, for a response that writes to it outside hyper (the SSE
    /// fan-out); in every request's extensions.
    outlet: Arc<Outlet>,
}

impl<E: Endpoint + 'static> hyper::service::Service<hyper::Request<Incoming>> for Service<E> {
    type Response = hyper::Response<BoxBody<bytes::Bytes, io::Error>>;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<
        Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>,
    >;

    fn call(&self, request: hyper::Request<Incoming>) -> Self::Future {
        let endpoint = self.endpoint.clone();
        // Carries hyper's `OnUpgrade`, so a WebSocket handler can take the connection over.
        let mut request = poem::Request::from((
            request,
            self.local.clone(),
            RemoteAddr(self.remote.into()),
            Scheme::HTTP,
        ));
        request.extensions_mut().insert(self.outlet.clone());
        Box::pin(async move {
            let mut response = endpoint.get_response(request).await;
            if let Some(body) = LaterBody::take(&mut response) {
                response.set_body(body.await);
            }
            Ok(response.into())
        })
    }
}

/// The body of a response whose status and headers are final, to be awaited after poem's
/// layers (routing, CORS, the request's span and metrics) have run: the connection's task
/// waits on it alone and then sends the response whole, with its length. A request that
/// waits for long (a parked long-poll) is thus polled through those layers once, hot, not
/// again on every wake-up.
#[derive(Clone)]
pub(crate) struct LaterBody(Arc<std::sync::Mutex<Option<BoxFuture<'static, bytes::Bytes>>>>);

impl LaterBody {
    /// Gives `response` the body `body` will produce (replacing any it has).
    pub(crate) fn attach(
        response: &mut poem::Response,
        body: impl Future<Output = bytes::Bytes> + Send + 'static,
    ) {
        let body: BoxFuture<'static, bytes::Bytes> = Box::pin(body);
        response
            .extensions_mut()
            .insert(Self(Arc::new(std::sync::Mutex::new(Some(body)))));
    }

    fn take(response: &mut poem::Response) -> Option<BoxFuture<'static, bytes::Bytes>> {
        let later = response.extensions_mut().remove::<Self>()?;
        let mut body = later
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        body.take()
    }
}
