//! The worker loop on in-memory ports: packets in, the right port out,
//! frames returned, counters.
//!
//! ```text
//!   pod a1 10.244.1.2 (port ifindex 11)   pod a2 10.244.1.3 (port ifindex 12)
//!                \                         /
//!                 worker (node-a 192.168.50.1, gw 10.244.1.1)
//!                          | uplink port (ifindex 2)
//!            node-b 192.168.50.2, pods 10.244.2.0/24
//! ```

use std::net::Ipv4Addr;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};

use super::*;
use crate::conntrack::{AffinityTable, Conntrack, CtConfig};
use crate::io::mem::{MemPort, MemStore};
use crate::tables::*;

const NODE_A: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 1);
const NODE_B: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 2);
const A1: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
const A2: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 3);
const B1: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 2);
const GW: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 1);
const UPLINK_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x01];
const NODE_B_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x02, 0x01];
const VTEP_B_MAC: [u8; 6] = [0x0e, 0, 0, 0, 0x02, 0x01];
const A1_HOST: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 0x02];
const A1_POD: [u8; 6] = [0x02, 0xbb, 0, 0, 0, 0x02];
const A2_HOST: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 0x03];
const A2_POD: [u8; 6] = [0x02, 0xbb, 0, 0, 0, 0x03];
const UPLINK_IF: u32 = 2;
const A1_IF: u32 = 11;
const A2_IF: u32 = 12;

fn local_pod(ip: Ipv4Addr, name: &str, ifindex: u32, host: [u8; 6], pod: [u8; 6]) -> LocalPod {
    LocalPod {
        ip,
        namespace: "default".into(),
        name: name.into(),
        interface: Some(PodInterface {
            name: format!("veth{name}").into(),
            ifindex,
            host_mac: MacAddr(host),
            pod_mac: MacAddr(pod),
        }),
        policy_slot: ifindex - A1_IF,
    }
}

fn tables() -> TableSet {
    let (pods, rejected) = PodTable::new(vec![
        local_pod(A1, "a1", A1_IF, A1_HOST, A1_POD),
        local_pod(A2, "a2", A2_IF, A2_HOST, A2_POD),
    ]);
    assert!(rejected.is_empty());
    let routes = RouteTable::new(vec![(
        "10.244.2.0/24".parse().unwrap(),
        RemoteNode {
            name: "node-b".into(),
            vtep_ip: NODE_B,
            vtep_mac: MacAddr(VTEP_B_MAC),
        },
    )]);
    let mut neighbours = NeighbourTable::default();
    neighbours.insert(NODE_B, MacAddr(NODE_B_MAC));
    TableSet {
        generation: 1,
        node: NodeConfig {
            node_name: "node-a".into(),
            node_ips: vec![NODE_A],
            vtep_ip: NODE_A,
            vtep_mac: MacAddr(UPLINK_MAC),
            uplink_mac: MacAddr(UPLINK_MAC),
            pod_cidr: Some("10.244.1.0/24".parse().unwrap()),
            gateway_ip: Some(GW),
            cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
            vxlan: VxlanConfig::default(),
            uplink_mtu: 1500,
            node_port_range: (30000, 32767),
            masquerade_port_range: (32768, 60999),
        },
        services: ServiceTable::new(),
        pods,
        routes,
        policy: PolicyTable::allow_all(),
        neighbours,
    }
}

/// Opens in-memory ports: the spec is `(ingress, ifindex)`. Closed ports
/// hand what they transmitted to `closed` (for the threaded test).
struct MemFactory {
    closed: Option<mpsc::Sender<(u32, Vec<Vec<u8>>)>>,
    preload: Vec<(u32, Vec<u8>)>,
}

impl PortFactory for MemFactory {
    type Store = MemStore;
    type Port = MemPort;
    type Spec = (Ingress, u32);
    type Opened = ();

    fn open(
        &mut self,
        _store: &mut MemStore,
        spec: &(Ingress, u32),
    ) -> Result<(MemPort, ()), String> {
        if spec.1 == 0 {
            return Err("ifindex 0".into());
        }
        let mut port = MemPort::new(spec.0, spec.1, 64);
        for (_, pkt) in self.preload.iter().filter(|(i, _)| *i == spec.1) {
            port.inject(pkt);
        }
        Ok((port, ()))
    }

    fn close(&mut self, _store: &mut MemStore, mut port: MemPort) {
        if let Some(tx) = &self.closed {
            let _ = tx.send((port.ifindex(), port.take_sent()));
        }
    }
}

const FRAMES: usize = 64;

