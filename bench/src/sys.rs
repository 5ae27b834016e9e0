//! The system calls std does not offer, through the `libc` crate: a socket
//! option, the clock-tick rate, signals, and dying with the parent.
//!
//! Every `unsafe` block of herald-bench is here, each with its reason; the
//! rest of the crate calls these safe wrappers. Reading /proc is not here
//! (procfs.rs): it is plain file I/O. The decision to know: the child
//! processes herald-bench starts (workers, servers) are tied to it with
//! PR_SET_PDEATHSIG, so a killed or crashed run leaves no server or worker
//! behind holding ports and sockets.

use std::os::fd::RawFd;

/// What sysconf(_SC_CLK_TCK) says on every Linux, should it fail.
const DEFAULT_CLOCK_TICKS: f64 = 100.0;

/// IP_BIND_ADDRESS_NO_PORT: bind() to a source address picks no port;
/// connect() picks one unique for the 4-tuple, so ports are shared between
/// destinations and loopback TIME_WAIT ports are reused.
pub fn bind_address_no_port(fd: RawFd) -> std::io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: fd is an open socket; the option value points to a live c_int
    // and the length given is its size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Clock ticks per second, the unit of /proc's CPU times.
pub fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let v = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if v > 0 {
        v as f64
    } else {
        DEFAULT_CLOCK_TICKS
    }
}

/// Sends `sig` (libc::SIGTERM, ...) to `pid`; false if it could not.
pub fn signal(pid: u32, sig: libc::c_int) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: kill has no memory preconditions.
    unsafe { libc::kill(pid, sig) == 0 }
}

/// Makes the child that `cmd` starts receive `sig` when the thread that
/// started it dies.
pub fn die_with_parent(cmd: &mut tokio::process::Command, sig: libc::c_int) {
    let arg = sig as libc::c_ulong;
    // SAFETY: the closure runs in the child between fork and exec, where
    // only async-signal-safe calls are allowed: it makes one prctl call and
    // reads errno, and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            // SAFETY: PR_SET_PDEATHSIG takes one unsigned long argument.
            if libc::prctl(libc::PR_SET_PDEATHSIG, arg) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
}
