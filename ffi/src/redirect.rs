//! Loader for the in-kernel XDP redirect baseline (`ffi/bpf/redirect.c`):
//! the forwarding ceiling of an in-kernel XDP dataplane on veth, which the
//! benchmark harness (`kxdp-bench`, mode `xdp-redirect`) compares kxdp
//! with. kxdp itself never loads it.
//!
//! [`RedirectProgram::forward`] attaches `redirect_fwd` to an ingress
//! interface: every frame gets the given source/destination MACs and is
//! redirected (`bpf_redirect_map` on a `DEVMAP_HASH`) to the egress
//! interface. [`RedirectProgram::attach_pass`] attaches `redirect_pass`
//! (`XDP_PASS`, counted) to the *peer* of a veth that frames are
//! redirected into: a veth only offers `ndo_xdp_xmit` while its peer has
//! NAPI enabled, which an XDP program (or GRO on the peer) provides;
//! otherwise every redirect into it fails. Those drops are counted as
//! receive drops of the *ingress* veth (`ethtool -S`
//! `rx_queue_N_drops`, `ip -s link` RX dropped, with
//! `rx_queue_N_xdp_redirect` staying 0), not in this program's counters
//! (`tests/redirect.rs` checks both behaviours on this kernel).
//!
//! # Namespaces and cleanup
//!
//! Attaching, map updates (the DEVMAP resolves ifindexes in the calling
//! thread's network namespace) and detaching act on the calling thread's
//! network namespace. Each attachment remembers its namespace (an open
//! `/proc/thread-self/ns/net`); `Drop` detaches every program this loader
//! attached, each from a short-lived thread inside that namespace, and
//! only when the interface still has the same index and still runs this
//! loader's program. Deleting the namespace also removes the programs
//! (with its interfaces); holding the namespace file keeps it alive until
//! the `RedirectProgram` is dropped, so drop it first.
//!
//! # Safety rails
//!
//! Refuses the loopback device and never replaces a program already
//! attached (`XDP_FLAGS_UPDATE_IF_NOEXIST`): this is a benchmark tool and
//! must only run on interfaces its caller created.

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use libbpf_rs::{MapCore, MapFlags, MapHandle, ObjectBuilder, Xdp, XdpFlags};

use crate::xdp::{bpf_err, object_map, object_prog_fd, AttachMode, Interface, XdpError};

/// The compiled redirect program (built by `build.rs`).
pub static REDIRECT_OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/redirect.bpf.o"));

/// Capacity of the forwarding maps (`KXDP_REDIRECT_MAX_PORTS`).
pub const MAX_PORTS: usize = 64;

const PROG_FWD: &str = "redirect_fwd";
const PROG_PASS: &str = "redirect_pass";

type Result<T> = std::result::Result<T, XdpError>;

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> XdpError {
    let what = what.into();
    move |source| XdpError::Io { what, source }
}

/// MACs a forwarded frame leaves with (`struct kxdp_fwd_macs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FwdMacs {
    /// Ethernet source: normally the egress interface's own MAC.
    pub src: [u8; 6],
    /// Ethernet destination: the next hop's MAC.
    pub dst: [u8; 6],
}

impl FwdMacs {
    fn to_bytes(self) -> [u8; 12] {
        let mut b = [0u8; 12];
        b[..6].copy_from_slice(&self.src);
        b[6..].copy_from_slice(&self.dst);
        b
    }
}

/// Counters of the redirect program, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RedirectStats {
    /// Frames `redirect_fwd` handed to `bpf_redirect_map` (the redirect
    /// into the egress device can still fail: see the module docs).
    pub fwd_redirect: u64,
    /// Frames dropped because the entry had MACs but no egress port.
    pub fwd_no_port: u64,
    /// Frames passed to the kernel: the ingress had no entry.
    pub fwd_no_entry: u64,
    /// Frames shorter than an Ethernet header, dropped.
    pub fwd_runt: u64,
    /// Frames `redirect_pass` passed on a peer.
    pub peer_pass: u64,
}

/// Number of stats slots (`STAT_MAX` in redirect.c).
const STAT_SLOTS: usize = 5;

impl RedirectStats {
    /// From the per-slot sums, in the order of `enum kxdp_redirect_stat`.
    fn from_slots(v: [u64; STAT_SLOTS]) -> Self {
        let [fwd_redirect, fwd_no_port, fwd_no_entry, fwd_runt, peer_pass] = v;
        RedirectStats {
            fwd_redirect,
            fwd_no_port,
            fwd_no_entry,
            fwd_runt,
            peer_pass,
        }
    }
}

/// Which of the two programs an attachment runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Which {
    Fwd,
    Pass,
}

/// One program on one interface, in the namespace it was attached in.
#[derive(Debug)]
struct Attachment {
    iface: Interface,
    mode: AttachMode,
    which: Which,
    /// The network namespace of `iface` (`/proc/thread-self/ns/net` at
    /// attach time).
    netns: File,
}

