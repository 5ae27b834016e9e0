//! Presence: cluster-wide counts through the presence topic, on real nodes
//! (processes) behind HAProxy, with kills, restarts and clean stops; the
//! presence stream with users and resumes; authorisation; churn; the page.

mod support;

use std::time::{Duration, Instant};

use jsonwebtoken::{EncodingKey, Header};
use serde_json::{json, Value};
use support::*;

const SECRET: &str = "presence-tests-secret-of-32-bytes!!";
const SECS_30: Duration = Duration::from_secs(30);

fn token(claims: Value) -> String {
    jsonwebtoken::encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("token")
}

fn far() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() + 3600)
        .unwrap_or(u64::MAX)
}

fn user_token(sub: &str) -> String {
    token(json!({"exp": far(), "sub": sub, "herald": {"subscribe": ["scores/*", "scores"]}}))
}

async fn presence_of(addr: std::net::SocketAddr, selector: &str) -> Value {
    presence_as(addr, selector, None).await
}

async fn presence_as(addr: std::net::SocketAddr, selector: &str, token: Option<&str>) -> Value {
    let mut path = format!(
        "/v1/presence?topic={}",
        form_urlencoded::byte_serialize(selector.as_bytes()).collect::<String>()
    );
    if let Some(t) = token {
        path.push_str(&format!("&access_token={t}"));
    }
    let (status, body) = request(addr, "GET", &path, b"").await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("json")
}

/// The streams each node holds itself for `selector` (its own /v1/stats).
async fn held(addr: std::net::SocketAddr, selector: &str) -> i64 {
    let (status, body) = request(addr, "GET", "/v1/stats", b"").await;
    if status != 200 {
        return 0;
    }
    let v: Value = serde_json::from_str(&body).unwrap_or_default();
    v["subscriptions"]["keys"][selector].as_i64().unwrap_or(0)
}

