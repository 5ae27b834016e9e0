//! Avro through `apache-avro`: the registry's schema text (and the named
//! types of its references) compiled once per schema id, each record's
//! datum decoded to `apache_avro::types::Value`, then written as the JSON a
//! JavaScript developer expects, not Avro's own JSON encoding:
//!
//! - unions unwrapped (`null`, or the branch's value, no `{"type": value}`);
//! - enums as their symbol; `bytes` and `fixed` as padded base64;
//! - `decimal` as a string with exactly `scale` fraction digits;
//! - `date` as `YYYY-MM-DD`, `time-*` as `HH:MM:SS.fff`, `timestamp-*` as
//!   RFC 3339 in UTC (`Z`; the `local-` ones without it), with as many
//!   fraction digits as the type's unit (3, 6 or 9);
//! - `long` outside JavaScript's safe integers (±(2^53−1)) as a string;
//! - NaN and the infinities as the strings `"NaN"`, `"Infinity"`, `"-Infinity"`;
//! - maps as objects, records as objects with fields in schema order.
//!
//! The writer walks the value beside its schema (a decimal's scale lives
//! only in the schema) and writes text directly, in field order.

use std::collections::HashMap;
use std::io::Write;

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::schema::{Name, Schema};
use apache_avro::types::Value;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;

/// Beyond this, a Number loses integers in JavaScript.
const MAX_SAFE_INTEGER: i64 = (1 << 53) - 1;
/// Beyond any real decimal (Avro decimals in practice stay under 40 digits).
const MAX_SCALE: usize = 1024;
/// Nesting a value may have (a recursive schema can nest as deep as the
/// data): apache-avro's decoder takes some kilobytes of stack per level,
/// and the reader threads have [`crate::formats::DECODER_STACK`].
const MAX_DEPTH: usize = 128;
/// Values one datum of a recursive schema may hold (nulls take no bytes).
const MAX_ITEMS: usize = 1 << 20;

/// A compiled Avro writer schema.
pub struct AvroSchema {
    main: Schema,
    /// The named types of the schema's references, in dependency order.
    references: Vec<Schema>,
    /// Every named type, for `Schema::Ref`s the writer walks into.
    names: HashMap<Name, Schema>,
    /// Whether a named type can contain itself: then the data says how
    /// deep a value nests, and each datum is measured before decoding.
    recursive: bool,
}

impl std::fmt::Debug for AvroSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AvroSchema")
            .field("names", &self.names.len())
            .finish()
    }
}

impl AvroSchema {
    /// Compiles `text`, whose references' texts are `references` (dependencies first).
    pub fn compile(text: &str, references: &[String]) -> Result<AvroSchema, String> {
        let (main, references) = if references.is_empty() {
            (
                Schema::parse_str(text).map_err(|e| e.to_string())?,
                Vec::new(),
            )
        } else {
            Schema::parse_str_with_list(text, references).map_err(|e| e.to_string())?
        };
        // Dependencies first: names resolve in list order.
        let mut all: Vec<&Schema> = references.iter().collect();
        all.push(&main);
        let resolved = apache_avro::schema::ResolvedSchema::new_with_schemata(all)
            .map_err(|e| e.to_string())?;
        let names = resolved
            .get_names()
            .iter()
            .map(|(n, s)| (n.clone(), (*s).clone()))
            .collect();
        let mut schema = AvroSchema {
            main,
            references,
            names,
            recursive: false,
        };
        match schema.nesting(&schema.main, &mut Vec::new()) {
            None => schema.recursive = true,
            Some(depth) if depth > MAX_DEPTH => {
                return Err(format!("the schema nests deeper than {MAX_DEPTH}"))
            }
            Some(_) => {}
        }
        Ok(schema)
    }

