//! Graceful shutdown under load (DESIGN §4): with writers, an SSE subscriber, a held
//! long-poll and a long-poll follower active, the server is stopped, in this process
//! ([`TestApp`]'s shutdown signal) and as its own process with SIGTERM. Then: every write
//! either completed (2xx, and in the log) or was cleanly refused (the connection was refused
//! or closed before the request was taken, or a 503 problem) and changed nothing; never a 5xx;
//! every stream ended promptly (SSE at EOF, the held poll answered); the server was gone well
//! within its grace period, a process with exit status 0.

use std::time::{Duration, Instant};

use funko_live::Config;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::watch,
    task::JoinHandle,
};

use crate::{
    crash::{
        Ack, LOAD, ServerProcess, WRITES_PER_ROUND, Write, WriterLog, head_at, join_writers,
        spawn_sse_subscriber, spawn_writers, verify_store, wait_for_count,
    },
    helpers::{Backend, TestApp, WAIT, spawn_app_with, spawn_on},
};

/// `--shutdown-grace-seconds` in these tests.
const GRACE: Duration = Duration::from_secs(5);
/// How soon after the signal every stream must have ended: well inside the grace period, so
/// a stream that only ended because the grace period ran out fails the test.
const PROMPTLY: Duration = Duration::from_secs(3);

/// A `POST /funkos` the server has begun handling (it asked for the body with
/// `100 Continue`) and that gets its body only after the shutdown signal: an in-flight write
/// for certain, which must complete.
struct HeldWrite {
    stream: TcpStream,
    body: String,
    name: String,
}

impl HeldWrite {
    async fn begin(base: &str) -> Self {
        let address = base.strip_prefix("http://").expect("an http:// base");
        let mut stream = TcpStream::connect(address).await.expect("connecting");
        let name = "Held through the shutdown".to_owned();
        let body = json!({"name": name, "price": 5, "stock": 1, "category": "SERIE"}).to_string();
        let head = format!(
            "POST /funkos HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nExpect: 100-continue\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        while !answer.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8];
            let read = tokio::time::timeout(WAIT, stream.read(&mut byte))
                .await
                .expect("100 Continue in time")
                .unwrap();
            assert_eq!(read, 1, "the server closed the held write");
            answer.push(byte[0]);
        }
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 100"), "{answer}");
        Self { stream, body, name }
    }

    /// Sends the body; returns the write as a writer would have logged it.
    async fn finish(mut self) -> WriterLog {
        self.stream.write_all(self.body.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(WAIT, self.stream.read_to_end(&mut answer))
            .await
            .expect("the held write is answered, and the connection closed")
            .unwrap();
        let answer = String::from_utf8_lossy(&answer);
        let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
        assert!(head.starts_with("HTTP/1.1 201"), "the held write: {answer}");
        let cursor = head
            .lines()
            .find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("stream-cursor")
                    .then(|| value.trim().parse::<i64>().expect("a numeric cursor"))
            })
            .expect("a Stream-Cursor");
        let body: Value = serde_json::from_str(body).expect("the created Funko");
        WriterLog {
            acks: vec![Ack {
                write: Write::Create { name: self.name },
                id: body["id"].as_i64().unwrap(),
                cursor,
                body: Some(body),
            }],
            unanswered: None,
        }
    }
}

/// The clients of one load: what each saw and when it ended.
struct Load {
    writers: Vec<JoinHandle<WriterLog>>,
    stop_writers: watch::Sender<bool>,
    /// Set when the shutdown begins: the follower stops after its next empty answer.
    stopping: watch::Sender<bool>,
    sse: JoinHandle<(Vec<Value>, Instant)>,
    /// What the SSE subscriber received, and when its stream ended.
    sse_ended: Option<(Vec<Value>, Instant)>,
    held_poll: JoinHandle<(Value, Instant)>,
    follower: JoinHandle<(Vec<Value>, Instant)>,
}

