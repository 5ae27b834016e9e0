//! The servers under test: herald (one or several nodes, the first with its
//! embedded Kafka, or all on a Tansu broker with `--tansu`), nginx + nchan,
//! Pushpin (with herald-bench's GRIP origin, grip.rs), Wikimedia's KafkaSSE
//! (bench/kafka-sse, reading the embedded Kafka of a herald node started
//! beside it), the speed-of-light herald-baseline, or a herald node already
//! running (`--target`).
//!
//! It owns starting them (a free port each, a log file in the scratch
//! directory, ready when their status endpoint answers 200), the request
//! path of a subscription on each kind, what the servers report about
//! themselves (connections, assigned partitions, metrics), the processes to
//! measure, and stopping them. It does not produce records (producer.rs) or
//! hold clients (fleet.rs). The decision to know: every server is a child
//! process tied to herald-bench (PR_SET_PDEATHSIG, kill on drop; nginx gets
//! SIGTERM so that its master takes its workers along), so no run, however
//! it ends, leaves a server behind; an external node is only measured,
//! never started or stopped.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::ValueEnum;
use herald_bench::record::now_us;
use serde::Serialize;
use tokio::process::{Child, Command};

use crate::client::{http_get, http_json};
use crate::procfs::{children_of, ProcSet};
use crate::sys;
use crate::ServerArgs;

/// A node must answer its ready endpoint within this after it was started.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// How often a starting node is asked whether it is ready.
const READY_POLL: Duration = Duration::from_millis(50);
/// Times a start is retried because another socket took the port first.
const PORT_RETRIES: u32 = 3;
/// Ports are picked in [PORT_BASE, PORT_BASE + PORT_SPAN), below Linux's
/// ephemeral range (32768–60999).
const PORT_BASE: u16 = 20_000;
const PORT_SPAN: u64 = 12_000;
const PORT_TRIES: u64 = 500;
/// How long nginx may take to stop on SIGTERM before it is killed.
const NGINX_STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Lines of a server's log shown when it fails to start.
const LOG_TAIL_LINES: usize = 15;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// herald serve with its embedded Kafka (started here).
    Herald,
    /// nginx + nchan from bench/nchan.conf (started here).
    Nchan,
    /// Pushpin from bench/pushpin.conf, with herald-bench's GRIP origin (started here).
    Pushpin,
    /// KafkaSSE from bench/kafka-sse (node), on a herald node's embedded Kafka (started here).
    #[serde(rename = "kafka-sse")]
    KafkaSse,
    /// herald-baseline, the speed-of-light writer (started here).
    Baseline,
    /// A herald node already running at --target.
    External,
}

