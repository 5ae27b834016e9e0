//! Promises kept under hostile and stalled clients: live means live, a
//! client that stops reading is let go, a stream's work is bounded, and
//! herald never issues a cursor it would refuse.

mod support;

use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use support::*;

/// A cursor for the subscription `valid` was issued for, with every offset
/// at `offset`: what a hand-made (or very old) id looks like.
fn cursor_at(valid: &str, slots: usize, offset: i64) -> String {
    let raw = URL_SAFE_NO_PAD.decode(valid).expect("base64url");
    let fingerprint = u32::from_le_bytes([raw[1], raw[2], raw[3], raw[4]]);
    let mut out = String::new();
    herald::cursor::Cursor::encode_into(fingerprint, vec![offset; slots], &mut out);
    out
}

/// The first id a stream sends (its start position).
async fn first_id(s: &mut Stream) -> String {
    loop {
        match s.next_event(SECS_10).await {
            Some(e) if e.id.is_some() => return e.id.unwrap_or_default(),
            Some(_) => {}
            None => panic!("no id before the end or the deadline"),
        }
    }
}

/// The first data event of a stream (skipping ids and comments).
async fn first_data(s: &mut Stream) -> String {
    s.next_data(SECS_10)
        .await
        .and_then(|e| e.data)
        .expect("a data event")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_stream_never_receives_history_another_client_asked_for() {
    let node = node().await;
    node.create_topic("cold", 1).await.expect("topic");
    let addr = node.local_addr();
    let p = producer(node.bootstrap_servers());
    produce_sequence(
        &p,
        "cold",
        &["hist".to_string()],
        0..3000,
        Duration::ZERO,
        "",
    )
    .await;
    // Someone asks for the whole history of one key, gets its first
    // record (so its start has reached the node), and leaves.
    let mut early = open(addr, &events_path(&["cold/hist"], "from=earliest"), None).await;
    assert_eq!(early.status, 200, "{}", early.body);
    assert_eq!(first_data(&mut early).await, "hist:0");
    drop(early);
    // A live stream opened now gets what is produced from now on, only.
    let mut live = open(addr, &events_path(&["cold"], ""), None).await;
    assert_eq!(live.status, 200, "{}", live.body);
    produce(&p, "cold", Some("hist"), b"sentinel-1").await;
    assert_eq!(
        first_data(&mut live).await,
        "sentinel-1",
        "no history before it"
    );

    // The same with a hand-made cursor at offset 0 on a node that does not
    // read the partition yet.
    let other = node_on(node.bootstrap_servers()).await;
    let mut start = open(other.local_addr(), &events_path(&["cold/hist"], ""), None).await;
    let valid = first_id(&mut start).await;
    drop(start);
    wait_for("the first stream is gone", SECS_10, || async {
        connections(&other).await == 0
    })
    .await;
    let forged = cursor_at(&valid, 1, 0);
    let mut old = open(
        other.local_addr(),
        &events_path(&["cold/hist"], ""),
        Some(&forged),
    )
    .await;
    assert_eq!(old.status, 200, "{}", old.body);
    assert_eq!(first_data(&mut old).await, "hist:0");
    let mut live = open(other.local_addr(), &events_path(&["cold"], ""), None).await;
    produce(&p, "cold", Some("hist"), b"sentinel-2").await;
    assert_eq!(
        first_data(&mut live).await,
        "sentinel-2",
        "no history before it"
    );
    // The old cursor itself is served in full, by the catch-up path.
    let replayed = old.take(3001, Duration::from_secs(30)).await;
    assert_eq!(
        replayed.last().and_then(|e| e.data.as_deref()),
        Some("sentinel-2")
    );
}

/// An HTTP/2 stream (prior knowledge) whose client never reads its body:
/// a 1 KiB window that is never released.
async fn stalled_h2_stream(
    addr: std::net::SocketAddr,
    path: &str,
) -> (
    hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    hyper::Response<hyper::body::Incoming>,
) {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .initial_stream_window_size(1024)
            .handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .expect("h2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = hyper::Request::get(format!("http://{addr}{path}"))
        .body(http_body_util::Empty::new())
        .expect("request");
    let resp = sender.send_request(req).await.expect("h2 response");
    assert_eq!(resp.status(), 200);
    (sender, resp)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_disconnected_within_the_write_timeout() {
    let mut c = config();
    c.write_timeout = Duration::from_secs(1);
    let node = node_with(c).await;
    node.create_topic("flood", 2).await.expect("topic");
    let addr = node.local_addr();
    let path = events_path(&["flood"], "");
    let mut stalled = Vec::new();
    for _ in 0..20 {
        stalled.push(stalled_client(addr, &path, "HTTP/1.1", b"").await);
    }
    // A byte after the head sends this one down hyper's HTTP/1 path.
    stalled.push(stalled_client(addr, &path, "HTTP/1.1", b"G").await);
    let h2 = stalled_h2_stream(addr, &path).await;
    wait_for("22 streams open", SECS_10, || async {
        connections(&node).await == 22
    })
    .await;
    let p = producer(node.bootstrap_servers());
    let pad = "p".repeat(1000);
    let flooded = Instant::now();
    // 8 MB: more than the kernel takes into a loopback socket's send
    // buffer (up to 4 MiB here) plus the node's queue bound (1 MiB).
    produce_sequence(&p, "flood", &keys(8), 0..1000, Duration::ZERO, &pad).await;
    wait_for(
        "every stalled stream disconnected",
        Duration::from_secs(30),
        || async { connections(&node).await == 0 },
    )
    .await;
    let took = flooded.elapsed();
    for s in &mut stalled {
        assert!(
            closed_by_server(s, SECS_10).await,
            "the socket itself is closed"
        );
    }
    drop(h2);
    let stalled_count = metric(&node, "herald_stalled_disconnects_total").await;
    assert!(
        stalled_count >= 1.0,
        "the write timeout ended them ({stalled_count})"
    );
    // The node is not wedged: a new stream gets new records.
    let mut s = open(addr, &path, None).await;
    produce(&p, "flood", Some("k0"), b"after").await;
    assert_eq!(first_data(&mut s).await, "after");
    println!("stalled readers: 22 disconnected {took:?} after the flood began (write timeout 1 s), {stalled_count} by the write timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catch_up_client_that_does_not_read_costs_no_kafka_reads_and_is_cut_off() {
    let mut c = config();
    // Long enough that a reader retrying on a timer alone would pass many times.
    c.write_timeout = Duration::from_secs(4);
    c.replay_buffer_records = 8; // everything older is read from Kafka
    let node = node_with(c).await;
    node.create_topic("history", 1).await.expect("topic");
    let addr = node.local_addr();
    let p = producer(node.bootstrap_servers());
    let pad = "p".repeat(1000);
    // 8 MB: more than the queue bound plus what the kernel buffers for a
    // loopback socket, so the replay must wait for a client that never reads.
    produce_sequence(&p, "history", &keys(8), 0..1000, Duration::ZERO, &pad).await;
    let mut stalled = stalled_client(
        addr,
        &events_path(&["history"], "from=earliest"),
        "HTTP/1.1",
        b"",
    )
    .await;
    let opened = Instant::now();
    wait_for(
        "the stalled catch-up client is disconnected",
        Duration::from_secs(20),
        || async { connections(&node).await == 0 },
    )
    .await;
    let held = opened.elapsed();
    assert!(closed_by_server(&mut stalled, SECS_10).await);
    let passes = metric(&node, "herald_catchup_kafka_reads_total").await;
    assert!(
        passes <= 3.0,
        "a client that does not drain is not read for again and again ({passes} passes)"
    );
    println!(
        "stalled catch-up client: {passes} Kafka passes, disconnected after {held:?} (write timeout 4 s)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_past_the_partition_limit_are_refused_and_herald_resumes_its_own_largest_cursor() {
    let node = node().await;
    for t in ["wide-a", "wide-b", "wide-c"] {
        node.create_topic(t, 100).await.expect("topic");
    }
    node.create_topic("wide-d", 56).await.expect("topic");
    let addr = node.local_addr();
    let refused = open(
        addr,
        &events_path(&["wide-a", "wide-b", "wide-c"], ""),
        None,
    )
    .await;
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert!(
        refused.body.contains("300 partitions") && refused.body.contains("at most 256"),
        "{}",
        refused.body
    );
    // Exactly at the limit: served, and its cursor resumes.
    let path = events_path(&["wide-a", "wide-b", "wide-d"], "");
    let mut s = open(addr, &path, None).await;
    assert_eq!(s.status, 200, "{}", s.body);
    let id = first_id(&mut s).await;
    drop(s);
    // The same subscription with offsets far apart: the longest ids herald
    // can issue for it still come back.
    let raw = URL_SAFE_NO_PAD.decode(&id).expect("base64url");
    let fingerprint = u32::from_le_bytes([raw[1], raw[2], raw[3], raw[4]]);
    let mut longest = String::new();
    herald::cursor::Cursor::encode_into(
        fingerprint,
        (0..256).map(|i| if i % 2 == 0 { i64::MAX / 2 } else { 0 }),
        &mut longest,
    );
    assert!(longest.len() <= herald::cursor::longest_text(256));
    for cursor in [id.as_str(), longest.as_str()] {
        let mut again = open(addr, &path, Some(cursor)).await;
        assert_eq!(again.status, 200, "{}", again.body);
        assert!(again.next_event(SECS_10).await.is_some());
    }
    println!(
        "256 partitions: first id {} bytes, longest possible {} bytes",
        id.len(),
        longest.len()
    );
    // And a node refuses to start with a limit whose cursors it could not take.
    let mut c = config();
    c.max_stream_partitions = 5000;
    let refused = Node::start(c).await.err().map(|e| e.to_string());
    assert!(
        refused
            .as_deref()
            .is_some_and(|e| e.contains("max-stream-partitions")),
        "{refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_keeps_sending_after_its_head_is_hung_up_on() {
    use tokio::io::AsyncWriteExt;
    let node = node().await;
    node.create_topic("chatty", 1).await.expect("topic");
    let addr = node.local_addr();
    let mut s = stalled_client(addr, &events_path(&["chatty"], ""), "HTTP/1.1", b"").await;
    wait_for("the stream is open", SECS_10, || async {
        connections(&node).await == 1
    })
    .await;
    let junk = vec![b'x'; 1024];
    for _ in 0..64 {
        if s.write_all(&junk).await.is_err() {
            break; // hung up on already
        }
    }
    wait_for("the chatty client is hung up on", SECS_10, || async {
        connections(&node).await == 0
    })
    .await;
    assert!(closed_by_server(&mut s, SECS_10).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_gets_its_response_head_before_any_kafka_look_up() {
    let kafka = MockKafka::start();
    kafka.create_topic("slow", 4);
    let a = node_on(&kafka.bootstrap).await;
    let p = producer(&kafka.bootstrap);
    let path = events_path(&["slow"], "");
    let mut s = open(a.local_addr(), &path, None).await;
    produce(&p, "slow", Some("k"), b"one").await;
    assert_eq!(first_data(&mut s).await, "one");
    let cursor = s.last_id.clone().expect("id");
    drop(s);
    // A second node has the topic in its table but reads none of it.
    let b = node_on(&kafka.bootstrap).await;
    let known = stats(&b).await;
    assert_eq!(
        known["assigned_partitions"].as_array().map(Vec::len),
        Some(0)
    );
    for broker in MockKafka::BROKERS {
        kafka.slow_broker(broker, Duration::from_secs(3));
    }
    let asked = Instant::now();
    let mut resumed = open(b.local_addr(), &path, Some(&cursor)).await;
    let head = asked.elapsed();
    assert_eq!(resumed.status, 200, "{}", resumed.body);
    assert!(
        head < Duration::from_millis(1500),
        "the head came {head:?} after the request, with every broker 3 s slow"
    );
    for broker in MockKafka::BROKERS {
        kafka.slow_broker(broker, Duration::ZERO);
    }
    produce(&p, "slow", Some("k"), b"two").await;
    assert_eq!(
        first_data(&mut resumed).await,
        "two",
        "and then it resumed exactly"
    );
    println!("resume head after {head:?} with brokers 3 s slow");
}
