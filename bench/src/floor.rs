//! `floor`: what one delivery costs the kernel before any server code runs. A thread pinned
//! to the servers' core writes one SSE-sized frame to each of N connected loopback sockets,
//! round after round, while this process's runtime (on the generators' core) reads them like
//! subscribers would. On loopback the writing core also runs the receiver's TCP input and its
//! wake-up, so this is the least time any server that writes each subscriber its own segment
//! needs to deliver one event to N subscribers on this machine.

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

/// Per-write cost at `n` sockets: (median, best) in microseconds.
pub async fn measure(n: usize, core: Option<usize>) -> anyhow::Result<(f64, f64)> {
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
    let drains: Vec<_> = readers
        .into_iter()
        .map(|mut reader| {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                while matches!(reader.read(&mut buf).await, Ok(k) if k > 0) {}
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
        let frame = [b'x'; FRAME];
        let mut rounds = Vec::with_capacity(ROUNDS);
        let mut outcome = Ok(());
        for _ in 0..ROUNDS {
            let started = Instant::now();
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
    for drain in drains {
        let _ = drain.await;
    }
    rounds.sort_by(f64::total_cmp);
    Ok((rounds[rounds.len() / 2], rounds[0]))
}
