//! The scenarios, driven from the harness process: start a fresh server, spawn generator
//! worker processes (pinned to core 1), collect their reports, record figures per run.

use std::{
    cell::Cell,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    process::Stdio,
    time::Duration,
};

use anyhow::{Context, bail};
use serde::de::DeserializeOwned;
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines},
    process::{Child, ChildStdin, ChildStdout},
};

use crate::{
    http::Conn,
    report::{Curve, Results},
    servers::{Kind, Launch, Server},
    worker::{
        CrudOp, CrudReport, CrudTask, PublishReport, PublishTask, Ready, SubscribeReport,
        SubscribeTask, Task, Transport,
    },
};

/// One process holds at most this many generator connections (the limit is 20,000 files).
const PER_WORKER: usize = 9_000;
/// Subscribers per client address: funko-live caps streams per client IP (1,000 by default),
/// as a real crowd comes from many addresses.
const PER_SRC: usize = 500;

/// How long a subscriber worker may live, in seconds, for a stream of `run_s` seconds: two
/// minutes to connect, then the stream, then a minute to drain.
fn subscriber_budget_s(run_s: f64) -> f64 {
    120.0 + run_s + 60.0
}

/// The transport name of the view fan-out's figures (SSE with view filters).
pub const VIEW_TRANSPORT: &str = "sse_view";

/// The tag of the fan-out's writes: their names are `fan-…`.
const FANOUT_TAG: &str = "fan";

/// The view fan-out's filters, a third of the subscribers each: one per kind of filter, each
/// chosen so that every Funko the fan-out writes (see [`crate::worker::funko_body`]) is in
/// every view. Each subscriber then gets every event, tagged `enter`, as many deliveries as
/// the plain stream's.
pub fn view_filters() -> Vec<String> {
    use crate::worker::{FUNKO_CATEGORY, FUNKO_PRICE};
    const MAX_PRICE: f64 = 20.0;
    const _: () = assert!(FUNKO_PRICE <= MAX_PRICE);
    vec![
        format!("category={FUNKO_CATEGORY}"),
        format!("maxPrice={MAX_PRICE}"),
        format!("q={FANOUT_TAG}"),
    ]
}

/// How big each scenario is.
#[derive(Clone, Debug)]
pub struct Plan {
    pub runs: usize,
    pub crud_connections: usize,
    pub crud_warmup_s: f64,
    pub crud_duration_s: f64,
    pub crud_seed: u64,
    pub fanout_ns: Vec<usize>,
    pub fanout_events: u64,
    pub fanout_rate: f64,
    /// SSE fan-out sizes measured again with view subscribers (see [`view_filters`]), each
    /// right after the plain SSE point of the same N.
    pub view_ns: Vec<usize>,
    pub poll_n: usize,
    pub ws_ns: Vec<usize>,
    /// Socket.IO (WebSocket transport) fan-out sizes.
    pub sio_ns: Vec<usize>,
    pub throughput_n: usize,
    pub throughput_s: f64,
    pub throughput_concurrency: usize,
    pub conn_steps: Vec<usize>,
    /// Idle WebSocket connections held, in one step, after the SSE ramp.
    pub conn_ws: usize,
    pub replay_k: u64,
    pub slow_m: usize,
    pub slow_readers: usize,
    pub slow_rate: f64,
    pub slow_baseline_s: f64,
    pub slow_s: f64,
    /// Socket counts of the kernel floor: the SSE fan-out's latency targets' N (at most
    /// ~9,000 connections to one process under a 20,000-file limit).
    pub floor_ns: Vec<usize>,
    /// Instance counts on one PostgreSQL, and the SSE subscribers of their fan-out.
    pub cluster_ks: Vec<usize>,
    pub cluster_n: usize,
    /// The fan-out's transports to measure, by name; `None`: all.
    pub transports: Option<Vec<String>>,
}

impl Plan {
    pub fn full() -> Self {
        Self {
            runs: 3,
            crud_connections: 32,
            crud_warmup_s: 1.0,
            crud_duration_s: 3.0,
            crud_seed: 200,
            fanout_ns: vec![100, 1_000, 5_000, 10_000],
            fanout_events: 40,
            fanout_rate: 10.0,
            view_ns: vec![1_000],
            poll_n: 1_000,
            ws_ns: vec![1_000, 5_000],
            sio_ns: vec![1_000, 5_000],
            throughput_n: 1_000,
            throughput_s: 5.0,
            throughput_concurrency: 8,
            conn_steps: vec![1_000, 5_000, 10_000, 19_000],
            conn_ws: 5_000,
            replay_k: 100_000,
            slow_m: 1_000,
            slow_readers: 100,
            slow_rate: 1_000.0,
            slow_baseline_s: 5.0,
            slow_s: 30.0,
            floor_ns: vec![1_000, 9_000],
            cluster_ks: vec![1, 2, 4],
            cluster_n: 1_000,
            transports: None,
        }
    }

    pub fn smoke() -> Self {
        Self {
            runs: 1,
            crud_connections: 4,
            crud_warmup_s: 0.2,
            crud_duration_s: 0.5,
            crud_seed: 20,
            fanout_ns: vec![5],
            fanout_events: 5,
            fanout_rate: 20.0,
            view_ns: vec![5],
            poll_n: 5,
            ws_ns: vec![5],
            sio_ns: vec![5],
            throughput_n: 5,
            throughput_s: 1.0,
            throughput_concurrency: 2,
            conn_steps: vec![20, 50],
            conn_ws: 20,
            replay_k: 300,
            slow_m: 5,
            slow_readers: 5,
            slow_rate: 50.0,
            slow_baseline_s: 1.0,
            slow_s: 2.0,
            floor_ns: vec![20],
            cluster_ks: vec![1, 2],
            cluster_n: 5,
            transports: None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    Crud,
    Fanout,
    Connections,
    Replay,
    Slow,
    Floor,
    Cluster,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Self::Crud => "crud",
            Self::Fanout => "fanout",
            Self::Connections => "connections",
            Self::Replay => "replay",
            Self::Slow => "slow",
            Self::Floor => "floor",
            Self::Cluster => "cluster",
        }
    }
}

