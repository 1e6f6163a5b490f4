//! Loader for the XDP steering program (`ffi/bpf/steer.c`).
//!
//! The program decides per packet whether a frame is kxdp's (redirect to
//! the worker's AF_XDP socket) or the node's (`XDP_PASS`):
//!
//! - [`Role::Pod`] (host side of a pod veth): everything goes to kxdp but
//!   the *host path*: ARP replies from the pod's own address, and IPv4 from
//!   the pod's own address to an address the node's kernel owns that is
//!   not a Service frontend or NodePort, pass to the kernel. The node's
//!   traffic with its pods is always allowed by NetworkPolicy, and the
//!   kernel delivers such packets locally (never forwards them), so this
//!   bypasses no policy. It needs the veth's pod address
//!   ([`SteeringProgram::set_pod_address`]) and the node's local addresses
//!   ([`SteeringProgram::add_host_addr`]); without them everything is
//!   redirected.
//! - [`Role::Uplink`]: VXLAN to the configured UDP port, Service frontends
//!   `(ip, port, proto)`, NodePorts `(port, proto)`, local pod IPs and
//!   masquerade reply ports (TCP/UDP ports and ICMP echo identifiers in
//!   the configured range, to the masquerade address) go to kxdp; the rest
//!   passes to the kernel, so ssh and kubelet keep working.
//!
//! # Fail closed
//!
//! Every redirect uses `bpf_redirect_map(&xsks, slot, XDP_DROP)`: when no
//! socket sits in the slot, owned traffic is dropped, never handed to the
//! kernel where NetworkPolicy does not apply. Two kernel facts make this
//! hold when kxdp is down:
//!
//! 1. The program is attached through netlink (`bpf_xdp_attach`), not a
//!    BPF link, so it stays attached after the process exits or crashes.
//! 2. Closing an AF_XDP socket removes it from every XSKMAP, so a dead
//!    kxdp leaves empty slots.
//!
//! So a crashed kxdp fails closed for pods and open for the node. A
//! *clean* shutdown ([`SteeringProgram`]'s `Drop`, or
//! [`SteeringProgram::detach`]) removes the program, restoring the
//! kernel's plain forwarding; a daemon that wants pods to stay isolated
//! across a restart calls [`SteeringProgram::leave_attached`] before
//! exiting.
//!
//! # Slots
//!
//! One XSKMAP serves all interfaces. [`SteeringProgram::attach`] gives an
//! interface `queues` consecutive slots starting at a base stored in the
//! `xsk_base` map (ifindex -> base and count); a packet uses
//! `base + rx_queue_index`, and one whose queue index is not below the
//! count is dropped (counted with the interface's drops), so a queue added
//! after the attach can never reach another interface's sockets.
//! [`Interface::rx_queues`] counts rx-only plus combined channels, the
//! queue indexes the kernel hands the program.
//!
//! # Safety rails
//!
//! [`SteeringProgram::attach`] takes an [`Interface`] the caller resolved
//! by name in the current network namespace, re-checks the name/index
//! pair, refuses the loopback device and never replaces a program that is
//! not kxdp's (see *Takeover*; otherwise `XDP_FLAGS_UPDATE_IF_NOEXIST`).
//! `Drop` only detaches a program that is still the one this loader
//! attached.
//!
//! # Takeover
//!
//! A kxdp that crashed (or exited with `--leave-attached`) leaves its
//! programs attached, by design (fail closed). The next `attach` to such an
//! interface takes it over instead of failing with `EBUSY`:
//!
//! 1. The resident program is identified from the kernel's own record
//!    (`BPF_OBJ_GET_INFO_BY_FD` on an fd opened from its id): it is kxdp's
//!    only when its name is one of the steering program's
//!    ([`PROG_NAMES`]) *and* it uses maps named `xsks`, `xsk_base` and
//!    `stats` ([`is_kxdp_program`]). Anything else is refused
//!    ([`XdpError::Foreign`]) and left alone.
//! 2. Same attach mode: the new program replaces it atomically with
//!    `XDP_FLAGS_REPLACE`, the old program's fd as the expected one
//!    (`IFLA_XDP_EXPECTED_FD`); if anything else was attached in between,
//!    the kernel refuses (`EEXIST`) and nothing changes. There is no
//!    instant without a program, so pods never fail open.
//! 3. Different mode (the old one ran generic, the new one native or the
//!    reverse): the two modes cannot be swapped in one operation, so the old
//!    program is detached and the new one attached. In that brief window
//!    (two netlink calls) the interface has no program and its frames go
//!    to the kernel; run with the same `--xdp-mode` across restarts to
//!    avoid it.
//!
//! The same holds for a pin directory a dead kxdp left behind
//! ([`LoadOptions::pin_dir`]): when it holds nothing but the names this
//! loader pins, the stale pins are removed and pinned anew; a directory
//! with anything else in it is refused. Two live daemons sharing one node
//! (or one pin directory) are not supported: the second takes the first's
//! interfaces over.
//!
//! Everything here acts on the calling thread's network namespace
//! (netlink and `if_nametoindex` are per namespace).

#![expect(
    unsafe_code,
    reason = "if_nametoindex/if_indextoname and statfs through libc"
)]

use std::collections::BTreeMap;
use std::ffi::CString;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use libbpf_rs::{MapCore, MapFlags, MapHandle, Object, ObjectBuilder, Xdp, XdpFlags};

/// The compiled steering program (built by `build.rs`).
pub static STEER_OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/steer.bpf.o"));

/// Size of the XSKMAP (`KXDP_XSK_SLOTS` in steer.c).
pub const XSK_SLOTS: u32 = 4096;

/// Capacity of the `host_addrs` map (`KXDP_MAX_HOST_ADDRS` in steer.c).
pub const MAX_HOST_ADDRS: usize = 256;

