//! The few Linux calls the connection loop needs: an epoll set that says which sockets
//! have bytes to read (or, for TLS bytes waiting, room to write), and an eventfd that
//! wakes it when a worker hands a connection back. Each `unsafe` block is one system
//! call on descriptors this module owns or was lent; nothing else in the server touches
//! raw descriptors.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

pub struct Epoll {
    fd: OwnedFd,
}

/// Bytes to read, or the peer's end (level-triggered).
const READS: u32 = (libc::EPOLLIN | libc::EPOLLRDHUP) as u32;

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

impl Epoll {
    pub fn new() -> io::Result<Epoll> {
        // SAFETY: no pointers; the descriptor returned is owned from here on.
        let fd = check(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        // SAFETY: `fd` was just returned by the kernel and is owned by nobody else.
        Ok(Epoll { fd: unsafe { OwnedFd::from_raw_fd(fd) } })
    }

    /// Watches `fd` for readability (and hang-up), reported with `token`.
    pub fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, token, READS)
    }

    /// Watches `fd` (added with `token`) for room to write as well, or no longer.
    pub fn watch_writes(&self, fd: RawFd, token: u64, writes: bool) -> io::Result<()> {
        let events = if writes { READS | libc::EPOLLOUT as u32 } else { READS };
        self.ctl(libc::EPOLL_CTL_MOD, fd, token, events)
    }

    /// Stops watching `fd`. Closing a descriptor also removes it.
    pub fn remove(&self, fd: RawFd) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_DEL, fd, 0, READS)
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, token: u64, events: u32) -> io::Result<()> {
        let mut event = libc::epoll_event { events, u64: token };
        // SAFETY: a valid epoll descriptor, and a pointer to an event that outlives the call.
        check(unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), op, fd, &mut event) }).map(|_| ())
    }

    /// Waits up to `timeout` and fills `tokens` with those ready.
    pub fn wait(&self, events: &mut [libc::epoll_event], timeout: Duration, tokens: &mut Vec<u64>) -> io::Result<()> {
        tokens.clear();
        let millis = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
        // SAFETY: `events` is a writable buffer of the length passed.
        let n =
            unsafe { libc::epoll_wait(self.fd.as_raw_fd(), events.as_mut_ptr(), events.len() as libc::c_int, millis) };
        match check(n) {
            Ok(n) => {
                tokens.extend(events[..n as usize].iter().map(|e| e.u64));
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// A counter the kernel can wait on: written by workers, read by the connection loop.
pub struct Wakeup {
    fd: OwnedFd,
}

impl Wakeup {
    pub fn new() -> io::Result<Wakeup> {
        // SAFETY: no pointers; the descriptor returned is owned from here on.
        let fd = check(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })?;
        // SAFETY: `fd` was just returned by the kernel and is owned by nobody else.
        Ok(Wakeup { fd: unsafe { OwnedFd::from_raw_fd(fd) } })
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    pub fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a u64 that lives through the call. A full counter
        // (EAGAIN) already means "wake up", so the result does not matter.
        let _ = unsafe { libc::write(self.fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    /// Resets the counter after a wake-up.
    pub fn clear(&self) {
        let mut count: u64 = 0;
        // SAFETY: reads 8 bytes into a u64 that lives through the call.
        let _ = unsafe { libc::read(self.fd.as_raw_fd(), (&mut count as *mut u64).cast(), 8) };
    }
}

/// Raises the soft limit of open files to the hard limit (to 1,048,576, the kernel's
/// usual `nr_open`, when the hard limit is unlimited); returns (before, after).
// `rlim_t` is 32 bits on armv7 and 64 on x86_64 and aarch64: the casts are needed there.
#[allow(clippy::unnecessary_cast)]
pub fn raise_open_files_limit() -> io::Result<(u64, u64)> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: a pointer to a writable rlimit.
    check(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) })?;
    let before = limit.rlim_cur as u64;
    let wanted = if limit.rlim_max == libc::RLIM_INFINITY { (1 << 20) as libc::rlim_t } else { limit.rlim_max };
    if limit.rlim_cur < wanted {
        let raised = libc::rlimit { rlim_cur: wanted, rlim_max: limit.rlim_max };
        // SAFETY: a pointer to an initialized rlimit.
        check(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) })?;
        return Ok((before, wanted as u64));
    }
    Ok((before, before))
}
