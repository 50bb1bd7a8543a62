//! The soak's clients: writers that change Funkos over REST on one instance each, and
//! subscribers on SSE, long-poll, `/ws` and Socket.IO that record everything they receive and,
//! whenever they are cut off (or hear nothing for too long), reconnect by cursor to a random
//! instance.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicI64, Ordering},
    },
    time::Duration,
};

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use super::check::{Filter, Item, Outcome, SubRecord, WriteOp, WriteRecord};
use crate::http::{self, Conn, Dechunk, Framing};

/// The bearer token every instance accepts.
pub const TOKEN: &str = "soak-token";
const AUTH: &str = "Authorization: Bearer soak-token\r\n";
/// The categories writers move Funkos between.
pub const CATEGORIES: [&str; 3] = ["Marvel", "Disney", "Anime"];
/// How long a request may take before its answer counts as lost.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

pub fn now_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// A small xorshift generator: the soak's choices need no cryptographic quality.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    pub fn chance(&mut self, p: f64) -> bool {
        (self.next() % 1_000_000) as f64 / 1_000_000.0 < p
    }

    /// A duration between `lo` and `hi` seconds.
    pub fn secs(&mut self, lo: f64, hi: f64) -> Duration {
        Duration::from_secs_f64(lo + (hi - lo) * (self.below(1000) as f64 / 1000.0))
    }
}

