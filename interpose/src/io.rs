//! POSIX I/O wrappers: `read`, `write`, `pread`, `pwrite`, `readv`, `writev`, `open`, `openat`,
//! `close`, `fsync`, `fdatasync`, their 64-bit-offset twins and glibc's fortified `__read_chk`
//! family. Each counts calls, seconds and (for the read/write family) the bytes the call
//! returned, under the plain name (`pread64` counts as `pread`).
//!
//! What is not seen: stdio (`fwrite`, `printf`, `fread`) and everything else inside glibc, which
//! calls its internal aliases of these functions rather than the exported symbols; memory-mapped
//! I/O; `io_uring`; `copy_file_range`/`sendfile`.
//!
//! `open` and `openat` are variadic in C. They are defined here with the mode as a fixed `c_uint`
//! argument, read unconditionally, as other interposers do: on x86-64 (and aarch64) a variadic
//! integer argument travels in the same register as the fixed argument in that position, so
//! when the caller passed a mode we forward it, and when it did not we forward whatever the
//! register held, which the real `open` ignores because it reads the mode only with `O_CREAT` or
//! `O_TMPFILE` in the flags, exactly when the caller had to pass one. The register `%al` a
//! variadic call sets is not an argument to a non-variadic callee, and glibc's variadic `open`
//! only uses it to decide whether to spill vector registers.

use crate::clock::ticks;
use crate::counters::{self, Func, IO_ON};
use crate::real::Real;
use libc::{c_char, c_int, c_uint, c_void, iovec, off_t, size_t, ssize_t};

/// Bytes a read/write-family result moved.
#[inline(always)]
fn moved(r: ssize_t) -> u64 {
    if r > 0 {
        r as u64
    } else {
        0
    }
}

#[inline(always)]
fn no_bytes(_r: c_int) -> u64 {
    0
}

