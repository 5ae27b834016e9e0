//! The cursor: the SSE event id, which is a Kafka position.
//!
//! A cursor holds, for every partition ("slot") of a connection's
//! subscription, the next offset to deliver. The slots themselves are not in
//! the cursor: they follow from the request's selectors, which a reconnecting
//! EventSource repeats (same URL). The cursor carries a 32-bit fingerprint of
//! the subscription instead, so a cursor minted for another subscription is
//! rejected rather than obeyed, and a forged cursor can at most move offsets
//! within the partitions the request already names: it never widens what is
//! delivered.
//!
//! Wire form (then base64url without padding, so browsers send it back
//! without a CORS preflight):
//!
//! ```text
//! version:u8 = 1 | fingerprint:u32 LE | offset[0]: uvarint | offset[i] - offset[i-1]: zigzag varint ...
//! ```
//!
//! Offsets of one topic's partitions move together, so deltas stay short: 16
//! partitions fit in 128 characters with offsets anywhere below 2^32.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

const VERSION: u8 = 1;

/// The longest cursor text accepted on input. Large whole-topic subscriptions
/// produce long ids (a few bytes per partition); anything beyond this is not
/// one of ours.
pub const MAX_TEXT_LEN: usize = 8 * 1024;

/// The longest text a cursor over `slots` slots can take, whatever its
/// offsets: a version byte, the fingerprint, and at most ten varint bytes
/// per slot, in unpadded base64.
pub const fn longest_text(slots: usize) -> usize {
    let raw = 5usize.saturating_add(slots.saturating_mul(10));
    raw.saturating_mul(4).div_ceil(3)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub fingerprint: u32,
    /// Next offset to deliver, per slot, in the subscription's slot order.
    pub positions: Vec<i64>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CursorError {
    #[error("cursor is longer than {MAX_TEXT_LEN} characters")]
    TooLong,
    #[error("cursor is not base64url text")]
    NotBase64,
    #[error("cursor is truncated")]
    Truncated,
    #[error("cursor version {0} is not supported (this node reads version {VERSION})")]
    Version(u8),
    #[error("cursor has trailing bytes")]
    Trailing,
    #[error("cursor holds a negative or overflowing offset")]
    BadOffset,
    #[error("cursor was issued for a different subscription; reconnect without it or with the same topics")]
    Mismatch,
}

impl Cursor {
    /// Appends the text form to `out`.
    pub fn encode_into(
        fingerprint: u32,
        positions: impl IntoIterator<Item = i64>,
        out: &mut String,
    ) {
        let mut raw = Vec::with_capacity(16);
        raw.push(VERSION);
        raw.extend_from_slice(&fingerprint.to_le_bytes());
        let mut previous: Option<i64> = None;
        for position in positions {
            match previous {
                None => put_uvarint(&mut raw, position.max(0) as u64),
                Some(p) => put_uvarint(&mut raw, zigzag(position.wrapping_sub(p))),
            }
            previous = Some(position);
        }
        URL_SAFE_NO_PAD.encode_string(&raw, out);
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        Self::encode_into(self.fingerprint, self.positions.iter().copied(), &mut out);
        out
    }

    /// Parses a cursor for a subscription with `slots` slots and the given
    /// fingerprint. Never panics, whatever the input.
    pub fn decode(text: &str, fingerprint: u32, slots: usize) -> Result<Cursor, CursorError> {
        if text.len() > MAX_TEXT_LEN {
            return Err(CursorError::TooLong);
        }
        let raw = URL_SAFE_NO_PAD
            .decode(text.trim())
            .map_err(|_| CursorError::NotBase64)?;
        let (&version, rest) = raw.split_first().ok_or(CursorError::Truncated)?;
        if version != VERSION {
            return Err(CursorError::Version(version));
        }
        let fp: [u8; 4] = rest
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .ok_or(CursorError::Truncated)?;
        let mut rest = &rest[4..];
        let found = u32::from_le_bytes(fp);
        let mut positions = Vec::with_capacity(slots.min(1024));
        let mut previous: Option<i64> = None;
        while !rest.is_empty() {
            if positions.len() == slots {
                return Err(CursorError::Trailing);
            }
            let (value, used) = get_uvarint(rest).ok_or(CursorError::Truncated)?;
            rest = &rest[used..];
            let position = match previous {
                None => i64::try_from(value).map_err(|_| CursorError::BadOffset)?,
                Some(p) => p
                    .checked_add(unzigzag(value))
                    .ok_or(CursorError::BadOffset)?,
            };
            if position < 0 {
                return Err(CursorError::BadOffset);
            }
            positions.push(position);
            previous = Some(position);
        }
        if found != fingerprint || positions.len() != slots {
            return Err(CursorError::Mismatch);
        }
        Ok(Cursor {
            fingerprint: found,
            positions,
        })
    }
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

fn put_uvarint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_uvarint(buf: &[u8]) -> Option<(u64, usize)> {
    let mut value: u64 = 0;
    for (i, &byte) in buf.iter().enumerate().take(10) {
        let bits = u64::from(byte & 0x7f);
        if i == 9 && byte > 1 {
            return None; // more than 64 bits
        }
        value |= bits << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn text(fp: u32, positions: &[i64]) -> String {
        Cursor {
            fingerprint: fp,
            positions: positions.to_vec(),
        }
        .encode()
    }

    #[test]
    fn round_trip() {
        let c = Cursor {
            fingerprint: 0xdead_beef,
            positions: vec![0, 5, 3, 1 << 40, 7],
        };
        assert_eq!(Cursor::decode(&c.encode(), 0xdead_beef, 5), Ok(c));
    }

    #[test]
    fn sizes_fit_the_preflight_free_limit() {
        // One partition, a large offset.
        assert!(text(1, &[4_000_000_000]).len() <= 20);
        // 16 partitions of one topic, offsets near each other.
        let near: Vec<i64> = (0..16).map(|i| 1_500_000_000 + i * 9_973).collect();
        assert!(text(1, &near).len() <= 80, "{}", text(1, &near).len());
        // 16 partitions, worst case below 2^32: each delta may be as large as the offsets.
        let spread: Vec<i64> = (0..16)
            .map(|i| if i % 2 == 0 { (1 << 32) - 1 } else { 0 })
            .collect();
        let t = text(u32::MAX, &spread);
        assert!(t.len() <= 128, "16 partitions took {} bytes", t.len());
        assert!(t
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    }

    #[test]
    fn rejects_other_subscriptions_and_garbage() {
        let t = text(7, &[1, 2]);
        assert_eq!(Cursor::decode(&t, 8, 2), Err(CursorError::Mismatch));
        assert_eq!(Cursor::decode(&t, 7, 3), Err(CursorError::Mismatch));
        assert_eq!(Cursor::decode(&t, 7, 1), Err(CursorError::Trailing));
        assert_eq!(Cursor::decode("!!", 7, 2), Err(CursorError::NotBase64));
        assert_eq!(Cursor::decode("", 7, 2), Err(CursorError::Truncated));
        assert_eq!(Cursor::decode("Ag", 7, 2), Err(CursorError::Version(2)));
        // A delta that would take the offset below zero.
        let mut raw = vec![VERSION];
        raw.extend_from_slice(&7u32.to_le_bytes());
        raw.extend_from_slice(&[5, 21]); // 5, then -11
        let t = URL_SAFE_NO_PAD.encode(raw);
        assert_eq!(Cursor::decode(&t, 7, 2), Err(CursorError::BadOffset));
    }

    #[test]
    fn no_cursor_is_longer_than_its_bound() {
        for slots in [0usize, 1, 16, 255, 256] {
            for pattern in [[i64::MAX, 0], [0, i64::MAX], [i64::MAX, i64::MAX]] {
                let positions: Vec<i64> = (0..slots).map(|i| pattern[i % 2]).collect();
                let t = text(u32::MAX, &positions);
                assert!(
                    t.len() <= longest_text(slots),
                    "{slots}: {} > {}",
                    t.len(),
                    longest_text(slots)
                );
                assert_eq!(
                    Cursor::decode(&t, u32::MAX, slots).map(|c| c.positions),
                    Ok(positions)
                );
            }
        }
        assert!(longest_text(256) <= MAX_TEXT_LEN);
    }

    proptest! {
        #[test]
        fn any_positions_round_trip(fp in any::<u32>(), positions in proptest::collection::vec(0i64..i64::MAX / 2, 0..70)) {
            let c = Cursor { fingerprint: fp, positions: positions.clone() };
            prop_assert_eq!(Cursor::decode(&c.encode(), fp, positions.len()), Ok(c));
        }

        #[test]
        fn random_text_never_panics_and_never_widens(s in "\\PC{0,300}", fp in any::<u32>(), slots in 0usize..20) {
            if let Ok(c) = Cursor::decode(&s, fp, slots) {
                prop_assert_eq!(c.positions.len(), slots);
                prop_assert!(c.positions.iter().all(|&p| p >= 0));
            }
        }

        #[test]
        fn mutated_cursors_never_panic_and_never_widen(positions in proptest::collection::vec(0i64..1 << 40, 1..20), flip in any::<(usize, u8)>()) {
            let fp = 42;
            let mut raw = URL_SAFE_NO_PAD.decode(text(fp, &positions)).unwrap_or_default();
            let at = flip.0 % raw.len().max(1);
            if let Some(b) = raw.get_mut(at) { *b ^= flip.1; }
            let t = URL_SAFE_NO_PAD.encode(&raw);
            if let Ok(c) = Cursor::decode(&t, fp, positions.len()) {
                prop_assert_eq!(c.positions.len(), positions.len());
                prop_assert!(c.positions.iter().all(|&p| p >= 0));
            }
        }
    }
}
