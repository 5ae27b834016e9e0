//! What producers control behind a valid Confluent header: the bytes after
//! the schema id. Decoded with an Avro schema holding every type and
//! logical type (recursive too), a Protobuf file with nested messages,
//! maps, oneofs and well-known types, and as JSON Schema data. Whatever the
//! bytes, a decode returns JSON text or an error: it never panics, and
//! what it returns is always valid JSON in UTF-8.
//!
//! Input: one byte picks the schema, the rest is the body.
#![no_main]

use std::sync::OnceLock;

use herald::formats::{Kind, Standalone};
use libfuzzer_sys::fuzz_target;

const AVRO: &str = r#"{"type":"record","name":"All","namespace":"f","fields":[
  {"name":"n","type":"null"},{"name":"b","type":"boolean"},{"name":"i","type":"int"},
  {"name":"l","type":"long"},{"name":"f","type":"float"},{"name":"d","type":"double"},
  {"name":"by","type":"bytes"},{"name":"s","type":"string"},
  {"name":"fx","type":{"type":"fixed","name":"F4","size":4}},
  {"name":"e","type":{"type":"enum","name":"E","symbols":["A","B","C"]}},
  {"name":"a","type":{"type":"array","items":"int"}},
  {"name":"m","type":{"type":"map","values":"string"}},
  {"name":"u","type":["null","string","E"]},
  {"name":"dec","type":{"type":"bytes","logicalType":"decimal","precision":20,"scale":4}},
  {"name":"decf","type":{"type":"fixed","name":"D8","size":8,"logicalType":"decimal","precision":18,"scale":2}},
  {"name":"date","type":{"type":"int","logicalType":"date"}},
  {"name":"tm","type":{"type":"int","logicalType":"time-millis"}},
  {"name":"tu","type":{"type":"long","logicalType":"time-micros"}},
  {"name":"ts","type":{"type":"long","logicalType":"timestamp-millis"}},
  {"name":"tsu","type":{"type":"long","logicalType":"timestamp-micros"}},
  {"name":"lts","type":{"type":"long","logicalType":"local-timestamp-millis"}},
  {"name":"uuid","type":{"type":"string","logicalType":"uuid"}},
  {"name":"next","type":["null","All"]}]}"#;

const PROTO: &str = r#"
syntax = "proto3";
package f;
import "google/protobuf/timestamp.proto";
import "google/protobuf/wrappers.proto";
message First { string x = 1; }
message Order {
  message Line { string sku = 1; int64 qty = 2; Line child = 3; }
  enum Status { NEW = 0; PAID = 1; }
  int64 id = 1; uint64 big = 2; double price = 3; bytes blob = 4; Status status = 5;
  repeated Line lines = 6; map<string, int32> counts = 7;
  oneof pick { string name = 8; sint64 number = 9; }
  google.protobuf.Timestamp at = 10; google.protobuf.StringValue note = 11;
  google.protobuf.Int64Value total = 12; float ratio = 13; bool ok = 14;
}"#;

fn schemas() -> &'static [Standalone; 3] {
    static S: OnceLock<[Standalone; 3]> = OnceLock::new();
    S.get_or_init(|| {
        let compile = |kind, text| Standalone::compile(kind, text).expect("fuzz schema compiles");
        [
            compile(Kind::Avro, AVRO),
            compile(Kind::Protobuf, PROTO),
            compile(Kind::Json, r#"{"type":"object"}"#),
        ]
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let schema = &schemas()[usize::from(pick) % 3];
    if let Ok(text) = schema.decode(body) {
        // Valid JSON text in UTF-8 (a number may still be beyond f64, as
        // JSON allows: `2e2888888888888`).
        let utf8 = std::str::from_utf8(&text);
        assert!(
            utf8.is_ok_and(|t| serde_json::from_str::<serde::de::IgnoredAny>(t).is_ok()),
            "decoded text is not JSON: {:?}",
            String::from_utf8_lossy(&text)
        );
        assert!(!text.contains(&b'\n') && !text.contains(&b'\r'), "decoded text is one line");
    }
});
