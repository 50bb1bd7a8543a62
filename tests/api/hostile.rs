//! Every input surface tried as an attacker would: headers, query strings, JSON bodies,
//! multipart, WebSocket frames, Socket.IO sessions, slow peers and many connections. Each
//! case gets a clear 4xx (or a clean close), changes nothing, loses nothing and panics
//! nothing; what it may hold is bounded.
//!
//! Other modules cover cases of their own: oversized and trickled headers and a descriptor
//! shortage (`security`), made-up methods in the metrics (`security`), a stalled or slow
//! reader (`stream`, `ws`), multi-byte and flooding Socket.IO packets (`socketio`).

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{
    Backend, TestApp, WAIT, WsClient, WsMessage, assert_problem, spawn_app, spawn_app_with,
};

/// Sends `request` (a whole HTTP/1.1 request, head and body) on a new connection and reads
/// the answer to its end (the request should say `Connection: close`).
async fn raw(app: &TestApp, request: &[u8]) -> String {
    let mut conn = tokio::net::TcpStream::connect(app.address).await.unwrap();
    let _ = conn.write_all(request).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(WAIT, conn.read_to_end(&mut answer))
        .await
        .expect("the server answers or closes in time");
    String::from_utf8_lossy(&answer).into_owned()
}

/// The status of a raw answer (0 for none: the server closed the connection).
fn status_of(answer: &str) -> u16 {
    answer.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0)
}

fn funko_body(name: &str) -> Value {
    json!({"name": name, "price": 1, "stock": 1, "category": "OTROS"})
}

/// Headers: conflicting lengths, no Host, made-up methods on every resource, odd origins on
/// reads, and cursors that are not cursors (huge, repeated, garbage).
async fn odd_headers_get_clear_answers_and_change_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let before = app.snapshot().await;
    let body = funko_body("Smuggled").to_string();
    let two_lengths = format!(
        "POST /funkos HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    assert_eq!(status_of(&raw(&app, two_lengths.as_bytes()).await), 400);
    let length_and_chunked = format!(
        "POST /funkos HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let answer = raw(&app, length_and_chunked.as_bytes()).await;
    assert!(matches!(status_of(&answer), 0 | 400), "{answer}");
    let no_host = b"GET /funkos HTTP/1.1\r\nConnection: close\r\n\r\n";
    let answer = raw(&app, no_host).await;
    assert!(status_of(&answer) < 500, "{answer}");
    assert_eq!(app.snapshot().await, before, "nothing changed");

    for path in [
        "/funkos",
        "/funkos/1",
        "/categories",
        "/events",
        "/events/poll",
        "/ws",
    ] {
        let response = app
            .request(Method::from_bytes(b"BREW").unwrap(), path, None)
            .await;
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED, "{path}");
        assert_problem(response, 405).await;
    }

    for origin in ["null", "x:::", "http://evil.example"] {
        let response = app
            .client
            .get(app.url("/funkos"))
            .header("Origin", origin)
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "reads are open: {origin}"
        );
    }

    let huge = "9".repeat(10_000);
    for cursor in [
        "abc",
        "-1",
        "1e9",
        " 12 34",
        huge.as_str(),
        "99999999999999999999",
    ] {
        let response = app
            .client
            .get(app.url("/events"))
            .header("Last-Event-ID", cursor)
            .send()
            .await
            .unwrap();
        assert_problem(response, 400).await;
    }
    let twice = b"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\nLast-Event-ID: x\r\n\
                  Last-Event-ID: 1\r\nConnection: close\r\n\r\n";
    assert_eq!(status_of(&raw(&app, twice).await), 400);
    assert_eq!(app.snapshot().await, before, "nothing changed");
}

/// Query strings: repeated, badly encoded, with NUL bytes, and near the head's size bound.
async fn odd_query_strings_get_clear_answers(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create_funko("Queried").await;
    for query in [
        "limit=1&limit=500",
        "page=%FF",
        "q=%zz",
        "q=%00",
        "sort=%00name",
        "minPrice=NaN",
        "maxPrice=inf",
        "limit=99999999999999999999999",
        "includeDeleted=maybe",
    ] {
        let response = app.get(&format!("/funkos?{query}")).await;
        let status = response.status().as_u16();
        assert!(status == 200 || status == 400, "{query}: {status}");
        if status == 400 {
            assert_problem(response, 400).await;
        }
    }
    let long = format!("/funkos?q={}", "a".repeat(14_000));
    let status = app.get(&long).await.status().as_u16();
    assert!(status == 400 || status == 431, "{status}");
    for query in [
        "after=%FF",
        "timeout=-1",
        "timeout=1e3",
        "limit=0",
        "entity=%00",
        "types=,,,",
    ] {
        let response = app.get(&format!("/events/poll?timeout=0&{query}")).await;
        let status = response.status().as_u16();
        assert!(status == 200 || status == 400, "{query}: {status}");
    }
}

