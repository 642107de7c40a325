//! The state the engine's threads share: one [`ModelEntry`] per configured model (settings, queue,
//! load state, profile, counters) and the engine-wide [`Shared`] (device, ledger, residency,
//! streams gate, circuit breaker, thread bookkeeping).
//!
//! Lock order, to keep it deadlock-free: queue → (nothing); residency → model runtime; never call
//! into the ledger (which drops or takes reservations) while holding a runtime lock.

use crate::admission::{Ledger, Reservation};
use crate::batcher::{BatchQueue, Job};
use crate::calibration;
use crate::circuit::{Circuit, StopSignal};
use crate::config::{EngineOptions, LiveSettings};
use crate::cuda::ComputeDevice;
use crate::error::EngineError;
use crate::gate::Gate;
use crate::image::Normalisation;
use crate::model::{FileFacts, LoadedModel};
use crate::residency::Lru;
use crate::stats::ModelStats;
use gpupool_api::sidecar::{SidecarConfig, SidecarModelConfig};
use gpupool_api::telemetry::{ModelState, ProfilePoint};
use gpupool_api::{ModelSource, Precision};
use parking_lot::{Mutex, RwLock};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// A model on the device together with the ledger bytes its weights hold; both go when the last
/// slot using it lets go.
pub(crate) struct Resident {
    pub model: LoadedModel,
    pub _weights: Reservation,
}

/// What is known about a model beyond its settings; guarded by one mutex.
pub(crate) struct Runtime {
    pub state: ModelState,
    pub reason: Option<String>,
    pub loaded: Option<Arc<Resident>>,
    pub facts: FileFacts,
    /// The precision `auto` resolved to at calibration.
    pub chosen: Option<Precision>,
    pub profile: Vec<ProfilePoint>,
    /// Measured weight bytes per precision.
    pub weights: BTreeMap<Precision, u64>,
    /// Batch cap lowered after out-of-memory errors.
    pub oom_cap: Option<usize>,
}

/// One configured model.
pub(crate) struct ModelEntry {
    pub name: String,
    pub source: ModelSource,
    pub height: usize,
    pub width: usize,
    /// Per-channel mean and standard deviation of the model's input.
    pub norm: Normalisation,
    pub settings: RwLock<LiveSettings>,
    pub queue: BatchQueue,
    pub runtime: Mutex<Runtime>,
    /// Serialises loading this model.
    pub load_lock: Mutex<()>,
    pub stats: ModelStats,
    /// Effective batch cap (settings, OOM cap, file limit), read by waiting slots without locks.
    batch_cap: AtomicUsize,
    delay_us: AtomicU64,
    /// Slot threads have been started (start-up calibration is done for it).
    pub serving: AtomicBool,
}

impl ModelEntry {
    pub fn new(m: &SidecarModelConfig, queue_capacity: usize, window: Duration) -> Self {
        let settings = LiveSettings::from_config(m);
        let entry = Self {
            name: m.name.clone(),
            source: m.source.clone(),
            height: m.input.height as usize,
            width: m.input.width as usize,
            // Validated at start-up to three values each.
            norm: Normalisation {
                mean: std::array::from_fn(|c| m.input.mean.get(c).copied().unwrap_or(0.0)),
                std: std::array::from_fn(|c| m.input.std.get(c).copied().unwrap_or(1.0)),
            },
            batch_cap: AtomicUsize::new(settings.max_batch),
            delay_us: AtomicU64::new(0),
            settings: RwLock::new(settings),
            queue: BatchQueue::new(queue_capacity),
            runtime: Mutex::new(Runtime {
                state: ModelState::Loading,
                reason: None,
                loaded: None,
                facts: FileFacts::default(),
                chosen: None,
                profile: Vec::new(),
                weights: BTreeMap::new(),
                oom_cap: None,
            }),
            load_lock: Mutex::new(()),
            stats: ModelStats::new(window),
            serving: AtomicBool::new(false),
        };
        entry.refresh_cached_settings();
        entry
    }

    /// Floats in one input image (3 × H × W).
    pub fn image_len(&self) -> usize {
        3 * self.height * self.width
    }

    /// Device memory a job's own pre- and post-processing needs beyond the batch's peak.
    pub fn scratch_bytes(&self, job: &Job) -> u64 {
        job.scratch_bytes(self.height * self.width)
    }

    /// Recomputes the lock-free copies of the batch cap and delay from settings and runtime.
    pub fn refresh_cached_settings(&self) {
        let s = self.settings.read().clone();
        let (oom_cap, file_cap) = {
            let rt = self.runtime.lock();
            (rt.oom_cap, rt.facts.max_batch)
        };
        let cap = [Some(s.max_batch), oom_cap, file_cap]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(1)
            .max(1);
        self.batch_cap.store(cap, Ordering::Relaxed);
        let us = u64::try_from(s.max_queue_delay.as_micros()).unwrap_or(u64::MAX);
        self.delay_us.store(us, Ordering::Relaxed);
    }

    /// Largest batch a slot may form now.
    pub fn batch_cap(&self) -> usize {
        self.batch_cap.load(Ordering::Relaxed)
    }