    /// How deep values of `schema` nest at most, or `None` if it can
    /// contain itself. `open` holds the named types being walked.
    fn nesting<'a>(&'a self, schema: &'a Schema, open: &mut Vec<&'a Name>) -> Option<usize> {
        if open.len() > MAX_DEPTH {
            return Some(usize::MAX); // deeper than allowed either way
        }
        let named = match schema {
            Schema::Ref { name } => {
                if open.contains(&name) {
                    return None;
                }
                return match self.names.get(name) {
                    Some(s) => self.nesting(s, open),
                    None => Some(1),
                };
            }
            Schema::Record(r) => Some(&r.name),
            _ => None,
        };
        if let Some(n) = named {
            if open.contains(&n) {
                return None;
            }
            open.push(n);
        }
        let inner = match schema {
            Schema::Record(r) => r
                .fields
                .iter()
                .map(|f| self.nesting(&f.schema, open))
                .try_fold(0, |m, d| d.map(|d| m.max(d))),
            Schema::Array(a) => self.nesting(&a.items, open),
            Schema::Map(m) => self.nesting(&m.types, open),
            Schema::Union(u) => u
                .variants()
                .iter()
                .map(|v| self.nesting(v, open))
                .try_fold(0, |m, d| d.map(|d| m.max(d))),
            _ => Some(0),
        };
        if named.is_some() {
            open.pop();
        }
        inner.map(|d| d.saturating_add(1))
    }

    /// Walks a datum of a recursive schema without recursing (apache-avro's
    /// decoder recurses once per level, some kilobytes of stack each), and
    /// refuses one that nests deeper than [`MAX_DEPTH`] or holds more than
    /// [`MAX_ITEMS`] values.
    fn check_depth(&self, body: &[u8]) -> Result<(), String> {
        enum Task<'a> {
            Value(&'a Schema, usize),
            /// The rest of an array or map block, then further blocks.
            Items {
                schema: &'a Schema,
                map: bool,
                left: u64,
                depth: usize,
            },
        }
        let mut rest = body;
        let mut tasks = vec![Task::Value(&self.main, 0)];
        let mut values = 0usize;
        let short = || "truncated datum".to_string();
        while let Some(task) = tasks.pop() {
            values += 1;
            if values > MAX_ITEMS {
                return Err(format!("more than {MAX_ITEMS} values in one datum"));
            }
            let (schema, depth) = match task {
                Task::Value(s, d) => (s, d),
                Task::Items {
                    schema,
                    map,
                    left,
                    depth,
                } => {
                    let left = if left == 0 {
                        let count = read_long(&mut rest).ok_or_else(short)?;
                        if count < 0 {
                            read_long(&mut rest).ok_or_else(short)?; // the block's byte size
                        }
                        count.unsigned_abs()
                    } else {
                        left
                    };
                    if left == 0 {
                        continue;
                    }
                    tasks.push(Task::Items {
                        schema,
                        map,
                        left: left - 1,
                        depth,
                    });
                    if map {
                        skip_bytes(&mut rest).ok_or_else(short)?;
                    }
                    (schema, depth + 1)
                }
            };
            if depth > MAX_DEPTH {
                return Err(format!("nested deeper than {MAX_DEPTH}"));
            }
            let skip = |rest: &mut &[u8], n: usize| -> Result<(), String> {
                *rest = rest.get(n..).ok_or_else(short)?;
                Ok(())
            };
            match self.resolve(schema) {
                Schema::Null => {}
                Schema::Boolean => skip(&mut rest, 1)?,
                Schema::Float => skip(&mut rest, 4)?,
                Schema::Double => skip(&mut rest, 8)?,
                Schema::Bytes | Schema::String | Schema::BigDecimal => {
                    skip_bytes(&mut rest).ok_or_else(short)?
                }
                Schema::Fixed(f) | Schema::Duration(f) => skip(&mut rest, f.size)?,
                Schema::Decimal(d) => match &d.inner {
                    apache_avro::schema::InnerDecimalSchema::Fixed(f) => skip(&mut rest, f.size)?,
                    apache_avro::schema::InnerDecimalSchema::Bytes => {
                        skip_bytes(&mut rest).ok_or_else(short)?
                    }
                },
                Schema::Uuid(u) => match u {
                    apache_avro::schema::UuidSchema::Fixed(f) => skip(&mut rest, f.size)?,
                    _ => skip_bytes(&mut rest).ok_or_else(short)?,
                },
                Schema::Union(u) => {
                    let i = read_long(&mut rest).ok_or_else(short)?;
                    let branch = usize::try_from(i)
                        .ok()
                        .and_then(|i| u.variants().get(i))
                        .ok_or_else(|| format!("union index {i} out of range"))?;
                    tasks.push(Task::Value(branch, depth + 1));
                }
                Schema::Record(r) => {
                    for f in r.fields.iter().rev() {
                        tasks.push(Task::Value(&f.schema, depth + 1));
                    }
                }
                Schema::Array(a) => tasks.push(Task::Items {
                    schema: &a.items,
                    map: false,
                    left: 0,
                    depth,
                }),
                Schema::Map(m) => tasks.push(Task::Items {
                    schema: &m.types,
                    map: true,
                    left: 0,
                    depth,
                }),
                // int, long, enum and the logical types on them: one varint.
                _ => {
                    read_long(&mut rest).ok_or_else(short)?;
                }
            }
        }
        Ok(())
    }

    /// Decodes one datum (the whole of `body`) to JSON text.
    pub fn decode(&self, body: &[u8]) -> Result<Vec<u8>, String> {
        if self.recursive {
            self.check_depth(body)?;
        }
        let mut all: Vec<&Schema> = self.references.iter().collect();
        all.push(&self.main);
        let reader = GenericDatumReader::builder(&self.main)
            .writer_schemata(all)
            .and_then(|b| b.build())
            .map_err(|e| e.to_string())?;
        let mut rest = body;
        let value = reader.read_value(&mut rest).map_err(|e| e.to_string())?;
        if !rest.is_empty() {
            return Err(format!("{} bytes left after the datum", rest.len()));
        }
        let mut out = Vec::with_capacity(body.len() * 2 + 16);
        self.write(&mut out, &value, &self.main, 0)?;
        Ok(out)
    }

    fn resolve<'a>(&'a self, schema: &'a Schema) -> &'a Schema {
        let mut s = schema;
        // A Ref names a named type, which is never itself a Ref; the bound
        // is only for safety.
        for _ in 0..4 {
            match s {
                Schema::Ref { name } => match self.names.get(name) {
                    Some(named) => s = named,
                    None => return s,
                },
                _ => return s,
            }
        }
        s
    }

    fn write(
        &self,
        out: &mut Vec<u8>,
        value: &Value,
        schema: &Schema,
        depth: usize,
    ) -> Result<(), String> {
        if depth > MAX_DEPTH {
            return Err(format!("nested deeper than {MAX_DEPTH}"));
        }
        let schema = self.resolve(schema);
        match value {
            Value::Null => out.extend_from_slice(b"null"),
            Value::Boolean(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
            Value::Int(i) => write_display(out, i),
            Value::Long(i) => write_long(out, *i),
            Value::Float(f) => write_float(out, f64::from(*f)),
            Value::Double(f) => write_float(out, *f),
            Value::Bytes(b) | Value::Fixed(_, b) => write_base64(out, b),
            Value::String(s) | Value::Enum(_, s) => write_str(out, s),
            Value::Uuid(u) => write_str(out, &u.to_string()),
            Value::Union(i, inner) => {
                let branch = match schema {
                    Schema::Union(u) => usize::try_from(*i).ok().and_then(|i| u.variants().get(i)),
                    _ => None,
                };
                self.write(out, inner, branch.unwrap_or(schema), depth + 1)?;
            }
            Value::Array(items) => {
                let item_schema = match schema {
                    Schema::Array(a) => &*a.items,
                    _ => schema,
                };
                out.push(b'[');
                for (n, item) in items.iter().enumerate() {
                    if n > 0 {
                        out.push(b',');
                    }
                    self.write(out, item, item_schema, depth + 1)?;
                }
                out.push(b']');
            }
            Value::Map(entries) => {
                let value_schema = match schema {
                    Schema::Map(m) => &*m.types,
                    _ => schema,
                };
                // Avro maps have no order; sorted keys make equal maps equal text.
                let mut sorted: Vec<_> = entries.iter().collect();
                sorted.sort_unstable_by(|a, b| a.0.cmp(b.0));
                let members = sorted
                    .into_iter()
                    .map(|(k, v)| (k.as_str(), v, value_schema));
                self.write_object(out, members, depth)?;
            }
            Value::Record(fields) => {
                let field_schemas = match schema {
                    Schema::Record(r) => Some(&r.fields),
                    _ => None,
                };
                let members = fields.iter().enumerate().map(|(n, (name, v))| {
                    let field_schema = field_schemas
                        .and_then(|f| f.get(n))
                        .map_or(schema, |f| &f.schema);
                    (name.as_str(), v, field_schema)
                });
                self.write_object(out, members, depth)?;
            }
            Value::Decimal(d) => {
                let scale = match schema {
                    Schema::Decimal(d) => d.scale,
                    _ => 0,
                };
                if scale > MAX_SCALE {
                    return Err(format!("decimal scale {scale} is beyond {MAX_SCALE}"));
                }
                let unscaled = num_bigint::BigInt::from(d.clone()).to_string();
                write_str(out, &with_scale(&unscaled, scale));
            }
            Value::BigDecimal(d) => write_str(out, &d.to_string()),
            Value::Date(days) => match date(i64::from(*days)) {
                Some(text) => write_str(out, &text),
                None => write_display(out, days),
            },
            Value::TimeMillis(ms) => {
                write_str(out, &time_of_day(i64::from(*ms) * 1_000_000, 3));
            }
            Value::TimeMicros(us) => write_str(out, &time_of_day(us.saturating_mul(1_000), 6)),
            Value::TimestampMillis(t) => write_timestamp(out, *t, 1_000, 3, true),
            Value::TimestampMicros(t) => write_timestamp(out, *t, 1_000_000, 6, true),
            Value::TimestampNanos(t) => write_timestamp(out, *t, 1_000_000_000, 9, true),
            Value::LocalTimestampMillis(t) => write_timestamp(out, *t, 1_000, 3, false),
            Value::LocalTimestampMicros(t) => write_timestamp(out, *t, 1_000_000, 6, false),
            Value::LocalTimestampNanos(t) => write_timestamp(out, *t, 1_000_000_000, 9, false),
            Value::Duration(d) => {
                let _ = write!(
                    out,
                    "{{\"months\":{},\"days\":{},\"milliseconds\":{}}}",
                    u32::from(d.months()),
                    u32::from(d.days()),
                    u32::from(d.millis())
                );
            }
        }
        Ok(())
    }

    /// `{"name":value,…}` for members in order.
    fn write_object<'v>(
        &self,
        out: &mut Vec<u8>,
        members: impl Iterator<Item = (&'v str, &'v Value, &'v Schema)>,
        depth: usize,
    ) -> Result<(), String> {
        out.push(b'{');
        for (n, (name, value, schema)) in members.enumerate() {
            if n > 0 {
                out.push(b',');
            }
            write_str(out, name);
            out.push(b':');
            self.write(out, value, schema, depth + 1)?;
        }
        out.push(b'}');
        Ok(())
    }
}

