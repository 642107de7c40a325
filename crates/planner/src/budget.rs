//! How many bytes of the card a pool may plan with.
//!
//! The spec gives a budget as a quantity ("22Gi") or a share of the card ("90%"), plus headroom
//! kept free for the CUDA context, cuDNN workspaces and fragmentation. Turning that into bytes needs
//! the card's total memory, which comes from the first of: the spec's `gpu.cardMemory`, what the
//! pods measured through NVML, or a table of known products keyed by `gpu.product`.

use crate::infeasible::PlanError;
use gpupool_api::{parse_quantity_bytes, GpuSpec, MemoryAmount};

const MIB: u64 = 1 << 20;

/// Nominal total memory of GPU products the planner knows, keyed by the `nvidia.com/gpu.product`
/// node label, in MiB.
///
/// These are nominal figures (what NVML reports as total on a typical driver), good enough to turn
/// a percentage budget into bytes before any pod has run; once pods run, their measured total
/// replaces them.
pub const KNOWN_CARDS_MIB: &[(&str, u64)] = &[
    ("NVIDIA-H200", 143_771),
    ("NVIDIA-H100-80GB-HBM3", 81_559),
    ("NVIDIA-A100-SXM4-80GB", 81_920),
    ("NVIDIA-A100-SXM4-40GB", 40_960),
    ("NVIDIA-L4", 23_034),
    ("Tesla-T4", 15_360),
];

/// Nominal total memory in bytes of a known product, so a percentage budget can be planned before
/// pods report. Matching ignores case and treats spaces as hyphens, so both the node label
/// (`NVIDIA-H200`) and NVML's name (`NVIDIA H200`) are found.
pub fn known_card_bytes(product: &str) -> Option<u64> {
    let wanted = product.trim().replace(' ', "-");
    KNOWN_CARDS_MIB
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(&wanted))
        .map(|(_, mib)| mib * MIB)
}

/// Where the card's total memory came from, so status and errors can say how sure it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CardSource {
    /// `gpu.cardMemory` in the spec.
    Spec,
    /// The pods' NVML report.
    Measured,
    /// [`KNOWN_CARDS_MIB`], by `gpu.product`.
    KnownProduct,
    /// Not known; the budget was absolute and is taken as the card's size.
    Unknown,
}

/// The pool's memory budget on one GPU, resolved to bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Total memory of the card (the configured budget when the card is unknown).
    pub card_bytes: u64,
    /// Where `card_bytes` came from.
    pub card_source: CardSource,
    /// Headroom kept free inside the budget.
    pub headroom_bytes: u64,
    /// What the plan may reserve: the configured budget, capped at the card, less the headroom.
    pub budget_bytes: u64,
}

