//! Record formats end to end: records written by confluent-kafka's own
//! Avro, Protobuf and JSON Schema serializers (PyPI, registering their
//! schemas over REST with a small Confluent-compatible registry in
//! `tests/registry/`) arrive as JSON through herald's stream, on the
//! embedded Kafka and on Tansu. Then the failures: a registry that goes
//! away, ids it does not know, bytes that do not decode, garbage answers.

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use support::*;
use tokio::io::{AsyncBufReadExt, BufReader};

fn tools() -> PathBuf {
    std::env::var_os("HERALD_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".tools"))
}

fn python() -> PathBuf {
    let p = tools().join("venv/bin/python");
    assert!(
        p.exists(),
        "{} is missing: run `make test` (or `bash scripts/install-deps.sh test`)",
        p.display()
    );
    p
}

fn script(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/registry")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

/// The test schema registry (`tests/registry/registry.py`), with its state
/// in a file so that it can be stopped and started again.
struct SchemaRegistry {
    child: tokio::process::Child,
    port: u16,
    dir: TempDir,
    extra: Vec<String>,
}

impl SchemaRegistry {
    async fn start(extra: &[&str]) -> SchemaRegistry {
        let dir = TempDir::new("herald-registry");
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let (child, port) = Self::spawn(&dir, 0, &extra).await;
        SchemaRegistry {
            child,
            port,
            dir,
            extra,
        }
    }

    async fn spawn(dir: &TempDir, port: u16, extra: &[String]) -> (tokio::process::Child, u16) {
        let state = dir.0.join("state.json");
        let mut child = tokio::process::Command::new(python())
            .arg(script("registry.py"))
            .args(["--port", &port.to_string()])
            .arg("--state")
            .arg(&state)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("registry starts");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("registry says where it listens")
            .expect("read")
            .unwrap_or_default();
        let port = line
            .rsplit(':')
            .next()
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("registry printed {line:?}"));
        (child, port)
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    async fn stop(&mut self) {
        let _ = self.child.kill().await;
    }

    async fn start_again(&mut self) {
        let (child, _) = Self::spawn(&self.dir, self.port, &self.extra).await;
        self.child = child;
    }

    async fn control(&self, what: &str) {
        let (status, body) = request(self.addr(), "POST", &format!("/__control/{what}"), b"").await;
        assert!(status < 300, "control {what}: {status} {body}");
    }

    /// How often the registry was asked for `path` (e.g. `GET /schemas/ids/7`).
    async fn requests(&self, path: &str) -> u64 {
        let counts = get_json(self.addr(), "/__control/requests").await;
        counts[path].as_u64().unwrap_or(0)
    }

    /// Registers a JSON Schema under `subject`; returns its id.
    async fn register_json_schema(&self, subject: &str, schema: &Value) -> u32 {
        let body = json!({"schema": schema.to_string(), "schemaType": "JSON"}).to_string();
        let resp = http(
            self.addr(),
            "POST",
            &format!("/subjects/{subject}/versions"),
            &[("content-type", "application/vnd.schemaregistry.v1+json")],
            bytes::Bytes::from(body),
        )
        .await;
        let status = resp.status().as_u16();
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .expect("body")
            .to_bytes();
        assert_eq!(status, 200, "register: {}", String::from_utf8_lossy(&body));
        let v: Value = serde_json::from_slice(&body).expect("json");
        v["id"]
            .as_u64()
            .and_then(|i| u32::try_from(i).ok())
            .expect("id")
    }
}

/// One record `produce.py` wrote, with what herald must make of it.
#[derive(Debug, Clone)]
struct Produced {
    offset: i64,
    schema_id: Option<u64>,
    key: Value,
    expected: Value,
}

/// Runs `produce.py` (confluent-kafka's serializers) and returns its records.
async fn produce_py(
    bootstrap: &str,
    registry: &str,
    topic: &str,
    kind: &str,
    extra: &[&str],
) -> Vec<Produced> {
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(python())
            .arg(script("produce.py"))
            .args(["--bootstrap", bootstrap, "--registry", registry])
            .args(["--topic", topic, "--kind", kind])
            .args(extra)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("produce.py finishes within two minutes")
    .expect("produce.py starts");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "produce.py {kind} failed\nstdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}"));
            Produced {
                offset: v["offset"].as_i64().expect("offset"),
                schema_id: v["schema_id"].as_u64(),
                key: v["key"].clone(),
                expected: v["expected"].clone(),
            }
        })
        .collect()
}

