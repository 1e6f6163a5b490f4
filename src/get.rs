//! `kxdp get`: what a running daemon serves, read from its admin API.
//!
//! ```text
//! kxdp get services|endpoints|pods|policies|nodes|conntrack|stats
//!          [--admin 127.0.0.1:10256] [-o table|json] [--limit N]
//! ```
//!
//! | resource    | admin endpoint            |
//! |-------------|---------------------------|
//! | `services`, `endpoints` | `/debug/services` |
//! | `pods`, `nodes` | `/debug/tables`       |
//! | `policies`  | `/debug/policies` (`PolicyExplanation`s, the type `kxdp trace` explains with) |
//! | `conntrack` | `/debug/conntrack?limit=N` |
//! | `stats`     | `/debug/stats`            |
//!
//! `-o json` prints the endpoint's JSON as is (pretty-printed); `-o table`
//! (the default) renders it with [`render`], a pure function of the JSON
//! (unit-tested against canned bodies). The HTTP client is a minimal
//! HTTP/1.0 GET over a `TcpStream` with timeouts: the admin API is local
//! and small, and the binary needs no HTTP client library for it.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, ValueEnum};
use serde_json::Value;

/// Connect, read and write timeout of one admin request.
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest admin response read (a 100k-entry conntrack dump fits).
const MAX_BODY: u64 = 256 * 1024 * 1024;

/// What `kxdp get` lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Resource {
    Services,
    Endpoints,
    Pods,
    Policies,
    Nodes,
    Conntrack,
    Stats,
}

/// Output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Args, Debug)]
pub struct GetArgs {
    /// What to list.
    #[arg(value_enum)]
    what: Resource,
    /// The daemon's admin API address.
    #[arg(long, default_value = kxdp_control::admin::DEFAULT_ADMIN_ADDR)]
    admin: String,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Table)]
    output: Output,
    /// conntrack: most entries to fetch.
    #[arg(long, default_value_t = kxdp_control::admin::DEFAULT_CONNTRACK_LIMIT)]
    limit: usize,
}

/// The admin path serving `what`.
pub fn path_of(what: Resource, limit: usize) -> String {
    match what {
        Resource::Services | Resource::Endpoints => "/debug/services".into(),
        Resource::Pods | Resource::Nodes => "/debug/tables".into(),
        Resource::Policies => "/debug/policies".into(),
        Resource::Conntrack => format!("/debug/conntrack?limit={limit}"),
        Resource::Stats => "/debug/stats".into(),
    }
}

/// `GET path` on the admin API at `addr`; the body of a 200 answer as JSON.
pub fn fetch_json(addr: &str, path: &str) -> Result<Value> {
    let sock: SocketAddr = addr
        .to_socket_addrs()
        .with_context(|| format!("admin address {addr:?}"))?
        .next()
        .ok_or_else(|| anyhow!("admin address {addr:?} resolves to nothing"))?;
    let mut s = TcpStream::connect_timeout(&sock, HTTP_TIMEOUT).with_context(|| {
        format!("connecting to the kxdp admin API at {sock} (is `kxdp run` running there?)")
    })?;
    s.set_read_timeout(Some(HTTP_TIMEOUT))?;
    s.set_write_timeout(Some(HTTP_TIMEOUT))?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {sock}\r\nAccept: application/json\r\n\r\n"
    )
    .with_context(|| format!("sending GET {path}"))?;
    let mut raw = Vec::new();
    s.take(MAX_BODY)
        .read_to_end(&mut raw)
        .with_context(|| format!("reading GET {path}"))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("GET {path}: malformed HTTP answer"))?;
    let status = head.lines().next().unwrap_or("");
    let code = status.split_whitespace().nth(1).unwrap_or("");
    let json: Option<Value> = serde_json::from_str(body).ok();
    if code != "200" {
        let why = json
            .as_ref()
            .and_then(|v| v.get("error")?.as_str().map(str::to_owned))
            .unwrap_or_else(|| body.trim().to_owned());
        bail!("GET {path}: {status}: {why}");
    }
    json.ok_or_else(|| anyhow!("GET {path}: the answer is not JSON"))
}

