//! The listening socket, with `TCP_NODELAY` (with Nagle's algorithm a keep-alive client
//! whose answer went out in two writes waits for its delayed ACK, 40 ms, every time;
//! Linux hands the option on to each accepted connection) and a long accept queue.

use crate::Error;
use std::net::TcpListener;
use std::os::fd::AsRawFd;

/// Connections the kernel queues before the server accepts them.
const LISTEN_BACKLOG: libc::c_int = 4096;

pub fn bind(address: &str) -> Result<TcpListener, Error> {
    let io_error = |source: std::io::Error| Error::Io { path: address.into(), source };
    let listener = TcpListener::bind(address).map_err(io_error)?;
    let enable: libc::c_int = 1;
    // SAFETY: a valid socket descriptor and a pointer to a c_int of the given size.
    let rc = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&enable as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        log::warn!("TCP_NODELAY not set on {address}: {}", std::io::Error::last_os_error());
    }
    // std listens with a backlog of 128: a fleet reconnecting at once overflows it, and
    // each dropped SYN costs its device a 1 s retransmission. Listening again sets the
    // backlog (the kernel caps it at net.core.somaxconn, 4096 by default).
    // SAFETY: a valid listening socket descriptor; no pointers.
    if unsafe { libc::listen(listener.as_raw_fd(), LISTEN_BACKLOG) } != 0 {
        log::warn!("listen backlog not raised on {address}: {}", std::io::Error::last_os_error());
    }
    Ok(listener)
}
