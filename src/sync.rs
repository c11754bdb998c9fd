//! The engine's synchronisation primitives, in one place so that `--cfg holdfast_loom` can swap them for
//! loom's model-checked versions. Everything the engine locks or loads atomically goes through here.
//!
//! The cfg is our own rather than the conventional `loom` (as crossbeam does with `crossbeam_loom`):
//! under `--cfg loom` some dependencies (boxcar) switch to loom code they cannot build outside their own
//! test suites. The catalog's append-only vector keeps real atomics in the model; it is written only
//! while a model sets up, before any thread starts.

#[cfg(not(holdfast_loom))]
pub(crate) use parking_lot::{Mutex, MutexGuard, RwLock};
#[cfg(not(holdfast_loom))]
pub(crate) use std::sync::atomic::{AtomicU64, Ordering};

#[cfg(holdfast_loom)]
pub(crate) use loom::sync::atomic::{AtomicU64, Ordering};

#[cfg(holdfast_loom)]
mod loom_locks {
    //! loom's locks return `LockResult`; these wrappers give them parking_lot's shape. Poisoning cannot
    //! happen in a model that does not panic while holding a lock.

    pub(crate) struct Mutex<T>(loom::sync::Mutex<T>);
    pub(crate) type MutexGuard<'a, T> = loom::sync::MutexGuard<'a, T>;

    impl<T> Mutex<T> {
        pub(crate) fn new(value: T) -> Self {
            Self(loom::sync::Mutex::new(value))
        }
        pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
            self.0.lock().expect("a loom model never panics while holding a lock")
        }
    }

    pub(crate) struct RwLock<T>(loom::sync::RwLock<T>);

    impl<T> RwLock<T> {
        pub(crate) fn new(value: T) -> Self {
            Self(loom::sync::RwLock::new(value))
        }
        pub(crate) fn read(&self) -> loom::sync::RwLockReadGuard<'_, T> {
            self.0.read().expect("a loom model never panics while holding a lock")
        }
        pub(crate) fn write(&self) -> loom::sync::RwLockWriteGuard<'_, T> {
            self.0.write().expect("a loom model never panics while holding a lock")
        }
    }
}
#[cfg(holdfast_loom)]
pub(crate) use loom_locks::{Mutex, MutexGuard, RwLock};
