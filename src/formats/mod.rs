//! Record formats: values and keys written by Confluent's serializers
//! (Avro, Protobuf, JSON Schema, through a schema registry) decoded once
//! per record into JSON text, before fan-out, and shared by every
//! connection and output format.
//!
//! Each topic has a codec for its values and one for its keys, chosen by
//! pattern (`orders=avro,clicks=protobuf,*=auto`; the closest pattern wins,
//! see [`crate::pattern`]):
//!
//! - `raw`: bytes as they are (the default for keys, and for values with
//!   no registry);
//! - `auto`: a value in Confluent's framing whose schema id the registry
//!   knows is decoded, anything else is raw (the default for values with a
//!   registry);
//! - `avro`, `protobuf`, `json-schema`: every value must be framed, with a
//!   schema of that type; one that is not becomes `herald.undecodable`.
//!
//! A record whose schema is not cached and cannot be fetched yet (the
//! registry is down) is not decoded at all: [`Decoder::decode`] says
//! [`Hold`], and the reader holds that partition, in order, until it can.

pub mod avro;
mod cache;
pub mod framing;
pub mod json;
pub mod protobuf;
pub mod schema_registry;

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::pattern::Pattern;
use crate::record::Record;
use cache::{Lookup, SchemaCache};
pub use schema_registry::RegistryConfig;
use schema_registry::{Fetched, SchemaRegistry};

/// How a topic's values (or keys) are to be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Raw,
    Auto,
    Avro,
    Protobuf,
    JsonSchema,
}

impl Codec {
    fn parse(name: &str) -> Result<Codec, String> {
        match name.trim() {
            "raw" | "none" => Ok(Codec::Raw),
            "auto" => Ok(Codec::Auto),
            "avro" => Ok(Codec::Avro),
            "protobuf" => Ok(Codec::Protobuf),
            "json-schema" | "jsonschema" => Ok(Codec::JsonSchema),
            other => Err(format!(
                "unknown format {other:?} (raw, auto, avro, protobuf, json-schema)"
            )),
        }
    }

    fn expects(self) -> Option<Kind> {
        match self {
            Codec::Avro => Some(Kind::Avro),
            Codec::Protobuf => Some(Kind::Protobuf),
            Codec::JsonSchema => Some(Kind::Json),
            Codec::Raw | Codec::Auto => None,
        }
    }
}

/// A registry schema's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Avro,
    Protobuf,
    Json,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Avro => "avro",
            Kind::Protobuf => "protobuf",
            Kind::Json => "json-schema",
        }
    }
}

/// Codecs by topic pattern, from `--value-format` / `--key-format`.
#[derive(Debug, Clone)]
pub struct TopicCodecs {
    rules: Vec<(Pattern, Codec)>,
    default: Codec,
}

impl TopicCodecs {
    /// Parses `PATTERN=FORMAT` entries (a bare `FORMAT` means `*=FORMAT`);
    /// topics no entry names get `default`.
    pub fn parse(entries: &[String], default: Codec) -> Result<TopicCodecs, String> {
        let mut rules = Vec::new();
        for entry in entries.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
            let (pattern, codec) = entry.rsplit_once('=').unwrap_or(("*", entry));
            let pattern = Pattern::new(pattern);
            if pattern.as_str().contains('/') {
                return Err(format!(
                    "{entry:?}: a format applies to whole topics, not keys"
                ));
            }
            rules.push((
                pattern,
                Codec::parse(codec).map_err(|e| format!("{entry:?}: {e}"))?,
            ));
        }
        Ok(TopicCodecs { rules, default })
    }

    pub fn for_topic(&self, topic: &str) -> Codec {
        self.rules
            .iter()
            .filter_map(|(p, c)| p.topic_rank(topic).map(|rank| (rank, *c)))
            .max_by_key(|(rank, _)| *rank)
            .map_or(self.default, |(_, c)| c)
    }

    fn any_needs_registry(&self) -> bool {
        self.default.expects().is_some() || self.rules.iter().any(|(_, c)| c.expects().is_some())
    }
}

/// A compiled schema and how events name it.
pub struct Schema {
    pub id: u32,
    pub kind: Kind,
    /// `{"id":…,"type":…,"subject":…}`, for envelopes.
    pub tag: Bytes,
    compiled: Compiled,
}

impl std::fmt::Debug for Schema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Schema")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .finish()
    }
}

enum Compiled {
    Avro(Box<avro::AvroSchema>),
    Protobuf(protobuf::ProtoSchema),
    Json,
}

