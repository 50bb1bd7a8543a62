//! The event log behind the REST writes (DESIGN §3 "The event": one event per committed
//! write, its `data` the resource as GET returns it, ids strictly increasing).

use std::collections::HashSet;

use futures_util::future::join_all;
use reqwest::{Method, Response, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, cursors, spawn_app, stream_cursor};

fn funko_body(name: &str) -> Value {
    json!({"name": name, "description": "d", "price": 12.5, "stock": 4, "category": "disney"})
}

/// The resource at `path` as `GET ...?includeDeleted=true` returns it.
async fn fetch(app: &TestApp, path: &str) -> Value {
    let response = app.get(&format!("{path}?includeDeleted=true")).await;
    assert_eq!(response.status(), StatusCode::OK, "GET {path}");
    response.json().await.unwrap()
}

/// Asserts that the write answered by `response` (with `status`) appended exactly one event
/// after `before`, whose id is the write's `Stream-Cursor`, about `entity`/`kind`, with the
/// resource at `path` as `data`. Returns the event and the write's cursor.
async fn assert_one_event(
    app: &TestApp,
    before: &str,
    response: Response,
    status: StatusCode,
    entity: &str,
    kind: &str,
    path: Option<&str>,
) -> (Value, Value) {
    assert_eq!(response.status(), status, "{entity} {kind}");
    let cursor = stream_cursor(&response);
    let body: Value = if status == StatusCode::NO_CONTENT {
        Value::Null
    } else {
        response.json().await.unwrap()
    };
    let path = match path {
        Some(path) => path.to_owned(),
        None => format!("/{}/{}", entity.to_lowercase(), body["id"]),
    };
    let events = app.events_through(before, &cursor).await;
    assert_eq!(
        events.len(),
        1,
        "one event for one {entity} {kind}: {events:?}"
    );
    let event = events.into_iter().next().unwrap();
    let mut keys: Vec<&str> = event
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(keys, ["createdAt", "data", "entity", "id", "type"]);
    assert_eq!(
        event["id"], cursor,
        "the write's Stream-Cursor is its event id"
    );
    assert_eq!(event["entity"], entity);
    assert_eq!(event["type"], kind);
    let created_at = event["createdAt"].as_str().expect("createdAt");
    assert!(
        chrono::DateTime::parse_from_rfc3339(created_at).is_ok(),
        "{created_at}"
    );
    assert_eq!(
        event["data"],
        fetch(app, &path).await,
        "data is the resource after the change"
    );
    if !body.is_null() {
        assert_eq!(event["data"], body, "data is what the write answered");
    }
    assert_eq!(app.head().await, cursor, "nothing else was appended");
    (event, body)
}

async fn funko_writes_append_one_event_each(backend: Backend) {
    let app = spawn_app(backend).await;
    let before = app.head().await;
    let response = app.post("/funkos", funko_body("Groot")).await;
    let (event, created) = assert_one_event(
        &app,
        &before,
        response,
        StatusCode::CREATED,
        "FUNKOS",
        "CREATE",
        None,
    )
    .await;
    assert_eq!(event["data"]["version"], 1);
    let path = format!("/funkos/{}", created["id"]);

    let before = app.head().await;
    let response = app.put(&path, funko_body("Baby Groot")).await;
    let (event, _) = assert_one_event(
        &app,
        &before,
        response,
        StatusCode::OK,
        "FUNKOS",
        "UPDATE",
        Some(&path),
    )
    .await;
    assert_eq!(event["data"]["name"], "Baby Groot");
    assert_eq!(event["data"]["version"], 2);

    let before = app.head().await;
    let response = app
        .patch(&path, json!({"stock": 0, "description": null}))
        .await;
    let (event, _) = assert_one_event(
        &app,
        &before,
        response,
        StatusCode::OK,
        "FUNKOS",
        "UPDATE",
        Some(&path),
    )
    .await;
    assert_eq!(event["data"]["stock"], 0);
    assert_eq!(event["data"]["description"], Value::Null);
    assert_eq!(event["data"]["version"], 3);

    let before = app.head().await;
    let response = app.if_match(Method::DELETE, &path, "\"3\"", None).await;
    let (event, _) = assert_one_event(
        &app,
        &before,
        response,
        StatusCode::NO_CONTENT,
        "FUNKOS",
        "DELETE",
        Some(&path),
    )
    .await;
    assert_eq!(event["data"]["isDeleted"], true);
    assert_eq!(event["data"]["version"], 4);
}