    /// Longest a request waits for its batch to fill.
    pub fn max_queue_delay(&self) -> Duration {
        Duration::from_micros(self.delay_us.load(Ordering::Relaxed))
    }

    /// Lowers the batch cap after a batch of `oom_at` images ran out of memory.
    pub fn lower_cap_after_oom(&self, oom_at: usize) {
        {
            let mut rt = self.runtime.lock();
            let current = rt.oom_cap.unwrap_or(self.batch_cap());
            rt.oom_cap = Some(crate::oom::lowered_cap(current, oom_at));
        }
        self.refresh_cached_settings();
    }

    /// The weights' bytes at `precision` as measured when last loaded at it, if ever.
    pub fn measured_weights(&self, precision: Precision) -> Option<u64> {
        self.runtime.lock().weights.get(&precision).copied()
    }

    /// The concrete precision the model should run at now.
    pub fn target_precision(&self) -> Precision {
        let requested = self.settings.read().precision;
        let rt = self.runtime.lock();
        match requested {
            Precision::Auto => rt.chosen.or(rt.facts.precision).unwrap_or(Precision::Fp32),
            p => p,
        }
    }

    /// Ledger bytes for batches of 1..=max_n at `precision`: measured peaks (plus headroom) where
    /// calibration has them, else the estimate.
    pub fn batch_costs(
        &self,
        precision: Precision,
        max_n: usize,
        options: &EngineOptions,
    ) -> Vec<u64> {
        let rt = self.runtime.lock();
        (1..=max_n)
            .map(|n| match calibration::peak_for(&rt.profile, precision, n) {
                Some(peak) => with_headroom(peak, options.peak_headroom),
                None => self.estimated_peak(n, options),
            })
            .collect()
    }

    /// Peak bytes assumed for a batch of `n` before anything was measured.
    pub fn estimated_peak(&self, n: usize, options: &EngineOptions) -> u64 {
        let per_image = options
            .activation_bytes_per_image
            .unwrap_or(64 * 4 * self.image_len() as u64);
        per_image.saturating_mul(n as u64)
    }

    /// Sets the state (and reason); `Failed` also stops new requests.
    pub fn set_state(&self, state: ModelState, reason: Option<String>) {
        let mut rt = self.runtime.lock();
        rt.state = state;
        rt.reason = reason;
    }

    /// Current state and reason.
    pub fn state(&self) -> (ModelState, Option<String>) {
        let rt = self.runtime.lock();
        (rt.state, rt.reason.clone())
    }
}

/// `bytes` × (1 + headroom), rounded up.
pub(crate) fn with_headroom(bytes: u64, headroom: f64) -> u64 {
    (bytes as f64 * (1.0 + headroom.max(0.0))).ceil() as u64
}

/// Engine-wide state.
pub(crate) struct Shared {
    pub device: ComputeDevice,
    pub options: EngineOptions,
    pub models: Vec<Arc<ModelEntry>>,
    pub ledger: Arc<Ledger>,
    pub residency: Mutex<Lru>,
    pub gate: Gate,
    pub circuit: Circuit,
    pub config: RwLock<SidecarConfig>,
    pub shutting_down: AtomicBool,
    pub startup_done: AtomicBool,
    pub started: watch::Sender<bool>,
    pub stop_sampler: StopSignal,
    /// Every engine thread holds a clone; shutdown drops this one and waits for the channel to close.
    pub thread_token: Mutex<Option<mpsc::Sender<()>>>,
    /// Highest allocator peak seen before calibration reset the allocator's own high-water marks.
    pub peak_reserved_seen: AtomicU64,
}

impl Shared {
    /// The model of that name.
    pub fn model(&self, name: &str) -> Option<&Arc<ModelEntry>> {
        self.models.iter().find(|m| m.name == name)
    }

    /// The allocator's peak reserved bytes since start (folding in peaks from before resets).
    pub fn peak_reserved(&self) -> u64 {
        let now = self.device.allocator_stats().map_or(0, |s| s.peak_reserved);
        self.peak_reserved_seen
            .fetch_max(now, Ordering::Relaxed)
            .max(now)
    }

    /// Whether shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// Tries `attempt` until it gives a value, waiting for ledger releases in between: the one way
    /// the engine waits for memory. `None` once shutdown begins or `deadline` passes.
    pub fn wait_for_memory<T>(
        &self,
        deadline: Instant,
        mut attempt: impl FnMut() -> Option<T>,
    ) -> Option<T> {
        loop {
            if let Some(value) = attempt() {
                return Some(value);
            }
            if self.is_shutting_down() || Instant::now() >= deadline {
                return None;
            }
            self.ledger.wait_for_release(Duration::from_millis(50));
        }
    }

    /// Starts a named engine thread that shutdown will wait for; refused once shutdown has begun.
    pub fn spawn(
        &self,
        name: String,
        body: impl FnOnce() + Send + 'static,
    ) -> Result<(), EngineError> {
        let token = self
            .thread_token
            .lock()
            .as_ref()
            .cloned()
            .ok_or(EngineError::ShuttingDown)?;
        std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                let _token = token;
                body();
            })
            .map(|_| ())
            .map_err(|source| EngineError::Thread { name, source })
    }
}
