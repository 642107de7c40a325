//! Plain memory arithmetic: how much each user may have, and whether a list of reservations fits.
//!
//! These are the sums the seed analysis did by hand ("8 users on a 24 GB card with 2 GB reserved
//! get 2.75 GB each"); the planner uses the same functions, so the hand checks and the plans agree.
//! Integer bytes throughout, saturating, so no input can panic or wrap.

/// Bytes each concurrent user may use: the card less what is reserved, shared equally, rounded
/// down. Exists so the per-user figure in a plan and in hand checks is one computation.
///
/// Zero users get nothing (there is nobody to share among).
pub fn per_user_budget(card_bytes: u64, reserved_bytes: u64, users: u32) -> u64 {
    if users == 0 {
        return 0;
    }
    card_bytes.saturating_sub(reserved_bytes) / u64::from(users)
}

/// A block of memory reserved `count` times: e.g. 4 users × 1.3 GB, or one fixed overhead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reservation {
    /// How many times the block is reserved.
    pub count: u64,
    /// Bytes of one block.
    pub bytes_each: u64,
}

impl Reservation {
    /// `count` blocks of `bytes_each`.
    pub fn new(count: u64, bytes_each: u64) -> Self {
        Self { count, bytes_each }
    }

    /// One block: a fixed overhead such as weights or a CUDA context.
    pub fn fixed(bytes: u64) -> Self {
        Self::new(1, bytes)
    }

    /// `count × bytes_each`, saturating.
    pub fn total_bytes(&self) -> u64 {
        self.count.saturating_mul(self.bytes_each)
    }
}

/// The outcome of adding reservations up against a budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fit {
    /// Sum of all reservations.
    pub needed_bytes: u64,
    /// The budget they were checked against.
    pub budget_bytes: u64,
}

impl Fit {
    /// Whether the reservations fit the budget (equal counts as fitting).
    pub fn fits(&self) -> bool {
        self.needed_bytes <= self.budget_bytes
    }

    /// How far over the budget the reservations are; 0 when they fit.
    pub fn shortfall_bytes(&self) -> u64 {
        self.needed_bytes.saturating_sub(self.budget_bytes)
    }

    /// How much of the budget is left; 0 when they do not fit.
    pub fn spare_bytes(&self) -> u64 {
        self.budget_bytes.saturating_sub(self.needed_bytes)
    }
}

/// Adds `reservations` up and compares them with `budget_bytes`; the one accounting check used for
/// hand vectors and for the planner's infeasibility report.
pub fn fits(budget_bytes: u64, reservations: &[Reservation]) -> Fit {
    let needed_bytes = reservations
        .iter()
        .fold(0u64, |sum, r| sum.saturating_add(r.total_bytes()));
    Fit {
        needed_bytes,
        budget_bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decimal gigabytes, as the seed analysis wrote them.
    const GB: u64 = 1_000_000_000;
    const HUNDRED_MB: u64 = 100_000_000;

    #[test]
    fn per_user_budget_of_the_seed_analysis() {
        // 24 GB card, 2 GB reserved, 8 users: 2.75 GB each.
        assert_eq!(per_user_budget(24 * GB, 2 * GB, 8), 2_750_000_000);
        assert_eq!(per_user_budget(24 * GB, 2 * GB, 0), 0);
        assert_eq!(per_user_budget(GB, 2 * GB, 4), 0);
        assert_eq!(per_user_budget(10, 0, 3), 3);
    }

    #[test]
    fn mixed_reservations_fit_22_gb() {
        // HRNet 4 × 1.3 GB + CBAM-ResUNet 2 × 0.7 GB + UNet 2 × 1.6 GB + 2.1 GB overhead.
        let fit = fits(
            22 * GB,
            &[
                Reservation::new(4, 13 * HUNDRED_MB),
                Reservation::new(2, 7 * HUNDRED_MB),
                Reservation::new(2, 16 * HUNDRED_MB),
                Reservation::fixed(21 * HUNDRED_MB),
            ],
        );
        assert_eq!(fit.needed_bytes, 11_900_000_000);
        assert!(fit.fits());
        assert_eq!(fit.shortfall_bytes(), 0);
        assert_eq!(fit.spare_bytes(), 10_100_000_000);
    }

    #[test]
    fn eight_full_users_plus_overhead_do_not_fit_22_gb() {
        // 8 × 2.75 GB + 4.1 GB overhead = 26.1 GB, 4.1 GB over.
        let fit = fits(
            22 * GB,
            &[
                Reservation::new(8, 2_750_000_000),
                Reservation::fixed(41 * HUNDRED_MB),
            ],
        );
        assert_eq!(fit.needed_bytes, 26_100_000_000);
        assert!(!fit.fits());
        assert_eq!(fit.shortfall_bytes(), 4_100_000_000);
        assert_eq!(fit.spare_bytes(), 0);
    }

    #[test]
    fn exact_fit_counts_and_sums_saturate() {
        assert!(fits(10, &[Reservation::new(2, 5)]).fits());
        assert!(!fits(9, &[Reservation::new(2, 5)]).fits());
        let huge = fits(
            u64::MAX,
            &[Reservation::new(u64::MAX, 2), Reservation::fixed(1)],
        );
        assert_eq!(huge.needed_bytes, u64::MAX);
        assert!(fits(0, &[]).fits());
    }
}
