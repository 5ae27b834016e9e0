//! A node: the composition root. It builds every part from the
//! configuration, wires each handler to only what it uses, starts the
//! threads and tasks, and stops them in order on shutdown.
//!
//! Shutdown is one cancellation tree, stopped stage by stage:
//!
//! 1. `drain`: the node turns unready; new streams are answered `200`,
//!    `retry:` and an end; open streams are closed spread over the drain
//!    window, each with a jittered `retry:`, so their clients come back
//!    through the load balancer without a thundering herd.
//! 2. `accept` and `background`: the listeners stop, hyper connections shut
//!    down gracefully, the sweeps end. The node waits for its tasks for at
//!    most the shutdown grace, then ends whatever streams are left.
//! 3. `kafka`: the ingest thread and the catch-up readers stop, the Kafka
//!    clients are dropped, and only then the embedded Kafka: a client whose
//!    broker vanished would log connection errors on its way out.
//!
//! Dropping a `Node` without `shutdown` cancels the whole tree at once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::BaseConsumer;
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;

use crate::admission::Admission;
use crate::api::events::Events;
use crate::api::operations::Operations;
use crate::api::publish::Publisher;
use crate::api::Health;
use crate::auth::{Auth, AuthConfig};
use crate::catchup::Catchup;
use crate::config::Config;
use crate::cors::Cors;
use crate::embedded::EmbeddedKafka;
use crate::filters::{FilterLimits, Filters};
use crate::formats::Decoder;
use crate::http::{self, Edge, EdgeLimits};
use crate::ingest::Ingest;
use crate::kafka::{self, Kafka};
use crate::metrics::Metrics;
use crate::presence::{Presence, PresenceConfig};
use crate::queue::End;
use crate::registry::{Registry, ReplayBufferLimits, Tables};
use crate::subscribe::{SelectorLimits, Subscriptions};
use crate::{sse, sweeps};

/// How often the node checks that Kafka answers (and refreshes its topic table).
const KAFKA_CHECK_EVERY: Duration = Duration::from_secs(2);
/// After the grace, how long the streams that were ended get to go.
const LAST_WORDS: Duration = Duration::from_secs(1);
/// How long a node waits for a presence topic it created to show up.
const PRESENCE_TOPIC_WAIT: Duration = Duration::from_secs(10);
/// Pause before opening the presence topic again after a failure.
const PRESENCE_RETRY: Duration = Duration::from_secs(2);

/// The stages of a node's shutdown: children of one root.
struct Shutdown {
    drain: CancellationToken,
    accept: CancellationToken,
    background: CancellationToken,
    kafka: CancellationToken,
    /// Cancels the whole tree if the node is dropped without `shutdown`.
    _root: DropGuard,
}

impl Shutdown {
    fn new() -> Shutdown {
        let root = CancellationToken::new();
        Shutdown {
            drain: root.child_token(),
            accept: root.child_token(),
            background: root.child_token(),
            kafka: root.child_token(),
            _root: root.drop_guard(),
        }
    }
}

/// A running node.
pub struct Node {
    addr: SocketAddr,
    ops_addr: Option<SocketAddr>,
    bootstrap: String,
    embedded: Option<Arc<EmbeddedKafka>>,
    edge: Arc<Edge>,
    registry: Arc<Registry>,
    ingest: Arc<Ingest>,
    catchup: Arc<Catchup>,
    tasks: TaskTracker,
    shutdown: Shutdown,
    drain_window: Duration,
    grace: Duration,
    retry_ms: u64,
}

/// Runs a node until `stop` is cancelled (SIGTERM, in `main`), then shuts
/// it down.
pub async fn run(config: Config, stop: CancellationToken) -> anyhow::Result<()> {
    let node = Node::start(config).await?;
    stop.cancelled().await;
    node.shutdown().await;
    Ok(())
}

