//! Traffic generators of the veth harness.
//!
//! - [`afxdp_blast`]: the project's own generator. An AF_XDP socket
//!   (transmit only, copy mode: veth has no zero-copy) bound to the
//!   generator's veth, fed from precomputed frames, one per flow, sent
//!   round-robin. No XDP program is needed to transmit. Rate-unlimited,
//!   bounded by a packet count and a deadline.
//! - [`udp_blast`]: fallback through kernel UDP sockets (one per flow, at
//!   most [`UDP_MAX_SOCKETS`]); slower, and the frames are whatever the
//!   kernel builds.
//! - [`third_party`]: which external generators this machine has
//!   (trafgen from netsniff-ng, xdp-trafficgen from xdp-tools, kernel
//!   pktgen via `/proc/net/pktgen`). They are detected and reported; a run
//!   that would need them reports "not available" when absent.
//!
//! Frames are built with etherparse (checksums computed, since nothing
//! offloads them on this path): [`plain_frames`] for a packet entering the
//! dataplane node from a pod, [`vxlan_frames`] for the same flow already
//! encapsulated the way a Flannel VXLAN node emits it (RFC 7348 §5: outer
//! Ethernet/IPv4/UDP to port 8472, 8-byte VXLAN header with the I flag
//! and the VNI).

use std::net::{Ipv4Addr, UdpSocket};
use std::time::{Duration, Instant};

use kxdp_dataplane::io::afxdp::{AfXdpPort, BindMode, PortConfig, StoreConfig, XskStore};
use kxdp_dataplane::io::{FrameStore, PacketBuf, Port};
use kxdp_dataplane::pipeline::Ingress;
use kxdp_dataplane::wire::checksum;
use kxdp_dataplane::worker::monotonic_ns;

use super::latency;

/// Errors of the generators.
#[derive(Debug, thiserror::Error)]
pub enum GenError {
    #[error("building frame: {0}")]
    Build(String),
    #[error("AF_XDP generator on {ifname}: {reason}")]
    AfXdp { ifname: String, reason: String },
    #[error("UDP generator: {0}")]
    Udp(#[from] std::io::Error),
    #[error("no flows to send")]
    NoFlows,
    /// An external generator failed.
    #[error("{0}")]
    External(String),
    /// The generator cannot run on this machine (tool missing or unable to
    /// load on this kernel, no kernel pktgen): not a measurement failure.
    #[error("generator unavailable: {0}")]
    Unsupported(String),
}

/// Most sockets the UDP fallback opens.
pub const UDP_MAX_SOCKETS: usize = 256;

/// What a generator run did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct GenReport {
    /// `afxdp-copy`, `udp-socket`, ...
    pub generator: String,
    /// Frames the kernel took (AF_XDP: completed transmissions).
    pub sent: u64,
    /// Frames the generator could not queue (ring full, counted by the
    /// I/O layer) or the kernel refused.
    pub tx_dropped: u64,
    /// Wall time of the send loop.
    pub secs: f64,
}

/// One flow's addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowAddr {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src_ip: Ipv4Addr,
    pub dst_ip: Ipv4Addr,
    pub src_port: u16,
    pub dst_port: u16,
}

/// Ethernet + IPv4 + UDP + payload: a `frame_len`-byte frame (without FCS;
/// 60 bytes here is a 64-byte frame on the wire).
pub fn plain_frame(f: &FlowAddr, ttl: u8, frame_len: usize) -> Result<Vec<u8>, GenError> {
    const HEADERS: usize = 14 + 20 + 8;
    let payload_len = frame_len
        .checked_sub(HEADERS)
        .ok_or_else(|| GenError::Build(format!("{frame_len} B is less than the headers")))?;
    let payload = vec![0x6b_u8; payload_len]; // 'k'
    let builder = etherparse::PacketBuilder::ethernet2(f.src_mac, f.dst_mac)
        .ipv4(f.src_ip.octets(), f.dst_ip.octets(), ttl)
        .udp(f.src_port, f.dst_port);
    let mut out = Vec::with_capacity(frame_len);
    builder
        .write(&mut out, &payload)
        .map_err(|e| GenError::Build(e.to_string()))?;
    Ok(out)
}

