//! End-to-end: `kxdp run --workers 2` on node-a of the standard topology.
//! Each worker owns one UMEM and the sockets of the interfaces placed on
//! it; frames whose egress belongs to the other worker cross through the
//! hand-off lanes.
//!
//! ```text
//!   pod a1 (10.244.1.2)      pod a2 (10.244.1.3)            pod b1 (10.244.2.2)
//!       | veth: worker 1          | veth: worker 0               | veth
//!   node-a: kxdp run --workers 2                       node-b: Linux, flannel.1
//!       | eth0 192.168.50.1 (one queue: worker 0)            | eth0 192.168.50.2
//!   ---------------------------- underlay bridge br0 ----------------------------
//! ```
//!
//! Placement (least loaded, `worker::placement`): the uplink's only queue
//! goes to worker 0, the first pod veth to worker 1, the second to worker
//! 0 — the test reads the actual placement from `/debug/stats` and asserts
//! the two pods' veths are on different workers. Then:
//! - TCP (256 KiB echoed) and UDP between a1 and a2, both directions
//!   (every frame crosses workers);
//! - a1 -> ClusterIP -> b1 through VXLAN, TCP and UDP: a1's worker has no
//!   uplink socket, so every encapsulated frame is handed to worker 0, and
//!   node-b's replies arrive on worker 0 and are handed back to worker 1;
//! - the hand-off counters moved on the right workers (`/debug/stats` and
//!   `/metrics`), nothing was dropped for want of a lane slot or a port;
//! - SIGTERM stops both workers cleanly and detaches every program.
//!
//! A second test gives node-a a two-queue uplink (a veth created with
//! `numrxqueues 2 numtxqueues 2`): queue 0 on worker 0, queue 1 on worker
//! 1, so each worker transmits VXLAN on its own queue's socket instead of
//! handing it over.
//!
//! Two more run `--workers 2` on the standard topology: a pod on the
//! worker without the uplink connects to an external host node-a has no
//! neighbour entry for (the SYN is parked on that worker, then handed to
//! the uplink's worker once kxdp resolved the host on demand); and pods
//! leave and arrive while kxdp runs (the new pod's veth is placed on the
//! worker the old one freed, traffic crosses workers at once).
//!
//! Last, `--null-pipeline` with two workers: a1's and a2's veths on
//! different workers, frames forwarded unchanged between them through the
//! hand-off lanes (pods given static neighbours, nothing answers ARP).
//!
//! Run as root (prints SKIP otherwise). Every wait is bounded.

mod common;

use std::net::{Ipv4Addr, UdpSocket};
use std::time::{Duration, Instant};

use common::kxdp::{
    admin_get, cluster_ip_service, cluster_ip_service_proto, manifests, metric, replace_file,
    tcp_echo_client, tcp_echo_server, KxdpCluster, KxdpProcess, TempDir,
};
use common::topology::{
    checksum_offload_off, skip_if_unsupported, udp_echo, Netns, Topology, TopologyOptions,
    EXTERNAL_IP,
};
use serde_json::Value;

const VIP_REMOTE: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 12);
const VIP_REMOTE_UDP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 13);
const ADMIN: &str = "127.0.0.1:10256";
const IO_TIMEOUT: Duration = Duration::from_secs(10);
const TRANSFER: usize = 256 * 1024;
/// Datagrams echoed through the ClusterIP.
const DATAGRAMS: usize = 50;

fn services() -> Vec<String> {
    vec![
        cluster_ip_service("svc-remote", VIP_REMOTE, 80, "b1"),
        cluster_ip_service_proto("svc-remote-udp", VIP_REMOTE_UDP, 5000, "b1", "UDP"),
    ]
}

fn stats(c: &mut KxdpCluster) -> Value {
    let ns = &c.node_a().ns;
    let r = admin_get(ns, ADMIN.parse().expect("address"), "/debug/stats")
        .and_then(|b| serde_json::from_str::<Value>(&b).map_err(|e| e.to_string()));
    c.check("GET /debug/stats", r)
}

