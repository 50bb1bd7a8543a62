//! A minimal HTTP/1.1 client over one keep-alive TCP connection: just enough for load
//! (one buffered write per request, `httparse` for the head, Content-Length or chunked
//! bodies) and for reading streams (SSE bodies through [`Dechunk`]).

use std::{
    net::{IpAddr, SocketAddr},
    sync::LazyLock,
};

use anyhow::{Context, bail};
use memchr::memmem;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
};

/// Opens a TCP connection to `addr` from `src` (a loopback address: each one has its own
/// ~28,000 ephemeral ports).
pub async fn connect(addr: SocketAddr, src: Option<IpAddr>) -> anyhow::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    if let Some(src) = src {
        socket.set_reuseaddr(true)?;
        socket.bind(SocketAddr::new(src, 0))?;
    }
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// How a response body is framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    Length(usize),
    Chunked,
    /// Until the connection closes.
    Close,
}

pub struct Head {
    pub status: u16,
    pub framing: Framing,
    pub stream_cursor: Option<String>,
}

pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
    pub stream_cursor: Option<String>,
}

pub struct Conn {
    pub stream: TcpStream,
    /// Bytes read but not consumed yet.
    pub buf: Vec<u8>,
    host: String,
}

impl Conn {
    pub async fn open(addr: SocketAddr, src: Option<IpAddr>) -> anyhow::Result<Self> {
        Ok(Self {
            stream: connect(addr, src).await?,
            buf: Vec::with_capacity(4096),
            host: addr.to_string(),
        })
    }

    /// Writes a request in one write.
    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        extra_headers: &str,
        body: Option<&[u8]>,
    ) -> anyhow::Result<()> {
        let mut req = Vec::with_capacity(256 + body.map_or(0, <[u8]>::len));
        req.extend_from_slice(method.as_bytes());
        req.push(b' ');
        req.extend_from_slice(path.as_bytes());
        req.extend_from_slice(b" HTTP/1.1\r\nHost: ");
        req.extend_from_slice(self.host.as_bytes());
        req.extend_from_slice(b"\r\n");
        req.extend_from_slice(extra_headers.as_bytes());
        if let Some(body) = body {
            req.extend_from_slice(b"Content-Type: application/json\r\nContent-Length: ");
            req.extend_from_slice(body.len().to_string().as_bytes());
            req.extend_from_slice(b"\r\n\r\n");
            req.extend_from_slice(body);
        } else {
            req.extend_from_slice(b"\r\n");
        }
        self.stream.write_all(&req).await?;
        Ok(())
    }

    async fn fill(&mut self) -> anyhow::Result<usize> {
        if self.buf.capacity() - self.buf.len() < 2048 {
            self.buf.reserve(8192);
        }
        let n = self.stream.read_buf(&mut self.buf).await?;
        Ok(n)
    }

    /// Reads a response head; the body's first bytes stay in `buf`.
    pub async fn read_head(&mut self) -> anyhow::Result<Head> {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut res = httparse::Response::new(&mut headers);
            match res.parse(&self.buf)? {
                httparse::Status::Complete(len) => {
                    let status = res.code.unwrap_or(0);
                    let mut framing = Framing::Close;
                    let mut stream_cursor = None;
                    for h in res.headers.iter() {
                        if h.name.eq_ignore_ascii_case("content-length") {
                            let v = std::str::from_utf8(h.value)?.trim().parse()?;
                            framing = Framing::Length(v);
                        } else if h.name.eq_ignore_ascii_case("transfer-encoding")
                            && h.value.eq_ignore_ascii_case(b"chunked")
                        {
                            framing = Framing::Chunked;
                        } else if h.name.eq_ignore_ascii_case("stream-cursor") {
                            stream_cursor = Some(String::from_utf8_lossy(h.value).into_owned());
                        }
                    }
                    self.buf.drain(..len);
                    return Ok(Head {
                        status,
                        framing,
                        stream_cursor,
                    });
                }
                httparse::Status::Partial => {
                    if self.buf.len() > 64 * 1024 {
                        bail!("response head too large");
                    }
                    if self.fill().await? == 0 {
                        bail!("connection closed before the response head");
                    }
                }
            }
        }
    }

    /// Reads a whole response (Content-Length or chunked).
    pub async fn read_response(&mut self) -> anyhow::Result<Response> {
        let head = self.read_head().await?;
        // 204 and 304 never have a body, whatever their headers say.
        let framing = if matches!(head.status, 204 | 304) {
            Framing::Length(0)
        } else {
            head.framing
        };
        let body = match framing {
            Framing::Length(len) => {
                while self.buf.len() < len {
                    if self.fill().await? == 0 {
                        bail!("connection closed in the body");
                    }
                }
                let body = self.buf[..len].to_vec();
                self.buf.drain(..len);
                body
            }
            Framing::Chunked => {
                let mut dechunk = Dechunk::default();
                let mut body = Vec::new();
                loop {
                    let used = dechunk.feed(&self.buf, &mut body)?;
                    self.buf.drain(..used);
                    if dechunk.done() {
                        break;
                    }
                    if self.fill().await? == 0 {
                        bail!("connection closed in a chunked body");
                    }
                }
                body
            }
            Framing::Close => bail!("response without a length on a keep-alive connection"),
        };
        Ok(Response {
            status: head.status,
            body,
            stream_cursor: head.stream_cursor,
        })
    }

    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> anyhow::Result<Response> {
        self.send(method, path, "", body).await?;
        self.read_response().await.context("reading a response")
    }

    /// Reads more raw body bytes of a stream into `out` (decoding chunks when `dechunk` is
    /// given). Returns false at the end of the stream.
    pub async fn read_stream(
        &mut self,
        dechunk: Option<&mut Dechunk>,
        out: &mut Vec<u8>,
    ) -> anyhow::Result<bool> {
        if self.buf.is_empty() && self.fill().await? == 0 {
            return Ok(false);
        }
        match dechunk {
            Some(d) => {
                let used = d.feed(&self.buf, out)?;
                self.buf.drain(..used);
                Ok(!d.done())
            }
            None => {
                out.extend_from_slice(&self.buf);
                self.buf.clear();
                Ok(true)
            }
        }
    }
}

