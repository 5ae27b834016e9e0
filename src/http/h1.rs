//! Event streams over HTTP/1.x without hyper's per-connection machinery.
//!
//! hyper keeps, for every connection and for as long as it lives, an 8 KiB
//! read buffer, a 4 KiB write buffer and a connection future of about 3 KiB:
//! heaptrack on 10,000 idle streams put 16.7 KiB of heap per connection, 80 %
//! of it hyper's. An event stream reads one request head and from then on
//! only writes. So the accept loop reads the head itself, into a buffer that
//! is freed once parsed: a `GET /v1/events` over HTTP/1.x is served here,
//! each drain of the connection's queue written as one chunk, with nothing
//! kept per connection but the socket and the stream's own state.
//!
//! Everything else (other paths and methods, HTTP/2, upgrades, a head this
//! parser will not take) goes to hyper with the bytes already read replayed
//! first ([`Rewind`]), so hyper's answers and limits (431, 414, 400) stay
//! the single source of truth for them.
//!
//! A stream that ends (drain, expiry, a slow reader cut off) closes its
//! connection: the client's reconnect then goes through the load balancer
//! again instead of back to this node on a kept-alive connection.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Method, Request, Version};
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::api::events::StreamBody;
use crate::sse;

/// First read buffer for a request head; grows (doubling) to the limit.
const FIRST_READ: usize = 1024;
/// Most headers a head may have on this path (hyper takes the rest).
const MAX_HEADERS: usize = 64;
/// Bytes a client may send after a stream's head before it is hung up on:
/// an event stream's client has nothing more to say (a pipelined request
/// would never be answered), so more than this is junk or an attack.
const AFTER_HEAD_ALLOWANCE: usize = 4096;

/// What the first bytes of a connection turned out to be.
pub enum Head {
    /// An event-stream request, parsed: serve it here.
    Events(http::request::Parts),
    /// Anything else: hand the connection to hyper, replaying these bytes.
    Other(Bytes),
    /// Closed, failed or timed out before a whole head arrived.
    Gone,
}

/// Reads one request head within `timeout`, in at most `max_head` bytes.
pub async fn read_head(
    stream: &mut TcpStream,
    max_head: usize,
    max_target: usize,
    timeout: Duration,
) -> Head {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = BytesMut::with_capacity(FIRST_READ.min(max_head));
    loop {
        if buf.len() >= max_head {
            return Head::Other(buf.freeze()); // hyper answers 431
        }
        if buf.len() == buf.capacity() {
            buf.reserve(buf.len().min(max_head - buf.len()));
        }
        match tokio::time::timeout_at(deadline, stream.read_buf(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return Head::Gone,
            Ok(Ok(_)) => {}
        }
        match parse_head(&buf, max_target) {
            Parsed::Partial => continue,
            Parsed::Events(parts) => return Head::Events(*parts),
            Parsed::Other => return Head::Other(buf.freeze()),
        }
    }
}

/// What the bytes read so far are.
pub enum Parsed {
    /// Not a whole head yet.
    Partial,
    /// A whole event-stream request head, and nothing after it.
    Events(Box<http::request::Parts>),
    /// Anything else: hyper's to answer.
    Other,
}

/// Parses the first bytes of a connection. Pure, so that it can be fuzzed.
pub fn parse_head(buf: &[u8], max_target: usize) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(buf) {
        Ok(httparse::Status::Partial) => Parsed::Partial,
        Ok(httparse::Status::Complete(len)) => {
            // Bytes after the head (a body, a pipelined request) are
            // hyper's business; so is anything not a plain stream request.
            let parts = (len == buf.len())
                .then(|| event_request(&request, max_target))
                .flatten();
            match parts {
                Some(parts) => Parsed::Events(Box::new(parts)),
                None => Parsed::Other,
            }
        }
        Err(_) => Parsed::Other, // HTTP/2 preface, or hyper's 400
    }
}

/// The request as `http` parts if it is an event-stream request this path
/// serves: `GET /v1/events` over HTTP/1.x, no upgrade, a target within
/// the limit (hyper answers 414 otherwise).
fn event_request(request: &httparse::Request, max_target: usize) -> Option<http::request::Parts> {
    let target = request.path?;
    let path = target.split('?').next().unwrap_or_default();
    if request.method != Some("GET") || path != "/v1/events" || target.len() > max_target {
        return None;
    }
    let version = match request.version? {
        0 => Version::HTTP_10,
        1 => Version::HTTP_11,
        _ => return None,
    };
    let mut builder = Request::builder()
        .method(Method::GET)
        .uri(target)
        .version(version);
    for h in request.headers.iter() {
        if h.name.eq_ignore_ascii_case("upgrade") {
            return None;
        }
        builder = builder.header(h.name, h.value);
    }
    builder.body(()).ok().map(|r| r.into_parts().0)
}

