//! Socket.IO's namespaces, and what a CONNECT asks of one.
//!
//! The main namespace `/` carries every change; `/ws/v1/funkos` and `/ws/v1/categories` (the
//! course project's) carry those of their entity. Each connected namespace is one
//! [`Subscription`](crate::events::Subscription): the same order, cursors, replay, resets and
//! cut-off as every other transport. On connect a socket gets `connection` (a welcome
//! string), then `updates` (the change event) for each change as it commits, and `reset`
//! (`{cursor, reason}`) when its cursor cannot be served.
//!
//! Every event's last argument is its offset, the cursor after it, which is how Socket.IO's
//! connection state recovery works: `socket.io-client` keeps the last offset it saw and sends
//! it back, with the `pid` of the CONNECT answer, when it reconnects. The offset is a cursor
//! into the durable log, so recovery holds across restarts and instances, for as long as the
//! log keeps the events.

use serde_json::{Map, Value};

use crate::{
    domain::{event::Entity, view::View},
    events::{Filter, Start},
    stream::{start_from_json, start_from_text, view_from_json, view_from_text},
};

pub(super) struct Namespace {
    pub(super) path: &'static str,
    /// The entity its events are about; all of them when `None`.
    pub(super) entity: Option<Entity>,
    pub(super) welcome: &'static str,
    /// An `updates` EVENT packet up to its first argument, for the fan-out's frames.
    pub(super) updates_head: &'static str,
}

const NAMESPACES: [Namespace; 3] = [
    Namespace {
        path: "/",
        entity: None,
        welcome: "Updates WS: funko-live",
        updates_head: r#"42["updates","#,
    },
    Namespace {
        path: "/ws/v1/funkos",
        entity: Some(Entity::Funkos),
        welcome: "Updates Funkos WS: funko-live",
        updates_head: r#"42/ws/v1/funkos,["updates","#,
    },
    Namespace {
        path: "/ws/v1/categories",
        entity: Some(Entity::Categories),
        welcome: "Updates Categories WS: funko-live",
        updates_head: r#"42/ws/v1/categories,["updates","#,
    },
];

impl Namespace {
    /// The namespace a packet names; a trailing `/` is accepted.
    pub(super) fn find(path: &str) -> Option<&'static Self> {
        let path = path
            .strip_suffix('/')
            .filter(|p| !p.is_empty())
            .unwrap_or(path);
        NAMESPACES.iter().find(|ns| ns.path == path)
    }

    /// Its entity's events, or those of a view (of Funkos only).
    pub(super) fn filter(&self, view: Option<View>) -> Result<Filter, String> {
        let filter = Filter {
            entity: self.entity,
            ..Filter::default()
        };
        filter.with_view(view).map_err(|err| err.to_string())
    }
}

/// What a CONNECT asks for, read from its `auth` payload.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Connect {
    pub(super) start: Start,
    /// The view filters (`category`, `q`, `minPrice`, `maxPrice`) of `auth`, else of the
    /// handshake's query.
    pub(super) view: Option<View>,
    /// The session the client recovers: the `pid` it sent with an offset.
    pub(super) recovering: Option<String>,
    /// `auth.token`, for the writes of this namespace.
    pub(super) token: Option<String>,
}

/// Reads a CONNECT's `auth`. Where the socket starts: after the `offset` of a recovering
/// client (one that sent the `pid` it was given), else after the first cursor of `cursor`,
/// `lastEventId`, `after` (a string or a number), else after the handshake query's, else now.
/// The handshake's query (`cursor`, `lastEventId`, `after` and the view filters) is for tools
/// that cannot send `auth`. An `Err` is the message of the CONNECT_ERROR that refuses it.
pub(super) fn read_connect(auth: &Map<String, Value>, query: &str) -> Result<Connect, String> {
    let query: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let in_query = |name: &str| {
        query
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.clone())
    };
    let token = match auth.get("token") {
        None | Some(Value::Null) => None,
        Some(Value::String(token)) => Some(token.clone()),
        Some(_) => return Err("auth.token must be a string".to_owned()),
    };
    let view = if VIEW_FIELDS.iter().any(|name| auth.contains_key(*name)) {
        view_from_json(|name| auth.get(name))
    } else {
        view_from_text(in_query)
    }
    .map_err(|err| err.to_string())?;
    let connect = |start, recovering| Connect {
        start,
        view: view.clone(),
        recovering,
        token: token.clone(),
    };
    if let (Some(Value::String(pid)), Some(Value::String(offset))) =
        (auth.get("pid"), auth.get("offset"))
        && is_pid(pid)
        && let Ok(start @ Start::After(_)) = start_from_text("offset", Some(offset))
    {
        return Ok(connect(start, Some(pid.clone())));
    }
    for key in ["cursor", "lastEventId", "after"] {
        match start_from_json(key, auth.get(key)) {
            Ok(Start::Now) => continue,
            Ok(start) => return Ok(connect(start, None)),
            Err(err) => return Err(err.to_string()),
        }
    }
    let cursor = ["cursor", "lastEventId", "after"]
        .into_iter()
        .find_map(in_query);
    let start = start_from_text("cursor", cursor.as_deref()).map_err(|err| err.to_string())?;
    Ok(connect(start, None))
}

