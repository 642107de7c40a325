//! Start-up, on its own thread so the process can answer health checks meanwhile: calibrate every
//! model in turn (nothing else runs, so allocator peaks are the model's own), then start every
//! model's slot threads, wait for them to warm up, and declare the engine started. A model that
//! cannot load becomes Failed with the reason; the others go on.

use crate::buckets::{plan_route, to_time, Timing};
use crate::calibration::{self, batch_sizes, predict_next};
use crate::error::{EngineError, InferError};
use crate::loader::{self, LoadFailure};
use crate::model;
use crate::oom::ForwardFailure;
use crate::precision;
use crate::slot;
use crate::staging::Stager;
use crate::state::{with_headroom, ModelEntry, Resident, Shared};
use gpupool_api::telemetry::{ModelState, ProfilePoint};
use gpupool_api::Precision;
use parking_lot::{Condvar, Mutex};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long start-up waits for slots to warm up before declaring itself done anyway.
const WARMUP_WAIT: Duration = Duration::from_secs(300);

/// The start-up thread's body.
pub(crate) fn run(shared: Arc<Shared>) {
    let stream = shared.device.acquire_stream().unwrap_or(0);
    for entry in &shared.models {
        if shared.is_shutting_down() {
            break;
        }
        let started = Instant::now();
        match calibrate(&shared, entry, stream) {
            Ok(()) => {
                tracing::info!(model = %entry.name, precision = %entry.target_precision(), elapsed = ?started.elapsed(), "model calibrated")
            }
            Err(reason) => fail_model(entry, reason),
        }
    }
    let latch = Arc::new((Mutex::new(0usize), Condvar::new()));
    for entry in &shared.models {
        if entry.state().0 != ModelState::Failed && !shared.is_shutting_down() {
            if let Err(e) = start_slots(&shared, entry, Some(&latch)) {
                tracing::error!(model = %entry.name, error = %e, "could not start slots");
            }
        }
    }
    let (pending, cv) = &*latch;
    let deadline = Instant::now() + WARMUP_WAIT;
    let mut n = pending.lock();
    while *n > 0 && Instant::now() < deadline {
        let _ = cv.wait_for(&mut n, Duration::from_millis(100));
    }
    drop(n);
    shared.startup_done.store(true, Ordering::SeqCst);
    shared.started.send_replace(true);
    tracing::info!(device = %shared.device, "engine started");
}

fn fail_model(entry: &ModelEntry, reason: String) {
    tracing::error!(model = %entry.name, %reason, "model failed");
    entry.set_state(ModelState::Failed, Some(reason.clone()));
    entry.queue.close(); // no slot will ever serve it: refuse new requests, answer queued ones
    let error = InferError::ModelNotReady {
        model: entry.name.clone(),
        reason,
    };
    for r in entry.queue.take_all() {
        let _ = r.reply.send(Err(error.clone()));
    }
}

/// Starts slot threads up to the model's configured count (extra ones retire themselves).
pub(crate) fn start_slots(
    shared: &Arc<Shared>,
    entry: &Arc<ModelEntry>,
    latch: Option<&Arc<(Mutex<usize>, Condvar)>>,
) -> Result<(), EngineError> {
    let target = entry.settings.read().slots;
    let spawn = entry.queue.set_target_slots(target);
    entry.serving.store(true, Ordering::SeqCst);
    for i in 0..spawn {
        let warmed: Option<slot::WarmupDone> = latch.map(|l| {
            *l.0.lock() += 1;
            let l = Arc::clone(l);
            Box::new(move || {
                *l.0.lock() -= 1;
                l.1.notify_all();
            }) as slot::WarmupDone
        });
        let (s, e) = (Arc::clone(shared), Arc::clone(entry));
        let name = format!("gpupool-{}-{i}", entry.name);
        if let Err(err) = shared.spawn(name, move || slot::run(s, e, warmed)) {
            // This one and the ones after it, which will not be tried, were counted.
            entry.queue.slots_failed_to_start(spawn - i);
            if let Some(l) = latch {
                *l.0.lock() -= 1;
            }
            return Err(err);
        }
    }
    Ok(())
}

