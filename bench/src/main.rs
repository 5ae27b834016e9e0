//! herald-bench: herald's load generator and the scenarios of the targets in docs/architecture.md.
//!
//! One command runs one scenario end to end. It starts the server under test
//! (`--server herald`: a node with its embedded Kafka, or on Tansu with
//! `--tansu`; `nchan`: nginx with bench/nchan.conf; `pushpin`: Pushpin with
//! bench/pushpin.conf; `kafka-sse`: Wikimedia's KafkaSSE from
//! bench/kafka-sse; `baseline`: the speed-of-light writer herald-baseline;
//! or `--target ADDR` for a herald already running), spreads the SSE clients
//! over worker processes (itself, as the hidden `worker` command, at most
//! 18,000 sockets each: a process may open 20,000 files) and over 127.x.y.z
//! source addresses (about 2,000 each), drives the producer, prints a table
//! and, with `--json FILE`, writes the whole result.
//!
//! Every record value is `<send time, µs> <stream> <seq> <padding>`. Clients
//! take produce→receive latency from the first field and check each stream's
//! order from the other two: a hole is a gap, a repeat a duplicate, an older
//! one a reorder. At the end the producer's last sequence number per stream
//! is compared with what every client last saw, and the deliveries with what
//! was produced, so a lost record shows even at the tail. Clients speak
//! HTTP/1.0 (the body is the raw event stream) and read `data:`, `id:` and
//! `event:` lines.
//!
//! CPU comes from /proc/PID/stat: the server's (with its child processes, for
//! nginx's workers) and the load generator's (the workers and this process,
//! which produces). Memory is PSS from /proc/PID/smaps_rollup.
//!
//! This file holds only the command line and the dispatch. Where the rest is:
//!
//! | module | what it owns |
//! | --- | --- |
//! | `scenarios/` | each command's own parameters, steps and report |
//! | `engine` | set-up and teardown shared by the scenarios, rate steps, verdicts |
//! | `servers` | starting, querying and stopping the servers under test |
//! | `producer` | offering records at a rate (Kafka, nchan's publisher, the baseline) |
//! | `fleet` | the worker processes, seen from the coordinator |
//! | `worker` | one worker process: connections, event checks, its protocol |
//! | `client` | source addresses, opening a stream, control GETs |
//! | `procfs`, `hist`, `sys` | /proc figures, the latency histogram, libc calls |
//! | `herald_bench::{record, pace}` | the record value and the pacing, shared with herald-baseline |

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use serde_json::Value;

use crate::servers::Kind;

mod client;
mod engine;
mod fleet;
mod grip;
mod hist;
mod procfs;
mod producer;
mod registry;
mod scenarios;
mod servers;
mod sys;
mod worker;

#[derive(Parser)]
#[command(
    about = "Load generator for herald (and nchan, Pushpin, KafkaSSE, and a speed-of-light baseline)"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Idle SSE connections on one or several nodes: memory per connection.
    Idle(IdleArgs),
    /// Many clients on one key, rising record rates until p99 passes the limit.
    Broadcast(BroadcastArgs),
    /// One client per key over a topic's partitions; checks which partitions
    /// the node assigned (herald only).
    Keyed(KeyedArgs),
    /// Light load: one client per key, a steady rate (defaults: 1,000 clients,
    /// 1,000 records/s).
    Light(KeyedArgs),
    /// M clients on one topic or key at R records/s (one step).
    Latency(LatencyArgs),
    /// Keyed clients disconnect, stay away while records flow, reconnect at
    /// once with their last ids: time until every one is live (herald only).
    Resume(ResumeArgs),
    /// A few hundred connections for a few seconds: broadcast, keyed and
    /// resume on one herald node; exits non-zero on any lost, duplicated or
    /// reordered record or failed connection.
    Smoke(SmokeArgs),
    /// Event id (cursor) sizes for subscriptions of 1, 16 and 64 partitions.
    CursorSizes,
    /// Clients with where= filters, F distinct ones, at one rate: what
    /// filtering costs against the same deliveries by key selector.
    Filters(FiltersArgs),
    /// What decoding Avro, Protobuf and JSON Schema records costs per
    /// record on one core, against the plain path (no server).
    Decode(DecodeArgs),
    /// Kafka's latency floor (a bare librdkafka consumer on the same records) beside herald's
    /// produce→client and its own share (consume → socket write).
    Floor(FloorArgs),
    /// KafkaSSE and herald at once on the same records: M clients on each,
    /// KafkaSSE reading the embedded Kafka of the herald node beside it.
    SideBySide(LatencyArgs),
    /// herald's publish endpoint (POST → Kafka's ack) against a direct
    /// rdkafka producer with the same settings: throughput and latency.
    Publish(PublishArgs),
    /// The light load alone and beside streams churning (presence's cost).
    PresenceChurn(ChurnArgs),
    /// Table topics: a table built from Kafka (time, memory per key), many
    /// snapshots at once, and conflation for slow clients on a hot topic.
    Tables(TablesArgs),
    /// Internal: one client process, driven over stdin/stdout.
    #[command(hide = true)]
    Worker,
}