fn worker(forwarding: Forwarding) -> Worker<MemFactory> {
    let (_publisher, reader) = publication(tables());
    let ct = Arc::new(Conntrack::new(CtConfig {
        capacity: 1024,
        ..CtConfig::default()
    }));
    let aff = Arc::new(AffinityTable::new(64, None));
    let cfg = WorkerConfig {
        forwarding,
        ..WorkerConfig::new(0)
    };
    let factory = MemFactory {
        closed: None,
        preload: Vec::new(),
    };
    let mut w = Worker::new(cfg, MemStore::new(FRAMES), factory, reader, ct, aff);
    w.add_port(&(Ingress::Uplink, UPLINK_IF)).unwrap();
    w.add_port(&(Ingress::Pod { ifindex: A1_IF }, A1_IF))
        .unwrap();
    w.add_port(&(Ingress::Pod { ifindex: A2_IF }, A2_IF))
        .unwrap();
    w
}

fn udp(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    payload: &[u8],
) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(src_mac, dst_mac)
        .ipv4(src.octets(), dst.octets(), 64)
        .udp(40000, 7000);
    let mut v = Vec::new();
    b.write(&mut v, payload).unwrap();
    v
}

fn sent(w: &mut Worker<MemFactory>, ifindex: u32) -> Vec<Vec<u8>> {
    w.port_mut(ifindex).unwrap().take_sent()
}

#[test]
fn pod_to_local_pod_goes_out_on_the_destination_veth() {
    let mut w = worker(Forwarding::Pipeline);
    let pkt = udp(A1_POD, A1_HOST, A1, A2, b"hello a2");
    w.port_mut(A1_IF).unwrap().inject(&pkt);
    assert_eq!(w.poll_once(), 1);

    let out = sent(&mut w, A2_IF);
    assert_eq!(out.len(), 1, "one frame on a2's veth");
    assert!(sent(&mut w, A1_IF).is_empty());
    assert!(sent(&mut w, UPLINK_IF).is_empty());
    let p = SlicedPacket::from_ethernet(&out[0]).unwrap();
    let eth = p.link.as_ref().unwrap().to_header().unwrap();
    let eth = eth.ethernet2().unwrap();
    assert_eq!(eth.destination, A2_POD);
    assert_eq!(eth.source, A2_HOST);
    let Some(etherparse::NetSlice::Ipv4(ip)) = &p.net else {
        panic!("not IPv4")
    };
    assert_eq!(ip.header().ttl(), 63);
    assert_eq!(ip.header().source_addr(), A1);
    assert_eq!(ip.header().destination_addr(), A2);
    let Some(TransportSlice::Udp(u)) = &p.transport else {
        panic!("not UDP")
    };
    assert_eq!(u.payload(), b"hello a2");

    assert_eq!(w.pipeline_stats().rx, 1);
    assert_eq!(w.pipeline_stats().forwarded_pod, 1);
    assert_eq!(w.counters().batches, 1);
    // Every frame is back in the store once the transmission completed.
    assert_eq!(w.store().free_frames(), FRAMES);
}

#[test]
fn pod_to_remote_pod_is_encapsulated_on_the_uplink() {
    let mut w = worker(Forwarding::Pipeline);
    let pkt = udp(A1_POD, A1_HOST, A1, B1, b"to b1");
    w.port_mut(A1_IF).unwrap().inject(&pkt);
    w.poll_once();
    let out = sent(&mut w, UPLINK_IF);
    assert_eq!(out.len(), 1);
    // Outer Ethernet + IPv4 + UDP 8472 + VXLAN (50 bytes) around the frame.
    assert_eq!(out[0].len(), pkt.len() + 50);
    let p = SlicedPacket::from_ethernet(&out[0]).unwrap();
    let Some(etherparse::NetSlice::Ipv4(ip)) = &p.net else {
        panic!("not IPv4")
    };
    assert_eq!(ip.header().source_addr(), NODE_A);
    assert_eq!(ip.header().destination_addr(), NODE_B);
    let Some(TransportSlice::Udp(u)) = &p.transport else {
        panic!("not UDP")
    };
    assert_eq!(u.destination_port(), 8472);
    assert_eq!(w.pipeline_stats().forwarded_vxlan, 1);
    assert_eq!(w.store().free_frames(), FRAMES);
}

