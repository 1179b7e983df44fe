//! Errors of the declarative model.

use std::fmt;
use std::path::PathBuf;

/// One problem found in a configuration file: where it is and what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Key path inside the file, such as `views[1].measures[0].field`.
    pub path: String,
    /// What was expected there, and what was found.
    pub expected: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.expected)
        } else {
            write!(f, "{}: {}", self.path, self.expected)
        }
    }
}

/// Errors of the `duet-config` crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration file could not be read.
    #[error("cannot read config file {}", file.display())]
    Read {
        /// The file.
        file: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The configuration was read but is invalid; every problem is listed.
    #[error("{}", render_problems(file, problems))]
    Invalid {
        /// The file the problems are in.
        file: PathBuf,
        /// Every problem found, in file order.
        problems: Vec<Problem>,
    },
    /// A filter expression could not be parsed.
    #[error("filter `{expr}`: {message} at character {at}")]
    Filter {
        /// The expression.
        expr: String,
        /// What went wrong.
        message: String,
        /// Character offset of the problem.
        at: usize,
    },
    /// A duration such as `1m` could not be parsed.
    #[error(
        "duration `{text}`: expected a number followed by ms, s, m, h or d (e.g. `30s`, `1m`), at most 100 years"
    )]
    Duration {
        /// The text that failed to parse.
        text: String,
    },
    /// A field type such as `array<struct<a:int>>` could not be parsed.
    #[error("field type `{text}`: {message}")]
    FieldType {
        /// The text that failed to parse.
        text: String,
        /// What went wrong.
        message: String,
    },
    /// Two partial states of different measure kinds were merged.
    #[error("cannot merge a `{left}` state with a `{right}` state")]
    StateMismatch {
        /// Kind of the left state.
        left: &'static str,
        /// Kind of the right state.
        right: &'static str,
    },
}

fn render_problems(file: &std::path::Path, problems: &[Problem]) -> String {
    let mut out = format!(
        "{} has {} problem{}:",
        file.display(),
        problems.len(),
        if problems.len() == 1 { "" } else { "s" }
    );
    for p in problems {
        out.push_str(&format!("\n  {}: {p}", file.display()));
    }
    out
}

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
