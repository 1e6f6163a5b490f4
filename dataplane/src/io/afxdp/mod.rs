//! AF_XDP ports on xsk-rs, one shared UMEM per worker.
//!
//! # Memory
//!
//! An [`XskStore`] is one UMEM of 2 KiB frames (backed by huge pages when
//! the system has them, see [`HugePages`]) and the worker-wide free list.
//! Every [`AfXdpPort`] of the worker binds its socket to that UMEM
//! (`XDP_SHARED_UMEM`; each `(interface, queue)` gets its own fill and
//! completion rings), so a frame received on a pod veth is transmitted on
//! the uplink by handing its descriptor to the other socket: no userspace
//! copy. In copy mode (veth) the kernel copies on rx and tx anyway; in
//! zero-copy mode the frame crosses devices without any copy.
//!
//! ```text
//!  frame (2048 B):  | XDP headroom 256 B | packet ...                      |
//!                   ^ chunk start        ^ rx address (offset 256)
//! ```
//!
//! The pipeline sees the whole chunk as [`Frame::buf`] with the packet at
//! offset 256, so it has 256 bytes of headroom (>= [`Frame::HEADROOM`]).
//!
//! xsk-rs fixes a descriptor's address: a frame is always transmitted
//! from the address it was received at. When the pipeline moved the
//! packet's start (VXLAN encapsulation prepends 50 bytes, decapsulation
//! strips them), [`AfXdpPort::send`] moves the packet back to that address
//! inside the same frame (one `memmove` of the packet, counted in
//! [`PortStats::tx_realigned`]). Packets that would not fit are dropped and
//! counted in `tx_dropped`.
//!
//! # Modes
//!
//! [`BindMode::Auto`] lets the kernel pick zero-copy when the driver
//! supports it and copy mode otherwise; [`AfXdpPort::zero_copy`] reports
//! the outcome (`XDP_OPTIONS`). `Copy` and `ZeroCopy` force a mode (the
//! latter fails on drivers without support, e.g. veth).
//!
//! # Safety
//!
//! UMEM memory is shared with the kernel. A frame is touched by userspace
//! only while an [`XskBuf`] token owns it: tokens are created from
//! descriptors taken off the rx ring or the free list, are not `Clone`,
//! and are consumed when the descriptor goes back to a ring or the free
//! list. Views of a frame ([`FrameStore::frame`]) borrow the token, so no
//! `&mut` to UMEM bytes outlives the token's ownership.
//!
//! The steering program that feeds these sockets and the XSKMAP
//! registration live in `kxdp-ffi` (`xdp` module); register
//! [`AfXdpPort::as_fd`] for `(ifindex, queue)` there.

#![expect(
    unsafe_code,
    reason = "UMEM memory shared with the kernel and xsk-rs's unsafe ring API"
)]

pub mod ring;

use std::ffi::CString;
use std::num::NonZeroU32;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

use xsk_rs::config::{
    BindFlags, FrameSize, Interface, LibxdpFlags, QueueSize, SocketConfig, UmemConfig,
};
use xsk_rs::{CompQueue, FillQueue, FrameDesc, RxQueue, Socket, TxQueue, Umem};

use self::ring::{CoreLimits, FramePool, PortCore, XskRings};
use super::{FrameStore, IoError, PacketBuf, Port, PortStats};
use crate::pipeline::{Frame, Ingress};

/// UMEM frame size (aligned mode: a power of two).
pub const FRAME_SIZE: usize = 2048;
/// Bytes the kernel reserves in front of every received packet.
pub const XDP_HEADROOM: usize = 256;

const _: () = assert!(FRAME_SIZE >= Frame::MIN_CAPACITY);
const _: () = assert!(XDP_HEADROOM >= Frame::HEADROOM);

