//! The search: per model a batch size, a number of slots and residency, so that the reservations
//! fit the budget and the GPU serves the spec's traffic mix as fast as the estimates allow.
//!
//! # Objective
//! Models share one GPU, so their throughputs do not add up: with traffic split by weights `w_m`
//! (normalised traffic shares) and model `m` alone reaching `r_m` images per second, one image of
//! the mix costs `Σ w_m / r_m` seconds of GPU, and the GPU serves `R = 1 / (Σ w_m / r_m)` images per
//! second of the mix (`w_m × R` of them model `m`'s). The search minimises `Σ w_m / r_m`, which
//! maximises `R`; a model with no traffic costs nothing and gets the smallest configuration.
//!
//! # All models resident
//! Each model's candidates are (batch, slots) from partition.rs, costing
//! `weights + slots × batch peak` bytes, rounded *up* to [`GRAIN_BYTES`]; the budget is rounded
//! *down* to it, so whatever the search accepts fits in bytes. Dominated candidates (no cheaper in
//! cost for more memory) are dropped. A dynamic program over (model, memory units) then finds the
//! exact minimum of `Σ w_m / r_m` within the budget: the same answer a search of every combination
//! would give, in `models × units × candidates` steps. Ties go to the candidate with less memory,
//! then the earlier one (smaller slots, then batch), so equal inputs give equal plans.
//!
//! # Fallback: loading on demand
//! If even batch 1 with one slot per model does not fit with every model resident, unpinned models
//! may be left non-resident: they load on demand into an area big enough for the largest of them,
//! so a plan needs `Σ resident reservations + max non-resident reservation`. Fallback plans keep
//! batch 1 and one slot everywhere, count a non-resident model's throughput at
//! [`NON_RESIDENT_FACTOR`] (it loses time loading weights whenever traffic switches to it), and
//! among the residency sets that fit take the fastest, then the one with fewer models unloaded,
//! then the earlier models unloaded last.
//!
//! # Why more budget never lowers the estimated throughput
//! - Candidates (including the slot caps from users and streams), their rounded sizes and costs,
//!   and the fallback's residency sets do not depend on the budget; only which of them fit does,
//!   and a larger budget never makes one stop fitting.
//! - Costs are integers (picoseconds of GPU per image of the mix, see [`cost_of`]), so sums are
//!   exact and do not depend on the order they are added in: equal plans tie exactly, and no
//!   rounding can make a larger budget look worse.
//! - In the dynamic program, `best[u]` is the least cost within `u` units. `best` is non-increasing
//!   in `u`: it is a minimum of sums `best_prev[u - size] + cost`, each term no larger than at
//!   `u - 1` (induction on models). So the resident optimum's cost never rises with the budget, and
//!   `R = 1 / cost` never falls.
//! - A fallback plan only exists where the dynamic program finds nothing, i.e. every model resident
//!   at batch 1 does not fit in whole units. Its cost is at
//!   least that of all models resident at batch 1 and one slot (same configurations, non-resident
//!   ones discounted), and that all-resident configuration is among the dynamic program's choices
//!   as soon as it fits, so crossing from fallback to resident planning never lowers `R`. Within
//!   the fallback, the choice is the best of a fixed family whose feasible part only grows.
//!
//! Per-model estimates are `w_m × R`, each non-decreasing in `R`, and so is their sum.

use crate::profile::ModelProfile;

/// Memory is planned in units of this many bytes (4 MiB): fine enough to waste at most 4 MiB per
/// model, coarse enough that an H200's budget is ~32 000 units.
pub const GRAIN_BYTES: u64 = 4 << 20;
/// Units the search looks at, at most (256 GiB); a larger budget is planned as if it were 256 GiB.
pub const MAX_UNITS: u64 = 1 << 16;
/// Throughput of a model loaded on demand relative to it staying resident (fallback plans only).
pub const NON_RESIDENT_FACTOR: f64 = 0.5;
/// Cost units per second of GPU per image of the mix (picoseconds).
const COST_UNITS_PER_SECOND: f64 = 1e12;
/// Largest cost of one model (a million seconds per image), so sums of any number stay exact.
const MAX_COST: u128 = 1_000_000_000_000_000_000;
/// Marks a memory size no combination reaches.
const UNREACHABLE: u128 = u128::MAX;

