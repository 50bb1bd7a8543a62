//! `bench soak`: several funko-live instances on one private PostgreSQL, each in its own
//! network namespace; writers on every instance and subscribers on every transport spread
//! over them; faults injected at random for a set time; then a final write every subscriber
//! must reach, and the checker ([`check`]) over the whole log and every client's record.
//! Writes `RELIABILITY.md` (or `--report`) and fails when the checker finds a problem.

mod check;
mod clients;
mod net;
mod proxy;
mod report;

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tokio::{process::Child, sync::watch};

use self::{
    check::{Evidence, Filter, LogEvent, View},
    clients::{Rng, Shared, Sub, Transport, now_ms},
    net::{INSTANCE_PORT, Net},
};
use crate::pg::{self, Pg};

/// What the soak runs.
#[derive(Clone, Debug)]
pub struct Options {
    pub server_bin: PathBuf,
    pub duration: Duration,
    pub instances: usize,
    /// Writes per second of each writer (one writer per instance).
    pub write_rate: f64,
    /// Subscribers per transport.
    pub per_transport: usize,
    /// Events the log keeps: pruning runs every second beyond it.
    pub retention_events: u64,
    /// Mean seconds between two faults of each kind of lane.
    pub fault_every: f64,
    pub seed: u64,
    /// The kinds of fault to inject (by [`Fault::key`]); empty: all.
    pub faults: Vec<String>,
    /// Where the figures go.
    pub report: PathBuf,
    /// The command line the figures came from, for the report.
    pub command: String,
}

/// The kinds of fault, as the report names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Fault {
    Kill,
    Pause,
    PostgresRestart,
    ClientBlackhole,
    PostgresBlackhole,
    BandwidthCap,
    PostgresLatency,
    PostgresCut,
}

impl Fault {
    /// The name `--faults` takes.
    pub fn key(self) -> &'static str {
        match self {
            Self::Kill => "kill",
            Self::Pause => "pause",
            Self::PostgresRestart => "pg-restart",
            Self::ClientBlackhole => "client-blackhole",
            Self::PostgresBlackhole => "pg-blackhole",
            Self::BandwidthCap => "bandwidth",
            Self::PostgresLatency => "pg-latency",
            Self::PostgresCut => "pg-cut",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Kill => "SIGKILL of an instance, then its restart",
            Self::Pause => "SIGSTOP of an instance, SIGCONT later",
            Self::PostgresRestart => "PostgreSQL crash (immediate stop) and restart",
            Self::ClientBlackhole => "blackhole between clients and an instance (nftables)",
            Self::PostgresBlackhole => "blackhole between an instance and PostgreSQL (nftables)",
            Self::BandwidthCap => "bandwidth cap of 64 kbit/s on an instance's link (tc tbf)",
            Self::PostgresLatency => {
                "300 ms added to every chunk each way between an instance and PostgreSQL (proxy)"
            }
            Self::PostgresCut => "every connection between an instance and PostgreSQL cut (proxy)",
        }
    }
}

/// A fault as it happened.
#[derive(Clone, Debug)]
pub struct FaultRecord {
    pub fault: Fault,
    pub held_ms: f64,
}

/// One funko-live process in its namespace.
struct Instance {
    index: usize,
    ns: String,
    addr: SocketAddr,
    child: Option<Child>,
    paused: bool,
    dir: tempfile::TempDir,
    starts: u32,
}

struct Cluster {
    pg: Mutex<Pg>,
    db: String,
    net: Net,
    proxies: Vec<proxy::Proxy>,
    url: Vec<String>,
    server_bin: PathBuf,
    retention_events: u64,
    instances: Vec<tokio::sync::Mutex<Instance>>,
}

