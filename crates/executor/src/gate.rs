//! The process-wide limit on batches running at once (`SidecarConfig::streams`): a counting gate
//! whose limit changes live. Each model's slots pass it before running a batch, so the sum of all
//! models' slots may exceed the streams the GPU is meant to juggle.

use parking_lot::{Condvar, Mutex};

#[derive(Debug)]
struct Counts {
    running: usize,
    limit: usize,
}

/// Counting gate with a live limit.
#[derive(Debug)]
pub(crate) struct Gate {
    counts: Mutex<Counts>,
    cv: Condvar,
}

/// One passage through the gate, returned on drop.
#[derive(Debug)]
pub(crate) struct Pass<'a> {
    gate: &'a Gate,
}

impl Gate {
    pub fn new(limit: usize) -> Self {
        Self {
            counts: Mutex::new(Counts {
                running: 0,
                limit: limit.max(1),
            }),
            cv: Condvar::new(),
        }
    }

    /// Waits until fewer than `limit` passes are out, then takes one.
    pub fn enter(&self) -> Pass<'_> {
        let mut c = self.counts.lock();
        while c.running >= c.limit {
            self.cv.wait(&mut c);
        }
        c.running += 1;
        Pass { gate: self }
    }

    /// Changes the limit; passes already out stay valid.
    pub fn set_limit(&self, limit: usize) {
        self.counts.lock().limit = limit.max(1);
        self.cv.notify_all();
    }
}

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        let mut c = self.gate.counts.lock();
        c.running = c.running.saturating_sub(1);
        drop(c);
        self.gate.cv.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn never_more_than_limit_inside() {
        let gate = Arc::new(Gate::new(2));
        let inside = Arc::new(AtomicUsize::new(0));
        let max_seen = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..6)
            .map(|_| {
                let (g, i, m) = (
                    Arc::clone(&gate),
                    Arc::clone(&inside),
                    Arc::clone(&max_seen),
                );
                std::thread::spawn(move || {
                    for _ in 0..20 {
                        let _p = g.enter();
                        let now = i.fetch_add(1, Ordering::SeqCst) + 1;
                        m.fetch_max(now, Ordering::SeqCst);
                        std::thread::yield_now();
                        i.fetch_sub(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(max_seen.load(Ordering::SeqCst) <= 2);
    }
}
