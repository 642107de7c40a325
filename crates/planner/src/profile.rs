//! Model profiles: what one model costs (memory) and yields (images per second) at one precision,
//! estimated from the spec before the pods have run and measured once they have.
//!
//! [`MeasuredProfiles`] is what the operator collects from the pods' telemetry; [`profile_model`]
//! combines it with the spec into a [`ModelProfile`], the only view of a model the search uses.

use crate::infeasible::PlanError;
use crate::memory::{weights_bytes, Basis, PeakCurve};
use crate::throughput::SpeedCurve;
use gpupool_api::telemetry::{ProfilePoint, TelemetryReport};
use gpupool_api::{parse_quantity_bytes, ModelSpec, Precision};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What the pods measured, per model name, plus the card's total memory; the planner's second input
/// besides the spec. `MeasuredProfiles::default()` means nothing has been measured yet.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MeasuredProfiles {
    /// Total memory of the card as NVML reports it on the pods (the smallest, if they differ).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub card_bytes: Option<u64>,
    /// Calibration per model name; names not in the spec are ignored.
    #[serde(default)]
    pub models: BTreeMap<String, MeasuredModel>,
}

/// What the pods measured for one model.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MeasuredModel {
    /// Bytes the loaded weights take, per precision they were loaded at.
    #[serde(default)]
    pub weights_bytes: BTreeMap<Precision, u64>,
    /// Calibrated (precision, batch size) → latency and peak bytes above the weights.
    #[serde(default)]
    pub points: Vec<ProfilePoint>,
}

impl MeasuredModel {
    /// A model measured at these points, weights not yet known.
    pub fn new(points: Vec<ProfilePoint>) -> Self {
        Self {
            weights_bytes: BTreeMap::new(),
            points,
        }
    }

    /// Adds the measured weights at one precision.
    pub fn with_weights(mut self, precision: Precision, bytes: u64) -> Self {
        self.weights_bytes.insert(precision, bytes);
        self
    }

    fn points_at(&self, precision: Precision) -> impl Iterator<Item = &ProfilePoint> {
        self.points.iter().filter(move |p| p.precision == precision)
    }

    /// The measured peak curve at `precision`, if any point was measured there.
    pub fn peak_curve(&self, precision: Precision) -> Option<PeakCurve> {
        PeakCurve::measured(
            self.points_at(precision)
                .map(|p| (p.batch_size, p.peak_bytes)),
        )
    }

    /// The measured speed curve at `precision`, if any valid point was measured there.
    pub fn speed_curve(&self, precision: Precision) -> Option<SpeedCurve> {
        SpeedCurve::measured(
            self.points_at(precision)
                .map(|p| (p.batch_size, p.latency_ms)),
        )
    }
}

impl MeasuredProfiles {
    /// Sets the card's total memory.
    pub fn with_card_bytes(mut self, bytes: u64) -> Self {
        self.card_bytes = Some(bytes);
        self
    }

    /// Adds (or replaces) one model's measurements.
    pub fn with_model(mut self, name: impl Into<String>, model: MeasuredModel) -> Self {
        self.models.insert(name.into(), model);
        self
    }

    /// One model's measurements, by name.
    pub fn model(&self, name: &str) -> Option<&MeasuredModel> {
        self.models.get(name)
    }

    /// Merges the pods' telemetry into one set of measurements, conservatively, so the operator
    /// needs no merging logic of its own: the smallest card; per model and precision the largest
    /// weights; per (model, precision, batch) the slowest latency and the largest peak. Points and
    /// weights reported at `auto` are ignored (a pod reports the precision it resolved to).
    pub fn from_reports(reports: &[TelemetryReport]) -> Self {
        let mut merged = Self {
            card_bytes: reports
                .iter()
                .filter_map(|r| r.device.as_ref().map(|d| d.total_bytes))
                .filter(|b| *b > 0)
                .min(),
            models: BTreeMap::new(),
        };
        let mut points: BTreeMap<(String, Precision, u32), ProfilePoint> = BTreeMap::new();
        for model in reports.iter().flat_map(|r| &r.models) {
            let entry = merged.models.entry(model.name.clone()).or_default();
            if model.weights_bytes > 0 && model.precision != Precision::Auto {
                let w = entry.weights_bytes.entry(model.precision).or_insert(0);
                *w = (*w).max(model.weights_bytes);
            }
            for p in model
                .profile
                .iter()
                .filter(|p| p.precision != Precision::Auto)
            {
                let key = (model.name.clone(), p.precision, p.batch_size);
                let slot = points.entry(key).or_insert_with(|| p.clone());
                slot.latency_ms = slot.latency_ms.max(p.latency_ms);
                slot.peak_bytes = slot.peak_bytes.max(p.peak_bytes);
            }
        }
        for ((name, _, _), point) in points {
            merged.models.entry(name).or_default().points.push(point);
        }
        merged
    }
}

