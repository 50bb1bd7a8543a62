//! Several instances on one PostgreSQL (DESIGN §3 "Several instances"): a write on any
//! instance reaches subscribers on every instance with the same cursors; writers on both
//! give every subscriber the table's sequence; subscribers of a killed instance resume on
//! another with nothing lost; instances ride out a PostgreSQL restart.
//!
//! PostgreSQL only: skipped, like every PostgreSQL test, when it is not installed.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use funko_live::Config;
use futures_util::future::join_all;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::{
    crash::ServerProcess,
    helpers::{
        Backend, SseClient, TestApp, WAIT, assert_problem, cursors, spawn_app, spawn_on,
        stream_cursor,
    },
    postgres::{self, Cluster},
};

/// How long a follower may take to read the whole stream, reconnections included.
const FOLLOW: Duration = Duration::from_secs(60);

/// Another instance on an existing database, with its own data directory.
pub(crate) async fn instance_on(database_url: &str) -> TestApp {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = Config::defaults();
    config.bind = "127.0.0.1:0".parse().unwrap();
    config.data_dir = dir.path().to_owned();
    config.database_url = Some(database_url.to_owned());
    spawn_on(Backend::Postgres, config, database_url.to_owned(), dir).await
}

fn funko(name: &str) -> Value {
    json!({"name": name, "price": 9.99, "stock": 5, "category": "DISNEY"})
}

/// Creates a Funko at `base` (any instance, in or out of this process); returns the write's
/// cursor, or `None` when the instance did not answer.
async fn create_at(client: &reqwest::Client, base: &str, name: &str) -> Option<String> {
    let response = client
        .post(format!("{base}/funkos"))
        .json(&funko(name))
        .send()
        .await
        .ok()?;
    assert_eq!(response.status(), StatusCode::CREATED, "creating {name}");
    Some(stream_cursor(&response))
}

fn reached(until: &watch::Receiver<Option<i64>>, cursor: &str) -> bool {
    let cursor: i64 = cursor.parse().expect("numeric cursor");
    until.borrow().is_some_and(|head| cursor >= head)
}

