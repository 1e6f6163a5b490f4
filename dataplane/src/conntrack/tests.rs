//! Tests of the connection tracker: single-threaded behaviour on a virtual
//! clock, concurrent invariants, a model-based property test and the
//! capacity bound under a million flows.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use proptest::prelude::*;

use super::slots::PROBE_WINDOW;
use super::state::tcp_flags::{ACK, FIN, PSH, RST, SYN};
use super::*;

const S: u64 = 1_000_000_000;
const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMP: u8 = 1;

fn ct(capacity: usize) -> Conntrack {
    Conntrack::new(CtConfig {
        hash_seed: Some(0x5eed),
        ..CtConfig::new(capacity)
    })
}

fn key(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, proto: u8) -> FlowKey {
    FlowKey {
        src: Ipv4Addr::from(src),
        dst: Ipv4Addr::from(dst),
        sport,
        dport,
        proto,
    }
}

/// A pod reaching a ClusterIP, DNATed to a backend pod.
///
/// ```text
///   client 10.244.1.2:40000 -> 10.96.0.10:80 (ClusterIP)
///   backend 10.244.2.7:8080
///   original: 10.244.1.2:40000 -> 10.96.0.10:80
///   reply:    10.244.2.7:8080  -> 10.244.1.2:40000
/// ```
fn dnat_pair(proto: u8) -> (FlowKey, FlowKey) {
    let orig = key([10, 244, 1, 2], 40000, [10, 96, 0, 10], 80, proto);
    let reply = key([10, 244, 2, 7], 8080, [10, 244, 1, 2], 40000, proto);
    (orig, reply)
}

fn meta() -> CtMeta {
    CtMeta {
        flags: CtMeta::DNAT,
        service_port: 3,
        policy_generation: 9,
    }
}

/// Pseudo-random flows for the load tests (xorshift64*, deterministic).
struct Flows(u64);

impl Flows {
    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn next_flow(&mut self) -> FlowKey {
        let a = self.next_u64();
        let b = self.next_u64();
        FlowKey {
            src: Ipv4Addr::from((a >> 32) as u32),
            dst: Ipv4Addr::from(a as u32),
            sport: (b >> 48) as u16,
            dport: (b >> 32) as u16,
            proto: [TCP, UDP][(b & 1) as usize],
        }
    }
}

/// A reply tuple that is a fixed function of the original, so a reader can
/// tell a torn entry (tuples from two different connections) from a real
/// one.
fn masq_reply(o: &FlowKey) -> FlowKey {
    FlowKey {
        src: o.dst,
        dst: Ipv4Addr::new(192, 168, 50, 1),
        sport: o.dport,
        dport: o.sport ^ 0x5a5a,
        proto: o.proto,
    }
}

#[test]
fn commit_then_both_directions_find_the_same_entry() {
    let t = ct(16);
    let (orig, reply) = dnat_pair(TCP);
    let hit = t.commit(orig, reply, meta(), S, SYN).expect("room");
    assert_eq!(hit.direction, Direction::Original);
    assert_eq!(hit.state, CtState::SynSent);
    assert_eq!(t.len(), 1);

    // Forward packet: DNAT to the backend, source unchanged.
    let fwd = t.lookup(&orig, 2 * S, SYN).expect("original tuple");
    assert_eq!(fwd.direction, Direction::Original);
    assert_eq!((fwd.original, fwd.reply, fwd.meta), (orig, reply, meta()));
    assert_eq!(fwd.matched(), orig);
    assert_eq!(
        fwd.rewrite(),
        key([10, 244, 1, 2], 40000, [10, 244, 2, 7], 8080, TCP)
    );

    // Reply from the backend: reverse NAT, source becomes the ClusterIP.
    let back = t.lookup(&reply, 3 * S, SYN | ACK).expect("reply tuple");
    assert_eq!(back.direction, Direction::Reply);
    assert_eq!((back.original, back.reply), (orig, reply));
    assert_eq!(back.state, CtState::SynRecv);
    assert_eq!(
        back.rewrite(),
        key([10, 96, 0, 10], 80, [10, 244, 1, 2], 40000, TCP)
    );

    // Neither reversed tuple is a connection of its own.
    assert_eq!(t.lookup(&orig.reversed(), 3 * S, ACK), None);
    assert_eq!(t.lookup(&reply.reversed(), 3 * S, ACK), None);
    assert_eq!(t.iter().count(), 1);
}

#[test]
fn connection_without_nat_rewrites_to_itself() {
    let t = ct(16);
    let orig = key([10, 244, 1, 2], 1234, [10, 244, 1, 3], 53, UDP);
    t.commit(orig, orig.reversed(), CtMeta::default(), 0, 0)
        .expect("room");
    let hit = t.lookup(&orig, 0, 0).expect("hit");
    assert_eq!(hit.rewrite(), orig);
    let back = t.lookup(&orig.reversed(), 0, 0).expect("hit");
    assert_eq!(back.rewrite(), orig.reversed());
    assert_eq!(back.meta.service_port, CtMeta::NO_SERVICE);
}

