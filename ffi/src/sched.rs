//! Real-time scheduling of the calling thread (`sched_setscheduler(2)`).
//!
//! `kxdp run --rt-priority N` puts the worker at `SCHED_FIFO` priority N so
//! that, on a core it shares with the kernel's packet processing (a veth's
//! NAPI thread, softirqs), it runs as soon as it has work instead of
//! waiting out a multi-millisecond NAPI run while its fill ring drains.
//! The worker still sleeps when idle, so the kernel keeps the core then.

#![expect(unsafe_code, reason = "sched_setscheduler(2) through libc")]

use std::io;

/// Highest `SCHED_FIFO` priority Linux accepts.
pub const MAX_FIFO_PRIORITY: u8 = 99;

/// Runs the calling thread (only it) at `SCHED_FIFO` `priority` (1..=99).
pub fn set_current_thread_fifo(priority: u8) -> io::Result<()> {
    if !(1..=MAX_FIFO_PRIORITY).contains(&priority) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("SCHED_FIFO priority {priority} not in 1..={MAX_FIFO_PRIORITY}"),
        ));
    }
    let param = libc::sched_param {
        sched_priority: libc::c_int::from(priority),
    };
    // SAFETY: `param` is a valid sched_param for the duration of the call;
    // pid 0 is the calling thread, the only one affected.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_range_priorities_are_refused_before_the_syscall() {
        for p in [0, 100, 255] {
            let e = set_current_thread_fifo(p).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "priority {p}");
        }
    }

    #[test]
    fn a_thread_can_be_made_fifo_and_only_it_changes() {
        let main_policy = current_policy();
        let r = std::thread::spawn(|| set_current_thread_fifo(1).map(|()| current_policy()))
            .join()
            .unwrap();
        match r {
            Ok(policy) => assert_eq!(policy, libc::SCHED_FIFO),
            // Without CAP_SYS_NICE (not root) the kernel refuses.
            Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EPERM)),
        }
        assert_eq!(current_policy(), main_policy, "the calling thread only");
    }

    fn current_policy() -> libc::c_int {
        // SAFETY: no pointers; pid 0 is the calling thread.
        unsafe { libc::sched_getscheduler(0) }
    }
}
