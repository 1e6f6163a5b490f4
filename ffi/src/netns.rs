//! Entering a network namespace from the calling thread (`setns(2)`).
//!
//! Only the calling thread moves: spawn a dedicated thread, enter the
//! namespace there, and do the namespace's work (sockets, netlink, XDP
//! attach) on that thread. Used by the tests' topology helper, the
//! benchmark and `kxdp demo`.

#![expect(unsafe_code, reason = "setns(2) through libc")]

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::Path;

/// Moves the calling thread into the network namespace at `path`
/// (e.g. `/run/netns/NAME`, `/proc/PID/ns/net`).
pub fn enter_net_namespace(path: &Path) -> io::Result<()> {
    let file = File::open(path)?;
    enter_net_namespace_fd(std::os::fd::AsFd::as_fd(&file))
}

/// Moves the calling thread into the network namespace `fd` refers to
/// (an open `/proc/.../ns/net` or `/run/netns/NAME`).
pub fn enter_net_namespace_fd(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: `fd` is an open namespace file descriptor borrowed for the
    // duration of the call; setns only changes the calling thread's
    // namespace.
    let rc = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
