//! The text framing of Engine.IO v4 and Socket.IO v5: parsing what clients send, encoding
//! what the server sends. Binary packets are not part of this server's protocol: a client
//! that sends one is refused like any packet the server cannot take.

use serde_json::{Map, Value};

/// Separates packets in one HTTP long-polling body.
pub(super) const SEPARATOR: char = '\x1e';

/// Engine.IO packets the server sends without a payload.
pub(super) const CLOSE: &str = "1";
pub(super) const PING: &str = "2";
pub(super) const NOOP: &str = "6";
/// The answer to the `2probe` a client sends over a WebSocket before upgrading to it.
pub(super) const PROBE_ANSWER: &str = "3probe";
pub(super) const PROBE: &str = "2probe";
/// What a client sends on the probed WebSocket to finish the upgrade.
pub(super) const UPGRADE: &str = "5";

/// An Engine.IO packet from a client.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum EngineIn<'a> {
    Close,
    Ping(&'a str),
    Pong,
    /// A Socket.IO packet.
    Message(&'a str),
    Upgrade,
    Noop,
}

pub(super) fn parse_engine(text: &str) -> Option<EngineIn<'_>> {
    // `None` when the text is empty or its first character is more than one byte.
    let rest = text.get(1..)?;
    Some(match text.as_bytes()[0] {
        b'1' => EngineIn::Close,
        b'2' => EngineIn::Ping(rest),
        b'3' => EngineIn::Pong,
        b'4' => EngineIn::Message(rest),
        b'5' => EngineIn::Upgrade,
        b'6' => EngineIn::Noop,
        _ => return None,
    })
}

/// The handshake: the session id and the heartbeat the client must follow.
pub(super) fn open(
    sid: &str,
    can_upgrade: bool,
    ping_interval_ms: u128,
    ping_timeout_ms: u128,
) -> String {
    let upgrades: &[&str] = if can_upgrade { &["websocket"] } else { &[] };
    let handshake = serde_json::json!({
        "sid": sid,
        "upgrades": upgrades,
        "pingInterval": ping_interval_ms,
        "pingTimeout": ping_timeout_ms,
        "maxPayload": super::MAX_PAYLOAD,
    });
    format!("0{handshake}")
}

/// A Socket.IO packet from a client (inside an Engine.IO message), checked as the protocol
/// requires; anything else is refused, and the session closed.
#[derive(Debug, PartialEq)]
pub(super) enum SioIn<'a> {
    /// Joins a namespace, with its `auth` payload (empty when none was sent).
    Connect {
        nsp: &'a str,
        auth: Map<String, Value>,
    },
    Disconnect {
        nsp: &'a str,
    },
    /// An event: its name, its arguments, and the id its ACK must carry, if it wants one.
    Event {
        nsp: &'a str,
        ack: Option<u64>,
        name: String,
        args: Vec<Value>,
    },
    /// An answer to an event of the server's; the server sends none that want one.
    Ack {
        nsp: &'a str,
    },
}

/// Event names the protocol reserves for the client library's own use.
const RESERVED_EVENTS: [&str; 6] = [
    "connect",
    "connect_error",
    "disconnect",
    "disconnecting",
    "newListener",
    "removeListener",
];

