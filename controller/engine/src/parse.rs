//! Parsers for Kube-OVN's annotation and CRD strings. The controller and the
//! CNI daemon share them so that a value means the same thing everywhere,
//! and every rejection says what was wrong with which value.

use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use thiserror::Error;

use crate::family::{Family, to_u128};
use crate::mac::MacError;

/// Why an annotation or CRD string was rejected.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum ParseError {
    /// The value was empty where an address, CIDR or MAC was required.
    #[error("empty {what}")]
    Empty {
        /// What the empty value should have been.
        what: &'static str,
    },
    /// Not an IPv4 or IPv6 address.
    #[error("invalid IP address {input:?}")]
    InvalidIp {
        /// The offending text.
        input: String,
    },
    /// A dual-stack value (`v4,v6`) named one family twice.
    #[error(
        "{input:?} has two {family} addresses; a dual-stack value is one IPv4 and one IPv6 address"
    )]
    DuplicateFamily {
        /// The offending text.
        input: String,
        /// The repeated family.
        family: Family,
    },
    /// More than two comma-separated addresses where `v4,v6` was expected.
    #[error("{input:?} has more than two addresses; expected `ip` or `ipv4,ipv6`")]
    TooManyAddresses {
        /// The offending text.
        input: String,
    },
    /// A `,`-separated single-stack `ip_pool` list mixed families.
    #[error(
        "ip_pool list {input:?} mixes IPv4 and IPv6 entries; write dual-stack entries as `v4,v6` separated by `;`"
    )]
    MixedFamilies {
        /// The offending text.
        input: String,
    },
    /// The same address appears twice in an `ip_pool` list.
    #[error("ip_pool list {input:?} names {address} twice")]
    DuplicateEntry {
        /// The offending text.
        input: String,
        /// The repeated address.
        address: IpAddr,
    },
    /// An `ip_pool` value that is neither an IP list nor a valid IPPool name.
    #[error("ip_pool {input:?} is neither an IPPool name nor a list of IP addresses")]
    InvalidPoolName {
        /// The offending text.
        input: String,
    },
    /// An `ip_pools` entry that is not an IPPool name.
    #[error("ip_pools entry {input:?} is not an IPPool name")]
    NotPoolName {
        /// The offending entry.
        input: String,
    },
    /// The same IPPool appears twice in an `ip_pools` list.
    #[error("ip_pools list {input:?} names IPPool {pool} twice")]
    DuplicatePool {
        /// The offending text.
        input: String,
        /// The repeated pool.
        pool: String,
    },
    /// Not a CIDR (`address/prefix`).
    #[error("invalid CIDR {input:?}")]
    InvalidCidr {
        /// The offending text.
        input: String,
    },
    /// A /32 or /128 subnet has no usable address besides its gateway.
    #[error("CIDR {cidr} is too small for a subnet (/32 and /128 have no usable addresses)")]
    CidrTooSmall {
        /// The rejected CIDR.
        cidr: IpNet,
    },
    /// `cidrBlock` named one family twice or had more than two entries.
    #[error("cidrBlock {input:?} must be one CIDR or one IPv4 and one IPv6 CIDR separated by `,`")]
    InvalidCidrBlock {
        /// The offending text.
        input: String,
    },
    /// An `a..b` range whose ends are of different families.
    #[error("range {input:?} mixes IPv4 and IPv6")]
    RangeFamilies {
        /// The offending text.
        input: String,
    },
    /// An `a..b` range whose start is above its end.
    #[error("range {input:?} starts after it ends")]
    RangeReversed {
        /// The offending text.
        input: String,
    },
    /// Not a MAC address a port can own.
    #[error(transparent)]
    Mac(#[from] MacError),
}

/// One address per family, the value of `ip_address`, of a dual-stack
/// `ip_pool` entry or of a subnet `gateway`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DualAddress {
    /// The IPv4 address, if any.
    pub v4: Option<std::net::Ipv4Addr>,
    /// The IPv6 address, if any.
    pub v6: Option<std::net::Ipv6Addr>,
}

impl DualAddress {
    /// The address of one family.
    pub fn get(&self, family: Family) -> Option<IpAddr> {
        match family {
            Family::V4 => self.v4.map(IpAddr::V4),
            Family::V6 => self.v6.map(IpAddr::V6),
        }
    }

    /// Sets the address of its family.
    pub fn set(&mut self, addr: IpAddr) {
        match addr {
            IpAddr::V4(a) => self.v4 = Some(a),
            IpAddr::V6(a) => self.v6 = Some(a),
        }
    }

