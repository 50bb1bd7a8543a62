//! A private PostgreSQL cluster for the instance scenarios, started as the test suite starts
//! its own: `initdb` into a temp directory, a free loopback port, one new database per
//! measurement. It runs on the generators' core; [`Pg::cpu_seconds`] accounts for it. A
//! watchdog shell stops it and removes its directory when the harness exits, however it exits.

use std::{
    os::unix::{fs::MetadataExt, process::CommandExt},
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context, bail};

pub struct Pg {
    bin: PathBuf,
    core: Option<u32>,
    dir: PathBuf,
    pub port: u16,
    /// PostgreSQL refuses to run as root: then it runs as this user.
    run_as: Option<String>,
    next_db: std::cell::Cell<u32>,
}

/// The newest `/usr/lib/postgresql/*/bin` with `initdb`, `pg_ctl` and `psql`.
pub fn binaries() -> Option<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin): &(u32, PathBuf)| {
            ["initdb", "pg_ctl", "psql"]
                .iter()
                .all(|p| bin.join(p).is_file())
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin)
}

/// What a cluster needs beyond the defaults.
#[derive(Default)]
pub struct Setup {
    /// `synchronous_commit = on`: an acknowledged commit survives a crash of the cluster.
    pub durable: bool,
}

impl Pg {
    /// Creates and starts a cluster; with `core`, pinned to it.
    pub fn start(bin: PathBuf, core: Option<u32>) -> anyhow::Result<Self> {
        Self::start_with(bin, core, &Setup::default())
    }

