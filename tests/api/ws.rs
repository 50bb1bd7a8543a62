//! The WebSocket at `/ws` over real sockets: the welcome, the same events as SSE and
//! long-poll, subscriptions with cursors and filters, resets, writes answered like REST,
//! bad frames, the frame limit, heartbeats, slow readers, shutdown, and Node's `ws` package.

use std::{process::Stdio, time::Duration};

use futures_util::StreamExt;
use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use crate::{
    helpers::{
        Backend, TestApp, WAIT, WsClient, WsMessage, assert_problem, cursors, spawn_app,
        spawn_app_with, stream_cursor,
    },
    js::{js_dir, node_ready},
};

/// The answer (`result` or `error`) to `request_id`, and the events that came before it.
async fn answer(ws: &mut WsClient, request_id: &Value) -> (Value, Vec<Value>) {
    let mut skipped = Vec::new();
    loop {
        let frame = ws.next_json().await;
        match frame["op"].as_str() {
            None => skipped.push(frame),
            Some("result" | "error") if frame["requestId"] == *request_id => {
                return (frame, skipped);
            }
            _ => panic!("expected the answer to {request_id}, got {frame}"),
        }
    }
}

/// A write frame.
fn write(op: &str, request_id: &str, entity: &str, fields: Value) -> Value {
    let mut frame = json!({"op": op, "requestId": request_id, "entity": entity});
    for (key, value) in fields.as_object().unwrap() {
        frame[key] = value.clone();
    }
    frame
}

/// Sends `frame` and asserts an `error` with `status` that changed nothing (same rows, same
/// head, no event). Returns the problem body.
async fn ws_rejected(app: &TestApp, ws: &mut WsClient, frame: Value, status: u16) -> Value {
    let before = app.snapshot().await;
    let request_id = frame["requestId"].clone();
    ws.send_json(frame.clone()).await;
    let (error, events) = answer(ws, &request_id).await;
    assert!(events.is_empty(), "no event for {frame}: {events:?}");
    assert_eq!(error["op"], "error", "{frame} -> {error}");
    assert_eq!(error["status"], status, "{frame} -> {error}");
    let body = error["body"].clone();
    assert_eq!(body["status"], status);
    assert!(
        body["title"].is_string() && body["detail"].is_string(),
        "{body}"
    );
    assert_eq!(app.snapshot().await, before, "{frame} changed the store");
    let head = before["head"].as_str().unwrap();
    assert!(
        app.events_after(head).await.is_empty(),
        "{frame} appended an event"
    );
    body
}

/// Sends a write that must succeed; returns its `result` and the event it caused (read from
/// the socket, which must be subscribed to it).
async fn ws_written(ws: &mut WsClient, frame: Value, status: u16) -> (Value, Value) {
    let request_id = frame["requestId"].clone();
    ws.send_json(frame.clone()).await;
    let (result, mut events) = answer(ws, &request_id).await;
    assert_eq!(result["op"], "result", "{frame} -> {result}");
    assert_eq!(result["status"], status, "{frame} -> {result}");
    let event = match events.pop() {
        Some(event) => event,
        None => ws.next_event().await,
    };
    assert!(events.is_empty(), "one event per write: {events:?}");
    assert_eq!(event["id"], result["cursor"], "the result names its event");
    (result, event)
}

/// The problem REST answers for a request (which must change nothing).
async fn rest_problem(
    app: &TestApp,
    method: Method,
    path: &str,
    body: Option<Value>,
    status: u16,
) -> Value {
    app.assert_rejected(app.request(method, path, body), status)
        .await
}

async fn welcome_first_with_the_head_cursor(backend: Backend) {
    let app = spawn_app(backend).await;
    let start = app.head().await;
    let first = app.create_funko("Before the socket").await;
    let head = app.head().await;

    let (mut ws, welcome) = app.ws_welcomed("/ws").await;
    assert_eq!(welcome, json!({"op": "welcome", "cursor": head}));
    let live = app.create_funko("Live").await;
    let event = ws.next_event().await;
    assert_eq!(
        (event["type"].clone(), event["data"].clone()),
        (json!("CREATE"), live)
    );

    // With a cursor: still the head in the welcome, then the replay, then live.
    let head = app.head().await;
    let (mut ws, welcome) = app.ws_welcomed(&format!("/ws?after={start}")).await;
    assert_eq!(welcome["cursor"], head.as_str());
    let replayed = ws.take_events(2).await;
    assert_eq!(replayed, app.events_after(&start).await);
    assert_eq!(replayed[0]["data"], first);

    // The subprotocol is selected when offered, and a token entry is never echoed.
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
            app.ws_url("/ws"),
        )
        .unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        "bearer.s3cret, funko-live".parse().unwrap(),
    );
    let (mut ws, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(response.headers()["sec-websocket-protocol"], "funko-live");
    let welcome = ws.next().await.unwrap().unwrap();
    assert!(welcome.to_text().unwrap().contains("welcome"));

    // Bad parameters answer a problem before upgrading, like SSE and long-poll.
    for bad in ["after=abc", "after=-1", "entity=USERS", "types=UPSERT"] {
        let response = app
            .client
            .get(app.url(&format!("/ws?{bad}")))
            .header("upgrade", "websocket")
            .header("connection", "upgrade")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .send()
            .await
            .unwrap();
        assert_problem(response, 400).await;
        let err = tokio_tungstenite::connect_async(app.ws_url(&format!("/ws?{bad}")))
            .await
            .expect_err("no upgrade");
        assert!(
            matches!(&err, tokio_tungstenite::tungstenite::Error::Http(r) if r.status() == 400),
            "{err}"
        );
    }
    // A plain GET is not a WebSocket.
    assert_problem(app.get("/ws").await, 400).await;
}

