//! Builds the telemetry document (`gpupool_api::telemetry::TelemetryReport`) from the engine's
//! state: NVML's last reading, the caching allocator, the ledger, and every model's counters,
//! latency window and calibrated profile.

use crate::state::{ModelEntry, Shared};
use gpupool_api::telemetry::{
    AllocatorTelemetry, ModelState, ModelTelemetry, TelemetryReport, TELEMETRY_KIND,
};
use gpupool_api::{Precision, API_VERSION};
use std::sync::atomic::Ordering;

fn saturating_u32(n: impl TryInto<u32>) -> u32 {
    n.try_into().unwrap_or(u32::MAX)
}

/// Whether a model counts as ready: calibrated and serving (loaded; unloaded to make room, to be
/// loaded again on demand; or being loaded again now: its requests wait in the queue meanwhile).
pub(crate) fn model_is_ready(shared: &Shared, entry: &ModelEntry) -> bool {
    !shared.is_shutting_down()
        && entry.serving.load(Ordering::SeqCst)
        && matches!(
            entry.state().0,
            ModelState::Ready | ModelState::Unloaded | ModelState::Loading
        )
}

/// Whether the engine is ready (the pod's readiness): start-up finished and at least one model
/// ready. A model that failed (a missing or corrupt file) is not ready on its own, with its
/// reason in telemetry, and does not take the other models out of the Service with it: every
/// replica has the same files, so an all-or-nothing readiness would stop the whole pool.
pub(crate) fn engine_is_ready(shared: &Shared) -> bool {
    shared.startup_done.load(Ordering::SeqCst)
        && shared.models.iter().any(|m| model_is_ready(shared, m))
}

fn model_telemetry(shared: &Shared, entry: &ModelEntry) -> ModelTelemetry {
    let ready = model_is_ready(shared, entry);
    let settings = entry.settings.read().clone();
    let (state, reason, profile, weights_bytes, chosen) = {
        let rt = entry.runtime.lock();
        let weights = rt
            .loaded
            .as_ref()
            .map(|r| r.model.weights_bytes)
            .or_else(|| rt.weights.values().copied().max())
            .unwrap_or(0);
        (
            rt.state,
            rt.reason.clone(),
            rt.profile.clone(),
            weights,
            rt.chosen,
        )
    };
    let precision = match settings.precision {
        Precision::Auto => chosen.unwrap_or(Precision::Auto),
        p => p,
    };
    let (p50, p99, rate) = entry.stats.window_summary();
    let s = &entry.stats;
    ModelTelemetry {
        name: entry.name.clone(),
        state,
        ready,
        reason,
        precision,
        batch_cap: saturating_u32(entry.batch_cap()),
        slots: saturating_u32(settings.slots),
        weights_bytes,
        queue_depth: saturating_u32(entry.queue.depth()),
        in_flight: saturating_u32(s.in_flight.load(Ordering::Relaxed)),
        images_total: s.images_total.load(Ordering::Relaxed),
        batches_total: s.batches_total.load(Ordering::Relaxed),
        rejected_total: s.rejected_total.load(Ordering::Relaxed),
        oom_events_total: s.oom_events_total.load(Ordering::Relaxed),
        failed_total: s.failed_total.load(Ordering::Relaxed),
        latency_p50_ms: p50,
        latency_p99_ms: p99,
        images_per_second: rate,
        profile,
    }
}

/// The whole report.
pub(crate) fn report(shared: &Shared) -> TelemetryReport {
    let stats = shared.device.allocator_stats().unwrap_or_default();
    TelemetryReport {
        api_version: API_VERSION.to_owned(),
        kind: TELEMETRY_KIND.to_owned(),
        config_generation: shared.config.read().generation,
        ready: engine_is_ready(shared),
        circuit_open: shared.circuit.is_open(),
        device: shared.circuit.last_reading(),
        allocator: AllocatorTelemetry {
            allocated_bytes: stats.allocated,
            reserved_bytes: stats.reserved,
            peak_reserved_bytes: shared.peak_reserved(),
            budget_bytes: shared.ledger.budget(),
            admitted_bytes: shared.ledger.used(),
        },
        models: shared
            .models
            .iter()
            .map(|m| model_telemetry(shared, m))
            .collect(),
    }
}
