//! IP families and the `u128` address space both families are stored in.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An IP family. Every set in the engine is kept per family so that one
/// `u128` number line can hold either without mixing them up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// IPv4 (`u32` addresses, widened to `u128`).
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// Both families, v4 first: the order Kube-OVN writes dual-stack values in.
    pub const ALL: [Family; 2] = [Family::V4, Family::V6];

    /// The family of an address.
    pub fn of(addr: IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// Kube-OVN's `ip_family` annotation value (`ipv4` / `ipv6`).
    pub fn annotation_value(self) -> &'static str {
        match self {
            Family::V4 => "ipv4",
            Family::V6 => "ipv6",
        }
    }

    /// Parses Kube-OVN's `ip_family` annotation value; only the exact
    /// lower-case spellings are accepted, as Kube-OVN's validator does.
    pub fn from_annotation(value: &str) -> Option<Family> {
        match value {
            "ipv4" => Some(Family::V4),
            "ipv6" => Some(Family::V6),
            _ => None,
        }
    }

    pub(crate) fn index(self) -> usize {
        match self {
            Family::V4 => 0,
            Family::V6 => 1,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

/// An address as a number on its family's line.
pub(crate) fn to_u128(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// The inverse of [`to_u128`]; `value` must fit the family.
pub(crate) fn from_u128(family: Family, value: u128) -> IpAddr {
    match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::from(
            u32::try_from(value).expect("IPv4 value fits in 32 bits"),
        )),
        Family::V6 => IpAddr::V6(Ipv6Addr::from(value)),
    }
}
