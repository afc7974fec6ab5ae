//! The one error type of the library. `kind()` is the bounded label used in metrics.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A position in a document, for messages of the form `file:line:column: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourcePos {
    pub file: PathBuf,
    pub line: u64,
    pub column: u64,
}

impl std::fmt::Display for SourcePos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
    }
}

/// One problem found in a TrafficSplit document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub pos: SourcePos,
    pub message: String,
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.pos, self.message)
    }
}

/// How an AWS failure should be treated by the retry policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AwsFailure {
    /// Throttling, PriorRequestNotComplete: retry with backoff.
    Throttled,
    /// 5xx, timeouts, dropped connections: retry with backoff.
    Transient,
    /// InvalidChangeBatch, InvalidInput, access denied, not found: retrying will not help.
    Permanent,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{} invalid document problem(s):\n{}", .0.len(), .0.iter().map(|i| format!("  {i}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Invalid>),

    /// An AWS call failed; `message` says what to check.
    #[error("{service} {operation}: {message}")]
    Aws {
        service: &'static str,
        operation: &'static str,
        failure: AwsFailure,
        message: String,
    },

    /// A resource named by a document does not exist in the account.
    #[error("{0}")]
    NotFound(String),

    /// Records at the name are not ours to change; nothing was written.
    #[error("conflict: {0}")]
    Conflict(String),

    /// A Route53 rule that AWS enforces (and moto does not) would be broken; nothing was written.
    #[error("refusing to write: {0}")]
    Unsafe(String),

    /// A fenced write lost its race: the state record changed between read and write (a second
    /// controller, a hand edit). Nothing was written; the split is re-read and re-decided soon.
    #[error("write not applied: {0}")]
    Fenced(String),

    #[error("gate {gate}: {message}")]
    Gate { gate: String, message: String },

    #[error("http: {0}")]
    Http(String),

    /// `trafficshift status` got no status from the controller (down, wrong address, not a
    /// trafficshift endpoint).
    #[error("{0}")]
    Unreachable(String),

    #[error("{0}")]
    Other(String),
}

impl Error {
    /// Every value `kind()` returns: the `kind` label values, created at 0 for each split.
    pub const KINDS: [&'static str; 13] = [
        "io",
        "invalid",
        "aws_throttled",
        "aws_transient",
        "aws_permanent",
        "not_found",
        "conflict",
        "unsafe",
        "gate",
        "http",
        "unreachable",
        "fenced",
        "other",
    ];

    /// A fixed, bounded string for metric labels. Never derived from messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Io { .. } => "io",
            Error::Invalid(_) => "invalid",
            Error::Aws {
                failure: AwsFailure::Throttled,
                ..
            } => "aws_throttled",
            Error::Aws {
                failure: AwsFailure::Transient,
                ..
            } => "aws_transient",
            Error::Aws {
                failure: AwsFailure::Permanent,
                ..
            } => "aws_permanent",
            Error::NotFound(_) => "not_found",
            Error::Conflict(_) => "conflict",
            Error::Unsafe(_) => "unsafe",
            Error::Fenced(_) => "fenced",
            Error::Gate { .. } => "gate",
            Error::Http(_) => "http",
            Error::Unreachable(_) => "unreachable",
            Error::Other(_) => "other",
        }
    }

    /// Whether retrying with backoff can help.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Aws {
                failure: AwsFailure::Throttled | AwsFailure::Transient,
                ..
            } | Error::Http(_)
                | Error::Io { .. }
                | Error::Fenced(_)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_is_listed() {
        let aws = |failure| Error::Aws {
            service: "s",
            operation: "o",
            failure,
            message: String::new(),
        };
        let all = [
            Error::Io {
                path: "x".into(),
                source: std::io::Error::other("x"),
            },
            Error::Invalid(vec![]),
            aws(AwsFailure::Throttled),
            aws(AwsFailure::Transient),
            aws(AwsFailure::Permanent),
            Error::NotFound(String::new()),
            Error::Conflict(String::new()),
            Error::Unsafe(String::new()),
            Error::Gate {
                gate: String::new(),
                message: String::new(),
            },
            Error::Http(String::new()),
            Error::Unreachable(String::new()),
            Error::Fenced(String::new()),
            Error::Other(String::new()),
        ];
        let kinds: Vec<&str> = all.iter().map(Error::kind).collect();
        assert_eq!(kinds, Error::KINDS);
    }
}
