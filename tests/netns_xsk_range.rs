//! The steering program never redirects a queue outside the interface's
//! XSKMAP slot range.
//!
//! ```text
//!   ns "s" (sender)                    ns "d" (steering program)
//!   x1 (2 tx queues) 10.99.0.2 ──veth── x0 (2 rx queues): attached with 1 slot (slot 0, empty)
//!                                      y0 ──veth── y1: attached with 1 slot (slot 1), socket on queue 0
//! ```
//!
//! Slots are handed out in attach order: x0 gets slot 0, y0 slot 1. Frames
//! the veth delivers on x0's rx queue 1 would compute slot 0 + 1 = 1, y0's
//! socket. The program must count them as dropped (`pod_drop_no_socket`),
//! never as redirected: the kernel would refuse the misdirected frame
//! anyway, but only after the program claimed success, and a queue added
//! to an interface after its attach must not reach another interface's
//! slots. The sender uses 64 UDP flows so the veth's transmit hash spreads
//! them over both queues; `ethtool -S x0` shows queue 1 got frames (else
//! the test proves nothing and says so).
//!
//! Run as root; prints SKIP otherwise.

mod common;

use std::net::UdpSocket;
use std::sync::mpsc;
use std::time::Duration;

use common::topology::{ensure_bpffs, skip_if_unsupported, unique_suffix, Netns};
use kxdp_dataplane::io::afxdp::{AfXdpPort, PortConfig, StoreConfig, XskStore};
use kxdp_dataplane::pipeline::Ingress;
use kxdp_ffi::xdp::{AttachMode, Interface, LoadOptions, Role, SteerStats, SteeringProgram};

/// `rx_queue_N_xdp_packets` of `dev` from `ethtool -S` in `ns`.
fn queue_xdp_packets(ns: &Netns, dev: &str, queue: u32) -> u64 {
    let key = format!("rx_queue_{queue}_xdp_packets:");
    ns.exec_stdout("ethtool", &["-S", dev])
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix(&key)
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

#[test]
fn a_queue_past_the_slot_range_is_dropped_not_redirected() {
    const TEST: &str = "a_queue_past_the_slot_range_is_dropped_not_redirected";
    if skip_if_unsupported(TEST) {
        return;
    }
    let suffix = unique_suffix();
    let setup = || -> Result<(Netns, Netns), String> {
        ensure_bpffs()?;
        let d = Netns::new("d", &suffix)?;
        let s = Netns::new("s", &suffix)?;
        // No IPv6 chatter (router solicitations from y1 would be y0's own,
        // legitimately redirected, traffic).
        for ns in [&d, &s] {
            ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
            ns.sysctl("net.ipv6.conf.default.disable_ipv6", "1")?;
        }
        d.ip(&[
            "link",
            "add",
            "x0",
            "numtxqueues",
            "2",
            "numrxqueues",
            "2",
            "type",
            "veth",
            "peer",
            "name",
            "x1",
            "numtxqueues",
            "2",
            "numrxqueues",
            "2",
            "netns",
            s.name(),
        ])?;
        d.ip(&["link", "add", "y0", "type", "veth", "peer", "name", "y1"])?;
        for dev in ["x0", "y0", "y1"] {
            d.ip(&["link", "set", dev, "up"])?;
        }
        s.ip(&["link", "set", "x1", "up"])?;
        s.ip(&["addr", "add", "10.99.0.2/24", "dev", "x1"])?;
        let x0_mac = d.mac("x0")?;
        s.ip(&[
            "neigh",
            "replace",
            "10.99.0.1",
            "lladdr",
            &x0_mac,
            "dev",
            "x1",
            "nud",
            "permanent",
        ])?;
        Ok((d, s))
    };
    let (d, s) = match setup() {
        Ok(v) => v,
        Err(e) => panic!("{TEST}: setting up: {e}"),
    };

    // The program and the socket live on a thread in "d" until told to stop.
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let holder = d.spawn(move || -> Result<SteerStats, String> {
        let setup = || -> Result<_, String> {
            let mut prog = SteeringProgram::load(&LoadOptions { pin_dir: None })
                .map_err(|e| format!("load: {e}"))?;
            let x0 = Interface::lookup("x0").map_err(|e| e.to_string())?;
            let y0 = Interface::lookup("y0").map_err(|e| e.to_string())?;
            // x0 has 2 rx queues but gets 1 slot (as if a queue was added
            // after the attach); y0 gets the next slot.
            prog.attach(&x0, Role::Pod, AttachMode::Native, 1)
                .map_err(|e| format!("attach x0: {e}"))?;
            prog.attach(&y0, Role::Pod, AttachMode::Native, 1)
                .map_err(|e| format!("attach y0: {e}"))?;
            let mut store = XskStore::new(&StoreConfig {
                frames: 1024,
                ..StoreConfig::default()
            })
            .map_err(|e| format!("umem: {e}"))?;
            let port = AfXdpPort::open(
                &mut store,
                &PortConfig::new(
                    "y0",
                    0,
                    Ingress::Pod {
                        ifindex: y0.ifindex,
                    },
                ),
            )
            .map_err(|e| format!("socket y0: {e}"))?;
            prog.register_socket(y0.ifindex, 0, port.as_fd())
                .map_err(|e| format!("register y0: {e}"))?;
            Ok((prog, store, port))
        };
        let (prog, store, port) = match setup() {
            Ok(v) => v,
            Err(e) => {
                let _ = ready_tx.send(Err(e.clone()));
                return Err(e);
            }
        };
        let _ = ready_tx.send(Ok(()));
        let _ = stop_rx.recv_timeout(Duration::from_secs(30));
        let stats = prog.stats().map_err(|e| e.to_string());
        drop(port);
        drop(store);
        drop(prog);
        stats
    });
    match ready_rx.recv_timeout(Duration::from_secs(20)) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("{TEST}: {e}"),
        Err(_) => panic!("{TEST}: the program thread did not start"),
    }

    let sent = s.run_in(|| {
        let mut sent = 0u32;
        for i in 0..64u16 {
            let sock = UdpSocket::bind(("10.99.0.2", 40000 + i)).map_err(|e| e.to_string())?;
            for _ in 0..4 {
                sock.send_to(b"which queue?", ("10.99.0.1", 9000))
                    .map_err(|e| e.to_string())?;
                sent += 1;
            }
        }
        Ok(sent)
    });
    let sent = sent.unwrap_or_else(|e| panic!("{TEST}: sending: {e}"));
    std::thread::sleep(Duration::from_millis(300));
    let q1 = queue_xdp_packets(&d, "x0", 1);
    let _ = stop_tx.send(());
    let stats = match holder.join() {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => panic!("{TEST}: {e}"),
        Err(_) => panic!("{TEST}: program thread panicked"),
    };
    assert!(
        q1 > 0,
        "{TEST}: no frame arrived on x0's queue 1 ({sent} sent): nothing was tested"
    );
    assert_eq!(
        stats.pod_redirect, 0,
        "frames of x0's queue 1 were redirected into y0's slot: {stats:?}"
    );
    assert!(
        stats.pod_drop_no_socket >= q1,
        "queue 1's {q1} frames not counted as drops: {stats:?}"
    );
}