/// Errors of the AF_XDP layer.
#[derive(Debug, thiserror::Error)]
pub enum AfXdpError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("create UMEM of {frames} frames (huge pages: {huge_pages}): {source}")]
    Umem {
        frames: u32,
        huge_pages: bool,
        #[source]
        source: xsk_rs::umem::UmemCreateError,
    },
    #[error("create AF_XDP socket on {ifname} queue {queue}: {source}")]
    Socket {
        ifname: String,
        queue: u32,
        #[source]
        source: xsk_rs::socket::SocketCreateError,
    },
    #[error("setting {name} on the AF_XDP socket: {source}")]
    SocketOption {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("socket on {ifname} queue {queue} got no fill/completion rings: (interface, queue) already bound from this UMEM")]
    AlreadyBound { ifname: String, queue: u32 },
}

/// Huge page policy for the UMEM.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HugePages {
    /// Use huge pages if the system has them, normal pages otherwise.
    #[default]
    Try,
    /// Never.
    Never,
    /// Fail if huge pages are not available.
    Require,
}

/// Configuration of a worker's UMEM.
#[derive(Clone, Copy, Debug)]
pub struct StoreConfig {
    /// Number of 2 KiB frames (the worker's packet buffer budget).
    pub frames: u32,
    /// Size of each `(interface, queue)`'s fill ring (power of two).
    pub fill_ring: u32,
    /// Size of each completion ring (power of two).
    pub comp_ring: u32,
    pub huge_pages: HugePages,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            frames: 8192,
            fill_ring: 2048,
            comp_ring: 2048,
            huge_pages: HugePages::Try,
        }
    }
}

static NEXT_STORE_ID: AtomicU32 = AtomicU32::new(1);

/// A frame of an [`XskStore`], owned by userspace.
#[derive(Debug)]
pub struct XskBuf {
    desc: FrameDesc,
    offset: usize,
    len: usize,
    store: u32,
}

impl PacketBuf for XskBuf {
    fn offset(&self) -> usize {
        self.offset
    }
    fn len(&self) -> usize {
        self.len
    }
    fn capacity(&self) -> usize {
        FRAME_SIZE
    }
    fn set_bounds_unchecked(&mut self, offset: usize, len: usize) {
        self.offset = offset;
        self.len = len;
    }
}

/// One UMEM and its free frames: the frame memory of one worker.
pub struct XskStore {
    id: u32,
    umem: Umem,
    umem_config: UmemConfig,
    /// Start of the UMEM mapping (kept alive by `umem`).
    base: NonNull<u8>,
    /// Length of the mapping in bytes.
    len: usize,
    pool: FramePool<FrameDesc>,
    huge_pages: bool,
}

impl std::fmt::Debug for XskStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XskStore")
            .field("id", &self.id)
            .field("frames", &self.pool.total())
            .field("free", &self.pool.free())
            .field("huge_pages", &self.huge_pages)
            .finish()
    }
}

// SAFETY: `base` points into the UMEM mapping owned by `umem` (xsk-rs's
// `Umem` is `Send`); the store has no thread-affine state, and moving it
// moves the only userspace access path to the frames it owns.
unsafe impl Send for XskStore {}

fn queue_size(n: u32, what: &str) -> Result<QueueSize, AfXdpError> {
    QueueSize::new(n).map_err(|_| AfXdpError::Config(format!("{what} {n} is not a power of two")))
}