fn registry_config(url: &str) -> Config {
    let mut c = config();
    c.schema_registry = Some(url.to_owned());
    c
}

/// Reads `n` data events and returns them as (event type, JSON data).
async fn read_json(s: &mut Stream, n: usize) -> Vec<(Option<String>, Value)> {
    s.take(n, Duration::from_secs(20))
        .await
        .into_iter()
        .map(|e| {
            let data = e.data.unwrap_or_default();
            let v = serde_json::from_str(&data)
                .unwrap_or_else(|err| panic!("not JSON: {data:?}: {err}"));
            (e.event, v)
        })
        .collect()
}

/// Every produced record arrives as its expected JSON, in order per partition.
async fn assert_arrive_as_json(node: &Node, topic: &str, produced: &[Produced]) {
    let mut plain = open(
        node.local_addr(),
        &events_path(&[topic], "from=earliest"),
        None,
    )
    .await;
    assert_eq!(plain.status, 200, "{}", plain.body);
    let got = read_json(&mut plain, produced.len()).await;
    // One partition per topic here, so the order is the produce order.
    for (p, (event, value)) in produced.iter().zip(&got) {
        assert_eq!(
            event, &None,
            "{topic} offset {}: an ordinary event",
            p.offset
        );
        assert_eq!(value, &p.expected, "{topic} offset {}", p.offset);
    }
    let mut envelope = open(
        node.local_addr(),
        &events_path(&[topic], "from=earliest&format=envelope"),
        None,
    )
    .await;
    let got = read_json(&mut envelope, produced.len()).await;
    for (p, (_, e)) in produced.iter().zip(&got) {
        assert_eq!(e["offset"], p.offset);
        assert_eq!(
            e["value"], p.expected,
            "{topic} envelope value at {}",
            p.offset
        );
        assert_eq!(
            e["schema"]["id"].as_u64(),
            p.schema_id,
            "{topic}: the envelope names the schema: {e}"
        );
        // Identical schemas share an id, and the registry names one subject for it.
        assert!(
            e["schema"]["subject"]
                .as_str()
                .is_some_and(|s| s.ends_with("-value")),
            "{e}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confluent_serializer_records_arrive_as_json_on_the_embedded_kafka() {
    let registry = SchemaRegistry::start(&[]).await;
    let node = node_with(registry_config(&registry.url())).await;
    let bootstrap = node.bootstrap_servers().to_owned();
    let cases: [(&str, &str, &[&str], &str); 5] = [
        ("avro-all", "avro-all", &["--count", "5"], "avro"),
        ("avro-evolution", "avro-v1v2", &["--count", "6"], "avro"),
        ("proto-order", "protobuf-all", &["--count", "4"], "protobuf"),
        (
            "proto-inner",
            "protobuf-all",
            &["--count", "2", "--message", "Outer.Inner"],
            "protobuf",
        ),
        (
            "json-schema",
            "jsonschema",
            &["--count", "4"],
            "json-schema",
        ),
    ];
    for (topic, kind, extra, schema_type) in cases {
        node.create_topic(topic, 1).await.expect("topic");
        let produced = produce_py(&bootstrap, &registry.url(), topic, kind, extra).await;
        assert!(!produced.is_empty(), "{kind} produced records");
        assert_arrive_as_json(&node, topic, &produced).await;
        let mut s = open(
            node.local_addr(),
            &events_path(&[topic], "from=earliest&format=envelope"),
            None,
        )
        .await;
        let first = read_json(&mut s, 1).await;
        assert_eq!(first[0].1["schema"]["type"], schema_type, "{topic}");
    }
    // v1 then v2 under one subject: two ids, each record decoded with its own.
    let ids: std::collections::BTreeSet<u64> = produce_py(
        &bootstrap,
        &registry.url(),
        "avro-evolution",
        "avro-v1v2",
        &["--count", "2"],
    )
    .await
    .iter()
    .filter_map(|p| p.schema_id)
    .collect();
    assert_eq!(
        ids.len(),
        2,
        "the evolution topic has two writer schemas: {ids:?}"
    );
    // Unframed JSON on an `auto` topic passes through untouched.
    node.create_topic("plain-json", 1).await.expect("topic");
    let produced = produce_py(
        &bootstrap,
        &registry.url(),
        "plain-json",
        "plain-json",
        &["--count", "3"],
    )
    .await;
    let mut s = open(
        node.local_addr(),
        &events_path(&["plain-json"], "from=earliest&format=envelope"),
        None,
    )
    .await;
    for (p, (_, e)) in produced.iter().zip(read_json(&mut s, 3).await) {
        assert_eq!(e.get("schema"), None, "no schema on a raw record: {e}");
        let text = e["value"].as_str().expect("raw values stay text");
        assert_eq!(
            serde_json::from_str::<Value>(text).ok(),
            Some(p.expected.clone())
        );
    }
    // Each schema id was fetched once, however many records and streams used it.
    for id in [1, 2, 3] {
        assert_eq!(
            registry.requests(&format!("GET /schemas/ids/{id}")).await,
            1,
            "schema {id} fetched once"
        );
    }
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confluent_serializer_records_arrive_as_json_on_tansu() {
    let tansu = Tansu::start().await;
    let registry = SchemaRegistry::start(&[]).await;
    for topic in ["avro-all", "proto-order"] {
        tansu.create_topic(topic, 1).await;
    }
    let mut c = registry_config(&registry.url());
    c.brokers = Some(tansu.bootstrap.clone());
    let node = node_with(c).await;
    let avro = produce_py(
        &tansu.bootstrap,
        &registry.url(),
        "avro-all",
        "avro-all",
        &["--count", "5"],
    )
    .await;
    assert_arrive_as_json(&node, "avro-all", &avro).await;
    let proto = produce_py(
        &tansu.bootstrap,
        &registry.url(),
        "proto-order",
        "protobuf-all",
        &["--count", "4"],
    )
    .await;
    assert_arrive_as_json(&node, "proto-order", &proto).await;
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_resumes_across_a_schema_change_on_another_node() {
    let registry = SchemaRegistry::start(&[]).await;
    let a = node_with(registry_config(&registry.url())).await;
    a.create_topic("users", 1).await.expect("topic");
    let produced = produce_py(
        a.bootstrap_servers(),
        &registry.url(),
        "users",
        "avro-v1v2",
        &["--count", "6"],
    )
    .await;
    let mut first = open(
        a.local_addr(),
        &events_path(&["users"], "from=earliest"),
        None,
    )
    .await;
    let got = read_json(&mut first, 2).await;
    assert_eq!(got[0].1, produced[0].expected);
    assert_eq!(got[1].1, produced[1].expected);
    let cursor = first.last_id.clone().expect("a cursor");
    drop(first);
    let mut c = registry_config(&registry.url());
    c.brokers = Some(a.bootstrap_servers().to_owned());
    let b = node_with(c).await;
    let mut resumed = open(b.local_addr(), &events_path(&["users"], ""), Some(&cursor)).await;
    let rest = read_json(&mut resumed, 4).await;
    let want: Vec<&Value> = produced[2..].iter().map(|p| &p.expected).collect();
    let have: Vec<&Value> = rest.iter().map(|(_, v)| v).collect();
    assert_eq!(have, want, "v1 then v2 records, none lost or repeated");
    assert_ne!(
        produced[2].schema_id, produced[5].schema_id,
        "the resume crossed a schema change"
    );
    b.shutdown().await;
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decoded_keys_are_selected_by_their_canonical_text() {
    let registry = SchemaRegistry::start(&[]).await;
    let mut c = registry_config(&registry.url());
    c.key_format = vec!["orders=avro".into()];
    let node = node_with(c).await;
    node.create_topic("orders", 4).await.expect("topic");
    let bootstrap = node.bootstrap_servers().to_owned();
    // Everything on partition 0: a plan that looked for the key where
    // Kafka's partitioner would put its text would miss it.
    let args = ["--count", "4", "--key-format", "avro", "--partition", "0"];
    let first = produce_py(&bootstrap, &registry.url(), "orders", "avro-all", &args).await;
    // A key whose text Kafka's partitioner would put elsewhere (serde_json
    // writes members sorted, as herald's canonical key text does).
    let i = (0..first.len())
        .find(|&i| {
            herald::partitioner::partition_for_key(first[i].key.to_string().as_bytes(), 4) != 0
        })
        .expect("a key whose text hashes to another partition");
    let key = first[i].key.to_string();
    let mut s = open(
        node.local_addr(),
        &events_path(&[&format!("orders/{key}")], "from=earliest&format=envelope"),
        None,
    )
    .await;
    assert_eq!(s.status, 200, "{}", s.body);
    // The same four keys again: the last record is the key's own sentinel.
    let again = produce_py(&bootstrap, &registry.url(), "orders", "avro-all", &args).await;
    let got = read_json(&mut s, 2).await;
    assert_eq!(
        got[0].1["offset"], first[i].offset,
        "only the key's records: {:?}",
        got[0].1
    );
    assert_eq!(
        got[1].1["offset"], again[i].offset,
        "only the key's records: {:?}",
        got[1].1
    );
    assert_eq!(got[0].1["key"], first[i].key, "the key arrives decoded");
    assert_eq!(got[0].1["value"], first[i].expected);
    assert!(got[0].1["key_schema"]["id"].is_u64(), "{}", got[0].1);
    // Filters and projections see the decoded value.
    let green = first
        .iter()
        .chain(&again)
        .filter(|p| p.expected["enum_field"] == "GREEN")
        .count();
    assert!(
        green > 0 && green < first.len() + again.len(),
        "the fixtures vary the enum"
    );
    let q = format!(
        "from=earliest&fields=enum_field&where={}",
        form_urlencoded::byte_serialize(br#"value.enum_field == "GREEN""#).collect::<String>()
    );
    let mut s = open(node.local_addr(), &events_path(&["orders"], &q), None).await;
    for (_, v) in read_json(&mut s, green).await {
        assert_eq!(v, json!({"enum_field": "GREEN"}));
    }
    node.shutdown().await;
}

/// A value in Confluent's framing: magic 0, the id, then `body`.
fn framed(id: u32, body: &[u8]) -> Vec<u8> {
    let mut v = vec![0];
    v.extend(id.to_be_bytes());
    v.extend_from_slice(body);
    v
}

async fn produce_to(
    p: &rdkafka::producer::FutureProducer,
    topic: &str,
    partition: i32,
    value: &[u8],
) -> i64 {
    let d = p
        .send(
            rdkafka::producer::FutureRecord::<(), _>::to(topic)
                .partition(partition)
                .payload(value),
            Duration::from_secs(10),
        )
        .await
        .unwrap_or_else(|(e, _)| panic!("produce: {e}"));
    d.offset
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_outage_holds_only_the_partition_that_needs_a_new_schema() {
    let mut registry = SchemaRegistry::start(&[]).await;
    let known = registry
        .register_json_schema("known-value", &json!({"type": "object"}))
        .await;
    let new = registry
        .register_json_schema("new-value", &json!({"type": "object", "title": "new"}))
        .await;
    let node = node_with(registry_config(&registry.url())).await;
    node.create_topic("outage", 2).await.expect("topic");
    let p = producer(node.bootstrap_servers());
    let mut s = open(node.local_addr(), &events_path(&["outage"], ""), None).await;
    produce_to(&p, "outage", 0, &framed(known, br#"{"n":1}"#)).await;
    assert_eq!(read_json(&mut s, 1).await[0].1, json!({"n": 1}));

    registry.stop().await;
    let held_at = produce_to(&p, "outage", 1, &framed(new, br#"{"n":2}"#)).await;
    produce_to(&p, "outage", 1, &framed(known, br#"{"n":4}"#)).await;
    // More than a held partition keeps in memory (4 MiB): its consumer
    // pauses it, and resumes it, in order, when the schema comes.
    let big = "x".repeat(100_000);
    for i in 0..48 {
        let value = json!({"n": 100 + i, "pad": big}).to_string();
        produce_to(&p, "outage", 1, &framed(known, value.as_bytes())).await;
    }
    // Partition 0 goes on: its schema is cached.
    produce_to(&p, "outage", 0, &framed(known, br#"{"n":3}"#)).await;
    assert_eq!(
        read_json(&mut s, 1).await[0].1,
        json!({"n": 3}),
        "partition 0 is not held up"
    );
    let ops = ops_addr(&node);
    wait_for(
        "the held partition shows in /v1/stats",
        Duration::from_secs(10),
        || async move {
            let st = get_json(ops, "/v1/stats").await;
            st["held_partitions"].as_array().is_some_and(|h| {
                h.iter()
                    .any(|h| h["partition"] == 1 && h["offset"] == held_at && h["schema_id"] == new)
            })
        },
    )
    .await;
    let ready = get_json(ops, "/readyz").await;
    assert_eq!(ready["held_partitions"][0]["partition"], 1, "{ready}");
    assert!(metric(&node, "herald_held_partitions").await >= 1.0);

    registry.start_again().await;
    let got = read_json(&mut s, 50).await;
    let ns: Vec<i64> = got.iter().filter_map(|(_, v)| v["n"].as_i64()).collect();
    let mut want = vec![2, 4];
    want.extend(100..148);
    assert_eq!(
        ns, want,
        "the held records arrive, in order, once the registry is back"
    );
    wait_for(
        "the hold is released",
        Duration::from_secs(10),
        || async move { get_json(ops, "/v1/stats").await["held_partitions"] == json!([]) },
    )
    .await;
    // Nothing repeated after the release: a sentinel per partition is next.
    let sentinels = produce_sentinels(&p, "outage", 2, "after").await;
    expect_only(&mut s, &sentinels, "a record delivered twice").await;
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_becomes_undecodable_and_the_stream_goes_on() {
    let registry = SchemaRegistry::start(&[]).await;
    let json_id = registry
        .register_json_schema("strict-value", &json!({"type": "object"}))
        .await;
    let garbage_id = registry
        .register_json_schema("garbage-value", &json!({"title": "garbage"}))
        .await;
    let bad_schema_id = registry
        .register_json_schema("bad-value", &json!({"title": "bad"}))
        .await;
    registry.control(&format!("garbage/{garbage_id}")).await;
    registry
        .control(&format!("bad-schema/{bad_schema_id}"))
        .await;
    let mut c = registry_config(&registry.url());
    c.value_format = vec!["strict=json-schema".into(), "avro-only=avro".into()];
    let node = node_with(c).await;
    node.create_topic("strict", 1).await.expect("topic");
    node.create_topic("avro-only", 1).await.expect("topic");
    node.create_topic("loose", 1).await.expect("topic");
    let p = producer(node.bootstrap_servers());
    let mut s = open(
        node.local_addr(),
        &events_path(&["strict", "avro-only", "loose"], ""),
        None,
    )
    .await;

    let cases: Vec<(&str, Vec<u8>, Option<u32>, &str)> = vec![
        (
            "strict",
            framed(json_id, b"{\"a\":"),
            Some(json_id),
            "does not decode",
        ),
        (
            "strict",
            b"{\"plain\":true}".to_vec(),
            None,
            "Confluent framing",
        ),
        (
            "strict",
            framed(999_999, b"{}"),
            Some(999_999),
            "not in the registry",
        ),
        (
            "strict",
            framed(garbage_id, b"{}"),
            Some(garbage_id),
            "garbage",
        ),
        (
            "strict",
            framed(bad_schema_id, b"{}"),
            Some(bad_schema_id),
            "",
        ),
        (
            "avro-only",
            framed(json_id, b"{}"),
            Some(json_id),
            "the topic's format is avro",
        ),
        ("strict", vec![0, 0, 0], None, "Confluent framing"),
    ];
    for (topic, value, _, _) in &cases {
        produce_to(&p, topic, 0, value).await;
    }
    // On an `auto` topic an unknown id is not Confluent framing: raw bytes.
    produce_to(&p, "loose", 0, &framed(999_999, b"x")).await;
    produce_to(&p, "strict", 0, br#"{"ok":1}"#).await;
    produce_to(&p, "strict", 0, &framed(json_id, br#"{"ok":2}"#)).await;

    let mut undecodable = Vec::new();
    let mut loose = None;
    let mut good = None;
    while good.is_none() {
        let e = s
            .next_data(Duration::from_secs(20))
            .await
            .expect("events go on");
        let data = e.data.unwrap_or_default();
        match e.event.as_deref() {
            Some("herald.undecodable") => {
                undecodable.push(serde_json::from_str::<Value>(&data).expect("json"))
            }
            _ if data.as_bytes() == framed(999_999, b"x") => loose = Some(data),
            _ if data == r#"{"ok":2}"# => good = Some(data),
            _ => panic!("unexpected event {data:?}"),
        }
    }
    assert_eq!(undecodable.len(), cases.len() + 1, "{undecodable:#?}");
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    // In order within each topic (topics interleave as they like).
    let mut expected: Vec<_> = cases.iter().filter(|c| c.0 == "strict").collect();
    let mut by_topic: Vec<&Value> = undecodable
        .iter()
        .filter(|u| u["topic"] == "strict")
        .take(expected.len())
        .collect();
    by_topic.extend(undecodable.iter().filter(|u| u["topic"] == "avro-only"));
    expected.extend(cases.iter().filter(|c| c.0 == "avro-only"));
    for (u, (topic, value, id, reason)) in by_topic.iter().zip(expected) {
        assert_eq!(u["topic"], *topic, "{u}");
        assert_eq!(u["schema_id"].as_u64(), id.map(u64::from), "{u}");
        assert!(
            u["reason"].as_str().is_some_and(|r| r.contains(reason)),
            "{reason:?} in {u}"
        );
        assert_eq!(
            u["value"],
            b64.encode(value),
            "the raw value rides along: {u}"
        );
        assert!(u["offset"].is_i64() && u["partition"] == 0, "{u}");
    }
    let last_strict = undecodable
        .iter()
        .rfind(|u| u["topic"] == "strict")
        .expect("strict");
    assert_eq!(
        last_strict["value"],
        b64.encode(br#"{"ok":1}"#),
        "unframed JSON on a strict topic"
    );
    assert!(
        loose.is_some(),
        "an unknown id on an `auto` topic passes through as it is"
    );
    assert!(metric(&node, "herald_undecodable_records_total").await >= cases.len() as f64);
    // A flood of one unknown id costs one registry request, not one per record.
    for _ in 0..20 {
        produce_to(&p, "strict", 0, &framed(999_999, b"{}")).await;
    }
    let sentinel = framed(json_id, br#"{"sentinel":true}"#);
    produce_to(&p, "strict", 0, &sentinel).await;
    loop {
        let e = s
            .next_data(Duration::from_secs(20))
            .await
            .expect("the sentinel arrives");
        if e.data.as_deref() == Some(r#"{"sentinel":true}"#) {
            break;
        }
    }
    assert_eq!(
        registry.requests("GET /schemas/ids/999999").await,
        1,
        "one fetch for many records"
    );
    // The node is still up and serving.
    assert_eq!(get_json(ops_addr(&node), "/readyz").await["ready"], true);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_is_asked_with_the_configured_credentials() {
    let registry = SchemaRegistry::start(&["--basic-auth", "herald:s3cret"]).await;
    // Registered by the producer with the same credentials.
    let mut c = registry_config(&registry.url());
    c.schema_registry_basic_auth = Some("herald:s3cret".into());
    let node = node_with(c).await;
    node.create_topic("private", 1).await.expect("topic");
    let produced = produce_py(
        node.bootstrap_servers(),
        &registry.url(),
        "private",
        "avro-all",
        &["--count", "2", "--registry-auth", "herald:s3cret"],
    )
    .await;
    let mut s = open(
        node.local_addr(),
        &events_path(&["private"], "from=earliest"),
        None,
    )
    .await;
    let got = read_json(&mut s, 2).await;
    assert_eq!(got[0].1, produced[0].expected);
    assert_eq!(got[1].1, produced[1].expected);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_built_in_page_shows_decoded_records_with_their_schema_in_chromium() {
    let registry = SchemaRegistry::start(&[]).await;
    let mut c = registry_config(&registry.url());
    c.value_format = vec!["page=avro".into()];
    let node = node_with(c).await;
    node.create_topic("page", 1).await.expect("topic");
    let produced = produce_py(
        node.bootstrap_servers(),
        &registry.url(),
        "page",
        "avro-all",
        &["--count", "2"],
    )
    .await;
    let p = producer(node.bootstrap_servers());
    produce_to(&p, "page", 0, &framed(424_242, b"\x02")).await;
    let base = format!("http://{}", node.local_addr());
    let id = produced[1].schema_id.expect("an id").to_string();
    let expected = produced[1].expected.to_string();
    browser_script(
        "decoded.mjs",
        &[&base, "page", &expected, &id, "page-value"],
    )
    .await;
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_registry_is_trusted_through_the_ca_file_and_asked_with_a_bearer_token() {
    let dir = TempDir::new("herald-registry-tls");
    let (cert, key) = (dir.0.join("cert.pem"), dir.0.join("key.pem"));
    let made = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args([
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl runs");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let (cert_s, key_s) = (
        cert.to_string_lossy().into_owned(),
        key.to_string_lossy().into_owned(),
    );
    let registry = SchemaRegistry::start(&[
        "--bearer",
        "s3cret-token",
        "--tls-cert",
        &cert_s,
        "--tls-key",
        &key_s,
    ])
    .await;
    let url = format!("https://127.0.0.1:{}", registry.port);
    // Register over HTTPS with curl (the tests' own client speaks plain HTTP).
    let body = json!({"schema": "{\"type\":\"object\"}", "schemaType": "JSON"}).to_string();
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "--cacert",
            &cert_s,
            "-H",
            "Authorization: Bearer s3cret-token",
        ])
        .args([
            "-H",
            "Content-Type: application/vnd.schemaregistry.v1+json",
            "-d",
            &body,
        ])
        .arg(format!("{url}/subjects/tls-value/versions"))
        .output()
        .expect("curl runs");
    let id: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stdout)));
    let id = id["id"]
        .as_u64()
        .and_then(|i| u32::try_from(i).ok())
        .expect("an id");

    // Without the CA the registry cannot be reached: the record waits, and says why.
    let untrusting = node_with(registry_config(&url)).await;
    untrusting.create_topic("tls", 1).await.expect("topic");
    let p = producer(untrusting.bootstrap_servers());
    let mut s = open(untrusting.local_addr(), &events_path(&["tls"], ""), None).await;
    produce_to(&p, "tls", 0, &framed(id, br#"{"over":"https"}"#)).await;
    let ops = ops_addr(&untrusting);
    wait_for(
        "the record waits for a registry it cannot trust",
        Duration::from_secs(10),
        || async move {
            let st = get_json(ops, "/v1/stats").await;
            st["held_partitions"][0]["reason"]
                .as_str()
                .is_some_and(|r| r.contains("unreachable"))
        },
    )
    .await;
    drop(s);
    untrusting.shutdown().await;

    let mut c = registry_config(&url);
    c.schema_registry_ca = Some(cert.clone());
    c.schema_registry_token = Some("s3cret-token".into());
    let node = node_with(c).await;
    node.create_topic("tls", 1).await.expect("topic");
    let p = producer(node.bootstrap_servers());
    s = open(
        node.local_addr(),
        &events_path(&["tls"], "format=envelope"),
        None,
    )
    .await;
    produce_to(&p, "tls", 0, &framed(id, br#"{"over":"https"}"#)).await;
    let got = read_json(&mut s, 1).await;
    assert_eq!(got[0].1["value"], json!({"over": "https"}));
    assert_eq!(got[0].1["schema"]["id"], id);
    node.shutdown().await;
}
