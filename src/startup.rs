//! Wiring: open the database, start the stream's background tasks, build the routes, serve.

use std::{future::Future, sync::Arc, time::Duration};

use anyhow::Context;
use poem::{EndpointExt, Route, endpoint::make_sync};
use tokio::task::JoinHandle;

use crate::{
    api::{AppState, Settings, allow::AllowMethods, cors::Cors, health, observe::Observe},
    auth::{OpenWrites, WritePolicy},
    config::Config,
    db::{Backend, Db},
    error::render_any_error,
    events::{
        Tail, listener,
        retention::{self, Retention},
    },
    http::{self, Limits, fanout::Hub, net::Deadlines},
    limits::{StreamLimits, StreamSlots},
    service::Store,
    spec,
    storage::ImageStore,
    stream::{socketio, ws},
};

/// SQLite: how long after a write its WAL is checkpointed. Each checkpoint's fsync makes the
/// file system commit its journal, which stalls the write queue's next WAL append for a few
/// milliseconds, longer the more the checkpoint copied: checkpoints close together keep each
/// one small.
const CHECKPOINT_AFTER: Duration = Duration::from_millis(100);
/// ...unless fewer than this many events came since the last checkpoint: then it waits for
/// them, or for [`CHECKPOINT_QUIET`] without a write (see [`Db::run_checkpoints`]), so a
/// trickle of writes does not pay the WAL header's fsync in every commit.
const CHECKPOINT_BATCH: i64 = 50;
const CHECKPOINT_QUIET: Duration = Duration::from_secs(1);
/// PostgreSQL: how often the tailer reads the log with no wake-up. LISTEN/NOTIFY wakes it on
/// every commit and after each reconnect; this is only the safety net for a wake-up lost
/// while the listener's connection still looks alive (a silent network failure), and bounds
/// how late such an event can be.
const SAFETY_POLL: Duration = Duration::from_secs(5);

/// A running store: its state and the background tasks it owns.
pub struct App {
    pub state: AppState,
    pub config: Config,
    tasks: Vec<JoinHandle<()>>,
}