impl XskStore {
    /// Creates the UMEM.
    pub fn new(cfg: &StoreConfig) -> Result<Self, AfXdpError> {
        let frames = NonZeroU32::new(cfg.frames)
            .ok_or_else(|| AfXdpError::Config("UMEM needs at least one frame".into()))?;
        let frame_size = FrameSize::new(FRAME_SIZE as u32)
            .map_err(|e| AfXdpError::Config(format!("frame size: {e}")))?;
        let umem_config = UmemConfig::builder()
            .frame_size(frame_size)
            .fill_queue_size(queue_size(cfg.fill_ring, "fill ring size")?)
            .comp_queue_size(queue_size(cfg.comp_ring, "completion ring size")?)
            .frame_headroom(0)
            .build()
            .map_err(|e| AfXdpError::Config(format!("UMEM: {e}")))?;
        let create = |huge: bool| {
            Umem::new(umem_config, frames, huge).map_err(|source| AfXdpError::Umem {
                frames: cfg.frames,
                huge_pages: huge,
                source,
            })
        };
        let ((umem, descs), huge_pages) = match cfg.huge_pages {
            HugePages::Never => (create(false)?, false),
            HugePages::Require => (create(true)?, true),
            HugePages::Try => match create(true) {
                Ok(r) => (r, true),
                Err(_) => (create(false)?, false),
            },
        };
        let first = descs
            .first()
            .copied()
            .ok_or_else(|| AfXdpError::Config("UMEM returned no frames".into()))?;
        // SAFETY: `first` is a frame of this UMEM and no other reference
        // to it exists yet (nothing has been given to the kernel).
        let data_ptr = unsafe { umem.data(&first) }.as_ptr();
        // The descriptor's address is its offset from the mapping start.
        let base = NonNull::new(data_ptr.wrapping_sub(first.addr()) as *mut u8)
            .ok_or_else(|| AfXdpError::Config("UMEM mapped at null".into()))?;
        Ok(XskStore {
            id: NEXT_STORE_ID.fetch_add(1, Ordering::Relaxed),
            len: cfg.frames as usize * FRAME_SIZE,
            umem,
            umem_config,
            base,
            pool: FramePool::new(descs),
            huge_pages,
        })
    }

    /// Whether the UMEM is backed by huge pages.
    pub fn huge_pages(&self) -> bool {
        self.huge_pages
    }

    /// Frames in the UMEM.
    pub fn total_frames(&self) -> usize {
        self.pool.total()
    }

    /// The whole 2 KiB chunk holding `desc`, as a mutable slice.
    ///
    /// # Safety
    ///
    /// The caller must own the frame (it is in no ring and no other
    /// reference to its bytes exists) for as long as the slice lives.
    #[expect(
        clippy::mut_from_ref,
        reason = "UMEM memory is shared with the kernel, not owned by the store; exclusivity comes from the frame token"
    )]
    unsafe fn chunk<'a>(&'a self, desc: &FrameDesc) -> Option<&'a mut [u8]> {
        let start = desc.addr() & !(FRAME_SIZE - 1);
        if start.checked_add(FRAME_SIZE)? > self.len {
            return None;
        }
        // SAFETY: `start..start + FRAME_SIZE` lies inside the mapping
        // (checked above), which `self.umem` keeps mapped for `'a`;
        // exclusivity is the caller's contract.
        Some(unsafe { std::slice::from_raw_parts_mut(self.base.as_ptr().add(start), FRAME_SIZE) })
    }

    fn token(&self, desc: FrameDesc) -> XskBuf {
        let offset = desc.addr() & (FRAME_SIZE - 1);
        XskBuf {
            desc,
            offset,
            len: desc.lengths().data(),
            store: self.id,
        }
    }

    /// Makes `buf`'s descriptor describe its packet for transmission:
    /// moves the packet back to the descriptor's address if the pipeline
    /// moved it, and sets the length. `Err` (with the descriptor, to go
    /// back to the pool) if it cannot be sent.
    fn prepare_tx(&self, mut buf: XskBuf, realigned: &mut u64) -> Result<FrameDesc, FrameDesc> {
        let desc_off = buf.desc.addr() & (FRAME_SIZE - 1);
        if buf.store != self.id
            || desc_off.checked_add(buf.len).is_none_or(|e| e > FRAME_SIZE)
            || buf
                .offset
                .checked_add(buf.len)
                .is_none_or(|e| e > FRAME_SIZE)
        {
            return Err(buf.desc);
        }
        if buf.offset != desc_off {
            // SAFETY: the token owns the frame; the slice dies in this block.
            let Some(chunk) = (unsafe { self.chunk(&buf.desc) }) else {
                return Err(buf.desc);
            };
            chunk.copy_within(buf.offset..buf.offset + buf.len, desc_off);
            *realigned += 1;
        }
        // SAFETY: the token owns the frame (not in any ring), so nothing
        // else accesses its data segment while the cursor lives.
        let mut data = unsafe { self.umem.data_mut(&mut buf.desc) };
        let mut cursor = data.cursor();
        cursor.set_pos(buf.len);
        if cursor.pos() != buf.len {
            return Err(buf.desc);
        }
        Ok(buf.desc)
    }
}

