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
    /// Mint an HS256 token for development and tests.
    Token(TokenArgs),
}

#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// The node's HS256 secret.
    #[arg(long, env = "HERALD_AUTH_HS256_SECRET", hide_env_values = true)]
    pub secret: String,
    /// Selector patterns the token may subscribe to (repeatable).
    #[arg(long)]
    pub subscribe: Vec<String>,
    /// Selector patterns the token may publish to (repeatable).
    #[arg(long)]
    pub publish: Vec<String>,
    /// The token may read /metrics and /v1/stats on the public port.
    #[arg(long)]
    pub ops: bool,
    /// Lifetime of the token.
    #[arg(long, default_value = "1h", value_parser = duration)]
    pub ttl: Duration,
    #[arg(long)]
    pub issuer: Option<String>,
    #[arg(long)]
    pub audience: Option<String>,
    /// A mandatory CEL filter on every record the token reads (`herald.where`).
    #[arg(long = "where")]
    pub filter: Option<String>,
    /// Who holds the token (`sub`): presence lists it with --presence-users.
    #[arg(long)]
    pub sub: Option<String>,
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

    /// A second address serving only the operations views (/metrics,
    /// /v1/stats, /healthz, /readyz) to anyone who reaches it: bind it to a
    /// private interface. On the public port, with auth configured, those
    /// views need a token with `"ops": true`.
    #[arg(long, env = "HERALD_OPS_LISTEN")]
    pub ops_listen: Option<SocketAddr>,

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

    /// Longest a single write to a client may take. A client that does not
    /// read (its socket stays full) is disconnected after this, with its
    /// cursor intact; so is one whose queue overflowed but whose last write
    /// never finishes.
    #[arg(long, env = "HERALD_WRITE_TIMEOUT", default_value = "5s", value_parser = duration)]
    pub write_timeout: Duration,

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

    /// After the drain, how long the node waits for its last responses and
    /// tasks before it ends what is left and stops its Kafka clients.
    #[arg(long, env = "HERALD_SHUTDOWN_GRACE", default_value = "10s", value_parser = duration)]
    pub shutdown_grace: Duration,

    /// HS256 secret for bearer tokens (at least 32 bytes). With no secret and
    /// no public key, the node is open to anyone.
    #[arg(long, env = "HERALD_AUTH_HS256_SECRET", hide_env_values = true)]
    pub auth_hs256_secret: Option<String>,

    /// PEM public key (RSA for RS256, P-256 EC for ES256) for bearer tokens; repeatable.
    #[arg(
        long = "auth-public-key",
        env = "HERALD_AUTH_PUBLIC_KEYS",
        value_delimiter = ','
    )]
    pub auth_public_keys: Vec<std::path::PathBuf>,

    /// Required `iss` claim.
    #[arg(long, env = "HERALD_AUTH_ISSUER")]
    pub auth_issuer: Option<String>,

    /// Required `aud` claim.
    #[arg(long, env = "HERALD_AUTH_AUDIENCE")]
    pub auth_audience: Option<String>,

    /// Cookie that may carry the token.
    #[arg(long, env = "HERALD_AUTH_COOKIE", default_value = "herald_token")]
    pub auth_cookie: String,

    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    #[arg(long, env = "HERALD_AUTH_LEEWAY_SECONDS", default_value_t = 0)]
    pub auth_leeway_seconds: u64,

    /// Selector patterns anyone may subscribe to without a token (e.g. `news,scores/*`).
    #[arg(long, env = "HERALD_ANONYMOUS_TOPICS", value_delimiter = ',')]
    pub anonymous_topics: Vec<String>,

    /// End every stream after this long (the client reconnects with its cursor).
    #[arg(long, env = "HERALD_MAX_STREAM_LIFETIME", value_parser = duration)]
    pub max_stream_lifetime: Option<Duration>,

    /// Origins allowed to read cross-origin (`*` for any, then without credentials).
    #[arg(long, env = "HERALD_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,

    /// Let allowed origins send credentials (cookies).
    #[arg(long, env = "HERALD_CORS_CREDENTIALS", default_value_t = true, action = clap::ArgAction::Set)]
    pub cors_credentials: bool,

    /// Streams a node holds at most (0: no limit). Beyond it, 200 with `retry:` and close.
    #[arg(long, env = "HERALD_MAX_CONNECTIONS", default_value_t = 19_000)]
    pub max_connections: usize,

    /// Streams one client address may hold (0: no limit). Beyond it, 429.
    #[arg(long, env = "HERALD_MAX_CONNECTIONS_PER_IP", default_value_t = 0)]
    pub max_connections_per_ip: usize,

    /// Header set by a trusted proxy with the client address (e.g. x-forwarded-for).
    /// Only honoured when set.
    #[arg(long, env = "HERALD_TRUSTED_PROXY_HEADER")]
    pub trusted_proxy_header: Option<String>,

    /// New streams accepted per second (0: no limit). Beyond it, 200 with `retry:` and close.
    #[arg(long, env = "HERALD_MAX_NEW_STREAMS_PER_SECOND", default_value_t = 0)]
    pub max_new_streams_per_second: u32,

    /// Selectors one stream may hold.
    #[arg(long, env = "HERALD_MAX_SELECTORS", default_value_t = 64)]
    pub max_selectors: usize,

    /// Partitions one stream may read (a whole topic counts all of its
    /// partitions, a key one). Bounds the work of opening a stream and the
    /// length of its cursor: at most 10 bytes per partition, base64.
    #[arg(long, env = "HERALD_MAX_STREAM_PARTITIONS", default_value_t = 256)]
    pub max_stream_partitions: usize,

    /// Longest key in a selector, in bytes.
    #[arg(long, env = "HERALD_MAX_KEY_BYTES", default_value_t = 1024)]
    pub max_key_bytes: usize,

    /// Longest request target (path and query), in bytes. Beyond it, 414.
    #[arg(long, env = "HERALD_MAX_URL_BYTES", default_value_t = 8192)]
    pub max_url_bytes: usize,

    /// Largest request head (request line and headers), in bytes; at least 8192. Beyond it, 431.
    #[arg(long, env = "HERALD_MAX_HEADER_BYTES", default_value_t = 16 * 1024)]
    pub max_header_bytes: usize,

    /// Schema registry (Confluent's REST API: Confluent, Karapace, Apicurio,
    /// Redpanda) for records in Confluent's framing. Without it, records
    /// pass through as bytes.
    #[arg(long, env = "HERALD_SCHEMA_REGISTRY")]
    pub schema_registry: Option<String>,

    /// `USER:PASSWORD` for the schema registry (HTTP basic auth).
    #[arg(
        long,
        env = "HERALD_SCHEMA_REGISTRY_BASIC_AUTH",
        hide_env_values = true
    )]
    pub schema_registry_basic_auth: Option<String>,

    /// Bearer token for the schema registry.
    #[arg(long, env = "HERALD_SCHEMA_REGISTRY_TOKEN", hide_env_values = true)]
    pub schema_registry_token: Option<String>,

    /// PEM file of CA certificates to trust for an https:// registry.
    #[arg(long, env = "HERALD_SCHEMA_REGISTRY_CA")]
    pub schema_registry_ca: Option<std::path::PathBuf>,

    /// How long one registry request may take.
    #[arg(long, env = "HERALD_SCHEMA_REGISTRY_TIMEOUT", default_value = "5s", value_parser = duration)]
    pub schema_registry_timeout: Duration,

    /// Per-topic value formats, `PATTERN=FORMAT,…` (raw, auto, avro,
    /// protobuf, json-schema; patterns as in grants, the closest wins).
    /// Default: `*=auto` with a registry, else raw.
    #[arg(long, env = "HERALD_VALUE_FORMAT", value_delimiter = ',')]
    pub value_format: Vec<String>,

    /// Per-topic key formats, as `--value-format`. Default: raw.
    #[arg(long, env = "HERALD_KEY_FORMAT", value_delimiter = ',')]
    pub key_format: Vec<String>,

    /// Distinct where= expressions and fields= projections a node keeps in
    /// use (each costs an evaluation per record); past it, 429.
    #[arg(long, env = "HERALD_MAX_FILTERS", default_value_t = 10_000)]
    pub max_filters: usize,

    /// Table topics, `PATTERN,…` (patterns as in grants): topics whose
    /// records mean "latest value per key" (usually compacted). Streams on
    /// them can start with a snapshot, conflate, and re-sync.
    #[arg(long, env = "HERALD_TABLE_TOPICS", value_delimiter = ',')]
    pub table_topics: Vec<String>,

    /// Bytes this node's tables may hold together; a table that does not
    /// fit fails (and says so to the streams that want it).
    #[arg(long, env = "HERALD_TABLE_MAX_BYTES", default_value_t = 256 << 20)]
    pub table_max_bytes: usize,

    /// Compacted topic the nodes share presence through (created when
    /// missing); empty turns presence off.
    #[arg(long, env = "HERALD_PRESENCE_TOPIC", default_value = "herald.presence")]
    pub presence_topic: String,

    /// Partitions of the presence topic when herald creates it.
    #[arg(long, env = "HERALD_PRESENCE_PARTITIONS", default_value_t = 8)]
    pub presence_partitions: i32,

    /// Presence lists the users (the token's `sub`) of each selector, and
    /// who joined and left.
    #[arg(long, env = "HERALD_PRESENCE_USERS")]
    pub presence_users: bool,

    /// How often a node writes its presence heartbeat.
    #[arg(long, env = "HERALD_PRESENCE_HEARTBEAT", default_value = "1s", value_parser = duration)]
    pub presence_heartbeat: Duration,

    /// A node whose heartbeat is older than this is gone: its counts expire.
    #[arg(long, env = "HERALD_PRESENCE_TTL", default_value = "5s", value_parser = duration)]
    pub presence_ttl: Duration,

    /// Compiled schemas a node keeps (by id); the least recently used
    /// beyond it are dropped, never one in use.
    #[arg(long, env = "HERALD_SCHEMA_CACHE_SIZE", default_value_t = 10_000)]
    pub schema_cache_size: usize,

    /// Topic to create on the embedded Kafka at start-up (for `make run`).
    #[arg(long, env = "HERALD_DEMO_TOPIC")]
    pub demo_topic: Option<String>,

    /// Whether a node with --demo-topic also writes sample sensor readings
    /// to it (one every 0.4 s). Benchmarks turn it off: their topic must
    /// hold their own records only.
    #[arg(
        long,
        env = "HERALD_DEMO_PRODUCER",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub demo_producer: bool,

    /// Partitions of topics the embedded Kafka creates.
    #[arg(long, env = "HERALD_EMBEDDED_PARTITIONS", default_value_t = 8)]
    pub embedded_partitions: i32,
}