fn workers(v: &Value) -> Vec<Value> {
    v.get("workers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

fn loop_counter(w: &Value, name: &str) -> u64 {
    w.get("loop")
        .and_then(|l| l.get(name))
        .and_then(Value::as_u64)
        .unwrap_or(0)
}

/// The worker whose ports include `ifindex`.
fn worker_of(v: &Value, ifindex: u32) -> Option<u64> {
    workers(v).iter().find_map(|w| {
        let ports = w.get("ports")?.as_array()?;
        ports
            .iter()
            .any(|p| p.get("ifindex").and_then(Value::as_u64) == Some(u64::from(ifindex)))
            .then(|| w.get("worker").and_then(Value::as_u64))
            .flatten()
    })
}

fn tcp(c: &mut KxdpCluster, from: &str, server: &str, dst: Ipv4Addr, dport: u16, sport: u16) {
    let what = format!("TCP {from} -> {dst}:{dport} (served by {server}:{sport})");
    let srv = tcp_echo_server(&c.pod(server).ns, sport, IO_TIMEOUT);
    let srv = c.check(&what, srv);
    let client = tcp_echo_client(&c.pod(from).ns, dst, dport, TRANSFER, IO_TIMEOUT);
    let served = srv
        .join()
        .map_err(|_| "server panicked".to_string())
        .and_then(|r| r);
    c.check(&what, client);
    let n = c.check(&what, served);
    assert_eq!(n, TRANSFER, "{what}: server echoed {n} bytes");
}

/// `DATAGRAMS` datagrams from `client` to `dst:dport`, echoed by a kernel
/// socket in `server` on `sport`; returns the payload bytes that came back
/// intact. Bounded: about 1 s per datagram at worst.
fn udp_echo_many(
    client: &Netns,
    server: &Netns,
    dst: Ipv4Addr,
    dport: u16,
    sport: u16,
) -> Result<usize, String> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let srv = server.spawn(move || {
        let sock = UdpSocket::bind(("0.0.0.0", sport)).map_err(|e| format!("bind: {e}"))?;
        sock.set_read_timeout(Some(Duration::from_secs(3)))
            .map_err(|e| e.to_string())?;
        let _ = ready_tx.send(());
        let mut buf = [0u8; 2048];
        let mut echoed = 0usize;
        // Until the client stops sending (a read times out).
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            sock.send_to(buf.get(..n).unwrap_or(&[]), from)
                .map_err(|e| format!("server send: {e}"))?;
            echoed += 1;
        }
        Ok(echoed)
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .map_err(|_| "UDP server did not start".to_string())?;
    let got = client.run_in(move || {
        let sock = UdpSocket::bind(("0.0.0.0", 0)).map_err(|e| e.to_string())?;
        sock.set_read_timeout(Some(Duration::from_secs(1)))
            .map_err(|e| e.to_string())?;
        let mut delivered = 0usize;
        let mut buf = [0u8; 2048];
        for i in 0..DATAGRAMS {
            let msg = format!("kxdp-workers-{i:04}-{}", "x".repeat(1000));
            sock.send_to(msg.as_bytes(), (dst, dport))
                .map_err(|e| format!("send to {dst}:{dport}: {e}"))?;
            if let Ok((n, _)) = sock.recv_from(&mut buf) {
                if buf.get(..n) == Some(msg.as_bytes()) {
                    delivered += n;
                }
            }
        }
        Ok(delivered)
    })?;
    let _ = srv.join();
    Ok(got)
}

#[test]
fn e2e_two_workers_hand_frames_over() {
    const TEST: &str = "e2e_two_workers_hand_frames_over";
    if skip_if_unsupported(TEST) {
        return;
    }
    let mut c = match KxdpCluster::start(TEST, &services(), &["--workers", "2"]) {
        Ok(c) => c,
        Err(e) => panic!("{TEST}: setting up: {e}"),
    };
    let (a1, a2, b1) = (c.pod("a1").ip, c.pod("a2").ip, c.pod("b1").ip);
    let (a1_if, a2_if) = (c.pod("a1").host_ifindex, c.pod("a2").host_ifindex);
    let uplink_if = c.node_a().ns.ifindex("eth0");
    let uplink_if = c.check("uplink ifindex", uplink_if);

    // Placement: two workers, the pods' veths on different ones.
    let s = stats(&mut c);
    assert_eq!(workers(&s).len(), 2, "{s:#}");
    let (w_a1, w_a2) = (worker_of(&s, a1_if), worker_of(&s, a2_if));
    let w_up = worker_of(&s, uplink_if);
    assert!(w_a1.is_some() && w_a2.is_some() && w_up.is_some(), "{s:#}");
    assert_ne!(w_a1, w_a2, "pod veths on one worker:\n{s:#}");
    // With a single-queue uplink, a1's or a2's worker lacks an uplink
    // socket; the one without it is `far`.
    let far = if w_a1 == w_up { a2 } else { a1 };
    let (far_pod, far_worker) = if far == a1 {
        ("a1", w_a1)
    } else {
        ("a2", w_a2)
    };

    // Pod to pod, both directions, TCP and UDP: every frame crosses.
    tcp(&mut c, "a1", "a2", a2, 8080, 8080);
    tcp(&mut c, "a2", "a1", a1, 9090, 9090);
    let r = udp_echo(&c.pod("a1").ns, &c.pod("a2").ns, a2, 7001);
    c.check("UDP a1 -> a2", r);
    let r = udp_echo(&c.pod("a2").ns, &c.pod("a1").ns, a1, 7002);
    c.check("UDP a2 -> a1", r);

    // The pod without the uplink's worker -> ClusterIP -> b1 over VXLAN.
    tcp(&mut c, far_pod, "b1", VIP_REMOTE, 80, 8080);
    let r = udp_echo_many(
        &c.pod(far_pod).ns,
        &c.pod("b1").ns,
        VIP_REMOTE_UDP,
        5000,
        8080,
    );
    let udp_bytes = c.check("UDP via ClusterIP to b1", r);
    // UDP is allowed to lose a datagram on a busy machine; most must come
    // back, each byte for byte.
    assert!(
        udp_bytes >= DATAGRAMS * 1000 * 9 / 10,
        "{udp_bytes} bytes of UDP echoed through the ClusterIP"
    );
    let _ = b1;

    // Counters: stats are published every 100 ms.
    let min_frames = (2 * TRANSFER / 1500) as u64;
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut s = stats(&mut c);
    loop {
        let ws = workers(&s);
        let sent: u64 = ws.iter().map(|w| loop_counter(w, "handoff_sent")).sum();
        let received: u64 = ws.iter().map(|w| loop_counter(w, "handoff_received")).sum();
        if (sent >= 2 * min_frames && received == sent) || Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        s = stats(&mut c);
    }
    let ws = workers(&s);
    for w in &ws {
        let id = w.get("worker").and_then(Value::as_u64);
        // Both directions crossed: each worker sent and received.
        assert!(
            loop_counter(w, "handoff_sent") >= min_frames
                && loop_counter(w, "handoff_received") >= min_frames,
            "worker {id:?} hand-offs:\n{s:#}"
        );
        for bad in ["handoff_no_port", "no_egress_port", "frame_errors"] {
            assert_eq!(loop_counter(w, bad), 0, "worker {id:?} {bad}:\n{s:#}");
        }
    }
    let sent: u64 = ws.iter().map(|w| loop_counter(w, "handoff_sent")).sum();
    let received: u64 = ws.iter().map(|w| loop_counter(w, "handoff_received")).sum();
    let full: u64 = ws.iter().map(|w| loop_counter(w, "handoff_full")).sum();
    let no_frame: u64 = ws.iter().map(|w| loop_counter(w, "handoff_no_frame")).sum();
    // Every frame handed over arrived, or was counted as a drop.
    assert_eq!(sent, received, "{s:#}");
    assert_eq!(no_frame, 0, "{s:#}");
    // The VXLAN traffic: the far pod's worker encapsulated (vxlan
    // forwards) without an uplink socket, so it handed those frames over.
    let far_w = ws
        .iter()
        .find(|w| w.get("worker").and_then(Value::as_u64) == far_worker)
        .expect("far worker");
    let vxlan = far_w
        .get("forwarded")
        .and_then(|f| f.get("vxlan"))
        .and_then(Value::as_u64)
        .unwrap_or(0);
    assert!(
        vxlan >= (TRANSFER / 1500) as u64,
        "worker {far_worker:?} encapsulated only {vxlan}:\n{s:#}"
    );

    // The same counters in /metrics, per worker.
    let m = {
        let ns = &c.node_a().ns;
        let r = admin_get(ns, ADMIN.parse().expect("address"), "/metrics");
        c.check("GET /metrics", r)
    };
    for w in 0..2 {
        for counter in ["handoff_sent", "handoff_received"] {
            let series = format!(r#"kxdp_worker_events_total{{worker="{w}",counter="{counter}"}}"#);
            let v = metric(&m, &series).unwrap_or(0.0);
            assert!(v >= min_frames as f64, "{series} = {v}\n{m}");
        }
        let series = format!(r#"kxdp_worker_rx_packets_total{{worker="{w}"}}"#);
        assert!(metric(&m, &series).unwrap_or(0.0) > 0.0, "{series}\n{m}");
    }
    eprintln!("hand-offs: {sent} sent, {received} received, {full} refused (lane full)");

    // Clean stop: both workers close their sockets, programs detached.
    assert_eq!(
        c.kxdp.stop(),
        Some(0),
        "clean exit on SIGTERM:\n{}",
        c.kxdp.log_text()
    );
    let links = c
        .node_a()
        .ns
        .ip(&["-d", "link", "show"])
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    let links = c.check("ip link", links);
    assert!(
        !links.contains("prog/xdp"),
        "XDP left attached after a clean stop:\n{links}"
    );
    let log = c.kxdp.log_text();
    assert_eq!(
        log.matches("final worker stats").count(),
        2,
        "both workers reported:\n{log}"
    );
}

/// The port of worker `w` on `ifindex` in a `/debug/stats` sample.
fn port_counter(v: &Value, w: u64, ifindex: u32, name: &str) -> u64 {
    workers(v)
        .iter()
        .filter(|x| x.get("worker").and_then(Value::as_u64) == Some(w))
        .filter_map(|x| x.get("ports")?.as_array().cloned())
        .flatten()
        .filter(|p| p.get("ifindex").and_then(Value::as_u64) == Some(u64::from(ifindex)))
        .filter_map(|p| p.get(name).and_then(Value::as_u64))
        .sum()
}

/// Replaces node-a's `eth0` by a veth pair with two queues on each side,
/// same MAC and address (node-b's Flannel FDB names that MAC), on br0.
fn two_queue_uplink(topo: &Topology) -> Result<(), String> {
    let node = topo.node("node-a").ok_or("no node-a")?;
    let (mac, ip) = (node.mac.clone(), node.ip);
    node.ns.ip(&["link", "del", "eth0"])?;
    node.ns.ip(&[
        "link",
        "add",
        "eth0",
        "numtxqueues",
        "2",
        "numrxqueues",
        "2",
        "address",
        &mac,
        "type",
        "veth",
        "peer",
        "name",
        "pa",
        "numtxqueues",
        "2",
        "numrxqueues",
        "2",
        "netns",
        topo.underlay.name(),
    ])?;
    topo.underlay.ip(&["link", "set", "pa", "master", "br0"])?;
    topo.underlay.ip(&["link", "set", "pa", "up"])?;
    node.ns
        .ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
    node.ns.ip(&["link", "set", "eth0", "up"])?;
    checksum_offload_off(&node.ns, "eth0")
}

#[test]
fn e2e_two_workers_each_transmit_on_their_own_uplink_queue() {
    const TEST: &str = "e2e_two_workers_each_transmit_on_their_own_uplink_queue";
    if skip_if_unsupported(TEST) {
        return;
    }
    let setup = (|| -> Result<KxdpCluster, String> {
        let topo = Topology::standard(TopologyOptions::default())?;
        two_queue_uplink(&topo)?;
        KxdpCluster::start_on(topo, TEST, &services(), &["--workers", "2"])
    })();
    let mut c = match setup {
        Ok(c) => c,
        Err(e) => panic!("{TEST}: setting up: {e}"),
    };
    let uplink_if = c.node_a().ns.ifindex("eth0");
    let uplink_if = c.check("uplink ifindex", uplink_if);
    let (a1_if, a2_if) = (c.pod("a1").host_ifindex, c.pod("a2").host_ifindex);
    let s = stats(&mut c);
    // Both workers have an uplink socket (one queue each); the pods' veths
    // are spread over them.
    for w in 0..2u64 {
        let has_uplink = workers(&s).iter().any(|x| {
            x.get("worker").and_then(Value::as_u64) == Some(w)
                && x.get("ports").and_then(Value::as_array).is_some_and(|ps| {
                    ps.iter().any(|p| {
                        p.get("ifindex").and_then(Value::as_u64) == Some(u64::from(uplink_if))
                    })
                })
        });
        assert!(has_uplink, "worker {w} has no uplink queue:\n{s:#}");
    }
    let (w_a1, w_a2) = (worker_of(&s, a1_if), worker_of(&s, a2_if));
    assert!(w_a1.is_some() && w_a2.is_some() && w_a1 != w_a2, "{s:#}");

    // Each pod -> ClusterIP -> b1 over VXLAN; then pod to pod.
    tcp(&mut c, "a1", "b1", VIP_REMOTE, 80, 8080);
    tcp(&mut c, "a2", "b1", VIP_REMOTE, 80, 8080);
    let a2 = c.pod("a2").ip;
    tcp(&mut c, "a1", "a2", a2, 8082, 8082);

    let min_frames = (TRANSFER / 1500) as u64;
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut s = stats(&mut c);
    // Each worker publishes its own snapshot every 100 ms: wait until the
    // two agree (everything handed over was received) and the sends show.
    let settled = |s: &Value| {
        let ws = workers(s);
        let sent: u64 = ws.iter().map(|w| loop_counter(w, "handoff_sent")).sum();
        let received: u64 = ws.iter().map(|w| loop_counter(w, "handoff_received")).sum();
        sent == received
            && (0..2).all(|w| port_counter(s, w, uplink_if, "tx_packets") >= min_frames)
    };
    while Instant::now() < deadline && !settled(&s) {
        std::thread::sleep(Duration::from_millis(100));
        s = stats(&mut c);
    }
    for w in 0..2u64 {
        // The worker's own uplink socket carried its pod's VXLAN frames.
        let tx = port_counter(&s, w, uplink_if, "tx_packets");
        assert!(
            tx >= min_frames,
            "worker {w} sent {tx} on its uplink queue:\n{s:#}"
        );
    }
    // Encapsulated frames were not handed over: only the replies node-b
    // sends (arriving on whichever queue the kernel picks) and pod to pod
    // traffic cross workers, and the VXLAN sends of each worker's pod
    // stayed on that worker. A handed-over frame is never lost.
    let ws = workers(&s);
    let sent: u64 = ws.iter().map(|w| loop_counter(w, "handoff_sent")).sum();
    let received: u64 = ws.iter().map(|w| loop_counter(w, "handoff_received")).sum();
    assert_eq!(sent, received, "{s:#}");
    for w in &ws {
        for bad in ["handoff_no_port", "no_egress_port", "frame_errors"] {
            assert_eq!(loop_counter(w, bad), 0, "{bad}:\n{s:#}");
        }
    }
    assert_eq!(
        c.kxdp.stop(),
        Some(0),
        "clean exit on SIGTERM:\n{}",
        c.kxdp.log_text()
    );
}

fn worker_json(v: &Value, w: Option<u64>) -> Value {
    workers(v)
        .into_iter()
        .find(|x| x.get("worker").and_then(Value::as_u64) == w)
        .unwrap_or(Value::Null)
}

/// Node-a forgets `ip` and kxdp's tables follow (next rescan and publish);
/// then the minimum sync interval of that publish passes.
fn forget_neighbour(c: &mut KxdpCluster, ip: Ipv4Addr) {
    let ip_s = ip.to_string();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = c
            .node_a()
            .ns
            .ip(&["neigh", "flush", "to", &ip_s, "dev", "eth0"]);
        c.check("ip neigh flush on node-a", r);
        let r = admin_get(
            &c.node_a().ns,
            ADMIN.parse().expect("address"),
            "/debug/tables",
        );
        let tables = c.check("GET /debug/tables", r);
        let v: Value = serde_json::from_str(&tables).unwrap_or(Value::Null);
        let known = v
            .get("neighbours")
            .is_some_and(|n| n.to_string().contains(&ip_s));
        if !known {
            break;
        }
        assert!(Instant::now() < deadline, "kxdp kept the entry of {ip_s}");
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_millis(1200));
}

#[test]
fn e2e_two_workers_park_a_frame_and_hand_it_over_once_resolved() {
    const TEST: &str = "e2e_two_workers_park_a_frame_and_hand_it_over_once_resolved";
    if skip_if_unsupported(TEST) {
        return;
    }
    let mut c = match KxdpCluster::start(TEST, &[], &["--workers", "2"]) {
        Ok(c) => c,
        Err(e) => panic!("{TEST}: setting up: {e}"),
    };
    let uplink_if = c.node_a().ns.ifindex("eth0");
    let uplink_if = c.check("uplink ifindex", uplink_if);
    let s = stats(&mut c);
    let w_up = worker_of(&s, uplink_if);
    // The pod whose veth is not on the uplink's worker.
    let (pod, w_pod) = ["a1", "a2"]
        .iter()
        .map(|p| (*p, worker_of(&s, c.pod(p).host_ifindex)))
        .find(|(_, w)| w.is_some() && *w != w_up)
        .unwrap_or_else(|| panic!("both pods on the uplink's worker:\n{s:#}"));

    forget_neighbour(&mut c, EXTERNAL_IP);
    let before = worker_json(&stats(&mut c), w_pod);
    let what = format!("TCP {pod} -> external:7070 with the external host unresolved");
    let srv = tcp_echo_server(&c.topo.external, 7070, IO_TIMEOUT);
    let srv = c.check(&what, srv);
    let client = tcp_echo_client(&c.pod(pod).ns, EXTERNAL_IP, 7070, 1000, IO_TIMEOUT);
    let served = srv
        .join()
        .map_err(|_| "server panicked".to_string())
        .and_then(|r| r);
    c.check(&what, client);
    assert_eq!(c.check(&what, served), 1000);

    std::thread::sleep(Duration::from_millis(300));
    let s = stats(&mut c);
    let after = worker_json(&s, w_pod);
    let moved = |k: &str| loop_counter(&after, k).saturating_sub(loop_counter(&before, k));
    // The SYN waited on the pod's worker and left through the uplink's
    // worker once the next hop resolved.
    assert!(moved("neighbour_requests") >= 1, "{s:#}");
    assert!(moved("neighbour_parked") >= 1, "{s:#}");
    assert!(moved("neighbour_parked_sent") >= 1, "{s:#}");
    assert!(moved("handoff_sent") >= 1, "{s:#}");
    let log = c.kxdp.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("next hop resolved on demand")
                && l.contains(&EXTERNAL_IP.to_string())),
        "kxdp did not resolve {EXTERNAL_IP} on demand:\n{log}"
    );
}

#[test]
fn e2e_two_workers_pods_come_and_go_live() {
    const TEST: &str = "e2e_two_workers_pods_come_and_go_live";
    if skip_if_unsupported(TEST) {
        return;
    }
    let mut c = match KxdpCluster::start(TEST, &services(), &["--workers", "2"]) {
        Ok(c) => c,
        Err(e) => panic!("{TEST}: setting up: {e}"),
    };
    let s = stats(&mut c);
    let w_a1 = worker_of(&s, c.pod("a1").host_ifindex);
    let w_a2 = worker_of(&s, c.pod("a2").host_ifindex);
    assert_ne!(w_a1, w_a2, "{s:#}");

    // a2 goes away (namespace and veth deleted) under kxdp.
    c.topo.pods.retain(|p| p.name != "a2");
    let r = manifests(&c.topo, &services()).and_then(|t| replace_file(&c.manifests, &t));
    c.check("rewriting the manifests", r);
    let deadline = Instant::now() + Duration::from_secs(6);
    while !c.kxdp.log_text().contains("interface released") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(c.kxdp.running(), "kxdp died:\n{}", c.kxdp.log_text());
    assert!(
        c.kxdp.log_text().contains("interface released"),
        "vetha2 not released:\n{}",
        c.kxdp.log_text()
    );

    // a3 arrives: the least loaded worker is the one a2 left.
    let a3 = Ipv4Addr::new(10, 244, 1, 4);
    let r = c.topo.add_pod("a3", 0, a3).map(|_| ());
    c.check("adding pod a3", r);
    let r = manifests(&c.topo, &services()).and_then(|t| replace_file(&c.manifests, &t));
    c.check("rewriting the manifests", r);
    let a3_if = c.pod("a3").host_ifindex;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut s = stats(&mut c);
    while worker_of(&s, a3_if).is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        s = stats(&mut c);
    }
    assert_eq!(worker_of(&s, a3_if), w_a2, "a3 placed:\n{s:#}");
    // Give the steering maps the new pod's generation, then talk across
    // workers both ways and to the other node.
    let before: u64 = workers(&s)
        .iter()
        .map(|w| loop_counter(w, "handoff_sent"))
        .sum();
    let mut ok = Err(String::new());
    for _ in 0..10 {
        ok = udp_echo(&c.pod("a1").ns, &c.pod("a3").ns, a3, 7003);
        if ok.is_ok() {
            break;
        }
    }
    c.check("UDP a1 -> new pod a3", ok);
    tcp(&mut c, "a1", "a3", a3, 8080, 8080);
    let a1 = c.pod("a1").ip;
    tcp(&mut c, "a3", "a1", a1, 8081, 8081);
    tcp(&mut c, "a3", "b1", VIP_REMOTE, 80, 8080);
    std::thread::sleep(Duration::from_millis(300));
    let s = stats(&mut c);
    let after: u64 = workers(&s)
        .iter()
        .map(|w| loop_counter(w, "handoff_sent"))
        .sum();
    assert!(
        after - before >= (2 * TRANSFER / 1500) as u64,
        "hand-offs {before} -> {after}:\n{s:#}"
    );
    assert_eq!(
        c.kxdp.stop(),
        Some(0),
        "clean exit on SIGTERM:\n{}",
        c.kxdp.log_text()
    );
}

