//! The SSE fan-out writes live events below hyper, on the connection's socket. Whatever
//! happens on that connection, its bytes must stay one valid HTTP/1.1 exchange: this drives
//! the hand-over between hyper and the fan-out through keep-alive comments, a request
//! pipelined behind the stream, partial writes to a client that reads slowly, and the
//! stream's end, and checks the bytes on the wire.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{Backend, WAIT, cursors, spawn_app_with};

/// Reads from `socket` into `wire` until `done(wire)` holds; panics after [`WAIT`].
async fn read_until(
    socket: &mut tokio::net::TcpStream,
    wire: &mut Vec<u8>,
    what: &str,
    done: impl Fn(&[u8]) -> bool,
) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !done(wire) {
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, socket.read(&mut buf))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{what}: not in time; read {}",
                    String::from_utf8_lossy(wire)
                )
            })
            .unwrap();
        assert!(n > 0, "{what}: the connection ended early");
        wire.extend_from_slice(&buf[..n]);
    }
}

/// A chunked body decoded: the chunks' contents, and the bytes after its last chunk.
struct Chunked {
    chunks: Vec<Vec<u8>>,
    /// Whether the zero-length chunk that ends the body came.
    ended: bool,
    rest: Vec<u8>,
}

/// Decodes a chunked body, panicking at the first byte that is not chunked framing.
fn dechunk(mut body: &[u8]) -> Chunked {
    let mut chunks = Vec::new();
    loop {
        let Some(line_end) = body.windows(2).position(|w| w == b"\r\n") else {
            return Chunked {
                chunks,
                ended: false,
                rest: body.to_vec(),
            };
        };
        let size = std::str::from_utf8(&body[..line_end])
            .ok()
            .and_then(|s| usize::from_str_radix(s, 16).ok())
            .unwrap_or_else(|| {
                panic!(
                    "not a chunk size: {:?}",
                    String::from_utf8_lossy(&body[..line_end])
                )
            });
        let data = &body[line_end + 2..];
        if data.len() < size + 2 {
            return Chunked {
                chunks,
                ended: false,
                rest: body.to_vec(),
            };
        }
        assert_eq!(&data[size..size + 2], b"\r\n", "a chunk ends with CRLF");
        if size == 0 {
            return Chunked {
                chunks,
                ended: true,
                rest: data[2..].to_vec(),
            };
        }
        chunks.push(data[..size].to_vec());
        body = &data[size + 2..];
    }
}

/// Checks that `text` is whole Server-Sent Events frames and returns the ids of its change
/// events.
fn sse_frames(text: &str) -> Vec<i64> {
    assert!(
        text.is_empty() || text.ends_with("\n\n"),
        "ends at a frame's end"
    );
    let mut ids = Vec::new();
    for frame in text.split("\n\n").filter(|f| !f.is_empty()) {
        let mut id = None;
        let mut data = None;
        for line in frame.lines() {
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            match field {
                "" => {}
                "id" => id = Some(value.trim().parse::<i64>().unwrap()),
                "data" => data = Some(value.trim().to_owned()),
                "retry" | "event" => {}
                other => panic!("not an SSE field: {other:?} in {frame:?}"),
            }
        }
        if let (Some(id), Some(data)) = (id, data) {
            let event: serde_json::Value = serde_json::from_str(&data).expect("an event's JSON");
            assert_eq!(event["id"], id.to_string());
            ids.push(id);
        }
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wire_stays_one_valid_chunked_stream_through_every_handover() {
    let app = spawn_app_with(Backend::Sqlite, |c| {
        c.keepalive_seconds = 1;
        c.subscriber_queue = 64;
    })
    .await;
    let start = app.head().await;
    let mut socket = app.small_window_connection().await;
    // The stream, and a request pipelined behind it on the same connection.
    socket
        .write_all(
            format!(
                "GET /events?lastEventId={start} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n\
                 GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut wire = Vec::new();
    read_until(&mut socket, &mut wire, "the stream's head", |w| {
        w.windows(4).any(|x| x == b"\r\n\r\n")
    })
    .await;
    let head_end = wire.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = String::from_utf8_lossy(&wire[..head_end]).to_lowercase();
    assert!(
        head.starts_with("http/1.1 200") && head.contains("transfer-encoding: chunked"),
        "{head}"
    );

    // Live and quiet: keep-alive comments come from the fan-out.
    read_until(&mut socket, &mut wire, "two keep-alives", |w| {
        w.windows(5).filter(|x| x == b":\n\n\r\n").count() >= 2
    })
    .await;

    // Big events to a client that reads slowly: the socket fills, writes are partial.
    app.create_big_funkos("Wire", 40).await;
    let slowly = |wire: &mut Vec<u8>| {
        let mut buf = [0u8; 1024];
        if let Ok(n) = socket.try_read(&mut buf) {
            wire.extend_from_slice(&buf[..n]);
        }
    };
    for _ in 0..200 {
        slowly(&mut wire);
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    // Far more than the subscriber queue: the stream is cut off and ends, and the pipelined
    // request is answered after it.
    app.create_big_funkos("Flood", 300).await;
    read_until(
        &mut socket,
        &mut wire,
        "the stream's end and the pipelined answer",
        |w| {
            let chunked = dechunk(&w[head_end..]);
            chunked.ended && chunked.rest.windows(4).any(|x| x == b"\r\n\r\n")
        },
    )
    .await;
    let chunked = dechunk(&wire[head_end..]);
    let body = String::from_utf8(chunked.chunks.concat()).expect("UTF-8 frames");
    for chunk in &chunked.chunks {
        let text = String::from_utf8_lossy(chunk);
        assert!(
            text.ends_with("\n\n"),
            "every chunk is whole frames: {text:?}"
        );
    }
    let ids = sse_frames(&body);
    let log = cursors(&app.events_after(&start).await);
    assert!(
        !ids.is_empty() && ids.len() < log.len(),
        "some events, then the cut"
    );
    assert_eq!(
        ids,
        log[..ids.len()],
        "a prefix of the log, in order, once each"
    );
    let answer = String::from_utf8_lossy(&chunked.rest);
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "the pipelined request's answer: {answer}"
    );
    let mut rest = Vec::new();
    tokio::time::timeout(WAIT, socket.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
}
