//! Device NAPI settings for preferred busy polling (`kxdp run --busy-poll`).
//!
//! With busy polling the worker runs an interface's NAPI poll itself
//! (`recvfrom` on its AF_XDP sockets). The kernel hands the queue back to
//! its own softirq or NAPI thread when the worker stops polling; two device
//! attributes decide how soon (kernel `Documentation/networking/napi.rst`,
//! "Preferred busy polling"):
//!
//! - `napi_defer_hard_irqs`: how many empty polls the kernel waits before
//!   it re-arms the device's interrupt (for veth: lets the peer's transmit
//!   schedule NAPI again);
//! - `gro_flush_timeout`: the timer (ns) that polls in between, so packets
//!   are not stranded if the worker sleeps.
//!
//! Threaded NAPI is turned off as well: a NAPI kthread on the worker's
//! core is exactly the competition busy polling removes.
//!
//! Only interfaces kxdp serves are touched (the uplink and pod veths it
//! attached to), in the calling process's network namespace, and each
//! value is restored when kxdp lets go of the interface.

use std::path::PathBuf;

/// The values kxdp writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NapiSettings {
    pub defer_hard_irqs: u32,
    pub gro_flush_timeout_ns: u64,
}

impl Default for NapiSettings {
    fn default() -> Self {
        // Two empty polls, 200 µs: long enough to span the worker's
        // batch-processing time, short enough that a sleeping worker
        // (50 µs idle sleep) costs little latency.
        NapiSettings {
            defer_hard_irqs: 2,
            gro_flush_timeout_ns: 200_000,
        }
    }
}

const ATTRS: [&str; 3] = ["napi_defer_hard_irqs", "gro_flush_timeout", "threaded"];

/// The previous values of one interface's attributes, to restore.
#[derive(Debug)]
pub struct SavedNapi {
    ifname: String,
    previous: Vec<(&'static str, String)>,
}

fn attr_path(ifname: &str, attr: &str) -> PathBuf {
    PathBuf::from(format!("/sys/class/net/{ifname}/{attr}"))
}

/// Writes `settings` (and threaded NAPI off) on `ifname`. Attributes that
/// cannot be read or written are reported in the error list and skipped;
/// what was changed is restored by [`SavedNapi::restore`].
pub fn apply(ifname: &str, settings: NapiSettings) -> (SavedNapi, Vec<String>) {
    let mut saved = SavedNapi {
        ifname: ifname.to_owned(),
        previous: Vec::new(),
    };
    let mut errors = Vec::new();
    let values = [
        settings.defer_hard_irqs.to_string(),
        settings.gro_flush_timeout_ns.to_string(),
        "0".to_owned(),
    ];
    for (attr, value) in ATTRS.into_iter().zip(values) {
        let path = attr_path(ifname, attr);
        let old = match std::fs::read_to_string(&path) {
            Ok(s) => s.trim().to_owned(),
            Err(e) => {
                errors.push(format!("reading {}: {e}", path.display()));
                continue;
            }
        };
        if old == value {
            continue;
        }
        match std::fs::write(&path, &value) {
            Ok(()) => saved.previous.push((attr, old)),
            Err(e) => errors.push(format!("writing {value} to {}: {e}", path.display())),
        }
    }
    (saved, errors)
}

impl SavedNapi {
    /// Puts the previous values back (best effort: the interface may be
    /// gone, which is not an error).
    pub fn restore(self) {
        for (attr, old) in self.previous.into_iter().rev() {
            let path = attr_path(&self.ifname, attr);
            if !path.exists() {
                return;
            }
            if let Err(e) = std::fs::write(&path, &old) {
                tracing::warn!(path = %path.display(), error = %e, "restoring a NAPI setting");
            }
        }
    }

    /// Attributes that were changed.
    pub fn changed(&self) -> usize {
        self.previous.len()
    }
}