/// Parses `<type>[<attachments>-][<namespace>,][<ack id>][<JSON>]`.
pub(super) fn parse_socketio(text: &str) -> Result<SioIn<'_>, &'static str> {
    // `None` when the text is empty or its first character is more than one byte.
    let mut rest = text.get(1..).ok_or("not a Socket.IO packet")?;
    let kind = text.as_bytes()[0];
    match kind {
        b'0'..=b'3' => {}
        b'4' => return Err("CONNECT_ERROR is a server packet"),
        b'5' | b'6' => return Err("binary packets are not supported"),
        _ => return Err("not a Socket.IO packet"),
    }
    let nsp = if rest.starts_with('/') {
        let end = rest.find(',').unwrap_or(rest.len());
        let nsp = &rest[..end];
        rest = rest.get(end + 1..).unwrap_or("");
        nsp
    } else {
        "/"
    };
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let ack = match digits {
        0 => None,
        // Ids count up from 0 or 1 per socket: more digits than this is not an id.
        1..=15 => Some(rest[..digits].parse().expect("ascii digits")),
        _ => return Err("an ack id too long"),
    };
    let payload = &rest[digits..];
    let json = || -> Result<Value, &'static str> {
        crate::domain::parse_json_strictly(payload.as_bytes())
            .map_err(|_| "a payload that is not JSON")
    };
    Ok(match kind {
        b'0' if payload.is_empty() => SioIn::Connect {
            nsp,
            auth: Map::new(),
        },
        b'0' => match json()? {
            Value::Object(auth) => SioIn::Connect { nsp, auth },
            _ => return Err("a CONNECT payload that is not an object"),
        },
        b'1' if payload.is_empty() => SioIn::Disconnect { nsp },
        b'1' => return Err("a DISCONNECT with a payload"),
        b'2' => {
            let Value::Array(mut args) = json()? else {
                return Err("an EVENT payload that is not an array");
            };
            let name = match args.first() {
                Some(Value::String(name)) if !RESERVED_EVENTS.contains(&name.as_str()) => {
                    name.clone()
                }
                Some(Value::Number(number)) => number.to_string(),
                _ => return Err("an EVENT without a name, or with a reserved one"),
            };
            args.remove(0);
            SioIn::Event {
                nsp,
                ack,
                name,
                args,
            }
        }
        _ => match json()? {
            Value::Array(_) => SioIn::Ack { nsp },
            _ => return Err("an ACK payload that is not an array"),
        },
    })
}

/// `4` (message) + the Socket.IO type + the namespace, as every server packet begins.
fn sio_head(kind: char, nsp: &str, capacity: usize) -> String {
    let mut packet = String::with_capacity(3 + nsp.len() + capacity);
    packet.push('4');
    packet.push(kind);
    if nsp != "/" {
        packet.push_str(nsp);
        packet.push(',');
    }
    packet
}

/// Accepts a namespace connection: `sid` identifies the socket, `pid` the session a client
/// recovers with (connection state recovery).
pub(super) fn connect(nsp: &str, sid: &str, pid: &str) -> String {
    let mut packet = sio_head('0', nsp, sid.len() + pid.len() + 20);
    packet.push_str(&serde_json::json!({ "sid": sid, "pid": pid }).to_string());
    packet
}

/// Refuses a namespace connection; `socket.io-client` emits `connect_error` with `message`.
pub(super) fn connect_error(nsp: &str, message: &str) -> String {
    let mut packet = sio_head('4', nsp, message.len() + 16);
    packet.push_str(&serde_json::json!({ "message": message }).to_string());
    packet
}

/// An event with one argument, already rendered as JSON, and its offset as the last
/// argument: the cursor a client recovers from, as connection state recovery has it.
pub(super) fn event(nsp: &str, name: &str, argument_json: &str, offset: i64) -> String {
    let name = Value::from(name).to_string();
    let mut packet = sio_head('2', nsp, name.len() + argument_json.len() + 24);
    packet.push('[');
    packet.push_str(&name);
    packet.push(',');
    packet.push_str(argument_json);
    packet.push_str(",\"");
    packet.push_str(&offset.to_string());
    packet.push_str("\"]");
    packet
}

