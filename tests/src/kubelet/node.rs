//! The Node object and its liveness: registration, the Ready heartbeat, the Lease in
//! `kube-node-lease`, and what is left behind on exit.

use super::config::{Config, OnExit};
use super::error::{Error, Result};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    Node, NodeAddress, NodeCondition, NodeSpec, NodeStatus, NodeSystemInfo, Taint,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use std::collections::BTreeMap;
use tokio_util::sync::CancellationToken;

const LEASE_NAMESPACE: &str = "kube-node-lease";
const NOT_READY_TAINT: &str = "node.kubernetes.io/not-ready";
const UNREACHABLE_TAINT: &str = "node.kubernetes.io/unreachable";

/// Creates (or updates) the Node and reports it Ready; returns when it became Ready.
pub(crate) async fn register(client: &Client, config: &Config) -> Result<Timestamp> {
    let nodes: Api<Node> = Api::all(client.clone());
    let name = &config.node_name;
    let node = Node {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            labels: Some(labels(config)),
            ..ObjectMeta::default()
        },
        spec: Some(NodeSpec {
            pod_cidr: Some(config.pod_cidr.to_string()),
            ..NodeSpec::default()
        }),
        status: None,
    };
    match nodes.create(&PostParams::default(), &node).await {
        Ok(_) => tracing::info!(node = %name, "node registered"),
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let patch = serde_json::json!({
                "metadata": { "labels": labels(config) },
                "spec": { "podCIDR": config.pod_cidr.to_string() },
            });
            nodes
                .patch(name, &PatchParams::default(), &Patch::Merge(patch))
                .await
                .map_err(|e| Error::kube(format!("updating node {name}"), e))?;
            tracing::info!(node = %name, "node already existed; labels updated");
        }
        Err(e) => return Err(Error::kube(format!("creating node {name}"), e)),
    }
    let ready_since = Timestamp::now();
    write_status(client, config, true, ready_since).await?;
    set_not_ready_taint(client, config, false).await?;
    Ok(ready_since)
}

/// Adds or removes the `node.kubernetes.io/not-ready:NoSchedule` taint. The API server's
/// TaintNodesByCondition admission puts it on every new Node and the node lifecycle controller
/// takes it off once the Node is Ready; the local control plane runs no such controller, so the
/// stand-in does that part itself (and puts the taint back when it stops).
async fn set_not_ready_taint(client: &Client, config: &Config, present: bool) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let name = &config.node_name;
    let node = nodes
        .get(name)
        .await
        .map_err(|e| Error::kube(format!("reading node {name}"), e))?;
    let taints = node.spec.and_then(|s| s.taints).unwrap_or_default();
    let is_ours = |t: &Taint| t.key == NOT_READY_TAINT || t.key == UNREACHABLE_TAINT;
    let mut wanted: Vec<Taint> = taints.iter().filter(|t| !is_ours(t)).cloned().collect();
    if present {
        wanted.push(Taint {
            key: NOT_READY_TAINT.into(),
            effect: "NoSchedule".into(),
            ..Taint::default()
        });
    }
    if wanted == taints {
        return Ok(());
    }
    let patch = Patch::Merge(serde_json::json!({ "spec": { "taints": wanted } }));
    nodes
        .patch(name, &PatchParams::default(), &patch)
        .await
        .map_err(|e| Error::kube(format!("updating the taints of node {name}"), e))?;
    tracing::info!(node = %name, present, "not-ready taint updated");
    Ok(())
}

/// Renews the Lease and the Ready heartbeat every `heartbeat_interval` until `shutdown`.
pub(crate) async fn heartbeat(
    client: Client,
    config: Config,
    ready_since: Timestamp,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(config.heartbeat_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = renew_lease(&client, &config).await {
            tracing::warn!(error = %e, "cannot renew the node lease");
        }
        if let Err(e) = write_status(&client, &config, true, ready_since).await {
            tracing::warn!(error = %e, "cannot write the node heartbeat");
        }
    }
}

/// Marks the node NotReady or deletes it, as configured.
pub(crate) async fn on_exit(client: &Client, config: &Config) -> Result<()> {
    let name = &config.node_name;
    match config.on_exit {
        OnExit::NotReady => {
            write_status(client, config, false, Timestamp::now()).await?;
            set_not_ready_taint(client, config, true).await?;
            tracing::info!(node = %name, "node marked NotReady");
        }
        OnExit::Delete => {
            let nodes: Api<Node> = Api::all(client.clone());
            nodes
                .delete(name, &Default::default())
                .await
                .map_err(|e| Error::kube(format!("deleting node {name}"), e))?;
            tracing::info!(node = %name, "node deleted");
        }
    }
    Ok(())
}

