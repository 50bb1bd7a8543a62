//! `bench`: the load generator and harness. `cargo run --release -p bench -- all` builds
//! funko-live, installs the Node peer, runs every scenario against both (servers on core 0,
//! generator processes on core 1, median of 3 runs) and writes `bench/results/` and
//! `BENCHMARKS.md`.

mod clock;
mod floor;
mod hist;
mod http;
mod pg;
mod report;
mod scenarios;
mod servers;
mod soak;
mod worker;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

use crate::{
    report::{Machine, Notes},
    scenarios::{Ctx, Plan, Scenario},
    servers::{Kind, Launch},
};

#[derive(Parser)]
#[command(name = "bench", about = "Benchmark funko-live against a Node.js peer.")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    /// The funko-live binary to run (default: build target/release/funko-live, or
    /// target/debug/funko-live for `smoke`).
    #[arg(long, env = "FUNKO_BENCH_SERVER_BIN", global = true)]
    server_bin: Option<PathBuf>,
    /// The Node peer's directory (default: bench/peers/node).
    #[arg(long, global = true)]
    node_dir: Option<PathBuf>,
    /// Measure funko-live only.
    #[arg(long, global = true)]
    no_peer: bool,
    /// Do not pin the servers and generators to cores with taskset.
    #[arg(long, global = true)]
    no_pin: bool,
    /// Do not run `npm ci` in a temp dir; run the peer from --node-dir, whose node_modules must
    /// already be installed.
    #[arg(long, global = true)]
    skip_npm: bool,
    /// Runs per figure (the median is reported).
    #[arg(long, global = true)]
    runs: Option<usize>,
    /// Where results go (default: bench/results; smoke: target/bench-smoke).
    #[arg(long, global = true)]
    out: Option<PathBuf>,
    /// SSE fan-out sizes, comma-separated.
    #[arg(long, global = true, value_delimiter = ',')]
    fanout_ns: Option<Vec<usize>>,
    /// Steps of the idle-connection ramp, comma-separated.
    #[arg(long, global = true, value_delimiter = ',')]
    conn_steps: Option<Vec<usize>>,
    /// Events to replay.
    #[arg(long, global = true)]
    replay_k: Option<u64>,
    /// The fan-out's transports to measure, comma-separated: sse (with views and the
    /// throughput), poll, ws, socketio (default: all).
    #[arg(long, global = true, value_delimiter = ',')]
    transports: Option<Vec<String>>,
    /// soak: minutes of writes and faults.
    #[arg(long, global = true, default_value_t = 5.0)]
    minutes: f64,
    /// soak: seconds of writes and faults (overrides --minutes).
    #[arg(long, global = true)]
    seconds: Option<f64>,
    /// soak: writes per second of each instance's writer.
    #[arg(long, global = true, default_value_t = 4.0)]
    write_rate: f64,
    /// soak: subscribers per transport.
    #[arg(long, global = true, default_value_t = 6)]
    per_transport: usize,
    /// soak: events the log keeps (pruning runs every second).
    #[arg(long, global = true, default_value_t = 150)]
    retention_events: u64,
    /// soak: mean seconds between faults in each of its two lanes.
    #[arg(long, global = true, default_value_t = 10.0)]
    fault_every: f64,
    /// soak: the seed of its random choices.
    #[arg(long, global = true, default_value_t = 1)]
    seed: u64,
    /// soak: the kinds of fault, comma-separated (kill, pause, pg-restart, client-blackhole,
    /// pg-blackhole, bandwidth, pg-latency, pg-cut; default all).
    #[arg(long, global = true, value_delimiter = ',')]
    faults: Vec<String>,
    /// soak: run a debug build of funko-live (for the suite's short soak).
    #[arg(long, global = true)]
    debug_server: bool,
    /// soak: where the figures go (default: RELIABILITY.md beside BENCHMARKS.md).
    #[arg(long, global = true)]
    report: Option<PathBuf>,
}