impl FrameStore for XskStore {
    type Buf = XskBuf;

    fn frame<'a>(&'a self, buf: &'a mut XskBuf) -> Result<Frame<'a>, IoError> {
        if buf.store != self.id {
            return Err(IoError::ForeignFrame);
        }
        let (offset, len) = (buf.offset, buf.len);
        // SAFETY: `buf` is a token of this store (checked) and owns its
        // frame; the slice borrows `buf` mutably for 'a, so no second
        // view of the same frame can exist, and `self` for 'a, so the
        // mapping stays alive.
        let chunk = unsafe { self.chunk(&buf.desc) }.ok_or(IoError::ForeignFrame)?;
        Frame::new(chunk, offset, len).ok_or(IoError::Bounds {
            offset,
            len,
            capacity: FRAME_SIZE,
        })
    }

    fn alloc(&mut self) -> Option<XskBuf> {
        let desc = self.pool.alloc()?;
        let mut buf = self.token(desc);
        buf.len = 0;
        Some(buf)
    }

    fn release(&mut self, buf: XskBuf) {
        if buf.store == self.id {
            self.pool.put(buf.desc);
        }
    }

    fn free_frames(&self) -> usize {
        self.pool.free()
    }
}

/// How the socket binds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BindMode {
    /// Zero-copy when the driver supports it, copy mode otherwise.
    #[default]
    Auto,
    /// Force copy mode (`XDP_COPY`).
    Copy,
    /// Force zero-copy (`XDP_ZEROCOPY`); fails without driver support.
    ZeroCopy,
}

/// Configuration of one AF_XDP socket.
#[derive(Clone, Debug)]
pub struct PortConfig {
    /// Interface name in the calling thread's network namespace.
    pub ifname: String,
    pub queue: u32,
    /// How frames received here enter the pipeline.
    pub ingress: Ingress,
    pub rx_ring: u32,
    pub tx_ring: u32,
    pub bind: BindMode,
    /// Use `XDP_USE_NEED_WAKEUP` (recommended; the kernel only wants a
    /// syscall when its side is idle).
    pub need_wakeup: bool,
    /// Receive descriptors taken per `recv_batch` at most.
    pub rx_batch: usize,
    pub limits: CoreLimits,
    /// Preferred busy polling: the worker runs the device's NAPI itself
    /// (see [`BusyPoll`]). `None`: the kernel's softirq or NAPI thread
    /// fills the rx ring on its own.
    pub busy_poll: Option<BusyPoll>,
}

/// Preferred busy polling of one socket (kernel 5.11+).
///
/// The socket gets `SO_PREFER_BUSY_POLL`, `SO_BUSY_POLL` and
/// `SO_BUSY_POLL_BUDGET`, and every receive starts with a non-blocking
/// `recvfrom`, which runs the device queue's NAPI poll in the worker's
/// thread. While the worker keeps polling, the kernel leaves the queue to
/// it instead of competing for the core from softirq or a NAPI thread;
/// `napi_defer_hard_irqs` and `gro_flush_timeout` on the device (set by
/// whoever owns it) decide how soon the kernel takes over again when the
/// worker stops polling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BusyPoll {
    /// `SO_BUSY_POLL`: how long one busy poll may spin for packets, µs.
    pub usecs: u32,
    /// `SO_BUSY_POLL_BUDGET`: packets one NAPI poll may process.
    pub budget: u16,
}

