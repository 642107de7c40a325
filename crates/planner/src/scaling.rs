//! Autoscaling decisions: how many pods the pool should have, from the pods' telemetry.
//!
//! Pure: the caller passes the samples, the thresholds, the clock (`now_s`, seconds) and the
//! stabilisation state from the previous call, and stores the state it gets back. The rules:
//!
//! - **Bounds first.** Fewer pods than `minReplicas` or more than `maxReplicas` are corrected at
//!   once; every answer lies in `[min, max]`.
//! - **Scale out** when device memory on some pod is above the pressure watermark, or queued requests
//!   per ready pod are above the target, and the signal has persisted for the up window. Pods that
//!   refuse work (circuit open, memory at or above `rejectAbove`, rejected requests since the last
//!   sample) are urgent: requests are failing now, so the window is skipped. Out goes by what the
//!   queue asks for (enough pods for the target), at least one, at most [`MAX_STEP_UP`].
//! - **Hold scale-out while pods are not ready**: they were asked for already; more would only queue
//!   up behind the same missing GPUs (the cluster autoscaler is adding nodes).
//! - **Scale in** only when every pod is well below both thresholds — under [`SCALE_IN_FRACTION`]
//!   of the watermark and of the queue target, none refusing work, all pods ready and reporting —
//!   for the down window, one pod at a time ([`MAX_STEP_DOWN`]). The gap between "above" and
//!   "well below" is the hysteresis that keeps the pool from flapping.
//! - Anything else holds, and resets the timers: a signal must persist without a break.

use gpupool_api::ScalingSpec;
use serde::{Deserialize, Serialize};

/// Most pods one decision adds; GPU pods are expensive and slow to start.
pub const MAX_STEP_UP: i32 = 2;
/// Most pods one decision removes.
pub const MAX_STEP_DOWN: i32 = 1;
/// "Well below" for scale-in: this fraction of the watermark and of the queue target.
pub const SCALE_IN_FRACTION: f64 = 0.5;

/// One pod's latest telemetry, as far as scaling cares.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSample {
    /// Device memory in use, fraction of the card.
    pub memory_used_fraction: f64,
    /// Requests waiting, over all models.
    pub queue_depth: u32,
    /// Requests refused since the previous sample.
    pub rejects_delta: u64,
    /// Whether the pod refuses new work because memory is above `rejectAbove`.
    pub circuit_open: bool,
}

/// The thresholds scaling compares samples with (from the pool's `scaling` spec).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScalingThresholds {
    /// Memory use above which the pool scales out.
    pub memory_pressure_watermark: f64,
    /// Queued requests per ready pod above which the pool scales out.
    pub target_queue_per_replica: u32,
    /// Memory use at or above which pods refuse work.
    pub reject_above: f64,
}

impl ScalingThresholds {
    /// The thresholds of a pool's spec.
    pub fn from_spec(spec: &ScalingSpec) -> Self {
        Self {
            memory_pressure_watermark: spec.memory_pressure_watermark,
            target_queue_per_replica: spec.target_queue_per_replica,
            reject_above: spec.reject_above,
        }
    }
}

/// When the current scale-out or scale-in signal was first seen (seconds, the caller's clock);
/// carried from one decision to the next so the function stays pure.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Stabilization {
    /// First time the scale-out signal was seen without a break, if it is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub up_since_s: Option<u64>,
    /// First time the scale-in signal was seen without a break, if it is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub down_since_s: Option<u64>,
}

/// Everything one scaling decision is made from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScalingInput {
    /// Pods wanted now (`spec.replicas`).
    pub current_replicas: i32,
    /// Fewest pods allowed.
    pub min_replicas: i32,
    /// Most pods allowed.
    pub max_replicas: i32,
    /// Pods ready to serve.
    pub ready_replicas: i32,
    /// Latest telemetry, one per reporting pod.
    pub samples: Vec<PodSample>,
    /// What the samples are compared with.
    pub thresholds: ScalingThresholds,
    /// State returned by the previous decision.
    pub stabilization: Stabilization,
    /// The caller's clock, seconds.
    pub now_s: u64,
    /// How long a scale-out signal must persist, seconds.
    pub up_window_s: u64,
    /// How long a scale-in signal must persist, seconds.
    pub down_window_s: u64,
}

