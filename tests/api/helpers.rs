//! The test harness: `spawn_app` starts the real server on `127.0.0.1:0` with its own
//! database, and `TestApp` has a method per endpoint plus real SSE and WebSocket clients.

use std::{net::SocketAddr, time::Duration};

use funko_live::{App, Config};
use futures_util::StreamExt;
use reqwest::{Method, Response, StatusCode};
use serde_json::{Value, json};
use tokio::{sync::oneshot, task::JoinHandle};

pub use crate::backends::Backend;

/// How long a test waits for anything the server should do promptly.
pub const WAIT: Duration = Duration::from_secs(10);

pub struct TestApp {
    pub address: SocketAddr,
    pub client: reqwest::Client,
    pub backend: Backend,
    pub database_url: String,
    pub config: Config,
    /// The running server's state, for operations a test triggers on purpose.
    pub state: funko_live::AppState,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<anyhow::Result<()>>>,
    dir: Option<tempfile::TempDir>,
}

/// Starts a server on its own fresh database.
pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, |_| {}).await
}

/// Starts a server after `tune` adjusts its configuration.
pub async fn spawn_app_with(backend: Backend, tune: impl FnOnce(&mut Config)) -> TestApp {
    let dir = tempfile::tempdir().expect("temp dir");
    let database_url = backend.fresh_database(dir.path()).await;
    let mut config = Config::defaults();
    config.bind = "127.0.0.1:0".parse().unwrap();
    config.data_dir = dir.path().to_owned();
    config.database_url = Some(database_url.clone());
    config.keepalive_seconds = 15;
    tune(&mut config);
    spawn_on(backend, config, database_url, dir).await
}