#[test]
fn arp_for_the_gateway_is_answered_on_the_same_veth() {
    let mut w = worker(Forwarding::Pipeline);
    let mut req = Vec::new();
    PacketBuilder::ethernet2(A1_POD, [0xff; 6])
        .arp(
            etherparse::ArpPacket::new(
                etherparse::ArpHardwareId::ETHERNET,
                etherparse::EtherType::IPV4,
                etherparse::ArpOperation::REQUEST,
                &A1_POD,
                &A1.octets(),
                &[0; 6],
                &GW.octets(),
            )
            .unwrap(),
        )
        .write(&mut req)
        .unwrap();
    w.port_mut(A1_IF).unwrap().inject(&req);
    w.poll_once();
    let out = sent(&mut w, A1_IF);
    assert_eq!(out.len(), 1);
    let p = SlicedPacket::from_ethernet(&out[0]).unwrap();
    let Some(etherparse::NetSlice::Arp(arp)) = &p.net else {
        panic!("not ARP: {:?}", p.net)
    };
    assert_eq!(arp.operation(), etherparse::ArpOperation::REPLY);
    assert_eq!(arp.sender_hw_addr(), A1_HOST);
    assert_eq!(arp.sender_protocol_addr(), GW.octets());
    assert_eq!(w.pipeline_stats().replies, 1);
}

#[test]
fn drops_are_counted_and_frames_released() {
    let mut w = worker(Forwarding::Pipeline);
    // a1 claims a2's address.
    w.port_mut(A1_IF)
        .unwrap()
        .inject(&udp(A1_POD, A1_HOST, A2, A1, b"spoof"));
    // Garbage.
    w.port_mut(A1_IF).unwrap().inject(&[0u8; 10]);
    assert_eq!(w.poll_once(), 2);
    for i in [UPLINK_IF, A1_IF, A2_IF] {
        assert!(sent(&mut w, i).is_empty());
    }
    let st = w.pipeline_stats();
    assert_eq!(st.rx, 2);
    assert_eq!(st.drops.get(DropReason::SourceSpoofed), 1);
    assert_eq!(st.drops.get(DropReason::Malformed), 1);
    assert_eq!(w.store().free_frames(), FRAMES);
}

#[test]
fn a_removed_port_gets_nothing_and_the_loss_is_counted() {
    let mut w = worker(Forwarding::Pipeline);
    w.remove_port(A2_IF).unwrap();
    assert!(w.port_mut(A2_IF).is_none());
    assert!(matches!(
        w.remove_port(A2_IF),
        Err(WorkerError::NoSuchPort { ifindex: A2_IF, .. })
    ));
    w.port_mut(A1_IF)
        .unwrap()
        .inject(&udp(A1_POD, A1_HOST, A1, A2, b"x"));
    w.poll_once();
    assert_eq!(w.counters().no_egress_port, 1);
    assert_eq!(w.pipeline_stats().forwarded_pod, 1);
    assert_eq!(w.store().free_frames(), FRAMES);
    // Adding it back restores delivery.
    w.add_port(&(Ingress::Pod { ifindex: A2_IF }, A2_IF))
        .unwrap();
    w.port_mut(A1_IF)
        .unwrap()
        .inject(&udp(A1_POD, A1_HOST, A1, A2, b"y"));
    w.poll_once();
    assert_eq!(sent(&mut w, A2_IF).len(), 1);
}

#[test]
fn clashing_and_failing_ports_are_refused() {
    let mut w = worker(Forwarding::Pipeline);
    assert!(matches!(
        w.add_port(&(Ingress::Uplink, A1_IF)),
        Err(WorkerError::DuplicatePort { ifindex: A1_IF, .. })
    ));
    // A second queue of the same interface is fine; removal takes both.
    w.add_port(&(Ingress::Pod { ifindex: A1_IF }, A1_IF))
        .unwrap();
    w.publish_stats();
    assert_eq!(w.shared_stats().load().ports.len(), 4);
    w.remove_port(A1_IF).unwrap();
    w.publish_stats();
    assert_eq!(w.shared_stats().load().ports.len(), 2);
    assert!(matches!(
        w.add_port(&(Ingress::Uplink, 0)),
        Err(WorkerError::Open { .. })
    ));
}

#[test]
fn batches_are_bounded_and_round_robin() {
    let mut w = worker(Forwarding::Pipeline);
    let pkt = udp(A1_POD, A1_HOST, A1, A2, b"burst");
    for _ in 0..100 {
        w.port_mut(A1_IF).unwrap().inject(&pkt);
    }
    // Batch 64, pool 64 frames: the first iteration takes 64, the rest
    // waits in the port.
    assert_eq!(w.poll_once(), 64);
    assert_eq!(w.poll_once(), 36);
    assert_eq!(sent(&mut w, A2_IF).len(), 100);
    assert_eq!(w.counters().batches, 2);
    assert_eq!(w.store().free_frames(), FRAMES);
}

