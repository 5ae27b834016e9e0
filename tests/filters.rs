//! Filters and projections end to end: `where=` (CEL) over keys, headers
//! and value fields, `fields=` projections, exact cursors through filtered
//! streams on two nodes, a token's mandatory `herald.where` keeping tenants
//! apart on one topic, and the expressions a node refuses.

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rdkafka::message::{Header as KafkaHeader, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{json, Value};
use support::*;

/// A record to produce: key, value, headers.
type Produced<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)]);

const SECRET: &str = "0123456789abcdef0123456789abcdef-test-only";

fn path(topic: &str, filter: &str, extra: &str) -> String {
    let mut q = format!(
        "/v1/events?topic={topic}&where={}",
        form_urlencoded::byte_serialize(filter.as_bytes()).collect::<String>()
    );
    if !extra.is_empty() {
        q.push('&');
        q.push_str(extra);
    }
    q
}

async fn send(
    p: &FutureProducer,
    topic: &str,
    key: Option<&str>,
    value: &str,
    headers: &[(&str, &str)],
) -> i64 {
    let mut hs = OwnedHeaders::new();
    for (k, v) in headers {
        hs = hs.insert(KafkaHeader {
            key: k,
            value: Some(v.as_bytes()),
        });
    }
    let mut r = FutureRecord::to(topic).payload(value).headers(hs);
    if let Some(k) = key {
        r = r.key(k);
    }
    p.send(r, Duration::from_secs(10))
        .await
        .unwrap_or_else(|(e, _)| panic!("produce: {e}"))
        .offset
}

