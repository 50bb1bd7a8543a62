//! Socket.IO on `/socket.io/` for the course project's clients: the real `socket.io-client`
//! v4 package over polling, WebSocket and the upgrade between them (welcome, every change
//! with the SSE stream's cursors, resume by `auth`, reset, reconnection after a restart,
//! heartbeats, clean disconnect), and the Engine.IO protocol by hand over HTTP where a test
//! must misbehave (errors, silence, a reader that falls behind).

use std::process::Stdio;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines},
    process::{Child, ChildStdin, ChildStdout},
};

use crate::{
    helpers::{Backend, TestApp, WAIT, cursors, spawn_app, spawn_app_with},
    js::{js_dir, node_ready},
};

const FUNKOS: &str = "/ws/v1/funkos";
const CATEGORIES: &str = "/ws/v1/categories";
const FUNKOS_WELCOME: &str = "Updates Funkos WS: funko-live";

/// `tests/js/socketio_client.mjs`: one `socket.io-client` process, read line by line.
/// Lines are kept in order; each is handed out once, by the first wait that wants it, so
/// waits need not follow the order in which independent things arrive.
struct SioClient {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    stdin: ChildStdin,
    /// Every line read, for failure messages and later waits.
    seen: Vec<Value>,
    /// Which of `seen` a wait already handed out.
    taken: Vec<bool>,
}

