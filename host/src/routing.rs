//! Document routing: the shard of a document is a stable hash of its routing value (its `_id`
//! unless `routing` is given), so every node computes the same answer.

/// Murmur3 (x86, 32-bit, seed 0) over the UTF-16 code units of `routing`, as Elasticsearch
/// hashes routing values, reduced modulo the shard count.
pub fn shard_for_routing(routing: &str, number_of_shards: u32) -> u32 {
    let bytes: Vec<u8> = routing.encode_utf16().flat_map(u16::to_le_bytes).collect();
    let hash = murmur3_32(&bytes, 0) as i32;
    hash.rem_euclid(number_of_shards.max(1) as i32) as u32
}

fn murmur3_32(data: &[u8], seed: u32) -> u32 {
    const C1: u32 = 0xcc9e_2d51;
    const C2: u32 = 0x1b87_3593;
    let mut hash = seed;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
        hash ^= k;
        hash = hash
            .rotate_left(13)
            .wrapping_mul(5)
            .wrapping_add(0xe654_6b64);
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        let mut k = 0u32;
        for (i, byte) in tail.iter().enumerate() {
            k |= u32::from(*byte) << (8 * i);
        }
        hash ^= k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
    }
    hash ^= data.len() as u32;
    hash ^= hash >> 16;
    hash = hash.wrapping_mul(0x85eb_ca6b);
    hash ^= hash >> 13;
    hash = hash.wrapping_mul(0xc2b2_ae35);
    hash ^ (hash >> 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur3_matches_reference_vectors() {
        assert_eq!(murmur3_32(b"", 0), 0);
        assert_eq!(murmur3_32(b"hello", 0), 0x248b_fa47);
        assert_eq!(
            murmur3_32(b"The quick brown fox jumps over the lazy dog", 0),
            0x2e4f_f723
        );
    }

    #[test]
    fn routing_is_stable_and_spreads() {
        let mut counts = [0u32; 5];
        for i in 0..1000 {
            let shard = shard_for_routing(&format!("doc-{i}"), 5);
            assert_eq!(shard, shard_for_routing(&format!("doc-{i}"), 5));
            counts[shard as usize] += 1;
        }
        assert!(counts.iter().all(|c| *c > 120), "{counts:?}");
    }
}
