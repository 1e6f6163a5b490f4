//! `kxdp-bench --smoke-generators` end to end: each third-party generator
//! installed on this machine (trafgen, xdp-trafficgen, kernel pktgen)
//! drives the kernel-fwd mode for about a second on its own veth topology
//! and must deliver packets to the sink. A generator that cannot run here
//! (tool missing, its BPF object does not load on this kernel, no
//! `/proc/net/pktgen`) is reported as SKIPPED by the binary; one that runs
//! and delivers nothing fails. Needs root; prints SKIP otherwise or when
//! no external generator is installed (scripts/setup.sh installs trafgen
//! and xdp-trafficgen).

use std::path::PathBuf;
use std::process::Command;

#[test]
fn smoke_every_installed_generator_delivers_packets() {
    const NAME: &str = "smoke_every_installed_generator_delivers_packets";
    if kxdp_topology::skip_if_unsupported(NAME) {
        return;
    }
    let available: Vec<_> = kxdp_bench::harness::gen::third_party()
        .into_iter()
        .filter(|t| t.available)
        .map(|t| t.name)
        .collect();
    if available.is_empty() {
        eprintln!("SKIP {NAME}: no external generator installed (bash scripts/setup.sh)");
        return;
    }
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_kxdp-bench"));
    let out = std::env::temp_dir().join(format!("kxdp-bench-gens-{}", std::process::id()));
    let run = Command::new(&bench)
        .args(["--smoke-generators", "--out"])
        .arg(&out)
        .output()
        .expect("run kxdp-bench");
    let stderr = String::from_utf8_lossy(&run.stderr);
    let json = std::fs::read_to_string(out.join("kxdp-bench.json")).unwrap_or_default();
    let svg = out.join("throughput-1flows.svg").is_file();
    let _ = std::fs::remove_dir_all(&out);
    assert!(
        run.status.success(),
        "kxdp-bench --smoke-generators failed:\n{stderr}"
    );
    assert!(stderr.contains("SMOKE OK"), "{stderr}");
    assert!(svg, "no plot written:\n{stderr}");
    let v: serde_json::Value = serde_json::from_str(&json).expect("JSON result");
    let cases = v["cases"].as_array().expect("cases");
    assert_eq!(
        cases.len(),
        available.len(),
        "one case per installed generator: {json}"
    );
    let mut delivered_by = Vec::new();
    for c in cases {
        let generator = c["generator"].as_str().unwrap_or_default();
        match c["error"].as_str() {
            Some(e) => assert!(e.contains("generator unavailable:"), "{c}"),
            None => {
                let runs = c["runs"].as_array().expect("runs");
                assert!(!runs.is_empty(), "{c}");
                for r in runs {
                    assert!(
                        r["delivered"].as_u64().unwrap_or(0) > 0,
                        "nothing delivered: {c}"
                    );
                    assert!(r["sent"].as_u64().unwrap_or(0) > 0, "nothing sent: {c}");
                }
                delivered_by.push(generator.to_owned());
            }
        }
    }
    // trafgen runs on any kernel with AF_PACKET: when installed it must
    // have been one of the generators that delivered.
    if available.contains(&"trafgen") {
        assert!(
            delivered_by.iter().any(|g| g.starts_with("trafgen")),
            "trafgen installed but did not deliver: {delivered_by:?}\n{stderr}"
        );
    }
}