/// One model as the search sees it.
#[derive(Debug, Clone)]
pub(crate) struct SearchModel<'a> {
    /// Memory and speed.
    pub profile: &'a ModelProfile,
    /// Normalised traffic weight.
    pub weight: f64,
    /// Most slots this model may get.
    pub slot_cap: u32,
    /// Concurrent users this model's share of the pod's traffic gives it (closed loop).
    pub users: u32,
    /// Batch sizes to consider, ascending, starting at 1.
    pub batches: Vec<u32>,
    /// Whether the model must stay resident.
    pub pinned: bool,
}

/// The configuration chosen for one model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Pick {
    /// Batch size cap.
    pub batch: u32,
    /// Execution slots.
    pub slots: u32,
    /// Whether the weights stay loaded.
    pub resident: bool,
}

impl Pick {
    /// The smallest configuration (batch 1, one slot, resident): where every search starts.
    const SMALLEST: Pick = Pick {
        batch: 1,
        slots: 1,
        resident: true,
    };
}

/// A plan found by the search.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Outcome {
    /// One pick per model, in model order.
    pub picks: Vec<Pick>,
    /// `Σ w_m / r_m` in picoseconds of GPU per image of the traffic mix.
    pub cost: u128,
}

#[derive(Debug, Clone, Copy)]
struct Candidate {
    batch: u32,
    slots: u32,
    units: u64,
    cost: u128,
}

/// `weight / images_per_second` in picoseconds, rounded, at most [`MAX_COST`]. Integer, so that
/// sums are exact (see the module docs).
fn cost_of(weight: f64, images_per_second: f64) -> u128 {
    if weight <= 0.0 {
        return 0;
    }
    let picoseconds = weight / images_per_second * COST_UNITS_PER_SECOND;
    if picoseconds.is_finite() && picoseconds < MAX_COST as f64 {
        (picoseconds.round() as u128).min(MAX_COST)
    } else {
        MAX_COST
    }
}

/// Images per second of the traffic mix at a total cost (never divides by zero).
pub(crate) fn mix_images_per_second(cost: u128) -> f64 {
    COST_UNITS_PER_SECOND / cost.max(1) as f64
}

fn units_of(bytes: u64) -> u64 {
    bytes.div_ceil(GRAIN_BYTES)
}

/// The non-dominated candidates of one model, sorted by size then cost.
fn candidates(model: &SearchModel<'_>) -> Vec<Candidate> {
    let mut all: Vec<Candidate> = Vec::new();
    for slots in 1..=model.slot_cap.max(1) {
        for &batch in &model.batches {
            all.push(Candidate {
                batch,
                slots,
                units: units_of(model.profile.reservation_bytes(batch, slots)),
                cost: cost_of(
                    model.weight,
                    model.profile.images_per_second(batch, slots, model.users),
                ),
            });
        }
    }
    all.sort_by(|a, b| {
        a.units
            .cmp(&b.units)
            .then(a.cost.cmp(&b.cost))
            .then(a.slots.cmp(&b.slots))
            .then(a.batch.cmp(&b.batch))
    });
    let mut kept: Vec<Candidate> = Vec::new();
    for c in all {
        if kept.last().is_none_or(|k| c.cost < k.cost) {
            kept.push(c);
        }
    }
    kept
}

