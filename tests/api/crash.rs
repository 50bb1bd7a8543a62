//! Crash safety (DESIGN §3 "The event"): `funko-live` in its own OS process, under a sustained
//! load of concurrent writers and an SSE subscriber, killed with SIGKILL mid-load and restarted
//! on the same database, twice. Then: every write a client saw acknowledged is there with
//! exactly one event; no event exists without its change (each Funko's events are one version
//! chain ending at its row); cursors continue from where they were; the subscriber, resuming
//! with `Last-Event-ID` after each restart, has received exactly the log. Writes in flight at
//! a kill may or may not have committed; either is fine as long as the log and the rows agree.
//!
//! [`ServerProcess`] (also used by `cluster.rs`), the writers and [`verify_store`] are shared
//! with `shutdown.rs`.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    process::{ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use funko_live::Config;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    sync::{mpsc, watch},
    task::JoinHandle,
};

use crate::helpers::{Backend, SseClient, TestApp, WAIT, cursors, spawn_on, stream_cursor};

/// Concurrent writers.
pub const WRITERS: usize = 4;
/// Acknowledged writes per round before the server is killed or stopped.
pub const WRITES_PER_ROUND: usize = 300;
/// How long a round's load may take to reach [`WRITES_PER_ROUND`].
pub const LOAD: Duration = Duration::from_secs(60);

/// `funko-live` in its own OS process, so it can be killed for real.
pub struct ServerProcess {
    child: tokio::process::Child,
    /// `http://IP:PORT`, from the `listening on` line it logs.
    pub base: String,
    /// Every line it wrote to stdout and stderr, for failure messages.
    output: Arc<Mutex<Vec<String>>>,
}

impl ServerProcess {
    /// Starts the binary on port 0 with `--database-url`, `--data-dir` and `extra` flags, and
    /// returns once it has logged the address it bound.
    pub async fn start(database_url: &str, dir: &Path, extra: &[&str]) -> Self {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_funko-live"))
            .args(["--bind", "127.0.0.1:0", "--database-url", database_url])
            .arg("--data-dir")
            .arg(dir)
            .args(extra)
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .env_remove("API_TOKENS")
            .env_remove("LOG_FORMAT")
            .env_remove("SHUTDOWN_GRACE_SECONDS")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("starting funko-live");
        // Both outputs are read to the end: a full pipe would block the server's logging.
        let (address_tx, mut address_rx) = mpsc::channel::<String>(2);
        let output = Arc::new(Mutex::new(Vec::<String>::new()));
        let readers: [Box<dyn tokio::io::AsyncRead + Unpin + Send>; 2] = [
            Box::new(child.stdout.take().expect("stdout")),
            Box::new(child.stderr.take().expect("stderr")),
        ];
        for reader in readers {
            let (address_tx, output) = (address_tx.clone(), output.clone());
            tokio::spawn(async move {
                let mut lines = BufReader::new(reader).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Some((_, rest)) = line.split_once("listening on http://") {
                        let address: String = rest
                            .chars()
                            .take_while(|c| c.is_ascii_digit() || matches!(c, '.' | ':'))
                            .collect();
                        let _ = address_tx.try_send(address);
                    }
                    output.lock().unwrap().push(line);
                }
            });
        }
        drop(address_tx);
        let address = tokio::time::timeout(Duration::from_secs(30), address_rx.recv())
            .await
            .ok()
            .flatten()
            .unwrap_or_else(|| {
                panic!(
                    "funko-live did not log its address; its output:\n{}",
                    output.lock().unwrap().join("\n")
                )
            });
        Self {
            child,
            base: format!("http://{address}"),
            output,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("the process is running")
    }

    /// SIGKILL (no shutdown, no goodbye to anyone), then reaps the process.
    pub async fn kill(&mut self) {
        self.child.start_kill().expect("SIGKILL");
        tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("a killed process ends")
            .expect("reaping the process");
    }

    /// Waits for the process to exit on its own; `None` after `within`.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        tokio::time::timeout(within, self.child.wait())
            .await
            .ok()
            .map(|status| status.expect("reaping the process"))
    }

    /// What it has logged so far.
    pub fn output(&self) -> String {
        self.output.lock().unwrap().join("\n")
    }
}

/// A write a writer sent: enough to find its effect in the log.
#[derive(Clone, Debug, PartialEq)]
pub enum Write {
    Create { name: String },
    Patch { id: i64, description: String },
    Delete { id: i64 },
}

