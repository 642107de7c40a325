//! The reconciler's errors: one variant per failed operation, the cause attached as the source.
//!
//! Each error knows whether it is permanent (the spec must change before trying again makes
//! sense) or transient (retry with growing backoff), and which bounded metric label it counts as.

use gpupool_planner::PlanError;

/// Why one reconcile of one pool failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The spec cannot be planned (invalid or does not fit); recorded as PlanFeasible=False.
    #[error("plan rejected")]
    PlanRejected(#[source] PlanError),

    /// The pool lacks metadata every stored object has (name, namespace, uid).
    #[error("pool object lacks {0}")]
    MissingMetadata(&'static str),

    /// Rendering the sidecar config document failed.
    #[error("rendering the sidecar config failed")]
    RenderConfig(#[source] gpupool_api::sidecar::ConfigDocumentError),

    /// Serialising a document (restart key, measurements) failed.
    #[error("serialising a document failed")]
    Serialize(#[source] serde_json::Error),

    /// Server-side apply of a child object failed.
    #[error("applying {kind} {name} failed")]
    ApplyChild {
        /// Kind of the child.
        kind: String,
        /// Name of the child.
        name: String,
        /// What the API server said.
        #[source]
        source: kube::Error,
    },

    /// Reading the pool's Deployment failed.
    #[error("reading the deployment failed")]
    GetDeployment(#[source] kube::Error),

    /// Listing the pool's pods failed.
    #[error("listing the pool's pods failed")]
    ListPods(#[source] kube::Error),

    /// Writing the pool's status failed.
    #[error("writing the pool's status failed")]
    WriteStatus(#[source] kube::Error),

    /// Changing the pool's replicas through the scale subresource failed.
    #[error("scaling the pool failed")]
    Scale(#[source] kube::Error),
}

/// Whether retrying without a spec change can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// Only a spec change helps: wait for one.
    Permanent,
    /// The cluster may answer differently later: retry with growing backoff.
    Transient,
}

/// Bounded label values for `gpupool_operator_reconcile_errors_total{error}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ErrorKind {
    /// The spec failed validation in the planner.
    InvalidSpec,
    /// The models do not fit the memory budget.
    Infeasible,
    /// The pool object itself is malformed.
    Metadata,
    /// Config rendering or hashing failed.
    Render,
    /// A child object could not be applied.
    Apply,
    /// A read from the API server failed.
    Read,
    /// The status write failed.
    Status,
    /// The scale write failed.
    Scale,
}

impl ErrorKind {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidSpec => "invalid_spec",
            ErrorKind::Infeasible => "infeasible",
            ErrorKind::Metadata => "metadata",
            ErrorKind::Render => "render",
            ErrorKind::Apply => "apply",
            ErrorKind::Read => "read",
            ErrorKind::Status => "status",
            ErrorKind::Scale => "scale",
        }
    }
}

impl Error {
    /// The metric label of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::PlanRejected(PlanError::InvalidSpec { .. }) => ErrorKind::InvalidSpec,
            Error::PlanRejected(_) => ErrorKind::Infeasible,
            Error::MissingMetadata(_) => ErrorKind::Metadata,
            Error::RenderConfig(_) | Error::Serialize(_) => ErrorKind::Render,
            Error::ApplyChild { .. } => ErrorKind::Apply,
            Error::GetDeployment(_) | Error::ListPods(_) => ErrorKind::Read,
            Error::WriteStatus(_) => ErrorKind::Status,
            Error::Scale(_) => ErrorKind::Scale,
        }
    }

    /// Whether the error is permanent for the current spec.
    ///
    /// Rendering errors come from the spec too (they cannot change without it), and a child the
    /// API server refuses as invalid (422) will be refused again until the spec changes.
    pub fn severity(&self) -> Severity {
        match self {
            Error::PlanRejected(_)
            | Error::MissingMetadata(_)
            | Error::RenderConfig(_)
            | Error::Serialize(_) => Severity::Permanent,
            Error::ApplyChild { source, .. } if is_invalid(source) => Severity::Permanent,
            _ => Severity::Transient,
        }
    }
}

/// Whether the API server refused an object as invalid (HTTP 422).
fn is_invalid(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 422)
}

/// Joins an error with its chain of sources, for log lines and status messages.
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // Some errors (kube's among them) already print their cause; don't say it twice.
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(code: u16) -> kube::Error {
        kube::Error::Api(Box::new(kube::core::Status {
            code,
            ..kube::core::Status::default()
        }))
    }

    #[test]
    fn spec_errors_wait_and_cluster_errors_retry() {
        let invalid = Error::PlanRejected(PlanError::invalid("gpu.streams", "bad"));
        assert_eq!(
            (invalid.severity(), invalid.kind()),
            (Severity::Permanent, ErrorKind::InvalidSpec)
        );
        let short = Error::PlanRejected(PlanError::Infeasible {
            needed_bytes: 2,
            budget_bytes: 1,
            shortfall_bytes: 1,
            detail: String::new(),
        });
        assert_eq!(short.kind().as_str(), "infeasible");
        let apply = |code| Error::ApplyChild {
            kind: "Deployment".into(),
            name: "seg".into(),
            source: api_error(code),
        };
        assert_eq!(apply(422).severity(), Severity::Permanent);
        assert_eq!(apply(500).severity(), Severity::Transient);
        assert_eq!(
            Error::WriteStatus(api_error(409)).severity(),
            Severity::Transient
        );
    }

    #[test]
    fn the_chain_names_each_cause_once() {
        let error = Error::PlanRejected(PlanError::invalid("gpu.streams", "bad"));
        assert_eq!(
            chain(&error),
            "plan rejected: invalid spec: gpu.streams: bad"
        );
    }
}
