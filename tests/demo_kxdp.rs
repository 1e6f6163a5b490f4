//! `kxdp demo` end to end: the whole demo runs and every probe passes;
//! Ctrl-C in the middle leaves nothing behind.
//!
//! Run as root (prints SKIP otherwise); needs iproute2, ethtool and
//! dnsmasq (scripts/setup.sh installs them). The two tests run one after
//! the other (each demo builds a dozen namespaces and two kxdp nodes, and
//! the leak check must not see the other test's demo). Every wait is
//! bounded; a demo that overruns is killed and the test fails.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kxdp_topology::{netns_matching, skip_if_unsupported};

/// One demo at a time.
static SERIAL: Mutex<()> = Mutex::new(());
/// The demo must finish well under a minute; this bounds a broken one.
const DEMO_DEADLINE: Duration = Duration::from_secs(90);

/// A running `kxdp demo`: its stdout lines arrive on `lines`; killed on
/// drop if still running.
struct DemoRun {
    child: Child,
    lines: Receiver<String>,
    output: Vec<String>,
}

impl DemoRun {
    fn start(args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_kxdp"))
            .arg("demo")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start kxdp demo");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        DemoRun {
            child,
            lines,
            output: Vec::new(),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Collects output until a line contains `needle` (true) or the
    /// deadline passes / output ends (false).
    fn wait_for_line(&mut self, needle: &str, deadline: Instant) -> bool {
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    let hit = l.contains(needle);
                    self.output.push(l);
                    if hit {
                        return true;
                    }
                }
                Err(_) => return false,
            }
        }
        false
    }

    /// Waits for exit (bounded); the status, or None after killing it.
    fn wait(&mut self, deadline: Instant) -> Option<ExitStatus> {
        loop {
            while let Ok(l) = self.lines.try_recv() {
                self.output.push(l);
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                // The rest of the output.
                while let Ok(l) = self.lines.recv_timeout(Duration::from_millis(200)) {
                    self.output.push(l);
                }
                return Some(status);
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn text(&self) -> String {
        self.output.join("\n")
    }
}

impl Drop for DemoRun {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            // SIGINT first: the demo cleans up after itself.
            let _ = Command::new("kill")
                .args(["-INT", &self.child.id().to_string()])
                .output();
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if matches!(self.child.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// What a demo with process id `pid` could leave behind: its namespaces,
/// its scratch directory, its processes (kxdp run's command line names the
/// scratch directory; the pods' servers are `kxdp demo-serve`).
fn leftovers(pid: u32) -> Vec<String> {
    let tag = format!("kxdemo{pid}");
    let mut left: Vec<String> = netns_matching(&format!("{tag}-"))
        .into_iter()
        .map(|n| format!("namespace {n}"))
        .collect();
    let dir = std::env::temp_dir().join(&tag);
    if dir.exists() {
        left.push(format!("directory {}", dir.display()));
    }
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for e in entries.flatten() {
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(&tag) || cmdline.contains("demo-serve") {
                left.push(format!(
                    "process {}: {cmdline}",
                    e.file_name().to_string_lossy()
                ));
            }
        }
    }
    left
}

/// Entries of /sys/fs/bpf named `kxdp*` (pins), and veths of the caller's
/// namespace: the demo must add none of either.
fn host_state() -> (Vec<String>, String) {
    let mut pins: Vec<String> = std::fs::read_dir("/sys/fs/bpf")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("kxdp"))
                .collect()
        })
        .unwrap_or_default();
    pins.sort();
    let veths = Command::new("ip")
        .args(["-o", "link", "show", "type", "veth"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    (pins, veths)
}

fn dnsmasq_installed() -> bool {
    ["/usr/sbin/dnsmasq", "/sbin/dnsmasq", "/usr/bin/dnsmasq"]
        .iter()
        .any(|p| std::path::Path::new(p).exists())
}

#[test]
fn demo_runs_and_every_probe_passes() {
    if skip_if_unsupported("demo_runs_and_every_probe_passes") {
        return;
    }
    assert!(
        dnsmasq_installed(),
        "the demo's DNS pod needs dnsmasq: apt-get install dnsmasq-base (scripts/setup.sh)"
    );
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let before = host_state();
    let t0 = Instant::now();
    let mut demo = DemoRun::start(&[]);
    let status = demo.wait(t0 + DEMO_DEADLINE);
    let took = t0.elapsed();
    let text = demo.text();
    eprintln!("--- kxdp demo output ({took:?}) ---\n{text}");
    let status =
        status.unwrap_or_else(|| panic!("kxdp demo still running after {DEMO_DEADLINE:?}"));
    assert_eq!(status.code(), Some(0), "exit status {status}");
    assert!(took < Duration::from_secs(60), "the demo took {took:?}");

    // The table: a header, then one row per probe, all PASS.
    let header = text
        .lines()
        .position(|l| {
            l.starts_with("PROBE")
                && l.contains("EXPECTED")
                && l.contains("GOT")
                && l.contains("RESULT")
        })
        .expect("the table header");
    let rows: Vec<&str> = text
        .lines()
        .skip(header + 2)
        .take_while(|l| l.ends_with("PASS") || l.ends_with("FAIL"))
        .collect();
    let expect_rows = [
        "pod -> pod across nodes (VXLAN): backend -> web-2 10.244.2.2:8080",
        "pod -> pod across nodes (VXLAN): frontend -> web-1 10.244.1.2:8080",
        "pod -> ClusterIP: backend -> my-web-service 10.96.0.10:80",
        "pod -> DNS name: backend -> my-web-service.default.svc.cluster.local:80 (DNS via kube-dns 10.96.0.53)",
        "external -> NodePort: 192.168.50.100 -> node-a 192.168.50.1:30080",
        "external -> NodePort: 192.168.50.100 -> node-b 192.168.50.2:30080",
        "policy allows: backend -> db 10.96.0.30:5432",
        "policy denies: frontend -> db 10.96.0.30:5432",
        "no endpoints: backend -> empty-service 10.96.0.40:80",
    ];
    assert_eq!(
        rows.len(),
        expect_rows.len(),
        "probe rows:\n{}",
        rows.join("\n")
    );
    for (row, want) in rows.iter().zip(expect_rows) {
        assert!(
            row.starts_with(want),
            "row {row:?} should start with {want:?}"
        );
        assert!(row.ends_with("PASS"), "{row}");
    }
    // What the rows show: who answered, the DNS answer, the refusal.
    let row = |prefix: &str| {
        rows.iter()
            .find(|r| r.starts_with(prefix))
            .copied()
            .unwrap_or_default()
    };
    assert!(
        row("pod -> pod across nodes (VXLAN): backend").contains("HTTP 200 from web-2 (node-b)")
    );
    assert!(row("pod -> DNS name").contains("10.96.0.10 -> web-"));
    assert!(row("external -> NodePort: 192.168.50.100 -> node-b")
        .contains("HTTP 200 from demo-1 (node-a)"));
    assert!(row("policy denies").contains("timed out"));
    assert!(row("no endpoints").contains("connection refused in"));
    assert!(text.contains("9/9 probes passed"), "{text}");

    // Live counters of both nodes: traffic went through kxdp.
    for node in ["node-a", "node-b"] {
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with(node) && l.contains("forwarded:"))
            .unwrap_or_else(|| panic!("no counters for {node}"));
        assert!(line.contains("to-pod"), "{line}");
        assert!(line.contains("vxlan"), "{line}");
    }

    let left = leftovers(demo.pid());
    assert!(left.is_empty(), "left behind: {left:#?}");
    assert_eq!(host_state(), before, "pins or root-namespace veths changed");
}

#[test]
fn demo_interrupted_leaves_nothing_behind() {
    if skip_if_unsupported("demo_interrupted_leaves_nothing_behind") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let before = host_state();
    let t0 = Instant::now();
    let mut demo = DemoRun::start(&[]);
    // Mid-demo: topology built, servers up, kxdp starting on both nodes.
    let reached = demo.wait_for_line("starting `kxdp run`", t0 + DEMO_DEADLINE);
    assert!(reached, "the demo never started kxdp:\n{}", demo.text());
    let pid = demo.pid();
    assert!(
        !netns_matching(&format!("kxdemo{pid}-")).is_empty(),
        "the demo's namespaces exist while it runs"
    );
    std::thread::sleep(Duration::from_millis(300));
    let _ = Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .output();
    let status = demo
        .wait(Instant::now() + Duration::from_secs(30))
        .unwrap_or_else(|| panic!("kxdp demo ignored SIGINT:\n{}", demo.text()));
    let text = demo.text();
    assert_eq!(status.code(), Some(130), "exit status {status}:\n{text}");
    assert!(text.contains("interrupted"), "{text}");
    let left = leftovers(pid);
    assert!(left.is_empty(), "left behind: {left:#?}");
    assert_eq!(host_state(), before, "pins or root-namespace veths changed");
}
