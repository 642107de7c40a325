//! The top-level plan: from an `InferencePool` spec and what the pods measured, how each model runs
//! on each GPU of the pool — or why no plan fits.
//!
//! Steps: check the spec (validate.rs); resolve the budget (budget.rs); profile each model at its
//! concrete precision (profile.rs); split users and streams among models (partition.rs); search
//! for the configuration (search.rs); write it down as a [`PoolPlan`].

use crate::accounting::{fits, per_user_budget, Reservation};
use crate::budget::resolve_budget;
use crate::infeasible::PlanError;
use crate::partition::{candidate_batches, max_slots, split_users, traffic_weights};
use crate::profile::{profile_model, MeasuredProfiles, ModelProfile};
use crate::search::{
    minimal_picks, mix_images_per_second, needed_bytes, search, Pick, SearchModel,
};
use crate::validate::validate_spec;
use gpupool_api::quantity::format_bytes;
use gpupool_api::{InferencePoolSpec, ModelPlan, PoolPlan, Streams};

/// Plans one GPU of the pool: per model the precision, batch size, slots and residency, such that
/// the reservations fit the budget and the traffic mix is served as fast as the estimates allow.
///
/// Pure and deterministic: the same spec and measurements always give the same plan (so writing it
/// again changes nothing), and a larger budget never gives a lower
/// [`PoolPlan::estimated_images_per_second`] (see search.rs for why).
///
/// `estimated_images_per_second` of a model is its part of the mix the GPU serves to the spec's
/// concurrent users split by traffic share (each a closed loop: `throughput.rs`); their sum is the
/// pool's images per second per GPU.
pub fn plan_pool(
    spec: &InferencePoolSpec,
    measured: &MeasuredProfiles,
) -> Result<PoolPlan, PlanError> {
    validate_spec(spec)?;
    let budget = resolve_budget(&spec.gpu, measured.card_bytes)?;
    let profiles = spec
        .models
        .iter()
        .map(|m| profile_model(m, measured.model(&m.name)))
        .collect::<Result<Vec<ModelProfile>, PlanError>>()?;
    let shares: Vec<f64> = spec.models.iter().map(|m| m.traffic_share).collect();
    let weights = traffic_weights(&shares);
    let users = split_users(spec.concurrency.target_users, &shares);
    let slot_caps = slot_caps(&users, spec.gpu.streams);
    let search_models: Vec<SearchModel<'_>> = spec
        .models
        .iter()
        .zip(&profiles)
        .enumerate()
        .map(|(i, (model, profile))| {
            let measured_batches = measured
                .model(&model.name)
                .into_iter()
                .flat_map(|m| &m.points)
                .filter(|p| p.precision == profile.precision)
                .map(|p| p.batch_size);
            SearchModel {
                profile,
                weight: weights[i],
                slot_cap: slot_caps[i],
                users: users[i],
                batches: candidate_batches(model.max_batch, measured_batches),
                pinned: model.pinned,
            }
        })
        .collect();

    let Some(outcome) = search(&search_models, budget.budget_bytes) else {
        return Err(infeasible(spec, &search_models, budget.budget_bytes));
    };
    let mix_rate = mix_images_per_second(outcome.cost);
    let models: Vec<ModelPlan> = spec
        .models
        .iter()
        .zip(&search_models)
        .zip(&outcome.picks)
        .map(|((model, search_model), pick)| model_plan(&model.name, search_model, pick, mix_rate))
        .collect();
    let total_users: u32 = users.iter().sum();
    Ok(PoolPlan {
        card_bytes: budget.card_bytes,
        budget_bytes: budget.budget_bytes,
        headroom_bytes: budget.headroom_bytes,
        planned_bytes: needed_bytes(&search_models, &outcome.picks),
        users: total_users,
        per_user_bytes: per_user_budget(budget.budget_bytes, 0, total_users),
        streams: models.iter().map(|m| m.slots).sum(),
        models,
    })
}

/// Bytes a plan's models need together: every resident model's reservation plus the largest
/// reservation among the non-resident ones (they take turns in one on-demand area). Equals the
/// plain sum when all models are resident; [`plan_pool`] sets `planned_bytes` to this.
pub fn reserved_total(models: &[ModelPlan]) -> u64 {
    let resident = models
        .iter()
        .filter(|m| m.resident)
        .fold(0u64, |sum, m| sum.saturating_add(m.reserved_bytes));
    let on_demand = models
        .iter()
        .filter(|m| !m.resident)
        .map(|m| m.reserved_bytes)
        .max()
        .unwrap_or(0);
    resident.saturating_add(on_demand)
}

