//! [`Engine`], the executor's public face: start it from the sidecar config, send it images, read
//! its telemetry, reconfigure it live, shut it down. Cloning an engine gives another handle to the
//! same engine; dropping the last handle begins shutdown.

use crate::batcher::{Answer, Job, Output, Refused, Request};
use crate::circuit;
use crate::config::{DeviceChoice, EngineOptions, LiveSettings};
use crate::cuda::ComputeDevice;
use crate::error::{EngineError, InferError};
use crate::image::{RawImage, Segmentation};
use crate::nvml::{DeviceProbe, NvmlProbe};
use crate::precision;
use crate::state::{ModelEntry, Shared};
use crate::{startup, telemetry};
use gpupool_api::sidecar::SidecarConfig;
use gpupool_api::telemetry::{ModelState, TelemetryReport};
use gpupool_api::Precision;
use parking_lot::{Mutex, RwLock};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, oneshot, watch};

/// The answer to one image.
#[derive(Debug, Clone, PartialEq)]
pub struct Inference {
    /// H × W logits at the model's input size, row-major.
    pub logits: Vec<f32>,
    /// How many images the forward pass that produced it ran (after any out-of-memory split).
    pub batch_size: u32,
}

/// The GPU engine: models, slots, batchers, memory admission and telemetry of one process.
#[derive(Clone)]
pub struct Engine {
    shared: Arc<Shared>,
    core: Arc<Core>,
}

/// Owned by all handles together; its drop begins shutdown.
struct Core {
    shared: Arc<Shared>,
    threads_done: tokio::sync::Mutex<Option<mpsc::Receiver<()>>>,
}

impl Drop for Core {
    fn drop(&mut self) {
        begin_shutdown(&self.shared);
    }
}

fn begin_shutdown(shared: &Shared) {
    if shared.shutting_down.swap(true, Ordering::SeqCst) {
        return;
    }
    for m in &shared.models {
        m.queue.close();
    }
    shared.stop_sampler.stop();
    shared.thread_token.lock().take();
}

fn resolve_device(choice: DeviceChoice) -> Result<ComputeDevice, EngineError> {
    match choice {
        DeviceChoice::Auto => Ok(ComputeDevice::detect()),
        DeviceChoice::Cpu => Ok(ComputeDevice::Cpu),
        DeviceChoice::Cuda(i) if i < ComputeDevice::cuda_device_count() => {
            Ok(ComputeDevice::Cuda(i))
        }
        DeviceChoice::Cuda(i) => Err(EngineError::Device {
            device: format!("cuda:{i}"),
            message: format!(
                "libtorch sees {} CUDA devices",
                ComputeDevice::cuda_device_count()
            ),
        }),
    }
}

