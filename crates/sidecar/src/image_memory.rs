//! A process-wide budget of host memory for the images between upload and answer.
//!
//! The door admits `--max-in-flight` requests and a batch request keeps up to eight images in
//! flight, each allowed up to `--max-pixels`: without a bound on the images themselves, a burst
//! of large microscope frames could need tens of GiB of host memory and get the container
//! OOM-killed, losing every request in it. Each image reserves what it will need (its file, its
//! decoded pixels, the upload copies and the post-processing buffers, estimated from the file
//! header before anything is allocated) for its whole way through the pipeline; when the budget
//! is spent, the next image waits for memory instead of being refused. Waiters are served in
//! arrival order, so a large image is not starved by a stream of small ones. One image that could
//! never fit is refused with 413 at once.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Reservations are made in units of this many bytes (the semaphore counts `u32` units at a
/// time, so bytes would cap one image at 4 GiB).
const UNIT_BYTES: u64 = 1024;

/// Why an image cannot be admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("this image needs about {needed_bytes} bytes of host memory to decode and post-process, more than this server's image memory of {capacity_bytes} bytes; send it smaller")]
pub struct ImageMemoryError {
    /// What the image would hold at its peak.
    pub needed_bytes: u64,
    /// The whole budget (`--max-image-memory-bytes`).
    pub capacity_bytes: u64,
}

/// The budget, shared by every request of the process.
#[derive(Debug, Clone)]
pub struct ImageMemory {
    units: Arc<Semaphore>,
    capacity_units: u64,
    reserved_bytes: Gauge<u64, AtomicU64>,
    waits: Counter,
}

/// Memory held for one image; released when dropped.
#[derive(Debug)]
pub struct ImageMemoryPermit {
    _units: OwnedSemaphorePermit,
    bytes: u64,
    reserved_bytes: Gauge<u64, AtomicU64>,
}

impl Drop for ImageMemoryPermit {
    fn drop(&mut self) {
        self.reserved_bytes.dec_by(self.bytes);
    }
}

impl ImageMemory {
    /// A budget of `capacity_bytes` (rounded down to whole KiB, at least one).
    pub fn new(capacity_bytes: u64) -> Self {
        let capacity_units = (capacity_bytes / UNIT_BYTES).clamp(1, Semaphore::MAX_PERMITS as u64);
        Self {
            units: Arc::new(Semaphore::new(
                usize::try_from(capacity_units).unwrap_or(Semaphore::MAX_PERMITS),
            )),
            capacity_units,
            reserved_bytes: Gauge::default(),
            waits: Counter::default(),
        }
    }

    /// The whole budget, bytes.
    pub fn capacity_bytes(&self) -> u64 {
        self.capacity_units * UNIT_BYTES
    }

    /// Bytes held by images now.
    pub fn reserved_bytes(&self) -> u64 {
        self.reserved_bytes.get()
    }

    /// Images that had to wait for memory since start-up.
    pub fn waits(&self) -> u64 {
        self.waits.get()
    }

    /// Holds `bytes` for one image, waiting (in arrival order) while the budget is spent; an
    /// image larger than the whole budget is refused at once.
    pub async fn reserve(&self, bytes: u64) -> Result<ImageMemoryPermit, ImageMemoryError> {
        let units = bytes.div_ceil(UNIT_BYTES).max(1);
        let too_large = ImageMemoryError {
            needed_bytes: bytes,
            capacity_bytes: self.capacity_bytes(),
        };
        if units > self.capacity_units {
            return Err(too_large);
        }
        // units ≤ capacity_units ≤ MAX_PERMITS, and a single acquisition counts in u32.
        let units = u32::try_from(units).map_err(|_| too_large)?;
        let permit = match Arc::clone(&self.units).try_acquire_many_owned(units) {
            Ok(permit) => permit,
            Err(_) => {
                self.waits.inc();
                Arc::clone(&self.units)
                    .acquire_many_owned(units)
                    .await
                    // The semaphore is never closed.
                    .map_err(|_| too_large)?
            }
        };
        self.reserved_bytes.inc_by(bytes);
        Ok(ImageMemoryPermit {
            _units: permit,
            bytes,
            reserved_bytes: self.reserved_bytes.clone(),
        })
    }

