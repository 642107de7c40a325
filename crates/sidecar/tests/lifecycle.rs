//! The sidecar's life around its requests: config changes applied live under load without losing
//! a request, a change that needs a restart refused without harm, and SIGTERM draining in-flight
//! work before the process exits.

mod common;

use common::{config, model, unet_path, Sidecar};
use gpupool_tests::images::spheroid_png as png;
use std::time::Duration;

async fn telemetry_model(s: &Sidecar, name: &str) -> serde_json::Value {
    let (_, t) = s.get_json("/v1/telemetry").await;
    t["models"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["name"] == name)
        .cloned()
        .unwrap_or_default()
}

#[tokio::test]
async fn live_config_changes_under_load_drop_nothing() {
    let unet = unet_path();
    let mut cfg = config(vec![model("unet_spherohq", &unet, 4)]);
    let s = Sidecar::start(&cfg, &[]).await;
    s.wait_ready().await;

    // 8 closed-loop clients for the whole test.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..8 {
        let (url, stop) = (s.url.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut statuses = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let form = reqwest::multipart::Form::new()
                    .text("model", "unet_spherohq")
                    .part(
                        "file",
                        reqwest::multipart::Part::bytes(png(96, 96)).file_name("a.png"),
                    );
                let r = client
                    .post(format!("{url}/api/v1/segment"))
                    .multipart(form)
                    .send()
                    .await;
                statuses.push(r.map(|r| r.status().as_u16()).unwrap_or(0));
            }
            statuses
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // A live change: batch size and delay.
    cfg.generation = 2;
    cfg.models[0].max_batch = 2;
    cfg.models[0].max_queue_delay_ms = 1;
    std::fs::write(&s.config_path, cfg.to_yaml().expect("yaml")).expect("write");
    let mut applied = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if telemetry_model(&s, "unet_spherohq").await["batchCap"] == 2 {
            applied = true;
            break;
        }
    }
    assert!(applied, "batch cap never changed:\n{}", s.log());
    assert_eq!(s.get_json("/v1/telemetry").await.1["configGeneration"], 2);
    // A change that needs a restart (another model file) is refused; the running config stays.
    let mut restart = cfg.clone();
    restart.generation = 3;
    restart.models[0].source.uri = "/elsewhere/model.pt".into();
    std::fs::write(&s.config_path, restart.to_yaml().expect("yaml")).expect("write");
    tokio::time::sleep(Duration::from_millis(600)).await;
    // And a document that is not valid at all changes nothing either.
    std::fs::write(&s.config_path, "apiVersion: nonsense").expect("write");
    tokio::time::sleep(Duration::from_millis(600)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut total = 0;
    for c in clients {
        let statuses = c.await.expect("client");
        total += statuses.len();
        assert!(
            statuses.iter().all(|&s| s == 200),
            "a request failed during reload: {statuses:?}"
        );
    }
    assert!(total > 8, "too little traffic to mean anything: {total}");
    assert_eq!(s.get_json("/v1/telemetry").await.1["configGeneration"], 2);
    assert!(
        s.log().contains("restart"),
        "the refused change was not reported:\n{}",
        s.log()
    );
    assert_eq!(s.get_json("/readyz").await.0, 200);
}

#[tokio::test]
async fn sigterm_finishes_in_flight_requests_then_exits() {
    let unet = unet_path();
    let mut cfg = config(vec![model("unet_spherohq", &unet, 2)]);
    // A long batching delay keeps requests in flight when the signal arrives.
    cfg.models[0].max_queue_delay_ms = 400;
    let mut s = Sidecar::start(&cfg, &["--shutdown-settle-ms", "200"]).await;
    s.wait_ready().await;
    let requests: Vec<_> = (0..6)
        .map(|_| {
            let url = s.url.clone();
            tokio::spawn(async move {
                let form = reqwest::multipart::Form::new()
                    .text("model", "unet_spherohq")
                    .part(
                        "file",
                        reqwest::multipart::Part::bytes(png(64, 64)).file_name("a.png"),
                    );
                reqwest::Client::new()
                    .post(format!("{url}/api/v1/segment"))
                    .multipart(form)
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let pid = rustix::process::Pid::from_raw(s.child.id() as i32).expect("pid");
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("SIGTERM");
    for r in requests {
        assert_eq!(
            r.await.expect("task").expect("answered"),
            200,
            "an in-flight request was lost"
        );
    }
    let mut exited = None;
    for _ in 0..100 {
        if let Some(status) = s.child.try_wait().expect("wait") {
            exited = Some(status);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = exited.expect("the sidecar did not exit after draining");
    assert!(status.success(), "exit status {status}:\n{}", s.log());
}
