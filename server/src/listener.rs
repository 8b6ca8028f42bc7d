//! The listening socket, with `TCP_NODELAY`: with Nagle's algorithm a keep-alive client
//! whose answer went out in two writes waits for its delayed ACK (40 ms) every time.
//! Linux hands the option on to each accepted connection.

use crate::Error;
use std::net::TcpListener;
use std::os::fd::AsRawFd;

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
    Ok(listener)
}
