use super::*;
use crate::testutil::{plan, pool, POOL_UID};
use gpupool_api::sidecar::SidecarConfig;

fn defaults() -> PodDefaults {
    PodDefaults {
        sidecar_image: "registry.local/sidecar:1".into(),
    }
}

fn template(d: &Deployment) -> &PodTemplateSpec {
    &d.spec.as_ref().expect("spec").template
}

fn checksum(d: &Deployment) -> String {
    template(d)
        .metadata
        .as_ref()
        .expect("meta")
        .annotations
        .as_ref()
        .expect("annotations")[RESTART_CHECKSUM_ANNOTATION]
        .clone()
}

fn container(d: &Deployment) -> &Container {
    &template(d).spec.as_ref().expect("pod spec").containers[0]
}

fn build(pool: &InferencePool, plan: &PoolPlan) -> Deployment {
    deployment(pool, &sidecar_config(pool, plan), &defaults()).expect("deployment")
}

#[test]
fn every_child_is_owned_by_the_pool_and_labelled() {
    let (pool, plan) = (pool(), plan());
    let config = sidecar_config(&pool, &plan);
    let metas = [
        config_map(&pool, &config, &MeasuredProfiles::default())
            .expect("cm")
            .metadata,
        build(&pool, &plan).metadata,
        service(&pool).expect("svc").metadata,
        pod_disruption_budget(&pool).expect("pdb").metadata,
    ];
    for meta in metas {
        let owners = meta.owner_references.expect("owner references");
        assert_eq!(owners.len(), 1);
        assert_eq!(owners[0].uid, POOL_UID);
        assert_eq!(owners[0].kind, "InferencePool");
        assert_eq!(owners[0].api_version, "gpupool.io/v1alpha1");
        assert_eq!(owners[0].controller, Some(true));
        assert_eq!(meta.namespace.as_deref(), Some("vision"));
        let labels = meta.labels.expect("labels");
        assert_eq!(labels["app.kubernetes.io/name"], "gpupool");
        assert_eq!(labels["app.kubernetes.io/instance"], "spheroid");
        assert_eq!(labels["gpupool.io/pool"], "spheroid");
    }
}

#[test]
fn a_pool_without_uid_cannot_own_children() {
    let mut pool = pool();
    pool.metadata.uid = None;
    assert!(matches!(service(&pool), Err(Error::MissingMetadata(_))));
}

#[test]
fn config_map_carries_the_plan_as_a_sidecar_document() {
    let (pool, plan) = (pool(), plan());
    let cm = config_map(
        &pool,
        &sidecar_config(&pool, &plan),
        &MeasuredProfiles::default(),
    )
    .expect("cm");
    assert_eq!(cm.metadata.name.as_deref(), Some("spheroid-config"));
    let data = cm.data.expect("data");
    assert!(
        !data.contains_key(MEASUREMENTS_FILE),
        "nothing measured yet"
    );
    let doc = SidecarConfig::from_yaml(&data[SIDECAR_CONFIG_FILE]).expect("valid document");
    assert_eq!(doc.pool, "spheroid");
    assert_eq!(doc.generation, 3);
    assert_eq!(doc.memory_budget_bytes, 22 << 30);
    assert_eq!(doc.streams, 4);
    assert_eq!(doc.models.len(), 2);
    assert_eq!((doc.models[0].max_batch, doc.models[0].slots), (8, 2));
    // An explicit precision is the plan's; `auto` reaches the pod as `auto`, which measures on its
    // own GPU (and runs a package at the precision it was compiled for).
    assert_eq!(doc.models[0].precision, gpupool_api::Precision::Fp16);
    assert_eq!(doc.models[1].precision, gpupool_api::Precision::Auto);
    assert_eq!(doc.admission.reject_above, 0.90);
}

#[test]
fn measurements_are_recorded_and_read_back() {
    let (pool, plan) = (pool(), plan());
    let measured = MeasuredProfiles::default().with_card_bytes(141 << 30);
    let cm = config_map(&pool, &sidecar_config(&pool, &plan), &measured).expect("cm");
    assert_eq!(recorded_measurements(&cm), Some(measured));
}

