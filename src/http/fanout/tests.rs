//! The fan-out's parts on a real socket, and its chunk framing.

use std::time::Duration;

use tokio::time::Instant;

use super::*;
use crate::{
    domain::event::{Entity, EventKind},
    http::net::Writer,
};

/// CPU time this thread has used (from `/proc`, in clock ticks of 10 ms).
fn thread_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
    // The fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

/// A member whose socket takes nothing when its keep-alive is due waits for the socket
/// without using the CPU, and is cut off after the write-stall time.
#[tokio::test(flavor = "current_thread")]
async fn a_keep_alive_the_socket_cannot_take_stalls_out_without_spinning() {
    let dir = tempfile::tempdir().unwrap();
    let db = crate::db::Db::connect(&format!("sqlite://{}/h.db", dir.path().display()))
        .await
        .unwrap();
    db.migrate().await.unwrap();
    let tail = Tail::new(db, 64).await.unwrap();
    let hub = Hub::start(tail.clone(), 1);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = tokio::net::TcpSocket::new_v4().unwrap();
    client.set_recv_buffer_size(4096).unwrap();
    let _client = client
        .connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (server, _) = listener.accept().await.unwrap();
    socket2::SockRef::from(&server)
        .set_tcp_notsent_lowat(16 * 1024)
        .unwrap();
    let socket = crate::http::net::Shared::new(server);
    let outlet = socket.outlet().clone();
    // The client reads nothing: fill the socket until it takes not one more byte.
    while outlet.try_write(Writer::Outside(0), b":").is_ok() {}

    let membership = hub.join(outlet, Framing::Sse, Filter::default(), tail.head());
    let (keep_alive, write_stall) = (Duration::from_millis(50), Duration::from_secs(1));
    let (started, cpu) = (Instant::now(), thread_cpu());
    let ending = tokio::time::timeout(
        5 * write_stall,
        membership.run(Some(keep_alive), write_stall),
    )
    .await;
    let (waited, used) = (started.elapsed(), thread_cpu() - cpu);
    assert!(
        matches!(ending, Ok(Ending::Abort(ref err)) if err.kind() == io::ErrorKind::TimedOut),
        "cut off as stalled"
    );
    assert!(
        waited >= write_stall,
        "not before the write-stall time: {waited:?}"
    );
    assert!(used < waited / 4, "{used:?} of CPU in {waited:?}");
    tail.close();
}

fn event(id: i64, entity: Entity) -> StoredEvent {
    StoredEvent::new(id, entity, EventKind::Create, "{}", "t")
}

/// A chunk as a client's decoder reads it: the size line, then that many bytes, then
/// CRLF.
fn dechunk(chunk: &[u8]) -> String {
    let text = std::str::from_utf8(chunk).unwrap();
    let (size, rest) = text.split_once("\r\n").unwrap();
    let size = usize::from_str_radix(size, 16).unwrap();
    assert_eq!(&rest[size..], "\r\n");
    rest[..size].to_owned()
}

#[test]
fn a_batch_is_one_chunk_of_the_frames_the_filter_passes() {
    let events = [event(7, Entity::Funkos), event(8, Entity::Categories)];
    let (all, n) = render(&events, Framing::Sse, &Filter::default()).unwrap();
    assert_eq!(n, 2);
    assert_eq!(
        dechunk(&all),
        format!(
            "{}{}",
            std::str::from_utf8(&events[0].sse).unwrap(),
            std::str::from_utf8(&events[1].sse).unwrap()
        )
    );
    let funkos = Filter::parse(Some("FUNKOS"), []).unwrap();
    // The batch ends in an event the filter hides: the cursor moves past it too.
    let (some, n) = render(&events, Framing::Sse, &funkos).unwrap();
    assert_eq!(n, 1);
    assert_eq!(
        dechunk(&some),
        format!("{}id: 8\n\n", std::str::from_utf8(&events[0].sse).unwrap())
    );
    // None pass: the cursor still moves past them.
    let (none, n) = render(&events[1..], Framing::Sse, &funkos).unwrap();
    assert_eq!(n, 0);
    assert_eq!(dechunk(&none), "id: 8\n\n");
    assert!(render(&[], Framing::Sse, &funkos).is_none());
    assert_eq!(dechunk(KEEP_ALIVE_CHUNK), ":\n\n");
}

/// Unmasked server frames as a client reads them: (FIN, opcode, payload).
fn ws_decode(mut bytes: &[u8]) -> Vec<(bool, u8, Vec<u8>)> {
    let mut frames = Vec::new();
    while !bytes.is_empty() {
        assert_eq!(bytes[1] & 0x80, 0, "a server's frames are not masked");
        let (len, header) = match bytes[1] & 0x7f {
            126 => (u16::from_be_bytes([bytes[2], bytes[3]]) as usize, 4),
            127 => (
                u64::from_be_bytes(bytes[2..10].try_into().unwrap()) as usize,
                10,
            ),
            n => (n as usize, 2),
        };
        frames.push((
            bytes[0] & 0x80 != 0,
            bytes[0] & 0x0f,
            bytes[header..header + len].to_vec(),
        ));
        bytes = &bytes[header + len..];
    }
    frames
}

#[test]
fn a_batch_for_websockets_is_one_text_frame_per_event_the_filter_passes() {
    let sized = |id, len: usize| {
        let data = format!(r#"{{"name":"{}"}}"#, "x".repeat(len));
        StoredEvent::new(id, Entity::Funkos, EventKind::Create, &data, "t")
    };
    // Payloads on each side of the 7-bit and 16-bit length limits.
    let events = [
        sized(1, 0),
        sized(2, 125),
        sized(3, 126),
        sized(4, 70_000),
        event(5, Entity::Categories),
    ];
    let (all, n) = render(&events, Framing::WebSocket(Wrap::Plain), &Filter::default()).unwrap();
    assert_eq!(n, 5);
    let frames = ws_decode(&all);
    assert_eq!(frames.len(), 5);
    for ((fin, opcode, payload), event) in frames.iter().zip(&events) {
        assert!(*fin);
        assert_eq!(*opcode, 0x1);
        assert_eq!(payload, event.json.get().as_bytes());
    }
    let funkos = Filter::parse(Some("FUNKOS"), []).unwrap();
    let (some, n) = render(&events, Framing::WebSocket(Wrap::Plain), &funkos).unwrap();
    assert_eq!((n, ws_decode(&some).len()), (4, 4));
    // None pass: nothing to write, but there were events (the cursor moves past them).
    let (none, n) = render(&events[4..], Framing::WebSocket(Wrap::Plain), &funkos).unwrap();
    assert_eq!((n, none.len()), (0, 0));
    assert!(render(&[], Framing::WebSocket(Wrap::Plain), &funkos).is_none());
}

#[test]
fn a_socket_io_frame_is_an_event_packet_with_the_cursor_last() {
    let events = [event(7, Entity::Funkos), event(8, Entity::Categories)];
    let wrap = Wrap::SocketIo {
        head: r#"42/ws/v1/funkos,["updates","#,
    };
    let funkos = Filter::parse(Some("FUNKOS"), []).unwrap();
    let (frames, n) = render(&events, Framing::WebSocket(wrap), &funkos).unwrap();
    assert_eq!(n, 1);
    let frames = ws_decode(&frames);
    let expected = format!(
        r#"42/ws/v1/funkos,["updates",{},"7"]"#,
        events[0].json.get()
    );
    assert_eq!(frames, [(true, 0x1, expected.into_bytes())]);
}
