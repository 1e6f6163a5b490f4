//! The whole pipeline on arbitrary frames, with conntrack state carried
//! from one input to the next (so replies, ICMP errors about tracked flows
//! and the established-flow fast path are reached).
//!
//! Input: byte 0 picks the ingress (even: uplink, odd: the client pod's
//! veth) and bit 1 whether the frame is sent twice; the rest is the frame.
//! Invariants: no panic; the frame stays inside its buffer; a transmitted
//! IPv4 frame has a valid header checksum and a consistent length.
#![no_main]

use std::cell::RefCell;
use std::sync::Arc;

use kxdp_dataplane::conntrack::{AffinityTable, Conntrack, CtConfig};
use kxdp_dataplane::pipeline::{Frame, Ingress, NoTrace, Pipeline, Verdict};
use kxdp_dataplane::tables::TableSet;
use kxdp_dataplane::testing::{tables, CLIENT_IF};
use kxdp_dataplane::wire::Ipv4Packet;
use libfuzzer_sys::fuzz_target;

thread_local! {
    static STATE: RefCell<(TableSet, Pipeline)> = RefCell::new((
        tables(16, 4),
        Pipeline::new(Arc::new(Conntrack::new(CtConfig::new(4096))), Arc::new(AffinityTable::new(256, Some(1)))),
    ));
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, frame)) = data.split_first() else {
        return;
    };
    let ingress = if mode & 1 == 0 { Ingress::Uplink } else { Ingress::Pod { ifindex: CLIENT_IF } };
    let repeats = if mode & 2 == 0 { 1 } else { 2 };
    STATE.with(|s| {
        let (t, p) = &mut *s.borrow_mut();
        for i in 0..repeats {
            let mut buf = vec![0u8; Frame::MIN_CAPACITY];
            let len = frame.len().min(Frame::MIN_CAPACITY - Frame::HEADROOM);
            buf[Frame::HEADROOM..Frame::HEADROOM + len].copy_from_slice(&frame[..len]);
            let Some(mut f) = Frame::new(&mut buf, Frame::HEADROOM, len) else {
                return;
            };
            let v = p.process(t, 1_000_000_000 + i, &mut f, ingress, &mut NoTrace);
            assert!(f.offset + f.len <= f.buf.len());
            let out = f.data();
            if matches!(v, Verdict::Forward(_) | Verdict::Reply(..)) && out.len() >= 34 && out[12..14] == [0x08, 0x00] {
                let ip = Ipv4Packet::new_checked(&out[14..]).expect("transmitted IPv4 parses");
                assert!(ip.verify_checksum(), "transmitted IPv4 header checksum");
            }
        }
    });
});