#[test]
fn deployment_asks_for_one_gpu_on_the_right_nodes() {
    let mut pool = pool();
    pool.spec
        .pod
        .node_selector
        .insert("pool".into(), "gpu".into());
    pool.spec.pod.tolerations = vec![k8s_openapi::api::core::v1::Toleration {
        key: Some("nvidia.com/gpu".into()),
        operator: Some("Exists".into()),
        effect: Some("NoSchedule".into()),
        ..Default::default()
    }];
    let d = build(&pool, &plan());
    assert_eq!(d.spec.as_ref().and_then(|s| s.replicas), Some(2));
    let pod = template(&d).spec.as_ref().expect("pod spec");
    let selector = pod.node_selector.as_ref().expect("node selector");
    assert_eq!(selector[GPU_PRODUCT_LABEL], "NVIDIA-H200");
    assert_eq!(selector["pool"], "gpu");
    assert_eq!(pod.tolerations.as_ref().map(Vec::len), Some(1));
    let c = container(&d);
    assert_eq!(c.image.as_deref(), Some("registry.local/sidecar:1"));
    let resources = c.resources.as_ref().expect("resources");
    for list in [&resources.requests, &resources.limits] {
        assert_eq!(
            list.as_ref().expect("set")["nvidia.com/gpu"],
            Quantity("1".into())
        );
    }
    // Server-side apply wants the quantity as a string.
    let json = serde_json::to_value(&d).expect("serialises");
    let requests = &json["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"];
    assert_eq!(requests["nvidia.com/gpu"], serde_json::json!("1"));
    let port = &c.ports.as_ref().expect("ports")[0];
    assert_eq!(
        (port.container_port, port.name.as_deref()),
        (8080, Some("http"))
    );
    let path = |p: &Option<Probe>| {
        p.as_ref()
            .and_then(|p| p.http_get.as_ref())
            .and_then(|g| g.path.clone())
    };
    assert_eq!(path(&c.readiness_probe).as_deref(), Some("/readyz"));
    assert_eq!(path(&c.liveness_probe).as_deref(), Some("/healthz"));
    // Liveness starts only once the pod is ready: a start-up that never gets there is restarted.
    assert_eq!(path(&c.startup_probe).as_deref(), Some("/readyz"));
    let startup = c.startup_probe.as_ref().expect("startup probe");
    let budget = startup.period_seconds.unwrap_or(10) * startup.failure_threshold.unwrap_or(3);
    assert_eq!(budget, 600, "ten minutes to load, calibrate and warm up");
    // Shutdown: the sidecar settles, drains, and has time left to exit before it is killed.
    let env = |name: &str| {
        c.env
            .iter()
            .flatten()
            .find(|e| e.name == name)
            .and_then(|e| e.value.clone())
    };
    assert_eq!(env("GPUPOOL_SHUTDOWN_SETTLE_MS").as_deref(), Some("5000"));
    assert_eq!(env("GPUPOOL_DRAIN_SECONDS").as_deref(), Some("25"));
    // The models run on the GPU: libtorch's CPU pool is one thread, set before libtorch loads.
    assert_eq!(env("OMP_NUM_THREADS").as_deref(), Some("1"));
    assert_eq!(pod.termination_grace_period_seconds, Some(40));
    let mount = &c.volume_mounts.as_ref().expect("mounts")[0];
    assert_eq!(mount.mount_path, CONFIG_MOUNT_PATH);
    let volume = &pod.volumes.as_ref().expect("volumes")[0];
    assert_eq!(
        volume.config_map.as_ref().map(|c| c.name.as_str()),
        Some("spheroid-config")
    );
}

