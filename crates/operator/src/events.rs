//! Kubernetes events for a pool, emitted only when something changed: the difference between the
//! stored status and the rebuilt one (plus a replica change) decides which events fire.

use crate::status::condition;
use gpupool_api::quantity::format_bytes;
use gpupool_api::status::ConditionType;
use gpupool_api::{ConditionStatus, InferencePool, InferencePoolStatus, PoolPlan};
use k8s_openapi::api::apps::v1::Deployment;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::Resource;

/// Something that changed in a pool and deserves an event.
#[derive(Debug, Clone, PartialEq)]
pub enum PoolEvent {
    /// A new plan is in force (first plan, or a different one).
    PlanChanged {
        /// What the plan now is, in one sentence.
        note: String,
    },
    /// The spec's models do not fit the memory budget.
    PlanInfeasible {
        /// The planner's message, naming the shortfall.
        note: String,
    },
    /// The spec failed the planner's validation.
    InvalidSpec {
        /// The planner's message, naming the field.
        note: String,
    },
    /// The pool's Deployment was scaled.
    Scaled {
        /// Replicas before.
        from: i32,
        /// Replicas now.
        to: i32,
        /// Why, when the operator's autoscaler decided it.
        why: Option<String>,
    },
}

/// A replica change seen in one reconcile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaChange {
    /// Replicas of the Deployment before.
    pub from: i32,
    /// Replicas now.
    pub to: i32,
    /// The autoscaler's reason, when it made the change.
    pub why: Option<String>,
}

/// The events that the move from `previous` to `next` status (and a replica change) deserves.
pub fn diff(
    previous: &InferencePoolStatus,
    next: &InferencePoolStatus,
    scaled: Option<&ReplicaChange>,
) -> Vec<PoolEvent> {
    let mut events = Vec::new();
    let feasible = condition(next, ConditionType::PlanFeasible);
    let was = condition(previous, ConditionType::PlanFeasible);
    match feasible {
        Some(c) if c.status == ConditionStatus::True => {
            if let Some(plan) = next
                .plan
                .as_ref()
                .filter(|p| previous.plan.as_ref() != Some(*p))
            {
                events.push(PoolEvent::PlanChanged {
                    note: describe_plan(plan),
                });
            }
        }
        Some(c) if c.status == ConditionStatus::False => {
            let unchanged = was.is_some_and(|w| {
                w.status == c.status && w.reason == c.reason && w.message == c.message
            });
            if !unchanged {
                let note = c.message.clone();
                events.push(if c.reason == "InvalidSpec" {
                    PoolEvent::InvalidSpec { note }
                } else {
                    PoolEvent::PlanInfeasible { note }
                });
            }
        }
        _ => {}
    }
    if let Some(change) = scaled.filter(|c| c.from != c.to) {
        events.push(PoolEvent::Scaled {
            from: change.from,
            to: change.to,
            why: change.why.clone(),
        });
    }
    events
}

/// The replica change between the Deployment before and after a reconcile, with the
/// autoscaler's reason when it made it.
pub fn replica_change(
    before: Option<&Deployment>,
    after: Option<&Deployment>,
    scaled: Option<ReplicaChange>,
) -> Option<ReplicaChange> {
    let replicas =
        |d: Option<&Deployment>| d.and_then(|d| d.spec.as_ref()).and_then(|s| s.replicas);
    let (from, to) = (replicas(before)?, replicas(after)?);
    (from != to).then(|| ReplicaChange {
        from,
        to,
        why: scaled.and_then(|s| s.why),
    })
}

/// One sentence describing a plan: per model precision, batch and slots, then memory use.
pub fn describe_plan(plan: &PoolPlan) -> String {
    let models = plan
        .models
        .iter()
        .map(|m| {
            let residency = if m.resident { "" } else { ", on demand" };
            format!(
                "{} {} batch {} x {} slot(s){residency}",
                m.name, m.precision, m.batch_size, m.slots
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    format!(
        "{models}; {} of {} planned",
        format_bytes(plan.planned_bytes),
        format_bytes(plan.budget_bytes)
    )
}

impl PoolEvent {
    /// The event in the shape the recorder publishes.
    pub fn to_event(&self) -> Event {
        let (type_, reason, action, note) = match self {
            PoolEvent::PlanChanged { note } => {
                (EventType::Normal, "PlanChanged", "Plan", note.clone())
            }
            PoolEvent::PlanInfeasible { note } => {
                (EventType::Warning, "PlanInfeasible", "Plan", note.clone())
            }
            PoolEvent::InvalidSpec { note } => {
                (EventType::Warning, "InvalidSpec", "Plan", note.clone())
            }
            PoolEvent::Scaled { from, to, why } => {
                let why = why
                    .as_deref()
                    .map_or_else(String::new, |w| format!(": {w}"));
                let note = format!("scaled from {from} to {to} replicas{why}");
                (EventType::Normal, "Scaled", "Scale", note)
            }
        };
        Event {
            type_,
            reason: reason.into(),
            // The API server caps an event's note at 1 kB.
            note: Some(truncate(&note, 1000)),
            action: action.into(),
            secondary: None,
        }
    }
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max.saturating_sub(3);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

/// Publishes `events` about `pool`; a failure is logged and does not fail the reconcile.
pub async fn publish(recorder: &Recorder, pool: &InferencePool, events: &[PoolEvent]) {
    let reference = pool.object_ref(&());
    for event in events {
        let event = event.to_event();
        if let Err(e) = recorder.publish(&event, &reference).await {
            tracing::warn!(reason = %event.reason, error = %e, "could not publish an event");
        }
    }
}

#[cfg(test)]
#[path = "events_tests.rs"]
mod tests;
