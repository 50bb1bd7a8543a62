//! Engine.IO and Socket.IO by hand, where a test must see the protocol's bytes or misbehave:
//! the handshake and its errors, the rules the protocol documents (a close while a poll waits,
//! one WebSocket per session, unknown namespaces, the connect timeout, packets it forbids),
//! silence, a reader that falls behind, floods, and the origin rule of open writes.

use futures_util::{SinkExt, StreamExt};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, WAIT, WsMessage, WsStream, spawn_app, spawn_app_with};

const FUNKOS_WELCOME: &str = "Updates Funkos WS: funko-live";

/// The log after `cursor`, keeping one entity.
async fn log_of(app: &TestApp, cursor: &str, entity: &str) -> Vec<Value> {
    app.events_after(cursor)
        .await
        .into_iter()
        .filter(|event| event["entity"] == entity)
        .collect()
}

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

    /// Polls until `n` packets came, answering pings.
    async fn packets(&self, n: usize) -> Vec<String> {
        let mut packets = Vec::new();
        while packets.len() < n {
            let (status, batch) = self.poll().await;
            assert_eq!(status, StatusCode::OK, "{packets:?}");
            for packet in batch {
                if packet == "2" {
                    self.send(&["3"]).await;
                } else {
                    packets.push(packet);
                }
            }
        }
        packets
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

/// Engine.IO over a WebSocket by hand.
struct RawWs {
    ws: WsStream,
}

impl RawWs {
    async fn connect(app: &TestApp, path: &str, origin: Option<&str>) -> Self {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut request = app.ws_url(path).into_client_request().unwrap();
        if let Some(origin) = origin {
            request
                .headers_mut()
                .insert("Origin", origin.parse().unwrap());
        }
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
            .await
            .expect("the upgrade in time")
            .expect("the upgrade");
        Self { ws }
    }

    async fn send(&mut self, text: &str) {
        self.ws.send(WsMessage::text(text)).await.unwrap();
    }

    /// The next Engine.IO packet other than a ping (answered); `None` once closed.
    async fn next(&mut self) -> Option<String> {
        loop {
            let frame = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a frame in time");
            match frame {
                Some(Ok(WsMessage::Text(text))) if text.as_str() == "2" => self.send("3").await,
                Some(Ok(WsMessage::Text(text))) => return Some(text.to_string()),
                Some(Ok(WsMessage::Close(_))) | None | Some(Err(_)) => return None,
                Some(Ok(_)) => {}
            }
        }
    }

    /// Reads the handshake, joins with `connect`, and reads the CONNECT answer and welcome.
    async fn open_and_join(&mut self, connect: &str) {
        assert!(self.next().await.unwrap().starts_with("0{"));
        self.send(connect).await;
        assert!(self.next().await.unwrap().starts_with("40"));
        assert!(self.next().await.unwrap().contains("connection"));
    }
}

/// The handshake, namespace connects and the protocol's errors, as any Socket.IO client
/// (Postman's included) sees them: the main namespace carries every change, a namespace that
/// does not exist is refused with the protocol's packet, and every event (the welcome too)
/// carries its offset, the cursor after it, as its last argument.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_io_over_raw_http() {
    let app = spawn_app(Backend::Sqlite).await;
    let head = app.head().await;
    let (session, handshake) = RawSession::open(&app).await;
    assert_eq!(handshake["upgrades"], json!(["websocket"]));
    let keepalive = app.config.keepalive_seconds * 1000;
    assert_eq!(handshake["pingInterval"], keepalive);
    assert_eq!(handshake["pingTimeout"], keepalive);
    assert_eq!(handshake["maxPayload"], 1_000_000);

    assert_eq!(
        session
            .send(&["40", "40/ws/v1/funkos,", "40/ws/v1/productos,{}"])
            .await,
        StatusCode::OK
    );
    let packets = session.packets(5).await;
    let connected = |prefix: &str| -> Value {
        let packet = packets.iter().find(|p| p.starts_with(prefix)).unwrap();
        serde_json::from_str(&packet[prefix.len()..]).unwrap()
    };
    for prefix in ["40{", "40/ws/v1/funkos,"] {
        let prefix = prefix.trim_end_matches('{');
        let answer = connected(prefix);
        assert!(answer["sid"].is_string(), "{answer}");
        assert!(answer["pid"].is_string(), "the recovery id: {answer}");
    }
    let welcomes = [
        format!(r#"42["connection","Updates WS: funko-live","{head}"]"#),
        format!(r#"42/ws/v1/funkos,["connection","{FUNKOS_WELCOME}","{head}"]"#),
        r#"44/ws/v1/productos,{"message":"Invalid namespace"}"#.to_owned(),
    ];
    for expected in welcomes {
        assert!(packets.contains(&expected), "{expected} in {packets:?}");
    }

    // A Funko's event reaches both namespaces, a category's only the main one; each with
    // its cursor as its offset.
    let funko = app.create_funko("Raw").await;
    let category = app.post("/categories", json!({"name": "Raw"})).await;
    assert_eq!(category.status(), StatusCode::CREATED);
    let log = app.events_after(&head).await;
    let packets = session.packets(3).await;
    let main: Vec<Value> = packets
        .iter()
        .filter_map(|p| p.strip_prefix("42"))
        .filter(|p| p.starts_with('['))
        .map(|p| serde_json::from_str(p).unwrap())
        .collect();
    let funkos: Vec<Value> = packets
        .iter()
        .filter_map(|p| p.strip_prefix("42/ws/v1/funkos,"))
        .map(|p| serde_json::from_str(p).unwrap())
        .collect();
    assert_eq!(main.len(), 2, "{packets:?}");
    for (event, logged) in main.iter().zip(&log) {
        assert_eq!(event, &json!(["updates", logged, logged["id"]]));
    }
    assert_eq!(funkos, [json!(["updates", log[0], log[0]["id"]])]);
    assert_eq!(funkos[0][1]["data"], funko);

    // Leaving: `close` ends the session; it is then unknown.
    assert_eq!(
        session.send(&["41/ws/v1/funkos,", "1"]).await,
        StatusCode::OK
    );
    let (status, _) = session.poll().await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

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
    let response = app
        .raw(
            reqwest::Method::POST,
            "/socket.io/?EIO=4&transport=polling",
            None,
            String::new(),
        )
        .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(response.json::<Value>().await.unwrap()["code"], 2);
    // Only `/socket.io/` itself is Engine.IO's.
    assert_eq!(app.get("/socket.io/elsewhere").await.status(), 404);
    // The rest of the API still answers next to it.
    assert_eq!(app.get("/funkos").await.status(), StatusCode::OK);
}

/// The client closes (`1`) while a poll waits: the poll answers `noop`, and the session is
/// gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_poll_answers_noop_when_the_client_closes() {
    let app = spawn_app(Backend::Sqlite).await;
    let (session, _) = RawSession::open(&app).await;
    assert_eq!(session.send(&["40"]).await, StatusCode::OK);
    session.packets(2).await;
    let poll = session.poll();
    tokio::pin!(poll);
    // The poll is held: nothing is queued.
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(200), &mut poll)
            .await
            .is_err()
    );
    let (closed, (status, packets)) = tokio::join!(session.send(&["1"]), poll);
    assert_eq!(closed, StatusCode::OK);
    assert_eq!((status, packets), (StatusCode::OK, vec!["6".to_owned()]));
    assert_eq!(session.poll().await.0, StatusCode::BAD_REQUEST);
}

