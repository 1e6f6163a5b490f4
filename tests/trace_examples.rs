//! `kxdp trace` over deploy/examples: the JSON contract of DESIGN §4 and the
//! three journeys the examples exist to show (Service DNAT to a web pod,
//! NodePort from outside, VXLAN toward the other node).

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;

fn kxdp() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kxdp"));
    c.current_dir(env!("CARGO_MANIFEST_DIR"));
    c
}

fn trace(args: &[&str]) -> Value {
    let out = kxdp()
        .args([
            "trace",
            "--manifests",
            "deploy/examples",
            "--node",
            "node-a",
            "-o",
            "json",
        ])
        .args(args)
        .output()
        .expect("run kxdp");
    assert!(
        out.status.success(),
        "kxdp trace {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON output")
}

fn stage<'a>(v: &'a Value, name: &str) -> Option<&'a str> {
    v["stages"]
        .as_array()?
        .iter()
        .find(|s| s["stage"] == name)?["decision"]
        .as_str()
}

#[test]
fn pod_to_cluster_ip_is_dnated_to_a_web_pod() {
    let v = trace(&[
        "--from",
        "default/backend",
        "--to-service",
        "default/my-web-service",
        "--proto",
        "tcp",
        "--sport",
        "41000",
    ]);
    assert_eq!(v["verdict"], "forward", "{v:#}");
    assert_eq!(v["reason"], Value::Null);
    let p = &v["packet"];
    assert_eq!(p["src"], "10.244.1.4", "source untouched: {v:#}");
    assert_eq!(p["sport"], 41000);
    assert_eq!(p["dport"], 8080, "targetPort 8080: {v:#}");
    assert_eq!(p["proto"], "tcp");
    let dst = p["dst"].as_str().unwrap();
    assert!(
        dst == "10.244.1.2" || dst == "10.244.2.2",
        "a web pod, got {dst}"
    );
    assert!(
        stage(&v, "service")
            .unwrap()
            .contains("default/my-web-service"),
        "{v:#}"
    );
    // The web pod on node-b is reached through VXLAN, the one on node-a directly.
    if dst == "10.244.2.2" {
        assert_eq!(v["egress"]["kind"], "vxlan");
        assert_eq!(p["vxlan"]["outer_dst"], "192.168.50.2");
    } else {
        assert_eq!(v["egress"]["kind"], "pod");
    }
}

#[test]
fn node_port_from_outside_reaches_the_demo_pod() {
    let v = trace(&[
        "--src",
        "192.168.50.100",
        "--dst",
        "192.168.50.1",
        "--proto",
        "tcp",
        "--dport",
        "30080",
    ]);
    assert_eq!(v["verdict"], "forward", "{v:#}");
    assert_eq!(v["egress"]["kind"], "pod");
    let p = &v["packet"];
    assert_eq!(p["dst"], "10.244.1.3", "demo-1: {v:#}");
    assert_eq!(p["dport"], 8080);
    // externalTrafficPolicy Cluster: masqueraded so the reply comes back.
    assert_eq!(p["src"], "10.244.1.1", "{v:#}");
    assert!(stage(&v, "service").unwrap().contains("example-nodeport"));
}

#[test]
fn pod_to_pod_on_the_other_node_is_encapsulated() {
    let v = trace(&[
        "--from",
        "default/web-1",
        "--to",
        "default/web-2",
        "--proto",
        "tcp",
        "--dport",
        "8080",
    ]);
    assert_eq!(v["verdict"], "forward", "{v:#}");
    assert_eq!(
        v["egress"],
        serde_json::json!({"interface": "eth0", "kind": "vxlan"})
    );
    let p = &v["packet"];
    assert_eq!(
        (p["src"].as_str(), p["dst"].as_str()),
        (Some("10.244.1.2"), Some("10.244.2.2"))
    );
    assert_eq!(
        p["vxlan"],
        serde_json::json!({"vni": 1, "outer_src": "192.168.50.1", "outer_dst": "192.168.50.2"})
    );
}

