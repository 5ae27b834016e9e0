//! Test harness: start real nodes on port 0 against a real Kafka-protocol
//! broker (the embedded mock cluster, or Tansu), speak HTTP over real
//! sockets, produce with a real Kafka client.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use tokio::sync::mpsc;

pub use herald::{Config, Node};

/// Waits for `cond` to hold, polling, or panics saying what was expected.
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let held = poll_until(timeout, Duration::from_millis(20), || {
        let c = cond();
        async move { c.await.then_some(()) }
    })
    .await;
    if held.is_none() {
        panic!("timed out after {timeout:?} waiting for: {what}");
    }
}

/// Polls `f` every `every` until it returns a value, or `None` once
/// `timeout` has passed (the caller says what it was waiting for).
pub async fn poll_until<T, F, Fut>(timeout: Duration, every: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(every).await;
    }
}

pub fn config() -> Config {
    let mut c = Config::for_listen("127.0.0.1:0".parse().expect("address"));
    c.heartbeat = Duration::from_secs(15);
    c.drain_window = Duration::from_millis(500);
    // Presence reads and writes a topic of its own; tests of presence turn
    // it on (`with_presence`), the others count partitions without it.
    c.presence_topic = String::new();
    c
}

/// [`config`] with presence on (`herald.presence`).
pub fn with_presence(mut c: Config) -> Config {
    c.presence_topic = "herald.presence".into();
    c
}

/// A node with its own embedded Kafka.
pub async fn node() -> Node {
    node_with(config()).await
}

pub async fn node_with(config: Config) -> Node {
    Node::start(config).await.expect("node starts")
}

pub fn producer(bootstrap: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "0")
        .set("message.timeout.ms", "10000")
        .create()
        .expect("producer")
}

/// Produces one record and returns (partition, offset).
pub async fn produce(
    p: &FutureProducer,
    topic: &str,
    key: Option<&str>,
    value: &[u8],
) -> (i32, i64) {
    let mut r = FutureRecord::to(topic).payload(value);
    if let Some(k) = key {
        r = r.key(k);
    }
    let d = p
        .send(r, Duration::from_secs(10))
        .await
        .unwrap_or_else(|(e, _)| panic!("produce to {topic}: {e}"));
    (d.partition, d.offset)
}

pub use herald::sse::read::Event;

/// What the stream reader reports.
#[derive(Debug)]
pub enum Item {
    Event(Event),
    Comment,
    End,
}

/// An SSE stream read by a minimal parser following the WHATWG rules.
pub struct Stream {
    pub status: u16,
    pub headers: HashMap<String, String>,
    pub body: String,
    items: mpsc::UnboundedReceiver<Item>,
    pub last_id: Option<String>,
    pub comments: usize,
    pub ended: bool,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> hyper::Response<hyper::body::Incoming> {
    try_http(addr, method, path, headers, body)
        .await
        .unwrap_or_else(|e| panic!("{method} {path} on {addr}: {e}"))
}

pub async fn try_http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Result<hyper::Response<hyper::body::Incoming>, Box<dyn std::error::Error + Send + Sync>> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    Ok(sender.send_request(req.body(Full::new(body))?).await?)
}