/// One REST request on a fresh or kept connection, bounded by [`REQUEST_TIMEOUT`]. `None`
/// when no answer came.
pub async fn request(
    conn: &mut Option<Conn>,
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Option<http::Response> {
    let attempt = async {
        if conn.is_none() {
            *conn = Some(Conn::open(addr, None).await?);
        }
        let c = conn.as_mut().expect("just opened");
        c.send(method, path, AUTH, body.map(str::as_bytes)).await?;
        c.read_response().await
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, attempt).await {
        Ok(Ok(res)) => Some(res),
        other => {
            if std::env::var_os("SOAK_DEBUG").is_some() {
                eprintln!("{method} {path}: {:?}", other.map(|r| r.map(|_| ())));
            }
            *conn = None;
            None
        }
    }
}

/// A writer on one instance: creates, renames and reprices, and deletes its own Funkos,
/// each write with a name never used before, so the checker finds it in the log.
pub async fn writer(
    index: usize,
    addr: SocketAddr,
    rate: f64,
    mut stop: watch::Receiver<bool>,
    out: Arc<Mutex<Vec<WriteRecord>>>,
) {
    let mut rng = Rng::new(index as u64 + 1000);
    let mut conn = None;
    let mut live: Vec<i64> = Vec::new();
    let mut seq = 0u64;
    let gap = Duration::from_secs_f64(1.0 / rate.max(0.01));
    while !*stop.borrow() {
        let pause = gap.mul_f64(0.5 + rng.below(1000) as f64 / 1000.0);
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            _ = stop.changed() => break,
        }
        seq += 1;
        let blue = if rng.chance(0.5) { " blue" } else { "" };
        let name = format!("w{index}-{seq}{blue}");
        let price = 5 + rng.below(21);
        let category = CATEGORIES[rng.below(3) as usize];
        let description = if rng.chance(0.3) {
            "a Blue one"
        } else {
            "a plain one"
        };
        let roll = rng.below(10);
        let (op, funko, method, path, body) = if live.len() < 3 || roll < 4 {
            let body = json!({"name": name, "description": description, "price": price,
                              "stock": rng.below(100), "category": category});
            (
                WriteOp::Create,
                None,
                "POST",
                "/funkos".to_owned(),
                Some(body),
            )
        } else if roll < 8 {
            let id = live[rng.below(live.len() as u64) as usize];
            let mut body = json!({"name": name});
            if rng.chance(0.5) {
                body["price"] = json!(price);
            }
            if rng.chance(0.5) {
                body["category"] = json!(category);
            }
            if rng.chance(0.3) {
                body["description"] = json!(description);
            }
            (
                WriteOp::Update,
                Some(id),
                "PATCH",
                format!("/funkos/{id}"),
                Some(body),
            )
        } else {
            let id = live.swap_remove(rng.below(live.len() as u64) as usize);
            (
                WriteOp::Delete,
                Some(id),
                "DELETE",
                format!("/funkos/{id}"),
                None,
            )
        };
        let body = body.map(|b| b.to_string());
        let answer = request(&mut conn, addr, method, &path, body.as_deref()).await;
        let outcome = match &answer {
            Some(res) if (200..300).contains(&res.status) => Outcome::Acked,
            Some(res) if res.status < 500 => Outcome::Refused(res.status),
            Some(res) if std::env::var_os("SOAK_DEBUG").is_some() => {
                eprintln!(
                    "{method} {path}: {} {}",
                    res.status,
                    String::from_utf8_lossy(&res.body)
                );
                Outcome::Unknown
            }
            _ => Outcome::Unknown,
        };
        let name = if op == WriteOp::Delete {
            String::new()
        } else {
            name
        };
        // A Funko whose update was lost may have been renamed: it stays, by id. One whose
        // delete may have committed is not written again (it left `live` already).
        if let (WriteOp::Create, Outcome::Acked, Some(res)) = (op, outcome, &answer)
            && let Some(id) = serde_json::from_slice::<Value>(&res.body)
                .ok()
                .and_then(|v| v["id"].as_i64())
        {
            live.push(id);
        }
        if matches!(outcome, Outcome::Unknown) {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        out.lock().expect("records").push(WriteRecord {
            op,
            name,
            funko,
            outcome,
        });
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Sse,
    Poll,
    Ws,
    SocketIo,
}

impl Transport {
    pub const ALL: [Self; 4] = [Self::Sse, Self::Poll, Self::Ws, Self::SocketIo];

    pub fn name(self) -> &'static str {
        match self {
            Self::Sse => "sse",
            Self::Poll => "poll",
            Self::Ws => "ws",
            Self::SocketIo => "socketio",
        }
    }
}

/// What every subscriber shares: where the instances are and when to stop.
#[derive(Clone)]
pub struct Shared {
    pub addrs: Arc<Vec<SocketAddr>>,
    /// Seconds of silence after which a connection counts as dead.
    pub silence: Duration,
    /// Set when the subscribers must stop, whether caught up or not.
    pub stop: watch::Receiver<bool>,
    /// Seconds a subscriber sometimes stays away after a loss: past retention, so it is
    /// reset (or, on Socket.IO, not recovered).
    pub away: f64,
    /// Cleared once the faults are over: subscribers then stay connected and catch up.
    pub restless: watch::Receiver<bool>,
}

/// A subscriber's record and its cursor, which the harness watches to see it catch up.
pub struct Sub {
    pub record: Mutex<SubRecord>,
    pub cursor: AtomicI64,
}

impl Sub {
    pub fn new(name: String, transport: Transport, filter: Filter, start: i64) -> Arc<Self> {
        Arc::new(Self {
            record: Mutex::new(SubRecord {
                name,
                transport: transport.name(),
                filter,
                start,
                items: Vec::new(),
                connects: 0,
                recovered: 0,
                aways: 0,
            }),
            cursor: AtomicI64::new(start),
        })
    }

    fn push(&self, item: Item) {
        match item {
            Item::Event { id, .. } | Item::Reset { cursor: id, .. } | Item::Cursor(id) => {
                self.cursor.fetch_max(id, Ordering::Relaxed);
            }
            Item::Lost { .. } => {}
        }
        self.record.lock().expect("record").items.push(item);
    }

    fn cursor(&self) -> i64 {
        self.cursor.load(Ordering::Relaxed)
    }

    fn filter(&self) -> Filter {
        self.record.lock().expect("record").filter.clone()
    }

    fn connected(&self) {
        self.record.lock().expect("record").connects += 1;
    }
}

/// The filter as query parameters (empty for all).
fn query(filter: &Filter) -> String {
    match filter {
        Filter::All => String::new(),
        other => other.name(),
    }
}

/// Records a change event from its JSON.
fn on_event(sub: &Sub, json: &Value) -> anyhow::Result<()> {
    let id = cursor_of(&json["id"]).context("an event without an id")?;
    sub.push(Item::Event {
        id,
        view: json["view"].as_str().map(str::to_owned),
        at_ms: now_ms(),
    });
    Ok(())
}

fn on_reset(sub: &Sub, json: &Value) -> anyhow::Result<()> {
    let cursor = cursor_of(&json["cursor"]).context("a reset without a cursor")?;
    sub.push(Item::Reset {
        cursor,
        at_ms: now_ms(),
    });
    Ok(())
}

fn cursor_of(v: &Value) -> Option<i64> {
    v.as_str()?.parse().ok()
}

/// Runs a subscriber until told to stop: connects to a random instance, reads until the
/// connection ends or goes silent, records the loss, and comes back after its cursor.
pub async fn subscriber(sub: Arc<Sub>, transport: Transport, shared: Shared, seed: u64) {
    let mut rng = Rng::new(seed);
    // Socket.IO: the session to recover and the last offset it gave.
    let mut sio = SioState::default();
    let mut stop = shared.stop.clone();
    while !*stop.borrow() {
        let addr = shared.addrs[rng.below(shared.addrs.len() as u64) as usize];
        // While the faults go on, a subscriber also leaves on its own now and then.
        let lifetime = if *shared.restless.borrow() {
            rng.secs(5.0, 40.0)
        } else {
            Duration::from_secs(3600)
        };
        let run = async {
            match transport {
                Transport::Sse => sse(&sub, addr, &shared).await,
                Transport::Poll => poll(&sub, addr, &shared).await,
                Transport::Ws => ws(&sub, addr, &shared).await,
                Transport::SocketIo => socketio(&sub, addr, &shared, &mut sio).await,
            }
        };
        let ended = tokio::select! {
            r = run => Some(r),
            () = tokio::time::sleep(lifetime) => Some(Ok(())),
            _ = stop.wait_for(|s| *s) => None,
        };
        if ended.is_none() {
            break;
        }
        // A subscriber that stays away counts its catch-up from its return.
        let mut restless = shared.restless.clone();
        if *restless.borrow() && rng.chance(0.15) {
            let away = rng.secs(shared.away * 0.5, shared.away * 1.5);
            sub.record.lock().expect("record").aways += 1;
            tokio::select! {
                () = tokio::time::sleep(away) => {}
                _ = restless.wait_for(|r| !*r) => {}
                _ = stop.wait_for(|s| *s) => break,
            }
        }
        sub.push(Item::Lost { at_ms: now_ms() });
        tokio::select! {
            () = tokio::time::sleep(rng.secs(0.1, 0.6)) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
    }
}

async fn within<T>(
    limit: Duration,
    f: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    tokio::time::timeout(limit, f)
        .await
        .map_err(|_| anyhow::anyhow!("silent for {limit:?}"))?
}

async fn sse(sub: &Sub, addr: SocketAddr, shared: &Shared) -> anyhow::Result<()> {
    let mut conn = within(shared.silence, Conn::open(addr, None)).await?;
    let mut path = format!("/events?lastEventId={}", sub.cursor());
    let q = query(&sub.filter());
    if !q.is_empty() {
        path = format!("{path}&{q}");
    }
    conn.send("GET", &path, "Accept: text/event-stream\r\n", None)
        .await?;
    let head = within(shared.silence, conn.read_head()).await?;
    if head.status != 200 {
        bail!("GET {path} answered {}", head.status);
    }
    sub.connected();
    let mut dechunk = (head.framing == Framing::Chunked).then(Dechunk::default);
    let mut text = Vec::new();
    loop {
        let more = within(
            shared.silence,
            conn.read_stream(dechunk.as_mut(), &mut text),
        )
        .await?;
        while let Some(end) = memchr::memmem::find(&text, b"\n\n") {
            let frame = String::from_utf8_lossy(&text[..end]).into_owned();
            text.drain(..end + 2);
            let (mut id, mut event, mut data) = (None, None, String::new());
            for line in frame.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    id = Some(v.trim().to_owned());
                } else if let Some(v) = line.strip_prefix("event:") {
                    event = Some(v.trim().to_owned());
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim_start());
                }
            }
            if event.as_deref() == Some("reset") {
                on_reset(sub, &serde_json::from_str(&data)?)?;
            } else if !data.is_empty() {
                on_event(sub, &serde_json::from_str(&data)?)?;
            } else if let Some(id) = id {
                sub.push(Item::Cursor(id.parse()?));
            }
        }
        if !more {
            bail!("the stream ended");
        }
    }
}

