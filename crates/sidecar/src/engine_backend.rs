//! The [`Backend`] the sidecar runs in production: the executor's [`Engine`].

use crate::backend::{
    ApplyError, Backend, BackendError, Inference, ModelInfo, RawImage, Segmentation,
};
use crate::imaging::InputGeometry;
use crate::settings::{DeviceChoice, Settings};
use futures::future::BoxFuture;
use gpupool_api::sidecar::SidecarConfig;
use gpupool_api::telemetry::{ModelState, TelemetryReport};
use gpupool_executor::{
    CalibrationOptions, ComputeDevice, Engine, EngineError, EngineOptions, InferError,
};

/// The executor behind the HTTP layer.
#[derive(Clone)]
pub struct EngineBackend {
    engine: Engine,
}

impl EngineBackend {
    /// Starts the engine for `config` on the device the settings name. Model loading and
    /// calibration continue in the background; readiness reports when they are done.
    pub fn start(config: SidecarConfig, settings: &Settings) -> Result<Self, EngineError> {
        let options = EngineOptions {
            device: match settings.device {
                DeviceChoice::Auto => gpupool_executor::DeviceChoice::Auto,
                DeviceChoice::Cuda => gpupool_executor::DeviceChoice::Cuda(0),
                DeviceChoice::Cpu => gpupool_executor::DeviceChoice::Cpu,
            },
            calibration: CalibrationOptions {
                warmup: 1,
                iterations: settings.calibration_iters.max(1),
            },
            cpu_threads: settings.torch_cpu_threads.map(|n| n as usize),
            ..EngineOptions::default()
        };
        Ok(Self {
            engine: Engine::start(config, options)?,
        })
    }

    /// The device the models run on.
    pub fn device(&self) -> ComputeDevice {
        self.engine.device()
    }

    /// Drains queued and running work and stops the engine's threads.
    pub async fn shutdown(&self) {
        self.engine.shutdown().await;
    }
}

fn backend_error(e: InferError) -> BackendError {
    match e {
        InferError::UnknownModel(m) => BackendError::UnknownModel(m),
        InferError::InvalidInput {
            model,
            expected,
            got,
        } => BackendError::BadInput {
            model,
            expected,
            got,
        },
        e @ InferError::InvalidRequest { .. } => BackendError::BadRequest(e.to_string()),
        InferError::QueueFull { model, .. } => BackendError::QueueFull(model),
        InferError::CircuitOpen { retry_after, .. } => BackendError::CircuitOpen { retry_after },
        InferError::ModelNotReady { model, reason } => {
            BackendError::ModelNotReady { model, reason }
        }
        InferError::Inference { model, message } => {
            BackendError::Inference(format!("{model}: {message}"))
        }
        InferError::ShuttingDown => BackendError::ShuttingDown,
    }
}

impl Backend for EngineBackend {
    fn models(&self) -> Vec<ModelInfo> {
        let config = self.engine.config();
        let telemetry = self.engine.telemetry();
        config
            .models
            .iter()
            .filter_map(|m| {
                let mean = [
                    m.input.mean[0] as f32,
                    m.input.mean[1] as f32,
                    m.input.mean[2] as f32,
                ];
                let std = [
                    m.input.std[0] as f32,
                    m.input.std[1] as f32,
                    m.input.std[2] as f32,
                ];
                // The config was validated at start-up, so geometry errors cannot happen here.
                let geometry = InputGeometry::new(m.input.width, m.input.height, mean, std).ok()?;
                let live = telemetry.models.iter().find(|t| t.name == m.name);
                Some(ModelInfo {
                    name: m.name.clone(),
                    geometry,
                    precision: live.map_or(m.precision, |t| t.precision),
                    format: m.source.format,
                    max_batch: live.map_or(m.max_batch, |t| t.batch_cap),
                    state: live.map_or(ModelState::Loading, |t| t.state),
                    ready: live.is_some_and(|t| t.ready),
                    reason: live.and_then(|t| t.reason.clone()),
                })
            })
            .collect()
    }

    fn infer(
        &self,
        model: &str,
        input: Vec<f32>,
    ) -> BoxFuture<'static, Result<Inference, BackendError>> {
        let engine = self.engine.clone();
        let model = model.to_string();
        Box::pin(async move {
            let out = engine
                .infer_detailed(&model, input)
                .await
                .map_err(backend_error)?;
            Ok(Inference {
                logits: out.logits,
                batch_size: out.batch_size,
            })
        })
    }

    fn segment(
        &self,
        model: &str,
        image: RawImage,
        threshold: f32,
    ) -> BoxFuture<'static, Result<Segmentation, BackendError>> {
        let engine = self.engine.clone();
        let model = model.to_string();
        Box::pin(async move {
            engine
                .segment(&model, image, threshold)
                .await
                .map_err(backend_error)
        })
    }

    fn ready(&self) -> bool {
        self.engine.ready()
    }

    fn gpu_enabled(&self) -> bool {
        self.engine.device().is_cuda()
    }

    fn telemetry(&self) -> TelemetryReport {
        self.engine.telemetry()
    }

    fn apply(&self, config: &SidecarConfig) -> Result<(), ApplyError> {
        self.engine.apply(config.clone()).map_err(|e| match e {
            EngineError::RestartRequired { what, .. } => ApplyError::NeedsRestart(what),
            other => ApplyError::Invalid(other.to_string()),
        })
    }

    fn drain(&self) -> BoxFuture<'static, ()> {
        let engine = self.engine.clone();
        Box::pin(async move { engine.shutdown().await })
    }
}
