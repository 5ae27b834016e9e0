//! A Kafka record as herald holds it: plain data, copied out of librdkafka.
//!
//! The ingest thread and the catch-up readers copy each message at once
//! (held messages pin librdkafka's buffers) into reference-counted `Bytes`.
//! How a record goes on the wire is [`crate::sse`]'s business.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use rdkafka::message::{BorrowedMessage, Headers, Message};

#[derive(Debug)]
pub struct Record {
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
    /// Milliseconds since the epoch, as Kafka stamped it (create or log-append time).
    pub timestamp: Option<i64>,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<(String, Option<Bytes>)>,
    /// When this node took it from librdkafka (for herald's own latency,
    /// consume → socket write).
    pub consumed: Instant,
}

impl Record {
    /// Copies a message out of librdkafka (the message can then be dropped).
    pub fn from_message(topic: Arc<str>, message: &BorrowedMessage<'_>) -> Record {
        let headers = message
            .headers()
            .map(|hs| {
                hs.iter()
                    .map(|h| (h.key.to_owned(), h.value.map(Bytes::copy_from_slice)))
                    .collect()
            })
            .unwrap_or_default();
        Record {
            topic,
            partition: message.partition(),
            offset: message.offset(),
            timestamp: message.timestamp().to_millis(),
            key: message.key().map(Bytes::copy_from_slice),
            value: message.payload().map(Bytes::copy_from_slice),
            headers,
            consumed: Instant::now(),
        }
    }

    /// The value of the last header called `name`.
    pub fn header(&self, name: &str) -> Option<&Bytes> {
        self.headers
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.as_ref())
    }
}
