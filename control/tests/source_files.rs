//! The manifests source: a watched file/directory feeding the real runner.

mod fake_apiserver;

use std::path::Path;
use std::time::Duration;

use fake_apiserver::harness::{assert_log_consistent, fast_runner, names, Harness};
use kxdp_control::runner::RunnerConfig;
use kxdp_control::source::files::{start_manifests_source, ManifestsConfig};

const T: Duration = Duration::from_secs(10);

const NODE_YAML: &str = "\
apiVersion: v1
kind: Node
metadata:
  name: node-a
spec:
  podCIDR: 10.244.1.0/24
status:
  addresses:
  - type: InternalIP
    address: 192.168.50.1
";

fn services_yaml(web_backend: &str) -> String {
    format!(
        "\
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: default}}
spec:
  clusterIP: 10.96.0.10
  ports: [{{name: http, port: 80, targetPort: 8080}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: default
  labels: {{kubernetes.io/service-name: web}}
addressType: IPv4
endpoints:
- addresses: [{web_backend}]
  nodeName: node-a
ports: [{{name: http, port: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: db, namespace: default}}
spec:
  clusterIP: 10.96.0.20
  ports: [{{name: pg, port: 5432}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: db-1
  namespace: default
  labels: {{kubernetes.io/service-name: db}}
addressType: IPv4
endpoints:
- addresses: [10.244.1.20]
ports: [{{name: pg, port: 5432}}]
"
    )
}

/// Replace `path`'s content the way editors do: write a new file, rename
/// it over the old one.
fn save(path: &Path, text: &str) {
    let tmp = path.with_extension("swp.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn start(
    path: &Path,
    config: RunnerConfig,
) -> (Harness, kxdp_control::source::files::ManifestsSource) {
    let (mut h, rx) = Harness::runner_only(&config);
    h.start_runner(config, rx, Vec::new());
    let src = start_manifests_source(
        ManifestsConfig {
            path: path.to_path_buf(),
            debounce: Duration::from_millis(50),
        },
        h.events.clone(),
        h.metrics.clone(),
    )
    .expect("manifests source");
    (h, src)
}

fn quiet_runner() -> RunnerConfig {
    RunnerConfig {
        max_interval: Duration::from_secs(60),
        ..fast_runner()
    }
}

#[test]
fn directory_edit_publishes_only_that_change_and_broken_edit_keeps_last_good() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("node.yaml"), NODE_YAML).unwrap();
    let svc = dir.path().join("services.yaml");
    std::fs::write(&svc, services_yaml("10.244.1.10")).unwrap();
    let (h, src) = start(dir.path(), quiet_runner());

    let first = h.wait_for(T, "initial publish", |p| p.generation == 1);
    assert_eq!(first.state_services, names(&["default/db", "default/web"]));
    assert_eq!(first.backends["default/web"], names(&["10.244.1.10"]));
    Harness::wait_until(T, "ready", || h.status.readiness().ready);

    // Edit one endpoint: one new generation whose change set is that slice.
    save(&svc, &services_yaml("10.244.1.11"));
    let p = h.wait_for(T, "edit", |p| p.generation == 2);
    assert_eq!(p.backends["default/web"], names(&["10.244.1.11"]));
    assert_eq!(p.backends["default/db"], names(&["10.244.1.20"]));
    assert_eq!(p.changes, 1, "only the edited slice changed");
    assert!(!p.full);

    // A broken edit: error reported, nothing published, old tables serve.
    save(
        &svc,
        "apiVersion: v1\nkind: Service\nmetadata: {name: web\n  spec: [\n",
    );
    Harness::wait_until(T, "error reported", || h.metrics.manifest_errors() == 1);
    assert!(
        src.last_error()
            .is_some_and(|e| e.contains("services.yaml")),
        "{:?}",
        src.last_error()
    );
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(h.published().len(), 2);
    let current = h.slot.current().unwrap();
    assert_eq!(current.generation, 2);
    assert_eq!(current.services.ports.len(), 2);

    // Fixed again: a new generation, error cleared.
    save(&svc, &services_yaml("10.244.1.12"));
    let p = h.wait_for(T, "fixed", |p| p.generation == 3);
    assert_eq!(p.backends["default/web"], names(&["10.244.1.12"]));
    assert!(src.last_error().is_none());
    // Saving identical content publishes nothing.
    save(&svc, &services_yaml("10.244.1.12"));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(h.published().len(), 3);
    assert_log_consistent(&h.published());
    src.stop();
}

#[test]
fn single_file_is_watched_and_broken_start_stays_unready() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("all.yaml");
    // Broken from the start: nothing is published, not ready.
    std::fs::write(
        &file,
        format!("{NODE_YAML}---\nkind: Service\nmetadata: [\n"),
    )
    .unwrap();
    let (h, src) = start(&file, quiet_runner());
    Harness::wait_until(T, "error reported", || h.metrics.manifest_errors() >= 1);
    std::thread::sleep(Duration::from_millis(200));
    assert!(h.published().is_empty());
    assert!(!h.status.readiness().ready);

    // Other files in the directory do not matter.
    std::fs::write(dir.path().join("other.yaml"), "garbage: [").unwrap();
    save(
        &file,
        &format!("{NODE_YAML}---\n{}", services_yaml("10.244.1.10")),
    );
    let p = h.wait_for(T, "first good load", |p| p.generation == 1);
    assert_eq!(p.state_services, names(&["default/db", "default/web"]));
    Harness::wait_until(T, "ready", || h.status.readiness().ready);
    src.stop();
}