/// Starts a server on an existing database (restarts, second instances).
pub async fn spawn_on(
    backend: Backend,
    config: Config,
    database_url: String,
    dir: tempfile::TempDir,
) -> TestApp {
    let listener = tokio::net::TcpListener::bind(config.bind).await.unwrap();
    let address = listener.local_addr().unwrap();
    let app = App::build(config.clone()).await.expect("app starts");
    let state = app.state.clone();
    let (tx, rx) = oneshot::channel::<()>();
    let server = tokio::spawn(app.run(listener, async {
        let _ = rx.await;
    }));
    TestApp {
        address,
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(90))
            .build()
            .unwrap(),
        backend,
        database_url,
        config,
        state,
        shutdown: Some(tx),
        server: Some(server),
        dir: Some(dir),
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.address, path)
    }

    pub async fn request(&self, method: Method, path: &str, body: Option<Value>) -> Response {
        let mut request = self.client.request(method, self.url(path));
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send().await.expect("request sent")
    }

    pub async fn get(&self, path: &str) -> Response {
        self.request(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Response {
        self.request(Method::POST, path, Some(body)).await
    }

    pub async fn put(&self, path: &str, body: Value) -> Response {
        self.request(Method::PUT, path, Some(body)).await
    }

    pub async fn patch(&self, path: &str, body: Value) -> Response {
        self.request(Method::PATCH, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> Response {
        self.request(Method::DELETE, path, None).await
    }

    /// Creates a Funko and returns its JSON; panics unless 201.
    pub async fn create_funko(&self, name: &str) -> Value {
        let response = self
            .post(
                "/funkos",
                json!({"name": name, "price": 9.99, "stock": 5, "category": "DISNEY"}),
            )
            .await;
        assert_eq!(response.status(), StatusCode::CREATED, "creating {name}");
        response.json().await.unwrap()
    }

    /// The head cursor, from a read's `Stream-Cursor`.
    pub async fn head(&self) -> String {
        let response = self.get("/funkos?limit=1").await;
        assert_eq!(response.status(), StatusCode::OK);
        stream_cursor(&response)
    }

    /// Every event after `cursor`, read by long-poll pages without waiting.
    pub async fn events_after(&self, cursor: &str) -> Vec<Value> {
        let mut cursor = cursor.to_owned();
        let mut all = Vec::new();
        loop {
            let page: Value = self
                .get(&format!("/events/poll?after={cursor}&timeout=0&limit=1000"))
                .await
                .json()
                .await
                .unwrap();
            let events = page["events"].as_array().expect("events").clone();
            cursor = page["cursor"].as_str().unwrap().to_owned();
            if events.is_empty() {
                return all;
            }
            all.extend(events);
        }
    }

    /// Every event after `after` up to and including `upto` (a write's `Stream-Cursor`),
    /// long-polling until the stream reaches `upto`; panics after [`WAIT`].
    pub async fn events_through(&self, after: &str, upto: &str) -> Vec<Value> {
        let upto: i64 = upto.parse().expect("numeric cursor");
        let mut cursor = after.to_owned();
        let mut all = Vec::new();
        let deadline = tokio::time::Instant::now() + WAIT;
        while cursor.parse::<i64>().expect("numeric cursor") < upto {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the stream did not reach {upto} in time (at {cursor})"
            );
            let page: Value = self
                .get(&format!("/events/poll?after={cursor}&timeout=5&limit=1000"))
                .await
                .json()
                .await
                .unwrap();
            assert!(page.get("reset").is_none(), "unexpected reset: {page}");
            all.extend(page["events"].as_array().expect("events").iter().cloned());
            cursor = page["cursor"].as_str().unwrap().to_owned();
        }
        all
    }

    /// A request with a raw body and an optional `Content-Type` (none: the header is absent).
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: impl Into<reqwest::Body>,
    ) -> Response {
        let mut request = self.client.request(method, self.url(path)).body(body);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        request.send().await.expect("request sent")
    }

    /// A request with an `If-Match` header.
    pub async fn if_match(
        &self,
        method: Method,
        path: &str,
        if_match: &str,
        body: Option<Value>,
    ) -> Response {
        let mut request = self
            .client
            .request(method, self.url(path))
            .header("if-match", if_match);
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send().await.expect("request sent")
    }

    /// What a client can observe of the store: the head cursor and every Funko and category,
    /// deleted ones included. Equal snapshots around a request mean it changed nothing.
    pub async fn snapshot(&self) -> Value {
        let head = self.head().await;
        let mut funkos = Vec::new();
        for page in 1.. {
            let response = self
                .get(&format!(
                    "/funkos?includeDeleted=true&limit=100&page={page}"
                ))
                .await;
            assert_eq!(response.status(), StatusCode::OK);
            let body: Value = response.json().await.unwrap();
            let data = body["data"].as_array().unwrap().clone();
            if data.is_empty() {
                break;
            }
            funkos.extend(data);
        }
        let response = self.get("/categories?includeDeleted=true").await;
        assert_eq!(response.status(), StatusCode::OK);
        let categories: Value = response.json().await.unwrap();
        json!({"head": head, "funkos": funkos, "categories": categories})
    }

    /// Sends `request`, asserts a problem with `status`, and asserts that the store is as it
    /// was before: same rows, same head, no event. Returns the problem body.
    pub async fn assert_rejected(
        &self,
        request: impl std::future::Future<Output = Response>,
        status: u16,
    ) -> Value {
        let before = self.snapshot().await;
        let problem = assert_problem(request.await, status).await;
        let after = self.snapshot().await;
        assert_eq!(
            after, before,
            "a rejected request ({problem}) changed the store"
        );
        let head = before["head"].as_str().unwrap();
        let events = self.events_after(head).await;
        assert!(events.is_empty(), "a rejected request appended {events:?}");
        problem
    }

    /// Opens an SSE stream at `path` (with optional `Last-Event-ID`).
    pub async fn sse(&self, path: &str, last_event_id: Option<&str>) -> SseClient {
        let mut request = self.client.get(self.url(path));
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id);
        }
        let response = request.send().await.expect("SSE request");
        assert_eq!(response.status(), StatusCode::OK, "SSE {path}");
        SseClient::new(response)
    }

    /// A TCP connection to the server with a 4 KiB receive window, for a client that stops
    /// reading: the server's writes to it stall soon.
    pub async fn small_window_connection(&self) -> tokio::net::TcpStream {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        socket.connect(self.address).await.unwrap()
    }

    /// Creates `count` Funkos named `<prefix> <i>` whose events are large (a ~2 KiB image URL
    /// each), so a client that stops reading fills its socket buffers quickly.
    pub async fn create_big_funkos(&self, prefix: &str, count: usize) {
        let image = format!("https://example.com/{}.png", "x".repeat(2000));
        for i in 0..count {
            let response = self
                .post(
                    "/funkos",
                    json!({"name": format!("{prefix} {i}"), "price": 1, "stock": 1,
                           "category": "OTROS", "image": image}),
                )
                .await;
            assert_eq!(response.status(), StatusCode::CREATED);
        }
    }

    /// Prunes the log down to its newest event, as the server's retention task does.
    pub async fn prune_all_but_newest(&self) -> u64 {
        self.state.prune_now(1).await.expect("pruning")
    }

    /// Stops the server gracefully and starts a new one on the same address and database.
    pub async fn restart(mut self) -> TestApp {
        let dir = self.dir.take().expect("data dir");
        let (backend, url, mut config) =
            (self.backend, self.database_url.clone(), self.config.clone());
        config.bind = self.address;
        self.stop().await;
        spawn_on(backend, config, url, dir).await
    }

    /// Stops the server gracefully and waits for it.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            tokio::time::timeout(Duration::from_secs(30), server)
                .await
                .expect("server stops in time")
                .unwrap()
                .unwrap();
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

