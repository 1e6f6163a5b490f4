//! `kxdp trace`: one synthesized packet through the same pipeline code the
//! workers run, against tables compiled from manifests for one node.
//!
//! The probe enters the pipeline where it would on that node: a local pod's
//! packet on its veth, a remote pod's packet VXLAN-encapsulated from its
//! node, anything else on the uplink. A `--from` pod must run on `--node`
//! (trace the node where the packet enters). Output is a human table or,
//! with `-o json`, one JSON object per probe (DESIGN §4 fields).

use std::io::{BufRead, Write};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, ValueEnum};
use etherparse::PacketBuilder;
use serde::{Deserialize, Serialize};

use kxdp_control::compile::{compile, CompileOptions, NodeEnvironment};
use kxdp_control::manifests;
use kxdp_control::ClusterState;
use kxdp_dataplane::conntrack::{AffinityTable, Conntrack, CtConfig};
use kxdp_dataplane::pipeline::{Egress, Frame, Ingress, Pipeline, StageRecord, TraceLog, Verdict};
use kxdp_dataplane::tables::policy::{PolicyDirection, PolicyExplanation};
use kxdp_dataplane::tables::{IpProto, MacAddr, TableSet};
use kxdp_dataplane::wire::{EthernetFrame, Ipv4Packet, UdpPacket, VxlanPacket, ETHERTYPE_IPV4};
use kxdp_dataplane::DropReason;

/// Output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
}

/// Protocol of a probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProbeProto {
    Tcp,
    Udp,
    Sctp,
    Icmp,
}

#[derive(Args, Debug)]
pub struct TraceArgs {
    /// Manifests file or directory (multi-document YAML, `kind: List`).
    #[arg(long)]
    manifests: PathBuf,
    /// The node whose pipeline runs the probe.
    #[arg(long)]
    node: String,
    /// Source pod, NAMESPACE/NAME (must run on --node).
    #[arg(long, conflicts_with = "src")]
    from: Option<String>,
    /// Source address.
    #[arg(long)]
    src: Option<Ipv4Addr>,
    /// Destination pod, NAMESPACE/NAME.
    #[arg(long, conflicts_with_all = ["to_service", "dst"])]
    to: Option<String>,
    /// Destination Service, NAMESPACE/NAME (its ClusterIP).
    #[arg(long, conflicts_with = "dst")]
    to_service: Option<String>,
    /// Destination address.
    #[arg(long)]
    dst: Option<Ipv4Addr>,
    /// Protocol.
    #[arg(long, value_enum)]
    proto: Option<ProbeProto>,
    /// Source port (ICMP: echo identifier).
    #[arg(long)]
    sport: Option<u16>,
    /// Destination port (a Service's first port when omitted with --to-service).
    #[arg(long)]
    dport: Option<u16>,
    /// Read probes from FILE (or - for stdin), one JSON object per line
    /// with keys from, src, to, to_service, dst, proto, sport, dport; write
    /// one JSON result per line, in order.
    #[arg(long, conflicts_with_all = ["from", "src", "to", "to_service", "dst"])]
    batch: Option<String>,
    /// Name of the uplink interface in the output.
    #[arg(long, default_value = "eth0")]
    uplink: String,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value = "text")]
    output: OutputFormat,
}

/// One probe, as flags or as a batch line.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Probe {
    from: Option<String>,
    src: Option<Ipv4Addr>,
    to: Option<String>,
    to_service: Option<String>,
    dst: Option<Ipv4Addr>,
    proto: Option<ProbeProto>,
    sport: Option<u16>,
    dport: Option<u16>,
}

/// The JSON result of one probe.
#[derive(Debug, Serialize)]
pub struct TraceResult {
    pub verdict: &'static str,
    pub reason: Option<DropReason>,
    pub stages: Vec<StageRecord>,
    pub egress: Option<EgressOut>,
    pub packet: Option<PacketOut>,
    /// The NetworkPolicy that applies: the source pod's egress and the
    /// destination pod's ingress, for the pods on this node — the same
    /// explanation `kxdp get policies` prints from a running daemon.
    pub policies: Vec<PolicyExplanation>,
}

#[derive(Debug, Serialize)]
pub struct EgressOut {
    pub interface: String,
    pub kind: &'static str,
}

#[derive(Debug, Serialize)]
pub struct PacketOut {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub sport: Option<u16>,
    pub dport: Option<u16>,
    pub proto: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vxlan: Option<VxlanOut>,
}

