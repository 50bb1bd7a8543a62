//! Client frames in, commands or listed field errors out.

use proptest::prelude::*;

use serde_json::json;

use super::*;

/// JSON values whose objects use the frame's keys, so generated frames reach the
/// checks of every op.
fn frame_like() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        prop::sample::select(vec![
            "subscribe",
            "ping",
            "create",
            "update",
            "delete",
            "FUNKOS",
            "CATEGORIES",
            "CREATE",
            "*",
            "\"1\"",
            "é",
            "",
        ])
        .prop_map(Value::from),
        any::<String>().prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map(
                prop::sample::select(vec![
                    "op",
                    "requestId",
                    "entity",
                    "id",
                    "data",
                    "ifMatch",
                    "after",
                    "types",
                    "name",
                    "x",
                ])
                .prop_map(str::to_owned),
                inner,
                0..6,
            )
            .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

proptest! {
    /// No text frame can make the parser panic; a refusal is always a 400.
    #[test]
    fn any_text_frame_parses_or_is_a_400(text in any::<String>()) {
        if let (_, Err(err)) = parse_frame(&text) {
            prop_assert_eq!(err.status().as_u16(), 400);
        }
    }

    #[test]
    fn any_frame_shaped_json_parses_or_is_a_400(frame in frame_like()) {
        if let (_, Err(err)) = parse_frame(&frame.to_string()) {
            prop_assert_eq!(err.status().as_u16(), 400);
        }
    }

}

fn parsed(text: &str) -> (Value, Result<Command, ApiError>) {
    parse_frame(text)
}

fn bad(text: &str) -> (Value, ApiError) {
    let (id, command) = parsed(text);
    (id, command.err().expect("refused"))
}

#[test]
fn frames_that_are_not_commands_are_400_with_the_request_id_when_known() {
    for text in ["", "nope", "[1]", "{}", r#"{"op":5}"#, r#"{"op":"upsert"}"#] {
        let (id, err) = bad(text);
        assert_eq!(err.status().as_u16(), 400, "{text}");
        assert!(id.is_null());
    }
    let (id, err) = bad(r#"{"op":"create","requestId":"r1","entity":"FUNKOS"}"#);
    assert_eq!(id, json!("r1"));
    let fields: Vec<_> = err
        .body()
        .errors
        .unwrap()
        .into_iter()
        .map(|e| e.field)
        .collect();
    assert_eq!(fields, ["data"]);
    let (_, err) = bad(r#"{"op":"delete","entity":"USERS","id":"x"}"#);
    let fields: Vec<_> = err
        .body()
        .errors
        .unwrap()
        .into_iter()
        .map(|e| e.field)
        .collect();
    assert_eq!(fields, ["requestId", "entity", "id"]);
    let (id, err) = bad(r#"{"op":"ping","requestId":{"a":1}}"#);
    assert!(id.is_null());
    assert_eq!(err.status().as_u16(), 400);
}

#[test]
fn writes_and_subscriptions_parse() {
    let (id, command) = parsed(
        r#"{"op":"update","requestId":7,"entity":"funkos","id":3,"data":{},"ifMatch":"\"2\""}"#,
    );
    assert_eq!(id, json!(7));
    let Ok(Command::Write(Write {
        entity: Entity::Funkos,
        action:
            Action::Update {
                id: 3,
                if_match: Some(IfMatch::Tags(tags)),
                ..
            },
    })) = command
    else {
        panic!("an update");
    };
    assert_eq!(tags, ["2"]);
    let (_, err) =
        bad(r#"{"op":"update","requestId":1,"entity":"FUNKOS","id":3,"data":{},"ifMatch":"2"}"#);
    assert_eq!(err.status().as_u16(), 400);
    let (_, err) =
        bad(r#"{"op":"delete","requestId":1,"entity":"CATEGORIES","id":3,"ifMatch":"*"}"#);
    assert_eq!(err.status().as_u16(), 400);

    let (_, command) = parsed(
        r#"{"op":"subscribe","after":"42","entity":"CATEGORIES","types":["CREATE","delete"]}"#,
    );
    let Ok(Command::Subscribe { start, filter }) = command else {
        panic!("a subscribe");
    };
    assert_eq!(start, Start::After(42));
    assert_eq!(
        filter,
        Filter::parse(Some("CATEGORIES"), ["CREATE,DELETE"]).unwrap()
    );
    let (_, command) = parsed(r#"{"op":"subscribe","after":null}"#);
    assert!(matches!(
        command,
        Ok(Command::Subscribe {
            start: Start::Now,
            ..
        })
    ));
    for text in [
        r#"{"op":"subscribe","after":"x"}"#,
        r#"{"op":"subscribe","after":-1}"#,
        r#"{"op":"subscribe","entity":"USERS"}"#,
        r#"{"op":"subscribe","types":["UPSERT"]}"#,
        r#"{"op":"subscribe","types":[1]}"#,
    ] {
        assert_eq!(bad(text).1.status().as_u16(), 400, "{text}");
    }
}

#[test]
fn close_reasons_fit_a_close_frame() {
    for reason in CloseReason::ALL {
        let Message::Close(Some((code, text))) = reason.frame(i64::MAX) else {
            panic!("a close frame");
        };
        assert_eq!(u16::from(code), reason.code());
        assert!(text.len() <= 123, "{text}");
    }
}
