//! Cross-worker hand-off: a frame whose egress interface belongs to
//! another worker is copied over to that worker, which copies it into a
//! frame of its own store and transmits it.
//!
//! Each worker owns one UMEM and the AF_XDP sockets bound on it; a frame of
//! one UMEM cannot be transmitted through a socket of another. So a frame
//! received by worker `a` whose egress is served by worker `b` travels as
//! bytes:
//!
//! ```text
//!   worker a                         lane (a -> b)                     worker b
//!   frame of UMEM a ─copy─► slot ─► [ full: ArrayQueue<Handoff> ] ─► copy ─► frame of UMEM b ─► tx
//!        (released)           ▲                                         │
//!                             └──── [ free: ArrayQueue<slot> ] ◄────────┘ (slot returned)
//! ```
//!
//! # Contract
//!
//! - One [`HandoffMesh`] per daemon, shared in an `Arc`; one *lane* per
//!   ordered pair `(from, to)` of distinct workers. Only worker `from`
//!   pushes into a lane and only worker `to` pops from it (single producer,
//!   single consumer), though the queues would tolerate more.
//! - Every slot (a `HANDOFF_SLOT_BYTES` buffer) is allocated when the mesh
//!   is built; sending and receiving move boxes between the lane's two
//!   bounded lock-free queues (crossbeam's `ArrayQueue`) and copy bytes.
//!   Nothing allocates, locks or makes a system call per packet.
//! - A lane holds at most `slots` frames. When the receiver falls behind
//!   and no slot is free, [`HandoffMesh::send`] refuses the frame
//!   ([`SendError::Full`]); the caller drops it and counts it
//!   (`handoff_full`): back pressure is a counted drop, never a wait.
//! - A frame is delivered at most once and in the order it was sent on
//!   its lane.
//! - The two copies are the price of separate UMEMs; frames that stay on
//!   one worker never come here.

use crossbeam_queue::ArrayQueue;

use crate::pipeline::Egress;

/// Bytes of one hand-off slot: a whole UMEM frame (2 KiB), so every frame
/// a worker could send fits.
pub const HANDOFF_SLOT_BYTES: usize = crate::pipeline::Frame::MIN_CAPACITY;
/// Most slots [`default_lane_slots`] gives a lane (2 MiB of slots).
pub const MAX_DEFAULT_LANE_SLOTS: usize = 1024;
/// Fewest slots [`default_lane_slots`] gives a lane.
pub const MIN_DEFAULT_LANE_SLOTS: usize = 64;
/// Slots all lanes *into* one worker get together by default (4 MiB).
pub const DEFAULT_INBOUND_SLOTS: usize = 2048;

/// Slots per lane for `workers` workers when not configured: the inbound
/// budget ([`DEFAULT_INBOUND_SLOTS`]) split over the `workers - 1` lanes
/// into a worker, within [`MIN_DEFAULT_LANE_SLOTS`]..=
/// [`MAX_DEFAULT_LANE_SLOTS`]. Memory is `workers * (workers - 1) * slots
/// * 2 KiB`: 4 MiB for 2 workers, about 32 MiB for 8 and 64 MiB for 16.
pub fn default_lane_slots(workers: usize) -> usize {
    let lanes_in = workers.saturating_sub(1).max(1);
    (DEFAULT_INBOUND_SLOTS / lanes_in).clamp(MIN_DEFAULT_LANE_SLOTS, MAX_DEFAULT_LANE_SLOTS)
}

type Slot = Box<[u8; HANDOFF_SLOT_BYTES]>;

/// A frame in transit between two workers.
#[derive(Debug)]
pub struct Handoff {
    /// Where the receiving worker sends it.
    pub egress: Egress,
    len: usize,
    data: Slot,
}

impl Handoff {
    /// The packet bytes.
    pub fn packet(&self) -> &[u8] {
        self.data.get(..self.len).unwrap_or(&[])
    }
}

/// Why a frame could not be handed over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendError {
    /// No free slot on the lane (the receiver is behind).
    Full,
    /// Longer than a slot.
    TooLong,
    /// No such lane (`from == to` or a worker index out of range).
    NoLane,
}

#[derive(Debug)]
struct Lane {
    full: ArrayQueue<Handoff>,
    free: ArrayQueue<Slot>,
}

