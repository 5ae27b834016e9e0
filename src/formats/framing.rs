//! Confluent's wire framing: byte 0 is a magic 0, bytes 1–4 the schema id
//! (big-endian), then, for Protobuf only, the path of the message type in
//! its file, then the encoded data.
//!
//! The path is a count and that many indexes, each a zigzag varint (as
//! Kafka's own `ByteUtils.writeVarint`); a single 0 byte stands for `[0]`,
//! the first message of the file, which is most of them.

const MAGIC: u8 = 0;
const HEADER_LEN: usize = 5;
/// Deeper than any real nesting of message declarations.
const MAX_PATH: usize = 32;

/// A value in Confluent's framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Framed<'a> {
    pub schema_id: u32,
    /// Everything after the schema id.
    pub body: &'a [u8],
}

/// The schema id and the rest, if `bytes` is in Confluent's framing.
pub fn split(bytes: &[u8]) -> Option<Framed<'_>> {
    if bytes.len() < HEADER_LEN || bytes[0] != MAGIC {
        return None;
    }
    let id = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
    Some(Framed {
        schema_id: id,
        body: &bytes[HEADER_LEN..],
    })
}

/// Splits a Protobuf body into its message-index path and the message bytes.
pub fn message_path(body: &[u8]) -> Result<(Vec<usize>, &[u8]), String> {
    let (count, mut rest) =
        read_zigzag(body).ok_or_else(|| "truncated message-index varint".to_string())?;
    if count == 0 {
        return Ok((vec![0], rest));
    }
    let count = usize::try_from(count)
        .ok()
        .filter(|&n| n <= MAX_PATH)
        .ok_or_else(|| format!("message-index count {count} is not between 0 and {MAX_PATH}"))?;
    let mut path = Vec::with_capacity(count);
    for _ in 0..count {
        let (index, after) =
            read_zigzag(rest).ok_or_else(|| "truncated message-index varint".to_string())?;
        let index =
            usize::try_from(index).map_err(|_| format!("message index {index} is negative"))?;
        path.push(index);
        rest = after;
    }
    Ok((path, rest))
}

/// One zigzag-encoded varint of at most 64 bits (Kafka's and Avro's
/// `long`), and what follows it; `None` if truncated.
pub fn read_zigzag(bytes: &[u8]) -> Option<(i64, &[u8])> {
    let mut value: u64 = 0;
    for (i, &b) in bytes.iter().enumerate().take(10) {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            let signed = ((value >> 1) as i64) ^ -((value & 1) as i64);
            return Some((signed, &bytes[i + 1..]));
        }
    }
    None
}

/// Appends `v` as an unsigned varint (Protobuf's).
pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

/// Appends `v` zigzag-encoded (Kafka's and Avro's `long`).
pub fn put_zigzag(out: &mut Vec<u8>, v: i64) {
    put_varint(out, ((v << 1) ^ (v >> 63)) as u64);
}

/// Encodes a message-index path (tests and the load generator produce with it).
pub fn encode_message_path(path: &[usize], out: &mut Vec<u8>) {
    if path == [0] {
        out.push(0);
        return;
    }
    put_zigzag(out, i64::try_from(path.len()).unwrap_or(i64::MAX));
    for &i in path {
        put_zigzag(out, i64::try_from(i).unwrap_or(i64::MAX));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn header() {
        assert_eq!(split(&[0, 0, 0, 1, 2, 9]).map(|f| f.schema_id), Some(258));
        assert_eq!(split(&[0, 0, 0, 1]), None, "too short");
        assert_eq!(split(b"{\"a\":1}"), None, "not framed");
    }

    #[test]
    fn paths() {
        assert_eq!(message_path(&[0, 7]).ok(), Some((vec![0], &[7u8][..])));
        // [1, 2] as zigzag: count 2 → 4, then 1 → 2, 2 → 4.
        assert_eq!(
            message_path(&[4, 2, 4, 9]).ok(),
            Some((vec![1, 2], &[9u8][..]))
        );
        assert!(message_path(&[3, 2]).is_err(), "count -2");
        assert!(message_path(&[0x80]).is_err(), "truncated");
        assert!(message_path(&[2, 1]).is_err(), "index -1");
        assert!(message_path(&[]).is_err());
    }

    proptest! {
        #[test]
        fn paths_round_trip(path in proptest::collection::vec(0usize..100_000, 1..8)) {
            let mut out = Vec::new();
            encode_message_path(&path, &mut out);
            out.push(42);
            let (back, rest) = message_path(&out).map_err(TestCaseError::fail)?;
            prop_assert_eq!(back, path);
            prop_assert_eq!(rest, &[42u8][..]);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..32)) {
            let _ = message_path(&bytes);
            let _ = split(&bytes);
        }
    }
}
