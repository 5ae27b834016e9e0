//! Monitoring against real parts: `/metrics` passes `promtool check metrics`,
//! a real Prometheus (Debian's) scrapes a node, and the Grafana dashboard and
//! example scrape config in `monitoring/` name only metrics a node exports
//! and only PromQL that Prometheus accepts.
//!
//! `make test` installs Prometheus and promtool (`scripts/install-deps.sh test`).

mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use support::*;
use tokio::io::AsyncWriteExt;

/// The metric families a node exports (the table in docs/deploying.md, "Monitoring").
const FAMILIES: &[&str] = &[
    "herald_connections",
    "herald_subscriptions",
    "herald_assigned_partitions",
    "herald_records_consumed_total",
    "herald_events_delivered_total",
    "herald_bytes_delivered_total",
    "herald_slow_disconnects_total",
    "herald_delivery_latency_seconds",
    "herald_own_latency_seconds",
    "herald_partition_lag_records",
    "herald_replay_buffer_hits_total",
    "herald_catchup_kafka_reads_total",
    "herald_catchup_readers",
    "herald_gaps_total",
    "herald_published_total",
    "herald_publish_failures_total",
    "herald_kafka_errors_total",
    "herald_http_rejections_total",
];

fn repo_file(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// A Debian `prometheus` package binary (`prometheus` or `promtool`).
fn prometheus_tool(name: &str) -> PathBuf {
    let on_path: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join(name)).collect())
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain([Path::new("/usr/bin").join(name)])
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{name} is not installed: run `make test` (or `bash scripts/install-deps.sh test`), \
                 which installs Debian's prometheus package"
            )
        })
}

/// A node with traffic on it: two live streams on a 4-partition topic
/// (subscriptions, assignment, lag, deliveries, latency), a resume from the
/// replay buffer, an HTTP publish and a rejected request.
async fn busy_node() -> (Node, Vec<Stream>) {
    let node = node().await;
    node.create_topic("t", 4).await.expect("topic");
    let addr = node.local_addr();
    let mut whole = open(addr, &events_path(&["t"], ""), None).await;
    let keyed = open(addr, &events_path(&["t/k1"], ""), None).await;
    assert_eq!(whole.status, 200, "{}", whole.body);
    assert_eq!(keyed.status, 200, "{}", keyed.body);
    wait_for("both streams are counted", SECS_10, || async {
        metric(&node, "herald_connections").await == 2.0
    })
    .await;
    let p = producer(node.bootstrap_servers());
    for i in 0..8 {
        produce(&p, "t", Some(&format!("k{i}")), format!("v{i}").as_bytes()).await;
    }
    let first = whole.take(8, SECS_10).await;
    // Resuming from the first event is served from the recent-records buffer.
    let first_id = first[0].id.clone().expect("event id");
    let mut resumed = open(addr, &events_path(&["t"], ""), Some(&first_id)).await;
    resumed.take(7, SECS_10).await;
    let (status, body) = request(addr, "POST", "/v1/topics/t?key=k1", b"published").await;
    assert_eq!(status, 200, "publish: {body}");
    let (status, body) = request(addr, "GET", "/v1/events?topic=missing", b"").await;
    assert!((400..500).contains(&status), "{status} {body}");
    wait_for(
        "deliveries, rejections and lag are reported",
        SECS_10,
        || async {
            let (_, text) = request(addr, "GET", "/metrics", b"").await;
            metric(&node, "herald_events_delivered_total").await >= 8.0
                && metric(&node, "herald_http_rejections_total").await >= 1.0
                && metric(&node, "herald_published_total").await >= 1.0
                // Writes that carried records measured herald's own share.
                && metric(&node, "herald_own_latency_seconds_count").await >= 1.0
                // The ingest thread reports lag on its housekeeping tick.
                && text.contains("herald_partition_lag_records{")
        },
    )
    .await;
    (node, vec![whole, keyed, resumed])
}

/// The metric names a PromQL expression reads, with histogram suffixes removed.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(at) = expr[i..].find("herald_") {
        let start = i + at;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        let mut name = &expr[start..end];
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = name.strip_suffix(suffix) {
                if base.ends_with("_seconds") {
                    name = base;
                }
            }
        }
        names.insert(name.to_owned());
        i = end;
    }
    names
}

