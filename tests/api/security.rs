//! Who may write, what a client may hold open, and what `/metrics` shows.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use serde_json::Value;

use crate::helpers::{Backend, TestApp, assert_problem, spawn_app, spawn_app_with};

async fn writes_need_a_known_token_when_tokens_are_set(backend: Backend) {
    let app = spawn_app_with(backend, |c| {
        c.api_tokens = vec!["s3cret".into(), "other".into()]
    })
    .await;
    let start = app.head().await;
    let body = json!({"name": "Guarded", "price": 1, "stock": 1, "category": "OTROS"});

    let response = app.post("/funkos", body.clone()).await;
    assert_eq!(
        response.headers()["www-authenticate"],
        "Bearer realm=\"funko-live\""
    );
    assert_problem(response, 401).await;
    let response = app
        .client
        .post(app.url("/funkos"))
        .bearer_auth("guess")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_problem(response, 403).await;
    let response = app
        .client
        .post(app.url("/funkos"))
        .header("Authorization", "Basic czNjcmV0")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_problem(response, 401).await;
    for (method, path) in [
        ("PUT", "/funkos/1"),
        ("PATCH", "/funkos/1"),
        ("DELETE", "/funkos/1"),
        ("POST", "/categories"),
        ("PUT", "/categories/1"),
        ("DELETE", "/categories/1"),
    ] {
        let response = app
            .request(method.parse().unwrap(), path, Some(json!({"name": "NOPE"})))
            .await;
        assert_problem(response, 401).await;
    }
    assert!(
        app.events_after(&start).await.is_empty(),
        "refused writes change nothing"
    );

    let response = app
        .client
        .post(app.url("/funkos"))
        .bearer_auth("s3cret")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    // Reads and streams stay public.
    assert_eq!(app.get("/funkos").await.status(), StatusCode::OK);
    assert_eq!(app.get("/funkos/1").await.status(), StatusCode::OK);
    let mut sse = app.sse(&format!("/events?lastEventId={start}"), None).await;
    assert_eq!(sse.next_event().await["data"]["name"], "Guarded");
}