#[test]
fn icmp_echo_identifier_travels_in_both_ports() {
    // Pod pings an external host, masqueraded to the node IP with a new
    // echo identifier 0x1234 -> 0x9000.
    let t = ct(16);
    let orig = key([10, 244, 1, 2], 0x1234, [8, 8, 8, 8], 0x1234, ICMP);
    let reply = key([8, 8, 8, 8], 0x9000, [192, 168, 50, 1], 0x9000, ICMP);
    t.commit(orig, reply, CtMeta::default(), 0, 0)
        .expect("room");
    let out = t.lookup(&orig, 0, 0).expect("hit").rewrite();
    assert_eq!((out.src, out.sport, out.dport), (reply.dst, 0x9000, 0x9000));
    let back = t.lookup(&reply, S, 0).expect("hit");
    assert_eq!(back.state, CtState::Assured);
    assert_eq!(back.rewrite(), orig.reversed());
}

#[test]
fn commit_conflicts() {
    let t = ct(16);
    let (orig, reply) = dnat_pair(UDP);
    t.commit(orig, reply, meta(), 0, 0).expect("room");

    // Same original again (another worker raced us): the existing entry.
    match t.commit(orig, reply, CtMeta::default(), S, 0) {
        Err(CommitError::Exists(hit)) => {
            assert_eq!(hit.direction, Direction::Original);
            assert_eq!(hit.meta, meta(), "the first commit wins");
        }
        other => panic!("expected Exists, got {other:?}"),
    }
    // A new connection whose original tuple is this one's reply tuple.
    match t.commit(reply, orig.reversed(), CtMeta::default(), S, 0) {
        Err(CommitError::Exists(hit)) => {
            assert_eq!(hit.direction, Direction::Reply);
            assert_eq!(hit.state, CtState::Assured, "counted as a reply packet");
        }
        other => panic!("expected Exists, got {other:?}"),
    }
    // Masquerade port collision: another client, same reply tuple.
    let other = key([10, 244, 1, 9], 40000, [10, 96, 0, 10], 80, UDP);
    assert_eq!(
        t.commit(other, reply, meta(), S, 0),
        Err(CommitError::ReplyTupleInUse)
    );
    // Same with the reply tuple equal to an existing original tuple.
    assert_eq!(
        t.commit(other, orig, meta(), S, 0),
        Err(CommitError::ReplyTupleInUse)
    );
    assert_eq!(
        t.commit(other, other, meta(), S, 0),
        Err(CommitError::InvalidTuples)
    );
    let mut wrong_proto = other.reversed();
    wrong_proto.proto = TCP;
    assert_eq!(
        t.commit(other, wrong_proto, meta(), S, 0),
        Err(CommitError::InvalidTuples)
    );
    assert_eq!(t.len(), 1);
    // With another port the second client gets through.
    let mut reply2 = reply;
    reply2.dport = 40001;
    t.commit(other, reply2, meta(), S, 0).expect("room");
    assert_eq!(t.len(), 2);
}

#[test]
fn remove_takes_both_tuples_and_only_by_original() {
    let t = ct(16);
    let (orig, reply) = dnat_pair(TCP);
    t.commit(orig, reply, meta(), 0, SYN).expect("room");
    assert!(
        !t.remove(&reply),
        "a reply tuple does not name a connection"
    );
    assert!(t.remove(&orig));
    assert!(!t.remove(&orig));
    assert_eq!(t.lookup(&orig, 0, ACK), None);
    assert_eq!(t.lookup(&reply, 0, ACK), None);
    assert_eq!(t.len(), 0);
    assert_eq!(t.iter().count(), 0);
    // The tuples are free again.
    t.commit(orig, reply, meta(), 0, SYN).expect("room");
}

#[test]
fn tcp_lifecycle_on_a_virtual_clock() {
    let t = ct(16);
    let (orig, reply) = dnat_pair(TCP);
    let mut now = 1000 * S;
    t.commit(orig, reply, meta(), now, SYN).expect("room");
    // SYN-SENT lives 60 s: 59.999 s of silence is fine...
    now += 60 * S - 1;
    assert_eq!(
        t.lookup(&reply, now, SYN | ACK).map(|h| h.state),
        Some(CtState::SynRecv)
    );
    // ... and the handshake completes.
    now += 30 * S;
    assert_eq!(
        t.lookup(&orig, now, ACK).map(|h| h.state),
        Some(CtState::Established)
    );
    // Established: one day of idle time.
    now += 86_400 * S - 1;
    assert_eq!(
        t.lookup(&orig, now, PSH | ACK).map(|h| h.state),
        Some(CtState::Established)
    );
    assert_eq!(t.gc(now, usize::MAX).freed, 0);
    // FIN: 120 s.
    assert_eq!(
        t.lookup(&reply, now, FIN | ACK).map(|h| h.state),
        Some(CtState::Closing)
    );
    let view = t.iter().next().expect("one entry");
    assert_eq!(view.timeout_ns, 120 * S);
    assert_eq!(view.expires_ns(), now + 120 * S);
    assert!(!view.is_expired(now + 120 * S - 1));
    assert!(view.is_expired(now + 120 * S));
    assert_eq!(t.gc(now + 120 * S - 1, usize::MAX).freed, 0);
    assert_eq!(t.lookup(&orig, now + 120 * S, ACK), None, "expired");
    assert_eq!(t.gc(now + 120 * S, usize::MAX).freed, 1);
    assert!(t.is_empty());
}

