//! Connection states, the TCP state machine and per-state timeouts.
//!
//! The state of a connection is a set of "seen" bits that only the packets
//! of that connection set, so concurrent updates from several workers merge
//! with one compare-and-swap on a single word (no lost transition, no lock).
//! [`CtState`] is derived from the bits.
//!
//! TCP is tracked from the flags alone (no sequence-window checks, unlike
//! netfilter's `tcp_in_window`): SYN from the originator, SYN-ACK from the
//! responder, then an ACK from the originator make the connection
//! established (RFC 9293 §3.5, three-way handshake); a FIN from either side
//! moves it to closing, a RST to closed. A connection first seen on a packet
//! other than a bare SYN (e.g. after a restart of the dataplane) is picked up
//! as established, like netfilter with `nf_conntrack_tcp_loose=1`. A bare
//! SYN from the originator on a closing or closed connection reopens it
//! (port reuse out of TIME-WAIT, RFC 9293 §3.6.1), keeping its NAT binding.
//! SCTP and other protocols are tracked like UDP: unreplied until a packet
//! is seen in the reply direction, then assured.

use std::time::Duration;

use serde::Serialize;

use super::Direction;

/// TCP header flag bits (RFC 9293 §3.1, the low byte of the flags field):
/// what callers pass as `tcp_flags`.
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
}

pub(crate) const PROTO_ICMP: u8 = 1;
pub(crate) const PROTO_TCP: u8 = 6;
pub(crate) const PROTO_UDP: u8 = 17;
pub(crate) const PROTO_SCTP: u8 = 132;

// State bits of a connection.
const BIT_ORIG_SYN: u32 = 1 << 0;
const BIT_REPLY_SYNACK: u32 = 1 << 1;
const BIT_ESTABLISHED: u32 = 1 << 2;
const BIT_ORIG_FIN: u32 = 1 << 3;
const BIT_REPLY_FIN: u32 = 1 << 4;
const BIT_RST: u32 = 1 << 5;
const BIT_REPLY_SEEN: u32 = 1 << 6;

/// The state of a tracked connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CtState {
    /// TCP: SYN seen from the originator, no SYN-ACK yet.
    SynSent,
    /// TCP: SYN-ACK seen from the responder, final ACK not yet.
    SynRecv,
    /// TCP: handshake complete (or picked up mid-stream).
    Established,
    /// TCP: a FIN seen from either side.
    Closing,
    /// TCP: a RST seen.
    Closed,
    /// Not TCP: packets seen in the original direction only.
    Unreplied,
    /// Not TCP: packets seen in both directions.
    Assured,
}

impl CtState {
    /// Lowercase name for tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            CtState::SynSent => "syn-sent",
            CtState::SynRecv => "syn-recv",
            CtState::Established => "established",
            CtState::Closing => "closing",
            CtState::Closed => "closed",
            CtState::Unreplied => "unreplied",
            CtState::Assured => "assured",
        }
    }
}

/// The state bits of a connection created by a packet with `flags`.
pub(crate) fn initial_bits(proto: u8, flags: u8) -> u32 {
    if proto != PROTO_TCP {
        return 0;
    }
    let syn = flags & tcp_flags::SYN != 0;
    let ack = flags & tcp_flags::ACK != 0;
    if flags & tcp_flags::RST != 0 {
        BIT_ESTABLISHED | BIT_RST
    } else if syn && !ack {
        BIT_ORIG_SYN
    } else {
        // Loose pickup of a connection already under way.
        let fin = if flags & tcp_flags::FIN != 0 {
            BIT_ORIG_FIN
        } else {
            0
        };
        BIT_ESTABLISHED | fin
    }
}

/// The state bits after a packet with `flags` in direction `dir`.
pub(crate) fn advance(proto: u8, bits: u32, dir: Direction, flags: u8) -> u32 {
    let mut b = bits;
    if dir == Direction::Reply {
        b |= BIT_REPLY_SEEN;
    }
    if proto != PROTO_TCP {
        return b;
    }
    let syn = flags & tcp_flags::SYN != 0;
    let ack = flags & tcp_flags::ACK != 0;
    if flags & tcp_flags::RST != 0 {
        return b | BIT_RST;
    }
    match dir {
        Direction::Original => {
            if syn && !ack && b & (BIT_ORIG_FIN | BIT_REPLY_FIN | BIT_RST) != 0 {
                // Reopen: a new incarnation of the same tuple.
                return BIT_ORIG_SYN;
            }
            if ack && !syn && b & BIT_REPLY_SYNACK != 0 {
                b |= BIT_ESTABLISHED;
            }
            if flags & tcp_flags::FIN != 0 {
                b |= BIT_ORIG_FIN;
            }
        }
        Direction::Reply => {
            if syn && ack && b & BIT_ESTABLISHED == 0 {
                b |= BIT_REPLY_SYNACK;
            }
            if flags & tcp_flags::FIN != 0 {
                b |= BIT_REPLY_FIN;
            }
        }
    }
    b
}

