//! Loading models on demand and unloading them to make room: the weights of a model are reserved
//! in the ledger before it is loaded, least-recently-used models (never pinned ones, never one a
//! slot is running) are unloaded when the reservation does not fit, and a slot that runs a model
//! holds an [`InUse`] guard so it cannot be unloaded underneath it.

use crate::admission::Reservation;
use crate::model::LoadedModel;
use crate::state::{ModelEntry, Resident, Shared};
use gpupool_api::telemetry::ModelState;
use gpupool_api::Precision;
use std::sync::Arc;
use std::time::Instant;

/// Why a model could not be made ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LoadFailure {
    /// The file is missing or broken, or the model can never fit: the model is Failed.
    Permanent(String),
    /// No memory could be found in time (or the engine is shutting down): try again later.
    Transient(String),
}

impl LoadFailure {
    pub fn reason(&self) -> &str {
        match self {
            LoadFailure::Permanent(r) | LoadFailure::Transient(r) => r,
        }
    }
}

/// A model a slot is running; it cannot be unloaded until this is dropped.
pub(crate) struct InUse<'a> {
    shared: &'a Shared,
    name: &'a str,
    generation: u64,
    pub resident: Arc<Resident>,
}

impl Drop for InUse<'_> {
    fn drop(&mut self) {
        self.shared
            .residency
            .lock()
            .release(self.name, self.generation);
    }
}

/// Unloads `name` if no slot is running it; true if it was unloaded.
pub(crate) fn evict(shared: &Shared, name: &str) -> bool {
    let Some(entry) = shared.model(name) else {
        return false;
    };
    let old = {
        let mut lru = shared.residency.lock();
        if !lru.remove_if_idle(name) {
            return false;
        }
        let mut rt = entry.runtime.lock();
        if rt.state == ModelState::Ready {
            rt.state = ModelState::Unloaded;
        }
        rt.loaded.take()
    };
    let freed = old.as_ref().map_or(0, |r| r.model.weights_bytes);
    drop(old); // outside the locks: releases the ledger reservation
    shared.device.empty_cache();
    tracing::info!(
        model = name,
        freed_bytes = freed,
        "unloaded model to make room"
    );
    true
}

/// Unloads least-recently-used models until `need` bytes would fit; false if that is impossible.
pub(crate) fn make_room(shared: &Shared, need: u64, exclude: &str) -> bool {
    let victims = {
        let lru = shared.residency.lock();
        let free = shared.ledger.budget().saturating_sub(shared.ledger.used());
        lru.victims(need, free, exclude)
    };
    match victims {
        Some(v) if !v.is_empty() => {
            // Every victim is tried (no short-circuit): each one unloaded frees its weights.
            let unloaded = v.iter().filter(|name| evict(shared, name)).count();
            unloaded > 0
        }
        _ => false,
    }
}

/// Reserves `need` bytes, unloading other models or waiting for releases until `deadline`.
pub(crate) fn reserve(
    shared: &Shared,
    need: u64,
    exclude: &str,
    deadline: Instant,
) -> Result<Reservation, LoadFailure> {
    if need > shared.ledger.budget() {
        return Err(LoadFailure::Permanent(format!(
            "needs {need} bytes, more than the memory budget of {} bytes",
            shared.ledger.budget()
        )));
    }
    // Each try unloads idle models for as long as that frees something.
    let attempt = || loop {
        if let Some(r) = shared.ledger.try_reserve(need) {
            return Some(r);
        }
        if !make_room(shared, need, exclude) {
            return None;
        }
    };
    shared.wait_for_memory(deadline, attempt).ok_or_else(|| {
        LoadFailure::Transient(format!(
            "needs {need} bytes but only {} of the {} byte budget are free, and the models holding the rest are pinned or busy",
            shared.ledger.budget().saturating_sub(shared.ledger.used()),
            shared.ledger.budget()
        ))
    })
}