#[test]
fn syn_sent_and_rst_timeouts() {
    let t = ct(16);
    let (orig, reply) = dnat_pair(TCP);
    t.commit(orig, reply, meta(), 0, SYN).expect("room");
    assert_eq!(t.lookup(&orig, 60 * S, SYN), None, "unanswered SYN: 60 s");

    let t = ct(16);
    t.commit(orig, reply, meta(), 0, SYN).expect("room");
    let hit = t.lookup(&reply, S, RST | ACK).expect("hit");
    assert_eq!(hit.state, CtState::Closed);
    assert!(t.lookup(&orig, 11 * S - 1, ACK).is_some(), "refreshes");
    assert_eq!(t.lookup(&orig, 21 * S - 1, ACK), None, "closed: 10 s");
}

#[test]
fn tcp_reopen_after_close_keeps_the_binding() {
    let t = ct(16);
    let (orig, reply) = dnat_pair(TCP);
    t.commit(orig, reply, meta(), 0, SYN).expect("room");
    t.lookup(&reply, 0, SYN | ACK);
    t.lookup(&orig, 0, ACK);
    t.lookup(&orig, S, FIN | ACK);
    assert_eq!(
        t.lookup(&orig, 2 * S, SYN).map(|h| h.state),
        Some(CtState::SynSent)
    );
    let hit = t.lookup(&reply, 2 * S, SYN | ACK).expect("hit");
    assert_eq!((hit.state, hit.reply), (CtState::SynRecv, reply));
}

#[test]
fn udp_unreplied_and_assured_timeouts() {
    let t = ct(16);
    let (orig, reply) = dnat_pair(UDP);
    t.commit(orig, reply, meta(), 0, 0).expect("room");
    assert_eq!(
        t.lookup(&orig, 29 * S, 0).map(|h| h.state),
        Some(CtState::Unreplied)
    );
    // 30 s after the last packet (at 29 s), not after the first.
    assert!(t.lookup(&orig, 59 * S - 1, 0).is_some());
    assert_eq!(t.lookup(&orig, 89 * S, 0), None);

    let t = ct(16);
    t.commit(orig, reply, meta(), 0, 0).expect("room");
    assert_eq!(
        t.lookup(&reply, S, 0).map(|h| h.state),
        Some(CtState::Assured)
    );
    assert!(t.lookup(&orig, 121 * S - 1, 0).is_some(), "assured: 120 s");
    assert_eq!(t.lookup(&orig, 241 * S, 0), None);
}

#[test]
fn custom_timeouts_apply() {
    let t = Conntrack::new(CtConfig {
        timeouts: Timeouts {
            udp: std::time::Duration::from_millis(5),
            ..Timeouts::default()
        },
        ..CtConfig::new(8)
    });
    let (orig, reply) = dnat_pair(UDP);
    t.commit(orig, reply, meta(), 0, 0).expect("room");
    assert!(t.lookup(&orig, 4_999_999, 0).is_some());
    assert_eq!(t.gc(4_999_999 + 5_000_000, usize::MAX).freed, 1);
}

#[test]
fn expired_entries_are_reclaimed_by_commit() {
    let t = ct(16);
    let (orig, reply) = dnat_pair(UDP);
    t.commit(orig, reply, meta(), 0, 0).expect("room");
    // Same original tuple after expiry: a fresh connection, new binding.
    let mut reply2 = reply;
    reply2.src = Ipv4Addr::new(10, 244, 3, 3);
    let hit = t
        .commit(orig, reply2, CtMeta::default(), 30 * S, 0)
        .expect("reclaimed");
    assert_eq!(hit.reply, reply2);
    assert_eq!(t.len(), 1);
    assert_eq!(t.lookup(&reply, 30 * S, 0), None);
    // Reply tuple held by an expired connection: reclaimed too.
    let other = key([10, 244, 1, 9], 5, [10, 96, 0, 10], 80, UDP);
    t.commit(other, reply2, meta(), 60 * S, 0)
        .expect("reclaimed");
    assert_eq!(t.len(), 1);
    assert_eq!(
        t.lookup(&reply2, 60 * S, 0).map(|h| h.original),
        Some(other)
    );
}