impl SioClient {
    /// Starts the client with `config` (see the script); `url` is filled in.
    async fn start(app: &TestApp, mut config: Value) -> Self {
        config["url"] = app.url("").into();
        let mut child = tokio::process::Command::new("node")
            .arg(js_dir().join("socketio_client.mjs"))
            .arg(config.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("node starts");
        Self {
            lines: BufReader::new(child.stdout.take().unwrap()).lines(),
            stdin: child.stdin.take().unwrap(),
            child,
            seen: Vec::new(),
            taken: Vec::new(),
        }
    }

    /// The first line not handed out yet with `key` (on namespace `ns`, when given),
    /// reading more as needed; panics after [`WAIT`].
    async fn until(&mut self, key: &str, ns: Option<&str>) -> Value {
        let wanted = |line: &Value| line.get(key).is_some() && ns.is_none_or(|ns| line["ns"] == ns);
        let mut index = 0;
        loop {
            while index < self.seen.len() {
                if !self.taken[index] && wanted(&self.seen[index]) {
                    self.taken[index] = true;
                    return self.seen[index].clone();
                }
                index += 1;
            }
            let line = tokio::time::timeout(WAIT, self.lines.next_line())
                .await
                .unwrap_or_else(|_| panic!("no {key} in time; saw {:?}", self.seen))
                .unwrap()
                .unwrap_or_else(|| panic!("the client exited; saw {:?}", self.seen));
            self.seen.push(serde_json::from_str(&line).unwrap());
            self.taken.push(false);
        }
    }

    /// The welcome on `ns`: the `connection` event with its string.
    async fn welcome(&mut self, ns: &str) -> Value {
        let line = self.until("welcome", Some(ns)).await;
        let expected = if ns == FUNKOS {
            FUNKOS_WELCOME
        } else {
            "Updates Categories WS: funko-live"
        };
        assert_eq!(line["welcome"], expected);
        line
    }

    /// The next `n` updates on `ns` (lines with `update` and `transport`); none may come
    /// with a reset or a connection error.
    async fn updates(&mut self, ns: &str, n: usize) -> Vec<Value> {
        let mut updates = Vec::with_capacity(n);
        for _ in 0..n {
            updates.push(self.until("update", Some(ns)).await);
        }
        let trouble = self
            .seen
            .iter()
            .find(|l| l.get("reset").is_some() || l.get("connect_error").is_some());
        assert!(
            trouble.is_none(),
            "unexpected {trouble:?}; saw {:?}",
            self.seen
        );
        updates
    }

    /// Disconnects every socket and waits for the process to exit by itself, each socket
    /// having seen `io client disconnect`.
    async fn disconnect(mut self) {
        self.stdin.write_all(b"disconnect\n").await.unwrap();
        let mut left = Vec::new();
        loop {
            let line = tokio::time::timeout(WAIT, self.lines.next_line())
                .await
                .expect("the client exits after disconnecting")
                .unwrap();
            let Some(line) = line else { break };
            let line: Value = serde_json::from_str(&line).unwrap();
            if line["disconnect"] == "io client disconnect" {
                left.push(line["ns"].clone());
            }
            self.seen.push(line);
        }
        let status = tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("the client exits after disconnecting")
            .unwrap();
        assert!(status.success(), "{status}; saw {:?}", self.seen);
        assert!(!left.is_empty(), "saw {:?}", self.seen);
    }
}

fn payloads(lines: &[Value]) -> Vec<Value> {
    lines.iter().map(|line| line["update"].clone()).collect()
}

/// The log after `cursor`, as SSE and long-poll serve it, keeping one entity.
async fn log_of(app: &TestApp, cursor: &str, entity: &str) -> Vec<Value> {
    app.events_after(cursor)
        .await
        .into_iter()
        .filter(|event| event["entity"] == entity)
        .collect()
}

/// Create, update and delete of one Funko, and a category change the Funkos namespace must
/// not see.
async fn funko_lifecycle(app: &TestApp, name: &str) {
    let funko = app.create_funko(name).await;
    let path = format!("/funkos/{}", funko["id"]);
    let response = app.patch(&path, json!({"stock": 42})).await;
    assert_eq!(response.status(), StatusCode::OK);
    let response = app
        .post("/categories", json!({"name": format!("Cat {name}")}))
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let response = app.delete(&path).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
}

/// The default transports: polling first, then the upgrade to WebSocket; the updates are the
/// SSE stream's events, cursors included.
async fn default_transports_upgrade_and_deliver_every_change(backend: Backend) {
    if !node_ready() {
        return;
    }
    let app = spawn_app(backend).await;
    let start = app.head().await;
    let mut client = SioClient::start(
        &app,
        json!({"namespaces": [FUNKOS], "transport": "default"}),
    )
    .await;
    assert_eq!(client.until("open", None).await["transport"], "polling");
    client.welcome(FUNKOS).await;
    assert_eq!(client.until("upgrade", None).await["upgrade"], "websocket");

    funko_lifecycle(&app, "Groot").await;
    let updates = client.updates(FUNKOS, 3).await;
    for line in &updates {
        assert_eq!(line["transport"], "websocket", "{line}");
    }
    let log = log_of(&app, &start, "FUNKOS").await;
    assert_eq!(payloads(&updates), log);
    let kinds: Vec<_> = log.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["CREATE", "UPDATE", "DELETE"]);
    assert_eq!(log[2]["data"]["isDeleted"], true);

    // The SSE stream serves the very same events.
    let mut sse = app.sse("/events?entity=FUNKOS", Some(start.as_str())).await;
    assert_eq!(sse.take_events(3).await, log);
    client.disconnect().await;
}

/// WebSocket only, both namespaces multiplexed on one Engine.IO connection: each gets its
/// own entity's events only.
async fn websocket_only_with_both_namespaces(backend: Backend) {
    if !node_ready() {
        return;
    }
    let app = spawn_app(backend).await;
    let start = app.head().await;
    let mut client = SioClient::start(
        &app,
        json!({"namespaces": [FUNKOS, CATEGORIES], "transport": "websocket"}),
    )
    .await;
    assert_eq!(client.until("open", None).await["transport"], "websocket");
    client.welcome(FUNKOS).await;
    client.welcome(CATEGORIES).await;

    funko_lifecycle(&app, "Stitch").await;
    let category = app.post("/categories", json!({"name": "Anime"})).await;
    assert_eq!(category.status(), StatusCode::CREATED);
    let id = category.json::<Value>().await.unwrap()["id"].clone();
    let response = app
        .put(&format!("/categories/{id}"), json!({"name": "Animes"}))
        .await;
    assert_eq!(response.status(), StatusCode::OK);

    let funkos = client.updates(FUNKOS, 3).await;
    let categories = client.updates(CATEGORIES, 3).await;
    assert_eq!(payloads(&funkos), log_of(&app, &start, "FUNKOS").await);
    assert_eq!(
        payloads(&categories),
        log_of(&app, &start, "CATEGORIES").await
    );
    for line in funkos.iter().chain(&categories) {
        assert_eq!(line["transport"], "websocket");
    }
    client.disconnect().await;
}