/// Which way a decision moves the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ScaleDirection {
    /// More pods.
    Up,
    /// Fewer pods.
    Down,
    /// As is.
    Hold,
}

/// A scaling decision: the replica count to set, why (for an event), and the state to pass next.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScaleDecision {
    /// Pods the pool should have; always within `[min, max]`.
    pub replicas: i32,
    /// Which way that is from the current count.
    pub direction: ScaleDirection,
    /// A sentence for events and logs.
    pub reason: String,
    /// Stabilisation state for the next call.
    pub stabilization: Stabilization,
}

/// Decides the pool's replica count from telemetry (see the module docs for the rules).
///
/// A negative minimum is read as 0 and a maximum below the minimum as the minimum
/// (`plan_pool` reports both as invalid specs).
pub fn decide_replicas(input: &ScalingInput) -> ScaleDecision {
    let lo = input.min_replicas.max(0);
    let hi = input.max_replicas.max(lo);
    let current = input.current_replicas.max(0);
    let t = &input.thresholds;
    let reset = Stabilization::default();
    let decision = |replicas: i32, reason: String, stabilization: Stabilization| ScaleDecision {
        replicas,
        direction: match replicas.cmp(&current) {
            std::cmp::Ordering::Greater => ScaleDirection::Up,
            std::cmp::Ordering::Less => ScaleDirection::Down,
            std::cmp::Ordering::Equal => ScaleDirection::Hold,
        },
        reason,
        stabilization,
    };
    if current < lo {
        return decision(
            lo,
            format!("{current} replicas is below minReplicas {lo}"),
            reset,
        );
    }
    if current > hi {
        return decision(
            hi,
            format!("{current} replicas is above maxReplicas {hi}"),
            reset,
        );
    }

    let samples = &input.samples;
    let ready = input.ready_replicas.max(0);
    let queue_total: u64 = samples.iter().map(|s| u64::from(s.queue_depth)).sum();
    let target = u64::from(t.target_queue_per_replica.max(1));
    let per_ready = queue_total as f64 / f64::from(ready.max(1));
    let max_memory = samples
        .iter()
        .map(|s| s.memory_used_fraction)
        .fold(0.0, f64::max);
    let refusing = samples
        .iter()
        .filter(|s| {
            s.circuit_open || s.rejects_delta > 0 || s.memory_used_fraction >= t.reject_above
        })
        .count();
    let pressure = max_memory > t.memory_pressure_watermark;
    let queue_high = per_ready > target as f64;
    let elapsed = |since: Option<u64>| input.now_s.saturating_sub(since.unwrap_or(input.now_s));

    if refusing > 0 || pressure || queue_high {
        let up_since = input.stabilization.up_since_s.or(Some(input.now_s));
        let waiting = Stabilization {
            up_since_s: up_since,
            down_since_s: None,
        };
        let why = if refusing > 0 {
            format!("{refusing} pod(s) refusing work")
        } else if pressure {
            format!(
                "device memory at {:.0}% is above the {:.0}% watermark",
                max_memory * 100.0,
                t.memory_pressure_watermark * 100.0
            )
        } else {
            format!("{per_ready:.1} queued requests per ready pod is above the target {target}")
        };
        if current >= hi {
            return decision(
                current,
                format!("{why}, but already at maxReplicas {hi}"),
                waiting,
            );
        }
        if ready < current {
            return decision(
                current,
                format!(
                    "{why}; waiting for {} pod(s) to become ready first",
                    current - ready
                ),
                waiting,
            );
        }
        let waited = elapsed(up_since);
        if refusing == 0 && waited < input.up_window_s {
            return decision(
                current,
                format!(
                    "{why} for {waited}s of the {}s scale-out window",
                    input.up_window_s
                ),
                waiting,
            );
        }
        let for_queue = i32::try_from(queue_total.div_ceil(target)).unwrap_or(i32::MAX);
        let wanted = for_queue.max(current.saturating_add(1));
        let replicas = wanted.min(current.saturating_add(MAX_STEP_UP)).min(hi);
        return decision(replicas, format!("{why}: scaling out to {replicas}"), reset);
    }

    // Every pod must have reported: a silent one may be the busy one.
    let reported = i32::try_from(samples.len()).unwrap_or(i32::MAX);
    let calm = !samples.is_empty()
        && ready >= current
        && reported >= current
        && samples.iter().all(|s| {
            s.memory_used_fraction < t.memory_pressure_watermark * SCALE_IN_FRACTION
                && f64::from(s.queue_depth) < target as f64 * SCALE_IN_FRACTION
        });
    if calm && current > lo {
        let down_since = input.stabilization.down_since_s.or(Some(input.now_s));
        let waited = elapsed(down_since);
        let why = format!(
            "all pods below {:.0}% of the memory watermark and of the queue target",
            SCALE_IN_FRACTION * 100.0
        );
        if waited < input.down_window_s {
            let waiting = Stabilization {
                up_since_s: None,
                down_since_s: down_since,
            };
            return decision(
                current,
                format!(
                    "{why} for {waited}s of the {}s scale-in window",
                    input.down_window_s
                ),
                waiting,
            );
        }
        let replicas = current.saturating_sub(MAX_STEP_DOWN).max(lo);
        return decision(replicas, format!("{why}: scaling in to {replicas}"), reset);
    }
    let reason = if samples.is_empty() {
        "no telemetry yet".to_string()
    } else if calm {
        format!("load is low, already at minReplicas {lo}")
    } else {
        "load within targets".to_string()
    };
    decision(current, reason, reset)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quiet() -> PodSample {
        PodSample {
            memory_used_fraction: 0.2,
            queue_depth: 0,
            rejects_delta: 0,
            circuit_open: false,
        }
    }

    fn input(current: i32, samples: Vec<PodSample>) -> ScalingInput {
        ScalingInput {
            current_replicas: current,
            min_replicas: 1,
            max_replicas: 4,
            ready_replicas: current,
            samples,
            thresholds: ScalingThresholds::from_spec(&ScalingSpec::default()),
            stabilization: Stabilization::default(),
            now_s: 1000,
            up_window_s: 30,
            down_window_s: 300,
        }
    }

    fn busy(queue: u32) -> PodSample {
        PodSample {
            queue_depth: queue,
            ..quiet()
        }
    }

    #[test]
    fn out_of_bounds_is_corrected_at_once() {
        let d = decide_replicas(&input(0, vec![]));
        assert_eq!((d.replicas, d.direction), (1, ScaleDirection::Up));
        let d = decide_replicas(&input(9, vec![quiet()]));
        assert_eq!((d.replicas, d.direction), (4, ScaleDirection::Down));
        assert!(d.reason.contains("maxReplicas"), "{}", d.reason);
    }

    #[test]
    fn queue_pressure_waits_for_the_up_window() {
        let mut i = input(1, vec![busy(40)]);
        let first = decide_replicas(&i);
        assert_eq!(first.direction, ScaleDirection::Hold);
        assert_eq!(first.stabilization.up_since_s, Some(1000));
        i.stabilization = first.stabilization;
        i.now_s = 1029;
        assert_eq!(decide_replicas(&i).direction, ScaleDirection::Hold);
        i.now_s = 1030;
        let d = decide_replicas(&i);
        // 40 queued / target 16 → 3 pods wanted, step bounded to +2 → 3.
        assert_eq!((d.replicas, d.direction), (3, ScaleDirection::Up));
        assert_eq!(d.stabilization, Stabilization::default());
        assert!(d.reason.contains("scaling out to 3"), "{}", d.reason);
    }

    #[test]
    fn step_up_is_bounded_and_clamped_to_max() {
        let mut i = input(1, vec![busy(1000)]);
        i.stabilization.up_since_s = Some(0);
        assert_eq!(decide_replicas(&i).replicas, 1 + MAX_STEP_UP);
        let mut at_three = input(3, vec![busy(1000); 3]);
        at_three.stabilization.up_since_s = Some(0);
        assert_eq!(decide_replicas(&at_three).replicas, 4);
        let mut at_max = input(4, vec![busy(1000); 4]);
        at_max.stabilization.up_since_s = Some(0);
        let d = decide_replicas(&at_max);
        assert_eq!((d.replicas, d.direction), (4, ScaleDirection::Hold));
    }

    #[test]
    fn memory_pressure_scales_out_by_one() {
        let mut i = input(
            2,
            vec![
                quiet(),
                PodSample {
                    memory_used_fraction: 0.87,
                    ..quiet()
                },
            ],
        );
        i.stabilization.up_since_s = Some(900);
        let d = decide_replicas(&i);
        assert_eq!((d.replicas, d.direction), (3, ScaleDirection::Up));
        assert!(d.reason.contains("watermark"), "{}", d.reason);
    }

    #[test]
    fn refusing_pods_skip_the_window() {
        for pod in [
            PodSample {
                circuit_open: true,
                ..quiet()
            },
            PodSample {
                rejects_delta: 3,
                ..quiet()
            },
            PodSample {
                memory_used_fraction: 0.95,
                ..quiet()
            },
        ] {
            let d = decide_replicas(&input(1, vec![pod]));
            assert_eq!(
                (d.replicas, d.direction),
                (2, ScaleDirection::Up),
                "{pod:?}"
            );
        }
    }

    #[test]
    fn no_scale_out_while_pods_are_not_ready() {
        let mut i = input(2, vec![busy(100)]);
        i.ready_replicas = 1;
        i.stabilization.up_since_s = Some(0);
        let d = decide_replicas(&i);
        assert_eq!(d.direction, ScaleDirection::Hold);
        assert!(d.reason.contains("waiting for 1 pod"), "{}", d.reason);
        assert_eq!(
            d.stabilization.up_since_s,
            Some(0),
            "the signal keeps its age"
        );
    }

    #[test]
    fn scale_in_needs_calm_for_the_down_window_and_goes_one_by_one() {
        let mut i = input(3, vec![quiet(); 3]);
        let first = decide_replicas(&i);
        assert_eq!(first.direction, ScaleDirection::Hold);
        assert_eq!(first.stabilization.down_since_s, Some(1000));
        i.stabilization = first.stabilization;
        i.now_s = 1300;
        let d = decide_replicas(&i);
        assert_eq!((d.replicas, d.direction), (2, ScaleDirection::Down));
    }

    #[test]
    fn a_silent_pod_keeps_the_pool_from_scaling_in() {
        // Three pods ready, two reported calm: the third may be the busy one.
        let mut i = input(3, vec![quiet(); 2]);
        i.stabilization.down_since_s = Some(0);
        let d = decide_replicas(&i);
        assert_eq!((d.replicas, d.direction), (3, ScaleDirection::Hold));
        assert_eq!(
            d.stabilization.down_since_s, None,
            "the calm timer restarts"
        );
    }

    #[test]
    fn hysteresis_band_holds_and_resets_timers() {
        // 60% memory: below the 85% watermark but not below half of it.
        let mut i = input(
            3,
            vec![
                PodSample {
                    memory_used_fraction: 0.6,
                    ..quiet()
                };
                3
            ],
        );
        i.stabilization.down_since_s = Some(0);
        let d = decide_replicas(&i);
        assert_eq!((d.replicas, d.direction), (3, ScaleDirection::Hold));
        assert_eq!(d.stabilization, Stabilization::default());
        // Queue of 10 per pod: below the target 16 but not below 8.
        let mut q = input(3, vec![busy(10); 3]);
        q.stabilization.down_since_s = Some(0);
        assert_eq!(decide_replicas(&q).direction, ScaleDirection::Hold);
    }

    #[test]
    fn never_below_min_and_no_data_holds() {
        let mut i = input(1, vec![quiet()]);
        i.stabilization.down_since_s = Some(0);
        let d = decide_replicas(&i);
        assert_eq!((d.replicas, d.direction), (1, ScaleDirection::Hold));
        assert!(d.reason.contains("minReplicas"), "{}", d.reason);
        let mut blind = input(3, vec![]);
        blind.stabilization.down_since_s = Some(0);
        let d = decide_replicas(&blind);
        assert_eq!((d.replicas, d.reason.as_str()), (3, "no telemetry yet"));
    }

    #[test]
    fn inverted_or_negative_bounds_do_not_panic() {
        let mut i = input(5, vec![quiet()]);
        i.min_replicas = -3;
        i.max_replicas = -1;
        assert_eq!(decide_replicas(&i).replicas, 0);
        i.min_replicas = 3;
        i.max_replicas = 1;
        assert_eq!(decide_replicas(&i).replicas, 3);
    }
}
