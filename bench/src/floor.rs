//! `floor`: what one delivery costs the kernel before any server code runs. A thread pinned
//! to the servers' core plays a server with no code of its own: it answers N subscribers'
//! `GET /events` with an SSE response head, then writes one SSE frame to each of them,
//! round after round. The subscribers are the fan-out's own generator processes (on the
//! generators' core), which read, parse and time each frame exactly as they do a server's,
//! from the stamp the round put in it. On loopback the writing core also runs the receiver's
//! TCP input and its wake-up, so this is the least time any server that writes each
//! subscriber its own segment needs to deliver one event to N subscribers on this machine,
//! and the readers' p99 is the p99 a server with no code of its own would reach (before any
//! commit), seen by the same generator as the fan-out's.
//!
//! The readers must be the generator's own: what they do on their core moves the cost of
//! the writes on the servers' core. With in-process readers that did nothing but read, the
//! floor's quick-ACK rounds cost a sixth less per write than with a busy loop beside them on
//! the generators' core (medians of three alternations on 11-28: 9.5 against 11.5 µs), and
//! the generator parses each frame.
//!
//! The rounds have the fan-out's shape: each socket first carries a response head, then stays
//! idle as a subscriber waits for the others to connect, then takes as many rounds as the
//! fan-out has events, at its rate. Their cost is not even: a receiver acknowledges each of
//! the first 16 segments of a connection (and of a stream that was idle past its
//! retransmission timeout) at once, "quick ACKs", and on loopback that ACK is built and taken
//! in on the writing core, inside its `write`. Later segments are acknowledged by the reader's
//! `read` (on its own core) or a delayed-ACK timer. So the first 16 rounds cost more per
//! write, and they are reported apart.
//!
//! [`slow`] does the same for the slow-consumer scenario: what the non-reading sockets cost
//! the readers when no server code runs at all.

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use tokio::io::AsyncReadExt;

use crate::report::median;

/// The size of a frame in the slow-consumer floor (about an event's SSE frame).
const FRAME: usize = 400;
/// How long the sockets stay idle between the head and the first round: longer than Linux's
/// least retransmission timeout (200 ms), as for the fan-out's subscribers that connected
/// first, so the first round starts a quick-ACK phase of its own.
const IDLE: Duration = Duration::from_millis(300);
/// Segments a Linux receiver acknowledges at once at the start of a stream
/// (`TCP_MAX_QUICKACKS`).
const QUICK_ACKS: usize = 16;
/// How long the floor's server waits for a subscriber to connect or send its request.
const CONNECT_WAIT: Duration = Duration::from_secs(60);
/// The head of the floor's SSE response, as funko-live's (with its first chunk).
const RESPONSE_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\
date: Sat, 28 Nov 2026 15:00:00 GMT\r\n\r\nD\r\nretry: 2000\n\n\r\n";

/// What the floor's writes cost at N sockets, per round.
pub struct Costs {
    /// Per-write cost of the median round and of the best one, in microseconds.
    pub write_us: f64,
    pub write_us_best: f64,
    /// Per-write cost of the median round among the first [`QUICK_ACKS`] (each write also
    /// builds and takes in the receiver's ACK) and among the later ones.
    pub write_us_quick: f64,
    pub write_us_later: Option<f64>,
}

/// Serves `n` subscribers on `listener` as a server with no code of its own, from a thread
/// pinned to `core`: answers each one's request with [`RESPONSE_HEAD`], waits [`IDLE`],
/// then writes `rounds` frames at `rate` a second, one `write` to every subscriber a round,
/// each frame stamped with its round's start. Returns what the rounds cost.
pub fn serve(
    listener: TcpListener,
    n: usize,
    rounds: usize,
    rate: f64,
    core: Option<usize>,
) -> tokio::sync::oneshot::Receiver<anyhow::Result<Costs>> {
    on_pinned_thread(core, move || {
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
            // Pacing, not synchronisation: the readers drain between rounds, as subscribers
            // do between events.
            std::thread::sleep(period.saturating_sub(started.elapsed()));
        }
        let quick = costs.len().min(QUICK_ACKS);
        Ok(Costs {
            write_us: median(&costs),
            write_us_best: costs.iter().copied().fold(f64::INFINITY, f64::min),
            write_us_quick: median(&costs[..quick]),
            write_us_later: (costs.len() > quick).then(|| median(&costs[quick..])),
        })
    })
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

