use super::*;
use crate::testutil::{plan, pool};
use k8s_openapi::api::apps::v1::{DeploymentSpec, DeploymentStatus};

fn deployment(replicas: i32, ready: i32, updated: i32) -> Deployment {
    let mut d = Deployment::default();
    d.metadata.generation = Some(2);
    d.spec = Some(DeploymentSpec {
        replicas: Some(replicas),
        ..DeploymentSpec::default()
    });
    d.status = Some(DeploymentStatus {
        observed_generation: Some(2),
        replicas: Some(replicas),
        ready_replicas: Some(ready),
        updated_replicas: Some(updated),
        ..DeploymentStatus::default()
    });
    d
}

fn infeasible() -> PlanError {
    PlanError::Infeasible {
        needed_bytes: 30 << 30,
        budget_bytes: 22 << 30,
        shortfall_bytes: 8 << 30,
        detail: "hrnet needs 30.00Gi".into(),
    }
}

fn observe<'a>(
    pool: &'a InferencePool,
    plan: Result<&'a PoolPlan, &'a PlanError>,
    deployment: Option<&'a Deployment>,
    now: &'a str,
) -> Observation<'a> {
    static NONE: Unschedulable = Unschedulable {
        pods: 0,
        message: None,
    };
    Observation {
        pool,
        plan,
        deployment,
        unschedulable: &NONE,
        telemetry: None,
        scaled_at: None,
        now,
    }
}

fn get(status: &InferencePoolStatus, t: ConditionType) -> (ConditionStatus, String, String) {
    let c = condition(status, t).expect("condition present");
    (c.status, c.reason.clone(), c.last_transition_time.clone())
}

#[test]
fn a_ready_pool_reports_everything() {
    let (pool, plan) = (pool(), plan());
    let d = deployment(2, 2, 2);
    let status = build(&observe(&pool, Ok(&plan), Some(&d), "2025-01-01T00:00:00Z"));
    assert_eq!(status.observed_generation, Some(3));
    assert_eq!((status.replicas, status.ready_replicas), (2, 2));
    assert_eq!(status.model_names.as_deref(), Some("hrnet,unet"));
    assert_eq!(status.vram_budget.as_deref(), Some("24.00Gi"));
    assert_eq!(status.plan.as_ref(), Some(&plan));
    assert_eq!(
        status.selector.as_deref(),
        Some(selector_string("spheroid").as_str())
    );
    assert_eq!(get(&status, ConditionType::Ready).0, ConditionStatus::True);
    assert_eq!(get(&status, ConditionType::Progressing).1, "Complete");
    assert_eq!(
        get(&status, ConditionType::Degraded).0,
        ConditionStatus::False
    );
    assert_eq!(get(&status, ConditionType::PlanFeasible).1, "PlanFits");
    assert!(status
        .conditions
        .iter()
        .all(|c| c.observed_generation == Some(3)));
}

#[test]
fn transition_time_moves_only_when_status_flips() {
    let (mut pool, plan) = (pool(), plan());
    let starting = deployment(2, 1, 2);
    let first = build(&observe(&pool, Ok(&plan), Some(&starting), "T1"));
    assert_eq!(
        get(&first, ConditionType::Ready),
        (
            ConditionStatus::False,
            "ReplicasNotReady".into(),
            "T1".into()
        )
    );
    pool.status = Some(first);
    // Same status, new time: the transition time stays.
    let again = build(&observe(&pool, Ok(&plan), Some(&starting), "T2"));
    assert_eq!(get(&again, ConditionType::Ready).2, "T1");
    assert_eq!(
        Some(&again),
        pool.status.as_ref(),
        "nothing changed, nothing to write"
    );
    pool.status = Some(again);
    let ready = deployment(2, 2, 2);
    let flipped = build(&observe(&pool, Ok(&plan), Some(&ready), "T3"));
    assert_eq!(
        get(&flipped, ConditionType::Ready),
        (
            ConditionStatus::True,
            "AllReplicasReady".into(),
            "T3".into()
        )
    );
    assert_eq!(get(&flipped, ConditionType::PlanFeasible).2, "T1");
}

#[test]
fn an_infeasible_new_pool_gets_no_plan_and_names_the_shortfall() {
    let pool = pool();
    let error = infeasible();
    let status = build(&observe(&pool, Err(&error), None, "T1"));
    let feasible = condition(&status, ConditionType::PlanFeasible).expect("present");
    assert_eq!(
        (feasible.status, feasible.reason.as_str()),
        (ConditionStatus::False, "InsufficientMemory")
    );
    assert!(
        feasible.message.contains("short by"),
        "{}",
        feasible.message
    );
    assert_eq!(get(&status, ConditionType::Ready).1, "NotDeployed");
    assert!(status.plan.is_none() && status.vram_budget.is_none());
}

#[test]
fn an_infeasible_edit_keeps_the_running_plan_and_says_degraded() {
    let (mut pool, plan) = (pool(), plan());
    let d = deployment(2, 2, 2);
    pool.status = Some(build(&observe(&pool, Ok(&plan), Some(&d), "T1")));
    let error = infeasible();
    let status = build(&observe(&pool, Err(&error), Some(&d), "T2"));
    assert_eq!(status.plan.as_ref(), Some(&plan), "the pods still run it");
    assert_eq!(
        get(&status, ConditionType::Degraded).1,
        "ServingPreviousPlan"
    );
    assert_eq!(get(&status, ConditionType::Ready).0, ConditionStatus::True);
    assert_eq!(get(&status, ConditionType::PlanFeasible).2, "T2");
}

#[test]
fn invalid_spec_reason_comes_from_the_planner() {
    let pool = pool();
    let error = PlanError::invalid("gpu.streams", "must be \"auto\" or 1..=64");
    let status = build(&observe(&pool, Err(&error), None, "T1"));
    let c = condition(&status, ConditionType::PlanFeasible).expect("present");
    assert_eq!(c.reason, "InvalidSpec");
    assert!(c.message.contains("gpu.streams"), "{}", c.message);
}

#[test]
fn unschedulable_pods_and_pod_problems_show() {
    let (pool, plan) = (pool(), plan());
    let d = deployment(3, 0, 3);
    let pending = Unschedulable {
        pods: 1,
        message: Some("0/1 nodes are available: 1 Insufficient nvidia.com/gpu.".into()),
    };
    let telemetry = TelemetryView {
        max_device_used_bytes: Some(10 << 30),
        problems: vec!["pod a: model unet failed: no file".into()],
        ..TelemetryView::default()
    };
    let mut obs = observe(&pool, Ok(&plan), Some(&d), "T1");
    obs.unschedulable = &pending;
    obs.telemetry = Some(&telemetry);
    let status = build(&obs);
    let progressing = condition(&status, ConditionType::Progressing).expect("present");
    assert_eq!(progressing.reason, "WaitingForCapacity");
    assert!(
        progressing.message.contains("Insufficient nvidia.com/gpu"),
        "{}",
        progressing.message
    );
    assert_eq!(
        get(&status, ConditionType::Degraded).1,
        "PodsReportProblems"
    );
    assert_eq!(status.vram_used.as_deref(), Some("10.00Gi"));
    assert!(status.telemetry.is_some());
}
