//! `fields=price,ts,customer.id`: the value keeps only those paths, nested
//! as they were; a path the value does not have is left out. A value that
//! is not a JSON object projects to `{}`.

use bytes::Bytes;
use serde_json::{Map, Value};

use super::FilterError;

const MAX_PATHS: usize = 32;
const MAX_SEGMENTS: usize = 8;
const MAX_SEGMENT_BYTES: usize = 128;

#[derive(Debug, Clone)]
pub struct Projection {
    /// Unique on this node while in use (body caches key on it).
    pub id: u64,
    /// Sorted, without duplicates, comma-joined: equal for equal lists.
    canonical: String,
    paths: Vec<Vec<String>>,
}

impl Projection {
    pub fn parse(text: &str) -> Result<Projection, FilterError> {
        let mut paths: Vec<Vec<String>> = Vec::new();
        for raw in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let segments: Vec<String> = raw.split('.').map(str::to_owned).collect();
            if segments.len() > MAX_SEGMENTS {
                return Err(FilterError(format!(
                    "fields= path `{raw}` has more than {MAX_SEGMENTS} segments"
                )));
            }
            for s in &segments {
                let ok = !s.is_empty()
                    && s.len() <= MAX_SEGMENT_BYTES
                    && s.chars()
                        .all(|c| c.is_alphanumeric() || c == '_' || c == '-' || c == '$');
                if !ok {
                    return Err(FilterError(format!(
                        "fields= path `{raw}`: each segment is 1-{MAX_SEGMENT_BYTES} letters, digits, _ - or $"
                    )));
                }
            }
            paths.push(segments);
        }
        if paths.is_empty() {
            return Err(FilterError("fields= names no field".into()));
        }
        paths.sort();
        paths.dedup();
        if paths.len() > MAX_PATHS {
            return Err(FilterError(format!(
                "fields= names {} paths; the limit is {MAX_PATHS}",
                paths.len()
            )));
        }
        let canonical = paths
            .iter()
            .map(|p| p.join("."))
            .collect::<Vec<_>>()
            .join(",");
        Ok(Projection {
            id: 0,
            canonical,
            paths,
        })
    }

    pub(super) fn with_id(mut self, id: u64) -> Projection {
        self.id = id;
        self
    }

    pub fn canonical(&self) -> &str {
        &self.canonical
    }

    /// The projected value, as one-line JSON text.
    pub fn apply(&self, value: Option<&Value>) -> Bytes {
        let mut out = Map::new();
        if let Some(Value::Object(source)) = value {
            for path in &self.paths {
                copy_path(source, path, &mut out);
            }
        }
        Bytes::from(Value::Object(out).to_string())
    }
}

/// Copies `path` of `source` into `out`, creating the objects on the way.
fn copy_path(source: &Map<String, Value>, path: &[String], out: &mut Map<String, Value>) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    let Some(found) = source.get(first) else {
        return;
    };
    if rest.is_empty() {
        out.insert(first.clone(), found.clone());
        return;
    }
    let Value::Object(inner) = found else {
        return; // the path goes through something that is not an object
    };
    let entry = out
        .entry(first.clone())
        .or_insert_with(|| Value::Object(Map::new()));
    if let Value::Object(target) = entry {
        copy_path(inner, rest, target);
        if target.is_empty() {
            out.remove(first);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keeps_only_the_named_paths() {
        let p = Projection::parse("price, customer.id,ts,customer.id,missing,customer.name.first")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            p.canonical(),
            "customer.id,customer.name.first,missing,price,ts"
        );
        let v =
            json!({"price": 3, "ts": "t", "other": 1, "customer": {"id": 7, "name": "n", "x": 2}});
        let out: Value = serde_json::from_slice(&p.apply(Some(&v))).unwrap_or_default();
        assert_eq!(out, json!({"price": 3, "ts": "t", "customer": {"id": 7}}));
        assert_eq!(&p.apply(Some(&json!("text")))[..], b"{}");
        assert_eq!(&p.apply(None)[..], b"{}");
    }

    #[test]
    fn bad_lists_are_refused() {
        assert!(Projection::parse("").is_err());
        assert!(Projection::parse("a..b").is_err());
        assert!(Projection::parse("a b").is_err());
        assert!(Projection::parse("a.".repeat(9).trim_end_matches('.')).is_err());
        let many: Vec<String> = (0..40).map(|i| format!("f{i}")).collect();
        assert!(Projection::parse(&many.join(",")).is_err());
    }
}