/// Default Flannel VXLAN port.
pub const DEFAULT_VXLAN_PORT: u16 = 8472;

/// `BPF_FS_MAGIC` from `<linux/magic.h>`.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Errors of the XDP loader.
#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    #[error("interface {name:?} not found in this network namespace")]
    NoSuchInterface { name: String },
    #[error("interface {name:?} is ifindex {actual}, not {expected} as given")]
    InterfaceMismatch {
        name: String,
        expected: u32,
        actual: u32,
    },
    #[error("refusing to attach to {name:?}: {why}")]
    Refused { name: String, why: &'static str },
    #[error("interface ifindex {ifindex} is not attached by this loader")]
    NotAttached { ifindex: u32 },
    #[error("interface ifindex {ifindex} is already attached by this loader")]
    AlreadyAttached { ifindex: u32 },
    #[error("queue {queue} out of range for ifindex {ifindex} ({queues} queues)")]
    QueueOutOfRange {
        ifindex: u32,
        queue: u32,
        queues: u32,
    },
    #[error("no free XSKMAP slots for {queues} queues")]
    SlotsExhausted { queues: u32 },
    #[error(
        "refusing to replace XDP program {id} ({prog:?}) on {name:?}: not kxdp's steering program"
    )]
    Foreign { name: String, id: u32, prog: String },
    #[error(
        "pin directory {path:?} holds {entry:?}, which kxdp does not pin; refusing to reuse it"
    )]
    ForeignPin { path: PathBuf, entry: String },
    #[error("{path:?} is not a bpffs mount (mount -t bpf bpf /sys/fs/bpf)")]
    NotBpffs { path: PathBuf },
    #[error("program or map {name:?} missing from the steering object")]
    MissingObject { name: &'static str },
    #[error("{what}: {source}")]
    Bpf {
        what: String,
        #[source]
        source: libbpf_rs::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

type Result<T> = std::result::Result<T, XdpError>;

pub(crate) fn bpf_err(what: impl Into<String>) -> impl FnOnce(libbpf_rs::Error) -> XdpError {
    let what = what.into();
    move |source| XdpError::Bpf { what, source }
}

/// A duplicate of map `name` of a loaded object (keeps the map alive after
/// the object, which is not `Send`, is dropped).
pub(crate) fn object_map(object: &Object, name: &'static str) -> Result<MapHandle> {
    let m = object
        .maps()
        .find(|m| m.name() == name)
        .ok_or(XdpError::MissingObject { name })?;
    MapHandle::try_from(&m).map_err(bpf_err(format!("dup map {name}")))
}

/// A duplicate of the fd of program `name` of a loaded object.
pub(crate) fn object_prog_fd(object: &Object, name: &'static str) -> Result<OwnedFd> {
    let p = object
        .progs()
        .find(|p| p.name() == name)
        .ok_or(XdpError::MissingObject { name })?;
    p.as_fd()
        .try_clone_to_owned()
        .map_err(|source| XdpError::Io {
            what: format!("dup program fd of {name}"),
            source,
        })
}

/// A network interface named and resolved by the caller in the current
/// network namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub ifindex: u32,
}

impl Interface {
    /// Resolves `name` in the calling thread's network namespace.
    pub fn lookup(name: &str) -> Result<Self> {
        let ifindex = if_nametoindex(name).ok_or_else(|| XdpError::NoSuchInterface {
            name: name.to_owned(),
        })?;
        Ok(Interface {
            name: name.to_owned(),
            ifindex,
        })
    }

    /// Number of rx queues the kernel reports for this interface, read
    /// through `ETHTOOL_GCHANNELS`; 1 when the driver does not say (veth
    /// without extra queues).
    pub fn rx_queues(&self) -> u32 {
        ethtool_rx_queues(&self.name).unwrap_or(1).max(1)
    }
}

fn if_nametoindex(name: &str) -> Option<u32> {
    let cname = CString::new(name).ok()?;
    // SAFETY: `cname` is a valid NUL-terminated string that outlives the call.
    let idx = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    (idx != 0).then_some(idx)
}

fn ethtool_rx_queues(name: &str) -> Option<u32> {
    #[repr(C)]
    struct Channels {
        cmd: u32,
        max_rx: u32,
        max_tx: u32,
        max_other: u32,
        max_combined: u32,
        rx_count: u32,
        tx_count: u32,
        other_count: u32,
        combined_count: u32,
    }
    const ETHTOOL_GCHANNELS: u32 = 0x3c;
    let bytes = name.as_bytes();
    if bytes.len() >= libc::IFNAMSIZ {
        return None;
    }
    let mut ch = Channels {
        cmd: ETHTOOL_GCHANNELS,
        max_rx: 0,
        max_tx: 0,
        max_other: 0,
        max_combined: 0,
        rx_count: 0,
        tx_count: 0,
        other_count: 0,
        combined_count: 0,
    };
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    ifr.ifr_ifru.ifru_data = (&mut ch as *mut Channels).cast();
    // SAFETY: plain socket(2) call; the fd is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: `ifr` names the interface and points at `ch`, which lives
    // across the call and has the layout of `struct ethtool_channels`.
    let rc = unsafe { libc::ioctl(fd, libc::SIOCETHTOOL, &mut ifr) };
    // SAFETY: `fd` is the socket opened above, closed exactly once.
    unsafe { libc::close(fd) };
    if rc != 0 {
        return None;
    }
    // ethtool's rx-only and combined channels are disjoint sets of queues
    // (a driver reports its queues as one or the other): the queue indexes
    // the kernel gives the program run over both.
    let n = ch.rx_count.saturating_add(ch.combined_count);
    (n > 0).then_some(n)
}

/// What the program does on an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The node's uplink: steer what kxdp owns, pass the rest.
    Uplink,
    /// The host side of a pod veth: steer everything.
    Pod,
}

