//! `openapi/asyncapi.yaml` stays true: its schemas have the property names, required fields
//! and enum values of the ones the server serves at `/openapi.json`; it lists exactly the
//! `op`s and close codes `/ws` uses; and real frames from a running server (WebSocket and
//! SSE, both directions) validate against it.

use funko_live::{ClientOp, CloseReason, ServerOp};
use serde_json::{Value, json};

use crate::helpers::{Backend, WsClient, WsMessage, spawn_app};

fn asyncapi() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/asyncapi.yaml");
    let text = std::fs::read_to_string(path).expect("openapi/asyncapi.yaml is committed");
    serde_yaml::from_str(&text).expect("asyncapi.yaml is YAML")
}

/// Follows a local `$ref` (`#/a/b`).
fn resolve<'a>(doc: &'a Value, value: &'a Value) -> &'a Value {
    match value.get("$ref").and_then(Value::as_str) {
        Some(reference) => {
            let pointer = reference.strip_prefix('#').expect("a local $ref");
            let target = doc
                .pointer(pointer)
                .unwrap_or_else(|| panic!("{reference} does not resolve"));
            resolve(doc, target)
        }
        None => value,
    }
}

fn names(value: &Value) -> Vec<String> {
    let mut names: Vec<String> = match value {
        Value::Object(map) => map.keys().cloned().collect(),
        Value::Array(items) => items
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect(),
        _ => Vec::new(),
    };
    names.sort();
    names
}

#[tokio::test]
async fn schemas_match_the_ones_the_server_serves() {
    let app = spawn_app(Backend::Sqlite).await;
    let served: Value = app.get("/openapi.json").await.json().await.unwrap();
    let served = &served["components"]["schemas"];
    let doc = asyncapi();
    let documented = &doc["components"]["schemas"];
    for name in [
        "ChangeEvent",
        "Funko",
        "Category",
        "FunkoInput",
        "FunkoPatch",
        "CategoryInput",
        "Problem",
        "FieldProblem",
        "Reset",
    ] {
        let (ours, theirs) = (&documented[name], &served[name]);
        assert!(
            theirs.is_object(),
            "the server no longer has a {name} schema"
        );
        assert_eq!(
            names(&ours["properties"]),
            names(&theirs["properties"]),
            "{name}'s properties"
        );
        assert_eq!(
            names(&ours["required"]),
            names(&theirs["required"]),
            "{name}'s required fields"
        );
    }
    for name in ["Entity", "EventKind", "ResetReason"] {
        assert_eq!(
            documented[name]["enum"], served[name]["enum"],
            "{name}'s values"
        );
    }
    // One event schema for every transport.
    for channel in ["socket", "events"] {
        let message = resolve(&doc, &doc["channels"][channel]["messages"]["changeEvent"]);
        assert_eq!(
            message["payload"]["$ref"], "#/components/schemas/ChangeEvent",
            "{channel}"
        );
    }
}