/// An SSE client, a long-poller and two WebSocket clients connected at the same time see the
/// very same events, with the same JSON and cursors, for a series of REST writes.
async fn same_events_as_sse_and_long_poll(backend: Backend) {
    let app = std::sync::Arc::new(spawn_app(backend).await);
    let start = app.head().await;
    let mut sse = app.sse(&format!("/events?lastEventId={start}"), None).await;
    let (mut ws, _) = app.ws_welcomed(&format!("/ws?after={start}")).await;
    let (mut ws_live, _) = app.ws_welcomed("/ws").await;

    // REST writes of every kind, on both resources.
    let funko = app.create_funko("Parity").await;
    let id = &funko["id"];
    let category: Value = app
        .post("/categories", json!({"name": "ANIME"}))
        .await
        .json()
        .await
        .unwrap();
    let writes = [
        app.patch(&format!("/funkos/{id}"), json!({"stock": 2}))
            .await,
        app.put(
            &format!("/categories/{}", category["id"]),
            json!({"name": "MANGA"}),
        )
        .await,
        app.delete(&format!("/funkos/{id}")).await,
        app.delete(&format!("/categories/{}", category["id"])).await,
    ];
    let last = stream_cursor(writes.last().unwrap());
    let total = 6;
    let poller = {
        let app = app.clone();
        let start = start.clone();
        tokio::spawn(async move { app.events_through(&start, &last).await })
    };

    let mut from_sse = Vec::new();
    while from_sse.len() < total {
        let frame = sse.next_frame().await.expect("open");
        if frame.is_event() {
            assert_eq!(frame.id.as_deref(), frame.json()["id"].as_str());
            from_sse.push(frame.data.unwrap());
        }
    }
    let mut from_ws = Vec::new();
    for _ in 0..total {
        from_ws.push(ws.next_text().await);
    }
    // The same bytes: both send the event's JSON as it was rendered once.
    assert_eq!(from_ws, from_sse);
    let from_ws: Vec<Value> = from_ws
        .iter()
        .map(|t| serde_json::from_str(t).unwrap())
        .collect();
    assert_eq!(ws_live.take_events(total).await, from_ws);
    let polled = tokio::time::timeout(WAIT, poller).await.unwrap().unwrap();
    assert_eq!(polled, from_ws);
    assert_eq!(app.events_after(&start).await, from_ws);
    let types: Vec<_> = from_ws
        .iter()
        .map(|e| (e["entity"].clone(), e["type"].clone()))
        .collect();
    assert_eq!(
        types,
        [
            (json!("FUNKOS"), json!("CREATE")),
            (json!("CATEGORIES"), json!("CREATE")),
            (json!("FUNKOS"), json!("UPDATE")),
            (json!("CATEGORIES"), json!("UPDATE")),
            (json!("FUNKOS"), json!("DELETE")),
            (json!("CATEGORIES"), json!("DELETE")),
        ]
    );
}