#[test]
fn gc_is_incremental_and_spares_live_entries() {
    let t = ct(64);
    let slots = t.slots();
    assert_eq!(slots, 256);
    let mut flows = Flows(7);
    let mut udp = Vec::new();
    for i in 0..40 {
        let mut o = flows.next_flow();
        o.proto = UDP;
        // Half are refreshed later and must survive.
        let t0 = if i % 2 == 0 { 0 } else { 20 * S };
        t.commit(o, masq_reply(&o), meta(), t0, 0).expect("room");
        udp.push((o, t0));
    }
    let mut total = GcProgress::default();
    let mut calls = 0;
    loop {
        let p = t.gc(40 * S, 10);
        calls += 1;
        assert!(p.examined <= 10);
        total.examined += p.examined;
        total.freed += p.freed;
        if p.pass_complete {
            break;
        }
    }
    // The call that completes the pass may run into the next one.
    assert!((slots..slots + 10).contains(&total.examined));
    assert_eq!(calls, slots.div_ceil(10));
    assert_eq!(total.freed, 20);
    assert_eq!(t.len(), 20);
    for (o, t0) in udp {
        assert_eq!(t.lookup(&o, 40 * S, 0).is_some(), t0 > 0, "{o}");
    }
}

#[test]
fn flush_matching_removes_udp_entries_of_a_gone_backend() {
    let t = ct(64);
    let backend = |i: u8| (Ipv4Addr::new(10, 244, 2, i), 53u16);
    for c in 0..12u16 {
        for proto in [UDP, TCP] {
            let (ip, port) = backend(1 + (c % 3) as u8);
            let o = key([10, 244, 1, 2], 1000 + c, [10, 96, 0, 10], 53, proto);
            let r = FlowKey {
                src: ip,
                sport: port,
                ..o.reversed()
            };
            t.commit(o, r, meta(), 0, if proto == TCP { SYN } else { 0 })
                .expect("room");
        }
    }
    assert_eq!(t.len(), 24);
    let (gone_ip, gone_port) = backend(2);
    let flushed = t.flush_matching(|e| {
        e.original.proto == UDP && e.reply.src == gone_ip && e.reply.sport == gone_port
    });
    assert_eq!(flushed, 4);
    assert_eq!(t.len(), 20);
    for e in t.iter() {
        assert!(!(e.reply.proto == UDP && e.reply.src == gone_ip));
    }
    // The TCP connections to that backend stay (kube-proxy flushes UDP only).
    assert_eq!(t.iter().filter(|e| e.reply.src == gone_ip).count(), 4);
    assert_eq!(t.flush_matching(|_| true), 20);
    assert!(t.is_empty());
}

#[test]
fn capacity_is_a_hard_bound() {
    let t = ct(10);
    let mut flows = Flows(11);
    let mut committed = Vec::new();
    while committed.len() < 10 {
        let o = flows.next_flow();
        committed.push(t.commit(o, masq_reply(&o), meta(), 0, SYN).expect("room"));
    }
    let o = flows.next_flow();
    assert_eq!(
        t.commit(o, masq_reply(&o), meta(), 0, SYN),
        Err(CommitError::Full)
    );
    assert_eq!(t.len(), 10);
    // An existing connection is still reported as such when full.
    let first = committed[0].original;
    assert!(matches!(
        t.commit(first, masq_reply(&first), meta(), 0, SYN),
        Err(CommitError::Exists(_))
    ));
    assert!(t.remove(&first));
    t.commit(o, masq_reply(&o), meta(), 0, SYN)
        .expect("room again");
    assert_eq!(t.len(), 10);
}

#[test]
fn full_probe_window_is_reported_as_full() {
    let t = ct(1000);
    let target = 0;
    // Tuples whose original lands in the window of slot 0 (replies are
    // spread over the table).
    let mut flows = Flows(3);
    let mut aimed = Vec::new();
    while aimed.len() <= PROBE_WINDOW {
        let o = flows.next_flow();
        if t.home_slot(&o) == target {
            aimed.push(o);
        }
    }
    let mut full = 0;
    for o in &aimed {
        match t.commit(*o, masq_reply(o), meta(), 0, 0) {
            Ok(_) => {}
            Err(CommitError::Full) => full += 1,
            Err(e) => panic!("unexpected {e}"),
        }
    }
    // Replies may take some of the window's slots too; at least the last
    // original cannot fit.
    assert!(full >= 1);
    assert_eq!(t.len(), aimed.len() - full);
    for o in &aimed {
        if let Some(hit) = t.lookup(o, 0, 0) {
            assert_eq!(t.lookup(&hit.reply, 0, 0).map(|h| h.original), Some(*o));
        }
    }
}

#[test]
fn meta_and_view_round_trip() {
    let t = ct(8);
    let (orig, reply) = dnat_pair(TCP);
    let m = CtMeta {
        flags: CtMeta::DNAT | CtMeta::SNAT | CtMeta::HAIRPIN | 0x8000,
        service_port: u32::MAX - 1,
        policy_generation: u32::MAX,
    };
    t.commit(orig, reply, m, 42, SYN).expect("room");
    let v: Vec<_> = t.iter().collect();
    assert_eq!(
        v,
        [CtEntryView {
            original: orig,
            reply,
            meta: m,
            state: CtState::SynSent,
            last_seen_ns: 42,
            timeout_ns: 60 * S,
        }]
    );
    assert!(m.has(CtMeta::SNAT | CtMeta::HAIRPIN));
    assert!(!m.has(CtMeta::FROM_UPLINK));
}