/// Round `round`'s event as one chunk of an SSE response: an update of one Funko as
/// funko-live frames it (~400 bytes with the chunk's framing), its description carrying
/// `stamp` where the generator looks for the publish time.
fn sse_frame(round: usize, stamp: u64) -> Vec<u8> {
    let id = 1_188_318_431_674_369 + round as u64;
    let event = format!(
        "id: {id}\ndata: {{\"id\":\"{id}\",\"entity\":\"FUNKOS\",\"type\":\"UPDATE\",\"data\":\
         {{\"category\":\"DISNEY\",\"createdAt\":\"2026-11-28T15:22:43.051Z\",\
         \"description\":\"bench t={stamp}\",\"id\":1,\"image\":\"/storage/placeholder.png\",\
         \"isDeleted\":false,\"name\":\"floor-1\",\"price\":9.99,\"stock\":1,\
         \"updatedAt\":\"2026-11-28T15:22:43.051Z\",\"version\":{round}}},\
         \"createdAt\":\"2026-11-28T15:22:43.051Z\"}}\n\n"
    );
    let mut chunk = format!("{:X}\r\n", event.len()).into_bytes();
    chunk.extend_from_slice(event.as_bytes());
    chunk.extend_from_slice(b"\r\n");
    chunk
}

/// `n` connected loopback socket pairs: (the writing end, with Nagle off; the reading end).
fn connect_pairs(n: usize) -> anyhow::Result<Vec<(TcpStream, TcpStream)>> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    (0..n)
        .map(|_| {
            let client = TcpStream::connect(addr).context("connecting a floor client")?;
            let (writer, _) = listener.accept()?;
            writer.set_nodelay(true)?;
            Ok((writer, client))
        })
        .collect()
}

/// A reader on this process's runtime: reads `FRAME`-byte frames, each starting with when
/// it was sent (nanoseconds after `epoch`), until the writer closes; returns every frame's
/// (sent, latency) in nanoseconds.
fn drain(
    reader: TcpStream,
    epoch: Instant,
) -> anyhow::Result<tokio::task::JoinHandle<Vec<(u64, u64)>>> {
    reader.set_nonblocking(true)?;
    let mut reader = tokio::net::TcpStream::from_std(reader)?;
    Ok(tokio::spawn(async move {
        let mut frame = [0u8; FRAME];
        let mut frames = Vec::new();
        while reader.read_exact(&mut frame).await.is_ok() {
            let sent = u64::from_le_bytes(frame[..8].try_into().expect("8 bytes"));
            let now = epoch.elapsed().as_nanos() as u64;
            frames.push((sent, now.saturating_sub(sent)));
        }
        frames
    }))
}

/// Runs `work` on a thread of its own pinned to `core` (the servers' core); its outcome
/// arrives on the returned channel.
fn on_pinned_thread<T: Send + 'static>(
    core: Option<usize>,
    work: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> tokio::sync::oneshot::Receiver<anyhow::Result<T>> {
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        if let Some(core) = core {
            crate::pin_this_thread(core);
        }
        let _ = done_tx.send(work());
    });
    done_rx
}

/// The `q`-quantile of `nanos` in milliseconds (sorts them).
fn quantile_ms(nanos: &mut [u64], q: f64) -> anyhow::Result<f64> {
    anyhow::ensure!(!nanos.is_empty(), "no frame arrived");
    nanos.sort_unstable();
    Ok(nanos[((nanos.len() - 1) as f64 * q) as usize] as f64 / 1e6)
}

/// What the slow-consumer floor found: the readers' frame p99 alone and beside the
/// non-reading sockets (over the whole run and after its first second), and what one
/// non-reading socket took before writes to it blocked.
pub struct SlowFloor {
    pub alone_p99_ms: f64,
    pub beside_p99_ms: f64,
    pub beside_settled_p99_ms: f64,
    pub held_kib: f64,
}

