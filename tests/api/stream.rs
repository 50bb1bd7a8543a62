//! The change stream over real sockets: SSE and long-poll, replay then live, resets,
//! filters, keep-alive, slow consumers and shutdown.

use std::time::Duration;

use futures_util::future::join_all;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{
    Backend, SseClient, TestApp, WAIT, assert_problem, cursors, send_get, spawn_app,
    spawn_app_with, stream_cursor,
};

async fn sse_headers_retry_and_live_events(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut sse = app.sse("/events", None).await;
    assert_eq!(sse.headers["content-type"], "text/event-stream");
    assert_eq!(sse.headers["cache-control"], "no-cache");
    assert_eq!(sse.headers["x-accel-buffering"], "no");
    let first = sse.next_frame().await.unwrap();
    assert!(first.retry.is_some(), "retry: first, got {first:?}");

    let created = app.create_funko("Groot").await;
    let event = sse.next_event().await;
    assert_eq!(event["entity"], "FUNKOS");
    assert_eq!(event["type"], "CREATE");
    assert_eq!(event["data"], created);
    assert!(event["createdAt"].as_str().unwrap().ends_with('Z'));

    let response = app
        .patch(&format!("/funkos/{}", created["id"]), json!({"stock": 1}))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let write_cursor = stream_cursor(&response);
    let updated: Value = response.json().await.unwrap();
    let event = sse.next_event().await;
    assert_eq!(event["type"], "UPDATE");
    assert_eq!(event["data"], updated);
    assert_eq!(event["id"], write_cursor.as_str());
}

/// `maxEvents` and `timeout` end a stream by itself, for tools that show a response only once
/// it is complete: after that many change events (replayed and live alike) or after that
/// long, with a properly ended body. Values out of range are refused.
async fn a_stream_with_an_end_condition_ends_by_itself(backend: Backend) {
    let app = spawn_app(backend).await;
    let start = app.head().await;
    for i in 0..3 {
        app.create_funko(&format!("Ends {i}")).await;
    }
    let logged = app.events_after(&start).await;
    let mut replayed = app
        .sse(&format!("/events?lastEventId={start}&maxEvents=2"), None)
        .await;
    assert_eq!(replayed.take_events(2).await, logged[..2]);
    assert!(replayed.next_frame().await.is_none(), "ends after two");

    // One replayed, then it waits for the next commit.
    let second = cursors(&logged)[1];
    let mut waiting = app
        .sse(&format!("/events?lastEventId={second}&maxEvents=2"), None)
        .await;
    assert_eq!(waiting.next_event().await, logged[2]);
    let live = app.create_funko("Ends live").await;
    assert_eq!(waiting.next_event().await["data"], live);
    assert!(waiting.next_frame().await.is_none(), "ends after two");

    // Nothing to send: it ends at its timeout, having sent no event.
    let mut quiet = app.sse("/events?timeout=1&maxEvents=5", None).await;
    while let Some(frame) = quiet.next_frame().await {
        assert!(!frame.is_event(), "no event: {frame:?}");
    }

    for bad in [
        "maxEvents=0",
        "maxEvents=1001",
        "maxEvents=two",
        "maxEvents=-1",
        "timeout=0",
        "timeout=3601",
        "timeout=1.5",
    ] {
        let problem = assert_problem(app.get(&format!("/events?{bad}")).await, 400).await;
        let name = bad.split('=').next().unwrap();
        assert!(
            problem["detail"].as_str().unwrap().contains(name),
            "{bad}: {problem}"
        );
    }
}

async fn resume_with_last_event_id_gets_exactly_the_missed_events(backend: Backend) {
    let app = spawn_app(backend).await;
    let start = app.head().await;
    for i in 0..5 {
        app.create_funko(&format!("Missed {i}")).await;
    }
    let logged = app.events_after(&start).await;
    assert_eq!(logged.len(), 5);

    let mut by_header = app.sse("/events", Some(&start)).await;
    assert_eq!(by_header.take_events(5).await, logged);
    let mut by_query = app.sse(&format!("/events?lastEventId={start}"), None).await;
    assert_eq!(by_query.take_events(5).await, logged);
    // The header (sent by a reconnecting browser) wins over the URL's first cursor.
    let third = cursors(&logged)[2].to_string();
    let mut both = app
        .sse(&format!("/events?lastEventId={start}"), Some(&third))
        .await;
    assert_eq!(both.take_events(2).await, logged[3..]);

    // Then live, without a gap or a duplicate at the switch.
    let live = app.create_funko("Live").await;
    for sse in [&mut by_header, &mut by_query, &mut both] {
        let event = sse.next_event().await;
        assert_eq!(event["data"], live);
    }
}

