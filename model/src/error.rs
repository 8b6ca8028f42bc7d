//! The one error type of `pinion-model`: every variant names the input that failed.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// An image reference that Docker would refuse; `reason` says which rule it broke.
    InvalidReference { reference: String, reason: &'static str },
    /// A state document whose shape is wrong; `path` points into the JSON (`apps.1.services.0`).
    InvalidState { path: String, reason: String },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidReference { reference, reason } => {
                write!(f, "invalid image reference {reference:?}: {reason}")
            }
            Error::InvalidState { path, reason } => write!(f, "invalid state at {path}: {reason}"),
        }
    }
}

impl std::error::Error for Error {}
