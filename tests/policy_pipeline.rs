//! NetworkPolicy through the real pipeline, with tables compiled from
//! manifests: allow, deny in each direction, the reply of an allowed
//! connection, and revocation of an established flow.
//!
//! ```text
//!   node-a: backend 10.244.1.4  frontend 10.244.1.6  tools 10.244.1.7  db 10.244.1.5:5432
//!   node-b: remote-backend 10.244.2.4 (reaches node-a over VXLAN)
//!   db-allow-backend: db admits TCP 5432 from role=backend only
//!   tools-dns-only:   tools may send UDP 53 only
//! ```

use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;

use etherparse::PacketBuilder;
use kxdp_control::compile::{compile, CompileOptions, NodeEnvironment};
use kxdp_control::manifests::load_path;
use kxdp_control::ClusterState;
use kxdp_dataplane::conntrack::{AffinityTable, Conntrack, CtConfig};
use kxdp_dataplane::pipeline::{
    flush_revoked, Egress, Frame, Ingress, Pipeline, StageRecord, TraceLog, Verdict,
};
use kxdp_dataplane::tables::TableSet;
use kxdp_dataplane::DropReason;

const DB: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 5);
const DB_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 30);
const BACKEND: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 4);
const FRONTEND: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 6);
const TOOLS: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 7);
const REMOTE_BACKEND: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 4);
const SEC: u64 = 1_000_000_000;

fn state() -> ClusterState {
    let report =
        load_path(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/policy.yaml"))
            .expect("fixture loads");
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    report.state
}

fn tables(state: &ClusterState, generation: u64) -> TableSet {
    let env = NodeEnvironment::synthetic(state, "node-a");
    compile(state, &env, &CompileOptions::new("node-a"), generation)
        .expect("compiles")
        .tables
}

struct Node {
    tables: TableSet,
    pipeline: Pipeline,
}

impl Node {
    fn new(state: &ClusterState) -> Self {
        let ct = Arc::new(Conntrack::new(CtConfig::new(4096)));
        Node {
            tables: tables(state, 1),
            pipeline: Pipeline::new(ct, Arc::new(AffinityTable::new(64, None))),
        }
    }

    /// Send a TCP segment from local pod `src` (its own veth).
    fn send_from_pod(
        &mut self,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        sport: u16,
        dport: u16,
        flags: &str,
        now: u64,
    ) -> (Verdict, Vec<u8>, Vec<StageRecord>) {
        let pod = self.tables.pods.by_ip(src).expect("local pod");
        let iface = pod.interface.clone().expect("synthetic interface");
        let frame = tcp(
            iface.pod_mac.0,
            iface.host_mac.0,
            src,
            dst,
            sport,
            dport,
            flags,
        );
        self.run(
            &frame,
            Ingress::Pod {
                ifindex: iface.ifindex,
            },
            now,
        )
    }

    fn run(
        &mut self,
        input: &[u8],
        ingress: Ingress,
        now: u64,
    ) -> (Verdict, Vec<u8>, Vec<StageRecord>) {
        let mut buf = vec![0u8; Frame::MIN_CAPACITY];
        buf[Frame::HEADROOM..Frame::HEADROOM + input.len()].copy_from_slice(input);
        let mut frame = Frame::new(&mut buf, Frame::HEADROOM, input.len()).unwrap();
        let mut log = TraceLog::default();
        let v = self
            .pipeline
            .process(&self.tables, now, &mut frame, ingress, &mut log);
        (v, frame.data().to_vec(), log.records)
    }
}

fn tcp(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    flags: &str,
) -> Vec<u8> {
    let mut b = PacketBuilder::ethernet2(src_mac, dst_mac)
        .ipv4(src.octets(), dst.octets(), 64)
        .tcp(sport, dport, 100, 64240);
    if flags.contains('S') {
        b = b.syn();
    }
    if flags.contains('A') {
        b = b.ack(1);
    }
    let mut v = Vec::new();
    b.write(&mut v, &[]).unwrap();
    v
}

fn decision<'a>(records: &'a [StageRecord], stage: &str) -> &'a str {
    records
        .iter()
        .find(|r| r.stage == stage)
        .map(|r| r.decision.as_str())
        .unwrap_or("")
}

fn db_ifindex(n: &Node) -> u32 {
    n.tables
        .pods
        .by_ip(DB)
        .unwrap()
        .interface
        .as_ref()
        .unwrap()
        .ifindex
}

#[test]
fn backend_reaches_db_through_its_service_and_the_trace_names_the_rule() {
    let s = state();
    let mut n = Node::new(&s);
    let (v, out, tr) = n.send_from_pod(BACKEND, DB_VIP, 40000, 5432, "S", SEC);
    assert_eq!(
        v,
        Verdict::Forward(Egress::Pod {
            ifindex: db_ifindex(&n)
        }),
        "{tr:#?}"
    );
    assert!(
        decision(&tr, "policy-ingress").contains("default/db-allow-backend ingress rule 0"),
        "{tr:#?}"
    );
    // Golden: the segment db receives, built independently.
    let db = n.tables.pods.by_ip(DB).unwrap().interface.clone().unwrap();
    let mut want = tcp(db.host_mac.0, db.pod_mac.0, BACKEND, DB, 40000, 5432, "S");
    want[22] = 63; // TTL decremented
    want[24] = 0;
    want[25] = 0;
    let c = !ones_sum(&want[14..34]);
    want[24..26].copy_from_slice(&c.to_be_bytes());
    assert_eq!(out, want);
}