/// The outer headers of a VXLAN frame (RFC 7348 §5).
#[derive(Clone, Copy, Debug)]
pub struct VxlanOuter {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src_ip: Ipv4Addr,
    pub dst_ip: Ipv4Addr,
    pub dst_port: u16,
    pub vni: u32,
}

/// `inner` (a whole Ethernet frame) encapsulated in VXLAN; the outer UDP
/// source port is derived from `entropy` (RFC 7348 §5 suggests a hash of
/// the inner headers) in the dynamic range.
pub fn vxlan_frame(outer: &VxlanOuter, inner: &[u8], entropy: u16) -> Result<Vec<u8>, GenError> {
    let mut payload = Vec::with_capacity(8 + inner.len());
    payload.extend_from_slice(&[0x08, 0, 0, 0]); // I flag: VNI valid
    let vni = outer.vni.to_be_bytes();
    payload.extend_from_slice(vni.get(1..4).unwrap_or(&[0, 0, 0]));
    payload.push(0);
    payload.extend_from_slice(inner);
    let sport = 49152 | (entropy & 0x3fff);
    let builder = etherparse::PacketBuilder::ethernet2(outer.src_mac, outer.dst_mac)
        .ipv4(outer.src_ip.octets(), outer.dst_ip.octets(), 64)
        .udp(sport, outer.dst_port);
    let mut out = Vec::with_capacity(14 + 20 + 8 + payload.len());
    builder
        .write(&mut out, &payload)
        .map_err(|e| GenError::Build(e.to_string()))?;
    Ok(out)
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.trim().split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// Source ports the all-new mode cycles through (above the well-known
/// range).
const NEW_FLOW_PORTS: std::ops::RangeInclusive<u16> = 1024..=65535;

/// Distinct 5-tuples the all-new mode produces before it repeats one:
/// every template frame with every source port of [`NEW_FLOW_PORTS`].
pub fn new_flow_budget(templates: usize) -> u64 {
    templates as u64 * (u64::from(*NEW_FLOW_PORTS.end() - *NEW_FLOW_PORTS.start()) + 1)
}

/// Offset of the UDP header in a [`plain_frame`] (Ethernet + 20-byte IPv4).
const PLAIN_UDP_OFFSET: usize = 14 + 20;

/// Gives packet `seq` of an all-new run its own source port: template
/// `seq % templates`, port number `seq / templates` of
/// [`NEW_FLOW_PORTS`]. The UDP checksum is updated incrementally (RFC
/// 1624); a zero checksum (none, RFC 768) stays zero. `frame` must be a
/// [`plain_frame`].
pub fn set_new_flow_port(frame: &mut [u8], seq: u64, templates: usize) -> bool {
    let span = u64::from(*NEW_FLOW_PORTS.end() - *NEW_FLOW_PORTS.start()) + 1;
    let round = seq / templates.max(1) as u64;
    let port = *NEW_FLOW_PORTS.start() + (round % span) as u16;
    let Some(udp) = frame.get_mut(PLAIN_UDP_OFFSET..PLAIN_UDP_OFFSET + 8) else {
        return false;
    };
    let old = u16::from_be_bytes([udp[0], udp[1]]);
    udp[0..2].copy_from_slice(&port.to_be_bytes());
    let csum = u16::from_be_bytes([udp[6], udp[7]]);
    if csum != 0 {
        let mut new = checksum::update_u16(csum, old, port);
        if new == 0 {
            // 0 means "no checksum" for UDP: send its ones'-complement twin.
            new = 0xffff;
        }
        udp[6..8].copy_from_slice(&new.to_be_bytes());
    }
    true
}

/// How [`afxdp_blast`] picks each packet's 5-tuple.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowPattern {
    /// The template frames as they are, round-robin: a fixed set of flows,
    /// established after the first round.
    Templates,
    /// Every packet a new 5-tuple (source port rewritten, see
    /// [`set_new_flow_port`]) until [`new_flow_budget`] is spent: conntrack
    /// creation and Service selection on every packet. Plain frames only.
    AllNew,
}

