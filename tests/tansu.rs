//! Against a real Kafka-compatible broker: Tansu with SQLite storage.

mod support;

use std::time::Duration;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_from_a_kafka_client_arrive_by_key_on_a_real_broker() {
    let tansu = Tansu::start().await;
    tansu.create_topic("rides", 4).await;
    let node = node_on(&tansu.bootstrap).await;
    let keys = ["car-1", "car-2", "car-3", "car-4", "car-5"];
    let mut streams = Vec::new();
    for k in keys {
        let s = open(
            node.local_addr(),
            &events_path(&[&format!("rides/{k}")], ""),
            None,
        )
        .await;
        assert_eq!(s.status, 200, "{}", s.body);
        streams.push(s);
    }
    let p = producer(&tansu.bootstrap);
    for i in 0..40 {
        let k = keys[i % keys.len()];
        let (partition, _) = produce(&p, "rides", Some(k), format!("{k}#{i}").as_bytes()).await;
        assert_eq!(
            partition,
            herald::partitioner::partition_for_key(k.as_bytes(), 4),
            "the broker and herald agree on murmur2 placement"
        );
    }
    for (s, k) in streams.iter_mut().zip(keys) {
        let expected: Vec<String> = (0..40)
            .filter(|i| i % 5 == keys.iter().position(|x| *x == k).unwrap_or(0))
            .map(|i| format!("{k}#{i}"))
            .collect();
        let got: Vec<String> = s
            .take(expected.len(), Duration::from_secs(20))
            .await
            .into_iter()
            .filter_map(|e| e.data)
            .collect();
        assert_eq!(got, expected, "exactly {k}'s records, in order");
    }
    // Nothing else for any key: a sentinel on each key comes next.
    for k in keys {
        produce(&p, "rides", Some(k), format!("{k}:sentinel").as_bytes()).await;
    }
    for (s, k) in streams.iter_mut().zip(keys) {
        expect_only(
            s,
            &[format!("{k}:sentinel")],
            &format!("a record that is not {k}'s"),
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn since_replays_from_a_point_in_time() {
    let tansu = Tansu::start().await;
    tansu.create_topic("ticks", 2).await;
    let node = node_on(&tansu.bootstrap).await;
    let p = producer(&tansu.bootstrap);
    for i in 0..5 {
        produce(&p, "ticks", Some("k"), format!("before{i}").as_bytes()).await;
    }
    // Kafka timestamps have millisecond resolution: step past the last one.
    let cut = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
        + 2;
    wait_for(
        "the clock passes the cut",
        Duration::from_secs(1),
        || async move {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0)
                > cut
        },
    )
    .await;
    for i in 0..5 {
        produce(&p, "ticks", Some("k"), format!("after{i}").as_bytes()).await;
    }
    let mut s = open(
        node.local_addr(),
        &events_path(&["ticks/k"], &format!("since={cut}")),
        None,
    )
    .await;
    assert_eq!(s.status, 200, "{}", s.body);
    produce(&p, "ticks", Some("k"), b"live").await;
    let got: Vec<String> = s
        .take(6, Duration::from_secs(20))
        .await
        .into_iter()
        .filter_map(|e| e.data)
        .collect();
    assert_eq!(
        got,
        vec!["after0", "after1", "after2", "after3", "after4", "live"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn since_on_the_embedded_kafka_says_it_is_unsupported() {
    let node = node().await;
    node.create_topic("t", 1).await.expect("topic");
    let (status, body) = request(
        node.local_addr(),
        "GET",
        "/v1/events?topic=t&since=1700000000000",
        b"",
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("offsets-for-times"), "{body}");
}
