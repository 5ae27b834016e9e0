//! A record as CEL sees it, built once per record (and only if a filter
//! needs it): `key` and `value` (decoded JSON, JSON text parsed, other
//! UTF-8 text as a string, anything else as bytes, absent as null),
//! `headers` (a map of strings, or bytes), `timestamp` (milliseconds since
//! the epoch), `partition`, `offset`, `topic`.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

#[derive(Debug)]
pub struct RecordVars {
    key: cel::Value,
    value: cel::Value,
    headers: cel::Value,
    timestamp: cel::Value,
    partition: cel::Value,
    offset: cel::Value,
    topic: cel::Value,
}

/// What a key or value is to a filter.
pub enum Field<'a> {
    Absent,
    /// JSON text (decoded, or raw text that parsed as JSON).
    Json(&'a serde_json::Value),
    Bytes(&'a Bytes),
}

fn bytes_value(b: &Bytes) -> cel::Value {
    match std::str::from_utf8(b) {
        Ok(s) => cel::Value::String(Arc::new(s.to_owned())),
        Err(_) => cel::Value::Bytes(Arc::new(b.to_vec())),
    }
}

fn field_value(f: Field<'_>) -> cel::Value {
    match f {
        Field::Absent => cel::Value::Null,
        Field::Json(v) => json_value(v),
        Field::Bytes(b) => bytes_value(b),
    }
}

/// JSON as CEL: integers as `int` when they fit (so `value.n % 3` works as
/// written), else `uint`, else `double`. serde_json bounds the nesting.
fn json_value(v: &serde_json::Value) -> cel::Value {
    use serde_json::Value as J;
    match v {
        J::Null => cel::Value::Null,
        J::Bool(b) => cel::Value::Bool(*b),
        J::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => cel::Value::Int(i),
            (None, Some(u)) => cel::Value::UInt(u),
            _ => cel::Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        J::String(s) => cel::Value::String(Arc::new(s.clone())),
        J::Array(items) => cel::Value::List(Arc::new(items.iter().map(json_value).collect())),
        J::Object(members) => {
            let map: HashMap<cel::objects::Key, cel::Value> = members
                .iter()
                .map(|(k, v)| {
                    (
                        cel::objects::Key::String(Arc::new(k.clone())),
                        json_value(v),
                    )
                })
                .collect();
            cel::Value::Map(cel::objects::Map { map: Arc::new(map) })
        }
    }
}

impl RecordVars {
    pub fn new(
        topic: &str,
        partition: i32,
        offset: i64,
        timestamp: Option<i64>,
        key: Field<'_>,
        value: Field<'_>,
        headers: &[(String, Option<Bytes>)],
    ) -> RecordVars {
        let mut map: HashMap<cel::objects::Key, cel::Value> = HashMap::new();
        for (name, v) in headers {
            let v = v.as_ref().map_or(cel::Value::Null, bytes_value);
            map.insert(cel::objects::Key::String(Arc::new(name.clone())), v);
        }
        RecordVars {
            key: field_value(key),
            value: field_value(value),
            headers: cel::Value::Map(cel::objects::Map { map: Arc::new(map) }),
            timestamp: timestamp.map_or(cel::Value::Null, cel::Value::Int),
            partition: cel::Value::Int(i64::from(partition)),
            offset: cel::Value::Int(offset),
            topic: cel::Value::String(Arc::new(topic.to_owned())),
        }
    }
}

/// Variables are handed to the interpreter only when an expression reads
/// them (binding all seven for every evaluation cost more than most
/// evaluations themselves).
impl cel::context::VariableResolver for RecordVars {
    fn resolve<'b>(&'b self, variable: &str) -> Option<cel::common::value::CowVal<'b, 'b>> {
        let v = match variable {
            "key" => &self.key,
            "value" => &self.value,
            "headers" => &self.headers,
            "timestamp" => &self.timestamp,
            "partition" => &self.partition,
            "offset" => &self.offset,
            "topic" => &self.topic,
            _ => return None,
        };
        let boxed: Box<dyn cel::common::value::Val> = v.clone().try_into().ok()?;
        Some(cel::common::value::CowVal::Owned(boxed))
    }
}