/// Resolves `gpu.memoryBudget` and `gpu.reservedHeadroom` to bytes, so planning works in bytes
/// only. `measured_card_bytes` is the total the pods reported, if any.
pub fn resolve_budget(
    gpu: &GpuSpec,
    measured_card_bytes: Option<u64>,
) -> Result<Budget, PlanError> {
    let amount = MemoryAmount::parse(&gpu.memory_budget)
        .map_err(|e| PlanError::invalid("gpu.memoryBudget", e.to_string()))?;
    let headroom_bytes = parse_quantity_bytes(&gpu.reserved_headroom)
        .map_err(|e| PlanError::invalid("gpu.reservedHeadroom", e.to_string()))?;
    let spec_card = match &gpu.card_memory {
        Some(text) => match parse_quantity_bytes(text) {
            Ok(0) => return Err(PlanError::invalid("gpu.cardMemory", "must be more than 0")),
            Ok(bytes) => Some(bytes),
            Err(e) => return Err(PlanError::invalid("gpu.cardMemory", e.to_string())),
        },
        None => None,
    };
    let card = spec_card
        .map(|b| (b, CardSource::Spec))
        .or_else(|| {
            measured_card_bytes
                .filter(|b| *b > 0)
                .map(|b| (b, CardSource::Measured))
        })
        .or_else(|| {
            gpu.product
                .as_deref()
                .and_then(known_card_bytes)
                .map(|b| (b, CardSource::KnownProduct))
        });
    let (card_bytes, card_source, configured) = match (card, amount) {
        (Some((card, source)), amount) => (card, source, amount.resolve(card).min(card)),
        (None, MemoryAmount::Bytes(bytes)) => (bytes, CardSource::Unknown, bytes),
        (None, MemoryAmount::FractionOfCard(_)) => {
            let product = gpu.product.as_deref().unwrap_or("(none)");
            return Err(PlanError::invalid(
                "gpu.cardMemory",
                format!(
                    "the budget {:?} is a share of the card, but the card's memory is unknown: \
                     product {product:?} is not one the planner knows and no pod has reported; \
                     set gpu.cardMemory or give an absolute budget",
                    gpu.memory_budget
                ),
            ));
        }
    };
    if headroom_bytes >= configured {
        return Err(PlanError::invalid(
            "gpu.reservedHeadroom",
            format!(
                "headroom {:?} leaves nothing of the budget {:?} ({} bytes on this card)",
                gpu.reserved_headroom, gpu.memory_budget, configured
            ),
        ));
    }
    Ok(Budget {
        card_bytes,
        card_source,
        headroom_bytes,
        budget_bytes: configured - headroom_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu(budget: &str, headroom: &str) -> GpuSpec {
        GpuSpec {
            memory_budget: budget.into(),
            reserved_headroom: headroom.into(),
            ..GpuSpec::default()
        }
    }

    #[test]
    fn known_products_match_label_and_nvml_spellings() {
        assert_eq!(known_card_bytes("NVIDIA-H200"), Some(143_771 * MIB));
        assert_eq!(known_card_bytes("NVIDIA H200"), Some(143_771 * MIB));
        assert_eq!(known_card_bytes("tesla-t4"), Some(15_360 * MIB));
        assert_eq!(known_card_bytes("NVIDIA-L4"), Some(23_034 * MIB));
        assert_eq!(
            known_card_bytes("NVIDIA-A100-SXM4-40GB"),
            Some(40_960 * MIB)
        );
        assert_eq!(known_card_bytes("NVIDIA-B200"), None);
    }

    #[test]
    fn absolute_budget_less_headroom() {
        let mut g = gpu("24Gi", "2Gi");
        g.product = Some("NVIDIA-H200".into());
        let b = resolve_budget(&g, None).expect("valid");
        assert_eq!(b.budget_bytes, 22 << 30);
        assert_eq!(b.headroom_bytes, 2 << 30);
        assert_eq!(b.card_source, CardSource::KnownProduct);
    }

    #[test]
    fn percentage_budget_uses_spec_then_measured_then_table() {
        let mut g = gpu("50%", "1Gi");
        g.product = Some("NVIDIA-L4".into());
        let table = resolve_budget(&g, None).expect("valid");
        assert_eq!(table.card_bytes, 23_034 * MIB);
        assert_eq!(table.budget_bytes, 11_517 * MIB - (1 << 30));
        let measured = resolve_budget(&g, Some(20 << 30)).expect("valid");
        assert_eq!(
            (measured.card_bytes, measured.card_source),
            (20 << 30, CardSource::Measured)
        );
        assert_eq!(measured.budget_bytes, (10 << 30) - (1 << 30));
        g.card_memory = Some("16Gi".into());
        let spec = resolve_budget(&g, Some(20 << 30)).expect("valid");
        assert_eq!(
            (spec.card_bytes, spec.card_source),
            (16 << 30, CardSource::Spec)
        );
        assert_eq!(spec.budget_bytes, 7 << 30);
    }

    #[test]
    fn budget_never_exceeds_the_card() {
        let mut g = gpu("200Gi", "2Gi");
        g.card_memory = Some("80Gi".into());
        assert_eq!(
            resolve_budget(&g, None).expect("valid").budget_bytes,
            78 << 30
        );
    }

    #[test]
    fn unknown_card_with_absolute_budget_takes_the_budget_as_card() {
        let b = resolve_budget(&gpu("10Gi", "1Gi"), None).expect("valid");
        assert_eq!(
            (b.card_bytes, b.card_source),
            (10 << 30, CardSource::Unknown)
        );
        assert_eq!(b.budget_bytes, 9 << 30);
    }

    fn field_of(result: Result<Budget, PlanError>) -> String {
        match result {
            Err(PlanError::InvalidSpec { field, .. }) => field,
            other => panic!("expected InvalidSpec, got {other:?}"),
        }
    }

    #[test]
    fn error_paths_name_their_field() {
        assert_eq!(
            field_of(resolve_budget(&gpu("22GB", "2Gi"), None)),
            "gpu.memoryBudget"
        );
        assert_eq!(
            field_of(resolve_budget(&gpu("120%", "2Gi"), None)),
            "gpu.memoryBudget"
        );
        assert_eq!(
            field_of(resolve_budget(&gpu("22Gi", "two"), None)),
            "gpu.reservedHeadroom"
        );
        assert_eq!(
            field_of(resolve_budget(&gpu("2Gi", "2Gi"), None)),
            "gpu.reservedHeadroom"
        );
        assert_eq!(
            field_of(resolve_budget(&gpu("90%", "2Gi"), None)),
            "gpu.cardMemory"
        );
        let mut unknown = gpu("90%", "2Gi");
        unknown.product = Some("NVIDIA-B200".into());
        assert_eq!(field_of(resolve_budget(&unknown, None)), "gpu.cardMemory");
        let mut bad_card = gpu("90%", "2Gi");
        bad_card.card_memory = Some("lots".into());
        assert_eq!(field_of(resolve_budget(&bad_card, None)), "gpu.cardMemory");
        bad_card.card_memory = Some("0".into());
        assert_eq!(field_of(resolve_budget(&bad_card, None)), "gpu.cardMemory");
    }
}