impl Schema {
    fn compile(id: u32, fetched: Fetched) -> Result<Schema, String> {
        let compiled = match fetched.kind {
            Kind::Avro => {
                let refs: Vec<String> = fetched.references.into_iter().map(|(_, t)| t).collect();
                Compiled::Avro(Box::new(avro::AvroSchema::compile(&fetched.text, &refs)?))
            }
            Kind::Protobuf => Compiled::Protobuf(protobuf::ProtoSchema::compile(
                &fetched.text,
                &fetched.references,
            )?),
            Kind::Json => {
                serde_json::from_str::<serde::de::IgnoredAny>(&fetched.text)
                    .map_err(|e| format!("the JSON Schema is not JSON: {e}"))?;
                Compiled::Json
            }
        };
        let mut tag = serde_json::json!({ "id": id, "type": fetched.kind.name() });
        if let (Some(subject), Some(map)) = (fetched.subject, tag.as_object_mut()) {
            map.insert("subject".into(), subject.into());
        }
        Ok(Schema {
            id,
            kind: fetched.kind,
            tag: Bytes::from(tag.to_string()),
            compiled,
        })
    }

    fn decode(&self, body: &[u8]) -> Result<Vec<u8>, String> {
        match &self.compiled {
            Compiled::Avro(s) => s.decode(body),
            Compiled::Protobuf(s) => s.decode(body),
            Compiled::Json => json::decode(body),
        }
    }
}

/// A record's value or key, as it goes out.
#[derive(Debug, Clone)]
pub enum Part {
    /// As produced (no codec, or `auto` and not framed).
    Raw,
    /// Decoded: one-line JSON text.
    Json { text: Bytes, schema: Arc<Schema> },
    /// Framed, or meant to be, and not decodable.
    Undecodable {
        schema_id: Option<u32>,
        reason: String,
    },
}

/// What decoding made of a record.
#[derive(Debug, Clone)]
pub struct Decoded {
    pub key: Part,
    pub value: Part,
}

impl Decoded {
    pub const RAW: Decoded = Decoded {
        key: Part::Raw,
        value: Part::Raw,
    };

    /// Why the record is undecodable, and the schema id involved, if it is.
    pub fn undecodable(&self) -> Option<(Option<u32>, String)> {
        match (&self.value, &self.key) {
            (Part::Undecodable { schema_id, reason }, _) => Some((*schema_id, reason.clone())),
            (_, Part::Undecodable { schema_id, reason }) => {
                Some((*schema_id, format!("key: {reason}")))
            }
            _ => None,
        }
    }
}

/// A record that must wait for its schema.
#[derive(Debug, Clone)]
pub struct Hold {
    pub schema_id: u32,
    pub reason: Arc<str>,
}

/// A live partition waiting for a schema, as operators see it.
#[derive(Debug, Clone)]
pub struct HeldPartition {
    pub topic: Arc<str>,
    pub partition: i32,
    /// The first record not delivered yet.
    pub offset: i64,
    pub schema_id: u32,
    pub reason: Arc<str>,
    pub since: Instant,
}

/// The partitions the ingest thread holds, published for `/v1/stats` and `/readyz`.
#[derive(Debug, Default)]
pub struct Holds(Mutex<Vec<HeldPartition>>);

impl Holds {
    pub fn publish(&self, held: Vec<HeldPartition>) {
        *self.0.lock() = held;
    }

    pub fn is_empty(&self) -> bool {
        self.0.lock().is_empty()
    }

    pub fn to_json(&self) -> serde_json::Value {
        let held = self.0.lock();
        serde_json::Value::Array(
            held.iter()
                .map(|h| {
                    serde_json::json!({
                        "topic": &*h.topic,
                        "partition": h.partition,
                        "offset": h.offset,
                        "schema_id": h.schema_id,
                        "reason": &*h.reason,
                        "held_ms": u64::try_from(h.since.elapsed().as_millis()).unwrap_or(u64::MAX),
                    })
                })
                .collect(),
        )
    }
}

/// The node's decoder, shared by the ingest thread and the catch-up readers.
pub struct Decoder {
    values: TopicCodecs,
    keys: TopicCodecs,
    cache: Option<Arc<SchemaCache>>,
    metrics: Arc<Metrics>,
    /// Live partitions held for a schema (the ingest thread keeps it current).
    pub holds: Holds,
}

/// Decoder settings, from the command line.
#[derive(Debug, Clone, Default)]
pub struct FormatsConfig {
    pub registry: Option<RegistryConfig>,
    pub value_formats: Vec<String>,
    pub key_formats: Vec<String>,
    pub cache_capacity: usize,
}