/// The state the bits describe.
pub(crate) fn state_of(proto: u8, bits: u32) -> CtState {
    if proto == PROTO_TCP {
        if bits & BIT_RST != 0 {
            CtState::Closed
        } else if bits & (BIT_ORIG_FIN | BIT_REPLY_FIN) != 0 {
            CtState::Closing
        } else if bits & BIT_ESTABLISHED != 0 {
            CtState::Established
        } else if bits & BIT_REPLY_SYNACK != 0 {
            CtState::SynRecv
        } else {
            CtState::SynSent
        }
    } else if bits & BIT_REPLY_SEEN != 0 {
        CtState::Assured
    } else {
        CtState::Unreplied
    }
}

/// Idle timeouts per protocol and state: an entry expires when no packet
/// has matched it for this long. Defaults follow netfilter's where the
/// models agree; the differences are noted per field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Timeouts {
    /// TCP SYN-SENT and SYN-RECV: 60 s (netfilter: 120 s / 60 s). A
    /// handshake that has not completed in a minute is dead or a scan.
    pub tcp_syn: Duration,
    /// TCP ESTABLISHED: 1 day. netfilter (and so kube-proxy) use 5 days;
    /// one day bounds how long the table holds connections whose end was
    /// never seen, while still outliving TCP keepalive (2 h by default).
    pub tcp_established: Duration,
    /// TCP after a FIN from either side: 120 s, netfilter's FIN-WAIT and
    /// TIME-WAIT (2 MSL). We do not tell CLOSE-WAIT/LAST-ACK apart, so the
    /// longest applies.
    pub tcp_closing: Duration,
    /// TCP after a RST: 10 s, netfilter's CLOSE.
    pub tcp_close: Duration,
    /// UDP seen in one direction only: 30 s (netfilter `udp_timeout`).
    pub udp: Duration,
    /// UDP seen in both directions: 120 s (netfilter `udp_timeout_stream`).
    pub udp_assured: Duration,
    /// ICMP echo: 30 s, both directions (netfilter `icmp_timeout`).
    pub icmp: Duration,
    /// SCTP before any reply: 30 s (we do not parse chunks; netfilter's
    /// COOKIE-WAIT/ECHOED are 3 s).
    pub sctp: Duration,
    /// SCTP seen in both directions: 210 s, netfilter's ESTABLISHED.
    pub sctp_assured: Duration,
    /// Any other protocol: 600 s (netfilter `generic_timeout`).
    pub other: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            tcp_syn: Duration::from_secs(60),
            tcp_established: Duration::from_secs(86_400),
            tcp_closing: Duration::from_secs(120),
            tcp_close: Duration::from_secs(10),
            udp: Duration::from_secs(30),
            udp_assured: Duration::from_secs(120),
            icmp: Duration::from_secs(30),
            sctp: Duration::from_secs(30),
            sctp_assured: Duration::from_secs(210),
            other: Duration::from_secs(600),
        }
    }
}

/// [`Timeouts`] in nanoseconds, the unit of the tracker's clock.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TimeoutsNs {
    tcp_syn: u64,
    tcp_established: u64,
    tcp_closing: u64,
    tcp_close: u64,
    udp: u64,
    udp_assured: u64,
    icmp: u64,
    sctp: u64,
    sctp_assured: u64,
    other: u64,
}

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl From<&Timeouts> for TimeoutsNs {
    fn from(t: &Timeouts) -> Self {
        TimeoutsNs {
            tcp_syn: ns(t.tcp_syn),
            tcp_established: ns(t.tcp_established),
            tcp_closing: ns(t.tcp_closing),
            tcp_close: ns(t.tcp_close),
            udp: ns(t.udp),
            udp_assured: ns(t.udp_assured),
            icmp: ns(t.icmp),
            sctp: ns(t.sctp),
            sctp_assured: ns(t.sctp_assured),
            other: ns(t.other),
        }
    }
}