/// The slow-consumer scenario with no server code: `readers` sockets alone for `alone_s`
/// seconds, then `readers` beside `m` sockets that are never read for `beside_s` seconds,
/// `rate` frames a second written by a thread pinned to `core`.
///
/// The writer is the best a server can do without knowing which clients read: each round it
/// writes every frame that has come due since the last one to every socket in one
/// non-blocking `write`, in one shuffled order that does not put the readers first; a socket
/// that does not take its whole write waits in epoll, costing nothing, until it is writable,
/// and then resumes where it stopped. That is the hub's delivery without the commit, the
/// rendering or any bookkeeping, with `TCP_NOTSENT_LOWAT` as the server sets it.
pub async fn slow(
    readers: usize,
    m: usize,
    rate: f64,
    (alone_s, beside_s): (f64, f64),
    notsent_lowat: u32,
    core: Option<usize>,
) -> anyhow::Result<SlowFloor> {
    let mut alone = slow_phase(readers, 0, rate, alone_s, notsent_lowat, core).await?;
    let mut beside = slow_phase(readers, m, rate, beside_s, notsent_lowat, core).await?;
    Ok(SlowFloor {
        alone_p99_ms: quantile_ms(&mut alone.latencies, 0.99)?,
        beside_p99_ms: quantile_ms(&mut beside.latencies, 0.99)?,
        beside_settled_p99_ms: quantile_ms(&mut beside.settled, 0.99)?,
        held_kib: beside.held as f64 / m.max(1) as f64 / 1024.0,
    })
}

struct SlowPhase {
    /// Every frame's latency from when it came due to its reader, in nanoseconds.
    latencies: Vec<u64>,
    /// Those of frames that came due after the phase's first second.
    settled: Vec<u64>,
    /// Bytes the non-reading sockets held unread at the end.
    held: u64,
}

/// One socket the floor writes to.
struct Sink {
    stream: TcpStream,
    /// Bytes of the stream written so far.
    written: u64,
    /// Waiting in epoll for room.
    blocked: bool,
}

async fn slow_phase(
    readers: usize,
    m: usize,
    rate: f64,
    secs: f64,
    notsent_lowat: u32,
    core: Option<usize>,
) -> anyhow::Result<SlowPhase> {
    let mut sinks = Vec::with_capacity(readers + m);
    let mut reading = Vec::with_capacity(readers);
    let mut idle = Vec::with_capacity(m);
    for (i, (stream, client)) in connect_pairs(readers + m)?.into_iter().enumerate() {
        stream.set_nonblocking(true)?;
        socket2::SockRef::from(&stream).set_tcp_notsent_lowat(notsent_lowat)?;
        sinks.push(Sink {
            stream,
            written: 0,
            blocked: false,
        });
        if i < readers {
            reading.push(client);
        } else {
            idle.push(client);
        }
    }
    // One fixed order that knows nothing of who reads (a Fisher-Yates shuffle, xorshift).
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    for i in (1..sinks.len()).rev() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        sinks.swap(i, (seed % (i as u64 + 1)) as usize);
    }
    let total = (rate * secs) as u64;
    let epoch = Instant::now();
    // Frame k comes due `k / rate` seconds after the start.
    let start = epoch.elapsed().as_nanos() as u64 + 50_000_000;
    let due = move |k: u64| start + (k as f64 * 1e9 / rate) as u64;
    let settled_from = start + 1_000_000_000;
    let drains = reading
        .into_iter()
        .map(|reader| drain(reader, epoch))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let stop = Arc::new(AtomicBool::new(false));
    let idle = std::thread::spawn({
        let stop = stop.clone();
        move || hold_unread(idle, &stop)
    });
    let done = on_pinned_thread(core, move || {
        let outcome = write_rounds(&mut sinks, total, epoch, due);
        // The non-readers' clients are measured before anything closes.
        stop.store(true, Ordering::Relaxed);
        let held = idle
            .join()
            .map_err(|_| anyhow::anyhow!("the non-readers' thread died"));
        drop(sinks);
        outcome.and_then(|()| held?)
    });
    let held = done.await.context("the floor writer died")??;
    let mut phase = SlowPhase {
        latencies: Vec::new(),
        settled: Vec::new(),
        held,
    };
    for drain in drains {
        for (sent, latency) in drain.await.unwrap_or_default() {
            phase.latencies.push(latency);
            if sent >= settled_from {
                phase.settled.push(latency);
            }
        }
    }
    anyhow::ensure!(
        phase.latencies.len() as u64 == total * readers as u64,
        "{} of {} frames reached the readers",
        phase.latencies.len(),
        total * readers as u64
    );
    Ok(phase)
}

