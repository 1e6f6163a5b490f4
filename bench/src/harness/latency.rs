//! One-way latency of the harness's latency runs.
//!
//! The generator writes `CLOCK_MONOTONIC` nanoseconds (the clock every
//! network namespace of the machine shares) into the first 8 bytes of each
//! UDP payload when it queues the frame ([`stamp`]); the sinks read each
//! delivered datagram and record `now - stamp` in one histogram
//! ([`LatencyRecorder`]). The figure covers the generator's transmit path,
//! the dataplane under test and the sink's receive path; those ends are the
//! same for every mode, so modes compare. Packets are paced at a fixed
//! rate, one at a time, so queueing comes from the path and not from the
//! generator's bursts.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Highest latency recorded (larger samples are clamped): 10 s.
const MAX_NS: u64 = 10_000_000_000;

/// Offset of the outer UDP checksum in a VXLAN frame (Ethernet + IPv4).
const OUTER_UDP_CSUM: usize = 14 + 20 + 6;

/// Writes `now_ns` into the UDP payload of `frame` (the last `payload_len`
/// bytes) and clears the UDP checksum(s) the stamp invalidates: the
/// datagram's own and, for a VXLAN frame, the outer one (zero = no
/// checksum, valid for UDP over IPv4 and what Flannel's kernel VXLAN
/// sends). Returns false if the payload cannot hold a stamp.
pub fn stamp(frame: &mut [u8], payload_len: usize, vxlan: bool, now_ns: u64) -> bool {
    let Some(off) = frame.len().checked_sub(payload_len) else {
        return false;
    };
    // Headers in front: Ethernet + IPv4 + UDP, and for VXLAN the 50 bytes
    // of the outer headers too.
    let headers = if vxlan { 42 + 50 } else { 42 };
    if payload_len < 8 || off < headers {
        return false;
    }
    if let Some(csum) = frame.get_mut(off - 2..off) {
        csum.fill(0);
    }
    if vxlan {
        if let Some(c) = frame.get_mut(OUTER_UDP_CSUM..OUTER_UDP_CSUM + 2) {
            c.fill(0);
        }
    }
    match frame.get_mut(off..off + 8) {
        Some(p) => {
            p.copy_from_slice(&now_ns.to_be_bytes());
            true
        }
        None => false,
    }
}

/// Reads the stamp back from a received UDP payload.
pub fn read_stamp(payload: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(payload.get(..8)?.try_into().ok()?))
}

/// What the sinks record while a latency run is on.
#[derive(Debug)]
pub struct LatencyRecorder {
    recording: AtomicBool,
    hist: Mutex<Histogram<u64>>,
}

impl Default for LatencyRecorder {
    fn default() -> Self {
        LatencyRecorder {
            recording: AtomicBool::new(false),
            hist: Mutex::new(
                Histogram::new_with_bounds(1, MAX_NS, 3).expect("static histogram bounds"),
            ),
        }
    }
}

impl LatencyRecorder {
    /// Clears the histogram and starts recording.
    pub fn start(&self) {
        self.hist
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .reset();
        self.recording.store(true, Ordering::Release);
    }

    /// Stops recording and returns a copy of the histogram.
    pub fn stop(&self) -> Histogram<u64> {
        self.recording.store(false, Ordering::Release);
        self.hist
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn recording(&self) -> bool {
        self.recording.load(Ordering::Acquire)
    }

    /// Records one datagram received at `now_ns`.
    pub fn record(&self, payload: &[u8], now_ns: u64) {
        let Some(sent) = read_stamp(payload) else {
            return;
        };
        // A stamp from the future is not ours (or the clock is not shared).
        let Some(d) = now_ns.checked_sub(sent) else {
            return;
        };
        let mut h = self.hist.lock().unwrap_or_else(PoisonError::into_inner);
        h.saturating_record(d.clamp(1, MAX_NS));
    }
}

/// A latency run's result: the distribution as quantiles (a CDF in
/// numbers), microseconds.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LatencyResult {
    /// Offered rate, packets/s.
    pub pps: u64,
    /// Packets the generator sent and datagrams the sinks timed.
    pub sent: u64,
    pub samples: u64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    /// `(quantile, µs)` from 0 to 1: enough points to draw the CDF.
    pub cdf: Vec<(f64, f64)>,
}

impl LatencyResult {
    pub fn from_histogram(h: &Histogram<u64>, pps: u64, sent: u64) -> Self {
        let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        let cdf = [
            0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9999, 1.0,
        ]
        .iter()
        .map(|&q| (q, us(q)))
        .collect();
        LatencyResult {
            pps,
            sent,
            samples: h.len(),
            p50_us: us(0.5),
            p90_us: us(0.9),
            p99_us: us(0.99),
            p999_us: us(0.999),
            max_us: h.max() as f64 / 1000.0,
            cdf,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::gen::{plain_frame, FlowAddr};
    use std::net::Ipv4Addr;

    fn frame() -> Vec<u8> {
        let f = FlowAddr {
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            src_ip: Ipv4Addr::new(10, 244, 1, 2),
            dst_ip: Ipv4Addr::new(10, 96, 0, 16),
            src_port: 10_000,
            dst_port: 80,
        };
        plain_frame(&f, 64, 60).unwrap()
    }

    #[test]
    fn a_stamp_round_trips_and_leaves_a_valid_udp_datagram() {
        let mut f = frame();
        assert!(stamp(&mut f, 60 - 42, false, 123_456_789));
        let p = etherparse::SlicedPacket::from_ethernet(&f).unwrap();
        let Some(etherparse::TransportSlice::Udp(udp)) = p.transport else {
            panic!("UDP")
        };
        assert_eq!(udp.checksum(), 0, "no checksum rather than a wrong one");
        assert_eq!(read_stamp(udp.payload()), Some(123_456_789));
        let mut g = frame();
        assert!(!stamp(&mut g, 4, false, 1), "payload too short");
        assert!(!stamp(&mut g[..40], 18, false, 1), "no room for headers");
        assert!(!stamp(&mut g, 18, true, 1), "a 60-byte frame is not VXLAN");
    }

    #[test]
    fn the_recorder_times_only_while_recording_and_ignores_foreign_stamps() {
        let r = LatencyRecorder::default();
        r.start();
        for d in [10_000u64, 20_000, 30_000, 1_000_000] {
            r.record(&1_000u64.to_be_bytes(), 1_000 + d);
        }
        r.record(&5_000u64.to_be_bytes(), 10); // from the future
        r.record(&[1, 2], 10); // too short
        let h = r.stop();
        assert_eq!(h.len(), 4);
        let res = LatencyResult::from_histogram(&h, 1000, 4);
        assert!((res.p50_us - 20.0).abs() < 0.1, "{res:?}");
        assert!((res.max_us - 1000.0).abs() < 1.0, "{res:?}");
        assert_eq!(res.cdf.first().map(|c| c.0), Some(0.0));
        assert!(res.cdf.windows(2).all(|w| w[0].1 <= w[1].1), "monotonic");
        r.start();
        assert_eq!(r.stop().len(), 0, "start clears");
    }
}