impl App {
    /// Opens and migrates the database and starts the tailer, the pruner and, on
    /// PostgreSQL, the listener.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let policy = write_policy(&config)?;
        let db = Db::connect(&config.database_url()).await?;
        db.migrate().await?;
        let images = ImageStore::new(&config.data_dir);
        if let Err(err) = images.sweep(&db).await {
            tracing::warn!(error = %err, "sweeping unused images failed");
        }
        let tail = Tail::new(db.clone(), config.subscriber_queue).await?;
        // SQLite: this process is the only writer, and its write queue hands the tailer every
        // committed batch. PostgreSQL: other instances write too; the listener wakes the
        // tailer on their commits.
        let poll_every = (db.backend == Backend::Postgres).then_some(SAFETY_POLL);
        let mut tasks = vec![
            tokio::spawn(tail.clone().run_tailer(poll_every)),
            tokio::spawn(retention::run(
                tail.clone(),
                Retention {
                    max_age: Duration::from_secs(config.retention_seconds),
                    max_events: config.retention_events,
                    every: config.prune_interval(),
                },
            )),
        ];
        match db.backend {
            Backend::Sqlite => tasks.push(tokio::spawn(db.clone().run_checkpoints(
                CHECKPOINT_AFTER,
                CHECKPOINT_QUIET,
                CHECKPOINT_BATCH,
                tail.subscribe_head(),
            ))),
            // Stops when the tail closes (shutdown), like the tailer and the pruner.
            Backend::Postgres => tasks.push(tokio::spawn(listener::run(tail.clone()))),
        }
        let settings = Settings {
            max_body_bytes: config.max_body_bytes,
            keepalive: config.keepalive(),
            write_stall: config.write_stall(),
            body_timeout: config.body_timeout(),
            connect_timeout: config.connect_timeout(),
        };
        // One shard per worker thread: a busy fan-out spreads over the cores it may use.
        let hub = Hub::start(
            tail.clone(),
            tokio::runtime::Handle::current().metrics().num_workers(),
        );
        let slots = StreamSlots::new(StreamLimits {
            max_streams: config.max_streams,
            max_streams_per_ip: config.max_streams_per_ip,
            max_pollers: config.max_pollers,
        });
        Ok(Self {
            state: AppState {
                store: Arc::new(Store::new(tail.clone(), images)),
                tail,
                hub,
                settings: Arc::new(settings),
                policy: Arc::new(policy),
                slots,
                tasks: tokio_util::task::TaskTracker::new(),
            },
            config,
            tasks,
        })
    }

    /// Serves on `listener` until `shutdown` resolves, then ends every stream, lets in-flight
    /// requests finish within the grace period, stops the background tasks and closes the pool.
    pub async fn run(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> anyhow::Result<()> {
        let address = listener.local_addr()?;
        tracing::info!("listening on http://{address}");
        let tail = self.state.tail.clone();
        let routes = routes(self.state.clone(), &self.config);
        let config = &self.config;
        let grace = config.shutdown_grace();
        let limits = Limits {
            header_timeout: config.header_timeout(),
            deadlines: Deadlines {
                idle: config.idle_timeout(),
                write_stall: config.write_stall(),
            },
            send_buffer: config.send_buffer(),
            notsent_lowat: config.notsent_lowat(),
            grace,
            max_connections_per_ip: config.max_connections_per_ip(),
        };
        let closing = tail.clone();
        http::serve(listener, routes, limits, async move {
            shutdown.await;
            tracing::info!("shutting down: closing streams, finishing requests");
            closing.close();
        })
        .await
        .context("serving")?;
        tail.close();
        // Upgraded sockets outlive hyper's connections: give them the grace period to
        // send their close frames (and writes whose client hung up, to finish).
        let tasks = self.state.tasks.clone();
        tasks.close();
        if tokio::time::timeout(grace, tasks.wait()).await.is_err() {
            tracing::warn!("sockets still open after the grace period");
        }
        for task in self.tasks {
            task.abort();
            let _ = task.await;
        }
        tail.db().close().await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// Every route: the API, its spec and Swagger UI, the sockets and the metrics.
fn routes(state: AppState, config: &Config) -> impl poem::Endpoint + 'static {
    let api = spec::openapi_service();
    let spec = spec::openapi_json();
    let docs = spec::swagger_ui_html();
    let allow = AllowMethods::from_spec(&spec);
    Route::new()
        .nest("/", api.with(allow))
        .at("/docs", make_sync(move |_| poem::web::Html(docs.clone())))
        .at(
            "/openapi.json",
            make_sync(move |_| {
                poem::Response::builder()
                    .content_type("application/json")
                    .body(spec.clone())
            }),
        )
        .at("/ws", poem::get(ws::handler))
        .nest("/socket.io", socketio::endpoint())
        .at("/metrics", health::metrics)
        .data(state)
        .with(Cors::new(&config.cors_origins))
        .catch_all_error(|err| async move { render_any_error(err) })
        .with(Observe)
}

/// Who may write, and a refusal to start an open write API on a reachable address.
fn write_policy(config: &Config) -> anyhow::Result<WritePolicy> {
    let loopback = config.bind.ip().is_loopback();
    let open = if loopback {
        OpenWrites::Loopback
    } else {
        OpenWrites::Anywhere
    };
    let policy = WritePolicy::new(&config.api_tokens, open, &config.cors_origins);
    if policy.requires_token() {
        tracing::info!("writes need one of the configured bearer tokens");
    } else if loopback {
        tracing::info!(
            "no API tokens: writes are open, allowed because the server listens on loopback \
             only, from this server's own pages, listed origins and clients that send no Origin"
        );
    } else if config.allow_open_writes {
        tracing::warn!(
            "no API tokens and --allow-open-writes: anyone who reaches {} can write",
            config.bind
        );
    } else {
        anyhow::bail!(
            "refusing to listen on {} without API tokens: set --api-tokens (API_TOKENS), \
             bind a loopback address, or pass --allow-open-writes",
            config.bind
        );
    }
    Ok(policy)
}
