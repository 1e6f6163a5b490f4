//! `kxdp demo`: the embedded default. One command shows the Kubernetes
//! networking model working through kxdp on this machine, with no cluster.
//!
//! 1. Builds the standard topology (DESIGN §5) with the shared RAII helper
//!    (`kxdp-topology`): an underlay bridge, an external client, node-a and
//!    node-b, and one namespace per Pod of `deploy/examples/` (embedded in
//!    the binary) wired the CNI `ptp` way on its node. Every name starts
//!    with [`NAME_PREFIX`]`<pid>-`.
//! 2. Writes the manifests for the run: the examples, with the Node
//!    objects regenerated from the topology (real InternalIPs, and as
//!    Flannel VtepMAC each node's uplink MAC, which kxdp uses as its VTEP
//!    MAC — see `kxdp_control::compile::node`).
//! 3. Starts the pods' stand-ins (this binary's hidden `demo-serve`: HTTP
//!    for web/demo pods, a banner for the database; Debian's `dnsmasq` for
//!    the cluster DNS pod, answering `<service>.<namespace>.svc.cluster.local`)
//!    and `kxdp run` on both nodes, each inside its namespace through
//!    `ip netns exec`, in its own process group.
//! 4. Probes with real kernel sockets from inside the namespaces, prints
//!    them as a table, then each node's live counters from its admin API.
//!
//! Exit status: 0 when every probe gave the expected result, 1 when one did
//! not, 130 when interrupted, 2 on a setup error. SIGINT/SIGTERM only set a
//! flag the main thread checks between steps (every wait is bounded), so
//! the guards always run: kxdp gets SIGTERM (it detaches cleanly), the
//! servers are stopped, the namespaces (and every veth in them) deleted,
//! the scratch directory removed. Nothing is created in the caller's
//! namespace; no BPF object is pinned.
//!
//! `--keep` releases the guards instead and prints how to explore;
//! `--cleanup` removes what a kept demo left (namespaces named
//! [`NAME_PREFIX`]`*` with their processes, scratch directories).

mod dns;
mod serve;

pub use serve::{serve, ServeArgs};

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use kxdp_control::model::ClusterState;
use kxdp_topology::{self as topology, Netns, NodeKind, Topology, TopologyOptions};

/// Every namespace and scratch directory of a demo starts with this, then
/// the demo's process id (`kxdemo1234-node-a`).
pub const NAME_PREFIX: &str = "kxdemo";
/// The admin API of `kxdp run` inside each node namespace.
const ADMIN_ADDR: &str = "127.0.0.1:10256";
/// Cluster DNS domain of the Service names dnsmasq answers.
const CLUSTER_DOMAIN: &str = "svc.cluster.local";
/// Connect/read timeout of the probes that must succeed.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// Connect timeout of the probe that policy must drop: long enough for a
/// reply that would come, short enough to keep the demo quick.
const DENY_TIMEOUT: Duration = Duration::from_millis(1500);
/// How long the servers may take to listen.
const SERVER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a child gets after SIGTERM before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// Requests sent to the web Service to show the load balancing.
const SERVICE_REQUESTS: usize = 8;

/// `deploy/examples/`, embedded so the demo runs from the binary alone.
/// `10-nodes.yaml` is replaced by Node objects generated from the topology.
const EXAMPLES: &[(&str, &str)] = &[
    (
        "00-namespaces.yaml",
        include_str!("../deploy/examples/00-namespaces.yaml"),
    ),
    (
        "10-nodes.yaml",
        include_str!("../deploy/examples/10-nodes.yaml"),
    ),
    (
        "20-pods.yaml",
        include_str!("../deploy/examples/20-pods.yaml"),
    ),
    (
        "30-services.yaml",
        include_str!("../deploy/examples/30-services.yaml"),
    ),
    (
        "40-endpointslices.yaml",
        include_str!("../deploy/examples/40-endpointslices.yaml"),
    ),
    (
        "50-networkpolicy.yaml",
        include_str!("../deploy/examples/50-networkpolicy.yaml"),
    ),
    (
        "60-ingress.yaml",
        include_str!("../deploy/examples/60-ingress.yaml"),
    ),
];
const NODES_FILE: &str = "10-nodes.yaml";

/// Arguments of `kxdp demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Leave the topology, both kxdp nodes and the servers running, print
    /// how to explore them, and exit. Remove them with `kxdp demo --cleanup`.
    #[arg(long, conflicts_with = "cleanup")]
    keep: bool,
    /// Remove what earlier `kxdp demo --keep` runs left (namespaces named
    /// `kxdemo*` and their processes, scratch directories) and exit.
    #[arg(long)]
    cleanup: bool,
    /// Seconds to wait for kxdp to serve on both nodes.
    #[arg(long, default_value_t = 30)]
    ready_timeout: u64,
}

/// What stops the demo before its probes run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("kxdp demo cannot run here: {0}")]
    Unsupported(String),
    #[error("{tool} not found: {hint}")]
    MissingTool {
        tool: &'static str,
        hint: &'static str,
    },
    #[error("the embedded deploy/examples: {0}")]
    Examples(String),
    #[error("building the topology: {0}")]
    Topology(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("kxdp on {node} {why}; its log ({log}):\n{tail}")]
    Kxdp {
        node: String,
        why: String,
        log: String,
        tail: String,
    },
    #[error("{what} did not come up: {why}")]
    Server { what: String, why: String },
    #[error("interrupted")]
    Interrupted,
}

impl From<String> for DemoError {
    fn from(e: String) -> Self {
        DemoError::Topology(e)
    }
}

type Result<T> = std::result::Result<T, DemoError>;

/// `kxdp demo`.
pub fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    if args.cleanup {
        cleanup();
        return Ok(ExitCode::SUCCESS);
    }
    preflight()?;
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop))?;
    }
    let started = Instant::now();
    match run_demo(&args, &stop, started) {
        Ok(true) => Ok(ExitCode::SUCCESS),
        Ok(false) => Ok(ExitCode::from(1)),
        // An interrupted `ip` command fails with its own error: the flag
        // says what happened.
        Err(_) if stop.load(Ordering::Relaxed) => {
            println!("kxdp demo: interrupted; everything it created is removed");
            Ok(ExitCode::from(130))
        }
        Err(e) => Err(e.into()),
    }
}

/// Root, iproute2 and ethtool are required; dnsmasq only for the DNS probe.
fn preflight() -> Result<()> {
    if let Some(why) = topology::skip_reason() {
        return Err(DemoError::Unsupported(format!(
            "{why} (network namespaces and XDP need root: sudo kxdp demo)"
        )));
    }
    if find_program("ethtool").is_none() {
        return Err(DemoError::MissingTool {
            tool: "ethtool",
            hint: "apt-get install ethtool (scripts/setup.sh installs everything the demo needs)",
        });
    }
    Ok(())
}

