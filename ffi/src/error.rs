//! The kernel's error type: what a failing export reports through the last
//! error. Each value maps 1:1 onto the protobuf `krepis.v1.Error`.

use crate::proto::{self, ErrorCode};
use std::collections::HashMap;

/// An error on its way to the caller of an export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelError {
    pub code: ErrorCode,
    pub message: String,
    pub details: HashMap<String, String>,
}

/// Result type of everything behind the boundary.
pub type KernelResult<T> = Result<T, KernelError>;

impl KernelError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            details: HashMap::new(),
        }
    }

    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidArgument, message)
    }

    /// Adds a structured detail (shown to TS as `error.details[key]`).
    pub fn with_detail(mut self, key: &str, value: impl Into<String>) -> Self {
        self.details.insert(key.to_owned(), value.into());
        self
    }

    /// Maps an I/O error, keeping "permission denied" distinguishable.
    pub fn io(context: &str, error: &std::io::Error) -> Self {
        let code = match error.kind() {
            std::io::ErrorKind::PermissionDenied => ErrorCode::Permission,
            _ => ErrorCode::Io,
        };
        Self::new(code, format!("{context}: {error}"))
    }

    /// The status an export returns for this error: the negated code.
    pub fn status(&self) -> i32 {
        -(self.code as i32)
    }

    pub fn to_proto(&self, operation: &str) -> proto::Error {
        proto::Error {
            code: self.code as i32,
            message: self.message.clone(),
            operation: operation.to_owned(),
            details: self.details.clone(),
        }
    }
}