impl Default for BusyPoll {
    fn default() -> Self {
        BusyPoll {
            usecs: 20,
            budget: 64,
        }
    }
}

impl PortConfig {
    /// Defaults for `ifname`/`queue`: rings of 2048, batch 64.
    pub fn new(ifname: &str, queue: u32, ingress: Ingress) -> Self {
        PortConfig {
            ifname: ifname.to_owned(),
            queue,
            ingress,
            rx_ring: 2048,
            tx_ring: 2048,
            bind: BindMode::Auto,
            need_wakeup: true,
            rx_batch: 64,
            limits: CoreLimits::default(),
            busy_poll: None,
        }
    }
}

impl ring::FrameId for FrameDesc {
    fn frame(&self) -> usize {
        self.addr() / FRAME_SIZE
    }
}

/// The xsk-rs rings of one socket.
struct Rings {
    tx: TxQueue,
    rx: RxQueue,
    fill: FillQueue,
    comp: CompQueue,
}

impl XskRings<FrameDesc> for Rings {
    fn fill_free(&mut self) -> u32 {
        self.fill.nb_free(u32::MAX >> 1)
    }
    fn fill_produce(&mut self, descs: &[FrameDesc]) -> usize {
        // SAFETY: the descriptors are frames of the UMEM this ring belongs
        // to, owned by userspace and handed over here: PortCore forgets
        // them until they come back through the rx ring.
        unsafe { self.fill.produce(descs) }
    }
    fn rx_consume(&mut self, descs: &mut [FrameDesc]) -> usize {
        // SAFETY: `descs` is scratch space; the frames written into it are
        // handed to userspace by the kernel.
        unsafe { self.rx.consume(descs) }
    }
    fn tx_produce(&mut self, descs: &[FrameDesc]) -> usize {
        // SAFETY: as for `fill_produce`; the frames return via the
        // completion ring.
        unsafe { self.tx.produce(descs) }
    }
    fn comp_consume(&mut self, descs: &mut [FrameDesc]) -> usize {
        // SAFETY: `descs` is scratch space; completed frames are ours again.
        unsafe { self.comp.consume(descs) }
    }
    fn tx_needs_wakeup(&self) -> bool {
        self.tx.needs_wakeup()
    }
    fn fill_needs_wakeup(&self) -> bool {
        self.fill.needs_wakeup()
    }
    fn tx_wakeup(&mut self) -> std::io::Result<()> {
        self.tx.wakeup()
    }
    fn rx_wakeup(&mut self) -> std::io::Result<()> {
        self.fill.wakeup(self.rx.fd_mut(), 0)
    }
    fn rx_busy_poll(&mut self) -> std::io::Result<()> {
        let fd = self.rx.fd().as_raw_fd();
        // SAFETY: a zero-length receive with null buffers: the kernel
        // (`xsk_recvmsg`) writes no data and no address.
        let rc = unsafe {
            libc::recvfrom(
                fd,
                std::ptr::null_mut(),
                0,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        };
        if rc >= 0 {
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        match err.raw_os_error() {
            // Nothing to do, or the kernel's own transient conditions.
            Some(libc::EAGAIN | libc::EBUSY | libc::ENOBUFS | libc::ENETDOWN) => Ok(()),
            _ => Err(err),
        }
    }
}

/// `setsockopt(SOL_SOCKET, opt, value)` for an integer option.
fn set_int_sockopt(fd: RawFd, opt: libc::c_int, value: u32, name: &str) -> Result<(), AfXdpError> {
    let value = libc::c_int::try_from(value)
        .map_err(|_| AfXdpError::Config(format!("{name} {value} out of range")))?;
    // SAFETY: `value` is a valid c_int for the duration of the call and
    // its size is passed along.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(AfXdpError::SocketOption {
            name: name.to_owned(),
            source: std::io::Error::last_os_error(),
        })
    }
}

