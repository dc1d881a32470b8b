//! Memory for key material: page-aligned, locked into RAM (never swapped), excluded from core
//! dumps, and zeroized before it is freed.

use std::alloc::{self, Layout};
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Once;

use zeroize::Zeroize;

static LOCK_FAILURES: AtomicU64 = AtomicU64::new(0);
static LOCK_FAILURE_WARNING: Once = Once::new();

/// How many key pages could not be locked into memory (e.g. `RLIMIT_MEMLOCK` too low).
/// Exported as a metric: anything but 0 means keys may reach swap.
pub fn lock_failures() -> u64 {
    LOCK_FAILURES.load(Ordering::Relaxed)
}

/// A value stored on its own locked memory pages.
///
/// `T` must not own heap memory (plain arrays and cipher states such as `Aes256Gcm` are fine),
/// because only the pages of this allocation are locked and wiped.
pub struct Locked<T> {
    ptr: NonNull<T>,
    layout: Layout,
    locked: bool,
}

// SAFETY: `Locked<T>` owns its `T` exclusively, exactly like `Box<T>`, so it is Send/Sync
// whenever `T` is.
unsafe impl<T: Send> Send for Locked<T> {}
// SAFETY: as above; shared access only hands out `&T`.
unsafe impl<T: Sync> Sync for Locked<T> {}

impl<T> Locked<T> {
    /// Moves `value` onto freshly allocated locked pages.
    ///
    /// The caller's copy of `value` is moved, not wiped: build key material with
    /// [`Locked::new_with`] where possible so it never sits elsewhere.
    pub fn new(value: T) -> Self {
        Self::new_with(|| value)
    }

    /// Allocates locked pages and stores the value returned by `init` there.
    pub fn new_with(init: impl FnOnce() -> T) -> Self {
        let page = rustix::param::page_size();
        let size = std::mem::size_of::<T>().max(1).next_multiple_of(page);
        let align = std::mem::align_of::<T>().max(page);
        let layout = match Layout::from_size_align(size, align) {
            Ok(layout) => layout,
            // Only reachable for absurd T sizes; treat like allocation failure.
            Err(_) => alloc::handle_alloc_error(Layout::new::<T>()),
        };
        // SAFETY: `layout` has a non-zero size (at least one page).
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(raw) else {
            alloc::handle_alloc_error(layout)
        };
        // SAFETY: `raw` points to `size` bytes we own; mlock and madvise only change paging
        // attributes of those pages and do not touch their contents.
        let locked = unsafe { rustix::mm::mlock(raw.cast(), size) }.is_ok();
        if !locked {
            LOCK_FAILURES.fetch_add(1, Ordering::Relaxed);
            LOCK_FAILURE_WARNING.call_once(|| {
                tracing::warn!(
                    "could not lock key memory (mlock failed; raise RLIMIT_MEMLOCK or grant \
                     CAP_IPC_LOCK): keys may be written to swap"
                )
            });
        }
        // SAFETY: as above. Failure (old kernels) only means the page could appear in a core
        // dump, which `process::harden` disables anyway.
        let _ = unsafe { rustix::mm::madvise(raw.cast(), size, rustix::mm::Advice::LinuxDontDump) };
        let ptr = ptr.cast::<T>();
        // SAFETY: `ptr` is valid for writes of `T`, aligned (align >= align_of::<T>()), and
        // uninitialised, so writing without dropping is correct.
        unsafe { ptr.as_ptr().write(init()) };
        Locked {
            ptr,
            layout,
            locked,
        }
    }

    /// True if the pages are locked into RAM.
    pub fn is_locked(&self) -> bool {
        self.locked
    }
}

impl<T> Deref for Locked<T> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: `ptr` was initialised in `new_with` and stays valid until `drop`.
        unsafe { self.ptr.as_ref() }
    }
}

impl<T> DerefMut for Locked<T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`; `&mut self` guarantees exclusive access.
        unsafe { self.ptr.as_mut() }
    }
}

impl<T> Drop for Locked<T> {
    fn drop(&mut self) {
        let raw = self.ptr.as_ptr().cast::<u8>();
        // SAFETY: the value is initialised and is dropped exactly once, here. Afterwards the
        // bytes are plain memory we own, `layout.size()` long, so wiping them as `u8` is valid.
        unsafe {
            std::ptr::drop_in_place(self.ptr.as_ptr());
            std::slice::from_raw_parts_mut(raw, self.layout.size()).zeroize();
        }
        if self.locked {
            // SAFETY: same pages as were locked in `new_with`.
            let _ = unsafe { rustix::mm::munlock(raw.cast(), self.layout.size()) };
        }
        // SAFETY: allocated in `new_with` with exactly this layout.
        unsafe { alloc::dealloc(raw, self.layout) };
    }
}

impl<T> fmt::Debug for Locked<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Locked(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_value_on_page_aligned_memory() {
        let mut secret = Locked::new_with(|| [0x5au8; 32]);
        assert_eq!(*secret, [0x5a; 32]);
        secret[0] = 1;
        assert_eq!(secret[0], 1);
        let addr = (&*secret as *const [u8; 32]) as usize;
        assert_eq!(addr % rustix::param::page_size(), 0);
        assert_eq!(format!("{secret:?}"), "Locked(<redacted>)");
    }

    #[test]
    fn drops_inner_value() {
        use std::sync::atomic::AtomicUsize;
        static DROPS: AtomicUsize = AtomicUsize::new(0);
        struct Counted;
        impl Drop for Counted {
            fn drop(&mut self) {
                DROPS.fetch_add(1, Ordering::SeqCst);
            }
        }
        drop(Locked::new(Counted));
        assert_eq!(DROPS.load(Ordering::SeqCst), 1);
    }
}