#[test]
fn e2e_two_workers_null_pipeline_forwards_across_workers() {
    const TEST: &str = "e2e_two_workers_null_pipeline_forwards_across_workers";
    if skip_if_unsupported(TEST) {
        return;
    }
    let setup = (|| -> Result<(Topology, TempDir), String> {
        let topo = Topology::standard(TopologyOptions::default())?;
        // Null forwarding leaves frames unchanged: each pod addresses the
        // other's MAC directly (its gateway's neighbour entry).
        let (a1, a2) = (
            topo.pod("a1").ok_or("no a1")?,
            topo.pod("a2").ok_or("no a2")?,
        );
        let gw = topo.node("node-a").ok_or("no node-a")?.gateway.to_string();
        for (from, to) in [(a1, a2), (a2, a1)] {
            from.ns.ip(&[
                "neigh",
                "replace",
                &gw,
                "lladdr",
                &to.mac,
                "dev",
                "eth0",
                "nud",
                "permanent",
            ])?;
        }
        let dir = TempDir::new(TEST)?;
        Ok((topo, dir))
    })();
    let (topo, dir) = setup.unwrap_or_else(|e| panic!("{TEST}: setting up: {e}"));
    let node_a = topo.node("node-a").expect("node-a");
    let pair = format!(
        "{},{}",
        topo.pod("a1").expect("a1").host_veth,
        topo.pod("a2").expect("a2").host_veth
    );
    let mut kxdp = KxdpProcess::spawn(
        node_a,
        &dir.path,
        &["--null-pipeline", "--null-pair", &pair, "--workers", "2"],
    )
    .unwrap_or_else(|e| panic!("{TEST}: spawn: {e}"));
    if let Err(e) = kxdp.wait_ready(Duration::from_secs(30)) {
        panic!("{TEST}: {e}");
    }
    let (a1, a2) = (topo.pod("a1").expect("a1"), topo.pod("a2").expect("a2"));
    let r = udp_echo(&a1.ns, &a2.ns, a2.ip, 7010);
    assert!(r.is_ok(), "UDP a1 -> a2: {r:?}\n{}", kxdp.log_text());
    let r = udp_echo(&a2.ns, &a1.ns, a1.ip, 7011);
    assert!(r.is_ok(), "UDP a2 -> a1: {r:?}\n{}", kxdp.log_text());
    std::thread::sleep(Duration::from_millis(300));
    let body = admin_get(&node_a.ns, ADMIN.parse().expect("address"), "/debug/stats")
        .unwrap_or_else(|e| panic!("{TEST}: /debug/stats: {e}"));
    let s: Value = serde_json::from_str(&body).expect("JSON");
    let (w1, w2) = (
        worker_of(&s, a1.host_ifindex),
        worker_of(&s, a2.host_ifindex),
    );
    assert!(w1.is_some() && w2.is_some() && w1 != w2, "{s:#}");
    for w in workers(&s) {
        // Each worker forwarded its pod's frames and handed them over.
        assert!(loop_counter(&w, "null_forwarded") >= 2, "{s:#}");
        assert!(loop_counter(&w, "handoff_sent") >= 2, "{s:#}");
        assert!(loop_counter(&w, "handoff_received") >= 2, "{s:#}");
    }
    assert_eq!(kxdp.stop(), Some(0), "clean exit:\n{}", kxdp.log_text());
}
