//! The kubelet stand-in against a real API server, scheduler and controller manager: pods bound
//! to its node run as real processes on their own loopback addresses, report Running/Ready, are
//! probed, restarted, refreshed on ConfigMap changes and stopped on deletion.

use gpupool_tests::kubelet::{http_get, Config, ImageCommands, Kubelet, PodCidr};
use gpupool_tests::ControlPlane;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, Client};
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const IMAGE: &str = "gpupool-test/standin";

fn fixture() -> PathBuf {
    gpupool_tests::repo_root().join("tests/fixtures/standin-server.py")
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "gpupool_tests=info".into()),
        )
        .with_test_writer()
        .try_init();
}

fn state_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("kubelet-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("state dir")
}

/// A stand-in config for tests: fast heartbeat and backoff, the fixture server as IMAGE.
fn config(node: &str, gpus: u32, state: &Path) -> Config {
    let mut config = Config::new(node);
    config.gpus = gpus;
    config.pod_cidr = PodCidr::unique_for_tests();
    config.state_dir = state.to_path_buf();
    config.images = ImageCommands::default().map(IMAGE, fixture());
    config.heartbeat_interval = Duration::from_secs(2);
    config.restart_backoff = Duration::from_millis(500);
    config
}

/// Polls `check` every 250 ms until it yields a value; panics after `timeout`.
async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn condition<'p>(pod: &'p Pod, kind: &str) -> Option<&'p k8s_openapi::api::core::v1::PodCondition> {
    let conditions = pod.status.as_ref()?.conditions.as_ref()?;
    conditions.iter().find(|c| c.type_ == kind)
}

fn running_and_ready(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    phase == Some("Running") && condition(pod, "Ready").is_some_and(|c| c.status == "True")
}

fn name(pod: &Pod) -> String {
    pod.metadata.name.clone().unwrap_or_default()
}

fn uid(pod: &Pod) -> String {
    pod.metadata.uid.clone().unwrap_or_default()
}

fn pod_ip(pod: &Pod) -> Ipv4Addr {
    let ip = pod
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.as_deref())
        .unwrap_or_default();
    ip.parse()
        .unwrap_or_else(|_| panic!("pod {} has no IPv4 podIP: {ip:?}", name(pod)))
}

/// The pid behind `containerID: pid://<pid>`.
fn pid(pod: &Pod) -> Option<u32> {
    let status = pod.status.as_ref()?.container_statuses.as_ref()?.first()?;
    status
        .container_id
        .as_deref()?
        .strip_prefix("pid://")?
        .parse()
        .ok()
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

async fn get(ip: Ipv4Addr, path: &str) -> Option<(u16, String)> {
    let addr = SocketAddr::from((ip, 8080));
    let response = http_get(addr, path, &[], Duration::from_secs(2))
        .await
        .ok()?;
    Some((response.status, response.body))
}

async fn get_json(ip: Ipv4Addr) -> serde_json::Value {
    let (status, body) = get(ip, "/").await.expect("pod answers over HTTP");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("JSON body")
}

async fn pods(api: &Api<Pod>, selector: &str) -> Vec<Pod> {
    let list = api.list(&ListParams::default().labels(selector)).await;
    list.map(|l| l.items).unwrap_or_default()
}

fn deployment(node: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: ConfigMap
metadata: {{name: standin-config}}
data:
  a-measurements.json: "{{}}"
  sidecar.yaml: "generation: 1\n"
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: standin}}
spec:
  replicas: 3
  selector: {{matchLabels: {{app: standin}}}}
  template:
    metadata: {{labels: {{app: standin}}}}
    spec:
      nodeSelector: {{kubernetes.io/hostname: {node}}}
      terminationGracePeriodSeconds: 5
      containers:
      - name: server
        image: {IMAGE}:1.0
        ports: [{{name: http, containerPort: 8080}}]
        env:
        - {{name: STANDIN_CONFIG, value: /etc/standin/sidecar.yaml}}
        - name: POD_NAME
          valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}
        readinessProbe:
          httpGet: {{path: /readyz, port: http}}
          periodSeconds: 1
        resources:
          limits: {{nvidia.com/gpu: "1"}}
        volumeMounts:
        - {{name: config, mountPath: /etc/standin}}
      volumes:
      - name: config
        configMap: {{name: standin-config}}