/// Stack for the threads that decode (the ingest thread and the catch-up
/// readers): decoders recurse per level of a value's nesting.
pub const DECODER_STACK: usize = 16 << 20;

/// Most bytes one Avro datum may make the decoder allocate (a hostile
/// length prefix asks for more than the record holds).
const MAX_AVRO_ALLOCATION: usize = 64 << 20;

impl Decoder {
    /// A decoder for `config`; fetches run on `runtime`.
    pub fn new(
        config: &FormatsConfig,
        runtime: tokio::runtime::Handle,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Decoder> {
        let value_default = if config.registry.is_some() {
            Codec::Auto
        } else {
            Codec::Raw
        };
        let values = TopicCodecs::parse(&config.value_formats, value_default)
            .map_err(|e| anyhow::anyhow!("--value-format {e}"))?;
        let keys = TopicCodecs::parse(&config.key_formats, Codec::Raw)
            .map_err(|e| anyhow::anyhow!("--key-format {e}"))?;
        let cache = match &config.registry {
            Some(registry) => {
                apache_avro::util::max_allocation_bytes(MAX_AVRO_ALLOCATION);
                Some(Arc::new(SchemaCache::new(
                    SchemaRegistry::new(registry)?,
                    runtime,
                    config.cache_capacity,
                    metrics.clone(),
                )))
            }
            None if values.any_needs_registry() || keys.any_needs_registry() => anyhow::bail!(
                "--value-format and --key-format name avro, protobuf or json-schema, which need --schema-registry"
            ),
            None => None,
        };
        Ok(Decoder {
            values,
            keys,
            cache,
            metrics,
            holds: Holds::default(),
        })
    }

    /// A decoder that leaves every record raw.
    pub fn raw(metrics: Arc<Metrics>) -> Decoder {
        Decoder {
            values: TopicCodecs {
                rules: Vec::new(),
                default: Codec::Raw,
            },
            keys: TopicCodecs {
                rules: Vec::new(),
                default: Codec::Raw,
            },
            cache: None,
            metrics,
            holds: Holds::default(),
        }
    }

    /// Whether `topic`'s keys are decoded, so that a key selector names the
    /// decoded key (and Kafka's partitioner cannot say where it lives).
    pub fn decodes_keys(&self, topic: &str) -> bool {
        self.cache.is_some() && self.keys.for_topic(topic) != Codec::Raw
    }

    /// The registry's URL and cached schemas by kind, if there is a registry.
    pub fn registry_stats(&self) -> Option<serde_json::Value> {
        self.cache.as_ref().map(|c| {
            let (avro, protobuf, json) = c.counts();
            serde_json::json!({
                "url": c.registry_url(),
                "schemas_cached": {"avro": avro, "protobuf": protobuf, "json-schema": json},
            })
        })
    }

    /// Decodes `record`'s key and value, or says it must wait.
    pub fn decode(&self, record: &Record) -> Result<Decoded, Hold> {
        let Some(cache) = &self.cache else {
            return Ok(Decoded::RAW);
        };
        let value = self.part(
            cache,
            record.value.as_ref(),
            self.values.for_topic(&record.topic),
        )?;
        let key = self.part(
            cache,
            record.key.as_ref(),
            self.keys.for_topic(&record.topic),
        )?;
        let decoded = Decoded { key, value };
        if decoded.undecodable().is_some() {
            self.metrics.undecodable_records.inc();
        } else if matches!(decoded.value, Part::Json { .. })
            || matches!(decoded.key, Part::Json { .. })
        {
            self.metrics.records_decoded.inc();
        }
        Ok(decoded)
    }

    /// [`Decoder::decode`], waiting as long as it takes (a catch-up reader,
    /// which serves one partition); `None` once `stop` is cancelled.
    pub fn decode_waiting(&self, record: &Record, stop: &CancellationToken) -> Option<Decoded> {
        loop {
            match self.decode(record) {
                Ok(d) => return Some(d),
                Err(_) if stop.is_cancelled() => return None,
                Err(_) => {
                    if let Some(c) = &self.cache {
                        c.wait_for_fetch(Duration::from_millis(100));
                    }
                }
            }
        }
    }

    fn part(
        &self,
        cache: &Arc<SchemaCache>,
        bytes: Option<&Bytes>,
        codec: Codec,
    ) -> Result<Part, Hold> {
        let Some(bytes) = bytes else {
            return Ok(Part::Raw);
        };
        if codec == Codec::Raw {
            return Ok(Part::Raw);
        }
        let Some(framed) = framing::split(bytes) else {
            return Ok(match codec {
                Codec::Auto => Part::Raw,
                _ => Part::Undecodable {
                    schema_id: None,
                    reason: "not in Confluent framing (magic byte 0, then a 4-byte schema id)"
                        .into(),
                },
            });
        };
        let id = framed.schema_id;
        let schema = match cache.lookup(id) {
            Lookup::Ready(s) => s,
            Lookup::Pending(reason) => {
                return Err(Hold {
                    schema_id: id,
                    reason,
                })
            }
            Lookup::Missing(_) if codec == Codec::Auto => return Ok(Part::Raw),
            Lookup::Missing(reason) => {
                return Ok(Part::Undecodable {
                    schema_id: Some(id),
                    reason: reason.to_string(),
                })
            }
        };
        if let Some(expected) = codec.expects() {
            if expected != schema.kind {
                return Ok(Part::Undecodable {
                    schema_id: Some(id),
                    reason: format!(
                        "schema {id} is {}, the topic's format is {}",
                        schema.kind.name(),
                        expected.name()
                    ),
                });
            }
        }
        Ok(match schema.decode(framed.body) {
            Ok(text) => Part::Json {
                text: Bytes::from(text),
                schema,
            },
            Err(reason) => Part::Undecodable {
                schema_id: Some(id),
                reason: format!("does not decode with schema {id}: {reason}"),
            },
        })
    }
}

/// How a decoded key is named in a selector: a JSON string by its own
/// text (`orders/eu-42`), anything else as one-line JSON with object
/// members sorted by name (`orders/{"id":42,"region":"eu"}`), so that a
/// page need not know the schema's field order.
pub fn canonical_key(json_text: &[u8]) -> Bytes {
    match serde_json::from_slice::<serde_json::Value>(json_text) {
        Ok(serde_json::Value::String(s)) => Bytes::from(s),
        // serde_json's maps are sorted: writing the value back sorts members.
        Ok(v) => Bytes::from(v.to_string()),
        Err(_) => Bytes::copy_from_slice(json_text),
    }
}

/// The canonical form of a key selector on a topic with decoded keys: JSON
/// other than a string is normalised as [`canonical_key`]; any other text
/// names a string key as it is.
pub fn canonical_selector_key(text: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::String(_)) | Err(_) => text.to_owned(),
        Ok(v) => v.to_string(),
    }
}

