//! The crate's one error enum.

/// Why a policy was refused.
///
/// A refused document gets exactly one error, the first found in document order, so a
/// person fixes one thing at a time and a program can show it as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The text is not YAML this crate reads (a syntax error, a second document, a tag),
    /// or it is too large or too deep.
    #[error("{file}:{line}:{column}: {message}")]
    Syntax {
        file: String,
        line: usize,
        column: usize,
        message: String,
    },
    /// A field is unknown, has the wrong type, or contradicts another one.
    /// `field` is the path from the document's root, as in
    /// `network_policies.github.endpoints[0].port`.
    #[error("{file}:{line}:{column}: {field}: {message}")]
    Invalid {
        file: String,
        line: usize,
        column: usize,
        field: String,
        message: String,
    },
    /// A new revision changes parts that are fixed when the sandbox is created.
    #[error(
        "the new policy changes {}, which cannot change on a running sandbox; keep those parts as they are and change only network_policies or network_middlewares, or recreate the sandbox with the new policy",
        .fields.join(", ")
    )]
    StaticChange {
        /// The changed static fields, as `filesystem_policy.read_only`, `process.run_as_user`.
        fields: Vec<&'static str>,
    },
}

impl PolicyError {
    /// The 1-based line the error points at, when it points at one.
    pub fn line(&self) -> Option<usize> {
        match self {
            PolicyError::Syntax { line, .. } | PolicyError::Invalid { line, .. } => Some(*line),
            PolicyError::StaticChange { .. } => None,
        }
    }

    /// The field path the error names, when it names one.
    pub fn field(&self) -> Option<&str> {
        match self {
            PolicyError::Invalid { field, .. } => Some(field),
            _ => None,
        }
    }
}