/// Entry point of `kxdp get`.
pub fn run(args: GetArgs) -> Result<ExitCode> {
    let v = fetch_json(&args.admin, &path_of(args.what, args.limit))?;
    let out = match args.output {
        Output::Json => {
            let mut s = serde_json::to_string_pretty(&v)?;
            s.push('\n');
            s
        }
        Output::Table => render(args.what, &v)?,
    };
    let mut stdout = std::io::stdout().lock();
    // A closed pipe (`| head`) is not an error worth reporting.
    let _ = stdout.write_all(out.as_bytes());
    Ok(ExitCode::SUCCESS)
}

/// A text table: left-aligned columns two spaces apart, like kubectl.
#[derive(Debug, Default)]
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers.
    pub fn new(headers: &[&str]) -> Self {
        Table {
            rows: vec![headers.iter().map(|h| (*h).to_owned()).collect()],
        }
    }

    /// Adds a row (missing cells print empty, extra cells are kept).
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table as text, one line per row.
    pub fn render(&self) -> String {
        let cols = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let mut widths = vec![0usize; cols];
        for r in &self.rows {
            for (w, c) in widths.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count());
            }
        }
        let mut out = String::new();
        for r in &self.rows {
            let mut line = String::new();
            for (i, c) in r.iter().enumerate() {
                if i + 1 == r.len() {
                    line.push_str(c);
                } else {
                    let w = widths.get(i).copied().unwrap_or(0);
                    let _ = write!(line, "{c:<w$}  ");
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "<none>".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn arr<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

fn u(v: &Value, key: &str) -> u64 {
    v.get(key).and_then(Value::as_u64).unwrap_or(0)
}

fn tuple(t: &Value) -> String {
    format!(
        "{}:{} -> {}:{}",
        s(&t["src"]),
        s(&t["sport"]),
        s(&t["dst"]),
        s(&t["dport"])
    )
}

fn proto_name(n: u64) -> String {
    match n {
        1 => "icmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        132 => "sctp".into(),
        n => n.to_string(),
    }
}

fn service_name(svc: &Value) -> String {
    let port = match svc["port_name"].as_str() {
        Some(p) if !p.is_empty() => p.to_owned(),
        _ => s(&svc["port"]),
    };
    format!("{}/{}:{}", s(&svc["namespace"]), s(&svc["name"]), port)
}

/// Renders the admin JSON `v` for `what` as a table.
pub fn render(what: Resource, v: &Value) -> Result<String> {
    let out = match what {
        Resource::Services => {
            let mut t = Table::new(&["SERVICE", "PROTO", "FRONTENDS", "NODE-PORT", "ENDPOINTS"]);
            for svc in arr(v, "services") {
                let fe: Vec<String> = arr(svc, "frontends")
                    .iter()
                    .map(|f| format!("{}:{}({})", s(&f["ip"]), s(&f["port"]), s(&f["kind"])))
                    .collect();
                t.row(vec![
                    service_name(svc),
                    s(&svc["proto"]),
                    if fe.is_empty() {
                        "<none>".into()
                    } else {
                        fe.join(",")
                    },
                    s(&svc["node_port"]),
                    arr(svc, "endpoints").len().to_string(),
                ]);
            }
            t.render()
        }
        Resource::Endpoints => {
            let mut t = Table::new(&["SERVICE", "ENDPOINT", "LOCAL"]);
            for svc in arr(v, "services") {
                let eps = arr(svc, "endpoints");
                if eps.is_empty() {
                    t.row(vec![service_name(svc), "<none>".into(), String::new()]);
                }
                for ep in eps {
                    t.row(vec![
                        service_name(svc),
                        format!("{}:{}", s(&ep["ip"]), s(&ep["port"])),
                        s(&ep["local"]),
                    ]);
                }
            }
            t.render()
        }
        Resource::Pods => {
            let mut t = Table::new(&["POD", "IP", "INTERFACE", "POD-MAC", "SLOT"]);
            for p in arr(&v["pods"], "pods") {
                let (iface, mac) = match p.get("interface") {
                    Some(i) if !i.is_null() => (
                        format!("{}({})", s(&i["name"]), s(&i["ifindex"])),
                        s(&i["pod_mac"]),
                    ),
                    _ => ("<none>".into(), "<none>".into()),
                };
                t.row(vec![
                    format!("{}/{}", s(&p["namespace"]), s(&p["name"])),
                    s(&p["ip"]),
                    iface,
                    mac,
                    s(&p["policy_slot"]),
                ]);
            }
            t.render()
        }
        Resource::Nodes => {
            let mut t = Table::new(&["NODE", "WHERE", "ADDRESS", "POD-CIDRS", "VTEP-MAC"]);
            let n = &v["node"];
            let ips: Vec<String> = arr(n, "node_ips").iter().map(s).collect();
            t.row(vec![
                s(&n["node_name"]),
                "this node".into(),
                ips.join(","),
                s(&n["pod_cidr"]),
                s(&n["vtep_mac"]),
            ]);
            let routes = &v["routes"];
            let nodes = arr(routes, "nodes");
            for (i, rn) in nodes.iter().enumerate() {
                let cidrs: Vec<String> = arr(routes, "routes")
                    .iter()
                    .filter(|r| r.get(1).and_then(Value::as_u64) == Some(i as u64))
                    .filter_map(|r| r.get(0).map(s))
                    .collect();
                t.row(vec![
                    s(&rn["name"]),
                    "vxlan".into(),
                    s(&rn["vtep_ip"]),
                    if cidrs.is_empty() {
                        "<none>".into()
                    } else {
                        cidrs.join(",")
                    },
                    s(&rn["vtep_mac"]),
                ]);
            }
            t.render()
        }
        Resource::Policies => {
            let mut t = Table::new(&["POD", "DIRECTION", "ISOLATED", "POLICY", "RULES"]);
            for e in arr(v, "policies") {
                let pod = s(&e["pod"]);
                let dir = s(&e["direction"]);
                let isolated = s(&e["isolated"]);
                let pols = arr(e, "policies");
                if pols.is_empty() {
                    t.row(vec![
                        pod.clone(),
                        dir.clone(),
                        isolated.clone(),
                        "-".into(),
                        "-".into(),
                    ]);
                }
                for p in pols {
                    let rules: Vec<String> = arr(p, "rules")
                        .iter()
                        .map(|r| format!("#{} {}", s(&r["index"]), s(&r["summary"])))
                        .collect();
                    t.row(vec![
                        pod.clone(),
                        dir.clone(),
                        isolated.clone(),
                        s(&p["policy"]),
                        if rules.is_empty() {
                            "(allows nothing)".into()
                        } else {
                            rules.join("; ")
                        },
                    ]);
                }
            }
            t.render()
        }
        Resource::Conntrack => {
            let mut t = Table::new(&["PROTO", "ORIGINAL", "REPLY", "STATE", "FLAGS", "EXPIRES"]);
            for e in arr(v, "entries") {
                let flags: Vec<String> = arr(e, "flags").iter().map(s).collect();
                t.row(vec![
                    proto_name(u(&e["original"], "proto")),
                    tuple(&e["original"]),
                    tuple(&e["reply"]),
                    s(&e["state"]),
                    if flags.is_empty() {
                        "-".into()
                    } else {
                        flags.join(",")
                    },
                    format!("{:.1}s", u(e, "expires_in_ms") as f64 / 1000.0),
                ]);
            }
            let mut out = t.render();
            let _ = writeln!(
                out,
                "{} of {} live entries (capacity {}){}",
                arr(v, "entries").len(),
                u(v, "count"),
                u(v, "capacity"),
                if v["truncated"].as_bool() == Some(true) {
                    "; raise --limit for more"
                } else {
                    ""
                }
            );
            out
        }
        Resource::Stats => {
            let mut t = Table::new(&[
                "WORKER", "RX", "TO-POD", "VXLAN", "UPLINK", "REPLY", "TO-HOST", "DROPS",
            ]);
            let mut drops = Table::new(&["WORKER", "DROP-REASON", "PACKETS"]);
            for w in arr(v, "workers") {
                let f = &w["forwarded"];
                let d = w.get("drops").and_then(Value::as_object);
                let total: u64 = d.map_or(0, |d| d.values().filter_map(Value::as_u64).sum());
                t.row(vec![
                    s(&w["worker"]),
                    u(w, "rx").to_string(),
                    u(f, "to-pod").to_string(),
                    u(f, "vxlan").to_string(),
                    u(f, "uplink").to_string(),
                    u(f, "reply").to_string(),
                    u(f, "to-host").to_string(),
                    total.to_string(),
                ]);
                for (reason, n) in d.into_iter().flatten() {
                    drops.row(vec![s(&w["worker"]), reason.clone(), s(n)]);
                }
            }
            let mut out = t.render();
            out.push('\n');
            out.push_str(&drops.render());
            out
        }
    };
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats_json() -> Value {
        serde_json::json!({
            "now_ns": 5_000_000_000u64,
            "workers": [{
                "worker": 0,
                "published_ns": 4_900_000_000u64,
                "rx": 1500,
                "forwarded": {"to-pod": 1000, "vxlan": 300, "uplink": 100, "reply": 50, "to-host": 2},
                "drops": {"policy-denied-ingress": 40, "no-route": 8},
                "loop": {},
                "free_frames": 100,
                "ports": []
            }]
        })
    }

    #[test]
    fn stats_table_lists_counters_and_drops_by_reason() {
        let out = render(Resource::Stats, &stats_json()).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0],
            "WORKER  RX    TO-POD  VXLAN  UPLINK  REPLY  TO-HOST  DROPS"
        );
        assert_eq!(
            lines[1],
            "0       1500  1000    300    100     50     2        48"
        );
        assert_eq!(lines[2], "");
        assert_eq!(lines[3], "WORKER  DROP-REASON            PACKETS");
        assert!(
            lines.contains(&"0       policy-denied-ingress  40"),
            "{out}"
        );
        assert!(lines.contains(&"0       no-route               8"), "{out}");
    }

    #[test]
    fn conntrack_table_shows_tuples_state_and_truncation() {
        let v = serde_json::json!({
            "count": 3, "capacity": 65536, "truncated": true,
            "entries": [{
                "original": {"src": "10.244.1.2", "dst": "10.96.0.11", "sport": 40000, "dport": 80, "proto": 6},
                "reply": {"src": "10.244.1.3", "dst": "10.244.1.2", "sport": 8080, "dport": 40000, "proto": 6},
                "state": "established", "flags": ["dnat"], "service_port": 0,
                "policy_generation": 4, "expires_in_ms": 86_399_500u64
            }]
        });
        let out = render(Resource::Conntrack, &v).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[1],
            "tcp    10.244.1.2:40000 -> 10.96.0.11:80  10.244.1.3:8080 -> 10.244.1.2:40000  established  dnat   86399.5s"
        );
        assert_eq!(
            lines[2],
            "1 of 3 live entries (capacity 65536); raise --limit for more"
        );
    }

    #[test]
    fn services_and_endpoints_tables() {
        let v = serde_json::json!({"generation": 3, "services": [
            {"namespace": "default", "name": "web", "port_name": "http", "proto": "tcp", "port": 80,
             "node_port": 30080,
             "frontends": [{"ip": "10.96.0.20", "port": 80, "kind": "cluster-ip"}],
             "endpoints": [{"ip": "10.244.1.3", "port": 8080, "local": true},
                           {"ip": "10.244.2.2", "port": 8080, "local": false}],
             "has_endpoints": true},
            {"namespace": "default", "name": "empty", "port_name": "", "proto": "udp", "port": 53,
             "node_port": null, "frontends": [], "endpoints": [], "has_endpoints": false}
        ]});
        let out = render(Resource::Services, &v).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        assert!(lines[1].starts_with("default/web:http  tcp    10.96.0.20:80(cluster-ip)  30080"));
        assert!(lines[1].ends_with("  2"), "{out}");
        assert!(lines[2].starts_with("default/empty:53"), "{out}");
        assert!(lines[2].contains("<none>"), "{out}");
        let out = render(Resource::Endpoints, &v).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 4, "{out}");
        assert_eq!(lines[1], "default/web:http  10.244.1.3:8080  true");
        assert_eq!(lines[3], "default/empty:53  <none>");
    }

    #[test]
    fn policies_table_names_policy_and_rules() {
        let v = serde_json::json!({"generation": 2, "policies": [
            {"slot": 0, "pod": "default/a2", "direction": "ingress", "isolated": true,
             "policies": [{"policy": "default/a2-ingress",
                           "rules": [{"rule": 7, "index": 0, "summary": "from app=a1 tcp/8080"}]}]},
            {"slot": 0, "pod": "default/a2", "direction": "egress", "isolated": false, "policies": []}
        ]});
        let out = render(Resource::Policies, &v).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[1],
            "default/a2  ingress    true      default/a2-ingress  #0 from app=a1 tcp/8080"
        );
        assert_eq!(
            lines[2],
            "default/a2  egress     false     -                   -"
        );
    }

    #[test]
    fn pods_and_nodes_tables_from_debug_tables() {
        let v = serde_json::json!({
            "generation": 1,
            "node": {"node_name": "node-a", "node_ips": ["192.168.50.1"], "pod_cidr": "10.244.1.0/24",
                     "vtep_mac": "0e:00:00:00:01:01"},
            "pods": {"pods": [{"ip": "10.244.1.2", "namespace": "default", "name": "a1",
                               "interface": {"name": "vetha1", "ifindex": 5, "host_mac": "0e:aa:00:00:00:02",
                                             "pod_mac": "0e:bb:00:00:00:02"},
                               "policy_slot": 0}]},
            "routes": {"nodes": [{"name": "node-b", "vtep_ip": "192.168.50.2", "vtep_mac": "0e:00:00:00:02:01"}],
                       "routes": [["10.244.2.0/24", 0]]}
        });
        let out = render(Resource::Pods, &v).unwrap();
        assert_eq!(
            out.lines().nth(1),
            Some("default/a1  10.244.1.2  vetha1(5)  0e:bb:00:00:00:02  0")
        );
        let out = render(Resource::Nodes, &v).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[1],
            "node-a  this node  192.168.50.1  10.244.1.0/24  0e:00:00:00:01:01"
        );
        assert_eq!(
            lines[2],
            "node-b  vxlan      192.168.50.2  10.244.2.0/24  0e:00:00:00:02:01"
        );
    }

    #[test]
    fn missing_fields_render_without_panicking() {
        for what in Resource::value_variants() {
            let out = render(*what, &Value::Null).unwrap();
            assert!(!out.is_empty());
            let out = render(
                *what,
                &serde_json::json!({"workers": [1], "services": ["x"]}),
            )
            .unwrap();
            assert!(!out.is_empty());
        }
    }

    #[test]
    fn paths_match_the_admin_api() {
        assert_eq!(path_of(Resource::Conntrack, 5), "/debug/conntrack?limit=5");
        assert_eq!(path_of(Resource::Endpoints, 5), "/debug/services");
        assert_eq!(path_of(Resource::Nodes, 5), "/debug/tables");
    }

    #[test]
    fn unreachable_daemon_is_a_clear_error() {
        // Port 1 on localhost: nothing listens there in a test environment.
        let e = fetch_json("127.0.0.1:1", "/debug/stats").unwrap_err();
        assert!(format!("{e:#}").contains("kxdp admin API"), "{e:#}");
    }
}