    /// [`Pg::start`] with durable commits when asked.
    pub fn start_with(bin: PathBuf, core: Option<u32>, setup: &Setup) -> anyhow::Result<Self> {
        let is_root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
        let run_as = is_root.then(|| "postgres".to_owned());
        let dir = tempfile::Builder::new()
            .prefix("funko-bench-pg-")
            .tempdir()?
            .keep();
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let pg = Self {
            bin,
            core,
            dir,
            port,
            run_as,
            next_db: std::cell::Cell::new(0),
        };
        pg.watchdog()?;
        std::fs::create_dir(pg.dir.join("socket"))?;
        if let Some(user) = &pg.run_as {
            let id = |flag: &str| -> anyhow::Result<u32> {
                let out = Command::new("id").args([flag, user]).output()?;
                Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
            };
            let (uid, gid) = (id("-u")?, id("-g")?);
            for d in [pg.dir.clone(), pg.dir.join("socket")] {
                std::os::unix::fs::chown(&d, Some(uid), Some(gid))?;
            }
        }
        let data = pg.dir.join("data");
        pg.run(
            None,
            "initdb",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-U".as_ref(),
                "postgres".as_ref(),
                "--auth=trust".as_ref(),
                "--encoding=UTF8".as_ref(),
                "--locale=C.UTF-8".as_ref(),
            ],
        )?;
        // By default durable as SQLite's WAL with `synchronous = NORMAL` is: every commit is
        // written, fsync runs behind the commits.
        let conf = format!(
            "\nport = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             max_connections = 200\nshared_buffers = 128MB\nsynchronous_commit = {}\n\
             log_min_messages = warning\n",
            pg.dir.join("socket").display(),
            if setup.durable { "on" } else { "off" }
        );
        let path = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&path)?;
        text.push_str(&conf);
        std::fs::write(&path, text)?;
        pg.pg_ctl_start()?;
        Ok(pg)
    }

    fn pg_ctl_start(&self) -> anyhow::Result<()> {
        let data = self.dir.join("data");
        let log = self.dir.join("postgres.log");
        self.run(
            self.core,
            "pg_ctl",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-l".as_ref(),
                log.as_os_str(),
                "-w".as_ref(),
                "start".as_ref(),
            ],
        )
    }

    /// Stops the cluster as a crash would (`-m immediate`: no checkpoint, clients cut off).
    pub fn crash(&self) -> anyhow::Result<()> {
        let data = self.dir.join("data");
        self.run(
            None,
            "pg_ctl",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-m".as_ref(),
                "immediate".as_ref(),
                "-w".as_ref(),
                "stop".as_ref(),
            ],
        )
    }

    /// Starts the cluster again after [`Pg::crash`]; it recovers from its WAL.
    pub fn restart(&self) -> anyhow::Result<()> {
        self.pg_ctl_start()
    }

    /// Runs `sql` in database `db` and returns what `psql` printed (unaligned, tuples only).
    pub fn query(&self, db: &str, sql: &str) -> anyhow::Result<String> {
        let port = self.port.to_string();
        self.output(
            None,
            "psql",
            &[
                "-h".as_ref(),
                "127.0.0.1".as_ref(),
                "-p".as_ref(),
                port.as_ref(),
                "-U".as_ref(),
                "postgres".as_ref(),
                "-d".as_ref(),
                db.as_ref(),
                "-v".as_ref(),
                "ON_ERROR_STOP=1".as_ref(),
                "-qAtc".as_ref(),
                sql.as_ref(),
            ],
        )
    }

    /// A new, empty database; returns its URL.
    pub fn database(&self) -> anyhow::Result<String> {
        let n = self.next_db.get() + 1;
        self.next_db.set(n);
        let name = format!("b_{n}");
        let port = self.port.to_string();
        let sql = format!("CREATE DATABASE {name}");
        self.run(
            None,
            "psql",
            &[
                "-h".as_ref(),
                "127.0.0.1".as_ref(),
                "-p".as_ref(),
                port.as_ref(),
                "-U".as_ref(),
                "postgres".as_ref(),
                "-qc".as_ref(),
                sql.as_ref(),
            ],
        )?;
        Ok(format!(
            "postgres://postgres@127.0.0.1:{}/{name}",
            self.port
        ))
    }

    /// User + system CPU seconds of the postmaster and its live children.
    pub fn cpu_seconds(&self) -> f64 {
        let Some(master) = std::fs::read_to_string(self.dir.join("data/postmaster.pid"))
            .ok()
            .and_then(|t| t.lines().next()?.trim().parse::<u32>().ok())
        else {
            return 0.0;
        };
        let children = std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|&pid| parent_of(pid) == Some(master));
        std::iter::once(master)
            .chain(children)
            .filter_map(crate::servers::cpu_of)
            .sum()
    }

    fn run(
        &self,
        core: Option<u32>,
        program: &str,
        args: &[&std::ffi::OsStr],
    ) -> anyhow::Result<()> {
        self.output(core, program, args).map(drop)
    }

    fn output(
        &self,
        core: Option<u32>,
        program: &str,
        args: &[&std::ffi::OsStr],
    ) -> anyhow::Result<String> {
        let mut cmd = match (core, &self.run_as) {
            (Some(core), _) => {
                let mut c = Command::new("taskset");
                c.arg("-c").arg(core.to_string());
                if let Some(user) = &self.run_as {
                    c.args(["runuser", "-u", user, "--"]);
                }
                c.arg(self.bin.join(program));
                c
            }
            (None, Some(user)) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(self.bin.join(program));
                c
            }
            (None, None) => Command::new(self.bin.join(program)),
        };
        let out = cmd
            .args(args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {program}"))?;
        if !out.status.success() {
            let log = std::fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default();
            bail!(
                "{program} failed ({}): {}{}\n{log}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A shell that waits for this process to go, then stops the cluster and removes it.
    fn watchdog(&self) -> anyhow::Result<()> {
        let stop = match &self.run_as {
            Some(user) => format!("runuser -u {user} -- \"$2\" -D \"$3/data\" -m immediate stop"),
            None => "\"$2\" -D \"$3/data\" -m immediate stop".to_owned(),
        };
        let script = format!(
            "trap '' INT TERM HUP; while kill -0 \"$1\" 2>/dev/null; do sleep 0.5; done; \
             [ -f \"$3/data/postmaster.pid\" ] && {stop}; rm -rf \"$3\""
        );
        // Never waited for: it outlives this process by design.
        let _watchdog = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg("watchdog")
            .arg(std::process::id().to_string())
            .arg(self.bin.join("pg_ctl"))
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .context("starting the PostgreSQL watchdog")?;
        Ok(())
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        let _ = self.crash();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 2..]
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}