#[test]
fn null_forwarding_sends_unchanged_to_the_peer() {
    let mut w = worker(Forwarding::Null);
    w.set_null_peer(A1_IF, Some(UPLINK_IF));
    let pkt = udp(A1_POD, A1_HOST, A1, A2, b"raw");
    w.port_mut(A1_IF).unwrap().inject(&pkt);
    w.port_mut(A2_IF).unwrap().inject(&pkt);
    assert_eq!(w.poll_once(), 2);
    assert_eq!(sent(&mut w, UPLINK_IF), vec![pkt.clone()]);
    assert!(sent(&mut w, A2_IF).is_empty());
    assert_eq!(w.counters().null_forwarded, 1);
    assert_eq!(w.counters().null_no_peer, 1);
    assert_eq!(w.pipeline_stats().rx, 0, "the pipeline did not run");
    assert_eq!(w.store().free_frames(), FRAMES);
}

#[test]
fn stats_snapshot_is_published_on_request_and_periodically() {
    let mut w = worker(Forwarding::Pipeline);
    let shared = w.shared_stats();
    assert_eq!(shared.load().published_ns, 0);
    w.port_mut(A1_IF)
        .unwrap()
        .inject(&udp(A1_POD, A1_HOST, A1, A2, b"s"));
    w.poll_once();
    w.publish_stats();
    let s = shared.load();
    assert!(s.published_ns > 0);
    assert_eq!(s.pipeline.forwarded_pod, 1);
    assert_eq!(s.ports.len(), 3);
    let a2 = s.ports.iter().find(|p| p.ifindex == A2_IF).unwrap();
    assert_eq!(a2.stats.tx_packets, 1);
    let merged = stats::merge(&[s.clone(), s]);
    assert_eq!(merged.pipeline.forwarded_pod, 2);
    assert_eq!(merged.ports.len(), 6);
}

#[test]
fn spawned_worker_runs_takes_commands_and_stops_cleanly() {
    let (_publisher, reader) = publication(tables());
    let ct = Arc::new(Conntrack::new(CtConfig {
        capacity: 1024,
        ..CtConfig::default()
    }));
    let aff = Arc::new(AffinityTable::new(64, None));
    let (closed_tx, closed_rx) = mpsc::channel();
    let pkt = udp(A1_POD, A1_HOST, A1, A2, b"threaded");
    let factory = MemFactory {
        closed: Some(closed_tx),
        preload: vec![(A1_IF, pkt.clone()), (A1_IF, pkt.clone())],
    };
    let cfg = WorkerConfig {
        stats_interval: Duration::from_millis(5),
        ..WorkerConfig::new(3)
    };
    let h = spawn(cfg, || Ok(MemStore::new(FRAMES)), factory, reader, ct, aff).unwrap();
    assert_eq!(h.id(), 3);
    let t = Duration::from_secs(5);
    // Destination first, so the preloaded packets find it.
    assert_eq!(
        h.add_port((Ingress::Pod { ifindex: A2_IF }, A2_IF), t)
            .unwrap()
            .0,
        A2_IF
    );
    assert_eq!(
        h.add_port((Ingress::Pod { ifindex: A1_IF }, A1_IF), t)
            .unwrap()
            .0,
        A1_IF
    );
    assert!(matches!(
        h.remove_port(99, t),
        Err(WorkerError::NoSuchPort { ifindex: 99, .. })
    ));
    // Bounded wait for the snapshot to show both packets.
    let stats = h.stats();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while stats.load().pipeline.forwarded_pod < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "worker did not forward"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(h.is_running());
    h.stop().unwrap();
    let mut closed: Vec<(u32, Vec<Vec<u8>>)> = closed_rx.try_iter().collect();
    closed.sort_by_key(|(i, _)| *i);
    assert_eq!(closed.len(), 2, "both ports closed at shutdown");
    assert_eq!(closed[1].0, A2_IF);
    assert_eq!(closed[1].1.len(), 2);
}

#[test]
fn a_failing_store_fails_the_spawn() {
    let (_publisher, reader) = publication(tables());
    let ct = Arc::new(Conntrack::new(CtConfig::new(16)));
    let aff = Arc::new(AffinityTable::new(16, None));
    let factory = MemFactory {
        closed: None,
        preload: Vec::new(),
    };
    let err = spawn(
        WorkerConfig::new(1),
        || Err::<MemStore, _>("no memory".to_string()),
        factory,
        reader,
        ct,
        aff,
    )
    .unwrap_err();
    assert!(matches!(err, WorkerError::Store { worker: 1, .. }), "{err}");
}

#[test]
fn monotonic_clock_does_not_go_back() {
    let a = monotonic_ns();
    let b = monotonic_ns();
    assert!(b >= a);
}