/// Sends a raw HTTP/1.1 request (`head` without its final blank line) with a JSON body, and
/// returns the status and the body.
async fn raw_json_request(app: &TestApp, head: &str, body: &str) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(app.address).await.unwrap();
    let request = format!(
        "{head}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(crate::helpers::WAIT, conn.read_to_end(&mut answer))
        .await
        .expect("an answer in time")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    let status = answer[9..12].parse().unwrap();
    let body = answer.split_once("\r\n\r\n").unwrap().1;
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// While writes are open (no tokens, on loopback), a write is accepted only from this
/// server's own pages or a listed origin, and only through a loopback `Host`: a page on any
/// other site (or a DNS name rebound to 127.0.0.1) gets 403 with a problem body that says
/// why, and changes nothing. Reads and streams stay open to every origin.
async fn open_writes_are_refused_from_other_origins_and_hosts(backend: Backend) {
    let app = spawn_app_with(backend, |c| {
        c.cors_origins = vec!["https://shop.example".into()]
    })
    .await;
    let funko = app.create_funko("Target").await;
    let id = funko["id"].as_i64().unwrap();
    let here = format!("http://{}", app.address);
    let body = json!({"name": "Planted", "price": 1, "stock": 1, "category": "OTROS"});
    let writes: Vec<(reqwest::Method, String, Value)> = vec![
        (reqwest::Method::POST, "/funkos".into(), body.clone()),
        (reqwest::Method::PUT, format!("/funkos/{id}"), body.clone()),
        (
            reqwest::Method::PATCH,
            format!("/funkos/{id}"),
            json!({"stock": 0}),
        ),
        (
            reqwest::Method::DELETE,
            format!("/funkos/{id}"),
            Value::Null,
        ),
        (
            reqwest::Method::POST,
            "/categories".into(),
            json!({"name": "PLANTED"}),
        ),
        (
            reqwest::Method::PUT,
            "/categories/1".into(),
            json!({"name": "PLANTED"}),
        ),
        (reqwest::Method::DELETE, "/categories/1".into(), Value::Null),
    ];
    for (method, path, body) in &writes {
        let send = || {
            let mut request = app
                .client
                .request(method.clone(), app.url(path))
                .header("Origin", "http://evil.example");
            if !body.is_null() {
                request = request.json(body);
            }
            async move { request.send().await.unwrap() }
        };
        let problem = app.assert_rejected(send(), 403).await;
        assert!(
            problem["detail"]
                .as_str()
                .unwrap()
                .contains("http://evil.example"),
            "{method} {path}: {problem}"
        );
    }
    // An upload from elsewhere, too.
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(b"\x89PNG\r\n\x1a\nrest".to_vec()).file_name("x.png"),
    );
    let upload = app
        .client
        .put(app.url(&format!("/funkos/{id}/image")))
        .header("Origin", "null")
        .multipart(form);
    app.assert_rejected(async { upload.send().await.unwrap() }, 403)
        .await;

    // A DNS name rebound to 127.0.0.1: same-origin in the browser's eyes, but not a loopback
    // Host.
    let before = app.snapshot().await;
    let (status, problem) = raw_json_request(
        &app,
        "POST /funkos HTTP/1.1\r\nHost: rebound.example:8080\r\nOrigin: http://rebound.example:8080",
        &body.to_string(),
    )
    .await;
    assert_eq!(status, 403, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("rebound.example"),
        "{problem}"
    );
    let (status, problem) = raw_json_request(
        &app,
        "POST /funkos HTTP/1.1\r\nHost: rebound.example",
        &body.to_string(),
    )
    .await;
    assert_eq!(status, 403, "without an Origin too: {problem}");
    assert_eq!(app.snapshot().await, before, "nothing changed");

    // This server's own pages, a listed origin, and clients that send no Origin may write.
    for (origin, name) in [
        (Some(here.as_str()), "Same origin"),
        (Some("https://shop.example"), "Listed origin"),
        (None, "No origin"),
    ] {
        let mut request = app
            .client
            .post(app.url("/funkos"))
            .json(&json!({"name": name, "price": 1, "stock": 1, "category": "OTROS"}));
        if let Some(origin) = origin {
            request = request.header("Origin", origin);
        }
        assert_eq!(
            request.send().await.unwrap().status(),
            StatusCode::CREATED,
            "{name}"
        );
    }
    let (status, _) = raw_json_request(
        &app,
        "POST /funkos HTTP/1.1\r\nHost: localhost",
        &json!({"name": "Localhost", "price": 1, "stock": 1, "category": "OTROS"}).to_string(),
    )
    .await;
    assert_eq!(status, 201, "localhost is loopback");

    // Reads and streams stay open to any origin.
    let read = app
        .client
        .get(app.url("/funkos"))
        .header("Origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), StatusCode::OK);
    let stream = app
        .client
        .get(app.url("/events/poll?timeout=0"))
        .header("Origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
}

/// With tokens, the token is the rule: a write with a good one is accepted from anywhere.
async fn with_tokens_a_good_token_writes_from_any_origin(backend: Backend) {
    let app = spawn_app_with(backend, |c| c.api_tokens = vec!["s3cret".into()]).await;
    let response = app
        .client
        .post(app.url("/funkos"))
        .header("Origin", "http://elsewhere.example")
        .bearer_auth("s3cret")
        .json(&json!({"name": "Tokened", "price": 1, "stock": 1, "category": "OTROS"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn open_writes_are_refused_off_loopback_unless_allowed() {
    let mut config = funko_live::Config::defaults();
    let dir = tempfile::tempdir().unwrap();
    config.data_dir = dir.path().to_owned();
    config.database_url = Some(format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("t.db").display()
    ));
    config.bind = "0.0.0.0:0".parse().unwrap();
    let refused = funko_live::App::build(config.clone())
        .await
        .err()
        .expect("refused");
    assert!(refused.to_string().contains("refusing"), "{refused}");
    config.allow_open_writes = true;
    funko_live::App::build(config.clone())
        .await
        .expect("allowed explicitly");
    config.allow_open_writes = false;
    config.api_tokens = vec!["t".into()];
    funko_live::App::build(config)
        .await
        .expect("tokens make it safe");
}

async fn cors_is_off_unless_origins_are_listed(backend: Backend) {
    let closed = spawn_app(backend).await;
    let response = closed
        .client
        .get(closed.url("/funkos"))
        .header("Origin", "https://shop.example")
        .send()
        .await
        .unwrap();
    assert!(
        response
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );

    let open = spawn_app_with(backend, |c| {
        c.cors_origins = vec!["https://shop.example".into()]
    })
    .await;
    let response = open
        .client
        .get(open.url("/funkos"))
        .header("Origin", "https://shop.example")
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        "https://shop.example"
    );
    let response = open
        .client
        .get(open.url("/funkos"))
        .header("Origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert!(
        response
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
}

async fn stream_limits_answer_503_with_retry_after(backend: Backend) {
    let app = spawn_app_with(backend, |c| {
        c.max_streams_per_ip = 2;
        // A closed SSE connection is noticed at the next write: keep-alives make that soon.
        c.keepalive_seconds = 1;
    })
    .await;
    let first = app.sse("/events", None).await;
    let _second = app.sse("/events", None).await;
    let refused = app.get("/events").await;
    assert_eq!(refused.headers()["retry-after"], "1");
    assert_problem(refused, 503).await;
    drop(first);
    // The place is free once the server sees the first stream end.
    let deadline = tokio::time::Instant::now() + crate::helpers::WAIT;
    loop {
        let response = app.get("/events/poll?timeout=0").await;
        if response.status() == StatusCode::OK {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a freed place is reusable"
        );
        tokio::task::yield_now().await;
    }
}

async fn long_poll_concurrency_is_bounded(backend: Backend) {
    let app = std::sync::Arc::new(spawn_app_with(backend, |c| c.max_pollers = 1).await);
    // One poll is held (it retries until it has the only place)...
    let held = {
        let app = app.clone();
        tokio::spawn(async move {
            loop {
                let response = app.get("/events/poll?timeout=30").await;
                if response.status() != StatusCode::SERVICE_UNAVAILABLE {
                    return response.status();
                }
            }
        })
    };
    // ...so another is refused.
    let deadline = tokio::time::Instant::now() + crate::helpers::WAIT;
    loop {
        let response = app.get("/events/poll?timeout=0").await;
        if response.status() == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(response.headers()["retry-after"], "1");
            assert_problem(response, 503).await;
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the second poller is refused"
        );
    }
    // A commit answers the held poll, which frees the place.
    app.create_funko("Frees the poller").await;
    assert_eq!(held.await.unwrap(), StatusCode::OK);
}

async fn metrics_count_requests_events_and_streams(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create_funko("Counted").await;
    assert_eq!(app.get("/funkos/abc").await.status(), 400);
    let _sse = app.sse("/events", None).await;
    let response = app.get("/metrics").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = response.text().await.unwrap();
    for needle in [
        "funko_live_http_requests_total{method=\"POST\",route=\"createFunko\",status=\"201\"}",
        "funko_live_http_requests_total{method=\"GET\",route=\"getFunko\",status=\"400\"}",
        "funko_live_http_request_duration_seconds_bucket{",
        "funko_live_events_appended_total ",
        "funko_live_stream_connections{transport=\"sse\"}",
        "funko_live_db_pool_connections{pool=\"writer\",state=\"idle\"}",
        "funko_live_stream_resets_total{reason=\"expired\"}",
        "funko_live_stream_slow_cut_off_total",
    ] {
        assert!(text.contains(needle), "/metrics lacks {needle}:\n{text}");
    }
}

/// Odd methods and paths a client makes up add no series to `/metrics`: every label comes
/// from a known set (methods outside the standard ones are `other`, unmatched paths one
/// route label).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_methods_and_paths_add_no_metric_series() {
    let app = spawn_app(Backend::Sqlite).await;
    for i in 0..1000 {
        let method = reqwest::Method::from_bytes(format!("ODD{i}X").as_bytes()).unwrap();
        let response = app
            .request(method, &format!("/funkos/odd-path-{i}"), None)
            .await;
        assert!(response.status().is_client_error(), "{}", response.status());
        let response = app.get(&format!("/odd-path-{i}/x")).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
    }
    let text = app.get("/metrics").await.text().await.unwrap();
    assert!(!text.contains("ODD"), "a made-up method became a label");
    assert!(!text.contains("odd-path"), "a path became a label");
    let methods: std::collections::BTreeSet<&str> = text
        .lines()
        .filter_map(|line| line.split_once("method=\"")?.1.split_once('"'))
        .map(|(method, _)| method)
        .collect();
    let known = [
        "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE", "other",
    ];
    assert!(
        methods.iter().all(|m| known.contains(m)),
        "method labels: {methods:?}"
    );
    assert!(methods.contains("other"), "{methods:?}");
}

/// A client that trickles its headers is closed at the header deadline.
#[tokio::test]
async fn slow_headers_are_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app_with(Backend::Sqlite, |c| c.header_timeout_seconds = 1).await;
    let mut slow = tokio::net::TcpStream::connect(app.address).await.unwrap();
    slow.write_all(b"GET /funkos HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(crate::helpers::WAIT, slow.read_to_end(&mut rest)).await;
    assert!(
        closed.is_ok(),
        "the server closes a connection whose headers never end"
    );
    // A prompt client is served as usual, also after the deadline has passed for others.
    assert_eq!(app.get("/funkos").await.status(), StatusCode::OK);
    let mut prompt = tokio::net::TcpStream::connect(app.address).await.unwrap();
    prompt
        .write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    prompt.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// Every request's headers have the deadline, not only a connection's first: a client that
/// trickles the headers of its second request on a kept-alive connection is closed too.
#[tokio::test]
async fn slow_headers_on_a_kept_alive_connection_are_cut_off() {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let app = spawn_app_with(Backend::Sqlite, |c| c.header_timeout_seconds = 1).await;
    let mut conn = BufReader::new(tokio::net::TcpStream::connect(app.address).await.unwrap());
    conn.get_mut()
        .write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    // The first answer, read to its end so that the connection is kept alive and idle.
    let mut length = None;
    loop {
        let mut line = String::new();
        conn.read_line(&mut line).await.unwrap();
        if line == "\r\n" {
            break;
        }
        if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = Some(value.trim().parse::<usize>().unwrap());
        }
        assert!(!line.is_empty(), "the first request is answered");
    }
    let mut body = vec![0; length.expect("a sized answer")];
    conn.read_exact(&mut body).await.unwrap();
    // The second request never finishes its headers.
    conn.get_mut()
        .write_all(b"GET /funkos HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(crate::helpers::WAIT, conn.read_to_end(&mut rest)).await;
    assert!(
        closed.is_ok(),
        "the server closes a kept-alive connection whose next headers never end"
    );
    assert!(
        !String::from_utf8_lossy(&rest).starts_with("HTTP/1.1 5"),
        "no 5xx: {}",
        String::from_utf8_lossy(&rest)
    );
}

/// A request head over the server's buffer bound is answered 431 (or the connection closed),
/// never a 5xx; a head of a size browsers send is served.
#[tokio::test]
async fn oversized_request_headers_get_431() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app(Backend::Sqlite).await;
    let head = |cookie: usize| {
        format!(
            "GET /health/live HTTP/1.1\r\nHost: x\r\nCookie: {}\r\nConnection: close\r\n\r\n",
            "c".repeat(cookie)
        )
    };
    let address = app.address;
    let send = |request: String| async move {
        let mut conn = tokio::net::TcpStream::connect(address).await.unwrap();
        // The server may answer and close before it has read all of a too-large head, so a
        // failed write is not a failure; the answer is what counts.
        let _ = conn.write_all(request.as_bytes()).await;
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(crate::helpers::WAIT, conn.read_to_end(&mut answer))
            .await
            .expect("the server answers or closes");
        String::from_utf8_lossy(&answer).into_owned()
    };
    let answer = send(head(8 * 1024)).await;
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "an 8 KiB head is served: {answer}"
    );
    let answer = send(head(64 * 1024)).await;
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
        "a 64 KiB head gets 431 or a close: {answer}"
    );
}

/// Running out of file descriptors (EMFILE) does not stop the server: it keeps retrying to
/// accept and serves the waiting client once descriptors are available again.
#[tokio::test]
async fn accept_survives_running_out_of_file_descriptors() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if std::process::Command::new("prlimit")
        .arg("--version")
        .output()
        .is_err()
    {
        println!("skipped: prlimit (util-linux) is not installed");
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let database_url = Backend::Sqlite.fresh_database(dir.path()).await;
    let server = crate::crash::ServerProcess::start(&database_url, dir.path(), &[]).await;
    let pid = server.pid().to_string();
    let prlimit = |soft: String| {
        let status = std::process::Command::new("prlimit")
            .args(["--pid", &pid, &format!("--nofile={soft}:")])
            .status()
            .expect("running prlimit");
        assert!(status.success(), "prlimit --nofile={soft}:");
    };
    let address = server.base.trim_start_matches("http://").to_owned();
    let deadline = tokio::time::Instant::now() + crate::helpers::WAIT;
    let mut waiting = loop {
        // No descriptor to spare: the limit is the lowest free descriptor number (a new one
        // takes the lowest free number, and open ones above a limit stay open), so every
        // accept now fails with EMFILE. One the server held only while they were listed
        // (SQLite closes a connection on its worker thread, a moment later) frees a number
        // below the limit: then this client is served at once, and they are listed again.
        let open: std::collections::BTreeSet<u32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .filter_map(|fd| fd.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        let lowest_free = (0..).find(|fd| !open.contains(fd)).unwrap();
        prlimit(lowest_free.to_string());
        let mut client = tokio::net::TcpStream::connect(&address).await.unwrap();
        client
            .write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut first = [0; 1];
        match tokio::time::timeout(Duration::from_millis(500), client.read(&mut first)).await {
            Err(_) => break client,
            Ok(_) => assert!(
                tokio::time::Instant::now() < deadline,
                "every client was served: a descriptor stayed free"
            ),
        }
    };
    let deadline = tokio::time::Instant::now() + crate::helpers::WAIT;
    while !server.output().contains("accept failed") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the server logs the failed accept; its output:\n{}",
            server.output()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    prlimit("1024".to_owned());
    let mut answer = String::new();
    tokio::time::timeout(crate::helpers::WAIT, waiting.read_to_string(&mut answer))
        .await
        .expect("the waiting client is served once descriptors are free")
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

crate::backend_tests!(
    open_writes_are_refused_from_other_origins_and_hosts,
    with_tokens_a_good_token_writes_from_any_origin,
    writes_need_a_known_token_when_tokens_are_set,
    cors_is_off_unless_origins_are_listed,
    stream_limits_answer_503_with_retry_after,
    long_poll_concurrency_is_bounded,
    metrics_count_requests_events_and_streams,
);