#[test]
fn pool_image_and_resource_name_override_the_defaults() {
    let mut pool = pool();
    pool.spec.pod.image = Some("mine:2".into());
    pool.spec.gpu.resource_name = "example.com/gpu".into();
    pool.spec.gpu.product = None;
    let d = build(&pool, &plan());
    let c = container(&d);
    assert_eq!(c.image.as_deref(), Some("mine:2"));
    let limits = c
        .resources
        .as_ref()
        .and_then(|r| r.limits.as_ref())
        .expect("limits");
    assert!(limits.contains_key("example.com/gpu") && !limits.contains_key("nvidia.com/gpu"));
    assert!(template(&d)
        .spec
        .as_ref()
        .expect("spec")
        .node_selector
        .is_none());
}

#[test]
fn the_sidecar_learns_its_memory_limit_from_the_downward_api() {
    let d = build(&pool(), &plan());
    let var = container(&d)
        .env
        .iter()
        .flatten()
        .find(|e| e.name == MEMORY_LIMIT_ENV)
        .expect("memory limit variable");
    let field = var
        .value_from
        .as_ref()
        .and_then(|f| f.resource_field_ref.as_ref())
        .expect("a resourceFieldRef");
    assert_eq!(
        (field.container_name.as_deref(), field.resource.as_str()),
        (Some(CONTAINER_NAME), "limits.memory")
    );
    assert_eq!(field.divisor, None, "bytes");
}

#[test]
fn live_changes_keep_the_checksum() {
    let (pool, plan) = (pool(), plan());
    let before = build(&pool, &plan);
    let mut live = plan.clone();
    live.models[0].batch_size = 4;
    live.models[1].slots = 3;
    live.streams = 5;
    let mut thresholds = pool.clone();
    thresholds.spec.scaling.reject_above = 0.95;
    thresholds.spec.models[0].max_queue_delay_ms = 20;
    thresholds.metadata.generation = Some(4);
    let after = build(&thresholds, &live);
    assert_eq!(checksum(&before), checksum(&after));
    assert_eq!(
        template(&before),
        template(&after),
        "the pods must not roll"
    );
    let config_before = sidecar_config(&pool, &plan);
    let config_after = sidecar_config(&thresholds, &live);
    assert_ne!(config_before, config_after, "the ConfigMap changes");
    assert!(config_before.can_apply_live(&config_after));
}

#[test]
fn restart_changes_move_the_checksum() {
    let (pool, plan) = (pool(), plan());
    let base = checksum(&build(&pool, &plan));
    let mut budget = plan.clone();
    budget.budget_bytes = 20 << 30;
    assert_ne!(checksum(&build(&pool, &budget)), base, "budget");
    let mut file = pool.clone();
    file.spec.models[1].source.uri = "/models/unet-v2.pt".into();
    assert_ne!(checksum(&build(&file, &plan)), base, "model file");
    let mut geometry = pool.clone();
    geometry.spec.models[0].input.width = 512;
    assert_ne!(checksum(&build(&geometry, &plan)), base, "input geometry");
}

#[test]
fn image_change_rolls_the_pods_but_not_the_checksum() {
    let (pool, plan) = (pool(), plan());
    let mut image = pool.clone();
    image.spec.pod.image = Some("registry.local/sidecar:2".into());
    let (a, b) = (build(&pool, &plan), build(&image, &plan));
    assert_eq!(checksum(&a), checksum(&b));
    assert_ne!(template(&a), template(&b));
}

#[test]
fn service_and_pdb_select_the_pool_pods() {
    let pool = pool();
    let svc = service(&pool).expect("svc");
    let spec = svc.spec.expect("spec");
    assert_eq!(spec.selector, Some(labels("spheroid")));
    let port = &spec.ports.expect("ports")[0];
    assert_eq!(
        (port.port, port.target_port.clone()),
        (8080, Some(IntOrString::String("http".into())))
    );
    let pdb = pod_disruption_budget(&pool)
        .expect("pdb")
        .spec
        .expect("spec");
    assert_eq!(pdb.max_unavailable, Some(IntOrString::Int(1)));
    assert_eq!(
        pdb.selector.and_then(|s| s.match_labels),
        Some(labels("spheroid"))
    );
    assert_eq!(
        selector_string("spheroid"),
        "app.kubernetes.io/instance=spheroid,app.kubernetes.io/name=gpupool,gpupool.io/pool=spheroid"
    );
}