/// A worker like [`worker`] whose tables lack node-b's neighbour entry,
/// signalling to `requests`; also returns the publisher.
fn unresolved_worker(
    requests: &Arc<NeighbourRequests>,
    park: ParkConfig,
) -> (Worker<MemFactory>, TablePublisher) {
    let mut t = tables();
    t.neighbours = NeighbourTable::default();
    let (publisher, reader) = publication(t);
    let ct = Arc::new(Conntrack::new(CtConfig {
        capacity: 1024,
        ..CtConfig::default()
    }));
    let aff = Arc::new(AffinityTable::new(64, None));
    let cfg = WorkerConfig {
        neighbour_requests: Some(requests.clone()),
        park,
        ..WorkerConfig::new(0)
    };
    let factory = MemFactory {
        closed: None,
        preload: Vec::new(),
    };
    let mut w = Worker::new(cfg, MemStore::new(FRAMES), factory, reader, ct, aff);
    w.add_port(&(Ingress::Uplink, UPLINK_IF)).unwrap();
    w.add_port(&(Ingress::Pod { ifindex: A1_IF }, A1_IF))
        .unwrap();
    (w, publisher)
}

#[test]
fn unresolved_next_hop_is_signalled_parked_and_sent_once_resolved() {
    let requests = Arc::new(NeighbourRequests::new());
    let (mut w, publisher) = unresolved_worker(&requests, ParkConfig::default());
    let first = udp(A1_POD, A1_HOST, A1, B1, b"first");
    let second = udp(A1_POD, A1_HOST, A1, B1, b"second");
    w.port_mut(A1_IF).unwrap().inject(&first);
    w.port_mut(A1_IF).unwrap().inject(&second);
    assert_eq!(w.poll_once(), 2);

    // Nothing left yet; both counted as neighbour-unresolved drops.
    assert!(sent(&mut w, UPLINK_IF).is_empty());
    assert_eq!(
        w.pipeline_stats()
            .drops
            .get(DropReason::NeighbourUnresolved),
        2
    );
    // One request for node-b's VTEP (the second packet found it queued).
    let mut asked = Vec::new();
    assert_eq!(requests.drain(&mut asked), 1);
    assert_eq!(asked, vec![NODE_B]);
    assert_eq!(w.counters().neighbour_requests, 1);
    assert_eq!(w.counters().neighbour_parked, 2);
    assert_eq!(w.store().free_frames(), FRAMES - 2, "held, not released");

    // Still unresolved: held, not re-sent.
    w.poll_once();
    assert!(sent(&mut w, UPLINK_IF).is_empty());

    // The control loop resolved it: the next generation has the MAC.
    let mut t = tables();
    t.generation = 2;
    publisher.publish(t);
    w.poll_once();
    let out = sent(&mut w, UPLINK_IF);
    assert_eq!(w.counters().neighbour_parked_sent, 2);
    assert_eq!(w.store().free_frames(), FRAMES);

    // Byte for byte what a worker with the neighbour known sends, in order.
    let mut reference = worker(Forwarding::Pipeline);
    reference.port_mut(A1_IF).unwrap().inject(&first);
    reference.port_mut(A1_IF).unwrap().inject(&second);
    reference.poll_once();
    let expected = sent(&mut reference, UPLINK_IF);
    assert_eq!(expected.len(), 2);
    assert_eq!(out, expected);
    assert_eq!(&out[0][..6], &NODE_B_MAC);
}

#[test]
fn parked_frames_expire_and_overflow_is_released() {
    let requests = Arc::new(NeighbourRequests::new());
    let park = ParkConfig {
        capacity: 2,
        per_hop: 2,
        timeout: Duration::from_millis(1),
    };
    let (mut w, _publisher) = unresolved_worker(&requests, park);
    for _ in 0..3 {
        w.port_mut(A1_IF)
            .unwrap()
            .inject(&udp(A1_POD, A1_HOST, A1, B1, b"x"));
    }
    w.poll_once();
    assert_eq!(w.counters().neighbour_parked, 2);
    assert_eq!(w.counters().neighbour_park_full, 1);
    assert_eq!(w.store().free_frames(), FRAMES - 2);
    std::thread::sleep(Duration::from_millis(5));
    w.poll_once();
    assert_eq!(w.counters().neighbour_parked_expired, 2);
    assert!(sent(&mut w, UPLINK_IF).is_empty());
    assert_eq!(w.store().free_frames(), FRAMES);
}

#[test]
fn without_parking_the_frame_is_dropped_and_still_signalled() {
    let requests = Arc::new(NeighbourRequests::new());
    let park = ParkConfig {
        capacity: 0,
        ..ParkConfig::default()
    };
    let (mut w, _publisher) = unresolved_worker(&requests, park);
    w.port_mut(A1_IF)
        .unwrap()
        .inject(&udp(A1_POD, A1_HOST, A1, B1, b"x"));
    w.poll_once();
    assert!(requests.is_pending());
    assert_eq!(w.counters().neighbour_requests, 1);
    assert_eq!(w.counters().neighbour_park_full, 1);
    assert_eq!(w.store().free_frames(), FRAMES);
    w.shutdown();
}

