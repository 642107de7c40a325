//! The objects a pool owns, built purely from the pool and its plan: the sidecar config
//! (ConfigMap), the pods (Deployment), their Service and PodDisruptionBudget.
//!
//! Nothing here talks to the API server, so the whole shape is unit-tested. Every object carries
//! the pool's labels and a controller owner reference, so the garbage collector deletes them with
//! the pool.

use crate::error::Error;
use gpupool_api::sidecar::{
    AdmissionConfig, SidecarConfig, SidecarModelConfig, SIDECAR_CONFIG_FILE, SIDECAR_CONFIG_KIND,
};
use gpupool_api::{InferencePool, PoolPlan, Precision, API_VERSION};
use gpupool_planner::MeasuredProfiles;
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource,
    HTTPGetAction, ObjectFieldSelector, PersistentVolumeClaimVolumeSource, PodSpec,
    PodTemplateSpec, Probe, ResourceFieldSelector, ResourceRequirements, Service, ServicePort,
    ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// Field manager of every write the operator makes (children and status).
pub const FIELD_MANAGER: &str = "gpupool-operator";
/// Directory the sidecar config is mounted at in the pods.
pub const CONFIG_MOUNT_PATH: &str = "/etc/gpupool";
/// Directory the model volume is mounted at, when the pool names one.
pub const MODELS_MOUNT_PATH: &str = "/models";
/// Pod template annotation holding the SHA-256 of the config's restart key.
pub const RESTART_CHECKSUM_ANNOTATION: &str = "gpupool.io/restart-checksum";
/// Environment variable telling the sidecar where its config file is.
pub const CONFIG_PATH_ENV: &str = "GPUPOOL_CONFIG";
/// The sidecar's HTTP port (API, health, metrics, telemetry).
pub const HTTP_PORT: i32 = 8080;
/// How long a terminating sidecar keeps serving after its readiness goes off, so the endpoint's
/// removal reaches every proxy before it refuses work (`GPUPOOL_SHUTDOWN_SETTLE_MS`).
pub const SHUTDOWN_SETTLE_SECONDS: i64 = 5;
/// The longest drain after that: in-flight requests, then the engine's queues
/// (`GPUPOOL_DRAIN_SECONDS`).
pub const DRAIN_SECONDS: i64 = 25;
/// The pod's termination grace period: settle and drain, plus time to exit before the kubelet
/// kills the process (Kubernetes' default of 30 s would cut the drain short).
pub const TERMINATION_GRACE_SECONDS: i64 = SHUTDOWN_SETTLE_SECONDS + DRAIN_SECONDS + 10;
/// Name of the sidecar's HTTP port.
pub const HTTP_PORT_NAME: &str = "http";
/// Node label carrying the GPU product (set by NVIDIA's GPU feature discovery).
pub const GPU_PRODUCT_LABEL: &str = "nvidia.com/gpu.product";
/// Label naming the pool an object belongs to.
pub const POOL_LABEL: &str = "gpupool.io/pool";
/// Key of the pods' merged measurements in the pool's ConfigMap (the sidecar ignores it).
pub const MEASUREMENTS_FILE: &str = "measured-profiles.json";
/// Name of the sidecar container.
pub const CONTAINER_NAME: &str = "sidecar";
/// The sidecar's variable for its container's memory limit, bytes (downward API).
pub const MEMORY_LIMIT_ENV: &str = "GPUPOOL_MEMORY_LIMIT_BYTES";

/// What the operator supplies to pods beyond the pool's own spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodDefaults {
    /// Image for pools that do not name one.
    pub sidecar_image: String,
}

/// Labels on every object of a pool; all three also select its pods.
pub fn labels(pool_name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), "gpupool".to_string()),
        (
            "app.kubernetes.io/instance".to_string(),
            pool_name.to_string(),
        ),
        (POOL_LABEL.to_string(), pool_name.to_string()),
    ])
}

