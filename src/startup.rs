//! Wiring: open the database, start the stream's background tasks, build the routes, serve.

use std::{future::Future, sync::Arc, time::Duration};

use anyhow::Context;
use poem::{EndpointExt, Route, endpoint::make_sync};
use tokio::task::JoinHandle;

use crate::{
    api::{self, AppState, Settings, cors::Cors, observe::Observe},
    auth::{OpenWrites, WritePolicy},
    config::Config,
    db::{Backend, Db},
    error::render_any_error,
    events::{
        ChangeBus,
        hub::Hub,
        listener,
        retention::{self, Retention},
    },
    limits::{StreamLimits, StreamSlots},
    net::Deadlines,
    server::{self, Limits},
    storage::ImageStore,
};

/// SQLite: how long after a write its WAL is checkpointed. Each checkpoint's fsync makes the
/// file system commit its journal, which stalls the write queue's next WAL append for a few
/// milliseconds, longer the more the checkpoint copied: at 1,000 writes/s, checkpoints a
/// second apart showed as 15–20 ms spikes in the events' delivery every second, and a tenth
/// of a second apart as rare ones (`bench slow`: readers' p99 after the first second 5.5–9.3
/// → 3.1–6.0 ms).
const CHECKPOINT_AFTER: Duration = Duration::from_millis(100);
/// ...unless fewer than this many events came since the last checkpoint: then it waits for
/// them, or for [`CHECKPOINT_QUIET`] without a write (see [`Db::run_checkpoints`]). At 1,000
/// writes/s nothing changes; a write every 150 ms no longer pays the WAL header's fsync in
/// its commit: `POST` sent → event received 1.39 → 0.90 ms (medians, one subscriber).
const CHECKPOINT_BATCH: i64 = 50;
const CHECKPOINT_QUIET: Duration = Duration::from_secs(1);

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
        let bus = ChangeBus::new(db.clone(), config.subscriber_queue).await?;
        // SQLite: this process is the only writer, and its write queue hands the tailer every
        // committed batch.
        // PostgreSQL: other instances write too; the listener wakes the tailer on their
        // commits (LISTEN/NOTIFY) and after each reconnect. The poll is only the safety net
        // for a wake-up lost while the listener's connection still looks alive (a silent
        // network failure), so it is lengthened from 1 s to 5 s: at most one cheap indexed
        // query per instance every 5 s, and that bounds how late such an event can be.
        let poll_every = match db.backend {
            Backend::Sqlite => None,
            Backend::Postgres => Some(Duration::from_secs(5)),
        };
        let mut tasks = vec![
            tokio::spawn(bus.clone().run_tailer(poll_every)),
            tokio::spawn(retention::run(
                bus.clone(),
                Retention {
                    max_age: Duration::from_secs(config.retention_seconds),
                    max_events: config.retention_events,
                    every: Duration::from_secs(config.prune_interval_seconds.max(1)),
                },
            )),
        ];
        if db.backend == Backend::Sqlite {
            tasks.push(tokio::spawn(db.clone().run_checkpoints(
                CHECKPOINT_AFTER,
                CHECKPOINT_QUIET,
                CHECKPOINT_BATCH,
                bus.subscribe_head(),
            )));
        }
        if db.backend == Backend::Postgres {
            // Stops when the bus closes (shutdown), like the tailer and the pruner.
            tasks.push(tokio::spawn(listener::run(bus.clone())));
        }
        let settings = Settings {
            max_body_bytes: config.max_body_bytes,
            keepalive: config.keepalive(),
            write_stall: config.write_stall(),
            body_timeout: Duration::from_secs(config.body_timeout_seconds.max(1)),
        };
        // One shard per worker thread: a busy fan-out spreads over the cores it may use.
        let hub = Hub::start(
            bus.clone(),
            tokio::runtime::Handle::current().metrics().num_workers(),
        );
        let slots = StreamSlots::new(StreamLimits {
            max_streams: config.max_streams,
            max_streams_per_ip: config.max_streams_per_ip,
            max_pollers: config.max_pollers,
        });
        Ok(Self {
            state: AppState {
                bus,
                hub,
                settings: Arc::new(settings),
                policy: Arc::new(policy),
                slots,
                images,
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
        let bus = self.state.bus.clone();
        let routes = routes(self.state.clone(), &self.config);
        let grace = self.config.shutdown_grace();
        let limits = Limits {
            header_timeout: Duration::from_secs(self.config.header_timeout_seconds.max(1)),
            deadlines: Deadlines {
                idle: Duration::from_secs(self.config.idle_timeout_seconds.max(61)),
                write_stall: self.config.write_stall(),
            },
            send_buffer: (self.config.send_buffer_bytes > 0)
                .then_some(self.config.send_buffer_bytes),
            notsent_lowat: (self.config.notsent_lowat_bytes > 0)
                .then_some(self.config.notsent_lowat_bytes),
            grace,
            max_connections_per_ip: self.config.max_connections_per_ip.max(1),
        };
        let closing = bus.clone();
        server::serve(listener, routes, limits, async move {
            shutdown.await;
            tracing::info!("shutting down: closing streams, finishing requests");
            closing.close();
        })
        .await
        .context("serving")?;
        bus.close();
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
        bus.db().close().await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// Every route: the API, its spec and Swagger UI.
pub fn routes(state: AppState, config: &Config) -> impl poem::Endpoint + 'static {
    let api = api::openapi_service();
    let spec = api::openapi_json();
    let docs = api::swagger_ui_html();
    let allow = api::allow::AllowMethods::from_spec(&spec);
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
        .at("/ws", poem::get(api::ws::handler))
        .nest("/socket.io", api::socketio::endpoint())
        .at("/metrics", api::health::metrics)
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