impl Node {
    /// Starts a node: Kafka clients (an embedded Kafka without `--brokers`),
    /// the ingest thread, the catch-up readers, the sweeps and the listeners.
    pub async fn start(config: Config) -> anyhow::Result<Node> {
        config.validate()?;
        let shutdown = Shutdown::new();
        let tasks = TaskTracker::new();
        let (embedded, bootstrap) = kafka_cluster(&config).await?;
        let metrics = Arc::new(Metrics::new());
        let registry = Arc::new(Registry::new(
            ReplayBufferLimits {
                bytes: config.replay_buffer_bytes,
                records: config.replay_buffer_records,
            },
            config.queue_bytes,
            metrics.clone(),
            Tables::new(&table_patterns(&config), config.table_max_bytes),
        ));
        let decoder = Arc::new(Decoder::new(
            &config.formats(),
            tokio::runtime::Handle::current(),
            metrics.clone(),
        )?);
        let readers = Readers::start(
            &config,
            &bootstrap,
            &registry,
            &metrics,
            &decoder,
            &shutdown.kafka,
        )?;
        let admission = Arc::new(Admission::new(
            config.max_connections,
            config.max_connections_per_ip,
            config.trusted_proxy_header.as_deref(),
            config.max_new_streams_per_second,
        )?);
        let health = Arc::new(Health::new(shutdown.drain.clone(), admission.clone()));
        health.set_kafka_reachable(readers.kafka.refresh().await);
        let presence = presence(&config, &bootstrap, &registry, &metrics)?;
        let wiring = Wiring {
            config: &config,
            bootstrap: &bootstrap,
            embedded: &embedded,
            registry: &registry,
            readers: &readers,
            metrics: &metrics,
            health: &health,
            admission,
            presence: presence.clone(),
        };
        let edge = Arc::new(wiring.edge()?);
        let listener = http::bind(config.listen)?;
        let addr = listener.local_addr()?;
        let ops_listener = config.ops_listen.map(http::bind).transpose()?;
        let ops_addr = ops_listener.as_ref().map(|l| l.local_addr()).transpose()?;
        spawn_sweeps(&tasks, &config, &registry, &metrics, &shutdown.background);
        if let Some(presence) = &presence {
            let topic = PresenceTopic {
                config: config.clone(),
                bootstrap: bootstrap.clone(),
                embedded: embedded.clone(),
                registry: registry.clone(),
                kafka: readers.kafka.clone(),
                ingest: readers.ingest.clone(),
            };
            // A draining node leaves presence at once: its streams go to
            // other nodes, which count them there.
            tasks.spawn(open_presence(
                topic,
                presence.clone(),
                shutdown.drain.clone(),
            ));
        }
        if let Some(topic) = config.demo_topic.as_ref().filter(|_| config.demo_producer) {
            tasks.spawn(demo_producer(
                kafka::producer(&config, &bootstrap)?,
                topic.clone(),
                shutdown.background.clone(),
            ));
        }
        tasks.spawn(watch_kafka(
            readers.kafka.clone(),
            health,
            shutdown.background.clone(),
        ));
        tasks.spawn(http::serve(
            edge.clone(),
            listener,
            shutdown.accept.clone(),
            tasks.clone(),
        ));
        if let Some(l) = ops_listener {
            tasks.spawn(http::serve_operations(
                edge.clone(),
                l,
                shutdown.accept.clone(),
                tasks.clone(),
            ));
        }
        tracing::info!(
            listen = %addr,
            kafka = %bootstrap,
            embedded = embedded.is_some(),
            "herald is serving on http://{addr}/ with Kafka at {bootstrap}"
        );
        Ok(Node {
            addr,
            ops_addr,
            bootstrap,
            embedded,
            edge,
            registry,
            ingest: readers.ingest,
            catchup: readers.catchup,
            tasks,
            shutdown,
            drain_window: config.drain_window,
            grace: config.shutdown_grace,
            retry_ms: config.retry_ms,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The operations listener's address, when `--ops-listen` is set.
    pub fn ops_addr(&self) -> Option<SocketAddr> {
        self.ops_addr
    }

    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }

    /// Creates a topic on the embedded Kafka.
    pub async fn create_topic(&self, name: &str, partitions: i32) -> anyhow::Result<()> {
        let Some(e) = self.embedded.clone() else {
            anyhow::bail!("this node has no embedded Kafka; create topics on your cluster");
        };
        let name = name.to_owned();
        tokio::task::spawn_blocking(move || e.create_topic(&name, partitions)).await??;
        Ok(())
    }

    /// Drains (closing streams spread over the drain window) and stops
    /// everything, in the order the module doc gives.
    pub async fn shutdown(self) {
        let stages = &self.shutdown;
        stages.drain.cancel();
        tracing::info!(connections = self.registry.connection_count(), window = ?self.drain_window, "draining");
        self.drain().await;
        stages.accept.cancel();
        stages.background.cancel();
        self.tasks.close();
        if tokio::time::timeout(self.grace, self.tasks.wait())
            .await
            .is_err()
        {
            let left = self.registry.connections();
            tracing::warn!(streams = left.len(), grace = ?self.grace, "ending the streams left after the grace");
            for connection in left {
                connection.kill();
            }
            let _ = tokio::time::timeout(LAST_WORDS, self.tasks.wait()).await;
        }
        stages.kafka.cancel();
        let Node {
            edge,
            registry,
            ingest,
            catchup,
            embedded,
            ..
        } = self;
        // Blocking: librdkafka's clients wait for their threads as they go.
        let _ = tokio::task::spawn_blocking(move || {
            catchup.join();
            ingest.join();
            drop((edge, registry, ingest, catchup));
            if let Some(e) = embedded {
                e.stop();
            }
        })
        .await;
        tracing::info!("stopped");
    }

    /// Closes every open stream, spread evenly over the drain window, each
    /// told to come back after a random part of the window.
    async fn drain(&self) {
        let connections = self.registry.connections();
        let n = u32::try_from(connections.len().max(1)).unwrap_or(u32::MAX);
        let window = self.drain_window;
        let spread = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
        let started = tokio::time::Instant::now();
        for (i, connection) in connections.iter().enumerate() {
            let at = started + window * u32::try_from(i).unwrap_or(u32::MAX) / n;
            tokio::time::sleep_until(at).await;
            connection
                .queue
                .end(End::Drain, Some(sse::retry_spread(self.retry_ms, spread)));
        }
    }
}

/// The node's Kafka readers: the live consumer (which also answers the
/// node's metadata and watermark look-ups) on the ingest thread, and the
/// catch-up pool.
struct Readers {
    kafka: Kafka,
    ingest: Arc<Ingest>,
    catchup: Arc<Catchup>,
    decoder: Arc<Decoder>,
}

impl Readers {
    fn start(
        config: &Config,
        bootstrap: &str,
        registry: &Arc<Registry>,
        metrics: &Arc<Metrics>,
        decoder: &Arc<Decoder>,
        stop: &CancellationToken,
    ) -> anyhow::Result<Readers> {
        let consumer: Arc<BaseConsumer> =
            Arc::new(kafka::consumer_config(config, bootstrap, "ingest").create()?);
        let kafka = Kafka::new(consumer.clone());
        let ingest = Arc::new(Ingest::start(
            consumer,
            registry.clone(),
            metrics.clone(),
            decoder.clone(),
            config.partition_linger,
            config.event_header.clone(),
            stop.clone(),
        )?);
        let catchup = Arc::new(Catchup::start(
            config.catchup_readers,
            kafka::consumer_config(config, bootstrap, "catchup"),
            registry.clone(),
            metrics.clone(),
            decoder.clone(),
            config.event_header.clone(),
            stop.clone(),
        )?);
        // Tables are read from their log start by the catch-up readers.
        let readers = Arc::downgrade(&catchup);
        registry.tables().set_builder(Box::new(move |log| {
            if let Some(c) = readers.upgrade() {
                c.build(log);
            }
        }));
        Ok(Readers {
            kafka,
            ingest,
            catchup,
            decoder: decoder.clone(),
        })
    }
}

/// What the handlers are built from: each takes only its part.
struct Wiring<'a> {
    config: &'a Config,
    bootstrap: &'a str,
    embedded: &'a Option<Arc<EmbeddedKafka>>,
    registry: &'a Arc<Registry>,
    readers: &'a Readers,
    metrics: &'a Arc<Metrics>,
    health: &'a Arc<Health>,
    admission: Arc<Admission>,
    presence: Option<Arc<Presence>>,
}

impl Wiring<'_> {
    fn edge(self) -> anyhow::Result<Edge> {
        let config = self.config;
        let auth = Arc::new(auth(config)?);
        let cors = Arc::new(Cors::new(&config.cors_origins, config.cors_credentials));
        let filters = Arc::new(Filters::new(
            FilterLimits {
                max_distinct: config.max_filters,
                ..FilterLimits::default()
            },
            self.metrics,
        ));
        let subscriptions = Arc::new(Subscriptions {
            registry: self.registry.clone(),
            kafka: self.readers.kafka.clone(),
            ingest: self.readers.ingest.clone(),
            catchup: self.readers.catchup.clone(),
            decoder: self.readers.decoder.clone(),
            filters: filters.clone(),
            max_partitions: config.max_stream_partitions,
            retry_ms: config.retry_ms,
            since_supported: self.embedded.is_none(),
        });
        Ok(Edge {
            page: http::page(config.demo_topic.as_deref()),
            events: Events {
                subscriptions,
                auth: auth.clone(),
                admission: self.admission,
                health: self.health.clone(),
                metrics: self.metrics.clone(),
                limits: SelectorLimits {
                    max_selectors: config.max_selectors,
                    max_key_bytes: config.max_key_bytes,
                },
                retry_ms: config.retry_ms,
                max_stream_lifetime: config.max_stream_lifetime,
                presence_topic: self.presence.as_ref().map(|p| Arc::from(p.topic())),
            },
            publisher: Publisher {
                producer: kafka::producer(config, self.bootstrap)?,
                kafka: self.readers.kafka.clone(),
                embedded: self
                    .embedded
                    .clone()
                    .map(|e| (e, config.embedded_partitions)),
                auth: auth.clone(),
                cors: cors.clone(),
                metrics: self.metrics.clone(),
                max_body_bytes: config.max_body_bytes,
            },
            operations: Operations {
                registry: self.registry.clone(),
                health: self.health.clone(),
                auth,
                metrics: self.metrics.clone(),
                node_id: config.node_id.clone(),
                bootstrap: self.bootstrap.to_owned(),
                embedded: self.embedded.is_some(),
                decoder: self.readers.decoder.clone(),
                filters,
                presence: self.presence.clone(),
            },
            cors,
            metrics: self.metrics.clone(),
            limits: EdgeLimits {
                max_head_bytes: config.max_header_bytes.max(8192),
                max_url_bytes: config.max_url_bytes,
                header_read_timeout: config.header_read_timeout,
            },
        })
    }
}

