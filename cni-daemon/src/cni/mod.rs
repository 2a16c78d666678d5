//! The CNI specification as the plugin sees it: versions, configuration, environment, results and errors.

pub mod config;
pub mod error;
pub mod invocation;
pub mod result;
pub mod version;

pub use config::NetworkConfig;
pub use error::{CniError, ErrorCode};
pub use invocation::{Command, Invocation, NetworkInvocation, PodRef};
pub use result::AddResult;
pub use version::CniVersion;