    /// The addresses present, v4 first.
    pub fn addresses(&self) -> impl Iterator<Item = IpAddr> + '_ {
        Family::ALL.into_iter().filter_map(|f| self.get(f))
    }

    /// Whether neither family is set.
    pub fn is_empty(&self) -> bool {
        self.v4.is_none() && self.v6.is_none()
    }
}

impl std::fmt::Display for DualAddress {
    /// Kube-OVN's annotation form: `v4`, `v6` or `v4,v6`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self.addresses().map(|a| a.to_string()).collect();
        f.write_str(&parts.join(","))
    }
}

/// Parses one address. A `/prefix` suffix is accepted and dropped, because
/// Multus `ips` carry one and Kube-OVN's controller wrongly rejects it
/// (kube-ovn-behavior §9.17).
pub fn parse_ip(input: &str) -> Result<IpAddr, ParseError> {
    let text = input.trim();
    if text.is_empty() {
        return Err(ParseError::Empty { what: "IP address" });
    }
    let invalid = || ParseError::InvalidIp {
        input: input.to_owned(),
    };
    if text.contains('/') {
        text.parse::<IpNet>()
            .map(|net| net.addr())
            .map_err(|_| invalid())
    } else {
        text.parse::<IpAddr>().map_err(|_| invalid())
    }
}

/// Parses `ip_address`: `ip` or `v4,v6` (either order).
pub fn parse_ip_address(input: &str) -> Result<DualAddress, ParseError> {
    let mut out = DualAddress::default();
    let mut count = 0;
    for part in input.split(',') {
        count += 1;
        if count > 2 {
            return Err(ParseError::TooManyAddresses {
                input: input.to_owned(),
            });
        }
        let addr = parse_ip(part)?;
        let family = Family::of(addr);
        if out.get(family).is_some() {
            return Err(ParseError::DuplicateFamily {
                input: input.to_owned(),
                family,
            });
        }
        out.set(addr);
    }
    Ok(out)
}

/// The value of the `ip_pool` annotation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IpPoolAnnotation {
    /// The name of an IPPool resource.
    Named(String),
    /// A list of entries, each one address or a `v4,v6` pair. A StatefulSet
    /// pod takes the entry at its ordinal minus `ordinals.start`.
    List(Vec<DualAddress>),
}

/// Parses `ip_pool`. A value without `,`/`;` that is not an address is an
/// IPPool name. Otherwise it is a list: entries split on `;` (each may be a
/// `v4,v6` pair); with only `,`, exactly two addresses of different families
/// form one dual entry (Kube-OVN's rule) and any other list is single-stack.
/// Empty entries (a trailing separator) are ignored; a repeated address is
/// an error because two entries must never map to one address.
pub fn parse_ip_pool(input: &str) -> Result<IpPoolAnnotation, ParseError> {
    let text = input.trim();
    if text.is_empty() {
        return Err(ParseError::Empty { what: "ip_pool" });
    }
    if !text.contains([',', ';']) {
        if let Ok(addr) = parse_ip(text) {
            return Ok(IpPoolAnnotation::List(vec![single(addr)]));
        }
        return if is_pool_name(text) {
            Ok(IpPoolAnnotation::Named(text.to_owned()))
        } else if looks_like_ip(text) {
            Err(ParseError::InvalidIp {
                input: text.to_owned(),
            })
        } else {
            Err(ParseError::InvalidPoolName {
                input: input.to_owned(),
            })
        };
    }
    let entries: Vec<DualAddress> = if text.contains(';') {
        text.split(';')
            .filter(|e| !e.trim().is_empty())
            .map(parse_ip_address)
            .collect::<Result<_, _>>()?
    } else {
        let addrs: Vec<IpAddr> = text
            .split(',')
            .filter(|e| !e.trim().is_empty())
            .map(parse_ip)
            .collect::<Result<_, _>>()?;
        match addrs.as_slice() {
            [a, b] if Family::of(*a) != Family::of(*b) => {
                let mut pair = single(*a);
                pair.set(*b);
                vec![pair]
            }
            _ => {
                if addrs.iter().any(|a| Family::of(*a) != Family::of(addrs[0])) {
                    return Err(ParseError::MixedFamilies {
                        input: input.to_owned(),
                    });
                }
                addrs.into_iter().map(single).collect()
            }
        }
    };
    if entries.is_empty() {
        return Err(ParseError::Empty { what: "ip_pool" });
    }
    let mut seen = std::collections::HashSet::new();
    for address in entries.iter().flat_map(|e| e.addresses()) {
        if !seen.insert(address) {
            return Err(ParseError::DuplicateEntry {
                input: input.to_owned(),
                address,
            });
        }
    }
    Ok(IpPoolAnnotation::List(entries))
}