/// The node's labels: hostname, OS/arch, GPU feature-discovery labels, then the extra ones.
pub(crate) fn labels(config: &Config) -> BTreeMap<String, String> {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let mut labels: BTreeMap<String, String> = [
        ("kubernetes.io/hostname", config.node_name.clone()),
        ("kubernetes.io/os", "linux".into()),
        ("kubernetes.io/arch", arch.into()),
        ("nvidia.com/gpu.product", config.gpu_product.clone()),
        ("nvidia.com/gpu.memory", config.gpu_memory_mib.to_string()),
        ("nvidia.com/gpu.count", config.gpus.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    labels.extend(config.node_labels.clone());
    labels
}

/// The node's CPUs, as a quantity.
pub(crate) const CPU_CAPACITY: &str = "16";
/// The node's memory, as a quantity.
pub(crate) const MEMORY_CAPACITY: &str = "128Gi";

/// Capacity (= allocatable): 16 CPUs, 128Gi, 110 pods and the GPUs.
pub(crate) fn capacity(config: &Config) -> BTreeMap<String, Quantity> {
    [
        ("cpu", CPU_CAPACITY.to_string()),
        ("memory", MEMORY_CAPACITY.into()),
        ("pods", "110".into()),
        ("nvidia.com/gpu", config.gpus.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), Quantity(v)))
    .collect()
}

async fn write_status(
    client: &Client,
    config: &Config,
    ready: bool,
    since: Timestamp,
) -> Result<()> {
    let now = Time(Timestamp::now());
    let condition = |kind: &str, status: bool, reason: &str, message: &str| NodeCondition {
        type_: kind.into(),
        status: if status { "True" } else { "False" }.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_heartbeat_time: Some(now.clone()),
        last_transition_time: Some(Time(since)),
    };
    let ready_condition = if ready {
        condition(
            "Ready",
            true,
            "KubeletReady",
            "gpupool-kubelet is posting ready status",
        )
    } else {
        condition("Ready", false, "KubeletNotReady", "gpupool-kubelet stopped")
    };
    let status = NodeStatus {
        capacity: Some(capacity(config)),
        allocatable: Some(capacity(config)),
        conditions: Some(vec![
            ready_condition,
            condition("MemoryPressure", false, "KubeletHasSufficientMemory", "ok"),
            condition("DiskPressure", false, "KubeletHasNoDiskPressure", "ok"),
            condition("PIDPressure", false, "KubeletHasSufficientPID", "ok"),
        ]),
        addresses: Some(vec![
            NodeAddress {
                type_: "InternalIP".into(),
                address: config.host_ip.to_string(),
            },
            NodeAddress {
                type_: "Hostname".into(),
                address: config.node_name.clone(),
            },
        ]),
        node_info: Some(NodeSystemInfo {
            architecture: std::env::consts::ARCH.into(),
            operating_system: "linux".into(),
            os_image: "gpupool-kubelet stand-in".into(),
            kubelet_version: format!("v{}-gpupool-kubelet", env!("CARGO_PKG_VERSION")),
            container_runtime_version: "local-process://".into(),
            machine_id: config.node_name.clone(),
            system_uuid: config.node_name.clone(),
            ..NodeSystemInfo::default()
        }),
        ..NodeStatus::default()
    };
    let nodes: Api<Node> = Api::all(client.clone());
    let patch = Patch::Strategic(serde_json::json!({ "status": status }));
    let name = &config.node_name;
    nodes
        .patch_status(name, &PatchParams::default(), &patch)
        .await
        .map_err(|e| Error::kube(format!("writing the status of node {name}"), e))?;
    Ok(())
}

async fn renew_lease(client: &Client, config: &Config) -> Result<()> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), LEASE_NAMESPACE);
    let name = &config.node_name;
    let spec = LeaseSpec {
        holder_identity: Some(name.clone()),
        lease_duration_seconds: i32::try_from(config.lease_duration.as_secs()).ok(),
        renew_time: Some(MicroTime(Timestamp::now())),
        ..LeaseSpec::default()
    };
    let patch = Patch::Merge(serde_json::json!({ "spec": spec }));
    match leases.patch(name, &PatchParams::default(), &patch).await {
        Ok(_) => return Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(e) => return Err(Error::kube(format!("renewing lease {name}"), e)),
    }
    // The lease belongs to the node, so deleting the node removes it.
    let nodes: Api<Node> = Api::all(client.clone());
    let node = nodes
        .get(name)
        .await
        .map_err(|e| Error::kube(format!("reading node {name}"), e))?;
    let lease = Lease {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            owner_references: Some(vec![OwnerReference {
                api_version: "v1".into(),
                kind: "Node".into(),
                name: name.clone(),
                uid: node.metadata.uid.unwrap_or_default(),
                ..OwnerReference::default()
            }]),
            ..ObjectMeta::default()
        },
        spec: Some(spec),
    };
    leases
        .create(&PostParams::default(), &lease)
        .await
        .map_err(|e| Error::kube(format!("creating lease {name}"), e))?;
    tracing::info!(node = %name, "node lease created");
    Ok(())
}