/// A zigzag varint long, as Avro writes them.
fn read_long(rest: &mut &[u8]) -> Option<i64> {
    let (v, after) = super::framing::read_zigzag(rest)?;
    *rest = after;
    Some(v)
}

/// Skips a length-prefixed `bytes` or `string`.
fn skip_bytes(rest: &mut &[u8]) -> Option<()> {
    let len = usize::try_from(read_long(rest)?).ok()?;
    *rest = rest.get(len..)?;
    Some(())
}

fn write_display(out: &mut Vec<u8>, v: impl std::fmt::Display) {
    let _ = write!(out, "{v}");
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    // Serialising a &str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

fn write_base64(out: &mut Vec<u8>, bytes: &[u8]) {
    out.push(b'"');
    let mut text = String::with_capacity(bytes.len() * 4 / 3 + 4);
    STANDARD.encode_string(bytes, &mut text);
    out.extend_from_slice(text.as_bytes());
    out.push(b'"');
}

fn write_long(out: &mut Vec<u8>, v: i64) {
    if (-MAX_SAFE_INTEGER..=MAX_SAFE_INTEGER).contains(&v) {
        write_display(out, v);
    } else {
        let _ = write!(out, "\"{v}\"");
    }
}

fn write_float(out: &mut Vec<u8>, v: f64) {
    if v.is_nan() {
        out.extend_from_slice(b"\"NaN\"");
    } else if v.is_infinite() {
        out.extend_from_slice(if v > 0.0 {
            b"\"Infinity\""
        } else {
            b"\"-Infinity\""
        });
    } else {
        let _ = serde_json::to_writer(&mut *out, &v);
    }
}

/// `unscaled` (a decimal integer, maybe negative) with `scale` digits after the point.
fn with_scale(unscaled: &str, scale: usize) -> String {
    if scale == 0 {
        return unscaled.to_owned();
    }
    let (sign, digits) = match unscaled.strip_prefix('-') {
        Some(d) => ("-", d),
        None => ("", unscaled),
    };
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (int, frac) = padded.split_at(padded.len() - scale);
    format!("{sign}{int}.{frac}")
}

/// Days since 1970-01-01 as `YYYY-MM-DD`, if within years 1–9999.
fn date(days: i64) -> Option<String> {
    let d = time::Date::from_julian_day(i32::try_from(days.checked_add(2_440_588)?).ok()?).ok()?;
    (d.year() >= 1).then(|| format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day()))
}