/// XDP attach mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    /// Driver (native) mode; veth supports it.
    Native,
    /// Generic (SKB) mode: works on any device, slower.
    Generic,
}

impl AttachMode {
    pub(crate) fn flags(self) -> XdpFlags {
        match self {
            AttachMode::Native => XdpFlags::DRV_MODE,
            AttachMode::Generic => XdpFlags::SKB_MODE,
        }
    }
}

/// Uplink steering configuration (`struct kxdp_config` in steer.c).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UplinkConfig {
    /// UDP destination port of VXLAN; 0 disables VXLAN steering.
    pub vxlan_port: u16,
    /// Masquerade source address; replies to it in `masq_ports` are kxdp's.
    pub masq_ip: Option<Ipv4Addr>,
    /// Inclusive port (and ICMP echo id) range used for masquerading.
    /// Must not overlap the node's ephemeral port range.
    pub masq_ports: (u16, u16),
}

impl Default for UplinkConfig {
    fn default() -> Self {
        UplinkConfig {
            vxlan_port: DEFAULT_VXLAN_PORT,
            masq_ip: None,
            masq_ports: (0, 0),
        }
    }
}

impl UplinkConfig {
    fn to_bytes(self) -> [u8; 12] {
        let mut b = [0u8; 12];
        let ip = self.masq_ip.map_or([0; 4], |ip| ip.octets());
        b[0..4].copy_from_slice(&ip);
        b[4..6].copy_from_slice(&self.vxlan_port.to_ne_bytes());
        b[6..8].copy_from_slice(&self.masq_ports.0.to_ne_bytes());
        b[8..10].copy_from_slice(&self.masq_ports.1.to_ne_bytes());
        b
    }
}

/// IP protocol numbers the steering maps accept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Tcp = 6,
    Udp = 17,
    Sctp = 132,
}

/// Counters of the steering program, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SteerStats {
    pub pod_redirect: u64,
    pub pod_drop_no_socket: u64,
    pub uplink_redirect: u64,
    pub uplink_drop_no_socket: u64,
    pub uplink_pass: u64,
    /// Pod frames passed to the kernel by the host path.
    pub pod_pass: u64,
}

/// Options for [`SteeringProgram::load`].
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// Pin programs and maps under this directory (inside a bpffs mount,
    /// e.g. `/sys/fs/bpf/kxdp-<node>`). Created by `load`, removed on
    /// `Drop`. `None`: nothing pinned.
    pub pin_dir: Option<PathBuf>,
}

struct Attached {
    name: String,
    role: Role,
    mode: AttachMode,
    base: u32,
    queues: u32,
}

/// The loaded steering program, its maps and the interfaces it is
/// attached to. Detaches and unpins on `Drop`.
pub struct SteeringProgram {
    object: Object,
    prog_pod: OwnedFd,
    prog_uplink: OwnedFd,
    xsks: MapHandle,
    xsk_base: MapHandle,
    config: MapHandle,
    frontends: MapHandle,
    node_ports: MapHandle,
    pod_ips: MapHandle,
    pod_veths: MapHandle,
    host_addrs: MapHandle,
    stats: MapHandle,
    pin_dir: Option<PathBuf>,
    pinned: Vec<PathBuf>,
    attached: BTreeMap<u32, Attached>,
    slots: SlotAllocator,
    keep_attached: bool,
}