/// The data of every event up to and including `last`.
async fn read_until(s: &mut Stream, last: &str) -> Vec<String> {
    let mut out = Vec::new();
    loop {
        let e = s
            .next_data(SECS_10)
            .await
            .unwrap_or_else(|| panic!("{last:?} did not arrive; got {out:?}"));
        let d = e.data.unwrap_or_default();
        let done = d == last;
        out.push(d);
        if done {
            return out;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn where_selects_on_keys_headers_and_nested_fields() {
    let node = node().await;
    node.create_topic("orders", 1).await.expect("topic");
    let p = producer(node.bootstrap_servers());
    let records: [Produced; 5] = [
        (
            "a",
            r#"{"region":"eu","total":150,"tags":["x","y"],"customer":{"id":7,"name":"Ann"}}"#,
            &[("kind", "order")],
        ),
        (
            "b",
            r#"{"region":"us","total":50,"tags":[],"customer":{"id":8,"name":"Bob"}}"#,
            &[("kind", "refund")],
        ),
        (
            "c",
            r#"{"region":"eu","total":99.5,"customer":{"id":9}}"#,
            &[],
        ),
        ("a", "plain text value", &[]),
        (
            "d",
            r#"{"region":"ap","total":300,"tags":["y"],"note":null}"#,
            &[("kind", "order")],
        ),
    ];
    for (k, v, h) in &records {
        send(&p, "orders", Some(k), v, h).await;
    }
    send(&p, "orders", Some("z"), "sentinel", &[]).await;
    let cases: [(&str, &[usize]); 13] = [
        (r#"value.region == "eu" && value.total > 100"#, &[0]),
        (r#"key == "a""#, &[0, 3]),
        (r#"headers.kind == "refund""#, &[1]),
        ("has(value.customer) && value.customer.id >= 8", &[1, 2]),
        (r#""y" in value.tags"#, &[0, 4]),
        (r#"value.customer.name.startsWith("A")"#, &[0]),
        (r#"value.tags.exists(t, t == "x")"#, &[0]),
        ("size(value.tags) == 0", &[1]),
        (r#"value == "plain text value""#, &[3]),
        ("partition == 0 && offset >= 3 && offset <= 4", &[3, 4]),
        ("value.total > 100", &[0, 4]),
        (
            r#"topic == "orders" && timestamp > 0 && offset < 5"#,
            &[0, 1, 2, 3, 4],
        ),
        (r#"value.region.matches("^(e|a)")"#, &[0, 2, 4]),
    ];
    for (filter, want) in cases {
        let filter = format!(r#"({filter}) || value == "sentinel""#);
        let mut s = open(
            node.local_addr(),
            &path("orders", &filter, "from=earliest"),
            None,
        )
        .await;
        assert_eq!(s.status, 200, "{filter}: {}", s.body);
        let got = read_until(&mut s, "sentinel").await;
        let mut expected: Vec<String> = want.iter().map(|&i| records[i].1.to_owned()).collect();
        expected.push("sentinel".into());
        assert_eq!(got, expected, "where={filter}");
    }
    // A missing field or a type mismatch is "no match", counted.
    assert!(metric(&node, "herald_filter_errors_total").await > 0.0);

    // A resume served from the recent-records buffer is filtered too.
    let filter = r#"value.region == "eu" || value == "sentinel" || value == "again""#;
    let mut s = open(
        node.local_addr(),
        &path("orders", filter, "from=earliest"),
        None,
    )
    .await;
    read_until(&mut s, "sentinel").await;
    let cursor = s.last_id.clone().expect("a cursor");
    drop(s);
    let mut live = open(node.local_addr(), &path("orders", "true", ""), None).await;
    for v in [
        r#"{"region":"us","late":1}"#,
        r#"{"region":"eu","late":2}"#,
        "again",
    ] {
        send(&p, "orders", Some("z"), v, &[]).await;
    }
    read_until(&mut live, "again").await; // fanned out live: in the buffer now
    let hits = metric(&node, "herald_replay_buffer_hits_total").await;
    let mut resumed = open(
        node.local_addr(),
        &path("orders", filter, ""),
        Some(&cursor),
    )
    .await;
    assert_eq!(
        read_until(&mut resumed, "again").await,
        vec![r#"{"region":"eu","late":2}"#.to_owned(), "again".to_owned()]
    );
    assert!(
        metric(&node, "herald_replay_buffer_hits_total").await > hits,
        "served from the buffer"
    );

    // Projections: only the named paths, nested as they were.
    let mut s = open(
        node.local_addr(),
        &path(
            "orders",
            r#"value.region == "eu" || value == "sentinel""#,
            "from=earliest&fields=customer.id,total,missing",
        ),
        None,
    )
    .await;
    let got = read_until(&mut s, "{}").await;
    assert_eq!(
        got,
        vec![
            r#"{"customer":{"id":7},"total":150}"#.to_owned(),
            r#"{"customer":{"id":9},"total":99.5}"#.to_owned(),
            "{}".to_owned(),
        ],
        "a value that is not an object projects to {{}}"
    );
    let mut s = open(
        node.local_addr(),
        &path(
            "orders",
            r#"key == "d""#,
            "from=earliest&fields=tags&format=envelope",
        ),
        None,
    )
    .await;
    let e: Value = serde_json::from_str(
        &s.next_data(SECS_10)
            .await
            .and_then(|e| e.data)
            .unwrap_or_default(),
    )
    .expect("json");
    assert_eq!(e["value"], json!({"tags": ["y"]}), "{e}");
    assert_eq!(e["key"], "d");
    assert_eq!(e["offset"], 4);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_and_hostile_expressions_are_refused_and_the_node_stays_responsive() {
    let node = node().await;
    node.create_topic("t", 1).await.expect("topic");
    let deep = format!("{}true{}", "(".repeat(200), ")".repeat(200));
    let long = format!("value.s == '{}'", "x".repeat(5000));
    let nested = "value.a.all(x, value.a.exists(y, y == x))";
    let bangs = format!("{}true", "!".repeat(500));
    for (filter, fields, expect) in [
        ("value.n >", "", "does not parse"),
        ("value.n == 'unterminated", "", "does not parse"),
        (deep.as_str(), "", "deeper"),
        (bangs.as_str(), "", "unary"),
        (long.as_str(), "", "bytes"),
        (nested, "", "inside another"),
        ("true", "a..b", "fields="),
        (
            "true",
            &(0..40)
                .map(|i| format!("f{i}"))
                .collect::<Vec<_>>()
                .join(","),
            "fields=",
        ),
    ] {
        let extra = if fields.is_empty() {
            String::new()
        } else {
            format!("fields={fields}")
        };
        // open, not request: a stream wrongly admitted fails the test instead of hanging it.
        let refused = open(node.local_addr(), &path("t", filter, &extra), None).await;
        let (status, body) = (refused.status, refused.body.clone());
        assert_eq!(status, 400, "{}: {body}", &filter[..filter.len().min(40)]);
        let v: Value = serde_json::from_str(&body).expect("a JSON error");
        let message = v["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(expect), "{expect:?} in {message}");
    }
    // A regex that would backtrack elsewhere runs in linear time here.
    let p = producer(node.bootstrap_servers());
    let mut s = open(
        node.local_addr(),
        &path("t", r#"value.s.matches("^(a+)+$") || value.s == "end""#, ""),
        None,
    )
    .await;
    let evil = json!({"s": format!("{}b", "a".repeat(50_000))}).to_string();
    send(&p, "t", None, &evil, &[]).await;
    send(&p, "t", None, r#"{"s":"aaaa"}"#, &[]).await;
    send(&p, "t", None, r#"{"s":"end"}"#, &[]).await;
    let got = read_until(&mut s, r#"{"s":"end"}"#).await;
    assert_eq!(
        got,
        vec![r#"{"s":"aaaa"}"#.to_owned(), r#"{"s":"end"}"#.to_owned()]
    );
    assert_eq!(get_json(ops_addr(&node), "/healthz").await["status"], "ok");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_refuses_more_distinct_filters_than_its_limit_and_shares_the_ones_it_has() {
    let mut c = config();
    c.max_filters = 2;
    let node = node_with(c).await;
    node.create_topic("t", 1).await.expect("topic");
    let mut a = open(node.local_addr(), &path("t", "value.n == 1", ""), None).await;
    // A filter and a projection, both new: two more than the one left.
    // (open, not request: a stream wrongly admitted must fail the test, not hang it)
    let refused = open(node.local_addr(), &path("t", "true", "fields=n"), None).await;
    assert_eq!(refused.status, 429, "both must fit");
    let b = open(
        node.local_addr(),
        &path("t", "value.n == 1", "fields=n"),
        None,
    )
    .await;
    assert_eq!((a.status, b.status), (200, 200));
    // A third distinct one: 429, JSON, naming the limit.
    let refused = open(node.local_addr(), &path("t", "value.n == 2", ""), None).await;
    let (status, body) = (refused.status, refused.body.clone());
    assert_eq!(status, 429, "{body}");
    let v: Value = serde_json::from_str(&body).expect("a JSON error");
    assert_eq!(v["error"]["code"], "too_many_filters", "{v}");
    // One in use is shared, whatever the number of streams.
    let mut again = open(node.local_addr(), &path("t", "value.n == 1", ""), None).await;
    assert_eq!(again.status, 200, "{}", again.body);
    let p = producer(node.bootstrap_servers());
    send(&p, "t", None, r#"{"n":1}"#, &[]).await;
    for s in [&mut a, &mut again] {
        assert_eq!(
            s.next_data(SECS_10).await.and_then(|e| e.data).as_deref(),
            Some(r#"{"n":1}"#)
        );
    }
    // Room again once a filter is no longer used.
    drop(b);
    // (The node notices the closed stream when it next writes to it.)
    let addr = node.local_addr();
    wait_for(
        "the closed stream's projection is released",
        SECS_10,
        || {
            let p = p.clone();
            async move {
                send(&p, "t", None, r#"{"n":3}"#, &[]).await;
                open(addr, &path("t", "value.n == 2", ""), None)
                    .await
                    .status
                    == 200
            }
        },
    )
    .await;
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filtered_cursors_resume_exactly_on_another_node() {
    let a = node().await;
    a.create_topic("cuts", 4).await.expect("topic");
    let mut c = config();
    c.brokers = Some(a.bootstrap_servers().to_owned());
    let b = node_with(c).await;
    let filter = "value.n % 3 == 0";
    const N: i64 = 600;
    let bootstrap = a.bootstrap_servers().to_owned();
    let producing = tokio::spawn(async move {
        let p = producer(&bootstrap);
        for n in 0..N {
            let key = format!("k{}", n % 17);
            send(&p, "cuts", Some(&key), &json!({"n": n}).to_string(), &[]).await;
        }
    });
    let mut seen: Vec<i64> = Vec::new();
    let mut cursor: Option<String> = None;
    let mut round = 0u64;
    // Cut after a pseudo-random number of events, resume on the other node.
    while seen.len() < (N as usize).div_ceil(3) {
        let node = if round % 2 == 0 { &a } else { &b };
        let extra = if cursor.is_none() {
            "from=earliest"
        } else {
            ""
        };
        let mut s = open(
            node.local_addr(),
            &path("cuts", filter, extra),
            cursor.as_deref(),
        )
        .await;
        assert_eq!(s.status, 200, "{}", s.body);
        let take = 1 + (round * 7919 % 23) as usize;
        let mut taken = 0;
        while taken < take && seen.len() < (N as usize).div_ceil(3) {
            let Some(e) = s.next_data(Duration::from_secs(20)).await else {
                panic!("stream ended after {} of {}", seen.len(), N / 3);
            };
            let v: Value = serde_json::from_str(&e.data.unwrap_or_default()).expect("json");
            seen.push(v["n"].as_i64().expect("n"));
            taken += 1;
        }
        cursor = s.last_id.clone();
        round += 1;
    }
    producing.await.expect("producer");
    let mut sorted = seen.clone();
    sorted.sort_unstable();
    let before = sorted.len();
    sorted.dedup();
    assert_eq!(sorted.len(), before, "no record twice");
    assert!(seen.iter().all(|n| n % 3 == 0), "only records that match");
    assert_eq!(
        sorted,
        (0..N).filter(|n| n % 3 == 0).collect::<Vec<_>>(),
        "none lost"
    );
    // Per key, the order of production.
    for k in 0..17 {
        let of_key: Vec<i64> = seen.iter().copied().filter(|n| n % 17 == k).collect();
        assert!(
            of_key.windows(2).all(|w| w[0] < w[1]),
            "key k{k} out of order: {of_key:?}"
        );
    }
    // The cursor belongs to its filter: another filter refuses it.
    let refused = open(
        b.local_addr(),
        &format!(
            "{}&lastEventId={}",
            path("cuts", "value.n % 3 == 1", ""),
            cursor.unwrap_or_default()
        ),
        None,
    )
    .await;
    let (status, body) = (refused.status, refused.body.clone());
    assert_eq!(status, 400, "{body}");
    b.shutdown().await;
    a.shutdown().await;
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn tenant_token(tenant: &str) -> String {
    let claims = json!({
        "exp": now() + 600,
        "herald": {
            "subscribe": ["orders", "news"],
            "where": {"orders": format!("value.tenant == '{tenant}'")},
        },
    });
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("token")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tokens_where_claim_keeps_tenants_apart_live_replayed_and_resumed() {
    let mut c = config();
    c.auth_hs256_secret = Some(SECRET.into());
    // A small recent buffer: from=earliest goes through the catch-up readers.
    c.replay_buffer_records = 4;
    let node = node_with(c).await;
    node.create_topic("orders", 2).await.expect("topic");
    node.create_topic("news", 1).await.expect("topic");
    let p = producer(node.bootstrap_servers());
    let (ta, tb) = (tenant_token("a"), tenant_token("b"));
    let open_as = |token: String, q: String, cursor: Option<String>| {
        let addr = node.local_addr();
        async move {
            open(
                addr,
                &format!("{q}&access_token={token}"),
                cursor.as_deref(),
            )
            .await
        }
    };
    for i in 0..40 {
        let tenant = if i % 3 == 0 { "a" } else { "b" };
        send(
            &p,
            "orders",
            Some(&format!("k{i}")),
            &json!({"tenant": tenant, "i": i}).to_string(),
            &[],
        )
        .await;
    }
    // Live streams, one of them trying to widen the filter.
    let mut live_a = open_as(ta.clone(), "/v1/events?topic=orders".into(), None).await;
    let widen = form_urlencoded::byte_serialize(b"true || value.tenant == 'b'").collect::<String>();
    let mut wide_a = open_as(
        ta.clone(),
        format!("/v1/events?topic=orders&where={widen}"),
        None,
    )
    .await;
    let mut live_b = open_as(
        tb.clone(),
        "/v1/events?topic=orders&topic=news".into(),
        None,
    )
    .await;
    // Replays from the start, through Kafka.
    let mut replay_a = open_as(
        ta.clone(),
        "/v1/events?topic=orders&from=earliest".into(),
        None,
    )
    .await;
    for s in [&live_a, &wide_a, &live_b, &replay_a] {
        assert_eq!(s.status, 200, "{}", s.body);
    }
    for i in 40..60 {
        let tenant = if i % 3 == 0 { "a" } else { "b" };
        send(
            &p,
            "orders",
            Some(&format!("k{i}")),
            &json!({"tenant": tenant, "i": i}).to_string(),
            &[],
        )
        .await;
    }
    // Sentinels each tenant passes, one per partition.
    for part in 0..2 {
        for t in ["a", "b"] {
            p.send(
                FutureRecord::<(), _>::to("orders")
                    .partition(part)
                    .payload(&json!({"tenant": t, "sentinel": part}).to_string()),
                Duration::from_secs(10),
            )
            .await
            .unwrap_or_else(|(e, _)| panic!("{e}"));
        }
    }
    // The claim is for `orders` only: news is not filtered.
    send(&p, "news", None, "headline", &[]).await;
    async fn drain(s: &mut Stream, want_news: bool) -> Vec<Value> {
        let (mut sentinels, mut news, mut out) = (0, !want_news, Vec::new());
        while sentinels < 2 || !news {
            let d = s
                .next_data(SECS_10)
                .await
                .and_then(|e| e.data)
                .expect("events arrive");
            if d == "headline" {
                news = true;
                continue;
            }
            let v: Value = serde_json::from_str(&d).expect("json");
            if v.get("sentinel").is_some() {
                sentinels += 1;
            } else {
                out.push(v);
            }
        }
        out
    }
    let got_live_a = drain(&mut live_a, false).await;
    let got_wide_a = drain(&mut wide_a, false).await;
    let got_live_b = drain(&mut live_b, true).await;
    let got_replay_a = drain(&mut replay_a, false).await;
    let only = |vs: &[Value], t: &str| vs.iter().all(|v| v["tenant"] == t);
    assert!(
        only(&got_live_a, "a") && only(&got_wide_a, "a") && only(&got_replay_a, "a"),
        "tenant a saw b's rows"
    );
    assert!(only(&got_live_b, "b"), "tenant b saw a's rows");
    let count = |vs: &[Value]| vs.len();
    assert_eq!(count(&got_live_a), (40..60).filter(|i| i % 3 == 0).count());
    assert_eq!(
        count(&got_wide_a),
        count(&got_live_a),
        "|| true does not widen the claim"
    );
    assert_eq!(
        count(&got_replay_a),
        (0..60).filter(|i| i % 3 == 0).count(),
        "replay through Kafka is filtered"
    );
    assert_eq!(count(&got_live_b), (40..60).filter(|i| i % 3 != 0).count());

    // A's cursor with B's token: another subscription (the claim is in the fingerprint).
    let cursor_a = replay_a.last_id.clone().expect("cursor");
    let refused = open(
        node.local_addr(),
        &format!("/v1/events?topic=orders&access_token={tb}&lastEventId={cursor_a}"),
        None,
    )
    .await;
    let (status, body) = (refused.status, refused.body.clone());
    assert_eq!(
        status, 400,
        "a cursor from another tenant's stream is refused: {body}"
    );
    // B resuming its own stream from its first position replays only b's rows.
    let mut first_b = open_as(
        tb.clone(),
        "/v1/events?topic=orders&from=earliest".into(),
        None,
    )
    .await;
    let opening = loop {
        let e = first_b
            .next_event(SECS_10)
            .await
            .expect("the start position");
        if let Some(id) = e.id {
            break id;
        }
    };
    drop(first_b);
    let mut resumed_b = open_as(tb.clone(), "/v1/events?topic=orders".into(), Some(opening)).await;
    let got = drain(&mut resumed_b, false).await;
    assert!(only(&got, "b"), "a resumed stream keeps the claim");
    assert_eq!(got.len(), (0..60).filter(|i| i % 3 != 0).count());
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filtered_keyed_subscription_on_tansu() {
    let tansu = Tansu::start().await;
    tansu.create_topic("sensors", 3).await;
    let node = node_on(&tansu.bootstrap).await;
    let mut s = open(
        node.local_addr(),
        &path("sensors/s1", "value.celsius > 20.0", ""),
        None,
    )
    .await;
    assert_eq!(s.status, 200, "{}", s.body);
    let p = producer(&tansu.bootstrap);
    for (key, c) in [
        ("s1", 19.5),
        ("s2", 30.0),
        ("s1", 21.0),
        ("s1", 25.5),
        ("s2", 22.0),
        ("s1", 20.0),
    ] {
        send(
            &p,
            "sensors",
            Some(key),
            &json!({"celsius": c}).to_string(),
            &[],
        )
        .await;
    }
    send(
        &p,
        "sensors",
        Some("s1"),
        &json!({"celsius": 99.0}).to_string(),
        &[],
    )
    .await;
    let got = read_until(&mut s, r#"{"celsius":99.0}"#).await;
    assert_eq!(
        got,
        vec![
            r#"{"celsius":21.0}"#,
            r#"{"celsius":25.5}"#,
            r#"{"celsius":99.0}"#
        ]
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_built_in_page_filters_and_projects_in_chromium() {
    let node = node().await;
    node.create_topic("shop", 1).await.expect("topic");
    let p = producer(node.bootstrap_servers());
    for (i, region) in ["eu", "us", "eu", "ap"].iter().enumerate() {
        let v = json!({"region": region, "total": 10 * i, "secret": "s"}).to_string();
        send(&p, "shop", None, &v, &[]).await;
    }
    send(
        &p,
        "shop",
        None,
        &json!({"region": "eu", "total": 999, "secret": "s"}).to_string(),
        &[],
    )
    .await;
    let filter = r#"value.region == "eu""#;
    let url = format!(
        "http://{}/?topic=shop&from=earliest&where={}&fields=total",
        node.local_addr(),
        form_urlencoded::byte_serialize(filter.as_bytes()).collect::<String>()
    );
    let stdout = browser_script("filtered.mjs", &[&url, "999"]).await;
    let got: Value = serde_json::from_str(stdout.trim()).expect("json");
    assert_eq!(got["where"], filter, "the box shows the filter");
    assert_eq!(got["fields"], "total");
    let rows: Vec<Value> = got["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| serde_json::from_str(r.as_str().unwrap_or_default()).expect("a JSON row"))
        .collect();
    assert_eq!(
        rows,
        vec![
            json!({"total": 0}),
            json!({"total": 20}),
            json!({"total": 999})
        ]
    );
    node.shutdown().await;
}
