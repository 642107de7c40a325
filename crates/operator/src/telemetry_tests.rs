use super::*;
use crate::testutil::report;
use k8s_openapi::api::core::v1::{PodCondition, PodStatus};

fn pod(name: &str, phase: &str, ready: bool, ip: Option<&str>) -> Pod {
    let mut pod = Pod::default();
    pod.metadata.name = Some(name.into());
    pod.status = Some(PodStatus {
        phase: Some(phase.into()),
        pod_ip: ip.map(Into::into),
        conditions: Some(vec![PodCondition {
            type_: "Ready".into(),
            status: if ready { "True" } else { "False" }.into(),
            ..PodCondition::default()
        }]),
        ..PodStatus::default()
    });
    pod
}

#[test]
fn only_running_ready_pods_with_an_ip_are_asked() {
    let pods = [
        pod("a", "Running", true, Some("10.0.0.1")),
        pod("b", "Running", false, Some("10.0.0.2")),
        pod("c", "Pending", false, None),
        pod("d", "Running", true, None),
    ];
    let ready = ready_pods(&pods, 8080);
    assert_eq!(
        ready,
        [ReadyPod {
            name: "a".into(),
            ip: "10.0.0.1".into(),
            port: 8080
        }]
    );
}

#[test]
fn summary_takes_maxima_and_sums_and_lists_problems() {
    let mut failing = report(90, 5, 3);
    failing.circuit_open = true;
    failing.models[0].state = ModelState::Failed;
    failing.models[0].reason = Some("file not found".into());
    let collection = Collection {
        reports: vec![("a".into(), report(40, 2, 0)), ("b".into(), failing)],
        failed: vec!["c".into()],
    };
    let view = summarise(&collection, "T");
    let s = &view.summary;
    assert_eq!(s.pods_reporting, 2);
    assert_eq!(s.max_memory_used_fraction, 0.9);
    assert_eq!(
        (s.queue_depth, s.rejected_total, s.max_reserved_bytes),
        (7, 3, 90)
    );
    assert_eq!(s.images_per_second, 60.0);
    assert_eq!(s.collected_at, "T");
    assert_eq!(view.max_device_used_bytes, Some(90));
    assert_eq!(view.problems.len(), 3, "{:?}", view.problems);
    assert!(view.problems[1].contains("model unet failed: file not found"));
    assert!(view.problems[2].contains("did not answer"));
}

#[tokio::test]
async fn collects_over_http_and_survives_a_silent_pod() {
    let doc = report(40, 1, 0);
    let app = axum::Router::new().route(
        "/v1/telemetry",
        axum::routing::get(move || {
            let doc = doc.clone();
            async move { axum::Json(doc) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    // A port nobody listens on: refused at once.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let closed_port = closed.local_addr().expect("addr").port();
    drop(closed);
    let pods = [
        ReadyPod {
            name: "up".into(),
            ip: "127.0.0.1".into(),
            port,
        },
        ReadyPod {
            name: "down".into(),
            ip: "127.0.0.1".into(),
            port: closed_port,
        },
    ];
    let collector = Collector::new(Duration::from_secs(2)).expect("client");
    let collection = collector.collect(&pods).await;
    assert_eq!(collection.reports.len(), 1);
    assert_eq!(collection.reports[0].0, "up");
    assert_eq!(collection.reports[0].1, report(40, 1, 0));
    assert_eq!(collection.failed, ["down"]);
}
