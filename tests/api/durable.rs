//! Durable Streams on `/streams/funkos` and `/streams/categories`: the protocol by hand over
//! HTTP (offsets, headers, catch-up, long-poll, SSE, HEAD, errors), the State Protocol's
//! messages and snapshot, views, limits and shutdown; and clients nobody here wrote:
//! `@durable-streams/client` and `@durable-streams/state` under Node, `durable-streams` under
//! Python.

use std::{process::Stdio, time::Duration};

use reqwest::{Method, Response, StatusCode};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt, BufReader, Lines},
    process::{Child, ChildStdout},
};

use crate::{
    helpers::{Backend, SseClient, TestApp, WAIT, assert_problem, spawn_app, spawn_app_with},
    js::{js_dir, node_ready},
    views::{Rng, write_randomly},
};

/// A cursor as the protocol's offset: 20 digits.
fn offset(cursor: &str) -> String {
    format!("{:020}", cursor.parse::<i64>().expect("a cursor"))
}

fn header(response: &Response, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
}

/// A read's answer: status and headers, and its JSON body (`Null` when it has none).
struct Read {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
}

impl Read {
    fn status(&self) -> StatusCode {
        self.status
    }

    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    }
}

async fn read(app: &TestApp, query: &str) -> (Read, Value) {
    let response = app.get(&format!("/streams/{query}")).await;
    let read = Read {
        status: response.status(),
        headers: response.headers().clone(),
    };
    let is_json = read
        .header("content-type")
        .is_some_and(|t| t.contains("json"));
    let body = if is_json {
        response.json().await.unwrap()
    } else {
        Value::Null
    };
    (read, body)
}

fn next_offset(read: &Read) -> String {
    read.header("stream-next-offset")
        .expect("Stream-Next-Offset")
}

/// The change messages of a read's body (its control messages left out).
fn changes(body: &Value) -> Vec<Value> {
    body.as_array()
        .expect("a JSON array")
        .iter()
        .filter(|m| m["headers"]["operation"].is_string())
        .cloned()
        .collect()
}

fn controls(body: &Value) -> Vec<String> {
    body.as_array()
        .expect("a JSON array")
        .iter()
        .filter_map(|m| m["headers"]["control"].as_str().map(str::to_owned))
        .collect()
}

/// `value` with every number as a float: JavaScript writes `11.0` as `11`.
fn floats(value: Value) -> Value {
    match value {
        Value::Number(n) => json!(n.as_f64().unwrap()),
        Value::Array(items) => Value::Array(items.into_iter().map(floats).collect()),
        Value::Object(fields) => Value::Object(
            fields
                .into_iter()
                .map(|(key, value)| (key, floats(value)))
                .collect(),
        ),
        other => other,
    }
}

/// Every live Funko, as a fresh read returns it.
async fn live_funkos(app: &TestApp, filter: &str) -> Vec<Value> {
    let page: Value = app
        .get(&format!("/funkos?limit=100&{filter}"))
        .await
        .json()
        .await
        .unwrap();
    assert!(page["meta"]["total"].as_i64().unwrap() <= 100, "one page");
    page["data"].as_array().unwrap().clone()
}