/// The loaded redirect program and the interfaces it is attached to.
/// Detaches everything on `Drop` (module docs). `Send`: it owns file
/// descriptors only, so it can be built on one namespace's thread and
/// dropped on another.
#[derive(Debug)]
pub struct RedirectProgram {
    prog_fwd: OwnedFd,
    prog_pass: OwnedFd,
    fwd_ports: MapHandle,
    fwd_macs: MapHandle,
    stats: MapHandle,
    attached: Vec<Attachment>,
    /// `(st_dev, st_ino)` of the namespace the forwarding entries' ifindexes
    /// belong to, once there is one.
    fwd_netns: Option<(u64, u64)>,
}

/// Identity of the calling thread's network namespace.
fn current_netns_id() -> Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata("/proc/thread-self/ns/net")
        .map_err(io_err("stat this thread's network namespace"))?;
    Ok((m.dev(), m.ino()))
}

impl RedirectProgram {
    /// Loads both programs into the kernel (nothing attached yet).
    pub fn load() -> Result<Self> {
        let open = ObjectBuilder::default()
            .open_memory(REDIRECT_OBJECT)
            .map_err(bpf_err("open redirect object"))?;
        let object = open.load().map_err(bpf_err("load redirect object"))?;
        let map = |name| object_map(&object, name);
        let prog = |name| object_prog_fd(&object, name);
        // The duplicated fds keep programs and maps alive once `object`
        // (not Send) is dropped at the end of this function.
        Ok(RedirectProgram {
            prog_fwd: prog(PROG_FWD)?,
            prog_pass: prog(PROG_PASS)?,
            fwd_ports: map("fwd_ports")?,
            fwd_macs: map("fwd_macs")?,
            stats: map("redirect_stats")?,
            attached: Vec::new(),
            fwd_netns: None,
        })
    }

    /// Forwards every frame arriving on `ingress` to `egress` with `macs`
    /// (both interfaces in the calling thread's namespace): fills the
    /// maps, then attaches `redirect_fwd` to `ingress`.
    ///
    /// The maps are keyed by ingress ifindex, which is only unique within
    /// a namespace: every `forward` of one `RedirectProgram` must be made
    /// from the same namespace, and each ingress only once (both refused
    /// otherwise, leaving the existing forwarding as it was).
    pub fn forward(
        &mut self,
        ingress: &Interface,
        egress: &Interface,
        macs: FwdMacs,
        mode: AttachMode,
    ) -> Result<()> {
        check_iface(ingress)?;
        check_iface(egress)?;
        let here = current_netns_id()?;
        match self.fwd_netns {
            Some(ns) if ns != here => {
                return Err(XdpError::Refused {
                    name: ingress.name.clone(),
                    why: "this program already forwards in another network namespace",
                })
            }
            _ => {}
        }
        if self
            .attached
            .iter()
            .any(|a| a.which == Which::Fwd && a.iface.ifindex == ingress.ifindex)
        {
            return Err(XdpError::AlreadyAttached {
                ifindex: ingress.ifindex,
            });
        }
        let key = ingress.ifindex.to_ne_bytes();
        self.fwd_macs
            .update(&key, &macs.to_bytes(), MapFlags::ANY)
            .map_err(bpf_err(format!("set MACs for {}", ingress.name)))?;
        self.fwd_ports
            .update(&key, &egress.ifindex.to_ne_bytes(), MapFlags::ANY)
            .map_err(bpf_err(format!(
                "set egress {} for {}",
                egress.name, ingress.name
            )))?;
        let res = self.attach(ingress, Which::Fwd, mode);
        match res {
            Ok(()) => self.fwd_netns = Some(here),
            Err(_) => {
                let _ = self.fwd_ports.delete(&key);
                let _ = self.fwd_macs.delete(&key);
            }
        }
        res
    }

    /// Attaches `redirect_pass` to `iface` (the peer of a veth frames are
    /// redirected into; module docs).
    pub fn attach_pass(&mut self, iface: &Interface, mode: AttachMode) -> Result<()> {
        check_iface(iface)?;
        self.attach(iface, Which::Pass, mode)
    }

    fn attach(&mut self, iface: &Interface, which: Which, mode: AttachMode) -> Result<()> {
        let netns = File::open("/proc/thread-self/ns/net")
            .map_err(io_err("open this thread's network namespace"))?;
        let fd = match which {
            Which::Fwd => self.prog_fwd.as_fd(),
            Which::Pass => self.prog_pass.as_fd(),
        };
        Xdp::new(fd)
            .attach(
                iface.ifindex as i32,
                mode.flags() | XdpFlags::UPDATE_IF_NOEXIST,
            )
            .map_err(bpf_err(format!(
                "attach {which:?} program to {}",
                iface.name
            )))?;
        self.attached.push(Attachment {
            iface: iface.clone(),
            mode,
            which,
            netns,
        });
        Ok(())
    }

