//! Record values in the encodings a Kafka shop writes, for the record-format
//! figures: the bench's own text value ([`crate::record`]) carried as field
//! `v` of a 200-byte-class "trade" record, as Confluent-framed Avro or
//! Protobuf, or as the JSON text herald makes of them (so a JSON topic and
//! an Avro topic deliver the very same bytes to clients).
//!
//! Written by hand: the load generator needs only this one fixed record
//! shape, and herald's decoders (apache-avro, prost-reflect) reading it is
//! the check that it is right.

use std::io::Write as _;

use herald::formats::framing::{put_varint as varint, put_zigzag as zigzag};

use crate::record::write_value;

/// The Avro schema, as a registry serves it.
pub const AVRO_SCHEMA: &str = r#"{"type":"record","name":"Trade","namespace":"bench","fields":[{"name":"v","type":"string"},{"name":"qty","type":"int"},{"name":"price","type":"double"},{"name":"side","type":{"type":"enum","name":"Side","symbols":["BUY","SELL"]}},{"name":"venue","type":"string"},{"name":"tags","type":{"type":"array","items":"string"}},{"name":"flag","type":"boolean"},{"name":"note","type":["null","string"]}]}"#;

/// The same record as Protobuf.
pub const PROTO_SCHEMA: &str = r#"syntax = "proto3"; package bench; enum Side { BUY = 0; SELL = 1; } message Trade { string v = 1; int32 qty = 2; double price = 3; Side side = 4; string venue = 5; repeated string tags = 6; bool flag = 7; optional string note = 8; }"#;

/// The schema id the bench's registry serves the Avro schema under.
pub const SCHEMA_ID: u32 = 1;

const PRICE: f64 = 101.25;

/// How the producer writes a record's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Encoding {
    /// The bench's text value as it is.
    Raw,
    /// The trade record as JSON text: what herald makes of the Avro one.
    Json,
    /// The trade record as Confluent-framed Avro (schema id 1).
    Avro,
}

fn avro_string(out: &mut Vec<u8>, s: &[u8]) {
    zigzag(out, s.len() as i64);
    out.extend_from_slice(s);
}

/// Appends a record's value in `encoding`, about `size` bytes (the text
/// field is padded so that the whole is `size`, never cut).
pub fn write_encoded(
    out: &mut Vec<u8>,
    encoding: Encoding,
    ts: u64,
    stream: usize,
    seq: u64,
    size: usize,
) {
    if encoding == Encoding::Raw {
        return write_value(out, ts, stream, seq, size);
    }
    // Every Avro field but the text takes 30 bytes; the JSON text carries
    // the same text, so both deliver the same bytes to clients.
    let text_size = size.saturating_sub(30);
    let mut text = Vec::with_capacity(text_size);
    write_value(&mut text, ts, stream, seq, text_size);
    let qty = (seq % 1000) as i64;
    match encoding {
        Encoding::Avro => {
            out.push(0);
            out.extend_from_slice(&SCHEMA_ID.to_be_bytes());
            avro_string(out, &text);
            zigzag(out, qty);
            out.extend_from_slice(&PRICE.to_le_bytes());
            zigzag(out, 0); // BUY
            avro_string(out, b"XNAS");
            zigzag(out, 2);
            avro_string(out, b"a");
            avro_string(out, b"b");
            zigzag(out, 0);
            out.push(1); // true
            zigzag(out, 0); // null
        }
        _ => {
            // The text is digits, spaces and x: nothing to escape.
            out.extend_from_slice(b"{\"v\":\"");
            out.extend_from_slice(&text);
            let _ = write!(
                out,
                "\",\"qty\":{qty},\"price\":{PRICE},\"side\":\"BUY\",\"venue\":\"XNAS\",\"tags\":[\"a\",\"b\"],\"flag\":true,\"note\":null}}"
            );
        }
    }
}

/// The trade record as a Protobuf message body (after the 5-byte header:
/// the message-index path `[0]`, then the message).
pub fn protobuf_body(ts: u64, stream: usize, seq: u64, size: usize) -> Vec<u8> {
    let mut text = Vec::new();
    write_value(&mut text, ts, stream, seq, size.saturating_sub(30));
    let mut out = vec![0u8];
    let field = |out: &mut Vec<u8>, n: u64, wire: u64| varint(out, n << 3 | wire);
    field(&mut out, 1, 2);
    varint(&mut out, text.len() as u64);
    out.extend_from_slice(&text);
    field(&mut out, 2, 0);
    varint(&mut out, seq % 1000);
    field(&mut out, 3, 1);
    out.extend_from_slice(&PRICE.to_le_bytes());
    field(&mut out, 5, 2);
    varint(&mut out, 4);
    out.extend_from_slice(b"XNAS");
    for t in [b"a", b"b"] {
        field(&mut out, 6, 2);
        varint(&mut out, 1);
        out.extend_from_slice(t);
    }
    field(&mut out, 7, 0);
    varint(&mut out, 1);
    out
}

/// The bench's text value out of a delivered `data:` value: the value
/// itself, or field `v` of a trade record's JSON.
pub fn text_of(value: &[u8]) -> &[u8] {
    match value.strip_prefix(b"{\"v\":\"") {
        Some(rest) => {
            let end = rest.iter().position(|&b| b == b'"').unwrap_or(rest.len());
            &rest[..end]
        }
        None => value,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald::formats::{Kind, Standalone};

    #[test]
    fn herald_decodes_the_avro_record_to_the_json_one() {
        let schema = Standalone::compile(Kind::Avro, AVRO_SCHEMA).unwrap_or_else(|e| panic!("{e}"));
        let mut avro = Vec::new();
        write_encoded(&mut avro, Encoding::Avro, 1_700_000_000_000_000, 3, 42, 200);
        assert!((195..=205).contains(&avro.len()), "{}", avro.len());
        let decoded = schema.decode(&avro[5..]).unwrap_or_else(|e| panic!("{e}"));
        let mut json = Vec::new();
        write_encoded(&mut json, Encoding::Json, 1_700_000_000_000_000, 3, 42, 200);
        assert_eq!(
            String::from_utf8_lossy(&decoded),
            String::from_utf8_lossy(&json),
            "a JSON topic delivers what herald makes of the Avro one"
        );
        assert_eq!(
            crate::record::parse_value(text_of(&decoded)),
            Some((1_700_000_000_000_000, 3, 42))
        );
    }

    #[test]
    fn herald_decodes_the_protobuf_record() {
        let schema =
            Standalone::compile(Kind::Protobuf, PROTO_SCHEMA).unwrap_or_else(|e| panic!("{e}"));
        let body = protobuf_body(5, 1, 7, 200);
        let decoded = schema.decode(&body).unwrap_or_else(|e| panic!("{e}"));
        let v: serde_json::Value = serde_json::from_slice(&decoded).unwrap_or_default();
        assert_eq!(v["qty"], 7);
        assert_eq!(v["tags"], serde_json::json!(["a", "b"]));
        assert_eq!(
            crate::record::parse_value(text_of(&decoded)),
            Some((5, 1, 7))
        );
    }
}