#[derive(Debug, Serialize)]
pub struct VxlanOut {
    pub vni: u32,
    pub outer_src: Ipv4Addr,
    pub outer_dst: Ipv4Addr,
}

/// Everything compiled once per invocation.
pub struct TraceContext {
    state: ClusterState,
    tables: TableSet,
    uplink: String,
}

pub fn run(args: TraceArgs) -> Result<ExitCode> {
    let report = manifests::load_path(&args.manifests)
        .with_context(|| format!("loading {}", args.manifests.display()))?;
    for w in &report.warnings {
        eprintln!("warning: {w}");
    }
    for e in &report.errors {
        eprintln!("error: {e}");
    }
    let state = report.state;
    let opts = CompileOptions::new(args.node.as_str());
    let env = NodeEnvironment::synthetic(&state, &args.node);
    let out = compile(&state, &env, &opts, 1)
        .map_err(|e| anyhow!("compiling tables for node {}: {e}", args.node))?;
    for w in &out.warnings {
        eprintln!("warning: {w}");
    }
    let ctx = TraceContext {
        state,
        tables: out.tables,
        uplink: args.uplink.clone(),
    };

    if let Some(batch) = &args.batch {
        return run_batch(&ctx, batch);
    }
    let probe = Probe {
        from: args.from,
        src: args.src,
        to: args.to,
        to_service: args.to_service,
        dst: args.dst,
        proto: args.proto,
        sport: args.sport,
        dport: args.dport,
    };
    let result = trace_probe(&ctx, &probe)?;
    match args.output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&result)?),
        OutputFormat::Text => print_text(&result),
    }
    Ok(ExitCode::SUCCESS)
}

fn run_batch(ctx: &TraceContext, source: &str) -> Result<ExitCode> {
    let reader: Box<dyn BufRead> = if source == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(source).with_context(|| format!("opening {source}"))?,
        ))
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut failed = false;
    for (n, line) in reader.lines().enumerate() {
        let line = line.with_context(|| format!("reading {source}"))?;
        if line.trim().is_empty() {
            continue;
        }
        let result = serde_json::from_str::<Probe>(&line)
            .map_err(|e| anyhow!("line {}: {e}", n + 1))
            .and_then(|p| trace_probe(ctx, &p).map_err(|e| anyhow!("line {}: {e:#}", n + 1)));
        match result {
            Ok(r) => serde_json::to_writer(&mut out, &r)?,
            Err(e) => {
                failed = true;
                serde_json::to_writer(&mut out, &serde_json::json!({ "error": format!("{e:#}") }))?;
            }
        }
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn find_pod<'a>(state: &'a ClusterState, key: &str) -> Result<&'a k8s_openapi::api::core::v1::Pod> {
    let (ns, name) = key
        .split_once('/')
        .ok_or_else(|| anyhow!("pod {key:?}: expected NAMESPACE/NAME"))?;
    state
        .pods
        .get(&(ns.to_string(), name.to_string()))
        .ok_or_else(|| anyhow!("pod {key} not found in the manifests"))
}

fn pod_ip(pod: &k8s_openapi::api::core::v1::Pod, key: &str) -> Result<Ipv4Addr> {
    let status = pod
        .status
        .as_ref()
        .ok_or_else(|| anyhow!("pod {key} has no status (no IP)"))?;
    let candidates = status
        .pod_ips
        .iter()
        .flatten()
        .map(|p| p.ip.as_str())
        .chain(status.pod_ip.as_deref());
    for c in candidates {
        if let Ok(ip) = c.parse::<Ipv4Addr>() {
            return Ok(ip);
        }
    }
    bail!("pod {key} has no IPv4 address")
}