/// The protocol's catch-up read from the beginning: a snapshot of the live rows, read at the
/// cursor the answer names, between `snapshot-start` and `snapshot-end`; then each change
/// after it as `insert`, `update` or `delete` with the resource as `GET` returns it.
async fn a_read_from_the_beginning_is_a_snapshot_then_the_changes(backend: Backend) {
    let app = spawn_app(backend).await;
    let groot = app.create_funko("Groot").await;
    let stitch = app.create_funko("Stitch").await;
    let gone = app.create_funko("Gone").await;
    assert_eq!(
        app.delete(&format!("/funkos/{}", gone["id"]))
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    let head = app.head().await;

    for query in ["funkos", "funkos?offset=-1"] {
        let (response, body) = read(&app, query).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.header("content-type").as_deref(),
            Some("application/json")
        );
        assert_eq!(next_offset(&response), offset(&head));
        assert_eq!(
            response.header("stream-up-to-date").as_deref(),
            Some("true")
        );
        assert_eq!(
            response.header("cache-control").as_deref(),
            Some("public, max-age=60, stale-while-revalidate=300")
        );
        assert_eq!(
            response.header("etag"),
            Some(format!("\"funkos:-1:{}\"", offset(&head)))
        );
        let cursor = response.header("stream-cursor").expect("Stream-Cursor");
        assert!(cursor.parse::<i64>().is_ok(), "{cursor}");
        assert_eq!(controls(&body), ["snapshot-start", "snapshot-end"]);
        let messages = body.as_array().unwrap();
        assert_eq!(messages[0]["headers"]["offset"], offset(&head));
        let rows = changes(&body);
        assert_eq!(rows.len(), 2, "the live Funkos only: {body}");
        for (row, funko) in rows.iter().zip([&groot, &stitch]) {
            assert_eq!(row["type"], "funkos");
            assert_eq!(row["key"], funko["id"].to_string());
            assert_eq!(row["headers"]["operation"], "insert");
            assert_eq!(&row["value"], funko);
            assert!(row["headers"]["timestamp"].is_string());
        }
    }

    // The changes after it, each once, in order.
    let patched = app
        .patch(&format!("/funkos/{}", groot["id"]), json!({"price": 12.5}))
        .await;
    assert_eq!(patched.status(), StatusCode::OK);
    let patched: Value = patched.json().await.unwrap();
    app.delete(&format!("/funkos/{}", stitch["id"])).await;
    let (response, body) = read(&app, &format!("funkos?offset={}", offset(&head))).await;
    assert_eq!(response.status(), StatusCode::OK);
    let head2 = app.head().await;
    assert_eq!(next_offset(&response), offset(&head2));
    assert!(
        next_offset(&response) > offset(&head),
        "offsets sort as text"
    );
    assert_eq!(
        response.header("etag"),
        Some(format!("\"funkos:{}:{}\"", offset(&head), offset(&head2)))
    );
    let rows = changes(&body);
    assert_eq!(rows.len(), 2, "{body}");
    assert_eq!(rows[0]["headers"]["operation"], "update");
    assert_eq!(rows[0]["value"], patched);
    assert_eq!(
        rows[0]["old_value"]["price"], 9.99,
        "what the log had before"
    );
    assert_eq!(rows[1]["headers"]["operation"], "delete");
    assert_eq!(rows[1]["key"], stitch["id"].to_string());
    assert_eq!(rows[1]["value"]["isDeleted"], true);

    // At the head: an empty array, up to date, at the offset asked for.
    let (response, body) = read(&app, &format!("funkos?offset={}", offset(&head2))).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body, json!([]));
    assert_eq!(next_offset(&response), offset(&head2));
    assert_eq!(
        response.header("stream-up-to-date").as_deref(),
        Some("true")
    );

    // The same range again with its ETag: 304, no body.
    let etag = response.header("etag").unwrap();
    let again = app
        .client
        .get(app.url(&format!("/streams/funkos?offset={}", offset(&head2))))
        .header("If-None-Match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(again.bytes().await.unwrap().len(), 0);

    // `now`: the head, no data, not to be cached.
    let (response, body) = read(&app, "funkos?offset=now").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body, json!([]));
    assert_eq!(next_offset(&response), offset(&head2));
    assert_eq!(
        response.header("cache-control").as_deref(),
        Some("no-store")
    );
    assert_eq!(response.header("etag"), None);

    // The categories stream has its own rows; Funko events move its offset all the same.
    let (response, body) = read(&app, "categories").await;
    assert_eq!(next_offset(&response), offset(&head2));
    let names: Vec<String> = changes(&body)
        .iter()
        .map(|m| m["value"]["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        names,
        ["SERIE", "DISNEY", "SUPERHEROES", "PELICULA", "OTROS"]
    );
    assert!(changes(&body).iter().all(|m| m["type"] == "categories"));
    let (_, body) = read(&app, &format!("categories?offset={}", offset(&head))).await;
    assert_eq!(
        body,
        json!([]),
        "Funko changes are not on the categories stream"
    );
}

/// `HEAD`: the tail offset and the content type, not cached.
async fn head_answers_the_tail_offset(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create_funko("Groot").await;
    let head = app.head().await;
    let response = app
        .client
        .head(app.url("/streams/funkos"))
        .send()
        .await
        .unwrap();
    let response = Read {
        status: response.status(),
        headers: response.headers().clone(),
    };
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(next_offset(&response), offset(&head));
    assert_eq!(
        response.header("content-type").as_deref(),
        Some("application/json")
    );
    assert_eq!(
        response.header("cache-control").as_deref(),
        Some("no-store")
    );
    let unknown = app
        .client
        .head(app.url("/streams/users"))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
}