impl std::fmt::Debug for SteeringProgram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SteeringProgram")
            .field("pin_dir", &self.pin_dir)
            .field("attached", &self.attached.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

const PROG_POD: &str = "steer_pod";
const PROG_UPLINK: &str = "steer_uplink";

/// Names of the steering programs (within `BPF_OBJ_NAME_LEN`, so the
/// kernel keeps them whole).
pub const PROG_NAMES: [&str; 2] = [PROG_POD, PROG_UPLINK];

/// Maps every steering program uses; with [`PROG_NAMES`] they identify a
/// resident program as kxdp's.
const SIGNATURE_MAPS: [&str; 3] = ["xsks", "xsk_base", "stats"];

/// Every name [`LoadOptions::pin_dir`] can hold.
const PIN_NAMES: [&str; 11] = [
    "xsks",
    "xsk_base",
    "config",
    "frontends",
    "node_ports",
    "pod_ips",
    "pod_veths",
    "host_addrs",
    "stats",
    PROG_POD,
    PROG_UPLINK,
];

/// Whether a program named `prog` using maps named `maps` is a kxdp
/// steering program (see the module docs, *Takeover*).
pub fn is_kxdp_program<S: AsRef<str>>(prog: &str, maps: &[S]) -> bool {
    PROG_NAMES.contains(&prog)
        && SIGNATURE_MAPS
            .iter()
            .all(|want| maps.iter().any(|m| m.as_ref() == *want))
}

/// The entries of a pin directory left by an earlier kxdp, or the first
/// entry that is not one of kxdp's pin names.
fn stale_pins(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = std::fs::read_dir(dir).map_err(|source| XdpError::Io {
        what: format!("read pin directory {}", dir.display()),
        source,
    })?;
    let mut out = Vec::new();
    for e in rd {
        let e = e.map_err(|source| XdpError::Io {
            what: format!("read pin directory {}", dir.display()),
            source,
        })?;
        let name = e.file_name();
        match name.to_str() {
            Some(n) if PIN_NAMES.contains(&n) => out.push(e.path()),
            _ => {
                return Err(XdpError::ForeignPin {
                    path: dir.to_owned(),
                    entry: name.to_string_lossy().into_owned(),
                })
            }
        }
    }
    Ok(out)
}

/// A program the kernel has attached to an interface.
#[derive(Debug)]
struct Resident {
    id: u32,
    /// The mode flag it is attached in (`XDP_FLAGS_*_MODE` bits).
    mode: u32,
    /// Opened from `id`: identification and the expected fd of the
    /// atomic replace refer to the very same program.
    fd: OwnedFd,
    name: String,
    maps: Vec<String>,
}

impl Resident {
    fn is_kxdp(&self) -> bool {
        is_kxdp_program(&self.name, &self.maps)
    }
}

/// Name and map ids of the program behind `fd` (`BPF_OBJ_GET_INFO_BY_FD`).
fn prog_name_and_maps(fd: BorrowedFd<'_>) -> std::io::Result<(String, Vec<u32>)> {
    use libbpf_rs::libbpf_sys::{bpf_prog_get_info_by_fd, bpf_prog_info};
    use std::os::fd::AsRawFd;
    let mut info = bpf_prog_info::default();
    let mut len = std::mem::size_of::<bpf_prog_info>() as u32;
    // SAFETY: `info` is a valid, writable bpf_prog_info of `len` bytes;
    // with map_ids = 0 the kernel writes nothing else.
    let rc = unsafe { bpf_prog_get_info_by_fd(fd.as_raw_fd(), &mut info, &mut len) };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(-rc));
    }
    let name: Vec<u8> = info
        .name
        .iter()
        .take_while(|c| **c != 0)
        .map(|c| *c as u8)
        .collect();
    let name = String::from_utf8_lossy(&name).into_owned();
    // A program uses a handful of maps; the count is bounded by the
    // kernel (MAX_USED_MAPS = 64).
    let n = info.nr_map_ids.min(64);
    let mut ids = vec![0u32; n as usize];
    if n > 0 {
        let mut info2 = bpf_prog_info {
            nr_map_ids: n,
            map_ids: ids.as_mut_ptr() as u64,
            ..Default::default()
        };
        let mut len = std::mem::size_of::<bpf_prog_info>() as u32;
        // SAFETY: `map_ids` points at `n` writable u32s that outlive the
        // call, and `nr_map_ids` tells the kernel that capacity.
        let rc = unsafe { bpf_prog_get_info_by_fd(fd.as_raw_fd(), &mut info2, &mut len) };
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(-rc));
        }
        ids.truncate(info2.nr_map_ids.min(n) as usize);
    }
    Ok((name, ids))
}

/// Atomically replaces `old` with `new` on `ifindex` in `mode`
/// (`XDP_FLAGS_REPLACE` + the mode flag; the kernel checks that `old` is
/// still the attached program).
fn xdp_replace(
    ifindex: u32,
    new: BorrowedFd<'_>,
    old: BorrowedFd<'_>,
    mode: XdpFlags,
) -> std::io::Result<()> {
    use libbpf_rs::libbpf_sys::{bpf_xdp_attach, bpf_xdp_attach_opts};
    use std::os::fd::AsRawFd;
    let opts = bpf_xdp_attach_opts {
        sz: std::mem::size_of::<bpf_xdp_attach_opts>() as _,
        old_prog_fd: old.as_raw_fd(),
        ..Default::default()
    };
    let flags = (mode | XdpFlags::REPLACE).bits();
    // SAFETY: both fds are valid program fds borrowed for the call and
    // `opts` is a properly sized bpf_xdp_attach_opts.
    let rc = unsafe { bpf_xdp_attach(ifindex as i32, new.as_raw_fd(), flags, &opts) };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(-rc));
    }
    Ok(())
}

impl SteeringProgram {
    /// Loads the program into the kernel (nothing is attached yet) and
    /// writes the default [`UplinkConfig`].
    pub fn load(opts: &LoadOptions) -> Result<Self> {
        let open = ObjectBuilder::default()
            .open_memory(STEER_OBJECT)
            .map_err(bpf_err("open steering object"))?;
        let object = open.load().map_err(bpf_err("load steering object"))?;

        let map = |name| object_map(&object, name);
        let prog_fd = |name| object_prog_fd(&object, name);
        let mut prog = SteeringProgram {
            prog_pod: prog_fd(PROG_POD)?,
            prog_uplink: prog_fd(PROG_UPLINK)?,
            xsks: map("xsks")?,
            xsk_base: map("xsk_base")?,
            config: map("config")?,
            frontends: map("frontends")?,
            node_ports: map("node_ports")?,
            pod_ips: map("pod_ips")?,
            pod_veths: map("pod_veths")?,
            host_addrs: map("host_addrs")?,
            stats: map("stats")?,
            object,
            pin_dir: None,
            pinned: Vec::new(),
            attached: BTreeMap::new(),
            slots: SlotAllocator::new(XSK_SLOTS),
            keep_attached: false,
        };
        prog.set_uplink_config(&UplinkConfig::default())?;
        if let Some(dir) = &opts.pin_dir {
            prog.pin_all(dir)?;
        }
        Ok(prog)
    }