/// Starts the load at `base`, from cursor `start`, and returns once it is well under way,
/// with a write held in flight.
async fn start_load(base: &str, start: &str, tag: &str) -> (Load, HeldWrite) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(90))
        .build()
        .unwrap();

    // A poll no write matches (writers only touch Funkos): held until the shutdown.
    let held_poll = {
        let request = client.get(format!("{base}/events/poll?entity=CATEGORIES&timeout=60"));
        tokio::spawn(async move {
            let response = request.send().await.expect("the held poll is answered");
            assert_eq!(response.status(), StatusCode::OK, "the held poll");
            let body: Value = response.json().await.expect("a JSON answer");
            (body, Instant::now())
        })
    };

    let (seen_tx, mut seen) = watch::channel(0);
    let sse = spawn_sse_subscriber(base, start, seen_tx);
    let sse = tokio::spawn(async move {
        let events = sse.await.expect("the SSE subscriber");
        (events, Instant::now())
    });

    let (stopping, stopping_rx) = watch::channel(false);
    let follower = tokio::spawn(follow_polls(
        client.clone(),
        base.to_owned(),
        start.to_owned(),
        stopping_rx,
    ));

    let (acked_tx, mut acked) = watch::channel(0);
    let (stop_writers, stop_rx) = watch::channel(false);
    let writers = spawn_writers(base, tag, &acked_tx, &stop_rx);
    wait_for_count(&mut acked, WRITES_PER_ROUND, LOAD, "acknowledged writes").await;
    wait_for_count(&mut seen, WRITES_PER_ROUND / 2, LOAD, "SSE events").await;
    assert!(!held_poll.is_finished(), "the poll is held");
    let held_write = HeldWrite::begin(base).await;
    let load = Load {
        writers,
        stop_writers,
        stopping,
        sse,
        sse_ended: None,
        held_poll,
        follower,
    };
    (load, held_write)
}

impl Load {
    /// Waits until the shutdown is under way (the SSE stream has ended), then sends the held
    /// write's body and reads its answer.
    async fn through_shutdown(&mut self, held: HeldWrite) -> WriterLog {
        let ended = tokio::time::timeout(PROMPTLY, &mut self.sse)
            .await
            .expect("the SSE stream ended")
            .unwrap();
        self.sse_ended = Some(ended);
        held.finish().await
    }
}

/// Long-polls from `after` again and again, as a client behind a buffering proxy would, until
/// the server stops answering, or answers with nothing once the shutdown has begun.
async fn follow_polls(
    client: reqwest::Client,
    base: String,
    mut after: String,
    stopping: watch::Receiver<bool>,
) -> (Vec<Value>, Instant) {
    let mut events = Vec::new();
    loop {
        let response = client
            .get(format!("{base}/events/poll?after={after}&timeout=30"))
            .send()
            .await;
        let Ok(response) = response else {
            return (events, Instant::now());
        };
        assert_eq!(response.status(), StatusCode::OK, "a poll");
        let page: Value = response.json().await.expect("a JSON answer");
        assert!(
            page.get("reset").is_none(),
            "unexpected reset after {after} (stopping: {}, {} events so far): {page}",
            *stopping.borrow(),
            events.len()
        );
        let batch = page["events"].as_array().expect("events").clone();
        after = page["cursor"].as_str().expect("cursor").to_owned();
        if batch.is_empty() && *stopping.borrow() {
            return (events, Instant::now());
        }
        events.extend(batch);
    }
}