/// Connects to `GET {base}/events` after `cursor`, retrying while the instance cannot answer,
/// as `EventSource` does.
async fn connect_sse(client: &reqwest::Client, base: &str, cursor: &str) -> SseClient {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let response = client
            .get(format!("{base}/events"))
            .header("Last-Event-ID", cursor)
            .send()
            .await;
        match response {
            Ok(response) if response.status() == StatusCode::OK => {
                return SseClient::new(response);
            }
            other => {
                assert!(
                    Instant::now() < deadline,
                    "no SSE stream from {base}: {other:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// What a follower read, in order, and how many times it had to reconnect.
#[derive(Debug)]
struct Followed {
    events: Vec<Value>,
    reconnects: usize,
}

/// Follows the stream over SSE from `start` until its cursor reaches the head announced on
/// `until`. It connects to `bases[0]` and, whenever the stream ends, reconnects with its last
/// cursor in `Last-Event-ID` to the next base (staying on the last one). `seen` counts the
/// events read so far.
async fn follow_sse(
    bases: Vec<String>,
    start: String,
    mut until: watch::Receiver<Option<i64>>,
    seen: watch::Sender<usize>,
) -> Followed {
    let client = reqwest::Client::new();
    let mut events = Vec::new();
    let mut cursor = start;
    let mut connections = 0;
    loop {
        let base = &bases[connections.min(bases.len() - 1)];
        let mut sse = connect_sse(&client, base, &cursor).await;
        connections += 1;
        loop {
            if reached(&until, &cursor) {
                return Followed {
                    events,
                    reconnects: connections - 1,
                };
            }
            tokio::select! {
                frame = sse.next_frame_within(FOLLOW) => match frame {
                    Err(()) => panic!("no SSE frame from {base} in {FOLLOW:?} (at {cursor})"),
                    // The stream ended: reconnect by cursor.
                    Ok(None) => break,
                    Ok(Some(frame)) => {
                        assert_ne!(frame.event.as_deref(), Some("reset"), "unexpected reset");
                        if frame.is_event() {
                            let event = frame.json();
                            assert_eq!(event["id"].as_str(), frame.id.as_deref());
                            events.push(event);
                            seen.send_replace(events.len());
                        }
                        if let Some(id) = frame.id {
                            cursor = id;
                        }
                    }
                },
                changed = until.changed() => changed.expect("the test announces the head"),
            }
        }
    }
}

/// Follows the stream by long-polling `base` from `start` until the head announced on `until`,
/// retrying while the instance cannot answer.
async fn follow_poll(
    base: String,
    start: String,
    mut until: watch::Receiver<Option<i64>>,
    seen: watch::Sender<usize>,
) -> Followed {
    let client = reqwest::Client::new();
    let mut events = Vec::new();
    let mut cursor = start;
    let mut failures = 0;
    while !reached(&until, &cursor) {
        let url = format!("{base}/events/poll?after={cursor}&timeout=5&limit=1000");
        tokio::select! {
            response = client.get(&url).send() => match response {
                Ok(response) if response.status() == StatusCode::OK => {
                    let page: Value = response.json().await.expect("a poll answer");
                    assert!(page.get("reset").is_none(), "unexpected reset: {page}");
                    events.extend(page["events"].as_array().expect("events").iter().cloned());
                    cursor = page["cursor"].as_str().expect("cursor").to_owned();
                    seen.send_replace(events.len());
                }
                _ => {
                    failures += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            // A poll is stateless: dropping one in flight loses nothing.
            changed = until.changed() => changed.expect("the test announces the head"),
        }
    }
    Followed {
        events,
        reconnects: failures,
    }
}

/// Waits until `seen` reaches `n`.
async fn wait_seen(seen: &mut watch::Receiver<usize>, n: usize, what: &str) {
    let waited = tokio::time::timeout(Duration::from_secs(30), seen.wait_for(|&s| s >= n))
        .await
        .map(|result| result.map(|_| ()));
    match waited {
        Ok(result) => result.expect("the follower is running"),
        Err(_) => panic!(
            "{what} did not see {n} events in time (saw {})",
            *seen.borrow()
        ),
    }
}

/// Every event after `start` by long-polling, until `n` arrived.
async fn poll_events(app: &TestApp, start: &str, n: usize) -> Vec<Value> {
    let mut cursor = start.to_owned();
    let mut events = Vec::new();
    while events.len() < n {
        let page: Value = app
            .get(&format!(
                "/events/poll?after={cursor}&timeout=10&limit=1000"
            ))
            .await
            .json()
            .await
            .unwrap();
        let batch = page["events"].as_array().expect("events");
        assert!(!batch.is_empty(), "the poll timed out at {cursor}");
        events.extend(batch.iter().cloned());
        cursor = page["cursor"].as_str().unwrap().to_owned();
    }
    events
}

fn assert_strictly_increasing(events: &[Value]) {
    let ids = cursors(events);
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "cursors strictly increase: {ids:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_on_one_instance_reaches_every_transport_on_the_other() {
    if !postgres::available() {
        return;
    }
    let a = spawn_app(Backend::Postgres).await;
    let b = instance_on(&a.database_url).await;
    let start = a.head().await;
    assert_eq!(b.head().await, start, "one database, one head");

    // Subscribers on B: resuming, live only, WebSocket, a waiting long-poll.
    let mut resumed = b.sse("/events", Some(&start)).await;
    let mut live = b.sse("/events", None).await;
    let (mut ws, welcome) = b.ws_welcomed("/ws").await;
    assert_eq!(welcome["cursor"], start.as_str());
    let poll = {
        let client = b.client.clone();
        let url = b.url(&format!("/events/poll?after={start}&timeout=30"));
        tokio::spawn(async move { client.get(url).send().await.unwrap().json::<Value>().await })
    };

    // Writes on A.
    let response = a.post("/funkos", funko("Groot")).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let mut written = vec![stream_cursor(&response)];
    let created: Value = response.json().await.unwrap();
    let path = format!("/funkos/{}", created["id"]);
    let response = a.patch(&path, json!({"stock": 1})).await;
    assert_eq!(response.status(), StatusCode::OK);
    written.push(stream_cursor(&response));
    let updated: Value = response.json().await.unwrap();
    let response = a.delete(&path).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    written.push(stream_cursor(&response));

    let log = a.events_after(&start).await;
    assert_eq!(
        b.events_after(&start).await,
        log,
        "both instances read one log"
    );
    assert_eq!(
        log.iter()
            .map(|e| e["id"].as_str().unwrap())
            .collect::<Vec<_>>(),
        written,
        "the events carry the cursors A answered"
    );
    assert_eq!(log[0]["data"], created);
    assert_eq!(log[1]["data"], updated);
    assert_eq!(log[2]["type"], "DELETE");

    // B's subscribers got exactly those events: same cursors, same JSON.
    assert_eq!(resumed.take_events(3).await, log);
    assert_eq!(live.take_events(3).await, log);
    assert_eq!(ws.take_events(3).await, log);
    let page = tokio::time::timeout(WAIT, poll)
        .await
        .expect("the long-poll on B is woken by the write on A")
        .unwrap()
        .unwrap();
    // It answers with what had committed when it woke: the first write, or more if the poll
    // reached B after the next write (a busy machine); always a prefix of the log.
    let answered = page["events"].as_array().expect("events");
    assert!(!answered.is_empty() && log.starts_with(answered), "{page}");
    assert_eq!(page["cursor"], written[answered.len() - 1].as_str());
    // And B's reads report the same head.
    assert_eq!(b.head().await, written[2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_on_both_instances_give_every_subscriber_the_table() {
    if !postgres::available() {
        return;
    }
    const WRITERS: usize = 4;
    const PER_WRITER: usize = 25;
    const TOTAL: usize = WRITERS * PER_WRITER;
    let a = Arc::new(spawn_app(Backend::Postgres).await);
    let b = Arc::new(instance_on(&a.database_url).await);
    let instances = [a.clone(), b.clone()];
    let start = a.head().await;

    // On each instance, before any write: SSE resuming and live, WebSocket, long-poll.
    let mut readers = Vec::new();
    for (name, app) in ["A", "B"].into_iter().zip(&instances) {
        for last_event_id in [Some(start.as_str()), None] {
            let mut sse = app.sse("/events", last_event_id).await;
            let what = format!("SSE on {name} from {last_event_id:?}");
            readers.push(tokio::spawn(
                async move { (what, sse.take_events(TOTAL).await) },
            ));
        }
        let (mut ws, _) = app.ws_welcomed(&format!("/ws?after={start}")).await;
        let what = format!("WebSocket on {name}");
        readers.push(tokio::spawn(
            async move { (what, ws.take_events(TOTAL).await) },
        ));
        let (app, from) = (app.clone(), start.clone());
        let what = format!("long-poll on {name}");
        readers.push(tokio::spawn(async move {
            (what, poll_events(&app, &from, TOTAL).await)
        }));
    }

    let started = Instant::now();
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let instances = instances.clone();
            tokio::spawn(async move {
                let mut written = Vec::new();
                for i in 0..PER_WRITER {
                    // Each writer alternates between the instances.
                    let app = &instances[(w + i) % 2];
                    let response = app.post("/funkos", funko(&format!("W{w}-{i}"))).await;
                    assert_eq!(response.status(), StatusCode::CREATED);
                    written.push(stream_cursor(&response).parse::<i64>().unwrap());
                }
                written
            })
        })
        .collect();
    let mut written: Vec<i64> = join_all(writers)
        .await
        .into_iter()
        .flat_map(|w| w.unwrap())
        .collect();
    println!(
        "{TOTAL} writes over two instances in {:?}",
        started.elapsed()
    );
    written.sort_unstable();

    let log = a.events_after(&start).await;
    assert_eq!(log.len(), TOTAL);
    assert_eq!(
        b.events_after(&start).await,
        log,
        "both instances read one log"
    );
    assert_strictly_increasing(&log);
    assert_eq!(cursors(&log), written, "every write is in the log, once");
    for reader in join_all(readers).await {
        let (what, events) = reader.unwrap();
        assert_eq!(events, log, "{what}");
    }
}

/// What one request of [`refusals_among_concurrent_writes_leave_the_others_committed`]
/// answered.
struct Answered {
    what: String,
    status: StatusCode,
    cursor: Option<i64>,
    body: Value,
}

/// Writes that race on both instances, many of them refused (a taken name, a stale
/// `If-Match`, an unknown category, a missing Funko), share transactions with writes that
/// succeed: each answers its own status, and the log holds exactly the successes, once, in
/// the order of their cursors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_among_concurrent_writes_leave_the_others_committed() {
    if !postgres::available() {
        return;
    }
    const TASKS: usize = 16;
    const ROUNDS: usize = 6;
    let a = Arc::new(spawn_app(Backend::Postgres).await);
    let b = Arc::new(instance_on(&a.database_url).await);
    let instances = [a.clone(), b.clone()];
    let contested = a.create_funko("Contested").await["id"].as_i64().unwrap();
    let start = a.head().await;

    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let app = instances[t % 2].clone();
            tokio::spawn(async move {
                let mut answered = Vec::new();
                for r in 0..ROUNDS {
                    // Every task races for this name: one creates it, the others get 409.
                    let dup = app.post("/funkos", funko(&format!("Dup-{r}"))).await;
                    let own = app.post("/funkos", funko(&format!("Own-{t}-{r}"))).await;
                    // One PATCH per version of the contested Funko can hold.
                    let version = 1 + (t + r) % 4;
                    let patch = app
                        .if_match(
                            reqwest::Method::PATCH,
                            &format!("/funkos/{contested}"),
                            &format!("\"{version}\""),
                            Some(json!({"stock": t * 100 + r})),
                        )
                        .await;
                    let mut unknown = funko(&format!("Lost-{t}-{r}"));
                    unknown["category"] = json!("NO-SUCH-CATEGORY");
                    let unknown = app.post("/funkos", unknown).await;
                    let missing = app.delete("/funkos/999999999").await;
                    for (what, response) in [
                        (format!("dup {r}"), dup),
                        (format!("own {t}-{r}"), own),
                        (format!("patch if {version}"), patch),
                        ("unknown category".to_owned(), unknown),
                        ("missing".to_owned(), missing),
                    ] {
                        let status = response.status();
                        let cursor = status
                            .is_success()
                            .then(|| stream_cursor(&response).parse::<i64>().unwrap());
                        let body = response.json().await.unwrap();
                        answered.push(Answered {
                            what,
                            status,
                            cursor,
                            body,
                        });
                    }
                }
                answered
            })
        })
        .collect();
    let answered: Vec<Answered> = join_all(tasks)
        .await
        .into_iter()
        .flat_map(|t| t.unwrap())
        .collect();

    let mut successes = Vec::new();
    let mut dup_winners = std::collections::BTreeMap::<String, usize>::new();
    let mut patched_from = Vec::new();
    for answer in &answered {
        let expected: &[u16] = match answer.what.split(' ').next().unwrap() {
            "dup" => &[201, 409],
            "own" => &[201],
            "patch" => &[200, 412],
            "unknown" => &[422],
            _ => &[404],
        };
        assert!(
            expected.contains(&answer.status.as_u16()),
            "{} answered {}: {}",
            answer.what,
            answer.status,
            answer.body
        );
        if let Some(cursor) = answer.cursor {
            successes.push((cursor, answer.body.clone()));
            *dup_winners.entry(answer.what.clone()).or_default() += 1;
            if answer.what.starts_with("patch") {
                let version = answer.body["version"].as_i64().unwrap();
                patched_from.push(version - 1);
                let asked: i64 = answer.what.rsplit(' ').next().unwrap().parse().unwrap();
                assert_eq!(asked, version - 1, "a PATCH held on the version it named");
            }
        } else {
            assert_eq!(
                answer.body["status"],
                answer.status.as_u16(),
                "{}",
                answer.what
            );
        }
    }
    for r in 0..ROUNDS {
        assert_eq!(dup_winners.get(&format!("dup {r}")), Some(&1), "Dup-{r}");
    }
    patched_from.sort_unstable();
    assert!(!patched_from.is_empty(), "some PATCH held");
    assert!(
        patched_from.windows(2).all(|w| w[0] + 1 == w[1]) && patched_from[0] == 1,
        "one PATCH per version: {patched_from:?}"
    );
    let contested_now: Value = a
        .get(&format!("/funkos/{contested}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        contested_now["version"].as_i64().unwrap(),
        1 + patched_from.len() as i64
    );

    // The log: exactly the successes, each with the resource it answered, once, in order.
    successes.sort_by_key(|(cursor, _)| *cursor);
    let log = a.events_after(&start).await;
    assert_eq!(
        b.events_after(&start).await,
        log,
        "both instances read one log"
    );
    assert_strictly_increasing(&log);
    assert_eq!(
        cursors(&log),
        successes.iter().map(|(c, _)| *c).collect::<Vec<_>>(),
        "the log holds the successful writes, once each"
    );
    for (event, (_, body)) in log.iter().zip(&successes) {
        assert_eq!(&event["data"], body, "event {}", event["id"]);
    }

    // The writes did share transactions: a batch's events are appended by one statement,
    // so they carry one transaction id.
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&a.database_url)
        .await
        .unwrap();
    let (events, transactions): (i64, i64) = sqlx::query_as(
        "SELECT COUNT(*), COUNT(DISTINCT xmin::text) FROM events WHERE id > $1::bigint",
    )
    .bind(&start)
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(events as usize, successes.len());
    assert!(
        transactions < events,
        "{events} events in {transactions} transactions: the writes were not batched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_of_a_killed_instance_resume_on_the_other() {
    if !postgres::available() {
        return;
    }
    let database_url = postgres::fresh_database().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut a = ServerProcess::start(&database_url, dir.path(), &[]).await;
    let b = Arc::new(instance_on(&database_url).await);
    let b_base = b.url("");
    let start = b.head().await;
    let (until_tx, until_rx) = watch::channel(None::<i64>);

    // SSE subscribers on A; when A dies they reconnect to B with their last cursor.
    let mut followers = Vec::new();
    let mut progress = Vec::new();
    for _ in 0..3 {
        let (seen_tx, seen_rx) = watch::channel(0);
        followers.push(tokio::spawn(follow_sse(
            vec![a.base.clone(), b_base.clone()],
            start.clone(),
            until_rx.clone(),
            seen_tx,
        )));
        progress.push(seen_rx);
    }

    // Writers on both instances. A's stops at its first unanswered request.
    let client = reqwest::Client::new();
    let writer_a = {
        let (client, base) = (client.clone(), a.base.clone());
        tokio::spawn(async move {
            let mut written = Vec::new();
            while let Some(cursor) = create_at(&client, &base, &format!("A{}", written.len())).await
            {
                written.push(cursor);
            }
            written
        })
    };
    let (stop_b, stop_rx) = watch::channel(false);
    let (count_tx, mut count_b) = watch::channel(0usize);
    let writer_b = {
        let (client, base) = (client.clone(), b_base.clone());
        tokio::spawn(async move {
            let mut written = Vec::new();
            while !*stop_rx.borrow() {
                let name = format!("B{}", written.len());
                written.push(create_at(&client, &base, &name).await.expect("B answers"));
                count_tx.send_replace(written.len());
            }
            written
        })
    };

    // Mid-stream: every subscriber of A is reading when A is killed.
    for seen in &mut progress {
        wait_seen(seen, 10, "a subscriber of A").await;
    }
    a.kill().await;
    let written_a = tokio::time::timeout(WAIT, writer_a)
        .await
        .expect("A's writer notices A is gone")
        .unwrap();
    // Writes go on on B; the last one commits after anything A may have committed (writes
    // are serialised), so its cursor is the final head.
    let after_kill = *count_b.borrow() + 10;
    tokio::time::timeout(
        Duration::from_secs(30),
        count_b.wait_for(|&n| n >= after_kill),
    )
    .await
    .expect("B keeps writing")
    .unwrap();
    stop_b.send_replace(true);
    let written_b = writer_b.await.unwrap();
    let head: i64 = written_b.last().unwrap().parse().unwrap();
    until_tx.send_replace(Some(head));

    let log = b.events_after(&start).await;
    assert_eq!(cursors(&log).last(), Some(&head));
    assert_strictly_increasing(&log);
    let logged: Vec<String> = log
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    for cursor in written_a.iter().chain(&written_b) {
        assert!(logged.contains(cursor), "write {cursor} is in the log");
    }
    // A write in flight when A died may have committed without its answer: at most one.
    assert!(log.len() <= written_a.len() + written_b.len() + 1);
    for follower in followers {
        let followed = tokio::time::timeout(FOLLOW, follower)
            .await
            .expect("the subscriber caught up on B")
            .unwrap();
        assert!(followed.reconnects >= 1, "the subscriber moved to B");
        assert_eq!(
            followed.events, log,
            "a subscriber of A, resumed on B, saw the whole log once"
        );
    }
    println!(
        "{} events ({} written on A before it died), {} on B",
        log.len(),
        written_a.len(),
        written_b.len()
    );
}

/// Waits until the instance answers `/health/ready` (the database is back).
async fn wait_ready(app: &TestApp) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let response = app.client.get(app.url("/health/ready")).send().await;
        if response.is_ok_and(|r| r.status() == StatusCode::OK) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} is not ready again",
            app.address
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_reconnect_after_a_postgres_restart() {
    if !postgres::available() {
        return;
    }
    // A cluster of its own: restarting the shared one would disturb the other tests.
    let cluster = tokio::task::spawn_blocking(Cluster::start)
        .await
        .unwrap()
        .map(Arc::new)
        .expect("PostgreSQL is installed");
    let database_url = cluster.create_database().await;
    let a = instance_on(&database_url).await;
    let b = instance_on(&database_url).await;
    let start = a.head().await;
    let (until_tx, until_rx) = watch::channel(None::<i64>);

    let mut followers = Vec::new();
    let mut progress = Vec::new();
    for (what, app) in [("A", &a), ("B", &b)] {
        let (seen_tx, seen_rx) = watch::channel(0);
        let sse = follow_sse(vec![app.url("")], start.clone(), until_rx.clone(), seen_tx);
        followers.push((format!("SSE on {what}"), tokio::spawn(sse)));
        progress.push(seen_rx);
        let (seen_tx, seen_rx) = watch::channel(0);
        let poll = follow_poll(app.url(""), start.clone(), until_rx.clone(), seen_tx);
        followers.push((format!("long-poll on {what}"), tokio::spawn(poll)));
        progress.push(seen_rx);
    }
    // Index of the SSE follower on B in `progress`.
    const SSE_ON_B: usize = 2;

    for i in 0..3 {
        a.create_funko(&format!("Before A{i}")).await;
        b.create_funko(&format!("Before B{i}")).await;
    }
    for seen in &mut progress {
        wait_seen(seen, 6, "a subscriber").await;
    }

    let restarted = Instant::now();
    {
        let cluster = cluster.clone();
        tokio::task::spawn_blocking(move || {
            cluster.stop();
            cluster.start_again();
        })
        .await
        .unwrap();
    }
    wait_ready(&a).await;
    wait_ready(&b).await;
    println!(
        "PostgreSQL restarted; instances ready in {:?}",
        restarted.elapsed()
    );

    // Writes work again on both, and reach everyone.
    b.create_funko("After B").await;
    a.create_funko("After A").await;
    for seen in &mut progress {
        wait_seen(seen, 8, "a subscriber, after the restart").await;
    }
    println!(
        "streams flowing again {:?} after the restart",
        restarted.elapsed()
    );

    // A's writes reach B's subscribers promptly: B's listener is back. (Without it only
    // the tailer's 5 s poll would find them.)
    let mut latencies = Vec::new();
    let mut last = String::new();
    for i in 0..5 {
        let response = a.post("/funkos", funko(&format!("Later A{i}"))).await;
        assert_eq!(response.status(), StatusCode::CREATED);
        last = stream_cursor(&response);
        let written = Instant::now();
        wait_seen(&mut progress[SSE_ON_B], 9 + i, "SSE on B").await;
        latencies.push(written.elapsed());
    }
    latencies.sort_unstable();
    println!("A to B latencies after the restart: {latencies:?}");
    assert!(
        latencies[2] < Duration::from_secs(1),
        "writes on A reach B by notification, not by the poll: {latencies:?}"
    );

    until_tx.send_replace(Some(last.parse().unwrap()));
    let log = a.events_after(&start).await;
    assert_eq!(log.len(), 13);
    assert_eq!(b.events_after(&start).await, log);
    assert_strictly_increasing(&log);
    for (what, follower) in followers {
        let followed = tokio::time::timeout(FOLLOW, follower)
            .await
            .unwrap_or_else(|_| panic!("{what} caught up"))
            .unwrap();
        println!("{what}: {} reconnects", followed.reconnects);
        assert_eq!(followed.events, log, "{what} saw the whole log once");
    }
}

/// A TCP proxy to PostgreSQL that a test can cut (every connection through it dropped, new
/// ones refused) and restore: an instance behind it is away from the database meanwhile.
struct Cuttable {
    address: std::net::SocketAddr,
    cut: watch::Sender<bool>,
}

impl Cuttable {
    async fn start(upstream: std::net::SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (cut, watching) = watch::channel(false);
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if *watching.borrow() {
                    continue;
                }
                let mut watching = watching.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = watching.wait_for(|cut| *cut) => {}
                    }
                });
            }
        });
        Self { address, cut }
    }

    /// `url` with its host and port replaced by the proxy's.
    fn url(&self, url: &str) -> String {
        let mut url = url::Url::parse(url).unwrap();
        url.set_port(Some(self.address.port())).unwrap();
        url.to_string()
    }
}

