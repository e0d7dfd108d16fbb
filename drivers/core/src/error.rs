//! The one error enum of the driver layer. The gateway maps it to gRPC codes in one place.

use crate::SandboxId;

/// Why a driver call failed. Messages are lowercase, say what failed and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DriverError {
    /// The image is not in the runtime's local store; drivers never pull.
    #[error(
        "image `{image}` is not in the {runtime} image store: build or import it locally \
         (scripts/build-sandbox-image --runtime {runtime}), nothing is pulled from a registry"
    )]
    ImageNotFound { runtime: String, image: String },

    /// A workload with this name (or for this sandbox id) exists already.
    #[error("{what} already exists: pick another name, or delete the existing sandbox first")]
    AlreadyExists { what: String },

    /// No workload of ours exists for the sandbox.
    #[error(
        "no {runtime} workload for sandbox {id}: it was deleted or never created; \
         create the sandbox again"
    )]
    NotFound { runtime: String, id: SandboxId },

    /// The runtime does not answer at its endpoint.
    #[error("{runtime} is not reachable at {endpoint} ({reason}): {hint}")]
    RuntimeUnavailable {
        runtime: String,
        endpoint: String,
        reason: String,
        hint: String,
    },

    /// A sandbox name that cannot be used.
    #[error(
        "invalid sandbox name `{name}`: {reason}; use 1 to 63 of [a-z0-9-], starting with \
         a letter"
    )]
    InvalidName { name: String, reason: String },

    /// A spec (or id) the driver or its runtime refuses.
    #[error("invalid sandbox spec: {0}")]
    InvalidSpec(String),

    /// Anything else the runtime reported.
    #[error("{runtime} failed to {op}: {message}")]
    Backend {
        runtime: String,
        op: String,
        message: String,
    },
}

impl DriverError {
    /// True when retrying later may succeed without any change by the user.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::RuntimeUnavailable { .. })
    }
}
