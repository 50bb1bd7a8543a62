//! The load-generating side: `bench worker` reads one [`Task`] as a JSON line on stdin, runs
//! it on a single-threaded runtime, prints `READY {json}` once its connections are open (for
//! subscriber tasks) and `RESULT {json}` at the end. A `stop` line on stdin (or stdin closing)
//! ends it early. Every task is bounded by its `deadline_s`.

use std::{
    cell::{Cell, RefCell},
    io::{BufRead, Write},
    net::{IpAddr, SocketAddr},
    rc::Rc,
    time::Duration,
};

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::{
    io::AsyncBufReadExt,
    sync::{Notify, Semaphore, mpsc, watch},
    time::Instant,
};
use tokio_tungstenite::tungstenite::Message;

use crate::{
    clock::now_ns,
    hist::Hist,
    http::{self, Conn, Dechunk, Framing},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    Sse,
    Poll,
    Ws,
    /// Socket.IO over its WebSocket transport, on the namespace [`SIO_NAMESPACE`].
    SocketIo,
}

/// The Socket.IO namespace that carries Funko changes, on funko-live and on the peer.
pub const SIO_NAMESPACE: &str = "/ws/v1/funkos";

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Self::Sse => "sse",
            Self::Poll => "poll",
            Self::Ws => "ws",
            Self::SocketIo => "socketio",
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "task", rename_all = "snake_case")]
pub enum Task {
    Subscribe(SubscribeTask),
    Publish(PublishTask),
    Crud(CrudTask),
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SubscribeTask {
    pub transport: Transport,
    pub addr: SocketAddr,
    pub count: usize,
    /// Source addresses: subscriber `i` connects from `srcs[i / per_src]` (servers may cap
    /// streams per client address, and each address has ~28,000 ephemeral ports).
    pub srcs: Vec<IpAddr>,
    pub per_src: usize,
    /// Events each subscriber waits for before it is done (0: until stopped).
    pub expect: u64,
    /// false: connect, then never read again (a slow consumer).
    pub read: bool,
    /// Cursor to resume after (None: live only).
    pub after: Option<String>,
    pub deadline_s: f64,
    pub connect_concurrency: usize,
    /// SSE only: view filters as query strings (`category=DISNEY`); subscriber `i` subscribes
    /// with `views[i % views.len()]`. Empty: the plain stream.
    #[serde(default)]
    pub views: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Ready {
    pub connected: usize,
    pub failed: usize,
    pub first_error: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SubscribeReport {
    pub connected: usize,
    pub failed: usize,
    pub latency: Hist,
    /// The latency of events sent at least [`SETTLED_AFTER_NS`] after the first event the
    /// worker received: the steady state, without the start.
    pub settled: Hist,
    pub events: u64,
    /// Bytes of the events received (SSE frames, poll answers, WebSocket messages).
    pub frame_bytes: u64,
    /// Non-reading subscribers: the bytes their sockets held unread when they were stopped,
    /// summed, and how many were measured.
    pub unread_bytes: u64,
    pub unread_sockets: usize,
    /// Subscribers that received `expect` events.
    pub complete: usize,
    /// Streams the server ended (or that failed) before `expect` or `stop`.
    pub ended_early: usize,
    pub start_ns: u64,
    pub ready_ns: u64,
    pub first_event_ns: u64,
    pub last_event_ns: u64,
    /// View subscribers: the events tagged `"view":"enter"` (every event, when each Funko
    /// written is in every view).
    #[serde(default)]
    pub view_enters: u64,
    pub errors: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PublishTask {
    pub addr: SocketAddr,
    pub src: IpAddr,
    /// How many POSTs at most.
    pub count: u64,
    /// POSTs per second (0: as fast as `concurrency` connections go).
    pub rate: f64,
    pub concurrency: usize,
    /// Stop sending after this many seconds (0: no limit but `count`).
    pub duration_s: f64,
    pub deadline_s: f64,
    /// Makes names unique across runs.
    pub tag: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PublishReport {
    pub sent: u64,
    pub ok: u64,
    pub errors: u64,
    pub latency: Hist,
    pub first_send_ns: u64,
    pub last_send_ns: u64,
    pub last_done_ns: u64,
    pub first_error: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CrudOp {
    GetById,
    List,
    Post,
    Patch,
}

impl CrudOp {
    pub fn name(self) -> &'static str {
        match self {
            Self::GetById => "get_by_id",
            Self::List => "get_list",
            Self::Post => "post",
            Self::Patch => "patch",
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CrudTask {
    pub addr: SocketAddr,
    pub src: IpAddr,
    pub op: CrudOp,
    pub connections: usize,
    pub warmup_s: f64,
    pub duration_s: f64,
    /// Funkos to read or patch.
    pub ids: Vec<i64>,
    pub tag: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CrudReport {
    /// CPU seconds this generator process used (user + system), to tell whether the
    /// generator rather than the server was the limit.
    #[serde(default)]
    pub cpu_s: f64,
    pub requests: u64,
    /// Requests answered over warm-up and measurement, for the server's CPU per request.
    #[serde(default)]
    pub all_requests: u64,
    pub errors: u64,
    pub latency: Hist,
    pub elapsed_s: f64,
    pub first_error: Option<String>,
}

/// `bench worker`: runs one task from stdin.
pub fn main() -> anyhow::Result<()> {
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    let task: Task = serde_json::from_str(&line).context("parsing the worker's task")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let (stop_tx, stop_rx) = watch::channel(false);
        tokio::task::spawn_local(async move {
            let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
            loop {
                match lines.next_line().await {
                    Ok(Some(l)) if l.trim() != "stop" => continue,
                    _ => break,
                }
            }
            let _ = stop_tx.send(true);
        });
        match task {
            Task::Subscribe(t) => {
                let report = subscribe(t, stop_rx).await;
                emit("RESULT", &report)
            }
            Task::Publish(t) => {
                let report = publish(t, stop_rx).await;
                emit("RESULT", &report)
            }
            Task::Crud(t) => {
                let report = crud(t).await;
                emit("RESULT", &report)
            }
        }
    })?;
    // Do not wait for the blocking stdin reader.
    std::process::exit(0)
}

fn emit<T: Serialize>(tag: &str, value: &T) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{tag} {}", serde_json::to_string(value)?)?;
    out.flush()?;
    Ok(())
}

/// See [`SubscribeReport::settled`].
const SETTLED_AFTER_NS: u64 = 1_000_000_000;

/// Shared by one worker's subscribers (single-threaded).
#[derive(Default)]
struct SubState {
    report: SubscribeReport,
    /// When the first event received was sent.
    first_stamp: Option<u64>,
}

impl SubState {
    fn record(&mut self, now: u64, scan: http::Scan, stamps: &[u64], bytes: usize) {
        let r = &mut self.report;
        if scan.events > 0 {
            if r.first_event_ns == 0 {
                r.first_event_ns = now;
            }
            r.last_event_ns = now;
            r.events += scan.events;
            r.frame_bytes += bytes as u64;
        }
        for &t in stamps {
            let first = *self.first_stamp.get_or_insert(t);
            let us = now.saturating_sub(t) / 1000;
            r.latency.record(us);
            if t >= first + SETTLED_AFTER_NS {
                r.settled.record(us);
            }
        }
    }

    fn error(&mut self, err: String) {
        if self.report.errors.len() < 5 {
            self.report.errors.push(err);
        }
    }
}

/// A worker's subscribers that have not finished yet. One that received what it expected
/// keeps its connection open until all have: a closing connection costs the server work while
/// it is still delivering the last event to the others, which is not what is measured.
struct Finish {
    left: Cell<usize>,
    all: Notify,
}

impl Finish {
    fn one_done(&self) {
        self.left.set(self.left.get().saturating_sub(1));
        if self.left.get() == 0 {
            self.all.notify_waiters();
        }
    }

    /// Counts this subscriber done, then waits for the others (or `stop`).
    async fn complete(&self, stop: &mut watch::Receiver<bool>) -> Outcome {
        let all = self.all.notified();
        tokio::pin!(all);
        all.as_mut().enable();
        self.one_done();
        if self.left.get() > 0 {
            tokio::select! {
                () = all => {}
                () = stopped(stop) => {}
            }
        }
        Outcome::Complete
    }
}

async fn subscribe(task: SubscribeTask, stop: watch::Receiver<bool>) -> SubscribeReport {
    let deadline = Instant::now() + Duration::from_secs_f64(task.deadline_s);
    let state = Rc::new(RefCell::new(SubState::default()));
    state.borrow_mut().report.start_ns = now_ns();
    let task = Rc::new(task);
    let permits = Rc::new(Semaphore::new(task.connect_concurrency.max(1)));
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<Result<(), String>>();
    let finish = Rc::new(Finish {
        left: Cell::new(task.count),
        all: Notify::new(),
    });
    let mut handles = Vec::with_capacity(task.count);
    for i in 0..task.count {
        let (task, state, permits, ready_tx, stop, finish) = (
            task.clone(),
            state.clone(),
            permits.clone(),
            ready_tx.clone(),
            stop.clone(),
            finish.clone(),
        );
        handles.push(tokio::task::spawn_local(async move {
            subscriber(i, task, state, permits, ready_tx, stop, finish).await;
        }));
    }
    drop(ready_tx);
    let mut ready = Ready::default();
    while ready.connected + ready.failed < task.count {
        match tokio::time::timeout_at(deadline, ready_rx.recv()).await {
            Ok(Some(Ok(()))) => ready.connected += 1,
            Ok(Some(Err(e))) => {
                ready.failed += 1;
                ready.first_error.get_or_insert(e);
            }
            Ok(None) | Err(_) => break,
        }
    }
    {
        let mut s = state.borrow_mut();
        s.report.connected = ready.connected;
        s.report.failed = ready.failed;
        s.report.ready_ns = now_ns();
    }
    let _ = emit("READY", &ready);
    let all = futures_util::future::join_all(handles);
    let _ = tokio::time::timeout_at(deadline, all).await;
    std::mem::take(&mut state.borrow_mut().report)
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

async fn subscriber(
    i: usize,
    task: Rc<SubscribeTask>,
    state: Rc<RefCell<SubState>>,
    permits: Rc<Semaphore>,
    ready_tx: mpsc::UnboundedSender<Result<(), String>>,
    mut stop: watch::Receiver<bool>,
    finish: Rc<Finish>,
) {
    let src = task.srcs[(i / task.per_src.max(1)).min(task.srcs.len() - 1)];
    let (state, permits, ready_tx, stop, finish) =
        (&*state, &*permits, &ready_tx, &mut stop, &*finish);
    let result = match task.transport {
        Transport::Sse => {
            sse_subscriber(i, &task, src, state, permits, ready_tx, stop, finish).await
        }
        Transport::Poll => {
            poll_subscriber(&task, src, state, permits, ready_tx, stop, finish).await
        }
        Transport::Ws => ws_subscriber(&task, src, state, permits, ready_tx, stop, finish).await,
        Transport::SocketIo => {
            sio_subscriber(&task, src, state, permits, ready_tx, stop, finish).await
        }
    };
    if !matches!(result, Ok(Outcome::Complete)) {
        finish.one_done();
    }
    match result {
        Ok(Outcome::Complete) => state.borrow_mut().report.complete += 1,
        Ok(Outcome::Stopped) => {}
        Ok(Outcome::Ended) => state.borrow_mut().report.ended_early += 1,
        Err(Failure::Connect(e)) => {
            let _ = ready_tx.send(Err(format!("subscriber {i}: {e:#}")));
        }
        Err(Failure::Stream(e)) => {
            let mut s = state.borrow_mut();
            s.report.ended_early += 1;
            s.error(format!("subscriber {i}: {e:#}"));
        }
    }
}

enum Outcome {
    Complete,
    Stopped,
    Ended,
}

enum Failure {
    Connect(anyhow::Error),
    Stream(anyhow::Error),
}

fn query_cursor(after: &Option<String>, name: &str) -> String {
    after
        .as_ref()
        .map(|c| format!("?{name}={c}"))
        .unwrap_or_default()
}

#[allow(
    clippy::too_many_arguments,
    reason = "the other transports' arguments and the index"
)]
async fn sse_subscriber(
    i: usize,
    task: &SubscribeTask,
    src: IpAddr,
    state: &RefCell<SubState>,
    permits: &Semaphore,
    ready_tx: &mpsc::UnboundedSender<Result<(), String>>,
    stop: &mut watch::Receiver<bool>,
    finish: &Finish,
) -> Result<Outcome, Failure> {
    let (mut conn, framing) = {
        let _permit = permits
            .acquire()
            .await
            .map_err(|e| Failure::Connect(e.into()))?;
        let open = async {
            let mut conn = Conn::open(task.addr, Some(src)).await?;
            let mut path = format!("/events{}", query_cursor(&task.after, "lastEventId"));
            if !task.views.is_empty() {
                path.push(if task.after.is_some() { '&' } else { '?' });
                path.push_str(&task.views[i % task.views.len()]);
            }
            conn.send("GET", &path, "Accept: text/event-stream\r\n", None)
                .await?;
            let head = conn.read_head().await?;
            if head.status != 200 {
                bail!("GET {path} answered {}", head.status);
            }
            anyhow::Ok((conn, head.framing))
        };
        open.await.map_err(Failure::Connect)?
    };
    let _ = ready_tx.send(Ok(()));
    if !task.read {
        stopped(stop).await;
        if let Ok(unread) = rustix::io::ioctl_fionread(&conn.stream) {
            let mut s = state.borrow_mut();
            s.report.unread_bytes += unread + conn.buf.len() as u64;
            s.report.unread_sockets += 1;
        }
        drop(conn);
        return Ok(Outcome::Stopped);
    }
    let mut dechunk = (framing == Framing::Chunked).then(Dechunk::default);
    let mut decoded = Vec::with_capacity(4096);
    let mut got = 0u64;
    let mut stamps = Vec::new();
    loop {
        let more = tokio::select! {
            r = conn.read_stream(dechunk.as_mut(), &mut decoded) => r,
            () = stopped(stop) => return Ok(Outcome::Stopped),
        };
        let now = now_ns();
        if let Some(end) = http::frames_end(&decoded) {
            stamps.clear();
            let scan = http::scan(&decoded[..end], |t| stamps.push(t));
            got += scan.events;
            let mut s = state.borrow_mut();
            s.record(now, scan, &stamps, end);
            if !task.views.is_empty() {
                s.report.view_enters += http::view_enters(&decoded[..end]);
            }
            drop(s);
            decoded.drain(..end);
        }
        match more {
            Ok(true) => {}
            Ok(false) => return Ok(Outcome::Ended),
            Err(e) => return Err(Failure::Stream(e)),
        }
        if task.expect > 0 && got >= task.expect {
            return Ok(finish.complete(stop).await);
        }
    }
}

async fn poll_subscriber(
    task: &SubscribeTask,
    src: IpAddr,
    state: &RefCell<SubState>,
    permits: &Semaphore,
    ready_tx: &mpsc::UnboundedSender<Result<(), String>>,
    stop: &mut watch::Receiver<bool>,
    finish: &Finish,
) -> Result<Outcome, Failure> {
    let (mut conn, mut cursor) = {
        let _permit = permits
            .acquire()
            .await
            .map_err(|e| Failure::Connect(e.into()))?;
        let open = async {
            let mut conn = Conn::open(task.addr, Some(src)).await?;
            let after = task
                .after
                .as_ref()
                .map(|c| format!("&after={c}"))
                .unwrap_or_default();
            let res = conn
                .request(
                    "GET",
                    &format!("/events/poll?timeout=0&limit=1{after}"),
                    None,
                )
                .await?;
            if res.status != 200 {
                bail!("the first poll answered {}", res.status);
            }
            let cursor = match &task.after {
                Some(c) => c.clone(),
                None => http::last_cursor(&res.body).context("no cursor in the poll answer")?,
            };
            anyhow::Ok((conn, cursor))
        };
        open.await.map_err(Failure::Connect)?
    };
    let _ = ready_tx.send(Ok(()));
    let mut got = 0u64;
    let mut stamps = Vec::new();
    loop {
        let path = format!("/events/poll?after={cursor}&timeout=30&limit=1000");
        let res = tokio::select! {
            r = conn.request("GET", &path, None) => r,
            () = stopped(stop) => return Ok(Outcome::Stopped),
        };
        let now = now_ns();
        let res = res.map_err(Failure::Stream)?;
        if res.status != 200 {
            return Err(Failure::Stream(anyhow::anyhow!(
                "poll answered {}",
                res.status
            )));
        }
        stamps.clear();
        let scan = http::scan(&res.body, |t| stamps.push(t));
        got += scan.events;
        state
            .borrow_mut()
            .record(now, scan, &stamps, res.body.len());
        cursor = http::last_cursor(&res.body)
            .ok_or_else(|| Failure::Stream(anyhow::anyhow!("no cursor in a poll answer")))?;
        if task.expect > 0 && got >= task.expect {
            return Ok(finish.complete(stop).await);
        }
    }
}

async fn ws_subscriber(
    task: &SubscribeTask,
    src: IpAddr,
    state: &RefCell<SubState>,
    permits: &Semaphore,
    ready_tx: &mpsc::UnboundedSender<Result<(), String>>,
    stop: &mut watch::Receiver<bool>,
    finish: &Finish,
) -> Result<Outcome, Failure> {
    let mut ws = {
        let _permit = permits
            .acquire()
            .await
            .map_err(|e| Failure::Connect(e.into()))?;
        let open = async {
            let stream = http::connect(task.addr, Some(src)).await?;
            let url = format!("ws://{}/ws", task.addr);
            let (mut ws, _) = ws_client(url, stream).await?;
            let welcome = tokio::time::timeout(Duration::from_secs(10), ws.next())
                .await
                .context("no welcome frame")?
                .context("closed before the welcome")??;
            let text = welcome.into_text()?;
            let head = http::last_cursor(text.as_bytes()).context("welcome without a cursor")?;
            let after = task.after.clone().unwrap_or(head);
            let subscribe = format!(r#"{{"op":"subscribe","after":"{after}"}}"#);
            ws.send(Message::text(subscribe)).await?;
            anyhow::Ok(ws)
        };
        open.await.map_err(Failure::Connect)?
    };
    let _ = ready_tx.send(Ok(()));
    if !task.read {
        stopped(stop).await;
        return Ok(Outcome::Stopped);
    }
    let mut got = 0u64;
    let mut stamps = Vec::new();
    loop {
        let msg = tokio::select! {
            m = ws.next() => m,
            () = stopped(stop) => return Ok(Outcome::Stopped),
        };
        let now = now_ns();
        match msg {
            Some(Ok(Message::Text(text))) => {
                stamps.clear();
                let scan = http::scan(text.as_bytes(), |t| stamps.push(t));
                got += scan.events;
                state.borrow_mut().record(now, scan, &stamps, text.len());
            }
            Some(Ok(Message::Close(_))) | None => return Ok(Outcome::Ended),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(Failure::Stream(e.into())),
        }
        if task.expect > 0 && got >= task.expect {
            return Ok(finish.complete(stop).await);
        }
    }
}

/// A WebSocket client on `stream` with a 4 KiB read buffer: tungstenite zero-fills its read
/// buffer up to its size before every read, and at its default 128 KiB that fill made a
/// generator reading 5,000 sockets the bottleneck of the measurement.
async fn ws_client(
    url: String,
    stream: tokio::net::TcpStream,
) -> Result<
    (
        WsStream,
        tokio_tungstenite::tungstenite::handshake::client::Response,
    ),
    tokio_tungstenite::tungstenite::Error,
> {
    let config =
        tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default().read_buffer_size(4096);
    tokio_tungstenite::client_async_with_config(url, stream, Some(config)).await
}

type WsStream = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// The next text frame of a socket, answering Engine.IO pings (`2`) on the way.
async fn sio_text(ws: &mut WsStream) -> anyhow::Result<String> {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .context("no Socket.IO packet within 10 s")?
            .context("closed during the Socket.IO handshake")??;
        match msg {
            Message::Text(t) if t.as_str() == "2" => ws.send(Message::text("3")).await?,
            Message::Text(t) => return Ok(t.as_str().to_owned()),
            Message::Close(_) => bail!("closed during the Socket.IO handshake"),
            _ => {}
        }
    }
}

/// The first argument of a Socket.IO `updates` EVENT on [`SIO_NAMESPACE`]
/// (`42<nsp>,["updates",{...},...]`): the event object, whatever arguments follow it.
fn sio_update(packet: &str) -> Option<&str> {
    let rest = packet
        .strip_prefix("42")?
        .strip_prefix(SIO_NAMESPACE)?
        .strip_prefix(',')?
        .strip_prefix("[\"updates\",")?;
    let mut values = serde_json::Deserializer::from_str(rest).into_iter::<serde::de::IgnoredAny>();
    values.next()?.ok()?;
    Some(&rest[..values.byte_offset()])
}

async fn sio_subscriber(
    task: &SubscribeTask,
    src: IpAddr,
    state: &RefCell<SubState>,
    permits: &Semaphore,
    ready_tx: &mpsc::UnboundedSender<Result<(), String>>,
    stop: &mut watch::Receiver<bool>,
    finish: &Finish,
) -> Result<Outcome, Failure> {
    let mut ws = {
        let _permit = permits
            .acquire()
            .await
            .map_err(|e| Failure::Connect(e.into()))?;
        let open = async {
            let stream = http::connect(task.addr, Some(src)).await?;
            let url = format!("ws://{}/socket.io/?EIO=4&transport=websocket", task.addr);
            let (mut ws, _) = ws_client(url, stream).await?;
            let open = sio_text(&mut ws).await?;
            anyhow::ensure!(open.starts_with('0'), "no Engine.IO open packet: {open:?}");
            ws.send(Message::text(format!("40{SIO_NAMESPACE},")))
                .await?;
            let connected = format!("40{SIO_NAMESPACE},");
            loop {
                let packet = sio_text(&mut ws).await?;
                if packet.starts_with(&connected) {
                    break;
                }
                anyhow::ensure!(!packet.starts_with("44"), "CONNECT refused: {packet}");
            }
            anyhow::Ok(ws)
        };
        open.await.map_err(Failure::Connect)?
    };
    let _ = ready_tx.send(Ok(()));
    let mut got = 0u64;
    let mut stamps = Vec::new();
    loop {
        let msg = tokio::select! {
            m = ws.next() => m,
            () = stopped(stop) => return Ok(Outcome::Stopped),
        };
        let now = now_ns();
        match msg {
            Some(Ok(Message::Text(text))) if text.as_str() == "2" => {
                ws.send(Message::text("3"))
                    .await
                    .map_err(|e| Failure::Stream(e.into()))?;
            }
            Some(Ok(Message::Text(text))) => {
                if let Some(event) = sio_update(text.as_str()) {
                    stamps.clear();
                    let scan = http::scan(event.as_bytes(), |t| stamps.push(t));
                    got += scan.events;
                    state.borrow_mut().record(now, scan, &stamps, text.len());
                }
            }
            Some(Ok(Message::Close(_))) | None => return Ok(Outcome::Ended),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(Failure::Stream(e.into())),
        }
        if task.expect > 0 && got >= task.expect {
            return Ok(finish.complete(stop).await);
        }
    }
}

/// The category and price of every Funko the generator writes (its name is `{tag}-{i}`): the
/// view fan-out's filters are chosen to match them.
pub const FUNKO_CATEGORY: &str = "DISNEY";
pub const FUNKO_PRICE: f64 = 9.99;

/// The POST body of event `i`: its send time rides in `description`.
pub fn funko_body(tag: &str, i: u64, stamp: Option<u64>) -> String {
    let description = match stamp {
        Some(t) => format!("bench t={t}"),
        None => "bench".to_owned(),
    };
    format!(
        r#"{{"name":"{tag}-{i}","description":"{description}","price":{FUNKO_PRICE},"stock":{},"category":"{FUNKO_CATEGORY}"}}"#,
        i % 1000
    )
}

async fn publish(task: PublishTask, stop: watch::Receiver<bool>) -> PublishReport {
    let deadline = Instant::now() + Duration::from_secs_f64(task.deadline_s);
    let report = Rc::new(RefCell::new(PublishReport::default()));
    let next = Rc::new(Cell::new(0u64));
    let start = Instant::now();
    let send_until =
        (task.duration_s > 0.0).then(|| start + Duration::from_secs_f64(task.duration_s));
    let task = Rc::new(task);
    let mut handles = Vec::new();
    for _ in 0..task.concurrency.max(1) {
        let (task, report, next, mut stop) =
            (task.clone(), report.clone(), next.clone(), stop.clone());
        handles.push(tokio::task::spawn_local(async move {
            let mut conn = match Conn::open(task.addr, Some(task.src)).await {
                Ok(c) => c,
                Err(e) => {
                    let mut r = report.borrow_mut();
                    r.errors += 1;
                    r.first_error.get_or_insert(format!("connect: {e:#}"));
                    return;
                }
            };
            loop {
                let i = next.get();
                if i >= task.count
                    || *stop.borrow()
                    || send_until.is_some_and(|u| Instant::now() >= u)
                {
                    return;
                }
                next.set(i + 1);
                if task.rate > 0.0 {
                    let at = start + Duration::from_secs_f64(i as f64 / task.rate);
                    tokio::select! {
                        () = tokio::time::sleep_until(at) => {}
                        () = stopped(&mut stop) => return,
                    }
                }
                let t = now_ns();
                let body = funko_body(&task.tag, i, Some(t));
                {
                    let mut r = report.borrow_mut();
                    if r.first_send_ns == 0 {
                        r.first_send_ns = t;
                    }
                    r.last_send_ns = r.last_send_ns.max(t);
                    r.sent += 1;
                }
                let res = conn.request("POST", "/funkos", Some(body.as_bytes())).await;
                let done = now_ns();
                let mut r = report.borrow_mut();
                r.last_done_ns = r.last_done_ns.max(done);
                match res {
                    Ok(res) if res.status == 201 => {
                        r.ok += 1;
                        r.latency.record((done - t) / 1000);
                    }
                    Ok(res) => {
                        r.errors += 1;
                        r.first_error.get_or_insert(format!(
                            "POST answered {}: {}",
                            res.status,
                            String::from_utf8_lossy(&res.body)
                        ));
                    }
                    Err(e) => {
                        r.errors += 1;
                        r.first_error.get_or_insert(format!("POST: {e:#}"));
                        return;
                    }
                }
            }
        }));
    }
    let _ = tokio::time::timeout_at(deadline, futures_util::future::join_all(handles)).await;
    report.borrow().clone()
}

async fn crud(task: CrudTask) -> CrudReport {
    let report = Rc::new(RefCell::new(CrudReport::default()));
    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(task.warmup_s);
    let end = measure_from + Duration::from_secs_f64(task.duration_s);
    let task = Rc::new(task);
    let mut handles = Vec::new();
    for c in 0..task.connections.max(1) {
        let (task, report) = (task.clone(), report.clone());
        handles.push(tokio::task::spawn_local(async move {
            let mut conn = match Conn::open(task.addr, Some(task.src)).await {
                Ok(c) => c,
                Err(e) => {
                    let mut r = report.borrow_mut();
                    r.errors += 1;
                    r.first_error.get_or_insert(format!("connect: {e:#}"));
                    return;
                }
            };
            let ids = &task.ids;
            let mut i: u64 = c as u64 * 7919;
            loop {
                let now = Instant::now();
                if now >= end {
                    return;
                }
                i += 1;
                let id = if ids.is_empty() {
                    1
                } else {
                    ids[(i as usize) % ids.len()]
                };
                let t = Instant::now();
                let res = match task.op {
                    CrudOp::GetById => conn.request("GET", &format!("/funkos/{id}"), None).await,
                    CrudOp::List => conn.request("GET", "/funkos?page=1&limit=20", None).await,
                    CrudOp::Post => {
                        let body = funko_body(&format!("{}-{c}", task.tag), i, None);
                        conn.request("POST", "/funkos", Some(body.as_bytes())).await
                    }
                    CrudOp::Patch => {
                        let body = format!(r#"{{"stock":{}}}"#, i % 1000);
                        conn.request("PATCH", &format!("/funkos/{id}"), Some(body.as_bytes()))
                            .await
                    }
                };
                let done = Instant::now();
                if res.is_ok() {
                    report.borrow_mut().all_requests += 1;
                }
                if t < measure_from {
                    if let Err(e) = res {
                        let mut r = report.borrow_mut();
                        r.errors += 1;
                        r.first_error.get_or_insert(format!("{e:#}"));
                        return;
                    }
                    continue;
                }
                let mut r = report.borrow_mut();
                match res {
                    Ok(res) if (200..300).contains(&res.status) => {
                        r.requests += 1;
                        r.latency.record((done - t).as_micros() as u64);
                    }
                    Ok(res) => {
                        r.errors += 1;
                        r.first_error.get_or_insert(format!(
                            "{} answered {}: {}",
                            task.op.name(),
                            res.status,
                            String::from_utf8_lossy(&res.body)
                        ));
                    }
                    Err(e) => {
                        r.errors += 1;
                        r.first_error.get_or_insert(format!("{e:#}"));
                        return;
                    }
                }
            }
        }));
    }
    futures_util::future::join_all(handles).await;
    let mut report = report.borrow().clone();
    report.elapsed_s = (Instant::now().min(end) - measure_from)
        .as_secs_f64()
        .max(1e-9);
    report.cpu_s = crate::servers::cpu_of(std::process::id()).unwrap_or(0.0);
    report
}

#[cfg(test)]
mod tests {
    use super::sio_update;

    #[test]
    fn reads_the_first_argument_of_an_update() {
        let event = r#"{"id":"7","entity":"FUNKOS","data":{"description":"bench t=5"}}"#;
        for packet in [
            format!(r#"42/ws/v1/funkos,["updates",{event}]"#),
            format!(r#"42/ws/v1/funkos,["updates",{event},"7"]"#),
        ] {
            assert_eq!(sio_update(&packet), Some(event));
        }
        assert_eq!(sio_update(r#"42/ws/v1/funkos,["connection","hi"]"#), None);
        assert_eq!(sio_update("2"), None);
    }
}
