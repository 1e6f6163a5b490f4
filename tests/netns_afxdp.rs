//! AF_XDP smoke test: real kernel sockets in two pod namespaces talk
//! through the steering program and two AF_XDP sockets sharing one UMEM.
//!
//! ```text
//!   a1 (10.244.1.2) --veth-- [vetha1 | node-a | vetha2] --veth-- a2 (10.244.1.3)
//!                          steer_pod      test loop      steer_pod
//!                          -> XSK 1  -> rewrite MACs ->  XSK 2 tx
//! ```
//! The loop in node-a forwards by MAC rewrite only; every other frame is
//! moved 50 bytes down inside its UMEM frame first (as encapsulation
//! would), exercising the realignment before transmit. Run as root;
//! prints SKIP otherwise.

mod common;

use std::net::{Ipv4Addr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::topology::{ensure_bpffs, Topology, TopologyOptions};
use kxdp_dataplane::io::afxdp::{AfXdpPort, PortConfig, StoreConfig, XskStore};
use kxdp_dataplane::io::{FrameStore, PacketBuf, Port, PortStats};
use kxdp_dataplane::pipeline::Ingress;
use kxdp_ffi::xdp::{AttachMode, Interface, LoadOptions, Role, SteeringProgram};

fn parse_mac(s: &str) -> [u8; 6] {
    let mut m = [0u8; 6];
    for (d, p) in m.iter_mut().zip(s.split(':')) {
        *d = u8::from_str_radix(p, 16).unwrap_or(0);
    }
    m
}

/// Where the forwarding loop sends a frame: (port index, dst MAC, src MAC).
struct Route {
    dst_ip: Ipv4Addr,
    port: usize,
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
}

struct LoopResult {
    tx_pps: f64,
    forwarded: u64,
    other: u64,
    elapsed: Duration,
    stats: Vec<PortStats>,
    zero_copy: bool,
    free_after: usize,
    total: usize,
}

/// Runs in node-a: attach, open sockets, forward until `stop` or the
/// deadline. Bounded in time.
fn forward_loop(
    veths: [String; 2],
    routes: Vec<Route>,
    pin_dir: std::path::PathBuf,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
    stop: Arc<AtomicBool>,
    deadline: Duration,
) -> Result<LoopResult, String> {
    let setup = || -> Result<_, String> {
        let mut prog = SteeringProgram::load(&LoadOptions {
            pin_dir: Some(pin_dir.clone()),
        })
        .map_err(|e| format!("load: {e}"))?;
        let mut store = XskStore::new(&StoreConfig {
            frames: 4096,
            ..StoreConfig::default()
        })
        .map_err(|e| format!("umem: {e}"))?;
        let mut ports = Vec::new();
        for name in &veths {
            let iface = Interface::lookup(name).map_err(|e| e.to_string())?;
            prog.attach(&iface, Role::Pod, AttachMode::Native, 1)
                .map_err(|e| format!("attach {name}: {e}"))?;
            let port = AfXdpPort::open(
                &mut store,
                &PortConfig::new(
                    name,
                    0,
                    Ingress::Pod {
                        ifindex: iface.ifindex,
                    },
                ),
            )
            .map_err(|e| format!("socket {name}: {e}"))?;
            prog.register_socket(iface.ifindex, 0, port.as_fd())
                .map_err(|e| format!("register {name}: {e}"))?;
            ports.push(port);
        }
        Ok((prog, store, ports))
    };
    let (prog, mut store, mut ports) = match setup() {
        Ok(v) => v,
        Err(e) => {
            let _ = ready.send(Err(e.clone()));
            return Err(e);
        }
    };
    let _ = ready.send(Ok(()));

    let start = Instant::now();
    let mut bufs = Vec::with_capacity(64);
    let (mut forwarded, mut other) = (0u64, 0u64);
    while !stop.load(Ordering::Relaxed) && start.elapsed() < deadline {
        let mut idle = true;
        for i in 0..ports.len() {
            let n = ports[i].recv_batch(&mut store, &mut bufs, 64);
            if n > 0 {
                idle = false;
            }
            for mut buf in bufs.drain(..) {
                let route = {
                    let Ok(f) = store.frame(&mut buf) else {
                        other += 1;
                        continue;
                    };
                    let d = f.data();
                    let is_ip = d.get(12..14) == Some(&[0x08, 0x00]);
                    let dst = d.get(30..34).map(|b| Ipv4Addr::new(b[0], b[1], b[2], b[3]));
                    routes.iter().position(|r| is_ip && Some(r.dst_ip) == dst)
                };
                let Some(r) = route else {
                    other += 1;
                    store.release(buf);
                    continue;
                };
                let route = &routes[r];
                let (off, len) = {
                    let Ok(mut f) = store.frame(&mut buf) else {
                        continue;
                    };
                    if forwarded % 2 == 1 {
                        // Move the packet 50 bytes down (as encapsulation
                        // would); send must move it back.
                        let (o, l) = (f.offset, f.len);
                        f.buf.copy_within(o..o + l, o - 50);
                        f.offset = o - 50;
                    }
                    let data = f.data_mut();
                    data[0..6].copy_from_slice(&route.dst_mac);
                    data[6..12].copy_from_slice(&route.src_mac);
                    (f.offset, f.len)
                };
                if buf.set_bounds(off, len).is_err() {
                    store.release(buf);
                    continue;
                }
                if ports[route.port].send(&mut store, buf) {
                    forwarded += 1;
                }
            }
        }
        for p in ports.iter_mut() {
            p.flush(&mut store);
            p.complete(&mut store);
        }
        if idle {
            std::thread::sleep(Duration::from_micros(50));
        }
    }
    let elapsed = start.elapsed();

    // Transmit-only floor of this I/O layer on one veth: 60-byte frames
    // to a2's MAC (dropped by a2's kernel: discard port, bad checksum is
    // irrelevant), bounded to 0.5 s and 2M frames.
    let template: Vec<u8> = {
        let r = &routes[0];
        let mut f = vec![0u8; 60];
        f[0..6].copy_from_slice(&r.dst_mac);
        f[6..12].copy_from_slice(&r.src_mac);
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[14] = 0x45;
        f
    };
    let tx_start = Instant::now();
    let mut tx_sent = 0u64;
    while tx_sent < 2_000_000 && tx_start.elapsed() < Duration::from_millis(500) {
        for _ in 0..64 {
            let Some(mut buf) = store.alloc() else { break };
            let off = buf.offset();
            if let Ok(f) = store.frame(&mut buf) {
                f.buf[off..off + 60].copy_from_slice(&template);
            }
            if buf.set_bounds(off, 60).is_ok() && ports[1].send(&mut store, buf) {
                tx_sent += 1;
            }
        }
        ports[1].flush(&mut store);
        ports[1].complete(&mut store);
    }
    let tx_pps = tx_sent as f64 / tx_start.elapsed().as_secs_f64();

    for p in ports.iter_mut() {
        p.flush(&mut store);
        for _ in 0..100 {
            if p.complete(&mut store) == 0 {
                break;
            }
        }
    }
    let stats = ports.iter().map(|p| p.stats()).collect();
    let zero_copy = ports.iter().any(|p| p.zero_copy());
    // Frames still in fill rings are accounted as in flight.
    let in_flight: u32 = ports.iter().map(|p| p.frames_in_flight()).sum();
    let free_after = store.free_frames() + in_flight as usize;
    let total = 4096;
    drop(ports);
    drop(prog);
    Ok(LoopResult {
        tx_pps,
        forwarded,
        other,
        elapsed,
        stats,
        zero_copy,
        free_after,
        total,
    })
}

#[test]
fn afxdp_forwards_between_pods_with_shared_umem() {
    if common::topology::skip_if_unsupported("afxdp_forwards_between_pods_with_shared_umem") {
        return;
    }
    if let Err(e) = ensure_bpffs() {
        eprintln!("SKIP afxdp_forwards_between_pods_with_shared_umem: bpffs: {e}");
        return;
    }
    let topo = Topology::standard(TopologyOptions::default()).expect("topology");
    let node = topo.node("node-a").unwrap();
    let a1 = topo.pod("a1").unwrap();
    let a2 = topo.pod("a2").unwrap();
    // kxdp would answer ARP for the gateway; this test has no pipeline,
    // so the pods get a static neighbour entry instead.
    for p in [a1, a2] {
        p.ns.ip(&[
            "neigh",
            "replace",
            &node.gateway.to_string(),
            "lladdr",
            &p.host_mac,
            "dev",
            "eth0",
            "nud",
            "permanent",
        ])
        .unwrap();
    }
    let routes = vec![
        Route {
            dst_ip: a2.ip,
            port: 1,
            dst_mac: parse_mac(&a2.mac),
            src_mac: parse_mac(&a2.host_mac),
        },
        Route {
            dst_ip: a1.ip,
            port: 0,
            dst_mac: parse_mac(&a1.mac),
            src_mac: parse_mac(&a1.host_mac),
        },
    ];
    let pin_dir = std::path::PathBuf::from(format!("/sys/fs/bpf/kxdp-{}", topo.suffix));
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let veths = [a1.host_veth.clone(), a2.host_veth.clone()];
    let stop2 = stop.clone();
    let pin2 = pin_dir.clone();
    let worker = node.ns.spawn(move || {
        forward_loop(
            veths,
            routes,
            pin2,
            ready_tx,
            stop2,
            Duration::from_secs(30),
        )
    });
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("worker start")
        .expect("worker setup");

    // 1. Request/response: a2 echoes, a1 checks every byte.
    const N: u32 = 200;
    let (a2_ip, a1_ip) = (a2.ip, a1.ip);
    let (bound_tx, bound_rx) = std::sync::mpsc::channel();
    let echo_bound = bound_tx.clone();
    let echo = a2.ns.spawn(move || {
        let s = UdpSocket::bind((a2_ip, 9000)).map_err(|e| e.to_string())?;
        let _ = echo_bound.send(());
        s.set_read_timeout(Some(Duration::from_secs(3)))
            .map_err(|e| e.to_string())?;
        let mut buf = [0u8; 2048];
        let mut served = 0u32;
        while served < N {
            let Ok((n, from)) = s.recv_from(&mut buf) else {
                break;
            };
            s.send_to(&buf[..n], from).map_err(|e| e.to_string())?;
            served += 1;
        }
        Ok(served)
    });
    bound_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("echo server bound");
    let client = a1.ns.run_in(move || {
        let s = UdpSocket::bind((a1_ip, 0)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(1)))
            .map_err(|e| e.to_string())?;
        let mut buf = [0u8; 2048];
        let mut ok = 0u32;
        for i in 0..N {
            // Sizes from 1 to 1400 bytes, distinct content.
            let len = 1 + (i as usize * 7) % 1400;
            let msg: Vec<u8> = (0..len).map(|j| (i as usize + j) as u8).collect();
            s.send_to(&msg, (a2_ip, 9000)).map_err(|e| e.to_string())?;
            match s.recv_from(&mut buf) {
                Ok((n, from)) if buf[..n] == msg[..] && from.ip() == a2_ip => ok += 1,
                Ok(_) => return Err(format!("packet {i}: echo differs")),
                Err(e) => return Err(format!("packet {i}: no echo: {e}")),
            }
        }
        Ok(ok)
    });
    let served = echo.join().unwrap();
    assert_eq!(client, Ok(N), "client");
    assert_eq!(served, Ok(N), "echo server");

    // 2. Bounded blast a1 -> a2: packets/s through the forward loop.
    const BLAST: u32 = 100_000;
    let sink = a2.ns.spawn(move || {
        let s = UdpSocket::bind((a2_ip, 9001)).map_err(|e| e.to_string())?;
        let _ = bound_tx.send(());
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .map_err(|e| e.to_string())?;
        let mut buf = [0u8; 2048];
        let mut got = 0u32;
        let start = Instant::now();
        while got < BLAST && start.elapsed() < Duration::from_secs(15) {
            match s.recv_from(&mut buf) {
                Ok(_) => got += 1,
                Err(_) if got > 0 => break,
                Err(_) => {}
            }
        }
        Ok((got, start.elapsed()))
    });
    bound_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("sink bound");
    let sent = a1
        .ns
        .run_in(move || {
            let s = UdpSocket::bind((a1_ip, 0)).map_err(|e| e.to_string())?;
            let msg = [0x5au8; 18];
            let mut sent = 0u32;
            let start = Instant::now();
            while sent < BLAST && start.elapsed() < Duration::from_secs(10) {
                if s.send_to(&msg, (a2_ip, 9001)).is_ok() {
                    sent += 1;
                }
            }
            Ok(sent)
        })
        .unwrap();
    let (got, took) = sink.join().unwrap().unwrap();
    stop.store(true, Ordering::Relaxed);
    let res = worker.join().unwrap().expect("worker");
    let pps = got as f64 / took.as_secs_f64();
    eprintln!(
        "afxdp forward: sent {sent}, delivered {got} in {took:?} ({pps:.0} pps end to end), \
         loop forwarded {} (other {}) in {:?}, tx-only {:.0} pps, zero_copy={}, stats={:?}",
        res.forwarded, res.other, res.elapsed, res.tx_pps, res.zero_copy, res.stats
    );
    assert!(got > 0, "nothing delivered in the blast");
    assert!(res.tx_pps > 0.0);
    assert!(!res.zero_copy, "veth is copy mode");
    assert!(res.stats[1].tx_realigned > 0 && res.stats[0].tx_realigned > 0);
    assert_eq!(res.free_after, res.total, "frames leaked");
    // The pins are gone with the program.
    assert!(!pin_dir.exists(), "pin dir {pin_dir:?} left behind");
}