    fn prog_fd(&self, name: &'static str) -> Result<BorrowedFd<'_>> {
        match name {
            PROG_POD => Ok(self.prog_pod.as_fd()),
            PROG_UPLINK => Ok(self.prog_uplink.as_fd()),
            _ => Err(XdpError::MissingObject { name }),
        }
    }

    fn prog_id(&self, name: &'static str) -> Result<u32> {
        let fd = self.prog_fd(name)?;
        libbpf_rs::Program::id_from_fd(fd).map_err(bpf_err(format!("id of {name}")))
    }

    fn pin_all(&mut self, dir: &Path) -> Result<()> {
        let parent = dir.parent().unwrap_or(Path::new("/"));
        if !is_bpffs(parent) {
            return Err(XdpError::NotBpffs {
                path: parent.to_owned(),
            });
        }
        if dir.is_dir() {
            // Left by a kxdp that did not exit cleanly: take it over.
            for stale in stale_pins(dir)? {
                std::fs::remove_file(&stale).map_err(|source| XdpError::Io {
                    what: format!("remove stale pin {}", stale.display()),
                    source,
                })?;
            }
        } else {
            std::fs::create_dir(dir).map_err(|source| XdpError::Io {
                what: format!("create pin directory {}", dir.display()),
                source,
            })?;
        }
        self.pin_dir = Some(dir.to_owned());
        let maps: [(&str, &mut MapHandle); 9] = [
            ("xsks", &mut self.xsks),
            ("xsk_base", &mut self.xsk_base),
            ("config", &mut self.config),
            ("frontends", &mut self.frontends),
            ("node_ports", &mut self.node_ports),
            ("pod_ips", &mut self.pod_ips),
            ("pod_veths", &mut self.pod_veths),
            ("host_addrs", &mut self.host_addrs),
            ("stats", &mut self.stats),
        ];
        for (name, m) in maps {
            let path = dir.join(name);
            m.pin(&path)
                .map_err(bpf_err(format!("pin {}", path.display())))?;
            self.pinned.push(path);
        }
        for p in self.object.progs_mut() {
            let path = dir.join(p.name());
            let mut p = p;
            p.pin(&path)
                .map_err(bpf_err(format!("pin {}", path.display())))?;
            self.pinned.push(path);
        }
        Ok(())
    }

    /// Attaches the program for `role` to `iface` with `queues` XSKMAP
    /// slots (one per rx queue to be served).
    pub fn attach(
        &mut self,
        iface: &Interface,
        role: Role,
        mode: AttachMode,
        queues: u32,
    ) -> Result<()> {
        if iface.ifindex == 0 || iface.name == "lo" {
            return Err(XdpError::Refused {
                name: iface.name.clone(),
                why: "loopback or ifindex 0",
            });
        }
        let actual = if_nametoindex(&iface.name).ok_or_else(|| XdpError::NoSuchInterface {
            name: iface.name.clone(),
        })?;
        if actual != iface.ifindex {
            return Err(XdpError::InterfaceMismatch {
                name: iface.name.clone(),
                expected: iface.ifindex,
                actual,
            });
        }
        if self.attached.contains_key(&iface.ifindex) {
            return Err(XdpError::AlreadyAttached {
                ifindex: iface.ifindex,
            });
        }
        let queues = queues.max(1);
        let base = self.alloc_slots(queues)?;
        if let Err(e) = self.attach_inner(iface, role, mode, base, queues) {
            self.free_slot_range(base, queues);
            return Err(e);
        }
        self.attached.insert(
            iface.ifindex,
            Attached {
                name: iface.name.clone(),
                role,
                mode,
                base,
                queues,
            },
        );
        Ok(())
    }

    fn attach_inner(
        &self,
        iface: &Interface,
        role: Role,
        mode: AttachMode,
        base: u32,
        queues: u32,
    ) -> Result<()> {
        // The range goes in before the program can see a packet, so the
        // first packets find their slot (empty: dropped, fail closed).
        // `struct xsk_range { __u32 base; __u32 count; }` in steer.c.
        let mut range = [0u8; 8];
        range[..4].copy_from_slice(&base.to_ne_bytes());
        range[4..].copy_from_slice(&queues.to_ne_bytes());
        self.xsk_base
            .update(&iface.ifindex.to_ne_bytes(), &range, MapFlags::ANY)
            .map_err(bpf_err("set xsk_base"))?;
        let name = match role {
            Role::Pod => PROG_POD,
            Role::Uplink => PROG_UPLINK,
        };
        let res = self.attach_or_take_over(iface, name, mode);
        if res.is_err() {
            let _ = self.xsk_base.delete(&iface.ifindex.to_ne_bytes());
        }
        res
    }

    /// Attaches program `name` to `iface`; a kxdp program left attached
    /// there is replaced (module docs, *Takeover*), any other program is
    /// refused.
    fn attach_or_take_over(
        &self,
        iface: &Interface,
        name: &'static str,
        mode: AttachMode,
    ) -> Result<()> {
        let fd = self.prog_fd(name)?;
        let xdp = Xdp::new(fd);
        let residents = self.residents(iface)?;
        if let Some(foreign) = residents.iter().find(|r| !r.is_kxdp()) {
            return Err(XdpError::Foreign {
                name: iface.name.clone(),
                id: foreign.id,
                prog: foreign.name.clone(),
            });
        }
        let same_mode = residents.iter().find(|r| r.mode == mode.flags().bits());
        match (same_mode, residents.first()) {
            (_, None) => xdp
                .attach(
                    iface.ifindex as i32,
                    mode.flags() | XdpFlags::UPDATE_IF_NOEXIST,
                )
                .map_err(bpf_err(format!("attach {name} to {}", iface.name))),
            (Some(old), _) => {
                xdp_replace(iface.ifindex, fd, old.fd.as_fd(), mode.flags()).map_err(|source| {
                    XdpError::Io {
                        what: format!(
                            "replace kxdp program {} left on {} by {name}",
                            old.id, iface.name
                        ),
                        source,
                    }
                })
            }
            (None, Some(_)) => {
                // Other mode: detach then attach (the documented window).
                for old in &residents {
                    Xdp::new(old.fd.as_fd())
                        .detach(iface.ifindex as i32, XdpFlags::from_bits_truncate(old.mode))
                        .map_err(bpf_err(format!(
                            "detach kxdp program {} left on {}",
                            old.id, iface.name
                        )))?;
                }
                xdp.attach(
                    iface.ifindex as i32,
                    mode.flags() | XdpFlags::UPDATE_IF_NOEXIST,
                )
                .map_err(bpf_err(format!("attach {name} to {}", iface.name)))
            }
        }
    }

    /// The programs attached to `iface` in any mode, identified.
    fn residents(&self, iface: &Interface) -> Result<Vec<Resident>> {
        let q = Xdp::new(self.prog_pod.as_fd())
            .query(iface.ifindex as i32, XdpFlags::NONE)
            .map_err(bpf_err(format!("query XDP on {}", iface.name)))?;
        let mut out = Vec::new();
        for (id, mode) in [
            (q.drv_prog_id, XdpFlags::DRV_MODE.bits()),
            (q.skb_prog_id, XdpFlags::SKB_MODE.bits()),
            (q.hw_prog_id, XdpFlags::HW_MODE.bits()),
        ] {
            if id == 0 {
                continue;
            }
            let fd = libbpf_rs::Program::fd_from_id(id)
                .map_err(bpf_err(format!("open XDP program {id} on {}", iface.name)))?;
            let (name, map_ids) =
                prog_name_and_maps(fd.as_fd()).map_err(|source| XdpError::Io {
                    what: format!("identify XDP program {id} on {}", iface.name),
                    source,
                })?;
            // A map that vanished meanwhile just does not count.
            let maps = map_ids
                .into_iter()
                .filter_map(|m| MapHandle::from_map_id(m).ok())
                .map(|m| m.name().to_string_lossy().into_owned())
                .collect();
            out.push(Resident {
                id,
                mode,
                fd,
                name,
                maps,
            });
        }
        Ok(out)
    }

    /// Detaches from `ifindex` (only if our program is still the one
    /// attached) and clears its slots.
    pub fn detach(&mut self, ifindex: u32) -> Result<()> {
        let a = self
            .attached
            .remove(&ifindex)
            .ok_or(XdpError::NotAttached { ifindex })?;
        let res = self.detach_inner(ifindex, &a);
        self.free_slot_range(a.base, a.queues);
        res
    }

    fn detach_inner(&self, ifindex: u32, a: &Attached) -> Result<()> {
        let name = match a.role {
            Role::Pod => PROG_POD,
            Role::Uplink => PROG_UPLINK,
        };
        let ours = self.prog_id(name)?;
        let fd = self.prog_fd(name)?;
        let xdp = Xdp::new(fd);
        // The interface may be gone already (pod deleted): nothing to do.
        // Also never detach a program someone else put there since.
        let still_ours = if_nametoindex(&a.name) == Some(ifindex)
            && xdp.query_id(ifindex as i32, a.mode.flags()).ok() == Some(ours);
        if still_ours {
            xdp.detach(ifindex as i32, a.mode.flags())
                .map_err(bpf_err(format!("detach from {}", a.name)))?;
        }
        for q in 0..a.queues {
            // Absent entries are fine.
            let _ = self.xsks.delete(&(a.base + q).to_ne_bytes());
        }
        let _ = self.xsk_base.delete(&ifindex.to_ne_bytes());
        let _ = self.pod_veths.delete(&ifindex.to_ne_bytes());
        Ok(())
    }

    /// Puts an AF_XDP socket (bound to `(ifindex, queue)`) in its slot.
    pub fn register_socket(&self, ifindex: u32, queue: u32, xsk_fd: BorrowedFd<'_>) -> Result<()> {
        let slot = self.slot(ifindex, queue)?;
        let fd = std::os::fd::AsRawFd::as_raw_fd(&xsk_fd) as u32;
        self.xsks
            .update(&slot.to_ne_bytes(), &fd.to_ne_bytes(), MapFlags::ANY)
            .map_err(bpf_err(format!("register socket in slot {slot}")))
    }

    /// Empties the slot of `(ifindex, queue)`: its traffic is dropped.
    pub fn unregister_socket(&self, ifindex: u32, queue: u32) -> Result<()> {
        let slot = self.slot(ifindex, queue)?;
        match self.xsks.delete(&slot.to_ne_bytes()) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(bpf_err(format!("unregister slot {slot}"))(e)),
        }
    }

