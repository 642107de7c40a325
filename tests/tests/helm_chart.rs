//! The Helm chart, through the real Helm engine: it lints clean, renders the operator with the
//! values given, carries the same CRD as crds/, and installs into a real API server.

use gpupool_tests::helm::{chart_dir, helm};
use gpupool_tests::ControlPlane;

fn chart() -> String {
    chart_dir().to_string_lossy().into_owned()
}

#[test]
fn chart_lints_without_errors() {
    let report = helm(&["lint", &chart()], None).expect("lint runs");
    assert_eq!(report["errors"], serde_json::json!([]), "{report}");
}

#[test]
fn chart_crd_is_the_generated_one() {
    let root = gpupool_tests::repo_root();
    let generated = std::fs::read_to_string(root.join("crds/inferencepool.yaml")).expect("crds/");
    let in_chart =
        std::fs::read_to_string(chart_dir().join("crds/inferencepool.yaml")).expect("chart crds/");
    assert!(
        generated == in_chart,
        "charts/gpupool/crds is stale: run `make crds`"
    );
}

#[test]
fn values_reach_the_operator_arguments() {
    let manifests = helm(
        &[
            "render",
            &chart(),
            "gp",
            "ops",
            "--set",
            "watchNamespace=team-a",
            "--set",
            "replicaCount=3",
            "--set",
            "leaderElection.leaseDuration=20s",
        ],
        None,
    )
    .expect("render");
    let deployment = manifests["gpupool/templates/deployment.yaml"]
        .as_str()
        .expect("deployment rendered");
    let doc: serde_yaml::Value = serde_yaml::from_str(deployment).expect("valid YAML");
    assert_eq!(doc["spec"]["replicas"], serde_yaml::Value::from(3));
    let args: Vec<String> = doc["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_sequence()
        .expect("args")
        .iter()
        .filter_map(|a| a.as_str().map(str::to_owned))
        .collect();
    assert!(args.contains(&"--namespace=team-a".to_string()), "{args:?}");
    assert!(
        args.contains(&"--lease-duration=20s".to_string()),
        "{args:?}"
    );
}

#[test]
fn chart_installs_into_a_real_api_server() {
    let cp = ControlPlane::shared();
    let ns = cp.namespace("helm").expect("namespace");
    let release = format!("gp{}", std::process::id());
    helm(&["install", &chart(), &release, &ns], Some(cp.kubeconfig())).expect("helm install");
    let kubectl = cp.kubectl();
    let name = format!("{release}-gpupool");
    let replicas = kubectl
        .run_ok(&[
            "-n",
            &ns,
            "get",
            "deployment",
            &name,
            "-o",
            "jsonpath={.spec.replicas}",
        ])
        .expect("operator deployment exists");
    assert_eq!(replicas, "2");
    kubectl
        .run_ok(&["-n", &ns, "get", "serviceaccount", &name])
        .expect("service account");
    kubectl
        .run_ok(&["get", "clusterrolebinding", &name])
        .expect("cluster role binding");
    // The service account may do what the operator needs, and no more than it was granted.
    let sa = format!("system:serviceaccount:{ns}:{name}");
    for (verb, resource) in [
        ("patch", "inferencepools.gpupool.io/status"),
        ("create", "deployments.apps"),
        ("update", "leases.coordination.k8s.io"),
        ("create", "poddisruptionbudgets.policy"),
    ] {
        let answer = kubectl
            .run(&["auth", "can-i", verb, resource, "--as", &sa])
            .expect("can-i");
        assert_eq!(
            answer.stdout.trim(),
            "yes",
            "{verb} {resource}: {}",
            answer.stderr
        );
    }
    let answer = kubectl
        .run(&["auth", "can-i", "delete", "nodes", "--as", &sa])
        .expect("can-i");
    assert_eq!(answer.stdout.trim(), "no");
    helm(&["uninstall", &release, &ns], Some(cp.kubeconfig())).expect("helm uninstall");
}