impl Engine {
    /// Starts the engine: checks the config, picks the device, caps the allocator at the memory
    /// budget, and starts calibration in the background. Returns at once; requests sent before
    /// calibration finishes wait in their model's queue. See [`Engine::started`].
    pub fn start(config: SidecarConfig, options: EngineOptions) -> Result<Self, EngineError> {
        config.validate()?;
        let device = resolve_device(options.device)?;
        if device.is_cuda() {
            crate::cuda::pin_host_buffers();
        }
        if let Some(threads) = options.cpu_threads_for(device) {
            tch::set_num_threads(i32::try_from(threads).unwrap_or(i32::MAX));
            tracing::info!(threads, "libtorch CPU threads");
        }
        if let Err(e) = crate::cuda::jit_set_profiling(options.torchscript_profiling) {
            tracing::warn!(error = %e, "could not choose the TorchScript executor");
        }
        if let Err(e) = device.set_cudnn_benchmark(options.cudnn_benchmark) {
            tracing::warn!(error = %e, "could not set cuDNN benchmark mode");
        }
        let fraction =
            device
                .cap_memory(config.memory_budget_bytes)
                .map_err(|e| EngineError::Device {
                    device: device.to_string(),
                    message: e.to_string(),
                })?;
        let probe: Option<Arc<dyn DeviceProbe>> = options.probe.clone().or_else(|| {
            let nvml = NvmlProbe::open(device.cuda_index()?)?;
            Some(Arc::new(nvml) as Arc<dyn DeviceProbe>)
        });
        tracing::info!(%device, budget = config.memory_budget_bytes, ?fraction, nvml = probe.is_some(), "starting engine");
        let queue_capacity = config.admission.max_queue_per_model as usize;
        let models = config
            .models
            .iter()
            .map(|m| Arc::new(ModelEntry::new(m, queue_capacity, options.latency_window)))
            .collect();
        let (token, threads_done) = mpsc::channel(1);
        let shared = Arc::new(Shared {
            device,
            models,
            ledger: crate::admission::Ledger::new(config.memory_budget_bytes),
            residency: Mutex::new(crate::residency::Lru::new()),
            gate: crate::gate::Gate::new(config.streams as usize),
            circuit: circuit::Circuit::new(config.admission.reject_above),
            config: RwLock::new(config),
            shutting_down: AtomicBool::new(false),
            startup_done: AtomicBool::new(false),
            started: watch::channel(false).0,
            stop_sampler: circuit::StopSignal::default(),
            thread_token: Mutex::new(Some(token)),
            peak_reserved_seen: AtomicU64::new(0),
            options,
        });
        let core = Arc::new(Core {
            shared: Arc::clone(&shared),
            threads_done: tokio::sync::Mutex::new(Some(threads_done)),
        });
        if let Some(probe) = probe {
            let device = shared.device;
            let cached_bytes = move || device.allocator_stats().map_or(0, |a| a.cached());
            shared.circuit.observe(probe.sample(), cached_bytes());
            let s = Arc::clone(&shared);
            shared.spawn("gpupool-sampler".into(), move || {
                circuit::sample_until_stopped(
                    &s.circuit,
                    &probe,
                    cached_bytes,
                    s.options.sample_interval,
                    &s.stop_sampler,
                )
            })?;
        }
        let s = Arc::clone(&shared);
        shared.spawn("gpupool-startup".into(), move || startup::run(s))?;
        Ok(Self { shared, core })
    }

    /// Runs one pre-processed image (float32 CHW, 3 × H × W at the model's input size) through
    /// `model` and returns its H × W logits. Waits in the model's queue for a batch; refused at
    /// once when the queue is full, the circuit is open, the model failed, or the engine stops.
    pub async fn infer(&self, model: &str, image: Vec<f32>) -> Result<Vec<f32>, InferError> {
        self.infer_detailed(model, image).await.map(|i| i.logits)
    }

    /// As [`Engine::infer`], also saying how large a batch the image ran in.
    pub async fn infer_detailed(
        &self,
        model: &str,
        image: Vec<f32>,
    ) -> Result<Inference, InferError> {
        let answer = self.run_job(model, Job::Logits(image)).await?;
        match answer.output {
            Output::Logits(logits) => Ok(Inference {
                logits,
                batch_size: answer.batch_size,
            }),
            Output::Probabilities(_) => Err(mismatched(model)),
        }
    }

    /// Segments a decoded image with `model`: resized and normalised for the model, run in a
    /// batch, and its foreground probabilities resized back to the image's size, all on the
    /// model's device (`crate::image` says why); [`Segmentation::mask`] thresholds them. Refused
    /// like [`Engine::infer`], and with [`InferError::InvalidRequest`] for a threshold outside
    /// 0..1.
    pub async fn segment(
        &self,
        model: &str,
        image: RawImage,
        threshold: f32,
    ) -> Result<Segmentation, InferError> {
        if !(threshold > 0.0 && threshold < 1.0) {
            return Err(InferError::InvalidRequest {
                model: model.to_owned(),
                message: format!("threshold {threshold} is not between 0 and 1"),
            });
        }
        let (width, height) = (image.width(), image.height());
        let answer = self.run_job(model, Job::Segment { image }).await?;
        match answer.output {
            Output::Probabilities(probabilities) => Ok(Segmentation {
                width,
                height,
                probabilities,
                threshold,
                batch_size: answer.batch_size,
            }),
            Output::Logits(_) => Err(mismatched(model)),
        }
    }

