//! The whole loop, for real: local control plane, GPU nodes played by the kubelet stand-in, the
//! operator process, a pool of real TorchScript models served by real sidecar processes, closed-loop
//! HTTP traffic, queue telemetry driving a scale-out, the new replica Pending for want of a GPU,
//! and a new node (what a cluster autoscaler adds) letting it run.

use gpupool_tests::binaries::workspace_binary;
use gpupool_tests::kubelet::{Config, ImageCommands, Kubelet, PodCidr};
use gpupool_tests::loadgen::{run, LoadSpec};
use gpupool_tests::models::TinyModel;
use gpupool_tests::ControlPlane;
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::Api;
use serde_json::Value;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SIDECAR_IMAGE: &str = "ghcr.io/gpupool/sidecar:e2e";

struct Operator(Child);
impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn kubelet_config(node: &str, state: &std::path::Path) -> anyhow::Result<Config> {
    let mut config = Config::new(node);
    config.gpus = 1;
    config.pod_cidr = PodCidr::unique_for_tests();
    config.state_dir = state.join(node);
    config.images =
        ImageCommands::default().map(SIDECAR_IMAGE, workspace_binary("gpupool-sidecar")?);
    config.heartbeat_interval = Duration::from_secs(2);
    Ok(config)
}

fn pool_yaml(model_path: &std::path::Path) -> String {
    format!(
        r#"apiVersion: gpupool.io/v1alpha1
kind: InferencePool
metadata:
  name: loop
spec:
  replicas: 1
  concurrency: {{targetUsers: 4}}
  gpu: {{memoryBudget: 8Gi, reservedHeadroom: 1Gi, cardMemory: 16Gi}}
  scaling:
    minReplicas: 1
    maxReplicas: 2
    targetQueuePerReplica: 4
    scaleUpStabilizationSeconds: 2
    scaleDownStabilizationSeconds: 600
  pod: {{image: "{SIDECAR_IMAGE}"}}
  models:
  - name: unet_spherohq
    source: {{uri: "{}"}}
    input: {{width: 384, height: 384}}
    precision: fp32
    maxBatch: 1
"#,
        model_path.display()
    )
}

async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn pool_json(cp: &ControlPlane, ns: &str) -> Value {
    let out = cp
        .kubectl()
        .run_ok(&["-n", ns, "get", "gpool", "loop", "-o", "json"])
        .unwrap_or_default();
    serde_json::from_str(&out).unwrap_or(Value::Null)
}

fn condition(pool: &Value, kind: &str) -> Option<String> {
    pool["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
        .and_then(|c| c["status"].as_str().map(str::to_owned))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn traffic_scales_the_pool_out_and_a_new_node_takes_the_pending_replica() {
    let cp = ControlPlane::shared();
    let ns = cp.namespace("e2e").expect("namespace");
    let client = cp.client().await.expect("client");
    let state = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("state dir");
    // Batch 1 at 384×384 keeps the engine the bottleneck (not decoding), so requests queue there.
    let model = TinyModel::new("unet_spherohq", 384).path().expect("model");

    let node_a = format!("e2e-gpu-a-{}", std::process::id());
    let kubelet_a = Kubelet::start(
        client.clone(),
        kubelet_config(&node_a, state.path()).expect("config"),
    )
    .await
    .expect("kubelet a");
    let _operator = Operator(
        Command::new(workspace_binary("gpupool-operator").expect("operator binary"))
            .env("KUBECONFIG", cp.kubeconfig())
            .args([
                "--namespace",
                &ns,
                "--lease-namespace",
                &ns,
                "--http-addr",
                "127.0.0.1:0",
            ])
            .args([
                "--telemetry-interval",
                "1s",
                "--telemetry-timeout",
                "500ms",
                "--log-format",
                "text",
            ])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(state.path().join("operator.log")).expect("log"))
            .spawn()
            .expect("start operator"),
    );

    let applied = cp
        .kubectl()
        .apply(&ns, &pool_yaml(&model))
        .expect("kubectl");
    assert!(applied.success, "{}", applied.stderr);
    wait_until("the pool to be Ready", Duration::from_secs(180), || async {
        condition(&pool_json(cp, &ns), "Ready").as_deref() == Some("True")
    })
    .await;
    let pool = pool_json(cp, &ns);
    assert_eq!(pool["status"]["readyReplicas"], 1);
    assert!(
        pool["status"]["plan"]["models"][0]["batchSize"]
            .as_u64()
            .is_some(),
        "{pool}"
    );

    // Closed-loop traffic against the ready pod.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let list = pods
        .list(&ListParams::default().labels("gpupool.io/pool=loop"))
        .await
        .expect("pods");
    let ip = list
        .items
        .iter()
        .find_map(|p| p.status.as_ref()?.pod_ip.clone())
        .expect("a pod IP");
    let image = gpupool_tests::images::spheroid_png(320, 240);
    let load = tokio::spawn(run(LoadSpec {
        targets: vec![format!("http://{ip}:8080")],
        models: vec!["unet_spherohq".into()],
        image: Arc::new(image),
        file_name: "spheroids.png".into(),
        clients: 16,
        duration: Duration::from_secs(40),
        warmup_requests: 1,
    }));

    // The queue telemetry makes the operator ask for a second replica; one GPU node means it is
    // Pending, unschedulable — the signal a cluster autoscaler acts on.
    wait_until(
        "a scale-out to 2 replicas",
        Duration::from_secs(120),
        || async { pool_json(cp, &ns)["spec"]["replicas"] == 2 },
    )
    .await;
    wait_until(
        "an unschedulable Pending replica",
        Duration::from_secs(30),
        || async {
            let out = cp
                .kubectl()
                .run(&[
                    "-n",
                    &ns,
                    "get",
                    "pods",
                    "--field-selector=status.phase=Pending",
                    "-o",
                    "json",
                ])
                .map(|o| o.stdout)
                .unwrap_or_default();
            out.contains("Insufficient nvidia.com/gpu")
        },
    )
    .await;

    // "The autoscaler adds a node": the pending replica is scheduled there and becomes ready.
    let node_b = format!("e2e-gpu-b-{}", std::process::id());
    let kubelet_b = Kubelet::start(
        client.clone(),
        kubelet_config(&node_b, state.path()).expect("config"),
    )
    .await
    .expect("kubelet b");
    wait_until("two ready replicas", Duration::from_secs(120), || async {
        pool_json(cp, &ns)["status"]["readyReplicas"] == 2
    })
    .await;

    let report = load.await.expect("load task").expect("load ran");
    assert!(report.ok > 0, "{report:?}");
    let failures: u64 = report
        .status_counts
        .iter()
        .filter(|(s, _)| !(200..300).contains(*s))
        .map(|(_, n)| n)
        .sum();
    assert_eq!(
        failures, 0,
        "requests failed during the scale-out: {report:?}"
    );
    let pool = pool_json(cp, &ns);
    assert!(
        pool["status"]["telemetry"]["podsReporting"]
            .as_u64()
            .unwrap_or(0)
            >= 1,
        "{pool}"
    );
    let events = cp
        .kubectl()
        .run_ok(&["-n", &ns, "get", "events", "-o", "json"])
        .expect("events");
    assert!(events.contains("Scaled"), "no Scaled event");

    kubelet_b.shutdown().await.expect("kubelet b stops");
    kubelet_a.shutdown().await.expect("kubelet a stops");
    let _ = cp
        .kubectl()
        .run(&["-n", &ns, "delete", "gpool", "loop", "--wait=false"]);
}
