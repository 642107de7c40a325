//! What the operator remembers about each pool between reconciles (in memory only): the latest
//! telemetry and measurements, the autoscaler's stabilisation timers, the failure count that sets the
//! retry backoff, and the status it wrote last.
//!
//! Losing it (a restart, a new leader) is safe: telemetry is collected again, measurements are
//! re-read from the pool's ConfigMap, and status is compared with what the API server stores.

use crate::status::TelemetryView;
use gpupool_api::telemetry::TelemetryReport;
use gpupool_api::{InferencePool, InferencePoolStatus};
use gpupool_planner::{MeasuredProfiles, PodSample, Stabilization};
use kube::ResourceExt;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// Identifies one pool object: namespace, name and uid (a re-created pool starts afresh).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// UID.
    pub uid: String,
}

impl PoolKey {
    /// The key of `pool`.
    pub fn of(pool: &InferencePool) -> Self {
        Self {
            namespace: pool.namespace().unwrap_or_default(),
            name: pool.name_any(),
            uid: pool.uid().unwrap_or_default(),
        }
    }
}

/// Telemetry as last collected.
#[derive(Debug, Clone)]
pub struct CachedTelemetry {
    /// When.
    pub at: Instant,
    /// The ready pods asked, sorted by name.
    pub pods: Vec<String>,
    /// The summary.
    pub view: TelemetryView,
    /// The reports behind it, by pod name.
    pub reports: Vec<(String, TelemetryReport)>,
    /// The planner's view of them.
    pub samples: Vec<PodSample>,
}

/// Everything remembered about one pool.
#[derive(Debug, Clone, Default)]
pub struct PoolMemory {
    /// Consecutive failed reconciles (sets the retry backoff).
    pub failures: u32,
    /// The latest telemetry.
    pub telemetry: Option<CachedTelemetry>,
    /// Measurements merged from the latest reports (kept while no pod reports).
    pub measured: Option<MeasuredProfiles>,
    /// The status this process last wrote.
    pub last_status: Option<InferencePoolStatus>,
    /// The autoscaler's stabilisation timers.
    pub stabilization: Stabilization,
}

/// Memory of all pools.
#[derive(Debug, Default)]
pub struct Registry {
    pools: Mutex<HashMap<PoolKey, PoolMemory>>,
}

impl Registry {
    /// Runs `f` on the memory of `key` (created empty if absent) and returns its result.
    pub fn with<R>(&self, key: &PoolKey, f: impl FnOnce(&mut PoolMemory) -> R) -> R {
        // A panic while holding the lock cannot leave a pool's memory half-updated in a way that
        // matters (every field is a cache), so a poisoned lock is used as is.
        let mut pools = self
            .pools
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(pools.entry(key.clone()).or_default())
    }

    /// Forgets pools for which `keep` is false (deleted pools).
    pub fn retain(&self, keep: impl Fn(&PoolKey) -> bool) {
        let mut pools = self
            .pools
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        pools.retain(|key, _| keep(key));
    }

    /// Number of pools remembered.
    pub fn len(&self) -> usize {
        self.pools
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }

    /// Whether no pool is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