/// Two polls at once break the packets' order: the first is answered `close`, the second
/// refused, and the session is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_polls_close_the_session() {
    let app = spawn_app(Backend::Sqlite).await;
    let (session, _) = RawSession::open(&app).await;
    let first = session.poll();
    tokio::pin!(first);
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(200), &mut first)
            .await
            .is_err()
    );
    let ((first, packets), (second, _)) = tokio::join!(first, session.poll());
    assert_eq!((first, packets), (StatusCode::OK, vec!["1".to_owned()]));
    assert_eq!(second, StatusCode::BAD_REQUEST);
    assert_eq!(session.poll().await.0, StatusCode::BAD_REQUEST);
}

/// A session that joins no namespace within the connect timeout is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_joins_no_namespace_is_closed() {
    let app = spawn_app_with(Backend::Sqlite, |c| {
        c.connect_timeout_seconds = 1;
        c.keepalive_seconds = 30;
    })
    .await;
    let (idle, _) = RawSession::open(&app).await;
    let (joined, _) = RawSession::open(&app).await;
    assert_eq!(joined.send(&["40/ws/v1/funkos,"]).await, StatusCode::OK);
    assert_eq!(idle.poll().await, (StatusCode::OK, vec!["1".to_owned()]));
    assert_eq!(idle.poll().await.0, StatusCode::BAD_REQUEST);
    // The one that joined stays.
    assert_eq!(joined.packets(2).await.len(), 2);
    let funko = app.create_funko("Joined").await;
    let event = joined.packets(1).await.remove(0);
    let event: Value =
        serde_json::from_str(event.strip_prefix("42/ws/v1/funkos,").unwrap()).unwrap();
    assert_eq!(event[1]["data"], funko);
}

