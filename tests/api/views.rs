//! Views: a stream subscription with the list filters of `GET /funkos` (`category`, `q`,
//! `minPrice`, `maxPrice`) gets the events that move a Funko into, within or out of the list,
//! tagged `enter`, `update` or `leave`, on every transport. The rule (upsert on `enter` and
//! `update`, remove on `leave`) applied from a list read's `Stream-Cursor` keeps the list equal
//! to a fresh read, whatever the writes, on SQLite and on two PostgreSQL instances, for
//! subscribers that start at any point and resume mid-way.

use std::{collections::BTreeMap, collections::VecDeque, time::Duration};

use futures_util::{SinkExt, StreamExt};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{
    cluster::instance_on,
    helpers::{Backend, SseClient, TestApp, WAIT, WsClient, WsMessage, WsStream, spawn_app},
};

/// How long a subscriber may take to catch up once the writes are done.
const SETTLE: Duration = Duration::from_secs(30);

/// A filter as a query string and as the JSON fields of a `/ws` frame or a Socket.IO `auth`.
#[derive(Clone, Debug)]
struct Filters(Vec<(&'static str, Value)>);

impl Filters {
    fn query(&self) -> String {
        self.0
            .iter()
            .map(|(key, value)| match value {
                Value::String(text) => {
                    let text: String =
                        url::form_urlencoded::byte_serialize(text.as_bytes()).collect();
                    format!("{key}={text}")
                }
                other => format!("{key}={other}"),
            })
            .collect::<Vec<_>>()
            .join("&")
    }

    fn fields(&self) -> serde_json::Map<String, Value> {
        self.0
            .iter()
            .map(|(key, value)| ((*key).to_owned(), value.clone()))
            .collect()
    }
}

/// The filters subscribers pick from: each of the four alone, with other cases than the
/// data's, and together.
fn filter_set() -> Vec<Filters> {
    vec![
        Filters(vec![("category", json!("DISNEY"))]),
        Filters(vec![("category", json!("anime"))]),
        Filters(vec![("category", json!("Manga"))]),
        Filters(vec![("q", json!("GROOT"))]),
        Filters(vec![("minPrice", json!(10))]),
        Filters(vec![("maxPrice", json!(12.5))]),
        Filters(vec![
            ("category", json!("disney")),
            ("minPrice", json!(5)),
            ("maxPrice", json!(20)),
        ]),
        Filters(vec![("q", json!("an")), ("maxPrice", json!(25))]),
    ]
}

/// xorshift64*: a seeded, reproducible sequence (the seed is printed).
pub(crate) struct Rng(pub u64);

impl Rng {
    pub(crate) fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize % n
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

#[derive(Clone, Copy, Debug)]
enum Transport {
    Sse,
    Poll,
    Ws,
    SocketIo,
}

const TRANSPORTS: [Transport; 4] = [
    Transport::Sse,
    Transport::Poll,
    Transport::Ws,
    Transport::SocketIo,
];

enum Feed {
    Sse(SseClient),
    /// Events of the last poll not applied yet.
    Poll(VecDeque<Value>),
    Ws(WsClient),
    SocketIo(WsStream),
}

/// One subscriber: the list it keeps by the rule, from a list read and then the stream.
struct Follower {
    label: String,
    base: String,
    transport: Transport,
    filters: Filters,
    list: BTreeMap<i64, Value>,
    /// The last cursor it was given (an event's id, or an SSE `id:` line, a poll's cursor).
    cursor: String,
    feed: Feed,
    client: reqwest::Client,
    /// How many events of each kind of view change it applied.
    seen: BTreeMap<String, usize>,
}

impl Follower {
    async fn start(app: &TestApp, transport: Transport, filters: Filters) -> Self {
        let read = app
            .get(&format!("/funkos?{}&limit=100", filters.query()))
            .await;
        assert_eq!(read.status(), StatusCode::OK);
        let cursor = read.headers()["stream-cursor"].to_str().unwrap().to_owned();
        let page: Value = read.json().await.unwrap();
        assert!(
            page["meta"]["total"].as_i64().unwrap() <= 100,
            "one page holds the list"
        );
        let list = page["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| (f["id"].as_i64().unwrap(), f.clone()))
            .collect();
        let mut follower = Self {
            label: format!("{transport:?} {}", filters.query()),
            base: app.url(""),
            transport,
            filters,
            list,
            cursor,
            feed: Feed::Poll(VecDeque::new()),
            client: app.client.clone(),
            seen: BTreeMap::new(),
        };
        follower.connect(app).await;
        follower
    }

    /// (Re)opens the stream after the cursor, with the filters, on `app`.
    async fn connect(&mut self, app: &TestApp) {
        self.base = app.url("");
        let query = self.filters.query();
        self.feed = match self.transport {
            Transport::Sse => Feed::Sse(
                app.sse(&format!("/events?{query}"), Some(self.cursor.as_str()))
                    .await,
            ),
            Transport::Poll => Feed::Poll(VecDeque::new()),
            Transport::Ws => {
                let (ws, welcome) = app
                    .ws_welcomed(&format!("/ws?after={}&{query}", self.cursor))
                    .await;
                assert_eq!(welcome["op"], "welcome");
                Feed::Ws(ws)
            }
            Transport::SocketIo => {
                let url = app.ws_url("/socket.io/?EIO=4&transport=websocket");
                let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
                let open = next_text(&mut ws).await.expect("the handshake");
                assert!(open.starts_with('0'), "{open}");
                let mut auth = self.filters.fields();
                auth.insert("cursor".into(), self.cursor.clone().into());
                ws.send(WsMessage::text(format!(
                    "40/ws/v1/funkos,{}",
                    Value::Object(auth)
                )))
                .await
                .unwrap();
                let connected = next_text(&mut ws).await.unwrap();
                assert!(connected.starts_with("40/ws/v1/funkos,{"), "{connected}");
                Feed::SocketIo(ws)
            }
        };
    }

    /// Applies the next event, if one comes within `wait`; false when none did.
    async fn step(&mut self, wait: Duration) -> bool {
        let event = match &mut self.feed {
            Feed::Sse(sse) => loop {
                let Ok(frame) = sse.next_frame_within(wait).await else {
                    return false;
                };
                let frame = frame.expect("the stream stays open");
                if let Some(id) = &frame.id {
                    self.cursor = id.clone();
                }
                if frame.is_event() {
                    assert_ne!(frame.event.as_deref(), Some("reset"), "{}", self.label);
                    break frame.json();
                }
            },
            Feed::Poll(pending) => {
                if pending.is_empty() {
                    let secs = wait.as_secs().max(1);
                    let url = format!(
                        "{}/events/poll?after={}&timeout={secs}&{}",
                        self.base,
                        self.cursor,
                        self.filters.query()
                    );
                    let answer: Value = self
                        .client
                        .get(url)
                        .send()
                        .await
                        .unwrap()
                        .json()
                        .await
                        .unwrap();
                    assert!(answer.get("reset").is_none(), "{}: {answer}", self.label);
                    pending.extend(answer["events"].as_array().unwrap().iter().cloned());
                    if pending.is_empty() {
                        self.cursor = answer["cursor"].as_str().unwrap().to_owned();
                        return false;
                    }
                    // The cursor moves to the answer's once its events are applied.
                    let cursor = answer["cursor"].clone();
                    pending.push_back(json!({"cursorOnly": cursor}));
                }
                let event = pending.pop_front().unwrap();
                if let Some(cursor) = event.get("cursorOnly") {
                    self.cursor = cursor.as_str().unwrap().to_owned();
                    return true;
                }
                event
            }
            Feed::Ws(ws) => match ws.next_message_within(wait).await {
                Err(()) => return false,
                Ok(Some(WsMessage::Text(text))) => {
                    let frame: Value = serde_json::from_str(&text).unwrap();
                    assert!(frame.get("op").is_none(), "{}: {frame}", self.label);
                    frame
                }
                Ok(other) => panic!("{}: {other:?}", self.label),
            },
            Feed::SocketIo(ws) => loop {
                let Ok(text) = tokio::time::timeout(wait, next_text(ws)).await else {
                    return false;
                };
                let text = text.expect("the socket stays open");
                if text == "2" {
                    ws.send(WsMessage::text("3")).await.unwrap();
                    continue;
                }
                let packet: Value =
                    serde_json::from_str(text.strip_prefix("42/ws/v1/funkos,").unwrap()).unwrap();
                match packet[0].as_str() {
                    Some("updates") => {
                        assert_eq!(packet[2], packet[1]["id"], "the offset is the cursor");
                        break packet[1].clone();
                    }
                    Some("connection") => continue,
                    _ => panic!("{}: {packet}", self.label),
                }
            },
        };
        self.apply(&event);
        true
    }

    /// The rule, and what the contract promises of each event.
    fn apply(&mut self, event: &Value) {
        let id = event["data"]["id"].as_i64().unwrap();
        assert_eq!(event["entity"], "FUNKOS", "{}: {event}", self.label);
        let known = self.list.contains_key(&id);
        *self
            .seen
            .entry(event["view"].as_str().unwrap_or("none").to_owned())
            .or_default() += 1;
        match event["view"].as_str() {
            Some("enter") => {
                assert!(!known, "{}: enter of a Funko it has: {event}", self.label);
                self.list.insert(id, event["data"].clone());
            }
            Some("update") => {
                assert!(known, "{}: update of a Funko it lacks: {event}", self.label);
                self.list.insert(id, event["data"].clone());
            }
            Some("leave") => {
                assert!(known, "{}: leave of a Funko it lacks: {event}", self.label);
                self.list.remove(&id);
            }
            _ => panic!("{}: an event without view: {event}", self.label),
        }
        self.cursor = event["id"].as_str().unwrap().to_owned();
    }

    /// Reads until its list equals a fresh read with its filters (and, where the transport
    /// says so, its cursor reached `head`); fails after [`SETTLE`].
    async fn settle(&mut self, app: &TestApp, head: i64) {
        let read: Value = app
            .get(&format!("/funkos?{}&limit=100", self.filters.query()))
            .await
            .json()
            .await
            .unwrap();
        let expected: BTreeMap<i64, Value> = read["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| (f["id"].as_i64().unwrap(), f.clone()))
            .collect();
        let deadline = tokio::time::Instant::now() + SETTLE;
        let cursor_known = matches!(self.transport, Transport::Sse | Transport::Poll);
        while self.list != expected || (cursor_known && self.cursor.parse::<i64>().unwrap() < head)
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{}: never settled at cursor {} (head {head});\nhas {:?}\nwants {:?}",
                self.label,
                self.cursor,
                self.list.keys().collect::<Vec<_>>(),
                expected.keys().collect::<Vec<_>>()
            );
            self.step(Duration::from_secs(1)).await;
        }
    }
}

/// The next text frame of a Socket.IO WebSocket; `None` once it is closed.
async fn next_text(ws: &mut WsStream) -> Option<String> {
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame in time")
        {
            Some(Ok(WsMessage::Text(text))) => return Some(text.to_string()),
            Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => continue,
            _ => return None,
        }
    }
}

/// One writer's random writes at `app`: creates, patches that move Funkos across categories,
/// prices and names, deletes, and renames of the category `anime`/`manga` (whose Funkos then
/// leave one view and enter another without an event of their own). Refusals a race with the
/// other writer explains (404, 409, 412, 422) are fine; nothing else is.
pub(crate) async fn write_randomly(
    app: &TestApp,
    writer: usize,
    rng: &mut Rng,
    writes: usize,
    renamable: i64,
) {
    const WORDS: [&str; 5] = ["Groot", "Stitch", "Banana", "Anakin", "Thor"];
    let mut mine: Vec<i64> = Vec::new();
    for n in 0..writes {
        let category = *rng.pick(&["DISNEY", "OTROS", "SUPERHEROES", "ANIME", "MANGA"]);
        let price = (rng.below(3000) + 1) as f64 / 100.0;
        let name = format!("{} {writer}-{n}", rng.pick(&WORDS));
        let description = rng
            .below(3)
            .eq(&0)
            .then(|| format!("a {} figure", rng.pick(&WORDS).to_lowercase()));
        let response = match rng.below(10) {
            0..=3 => {
                let body = json!({"name": name, "price": price, "stock": 1,
                                  "category": category, "description": description});
                let response = app.post("/funkos", body).await;
                if response.status() == StatusCode::CREATED {
                    let funko: Value = response.json().await.unwrap();
                    mine.push(funko["id"].as_i64().unwrap());
                    continue;
                }
                response
            }
            4..=7 if !mine.is_empty() => {
                let id = *rng.pick(&mine);
                let patch = match rng.below(4) {
                    0 => json!({"category": category}),
                    1 => json!({"price": price}),
                    2 => json!({"name": name, "description": description}),
                    _ => json!({"category": category, "price": price}),
                };
                app.patch(&format!("/funkos/{id}"), patch).await
            }
            8 if !mine.is_empty() => {
                let id = mine.swap_remove(rng.below(mine.len()));
                app.delete(&format!("/funkos/{id}")).await
            }
            _ => {
                let to = if rng.below(2) == 0 { "ANIME" } else { "MANGA" };
                app.put(&format!("/categories/{renamable}"), json!({"name": to}))
                    .await
            }
        };
        let status = response.status().as_u16();
        assert!(
            matches!(status, 200..=299 | 404 | 409 | 412 | 422),
            "writer {writer}: {status} {}",
            response.text().await.unwrap()
        );
    }
}

/// The property: random writes from two writers (on two instances with PostgreSQL), followers
/// of random filters on every transport, some from the start, some from a read mid-way, some
/// resuming mid-way, on either instance: each ends equal to a fresh read.
async fn every_view_stays_equal_to_its_query(backend: Backend) {
    let seed = std::env::var("FUNKO_VIEWS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    println!("views property seed: {seed} (FUNKO_VIEWS_SEED replays it)");
    let mut rng = Rng(seed);
    let a = spawn_app(backend).await;
    let b = match backend {
        Backend::Postgres => Some(instance_on(&a.database_url).await),
        Backend::Sqlite => None,
    };
    let apps: Vec<&TestApp> = std::iter::once(&a).chain(b.as_ref()).collect();
    let anime = a.post("/categories", json!({"name": "ANIME"})).await;
    assert_eq!(anime.status(), StatusCode::CREATED);
    let renamable = anime.json::<Value>().await.unwrap()["id"].as_i64().unwrap();
    let filters = filter_set();

    let mut followers = Vec::new();
    for transport in TRANSPORTS {
        let app = *rng.pick(&apps);
        followers.push(Follower::start(app, transport, rng.pick(&filters).clone()).await);
    }
    let (mut rng1, mut rng2) = (Rng(rng.0 ^ 0x9E37), Rng(rng.0 ^ 0x7F4A));
    tokio::join!(
        write_randomly(apps[0], 1, &mut rng1, 30, renamable),
        write_randomly(apps.last().unwrap(), 2, &mut rng2, 30, renamable),
    );
    // Mid-way: followers that start from a read now, and some that read a little and
    // resume from their cursor, on any instance.
    for transport in TRANSPORTS {
        let app = *rng.pick(&apps);
        followers.push(Follower::start(app, transport, rng.pick(&filters).clone()).await);
    }
    for follower in followers.iter_mut().take(TRANSPORTS.len()) {
        for _ in 0..rng.below(5) {
            follower.step(Duration::from_millis(200)).await;
        }
        let app = *rng.pick(&apps);
        follower.connect(app).await;
    }
    tokio::join!(
        write_randomly(apps[0], 1, &mut rng1, 30, renamable),
        write_randomly(apps.last().unwrap(), 2, &mut rng2, 30, renamable),
    );
    let head: i64 = a.head().await.parse().unwrap();
    let mut seen = BTreeMap::<String, usize>::new();
    for follower in &mut followers {
        let app = apps
            .iter()
            .find(|app| app.url("") == follower.base)
            .unwrap();
        follower.settle(app, head).await;
        for (kind, n) in &follower.seen {
            *seen.entry(kind.clone()).or_default() += n;
        }
    }
    // The writes moved Funkos in, within and out of the views.
    for kind in ["enter", "update", "leave"] {
        assert!(
            seen.get(kind).is_some_and(|n| *n > 0),
            "no {kind} in {seen:?}"
        );
    }
    println!("views property: {seen:?}");
}

/// One Funko through a view, step by step, as the SSE stream and a long-poll tag it; a
/// category rename moves its Funkos out of one category's view and into the other's.
async fn a_funko_enters_changes_and_leaves_a_view(backend: Backend) {
    let app = spawn_app(backend).await;
    let start = app.head().await;
    let mut cheap = app
        .sse("/events?category=disney&maxPrice=20", Some(start.as_str()))
        .await;
    let funko = app.create_funko("Viewed").await;
    let path = format!("/funkos/{}", funko["id"]);
    for body in [
        json!({"price": 15}),          // update (in, in)
        json!({"price": 25}),          // leave (in, out)
        json!({"stock": 1}),           // not delivered (out, out)
        json!({"price": 5}),           // enter (out, in)
        json!({"category": "OTROS"}),  // leave
        json!({"category": "DISNEY"}), // enter
    ] {
        assert_eq!(app.patch(&path, body).await.status(), StatusCode::OK);
    }
    assert_eq!(app.delete(&path).await.status(), StatusCode::NO_CONTENT);
    let views: Vec<Value> = cheap
        .take_events(7)
        .await
        .iter()
        .map(|e| json!([e["type"], e["view"], e["data"]["price"]]))
        .collect();
    assert_eq!(
        views,
        [
            json!(["CREATE", "enter", 9.99]),
            json!(["UPDATE", "update", 15.0]),
            json!(["UPDATE", "leave", 25.0]),
            json!(["UPDATE", "enter", 5.0]),
            json!(["UPDATE", "leave", 5.0]),
            json!(["UPDATE", "enter", 5.0]),
            json!(["DELETE", "leave", 5.0]),
        ]
    );
    // The long-poll replays the same from the log.
    let polled: Value = app
        .get(&format!(
            "/events/poll?after={start}&category=DISNEY&maxPrice=20&timeout=0"
        ))
        .await
        .json()
        .await
        .unwrap();
    let polled: Vec<Value> = polled["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| json!([e["type"], e["view"], e["data"]["price"]]))
        .collect();
    assert_eq!(polled, views);

    // A rename: the category's Funkos leave its old name's view and enter the new one's.
    let category = app.post("/categories", json!({"name": "ANIME"})).await;
    let category_id = category.json::<Value>().await.unwrap()["id"].clone();
    let body = json!({"name": "Goku", "price": 9, "stock": 1, "category": "anime"});
    assert_eq!(
        app.post("/funkos", body).await.status(),
        StatusCode::CREATED
    );
    let cursor = app.head().await;
    let mut old = app
        .sse("/events?category=ANIME", Some(cursor.as_str()))
        .await;
    let mut new = app
        .sse("/events?category=MANGA", Some(cursor.as_str()))
        .await;
    let renamed = app
        .put(
            &format!("/categories/{category_id}"),
            json!({"name": "MANGA"}),
        )
        .await;
    assert_eq!(renamed.status(), StatusCode::OK);
    let left = old.next_event().await;
    let entered = new.next_event().await;
    assert_eq!(
        (left["view"].clone(), left["data"]["name"].clone()),
        (json!("leave"), json!("Goku"))
    );
    assert_eq!(
        (entered["view"].clone(), entered["data"]["category"].clone()),
        (json!("enter"), json!("MANGA"))
    );
    assert_eq!(left["id"], entered["id"]);
}

/// Bad view filters are refused on every transport as `GET /funkos` refuses them (400, the
/// field named), and so are views of categories or of some event types only.
async fn bad_view_filters_are_refused_on_every_transport(backend: Backend) {
    let app = spawn_app(backend).await;
    for query in [
        "minPrice=cheap",
        "maxPrice=1.001",
        "minPrice=-1",
        "category=DISNEY&types=CREATE",
        "entity=CATEGORIES&q=groot",
    ] {
        for path in ["/events", "/events/poll"] {
            let response = app.get(&format!("{path}?{query}&timeout=0")).await;
            assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{path}?{query}");
            let problem: Value = response.json().await.unwrap();
            assert_eq!(problem["status"], 400, "{problem}");
        }
        let response = app.get(&format!("/ws?{query}")).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "/ws?{query}");
    }
    let (mut ws, _) = app.ws_welcomed("/ws").await;
    ws.send_json(json!({"op": "subscribe", "requestId": 1, "minPrice": "ten"}))
        .await;
    let error = ws.next_json().await;
    assert_eq!(
        (error["op"].clone(), error["status"].clone()),
        (json!("error"), json!(400))
    );
    assert_eq!(error["body"]["errors"][0]["field"], "minPrice", "{error}");

    let url = app.ws_url("/socket.io/?EIO=4&transport=websocket");
    let (mut sio, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    next_text(&mut sio).await.unwrap();
    for connect in [
        r#"40/ws/v1/funkos,{"maxPrice":"cheap"}"#,
        r#"40/ws/v1/categories,{"q":"groot"}"#,
    ] {
        sio.send(WsMessage::text(connect)).await.unwrap();
        let refused = next_text(&mut sio).await.unwrap();
        assert!(refused.starts_with("44/ws/v1/"), "{connect}: {refused}");
    }
}

crate::backend_tests!(
    every_view_stays_equal_to_its_query,
    a_funko_enters_changes_and_leaves_a_view,
    bad_view_filters_are_refused_on_every_transport,
);