/// Waits until every node in `nodes` reports `want` streams for `selector`
/// cluster-wide; returns how long it took.
async fn converged(
    nodes: &[std::net::SocketAddr],
    selector: &str,
    want: u64,
    within: Duration,
) -> Duration {
    let started = Instant::now();
    let deadline = started + within;
    loop {
        let mut last = Vec::new();
        for &n in nodes {
            last.push(
                presence_of(n, selector).await["streams"]
                    .as_u64()
                    .unwrap_or(u64::MAX),
            );
        }
        if last.iter().all(|&c| c == want) {
            return started.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "every node should count {want} streams on {selector} within {within:?}; they say {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn presence_args() -> Vec<&'static str> {
    // Behind HAProxy, a client that goes is noticed at the node's next
    // write to it: the SSE heartbeat comment, every 500 ms here.
    vec![
        "--presence-heartbeat",
        "300ms",
        "--presence-ttl",
        "3s",
        "--heartbeat",
        "500ms",
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_agree_on_presence_through_waves_kills_restarts_and_stops() {
    let kafka = MockKafka::start();
    kafka.create_topic("scores", 4);
    let args = presence_args();
    let mut nodes = Vec::new();
    for name in ["a", "b", "c"] {
        nodes.push(NodeProcess::start(&kafka.bootstrap, name, &args).await);
    }
    let addrs: Vec<_> = nodes.iter().map(|n| n.addr).collect();
    let proxy = Haproxy::start(&addrs).await;
    let path = events_path(&["scores/m1"], "");
    let mut timings = Vec::new();
    // Waves: 30 streams, then 12 of them leave, then 6 more come.
    let mut streams = Vec::new();
    for _ in 0..30 {
        streams.push(open(proxy.addr, &path, None).await);
    }
    timings.push((
        "30 joined",
        converged(&addrs, "scores/m1", 30, Duration::from_secs(5)).await,
    ));
    let per_node: Vec<i64> = futures_counts(&addrs, "scores/m1").await;
    assert!(
        per_node.iter().all(|&n| n > 0),
        "HAProxy spread the streams: {per_node:?}"
    );
    let p = presence_of(addrs[0], "scores/m1").await;
    for (i, name) in ["a", "b", "c"].iter().enumerate() {
        assert_eq!(p["nodes"][name].as_i64().unwrap_or(0), per_node[i], "{p}");
    }
    streams.truncate(18);
    timings.push((
        "12 left",
        converged(&addrs, "scores/m1", 18, Duration::from_secs(5)).await,
    ));
    for _ in 0..6 {
        streams.push(open(proxy.addr, &path, None).await);
    }
    timings.push((
        "6 joined",
        converged(&addrs, "scores/m1", 24, Duration::from_secs(5)).await,
    ));
    // A key with a newline in it, on node a: its entry's key then holds
    // one more newline than a plain selector's.
    let odd = open(addrs[0], &events_path(&["scores/odd\nkey"], ""), None).await;
    assert_eq!(odd.status, 200, "{}", odd.body);
    converged(&addrs, "scores/odd\nkey", 1, Duration::from_secs(5)).await;
    // SIGKILL node a: no goodbye; its count goes within the TTL.
    nodes[0].kill().await;
    drop(odd);
    let living = [addrs[1], addrs[2]];
    let truth = futures_counts(&living, "scores/m1")
        .await
        .iter()
        .sum::<i64>() as u64;
    let started = Instant::now();
    converged(&living, "scores/m1", truth, Duration::from_secs(8)).await;
    timings.push(("node killed", started.elapsed()));
    // The living nodes tombstone the dead node's entries in the topic itself,
    // the odd key's too (in its selector's partition).
    let odd_key = "s\nscores/odd\nkey\na";
    wait_for(
        "the dead node's odd entry tombstoned in the topic",
        SECS_30,
        || async { deleted_in_presence_topic(&kafka.bootstrap, odd_key).await },
    )
    .await;
    // Restarted: it counts again, for streams it holds.
    nodes[0].restart().await;
    let mut on_a = Vec::new();
    for _ in 0..5 {
        on_a.push(open(addrs[0], &path, None).await);
    }
    timings.push((
        "restarted +5",
        converged(&addrs, "scores/m1", truth + 5, Duration::from_secs(8)).await,
    ));
    // SIGTERM node b: its counts drop at once (tombstones), well within the TTL.
    let b_had = held(addrs[1], "scores/m1").await as u64;
    assert!(b_had > 0);
    let started = Instant::now();
    nodes[1].terminate();
    let left = [addrs[0], addrs[2]];
    converged(
        &left,
        "scores/m1",
        truth + 5 - b_had,
        Duration::from_secs(2),
    )
    .await;
    timings.push(("node stopped", started.elapsed()));
    assert!(nodes[1].exited(SECS_30).await.is_some());
    eprintln!("presence convergence: {timings:?}");
    drop((streams, on_a, proxy));
}

/// Whether `key` is deleted in the presence topic: in every partition that
/// holds it (a table is per partition), its newest record is a tombstone.
async fn deleted_in_presence_topic(bootstrap: &str, key: &str) -> bool {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    let (bootstrap, key) = (bootstrap.to_owned(), key.to_owned());
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", "presence-reference")
            .create()
            .expect("consumer");
        let mut tpl = rdkafka::TopicPartitionList::new();
        let mut highs = Vec::new();
        for p in 0..8 {
            let (_, high) = consumer
                .fetch_watermarks("herald.presence", p, Duration::from_secs(5))
                .expect("watermarks");
            highs.push(high);
            tpl.add_partition_offset("herald.presence", p, rdkafka::Offset::Beginning)
                .expect("partition");
        }
        consumer.assign(&tpl).expect("assign");
        let mut read = [0i64; 8];
        let mut latest: [Option<bool>; 8] = [None; 8];
        let deadline = Instant::now() + Duration::from_secs(10);
        while (0..8).any(|p| read[p] < highs[p]) && Instant::now() < deadline {
            let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) else {
                continue;
            };
            read[m.partition() as usize] = m.offset() + 1;
            if m.key() == Some(key.as_bytes()) {
                latest[m.partition() as usize] = Some(m.payload().is_none());
            }
        }
        latest.iter().any(Option::is_some) && latest.iter().flatten().all(|&tomb| tomb)
    })
    .await
    .expect("reference reader")
}

async fn futures_counts(addrs: &[std::net::SocketAddr], selector: &str) -> Vec<i64> {
    let mut out = Vec::new();
    for &a in addrs {
        out.push(held(a, selector).await);
    }
    out
}

fn auth_config(users: bool) -> Config {
    let mut c = with_presence(config());
    c.auth_hs256_secret = Some(SECRET.into());
    c.presence_users = users;
    c.presence_heartbeat = Duration::from_millis(300);
    c.presence_ttl = Duration::from_secs(3);
    c
}

/// The next presence record on a presence stream.
async fn next_presence(s: &mut Stream) -> Value {
    loop {
        let e = s.next_data(SECS_30).await.expect("a presence record");
        if e.event.is_some() {
            continue; // herald.snapshot and the like
        }
        return serde_json::from_str(e.data.as_deref().unwrap_or_default()).expect("json");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn joins_and_leaves_stream_in_order_and_resume_loses_nothing() {
    let node = node_with(auth_config(true)).await;
    node.create_topic("scores", 4).await.expect("topic");
    let addr = node.local_addr();
    let watcher = user_token("watcher");
    wait_for("presence ready", SECS_30, || async {
        presence_as(addr, "scores/m1", Some(&watcher)).await["ready"] == true
    })
    .await;
    let watch_path = format!("/v1/events?presence=scores/m1&access_token={watcher}");
    let mut watch = open(addr, &watch_path, None).await;
    assert_eq!(watch.status, 200, "{}", watch.body);
    let stream_as = |who: &str| {
        format!(
            "/v1/events?topic=scores/m1&access_token={}",
            user_token(who)
        )
    };
    let ada = open(addr, &stream_as("ada"), None).await;
    let v = next_presence(&mut watch).await;
    assert_eq!(
        (v["streams"].as_u64(), v["joined"].clone()),
        (Some(1), json!(["ada"])),
        "{v}"
    );
    assert_eq!(v["users"], json!(["ada"]));
    let bob = open(addr, &stream_as("bob"), None).await;
    let v = next_presence(&mut watch).await;
    assert_eq!(
        (v["streams"].as_u64(), v["joined"].clone()),
        (Some(2), json!(["bob"])),
        "{v}"
    );
    assert_eq!(v["users"], json!(["ada", "bob"]));
    let cursor = watch.last_id.clone().expect("presence records carry ids");
    drop(watch);
    // Changes while the watcher is away...
    drop(ada);
    let p = poll_until(SECS_30, Duration::from_millis(50), || async {
        let p = presence_as(addr, "scores/m1", Some(&watcher)).await;
        (p["users"] == json!(["bob"])).then_some(p)
    })
    .await
    .expect("ada left");
    assert_eq!(p["streams"], 1);
    let cy = open(addr, &stream_as("cy"), None).await;
    poll_until(SECS_30, Duration::from_millis(50), || async {
        (presence_as(addr, "scores/m1", Some(&watcher)).await["users"] == json!(["bob", "cy"]))
            .then_some(())
    })
    .await
    .expect("cy joined");
    // ...arrive in order on resume, nothing lost.
    let mut again = open(addr, &watch_path, Some(&cursor)).await;
    let v = next_presence(&mut again).await;
    assert_eq!(
        (v["left"].clone(), v["streams"].as_u64()),
        (json!(["ada"]), Some(1)),
        "{v}"
    );
    let v = next_presence(&mut again).await;
    assert_eq!(
        (v["joined"].clone(), v["streams"].as_u64()),
        (json!(["cy"]), Some(2)),
        "{v}"
    );
    drop((bob, cy));
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn presence_is_authorised_like_the_selector_and_users_need_the_flag() {
    let node = node_with(auth_config(false)).await;
    node.create_topic("scores", 1).await.expect("topic");
    node.create_topic("secret", 1).await.expect("topic");
    let addr = node.local_addr();
    let ada = user_token("ada");
    let _s = open(
        addr,
        &format!("/v1/events?topic=scores/m1&access_token={ada}"),
        None,
    )
    .await;
    // A grant for the selector reads its presence; users are not listed.
    let p = poll_until(SECS_30, Duration::from_millis(50), || async {
        let (status, body) = request(
            addr,
            "GET",
            &format!("/v1/presence?topic=scores/m1&access_token={ada}"),
            b"",
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let p: Value = serde_json::from_str(&body).expect("json");
        (p["streams"] == 1).then_some(p)
    })
    .await
    .expect("presence counted");
    assert!(
        p.get("users").is_none(),
        "no users without --presence-users: {p}"
    );
    let mut s = open(
        addr,
        &format!("/v1/events?presence=scores/m1&snapshot=true&access_token={ada}"),
        None,
    )
    .await;
    let v = next_presence(&mut s).await;
    assert_eq!(v["streams"], 1);
    assert!(v.get("users").is_none() && v.get("joined").is_none(), "{v}");
    // Without a grant for the selector: refused, stream and view alike.
    for path in [
        format!("/v1/presence?topic=secret&access_token={ada}"),
        format!("/v1/events?presence=secret&access_token={ada}"),
        format!("/v1/presence?access_token={ada}"),
        format!("/v1/events?cluster=true&access_token={ada}"),
    ] {
        let s = open(addr, &path, None).await;
        assert_eq!(s.status, 403, "{path}: {}", s.body);
    }
    for path in [
        "/v1/presence?topic=scores/m1",
        "/v1/events?presence=scores/m1",
        "/v1/presence",
    ] {
        let s = open(addr, path, None).await;
        assert_eq!(s.status, 401, "{path}: {}", s.body);
    }
    // The whole view with the ops grant.
    let ops = token(json!({"exp": far(), "herald": {"ops": true}}));
    let all = poll_until(SECS_30, Duration::from_millis(50), || async {
        let (status, body) = request(
            addr,
            "GET",
            &format!("/v1/presence?access_token={ops}"),
            b"",
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let all: Value = serde_json::from_str(&body).expect("json");
        // The heartbeat after the streams opened.
        (all["nodes"]["herald"]["connections"].as_u64().unwrap_or(0) >= 2).then_some(all)
    })
    .await
    .expect("the node's heartbeat counts its streams");
    assert_eq!(all["selectors"]["scores/m1"]["streams"], 1, "{all}");
    assert_eq!(
        all["nodes"]["herald"]["partitions"],
        json!(["scores/0"]),
        "{all}"
    );
    for bad in [
        "/v1/events?presence=scores&topic=scores",
        "/v1/events?presence=&cluster=true",
        "/v1/events?presence=bad%20topic",
    ] {
        let s = open(addr, &format!("{bad}&access_token={ops}"), None).await;
        assert_eq!(s.status, 400, "{bad}: {}", s.body);
    }
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn churning_streams_write_a_bounded_presence_record_rate() {
    let node = node_with(with_presence(config())).await;
    node.create_topic("churn", 4).await.expect("topic");
    let addr = node.local_addr();
    let selectors = 10;
    wait_for("presence ready", SECS_30, || async {
        presence_of(addr, "churn/k0").await["ready"] == true
    })
    .await;
    let before = metric(&node, "herald_presence_records_total").await;
    let started = Instant::now();
    // About 500 connects and 500 disconnects a second for 4 seconds, over
    // ten selectors.
    let mut held_streams = std::collections::VecDeque::new();
    let mut opened = 0usize;
    while started.elapsed() < Duration::from_secs(4) {
        let tick = Instant::now();
        for _ in 0..50 {
            // Runs of three streams on a selector: the one that leaves (200
            // streams earlier) is on another, so the counts keep changing.
            let path = events_path(&[&format!("churn/k{}", (opened / 3) % selectors)], "");
            held_streams.push_back(open(addr, &path, None).await);
            opened += 1;
            if held_streams.len() > 200 {
                held_streams.pop_front();
            }
        }
        let spent = tick.elapsed();
        if spent < Duration::from_millis(100) {
            tokio::time::sleep(Duration::from_millis(100) - spent).await;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let records = metric(&node, "herald_presence_records_total").await - before;
    let rate = records / secs;
    eprintln!("presence under churn: {opened} streams opened in {secs:.1}s, {records} presence records ({rate:.1}/s)");
    assert!(
        opened as f64 / secs > 300.0,
        "the churn ran: {opened} in {secs:.1}s"
    );
    // At most one record per selector a second, and the heartbeats.
    let bound = selectors as f64 * 1.0 + 1.0 / 0.3 + 2.0;
    assert!(
        rate <= bound * 1.2,
        "{rate:.1} presence records/s, bound {bound:.1}"
    );
    drop(held_streams);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_run_shows_the_demo_topic_and_the_cluster_live_in_chromium() {
    let mut c = with_presence(config());
    c.demo_topic = Some("demo".into());
    c.presence_heartbeat = Duration::from_millis(300);
    let node = node_with(c).await;
    let shot = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join("first-run.png");
    let base = format!("http://{}", node.local_addr());
    let out = browser_script("first-run.mjs", &[&base, &shot.to_string_lossy()]).await;
    let got: Value = serde_json::from_str(out.trim()).expect("json");
    assert!(got["records"].as_u64().unwrap_or(0) >= 3, "{got}");
    assert_eq!(got["nodes"], json!(["herald"]), "{got}");
    assert!(got["presence"].as_u64().unwrap_or(0) >= 1, "{got}");
    let png = std::fs::read(&shot).expect("screenshot");
    assert!(
        png.len() > 10_000 && png.starts_with(b"\x89PNG"),
        "a real screenshot"
    );
    node.shutdown().await;
}

/// `--demo-producer=false` (what `herald-bench` runs with): the demo topic is
/// created but holds only what others write. Both cases wait for three
/// heartbeat comments (the node's clock: over two of the producer's 0.4 s
/// intervals) before the sentinels; with the producer on, readings arrive
/// meanwhile, so the check with it off can fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demo_topic_without_its_producer_holds_only_what_others_write() {
    for producing in [true, false] {
        let mut c = config();
        c.demo_topic = Some("quiet".into());
        c.demo_producer = producing;
        c.heartbeat = Duration::from_millis(300);
        let node = node_with(c).await;
        let mut s = open(
            node.local_addr(),
            "/v1/events?topic=quiet&from=earliest",
            None,
        )
        .await;
        let mut readings = Vec::new();
        let deadline = Instant::now() + SECS_10;
        while s.comments < 3 {
            assert!(Instant::now() < deadline && !s.ended, "three heartbeats");
            if let Some(e) = s.next_event(Duration::from_millis(100)).await {
                readings.extend(e.data);
            }
        }
        let p = producer(node.bootstrap_servers());
        let sentinels = produce_sentinels(&p, "quiet", 8, "demo").await;
        if producing {
            assert!(
                readings.iter().any(|d| d.contains("\"sensor\"")),
                "demo readings while waiting: {readings:?}"
            );
        } else {
            assert!(
                readings.is_empty(),
                "nothing with the producer off: {readings:?}"
            );
            expect_only(&mut s, &sentinels, "a demo reading with the producer off").await;
        }
        node.shutdown().await;
    }
}