/// Packets the protocol does not allow close the session that sent them (the POST is refused,
/// the session then unknown), and nobody else's: a second CONNECT to a joined namespace, a
/// packet to a namespace not joined, a client ping (in v4 the server pings), an upgrade
/// outside an upgrade, a CONNECT_ERROR (a server packet), binary packets (not supported:
/// every payload here is JSON text), an unknown packet type, a payload that is not JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packets_the_protocol_forbids_close_the_session() {
    let app = spawn_app(Backend::Sqlite).await;
    let (bystander, _) = RawSession::open(&app).await;
    assert_eq!(bystander.send(&["40/ws/v1/funkos,"]).await, StatusCode::OK);
    bystander.packets(2).await;
    for packets in [
        &["40/ws/v1/funkos,", "40/ws/v1/funkos,"][..],
        &["40", "42/ws/v1/funkos,[\"create\",{}]"],
        &["40", "41/ws/v1/funkos,"],
        &["40", "43/ws/v1/funkos,1[]"],
        &["2"],
        &["5"],
        &["44{\"message\":\"x\"}"],
        &["40", "451-[\"create\",{\"_placeholder\":true,\"num\":0}]"],
        &["40", "461-1[{\"_placeholder\":true,\"num\":0}]"],
        &["7"],
        &["49"],
        &["40", "42[\"create\""],
        &["40", "42{\"not\":\"an array\"}"],
        &["40", "42[\"connect\"]"],
        &["40{\"cursor\":1}x"],
    ] {
        let (session, _) = RawSession::open(&app).await;
        assert_eq!(
            session.send(packets).await,
            StatusCode::BAD_REQUEST,
            "{packets:?}"
        );
        let (status, body) = session.poll().await;
        assert!(
            status == StatusCode::BAD_REQUEST || body.last().is_some_and(|p| p == "1"),
            "{packets:?}: the session is closed: {status} {body:?}"
        );
        assert_eq!(
            session.poll().await.0,
            StatusCode::BAD_REQUEST,
            "{packets:?}"
        );
    }
    // The bystander's session still delivers.
    let funko = app.create_funko("Still here").await;
    let event = bystander.packets(1).await.remove(0);
    assert!(
        event.contains(&funko["name"].as_str().unwrap().to_string()),
        "{event}"
    );
}

