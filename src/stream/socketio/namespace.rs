//! Socket.IO v5 on top of an Engine.IO session: the two namespaces, each a
//! [`Subscription`] filtered on its entity. On connect a socket gets `connection` (a welcome
//! string, to it alone), then `updates` (the event object: `{id, entity, type, data,
//! createdAt}`) for every change as it commits, and `reset` (`{cursor, reason}`) when its
//! cursor cannot be served. Clients only listen: their events and acks are ignored.

use std::sync::Arc;

use serde_json::Value;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{
    engine::{Session, SessionEnd, random_id},
    packet::{self, SioKind},
};
use crate::{
    domain::event::{Entity, Reset},
    events::{BATCH, Filter, Next, Start, Subscription},
    metrics::{METRICS, Transport},
    stream::{start_from_json, start_from_text},
};

struct Namespace {
    path: &'static str,
    entity: Entity,
    welcome: &'static str,
}

const NAMESPACES: [Namespace; 2] = [
    Namespace {
        path: "/ws/v1/funkos",
        entity: Entity::Funkos,
        welcome: "Updates Funkos WS: funko-live",
    },
    Namespace {
        path: "/ws/v1/categories",
        entity: Entity::Categories,
        welcome: "Updates Categories WS: funko-live",
    },
];

impl Namespace {
    fn find(path: &str) -> Option<&'static Self> {
        let path = path
            .strip_suffix('/')
            .filter(|p| !p.is_empty())
            .unwrap_or(path);
        NAMESPACES.iter().find(|ns| ns.path == path)
    }
}

/// A session's connection to one namespace: the task that serves it, and the CONNECT it
/// serves. A CONNECT to a namespace the session is connected to restarts that task with the
/// new payload, so a session has at most one task per namespace however many CONNECTs it
/// sends.
pub(super) struct NamespaceSlot {
    stop: CancellationToken,
    /// The namespace as the client spelled it, and its CONNECT payload (`auth`).
    connect: watch::Sender<(String, String)>,
}

/// Handles one Socket.IO packet; an error closes the session.
pub(super) fn on_packet(session: &Arc<Session>, text: &str) -> Result<(), &'static str> {
    let packet = packet::parse_socketio(text).ok_or("not a Socket.IO packet")?;
    match packet.kind {
        SioKind::Connect => connect(session, packet.nsp, packet.data)?,
        SioKind::Disconnect => {
            let slot = Namespace::find(packet.nsp).and_then(|namespace| {
                session
                    .sockets
                    .lock()
                    .expect("sockets lock poisoned")
                    .remove(namespace.path)
            });
            if let Some(slot) = slot {
                slot.stop.cancel();
            }
        }
        SioKind::Event | SioKind::Ack => {}
        SioKind::ConnectError => return Err("CONNECT_ERROR is a server packet"),
        SioKind::BinaryEvent | SioKind::BinaryAck => {
            return Err("binary packets are not supported");
        }
    }
    Ok(())
}

/// Serves a CONNECT: refuses an unknown namespace at once (no task), restarts the task of a
/// namespace the session is connected to, or starts one.
fn connect(session: &Arc<Session>, nsp: &str, auth: &str) -> Result<(), &'static str> {
    let Some(namespace) = Namespace::find(nsp) else {
        let message = "Invalid namespace: use /ws/v1/funkos or /ws/v1/categories";
        return if session.try_send(packet::connect_error(nsp, message)) {
            Ok(())
        } else {
            Err("CONNECTs faster than their answers are read")
        };
    };
    let request = (nsp.to_owned(), auth.to_owned());
    let mut sockets = session.sockets.lock().expect("sockets lock poisoned");
    if let Some(slot) = sockets.get(namespace.path) {
        slot.connect.send_replace(request);
        return Ok(());
    }
    let (connect, requests) = watch::channel(request);
    let stop = session.closed.child_token();
    sockets.insert(
        namespace.path,
        NamespaceSlot {
            stop: stop.clone(),
            connect,
        },
    );
    tokio::spawn(run_socket(session.clone(), namespace, requests, stop));
    Ok(())
}

/// Where a socket starts: the first cursor of `auth` (`cursor`, `lastEventId`, `after`; a
/// string or a number), else the handshake's query cursor, else now.
fn start_from(auth: &str, query_cursor: Option<&str>) -> Result<Start, String> {
    if !auth.trim().is_empty() {
        let Ok(Value::Object(auth)) = serde_json::from_str::<Value>(auth) else {
            return Err("auth must be a JSON object".to_owned());
        };
        for key in ["cursor", "lastEventId", "after"] {
            match start_from_json(key, auth.get(key)) {
                Ok(Start::Now) => continue,
                started => return started.map_err(|err| err.to_string()),
            }
        }
    }
    start_from_text("cursor", query_cursor).map_err(|err| err.to_string())
}

