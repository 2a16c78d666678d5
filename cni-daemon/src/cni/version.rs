//! CNI specification versions the plugin speaks.

use super::error::{CniError, ErrorCode};
use std::fmt;

/// A CNI specification version this plugin accepts in a network configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CniVersion {
    /// 0.3.0: results with `interfaces`, `ips` (with `version`) and `routes`.
    V0_3_0,
    /// 0.3.1: same result shape as 0.3.0.
    V0_3_1,
    /// 0.4.0: adds CHECK and `prevResult` on DEL.
    V0_4_0,
    /// 1.0.0: `ips` lose their `version` field.
    V1_0_0,
}

impl CniVersion {
    /// Every version accepted, oldest first, as VERSION reports them.
    pub const SUPPORTED: [CniVersion; 4] = [Self::V0_3_0, Self::V0_3_1, Self::V0_4_0, Self::V1_0_0];

    /// The newest version, used when no other is known (VERSION, errors before parsing).
    pub const LATEST: CniVersion = Self::V1_0_0;

    /// The version string as it appears in `cniVersion`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V0_3_0 => "0.3.0",
            Self::V0_3_1 => "0.3.1",
            Self::V0_4_0 => "0.4.0",
            Self::V1_0_0 => "1.0.0",
        }
    }

    /// Parses `cniVersion`; an unknown version is error code 1 naming what is supported.
    pub fn parse(s: &str) -> Result<Self, CniError> {
        Self::SUPPORTED
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| {
                CniError::new(
                    ErrorCode::IncompatibleVersion,
                    format!(
                        "unsupported cniVersion {s:?}; portkeeper-cni supports {}",
                        Self::SUPPORTED.map(Self::as_str).join(", ")
                    ),
                )
            })
    }

    /// Whether the CHECK command exists in this version (0.4.0 and later).
    pub fn has_check(self) -> bool {
        self >= Self::V0_4_0
    }

    /// Whether result `ips` carry a `version` field ("4"/"6"), as before 1.0.0.
    pub fn ips_have_version(self) -> bool {
        self < Self::V1_0_0
    }
}

impl fmt::Display for CniVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_supported_and_rejects_others() {
        for v in CniVersion::SUPPORTED {
            assert_eq!(CniVersion::parse(v.as_str()).unwrap(), v);
        }
        for bad in ["", "0.2.0", "1.1.0", "1.0", " 1.0.0", "2.0.0"] {
            let err = CniVersion::parse(bad).unwrap_err();
            assert_eq!(err.code, ErrorCode::IncompatibleVersion);
            assert!(err.msg.contains("1.0.0"), "{}", err.msg);
        }
    }

    #[test]
    fn version_features() {
        assert!(!CniVersion::V0_3_1.has_check());
        assert!(CniVersion::V0_4_0.has_check());
        assert!(CniVersion::V0_4_0.ips_have_version());
        assert!(!CniVersion::V1_0_0.ips_have_version());
    }
}
