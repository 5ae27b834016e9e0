//! Kafka's default key → partition mapping.
//!
//! A keyed subscription costs one partition only if herald computes the same
//! partition the producer did. The Java client (and librdkafka's
//! `murmur2_random`) hash the key bytes with murmur2, seed `0x9747b28c`, clear
//! the sign bit and take the remainder. librdkafka's *default* partitioner is
//! CRC32, so producers that talk to herald's topics must set
//! `partitioner=murmur2_random` (herald's own publish endpoint does).

/// The partition Kafka's default partitioner picks for `key` in a topic of
/// `partitions` partitions. `partitions` must be positive.
pub fn partition_for_key(key: &[u8], partitions: i32) -> i32 {
    debug_assert!(partitions > 0);
    let hash = murmur2::murmur2(key, murmur2::KAFKA_SEED);
    ((hash & 0x7fff_ffff) % partitions.max(1) as u32) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Vectors from the Java client's `UtilsTest.testMurmur2`.
    #[test]
    fn murmur2_matches_java_vectors() {
        let cases: [(&str, i32); 6] = [
            ("21", -973932308),
            ("foobar", -790332482),
            ("a-little-bit-long-string", -985981536),
            ("a-little-bit-longer-string", -1486304829),
            (
                "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58897971,
            ),
            ("abc", 479470107),
        ];
        for (key, expected) in cases {
            let got = murmur2::murmur2(key.as_bytes(), murmur2::KAFKA_SEED) as i32;
            assert_eq!(got, expected, "murmur2({key:?})");
        }
        assert_eq!(
            murmur2::murmur2(b"kafka", murmur2::KAFKA_SEED),
            0xd067cf64,
            "murmur2(\"kafka\")"
        );
    }

    #[test]
    fn partition_is_positive_hash_modulo_count() {
        // 0xd067cf64 & 0x7fffffff = 0x5067cf64 = 1348980580
        assert_eq!(partition_for_key(b"kafka", 8), 1348980580 % 8);
        assert_eq!(partition_for_key(b"kafka", 1), 0);
        // "21" hashes negative in Java: the sign bit must be masked, not abs()'d.
        let h = (-973932308i32) as u32 & 0x7fff_ffff;
        assert_eq!(partition_for_key(b"21", 64), (h % 64) as i32);
    }
}
