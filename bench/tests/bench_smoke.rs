//! `kxdp-bench --smoke` end to end: every mode of DESIGN §7 runs for about
//! a second on its own veth topology and must deliver packets to the sink.
//! Nothing is asserted about speed. Needs root and a built `kxdp` binary
//! next to `kxdp-bench` (`cargo build -p kxdp` with the same profile);
//! prints SKIP otherwise.

use std::path::PathBuf;
use std::process::Command;

#[test]
fn smoke_every_mode_delivers_packets() {
    if kxdp_topology::skip_if_unsupported("smoke_every_mode_delivers_packets") {
        return;
    }
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_kxdp-bench"));
    let kxdp = bench.with_file_name("kxdp");
    if !kxdp.is_file() {
        eprintln!(
            "SKIP smoke_every_mode_delivers_packets: {} not built (cargo build -p kxdp)",
            kxdp.display()
        );
        return;
    }
    let out = std::env::temp_dir().join(format!("kxdp-bench-smoke-{}", std::process::id()));
    let run = Command::new(&bench)
        .args(["--smoke", "--out"])
        .arg(&out)
        .output()
        .expect("run kxdp-bench");
    let stderr = String::from_utf8_lossy(&run.stderr);
    let json = std::fs::read_to_string(out.join("kxdp-bench.json")).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&out);
    assert!(run.status.success(), "kxdp-bench --smoke failed:\n{stderr}");
    let v: serde_json::Value = serde_json::from_str(&json).expect("JSON result");
    let cases = v["cases"].as_array().expect("cases");
    // 7 modes: 4 without Services x 2 flow counts + 3 with 1 Services count x 2.
    assert_eq!(cases.len(), 14, "{json}");
    let modes: Vec<&str> = cases.iter().filter_map(|c| c["mode"].as_str()).collect();
    assert!(modes.contains(&"xdp-redirect"), "{modes:?}");
    for c in cases {
        let runs = c["runs"].as_array().expect("runs");
        assert!(!runs.is_empty(), "{c}");
        for r in runs {
            assert!(
                r["delivered"].as_u64().unwrap_or(0) > 0,
                "nothing delivered: {c}"
            );
        }
    }
    // node-a's kernel does not forward in xdp-redirect (ip_forward=0):
    // the program itself must have redirected what was delivered.
    for c in cases.iter().filter(|c| c["mode"] == "xdp-redirect") {
        let counters = c["dut_drops"].as_str().unwrap_or("");
        let redirected: u64 = counters
            .split_whitespace()
            .find_map(|w| w.strip_prefix("fwd_redirect="))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let delivered: u64 = c["runs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["delivered"].as_u64())
            .sum();
        assert!(
            redirected >= delivered && delivered > 0,
            "redirected {redirected}, delivered {delivered}: {counters}"
        );
    }
    assert!(stderr.contains("SMOKE OK"), "{stderr}");
}