    fn slot(&self, ifindex: u32, queue: u32) -> Result<u32> {
        let a = self
            .attached
            .get(&ifindex)
            .ok_or(XdpError::NotAttached { ifindex })?;
        if queue >= a.queues {
            return Err(XdpError::QueueOutOfRange {
                ifindex,
                queue,
                queues: a.queues,
            });
        }
        Ok(a.base + queue)
    }

    /// Writes the uplink configuration.
    pub fn set_uplink_config(&self, cfg: &UplinkConfig) -> Result<()> {
        self.config
            .update(&0u32.to_ne_bytes(), &cfg.to_bytes(), MapFlags::ANY)
            .map_err(bpf_err("write config"))
    }

    fn frontend_key(ip: Ipv4Addr, port: u16, proto: Proto) -> [u8; 8] {
        let mut k = [0u8; 8];
        k[0..4].copy_from_slice(&ip.octets());
        k[4..6].copy_from_slice(&port.to_ne_bytes());
        k[6] = proto as u8;
        k
    }

    fn node_port_key(port: u16, proto: Proto) -> [u8; 4] {
        let mut k = [0u8; 4];
        k[0..2].copy_from_slice(&port.to_ne_bytes());
        k[2] = proto as u8;
        k
    }

    /// Steers `(ip, port, proto)` (a ClusterIP, external or LB IP frontend).
    pub fn add_frontend(&self, ip: Ipv4Addr, port: u16, proto: Proto) -> Result<()> {
        self.frontends
            .update(&Self::frontend_key(ip, port, proto), &[1], MapFlags::ANY)
            .map_err(bpf_err(format!("add frontend {ip}:{port}")))
    }