/// GET or POST, whole body as text.
pub async fn request(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> (u16, String) {
    let resp = http(addr, method, path, &[], Bytes::copy_from_slice(body)).await;
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

pub async fn get_json(addr: SocketAddr, path: &str) -> serde_json::Value {
    let (status, body) = request(addr, "GET", path, b"").await;
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).expect("json")
}

/// Where a node serves its operations views: its operations listener when
/// it has one (nodes with auth on keep them off the public port).
pub fn ops_addr(node: &Node) -> SocketAddr {
    node.ops_addr().unwrap_or_else(|| node.local_addr())
}

pub async fn stats(node: &Node) -> serde_json::Value {
    get_json(ops_addr(node), "/v1/stats").await
}

/// The (topic, partition) pairs a node has assigned.
pub async fn assigned(node: &Node) -> Vec<(String, i64)> {
    let s = stats(node).await;
    let mut out: Vec<(String, i64)> = s["assigned_partitions"]
        .as_array()
        .expect("array")
        .iter()
        .map(|p| {
            (
                p["topic"].as_str().unwrap_or_default().to_owned(),
                p["partition"].as_i64().unwrap_or(-1),
            )
        })
        .collect();
    out.sort();
    out
}

pub async fn metric(node: &Node, name: &str) -> f64 {
    let (_, body) = request(ops_addr(node), "GET", "/metrics", b"").await;
    body.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Opens `GET path` and, for a 200 event stream, parses events as they come.
pub async fn open(addr: SocketAddr, path: &str, last_event_id: Option<&str>) -> Stream {
    try_open(addr, path, last_event_id)
        .await
        .unwrap_or_else(|e| panic!("GET {path} on {addr}: {e}"))
}

/// `open`, but a failed connection is an error rather than a panic.
pub async fn try_open(
    addr: SocketAddr,
    path: &str,
    last_event_id: Option<&str>,
) -> Result<Stream, Box<dyn std::error::Error + Send + Sync>> {
    let headers: Vec<(&str, &str)> = last_event_id
        .map(|id| ("last-event-id", id))
        .into_iter()
        .collect();
    let resp = try_http(addr, "GET", path, &headers, Bytes::new()).await?;
    let status = resp.status().as_u16();
    let hdrs: HashMap<String, String> = resp
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                v.to_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let (tx, rx) = mpsc::unbounded_channel();
    let is_stream = hdrs
        .get("content-type")
        .is_some_and(|c| c.starts_with("text/event-stream"));
    if status != 200 || !is_stream {
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        return Ok(Stream {
            status,
            headers: hdrs,
            body: String::from_utf8_lossy(&bytes).into_owned(),
            items: rx,
            last_id: None,
            comments: 0,
            ended: true,
            task: tokio::spawn(async {}),
        });
    }
    let mut body = resp.into_body();
    let task = tokio::spawn(async move {
        let mut parser = Parser::default();
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { break };
            if let Ok(data) = frame.into_data() {
                for item in parser.feed(&data) {
                    if tx.send(item).is_err() {
                        return;
                    }
                }
            }
        }
        let _ = tx.send(Item::End);
    });
    Ok(Stream {
        status,
        headers: hdrs,
        body: String::new(),
        items: rx,
        last_id: last_event_id.map(str::to_owned),
        comments: 0,
        ended: false,
        task,
    })
}

impl Stream {
    /// The next event (skipping comments), or None at the end of the stream
    /// or after `timeout`.
    pub async fn next_event(&mut self, timeout: Duration) -> Option<Event> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.items.recv()).await {
                Ok(Some(Item::Event(e))) => {
                    if let Some(id) = &e.id {
                        self.last_id = Some(id.clone());
                    }
                    return Some(e);
                }
                Ok(Some(Item::Comment)) => self.comments += 1,
                Ok(Some(Item::End)) | Ok(None) => {
                    self.ended = true;
                    return None;
                }
                Err(_) => return None,
            }
        }
    }

    /// The next event that carries data (skipping id-only and retry-only ones).
    pub async fn next_data(&mut self, timeout: Duration) -> Option<Event> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let e = self.next_event(left).await?;
            if e.data.is_some() {
                return Some(e);
            }
        }
    }

    /// Collects `n` data events or panics after `timeout`.
    pub async fn take(&mut self, n: usize, timeout: Duration) -> Vec<Event> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_data(left).await {
                Some(e) => out.push(e),
                None => panic!(
                    "expected {n} events, got {} before {} ({:?})",
                    out.len(),
                    if self.ended {
                        "the stream ended"
                    } else {
                        "the deadline"
                    },
                    out.last()
                ),
            }
        }
        out
    }

    /// Waits for the stream to end.
    pub async fn until_end(&mut self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.ended {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            let _ = self.next_event(left).await;
        }
        true
    }
}

/// The shared reader of the wire format, reporting [`Item`]s.
#[derive(Default)]
pub struct Parser(herald::sse::read::EventReader);

