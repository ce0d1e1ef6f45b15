//! The client's error type.

use std::time::Duration;

use thiserror::Error;
use weir_wire::{ErrorCode, WireError};

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("I/O error: {0}")]
    Io(#[source] std::io::Error),
    /// The server answered with an error.
    #[error("server error {code:?} ({}): {message}", *code as u32)]
    Server { code: ErrorCode, message: String },
    #[error("protocol error: {0}")]
    Wire(#[from] WireError),
    #[error("unexpected response: {0}")]
    Protocol(String),
    #[error("the connection is closed")]
    Closed,
    #[error("no response within {0:?}")]
    Timeout(Duration),
    #[error("invalid argument: {0}")]
    Invalid(String),
}

impl ClientError {
    /// The server's error code, if the server answered with one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Whether a group member must rejoin its group to go on (the group rebalanced, or its
    /// session expired): REBALANCE_IN_PROGRESS, ILLEGAL_GENERATION or UNKNOWN_MEMBER.
    pub fn is_rebalance(&self) -> bool {
        matches!(
            self.code(),
            Some(
                ErrorCode::RebalanceInProgress
                    | ErrorCode::IllegalGeneration
                    | ErrorCode::UnknownMember
            )
        )
    }

    /// Whether the same request may succeed if retried.
    pub fn is_retriable(&self) -> bool {
        match self {
            ClientError::Server { code, .. } => code.is_retriable(),
            ClientError::Timeout(_) => true,
            _ => false,
        }
    }

    /// A copy for every waiter of a failed connection (I/O errors are not `Clone`).
    pub(crate) fn clone_lossy(&self) -> ClientError {
        match self {
            ClientError::Io(e) => ClientError::Io(std::io::Error::new(e.kind(), e.to_string())),
            ClientError::Connect { addr, source } => ClientError::Connect {
                addr: addr.clone(),
                source: std::io::Error::new(source.kind(), source.to_string()),
            },
            ClientError::Server { code, message } => ClientError::Server {
                code: *code,
                message: message.clone(),
            },
            ClientError::Wire(e) => ClientError::Wire(e.clone()),
            ClientError::Protocol(m) => ClientError::Protocol(m.clone()),
            ClientError::Closed => ClientError::Closed,
            ClientError::Timeout(d) => ClientError::Timeout(*d),
            ClientError::Invalid(m) => ClientError::Invalid(m.clone()),
        }
    }
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;