/// Loads and measures one model at each precision candidate, keeps the best loaded.
fn calibrate(shared: &Shared, entry: &ModelEntry, stream: usize) -> Result<(), String> {
    let path = crate::config::local_path(&entry.source.uri).to_owned();
    let facts = model::inspect(&path, entry.source.format)?;
    if let Some(size) = facts.size {
        if (entry.height, entry.width) != (size as usize, size as usize) {
            tracing::warn!(model = %entry.name, file_size = size, height = entry.height, width = entry.width, "file was exported for another input size");
        }
    }
    entry.runtime.lock().facts = facts.clone();
    entry.refresh_cached_settings();
    let requested = entry.settings.read().precision;
    let candidates = precision::candidates(
        requested,
        facts.precision,
        entry.source.format,
        shared.device.is_cuda(),
    );
    let mut stager = Stager::new(shared.device, stream, entry);
    let mut points: Vec<ProfilePoint> = Vec::new();
    let mut kept: Option<Arc<Resident>> = None;
    let mut errors = Vec::new();
    for p in candidates {
        drop(kept.take());
        let resident = match loader::load_resident(shared, entry, p) {
            Ok(r) => r,
            Err(LoadFailure::Permanent(reason)) | Err(LoadFailure::Transient(reason)) => {
                errors.push(format!("{p}: {reason}"));
                continue;
            }
        };
        match measure_sizes(shared, entry, &mut stager, &resident) {
            Ok(measured) => {
                points.extend(measured);
                kept = Some(resident);
            }
            Err(reason) => errors.push(format!("{p}: {reason}")),
        }
        shared.device.empty_cache();
    }
    let weights = entry.runtime.lock().weights.clone();
    let Some(best) = calibration::choose(
        &points,
        &weights,
        shared.ledger.budget(),
        shared.options.peak_headroom,
    ) else {
        return Err(if errors.is_empty() {
            "no precision fits a batch of 1 in the memory budget".to_owned()
        } else {
            errors.join("; ")
        });
    };
    for e in &errors {
        tracing::warn!(model = %entry.name, candidate = %e, "precision candidate skipped");
    }
    {
        let mut rt = entry.runtime.lock();
        rt.profile = points;
        rt.chosen = (requested == Precision::Auto).then_some(best);
    }
    let resident = match kept {
        Some(r) if r.model.precision == best => r,
        other => {
            drop(other);
            loader::load_resident(shared, entry, best).map_err(|f| f.reason().to_owned())?
        }
    };
    loader::install(shared, entry, resident);
    Ok(())
}

/// Measures batch sizes 1, 2, 4, … up to the cap while they fit in the budget. A model served by
/// several packages has each package timed at the sizes it takes without padding (its own size,
/// for a fixed-size one, is added to the ladder); a size's profile point is the fastest package's
/// latency with the largest peak among them, and the timings then route every batch size to the
/// package expected to finish soonest (`buckets::plan_route`).
fn measure_sizes(
    shared: &Shared,
    entry: &ModelEntry,
    stager: &mut Stager,
    resident: &Resident,
) -> Result<Vec<ProfilePoint>, String> {
    let model = &resident.model;
    let cap = entry
        .settings
        .read()
        .max_batch
        .min(model.max_batch.unwrap_or(usize::MAX));
    let shapes = model.package_shapes();
    let mut sizes = batch_sizes(cap);
    sizes.extend(
        shapes
            .iter()
            .filter(|s| s.fixed && s.max_batch <= cap)
            .map(|s| s.max_batch),
    );
    sizes.sort_unstable();
    sizes.dedup();
    let mut measured: Vec<ProfilePoint> = Vec::new();
    let mut timings: Vec<Timing> = Vec::new();
    'sizes: for n in sizes {
        // The packages that run `n` without padding, else the one padding least (a TorchScript
        // module: itself), and the most images any of them computes for it.
        let takers: Vec<Option<usize>> = if shapes.is_empty() {
            vec![None]
        } else {
            to_time(&shapes, n).into_iter().map(Some).collect()
        };
        if takers.is_empty() {
            continue;
        }
        let computed = takers
            .iter()
            .filter_map(|b| b.and_then(|b| shapes[b].computed(n)))
            .max()
            .unwrap_or(n);
        let estimate = entry.estimated_peak(computed, &shared.options);
        let predicted = with_headroom(
            predict_next(&measured, computed, estimate),
            shared.options.peak_headroom,
        );
        let Some(_room) = shared.ledger.try_reserve(predicted) else {
            tracing::info!(model = %entry.name, batch = n, predicted, "calibration stops: the next batch size would not fit the budget");
            break;
        };
        let mut best: Option<ProfilePoint> = None;
        for bucket in takers {
            if let (Some(b), Some(route)) = (bucket, model.route()) {
                route.set(n, b);
            }
            match calibration::measure(
                stager,
                model,
                shared.device,
                n,
                shared.options.calibration,
                estimate,
                &|| {
                    shared.peak_reserved();
                },
            ) {
                Ok(point) => {
                    if let Some(b) = bucket {
                        timings.push(Timing {
                            bucket: b,
                            batch: n,
                            latency_ms: point.latency_ms,
                        });
                    }
                    best = Some(match best {
                        None => point,
                        Some(b) => ProfilePoint {
                            latency_ms: b.latency_ms.min(point.latency_ms),
                            peak_bytes: b.peak_bytes.max(point.peak_bytes),
                            ..b
                        },
                    });
                }
                Err(ForwardFailure::OutOfMemory(m)) => {
                    tracing::info!(model = %entry.name, batch = n, error = %m, "calibration stops at out of memory");
                    shared.device.empty_cache();
                    measured.extend(best);
                    break 'sizes;
                }
                Err(ForwardFailure::Other(m)) => return Err(format!("batch of {n} failed: {m}")),
            }
        }
        measured.extend(best);
    }
    if let Some(route) = model.route() {
        let plan = plan_route(&shapes, &timings, model.max_batch.unwrap_or(cap));
        tracing::info!(model = %entry.name, ?plan, "packages routed by measured latency");
        route.replace(&plan);
    }
    if measured.is_empty() {
        return Err("a batch of 1 does not fit in the memory budget".to_owned());
    }
    Ok(measured)
}
