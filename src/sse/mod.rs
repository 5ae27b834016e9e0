//! Server-Sent Events wire encoding.
//!
//! An event is `id:` (the cursor) followed by a body: an optional `event:`
//! line and one `data:` line per line of the value, then a blank line. An
//! [`Encoded`] record encodes its body once per output [`Format`], on first
//! use, for every connection and replay that sends it; the fan-out then
//! builds the whole event (id line and body) once per subscription shape.
//!
//! The SSE format cannot carry every byte: a CR ends a line, and browsers
//! decode data as UTF-8. So a value that is not valid UTF-8, contains a CR, or
//! itself begins with the marker is sent as `base64:` followed by standard
//! padded base64. Everything else goes as is, LF-separated lines becoming
//! separate `data:` fields that every parser joins back with LF. CR, LF and
//! NUL never reach an `id:` or `event:` line.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use std::sync::OnceLock;

use bytes::{BufMut, Bytes, BytesMut};
use serde_json::{json, Map, Value};

use parking_lot::Mutex;

use crate::filters::vars::Field;
use crate::filters::{Expr, Projection, RecordVars};
use crate::formats::{Decoded, Part};
use crate::record::Record;
use crate::unique_hash::UniqueMap;

pub mod read;

/// Prefix of a base64-encoded value in `data:`.
pub const BASE64_MARKER: &[u8] = b"base64:";

/// Event types in this namespace are herald's own signals; producers cannot set them.
pub const RESERVED_EVENT_PREFIX: &str = "herald.";

const MAX_EVENT_TYPE_LEN: usize = 128;

/// A heartbeat: an SSE comment that keeps proxies from timing the stream out.
pub const HEARTBEAT: &[u8] = b":\n\n";

/// How a connection wants records rendered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// `data:` is the record value.
    Plain,
    /// `data:` is a JSON object with topic, partition, offset, timestamp, key, headers, value.
    Envelope,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Plain => "plain",
            Format::Envelope => "envelope",
        }
    }
}

/// A record on its way to the wire: the record, what decoding made of it,
/// its SSE event type, and its body per format, each encoded at most once.
#[derive(Debug)]
pub struct Encoded {
    pub record: Record,
    decoded: Decoded,
    /// The key as selectors name it: the decoded key's canonical text
    /// (see `formats::canonical_key`), or the raw key.
    match_key: Option<Bytes>,
    /// The SSE event type, from the configured record header, already sanitised.
    event_type: Option<String>,
    plain: OnceLock<Bytes>,
    envelope: OnceLock<Bytes>,
    /// The value as JSON, if it is JSON (decoded, or raw text that parses),
    /// for filters and projections; parsed on first use.
    value_json: OnceLock<Option<serde_json::Value>>,
    /// The record as filters see it, built on first use.
    vars: OnceLock<RecordVars>,
    /// Verdicts of the filters that have seen this record, by expression id.
    verdicts: Mutex<UniqueMap<u64, bool>>,
    /// Bodies with a projection, by (projection id, format).
    projected: Mutex<Vec<(u64, Format, Bytes)>>,
}

impl Encoded {
    /// A raw record; `event_header` names the record header whose value
    /// becomes the event type.
    pub fn new(record: Record, event_header: &str) -> Encoded {
        Encoded::decoded(record, event_header, Decoded::RAW)
    }

    /// A record as the decoder left it.
    pub fn decoded(record: Record, event_header: &str, decoded: Decoded) -> Encoded {
        let event_type = record
            .header(event_header)
            .and_then(|v| sanitize_event_type(v));
        let match_key = match &decoded.key {
            Part::Json { text, .. } => Some(canonical_key(text)),
            _ => record.key.clone(),
        };
        Encoded {
            record,
            decoded,
            match_key,
            event_type,
            plain: OnceLock::new(),
            envelope: OnceLock::new(),
            value_json: OnceLock::new(),
            vars: OnceLock::new(),
            verdicts: Mutex::new(UniqueMap::default()),
            projected: Mutex::new(Vec::new()),
        }
    }

    fn value_json(&self) -> Option<&serde_json::Value> {
        self.value_json
            .get_or_init(|| {
                let text = match &self.decoded.value {
                    Part::Json { text, .. } => text.as_ref(),
                    Part::Raw => self.record.value.as_deref()?,
                    Part::Undecodable { .. } => return None,
                };
                serde_json::from_slice(text).ok()
            })
            .as_ref()
    }