#[derive(Args, Clone)]
struct ServerArgs {
    /// Server under test (with --target: external).
    #[arg(long, value_enum, default_value = "herald")]
    server: Kind,
    /// Address of a running herald node (implies --server external).
    #[arg(long)]
    target: Option<SocketAddr>,
    /// Process id(s) of the external server, for CPU and memory.
    #[arg(long)]
    pid: Vec<u32>,
    /// Kafka bootstrap servers of the external node (default: its /v1/stats).
    #[arg(long)]
    brokers: Option<String>,
    /// The herald binary (default: next to this one).
    #[arg(long)]
    herald_bin: Option<PathBuf>,
    /// The herald-baseline binary (default: next to this one).
    #[arg(long)]
    baseline_bin: Option<PathBuf>,
    #[arg(long, default_value = "/usr/sbin/nginx")]
    nginx: PathBuf,
    /// nginx configuration template (@LISTEN@ is replaced); default bench/nchan.conf.
    #[arg(long)]
    nchan_conf: Option<PathBuf>,
    /// Topic the records go to (a started node creates it; `make run`'s is demo).
    #[arg(long, default_value = "demo")]
    topic: String,
    /// Partitions of the topic (created by the embedded Kafka of a started node).
    #[arg(long, default_value_t = 64)]
    partitions: i32,
    /// Run the Kafka on a Tansu broker started here (SQLite storage), not a
    /// herald node's embedded one (herald and kafka-sse).
    #[arg(long)]
    tansu: bool,
    /// Extra argument for `herald serve` (repeatable), e.g. --herald-arg=--queue-bytes=4194304.
    #[arg(long = "herald-arg", allow_hyphen_values = true)]
    herald_args: Vec<String>,
    /// Directory for server logs and nginx's files (default: a temporary one, removed).
    #[arg(long)]
    scratch: Option<PathBuf>,
}

#[derive(Args, Clone)]
struct RunArgs {
    /// Write the result as JSON to this file (`-` for stdout).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Client processes (default: enough for 18,000 sockets each, at least 2).
    #[arg(long)]
    workers: Option<usize>,
    /// Client sockets per source address.
    #[arg(long, default_value_t = 2000)]
    per_source: usize,
    /// Free-form label copied into the JSON (e.g. the run number).
    #[arg(long)]
    label: Option<String>,
    /// Before starting, wait up to this many seconds for the machine to be
    /// quiet (other work below --quiet-below % of one core).
    #[arg(long, default_value_t = 0.0)]
    quiet_wait: f64,
    #[arg(long, default_value_t = 30.0)]
    quiet_below: f64,
    /// Connections each client process opens at once (default 256). Pushpin
    /// answers 502 to some of a burst of 512.
    #[arg(long)]
    connect_concurrency: Option<usize>,
}

#[derive(Args, Clone)]
struct IdleArgs {
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    run: RunArgs,
    /// Connections in total (over all nodes).
    #[arg(long, default_value_t = 19_000)]
    connections: usize,
    /// Node processes (herald only); connections are split evenly.
    #[arg(long, default_value_t = 1)]
    nodes: usize,
    /// Distinct keys the connections subscribe to (0: the whole topic).
    #[arg(long, default_value_t = 1000)]
    keys: usize,
    /// Connections opened before the memory baseline is taken, per node.
    #[arg(long, default_value_t = 20)]
    warm: usize,
    /// Seconds to let the server settle before measuring.
    #[arg(long, default_value_t = 2.0)]
    settle: f64,
    /// Seconds over which idle CPU is measured.
    #[arg(long, default_value_t = 2.0)]
    idle_seconds: f64,
    /// Legacy: source addresses (ignored; --per-source decides).
    #[arg(long, hide = true)]
    sources: Option<u8>,
    /// Legacy: the selector (ignored; --keys decides).
    #[arg(long, hide = true)]
    selector: Option<String>,
}