async fn category_writes_append_one_event_each(backend: Backend) {
    let app = spawn_app(backend).await;
    let before = app.head().await;
    let response = app.post("/categories", json!({"name": " Anime "})).await;
    let (event, created) = assert_one_event(
        &app,
        &before,
        response,
        StatusCode::CREATED,
        "CATEGORIES",
        "CREATE",
        None,
    )
    .await;
    assert_eq!(event["data"]["name"], "Anime");
    let path = format!("/categories/{}", created["id"]);

    let before = app.head().await;
    let response = app.put(&path, json!({"name": "Manga"})).await;
    let (event, _) = assert_one_event(
        &app,
        &before,
        response,
        StatusCode::OK,
        "CATEGORIES",
        "UPDATE",
        Some(&path),
    )
    .await;
    assert_eq!(event["data"]["name"], "Manga");

    let before = app.head().await;
    let response = app.delete(&path).await;
    let (event, _) = assert_one_event(
        &app,
        &before,
        response,
        StatusCode::NO_CONTENT,
        "CATEGORIES",
        "DELETE",
        Some(&path),
    )
    .await;
    assert_eq!(event["data"]["isDeleted"], true);
    assert_eq!(event["data"]["name"], "Manga");
}

async fn rejected_writes_append_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let groot = app.create_funko("Groot").await["id"].as_i64().unwrap();
    let groot_path = format!("/funkos/{groot}");
    let in_use = app
        .post("/categories", json!({"name": "Anime"}))
        .await
        .json::<Value>()
        .await
        .unwrap()["id"]
        .as_i64()
        .unwrap();
    let response = app.patch(&groot_path, json!({"category": "anime"})).await;
    assert_eq!(response.status(), StatusCode::OK);

    let before = app.snapshot().await;
    let head = before["head"].as_str().unwrap().to_owned();
    let attempts: Vec<(u16, Response)> = vec![
        (
            400,
            app.raw(Method::POST, "/funkos", Some("application/json"), "{")
                .await,
        ),
        (
            415,
            app.raw(Method::POST, "/funkos", Some("text/plain"), "{}")
                .await,
        ),
        (422, app.post("/funkos", json!({"name": ""})).await),
        (409, app.post("/funkos", funko_body("GROOT")).await),
        (
            422,
            app.post(
                "/funkos",
                json!({"name": "X", "price": 1, "stock": 1, "category": "NOPE"}),
            )
            .await,
        ),
        (422, app.put(&groot_path, json!({"name": "Groot"})).await),
        (422, app.patch(&groot_path, json!({"price": -1})).await),
        (422, app.patch(&groot_path, json!({"bogus": 1})).await),
        (
            412,
            app.if_match(
                Method::PATCH,
                &groot_path,
                "\"1\"",
                Some(json!({"stock": 1})),
            )
            .await,
        ),
        (
            412,
            app.if_match(Method::DELETE, &groot_path, "\"1\"", None)
                .await,
        ),
        (
            400,
            app.if_match(Method::DELETE, &groot_path, "1", None).await,
        ),
        (404, app.delete("/funkos/999999").await),
        (400, app.delete("/funkos/x").await),
        (
            409,
            app.post("/categories", json!({"name": "disney"})).await,
        ),
        (422, app.post("/categories", json!({"name": "ab"})).await),
        (409, app.delete(&format!("/categories/{in_use}")).await),
        (
            404,
            app.put("/categories/999999", json!({"name": "Manga"}))
                .await,
        ),
    ];
    for (index, (status, response)) in attempts.into_iter().enumerate() {
        assert_eq!(response.status().as_u16(), status, "attempt {index}");
    }
    assert_eq!(
        app.snapshot().await,
        before,
        "rejected writes changed nothing"
    );
    assert!(app.events_after(&head).await.is_empty());

    // The next accepted write is the very next event: nothing was appended in between.
    let response = app.patch(&groot_path, json!({"stock": 1})).await;
    assert_eq!(response.status(), StatusCode::OK);
    let cursor = stream_cursor(&response);
    let events = app.events_through(&head, &cursor).await;
    assert_eq!(cursors(&events), [cursor.parse::<i64>().unwrap()]);
}