/// Every PromQL expression of the Grafana dashboard, with Grafana's variables
/// replaced by values Prometheus accepts.
fn dashboard_queries() -> Vec<String> {
    let path = repo_file("monitoring/grafana-dashboard.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    let dashboard: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path:?} is not JSON: {e}"));
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                exprs.push(
                    expr.replace("$__rate_interval", "1m")
                        .replace("${job}", ".+")
                        .replace("$job", ".+"),
                );
            }
        }
    }
    assert!(
        exprs.len() >= 10,
        "the dashboard has too few queries: {exprs:?}"
    );
    exprs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_promtool_clean_and_cover_the_dashboard() {
    let (node, _streams) = busy_node().await;
    let (status, text) = request(node.local_addr(), "GET", "/metrics", b"").await;
    assert_eq!(status, 200);

    // Every family is there with at least one sample.
    for name in FAMILIES {
        assert!(
            text.contains(&format!("# TYPE {name} ")),
            "{name} is missing from /metrics:\n{text}"
        );
        assert!(
            text.lines()
                .any(|l| !l.starts_with('#') && l.starts_with(name)),
            "{name} has no sample in /metrics:\n{text}"
        );
    }
    let exported: BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();

    // promtool reads the exposition on stdin and prints problems, if any.
    let mut child = tokio::process::Command::new(prometheus_tool("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("promtool starts");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(text.as_bytes()).await.expect("write");
    drop(stdin);
    let out = child.wait_with_output().await.expect("promtool runs");
    let problems = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && problems.trim().is_empty(),
        "promtool check metrics ({}):\n{problems}",
        out.status
    );

    // The dashboard reads only families the node exports.
    for expr in dashboard_queries() {
        let names = metric_names(&expr);
        assert!(!names.is_empty(), "query reads no herald metric: {expr}");
        for name in names {
            assert!(
                exported.contains(name.as_str()),
                "the dashboard reads {name}, which the node does not export: {expr}"
            );
        }
    }
}

/// `promtool check config --syntax-only` on a config text; (passed, output).
async fn promtool_check_config(text: &str) -> (bool, String) {
    let dir = TempDir::new("herald-promtool");
    let path = dir.0.join("prometheus.yml");
    std::fs::write(&path, text).expect("write config");
    let out = tokio::process::Command::new(prometheus_tool("promtool"))
        .args(["check", "config", "--syntax-only"])
        .arg(&path)
        .output()
        .await
        .expect("promtool runs");
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), output)
}

