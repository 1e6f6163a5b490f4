//! End-to-end NetworkPolicy: `kxdp run` on node-a of the standard topology
//! (node-b a plain Linux Flannel node), real TCP connections between pod
//! namespaces, the policy edited in the watched manifests file.
//!
//! The policy under test isolates a2's ingress and allows TCP 8080 from
//! pods labelled `app: a1` (every pod is labelled `app: <its name>`):
//!
//! - allowed: a1 -> a2:8080 connects and echoes;
//! - denied: a1 -> a2:9090 (port) and b1 -> a2:8080 (peer, through VXLAN)
//!   time out — kxdp drops the SYN, it does not reject;
//! - unaffected: a2 -> a1 (a1 is not isolated; replies pass statefully);
//! - revocation: an open a1 -> a2 connection stops carrying data once the
//!   manifests file is edited to allow only b1, while b1 now connects.
//!
//! Run as root (prints SKIP otherwise). Every wait is bounded.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::kxdp::{
    manifests, replace_file, tcp_connect_result, tcp_echo_client, tcp_echo_server, KxdpCluster,
};
use common::topology::skip_if_unsupported;

const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a denied connect is given before it counts as timed out.
const DENY_TIMEOUT: Duration = Duration::from_secs(2);

/// a2 accepts TCP 8080 from pods labelled `app: <from>` only.
fn policy(from: &str) -> String {
    format!(
        r#"apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: a2-ingress
  namespace: default
spec:
  podSelector:
    matchLabels:
      app: a2
  policyTypes:
  - Ingress
  ingress:
  - from:
    - podSelector:
        matchLabels:
          app: {from}
    ports:
    - protocol: TCP
      port: 8080
"#
    )
}

/// Drop order: kxdp, then the namespaces, then the scratch directory.
/// The shared e2e fixture, with this file's helpers.
struct Cluster(KxdpCluster);

impl std::ops::Deref for Cluster {
    type Target = KxdpCluster;
    fn deref(&self) -> &KxdpCluster {
        &self.0
    }
}

impl std::ops::DerefMut for Cluster {
    fn deref_mut(&mut self) -> &mut KxdpCluster {
        &mut self.0
    }
}

impl Cluster {
    fn start(tag: &str, allow_from: &str) -> Result<Self, String> {
        KxdpCluster::start(tag, &[policy(allow_from)], &[]).map(Cluster)
    }

    /// A full echo exchange `from` -> `to:port` (server started in `to`).
    fn echo(&mut self, from: &str, to: &str, port: u16) {
        let what = format!("TCP {from} -> {to}:{port}");
        let srv = tcp_echo_server(&self.pod(to).ns, port, IO_TIMEOUT);
        let srv = self.check(&what, srv);
        let ip = self.pod(to).ip;
        let r = tcp_echo_client(&self.pod(from).ns, ip, port, 64 * 1024, IO_TIMEOUT);
        self.check(&what, r);
        let served = srv
            .join()
            .map_err(|_| "server panicked".to_string())
            .and_then(|r| r);
        self.check(&what, served);
    }

    /// A connect `from` -> `to:port` with a listening server must time
    /// out (policy drops, it does not reject).
    fn denied(&mut self, from: &str, to: &str, port: u16) {
        let what = format!("TCP {from} -> {to}:{port} (denied)");
        // A listener, so a leak would connect instead of being refused.
        let srv = tcp_echo_server(&self.pod(to).ns, port, DENY_TIMEOUT * 2);
        let _srv = self.check(&what, srv);
        let ip = self.pod(to).ip;
        let r = tcp_connect_result(&self.pod(from).ns, ip, port, DENY_TIMEOUT);
        let (res, took) = self.check(&what, r);
        assert_eq!(
            res,
            Err(std::io::ErrorKind::TimedOut),
            "{what}: expected a timeout, got {res:?} after {took:?}\n{}",
            self.kxdp.log_text()
        );
    }
}

fn cluster(test: &str, allow_from: &str) -> Option<Cluster> {
    if skip_if_unsupported(test) {
        return None;
    }
    match Cluster::start(test, allow_from) {
        Ok(c) => Some(c),
        Err(e) => panic!("{test}: setting up: {e}"),
    }
}

