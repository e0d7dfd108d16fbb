//! The crate's only `unsafe`, two uses:
//!
//! 1. Attaching a `/dev/net/tun` file descriptor to a new TUN device with the `TUNSETIFF`
//!    ioctl. There is no safe std API for it and the workspace has no TUN crate;
//!    `ip tuntap add` would only pre-create a *persistent* device, which still needs this
//!    same ioctl to attach, and persistent devices outlive a crash. A non-persistent
//!    device created here disappears as soon as its fd is closed, even when the process
//!    dies, so teardown cannot leak devices.
//! 2. Registering that fd with tokio's reactor (`AsyncFd::register` is `unsafe` since
//!    tokio 1.5x because it cannot check that the fd stays open).
#![allow(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

use std::sync::Arc;

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// Mirror of the kernel's `struct ifreq` for `TUNSETIFF`: the name, then the flags (a
/// `short`) at the start of the union, padded to the full size. Every byte is
/// initialized, so it is safe to build without `mem::zeroed`.
#[repr(C)]
struct IfReqFlags {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

// The kernel copies `sizeof(struct ifreq)` bytes in and out; ours must be exactly that.
const _: () = assert!(std::mem::size_of::<IfReqFlags>() == std::mem::size_of::<libc::ifreq>());

/// Open `/dev/net/tun` non-blocking and create TUN device `name` (IP packets, no packet
/// info header). Fails if a device of that name exists (`IFF_TUN_EXCL`).
pub(crate) fn create_tun(name: &str) -> io::Result<File> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad interface name {name:?} (1..=15 bytes, no NUL)"),
        ));
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/net/tun")?;
    let mut req = IfReqFlags {
        name: [0; libc::IFNAMSIZ],
        flags: (libc::IFF_TUN | libc::IFF_NO_PI | libc::IFF_TUN_EXCL) as libc::c_short,
        _pad: [0; 22],
    };
    req.name[..bytes.len()].copy_from_slice(bytes);
    // SAFETY: `file` is an open fd we own and keep alive across the call. TUNSETIFF reads
    // and writes back at most `sizeof(struct ifreq)` bytes through the pointer; `req` is a
    // live, exclusively borrowed, fully initialized value of exactly that size (checked at
    // compile time above), and its name is NUL-terminated (len < IFNAMSIZ, zero-filled).
    // The ioctl does not retain the pointer after returning.
    let rc = unsafe {
        libc::ioctl(
            file.as_raw_fd(),
            libc::TUNSETIFF,
            &mut req as *mut IfReqFlags,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(file)
}

/// Register a TUN fd with the current tokio runtime for read readiness.
pub(crate) fn register_readable(file: Arc<File>) -> io::Result<AsyncFd<Arc<File>>> {
    // SAFETY: the `File` owns its fd and `Arc<File>::as_raw_fd` returns that same
    // descriptor on every call. The descriptor is closed only when the last `Arc` is
    // dropped, and the `AsyncFd` holds one `Arc` for its whole lifetime, so the fd stays
    // open and refers to the same file description until the `AsyncFd` is gone.
    unsafe { AsyncFd::register_with_interest(file, Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
}