#[derive(Subcommand, Clone, Copy, PartialEq, Eq)]
enum Cmd {
    /// Every scenario, both servers; writes bench/results/ and BENCHMARKS.md.
    All,
    /// A few subscribers and events on both servers: checks the harness works (seconds).
    Smoke,
    /// GET by id, GET list, POST, PATCH: requests/s and latency.
    Crud,
    /// N subscribers on SSE, long-poll, WebSocket and Socket.IO; deliveries/s.
    Fanout,
    /// Idle SSE connections ramped up: server RSS per connection.
    Connections,
    /// One subscriber resuming K events back: events/s.
    Replay,
    /// Subscribers that stop reading while writes go on: server RSS and readers' latency.
    Slow,
    /// A server with no code of its own writing to N subscribers: the fan-out's kernel floor.
    Floor,
    /// 1, 2 and 4 funko-live instances on one private PostgreSQL: POST/s and fan-out p99.
    Cluster,
    /// Three instances on one PostgreSQL under random faults (kills, pauses, PostgreSQL
    /// restarts, blackholes, bandwidth caps, pruning), checked; writes RELIABILITY.md.
    Soak,
    /// Redraws fanout.png and BENCHMARKS.md from bench/results/ (after editing bench/findings.md).
    Report,
    /// Internal: a generator process (reads its task on stdin).
    #[command(hide = true)]
    Worker,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if cli.cmd == Cmd::Worker {
        return worker::main();
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("bench/ has no parent")?
        .to_path_buf();
    let smoke = cli.cmd == Cmd::Smoke;
    if cli.cmd == Cmd::Soak {
        let server_bin = match &cli.server_bin {
            Some(p) => p.clone(),
            None => build_server(&root, !cli.debug_server)?,
        };
        let seconds = cli.seconds.unwrap_or(cli.minutes * 60.0);
        return soak::run(soak::Options {
            server_bin,
            duration: std::time::Duration::from_secs_f64(seconds.max(10.0)),
            instances: 3,
            write_rate: cli.write_rate,
            per_transport: cli.per_transport.max(1),
            retention_events: cli.retention_events.max(1),
            fault_every: cli.fault_every.max(1.0),
            seed: cli.seed,
            faults: cli.faults.clone(),
            report: cli
                .report
                .clone()
                .unwrap_or_else(|| soak::default_report(&root)),
            command: format!(
                "{} {}",
                if std::env::current_exe().is_ok_and(|p| p.to_string_lossy().contains("/release/"))
                {
                    "cargo run --release -p bench --"
                } else {
                    "bench"
                },
                std::env::args().skip(1).collect::<Vec<_>>().join(" ")
            ),
        });
    }
    if cli.cmd == Cmd::Report {
        let out = cli
            .out
            .clone()
            .unwrap_or_else(|| root.join("bench/results"));
        let results = report::Results::read(&out.join("results.csv"), &out.join("curves.csv"))?;
        let info: report::RunInfo = serde_json::from_str(
            &std::fs::read_to_string(out.join("run.json")).context("reading run.json")?,
        )?;
        report::fanout_chart(&results, &out.join("fanout.png"))?;
        write_markdown(&root, &results, &info)?;
        return Ok(());
    }
    let started = std::time::Instant::now();
    let load_start = report::loadavg();

    let pin = !cli.no_pin && have("taskset") && Machine::probe().nproc >= 2;
    if !cli.no_pin && !pin {
        eprintln!("warning: not pinning (taskset missing or fewer than 2 cores)");
    }
    if pin {
        // The harness itself stays off the server's core too.
        pin_this_thread(1);
    }

    let server_bin = match &cli.server_bin {
        Some(p) => p.clone(),
        None => build_server(&root, !smoke)?,
    };
    if !server_bin.exists() {
        bail!("no server binary at {}", server_bin.display());
    }
    let peer_src = cli
        .node_dir
        .clone()
        .unwrap_or_else(|| root.join("bench/peers/node"));
    let mut node_dir = peer_src.clone();
    // The peer runs from its own install in a temp dir: `npm ci` wipes `node_modules`, so two
    // harness runs sharing bench/peers/node would break each other's peer mid-run.
    let mut _peer_install = None;
    let mut kinds = vec![Kind::Ours];
    if !cli.no_peer {
        if !have("node") {
            bail!("node is not installed: install Node.js or pass --no-peer");
        }
        if !cli.skip_npm {
            let dir = tempfile::Builder::new()
                .prefix("funko-bench-peer-")
                .tempdir()?;
            for file in ["package.json", "package-lock.json", ".npmrc", "server.js"] {
                let from = peer_src.join(file);
                if from.exists() {
                    std::fs::copy(&from, dir.path().join(file))
                        .with_context(|| format!("copying {}", from.display()))?;
                }
            }
            eprintln!(
                "== npm ci for the peer ({} → {})",
                peer_src.display(),
                dir.path().display()
            );
            let status = Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
                .current_dir(dir.path())
                .status()
                .context("running npm ci")?;
            if !status.success() {
                bail!("npm ci failed for {}", peer_src.display());
            }
            node_dir = dir.path().to_path_buf();
            _peer_install = Some(dir);
        }
        kinds.push(Kind::Node);
    }

    let mut plan = if smoke { Plan::smoke() } else { Plan::full() };
    if let Some(r) = cli.runs {
        plan.runs = r.max(1);
    }
    if let Some(ns) = &cli.fanout_ns {
        plan.fanout_ns = ns.clone();
    }
    if let Some(steps) = &cli.conn_steps {
        plan.conn_steps = steps.clone();
    }
    if let Some(k) = cli.replay_k {
        plan.replay_k = k;
    }
    if let Some(ts) = &cli.transports {
        for t in ts {
            if !["sse", "poll", "ws", "socketio"].contains(&t.as_str()) {
                bail!("--transports: {t:?} is not sse, poll, ws or socketio");
            }
        }
        plan.transports = Some(ts.clone());
    }
    let scenarios = match cli.cmd {
        Cmd::All | Cmd::Smoke => vec![
            Scenario::Crud,
            Scenario::Fanout,
            Scenario::Connections,
            Scenario::Replay,
            Scenario::Slow,
            Scenario::Floor,
            Scenario::Cluster,
        ],
        Cmd::Crud => vec![Scenario::Crud],
        Cmd::Fanout => vec![Scenario::Fanout],
        Cmd::Connections => vec![Scenario::Connections],
        Cmd::Replay => vec![Scenario::Replay],
        Cmd::Slow => vec![Scenario::Slow],
        Cmd::Floor => vec![Scenario::Floor],
        Cmd::Cluster => vec![Scenario::Cluster],
        Cmd::Worker | Cmd::Report | Cmd::Soak => unreachable!(),
    };
    let out = cli.out.clone().unwrap_or_else(|| {
        if smoke {
            root.join("target/bench-smoke")
        } else {
            root.join("bench/results")
        }
    });
    std::fs::create_dir_all(&out)?;

    let launch = Launch {
        server_bin,
        node_dir,
        pin,
    };
    let plan_text = describe(&plan);
    eprintln!("plan: {plan_text}");
    eprintln!("load average at start: {load_start}");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut ctx = Ctx::new(launch, plan.clone(), kinds)?;
    let outcome: anyhow::Result<()> = rt.block_on(async {
        for s in &scenarios {
            ctx.run(*s).await?;
        }
        Ok(())
    });

    let suffix = match cli.cmd {
        Cmd::All | Cmd::Smoke => String::new(),
        _ => format!("-{}", scenarios[0].name()),
    };
    ctx.results
        .write_csv(&out.join(format!("results{suffix}.csv")))?;
    if !ctx.results.curves.is_empty() {
        ctx.results
            .write_curves(&out.join(format!("curves{suffix}.csv")))?;
    }
    if scenarios.contains(&Scenario::Fanout) {
        report::fanout_chart(&ctx.results, &out.join("fanout.png"))?;
    }
    eprintln!("wrote {}", out.display());
    let minutes = started.elapsed().as_secs_f64() / 60.0;
    if cli.cmd == Cmd::All {
        let notes = Notes {
            load: (load_start.clone(), report::loadavg()),
            runs: plan.runs,
            pinned: pin,
            minutes,
            extra: ctx
                .failures
                .iter()
                .map(|f| format!("problem seen during the run: {f}"))
                .collect(),
        };
        let info = report::RunInfo {
            machine: Machine::probe(),
            notes,
        };
        std::fs::write(out.join("run.json"), serde_json::to_string_pretty(&info)?)?;
        write_markdown(&root, &ctx.results, &info)?;
    }
    for row in report::targets(&ctx.results) {
        if row.met.is_some() && !smoke {
            eprintln!(
                "{:<58} ours {:<40} peer {:<40} {:<18} {}",
                row.scenario,
                row.ours,
                row.peer,
                row.ratio,
                if row.met == Some(true) {
                    "met"
                } else {
                    "MISSED"
                }
            );
        }
    }
    eprintln!("took {minutes:.1} min");
    outcome?;
    if smoke && !ctx.failures.is_empty() {
        bail!("smoke run failed:\n{}", ctx.failures.join("\n"));
    }
    if smoke {
        eprintln!("smoke: ok");
    }
    Ok(())
}

fn describe(p: &Plan) -> String {
    format!(
        "crud {} connections, {} s warm-up + {} s per operation; SSE fan-out N = {:?}, {} events at {}/s; \
         SSE views (category, maxPrice, q) N = {:?}; long-poll N = {}; WebSocket N = {:?}; Socket.IO N = {:?}; throughput N = {} for {} s with {} POST connections; \
         idle SSE connections in steps {:?}, idle WebSockets {}; replay K = {}; slow M = {} beside {} readers at {} writes/s \
         ({} s alone, then {} s); kernel floor at {:?} sockets; PostgreSQL instances {:?} \
         with {} SSE subscribers",
        p.crud_connections,
        p.crud_warmup_s,
        p.crud_duration_s,
        p.fanout_ns,
        p.fanout_events,
        p.fanout_rate,
        p.view_ns,
        p.poll_n,
        p.ws_ns,
        p.sio_ns,
        p.throughput_n,
        p.throughput_s,
        p.throughput_concurrency,
        p.conn_steps,
        p.conn_ws,
        p.replay_k,
        p.slow_m,
        p.slow_readers,
        p.slow_rate,
        p.slow_baseline_s,
        p.slow_s,
        p.floor_ns,
        p.cluster_ks,
        p.cluster_n
    )
}

/// Pins the calling thread (and the threads it spawns from now on) to `core`; a failure only
/// loses the pinning.
pub fn pin_this_thread(core: usize) {
    let mut set = rustix::thread::CpuSet::new();
    set.set(core);
    let _ = rustix::thread::sched_setaffinity(None, &set);
}

fn have(program: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program} >/dev/null"))
        .status()
        .is_ok_and(|s| s.success())
}

/// Builds funko-live and returns the binary's path.
fn build_server(root: &Path, release: bool) -> anyhow::Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--bin", "funko-live", "-p", "funko-live"])
        .current_dir(root);
    if release {
        cmd.arg("--release");
    }
    eprintln!(
        "== building funko-live ({})",
        if release { "release" } else { "debug" }
    );
    let status = cmd.status().context("running cargo build")?;
    if !status.success() {
        bail!("cargo build of funko-live failed");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    Ok(target
        .join(if release { "release" } else { "debug" })
        .join("funko-live"))
}

fn write_markdown(
    root: &Path,
    results: &report::Results,
    info: &report::RunInfo,
) -> anyhow::Result<()> {
    // The findings are hand-written after a run: a few bullets, read from bench/findings.md.
    let findings = std::fs::read_to_string(root.join("bench/findings.md")).unwrap_or_default();
    let md = report::markdown(results, &info.machine, &info.notes, &findings);
    std::fs::write(root.join("BENCHMARKS.md"), md)?;
    eprintln!("wrote {}", root.join("BENCHMARKS.md").display());
    Ok(())
}