/// A schema compiled once, for decoding many bodies (fuzzing, benchmarks).
pub struct Standalone(Schema);

impl Standalone {
    pub fn compile(kind: Kind, text: &str) -> Result<Standalone, String> {
        Schema::compile(
            0,
            Fetched {
                kind,
                text: text.to_owned(),
                references: Vec::new(),
                subject: None,
            },
        )
        .map(Standalone)
    }

    /// Decodes a framed value's body (everything after the schema id).
    pub fn decode(&self, body: &[u8]) -> Result<Vec<u8>, String> {
        self.0.decode(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_closest_pattern_wins() {
        let c = TopicCodecs::parse(
            &[
                "*=auto".into(),
                "orders=avro".into(),
                "ord*=protobuf".into(),
            ],
            Codec::Raw,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.for_topic("orders"), Codec::Avro);
        assert_eq!(c.for_topic("ordinals"), Codec::Protobuf);
        assert_eq!(c.for_topic("clicks"), Codec::Auto);
        let none = TopicCodecs::parse(&[], Codec::Raw).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(none.for_topic("x"), Codec::Raw);
        assert!(TopicCodecs::parse(&["orders=xml".into()], Codec::Raw).is_err());
        assert!(TopicCodecs::parse(&["orders/k=avro".into()], Codec::Raw).is_err());
        assert_eq!(
            canonical_key(br#"{"region":"eu","id":3}"#),
            r#"{"id":3,"region":"eu"}"#
        );
        assert_eq!(canonical_key(br#""k1""#), "k1");
        assert_eq!(
            canonical_selector_key(r#"{ "region": "eu", "id": 3 }"#),
            r#"{"id":3,"region":"eu"}"#
        );
        assert_eq!(canonical_selector_key("k1"), "k1");
        assert_eq!(canonical_selector_key(r#""quoted""#), r#""quoted""#);
        let bare =
            TopicCodecs::parse(&["avro".into()], Codec::Raw).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(bare.for_topic("x"), Codec::Avro);
    }
}