impl TimeoutsNs {
    /// Idle timeout of a connection of `proto` in `state`.
    pub(crate) fn get(&self, proto: u8, state: CtState) -> u64 {
        match (proto, state) {
            (_, CtState::SynSent | CtState::SynRecv) => self.tcp_syn,
            (_, CtState::Established) => self.tcp_established,
            (_, CtState::Closing) => self.tcp_closing,
            (_, CtState::Closed) => self.tcp_close,
            (PROTO_UDP, CtState::Unreplied) => self.udp,
            (PROTO_UDP, CtState::Assured) => self.udp_assured,
            (PROTO_ICMP, _) => self.icmp,
            (PROTO_SCTP, CtState::Unreplied) => self.sctp,
            (PROTO_SCTP, CtState::Assured) => self.sctp_assured,
            _ => self.other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::tcp_flags::*;
    use super::*;
    use Direction::{Original as O, Reply as R};

    fn run(proto: u8, first: u8, packets: &[(Direction, u8)]) -> Vec<CtState> {
        let mut bits = initial_bits(proto, first);
        let mut out = vec![state_of(proto, bits)];
        for &(d, f) in packets {
            bits = advance(proto, bits, d, f);
            out.push(state_of(proto, bits));
        }
        out
    }

    #[test]
    fn three_way_handshake_then_fin() {
        use CtState::*;
        assert_eq!(
            run(
                PROTO_TCP,
                SYN,
                &[
                    (O, SYN),       // retransmitted SYN
                    (R, SYN | ACK), // SYN-ACK
                    (R, ACK),       // a reply ACK does not complete it
                    (O, ACK),       // final ACK
                    (O, PSH | ACK),
                    (R, FIN | ACK),
                    (O, ACK),
                ]
            ),
            [
                SynSent,
                SynSent,
                SynRecv,
                SynRecv,
                Established,
                Established,
                Closing,
                Closing
            ]
        );
    }

    #[test]
    fn ack_without_synack_does_not_establish() {
        use CtState::*;
        assert_eq!(
            run(PROTO_TCP, SYN, &[(O, ACK), (R, SYN), (O, ACK)]),
            [SynSent, SynSent, SynSent, SynSent]
        );
        // A SYN-ACK in the original direction is not the responder's.
        assert_eq!(
            run(PROTO_TCP, SYN, &[(O, SYN | ACK), (O, ACK)]),
            [SynSent, SynSent, SynSent]
        );
    }

    #[test]
    fn rst_closes_from_any_state_and_syn_reopens() {
        use CtState::*;
        assert_eq!(
            run(
                PROTO_TCP,
                SYN,
                &[(R, RST | ACK), (O, ACK), (O, SYN), (R, SYN | ACK), (O, ACK)]
            ),
            [SynSent, Closed, Closed, SynSent, SynRecv, Established]
        );
        assert_eq!(
            run(PROTO_TCP, SYN, &[(O, FIN), (O, SYN | ACK), (O, SYN)]),
            [SynSent, Closing, Closing, SynSent]
        );
        // A SYN on an established connection does not reset it.
        assert_eq!(run(PROTO_TCP, ACK, &[(O, SYN)]), [Established, Established]);
    }

    #[test]
    fn loose_pickup() {
        assert_eq!(run(PROTO_TCP, ACK, &[]), [CtState::Established]);
        assert_eq!(run(PROTO_TCP, FIN | ACK, &[]), [CtState::Closing]);
        assert_eq!(run(PROTO_TCP, RST, &[]), [CtState::Closed]);
        assert_eq!(run(PROTO_TCP, SYN | ACK, &[]), [CtState::Established]);
    }

    #[test]
    fn datagram_protocols_become_assured_on_reply() {
        for proto in [PROTO_UDP, PROTO_ICMP, PROTO_SCTP, 47] {
            assert_eq!(
                // TCP flags are meaningless for them and ignored.
                run(proto, RST, &[(O, FIN), (R, 0), (O, 0)]),
                [
                    CtState::Unreplied,
                    CtState::Unreplied,
                    CtState::Assured,
                    CtState::Assured
                ]
            );
        }
    }

    #[test]
    fn timeouts_per_protocol_and_state() {
        let t = TimeoutsNs::from(&Timeouts::default());
        let s = 1_000_000_000;
        assert_eq!(t.get(PROTO_TCP, CtState::SynSent), 60 * s);
        assert_eq!(t.get(PROTO_TCP, CtState::SynRecv), 60 * s);
        assert_eq!(t.get(PROTO_TCP, CtState::Established), 86_400 * s);
        assert_eq!(t.get(PROTO_TCP, CtState::Closing), 120 * s);
        assert_eq!(t.get(PROTO_TCP, CtState::Closed), 10 * s);
        assert_eq!(t.get(PROTO_UDP, CtState::Unreplied), 30 * s);
        assert_eq!(t.get(PROTO_UDP, CtState::Assured), 120 * s);
        assert_eq!(t.get(PROTO_ICMP, CtState::Unreplied), 30 * s);
        assert_eq!(t.get(PROTO_ICMP, CtState::Assured), 30 * s);
        assert_eq!(t.get(PROTO_SCTP, CtState::Unreplied), 30 * s);
        assert_eq!(t.get(PROTO_SCTP, CtState::Assured), 210 * s);
        assert_eq!(t.get(47, CtState::Assured), 600 * s);
        let huge = Timeouts {
            other: Duration::MAX,
            ..Timeouts::default()
        };
        assert_eq!(
            TimeoutsNs::from(&huge).get(47, CtState::Unreplied),
            u64::MAX
        );
    }
}