/// Nanoseconds since midnight as `HH:MM:SS` and `digits` fraction digits.
fn time_of_day(nanos: i64, digits: usize) -> String {
    let nanos = nanos.rem_euclid(86_400 * 1_000_000_000);
    let secs = nanos / 1_000_000_000;
    let frac = nanos % 1_000_000_000;
    let frac = frac / 10i64.pow(9 - digits as u32);
    format!(
        "{:02}:{:02}:{:02}.{frac:0digits$}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// `ticks` of `per_second` since the epoch as RFC 3339, or the number if
/// outside years 1–9999.
fn write_timestamp(out: &mut Vec<u8>, ticks: i64, per_second: i64, digits: usize, utc: bool) {
    let secs = ticks.div_euclid(per_second);
    let sub = ticks.rem_euclid(per_second);
    let Some(day) = date(secs.div_euclid(86_400)) else {
        return write_display(out, ticks);
    };
    let nanos = secs.rem_euclid(86_400) * 1_000_000_000 + sub * (1_000_000_000 / per_second);
    let _ = write!(
        out,
        "\"{day}T{}{}\"",
        time_of_day(nanos, digits),
        if utc { "Z" } else { "" }
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use apache_avro::writer::datum::GenericDatumWriter;

    fn encode(schema: &Schema, value: Value) -> Vec<u8> {
        GenericDatumWriter::builder(schema)
            .schemata(vec![schema])
            .and_then(|b| b.build())
            .and_then(|w| w.write_value_to_vec(value))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn json(schema: &str, value: Value) -> serde_json::Value {
        let compiled = AvroSchema::compile(schema, &[]).unwrap_or_else(|e| panic!("{e}"));
        let bytes = encode(&compiled.main, value);
        let text = compiled.decode(&bytes).unwrap_or_else(|e| panic!("{e}"));
        serde_json::from_slice(&text).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn scalars_and_logical_types() {
        assert_eq!(json(r#""long""#, Value::Long(1 << 53)), "9007199254740992");
        assert_eq!(
            json(r#""long""#, Value::Long((1 << 53) - 1)),
            9007199254740991i64
        );
        assert_eq!(
            json(r#""long""#, Value::Long(i64::MIN)),
            "-9223372036854775808"
        );
        assert_eq!(json(r#""double""#, Value::Double(f64::NAN)), "NaN");
        assert_eq!(
            json(r#""float""#, Value::Float(f32::NEG_INFINITY)),
            "-Infinity"
        );
        assert_eq!(json(r#""bytes""#, Value::Bytes(vec![0xff, 0])), "/wA=");
        let date = r#"{"type":"int","logicalType":"date"}"#;
        assert_eq!(json(date, Value::Date(19_723)), "2024-01-01");
        assert_eq!(json(date, Value::Date(-1)), "1969-12-31");
        let ts = r#"{"type":"long","logicalType":"timestamp-millis"}"#;
        assert_eq!(
            json(ts, Value::TimestampMillis(1_704_067_200_005)),
            "2024-01-01T00:00:00.005Z"
        );
        assert_eq!(
            json(ts, Value::TimestampMillis(-1)),
            "1969-12-31T23:59:59.999Z"
        );
        let us = r#"{"type":"long","logicalType":"local-timestamp-micros"}"#;
        assert_eq!(
            json(us, Value::LocalTimestampMicros(1_000_001)),
            "1970-01-01T00:00:01.000001"
        );
        let tm = r#"{"type":"int","logicalType":"time-millis"}"#;
        assert_eq!(json(tm, Value::TimeMillis(3_723_004)), "01:02:03.004");
    }

    #[test]
    fn decimals_keep_every_digit() {
        assert_eq!(with_scale("1234", 2), "12.34");
        assert_eq!(with_scale("-5", 2), "-0.05");
        assert_eq!(with_scale("0", 2), "0.00");
        assert_eq!(with_scale("123", 0), "123");
        let d = r#"{"type":"bytes","logicalType":"decimal","precision":30,"scale":3}"#;
        let big = num_bigint::BigInt::parse_bytes(b"-123456789012345678901234567", 10)
            .unwrap_or_default()
            .to_signed_bytes_be();
        assert_eq!(
            json(d, Value::Decimal(apache_avro::Decimal::from(big))),
            "-123456789012345678901234.567"
        );
    }

    #[test]
    fn unions_unwrap_and_records_keep_their_order() {
        let schema = r#"{"type":"record","name":"R","fields":[
            {"name":"z","type":["null","string"]},
            {"name":"a","type":{"type":"enum","name":"E","symbols":["X","Y"]}},
            {"name":"m","type":{"type":"map","values":"long"}},
            {"name":"again","type":"E"}]}"#;
        let v = Value::Record(vec![
            (
                "z".into(),
                Value::Union(1, Box::new(Value::String("hi".into()))),
            ),
            ("a".into(), Value::Enum(1, "Y".into())),
            (
                "m".into(),
                Value::Map([("k".to_owned(), Value::Long(1))].into()),
            ),
            ("again".into(), Value::Enum(0, "X".into())),
        ]);
        let compiled = AvroSchema::compile(schema, &[]).unwrap_or_else(|e| panic!("{e}"));
        let bytes = encode(&compiled.main, v);
        let text = compiled.decode(&bytes).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            String::from_utf8_lossy(&text),
            r#"{"z":"hi","a":"Y","m":{"k":1},"again":"X"}"#
        );
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(compiled.decode(&longer).is_err(), "trailing bytes");
        assert!(compiled.decode(&bytes[..2]).is_err(), "truncated");
    }

    /// Runs `f` on a thread with the stack the node's decoding threads have.
    fn on_decoder_stack(f: impl FnOnce() + Send) {
        std::thread::scope(|s| {
            let t = std::thread::Builder::new()
                .stack_size(crate::formats::DECODER_STACK)
                .spawn_scoped(s, f)
                .unwrap_or_else(|e| panic!("{e}"));
            if let Err(e) = t.join() {
                std::panic::resume_unwind(e);
            }
        });
    }

    #[test]
    fn recursive_schemas_decode_to_a_depth_and_refuse_deeper() {
        on_decoder_stack(recursive_schemas);
    }

    fn recursive_schemas() {
        let list = r#"{"type":"record","name":"L","fields":[{"name":"n","type":["null","L"]}]}"#;
        let c = AvroSchema::compile(list, &[]).unwrap_or_else(|e| panic!("{e}"));
        assert!(c.recursive);
        // Each level: union branch 1 (zigzag 2); the last: branch 0.
        let nested = |depth: usize| {
            let mut body = vec![2u8; depth];
            body.push(0);
            body
        };
        let text = c.decode(&nested(2)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(String::from_utf8_lossy(&text), r#"{"n":{"n":{"n":null}}}"#);
        // The deepest allowed fits the decoding threads' stack (the debug
        // build's frames are the largest).
        assert!(c.decode(&nested(MAX_DEPTH / 2 - 1)).is_ok());
        // Far deeper than any stack: refused before apache-avro recurses.
        let err = c.decode(&nested(1 << 20)).err().unwrap_or_default();
        assert!(err.contains("deeper"), "{err}");
        let many_nulls = r#"{"type":"record","name":"R","fields":[{"name":"a","type":{"type":"array","items":"null"}},{"name":"r","type":["null","R"]}]}"#;
        let c = AvroSchema::compile(many_nulls, &[]).unwrap_or_else(|e| panic!("{e}"));
        // A block of 2^40 nulls in three bytes.
        let err = c
            .decode(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x40, 0, 0])
            .err()
            .unwrap_or_default();
        assert!(err.contains("values"), "{err}");
    }

    #[test]
    fn references_resolve() {
        let money = r#"{"type":"record","name":"Money","namespace":"m","fields":[{"name":"cents","type":"long"}]}"#;
        let order =
            r#"{"type":"record","name":"Order","fields":[{"name":"total","type":"m.Money"}]}"#;
        let compiled =
            AvroSchema::compile(order, &[money.to_owned()]).unwrap_or_else(|e| panic!("{e}"));
        // cents = 150 → zigzag 300 → varint ac 02
        let text = compiled
            .decode(&[0xac, 0x02])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(String::from_utf8_lossy(&text), r#"{"total":{"cents":150}}"#);
    }
}