/// The non-reading clients, held until `stop` by a thread of their own (on the generators'
/// core) that waits in epoll on them and never reads, as a generator process holding only
/// non-readers does: on loopback every frame that reaches one wakes that thread at the
/// writing core's cost. Returns the bytes they held unread.
fn hold_unread(sockets: Vec<TcpStream>, stop: &AtomicBool) -> anyhow::Result<u64> {
    use rustix::event::epoll;
    let poller = epoll::create(epoll::CreateFlags::CLOEXEC)?;
    for socket in &sockets {
        let flags = epoll::EventFlags::IN | epoll::EventFlags::RDHUP | epoll::EventFlags::ET;
        epoll::add(&poller, socket, epoll::EventData::new_u64(0), flags)?;
    }
    let mut events = Vec::with_capacity(1024);
    let tick = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: 50_000_000,
    };
    while !stop.load(Ordering::Relaxed) {
        events.clear();
        epoll::wait(
            &poller,
            rustix::buffer::spare_capacity(&mut events),
            Some(&tick),
        )?;
    }
    Ok(sockets
        .iter()
        .map(|c| rustix::io::ioctl_fionread(c).unwrap_or(0))
        .sum())
}

/// The writer's rounds, until every frame is due and every socket that is not blocked has
/// all of them.
fn write_rounds(
    sinks: &mut [Sink],
    total: u64,
    epoch: Instant,
    due: impl Fn(u64) -> u64,
) -> anyhow::Result<()> {
    use rustix::event::epoll;
    let poller = epoll::create(epoll::CreateFlags::CLOEXEC)?;
    let mut events = Vec::with_capacity(1024);
    let at_once = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    let frame = |k: u64, out: &mut Vec<u8>| {
        out.extend_from_slice(&due(k).to_le_bytes());
        out.resize(out.len() + FRAME - 8, b'x');
    };
    let (mut produced, mut shared, mut own) = (0u64, Vec::new(), Vec::new());
    loop {
        let now = epoch.elapsed().as_nanos() as u64;
        let mut ready = produced;
        while ready < total && due(ready) <= now {
            ready += 1;
        }
        let behind = sinks
            .iter()
            .any(|s| !s.blocked && s.written < ready * FRAME as u64);
        if !behind {
            if ready == total {
                return Ok(());
            }
            let wait = due(ready).saturating_sub(now);
            std::thread::sleep(Duration::from_nanos(wait));
            continue;
        }
        // The round's frames, rendered once for every socket that has all before them.
        shared.clear();
        for k in produced..ready {
            frame(k, &mut shared);
        }
        let from = produced * FRAME as u64;
        for (i, sink) in sinks.iter_mut().enumerate() {
            let end = ready * FRAME as u64;
            if sink.blocked || sink.written >= end {
                continue;
            }
            let bytes: &[u8] = if sink.written == from {
                &shared
            } else {
                // Behind the round (it was blocked): its own bytes, at most 16 KiB.
                own.clear();
                let first = sink.written / FRAME as u64;
                let last = (first + 16 * 1024 / FRAME as u64).min(ready);
                for k in first..last {
                    frame(k, &mut own);
                }
                &own[(sink.written % FRAME as u64) as usize..]
            };
            let took = match (&sink.stream).write(bytes) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
                Err(e) => return Err(e.into()),
            };
            sink.written += took as u64;
            if took < bytes.len() {
                sink.blocked = true;
                epoll::add(
                    &poller,
                    &sink.stream,
                    epoll::EventData::new_u64(i as u64),
                    epoll::EventFlags::OUT | epoll::EventFlags::ONESHOT,
                )?;
            }
        }
        produced = ready;
        events.clear();
        epoll::wait(
            &poller,
            rustix::buffer::spare_capacity(&mut events),
            Some(&at_once),
        )?;
        for event in &events {
            let sink = &mut sinks[event.data.u64() as usize];
            sink.blocked = false;
            epoll::delete(&poller, &sink.stream)?;
        }
    }
}