/// One model at one concrete precision: weights, peak curve and speed curve. The search sees a
/// model only through this, so estimated and measured models are planned alike.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelProfile {
    /// The concrete precision (never `auto`).
    pub precision: Precision,
    /// Bytes the weights take at that precision.
    pub weights_bytes: u64,
    /// What the weights figure rests on.
    pub weights_basis: Basis,
    /// Peak bytes per batch above the weights.
    pub peak: PeakCurve,
    /// Images per second per batch size and slots.
    pub speed: SpeedCurve,
}

impl ModelProfile {
    /// Peak bytes one running batch of `batch` adds above the weights.
    pub fn batch_peak_bytes(&self, batch: u32) -> u64 {
        self.peak.bytes(batch)
    }

    /// Images per second with `slots` concurrent batches of up to `batch` for `users` closed-loop
    /// users (see `throughput::closed_loop_images_per_second`).
    pub fn images_per_second(&self, batch: u32, slots: u32, users: u32) -> f64 {
        crate::throughput::closed_loop_images_per_second(&self.speed, batch, slots, users)
    }

    /// Bytes the model reserves while loaded: weights plus `slots` × batch peak (saturating).
    pub fn reservation_bytes(&self, batch: u32, slots: u32) -> u64 {
        self.weights_bytes
            .saturating_add(u64::from(slots).saturating_mul(self.batch_peak_bytes(batch)))
    }
}

/// Builds the profile the search uses for one model: the precision resolved (see
/// [`resolve_precision`]), then for it measured figures where the pods have them and estimates
/// (memory.rs, throughput.rs) where not.
pub fn profile_model(
    spec: &ModelSpec,
    measured: Option<&MeasuredModel>,
) -> Result<ModelProfile, PlanError> {
    let hint = spec.profile.as_ref();
    let activation = match hint.and_then(|h| h.activation_per_image.as_deref()) {
        Some(text) => Some(parse_quantity_bytes(text).map_err(|e| {
            PlanError::invalid(
                format!("models[{}].profile.activationPerImage", spec.name),
                e.to_string(),
            )
        })?),
        None => None,
    };
    let parameters = hint.and_then(|h| h.parameters);
    let precision = resolve_precision(spec, measured);
    let no_weights = BTreeMap::new();
    let measured_weights = measured.map_or(&no_weights, |m| &m.weights_bytes);
    let (weights_bytes, weights_basis) = weights_bytes(parameters, measured_weights, precision);
    let peak = measured
        .and_then(|m| m.peak_curve(precision))
        .unwrap_or_else(|| PeakCurve::estimated(precision, &spec.input, activation));
    let speed = measured
        .and_then(|m| m.speed_curve(precision))
        .unwrap_or_else(|| SpeedCurve::estimated(precision, &spec.input));
    Ok(ModelProfile {
        precision,
        weights_bytes,
        weights_basis,
        peak,
        speed,
    })
}