"#
    )
}

/// What every test here starts from: the shared control plane, a namespace of its own, a client,
/// a node name derived from the namespace, and a state directory for the stand-in.
struct Setup {
    cp: &'static ControlPlane,
    ns: String,
    client: Client,
    node: String,
    state: tempfile::TempDir,
}

async fn setup(prefix: &str) -> Setup {
    init_tracing();
    let cp = ControlPlane::shared();
    let ns = cp.namespace(prefix).expect("namespace");
    let client: Client = cp.client().await.expect("client");
    let node = format!("standin-{ns}");
    Setup {
        cp,
        ns,
        client,
        node,
        state: state_dir(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_runs_schedules_reloads_and_replaces_pods_on_the_standin_node() {
    let Setup {
        cp,
        ns,
        client,
        node,
        state,
    } = setup("kubelet-e2e").await;
    let kubelet = Kubelet::start(client.clone(), config(&node, 2, state.path()))
        .await
        .expect("kubelet starts");

    // The node: capacity, labels, Ready, and a lease.
    let nodes: Api<Node> = Api::all(client.clone());
    let n = nodes.get(&node).await.expect("node registered");
    let labels = n.metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels.get("kubernetes.io/hostname"), Some(&node));
    assert_eq!(
        labels.get("nvidia.com/gpu.product").map(String::as_str),
        Some("NVIDIA-H200")
    );
    assert_eq!(
        labels.get("nvidia.com/gpu.memory").map(String::as_str),
        Some("143771")
    );
    let status = n.status.clone().unwrap_or_default();
    let capacity = status.capacity.clone().unwrap_or_default();
    assert_eq!(
        capacity.get("nvidia.com/gpu").map(|q| q.0.as_str()),
        Some("2")
    );
    assert_eq!(capacity.get("memory").map(|q| q.0.as_str()), Some("128Gi"));
    let ready = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Ready");
    assert_eq!(ready.map(|c| c.status.as_str()), Some("True"));
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    wait_for("the node lease", Duration::from_secs(10), || async {
        let lease = leases.get_opt(&node).await.ok().flatten()?;
        let spec = lease.spec?;
        (spec.holder_identity.as_deref() == Some(node.as_str()) && spec.renew_time.is_some())
            .then_some(())
    })
    .await;

    let out = cp
        .kubectl()
        .apply(&ns, &deployment(&node))
        .expect("kubectl");
    assert!(out.success, "{}", out.stderr);
    let api: Api<Pod> = Api::namespaced(client.clone(), &ns);

    // Two pods fit the two GPUs and come up Ready; the third stays Pending, unschedulable.
    let (ready, pending) = wait_for(
        "2 ready pods and 1 unschedulable",
        Duration::from_secs(60),
        || async {
            let all = pods(&api, "app=standin").await;
            let ready: Vec<Pod> = all
                .iter()
                .filter(|p| running_and_ready(p))
                .cloned()
                .collect();
            let pending: Vec<Pod> = all
                .iter()
                .filter(|p| condition(p, "PodScheduled").is_some_and(|c| c.status == "False"))
                .cloned()
                .collect();
            (ready.len() == 2 && pending.len() == 1 && all.len() == 3).then_some((ready, pending))
        },
    )
    .await;
    let unschedulable = condition(&pending[0], "PodScheduled")
        .cloned()
        .unwrap_or_default();
    assert_eq!(unschedulable.reason.as_deref(), Some("Unschedulable"));
    let message = unschedulable.message.unwrap_or_default();
    assert!(message.contains("Insufficient nvidia.com/gpu"), "{message}");
    assert_eq!(
        pending[0].status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Pending")
    );

    let ips: Vec<Ipv4Addr> = ready.iter().map(pod_ip).collect();
    assert_ne!(ips[0], ips[1]);
    let mut gpus = Vec::new();
    for (pod, ip) in ready.iter().zip(&ips) {
        assert_eq!(ip.octets()[0], 127, "{ip}");
        let status = pod.status.clone().unwrap_or_default();
        assert_eq!(status.host_ip.as_deref(), Some("127.0.0.1"));
        assert!(status.start_time.is_some());
        let cs = &status.container_statuses.clone().unwrap_or_default()[0];
        assert!(
            cs.ready && cs.started == Some(true) && cs.restart_count == 0,
            "{cs:?}"
        );
        assert!(
            cs.state.as_ref().and_then(|s| s.running.as_ref()).is_some(),
            "{cs:?}"
        );
        for kind in ["PodScheduled", "Initialized", "ContainersReady", "Ready"] {
            assert_eq!(
                condition(pod, kind).map(|c| c.status.as_str()),
                Some("True"),
                "{kind}"
            );
        }
        let body = get_json(*ip).await;
        assert_eq!(body["env"]["POD_NAME"], name(pod));
        assert_eq!(body["env"]["GPUPOOL_POD_IP"], ip.to_string());
        assert_eq!(body["listen"], format!("{ip}:8080"));
        assert_eq!(body["config"], "generation: 1\n");
        let config_path = body["config_path"].as_str().unwrap_or_default().to_string();
        let expected = kubelet
            .config()
            .pod_dir(&uid(pod))
            .join("volumes/config/sidecar.yaml");
        assert_eq!(PathBuf::from(&config_path), expected);
        gpus.push(
            body["env"]["NVIDIA_VISIBLE_DEVICES"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
        let log = kubelet
            .config()
            .log_path(&ns, &name(pod), &uid(pod), "server");
        let log = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(log.contains("standin: serving on"), "{log}");
    }
    gpus.sort();
    assert_eq!(gpus, ["0", "1"]);

    // A ConfigMap change reaches the mounted file (and the process reading it).
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let patch = serde_json::json!({"data": {"sidecar.yaml": "generation: 2\n"}});
    configmaps
        .patch(
            "standin-config",
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await
        .expect("configmap patched");
    let file = kubelet
        .config()
        .pod_dir(&uid(&ready[0]))
        .join("volumes/config/sidecar.yaml");
    wait_for(
        "the config file to change",
        Duration::from_secs(20),
        || async { (std::fs::read_to_string(&file).ok()? == "generation: 2\n").then_some(()) },
    )
    .await;
    assert_eq!(get_json(ips[0]).await["config"], "generation: 2\n");

    // Deleting a pod stops its process and removes its directory; the ReplicaSet replaces it.
    let victim = ready[0].clone();
    let victim_pid = pid(&victim).expect("pid in containerID");
    assert!(alive(victim_pid));
    api.delete(&name(&victim), &DeleteParams::default())
        .await
        .expect("delete");
    wait_for("the deleted pod to go", Duration::from_secs(30), || async {
        api.get_opt(&name(&victim))
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    assert!(!alive(victim_pid), "process {victim_pid} survived its pod");
    assert!(!kubelet.config().pod_dir(&uid(&victim)).exists());
    let after = wait_for(
        "a replacement to come up",
        Duration::from_secs(60),
        || async {
            let all = pods(&api, "app=standin").await;
            let ready: Vec<Pod> = all
                .iter()
                .filter(|p| running_and_ready(p))
                .cloned()
                .collect();
            (ready.len() == 2 && all.len() == 3).then_some(ready)
        },
    )
    .await;
    assert!(after.iter().all(|p| name(p) != name(&victim)));
    for pod in &after {
        assert_eq!(get_json(pod_ip(pod)).await["env"]["POD_NAME"], name(pod));
    }

    // Shutdown stops the processes and leaves the node NotReady.
    let pids: Vec<u32> = after.iter().filter_map(pid).collect();
    kubelet.shutdown().await.expect("shutdown");
    assert!(
        pids.iter().all(|p| !alive(*p)),
        "processes survived the shutdown"
    );
    let n = nodes.get(&node).await.expect("node");
    let conditions = n.status.and_then(|s| s.conditions).unwrap_or_default();
    let ready = conditions.iter().find(|c| c.type_ == "Ready");
    assert_eq!(ready.map(|c| c.status.as_str()), Some("False"));
}

fn probed_pod(node: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: probed}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 2
  containers:
  - name: server
    image: {IMAGE}
    args: ["--listen", "0.0.0.0:8080"]
    ports: [{{containerPort: 8080}}]
    env: [{{name: STANDIN_IGNORE_TERM, value: "1"}}]
    readinessProbe:
      httpGet: {{path: /readyz, port: 8080}}
      periodSeconds: 1
      failureThreshold: 1
    livenessProbe:
      httpGet: {{path: /healthz, port: 8080}}
      periodSeconds: 1
      failureThreshold: 2
"#
    )
}

async fn pod_where(api: &Api<Pod>, what: &str, check: impl Fn(&Pod) -> bool) -> Pod {
    wait_for(what, Duration::from_secs(30), || async {
        let pod = api.get_opt("probed").await.ok().flatten()?;
        check(&pod).then_some(pod)
    })
    .await
}

fn restarts(pod: &Pod) -> i32 {
    let statuses = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref());
    statuses
        .and_then(|s| s.first())
        .map(|c| c.restart_count)
        .unwrap_or(-1)
}

fn last_exit(pod: &Pod) -> Option<(i32, String)> {
    let status = pod.status.as_ref()?.container_statuses.as_ref()?.first()?;
    let t = status.last_state.as_ref()?.terminated.as_ref()?;
    Some((t.exit_code, t.reason.clone().unwrap_or_default()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_flip_readiness_and_failed_processes_are_restarted_and_killed_on_delete() {
    let Setup {
        cp,
        ns,
        client,
        node,
        state,
    } = setup("kubelet-probes").await;
    let kubelet = Kubelet::start(client.clone(), config(&node, 1, state.path()))
        .await
        .expect("kubelet starts");
    let out = cp
        .kubectl()
        .apply(&ns, &probed_pod(&node))
        .expect("kubectl");
    assert!(out.success, "{}", out.stderr);
    let api: Api<Pod> = Api::namespaced(client.clone(), &ns);

    let pod = pod_where(&api, "the pod to be ready", running_and_ready).await;
    let ip = pod_ip(&pod);
    assert_eq!(
        condition(&pod, "PodScheduled").map(|c| c.status.as_str()),
        Some("True")
    );

    // Readiness follows the probe both ways.
    get(ip, "/control/unready").await.expect("control");
    pod_where(&api, "the pod to turn unready", |p| !running_and_ready(p)).await;
    get(ip, "/control/ready").await.expect("control");
    pod_where(&api, "the pod to be ready again", running_and_ready).await;

    // An exited process is restarted; the exit is reported.
    let first_pid = pid(&pod).expect("pid");
    get(ip, "/control/exit?code=3").await.expect("control");
    let pod = pod_where(&api, "a restart after exit 3", |p| {
        restarts(p) == 1 && running_and_ready(p)
    })
    .await;
    assert_eq!(last_exit(&pod), Some((3, "Error".to_string())));
    let second_pid = pid(&pod).expect("pid");
    assert_ne!(first_pid, second_pid);
    assert!(!alive(first_pid));

    // A failing liveness probe gets the process killed (it ignores SIGTERM) and restarted.
    get(ip, "/control/unhealthy").await.expect("control");
    let pod = pod_where(&api, "a restart after liveness failed", |p| {
        restarts(p) == 2 && running_and_ready(p)
    })
    .await;
    assert_eq!(
        last_exit(&pod),
        Some((137, "LivenessProbeFailed".to_string()))
    );
    assert!(!alive(second_pid));

    // Deleting: SIGTERM is ignored, so SIGKILL follows after the 2 s grace period.
    let third_pid = pid(&pod).expect("pid");
    let started = Instant::now();
    api.delete("probed", &DeleteParams::default())
        .await
        .expect("delete");
    wait_for("the pod to go", Duration::from_secs(30), || async {
        api.get_opt("probed").await.ok()?.is_none().then_some(())
    })
    .await;
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(!alive(third_pid));
    kubelet.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_runs_pods_and_stops_them_and_the_node_on_sigterm() {
    let Setup {
        cp,
        ns,
        client,
        node,
        state,
    } = setup("kubelet-bin").await;
    let cidr = PodCidr::unique_for_tests().to_string();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_gpupool-kubelet"))
        .arg("--kubeconfig")
        .arg(cp.kubeconfig())
        .args(["--node-name", &node, "--gpus", "1", "--pod-cidr", &cidr])
        .args(["--heartbeat-interval", "1s", "--gpu-product", "NVIDIA-TEST"])
        .arg("--state-dir")
        .arg(state.path())
        .arg("--image-command")
        .arg(format!("{IMAGE}={}", fixture().display()))
        .kill_on_drop(true)
        .spawn()
        .expect("gpupool-kubelet starts");

    let nodes: Api<Node> = Api::all(client.clone());
    let labels = wait_for("the node", Duration::from_secs(30), || async {
        nodes.get_opt(&node).await.ok().flatten()?.metadata.labels
    })
    .await;
    assert_eq!(
        labels.get("nvidia.com/gpu.product").map(String::as_str),
        Some("NVIDIA-TEST")
    );

    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let renewed = || async {
        leases
            .get_opt(&node)
            .await
            .ok()
            .flatten()?
            .spec?
            .renew_time
            .map(|t| t.0)
    };
    let first = wait_for("the lease", Duration::from_secs(10), renewed).await;
    wait_for(
        "the lease to be renewed",
        Duration::from_secs(10),
        || async { renewed().await.filter(|t| *t > first) },
    )
    .await;

    let out = cp
        .kubectl()
        .apply(
            &ns,
            &probed_pod(&node).replace("STANDIN_IGNORE_TERM", "UNUSED"),
        )
        .expect("kubectl");
    assert!(out.success, "{}", out.stderr);
    let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let pod = pod_where(&api, "the pod to be ready", running_and_ready).await;
    let pid = pid(&pod).expect("pid");
    assert!(alive(pid));

    let group =
        rustix::process::Pid::from_raw(child.id().and_then(|p| i32::try_from(p).ok()).unwrap_or(0))
            .expect("kubelet pid");
    rustix::process::kill_process(group, rustix::process::Signal::TERM).expect("SIGTERM");
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("exits within 30 s")
        .expect("exit status");
    assert!(status.success(), "{status:?}");
    assert!(!alive(pid), "the pod's process survived the kubelet");

    let n = nodes.get(&node).await.expect("node stays");
    let conditions = n.status.and_then(|s| s.conditions).unwrap_or_default();
    let ready = conditions.iter().find(|c| c.type_ == "Ready");
    assert_eq!(ready.map(|c| c.status.as_str()), Some("False"));
    let pod = api.get("probed").await.expect("the pod stays in the API");
    assert!(!running_and_ready(&pod));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_can_delete_the_node_and_its_lease_goes_with_it() {
    let Setup {
        client,
        node,
        state,
        ..
    } = setup("kubelet-delete").await;
    let mut config = config(&node, 1, state.path());
    config.on_exit = gpupool_tests::kubelet::OnExit::Delete;
    let kubelet = Kubelet::start(client.clone(), config)
        .await
        .expect("kubelet starts");
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    wait_for("the lease", Duration::from_secs(10), || async {
        leases.get_opt(&node).await.ok().flatten()
    })
    .await;
    let nodes: Api<Node> = Api::all(client.clone());
    let taints = nodes
        .get(&node)
        .await
        .expect("node")
        .spec
        .and_then(|s| s.taints);
    assert!(
        taints.unwrap_or_default().is_empty(),
        "the not-ready taint is lifted"
    );

    kubelet.shutdown().await.expect("shutdown");
    assert!(nodes.get_opt(&node).await.expect("get").is_none());
    // The garbage collector removes the lease through its owner reference to the node.
    wait_for("the lease to go", Duration::from_secs(30), || async {
        leases.get_opt(&node).await.ok()?.is_none().then_some(())
    })
    .await;
}
