//! GPU Node objects for tests in which no kubelet runs: each advertises `nvidia.com/gpu`
//! capacity and allocatable, reports Ready, and carries the `nvidia.com/gpu.product` label, so the
//! real scheduler binds GPU pods to it (and leaves pods beyond its capacity Pending).
//!
//! Nodes are cluster-wide while tests share one control plane: give each test its own product
//! (e.g. the test's namespace) and let its pools select that product, so no test's pods land on
//! another test's nodes. Nothing keeps these Nodes' heartbeats fresh; the local control plane
//! runs no node-lifecycle controller, so they stay Ready (and the `not-ready` taint the API
//! server's admission puts on new Nodes is removed here, as that controller would).

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::{Node, NodeCondition, NodeStatus};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use std::collections::BTreeMap;

/// Label every node made here carries (to find and delete them).
pub const TEST_NODE_LABEL: &str = "gpupool.io/test-node";
/// Node label holding the GPU product.
pub const GPU_PRODUCT_LABEL: &str = "nvidia.com/gpu.product";

/// What one fake GPU node offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuNode {
    /// Node name.
    pub name: String,
    /// Value of the `nvidia.com/gpu.product` label.
    pub product: String,
    /// GPUs advertised (capacity and allocatable).
    pub gpus: u32,
    /// Extended resource name of the GPUs.
    pub resource_name: String,
}

impl GpuNode {
    /// A node with two `nvidia.com/gpu` of `product`.
    pub fn new(name: impl Into<String>, product: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            product: product.into(),
            gpus: 2,
            resource_name: "nvidia.com/gpu".into(),
        }
    }

    /// The same node with `gpus` GPUs.
    pub fn with_gpus(mut self, gpus: u32) -> Self {
        self.gpus = gpus;
        self
    }

    /// The Node object, status included (the API server keeps a Node's status on create).
    pub fn object(&self) -> Node {
        let now = Time(Timestamp::now());
        let resources = BTreeMap::from([
            ("cpu".to_string(), Quantity("16".into())),
            ("memory".to_string(), Quantity("64Gi".into())),
            ("pods".to_string(), Quantity("110".into())),
            (self.resource_name.clone(), Quantity(self.gpus.to_string())),
        ]);
        Node {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                labels: Some(BTreeMap::from([
                    ("kubernetes.io/hostname".to_string(), self.name.clone()),
                    ("kubernetes.io/os".to_string(), "linux".to_string()),
                    ("kubernetes.io/arch".to_string(), "amd64".to_string()),
                    (GPU_PRODUCT_LABEL.to_string(), self.product.clone()),
                    (TEST_NODE_LABEL.to_string(), "true".to_string()),
                ])),
                ..ObjectMeta::default()
            },
            spec: None,
            status: Some(NodeStatus {
                capacity: Some(resources.clone()),
                allocatable: Some(resources),
                conditions: Some(vec![NodeCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    reason: Some("KubeletReady".into()),
                    message: Some("a test node; no kubelet runs".into()),
                    last_heartbeat_time: Some(now.clone()),
                    last_transition_time: Some(now),
                }]),
                ..NodeStatus::default()
            }),
        }
    }

    /// Creates the Node (replacing its status if it exists already) and returns it as stored.
    pub async fn create(&self, client: &Client) -> Result<Node> {
        let nodes: Api<Node> = Api::all(client.clone());
        let wanted = self.object();
        let created = match nodes.create(&PostParams::default(), &wanted).await {
            Ok(node) => node,
            Err(kube::Error::Api(e)) if e.code == 409 => {
                let mut existing = nodes.get(&self.name).await?;
                existing.metadata.labels = wanted.metadata.labels.clone();
                existing = nodes
                    .replace(&self.name, &PostParams::default(), &existing)
                    .await?;
                existing.status = wanted.status.clone();
                nodes
                    .replace_status(&self.name, &PostParams::default(), &existing)
                    .await?
            }
            Err(e) => return Err(e).with_context(|| format!("creating node {}", self.name)),
        };
        // The TaintNodesByCondition admission plugin taints every new Node not-ready; the node
        // lifecycle controller that would lift it once Ready does not run here, so lift it.
        let untainted = nodes
            .patch(
                &self.name,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({ "spec": { "taints": null } })),
            )
            .await
            .with_context(|| format!("removing the not-ready taint of node {}", self.name))?;
        let created = Node {
            status: untainted.status.or(created.status),
            ..untainted
        };
        // Some servers drop status on create; make sure the capacity is there.
        if created
            .status
            .as_ref()
            .and_then(|s| s.allocatable.as_ref())
            .is_none()
        {
            let mut node = created;
            node.status = wanted.status;
            return Ok(nodes
                .replace_status(&self.name, &PostParams::default(), &node)
                .await?);
        }
        Ok(created)
    }
}

/// Creates `count` nodes named `<prefix>-<i>` with `gpus` GPUs each of `product`.
pub async fn create_gpu_nodes(
    client: &Client,
    prefix: &str,
    count: usize,
    gpus: u32,
    product: &str,
) -> Result<Vec<GpuNode>> {
    let mut nodes = Vec::with_capacity(count);
    for i in 0..count {
        let node = GpuNode::new(format!("{prefix}-{i}"), product).with_gpus(gpus);
        node.create(client).await?;
        nodes.push(node);
    }
    Ok(nodes)
}

/// Deletes the nodes (missing ones are fine).
pub async fn delete_nodes(client: &Client, nodes: &[GpuNode]) -> Result<()> {
    let api: Api<Node> = Api::all(client.clone());
    for node in nodes {
        match api.delete(&node.name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e).with_context(|| format!("deleting node {}", node.name)),
        }
    }
    Ok(())
}
