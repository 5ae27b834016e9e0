//! `POST /v1/topics/{topic}`: produce one record over HTTP.
//!
//! A convenience beside Kafka clients. The body is the value; the key comes
//! from `?key=` or the `Herald-Key` header; `Herald-Header-<name>` request
//! headers become record headers. The answer waits for Kafka's
//! acknowledgement and names the partition and offset. The producer uses
//! murmur2 so that keys land where keyed subscriptions look for them.

use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::server::NodeContext;
use crate::subscribe::valid_topic_name;

const HEADER_PREFIX: &str = "herald-header-";

pub async fn publish(
    node: &NodeContext,
    topic: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    body: Incoming,
) -> Result<Value, ApiError> {
    if !valid_topic_name(topic) {
        return Err(ApiError::BadRequest(format!(
            "`{topic}` is not a Kafka topic name (1-249 of a-z A-Z 0-9 . _ -)"
        )));
    }
    let key = form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .find(|(k, _)| k == "key")
        .map(|(_, v)| v.into_owned().into_bytes())
        .or_else(|| headers.get("herald-key").map(|v| v.as_bytes().to_vec()));
    let key_text = key.as_deref().map(String::from_utf8_lossy);
    node.authorize_publish(headers, query, topic, key_text.as_deref())?;
    let limit = node.config.max_body_bytes;
    if let Some(len) = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
    {
        if len > limit {
            return Err(ApiError::BodyTooLarge(limit));
        }
    }
    let value: Bytes = Limited::new(body, limit)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                ApiError::BodyTooLarge(limit)
            } else {
                ApiError::BadRequest(format!("could not read the request body: {e}"))
            }
        })?
        .to_bytes();
    let mut record_headers = OwnedHeaders::new();
    for (name, v) in headers {
        if let Some(h) = name.as_str().strip_prefix(HEADER_PREFIX) {
            if !h.is_empty() {
                record_headers = record_headers.insert(Header {
                    key: h,
                    value: Some(v.as_bytes()),
                });
            }
        }
    }
    if let Some(embedded) = &node.embedded {
        // The mock cluster would auto-create with its own default partition count.
        if node
            .kafka
            .partition_count(topic)
            .await
            .ok()
            .flatten()
            .is_none()
        {
            let embedded = embedded.clone();
            let (name, n) = (topic.to_owned(), node.config.embedded_partitions);
            tokio::task::spawn_blocking(move || embedded.create_topic(&name, n))
                .await
                .map_err(|e| ApiError::Kafka(e.to_string()))?
                .map_err(|e| ApiError::Kafka(e.to_string()))?;
            node.kafka.forget(topic);
        }
    }
    let mut record = FutureRecord::to(topic)
        .payload(&value[..])
        .headers(record_headers);
    if let Some(k) = &key {
        record = record.key(&k[..]);
    }
    match node.producer.send(record, Duration::from_secs(10)).await {
        Ok(delivery) => {
            node.registry.metrics.published.inc();
            Ok(json!({"topic": topic, "partition": delivery.partition, "offset": delivery.offset}))
        }
        Err((e, _)) => {
            node.registry.metrics.publish_failures.inc();
            if crate::kafka::is_unknown_topic(&e) {
                Err(ApiError::UnknownTopic(topic.to_owned()))
            } else {
                Err(ApiError::Kafka(e.to_string()))
            }
        }
    }
}