#[test]
fn config_is_clamped() {
    let t = Conntrack::new(CtConfig::new(0));
    assert_eq!(t.capacity(), 1);
    assert_eq!(t.slots(), PROBE_WINDOW);
    let t = ct(65_536);
    assert_eq!((t.capacity(), t.slots()), (65_536, 262_144));
    assert!(format!("{t:?}").contains("65536"));
}

// ---- concurrency ---------------------------------------------------------

#[test]
fn concurrent_commits_are_found_from_both_tuples_by_every_thread() {
    const THREADS: usize = 4;
    const PER_THREAD: usize = 3000;
    let t = ct(THREADS * PER_THREAD);
    let flows: Vec<Vec<FlowKey>> = (0..THREADS)
        .map(|i| {
            let mut f = Flows(100 + i as u64);
            (0..PER_THREAD).map(|_| f.next_flow()).collect()
        })
        .collect();
    std::thread::scope(|s| {
        for (i, mine) in flows.iter().enumerate() {
            let t = &t;
            let theirs = &flows[(i + 1) % THREADS];
            s.spawn(move || {
                for (n, o) in mine.iter().enumerate() {
                    let hit = t.commit(*o, masq_reply(o), meta(), 0, SYN).expect("room");
                    assert_eq!(hit.original, *o);
                    // Our own commit is visible at once, both ways.
                    assert_eq!(
                        t.lookup(o, 0, 0).map(|h| h.direction),
                        Some(Direction::Original)
                    );
                    assert_eq!(
                        t.lookup(&masq_reply(o), 0, 0).map(|h| h.direction),
                        Some(Direction::Reply)
                    );
                    // Whatever of the neighbour's flows we find is whole.
                    if let Some(h) = t.lookup(&theirs[n], 0, 0) {
                        assert_eq!(h.reply, masq_reply(&theirs[n]));
                    }
                }
            });
        }
    });
    assert_eq!(t.len(), THREADS * PER_THREAD);
    assert_eq!(t.iter().count(), THREADS * PER_THREAD);
    for o in flows.iter().flatten() {
        assert_eq!(t.lookup(o, 0, 0).map(|h| h.reply), Some(masq_reply(o)));
        assert_eq!(t.lookup(&masq_reply(o), 0, 0).map(|h| h.original), Some(*o));
    }
}

#[test]
fn racing_commits_of_the_same_flows_create_each_once() {
    const THREADS: usize = 4;
    let t = ct(4096);
    let mut f = Flows(5);
    let flows: Vec<FlowKey> = (0..2000).map(|_| f.next_flow()).collect();
    let wins: Vec<AtomicUsize> = flows.iter().map(|_| AtomicUsize::new(0)).collect();
    std::thread::scope(|s| {
        for w in 0..THREADS {
            let (t, flows, wins) = (&t, &flows, &wins);
            s.spawn(move || {
                for (i, o) in flows.iter().enumerate() {
                    // Each thread gives the flow its own meta: the winner's
                    // must be the one everybody ends up with.
                    let m = CtMeta {
                        policy_generation: w as u32,
                        ..meta()
                    };
                    loop {
                        match t.commit(*o, masq_reply(o), m, 0, SYN) {
                            Ok(_) => {
                                wins[i].fetch_add(1, Ordering::Relaxed);
                                break;
                            }
                            Err(CommitError::Exists(hit)) => {
                                assert_eq!(hit.original, *o);
                                break;
                            }
                            Err(CommitError::Busy) => continue,
                            Err(e) => panic!("unexpected {e}"),
                        }
                    }
                }
            });
        }
    });
    assert!(wins.iter().all(|w| w.load(Ordering::Relaxed) == 1));
    assert_eq!(t.len(), flows.len());
    let mut seen = HashMap::new();
    for e in t.iter() {
        assert!(
            seen.insert(e.original, e).is_none(),
            "duplicate {}",
            e.original
        );
    }
    assert_eq!(seen.len(), flows.len());
}

#[test]
fn racing_commits_of_one_reply_tuple_let_one_win() {
    // Eight clients, one masquerade tuple: exactly one connection gets it.
    let t = ct(64);
    let reply = key([8, 8, 8, 8], 53, [192, 168, 50, 1], 30000, UDP);
    for round in 0..200u16 {
        let ok = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for c in 0..4u8 {
                let (t, ok) = (&t, &ok);
                s.spawn(move || {
                    let o = key([10, 244, 1, c], 1000 + round, [8, 8, 8, 8], 53, UDP);
                    match t.commit(o, reply, meta(), 0, 0) {
                        Ok(_) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(CommitError::ReplyTupleInUse) => {}
                        Err(e) => panic!("unexpected {e}"),
                    }
                });
            }
        });
        assert!(ok.load(Ordering::Relaxed) <= 1);
        assert!(t.len() <= 1);
        t.flush_matching(|_| true);
    }
}

