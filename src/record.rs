//! A Kafka record as herald holds it.
//!
//! The ingest thread copies each record out of librdkafka at once (held
//! messages pin librdkafka's buffers) into reference-counted `Bytes`. The
//! record's SSE body (everything after the `id:` line) depends only on the
//! record and the output format, so it is encoded at most once per format and
//! shared by every connection and every replay that sends it.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use rdkafka::message::{BorrowedMessage, Headers, Message};

use crate::sse;

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
    /// The SSE event type, from the configured record header, already sanitised.
    pub event_type: Option<String>,
    plain: OnceLock<Bytes>,
    envelope: OnceLock<Bytes>,
}

/// How a connection wants records rendered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// `data:` is the record value.
    Plain,
    /// `data:` is a JSON object with topic, partition, offset, timestamp, key, headers, value.
    Envelope,
}

impl Record {
    /// Copies a message out of librdkafka (the message can then be dropped).
    pub fn from_message(
        topic: Arc<str>,
        message: &BorrowedMessage<'_>,
        event_header: &str,
    ) -> Record {
        let headers: Vec<(String, Option<Bytes>)> = message
            .headers()
            .map(|hs| {
                hs.iter()
                    .map(|h| (h.key.to_owned(), h.value.map(Bytes::copy_from_slice)))
                    .collect()
            })
            .unwrap_or_default();
        let event_type = headers
            .iter()
            .rev()
            .find(|(name, _)| name == event_header)
            .and_then(|(_, v)| v.as_deref())
            .and_then(sse::sanitize_event_type);
        Record {
            topic,
            partition: message.partition(),
            offset: message.offset(),
            timestamp: message.timestamp().to_millis(),
            key: message.key().map(Bytes::copy_from_slice),
            value: message.payload().map(Bytes::copy_from_slice),
            headers,
            event_type,
            plain: OnceLock::new(),
            envelope: OnceLock::new(),
        }
    }

    /// The frame body for `format`, encoded on first use.
    pub fn body(&self, format: Format) -> &Bytes {
        match format {
            Format::Plain => self.plain.get_or_init(|| sse::plain_body(self)),
            Format::Envelope => self.envelope.get_or_init(|| sse::envelope_body(self)),
        }
    }

    /// Bytes this record keeps alive (for replay-buffer accounting).
    pub fn weight(&self) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|(k, v)| k.len() + v.as_ref().map_or(0, |v| v.len()))
            .sum();
        128 + self.key.as_ref().map_or(0, |k| k.len())
            + self.value.as_ref().map_or(0, |v| v.len()) * 2
            + headers
    }
}