/// The pods' label selector as a string (for the scale subresource and pod lists).
pub fn selector_string(pool_name: &str) -> String {
    labels(pool_name)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Name of the ConfigMap holding a pool's sidecar config.
pub fn config_map_name(pool_name: &str) -> String {
    format!("{pool_name}-config")
}

/// The sidecar config document for a pool under a plan.
///
/// `memoryBudgetBytes` is the plan's usable budget (the configured budget less the headroom):
/// admission and the allocator cap stay inside what the plan reserved, and the headroom is left
/// to the CUDA context and workspaces outside the allocator.
pub fn sidecar_config(pool: &InferencePool, plan: &PoolPlan) -> SidecarConfig {
    let spec = &pool.spec;
    let models = spec
        .models
        .iter()
        .map(|m| {
            let planned = plan.model(&m.name);
            SidecarModelConfig {
                name: m.name.clone(),
                source: m.source.clone(),
                input: m.input.clone(),
                // `auto` stays `auto`: the plan resolves it only to size memory, while the pod
                // measures on its own GPU and knows what a package was compiled at (an explicit
                // fp16 would make an fp32 or bf16 package unloadable).
                precision: match m.precision {
                    Precision::Auto => Precision::Auto,
                    _ => planned.map_or(m.precision, |p| p.precision),
                },
                max_batch: planned.map_or(m.max_batch, |p| p.batch_size.max(1)),
                slots: planned.map_or(1, |p| p.slots.max(1)),
                max_queue_delay_ms: m.max_queue_delay_ms,
                resident: planned.map_or(m.pinned, |p| p.resident),
            }
        })
        .collect();
    SidecarConfig {
        api_version: API_VERSION.to_string(),
        kind: SIDECAR_CONFIG_KIND.to_string(),
        pool: pool.name_any(),
        generation: pool.metadata.generation.unwrap_or_default(),
        memory_budget_bytes: plan.budget_bytes,
        streams: plan.streams.max(1),
        admission: AdmissionConfig {
            reject_above: spec.scaling.reject_above,
            memory_pressure_watermark: spec.scaling.memory_pressure_watermark,
            // Room for a few scale-out targets' worth of waiting requests before refusing (429).
            max_queue_per_model: spec.scaling.target_queue_per_replica.saturating_mul(4),
        },
        models,
    }
}

/// SHA-256 (hex) of the part of the config that needs a process restart.
///
/// Only this goes into the pod template, so live-applicable changes (batch sizes, slots,
/// thresholds) update the ConfigMap without rolling the pods.
pub fn restart_checksum(config: &SidecarConfig) -> Result<String, Error> {
    let key = serde_json::to_vec(&config.restart_key()).map_err(Error::Serialize)?;
    Ok(format!("{:x}", Sha256::digest(&key)))
}

fn metadata(pool: &InferencePool, name: String) -> Result<ObjectMeta, Error> {
    Ok(ObjectMeta {
        name: Some(name),
        namespace: Some(
            pool.namespace()
                .ok_or(Error::MissingMetadata("namespace"))?,
        ),
        labels: Some(labels(&pool.name_any())),
        owner_references: Some(vec![owner_reference(pool)?]),
        ..ObjectMeta::default()
    })
}

/// The controller owner reference children carry (garbage collection deletes them with the pool).
pub fn owner_reference(pool: &InferencePool) -> Result<OwnerReference, Error> {
    pool.controller_owner_ref(&())
        .ok_or(Error::MissingMetadata("name or uid"))
}

/// The ConfigMap with the sidecar config document under [`SIDECAR_CONFIG_FILE`] and, once the
/// pods have measured anything, those measurements under [`MEASUREMENTS_FILE`] (so a restarted
/// operator plans from them rather than from estimates, which could roll the pods).
pub fn config_map(
    pool: &InferencePool,
    config: &SidecarConfig,
    measured: &MeasuredProfiles,
) -> Result<ConfigMap, Error> {
    let document = config.to_yaml().map_err(Error::RenderConfig)?;
    let mut data = BTreeMap::from([(SIDECAR_CONFIG_FILE.to_string(), document)]);
    if measured != &MeasuredProfiles::default() {
        let json = serde_json::to_string(measured).map_err(Error::Serialize)?;
        data.insert(MEASUREMENTS_FILE.to_string(), json);
    }
    Ok(ConfigMap {
        metadata: metadata(pool, config_map_name(&pool.name_any()))?,
        data: Some(data),
        ..ConfigMap::default()
    })
}

/// The measurements recorded in a pool's ConfigMap, if any (unreadable ones are ignored).
pub fn recorded_measurements(config_map: &ConfigMap) -> Option<MeasuredProfiles> {
    let json = config_map.data.as_ref()?.get(MEASUREMENTS_FILE)?;
    serde_json::from_str(json).ok()
}

/// The Deployment of sidecar pods, one GPU each.
pub fn deployment(
    pool: &InferencePool,
    config: &SidecarConfig,
    defaults: &PodDefaults,
) -> Result<Deployment, Error> {
    let name = pool.name_any();
    let spec = &pool.spec;
    let checksum = restart_checksum(config)?;
    let pod_labels = labels(&name);
    Ok(Deployment {
        metadata: metadata(pool, name.clone())?,
        spec: Some(DeploymentSpec {
            replicas: Some(spec.replicas),
            selector: LabelSelector {
                match_labels: Some(pod_labels.clone()),
                ..LabelSelector::default()
            },
            // Never take serving capacity away during a rollout: a surge pod that finds no GPU
            // stays Pending (what a cluster autoscaler acts on) while the old pods keep serving.
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::Int(1)),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(BTreeMap::from([(
                        RESTART_CHECKSUM_ANNOTATION.to_string(),
                        checksum,
                    )])),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod_spec(pool, defaults)),
            },
            ..DeploymentSpec::default()
        }),
        status: None,
    })
}