#[test]
fn churn_with_concurrent_readers_never_returns_a_torn_entry() {
    // Writers commit and remove flows over and over (slots are reused all
    // the time); GC sweeps; readers look everything up. A hit must always be
    // a connection that was committed as such.
    let t = ct(256);
    let mut f = Flows(9);
    let flows: Vec<FlowKey> = (0..600).map(|_| f.next_flow()).collect();
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        for w in 0..2usize {
            let (t, flows) = (&t, &flows);
            s.spawn(move || {
                for round in 0..30u64 {
                    for o in flows.iter().skip(w).step_by(2) {
                        let _ = t.commit(*o, masq_reply(o), meta(), round * S, 0);
                    }
                    for o in flows.iter().skip(w).step_by(2) {
                        t.remove(o);
                    }
                }
            });
        }
        {
            let (t, stop) = (&t, &stop);
            s.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    t.gc(u64::MAX / 2, 64);
                }
            });
        }
        let reader = s.spawn(|| {
            for _ in 0..20 {
                for o in &flows {
                    for k in [*o, masq_reply(o)] {
                        if let Some(h) = t.lookup(&k, 0, 0) {
                            assert_eq!(h.reply, masq_reply(&h.original));
                            assert_eq!(h.matched(), k);
                            assert_eq!(h.original, *o);
                        }
                    }
                }
            }
        });
        reader.join().expect("reader");
        stop.store(true, Ordering::Relaxed);
    });
    // Writers finished with removals: nothing left, counter consistent.
    let left = t.iter().count();
    assert_eq!(t.len(), left);
    for o in &flows {
        if t.lookup(o, 0, 0).is_none() {
            assert_eq!(t.lookup(&masq_reply(o), 0, 0), None);
        }
    }
    assert_eq!(left, 0);
}

#[test]
fn gc_racing_with_traffic_frees_only_idle_connections() {
    // Live flows are refreshed continuously on a shared clock while GC runs
    // at that clock; idle ones must go, live ones must all survive.
    let t = ct(4096);
    let mut f = Flows(21);
    let live: Vec<FlowKey> = (0..500).map(|_| f.next_flow()).collect();
    let idle: Vec<FlowKey> = (0..500).map(|_| f.next_flow()).collect();
    for o in live.iter().chain(&idle) {
        let mut o = *o;
        o.proto = UDP;
        t.commit(o, masq_reply(&o), meta(), 0, 0).expect("room");
    }
    let udp = |o: &FlowKey| FlowKey { proto: UDP, ..*o };
    let clock = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|s| {
        let (t, clock, live) = (&t, &clock, &live);
        let traffic = s.spawn(move || {
            for step in 1..=200u64 {
                let now = step * S;
                for o in live {
                    assert!(t.lookup(&udp(o), now, 0).is_some(), "live flow lost");
                }
                clock.store(now, Ordering::SeqCst);
            }
        });
        s.spawn(move || {
            while !traffic.is_finished() {
                // Sweep as of a moment the traffic thread has reached.
                t.gc(clock.load(Ordering::SeqCst), 97);
            }
        });
    });
    // One full sweep from wherever the cursor is.
    assert_eq!(t.gc(200 * S, t.slots()).examined, t.slots());
    assert_eq!(t.len(), live.len());
    for o in &idle {
        assert_eq!(t.lookup(&udp(o), 200 * S, 0), None);
    }
}

// ---- the bound under load ------------------------------------------------

#[test]
fn stays_within_its_bound_under_1m_random_flows() {
    const CAPACITY: usize = 65_536;
    let t = ct(CAPACITY);
    let mut f = Flows(0x1234_5678);
    let (mut ok, mut full, mut other) = (0usize, 0usize, 0usize);
    let mut first_full_at = None;
    for i in 0..1_000_000u64 {
        let o = f.next_flow();
        match t.commit(o, masq_reply(&o), CtMeta::default(), i, SYN) {
            Ok(_) => ok += 1,
            Err(CommitError::Full) => {
                first_full_at.get_or_insert(t.len());
                full += 1;
            }
            Err(_) => other += 1,
        }
        if i % 4096 == 0 {
            assert!(t.len() <= CAPACITY);
        }
    }
    assert_eq!(t.len(), ok);
    assert_eq!(t.len(), CAPACITY, "fills up to its capacity");
    assert!(full >= 1_000_000 - CAPACITY - other);
    // The probe windows are wide enough that the count, not the hashing,
    // is what limits the table.
    assert_eq!(first_full_at, Some(CAPACITY));
    // An hour later every SYN-SENT entry is gone.
    let mut freed = 0;
    loop {
        let p = t.gc(3600 * S, 1 << 16);
        freed += p.freed;
        if p.pass_complete {
            break;
        }
    }
    assert_eq!(freed, CAPACITY);
    assert!(t.is_empty());
    assert_eq!(t.iter().count(), 0);
}