pub fn stream_cursor(response: &Response) -> String {
    response
        .headers()
        .get("stream-cursor")
        .expect("Stream-Cursor header")
        .to_str()
        .unwrap()
        .to_owned()
}

/// Asserts a problem body with this status and returns it.
pub async fn assert_problem(response: Response, status: u16) -> Value {
    assert_eq!(response.status().as_u16(), status, "status");
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json",
        "problem content type"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], status);
    assert!(
        body["title"].is_string() && body["detail"].is_string(),
        "{body}"
    );
    body
}

/// The fields named in a problem's `errors`.
pub fn problem_fields(problem: &Value) -> Vec<String> {
    let mut fields: Vec<String> = problem["errors"]
        .as_array()
        .map(|errors| {
            errors
                .iter()
                .map(|e| e["field"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default();
    fields.sort();
    fields
}

/// One parsed SSE frame.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SseFrame {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: Option<String>,
    pub retry: Option<u64>,
    /// A `:` comment line (keep-alive).
    pub comment: bool,
}

impl SseFrame {
    pub fn json(&self) -> Value {
        serde_json::from_str(self.data.as_deref().expect("data")).expect("JSON data")
    }

    /// A change event: `id:` and `data:`, no event name.
    pub fn is_event(&self) -> bool {
        self.id.is_some() && self.data.is_some() && self.event.is_none()
    }
}

/// A minimal SSE reader over a real HTTP response.
pub struct SseClient {
    stream: futures_util::stream::BoxStream<'static, Result<bytes::Bytes, String>>,
    buffer: String,
    pub headers: reqwest::header::HeaderMap,
}

impl SseClient {
    /// Reads the SSE stream of a response (for servers that are not a [`TestApp`]).
    pub fn new(response: Response) -> Self {
        let headers = response.headers().clone();
        Self {
            stream: response
                .bytes_stream()
                .map(|chunk| chunk.map_err(|e| e.to_string()))
                .boxed(),
            buffer: String::new(),
            headers,
        }
    }

    /// Sends `GET path` on a raw socket (one with a small receive window, say) and reads the
    /// response's SSE stream, decoding the chunked body by hand: so a broken chunk fails
    /// here, where an HTTP client might paper over it.
    pub async fn over(mut socket: tokio::net::TcpStream, path: &str) -> Self {
        use tokio::io::AsyncReadExt;
        send_get(&mut socket, path, "").await;
        let mut raw = bytes::BytesMut::new();
        let head_end = loop {
            if let Some(at) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            assert!(
                socket.read_buf(&mut raw).await.unwrap() > 0,
                "a response head"
            );
        };
        let head = String::from_utf8_lossy(&raw.split_to(head_end)).to_lowercase();
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert!(head.contains("transfer-encoding: chunked"), "{head}");
        let body = async_stream::stream! {
            loop {
                // A chunk: its size in hex, CRLF, that many bytes, CRLF.
                let Some(line_end) = raw.windows(2).position(|w| w == b"\r\n") else {
                    match socket.read_buf(&mut raw).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => continue,
                    }
                };
                let size = std::str::from_utf8(&raw[..line_end])
                    .ok()
                    .and_then(|s| usize::from_str_radix(s, 16).ok());
                let Some(size) = size else {
                    yield Err(format!("not a chunk size: {:?}", String::from_utf8_lossy(&raw[..line_end])));
                    return;
                };
                while raw.len() < line_end + 2 + size + 2 {
                    match socket.read_buf(&mut raw).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
                let mut chunk = raw.split_to(line_end + 2 + size + 2);
                if &chunk[line_end + 2 + size..] != b"\r\n" {
                    yield Err("a chunk does not end with CRLF".to_owned());
                    return;
                }
                if size == 0 {
                    return;
                }
                yield Ok(chunk.split_off(line_end + 2).split_to(size).freeze());
            }
        };
        Self {
            stream: body.boxed(),
            buffer: String::new(),
            headers: reqwest::header::HeaderMap::new(),
        }
    }

    /// The next frame, or `None` when the server ended the stream. Panics after [`WAIT`].
    pub async fn next_frame(&mut self) -> Option<SseFrame> {
        self.next_frame_within(WAIT)
            .await
            .expect("an SSE frame in time")
    }

    /// `Err(())` on timeout.
    pub async fn next_frame_within(&mut self, wait: Duration) -> Result<Option<SseFrame>, ()> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut frame = SseFrame::default();
                for line in block.lines() {
                    if line.starts_with(':') {
                        frame.comment = true;
                        continue;
                    }
                    let (field, value) = line.split_once(':').unwrap_or((line, ""));
                    let value = value.strip_prefix(' ').unwrap_or(value).to_owned();
                    match field {
                        "id" => frame.id = Some(value),
                        "event" => frame.event = Some(value),
                        "retry" => frame.retry = value.parse().ok(),
                        "data" => {
                            frame.data = Some(match frame.data.take() {
                                Some(prev) => format!("{prev}\n{value}"),
                                None => value,
                            })
                        }
                        _ => {}
                    }
                }
                return Ok(Some(frame));
            }
            match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Err(_) => return Err(()),
                Ok(None) => return Ok(None),
                Ok(Some(Err(err))) => {
                    assert!(!err.contains("chunk"), "a malformed response: {err}");
                    return Ok(None);
                }
                Ok(Some(Ok(chunk))) => self.buffer.push_str(&String::from_utf8_lossy(&chunk)),
            }
        }
    }

    /// The next change event, skipping `retry:`, comments and cursor-only frames.
    pub async fn next_event(&mut self) -> Value {
        loop {
            let frame = self.next_frame().await.expect("stream still open");
            if frame.is_event() {
                let event = frame.json();
                assert_eq!(
                    event["id"].as_str(),
                    frame.id.as_deref(),
                    "id: matches data.id"
                );
                return event;
            }
        }
    }

    /// The next `n` change events.
    pub async fn take_events(&mut self, n: usize) -> Vec<Value> {
        let mut events = Vec::with_capacity(n);
        for _ in 0..n {
            events.push(self.next_event().await);
        }
        events
    }
}

