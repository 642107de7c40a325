//! Why the planner made no plan: the spec is wrong, or the models do not fit the budget.
//!
//! The planner never returns a plan that does not fit. When it cannot make one it says which of the
//! two it is, because the operator treats them differently: an invalid spec waits for the user to
//! fix it; an infeasible one names the shortfall so the user knows how much memory is missing.

use gpupool_api::quantity::format_bytes;

/// Why [`plan_pool`](crate::plan_pool) produced no plan.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// A field of the spec is malformed or inconsistent; planning cannot start.
    #[error("invalid spec: {field}: {message}")]
    InvalidSpec {
        /// Path of the offending field in the spec, camelCase as users write it (e.g.
        /// `gpu.memoryBudget`, `models[1].name`).
        field: String,
        /// What is wrong with it and what would be accepted.
        message: String,
    },
    /// Even the smallest plan the planner can make (batch 1, one slot per model, every model that
    /// may be unloaded loaded on demand) needs more memory than the budget.
    #[error(
        "the models do not fit: the smallest plan needs {needed_bytes} bytes ({}) but the budget \
         is {budget_bytes} bytes ({}), short by {shortfall_bytes} bytes ({}); {detail}",
        format_bytes(*.needed_bytes),
        format_bytes(*.budget_bytes),
        format_bytes(*.shortfall_bytes)
    )]
    Infeasible {
        /// Bytes the smallest plan needs.
        needed_bytes: u64,
        /// Bytes the pool may use (memory budget less reserved headroom).
        budget_bytes: u64,
        /// `needed_bytes - budget_bytes`: how much more memory the budget must give.
        shortfall_bytes: u64,
        /// Which model needs what in that smallest plan.
        detail: String,
    },
}

impl PlanError {
    /// Builds an [`PlanError::InvalidSpec`] from anything printable.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::InvalidSpec {
            field: field.into(),
            message: message.into(),
        }
    }

    /// One CamelCase word for a status condition's `reason`, so the operator needs no match.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::InvalidSpec { .. } => "InvalidSpec",
            Self::Infeasible { .. } => "InsufficientMemory",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn infeasible_names_the_shortfall_in_bytes_and_units() {
        let err = PlanError::Infeasible {
            needed_bytes: 3 << 30,
            budget_bytes: 1 << 30,
            shortfall_bytes: 2 << 30,
            detail: "unet needs 3.00Gi".into(),
        };
        let text = err.to_string();
        assert!(text.contains("3221225472 bytes (3.00Gi)"), "{text}");
        assert!(text.contains("1073741824 bytes (1.00Gi)"), "{text}");
        assert!(
            text.contains("short by 2147483648 bytes (2.00Gi)"),
            "{text}"
        );
        assert!(text.ends_with("unet needs 3.00Gi"), "{text}");
        assert_eq!(err.reason(), "InsufficientMemory");
    }

    #[test]
    fn invalid_spec_names_the_field() {
        let err = PlanError::invalid("gpu.streams", "must be \"auto\" or 1..=64");
        assert_eq!(
            err.to_string(),
            "invalid spec: gpu.streams: must be \"auto\" or 1..=64"
        );
        assert_eq!(err.reason(), "InvalidSpec");
    }
}
