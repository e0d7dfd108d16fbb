//! The CLI's one error type. Every variant prints as one line that names what failed; an
//! optional hint line says which command fixes it.

use std::fmt;

/// A failed command: what went wrong, and (optionally) what to run next.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CliError {
    /// A user-facing failure with an optional hint (printed on following lines).
    #[error("{message}")]
    User {
        message: String,
        hint: Option<String>,
    },
    #[error(transparent)]
    Fs(#[from] openshell_pki::fs::FsError),
    #[error(transparent)]
    Pki(#[from] openshell_pki::PkiError),
    #[error(transparent)]
    Transport(#[from] openshell_transport::TransportError),
    /// The gateway's answer; printed as one line (its own source chain adds nothing).
    #[error("{}", status_message(.0))]
    Rpc(tonic::Status),
    #[error("cannot write output: {0}")]
    Io(#[from] std::io::Error),
}

impl From<tonic::Status> for CliError {
    fn from(s: tonic::Status) -> Self {
        CliError::Rpc(s)
    }
}

impl CliError {
    /// A failure with no hint.
    pub fn msg(message: impl fmt::Display) -> Self {
        CliError::User {
            message: message.to_string(),
            hint: None,
        }
    }

    /// A failure plus the command (or action) that fixes it.
    pub fn hint(message: impl fmt::Display, hint: impl fmt::Display) -> Self {
        CliError::User {
            message: message.to_string(),
            hint: Some(hint.to_string()),
        }
    }

    /// The hint line, if any.
    pub fn hint_text(&self) -> Option<&str> {
        match self {
            CliError::User { hint, .. } => hint.as_deref(),
            _ => None,
        }
    }
}

fn status_message(status: &tonic::Status) -> String {
    let code = match status.code() {
        tonic::Code::Unimplemented => "not supported by this gateway",
        tonic::Code::Unauthenticated => "authentication failed",
        tonic::Code::PermissionDenied => "permission denied",
        tonic::Code::NotFound => "not found",
        tonic::Code::AlreadyExists => "already exists",
        tonic::Code::InvalidArgument => "invalid argument",
        tonic::Code::FailedPrecondition => "failed precondition",
        tonic::Code::Aborted => "conflict",
        tonic::Code::Unavailable => "gateway unavailable",
        tonic::Code::DeadlineExceeded => "timed out",
        _ => "gateway error",
    };
    if status.message().is_empty() {
        code.to_string()
    } else {
        format!("{code}: {}", status.message())
    }
}