/// After the shutdown began at `signalled`: the writers ended (each on a clean refusal, or
/// still acknowledged), the streams ended promptly, and the store agrees with all of it.
async fn check_after_stop(
    load: Load,
    held_write: WriterLog,
    signalled: Instant,
    app: &TestApp,
    start: &str,
) {
    load.stop_writers.send_replace(true);
    let mut writers = join_writers(load.writers).await;
    writers.push(held_write);
    for writer in &writers {
        if let Some((write, how)) = &writer.unanswered {
            println!("refused at shutdown: {write:?}: {how}");
        }
    }

    let (received, sse_ended) = load.sse_ended.expect("through_shutdown ran");
    let (held, held_answered) = tokio::time::timeout(PROMPTLY, load.held_poll)
        .await
        .expect("the held poll was answered")
        .unwrap();
    let (followed, follower_ended) = tokio::time::timeout(PROMPTLY, load.follower)
        .await
        .expect("the poll follower ended")
        .unwrap();
    for (what, ended) in [
        ("the SSE stream", sse_ended),
        ("the held poll", held_answered),
        ("the poll follower", follower_ended),
    ] {
        let after = ended.saturating_duration_since(signalled);
        println!("{what} ended {after:.1?} after the signal");
        assert!(after < PROMPTLY, "{what} took {after:?}");
    }
    assert_eq!(held["events"], serde_json::json!([]), "{held}");
    assert!(held["cursor"].is_string(), "{held}");

    // Refused writes changed nothing; every acknowledged one is there, once.
    let log = verify_store(app, start, &writers, false).await;
    assert!(!log.is_empty());
    for (what, events) in [("SSE", &received), ("long-poll", &followed)] {
        assert!(events.len() <= log.len());
        assert_eq!(
            events[..],
            log[..events.len()],
            "{what}: a prefix of the log, nothing lost or doubled"
        );
    }
}

async fn stop_under_load_finishes_writes_and_ends_streams(backend: Backend) {
    let app = spawn_app_with(backend, |config| {
        config.shutdown_grace_seconds = GRACE.as_secs();
    })
    .await;
    let start = app.head().await;
    let (mut load, held_write) = start_load(&app.url(""), &start, "stop").await;

    load.stopping.send_replace(true);
    let signalled = Instant::now();
    // The shutdown signal and the server's end, then a new server on the same database to
    // look at what the first one left.
    let restart = tokio::spawn(app.restart());
    // The first server waits for the held write: its body comes once the shutdown is
    // under way.
    let held = load.through_shutdown(held_write).await;
    let app = tokio::time::timeout(GRACE.saturating_sub(signalled.elapsed()), restart)
        .await
        .expect("the server stops (and another starts) within the grace period")
        .unwrap();
    println!("stopped and restarted in {:.1?}", signalled.elapsed());
    check_after_stop(load, held, signalled, &app, &start).await;
}

async fn sigterm_under_load_exits_cleanly_within_the_grace_period(backend: Backend) {
    let dir = tempfile::tempdir().expect("temp dir");
    let database_url = backend.fresh_database(dir.path()).await;
    let grace = GRACE.as_secs().to_string();
    let mut server = ServerProcess::start(
        &database_url,
        dir.path(),
        &["--shutdown-grace-seconds", &grace],
    )
    .await;
    let start = head_at(&server.base).await.to_string();
    let (mut load, held_write) = start_load(&server.base, &start, "term").await;

    load.stopping.send_replace(true);
    let signalled = Instant::now();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &server.pid().to_string()])
        .status()
        .expect("running kill");
    assert!(kill.success(), "kill -TERM");
    // The server waits for the held write: its body comes once the shutdown is under way.
    let held = load.through_shutdown(held_write).await;
    let left = GRACE.saturating_sub(signalled.elapsed());
    let status = server.wait_exit(left).await.unwrap_or_else(|| {
        panic!(
            "funko-live still runs {GRACE:?} after SIGTERM; its output:\n{}",
            server.output()
        )
    });
    let exited = signalled.elapsed();
    println!("exited {exited:.1?} after SIGTERM with {status}");
    assert!(
        status.success(),
        "exit status {status}; output:\n{}",
        server.output()
    );

    let mut config = Config::defaults();
    config.bind = "127.0.0.1:0".parse().unwrap();
    config.data_dir = dir.path().to_owned();
    config.database_url = Some(database_url.clone());
    let app = spawn_on(backend, config, database_url, dir).await;
    check_after_stop(load, held, signalled, &app, &start).await;
}

crate::backend_tests!(
    stop_under_load_finishes_writes_and_ends_streams,
    sigterm_under_load_exits_cleanly_within_the_grace_period,
);
