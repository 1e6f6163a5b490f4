//! Flow hashing for backend selection, VXLAN source ports and worker
//! steering.
//!
//! The hash is deterministic (no per-process seed): every worker, every
//! restart and every node computes the same value for the same 5-tuple,
//! which Maglev-style backend selection and VXLAN source ports rely on. It is
//! not keyed, so it offers no protection against an attacker who crafts
//! colliding tuples; nothing here uses it for a hash table's bucket index
//! without a keyed hash on top.
//!
//! Construction: the 5-tuple is packed into two 64-bit words
//! `a = src << 32 | dst` and `b = sport << 32 | dport << 16 | proto`; the
//! state is `mix(a + K)` then `mix(state ^ b)`, where `mix` is two rounds of
//! xorshift-multiply (`x ^= x >> 32; x *= M`) and a final xorshift, the
//! finaliser shape of SplitMix/Murmur3 with an odd 64-bit constant. Each
//! output bit depends on every input bit; the tests check the avalanche and
//! the spread over buckets. The 64-bit state is folded to 32 bits by xor.

use std::net::Ipv4Addr;

/// The golden-ratio constant (2^64 / phi), as in SplitMix64.
const K: u64 = 0x9e37_79b9_7f4a_7c15;
/// An odd multiplier with good avalanche behaviour in xorshift-multiply
/// finalisers.
const M: u64 = 0xd6e8_feb8_6659_fd93;

#[inline]
fn mix(mut x: u64) -> u64 {
    x ^= x >> 32;
    x = x.wrapping_mul(M);
    x ^= x >> 32;
    x = x.wrapping_mul(M);
    x ^ (x >> 32)
}

/// Hash of a directed 5-tuple (see the module documentation).
#[inline]
pub fn flow_hash(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, proto: u8) -> u32 {
    let a = (u64::from(u32::from(src)) << 32) | u64::from(u32::from(dst));
    let b = (u64::from(sport) << 32) | (u64::from(dport) << 16) | u64::from(proto);
    let h = mix(mix(a.wrapping_add(K)) ^ b);
    (h ^ (h >> 32)) as u32
}

/// Hash of an undirected 5-tuple: equal for `(src, sport) -> (dst, dport)`
/// and its reply `(dst, dport) -> (src, sport)`. The two endpoints are put
/// in a canonical order (smaller address, then smaller port, first) before
/// [`flow_hash`].
#[inline]
pub fn flow_hash_symmetric(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, proto: u8) -> u32 {
    if (src, sport) <= (dst, dport) {
        flow_hash(src, dst, sport, dport, proto)
    } else {
        flow_hash(dst, src, dport, sport, proto)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const A: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 5);
    const B: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

    #[test]
    fn deterministic_golden() {
        // Pinned: the hash is part of the cross-node contract (VXLAN source
        // ports, backend choice); a change here must be deliberate.
        let h = flow_hash(A, B, 40000, 53, 17);
        assert_eq!(h, flow_hash(A, B, 40000, 53, 17));
        // Value computed independently (Python, 64-bit wrapping arithmetic).
        assert_eq!(h, 14_484_734);
    }

    #[test]
    fn direction_and_fields_matter() {
        let h = flow_hash(A, B, 1000, 80, 6);
        assert_ne!(h, flow_hash(B, A, 80, 1000, 6));
        assert_ne!(h, flow_hash(A, B, 1000, 80, 17));
        assert_ne!(h, flow_hash(A, B, 80, 1000, 6));
        assert_ne!(h, flow_hash(B, A, 1000, 80, 6));
    }

    #[test]
    fn spreads_sequential_ports_evenly() {
        // 65536 flows differing only in the source port over 64 buckets:
        // each bucket should hold 1024 +- a few percent.
        let mut buckets = [0u32; 64];
        for sport in 0..=u16::MAX {
            buckets[(flow_hash(A, B, sport, 80, 6) % 64) as usize] += 1;
        }
        for (i, &n) in buckets.iter().enumerate() {
            assert!((900..1150).contains(&n), "bucket {i}: {n}");
        }
        // Sequential client addresses, too (the high bits matter for
        // multiply-shift users such as flow_source_port).
        let mut high = [0u32; 16];
        for i in 0..65536u32 {
            let src = Ipv4Addr::from(0x0af4_0000 + i);
            high[(flow_hash(src, B, 40000, 80, 6) >> 28) as usize] += 1;
        }
        for (i, &n) in high.iter().enumerate() {
            assert!((3800..4400).contains(&n), "high bucket {i}: {n}");
        }
    }

    #[test]
    fn avalanche() {
        // Flipping any single input bit flips close to half of the output
        // bits on average.
        let base = (A, B, 40000u16, 53u16, 17u8);
        let mut total = 0u32;
        let mut n = 0u32;
        for seed in 0..64u32 {
            let src = Ipv4Addr::from(u32::from(base.0).wrapping_add(seed.wrapping_mul(0x01000193)));
            let h0 = flow_hash(src, base.1, base.2, base.3, base.4);
            for bit in 0..32 {
                let s2 = Ipv4Addr::from(u32::from(src) ^ (1 << bit));
                let d2 = Ipv4Addr::from(u32::from(base.1) ^ (1 << bit));
                total += (h0 ^ flow_hash(s2, base.1, base.2, base.3, base.4)).count_ones();
                total += (h0 ^ flow_hash(src, d2, base.2, base.3, base.4)).count_ones();
                n += 2;
            }
            for bit in 0..16 {
                total +=
                    (h0 ^ flow_hash(src, base.1, base.2 ^ (1 << bit), base.3, base.4)).count_ones();
                total +=
                    (h0 ^ flow_hash(src, base.1, base.2, base.3 ^ (1 << bit), base.4)).count_ones();
                n += 2;
            }
            for bit in 0..8 {
                total +=
                    (h0 ^ flow_hash(src, base.1, base.2, base.3, base.4 ^ (1 << bit))).count_ones();
                n += 1;
            }
        }
        let mean = f64::from(total) / f64::from(n);
        assert!((15.5..16.5).contains(&mean), "mean flipped bits {mean}");
    }

    proptest! {
        #[test]
        fn symmetric_is_symmetric(
            s in any::<u32>(), d in any::<u32>(), sp in any::<u16>(), dp in any::<u16>(), p in any::<u8>()
        ) {
            let (s, d) = (Ipv4Addr::from(s), Ipv4Addr::from(d));
            prop_assert_eq!(flow_hash_symmetric(s, d, sp, dp, p), flow_hash_symmetric(d, s, dp, sp, p));
            // And it is one of the two directed hashes.
            let h = flow_hash_symmetric(s, d, sp, dp, p);
            prop_assert!(h == flow_hash(s, d, sp, dp, p) || h == flow_hash(d, s, dp, sp, p));
        }
    }
}