    /// Stops steering `(ip, port, proto)`.
    pub fn remove_frontend(&self, ip: Ipv4Addr, port: u16, proto: Proto) -> Result<()> {
        delete_ok_absent(&self.frontends, &Self::frontend_key(ip, port, proto))
            .map_err(bpf_err(format!("remove frontend {ip}:{port}")))
    }

    /// Steers NodePort `(port, proto)` on any node address.
    pub fn add_node_port(&self, port: u16, proto: Proto) -> Result<()> {
        self.node_ports
            .update(&Self::node_port_key(port, proto), &[1], MapFlags::ANY)
            .map_err(bpf_err(format!("add node port {port}")))
    }

    /// Stops steering NodePort `(port, proto)`.
    pub fn remove_node_port(&self, port: u16, proto: Proto) -> Result<()> {
        delete_ok_absent(&self.node_ports, &Self::node_port_key(port, proto))
            .map_err(bpf_err(format!("remove node port {port}")))
    }

    /// Steers everything addressed to local pod `ip` arriving on the uplink.
    pub fn add_pod_ip(&self, ip: Ipv4Addr) -> Result<()> {
        self.pod_ips
            .update(&ip.octets(), &[1], MapFlags::ANY)
            .map_err(bpf_err(format!("add pod ip {ip}")))
    }

    /// Stops steering pod `ip`.
    pub fn remove_pod_ip(&self, ip: Ipv4Addr) -> Result<()> {
        delete_ok_absent(&self.pod_ips, &ip.octets())
            .map_err(bpf_err(format!("remove pod ip {ip}")))
    }

    /// Gives the pod veth `ifindex` (attached with [`Role::Pod`]) its
    /// pod's address, which enables its host path; `None` disables it.
    /// The entry is removed when the interface is detached.
    pub fn set_pod_address(&self, ifindex: u32, ip: Option<Ipv4Addr>) -> Result<()> {
        match self.attached.get(&ifindex) {
            Some(a) if a.role == Role::Pod => {}
            _ => return Err(XdpError::NotAttached { ifindex }),
        }
        match ip {
            Some(ip) => self
                .pod_veths
                .update(&ifindex.to_ne_bytes(), &ip.octets(), MapFlags::ANY)
                .map_err(bpf_err(format!(
                    "set pod address {ip} of ifindex {ifindex}"
                ))),
            None => delete_ok_absent(&self.pod_veths, &ifindex.to_ne_bytes())
                .map_err(bpf_err(format!("clear pod address of ifindex {ifindex}"))),
        }
    }

    /// Marks `ip` as an address the node's kernel owns: pods' packets to
    /// it (not to a Service on it) take the host path. Only addresses
    /// configured on the node belong here (the kernel must deliver, not
    /// forward, what passes).
    pub fn add_host_addr(&self, ip: Ipv4Addr) -> Result<()> {
        self.host_addrs
            .update(&ip.octets(), &[1], MapFlags::ANY)
            .map_err(bpf_err(format!("add host address {ip}")))
    }

    /// Stops passing pods' packets to `ip` to the kernel.
    pub fn remove_host_addr(&self, ip: Ipv4Addr) -> Result<()> {
        delete_ok_absent(&self.host_addrs, &ip.octets())
            .map_err(bpf_err(format!("remove host address {ip}")))
    }

    /// The program's counters, summed over CPUs.
    pub fn stats(&self) -> Result<SteerStats> {
        let mut vals = [0u64; 6];
        for (slot, v) in vals.iter_mut().enumerate() {
            let per_cpu = self
                .stats
                .lookup_percpu(&(slot as u32).to_ne_bytes(), MapFlags::ANY)
                .map_err(bpf_err("read stats"))?
                .unwrap_or_default();
            *v = per_cpu
                .iter()
                .filter_map(|b| b.get(..8).and_then(|b| b.try_into().ok()))
                .map(u64::from_ne_bytes)
                .sum();
        }
        let [pod_redirect, pod_drop_no_socket, uplink_redirect, uplink_drop_no_socket, uplink_pass, pod_pass] =
            vals;
        Ok(SteerStats {
            pod_redirect,
            pod_drop_no_socket,
            uplink_redirect,
            uplink_drop_no_socket,
            uplink_pass,
            pod_pass,
        })
    }

    /// Ifindexes this loader attached to.
    pub fn attached(&self) -> impl Iterator<Item = u32> + '_ {
        self.attached.keys().copied()
    }

    /// On `Drop`, leave the programs attached (and pins in place) so pods
    /// stay fail-closed while kxdp is not running.
    pub fn leave_attached(&mut self) {
        self.keep_attached = true;
    }

    fn alloc_slots(&mut self, n: u32) -> Result<u32> {
        self.slots
            .alloc(n)
            .ok_or(XdpError::SlotsExhausted { queues: n })
    }

    fn free_slot_range(&mut self, start: u32, n: u32) {
        self.slots.free(start, n);
    }
}

/// First-fit allocator of XSKMAP slot ranges.
#[derive(Debug)]
struct SlotAllocator {
    /// Free ranges `(start, len)`, sorted by start, never adjacent.
    free: Vec<(u32, u32)>,
}

impl SlotAllocator {
    fn new(total: u32) -> Self {
        SlotAllocator {
            free: vec![(0, total)],
        }
    }

    fn alloc(&mut self, n: u32) -> Option<u32> {
        let pos = self.free.iter().position(|&(_, len)| len >= n)?;
        let (start, len) = *self.free.get(pos)?;
        if len == n {
            self.free.remove(pos);
        } else if let Some(e) = self.free.get_mut(pos) {
            *e = (start + n, len - n);
        }
        Some(start)
    }

