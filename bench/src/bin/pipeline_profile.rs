//! A fixed loop over one pipeline case, for profilers: the table set is
//! built first, then `--packets` packets of one case go through
//! [`Pipeline::process`] inside [`hot_loop`] (never inlined, so callgrind
//! can count only it with `--toggle-collect=*hot_loop*`).
//!
//! ```text
//! pipeline_profile --case established --services 30000 --packets 20000000
//! perf record -e cpu-clock -g -- pipeline_profile ...
//! valgrind --tool=callgrind --toggle-collect='*hot_loop*' pipeline_profile --packets 1000000
//! ```
//!
//! Prints ns/packet (wall clock; meaningless under valgrind) and the
//! verdict of the first packet, so a profile of a dropping path is noticed.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use clap::{Parser, ValueEnum};
use kxdp_bench::fixture::*;
use kxdp_dataplane::conntrack::{AffinityTable, Conntrack, CtConfig};
use kxdp_dataplane::pipeline::{Frame, Ingress, NoTrace, Pipeline, Verdict};
use kxdp_dataplane::tables::TableSet;

const SEC: u64 = 1_000_000_000;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Case {
    /// Pod -> ClusterIP, conntrack hit (the same flow as the criterion
    /// bench's `established`).
    Established,
    /// VXLAN from node-b to a local pod.
    Decap,
    /// Pod -> remote pod (no Service), VXLAN toward node-b.
    Encap,
}

#[derive(Parser)]
#[command(about = "Loop one pipeline case for perf / callgrind")]
struct Cli {
    #[arg(long, value_enum, default_value_t = Case::Established)]
    case: Case,
    #[arg(long, default_value_t = 30_000)]
    services: u32,
    #[arg(long, default_value_t = 10_000_000)]
    packets: u64,
}

/// Copy `input` into `buf` and run it, as the criterion bench does.
#[inline(never)]
fn hot_loop(
    p: &mut Pipeline,
    t: &TableSet,
    buf: &mut [u8],
    input: &[u8],
    ingress: Ingress,
    packets: u64,
) -> u64 {
    let mut forwarded = 0;
    let end = Frame::HEADROOM + input.len();
    for _ in 0..packets {
        let Some(dst) = buf.get_mut(Frame::HEADROOM..end) else {
            return forwarded;
        };
        dst.copy_from_slice(input);
        let Some(mut frame) = Frame::new(buf, Frame::HEADROOM, input.len()) else {
            return forwarded;
        };
        if matches!(
            black_box(p.process(t, SEC, &mut frame, ingress, &mut NoTrace)),
            Verdict::Forward(_)
        ) {
            forwarded += 1;
        }
    }
    forwarded
}

fn main() {
    let cli = Cli::parse();
    let t = tables(cli.services.max(1), 10);
    let vip = service_ip(cli.services.max(1) / 2);
    let (input, ingress) = match cli.case {
        Case::Established => (
            udp_frame(
                CLIENT_POD_MAC,
                CLIENT_HOST_MAC,
                CLIENT_POD,
                vip,
                40000,
                80,
                64,
            ),
            Ingress::Pod { ifindex: CLIENT_IF },
        ),
        Case::Decap => (
            vxlan_from_node_b(&udp_frame(
                VTEP_B_MAC, VTEP_A_MAC, REMOTE_POD, SERVER_POD, 5000, 8080, 64,
            )),
            Ingress::Uplink,
        ),
        Case::Encap => (
            udp_frame(
                CLIENT_POD_MAC,
                CLIENT_HOST_MAC,
                CLIENT_POD,
                REMOTE_POD,
                40001,
                9000,
                64,
            ),
            Ingress::Pod { ifindex: CLIENT_IF },
        ),
    };
    let mut p = Pipeline::new(
        Arc::new(Conntrack::new(CtConfig::new(1 << 16))),
        Arc::new(AffinityTable::new(1024, None)),
    );
    let mut buf = vec![0u8; Frame::MIN_CAPACITY];
    // The first packet commits the conntrack entry; show its verdict.
    let first = {
        let end = Frame::HEADROOM + input.len();
        buf[Frame::HEADROOM..end].copy_from_slice(&input);
        match Frame::new(&mut buf, Frame::HEADROOM, input.len()) {
            Some(mut frame) => p.process(&t, SEC, &mut frame, ingress, &mut NoTrace),
            None => {
                eprintln!(
                    "pipeline_profile: a {}-byte frame does not fit",
                    input.len()
                );
                std::process::exit(1);
            }
        }
    };
    eprintln!(
        "{:?}, {} Services: first packet {first:?}",
        cli.case, cli.services
    );
    let t0 = Instant::now();
    let forwarded = hot_loop(&mut p, &t, &mut buf, &input, ingress, cli.packets);
    let elapsed = t0.elapsed();
    println!(
        "{:?} services={} packets={} forwarded={} ns/packet={:.1}",
        cli.case,
        cli.services,
        cli.packets,
        forwarded,
        elapsed.as_nanos() as f64 / cli.packets.max(1) as f64
    );
}