impl Write {
    /// Whether `event` is this write's event.
    pub fn is_event_of(&self, event: &Value) -> bool {
        let data = &event["data"];
        event["entity"] == "FUNKOS"
            && match self {
                Self::Create { name } => event["type"] == "CREATE" && data["name"] == *name,
                Self::Patch { id, description } => {
                    event["type"] == "UPDATE"
                        && data["id"] == *id
                        && data["description"] == *description
                }
                Self::Delete { id } => event["type"] == "DELETE" && data["id"] == *id,
            }
    }
}

/// A write the server acknowledged (2xx) with the cursor of its event.
#[derive(Clone, Debug)]
pub struct Ack {
    pub write: Write,
    /// The Funko's id.
    pub id: i64,
    pub cursor: i64,
    /// The Funko the answer carried (none for a delete's 204).
    pub body: Option<Value>,
}

/// What one writer did: its acknowledged writes, and the write it ended on, unanswered
/// (the transport failed, or a 503 problem), with how.
#[derive(Debug, Default)]
pub struct WriterLog {
    pub acks: Vec<Ack>,
    pub unanswered: Option<(Write, String)>,
}

/// Starts [`WRITERS`] writers against `base`. Each creates, patches and (every third) deletes
/// its own Funkos, named `{tag}-{writer}-{n}`, until a write goes unanswered or `stop` is set.
/// `acked` counts the acknowledged writes of all of them.
pub fn spawn_writers(
    base: &str,
    tag: &str,
    acked: &watch::Sender<usize>,
    stop: &watch::Receiver<bool>,
) -> Vec<JoinHandle<WriterLog>> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    (0..WRITERS)
        .map(|w| {
            let writer = Writer {
                client: client.clone(),
                base: base.to_owned(),
                acked: acked.clone(),
                stop: stop.clone(),
                log: WriterLog::default(),
            };
            tokio::spawn(writer.run(format!("{tag}-{w}")))
        })
        .collect()
}

struct Writer {
    client: reqwest::Client,
    base: String,
    acked: watch::Sender<usize>,
    stop: watch::Receiver<bool>,
    log: WriterLog,
}

impl Writer {
    async fn run(mut self, tag: String) -> WriterLog {
        for n in 0.. {
            let name = format!("{tag}-{n}");
            let body = json!({"name": name, "price": 9.99, "stock": 5, "category": "DISNEY"});
            let request = self
                .client
                .post(format!("{}/funkos", self.base))
                .json(&body);
            let Some(id) = self
                .send(Write::Create { name: name.clone() }, request)
                .await
            else {
                break;
            };
            let description = format!("{name} patched");
            let request = self
                .client
                .patch(format!("{}/funkos/{id}", self.base))
                .json(&json!({"stock": n % 1000, "description": description}));
            if self
                .send(Write::Patch { id, description }, request)
                .await
                .is_none()
            {
                break;
            }
            if n % 3 == 0 {
                let request = self.client.delete(format!("{}/funkos/{id}", self.base));
                if self.send(Write::Delete { id }, request).await.is_none() {
                    break;
                }
            }
        }
        self.log
    }

    /// Sends one write; returns the Funko's id when it was acknowledged. Any answer but a 2xx
    /// or a 503 problem fails the test.
    async fn send(&mut self, write: Write, request: reqwest::RequestBuilder) -> Option<i64> {
        if *self.stop.borrow() {
            return None;
        }
        let response = match request.send().await {
            Ok(response) => response,
            Err(err) => {
                self.log.unanswered = Some((write, format!("{err:?}")));
                return None;
            }
        };
        let status = response.status();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(
                response.headers()["content-type"],
                "application/problem+json",
                "a 503 is a problem"
            );
            self.log.unanswered = Some((write, "503".to_owned()));
            return None;
        }
        let cursor = status
            .is_success()
            .then(|| response.headers().get("stream-cursor").cloned())
            .flatten();
        // Reading the body can fail too when the server goes away mid-answer.
        let text = match response.text().await {
            Ok(text) => text,
            Err(err) => {
                self.log.unanswered = Some((write, format!("reading the answer: {err:?}")));
                return None;
            }
        };
        assert!(status.is_success(), "{write:?} answered {status}: {text}");
        let cursor: i64 = cursor
            .expect("a write answers its Stream-Cursor")
            .to_str()
            .unwrap()
            .parse()
            .expect("a numeric cursor");
        let body: Option<Value> = (status != StatusCode::NO_CONTENT)
            .then(|| serde_json::from_str(&text).expect("a JSON answer"));
        let id = match (&write, &body) {
            (_, Some(body)) => body["id"].as_i64().expect("the Funko's id"),
            (Write::Delete { id }, None) => *id,
            (_, None) => panic!("{write:?} answered no body"),
        };
        self.log.acks.push(Ack {
            write,
            id,
            cursor,
            body,
        });
        self.acked.send_modify(|n| *n += 1);
        Some(id)
    }
}