    fn free(&mut self, start: u32, n: u32) {
        if n == 0 {
            return;
        }
        let pos = self.free.partition_point(|&(s, _)| s < start);
        self.free.insert(pos, (start, n));
        let mut merged: Vec<(u32, u32)> = Vec::with_capacity(self.free.len());
        for &(s, l) in &self.free {
            match merged.last_mut() {
                Some((ps, pl)) if *ps + *pl == s => *pl += l,
                _ => merged.push((s, l)),
            }
        }
        self.free = merged;
    }
}

fn delete_ok_absent(map: &MapHandle, key: &[u8]) -> std::result::Result<(), libbpf_rs::Error> {
    match map.delete(key) {
        Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs is plain old data; all-zero is valid.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is NUL-terminated and `st` is a valid out pointer.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    rc == 0 && st.f_type as i64 == BPF_FS_MAGIC
}

impl Drop for SteeringProgram {
    fn drop(&mut self) {
        if self.keep_attached {
            return;
        }
        let ifindexes: Vec<u32> = self.attached.keys().copied().collect();
        for ifindex in ifindexes {
            // Best effort: an interface deleted meanwhile has no program.
            let _ = self.detach(ifindex);
        }
        for path in self.pinned.drain(..) {
            let _ = std::fs::remove_file(&path);
        }
        if let Some(dir) = self.pin_dir.take() {
            let _ = std::fs::remove_dir(&dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_layout_matches_c_struct() {
        let cfg = UplinkConfig {
            vxlan_port: 8472,
            masq_ip: Some(Ipv4Addr::new(192, 168, 50, 1)),
            masq_ports: (61000, 65000),
        };
        let b = cfg.to_bytes();
        assert_eq!(&b[0..4], &[192, 168, 50, 1]);
        assert_eq!(u16::from_ne_bytes([b[4], b[5]]), 8472);
        assert_eq!(u16::from_ne_bytes([b[6], b[7]]), 61000);
        assert_eq!(u16::from_ne_bytes([b[8], b[9]]), 65000);
        assert_eq!(&b[10..], &[0, 0]);
    }

    #[test]
    fn slot_allocator_first_fit_and_coalesce() {
        let mut a = SlotAllocator::new(10);
        assert_eq!(a.alloc(4), Some(0));
        assert_eq!(a.alloc(4), Some(4));
        assert_eq!(a.alloc(4), None);
        assert_eq!(a.alloc(2), Some(8));
        a.free(0, 4);
        a.free(4, 4);
        // Coalesced: a range of 8 fits again.
        assert_eq!(a.alloc(8), Some(0));
        a.free(8, 2);
        a.free(0, 8);
        assert_eq!(a.free, vec![(0, 10)]);
    }

    #[test]
    fn slot_allocator_never_hands_out_overlapping_ranges() {
        let mut a = SlotAllocator::new(64);
        let mut used = [false; 64];
        let mut live: Vec<(u32, u32)> = Vec::new();
        // Deterministic pseudo-random alloc/free sequence.
        let mut x: u32 = 12345;
        for _ in 0..2000 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let n = (x >> 16) % 5 + 1;
            if x.is_multiple_of(3) && !live.is_empty() {
                let (s, l) = live.swap_remove((x as usize >> 8) % live.len());
                for i in s..s + l {
                    used[i as usize] = false;
                }
                a.free(s, l);
            } else if let Some(s) = a.alloc(n) {
                for i in s..s + n {
                    assert!(!used[i as usize], "slot {i} handed out twice");
                    used[i as usize] = true;
                }
                live.push((s, n));
            } else {
                let free: u32 = a.free.iter().map(|&(_, l)| l).sum();
                assert!(a.free.iter().all(|&(_, l)| l < n) || free < n);
            }
        }
    }

    #[test]
    fn kxdp_program_needs_name_and_signature_maps() {
        let ours = ["xsks", "xsk_base", "config", "stats", "pod_veths"];
        assert!(is_kxdp_program("steer_pod", &ours));
        assert!(is_kxdp_program("steer_uplink", &ours));
        // Someone else's program, even with a map of the same name.
        assert!(!is_kxdp_program("xdp_prog", &ours));
        assert!(!is_kxdp_program("steer_pod", &["xsks", "stats"]));
        assert!(!is_kxdp_program("steer_pod", &[] as &[&str]));
        assert!(!is_kxdp_program("steer_pod_x", &ours));
    }

    #[test]
    fn stale_pins_accepts_only_kxdp_names() {
        let dir = std::env::temp_dir().join(format!("kxdp-pins-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        for n in ["xsks", "steer_pod", "stats"] {
            std::fs::write(dir.join(n), b"").unwrap();
        }
        let mut got = stale_pins(&dir).unwrap();
        got.sort();
        assert_eq!(
            got,
            vec![dir.join("stats"), dir.join("steer_pod"), dir.join("xsks")]
        );
        std::fs::write(dir.join("not-ours"), b"").unwrap();
        let err = stale_pins(&dir).unwrap_err();
        assert!(
            matches!(&err, XdpError::ForeignPin { entry, .. } if entry == "not-ours"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn pin_names_cover_every_pinned_object() {
        // pin_all pins these maps plus both programs.
        let maps = [
            "xsks",
            "xsk_base",
            "config",
            "frontends",
            "node_ports",
            "pod_ips",
            "pod_veths",
            "host_addrs",
            "stats",
        ];
        for n in maps.iter().chain(PROG_NAMES.iter()) {
            assert!(PIN_NAMES.contains(n), "{n}");
        }
        assert_eq!(PIN_NAMES.len(), maps.len() + PROG_NAMES.len());
    }

    #[test]
    fn object_is_embedded_elf() {
        assert_eq!(STEER_OBJECT.get(..4), Some(&b"\x7fELF"[..]));
    }
}