fn auth(config: &Config) -> anyhow::Result<Auth> {
    let auth = Auth::new(&AuthConfig {
        hs256_secret: config.auth_hs256_secret.clone(),
        public_keys: config.auth_public_keys.clone(),
        issuer: config.auth_issuer.clone(),
        audience: config.auth_audience.clone(),
        cookie: config.auth_cookie.clone(),
        anonymous: config.anonymous_topics.clone(),
        leeway_seconds: config.auth_leeway_seconds,
    })?;
    if auth.is_open() {
        tracing::warn!("no auth key configured: every topic is open to anyone (set --auth-hs256-secret or --auth-public-key)");
    }
    Ok(auth)
}

/// `--demo-topic`'s records: a few keyed sensor readings a second, so that
/// a first run shows records arriving without publishing by hand.
async fn demo_producer(
    producer: rdkafka::producer::FutureProducer,
    topic: String,
    stop: CancellationToken,
) {
    const SENSORS: [&str; 5] = ["sensor-1", "sensor-2", "sensor-3", "sensor-4", "sensor-5"];
    let mut tick = tokio::time::interval(Duration::from_millis(400));
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        let sensor = SENSORS[usize::try_from(n % 5).unwrap_or(0)];
        // A slow wave, so the numbers move.
        let phase = (n as f64) / 20.0;
        let value = serde_json::json!({
            "sensor": sensor,
            "temperature": ((20.0 + 3.0 * phase.sin()) * 10.0).round() / 10.0,
            "humidity": ((45.0 + 5.0 * (phase / 2.0).cos()) * 10.0).round() / 10.0,
            "seq": n,
        })
        .to_string();
        let record = rdkafka::producer::FutureRecord::to(&topic)
            .key(sensor)
            .payload(&value);
        if let Err((e, _)) = producer.send_result(record) {
            tracing::debug!(error = %e, "demo record not sent");
        }
        n = n.wrapping_add(1);
    }
}