    fn vars(&self) -> &RecordVars {
        self.vars.get_or_init(|| {
            let r = &self.record;
            let key_json = match &self.decoded.key {
                Part::Json { text, .. } => serde_json::from_slice::<serde_json::Value>(text).ok(),
                _ => None,
            };
            let key = match (&key_json, &r.key) {
                (Some(v), _) => Field::Json(v),
                (None, Some(k)) => Field::Bytes(k),
                (None, None) => Field::Absent,
            };
            let value = match (self.value_json(), &r.value) {
                (Some(v), _) => Field::Json(v),
                (None, Some(b)) => Field::Bytes(b),
                (None, None) => Field::Absent,
            };
            RecordVars::new(
                &r.topic,
                r.partition,
                r.offset,
                r.timestamp,
                key,
                value,
                &r.headers,
            )
        })
    }

    /// Whether this record passes `expr`: evaluated once per record and
    /// expression, whoever asks.
    pub fn passes(&self, expr: &Expr) -> bool {
        if let Some(&v) = self.verdicts.lock().get(&expr.id) {
            return v;
        }
        let verdict = expr.eval(self.vars());
        self.verdicts.lock().entry(expr.id).or_insert(verdict);
        verdict
    }

    /// The event body for `format`, with the value cut to `projection`.
    pub fn body_with(&self, format: Format, projection: Option<&Projection>) -> Bytes {
        let Some(p) = projection else {
            return self.body(format).clone();
        };
        if self.decoded.undecodable().is_some() {
            return self.body(format).clone();
        }
        if let Some((_, _, b)) = self
            .projected
            .lock()
            .iter()
            .find(|(id, f, _)| *id == p.id && *f == format)
        {
            return b.clone();
        }
        let value = p.apply(self.value_json());
        let body = match format {
            Format::Plain => self.plain_body_of(&value),
            Format::Envelope => self.envelope_body_of(Some(&value)),
        };
        self.projected.lock().push((p.id, format, body.clone()));
        body
    }

    /// The key selectors match against.
    pub fn match_key(&self) -> Option<&Bytes> {
        self.match_key.as_ref()
    }

    /// The event body (everything after the `id:` line) for `format`.
    pub fn body(&self, format: Format) -> &Bytes {
        if self.decoded.undecodable().is_some() {
            // The same signal whatever the format asked for.
            return self.plain.get_or_init(|| self.undecodable_body());
        }
        match format {
            Format::Plain => self.plain.get_or_init(|| self.plain_body()),
            Format::Envelope => self.envelope.get_or_init(|| self.envelope_body()),
        }
    }

    /// Bytes this record keeps alive (for replay-buffer accounting): the
    /// record, its decoded text, and up to a body per format.
    pub fn weight(&self) -> usize {
        let r = &self.record;
        let headers: usize = r
            .headers
            .iter()
            .map(|(k, v)| k.len() + v.as_ref().map_or(0, |v| v.len()))
            .sum();
        let text = |p: &Part| match p {
            Part::Json { text, .. } => text.len() * 2,
            _ => 0,
        };
        std::mem::size_of::<Encoded>()
            + r.key.as_ref().map_or(0, |k| k.len())
            + r.value.as_ref().map_or(0, |v| v.len()) * 2
            + headers
            + text(&self.decoded.key)
            + text(&self.decoded.value)
    }

    fn put_event_type(&self, out: &mut BytesMut) {
        if let Some(t) = &self.event_type {
            out.put_slice(b"event: ");
            out.put_slice(t.as_bytes());
            out.put_u8(b'\n');
        }
    }

    fn plain_body(&self) -> Bytes {
        let value = match &self.decoded.value {
            Part::Json { text, .. } => text.as_ref(),
            _ => self.record.value.as_deref().unwrap_or_default(),
        };
        self.plain_body_of(value)
    }

    fn plain_body_of(&self, value: &[u8]) -> Bytes {
        let mut out = BytesMut::with_capacity(value.len() + 16);
        self.put_event_type(&mut out);
        put_data(&mut out, value);
        out.put_u8(b'\n');
        out.freeze()
    }

    fn envelope_body(&self) -> Bytes {
        self.envelope_body_of(None)
    }