// ---- model-based property test --------------------------------------------

/// The oracle: a plain map from original tuple to connection, with the UDP
/// timeouts applied by brute force.
#[derive(Default)]
struct Model {
    conns: HashMap<FlowKey, ModelConn>,
    capacity: usize,
}

#[derive(Clone, Copy)]
struct ModelConn {
    reply: FlowKey,
    last_seen: u64,
    replied: bool,
}

impl ModelConn {
    fn expired(&self, now: u64) -> bool {
        let timeout = if self.replied { 120 * S } else { 30 * S };
        now.saturating_sub(self.last_seen) >= timeout
    }
}

impl Model {
    /// The connection (by original tuple) and direction a tuple matches.
    fn owner(&self, k: &FlowKey) -> Option<(FlowKey, Direction)> {
        self.conns.iter().find_map(|(o, c)| {
            if o == k {
                Some((*o, Direction::Original))
            } else if c.reply == *k {
                Some((*o, Direction::Reply))
            } else {
                None
            }
        })
    }

    fn lookup(&mut self, k: &FlowKey, now: u64) -> Option<(Direction, FlowKey, FlowKey, CtState)> {
        let (o, dir) = self.owner(k)?;
        let c = self.conns.get_mut(&o)?;
        if c.expired(now) {
            return None;
        }
        c.last_seen = c.last_seen.max(now);
        c.replied |= dir == Direction::Reply;
        let state = if c.replied {
            CtState::Assured
        } else {
            CtState::Unreplied
        };
        Some((dir, o, c.reply, state))
    }

    fn commit(&mut self, o: FlowKey, r: FlowKey, now: u64) -> Result<(), &'static str> {
        if o == r {
            return Err("invalid");
        }
        if let Some((owner, _)) = self.owner(&o) {
            if self.lookup(&o, now).is_some() {
                return Err("exists");
            }
            self.conns.remove(&owner);
        }
        if let Some((owner, _)) = self.owner(&r) {
            if !self.conns.get(&owner).is_some_and(|c| c.expired(now)) {
                return Err("reply in use");
            }
            self.conns.remove(&owner);
        }
        if self.conns.len() >= self.capacity {
            return Err("full");
        }
        self.conns.insert(
            o,
            ModelConn {
                reply: r,
                last_seen: now,
                replied: false,
            },
        );
        Ok(())
    }
}

#[derive(Clone, Debug)]
enum Op {
    /// Commit flow `o`, with reply variant `r` (few variants, so reply
    /// tuples collide).
    Commit {
        o: usize,
        r: usize,
    },
    Lookup {
        o: usize,
        reply_side: bool,
    },
    Remove {
        o: usize,
    },
    Gc,
    FlushPort {
        port: u16,
    },
    Advance {
        secs: u64,
    },
}

fn universe_flow(o: usize) -> FlowKey {
    key(
        [10, 244, 1, (o % 3) as u8],
        1000 + (o / 3) as u16,
        [10, 96, 0, 1],
        53,
        UDP,
    )
}

