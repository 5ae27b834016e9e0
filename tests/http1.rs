//! The hand-written HTTP/1 path for event streams (`src/h1.rs`), on raw
//! sockets: what it serves itself, what it hands to hyper, and that a
//! connection it serves leaves nothing behind.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::*;

/// Sends `request` (in pieces of `piece` bytes) and returns the socket.
async fn send(addr: SocketAddr, request: &[u8], piece: usize) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.set_nodelay(true).expect("nodelay");
    for chunk in request.chunks(piece) {
        s.write_all(chunk).await.expect("write");
    }
    s
}

/// Reads until `needle` appears in what was received, or the deadline.
async fn read_until(s: &mut TcpStream, needle: &str, timeout: Duration) -> String {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains(needle) {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// Reads to the end of the connection (the server closed it).
async fn read_to_close(s: &mut TcpStream, timeout: Duration) -> Option<String> {
    let mut got = Vec::new();
    match tokio::time::timeout(timeout, s.read_to_end(&mut got)).await {
        Ok(Ok(_)) => Some(String::from_utf8_lossy(&got).into_owned()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_request_trickled_byte_by_byte_is_served_chunked() {
    let node = node().await;
    node.create_topic("h1", 1).await.expect("topic");
    let addr = node.local_addr();
    // A 6 KiB cookie: the head outgrows the first read buffer several times.
    let request = format!(
        "GET /v1/events?topic=h1 HTTP/1.1\r\nHost: x\r\nCookie: c={}\r\n\r\n",
        "v".repeat(6000)
    );
    let mut s = send(addr, request.as_bytes(), 1).await;
    let head = read_until(&mut s, "\r\n\r\n", SECS_10).await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(
        head.contains("content-type: text/event-stream\r\n"),
        "{head}"
    );
    assert!(head.contains("transfer-encoding: chunked\r\n"), "{head}");
    let p = producer(node.bootstrap_servers());
    produce(&p, "h1", Some("k"), b"hello over h1").await;
    // The first read may already hold chunks after the head.
    let all = head + &read_until(&mut s, "hello over h1\n\n\r\n", SECS_10).await;
    // Every chunk well framed (hex size, CRLF, that many bytes, CRLF); the
    // record is in one of them, whole.
    let mut rest = all.split_once("\r\n\r\n").expect("head").1;
    let mut chunks = Vec::new();
    while !rest.is_empty() {
        let (size, after) = rest.split_once("\r\n").expect("a size line");
        let size = usize::from_str_radix(size, 16).expect("hex chunk size");
        assert_eq!(
            &after[size..size + 2],
            "\r\n",
            "chunk of {size} bytes ends with CRLF"
        );
        chunks.push(&after[..size]);
        rest = &after[size + 2..];
    }
    assert!(
        chunks
            .iter()
            .any(|c| c.ends_with("data: hello over h1\n\n")),
        "{chunks:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_1_0_gets_a_close_delimited_stream_and_the_end_closes_it() {
    let mut c = config();
    c.max_stream_lifetime = Some(Duration::from_millis(700));
    let node = node_with(c).await;
    node.create_topic("h10", 1).await.expect("topic");
    let addr = node.local_addr();
    let mut s = send(addr, b"GET /v1/events?topic=h10 HTTP/1.0\r\n\r\n", 4096).await;
    // The stream ends at its maximum lifetime: a `herald.expired` event, then
    // the server closes the connection (the end of a 1.0 body).
    let all = read_to_close(&mut s, SECS_10)
        .await
        .expect("closed by the server");
    assert!(all.starts_with("HTTP/1.0 200 OK\r\n"), "{all}");
    assert!(!all.contains("transfer-encoding"), "{all}");
    assert!(all.contains("event: herald.expired"), "{all}");
    wait_for("connection unregistered", SECS_10, || async {
        stats(&node).await["connections"] == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_stream_gets_a_complete_json_reply_and_a_close() {
    let node = node().await;
    node.create_topic("bad", 1).await.expect("topic");
    let addr = node.local_addr();
    let mut s = send(
        addr,
        b"GET /v1/events?topic=bad&lastEventId=not-a-cursor HTTP/1.1\r\nHost: x\r\nOrigin: http://nowhere.invalid\r\n\r\n",
        4096,
    )
    .await;
    let all = read_to_close(&mut s, SECS_10)
        .await
        .expect("closed by the server");
    let (head, body) = all.split_once("\r\n\r\n").expect("head and body");
    let head = format!("{head}\r\n");
    assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{head}");
    assert!(
        head.contains("content-type: application/json\r\n"),
        "{head}"
    );
    assert!(
        head.contains(&format!("content-length: {}\r\n", body.len())),
        "{head}"
    );
    assert!(head.contains("connection: close\r\n"), "{head}");
    let v: serde_json::Value = serde_json::from_str(body).expect("JSON body");
    assert!(v["error"].is_object() || v["error"].is_string(), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_this_path_does_not_serve_goes_to_hyper_intact() {
    let node = node().await;
    node.create_topic("h2", 1).await.expect("topic");
    let addr = node.local_addr();
    // Two pipelined requests on one connection: both answered, in order.
    let mut s = send(
        addr,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        4096,
    )
    .await;
    let all = read_to_close(&mut s, SECS_10)
        .await
        .expect("closed after the second");
    assert_eq!(all.matches("HTTP/1.1 200 OK").count(), 2, "{all}");
    // A stream request with bytes after its head goes to hyper too, and is
    // still a stream.
    let mut s = send(
        addr,
        b"GET /v1/events?topic=h2 HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\n\r\n",
        4096,
    )
    .await;
    let head = read_until(&mut s, "\r\n\r\n", SECS_10).await;
    assert!(head.contains("text/event-stream"), "{head}");
    // A head larger than the limit: hyper's 431.
    let big = format!(
        "GET /v1/events?topic=h2 HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "b".repeat(64 * 1024)
    );
    let mut s = send(addr, big.as_bytes(), 4096).await;
    let head = read_until(&mut s, "\r\n", SECS_10).await;
    assert!(head.starts_with("HTTP/1.1 431"), "{head}");
    // HTTP/2 with prior knowledge: hyper serves the stream.
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("h2 handshake");
    tokio::spawn(conn);
    let req = http::Request::get(format!("http://{addr}/v1/events?topic=h2"))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .expect("request");
    let resp = sender.send_request(req).await.expect("h2 response");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_is_unregistered_and_a_silent_one_times_out() {
    let mut c = config();
    c.header_read_timeout = Duration::from_millis(500);
    let node = node_with(c).await;
    node.create_topic("gone", 2).await.expect("topic");
    let addr = node.local_addr();
    let mut streams = Vec::new();
    for _ in 0..50 {
        let mut s = send(
            addr,
            b"GET /v1/events?topic=gone HTTP/1.1\r\nHost: x\r\n\r\n",
            4096,
        )
        .await;
        read_until(&mut s, "\r\n\r\n", SECS_10).await;
        streams.push(s);
    }
    assert_eq!(stats(&node).await["connections"], 50);
    drop(streams);
    wait_for("all 50 unregistered", SECS_10, || async {
        stats(&node).await["connections"] == 0
    })
    .await;
    // Half a head, then silence: closed at the header timeout, no reply.
    let mut s = send(addr, b"GET /v1/events?topic=gone HTTP/1.1\r\nHo", 4096).await;
    let started = std::time::Instant::now();
    let all = read_to_close(&mut s, SECS_10)
        .await
        .expect("closed by the server");
    assert!(all.is_empty(), "{all}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_served_by_hyper_closes_its_connection_when_it_ends() {
    let mut c = config();
    c.max_stream_lifetime = Some(Duration::from_millis(300));
    let node = node_with(c).await;
    node.create_topic("short", 1).await.expect("topic");
    // A stream request with a pipelined request behind it: hyper serves the
    // stream; when the stream ends the connection must end too, and the
    // request behind it is never answered.
    let mut s = send(
        node.local_addr(),
        b"GET /v1/events?topic=short HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
        4096,
    )
    .await;
    let all = read_to_close(&mut s, SECS_10)
        .await
        .expect("the server closes the connection when the stream ends");
    assert!(all.contains("herald.expired"), "{all}");
    assert_eq!(
        all.matches("HTTP/1.1 200 OK").count(),
        1,
        "only the stream was answered: {all}"
    );
    assert!(
        all.to_ascii_lowercase().contains("connection: close"),
        "{all}"
    );
}