/// Resolve the probe's destination: address, and the default port.
fn destination(
    ctx: &TraceContext,
    probe: &Probe,
) -> Result<(Ipv4Addr, Option<u16>, Option<ProbeProto>)> {
    if let Some(to) = &probe.to {
        return Ok((pod_ip(find_pod(&ctx.state, to)?, to)?, None, None));
    }
    if let Some(svc) = &probe.to_service {
        let (ns, name) = svc
            .split_once('/')
            .ok_or_else(|| anyhow!("service {svc:?}: expected NAMESPACE/NAME"))?;
        let s = ctx
            .state
            .services
            .get(&(ns.to_string(), name.to_string()))
            .ok_or_else(|| anyhow!("service {svc} not found"))?;
        let spec = s
            .spec
            .as_ref()
            .ok_or_else(|| anyhow!("service {svc} has no spec"))?;
        let ip = spec
            .cluster_ips
            .iter()
            .flatten()
            .chain(spec.cluster_ip.iter())
            .find_map(|ip| ip.parse::<Ipv4Addr>().ok())
            .ok_or_else(|| {
                anyhow!("service {svc} has no IPv4 ClusterIP (headless or ExternalName?)")
            })?;
        let first = spec.ports.iter().flatten().next();
        let port = first.map(|p| p.port).and_then(|p| u16::try_from(p).ok());
        // A ServicePort's protocol defaults to TCP.
        let proto = first.map(|p| match p.protocol.as_deref() {
            Some("UDP") => ProbeProto::Udp,
            Some("SCTP") => ProbeProto::Sctp,
            _ => ProbeProto::Tcp,
        });
        return Ok((ip, port, proto));
    }
    if let Some(dst) = probe.dst {
        return Ok((dst, None, None));
    }
    bail!("a destination is required: --to, --to-service or --dst")
}

/// Build the probe frame and pick its ingress.
fn build_probe(ctx: &TraceContext, probe: &Probe) -> Result<(Vec<u8>, Ingress, IpProto, u16, u16)> {
    let t = &ctx.tables;
    let src = match (&probe.from, probe.src) {
        (Some(from), _) => {
            let pod = find_pod(&ctx.state, from)?;
            let node = pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.as_deref())
                .unwrap_or("");
            if node != t.node.node_name {
                bail!(
                    "pod {from} runs on node {node:?}, not {}: trace with --node {node}",
                    t.node.node_name
                );
            }
            pod_ip(pod, from)?
        }
        (None, Some(ip)) => ip,
        (None, None) => bail!("a source is required: --from or --src"),
    };
    let (dst, default_port, default_proto) = destination(ctx, probe)?;
    let proto = probe
        .proto
        .or(default_proto)
        .ok_or_else(|| anyhow!("--proto is required"))?;
    let dport = match proto {
        ProbeProto::Icmp => 0,
        _ => probe
            .dport
            .or(default_port)
            .ok_or_else(|| anyhow!("--dport is required"))?,
    };
    let sport = probe.sport.unwrap_or(40000);
    let (ip_proto, sport, dport) = match proto {
        ProbeProto::Tcp => (IpProto::Tcp, sport, dport),
        ProbeProto::Udp => (IpProto::Udp, sport, dport),
        ProbeProto::Sctp => (IpProto::Sctp, sport, dport),
        ProbeProto::Icmp => (IpProto::Icmp, sport, sport),
    };

    // Where does it enter?
    if let Some(pod) = t.pods.by_ip(src) {
        let iface = pod
            .interface
            .as_ref()
            .ok_or_else(|| anyhow!("pod {} has no interface", pod.key()))?;
        let frame = l4_frame(iface.pod_mac, iface.host_mac, src, dst, proto, sport, dport)?;
        return Ok((
            frame,
            Ingress::Pod {
                ifindex: iface.ifindex,
            },
            ip_proto,
            sport,
            dport,
        ));
    }
    if let Some(remote) = t.routes.lookup(src) {
        // A remote pod's packet arrives encapsulated by its node.
        let inner = l4_frame(
            remote.vtep_mac,
            t.node.vtep_mac,
            src,
            dst,
            proto,
            sport,
            dport,
        )?;
        let mut vx = vec![0x08, 0, 0, 0];
        vx.extend_from_slice(&(t.node.vxlan.vni << 8).to_be_bytes());
        vx.extend_from_slice(&inner);
        let src_mac = t
            .neighbours
            .lookup(remote.vtep_ip)
            .unwrap_or(MacAddr([0x02, 0, 0, 0, 0, 0x02]));
        let mut out = Vec::new();
        PacketBuilder::ethernet2(src_mac.0, t.node.uplink_mac.0)
            .ipv4(remote.vtep_ip.octets(), t.node.vtep_ip.octets(), 64)
            .udp(49152, t.node.vxlan.port)
            .write(&mut out, &vx)?;
        return Ok((out, Ingress::Uplink, ip_proto, sport, dport));
    }
    let src_mac = t
        .neighbours
        .lookup(src)
        .unwrap_or(MacAddr([0x02, 0, 0, 0, 0, 0x01]));
    let frame = l4_frame(src_mac, t.node.uplink_mac, src, dst, proto, sport, dport)?;
    Ok((frame, Ingress::Uplink, ip_proto, sport, dport))
}