/// Decodes `Transfer-Encoding: chunked`.
#[derive(Default)]
pub struct Dechunk {
    state: ChunkState,
    size_line: Vec<u8>,
}

#[derive(Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    Data(usize),
    /// The CRLF after a chunk's data: how many bytes of it are left.
    DataEnd(u8),
    Done,
}

impl Dechunk {
    pub fn done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Consumes from `input`, appends decoded bytes to `out`; returns how many input bytes
    /// were used.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> anyhow::Result<usize> {
        let mut i = 0;
        while i < input.len() {
            match self.state {
                ChunkState::Size => {
                    let rest = &input[i..];
                    match memchr::memchr(b'\n', rest) {
                        Some(nl) => {
                            self.size_line.extend_from_slice(&rest[..nl]);
                            i += nl + 1;
                            let line = std::str::from_utf8(&self.size_line)?;
                            let hex = line.split(';').next().unwrap_or("").trim();
                            let size = usize::from_str_radix(hex, 16)
                                .with_context(|| format!("bad chunk size {hex:?}"))?;
                            self.size_line.clear();
                            self.state = if size == 0 {
                                ChunkState::Done
                            } else {
                                ChunkState::Data(size)
                            };
                        }
                        None => {
                            self.size_line.extend_from_slice(rest);
                            if self.size_line.len() > 1024 {
                                bail!("chunk size line too long");
                            }
                            i = input.len();
                        }
                    }
                }
                ChunkState::Data(left) => {
                    let take = left.min(input.len() - i);
                    out.extend_from_slice(&input[i..i + take]);
                    i += take;
                    self.state = if take == left {
                        ChunkState::DataEnd(2)
                    } else {
                        ChunkState::Data(left - take)
                    };
                }
                ChunkState::DataEnd(left) => {
                    i += 1;
                    self.state = if left == 1 {
                        ChunkState::Size
                    } else {
                        ChunkState::DataEnd(left - 1)
                    };
                }
                ChunkState::Done => return Ok(i),
            }
        }
        Ok(i)
    }
}

