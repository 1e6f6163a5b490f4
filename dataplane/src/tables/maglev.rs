//! Maglev consistent hashing (Eisenbud et al., NSDI 2016) — placeholder until
//! the real table lands: round-robin fill.

use super::services::Backend;

/// Build the lookup table for `backends`: slot -> backend index.
pub fn build_table(backends: &[Backend]) -> Box<[u32]> {
    if backends.is_empty() {
        return Box::new([]);
    }
    (0..backends.len() as u32).collect()
}