/// `live=long-poll`: 204 with the head's offset after the timeout; 200 as soon as a change
/// commits; `Stream-Cursor` on both, moving past an echoed cursor that is not behind.
async fn a_long_poll_waits_for_data_or_answers_204(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create_funko("Groot").await;
    let head = offset(&app.head().await);

    let (response, body) = read(
        &app,
        &format!("funkos?offset={head}&live=long-poll&timeout=1"),
    )
    .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(body, Value::Null);
    assert_eq!(next_offset(&response), head);
    assert_eq!(
        response.header("stream-up-to-date").as_deref(),
        Some("true")
    );
    assert_eq!(
        response.header("cache-control").as_deref(),
        Some("no-store")
    );
    let cursor: i64 = response
        .header("stream-cursor")
        .expect("Stream-Cursor")
        .parse()
        .unwrap();

    // Waiting: answered by the first commit after it, with the cursor moved past the echoed
    // one. Nothing says when the server holds the poll, so writes go on until it answers.
    for start in [head.clone(), "now".to_owned()] {
        let mut waiting = {
            let client = app.client.clone();
            let url = app.url(&format!(
                "/streams/funkos?offset={start}&live=long-poll&cursor={cursor}"
            ));
            tokio::spawn(async move { client.get(url).send().await.unwrap() })
        };
        let mut written = Vec::new();
        let deadline = tokio::time::Instant::now() + WAIT;
        let response = loop {
            let name = format!("Stitch {start} {}", written.len());
            written.push(app.create_funko(&name).await);
            tokio::select! {
                answered = &mut waiting => break answered.unwrap(),
                () = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
            assert!(tokio::time::Instant::now() < deadline, "no answer");
        };
        assert_eq!(response.status(), StatusCode::OK);
        let answered_cursor: i64 = header(&response, "stream-cursor").unwrap().parse().unwrap();
        assert!(answered_cursor > cursor, "{answered_cursor} > {cursor}");
        assert_eq!(
            header(&response, "cache-control").as_deref(),
            Some("public, max-age=60, stale-while-revalidate=300")
        );
        let body: Value = response.json().await.unwrap();
        let rows = changes(&body);
        assert!(!rows.is_empty(), "{body}");
        if start == head {
            assert_eq!(
                rows[0]["value"], written[0],
                "the first write after the offset"
            );
        }
        for row in &rows {
            assert!(written.contains(&row["value"]), "{row}");
        }
    }

    // From the beginning, a long-poll answers the snapshot at once.
    let (response, body) = read(&app, "funkos?offset=-1&live=long-poll").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(changes(&body).len(), live_funkos(&app, "").await.len());
    assert!(response.header("stream-cursor").is_some());
}

/// Waits until `/metrics` counts at least `n` open streams of `transport`. The metrics are
/// the process's, shared by every test running beside this one: "at least".
async fn wait_for_streams(app: &TestApp, transport: &str, n: u64) {
    let series = format!("funko_live_stream_connections{{transport=\"{transport}\"}} ");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let metrics = app.get("/metrics").await.text().await.unwrap();
        let open = metrics
            .lines()
            .find_map(|l| l.strip_prefix(series.as_str()))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        if open >= n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "fewer than {n} {transport} streams in\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The next `data` event's messages and the `control` event after it.
async fn next_data(sse: &mut SseClient) -> (Value, Value) {
    let data = next_named(sse, "data").await;
    let control = next_named(sse, "control").await;
    (data, control)
}

async fn next_named(sse: &mut SseClient, name: &str) -> Value {
    loop {
        let frame = tokio::time::timeout(WAIT, sse.next_frame())
            .await
            .unwrap_or_else(|_| panic!("no {name} event"))
            .expect("the stream stays open");
        if frame.comment {
            continue;
        }
        assert_eq!(frame.event.as_deref(), Some(name), "{frame:?}");
        return frame.json();
    }
}

/// `live=sse`: the snapshot as a `data` event, then a `control` with the offset, the
/// collapsing cursor and `upToDate`; each commit after it the same way.
async fn sse_sends_data_and_control_events(backend: Backend) {
    let app = spawn_app(backend).await;
    let groot = app.create_funko("Groot").await;
    let head = offset(&app.head().await);
    let mut sse = app.sse("/streams/funkos?offset=-1&live=sse", None).await;
    assert_eq!(
        sse.headers["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let (data, control) = next_data(&mut sse).await;
    assert_eq!(controls(&data), ["snapshot-start", "snapshot-end"]);
    assert_eq!(changes(&data)[0]["value"], groot);
    assert_eq!(control["streamNextOffset"], head);
    assert_eq!(control["upToDate"], true);
    assert!(
        control["streamCursor"]
            .as_str()
            .unwrap()
            .parse::<i64>()
            .is_ok()
    );

    let stitch = app.create_funko("Stitch").await;
    let (data, control) = next_data(&mut sse).await;
    assert_eq!(changes(&data).len(), 1);
    assert_eq!(changes(&data)[0]["value"], stitch);
    assert_eq!(control["streamNextOffset"], offset(&app.head().await));

    // A category change moves the funkos stream's offset with a control event alone.
    app.post("/categories", json!({"name": "ANIME"})).await;
    let control = next_named(&mut sse, "control").await;
    assert_eq!(control["streamNextOffset"], offset(&app.head().await));

    // From `now`: a first control at the head, up to date.
    let mut now = app.sse("/streams/funkos?offset=now&live=sse", None).await;
    let control = next_named(&mut now, "control").await;
    assert_eq!(control["streamNextOffset"], offset(&app.head().await));
    assert_eq!(control["upToDate"], true);
}

/// An offset older than retention, or one never issued here (past the head), is answered
/// 410 with the State Protocol's `reset` in the problem, on every kind of read; a read from
/// the beginning still gets every live row, however much of the log was pruned.
async fn old_and_unknown_offsets_answer_410_with_a_reset(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create_funko("Groot").await;
    let old = offset(&app.head().await);
    app.create_funko("Stitch").await;
    app.create_funko("Thor").await;
    assert!(app.prune_all_but_newest().await > 0);
    let ahead = offset(&(app.head().await.parse::<i64>().unwrap() + 1000).to_string());
    for from in [&old, &ahead] {
        for live in ["", "&live=long-poll", "&live=sse"] {
            let response = app
                .get(&format!("/streams/funkos?offset={from}{live}"))
                .await;
            let problem = assert_problem(response, 410).await;
            assert_eq!(
                problem["control"],
                json!({"headers": {"control": "reset", "offset": "-1"}}),
                "{from}{live}"
            );
        }
    }
    let (response, body) = read(&app, "funkos?offset=-1").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        changes(&body)
            .iter()
            .map(|m| m["value"].clone())
            .collect::<Vec<_>>(),
        live_funkos(&app, "").await
    );
}

/// Bad input: each answers a 4xx problem and changes nothing.
async fn bad_input_is_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create_funko("Groot").await;
    let head = app.head().await;
    let long_offset = "1".repeat(10_000);
    let cases: Vec<(String, u16, &str)> = vec![
        ("/streams/users".into(), 404, ""),
        ("/streams/funkos/extra".into(), 404, ""),
        ("/streams/funkos?offset=abc".into(), 400, "offset"),
        ("/streams/funkos?offset=7".into(), 400, "offset"),
        ("/streams/funkos?offset=-2".into(), 400, "offset"),
        ("/streams/funkos?offset=".into(), 400, "offset"),
        (
            format!("/streams/funkos?offset={}", "9".repeat(20)),
            400,
            "offset",
        ),
        (
            format!("/streams/funkos?offset={}", "0".repeat(21)),
            400,
            "offset",
        ),
        (
            format!("/streams/funkos?offset={long_offset}"),
            400,
            "offset",
        ),
        ("/streams/funkos?live=forever&offset=-1".into(), 400, "live"),
        ("/streams/funkos?live=long-poll".into(), 400, "offset"),
        ("/streams/funkos?live=sse".into(), 400, "offset"),
        (
            "/streams/funkos?offset=now&live=long-poll&cursor=abc".into(),
            400,
            "cursor",
        ),
        (
            format!(
                "/streams/funkos?offset=now&live=long-poll&cursor={}",
                "1".repeat(30)
            ),
            400,
            "cursor",
        ),
        (
            "/streams/funkos?offset=now&live=long-poll&timeout=61".into(),
            400,
            "timeout",
        ),
        (
            "/streams/funkos?offset=now&live=long-poll&timeout=-1".into(),
            400,
            "timeout",
        ),
        ("/streams/funkos?timeout=600".into(), 400, "timeout"),
        ("/streams/categories?category=DISNEY".into(), 400, ""),
        ("/streams/funkos?minPrice=cheap".into(), 400, "minPrice"),
        ("/streams/funkos?minPrice=1.001".into(), 400, "minPrice"),
        (format!("/streams/funkos?q={}", "x".repeat(101)), 400, "q"),
    ];
    for (path, status, field) in &cases {
        let problem = assert_problem(app.get(path).await, *status).await;
        if !field.is_empty() {
            assert_eq!(
                crate::helpers::problem_fields(&problem),
                [*field],
                "{path}: {problem}"
            );
        }
        assert!(
            problem["detail"].as_str().unwrap().len() < 300,
            "a problem quotes a bounded part of the input: {path}"
        );
    }
    // A query string past the server's head limit.
    let response = app
        .get(&format!("/streams/funkos?q={}", "x".repeat(20_000)))
        .await;
    assert!(response.status().is_client_error(), "{}", response.status());

    // Read-only: appends, creation and deletion answer 405 with the methods it allows.
    for method in [Method::POST, Method::PUT, Method::DELETE, Method::PATCH] {
        let response = app
            .client
            .request(method.clone(), app.url("/streams/funkos"))
            .header("content-type", "application/json")
            .body("[{\"type\":\"funkos\"}]")
            .send()
            .await
            .unwrap();
        assert_eq!(header(&response, "allow").as_deref(), Some("GET, HEAD"));
        assert_problem(response, 405).await;
    }
    assert_eq!(app.head().await, head, "nothing changed");
}

/// A view of the funkos stream: its snapshot is the view's list; a Funko that enters it is
/// an `insert`, one that leaves it a `delete`.
async fn a_view_enters_as_insert_and_leaves_as_delete(backend: Backend) {
    let app = spawn_app(backend).await;
    let groot = app.create_funko("Groot").await;
    let other = app
        .post(
            "/funkos",
            json!({"name": "Thor", "price": 5, "stock": 1, "category": "SUPERHEROES"}),
        )
        .await
        .json::<Value>()
        .await
        .unwrap();
    let (response, body) = read(&app, "funkos?category=disney").await;
    let rows = changes(&body);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["value"], groot);
    let from = next_offset(&response);

    app.patch(
        &format!("/funkos/{}", other["id"]),
        json!({"category": "DISNEY"}),
    )
    .await;
    app.patch(
        &format!("/funkos/{}", groot["id"]),
        json!({"category": "OTROS"}),
    )
    .await;
    app.patch(&format!("/funkos/{}", groot["id"]), json!({"price": 1}))
        .await;
    let (_, body) = read(&app, &format!("funkos?category=disney&offset={from}")).await;
    let rows = changes(&body);
    let seen: Vec<(String, String)> = rows
        .iter()
        .map(|m| {
            (
                m["key"].as_str().unwrap().to_owned(),
                m["headers"]["operation"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (other["id"].to_string(), "insert".to_owned()),
            (groot["id"].to_string(), "delete".to_owned()),
        ],
        "{body}"
    );
}

/// Long-polls and SSE reads hold stream slots within the same limits as the other
/// transports, show in the same metrics, and end at shutdown.
async fn limits_metrics_and_shutdown(backend: Backend) {
    let app = spawn_app_with(backend, |config| config.max_pollers = 1).await;
    let head = offset(&app.head().await);
    let hold = || {
        let client = app.client.clone();
        let url = app.url(&format!(
            "/streams/funkos?offset={head}&live=long-poll&timeout=30"
        ));
        tokio::spawn(async move { client.get(url).send().await.unwrap() })
    };
    // A probe that does not wait is answered 204 until the held poll has the one place (and
    // the held one is refused if a probe had it: then it is sent again).
    let mut held = hold();
    let deadline = tokio::time::Instant::now() + WAIT;
    let refused = loop {
        assert!(tokio::time::Instant::now() < deadline, "never refused");
        if held.is_finished() {
            assert_eq!(
                held.await.unwrap().status(),
                StatusCode::SERVICE_UNAVAILABLE
            );
            held = hold();
        }
        let probe = app
            .get(&format!(
                "/streams/funkos?offset={head}&live=long-poll&timeout=0"
            ))
            .await;
        if probe.status() == StatusCode::SERVICE_UNAVAILABLE && !held.is_finished() {
            break probe;
        }
    };
    assert_eq!(header(&refused, "retry-after").as_deref(), Some("1"));
    assert_problem(refused, 503).await;

    let mut sse = app.sse("/streams/funkos?offset=now&live=sse", None).await;
    next_named(&mut sse, "control").await;
    wait_for_streams(&app, "durable_sse", 1).await;

    // Shutdown: the long-poll is answered and the SSE stream ends, promptly.
    let stopping = tokio::spawn(app.stop());
    let answered = tokio::time::timeout(WAIT, held)
        .await
        .expect("the long-poll is answered at shutdown")
        .unwrap();
    // Told to come back (a client's backoff retries a 503), rather than "nothing new".
    assert_eq!(answered.status(), StatusCode::SERVICE_UNAVAILABLE);
    loop {
        let frame = tokio::time::timeout(WAIT, sse.next_frame())
            .await
            .expect("the SSE stream ends at shutdown");
        if frame.is_none() {
            break;
        }
    }
    tokio::time::timeout(WAIT, stopping)
        .await
        .expect("stops in time")
        .unwrap();
}

crate::backend_tests!(
    a_read_from_the_beginning_is_a_snapshot_then_the_changes,
    head_answers_the_tail_offset,
    a_long_poll_waits_for_data_or_answers_204,
    sse_sends_data_and_control_events,
    old_and_unknown_offsets_answer_410_with_a_reset,
    bad_input_is_refused,
    a_view_enters_as_insert_and_leaves_as_delete,
    limits_metrics_and_shutdown,
);

/// `tests/js/durable_client.mjs`: one Node client following a stream, read line by line.
struct NodeFollower {
    _child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    label: String,
}

impl NodeFollower {
    fn start(config: Value) -> Self {
        let label = config.to_string();
        let mut child = tokio::process::Command::new("node")
            .arg(js_dir().join("durable_client.mjs"))
            .arg(config.to_string())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("node starts");
        Self {
            lines: BufReader::new(child.stdout.take().unwrap()).lines(),
            _child: child,
            label,
        }
    }

    /// The next line, batch or error, within `wait`.
    async fn next_line(&mut self, wait: Duration) -> Option<Value> {
        let line = tokio::time::timeout(wait, self.lines.next_line())
            .await
            .ok()?
            .unwrap()?;
        Some(serde_json::from_str(&line).unwrap())
    }

    /// The next batch line, within `wait`.
    async fn next(&mut self, wait: Duration) -> Option<Value> {
        let line = self.next_line(wait).await?;
        assert!(line.get("error").is_none(), "{}: {line}", self.label);
        Some(line)
    }

    /// Batches until one satisfies `done`, within `wait`; every batch read on the way.
    async fn until(&mut self, wait: Duration, done: impl Fn(&Value) -> bool) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(line) = self.next(left).await else {
                panic!(
                    "{}: no such batch within {wait:?}; saw {seen:#?}",
                    self.label
                );
            };
            let finished = done(&line);
            seen.push(line);
            if finished {
                return seen;
            }
        }
    }
}

/// The change messages of batch lines, in order.
fn items(lines: &[Value]) -> Vec<Value> {
    lines
        .iter()
        .flat_map(|l| l["items"].as_array().unwrap().clone())
        .filter(|m| m["headers"]["operation"].is_string())
        .collect()
}

/// `@durable-streams/client` reads catch-up, long-poll and SSE; a second client resumes
/// from the offset the first one saved, after the server restarted, and gets exactly what
/// it missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_client_reads_catch_up_long_poll_and_sse_and_resumes_after_a_restart() {
    if !node_ready() {
        return;
    }
    let mut app = spawn_app(Backend::Sqlite).await;
    let groot = app.create_funko("Groot").await;

    // Catch-up: the snapshot, then the client stops, up to date.
    let url = app.url("/streams/funkos");
    let mut catch_up = NodeFollower::start(json!({"url": url, "live": false, "apply": "none"}));
    let lines = catch_up.until(WAIT, |l| l["upToDate"] == true).await;
    assert_eq!(
        items(&lines)
            .iter()
            .map(|m| m["value"].clone())
            .collect::<Vec<_>>(),
        std::slice::from_ref(&groot)
    );

    for live in ["long-poll", "sse"] {
        // A short long-poll timeout, so 204s happen on the way.
        let params = if live == "long-poll" {
            json!({"timeout": "1"})
        } else {
            json!({})
        };
        let mut follower = NodeFollower::start(
            json!({"url": url, "live": live, "apply": "none", "params": params}),
        );
        follower.until(WAIT, |l| l["upToDate"] == true).await;
        if live == "sse" {
            wait_for_streams(&app, "durable_sse", 1).await;
        }
        let stitch = app.create_funko(&format!("Stitch {live}")).await;
        let lines = follower
            .until(WAIT, |l| {
                items(std::slice::from_ref(l))
                    .iter()
                    .any(|m| m["value"]["name"] == stitch["name"])
            })
            .await;
        let saved = lines.last().unwrap()["offset"].as_str().unwrap().to_owned();
        assert_eq!(saved, offset(&app.head().await));
        drop(follower);

        // Restart; what happens meanwhile is what the resumed client must get, only that.
        app = app.restart().await;
        let thor = app.create_funko(&format!("Thor {live}")).await;
        let patched = app
            .patch(&format!("/funkos/{}", stitch["id"]), json!({"stock": 9}))
            .await
            .json::<Value>()
            .await
            .unwrap();
        let url_now = app.url("/streams/funkos");
        assert_eq!(url_now, url, "the same address");
        let mut resumed = NodeFollower::start(
            json!({"url": url, "live": live, "apply": "none", "offset": saved}),
        );
        let lines = resumed
            .until(WAIT, |l| {
                items(std::slice::from_ref(l))
                    .iter()
                    .any(|m| m["value"] == patched)
            })
            .await;
        let got: Vec<Value> = items(&lines).iter().map(|m| m["value"].clone()).collect();
        assert_eq!(got, [thor, patched], "{live}: exactly what it missed");
    }
}