/// HTTP long-polling only (`transports: ["polling"], upgrade: false`), with bursts that
/// arrive several packets to a poll.
async fn polling_only_delivers_every_change(backend: Backend) {
    if !node_ready() {
        return;
    }
    let app = spawn_app(backend).await;
    let start = app.head().await;
    let mut client = SioClient::start(
        &app,
        json!({"namespaces": [FUNKOS], "transport": "polling"}),
    )
    .await;
    client.welcome(FUNKOS).await;
    funko_lifecycle(&app, "Baby Yoda").await;
    let names: Vec<String> = (0..8).map(|i| format!("Burst {i}")).collect();
    let burst = futures_util::future::join_all(names.iter().map(|n| app.create_funko(n))).await;
    assert_eq!(burst.len(), 8);
    let updates = client.updates(FUNKOS, 11).await;
    for line in &updates {
        assert_eq!(line["transport"], "polling", "{line}");
    }
    assert_eq!(payloads(&updates), log_of(&app, &start, "FUNKOS").await);
    assert!(client.seen.iter().all(|l| l.get("upgrade").is_none()));
    client.disconnect().await;
}

/// A cursor in the handshake's `auth` (or, for tools without `auth`, its query) replays
/// exactly the events after it, then live ones.
async fn a_cursor_in_auth_replays_the_missed_events_then_goes_live(backend: Backend) {
    if !node_ready() {
        return;
    }
    let app = spawn_app(backend).await;
    let mut first = SioClient::start(
        &app,
        json!({"namespaces": [FUNKOS], "transport": "default"}),
    )
    .await;
    first.welcome(FUNKOS).await;
    app.create_funko("Seen 1").await;
    app.create_funko("Seen 2").await;
    let seen = first.updates(FUNKOS, 2).await;
    first.disconnect().await;
    let cursor = seen[1]["update"]["id"].as_str().unwrap().to_owned();

    // While nobody listens: two Funkos and a category (which the namespace skips).
    app.create_funko("Missed 1").await;
    let response = app.post("/categories", json!({"name": "Missed"})).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    app.create_funko("Missed 2").await;
    let missed = log_of(&app, &cursor, "FUNKOS").await;
    assert_eq!(missed.len(), 2);

    let configs = [
        json!({"namespaces": [FUNKOS], "transport": "websocket", "auth": {"cursor": cursor}}),
        json!({"namespaces": [FUNKOS], "transport": "polling", "auth": {"lastEventId": cursor}}),
        json!({"namespaces": [FUNKOS], "transport": "default",
               "auth": {"after": cursor.parse::<u64>().unwrap()}}),
        json!({"namespaces": [FUNKOS], "transport": "websocket", "query": {"cursor": cursor}}),
    ];
    let mut clients = Vec::new();
    for config in configs {
        let mut client = SioClient::start(&app, config).await;
        client.welcome(FUNKOS).await;
        let replayed = client.updates(FUNKOS, 2).await;
        assert_eq!(payloads(&replayed), missed, "{:?}", client.seen);
        clients.push(client);
    }
    let live = app.create_funko("Live").await;
    for mut client in clients {
        let update = client.updates(FUNKOS, 1).await;
        assert_eq!(update[0]["update"]["data"], live);
        client.disconnect().await;
    }
}

