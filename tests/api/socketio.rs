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
    cluster::instance_on,
    helpers::{Backend, TestApp, WAIT, cursors, spawn_app, spawn_app_with},
    js::{js_dir, node_ready},
};

const MAIN: &str = "/";
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
        if config.get("url").is_none() {
            config["url"] = app.url("").into();
        }
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

    /// Forgets the reconnect attempts that failed while the server was down (`connect_error`
    /// with the client still active): after a restart they are expected, and only they are.
    fn forgive_failed_reconnects(&mut self) {
        let failed = |l: &Value| l.get("connect_error").is_some() && l["active"] == true;
        let kept: Vec<(Value, bool)> = std::mem::take(&mut self.seen)
            .into_iter()
            .zip(std::mem::take(&mut self.taken))
            .filter(|(line, _)| !failed(line))
            .collect();
        (self.seen, self.taken) = kept.into_iter().unzip();
    }

    /// Sends one command line (see the script).
    async fn command(&mut self, line: &str) {
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
    }

    /// Emits `event` with `args` on `ns` and waits for its ack: the ack's first argument.
    async fn emit(&mut self, ns: &str, event: &str, args: Value) -> Value {
        self.command(&json!({"emit": ns, "event": event, "args": args}).to_string())
            .await;
        let line = self.until("ack", Some(ns)).await;
        line["ack"].clone()
    }

    /// The next connect on `ns`: whether socket.io-client says it recovered.
    async fn connected(&mut self, ns: &str) -> bool {
        let line = self.until("connect", Some(ns)).await;
        line["recovered"] == true
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

/// A Funko to create over any transport.
fn funko_data(name: &str) -> Value {
    json!({"name": name, "price": 5.5, "stock": 2, "category": "OTROS"})
}

/// Writes as client events with acks, over WebSocket and over polling: each ack is what REST
/// answers for the same request (`{status, body, cursor}`, or the status and REST's problem
/// body), its cursor is the event's; an unknown event gets a 400 problem; nothing else is
/// written.
async fn writes_with_acks_answer_as_rest_does(backend: Backend) {
    if !node_ready() {
        return;
    }
    let app = spawn_app(backend).await;
    for transport in ["websocket", "polling"] {
        let start = app.head().await;
        let mut client =
            SioClient::start(&app, json!({"namespaces": [MAIN], "transport": transport})).await;
        client.until("connect", Some(MAIN)).await;

        let data = funko_data(&format!("Acked {transport}"));
        let created = client
            .emit(MAIN, "create", json!([{"entity": "FUNKOS", "data": data}]))
            .await;
        assert_eq!(created["status"], 201, "{created}");
        let id = created["body"]["id"].clone();
        let rest: Value = app
            .get(&format!("/funkos/{id}"))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(created["body"], rest);
        let update = client.until("update", Some(MAIN)).await;
        assert_eq!(update["update"]["id"], created["cursor"]);
        assert_eq!(
            update["offset"], created["cursor"],
            "the offset is the cursor"
        );

        let updated = client
            .emit(
                MAIN,
                "update",
                json!([{"entity": "FUNKOS", "id": id, "data": {"stock": 7}}]),
            )
            .await;
        assert_eq!(
            (updated["status"].clone(), updated["body"]["stock"].clone()),
            (json!(200), json!(7))
        );
        let category = client
            .emit(
                MAIN,
                "create",
                json!([{"entity": "CATEGORIES", "data": {"name": format!("Acked {transport}")}}]),
            )
            .await;
        assert_eq!(category["status"], 201, "{category}");
        let deleted = client
            .emit(MAIN, "delete", json!([{"entity": "FUNKOS", "id": id}]))
            .await;
        assert_eq!(
            (deleted["status"].clone(), deleted["body"].clone()),
            (json!(204), Value::Null)
        );

        // Refusals carry REST's very problem bodies.
        let bad = json!({"name": "", "price": -1, "stock": 1, "category": "OTROS"});
        let refused = client
            .emit(MAIN, "create", json!([{"entity": "FUNKOS", "data": bad}]))
            .await;
        let rest = app.post("/funkos", bad.clone()).await;
        assert_eq!(refused["status"], rest.status().as_u16(), "{refused}");
        assert_eq!(refused["body"], rest.json::<Value>().await.unwrap());
        let missing = client
            .emit(
                MAIN,
                "update",
                json!([{"entity": "FUNKOS", "id": 999_999_999, "data": {"stock": 1}}]),
            )
            .await;
        let rest = app.patch("/funkos/999999999", json!({"stock": 1})).await;
        assert_eq!(missing["status"], 404, "{missing}");
        assert_eq!(missing["body"], rest.json::<Value>().await.unwrap());
        for (event, args) in [
            ("shout", json!([{"entity": "FUNKOS"}])),
            ("create", json!(["not an object"])),
            ("create", json!([{"entity": "ROBOTS", "data": data}])),
        ] {
            let answer = client.emit(MAIN, event, args).await;
            assert_eq!(answer["status"], 400, "{event}: {answer}");
            assert_eq!(answer["body"]["status"], 400, "{event}: {answer}");
        }

        let kinds: Vec<_> = app
            .events_after(&start)
            .await
            .iter()
            .map(|e| format!("{} {}", e["entity"], e["type"]))
            .collect();
        assert_eq!(
            kinds,
            [
                r#""FUNKOS" "CREATE""#,
                r#""FUNKOS" "UPDATE""#,
                r#""CATEGORIES" "CREATE""#,
                r#""FUNKOS" "DELETE""#
            ],
            "{transport}"
        );
        client.disconnect().await;
    }
}

/// With tokens configured, writes over Socket.IO need one, as REST's do: none gives REST's
/// 401; `auth.token` (or the handshake's `Authorization`) lets them through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_over_socketio_need_the_token_rest_needs() {
    if !node_ready() {
        return;
    }
    let app = spawn_app_with(Backend::Sqlite, |c| c.api_tokens = vec!["s3cret".into()]).await;
    let write = json!([{"entity": "FUNKOS", "data": funko_data("Tokened")}]);
    let mut anonymous = SioClient::start(
        &app,
        json!({"namespaces": [FUNKOS], "transport": "websocket"}),
    )
    .await;
    anonymous.until("connect", Some(FUNKOS)).await;
    let refused = anonymous.emit(FUNKOS, "create", write.clone()).await;
    let rest = app.post("/funkos", funko_data("Tokened")).await;
    assert_eq!(
        (refused["status"].clone(), rest.status().as_u16()),
        (json!(401), 401)
    );
    assert_eq!(refused["body"], rest.json::<Value>().await.unwrap());
    anonymous.disconnect().await;

    let mut wrong = SioClient::start(
        &app,
        json!({"namespaces": [FUNKOS], "transport": "polling", "auth": {"token": "guess"}}),
    )
    .await;
    wrong.until("connect", Some(FUNKOS)).await;
    let refused = wrong.emit(FUNKOS, "create", write.clone()).await;
    let rest = app
        .client
        .post(app.url("/funkos"))
        .bearer_auth("guess")
        .json(&funko_data("Tokened"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        (refused["status"].clone(), rest.status().as_u16()),
        (json!(403), 403)
    );
    assert_eq!(refused["body"], rest.json::<Value>().await.unwrap());
    wrong.disconnect().await;

    let mut client = SioClient::start(
        &app,
        json!({"namespaces": [FUNKOS], "transport": "polling", "auth": {"token": "s3cret"}}),
    )
    .await;
    client.until("connect", Some(FUNKOS)).await;
    let created = client.emit(FUNKOS, "create", write).await;
    assert_eq!(created["status"], 201, "{created}");
    client.disconnect().await;
}

/// Connection state recovery with no code of the client's: socket.io-client reconnects after
/// a network cut and after a server restart, sends the `pid` and offset it was given, gets
/// `recovered === true` and every missed event once, in order. An offset the log no longer
/// holds: `recovered === false` and a `reset`.
async fn socket_io_client_recovers_by_itself(backend: Backend) {
    if !node_ready() {
        return;
    }
    let mut app = spawn_app(backend).await;
    for transport in ["websocket", "polling"] {
        let start = app.head().await;
        let mut client = SioClient::start(
            &app,
            json!({"namespaces": [FUNKOS], "transport": transport}),
        )
        .await;
        assert!(
            !client.connected(FUNKOS).await,
            "a first connect recovers nothing"
        );
        client.welcome(FUNKOS).await;
        app.create_funko(&format!("Seen {transport}")).await;
        let mut received = client.updates(FUNKOS, 1).await;

        // A network cut, with writes while the client is away.
        client.command("cut").await;
        client.until("disconnect", Some(FUNKOS)).await;
        app.create_funko(&format!("Missed 1 {transport}")).await;
        app.create_funko(&format!("Missed 2 {transport}")).await;
        client.command("reconnect").await;
        assert!(
            client.connected(FUNKOS).await,
            "{transport}: recovered after a cut; saw {:?}",
            client.seen
        );
        received.extend(client.updates(FUNKOS, 2).await);

        // A restart: the client reconnects by itself.
        app = app.restart().await;
        for i in 0..3 {
            app.create_funko(&format!("Around the restart {i} {transport}"))
                .await;
        }
        assert!(
            client.connected(FUNKOS).await,
            "{transport}: recovered after a restart; saw {:?}",
            client.seen
        );
        client.forgive_failed_reconnects();
        received.extend(client.updates(FUNKOS, 3).await);
        let log = log_of(&app, &start, "FUNKOS").await;
        assert_eq!(payloads(&received), log, "{transport}");
        for line in &received {
            assert_eq!(line["offset"], line["update"]["id"]);
        }

        // Away while the log is pruned past its offset.
        client.command("cut").await;
        client.until("disconnect", Some(FUNKOS)).await;
        app.create_funko(&format!("Pruned 1 {transport}")).await;
        app.create_funko(&format!("Pruned 2 {transport}")).await;
        app.prune_all_but_newest().await;
        client.command("reconnect").await;
        assert!(
            !client.connected(FUNKOS).await,
            "{transport}: nothing to recover"
        );
        let reset = client.until("reset", Some(FUNKOS)).await;
        assert_eq!(reset["reset"]["reason"], "expired");
        assert_eq!(reset["offset"], reset["reset"]["cursor"]);
        let live = app
            .create_funko(&format!("After the reset {transport}"))
            .await;
        assert_eq!(
            client.until("update", Some(FUNKOS)).await["update"]["data"],
            live
        );
        client.disconnect().await;
    }
}

/// A client in another language nobody here wrote (python-socketio): connect, an event, an
/// acked write, and a resume from its last cursor, over both transports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_socketio_connects_writes_and_resumes() {
    let Some(venv) = crate::schemathesis::python_venv() else {
        return;
    };
    let app = spawn_app(Backend::Sqlite).await;
    for transport in ["polling", "websocket"] {
        let script = crate::schemathesis::py_dir().join("socketio_client.py");
        let output = tokio::time::timeout(
            std::time::Duration::from_secs(120),
            tokio::process::Command::new(venv.join("bin/python"))
                .arg(script)
                .arg(app.url(""))
                .arg(transport)
                .kill_on_drop(true)
                .output(),
        )
        .await
        .expect("the Python client finishes in time")
        .expect("python runs");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success() && stdout.contains("ok python-socketio:"),
            "{transport}: {}\n{stdout}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// A TCP proxy with one backend at a time, as a balancer that moves a client: switching drops
/// the connections it carries, and new ones go to the new backend.
struct Balancer {
    address: std::net::SocketAddr,
    backend: tokio::sync::watch::Sender<std::net::SocketAddr>,
}

impl Balancer {
    async fn start(backend: std::net::SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::watch::channel(backend);
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let mut moved = rx.clone();
                let target = *moved.borrow_and_update();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = moved.changed() => {}
                    }
                });
            }
        });
        Self {
            address,
            backend: tx,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    fn send_to(&self, backend: std::net::SocketAddr) {
        self.backend.send_replace(backend);
    }
}