/// Finds the plan (see the module docs), or `None` when even the fallback does not fit.
pub(crate) fn search(models: &[SearchModel<'_>], budget_bytes: u64) -> Option<Outcome> {
    resident_search(models, budget_bytes).or_else(|| fallback_search(models, budget_bytes))
}

fn resident_search(models: &[SearchModel<'_>], budget_bytes: u64) -> Option<Outcome> {
    let lists: Vec<Vec<Candidate>> = models.iter().map(candidates).collect();
    let largest: u64 = lists
        .iter()
        .map(|l| l.last().map_or(0, |c| c.units))
        .fold(0u64, u64::saturating_add);
    let width = (budget_bytes / GRAIN_BYTES).min(MAX_UNITS).min(largest);
    let width = usize::try_from(width).ok()?;
    let mut best = vec![0u128; width + 1];
    let mut choices: Vec<Vec<u16>> = Vec::with_capacity(lists.len());
    for list in &lists {
        let mut next = vec![UNREACHABLE; width + 1];
        let mut chosen = vec![u16::MAX; width + 1];
        for u in 0..=width {
            for (index, c) in list.iter().enumerate() {
                let Ok(size) = usize::try_from(c.units) else {
                    break;
                };
                if size > u {
                    break;
                }
                let value = best[u - size].saturating_add(c.cost);
                if value < next[u] {
                    next[u] = value;
                    chosen[u] = u16::try_from(index).unwrap_or(u16::MAX);
                }
            }
        }
        best = next;
        choices.push(chosen);
    }
    let cost = best[width];
    if cost == UNREACHABLE {
        return None;
    }
    let mut picks = vec![Pick::SMALLEST; models.len()];
    let mut u = width;
    for (m, list) in lists.iter().enumerate().rev() {
        let c = list[usize::from(choices[m][u])];
        picks[m] = Pick {
            batch: c.batch,
            slots: c.slots,
            resident: true,
        };
        u -= usize::try_from(c.units).ok()?;
    }
    Some(Outcome { picks, cost })
}

/// Bytes a set of picks needs: resident reservations plus the largest non-resident one.
pub(crate) fn needed_bytes(models: &[SearchModel<'_>], picks: &[Pick]) -> u64 {
    let mut resident = 0u64;
    let mut on_demand = 0u64;
    for (model, pick) in models.iter().zip(picks) {
        let bytes = model.profile.reservation_bytes(pick.batch, pick.slots);
        if pick.resident {
            resident = resident.saturating_add(bytes);
        } else {
            on_demand = on_demand.max(bytes);
        }
    }
    resident.saturating_add(on_demand)
}

/// Residency sets of the fallback, as bit masks over the unpinned models, in preference order.
fn fallback_masks(unpinned: usize) -> Vec<u32> {
    let mut masks: Vec<u32> = (0..(1u32 << unpinned)).collect();
    masks.sort_by_key(|m| (m.count_ones(), *m));
    masks
}

fn fallback_picks(models: &[SearchModel<'_>], unpinned: &[usize], mask: u32) -> Vec<Pick> {
    let mut picks = vec![Pick::SMALLEST; models.len()];
    // Bit 0 is the last unpinned model, so lower masks unload later models first.
    for (bit, &m) in unpinned.iter().rev().enumerate() {
        if mask & (1 << bit) != 0 {
            picks[m].resident = false;
        }
    }
    picks
}

fn fallback_search(models: &[SearchModel<'_>], budget_bytes: u64) -> Option<Outcome> {
    let unpinned: Vec<usize> = (0..models.len()).filter(|m| !models[*m].pinned).collect();
    let mut best: Option<Outcome> = None;
    for mask in fallback_masks(unpinned.len()) {
        let picks = fallback_picks(models, &unpinned, mask);
        if needed_bytes(models, &picks) > budget_bytes {
            continue;
        }
        let cost = models.iter().zip(&picks).fold(0u128, |sum, (model, pick)| {
            let factor = if pick.resident {
                1.0
            } else {
                NON_RESIDENT_FACTOR
            };
            sum + cost_of(
                model.weight,
                model.profile.images_per_second(1, 1, model.users) * factor,
            )
        });
        if best.as_ref().is_none_or(|b| cost < b.cost) {
            best = Some(Outcome { picks, cost });
        }
    }
    best
}

/// The smallest plan of all, the one an infeasibility report measures the shortfall of: batch 1
/// and one slot everywhere, every unpinned model on demand (a lone unpinned model is counted as
/// resident: the bytes are the same and the message clearer).
pub(crate) fn minimal_picks(models: &[SearchModel<'_>]) -> Vec<Pick> {
    let unpinned = models.iter().filter(|m| !m.pinned).count();
    models
        .iter()
        .map(|m| Pick {
            batch: 1,
            slots: 1,
            resident: m.pinned || unpinned == 1,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::{Basis, PeakCurve};
    use crate::throughput::SpeedCurve;
    use gpupool_api::Precision;

    fn profile(weights: u64, fixed: u64, per_image: u64) -> ModelProfile {
        ModelProfile {
            precision: Precision::Fp16,
            weights_bytes: weights,
            weights_basis: Basis::Hint,
            peak: PeakCurve::Linear {
                fixed_bytes: fixed,
                per_image_bytes: per_image,
                basis: Basis::Hint,
            },
            speed: SpeedCurve::Estimated {
                batch_one_images_per_second: 10.0,
            },
        }
    }

    fn model(profile: &ModelProfile, weight: f64, pinned: bool) -> SearchModel<'_> {
        SearchModel {
            profile,
            weight,
            slot_cap: 2,
            // More users than the largest batch: no candidate pays the turnaround here.
            users: 16,
            batches: vec![1, 2, 4, 8],
            pinned,
        }
    }

    const G: u64 = GRAIN_BYTES;

    #[test]
    fn candidates_drop_dominated_configurations() {
        let p = profile(G, 0, G);
        let list = candidates(&model(&p, 1.0, false));
        assert!(list
            .windows(2)
            .all(|w| w[0].units < w[1].units && w[0].cost > w[1].cost));
        assert_eq!((list[0].batch, list[0].slots), (1, 1));
        let zero = candidates(&model(&p, 0.0, false));
        assert_eq!(zero.len(), 1, "no traffic: only the smallest configuration");
    }

    #[test]
    fn exact_search_spends_budget_where_it_pays() {
        let p = profile(G, 0, G);
        let models = [model(&p, 0.9, false), model(&p, 0.1, false)];
        let plan = search(&models, 12 * G).expect("fits");
        assert!(plan.picks.iter().all(|p| p.resident));
        assert!(needed_bytes(&models, &plan.picks) <= 12 * G);
        assert!(
            plan.picks[0].batch * plan.picks[0].slots > plan.picks[1].batch * plan.picks[1].slots
        );
        let tight = search(&models, 4 * G).expect("fits at batch 1");
        assert!(tight
            .picks
            .iter()
            .all(|p| p.batch == 1 && p.slots == 1 && p.resident));
    }

    #[test]
    fn fallback_unloads_unpinned_models_and_prefers_fewer() {
        let big = profile(10 * G, 0, 10 * G);
        let small = profile(G, 0, G);
        let models = [
            model(&big, 0.4, true),
            model(&small, 0.2, false),
            model(&small, 0.2, false),
            model(&small, 0.2, false),
        ];
        let residency = |budget| {
            search(&models, budget).map(|o| o.picks.iter().map(|p| p.resident).collect::<Vec<_>>())
        };
        // All resident at batch 1: 20 + 2 + 2 + 2 grains. One model on demand saves nothing (the
        // area is its own size); two save one model's worth; three save two.
        assert_eq!(residency(26 * G), Some(vec![true; 4]));
        assert_eq!(residency(25 * G), residency(24 * G));
        assert_eq!(
            residency(24 * G),
            Some(vec![true, true, false, false]),
            "unload the later models first"
        );
        assert_eq!(residency(22 * G), Some(vec![true, false, false, false]));
        assert_eq!(residency(21 * G), None);
        assert_eq!(needed_bytes(&models, &minimal_picks(&models)), 22 * G);
    }

    #[test]
    fn cost_saturates() {
        assert_eq!(cost_of(0.0, 0.0), 0);
        assert_eq!(cost_of(1.0, 0.0), MAX_COST);
        assert_eq!(cost_of(1.0, f64::MIN_POSITIVE), MAX_COST);
        assert_eq!(cost_of(0.5, 2.0), 250_000_000_000);
        assert_eq!(mix_images_per_second(250_000_000_000), 4.0);
        assert_eq!(mix_images_per_second(0), 1e12);
    }

    #[test]
    fn masks_prefer_fewer_unloaded_then_earlier_bits() {
        assert_eq!(fallback_masks(2), vec![0, 1, 2, 3]);
        assert_eq!(fallback_masks(3), vec![0, 1, 2, 4, 3, 5, 6, 7]);
        let p = profile(G, 0, G);
        let models = [
            model(&p, 0.5, false),
            model(&p, 0.5, true),
            model(&p, 0.5, false),
        ];
        let residency = |mask| {
            fallback_picks(&models, &[0, 2], mask)
                .iter()
                .map(|p| p.resident)
                .collect::<Vec<_>>()
        };
        assert_eq!(residency(1), vec![true, true, false]);
        assert_eq!(residency(2), vec![false, true, true]);
    }
}