/// Per-model slot caps: users bound slots; a fixed stream count is shared among models in
/// proportion to their users (at least one each), so the caps, and hence the slots, sum to at most
/// the stream count without making the search depend on it.
fn slot_caps(users: &[u32], streams: Streams) -> Vec<u32> {
    let by_users = users.iter().map(|u| max_slots(*u));
    match streams {
        Streams::Auto => by_users.collect(),
        Streams::Count(n) => {
            let shares: Vec<f64> = users.iter().map(|u| f64::from(*u)).collect();
            split_users(n, &shares)
                .into_iter()
                .zip(by_users)
                .map(|(streams, cap)| streams.min(cap))
                .collect()
        }
    }
}

fn model_plan(name: &str, model: &SearchModel<'_>, pick: &Pick, mix_rate: f64) -> ModelPlan {
    let profile = model.profile;
    ModelPlan {
        name: name.to_string(),
        precision: profile.precision,
        batch_size: pick.batch,
        slots: pick.slots,
        resident: pick.resident,
        weights_bytes: profile.weights_bytes,
        batch_peak_bytes: profile.batch_peak_bytes(pick.batch),
        reserved_bytes: profile.reservation_bytes(pick.batch, pick.slots),
        estimated_images_per_second: model.weight * mix_rate,
    }
}

/// The error for a budget too small for even the smallest plan, naming what each model needs.
fn infeasible(
    spec: &InferencePoolSpec,
    models: &[SearchModel<'_>],
    budget_bytes: u64,
) -> PlanError {
    let picks = minimal_picks(models);
    let needed = needed_bytes(models, &picks);
    let fit = fits(budget_bytes, &[Reservation::fixed(needed)]);
    let parts: Vec<String> = spec
        .models
        .iter()
        .zip(models)
        .zip(&picks)
        .map(|((spec_model, model), pick)| {
            let p = model.profile;
            let how = match (pick.resident, spec_model.pinned) {
                (true, true) => "pinned, resident",
                (true, false) => "resident",
                (false, _) => "loaded on demand",
            };
            format!(
                "{}: {} weights {} ({}) + 1 slot × batch 1 peak {} ({}) = {} ({how})",
                spec_model.name,
                p.precision,
                format_bytes(p.weights_bytes),
                p.weights_basis.as_str(),
                format_bytes(p.batch_peak_bytes(1)),
                p.peak.basis().as_str(),
                format_bytes(p.reservation_bytes(1, 1)),
            )
        })
        .collect();
    let area = if picks.iter().any(|p| !p.resident) {
        "; pinned models stay resident and the others share an area the size of the largest"
    } else {
        ""
    };
    PlanError::Infeasible {
        needed_bytes: fit.needed_bytes,
        budget_bytes,
        shortfall_bytes: fit.shortfall_bytes(),
        detail: format!("{}{area}", parts.join("; ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_shared_by_users() {
        assert_eq!(slot_caps(&[4, 2, 2], Streams::Auto), vec![4, 2, 2]);
        assert_eq!(slot_caps(&[8, 1], Streams::Auto), vec![4, 1]);
        assert_eq!(slot_caps(&[4, 2, 2], Streams::Count(4)), vec![2, 1, 1]);
        assert_eq!(slot_caps(&[4, 2, 2], Streams::Count(64)), vec![4, 2, 2]);
        assert_eq!(slot_caps(&[1, 1, 1], Streams::Count(3)), vec![1, 1, 1]);
    }

    #[test]
    fn reserved_total_counts_one_on_demand_area() {
        let m = |reserved, resident| ModelPlan {
            name: "m".into(),
            precision: gpupool_api::Precision::Fp16,
            batch_size: 1,
            slots: 1,
            resident,
            weights_bytes: 0,
            batch_peak_bytes: reserved,
            reserved_bytes: reserved,
            estimated_images_per_second: 0.0,
        };
        assert_eq!(reserved_total(&[m(10, true), m(5, true)]), 15);
        assert_eq!(reserved_total(&[m(10, true), m(5, false), m(7, false)]), 17);
        assert_eq!(reserved_total(&[]), 0);
    }
}