#[derive(Args, Clone)]
struct FlowArgs {
    /// Record value size in bytes.
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// Seconds at each rate before measuring.
    #[arg(long, default_value_t = 0.5)]
    warmup: f64,
    /// p99 limit (ms) for a rate to count as sustained.
    #[arg(long, default_value_t = 50.0)]
    p99_limit_ms: f64,
    /// Seconds to wait after connecting before producing.
    #[arg(long, default_value_t = 1.0)]
    settle: f64,
    /// producer linger.ms (herald's Kafka producer).
    #[arg(long, default_value_t = 0)]
    linger_ms: u64,
    /// How records are written: the bench's text, a trade record as JSON,
    /// or the same record as Confluent-framed Avro (herald decodes it
    /// through a registry the bench serves).
    #[arg(long, value_enum, default_value = "raw")]
    encoding: herald_bench::encoding::Encoding,
}

#[derive(Args, Clone)]
struct BroadcastArgs {
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    run: RunArgs,
    #[command(flatten)]
    flow: FlowArgs,
    #[arg(long, default_value_t = 10_000)]
    clients: usize,
    /// Record rates to try, records/s (default: from --deliveries).
    #[arg(long, value_delimiter = ',')]
    rates: Vec<f64>,
    /// Offered deliveries/s to try (rate = deliveries / clients).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "50000,100000,200000,400000,700000,1000000,1500000,2000000"
    )]
    deliveries: Vec<f64>,
    /// Seconds measured at each rate.
    #[arg(long, default_value_t = 2.5)]
    step_seconds: f64,
    /// Stop rising once p99 passes this (ms) or a rate is not sustained.
    #[arg(long, default_value_t = 1000.0)]
    stop_p99_ms: f64,
    /// Keep going after a rate fails.
    #[arg(long)]
    no_stop: bool,
}

#[derive(Args, Clone)]
struct FiltersArgs {
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    run: RunArgs,
    #[command(flatten)]
    flow: FlowArgs,
    #[arg(long, default_value_t = 10_000)]
    clients: usize,
    /// Distinct filters (each takes one key's records; clients share them evenly).
    #[arg(long, default_value_t = 1000)]
    filters: usize,
    /// Records/s over all keys.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Key selectors instead of filters: the same deliveries, no CEL.
    #[arg(long)]
    keys_instead: bool,
}

