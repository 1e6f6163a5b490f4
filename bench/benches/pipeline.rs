//! ns/packet of the pipeline at 100 / 10k / 30k Services (10 endpoints
//! each): established flow (one conntrack hit), new flow through a Service,
//! VXLAN decap, and VXLAN encap toward node-b.
//!
//! `established` is the issue-2 number: its flow is DNATed to the backend
//! Maglev picks, which in this fixture is on node-b, so the path includes
//! VXLAN encapsulation. `established_local` is a flow whose backend is
//! the local pod (DNAT + delivery to a veth, no encapsulation), to show
//! what the encapsulation costs on top.
//!
//! Run: `cargo bench -p kxdp-bench --bench pipeline`

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use kxdp_bench::fixture::*;
use kxdp_dataplane::conntrack::{AffinityTable, Conntrack, CtConfig};
use kxdp_dataplane::pipeline::{Egress, Frame, Ingress, NoTrace, Pipeline, Verdict};

const SCALES: [u32; 3] = [100, 10_000, 30_000];
const SEC: u64 = 1_000_000_000;
const NEW_FLOWS: u32 = 4096;

fn pipeline(capacity: usize) -> Pipeline {
    Pipeline::new(
        Arc::new(Conntrack::new(CtConfig::new(capacity))),
        Arc::new(AffinityTable::new(1024, None)),
    )
}

/// Copy `input` into a frame buffer and run it; the copy is part of what
/// a copy-mode AF_XDP worker pays too, and is the same in every case.
#[inline]
fn run(
    p: &mut Pipeline,
    t: &kxdp_dataplane::tables::TableSet,
    buf: &mut [u8],
    input: &[u8],
    ingress: Ingress,
    now: u64,
) -> Verdict {
    buf[Frame::HEADROOM..Frame::HEADROOM + input.len()].copy_from_slice(input);
    let mut frame = Frame::new(buf, Frame::HEADROOM, input.len()).expect("frame fits");
    p.process(t, now, &mut frame, ingress, &mut NoTrace)
}

/// The first flow from the client pod to `vip:80` (client ports from
/// `first_port`) whose first packet gets `want`; that packet committed it,
/// so the returned frame is an established flow in `p`.
fn flow_to(
    p: &mut Pipeline,
    t: &kxdp_dataplane::tables::TableSet,
    buf: &mut [u8],
    vip: std::net::Ipv4Addr,
    first_port: u16,
    want: Verdict,
) -> Vec<u8> {
    (first_port..first_port + 1000)
        .find_map(|sport| {
            let f = udp_frame(
                CLIENT_POD_MAC,
                CLIENT_HOST_MAC,
                CLIENT_POD,
                vip,
                sport,
                80,
                64,
            );
            let v = run(p, t, buf, &f, Ingress::Pod { ifindex: CLIENT_IF }, SEC);
            (v == want).then_some(f)
        })
        .expect("1000 flows over 10 backends reach each kind of backend")
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("pipeline");
    g.throughput(Throughput::Elements(1));
    for &n in &SCALES {
        let t = tables(n, 10);
        let mut buf = vec![0u8; Frame::MIN_CAPACITY];
        let vip = service_ip(n / 2);

        // Established: one flow, committed once, then conntrack hits. Its
        // backend is on node-b (the common case with 1 local endpoint of
        // 10), so it is VXLAN-encapsulated.
        let mut p = pipeline(1 << 16);
        let established = flow_to(
            &mut p,
            &t,
            &mut buf,
            vip,
            40000,
            Verdict::Forward(Egress::Uplink { encapsulated: true }),
        );
        g.bench_with_input(BenchmarkId::new("established", n), &n, |b, _| {
            b.iter(|| {
                black_box(run(
                    &mut p,
                    &t,
                    &mut buf,
                    black_box(&established),
                    Ingress::Pod { ifindex: CLIENT_IF },
                    SEC,
                ))
            })
        });

        // Established toward the local backend: DNAT and delivery to the
        // server pod's veth.
        let mut p = pipeline(1 << 16);
        let local = flow_to(
            &mut p,
            &t,
            &mut buf,
            vip,
            41000,
            Verdict::Forward(Egress::Pod { ifindex: SERVER_IF }),
        );
        g.bench_with_input(BenchmarkId::new("established_local", n), &n, |b, _| {
            b.iter(|| {
                black_box(run(
                    &mut p,
                    &t,
                    &mut buf,
                    black_box(&local),
                    Ingress::Pod { ifindex: CLIENT_IF },
                    SEC,
                ))
            })
        });

        // New flow through a Service: 4096 distinct flows into a fresh
        // conntrack, so every packet misses, picks a backend and commits.
        // Table setup is outside the timed part.
        let frames: Vec<Vec<u8>> = (0..NEW_FLOWS)
            .map(|i| {
                udp_frame(
                    CLIENT_POD_MAC,
                    CLIENT_HOST_MAC,
                    CLIENT_POD,
                    service_ip(i % n),
                    1024 + i as u16,
                    80,
                    64,
                )
            })
            .collect();
        g.throughput(Throughput::Elements(u64::from(NEW_FLOWS)));
        g.bench_with_input(BenchmarkId::new("new_flow_service", n), &n, |b, _| {
            b.iter_batched_ref(
                || pipeline(1 << 14),
                |p| {
                    for f in &frames {
                        black_box(run(
                            p,
                            &t,
                            &mut buf,
                            f,
                            Ingress::Pod { ifindex: CLIENT_IF },
                            SEC,
                        ));
                    }
                },
                BatchSize::LargeInput,
            )
        });
        g.throughput(Throughput::Elements(1));

        // Decap: VXLAN from node-b to a local pod (first packet commits).
        let inner = udp_frame(
            VTEP_B_MAC, VTEP_A_MAC, REMOTE_POD, SERVER_POD, 5000, 8080, 64,
        );
        let outer = vxlan_from_node_b(&inner);
        let mut p = pipeline(1 << 16);
        g.bench_with_input(BenchmarkId::new("decap", n), &n, |b, _| {
            b.iter(|| {
                black_box(run(
                    &mut p,
                    &t,
                    &mut buf,
                    black_box(&outer),
                    Ingress::Uplink,
                    SEC,
                ))
            })
        });

        // Encap: local pod to a remote pod (established).
        let to_remote = udp_frame(
            CLIENT_POD_MAC,
            CLIENT_HOST_MAC,
            CLIENT_POD,
            REMOTE_POD,
            40001,
            9000,
            64,
        );
        let mut p = pipeline(1 << 16);
        g.bench_with_input(BenchmarkId::new("encap", n), &n, |b, _| {
            b.iter(|| {
                black_box(run(
                    &mut p,
                    &t,
                    &mut buf,
                    black_box(&to_remote),
                    Ingress::Pod { ifindex: CLIENT_IF },
                    SEC,
                ))
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(std::time::Duration::from_secs(2)).warm_up_time(std::time::Duration::from_millis(500));
    targets = bench
}
criterion_main!(benches);