/// What a piece of stream text held.
#[derive(Default, Debug, Clone, Copy)]
pub struct Scan {
    /// Change events (objects with an `"entity"` key).
    pub events: u64,
}

const ENTITY: &[u8] = b"\"entity\":\"";
pub const MARKER: &[u8] = b"bench t=";

// Built once: `memmem::find_iter` and `rfind` build a searcher on every call, which was the
// generator's largest cost of its own per received frame.
static ENTITY_FINDER: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(ENTITY));
static MARKER_FINDER: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(MARKER));
static VIEW_ENTER_FINDER: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(br#""view":"enter""#));
static FRAME_END_FINDER: LazyLock<memmem::FinderRev<'static>> =
    LazyLock::new(|| memmem::FinderRev::new(b"\n\n"));

/// Where the last complete SSE frame in `text` ends (just past its blank line).
pub fn frames_end(text: &[u8]) -> Option<usize> {
    FRAME_END_FINDER.rfind(text).map(|at| at + 2)
}

/// Counts the events in `text` and calls `on_stamp` with each publish timestamp (ns) found.
pub fn scan(text: &[u8], mut on_stamp: impl FnMut(u64)) -> Scan {
    let events = ENTITY_FINDER.find_iter(text).count() as u64;
    for at in MARKER_FINDER.find_iter(text) {
        let digits = &text[at + MARKER.len()..];
        let mut v: u64 = 0;
        let mut n = 0;
        for &b in digits.iter().take(20) {
            if !b.is_ascii_digit() {
                break;
            }
            v = v * 10 + u64::from(b - b'0');
            n += 1;
        }
        if n > 0 {
            on_stamp(v);
        }
    }
    Scan { events }
}

/// How many events in `text` a view tagged `enter`.
pub fn view_enters(text: &[u8]) -> u64 {
    VIEW_ENTER_FINDER.find_iter(text).count() as u64
}

/// The value of the last `"cursor":"N"` in a JSON text.
pub fn last_cursor(text: &[u8]) -> Option<String> {
    let key = b"\"cursor\":\"";
    let at = memmem::rfind(text, key)? + key.len();
    let end = memchr::memchr(b'"', &text[at..])?;
    Some(String::from_utf8_lossy(&text[at..at + end]).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dechunks_across_splits() {
        let raw = b"5\r\nhello\r\n7;x=1\r\n, world\r\n0\r\n\r\n";
        for split in 0..raw.len() {
            let mut d = Dechunk::default();
            let mut out = Vec::new();
            let used = d.feed(&raw[..split], &mut out).unwrap();
            if !d.done() {
                assert_eq!(used, split);
            }
            d.feed(&raw[used..], &mut out).unwrap();
            assert_eq!(out, b"hello, world");
            assert!(d.done());
        }
    }

    #[test]
    fn scans_view_events_and_id_only_frames() {
        // A view's event carries `"view"` after `data`; an event outside the view is an
        // `id:`-only frame, which moves no count.
        let text = br#"id: 3
data: {"id":"3","entity":"FUNKOS","type":"CREATE","data":{"description":"bench t=12345"},"view":"enter"}

id: 4

"#;
        let end = frames_end(text).unwrap();
        assert_eq!(end, text.len());
        let mut stamps = vec![];
        assert_eq!(scan(&text[..end], |t| stamps.push(t)).events, 1);
        assert_eq!(stamps, [12345]);
        assert_eq!(view_enters(text), 1);
    }

    #[test]
    fn scans_events_and_stamps() {
        let text = br#"id: 3
data: {"id":"3","entity":"FUNKOS","type":"CREATE","data":{"description":"bench t=12345"}}

"#;
        let mut stamps = vec![];
        let s = scan(text, |t| stamps.push(t));
        assert_eq!(s.events, 1);
        assert_eq!(stamps, [12345]);
        assert_eq!(
            last_cursor(br#"{"events":[],"cursor":"42"}"#).as_deref(),
            Some("42")
        );
    }
}
