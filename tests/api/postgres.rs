//! A private PostgreSQL cluster for the test process: `initdb` into a temp directory, started
//! on a free loopback port the first time a test asks for it, one new database per test.
//!
//! The machine may already run PostgreSQL on 5432; this cluster never touches it. It is
//! stopped and its directory removed when the test process exits, however it exits (a panic,
//! an abort, SIGKILL): a small watchdog shell started beside it waits for this process's pid to
//! disappear, then stops the cluster. Statics are never dropped, so nothing in-process could.
//!
//! Without PostgreSQL's binaries the PostgreSQL tests are skipped, with a message saying so,
//! unless `FUNKO_REQUIRE_POSTGRES` is set (CI), which makes a missing PostgreSQL a failure.

use std::{
    io::Write,
    os::unix::{fs::MetadataExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use sqlx::{Connection, Executor, PgConnection};

/// The variable that turns "PostgreSQL is not installed" into a test failure.
const REQUIRE: &str = "FUNKO_REQUIRE_POSTGRES";

/// Connections the cluster accepts: every app opens pools of up to 16 connections
/// (`Db::connect`), tests run in parallel and some start several apps.
const MAX_CONNECTIONS: u32 = 500;

/// The shared cluster, started by the first test that needs it. `None`: not installed.
static SHARED: OnceLock<Option<Cluster>> = OnceLock::new();

/// Names new databases (`t_1`, `t_2`, ...) across every cluster of this process.
static NEXT_DATABASE: AtomicU64 = AtomicU64::new(1);

/// Whether PostgreSQL tests run here: starts the shared cluster on first use.
///
/// # Panics
/// When PostgreSQL is installed but its cluster cannot start, or when it is missing and
/// `FUNKO_REQUIRE_POSTGRES` is set.
pub fn available() -> bool {
    let cluster = SHARED.get_or_init(|| {
        let cluster = Cluster::start();
        if cluster.is_none() {
            // Straight to stderr: the test harness captures `println!`/`eprintln!` of
            // passing tests, and this must be seen.
            let _ = writeln!(
                std::io::stderr(),
                "PostgreSQL tests skipped: install PostgreSQL (apt-get install postgresql) to run them"
            );
        }
        cluster
    });
    if cluster.is_none() && std::env::var_os(REQUIRE).is_some() {
        panic!(
            "{REQUIRE} is set but PostgreSQL's binaries (initdb, pg_ctl, postgres) were not \
             found under /usr/lib/postgresql/*/bin or on PATH: apt-get install postgresql"
        );
    }
    cluster.is_some()
}

/// The shared cluster. Call [`available`] first.
pub fn shared() -> &'static Cluster {
    SHARED
        .get()
        .and_then(Option::as_ref)
        .expect("PostgreSQL is available (check available() first)")
}

/// A new, empty database on the shared cluster; returns its URL.
pub async fn fresh_database() -> String {
    shared().create_database().await
}

/// PostgreSQL's programs.
#[derive(Clone, Debug)]
struct Binaries {
    dir: PathBuf,
}

impl Binaries {
    /// The newest `/usr/lib/postgresql/*/bin` (Debian's layout), else the directory of an
    /// `initdb` on PATH (through symlinks, so `pg_ctl` finds `postgres` beside it).
    fn find() -> Option<Self> {
        let complete = |dir: &Path| {
            ["initdb", "pg_ctl", "postgres"]
                .iter()
                .all(|b| dir.join(b).is_file())
        };
        let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let version = entry.file_name().to_str()?.parse().ok()?;
                Some((version, entry.path().join("bin")))
            })
            .filter(|(_, bin)| complete(bin))
            .collect();
        versions.sort();
        if let Some((_, dir)) = versions.pop() {
            return Some(Self { dir });
        }
        std::env::split_paths(&std::env::var_os("PATH")?)
            .map(|dir| dir.join("initdb"))
            .find(|initdb| initdb.is_file())
            .and_then(|initdb| std::fs::canonicalize(initdb).ok())
            .and_then(|initdb| initdb.parent().map(Path::to_owned))
            .filter(|dir| complete(dir))
            .map(|dir| Self { dir })
    }

    fn path(&self, program: &str) -> PathBuf {
        self.dir.join(program)
    }
}

/// A private PostgreSQL cluster on a loopback port, owned by this test process.
#[derive(Debug)]
pub struct Cluster {
    binaries: Binaries,
    /// The temp directory: `data/` (the cluster), `socket/`, `postgres.log`. The watchdog
    /// removes it.
    dir: PathBuf,
    pub port: u16,
    /// PostgreSQL refuses to run as root: then every command runs as this user.
    run_as: Option<String>,
}