impl Parser {
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<Item> {
        self.0
            .feed(chunk)
            .into_iter()
            .map(|r| match r {
                herald::sse::read::Read::Event(e) => Item::Event(e),
                herald::sse::read::Read::Comment => Item::Comment,
            })
            .collect()
    }
}

/// A selector path for `topic` (and keys), URL-encoded.
pub fn events_path(selectors: &[&str], extra: &str) -> String {
    let mut q: Vec<String> = selectors
        .iter()
        .map(|s| {
            format!(
                "topic={}",
                form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>()
            )
        })
        .collect();
    if !extra.is_empty() {
        q.push(extra.to_owned());
    }
    format!("/v1/events?{}", q.join("&"))
}

pub const SECS_10: Duration = Duration::from_secs(10);

/// A real Kafka-compatible broker (Tansu, SQLite storage) on a free loopback port.
pub struct Tansu {
    pub bootstrap: String,
    child: tokio::process::Child,
    port: u16,
    _dir: TempDir,
}

pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "{prefix}-{}-{}",
            std::process::id(),
            SystemClock::nanos()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct SystemClock;
impl SystemClock {
    fn nanos() -> u128 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    }
}

fn tansu_binary() -> std::path::PathBuf {
    let tools = std::env::var_os("HERALD_TOOLS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".tools"));
    let home = std::env::var_os("HOME")
        .map(std::path::PathBuf::from)
        .unwrap_or_default();
    for candidate in [tools.join("bin/tansu"), home.join(".cargo/bin/tansu")] {
        if candidate.exists() {
            return candidate;
        }
    }
    panic!("tansu is not installed: run `make test` (or `bash scripts/install-deps.sh test`)");
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

impl Tansu {
    pub async fn start() -> Tansu {
        let dir = TempDir::new("herald-tansu");
        let port = free_port();
        let child = Tansu::spawn(&dir.0, port).await;
        Tansu {
            bootstrap: format!("127.0.0.1:{port}"),
            child,
            port,
            _dir: dir,
        }
    }

    async fn spawn(dir: &std::path::Path, port: u16) -> tokio::process::Child {
        let url = format!("tcp://127.0.0.1:{port}");
        let child = tokio::process::Command::new(tansu_binary())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "sqlite://tansu.db"])
            .current_dir(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("tansu starts");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        wait_for(
            "tansu accepts connections",
            Duration::from_secs(30),
            || async move { tokio::net::TcpStream::connect(addr).await.is_ok() },
        )
        .await;
        child
    }

    /// Kills the broker (its data stays in SQLite).
    pub async fn stop(&mut self) {
        let _ = self.child.kill().await;
    }

    /// Starts it again on the same port and storage.
    pub async fn start_again(&mut self) {
        self.child = Tansu::spawn(&self._dir.0, self.port).await;
    }

    pub async fn create_topic(&self, name: &str, partitions: i32) {
        let out = tokio::process::Command::new(tansu_binary())
            .args([
                "topic",
                "create",
                name,
                "--partitions",
                &partitions.to_string(),
            ])
            .args(["--broker", &format!("tcp://{}", self.bootstrap)])
            .output()
            .await
            .expect("tansu topic create runs");
        assert!(
            out.status.success(),
            "create topic {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}

/// A node reading from `bootstrap` (a real broker, or another node's embedded Kafka).
pub async fn node_on(bootstrap: &str) -> Node {
    let mut c = config();
    c.brokers = Some(bootstrap.to_owned());
    node_with(c).await
}

/// Checks per-key sequence numbers in values `key:seq[:padding]`: every
/// key's records must arrive exactly once and in order.
#[derive(Default)]
pub struct Verifier {
    pub next: HashMap<String, u64>,
    pub received: u64,
}

impl Verifier {
    pub fn see(&mut self, value: &str) {
        let mut parts = value.splitn(3, ':');
        let key = parts.next().unwrap_or_default();
        let seq: u64 = parts
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no sequence number in {value:?}"));
        let expected = self.next.entry(key.to_owned()).or_insert(0);
        assert_eq!(
            seq, *expected,
            "key {key}: expected seq {expected}, got {seq} (lost or duplicated)"
        );
        *expected += 1;
        self.received += 1;
    }
}

/// Produces `key:seq[:pad]` for each key and each seq in `seqs`, concurrently
/// across keys but in order per key.
pub async fn produce_sequence(
    p: &FutureProducer,
    topic: &str,
    keys: &[String],
    seqs: std::ops::Range<u64>,
    pause: Duration,
    pad: &str,
) {
    for seq in seqs {
        let mut pending = Vec::new();
        for k in keys {
            let value = if pad.is_empty() {
                format!("{k}:{seq}")
            } else {
                format!("{k}:{seq}:{pad}")
            };
            match p.send_result(FutureRecord::to(topic).key(k).payload(&value)) {
                Ok(f) => pending.push(f),
                Err((e, _)) => panic!("enqueue: {e}"),
            }
        }
        for f in pending {
            if let Err((e, _)) = f.await.expect("delivery") {
                panic!("produce: {e}");
            }
        }
        if !pause.is_zero() {
            tokio::time::sleep(pause).await; // pacing the producer, not waiting for a condition
        }
    }
}

pub fn keys(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("k{i}")).collect()
}

/// librdkafka's mock cluster owned by the test, so that it can inject faults.
pub struct MockKafka {
    pub bootstrap: String,
    commands: std::sync::mpsc::Sender<MockCommand>,
}

enum MockCommand {
    CreateTopic(String, i32, std::sync::mpsc::Sender<()>),
    RequestErrors(
        rdkafka::types::RDKafkaApiKey,
        Vec<rdkafka::types::RDKafkaRespErr>,
    ),
    Leader(String, i32, i32),
    RoundTrip(i32, Duration),
}

impl MockKafka {
    pub const BROKERS: [i32; 3] = [1, 2, 3];

    pub fn start() -> MockKafka {
        let (tx, rx) = std::sync::mpsc::channel::<MockCommand>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let cluster = rdkafka::mocking::MockCluster::new(3).expect("mock cluster");
            // Nodes create their presence topic when missing, but the mock
            // takes no CreateTopics from clients: it exists from the start.
            if let Err(e) = cluster.create_topic("herald.presence", 8, 3) {
                eprintln!("mock cluster: presence topic: {e}");
            }
            let _ = ready_tx.send(cluster.bootstrap_servers());
            for command in rx {
                let result = match command {
                    MockCommand::CreateTopic(name, partitions, done) => {
                        let r = cluster.create_topic(&name, partitions, 3);
                        let _ = done.send(());
                        r
                    }
                    MockCommand::RequestErrors(api, errors) => {
                        cluster.request_errors(api, &errors);
                        Ok(())
                    }
                    MockCommand::Leader(t, p, b) => cluster.partition_leader(&t, p, Some(b)),
                    MockCommand::RoundTrip(b, d) => cluster.broker_round_trip_time(b, d),
                };
                if let Err(e) = result {
                    eprintln!("mock cluster command failed: {e}");
                }
            }
        });
        MockKafka {
            bootstrap: ready_rx.recv().expect("mock cluster started"),
            commands: tx,
        }
    }

    pub fn create_topic(&self, name: &str, partitions: i32) {
        let (done, wait) = std::sync::mpsc::channel();
        let _ = self
            .commands
            .send(MockCommand::CreateTopic(name.to_owned(), partitions, done));
        wait.recv().expect("topic created");
    }

    /// The next requests of this kind fail with these errors, in order
    /// (`__TRANSPORT` drops the client's connection). The mock's own
    /// `broker_down` is not used: librdkafka 2.12's mock aborts the process
    /// when it cannot re-create the broker's listener on the same port.
    pub fn fail_requests(
        &self,
        api: rdkafka::types::RDKafkaApiKey,
        errors: Vec<rdkafka::types::RDKafkaRespErr>,
    ) {
        let _ = self.commands.send(MockCommand::RequestErrors(api, errors));
    }

    /// Delays every answer of `broker` by `delay` (zero: back to normal). A
    /// long delay makes a broker as good as down without closing its port.
    pub fn slow_broker(&self, broker: i32, delay: Duration) {
        let _ = self.commands.send(MockCommand::RoundTrip(broker, delay));
    }

    pub fn move_leader(&self, topic: &str, partition: i32, broker: i32) {
        let _ = self
            .commands
            .send(MockCommand::Leader(topic.to_owned(), partition, broker));
    }
}

/// A herald node as a real process (so that it can be SIGKILLed).
pub struct NodeProcess {
    pub addr: SocketAddr,
    args: Vec<String>,
    child: Option<tokio::process::Child>,
}

impl NodeProcess {
    pub async fn start(bootstrap: &str, name: &str, extra: &[&str]) -> NodeProcess {
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let mut args: Vec<String> = vec![
            "serve".into(),
            "--listen".into(),
            addr.to_string(),
            "--brokers".into(),
            bootstrap.into(),
            "--node-id".into(),
            name.into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut n = NodeProcess {
            addr,
            args,
            child: None,
        };
        n.spawn().await;
        n
    }

    async fn spawn(&mut self) {
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(&self.args)
            // HERALD_TEST_NODE_LOG=warn shows what node processes log.
            .env(
                "HERALD_LOG",
                std::env::var("HERALD_TEST_NODE_LOG").unwrap_or_else(|_| "error".into()),
            )
            .kill_on_drop(true)
            .spawn()
            .expect("herald starts");
        self.child = Some(child);
        let addr = self.addr;
        wait_for("node ready", Duration::from_secs(30), || async move {
            tokio::net::TcpStream::connect(addr).await.is_ok()
                && request(addr, "GET", "/readyz", b"").await.0 == 200
        })
        .await;
    }

    /// SIGTERM: the node drains and exits.
    pub fn terminate(&self) {
        self.signal("-TERM");
    }

    /// Waits for the process to exit (after `terminate`), at most `timeout`.
    pub async fn exited(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        tokio::time::timeout(timeout, child.wait()).await.ok()?.ok()
    }

    fn signal(&self, which: &str) {
        let pid = self
            .child
            .as_ref()
            .and_then(|c| c.id())
            .expect("a running node");
        let status = std::process::Command::new("kill")
            .args([which, &pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {which} {pid}");
    }

    /// SIGKILL: no drain, no goodbye.
    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
    }

    pub async fn restart(&mut self) {
        self.kill().await;
        self.spawn().await;
    }

    /// SIGSTOP: the process keeps its sockets (the kernel still accepts
    /// connections for it) but answers nothing, like a node in its last
    /// moments. A later `kill` or `restart` ends it.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    pub async fn connections(&self) -> i64 {
        let (status, body) = request(self.addr, "GET", "/v1/stats", b"").await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["connections"].as_i64())
            .unwrap_or(-1)
    }
}

/// HAProxy (Debian's) with the repository's configuration template.
pub struct Haproxy {
    pub addr: SocketAddr,
    child: tokio::process::Child,
    _dir: TempDir,
}

impl Haproxy {
    pub async fn start(nodes: &[SocketAddr]) -> Haproxy {
        let template = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("cluster/haproxy.cfg.template"),
        )
        .expect("template");
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let servers: Vec<String> = nodes
            .iter()
            .enumerate()
            .map(|(i, a)| format!("    server n{} {a} check", i + 1))
            .collect();
        let config = template
            .replace("@LISTEN@", &addr.to_string())
            .replace("@SERVERS@", &servers.join("\n"));
        let dir = TempDir::new("herald-haproxy");
        let path = dir.0.join("haproxy.cfg");
        std::fs::write(&path, config).expect("write config");
        let haproxy = ["/usr/sbin/haproxy", "/usr/bin/haproxy"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("haproxy is not installed: run `make test` (scripts/install-deps.sh test)");
        let child = tokio::process::Command::new(haproxy)
            .args(["-db", "-f"])
            .arg(&path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("haproxy starts");
        wait_for(
            "haproxy serves a node",
            Duration::from_secs(20),
            || async move {
                tokio::net::TcpStream::connect(addr).await.is_ok()
                    && request(addr, "GET", "/healthz", b"").await.0 == 200
            },
        )
        .await;
        Haproxy {
            addr,
            child,
            _dir: dir,
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}

/// Opens an event stream whose client reads nothing: a 4 KiB receive
/// buffer, and the request head written raw, followed by `after_head`
/// (a byte there sends the stream down hyper's path instead of `h1`'s).
pub async fn stalled_client(
    addr: SocketAddr,
    path: &str,
    version: &str,
    after_head: &[u8],
) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    let mut stream = socket.connect(addr).await.expect("connect");
    let mut req = format!("GET {path} {version}\r\nHost: t\r\n\r\n").into_bytes();
    req.extend_from_slice(after_head);
    stream.write_all(&req).await.expect("request");
    stream
}

/// The node's open streams, from `/v1/stats`.
pub async fn connections(node: &Node) -> i64 {
    stats(node).await["connections"].as_i64().unwrap_or(-1)
}

/// Reads a raw connection until the server closes it (EOF or reset), or
/// `timeout` passes. True if it was closed.
pub async fn closed_by_server(stream: &mut tokio::net::TcpStream, timeout: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
            Err(_) => return false,
        }
    }
}

/// Produces one record to each partition of `topic`, values
/// `sentinel:<tag>:<partition>`, after everything else. A stream reading the
/// topic that has received all of them has also received everything it ever
/// will of what was produced before (each partition is delivered in order).
pub async fn produce_sentinels(
    p: &FutureProducer,
    topic: &str,
    partitions: i32,
    tag: &str,
) -> Vec<String> {
    sentinels(p, topic, partitions, tag, false).await
}

/// [`produce_sentinels`], each with the key `sentinel-<partition>` (a
/// table topic keeps only keyed records).
pub async fn produce_keyed_sentinels(
    p: &FutureProducer,
    topic: &str,
    partitions: i32,
    tag: &str,
) -> Vec<String> {
    sentinels(p, topic, partitions, tag, true).await
}

async fn sentinels(
    p: &FutureProducer,
    topic: &str,
    partitions: i32,
    tag: &str,
    keyed: bool,
) -> Vec<String> {
    let mut out = Vec::new();
    for partition in 0..partitions {
        let value = format!("sentinel:{tag}:{partition}");
        let key = format!("sentinel-{partition}");
        let mut record = FutureRecord::<str, _>::to(topic)
            .partition(partition)
            .payload(&value);
        if keyed {
            record = record.key(&key);
        }
        p.send(record, Duration::from_secs(10))
            .await
            .unwrap_or_else(|(e, _)| panic!("produce a sentinel to {topic}/{partition}: {e}"));
        out.push(value);
    }
    out
}

/// Reads until every value of `sentinels` arrived; panics if any other
/// data arrives first: `what` says what must not have arrived.
pub async fn expect_only(s: &mut Stream, sentinels: &[String], what: &str) {
    let mut waiting: std::collections::HashSet<&str> =
        sentinels.iter().map(String::as_str).collect();
    while !waiting.is_empty() {
        let e = s
            .next_data(SECS_10)
            .await
            .unwrap_or_else(|| panic!("sentinels {waiting:?} did not arrive"));
        let d = e.data.unwrap_or_default();
        assert!(waiting.remove(d.as_str()), "{what}: got {d:?}");
    }
}

/// Runs `script` of tests/browser with node (headless Chromium through
/// playwright-core), which must succeed within a minute; returns its
/// standard output (one JSON line by convention).
pub async fn browser_script(script: &str, args: &[&str]) -> String {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    assert!(
        dir.join("node_modules/playwright-core").exists()
            && std::path::Path::new("/usr/bin/chromium").exists(),
        "playwright-core and chromium are missing: run `make test` (or `bash scripts/install-deps.sh test`)"
    );
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new("node")
            .arg(script)
            .args(args)
            .current_dir(&dir)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the browser finishes within a minute")
    .expect("node starts");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{script}: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}