/// Table topics: the configured ones, and the presence topic.
fn table_patterns(config: &Config) -> Vec<String> {
    let mut patterns = config.table_topics.clone();
    if !config.presence_topic.is_empty() {
        patterns.push(config.presence_topic.clone());
    }
    patterns
}

/// The presence writer and reader, not connected yet (see [`open_presence`]).
fn presence(
    config: &Config,
    bootstrap: &str,
    registry: &Arc<Registry>,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<Option<Arc<Presence>>> {
    if config.presence_topic.is_empty() {
        return Ok(None);
    }
    Ok(Some(Arc::new(Presence::new(
        PresenceConfig {
            topic: config.presence_topic.clone(),
            users: config.presence_users,
            heartbeat: config.presence_heartbeat,
            ttl: config.presence_ttl,
        },
        config.node_id.clone(),
        registry.clone(),
        kafka::producer(config, bootstrap)?,
        metrics.clone(),
    ))))
}

/// What opening the presence topic needs (owned: it runs in a task).
struct PresenceTopic {
    config: Config,
    bootstrap: String,
    embedded: Option<Arc<EmbeddedKafka>>,
    registry: Arc<Registry>,
    kafka: Kafka,
    ingest: Arc<Ingest>,
}

impl PresenceTopic {
    /// Creates the presence topic when missing and reads all its
    /// partitions (pinned, as tables, from their log start).
    async fn open(&self) -> anyhow::Result<Vec<Arc<crate::registry::PartitionLog>>> {
        let config = &self.config;
        let name = config.presence_topic.clone();
        let mut partitions = self.kafka.partition_count(&name).await?;
        if partitions.is_none() {
            match &self.embedded {
                Some(e) => {
                    let (e, n, p) = (e.clone(), name.clone(), config.presence_partitions);
                    tokio::task::spawn_blocking(move || e.create_topic(&n, p)).await??;
                }
                None => kafka::create_compacted_topic(config, &self.bootstrap, &name, config.presence_partitions)
                    .await
                    .map_err(|e| {
                        anyhow::anyhow!("creating the presence topic `{name}`: {e} (create it as a compacted topic, or set --presence-topic '' to turn presence off)")
                    })?,
            }
            let deadline = tokio::time::Instant::now() + PRESENCE_TOPIC_WAIT;
            while partitions.is_none() && tokio::time::Instant::now() < deadline {
                self.kafka.forget(&name);
                partitions = self.kafka.partition_count(&name).await.ok().flatten();
                if partitions.is_none() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        let Some(n) = partitions else {
            anyhow::bail!("the presence topic `{name}` did not appear after it was created");
        };
        let topic: Arc<str> = Arc::from(name.as_str());
        let logs: Vec<_> = (0..n)
            .map(|p| self.registry.pin_forever(&topic, p))
            .collect();
        let marks = self
            .kafka
            .watermarks(
                logs.iter()
                    .map(|l| (l.topic.clone(), l.partition))
                    .collect(),
            )
            .await?;
        for (log, w) in logs.iter().zip(marks) {
            if self.registry.start_partition(log, w.high) {
                self.ingest.assign(log.clone());
            }
        }
        Ok(logs)
    }
}

/// Opens the presence topic (retrying while Kafka cannot be reached: a node
/// starts without it), then runs presence until the node drains.
async fn open_presence(topic: PresenceTopic, presence: Arc<Presence>, drain: CancellationToken) {
    loop {
        match topic.open().await {
            Ok(logs) => {
                presence.set_logs(logs);
                break;
            }
            Err(e) => {
                tracing::warn!(error = %e, "presence topic not open yet; retrying");
                tokio::select! {
                    () = tokio::time::sleep(PRESENCE_RETRY) => {}
                    () = drain.cancelled() => return,
                }
            }
        }
    }
    presence.run(drain).await;
}

/// The brokers to use: `--brokers`, or an embedded Kafka started here (with
/// the demo topic, when asked for).
async fn kafka_cluster(config: &Config) -> anyhow::Result<(Option<Arc<EmbeddedKafka>>, String)> {
    if let Some(brokers) = &config.brokers {
        return Ok((None, brokers.clone()));
    }
    let embedded = Arc::new(tokio::task::spawn_blocking(EmbeddedKafka::start).await??);
    if let Some(topic) = &config.demo_topic {
        let (e, topic, n) = (embedded.clone(), topic.clone(), config.embedded_partitions);
        tokio::task::spawn_blocking(move || e.create_topic(&topic, n)).await??;
    }
    let bootstrap = embedded.bootstrap_servers().to_owned();
    Ok((Some(embedded), bootstrap))
}

/// The passes over every stream (see `sweeps`), until `stop`.
fn spawn_sweeps(
    tasks: &TaskTracker,
    config: &Config,
    registry: &Arc<Registry>,
    metrics: &Arc<Metrics>,
    stop: &CancellationToken,
) {
    tasks.spawn(sweeps::stalled_writers(
        registry.clone(),
        metrics.clone(),
        config.write_timeout,
        stop.clone(),
    ));
    tasks.spawn(sweeps::heartbeats(
        registry.clone(),
        config.heartbeat,
        stop.clone(),
    ));
    tasks.spawn(sweeps::idle_cursors(
        registry.clone(),
        config.idle_id_interval,
        stop.clone(),
    ));
}

/// Refreshes the topic table and Kafka reachability until `stop`.
async fn watch_kafka(kafka: Kafka, health: Arc<Health>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(KAFKA_CHECK_EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        let reachable = kafka.refresh().await;
        if health.set_kafka_reachable(reachable) {
            tracing::info!(reachable, "kafka reachability changed");
        }
    }
}