/// `auth` as a function: after a restart the client reconnects by itself and resumes after
/// the last event it saw, with nothing lost and nothing twice.
async fn reconnects_after_a_restart_and_resumes_from_its_last_cursor(backend: Backend) {
    if !node_ready() {
        return;
    }
    let app = spawn_app(backend).await;
    let start = app.head().await;
    let mut client = SioClient::start(
        &app,
        json!({"namespaces": [FUNKOS], "transport": "default", "auth": "function"}),
    )
    .await;
    client.until("connect", Some(FUNKOS)).await;
    client.welcome(FUNKOS).await;
    app.create_funko("Before 1").await;
    app.create_funko("Before 2").await;
    let mut received = client.updates(FUNKOS, 2).await;

    let app = app.restart().await;
    // The server closed the transport (no Socket.IO disconnect): the client reconnects.
    let reason = client.until("disconnect", Some(FUNKOS)).await;
    assert_eq!(reason["disconnect"], "transport close", "{reason}");
    for i in 0..3 {
        app.create_funko(&format!("While away {i}")).await;
    }
    client.until("connect", Some(FUNKOS)).await;
    // The first connect sent no cursor; the reconnect, the cursor of the last event seen.
    let auths: Vec<_> = client.seen.iter().filter_map(|l| l.get("auth")).collect();
    assert_eq!(auths[0], &json!({}));
    let last = auths.last().unwrap();
    assert_eq!(last["cursor"], received[1]["update"]["id"], "{auths:?}");
    received.extend(client.updates(FUNKOS, 3).await);
    let log = log_of(&app, &start, "FUNKOS").await;
    assert_eq!(cursors(&payloads(&received)), cursors(&log));
    assert_eq!(payloads(&received), log);
    client.disconnect().await;
}

/// A cursor the server never issued: `reset` with the head, then live events. A cursor that
/// is not one: `connect_error`.
async fn unknown_cursors_reset_and_bad_ones_are_refused(backend: Backend) {
    if !node_ready() {
        return;
    }
    let app = spawn_app(backend).await;
    let head = app.head().await;
    let ahead = (head.parse::<i64>().unwrap() + 1_000_000_000).to_string();
    let mut client = SioClient::start(
        &app,
        json!({"namespaces": [FUNKOS], "transport": "websocket", "auth": {"cursor": ahead}}),
    )
    .await;
    client.welcome(FUNKOS).await;
    let reset = client.until("reset", Some(FUNKOS)).await;
    assert_eq!(reset["reset"], json!({"cursor": head, "reason": "unknown"}));
    let funko = app.create_funko("After reset").await;
    let update = client.until("update", Some(FUNKOS)).await;
    assert_eq!(update["update"]["data"], funko);
    client.disconnect().await;

    let mut client = SioClient::start(
        &app,
        json!({"namespaces": [FUNKOS], "transport": "polling", "auth": {"cursor": "soon"}}),
    )
    .await;
    let error = client.until("connect_error", Some(FUNKOS)).await;
    let message = error["connect_error"].as_str().unwrap();
    assert!(message.contains("cursor"), "{message}");
    // A refusal by the server is final: socket.io-client does not retry on its own.
    assert_eq!(error["active"], false);
}

/// Heartbeats: the server pings every `keepalive`; a client that answers stays connected.
async fn heartbeats_keep_a_client_connected(backend: Backend) {
    if !node_ready() {
        return;
    }
    let app = spawn_app_with(backend, |config| config.keepalive_seconds = 1).await;
    let mut client = SioClient::start(
        &app,
        json!({"namespaces": [FUNKOS], "transport": "default"}),
    )
    .await;
    client.welcome(FUNKOS).await;
    for _ in 0..3 {
        client.until("ping", None).await;
    }
    assert!(
        client.seen.iter().all(|l| l.get("disconnect").is_none()),
        "{:?}",
        client.seen
    );
    let funko = app.create_funko("Still here").await;
    assert_eq!(client.updates(FUNKOS, 1).await[0]["update"]["data"], funko);
    client.disconnect().await;
}

