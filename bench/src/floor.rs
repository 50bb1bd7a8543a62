//! `floor`: what one delivery costs the kernel before any server code runs. A thread pinned
//! to the servers' core writes one SSE-sized frame to each of N connected loopback sockets,
//! round after round, while this process's runtime (on the generators' core) reads them like
//! subscribers would. On loopback the writing core also runs the receiver's TCP input and its
//! wake-up, so this is the least time any server that writes each subscriber its own segment
//! needs to deliver one event to N subscribers on this machine. The readers also time each
//! frame from the start of its round, which gives the floor under the fan-out's latency: the
//! p99 that a server with no code of its own would reach (before any commit).

use std::{
    io::Write,
    net::{TcpListener, TcpStream},
    time::{Duration, Instant},
};

use anyhow::Context;
use tokio::io::AsyncReadExt;

/// The size of one event's SSE frame in the fan-out scenario (an update of one Funko).
const FRAME: usize = 400;
/// Rounds per N; the median round is reported.
const ROUNDS: usize = 21;

/// What the floor measurement found at N sockets.
pub struct Floor {
    /// Per-write cost of the median round and of the best one, in microseconds.
    pub write_us: f64,
    pub write_us_best: f64,
    /// A frame's latency from the start of its round to its reader, over every round: p50 and
    /// p99 in milliseconds.
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// Measures the floor at `n` sockets, the writer pinned to `core`.
pub async fn measure(n: usize, core: Option<usize>) -> anyhow::Result<Floor> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let mut writers = Vec::with_capacity(n);
    let mut readers = Vec::with_capacity(n);
    for _ in 0..n {
        let reader = TcpStream::connect(addr).context("connecting a floor reader")?;
        let (writer, _) = listener.accept()?;
        writer.set_nodelay(true)?;
        reader.set_nonblocking(true)?;
        writers.push(writer);
        readers.push(tokio::net::TcpStream::from_std(reader)?);
    }
    // Each frame starts with its round's start, in nanoseconds after `epoch`.
    let epoch = Instant::now();
    let drains: Vec<_> = readers
        .into_iter()
        .map(|mut reader| {
            tokio::spawn(async move {
                let mut frame = [0u8; FRAME];
                let mut latencies = Vec::with_capacity(ROUNDS);
                while reader.read_exact(&mut frame).await.is_ok() {
                    let sent = u64::from_le_bytes(frame[..8].try_into().expect("8 bytes"));
                    let now = epoch.elapsed().as_nanos() as u64;
                    latencies.push(now.saturating_sub(sent));
                }
                latencies
            })
        })
        .collect();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        if let Some(core) = core {
            let mut set = rustix::thread::CpuSet::new();
            set.set(core);
            let _ = rustix::thread::sched_setaffinity(None, &set);
        }
        let mut frame = [b'x'; FRAME];
        let mut rounds = Vec::with_capacity(ROUNDS);
        let mut outcome = Ok(());
        for _ in 0..ROUNDS {
            let started = Instant::now();
            let sent = started.duration_since(epoch).as_nanos() as u64;
            frame[..8].copy_from_slice(&sent.to_le_bytes());
            for writer in &mut writers {
                if let Err(e) = writer.write_all(&frame) {
                    outcome = Err(e);
                }
            }
            rounds.push(started.elapsed().as_secs_f64() * 1e6 / n as f64);
            // Pacing, not synchronisation: the readers drain between rounds, as subscribers
            // do between events.
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(writers);
        let _ = done_tx.send(outcome.map(|()| rounds));
    });
    let mut rounds = done_rx.await.context("the floor writer died")??;
    let mut latencies = Vec::with_capacity(n * ROUNDS);
    for drain in drains {
        latencies.extend(drain.await.unwrap_or_default());
    }
    anyhow::ensure!(
        latencies.len() == n * ROUNDS,
        "{} of {} frames arrived",
        latencies.len(),
        n * ROUNDS
    );
    latencies.sort_unstable();
    let quantile = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize] as f64 / 1e6;
    rounds.sort_by(f64::total_cmp);
    Ok(Floor {
        write_us: rounds[rounds.len() / 2],
        write_us_best: rounds[0],
        p50_ms: quantile(0.5),
        p99_ms: quantile(0.99),
    })
}
