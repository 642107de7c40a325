//! The InferencePool controller: watches pools and what they own, and reconciles each pool into
//! its plan, children, status and events.
//!
//! A reconcile reads like the spec: observe the pool's Deployment and pods, collect telemetry,
//! plan, scale, apply the children, rebuild status, publish what changed. Permanent errors (the
//! spec is invalid or does not fit) become a status condition and wait for a spec change;
//! transient ones requeue with a backoff that grows per pool.

use crate::autoscale;
use crate::compat::Compat;
use crate::error::{chain, Error, Severity};
use crate::events::{self, ReplicaChange};
use crate::metrics::Metrics;
use crate::resources::{self, PodDefaults, FIELD_MANAGER, POOL_LABEL};
use crate::state::{PoolKey, Registry};
use crate::status::{self, Observation, TelemetryView};
use crate::telemetry::{self, Collector, Telemetry};
use futures::StreamExt;
use gpupool_api::{InferencePool, PoolPlan};
use gpupool_planner::{plan_pool, validate_pool_name, MeasuredProfiles, PlanError};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::events::Recorder;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Label selector matching every object the operator creates (and their pods).
const MANAGED_SELECTOR: &str = "app.kubernetes.io/name=gpupool";
/// Resync period when nothing else brings a pool back.
const RESYNC: Duration = Duration::from_secs(300);

/// Everything a reconcile needs, shared by all of them.
pub struct Context {
    /// The API client.
    pub client: Client,
    /// Publishes events about pools.
    pub recorder: Recorder,
    /// The operator's metrics.
    pub metrics: Arc<Metrics>,
    /// What pods get beyond the pool's spec.
    pub defaults: PodDefaults,
    /// Collects the pods' telemetry.
    pub collector: Collector,
    /// How often telemetry is collected from ready pods.
    pub telemetry_interval: Duration,
    /// Sidecar port to ask when a pod names none.
    pub sidecar_port: u16,
    /// What the API server serves.
    pub compat: Compat,
    /// Per-pool memory: telemetry, measurements, failures, last written status.
    pub memory: Registry,
}

/// Runs the controller until `shutdown` is cancelled (watching `namespace`, or all).
pub async fn run(ctx: Arc<Context>, namespace: Option<String>, shutdown: CancellationToken) {
    let client = ctx.client.clone();
    let pools: Api<InferencePool> = scoped(&client, namespace.as_deref());
    // Every change of a pool triggers a reconcile, its own status writes included; those find
    // nothing new (telemetry is cached for the interval, conditions keep their times) and write
    // nothing, so they end there. (A generation predicate would skip them, but needs kube's
    // unstable stream API.)
    // Children and pods are watched through the label every object of a pool carries, so the
    // operator never caches the cluster's other ConfigMaps, Deployments, Services or Pods.
    let ours = || watcher::Config::default().labels(MANAGED_SELECTOR);
    let controller = Controller::new(pools, watcher::Config::default().any_semantic());
    tokio::spawn(forget_deleted_pools(
        ctx.clone(),
        controller.store(),
        shutdown.clone(),
    ));
    controller
        .owns(scoped::<ConfigMap>(&client, namespace.as_deref()), ours())
        .owns(scoped::<Deployment>(&client, namespace.as_deref()), ours())
        .owns(scoped::<Service>(&client, namespace.as_deref()), ours())
        .watches(
            scoped::<Pod>(&client, namespace.as_deref()),
            ours(),
            pool_of_pod,
        )
        .with_config(ControllerConfig::default().debounce(Duration::from_millis(500)))
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %chain(&e), "controller reported an error");
            }
        })
        .await;
    tracing::info!("controller stopped");
}

/// Drops the memory of pools that no longer exist, every resync period.
async fn forget_deleted_pools(
    ctx: Arc<Context>,
    store: Store<InferencePool>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(RESYNC) => {}
        }
        ctx.memory.retain(|key| {
            let object = ObjectRef::new(&key.name).within(&key.namespace);
            store
                .get(&object)
                .is_some_and(|p| p.uid().as_deref() == Some(key.uid.as_str()))
        });
    }
}

fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope> + Clone + DeserializeOwned + Debug,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

fn pool_of_pod(pod: Pod) -> Option<ObjectRef<InferencePool>> {
    let pool = pod.labels().get(POOL_LABEL)?;
    Some(ObjectRef::new(pool).within(&pod.namespace()?))
}

async fn reconcile(pool: Arc<InferencePool>, ctx: Arc<Context>) -> Result<Action, Error> {
    let span = tracing::info_span!(
        "reconcile",
        pool = %pool.name_any(),
        namespace = %pool.namespace().unwrap_or_default(),
        generation = pool.metadata.generation.unwrap_or_default(),
    );
    async move {
        let _timer = ctx.metrics.reconcile_started();
        let key = PoolKey::of(&pool);
        let result = match PoolReconciler::new(&pool, &ctx) {
            Ok(reconciler) => reconciler.reconcile().await,
            Err(e) => Err(e),
        };
        match &result {
            Ok(action) => {
                ctx.memory.with(&key, |m| m.failures = 0);
                tracing::info!(?action, "reconciled");
            }
            Err(e) => ctx.metrics.reconcile_failed(e.kind()),
        }
        result
    }
    .instrument(span)
    .await
}