/// `@durable-streams/client` resuming from an offset retention pruned gets the protocol's
/// 410, and in its body the reset to follow; from `-1` it then gets every live Funko.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_client_is_told_to_reset_at_a_pruned_offset() {
    if !node_ready() {
        return;
    }
    let app = spawn_app(Backend::Sqlite).await;
    let pruned = offset(&app.head().await);
    app.create_funko("Groot").await;
    app.create_funko("Stitch").await;
    app.prune_all_but_newest().await;
    let url = app.url("/streams/funkos");
    for live in [json!(false), json!("long-poll"), json!("sse")] {
        let mut follower = NodeFollower::start(
            json!({"url": url, "live": live, "apply": "none", "offset": pruned}),
        );
        let line = follower.next_line(WAIT).await.expect("an answer");
        assert_eq!(line["status"], 410, "{live}: {line}");
        let body = match &line["body"] {
            Value::String(text) => serde_json::from_str(text).unwrap(),
            other => other.clone(),
        };
        assert_eq!(
            body["control"],
            json!({"headers": {"control": "reset", "offset": "-1"}}),
            "{live}: {line}"
        );
    }
    let mut fresh = NodeFollower::start(json!({"url": url, "live": false, "apply": "state"}));
    let lines = fresh.until(WAIT, |l| l["upToDate"] == true).await;
    assert_eq!(
        floats(lines.last().unwrap()["rows"].clone()),
        floats(Value::Array(live_funkos(&app, "").await))
    );
}