/// `ip_pools` (portkeeper's extension): IPPool names separated by `,`, in the order they are
/// tried. At least one name, each a Kubernetes object name, none twice; blanks around a name and
/// a trailing `,` are ignored.
pub fn parse_pool_list(input: &str) -> Result<Vec<String>, ParseError> {
    let mut pools: Vec<String> = Vec::new();
    let entries: Vec<&str> = input.split(',').map(str::trim).collect();
    let last = entries.len() - 1;
    for (i, entry) in entries.into_iter().enumerate() {
        if entry.is_empty() && i == last && i > 0 {
            break;
        }
        if !is_pool_name(entry) {
            return Err(if entry.is_empty() {
                ParseError::Empty {
                    what: "ip_pools entry",
                }
            } else {
                ParseError::NotPoolName {
                    input: entry.to_owned(),
                }
            });
        }
        if pools.iter().any(|p| p == entry) {
            return Err(ParseError::DuplicatePool {
                input: input.to_owned(),
                pool: entry.to_owned(),
            });
        }
        pools.push(entry.to_owned());
    }
    Ok(pools)
}

fn single(addr: IpAddr) -> DualAddress {
    let mut out = DualAddress::default();
    out.set(addr);
    out
}

/// A Kubernetes object name (RFC 1123 subdomain), the shape of an IPPool name.
fn is_pool_name(text: &str) -> bool {
    text.len() <= 253
        && !looks_like_ip(text)
        && text.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// Text a user most likely meant as an address: only digits and dots with
/// three dots, or anything with a colon.
fn looks_like_ip(text: &str) -> bool {
    text.contains(':')
        || (text.bytes().all(|b| b.is_ascii_digit() || b == b'.')
            && text.bytes().filter(|&b| b == b'.').count() == 3)
}

/// A subnet's `cidrBlock`: one CIDR, or one per family in either order,
/// each normalised to its network address. An empty block is a MAC-only
/// (underlay) subnet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CidrBlock {
    /// The IPv4 CIDR, if any.
    pub v4: Option<Ipv4Net>,
    /// The IPv6 CIDR, if any.
    pub v6: Option<Ipv6Net>,
}

impl CidrBlock {
    /// The CIDR of one family.
    pub fn get(&self, family: Family) -> Option<IpNet> {
        match family {
            Family::V4 => self.v4.map(IpNet::V4),
            Family::V6 => self.v6.map(IpNet::V6),
        }
    }

    /// Kube-OVN's protocol name: `IPv4`, `IPv6`, `Dual` or `mac`.
    pub fn protocol(&self) -> &'static str {
        match (self.v4.is_some(), self.v6.is_some()) {
            (true, true) => "Dual",
            (true, false) => "IPv4",
            (false, true) => "IPv6",
            (false, false) => "mac",
        }
    }
}

impl std::fmt::Display for CidrBlock {
    /// The normalised `v4,v6` form written to the `cidr` annotation.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = Family::ALL
            .into_iter()
            .filter_map(|fam| self.get(fam))
            .map(|n| n.to_string())
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// Parses one CIDR, normalising host bits away (`10.16.0.1/16` is
/// `10.16.0.0/16`).
pub fn parse_cidr(input: &str) -> Result<IpNet, ParseError> {
    let text = input.trim();
    if text.is_empty() {
        return Err(ParseError::Empty { what: "CIDR" });
    }
    text.parse::<IpNet>()
        .map(|n| n.trunc())
        .map_err(|_| ParseError::InvalidCidr {
            input: input.to_owned(),
        })
}

/// Parses `cidrBlock`.
pub fn parse_cidr_block(input: &str) -> Result<CidrBlock, ParseError> {
    let mut block = CidrBlock::default();
    if input.trim().is_empty() {
        return Ok(block);
    }
    let invalid = || ParseError::InvalidCidrBlock {
        input: input.to_owned(),
    };
    for part in input.split(',') {
        let net = parse_cidr(part)?;
        if net.max_prefix_len() == net.prefix_len() {
            return Err(ParseError::CidrTooSmall { cidr: net });
        }
        match net {
            IpNet::V4(n) if block.v4.is_none() => block.v4 = Some(n),
            IpNet::V6(n) if block.v6.is_none() => block.v6 = Some(n),
            _ => return Err(invalid()),
        }
    }
    Ok(block)
}

/// An inclusive address range of one family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IpRange {
    /// The first address.
    pub start: IpAddr,
    /// The last address (same family, not below `start`).
    pub end: IpAddr,
}