#[test]
fn masqueraded_flow_to_an_unresolved_host_leaves_once_it_resolves() {
    // Pod a1 -> an underlay host node-a has no neighbour entry for (and no
    // default gateway): masqueraded, routed out of the uplink unencapsulated.
    const HOST: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 100);
    const HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x64, 0x01];
    let requests = Arc::new(NeighbourRequests::new());
    let (mut w, publisher) = unresolved_worker(&requests, ParkConfig::default());
    w.port_mut(A1_IF)
        .unwrap()
        .inject(&udp(A1_POD, A1_HOST, A1, HOST, b"syn"));
    w.poll_once();
    assert!(sent(&mut w, UPLINK_IF).is_empty());
    assert_eq!(
        w.pipeline_stats()
            .drops
            .get(DropReason::NeighbourUnresolved),
        1
    );
    let mut asked = Vec::new();
    requests.drain(&mut asked);
    assert_eq!(asked, vec![HOST], "the destination itself is the next hop");

    let mut t = tables();
    t.generation = 2;
    t.neighbours.insert(HOST, MacAddr(HOST_MAC));
    publisher.publish(t);
    w.poll_once();
    let out = sent(&mut w, UPLINK_IF);
    assert_eq!(out.len(), 1);
    let p = SlicedPacket::from_ethernet(&out[0]).unwrap();
    let eth = p.link.as_ref().unwrap().to_header().unwrap();
    let eth = eth.ethernet2().unwrap();
    assert_eq!(eth.destination, HOST_MAC);
    assert_eq!(eth.source, UPLINK_MAC);
    let Some(etherparse::NetSlice::Ipv4(ip)) = &p.net else {
        panic!("not IPv4")
    };
    assert_eq!(ip.header().source_addr(), NODE_A, "masqueraded");
    assert_eq!(ip.header().destination_addr(), HOST);
    assert_eq!(ip.header().ttl(), 63, "decremented once");
    // Header and UDP checksums are still right after the late MAC write.
    let h = etherparse::Ipv4Header::from_slice(ip.header().slice())
        .unwrap()
        .0;
    assert_eq!(h.calc_header_checksum(), h.header_checksum);
    let Some(TransportSlice::Udp(u)) = &p.transport else {
        panic!("not UDP")
    };
    assert_eq!(u.payload(), b"syn");
    let hdr = u.to_header();
    assert_eq!(
        hdr.calc_checksum_ipv4(&h, u.payload()).unwrap(),
        hdr.checksum
    );
    assert_eq!(w.counters().neighbour_parked_sent, 1);
    assert_eq!(w.store().free_frames(), FRAMES);
}

#[test]
fn shutdown_returns_parked_frames_to_the_store() {
    let requests = Arc::new(NeighbourRequests::new());
    let (mut w, _publisher) = unresolved_worker(&requests, ParkConfig::default());
    w.port_mut(A1_IF)
        .unwrap()
        .inject(&udp(A1_POD, A1_HOST, A1, B1, b"x"));
    w.poll_once();
    assert_eq!(w.store().free_frames(), FRAMES - 1);
    w.shutdown();
    assert_eq!(w.store().free_frames(), FRAMES);
}

/// Two workers on one set of tables, joined by a hand-off mesh of
/// `slots` per lane:
///
/// ```text
///   worker 0: uplink (ifindex 2), a2's veth      worker 1: a1's veth
///              \________________ lanes 0 <-> 1 ________________/
/// ```
///
/// Each worker is told who serves what it does not (as `kxdp run` does).
fn two_workers(
    forwarding: Forwarding,
    slots: usize,
    t: TableSet,
) -> (Worker<MemFactory>, Worker<MemFactory>, TablePublisher) {
    let (publisher, reader) = publication(t);
    let ct = Arc::new(Conntrack::new(CtConfig {
        capacity: 1024,
        ..CtConfig::default()
    }));
    let aff = Arc::new(AffinityTable::new(64, None));
    let mesh = Arc::new(HandoffMesh::new(2, slots));
    let mk = |id| {
        let cfg = WorkerConfig {
            forwarding,
            handoff: Some(mesh.clone()),
            ..WorkerConfig::new(id)
        };
        let factory = MemFactory {
            closed: None,
            preload: Vec::new(),
        };
        Worker::new(
            cfg,
            MemStore::new(FRAMES),
            factory,
            reader.clone(),
            ct.clone(),
            aff.clone(),
        )
    };
    let (mut w0, mut w1) = (mk(0), mk(1));
    w0.add_port(&(Ingress::Uplink, UPLINK_IF)).unwrap();
    w0.add_port(&(Ingress::Pod { ifindex: A2_IF }, A2_IF))
        .unwrap();
    w1.add_port(&(Ingress::Pod { ifindex: A1_IF }, A1_IF))
        .unwrap();
    for w in [&mut w0, &mut w1] {
        w.set_owner(UPLINK_IF, true, Some(0));
        w.set_owner(A2_IF, false, Some(0));
        w.set_owner(A1_IF, false, Some(1));
    }
    (w0, w1, publisher)
}