async fn event_ids_strictly_increase_with_each_write(backend: Backend) {
    let app = spawn_app(backend).await;
    let before = app.head().await;
    let mut written = Vec::new();
    let mut record = |response: &Response| {
        assert!(response.status().is_success(), "{}", response.status());
        written.push(stream_cursor(response).parse::<i64>().unwrap());
    };
    let response = app.post("/funkos", funko_body("A")).await;
    record(&response);
    let a = response.json::<Value>().await.unwrap()["id"].clone();
    let response = app.post("/categories", json!({"name": "Anime"})).await;
    record(&response);
    let anime = response.json::<Value>().await.unwrap()["id"].clone();
    let response = app.post("/funkos", funko_body("B")).await;
    record(&response);
    record(
        &app.patch(&format!("/funkos/{a}"), json!({"stock": 2}))
            .await,
    );
    record(
        &app.put(&format!("/categories/{anime}"), json!({"name": "Manga"}))
            .await,
    );
    record(&app.put(&format!("/funkos/{a}"), funko_body("A2")).await);
    record(&app.delete(&format!("/funkos/{a}")).await);
    record(&app.delete(&format!("/categories/{anime}")).await);

    assert!(
        written.windows(2).all(|w| w[0] < w[1]),
        "cursors strictly increase: {written:?}"
    );
    assert!(written[0] > before.parse::<i64>().unwrap());
    let last = written.last().unwrap().to_string();
    let events = app.events_through(&before, &last).await;
    assert_eq!(cursors(&events), written, "one event per write, in order");
    let kinds: Vec<(&str, &str)> = events
        .iter()
        .map(|e| (e["entity"].as_str().unwrap(), e["type"].as_str().unwrap()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("FUNKOS", "CREATE"),
            ("CATEGORIES", "CREATE"),
            ("FUNKOS", "CREATE"),
            ("FUNKOS", "UPDATE"),
            ("CATEGORIES", "UPDATE"),
            ("FUNKOS", "UPDATE"),
            ("FUNKOS", "DELETE"),
            ("CATEGORIES", "DELETE"),
        ]
    );
    assert_eq!(app.head().await, last);
}

