//! The admin API and healthCheckNodePort servers over real HTTP.

mod fake_apiserver;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use fake_apiserver::harness::{http_get, Harness};
use kxdp_control::admin::{start_admin, AdminState};
use kxdp_control::manifests::load_str;
use kxdp_control::runner::RunnerConfig;
use kxdp_control::source::SourceEvent;

const T: Duration = Duration::from_secs(10);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn manifests(hc_port: u16, local_node: &str) -> String {
    format!(
        "\
apiVersion: v1
kind: Node
metadata: {{name: node-a}}
spec: {{podCIDR: 10.244.1.0/24}}
status:
  addresses: [{{type: InternalIP, address: 192.168.50.1}}]
---
apiVersion: v1
kind: Service
metadata: {{name: lb, namespace: shop}}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.50
  externalTrafficPolicy: Local
  healthCheckNodePort: {hc_port}
  ports: [{{name: http, port: 80, targetPort: 8080, nodePort: 30080}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: lb-1
  namespace: shop
  labels: {{kubernetes.io/service-name: lb}}
addressType: IPv4
endpoints:
- addresses: [10.244.1.7]
  nodeName: {local_node}
- addresses: [10.244.1.8]
  nodeName: {local_node}
  conditions: {{ready: false}}
ports: [{{name: http, port: 8080}}]
"
    )
}

fn snapshot(text: &str) -> SourceEvent {
    let report = load_str(Path::new("test.yaml"), text);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    SourceEvent::Snapshot(Box::new(report.state))
}

#[test]
fn healthz_readyz_metrics_tables_and_health_check_node_ports() {
    let config = RunnerConfig {
        min_interval: Duration::from_millis(20),
        max_interval: Duration::from_millis(300),
        ..RunnerConfig::default()
    };
    let (mut h, rx) = Harness::runner_only(&config);
    let admin = start_admin(
        "127.0.0.1:0".parse().unwrap(),
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        AdminState {
            status: h.status.clone(),
            metrics: h.metrics.clone(),
            tables: h.slot.clone(),
        },
    )
    .expect("admin");
    let hc = admin.health_checks();
    h.start_runner(config, rx, vec![hc.publish_hook()]);
    let addr = admin.local_addr();

    // Before any source synced: alive (grace period) but not ready.
    let (code, body) = http_get(addr, "/readyz");
    assert_eq!(code, 503, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["ready"], false);
    assert_eq!(v["waitingFor"].as_array().unwrap().len(), 6);
    let (code, body) = http_get(addr, "/healthz");
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(v["lastUpdated"].is_null(), "{v}");
    assert_eq!(http_get(addr, "/debug/tables").0, 503);
    // With nothing published for 2 x max interval, /healthz fails.
    Harness::wait_until(T, "healthz 503 without publish", || {
        http_get(addr, "/healthz").0 == 503
    });

    let hc_port = free_port();
    h.events
        .send(snapshot(&manifests(hc_port, "node-a")))
        .unwrap();
    Harness::wait_until(T, "ready", || http_get(addr, "/readyz").0 == 200);
    let (code, body) = http_get(addr, "/healthz");
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let last: jiff::Timestamp = v["lastUpdated"].as_str().unwrap().parse().unwrap();
    let now: jiff::Timestamp = v["currentTime"].as_str().unwrap().parse().unwrap();
    assert!(last <= now);

    let (code, metrics) = http_get(addr, "/metrics");
    assert_eq!(code, 200);
    for needle in [
        "kxdp_sync_duration_seconds_count{mode=\"full\"}",
        "kxdp_objects{kind=\"services\"} 1",
        "kxdp_generation ",
        "kxdp_watch_errors_total{kind=\"pods\"} 0",
    ] {
        assert!(metrics.contains(needle), "missing {needle}:\n{metrics}");
    }

    let (code, body) = http_get(addr, "/debug/tables");
    assert_eq!(code, 200);
    let tables: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(tables["generation"].as_u64().unwrap() >= 1);
    assert_eq!(tables["services"]["ports"][0]["name"], "lb");
    assert_eq!(tables["node"]["node_name"], "node-a");

    // healthCheckNodePort: one ready local endpoint (the not-ready one does
    // not count).
    let hc_addr = SocketAddr::from(([127, 0, 0, 1], hc_port));
    Harness::wait_until(T, "hc server", || hc.ports() == vec![hc_port]);
    let (code, body) = http_get(hc_addr, "/");
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["service"]["namespace"], "shop");
    assert_eq!(v["service"]["name"], "lb");
    assert_eq!(v["localEndpoints"], 1);

    // Endpoints move to another node: 503, localEndpoints 0.
    h.events
        .send(snapshot(&manifests(hc_port, "node-b")))
        .unwrap();
    Harness::wait_until(T, "hc 503", || http_get(hc_addr, "/healthz").0 == 503);
    let (_, body) = http_get(hc_addr, "/");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["localEndpoints"], 0);

    // The Service goes away: its port closes.
    let without_lb = manifests(hc_port, "node-a");
    let node_only = without_lb.split("---").next().unwrap();
    h.events.send(snapshot(node_only)).unwrap();
    Harness::wait_until(T, "hc closed", || hc.ports().is_empty());
    Harness::wait_until(T, "port refused", || {
        std::net::TcpStream::connect_timeout(&hc_addr, Duration::from_millis(200)).is_err()
    });
    admin.stop();
}