/// The `auth` (or query) fields that make a namespace's subscription a view.
const VIEW_FIELDS: [&str; 4] = ["category", "q", "minPrice", "maxPrice"];

/// A `pid` this server could have issued ([`super::session::random_id`]), so one it echoes
/// back is never an arbitrary string of the client's.
fn is_pid(pid: &str) -> bool {
    (1..=64).contains(&pid.len()) && pid.bytes().all(|b| b.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn auth(json: &str) -> Map<String, Value> {
        match serde_json::from_str(json).unwrap() {
            Value::Object(map) => map,
            _ => panic!("not an object: {json}"),
        }
    }

    fn start(json: &str, query: Option<&str>) -> Result<Start, String> {
        let query = query
            .map(|cursor| format!("cursor={cursor}"))
            .unwrap_or_default();
        read_connect(&auth(json), &query).map(|c| c.start)
    }

    proptest! {
        /// Any CONNECT payload and query cursor gives a start or a refusal, never a panic.
        #[test]
        fn any_auth_gives_a_start_or_a_refusal(
            auth in proptest::collection::btree_map("[a-z]{1,8}", any::<String>(), 0..4),
            query in any::<Option<String>>(),
        ) {
            let auth: Map<String, Value> = auth.into_iter().map(|(k, v)| (k, v.into())).collect();
            let _ = read_connect(&auth, query.as_deref().unwrap_or(""));
            let _ = Namespace::find(query.as_deref().unwrap_or(""));
        }
    }

    #[test]
    fn the_fanout_frames_updates_as_the_session_does() {
        for namespace in &NAMESPACES {
            let packet = super::super::packet::event(namespace.path, "updates", "{}", 42);
            assert_eq!(packet, format!(r#"{}{{}},"42"]"#, namespace.updates_head));
        }
    }

    #[test]
    fn namespaces() {
        assert_eq!(
            Namespace::find("/ws/v1/funkos").map(|n| n.entity),
            Some(Some(Entity::Funkos))
        );
        assert_eq!(
            Namespace::find("/ws/v1/categories/").map(|n| n.entity),
            Some(Some(Entity::Categories))
        );
        assert_eq!(Namespace::find("/").map(|n| n.entity), Some(None));
        assert!(Namespace::find("/ws/v1/productos").is_none());
        assert!(Namespace::find("").is_none());
    }

    #[test]
    fn cursors_from_recovery_then_auth_then_query() {
        assert_eq!(start("{}", None), Ok(Start::Now));
        assert_eq!(start(r#"{"cursor":"12"}"#, None), Ok(Start::After(12)));
        assert_eq!(start(r#"{"lastEventId":7}"#, None), Ok(Start::After(7)));
        assert_eq!(start(r#"{"after":"3","x":1}"#, None), Ok(Start::After(3)));
        assert_eq!(
            start(r#"{"cursor":null,"after":"4"}"#, Some("9")),
            Ok(Start::After(4))
        );
        assert_eq!(start(r#"{"token":"t"}"#, Some("9")), Ok(Start::After(9)));
        assert_eq!(start("{}", Some(" ")), Ok(Start::Now));
        for bad in [
            r#"{"cursor":"abc"}"#,
            r#"{"cursor":-1}"#,
            r#"{"after":[1]}"#,
            r#"{"token":1}"#,
        ] {
            assert!(start(bad, None).is_err(), "{bad}");
        }
        assert!(start("{}", Some("x")).is_err());

        // A recovering client: its offset wins over its own cursor.
        let recovering = read_connect(
            &auth(r#"{"pid":"abc123","offset":"40","cursor":"5","token":"t"}"#),
            "",
        )
        .unwrap();
        assert_eq!(
            recovering,
            Connect {
                start: Start::After(40),
                view: None,
                recovering: Some("abc123".into()),
                token: Some("t".into()),
            }
        );
        // No offset (the client saw no event yet), or a pid or offset this server did not
        // issue: no recovery, the other rules decide.
        for json in [
            r#"{"pid":"abc123","cursor":"5"}"#,
            r#"{"pid":"abc123","offset":"x","cursor":"5"}"#,
            r#"{"pid":"not one!","offset":"40","cursor":"5"}"#,
            r#"{"pid":7,"offset":"40","cursor":"5"}"#,
        ] {
            let connect = read_connect(&auth(json), "").unwrap();
            assert_eq!(
                (connect.start, connect.recovering),
                (Start::After(5), None),
                "{json}"
            );
        }
    }
}