async fn poll(sub: &Sub, addr: SocketAddr, shared: &Shared) -> anyhow::Result<()> {
    let mut conn = within(shared.silence, Conn::open(addr, None)).await?;
    let q = query(&sub.filter());
    let wait = shared.silence.as_secs().saturating_sub(2).clamp(1, 25);
    sub.connected();
    loop {
        let mut path = format!(
            "/events/poll?after={}&timeout={wait}&limit=200",
            sub.cursor()
        );
        if !q.is_empty() {
            path = format!("{path}&{q}");
        }
        conn.send("GET", &path, "", None).await?;
        let res = within(shared.silence, conn.read_response()).await?;
        if res.status != 200 {
            bail!("GET {path} answered {}", res.status);
        }
        let body: Value = serde_json::from_slice(&res.body)?;
        if body.get("reset").is_some() {
            on_reset(sub, &body["reset"])?;
            continue;
        }
        for event in body["events"]
            .as_array()
            .context("a poll answer without events")?
        {
            on_event(sub, event)?;
        }
        let cursor = cursor_of(&body["cursor"]).context("a poll answer without a cursor")?;
        sub.push(Item::Cursor(cursor));
    }
}

type WsStream = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

async fn open_ws(addr: SocketAddr, path: &str, shared: &Shared) -> anyhow::Result<WsStream> {
    let stream = within(shared.silence, http::connect(addr, None)).await?;
    let url = format!("ws://{addr}{path}");
    let (ws, _) = within(shared.silence, async {
        Ok(tokio_tungstenite::client_async(url, stream).await?)
    })
    .await?;
    Ok(ws)
}