/// `program` on PATH or in the sbin directories (root's tools).
fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

fn interrupted(stop: &AtomicBool) -> Result<()> {
    if stop.load(Ordering::Relaxed) {
        Err(DemoError::Interrupted)
    } else {
        Ok(())
    }
}

/// The examples, read from the embedded manifests.
struct Examples {
    state: ClusterState,
}

/// A pod of the examples as placed in the topology.
#[derive(Clone, Debug)]
struct PodPlan {
    namespace: String,
    name: String,
    /// Name in the topology (namespace `kxdemo<pid>-<short>`, host veth
    /// `veth<short>`, which must fit IFNAMSIZ).
    short: String,
    node: usize,
    node_name: String,
    ip: Ipv4Addr,
    labels: BTreeMap<String, String>,
    http: Vec<u16>,
    banner: Vec<u16>,
    /// Serves UDP 53: the cluster DNS pod.
    dns: bool,
}

impl PodPlan {
    /// What the pod's servers answer with.
    fn identity(&self) -> String {
        format!("{} ({})", self.name, self.node_name)
    }
}

impl Examples {
    fn load() -> Result<Self> {
        let mut state = ClusterState::default();
        let mut errors = Vec::new();
        for (file, text) in EXAMPLES {
            let report = kxdp_control::manifests::load_str(Path::new(file), text);
            errors.extend(report.errors.iter().map(ToString::to_string));
            let s = report.state;
            state.namespaces.extend(s.namespaces);
            state.nodes.extend(s.nodes);
            state.pods.extend(s.pods);
            state.services.extend(s.services);
            state.endpoint_slices.extend(s.endpoint_slices);
            state.network_policies.extend(s.network_policies);
        }
        if !errors.is_empty() {
            return Err(DemoError::Examples(errors.join("; ")));
        }
        Ok(Examples { state })
    }

    /// The pods placed on the topology's nodes, with their servers.
    fn plan_pods(&self, topo: &Topology) -> Result<Vec<PodPlan>> {
        let mut plans: Vec<PodPlan> = Vec::new();
        for ((namespace, name), pod) in &self.state.pods {
            let node_name = pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .unwrap_or_default();
            let Some(node) = topo.nodes.iter().position(|n| n.name == node_name) else {
                return Err(DemoError::Examples(format!(
                    "pod {namespace}/{name} is on node {node_name:?}, not node-a or node-b"
                )));
            };
            let ip: Ipv4Addr = pod
                .status
                .as_ref()
                .and_then(|s| s.pod_ip.as_deref())
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| {
                    DemoError::Examples(format!("pod {namespace}/{name} has no IPv4 podIP"))
                })?;
            let net = topo.nodes.get(node).map(|n| n.pod_net.octets());
            if net.map(|n| n[..3] != ip.octets()[..3]).unwrap_or(true) {
                return Err(DemoError::Examples(format!(
                    "pod {namespace}/{name} IP {ip} is outside {node_name}'s pod CIDR"
                )));
            }
            let (http, banner, dns) = servers_of(pod);
            let short = short_name(name, plans.iter().map(|p| p.short.as_str()));
            plans.push(PodPlan {
                namespace: namespace.clone(),
                name: name.clone(),
                short,
                node,
                node_name,
                ip,
                labels: pod.metadata.labels.clone().unwrap_or_default(),
                http,
                banner,
                dns,
            });
        }
        Ok(plans)
    }

    fn service(&self, namespace: &str, name: &str) -> Result<&Service> {
        self.state
            .services
            .get(&(namespace.to_owned(), name.to_owned()))
            .ok_or_else(|| DemoError::Examples(format!("no Service {namespace}/{name}")))
    }

    /// ClusterIP and first port of a Service (and its first nodePort).
    fn service_addr(&self, namespace: &str, name: &str) -> Result<(Ipv4Addr, u16, Option<u16>)> {
        let svc = self.service(namespace, name)?;
        let spec = svc.spec.as_ref();
        let ip = spec
            .and_then(|s| s.cluster_ip.as_deref())
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| {
                DemoError::Examples(format!("Service {namespace}/{name} has no IPv4 clusterIP"))
            })?;
        let port = spec
            .and_then(|s| s.ports.as_ref())
            .and_then(|p| p.first())
            .ok_or_else(|| {
                DemoError::Examples(format!("Service {namespace}/{name} has no port"))
            })?;
        let p = u16::try_from(port.port)
            .map_err(|_| DemoError::Examples(format!("Service {namespace}/{name}: bad port")))?;
        let np = port.node_port.and_then(|n| u16::try_from(n).ok());
        Ok((ip, p, np))
    }

    /// `--address=/<name>.<ns>.svc.cluster.local/<clusterIP>` for every
    /// Service with an IPv4 cluster IP.
    fn dns_records(&self) -> Vec<(String, Ipv4Addr)> {
        self.state
            .services
            .iter()
            .filter_map(|((ns, name), svc)| {
                let ip = svc.spec.as_ref()?.cluster_ip.as_deref()?.parse().ok()?;
                Some((format!("{name}.{ns}.{CLUSTER_DOMAIN}"), ip))
            })
            .collect()
    }
}

/// The servers a pod's container ports call for: HTTP on `http`-named
/// ports and 80/8080, a banner on other TCP ports, DNS when it serves UDP
/// 53 (dnsmasq then serves TCP 53 too).
fn servers_of(pod: &Pod) -> (Vec<u16>, Vec<u16>, bool) {
    let ports: Vec<_> = pod
        .spec
        .iter()
        .flat_map(|s| &s.containers)
        .flat_map(|c| c.ports.iter().flatten())
        .collect();
    let dns = ports
        .iter()
        .any(|p| p.container_port == 53 && p.protocol.as_deref() == Some("UDP"));
    let mut http = BTreeSet::new();
    let mut banner = BTreeSet::new();
    for p in &ports {
        let Ok(port) = u16::try_from(p.container_port) else {
            continue;
        };
        if p.protocol.as_deref().is_some_and(|proto| proto != "TCP") || (dns && port == 53) {
            continue;
        }
        if p.name.as_deref() == Some("http") || port == 80 || port == 8080 {
            http.insert(port);
        } else {
            banner.insert(port);
        }
    }
    (
        http.into_iter().collect(),
        banner.into_iter().collect(),
        dns,
    )
}