#[test]
fn a_frame_for_another_workers_veth_is_handed_over_byte_for_byte() {
    let (mut w0, mut w1, _p) = two_workers(Forwarding::Pipeline, 8, tables());
    // a1 (worker 1) -> a2 (worker 0).
    let pkt = udp(A1_POD, A1_HOST, A1, A2, b"across workers");
    w1.port_mut(A1_IF).unwrap().inject(&pkt);
    assert_eq!(w1.poll_once(), 1);
    assert_eq!(w1.counters().handoff_sent, 1);
    assert_eq!(w1.pipeline_stats().forwarded_pod, 1);
    // Worker 1's frame went back to its own store right away.
    assert_eq!(w1.store().free_frames(), FRAMES);
    assert!(sent(&mut w0, A2_IF).is_empty(), "not before worker 0 runs");

    assert_eq!(w0.poll_once(), 1, "the hand-off counts as received");
    assert_eq!(w0.counters().handoff_received, 1);
    let out = sent(&mut w0, A2_IF);
    // The same bytes a single worker with both veths sends.
    let mut single = worker(Forwarding::Pipeline);
    single.port_mut(A1_IF).unwrap().inject(&pkt);
    single.poll_once();
    assert_eq!(out, sent(&mut single, A2_IF));
    assert_eq!(w0.store().free_frames(), FRAMES);

    // And back: a2 (worker 0) -> a1 (worker 1).
    let back = udp(A2_POD, A2_HOST, A2, A1, b"and back");
    w0.port_mut(A2_IF).unwrap().inject(&back);
    w0.poll_once();
    w1.poll_once();
    assert_eq!(w0.counters().handoff_sent, 1);
    assert_eq!(w1.counters().handoff_received, 1);
    let out = sent(&mut w1, A1_IF);
    assert_eq!(out.len(), 1);
    assert_eq!(&out[0][..6], &A1_POD);
    assert_eq!(
        w0.counters().no_egress_port + w1.counters().no_egress_port,
        0
    );
}

#[test]
fn a_worker_without_an_uplink_port_hands_vxlan_frames_to_the_uplinks_worker() {
    let (mut w0, mut w1, _p) = two_workers(Forwarding::Pipeline, 8, tables());
    let pkt = udp(A1_POD, A1_HOST, A1, B1, b"to b1");
    w1.port_mut(A1_IF).unwrap().inject(&pkt);
    w1.poll_once();
    assert_eq!(w1.pipeline_stats().forwarded_vxlan, 1);
    assert_eq!(w1.counters().handoff_sent, 1);
    w0.poll_once();
    let out = sent(&mut w0, UPLINK_IF);
    let mut single = worker(Forwarding::Pipeline);
    single.port_mut(A1_IF).unwrap().inject(&pkt);
    single.poll_once();
    assert_eq!(out, sent(&mut single, UPLINK_IF));
    assert_eq!(out[0].len(), pkt.len() + 50);
}

#[test]
fn a_full_lane_drops_with_a_count_and_the_rest_arrives() {
    // 2 slots per lane, 5 frames in one batch: 2 cross, 3 are counted.
    let (mut w0, mut w1, _p) = two_workers(Forwarding::Pipeline, 2, tables());
    for i in 0..5u8 {
        let pkt = udp(A1_POD, A1_HOST, A1, A2, &[i; 8]);
        w1.port_mut(A1_IF).unwrap().inject(&pkt);
    }
    assert_eq!(w1.poll_once(), 5);
    assert_eq!(w1.counters().handoff_sent, 2);
    assert_eq!(w1.counters().handoff_full, 3);
    assert_eq!(w1.store().free_frames(), FRAMES, "dropped frames released");
    w0.poll_once();
    let out = sent(&mut w0, A2_IF);
    assert_eq!(out.len(), 2);
    // The first two, in order (the UDP payload ends the frame).
    assert_eq!(out[0].last(), Some(&0));
    assert_eq!(out[1].last(), Some(&1));
    // Room again after the receiver caught up.
    let pkt = udp(A1_POD, A1_HOST, A1, A2, &[9; 8]);
    w1.port_mut(A1_IF).unwrap().inject(&pkt);
    w1.poll_once();
    assert_eq!(w1.counters().handoff_sent, 3);
}