    /// Declares the budget's gauges and counter in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        let capacity = Gauge::<u64, AtomicU64>::default();
        capacity.set(self.capacity_bytes());
        registry.register(
            "gpupool_sidecar_image_memory_capacity_bytes",
            "Host memory images in flight may hold (--max-image-memory-bytes)",
            capacity,
        );
        registry.register(
            "gpupool_sidecar_image_memory_reserved_bytes",
            "Host memory held by images between upload and answer",
            self.reserved_bytes.clone(),
        );
        registry.register(
            "gpupool_sidecar_image_memory_waits",
            "Images that waited for host memory before decoding",
            self.waits.clone(),
        );
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn an_image_larger_than_the_budget_is_refused_at_once() {
        let memory = ImageMemory::new(10 * UNIT_BYTES);
        let err = memory.reserve(10 * UNIT_BYTES + 1).await.unwrap_err();
        assert_eq!(
            err,
            ImageMemoryError {
                needed_bytes: 10 * UNIT_BYTES + 1,
                capacity_bytes: 10 * UNIT_BYTES
            }
        );
        assert_eq!((memory.reserved_bytes(), memory.waits()), (0, 0));
    }

    #[tokio::test]
    async fn a_reservation_waits_until_enough_is_released_and_counts_the_wait() {
        let memory = ImageMemory::new(10 * UNIT_BYTES);
        let first = memory.reserve(6 * UNIT_BYTES).await.unwrap();
        assert_eq!(memory.reserved_bytes(), 6 * UNIT_BYTES);
        let second = {
            let memory = memory.clone();
            tokio::spawn(async move { memory.reserve(5 * UNIT_BYTES).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!second.is_finished(), "4 KiB free cannot hold 5 KiB");
        assert_eq!(memory.waits(), 1);
        drop(first);
        let second = tokio::time::timeout(Duration::from_secs(5), second)
            .await
            .expect("the release wakes the waiter")
            .unwrap()
            .unwrap();
        assert_eq!(memory.reserved_bytes(), 5 * UNIT_BYTES);
        drop(second);
        assert_eq!(memory.reserved_bytes(), 0);
    }

    #[tokio::test]
    async fn a_small_image_does_not_pass_a_large_one_waiting_before_it() {
        let memory = ImageMemory::new(10 * UNIT_BYTES);
        let first_half = memory.reserve(5 * UNIT_BYTES).await.unwrap();
        let second_half = memory.reserve(5 * UNIT_BYTES).await.unwrap();
        let reserve = |bytes: u64| {
            let memory = memory.clone();
            tokio::spawn(async move { memory.reserve(bytes).await })
        };
        let large = reserve(8 * UNIT_BYTES);
        tokio::time::sleep(Duration::from_millis(20)).await;
        let small = reserve(UNIT_BYTES);
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(first_half);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !small.is_finished(),
            "5 KiB came free, but the 8 KiB image waiting first gets them"
        );
        drop(second_half);
        let wait = Duration::from_secs(5);
        let large = tokio::time::timeout(wait, large).await.unwrap().unwrap();
        let small = tokio::time::timeout(wait, small).await.unwrap().unwrap();
        assert!(large.is_ok() && small.is_ok());
        assert_eq!(memory.waits(), 2);
    }

    #[test]
    fn the_budget_is_whole_units_and_never_zero() {
        assert_eq!(ImageMemory::new(0).capacity_bytes(), UNIT_BYTES);
        assert_eq!(
            ImageMemory::new(3 * UNIT_BYTES + 5).capacity_bytes(),
            3 * UNIT_BYTES
        );
    }
}
