//! Several nodes behind a real HAProxy (least connections) on one Kafka:
//! even spread, restarted nodes filled first, and zero loss through node
//! kills, broker failures, leader moves and a full broker outage.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use support::*;

/// Follows `path` through the proxy like a browser's EventSource: on any end
/// it reconnects with its last id, until every expected record arrived.
async fn follow(
    proxy: std::net::SocketAddr,
    path: String,
    keys: Vec<String>,
    per_key: u64,
    progress: Progress,
) -> (u64, usize) {
    let mut v = Verifier::default();
    let mut last: Option<String> = None;
    let mut reconnects = 0;
    let target = keys.len() as u64 * per_key;
    let deadline = Instant::now() + Duration::from_secs(240);
    while v.received < target {
        assert!(
            Instant::now() < deadline,
            "client on {path} stalled at {} of {target}",
            v.received
        );
        let mut s = match try_open(proxy, &path, last.as_deref()).await {
            Ok(s) if s.status == 200 => {
                if last.is_none() && reconnects == 0 {
                    // Headers received: the live start position is fixed.
                    progress.opened.fetch_add(1, Ordering::AcqRel);
                }
                s
            }
            _ => {
                tokio::time::sleep(Duration::from_millis(100)).await; // reconnect backoff, as EventSource's retry
                continue;
            }
        };
        while v.received < target {
            match s.next_event(Duration::from_secs(5)).await {
                Some(e) => {
                    if let Some(d) = e.data {
                        v.see(&d);
                    }
                }
                None if s.ended => break,
                None => {}
            }
        }
        last = s.last_id.clone();
        if v.received < target {
            reconnects += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    for k in &keys {
        assert_eq!(v.next.get(k).copied(), Some(per_key), "every record of {k}");
    }
    progress.done.fetch_add(1, Ordering::AcqRel);
    (v.received, reconnects)
}

/// Clients whose first stream opened, and clients that saw everything.
#[derive(Clone, Default)]
struct Progress {
    opened: Arc<AtomicUsize>,
    done: Arc<AtomicUsize>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_connections_spreads_clients_and_fills_a_restarted_node_first() {
    let kafka = MockKafka::start();
    kafka.create_topic("spread", 4);
    let mut nodes = Vec::new();
    for i in 0..3 {
        nodes.push(NodeProcess::start(&kafka.bootstrap, &format!("n{i}"), &[]).await);
    }
    let proxy = Haproxy::start(&nodes.iter().map(|n| n.addr).collect::<Vec<_>>()).await;
    let mut clients = Vec::new();
    for i in 0..300 {
        let s = open(
            proxy.addr,
            &events_path(&[&format!("spread/k{}", i % 20)], ""),
            None,
        )
        .await;
        assert_eq!(s.status, 200);
        clients.push(s);
    }
    let mut counts = Vec::new();
    for n in &nodes {
        counts.push(n.connections().await);
    }
    for c in &counts {
        assert!(
            (90..=110).contains(c),
            "within ±10% of 100 per node: {counts:?}"
        );
    }
    // Node 2 restarts: its clients are cut off; new clients go to it first.
    nodes[1].restart().await;
    wait_for(
        "the proxy sees node 2 up",
        Duration::from_secs(10),
        || async {
            // New streams land on node 2 once HAProxy's check has passed.
            let s = open(proxy.addr, &events_path(&["spread/probe"], ""), None).await;
            let on_node2 = nodes[1].connections().await >= 1;
            drop(s);
            on_node2
        },
    )
    .await;
    let before: Vec<i64> = futures_counts(&nodes).await;
    for i in 0..60 {
        clients.push(
            open(
                proxy.addr,
                &events_path(&[&format!("spread/k{}", i % 20)], ""),
                None,
            )
            .await,
        );
    }
    let after: Vec<i64> = futures_counts(&nodes).await;
    let to_restarted = after[1] - before[1];
    assert!(
        to_restarted >= 54,
        "the restarted node took {to_restarted} of 60 new clients ({before:?} → {after:?})"
    );
    // The built-in page works through the proxy, in a real browser.
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let page = tokio::process::Command::new("node")
        .current_dir(&dir)
        .args(["page.mjs", &format!("http://{}", proxy.addr)])
        .kill_on_drop(true)
        .output();
    let page = tokio::time::timeout(Duration::from_secs(120), page)
        .await
        .expect("bounded")
        .expect("node runs");
    assert!(
        page.status.success(),
        "page through HAProxy: {}{}",
        String::from_utf8_lossy(&page.stdout),
        String::from_utf8_lossy(&page.stderr)
    );
    println!("least connections: {counts:?} for 300 clients; after a restart the restarted node took {to_restarted}/60 new clients");
    drop(proxy);
}

async fn futures_counts(nodes: &[NodeProcess]) -> Vec<i64> {
    let mut out = Vec::new();
    for n in nodes {
        out.push(n.connections().await);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_kills_and_broker_faults_lose_nothing() {
    const PARTITIONS: i32 = 12;
    const KEYS: usize = 100;
    // `make chaos` runs a longer variant (HERALD_CHAOS_PER_KEY=5000: 500,000 records).
    let per_key: u64 = std::env::var("HERALD_CHAOS_PER_KEY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let kafka = Arc::new(MockKafka::start());
    kafka.create_topic("chaos", PARTITIONS);
    let mut nodes = Vec::new();
    for i in 0..3 {
        nodes.push(
            NodeProcess::start(&kafka.bootstrap, &format!("c{i}"), &["--retry-ms", "200"]).await,
        );
    }
    let proxy = Haproxy::start(&nodes.iter().map(|n| n.addr).collect::<Vec<_>>()).await;
    let all_keys = keys(KEYS);
    let progress = Progress::default();
    let mut clients = tokio::task::JoinSet::new();
    let whole = 10;
    let keyed = 490;
    for _ in 0..whole {
        clients.spawn(follow(
            proxy.addr,
            events_path(&["chaos"], ""),
            all_keys.clone(),
            per_key,
            progress.clone(),
        ));
    }
    for i in 0..keyed {
        let k = all_keys[i % KEYS].clone();
        clients.spawn(follow(
            proxy.addr,
            events_path(&[&format!("chaos/{k}")], ""),
            vec![k],
            per_key,
            progress.clone(),
        ));
    }
    // Every stream open (response headers received), not merely connected:
    // a live stream's start position is fixed before its headers go out.
    wait_for("every stream open", Duration::from_secs(60), || async {
        progress.opened.load(Ordering::Acquire) >= whole + keyed
    })
    .await;

    // Faults while records flow: node SIGKILLs and restarts, partition
    // leaders moving between brokers, a broker answering late for a second
    // each round, and brokers failing requests and dropping connections (fetch,
    // list-offsets, metadata). librdkafka 2.12's mock aborts the process when
    // a broker it took down comes back up, so "down" here is a stall. Produce errors
    // are not injected: the mock then writes some batches twice, a fault of
    // the mock broker, not of herald.
    let nodes_addrs: Vec<_> = nodes.iter().map(|n| n.addr).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let chaos = {
        let (stop, kafka) = (stop.clone(), kafka.clone());
        tokio::spawn(async move {
            use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr as E};
            let (mut kills, mut broker_faults, mut moves, mut stalls) = (0, 0, 0, 0);
            let mut round = 0usize;
            while !stop.load(Ordering::Acquire) {
                // One broker answers every request 500 ms late for the first
                // second of each round, then recovers; the others carry on.
                let stalled = MockKafka::BROKERS[round % 3];
                kafka.slow_broker(stalled, Duration::from_millis(500));
                stalls += 1;
                tokio::time::sleep(Duration::from_secs(1)).await; // length of the stall
                kafka.slow_broker(stalled, Duration::ZERO);
                tokio::time::sleep(Duration::from_secs(2)).await; // spacing between faults
                let victim = rand::thread_rng().gen_range(0..nodes.len());
                nodes[victim].kill().await;
                kills += 1;
                for p in 0..PARTITIONS {
                    let leader = MockKafka::BROKERS[(round + p as usize) % 3];
                    kafka.move_leader("chaos", p, leader);
                    moves += 1;
                }
                let errors = vec![
                    E::RD_KAFKA_RESP_ERR__TRANSPORT,
                    E::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
                    E::RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE,
                    E::RD_KAFKA_RESP_ERR__TRANSPORT,
                ];
                kafka.fail_requests(RDKafkaApiKey::Fetch, errors.clone());
                kafka.fail_requests(RDKafkaApiKey::ListOffsets, errors);
                kafka.fail_requests(
                    RDKafkaApiKey::Metadata,
                    vec![
                        E::RD_KAFKA_RESP_ERR__TRANSPORT,
                        E::RD_KAFKA_RESP_ERR__TRANSPORT,
                    ],
                );
                broker_faults += 1;
                nodes[victim].restart().await;
                round += 1;
            }
            (nodes, kills, broker_faults, moves, stalls)
        })
    };
    let p = {
        let mut c = rdkafka::ClientConfig::new();
        c.set("bootstrap.servers", &kafka.bootstrap)
            .set("partitioner", "murmur2_random")
            .set("enable.idempotence", "true")
            .set("linger.ms", "2")
            .set("message.timeout.ms", "60000");
        c.create::<rdkafka::producer::FutureProducer>()
            .expect("producer")
    };
    let started = Instant::now();
    let addrs: Vec<_> = nodes_addrs.clone();
    let reporter = {
        let done = progress.done.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await; // progress report only
                eprintln!(
                    "chaos progress: {:?} clients done {}",
                    started.elapsed(),
                    done.load(Ordering::Acquire)
                );
                // A stall shows up here with each node's partitions.
                if started.elapsed() > Duration::from_secs(90) {
                    for a in &addrs {
                        let (_, body) = request(*a, "GET", "/v1/stats", b"").await;
                        eprintln!("STATS {a}: {body}");
                    }
                }
            }
        })
    };
    produce_sequence(
        &p,
        "chaos",
        &all_keys,
        0..per_key,
        Duration::from_millis(25),
        "",
    )
    .await;
    eprintln!("chaos: produced in {:?}", started.elapsed());
    stop.store(true, Ordering::Release);
    let (nodes, kills, outages, moves, stalls) = chaos.await.expect("chaos");
    let faults_stopped = Instant::now();
    let mut reconnects = 0;
    let mut delivered = 0;
    while let Some(r) = clients.join_next().await {
        let (received, n) = r.expect("a client saw every record exactly once, in order per key");
        delivered += received;
        reconnects += n;
    }
    let catch_up = faults_stopped.elapsed();
    reporter.abort();
    assert!(
        catch_up <= Duration::from_secs(30),
        "caught up {catch_up:?} after the faults stopped"
    );
    assert_eq!(progress.done.load(Ordering::Acquire), whole + keyed);
    println!(
        "chaos: {} clients ({whole} whole-topic, {keyed} keyed), {} records over {PARTITIONS} partitions in {:?}; \
         {kills} node kills, {stalls} broker stalls (answers 500 ms late for 1 s), {outages} rounds of failed broker requests and dropped connections, {moves} leader moves, {reconnects} reconnects; \
         {delivered} deliveries verified: 0 lost, 0 duplicated, 0 reordered; all caught up {catch_up:?} after the faults stopped",
        whole + keyed,
        KEYS as u64 * per_key,
        faults_stopped.duration_since(started),
    );
    drop(nodes);
    drop(proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minute_without_any_broker_keeps_connections_and_loses_nothing() {
    // A real broker process (Tansu) is killed for a minute and started again
    // on the same port and storage.
    let mut tansu = Tansu::start().await;
    tansu.create_topic("outage", 4).await;
    let nodes = vec![
        NodeProcess::start(&tansu.bootstrap, "o1", &[]).await,
        NodeProcess::start(&tansu.bootstrap, "o2", &[]).await,
    ];
    let proxy = Haproxy::start(&nodes.iter().map(|n| n.addr).collect::<Vec<_>>()).await;
    let ks = keys(8);
    let progress = Progress::default();
    let mut clients = tokio::task::JoinSet::new();
    for i in 0..40 {
        let (path, keys) = if i % 4 == 0 {
            (events_path(&["outage"], ""), ks.clone())
        } else {
            let k = ks[i % 8].clone();
            (events_path(&[&format!("outage/{k}")], ""), vec![k])
        };
        clients.spawn(follow(proxy.addr, path, keys, 200, progress.clone()));
    }
    wait_for("every stream open", SECS_10, || async {
        progress.opened.load(Ordering::Acquire) == 40
            && futures_counts(&nodes).await.iter().sum::<i64>() == 40
    })
    .await;
    let p = producer(&tansu.bootstrap);
    produce_sequence(&p, "outage", &ks, 0..100, Duration::ZERO, "").await;
    wait_for(
        "the first half delivered",
        Duration::from_secs(30),
        || async {
            let (_, m) = request(nodes[0].addr, "GET", "/metrics", b"").await;
            let (_, m2) = request(nodes[1].addr, "GET", "/metrics", b"").await;
            let delivered = |m: &str| {
                m.lines()
                    .find_map(|l| l.strip_prefix("herald_events_delivered_total "))
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or(0.0)
            };
            // 30 keyed clients get 100 each, 10 whole-topic clients 800 each.
            delivered(&m) + delivered(&m2) >= (30 * 100 + 10 * 800) as f64
        },
    )
    .await;
    let before = futures_counts(&nodes).await;
    tansu.stop().await;
    for n in &nodes {
        let addr = n.addr;
        wait_for("readiness fails without Kafka", SECS_10, || async move {
            request(addr, "GET", "/readyz", b"").await.0 == 503
        })
        .await;
    }
    let outage = Instant::now();
    while outage.elapsed() < Duration::from_secs(60) {
        for n in &nodes {
            assert_eq!(
                request(n.addr, "GET", "/healthz", b"").await.0,
                200,
                "healthy without Kafka"
            );
        }
        assert_eq!(futures_counts(&nodes).await, before, "connections kept");
        tokio::time::sleep(Duration::from_secs(2)).await; // sampling through the outage
    }
    tansu.start_again().await;
    for n in &nodes {
        let addr = n.addr;
        wait_for("ready again", Duration::from_secs(60), || async move {
            request(addr, "GET", "/readyz", b"").await.0 == 200
        })
        .await;
    }
    produce_sequence(&p, "outage", &ks, 100..200, Duration::ZERO, "").await;
    let resumed = Instant::now();
    while let Some(r) = clients.join_next().await {
        r.expect("every record after the outage, none lost");
    }
    println!("outage: 60 s without the broker, connections {before:?} kept, all 40 clients complete {:?} after production resumed", resumed.elapsed());
    drop(proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_address_limit_counts_the_address_haproxy_saw_not_the_clients_claim() {
    let mut c = config();
    c.max_connections_per_ip = 2;
    c.trusted_proxy_header = Some("x-forwarded-for".into());
    let node = node_with(c).await;
    node.create_topic("limited", 1).await.expect("topic");
    let proxy = Haproxy::start(&[node.local_addr()]).await;
    let path = events_path(&["limited"], "");
    let mut held = Vec::new();
    for i in 0..3 {
        // Each request claims another address; HAProxy appends the real one.
        let claim = format!("10.0.0.{i}");
        let resp = http(
            proxy.addr,
            "GET",
            &path,
            &[("x-forwarded-for", &claim)],
            bytes::Bytes::new(),
        )
        .await;
        held.push(resp.status().as_u16());
        std::mem::forget(resp); // keep the stream open
    }
    assert_eq!(
        held,
        [200, 200, 429],
        "the third stream from 127.0.0.1 is refused"
    );
}

/// The browser side of the reconnect-wave test: real EventSources in
/// headless Chromium (tests/browser/wave.mjs), driven over stdin/stdout.
struct Browsers {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

impl Browsers {
    async fn start(port: u16, pages: usize, per_page: usize, topic: &str) -> Browsers {
        use tokio::io::AsyncBufReadExt;
        let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
        let mut child = tokio::process::Command::new("node")
            .current_dir(&dir)
            .args([
                "wave.mjs",
                &port.to_string(),
                &pages.to_string(),
                &per_page.to_string(),
                topic,
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("node runs wave.mjs");
        let stdin = child.stdin.take().expect("stdin");
        let lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut b = Browsers {
            child,
            stdin,
            lines,
        };
        assert_eq!(b.line().await, "ready");
        b
    }

    async fn line(&mut self) -> String {
        tokio::time::timeout(Duration::from_secs(60), self.lines.next_line())
            .await
            .expect("wave.mjs answers")
            .expect("read")
            .expect("wave.mjs is running")
    }

    async fn report(&mut self) -> serde_json::Value {
        use tokio::io::AsyncWriteExt;
        self.stdin.write_all(b"report\n").await.expect("write");
        serde_json::from_str(&self.line().await).expect("JSON report")
    }

    async fn quit(mut self) {
        use tokio::io::AsyncWriteExt;
        let _ = self.stdin.write_all(b"quit\n").await;
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_lose_no_stream_when_a_node_dies_mid_handshake_in_a_reconnect_wave() {
    const RETRY_MS: u64 = 3000;
    let kafka = MockKafka::start();
    kafka.create_topic("wave", 4);
    let retry = RETRY_MS.to_string();
    let mut nodes = Vec::new();
    for i in 0..3 {
        nodes.push(
            NodeProcess::start(&kafka.bootstrap, &format!("w{i}"), &["--retry-ms", &retry]).await,
        );
    }
    let proxy = Haproxy::start(&nodes.iter().map(|n| n.addr).collect::<Vec<_>>()).await;
    let mut browsers = Browsers::start(proxy.addr.port(), 5, 5, "wave").await;
    let keys: Vec<String> = (0..25).map(|i| format!("k{i}")).collect();
    let p = producer(&kafka.bootstrap);
    let received = |report: &serde_json::Value, n: usize| {
        keys.iter()
            .all(|k| report[k]["values"].as_array().map(Vec::len) == Some(n))
    };
    produce_sequence(&p, "wave", &keys, 0..5, Duration::ZERO, "").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !received(&browsers.report().await, 5) {
        assert!(
            Instant::now() < deadline,
            "first records: {}",
            browsers.report().await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut counts = Vec::new();
    for n in &nodes {
        counts.push(n.connections().await);
    }
    let victim = (0..3).max_by_key(|&i| counts[i]).unwrap_or(0);
    assert!(counts[victim] > 0, "{counts:?}");
    // The victim dies; its browsers come back RETRY_MS later, and the
    // restarted (empty) victim is the node least connections picks for them.
    // It freezes just before they arrive and dies just after: their requests
    // reached a node that never answered. The sleeps place faults on the
    // browsers' retry timer; they wait for no condition.
    let cut = tokio::time::Instant::now();
    nodes[victim].restart().await;
    tokio::time::sleep_until(cut + Duration::from_millis(RETRY_MS - 300)).await;
    nodes[victim].freeze();
    tokio::time::sleep_until(cut + Duration::from_millis(RETRY_MS + 600)).await;
    nodes[victim].restart().await;
    produce_sequence(&p, "wave", &keys, 5..10, Duration::ZERO, "").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let report = browsers.report().await;
        let closed: Vec<&String> = keys
            .iter()
            .filter(|k| report[k.as_str()]["closed"].as_bool() == Some(true))
            .collect();
        assert!(
            closed.is_empty(),
            "EventSource gave up for good on {} streams: {closed:?}",
            closed.len()
        );
        if received(&report, 10) {
            for k in &keys {
                let expected: Vec<String> = (0..10).map(|s| format!("{k}:{s}")).collect();
                let got: Vec<String> = report[k.as_str()]["values"]
                    .as_array()
                    .map(|v| {
                        v.iter()
                            .filter_map(|x| x.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default();
                assert_eq!(got, expected, "{k}: every record once, in order");
            }
            let errors: u64 = keys
                .iter()
                .filter_map(|k| report[k.as_str()]["errors"].as_u64())
                .sum();
            println!("reconnect wave: 25 browser streams, {errors} reconnects, 0 closed, 0 lost (counts before {counts:?})");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not all records arrived: {report}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    browsers.quit().await;
}