/// Sends `n` requests at once from separate tasks; returns the responses' statuses,
/// `Stream-Cursor`s (when present) and bodies.
async fn concurrently(
    app: &TestApp,
    requests: Vec<(Method, String, Option<&'static str>, Option<Value>)>,
) -> Vec<(StatusCode, Option<String>, Value)> {
    let tasks = requests.into_iter().map(|(method, path, if_match, body)| {
        let client = app.client.clone();
        let url = app.url(&path);
        tokio::spawn(async move {
            let mut request = client.request(method, url);
            if let Some(tag) = if_match {
                request = request.header("if-match", tag);
            }
            if let Some(body) = body {
                request = request.json(&body);
            }
            let response = request.send().await.expect("request sent");
            let status = response.status();
            let cursor = response
                .headers()
                .get("stream-cursor")
                .map(|v| v.to_str().unwrap().to_owned());
            let body = response.json::<Value>().await.unwrap_or(Value::Null);
            (status, cursor, body)
        })
    });
    join_all(tasks)
        .await
        .into_iter()
        .map(|joined| joined.expect("request task"))
        .collect()
}

/// The one request of `results` that answered `won`, every other having answered `lost`:
/// its `Stream-Cursor` and body.
fn the_one_winner(
    results: &[(StatusCode, Option<String>, Value)],
    won: StatusCode,
    lost: StatusCode,
) -> (String, Value) {
    let winners: Vec<_> = results
        .iter()
        .filter(|(status, _, _)| *status == won)
        .collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    for (status, _, body) in results {
        assert!(*status == won || *status == lost, "{status} {body}");
    }
    let (_, cursor, body) = winners[0];
    (
        cursor.clone().expect("a write's Stream-Cursor"),
        body.clone(),
    )
}

async fn concurrent_creates_get_one_event_each(backend: Backend) {
    let app = spawn_app(backend).await;
    let before = app.head().await;
    let requests = (0..20)
        .map(|i| {
            (
                Method::POST,
                "/funkos".to_owned(),
                None,
                Some(funko_body(&format!("Concurrent {i}"))),
            )
        })
        .collect();
    let results = concurrently(&app, requests).await;
    let mut by_cursor = std::collections::HashMap::new();
    for (status, cursor, body) in results {
        assert_eq!(status, StatusCode::CREATED, "{body}");
        by_cursor.insert(cursor.expect("Stream-Cursor").parse::<i64>().unwrap(), body);
    }
    assert_eq!(by_cursor.len(), 20, "distinct cursors");
    let last = by_cursor.keys().max().unwrap().to_string();
    let events = app.events_through(&before, &last).await;
    assert_eq!(events.len(), 20);
    let ids = cursors(&events);
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    assert_eq!(
        ids.iter().copied().collect::<HashSet<_>>(),
        by_cursor.keys().copied().collect::<HashSet<_>>(),
        "each write's cursor is one of the events"
    );
    let mut funko_ids = HashSet::new();
    for event in &events {
        assert_eq!(event["entity"], "FUNKOS");
        assert_eq!(event["type"], "CREATE");
        let cursor: i64 = event["id"].as_str().unwrap().parse().unwrap();
        assert_eq!(event["data"], by_cursor[&cursor], "the event of that write");
        let id = &event["data"]["id"];
        assert_eq!(
            event["data"],
            fetch(&app, &format!("/funkos/{id}")).await,
            "data matches its Funko"
        );
        assert!(
            funko_ids.insert(id.as_i64().unwrap()),
            "one event per Funko"
        );
    }
    assert_eq!(app.head().await, last);
    let list: Value = app.get("/funkos?limit=100").await.json().await.unwrap();
    assert_eq!(list["meta"]["total"], 20);
}

async fn concurrent_creates_of_one_name_let_one_win(backend: Backend) {
    let app = spawn_app(backend).await;
    let before = app.head().await;
    let requests = (0..10)
        .map(|i| {
            let name = if i % 2 == 0 { "Groot" } else { "GROOT" };
            (
                Method::POST,
                "/funkos".to_owned(),
                None,
                Some(funko_body(name)),
            )
        })
        .collect();
    let results = concurrently(&app, requests).await;
    let (cursor, winner) = the_one_winner(&results, StatusCode::CREATED, StatusCode::CONFLICT);
    let events = app.events_through(&before, &cursor).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["data"], winner);
    assert_eq!(app.head().await, cursor);
}

async fn concurrent_conditional_updates_let_one_win(backend: Backend) {
    let app = spawn_app(backend).await;
    let id = app.create_funko("Groot").await["id"].as_i64().unwrap();
    let path = format!("/funkos/{id}");
    let before = app.head().await;
    let requests = (0..10)
        .map(|i| {
            (
                Method::PATCH,
                path.clone(),
                Some("\"1\""),
                Some(json!({ "stock": i })),
            )
        })
        .collect();
    let results = concurrently(&app, requests).await;
    let (cursor, winner) =
        the_one_winner(&results, StatusCode::OK, StatusCode::PRECONDITION_FAILED);
    let events = app.events_through(&before, &cursor).await;
    assert_eq!(events.len(), 1);
    let current = fetch(&app, &path).await;
    assert_eq!(current["version"], 2);
    assert_eq!(events[0]["data"], current);
    assert_eq!(winner, current);
    assert_eq!(app.head().await, cursor);
}

