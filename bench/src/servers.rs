//! The servers under test, each started as its own process pinned to core 0 on 127.0.0.1
//! with a fresh temp data dir, and read from `/proc` (RSS, CPU time).

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Ours,
    Node,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Ours => "funko-live",
            Self::Node => "node-peer",
        }
    }
}

/// How to start each server.
#[derive(Clone, Debug)]
pub struct Launch {
    pub server_bin: PathBuf,
    pub node_dir: PathBuf,
    /// Pin servers to core 0 and generators to core 1 with `taskset`.
    pub pin: bool,
}

impl Launch {
    /// A command, pinned to `core` when pinning is on.
    pub fn command(&self, core: u32, program: &Path) -> Command {
        if self.pin {
            let mut c = Command::new("taskset");
            c.arg("-c").arg(core.to_string()).arg(program);
            c
        } else {
            Command::new(program)
        }
    }
}

pub struct Server {
    pub kind: Kind,
    pub addr: SocketAddr,
    pub pid: u32,
    child: Child,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Server {
    pub async fn start(launch: &Launch, kind: Kind) -> anyhow::Result<Self> {
        Self::start_on(launch, kind, None).await
    }

    /// funko-live on `database_url` (None: its own SQLite file), or the peer.
    pub async fn start_on(
        launch: &Launch,
        kind: Kind,
        database_url: Option<&str>,
    ) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("funko-bench-").tempdir()?;
        let log = dir.path().join("server.log");
        let out = std::fs::File::create(&log)?;
        let mut cmd = match kind {
            Kind::Ours => {
                let mut c = launch.command(0, &launch.server_bin);
                c.arg("--bind")
                    .arg("127.0.0.1:0")
                    .arg("--data-dir")
                    .arg(dir.path().join("data"))
                    .env("RUST_LOG", "warn,funko_live=info")
                    .env("NO_COLOR", "1")
                    .env_remove("DATABASE_URL")
                    .env_remove("API_TOKENS");
                if let Some(url) = database_url {
                    c.arg("--database-url").arg(url);
                }
                c
            }
            Kind::Node => {
                let mut c = launch.command(0, Path::new("node"));
                c.arg(launch.node_dir.join("server.js"))
                    .arg("--port")
                    .arg("0")
                    .arg("--host")
                    .arg("127.0.0.1")
                    .current_dir(&launch.node_dir)
                    .env("NODE_ENV", "production");
                c
            }
        };
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", kind.name()))?;
        let pid = child.id().context("no pid")?;
        // `taskset` execs the server, so `pid` is the server's own.
        let addr = listening(&mut child, &log, kind.name()).await?;
        Ok(Self {
            kind,
            addr,
            pid,
            child,
            log,
            _dir: dir,
        })
    }

    /// Resident memory, bytes.
    pub fn rss(&self) -> u64 {
        rss_of(self.pid).unwrap_or(0)
    }

    /// User + system CPU time so far, seconds.
    pub fn cpu_seconds(&self) -> f64 {
        cpu_of(self.pid).unwrap_or(0.0)
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// How many lines of its log contain `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(needle))
            .count()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}

/// Waits until the log at `log` of `child` says where it listens (`listening on http://…`).
pub async fn listening(child: &mut Child, log: &Path, name: &str) -> anyhow::Result<SocketAddr> {
    let started = tokio::time::Instant::now();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(at) = text.rfind("listening on http://") {
            let rest = &text[at + "listening on http://".len()..];
            let end = rest
                .find(|c: char| c.is_whitespace() || c == '\u{1b}' || c == '"')
                .unwrap_or(rest.len());
            return rest[..end]
                .trim_end_matches('/')
                .parse::<SocketAddr>()
                .with_context(|| format!("parsing the address in {:?}", &rest[..end]));
        }
        if let Some(status) = child.try_wait()? {
            bail!("{name} exited at start ({status}):\n{text}");
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!("{name} did not say where it listens within 60 s:\n{text}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn rss_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

pub fn cpu_of(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    let hz = rustix::param::clock_ticks_per_second() as f64;
    Some((utime + stime) / hz)
}
