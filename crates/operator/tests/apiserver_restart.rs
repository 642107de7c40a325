//! The API server goes away in the middle of reconciling and comes back: the operator keeps
//! running (its renew deadline outlasts the outage), its watches recover, and the pool converges
//! with exactly one of each child.

mod common;

use anyhow::Result;
use common::{apply, eventually, pool_yaml, set_max_batch, Operator};
use gpupool_api::sidecar::{SidecarConfig, SIDECAR_CONFIG_FILE};
use gpupool_api::InferencePool;
use gpupool_tests::ControlPlane;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::api::ListParams;
use kube::{Api, Client};
use std::time::Duration;

async fn counts(client: &Client, ns: &str) -> Result<[usize; 4]> {
    let lp = ListParams::default().labels("gpupool.io/pool=seg");
    Ok([
        Api::<Deployment>::namespaced(client.clone(), ns)
            .list(&lp)
            .await?
            .items
            .len(),
        Api::<ReplicaSet>::namespaced(client.clone(), ns)
            .list(&lp)
            .await?
            .items
            .len(),
        Api::<ConfigMap>::namespaced(client.clone(), ns)
            .list(&lp)
            .await?
            .items
            .len(),
        Api::<Service>::namespaced(client.clone(), ns)
            .list(&lp)
            .await?
            .items
            .len(),
    ])
}

async fn converged(client: &Client, ns: &str, max_batch: u32) -> Result<Option<()>> {
    let pool = Api::<InferencePool>::namespaced(client.clone(), ns)
        .get("seg")
        .await?;
    let status = pool.status.clone().unwrap_or_default();
    if status.observed_generation != pool.metadata.generation || status.plan.is_none() {
        return Ok(None);
    }
    let Some(cm) = Api::<ConfigMap>::namespaced(client.clone(), ns)
        .get_opt("seg-config")
        .await?
    else {
        return Ok(None);
    };
    let doc = SidecarConfig::from_yaml(
        cm.data
            .unwrap_or_default()
            .get(SIDECAR_CONFIG_FILE)
            .map_or("", |s| s),
    )?;
    let current =
        Some(doc.generation) == pool.metadata.generation && doc.models[0].max_batch <= max_batch;
    Ok((current && counts(client, ns).await? == [1, 1, 1, 1]).then_some(()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_converges_after_the_api_server_returns() -> Result<()> {
    let cp = ControlPlane::private()?;
    let ns = cp.namespace("op-restart")?;
    let client = cp.client().await?;
    // A renew deadline longer than the outage: the leader keeps its Lease through it.
    let mut operator = Operator::start(
        &cp,
        &ns,
        "op",
        &[
            "--lease-duration",
            "40s",
            "--renew-deadline",
            "30s",
            "--retry-period",
            "2s",
        ],
    )?;
    eventually(Duration::from_secs(30), "leadership", || {
        let log = operator.log();
        async move { Ok(log.contains("acquired leadership").then_some(())) }
    })
    .await?;
    apply(&cp, &ns, &pool_yaml("seg", &format!("{ns}-none"), 1, ""))?;
    // Pull the API server away while the first reconcile is under way.
    tokio::time::sleep(Duration::from_millis(300)).await;
    cp.restart_apiserver(Duration::from_secs(3))?;

    let client = {
        // The old client's connections died with the server; a fresh one for the checks.
        drop(client);
        cp.client().await?
    };
    eventually(
        Duration::from_secs(90),
        "the pool to converge after the restart",
        || {
            let client = client.clone();
            let ns = ns.clone();
            async move { converged(&client, &ns, 8).await }
        },
    )
    .await?;
    assert!(
        operator.exited().is_none(),
        "the operator survived the outage:\n{}",
        operator.log()
    );

    // Watches work again: a live edit made after the restart reaches the ConfigMap.
    set_max_batch(&cp, &ns, "seg", 2)?;
    eventually(
        Duration::from_secs(60),
        "the edit after the restart to converge",
        || {
            let client = client.clone();
            let ns = ns.clone();
            async move { converged(&client, &ns, 2).await }
        },
    )
    .await?;
    assert_eq!(
        counts(&client, &ns).await?,
        [1, 1, 1, 1],
        "no duplicate objects"
    );
    Ok(())
}