/// Writes in flight on an instance whose connections to PostgreSQL are cut, batched
/// together: each answers a 503 problem or its success, and once the database is back the
/// log holds every acknowledged write once and nothing that was not asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_cut_off_from_the_database_fail_cleanly_and_the_log_keeps_the_acknowledged() {
    if !postgres::available() {
        return;
    }
    const WRITERS: usize = 8;
    let a = spawn_app(Backend::Postgres).await;
    let upstream = url::Url::parse(&a.database_url).unwrap();
    let upstream = format!(
        "{}:{}",
        upstream.host_str().unwrap(),
        upstream.port().unwrap()
    );
    let proxy = Cuttable::start(upstream.parse().unwrap()).await;
    let b = Arc::new(instance_on(&proxy.url(&a.database_url)).await);
    let start = a.head().await;

    // Each writer creates Funkos until it has seen a write fail, then one succeed again.
    let (acked, mut acks) = watch::channel(0usize);
    let (failed, mut failures) = watch::channel(0usize);
    let (acked, failed) = (Arc::new(acked), Arc::new(failed));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (b, acked, failed) = (b.clone(), acked.clone(), failed.clone());
            tokio::spawn(async move {
                let (mut ok, mut refused, mut saw_failure) = (Vec::new(), Vec::new(), false);
                for n in 0.. {
                    let name = format!("Cut-{w}-{n}");
                    let response = b.post("/funkos", funko(&name)).await;
                    match response.status() {
                        StatusCode::CREATED => {
                            let cursor = stream_cursor(&response).parse::<i64>().unwrap();
                            ok.push((cursor, name));
                            acked.send_modify(|n| *n += 1);
                            if saw_failure {
                                break;
                            }
                        }
                        StatusCode::SERVICE_UNAVAILABLE => {
                            assert_problem(response, 503).await;
                            refused.push(name);
                            saw_failure = true;
                            failed.send_modify(|n| *n += 1);
                        }
                        status => panic!("{name} answered {status}: {:?}", response.text().await),
                    }
                }
                (ok, refused)
            })
        })
        .collect();
    let wait = |rx: &mut watch::Receiver<usize>, n: usize, what: &'static str| {
        let mut rx = rx.clone();
        async move {
            tokio::time::timeout(FOLLOW, rx.wait_for(|&seen| seen >= n))
                .await
                .unwrap_or_else(|_| panic!("{what}"))
                .unwrap();
        }
    };
    wait(&mut acks, 50, "writes through the proxy").await;
    proxy.cut.send_replace(true);
    wait(&mut failures, WRITERS, "writes failing while cut").await;
    proxy.cut.send_replace(false);
    let mut ok = Vec::new();
    let mut refused = std::collections::BTreeSet::new();
    for writer in join_all(writers).await {
        let (acked, failed) = writer.unwrap();
        ok.extend(acked);
        refused.extend(failed);
    }
    ok.sort_unstable();

    // Every acknowledged write is in the log once, with its cursor; any other event is a
    // write that answered 503 while its commit reached PostgreSQL (the answer was lost).
    let head = ok.last().unwrap().0.to_string();
    let log = b.events_through(&start, &head).await;
    assert_eq!(
        a.events_after(&start).await,
        log,
        "both instances read one log"
    );
    assert_strictly_increasing(&log);
    let acked: std::collections::BTreeMap<i64, &str> =
        ok.iter().map(|(c, name)| (*c, name.as_str())).collect();
    assert_eq!(acked.len(), ok.len(), "one cursor per acknowledged write");
    let mut found = 0;
    for event in &log {
        let cursor: i64 = event["id"].as_str().unwrap().parse().unwrap();
        let name = event["data"]["name"].as_str().unwrap();
        match acked.get(&cursor) {
            Some(expected) => {
                assert_eq!(*expected, name, "event {cursor}");
                found += 1;
            }
            None => assert!(refused.contains(name), "{name} was never acknowledged"),
        }
    }
    assert_eq!(found, ok.len(), "every acknowledged write is in the log");
}