/// Waits until `counter` reaches `n`; panics after `within`.
pub async fn wait_for_count(
    counter: &mut watch::Receiver<usize>,
    n: usize,
    within: Duration,
    what: &str,
) {
    let reached = tokio::time::timeout(within, counter.wait_for(|&seen| seen >= n))
        .await
        .map(|seen| seen.is_ok());
    assert!(
        reached == Ok(true),
        "{what}: fewer than {n} in {within:?} ({})",
        *counter.borrow()
    );
}

/// An SSE subscriber at `base` from `after` that records every event until its stream ends;
/// `seen` counts them.
pub fn spawn_sse_subscriber(
    base: &str,
    after: &str,
    seen: watch::Sender<usize>,
) -> JoinHandle<Vec<Value>> {
    let (url, after) = (format!("{base}/events"), after.to_owned());
    tokio::spawn(async move {
        let response = reqwest::Client::new()
            .get(url)
            .header("Last-Event-ID", after)
            .send()
            .await
            .expect("SSE request");
        assert_eq!(response.status(), StatusCode::OK, "SSE");
        let mut sse = SseClient::new(response);
        let mut events = Vec::new();
        loop {
            match sse.next_frame_within(Duration::from_secs(60)).await {
                Err(()) => panic!("the SSE stream stalled"),
                Ok(None) => return events,
                Ok(Some(frame)) if frame.is_event() => {
                    let event = frame.json();
                    assert_eq!(event["id"].as_str(), frame.id.as_deref());
                    events.push(event);
                    seen.send_modify(|n| *n += 1);
                }
                Ok(Some(_)) => {}
            }
        }
    })
}

/// Reads `app`'s SSE stream from `after` until it reaches `until`.
pub async fn resume_sse(app: &TestApp, after: &str, until: i64) -> Vec<Value> {
    let mut sse = app.sse("/events", Some(after)).await;
    let mut events = Vec::new();
    while cursors(&events).last().copied().unwrap_or(0) < until {
        events.push(sse.next_event().await);
    }
    events
}

/// Joins the writers; returns their logs.
pub async fn join_writers(writers: Vec<JoinHandle<WriterLog>>) -> Vec<WriterLog> {
    let mut logs = Vec::new();
    for writer in writers {
        logs.push(
            tokio::time::timeout(Duration::from_secs(60), writer)
                .await
                .expect("writers end")
                .expect("a writer failed"),
        );
    }
    logs
}

/// The head cursor at `base`, from a read's `Stream-Cursor`.
pub async fn head_at(base: &str) -> i64 {
    let response = reqwest::get(format!("{base}/funkos?limit=1"))
        .await
        .expect("a read");
    assert_eq!(response.status(), StatusCode::OK);
    stream_cursor(&response).parse().expect("numeric cursor")
}