    /// The envelope, with `value` (projected JSON) in place of the record's.
    fn envelope_body_of(&self, value: Option<&[u8]>) -> Bytes {
        let r = &self.record;
        let mut headers = Map::new();
        for (name, value) in &r.headers {
            headers.insert(name.clone(), bytes_json(value.as_ref()));
        }
        // Written field by field: decoded text goes in as it is.
        let mut json = Vec::with_capacity(256);
        json.extend_from_slice(b"{\"topic\":");
        write_json(&mut json, &Value::from(&*r.topic));
        json.extend_from_slice(
            format!(",\"partition\":{},\"offset\":{}", r.partition, r.offset).as_bytes(),
        );
        json.extend_from_slice(b",\"timestamp\":");
        write_json(&mut json, &r.timestamp.map_or(Value::Null, Value::from));
        json.extend_from_slice(b",\"key\":");
        put_part(&mut json, &self.decoded.key, r.key.as_ref());
        json.extend_from_slice(b",\"headers\":");
        write_json(&mut json, &Value::Object(headers));
        json.extend_from_slice(b",\"value\":");
        match value {
            Some(v) => json.extend_from_slice(v),
            None => put_part(&mut json, &self.decoded.value, r.value.as_ref()),
        }
        if let Part::Json { schema, .. } = &self.decoded.value {
            json.extend_from_slice(b",\"schema\":");
            json.extend_from_slice(&schema.tag);
        }
        if let Part::Json { schema, .. } = &self.decoded.key {
            json.extend_from_slice(b",\"key_schema\":");
            json.extend_from_slice(&schema.tag);
        }
        json.push(b'}');
        let mut out = BytesMut::with_capacity(json.len() + 32);
        self.put_event_type(&mut out);
        // JSON text has no raw line breaks, so this is one data line.
        put_data(&mut out, &json);
        out.put_u8(b'\n');
        out.freeze()
    }

    /// `herald.undecodable`: where the record is, why, and its raw value.
    fn undecodable_body(&self) -> Bytes {
        let r = &self.record;
        let (schema_id, reason) = self.decoded.undecodable().unwrap_or_default();
        signal_body(
            "undecodable",
            &json!({
                "topic": &*r.topic,
                "partition": r.partition,
                "offset": r.offset,
                "timestamp": r.timestamp,
                "schema_id": schema_id,
                "reason": reason,
                "key": bytes_json(r.key.as_ref()),
                "value": r.value.as_ref().map(|v| STANDARD.encode(v)),
            }),
        )
    }
}

/// A decoded key as selectors name it.
fn canonical_key(text: &Bytes) -> Bytes {
    crate::formats::canonical_key(text)
}

fn write_json(out: &mut Vec<u8>, value: &Value) {
    // Serialising a Value into a Vec cannot fail.
    let _ = serde_json::to_writer(out, value);
}

/// A key or value in an envelope: decoded JSON as it is, else as today.
fn put_part(out: &mut Vec<u8>, part: &Part, raw: Option<&Bytes>) {
    match part {
        Part::Json { text, .. } => out.extend_from_slice(text),
        _ => write_json(out, &bytes_json(raw)),
    }
}

/// Whether `value` must travel base64-encoded to arrive byte for byte.
pub fn needs_base64(value: &[u8]) -> bool {
    value.starts_with(BASE64_MARKER)
        || value.contains(&b'\r')
        || std::str::from_utf8(value).is_err()
}

/// The event type a record header asks for, if it is safe to put on an `event:` line.
pub fn sanitize_event_type(raw: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(raw).ok()?.trim();
    let ok = !text.is_empty()
        && text.len() <= MAX_EVENT_TYPE_LEN
        && !text.starts_with(RESERVED_EVENT_PREFIX)
        && !text.chars().any(|c| c.is_control());
    ok.then(|| text.to_owned())
}

/// Appends `data:` lines for `value`.
pub fn put_data(out: &mut BytesMut, value: &[u8]) {
    if value.is_empty() {
        return; // id-only: moves the browser's last event id without firing a message
    }
    if needs_base64(value) {
        out.put_slice(b"data: ");
        out.put_slice(BASE64_MARKER);
        let mut text = String::with_capacity(value.len() * 4 / 3 + 4);
        STANDARD.encode_string(value, &mut text);
        out.put_slice(text.as_bytes());
        out.put_u8(b'\n');
        return;
    }
    for line in value.split(|&b| b == b'\n') {
        out.put_slice(b"data: ");
        out.put_slice(line);
        out.put_u8(b'\n');
    }
}

/// The `id:` line for a cursor. Cursors are base64url, so nothing to escape.
pub fn id_line(cursor: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(cursor.len() + 5);
    out.put_slice(b"id: ");
    out.put_slice(cursor.as_bytes());
    out.put_u8(b'\n');
    out.freeze()
}

/// Response headers of every event stream, whichever path serves it.
pub const STREAM_HEADERS: [(&str, &str); 3] = [
    ("content-type", "text/event-stream"),
    ("cache-control", "no-cache"),
    // Tells nginx-style proxies not to buffer the stream.
    ("x-accel-buffering", "no"),
];