fn pod_spec(pool: &InferencePool, defaults: &PodDefaults) -> PodSpec {
    let name = pool.name_any();
    let pod = &pool.spec.pod;
    let mut node_selector = pod.node_selector.clone();
    if let Some(product) = &pool.spec.gpu.product {
        node_selector.insert(GPU_PRODUCT_LABEL.to_string(), product.clone());
    }
    let mut volumes = vec![Volume {
        name: "config".into(),
        config_map: Some(ConfigMapVolumeSource {
            name: config_map_name(&name),
            ..ConfigMapVolumeSource::default()
        }),
        ..Volume::default()
    }];
    let mut mounts = vec![VolumeMount {
        name: "config".into(),
        mount_path: CONFIG_MOUNT_PATH.into(),
        read_only: Some(true),
        ..VolumeMount::default()
    }];
    if let Some(claim) = &pod.model_volume_claim {
        volumes.push(Volume {
            name: "models".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim.clone(),
                read_only: Some(true),
            }),
            ..Volume::default()
        });
        mounts.push(VolumeMount {
            name: "models".into(),
            mount_path: MODELS_MOUNT_PATH.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    }
    PodSpec {
        containers: vec![Container {
            name: CONTAINER_NAME.into(),
            image: Some(
                pod.image
                    .clone()
                    .unwrap_or_else(|| defaults.sidecar_image.clone()),
            ),
            image_pull_policy: pod.image_pull_policy.map(|p| p.as_str().to_string()),
            ports: Some(vec![ContainerPort {
                container_port: HTTP_PORT,
                name: Some(HTTP_PORT_NAME.into()),
                protocol: Some("TCP".into()),
                ..ContainerPort::default()
            }]),
            env: Some(env()),
            resources: Some(resources(pool)),
            volume_mounts: Some(mounts),
            // Loading, calibrating and warming up models takes a while: the startup probe waits
            // for readiness (up to 10 minutes) and only then does liveness start, so a start-up
            // that hangs, or in which every model failed, is restarted instead of idling unready.
            startup_probe: Some(probe("/readyz", 2, 300)),
            liveness_probe: Some(probe("/healthz", 10, 3)),
            readiness_probe: Some(probe("/readyz", 5, 1)),
            ..Container::default()
        }],
        termination_grace_period_seconds: Some(TERMINATION_GRACE_SECONDS),
        node_selector: (!node_selector.is_empty()).then_some(node_selector),
        tolerations: (!pod.tolerations.is_empty()).then(|| pod.tolerations.clone()),
        volumes: Some(volumes),
        ..PodSpec::default()
    }
}