/// The concrete precision a model is planned at, because `auto` cannot be planned.
///
/// An explicit precision is kept. `auto` is fp16 unless the measurements show another precision
/// (bf16, then fp32) dominating it: measured at one or more batch sizes where fp16 was measured
/// too, and at every such batch size strictly faster while needing no more memory (weights plus
/// peak). Among several such precisions the one fastest at the largest shared batch size wins,
/// bf16 on a tie. The rule ignores the budget, so it cannot break the planner's monotonicity.
pub fn resolve_precision(spec: &ModelSpec, measured: Option<&MeasuredModel>) -> Precision {
    if spec.precision != Precision::Auto {
        return spec.precision;
    }
    let Some(measured) = measured else {
        return Precision::Fp16;
    };
    let parameters = spec.profile.as_ref().and_then(|h| h.parameters);
    let table = |precision: Precision| -> BTreeMap<u32, (f64, u64)> {
        let weights = weights_bytes(parameters, &measured.weights_bytes, precision).0;
        let mut rows: BTreeMap<u32, (f64, u64)> = BTreeMap::new();
        for p in measured.points_at(precision) {
            if p.batch_size >= 1 && p.latency_ms.is_finite() && p.latency_ms > 0.0 {
                let row = rows.entry(p.batch_size).or_insert((0.0, 0));
                row.0 = row.0.max(p.latency_ms);
                row.1 = row.1.max(weights.saturating_add(p.peak_bytes));
            }
        }
        rows
    };
    let fp16 = table(Precision::Fp16);
    let mut best: Option<(Precision, f64)> = None;
    for candidate in [Precision::Bf16, Precision::Fp32] {
        let rows = table(candidate);
        let shared: Vec<u32> = rows
            .keys()
            .filter(|b| fp16.contains_key(b))
            .copied()
            .collect();
        let dominates = !shared.is_empty()
            && shared.iter().all(|b| {
                let (lat_c, mem_c) = rows[b];
                let (lat_16, mem_16) = fp16[b];
                lat_c < lat_16 && mem_c <= mem_16
            });
        if let (true, Some(largest)) = (dominates, shared.last()) {
            let rate = f64::from(*largest) * 1000.0 / rows[largest].0;
            if best.is_none_or(|(_, r)| rate > r) {
                best = Some((candidate, rate));
            }
        }
    }
    best.map_or(Precision::Fp16, |(p, _)| p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpupool_api::model::ProfileHint;
    use gpupool_api::telemetry::{AllocatorTelemetry, DeviceTelemetry, ModelState, ModelTelemetry};
    use gpupool_api::ModelSource;

    fn point(precision: Precision, batch: u32, latency_ms: f64, peak: u64) -> ProfilePoint {
        ProfilePoint {
            precision,
            batch_size: batch,
            latency_ms,
            peak_bytes: peak,
        }
    }

    fn spec(precision: Precision) -> ModelSpec {
        ModelSpec {
            name: "m".into(),
            source: ModelSource {
                uri: "/models/m.pt".into(),
                format: Default::default(),
            },
            input: Default::default(),
            precision,
            max_batch: 8,
            max_queue_delay_ms: 5,
            traffic_share: 1.0,
            pinned: false,
            profile: Some(ProfileHint {
                parameters: Some(1000),
                activation_per_image: None,
            }),
        }
    }

    #[test]
    fn auto_is_fp16_without_measurements() {
        assert_eq!(
            resolve_precision(&spec(Precision::Auto), None),
            Precision::Fp16
        );
        let only_fp32 = MeasuredModel::new(vec![point(Precision::Fp32, 1, 1.0, 10)]);
        assert_eq!(
            resolve_precision(&spec(Precision::Auto), Some(&only_fp32)),
            Precision::Fp16
        );
        assert_eq!(
            resolve_precision(&spec(Precision::Fp32), None),
            Precision::Fp32
        );
    }

    #[test]
    fn auto_moves_off_fp16_only_when_faster_at_no_more_memory() {
        let faster_same_memory = MeasuredModel::new(vec![
            point(Precision::Fp16, 1, 10.0, 4000),
            point(Precision::Fp32, 1, 8.0, 2000),
        ]);
        // fp32 weights 4000 + 2000 = 6000 <= fp16 2000 + 4000: fp32 dominates.
        assert_eq!(
            resolve_precision(&spec(Precision::Auto), Some(&faster_same_memory)),
            Precision::Fp32
        );
        let faster_more_memory = MeasuredModel::new(vec![
            point(Precision::Fp16, 1, 10.0, 4000),
            point(Precision::Fp32, 1, 8.0, 2001),
        ]);
        assert_eq!(
            resolve_precision(&spec(Precision::Auto), Some(&faster_more_memory)),
            Precision::Fp16
        );
        let slower_somewhere = MeasuredModel::new(vec![
            point(Precision::Fp16, 1, 10.0, 100),
            point(Precision::Fp16, 8, 20.0, 400),
            point(Precision::Bf16, 1, 9.0, 100),
            point(Precision::Bf16, 8, 21.0, 400),
        ]);
        assert_eq!(
            resolve_precision(&spec(Precision::Auto), Some(&slower_somewhere)),
            Precision::Fp16
        );
        let both = MeasuredModel::new(vec![
            point(Precision::Fp16, 8, 20.0, 9000),
            point(Precision::Bf16, 8, 19.0, 9000),
            point(Precision::Fp32, 8, 19.0, 3000),
        ]);
        assert_eq!(
            resolve_precision(&spec(Precision::Auto), Some(&both)),
            Precision::Bf16,
            "tie: bf16"
        );
    }

    #[test]
    fn profile_mixes_measured_and_estimated_parts() {
        let measured = MeasuredModel::new(vec![point(Precision::Fp16, 1, 10.0, 500)])
            .with_weights(Precision::Fp16, 3000);
        let profile = profile_model(&spec(Precision::Fp16), Some(&measured)).expect("valid");
        assert_eq!(profile.weights_bytes, 3000);
        assert_eq!(profile.weights_basis, Basis::Measured);
        assert_eq!(profile.batch_peak_bytes(1), 500);
        assert_eq!(profile.images_per_second(1, 1, 2), 100.0);
        assert_eq!(profile.reservation_bytes(1, 3), 3000 + 3 * 500);
        let estimated = profile_model(&spec(Precision::Fp32), Some(&measured)).expect("valid");
        assert_eq!(estimated.weights_bytes, 6000, "fp16 weights scaled to fp32");
        assert_eq!(estimated.peak.basis(), Basis::Default);
        assert_eq!(estimated.speed.basis(), Basis::Default);
    }

    #[test]
    fn malformed_activation_hint_is_an_invalid_spec() {
        let mut bad = spec(Precision::Fp16);
        bad.profile = Some(ProfileHint {
            parameters: None,
            activation_per_image: Some("1.2GB".into()),
        });
        match profile_model(&bad, None) {
            Err(PlanError::InvalidSpec { field, .. }) => {
                assert_eq!(field, "models[m].profile.activationPerImage")
            }
            other => panic!("expected InvalidSpec, got {other:?}"),
        }
    }

    fn report(total: u64, weights: u64, points: Vec<ProfilePoint>) -> TelemetryReport {
        TelemetryReport {
            api_version: gpupool_api::API_VERSION.into(),
            kind: "SidecarTelemetry".into(),
            config_generation: 1,
            ready: true,
            circuit_open: false,
            device: Some(DeviceTelemetry {
                name: "NVIDIA H200".into(),
                total_bytes: total,
                used_bytes: 0,
                free_bytes: total,
                utilization_percent: 0,
                process_used_bytes: None,
            }),
            allocator: AllocatorTelemetry::default(),
            models: vec![ModelTelemetry {
                name: "unet".into(),
                state: ModelState::Ready,
                ready: true,
                reason: None,
                precision: Precision::Fp16,
                batch_cap: 8,
                slots: 1,
                weights_bytes: weights,
                queue_depth: 0,
                in_flight: 0,
                images_total: 0,
                batches_total: 0,
                rejected_total: 0,
                oom_events_total: 0,
                failed_total: 0,
                latency_p50_ms: 0.0,
                latency_p99_ms: 0.0,
                images_per_second: 0.0,
                profile: points,
            }],
        }
    }

    #[test]
    fn reports_merge_conservatively() {
        let a = report(
            1000,
            60,
            vec![
                point(Precision::Fp16, 8, 60.0, 900),
                point(Precision::Auto, 1, 1.0, 1),
            ],
        );
        let b = report(
            900,
            62,
            vec![
                point(Precision::Fp16, 8, 50.0, 950),
                point(Precision::Fp16, 1, 9.0, 500),
            ],
        );
        let merged = MeasuredProfiles::from_reports(&[a, b]);
        assert_eq!(merged.card_bytes, Some(900));
        let unet = merged.model("unet").expect("unet");
        assert_eq!(unet.weights_bytes, BTreeMap::from([(Precision::Fp16, 62)]));
        assert_eq!(
            unet.points,
            vec![
                point(Precision::Fp16, 1, 9.0, 500),
                point(Precision::Fp16, 8, 60.0, 950)
            ]
        );
        assert_eq!(
            MeasuredProfiles::from_reports(&[]),
            MeasuredProfiles::default()
        );
    }
}
