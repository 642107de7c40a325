//! The memory ledger: every byte the engine lets the GPU use (loaded weights, a running batch's
//! measured peak) is reserved here first, and a reservation that would cross the budget is refused.
//! Check-and-add happens under one lock, so the budget is never crossed by construction; what
//! cannot be admitted waits for a release (or is admitted as a smaller batch).

use parking_lot::{Condvar, Mutex};
use std::sync::Arc;
use std::time::Duration;

/// Bytes reserved against a fixed budget.
#[derive(Debug)]
pub(crate) struct Ledger {
    budget: u64,
    used: Mutex<u64>,
    released: Condvar,
}

/// Whether `bytes` more fit when `used` of `budget` are reserved.
pub(crate) fn fits(used: u64, budget: u64, bytes: u64) -> bool {
    used.checked_add(bytes).is_some_and(|total| total <= budget)
}

/// The largest n in 1..=max_n whose cost fits in `free` bytes (0 if not even one does). `cost`
/// must be non-decreasing in n, as a batch's peak memory is.
pub(crate) fn largest_fitting(max_n: usize, free: u64, cost: impl Fn(usize) -> u64) -> usize {
    let (mut lo, mut hi) = (0usize, max_n);
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if cost(mid) <= free {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    lo
}

impl Ledger {
    /// A ledger with nothing reserved.
    pub fn new(budget: u64) -> Arc<Self> {
        Arc::new(Self {
            budget,
            used: Mutex::new(0),
            released: Condvar::new(),
        })
    }

    /// The budget in bytes.
    pub fn budget(&self) -> u64 {
        self.budget
    }

    /// Bytes reserved now.
    pub fn used(&self) -> u64 {
        *self.used.lock()
    }

    /// Reserves `bytes` if they fit.
    pub fn try_reserve(self: &Arc<Self>, bytes: u64) -> Option<Reservation> {
        let mut used = self.used.lock();
        if !fits(*used, self.budget, bytes) {
            return None;
        }
        *used += bytes;
        Some(Reservation {
            ledger: Arc::clone(self),
            bytes,
        })
    }

    /// Reserves the cost of the largest batch of at most `max_n` images that fits; `None` when not
    /// even one image fits.
    pub fn reserve_largest(
        self: &Arc<Self>,
        max_n: usize,
        cost: impl Fn(usize) -> u64,
    ) -> Option<(usize, Reservation)> {
        let mut used = self.used.lock();
        let free = self.budget.saturating_sub(*used);
        let n = largest_fitting(max_n, free, &cost);
        if n == 0 {
            return None;
        }
        let bytes = cost(n);
        *used += bytes;
        Some((
            n,
            Reservation {
                ledger: Arc::clone(self),
                bytes,
            },
        ))
    }

    /// Blocks until some reservation is released or `timeout` passes.
    pub fn wait_for_release(&self, timeout: Duration) {
        let mut used = self.used.lock();
        let _ = self.released.wait_for(&mut used, timeout);
    }

    fn release(&self, bytes: u64) {
        let mut used = self.used.lock();
        *used = used.saturating_sub(bytes);
        drop(used);
        self.released.notify_all();
    }
}

/// Bytes held in a [`Ledger`] until this is dropped.
#[derive(Debug)]
pub(crate) struct Reservation {
    ledger: Arc<Ledger>,
    bytes: u64,
}

impl Reservation {
    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Changes the reservation to `bytes`: shrinking always succeeds; growing only if it fits.
    pub fn resize(&mut self, bytes: u64) -> bool {
        if bytes <= self.bytes {
            self.ledger.release(self.bytes - bytes);
            self.bytes = bytes;
            return true;
        }
        let mut used = self.ledger.used.lock();
        let extra = bytes - self.bytes;
        if !fits(*used, self.ledger.budget, extra) {
            return false;
        }
        *used += extra;
        self.bytes = bytes;
        true
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.ledger.release(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_is_never_crossed() {
        let ledger = Ledger::new(100);
        let a = ledger.try_reserve(60);
        assert!(a.is_some());
        assert!(ledger.try_reserve(41).is_none());
        let b = ledger.try_reserve(40);
        assert!(b.is_some());
        assert_eq!(ledger.used(), 100);
        assert!(ledger.try_reserve(1).is_none());
        drop(a);
        assert_eq!(ledger.used(), 40);
        assert!(
            ledger.try_reserve(u64::MAX).is_none(),
            "overflow must not wrap"
        );
    }

    #[test]
    fn largest_fitting_batch() {
        let cost = |n: usize| 10 * n as u64;
        assert_eq!(largest_fitting(8, 100, cost), 8);
        assert_eq!(largest_fitting(8, 35, cost), 3);
        assert_eq!(largest_fitting(8, 9, cost), 0);
        assert_eq!(largest_fitting(0, 1000, cost), 0);
        // Every answer is the true maximum.
        for free in 0..200 {
            let n = largest_fitting(16, free, cost);
            assert!(n == 0 || cost(n) <= free);
            assert!(n == 16 || cost(n + 1) > free);
        }
    }

    #[test]
    fn reserve_largest_splits_a_batch_that_does_not_fit() {
        let ledger = Ledger::new(100);
        let _weights = ledger.try_reserve(50);
        let (n, r) = ledger.reserve_largest(8, |n| 20 * n as u64).unwrap();
        assert_eq!((n, r.bytes()), (2, 40));
        assert!(ledger.reserve_largest(8, |n| 20 * n as u64).is_none());
        drop(r);
        assert_eq!(ledger.used(), 50);
    }

    #[test]
    fn resize_grows_only_within_budget() {
        let ledger = Ledger::new(100);
        let mut r = ledger.try_reserve(30).unwrap();
        let _other = ledger.try_reserve(50).unwrap();
        assert!(!r.resize(60));
        assert!(r.resize(50));
        assert_eq!(ledger.used(), 100);
        assert!(r.resize(10));
        assert_eq!(ledger.used(), 60);
    }

    #[test]
    fn waiters_wake_on_release() {
        let ledger = Ledger::new(10);
        let r = ledger.try_reserve(10).unwrap();
        let l2 = Arc::clone(&ledger);
        let waiter = std::thread::spawn(move || {
            let start = std::time::Instant::now();
            while l2.try_reserve(5).is_none() {
                l2.wait_for_release(Duration::from_secs(5));
            }
            start.elapsed()
        });
        std::thread::sleep(Duration::from_millis(50));
        drop(r);
        assert!(waiter.join().unwrap() < Duration::from_secs(5));
    }
}