fn env() -> Vec<EnvVar> {
    let field = |name: &str, path: &str| EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    };
    let value = |name: &str, v: i64| EnvVar {
        name: name.into(),
        value: Some(v.to_string()),
        ..EnvVar::default()
    };
    vec![
        EnvVar {
            name: CONFIG_PATH_ENV.into(),
            value: Some(format!("{CONFIG_MOUNT_PATH}/{SIDECAR_CONFIG_FILE}")),
            ..EnvVar::default()
        },
        value("GPUPOOL_SHUTDOWN_SETTLE_MS", SHUTDOWN_SETTLE_SECONDS * 1000),
        value("GPUPOOL_DRAIN_SECONDS", DRAIN_SECONDS),
        // The models run on the pod's GPU; libtorch's OpenMP pool of one spinning thread per core
        // only competed with decoding and contour tracing (HTTP 8–15 % faster with one thread on
        // the H200 host, docs/benchmarks.md). OpenMP reads this when libtorch loads, before the
        // sidecar's own setting (GPUPOOL_TORCH_CPU_THREADS) can apply.
        value("OMP_NUM_THREADS", 1),
        field("POD_NAME", "metadata.name"),
        field("POD_NAMESPACE", "metadata.namespace"),
        // The container's memory limit in bytes as the kubelet resolves it (a LimitRange default
        // or a VPA change included; the node's allocatable memory without a limit): the sidecar
        // sizes its host-memory budget for images from it.
        EnvVar {
            name: MEMORY_LIMIT_ENV.into(),
            value_from: Some(EnvVarSource {
                resource_field_ref: Some(ResourceFieldSelector {
                    container_name: Some(CONTAINER_NAME.into()),
                    resource: "limits.memory".into(),
                    ..ResourceFieldSelector::default()
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        },
    ]
}

/// The pool's extra requests and limits with exactly one GPU added to both (as a string).
fn resources(pool: &InferencePool) -> ResourceRequirements {
    let mut resources = pool.spec.pod.resources.clone().unwrap_or_default();
    let gpu = pool.spec.gpu.resource_name.clone();
    for list in [&mut resources.requests, &mut resources.limits] {
        list.get_or_insert_with(BTreeMap::new)
            .insert(gpu.clone(), Quantity("1".into()));
    }
    resources
}

fn probe(path: &str, period_seconds: i32, failure_threshold: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String(HTTP_PORT_NAME.into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period_seconds),
        failure_threshold: Some(failure_threshold),
        timeout_seconds: Some(2),
        ..Probe::default()
    }
}

/// The Service in front of the pool's pods, on the sidecar's HTTP port.
pub fn service(pool: &InferencePool) -> Result<Service, Error> {
    let name = pool.name_any();
    Ok(Service {
        metadata: metadata(pool, name.clone())?,
        spec: Some(ServiceSpec {
            selector: Some(labels(&name)),
            ports: Some(vec![ServicePort {
                name: Some(HTTP_PORT_NAME.into()),
                port: HTTP_PORT,
                target_port: Some(IntOrString::String(HTTP_PORT_NAME.into())),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    })
}

/// The PodDisruptionBudget (policy/v1 shape; the v1beta1 fallback reuses it): at most one pod
/// of the pool evicted at a time.
pub fn pod_disruption_budget(pool: &InferencePool) -> Result<PodDisruptionBudget, Error> {
    let name = pool.name_any();
    Ok(PodDisruptionBudget {
        metadata: metadata(pool, name.clone())?,
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(labels(&name)),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        status: None,
    })
}

#[cfg(test)]
#[path = "resources_tests.rs"]
mod tests;
