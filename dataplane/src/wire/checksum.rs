//! The Internet checksum (RFC 1071) and its incremental update (RFC 1624).
//!
//! Vocabulary used throughout `wire`:
//! - a *partial sum* (`u32`) is a ones-complement sum that has not been
//!   complemented yet. [`sum`] and [`pseudo_header_v4`] return partial sums
//!   already folded to 16 bits, so any small number of them can be added
//!   with plain `+` without overflowing a `u32`;
//! - [`fold`] turns a partial sum into the final 16-bit checksum (folds the
//!   carries and complements), the value written into a header.
//!
//! A full computation is `fold(pseudo + sum(header_with_zero_csum) + sum(payload))`.
//! Data whose checksum field holds a correct checksum sums to `0xffff`, so
//! `fold(...) == 0` verifies it.
//!
//! The incremental updates implement RFC 1624 section 3, equation 3:
//! `HC' = ~(~HC + ~m + m')`. Unlike equation 2 of RFC 1141 it never produces
//! `0xffff` ("negative zero") for data that is not all zero, so the result
//! equals a full recomputation bit for bit.

use std::net::Ipv4Addr;

/// Folds a 64-bit accumulator to a 16-bit ones-complement partial sum.
#[inline]
fn fold64(mut acc: u64) -> u32 {
    // Two folds bring any u64 below 2^17, the third below 2^16 + 1, the
    // last makes it fit 16 bits.
    acc = (acc & 0xffff_ffff) + (acc >> 32);
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    acc as u32
}

/// Ones-complement sum of `data` as big-endian 16-bit words, an odd trailing
/// byte padded with zero (RFC 1071 section 4.1). Returns a partial sum folded
/// to 16 bits (never complemented).
#[inline]
pub fn sum(data: &[u8]) -> u32 {
    // Summing 32-bit words into a 64-bit accumulator and folding at the end
    // gives the same ones-complement result as 16-bit words (RFC 1071
    // section 2(B), "parallel summation") with half the iterations.
    let mut acc: u64 = 0;
    let mut words = data.chunks_exact(4);
    for w in &mut words {
        acc += u64::from(u32::from_be_bytes([w[0], w[1], w[2], w[3]]));
    }
    let rest = words.remainder();
    let mut pairs = rest.chunks_exact(2);
    for p in &mut pairs {
        acc += u64::from(u16::from_be_bytes([p[0], p[1]]));
    }
    if let [last] = pairs.remainder() {
        acc += u64::from(*last) << 8;
    }
    fold64(acc)
}

/// Folds a partial sum (any `u32`) and complements it: the checksum to
/// write into a header.
#[inline]
pub fn fold(sum: u32) -> u16 {
    !(fold64(u64::from(sum)) as u16)
}

/// Partial sum of the IPv4 pseudo header used by TCP and UDP (RFC 793
/// section 3.1, RFC 768): source, destination, zero, protocol, and the
/// transport length `len` (header plus payload).
#[inline]
pub fn pseudo_header_v4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: u16) -> u32 {
    let s = u32::from(src);
    let d = u32::from(dst);
    let acc = u64::from(s >> 16)
        + u64::from(s & 0xffff)
        + u64::from(d >> 16)
        + u64::from(d & 0xffff)
        + u64::from(proto)
        + u64::from(len);
    fold64(acc)
}

/// True when the 20-byte IPv4 header `h` (no options) carries a correct
/// header checksum: the same answer as `fold(sum(h)) == 0`, from five
/// native-order 32-bit loads. The ones-complement sum does not depend on
/// byte order (RFC 1071 section 2(B): swapping the bytes of every word
/// multiplies the sum by 256 modulo 0xffff, which keeps "zero" zero), and
/// a correct header sums to 0xffff either way. Folding with end-around
/// carries keeps a positive sum positive and its value modulo 0xffff, so
/// "folds to 0xffff" is "positive and a multiple of 0xffff": one remainder
/// by a constant instead of four folds.
#[inline(always)]
pub fn verify_ipv4_header(h: &[u8; 20]) -> bool {
    let w = |i: usize| u64::from(u32::from_ne_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]));
    let acc = w(0) + w(4) + w(8) + w(12) + w(16);
    acc != 0 && acc % 0xffff == 0
}