/// Turns on preferred busy polling for the socket `fd`.
fn enable_busy_poll(fd: RawFd, bp: BusyPoll) -> Result<(), AfXdpError> {
    set_int_sockopt(fd, libc::SO_PREFER_BUSY_POLL, 1, "SO_PREFER_BUSY_POLL")?;
    set_int_sockopt(fd, libc::SO_BUSY_POLL, bp.usecs, "SO_BUSY_POLL")?;
    set_int_sockopt(
        fd,
        libc::SO_BUSY_POLL_BUDGET,
        u32::from(bp.budget),
        "SO_BUSY_POLL_BUDGET",
    )
}

/// One AF_XDP socket bound to `(interface, queue)` on a worker's UMEM.
pub struct AfXdpPort {
    ifname: String,
    ifindex: u32,
    queue: u32,
    ingress: Ingress,
    zero_copy: bool,
    need_wakeup: bool,
    rings: Rings,
    core: PortCore<FrameDesc>,
    rx_scratch: Vec<FrameDesc>,
    stats: PortStats,
    /// With busy polling: whether the kernel's NAPI id of the socket was
    /// checked yet (after the first packet, see [`AfXdpPort::recv_batch`]).
    napi_checked: bool,
}

impl std::fmt::Debug for AfXdpPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AfXdpPort")
            .field("ifname", &self.ifname)
            .field("queue", &self.queue)
            .field("zero_copy", &self.zero_copy)
            .finish_non_exhaustive()
    }
}

impl AfXdpPort {
    /// Creates a socket on `cfg.ifname`/`cfg.queue` (in the calling
    /// thread's network namespace) sharing `store`'s UMEM, and stocks its
    /// fill ring. No XDP program is loaded: register [`Self::as_fd`] in
    /// the steering program's XSKMAP.
    pub fn open(store: &mut XskStore, cfg: &PortConfig) -> Result<Self, AfXdpError> {
        let cname = CString::new(cfg.ifname.as_bytes())
            .map_err(|_| AfXdpError::Config(format!("interface name {:?}", cfg.ifname)))?;
        // SAFETY: `cname` is NUL-terminated and outlives the call.
        let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
        if ifindex == 0 {
            return Err(AfXdpError::Config(format!(
                "interface {:?} not found in this network namespace",
                cfg.ifname
            )));
        }
        let mut bind = match cfg.bind {
            BindMode::Auto => BindFlags::empty(),
            BindMode::Copy => BindFlags::XDP_COPY,
            BindMode::ZeroCopy => BindFlags::XDP_ZEROCOPY,
        };
        if cfg.need_wakeup {
            bind |= BindFlags::XDP_USE_NEED_WAKEUP;
        }
        let sock_cfg = SocketConfig::builder()
            .rx_queue_size(queue_size(cfg.rx_ring, "rx ring size")?)
            .tx_queue_size(queue_size(cfg.tx_ring, "tx ring size")?)
            .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
            .bind_flags(bind)
            .build();
        // SAFETY: XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD is set, as xsk-rs
        // requires when a UMEM is shared.
        let (tx, rx, fq_cq) =
            unsafe { Socket::new(sock_cfg, &store.umem, &Interface::new(cname), cfg.queue) }
                .map_err(|source| AfXdpError::Socket {
                    ifname: cfg.ifname.clone(),
                    queue: cfg.queue,
                    source,
                })?;
        let (fill, comp) = fq_cq.ok_or_else(|| AfXdpError::AlreadyBound {
            ifname: cfg.ifname.clone(),
            queue: cfg.queue,
        })?;
        let zero_copy = xdp_zero_copy(rx.fd().as_raw_fd());
        if let Some(bp) = cfg.busy_poll {
            enable_busy_poll(rx.fd().as_raw_fd(), bp)?;
        }
        let limits = CoreLimits {
            fill_target: cfg
                .limits
                .fill_target
                .min(store.umem_config.fill_queue_size().get()),
            busy_poll: cfg.busy_poll.is_some(),
            ..cfg.limits
        };
        let mut port = AfXdpPort {
            ifname: cfg.ifname.clone(),
            ifindex,
            queue: cfg.queue,
            ingress: cfg.ingress,
            zero_copy,
            need_wakeup: cfg.need_wakeup,
            rings: Rings { tx, rx, fill, comp },
            core: PortCore::registered(limits, &mut store.pool),
            rx_scratch: vec![FrameDesc::default(); cfg.rx_batch.max(1)],
            stats: PortStats::default(),
            napi_checked: false,
        };
        port.core.refill(&mut port.rings, &mut store.pool);
        Ok(port)
    }