crate::backend_tests!(
    default_transports_upgrade_and_deliver_every_change,
    websocket_only_with_both_namespaces,
    polling_only_delivers_every_change,
    a_cursor_in_auth_replays_the_missed_events_then_goes_live,
    reconnects_after_a_restart_and_resumes_from_its_last_cursor,
    unknown_cursors_reset_and_bad_ones_are_refused,
    heartbeats_keep_a_client_connected,
);

/// Engine.IO by hand over HTTP long-polling.
struct RawSession<'a> {
    app: &'a TestApp,
    sid: String,
}

impl<'a> RawSession<'a> {
    async fn open(app: &'a TestApp) -> (Self, Value) {
        let response = app.get("/socket.io/?EIO=4&transport=polling").await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()["content-type"],
            "text/plain; charset=UTF-8"
        );
        let body = response.text().await.unwrap();
        let handshake: Value =
            serde_json::from_str(body.strip_prefix('0').expect("an open packet")).unwrap();
        let sid = handshake["sid"].as_str().unwrap().to_owned();
        (Self { app, sid }, handshake)
    }

    fn path(&self) -> String {
        format!("/socket.io/?EIO=4&transport=polling&sid={}", self.sid)
    }

    /// One poll: its status and its packets.
    async fn poll(&self) -> (StatusCode, Vec<String>) {
        let response = tokio::time::timeout(WAIT, self.app.get(&self.path()))
            .await
            .expect("a poll answers in time");
        let status = response.status();
        let body = response.text().await.unwrap();
        (status, body.split('\x1e').map(str::to_owned).collect())
    }

    async fn send(&self, packets: &[&str]) -> StatusCode {
        self.app
            .raw(
                reqwest::Method::POST,
                &self.path(),
                Some("text/plain;charset=UTF-8"),
                packets.join("\x1e"),
            )
            .await
            .status()
    }
}

/// The handshake, namespace connect and the protocol's errors, as any Socket.IO client
/// (Postman's included) sees them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_io_over_raw_http() {
    let app = spawn_app(Backend::Sqlite).await;
    let (session, handshake) = RawSession::open(&app).await;
    assert_eq!(handshake["upgrades"], json!(["websocket"]));
    let keepalive = app.config.keepalive_seconds * 1000;
    assert_eq!(handshake["pingInterval"], keepalive);
    assert_eq!(handshake["pingTimeout"], keepalive);
    assert_eq!(handshake["maxPayload"], 1_000_000);

    assert_eq!(
        session
            .send(&["40/ws/v1/funkos,", "40/ws/v1/productos,{}"])
            .await,
        StatusCode::OK
    );
    let mut packets = Vec::new();
    while packets.len() < 3 {
        let (status, batch) = session.poll().await;
        assert_eq!(status, StatusCode::OK);
        packets.extend(batch);
    }
    let (funkos, other): (Vec<_>, Vec<_>) = packets
        .iter()
        .partition(|p| p.starts_with("40/ws/v1/funkos,") || p.starts_with("42/ws/v1/funkos,"));
    let connected: Value =
        serde_json::from_str(funkos[0].strip_prefix("40/ws/v1/funkos,").unwrap()).unwrap();
    assert!(connected["sid"].is_string(), "{connected}");
    assert_eq!(
        funkos[1],
        &format!(r#"42/ws/v1/funkos,["connection","{FUNKOS_WELCOME}"]"#)
    );
    let refused: Value =
        serde_json::from_str(other[0].strip_prefix("44/ws/v1/productos,").unwrap()).unwrap();
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .starts_with("Invalid namespace"),
        "{refused}"
    );

    // An event for the connected namespace arrives on the next poll.
    let funko = app.create_funko("Raw").await;
    let (_, batch) = session.poll().await;
    let event: Value =
        serde_json::from_str(batch[0].strip_prefix("42/ws/v1/funkos,").unwrap()).unwrap();
    assert_eq!(event[0], "updates");
    assert_eq!(event[1]["data"], funko);

    // Leaving: `close` ends the session; it is then unknown.
    assert_eq!(
        session.send(&["41/ws/v1/funkos,", "1"]).await,
        StatusCode::OK
    );
    let (status, body) = session.poll().await;
    assert!(
        status == StatusCode::BAD_REQUEST || body == ["1"],
        "{status} {body:?}"
    );

    for (path, code) in [
        ("/socket.io/?EIO=4&transport=polling&sid=nope", 1),
        ("/socket.io/?EIO=3&transport=polling", 5),
        ("/socket.io/?transport=polling", 5),
        ("/socket.io/?EIO=4&transport=carrier-pigeon", 0),
        ("/socket.io/?EIO=4&transport=websocket", 3),
    ] {
        let response = app.get(path).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{path}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["code"], code, "{path}: {body}");
    }
    // Only `/socket.io/` itself is Engine.IO's.
    assert_eq!(app.get("/socket.io/elsewhere").await.status(), 404);
    // The rest of the API still answers next to it.
    assert_eq!(app.get("/funkos").await.status(), StatusCode::OK);
}