#[test]
fn e2e_policy_allow_and_deny() {
    let Some(mut c) = cluster("e2e_policy_allow_and_deny", "a1") else {
        return;
    };
    c.echo("a1", "a2", 8080);
    c.denied("a1", "a2", 9090);
    c.denied("b1", "a2", 8080);
    // a1 is not isolated: anyone reaches it, replies pass statefully.
    c.echo("a2", "a1", 9090);
    c.echo("b1", "a1", 8080);
}

/// Messages to the client thread of the revocation test.
enum Step {
    /// Send this and expect it echoed back within the timeout.
    Echo(&'static [u8]),
    Quit,
}

#[test]
fn e2e_policy_revocation_stops_an_open_connection() {
    let Some(mut c) = cluster("e2e_policy_revocation_stops_an_open_connection", "a1") else {
        return;
    };
    let a2 = c.pod("a2").ip;
    let srv = tcp_echo_server(&c.pod("a2").ns, 8080, Duration::from_secs(30));
    let _srv = c.check("server in a2", srv);

    // A long-lived connection from a1, driven step by step.
    let (step_tx, step_rx) = mpsc::channel::<Step>();
    let (res_tx, res_rx) = mpsc::channel::<Result<(), String>>();
    let client = c.pod("a1").ns.spawn(move || {
        let mut s = TcpStream::connect_timeout(&SocketAddr::from((a2, 8080)), IO_TIMEOUT)
            .map_err(|e| format!("connect: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(3)))
            .map_err(|e| e.to_string())?;
        while let Ok(Step::Echo(msg)) = step_rx.recv() {
            let r = (|| -> Result<(), String> {
                s.write_all(msg).map_err(|e| format!("write: {e}"))?;
                let mut got = vec![0u8; msg.len()];
                s.read_exact(&mut got).map_err(|e| format!("read: {e}"))?;
                if got != msg {
                    return Err(format!("echoed {got:?}, sent {msg:?}"));
                }
                Ok(())
            })();
            if res_tx.send(r).is_err() {
                break;
            }
        }
        Ok(())
    });
    let step = |msg: &'static [u8]| -> Result<(), String> {
        if step_tx.send(Step::Echo(msg)).is_err() {
            return Err("client thread gone".into());
        }
        res_rx
            .recv_timeout(Duration::from_secs(15))
            .map_err(|_| "client thread did not answer".to_string())
            .and_then(|r| r)
    };
    let r = step(b"before the edit");
    c.check("open connection carries data", r);

    // Edit the manifests: a2 now accepts b1 only. Other generations
    // (host rescans) may be published meanwhile: wait for the sweep that
    // follows the policy change (logged once per policy-changing publish).
    const SWEEP: &str = "revoked connections flushed";
    let sweeps_before = c.kxdp.log_text().matches(SWEEP).count();
    let text = manifests(&c.topo, &[policy("b1")]);
    let text = c.check("manifests", text);
    let path = c.manifests.clone();
    let r = replace_file(&path, &text);
    c.check("editing the manifests", r);
    let deadline = Instant::now() + Duration::from_secs(15);
    while c.kxdp.log_text().matches(SWEEP).count() <= sweeps_before {
        assert!(
            Instant::now() < deadline,
            "no policy change published after the edit:\n{}",
            c.kxdp.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let r = step(b"after the edit");
    assert!(
        r.is_err(),
        "the revoked connection still carries data\n{}",
        c.kxdp.log_text()
    );
    let _ = step_tx.send(Step::Quit);
    drop(step_tx);
    let _ = client.join();

    // New connections follow the new policy. a2's listener on 8080 is
    // still open (its server holds the revoked connection), so the kernel
    // would complete any handshake that got through.
    let r = tcp_connect_result(&c.pod("a1").ns, a2, 8080, DENY_TIMEOUT);
    let (res, _) = c.check("a1 -> a2:8080 after the edit", r);
    assert_eq!(res, Err(std::io::ErrorKind::TimedOut), "a1 still admitted");
    let r = tcp_connect_result(&c.pod("b1").ns, a2, 8080, IO_TIMEOUT);
    let (res, _) = c.check("b1 -> a2:8080 after the edit", r);
    assert_eq!(res, Ok(()), "b1 not admitted by the new policy");
}

#[test]
fn policy_manifest_is_well_formed() {
    // The YAML above is what the e2e tests feed kxdp: check it parses as a
    // NetworkPolicy with the intended selector, so a typo cannot turn a
    // deny test into a vacuous pass.
    let v: serde_json::Value = serde_saphyr::from_str(&policy("a1")).expect("YAML");
    assert_eq!(v["kind"], "NetworkPolicy");
    assert_eq!(v["spec"]["podSelector"]["matchLabels"]["app"], "a2");
    assert_eq!(
        v["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]["app"],
        "a1"
    );
    assert_eq!(v["spec"]["ingress"][0]["ports"][0]["port"], 8080);
}

/// `kxdp get ARGS` (and `kxdp top`) in node-a's namespace against the
/// running daemon; stdout.
fn kxdp_cli(c: &mut Cluster, args: &[&str]) -> String {
    let ns = c.topo.node("node-a").expect("node-a").ns.name().to_owned();
    let mut cmd = vec!["netns", "exec", &ns, env!("CARGO_BIN_EXE_kxdp")];
    cmd.extend_from_slice(args);
    let out = std::process::Command::new("ip")
        .args(&cmd)
        .output()
        .map_err(|e| format!("running kxdp {args:?}: {e}"))
        .and_then(|o| {
            if o.status.success() {
                Ok(String::from_utf8_lossy(&o.stdout).into_owned())
            } else {
                Err(format!(
                    "kxdp {args:?} failed ({}): {}",
                    o.status,
                    String::from_utf8_lossy(&o.stderr)
                ))
            }
        });
    c.check("kxdp cli", out)
}

#[test]
fn e2e_get_and_top_against_the_daemon() {
    let Some(mut c) = cluster("e2e_get_and_top_against_the_daemon", "a1") else {
        return;
    };
    let (a1, a2) = (c.pod("a1").ip, c.pod("a2").ip);
    // An open connection a1 -> a2:8080 (allowed) while we look.
    let srv = tcp_echo_server(&c.pod("a2").ns, 8080, Duration::from_secs(20));
    let _srv = c.check("server in a2", srv);
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let (up_tx, up_rx) = mpsc::channel::<Result<(), String>>();
    let client = c.pod("a1").ns.spawn(move || {
        let r = TcpStream::connect_timeout(&SocketAddr::from((a2, 8080)), IO_TIMEOUT)
            .map_err(|e| format!("connect: {e}"));
        let ok = r.as_ref().map(|_| ()).map_err(Clone::clone);
        let _ = up_tx.send(ok);
        let _keep = r;
        let _ = done_rx.recv_timeout(Duration::from_secs(30));
        Ok(())
    });
    let up = up_rx
        .recv_timeout(Duration::from_secs(15))
        .map_err(|_| "client did not report".to_string())
        .and_then(|r| r);
    c.check("open connection", up);
    // A denied one, so a drop reason shows up (8080 is taken by the open
    // connection's server).
    c.denied("b1", "a2", 9090);
    std::thread::sleep(Duration::from_millis(300));

    let ct = kxdp_cli(&mut c, &["get", "conntrack", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&ct).expect("conntrack JSON");
    let found = v["entries"].as_array().into_iter().flatten().any(|e| {
        e["original"]["src"] == a1.to_string()
            && e["original"]["dst"] == a2.to_string()
            && e["original"]["dport"] == 8080
            && e["state"] == "established"
    });
    assert!(found, "a1 -> a2:8080 not in conntrack:\n{ct}");
    let table = kxdp_cli(&mut c, &["get", "conntrack"]);
    assert!(
        table.contains(&format!("{a1}:")) && table.contains("established"),
        "{table}"
    );

    let stats = kxdp_cli(&mut c, &["get", "stats", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&stats).expect("stats JSON");
    let w = &v["workers"][0];
    assert!(w["rx"].as_u64().unwrap_or(0) > 0, "{stats}");
    assert!(
        w["drops"]["policy-denied-ingress"].as_u64().unwrap_or(0) > 0,
        "the denied SYNs are counted by reason:\n{stats}"
    );
    let table = kxdp_cli(&mut c, &["get", "stats"]);
    assert!(table.contains("policy-denied-ingress"), "{table}");

    let pols = kxdp_cli(&mut c, &["get", "policies"]);
    assert!(
        pols.lines()
            .any(|l| l.starts_with("default/a2") && l.contains("default/a2-ingress")),
        "{pols}"
    );
    let pods = kxdp_cli(&mut c, &["get", "pods"]);
    assert!(
        pods.contains("default/a1") && pods.contains("vetha1"),
        "{pods}"
    );
    let nodes = kxdp_cli(&mut c, &["get", "nodes"]);
    assert!(
        nodes.contains("node-b") && nodes.contains("10.244.2.0/24"),
        "{nodes}"
    );

    let top = kxdp_cli(&mut c, &["top", "--interval", "200ms", "--count", "2"]);
    assert_eq!(top.matches("kxdp top").count(), 2, "{top}");
    assert!(top.contains("RX/s"), "{top}");

    let _ = done_tx.send(());
    let _ = client.join();
}

/// kxdp killed (SIGKILL, no cleanup): the steering programs stay attached
/// with empty socket slots, so pods fail closed — nothing a policy governs
/// gets through, not even what it allowed, and nothing from outside
/// reaches a pod — while the node's own traffic (with the outside, and
/// with its pods through the host path) keeps flowing.
#[test]
fn e2e_kxdp_killed_fails_closed_for_pods_open_for_the_node() {
    let Some(mut c) = cluster("e2e_kxdp_killed_fails_closed", "a1") else {
        return;
    };
    // Working before, including an underlay host that routes the pod
    // CIDR to the node directly.
    c.echo("a1", "a2", 8080);
    c.echo("b1", "a1", 8080);
    let node_ip = c.topo.node("node-a").expect("node-a").ip;
    let r = c
        .topo
        .external
        .ip(&["route", "add", "10.244.1.0/24", "via", &node_ip.to_string()])
        .map(|_| ());
    c.check("route to the pod CIDR on the external host", r);
    let srv = tcp_echo_server(&c.pod("a1").ns, 9096, IO_TIMEOUT);
    let srv = c.check("server in a1", srv);
    let a1 = c.pod("a1").ip;
    let r = tcp_echo_client(&c.topo.external, a1, 9096, 4096, IO_TIMEOUT);
    c.check("external -> a1 while kxdp runs", r);
    let _ = srv.join();

    let pid = std::fs::read_to_string(&c.kxdp.ready_file)
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok());
    let pid = c.check(
        "kxdp pid from its ready file",
        pid.ok_or("no pid".to_string()),
    );
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .map_err(|e| e.to_string())
        .and_then(|s| s.success().then_some(()).ok_or(format!("kill: {s}")));
    c.check("SIGKILL kxdp", killed);
    let deadline = Instant::now() + Duration::from_secs(5);
    while c.kxdp.running() {
        assert!(Instant::now() < deadline, "kxdp survived SIGKILL");
        std::thread::sleep(Duration::from_millis(20));
    }

    // Policy-denied traffic stays denied, and so is everything else pods
    // would need kxdp for.
    c.denied("b1", "a2", 9090);
    c.denied("a1", "a2", 9091);
    c.denied("b1", "a1", 9092);
    // The outside cannot reach a pod through the node (dropped: a timeout,
    // not an unreachable route).
    let srv = tcp_echo_server(&c.pod("a1").ns, 9093, DENY_TIMEOUT * 2);
    let _srv = c.check("server in a1", srv);
    let r = tcp_connect_result(&c.topo.external, a1, 9093, DENY_TIMEOUT);
    let (res, _) = c.check("external -> a1", r);
    assert_eq!(
        res,
        Err(std::io::ErrorKind::TimedOut),
        "external host -> pod with kxdp dead"
    );

    // The node's own traffic: the outside reaches the node...
    let node = c.topo.node("node-a").expect("node-a");
    let node_ns_name = node.ns.name().to_owned();
    let srv = tcp_echo_server(&node.ns, 9094, IO_TIMEOUT);
    let srv = c.check("server in node-a", srv);
    let r = tcp_echo_client(&c.topo.external, node_ip, 9094, 64 * 1024, IO_TIMEOUT);
    c.check("external -> node-a", r);
    let r = srv.join().map_err(|_| "server panicked".to_string());
    let r = c.check("node-a server", r);
    c.check("node-a server", r);
    // ... and the node still reaches its pods (kubelet probes).
    let srv = tcp_echo_server(&c.pod("a2").ns, 9095, IO_TIMEOUT);
    let srv = c.check("server in a2", srv);
    let a2 = c.pod("a2").ip;
    let node = c.topo.node("node-a").expect("node-a");
    let r = tcp_echo_client(&node.ns, a2, 9095, 64 * 1024, IO_TIMEOUT);
    c.check(&format!("{node_ns_name} -> a2 with kxdp dead"), r);
    let r = srv.join().map_err(|_| "server panicked".to_string());
    let r = c.check("a2 server", r);
    c.check("a2 server", r);
}