fn l4_frame(
    src_mac: MacAddr,
    dst_mac: MacAddr,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: ProbeProto,
    sport: u16,
    dport: u16,
) -> Result<Vec<u8>> {
    let ip = PacketBuilder::ethernet2(src_mac.0, dst_mac.0).ipv4(src.octets(), dst.octets(), 64);
    let mut out = Vec::new();
    match proto {
        ProbeProto::Tcp => ip.tcp(sport, dport, 1, 64240).syn().write(&mut out, &[])?,
        ProbeProto::Udp => ip.udp(sport, dport).write(&mut out, b"kxdp-trace")?,
        ProbeProto::Icmp => ip
            .icmpv4_echo_request(sport, 1)
            .write(&mut out, b"kxdp-trace")?,
        ProbeProto::Sctp => {
            // SCTP common header + an INIT-like chunk header; CRC32c filled below.
            let mut sctp = vec![0u8; 12 + 4];
            sctp[0..2].copy_from_slice(&sport.to_be_bytes());
            sctp[2..4].copy_from_slice(&dport.to_be_bytes());
            sctp[12] = 1; // INIT
            sctp[14..16].copy_from_slice(&4u16.to_be_bytes());
            let mut p = kxdp_dataplane::wire::SctpPacket::new_checked(&mut sctp[..])
                .map_err(|e| anyhow!("sctp: {e}"))?;
            p.fill_checksum();
            ip.write(&mut out, 132.into(), &sctp)?;
        }
    }
    Ok(out)
}

/// Trace one probe through a fresh pipeline.
pub fn trace_probe(ctx: &TraceContext, probe: &Probe) -> Result<TraceResult> {
    let (input, ingress, _, _, _) = build_probe(ctx, probe)?;
    let ct = Arc::new(Conntrack::new(CtConfig {
        capacity: 64,
        ..CtConfig::default()
    }));
    let mut pipeline = Pipeline::new(ct, Arc::new(AffinityTable::new(64, None)));
    let mut buf = vec![0u8; Frame::MIN_CAPACITY.max(Frame::HEADROOM + input.len() + 128)];
    buf[Frame::HEADROOM..Frame::HEADROOM + input.len()].copy_from_slice(&input);
    let mut frame = Frame::new(&mut buf, Frame::HEADROOM, input.len())
        .ok_or_else(|| anyhow!("probe does not fit a frame"))?;
    let mut log = TraceLog::default();
    let verdict = pipeline.process(&ctx.tables, 1_000_000_000, &mut frame, ingress, &mut log);
    let (verdict_name, reason, egress) = match verdict {
        Verdict::Forward(e) => ("forward", None, Some(e)),
        Verdict::Reply(e, reason) => (
            if reason.is_some() { "reject" } else { "reply" },
            reason,
            Some(e),
        ),
        Verdict::ToHost => ("host", None, None),
        Verdict::Drop(r) => ("drop", Some(r), None),
    };
    let egress_out = match (verdict, egress) {
        (Verdict::ToHost, _) => Some(EgressOut {
            interface: "host".into(),
            kind: "host",
        }),
        (_, Some(Egress::Pod { ifindex })) => {
            let name = ctx
                .tables
                .pods
                .by_ifindex(ifindex)
                .and_then(|p| p.interface.as_ref())
                .map(|i| i.name.to_string());
            Some(EgressOut {
                interface: name.unwrap_or_else(|| format!("ifindex {ifindex}")),
                kind: "pod",
            })
        }
        (_, Some(Egress::Uplink { encapsulated })) => Some(EgressOut {
            interface: ctx.uplink.clone(),
            kind: if encapsulated { "vxlan" } else { "uplink" },
        }),
        (_, None) => None,
    };
    let packet = match verdict {
        Verdict::Forward(_) | Verdict::Reply(..) => describe_packet(
            frame.data(),
            matches!(egress, Some(Egress::Uplink { encapsulated: true })),
        ),
        Verdict::ToHost => describe_packet(frame.data(), false),
        Verdict::Drop(_) => None,
    };
    let mut policies = Vec::new();
    let t = &ctx.tables;
    if let Some(pod) = input_source(&input, ingress).and_then(|ip| t.pods.by_ip(ip)) {
        policies.push(t.policy.explain(pod.policy_slot, PolicyDirection::Egress));
    }
    // The destination pod: where the packet went, or (denied) where it was
    // going — the probe's own destination.
    let final_dst = match verdict {
        Verdict::Forward(Egress::Pod { .. }) => packet.as_ref().map(|p| p.dst),
        Verdict::Drop(DropReason::PolicyDeniedIngress) => {
            input_destination(&input, t.node.vxlan.port)
        }
        _ => None,
    };
    if let Some(pod) = final_dst.and_then(|ip| t.pods.by_ip(ip)) {
        policies.push(t.policy.explain(pod.policy_slot, PolicyDirection::Ingress));
    }
    Ok(TraceResult {
        verdict: verdict_name,
        reason,
        stages: log.records,
        egress: egress_out,
        packet,
        policies,
    })
}