/// Sends `GET path` over HTTP/1.1 on a raw connection, with `headers` (whole lines, each
/// ending in CRLF) after `Host`; reads nothing.
pub async fn send_get(socket: &mut tokio::net::TcpStream, path: &str, headers: &str) {
    use tokio::io::AsyncWriteExt;
    socket
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n{headers}\r\n").as_bytes())
        .await
        .unwrap();
}

/// The cursors of a list of events, as numbers.
pub fn cursors(events: &[Value]) -> Vec<i64> {
    events
        .iter()
        .map(|e| e["id"].as_str().unwrap().parse().unwrap())
        .collect()
}

/// A WebSocket client over a real socket (tokio-tungstenite).
pub type WsStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub use tokio_tungstenite::tungstenite::Message as WsMessage;

impl TestApp {
    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{}", self.address, path)
    }

    /// Opens a WebSocket at `path`; panics unless the upgrade succeeds.
    pub async fn ws(&self, path: &str) -> WsClient {
        let (stream, _) =
            tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(self.ws_url(path)))
                .await
                .expect("the upgrade in time")
                .unwrap_or_else(|err| panic!("WebSocket {path}: {err}"));
        WsClient { stream }
    }

    /// Opens a WebSocket at `path` and reads its `welcome`; returns it with the client.
    pub async fn ws_welcomed(&self, path: &str) -> (WsClient, Value) {
        let mut ws = self.ws(path).await;
        let welcome = ws.next_json().await;
        assert_eq!(welcome["op"], "welcome", "the first frame is the welcome");
        (ws, welcome)
    }
}

