//! `kxdp top`: live per-worker packet rates and drops by reason.
//!
//! ```text
//! kxdp top [--admin 127.0.0.1:10256] [--interval 1s] [--count N]
//! ```
//!
//! Samples `/debug/stats` every `--interval` and prints, per worker, the
//! packets per second received and forwarded by verdict, handed over to
//! and from other workers (`--workers N`), then the drop rates by reason
//! (the pipeline's drop reasons plus the worker loop's own drops:
//! `handoff_full`, `handoff_no_frame`, `handoff_no_port`,
//! `no_egress_port`, `neighbour_park_full`, `frame_errors`), computed from the difference of two successive samples
//! over the time between the workers' own snapshot stamps (`published_ns`,
//! the dataplane's monotonic clock; the daemon's `now_ns` when a worker has
//! not published yet). On a terminal each frame clears the screen first.
//! With `--count N` it stops after N frames; otherwise it runs until
//! interrupted. Counters that went backwards (a restarted daemon) restart
//! the rate computation instead of printing nonsense.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::Args;
use serde_json::Value;

use crate::get::{fetch_json, Table};

#[derive(Args, Debug)]
pub struct TopArgs {
    /// The daemon's admin API address.
    #[arg(long, default_value = kxdp_control::admin::DEFAULT_ADMIN_ADDR)]
    admin: String,
    /// Time between samples: `500ms`, `1s`, `2` (seconds).
    #[arg(long, default_value = "1s", value_parser = parse_interval)]
    interval: Duration,
    /// Frames to print before exiting (default: until interrupted).
    #[arg(long)]
    count: Option<u64>,
}

