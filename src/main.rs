//! The `funko-live` binary: parse the configuration, start logging, run until SIGINT/SIGTERM.

use std::process::ExitCode;

use clap::Parser;
use funko_live::{App, Config, LogFormat};
use tracing_subscriber::EnvFilter;

/// mimalloc rather than glibc malloc: under write load glibc's malloc, free and their
/// consolidation took a large share of the server's core, requests and the SQLite worker
/// thread allocating and freeing each other's buffers.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Runs the server; a failure to start is one or two lines on stderr and exit code 1 (each
/// error names what failed and what to do), not a debug dump.
fn main() -> ExitCode {
    let config = Config::parse();
    let runtime = tokio::runtime::Runtime::new().expect("starting the async runtime");
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("funko-live: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
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
    let listener = tokio::net::TcpListener::bind(config.bind)
        .await
        .map_err(|err| {
            anyhow::anyhow!(
                "cannot listen on {}: {err}\n  pick another address with --bind (BIND_ADDR), or stop what holds it",
                config.bind
            )
        })?;
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
