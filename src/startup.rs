//! Wiring: open the database, start the stream's background tasks, build the routes, serve.

use std::{future::Future, sync::Arc, time::Duration};

use anyhow::Context;
use poem::{
    EndpointExt, Route, Server,
    endpoint::make_sync,
    listener::TcpAcceptor,
    middleware::{Cors, Tracing},
};
use tokio::task::JoinHandle;

use crate::{
    api::{self, AppState, Settings},
    config::Config,
    db::{Backend, Db},
    error::render_any_error,
    events::{
        ChangeBus,
        retention::{self, Retention},
    },
};

/// A running store: its state and the background tasks it owns.
pub struct App {
    pub state: AppState,
    pub config: Config,
    tasks: Vec<JoinHandle<()>>,
}

impl App {
    /// Opens and migrates the database and starts the tailer and the pruner.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let db = Db::connect(&config.database_url()).await?;
        db.migrate().await?;
        let bus = ChangeBus::new(db.clone(), config.subscriber_queue).await?;
        let poll_every = match db.backend {
            Backend::Sqlite => None,
            Backend::Postgres => Some(Duration::from_secs(1)),
        };
        let tasks = vec![
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
        let settings = Settings {
            max_body_bytes: config.max_body_bytes,
            keepalive: config.keepalive(),
        };
        Ok(Self {
            state: AppState {
                bus,
                settings: Arc::new(settings),
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
        let acceptor = TcpAcceptor::from_tokio(listener)?;
        let grace = self.config.shutdown_grace();
        let closing = bus.clone();
        Server::new_with_acceptor(acceptor)
            .run_with_graceful_shutdown(
                routes,
                async move {
                    shutdown.await;
                    tracing::info!("shutting down: closing streams, finishing requests");
                    closing.close();
                },
                Some(grace),
            )
            .await
            .context("serving")?;
        bus.close();
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
    let spec = api.spec();
    let docs = api.swagger_ui();
    let mut cors = Cors::new();
    for origin in &config.cors_origins {
        cors = cors.allow_origin(origin.trim());
    }
    let cors_enabled = !config.cors_origins.is_empty();
    Route::new()
        .nest("/", api)
        .nest("/docs", docs)
        .at(
            "/openapi.json",
            make_sync(move |_| {
                poem::Response::builder()
                    .content_type("application/json")
                    .body(spec.clone())
            }),
        )
        .at("/ws", api::ws::handler)
        .data(state)
        .with_if(cors_enabled, cors)
        .with(Tracing)
        .catch_all_error(|err| async move { render_any_error(err) })
}