    /// The program's counters, summed over CPUs.
    pub fn stats(&self) -> Result<RedirectStats> {
        let mut vals = [0u64; STAT_SLOTS];
        for (slot, v) in vals.iter_mut().enumerate() {
            let per_cpu = self
                .stats
                .lookup_percpu(&(slot as u32).to_ne_bytes(), MapFlags::ANY)
                .map_err(bpf_err("read redirect stats"))?
                .unwrap_or_default();
            *v = per_cpu
                .iter()
                .filter_map(|b| b.get(..8).and_then(|b| b.try_into().ok()))
                .map(u64::from_ne_bytes)
                .sum();
        }
        Ok(RedirectStats::from_slots(vals))
    }

    /// Names of the interfaces a program is attached to, in attach order.
    pub fn attached(&self) -> impl Iterator<Item = &str> + '_ {
        self.attached.iter().map(|a| a.iface.name.as_str())
    }

    /// Detaches every program this loader attached (also done on `Drop`)
    /// and clears the forwarding entries; the first error is returned, the
    /// other detaches still run.
    pub fn detach_all(&mut self) -> Result<()> {
        let mut first = Ok(());
        for a in std::mem::take(&mut self.attached) {
            let prog = match a.which {
                Which::Fwd => &self.prog_fwd,
                Which::Pass => &self.prog_pass,
            };
            let ours = libbpf_rs::Program::id_from_fd(prog.as_fd())
                .map_err(bpf_err("id of the redirect program"));
            let res = ours.and_then(|id| detach_in_netns(&a, prog.as_fd(), id));
            if a.which == Which::Fwd {
                let key = a.iface.ifindex.to_ne_bytes();
                let _ = self.fwd_ports.delete(&key);
                let _ = self.fwd_macs.delete(&key);
            }
            if first.is_ok() {
                first = res;
            }
        }
        first
    }
}

/// Detaches `a`'s program (`prog`, id `ours`) from a thread inside `a`'s
/// namespace, if the interface still exists with the same index and still
/// runs that program.
fn detach_in_netns(a: &Attachment, prog: BorrowedFd<'_>, ours: u32) -> Result<()> {
    std::thread::scope(|s| {
        s.spawn(|| -> Result<()> {
            crate::netns::enter_net_namespace_fd(a.netns.as_fd())
                .map_err(io_err(format!("enter the namespace of {}", a.iface.name)))?;
            let Ok(now) = Interface::lookup(&a.iface.name) else {
                return Ok(()); // gone with its programs
            };
            if now.ifindex != a.iface.ifindex {
                return Ok(());
            }
            let flags = a.mode.flags();
            let xdp = Xdp::new(prog);
            let resident = xdp.query_id(a.iface.ifindex as i32, a.mode.flags()).ok();
            if resident != Some(ours) {
                return Ok(()); // someone else's now: leave it
            }
            xdp.detach(a.iface.ifindex as i32, flags)
                .map_err(bpf_err(format!("detach from {}", a.iface.name)))
        })
        .join()
        .unwrap_or_else(|_| {
            Err(io_err("detach thread")(std::io::Error::other(
                "detach thread panicked",
            )))
        })
    })
}

fn check_iface(iface: &Interface) -> Result<()> {
    if iface.ifindex == 0 || iface.name == "lo" {
        return Err(XdpError::Refused {
            name: iface.name.clone(),
            why: "loopback or ifindex 0",
        });
    }
    let now = Interface::lookup(&iface.name)?;
    if now.ifindex != iface.ifindex {
        return Err(XdpError::InterfaceMismatch {
            name: iface.name.clone(),
            expected: iface.ifindex,
            actual: now.ifindex,
        });
    }
    Ok(())
}

impl Drop for RedirectProgram {
    fn drop(&mut self) {
        // Best effort: a namespace or interface deleted meanwhile took
        // its programs with it.
        let _ = self.detach_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_layout_matches_c_struct() {
        let m = FwdMacs {
            src: [0x02, 0, 0, 0, 0, 0x01],
            dst: [0x02, 0, 0, 0, 0, 0x02],
        };
        assert_eq!(
            m.to_bytes(),
            [0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02]
        );
    }

    #[test]
    fn stats_slots_map_to_fields_in_c_order() {
        let s = RedirectStats::from_slots([1, 2, 3, 4, 5]);
        assert_eq!(
            s,
            RedirectStats {
                fwd_redirect: 1,
                fwd_no_port: 2,
                fwd_no_entry: 3,
                fwd_runt: 4,
                peer_pass: 5,
            }
        );
    }

    #[test]
    fn object_is_embedded_elf_with_both_programs() {
        assert_eq!(REDIRECT_OBJECT.get(..4), Some(&b"\x7fELF"[..]));
        let open = ObjectBuilder::default()
            .open_memory(REDIRECT_OBJECT)
            .expect("parses without loading");
        let progs: Vec<String> = open
            .progs()
            .map(|p| p.name().to_string_lossy().into_owned())
            .collect();
        assert!(progs.iter().any(|p| p == PROG_FWD), "{progs:?}");
        assert!(progs.iter().any(|p| p == PROG_PASS), "{progs:?}");
    }
}