/// The answer to the client's event `id`: one argument, rendered as JSON.
pub(super) fn ack(nsp: &str, id: u64, argument_json: &str) -> String {
    let id = id.to_string();
    let mut packet = sio_head('3', nsp, id.len() + argument_json.len() + 2);
    packet.push_str(&id);
    packet.push('[');
    packet.push_str(argument_json);
    packet.push(']');
    packet
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Parses `text` as a client packet at both levels, as the transports do.
    fn parse_both(text: &str) {
        if let Some(EngineIn::Message(message)) = parse_engine(text) {
            let _ = parse_socketio(message);
        }
        let _ = parse_socketio(text);
    }

    proptest! {
        /// No text a client sends can make the parsers panic.
        #[test]
        fn any_text_parses_or_is_refused(text in any::<String>()) {
            parse_both(&text);
        }

        /// Bytes as the transports see them: a polling body is checked for UTF-8 first, then
        /// split on the separator.
        #[test]
        fn any_bytes_parse_or_are_refused(bytes in any::<Vec<u8>>()) {
            if let Ok(text) = std::str::from_utf8(&bytes) {
                for packet in text.split(SEPARATOR) {
                    parse_both(packet);
                }
            }
            parse_both(&String::from_utf8_lossy(&bytes));
        }

        /// Text close to the protocol's shape, to reach past the first byte.
        #[test]
        fn packet_shaped_text_parses_or_is_refused(
            text in "[0-6é]{0,3}[0-9é-]{0,3}(/[a-zé/]{0,6},?)?[0-9é]{0,3}[\\[\\]{}\",é0-9a-z]{0,12}"
        ) {
            parse_both(&text);
        }
    }

    #[test]
    fn engine_packets() {
        assert_eq!(parse_engine("2probe"), Some(EngineIn::Ping("probe")));
        assert_eq!(parse_engine("3"), Some(EngineIn::Pong));
        assert_eq!(parse_engine("5"), Some(EngineIn::Upgrade));
        assert_eq!(parse_engine("40/a,"), Some(EngineIn::Message("0/a,")));
        assert_eq!(parse_engine(""), None);
        assert_eq!(parse_engine("9"), None);
        let open: serde_json::Value =
            serde_json::from_str(open("abc", true, 15000, 20000).strip_prefix('0').unwrap())
                .unwrap();
        assert_eq!(
            open,
            serde_json::json!({"sid":"abc","upgrades":["websocket"],"pingInterval":15000,
                               "pingTimeout":20000,"maxPayload":super::super::MAX_PAYLOAD})
        );
    }

    #[test]
    fn socketio_packets_from_clients() {
        let connect = parse_socketio(r#"0/ws/v1/funkos,{"cursor":"5"}"#).unwrap();
        let SioIn::Connect { nsp, auth } = connect else {
            panic!("{connect:?}")
        };
        assert_eq!((nsp, auth["cursor"].as_str()), ("/ws/v1/funkos", Some("5")));
        assert_eq!(
            parse_socketio("0/a,").unwrap(),
            SioIn::Connect {
                nsp: "/a",
                auth: Map::new()
            }
        );
        assert_eq!(
            parse_socketio("1/a").unwrap(),
            SioIn::Disconnect { nsp: "/a" }
        );
        assert_eq!(
            parse_socketio("0").unwrap(),
            SioIn::Connect {
                nsp: "/",
                auth: Map::new()
            }
        );
        assert_eq!(
            parse_socketio(r#"2/a,12["hi",1]"#).unwrap(),
            SioIn::Event {
                nsp: "/a",
                ack: Some(12),
                name: "hi".into(),
                args: vec![1.into()]
            }
        );
        assert_eq!(
            parse_socketio(r#"2["hi"]"#).unwrap(),
            SioIn::Event {
                nsp: "/",
                ack: None,
                name: "hi".into(),
                args: vec![]
            }
        );
        assert_eq!(parse_socketio("3/a,4[]").unwrap(), SioIn::Ack { nsp: "/a" });
        for bad in [
            "",
            "7",
            "abc",
            r#"51-/a,["up",{"_placeholder":true,"num":0}]"#,
            r#"6/a,1[]"#,
            r#"4{"message":"x"}"#,
            "0[1]",
            "0/a,{",
            r#"1/a,{}"#,
            "2{}",
            "2[]",
            "2abc[]",
            r#"2["connect"]"#,
            r#"2[{"a":1}]"#,
            r#"2["x",{"a":1,"a":2}]"#,
            "3/a,1{}",
            "21234567890123456[\"x\"]",
        ] {
            assert!(parse_socketio(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn server_packets() {
        assert_eq!(connect("/a", "x", "p"), r#"40/a,{"sid":"x","pid":"p"}"#);
        assert_eq!(connect("/", "x", "p"), r#"40{"sid":"x","pid":"p"}"#);
        assert_eq!(connect_error("/a", "no"), r#"44/a,{"message":"no"}"#);
        assert_eq!(
            event("/a", "updates", r#"{"id":"1"}"#, 1),
            r#"42/a,["updates",{"id":"1"},"1"]"#
        );
        assert_eq!(ack("/", 7, r#"{"status":201}"#), r#"437[{"status":201}]"#);
        assert_eq!(ack("/a", 0, "null"), r#"43/a,0[null]"#);
    }
}
