use super::*;
use crate::status::{build, Observation, Unschedulable};
use crate::testutil::{plan, pool};
use gpupool_planner::PlanError;

fn status_for(plan: Result<&PoolPlan, &PlanError>) -> InferencePoolStatus {
    let pool = pool();
    let none = Unschedulable::default();
    build(&Observation {
        pool: &pool,
        plan,
        deployment: None,
        unschedulable: &none,
        telemetry: None,
        scaled_at: None,
        now: "T",
    })
}

fn reasons(events: &[PoolEvent]) -> Vec<String> {
    events.iter().map(|e| e.to_event().reason).collect()
}

#[test]
fn first_plan_and_changed_plan_fire_once() {
    let plan = plan();
    let empty = InferencePoolStatus::default();
    let planned = status_for(Ok(&plan));
    assert_eq!(reasons(&diff(&empty, &planned, None)), ["PlanChanged"]);
    assert!(
        diff(&planned, &planned, None).is_empty(),
        "unchanged: no event"
    );
    let mut other = plan.clone();
    other.models[0].batch_size = 2;
    let replanned = status_for(Ok(&other));
    let events = diff(&planned, &replanned, None);
    assert_eq!(reasons(&events), ["PlanChanged"]);
    let note = events[0].to_event().note.unwrap_or_default();
    assert!(note.contains("hrnet fp16 batch 2 x 2 slot(s)"), "{note}");
}

#[test]
fn infeasible_and_invalid_fire_when_they_start_or_change() {
    let plan = plan();
    let planned = status_for(Ok(&plan));
    let short = PlanError::Infeasible {
        needed_bytes: 30 << 30,
        budget_bytes: 22 << 30,
        shortfall_bytes: 8 << 30,
        detail: "hrnet".into(),
    };
    let infeasible = status_for(Err(&short));
    let events = diff(&planned, &infeasible, None);
    assert_eq!(reasons(&events), ["PlanInfeasible"]);
    assert_eq!(events[0].to_event().type_, EventType::Warning);
    assert!(diff(&infeasible, &infeasible, None).is_empty());
    let invalid = status_for(Err(&PlanError::invalid("models[0].name", "duplicate")));
    assert_eq!(reasons(&diff(&infeasible, &invalid, None)), ["InvalidSpec"]);
}

#[test]
fn scaling_fires_only_on_a_real_change() {
    let s = InferencePoolStatus::default();
    let same = ReplicaChange {
        from: 2,
        to: 2,
        why: None,
    };
    assert!(diff(&s, &s, Some(&same)).is_empty());
    let up = ReplicaChange {
        from: 1,
        to: 3,
        why: Some("queue above target".into()),
    };
    let events = diff(&s, &s, Some(&up));
    let event = events[0].to_event();
    assert_eq!(event.reason, "Scaled");
    assert_eq!(
        event.note.as_deref(),
        Some("scaled from 1 to 3 replicas: queue above target")
    );
}

#[test]
fn long_notes_are_cut_at_a_char_boundary() {
    let note = "é".repeat(800);
    let event = PoolEvent::PlanInfeasible { note }.to_event();
    let cut = event.note.unwrap_or_default();
    assert!(cut.len() <= 1000 && cut.ends_with("..."));
}
