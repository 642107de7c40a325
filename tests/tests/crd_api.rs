//! The InferencePool API as a real Kubernetes 1.20 API server serves it: the checked-in CRD and
//! examples are accepted, printer columns and the scale subresource work, and invalid pools are
//! refused with a message that names the offending field.

use gpupool_tests::ControlPlane;

fn examples_dir() -> String {
    gpupool_tests::repo_root()
        .join("examples")
        .to_string_lossy()
        .into_owned()
}

#[test]
fn examples_are_accepted_and_listed_with_printer_columns() {
    let cp = ControlPlane::shared();
    let ns = cp.namespace("crd-examples").expect("namespace");
    let kubectl = cp.kubectl();
    let out = kubectl
        .run(&["-n", &ns, "apply", "-f", &examples_dir()])
        .expect("kubectl runs");
    assert!(out.success, "examples refused: {}", out.stderr);

    let table = kubectl.run_ok(&["-n", &ns, "get", "gpool"]).expect("get");
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "NAME",
            "READY",
            "DESIRED",
            "MODELS",
            "VRAM-USED",
            "VRAM-BUDGET",
            "AGE"
        ]
    );
    assert!(table.contains("spheroid"), "{table}");
    assert!(table.contains("unet-only"), "{table}");
    // Defaults are filled in by the API server from the schema.
    let users = kubectl
        .run_ok(&["-n", &ns, "get", "gpool", "unet-only", "-o", "jsonpath={.spec.concurrency.targetUsers} {.spec.gpu.memoryBudget} {.spec.models[0].precision}"])
        .expect("get defaults");
    assert_eq!(users, "8 90% auto");
}

#[test]
fn kubectl_scale_changes_spec_replicas() {
    let cp = ControlPlane::shared();
    let ns = cp.namespace("crd-scale").expect("namespace");
    let kubectl = cp.kubectl();
    let pool = format!("{}/spheroid-pool.yaml", examples_dir());
    kubectl
        .run_ok(&["-n", &ns, "apply", "-f", &pool])
        .expect("apply");
    kubectl
        .run_ok(&["-n", &ns, "scale", "gpool", "spheroid", "--replicas=3"])
        .expect("scale");
    let replicas = kubectl
        .run_ok(&[
            "-n",
            &ns,
            "get",
            "gpool",
            "spheroid",
            "-o",
            "jsonpath={.spec.replicas}",
        ])
        .expect("get");
    assert_eq!(replicas, "3");
}

/// A pool document with `spec_body` spliced in under `spec:`.
fn pool(name: &str, spec_body: &str) -> String {
    format!(
        "apiVersion: gpupool.io/v1alpha1\nkind: InferencePool\nmetadata:\n  name: {name}\nspec:\n{spec_body}"
    )
}

const ONE_MODEL: &str = "  models:\n  - name: unet\n    source: {uri: /models/unet.pt}\n";

#[test]
fn invalid_pools_are_refused_naming_the_field() {
    let cp = ControlPlane::shared();
    let ns = cp.namespace("crd-invalid").expect("namespace");
    let kubectl = cp.kubectl();
    let cases = [
        (
            "negative-replicas",
            format!("  replicas: -1\n{ONE_MODEL}"),
            "spec.replicas",
        ),
        (
            "unknown-precision",
            "  models:\n  - name: unet\n    precision: fp8\n    source: {uri: /models/unet.pt}\n"
                .to_string(),
            "spec.models.precision",
        ),
        ("empty-models", "  models: []\n".to_string(), "spec.models"),
        (
            "missing-models",
            "  replicas: 1\n".to_string(),
            "spec.models",
        ),
        (
            "malformed-budget",
            format!("  gpu:\n    memoryBudget: 22 gigs\n{ONE_MODEL}"),
            "spec.gpu.memoryBudget",
        ),
        (
            "malformed-headroom",
            format!("  gpu:\n    reservedHeadroom: 2GB\n{ONE_MODEL}"),
            "spec.gpu.reservedHeadroom",
        ),
        (
            "batch-too-large",
            "  models:\n  - name: unet\n    maxBatch: 100000\n    source: {uri: /models/unet.pt}\n"
                .to_string(),
            "spec.models.maxBatch",
        ),
        (
            "bad-model-name",
            "  models:\n  - name: Not_A_Name!\n    source: {uri: /models/unet.pt}\n".to_string(),
            "spec.models.name",
        ),
        (
            "watermark-out-of-range",
            format!("  scaling:\n    memoryPressureWatermark: 1.5\n{ONE_MODEL}"),
            "spec.scaling.memoryPressureWatermark",
        ),
    ];
    for (name, body, field) in cases {
        // Client-side validation off: what is tested is the API server's own enforcement (kubectl
        // may or may not have fetched the CRD's schema yet, which would change the message).
        let out = kubectl
            .run_with_input(
                &["-n", &ns, "apply", "--validate=false", "-f", "-"],
                Some(&pool(name, &body)),
            )
            .expect("kubectl runs");
        assert!(!out.success, "{name}: invalid pool was accepted");
        assert!(
            out.stderr.contains(field),
            "{name}: error does not name {field}: {}",
            out.stderr
        );
        let listed = kubectl
            .run(&["-n", &ns, "get", "gpool", name])
            .expect("kubectl runs");
        assert!(!listed.success, "{name}: a refused pool exists anyway");
    }
}