/// Writes a stream's response head, then its body as the queue drains,
/// until the stream ends, the client goes away, or the stream is killed for
/// stalling (a write that never finishes is abandoned, not awaited).
pub async fn serve_stream(
    mut stream: TcpStream,
    version: Version,
    extra_headers: Vec<(&'static str, HeaderValue)>,
    mut body: StreamBody,
) {
    let chunked = version == Version::HTTP_11;
    let mut head = Vec::with_capacity(256);
    head.extend_from_slice(if chunked {
        b"HTTP/1.1 200 OK\r\n" as &[u8]
    } else {
        b"HTTP/1.0 200 OK\r\n"
    });
    for (name, value) in sse::STREAM_HEADERS {
        push_header(&mut head, name, value.as_bytes());
    }
    for (name, value) in &extra_headers {
        push_header(&mut head, name, value.as_bytes());
    }
    head.extend_from_slice(if chunked {
        b"transfer-encoding: chunked\r\nconnection: close\r\n\r\n" as &[u8]
    } else {
        b"connection: close\r\n\r\n"
    });
    drop(extra_headers);
    // A fresh socket's send buffer takes a head whole, whatever the peer's
    // window. (No timeouts in this function: each would put a timer in every
    // stream's task, which lives for hours; the watchdog covers the writes.)
    if stream.write_all(&head).await.is_err() {
        return;
    }
    drop(head);
    let (mut reader, mut writer) = stream.split();
    let mut scratch = [0u8; 64];
    let mut after_head = 0usize;
    loop {
        tokio::select! {
            frame = body.frame() => {
                let Some(Ok(frame)) = frame else {
                    if chunked && !body.is_killed() {
                        // The queue counts this last write as held: the
                        // watchdog ends it if the client is not reading.
                        tokio::select! {
                            _ = writer.write_all(b"0\r\n\r\n") => {}
                            () = std::future::poll_fn(|cx| body.poll_killed(cx)) => {}
                        }
                    }
                    break;
                };
                let Ok(data) = frame.into_data() else { continue };
                tokio::select! {
                    written = write_chunk(&mut writer, &data, chunked) => {
                        if written.is_err() {
                            break;
                        }
                    }
                    // The watchdog found this write stuck past the write timeout.
                    () = std::future::poll_fn(|cx| body.poll_killed(cx)) => break,
                }
            }
            // The client never speaks again on an event stream: this notices
            // it leaving, and hangs up on one that keeps sending.
            read = reader.read(&mut scratch) => {
                match read {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        after_head = after_head.saturating_add(n);
                        if after_head > AFTER_HEAD_ALLOWANCE {
                            break;
                        }
                    }
                }
            }
        }
    }
    if !body.is_killed() {
        // shutdown(SHUT_WR) on a TCP socket does not wait for the peer.
        let _ = writer.shutdown().await;
    }
}

/// Writes a complete (non-stream) response and closes: errors and
/// "come back later" answers to event-stream requests.
pub async fn serve_reply(
    stream: &mut TcpStream,
    version: Version,
    response: http::Response<impl http_body::Body<Data = Bytes>>,
) {
    let (parts, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mut out = Vec::with_capacity(256 + body.len());
    let proto = if version == Version::HTTP_10 {
        "HTTP/1.0"
    } else {
        "HTTP/1.1"
    };
    out.extend_from_slice(
        format!(
            "{proto} {} {}\r\n",
            parts.status.as_u16(),
            parts.status.canonical_reason().unwrap_or("")
        )
        .as_bytes(),
    );
    for (name, value) in &parts.headers {
        push_header(&mut out, name.as_str(), value.as_bytes());
    }
    out.extend_from_slice(
        format!(
            "content-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    out.extend_from_slice(&body);
    if stream.write_all(&out).await.is_ok() {
        let _ = stream.shutdown().await;
    }
}

fn push_header(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// One body write: a chunk (`size CRLF data CRLF`) in one vectored write.
async fn write_chunk<W: AsyncWrite + Unpin>(
    w: &mut W,
    data: &[u8],
    chunked: bool,
) -> io::Result<()> {
    if !chunked {
        return w.write_all(data).await;
    }
    // The size line on the stack: no allocation per write.
    let mut line = [0u8; 20];
    let mut rest = &mut line[..];
    io::Write::write_fmt(&mut rest, format_args!("{:x}\r\n", data.len()))?;
    let used = 20 - rest.len();
    let mut slices = [
        IoSlice::new(&line[..used]),
        IoSlice::new(data),
        IoSlice::new(b"\r\n"),
    ];
    let mut left: &mut [IoSlice<'_>] = &mut slices;
    while !left.is_empty() {
        let n = w.write_vectored(left).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut left, n);
    }
    Ok(())
}

/// A connection whose first bytes were already read: reads give those back
/// first. Writes go straight to the socket.
pub struct Rewind {
    pre: Option<Bytes>,
    inner: TcpStream,
}

impl Rewind {
    pub fn new(inner: TcpStream, pre: Bytes) -> Rewind {
        Rewind {
            pre: (!pre.is_empty()).then_some(pre),
            inner,
        }
    }
}

impl AsyncRead for Rewind {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(mut pre) = self.pre.take() {
            let n = pre.len().min(buf.remaining());
            buf.put_slice(&pre.split_to(n));
            if !pre.is_empty() {
                self.pre = Some(pre);
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
