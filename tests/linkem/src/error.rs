//! The crate's one error type.

use std::io;

/// Everything that can go wrong while configuring or running a link.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An impairment or link setting outside its valid range. `field` names the setting the
    /// way the CLI spells it, `valid` says what would have been accepted.
    #[error("invalid {field}: {value}; valid range is {valid}")]
    InvalidSetting {
        field: &'static str,
        value: String,
        valid: String,
    },
    /// A textual value (`50ms`, `2%`, `100mbit`) that could not be parsed.
    #[error("cannot parse {what} {input:?}: {reason}")]
    Parse {
        what: &'static str,
        input: String,
        reason: String,
    },
    /// The machine cannot host a link (not root, no `/dev/net/tun`, no `ip`).
    #[error("link emulator unavailable: {0}")]
    Unavailable(String),
    /// An `ip` command failed; `stderr` is what it printed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Ip {
        command: String,
        status: String,
        stderr: String,
    },
    /// A system call or file operation failed; `context` says which one.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn invalid(
        field: &'static str,
        value: impl Into<String>,
        valid: impl Into<String>,
    ) -> Self {
        Error::InvalidSetting {
            field,
            value: value.into(),
            valid: valid.into(),
        }
    }

    pub(crate) fn parse(
        what: &'static str,
        input: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Error::Parse {
            what,
            input: input.into(),
            reason: reason.into(),
        }
    }
}

/// Shorthand used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