#[test]
fn a_vanished_egress_and_an_empty_store_drop_handed_over_frames_with_a_count() {
    let (mut w0, mut w1, _p) = two_workers(Forwarding::Pipeline, 8, tables());
    let pkt = udp(A1_POD, A1_HOST, A1, A2, b"x");
    w1.port_mut(A1_IF).unwrap().inject(&pkt);
    w1.poll_once();
    // a2's veth goes away on worker 0 while the frame is in the lane.
    w0.remove_port(A2_IF).unwrap();
    w0.poll_once();
    assert_eq!(w0.counters().handoff_received, 1);
    assert_eq!(w0.counters().handoff_no_port, 1);
    assert_eq!(w0.store().free_frames(), FRAMES);
    // Once told, worker 1 no longer hands frames for it over.
    w1.set_owner(A2_IF, false, None);
    w1.port_mut(A1_IF).unwrap().inject(&pkt);
    w1.poll_once();
    assert_eq!(w1.counters().handoff_sent, 1);
    assert_eq!(w1.counters().no_egress_port, 1);

    // Worker 0's store exhausted: the copy has nowhere to go.
    let (mut w0, mut w1, _p) = two_workers(Forwarding::Pipeline, 8, tables());
    let held: Vec<_> = std::iter::from_fn(|| w0.store.alloc()).collect();
    assert_eq!(held.len(), FRAMES);
    w1.port_mut(A1_IF).unwrap().inject(&pkt);
    w1.poll_once();
    w0.poll_once();
    assert_eq!(w0.counters().handoff_no_frame, 1);
    assert!(sent(&mut w0, A2_IF).is_empty());
}

#[test]
fn null_forwarding_hands_over_to_the_peers_worker() {
    let (mut w0, mut w1, _p) = two_workers(Forwarding::Null, 8, tables());
    w1.set_null_peer(A1_IF, Some(A2_IF));
    let pkt = b"\x02\x00\x00\x00\x00\x01raw bytes, not parsed".to_vec();
    w1.port_mut(A1_IF).unwrap().inject(&pkt);
    w1.poll_once();
    assert_eq!(w1.counters().null_forwarded, 1);
    assert_eq!(w1.counters().handoff_sent, 1);
    w0.poll_once();
    assert_eq!(sent(&mut w0, A2_IF), vec![pkt]);
}

#[test]
fn parked_frames_of_a_worker_without_the_uplink_leave_through_its_owner() {
    let requests = Arc::new(NeighbourRequests::new());
    let mut t = tables();
    t.neighbours = NeighbourTable::default();
    let (mut w0, mut w1, publisher) = two_workers(Forwarding::Pipeline, 8, t);
    w1.cfg.neighbour_requests = Some(requests.clone());
    let pkt = udp(A1_POD, A1_HOST, A1, B1, b"parked");
    w1.port_mut(A1_IF).unwrap().inject(&pkt);
    w1.poll_once();
    assert_eq!(w1.counters().neighbour_parked, 1);
    let mut asked = Vec::new();
    requests.drain(&mut asked);
    assert_eq!(asked, vec![NODE_B]);
    let mut t = tables();
    t.generation = 2;
    publisher.publish(t);
    w1.poll_once();
    assert_eq!(w1.counters().neighbour_parked_sent, 1);
    assert_eq!(w1.counters().handoff_sent, 1);
    w0.poll_once();
    let out = sent(&mut w0, UPLINK_IF);
    assert_eq!(out.len(), 1);
    assert_eq!(&out[0][..6], &NODE_B_MAC);
    assert_eq!(w1.store().free_frames(), FRAMES);
}

#[test]
fn a_worker_with_its_own_uplink_queue_sends_there_not_through_a_lane() {
    // Multi-queue uplink: queue 0 on worker 0, queue 1 on worker 1. Worker
    // 1 sends VXLAN on its own queue's port.
    let (mut w0, mut w1, _p) = two_workers(Forwarding::Pipeline, 8, tables());
    w1.add_port(&(Ingress::Uplink, UPLINK_IF)).unwrap();
    let pkt = udp(A1_POD, A1_HOST, A1, B1, b"own queue");
    w1.port_mut(A1_IF).unwrap().inject(&pkt);
    w1.poll_once();
    assert_eq!(w1.counters().handoff_sent, 0);
    assert_eq!(sent(&mut w1, UPLINK_IF).len(), 1);
    w0.poll_once();
    assert!(sent(&mut w0, UPLINK_IF).is_empty());
}