/// An instance away from the database (its connections cut) while another writes past the
/// retention and prunes must not hand its live subscribers the survivors as if nothing were
/// missing: when it is back they get a reset, as any cursor older than the log would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_was_away_while_the_log_was_pruned_resets_its_subscribers() {
    if !postgres::available() {
        return;
    }
    let a = spawn_app(Backend::Postgres).await;
    let upstream = url::Url::parse(&a.database_url).unwrap();
    let upstream = format!(
        "{}:{}",
        upstream.host_str().unwrap(),
        upstream.port().unwrap()
    );
    let proxy = Cuttable::start(upstream.parse().unwrap()).await;
    let b = instance_on(&proxy.url(&a.database_url)).await;
    let mut sse = b.sse("/events", None).await;
    let (mut ws, _) = b.ws_welcomed("/ws").await;
    let before = a.create_funko("Before the cut").await;
    assert_eq!(sse.next_event().await["data"], before);
    assert_eq!(ws.next_event().await["data"], before);
    let seen = a.head().await;

    proxy.cut.send_replace(true);
    for i in 0..20 {
        a.create_funko(&format!("While away {i}")).await;
    }
    assert!(a.prune_all_but_newest().await >= 20);
    let survivor = a.head().await;
    proxy.cut.send_replace(false);

    // SSE: a reset, in the stream or on the reconnect its end asks for.
    let reset = loop {
        match sse
            .next_frame_within(FOLLOW)
            .await
            .expect("B tells its subscriber")
        {
            Some(frame) if frame.event.as_deref() == Some("reset") => break frame.json(),
            Some(frame) => assert!(!frame.is_event(), "an event without a reset: {frame:?}"),
            None => {
                let mut again = b.sse("/events", Some(&seen)).await;
                break loop {
                    let frame = again.next_frame().await.expect("a frame");
                    assert!(!frame.is_event(), "an event without a reset: {frame:?}");
                    if frame.event.as_deref() == Some("reset") {
                        break frame.json();
                    }
                };
            }
        }
    };
    assert_eq!(reset["reason"], "expired", "{reset}");
    assert!(
        reset["cursor"].as_str().unwrap() >= survivor.as_str(),
        "{reset}"
    );

    // WebSocket: a reset frame, or a close whose cursor gets one on reconnecting.
    let frame = loop {
        match ws
            .next_message_within(FOLLOW)
            .await
            .expect("B tells its socket")
        {
            Some(crate::helpers::WsMessage::Text(text)) => {
                break serde_json::from_str::<Value>(&text).unwrap();
            }
            Some(crate::helpers::WsMessage::Close(_)) | None => {
                let (mut again, _) = b.ws_welcomed(&format!("/ws?after={seen}")).await;
                break again.next_json().await;
            }
            Some(_) => {}
        }
    };
    assert_eq!(frame["op"], "reset", "{frame}");
    assert_eq!(frame["reason"], "expired", "{frame}");
}