/// Parses `500ms`, `1s`, `1.5s` or a bare number of seconds; 10 ms to 1 h.
pub fn parse_interval(s: &str) -> std::result::Result<Duration, String> {
    let t = s.trim();
    let (num, scale) = if let Some(n) = t.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else {
        (t, 1.0)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?}: expected e.g. 500ms, 1s or 2"))?;
    let secs = v * scale;
    if !secs.is_finite() || !(0.01..=3600.0).contains(&secs) {
        return Err(format!("{s:?}: must be between 10ms and 1h"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Entry point of `kxdp top`.
pub fn run(args: TopArgs) -> Result<ExitCode> {
    let clear = std::io::stdout().is_terminal();
    let mut prev = fetch_json(&args.admin, "/debug/stats")?;
    let mut printed: u64 = 0;
    while args.count.is_none_or(|n| printed < n) {
        std::thread::sleep(args.interval);
        let cur = fetch_json(&args.admin, "/debug/stats")?;
        let mut out = String::new();
        if clear {
            // ANSI: erase the screen, cursor home.
            out.push_str("\x1b[2J\x1b[H");
        }
        out.push_str(&frame(&prev, &cur, &args.admin));
        let mut stdout = std::io::stdout().lock();
        if stdout
            .write_all(out.as_bytes())
            .and_then(|()| stdout.flush())
            .is_err()
        {
            // stdout closed (`| head`): done.
            break;
        }
        prev = cur;
        printed += 1;
    }
    Ok(ExitCode::SUCCESS)
}

fn workers(v: &Value) -> &[Value] {
    v.get("workers")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

fn counter(v: &Value, path: &[&str]) -> u64 {
    let mut cur = v;
    for p in path {
        match cur.get(p) {
            Some(next) => cur = next,
            None => return 0,
        }
    }
    cur.as_u64().unwrap_or(0)
}

/// Seconds between two snapshots of one worker (0 when unknown).
fn elapsed(prev_all: &Value, prev: &Value, cur_all: &Value, cur: &Value) -> f64 {
    let (a, b) = match (
        counter(prev, &["published_ns"]),
        counter(cur, &["published_ns"]),
    ) {
        (a, b) if a > 0 && b > a => (a, b),
        _ => (
            counter(prev_all, &["now_ns"]),
            counter(cur_all, &["now_ns"]),
        ),
    };
    b.saturating_sub(a) as f64 / 1e9
}

fn rate(prev: u64, cur: u64, secs: f64) -> Option<f64> {
    (secs > 0.0 && cur >= prev).then(|| (cur - prev) as f64 / secs)
}

fn fmt_rate(r: Option<f64>) -> String {
    match r {
        None => "-".into(),
        Some(r) if r >= 10_000.0 => format!("{:.0}k", r / 1000.0),
        Some(r) if r >= 100.0 => format!("{r:.0}"),
        Some(r) => format!("{r:.1}"),
    }
}

/// Frames the worker loop drops (after or beside the pipeline), by their
/// `/debug/stats` `loop` key.
const LOOP_DROPS: [&str; 6] = [
    "handoff_full",
    "handoff_no_frame",
    "handoff_no_port",
    "no_egress_port",
    "neighbour_park_full",
    "frame_errors",
];

/// One screen computed from two `/debug/stats` samples.
pub fn frame(prev: &Value, cur: &Value, admin: &str) -> String {
    const FWD: [&str; 5] = ["to-pod", "vxlan", "uplink", "reply", "to-host"];
    let mut t = Table::new(&[
        "WORKER",
        "RX/s",
        "TO-POD/s",
        "VXLAN/s",
        "UPLINK/s",
        "REPLY/s",
        "TO-HOST/s",
        "DROP/s",
        "HANDOFF-OUT/s",
        "HANDOFF-IN/s",
    ]);
    let mut drops: Vec<(String, String, f64)> = Vec::new();
    for w in workers(cur) {
        let id = counter(w, &["worker"]);
        let Some(p) = workers(prev).iter().find(|p| counter(p, &["worker"]) == id) else {
            t.row(vec![id.to_string(), "-".into()]);
            continue;
        };
        let secs = elapsed(prev, p, cur, w);
        let mut row = vec![
            id.to_string(),
            fmt_rate(rate(counter(p, &["rx"]), counter(w, &["rx"]), secs)),
        ];
        for k in FWD {
            row.push(fmt_rate(rate(
                counter(p, &["forwarded", k]),
                counter(w, &["forwarded", k]),
                secs,
            )));
        }
        let mut total = Some(0.0);
        if let Some(reasons) = w.get("drops").and_then(Value::as_object) {
            for (reason, n) in reasons {
                let before = counter(p, &["drops", reason]);
                let r = rate(before, n.as_u64().unwrap_or(0), secs);
                total = total.zip(r).map(|(a, b)| a + b);
                if let Some(r) = r.filter(|r| *r > 0.0) {
                    drops.push((id.to_string(), reason.clone(), r));
                }
            }
        }
        for reason in LOOP_DROPS {
            let r = rate(
                counter(p, &["loop", reason]),
                counter(w, &["loop", reason]),
                secs,
            );
            total = total.zip(r).map(|(a, b)| a + b);
            if let Some(r) = r.filter(|r| *r > 0.0) {
                drops.push((id.to_string(), reason.to_owned(), r));
            }
        }
        row.push(fmt_rate(total));
        for k in ["handoff_sent", "handoff_received"] {
            row.push(fmt_rate(rate(
                counter(p, &["loop", k]),
                counter(w, &["loop", k]),
                secs,
            )));
        }
        t.row(row);
    }
    drops.sort_by(|a, b| b.2.total_cmp(&a.2).then_with(|| a.1.cmp(&b.1)));
    let mut out = format!("kxdp top — {admin}\n\n");
    out.push_str(&t.render());
    out.push('\n');
    if drops.is_empty() {
        out.push_str("no drops\n");
    } else {
        let mut d = Table::new(&["WORKER", "DROP-REASON", "PACKETS/s"]);
        for (w, reason, r) in drops {
            d.row(vec![w, reason, fmt_rate(Some(r))]);
        }
        out.push_str(&d.render());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(published_ns: u64, rx: u64, to_pod: u64, denied: u64) -> Value {
        serde_json::json!({
            "now_ns": published_ns + 1_000,
            "workers": [{
                "worker": 0,
                "published_ns": published_ns,
                "rx": rx,
                "forwarded": {"to-pod": to_pod, "vxlan": 0, "uplink": 0, "reply": 0, "to-host": 0},
                "drops": {"policy-denied-ingress": denied, "no-route": 3},
            }]
        })
    }

    #[test]
    fn rates_come_from_the_difference_over_snapshot_time() {
        // 2 s between snapshots: 20000 rx -> 10k/s, 1000 to-pod -> 500/s,
        // 30 denied -> 15/s; no-route unchanged -> not listed.
        let prev = sample(1_000_000_000, 100, 50, 10);
        let cur = sample(3_000_000_000, 20_100, 1_050, 40);
        let out = frame(&prev, &cur, "127.0.0.1:10256");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "kxdp top — 127.0.0.1:10256");
        assert_eq!(
            lines[2],
            "WORKER  RX/s  TO-POD/s  VXLAN/s  UPLINK/s  REPLY/s  TO-HOST/s  DROP/s  HANDOFF-OUT/s  HANDOFF-IN/s"
        );
        assert_eq!(
            lines[3],
            "0       10k   500       0.0      0.0       0.0      0.0        15.0    0.0            0.0"
        );
        assert_eq!(lines[5], "WORKER  DROP-REASON            PACKETS/s");
        assert_eq!(lines[6], "0       policy-denied-ingress  15.0");
        assert_eq!(lines.len(), 7, "{out}");
    }

    #[test]
    fn two_workers_get_a_row_each_with_hand_offs_and_loop_drops() {
        let w = |id: u64, ns: u64, rx: u64, sent: u64, recv: u64, full: u64| {
            serde_json::json!({
                "worker": id,
                "published_ns": ns,
                "rx": rx,
                "forwarded": {"to-pod": 0, "vxlan": 0, "uplink": 0, "reply": 0, "to-host": 0},
                "drops": {},
                "loop": {"handoff_sent": sent, "handoff_received": recv, "handoff_full": full},
            })
        };
        let prev = serde_json::json!({"now_ns": 1, "workers": [
            w(0, 1_000_000_000, 0, 0, 0, 0), w(1, 1_000_000_000, 0, 0, 0, 0)]});
        // 1 s later: worker 1 handed 300 frames to worker 0, 20 refused.
        let cur = serde_json::json!({"now_ns": 2, "workers": [
            w(0, 2_000_000_000, 100, 0, 300, 0), w(1, 2_000_000_000, 320, 300, 0, 20)]});
        let out = frame(&prev, &cur, "x");
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[3].starts_with("0       100 "), "{out}");
        assert!(lines[3].ends_with("0.0     0.0            300"), "{out}");
        assert!(lines[4].starts_with("1       320 "), "{out}");
        assert!(lines[4].ends_with("20.0    300            0.0"), "{out}");
        assert_eq!(lines[6], "WORKER  DROP-REASON   PACKETS/s", "{out}");
        assert_eq!(lines[7], "1       handoff_full  20.0", "{out}");
    }

    #[test]
    fn a_restarted_daemon_prints_no_negative_rates() {
        let prev = sample(5_000_000_000, 1_000, 500, 10);
        let cur = sample(6_000_000_000, 10, 5, 0);
        let out = frame(&prev, &cur, "x");
        let row = out.lines().nth(3).unwrap();
        assert!(row.starts_with("0       -"), "{out}");
        assert!(!out.contains("-1"), "{out}");
    }

    #[test]
    fn quiet_dataplane_says_no_drops() {
        let prev = sample(1_000_000_000, 0, 0, 0);
        let cur = sample(2_000_000_000, 0, 0, 0);
        assert!(frame(&prev, &cur, "x").ends_with("no drops\n"));
        assert!(frame(&Value::Null, &Value::Null, "x").contains("WORKER"));
    }

    #[test]
    fn intervals_parse() {
        assert_eq!(parse_interval("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_interval("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_interval("2"), Ok(Duration::from_secs(2)));
        assert!(parse_interval("0s").is_err());
        assert!(parse_interval("abc").is_err());
        assert!(parse_interval("-1s").is_err());
        assert!(parse_interval("2h").is_err());
    }
}