fn universe_reply(o: usize, r: usize) -> FlowKey {
    match r {
        // No NAT.
        0 => universe_flow(o).reversed(),
        // Masquerade to one of two shared ports: collisions across flows.
        1 | 2 => key([10, 96, 0, 1], 53, [192, 168, 50, 1], 40000 + r as u16, UDP),
        // Reply tuple equal to another flow's original tuple.
        _ => universe_flow((o + 1) % 8),
    }
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..8usize, 0..4usize).prop_map(|(o, r)| Op::Commit { o, r }),
        4 => (0..8usize, any::<bool>()).prop_map(|(o, reply_side)| Op::Lookup { o, reply_side }),
        1 => (0..8usize).prop_map(|o| Op::Remove { o }),
        1 => Just(Op::Gc),
        1 => (1000..1003u16).prop_map(|port| Op::FlushPort { port }),
        2 => prop_oneof![Just(1u64), Just(29), Just(30), Just(90), Just(130)]
            .prop_map(|secs| Op::Advance { secs }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn behaves_like_a_map_of_connections(ops in proptest::collection::vec(op(), 1..60)) {
        const CAPACITY: usize = 5;
        let t = ct(CAPACITY);
        let mut m = Model { capacity: CAPACITY, ..Model::default() };
        let mut now = 1000 * S;
        for op in ops {
            match op {
                Op::Commit { o, r } => {
                    let (ok, rk) = (universe_flow(o), universe_reply(o, r));
                    let got = t.commit(ok, rk, meta(), now, 0);
                    let want = m.commit(ok, rk, now);
                    let got_kind = match got {
                        Ok(hit) => {
                            prop_assert_eq!((hit.original, hit.reply), (ok, rk));
                            Ok(())
                        }
                        Err(CommitError::Exists(_)) => Err("exists"),
                        Err(CommitError::ReplyTupleInUse) => Err("reply in use"),
                        Err(CommitError::Full) => Err("full"),
                        Err(CommitError::InvalidTuples) => Err("invalid"),
                        Err(CommitError::Busy) => Err("busy"),
                    };
                    prop_assert_eq!(got_kind, want, "commit {} / {}", ok, rk);
                }
                Op::Lookup { o, reply_side } => {
                    let k = if reply_side {
                        // Whatever reply tuple the model has for it, or the
                        // plain reversed tuple.
                        m.conns.get(&universe_flow(o)).map_or(universe_flow(o).reversed(), |c| c.reply)
                    } else {
                        universe_flow(o)
                    };
                    let got = t.lookup(&k, now, 0).map(|h| (h.direction, h.original, h.reply, h.state));
                    prop_assert_eq!(got, m.lookup(&k, now), "lookup {}", k);
                }
                Op::Remove { o } => {
                    let k = universe_flow(o);
                    prop_assert_eq!(t.remove(&k), m.conns.remove(&k).is_some());
                }
                Op::Gc => {
                    let before = m.conns.len();
                    m.conns.retain(|_, c| !c.expired(now));
                    let p = t.gc(now, t.slots());
                    prop_assert!(p.pass_complete || t.slots() == 0);
                    prop_assert_eq!(p.freed, before - m.conns.len());
                }
                Op::FlushPort { port } => {
                    let before = m.conns.len();
                    m.conns.retain(|o, _| o.sport != port);
                    prop_assert_eq!(t.flush_matching(|e| e.original.sport == port), before - m.conns.len());
                }
                Op::Advance { secs } => now += secs * S,
            }
            prop_assert_eq!(t.len(), m.conns.len());
            let mut got: Vec<_> = t.iter().map(|e| (e.original, e.reply)).collect();
            let mut want: Vec<_> = m.conns.iter().map(|(o, c)| (*o, c.reply)).collect();
            got.sort();
            want.sort();
            prop_assert_eq!(got, want);
        }
    }
}

/// A handle refresh is a lookup without the probe: same answer, same side
/// effects (idle timer, TCP state), and a miss once the connection is gone,
/// expired, or its slot holds another connection.
#[test]
fn refresh_by_handle_behaves_like_a_lookup() {
    let t = ct(64);
    let (orig, reply) = dnat_pair(TCP);
    t.commit(orig, reply, meta(), 0, SYN).unwrap();
    let (_, ho) = t.lookup_handle(&orig, S, SYN).unwrap();
    let (hit, hr) = t.lookup_handle(&reply, S, SYN | ACK).unwrap();
    assert_eq!(hit.direction, Direction::Reply);
    assert_eq!(hr.direction, Direction::Reply);
    assert_eq!(ho.slot, hr.slot, "both name the connection's original slot");
    // ACK from the client establishes, as a lookup would.
    assert!(t.refresh(&ho, 2 * S, ACK));
    assert_eq!(
        t.lookup(&orig, 2 * S, 0).unwrap().state,
        CtState::Established
    );
    // The idle timer moves: alive just before 2 s + established, and that
    // refresh keeps it alive one second after (last seen 2 s: expired).
    let est = Timeouts::default().tcp_established.as_nanos() as u64;
    assert!(t.refresh(&hr, 2 * S + est - 1, ACK));
    // FIN from the backend: closing, with the closing timeout.
    let now = 3 * S + est;
    assert!(t.refresh(&hr, now, FIN | ACK));
    assert_eq!(t.lookup(&orig, now, 0).unwrap().state, CtState::Closing);
    let closing = Timeouts::default().tcp_closing.as_nanos() as u64;
    assert!(!t.refresh(&ho, now + closing, ACK), "expired: a miss");
    assert!(t.lookup(&orig, now + closing, ACK).is_none());

    // Removed, then the slot reused by another connection: a miss.
    let t = ct(64);
    let (orig, reply) = dnat_pair(UDP);
    t.commit(orig, reply, meta(), 0, 0).unwrap();
    let (_, h) = t.lookup_handle(&orig, 0, 0).unwrap();
    assert!(t.refresh(&h, S, 0));
    assert!(t.remove(&orig));
    assert!(!t.refresh(&h, S, 0));
    t.commit(orig, reply, meta(), 2 * S, 0).unwrap();
    assert!(
        !t.refresh(&h, 2 * S, 0),
        "a new occupancy, even of the same tuples"
    );
    let (_, h2) = t.lookup_handle(&orig, 2 * S, 0).unwrap();
    assert!(t.refresh(&h2, 3 * S, 0));
    let (_, hr) = t.lookup_handle(&reply, 3 * S, 0).unwrap();
    assert!(t.refresh(&hr, 4 * S, 0));
    assert_eq!(t.lookup(&orig, 4 * S, 0).unwrap().state, CtState::Assured);
    assert!(!t.refresh(&CtHandle::NONE, 4 * S, 0));
}
