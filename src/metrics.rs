//! Every Prometheus metric a node exports, in one place.
//!
//! Each node owns its own `prometheus::Registry` (tests run several nodes in
//! one process). Counters are bumped where the thing happens; the ingest
//! thread adds up per batch rather than per event.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

pub struct Metrics {
    pub registry: Registry,
    pub connections: IntGauge,
    pub subscriptions: IntGaugeVec,
    pub assigned_partitions: IntGauge,
    pub records_consumed: IntCounter,
    pub events_delivered: IntCounter,
    pub bytes_delivered: IntCounter,
    pub slow_disconnects: IntCounter,
    pub stalled_disconnects: IntCounter,
    pub delivery_latency: Histogram,
    pub own_latency: Histogram,
    pub partition_lag: IntGaugeVec,
    pub replay_buffer_hits: IntCounter,
    pub catchup_reads: IntCounter,
    pub catchup_readers: IntGauge,
    pub gaps: IntCounter,
    pub published: IntCounter,
    pub publish_failures: IntCounter,
    pub kafka_errors: IntCounter,
    pub http_rejections: IntCounter,
    pub registry_fetches: IntCounterVec,
    pub schemas_cached: IntGauge,
    pub records_decoded: IntCounter,
    pub undecodable_records: IntCounter,
    pub held_partitions: IntGauge,
    pub filter_errors: IntCounter,
    pub tables_building: IntGauge,
    pub table_failures: IntCounter,
    pub table_keys: IntGaugeVec,
    pub table_bytes: IntGaugeVec,
    pub snapshots: IntCounter,
    pub resyncs: IntCounter,
    pub conflated: IntCounter,
    pub queued_bytes: IntGauge,
    pub presence_records: IntCounter,
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric name");
    registry
        .register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric name");
    registry
        .register(Box::new(g.clone()))
        .expect("metric registered once");
    g
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric name");
    registry
        .register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric name");
    registry
        .register(Box::new(g.clone()))
        .expect("metric registered once");
    g
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let delivery_latency = Histogram::with_opts(
            HistogramOpts::new(
                "herald_delivery_latency_seconds",
                "Kafka record timestamp to the socket write that carried it (oldest record of each write)",
            )
            .buckets(vec![
                0.001, 0.002, 0.005, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
        )
        .expect("valid histogram");
        let own_latency = Histogram::with_opts(
            HistogramOpts::new(
                "herald_own_latency_seconds",
                "herald's own share: the node consuming a record to the socket write that carries it (oldest record of each write)",
            )
            .buckets(vec![
                0.000_05, 0.000_1, 0.000_2, 0.000_3, 0.000_5, 0.000_75, 0.001, 0.001_5, 0.002,
                0.003, 0.005, 0.007_5, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0,
            ]),
        )
        .expect("valid histogram");
        registry
            .register(Box::new(own_latency.clone()))
            .expect("metric registered once");
        registry
            .register(Box::new(delivery_latency.clone()))
            .expect("metric registered once");
        Metrics {
            connections: gauge(&registry, "herald_connections", "Open SSE streams"),
            subscriptions: gauge_vec(
                &registry,
                "herald_subscriptions",
                "Open SSE streams per topic they read",
                &["topic"],
            ),
            assigned_partitions: gauge(
                &registry,
                "herald_assigned_partitions",
                "Topic-partitions the node's consumer reads",
            ),
            records_consumed: counter(
                &registry,
                "herald_records_consumed_total",
                "Records read by the node's live consumer",
            ),
            events_delivered: counter(
                &registry,
                "herald_events_delivered_total",
                "Events queued to connections (one per record per connection)",
            ),
            bytes_delivered: counter(
                &registry,
                "herald_bytes_delivered_total",
                "Bytes written to SSE streams",
            ),
            slow_disconnects: counter(
                &registry,
                "herald_slow_disconnects_total",
                "Streams ended because the client fell behind its queue bound",
            ),
            stalled_disconnects: counter(
                &registry,
                "herald_stalled_disconnects_total",
                "Streams closed because a write to the client took longer than the write timeout",
            ),
            delivery_latency,
            own_latency,
            partition_lag: gauge_vec(
                &registry,
                "herald_partition_lag_records",
                "High watermark minus the live position, per assigned partition",
                &["topic", "partition"],
            ),
            replay_buffer_hits: counter(
                &registry,
                "herald_replay_buffer_hits_total",
                "Resumes served from the recent-records buffer",
            ),
            catchup_reads: counter(
                &registry,
                "herald_catchup_kafka_reads_total",
                "Catch-up passes that read a partition from Kafka",
            ),
            catchup_readers: gauge(
                &registry,
                "herald_catchup_readers",
                "Catch-up readers reading from Kafka right now",
            ),
            gaps: counter(
                &registry,
                "herald_gaps_total",
                "herald.gap events sent (resume point no longer in Kafka)",
            ),
            published: counter(
                &registry,
                "herald_published_total",
                "Records produced through POST /v1/topics",
            ),
            publish_failures: counter(
                &registry,
                "herald_publish_failures_total",
                "Publish requests Kafka did not acknowledge",
            ),
            kafka_errors: counter(
                &registry,
                "herald_kafka_errors_total",
                "Errors reported by the Kafka client",
            ),
            http_rejections: counter(
                &registry,
                "herald_http_rejections_total",
                "Requests answered with a 4xx or 5xx status",
            ),
            registry_fetches: counter_vec(
                &registry,
                "herald_schema_registry_fetches_total",
                "Schema fetches from the registry, by outcome (ok, not_found, invalid, unreachable)",
                &["outcome"],
            ),
            schemas_cached: gauge(
                &registry,
                "herald_schemas_cached",
                "Compiled schemas held, by id",
            ),
            records_decoded: counter(
                &registry,
                "herald_records_decoded_total",
                "Records whose key or value was decoded through a schema (once per record read)",
            ),
            undecodable_records: counter(
                &registry,
                "herald_undecodable_records_total",
                "Records sent as herald.undecodable (unknown schema id, or bytes that do not decode)",
            ),
            held_partitions: gauge(
                &registry,
                "herald_held_partitions",
                "Live partitions waiting for a schema the registry cannot give yet",
            ),
            filter_errors: counter(
                &registry,
                "herald_filter_errors_total",
                "where= evaluations that failed on a record (missing field, wrong type): counted as no match",
            ),
            tables_building: gauge(
                &registry,
                "herald_tables_building",
                "Table partitions being read from their log start",
            ),
            table_failures: counter(
                &registry,
                "herald_table_failures_total",
                "Tables dropped because they did not fit --table-max-bytes",
            ),
            table_keys: gauge_vec(
                &registry,
                "herald_table_keys",
                "Keys held in this node's tables, per topic",
                &["topic"],
            ),
            table_bytes: gauge_vec(
                &registry,
                "herald_table_bytes",
                "Bytes held in this node's tables, per topic",
                &["topic"],
            ),
            snapshots: counter(
                &registry,
                "herald_snapshots_total",
                "Snapshots delivered (snapshot=true, and re-syncs)",
            ),
            resyncs: counter(
                &registry,
                "herald_resyncs_total",
                "Table streams whose cursor was below the log start: re-synced with a snapshot",
            ),
            conflated: counter(
                &registry,
                "herald_conflated_records_total",
                "Queued records replaced by a newer one of their key (conflate=true, max-rate=)",
            ),
            presence_records: counter(
                &registry,
                "herald_presence_records_total",
                "Records this node wrote to the presence topic (counts, heartbeats, tombstones)",
            ),
            queued_bytes: gauge(
                &registry,
                "herald_queued_bytes",
                "Bytes waiting in client queues (frames, and conflated records pending), at scrape time",
            ),
            registry,
        }
    }

    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
