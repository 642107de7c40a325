//! Partitioning a pod's concurrency among its models: users per model by traffic share, the slots
//! each model may have, and the batch sizes worth considering.
//!
//! Each concurrent user is a potential execution slot: a model with `u` users never needs more than
//! `u` batches in flight. Slots beyond [`MAX_USEFUL_SLOTS`] add nothing to the throughput model, so
//! a model's slots are at most `min(users, MAX_USEFUL_SLOTS)`; a fixed `gpu.streams` bounds their
//! sum (checked by the search).

use crate::throughput::MAX_USEFUL_SLOTS;

/// Traffic shares normalised to sum to 1, because the search weighs models by them. All-zero shares
/// (nobody said) are read as equal shares.
pub fn traffic_weights(shares: &[f64]) -> Vec<f64> {
    let total: f64 = shares.iter().sum();
    if total > 0.0 {
        shares.iter().map(|s| s / total).collect()
    } else {
        vec![1.0 / shares.len().max(1) as f64; shares.len()]
    }
}

/// Splits `total` users across models in proportion to `shares` by largest remainder (Hamilton),
/// every model getting at least one, so each model has at least one slot.
///
/// Whole quotas first; the users left go to the largest fractional parts (earlier model on a tie).
/// A model left with none then takes one from the model with most users (earlier on a tie) while
/// that model has more than one; if `total` is smaller than the number of models, each model still
/// gets one and the sum exceeds `total`.
pub fn split_users(total: u32, shares: &[f64]) -> Vec<u32> {
    let weights = traffic_weights(shares);
    let quotas: Vec<f64> = weights.iter().map(|w| w * f64::from(total)).collect();
    let mut users: Vec<u32> = quotas.iter().map(|q| q.floor() as u32).collect();
    let assigned: u32 = users.iter().sum();
    let mut order: Vec<usize> = (0..quotas.len()).collect();
    // Stable sort: equal remainders keep model order.
    order.sort_by(|a, b| {
        let (ra, rb) = (
            quotas[*a] - quotas[*a].floor(),
            quotas[*b] - quotas[*b].floor(),
        );
        rb.total_cmp(&ra)
    });
    for index in order
        .iter()
        .cycle()
        .take(total.saturating_sub(assigned) as usize)
    {
        users[*index] += 1;
    }
    for needy in 0..users.len() {
        if users[needy] > 0 {
            continue;
        }
        let donor = (0..users.len())
            .filter(|d| users[*d] > 1)
            .max_by(|a, b| users[*a].cmp(&users[*b]).then(b.cmp(a)));
        if let Some(donor) = donor {
            users[donor] -= 1;
        }
        users[needy] = 1;
    }
    users
}

/// Most slots a model with `users` users may get.
pub fn max_slots(users: u32) -> u32 {
    users.clamp(1, MAX_USEFUL_SLOTS)
}

/// Batch sizes the search considers for a model: powers of two up to `max_batch`, `max_batch`
/// itself and every measured batch size up to it, ascending. Restricting to these keeps the search
/// small (at most a dozen or so per model) and puts every choice on a size the pods calibrated or
/// can calibrate cheaply.
pub fn candidate_batches(max_batch: u32, measured: impl IntoIterator<Item = u32>) -> Vec<u32> {
    let max_batch = max_batch.max(1);
    let mut batches: Vec<u32> = std::iter::successors(Some(1u32), |b| b.checked_mul(2))
        .take_while(|b| *b <= max_batch)
        .chain([max_batch])
        .chain(measured.into_iter().filter(|b| (1..=max_batch).contains(b)))
        .collect();
    batches.sort_unstable();
    batches.dedup();
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_follow_shares_by_largest_remainder() {
        assert_eq!(split_users(8, &[4.0, 2.0, 2.0]), vec![4, 2, 2]);
        assert_eq!(
            split_users(8, &[1.0, 1.0, 1.0]),
            vec![3, 3, 2],
            "ties: earlier model"
        );
        assert_eq!(split_users(10, &[0.5, 0.3, 0.2]), vec![5, 3, 2]);
        assert_eq!(split_users(7, &[0.5, 0.3, 0.2]), vec![4, 2, 1]);
        assert_eq!(split_users(1, &[1.0]), vec![1]);
    }

    #[test]
    fn every_model_gets_a_user() {
        assert_eq!(split_users(8, &[1.0, 0.0, 0.0]), vec![6, 1, 1]);
        assert_eq!(split_users(8, &[100.0, 1.0]), vec![7, 1]);
        assert_eq!(
            split_users(2, &[1.0, 1.0, 1.0]),
            vec![1, 1, 1],
            "more models than users"
        );
        assert_eq!(split_users(4, &[0.0, 0.0]), vec![2, 2], "all zero: equal");
    }

    #[test]
    fn users_sum_to_target_when_there_are_enough() {
        for total in 3..40 {
            let users = split_users(total, &[0.7, 0.01, 0.29]);
            assert_eq!(users.iter().sum::<u32>(), total);
            assert!(users.iter().all(|u| *u >= 1));
        }
    }

    #[test]
    fn weights_normalise() {
        assert_eq!(traffic_weights(&[3.0, 1.0]), vec![0.75, 0.25]);
        assert_eq!(traffic_weights(&[0.0, 0.0]), vec![0.5, 0.5]);
    }

    #[test]
    fn slots_are_bounded_by_users_and_usefulness() {
        assert_eq!(max_slots(0), 1);
        assert_eq!(max_slots(3), 3);
        assert_eq!(max_slots(100), MAX_USEFUL_SLOTS);
    }

    #[test]
    fn batches_are_powers_of_two_max_and_measured() {
        assert_eq!(candidate_batches(16, []), vec![1, 2, 4, 8, 16]);
        assert_eq!(
            candidate_batches(12, [3, 8, 40, 0]),
            vec![1, 2, 3, 4, 8, 12]
        );
        assert_eq!(candidate_batches(0, []), vec![1]);
        assert_eq!(candidate_batches(256, []).len(), 9);
    }
}