/// The upgrade to WebSocket by hand: probe, `noop` for the pending poll, `5`; then a second
/// WebSocket for the same session completes its handshake and is closed at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_websocket_for_an_upgraded_session_is_closed() {
    let app = spawn_app(Backend::Sqlite).await;
    let (session, _) = RawSession::open(&app).await;
    assert_eq!(session.send(&["40/ws/v1/funkos,"]).await, StatusCode::OK);
    session.packets(2).await;
    let path = format!("/socket.io/?EIO=4&transport=websocket&sid={}", session.sid);
    let mut ws = RawWs::connect(&app, &path, None).await;
    let poll = session.poll();
    tokio::pin!(poll);
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(200), &mut poll)
            .await
            .is_err()
    );
    ws.send("2probe").await;
    assert_eq!(ws.next().await.as_deref(), Some("3probe"));
    assert_eq!(poll.await, (StatusCode::OK, vec!["6".to_owned()]));
    ws.send("5").await;
    // The WebSocket carries the session now; polling is refused.
    let funko = app.create_funko("Upgraded").await;
    let event = ws.next().await.unwrap();
    assert!(event.starts_with("42/ws/v1/funkos,[\"updates\""), "{event}");
    assert!(event.contains(funko["name"].as_str().unwrap()), "{event}");
    assert_eq!(session.poll().await.0, StatusCode::BAD_REQUEST);

    let mut second = RawWs::connect(&app, &path, None).await;
    assert_eq!(second.next().await, None, "closed at once");
    // The first one is untouched.
    app.create_funko("Still upgraded").await;
    assert!(ws.next().await.unwrap().contains("Still upgraded"));
}

/// While writes are open without tokens, a write over Socket.IO from another origin is
/// refused with REST's 403 problem, and one with no `Origin` (a tool) is taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_writes_over_socketio_follow_the_origin_rule() {
    let app = spawn_app(Backend::Sqlite).await;
    let head = app.head().await;
    let create = r#"421["create",{"entity":"FUNKOS","data":{"name":"Evil","price":1,"stock":1,"category":"OTROS"}}]"#;
    let ws_path = "/socket.io/?EIO=4&transport=websocket";
    let mut evil = RawWs::connect(&app, ws_path, Some("http://evil.example")).await;
    evil.open_and_join("40").await;
    evil.send(create).await;
    let ack = evil.next().await.unwrap();
    let ack: Value = serde_json::from_str(ack.strip_prefix("431").expect("an ack")).unwrap();
    assert_eq!(ack[0]["status"], 403, "{ack}");
    let rest = app
        .client
        .post(app.url("/funkos"))
        .header("Origin", "http://evil.example")
        .json(&json!({"name":"Evil","price":1,"stock":1,"category":"OTROS"}))
        .send()
        .await
        .unwrap();
    assert_eq!(rest.status(), 403);
    assert_eq!(ack[0]["body"], rest.json::<Value>().await.unwrap());
    assert!(app.events_after(&head).await.is_empty(), "nothing written");

    let mut tool = RawWs::connect(&app, ws_path, None).await;
    tool.open_and_join("40").await;
    tool.send(create).await;
    let ack = loop {
        let packet = tool.next().await.unwrap();
        if let Some(ack) = packet.strip_prefix("431") {
            break serde_json::from_str::<Value>(ack).unwrap();
        }
    };
    assert_eq!(ack[0]["status"], 201, "{ack}");
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
/// payload costs a bounded number of tasks and bounded memory: the refusals of a client that
/// does not read them wait for it (and its heartbeat then ends it), a repeated CONNECT closes
/// the session at once; other sessions carry on meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_connects_is_refused_with_bounded_tasks() {
    let app = spawn_app_with(Backend::Sqlite, |c| c.keepalive_seconds = 1).await;
    let (bystander, _) = RawSession::open(&app).await;
    assert_eq!(bystander.send(&["40/ws/v1/funkos,"]).await, StatusCode::OK);
    bystander.packets(2).await;
    let tasks = || {
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
    };
    for packet in ["40/nowhere,", "40/ws/v1/funkos,"] {
        let before = tasks();
        let (session, _) = RawSession::open(&app).await;
        let flood = vec![packet; 1_000_000 / (packet.len() + 1)];
        let sent = session.send(&flood);
        tokio::pin!(sent);
        // The bystander keeps polling and answering pings while the flood is taken.
        let status = loop {
            tokio::select! {
                status = &mut sent => break status,
                _ = bystander.packets(1) => {}
            }
        };
        assert_eq!(status, StatusCode::BAD_REQUEST, "{packet}");
        let after = tasks();
        assert!(
            after < before + 64,
            "{packet}: {before} tasks before, {after} after"
        );
        assert_eq!(session.poll().await.0, StatusCode::BAD_REQUEST, "{packet}");
    }
    // The bystander's session still delivers.
    let funko = app.create_funko("After the flood").await;
    loop {
        let packet = bystander.packets(1).await.remove(0);
        if packet.contains("After the flood") {
            let event: Value =
                serde_json::from_str(packet.strip_prefix("42/ws/v1/funkos,").unwrap()).unwrap();
            assert_eq!(event[1]["data"], funko);
            break;
        }
    }
}