/// JSON bodies: deep nesting, numbers past any range, duplicate keys (a parser differential:
/// refused), a content coding the server does not speak, and nothing at all.
async fn odd_json_bodies_are_refused_and_change_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let json = |body: String| {
        app.client
            .post(app.url("/funkos"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    app.assert_rejected(async { json(deep).await.unwrap() }, 400)
        .await;
    let deep_object = format!(
        "{{\"name\":{}1{}}}",
        "{\"a\":".repeat(5000),
        "}".repeat(5000)
    );
    app.assert_rejected(async { json(deep_object).await.unwrap() }, 400)
        .await;
    let huge = r#"{"name":"Huge","price":1e400,"stock":1,"category":"OTROS"}"#.to_owned();
    app.assert_rejected(async { json(huge).await.unwrap() }, 400)
        .await;
    let big =
        r#"{"name":"Big","price":1e308,"stock":123456789012345678901234567890,"category":"OTROS"}"#;
    app.assert_rejected(async { json(big.to_owned()).await.unwrap() }, 422)
        .await;
    let twice = r#"{"name":"First","name":"Second","price":1,"stock":1,"category":"OTROS"}"#;
    let problem = app
        .assert_rejected(async { json(twice.to_owned()).await.unwrap() }, 400)
        .await;
    assert!(
        problem["detail"].as_str().unwrap().contains("name"),
        "{problem}"
    );
    let nested_twice = r#"{"name":"A","price":1,"stock":1,"category":"OTROS","x":{"k":1,"k":2}}"#;
    app.assert_rejected(async { json(nested_twice.to_owned()).await.unwrap() }, 400)
        .await;
    let gzip = app
        .client
        .post(app.url("/funkos"))
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .body(funko_body("Zipped").to_string());
    app.assert_rejected(async { gzip.send().await.unwrap() }, 415)
        .await;
    let nul = r#"{"name":"Nul\u0000","price":1,"stock":1,"category":"OTROS"}"#;
    let problem = app
        .assert_rejected(async { json(nul.to_owned()).await.unwrap() }, 422)
        .await;
    assert_eq!(problem["errors"][0]["field"], "name", "{problem}");
    app.assert_rejected(async { json(String::new()).await.unwrap() }, 400)
        .await;
    app.assert_rejected(async { json("\u{feff}{}".to_owned()).await.unwrap() }, 400)
        .await;
}

/// A JSON body sent a byte at a time, slower than the body timeout, is answered 408 and
/// changes nothing; the connection is not held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_trickled_past_the_body_timeout_gets_408() {
    let app = spawn_app_with(Backend::Sqlite, |c| c.body_timeout_seconds = 1).await;
    let before = app.snapshot().await;
    let body = funko_body("Trickled").to_string();
    let mut conn = tokio::net::TcpStream::connect(app.address).await.unwrap();
    let head = format!(
        "POST /funkos HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(&body.as_bytes()[..5]).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, conn.read_to_end(&mut answer))
        .await
        .expect("the server gives up on the body")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert_eq!(status_of(&answer), 408, "{answer}");
    assert!(answer.contains("application/problem+json"), "{answer}");
    assert_eq!(app.snapshot().await, before);
}

/// Multipart: thousands of parts before the file, a huge part name, no boundary, a part
/// without a name, an empty file; each is refused, nothing stored, the whole body bounded.
async fn odd_multipart_bodies_are_refused_and_store_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let funko = app.create_funko("Uploaded to").await;
    let path = format!("/funkos/{}/image", funko["id"]);
    let storage = app.config.data_dir.join("storage");
    let stored = || {
        std::fs::read_dir(&storage)
            .map(|d| d.filter_map(Result::ok).count())
            .unwrap_or(0)
    };
    let send = |content_type: &'static str, body: Vec<u8>| {
        app.client
            .put(app.url(&path))
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    let part = |name: &str, bytes: &[u8]| {
        let mut part = format!(
            "--b\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"x\"\r\n\r\n"
        )
        .into_bytes();
        part.extend_from_slice(bytes);
        part.extend_from_slice(b"\r\n");
        part
    };
    let png: &[u8] = include_bytes!("../../static/placeholder.png");

    // Many small parts that add up past the bound, then the file: refused as soon as the
    // bound is passed, whether the length was declared or the body comes in chunks. (The
    // server answers before reading the rest, so the request goes out raw.)
    let before = app.snapshot().await;
    let mut many: Vec<u8> = (0..30_000)
        .flat_map(|i| part(&format!("p{i}"), &[b'x'; 64]))
        .collect();
    many.extend(part("file", png));
    many.extend_from_slice(b"--b--\r\n");
    let head = |framing: String| {
        format!(
            "PUT {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; \
             boundary=b\r\n{framing}\r\nConnection: close\r\n\r\n"
        )
        .into_bytes()
    };
    let mut declared = head(format!("Content-Length: {}", many.len()));
    declared.extend_from_slice(&many);
    assert_eq!(status_of(&raw(&app, &declared).await), 413);
    let mut chunked = head("Transfer-Encoding: chunked".to_owned());
    chunked.extend_from_slice(format!("{:X}\r\n", many.len()).as_bytes());
    chunked.extend_from_slice(&many);
    chunked.extend_from_slice(b"\r\n0\r\n\r\n");
    assert_eq!(status_of(&raw(&app, &chunked).await), 413);
    assert_eq!(app.snapshot().await, before);
    // A part name of 100 KiB.
    let mut long_name = part(&"n".repeat(100 * 1024), b"x");
    long_name.extend_from_slice(b"--b--\r\n");
    let response = send("multipart/form-data; boundary=b", long_name)
        .await
        .unwrap();
    let status = response.status().as_u16();
    assert!(status == 400 || status == 413 || status == 422, "{status}");
    assert_problem(response, status).await;
    // No boundary.
    app.assert_rejected(
        async {
            send("multipart/form-data", part("file", png))
                .await
                .unwrap()
        },
        400,
    )
    .await;
    // A part with no name, then an empty file.
    let mut nameless = b"--b\r\nContent-Disposition: form-data\r\n\r\nx\r\n".to_vec();
    nameless.extend_from_slice(b"--b--\r\n");
    app.assert_rejected(
        async {
            send("multipart/form-data; boundary=b", nameless)
                .await
                .unwrap()
        },
        422,
    )
    .await;
    let mut empty = part("file", b"");
    empty.extend_from_slice(b"--b--\r\n");
    app.assert_rejected(
        async {
            send("multipart/form-data; boundary=b", empty)
                .await
                .unwrap()
        },
        415,
    )
    .await;
    // Cut off before its closing boundary.
    let truncated = part("file", png);
    let response = send("multipart/form-data; boundary=b", truncated)
        .await
        .unwrap();
    assert!(response.status().is_client_error(), "{}", response.status());
    assert_eq!(stored(), 0, "nothing was stored");
}

/// Opens `/ws` and reads its welcome.
async fn welcomed(app: &TestApp) -> WsClient {
    let (ws, welcome) = app.ws_welcomed("/ws").await;
    assert_eq!(welcome["op"], "welcome");
    ws
}

/// WebSocket frames: a message in fragments (small: served; past the bound: 1009), a flood
/// of pings from a client that reads nothing, invalid UTF-8, and close codes valid and not.
async fn odd_websocket_frames_get_clean_answers_or_closes(backend: Backend) {
    use tokio_tungstenite::tungstenite::protocol::{CloseFrame, frame::coding::CloseCode};
    let app = spawn_app(backend).await;

    // Raw frames, to fragment a message as a client may.
    let mut ws = welcomed(&app).await;
    let ping = json!({"op": "ping", "requestId": "frag"}).to_string();
    let (first, rest) = ping.split_at(5);
    let frame = |opcode: u8, fin: bool, payload: &[u8]| {
        tokio_tungstenite::tungstenite::protocol::frame::Frame::message(
            payload.to_vec(),
            tokio_tungstenite::tungstenite::protocol::frame::coding::OpCode::Data(match opcode {
                1 => tokio_tungstenite::tungstenite::protocol::frame::coding::Data::Text,
                _ => tokio_tungstenite::tungstenite::protocol::frame::coding::Data::Continue,
            }),
            fin,
        )
    };
    ws.send(WsMessage::Frame(frame(1, false, first.as_bytes())))
        .await;
    ws.send(WsMessage::Frame(frame(0, true, rest.as_bytes())))
        .await;
    let (pong, _) = ws.next_op("pong").await;
    assert_eq!(pong["requestId"], "frag");
    // Fragments that add up past 64 KiB.
    ws.send(WsMessage::Frame(frame(1, false, &[b' '; 40 * 1024])))
        .await;
    ws.send(WsMessage::Frame(frame(0, true, &[b' '; 40 * 1024])))
        .await;
    let (code, _, _) = ws.closed().await;
    assert_eq!(code, 1009);

    // Ten thousand pings, none of whose pongs are read; then the socket still answers.
    let mut ws = welcomed(&app).await;
    for _ in 0..10_000 {
        ws.send(WsMessage::Ping(vec![0; 16].into())).await;
    }
    ws.ping().await;

    // Invalid UTF-8 in a text frame: the socket closes, nothing else happens.
    let mut ws = welcomed(&app).await;
    ws.send(WsMessage::Frame(frame(1, true, &[0xff, 0xfe, 0xfd])))
        .await;
    assert!(
        matches!(ws.next_message().await, Some(WsMessage::Close(_)) | None),
        "closed"
    );

    // A client's close is answered with a close; a reserved code gets a protocol error.
    let mut ws = welcomed(&app).await;
    ws.send(WsMessage::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    })))
    .await;
    let reply = ws.next_message().await;
    assert!(
        matches!(&reply, Some(WsMessage::Close(Some(frame))) if frame.code == CloseCode::Normal),
        "the server answers the close: {reply:?}"
    );
    let mut ws = welcomed(&app).await;
    ws.send(WsMessage::Frame(
        tokio_tungstenite::tungstenite::protocol::frame::Frame::close(Some(CloseFrame {
            code: CloseCode::from(1005),
            reason: "".into(),
        })),
    ))
    .await;
    let reply = ws.next_message().await;
    assert!(
        matches!(&reply, Some(WsMessage::Close(_)) | None),
        "a reserved code ends it: {reply:?}"
    );
    // The server still serves everyone else.
    welcomed(&app).await.ping().await;
}

