//! Which worker serves which `(interface, queue)`.
//!
//! # Rules
//!
//! - An interface with several rx queues (the uplink on a multi-queue NIC,
//!   or a veth created with `numrxqueues`) gets queue `i` on worker
//!   `i mod N`: its traffic is spread the way the NIC (RSS) or the sender
//!   spreads it over queues, and each worker transmits on its own queue's
//!   socket of that interface.
//! - A single-queue interface (a pod veth) goes whole to the least loaded
//!   worker, load being the number of queues a worker serves; ties go to
//!   the lowest index, so placement is deterministic.
//! - Releasing an interface gives its queues' load back.
//!
//! Pure bookkeeping, no I/O: the daemon asks [`Placement::assign`] before
//! opening sockets and tells [`Placement::release`] after closing them.

use std::collections::BTreeMap;

/// The queue -> worker assignment of every served interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    load: Vec<usize>,
    /// ifindex -> worker of each queue (index = queue id).
    assigned: BTreeMap<u32, Vec<usize>>,
}

impl Placement {
    /// Placement over `workers` workers (at least 1).
    pub fn new(workers: usize) -> Self {
        Placement {
            load: vec![0; workers.max(1)],
            assigned: BTreeMap::new(),
        }
    }

    /// Workers placed over.
    pub fn workers(&self) -> usize {
        self.load.len()
    }

    /// Queues each worker serves.
    pub fn load(&self) -> &[usize] {
        &self.load
    }

    /// Assigns the `queues` queues of `ifindex` (at least 1) and returns
    /// the worker of each queue. An interface already placed keeps its
    /// assignment.
    pub fn assign(&mut self, ifindex: u32, queues: u32) -> Vec<usize> {
        if let Some(a) = self.assigned.get(&ifindex) {
            return a.clone();
        }
        let n = self.load.len();
        let queues = queues.max(1) as usize;
        let workers: Vec<usize> = if queues > 1 {
            (0..queues).map(|q| q % n).collect()
        } else {
            let least = self
                .load
                .iter()
                .enumerate()
                .min_by_key(|&(i, l)| (*l, i))
                .map_or(0, |(i, _)| i);
            vec![least]
        };
        for &w in &workers {
            if let Some(l) = self.load.get_mut(w) {
                *l += 1;
            }
        }
        self.assigned.insert(ifindex, workers.clone());
        workers
    }

    /// The workers of `ifindex`'s queues (empty when not placed).
    pub fn workers_of(&self, ifindex: u32) -> &[usize] {
        self.assigned.get(&ifindex).map_or(&[], Vec::as_slice)
    }

    /// The worker that receives frames for `ifindex` from workers that
    /// serve none of its queues: the one of queue 0.
    pub fn owner(&self, ifindex: u32) -> Option<usize> {
        self.workers_of(ifindex).first().copied()
    }

    /// Forgets `ifindex`; returns the workers its queues were on.
    pub fn release(&mut self, ifindex: u32) -> Vec<usize> {
        let workers = self.assigned.remove(&ifindex).unwrap_or_default();
        for &w in &workers {
            if let Some(l) = self.load.get_mut(w) {
                *l = l.saturating_sub(1);
            }
        }
        workers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_multi_queue_uplink_spreads_queue_i_to_worker_i_mod_n() {
        let mut p = Placement::new(2);
        assert_eq!(p.assign(2, 4), vec![0, 1, 0, 1]);
        assert_eq!(p.load(), [2, 2]);
        assert_eq!(p.owner(2), Some(0));
        let mut p = Placement::new(3);
        assert_eq!(p.assign(2, 2), vec![0, 1]);
        assert_eq!(p.load(), [1, 1, 0]);
    }

    #[test]
    fn single_queue_veths_go_to_the_least_loaded_worker() {
        let mut p = Placement::new(2);
        // Uplink with one queue: worker 0.
        assert_eq!(p.assign(2, 1), vec![0]);
        // First pod veth to the idle worker, the next ones alternate.
        assert_eq!(p.assign(11, 1), vec![1]);
        assert_eq!(p.assign(12, 1), vec![0]);
        assert_eq!(p.assign(13, 1), vec![1]);
        assert_eq!(p.load(), [2, 2]);
        // Placing again keeps the assignment and the load.
        assert_eq!(p.assign(12, 1), vec![0]);
        assert_eq!(p.load(), [2, 2]);
        // A veth goes away: its worker takes the next one.
        assert_eq!(p.release(12), vec![0]);
        assert_eq!(p.workers_of(12), &[] as &[usize]);
        assert_eq!(p.assign(14, 1), vec![0]);
        assert!(p.release(99).is_empty(), "unknown interface");
        assert_eq!(p.load(), [2, 2]);
    }

    #[test]
    fn one_worker_takes_everything_and_zero_means_one() {
        let mut p = Placement::new(0);
        assert_eq!(p.workers(), 1);
        assert_eq!(p.assign(2, 3), vec![0, 0, 0]);
        assert_eq!(p.assign(11, 0), vec![0]);
        assert_eq!(p.load(), [4]);
    }
}
