//! The CNI error object and the well-known error codes of the CNI specification.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Error codes reserved by the CNI specification (1.0.0, "Error" section); codes 100+ are ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "u32", try_from = "u32")]
pub enum ErrorCode {
    /// The runtime and the plugin share no CNI version.
    IncompatibleVersion,
    /// A field of the network configuration is not supported.
    UnsupportedField,
    /// The container (its network namespace) does not exist: the runtime need not call DEL.
    UnknownContainer,
    /// A `CNI_*` environment variable is missing or malformed.
    InvalidEnvironment,
    /// Talking to the kernel, OVS or the API server failed.
    IoFailure,
    /// The network configuration (or another payload) is not valid JSON of the expected shape.
    DecodingFailure,
    /// The network configuration decoded but is not valid.
    InvalidNetworkConfig,
    /// A transient condition: the same call may succeed later.
    TryAgainLater,
    /// The pod's address allocation did not arrive in time or is not usable.
    AllocationUnavailable,
    /// ovn-controller did not bind the port in time.
    PortNotInstalled,
    /// CHECK found the interface differing from what the allocation says.
    CheckMismatch,
}

impl ErrorCode {
    /// The numeric code written into the error object.
    pub fn code(self) -> u32 {
        match self {
            Self::IncompatibleVersion => 1,
            Self::UnsupportedField => 2,
            Self::UnknownContainer => 3,
            Self::InvalidEnvironment => 4,
            Self::IoFailure => 5,
            Self::DecodingFailure => 6,
            Self::InvalidNetworkConfig => 7,
            Self::TryAgainLater => 11,
            Self::AllocationUnavailable => 100,
            Self::PortNotInstalled => 101,
            Self::CheckMismatch => 102,
        }
    }
}

impl From<ErrorCode> for u32 {
    fn from(code: ErrorCode) -> u32 {
        code.code()
    }
}

impl TryFrom<u32> for ErrorCode {
    type Error = String;

    fn try_from(value: u32) -> Result<Self, Self::Error> {
        [
            Self::IncompatibleVersion,
            Self::UnsupportedField,
            Self::UnknownContainer,
            Self::InvalidEnvironment,
            Self::IoFailure,
            Self::DecodingFailure,
            Self::InvalidNetworkConfig,
            Self::TryAgainLater,
            Self::AllocationUnavailable,
            Self::PortNotInstalled,
            Self::CheckMismatch,
        ]
        .into_iter()
        .find(|c| c.code() == value)
        .ok_or_else(|| format!("unknown CNI error code {value}"))
    }
}

/// A failure reported to the container runtime as a CNI error object.
///
/// `msg` is one line a person can act on; `details` carries the underlying cause.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniError {
    /// What kind of failure this is.
    pub code: ErrorCode,
    /// Short, actionable message.
    pub msg: String,
    /// The underlying cause (may be empty).
    #[serde(default)]
    pub details: String,
}

impl CniError {
    /// An error without details.
    pub fn new(code: ErrorCode, msg: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    /// Adds the underlying cause.
    pub fn with_details(mut self, details: impl fmt::Display) -> Self {
        self.details = details.to_string();
        self
    }

    /// The error object as the runtime reads it on stdout.
    pub fn to_json(&self, cni_version: &str) -> serde_json::Value {
        serde_json::json!({
            "cniVersion": cni_version,
            "code": self.code.code(),
            "msg": self.msg,
            "details": self.details,
        })
    }
}

impl fmt::Display for CniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CNI error {}: {}", self.code.code(), self.msg)?;
        if !self.details.is_empty() {
            write!(f, " ({})", self.details)?;
        }
        Ok(())
    }
}

impl std::error::Error for CniError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_match_the_spec() {
        assert_eq!(ErrorCode::IncompatibleVersion.code(), 1);
        assert_eq!(ErrorCode::InvalidEnvironment.code(), 4);
        assert_eq!(ErrorCode::DecodingFailure.code(), 6);
        assert_eq!(ErrorCode::InvalidNetworkConfig.code(), 7);
        assert_eq!(ErrorCode::TryAgainLater.code(), 11);
        for code in 0..200u32 {
            if let Ok(parsed) = ErrorCode::try_from(code) {
                assert_eq!(parsed.code(), code);
            }
        }
        assert!(ErrorCode::try_from(8).is_err());
    }

    #[test]
    fn error_object_has_the_spec_fields() {
        let err = CniError::new(ErrorCode::InvalidEnvironment, "CNI_IFNAME is missing")
            .with_details("set by the runtime");
        assert_eq!(
            err.to_json("1.0.0"),
            serde_json::json!({
                "cniVersion": "1.0.0",
                "code": 4,
                "msg": "CNI_IFNAME is missing",
                "details": "set by the runtime",
            })
        );
    }
}