impl Cluster {
    /// Creates and starts a new cluster; `None` when PostgreSQL is not installed.
    ///
    /// # Panics
    /// When PostgreSQL is installed but the cluster cannot be created or started.
    pub fn start() -> Option<Self> {
        let binaries = Binaries::find()?;
        let started = Instant::now();
        let run_as = is_root().then(|| "postgres".to_owned());
        let dir = tempfile::Builder::new()
            .prefix("funko-pg-")
            .tempdir()
            .expect("a temp dir for PostgreSQL")
            .keep();
        if let Some(user) = &run_as {
            let (uid, gid) = user_ids(user);
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid))
                .expect("giving the temp dir to postgres");
        }
        let port = free_port();
        let cluster = Self {
            binaries,
            dir,
            port,
            run_as,
        };
        // The watchdog first: from here on the directory goes away with this process.
        cluster.spawn_watchdog();
        std::fs::create_dir(cluster.dir.join("socket")).unwrap();
        if let Some(user) = &cluster.run_as {
            let (uid, gid) = user_ids(user);
            std::os::unix::fs::chown(cluster.dir.join("socket"), Some(uid), Some(gid)).unwrap();
        }
        cluster.run(
            "initdb",
            &[
                "-D",
                cluster.data().to_str().unwrap(),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
            ],
        );
        let settings = format!(
            "\n# funko-live tests\n\
             port = {port}\n\
             listen_addresses = '127.0.0.1'\n\
             unix_socket_directories = '{socket}'\n\
             max_connections = {MAX_CONNECTIONS}\n\
             shared_buffers = 64MB\n\
             fsync = off\n\
             synchronous_commit = off\n\
             full_page_writes = off\n\
             log_min_messages = warning\n",
            socket = cluster.dir.join("socket").display(),
        );
        let conf = cluster.data().join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).expect("postgresql.conf");
        text.push_str(&settings);
        std::fs::write(&conf, text).expect("writing postgresql.conf");
        cluster.start_again();
        let _ = writeln!(
            std::io::stderr(),
            "PostgreSQL test cluster up on 127.0.0.1:{port} in {:.1?} ({})",
            started.elapsed(),
            cluster.dir.display()
        );
        Some(cluster)
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Stops the cluster quickly (`pg_ctl stop -m fast`: clients are disconnected).
    pub fn stop(&self) {
        self.run(
            "pg_ctl",
            &[
                "-D",
                self.data().to_str().unwrap(),
                "-m",
                "fast",
                "-w",
                "stop",
            ],
        );
    }

    /// Starts the (stopped) cluster on the same port and data directory and waits until it
    /// accepts connections.
    pub fn start_again(&self) {
        self.run(
            "pg_ctl",
            &[
                "-D",
                self.data().to_str().unwrap(),
                "-l",
                self.dir.join("postgres.log").to_str().unwrap(),
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
    }

    /// The URL of a database on this cluster.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Creates a new, empty database and returns its URL.
    pub async fn create_database(&self) -> String {
        let name = format!("t_{}", NEXT_DATABASE.fetch_add(1, Ordering::Relaxed));
        let mut conn = PgConnection::connect(&self.url("postgres"))
            .await
            .expect("connecting to the test cluster");
        // `name` is ours (t_<number>): no quoting needed.
        conn.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await
            .expect("CREATE DATABASE");
        conn.close().await.ok();
        self.url(&name)
    }

    /// Runs one of PostgreSQL's programs (as `postgres` when we are root); panics with its
    /// output and the server log when it fails.
    fn run(&self, program: &str, args: &[&str]) {
        let output = self
            .command(program, args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running {program}: {e}"));
        if !output.status.success() {
            let log = std::fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default();
            panic!(
                "{program} {args:?} failed ({}):\n{}{}\nserver log:\n{log}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr),
            );
        }
    }

    fn command(&self, program: &str, args: &[&str]) -> Command {
        let program = self.binaries.path(program);
        let mut command = match &self.run_as {
            Some(user) => {
                let mut command = Command::new("runuser");
                command.args(["-u", user, "--"]).arg(program);
                command
            }
            None => Command::new(program),
        };
        command.args(args).current_dir(&self.dir);
        command
    }

    /// Starts the shell that stops the cluster and removes its directory once this process
    /// is gone. It ignores the terminal's signals and sits in its own process group, so a
    /// Ctrl-C on `cargo test` ends the tests first and the watchdog then cleans up.
    #[expect(
        clippy::zombie_processes,
        reason = "the watchdog outlives this process by design and never exits before it"
    )]
    fn spawn_watchdog(&self) {
        let pg_ctl = self.binaries.path("pg_ctl");
        let stop = match &self.run_as {
            Some(user) => format!("runuser -u {user} -- \"$2\" -D \"$3/data\" -m immediate stop"),
            None => "\"$2\" -D \"$3/data\" -m immediate stop".to_owned(),
        };
        let script = format!(
            "trap '' INT TERM HUP; \
             alive() {{ s=$(sed -n 's/^.*) \\(.\\).*$/\\1/p' /proc/$1/stat 2>/dev/null); \
                       [ -n \"$s\" ] && [ \"$s\" != Z ]; }}; \
             while alive \"$1\"; do sleep 0.5; done; \
             [ -f \"$3/data/postmaster.pid\" ] && {stop}; \
             rm -rf \"$3\""
        );
        Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg("watchdog")
            .arg(std::process::id().to_string())
            .arg(pg_ctl)
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("starting the PostgreSQL watchdog");
    }
}

/// A private cluster (the shared one lives in a static and is never dropped) stops with its
/// test, even one that panics; the watchdog would otherwise stop it only at exit.
impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.data();
        if data.join("postmaster.pid").exists() {
            let _ = self
                .command(
                    "pg_ctl",
                    &[
                        "-D",
                        data.to_str().unwrap(),
                        "-m",
                        "immediate",
                        "-w",
                        "stop",
                    ],
                )
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// The uid and gid of a user, from `id`.
fn user_ids(user: &str) -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let output = Command::new("id")
            .args([flag, user])
            .output()
            .unwrap_or_else(|e| panic!("id {flag} {user}: {e}"));
        assert!(
            output.status.success(),
            "running as root, PostgreSQL needs the user {user:?} (created by the postgresql package)"
        );
        String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .expect("a numeric id")
    };
    (id("-u"), id("-g"))
}

/// A loopback port nobody listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}