/// Reads frames with a timeout, so a test never waits forever and never sleeps.
pub struct WsClient {
    pub stream: WsStream,
}

impl WsClient {
    pub async fn send(&mut self, message: WsMessage) {
        use futures_util::SinkExt;
        tokio::time::timeout(WAIT, self.stream.send(message))
            .await
            .expect("sent in time")
            .expect("sent");
    }

    pub async fn send_json(&mut self, frame: Value) {
        self.send(WsMessage::text(frame.to_string())).await;
    }

    /// The next message of any kind (pings included); `None` when the connection ended.
    /// Panics after [`WAIT`].
    pub async fn next_message(&mut self) -> Option<WsMessage> {
        self.next_message_within(WAIT)
            .await
            .expect("a WebSocket message in time")
    }

    /// `Err(())` on timeout. A transport error counts as the end.
    pub async fn next_message_within(&mut self, wait: Duration) -> Result<Option<WsMessage>, ()> {
        match tokio::time::timeout(wait, self.stream.next()).await {
            Err(_) => Err(()),
            Ok(None | Some(Err(_))) => Ok(None),
            Ok(Some(Ok(message))) => Ok(Some(message)),
        }
    }

    /// The next text frame as JSON, skipping pings and pongs; panics on a close.
    pub async fn next_json(&mut self) -> Value {
        loop {
            match self.next_message().await {
                Some(WsMessage::Text(text)) => {
                    return serde_json::from_str(&text).expect("a JSON text frame");
                }
                Some(WsMessage::Ping(_) | WsMessage::Pong(_)) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// The next text frame's raw text, skipping pings and pongs.
    pub async fn next_text(&mut self) -> String {
        loop {
            match self.next_message().await {
                Some(WsMessage::Text(text)) => return text.to_string(),
                Some(WsMessage::Ping(_) | WsMessage::Pong(_)) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// The next change event (a frame without `op`); panics on any other frame.
    pub async fn next_event(&mut self) -> Value {
        let frame = self.next_json().await;
        assert!(frame.get("op").is_none(), "expected an event, got {frame}");
        frame
    }

    pub async fn take_events(&mut self, n: usize) -> Vec<Value> {
        let mut events = Vec::with_capacity(n);
        for _ in 0..n {
            events.push(self.next_event().await);
        }
        events
    }

    /// The next frame with this `op`, failing on any frame before it that is not an event
    /// (events are skipped and returned alongside).
    pub async fn next_op(&mut self, op: &str) -> (Value, Vec<Value>) {
        let mut skipped = Vec::new();
        loop {
            let frame = self.next_json().await;
            match frame.get("op") {
                None => skipped.push(frame),
                Some(found) if found == op => return (frame, skipped),
                Some(_) => panic!("expected {op}, got {frame}"),
            }
        }
    }

    /// Sends `ping` and waits for its `pong`: proof the socket still answers.
    pub async fn ping(&mut self) {
        self.send_json(json!({"op": "ping", "requestId": "are-you-there"}))
            .await;
        let (pong, events) = self.next_op("pong").await;
        assert_eq!(pong["requestId"], "are-you-there");
        assert!(
            events.is_empty(),
            "no event expected before the pong: {events:?}"
        );
    }

    /// Reads until the server's close frame; returns its code and reason. Events and other
    /// frames before it are returned too.
    pub async fn closed(&mut self) -> (u16, String, Vec<Value>) {
        let mut before = Vec::new();
        loop {
            match self.next_message().await {
                Some(WsMessage::Close(Some(frame))) => {
                    return (u16::from(frame.code), frame.reason.to_string(), before);
                }
                Some(WsMessage::Close(None)) => return (1005, String::new(), before),
                Some(WsMessage::Text(text)) => before.push(serde_json::from_str(&text).unwrap()),
                Some(_) => {}
                None => panic!("the connection ended without a close frame"),
            }
        }
    }
}