    /// The socket's file descriptor, for the XSKMAP.
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        let fd = self.rings.rx.fd().as_raw_fd();
        // SAFETY: the descriptor belongs to the socket that `self.rings`
        // keeps open; the borrow cannot outlive `self`.
        unsafe { BorrowedFd::borrow_raw(fd) }
    }

    /// Whether the kernel bound the socket in zero-copy mode.
    pub fn zero_copy(&self) -> bool {
        self.zero_copy
    }

    pub fn queue(&self) -> u32 {
        self.queue
    }

    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// Frames lent to the kernel by this port (fill + tx rings).
    pub fn frames_in_flight(&self) -> u32 {
        self.core.fill_outstanding() + self.core.tx_outstanding()
    }

    /// Closes the socket. Pending frames and completions go back to the
    /// store; then the socket is released (`close(2)` runs the kernel's
    /// `xsk_release` before it returns, which removes the socket from
    /// every XSKMAP and stops all use of its rings), and the frames it
    /// still held in its fill, rx and tx rings are re-issued from the
    /// store's descriptor list (see [`ring`]'s *Frames lent to a socket
    /// that closes*). Returns the frames that could not be recovered, for
    /// the worker's account.
    ///
    /// Copy mode only: in zero-copy mode the kernel releases the driver's
    /// buffer pool from a work queue after `close(2)` returns
    /// (`xp_put_pool` -> `xp_release_deferred`), so the NIC may still
    /// write into those frames for a moment. They are not reclaimed
    /// there and count as lost, as before.
    pub fn close(self, store: &mut XskStore) -> u32 {
        let AfXdpPort {
            mut rings,
            mut core,
            zero_copy,
            ..
        } = self;
        core.drain_pending(&mut store.pool);
        while core.complete(&mut rings, &mut store.pool) > 0 {}
        drop(rings);
        if zero_copy {
            return core.forget_in_flight();
        }
        core.reclaim_in_flight(&mut store.pool)
    }
}

impl AfXdpPort {
    /// Busy polling needs the NAPI id the kernel records on the socket
    /// from the first packet it delivers (`sk_mark_napi_id_once_xdp`, from
    /// the device's `xdp_rxq_info`). A device that registers its receive
    /// queue without one (veth on some kernels) leaves it 0: `recvfrom`
    /// then polls nothing and only costs a syscall per receive, so this
    /// port stops busy polling and says so.
    fn check_busy_poll(&mut self) {
        let fd = self.rings.rx.fd().as_raw_fd();
        match napi_id(fd) {
            Ok(0) => {
                self.core.stop_busy_polling();
                self.stats.busy_poll_unavailable = true;
                tracing::warn!(
                    ifname = %self.ifname,
                    queue = self.queue,
                    "busy polling unavailable: the device gave the socket no NAPI id; the kernel's NAPI keeps receiving"
                );
            }
            Ok(id) => {
                tracing::info!(ifname = %self.ifname, queue = self.queue, napi_id = id, "busy polling");
            }
            Err(e) => {
                tracing::warn!(ifname = %self.ifname, error = %e, "reading SO_INCOMING_NAPI_ID");
            }
        }
    }
}

