//! `cursor-sizes`: how long herald's event ids (cursors) are for
//! subscriptions of 1, 16 and 64 partitions. No server, no clients.
//!
//! It owns only the positions it encodes; the encoding is herald's own
//! (`herald::cursor::Cursor::encode_into`), so the figures follow any
//! change to it. The decision to know: two sets of positions are measured,
//! a busy topic's (offsets around a billion, within a million of each
//! other) and the worst case below 2^32 (alternating extremes), since the
//! encoding's size depends on how far apart the offsets are (it writes
//! deltas between partitions).

/// The partition counts measured.
const PARTITIONS: [usize; 3] = [1, 16, 64];
/// The subscription's fingerprint (any value: it has a fixed size).
const FINGERPRINT: u32 = 0xfeed_f00d;

fn encoded_len(positions: &[i64]) -> usize {
    let mut out = String::new();
    herald::cursor::Cursor::encode_into(FINGERPRINT, positions.iter().copied(), &mut out);
    out.len()
}

pub fn cursor_sizes() {
    for n in PARTITIONS {
        // Offsets of a busy topic: around a billion, partitions within a million of each other.
        let busy: Vec<i64> = (0..n as i64)
            .map(|i| 1_000_000_000 + (i * 7_919_111) % 1_000_000)
            .collect();
        let worst: Vec<i64> = (0..n as i64)
            .map(|i| if i % 2 == 0 { (1 << 32) - 1 } else { 0 })
            .collect();
        println!(
            "{{\"partitions\":{n},\"id_bytes_busy_topic\":{},\"id_bytes_worst_below_2^32\":{}}}",
            encoded_len(&busy),
            encoded_len(&worst)
        );
    }
}