/// `MaterializedState` (under both live modes, and on a view) and `createStreamDB` (TanStack
/// DB) apply the stream from nothing while two writers write at random; each ends equal to
/// a fresh `GET /funkos`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_state_clients_equal_a_fresh_read_after_random_writes() {
    if !node_ready() {
        return;
    }
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    println!("durable state seed: {seed}");
    let app = spawn_app(Backend::Sqlite).await;
    let anime = app.post("/categories", json!({"name": "ANIME"})).await;
    let renamable = anime.json::<Value>().await.unwrap()["id"].as_i64().unwrap();
    let url = app.url("/streams/funkos");
    let start = |live: &str, apply: &str, params: Value| {
        NodeFollower::start(json!({"url": url, "live": live, "apply": apply, "params": params}))
    };
    let mut followers = vec![
        ("state sse", "", start("sse", "state", json!({}))),
        (
            "state long-poll",
            "",
            start("long-poll", "state", json!({})),
        ),
        ("stream db", "", start("long-poll", "db", json!({}))),
        (
            "state view",
            "category=DISNEY",
            start("long-poll", "state", json!({"category": "DISNEY"})),
        ),
    ];
    for (_, _, follower) in &mut followers {
        follower.until(WAIT, |l| l["upToDate"] == true).await;
    }
    let (mut rng1, mut rng2) = (Rng(seed ^ 0x9E37), Rng(seed ^ 0x7F4A));
    tokio::join!(
        write_randomly(&app, 1, &mut rng1, 25, renamable),
        write_randomly(&app, 2, &mut rng2, 25, renamable),
    );
    // One more that starts after the writes, from nothing.
    followers.push(("stream db late", "", start("long-poll", "db", json!({}))));
    let head = offset(&app.head().await);
    for (label, filter, follower) in &mut followers {
        let expected = live_funkos(&app, filter).await;
        let lines = follower
            .until(Duration::from_secs(30), |l| {
                l["offset"].as_str().unwrap() >= head.as_str()
            })
            .await;
        let rows: Vec<Value> = lines.last().unwrap()["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|row| {
                // TanStack DB keys by the message's `key`, a string: the id as text.
                let mut row = row.clone();
                if let Some(id) = row["id"].as_str() {
                    row["id"] = json!(id.parse::<i64>().unwrap());
                }
                row
            })
            .collect();
        assert_eq!(
            floats(Value::Array(rows)),
            floats(Value::Array(expected)),
            "{label} (seed {seed})"
        );
    }
}