/// `getsockopt(SO_INCOMING_NAPI_ID)`: the NAPI instance that delivered the
/// socket's packets (0: none recorded).
fn napi_id(fd: RawFd) -> std::io::Result<u32> {
    let mut id: u32 = 0;
    let mut len = std::mem::size_of::<u32>() as libc::socklen_t;
    // SAFETY: `id`/`len` are valid out-pointers of the size given.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_INCOMING_NAPI_ID,
            (&mut id as *mut u32).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(id)
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// `getsockopt(XDP_OPTIONS)`: whether the socket runs in zero-copy mode.
fn xdp_zero_copy(fd: RawFd) -> bool {
    let mut opts: u32 = 0;
    let mut len = std::mem::size_of::<u32>() as libc::socklen_t;
    // SAFETY: `opts`/`len` are valid out-pointers of the size given;
    // `struct xdp_options` is one u32.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_XDP,
            libc::XDP_OPTIONS,
            (&mut opts as *mut u32).cast(),
            &mut len,
        )
    };
    rc == 0 && opts & libc::XDP_OPTIONS_ZEROCOPY != 0
}

impl Port for AfXdpPort {
    type Store = XskStore;

    fn ingress(&self) -> Ingress {
        self.ingress
    }

    fn ifindex(&self) -> u32 {
        self.ifindex
    }

    fn recv_batch(&mut self, store: &mut XskStore, out: &mut Vec<XskBuf>, max: usize) -> usize {
        let max = max.min(self.rx_scratch.len());
        let Some(scratch) = self.rx_scratch.get_mut(..max) else {
            return 0;
        };
        let n = self.core.recv(&mut self.rings, &mut store.pool, scratch);
        for desc in scratch.iter().take(n) {
            let buf = store.token(*desc);
            self.stats.rx_bytes += buf.len as u64;
            out.push(buf);
        }
        if n > 0 && !self.napi_checked && self.core.busy_polling() {
            self.napi_checked = true;
            self.check_busy_poll();
        }
        n
    }

    fn send(&mut self, store: &mut XskStore, buf: XskBuf) -> bool {
        let len = buf.len;
        match store.prepare_tx(buf, &mut self.stats.tx_realigned) {
            Ok(desc) => {
                let ok = self.core.send(desc, &mut store.pool);
                if ok {
                    self.stats.tx_bytes += len as u64;
                }
                ok
            }
            Err(desc) => {
                self.stats.tx_dropped += 1;
                store.pool.put(desc);
                false
            }
        }
    }

    fn flush(&mut self, store: &mut XskStore) -> usize {
        self.core.flush(&mut self.rings, &mut store.pool)
    }

    fn complete(&mut self, store: &mut XskStore) -> usize {
        self.core.complete(&mut self.rings, &mut store.pool)
    }

    fn needs_wakeup(&self) -> bool {
        self.need_wakeup && (self.rings.tx_needs_wakeup() || self.rings.fill_needs_wakeup())
    }

    fn wakeup(&mut self) -> Result<(), IoError> {
        self.rings.tx_wakeup().map_err(|source| IoError::Os {
            what: "AF_XDP tx wakeup (sendto)",
            source,
        })?;
        self.rings.rx_wakeup().map_err(|source| IoError::Os {
            what: "AF_XDP rx wakeup (poll)",
            source,
        })
    }

    fn stats(&self) -> PortStats {
        let c = self.core.counters();
        let mut s = PortStats {
            rx_packets: c.rx_packets,
            tx_packets: c.tx_submitted,
            tx_completed: c.tx_completed,
            tx_dropped: self.stats.tx_dropped + c.tx_dropped,
            pool_empty: c.pool_empty,
            wakeups: c.wakeups,
            busy_polls: c.busy_polls,
            ..self.stats
        };
        if let Ok(k) = self.rings.rx.fd().xdp_statistics() {
            s.rx_ring_full = k.rx_ring_full();
            s.fill_ring_empty = k.rx_fill_ring_empty_descs();
            s.rx_dropped = k.rx_dropped();
            s.rx_invalid_descs = k.rx_invalid_descs();
            s.tx_invalid_descs = k.tx_invalid_descs();
        }
        s
    }
}
