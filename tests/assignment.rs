//! The node's consumer reads exactly the partitions its subscriptions need.

mod support;

use std::time::Duration;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_subscriptions_assign_only_their_partitions() {
    let node = node().await;
    node.create_topic("keys", 64).await.expect("topic");
    let keys = ["alpha", "bravo", "charlie"];
    let mut streams = Vec::new();
    for k in keys {
        streams.push(
            open(
                node.local_addr(),
                &events_path(&[&format!("keys/{k}")], ""),
                None,
            )
            .await,
        );
    }
    let mut expected: Vec<(String, i64)> = keys
        .iter()
        .map(|k| {
            (
                "keys".to_owned(),
                herald::partitioner::partition_for_key(k.as_bytes(), 64) as i64,
            )
        })
        .collect();
    expected.sort();
    expected.dedup();
    assert_eq!(assigned(&node).await, expected);
    let n = expected.len() as f64;
    wait_for("the consumer has assigned them", SECS_10, || async {
        metric(&node, "herald_assigned_partitions").await == n
    })
    .await;
    // And records still arrive for each key.
    let p = producer(node.bootstrap_servers());
    for k in keys {
        produce(&p, "keys", Some(k), k.as_bytes()).await;
    }
    for (s, k) in streams.iter_mut().zip(keys) {
        assert_eq!(
            s.next_data(SECS_10).await.and_then(|e| e.data).as_deref(),
            Some(k)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_are_released_after_the_linger_and_not_before() {
    let mut c = config();
    c.partition_linger = Duration::from_millis(700);
    let node = node_with(c).await;
    node.create_topic("churn", 4).await.expect("topic");
    let s = open(node.local_addr(), &events_path(&["churn"], ""), None).await;
    assert_eq!(
        assigned(&node).await.len(),
        4,
        "subscribe assigns all partitions of a whole topic"
    );
    drop(s);
    wait_for("connection gone", SECS_10, || async {
        stats(&node).await["connections"] == 0
    })
    .await;
    assert_eq!(assigned(&node).await.len(), 4, "kept during the linger");
    // A subscriber coming back within the linger keeps the assignment (no thrash).
    let s2 = open(node.local_addr(), &events_path(&["churn/k"], ""), None).await;
    let part = herald::partitioner::partition_for_key(b"k", 4) as i64;
    let keyed = vec![("churn".to_owned(), part)];
    wait_for(
        "the three unwanted partitions released, the keyed one kept",
        SECS_10,
        || async { assigned(&node).await == keyed },
    )
    .await;
    drop(s2);
    wait_for("everything released after the linger", SECS_10, || async {
        assigned(&node).await.is_empty()
    })
    .await;
    wait_for("the consumer has unassigned them", SECS_10, || async {
        metric(&node, "herald_assigned_partitions").await == 0.0
    })
    .await;
}