/// The Python client (`durable-streams` on PyPI) reads catch-up, long-poll and SSE, and is
/// told 410 for an offset retention pruned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_reads_and_is_told_of_pruned_offsets() {
    let Some(venv) = crate::schemathesis::python_venv() else {
        return;
    };
    let app = spawn_app(Backend::Sqlite).await;
    let pruned = offset(&app.head().await);
    app.create_funko("Groot").await;
    app.create_funko("Stitch").await;
    app.prune_all_but_newest().await;
    let script = crate::schemathesis::py_dir().join("durable_client.py");
    let output = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(venv.join("bin/python"))
            .arg(script)
            .arg(app.url(""))
            .arg(&pruned)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the Python client finishes in time")
    .expect("python runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("ok durable-streams:"),
        "{}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

/// nginx, when installed; else the test is skipped with a message, unless
/// `FUNKO_REQUIRE_NGINX` is set (as in CI), where it fails.
fn nginx() -> Option<std::path::PathBuf> {
    let found = ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .map(std::path::PathBuf::from)
        .find(|p| p.exists());
    if found.is_none() {
        let why = "nginx is not installed (apt-get install nginx)";
        if std::env::var_os("FUNKO_REQUIRE_NGINX").is_some_and(|v| !v.is_empty()) {
            panic!("{why}");
        }
        eprintln!("caching proxy test skipped: {why}");
    }
    found
}

/// GET requests the server answered on `/streams/*`, from its own metrics.
async fn stream_reads(client: &reqwest::Client, base: &str) -> u64 {
    let metrics = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("funko_live_http_requests_total{")
                && l.contains("method=\"GET\"")
                && l.contains("route=\"readDurableStream\"")
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

/// The numbers of nginx's `stub_status`: (active connections, connections writing).
async fn nginx_status(client: &reqwest::Client, base: &str) -> Option<(u64, u64)> {
    let text = client
        .get(format!("{base}/nginx_status"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let number_after = |label: &str| -> Option<u64> {
        let at = text.find(label)? + label.len();
        text[at..].split_whitespace().next()?.parse().ok()
    };
    Some((
        number_after("Active connections:")?,
        number_after("Writing:")?,
    ))
}

/// A caching proxy in front (nginx with `proxy_cache` and `proxy_cache_lock`, as the protocol
/// suggests): a thousand clients long-polling at the same offset and cursor cost the server
/// a handful of requests, counted by the server itself; every client gets the change.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_caching_proxy_collapses_a_thousand_long_polls() {
    const POLLERS: usize = 1000;
    let Some(nginx) = nginx() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let database = Backend::Sqlite.fresh_database(dir.path()).await;
    // Its own process, so its metrics count its requests alone.
    let server = crate::crash::ServerProcess::start(&database, dir.path(), &[]).await;
    let upstream = server.base.trim_start_matches("http://").to_owned();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let prefix = dir.path().join("nginx");
    std::fs::create_dir_all(&prefix).unwrap();
    let p = prefix.display();
    let config = format!(
        "daemon off;
master_process off;
pid {p}/nginx.pid;
error_log {p}/error.log warn;
worker_rlimit_nofile 8192;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {p}/body;
    proxy_temp_path {p}/proxy;
    fastcgi_temp_path {p}/fastcgi;
    uwsgi_temp_path {p}/uwsgi;
    scgi_temp_path {p}/scgi;
    proxy_cache_path {p}/cache keys_zone=streams:1m max_size=64m;
    server {{
        listen 127.0.0.1:{port};
        location = /nginx_status {{ stub_status; }}
        location / {{
            proxy_pass http://{upstream};
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_read_timeout 90s;
            proxy_cache streams;
            # One request fills a cache entry; the others wait for it (past the long-poll's
            # timeout, not nginx's default 5 s).
            proxy_cache_lock on;
            proxy_cache_lock_timeout 60s;
            proxy_cache_lock_age 60s;
        }}
    }}
}}
"
    );
    std::fs::write(prefix.join("nginx.conf"), config).unwrap();
    let mut proxy = tokio::process::Command::new(nginx)
        .arg("-p")
        .arg(&prefix)
        .arg("-e")
        .arg(prefix.join("error.log"))
        .arg("-c")
        .arg(prefix.join("nginx.conf"))
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("nginx starts");
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while nginx_status(&client, &base).await.is_none() {
        assert!(
            proxy.try_wait().unwrap().is_none(),
            "nginx exited: {}",
            std::fs::read_to_string(prefix.join("error.log")).unwrap_or_default()
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "nginx never answered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let head = client
        .head(format!("{}/streams/funkos", server.base))
        .send()
        .await
        .unwrap();
    let head = header(&head, "stream-next-offset").unwrap();
    let path = format!("/streams/funkos?cursor=1&live=long-poll&offset={head}&timeout=30");
    let before = stream_reads(&client, &server.base).await;
    let pollers: Vec<_> = (0..POLLERS)
        .map(|_| {
            let (client, url) = (client.clone(), format!("{base}{path}"));
            tokio::spawn(async move {
                let response = client.get(url).send().await.unwrap();
                (response.status(), response.text().await.unwrap())
            })
        })
        .collect();
    // Every poller's request is in nginx, waiting (one of them at the server).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (active, writing) = nginx_status(&client, &base).await.unwrap();
        if active > POLLERS as u64 && writing > POLLERS as u64 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{active} connections, {writing} writing"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let groot = client
        .post(format!("{}/funkos", server.base))
        .json(&json!({"name": "Groot", "price": 9.99, "stock": 5, "category": "DISNEY"}))
        .send()
        .await
        .unwrap();
    assert_eq!(groot.status(), StatusCode::CREATED);
    let groot: Value = groot.json().await.unwrap();
    for poller in pollers {
        let (status, body) = tokio::time::timeout(Duration::from_secs(30), poller)
            .await
            .expect("every poller is answered")
            .unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(changes(&body)[0]["value"], groot);
    }
    let reads = stream_reads(&client, &server.base).await - before;
    println!("{POLLERS} long-polls through nginx: {reads} requests reached the server");
    assert!(reads <= 5, "{reads} requests reached the server");
}