/// One namespace's connection: serves its latest CONNECT (accept or refuse, welcome, then
/// the subscription's events) until the client leaves the namespace or the session ends; a
/// new CONNECT starts it over.
async fn run_socket(
    session: Arc<Session>,
    namespace: &'static Namespace,
    mut requests: watch::Receiver<(String, String)>,
    stop: CancellationToken,
) {
    loop {
        let (nsp, auth) = requests.borrow_and_update().clone();
        tokio::select! {
            biased;
            () = stop.cancelled() => return,
            changed = requests.changed() => if changed.is_err() { return },
            () = stream(&session, namespace, &nsp, &auth, &stop) => {
                // Refused, or the stream ended: wait for a new CONNECT.
                tokio::select! {
                    () = stop.cancelled() => return,
                    changed = requests.changed() => if changed.is_err() { return },
                }
            }
        }
    }
}

async fn stream(
    session: &Session,
    namespace: &Namespace,
    nsp: &str,
    auth: &str,
    stop: &CancellationToken,
) {
    let start = match start_from(auth, session.query_cursor.as_deref()) {
        Ok(start) => start,
        Err(message) => {
            session
                .send(stop, packet::connect_error(nsp, &message))
                .await;
            return;
        }
    };
    let filter = Filter {
        entity: Some(namespace.entity),
        types: Vec::new(),
    };
    let opened = tokio::select! {
        biased;
        () = stop.cancelled() => return,
        opened = Subscription::open(session.state.tail.clone(), start, filter) => opened,
    };
    let (mut subscription, reset) = match opened {
        Ok(opened) => opened,
        Err(err) => {
            tracing::warn!(error = %err, "opening a Socket.IO subscription failed");
            session
                .send(
                    stop,
                    packet::connect_error(nsp, "the stream is unavailable; retry"),
                )
                .await;
            return;
        }
    };
    let welcome = Value::from(namespace.welcome).to_string();
    let mut greeting = vec![
        packet::connect(nsp, &random_id()),
        packet::event(nsp, "connection", &welcome),
    ];
    if let Some(reset) = reset {
        greeting.push(reset_packet(nsp, &reset));
    }
    for packet in greeting {
        if !session.send(stop, packet).await {
            return;
        }
    }
    loop {
        let next = tokio::select! {
            biased;
            () = stop.cancelled() => return,
            next = subscription.next(BATCH) => next,
        };
        match next {
            Next::Events { events, .. } => {
                METRICS.delivered(Transport::SocketIo, events.len());
                for event in events {
                    if !session
                        .send(stop, packet::event(nsp, "updates", event.json.get()))
                        .await
                    {
                        return;
                    }
                }
            }
            Next::Reset(reset) => {
                if !session.send(stop, reset_packet(nsp, &reset)).await {
                    return;
                }
            }
            // Closing the transport (not a Socket.IO disconnect) makes socket.io-client
            // reconnect, re-sending its `auth`: it resumes from its cursor.
            Next::End { why, .. } => return session.close(SessionEnd::Stream(why)),
        }
    }
}

fn reset_packet(nsp: &str, reset: &Reset) -> String {
    let body = serde_json::to_string(reset).expect("a reset serializes");
    packet::event(nsp, "reset", &body)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Any CONNECT payload and query cursor gives a start or a refusal, never a panic.
        #[test]
        fn any_auth_gives_a_start_or_a_refusal(auth in any::<String>(), query in any::<Option<String>>()) {
            let _ = start_from(&auth, query.as_deref());
            let _ = Namespace::find(&auth);
        }
    }

    #[test]
    fn namespaces() {
        assert_eq!(
            Namespace::find("/ws/v1/funkos").map(|n| n.entity),
            Some(Entity::Funkos)
        );
        assert_eq!(
            Namespace::find("/ws/v1/categories/").map(|n| n.entity),
            Some(Entity::Categories)
        );
        assert!(Namespace::find("/").is_none());
        assert!(Namespace::find("/ws/v1/productos").is_none());
    }

    #[test]
    fn cursors_from_auth_then_query() {
        assert_eq!(start_from("", None), Ok(Start::Now));
        assert_eq!(start_from("{}", None), Ok(Start::Now));
        assert_eq!(start_from(r#"{"cursor":"12"}"#, None), Ok(Start::After(12)));
        assert_eq!(
            start_from(r#"{"lastEventId":7}"#, None),
            Ok(Start::After(7))
        );
        assert_eq!(
            start_from(r#"{"after":"3","x":1}"#, None),
            Ok(Start::After(3))
        );
        assert_eq!(
            start_from(r#"{"cursor":null,"after":"4"}"#, Some("9")),
            Ok(Start::After(4))
        );
        assert_eq!(
            start_from(r#"{"token":"t"}"#, Some("9")),
            Ok(Start::After(9))
        );
        assert_eq!(start_from("", Some(" ")), Ok(Start::Now));
        for bad in [
            r#"{"cursor":"abc"}"#,
            r#"{"cursor":-1}"#,
            r#"{"after":[1]}"#,
            "[1]",
            "{",
        ] {
            assert!(start_from(bad, None).is_err(), "{bad}");
        }
        assert!(start_from("", Some("x")).is_err());
    }
}