/// The `op` constant of each message an operation list names.
fn ops(doc: &Value, messages: &Value) -> Vec<Option<String>> {
    messages
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let payload = resolve(doc, &resolve(doc, m)["payload"]);
            payload["properties"]["op"]["const"]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

#[test]
fn every_op_and_close_code_of_the_socket_is_documented() {
    let doc = asyncapi();
    let (mut sent, mut received) = (Vec::new(), Vec::new());
    for operation in doc["operations"].as_object().unwrap().values() {
        if operation["channel"]["$ref"] != "#/channels/socket" {
            continue;
        }
        match operation["action"].as_str().unwrap() {
            "send" => sent.extend(ops(&doc, &operation["messages"])),
            "receive" => {
                received.extend(ops(&doc, &operation["messages"]));
                sent.extend(ops(&doc, &operation["reply"]["messages"]));
            }
            other => panic!("unknown action {other}"),
        }
    }
    // Events are the only frames without an op.
    assert!(sent.contains(&None), "change events are documented");
    let mut sent: Vec<String> = sent.into_iter().flatten().collect();
    sent.sort();
    sent.dedup();
    let mut server: Vec<String> = ServerOp::ALL.map(|o| o.as_str().to_owned()).into();
    server.sort();
    assert_eq!(sent, server, "ops the server sends");
    let mut received: Vec<String> = received
        .into_iter()
        .map(|op| op.expect("client frames have an op"))
        .collect();
    received.sort();
    let mut client: Vec<String> = ClientOp::ALL.map(|o| o.as_str().to_owned()).into();
    client.sort();
    assert_eq!(received, client, "ops the server accepts");

    let documented: Vec<(u64, String)> = doc["channels"]["socket"]["x-close-codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["code"].as_u64().unwrap(),
                c["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let mut used: Vec<(u64, String)> = CloseReason::ALL
        .map(|r| (u64::from(r.code()), r.as_str().to_owned()))
        .into();
    used.sort();
    assert_eq!(documented, used, "close codes");
}

#[test]
fn every_reference_resolves() {
    fn walk(doc: &Value, value: &Value) {
        match value {
            Value::Object(map) => {
                if map.contains_key("$ref") {
                    resolve(doc, value);
                }
                map.values().for_each(|v| walk(doc, v));
            }
            Value::Array(items) => items.iter().for_each(|v| walk(doc, v)),
            _ => {}
        }
    }
    let doc = asyncapi();
    assert_eq!(doc["asyncapi"], "3.0.0");
    walk(&doc, &doc);
}

/// Validates `value` against a schema of the document: `$ref`, `oneOf`, `type`, `const`,
/// `enum`, `required`, `properties` (taken as the complete list) and `items`.
fn check(doc: &Value, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    let schema = resolve(doc, schema);
    if let Some(branches) = schema["oneOf"].as_array() {
        let fits = branches
            .iter()
            .filter(|b| check(doc, b, value, at).is_ok())
            .count();
        return match fits {
            1 => Ok(()),
            n => Err(format!("{at}: {value} fits {n} of oneOf")),
        };
    }
    if let Some(expected) = schema.get("const")
        && value != expected
    {
        return Err(format!("{at}: {value} is not {expected}"));
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(value)
    {
        return Err(format!("{at}: {value} is not one of {allowed:?}"));
    }
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    let type_fits = |t: &str| match t {
        "null" => value.is_null(),
        "string" => value.is_string(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        "object" => value.is_object(),
        "array" => value.is_array(),
        other => panic!("type {other}"),
    };
    if !types.is_empty() && !types.iter().any(|t| type_fits(t)) {
        return Err(format!("{at}: {value} is not {types:?}"));
    }
    if let Some(object) = value.as_object()
        && let Some(properties) = schema["properties"].as_object()
    {
        for required in schema["required"].as_array().into_iter().flatten() {
            let required = required.as_str().unwrap();
            if !object.contains_key(required) {
                return Err(format!("{at}: {required} is missing"));
            }
        }
        for (key, field) in object {
            let Some(property) = properties.get(key) else {
                return Err(format!("{at}: {key} is not documented"));
            };
            check(doc, property, field, &format!("{at}.{key}"))?;
        }
    }
    if let (Some(items), Some(schema)) = (value.as_array(), schema.get("items")) {
        for (i, item) in items.iter().enumerate() {
            check(doc, schema, item, &format!("{at}[{i}]"))?;
        }
    }
    Ok(())
}

/// Checks a frame against the messages of `channel` that `direction` (`send`: the server's,
/// `receive`: the client's) may carry; exactly one must fit.
fn assert_documented(doc: &Value, channel: &str, direction: &str, frame: &Value) {
    let mut messages = Vec::new();
    for operation in doc["operations"].as_object().unwrap().values() {
        if operation["channel"]["$ref"] != format!("#/channels/{channel}") {
            continue;
        }
        let list = match (operation["action"].as_str(), direction) {
            (Some("send"), "send") => &operation["messages"],
            (Some("receive"), "receive") => &operation["messages"],
            (Some("receive"), "send") => &operation["reply"]["messages"],
            _ => continue,
        };
        messages.extend(list.as_array().into_iter().flatten().cloned());
    }
    let fits: Vec<String> = messages
        .iter()
        .map(|m| resolve(doc, m))
        .filter(|m| check(doc, &m["payload"], frame, "frame").is_ok())
        .map(|m| m["name"].as_str().unwrap().to_owned())
        .collect();
    let mut distinct = fits.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        1,
        "{frame} fits {fits:?} of {channel}/{direction}; errors: {:?}",
        messages
            .iter()
            .map(|m| check(doc, &resolve(doc, m)["payload"], frame, "frame"))
            .collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_on_the_wire_match_the_document() {
    let doc = asyncapi();
    let app = spawn_app(Backend::Sqlite).await;
    let start = app.head().await;
    let future = (start.parse::<i64>().unwrap() + 1000).to_string();
    let (mut ws, welcome) = app.ws_welcomed(&format!("/ws?after={future}")).await;
    let mut server = vec![welcome];
    let mut client = Vec::new();
    let mut exchange = async |ws: &mut WsClient, frame: Value, answers: usize| {
        client.push(frame.clone());
        ws.send_json(frame).await;
        let mut got = Vec::new();
        for _ in 0..answers {
            got.push(ws.next_json().await);
        }
        got
    };
    server.push(ws.next_json().await); // the reset
    server.extend(exchange(&mut ws, json!({"op": "ping"}), 1).await);
    server.extend(exchange(&mut ws, json!({"op": "ping", "requestId": 1}), 1).await);
    server.extend(
        exchange(
            &mut ws,
            json!({"op": "subscribe", "requestId": "s", "after": start, "entity": null, "types": ["CREATE", "UPDATE", "DELETE"]}),
            1,
        )
        .await,
    );
    let funko =
        json!({"name": "Doc", "price": 2.5, "stock": 1, "category": "OTROS", "description": null});
    server.extend(
        exchange(
            &mut ws,
            json!({"op": "create", "requestId": "c", "entity": "FUNKOS", "data": funko}),
            2,
        )
        .await,
    );
    let id = server.iter().find(|f| f["requestId"] == "c").unwrap()["body"]["id"].clone();
    server.extend(
        exchange(
            &mut ws,
            json!({"op": "update", "requestId": "u", "entity": "FUNKOS", "id": id, "data": {"stock": 3}, "ifMatch": "\"1\""}),
            2,
        )
        .await,
    );
    server.extend(
        exchange(
            &mut ws,
            json!({"op": "create", "requestId": "cat", "entity": "CATEGORIES", "data": {"name": "DOCS"}}),
            2,
        )
        .await,
    );
    server.extend(
        exchange(
            &mut ws,
            json!({"op": "delete", "requestId": "d", "entity": "FUNKOS", "id": id}),
            2,
        )
        .await,
    );
    server.extend(
        exchange(
            &mut ws,
            json!({"op": "create", "requestId": "bad", "entity": "FUNKOS", "data": {"price": -1}}),
            1,
        )
        .await,
    );
    ws.send(WsMessage::text("not json")).await;
    server.push(ws.next_json().await);
    ws.send(WsMessage::binary(vec![1u8])).await;
    server.push(ws.next_json().await);

    let ops: Vec<Value> = server.iter().map(|f| f["op"].clone()).collect();
    for op in ServerOp::ALL {
        assert!(ops.contains(&json!(op.as_str())), "{op:?} was exercised");
    }
    assert!(ops.contains(&Value::Null), "events were exercised");
    assert!(
        server.iter().any(|f| f["body"]["errors"].is_array()),
        "field errors were exercised"
    );
    for frame in &server {
        assert_documented(&doc, "socket", "send", frame);
    }
    // The one meant to be refused breaks FunkoInput's rules on purpose.
    client.retain(|frame| frame["requestId"] != "bad");
    for frame in &client {
        assert_documented(&doc, "socket", "receive", frame);
    }

    // SSE: the events and the reset.
    let mut sse = app.sse(&format!("/events?lastEventId={start}"), None).await;
    for _ in 0..4 {
        let event = sse.next_event().await;
        assert_documented(&doc, "events", "send", &event);
    }
    let mut sse = app.sse("/events", Some(&future)).await;
    loop {
        let frame = sse.next_frame().await.unwrap();
        if frame.event.as_deref() == Some("reset") {
            assert_documented(&doc, "events", "send", &frame.json());
            break;
        }
    }
}