#[test]
fn service_without_endpoints_is_rejected() {
    let v = trace(&[
        "--from",
        "default/backend",
        "--to-service",
        "default/empty-service",
    ]);
    assert_eq!(v["verdict"], "reject", "{v:#}");
    assert_eq!(v["reason"], "service-no-endpoints");
    assert_eq!(v["packet"]["proto"], "icmp");
    assert_eq!(
        v["packet"]["dst"], "10.244.1.4",
        "the ICMP error goes back to the client"
    );
}

#[test]
fn traffic_for_the_node_itself_goes_to_the_host() {
    let v = trace(&[
        "--src",
        "192.168.50.100",
        "--dst",
        "192.168.50.1",
        "--proto",
        "tcp",
        "--dport",
        "22",
    ]);
    assert_eq!(v["verdict"], "host", "{v:#}");
    assert_eq!(v["egress"]["kind"], "host");
}

#[test]
fn batch_answers_every_line_in_order_and_reports_bad_lines() {
    let mut child = kxdp()
        .args([
            "trace",
            "--manifests",
            "deploy/examples",
            "--node",
            "node-a",
            "--batch",
            "-",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let input = concat!(
        r#"{"from":"default/web-1","to":"default/web-2","proto":"tcp","dport":8080}"#,
        "\n",
        r#"{"nonsense":true}"#,
        "\n",
        r#"{"src":"192.168.50.100","dst":"192.168.50.1","proto":"udp","dport":30080}"#,
        "\n",
        r#"{"from":"default/backend","to_service":"default/my-web-service"}"#,
        "\n",
    );
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "a bad line makes the exit status 1"
    );
    let lines: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4);
    assert_eq!(lines[0]["egress"]["kind"], "vxlan");
    assert!(lines[1]["error"].as_str().unwrap().contains("line 2"));
    // NodePort 30080 is TCP only: UDP to the node goes to the host.
    assert_eq!(lines[2]["verdict"], "host");
    assert_eq!(lines[3]["verdict"], "forward");
}

#[test]
fn bad_flags_give_a_clear_error() {
    let out = kxdp()
        .args([
            "trace",
            "--manifests",
            "deploy/examples",
            "--node",
            "node-a",
            "--from",
            "default/web-2",
            "--dst",
            "10.1.1.1",
            "--proto",
            "udp",
            "--dport",
            "1",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("runs on node") && err.contains("node-b"),
        "{err}"
    );
    let out = kxdp()
        .args([
            "trace",
            "--manifests",
            "/nonexistent",
            "--node",
            "node-a",
            "--dst",
            "1.2.3.4",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = kxdp()
        .args([
            "trace",
            "--manifests",
            "deploy/examples",
            "--node",
            "node-z",
            "--dst",
            "1.2.3.4",
            "--proto",
            "udp",
            "--dport",
            "1",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("node-z"));
}

#[test]
fn db_allows_backend_and_denies_frontend() {
    let v = trace(&[
        "--from",
        "default/backend",
        "--to-service",
        "default/db",
        "--proto",
        "tcp",
    ]);
    assert_eq!(v["verdict"], "forward", "{v:#}");
    assert!(
        stage(&v, "policy-ingress")
            .unwrap()
            .contains("default/db-allow-backend ingress rule 0"),
        "{v:#}"
    );
    // frontend runs on node-b; its packet reaches node-a over VXLAN.
    let v = trace(&[
        "--src",
        "10.244.2.3",
        "--dst",
        "10.244.1.5",
        "--proto",
        "tcp",
        "--dport",
        "5432",
    ]);
    assert_eq!(v["verdict"], "drop", "{v:#}");
    assert_eq!(v["reason"], "policy-denied-ingress");
    assert_eq!(v["egress"], Value::Null);
    // The explanation `kxdp get policies` prints: db is isolated for
    // ingress by db-allow-backend, which admits role=backend on 5432 only.
    let ex = &v["policies"][0];
    assert_eq!(ex["pod"], "default/db", "{v:#}");
    assert_eq!(ex["direction"], "ingress");
    assert_eq!(ex["isolated"], true);
    assert_eq!(ex["policies"][0]["policy"], "default/db-allow-backend");
}