fn error_policy(pool: Arc<InferencePool>, error: &Error, ctx: Arc<Context>) -> Action {
    let name = pool.name_any();
    let namespace = pool.namespace().unwrap_or_default();
    match error.severity() {
        Severity::Permanent => {
            tracing::warn!(pool = %name, %namespace, error = %chain(error), "waiting for a spec change");
            Action::await_change()
        }
        Severity::Transient => {
            let failures = ctx.memory.with(&PoolKey::of(&pool), |m| {
                m.failures = m.failures.saturating_add(1);
                m.failures
            });
            let delay = backoff(failures);
            tracing::warn!(pool = %name, %namespace, error = %chain(error), retry_in = ?delay, "reconcile failed");
            Action::requeue(delay)
        }
    }
}

/// Delay before the `failures`-th retry: 1 s doubling up to 5 minutes.
pub fn backoff(failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(9);
    Duration::from_secs(1u64 << exponent).min(RESYNC)
}

/// One reconcile of one pool.
struct PoolReconciler<'a> {
    pool: &'a InferencePool,
    ctx: &'a Context,
    key: PoolKey,
    name: String,
    namespace: String,
}

/// What the reconcile read from the cluster before deciding anything.
struct Observed {
    deployment: Option<Deployment>,
    pods: Vec<Pod>,
}

impl<'a> PoolReconciler<'a> {
    fn new(pool: &'a InferencePool, ctx: &'a Context) -> Result<Self, Error> {
        Ok(Self {
            pool,
            ctx,
            key: PoolKey::of(pool),
            name: pool.name_any(),
            namespace: pool
                .namespace()
                .ok_or(Error::MissingMetadata("namespace"))?,
        })
    }

    fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        Api::namespaced(self.ctx.client.clone(), &self.namespace)
    }

    async fn reconcile(&self) -> Result<Action, Error> {
        // Being deleted (the garbage collector is removing the children, in the foreground when
        // asked): applying them again would recreate what it just removed, GPU pods included.
        if self.pool.metadata.deletion_timestamp.is_some() {
            tracing::info!("pool is being deleted; leaving its children to the garbage collector");
            return Ok(Action::await_change());
        }
        let observed = self.observe().await?;
        let telemetry = self.collect_telemetry(&observed.pods).await;
        let measured = self.measured_profiles(observed.deployment.is_some()).await;
        let planned = validate_pool_name(&self.pool.name_any())
            .and_then(|()| plan_pool(&self.pool.spec, &measured));
        let (deployment, scaled) = match &planned {
            Ok(plan) => {
                let scaled = self
                    .autoscale(observed.deployment.as_ref(), telemetry.as_ref())
                    .await?;
                let replicas = scaled.as_ref().map_or(self.pool.spec.replicas, |s| s.to);
                (
                    Some(self.apply_children(plan, &measured, replicas).await?),
                    scaled,
                )
            }
            Err(e) => {
                self.keep_previous_rollout(e, observed.deployment.is_some());
                (observed.deployment.clone(), None)
            }
        };
        let replica_change =
            events::replica_change(observed.deployment.as_ref(), deployment.as_ref(), scaled);
        let view = telemetry.as_ref().map(|t| &t.view);
        self.update_status(
            &planned,
            deployment.as_ref(),
            &observed.pods,
            view,
            replica_change,
        )
        .await?;
        match planned {
            Err(e) => Err(Error::PlanRejected(e)),
            Ok(_) if telemetry.is_some() => Ok(Action::requeue(self.ctx.telemetry_interval)),
            Ok(_) => Ok(Action::requeue(RESYNC)),
        }
    }

    async fn observe(&self) -> Result<Observed, Error> {
        let deployment = self
            .api::<Deployment>()
            .get_opt(&self.name)
            .await
            .map_err(Error::GetDeployment)?;
        // Only a Deployment this pool controls counts (not a same-named stranger).
        let uid = self.pool.uid();
        let deployment = deployment.filter(|d| {
            d.owner_references()
                .iter()
                .any(|o| o.controller == Some(true) && Some(&o.uid) == uid.as_ref())
        });
        let selector = resources::selector_string(&self.name);
        let pods = self
            .api::<Pod>()
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(Error::ListPods)?
            .items;
        Ok(Observed { deployment, pods })
    }

    async fn collect_telemetry(&self, pods: &[Pod]) -> Option<Telemetry> {
        let ctx = self.ctx;
        let ready = telemetry::ready_pods(pods, ctx.sidecar_port);
        let latest = ctx
            .collector
            .latest(&ctx.memory, &self.key, &ready, ctx.telemetry_interval)
            .await?;
        let failed = u64::try_from(latest.failed).unwrap_or(0);
        ctx.metrics.telemetry_errors.inc_by(failed);
        Some(latest)
    }

    async fn autoscale(
        &self,
        deployment: Option<&Deployment>,
        telemetry: Option<&Telemetry>,
    ) -> Result<Option<ReplicaChange>, Error> {
        let api = self.api::<InferencePool>();
        autoscale::autoscale(
            &api,
            self.pool,
            deployment,
            telemetry,
            &self.ctx.memory,
            &self.key,
        )
        .await
    }

    /// Measurements for the planner: the latest from telemetry, or (after a restart of the
    /// operator) those recorded in the pool's ConfigMap, so the plan does not fall back to
    /// estimates and roll the pods.
    async fn measured_profiles(&self, deployed: bool) -> MeasuredProfiles {
        if let Some(m) = self.ctx.memory.with(&self.key, |m| m.measured.clone()) {
            return m;
        }
        if !deployed {
            return MeasuredProfiles::default();
        }
        let name = resources::config_map_name(&self.name);
        let recorded = match self.api::<ConfigMap>().get_opt(&name).await {
            Ok(cm) => cm.and_then(|cm| resources::recorded_measurements(&cm)),
            Err(e) => {
                tracing::warn!(error = %chain(&e), "could not read recorded measurements");
                return MeasuredProfiles::default();
            }
        };
        let measured = recorded.unwrap_or_default();
        self.ctx
            .memory
            .with(&self.key, |m| m.measured = Some(measured.clone()));
        measured
    }

    async fn apply_children(
        &self,
        plan: &PoolPlan,
        measured: &MeasuredProfiles,
        replicas: i32,
    ) -> Result<Deployment, Error> {
        let config = resources::sidecar_config(self.pool, plan);
        let config_map = resources::config_map(self.pool, &config, measured)?;
        self.apply(&config_map).await?;
        let mut deployment = resources::deployment(self.pool, &config, &self.ctx.defaults)?;
        if let Some(spec) = deployment.spec.as_mut() {
            spec.replicas = Some(replicas);
        }
        let deployment = self.apply(&deployment).await?;
        self.apply(&resources::service(self.pool)?).await?;
        let pdb = resources::pod_disruption_budget(self.pool)?;
        if let Err(e) = self.ctx.compat.apply_pdb(&self.ctx.client, &pdb).await {
            tracing::warn!(error = %chain(&e), "the pool runs without a PodDisruptionBudget");
        }
        Ok(deployment)
    }

    async fn apply<K>(&self, object: &K) -> Result<K, Error>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + DeserializeOwned
            + serde::Serialize
            + Debug,
    {
        let name = object.name_any();
        self.api::<K>()
            .patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(object),
            )
            .await
            .map_err(|source| Error::ApplyChild {
                kind: K::kind(&()).into_owned(),
                name,
                source,
            })
    }

    /// The spec was rejected: leave a running Deployment (and its ConfigMap) as they are.
    /// Deleting or emptying a serving pool because an edit went wrong would turn a typo into an
    /// outage; the pods keep serving the last feasible plan and status says so (Degraded).
    fn keep_previous_rollout(&self, error: &PlanError, deployed: bool) {
        tracing::warn!(error = %error, keeps_serving = deployed, "the spec has no feasible plan");
    }

    async fn update_status(
        &self,
        planned: &Result<PoolPlan, PlanError>,
        deployment: Option<&Deployment>,
        pods: &[Pod],
        telemetry: Option<&TelemetryView>,
        replica_change: Option<ReplicaChange>,
    ) -> Result<(), Error> {
        let now = status::now_rfc3339();
        let unschedulable = status::unschedulable(pods);
        // What this process wrote last is fresher than the watch cache, which may lag behind it.
        let previous = self
            .ctx
            .memory
            .with(&self.key, |m| m.last_status.clone())
            .or_else(|| self.pool.status.clone())
            .unwrap_or_default();
        let mut pool = self.pool.clone();
        pool.status = Some(previous.clone());
        let scaled_at = replica_change
            .as_ref()
            .filter(|c| c.why.is_some())
            .map(|_| now.as_str());
        let next = status::build(&Observation {
            pool: &pool,
            plan: planned.as_ref(),
            deployment,
            unschedulable: &unschedulable,
            telemetry,
            scaled_at,
            now: &now,
        });
        let events = events::diff(&previous, &next, replica_change.as_ref());
        let stored = self.pool.status.as_ref();
        if stored != Some(&next) {
            status::write(&self.api::<InferencePool>(), &self.name, &next).await?;
        }
        self.ctx
            .memory
            .with(&self.key, |m| m.last_status = Some(next.clone()));
        events::publish(&self.ctx.recorder, self.pool, &events).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_resync_period() {
        let delays: Vec<u64> = [1, 2, 3, 4, 9, 10, 30]
            .map(|n| backoff(n).as_secs())
            .to_vec();
        assert_eq!(delays, [1, 2, 4, 8, 256, 300, 300]);
        assert_eq!(backoff(0), Duration::from_secs(1));
    }
}
