//! The operator against a real API server, controller-manager and scheduler: a pool becomes
//! children with owner references, pods that the scheduler binds to GPU nodes, and a status;
//! live-applicable edits change the ConfigMap only, restart-requiring ones roll the pods;
//! `kubectl scale` is followed; deletion is left to the garbage collector; an infeasible pool gets
//! a condition and an event and no Deployment.

mod common;

use anyhow::{bail, Result};
use common::{
    apply, checksum, count, deployment, eventually, pool, pool_yaml, set_max_batch, Operator,
};
use gpupool_api::sidecar::{SidecarConfig, SIDECAR_CONFIG_FILE};
use gpupool_api::status::ConditionType;
use gpupool_api::{ConditionStatus, InferencePool};
use gpupool_tests::nodes::create_gpu_nodes;
use gpupool_tests::ControlPlane;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use k8s_openapi::api::events::v1::Event;
use kube::api::{ApiResource, DynamicObject, ListParams};
use kube::{Api, Client, ResourceExt};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

fn condition(pool: &InferencePool, t: ConditionType) -> Option<gpupool_api::Condition> {
    pool.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == t)
        .cloned()
}

fn pdb_api(client: &Client, ns: &str) -> Api<DynamicObject> {
    let resource = ApiResource {
        group: "policy".into(),
        version: "v1beta1".into(),
        api_version: "policy/v1beta1".into(),
        kind: "PodDisruptionBudget".into(),
        plural: "poddisruptionbudgets".into(),
    };
    Api::namespaced_with(client.clone(), ns, &resource)
}

fn selector(name: &str) -> ListParams {
    ListParams::default().labels(&format!("gpupool.io/pool={name}"))
}

