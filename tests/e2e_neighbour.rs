//! End-to-end: a next hop missing from the neighbour table is resolved on
//! demand and the packet that needed it is not lost.
//!
//! ```text
//!   pod a2 (10.244.1.3) :8080
//!         | veth
//!   node-a: kxdp run --uplink eth0      (neighbour entry of the client flushed)
//!         | eth0 192.168.50.1
//!   ----------------------- underlay bridge br0 ---------------------
//!         | eth0 192.168.50.100: external client -> 192.168.50.1:30080
//! ```
//!
//! The SYN-ACK back to the client finds no neighbour: the worker signals
//! the next hop, kxdp's loop asks the kernel to resolve it, rescans and
//! publishes; the parked SYN-ACK leaves once the tables have the MAC.
//! Asserted: the connection (and an echo through it) succeeds, the worker
//! counted `neighbour-unresolved`, and kxdp logged the on-demand
//! resolution. The connect time is printed, not asserted (a parked
//! SYN-ACK makes it well under the 1 s SYN-ACK retransmission).
//!
//! A second test has pod a1 open a (masqueraded) connection to a server on
//! the external client that node-a never talked to: the SYN itself waits
//! for the next hop.
//!
//! Run as root (prints SKIP otherwise). Every wait is bounded; the
//! topology and kxdp are torn down on drop, also on failure.

mod common;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use common::kxdp::{admin_get, node_port_service, tcp_echo_client, tcp_echo_server, KxdpCluster};
use common::topology::{skip_if_unsupported, EXTERNAL_IP};

const VIP_NODEPORT: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
const NODE_PORT: u16 = 30080;
const IO_TIMEOUT: Duration = Duration::from_secs(10);
const ADMIN: &str = "127.0.0.1:10256";

fn get_json(c: &mut KxdpCluster, path: &str) -> serde_json::Value {
    let r = admin_get(&c.node_a().ns, ADMIN.parse().expect("address"), path).and_then(|t| {
        serde_json::from_str::<serde_json::Value>(&t).map_err(|e| format!("{path}: {e}"))
    });
    c.check(path, r)
}

/// The neighbour entries of the tables kxdp is using, as JSON text.
fn table_neighbours(c: &mut KxdpCluster) -> String {
    get_json(c, "/debug/tables")
        .get("neighbours")
        .map(|n| n.to_string())
        .unwrap_or_default()
}

fn unresolved_drops(c: &mut KxdpCluster) -> u64 {
    let stats = get_json(c, "/debug/stats");
    stats
        .get("workers")
        .and_then(|w| w.as_array())
        .into_iter()
        .flatten()
        .filter_map(|w| w.pointer("/drops/neighbour-unresolved")?.as_u64())
        .sum()
}

/// Prints kxdp's on-demand resolution lines (the timings, for the report).
fn print_on_demand(test: &str, log: &str) {
    for line in log.lines().filter(|l| l.contains("on demand")) {
        println!("{test}: kxdp: {line}");
    }
}

/// Node-a forgets `ip` (only node-a's table), and kxdp's tables follow
/// (next rescan and publish); then waits out the minimum sync interval of
/// that publish, so the next one is not held back by it.
fn forget_neighbour(c: &mut KxdpCluster, ip: Ipv4Addr) {
    let ip_s = ip.to_string();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = c
            .node_a()
            .ns
            .ip(&["neigh", "flush", "to", &ip_s, "dev", "eth0"]);
        c.check("ip neigh flush on node-a", r);
        if !table_neighbours(c).contains(&ip_s) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "kxdp's tables kept the neighbour entry of {ip_s}: {}",
            table_neighbours(c)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_millis(1200));
}

/// The worker counted a `neighbour-unresolved` drop since `before`, kxdp
/// logged resolving `ip` on demand, and its tables now have `ip`.
fn assert_resolved_on_demand(c: &mut KxdpCluster, test: &str, ip: Ipv4Addr, before: u64) {
    // The worker publishes its counters every 100 ms.
    std::thread::sleep(Duration::from_millis(300));
    let after = unresolved_drops(c);
    let log = c.kxdp.log_text();
    print_on_demand(test, &log);
    let ip_s = ip.to_string();
    assert!(
        after > before,
        "no neighbour-unresolved drop counted ({before} -> {after}): the test did not \
         exercise the missing-neighbour path\n{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("next hop resolved on demand") && l.contains(&ip_s)),
        "kxdp did not log the on-demand resolution of {ip_s}:\n{log}"
    );
    assert!(
        table_neighbours(c).contains(&ip_s),
        "the neighbour entry of {ip_s} did not reach kxdp's tables"
    );
}

#[test]
fn e2e_first_connect_to_a_node_port_resolves_the_client_on_demand() {
    let test = "e2e_first_connect_to_a_node_port_resolves_the_client_on_demand";
    if skip_if_unsupported(test) {
        return;
    }
    let services = [node_port_service(
        "svc-nodeport",
        VIP_NODEPORT,
        80,
        NODE_PORT,
        "a2",
    )];
    let mut c = match KxdpCluster::start(test, &services, &[]) {
        Ok(c) => c,
        Err(e) => panic!("{test}: setting up: {e}"),
    };
    let node_a_ip = c.node_a().ip;
    let client_ip = EXTERNAL_IP;

    // Node-a forgets the client; the client keeps node-a's MAC, so only
    // the resolution kxdp triggers (or the client's own ARP) teaches
    // node-a the client again.
    forget_neighbour(&mut c, client_ip);
    let drops_before = unresolved_drops(&mut c);

    let what = "TCP external -> node-a:30080 with the client unresolved";
    let srv = tcp_echo_server(&c.pod("a2").ns, 8080, IO_TIMEOUT);
    let srv = c.check(what, srv);
    let t0 = Instant::now();
    let client = tcp_echo_client(&c.topo.external, node_a_ip, NODE_PORT, 1000, IO_TIMEOUT);
    let took = t0.elapsed();
    let served = srv
        .join()
        .map_err(|_| "server panicked".to_string())
        .and_then(|r| r);
    c.check(what, client);
    assert_eq!(c.check(what, served), 1000);
    println!("{test}: connect + 1000-byte echo took {took:?}");

    assert_resolved_on_demand(&mut c, test, client_ip, drops_before);
}

#[test]
fn e2e_first_connect_from_a_pod_to_an_unresolved_external_host() {
    let test = "e2e_first_connect_from_a_pod_to_an_unresolved_external_host";
    if skip_if_unsupported(test) {
        return;
    }
    let mut c = match KxdpCluster::start(test, &[], &[]) {
        Ok(c) => c,
        Err(e) => panic!("{test}: setting up: {e}"),
    };
    forget_neighbour(&mut c, EXTERNAL_IP);
    let drops_before = unresolved_drops(&mut c);
    // Pod a1 -> external:7070, masqueraded to node-a's address: the SYN
    // itself needs the client as next hop.
    let what = "TCP a1 -> external:7070 with the external host unresolved";
    let srv = tcp_echo_server(&c.topo.external, 7070, IO_TIMEOUT);
    let srv = c.check(what, srv);
    let t0 = Instant::now();
    let client = tcp_echo_client(&c.pod("a1").ns, EXTERNAL_IP, 7070, 1000, IO_TIMEOUT);
    let took = t0.elapsed();
    let served = srv
        .join()
        .map_err(|_| "server panicked".to_string())
        .and_then(|r| r);
    c.check(what, client);
    assert_eq!(c.check(what, served), 1000);
    println!("{test}: connect + 1000-byte echo took {took:?}");
    assert_resolved_on_demand(&mut c, test, EXTERNAL_IP, drops_before);
}