/// Defines one exported wrapper. `$fallback` runs when the real function cannot be had (only
/// during a recursive lookup): the raw system call.
macro_rules! io_wrapper {
    ($(#[$doc:meta])* $name:ident, $sym:expr, $func:expr, ($($arg:ident : $ty:ty),*) -> $ret:ty,
     bytes = $bytes:expr, fallback = $fallback:expr) => {
        $(#[$doc])*
        #[no_mangle]
        pub unsafe extern "C" fn $name($($arg: $ty),*) -> $ret {
            static REAL: Real = Real::next($sym);
            let Some(p) = REAL.get() else {
                return $fallback;
            };
            // SAFETY: `p` is the address of the libc function of this name, whose C prototype
            // is the one spelled here.
            let f = unsafe { std::mem::transmute::<*mut c_void, unsafe extern "C" fn($($ty),*) -> $ret>(p) };
            let Some(slot) = counters::enter(&IO_ON, $func) else {
                // SAFETY: forwarding the caller's arguments unchanged.
                return unsafe { f($($arg),*) };
            };
            let t0 = ticks();
            // SAFETY: as above.
            let r = unsafe { f($($arg),*) };
            let t1 = ticks();
            slot.record(t1.wrapping_sub(t0), $bytes(r), 0);
            r
        }
    };
}

io_wrapper!(read, c"read", Func::Read, (fd: c_int, buf: *mut c_void, n: size_t) -> ssize_t,
    bytes = moved,
    fallback = libc::syscall(libc::SYS_read, fd, buf, n) as ssize_t);
io_wrapper!(write, c"write", Func::Write, (fd: c_int, buf: *const c_void, n: size_t) -> ssize_t,
    bytes = moved,
    fallback = libc::syscall(libc::SYS_write, fd, buf, n) as ssize_t);
io_wrapper!(pread, c"pread", Func::Pread, (fd: c_int, buf: *mut c_void, n: size_t, off: off_t) -> ssize_t,
    bytes = moved,
    fallback = libc::syscall(libc::SYS_pread64, fd, buf, n, off) as ssize_t);
io_wrapper!(pread64, c"pread64", Func::Pread, (fd: c_int, buf: *mut c_void, n: size_t, off: i64) -> ssize_t,
    bytes = moved,
    fallback = libc::syscall(libc::SYS_pread64, fd, buf, n, off) as ssize_t);
io_wrapper!(pwrite, c"pwrite", Func::Pwrite, (fd: c_int, buf: *const c_void, n: size_t, off: off_t) -> ssize_t,
    bytes = moved,
    fallback = libc::syscall(libc::SYS_pwrite64, fd, buf, n, off) as ssize_t);
io_wrapper!(pwrite64, c"pwrite64", Func::Pwrite, (fd: c_int, buf: *const c_void, n: size_t, off: i64) -> ssize_t,
    bytes = moved,
    fallback = libc::syscall(libc::SYS_pwrite64, fd, buf, n, off) as ssize_t);
io_wrapper!(readv, c"readv", Func::Readv, (fd: c_int, iov: *const iovec, cnt: c_int) -> ssize_t,
    bytes = moved,
    fallback = libc::syscall(libc::SYS_readv, fd, iov, cnt) as ssize_t);
io_wrapper!(writev, c"writev", Func::Writev, (fd: c_int, iov: *const iovec, cnt: c_int) -> ssize_t,
    bytes = moved,
    fallback = libc::syscall(libc::SYS_writev, fd, iov, cnt) as ssize_t);
io_wrapper!(
    /// `open(path, flags, ...)`; see the module's note on the mode.
    open, c"open", Func::Open, (path: *const c_char, flags: c_int, mode: c_uint) -> c_int,
    bytes = no_bytes,
    fallback = libc::syscall(libc::SYS_openat, libc::AT_FDCWD, path, flags, mode) as c_int);
io_wrapper!(open64, c"open64", Func::Open, (path: *const c_char, flags: c_int, mode: c_uint) -> c_int,
    bytes = no_bytes,
    fallback = libc::syscall(libc::SYS_openat, libc::AT_FDCWD, path, flags | libc::O_LARGEFILE, mode) as c_int);
io_wrapper!(openat, c"openat", Func::Openat, (dirfd: c_int, path: *const c_char, flags: c_int, mode: c_uint) -> c_int,
    bytes = no_bytes,
    fallback = libc::syscall(libc::SYS_openat, dirfd, path, flags, mode) as c_int);
io_wrapper!(openat64, c"openat64", Func::Openat, (dirfd: c_int, path: *const c_char, flags: c_int, mode: c_uint) -> c_int,
    bytes = no_bytes,
    fallback = libc::syscall(libc::SYS_openat, dirfd, path, flags | libc::O_LARGEFILE, mode) as c_int);
io_wrapper!(close, c"close", Func::Close, (fd: c_int) -> c_int,
    bytes = no_bytes,
    fallback = libc::syscall(libc::SYS_close, fd) as c_int);
io_wrapper!(fsync, c"fsync", Func::Fsync, (fd: c_int) -> c_int,
    bytes = no_bytes,
    fallback = libc::syscall(libc::SYS_fsync, fd) as c_int);
io_wrapper!(fdatasync, c"fdatasync", Func::Fdatasync, (fd: c_int) -> c_int,
    bytes = no_bytes,
    fallback = libc::syscall(libc::SYS_fdatasync, fd) as c_int);
io_wrapper!(
    /// What `read` becomes under `_FORTIFY_SOURCE` when the buffer's size is known.
    __read_chk, c"__read_chk", Func::Read, (fd: c_int, buf: *mut c_void, n: size_t, buflen: size_t) -> ssize_t,
    bytes = moved,
    fallback = libc::syscall(libc::SYS_read, fd, buf, n.min(buflen)) as ssize_t);
io_wrapper!(__pread_chk, c"__pread_chk", Func::Pread, (fd: c_int, buf: *mut c_void, n: size_t, off: off_t, buflen: size_t) -> ssize_t,
    bytes = moved,
    fallback = libc::syscall(libc::SYS_pread64, fd, buf, n.min(buflen), off) as ssize_t);
io_wrapper!(__pread64_chk, c"__pread64_chk", Func::Pread, (fd: c_int, buf: *mut c_void, n: size_t, off: i64, buflen: size_t) -> ssize_t,
    bytes = moved,
    fallback = libc::syscall(libc::SYS_pread64, fd, buf, n.min(buflen), off) as ssize_t);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::counters::totals;
    use std::sync::atomic::Ordering;

    /// The test binary itself defines these wrappers (it links the rlib), so the standard
    /// library's own `write` and `read` go through them: what a preloaded program sees.
    #[test]
    fn a_file_written_and_read_back_is_counted_with_its_bytes() {
        IO_ON.store(true, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("banyan-io-test-{}", std::process::id()));
        let before = totals();
        std::fs::write(&path, vec![7u8; 12_345]).unwrap();
        let back = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let after = totals();
        assert_eq!(back.len(), 12_345);
        let w = Func::Write as usize;
        let r = Func::Read as usize;
        assert!(after.sent[w] - before.sent[w] >= 12_345);
        assert!(after.sent[r] - before.sent[r] >= 12_345);
        assert!(after.calls[Func::Open as usize] - before.calls[Func::Open as usize] >= 2);
        assert!(after.calls[Func::Close as usize] - before.calls[Func::Close as usize] >= 2);
    }
}
