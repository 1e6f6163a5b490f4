//! The in-kernel redirect baseline against real veths (root only; prints
//! SKIP otherwise): three namespaces of this test's own,
//!
//! ```text
//!  S: s0 10.77.0.1 --veth-- d0 [D: redirect_fwd, ip_forward=0] d1 --veth-- r0 10.77.0.2 :R
//! ```
//!
//! S sends UDP to 10.77.0.2 with d0's MAC as destination (static
//! neighbour); only the XDP redirect with its MAC rewrite can bring it to
//! R's socket (D has no addresses and does not forward).

use std::net::UdpSocket;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use kxdp_ffi::netns::enter_net_namespace;
use kxdp_ffi::redirect::{FwdMacs, RedirectProgram};
use kxdp_ffi::xdp::{AttachMode, Interface};

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2))
        == Some("0")
}

fn run(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A namespace of this test, deleted on drop.
struct Ns(String);

impl Ns {
    fn new(role: &str) -> Ns {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("kxr{}x{n}{role}", std::process::id());
        run(&["ip", "netns", "add", &name]);
        let ns = Ns(name);
        ns.ip(&["link", "set", "lo", "up"]);
        ns.exec(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
        ns.exec(&["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"]);
        ns
    }
    fn ip(&self, args: &[&str]) -> String {
        let mut v = vec!["ip", "-n", self.0.as_str()];
        v.extend_from_slice(args);
        run(&v)
    }
    fn exec(&self, args: &[&str]) -> String {
        let mut v = vec!["ip", "netns", "exec", self.0.as_str()];
        v.extend_from_slice(args);
        run(&v)
    }
    fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.0))
    }
    fn mac(&self, dev: &str) -> String {
        let text = self.ip(&["-br", "link", "show", "dev", dev]);
        text.split_whitespace().nth(2).expect("MAC").to_owned()
    }
    /// Runs `f` on a thread inside this namespace.
    fn run_in<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = self.path();
        std::thread::spawn(move || {
            enter_net_namespace(&path).expect("setns");
            f()
        })
        .join()
        .expect("thread")
    }
    /// Whether `dev` has an XDP program attached.
    fn has_xdp(&self, dev: &str) -> bool {
        self.ip(&["link", "show", "dev", dev]).contains("xdp")
    }
    fn ethtool_stat(&self, dev: &str, name: &str) -> u64 {
        self.exec(&["ethtool", "-S", dev])
            .lines()
            .filter_map(|l| l.trim().split_once(": "))
            .find(|(k, _)| *k == name)
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

fn parse_mac(s: &str) -> [u8; 6] {
    let mut out = [0u8; 6];
    let parts: Vec<u8> = s
        .split(':')
        .map(|p| u8::from_str_radix(p, 16).expect("hex"))
        .collect();
    out.copy_from_slice(&parts);
    out
}

struct Bed {
    s: Ns,
    d: Ns,
    r: Ns,
}

fn bed() -> Bed {
    let (s, d, r) = (Ns::new("s"), Ns::new("d"), Ns::new("r"));
    run(&[
        "ip", "link", "add", "s0", "netns", &s.0, "type", "veth", "peer", "name", "d0", "netns",
        &d.0,
    ]);
    run(&[
        "ip", "link", "add", "d1", "netns", &d.0, "type", "veth", "peer", "name", "r0", "netns",
        &r.0,
    ]);
    for (ns, dev) in [(&s, "s0"), (&d, "d0"), (&d, "d1"), (&r, "r0")] {
        ns.ip(&["link", "set", dev, "up"]);
    }
    // The sender's checksums must be complete on the wire: XDP sees the
    // frame before anything would fill in an offloaded checksum.
    s.exec(&["ethtool", "-K", "s0", "tx", "off"]);
    s.ip(&["addr", "add", "10.77.0.1/24", "dev", "s0"]);
    r.ip(&["addr", "add", "10.77.0.2/24", "dev", "r0"]);
    let d0 = d.mac("d0");
    s.ip(&[
        "neigh",
        "replace",
        "10.77.0.2",
        "lladdr",
        &d0,
        "dev",
        "s0",
        "nud",
        "permanent",
    ]);
    Bed { s, d, r }
}

impl Bed {
    fn forward(&self) -> RedirectProgram {
        let macs = FwdMacs {
            src: parse_mac(&self.d.mac("d1")),
            dst: parse_mac(&self.r.mac("r0")),
        };
        self.d.run_in(move || {
            let mut prog = RedirectProgram::load().expect("load");
            let d0 = Interface::lookup("d0").expect("d0");
            let d1 = Interface::lookup("d1").expect("d1");
            prog.forward(&d0, &d1, macs, AttachMode::Native)
                .expect("forward");
            prog
        })
    }

    /// Sends `n` datagrams from S; returns how many R's socket received.
    fn send_and_count(&self, n: usize) -> usize {
        let (tx, rx) = std::sync::mpsc::channel();
        let path = self.r.path();
        let receiver = std::thread::spawn(move || {
            enter_net_namespace(&path).expect("setns");
            let sock = UdpSocket::bind(("10.77.0.2", 9999)).expect("bind");
            sock.set_read_timeout(Some(Duration::from_millis(300)))
                .expect("timeout");
            tx.send(()).expect("ready");
            let mut got = 0;
            let mut buf = [0u8; 64];
            let deadline = Instant::now() + Duration::from_secs(10);
            while got < n && Instant::now() < deadline {
                match sock.recv(&mut buf) {
                    Ok(len) if buf.get(..len) == Some(b"kxdp-redirect") => got += 1,
                    Ok(_) => {}
                    Err(_) => break, // quiet for 300 ms: done
                }
            }
            got
        });
        rx.recv_timeout(Duration::from_secs(5))
            .expect("receiver up");
        self.s.run_in(move || {
            let sock = UdpSocket::bind(("10.77.0.1", 0)).expect("bind");
            for _ in 0..n {
                sock.send_to(b"kxdp-redirect", ("10.77.0.2", 9999))
                    .expect("send");
                std::thread::sleep(Duration::from_micros(200));
            }
        });
        receiver.join().expect("receiver")
    }
}

#[test]
fn redirect_rewrites_macs_reaches_the_peer_and_detaches_on_drop() {
    if !is_root() {
        eprintln!("SKIP redirect_rewrites_macs_reaches_the_peer_and_detaches_on_drop: not root");
        return;
    }
    let b = bed();
    let mut prog = b.forward();
    prog = b.r.run_in(move || {
        let r0 = Interface::lookup("r0").expect("r0");
        prog.attach_pass(&r0, AttachMode::Native).expect("pass");
        prog
    });
    assert!(b.d.has_xdp("d0") && b.r.has_xdp("r0"));
    assert_eq!(prog.attached().collect::<Vec<_>>(), vec!["d0", "r0"]);
    // A second forward of d0 is refused and leaves the first in place;
    // so is one from another namespace (ifindexes key the maps).
    let mut prog = b.d.run_in(move || {
        let d0 = Interface::lookup("d0").expect("d0");
        let d1 = Interface::lookup("d1").expect("d1");
        let macs = FwdMacs {
            src: [2, 0, 0, 0, 0, 1],
            dst: [2, 0, 0, 0, 0, 2],
        };
        assert!(prog.forward(&d0, &d1, macs, AttachMode::Native).is_err());
        prog
    });
    prog = b.s.run_in(move || {
        let s0 = Interface::lookup("s0").expect("s0");
        let macs = FwdMacs {
            src: [2, 0, 0, 0, 0, 1],
            dst: [2, 0, 0, 0, 0, 2],
        };
        assert!(prog.forward(&s0, &s0, macs, AttachMode::Native).is_err());
        prog
    });
    assert!(!b.s.has_xdp("s0"));

    assert_eq!(b.send_and_count(200), 200);
    let st = prog.stats().expect("stats");
    assert!(st.fwd_redirect >= 200, "{st:?}");
    assert!(st.peer_pass >= 200, "{st:?}");
    assert_eq!((st.fwd_no_port, st.fwd_runt), (0, 0), "{st:?}");
    assert!(b.d.ethtool_stat("d0", "rx_queue_0_xdp_redirect") >= 200);

    drop(prog);
    assert!(!b.d.has_xdp("d0"), "d0 still has a program");
    assert!(!b.r.has_xdp("r0"), "r0 still has a program");
    // D neither has addresses nor forwards: without the program nothing
    // arrives.
    assert_eq!(b.send_and_count(20), 0);
}

#[test]
fn redirect_into_a_veth_whose_peer_has_no_napi_is_dropped() {
    if !is_root() {
        eprintln!("SKIP redirect_into_a_veth_whose_peer_has_no_napi_is_dropped: not root");
        return;
    }
    // The kernel fact the xdp-redirect mode works around with
    // `attach_pass` on the peer (ffi `redirect` module docs): r0 has
    // neither an XDP program nor GRO, so d1's ndo_xdp_xmit refuses.
    let b = bed();
    let prog = b.forward();
    assert_eq!(b.send_and_count(50), 0);
    let st = prog.stats().expect("stats");
    assert!(st.fwd_redirect >= 50, "{st:?}");
    assert_eq!(st.peer_pass, 0, "{st:?}");
    // d1 does not offer ndo_xdp_xmit (its xdp_features lack NDO_XMIT
    // while r0 has no NAPI): the redirect itself fails, counted as
    // receive drops of the ingress veth.
    assert!(b.d.ethtool_stat("d0", "rx_queue_0_drops") >= 50);
    assert_eq!(b.d.ethtool_stat("d0", "rx_queue_0_xdp_redirect"), 0);

    // GRO on the peer enables its NAPI as well.
    b.r.exec(&["ethtool", "-K", "r0", "gro", "on"]);
    assert_eq!(b.send_and_count(50), 50);
}