pub struct Ctx {
    pub launch: Launch,
    pub plan: Plan,
    pub self_exe: PathBuf,
    pub kinds: Vec<Kind>,
    pub results: Results,
    /// Problems a smoke run fails on.
    pub failures: Vec<String>,
    /// The private PostgreSQL of the instance scenario, started on first use.
    pg: Option<crate::pg::Pg>,
    src: Cell<u32>,
    tag: Cell<u64>,
    run_id: String,
}

/// A generator worker process.
pub struct WorkerProc {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl WorkerProc {
    async fn line(&mut self, prefix: &str, timeout: Duration) -> anyhow::Result<String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let line = tokio::time::timeout_at(deadline, self.lines.next_line())
                .await
                .with_context(|| format!("no {prefix} from a worker within {timeout:?}"))??
                .with_context(|| format!("a worker exited before {prefix}"))?;
            if let Some(rest) = line.strip_prefix(prefix) {
                return Ok(rest.trim().to_owned());
            }
        }
    }

    pub async fn ready(&mut self, timeout: Duration) -> anyhow::Result<Ready> {
        Ok(serde_json::from_str(&self.line("READY", timeout).await?)?)
    }

    pub async fn stop(&mut self) {
        let _ = self.stdin.write_all(b"stop\n").await;
        let _ = self.stdin.flush().await;
    }

    /// Waits for the result; past `timeout` tells the worker to stop and waits 15 s more.
    pub async fn result<T: DeserializeOwned>(&mut self, timeout: Duration) -> anyhow::Result<T> {
        let text = match self.line("RESULT", timeout).await {
            Ok(text) => text,
            Err(_) => {
                self.stop().await;
                self.line("RESULT", Duration::from_secs(15)).await?
            }
        };
        let value = serde_json::from_str(&text)?;
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
        Ok(value)
    }
}

impl Ctx {
    pub fn new(launch: Launch, plan: Plan, kinds: Vec<Kind>) -> anyhow::Result<Self> {
        Ok(Self {
            launch,
            plan,
            self_exe: std::env::current_exe()?,
            kinds,
            results: Results::default(),
            failures: Vec::new(),
            pg: None,
            src: Cell::new(0),
            tag: Cell::new(0),
            run_id: format!("{:x}", crate::clock::now_ns() % 0xffff_ffff),
        })
    }

    /// A fresh loopback source address (127.1.0.1 onwards, never reused in one harness run),
    /// so no connection runs short of ephemeral ports or meets an earlier TIME_WAIT socket.
    fn next_src(&self) -> IpAddr {
        let n = self.src.get() % 60_000;
        self.src.set(n + 1);
        IpAddr::V4(Ipv4Addr::new(127, 1, (n / 250) as u8, (1 + n % 250) as u8))
    }

    fn next_tag(&self, what: &str) -> String {
        self.tag.set(self.tag.get() + 1);
        format!("{what}-{}-{}", self.run_id, self.tag.get())
    }

    pub async fn spawn(&self, task: &Task) -> anyhow::Result<WorkerProc> {
        let mut cmd = self.launch.command(1, &self.self_exe);
        cmd.arg("worker")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut child = cmd.spawn().context("spawning a worker")?;
        let mut stdin = child.stdin.take().context("worker stdin")?;
        let stdout = child.stdout.take().context("worker stdout")?;
        let mut line = serde_json::to_string(task)?;
        line.push('\n');
        stdin.write_all(line.as_bytes()).await?;
        stdin.flush().await?;
        Ok(WorkerProc {
            child,
            stdin,
            lines: BufReader::new(stdout).lines(),
        })
    }

    fn fail(&mut self, what: String) {
        eprintln!("  !! {what}");
        self.failures.push(what);
    }

    pub async fn run(&mut self, scenario: Scenario) -> anyhow::Result<()> {
        eprintln!(
            "== {} (load average {})",
            scenario.name(),
            crate::report::loadavg()
        );
        if scenario == Scenario::Floor {
            let core = self.launch.pin.then_some(0);
            let (rounds, rate) = (self.plan.fanout_events as usize, self.plan.fanout_rate);
            for run in 1..=self.plan.runs {
                for n in self.plan.floor_ns.clone() {
                    match self.floor(n, rounds, rate, core).await {
                        Ok((write_us, latency)) => {
                            let p99 = latency.quantile_ms(0.99);
                            eprintln!(
                                "   floor run {run}, {n} sockets: {write_us:.2} µs per write, p99 {p99:.2} ms"
                            );
                            self.record_all(
                                "floor",
                                crate::report::KERNEL,
                                "tcp",
                                n,
                                [("write_us", "µs", write_us), ("p99", "ms", p99)],
                            );
                        }
                        Err(e) => self.fail(format!("floor at {n}: {e:#}")),
                    }
                }
            }
            return Ok(());
        }
        if scenario == Scenario::Cluster {
            if !self.start_pg()? {
                return Ok(());
            }
            for run in 1..=self.plan.runs {
                for k in self.plan.cluster_ks.clone() {
                    eprintln!("-- cluster run {run}/{} with {k} instances", self.plan.runs);
                    if let Err(e) = self.cluster(k).await {
                        self.fail(format!("cluster of {k} run {run}: {e:#}"));
                    }
                }
            }
            return Ok(());
        }
        if scenario == Scenario::Replay {
            for kind in self.kinds.clone() {
                if let Err(e) = self.replay(kind).await {
                    self.fail(format!("replay on {}: {e:#}", kind.name()));
                }
            }
            return Ok(());
        }
        for run in 1..=self.plan.runs {
            for kind in self.kinds.clone() {
                eprintln!(
                    "-- {} run {run}/{} on {}",
                    scenario.name(),
                    self.plan.runs,
                    kind.name()
                );
                // A failed scenario is reported and the run goes on with the next one.
                let outcome = match scenario {
                    Scenario::Crud => self.crud(kind).await,
                    Scenario::Fanout => self.fanout(kind).await,
                    Scenario::Connections => self.connections(kind, run).await,
                    Scenario::Slow => self.slow(kind, run).await,
                    Scenario::Replay | Scenario::Floor | Scenario::Cluster => unreachable!(),
                };
                if let Err(e) = outcome {
                    self.fail(format!(
                        "{} run {run} on {}: {e:#}",
                        scenario.name(),
                        kind.name()
                    ));
                }
            }
        }
        Ok(())
    }

