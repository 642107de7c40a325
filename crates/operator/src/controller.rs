//! The InferencePool controller: watches pools and what they own, and reconciles each pool into
//! its plan, children, status and events.
//!
//! A reconcile reads like the spec: observe the pool's Deployment and pods, collect telemetry,
//! plan, scale, apply the children, rebuild status, publish what changed. Permanent errors (the
//! spec is invalid or does not fit) become a status condition and wait for a spec change;
//! transient ones requeue with a backoff that grows per pool.

use crate::compat::Compat;
use crate::error::{chain, Error, Severity};
use crate::events::{self, ReplicaChange};
use crate::metrics::Metrics;
use crate::resources::{self, PodDefaults, FIELD_MANAGER, POOL_LABEL};
use crate::state::{PoolKey, Registry};
use crate::status::{self, Observation, TelemetryView, Unschedulable};
use crate::telemetry::{self, Collector};
use futures::StreamExt;
use gpupool_api::{InferencePool, PoolPlan};
use gpupool_planner::{plan_pool, MeasuredProfiles, PlanError};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::events::Recorder;
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{predicates, watcher, WatchStreamExt};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

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
    let (store, writer) = reflector::store();
    // Status writes and metadata-only changes do not trigger reconciles: only spec changes do
    // (generation), besides owned objects, the pods and requeues.
    let trigger = watcher(pools, watcher::Config::default().any_semantic())
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .predicate_filter(predicates::generation, Default::default());
    let pods_config = watcher::Config::default().labels("app.kubernetes.io/name=gpupool");
    Controller::for_stream(trigger, store)
        .owns(scoped::<ConfigMap>(&client, namespace.as_deref()), watcher::Config::default())
        .owns(scoped::<Deployment>(&client, namespace.as_deref()), watcher::Config::default())
        .owns(scoped::<Service>(&client, namespace.as_deref()), watcher::Config::default())
        .watches(scoped::<Pod>(&client, namespace.as_deref()), pods_config, pool_of_pod)
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
        let result = PoolReconciler::new(&pool, &ctx)?.reconcile().await;
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
            namespace: pool.namespace().ok_or(Error::MissingMetadata("namespace"))?,
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
        let observed = self.observe().await?;
        let telemetry = self.collect_telemetry(&observed.pods).await;
        let measured = self.measured_profiles(observed.deployment.is_some()).await;
        let planned = plan_pool(&self.pool.spec, &measured);
        let (deployment, scaled) = match &planned {
            Ok(plan) => {
                let scaled = self.autoscale(plan, telemetry.as_ref()).await?;
                let replicas = scaled.as_ref().map_or(self.pool.spec.replicas, |s| s.to);
                (Some(self.apply_children(plan, &measured, replicas).await?), scaled)
            }
            Err(e) => {
                self.keep_previous_rollout(e, observed.deployment.is_some());
                (observed.deployment.clone(), None)
            }
        };
        let replica_change = replica_change(observed.deployment.as_ref(), deployment.as_ref(), scaled);
        self.update_status(&planned, deployment.as_ref(), &observed.pods, telemetry.as_ref(), replica_change)
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
            d.owner_references().iter().any(|o| o.controller == Some(true) && Some(&o.uid) == uid.as_ref())
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

    /// Telemetry from the ready pods: collected when the last collection is older than the
    /// interval or the set of ready pods changed, otherwise the cached one.
    async fn collect_telemetry(&self, pods: &[Pod]) -> Option<TelemetryView> {
        let ready = telemetry::ready_pods(pods, self.ctx.sidecar_port);
        let names: Vec<String> = ready.iter().map(|p| p.name.clone()).collect();
        if ready.is_empty() {
            self.ctx.memory.with(&self.key, |m| m.telemetry = None);
            return None;
        }
        let interval = self.ctx.telemetry_interval;
        let cached = self.ctx.memory.with(&self.key, |m| {
            m.telemetry
                .as_ref()
                .filter(|t| t.pods == names && t.at.elapsed() < interval)
                .map(|t| t.view.clone())
        });
        if cached.is_some() {
            return cached;
        }
        let collection = self.ctx.collector.collect(&ready).await;
        self.ctx
            .metrics
            .telemetry_errors
            .inc_by(u64::try_from(collection.failed.len()).unwrap_or(0));
        let view = telemetry::summarise(&collection, &status::now_rfc3339());
        let reports: Vec<_> = collection.reports.into_iter().map(|(_, r)| r).collect();
        self.ctx.memory.with(&self.key, |m| {
            if !reports.is_empty() {
                m.measured = Some(MeasuredProfiles::from_reports(&reports));
            }
            m.reports = reports;
            m.telemetry = Some(crate::state::CachedTelemetry {
                at: Instant::now(),
                pods: names,
                view: view.clone(),
            });
        });
        Some(view)
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
        self.ctx.memory.with(&self.key, |m| m.measured = Some(measured.clone()));
        measured
    }

    async fn autoscale(
        &self,
        plan: &PoolPlan,
        telemetry: Option<&TelemetryView>,
    ) -> Result<Option<ReplicaChange>, Error> {
        let reports = self.ctx.memory.with(&self.key, |m| m.reports.clone());
        let Some(decision) = crate::autoscale::decide(self.pool, plan, telemetry, &reports, &self.ctx.memory, &self.key)
        else {
            return Ok(None);
        };
        let patch = serde_json::json!({ "spec": { "replicas": decision.to } });
        let params = PatchParams {
            field_manager: Some(crate::autoscale::FIELD_MANAGER.into()),
            ..PatchParams::default()
        };
        self.api::<InferencePool>()
            .patch_scale(&self.name, &params, &Patch::Merge(&patch))
            .await
            .map_err(Error::Scale)?;
        tracing::info!(from = decision.from, to = decision.to, why = ?decision.why, "scaled the pool");
        Ok(Some(decision))
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
            .patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(object))
            .await
            .map_err(|source| Error::ApplyChild {
                kind: std::any::type_name::<K>().rsplit("::").next().unwrap_or("object"),
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
        let unschedulable = unschedulable(pods);
        // What this process wrote last is fresher than the watch cache, which may lag behind it.
        let previous = self
            .ctx
            .memory
            .with(&self.key, |m| m.last_status.clone())
            .or_else(|| self.pool.status.clone())
            .unwrap_or_default();
        let mut pool = self.pool.clone();
        pool.status = Some(previous.clone());
        let scaled_at = replica_change.as_ref().filter(|c| c.why.is_some()).map(|_| now.as_str());
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
        self.ctx.memory.with(&self.key, |m| m.last_status = Some(next.clone()));
        events::publish(&self.ctx.recorder, self.pool, &events).await;
        Ok(())
    }
}

fn replica_change(
    before: Option<&Deployment>,
    after: Option<&Deployment>,
    scaled: Option<ReplicaChange>,
) -> Option<ReplicaChange> {
    let replicas = |d: Option<&Deployment>| d.and_then(|d| d.spec.as_ref()).and_then(|s| s.replicas);
    let (from, to) = (replicas(before)?, replicas(after)?);
    (from != to).then(|| ReplicaChange {
        from,
        to,
        why: scaled.and_then(|s| s.why),
    })
}

/// Pods the scheduler marked unschedulable, and its message for the first of them.
pub fn unschedulable(pods: &[Pod]) -> Unschedulable {
    let messages: Vec<Option<String>> = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| {
            let status = p.status.as_ref()?;
            let condition = status.conditions.iter().flatten().find(|c| {
                c.type_ == "PodScheduled" && c.status == "False" && c.reason.as_deref() == Some("Unschedulable")
            })?;
            Some(condition.message.clone())
        })
        .collect();
    Unschedulable {
        pods: u32::try_from(messages.len()).unwrap_or(u32::MAX),
        message: messages.into_iter().flatten().next(),
    }
}
