//! The one lock policy of this crate: a poisoned `std::sync::Mutex` is recovered, not skipped.
//!
//! Every section guarded by these mutexes is a short, synchronous update of a map, a queue or a
//! flag that leaves its data consistent at each step (no section holds two of them half-done), so
//! a panic on another thread while it held the guard cannot leave a half-written state behind. The
//! earlier policy (`if let Ok(..)`) silently skipped the update instead, which lost state for good
//! (an epoch of 0, a key change never recorded, a held message never released). Recovering the
//! guard with [`std::sync::PoisonError::into_inner`] keeps the peer working as specified.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `m`, recovering the guard if a panicking holder poisoned it (see the module doc).
pub(crate) fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_lock_is_recovered_with_its_data() {
        let m = std::sync::Arc::new(Mutex::new(vec![1]));
        let m2 = std::sync::Arc::clone(&m);
        let _ = std::thread::spawn(move || {
            let mut g = m2.lock().unwrap();
            g.push(2);
            panic!("poison it");
        })
        .join();
        assert!(m.is_poisoned());
        lock(&m).push(3);
        assert_eq!(*lock(&m), [1, 2, 3]);
    }
}
