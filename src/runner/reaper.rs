//! Reaping orphans: exec-loop is PID 1 of the runner container (a child subreaper elsewhere), so
//! processes that commands leave behind are re-parented to it and must be waited for.
//!
//! Called from the main loop (on its healthy tick, after each command, at teardown). It never reaps
//! the running command's leader, which belongs to the command thread.

/// Orphans of commands are re-parented to us (we are PID 1 in the runner container, or a
/// subreaper elsewhere), so we reap them: no zombies pile up, and tests see what a pod sees.
pub fn become_subreaper() {
    // SAFETY: plain prctl on our own process.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong) } != 0 {
        log::debug!(
            "could not become a child subreaper: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Reaps exited children other than the running command's leader (which its thread reaps).
pub fn reap_orphans(command_pid: Option<u32>) {
    loop {
        // SAFETY: siginfo_t is plain data that waitid fills; WNOWAIT leaves the child unreaped so
        // we can skip the command's leader.
        let pid = unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            let rc = libc::waitid(
                libc::P_ALL,
                0,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            );
            if rc != 0 {
                return; // ECHILD: no children
            }
            info.si_pid()
        };
        if pid == 0 || Some(pid as u32) == command_pid {
            return;
        }
        // SAFETY: reaping a child that is not owned by a `Child` handle.
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
        log::debug!(pid = pid; "reaped an orphaned process");
    }
}