/// Live events of two namespaces (each written by the fan-out) and the session's own packets
/// (acks, pings) share one WebSocket. Through a small receive window, with big events and an
/// acked event between writes, every frame stays whole: each namespace gets its events once
/// and in order, and every ack comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_stay_whole_when_namespaces_and_acks_share_the_socket() {
    let app = spawn_app(Backend::Sqlite).await;
    let start = app.head().await;
    let tcp = app.small_window_connection().await;
    let (ws, _) = tokio_tungstenite::client_async(
        app.ws_url("/socket.io/?EIO=4&transport=websocket"),
        tokio_tungstenite::MaybeTlsStream::Plain(tcp),
    )
    .await
    .unwrap();
    let mut raw = RawWs { ws };
    raw.open_and_join("40").await;
    raw.send("40/ws/v1/funkos,").await;
    assert!(raw.next().await.unwrap().starts_with("40/ws/v1/funkos,"));
    assert!(raw.next().await.unwrap().contains(FUNKOS_WELCOME));
    let (mut send, mut receive) = raw.ws.split();
    let writes = 120;

    let writing = async {
        for i in 0..writes {
            app.create_big_funkos(&format!("Shared {i}"), 1).await;
            // An event the server does not know, with an ack: answered by the session itself.
            send.send(WsMessage::text(format!(r#"42{i}["nope"]"#)))
                .await
                .unwrap();
        }
        send
    };
    let reading = async {
        let (mut main, mut funkos, mut acks) = (Vec::new(), Vec::new(), Vec::new());
        while main.len() < writes || funkos.len() < writes || acks.len() < writes {
            let frame = receive.next().await.expect("open").expect("a whole frame");
            let WsMessage::Text(text) = frame else {
                continue;
            };
            let text = text.as_str();
            if let Some(event) = text.strip_prefix("42/ws/v1/funkos,") {
                funkos.push(serde_json::from_str::<Value>(event).unwrap()[1].clone());
            } else if let Some(event) = text.strip_prefix("42") {
                main.push(serde_json::from_str::<Value>(event).unwrap()[1].clone());
            } else if let Some(ack) = text.strip_prefix("43") {
                let id: String = ack.chars().take_while(char::is_ascii_digit).collect();
                acks.push(id.parse::<usize>().unwrap());
            } else {
                // The server's pings are answered by nobody here; none are due this soon.
                panic!("unexpected packet {text:?}");
            }
        }
        (main, funkos, acks)
    };
    let (_send, (main, funkos, acks)) =
        tokio::time::timeout(WAIT * 4, async { tokio::join!(writing, reading) })
            .await
            .expect("every event and ack in time");
    let log = log_of(&app, &start, "FUNKOS").await;
    assert_eq!(
        crate::helpers::cursors(&main),
        crate::helpers::cursors(&log)
    );
    assert!(main == log && funkos == log, "both namespaces got the log");
    assert_eq!(acks, (0..writes).collect::<Vec<_>>());
}