/// Checks the store after `start` against what the writers saw, and returns the log:
/// - cursors strictly increase;
/// - every acknowledged write has exactly one event, with its cursor, its type and its answer;
/// - every other event is the effect of an unanswered write, if `unanswered_may_commit`
///   (a kill), and of none at all otherwise (a graceful stop refuses cleanly);
/// - each Funko's events are one chain of versions 1, 2, 3... starting with its `CREATE`,
///   and the last one equals its row (`GET ?includeDeleted=true`); every row has its chain.
pub async fn verify_store(
    app: &TestApp,
    start: &str,
    writers: &[WriterLog],
    unanswered_may_commit: bool,
) -> Vec<Value> {
    let log = app.events_after(start).await;
    let ids = cursors(&log);
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "cursors strictly increase: {ids:?}"
    );
    let by_cursor: BTreeMap<i64, &Value> = ids.iter().copied().zip(&log).collect();

    let acks: Vec<&Ack> = writers.iter().flat_map(|w| &w.acks).collect();
    let acked: BTreeSet<i64> = acks.iter().map(|a| a.cursor).collect();
    assert_eq!(acked.len(), acks.len(), "two writes answered one cursor");
    for ack in &acks {
        let event = by_cursor
            .get(&ack.cursor)
            .unwrap_or_else(|| panic!("acknowledged {ack:?} is missing from the log"));
        assert!(ack.write.is_event_of(event), "{ack:?} has event {event}");
        assert_eq!(event["data"]["id"], ack.id);
        if let Some(body) = &ack.body {
            assert_eq!(
                &event["data"], body,
                "the event carries what the write answered"
            );
        }
    }

    let unanswered: Vec<&(Write, String)> = writers
        .iter()
        .filter_map(|w| w.unanswered.as_ref())
        .collect();
    for event in log.iter().filter(|e| !acked.contains(&cursor_of(e))) {
        let of: Vec<_> = unanswered
            .iter()
            .filter(|(write, _)| write.is_event_of(event))
            .collect();
        assert!(
            unanswered_may_commit && of.len() == 1,
            "an event no acknowledged write explains: {event}\nunanswered writes: {unanswered:?}"
        );
    }

    // One version chain per Funko, ending at its row.
    let mut chains: BTreeMap<i64, Vec<&Value>> = BTreeMap::new();
    for event in &log {
        assert_eq!(event["entity"], "FUNKOS", "only Funkos were written");
        chains
            .entry(event["data"]["id"].as_i64().unwrap())
            .or_default()
            .push(event);
    }
    for (id, chain) in &chains {
        let versions: Vec<i64> = chain
            .iter()
            .map(|e| e["data"]["version"].as_i64().unwrap())
            .collect();
        assert_eq!(
            versions,
            (1..=chain.len() as i64).collect::<Vec<_>>(),
            "Funko {id}: one event per change"
        );
        assert_eq!(
            chain[0]["type"], "CREATE",
            "Funko {id} begins with its CREATE"
        );
        let response = app.get(&format!("/funkos/{id}?includeDeleted=true")).await;
        assert_eq!(response.status(), StatusCode::OK, "Funko {id} has its row");
        let row: Value = response.json().await.unwrap();
        assert_eq!(
            chain.last().unwrap()["data"],
            row,
            "Funko {id}: last event = row"
        );
    }
    let snapshot = app.snapshot().await;
    let rows: BTreeSet<i64> = snapshot["funkos"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["id"].as_i64().unwrap())
        .collect();
    assert_eq!(
        rows,
        chains.keys().copied().collect(),
        "every row has its events"
    );
    log
}

fn cursor_of(event: &Value) -> i64 {
    event["id"].as_str().unwrap().parse().unwrap()
}

/// One round of load on a server process: writers and (resuming after `subscriber_from`) an
/// SSE subscriber, killed once both are well under way. Returns the writers' logs and the
/// events the subscriber received.
async fn load_then_kill(
    server: &mut ServerProcess,
    round: usize,
    subscriber_from: &str,
) -> (Vec<WriterLog>, Vec<Value>) {
    let (seen_tx, mut seen) = watch::channel(0);
    let subscriber = spawn_sse_subscriber(&server.base, subscriber_from, seen_tx);
    let (acked_tx, mut acked) = watch::channel(0);
    let (_stop, stop) = watch::channel(false);
    let writers = spawn_writers(&server.base, &format!("R{round}"), &acked_tx, &stop);
    wait_for_count(&mut acked, WRITES_PER_ROUND, LOAD, "acknowledged writes").await;
    wait_for_count(&mut seen, WRITES_PER_ROUND / 2, LOAD, "events received").await;
    server.kill().await;
    let writers = join_writers(writers).await;
    assert!(
        writers.iter().all(|w| w.unanswered.is_some()),
        "every writer was cut off mid-load"
    );
    let received = tokio::time::timeout(WAIT, subscriber)
        .await
        .expect("the subscriber's stream ends with the process")
        .unwrap();
    (writers, received)
}

