//! What can go wrong in the kubelet stand-in, one variant per failed operation.

use std::path::PathBuf;

/// An error of the kubelet stand-in.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An `--image-command` value is not `IMAGE=PATH`.
    #[error("invalid image command {spec:?}: expected IMAGE=PATH")]
    ImageCommandSyntax {
        /// The value as given.
        spec: String,
    },
    /// No executable was found for a container image.
    #[error(
        "no executable for image {image:?} (looked for {tried:?}); map it with --image-command"
    )]
    NoExecutable {
        /// The container's image.
        image: String,
        /// Every path that was tried.
        tried: Vec<PathBuf>,
    },
    /// A pod CIDR is not `A.B.C.D/N` inside 127.0.0.0/8 with room for pods.
    #[error("invalid pod CIDR {cidr:?}: {reason}")]
    InvalidCidr {
        /// The CIDR as given.
        cidr: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// Every address of the pod CIDR is taken.
    #[error("pod CIDR {cidr} has no free address left")]
    AddressesExhausted {
        /// The exhausted CIDR.
        cidr: String,
    },
    /// A duration flag could not be parsed.
    #[error("invalid duration {value:?}: expected a number with a unit (ms, s, m, h)")]
    InvalidDuration {
        /// The value as given.
        value: String,
    },
    /// A `KEY=VALUE` flag had no `=`.
    #[error("invalid {flag} {value:?}: expected KEY=VALUE")]
    KeyValueSyntax {
        /// The flag's name.
        flag: &'static str,
        /// The value as given.
        value: String,
    },
    /// A call to the API server failed.
    #[error("{action}")]
    Kube {
        /// What was being done, e.g. `creating node gpu-0`.
        action: String,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
    /// Building a client from a kubeconfig failed.
    #[error("loading kubeconfig")]
    Kubeconfig(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A file-system operation failed.
    #[error("{action} {}", path.display())]
    Io {
        /// What was being done, e.g. `writing`.
        action: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Starting a container's process failed.
    #[error("starting {} for container {container}", program.display())]
    Spawn {
        /// The container's name.
        container: String,
        /// The executable.
        program: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Sending a signal to a process group failed.
    #[error("sending {signal} to process group {pid}")]
    Signal {
        /// The group leader's process id.
        pid: u32,
        /// The signal's name.
        signal: &'static str,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A container's configuration cannot be built (the kubelet's `CreateContainerConfigError`).
    #[error("pod {pod}: {reason}")]
    ContainerConfig {
        /// `namespace/name`.
        pod: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl Error {
    /// Wraps a kube error with what was being done.
    pub(crate) fn kube(action: impl Into<String>, source: kube::Error) -> Self {
        Self::Kube {
            action: action.into(),
            source,
        }
    }

    /// Wraps an I/O error with what was being done and to which path.
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        Self::Io {
            action,
            path: path.into(),
            source,
        }
    }
}

/// The stand-in's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