impl IpRange {
    /// The family of both ends.
    pub fn family(&self) -> Family {
        Family::of(self.start)
    }

    pub(crate) fn bounds(&self) -> (u128, u128) {
        (to_u128(self.start), to_u128(self.end))
    }
}

impl std::fmt::Display for IpRange {
    /// Kube-OVN's `excludeIps` form: `a` or `a..b`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.start == self.end {
            write!(f, "{}", self.start)
        } else {
            write!(f, "{}..{}", self.start, self.end)
        }
    }
}

/// Parses one `excludeIps` entry: `ip` or `a..b`.
pub fn parse_exclude_entry(input: &str) -> Result<IpRange, ParseError> {
    match input.split_once("..") {
        None => {
            let addr = parse_plain_ip(input)?;
            Ok(IpRange {
                start: addr,
                end: addr,
            })
        }
        Some((a, b)) => {
            let start = parse_plain_ip(a)?;
            let end = parse_plain_ip(b)?;
            if Family::of(start) != Family::of(end) {
                return Err(ParseError::RangeFamilies {
                    input: input.to_owned(),
                });
            }
            if to_u128(start) > to_u128(end) {
                return Err(ParseError::RangeReversed {
                    input: input.to_owned(),
                });
            }
            Ok(IpRange { start, end })
        }
    }
}

/// Parses every `excludeIps` entry, stopping at the first bad one.
pub fn parse_exclude_ips<S: AsRef<str>>(entries: &[S]) -> Result<Vec<IpRange>, ParseError> {
    entries
        .iter()
        .map(|e| parse_exclude_entry(e.as_ref()))
        .collect()
}

/// Parses one IPPool `spec.ips` entry: an address, an `a..b` range or a
/// CIDR (whose every address, network included, is in the pool; the
/// subnet's own rules then drop what is not usable).
pub fn parse_pool_entry(input: &str) -> Result<IpRange, ParseError> {
    if input.contains('/') {
        let net = parse_cidr(input)?;
        return Ok(IpRange {
            start: net.network(),
            end: net.broadcast(),
        });
    }
    parse_exclude_entry(input)
}

