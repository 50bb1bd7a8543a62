//! The `funko-live` binary: parse the configuration, start logging, run until SIGINT/SIGTERM.

use clap::Parser;
use funko_live::{App, Config, config::LogFormat};
use tracing_subscriber::EnvFilter;

/// mimalloc rather than glibc malloc: under write load glibc's malloc, free and their
/// consolidation took ~12% of the server's core, requests and the SQLite worker thread
/// allocating and freeing each other's buffers.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    match config.log_format {
        LogFormat::Text => tracing_subscriber::fmt().with_env_filter(filter).init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init(),
    }
    // Handlers are installed before anything else, so a signal during start-up is a clean
    // shutdown too, never the default (immediate) exit.
    let shutdown = shutdown_signal()?;
    let listener = tokio::net::TcpListener::bind(config.bind).await?;
    let app = App::build(config).await?;
    app.run(listener, shutdown).await
}

/// Installs the SIGINT and SIGTERM handlers now; the future resolves on either.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}