fn ones_sum(b: &[u8]) -> u16 {
    let mut s: u32 = b
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

#[test]
fn frontend_is_denied_by_dbs_ingress_policy() {
    let s = state();
    let mut n = Node::new(&s);
    let (v, _, tr) = n.send_from_pod(FRONTEND, DB, 40000, 5432, "S", SEC);
    assert_eq!(v, Verdict::Drop(DropReason::PolicyDeniedIngress), "{tr:#?}");
    assert_eq!(
        n.pipeline.stats.drops.get(DropReason::PolicyDeniedIngress),
        1
    );
    assert_eq!(
        n.pipeline.conntrack().len(),
        0,
        "a denied flow leaves no entry"
    );
}

#[test]
fn tools_is_denied_by_its_own_egress_policy() {
    let s = state();
    let mut n = Node::new(&s);
    let (v, _, tr) = n.send_from_pod(TOOLS, DB, 40000, 5432, "S", SEC);
    assert_eq!(v, Verdict::Drop(DropReason::PolicyDeniedEgress), "{tr:#?}");
    // Its allowed egress (UDP 53) still works toward a non-isolated pod.
    let (v, _, tr) = n.send_from_pod(TOOLS, BACKEND, 40001, 80, "S", SEC);
    assert_eq!(
        v,
        Verdict::Drop(DropReason::PolicyDeniedEgress),
        "TCP 80 is not UDP 53: {tr:#?}"
    );
}

#[test]
fn replies_of_an_allowed_connection_pass_without_a_policy_check() {
    let s = state();
    let mut n = Node::new(&s);
    n.send_from_pod(BACKEND, DB, 40000, 5432, "S", SEC);
    let (v, _, tr) = n.send_from_pod(DB, BACKEND, 5432, 40000, "SA", 2 * SEC);
    assert!(
        matches!(v, Verdict::Forward(Egress::Pod { .. })),
        "{v:?} {tr:#?}"
    );
    assert!(
        tr.iter().all(|r| !r.stage.starts_with("policy")),
        "established: no policy stage {tr:#?}"
    );
}

#[test]
fn a_remote_backend_over_vxlan_is_admitted_by_pod_selector() {
    let s = state();
    let mut n = Node::new(&s);
    let inner = tcp(
        [0x0e, 0, 0, 0, 2, 1],
        n.tables.node.vtep_mac.0,
        REMOTE_BACKEND,
        DB,
        40000,
        5432,
        "S",
    );
    let mut vx = vec![0x08, 0, 0, 0, 0, 0, 1, 0];
    vx.extend_from_slice(&inner);
    let mut outer = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 2, 2], n.tables.node.uplink_mac.0)
        .ipv4([192, 168, 50, 2], [192, 168, 50, 1], 64)
        .udp(50000, 8472)
        .write(&mut outer, &vx)
        .unwrap();
    let (v, _, tr) = n.run(&outer, Ingress::Uplink, SEC);
    assert_eq!(
        v,
        Verdict::Forward(Egress::Pod {
            ifindex: db_ifindex(&n)
        }),
        "{tr:#?}"
    );
}

#[test]
fn revoking_access_ends_the_established_connection() {
    let mut s = state();
    let mut n = Node::new(&s);
    let (v, _, _) = n.send_from_pod(BACKEND, DB, 40000, 5432, "S", SEC);
    assert!(matches!(v, Verdict::Forward(_)));
    n.send_from_pod(DB, BACKEND, 5432, 40000, "SA", 2 * SEC);
    assert_eq!(n.pipeline.conntrack().len(), 1);

    // The policy now admits role=admin only.
    let key = ("default".to_string(), "db-allow-backend".to_string());
    let policy = s.network_policies.get_mut(&key).unwrap();
    let rule = &mut policy.spec.as_mut().unwrap().ingress.as_mut().unwrap()[0];
    let peer = &mut rule.from.as_mut().unwrap()[0];
    peer.pod_selector.as_mut().unwrap().match_labels =
        Some([("role".to_string(), "admin".to_string())].into());
    n.tables = tables(&s, 2);
    let removed = flush_revoked(n.pipeline.conntrack(), &n.tables);
    assert_eq!(removed, 1, "the backend->db connection is revoked");

    // The next segment of that connection is a new flow, and denied.
    let (v, _, tr) = n.send_from_pod(BACKEND, DB, 40000, 5432, "A", 3 * SEC);
    assert_eq!(v, Verdict::Drop(DropReason::PolicyDeniedIngress), "{tr:#?}");
}

#[test]
fn unrelated_connections_survive_a_policy_change() {
    let mut s = state();
    let mut n = Node::new(&s);
    n.send_from_pod(FRONTEND, BACKEND, 40000, 80, "S", SEC);
    s.network_policies
        .remove(&("default".to_string(), "tools-dns-only".to_string()));
    n.tables = tables(&s, 2);
    assert_eq!(flush_revoked(n.pipeline.conntrack(), &n.tables), 0);
    assert_eq!(n.pipeline.conntrack().len(), 1);
}