    /// Several figures of one scenario, server, transport and N: (metric, unit, value).
    fn record_all<const K: usize>(
        &mut self,
        scenario: &str,
        server: &str,
        transport: &str,
        n: usize,
        figures: [(&str, &str, f64); K],
    ) {
        for (metric, unit, value) in figures {
            self.results
                .add(scenario, server, transport, n, metric, unit, value);
        }
    }

    #[allow(clippy::too_many_arguments, reason = "one argument per CSV column")]
    fn record(
        &mut self,
        scenario: &str,
        kind: Kind,
        transport: &str,
        n: usize,
        metric: &str,
        unit: &str,
        value: f64,
    ) {
        self.results
            .add(scenario, kind.name(), transport, n, metric, unit, value);
    }

    // ---------------------------------------------------------------- crud

    async fn crud(&mut self, kind: Kind) -> anyhow::Result<()> {
        let server = Server::start(&self.launch, kind).await?;
        let seeded = self
            .publish(server.addr, self.plan.crud_seed, 0.0, 8, 0.0, "seed")
            .await?;
        if seeded.ok != self.plan.crud_seed {
            bail!(
                "seeding {} Funkos on {} failed: {:?}",
                self.plan.crud_seed,
                kind.name(),
                seeded.first_error
            );
        }
        let ids: Vec<i64> = (1..=self.plan.crud_seed as i64).collect();
        for op in [CrudOp::GetById, CrudOp::List, CrudOp::Post, CrudOp::Patch] {
            let task = Task::Crud(CrudTask {
                addr: server.addr,
                src: self.next_src(),
                op,
                connections: self.plan.crud_connections,
                warmup_s: self.plan.crud_warmup_s,
                duration_s: self.plan.crud_duration_s,
                ids: ids.clone(),
                tag: self.next_tag("crud"),
            });
            let cpu0 = server.cpu_seconds();
            let mut w = self.spawn(&task).await?;
            let budget = self.plan.crud_warmup_s + self.plan.crud_duration_s + 60.0;
            let r: CrudReport = w.result(Duration::from_secs_f64(budget)).await?;
            let cpu_us = (server.cpu_seconds() - cpu0) * 1e6 / r.all_requests.max(1) as f64;
            let rps = r.requests as f64 / r.elapsed_s;
            // The generator's CPU over warm-up + measurement, as a share of its one core.
            let gen_busy = r.cpu_s / (self.plan.crud_warmup_s + self.plan.crud_duration_s) * 100.0;
            eprintln!(
                "   {:<10} {:>9.0} req/s  p50 {:>7.2} ms  p99 {:>7.2} ms  generator CPU {:>3.0} %  errors {}{}",
                op.name(),
                rps,
                r.latency.quantile_ms(0.5),
                r.latency.quantile_ms(0.99),
                gen_busy,
                r.errors,
                r.first_error
                    .as_deref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            );
            if r.errors > 0 || r.requests == 0 {
                self.fail(format!(
                    "crud {} on {}: {} errors, {} requests: {:?}",
                    op.name(),
                    kind.name(),
                    r.errors,
                    r.requests,
                    r.first_error
                ));
            }
            self.record(
                "crud",
                kind,
                op.name(),
                self.plan.crud_connections,
                "requests_per_s",
                "req/s",
                rps,
            );
            self.record(
                "crud",
                kind,
                op.name(),
                self.plan.crud_connections,
                "p50",
                "ms",
                r.latency.quantile_ms(0.5),
            );
            self.record(
                "crud",
                kind,
                op.name(),
                self.plan.crud_connections,
                "p99",
                "ms",
                r.latency.quantile_ms(0.99),
            );
            self.record(
                "crud",
                kind,
                op.name(),
                self.plan.crud_connections,
                "errors",
                "count",
                r.errors as f64,
            );
            self.record(
                "crud",
                kind,
                op.name(),
                self.plan.crud_connections,
                "generator_cpu",
                "%",
                gen_busy,
            );
            self.record(
                "crud",
                kind,
                op.name(),
                self.plan.crud_connections,
                "cpu_per_request",
                "µs",
                cpu_us,
            );
        }
        server.stop().await;
        Ok(())
    }

    /// POSTs `count` Funkos (publish-to-deliver stamps in their descriptions).
    async fn publish(
        &self,
        server: SocketAddr,
        count: u64,
        rate: f64,
        concurrency: usize,
        duration_s: f64,
        what: &str,
    ) -> anyhow::Result<PublishReport> {
        let expected = if rate > 0.0 {
            count as f64 / rate
        } else {
            count as f64 / 500.0
        };
        let budget = if duration_s > 0.0 {
            duration_s
        } else {
            expected
        } + 120.0;
        let task = Task::Publish(PublishTask {
            addr: server,
            src: self.next_src(),
            count,
            rate,
            concurrency,
            duration_s,
            deadline_s: budget,
            tag: self.next_tag(what),
        });
        let mut w = self.spawn(&task).await?;
        w.result(Duration::from_secs_f64(budget + 10.0)).await
    }

    // ---------------------------------------------------------------- subscribers

    /// Opens `n` subscribers over as many workers as needed and waits until all are connected.
    #[allow(clippy::too_many_arguments, reason = "the subscriber task's settings")]
    async fn subscribers(
        &self,
        addr: SocketAddr,
        transport: Transport,
        n: usize,
        expect: u64,
        read: bool,
        after: Option<String>,
        deadline_s: f64,
    ) -> anyhow::Result<(Vec<WorkerProc>, Ready)> {
        self.subscribers_viewing(addr, transport, n, expect, read, after, deadline_s, &[])
            .await
    }

    /// [`Self::subscribers`] with view filters (SSE; see [`SubscribeTask::views`]).
    #[allow(clippy::too_many_arguments, reason = "the subscriber task's settings")]
    async fn subscribers_viewing(
        &self,
        addr: SocketAddr,
        transport: Transport,
        n: usize,
        expect: u64,
        read: bool,
        after: Option<String>,
        deadline_s: f64,
        views: &[String],
    ) -> anyhow::Result<(Vec<WorkerProc>, Ready)> {
        let mut workers = Vec::new();
        let mut left = n;
        while left > 0 {
            let count = left.min(PER_WORKER);
            left -= count;
            let task = Task::Subscribe(SubscribeTask {
                transport,
                addr,
                count,
                srcs: (0..count.div_ceil(PER_SRC))
                    .map(|_| self.next_src())
                    .collect(),
                per_src: PER_SRC,
                expect,
                read,
                after: after.clone(),
                deadline_s,
                connect_concurrency: 128,
                views: views.to_vec(),
            });
            workers.push(self.spawn(&task).await?);
        }
        let mut ready = Ready::default();
        for w in &mut workers {
            let r = w.ready(Duration::from_secs_f64(deadline_s)).await?;
            ready.connected += r.connected;
            ready.failed += r.failed;
            if ready.first_error.is_none() {
                ready.first_error = r.first_error;
            }
        }
        Ok((workers, ready))
    }

