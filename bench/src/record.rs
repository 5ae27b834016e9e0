//! The record value every producer sends and every client checks:
//! `<send time, µs since the epoch> <stream> <sequence number> <padding>`.
//!
//! It owns writing and reading that value and the clock it is stamped with.
//! It does not know about SSE framing, Kafka or HTTP: the producers put the
//! value where their server wants it, the workers get it from `data:` lines.
//! The decision to know: latency is taken from the send time in the value
//! itself, so producer and clients must share this one wall clock
//! ([`now_us`]) and run on the same machine.

use std::time::{SystemTime, UNIX_EPOCH};

/// Digits a time or a sequence number may have (u64::MAX has 20).
const MAX_U64_DIGITS: usize = 19;
/// Digits a stream number may have.
const MAX_STREAM_DIGITS: usize = 9;

/// The wall clock records are stamped with, in µs since the epoch.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// The value of a record: send time, stream, sequence number, padded with
/// `x` to `size` bytes (never cut: a value is at least its numbers).
pub fn make_value(ts: u64, stream: usize, seq: u64, size: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(size);
    write_value(&mut v, ts, stream, seq, size);
    v
}

/// Appends a record's value to `out` (see [`make_value`]).
pub fn write_value(out: &mut Vec<u8>, ts: u64, stream: usize, seq: u64, size: usize) {
    use std::io::Write as _;
    let start = out.len();
    // Writing to a Vec cannot fail.
    let _ = write!(out, "{ts} {stream} {seq} ");
    if out.len() - start < size {
        out.resize(start + size, b'x');
    }
}

/// Reads a value back: (send time, stream, sequence number), or None if it
/// is not one of ours. Allocates nothing.
pub fn parse_value(v: &[u8]) -> Option<(u64, u32, u64)> {
    let mut it = v.split(|&b| b == b' ');
    let mut num = |max_len: usize| -> Option<u64> {
        let f = it.next()?;
        if f.is_empty() || f.len() > max_len || !f.iter().all(u8::is_ascii_digit) {
            return None;
        }
        Some(f.iter().fold(0u64, |a, &b| a * 10 + u64::from(b - b'0')))
    };
    let ts = num(MAX_U64_DIGITS)?;
    let stream = num(MAX_STREAM_DIGITS)?;
    let seq = num(MAX_U64_DIGITS)?;
    Some((ts, stream as u32, seq))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_reads_back_and_is_padded_to_size() {
        let v = make_value(1_700_000_000_000_000, 7, 42, 100);
        assert_eq!(v.len(), 100);
        assert!(v.starts_with(b"1700000000000000 7 42 x"));
        assert_eq!(parse_value(&v), Some((1_700_000_000_000_000, 7, 42)));
    }

    #[test]
    fn a_short_size_never_cuts_the_numbers() {
        let v = make_value(12, 3, 4, 2);
        assert_eq!(v, b"12 3 4 ");
        assert_eq!(parse_value(&v), Some((12, 3, 4)));
    }

    #[test]
    fn appending_writes_the_same_bytes() {
        let mut out = b"data: ".to_vec();
        write_value(&mut out, 5, 0, 9, 20);
        assert_eq!(&out[6..], &make_value(5, 0, 9, 20)[..]);
    }

    #[test]
    fn anything_else_is_not_a_value() {
        for bad in [
            &b""[..],
            b"x 1 2",
            b"1 2",
            b"1 1234567890 2",
            b"12345678901234567890 0 0",
        ] {
            assert_eq!(parse_value(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