impl Lane {
    fn new(slots: usize) -> Self {
        let slots = slots.max(1);
        let free = ArrayQueue::new(slots);
        for _ in 0..slots {
            // Cannot fail: exactly `slots` pushes into a queue of `slots`.
            let _ = free.push(Box::new([0u8; HANDOFF_SLOT_BYTES]));
        }
        Lane {
            full: ArrayQueue::new(slots),
            free,
        }
    }
}

/// The lanes between `workers` workers (see the module docs).
#[derive(Debug)]
pub struct HandoffMesh {
    workers: usize,
    slots: usize,
    /// `lanes[from * workers + to]`; the diagonal is `None`.
    lanes: Vec<Option<Lane>>,
}

impl HandoffMesh {
    /// Lanes between every ordered pair of `workers` workers, `slots`
    /// frames each (at least 1), all allocated now:
    /// `workers * (workers - 1) * slots * 2 KiB` of memory.
    pub fn new(workers: usize, slots: usize) -> Self {
        let lanes = (0..workers * workers)
            .map(|i| (i / workers != i % workers).then(|| Lane::new(slots)))
            .collect();
        HandoffMesh {
            workers,
            slots: slots.max(1),
            lanes,
        }
    }

    /// Workers the mesh connects.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// Slots per lane.
    pub fn lane_slots(&self) -> usize {
        self.slots
    }

    fn lane(&self, from: usize, to: usize) -> Option<&Lane> {
        if from >= self.workers || to >= self.workers {
            return None;
        }
        self.lanes.get(from * self.workers + to)?.as_ref()
    }

    /// Worker `from`: copies `packet` into a free slot of lane
    /// `(from, to)` and queues it for `egress`. Never blocks or allocates.
    pub fn send(
        &self,
        from: usize,
        to: usize,
        egress: Egress,
        packet: &[u8],
    ) -> Result<(), SendError> {
        let lane = self.lane(from, to).ok_or(SendError::NoLane)?;
        if packet.len() > HANDOFF_SLOT_BYTES {
            return Err(SendError::TooLong);
        }
        let mut data = lane.free.pop().ok_or(SendError::Full)?;
        if let Some(dst) = data.get_mut(..packet.len()) {
            dst.copy_from_slice(packet);
        }
        let h = Handoff {
            egress,
            len: packet.len(),
            data,
        };
        // Cannot be full: a lane has as many queue places as slots and the
        // slot came out of `free`. Should it ever be, the slot goes back.
        if let Err(h) = lane.full.push(h) {
            let _ = lane.free.push(h.data);
            return Err(SendError::Full);
        }
        Ok(())
    }

    /// Worker `to`: the oldest frame on lane `(from, to)`. Give it back
    /// with [`HandoffMesh::recycle`] once copied.
    pub fn recv(&self, from: usize, to: usize) -> Option<Handoff> {
        self.lane(from, to)?.full.pop()
    }

    /// Worker `to`: returns the slot of a frame [`HandoffMesh::recv`] gave
    /// out on lane `(from, to)`.
    pub fn recycle(&self, from: usize, to: usize, h: Handoff) {
        if let Some(lane) = self.lane(from, to) {
            // Cannot be full: the slot came out of this lane.
            let _ = lane.free.push(h.data);
        }
    }