/// `text` with each `kubernetes_sd_configs:` block replaced by a static target.
fn without_kubernetes_sd(text: &str) -> String {
    let mut out = Vec::new();
    let mut block_indent: Option<usize> = None;
    for line in text.lines() {
        let indent = line.len() - line.trim_start().len();
        if let Some(i) = block_indent {
            if line.trim().is_empty() || indent > i {
                continue;
            }
            block_indent = None;
        }
        if line.trim_start() == "kubernetes_sd_configs:" {
            block_indent = Some(indent);
            let pad = " ".repeat(indent);
            out.push(format!("{pad}static_configs:"));
            out.push(format!("{pad}  - targets: [\"127.0.0.1:8080\"]"));
            continue;
        }
        out.push(line.to_owned());
    }
    out.join("\n") + "\n"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_scrape_config_passes_promtool() {
    let path = repo_file("monitoring/prometheus.yml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    let (passed, output) = promtool_check_config(&text).await;
    if passed {
        return;
    }
    // Debian builds Prometheus without Kubernetes service discovery; check
    // everything else (relabelling rules included) with a static target.
    assert!(
        output.contains("field kubernetes_sd_configs not found"),
        "promtool check config {path:?}:\n{output}"
    );
    let (passed, output) = promtool_check_config(&without_kubernetes_sd(&text)).await;
    assert!(
        passed,
        "promtool check config {path:?} (Kubernetes discovery replaced by a static target):\n{output}"
    );
}

/// A Prometheus server on a free loopback port, scraping `targets` every
/// second, killed when dropped.
struct Prometheus {
    addr: SocketAddr,
    child: tokio::process::Child,
    dir: TempDir,
}

impl Prometheus {
    async fn start(targets: &[SocketAddr]) -> Prometheus {
        let dir = TempDir::new("herald-prometheus");
        let targets: Vec<String> = targets.iter().map(|a| format!("'{a}'")).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: herald\n    static_configs:\n      - targets: [{}]\n",
            targets.join(", ")
        );
        let config_path = dir.0.join("prometheus.yml");
        std::fs::write(&config_path, config).expect("write prometheus.yml");
        let log = std::fs::File::create(dir.0.join("prometheus.log")).expect("log file");
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let child = tokio::process::Command::new(prometheus_tool("prometheus"))
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.0.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .current_dir(&dir.0)
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("prometheus starts");
        Prometheus { addr, child, dir }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("prometheus.log")).unwrap_or_default()
    }

    /// GET a path of Prometheus's HTTP API, or None while it is not listening.
    async fn get(&self, path: &str) -> Option<(u16, String)> {
        tokio::net::TcpStream::connect(self.addr).await.ok()?;
        Some(request(self.addr, "GET", path, b"").await)
    }

    /// Polls `query` until `check` accepts its result vector, or panics with
    /// what Prometheus answered last and the tail of its log.
    async fn wait_for_query<F>(&mut self, query: &str, what: &str, check: F) -> serde_json::Value
    where
        F: Fn(&[serde_json::Value]) -> bool,
    {
        let path = format!(
            "/api/v1/query?query={}",
            form_urlencoded::byte_serialize(query.as_bytes()).collect::<String>()
        );
        let last = std::cell::RefCell::new(String::from("no answer yet"));
        let found = poll_until(
            Duration::from_secs(60),
            Duration::from_millis(200),
            || async {
                let (status, body) = self.get(&path).await?;
                // 400 is a query Prometheus refuses: waiting will not help.
                assert_ne!(status, 400, "prometheus refuses {query}: {body}");
                let v: Option<serde_json::Value> = (status == 200)
                    .then(|| serde_json::from_str(&body).expect("json"))
                    .filter(|v: &serde_json::Value| {
                        v["data"]["result"].as_array().is_some_and(|r| check(r))
                    });
                if v.is_none() {
                    *last.borrow_mut() = format!("{status} {body}");
                }
                v
            },
        )
        .await;
        if let Some(v) = found {
            return v;
        }
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("prometheus exited ({status}):\n{}", self.log());
        }
        let log = self.log();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        panic!(
            "timed out waiting for {what} ({query}); last answer: {}\nprometheus log (last lines, newest first):\n{}",
            last.borrow(),
            tail.join("\n")
        );
    }

    async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// The value of the one series in a result vector, for instance `instance`.
fn value_for(result: &[serde_json::Value], instance: &str) -> Option<String> {
    result
        .iter()
        .find(|s| s["metric"]["instance"] == instance)
        .and_then(|s| s["value"][1].as_str())
        .map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_a_nodes_connections() {
    let (node, mut streams) = busy_node().await;
    let instance = node.local_addr().to_string();
    let mut prometheus = Prometheus::start(&[node.local_addr()]).await;

    prometheus
        .wait_for_query("up", "the node's target to be up", |r| {
            value_for(r, &instance).as_deref() == Some("1")
        })
        .await;
    prometheus
        .wait_for_query("herald_connections", "herald_connections = 3", |r| {
            value_for(r, &instance).as_deref() == Some("3")
        })
        .await;
    // A live value, not a stale one: close a stream and see the count follow.
    streams.pop();
    prometheus
        .wait_for_query("herald_connections", "herald_connections = 2", |r| {
            value_for(r, &instance).as_deref() == Some("2")
        })
        .await;

    // Every dashboard query is PromQL Prometheus accepts, and returns data
    // once a few scrapes are in (rates need two samples).
    for expr in dashboard_queries() {
        prometheus
            .wait_for_query(&expr, "the dashboard query to return data", |r| {
                !r.is_empty()
            })
            .await;
    }
    prometheus.stop().await;
}
