//! JSON Schema values are JSON already: checked, and passed through with
//! insignificant whitespace removed (an event's envelope is one line).

/// `body` as one-line JSON text, or why it is not JSON.
pub fn decode(body: &[u8]) -> Result<Vec<u8>, String> {
    // serde_json skips over a string it ignores without checking its UTF-8.
    let text = std::str::from_utf8(body).map_err(|e| format!("not UTF-8: {e}"))?;
    serde_json::from_str::<serde::de::IgnoredAny>(text).map_err(|e| e.to_string())?;
    Ok(minify(body))
}

/// Drops whitespace outside strings; `text` is valid JSON, so inside a
/// string every quote that ends it is unescaped.
fn minify(text: &[u8]) -> Vec<u8> {
    if !text
        .iter()
        .any(|b| matches!(b, b' ' | b'\n' | b'\r' | b'\t'))
    {
        return text.to_vec();
    }
    let mut out = Vec::with_capacity(text.len());
    let (mut in_string, mut escaped) = (false, false);
    for &b in text {
        if in_string {
            out.push(b);
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if b == b'"' {
            in_string = true;
            out.push(b);
        } else if !matches!(b, b' ' | b'\n' | b'\r' | b'\t') {
            out.push(b);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn passes_json_through_on_one_line() {
        let text = b"{\n  \"a b\": [1, 2],\n  \"q\": \"x \\\" y\"\n}";
        assert_eq!(
            decode(text).ok().as_deref(),
            Some(&b"{\"a b\":[1,2],\"q\":\"x \\\" y\"}"[..])
        );
        assert_eq!(
            decode(b"12345678901234567890123").ok().as_deref(),
            Some(&b"12345678901234567890123"[..])
        );
        assert!(decode(b"{\"a\":").is_err());
        // Found by fuzzing: a string holding bytes that are not UTF-8.
        assert!(decode(b"\"z+\x82\"").is_err());
    }

    proptest! {
        #[test]
        fn minifying_keeps_the_value(v in proptest::arbitrary::any::<Vec<(String, Vec<i32>)>>()) {
            let pretty = serde_json::to_vec_pretty(&v).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let small = decode(&pretty).map_err(TestCaseError::fail)?;
            let back: Vec<(String, Vec<i32>)> = serde_json::from_slice(&small).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(back, v);
            prop_assert!(!small.contains(&b'\n'));
        }
    }
}