impl Cluster {
    async fn start_instance(&self, inst: &mut Instance) -> anyhow::Result<()> {
        inst.starts += 1;
        let log = inst.dir.path().join(format!("server-{}.log", inst.starts));
        let out = std::fs::File::create(&log)?;
        let mut cmd = tokio::process::Command::new("ip");
        cmd.args(["netns", "exec", &inst.ns])
            .arg(&self.server_bin)
            .arg("--bind")
            .arg(inst.addr.to_string())
            .arg("--database-url")
            .arg(&self.url[inst.index])
            .arg("--data-dir")
            .arg(inst.dir.path().join("data"))
            .arg("--api-tokens")
            .arg(clients::TOKEN)
            .arg("--retention-events")
            .arg(self.retention_events.to_string())
            .arg("--prune-interval-seconds")
            .arg("1")
            .arg("--keepalive-seconds")
            .arg("2")
            .env("RUST_LOG", "warn,funko_live=info")
            .env("NO_COLOR", "1")
            .env_remove("DATABASE_URL")
            .env_remove("API_TOKENS")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .kill_on_drop(true);
        let mut child = cmd.spawn().context("starting an instance")?;
        // `ip netns exec` execs the server, so the child's pid is the server's own.
        let name = format!("instance {}", inst.index);
        crate::servers::listening(&mut child, &log, &name).await?;
        inst.child = Some(child);
        inst.paused = false;
        Ok(())
    }

    fn signal(inst: &Instance, signal: rustix::process::Signal) {
        if let Some(pid) = inst
            .child
            .as_ref()
            .and_then(Child::id)
            .and_then(|p| rustix::process::Pid::from_raw(p as i32))
        {
            let _ = rustix::process::kill_process(pid, signal);
        }
    }

    async fn stop_all(&self) {
        for inst in &self.instances {
            let mut inst = inst.lock().await;
            Self::signal(&inst, rustix::process::Signal::CONT);
            if let Some(mut child) = inst.child.take() {
                let _ = child.start_kill();
                let _ = child.wait().await;
            }
        }
    }

    async fn query(&self, sql: String) -> anyhow::Result<String> {
        // psql blocks: a short one, so the runtime's other worker carries the clients.
        tokio::task::block_in_place(|| self.pg.lock().expect("pg").query(&self.db, &sql))
    }
}

/// The SQL that keeps every event ever appended, and when each was pruned, beside the
/// server's tables: triggers in the transactions that append and prune.
const ARCHIVE_SQL: &str = "
CREATE TABLE soak_log (id BIGINT PRIMARY KEY, entity TEXT, type TEXT, data TEXT,
                       at_ms DOUBLE PRECISION);
CREATE TABLE soak_pruned (id BIGINT PRIMARY KEY, at_ms DOUBLE PRECISION);
CREATE FUNCTION soak_appended() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
  INSERT INTO soak_log VALUES (NEW.id, NEW.entity, NEW.type, NEW.data,
                               extract(epoch FROM clock_timestamp()) * 1000);
  RETURN NULL; END $$;
CREATE FUNCTION soak_pruned() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
  INSERT INTO soak_pruned VALUES (OLD.id, extract(epoch FROM clock_timestamp()) * 1000);
  RETURN NULL; END $$;
CREATE TRIGGER soak_appended AFTER INSERT ON events FOR EACH ROW EXECUTE FUNCTION soak_appended();
CREATE TRIGGER soak_pruned AFTER DELETE ON events FOR EACH ROW EXECUTE FUNCTION soak_pruned();
";

pub fn run(opts: Options) -> anyhow::Result<()> {
    if let Some(why) = net::unavailable() {
        bail!("the soak cannot run here: {why}");
    }
    let bin = pg::binaries().context("PostgreSQL is not installed")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // The instances' data directories, removed by the namespaces' watchdog too.
    let scratch = tempfile::Builder::new().prefix("funko-soak-").tempdir()?;
    let net = Net::create(opts.instances, scratch.path())?;
    let pg = Pg::start_with(bin, None, &pg::Setup { durable: true })?;
    let url = pg.database()?;
    let db = url.rsplit('/').next().unwrap_or_default().to_owned();
    // Each instance reaches PostgreSQL through its own proxy on its link's harness end.
    let upstream = SocketAddr::from(([127, 0, 0, 1], pg.port));
    let proxies = rt.block_on(async {
        let mut v = Vec::new();
        for l in &net.links {
            v.push(proxy::Proxy::start(SocketAddr::new(l.host_ip.into(), 0), upstream).await?);
        }
        anyhow::Ok(v)
    })?;
    let urls = proxies
        .iter()
        .map(|p| format!("postgres://postgres@{}/{db}", p.addr))
        .collect();
    let instances = net
        .links
        .iter()
        .enumerate()
        .map(|(index, l)| {
            Ok(tokio::sync::Mutex::new(Instance {
                index,
                ns: l.ns.clone(),
                addr: SocketAddr::new(l.ns_ip.into(), INSTANCE_PORT),
                child: None,
                paused: false,
                dir: tempfile::Builder::new()
                    .prefix("instance-")
                    .tempdir_in(scratch.path())?,
                starts: 0,
            }))
        })
        .collect::<anyhow::Result<_>>()?;
    let cluster = Arc::new(Cluster {
        pg: Mutex::new(pg),
        db,
        net,
        proxies,
        url: urls,
        server_bin: opts.server_bin.clone(),
        retention_events: opts.retention_events,
        instances,
    });
    let outcome = rt.block_on(soak(cluster.clone(), &opts));
    rt.block_on(cluster.stop_all());
    drop(rt);
    // The namespaces go with `cluster.net`, PostgreSQL with `cluster.pg`.
    drop(cluster);
    let (verdict, figures) = outcome?;
    eprintln!("wrote {}", opts.report.display());
    if !verdict.ok() {
        bail!("the soak found problems:\n{}", verdict.problems.join("\n"));
    }
    eprintln!("{figures}");
    eprintln!("soak: ok");
    Ok(())
}