pub struct Node {
    pub addr: SocketAddr,
    pub pid: Option<u32>,
    /// Pushpin: its publisher (POST /publish/).
    pub publish: Option<SocketAddr>,
    child: Option<Child>,
    /// Removed when the node is dropped (Pushpin's sockets).
    run_dir: Option<PathBuf>,
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(dir) = self.run_dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

pub struct Server {
    pub kind: Kind,
    pub nodes: Vec<Node>,
    /// Kafka bootstrap servers (herald, KafkaSSE).
    pub brokers: Option<String>,
    /// Whether `brokers` is a herald node's embedded Kafka (the mock cluster).
    pub embedded_kafka: bool,
    pub topic: String,
    /// What the server needs but is not measured: the Tansu broker, or the
    /// herald node whose embedded Kafka KafkaSSE reads. Stopped last.
    helpers: Vec<Node>,
    /// Pushpin's origin.
    origin: Option<crate::grip::Origin>,
    /// KafkaSSE: the herald node whose embedded Kafka it reads (address,
    /// pid), a server in its own right for a side-by-side run.
    pub herald_beside: Option<(SocketAddr, Option<u32>)>,
    /// The scratch directory, and whether it is ours to remove.
    scratch: Option<(PathBuf, bool)>,
    external_pids: Vec<u32>,
}

/// How to start one node and know it is ready.
struct Launch {
    cmd: Command,
    ready_path: &'static str,
    /// Pushpin: where it takes publishes.
    publish: Option<SocketAddr>,
    /// A directory of the node's to remove when it is gone.
    run_dir: Option<PathBuf>,
    /// What the node receives when herald-bench dies.
    death_signal: libc::c_int,
}

/// A free loopback port below the ephemeral range, so that no socket bound
/// to port 0 meanwhile (the embedded Kafka's brokers, clients) can take it
/// between this check and the server's bind.
fn free_port() -> anyhow::Result<u16> {
    let seed = now_us() ^ (u64::from(std::process::id()) << 20);
    for i in 0..PORT_TRIES {
        let port = PORT_BASE + ((seed / 7 + i * 7919) % PORT_SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// `n` distinct free loopback ports, none of them `besides` (each held
/// while the next is looked for).
fn free_ports(n: usize, besides: u16) -> anyhow::Result<Vec<u16>> {
    let mut held = Vec::new();
    let mut ports = Vec::new();
    while ports.len() < n {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = l.local_addr()?.port();
        if port != besides {
            ports.push(port);
        }
        held.push(l);
    }
    Ok(ports)
}

/// `name` in the directory of this executable (where cargo puts every
/// binary of the workspace).
fn sibling(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join(name)))
        .unwrap_or_else(|| PathBuf::from(name))
}

/// `rel` (a path under the repository, e.g. bench/nchan.conf): relative to
/// the working directory, or to the repository this executable was built in.
fn repo_file(given: Option<&PathBuf>, rel: &str) -> anyhow::Result<PathBuf> {
    let candidates = match given {
        Some(p) => vec![p.clone()],
        None => {
            let mut v = vec![PathBuf::from(rel)];
            if let Ok(exe) = std::env::current_exe() {
                // target/release/herald-bench → repo/REL
                if let Some(root) = exe.ancestors().nth(3) {
                    v.push(root.join(rel));
                }
            }
            v
        }
    };
    candidates
        .iter()
        .find(|c| c.exists())
        .cloned()
        .with_context(|| format!("{rel} not found (tried {candidates:?})"))
}

fn template(given: Option<&PathBuf>, rel: &str) -> anyhow::Result<String> {
    let path = repo_file(given, rel)?;
    std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

/// Where Tansu is: what `make test` installs.
fn tansu_binary() -> PathBuf {
    let tools = std::env::var_os("HERALD_TOOLS").map(PathBuf::from);
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    let mut candidates: Vec<PathBuf> = tools.map(|t| t.join("bin/tansu")).into_iter().collect();
    if let Ok(exe) = std::env::current_exe() {
        if let Some(root) = exe.ancestors().nth(3) {
            candidates.push(root.join(".tools/bin/tansu"));
        }
    }
    candidates.push(home.join(".cargo/bin/tansu"));
    candidates
        .into_iter()
        .find(|c| c.exists())
        .unwrap_or_else(|| PathBuf::from("tansu"))
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
}

/// The Kafka bootstrap servers a herald node reports.
async fn herald_brokers(addr: SocketAddr) -> anyhow::Result<Option<String>> {
    let stats = http_json(addr, "/v1/stats").await?;
    Ok(stats["kafka"]["bootstrap_servers"]
        .as_str()
        .map(str::to_owned))
}

/// The `connections` a JSON status endpoint reports (0 if it does not answer).
async fn json_connections(addr: SocketAddr, path: &str) -> u64 {
    http_json(addr, path)
        .await
        .ok()
        .and_then(|v| v["connections"].as_u64())
        .unwrap_or(0)
}

/// A herald node's Prometheus metrics, each summed over its labels (empty
/// if the node does not answer).
pub async fn metrics(addr: SocketAddr) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    if let Ok((200, body)) = http_get(addr, "/metrics").await {
        for line in body.lines().filter(|l| !l.starts_with('#')) {
            let Some((name, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let name = name.split('{').next().unwrap_or(name).to_owned();
            if let Ok(v) = value.parse::<f64>() {
                *out.entry(name).or_insert(0.0) += v;
            }
        }
    }
    out
}

impl Server {
    /// Starts `nodes` nodes of `args`' kind (only herald may have several),
    /// or attaches to `--target`.
    pub async fn start(args: &ServerArgs, nodes: usize) -> anyhow::Result<Server> {
        let kind = if args.target.is_some() {
            Kind::External
        } else {
            args.server
        };
        if kind != Kind::Herald && kind != Kind::External && nodes > 1 {
            bail!("several nodes only for herald");
        }
        if args.tansu && !matches!(kind, Kind::Herald | Kind::KafkaSse) {
            bail!("--tansu only for herald and kafka-sse");
        }
        let mut server = Server {
            kind,
            nodes: Vec::new(),
            brokers: args.brokers.clone(),
            embedded_kafka: args.brokers.is_none() && !args.tansu,
            topic: args.topic.clone(),
            helpers: Vec::new(),
            origin: None,
            herald_beside: None,
            scratch: None,
            external_pids: args.pid.clone(),
        };
        if kind == Kind::External {
            let addr = args.target.context("--target")?;
            if server.brokers.is_none() {
                server.brokers = herald_brokers(addr).await?;
            }
            server.embedded_kafka = false;
            server.nodes.push(Node {
                addr,
                pid: args.pid.first().copied(),
                publish: None,
                child: None,
                run_dir: None,
            });
            return Ok(server);
        }
        let scratch = match &args.scratch {
            Some(p) => (p.clone(), false),
            None => (
                std::env::temp_dir().join(format!("herald-bench-{}", std::process::id())),
                true,
            ),
        };
        std::fs::create_dir_all(&scratch.0)?;
        server.scratch = Some(scratch.clone());
        let dir = scratch.0;
        if args.tansu && server.brokers.is_none() {
            let tansu = start_tansu(&dir, &args.topic, args.partitions).await?;
            server.brokers = Some(tansu.addr.to_string());
            server.helpers.push(tansu);
        }
        if kind == Kind::KafkaSse && server.brokers.is_none() {
            // KafkaSSE has no Kafka of its own: a herald node's embedded one.
            let node = server.start_retrying(Kind::Herald, args, &dir).await?;
            server.brokers = herald_brokers(node.addr).await?;
            server.herald_beside = Some((node.addr, node.pid));
            server.helpers.push(node);
        }
        if kind == Kind::Pushpin {
            server.origin = Some(crate::grip::serve().await?);
        }
        while server.nodes.len() < nodes {
            let node = server.start_retrying(kind, args, &dir).await?;
            if kind == Kind::Herald && server.nodes.is_empty() && server.brokers.is_none() {
                server.brokers = herald_brokers(node.addr).await?;
            }
            server.nodes.push(node);
        }
        Ok(server)
    }

    /// Starts a herald node of its own on this server's Kafka (KafkaSSE's:
    /// the embedded one of the node beside it), stopped with the server;
    /// its address and pid.
    pub async fn start_herald_on_kafka(
        &mut self,
        args: &ServerArgs,
    ) -> anyhow::Result<(SocketAddr, Option<u32>)> {
        let dir = self
            .scratch
            .as_ref()
            .map(|(d, _)| d.clone())
            .context("no scratch directory")?;
        if self.brokers.is_none() {
            bail!("no Kafka to start a herald node on");
        }
        let node = self.start_retrying(Kind::Herald, args, &dir).await?;
        let out = (node.addr, node.pid);
        // Stopped before the helpers that hold the Kafka.
        self.helpers.insert(0, node);
        Ok(out)
    }

    /// Starts one more node of `kind`, again on another port while another
    /// socket took the port first.
    async fn start_retrying(
        &self,
        kind: Kind,
        args: &ServerArgs,
        dir: &Path,
    ) -> anyhow::Result<Node> {
        let mut retries = 0;
        loop {
            if let Some(node) = self
                .start_node(kind, args, dir, retries < PORT_RETRIES)
                .await?
            {
                return Ok(node);
            }
            retries += 1;
        }
    }

    /// How to start node `n` of `kind` on `addr`.
    fn launch(
        &self,
        kind: Kind,
        args: &ServerArgs,
        n: usize,
        addr: SocketAddr,
        dir: &Path,
    ) -> anyhow::Result<Launch> {
        Ok(match kind {
            Kind::Herald => {
                let bin = args.herald_bin.clone().unwrap_or_else(|| sibling("herald"));
                let mut cmd = Command::new(bin);
                cmd.args(["serve", "--listen", &addr.to_string()])
                    .args(["--node-id", &format!("bench-{n}")]);
                match (n, &self.brokers) {
                    (0, None) => {
                        // The topic holds the bench's records only: no sample readings.
                        cmd.args(["--demo-topic", &args.topic, "--demo-producer=false"])
                            .args(["--embedded-partitions", &args.partitions.to_string()]);
                    }
                    (_, Some(b)) => {
                        cmd.args(["--brokers", b]);
                    }
                    (_, None) => bail!("no brokers for node {n}"),
                }
                cmd.args(&args.herald_args);
                if std::env::var_os("HERALD_LOG").is_none() {
                    cmd.env("HERALD_LOG", "warn");
                }
                Launch {
                    cmd,
                    ready_path: "/readyz",
                    publish: None,
                    run_dir: None,
                    death_signal: libc::SIGKILL,
                }
            }
            Kind::Baseline => {
                let bin = args
                    .baseline_bin
                    .clone()
                    .unwrap_or_else(|| sibling("herald-baseline"));
                let mut cmd = Command::new(bin);
                cmd.args(["--listen", &addr.to_string()]);
                Launch {
                    cmd,
                    ready_path: "/stats",
                    publish: None,
                    run_dir: None,
                    death_signal: libc::SIGKILL,
                }
            }
            Kind::Nchan => {
                let conf = template(args.nchan_conf.as_ref(), "bench/nchan.conf")?
                    .replace("@LISTEN@", &addr.to_string());
                let prefix = dir.join(format!("nchan-{n}"));
                for t in ["body", "proxy", "fastcgi", "uwsgi", "scgi"] {
                    std::fs::create_dir_all(prefix.join("tmp").join(t))?;
                }
                let conf_path = prefix.join("nginx.conf");
                std::fs::write(&conf_path, conf)?;
                let mut cmd = Command::new(&args.nginx);
                cmd.arg("-p")
                    .arg(&prefix)
                    .arg("-c")
                    .arg(&conf_path)
                    .arg("-e")
                    .arg(prefix.join("error.log"))
                    .args(["-g", "daemon off;"]);
                Launch {
                    cmd,
                    ready_path: "/status",
                    publish: None,
                    run_dir: None,
                    death_signal: libc::SIGTERM,
                }
            }
            Kind::Pushpin => {
                let origin = self.origin.as_ref().context("Pushpin's origin")?;
                let prefix = dir.join(format!("pushpin-{n}"));
                for d in ["log", "lib/runner"] {
                    std::fs::create_dir_all(prefix.join(d))?;
                }
                // Its IPC sockets live in rundir, and a socket's path may not
                // pass 107 bytes: a short directory of its own, not the scratch.
                let run_dir = std::env::temp_dir().join(format!(
                    "hb-pp-{}-{}",
                    std::process::id(),
                    addr.port()
                ));
                std::fs::create_dir_all(&run_dir)?;
                pushpin_libdir(&prefix.join("lib"))?;
                let ports = free_ports(4, addr.port())?;
                let publish: SocketAddr = format!("127.0.0.1:{}", ports[0]).parse()?;
                let mut conf = template(None, "bench/pushpin.conf")?
                    .replace("@DIR@", &prefix.to_string_lossy())
                    .replace("@RUNDIR@", &run_dir.to_string_lossy())
                    .replace("@HTTP_PORT@", &addr.port().to_string());
                let names = [
                    "@PUBLISH_PORT@",
                    "@PUSH_IN_PORT@",
                    "@PUSH_IN_SUB_PORT@",
                    "@COMMAND_PORT@",
                ];
                for (name, port) in names.iter().zip(&ports) {
                    conf = conf.replace(name, &port.to_string());
                }
                std::fs::write(prefix.join("routes"), format!("* {}\n", origin.addr))?;
                let conf_path = prefix.join("pushpin.conf");
                std::fs::write(&conf_path, conf)?;
                let mut cmd = Command::new("pushpin");
                cmd.arg("--config").arg(&conf_path);
                Launch {
                    cmd,
                    // Through Pushpin to the origin: the whole chain is up.
                    ready_path: "/status",
                    publish: Some(publish),
                    run_dir: Some(run_dir),
                    death_signal: libc::SIGTERM,
                }
            }
            Kind::KafkaSse => {
                let script = repo_file(None, "bench/kafka-sse/server.js")?;
                let modules = script.with_file_name("node_modules").join("kafka-sse");
                if !modules.exists() {
                    bail!(
                        "{} is missing: run `bash scripts/install-deps.sh bench`",
                        modules.display()
                    );
                }
                let brokers = self.brokers.clone().context("no Kafka for KafkaSSE")?;
                // herald's own fetch wait for this broker (see herald's kafka.rs):
                // the mock cluster holds every fetch for its whole wait, and
                // librdkafka's default of 500 ms would be the latency floor.
                let wait = if self.embedded_kafka { 5 } else { 10 };
                let mut cmd = Command::new("node");
                cmd.arg(&script)
                    .arg(addr.to_string())
                    .arg(brokers)
                    .arg(format!("{{\"fetch.wait.max.ms\":{wait}}}"));
                Launch {
                    cmd,
                    ready_path: "/status",
                    publish: None,
                    run_dir: None,
                    death_signal: libc::SIGKILL,
                }
            }
            Kind::External => bail!("an external node is not started here"),
        })
    }

    /// Starts the next node and waits until it is ready. None: it exited
    /// because its port was taken meanwhile and `may_retry` (start again).
    async fn start_node(
        &self,
        kind: Kind,
        args: &ServerArgs,
        dir: &Path,
        may_retry: bool,
    ) -> anyhow::Result<Option<Node>> {
        // A helper herald node is node 0 (it holds the Kafka); KafkaSSE's own are 0.. too.
        let n = if kind == self.kind {
            self.nodes.len()
        } else {
            0
        };
        let port = free_port()?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let log_path = dir.join(format!("{}-{n}.log", format!("{kind:?}").to_lowercase()));
        let log = std::fs::File::create(&log_path)?;
        let Launch {
            mut cmd,
            ready_path,
            publish,
            run_dir,
            death_signal,
        } = self.launch(kind, args, n, addr, dir)?;
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        sys::die_with_parent(&mut cmd, death_signal);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {kind:?} ({:?})", cmd.as_std().get_program()))?;
        let pid = child.id();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait()? {
                let tail = log_tail(&log_path);
                if tail.contains("Address already in use") && may_retry {
                    return Ok(None);
                }
                bail!(
                    "{kind:?} exited during start-up ({status}); {}:\n{tail}",
                    log_path.display(),
                );
            }
            if let Ok((200, _)) = http_get(addr, ready_path).await {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "{kind:?} not ready on {addr} after {} s",
                    START_TIMEOUT.as_secs()
                );
            }
            tokio::time::sleep(READY_POLL).await;
        }
        Ok(Some(Node {
            addr,
            pid,
            publish,
            child: Some(child),
            run_dir,
        }))
    }

    /// herald, started here or not (the kinds with Kafka, keys and cursors).
    pub fn is_herald(&self) -> bool {
        matches!(self.kind, Kind::Herald | Kind::External)
    }

    /// The first node's address (the one clients and control requests use).
    pub fn addr(&self) -> SocketAddr {
        self.nodes[0].addr
    }

    /// The processes of node `node` (an external server: its --pid).
    pub fn procs(&self, node: usize) -> ProcSet {
        if self.kind == Kind::External {
            return ProcSet {
                roots: self.external_pids.clone(),
            };
        }
        ProcSet {
            roots: self.nodes[node].pid.into_iter().collect(),
        }
    }

    /// The processes of every node.
    pub fn all_procs(&self) -> ProcSet {
        if self.kind == Kind::External {
            return self.procs(0);
        }
        ProcSet {
            roots: self.nodes.iter().filter_map(|n| n.pid).collect(),
        }
    }

    /// The request path for one key (None: the whole topic).
    pub fn path(&self, key: Option<&str>) -> anyhow::Result<String> {
        Ok(match (self.kind, key) {
            (Kind::KafkaSse, None) => format!("/v1/stream/{}", self.topic),
            (Kind::KafkaSse, Some(_)) => bail!("KafkaSSE subscribes to whole topics only"),
            (Kind::Herald | Kind::External, Some(k)) => {
                format!("/v1/events?topic={}/{k}", self.topic)
            }
            (Kind::Herald | Kind::External, None) => format!("/v1/events?topic={}", self.topic),
            (_, Some(k)) => format!("/sub/{k}"),
            (_, None) => bail!("{:?} has no whole-topic subscription", self.kind),
        })
    }

    /// The path of a broadcast's clients, on the one key the topic carries:
    /// the key, or the whole topic where the server has no key subscriptions.
    pub fn only_key_path(&self, key: &str) -> anyhow::Result<String> {
        match self.kind {
            Kind::KafkaSse => self.path(None),
            _ => self.path(Some(key)),
        }
    }

    /// Pushpin's publisher.
    pub fn publish_addr(&self) -> Option<SocketAddr> {
        self.nodes.first().and_then(|n| n.publish)
    }

    /// The request paths for one client per key.
    pub fn paths<K: AsRef<str>>(&self, keys: &[K]) -> anyhow::Result<Vec<String>> {
        keys.iter().map(|k| self.path(Some(k.as_ref()))).collect()
    }

    /// herald: the partitions of the topic the first node has assigned.
    pub async fn assigned_partitions(&self) -> Option<BTreeSet<i32>> {
        let stats = http_json(self.addr(), "/v1/stats").await.ok()?;
        Some(
            stats["assigned_partitions"]
                .as_array()?
                .iter()
                .filter(|p| p["topic"].as_str() == Some(self.topic.as_str()))
                .filter_map(|p| p["partition"].as_i64().map(|v| v as i32))
                .collect(),
        )
    }

    /// Connections the server itself counts.
    pub async fn reported_connections(&self) -> u64 {
        let mut total = 0;
        for node in &self.nodes {
            total += match self.kind {
                Kind::Herald | Kind::External => json_connections(node.addr, "/v1/stats").await,
                Kind::Baseline => json_connections(node.addr, "/stats").await,
                Kind::KafkaSse => json_connections(node.addr, "/status").await,
                // Streams the origin was asked to hold: Pushpin keeps no count we can ask.
                Kind::Pushpin => self
                    .origin
                    .as_ref()
                    .map_or(0, |o| o.holds.load(std::sync::atomic::Ordering::Relaxed)),
                Kind::Nchan => http_get(node.addr, "/status")
                    .await
                    .ok()
                    .and_then(|(_, b)| {
                        b.lines()
                            .find_map(|l| l.strip_prefix("subscribers:"))
                            .and_then(|v| v.trim().parse().ok())
                    })
                    .unwrap_or(0),
            };
        }
        total
    }

    pub async fn stop(mut self) {
        // Node 0 holds the embedded Kafka the others use: it goes last, and
        // the helpers (a Kafka) after every node.
        let graceful = graceful_stop(self.kind);
        let mut nodes: Vec<(Node, bool)> = self.nodes.drain(..).map(|n| (n, graceful)).collect();
        nodes.reverse();
        nodes.extend(self.helpers.drain(..).rev().map(|n| (n, false)));
        for (node, graceful) in nodes.iter_mut() {
            if let Some(child) = node.child.as_mut() {
                if *graceful {
                    if let Some(pid) = node.pid {
                        sys::signal(pid, libc::SIGTERM);
                    }
                    if tokio::time::timeout(NGINX_STOP_TIMEOUT, child.wait())
                        .await
                        .is_ok()
                    {
                        continue;
                    }
                }
                let _ = child.kill().await;
            }
        }
        if let Some((dir, true)) = self.scratch.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Where the package keeps what pushpin.conf's `{libdir}` names.
const PUSHPIN_LIBDIR: &str = "/usr/lib/pushpin";
/// zurl's queue bounds (the package's: 1,000), for connection bursts.
const ZURL_HWM: u32 = 100_000;

/// A copy of Pushpin's libdir in `to`, its zurl template with queue bounds
/// raised: at 1,000 subscribers connecting at once the package's bounds
/// drop requests to the origin, and their clients get 502.
fn pushpin_libdir(to: &Path) -> anyhow::Result<()> {
    let from = Path::new(PUSHPIN_LIBDIR);
    if !from.join("internal.conf").exists() {
        bail!(
            "{PUSHPIN_LIBDIR}/internal.conf is missing: run `bash scripts/install-deps.sh bench`"
        );
    }
    std::fs::copy(from.join("internal.conf"), to.join("internal.conf"))?;
    for entry in std::fs::read_dir(from.join("runner"))? {
        let entry = entry?;
        if !entry.file_type()?.is_file() {
            continue;
        }
        let mut text = std::fs::read_to_string(entry.path())?;
        if entry.file_name() == "zurl.conf.template" {
            text = text
                .replace("in_hwm=1000", &format!("in_hwm={ZURL_HWM}"))
                .replace("out_hwm=1000", &format!("out_hwm={ZURL_HWM}"));
        }
        std::fs::write(to.join("runner").join(entry.file_name()), text)?;
    }
    Ok(())
}

/// nginx and Pushpin stop on SIGTERM, taking their worker processes along.
fn graceful_stop(kind: Kind) -> bool {
    matches!(kind, Kind::Nchan | Kind::Pushpin)
}

/// A Tansu broker in `dir` (SQLite storage) with `topic` created.
async fn start_tansu(dir: &Path, topic: &str, partitions: i32) -> anyhow::Result<Node> {
    let bin = tansu_binary();
    let port = free_port()?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let url = format!("tcp://{addr}");
    let tansu_dir = dir.join("tansu");
    std::fs::create_dir_all(&tansu_dir)?;
    let log = std::fs::File::create(dir.join("tansu.log"))?;
    // A broker has machines of its own in production. Here it shares two
    // cores with herald and the load generator, and its SQLite work (about a
    // core at 1,000 records/s) kept herald's threads runnable but off a CPU
    // for up to 0.6 s per second; at a lower priority it yields to them.
    let mut cmd = Command::new("nice");
    cmd.args(["-n", "10"])
        .arg(&bin)
        .args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
        ])
        .args(["--storage-engine", "sqlite://tansu.db"])
        .current_dir(&tansu_dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true);
    sys::die_with_parent(&mut cmd, libc::SIGKILL);
    let child = cmd.spawn().with_context(|| {
        format!(
            "starting tansu ({}): run `make test` to install it",
            bin.display()
        )
    })?;
    let pid = child.id();
    let deadline = Instant::now() + START_TIMEOUT;
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        if Instant::now() > deadline {
            bail!("tansu not accepting on {addr}");
        }
        tokio::time::sleep(READY_POLL).await;
    }
    let out = Command::new(&bin)
        .args([
            "topic",
            "create",
            topic,
            "--partitions",
            &partitions.to_string(),
        ])
        .args(["--broker", &url])
        .output()
        .await?;
    if !out.status.success() {
        bail!(
            "tansu topic create {topic}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(Node {
        addr,
        pid,
        publish: None,
        child: Some(child),
        run_dir: None,
    })
}

impl Drop for Server {
    fn drop(&mut self) {
        // Error paths: nginx's workers (Pushpin's services) must not outlive their master.
        if graceful_stop(self.kind) {
            for node in &self.nodes {
                if let Some(pid) = node.pid {
                    for c in children_of(pid) {
                        sys::signal(c, libc::SIGTERM);
                    }
                    sys::signal(pid, libc::SIGTERM);
                }
            }
        }
        if let Some((dir, true)) = self.scratch.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
