//! Fail closed: with the steering program attached and no AF_XDP socket
//! registered (kxdp not running or crashed), pod traffic is dropped in
//! both directions while the node's own traffic still flows.
//!
//! ```text
//!   a1 (10.244.1.2) --veth-- [vetha1  node-a  eth0 192.168.50.1] --br0-- ext 192.168.50.100
//!                           steer_pod        steer_uplink
//! ```
//! Every "blocked" assertion is preceded by the same flow succeeding
//! without the program, so the test cannot pass by accident. Run as root;
//! prints SKIP otherwise.

mod common;

use std::time::Duration;

use common::topology::{ensure_bpffs, udp_echo, Topology, TopologyOptions};
use kxdp_dataplane::io::afxdp::{AfXdpPort, PortConfig, StoreConfig, XskStore};
use kxdp_dataplane::pipeline::Ingress;
use kxdp_ffi::xdp::{AttachMode, Interface, LoadOptions, Role, SteerStats, SteeringProgram};

#[test]
fn pods_fail_closed_node_fails_open() {
    if common::topology::skip_if_unsupported("pods_fail_closed_node_fails_open") {
        return;
    }
    if let Err(e) = ensure_bpffs() {
        eprintln!("SKIP pods_fail_closed_node_fails_open: bpffs: {e}");
        return;
    }
    let topo = Topology::standard(TopologyOptions::default()).expect("topology");
    let node = topo.node("node-a").unwrap();
    let a1 = topo.pod("a1").unwrap();
    // Plain kernel forwarding as the baseline: the node answers the pod's
    // gateway, and the external client routes the pod CIDR via node-a.
    node.ns
        .ip(&[
            "addr",
            "add",
            &format!("{}/32", node.gateway),
            "dev",
            &a1.host_veth,
        ])
        .unwrap();
    topo.external
        .ip(&["route", "add", "10.244.1.0/24", "via", &node.ip.to_string()])
        .unwrap();

    udp_echo(&a1.ns, &node.ns, node.gateway, 7201).expect("baseline: pod -> node");
    udp_echo(&topo.external, &a1.ns, a1.ip, 7202).expect("baseline: ext -> pod");
    udp_echo(&topo.external, &node.ns, node.ip, 7203).expect("baseline: ext -> node");

    let pin_dir = std::path::PathBuf::from(format!("/sys/fs/bpf/kxdp-{}", topo.suffix));
    let (veth, pod_ip) = (a1.host_veth.clone(), a1.ip);
    let pin2 = pin_dir.clone();
    // The program lives on a thread in node-a; the test drives it over a
    // channel so it can be inspected, "crashed" and dropped in order.
    let (cmd_tx, cmd_rx) = std::sync::mpsc::channel::<&'static str>();
    let (res_tx, res_rx) = std::sync::mpsc::channel::<Result<SteerStats, String>>();
    let worker = node.ns.spawn(move || {
        let mut prog = SteeringProgram::load(&LoadOptions {
            pin_dir: Some(pin2),
        })
        .map_err(|e| e.to_string())?;
        let pod_if = Interface::lookup(&veth).map_err(|e| e.to_string())?;
        let uplink = Interface::lookup("eth0").map_err(|e| e.to_string())?;
        prog.attach(&pod_if, Role::Pod, AttachMode::Native, 1)
            .map_err(|e| e.to_string())?;
        prog.attach(&uplink, Role::Uplink, AttachMode::Native, 1)
            .map_err(|e| e.to_string())?;
        prog.add_pod_ip(pod_ip).map_err(|e| e.to_string())?;
        let mut socket: Option<(XskStore, AfXdpPort)> = None;
        let _ = res_tx.send(prog.stats().map_err(|e| e.to_string()));
        while let Ok(cmd) = cmd_rx.recv_timeout(Duration::from_secs(60)) {
            match cmd {
                "open" => {
                    let mut store = XskStore::new(&StoreConfig {
                        frames: 1024,
                        ..StoreConfig::default()
                    })
                    .map_err(|e| e.to_string())?;
                    let port = AfXdpPort::open(
                        &mut store,
                        &PortConfig::new(
                            &veth,
                            0,
                            Ingress::Pod {
                                ifindex: pod_if.ifindex,
                            },
                        ),
                    )
                    .map_err(|e| e.to_string())?;
                    prog.register_socket(pod_if.ifindex, 0, port.as_fd())
                        .map_err(|e| e.to_string())?;
                    socket = Some((store, port));
                }
                // The socket closes as if the process died: the kernel
                // empties its XSKMAP slot.
                "crash" => socket = None,
                "stats" => {}
                _ => break,
            }
            let _ = res_tx.send(prog.stats().map_err(|e| e.to_string()));
        }
        drop(socket);
        drop(prog);
        Ok(())
    });
    let stats = |cmd: &'static str| -> SteerStats {
        cmd_tx.send(cmd).unwrap();
        res_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("worker answer")
            .expect("worker")
    };
    let s0 = res_rx
        .recv_timeout(Duration::from_secs(10))
        .unwrap()
        .unwrap();
    assert!(pin_dir.join("xsks").exists(), "maps pinned");

    // No socket: both directions of pod traffic are dropped by XDP...
    assert!(
        udp_echo(&a1.ns, &node.ns, node.gateway, 7211).is_err(),
        "pod -> node leaked"
    );
    assert!(
        udp_echo(&topo.external, &a1.ns, a1.ip, 7212).is_err(),
        "ext -> pod leaked"
    );
    // ... while the node's own traffic passes.
    udp_echo(&topo.external, &node.ns, node.ip, 7213).expect("ext -> node blocked");
    let s1 = stats("stats");
    assert!(s1.pod_drop_no_socket > s0.pod_drop_no_socket, "{s1:?}");
    assert!(
        s1.uplink_drop_no_socket > s0.uplink_drop_no_socket,
        "{s1:?}"
    );
    assert!(s1.uplink_pass > s0.uplink_pass, "{s1:?}");

    // A registered socket takes the pod's frames (nobody processes them
    // here, so they still do not reach the node).
    let s2 = stats("open");
    assert!(udp_echo(&a1.ns, &node.ns, node.gateway, 7221).is_err());
    let s3 = stats("stats");
    assert!(s3.pod_redirect > s2.pod_redirect, "{s3:?}");

    // kxdp "crashes": the slot empties and pod traffic is dropped again.
    let s4 = stats("crash");
    assert!(
        udp_echo(&a1.ns, &node.ns, node.gateway, 7231).is_err(),
        "leak after crash"
    );
    let s5 = stats("stats");
    assert!(s5.pod_drop_no_socket > s4.pod_drop_no_socket, "{s5:?}");
    assert_eq!(s5.pod_redirect, s4.pod_redirect, "{s5:?}");

    // Clean shutdown detaches and unpins: kernel forwarding is back.
    cmd_tx.send("quit").unwrap();
    worker.join().unwrap().expect("worker");
    assert!(!pin_dir.exists(), "pins left in {pin_dir:?}");
    udp_echo(&a1.ns, &node.ns, node.gateway, 7241).expect("after detach: pod -> node");
}