async fn soak(cluster: Arc<Cluster>, opts: &Options) -> anyhow::Result<(check::Verdict, String)> {
    let started_ms = now_ms();
    // The first instance creates the schema; the archive goes on it before anyone writes.
    {
        let mut first = cluster.instances[0].lock().await;
        cluster.start_instance(&mut first).await?;
    }
    cluster.query(ARCHIVE_SQL.to_owned()).await?;
    for inst in &cluster.instances[1..] {
        let mut inst = inst.lock().await;
        cluster.start_instance(&mut inst).await?;
    }
    let addrs: Vec<SocketAddr> = {
        let mut v = Vec::new();
        for inst in &cluster.instances {
            v.push(inst.lock().await.addr);
        }
        v
    };
    let mut own_names = HashSet::new();
    let mut conn = None;
    for name in clients::CATEGORIES {
        let body = json!({"name": name}).to_string();
        let res = clients::request(&mut conn, addrs[0], "POST", "/categories", Some(&body))
            .await
            .context("creating a category")?;
        // 409: the schema's seed has it already.
        if res.status != 201 && res.status != 409 {
            bail!("creating category {name} answered {}", res.status);
        }
    }
    let seeded = read_rows(addrs[0]).await?;
    let res = clients::request(&mut conn, addrs[0], "GET", "/funkos", None)
        .await
        .context("reading the start cursor")?;
    let start: i64 = res
        .stream_cursor
        .as_deref()
        .and_then(|c| c.parse().ok())
        .context("no Stream-Cursor")?;

    // Subscribers: each transport with every filter it takes, round-robin.
    let (stop_subs_tx, stop_subs) = watch::channel(false);
    let (restless_tx, restless) = watch::channel(true);
    let shared = Shared {
        addrs: Arc::new(addrs.clone()),
        silence: Duration::from_secs(6),
        stop: stop_subs,
        // Long enough for the log to move past retention at the writers' rate.
        away: (opts.retention_events as f64 / (opts.write_rate * opts.instances as f64) * 3.0)
            .clamp(10.0, 60.0),
        restless,
    };
    let views = [
        Filter::All,
        Filter::View(View {
            category: Some("Marvel".into()),
            ..View::default()
        }),
        Filter::View(View {
            q: Some("blue".into()),
            ..View::default()
        }),
        Filter::View(View {
            min_cents: Some(1000),
            max_cents: Some(2000),
            ..View::default()
        }),
        Filter::Entity("FUNKOS".into()),
        Filter::Types("FUNKOS".into(), vec!["CREATE".into(), "DELETE".into()]),
    ];
    let mut subs = Vec::new();
    let mut tasks = Vec::new();
    for transport in Transport::ALL {
        // Socket.IO has no `types`; its namespaces stand for `entity`.
        let filters: Vec<&Filter> = views
            .iter()
            .filter(|f| transport != Transport::SocketIo || !matches!(f, Filter::Types(..)))
            .collect();
        for i in 0..opts.per_transport {
            let filter = filters[i % filters.len()].clone();
            let name = format!("{}-{i}", transport.name());
            let sub = Sub::new(name, transport, filter, start);
            subs.push(sub.clone());
            let seed = opts.seed ^ ((subs.len() as u64) << 20);
            tasks.push(tokio::spawn(clients::subscriber(
                sub,
                transport,
                shared.clone(),
                seed,
            )));
        }
    }

    // Writers, one per instance.
    let (stop_writers_tx, stop_writers) = watch::channel(false);
    let writes = Arc::new(Mutex::new(Vec::new()));
    let mut writers = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        writers.push(tokio::spawn(clients::writer(
            i,
            *addr,
            opts.write_rate,
            stop_writers.clone(),
            writes.clone(),
        )));
    }

    // Faults, in two lanes that overlap: processes (instances, PostgreSQL) and the network.
    let faults = Arc::new(Mutex::new(Vec::new()));
    let until = tokio::time::Instant::now() + opts.duration;
    let lanes = [
        vec![Fault::Kill, Fault::Pause, Fault::PostgresRestart],
        vec![
            Fault::ClientBlackhole,
            Fault::PostgresBlackhole,
            Fault::BandwidthCap,
            Fault::PostgresLatency,
            Fault::PostgresCut,
        ],
    ];
    let mut lane_tasks = Vec::new();
    let wanted = |f: &Fault| opts.faults.is_empty() || opts.faults.iter().any(|k| k == f.key());
    for (n, kinds) in lanes.into_iter().enumerate() {
        let kinds: Vec<Fault> = kinds.into_iter().filter(wanted).collect();
        if kinds.is_empty() {
            continue;
        }
        let cluster = cluster.clone();
        let faults = faults.clone();
        let every = opts.fault_every;
        let seed = opts.seed + n as u64 * 7919;
        lane_tasks.push(tokio::spawn(async move {
            fault_lane(cluster, kinds, every, until, seed, faults).await
        }));
    }
    let mut lane_errors = Vec::new();
    for t in lane_tasks {
        if let Err(e) = t.await? {
            lane_errors.push(format!("{e:#}"));
        }
    }
    tokio::time::sleep_until(until).await;
    // Every instance up and reachable again before the end.
    for inst in &cluster.instances {
        let mut inst = inst.lock().await;
        if inst.paused {
            Cluster::signal(&inst, rustix::process::Signal::CONT);
            inst.paused = false;
        }
        let alive = inst
            .child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)));
        if !alive {
            lane_errors.push(format!("instance {} had died by itself", inst.index));
            cluster.start_instance(&mut inst).await?;
        }
    }
    let _ = restless_tx.send(false);
    let _ = stop_writers_tx.send(true);
    for w in writers {
        w.await?;
    }
    let writes_done_ms = now_ms();

    // The fence: a Funko every filter sees, written when nothing else is.
    let fence_name = "fence blue".to_owned();
    own_names.insert(fence_name.clone());
    let body = json!({"name": fence_name, "description": "the last write", "price": 15,
                      "stock": 1, "category": "Marvel"})
    .to_string();
    let mut fenced = false;
    let fence_started = now_ms();
    for _ in 0..20 {
        let mut conn = None;
        match clients::request(&mut conn, addrs[0], "POST", "/funkos", Some(&body)).await {
            Some(res) if res.status == 201 || res.status == 409 => {
                fenced = true;
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
    if !fenced {
        let activity = cluster
            .query(
                "SELECT pid, client_addr, state, now() - xact_start, wait_event_type, wait_event, \
                 left(query, 100) FROM pg_stat_activity WHERE datname = current_database()"
                    .into(),
            )
            .await
            .unwrap_or_else(|e| e.to_string());
        let mut logs = String::new();
        for inst in &cluster.instances {
            let inst = inst.lock().await;
            let log = inst.dir.path().join(format!("server-{}.log", inst.starts));
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            logs.push_str(&format!("\n-- instance {}:\n", inst.index));
            for l in tail.into_iter().rev() {
                logs.push_str(l);
                logs.push('\n');
            }
        }
        bail!("the final write did not succeed; PostgreSQL sessions:\n{activity}{logs}");
    }
    let fence_ms = now_ms() - fence_started;
    // By name: a write that timed out on a paused instance may still commit after it.
    let raw = cluster
        .query(format!(
            "SELECT min(id) FROM soak_log WHERE entity = 'FUNKOS' \
             AND data::json->>'name' = '{fence_name}'"
        ))
        .await?;
    let fence: i64 = raw
        .trim()
        .parse()
        .with_context(|| format!("reading the final write's id from {raw:?}"))?;
    eprintln!("soak: final write {fence}; waiting for the subscribers");
    // Subscribers catch up, or are stopped after a minute.
    let caught_up = tokio::time::timeout(Duration::from_secs(60), async {
        while subs
            .iter()
            .any(|s| s.cursor.load(std::sync::atomic::Ordering::Relaxed) < fence)
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .is_ok();
    eprintln!(
        "soak: {} after {:.1} s",
        if caught_up {
            "caught up"
        } else {
            "NOT caught up"
        },
        (now_ms() - writes_done_ms) / 1000.0
    );
    let _ = stop_subs_tx.send(true);
    for t in tasks {
        t.await?;
    }
    let ended_ms = now_ms();

    // The evidence: the rows through the API, then the log with no instance left to prune.
    let rows = read_rows(addrs[0]).await?;
    cluster.stop_all().await;
    let log = read_log(&cluster).await?;
    let pruned: HashMap<i64, f64> = cluster
        .query("SELECT id || ' ' || at_ms FROM soak_pruned".into())
        .await?
        .lines()
        .filter_map(|l| {
            let (id, at) = l.split_once(' ')?;
            Some((id.parse().ok()?, at.parse().ok()?))
        })
        .collect();
    let remaining: Vec<i64> = cluster
        .query("SELECT id FROM events ORDER BY id".into())
        .await?
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    let writes = writes.lock().expect("writes").clone();
    let records: Vec<_> = subs
        .iter()
        .map(|s| s.record.lock().expect("record").clone())
        .collect();
    let verdict = check::check(&Evidence {
        log: &log,
        pruned: &pruned,
        remaining: &remaining,
        rows: &rows,
        seeded: &seeded,
        writes: &writes,
        subs: &records,
        fence,
        own_names: &own_names,
    });
    let faults = faults.lock().expect("faults").clone();
    let mut notes = lane_errors;
    // With every fault over, a write takes well under a second: a long wait is a stall.
    if fence_ms > 15_000.0 {
        notes.push(format!(
            "the final write, with every fault over, took {:.1} s",
            fence_ms / 1000.0
        ));
    }
    if !caught_up {
        notes.push("some subscribers had not caught up a minute after the last write".into());
    }
    let run = report::Run {
        command: opts.command.clone(),
        instances: opts.instances,
        seconds: (writes_done_ms - started_ms) / 1000.0,
        total_seconds: (ended_ms - started_ms) / 1000.0,
        retention_events: opts.retention_events,
        write_rate: opts.write_rate * opts.instances as f64,
        fence_ms,
        faults,
        notes,
    };
    let text = report::markdown(&run, &verdict);
    std::fs::write(&opts.report, &text)
        .with_context(|| format!("writing {}", opts.report.display()))?;
    if !run.notes.is_empty() && verdict.ok() {
        bail!("the soak did not run as planned:\n{}", run.notes.join("\n"));
    }
    let summary = report::summary(&verdict);
    Ok((verdict, summary))
}

async fn read_log(cluster: &Cluster) -> anyhow::Result<Vec<LogEvent>> {
    let text = cluster
        .query(
            "SELECT json_build_object('id', id, 'entity', entity, 'type', type, \
             'data', data::json, 'at', at_ms) FROM soak_log ORDER BY id"
                .into(),
        )
        .await?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let v: Value = serde_json::from_str(line).context("a log row")?;
            Ok(LogEvent {
                id: v["id"].as_i64().context("an id")?,
                entity: v["entity"].as_str().unwrap_or_default().to_owned(),
                kind: v["type"].as_str().unwrap_or_default().to_owned(),
                data: v["data"].clone(),
                at_ms: v["at"].as_f64().unwrap_or_default(),
            })
        })
        .collect()
}

/// Every Funko and category as the API answers them, deleted ones included.
async fn read_rows(addr: SocketAddr) -> anyhow::Result<HashMap<(String, i64), Value>> {
    let mut rows = HashMap::new();
    let mut conn = None;
    let mut page = 1;
    loop {
        let path = format!("/funkos?includeDeleted=true&limit=100&page={page}&sort=id");
        let res = clients::request(&mut conn, addr, "GET", &path, None)
            .await
            .context("listing Funkos")?;
        let body: Value = serde_json::from_slice(&res.body)?;
        let data = body["data"].as_array().context("a list without data")?;
        for f in data {
            rows.insert(
                ("FUNKOS".to_owned(), f["id"].as_i64().unwrap_or(-1)),
                f.clone(),
            );
        }
        if page >= body["meta"]["totalPages"].as_i64().unwrap_or(0) {
            break;
        }
        page += 1;
    }
    let res = clients::request(
        &mut conn,
        addr,
        "GET",
        "/categories?includeDeleted=true",
        None,
    )
    .await
    .context("listing categories")?;
    let body: Value = serde_json::from_slice(&res.body)?;
    for c in body.as_array().context("categories are not a list")? {
        rows.insert(
            ("CATEGORIES".to_owned(), c["id"].as_i64().unwrap_or(-1)),
            c.clone(),
        );
    }
    Ok(rows)
}

/// Injects faults of `kinds` one after another until `until`, each held for a few seconds,
/// on a random instance, and records them.
async fn fault_lane(
    cluster: Arc<Cluster>,
    kinds: Vec<Fault>,
    every: f64,
    until: tokio::time::Instant,
    seed: u64,
    out: Arc<Mutex<Vec<FaultRecord>>>,
) -> anyhow::Result<()> {
    let mut rng = Rng::new(seed);
    let mut deck: Vec<Fault> = Vec::new();
    loop {
        let wait = rng.secs(every * 0.5, every * 1.5);
        if tokio::time::Instant::now() + wait + Duration::from_secs(8) > until {
            return Ok(());
        }
        tokio::time::sleep(wait).await;
        // Each kind once per round, in a random order: a short run still sees them all.
        if deck.is_empty() {
            deck = kinds.clone();
            for k in (1..deck.len()).rev() {
                deck.swap(k, rng.below(k as u64 + 1) as usize);
            }
        }
        let fault = deck.pop().expect("refilled");
        let i = rng.below(cluster.instances.len() as u64) as usize;
        let hold = rng.secs(2.0, 7.0);
        let begun = now_ms();
        let instance = match fault {
            Fault::Kill => {
                let mut inst = cluster.instances[i].lock().await;
                if let Some(mut child) = inst.child.take() {
                    child.start_kill()?;
                    child.wait().await?;
                }
                tokio::time::sleep(hold / 3).await;
                cluster.start_instance(&mut inst).await?;
                Some(i)
            }
            Fault::Pause => {
                let mut inst = cluster.instances[i].lock().await;
                Cluster::signal(&inst, rustix::process::Signal::STOP);
                inst.paused = true;
                tokio::time::sleep(hold).await;
                Cluster::signal(&inst, rustix::process::Signal::CONT);
                inst.paused = false;
                Some(i)
            }
            Fault::PostgresRestart => {
                tokio::task::block_in_place(|| cluster.pg.lock().expect("pg").crash())?;
                tokio::time::sleep(hold / 3).await;
                tokio::task::block_in_place(|| cluster.pg.lock().expect("pg").restart())?;
                None
            }
            Fault::PostgresLatency => {
                cluster.proxies[i].set_delay(300);
                tokio::time::sleep(hold).await;
                cluster.proxies[i].set_delay(0);
                Some(i)
            }
            Fault::PostgresCut => {
                cluster.proxies[i].cut();
                Some(i)
            }
            Fault::ClientBlackhole | Fault::PostgresBlackhole | Fault::BandwidthCap => {
                let link = &cluster.net.links[i];
                match fault {
                    Fault::ClientBlackhole => link.blackhole_clients()?,
                    Fault::PostgresBlackhole => {
                        link.blackhole_postgres(cluster.proxies[i].addr.port())?;
                    }
                    _ => link.cap(64)?,
                }
                tokio::time::sleep(hold).await;
                if fault == Fault::BandwidthCap {
                    link.uncap()?;
                } else {
                    link.heal()?;
                }
                Some(i)
            }
        };
        let held_ms = now_ms() - begun;
        eprintln!(
            "fault: {} on {} for {:.1} s",
            fault.name(),
            instance.map_or("PostgreSQL".to_owned(), |i| format!("instance {i}")),
            held_ms / 1000.0
        );
        out.lock()
            .expect("faults")
            .push(FaultRecord { fault, held_ms });
    }
}

/// The report's default place: beside BENCHMARKS.md.
pub fn default_report(root: &Path) -> PathBuf {
    root.join("RELIABILITY.md")
}
