//! The controller's one error type, and the user-facing rejection a bad request becomes.

use portkeeper_api::dhcp::DhcpOptionsError;
use portkeeper_api::request::AnnotationError;
use portkeeper_engine::{EngineError, ErrorKind};
use thiserror::Error;

use crate::ovn::NbError;

/// The Event reason a rejected pod gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// An annotation value does not parse or contradicts another.
    InvalidAnnotation,
    /// The address or MAC is held by another nic, IP resource, OVN port or gateway.
    AddressConflict,
    /// Anything else that stops allocation (unknown subnet or pool, exhaustion, out of range).
    AcquireAddressFailed,
    /// Not a failure: the nic's pools or subnet have node affinity and the pod is not bound to a
    /// node yet. Never published; the pod is chosen again once bound.
    AwaitingNode,
}

impl RejectReason {
    /// The Event `reason` string.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::InvalidAnnotation => "InvalidAnnotation",
            RejectReason::AddressConflict => "AddressConflict",
            RejectReason::AcquireAddressFailed => "AcquireAddressFailed",
            RejectReason::AwaitingNode => "AwaitingNode",
        }
    }

    /// The reason an engine refusal gets: a conflict with another holder is `AddressConflict`,
    /// everything else `AcquireAddressFailed`.
    pub fn of(error: &EngineError) -> Self {
        match error.kind() {
            ErrorKind::AddressConflict => RejectReason::AddressConflict,
            _ => RejectReason::AcquireAddressFailed,
        }
    }
}

/// Why a pod's request cannot be satisfied as it stands. It becomes a Warning Event; nothing
/// is written, and the pod is retried with backoff.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("{}: {message}", reason.as_str())]
pub struct Rejection {
    /// The Event reason.
    pub reason: RejectReason,
    /// The Event message: names the address, the subnet and the holder.
    pub message: String,
}

impl From<AnnotationError> for Rejection {
    fn from(e: AnnotationError) -> Self {
        Rejection {
            reason: RejectReason::InvalidAnnotation,
            message: e.to_string(),
        }
    }
}

impl From<EngineError> for Rejection {
    fn from(e: EngineError) -> Self {
        Rejection {
            reason: RejectReason::of(&e),
            message: format!("{}: {e}", e.reason()),
        }
    }
}

/// Everything a reconcile can fail with. Each variant is retried with backoff.
#[derive(Debug, Error)]
pub enum Error {
    /// The request was rejected; the pod got an Event.
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// A Kubernetes API call failed.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// An OVN Northbound write failed.
    #[error("OVN northbound: {0}")]
    Northbound(#[from] NbError),
    /// The engine refused a Subnet or IPPool spec.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// A Subnet or IPPool the admission rules refuse ([`crate::admission`]), which got past the
    /// webhook (down, or not installed): it is not applied.
    #[error("{0}")]
    Refused(String),
    /// A watched cache lost its stream or never became ready.
    #[error("cache: {0}")]
    Cache(String),
    /// Leadership was lost; the process stops so a standby takes over.
    #[error("lost leadership of lease {0}")]
    LostLeadership(String),
    /// A JSON (de)serialisation failed.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    /// DHCP options (a Subnet's `dhcpV4Options`/`dhcpV6Options` or a pod's annotation) that
    /// OVN would refuse; nothing was written.
    #[error(transparent)]
    Dhcp(#[from] DhcpOptionsError),
}

impl Error {
    /// Short label for the `error` metric dimension.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Rejected(r) => r.reason.as_str(),
            Error::Kube(_) => "kube",
            Error::Northbound(_) => "northbound",
            Error::Engine(_) => "engine",
            Error::Refused(_) => "refused",
            Error::Cache(_) => "cache",
            Error::LostLeadership(_) => "leadership",
            Error::Json(_) => "json",
            Error::Dhcp(_) => "dhcp",
        }
    }
}
