//! Small statistics and `/proc` helpers for the benchmark binaries.
//!
//! Percentiles use the nearest-rank method (the smallest sample with at
//! least p% of the samples at or below it), so a reported p99 is always a
//! value that was actually measured.

use std::time::Duration;

/// A `/proc/self/status` field that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ProcStatusError {
    #[error("reading /proc/self/status: {0}")]
    Read(#[from] std::io::Error),
    #[error("/proc/self/status has no {field} line in kB")]
    Missing { field: String },
}

/// Nearest-rank percentile `p` (0..=100) of `samples`; None when empty.
pub fn percentile(samples: &[Duration], p: f64) -> Option<Duration> {
    if samples.is_empty() {
        return None;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    let n = sorted.len();
    // rank = ceil(p/100 * n), clamped to 1..=n.
    let rank = ((p.clamp(0.0, 100.0) / 100.0) * n as f64).ceil() as usize;
    sorted.get(rank.clamp(1, n) - 1).copied()
}

/// Median of `values` (the lower middle one for an even count); None when
/// empty.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_unstable_by(f64::total_cmp);
    v.get((v.len() - 1) / 2).copied()
}

/// A `kB` field of a `/proc/<pid>/status` text, in KiB (`VmHWM`, `VmRSS`).
pub fn status_kib(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        let mut parts = rest.split_whitespace();
        let value = parts.next()?.parse().ok()?;
        (parts.next() == Some("kB")).then_some(value)
    })
}

/// `field` of this process's `/proc/self/status`, in KiB.
pub fn self_status_kib(field: &str) -> Result<u64, ProcStatusError> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status_kib(&status, field).ok_or_else(|| ProcStatusError::Missing {
        field: field.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: &[u64]) -> Vec<Duration> {
        v.iter().map(|m| Duration::from_millis(*m)).collect()
    }

    #[test]
    fn nearest_rank_percentiles() {
        let s = ms(&[5, 1, 4, 2, 3]);
        assert_eq!(percentile(&s, 50.0), Some(Duration::from_millis(3)));
        assert_eq!(percentile(&s, 99.0), Some(Duration::from_millis(5)));
        assert_eq!(percentile(&s, 0.0), Some(Duration::from_millis(1)));
        assert_eq!(percentile(&s, 20.0), Some(Duration::from_millis(1)));
        assert_eq!(percentile(&s, 21.0), Some(Duration::from_millis(2)));
        assert_eq!(percentile(&[], 50.0), None);
        // 100 samples 1..=100 ms: p99 is the 99th.
        let hundred: Vec<u64> = (1..=100).rev().collect();
        assert_eq!(
            percentile(&ms(&hundred), 99.0),
            Some(Duration::from_millis(99))
        );
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.0));
        assert_eq!(median(&[f64::NAN, 7.0]), Some(7.0));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn status_fields() {
        let text =
            "Name:\tx\nVmPeak:\t  200 kB\nVmHWM:\t   123456 kB\nVmRSS:\t  1000 kB\nThreads:\t3\n";
        assert_eq!(status_kib(text, "VmHWM"), Some(123_456));
        assert_eq!(status_kib(text, "VmRSS"), Some(1000));
        assert_eq!(status_kib(text, "Threads"), None);
        assert_eq!(status_kib(text, "VmSwap"), None);
        // The real file of this process has both.
        assert!(self_status_kib("VmHWM").is_ok_and(|v| v > 0));
        assert!(self_status_kib("VmRSS").is_ok_and(|v| v > 0));
    }
}
