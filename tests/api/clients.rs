//! Clients nobody here wrote: the live page in headless Chromium, and the `eventsource`
//! npm package (a WHATWG EventSource that reconnects with `Last-Event-ID` on its own).

use std::{process::Stdio, time::Duration};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::{
    helpers::{Backend, WAIT, cursors, spawn_app},
    js::{chromium, js_dir, node_ready, run_node},
};

/// A server that prunes almost at once, so a client that was away gets a reset.
async fn forgetful() -> crate::helpers::TestApp {
    crate::helpers::spawn_app_with(Backend::Sqlite, |c| {
        c.retention_events = 1;
        c.prune_interval_seconds = 1;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_page_follows_changes_on_every_transport_in_chromium() {
    if !node_ready() || chromium().is_none() {
        return;
    }
    let (app, forgetful) = (spawn_app(Backend::Sqlite).await, forgetful().await);
    let page = app.get("/").await;
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("funko-live"));
    for asset in ["/client.js", "/client.d.ts", "/app.js", "/app.css"] {
        let response = app.get(asset).await;
        assert_eq!(response.status(), 200, "{asset}");
        assert_eq!(response.headers()["cache-control"], "no-cache", "{asset}");
    }
    let output = run_node(
        "browser.mjs",
        &[app.url(""), forgetful.url("")],
        Duration::from_secs(240),
    )
    .await;
    for label in [
        "sse", "poll", "ws", "fallback", "form", "view", "reset", "phone", "desktop",
    ] {
        assert!(
            output.contains(&format!("ok {label}:")),
            "the page followed changes on {label}:\n{output}"
        );
    }
}

/// Swagger UI's "Try it out" on `GET /events` shows a change event once it commits: the
/// spec's examples end the stream after one event, so the response panel fills in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swagger_ui_try_it_out_on_the_stream_shows_the_next_event() {
    if !node_ready() || chromium().is_none() {
        return;
    }
    let app = spawn_app(Backend::Sqlite).await;
    let output = run_node("swagger.mjs", &[app.url("")], Duration::from_secs(120)).await;
    assert!(output.contains("ok swagger:"), "{output}");
}

/// CORS in a real browser: a page from a listed origin reads `Stream-Cursor`, `Location` and
/// `ETag`, follows the stream and opens `/ws`; the server's own page keeps working on `/ws`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listed_origin_reads_the_cursor_headers_and_the_own_page_stays_live() {
    if !node_ready() || chromium().is_none() {
        return;
    }
    let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = other.local_addr().unwrap().port();
    drop(other);
    let app = crate::helpers::spawn_app_with(Backend::Sqlite, |c| {
        c.cors_origins = vec![format!("http://127.0.0.1:{port}")]
    })
    .await;
    let output = run_node(
        "cors.mjs",
        &[app.url(""), port.to_string()],
        Duration::from_secs(120),
    )
    .await;
    for label in ["cors", "own page"] {
        assert!(
            output.contains(&format!("ok {label}:")),
            "{label}:\n{output}"
        );
    }
}

/// The client library (`/client.js`) in Node: paged loads, live changes, a dropped connection,
/// the fallback to long-polling, a reset and a view, on every transport.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_library_follows_the_store_in_node() {
    if !node_ready() {
        return;
    }
    let (app, forgetful) = (spawn_app(Backend::Sqlite).await, forgetful().await);
    let output = run_node(
        "client.mjs",
        &[app.url(""), forgetful.url("")],
        Duration::from_secs(180),
    )
    .await;
    for case in [
        "initial load and live changes",
        "pages read across a delete",
        "cursor kept across a drop",
        "fallback",
        "reset",
        "view",
    ] {
        assert!(
            output.contains(&format!("ok client: {case}")),
            "{case}:\n{output}"
        );
    }
}

/// The Postman collection, run by newman as Postman's "Run collection" would: every request
/// and assertion passes, open and with a token, and twice on one server (it makes its own
/// names).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_postman_collection_passes_in_newman() {
    if !node_ready() {
        return;
    }
    let requests = |output: &str| -> usize {
        let line = output
            .lines()
            .find_map(|l| l.strip_prefix("ok postman: "))
            .unwrap_or_else(|| panic!("newman's summary:\n{output}"));
        line.split(' ').next().unwrap().parse().unwrap()
    };
    let app = spawn_app(Backend::Sqlite).await;
    for _ in 0..2 {
        let output = run_node("postman.mjs", &[app.url("")], Duration::from_secs(120)).await;
        assert!(requests(&output) >= 40, "{output}");
    }
    let guarded = crate::helpers::spawn_app_with(Backend::Sqlite, |c| {
        c.api_tokens = vec!["postman-token".into()]
    })
    .await;
    let output = run_node(
        "postman.mjs",
        &[guarded.url(""), "postman-token".into()],
        Duration::from_secs(120),
    )
    .await;
    assert!(requests(&output) >= 40, "{output}");
}

/// The `eventsource` package reads the stream, then, when the server restarts, reconnects
/// by itself with `Last-Event-ID` and gets exactly the events it missed.
async fn eventsource_package_reads_and_resumes_across_a_restart(backend: Backend) {
    if !node_ready() {
        return;
    }
    let app = spawn_app(backend).await;
    let start = app.head().await;
    let mut child = tokio::process::Command::new("node")
        .arg(js_dir().join("sse_client.mjs"))
        .arg(app.url(&format!("/events?lastEventId={start}")))
        .arg("6")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next_line = async || -> Value {
        let line = tokio::time::timeout(WAIT, lines.next_line())
            .await
            .expect("the client prints in time")
            .unwrap()
            .expect("the client is still running");
        serde_json::from_str(&line).unwrap()
    };
    assert_eq!(next_line().await["open"], true);

    for i in 0..3 {
        app.create_funko(&format!("Before restart {i}")).await;
    }
    let mut received = Vec::new();
    while received.len() < 3 {
        let line = next_line().await;
        if let Some(event) = line.get("event") {
            assert_eq!(line["lastEventId"], event["id"]);
            received.push(event.clone());
        }
    }

    // Restart: the stream ends; writes land while the client is away.
    let app = app.restart().await;
    for i in 0..3 {
        app.create_funko(&format!("While away {i}")).await;
    }
    while received.len() < 6 {
        let line = next_line().await;
        if let Some(event) = line.get("event") {
            received.push(event.clone());
        }
        assert!(
            line.get("reset").is_none(),
            "no reset on a resumable cursor"
        );
    }
    assert!(child.wait().await.unwrap().success());
    let log = app.events_after(&start).await;
    assert_eq!(cursors(&received), cursors(&log));
    assert_eq!(received, log);
}

crate::backend_tests!(eventsource_package_reads_and_resumes_across_a_restart);