/// A topology name for pod `name`: the name itself when `veth<name>` fits
/// IFNAMSIZ (15 bytes), else its first dash-separated word, cut to fit;
/// made unique among `taken` with a digit.
fn short_name<'a>(name: &str, taken: impl Iterator<Item = &'a str> + Clone) -> String {
    const MAX: usize = 15 - "veth".len();
    let base: String = if name.len() <= MAX {
        name.to_owned()
    } else {
        name.split('-')
            .next()
            .unwrap_or(name)
            .chars()
            .take(MAX - 1)
            .collect()
    };
    let base = if base.is_empty() { "pod".into() } else { base };
    let free = |n: &str| !taken.clone().any(|t| t == n);
    if free(&base) {
        return base;
    }
    let stem: String = base.chars().take(MAX - 2).collect();
    (1..100)
        .map(|i| format!("{stem}{i}"))
        .find(|n| free(n))
        .unwrap_or(stem)
}

/// A Node object for a topology node: the example's labels, the real
/// underlay address and pod CIDR, and Flannel's annotations with the
/// uplink MAC as VtepMAC (what kxdp uses as its VTEP MAC when the
/// annotation names it, and peers send to).
fn node_yaml(node: &topology::Node, example: Option<&Node>) -> String {
    node_yaml_text(&node.name, node.ip, &node.mac, node.pod_net, example)
}

fn node_yaml_text(
    name: &str,
    ip: Ipv4Addr,
    mac: &str,
    net: Ipv4Addr,
    example: Option<&Node>,
) -> String {
    let mut labels: BTreeMap<String, String> = example
        .and_then(|n| n.metadata.labels.clone())
        .unwrap_or_default();
    labels
        .entry("kubernetes.io/hostname".into())
        .or_insert_with(|| name.to_owned());
    let mut label_lines = String::new();
    for (k, v) in &labels {
        // A JSON string is a valid YAML scalar: no quoting surprises.
        let _ = writeln!(
            label_lines,
            "    {}: {}",
            k,
            serde_json::Value::String(v.clone())
        );
    }
    format!(
        r#"apiVersion: v1
kind: Node
metadata:
  name: {name}
  labels:
{label_lines}  annotations:
    flannel.alpha.coreos.com/backend-data: '{{"VNI":1,"VtepMAC":"{mac}"}}'
    flannel.alpha.coreos.com/backend-type: vxlan
    flannel.alpha.coreos.com/public-ip: {ip}
spec:
  podCIDR: {net}/24
  podCIDRs:
  - {net}/24
status:
  addresses:
  - type: InternalIP
    address: {ip}
  - type: Hostname
    address: {name}
"#
    )
}

/// The run's scratch directory (`$TMPDIR/kxdemo<pid>`): manifests, logs,
/// ready files. Removed on drop unless kept.
#[derive(Debug)]
struct RunDir {
    path: PathBuf,
    keep: bool,
}

impl RunDir {
    fn create(name: &str) -> Result<Self> {
        let path = std::env::temp_dir().join(name);
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(path.join("cluster")).map_err(|source| DemoError::Io {
            what: format!("create {}", path.display()),
            source,
        })?;
        Ok(RunDir { path, keep: false })
    }

    fn manifests(&self) -> PathBuf {
        self.path.join("cluster")
    }