/// A client that stops answering pings is dropped after one more `keepalive`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_is_dropped_after_the_ping_timeout() {
    let app = spawn_app_with(Backend::Sqlite, |config| config.keepalive_seconds = 1).await;
    let (session, _) = RawSession::open(&app).await;
    let (status, packets) = session.poll().await;
    assert_eq!((status, packets), (StatusCode::OK, vec!["2".to_owned()]));
    // No pong: the next poll is answered `close` when the timeout passes.
    let (status, packets) = session.poll().await;
    assert_eq!((status, packets), (StatusCode::OK, vec!["1".to_owned()]));
    let (status, _) = session.poll().await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // One that answers stays.
    let (session, _) = RawSession::open(&app).await;
    for _ in 0..3 {
        assert_eq!(session.poll().await.1, ["2"]);
        assert_eq!(session.send(&["3"]).await, StatusCode::OK);
    }
}

/// A reader that falls further behind than the subscriber queue is cut off like on SSE:
/// its transport closes, and it resumes from its last cursor with nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_falls_behind_is_cut_off_and_resumes_by_cursor() {
    let app = spawn_app_with(Backend::Sqlite, |config| config.subscriber_queue = 8).await;
    let start = app.head().await;
    let (session, _) = RawSession::open(&app).await;
    session.send(&["40/ws/v1/funkos,"]).await;
    let mut packets = Vec::new();
    while packets.len() < 2 {
        packets.extend(session.poll().await.1);
    }
    // Far more than the queue and the bus's bound, while the reader does not poll.
    for i in 0..120 {
        app.create_funko(&format!("Flood {i}")).await;
    }
    let mut received = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        assert!(tokio::time::Instant::now() < deadline, "never cut off");
        let (status, batch) = session.poll().await;
        if status == StatusCode::BAD_REQUEST || batch == ["1"] {
            break;
        }
        for packet in batch {
            if let Some(event) = packet.strip_prefix("42/ws/v1/funkos,") {
                let event: Value = serde_json::from_str(event).unwrap();
                received.push(event[1].clone());
            }
        }
    }
    let log = log_of(&app, &start, "FUNKOS").await;
    assert_eq!(log.len(), 120);
    assert!(received.len() < log.len(), "cut off before the end");
    assert_eq!(received, log[..received.len()], "a prefix, in order");

    // Resuming from the last cursor it got brings the rest.
    let cursor = received
        .last()
        .map_or(start.clone(), |e| e["id"].as_str().unwrap().to_owned());
    let (session, _) = RawSession::open(&app).await;
    let auth = json!({ "cursor": cursor }).to_string();
    session.send(&[&format!("40/ws/v1/funkos,{auth}")]).await;
    let mut rest = Vec::new();
    while rest.len() < log.len() - received.len() {
        let (status, batch) = session.poll().await;
        assert_eq!(status, StatusCode::OK);
        for packet in batch {
            if let Some(event) = packet.strip_prefix("42/ws/v1/funkos,") {
                let event: Value = serde_json::from_str(event).unwrap();
                if event[0] == "updates" {
                    rest.push(event[1].clone());
                }
            }
        }
    }
    received.extend(rest);
    assert_eq!(received, log);
}