/// A whole event: the `id:` line for `cursor`, then `body` (from `id:` on,
/// the rest of the event). One buffer, so a connection queues one `Bytes`.
pub fn event_with_id(cursor: &str, body: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(cursor.len() + 5 + body.len());
    out.put_slice(b"id: ");
    out.put_slice(cursor.as_bytes());
    out.put_u8(b'\n');
    out.put_slice(body);
    out.freeze()
}

/// The stream preamble: reconnection delay for the browser.
pub fn retry(ms: u64) -> Bytes {
    Bytes::from(format!("retry: {ms}\n\n"))
}

/// A reconnection delay of `base_ms` plus a random part of `spread_ms`, so
/// that clients told to come back together do not all come back at once.
pub fn retry_spread(base_ms: u64, spread_ms: u64) -> Bytes {
    let jitter = rand::Rng::gen_range(&mut rand::thread_rng(), 0..=spread_ms.max(1));
    retry(base_ms.saturating_add(jitter))
}

/// `retry_spread` with a spread as long as the delay itself.
pub fn retry_jittered(base_ms: u64) -> Bytes {
    retry_spread(base_ms, base_ms)
}

/// A herald signal event (`event: herald.<name>`) with a JSON payload.
pub fn signal_body(name: &str, payload: &Value) -> Bytes {
    let mut out = BytesMut::with_capacity(64);
    out.put_slice(b"event: ");
    out.put_slice(RESERVED_EVENT_PREFIX.as_bytes());
    out.put_slice(name.as_bytes());
    out.put_u8(b'\n');
    put_data(&mut out, payload.to_string().as_bytes());
    out.put_u8(b'\n');
    out.freeze()
}

/// End of an id-only event (an `id:` line followed by a blank line).
pub const ID_ONLY_BODY: &[u8] = b"\n";

fn bytes_json(b: Option<&Bytes>) -> Value {
    match b {
        None => Value::Null,
        Some(b) => match std::str::from_utf8(b) {
            Ok(s) => Value::String(s.to_owned()),
            Err(_) => json!({ "base64": STANDARD.encode(b) }),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What a client reads back from a frame: its data, base64 decoded.
    fn parse_data(frame: &[u8]) -> Option<Vec<u8>> {
        let read = read::EventReader::default().feed(frame);
        let d = read.into_iter().find_map(|r| match r {
            read::Read::Event(e) => e.data,
            read::Read::Comment => None,
        })?;
        if let Some(b64) = d.strip_prefix("base64:") {
            return STANDARD.decode(b64).ok();
        }
        Some(d.into_bytes())
    }

    fn body(value: &[u8]) -> Bytes {
        let mut out = BytesMut::new();
        put_data(&mut out, value);
        out.put_u8(b'\n');
        out.freeze()
    }

    #[test]
    fn multi_line_values_become_several_data_fields() {
        assert_eq!(&body(b"a\nb")[..], b"data: a\ndata: b\n\n");
        assert_eq!(&body(b"line\n")[..], b"data: line\ndata: \n\n");
        assert_eq!(&body(b" x")[..], b"data:  x\n\n");
    }

    #[test]
    fn unsafe_values_are_marked_base64() {
        assert_eq!(&body(b"a\rb")[..], b"data: base64:YQ1i\n\n");
        assert_eq!(&body(b"\xff")[..], b"data: base64:/w==\n\n");
        assert!(body(b"base64:x").starts_with(b"data: base64:YmFzZTY0Ong="));
        assert_eq!(&body("ü€".as_bytes())[..], "data: ü€\n\n".as_bytes());
    }

    #[test]
    fn event_types_are_sanitised() {
        assert_eq!(sanitize_event_type(b"score"), Some("score".into()));
        assert_eq!(sanitize_event_type(b"a\nid: x"), None);
        assert_eq!(sanitize_event_type(b"a\0"), None);
        assert_eq!(sanitize_event_type(b"herald.gap"), None);
        assert_eq!(sanitize_event_type(b"\xff"), None);
        assert_eq!(sanitize_event_type(b""), None);
    }

    proptest! {
        #[test]
        fn every_value_round_trips(value in proptest::collection::vec(any::<u8>(), 1..200)) {
            prop_assert_eq!(parse_data(&body(&value)), Some(value));
        }

        #[test]
        fn every_text_value_round_trips(value in "\\PC{1,80}") {
            prop_assert_eq!(parse_data(&body(value.as_bytes())), Some(value.into_bytes()));
        }
    }
}