impl Config {
    /// The decoder's settings.
    pub fn formats(&self) -> crate::formats::FormatsConfig {
        crate::formats::FormatsConfig {
            registry: self
                .schema_registry
                .as_ref()
                .map(|url| crate::formats::RegistryConfig {
                    url: url.clone(),
                    basic_auth: self.schema_registry_basic_auth.clone(),
                    bearer_token: self.schema_registry_token.clone(),
                    ca_file: self.schema_registry_ca.clone(),
                    timeout: self.schema_registry_timeout,
                }),
            value_formats: self.value_format.clone(),
            key_formats: self.key_format.clone(),
            cache_capacity: self.schema_cache_size,
        }
    }

    /// Checks settings that depend on each other; says which flag to change.
    pub fn validate(&self) -> anyhow::Result<()> {
        let longest = crate::cursor::longest_text(self.max_stream_partitions);
        let room = self
            .max_header_bytes
            .max(8192)
            .saturating_sub(self.max_url_bytes);
        if longest > crate::cursor::MAX_TEXT_LEN || longest > room {
            anyhow::bail!(
                "--max-stream-partitions {} allows cursors of up to {longest} bytes, more than a resume can send back (cursors up to {} bytes, and what --max-header-bytes leaves beside --max-url-bytes: {room}); lower it or raise --max-header-bytes",
                self.max_stream_partitions,
                crate::cursor::MAX_TEXT_LEN,
            );
        }
        if self.max_stream_partitions == 0 {
            anyhow::bail!("--max-stream-partitions must be at least 1");
        }
        if !self.presence_topic.is_empty() {
            if !(1..=1000).contains(&self.presence_partitions) {
                anyhow::bail!("--presence-partitions must be 1 to 1000");
            }
            if self.presence_ttl <= self.presence_heartbeat {
                anyhow::bail!("--presence-ttl must be longer than --presence-heartbeat");
            }
        }
        Ok(())
    }

    /// The defaults, for a node on `listen` (tests and embedding). Unlike
    /// the command line, this reads no `HERALD_*` environment variable: a
    /// developer's settings must not leak into tests.
    pub fn for_listen(listen: SocketAddr) -> Config {
        use clap::{CommandFactory, FromArgMatches};
        let command = Cli::command().mut_subcommand("serve", |serve| {
            serve.mut_args(|arg| arg.env(None::<&'static str>))
        });
        let parsed = command
            .try_get_matches_from(["herald", "serve", "--listen", &listen.to_string()])
            .and_then(|m| Cli::from_arg_matches(&m));
        match parsed.map(|cli| cli.command) {
            Ok(Command::Serve(config)) => *config,
            // The defaults and a socket address always parse.
            _ => unreachable!("the defaults parse"),
        }
    }
}