async fn no_cursor_means_live_only(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create_funko("Before").await;
    let mut sse = app.sse("/events", None).await;
    let after = app.create_funko("After").await;
    assert_eq!(sse.next_event().await["data"], after);
}

/// `writers` tasks, each creating `per_writer` Funkos one after another (named
/// `{tag}{writer}-{i}`).
fn spawn_writers(
    app: &std::sync::Arc<TestApp>,
    writers: usize,
    per_writer: usize,
    tag: &'static str,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..writers)
        .map(|w| {
            let app = app.clone();
            tokio::spawn(async move {
                for i in 0..per_writer {
                    app.create_funko(&format!("{tag}{w}-{i}")).await;
                }
            })
        })
        .collect()
}

async fn replay_to_live_under_concurrent_writers(backend: Backend) {
    let app = std::sync::Arc::new(spawn_app(backend).await);
    let start = app.head().await;
    const WRITERS: usize = 4;
    const PER_WRITER: usize = 25;
    let total = WRITERS * PER_WRITER;

    let writers = spawn_writers(&app, WRITERS, PER_WRITER, "W");
    // Subscribers join while the writers run: from the start, from "now", and from
    // whatever cursor a read shows at that moment.
    let mut subscribers = Vec::new();
    for round in 0..6 {
        let cursor = if round % 2 == 0 {
            start.clone()
        } else {
            app.head().await
        };
        let sse = app.sse("/events", Some(&cursor)).await;
        subscribers.push((cursor, sse));
        tokio::task::yield_now().await;
    }
    join_all(writers).await.into_iter().for_each(|r| r.unwrap());
    let log = app.events_after(&start).await;
    assert_eq!(log.len(), total);
    let head = cursors(&log).last().copied().unwrap();
    let mut checks = Vec::new();
    for (cursor, mut sse) in subscribers {
        let expected: Vec<Value> = log
            .iter()
            .filter(|e| e["id"].as_str().unwrap().parse::<i64>().unwrap() > cursor.parse().unwrap())
            .cloned()
            .collect();
        checks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            while cursors(&seen).last().copied().unwrap_or(0) < head {
                seen.push(sse.next_event().await);
            }
            assert_eq!(seen, expected, "subscriber from {cursor}");
        }));
    }
    join_all(checks).await.into_iter().for_each(|r| r.unwrap());
}

/// Enough live subscribers that one round of the hub's writes outlasts a commit, while
/// several writers commit: a round takes in what was committed since it began for the
/// subscribers it has not reached yet, so subscribers end a round at different cursors.
/// Every one still gets every event once, in order.
async fn many_subscribers_under_concurrent_writers_get_every_event_once(backend: Backend) {
    let app = std::sync::Arc::new(spawn_app(backend).await);
    let start = app.head().await;
    const SUBSCRIBERS: usize = 250;
    const WRITERS: usize = 8;
    const PER_WRITER: usize = 15;
    let mut subscribers = Vec::with_capacity(SUBSCRIBERS);
    for _ in 0..SUBSCRIBERS {
        subscribers.push(app.sse("/events", Some(&start)).await);
    }
    let writers = spawn_writers(&app, WRITERS, PER_WRITER, "M");
    join_all(writers).await.into_iter().for_each(|r| r.unwrap());
    let log = std::sync::Arc::new(app.events_after(&start).await);
    assert_eq!(log.len(), WRITERS * PER_WRITER);
    let head = cursors(&log).last().copied().unwrap();
    let checks = subscribers.into_iter().enumerate().map(|(i, mut sse)| {
        let log = log.clone();
        tokio::spawn(async move {
            let mut seen = Vec::with_capacity(log.len());
            while cursors(&seen).last().copied().unwrap_or(0) < head {
                seen.push(sse.next_event().await);
            }
            assert!(seen == *log, "subscriber {i} got {:?}", cursors(&seen));
        })
    });
    join_all(checks).await.into_iter().for_each(|r| r.unwrap());
}