/// A latency run's pacing and stamping (see [`crate::harness::latency`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Paced {
    /// Packets per second, sent one at a time.
    pub pps: u64,
    /// UDP payload length of the (inner) datagram, where the stamp goes.
    pub payload_len: usize,
    /// The frames are VXLAN-encapsulated (their outer checksum is cleared).
    pub vxlan: bool,
}

/// Sends `frames` round-robin on `ifname` (in the calling thread's network
/// namespace) through an AF_XDP socket in copy mode until `max_packets`
/// were queued or `duration` passed, then reaps completions for at most
/// 100 ms. `paced`: one packet at a time at a fixed rate, each stamped
/// with its send time. Otherwise `rate_pps` (0: unlimited) paces batches
/// of up to 64 frames so the average rate is `rate_pps`.
pub fn afxdp_blast(
    ifname: &str,
    frames: &[Vec<u8>],
    pattern: FlowPattern,
    paced: Option<Paced>,
    rate_pps: u64,
    duration: Duration,
    max_packets: u64,
) -> Result<GenReport, GenError> {
    if frames.is_empty() {
        return Err(GenError::NoFlows);
    }
    let err = |reason: String| GenError::AfXdp {
        ifname: ifname.to_owned(),
        reason,
    };
    let mut store = XskStore::new(&StoreConfig {
        frames: 4096,
        fill_ring: 64,
        comp_ring: 2048,
        ..StoreConfig::default()
    })
    .map_err(|e| err(e.to_string()))?;
    let mut cfg = PortConfig::new(ifname, 0, Ingress::Uplink);
    cfg.bind = BindMode::Copy;
    cfg.rx_ring = 64;
    cfg.tx_ring = 2048;
    cfg.limits.fill_target = 64;
    let mut port = AfXdpPort::open(&mut store, &cfg).map_err(|e| err(e.to_string()))?;

    let batch: usize = if paced.is_some() { 1 } else { 64 };
    let mut next = 0usize;
    let mut queued = 0u64;
    let start = Instant::now();
    let deadline = start + duration;
    while queued < max_packets && Instant::now() < deadline {
        port.complete(&mut store);
        let mut n = 0;
        let pps = paced.map(|p| p.pps).or((rate_pps > 0).then_some(rate_pps));
        if let Some(pps) = pps {
            // Wait for this packet's slot: sleep while far, spin when close.
            let due = start + Duration::from_secs_f64(queued as f64 / pps.max(1) as f64);
            loop {
                let now = Instant::now();
                if now >= due || now >= deadline {
                    break;
                }
                let left = due - now;
                if left > Duration::from_micros(200) {
                    std::thread::sleep(left - Duration::from_micros(100));
                } else {
                    std::hint::spin_loop();
                }
            }
        }
        while n < batch && queued < max_packets {
            let Some(mut buf) = store.alloc() else {
                break;
            };
            let tpl = frames.get(next).map(Vec::as_slice).unwrap_or(&[]);
            next = (next + 1) % frames.len();
            let written = match store.frame(&mut buf) {
                Ok(f) => {
                    let off = f.offset;
                    match f.buf.get_mut(off..off + tpl.len()) {
                        Some(dst) => {
                            dst.copy_from_slice(tpl);
                            let renumbered = pattern != FlowPattern::AllNew
                                || set_new_flow_port(dst, queued, frames.len());
                            let stamped = paced.is_none_or(|p| {
                                latency::stamp(dst, p.payload_len, p.vxlan, monotonic_ns())
                            });
                            (renumbered && stamped).then_some(off)
                        }
                        None => None,
                    }
                }
                Err(_) => None,
            };
            let Some(off) = written else {
                store.release(buf);
                return Err(err(format!("a {}-byte frame does not fit", tpl.len())));
            };
            if buf.set_bounds(off, tpl.len()).is_err() {
                store.release(buf);
                return Err(err("frame bounds".into()));
            }
            if port.send(&mut store, buf) {
                queued += 1;
            }
            n += 1;
        }
        if port.flush(&mut store) == 0 && n == 0 {
            // Everything in flight: let the kernel drain the ring.
            let _ = port.wakeup();
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let drain_until = Instant::now() + Duration::from_millis(100);
    while port.stats().tx_completed < port.stats().tx_packets && Instant::now() < drain_until {
        let _ = port.wakeup();
        port.complete(&mut store);
    }
    let stats = port.stats();
    let _ = port.close(&mut store);
    Ok(GenReport {
        generator: "afxdp-copy".into(),
        sent: stats.tx_completed,
        tx_dropped: stats.tx_dropped + stats.tx_invalid_descs,
        secs,
    })
}

/// Fallback generator: kernel UDP sockets (one per flow up to
/// [`UDP_MAX_SOCKETS`]) sending `payload_len`-byte datagrams to `dst`
/// round-robin until `max_packets` or `duration`.
pub fn udp_blast(
    src_ip: Ipv4Addr,
    dsts: &[(Ipv4Addr, u16)],
    flows: usize,
    payload_len: usize,
    duration: Duration,
    max_packets: u64,
) -> Result<GenReport, GenError> {
    if dsts.is_empty() || flows == 0 {
        return Err(GenError::NoFlows);
    }
    let n = flows.min(UDP_MAX_SOCKETS);
    let mut socks = Vec::with_capacity(n);
    for i in 0..n {
        let s = UdpSocket::bind((src_ip, 0))?;
        if let Some(dst) = dsts.get(i % dsts.len()) {
            s.connect(dst)?;
        }
        socks.push(s);
    }
    let payload = vec![0x6b_u8; payload_len];
    let (mut sent, mut dropped) = (0u64, 0u64);
    let start = Instant::now();
    let deadline = start + duration;
    let mut i = 0usize;
    while sent + dropped < max_packets && Instant::now() < deadline {
        for _ in 0..64 {
            let ok = socks.get(i).is_some_and(|s| s.send(&payload).is_ok());
            i = (i + 1) % socks.len();
            if ok {
                sent += 1;
            } else {
                dropped += 1;
            }
        }
    }
    Ok(GenReport {
        generator: format!("udp-socket ({n} sockets)"),
        sent,
        tx_dropped: dropped,
        secs: start.elapsed().as_secs_f64(),
    })
}

/// An external generator and whether this machine has it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ThirdParty {
    pub name: &'static str,
    /// Path found, or why it is not available.
    pub status: String,
    pub available: bool,
}

fn which(program: &str) -> Option<String> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .map(|p| p.display().to_string())
}