/// The light load a comparison runs, in rounds.
#[derive(Args, Clone)]
struct LightRounds {
    /// Light-load clients, one key each.
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    /// Records/s over their keys.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Seconds each measurement lasts.
    #[arg(long, default_value_t = 4.0)]
    seconds: f64,
    /// Rounds (each a pair of measurements).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

#[derive(Args, Clone)]
struct FloorArgs {
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    run: RunArgs,
    #[command(flatten)]
    flow: FlowArgs,
    #[command(flatten)]
    light: LightRounds,
}

#[derive(Args, Clone)]
struct PublishArgs {
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    run: RunArgs,
    /// Publishes in flight (HTTP connections, or sends of the direct producer), each tried.
    #[arg(long, value_delimiter = ',', default_value = "1,64")]
    concurrency: Vec<usize>,
    /// Seconds each measurement lasts.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Record value size in bytes.
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// Rounds (each direct, then HTTP, at every concurrency).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

#[derive(Args, Clone)]
struct ChurnArgs {
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    run: RunArgs,
    #[command(flatten)]
    flow: FlowArgs,
    #[command(flatten)]
    light: LightRounds,
    /// Streams the churn keeps open.
    #[arg(long, default_value_t = 10_000)]
    churn_streams: usize,
    /// Streams the churn replaces a second.
    #[arg(long, default_value_t = 500)]
    churn_rate: usize,
    /// Selectors the churning streams spread over.
    #[arg(long, default_value_t = 10)]
    churn_selectors: usize,
}

#[derive(Args, Clone)]
struct TablesArgs {
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    run: RunArgs,
    /// Keys of the table that is built and measured for memory.
    #[arg(long, default_value_t = 100_000)]
    keys: usize,
    /// Record value size in bytes.
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// Streams that take a whole-topic snapshot at once.
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    /// Keys of the topic they snapshot.
    #[arg(long, default_value_t = 10_000)]
    snapshot_keys: usize,
    /// Records a second on the hot topic.
    #[arg(long, default_value_t = 10_000)]
    hot_rate: usize,
    /// Keys of the hot topic.
    #[arg(long, default_value_t = 1000)]
    hot_keys: usize,
    /// Seconds the hot topic runs.
    #[arg(long, default_value_t = 20.0)]
    hot_seconds: f64,
    /// Slow readers of the hot topic (half conflating).
    #[arg(long, default_value_t = 100)]
    slow: usize,
    /// What each slow reader drains a second.
    #[arg(long, default_value_t = 20_000)]
    slow_bytes_per_second: usize,
    /// The hot topic is not a table (no conflation): the baseline.
    #[arg(long)]
    hot_plain: bool,
}

#[derive(Args, Clone)]
struct DecodeArgs {
    #[command(flatten)]
    run: RunArgs,
    /// Record size in bytes (the Avro form; the others carry the same fields).
    #[arg(long, default_value_t = 200)]
    size: usize,
    /// Distinct records decoded per round.
    #[arg(long, default_value_t = 20_000)]
    records: usize,
    #[arg(long, default_value_t = 9)]
    rounds: usize,
    /// Accepted for the same command line as the other scenarios; unused.
    #[arg(long)]
    scratch: Option<PathBuf>,
}

#[derive(Args, Clone)]
struct KeyedArgs {
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    run: RunArgs,
    #[command(flatten)]
    flow: FlowArgs,
    /// Clients, one key each (keyed: 15,000; light: 1,000).
    #[arg(long)]
    clients: Option<usize>,
    /// Records/s over all keys (keyed: 5,000; light: 1,000).
    #[arg(long)]
    rate: Option<f64>,
    /// Seconds measured (keyed: 8; light: 8).
    #[arg(long)]
    seconds: Option<f64>,
    /// Keys are chosen to fall in this many of the topic's partitions
    /// (keyed: half of them; light: all), to show that only those are fetched.
    #[arg(long)]
    needed_partitions: Option<i32>,
}

#[derive(Args, Clone)]
struct LatencyArgs {
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    run: RunArgs,
    #[command(flatten)]
    flow: FlowArgs,
    /// Subscribe to this key only (topic/key) instead of the whole topic.
    #[arg(long)]
    key: Option<String>,
    /// Without --key: keys the producer cycles through.
    #[arg(long, default_value_t = 16)]
    keys: usize,
    #[arg(long, default_value_t = 1)]
    clients: usize,
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
}

#[derive(Args, Clone)]
struct ResumeArgs {
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    run: RunArgs,
    #[arg(long, default_value_t = 10_000)]
    clients: usize,
    /// Distinct keys the clients spread over.
    #[arg(long, default_value_t = 1000)]
    keys: usize,
    /// Records/s over all keys, while the clients are away and after.
    #[arg(long, default_value_t = 2000.0)]
    rate: f64,
    /// Seconds the clients stay away.
    #[arg(long, default_value_t = 5.0)]
    behind: f64,
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// Seconds after which a client that is not live counts as failed.
    #[arg(long, default_value_t = 60.0)]
    timeout: f64,
}

#[derive(Args, Clone)]
struct SmokeArgs {
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    run: RunArgs,
    /// Clients of the broadcast part (the keyed and resume parts use half).
    #[arg(long, default_value_t = 200)]
    clients: usize,
}

/// Exits 1 if a scenario found a problem (`ok` false in its result).
fn exit_on(result: anyhow::Result<Value>) -> anyhow::Result<()> {
    let v = result?;
    if v["ok"].as_bool() == Some(false) {
        std::process::exit(1);
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Cmd::Worker = cli.command {
        worker::main();
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match cli.command {
            Cmd::Idle(a) => exit_on(scenarios::idle(a).await),
            Cmd::Broadcast(a) => exit_on(scenarios::broadcast(a).await),
            Cmd::Decode(a) => exit_on(scenarios::decode(a).await),
            Cmd::Filters(a) => exit_on(scenarios::filters(a).await),
            Cmd::Tables(a) => exit_on(scenarios::tables(a).await),
            Cmd::PresenceChurn(a) => exit_on(scenarios::churn_scenario(a).await),
            Cmd::Floor(a) => exit_on(scenarios::floor(a).await),
            Cmd::Publish(a) => exit_on(scenarios::publish(a).await),
            Cmd::SideBySide(a) => exit_on(scenarios::side_by_side(a).await),
            Cmd::Keyed(a) => exit_on(scenarios::keyed(a, false).await),
            Cmd::Light(a) => exit_on(scenarios::keyed(a, true).await),
            Cmd::Latency(a) => exit_on(scenarios::latency(a).await),
            Cmd::Resume(a) => exit_on(scenarios::resume(a).await),
            Cmd::Smoke(a) => {
                if !scenarios::smoke(a).await? {
                    std::process::exit(1);
                }
                Ok(())
            }
            Cmd::CursorSizes => {
                scenarios::cursor_sizes();
                Ok(())
            }
            Cmd::Worker => unreachable!("handled above"),
        }
    })
}