    async fn collect(
        workers: &mut [WorkerProc],
        wait: Duration,
    ) -> anyhow::Result<SubscribeReport> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut total = SubscribeReport::default();
        for w in workers.iter_mut() {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let r: SubscribeReport = w.result(left.max(Duration::from_millis(10))).await?;
            total.connected += r.connected;
            total.failed += r.failed;
            total.latency.merge(&r.latency);
            total.settled.merge(&r.settled);
            total.events += r.events;
            total.frame_bytes += r.frame_bytes;
            total.unread_bytes += r.unread_bytes;
            total.unread_sockets += r.unread_sockets;
            total.complete += r.complete;
            total.ended_early += r.ended_early;
            total.start_ns = if total.start_ns == 0 {
                r.start_ns
            } else {
                total.start_ns.min(r.start_ns)
            };
            total.ready_ns = total.ready_ns.max(r.ready_ns);
            if r.first_event_ns > 0 {
                total.first_event_ns = if total.first_event_ns == 0 {
                    r.first_event_ns
                } else {
                    total.first_event_ns.min(r.first_event_ns)
                };
            }
            total.last_event_ns = total.last_event_ns.max(r.last_event_ns);
            total.view_enters += r.view_enters;
            for e in r.errors {
                if total.errors.len() < 5 {
                    total.errors.push(e);
                }
            }
        }
        Ok(total)
    }

    async fn stop_all(workers: &mut [WorkerProc]) {
        for w in workers.iter_mut() {
            w.stop().await;
        }
    }

    // ---------------------------------------------------------------- fanout

    async fn fanout(&mut self, kind: Kind) -> anyhow::Result<()> {
        let plan = self.plan.clone();
        let measured = |t: Transport| {
            plan.transports
                .as_ref()
                .is_none_or(|ts| ts.iter().any(|name| name == t.name()))
        };
        // Views are funko-live's own (the peer has none): measured right after the plain SSE
        // point of the same N, for the closest conditions.
        let views = if kind == Kind::Ours {
            view_filters()
        } else {
            Vec::new()
        };
        if measured(Transport::Sse) {
            for &n in &plan.fanout_ns {
                self.fanout_point(kind, Transport::Sse, n, false, &[])
                    .await?;
                if !views.is_empty() && plan.view_ns.contains(&n) {
                    self.fanout_point(kind, Transport::Sse, n, false, &views)
                        .await?;
                }
            }
            if !views.is_empty() {
                for &n in plan.view_ns.iter().filter(|n| !plan.fanout_ns.contains(n)) {
                    self.fanout_point(kind, Transport::Sse, n, false, &views)
                        .await?;
                }
            }
        }
        if measured(Transport::Poll) {
            self.fanout_point(kind, Transport::Poll, plan.poll_n, true, &[])
                .await?;
        }
        if measured(Transport::Ws) {
            for &n in &plan.ws_ns {
                self.fanout_point(kind, Transport::Ws, n, false, &[])
                    .await?;
            }
        }
        if measured(Transport::SocketIo) {
            for &n in &plan.sio_ns {
                self.fanout_point(kind, Transport::SocketIo, n, false, &[])
                    .await?;
            }
        }
        if measured(Transport::Sse) {
            self.throughput(kind).await?;
        }
        Ok(())
    }

    /// The fan-out floor at `n` subscribers (see [`crate::floor`]): the generator's own
    /// subscribers read `rounds` frames from a server with no code of its own; returns what
    /// its writes cost and the frames' latency as the generator measured it.
    async fn floor(
        &self,
        n: usize,
        rounds: usize,
        rate: f64,
        core: Option<usize>,
    ) -> anyhow::Result<(f64, crate::hist::Hist)> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let costs = crate::floor::serve(listener, n, rounds, rate, core);
        let budget = subscriber_budget_s(rounds as f64 / rate);
        let (mut workers, ready) = self
            .subscribers(addr, Transport::Sse, n, rounds as u64, true, None, budget)
            .await?;
        if ready.connected < n {
            Self::stop_all(&mut workers).await;
            let _ = Self::collect(&mut workers, Duration::from_secs(10)).await;
            bail!(
                "{} of {n} floor subscribers connected: {:?}",
                ready.connected,
                ready.first_error
            );
        }
        let costs = costs.await.context("the floor's server died")??;
        let sub = Self::collect(&mut workers, Duration::from_secs(30)).await?;
        let expected = (n * rounds) as u64;
        anyhow::ensure!(
            sub.events == expected,
            "{} of {expected} floor frames arrived",
            sub.events
        );
        Ok((costs, sub.latency))
    }

    /// N subscribers, E events at a set rate: publish-to-deliver latency. With `views` (SSE),
    /// the subscribers are views, recorded as transport `sse_view`.
    async fn fanout_point(
        &mut self,
        kind: Kind,
        transport: Transport,
        n: usize,
        idle_cpu: bool,
        views: &[String],
    ) -> anyhow::Result<()> {
        let (events, rate) = (self.plan.fanout_events, self.plan.fanout_rate);
        let server = Server::start(&self.launch, kind).await?;
        let budget = subscriber_budget_s(events as f64 / rate);
        let (mut workers, ready) = self
            .subscribers_viewing(server.addr, transport, n, events, true, None, budget, views)
            .await?;
        let t = if views.is_empty() {
            transport.name()
        } else {
            VIEW_TRANSPORT
        };
        let label = format!("{t} n={n}");
        if ready.connected == 0 {
            let why = ready.first_error.unwrap_or_default();
            eprintln!("   {label}: no subscriber could connect: {why}");
            Self::stop_all(&mut workers).await;
            let _ = Self::collect(&mut workers, Duration::from_secs(10)).await;
            server.stop().await;
            if transport == Transport::Ws && why.contains("501") {
                self.record(
                    "fanout",
                    kind,
                    transport.name(),
                    n,
                    "unavailable",
                    "501",
                    1.0,
                );
                return Ok(());
            }
            self.fail(format!(
                "fanout {label} on {}: nobody connected: {why}",
                kind.name()
            ));
            return Ok(());
        }
        if ready.failed > 0 {
            self.fail(format!(
                "fanout {label} on {}: {} of {n} subscribers failed to connect: {:?}",
                kind.name(),
                ready.failed,
                ready.first_error
            ));
        }
        if idle_cpu {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let c0 = server.cpu_seconds();
            let secs = if self.plan.runs == 1 && n < 100 {
                1.0
            } else {
                3.0
            };
            tokio::time::sleep(Duration::from_secs_f64(secs)).await;
            let pct = (server.cpu_seconds() - c0) / secs * 100.0;
            eprintln!("   {label}: idle server CPU {pct:.2} % with {n} waiting");
            self.record("fanout", kind, t, n, "idle_cpu", "%", pct);
        }
        let cpu0 = server.cpu_seconds();
        let publ = self
            .publish(server.addr, events, rate, 4, 0.0, FANOUT_TAG)
            .await?;
        let drain = Duration::from_secs(30);
        let sub = Self::collect(&mut workers, drain).await?;
        // The server's CPU per delivery while the events went out (the writes included):
        // what the fan-out costs, less sensitive to a noisy machine than the latencies.
        let cpu_us = (server.cpu_seconds() - cpu0) * 1e6 / sub.events.max(1) as f64;
        let expected = publ.ok * ready.connected as u64;
        let lost = expected.saturating_sub(sub.events);
        let window = sub.last_event_ns.saturating_sub(publ.first_send_ns) as f64 / 1e9;
        let dps = if window > 0.0 {
            sub.events as f64 / window
        } else {
            0.0
        };
        eprintln!(
            "   {label}: p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms  deliveries {} ({:.0}/s, {cpu_us:.2} µs of server CPU each)  lost {lost}  ended early {}{}",
            sub.latency.quantile_ms(0.5),
            sub.latency.quantile_ms(0.99),
            sub.latency.max_ms(),
            sub.events,
            dps,
            sub.ended_early,
            sub.errors
                .first()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default()
        );
        self.record(
            "fanout",
            kind,
            t,
            n,
            "p50",
            "ms",
            sub.latency.quantile_ms(0.5),
        );
        self.record(
            "fanout",
            kind,
            t,
            n,
            "p99",
            "ms",
            sub.latency.quantile_ms(0.99),
        );
        self.record("fanout", kind, t, n, "max", "ms", sub.latency.max_ms());
        self.record("fanout", kind, t, n, "deliveries_per_s", "1/s", dps);
        self.record("fanout", kind, t, n, "cpu_per_delivery", "µs", cpu_us);
        self.record("fanout", kind, t, n, "lost", "count", lost as f64);
        if !views.is_empty() && sub.view_enters != sub.events {
            self.fail(format!(
                "fanout {label} on {}: {} of {} events tagged \"view\":\"enter\" (every Funko \
                 written should enter every view)",
                kind.name(),
                sub.view_enters,
                sub.events
            ));
        }
        if lost > 0 || publ.errors > 0 {
            let mut server = server;
            let state = if server.alive() {
                String::new()
            } else {
                format!("; the server died:\n{}", server.log_tail(10))
            };
            self.fail(format!(
                "fanout {label} on {}: lost {lost} of {expected}, POST errors {} {:?}{state}",
                server.kind.name(),
                publ.errors,
                publ.first_error
            ));
            server.stop().await;
            return Ok(());
        }
        server.stop().await;
        Ok(())
    }

    /// 1,000 SSE subscribers, writes as fast as they go: deliveries per second.
    async fn throughput(&mut self, kind: Kind) -> anyhow::Result<()> {
        let n = self.plan.throughput_n;
        let server = Server::start(&self.launch, kind).await?;
        let secs = self.plan.throughput_s;
        let (mut workers, ready) = self
            .subscribers(
                server.addr,
                Transport::Sse,
                n,
                0,
                true,
                None,
                subscriber_budget_s(secs),
            )
            .await?;
        let cpu0 = server.cpu_seconds();
        let publ = self
            .publish(
                server.addr,
                100_000_000,
                0.0,
                self.plan.throughput_concurrency,
                secs,
                "tput",
            )
            .await?;
        let cpu = server.cpu_seconds() - cpu0;
        tokio::time::sleep(Duration::from_secs(3)).await;
        Self::stop_all(&mut workers).await;
        let sub = Self::collect(&mut workers, Duration::from_secs(30)).await?;
        let window = sub.last_event_ns.saturating_sub(publ.first_send_ns) as f64 / 1e9;
        let dps = if window > 0.0 {
            sub.events as f64 / window
        } else {
            0.0
        };
        let posts =
            publ.ok as f64 / ((publ.last_done_ns - publ.first_send_ns) as f64 / 1e9).max(1e-9);
        let expected = publ.ok * ready.connected as u64;
        let lost = expected.saturating_sub(sub.events);
        eprintln!(
            "   throughput n={n}: {dps:.0} deliveries/s, {posts:.0} POST/s, server CPU {:.0} % while writing, delivered {} of {expected}, streams ended early {}",
            cpu / secs * 100.0,
            sub.events,
            sub.ended_early
        );
        self.record("throughput", kind, "sse", n, "deliveries_per_s", "1/s", dps);
        self.record("throughput", kind, "sse", n, "posts_per_s", "req/s", posts);
        self.record(
            "throughput",
            kind,
            "sse",
            n,
            "undelivered",
            "count",
            lost as f64,
        );
        self.record(
            "throughput",
            kind,
            "sse",
            n,
            "streams_cut_off",
            "count",
            sub.ended_early as f64,
        );
        server.stop().await;
        Ok(())
    }

    // ---------------------------------------------------------------- connections

    /// A fresh server's RSS after one request, so that the base includes a warmed-up runtime.
    async fn warm(&self, kind: Kind) -> anyhow::Result<(Server, u64)> {
        let server = Server::start(&self.launch, kind).await?;
        let mut probe = Conn::open(server.addr, None).await?;
        let _ = probe.request("GET", "/funkos", None).await?;
        drop(probe);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let rss = server.rss();
        Ok((server, rss))
    }

    async fn connections(&mut self, kind: Kind, run: usize) -> anyhow::Result<()> {
        let (server, rss0) = self.warm(kind).await?;
        self.results.curve(Curve::new(
            "connections",
            kind.name(),
            run,
            0.0,
            rss0 as f64,
        ));
        let mut workers = Vec::new();
        let mut held = 0usize;
        let mut target = 0usize;
        let steps = self.plan.conn_steps.clone();
        let mut last_rss = rss0;
        for &step in &steps {
            let delta = step.saturating_sub(target);
            target = step;
            let (ws, ready) = self
                .subscribers(server.addr, Transport::Sse, delta, 0, false, None, 600.0)
                .await?;
            workers.extend(ws);
            held += ready.connected;
            tokio::time::sleep(Duration::from_millis(1500)).await;
            last_rss = server.rss();
            eprintln!(
                "   {step:>6} asked, {held:>6} held: server RSS {:.1} MiB{}",
                last_rss as f64 / 1048576.0,
                ready
                    .first_error
                    .map(|e| format!(" (first failure: {e})"))
                    .unwrap_or_default()
            );
            self.results.curve(Curve::new(
                "connections",
                kind.name(),
                run,
                held as f64,
                last_rss as f64,
            ));
            self.record(
                "connections",
                kind,
                "sse",
                step,
                "rss_per_connection",
                "KiB",
                last_rss.saturating_sub(rss0) as f64 / held.max(1) as f64 / 1024.0,
            );
            if held < target {
                break;
            }
        }
        let c0 = server.cpu_seconds();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let idle = (server.cpu_seconds() - c0) / 2.0 * 100.0;
        let max = *steps.last().unwrap_or(&0);
        let per_conn = if held > 0 {
            (last_rss.saturating_sub(rss0)) as f64 / held as f64
        } else {
            0.0
        };
        eprintln!(
            "   held {held} of {max}; {:.1} KiB of RSS per connection; idle CPU {idle:.2} %",
            per_conn / 1024.0
        );
        if held < target {
            self.fail(format!(
                "connections on {}: held {held} of {target}",
                kind.name()
            ));
        }
        self.record(
            "connections",
            kind,
            "sse",
            max,
            "held",
            "count",
            held as f64,
        );
        self.record(
            "connections",
            kind,
            "sse",
            max,
            "rss_base",
            "MiB",
            rss0 as f64 / 1048576.0,
        );
        self.record(
            "connections",
            kind,
            "sse",
            max,
            "rss_at_max",
            "MiB",
            last_rss as f64 / 1048576.0,
        );
        self.record("connections", kind, "sse", max, "idle_cpu", "%", idle);
        Self::stop_all(&mut workers).await;
        let _ = Self::collect(&mut workers, Duration::from_secs(30)).await;
        server.stop().await;
        if self.plan.conn_ws > 0 {
            self.idle_websockets(kind, self.plan.conn_ws).await?;
        }
        Ok(())
    }

    /// `n` idle WebSocket connections on a fresh server: RSS per connection.
    async fn idle_websockets(&mut self, kind: Kind, n: usize) -> anyhow::Result<()> {
        let (server, rss0) = self.warm(kind).await?;
        let (mut workers, ready) = self
            .subscribers(server.addr, Transport::Ws, n, 0, false, None, 600.0)
            .await?;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let held = ready.connected;
        let per_conn = server.rss().saturating_sub(rss0) as f64 / held.max(1) as f64;
        eprintln!(
            "   WebSocket: held {held} of {n}; {:.1} KiB of RSS per connection",
            per_conn / 1024.0
        );
        if held < n {
            self.fail(format!(
                "idle WebSockets on {}: held {held} of {n}: {:?}",
                kind.name(),
                ready.first_error
            ));
        }
        self.record("connections", kind, "ws", n, "held", "count", held as f64);
        self.record(
            "connections",
            kind,
            "ws",
            n,
            "rss_per_connection",
            "KiB",
            per_conn / 1024.0,
        );
        Self::stop_all(&mut workers).await;
        let _ = Self::collect(&mut workers, Duration::from_secs(30)).await;
        server.stop().await;
        Ok(())
    }

    // ---------------------------------------------------------------- replay

    async fn replay(&mut self, kind: Kind) -> anyhow::Result<()> {
        let k = self.plan.replay_k;
        eprintln!("-- replay of {k} events on {}: seeding", kind.name());
        let server = Server::start(&self.launch, kind).await?;
        let mut probe = Conn::open(server.addr, None).await?;
        let res = probe.request("GET", "/funkos?limit=1", None).await?;
        drop(probe);
        let from = res
            .stream_cursor
            .context("GET /funkos answered no Stream-Cursor")?;
        let seeded = self.publish(server.addr, k, 0.0, 16, 0.0, "replay").await?;
        let seed_secs = (seeded.last_done_ns - seeded.first_send_ns) as f64 / 1e9;
        eprintln!(
            "   seeded {} events in {seed_secs:.1} s ({:.0} POST/s, 16 connections)",
            seeded.ok,
            seeded.ok as f64 / seed_secs
        );
        if seeded.ok != k {
            self.fail(format!(
                "replay seeding on {}: {} of {k} POSTs ok: {:?}",
                kind.name(),
                seeded.ok,
                seeded.first_error
            ));
        }
        for run in 1..=self.plan.runs {
            self.record(
                "replay",
                kind,
                "sse",
                k as usize,
                "seed_posts_per_s",
                "req/s",
                seeded.ok as f64 / seed_secs,
            );
            let (mut workers, _ready) = self
                .subscribers(
                    server.addr,
                    Transport::Sse,
                    1,
                    seeded.ok,
                    true,
                    Some(from.clone()),
                    300.0,
                )
                .await?;
            let sub = Self::collect(&mut workers, Duration::from_secs(300)).await?;
            let secs = sub.last_event_ns.saturating_sub(sub.start_ns) as f64 / 1e9;
            let eps = if secs > 0.0 {
                sub.events as f64 / secs
            } else {
                0.0
            };
            eprintln!(
                "   run {run}/{}: {} events in {secs:.3} s: {eps:.0} events/s",
                self.plan.runs, sub.events
            );
            if sub.events < seeded.ok {
                self.fail(format!(
                    "replay on {}: got {} of {} events",
                    kind.name(),
                    sub.events,
                    seeded.ok
                ));
            }
            self.record(
                "replay",
                kind,
                "sse",
                k as usize,
                "events_per_s",
                "1/s",
                eps,
            );
            self.record("replay", kind, "sse", k as usize, "seconds", "s", secs);
        }
        server.stop().await;
        Ok(())
    }

    // ---------------------------------------------------------------- cluster

    /// Starts the private PostgreSQL once; false (and a note) where it is not installed.
    fn start_pg(&mut self) -> anyhow::Result<bool> {
        if self.pg.is_some() {
            return Ok(true);
        }
        let Some(bin) = crate::pg::binaries() else {
            let why = "PostgreSQL is not installed (/usr/lib/postgresql/*/bin): no cluster figures";
            if std::env::var_os("FUNKO_REQUIRE_POSTGRES").is_some() {
                bail!("{why}, and FUNKO_REQUIRE_POSTGRES is set");
            }
            eprintln!("   {why}");
            return Ok(false);
        };
        let pg = crate::pg::Pg::start(bin, self.launch.pin.then_some(1))?;
        eprintln!("   PostgreSQL on 127.0.0.1:{}", pg.port);
        self.pg = Some(pg);
        Ok(true)
    }

    /// `k` instances on one new PostgreSQL database: POST/s through all of them at once, then
    /// a fan-out to SSE subscribers on the instances that do not take the writes.
    async fn cluster(&mut self, k: usize) -> anyhow::Result<()> {
        let p = self.plan.clone();
        let url = self.pg.as_ref().context("no PostgreSQL")?.database()?;
        let mut servers = Vec::new();
        for _ in 0..k {
            servers.push(Server::start_on(&self.launch, Kind::Ours, Some(&url)).await?);
        }
        let result = self.cluster_on(&servers, &p).await;
        for server in servers {
            server.stop().await;
        }
        result
    }

    async fn cluster_on(&mut self, servers: &[Server], p: &Plan) -> anyhow::Result<()> {
        let k = servers.len();
        let pg_cpu = |ctx: &Self| ctx.pg.as_ref().map_or(0.0, crate::pg::Pg::cpu_seconds);
        let mut workers = Vec::new();
        let pg0 = pg_cpu(self);
        for (i, server) in servers.iter().enumerate() {
            let task = Task::Crud(CrudTask {
                addr: server.addr,
                src: self.next_src(),
                op: CrudOp::Post,
                connections: (p.crud_connections / k).max(1),
                warmup_s: p.crud_warmup_s,
                duration_s: p.crud_duration_s,
                ids: Vec::new(),
                tag: self.next_tag(&format!("cluster{i}")),
            });
            workers.push(self.spawn(&task).await?);
        }
        let (mut posts, mut errors, mut first_error) = (0.0, 0, None);
        let budget = Duration::from_secs_f64(p.crud_warmup_s + p.crud_duration_s + 60.0);
        for w in &mut workers {
            let r: CrudReport = w.result(budget).await?;
            posts += r.requests as f64 / r.elapsed_s;
            errors += r.errors;
            first_error = first_error.or(r.first_error);
        }
        let pg_busy = (pg_cpu(self) - pg0) / (p.crud_warmup_s + p.crud_duration_s) * 100.0;
        if errors > 0 {
            self.fail(format!(
                "cluster of {k}: {errors} POST errors: {first_error:?}"
            ));
        }

        // The fan-out: subscribers on the instances other than the writer's (on it, alone).
        let subs: Vec<SocketAddr> = if k == 1 {
            vec![servers[0].addr]
        } else {
            servers[1..].iter().map(|s| s.addr).collect()
        };
        let (events, rate) = (p.fanout_events, p.fanout_rate);
        let sub_budget = subscriber_budget_s(events as f64 / rate);
        let mut workers = Vec::new();
        let mut connected = 0;
        for (i, addr) in subs.iter().enumerate() {
            let share = p.cluster_n / subs.len() + usize::from(i < p.cluster_n % subs.len());
            let (ws, ready) = self
                .subscribers(*addr, Transport::Sse, share, events, true, None, sub_budget)
                .await?;
            workers.extend(ws);
            connected += ready.connected;
        }
        let publ = self
            .publish(servers[0].addr, events, rate, 4, 0.0, "cl")
            .await?;
        let sub = Self::collect(&mut workers, Duration::from_secs(30)).await?;
        let lost = (publ.ok * connected as u64).saturating_sub(sub.events);
        let (p50, p99) = (sub.latency.quantile_ms(0.5), sub.latency.quantile_ms(0.99));
        eprintln!(
            "   {k} instances: {posts:.0} POST/s (PostgreSQL {pg_busy:.0} % of a core); fan-out to {connected} on {} instance(s): p50 {p50:.2} ms, p99 {p99:.2} ms, lost {lost}",
            subs.len()
        );
        if lost > 0 || connected < p.cluster_n {
            self.fail(format!(
                "cluster of {k}: {connected} of {} connected, lost {lost}: {:?}",
                p.cluster_n, publ.first_error
            ));
        }
        self.record_all(
            "cluster",
            crate::report::OURS,
            "pg",
            k,
            [
                ("posts_per_s", "req/s", posts),
                ("pg_cpu", "%", pg_busy),
                ("p50", "ms", p50),
                ("p99", "ms", p99),
                ("lost", "count", lost as f64),
            ],
        );
        Ok(())
    }

    // ---------------------------------------------------------------- slow

    async fn slow(&mut self, kind: Kind, run: usize) -> anyhow::Result<()> {
        let p = self.plan.clone();
        let server = Server::start(&self.launch, kind).await?;
        // Phase A: readers only, same write rate.
        let (mut readers, _) = self
            .subscribers(
                server.addr,
                Transport::Sse,
                p.slow_readers,
                0,
                true,
                None,
                subscriber_budget_s(p.slow_baseline_s),
            )
            .await?;
        let count = (p.slow_rate * p.slow_baseline_s) as u64;
        let a_pub = self
            .publish(
                server.addr,
                count,
                p.slow_rate,
                16,
                p.slow_baseline_s + 5.0,
                "slowA",
            )
            .await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        Self::stop_all(&mut readers).await;
        let a = Self::collect(&mut readers, Duration::from_secs(30)).await?;
        // Phase B: plus M subscribers that never read.
        let rss_before = server.rss();
        let budget = 120.0 + p.slow_s + 90.0;
        let (mut slow, slow_ready) = self
            .subscribers(
                server.addr,
                Transport::Sse,
                p.slow_m,
                0,
                false,
                None,
                budget,
            )
            .await?;
        let (mut readers, _) = self
            .subscribers(
                server.addr,
                Transport::Sse,
                p.slow_readers,
                0,
                true,
                None,
                budget,
            )
            .await?;
        let count = (p.slow_rate * p.slow_s) as u64;
        let task = Task::Publish(PublishTask {
            addr: server.addr,
            src: self.next_src(),
            count,
            rate: p.slow_rate,
            concurrency: 16,
            duration_s: p.slow_s + 10.0,
            deadline_s: p.slow_s + 60.0,
            tag: self.next_tag("slowB"),
        });
        let started = tokio::time::Instant::now();
        let mut publisher = self.spawn(&task).await?;
        let mut curve = vec![(0.0, rss_before as f64)];
        let waiting = publisher.result::<PublishReport>(Duration::from_secs_f64(p.slow_s + 70.0));
        tokio::pin!(waiting);
        let result = loop {
            tokio::select! {
                r = &mut waiting => break r?,
                () = tokio::time::sleep(Duration::from_secs(1)) => {
                    let t = started.elapsed().as_secs_f64();
                    curve.push((t, server.rss() as f64));
                }
            }
        };
        let b_pub = result;
        curve.push((started.elapsed().as_secs_f64(), server.rss() as f64));
        tokio::time::sleep(Duration::from_secs(2)).await;
        Self::stop_all(&mut readers).await;
        let b = Self::collect(&mut readers, Duration::from_secs(30)).await?;
        let rss_end = server.rss();
        Self::stop_all(&mut slow).await;
        let unread = Self::collect(&mut slow, Duration::from_secs(30)).await.ok();
        let cut = if kind == Kind::Ours {
            // Cut off by the subscriber queue bound, or by the write-stall deadline (a
            // connection whose peer stopped reading).
            server.log_count("fell behind") + server.log_count("peer stopped reading")
        } else {
            0
        };
        for (t, rss) in &curve {
            self.results
                .curve(Curve::new("slow", kind.name(), run, *t, *rss));
        }
        let rss_max = curve.iter().map(|c| c.1).fold(0.0, f64::max);
        let half = p.slow_s / 2.0;
        let at_half = curve
            .iter()
            .filter(|c| c.0 <= half)
            .map(|c| c.1)
            .fold(0.0, f64::max);
        let growth_2nd_half = (rss_max - at_half).max(0.0);
        let a_lost = (a_pub.ok * p.slow_readers as u64).saturating_sub(a.events);
        let b_lost = (b_pub.ok * p.slow_readers as u64).saturating_sub(b.events);
        let mib = 1048576.0;
        eprintln!(
            "   readers p99 {:.2} ms alone, {:.2} ms beside {} non-reading ({} connected); RSS {:.1} -> max {:.1} -> end {:.1} MiB (2nd-half growth {:.1} MiB); POSTs {}/{} ok (B: {:.0}/s); readers lost A {a_lost} B {b_lost}; slow cut off {cut}",
            a.latency.quantile_ms(0.99),
            b.latency.quantile_ms(0.99),
            p.slow_m,
            slow_ready.connected,
            rss_before as f64 / mib,
            rss_max / mib,
            rss_end as f64 / mib,
            growth_2nd_half / mib,
            b_pub.ok,
            count,
            b_pub.ok as f64 / p.slow_s,
        );
        // What one non-reading client's socket took before the server's writes to it stalled,
        // and how much of the stream that is: for that long every batch went to all of them.
        let held = unread
            .filter(|u| u.unread_sockets > 0)
            .map(|u| u.unread_bytes as f64 / u.unread_sockets as f64);
        let frame = b.frame_bytes as f64 / b.events.max(1) as f64;
        let held_s = held.map(|h| h / frame / p.slow_rate);
        eprintln!(
            "   after the first second: readers p99 {:.2} ms alone, {:.2} ms beside; each non-reader held {} unread",
            a.settled.quantile_ms(0.99),
            b.settled.quantile_ms(0.99),
            held.zip(held_s).map_or("n/a".into(), |(h, s)| format!(
                "{:.0} KiB, {s:.2} s of the stream ({:.1} % of the run)",
                h / 1024.0,
                s / p.slow_s * 100.0
            )),
        );
        let (m, name) = (p.slow_m, kind.name());
        self.record_all(
            "slow",
            name,
            "sse",
            m,
            [
                (
                    "readers_p99_settled_alone",
                    "ms",
                    a.settled.quantile_ms(0.99),
                ),
                ("readers_p99_settled", "ms", b.settled.quantile_ms(0.99)),
            ],
        );
        if let Some((h, s)) = held.zip(held_s) {
            self.record_all(
                "slow",
                name,
                "sse",
                m,
                [
                    ("nonreader_held", "KiB", h / 1024.0),
                    ("nonreader_held_s", "s", s),
                ],
            );
        }
        self.record_all(
            "slow",
            name,
            "sse",
            m,
            [
                ("readers_p99_alone", "ms", a.latency.quantile_ms(0.99)),
                ("readers_p99_with_slow", "ms", b.latency.quantile_ms(0.99)),
                ("readers_p50_alone", "ms", a.latency.quantile_ms(0.5)),
                ("readers_p50_with_slow", "ms", b.latency.quantile_ms(0.5)),
                ("rss_before", "MiB", rss_before as f64 / mib),
                ("rss_max", "MiB", rss_max / mib),
                ("rss_end", "MiB", rss_end as f64 / mib),
                ("rss_growth_2nd_half", "MiB", growth_2nd_half / mib),
                ("writes_per_s", "req/s", b_pub.ok as f64 / p.slow_s),
                ("readers_lost", "count", (a_lost + b_lost) as f64),
                ("slow_cut_off", "count", cut as f64),
            ],
        );
        // Not a failure: readers are stopped a fixed time after the last write, so on a busy
        // machine the last events may simply still be on their way (recorded, not asserted).
        if a_lost + b_lost > 0 {
            eprintln!(
                "   note: readers had not received {} events when they were stopped",
                a_lost + b_lost
            );
        }
        server.stop().await;
        Ok(())
    }
}