async fn config_document(client: &Client, ns: &str, name: &str) -> Result<SidecarConfig> {
    let cm = Api::<ConfigMap>::namespaced(client.clone(), ns)
        .get(&format!("{name}-config"))
        .await?;
    let text = cm
        .data
        .unwrap_or_default()
        .remove(SIDECAR_CONFIG_FILE)
        .unwrap_or_default();
    Ok(SidecarConfig::from_yaml(&text)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_gets_children_scheduled_pods_and_status() -> Result<()> {
    let cp = ControlPlane::shared();
    let ns = cp.namespace("op-apply")?;
    let client = cp.client().await?;
    // One node with two GPUs: of three replicas, two are bound and one stays Pending.
    let nodes = create_gpu_nodes(&client, &ns, 1, 2, &ns).await?;
    let _operator = Operator::start(cp, &ns, "op", &[])?;
    apply(cp, &ns, &pool_yaml("seg", &ns, 3, ""))?;

    let uid = pool(&client, &ns, "seg").await?.uid().unwrap_or_default();
    let d = deployment(&client, &ns, "seg").await?;
    let owned = |refs: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference]| {
        refs.len() == 1 && refs[0].uid == uid && refs[0].controller == Some(true)
    };
    assert!(owned(d.owner_references()), "{:?}", d.owner_references());
    let cm = Api::<ConfigMap>::namespaced(client.clone(), &ns)
        .get("seg-config")
        .await?;
    assert!(owned(cm.owner_references()));
    // The Service is applied right after the Deployment: wait for it rather than race it.
    let svc = eventually(WAIT, "the Service", || {
        let api = Api::<Service>::namespaced(client.clone(), &ns);
        async move { Ok(api.get_opt("seg").await?) }
    })
    .await?;
    assert!(owned(svc.owner_references()));
    let pdb = eventually(
        WAIT,
        "the PodDisruptionBudget (policy/v1beta1 on 1.20)",
        || {
            let api = pdb_api(&client, &ns);
            async move { Ok(api.get_opt("seg").await?) }
        },
    )
    .await?;
    assert!(owned(pdb.owner_references()));
    assert_eq!(pdb.data["spec"]["maxUnavailable"], 1);

    // The real controller-manager creates the pods, the real scheduler binds two of them.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let (bound, pending) = eventually(WAIT, "2 bound pods and 1 unschedulable", || {
        let pods = pods.clone();
        async move {
            let list = pods.list(&selector("seg")).await?.items;
            let bound: Vec<Pod> = list
                .iter()
                .filter(|p| node_of(p).is_some())
                .cloned()
                .collect();
            let pending: Vec<Pod> = list.iter().filter(|p| unschedulable(p)).cloned().collect();
            Ok((list.len() == 3 && bound.len() == 2 && pending.len() == 1)
                .then_some((bound, pending)))
        }
    })
    .await?;
    assert!(bound
        .iter()
        .all(|p| node_of(p) == Some(nodes[0].name.clone())));
    let gpu = &bound[0].spec.as_ref().expect("spec").containers[0]
        .resources
        .as_ref()
        .and_then(|r| r.limits.clone())
        .unwrap_or_default()["nvidia.com/gpu"];
    assert_eq!(gpu.0, "1");
    assert_eq!(
        pending[0]
            .status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .as_deref(),
        Some("Pending")
    );

    // Status: replicas and the plan, feasibility, and the scheduler's reason for the pending pod.
    let pool = eventually(
        WAIT,
        "status with 3 replicas and WaitingForCapacity",
        || {
            let client = client.clone();
            let ns = ns.clone();
            async move {
                let p = pool(&client, &ns, "seg").await?;
                let s = p.status.clone().unwrap_or_default();
                let waiting = condition(&p, ConditionType::Progressing)
                    .is_some_and(|c| c.reason == "WaitingForCapacity");
                Ok((s.replicas == 3 && s.plan.is_some() && waiting).then_some(p))
            }
        },
    )
    .await?;
    let status = pool.status.clone().unwrap_or_default();
    assert_eq!(status.observed_generation, pool.metadata.generation);
    assert_eq!(status.model_names.as_deref(), Some("unet"));
    assert_eq!(status.vram_budget.as_deref(), Some("24.00Gi"));
    assert!(status
        .selector
        .as_deref()
        .is_some_and(|s| s.contains("gpupool.io/pool=seg")));
    let feasible = condition(&pool, ConditionType::PlanFeasible).expect("PlanFeasible");
    assert_eq!(feasible.status, ConditionStatus::True);
    let progressing = condition(&pool, ConditionType::Progressing).expect("Progressing");
    assert!(
        progressing.message.contains("nvidia.com/gpu"),
        "{}",
        progressing.message
    );
    assert_eq!(
        condition(&pool, ConditionType::Ready).map(|c| c.status),
        Some(ConditionStatus::False)
    );

    let table = cp.kubectl().run_ok(&["-n", &ns, "get", "gpool"])?;
    let row: Vec<&str> = table
        .lines()
        .nth(1)
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(row.first(), Some(&"seg"), "{table}");
    assert!(
        row.contains(&"3") && row.contains(&"unet") && row.contains(&"24.00Gi"),
        "{table}"
    );
    gpupool_tests::nodes::delete_nodes(&client, &nodes).await?;
    Ok(())
}

fn node_of(pod: &Pod) -> Option<String> {
    pod.spec.as_ref()?.node_name.clone()
}