async fn sigkill_under_write_load_loses_nothing_acknowledged(backend: Backend) {
    let dir = tempfile::tempdir().expect("temp dir");
    let database_url = backend.fresh_database(dir.path()).await;
    let started = Instant::now();

    let mut server = ServerProcess::start(&database_url, dir.path(), &[]).await;
    let start = head_at(&server.base).await.to_string();
    let mut writers: Vec<WriterLog> = Vec::new();
    let mut received: Vec<Value> = Vec::new();
    let mut heads = Vec::new();
    for round in 0..2 {
        if round > 0 {
            server = ServerProcess::start(&database_url, dir.path(), &[]).await;
            // Cursors continue: the restarted server's head is past everything acknowledged
            // or delivered before the kill.
            let head = head_at(&server.base).await;
            let before = writers.iter().flat_map(|w| &w.acks).map(|a| a.cursor);
            let delivered = cursors(&received);
            assert!(
                before.chain(delivered).all(|cursor| cursor <= head),
                "the head after a restart ({head}) is behind what clients saw"
            );
            heads.push((writers.len(), head));
        }
        let from = received
            .last()
            .map_or(start.clone(), |e| e["id"].as_str().unwrap().to_owned());
        let (round_writers, round_received) = load_then_kill(&mut server, round, &from).await;
        println!(
            "round {round}: {} acknowledged writes, {} events to the subscriber, killed with \
             {} writes in flight",
            round_writers.iter().map(|w| w.acks.len()).sum::<usize>(),
            round_received.len(),
            round_writers
                .iter()
                .filter(|w| w.unanswered.is_some())
                .count()
        );
        writers.extend(round_writers);
        received.extend(round_received);
    }
    // The writes after a restart come after every event before it.
    for (from, head) in heads {
        let after = writers[from..].iter().flat_map(|w| &w.acks);
        assert!(
            after.map(|a| a.cursor).all(|cursor| cursor > head),
            "a write after a restart got a cursor at or before the head then ({head})"
        );
    }

    // The last restart, in this process, to check the store.
    let mut config = Config::defaults();
    config.bind = "127.0.0.1:0".parse().unwrap();
    config.data_dir = dir.path().to_owned();
    config.database_url = Some(database_url.clone());
    let app = spawn_on(backend, config, database_url, dir).await;
    let log = verify_store(&app, &start, &writers, true).await;
    let committed_unanswered = log.len() - writers.iter().map(|w| w.acks.len()).sum::<usize>();
    println!(
        "{} events; {committed_unanswered} of the writes in flight at a kill had committed",
        log.len()
    );

    // A write after the restart continues the cursors...
    let last = cursors(&log).last().copied().unwrap();
    let response = app
        .post(
            "/funkos",
            json!({"name": "After the crash", "price": 1, "stock": 1, "category": "OTROS"}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let after: i64 = stream_cursor(&response).parse().unwrap();
    assert!(
        after > last,
        "cursor {after} after the restart, {last} before"
    );

    // ...and the subscriber, resuming once more, has received exactly the log.
    let from = received
        .last()
        .map_or(start.clone(), |e| e["id"].as_str().unwrap().to_owned());
    received.extend(resume_sse(&app, &from, after).await);
    let everything = app.events_after(&start).await;
    assert_eq!(everything.len(), log.len() + 1);
    assert_eq!(
        cursors(&received),
        cursors(&everything),
        "the subscriber's events, resumed twice by cursor"
    );
    assert_eq!(received, everything);
    println!("crash test on {backend:?} in {:.1?}", started.elapsed());
}

crate::backend_tests!(sigkill_under_write_load_loses_nothing_acknowledged);

/// The size of a SQLite app's database file, read afresh at each call (0 before it exists).
fn database_file_size(app: &TestApp) -> impl Fn() -> u64 + use<> {
    let file = app
        .database_url
        .strip_prefix("sqlite://")
        .and_then(|rest| rest.split('?').next())
        .map(std::path::PathBuf::from)
        .expect("a SQLite file URL");
    move || std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0)
}

/// Waits until the database file has grown past `before` bytes: a checkpoint copied the WAL
/// into it. `what` says which checkpoint, for the failure.
async fn wait_until_checkpointed(size: &impl Fn() -> u64, before: u64, what: &str) {
    let deadline = Instant::now() + WAIT;
    while size() <= before {
        assert!(
            Instant::now() < deadline,
            "the database file stayed at {before} bytes: {what} was not checkpointed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// SQLite: the WAL is copied into the database file while the server runs (aside from the
/// writes, which have automatic checkpoints off), not only when the last connection closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_checkpoints_the_wal_while_serving() {
    let app = crate::helpers::spawn_app(Backend::Sqlite).await;
    let size = database_file_size(&app);
    let before = size();
    for i in 0..300 {
        app.create_funko(&format!("Checkpointed {i}")).await;
    }
    wait_until_checkpointed(&size, before, "the WAL").await;
}

/// SQLite: a trickle of writes is checkpointed once it pauses, not after every write (the
/// first commit after a checkpoint syncs the WAL's header, a fsync inside that commit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_checkpoints_a_trickle_of_writes_once_it_pauses() {
    let app = crate::helpers::spawn_app(Backend::Sqlite).await;
    let size = database_file_size(&app);
    let before = size();
    app.create_funko("Trickle").await;
    // The checkpoint waits for a second without writes: none can land in the first 600 ms,
    // however slow the machine (a slow one only delays it).
    let quiet_until = Instant::now() + Duration::from_millis(600);
    while Instant::now() < quiet_until {
        assert_eq!(size(), before, "checkpointed right after one write");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_until_checkpointed(&size, before, "the pause").await;
}