async fn ws(sub: &Sub, addr: SocketAddr, shared: &Shared) -> anyhow::Result<()> {
    let mut path = format!("/ws?after={}", sub.cursor());
    let q = query(&sub.filter());
    if !q.is_empty() {
        path = format!("{path}&{q}");
    }
    let mut ws = open_ws(addr, &path, shared).await?;
    sub.connected();
    loop {
        let msg = within(shared.silence, async { Ok(ws.next().await) }).await?;
        match msg {
            Some(Ok(Message::Text(text))) => {
                let frame: Value = serde_json::from_str(text.as_str())?;
                match frame["op"].as_str() {
                    None => on_event(sub, &frame)?,
                    Some("reset") => on_reset(sub, &frame)?,
                    Some("welcome" | "pong") => {}
                    Some(other) => bail!("a {other} frame: {text}"),
                }
            }
            Some(Ok(Message::Close(_))) | None => bail!("the socket closed"),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
        }
    }
}

#[derive(Default)]
struct SioState {
    pid: Option<String>,
    offset: Option<String>,
}

/// The Socket.IO namespace for a filter: `/` for everything, the Funkos' for the rest.
pub fn sio_namespace(filter: &Filter) -> &'static str {
    match filter {
        Filter::All => "/",
        _ => crate::worker::SIO_NAMESPACE,
    }
}

/// Socket.IO v5 over Engine.IO v4's WebSocket transport, recovering by `pid` and `offset`.
async fn socketio(
    sub: &Sub,
    addr: SocketAddr,
    shared: &Shared,
    state: &mut SioState,
) -> anyhow::Result<()> {
    let filter = sub.filter();
    let nsp = sio_namespace(&filter);
    let mut ws = open_ws(addr, "/socket.io/?EIO=4&transport=websocket", shared).await?;
    let open = sio_next(&mut ws, shared).await?;
    anyhow::ensure!(open.starts_with('0'), "no Engine.IO open packet: {open:?}");
    let mut auth = serde_json::Map::new();
    if let Filter::View(view) = &filter {
        if let Some(c) = &view.category {
            auth.insert("category".into(), json!(c));
        }
        if let Some(q) = &view.q {
            auth.insert("q".into(), json!(q));
        }
        if let Some(m) = view.min_cents {
            auth.insert("minPrice".into(), json!(m as f64 / 100.0));
        }
        if let Some(m) = view.max_cents {
            auth.insert("maxPrice".into(), json!(m as f64 / 100.0));
        }
    }
    match (&state.pid, &state.offset) {
        (Some(pid), Some(offset)) => {
            auth.insert("pid".into(), json!(pid));
            auth.insert("offset".into(), json!(offset));
        }
        _ => {
            auth.insert("cursor".into(), json!(sub.cursor().to_string()));
        }
    }
    let prefix = if nsp == "/" {
        String::new()
    } else {
        format!("{nsp},")
    };
    ws.send(Message::text(format!("40{prefix}{}", Value::Object(auth))))
        .await?;
    loop {
        let packet = sio_next(&mut ws, shared).await?;
        let Some(rest) = packet.strip_prefix('4') else {
            continue;
        };
        let (kind, rest) = rest.split_at(rest.len().min(1));
        let body = rest.strip_prefix(&prefix).unwrap_or(rest);
        match kind {
            "0" => {
                let answer: Value = serde_json::from_str(body)?;
                let pid = answer["pid"].as_str().map(str::to_owned);
                sub.connected();
                if pid.is_some() && pid == state.pid {
                    sub.record.lock().expect("record").recovered += 1;
                }
                state.pid = pid;
            }
            "4" => bail!("CONNECT refused: {packet}"),
            "2" => {
                let args: Vec<Value> = serde_json::from_str(body)?;
                let offset = args.last().and_then(Value::as_str).map(str::to_owned);
                match args.first().and_then(Value::as_str) {
                    Some("updates") => on_event(sub, &args[1])?,
                    Some("reset") => on_reset(sub, &args[1])?,
                    _ => {}
                }
                if offset.is_some() {
                    state.offset = offset;
                }
            }
            "1" => bail!("the server disconnected the namespace"),
            _ => {}
        }
    }
}

/// The next text packet, answering Engine.IO pings on the way.
async fn sio_next(ws: &mut WsStream, shared: &Shared) -> anyhow::Result<String> {
    loop {
        let msg = within(shared.silence, async { Ok(ws.next().await) }).await?;
        match msg {
            Some(Ok(Message::Text(t))) if t.as_str() == "2" => ws.send(Message::text("3")).await?,
            Some(Ok(Message::Text(t))) if t.as_str() == "1" => bail!("the session closed"),
            Some(Ok(Message::Text(t))) => return Ok(t.as_str().to_owned()),
            Some(Ok(Message::Close(_))) | None => bail!("the socket closed"),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
        }
    }
}