/// Writes that succeed and writes that fail, all at once (on SQLite they share transactions:
/// group commit): every success has exactly one event, its own cursor, in cursor order;
/// every failure has none and says why with a 4xx problem.
async fn concurrent_mixed_writes_keep_one_event_per_success(backend: Backend) {
    let app = spawn_app(backend).await;
    let gone = app.post("/categories", json!({"name": "GONE"})).await;
    assert_eq!(gone.status(), StatusCode::CREATED);
    let gone: Value = gone.json().await.unwrap();
    let deleted = app.delete(&format!("/categories/{}", gone["id"])).await;
    assert!(deleted.status().is_success(), "{}", deleted.status());
    let target = app.create_funko("Target").await;
    let target_path = format!("/funkos/{}", target["id"]);
    let before = app.head().await;

    // (request, the statuses it may answer)
    let mut requests = Vec::new();
    let mut allowed: Vec<&[StatusCode]> = Vec::new();
    for i in 0..12 {
        requests.push((
            Method::POST,
            "/funkos".to_owned(),
            None,
            Some(funko_body(&format!("Mixed {i}"))),
        ));
        allowed.push(&[StatusCode::CREATED, StatusCode::CONFLICT]);
        // The same name, another case and padding: one of each pair wins.
        let twin = if i % 2 == 0 {
            format!("  MIXED {i} ")
        } else {
            format!("mixed {i}")
        };
        requests.push((
            Method::POST,
            "/funkos".to_owned(),
            None,
            Some(funko_body(&twin)),
        ));
        allowed.push(&[StatusCode::CREATED, StatusCode::CONFLICT]);
        let mut unknown = funko_body(&format!("Orphan {i}"));
        unknown["category"] = json!(if i % 2 == 0 { "nope" } else { "gone" });
        requests.push((Method::POST, "/funkos".to_owned(), None, Some(unknown)));
        allowed.push(&[StatusCode::UNPROCESSABLE_ENTITY]);
        requests.push((
            Method::PATCH,
            target_path.clone(),
            Some("\"999\""),
            Some(json!({"stock": i})),
        ));
        allowed.push(&[StatusCode::PRECONDITION_FAILED]);
        requests.push((
            Method::PATCH,
            "/funkos/987654321".to_owned(),
            None,
            Some(json!({"stock": i})),
        ));
        allowed.push(&[StatusCode::NOT_FOUND]);
    }
    // Taken by an existing live Funko.
    requests.push((
        Method::POST,
        "/funkos".to_owned(),
        None,
        Some(funko_body("target")),
    ));
    allowed.push(&[StatusCode::CONFLICT]);
    let results = concurrently(&app, requests).await;

    let mut successes = std::collections::HashMap::new();
    for ((status, cursor, body), allowed) in results.iter().zip(&allowed) {
        assert!(
            allowed.contains(status),
            "{status} not in {allowed:?}: {body}"
        );
        if status.is_success() {
            let cursor: i64 = cursor.as_deref().expect("Stream-Cursor").parse().unwrap();
            assert!(
                successes.insert(cursor, body.clone()).is_none(),
                "distinct cursors"
            );
        } else {
            assert_eq!(body["status"], status.as_u16(), "a problem body: {body}");
            assert!(
                body["detail"].as_str().is_some_and(|d| !d.is_empty()),
                "{body}"
            );
        }
    }
    // One of each twin pair.
    let names: HashSet<String> = successes
        .values()
        .map(|f| f["name"].as_str().unwrap().to_lowercase())
        .collect();
    assert_eq!((successes.len(), names.len()), (12, 12), "{results:?}");
    let last = successes.keys().max().unwrap().to_string();
    let events = app.events_through(&before, &last).await;
    let ids = cursors(&events);
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    assert_eq!(
        ids.iter().copied().collect::<HashSet<_>>(),
        successes.keys().copied().collect::<HashSet<_>>(),
        "one event per success, none for a failure"
    );
    for event in &events {
        let cursor: i64 = event["id"].as_str().unwrap().parse().unwrap();
        assert_eq!(event["type"], "CREATE");
        assert_eq!(event["data"], successes[&cursor], "the event of that write");
    }
    assert_eq!(app.head().await, last, "nothing after the last success");
    let list: Value = app.get("/funkos?limit=100").await.json().await.unwrap();
    assert_eq!(list["meta"]["total"], 13, "the successes and the target");
    assert_eq!(
        fetch(&app, &target_path).await["version"],
        1,
        "no PATCH applied"
    );
}

crate::backend_tests!(
    funko_writes_append_one_event_each,
    category_writes_append_one_event_each,
    rejected_writes_append_nothing,
    event_ids_strictly_increase_with_each_write,
    concurrent_creates_get_one_event_each,
    concurrent_creates_of_one_name_let_one_win,
    concurrent_conditional_updates_let_one_win,
    concurrent_mixed_writes_keep_one_event_per_success,
);
