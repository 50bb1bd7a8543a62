//! The kernel floor under a fan-out latency target: a thread on the servers' core plays a
//! server with no code of its own. It answers N subscribers' `GET /events` with an SSE head,
//! then writes each of them one event frame a round, at the fan-out's rate, stamped as a
//! POST stamps its event. The subscribers are the fan-out's own generator processes, which
//! read and time each frame as they do a server's. On loopback the writing core also runs the
//! receivers' TCP input, so the frames' p99 is the least any server that writes each
//! subscriber its own segment could reach here; a target below it is impossible here.

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    time::{Duration, Instant},
};

use anyhow::Context;

use crate::report::median;

/// How long the floor's server waits for a subscriber to connect or send its request.
const CONNECT_WAIT: Duration = Duration::from_secs(60);
/// How long the sockets stay idle between the head and the first round, as a fan-out's
/// subscribers wait for the others to connect: past Linux's least retransmission timeout, so
/// the first rounds start with quick ACKs, as the fan-out's do.
const IDLE: Duration = Duration::from_millis(300);
/// The head of the floor's SSE response, as funko-live's (with its first chunk).
const RESPONSE_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\nD\r\nretry: 2000\n\n\r\n";

/// Serves `n` subscribers on `listener` from a thread pinned to `core`: writes `rounds`
/// frames at `rate` a second, one `write` per subscriber a round. Returns the median
/// per-write cost of a round, in microseconds.
pub fn serve(
    listener: TcpListener,
    n: usize,
    rounds: usize,
    rate: f64,
    core: Option<usize>,
) -> tokio::sync::oneshot::Receiver<anyhow::Result<f64>> {
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        if let Some(core) = core {
            crate::pin_this_thread(core);
        }
        let _ = done_tx.send(rounds_of_writes(listener, n, rounds, rate));
    });
    done_rx
}

fn rounds_of_writes(
    listener: TcpListener,
    n: usize,
    rounds: usize,
    rate: f64,
) -> anyhow::Result<f64> {
    anyhow::ensure!(rounds > 0 && rate > 0.0, "the floor needs rounds at a rate");
    let period = Duration::from_secs_f64(1.0 / rate);
    socket2::SockRef::from(&listener).set_read_timeout(Some(CONNECT_WAIT))?;
    let mut subscribers = Vec::with_capacity(n);
    for _ in 0..n {
        let (mut stream, _) = listener.accept().context("accepting a floor subscriber")?;
        stream.set_read_timeout(Some(CONNECT_WAIT))?;
        read_request(&mut stream)?;
        stream.set_nodelay(true)?;
        stream.write_all(RESPONSE_HEAD)?;
        subscribers.push(stream);
    }
    std::thread::sleep(IDLE);
    let mut costs = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let started = Instant::now();
        let frame = sse_frame(round, crate::clock::now_ns());
        for subscriber in &mut subscribers {
            subscriber
                .write_all(&frame)
                .context("writing to a floor subscriber")?;
        }
        costs.push(started.elapsed().as_secs_f64() * 1e6 / n as f64);
        std::thread::sleep(period.saturating_sub(started.elapsed()));
    }
    Ok(median(&costs))
}

/// Reads a request's head (up to its blank line); the floor's server answers any.
fn read_request(stream: &mut TcpStream) -> anyhow::Result<()> {
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 512];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let got = stream
            .read(&mut buf)
            .context("reading a floor subscriber's request")?;
        anyhow::ensure!(got > 0, "a floor subscriber closed before its request");
        head.extend_from_slice(&buf[..got]);
    }
    Ok(())
}

/// Round `round`'s event as one chunk of an SSE response, about the size of funko-live's
/// frame of a Funko update, its description carrying `stamp` where the generator looks.
fn sse_frame(round: usize, stamp: u64) -> Vec<u8> {
    let id = 1_000_000 + round as u64;
    let event = format!(
        "id: {id}\ndata: {{\"id\":\"{id}\",\"entity\":\"FUNKOS\",\"type\":\"UPDATE\",\"data\":\
         {{\"category\":\"DISNEY\",\"createdAt\":\"2026-01-01T00:00:00.000Z\",\
         \"description\":\"bench t={stamp}\",\"id\":1,\"image\":\"/storage/placeholder.png\",\
         \"isDeleted\":false,\"name\":\"floor-1\",\"price\":9.99,\"stock\":1,\
         \"updatedAt\":\"2026-01-01T00:00:00.000Z\",\"version\":{round}}},\
         \"createdAt\":\"2026-01-01T00:00:00.000Z\"}}\n\n"
    );
    let mut chunk = format!("{:X}\r\n", event.len()).into_bytes();
    chunk.extend_from_slice(event.as_bytes());
    chunk.extend_from_slice(b"\r\n");
    chunk
}