    async fn run_job(&self, model: &str, job: Job) -> Result<Answer, InferError> {
        let answer = self.submit(model, job)?;
        answer.await.unwrap_or(Err(InferError::ShuttingDown))
    }

    fn submit(
        &self,
        model: &str,
        job: Job,
    ) -> Result<oneshot::Receiver<Result<Answer, InferError>>, InferError> {
        let s = &self.shared;
        if s.is_shutting_down() {
            return Err(InferError::ShuttingDown);
        }
        let entry = s
            .model(model)
            .ok_or_else(|| InferError::UnknownModel(model.to_owned()))?;
        match &job {
            Job::Logits(image) if image.len() != entry.image_len() => {
                return Err(InferError::InvalidInput {
                    model: model.to_owned(),
                    expected: entry.image_len(),
                    got: image.len(),
                });
            }
            Job::Segment { image, .. } => {
                // An image whose processing can never fit the budget next to the model's weights
                // is refused now, not after waiting in the queue for memory that will not come.
                let precision = entry.target_precision();
                let scratch = entry.scratch_bytes(&job);
                let one = entry
                    .batch_costs(precision, 1, &s.options)
                    .first()
                    .copied()
                    .unwrap_or(0);
                let weights = entry.measured_weights(precision).unwrap_or(0);
                let needed = scratch.saturating_add(one).saturating_add(weights);
                if needed > s.ledger.budget() {
                    return Err(InferError::InvalidRequest {
                        model: model.to_owned(),
                        message: format!(
                            "a {}×{} image needs {} bytes of device memory to process with a batch of one next to the model's weights, more than the {} byte budget",
                            image.width(),
                            image.height(),
                            needed,
                            s.ledger.budget()
                        ),
                    });
                }
            }
            Job::Logits(_) => {}
        }
        let not_ready = |reason: Option<String>| InferError::ModelNotReady {
            model: model.to_owned(),
            reason: reason.unwrap_or_else(|| "failed".to_owned()),
        };
        if let (ModelState::Failed, reason) = entry.state() {
            return Err(not_ready(reason));
        }
        if let Err(e) = s.circuit.check(s.options.retry_after) {
            entry.stats.reject();
            return Err(e);
        }
        let (reply, answer) = oneshot::channel();
        match entry.queue.push(Request {
            job,
            reply,
            enqueued: Instant::now(),
        }) {
            Ok(()) => Ok(answer),
            Err((_, Refused::Full(depth))) => {
                entry.stats.reject();
                Err(InferError::QueueFull {
                    model: model.to_owned(),
                    depth,
                })
            }
            Err((_, Refused::Closed)) if s.is_shutting_down() => Err(InferError::ShuttingDown),
            Err((_, Refused::Closed)) => Err(not_ready(entry.state().1)),
        }
    }

    /// The telemetry document: device, allocator, ledger and per-model counters and profiles.
    pub fn telemetry(&self) -> TelemetryReport {
        telemetry::report(&self.shared)
    }

    /// Whether start-up has finished and at least one model is calibrated and serving (the
    /// readiness probe; a failed model is reported per model, see [`Engine::model_ready`]).
    pub fn ready(&self) -> bool {
        telemetry::engine_is_ready(&self.shared)
    }

    /// Whether `model` can serve requests now (unknown models are not ready).
    pub fn model_ready(&self, model: &str) -> bool {
        self.shared
            .model(model)
            .is_some_and(|m| telemetry::model_is_ready(&self.shared, m))
    }