/// The IPv4 source of the probe as it enters (pod veths: the pod).
fn input_source(input: &[u8], ingress: Ingress) -> Option<Ipv4Addr> {
    match ingress {
        Ingress::Pod { .. } => {
            let eth = EthernetFrame::new_checked(input).ok()?;
            Some(Ipv4Packet::new_checked(eth.payload()).ok()?.src())
        }
        Ingress::Uplink => None,
    }
}

/// The IPv4 destination of the probe as built (inside VXLAN if encapsulated).
fn input_destination(input: &[u8], vxlan_port: u16) -> Option<Ipv4Addr> {
    let p = describe_packet(input, false)?;
    if p.proto == "udp" && p.dport == Some(vxlan_port) {
        return describe_packet(input, true).map(|p| p.dst);
    }
    Some(p.dst)
}

/// Describe a frame as it leaves (inner packet plus VXLAN header facts).
fn describe_packet(frame: &[u8], encapsulated: bool) -> Option<PacketOut> {
    let eth_len = EthernetFrame::<&[u8]>::HEADER_LEN;
    if encapsulated {
        let outer = Ipv4Packet::new_checked(frame.get(eth_len..)?).ok()?;
        let udp = UdpPacket::new_checked(outer.payload()).ok()?;
        let vx = VxlanPacket::new_checked(udp.payload()).ok()?;
        let inner_start = eth_len + outer.header_len() + 8 + 8;
        let mut p = describe_packet(frame.get(inner_start..)?, false)?;
        p.vxlan = Some(VxlanOut {
            vni: vx.vni(),
            outer_src: outer.src(),
            outer_dst: outer.dst(),
        });
        return Some(p);
    }
    let eth = EthernetFrame::new_checked(frame).ok()?;
    if eth.ethertype() != ETHERTYPE_IPV4 {
        return None;
    }
    let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
    let l4 = ip.payload();
    let ports = || -> Option<(u16, u16)> {
        Some((
            u16::from_be_bytes([*l4.first()?, *l4.get(1)?]),
            u16::from_be_bytes([*l4.get(2)?, *l4.get(3)?]),
        ))
    };
    let (proto, sport, dport) = match ip.protocol() {
        6 => (
            "tcp".to_string(),
            ports().map(|p| p.0),
            ports().map(|p| p.1),
        ),
        17 => (
            "udp".to_string(),
            ports().map(|p| p.0),
            ports().map(|p| p.1),
        ),
        132 => (
            "sctp".to_string(),
            ports().map(|p| p.0),
            ports().map(|p| p.1),
        ),
        1 => ("icmp".to_string(), None, None),
        n => (n.to_string(), None, None),
    };
    Some(PacketOut {
        src: ip.src(),
        dst: ip.dst(),
        sport,
        dport,
        proto,
        vxlan: None,
    })
}

fn print_text(r: &TraceResult) {
    for s in &r.stages {
        println!("  {:<18} {}", s.stage, s.decision);
    }
    print!("verdict: {}", r.verdict);
    if let Some(reason) = r.reason {
        print!(" ({reason})");
    }
    println!();
    if let Some(e) = &r.egress {
        println!("egress:  {} ({})", e.interface, e.kind);
    }
    if let Some(p) = &r.packet {
        let port = |p: Option<u16>| p.map(|p| format!(":{p}")).unwrap_or_default();
        print!(
            "packet:  {} {}{} -> {}{}",
            p.proto,
            p.src,
            port(p.sport),
            p.dst,
            port(p.dport)
        );
        if let Some(v) = &p.vxlan {
            print!(
                "  in VXLAN VNI {} {} -> {}",
                v.vni, v.outer_src, v.outer_dst
            );
        }
        println!();
    }
}
