//! Lossless resume: cursors survive cuts, other nodes, slow reading,
//! retention gaps and mass reconnects.

mod support;

use std::time::Duration;

use rand::Rng;
use rdkafka::producer::FutureRecord;
use support::*;

/// Reads a stream with cuts at random points, resuming each time with the
/// last id, until `expected` records passed the verifier.
async fn read_with_cuts(
    addr: std::net::SocketAddr,
    path: String,
    expected: u64,
    mut verifier: Verifier,
    first: Stream,
    max_events_between_cuts: usize,
) -> (Verifier, usize) {
    let mut cuts = 0;
    let mut stream = first;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let budget = rand::thread_rng().gen_range(1..=max_events_between_cuts);
        let mut read = 0;
        while read < budget && verifier.received < expected {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            assert!(
                !left.is_zero(),
                "deadline: {} of {expected} received",
                verifier.received
            );
            match stream.next_event(left.min(SECS_10)).await {
                Some(e) => {
                    if let Some(d) = &e.data {
                        verifier.see(d);
                        read += 1;
                    }
                }
                None => break,
            }
        }
        if verifier.received >= expected {
            return (verifier, cuts);
        }
        let last = stream.last_id.clone();
        drop(stream);
        cuts += 1;
        stream = open(addr, &path, last.as_deref()).await;
        assert_eq!(stream.status, 200, "{}", stream.body);
        stream.last_id = last;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_random_cuts_loses_nothing_and_duplicates_nothing() {
    let node = node().await;
    node.create_topic("cuts", 8).await.expect("topic");
    let addr = node.local_addr();
    let all_keys = keys(40);
    let per_key = 100u64;
    let whole_path = events_path(&["cuts"], "");
    let keyed_path = events_path(&["cuts/k3", "cuts/k17", "cuts/k29"], "");
    let whole = open(addr, &whole_path, None).await;
    let keyed = open(addr, &keyed_path, None).await;
    let p = producer(node.bootstrap_servers());
    let producing = {
        let keys = all_keys.clone();
        tokio::spawn(async move {
            produce_sequence(&p, "cuts", &keys, 0..per_key, Duration::from_millis(5), "").await
        })
    };
    let whole_reader = tokio::spawn(read_with_cuts(
        addr,
        whole_path,
        40 * per_key,
        Verifier::default(),
        whole,
        20,
    ));
    let keyed_reader = tokio::spawn(read_with_cuts(
        addr,
        keyed_path,
        3 * per_key,
        Verifier::default(),
        keyed,
        3,
    ));
    producing.await.expect("producer");
    let (w, whole_cuts) = whole_reader.await.expect("whole reader");
    let (k, keyed_cuts) = keyed_reader.await.expect("keyed reader");
    assert_eq!(w.received, 4000);
    assert_eq!(k.received, 300);
    assert!(
        whole_cuts + keyed_cuts >= 200,
        "hundreds of cuts: {whole_cuts} + {keyed_cuts}"
    );
    assert_eq!(k.next.len(), 3, "the keyed stream saw only its keys");
    println!("cuts: whole {whole_cuts}, keyed {keyed_cuts}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_on_another_node_of_the_same_kafka() {
    let a = node().await;
    a.create_topic("shared", 8).await.expect("topic");
    let b = node_on(a.bootstrap_servers()).await;
    let path = events_path(&["shared"], "");
    let mut s = open(a.local_addr(), &path, None).await;
    let p = producer(a.bootstrap_servers());
    let ks = keys(16);
    produce_sequence(&p, "shared", &ks, 0..10, Duration::ZERO, "").await;
    let mut v = Verifier::default();
    for e in s.take(70, SECS_10).await {
        v.see(e.data.as_deref().unwrap_or_default());
    }
    let last = s.last_id.clone();
    drop(s);
    produce_sequence(&p, "shared", &ks, 10..15, Duration::ZERO, "").await;
    // Node b has never read this topic: it starts the partitions at their
    // high watermarks and replays what the cursor lacks from Kafka.
    let mut s = open(b.local_addr(), &path, last.as_deref()).await;
    assert_eq!(s.status, 200, "{}", s.body);
    for e in s.take(16 * 15 - 70, SECS_10).await {
        v.see(e.data.as_deref().unwrap_or_default());
    }
    let sentinels = produce_sentinels(&p, "shared", 8, "b").await;
    expect_only(&mut s, &sentinels, "a duplicate after the end").await;
    // And back to a, which has moved on meanwhile.
    let last = s.last_id.clone();
    drop(s);
    produce_sequence(&p, "shared", &ks, 15..16, Duration::ZERO, "").await;
    let mut s = open(a.local_addr(), &path, last.as_deref()).await;
    for e in s.take(16, SECS_10).await {
        v.see(e.data.as_deref().unwrap_or_default());
    }
    assert_eq!(v.received, 16 * 16);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_below_the_log_start_yields_an_explicit_gap() {
    let node = node().await;
    node.create_topic("retained", 1).await.expect("topic");
    let path = events_path(&["retained"], "");
    let mut s = open(node.local_addr(), &path, None).await;
    let p = producer(node.bootstrap_servers());
    produce(&p, "retained", None, b"first").await;
    assert_eq!(
        s.next_data(SECS_10).await.and_then(|e| e.data).as_deref(),
        Some("first")
    );
    let cursor = s.last_id.clone().expect("id");
    drop(s);
    // The mock cluster keeps about 5 MiB per partition: push the start past our cursor.
    let big = vec![b'x'; 64 * 1024];
    let consumer: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", node.bootstrap_servers())
        .create()
        .expect("consumer");
    let mut low = 0;
    for _ in 0..400 {
        let mut batch = Vec::new();
        for _ in 0..16 {
            batch.push(
                p.send_result(FutureRecord::<(), _>::to("retained").payload(&big[..]))
                    .map_err(|(e, _)| e)
                    .expect("enqueue"),
            );
        }
        for f in batch {
            let _ = f.await.expect("delivered");
        }
        low = tokio::task::block_in_place(|| {
            rdkafka::consumer::Consumer::fetch_watermarks(
                &consumer,
                "retained",
                0,
                Duration::from_secs(5),
            )
        })
        .expect("watermarks")
        .0;
        if low > 1 {
            break;
        }
    }
    assert!(
        low > 1,
        "retention moved the log start (low watermark {low})"
    );
    produce(&p, "retained", None, b"after").await;
    let mut s = open(node.local_addr(), &path, Some(&cursor)).await;
    assert_eq!(s.status, 200, "{}", s.body);
    let gap = s.next_data(SECS_10).await.expect("gap event");
    assert_eq!(gap.event.as_deref(), Some("herald.gap"));
    let g: serde_json::Value =
        serde_json::from_str(gap.data.as_deref().unwrap_or_default()).expect("json");
    assert_eq!(g["topic"], "retained");
    assert_eq!(g["partition"], 0);
    assert_eq!(g["requested"], 1);
    assert_eq!(g["resumed"], low);
    // Then the stream continues from the oldest record still there.
    let next = s.next_data(SECS_10).await.expect("records after the gap");
    assert_eq!(next.event, None);
    assert_eq!(next.data.as_deref().map(str::len), Some(64 * 1024));
    // The gap event's own id resumes after the gap, not before it.
    let mut again = open(node.local_addr(), &path, gap.id.as_deref()).await;
    let first = again.next_data(SECS_10).await.expect("record");
    assert_ne!(first.event.as_deref(), Some("herald.gap"));
    assert_eq!(
        metric(&node, "herald_gaps_total").await,
        1.0,
        "one gap, not a second one"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_is_cut_off_and_resumes_with_nothing_lost() {
    let mut c = config();
    c.queue_bytes = 256 * 1024;
    let node = node_with(c).await;
    node.create_topic("firehose", 4).await.expect("topic");
    let addr = node.local_addr();
    let path = events_path(&["firehose"], "");
    let mut fast = open(addr, &path, None).await;
    let mut slow = stalled_client(addr, &path, "HTTP/1.0", b"").await;
    wait_for("both streams registered", SECS_10, || async {
        stats(&node).await["connections"] == 2
    })
    .await;
    let ks = keys(8);
    let pad = "p".repeat(1000);
    let producing = {
        let p = producer(node.bootstrap_servers());
        let ks = ks.clone();
        // Paced at about 4 MB/s: a reader that reads keeps up even in a
        // debug build, while one that never reads passes its 256 KiB bound
        // within a tenth of a second.
        tokio::spawn(async move {
            produce_sequence(&p, "firehose", &ks, 0..1000, Duration::from_millis(2), &pad).await
        })
    };
    // The fast reader keeps up and is never cut.
    let mut fast_v = Verifier::default();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while fast_v.received < 8000 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "fast reader got {}",
            fast_v.received
        );
        let e = fast
            .next_data(SECS_10)
            .await
            .expect("fast reader is not cut");
        let d = e.data.unwrap_or_default();
        fast_v.see(&d);
    }
    producing.await.expect("producer");
    assert!(
        metric(&node, "herald_slow_disconnects_total").await >= 1.0,
        "the slow reader was cut off"
    );
    // The slow client now reads what reached it, then resumes from its last id.
    use tokio::io::AsyncReadExt;
    let mut raw = Vec::new();
    tokio::time::timeout(SECS_10, slow.read_to_end(&mut raw))
        .await
        .expect("server closed it")
        .expect("read");
    let header_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("headers")
        + 4;
    let mut parser = Parser::default();
    let mut v = Verifier::default();
    let mut last = None;
    for item in parser.feed(&raw[header_end..]) {
        if let Item::Event(e) = item {
            if let Some(d) = &e.data {
                v.see(d);
            }
            if e.id.is_some() {
                last = e.id;
            }
        }
    }
    assert!(
        v.received < 8000,
        "it really fell behind ({} received before the cut)",
        v.received
    );
    let before = v.received;
    let mut s = open(addr, &path, last.as_deref()).await;
    while v.received < 8000 {
        let e = s
            .next_data(SECS_10)
            .await
            .unwrap_or_else(|| panic!("resumed reader stalled at {}", v.received));
        let d = e.data.unwrap_or_default();
        v.see(&d);
    }
    println!(
        "slow reader: {before} before the cut, {} after resuming",
        8000 - before
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mass_resume_uses_a_bounded_pool_of_catchup_readers() {
    let mut c = config();
    c.replay_buffer_records = 8; // force reads from Kafka
                                 // More readers than partitions: at most one may read each partition.
    c.catchup_readers = 16;
    let node = node_with(c).await;
    node.create_topic("mass", 8).await.expect("topic");
    let addr = node.local_addr();
    let ks = keys(50);
    let clients = 2000;
    let paths: Vec<String> = (0..clients)
        .map(|i| {
            if i % 20 == 0 {
                events_path(&["mass"], "")
            } else {
                events_path(&[&format!("mass/k{}", i % 50)], "")
            }
        })
        .collect();
    let p = producer(node.bootstrap_servers());
    produce_sequence(&p, "mass", &ks, 0..1, Duration::ZERO, "").await;
    // Everyone gets a cursor from a first record, then disconnects.
    let mut cursors = Vec::with_capacity(clients);
    let mut streams = Vec::with_capacity(clients);
    for path in &paths {
        streams.push(open(addr, path, None).await);
    }
    produce_sequence(&p, "mass", &ks, 1..2, Duration::ZERO, "").await;
    for (s, path) in streams.iter_mut().zip(&paths) {
        // A whole-topic client takes all 50 first records, a keyed one its own.
        let n = if path.ends_with("topic=mass") { 50 } else { 1 };
        let got = s.take(n, SECS_10).await;
        cursors.push(got.last().and_then(|e| e.id.clone()).expect("id"));
    }
    drop(streams);
    wait_for("all disconnected", SECS_10, || async {
        stats(&node).await["connections"] == 0
    })
    .await;
    // Five seconds of records at 200/s while they are away.
    let started = std::time::Instant::now();
    produce_sequence(&p, "mass", &ks, 2..22, Duration::from_millis(250), "").await;
    assert!(started.elapsed() >= Duration::from_secs(5));
    // All resume at once.
    let resumed_at = std::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (path, cursor) in paths.into_iter().zip(cursors) {
        let whole = path.ends_with("topic=mass");
        tasks.spawn(async move {
            let mut s = open(addr, &path, Some(&cursor)).await;
            assert_eq!(s.status, 200, "{}", s.body);
            let expected = if whole { 50 * 20 } else { 20 };
            let got = s.take(expected, Duration::from_secs(60)).await;
            let mut v = Verifier::default();
            for e in &got {
                let d = e.data.as_deref().unwrap_or_default();
                // Every key resumes at seq 2 (seq 0 and 1 were before the cursor).
                let (k, seq) = d.split_once(':').expect("value");
                let seq: u64 = seq.parse().expect("seq");
                v.see(&format!("{k}:{}", seq - 2));
            }
        });
    }
    let mut max_readers = 0.0f64;
    while !tasks.is_empty() {
        tokio::select! {
            done = tasks.join_next() => { if let Some(r) = done { r.expect("client verified its records"); } }
            _ = tokio::time::sleep(Duration::from_millis(50)) => {
                max_readers = max_readers.max(metric(&node, "herald_catchup_readers").await);
            }
        }
    }
    let took = resumed_at.elapsed();
    assert!(
        max_readers <= 8.0,
        "at most one catch-up reader per partition, of a pool of 16 ({max_readers})"
    );
    let reads = metric(&node, "herald_catchup_kafka_reads_total").await;
    assert!(reads >= 1.0, "the old positions were read from Kafka");
    assert!(
        reads < clients as f64 / 4.0,
        "readers serve many clients per pass: {reads} passes for {clients} clients"
    );
    println!("mass resume: {clients} clients caught up in {took:?}; {reads} Kafka catch-up passes; max readers {max_readers}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keyed_streams_get_id_only_events_and_resume_without_rescanning() {
    let mut c = config();
    c.idle_id_interval = Duration::from_millis(200);
    let node = node_with(c).await;
    node.create_topic("sparse", 1).await.expect("topic");
    let addr = node.local_addr();
    let path = events_path(&["sparse/mine"], "");
    let mut s = open(addr, &path, None).await;
    let p = producer(node.bootstrap_servers());
    produce(&p, "sparse", Some("mine"), b"mine:0").await;
    let first = s.next_data(SECS_10).await.expect("own record");
    for i in 0..200 {
        produce(&p, "sparse", Some("other"), format!("other:{i}").as_bytes()).await;
    }
    // An event with an id and no data moves the cursor past the other key's records.
    let deadline = tokio::time::Instant::now() + SECS_10;
    let moved = loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no id-only event arrived"
        );
        if let Some(e) = s.next_event(Duration::from_millis(300)).await {
            assert!(e.data.is_none(), "no data for other keys: {e:?}");
            match e.id {
                Some(id) if Some(&id) != first.id.as_ref() => break id,
                _ => {}
            }
        }
    };
    drop(s);
    let hits = metric(&node, "herald_replay_buffer_hits_total").await;
    let reads = metric(&node, "herald_catchup_kafka_reads_total").await;
    let mut s = open(addr, &path, Some(&moved)).await;
    produce(&p, "sparse", Some("mine"), b"mine:1").await;
    assert_eq!(
        s.next_data(SECS_10).await.and_then(|e| e.data).as_deref(),
        Some("mine:1")
    );
    assert_eq!(
        metric(&node, "herald_replay_buffer_hits_total").await,
        hits,
        "nothing replayed"
    );
    assert_eq!(
        metric(&node, "herald_catchup_kafka_reads_total").await,
        reads,
        "nothing read from Kafka"
    );
    // An unchanged cursor is not repeated: the rate is bounded by change, not by time alone.
    let mut ids = 0;
    let until = tokio::time::Instant::now() + Duration::from_millis(700);
    while tokio::time::Instant::now() < until {
        if let Some(e) = s.next_event(Duration::from_millis(100)).await {
            ids += usize::from(e.data.is_none() && e.id.is_some());
        }
    }
    assert!(ids <= 1, "{ids} id-only events for an unchanged cursor");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cut_off_before_its_first_record_resumes_from_where_it_started() {
    // Found by the chaos test: a client whose node died before any record
    // reached it had no id, so EventSource reconnected without one and the
    // new stream started at "now", skipping what was produced meanwhile.
    let node = node().await;
    node.create_topic("early", 4).await.expect("topic");
    let addr = node.local_addr();
    for path in [
        events_path(&["early"], ""),
        events_path(&["early/k1", "early/k5"], ""),
    ] {
        let mut s = open(addr, &path, None).await;
        let start = loop {
            let e = s
                .next_event(SECS_10)
                .await
                .expect("the start position, before any record");
            if let Some(id) = e.id {
                assert!(e.data.is_none(), "an id-only event: {:?}", e.data);
                break id;
            }
        };
        drop(s);
        let p = producer(node.bootstrap_servers());
        let ks = keys(8);
        let before = Verifier::default();
        produce_sequence(&p, "early", &ks, 0..5, Duration::ZERO, "").await;
        let expected = if path.contains("%2F") { 10 } else { 40 };
        let mut s = open(addr, &path, Some(&start)).await;
        let mut v = before;
        while v.received < expected {
            let e = s
                .next_data(SECS_10)
                .await
                .unwrap_or_else(|| panic!("{path}: resumed at {} of {expected}", v.received));
            v.see(&e.data.unwrap_or_default());
        }
        // Every key from seq 0: nothing produced after the first open was skipped.
        for (k, next) in &v.next {
            assert_eq!(*next, 5, "{path}: key {k}");
        }
    }
}
