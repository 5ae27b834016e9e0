//! Drain: a node that gets SIGTERM turns unready, answers new streams with
//! `retry:` and an end (never a non-200), closes its streams spread over the
//! window with jittered `retry:`, and its clients resume on another node with
//! nothing lost.

mod support;

use std::time::{Duration, Instant};

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_spread_out_and_clients_resume_elsewhere_with_nothing_lost() {
    // One node holds the embedded Kafka; A (a real process) and B read from it.
    let kafka = node().await;
    kafka.create_topic("drain", 4).await.expect("topic");
    let b = node_on(kafka.bootstrap_servers()).await;
    let window = Duration::from_secs(2);
    let mut a = NodeProcess::start(
        kafka.bootstrap_servers(),
        "node-a",
        &["--drain-window", "2s"],
    )
    .await;
    let a_addr = a.addr;

    let path = events_path(&["drain"], "");
    let clients = 40;
    let mut streams = Vec::new();
    for _ in 0..clients {
        let s = open(a_addr, &path, None).await;
        assert_eq!(s.status, 200);
        streams.push(s);
    }
    let keys = keys(8);
    let per_key = 300u64;
    let producing = {
        let p = producer(kafka.bootstrap_servers());
        let keys = keys.clone();
        // Paced, so that records flow all through the drain.
        tokio::spawn(async move {
            produce_sequence(
                &p,
                "drain",
                &keys,
                0..per_key,
                Duration::from_millis(10),
                "",
            )
            .await
        })
    };

    // Clients read; when their stream ends they resume on B.
    let started = Instant::now();
    let mut readers = tokio::task::JoinSet::new();
    for mut s in streams {
        let b_addr = b.local_addr();
        let path = path.clone();
        let total = per_key * 8;
        readers.spawn(async move {
            let mut v = Verifier::default();
            let mut retry = None;
            let mut ended_at = None;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            while v.received < total {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "stalled at {}",
                    v.received
                );
                match s.next_event(Duration::from_secs(5)).await {
                    Some(e) => {
                        if let (Some(r), None) = (e.retry, ended_at) {
                            retry = Some(r); // the last one node a sent
                        }
                        if let Some(d) = e.data {
                            v.see(&d);
                        }
                    }
                    None if s.ended && ended_at.is_none() => {
                        ended_at = Some(Instant::now());
                        let last = s.last_id.clone();
                        s = open(b_addr, &path, last.as_deref()).await;
                        assert_eq!(s.status, 200, "{}", s.body);
                        s.last_id = last;
                    }
                    None => {}
                }
            }
            (ended_at, retry)
        });
    }
    // Let the stream run a moment, then SIGTERM node a.
    wait_for("records flowing through node a", SECS_10, || async move {
        let (_, m) = request(a_addr, "GET", "/metrics", b"").await;
        m.lines()
            .any(|l| l.starts_with("herald_events_delivered_total ") && !l.ends_with(" 0"))
    })
    .await;
    let term_at = Instant::now();
    a.terminate();
    wait_for("node a unready", SECS_10, || async move {
        request(a_addr, "GET", "/readyz", b"").await.0 == 503
    })
    .await;
    // A new stream on a draining node: 200, retry:, end. Never a 5xx.
    let mut late = open(a_addr, &path, None).await;
    assert_eq!(late.status, 200, "{}", late.body);
    assert!(
        late.until_end(SECS_10).await,
        "a draining node ends new streams at once"
    );

    let mut ends = Vec::new();
    let mut retries = Vec::new();
    while let Some(r) = readers.join_next().await {
        let (ended, retry) = r.expect("client saw every record exactly once, in order");
        ends.push(
            ended
                .expect("node a ended the stream")
                .duration_since(term_at),
        );
        retries.push(retry.expect("a retry: hint"));
    }
    producing.await.expect("producer");
    let status = a
        .exited(window + Duration::from_secs(10))
        .await
        .expect("node a exits within the bound");
    assert!(status.success(), "clean exit: {status:?}");
    ends.sort();
    let spread = *ends.last().expect("ends") - ends[0];
    assert!(
        spread >= window / 2,
        "closes spread over the window: {spread:?}"
    );
    retries.sort();
    retries.dedup();
    assert!(
        retries.len() > clients / 4,
        "jittered retry values: {retries:?}"
    );
    println!("drain: {clients} clients, closes spread over {spread:?} (window {window:?}), all resumed on node b; total {:?}", started.elapsed());
}
