//! The circuit breaker: while device memory in use (as the probe last read it, with this process's
//! allocator cache counted as free: `DeviceTelemetry::in_use_fraction`) is above the reject
//! threshold, new work is refused with [`InferError::CircuitOpen`] (503 + `Retry-After`) instead
//! of queueing behind a GPU that has no room. A background thread samples the probe; requests only
//! read an atomic.

use crate::error::InferError;
use crate::nvml::DeviceProbe;
use gpupool_api::telemetry::DeviceTelemetry;
use parking_lot::{Condvar, Mutex};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Whether a reading of `fraction` used should refuse work at `threshold` (no reading: closed).
pub(crate) fn should_open(fraction: Option<f64>, threshold: f64) -> bool {
    fraction.is_some_and(|f| f > threshold)
}

/// Breaker state shared by the sampler and the request path.
#[derive(Debug)]
pub(crate) struct Circuit {
    open: AtomicBool,
    threshold: AtomicU64,
    last: Mutex<Reading>,
}

/// The probe's last reading and the allocator cache at the time.
#[derive(Debug, Default)]
struct Reading {
    device: Option<DeviceTelemetry>,
    cached_bytes: u64,
}

impl Reading {
    fn in_use_fraction(&self) -> Option<f64> {
        self.device
            .as_ref()
            .map(|d| d.in_use_fraction(self.cached_bytes))
    }
}

impl Circuit {
    pub fn new(threshold: f64) -> Self {
        Self {
            open: AtomicBool::new(false),
            threshold: AtomicU64::new(threshold.to_bits()),
            last: Mutex::new(Reading::default()),
        }
    }

    fn threshold(&self) -> f64 {
        f64::from_bits(self.threshold.load(Ordering::Relaxed))
    }

    fn evaluate(&self, last: &Reading) {
        self.open.store(
            should_open(last.in_use_fraction(), self.threshold()),
            Ordering::Relaxed,
        );
    }

    /// Changes the reject threshold (live config) and re-evaluates the last reading.
    pub fn set_threshold(&self, threshold: f64) {
        self.threshold.store(threshold.to_bits(), Ordering::Relaxed);
        self.evaluate(&self.last.lock());
    }

    /// Takes a new reading from the probe, with the bytes the allocator held as cache then.
    pub fn observe(&self, device: Option<DeviceTelemetry>, cached_bytes: u64) {
        let mut last = self.last.lock();
        *last = Reading {
            device,
            cached_bytes,
        };
        self.evaluate(&last);
    }

    /// Whether new work is refused now.
    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Relaxed)
    }

    /// The last device reading.
    pub fn last_reading(&self) -> Option<DeviceTelemetry> {
        self.last.lock().device.clone()
    }

    /// `Ok` when closed, else the error a refused request gets.
    pub fn check(&self, retry_after: Duration) -> Result<(), InferError> {
        if !self.is_open() {
            return Ok(());
        }
        let used_fraction = self.last.lock().in_use_fraction().unwrap_or(0.0);
        Err(InferError::CircuitOpen {
            retry_after,
            used_fraction,
            threshold: self.threshold(),
        })
    }
}

/// A flag with a condvar, so a sleeping background thread stops at once when it is set.
#[derive(Debug, Default)]
pub(crate) struct StopSignal {
    stopped: Mutex<bool>,
    cv: Condvar,
}

impl StopSignal {
    pub fn stop(&self) {
        *self.stopped.lock() = true;
        self.cv.notify_all();
    }

    /// Sleeps up to `d`; true if stopped.
    pub fn sleep(&self, d: Duration) -> bool {
        let mut stopped = self.stopped.lock();
        if !*stopped {
            let _ = self.cv.wait_for(&mut stopped, d);
        }
        *stopped
    }
}

/// The sampler thread's loop: read the probe (and `cached_bytes`, the allocator's cache) every
/// `interval` until stopped.
pub(crate) fn sample_until_stopped(
    circuit: &Circuit,
    probe: &Arc<dyn DeviceProbe>,
    cached_bytes: impl Fn() -> u64,
    interval: Duration,
    stop: &StopSignal,
) {
    loop {
        circuit.observe(probe.sample(), cached_bytes());
        if stop.sleep(interval) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nvml::ManualProbe;

    #[test]
    fn opens_above_threshold_and_closes_below() {
        let c = Circuit::new(0.9);
        let p = ManualProbe::new();
        c.observe(p.sample(), 0);
        assert!(!c.is_open(), "no reading: closed");
        p.set_used_fraction(0.95, 1 << 30);
        c.observe(p.sample(), 0);
        assert!(c.is_open());
        let err = c.check(Duration::from_secs(2)).unwrap_err();
        assert_eq!(err.http_status(), 503);
        assert_eq!(err.retry_after(), Some(Duration::from_secs(2)));
        c.set_threshold(0.99);
        assert!(!c.is_open());
        p.set_used_fraction(0.5, 1 << 30);
        c.set_threshold(0.9);
        c.observe(p.sample(), 0);
        assert!(c.check(Duration::from_secs(1)).is_ok());
    }

    #[test]
    fn the_allocator_cache_does_not_hold_the_circuit_open() {
        let c = Circuit::new(0.9);
        let p = ManualProbe::new();
        p.set_used_fraction(0.95, 1000);
        c.observe(p.sample(), 100);
        assert!(
            !c.is_open(),
            "950 used, 100 of it cache this process can reuse"
        );
        c.observe(p.sample(), 10);
        assert!(c.is_open(), "940 in use is above 0.9");
        let err = c.check(Duration::from_secs(1)).unwrap_err();
        assert!(format!("{err}").contains("94"), "{err}");
    }

    #[test]
    fn stop_signal_wakes_sleepers() {
        let s = Arc::new(StopSignal::default());
        let s2 = Arc::clone(&s);
        let t = std::thread::spawn(move || s2.sleep(Duration::from_secs(30)));
        std::thread::sleep(Duration::from_millis(20));
        s.stop();
        assert!(t.join().unwrap());
    }
}
