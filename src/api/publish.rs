//! `POST /v1/topics/{topic}`: produce one record over HTTP.
//!
//! A convenience beside Kafka clients. The body is the value; the key comes
//! from `?key=` or the `Herald-Key` header; `Herald-Header-<name>` request
//! headers become record headers. The answer waits for Kafka's
//! acknowledgement and names the partition and offset. The producer uses
//! murmur2 so that keys land where keyed subscriptions look for them.
//!
//! A token from the cookie publishes only from an allowed origin: a browser
//! attaches the cookie to any site's request, so the cookie proves the user,
//! not the page.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{json, Value};

use crate::auth::Auth;
use crate::cors::Cors;
use crate::embedded::EmbeddedKafka;
use crate::error::ApiError;
use crate::kafka::{self, Kafka};
use crate::metrics::Metrics;
use crate::subscribe::valid_topic_name;

const HEADER_PREFIX: &str = "herald-header-";
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// What publishing needs.
pub struct Publisher {
    pub producer: FutureProducer,
    pub kafka: Kafka,
    /// Set on a node with the embedded Kafka, which creates topics on first use.
    pub embedded: Option<(Arc<EmbeddedKafka>, i32)>,
    pub auth: Arc<Auth>,
    pub cors: Arc<Cors>,
    pub metrics: Arc<Metrics>,
    pub max_body_bytes: usize,
}

impl Publisher {
    pub async fn publish(
        &self,
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
        self.authorize(headers, query, topic, key_text.as_deref())?;
        let value = self.read_body(headers, body).await?;
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
        self.create_on_embedded(topic).await?;
        let mut record = FutureRecord::to(topic)
            .payload(&value[..])
            .headers(record_headers);
        if let Some(k) = &key {
            record = record.key(&k[..]);
        }
        match self.producer.send(record, DELIVERY_TIMEOUT).await {
            Ok(delivery) => {
                self.metrics.published.inc();
                Ok(
                    json!({"topic": topic, "partition": delivery.partition, "offset": delivery.offset}),
                )
            }
            Err((e, _)) => {
                self.metrics.publish_failures.inc();
                if kafka::is_unknown_topic(&e) {
                    Err(ApiError::UnknownTopic(topic.to_owned()))
                } else {
                    Err(ApiError::Kafka(e))
                }
            }
        }
    }

    /// The caller's grant for publishing to `topic` (`key` if any).
    fn authorize(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
        topic: &str,
        key: Option<&str>,
    ) -> Result<(), ApiError> {
        match self.auth.grant(headers, query)? {
            None => Err(ApiError::Unauthorized(
                "publishing needs a token with a publish grant (Authorization: Bearer ...)".into(),
            )),
            Some(g) if g.from_cookie && !self.cors.vouches_for(headers) => Err(ApiError::Forbidden(
                "a token from the cookie may publish only from an allowed origin (--cors-origins) or this node's own page; other callers send it as Authorization: Bearer".into(),
            )),
            Some(g) if g.may_publish(topic, key) => Ok(()),
            Some(_) => Err(ApiError::Forbidden(format!(
                "the token does not grant publishing to `{topic}`"
            ))),
        }
    }

    async fn read_body(&self, headers: &HeaderMap, body: Incoming) -> Result<Bytes, ApiError> {
        let limit = self.max_body_bytes;
        let declared = headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|len| len > limit) {
            return Err(ApiError::BodyTooLarge(limit));
        }
        Ok(Limited::new(body, limit)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    ApiError::BodyTooLarge(limit)
                } else {
                    ApiError::BadRequest(format!("could not read the request body: {e}"))
                }
            })?
            .to_bytes())
    }

    /// The mock cluster would auto-create a topic with its own default
    /// partition count: create it with the node's instead.
    async fn create_on_embedded(&self, topic: &str) -> Result<(), ApiError> {
        let Some((embedded, partitions)) = &self.embedded else {
            return Ok(());
        };
        if self
            .kafka
            .partition_count(topic)
            .await
            .ok()
            .flatten()
            .is_some()
        {
            return Ok(());
        }
        let (embedded, name, n) = (embedded.clone(), topic.to_owned(), *partitions);
        tokio::task::spawn_blocking(move || embedded.create_topic(&name, n))
            .await
            .map_err(|_| ApiError::Kafka(rdkafka::error::KafkaError::Canceled))?
            .map_err(|e| {
                ApiError::Unsupported(format!(
                    "the embedded Kafka could not create `{topic}`: {e}"
                ))
            })?;
        self.kafka.forget(topic);
        Ok(())
    }
}
