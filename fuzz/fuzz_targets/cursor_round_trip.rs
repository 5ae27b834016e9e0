//! `Cursor::encode_into` then `Cursor::decode`: every cursor herald mints
//! comes back exactly, in the base64url alphabet (no CORS preflight), and is
//! refused for any other subscription shape. Offsets herald never mints
//! (negative ones) never decode to a negative offset.
//!
//! Input: `fingerprint: u32 LE`, then 9 bytes per position: a shift (so small
//! offsets and close neighbours are common) and a `u64 LE`.
#![no_main]

use herald::cursor::{Cursor, CursorError, MAX_TEXT_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((fingerprint, rest)) = data.split_first_chunk::<4>() else {
        return;
    };
    let fingerprint = u32::from_le_bytes(*fingerprint);
    let raw: Vec<i64> = rest
        .chunks_exact(9)
        .map(|c| {
            let mut value = [0u8; 8];
            value.copy_from_slice(&c[1..]);
            (u64::from_le_bytes(value) >> (c[0] % 64)) as i64
        })
        .collect();

    // What herald mints: offsets >= 0.
    let positions: Vec<i64> = raw.iter().map(|&p| p & i64::MAX).collect();
    let slots = positions.len();
    let mut text = String::from("prefix");
    Cursor::encode_into(fingerprint, positions.iter().copied(), &mut text);
    let text = text
        .strip_prefix("prefix")
        .expect("encode_into appends")
        .to_owned();
    assert!(
        text.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "not base64url: {text}"
    );
    let cursor = Cursor {
        fingerprint,
        positions,
    };
    assert_eq!(cursor.encode(), text);
    if text.len() > MAX_TEXT_LEN {
        assert_eq!(
            Cursor::decode(&text, fingerprint, slots),
            Err(CursorError::TooLong)
        );
        return;
    }
    assert_eq!(
        Cursor::decode(&text, fingerprint, slots).as_ref(),
        Ok(&cursor)
    );
    assert_eq!(
        Cursor::decode(&text, fingerprint.wrapping_add(1), slots),
        Err(CursorError::Mismatch)
    );
    assert_eq!(
        Cursor::decode(&text, fingerprint, slots + 1),
        Err(CursorError::Mismatch)
    );
    if slots > 0 {
        assert_eq!(
            Cursor::decode(&text, fingerprint, slots - 1),
            Err(CursorError::Trailing)
        );
    }

    // Offsets herald never mints: decoding must not panic nor yield a negative offset.
    let mut text = String::new();
    Cursor::encode_into(fingerprint, raw.iter().copied(), &mut text);
    if let Ok(c) = Cursor::decode(&text, fingerprint, slots) {
        assert!(c.positions.iter().all(|&p| p >= 0), "{:?}", c.positions);
    }
});