/// A packet whose first character is not ASCII is refused like any malformed packet (the
/// session closes, the request is answered), over polling and over WebSocket, at both the
/// Engine.IO and the Socket.IO level; other sessions carry on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packets_starting_with_a_multibyte_character_are_refused_cleanly() {
    let app = spawn_app(Backend::Sqlite).await;
    let (bystander, _) = RawSession::open(&app).await;
    bystander.send(&["40/ws/v1/funkos,"]).await;
    for packet in ["é", "4é", "4\u{1F600}"] {
        let (session, _) = RawSession::open(&app).await;
        assert_eq!(
            session.send(&[packet]).await,
            StatusCode::BAD_REQUEST,
            "{packet:?}"
        );
        let (status, body) = session.poll().await;
        assert!(
            status == StatusCode::BAD_REQUEST || body == ["1"],
            "{packet:?}: the session is closed: {status} {body:?}"
        );
    }
    for packet in ["é", "4é"] {
        let (mut ws, _) =
            tokio_tungstenite::connect_async(app.ws_url("/socket.io/?EIO=4&transport=websocket"))
                .await
                .unwrap();
        use futures_util::{SinkExt, StreamExt};
        let open = tokio::time::timeout(WAIT, ws.next()).await.unwrap();
        assert!(open.unwrap().unwrap().to_text().unwrap().starts_with('0'));
        ws.send(crate::helpers::WsMessage::text(packet))
            .await
            .unwrap();
        let closed = loop {
            match tokio::time::timeout(WAIT, ws.next())
                .await
                .expect("an answer")
            {
                Some(Ok(crate::helpers::WsMessage::Close(_))) => break true,
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => break false,
            }
        };
        assert!(closed, "{packet:?}: the server closes with a close frame");
    }
    // The bystander's session still delivers.
    let funko = app.create_funko("Still here").await;
    let deadline = tokio::time::Instant::now() + WAIT;
    'wait: loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the bystander got nothing"
        );
        let (status, batch) = bystander.poll().await;
        assert_eq!(status, StatusCode::OK);
        for packet in batch {
            if let Some(event) = packet.strip_prefix("42/ws/v1/funkos,") {
                let event: Value = serde_json::from_str(event).unwrap();
                if event[0] == "updates" && event[1]["data"] == funko {
                    break 'wait;
                }
            }
        }
        bystander.send(&["3"]).await;
    }
}

/// A flood of CONNECTs (to unknown namespaces, or the same one again and again) in one
/// payload costs a bounded number of tasks: the session is refused, the server answers,
/// and other sessions carry on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_connects_is_refused_with_bounded_tasks() {
    let app = spawn_app(Backend::Sqlite).await;
    let (bystander, _) = RawSession::open(&app).await;
    assert_eq!(bystander.send(&["40/ws/v1/funkos,"]).await, StatusCode::OK);
    let tasks = || {
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
    };
    for packet in ["40/nowhere,", "40/ws/v1/funkos,"] {
        let before = tasks();
        let (session, _) = RawSession::open(&app).await;
        let flood = vec![packet; 1_000_000 / (packet.len() + 1)];
        let status = session.send(&flood).await;
        assert!(status.is_client_error() || status.is_success(), "{status}");
        let after = tasks();
        assert!(
            after < before + 64,
            "{packet}: {before} tasks before, {after} after"
        );
    }
    // The bystander's session still delivers.
    let funko = app.create_funko("After the flood").await;
    let deadline = tokio::time::Instant::now() + WAIT;
    'wait: loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the bystander got nothing"
        );
        let (status, batch) = bystander.poll().await;
        assert_eq!(status, StatusCode::OK);
        for packet in batch {
            if let Some(event) = packet.strip_prefix("42/ws/v1/funkos,") {
                let event: Value = serde_json::from_str(event).unwrap();
                if event[0] == "updates" && event[1]["data"] == funko {
                    break 'wait;
                }
            }
        }
        bystander.send(&["3"]).await;
    }
}