async fn resets_for_old_future_and_foreign_cursors(backend: Backend) {
    let app = spawn_app(backend).await;
    let start = app.head().await;
    for i in 0..3 {
        app.create_funko(&format!("Old {i}")).await;
    }
    let head = app.head().await;

    // Ahead of the head: never issued here.
    let future = (head.parse::<i64>().unwrap() + 1000).to_string();
    let mut sse = app.sse("/events", Some(&future)).await;
    let reset = next_reset(&mut sse).await;
    assert_eq!(reset["reason"], "unknown");
    assert_eq!(reset["cursor"], head.as_str());
    // The browser's lastEventId moves to the reset's cursor, so a reconnect does not loop.
    let frame = sse.next_frame().await.unwrap();
    assert_eq!(frame.id.as_deref(), Some(head.as_str()));
    assert!(frame.data.is_none());
    // ...and the stream continues live from there.
    let live = app.create_funko("After reset").await;
    assert_eq!(sse.next_event().await["data"], live);

    // Older than retention: prune everything but the newest event.
    let pruned = app.prune_all_but_newest().await;
    assert_eq!(pruned, 3);
    let head = app.head().await;
    let mut sse = app.sse("/events", Some(&start)).await;
    let reset = next_reset(&mut sse).await;
    assert_eq!(reset["reason"], "expired");
    assert_eq!(reset["cursor"], head.as_str());
    let poll: Value = app
        .get(&format!("/events/poll?after={start}&timeout=0"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(poll["reset"]["reason"], "expired");
    assert_eq!(poll["cursor"], head.as_str());
    assert!(poll.get("events").is_none());

    // A cursor from another database.
    let other = spawn_app(backend).await;
    other.create_funko("Elsewhere").await;
    let foreign = other.head().await;
    let mut sse = app.sse("/events", Some(&foreign)).await;
    let reset = next_reset(&mut sse).await;
    assert!(["expired", "unknown"].contains(&reset["reason"].as_str().unwrap()));
    assert_eq!(reset["cursor"], head.as_str());

    // Malformed cursors are a client error.
    for bad in ["abc", "-1", "1.5"] {
        let response = app
            .client
            .get(app.url("/events"))
            .header("Last-Event-ID", bad)
            .send()
            .await
            .unwrap();
        assert_problem(response, 400).await;
        assert_problem(app.get(&format!("/events/poll?after={bad}")).await, 400).await;
    }
}

/// The background pruner keeps the configured number of events; a cursor it passed gets a
/// reset.
async fn retention_prunes_in_the_background(backend: Backend) {
    let app = spawn_app_with(backend, |c| {
        c.retention_events = 2;
        c.prune_interval_seconds = 1;
    })
    .await;
    let start = app.head().await;
    for i in 0..5 {
        app.create_funko(&format!("Pruned {i}")).await;
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let poll: Value = app
            .get(&format!("/events/poll?after={start}&timeout=0"))
            .await
            .json()
            .await
            .unwrap();
        if poll.get("reset").is_some() {
            assert_eq!(poll["reset"]["reason"], "expired");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "pruned within the interval"
        );
        // Waits for the next commit or a second, whichever first: no busy loop.
        app.get(&format!(
            "/events/poll?after={}&timeout=1",
            app.head().await
        ))
        .await;
    }
    let left = app.events_after(&app_floor_cursor(&app).await).await;
    assert_eq!(left.len(), 2, "the newest two are kept");
}

/// The cursor just below the oldest retained event (the floor), read from the database.
async fn app_floor_cursor(app: &TestApp) -> String {
    app.state.log_floor().await.unwrap().to_string()
}

async fn next_reset(sse: &mut SseClient) -> Value {
    loop {
        let frame = sse.next_frame().await.expect("open");
        if frame.event.as_deref() == Some("reset") {
            assert!(frame.id.is_none(), "a reset has no id:");
            return frame.json();
        }
        assert!(!frame.is_event(), "no event before the reset: {frame:?}");
    }
}

async fn filters_by_entity_and_type(backend: Backend) {
    let app = spawn_app(backend).await;
    let start = app.head().await;
    let mut categories = app
        .sse(
            &format!("/events?entity=CATEGORIES&lastEventId={start}"),
            None,
        )
        .await;
    let mut deletes = app
        .sse(&format!("/events?types=DELETE&lastEventId={start}"), None)
        .await;
    let mut funko_changes = app
        .sse(
            &format!("/events?entity=funkos&types=create,update&lastEventId={start}"),
            None,
        )
        .await;

    let funko = app.create_funko("Filtered").await;
    let id = funko["id"].clone();
    let category: Value = app
        .post("/categories", json!({"name": "ANIME"}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        app.patch(&format!("/funkos/{id}"), json!({"stock": 2}))
            .await
            .status(),
        200
    );
    assert_eq!(app.delete(&format!("/funkos/{id}")).await.status(), 204);

    let event = categories.next_event().await;
    assert_eq!(
        (event["entity"].clone(), event["data"].clone()),
        (json!("CATEGORIES"), category)
    );
    let event = deletes.next_event().await;
    assert_eq!(
        (event["type"].clone(), event["data"]["id"].clone()),
        (json!("DELETE"), id.clone())
    );
    let seen = funko_changes.take_events(2).await;
    assert_eq!(
        seen.iter().map(|e| e["type"].clone()).collect::<Vec<_>>(),
        [json!("CREATE"), json!("UPDATE")]
    );

    // The filtered cursor still advances: long-poll returns the last id it scanned.
    let all = app.events_after(&start).await;
    let poll: Value = app
        .get(&format!(
            "/events/poll?after={start}&entity=CATEGORIES&timeout=0"
        ))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(poll["events"].as_array().unwrap().len(), 1);
    assert_eq!(poll["cursor"], all.last().unwrap()["id"]);

    for bad in [
        "/events?entity=USERS",
        "/events?types=UPSERT",
        "/events/poll?entity=x",
        "/events/poll?types=CREATE,nope",
    ] {
        assert_problem(app.get(bad).await, 400).await;
    }
}

/// A filtered stream whose batch ends in events the filter hides still moves the browser's
/// cursor to the end of the batch (an `id:`-only frame), so a reconnect does not scan them
/// again.
async fn a_filtered_batch_that_ends_hidden_still_moves_the_cursor(backend: Backend) {
    let app = spawn_app(backend).await;
    let start = app.head().await;
    let category = app.post("/categories", json!({"name": "TRAILING"})).await;
    assert_eq!(category.status(), 201);
    app.create_funko("Hidden after").await;
    let head = app.head().await;
    // Replayed in one batch: the category, then the Funko the filter hides.
    let mut sse = app
        .sse(
            &format!("/events?entity=CATEGORIES&lastEventId={start}"),
            None,
        )
        .await;
    assert_eq!(sse.next_event().await["entity"], "CATEGORIES");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let frame = sse
            .next_frame_within(deadline - tokio::time::Instant::now())
            .await
            .unwrap_or_else(|()| panic!("no frame moved the cursor to {head}"))
            .expect("the stream stays open");
        assert!(
            !frame.is_event(),
            "the filter passes nothing more: {frame:?}"
        );
        if frame.id.as_deref() == Some(head.as_str()) {
            break;
        }
    }
}

/// A long-poll whose filter matches nothing in a long log scans a bounded part of it per
/// request (whatever its `limit`) and answers with the cursor it reached; polling on from
/// there reaches the head, and the one matching event at the end.
async fn a_filtered_long_poll_scans_a_bounded_part_of_the_log(backend: Backend) {
    let app = spawn_app(backend).await;
    let start = app.head().await;
    {
        use futures_util::StreamExt;
        futures_util::stream::iter(0..1100)
            .map(|i| {
                let app = &app;
                async move { app.create_funko(&format!("Scanned {i}")).await }
            })
            .buffer_unordered(32)
            .collect::<Vec<_>>()
            .await;
    }
    let category: Value = app
        .post("/categories", json!({"name": "AT THE END"}))
        .await
        .json()
        .await
        .unwrap();
    let head: i64 = app.head().await.parse().unwrap();
    let mut cursor = start;
    let mut polls = 0;
    let found = loop {
        polls += 1;
        assert!(polls <= 10, "the head is reached in a few polls");
        let page: Value = app
            .get(&format!(
                "/events/poll?after={cursor}&entity=CATEGORIES&limit=1&timeout=5"
            ))
            .await
            .json()
            .await
            .unwrap();
        let next: i64 = page["cursor"].as_str().unwrap().parse().unwrap();
        assert!(
            next > cursor.parse().unwrap(),
            "every answer moves the cursor"
        );
        cursor = next.to_string();
        if let Some(event) = page["events"].as_array().unwrap().first() {
            break event.clone();
        }
        assert!(next < head, "an empty answer stops short of the head");
    };
    assert!(polls > 1, "one request did not scan the whole log");
    assert_eq!(found["data"], category);
    assert_eq!(cursor, head.to_string());
}

async fn long_poll_answers_waits_wakes_and_times_out(backend: Backend) {
    let app = std::sync::Arc::new(spawn_app(backend).await);
    let start = app.head().await;
    let created = app.create_funko("Polled").await;

    // Events exist: answered at once.
    let page: Value = app
        .get(&format!("/events/poll?after={start}"))
        .await
        .json()
        .await
        .unwrap();
    let events = page["events"].as_array().unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["data"], created);
    let cursor = page["cursor"].as_str().unwrap().to_owned();
    assert_eq!(events[0]["id"], cursor.as_str());

    // Nothing new: held until a commit wakes it.
    let poller = {
        let app = app.clone();
        let cursor = cursor.clone();
        tokio::spawn(async move {
            app.get(&format!("/events/poll?after={cursor}&timeout=30"))
                .await
                .json::<Value>()
                .await
                .unwrap()
        })
    };
    // The poll is parked once the server has answered a later request? Not observable;
    // either order must give the same answer, which is the point of the cursor.
    let woke = app.create_funko("Wakes the poll").await;
    let page = tokio::time::timeout(WAIT, poller)
        .await
        .expect("woken")
        .unwrap();
    assert_eq!(page["events"][0]["data"], woke);
    let cursor = page["cursor"].as_str().unwrap().to_owned();

    // Timeout: no events, same cursor.
    let page: Value = app
        .get(&format!("/events/poll?after={cursor}&timeout=1"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["events"], json!([]));
    assert_eq!(page["cursor"], cursor.as_str());

    // Limit pages through the log.
    for i in 0..5 {
        app.create_funko(&format!("Paged {i}")).await;
    }
    let page: Value = app
        .get(&format!("/events/poll?after={cursor}&limit=2"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["events"].as_array().unwrap().len(), 2);
    assert_eq!(page["cursor"], page["events"][1]["id"]);

    for bad in [
        "timeout=61",
        "timeout=-1",
        "limit=0",
        "limit=1001",
        "limit=x",
        "after=x",
    ] {
        assert_problem(app.get(&format!("/events/poll?{bad}")).await, 400).await;
    }
}

async fn keep_alive_comments_arrive(backend: Backend) {
    let app = spawn_app_with(backend, |c| c.keepalive_seconds = 1).await;
    let mut sse = app.sse("/events", None).await;
    loop {
        let frame = sse
            .next_frame_within(Duration::from_secs(5))
            .await
            .expect("a comment within 5 s")
            .unwrap();
        if frame.comment {
            break;
        }
    }
}

/// A client that stops reading is cut off without holding up anyone else, and resumes
/// from the log with nothing lost.
async fn slow_consumer_is_cut_off_and_resumes(backend: Backend) {
    // The queue is small next to what socket buffers hold (~1,400 of these events), so the
    // stalled client is cut off, and large enough that the reading one never lags that far.
    let app = spawn_app_with(backend, |c| {
        c.subscriber_queue = 512;
        // The subscriber queue's cut-off is under test, not the write-stall one.
        c.write_stall_seconds = 300;
    })
    .await;
    let start = app.head().await;
    let writes = 3000;
    // A subscriber that keeps reading while the other stalls.
    let mut reader = app.sse(&format!("/events?lastEventId={start}"), None).await;
    let reader = tokio::spawn(async move { reader.take_events(writes).await });

    // A raw socket with a tiny receive window that sends the request and then reads nothing.
    let mut stalled = app.small_window_connection().await;
    let path = format!("/events?lastEventId={start}");
    send_get(&mut stalled, &path, "Connection: close\r\n").await;

    // Big events fill the socket buffers quickly.
    app.create_big_funkos("Bulk", writes).await;
    let log = app.events_after(&start).await;
    assert_eq!(log.len(), writes);
    // The reading subscriber got everything, in order, while the other one stalled.
    assert_eq!(reader.await.unwrap(), log);

    // Now the stalled client reads: some events, then the server's end of the stream.
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, stalled.read_to_end(&mut raw))
        .await
        .expect("the server closes the stalled stream")
        .unwrap();
    let text = String::from_utf8_lossy(&raw);
    let last_id = text
        .lines()
        .filter_map(|l| l.strip_prefix("id: "))
        .next_back()
        .expect("some events arrived before the cut")
        .to_owned();
    let delivered = cursors(&log)
        .iter()
        .position(|&c| c.to_string() == last_id)
        .expect("a logged id")
        + 1;
    println!("the stalled client got {delivered} of {writes} events before the cut");
    assert!(
        delivered < writes,
        "the stalled client was cut off before the end"
    );

    // It resumes by cursor and gets exactly the rest.
    let mut resumed = app.sse("/events", Some(&last_id)).await;
    assert_eq!(
        resumed.take_events(writes - delivered).await,
        log[delivered..]
    );
}

/// A client that stops reading for good is disconnected once the server's writes have made no
/// progress for `write_stall_seconds`, even when it is within the subscriber queue: hyper stops
/// polling a stream whose socket is full, so only the connection layer can end it.
async fn stalled_connection_is_closed(backend: Backend) {
    let app = spawn_app_with(backend, |c| {
        c.subscriber_queue = 100_000;
        c.write_stall_seconds = 1;
    })
    .await;
    let start = app.head().await;
    let mut stalled = app.small_window_connection().await;
    send_get(&mut stalled, &format!("/events?lastEventId={start}"), "").await;
    // Enough to fill both sides' socket buffers, then the server's write waits.
    app.create_big_funkos("Stall", 2500).await;
    // Without a Connection: close, only the server giving up ends this read.
    assert_closed_after_events(&mut stalled).await;
}

/// CPU time a process has used (from `/proc`, in clock ticks of 10 ms).
fn process_cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

/// A quiet stream to a client that stopped reading costs the server no CPU while it waits,
/// and is closed at the write-stall time, though keep-alives still fit in its buffers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_stream_to_a_client_that_stopped_reading_costs_nothing_and_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let url = Backend::Sqlite.fresh_database(dir.path()).await;
    let server = crate::crash::ServerProcess::start(
        &url,
        dir.path(),
        &["--keepalive-seconds", "1", "--write-stall-seconds", "3"],
    )
    .await;
    let address: std::net::SocketAddr = server.base.trim_start_matches("http://").parse().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stalled = socket.connect(address).await.unwrap();
    send_get(&mut stalled, "/events", "").await;
    let client = reqwest::Client::new();
    let open_streams = || async {
        let text = client
            .get(format!("{}/metrics", server.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("funko_live_stream_connections{transport=\"sse\"} "))
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    while open_streams().await == 0 {
        assert!(tokio::time::Instant::now() < deadline, "the stream opened");
    }
    // More than its window and the server's unsent bound, then nothing but keep-alives.
    let image = format!("https://example.com/{}.png", "x".repeat(2000));
    for i in 0..40 {
        let created = client
            .post(format!("{}/funkos", server.base))
            .json(
                &json!({"name": format!("Quiet {i}"), "price": 1, "stock": 1,
                          "category": "OTROS", "image": image}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(created.status(), 201);
    }
    let (started, cpu) = (tokio::time::Instant::now(), process_cpu(server.pid()));
    while open_streams().await > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(12),
            "the stream was not closed within the write-stall time and a keep-alive"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (waited, used) = (started.elapsed(), process_cpu(server.pid()) - cpu);
    assert!(used < waited / 4, "{used:?} of CPU in {waited:?}");
}

/// Reads a stalled stream client's socket to its end: the server closed it (within [`WAIT`])
/// after sending it some events.
async fn assert_closed_after_events(stalled: &mut tokio::net::TcpStream) {
    let mut raw = Vec::new();
    let read = tokio::time::timeout(WAIT, stalled.read_to_end(&mut raw)).await;
    assert!(read.is_ok(), "the stalled connection was closed");
    assert!(
        String::from_utf8_lossy(&raw).contains("id: "),
        "it got events first"
    );
}

/// The same for a client with an ordinary receive window: the kernel holds at most
/// `--notsent-lowat-bytes` of a connection's data unsent, so a client that stops reading
/// stalls the server's writes once its receive window is full, instead of after the kernel's
/// autotuned send buffer (4 MiB), and is then cut off. (The events here, ~2.8 MiB, fit in an
/// autotuned send buffer: without the bound nothing stalls.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_stalls_once_its_window_is_full() {
    let app = spawn_app_with(Backend::Sqlite, |c| {
        c.subscriber_queue = 100_000;
        c.write_stall_seconds = 1;
    })
    .await;
    let start = app.head().await;
    let mut stalled = tokio::net::TcpStream::connect(app.address).await.unwrap();
    send_get(&mut stalled, &format!("/events?lastEventId={start}"), "").await;
    app.create_big_funkos("Capped", 1200).await;
    // The client keeps not reading for twice the write-stall deadline: not a synchronisation,
    // the behaviour under test.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_closed_after_events(&mut stalled).await;
}

/// A reader that falls behind, here by not reading while 300 big events commit, makes the
/// server's writes to it block part-way through a chunk. It then gets every event whole and
/// in order, and stays live afterwards.
async fn a_reader_that_falls_behind_gets_every_event_whole(backend: Backend) {
    let app = spawn_app_with(backend, |c| c.write_stall_seconds = 120).await;
    let start = app.head().await;
    let socket = app.small_window_connection().await;
    let mut sse = SseClient::over(socket, &format!("/events?lastEventId={start}")).await;
    let behind = 300;
    app.create_big_funkos("Behind", behind).await;
    let log = app.events_after(&start).await;
    assert_eq!(log.len(), behind);
    assert_eq!(sse.take_events(behind).await, log);
    // Caught up, it follows live writes again.
    let live = app.create_funko("After").await;
    assert_eq!(sse.next_event().await["data"], live);
}

/// An HTTP/1.0 client gets the stream without chunked framing (the connection's end ends
/// the body), so nothing may write chunks to it.
#[tokio::test]
async fn an_http_1_0_client_gets_an_unchunked_stream() {
    let app = spawn_app(Backend::Sqlite).await;
    let start = app.head().await;
    let mut socket = tokio::net::TcpStream::connect(app.address).await.unwrap();
    socket
        .write_all(format!("GET /events?lastEventId={start} HTTP/1.0\r\n\r\n").as_bytes())
        .await
        .unwrap();
    for i in 0..3 {
        app.create_funko(&format!("Old {i}")).await;
    }
    let log = app.events_after(&start).await;
    let last = format!("id: {}\n", log[2]["id"].as_str().unwrap());
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, async {
        // Until the last event's frame is whole.
        while !String::from_utf8_lossy(&raw)
            .split_once(&last)
            .is_some_and(|(_, rest)| rest.contains("\n\n"))
        {
            assert!(
                socket.read_buf(&mut raw).await.unwrap() > 0,
                "the stream ended"
            );
        }
    })
    .await
    .expect("three events in time");
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(!head.to_lowercase().contains("transfer-encoding"), "{head}");
    assert!(body.starts_with("retry: "), "{body:?}");
    let events: Vec<Value> = body
        .split("\n\n")
        .filter_map(|frame| frame.strip_prefix("id: "))
        .filter_map(|frame| frame.split_once("\ndata: "))
        .map(|(_, data)| serde_json::from_str(data).unwrap())
        .collect();
    assert_eq!(events, log);
}

async fn shutdown_closes_streams_promptly(backend: Backend) {
    let app: TestApp = spawn_app(backend).await;
    let mut sse = app.sse("/events", None).await;
    sse.next_frame().await.unwrap();
    let started = std::time::Instant::now();
    let stop = tokio::spawn(app.stop());
    loop {
        match sse.next_frame().await {
            None => break,
            Some(frame) => assert!(!frame.is_event()),
        }
    }
    tokio::time::timeout(WAIT, stop)
        .await
        .expect("server stops")
        .unwrap();
    assert!(started.elapsed() < WAIT);
}

crate::backend_tests!(
    a_stream_with_an_end_condition_ends_by_itself,
    a_filtered_long_poll_scans_a_bounded_part_of_the_log,
    a_filtered_batch_that_ends_hidden_still_moves_the_cursor,
    sse_headers_retry_and_live_events,
    resume_with_last_event_id_gets_exactly_the_missed_events,
    no_cursor_means_live_only,
    replay_to_live_under_concurrent_writers,
    many_subscribers_under_concurrent_writers_get_every_event_once,
    resets_for_old_future_and_foreign_cursors,
    filters_by_entity_and_type,
    long_poll_answers_waits_wakes_and_times_out,
    keep_alive_comments_arrive,
    slow_consumer_is_cut_off_and_resumes,
    shutdown_closes_streams_promptly,
    retention_prunes_in_the_background,
    stalled_connection_is_closed,
    a_reader_that_falls_behind_gets_every_event_whole,
);