/// Several instances on PostgreSQL: a client behind a balancer that moves it to another
/// instance mid-session (its polling session, or its WebSocket, lands where that session does
/// not exist) recovers there by itself, with every event once and in order. This is why
/// polling needs no sticky sessions for correctness: a move costs a reconnect, nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_moved_to_another_instance_recovers_there() {
    if !node_ready() || !crate::postgres::available() {
        return;
    }
    let a = spawn_app(Backend::Postgres).await;
    let b = instance_on(&a.database_url).await;
    for transport in ["polling", "websocket"] {
        let balancer = Balancer::start(a.address).await;
        let start = a.head().await;
        let mut client = SioClient::start(
            &a,
            json!({"namespaces": [FUNKOS], "transport": transport, "url": balancer.url()}),
        )
        .await;
        client.connected(FUNKOS).await;
        client.welcome(FUNKOS).await;
        a.create_funko(&format!("On A {transport}")).await;
        let mut received = client.updates(FUNKOS, 1).await;

        balancer.send_to(b.address);
        for i in 0..3 {
            a.create_funko(&format!("Written on A while moving {i} {transport}"))
                .await;
        }
        assert!(
            client.connected(FUNKOS).await,
            "{transport}: recovered on B; saw {:?}",
            client.seen
        );
        b.create_funko(&format!("Written on B {transport}")).await;
        received.extend(client.updates(FUNKOS, 4).await);
        assert_eq!(
            payloads(&received),
            log_of(&b, &start, "FUNKOS").await,
            "{transport}"
        );
        client.disconnect().await;
    }
}

crate::backend_tests!(
    default_transports_upgrade_and_deliver_every_change,
    websocket_only_with_both_namespaces,
    polling_only_delivers_every_change,
    a_cursor_in_auth_replays_the_missed_events_then_goes_live,
    reconnects_after_a_restart_and_resumes_from_its_last_cursor,
    unknown_cursors_reset_and_bad_ones_are_refused,
    heartbeats_keep_a_client_connected,
    writes_with_acks_answer_as_rest_does,
    socket_io_client_recovers_by_itself,
);