    fn write(&self, rel: &str, text: &str) -> Result<()> {
        let p = self.path.join(rel);
        std::fs::write(&p, text).map_err(|source| DemoError::Io {
            what: format!("write {}", p.display()),
            source,
        })
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// A child process in a namespace (`ip netns exec NS ...`, its own process
/// group so a terminal's Ctrl-C reaches only the demo, which stops it in
/// order). Stopped on drop: SIGTERM, bounded wait, SIGKILL.
#[derive(Debug)]
struct ChildGuard {
    what: String,
    child: Option<Child>,
    log: PathBuf,
}

impl ChildGuard {
    fn spawn(
        what: &str,
        ns: &Netns,
        program: &Path,
        args: &[String],
        log: PathBuf,
    ) -> Result<Self> {
        let io = |what: String| move |source| DemoError::Io { what, source };
        let out = std::fs::File::create(&log).map_err(io(format!("create {}", log.display())))?;
        let err = out
            .try_clone()
            .map_err(io(format!("dup {}", log.display())))?;
        let child = Command::new("ip")
            .args(["netns", "exec", ns.name()])
            .arg(program)
            .args(args)
            .env("RUST_LOG", "info")
            // Plain log files (tracing-subscriber honours NO_COLOR).
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .process_group(0)
            .spawn()
            .map_err(io(format!("start {what}")))?;
        Ok(ChildGuard {
            what: what.to_owned(),
            child: Some(child),
            log,
        })
    }

    /// Ok while running; Err with the exit status once it stopped.
    fn check(&mut self) -> std::result::Result<(), String> {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => Ok(()),
            Some(Ok(Some(status))) => Err(format!("exited ({status})")),
            Some(Err(e)) => Err(format!("cannot be waited for: {e}")),
            None => Err("not running".into()),
        }
    }

    /// The last lines of its log.
    fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Leaves the process running (`--keep`).
    fn release(mut self) {
        self.child = None;
    }

    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .output();
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        tracing::warn!(what = %self.what, "no exit after SIGTERM; killing");
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Everything a demo run owns. Field order is drop order: kxdp first (a
/// clean exit detaches its programs), then the servers, the namespaces,
/// the scratch directory.
struct Demo {
    kxdp: Vec<ChildGuard>,
    servers: Vec<ChildGuard>,
    topo: Topology,
    dir: RunDir,
    pods: Vec<PodPlan>,
}

impl Demo {
    fn pod(&self, name: &str) -> Result<(&PodPlan, &Netns)> {
        let plan = self
            .pods
            .iter()
            .find(|p| p.name == name)
            .ok_or_else(|| DemoError::Examples(format!("no pod named {name}")))?;
        let pod = self
            .topo
            .pod(&plan.short)
            .ok_or_else(|| DemoError::Topology(format!("pod {name} missing")))?;
        Ok((plan, &pod.ns))
    }

    fn pods_labelled(&self, key: &str, value: &str) -> Vec<&PodPlan> {
        self.pods
            .iter()
            .filter(|p| p.labels.get(key).map(String::as_str) == Some(value))
            .collect()
    }

    fn node_ns(&self, name: &str) -> Result<&Netns> {
        self.topo
            .node(name)
            .map(|n| &n.ns)
            .ok_or_else(|| DemoError::Topology(format!("no node {name}")))
    }
}

fn run_demo(args: &DemoArgs, stop: &AtomicBool, started: Instant) -> Result<bool> {
    let exe = std::env::current_exe().map_err(|source| DemoError::Io {
        what: "locate the kxdp binary".into(),
        source,
    })?;
    let examples = Examples::load()?;
    let dnsmasq = find_program("dnsmasq");
    if dnsmasq.is_none() {
        println!(
            "kxdp demo: dnsmasq not found: the cluster DNS pod cannot be started and the DNS \
             probe will fail. Install it with `apt-get install dnsmasq-base` (scripts/setup.sh does)."
        );
    }
    let suffix = format!("demo{}", std::process::id());
    let prefix = format!("kx{suffix}");
    println!(
        "kxdp demo: building the standard topology with two kxdp nodes (namespaces {prefix}-*)"
    );
    let opts = TopologyOptions {
        node_a: NodeKind::Kxdp,
        node_b: NodeKind::Kxdp,
    };
    if !topology::netns_matching(&format!("{prefix}-")).is_empty() {
        return Err(DemoError::Topology(format!(
            "namespaces {prefix}-* exist already (an earlier `kxdp demo --keep`?): \
             remove them with `kxdp demo --cleanup`"
        )));
    }
    let topo = Topology::nodes_only(opts, &suffix)?;
    let mut demo = Demo {
        kxdp: Vec::new(),
        servers: Vec::new(),
        topo,
        dir: RunDir::create(&prefix)?,
        pods: Vec::new(),
    };
    interrupted(stop)?;
    demo.pods = examples.plan_pods(&demo.topo)?;
    for p in &demo.pods {
        demo.topo.add_pod(&p.short, p.node, p.ip)?;
        interrupted(stop)?;
    }
    demo.topo.wire_flannel()?;
    print_topology(&demo);

    // Manifests: the examples with Node objects that match the topology.
    let mut nodes = String::from(
        "# Generated by `kxdp demo`: the topology's underlay addresses, and each\n\
         # node's uplink MAC as its Flannel VtepMAC (kxdp's VTEP MAC).\n",
    );
    for (i, n) in demo.topo.nodes.iter().enumerate() {
        if i > 0 {
            nodes.push_str("---\n");
        }
        nodes.push_str(&node_yaml(n, examples.state.nodes.get(&n.name)));
    }
    demo.dir.write(&format!("cluster/{NODES_FILE}"), &nodes)?;
    for (file, text) in EXAMPLES.iter().filter(|(f, _)| *f != NODES_FILE) {
        demo.dir.write(&format!("cluster/{file}"), text)?;
    }

    start_servers(&mut demo, &exe, dnsmasq.as_deref(), &examples)?;
    interrupted(stop)?;
    start_kxdp(&mut demo, &exe, args, stop)?;
    wait_servers(&demo, stop)?;
    println!("  setup took {:.1} s\n", started.elapsed().as_secs_f64());

    let probes = run_probes(&demo, &examples, stop)?;
    print_table(&probes);
    let counters = print_counters(&demo);
    let passed = probes.iter().filter(|p| p.pass).count();
    let all = passed == probes.len() && counters;
    println!(
        "\n{passed}/{} probes passed{} in {:.1} s: {}",
        probes.len(),
        if counters {
            ""
        } else {
            ", counters unavailable,"
        },
        started.elapsed().as_secs_f64(),
        if all { "PASS" } else { "FAIL" }
    );
    if !all {
        for k in &demo.kxdp {
            println!(
                "\n--- {} log ({}) ---\n{}",
                k.what,
                k.log.display(),
                k.log_tail(15)
            );
        }
    }
    if args.keep {
        keep(demo, &exe);
    }
    Ok(all)
}

fn print_topology(demo: &Demo) {
    for (i, n) in demo.topo.nodes.iter().enumerate() {
        let pods: Vec<String> = demo
            .pods
            .iter()
            .filter(|p| p.node == i)
            .map(|p| match p.namespace.as_str() {
                "default" => format!("{} {}", p.name, p.ip),
                ns => format!("{ns}/{} {}", p.name, p.ip),
            })
            .collect();
        println!(
            "  {:<8} {:<15} uplink eth0 {}  pods: {}",
            n.name,
            n.ip,
            n.mac,
            pods.join(", ")
        );
    }
    println!(
        "  {:<8} {:<15} (NodePort client on the underlay bridge)",
        "external",
        topology::EXTERNAL_IP
    );
}

fn start_servers(demo: &mut Demo, exe: &Path, dnsmasq: Option<&Path>, ex: &Examples) -> Result<()> {
    let mut started = Vec::new();
    for p in &demo.pods {
        let ns = &demo
            .topo
            .pod(&p.short)
            .ok_or_else(|| DemoError::Topology(format!("pod {} missing", p.name)))?
            .ns;
        if !p.http.is_empty() || !p.banner.is_empty() {
            let mut args = vec!["demo-serve".to_owned(), "--name".into(), p.identity()];
            for port in &p.http {
                args.extend(["--http".into(), port.to_string()]);
            }
            for port in &p.banner {
                args.extend(["--banner".into(), port.to_string()]);
            }
            let log = demo.dir.path.join(format!("serve-{}.log", p.short));
            demo.servers.push(ChildGuard::spawn(
                &format!("servers of {}", p.name),
                ns,
                exe,
                &args,
                log,
            )?);
            let ports: Vec<String> = p
                .http
                .iter()
                .map(|x| format!("http :{x}"))
                .chain(p.banner.iter().map(|x| format!("tcp :{x}")))
                .collect();
            started.push(format!("{} {}", p.name, ports.join(" ")));
        }
        if let (true, Some(dnsmasq)) = (p.dns, dnsmasq) {
            let mut args = vec![
                "--no-daemon".to_owned(),
                "--conf-file=/dev/null".into(),
                "--no-resolv".into(),
                "--no-hosts".into(),
                "--pid-file=".into(),
                "--port=53".into(),
            ];
            args.extend(
                ex.dns_records()
                    .into_iter()
                    .map(|(name, ip)| format!("--address=/{name}/{ip}")),
            );
            let log = demo.dir.path.join(format!("dnsmasq-{}.log", p.short));
            demo.servers
                .push(ChildGuard::spawn("dnsmasq", ns, dnsmasq, &args, log)?);
            started.push(format!("{} dnsmasq :53", p.name));
        }
    }
    println!("  servers: {}", started.join(", "));
    Ok(())
}

fn start_kxdp(demo: &mut Demo, exe: &Path, args: &DemoArgs, stop: &AtomicBool) -> Result<()> {
    let t0 = Instant::now();
    let manifests = demo.dir.manifests().to_string_lossy().into_owned();
    let mut ready_files = Vec::new();
    for n in &demo.topo.nodes {
        let ready = demo.dir.path.join(format!("kxdp-{}.ready", n.name));
        let run_args: Vec<String> = [
            "run",
            "--node",
            &n.name,
            "--uplink",
            "eth0",
            "--manifests",
            &manifests,
            "--admin",
            ADMIN_ADDR,
            "--ready-file",
            &ready.to_string_lossy(),
        ]
        .map(str::to_owned)
        .to_vec();
        let log = demo.dir.path.join(format!("kxdp-{}.log", n.name));
        demo.kxdp.push(ChildGuard::spawn(
            &format!("kxdp on {}", n.name),
            &n.ns,
            exe,
            &run_args,
            log,
        )?);
        ready_files.push((n.name.clone(), ready));
    }
    println!(
        "  starting `kxdp run` on {} ...",
        ready_files
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(" and ")
    );
    let deadline = t0 + Duration::from_secs(args.ready_timeout);
    loop {
        interrupted(stop)?;
        for (k, (node, _)) in demo.kxdp.iter_mut().zip(&ready_files) {
            if let Err(why) = k.check() {
                return Err(DemoError::Kxdp {
                    node: node.clone(),
                    why,
                    log: k.log.display().to_string(),
                    tail: k.log_tail(30),
                });
            }
        }
        if ready_files.iter().all(|(_, f)| f.exists()) {
            break;
        }
        if Instant::now() >= deadline {
            let i = ready_files
                .iter()
                .position(|(_, f)| !f.exists())
                .unwrap_or(0);
            let k = demo.kxdp.get(i);
            return Err(DemoError::Kxdp {
                node: ready_files
                    .get(i)
                    .map(|(n, _)| n.clone())
                    .unwrap_or_default(),
                why: format!("not ready after {} s", args.ready_timeout),
                log: k.map(|k| k.log.display().to_string()).unwrap_or_default(),
                tail: k.map(|k| k.log_tail(30)).unwrap_or_default(),
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let pids: Vec<String> = demo
        .kxdp
        .iter()
        .filter_map(|k| k.pid().map(|p| format!("{} pid {p}", k.what)))
        .collect();
    println!(
        "  kxdp serving after {:.1} s ({})",
        t0.elapsed().as_secs_f64(),
        pids.join(", ")
    );
    Ok(())
}

/// Waits (bounded) until every server answers inside its own namespace,
/// so a probe failure is the dataplane's, not a slow start.
fn wait_servers(demo: &Demo, stop: &AtomicBool) -> Result<()> {
    for p in &demo.pods {
        let ns = &demo
            .topo
            .pod(&p.short)
            .ok_or_else(|| DemoError::Topology(format!("pod {} missing", p.name)))?
            .ns;
        let deadline = Instant::now() + SERVER_TIMEOUT;
        for port in p.http.iter().chain(&p.banner).copied() {
            loop {
                interrupted(stop)?;
                let ok = ns
                    .run_in(move || {
                        TcpStream::connect_timeout(
                            &SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
                            Duration::from_millis(200),
                        )
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                    })
                    .is_ok();
                if ok {
                    break;
                }
                if Instant::now() >= deadline {
                    return Err(DemoError::Server {
                        what: format!("the server of {} on port {port}", p.name),
                        why: format!("not listening after {SERVER_TIMEOUT:?}"),
                    });
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        if p.dns && find_program("dnsmasq").is_some() {
            let name = format!("kube-dns.kube-system.{CLUSTER_DOMAIN}");
            loop {
                interrupted(stop)?;
                let n = name.clone();
                let r = ns.run_in(move || {
                    dns::resolve_a(
                        SocketAddr::from((Ipv4Addr::LOCALHOST, 53)),
                        &n,
                        Duration::from_millis(200),
                        1,
                    )
                    .map_err(|e| e.to_string())
                });
                let err = match r {
                    Ok(_) => break,
                    Err(e) => e,
                };
                if Instant::now() >= deadline {
                    return Err(DemoError::Server {
                        what: format!("dnsmasq in {}", p.name),
                        why: err,
                    });
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
    Ok(())
}

/// One row of the result table.
#[derive(Debug)]
struct Probe {
    what: String,
    expected: String,
    got: String,
    pass: bool,
    took: Duration,
}

/// Appends `probe` with the time since `mark`, and restarts `mark`.
fn push(probes: &mut Vec<Probe>, mark: &mut Instant, probe: Probe) {
    probes.push(Probe {
        took: mark.elapsed(),
        ..probe
    });
    *mark = Instant::now();
}

/// `GET /` from the calling thread's namespace; the status code and the
/// body's first line. Bounded by `timeout` per step.
fn http_get(
    dst: Ipv4Addr,
    port: u16,
    timeout: Duration,
) -> std::result::Result<(u16, String), String> {
    let addr = SocketAddr::from((dst, port));
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| describe_io(&e))?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("send: {}", describe_io(&e)))?;
    let mut text = String::new();
    s.read_to_string(&mut text)
        .map_err(|e| format!("read: {}", describe_io(&e)))?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("not HTTP: {:?}", head.lines().next().unwrap_or("")))?;
    Ok((status, body.lines().next().unwrap_or("").to_owned()))
}

/// The outcome of a connect (error kind and text) and how long it took.
type ConnectOutcome = (
    std::result::Result<(), (std::io::ErrorKind, String)>,
    Duration,
);

/// A TCP connect from inside `ns`.
fn timed_connect(
    ns: &Netns,
    addr: SocketAddr,
    timeout: Duration,
) -> std::result::Result<ConnectOutcome, String> {
    ns.run_in(move || {
        let t0 = Instant::now();
        let r = TcpStream::connect_timeout(&addr, timeout);
        Ok((
            r.map(|_| ()).map_err(|e| (e.kind(), describe_io(&e))),
            t0.elapsed(),
        ))
    })
}

fn describe_io(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => "timed out".into(),
        std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
        _ => e.to_string(),
    }
}

/// HTTP GET from `ns`, twice at most; the first line of the body on 200.
fn get_from(ns: &Netns, dst: Ipv4Addr, port: u16) -> std::result::Result<String, String> {
    let mut last = String::new();
    for _ in 0..2 {
        match ns.run_in(move || http_get(dst, port, PROBE_TIMEOUT)) {
            Ok((200, body)) => return Ok(body),
            Ok((code, body)) => last = format!("HTTP {code} {body}"),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// The pod named by a body `"<pod> (<node>)"`.
fn answered_by(body: &str) -> &str {
    body.split_whitespace().next().unwrap_or("")
}

fn run_probes(demo: &Demo, ex: &Examples, stop: &AtomicBool) -> Result<Vec<Probe>> {
    let mut probes = Vec::new();
    let mut mark = Instant::now();
    let (backend, backend_ns) = demo.pod("backend")?;
    let (frontend, frontend_ns) = demo.pod("frontend")?;
    let webs = demo.pods_labelled("app", "web");

    // Pod -> pod across nodes, both directions.
    for (client, client_ns) in [(backend, backend_ns), (frontend, frontend_ns)] {
        interrupted(stop)?;
        let Some(web) = webs.iter().find(|w| w.node != client.node) else {
            return Err(DemoError::Examples(format!(
                "no app=web pod on another node than {}",
                client.name
            )));
        };
        let port = web.http.first().copied().unwrap_or(8080);
        let r = get_from(client_ns, web.ip, port);
        push(
            &mut probes,
            &mut mark,
            Probe {
                took: Duration::ZERO,
                what: format!(
                    "pod -> pod across nodes (VXLAN): {} -> {} {}:{port}",
                    client.name, web.name, web.ip
                ),
                expected: format!("HTTP 200 from {}", web.name),
                pass: r.as_ref().is_ok_and(|b| answered_by(b) == web.name),
                got: got_text(&r),
            },
        );
    }

    // Pod -> Service by ClusterIP: several connections, Maglev spreads them.
    interrupted(stop)?;
    let (web_ip, web_port, _) = ex.service_addr("default", "my-web-service")?;
    let web_names: Vec<&str> = webs.iter().map(|w| w.name.as_str()).collect();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut failure = None;
    for _ in 0..SERVICE_REQUESTS {
        match get_from(backend_ns, web_ip, web_port) {
            Ok(b) => *seen.entry(answered_by(&b).to_owned()).or_default() += 1,
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    let pass = failure.is_none() && seen.keys().all(|k| web_names.contains(&k.as_str()));
    push(
        &mut probes,
        &mut mark,
        Probe {
            took: Duration::ZERO,
            what: format!(
                "pod -> ClusterIP: {} -> my-web-service {web_ip}:{web_port} (x{SERVICE_REQUESTS})",
                backend.name
            ),
            expected: format!("HTTP 200 from {}", web_names.join("/")),
            got: match failure {
                Some(e) => e,
                None => seen
                    .iter()
                    .map(|(k, v)| format!("{k} x{v}"))
                    .collect::<Vec<_>>()
                    .join(", "),
            },
            pass,
        },
    );

    // Pod -> Service by DNS name through the cluster DNS Service.
    interrupted(stop)?;
    let (dns_ip, dns_port, _) = ex.service_addr("kube-system", "kube-dns")?;
    let name = format!("my-web-service.default.{CLUSTER_DOMAIN}");
    let n = name.clone();
    let resolved = backend_ns.run_in(move || {
        dns::resolve_a(
            SocketAddr::from((dns_ip, dns_port)),
            &n,
            Duration::from_secs(1),
            3,
        )
        .map_err(|e| e.to_string())
    });
    let (got, pass) = match resolved {
        Ok(ips) => {
            let ip = ips.first().copied().unwrap_or(Ipv4Addr::UNSPECIFIED);
            match get_from(backend_ns, ip, web_port) {
                Ok(b) => (
                    format!("{ip} -> {}", answered_by(&b)),
                    ip == web_ip && web_names.contains(&answered_by(&b)),
                ),
                Err(e) => (format!("{ip} -> {e}"), false),
            }
        }
        Err(e) => (format!("DNS: {e}"), false),
    };
    push(
        &mut probes,
        &mut mark,
        Probe {
            took: Duration::ZERO,
            what: format!(
                "pod -> DNS name: {} -> {name}:{web_port} (DNS via kube-dns {dns_ip})",
                backend.name
            ),
            expected: format!("{web_ip} -> {}", web_names.join("/")),
            got,
            pass,
        },
    );

    // External client -> NodePort on both nodes.
    let (_, _, node_port) = ex.service_addr("default", "example-nodeport")?;
    let node_port =
        node_port.ok_or_else(|| DemoError::Examples("example-nodeport has no nodePort".into()))?;
    let demos: Vec<&str> = demo
        .pods_labelled("app", "demo")
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    for n in &demo.topo.nodes {
        interrupted(stop)?;
        let r = get_from(&demo.topo.external, n.ip, node_port);
        push(
            &mut probes,
            &mut mark,
            Probe {
                took: Duration::ZERO,
                what: format!(
                    "external -> NodePort: {} -> {} {}:{node_port}",
                    topology::EXTERNAL_IP,
                    n.name,
                    n.ip
                ),
                expected: format!("HTTP 200 from {}", demos.join("/")),
                pass: r.as_ref().is_ok_and(|b| demos.contains(&answered_by(b))),
                got: got_text(&r),
            },
        );
    }

    // NetworkPolicy db-allow-backend: backend allowed, frontend dropped.
    let (db_ip, db_port, _) = ex.service_addr("default", "db")?;
    interrupted(stop)?;
    let r = backend_ns.run_in(move || {
        let mut s = TcpStream::connect_timeout(&SocketAddr::from((db_ip, db_port)), PROBE_TIMEOUT)
            .map_err(|e| describe_io(&e))?;
        s.set_read_timeout(Some(PROBE_TIMEOUT))
            .map_err(|e| e.to_string())?;
        let mut line = String::new();
        s.read_to_string(&mut line)
            .map_err(|e| format!("read: {}", describe_io(&e)))?;
        Ok(line.trim().to_owned())
    });
    push(
        &mut probes,
        &mut mark,
        Probe {
            took: Duration::ZERO,
            what: format!("policy allows: {} -> db {db_ip}:{db_port}", backend.name),
            expected: "connected".into(),
            pass: r.as_ref().is_ok_and(|b| answered_by(b) == "db"),
            got: match r {
                Ok(b) => format!("connected, \"{b}\""),
                Err(e) => e,
            },
        },
    );
    interrupted(stop)?;
    let r = timed_connect(
        frontend_ns,
        SocketAddr::from((db_ip, db_port)),
        DENY_TIMEOUT,
    );
    push(
        &mut probes,
        &mut mark,
        Probe {
            took: Duration::ZERO,
            what: format!("policy denies: {} -> db {db_ip}:{db_port}", frontend.name),
            expected: format!("dropped (timeout {:.1} s)", DENY_TIMEOUT.as_secs_f64()),
            pass: matches!(r, Ok((Err((std::io::ErrorKind::TimedOut, _)), _))),
            got: match r {
                Ok((Err((std::io::ErrorKind::TimedOut, _)), t)) => {
                    format!("timed out after {:.1} s", t.as_secs_f64())
                }
                Ok((Err((_, e)), _)) => e,
                Ok((Ok(()), _)) => "connected".into(),
                Err(e) => e,
            },
        },
    );

    // A Service without endpoints: rejected at once.
    interrupted(stop)?;
    let (empty_ip, empty_port, _) = ex.service_addr("default", "empty-service")?;
    let r = timed_connect(
        backend_ns,
        SocketAddr::from((empty_ip, empty_port)),
        PROBE_TIMEOUT,
    );
    push(
        &mut probes,
        &mut mark,
        Probe {
            took: Duration::ZERO,
            what: format!(
                "no endpoints: {} -> empty-service {empty_ip}:{empty_port}",
                backend.name
            ),
            expected: "connection refused".into(),
            pass: matches!(r, Ok((Err((std::io::ErrorKind::ConnectionRefused, _)), _))),
            got: match r {
                Ok((Err((std::io::ErrorKind::ConnectionRefused, _)), t)) => {
                    format!("connection refused in {} ms", t.as_millis())
                }
                Ok((Err((_, e)), _)) => e,
                Ok((Ok(()), _)) => "connected".into(),
                Err(e) => e,
            },
        },
    );
    Ok(probes)
}

fn got_text(r: &std::result::Result<String, String>) -> String {
    match r {
        Ok(b) => format!("HTTP 200 from {b}"),
        Err(e) => e.clone(),
    }
}

fn print_table(probes: &[Probe]) {
    let head = ["PROBE", "EXPECTED", "GOT", "TIME", "RESULT"];
    let rows: Vec<[String; 5]> = probes
        .iter()
        .map(|p| {
            [
                p.what.clone(),
                p.expected.clone(),
                p.got.clone(),
                format!("{} ms", p.took.as_millis()),
                if p.pass { "PASS" } else { "FAIL" }.to_owned(),
            ]
        })
        .collect();
    let mut width = head.map(str::len);
    for r in &rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: [&str; 5]| {
        let mut out = String::new();
        for (i, (c, w)) in cells.iter().zip(width).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(c);
            } else if i == 3 {
                // Durations right-aligned.
                let _ = write!(out, "{c:>w$}  ");
            } else {
                let _ = write!(out, "{c:<w$}  ");
            }
        }
        out
    };
    println!("{}", line(head));
    println!(
        "{}",
        "-".repeat(width.iter().sum::<usize>() + 2 * (width.len() - 1))
    );
    for r in &rows {
        println!(
            "{}",
            line([&r[0], &r[1], &r[2], &r[3], &r[4]].map(String::as_str))
        );
    }
}

/// `(label value, value)` of every sample of `family` with one label.
fn samples(text: &str, family: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(family)?.strip_prefix('{')?;
            let (labels, value) = rest.split_once('}')?;
            let label = labels.split_once('=')?.1.trim_matches('"').to_owned();
            Some((label, value.trim().parse().ok()?))
        })
        .collect()
}

/// `GET path` on a node's admin API from inside its namespace.
fn admin_get(ns: &Netns, path: &'static str) -> std::result::Result<String, String> {
    ns.run_in(move || {
        let addr: SocketAddr = ADMIN_ADDR.parse().map_err(|e| format!("{e}"))?;
        let mut s =
            TcpStream::connect_timeout(&addr, PROBE_TIMEOUT).map_err(|e| describe_io(&e))?;
        s.set_read_timeout(Some(PROBE_TIMEOUT))
            .map_err(|e| e.to_string())?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(|e| e.to_string())?;
        let mut text = String::new();
        s.read_to_string(&mut text).map_err(|e| describe_io(&e))?;
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        if head.split_whitespace().nth(1) != Some("200") {
            return Err(format!("GET {path}: {}", head.lines().next().unwrap_or("")));
        }
        Ok(body.to_owned())
    })
}

/// Prints each node's packet counters; false when one could not be read.
fn print_counters(demo: &Demo) -> bool {
    // The workers publish their counters every 100 ms.
    std::thread::sleep(Duration::from_millis(300));
    println!("\nLive counters (GET /metrics on each node's admin API {ADMIN_ADDR}):");
    let mut ok = true;
    let mut ipv6 = false;
    for n in &demo.topo.nodes {
        let Ok(ns) = demo.node_ns(&n.name) else {
            continue;
        };
        match admin_get(ns, "/metrics") {
            Ok(text) => {
                let fmt = |v: Vec<(String, f64)>| {
                    let parts: Vec<String> = v
                        .into_iter()
                        .filter(|(_, x)| *x > 0.0)
                        .map(|(k, x)| format!("{k} {x}"))
                        .collect();
                    if parts.is_empty() {
                        "none".to_owned()
                    } else {
                        parts.join(", ")
                    }
                };
                println!(
                    "  {:<7} forwarded: {}",
                    n.name,
                    fmt(samples(&text, "kxdp_forward_packets_total"))
                );
                let drops = samples(&text, "kxdp_drop_packets_total");
                ipv6 |= drops
                    .iter()
                    .any(|(k, v)| k == "ipv6-not-supported" && *v > 0.0);
                println!("  {:<7} dropped:   {}", "", fmt(drops));
            }
            Err(e) => {
                ok = false;
                println!("  {:<7} cannot read /metrics: {e}", n.name);
            }
        }
    }
    if ipv6 {
        println!(
            "  (ipv6-not-supported: the namespaces' own IPv6 link-local chatter; kxdp forwards IPv4)"
        );
    }
    ok
}

/// `--keep`: releases every guard and prints how to explore.
fn keep(demo: Demo, exe: &Path) {
    let Demo {
        kxdp,
        servers,
        topo,
        mut dir,
        pods,
    } = demo;
    dir.keep = true;
    let pod = |name: &str| pods.iter().find(|p| p.name == name);
    let ns_of = |name: &str| {
        pod(name)
            .and_then(|p| topo.pod(&p.short))
            .map(|p| p.ns.name().to_owned())
            .unwrap_or_default()
    };
    let frontend_ip = pod("frontend").map_or(Ipv4Addr::UNSPECIFIED, |p| p.ip);
    let node_ns = |name: &str| {
        topo.node(name)
            .map(|n| n.ns.name().to_owned())
            .unwrap_or_default()
    };
    let node_b_ip = topo.node("node-b").map_or(Ipv4Addr::UNSPECIFIED, |n| n.ip);
    let exe = exe.display();
    let manifests = dir.manifests();
    let lines = [
        (
            format!("ip netns exec {} curl -s http://10.96.0.10/", ns_of("backend")),
            "my-web-service from pod backend",
        ),
        (
            format!(
                "ip netns exec {} curl -s http://{node_b_ip}:30080/",
                topo.external.name()
            ),
            "the NodePort through node-b",
        ),
        (
            format!("ip netns exec {} {exe} get services", node_ns("node-a")),
            "what kxdp on node-a programs",
        ),
        (
            format!("ip netns exec {} {exe} top", node_ns("node-a")),
            "live counters",
        ),
        (
            format!(
                "ip netns exec {} curl -s http://{ADMIN_ADDR}/metrics",
                node_ns("node-b")
            ),
            "node-b's Prometheus metrics",
        ),
        (
            format!(
                "{exe} trace --manifests {} --node node-a --src {frontend_ip} --to default/db --proto tcp --dport 5432",
                manifests.display()
            ),
            "why frontend cannot reach db",
        ),
        (
            format!("ip netns list | grep {NAME_PREFIX}"),
            "the namespaces",
        ),
    ];
    println!("\nEverything keeps running (--keep). Explore:");
    for (cmd, why) in &lines {
        println!("  {cmd}\n      # {why}");
    }
    println!(
        "  manifests, logs: {}\nClean up with: {exe} demo --cleanup",
        dir.path.display()
    );
    for c in kxdp.into_iter().chain(servers) {
        c.release();
    }
    let _ = topo.leak();
}

/// `--cleanup`: every namespace named `kxdemo*` (SIGTERM to what runs in
/// it so kxdp detaches, bounded wait, then SIGKILL and delete) and the
/// scratch directories.
fn cleanup() {
    let names: Vec<String> = topology::netns_matching(NAME_PREFIX)
        .into_iter()
        .filter(|n| n.starts_with(NAME_PREFIX))
        .collect();
    let pids = |names: &[String]| -> Vec<String> {
        names
            .iter()
            .filter_map(|n| Command::new("ip").args(["netns", "pids", n]).output().ok())
            .flat_map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .filter(|p| p.parse::<u32>().is_ok())
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    for pid in pids(&names) {
        let _ = Command::new("kill").args(["-TERM", &pid]).output();
    }
    let deadline = Instant::now() + STOP_TIMEOUT;
    while Instant::now() < deadline && !pids(&names).is_empty() {
        std::thread::sleep(Duration::from_millis(50));
    }
    for n in &names {
        topology::remove_netns(n);
    }
    let mut dirs = 0;
    if let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(NAME_PREFIX)
                && std::fs::remove_dir_all(e.path()).is_ok()
            {
                dirs += 1;
            }
        }
    }
    println!(
        "kxdp demo --cleanup: removed {} namespaces and {dirs} scratch directories",
        names.len()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn examples_load_and_plan_servers() {
        let ex = Examples::load().unwrap();
        let records = ex.dns_records();
        assert!(records.contains(&(
            "my-web-service.default.svc.cluster.local".into(),
            Ipv4Addr::new(10, 96, 0, 10)
        )));
        let coredns = ex
            .state
            .pods
            .values()
            .find(|p| {
                p.metadata
                    .name
                    .as_deref()
                    .is_some_and(|n| n.starts_with("coredns"))
            })
            .unwrap();
        assert_eq!(servers_of(coredns), (vec![], vec![9153], true));
        let db = &ex.state.pods[&("default".to_owned(), "db".to_owned())];
        assert_eq!(servers_of(db), (vec![], vec![5432], false));
        let web = &ex.state.pods[&("default".to_owned(), "web-1".to_owned())];
        assert_eq!(servers_of(web), (vec![8080], vec![], false));
        assert_eq!(
            ex.service_addr("default", "example-nodeport").unwrap(),
            (Ipv4Addr::new(10, 96, 0, 20), 80, Some(30080))
        );
    }

    #[test]
    fn short_names_fit_ifnamsiz_and_are_unique() {
        let none: [&str; 0] = [];
        assert_eq!(short_name("web-1", none.iter().copied()), "web-1");
        assert_eq!(
            short_name("coredns-5d78c9869d-x7k2p", none.iter().copied()),
            "coredns"
        );
        let taken = ["coredns"];
        let n = short_name("coredns-other", taken.iter().copied());
        assert_ne!(n, "coredns");
        assert!(n.len() <= 11, "{n}");
        assert!(short_name(&"x".repeat(40), none.iter().copied()).len() <= 11);
    }

    #[test]
    fn generated_nodes_load_with_the_real_vtep_mac() {
        let ex = Examples::load().unwrap();
        // A topology node needs namespaces; render the same template from
        // plain values and read it back with kxdp's own loader.
        let yaml = node_yaml_for_test(&ex, "node-b", "192.168.50.2", "02:00:00:00:00:02", 2);
        let report = kxdp_control::manifests::load_str(Path::new("nodes.yaml"), &yaml);
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        let node = &report.state.nodes["node-b"];
        let ann = node.metadata.annotations.as_ref().unwrap();
        assert_eq!(
            ann["flannel.alpha.coreos.com/backend-data"],
            r#"{"VNI":1,"VtepMAC":"02:00:00:00:00:02"}"#
        );
        assert_eq!(
            kxdp_control::compile::node_underlay_ip(node),
            Some(Ipv4Addr::new(192, 168, 50, 2))
        );
        assert_eq!(
            node.metadata.labels.as_ref().unwrap()["kubernetes.io/os"],
            "linux"
        );
    }

    /// `node_yaml` takes a topology node; this renders the same template
    /// from plain values.
    fn node_yaml_for_test(ex: &Examples, name: &str, ip: &str, mac: &str, subnet: u8) -> String {
        node_yaml_text(
            name,
            ip.parse().unwrap(),
            mac,
            Ipv4Addr::new(10, 244, subnet, 0),
            ex.state.nodes.get(name),
        )
    }

    #[test]
    fn metrics_samples_parse() {
        let text = "# HELP x\nkxdp_forward_packets_total{direction=\"to-pod\"} 7\n\
                    kxdp_forward_packets_total{direction=\"vxlan\"} 0\n\
                    kxdp_drop_packets_total{reason=\"policy-denied\"} 3\n";
        assert_eq!(
            samples(text, "kxdp_forward_packets_total"),
            vec![("to-pod".into(), 7.0), ("vxlan".into(), 0.0)]
        );
        assert_eq!(
            samples(text, "kxdp_drop_packets_total"),
            vec![("policy-denied".into(), 3.0)]
        );
    }
}
