//! Configuration: one struct, parsed once from flags and `HERALD_*`
//! environment variables, with the defaults a first-time user wants.
//! The rest of the code receives typed values and never reads the environment.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "herald",
    version,
    about = "Kafka → Server-Sent Events, lossless resume on any node"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve SSE streams from Kafka.
    Serve(Box<Config>),
}

fn duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|e| format!("`{text}` is not a duration like 15s or 500ms: {e}"))
}

fn property(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
        _ => Err(format!(
            "`{text}` is not a librdkafka property of the form key=value"
        )),
    }
}

#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Address to listen on for HTTP.
    #[arg(long, env = "HERALD_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Kafka bootstrap servers (host:port,...). Without it the node starts an
    /// embedded Kafka (librdkafka's mock cluster, in process).
    #[arg(long, env = "HERALD_BROKERS")]
    pub brokers: Option<String>,

    /// This node's name: its Kafka client id and consumer group id prefix.
    #[arg(long, env = "HERALD_NODE_ID", default_value = "herald")]
    pub node_id: String,

    /// Any librdkafka property for every Kafka client (TLS, SASL, tuning), repeatable.
    #[arg(long = "kafka-property", env = "HERALD_KAFKA_PROPERTIES", value_delimiter = ',', value_parser = property)]
    pub kafka_properties: Vec<(String, String)>,

    /// Interval between heartbeat comments on idle streams.
    #[arg(long, env = "HERALD_HEARTBEAT", default_value = "15s", value_parser = duration)]
    pub heartbeat: Duration,

    /// How often keyed streams get an id-only event moving their cursor past
    /// records that did not match (so a resume does not rescan).
    #[arg(long, env = "HERALD_IDLE_ID_INTERVAL", default_value = "5s", value_parser = duration)]
    pub idle_id_interval: Duration,

    /// Bytes a connection may have queued before it is cut off as too slow.
    #[arg(long, env = "HERALD_QUEUE_BYTES", default_value_t = 1 << 20)]
    pub queue_bytes: usize,

    /// How long a partition nobody wants stays assigned (absorbs churn).
    #[arg(long, env = "HERALD_PARTITION_LINGER", default_value = "30s", value_parser = duration)]
    pub partition_linger: Duration,

    /// Bytes of recent records kept per partition to serve resumes without Kafka.
    #[arg(long, env = "HERALD_REPLAY_BUFFER_BYTES", default_value_t = 1 << 20)]
    pub replay_buffer_bytes: usize,

    /// Records kept per partition to serve resumes without Kafka.
    #[arg(long, env = "HERALD_REPLAY_BUFFER_RECORDS", default_value_t = 4096)]
    pub replay_buffer_records: usize,

    /// Kafka consumers shared by all resuming connections that are too far behind for the buffer.
    #[arg(long, env = "HERALD_CATCHUP_READERS", default_value_t = 4)]
    pub catchup_readers: usize,

    /// Largest POST /v1/topics body.
    #[arg(long, env = "HERALD_MAX_BODY_BYTES", default_value_t = 1 << 20)]
    pub max_body_bytes: usize,

    /// Record header whose value becomes the SSE event type.
    #[arg(long, env = "HERALD_EVENT_HEADER", default_value = "event")]
    pub event_header: String,

    /// Reconnection delay sent to clients (`retry:`), in milliseconds.
    #[arg(long, env = "HERALD_RETRY_MS", default_value_t = 2000)]
    pub retry_ms: u64,

    /// Time a client has to send its request headers.
    #[arg(long, env = "HERALD_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub header_read_timeout: Duration,

    /// On SIGTERM, open streams are closed spread over this window.
    #[arg(long, env = "HERALD_DRAIN_WINDOW", default_value = "10s", value_parser = duration)]
    pub drain_window: Duration,

    /// Topic to create on the embedded Kafka at start-up (for `make run`).
    #[arg(long, env = "HERALD_DEMO_TOPIC")]
    pub demo_topic: Option<String>,

    /// Partitions of topics the embedded Kafka creates.
    #[arg(long, env = "HERALD_EMBEDDED_PARTITIONS", default_value_t = 8)]
    pub embedded_partitions: i32,
}

impl Config {
    /// Defaults for a node on `listen` (tests and embedding).
    pub fn for_listen(listen: SocketAddr) -> Config {
        let cli = Cli::parse_from(["herald", "serve", "--listen", &listen.to_string()]);
        match cli.command {
            Command::Serve(config) => *config,
        }
    }
}