fn unschedulable(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                c.type_ == "PodScheduled"
                    && c.status == "False"
                    && c.reason.as_deref() == Some("Unschedulable")
            })
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_edits_keep_the_pods_and_restart_edits_roll_them() -> Result<()> {
    let cp = ControlPlane::shared();
    let ns = cp.namespace("op-edit")?;
    let client = cp.client().await?;
    let nodes = create_gpu_nodes(&client, &ns, 1, 2, &ns).await?;
    let _operator = Operator::start(cp, &ns, "op", &[])?;
    apply(cp, &ns, &pool_yaml("seg", &ns, 1, ""))?;
    let before = deployment(&client, &ns, "seg").await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let first_pods = eventually(WAIT, "one pod", || {
        let pods = pods.clone();
        async move {
            let names: Vec<String> = pods
                .list(&selector("seg"))
                .await?
                .items
                .iter()
                .map(|p| p.name_any())
                .collect();
            Ok((names.len() == 1).then_some(names))
        }
    })
    .await?;
    let old = config_document(&client, &ns, "seg").await?;
    assert!(old.models[0].max_batch > 2, "{old:?}");

    // maxBatch applies live: the ConfigMap changes, the pod template does not.
    set_max_batch(cp, &ns, "seg", 2)?;
    let generation = pool(&client, &ns, "seg")
        .await?
        .metadata
        .generation
        .unwrap_or_default();
    let new = eventually(WAIT, "the ConfigMap to carry maxBatch 2", || {
        let client = client.clone();
        let ns = ns.clone();
        async move {
            let doc = config_document(&client, &ns, "seg").await?;
            Ok((doc.generation == generation).then_some(doc))
        }
    })
    .await?;
    assert!(new.models[0].max_batch <= 2, "{new:?}");
    assert!(old.can_apply_live(&new));
    let after = Api::<Deployment>::namespaced(client.clone(), &ns)
        .get("seg")
        .await?;
    assert_eq!(checksum(&after), checksum(&before));
    assert_eq!(
        after.metadata.generation, before.metadata.generation,
        "the Deployment is untouched"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let now: Vec<String> = pods
        .list(&selector("seg"))
        .await?
        .items
        .iter()
        .map(|p| p.name_any())
        .collect();
    assert_eq!(now, first_pods, "no pod was replaced");

    // A new image needs new processes: the template changes and a new ReplicaSet rolls out.
    let patch = r#"{"spec":{"pod":{"image":"gpupool/sidecar:next"}}}"#;
    cp.kubectl().run_ok(&[
        "-n",
        &ns,
        "patch",
        "gpool",
        "seg",
        "--type=merge",
        "-p",
        patch,
    ])?;
    let rolled = eventually(WAIT, "the Deployment to take the new image", || {
        let api = Api::<Deployment>::namespaced(client.clone(), &ns);
        async move {
            let d = api.get("seg").await?;
            let image = d
                .spec
                .as_ref()
                .and_then(|s| s.template.spec.as_ref())
                .and_then(|p| p.containers[0].image.clone());
            Ok((image.as_deref() == Some("gpupool/sidecar:next")).then_some(d))
        }
    })
    .await?;
    assert_eq!(
        checksum(&rolled),
        checksum(&before),
        "the image is not in the restart key"
    );
    eventually(WAIT, "a second ReplicaSet and a new pod", || {
        let rs = Api::<ReplicaSet>::namespaced(client.clone(), &ns);
        let pods = pods.clone();
        let first = first_pods.clone();
        async move {
            let sets = rs.list(&selector("seg")).await?.items.len();
            let names: Vec<String> = pods
                .list(&selector("seg"))
                .await?
                .items
                .iter()
                .map(|p| p.name_any())
                .collect();
            Ok((sets == 2 && names.iter().any(|n| !first.contains(n))).then_some(()))
        }
    })
    .await?;
    gpupool_tests::nodes::delete_nodes(&client, &nodes).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_scale_is_followed_and_deletion_collects_everything() -> Result<()> {
    let cp = ControlPlane::shared();
    let ns = cp.namespace("op-scale")?;
    let client = cp.client().await?;
    // No node offers this product: pods stay unscheduled, so deletion needs no kubelet.
    let _operator = Operator::start(cp, &ns, "op", &[])?;
    apply(cp, &ns, &pool_yaml("seg", &format!("{ns}-none"), 1, ""))?;
    deployment(&client, &ns, "seg").await?;
    cp.kubectl()
        .run_ok(&["-n", &ns, "scale", "gpool", "seg", "--replicas=3"])?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    eventually(WAIT, "the Deployment to follow to 3 replicas", || {
        let api = deployments.clone();
        async move { Ok((api.get("seg").await?.spec.and_then(|s| s.replicas) == Some(3)).then_some(())) }
    })
    .await?;
    eventually(WAIT, "status.replicas 3 (scale subresource)", || {
        let client = client.clone();
        let ns = ns.clone();
        async move {
            let out = pool(&client, &ns, "seg").await?;
            Ok((out.status.map(|s| s.replicas) == Some(3)).then_some(()))
        }
    })
    .await?;
    let scale = cp.kubectl().run_ok(&[
        "-n",
        &ns,
        "get",
        "--raw",
        &format!("/apis/gpupool.io/v1alpha1/namespaces/{ns}/inferencepools/seg/scale"),
    ])?;
    let scale: serde_json::Value = serde_json::from_str(&scale)?;
    assert_eq!(scale["status"]["replicas"], 3);
    assert!(scale["status"]["selector"]
        .as_str()
        .is_some_and(|s| s.contains("gpupool.io/pool=seg")));

    cp.kubectl()
        .run_ok(&["-n", &ns, "delete", "gpool", "seg", "--wait=true"])?;
    eventually(
        WAIT,
        "the garbage collector to delete everything the pool owned",
        || {
            let client = client.clone();
            let ns = ns.clone();
            async move {
                let lp = selector("seg");
                let left = [
                    count::<Deployment>(&client, &ns, &lp).await?,
                    count::<ReplicaSet>(&client, &ns, &lp).await?,
                    count::<Pod>(&client, &ns, &lp).await?,
                    count::<ConfigMap>(&client, &ns, &lp).await?,
                    count::<Service>(&client, &ns, &lp).await?,
                    pdb_api(&client, &ns).list(&lp).await?.items.len(),
                ];
                Ok((left.iter().all(|n| *n == 0)).then_some(()))
            }
        },
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_infeasible_pool_says_why_and_deploys_nothing() -> Result<()> {
    let cp = ControlPlane::shared();
    let ns = cp.namespace("op-infeasible")?;
    let client = cp.client().await?;
    let operator = Operator::start(cp, &ns, "op", &[])?;
    // 10 billion parameters at fp16 are 20 GB of weights: far beyond a 4Gi budget.
    let huge =
        pool_yaml("big", &ns, 1, "").replace("parameters: 31000000", "parameters: 10000000000");
    let small_budget = huge.replace("memoryBudget: 24Gi", "memoryBudget: 4Gi");
    apply(cp, &ns, &small_budget)?;
    let feasible = eventually(WAIT, "PlanFeasible=False", || {
        let client = client.clone();
        let ns = ns.clone();
        async move {
            let p = pool(&client, &ns, "big").await?;
            Ok(condition(&p, ConditionType::PlanFeasible)
                .filter(|c| c.status == ConditionStatus::False))
        }
    })
    .await?;
    assert_eq!(feasible.reason, "InsufficientMemory");
    assert!(
        feasible.message.contains("short by"),
        "{}",
        feasible.message
    );
    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    let event = eventually(WAIT, "a PlanInfeasible event", || {
        let events = events.clone();
        async move {
            let list = events.list(&ListParams::default()).await?.items;
            Ok(list
                .into_iter()
                .find(|e| e.reason.as_deref() == Some("PlanInfeasible")))
        }
    })
    .await?;
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    assert!(event.note.unwrap_or_default().contains("short by"));
    assert_eq!(event.regarding.and_then(|r| r.name).as_deref(), Some("big"));
    // Give the operator time to (wrongly) create something, then check it did not.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    assert!(
        deployments.get_opt("big").await?.is_none(),
        "no Deployment for an infeasible plan"
    );
    assert!(Api::<ConfigMap>::namespaced(client.clone(), &ns)
        .get_opt("big-config")
        .await?
        .is_none());
    // Waiting for a spec change, not retrying in a loop.
    let reconciles = operator.reconciles();
    let errors_before = operator.log().matches("waiting for a spec change").count();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let errors_after = operator.log().matches("waiting for a spec change").count();
    if errors_after > errors_before + 1 {
        bail!(
            "the operator retries a permanent error in a loop ({errors_before} → {errors_after})"
        );
    }
    assert_eq!(operator.reconciles(), reconciles);

    // Fixing the budget deploys; breaking it again keeps the running pods and says Degraded.
    apply(
        cp,
        &ns,
        &huge.replace("memoryBudget: 24Gi", "memoryBudget: 70Gi"),
    )?;
    let d = deployment(&client, &ns, "big").await?;
    apply(cp, &ns, &small_budget)?;
    let degraded = eventually(WAIT, "Degraded=ServingPreviousPlan", || {
        let client = client.clone();
        let ns = ns.clone();
        async move {
            let p = pool(&client, &ns, "big").await?;
            Ok(condition(&p, ConditionType::Degraded)
                .filter(|c| c.reason == "ServingPreviousPlan")
                .map(|_| p))
        }
    })
    .await?;
    assert!(
        degraded.status.and_then(|s| s.plan).is_some(),
        "the plan in force is still reported"
    );
    let kept = deployments.get("big").await?;
    assert_eq!(kept.metadata.uid, d.metadata.uid);
    assert_eq!(
        checksum(&kept),
        checksum(&d),
        "the running pods keep their config"
    );
    Ok(())
}
