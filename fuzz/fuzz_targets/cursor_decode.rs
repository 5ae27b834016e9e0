//! `Cursor::decode` on any text a client can send as `Last-Event-ID` or
//! `?lastEventId=`: it never panics, a cursor it accepts has exactly the
//! subscription's shape (so it cannot widen what is delivered), and what it
//! accepts survives a re-encode unchanged.
//!
//! Input: `slots: u8`, `fingerprint: u32 LE`, then the cursor text (bytes
//! that are not UTF-8 are replaced, as a header's `to_str` would refuse them).
#![no_main]

use herald::cursor::{Cursor, CursorError, MAX_TEXT_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&slots, rest)) = data.split_first() else {
        return;
    };
    let Some((fingerprint, text)) = rest.split_first_chunk::<4>() else {
        return;
    };
    let slots = usize::from(slots);
    let fingerprint = u32::from_le_bytes(*fingerprint);
    let text = String::from_utf8_lossy(text);

    match Cursor::decode(&text, fingerprint, slots) {
        Ok(cursor) => {
            assert!(text.len() <= MAX_TEXT_LEN);
            assert_eq!(
                cursor.fingerprint, fingerprint,
                "accepted another subscription's cursor"
            );
            assert_eq!(
                cursor.positions.len(),
                slots,
                "accepted a cursor of another shape"
            );
            assert!(
                cursor.positions.iter().all(|&p| p >= 0),
                "accepted a negative offset: {:?}",
                cursor.positions
            );
            let again = cursor.encode();
            assert_eq!(
                Cursor::decode(&again, fingerprint, slots).as_ref(),
                Ok(&cursor)
            );
            // A cursor is never valid for another fingerprint or slot count.
            assert_eq!(
                Cursor::decode(&text, fingerprint ^ 1, slots),
                Err(CursorError::Mismatch)
            );
            assert!(Cursor::decode(&text, fingerprint, slots + 1).is_err());
            if slots > 0 {
                assert!(Cursor::decode(&text, fingerprint, slots - 1).is_err());
            }
        }
        Err(CursorError::TooLong) => assert!(text.len() > MAX_TEXT_LEN),
        Err(_) => {}
    }
});