/// Loads `entry` at `precision` with its weights reserved (not yet recorded as loaded).
pub(crate) fn load_resident(
    shared: &Shared,
    entry: &ModelEntry,
    precision: Precision,
) -> Result<Arc<Resident>, LoadFailure> {
    let path = crate::config::local_path(&entry.source.uri).to_owned();
    let facts = entry.runtime.lock().facts.clone();
    let known = entry.measured_weights(precision);
    // Before the first load: the file's size (a cast copy can briefly need both).
    let file_bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let estimate = known.unwrap_or(file_bytes).max(1);
    let deadline = Instant::now() + shared.options.memory_wait;
    let mut weights = reserve(shared, estimate, &entry.name, deadline)?;
    let slots = entry.settings.read().slots;
    let model = LoadedModel::load(
        &path,
        entry.source.format,
        shared.device,
        precision,
        &facts,
        slots,
    )
    .map_err(|reason| {
        // Running out of device memory while loading (another process took it meanwhile) is
        // worth another try; a missing or broken file is not.
        if crate::oom::is_out_of_memory(&reason) {
            LoadFailure::Transient(reason)
        } else {
            LoadFailure::Permanent(reason)
        }
    })?;
    let loaded_bytes = model.weights_bytes;
    if !weights.resize(loaded_bytes.max(1)) {
        drop(model);
        return Err(LoadFailure::Transient(format!(
            "weights take {loaded_bytes} bytes once loaded, more than the {} reserved, and the rest of the budget is in use",
            weights.bytes()
        )));
    }
    entry
        .runtime
        .lock()
        .weights
        .insert(model.precision, model.weights_bytes);
    if model.is_package() {
        let mut rt = entry.runtime.lock();
        rt.facts.precision = Some(model.precision);
        rt.facts.max_batch = model.max_batch.or(rt.facts.max_batch);
    }
    Ok(Arc::new(Resident {
        model,
        _weights: weights,
    }))
}

/// Records `resident` as the model's loaded copy (replacing any other) and marks it Ready.
pub(crate) fn install(shared: &Shared, entry: &ModelEntry, resident: Arc<Resident>) {
    let _ = install_inner(shared, entry, resident, false);
}

/// Installs and, under the same lock (so no other slot can unload it in between), takes it in use.
fn install_and_acquire<'a>(
    shared: &'a Shared,
    entry: &'a ModelEntry,
    resident: Arc<Resident>,
) -> InUse<'a> {
    let generation = install_inner(shared, entry, Arc::clone(&resident), true);
    InUse {
        shared,
        name: &entry.name,
        generation,
        resident,
    }
}

fn install_inner(
    shared: &Shared,
    entry: &ModelEntry,
    resident: Arc<Resident>,
    acquire: bool,
) -> u64 {
    let pinned = entry.settings.read().resident;
    let (old, generation) = {
        let mut lru = shared.residency.lock();
        let mut generation = lru.insert(&entry.name, resident.model.weights_bytes, pinned);
        if acquire {
            generation = lru.acquire(&entry.name).unwrap_or(generation);
        }
        let mut rt = entry.runtime.lock();
        rt.state = ModelState::Ready;
        rt.reason = None;
        (rt.loaded.replace(resident), generation)
    };
    drop(old);
    entry.refresh_cached_settings();
    generation
}

/// The model loaded at its target precision, held in use; loads it (unloading others) if needed.
pub(crate) fn ensure_loaded<'a>(
    shared: &'a Shared,
    entry: &'a ModelEntry,
) -> Result<InUse<'a>, LoadFailure> {
    if let Some(in_use) = try_acquire(shared, entry) {
        return Ok(in_use);
    }
    let _loading = entry.load_lock.lock();
    if let Some(in_use) = try_acquire(shared, entry) {
        return Ok(in_use);
    }
    // Loaded at another precision (changed live): let go of the old copy first.
    let stale = {
        let mut lru = shared.residency.lock();
        lru.remove(&entry.name);
        entry.runtime.lock().loaded.take()
    };
    drop(stale);
    let precision = entry.target_precision();
    entry.set_state(ModelState::Loading, None);
    match load_resident(shared, entry, precision) {
        Ok(resident) => {
            tracing::info!(model = %entry.name, %precision, "model loaded");
            Ok(install_and_acquire(shared, entry, resident))
        }
        Err(LoadFailure::Permanent(reason)) => {
            entry.set_state(ModelState::Failed, Some(reason.clone()));
            Err(LoadFailure::Permanent(reason))
        }
        Err(LoadFailure::Transient(reason)) => {
            entry.set_state(ModelState::Unloaded, Some(reason.clone()));
            Err(LoadFailure::Transient(reason))
        }
    }
}

fn try_acquire<'a>(shared: &'a Shared, entry: &'a ModelEntry) -> Option<InUse<'a>> {
    let want = entry.target_precision();
    let mut lru = shared.residency.lock();
    let rt = entry.runtime.lock();
    let resident = rt.loaded.as_ref()?;
    if resident.model.precision != want && !resident.model.is_package() {
        return None;
    }
    let generation = lru.acquire(&entry.name)?;
    Some(InUse {
        shared,
        name: &entry.name,
        generation,
        resident: Arc::clone(resident),
    })
}