    /// Frames waiting on lane `(from, to)`.
    pub fn pending(&self, from: usize, to: usize) -> usize {
        self.lane(from, to).map_or(0, |l| l.full.len())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    const POD: Egress = Egress::Pod { ifindex: 7 };

    #[test]
    fn frames_cross_in_order_and_slots_come_back() {
        let m = HandoffMesh::new(3, 4);
        assert_eq!(m.send(0, 2, POD, b"one"), Ok(()));
        assert_eq!(
            m.send(0, 2, Egress::Uplink { encapsulated: true }, b"two"),
            Ok(())
        );
        // Other lanes are independent.
        assert_eq!(m.pending(2, 0), 0);
        assert!(m.recv(1, 2).is_none());
        assert_eq!(m.pending(0, 2), 2);
        let a = m.recv(0, 2).unwrap();
        assert_eq!((a.packet(), a.egress), (&b"one"[..], POD));
        m.recycle(0, 2, a);
        let b = m.recv(0, 2).unwrap();
        assert_eq!(b.packet(), b"two");
        assert_eq!(b.egress, Egress::Uplink { encapsulated: true });
        m.recycle(0, 2, b);
        assert!(m.recv(0, 2).is_none());
    }

    #[test]
    fn a_full_lane_refuses_until_the_receiver_catches_up() {
        let m = HandoffMesh::new(2, 2);
        assert_eq!(m.send(1, 0, POD, &[1]), Ok(()));
        assert_eq!(m.send(1, 0, POD, &[2]), Ok(()));
        assert_eq!(m.send(1, 0, POD, &[3]), Err(SendError::Full));
        // The opposite lane still has room.
        assert_eq!(m.send(0, 1, POD, &[9]), Ok(()));
        let h = m.recv(1, 0).unwrap();
        assert_eq!(h.packet(), [1]);
        // Taken but not recycled: still no slot.
        assert_eq!(m.send(1, 0, POD, &[3]), Err(SendError::Full));
        m.recycle(1, 0, h);
        assert_eq!(m.send(1, 0, POD, &[3]), Ok(()));
        let got: Vec<u8> = std::iter::from_fn(|| {
            let h = m.recv(1, 0)?;
            let b = h.packet()[0];
            m.recycle(1, 0, h);
            Some(b)
        })
        .collect();
        assert_eq!(got, vec![2, 3]);
    }

    #[test]
    fn default_lane_sizes_bound_memory_as_workers_grow() {
        assert_eq!(default_lane_slots(1), MAX_DEFAULT_LANE_SLOTS);
        assert_eq!(default_lane_slots(2), 1024);
        assert_eq!(default_lane_slots(3), 1024);
        assert_eq!(default_lane_slots(5), 512);
        assert_eq!(default_lane_slots(16), 136);
        assert_eq!(default_lane_slots(64), MIN_DEFAULT_LANE_SLOTS);
        for n in 2..=64 {
            let inbound = (n - 1) * default_lane_slots(n);
            assert!(
                inbound <= DEFAULT_INBOUND_SLOTS.max((n - 1) * MIN_DEFAULT_LANE_SLOTS),
                "{n} workers"
            );
        }
    }

    #[test]
    fn bad_lanes_and_oversized_frames_are_refused() {
        let m = HandoffMesh::new(2, 2);
        assert_eq!(m.send(0, 0, POD, b"x"), Err(SendError::NoLane));
        assert_eq!(m.send(0, 2, POD, b"x"), Err(SendError::NoLane));
        assert_eq!(m.send(5, 1, POD, b"x"), Err(SendError::NoLane));
        let big = vec![0u8; HANDOFF_SLOT_BYTES + 1];
        assert_eq!(m.send(0, 1, POD, &big), Err(SendError::TooLong));
        let max = vec![0xa5u8; HANDOFF_SLOT_BYTES];
        assert_eq!(m.send(0, 1, POD, &max), Ok(()));
        assert_eq!(m.recv(0, 1).unwrap().packet(), &max[..]);
        assert!(m.recv(0, 0).is_none());
        // A single worker has no lanes at all.
        let one = HandoffMesh::new(1, 8);
        assert_eq!(one.send(0, 0, POD, b"x"), Err(SendError::NoLane));
    }

    #[test]
    fn a_producer_and_a_consumer_thread_lose_and_reorder_nothing() {
        let m = Arc::new(HandoffMesh::new(2, 8));
        let producer = {
            let m = m.clone();
            std::thread::spawn(move || {
                let mut full = 0u64;
                for i in 0..20_000u32 {
                    // Retry a bounded number of times, counting refusals.
                    let mut sent = false;
                    for _ in 0..1_000_000 {
                        match m.send(0, 1, POD, &i.to_be_bytes()) {
                            Ok(()) => {
                                sent = true;
                                break;
                            }
                            Err(SendError::Full) => {
                                full += 1;
                                std::thread::yield_now();
                            }
                            Err(e) => panic!("{e:?}"),
                        }
                    }
                    assert!(sent, "consumer stalled");
                }
                full
            })
        };
        let mut next = 0u32;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while next < 20_000 && std::time::Instant::now() < deadline {
            match m.recv(0, 1) {
                Some(h) => {
                    let v = u32::from_be_bytes(h.packet().try_into().unwrap());
                    assert_eq!(v, next, "in order, none lost");
                    next += 1;
                    m.recycle(0, 1, h);
                }
                None => std::thread::yield_now(),
            }
        }
        producer.join().unwrap();
        assert_eq!(next, 20_000);
        assert!(m.recv(0, 1).is_none());
    }
}
