//! Runtime configuration: every setting is a flag and an environment variable (`--help` lists all).

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Parser, ValueEnum};

/// How logs are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// funko-live: a Funko store API whose clients see every committed change live.
#[derive(Clone, Debug, Parser)]
#[command(name = "funko-live", version, about)]
pub struct Config {
    /// Address to listen on. Port 0 picks a free port (the log says which).
    #[arg(long, env = "BIND_ADDR", default_value = "127.0.0.1:8080")]
    pub bind: SocketAddr,

    /// sqlx database URL: `sqlite://PATH` (created if missing) or `postgres://...`.
    /// Default: a SQLite file under the data directory.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,

    /// Directory for the default SQLite file and uploaded images.
    #[arg(long, env = "DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,

    /// Comma-separated bearer tokens that may write. Empty: writes allowed on loopback only.
    #[arg(long, env = "API_TOKENS", value_delimiter = ',')]
    pub api_tokens: Vec<String>,

    /// Allow writes without tokens on a non-loopback address (anyone who can reach the
    /// server can then change the store).
    #[arg(long, env = "ALLOW_OPEN_WRITES")]
    pub allow_open_writes: bool,

    /// Comma-separated origins allowed by CORS (none by default).
    #[arg(long, env = "CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,

    /// Largest JSON request body, in bytes.
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,

    /// How long events are kept, in seconds.
    #[arg(long, env = "RETENTION_SECONDS", default_value_t = 7 * 24 * 3600)]
    pub retention_seconds: u64,

    /// How many events are kept at most.
    #[arg(long, env = "RETENTION_EVENTS", default_value_t = 1_000_000)]
    pub retention_events: u64,

    /// How often retention pruning runs, in seconds.
    #[arg(long, env = "PRUNE_INTERVAL_SECONDS", default_value_t = 60)]
    pub prune_interval_seconds: u64,

    /// Seconds between keep-alive comments on idle SSE connections (and pings on idle sockets).
    #[arg(long, env = "KEEPALIVE_SECONDS", default_value_t = 15)]
    pub keepalive_seconds: u64,

    /// Seconds a Socket.IO session may take to join its first namespace before it is closed.
    #[arg(long, env = "CONNECT_TIMEOUT_SECONDS", default_value_t = 45)]
    pub connect_timeout_seconds: u64,

    /// How many events a live subscriber may fall behind before it is cut off
    /// (it then resumes from the durable log by cursor).
    #[arg(long, env = "SUBSCRIBER_QUEUE", default_value_t = 4096)]
    pub subscriber_queue: usize,

    /// Most open streams (SSE, WebSocket, Socket.IO, held long-polls) in the whole server.
    #[arg(long, env = "MAX_STREAMS", default_value_t = 19_000)]
    pub max_streams: usize,

    /// Most open streams from one client IP.
    #[arg(long, env = "MAX_STREAMS_PER_IP", default_value_t = 1_000)]
    pub max_streams_per_ip: usize,

    /// Most long-polls held at once.
    #[arg(long, env = "MAX_POLLERS", default_value_t = 10_000)]
    pub max_pollers: usize,

    /// Seconds a connection may stay silent (no byte either way) before it is closed.
    /// Streams stay busy with keep-alives; it must exceed the longest long-poll (60 s).
    #[arg(long, env = "IDLE_TIMEOUT_SECONDS", default_value_t = 120)]
    pub idle_timeout_seconds: u64,

    /// Seconds a request's headers may take to arrive, counted from when the server starts
    /// waiting for them: on a kept-alive connection, from the end of the previous response,
    /// so a connection idle between requests is closed after this too.
    #[arg(long, env = "HEADER_TIMEOUT_SECONDS", default_value_t = 10)]
    pub header_timeout_seconds: u64,

    /// Seconds a request body (JSON or an upload) may take to arrive whole; slower ones get
    /// 408, so a client cannot hold a request open by trickling its body.
    #[arg(long, env = "BODY_TIMEOUT_SECONDS", default_value_t = 60)]
    pub body_timeout_seconds: u64,

    /// Most connections open at once from one client IP; past it a new one is answered 503
    /// and closed.
    #[arg(long, env = "MAX_CONNECTIONS_PER_IP", default_value_t = 2_000)]
    pub max_connections_per_ip: usize,

    /// Seconds a write may wait for the client to read before the connection is closed: a
    /// stream client that stopped reading is cut off and resumes by cursor.
    #[arg(long, env = "WRITE_STALL_SECONDS", default_value_t = 10)]
    pub write_stall_seconds: u64,

    /// The most of a connection's data its kernel socket holds unsent, in bytes
    /// (`TCP_NOTSENT_LOWAT`; 0: no bound). Data in flight to a reading client does not count,
    /// so this caps no throughput over long links; a client that stops reading absorbs its own
    /// receive window plus this before the server's writes to it stall (about 143 KiB on
    /// loopback), and only then does the server stop doing its share of the fan-out for it.
    #[arg(long, env = "NOTSENT_LOWAT_BYTES", default_value_t = 16 * 1024)]
    pub notsent_lowat_bytes: u32,

    /// The kernel send buffer of each connection, in bytes (0: the kernel's autotuning, up to
    /// 4 MiB, `net.ipv4.tcp_wmem`). A cap here also caps one connection's throughput at about
    /// this much per round trip; `--notsent-lowat-bytes` already bounds what a client that
    /// stopped reading absorbs.
    #[arg(long, env = "SEND_BUFFER_BYTES", default_value_t = 0)]
    pub send_buffer_bytes: usize,

    /// Seconds given to in-flight requests and streams at shutdown.
    #[arg(long, env = "SHUTDOWN_GRACE_SECONDS", default_value_t = 10)]
    pub shutdown_grace_seconds: u64,

    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

impl Config {
    /// The database URL in force: the explicit one, or the default SQLite file.
    pub fn database_url(&self) -> String {
        match &self.database_url {
            Some(url) => url.clone(),
            None => format!("sqlite://{}", self.data_dir.join("funko-live.db").display()),
        }
    }

    // The settings as the server uses them: each clamped to what it can work with.

    pub fn write_stall(&self) -> Duration {
        Duration::from_secs(self.write_stall_seconds.max(1))
    }

    pub fn keepalive(&self) -> Duration {
        Duration::from_secs(self.keepalive_seconds.max(1))
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout_seconds.max(1))
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_seconds)
    }

    pub fn body_timeout(&self) -> Duration {
        Duration::from_secs(self.body_timeout_seconds.max(1))
    }

    pub fn header_timeout(&self) -> Duration {
        Duration::from_secs(self.header_timeout_seconds.max(1))
    }

    /// Longer than the longest long-poll, so a held poll is never taken for an idle
    /// connection.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_seconds.max(61))
    }

    pub fn prune_interval(&self) -> Duration {
        Duration::from_secs(self.prune_interval_seconds.max(1))
    }

    /// `None`: the kernel's autotuning.
    pub fn send_buffer(&self) -> Option<usize> {
        (self.send_buffer_bytes > 0).then_some(self.send_buffer_bytes)
    }

    /// `None`: no bound.
    pub fn notsent_lowat(&self) -> Option<u32> {
        (self.notsent_lowat_bytes > 0).then_some(self.notsent_lowat_bytes)
    }

    pub fn max_connections_per_ip(&self) -> usize {
        self.max_connections_per_ip.max(1)
    }

    /// Defaults as if no flag nor variable were given; tests start from this.
    pub fn defaults() -> Self {
        Self::parse_from(["funko-live"])
    }
}