    /// Resolves when start-up calibration has finished, whether or not every model loaded.
    pub async fn started(&self) {
        let mut rx = self.shared.started.subscribe();
        let _ = rx.wait_for(|started| *started).await;
    }

    /// The device the engine runs on.
    pub fn device(&self) -> ComputeDevice {
        self.shared.device
    }

    /// The config the engine runs now.
    pub fn config(&self) -> SidecarConfig {
        self.shared.config.read().clone()
    }

    /// Applies a new config without dropping requests: batch caps, delays, slots, precisions,
    /// residency, streams and thresholds change in place (queued and running requests complete).
    /// Refused with [`EngineError::RestartRequired`] when it changes the models, their files or
    /// input geometry, or the memory budget.
    pub fn apply(&self, next: SidecarConfig) -> Result<(), EngineError> {
        next.validate()?;
        let s = &self.shared;
        if s.is_shutting_down() {
            return Err(EngineError::ShuttingDown);
        }
        let mut current = s.config.write();
        if !current.can_apply_live(&next) {
            return Err(EngineError::RestartRequired {
                generation: next.generation,
                what: restart_fields(&current, &next),
            });
        }
        for (entry, m) in s.models.iter().zip(&next.models) {
            if m.precision != Precision::Auto {
                let facts = entry.runtime.lock().facts.clone();
                precision::mode_for(m.precision, facts.precision, m.source.format).map_err(
                    |reason| EngineError::Unsupported {
                        model: m.name.clone(),
                        reason,
                    },
                )?;
            }
        }
        s.circuit.set_threshold(next.admission.reject_above);
        s.gate.set_limit(next.streams as usize);
        for (entry, m) in s.models.iter().zip(&next.models) {
            *entry.settings.write() = LiveSettings::from_config(m);
            entry.refresh_cached_settings();
            entry
                .queue
                .set_capacity(next.admission.max_queue_per_model as usize);
            s.residency.lock().set_pinned(&entry.name, m.resident);
            if entry.serving.load(Ordering::SeqCst) {
                startup::start_slots(s, entry, None)?;
            }
            entry.queue.wake_all();
        }
        tracing::info!(
            from = current.generation,
            to = next.generation,
            "applied config live"
        );
        *current = next;
        Ok(())
    }

    /// Stops taking requests, lets every queued and running request finish, and waits for the
    /// engine's threads to exit. Requests of models that never started are answered ShuttingDown.
    pub async fn shutdown(&self) {
        begin_shutdown(&self.shared);
        let mut done = self.core.threads_done.lock().await;
        if let Some(rx) = done.as_mut() {
            while rx.recv().await.is_some() {}
        }
        *done = None;
        for m in &self.shared.models {
            for r in m.queue.take_all() {
                let _ = r.reply.send(Err(InferError::ShuttingDown));
            }
        }
    }
}

/// Names the restart-only fields that differ between two configs.
fn restart_fields(a: &SidecarConfig, b: &SidecarConfig) -> String {
    let mut what = Vec::new();
    if a.memory_budget_bytes != b.memory_budget_bytes {
        what.push("memoryBudgetBytes".to_owned());
    }
    let names = |c: &SidecarConfig| c.models.iter().map(|m| m.name.clone()).collect::<Vec<_>>();
    if names(a) != names(b) {
        what.push("the set or order of models".to_owned());
    } else {
        for (x, y) in a.models.iter().zip(&b.models) {
            if x.source != y.source {
                what.push(format!("models[{}].source", x.name));
            }
            if x.input != y.input {
                what.push(format!("models[{}].input", x.name));
            }
        }
    }
    what.join(", ")
}

/// A slot answered a job with the other kind of output: a bug, reported rather than panicking.
fn mismatched(model: &str) -> InferError {
    InferError::Inference {
        model: model.to_owned(),
        message: "internal error: the answer does not match the request".to_owned(),
    }
}
