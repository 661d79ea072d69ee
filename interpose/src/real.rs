//! The real functions behind the wrappers, looked up once with `dlsym` and cached.
//!
//! POSIX functions are looked up with `RTLD_NEXT` only: `RTLD_DEFAULT` would find this library's
//! own wrapper first. `PMPI_*` names are never defined here, so they are looked up with
//! `RTLD_NEXT` and then `RTLD_DEFAULT` (an MPI loaded later with `RTLD_GLOBAL`). A lookup that
//! recurses (glibc's `dlsym` may allocate; an allocator that logs would call `write`) is refused
//! and the wrapper falls back to the raw system call.

use crate::counters;
use std::ffi::{c_void, CStr};
use std::sync::atomic::{AtomicPtr, Ordering};

pub struct Real {
    ptr: AtomicPtr<c_void>,
    name: &'static CStr,
    /// Also search the global scope (`RTLD_DEFAULT`) when `RTLD_NEXT` finds nothing.
    global_too: bool,
}

impl Real {
    /// A libc function wrapped by this library.
    pub const fn next(name: &'static CStr) -> Real {
        Real {
            ptr: AtomicPtr::new(std::ptr::null_mut()),
            name,
            global_too: false,
        }
    }

    /// A function this library does not define (`PMPI_*`, MPI's symbols).
    pub const fn anywhere(name: &'static CStr) -> Real {
        Real {
            ptr: AtomicPtr::new(std::ptr::null_mut()),
            name,
            global_too: true,
        }
    }

    /// The function's address, or `None` when it does not exist in this process (or a lookup
    /// is already under way on this thread).
    #[inline(always)]
    pub fn get(&self) -> Option<*mut c_void> {
        let p = self.ptr.load(Ordering::Relaxed);
        if !p.is_null() {
            return Some(p);
        }
        self.resolve()
    }

    #[cold]
    #[inline(never)]
    fn resolve(&self) -> Option<*mut c_void> {
        if !counters::begin_resolving() {
            return None;
        }
        let p = counters::quietly(|| {
            // SAFETY: dlsym with a valid NUL-terminated name and a pseudo-handle.
            let mut p = unsafe { libc::dlsym(libc::RTLD_NEXT, self.name.as_ptr()) };
            if p.is_null() && self.global_too {
                // SAFETY: as above.
                p = unsafe { libc::dlsym(libc::RTLD_DEFAULT, self.name.as_ptr()) };
            }
            p
        });
        counters::end_resolving();
        if p.is_null() {
            return None;
        }
        // Racing resolvers store the same address.
        self.ptr.store(p, Ordering::Relaxed);
        Some(p)
    }
}

/// Looks up a data or function symbol in the global scope (`ompi_mpi_comm_world`, ...).
pub fn global_symbol(name: &CStr) -> Option<*mut c_void> {
    let p = counters::quietly(|| {
        // SAFETY: dlsym with a valid NUL-terminated name and a pseudo-handle.
        unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) }
    });
    (!p.is_null()).then_some(p)
}