/// Socket.IO sessions: unknown sids, a POST on a session now on WebSocket, a body over its
/// bound, overlapping polls and sessions past the per-address bound: each refused cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_socketio_sessions_are_refused_cleanly() {
    let app = spawn_app_with(Backend::Sqlite, |c| c.max_streams_per_ip = 4).await;
    for sid in ["nope", "", &"z".repeat(5000)] {
        let response = app
            .get(&format!("/socket.io/?EIO=4&transport=polling&sid={sid}"))
            .await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    }
    let handshake = app
        .get("/socket.io/?EIO=4&transport=polling")
        .await
        .text()
        .await
        .unwrap();
    let sid = serde_json::from_str::<Value>(handshake.strip_prefix('0').unwrap()).unwrap()["sid"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = format!("/socket.io/?EIO=4&transport=polling&sid={sid}");
    let oversized = app
        .raw(
            Method::POST,
            &path,
            Some("text/plain"),
            vec![b'4'; 1_100_000],
        )
        .await;
    assert_eq!(oversized.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // The session is closed for it.
    let after = app.get(&path).await;
    let status = after.status();
    let text = after.text().await.unwrap();
    assert!(
        status == StatusCode::BAD_REQUEST || text == "1",
        "{status} {text}"
    );

    // Overlapping polls on one session: one is refused and the session ends.
    let handshake = app
        .get("/socket.io/?EIO=4&transport=polling")
        .await
        .text()
        .await
        .unwrap();
    let sid = serde_json::from_str::<Value>(handshake.strip_prefix('0').unwrap()).unwrap()["sid"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = format!("/socket.io/?EIO=4&transport=polling&sid={sid}");
    let (a, b) = tokio::join!(app.get(&path), app.get(&path));
    let statuses = [a.status().as_u16(), b.status().as_u16()];
    assert!(
        statuses.contains(&400) || statuses.contains(&200),
        "{statuses:?}"
    );

    // Past the per-address bound of streams: 503 with Retry-After.
    let mut held = Vec::new();
    loop {
        let response = app.get("/socket.io/?EIO=4&transport=polling").await;
        if response.status() == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(response.headers()["retry-after"], "1");
            break;
        }
        assert_eq!(response.status(), StatusCode::OK);
        held.push(response.text().await.unwrap());
        assert!(held.len() <= 4, "the bound holds");
    }
}

/// Many connections from one address: past the per-address bound a new one is answered 503
/// and closed at once, and the others are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_per_address_bound_are_refused_at_once() {
    let app = spawn_app_with(Backend::Sqlite, |c| c.max_connections_per_ip = 8).await;
    let mut open = Vec::new();
    for _ in 0..8 {
        open.push(tokio::net::TcpStream::connect(app.address).await.unwrap());
    }
    let answer = raw(
        &app,
        b"GET /health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&answer), 503, "{answer}");
    assert!(answer.to_lowercase().contains("retry-after: 1"), "{answer}");
    drop(open.pop());
    // The freed place is reusable once the server has seen the close.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let answer = raw(
            &app,
            b"GET /health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        if status_of(&answer) == 200 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{answer}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

crate::backend_tests!(
    odd_headers_get_clear_answers_and_change_nothing,
    odd_query_strings_get_clear_answers,
    odd_json_bodies_are_refused_and_change_nothing,
    odd_multipart_bodies_are_refused_and_store_nothing,
    odd_websocket_frames_get_clean_answers_or_closes,
);