/// trafgen, xdp-trafficgen and kernel pktgen on this machine.
pub fn third_party() -> Vec<ThirdParty> {
    let tool = |name: &'static str, pkg: &str| match which(name) {
        Some(p) => ThirdParty {
            name,
            status: p,
            available: true,
        },
        None => ThirdParty {
            name,
            status: format!("not available (install Debian package {pkg})"),
            available: false,
        },
    };
    let pktgen = std::path::Path::new("/proc/net/pktgen").exists();
    vec![
        tool("trafgen", "netsniff-ng"),
        tool("xdp-trafficgen", "xdp-tools"),
        ThirdParty {
            name: "pktgen",
            status: if pktgen {
                "/proc/net/pktgen".into()
            } else {
                "not available: /proc/net/pktgen missing (kernel built without CONFIG_NET_PKTGEN or module not loaded)".into()
            },
            available: pktgen,
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};

    fn flow() -> FlowAddr {
        FlowAddr {
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            src_ip: Ipv4Addr::new(10, 244, 1, 2),
            dst_ip: Ipv4Addr::new(10, 96, 0, 10),
            src_port: 10_000,
            dst_port: 80,
        }
    }

    #[test]
    fn plain_frames_are_64_bytes_on_the_wire_with_valid_checksums() {
        let bytes = plain_frame(&flow(), 64, 60).expect("frame");
        assert_eq!(bytes.len(), 60);
        let p = SlicedPacket::from_ethernet(&bytes).expect("parses");
        let Some(NetSlice::Ipv4(ip)) = &p.net else {
            panic!("not IPv4")
        };
        assert_eq!(ip.header().destination_addr(), Ipv4Addr::new(10, 96, 0, 10));
        let Some(TransportSlice::Udp(udp)) = &p.transport else {
            panic!("not UDP")
        };
        assert_eq!(udp.destination_port(), 80);
        let sum = udp
            .to_header()
            .calc_checksum_ipv4(&ip.header().to_header(), udp.payload())
            .expect("checksum");
        assert_eq!(sum, udp.checksum());
        assert!(plain_frame(&flow(), 64, 20).is_err());
    }

    #[test]
    fn vxlan_frames_carry_the_inner_frame_after_an_rfc7348_header() {
        let inner = plain_frame(&flow(), 63, 60).expect("inner");
        let outer = VxlanOuter {
            src_mac: [2, 0, 0, 0, 1, 1],
            dst_mac: [2, 0, 0, 0, 1, 2],
            src_ip: Ipv4Addr::new(192, 168, 50, 1),
            dst_ip: Ipv4Addr::new(192, 168, 50, 2),
            dst_port: 8472,
            vni: 1,
        };
        let bytes = vxlan_frame(&outer, &inner, 7).expect("vxlan");
        assert_eq!(bytes.len(), 60 + 50);
        let p = SlicedPacket::from_ethernet(&bytes).expect("parses");
        let Some(TransportSlice::Udp(udp)) = &p.transport else {
            panic!("not UDP")
        };
        assert_eq!(udp.destination_port(), 8472);
        assert!(udp.source_port() >= 49152);
        assert_eq!(&udp.payload()[..8], &[0x08, 0, 0, 0, 0, 0, 1, 0]);
        assert_eq!(&udp.payload()[8..], &inner[..]);
    }

    #[test]
    fn all_new_ports_are_distinct_and_keep_the_udp_checksum_valid() {
        let tpl = plain_frame(&flow(), 64, 60).unwrap();
        let templates = 3;
        let mut seen = std::collections::BTreeSet::new();
        for seq in [0u64, 1, 2, 3, 4, 5, 3 * 64_511, 3 * 64_511 + 2] {
            let mut f = tpl.clone();
            assert!(set_new_flow_port(&mut f, seq, templates));
            let sport = u16::from_be_bytes([f[34], f[35]]);
            assert!(NEW_FLOW_PORTS.contains(&sport));
            // Independent check: etherparse recomputes the checksum.
            let p = etherparse::SlicedPacket::from_ethernet(&f).unwrap();
            let (Some(etherparse::NetSlice::Ipv4(ip)), Some(etherparse::TransportSlice::Udp(udp))) =
                (p.net, p.transport)
            else {
                panic!("not IPv4/UDP");
            };
            let want = udp
                .to_header()
                .calc_checksum_ipv4(&ip.header().to_header(), udp.payload())
                .unwrap();
            assert_eq!(udp.checksum(), want, "seq {seq}");
            seen.insert((seq % templates as u64, sport));
        }
        assert_eq!(seen.len(), 8, "every (template, port) pair distinct");
        // The budget wraps: packet budget + 0 reuses packet 0's tuple.
        let budget = new_flow_budget(templates);
        let (mut a, mut b) = (tpl.clone(), tpl.clone());
        set_new_flow_port(&mut a, 0, templates);
        set_new_flow_port(&mut b, budget, templates);
        assert_eq!(a, b);
        assert!(!set_new_flow_port(&mut [0u8; 20], 0, 1), "too short");
    }

    #[test]
    fn macs_parse_strictly() {
        assert_eq!(parse_mac("02:00:0a:ff:00:01"), Some([2, 0, 10, 255, 0, 1]));
        assert_eq!(parse_mac("02:00:0a:ff:00"), None);
        assert_eq!(parse_mac("02:00:0a:ff:00:01:02"), None);
        assert_eq!(parse_mac("zz:00:0a:ff:00:01"), None);
    }
}