fn parse_plain_ip(input: &str) -> Result<IpAddr, ParseError> {
    let text = input.trim();
    if text.is_empty() {
        return Err(ParseError::Empty { what: "IP address" });
    }
    text.parse::<IpAddr>().map_err(|_| ParseError::InvalidIp {
        input: input.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn pool_list_keeps_order_and_refuses_what_is_not_a_name() {
        assert_eq!(
            parse_pool_list(" zone-b , zone-a,").unwrap(),
            vec!["zone-b".to_owned(), "zone-a".to_owned()]
        );
        assert_eq!(parse_pool_list("p").unwrap(), vec!["p".to_owned()]);
        for (bad, expected) in [
            ("", "empty ip_pools entry"),
            (",", "empty ip_pools entry"),
            ("a,,b", "empty ip_pools entry"),
            ("a,10.0.0.1", "\"10.0.0.1\" is not an IPPool name"),
            ("a;b", "\"a;b\" is not an IPPool name"),
            ("Pool", "\"Pool\" is not an IPPool name"),
            ("a,b,a", "names IPPool a twice"),
        ] {
            let err = parse_pool_list(bad).unwrap_err().to_string();
            assert!(err.contains(expected), "{bad:?}: {err}");
        }
    }

    #[test]
    fn ip_address_accepts_either_order_and_prefixes() {
        let both = parse_ip_address("fd00::5, 10.0.0.5").unwrap();
        assert_eq!(both.to_string(), "10.0.0.5,fd00::5");
        assert_eq!(
            parse_ip_address("10.0.0.5/24").unwrap().to_string(),
            "10.0.0.5"
        );
        assert_eq!(
            parse_ip_address("FD00::A").unwrap().v6,
            Some("fd00::a".parse().unwrap())
        );
    }

    #[test]
    fn ip_address_rejects_bad_values() {
        assert!(matches!(
            parse_ip_address(""),
            Err(ParseError::Empty { .. })
        ));
        assert!(matches!(
            parse_ip_address("10.0.0.256"),
            Err(ParseError::InvalidIp { .. })
        ));
        assert!(matches!(
            parse_ip_address("10.0.0.1,10.0.0.2"),
            Err(ParseError::DuplicateFamily {
                family: Family::V4,
                ..
            })
        ));
        assert!(matches!(
            parse_ip_address("10.0.0.1,fd00::1,10.0.0.2"),
            Err(ParseError::TooManyAddresses { .. })
        ));
        assert!(matches!(
            parse_ip_address("10.0.0.1/33"),
            Err(ParseError::InvalidIp { .. })
        ));
    }

    #[test]
    fn ip_pool_distinguishes_names_lists_and_dual_pairs() {
        assert_eq!(
            parse_ip_pool("my-pool").unwrap(),
            IpPoolAnnotation::Named("my-pool".into())
        );
        let IpPoolAnnotation::List(list) = parse_ip_pool("10.0.0.1;10.0.0.2;").unwrap() else {
            panic!("list expected")
        };
        assert_eq!(list.len(), 2);
        let IpPoolAnnotation::List(pair) = parse_ip_pool("10.0.0.1,fd00::1").unwrap() else {
            panic!("list expected")
        };
        assert_eq!(
            pair.len(),
            1,
            "two addresses of different families are one dual entry"
        );
        let IpPoolAnnotation::List(dual) =
            parse_ip_pool("10.0.0.1,fd00::1;fd00::2,10.0.0.2").unwrap()
        else {
            panic!("list expected")
        };
        assert_eq!(dual[1].v4, Some("10.0.0.2".parse().unwrap()));
        assert!(matches!(
            parse_ip_pool("10.0.0.1,fd00::1,10.0.0.2"),
            Err(ParseError::MixedFamilies { .. })
        ));
        assert!(matches!(
            parse_ip_pool("10.0.0.1;10.0.0.1"),
            Err(ParseError::DuplicateEntry { .. })
        ));
        assert!(matches!(
            parse_ip_pool("10.0.0.300"),
            Err(ParseError::InvalidIp { .. })
        ));
        assert!(matches!(
            parse_ip_pool("Bad_Pool"),
            Err(ParseError::InvalidPoolName { .. })
        ));
        assert!(matches!(
            parse_ip_pool(" ; "),
            Err(ParseError::Empty { .. })
        ));
    }

    #[test]
    fn cidr_block_normalises_either_order() {
        let block = parse_cidr_block("fd00:10:16::1/64,10.16.0.1/16").unwrap();
        assert_eq!(block.to_string(), "10.16.0.0/16,fd00:10:16::/64");
        assert_eq!(block.protocol(), "Dual");
        assert_eq!(parse_cidr_block("").unwrap().protocol(), "mac");
        assert!(matches!(
            parse_cidr_block("10.0.0.0/24,10.1.0.0/24"),
            Err(ParseError::InvalidCidrBlock { .. })
        ));
        assert!(matches!(
            parse_cidr_block("10.0.0.1/32"),
            Err(ParseError::CidrTooSmall { .. })
        ));
        assert!(matches!(
            parse_cidr_block("10.0.0.0/24,"),
            Err(ParseError::Empty { .. })
        ));
    }

    #[test]
    fn exclude_and_pool_entries() {
        assert_eq!(
            parse_exclude_entry("10.0.0.1..10.0.0.9").unwrap(),
            IpRange {
                start: ip("10.0.0.1"),
                end: ip("10.0.0.9")
            }
        );
        assert!(matches!(
            parse_exclude_entry("10.0.0.9..10.0.0.1"),
            Err(ParseError::RangeReversed { .. })
        ));
        assert!(matches!(
            parse_exclude_entry("10.0.0.1..fd00::1"),
            Err(ParseError::RangeFamilies { .. })
        ));
        assert!(parse_exclude_entry("10.0.0.0/24").is_err());
        assert_eq!(
            parse_pool_entry("10.0.0.0/30").unwrap(),
            IpRange {
                start: ip("10.0.0.0"),
                end: ip("10.0.0.3")
            }
        );
        assert_eq!(
            parse_exclude_ips(&["10.0.0.1", "10.0.0.3..10.0.0.4"])
                .unwrap()
                .len(),
            2
        );
    }
}