/// Replay then live, exactly once and in order, with filters; a new `subscribe` replaces the
/// old one from its acknowledgement on.
async fn subscribe_and_resubscribe_with_cursor_and_filters(backend: Backend) {
    let app = spawn_app(backend).await;
    let start = app.head().await;
    for i in 0..3 {
        app.create_funko(&format!("Early {i}")).await;
    }
    app.post("/categories", json!({"name": "ANIME"})).await;
    let log = app.events_after(&start).await;
    let early_funkos: Vec<Value> = log
        .iter()
        .filter(|e| e["entity"] == "FUNKOS")
        .cloned()
        .collect();

    let (mut ws, _) = app.ws_welcomed("/ws").await;
    ws.send_json(json!({"op": "subscribe", "requestId": "s1", "after": start, "entity": "FUNKOS"}))
        .await;
    let (ack, _) = ws.next_op("result").await;
    assert_eq!(
        ack,
        json!({"op": "result", "requestId": "s1", "status": 200, "body": null, "cursor": start})
    );
    assert_eq!(ws.take_events(3).await, early_funkos);
    // Live, filtered: the category is not sent; the Funko after it is the next frame.
    app.post("/categories", json!({"name": "COMICS"})).await;
    let live = app.create_funko("Live funko").await;
    assert_eq!(ws.next_event().await["data"], live);

    // Resubscribe from the same start to category creations only.
    ws.send_json(json!({"op": "subscribe", "requestId": 2, "after": start,
                        "entity": "CATEGORIES", "types": ["CREATE"]}))
        .await;
    // Events of the old subscription may still be on their way before the acknowledgement.
    let (ack, _) = ws.next_op("result").await;
    assert_eq!(ack["requestId"], 2);
    let category_creates: Vec<Value> = app
        .events_after(&start)
        .await
        .into_iter()
        .filter(|e| e["entity"] == "CATEGORIES" && e["type"] == "CREATE")
        .collect();
    assert_eq!(category_creates.len(), 2);
    assert_eq!(ws.take_events(2).await, category_creates);
    app.patch(&format!("/funkos/{}", live["id"]), json!({"stock": 0}))
        .await;
    let created: Value = app
        .post("/categories", json!({"name": "RETRO"}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(ws.next_event().await["data"], created);

    // A bad subscribe is refused and the current subscription stays.
    ws.send_json(json!({"op": "subscribe", "requestId": "bad", "after": "x"}))
        .await;
    let (error, _) = ws.next_op("error").await;
    assert_eq!(
        (error["requestId"].clone(), error["status"].clone()),
        (json!("bad"), json!(400))
    );
    let created: Value = app
        .post("/categories", json!({"name": "VINTAGE"}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(ws.next_event().await["data"], created);

    // `after: null` is from now: the acknowledgement carries the head.
    ws.send_json(json!({"op": "subscribe", "requestId": "now", "after": null}))
        .await;
    let (ack, _) = ws.next_op("result").await;
    assert_eq!(ack["cursor"], app.head().await.as_str());
    let live = app.create_funko("After now").await;
    assert_eq!(ws.next_event().await["data"], live);

    // The same filters at connect, exactly once and in order, then live.
    let (mut at_connect, _) = app
        .ws_welcomed(&format!("/ws?after={start}&entity=categories&types=CREATE"))
        .await;
    let all_creates: Vec<Value> = app
        .events_after(&start)
        .await
        .into_iter()
        .filter(|e| e["entity"] == "CATEGORIES" && e["type"] == "CREATE")
        .collect();
    assert_eq!(at_connect.take_events(4).await, all_creates);
    let created: Value = app
        .post("/categories", json!({"name": "SENTINEL"}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(at_connect.next_event().await["data"], created);
}

async fn resets_for_future_and_expired_cursors(backend: Backend) {
    let app = spawn_app(backend).await;
    let start = app.head().await;
    for i in 0..3 {
        app.create_funko(&format!("Old {i}")).await;
    }
    let head = app.head().await;
    let future = (head.parse::<i64>().unwrap() + 1000).to_string();

    // At connect: welcome, then the reset, then live from the reset's cursor.
    let (mut ws, welcome) = app.ws_welcomed(&format!("/ws?after={future}")).await;
    assert_eq!(welcome["cursor"], head.as_str());
    let (reset, _) = ws.next_op("reset").await;
    assert_eq!(
        reset,
        json!({"op": "reset", "cursor": head, "reason": "unknown"})
    );
    let live = app.create_funko("After reset").await;
    assert_eq!(ws.next_event().await["data"], live);

    // By subscribe: acknowledged, then the reset.
    let head = app.head().await;
    ws.send_json(json!({"op": "subscribe", "requestId": "f", "after": future}))
        .await;
    let (ack, _) = ws.next_op("result").await;
    assert_eq!(ack["cursor"], head.as_str());
    let (reset, _) = ws.next_op("reset").await;
    assert_eq!(reset["reason"], "unknown");
    assert_eq!(reset["cursor"], head.as_str());

    // Older than retention.
    app.prune_all_but_newest().await;
    let (mut expired, _) = app.ws_welcomed(&format!("/ws?after={start}")).await;
    let (reset, _) = expired.next_op("reset").await;
    assert_eq!(
        reset,
        json!({"op": "reset", "cursor": head, "reason": "expired"})
    );
    ws.send_json(json!({"op": "subscribe", "after": start}))
        .await;
    let (reset, _) = ws.next_op("reset").await;
    assert_eq!(reset["reason"], "expired");
    let live = app.create_funko("After expiry").await;
    assert_eq!(ws.next_event().await["data"], live);
    assert_eq!(expired.next_event().await["data"], live);
}

async fn funko_writes_answer_like_rest(backend: Backend) {
    let app = spawn_app(backend).await;
    let (mut ws, _) = app.ws_welcomed("/ws").await;
    let valid = json!({"name": "Groot", "price": 9.99, "stock": 5, "category": "DISNEY"});

    // Create.
    let (result, event) = ws_written(
        &mut ws,
        write("create", "c1", "FUNKOS", json!({"data": valid})),
        201,
    )
    .await;
    let id = result["body"]["id"].as_i64().unwrap();
    let stored: Value = app
        .get(&format!("/funkos/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(result["body"], stored);
    assert_eq!(
        (event["type"].clone(), event["data"].clone()),
        (json!("CREATE"), stored)
    );

    // Update: a merge patch, with and without If-Match.
    let (result, event) = ws_written(
        &mut ws,
        write(
            "update",
            "u1",
            "FUNKOS",
            json!({"id": id, "data": {"stock": 1, "description": "tree"}}),
        ),
        200,
    )
    .await;
    assert_eq!(result["body"]["stock"], 1);
    assert_eq!(result["body"]["name"], "Groot");
    assert_eq!(result["body"]["version"], 2);
    assert_eq!(
        (event["type"].clone(), event["data"].clone()),
        (json!("UPDATE"), result["body"].clone())
    );
    let (result, _) = ws_written(
        &mut ws,
        write(
            "update",
            "u2",
            "FUNKOS",
            json!({"id": id, "data": {"description": null}, "ifMatch": "\"2\""}),
        ),
        200,
    )
    .await;
    assert_eq!(result["body"]["description"], Value::Null);
    let rest: Value = app
        .get(&format!("/funkos/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(result["body"], rest);

    // The invalid: the very status and problem REST answers for the same input.
    let other = app.create_funko("Rocket").await;
    ws.next_event().await;
    let cases: Vec<(Value, Method, String, Option<Value>, u16)> = vec![
        (
            json!({"op": "create", "data": {"name": "", "price": -1, "stock": 1.5, "category": "DISNEY"}}),
            Method::POST,
            "/funkos".into(),
            Some(json!({"name": "", "price": -1, "stock": 1.5, "category": "DISNEY"})),
            422,
        ),
        (
            json!({"op": "create", "data": {"name": "X", "price": 1, "stock": 1, "category": "NOPE"}}),
            Method::POST,
            "/funkos".into(),
            Some(json!({"name": "X", "price": 1, "stock": 1, "category": "NOPE"})),
            422,
        ),
        (
            json!({"op": "create", "data": {"name": "ROCKET", "price": 1, "stock": 1, "category": "DISNEY"}}),
            Method::POST,
            "/funkos".into(),
            Some(json!({"name": "ROCKET", "price": 1, "stock": 1, "category": "DISNEY"})),
            409,
        ),
        (
            json!({"op": "create", "data": [1, 2]}),
            Method::POST,
            "/funkos".into(),
            Some(json!([1, 2])),
            422,
        ),
        (
            json!({"op": "update", "id": 999_999, "data": {"stock": 1}}),
            Method::PATCH,
            "/funkos/999999".into(),
            Some(json!({"stock": 1})),
            404,
        ),
        (
            json!({"op": "update", "id": id, "data": {"price": "free", "bogus": 1}}),
            Method::PATCH,
            format!("/funkos/{id}"),
            Some(json!({"price": "free", "bogus": 1})),
            422,
        ),
        (
            json!({"op": "update", "id": id, "data": "stock=1"}),
            Method::PATCH,
            format!("/funkos/{id}"),
            Some(json!("stock=1")),
            422,
        ),
        (
            json!({"op": "update", "id": id, "data": {"name": "rocket"}}),
            Method::PATCH,
            format!("/funkos/{id}"),
            Some(json!({"name": "rocket"})),
            409,
        ),
        (
            json!({"op": "delete", "id": 999_999}),
            Method::DELETE,
            "/funkos/999999".into(),
            None,
            404,
        ),
    ];
    for (i, (fields, method, path, body, status)) in cases.into_iter().enumerate() {
        let frame = write(
            fields["op"].as_str().unwrap(),
            &format!("bad{i}"),
            "FUNKOS",
            fields.clone(),
        );
        let from_ws = ws_rejected(&app, &mut ws, frame, status).await;
        let from_rest = rest_problem(&app, method, &path, body, status).await;
        assert_eq!(from_ws, from_rest, "{fields}");
    }
    // Preconditions, as REST's If-Match: stale is 412, malformed is 400.
    for (if_match, status) in [("\"1\"", 412), ("1", 400)] {
        let from_ws = ws_rejected(
            &app,
            &mut ws,
            write(
                "update",
                "im",
                "FUNKOS",
                json!({"id": id, "data": {"stock": 3}, "ifMatch": if_match}),
            ),
            status,
        )
        .await;
        let from_rest = app
            .assert_rejected(
                app.if_match(
                    Method::PATCH,
                    &format!("/funkos/{id}"),
                    if_match,
                    Some(json!({"stock": 3})),
                ),
                status,
            )
            .await;
        assert_eq!(from_ws, from_rest);
        let from_ws = ws_rejected(
            &app,
            &mut ws,
            write(
                "delete",
                "dm",
                "FUNKOS",
                json!({"id": id, "ifMatch": if_match}),
            ),
            status,
        )
        .await;
        let from_rest = app
            .assert_rejected(
                app.if_match(Method::DELETE, &format!("/funkos/{id}"), if_match, None),
                status,
            )
            .await;
        assert_eq!(from_ws, from_rest);
    }

    // Delete: 204 and a null body, as REST's No Content; then the Funko is gone for both.
    let (result, event) = ws_written(
        &mut ws,
        write(
            "delete",
            "d1",
            "FUNKOS",
            json!({"id": id, "ifMatch": "\"3\""}),
        ),
        204,
    )
    .await;
    assert_eq!(result["body"], Value::Null);
    assert_eq!(event["type"], "DELETE");
    assert_eq!(event["data"]["isDeleted"], true);
    let again = ws_rejected(
        &app,
        &mut ws,
        write("delete", "d2", "FUNKOS", json!({"id": id})),
        404,
    )
    .await;
    assert_eq!(
        again,
        rest_problem(&app, Method::DELETE, &format!("/funkos/{id}"), None, 404).await
    );

    // Nothing was emitted by the refusals: the next event is the next valid write's.
    let sentinel = app.create_funko("Sentinel").await;
    assert_eq!(ws.next_event().await["data"], sentinel);
    assert_ne!(other["id"], sentinel["id"]);
}

async fn category_writes_answer_like_rest(backend: Backend) {
    let app = spawn_app(backend).await;
    let (mut ws, _) = app.ws_welcomed("/ws").await;

    let (result, event) = ws_written(
        &mut ws,
        write(
            "create",
            "c1",
            "CATEGORIES",
            json!({"data": {"name": "ANIME"}}),
        ),
        201,
    )
    .await;
    let id = result["body"]["id"].as_i64().unwrap();
    let stored: Value = app
        .get(&format!("/categories/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(result["body"], stored);
    assert_eq!(
        (event["entity"].clone(), event["data"].clone()),
        (json!("CATEGORIES"), stored)
    );

    let (result, event) = ws_written(
        &mut ws,
        write(
            "update",
            "u1",
            "categories",
            json!({"id": id, "data": {"name": "MANGA"}}),
        ),
        200,
    )
    .await;
    assert_eq!(result["body"]["name"], "MANGA");
    assert_eq!(event["type"], "UPDATE");

    let disney = app
        .get("/categories")
        .await
        .json::<Value>()
        .await
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "DISNEY")
        .unwrap()["id"]
        .clone();
    app.create_funko("Uses Disney").await;
    ws.next_event().await;
    let cases: Vec<(Value, Method, String, Option<Value>, u16)> = vec![
        (
            json!({"op": "create", "data": {"name": "X"}}),
            Method::POST,
            "/categories".into(),
            Some(json!({"name": "X"})),
            422,
        ),
        (
            json!({"op": "create", "data": {"name": "manga"}}),
            Method::POST,
            "/categories".into(),
            Some(json!({"name": "manga"})),
            409,
        ),
        (
            json!({"op": "create", "data": null}),
            Method::POST,
            "/categories".into(),
            Some(json!(null)),
            422,
        ),
        (
            json!({"op": "update", "id": 999_999, "data": {"name": "OTHER"}}),
            Method::PUT,
            "/categories/999999".into(),
            Some(json!({"name": "OTHER"})),
            404,
        ),
        (
            json!({"op": "update", "id": id, "data": {"name": "disney"}}),
            Method::PUT,
            format!("/categories/{id}"),
            Some(json!({"name": "disney"})),
            409,
        ),
        (
            json!({"op": "update", "id": id, "data": {"name": 5}}),
            Method::PUT,
            format!("/categories/{id}"),
            Some(json!({"name": 5})),
            422,
        ),
        (
            json!({"op": "delete", "id": disney}),
            Method::DELETE,
            format!("/categories/{disney}"),
            None,
            409,
        ),
        (
            json!({"op": "delete", "id": 999_999}),
            Method::DELETE,
            "/categories/999999".into(),
            None,
            404,
        ),
    ];
    for (i, (fields, method, path, body, status)) in cases.into_iter().enumerate() {
        let frame = write(
            fields["op"].as_str().unwrap(),
            &format!("bad{i}"),
            "CATEGORIES",
            fields.clone(),
        );
        let from_ws = ws_rejected(&app, &mut ws, frame, status).await;
        let from_rest = rest_problem(&app, method, &path, body, status).await;
        assert_eq!(from_ws, from_rest, "{fields}");
    }
    // Categories have no version: an ifMatch is a mistake, not silently ignored.
    let problem = ws_rejected(
        &app,
        &mut ws,
        write(
            "delete",
            "im",
            "CATEGORIES",
            json!({"id": id, "ifMatch": "\"1\""}),
        ),
        400,
    )
    .await;
    assert_eq!(problem["errors"][0]["field"], "ifMatch");

    let (result, event) = ws_written(
        &mut ws,
        write("delete", "d1", "CATEGORIES", json!({"id": id})),
        204,
    )
    .await;
    assert_eq!(result["body"], Value::Null);
    assert_eq!(
        (event["type"].clone(), event["data"]["isDeleted"].clone()),
        (json!("DELETE"), json!(true))
    );
}

/// Many writes in flight on one socket: each gets exactly one answer with its requestId.
async fn every_request_in_flight_gets_its_own_answer(backend: Backend) {
    let app = spawn_app(backend).await;
    let (mut ws, _) = app.ws_welcomed("/ws?entity=CATEGORIES").await;
    let mut expected = std::collections::BTreeMap::new();
    for i in 0..12 {
        let request_id = if i % 2 == 0 {
            json!(format!("r{i}"))
        } else {
            json!(i)
        };
        let (frame, status) = match i % 4 {
            0 | 1 => (
                json!({"op": "create", "entity": "FUNKOS", "requestId": request_id,
                              "data": {"name": format!("Flight {i}"), "price": 1, "stock": 1, "category": "OTROS"}}),
                201,
            ),
            2 => (
                json!({"op": "create", "entity": "FUNKOS", "requestId": request_id,
                          "data": {"name": "", "price": 1, "stock": 1, "category": "OTROS"}}),
                422,
            ),
            _ => (json!({"op": "ping", "requestId": request_id}), 0),
        };
        expected.insert(request_id.to_string(), status);
        ws.send_json(frame).await;
    }
    let mut seen = std::collections::BTreeMap::new();
    while seen.len() < expected.len() {
        let frame = ws.next_json().await;
        let status = match frame["op"].as_str() {
            Some("pong") => 0,
            Some("result" | "error") => frame["status"].as_u64().unwrap(),
            _ => panic!("unexpected {frame}"),
        };
        let previous = seen.insert(frame["requestId"].to_string(), status);
        assert!(previous.is_none(), "answered twice: {frame}");
    }
    assert_eq!(seen, expected);
    // Exactly one answer each: nothing more comes before the next pong.
    ws.ping().await;
}

/// Frames the server cannot use get an `error` and the socket keeps working.
async fn bad_frames_get_errors_and_the_socket_stays_open(backend: Backend) {
    let app = spawn_app(backend).await;
    let (mut ws, _) = app.ws_welcomed("/ws").await;
    let bad: [(&str, Value, &[&str]); 10] = [
        ("not json", Value::Null, &[]),
        ("[1, 2]", Value::Null, &[]),
        ("{}", Value::Null, &["op"]),
        (r#"{"op": "nope", "requestId": "u"}"#, json!("u"), &["op"]),
        (r#"{"op": 5, "requestId": 7}"#, json!(7), &["op"]),
        (
            r#"{"op": "create", "requestId": "m"}"#,
            json!("m"),
            &["data", "entity"],
        ),
        (
            r#"{"op": "update", "requestId": "m", "entity": "FUNKOS", "data": {}}"#,
            json!("m"),
            &["id"],
        ),
        (
            r#"{"op": "update", "requestId": "m", "entity": "FUNKOS", "id": "seven", "data": {}}"#,
            json!("m"),
            &["id"],
        ),
        (
            r#"{"op": "delete", "entity": "FUNKOS", "id": 1}"#,
            Value::Null,
            &["requestId"],
        ),
        (
            r#"{"op": "ping", "requestId": [1]}"#,
            Value::Null,
            &["requestId"],
        ),
    ];
    let head = app.head().await;
    for (text, request_id, fields) in bad {
        ws.send(WsMessage::text(text)).await;
        let (error, events) = ws.next_op("error").await;
        assert!(events.is_empty());
        assert_eq!(error["requestId"], request_id, "{text}");
        assert_eq!(error["status"], 400, "{text}");
        assert_eq!(error["body"]["status"], 400);
        assert!(error["body"]["detail"].is_string());
        assert_eq!(
            crate::helpers::problem_fields(&error["body"]),
            fields,
            "{text}"
        );
        ws.ping().await;
    }
    ws.send(WsMessage::binary(vec![0u8, 1, 2])).await;
    let (error, _) = ws.next_op("error").await;
    assert_eq!(
        (error["requestId"].clone(), error["status"].clone()),
        (Value::Null, json!(415))
    );
    ws.ping().await;
    assert!(
        app.events_after(&head).await.is_empty(),
        "bad frames wrote nothing"
    );
}

/// Up to 64 KiB a frame is read; one byte more closes the socket with 1009.
async fn a_frame_over_64_kib_closes_with_1009(backend: Backend) {
    let app = spawn_app(backend).await;
    let (mut ws, _) = app.ws_welcomed("/ws").await;
    let frame_of = |size: usize| {
        let head = r#"{"op":"ping","requestId":"big","pad":""#;
        let pad = "x".repeat(size - head.len() - 2);
        format!("{head}{pad}\"}}")
    };
    let exactly = frame_of(64 * 1024);
    assert_eq!(exactly.len(), 65536);
    ws.send(WsMessage::text(exactly)).await;
    let (pong, _) = ws.next_op("pong").await;
    assert_eq!(pong["requestId"], "big");

    ws.send(WsMessage::text(frame_of(64 * 1024 + 1))).await;
    let (code, _, _) = ws.closed().await;
    assert_eq!(code, 1009);
}

/// With a keep-alive of 1 s: a silent client is pinged, an answering one stays open, and
/// one that never answers is closed with 1008.
async fn idle_sockets_are_pinged_and_dead_ones_closed(backend: Backend) {
    let app = spawn_app_with(backend, |c| c.keepalive_seconds = 1).await;
    let (mut ws, _) = app.ws_welcomed("/ws").await;
    // tokio-tungstenite answers pings while it reads: two pings in a row mean the first
    // answer kept the socket open.
    for _ in 0..2 {
        match ws.next_message_within(Duration::from_secs(5)).await {
            Ok(Some(WsMessage::Ping(_))) => {}
            other => panic!("expected a ping within 5 s, got {other:?}"),
        }
    }
    ws.ping().await;

    // A raw client that completes the handshake and then never answers.
    let mut raw = tokio::net::TcpStream::connect(app.address).await.unwrap();
    raw.write_all(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    let mut bytes = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), raw.read_to_end(&mut bytes))
        .await
        .expect("the server closes a socket that does not answer")
        .unwrap();
    let start = bytes.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert!(bytes.starts_with(b"HTTP/1.1 101"));
    let frames = raw_frames(&bytes[start..]);
    let opcodes: Vec<u8> = frames.iter().map(|(op, _)| *op).collect();
    assert_eq!(opcodes, [0x1, 0x9, 0x8], "welcome, ping, close");
    let close = &frames[2].1;
    assert_eq!(u16::from_be_bytes([close[0], close[1]]), 1008);
    let reason: Value = serde_json::from_slice(&close[2..]).unwrap();
    assert_eq!(reason["reason"], "unresponsive");
}

/// Unmasked server frames: (opcode, payload).
fn raw_frames(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut frames = Vec::new();
    while bytes.len() >= 2 {
        let opcode = bytes[0] & 0x0f;
        let (len, header) = match bytes[1] & 0x7f {
            126 => (u16::from_be_bytes([bytes[2], bytes[3]]) as usize, 4),
            127 => (
                u64::from_be_bytes(bytes[2..10].try_into().unwrap()) as usize,
                10,
            ),
            n => (n as usize, 2),
        };
        frames.push((opcode, bytes[header..header + len].to_vec()));
        bytes = &bytes[header + len..];
    }
    frames
}

/// A client that stops reading is cut off with 1013 and the cursor to resume from, without
/// holding up the writers, and resumes with nothing lost.
async fn slow_reader_is_cut_off_and_resumes(backend: Backend) {
    // A long keep-alive: this client is slow, not dead.
    let app = spawn_app_with(backend, |c| {
        c.subscriber_queue = 64;
        c.keepalive_seconds = 120;
        // This test is about the subscriber queue's cut-off (1013), not the write-stall one
        // (which closes without a frame) that slow writes on PostgreSQL could reach first.
        c.write_stall_seconds = 300;
    })
    .await;
    let start = app.head().await;
    let tcp = app.small_window_connection().await;
    let (stream, _) = tokio_tungstenite::client_async(
        app.ws_url(&format!("/ws?after={start}")),
        tokio_tungstenite::MaybeTlsStream::Plain(tcp),
    )
    .await
    .unwrap();
    let mut stalled = WsClient { stream };
    assert_eq!(stalled.next_json().await["op"], "welcome");

    // It reads nothing while big events (long image URLs) fill the socket buffers.
    let writes = 3000;
    app.create_big_funkos("Bulk", writes).await;
    let log = app.events_after(&start).await;
    assert_eq!(log.len(), writes);

    // Now it reads: events, then the close with the cursor after the last of them.
    let (code, reason, received) = stalled.closed().await;
    assert_eq!(code, 1013, "{reason}");
    let reason: Value = serde_json::from_str(&reason).unwrap();
    assert_eq!(reason["reason"], "slow");
    let delivered = received.len();
    println!("the stalled socket got {delivered} of {writes} events before the cut");
    assert!(
        delivered > 0 && delivered < writes,
        "cut off before the end"
    );
    assert_eq!(received, log[..delivered]);
    assert_eq!(reason["cursor"], log[delivered - 1]["id"]);

    // It resumes by that cursor and gets exactly the rest.
    let cursor = reason["cursor"].as_str().unwrap();
    let (mut resumed, _) = app.ws_welcomed(&format!("/ws?after={cursor}")).await;
    assert_eq!(
        resumed.take_events(writes - delivered).await,
        log[delivered..]
    );
}

/// Shutdown closes every socket with 1001 and the cursor to resume from, promptly.
async fn shutdown_closes_with_1001(backend: Backend) {
    let app = spawn_app(backend).await;
    let (mut ws, _) = app.ws_welcomed("/ws").await;
    let (mut filtered, _) = app.ws_welcomed("/ws?entity=CATEGORIES").await;
    let created = app.create_funko("Last one").await;
    assert_eq!(ws.next_event().await["data"], created);
    let head = app.head().await;
    let started = std::time::Instant::now();
    let stop = tokio::spawn(app.stop());
    for socket in [&mut ws, &mut filtered] {
        let (code, reason, events) = socket.closed().await;
        assert_eq!(code, 1001);
        assert!(events.is_empty());
        let reason: Value = serde_json::from_str(&reason).unwrap();
        assert_eq!(reason["reason"], "shutdown");
        // Past the filtered-out event too.
        assert_eq!(reason["cursor"], head.as_str());
        assert!(socket.next_message().await.is_none());
    }
    tokio::time::timeout(WAIT, stop)
        .await
        .expect("server stops")
        .unwrap();
    assert!(started.elapsed() < WAIT);
}

/// Node's `ws` package (a client nobody here wrote) offers the subprotocol and a token the
/// way a browser would, reads the welcome, pings, writes, and sees the same events as the log.
async fn node_ws_package_talks_the_protocol(backend: Backend) {
    if !node_ready() {
        return;
    }
    let app = spawn_app(backend).await;
    let start = app.head().await;
    let mut child = tokio::process::Command::new("node")
        .arg(js_dir().join("ws_client.mjs"))
        .arg(app.ws_url(&format!("/ws?after={start}")))
        .arg("4")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut printed = Vec::new();
    let mut next_line = async || -> Value {
        let line = tokio::time::timeout(WAIT, lines.next_line())
            .await
            .expect("the client prints in time")
            .unwrap()
            .expect("the client is still running");
        serde_json::from_str(&line).unwrap()
    };
    let open = next_line().await;
    assert_eq!(open["open"], json!({"protocol": "funko-live"}));
    // It creates one Funko over the socket; the REST writes make the rest.
    let result = loop {
        let line = next_line().await;
        printed.push(line.clone());
        if line["frame"]["op"] == "result" {
            break line["frame"].clone();
        }
    };
    assert_eq!(
        (result["requestId"].clone(), result["status"].clone()),
        (json!("node-1"), json!(201))
    );
    let created = app.create_funko("From REST").await;
    app.patch(&format!("/funkos/{}", created["id"]), json!({"stock": 0}))
        .await;
    app.delete(&format!("/funkos/{}", result["body"]["id"]))
        .await;
    loop {
        let line = next_line().await;
        if line.get("done").is_some() {
            break;
        }
        printed.push(line);
    }
    assert!(child.wait().await.unwrap().success());
    let frames: Vec<&Value> = printed.iter().map(|l| &l["frame"]).collect();
    assert_eq!(frames[0]["op"], "welcome");
    assert!(
        frames
            .iter()
            .any(|f| f["op"] == "pong" && f["requestId"] == "node-ping")
    );
    let events: Vec<Value> = frames
        .iter()
        .filter(|f| f.get("op").is_none())
        .map(|f| (*f).clone())
        .collect();
    assert_eq!(events, app.events_after(&start).await);
    assert_eq!(events.len(), 4);
    assert!(cursors(&events).windows(2).all(|w| w[0] < w[1]));
    assert_eq!(events[0]["data"], result["body"]);
}

/// With tokens configured, writes over the socket need one, exactly as REST's: from the
/// `Authorization` header or, as browsers must, a `bearer.<token>` subprotocol entry.
/// Reading stays public.
/// A page on another site can open `/ws` and read the stream, but while writes are open its
/// writes are refused with the REST answer (403), as are those through a Host that is not
/// loopback (DNS rebinding); this server's own pages write.
async fn open_writes_over_the_socket_follow_the_origin_rule(backend: Backend) {
    let app = spawn_app(backend).await;
    let connect = async |headers: &[(&'static str, String)]| {
        let mut request =
            tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
                app.ws_url("/ws"),
            )
            .unwrap();
        for (name, value) in headers {
            request.headers_mut().insert(*name, value.parse().unwrap());
        }
        let (stream, response) = tokio_tungstenite::connect_async(request).await.unwrap();
        assert_eq!(response.status(), 101, "reading is open to any origin");
        let mut ws = WsClient { stream };
        assert_eq!(ws.next_json().await["op"], "welcome");
        ws
    };
    let funko = json!({"name": "Cross-site", "price": 1, "stock": 1, "category": "OTROS"});
    let create = |id: &str| write("create", id, "FUNKOS", json!({"data": funko}));

    let mut evil = connect(&[("origin", "http://evil.example".into())]).await;
    let from_ws = ws_rejected(&app, &mut evil, create("e"), 403).await;
    let from_rest = app
        .assert_rejected(
            async {
                app.client
                    .post(app.url("/funkos"))
                    .header("Origin", "http://evil.example")
                    .json(&funko)
                    .send()
                    .await
                    .unwrap()
            },
            403,
        )
        .await;
    assert_eq!(from_ws, from_rest);
    let rebound = [
        ("host", "rebound.example".to_owned()),
        ("origin", "http://rebound.example".to_owned()),
    ];
    let mut rebound = connect(&rebound).await;
    ws_rejected(&app, &mut rebound, create("r"), 403).await;

    // The stream itself is open to it.
    let start = app.head().await;
    let mut own = connect(&[("origin", format!("http://{}", app.address))]).await;
    own.send_json(create("own")).await;
    let (result, _) = answer(&mut own, &json!("own")).await;
    assert_eq!(result["status"], 201, "{result}");
    let event = evil.next_event().await;
    assert_eq!(event["id"].as_str(), result["cursor"].as_str());
    assert!(event["id"].as_str().unwrap() > start.as_str());
}

async fn writes_need_the_same_token_as_rest(backend: Backend) {
    let app = spawn_app_with(backend, |c| c.api_tokens = vec!["s3cret".into()]).await;
    let connect = async |header: Option<(&'static str, &'static str)>| {
        let mut request =
            tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
                app.ws_url("/ws"),
            )
            .unwrap();
        if let Some((name, value)) = header {
            request.headers_mut().insert(name, value.parse().unwrap());
        }
        let (stream, _) = tokio_tungstenite::connect_async(request).await.unwrap();
        let mut ws = WsClient { stream };
        assert_eq!(ws.next_json().await["op"], "welcome");
        ws
    };
    let funko = json!({"name": "Guarded", "price": 1, "stock": 1, "category": "OTROS"});
    let create = |id: &str| write("create", id, "FUNKOS", json!({"data": funko}));

    let mut anonymous = connect(None).await;
    let from_ws = ws_rejected(&app, &mut anonymous, create("a"), 401).await;
    let from_rest = app
        .assert_rejected(app.post("/funkos", funko.clone()), 401)
        .await;
    assert_eq!(from_ws, from_rest);

    let mut wrong = connect(Some(("authorization", "Bearer nope"))).await;
    let from_ws = ws_rejected(&app, &mut wrong, create("w"), 403).await;
    let from_rest = app
        .assert_rejected(
            async {
                app.client
                    .post(app.url("/funkos"))
                    .bearer_auth("nope")
                    .json(&funko)
                    .send()
                    .await
                    .unwrap()
            },
            403,
        )
        .await;
    assert_eq!(from_ws, from_rest);

    let mut browser = connect(Some((
        "sec-websocket-protocol",
        "funko-live, bearer.s3cret",
    )))
    .await;
    let (result, event) = ws_written(&mut browser, create("b"), 201).await;
    assert_eq!(event["data"], result["body"]);
    // The anonymous socket reads the event all the same.
    assert_eq!(anonymous.next_event().await, event);

    let mut header = connect(Some(("authorization", "Bearer s3cret"))).await;
    let id = result["body"]["id"].clone();
    let (_, event) = ws_written(
        &mut header,
        write("delete", "h", "FUNKOS", json!({"id": id})),
        204,
    )
    .await;
    assert_eq!(anonymous.next_event().await, event);
}

/// A masked client frame (RFC 6455, 5.3): `opcode` with `payload`, short payloads only.
fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut frame = vec![0x80 | opcode, 0x80 | payload.len() as u8];
    frame.extend(mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// Live events and the socket's own frames (pongs, answers) share one socket. Through a small
/// receive window, with big events and the client pinging between writes, the wire stays a
/// sequence of whole, unmasked frames: the replay, then every live event, once and in order,
/// every ping ponged and every request answered.
async fn frames_stay_whole_when_events_and_answers_share_the_socket(backend: Backend) {
    let app = spawn_app(backend).await;
    let start = app.head().await;
    let replayed = 40;
    app.create_big_funkos("Replayed", replayed).await;
    let mut tcp = app.small_window_connection().await;
    tcp.write_all(
        format!(
            "GET /ws?after={start} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let (mut read, mut send) = tcp.into_split();
    let writes = 150;

    let writing = async {
        for i in 0..writes {
            app.create_big_funkos(&format!("Shared {i}"), 1).await;
            send.write_all(&client_frame(0x9, format!("p{i}").as_bytes()))
                .await
                .unwrap();
            let request = json!({"op": "ping", "requestId": format!("r{i}")}).to_string();
            send.write_all(&client_frame(0x1, request.as_bytes()))
                .await
                .unwrap();
        }
    };
    let reading = async {
        let mut bytes = Vec::new();
        let mut buf = vec![0; 8192];
        let (mut events, mut pongs, mut answers) = (Vec::new(), Vec::new(), Vec::new());
        let mut at = None;
        while events.len() < replayed + writes || pongs.len() < writes || answers.len() < writes {
            let n = read.read(&mut buf).await.unwrap();
            assert!(n > 0, "the server closed the socket");
            bytes.extend_from_slice(&buf[..n]);
            let body = *at.get_or_insert_with(|| {
                assert!(bytes.starts_with(b"HTTP/1.1 101"));
                bytes.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4
            });
            // Whole frames off the front; a partial one waits for more bytes.
            let mut rest = &bytes[body..];
            loop {
                if rest.len() < 2 {
                    break;
                }
                assert_eq!(rest[0] & 0xf0, 0x80, "FIN, no reserved bits: {:x}", rest[0]);
                assert_eq!(rest[1] & 0x80, 0, "server frames are unmasked");
                let (len, header) = match rest[1] & 0x7f {
                    126 if rest.len() >= 4 => (u16::from_be_bytes([rest[2], rest[3]]) as usize, 4),
                    127 if rest.len() >= 10 => (
                        u64::from_be_bytes(rest[2..10].try_into().unwrap()) as usize,
                        10,
                    ),
                    126 | 127 => break,
                    n => (n as usize, 2),
                };
                if rest.len() < header + len {
                    break;
                }
                let payload = &rest[header..header + len];
                match rest[0] & 0x0f {
                    0x1 => {
                        let frame: Value = serde_json::from_slice(payload)
                            .unwrap_or_else(|err| panic!("a text frame is JSON: {err}"));
                        match frame["op"].as_str() {
                            Some("welcome") => {}
                            Some("pong") => answers.push(frame["requestId"].clone()),
                            Some(op) => panic!("unexpected {op}: {frame}"),
                            None => events.push(frame),
                        }
                    }
                    0xa => pongs.push(String::from_utf8(payload.to_vec()).unwrap()),
                    op => panic!("unexpected opcode {op:x}"),
                }
                rest = &rest[header + len..];
            }
            let consumed = bytes.len() - rest.len();
            bytes.drain(body..consumed);
        }
        (events, pongs, answers)
    };
    let ((), (events, pongs, answers)) =
        tokio::time::timeout(WAIT * 4, async { tokio::join!(writing, reading) })
            .await
            .expect("every event, pong and answer in time");
    let log = app.events_after(&start).await;
    assert_eq!(cursors(&events), cursors(&log), "the events' cursors");
    assert!(events == log, "the events are the log's");
    let expected = |prefix| {
        (0..writes)
            .map(|i| format!("{prefix}{i}"))
            .collect::<Vec<_>>()
    };
    assert_eq!(pongs, expected("p"));
    assert_eq!(answers, expected("r"));
}

crate::backend_tests!(
    frames_stay_whole_when_events_and_answers_share_the_socket,
    open_writes_over_the_socket_follow_the_origin_rule,
    welcome_first_with_the_head_cursor,
    same_events_as_sse_and_long_poll,
    subscribe_and_resubscribe_with_cursor_and_filters,
    resets_for_future_and_expired_cursors,
    funko_writes_answer_like_rest,
    category_writes_answer_like_rest,
    every_request_in_flight_gets_its_own_answer,
    bad_frames_get_errors_and_the_socket_stays_open,
    a_frame_over_64_kib_closes_with_1009,
    idle_sockets_are_pinged_and_dead_ones_closed,
    slow_reader_is_cut_off_and_resumes,
    shutdown_closes_with_1001,
    node_ws_package_talks_the_protocol,
    writes_need_the_same_token_as_rest,
);