/// Updates checksum `csum` after a 16-bit word of the covered data changed
/// from `old` to `new` (RFC 1624 eqn 3: `HC' = ~(~HC + ~m + m')`).
#[inline]
pub fn update_u16(csum: u16, old: u16, new: u16) -> u16 {
    fold(u32::from(!csum) + u32::from(!old) + u32::from(new))
}

/// Updates checksum `csum` after a 32-bit, 16-bit aligned value of the
/// covered data changed from `old` to `new` (RFC 1624 eqn 3 applied to both
/// halves at once).
#[inline]
pub fn update_u32(csum: u16, old: u32, new: u32) -> u16 {
    let old_hi = (old >> 16) as u16;
    let old_lo = old as u16;
    let new_hi = (new >> 16) as u16;
    let new_lo = new as u16;
    fold(
        u32::from(!csum)
            + u32::from(!old_hi)
            + u32::from(!old_lo)
            + u32::from(new_hi)
            + u32::from(new_lo),
    )
}

/// Updates checksum `csum` after an IPv4 address in the covered data (or in
/// the pseudo header) changed from `old` to `new`.
#[inline]
pub fn update_addr(csum: u16, old: Ipv4Addr, new: Ipv4Addr) -> u16 {
    update_u32(csum, u32::from(old), u32::from(new))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The native-order header check agrees with the generic one, on
        /// random headers and on headers with a correct checksum.
        #[test]
        fn verify_ipv4_header_matches_the_generic_sum(
            mut h in any::<[u8; 20]>(),
            fix in any::<bool>(),
        ) {
            if fix {
                h[10] = 0;
                h[11] = 0;
                let c = fold(sum(&h));
                h[10..12].copy_from_slice(&c.to_be_bytes());
            }
            prop_assert_eq!(verify_ipv4_header(&h), fold(sum(&h)) == 0);
            if fix {
                prop_assert!(verify_ipv4_header(&h));
            }
        }
    }

    #[test]
    fn verify_ipv4_header_edge_cases() {
        // All zero sums to zero, not 0xffff: not a valid header.
        assert!(!verify_ipv4_header(&[0; 20]));
        assert!(verify_ipv4_header(&[0xff; 20]));
        let mut h = [0u8; 20];
        h[10] = 0xff;
        h[11] = 0xff;
        assert!(verify_ipv4_header(&h));
    }

    /// The slow, obviously-correct model: 16-bit words, fold at every step.
    fn model_sum(data: &[u8]) -> u16 {
        let mut s: u32 = 0;
        for chunk in data.chunks(2) {
            let w = if chunk.len() == 2 {
                u16::from_be_bytes([chunk[0], chunk[1]])
            } else {
                u16::from(chunk[0]) << 8
            };
            s += u32::from(w);
            s = (s & 0xffff) + (s >> 16);
        }
        s as u16
    }

    fn full(data: &[u8], csum_at: usize) -> u16 {
        let mut copy = data.to_vec();
        copy[csum_at] = 0;
        copy[csum_at + 1] = 0;
        fold(sum(&copy))
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3: the words 0001 f203 f4f5 f6f7 sum to ddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(sum(&data), 0xddf2);
        assert_eq!(fold(sum(&data)), !0xddf2);
    }

    #[test]
    fn odd_length_pads_with_zero() {
        assert_eq!(sum(&[0x12]), 0x1200);
        assert_eq!(sum(&[0x12, 0x34, 0x56]), 0x1234 + 0x5600);
        assert_eq!(sum(&[]), 0);
    }

    #[test]
    fn known_ipv4_header_checksum() {
        // A classic example header (checksum 0xb861 at bytes 10..12).
        let hdr = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(fold(sum(&hdr)), 0xb861);
        let mut with = hdr;
        with[10] = 0xb8;
        with[11] = 0x61;
        assert_eq!(fold(sum(&with)), 0);
    }

    #[test]
    fn pseudo_header_matches_byte_layout() {
        let src = Ipv4Addr::new(10, 244, 1, 7);
        let dst = Ipv4Addr::new(192, 168, 50, 2);
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&src.octets());
        bytes.extend_from_slice(&dst.octets());
        bytes.extend_from_slice(&[0, 17, 0x01, 0x23]);
        assert_eq!(pseudo_header_v4(src, dst, 17, 0x0123), sum(&bytes));
    }

    #[test]
    fn corner_case_checksum_zero_updates_like_full() {
        // Data whose checksum is 0x0000 (sum 0xffff); change one word so it
        // becomes something else and back.
        let mut data = vec![0xff, 0xff, 0x00, 0x00, 0x12, 0x34];
        data[4] = 0;
        data[5] = 0;
        let c = full(&data, 2);
        assert_eq!(c, 0x0000);
        let c2 = update_u16(c, 0x0000, 0x1234);
        data[4] = 0x12;
        data[5] = 0x34;
        assert_eq!(c2, full(&data, 2));
        // And back to the all-ones sum: must be 0x0000, never 0xffff.
        let c3 = update_u16(c2, 0x1234, 0x0000);
        assert_eq!(c3, 0x0000);
    }

    #[test]
    fn corner_case_old_checksum_ffff() {
        // Only all-zero data has checksum 0xffff; making it non-zero must
        // give the recomputed value.
        let c = full(&[0, 0, 0, 0], 2);
        assert_eq!(c, 0xffff);
        assert_eq!(update_u16(c, 0, 0xabcd), full(&[0xab, 0xcd, 0, 0], 2));
    }

    fn arb_data() -> impl Strategy<Value = Vec<u8>> {
        // Even length keeps every 16-bit word aligned for the updates.
        (2usize..40).prop_flat_map(|n| proptest::collection::vec(any::<u8>(), n * 2))
    }

    proptest! {
        #[test]
        fn sum_matches_model(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            prop_assert_eq!(sum(&data) as u16, model_sum(&data));
            prop_assert!(sum(&data) <= 0xffff);
        }

        #[test]
        fn incremental_u16_equals_full(
            mut data in arb_data(),
            word in any::<usize>(),
            new in any::<u16>(),
            force_zero_sum in any::<bool>(),
        ) {
            let words = data.len() / 2;
            // Checksum lives in word 0; the changed word is another one.
            let w = 1 + word % (words - 1);
            if force_zero_sum {
                // Adjust the changed word so the checksum before the update
                // is 0x0000 (the 0xffff-sum corner case).
                data[2 * w] = 0;
                data[2 * w + 1] = 0;
                let rest = model_sum(&{ let mut c = data.clone(); c[0] = 0; c[1] = 0; c });
                let fill = !rest; // rest + fill == 0xffff
                data[2 * w..2 * w + 2].copy_from_slice(&fill.to_be_bytes());
            }
            let before = full(&data, 0);
            if force_zero_sum {
                prop_assert_eq!(before, 0);
            }
            let old = u16::from_be_bytes([data[2 * w], data[2 * w + 1]]);
            data[2 * w..2 * w + 2].copy_from_slice(&new.to_be_bytes());
            let after = full(&data, 0);
            let all_zero = data[2..].iter().all(|&b| b == 0);
            prop_assume!(!all_zero);
            prop_assert_eq!(update_u16(before, old, new), after);
        }

        #[test]
        fn incremental_u32_equals_full(
            mut data in arb_data().prop_filter("need 3 words", |d| d.len() >= 6),
            word in any::<usize>(),
            new in any::<u32>(),
        ) {
            let words = data.len() / 2;
            let w = 1 + word % (words - 2);
            let before = full(&data, 0);
            let old = u32::from_be_bytes([data[2 * w], data[2 * w + 1], data[2 * w + 2], data[2 * w + 3]]);
            data[2 * w..2 * w + 4].copy_from_slice(&new.to_be_bytes());
            prop_assume!(!data[2..].iter().all(|&b| b == 0));
            prop_assert_eq!(update_u32(before, old, new), full(&data, 0));
            prop_assert_eq!(
                update_addr(before, Ipv4Addr::from(old), Ipv4Addr::from(new)),
                full(&data, 0)
            );
        }
    }
}
