//! One way to take a lock: spotoken's mutexes guard caches and counters
//! whose every update is a single assignment or insertion, so a thread that
//! panicked while holding one left nothing half-written; the next holder
//! takes the data as it is instead of propagating the panic.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// [`Mutex::lock`] that takes the data over from a thread that panicked
/// while holding it (see the module's documentation for why that is safe).
pub trait LockUnpoisoned<T: ?Sized> {
    /// Locks, whether or not the mutex is poisoned.
    fn lock_unpoisoned(&self) -> MutexGuard<'_, T>;
}

impl<T: ?Sized> LockUnpoisoned<T> for Mutex<T> {
    fn lock_unpoisoned(&self) -> MutexGuard<'_, T> {
        self.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::LockUnpoisoned as _;
    use std::sync::{Arc, Mutex};

    #[test]
    fn a_lock_poisoned_by_a_panic_is_taken_with_its_data() {
        let m = Arc::new(Mutex::new(1));
        let m2 = m.clone();
        let _ = std::thread::spawn(move || {
            let _g = m2.lock_unpoisoned();
            panic!("poisons the lock");
        })
        .join();
        assert!(m.is_poisoned());
        *m.lock_unpoisoned() += 1;
        assert_eq!(*m.lock_unpoisoned(), 2);
    }
}
