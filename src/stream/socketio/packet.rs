//! The text framing of Engine.IO v4 and Socket.IO v5: parsing what clients send, encoding
//! what the server sends. Binary packets are not part of this server's protocol.

/// Separates packets in one HTTP long-polling body.
pub(super) const SEPARATOR: char = '\x1e';

/// Engine.IO packets the server sends without a payload.
pub(super) const CLOSE: &str = "1";
pub(super) const PING: &str = "2";
pub(super) const NOOP: &str = "6";
/// The answer to the `2probe` a client sends over a WebSocket before upgrading to it.
pub(super) const PROBE_ANSWER: &str = "3probe";
pub(super) const PROBE: &str = "2probe";

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

/// Socket.IO packet types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum SioKind {
    Connect,
    Disconnect,
    Event,
    Ack,
    ConnectError,
    BinaryEvent,
    BinaryAck,
}

/// A Socket.IO packet from a client (inside an Engine.IO message).
#[derive(Debug, PartialEq, Eq)]
pub(super) struct SioIn<'a> {
    pub kind: SioKind,
    /// The namespace, `/` when the packet names none.
    pub nsp: &'a str,
    /// The JSON payload, possibly empty.
    pub data: &'a str,
}

/// Parses `<type>[<attachments>-][<namespace>,][<ack id>][<JSON>]`.
pub(super) fn parse_socketio(text: &str) -> Option<SioIn<'_>> {
    let mut rest = text.get(1..)?;
    let kind = match text.as_bytes()[0] {
        b'0' => SioKind::Connect,
        b'1' => SioKind::Disconnect,
        b'2' => SioKind::Event,
        b'3' => SioKind::Ack,
        b'4' => SioKind::ConnectError,
        b'5' => SioKind::BinaryEvent,
        b'6' => SioKind::BinaryAck,
        _ => return None,
    };
    if matches!(kind, SioKind::BinaryEvent | SioKind::BinaryAck) {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        rest = rest[digits..].strip_prefix('-')?;
    }
    let nsp = if rest.starts_with('/') {
        let end = rest.find(',').unwrap_or(rest.len());
        let nsp = &rest[..end];
        rest = rest.get(end + 1..).unwrap_or("");
        nsp
    } else {
        "/"
    };
    let ack_digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    Some(SioIn {
        kind,
        nsp,
        data: &rest[ack_digits..],
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

/// Accepts a namespace connection; `sid` identifies the socket.
pub(super) fn connect(nsp: &str, sid: &str) -> String {
    let mut packet = sio_head('0', nsp, sid.len() + 10);
    packet.push_str(&serde_json::json!({ "sid": sid }).to_string());
    packet
}

/// Refuses a namespace connection; `socket.io-client` emits `connect_error` with `message`.
pub(super) fn connect_error(nsp: &str, message: &str) -> String {
    let mut packet = sio_head('4', nsp, message.len() + 16);
    packet.push_str(&serde_json::json!({ "message": message }).to_string());
    packet
}

/// An event with one argument, already rendered as JSON.
pub(super) fn event(nsp: &str, name: &str, argument_json: &str) -> String {
    let name = serde_json::Value::from(name).to_string();
    let mut packet = sio_head('2', nsp, name.len() + argument_json.len() + 3);
    packet.push('[');
    packet.push_str(&name);
    packet.push(',');
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
        assert_eq!(
            connect,
            SioIn {
                kind: SioKind::Connect,
                nsp: "/ws/v1/funkos",
                data: r#"{"cursor":"5"}"#
            }
        );
        assert_eq!(parse_socketio("0/a,").unwrap().data, "");
        assert_eq!(parse_socketio("1/a").unwrap().nsp, "/a");
        assert_eq!(parse_socketio("0").unwrap().nsp, "/");
        let event = parse_socketio(r#"2/a,12["hi",1]"#).unwrap();
        assert_eq!((event.kind, event.data), (SioKind::Event, r#"["hi",1]"#));
        let binary = parse_socketio(r#"51-/a,["up",{"_placeholder":true,"num":0}]"#).unwrap();
        assert_eq!((binary.kind, binary.nsp), (SioKind::BinaryEvent, "/a"));
        assert_eq!(parse_socketio("7"), None);
        assert_eq!(parse_socketio("51/a,"), None);
    }

    #[test]
    fn server_packets() {
        assert_eq!(connect("/a", "x"), r#"40/a,{"sid":"x"}"#);
        assert_eq!(connect("/", "x"), r#"40{"sid":"x"}"#);
        assert_eq!(connect_error("/a", "no"), r#"44/a,{"message":"no"}"#);
        assert_eq!(
            event("/a", "updates", r#"{"id":"1"}"#),
            r#"42/a,["updates",{"id":"1"}]"#
        );
    }
}