/// The key of the transaction-level advisory lock every PostgreSQL write takes first
/// (`src/db/mod.rs`): taking it here stands for another instance's write that stalled while
/// holding it.
const WRITE_LOCK_KEY: i64 = 440056834927;

/// A write whose client gives up while it waits for the write lock must not leave its
/// transaction behind once the lock is free: that transaction would take the lock and hold
/// it, idle, stopping every instance's writes (found by the soak, `bench soak`).
#[tokio::test]
async fn a_write_abandoned_while_it_waits_for_the_lock_does_not_keep_it() {
    use sqlx::{Connection, Executor};

    if !postgres::available() {
        return;
    }
    let app = spawn_app(Backend::Postgres).await;
    let mut holder = sqlx::PgConnection::connect(&app.database_url)
        .await
        .expect("a connection of our own");
    holder
        .execute(sqlx::AssertSqlSafe(format!(
            "BEGIN; SELECT pg_advisory_xact_lock({WRITE_LOCK_KEY})"
        )))
        .await
        .expect("taking the write lock");
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    for i in 0..3 {
        let given_up = impatient
            .post(app.url("/funkos"))
            .json(&funko(&format!("abandoned-{i}")))
            .send()
            .await;
        assert!(
            given_up.is_err(),
            "a write went through the held lock: {given_up:?}"
        );
    }
    holder.execute("COMMIT").await.expect("freeing the lock");
    for i in 0..6 {
        let response = tokio::time::timeout(
            WAIT,
            app.client
                .post(app.url("/funkos"))
                .json(&funko(&format!("after-{i}")))
                .send(),
        )
        .await
        .unwrap_or_else(|_| panic!("write {i} after the lock was freed did not finish"))
        .expect("an answer");
        assert_eq!(response.status(), StatusCode::CREATED, "write {i}");
    }
}
