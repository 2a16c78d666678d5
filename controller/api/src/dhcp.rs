//! OVN DHCP options as Kube-OVN configures them: a Subnet's `dhcpV4Options` / `dhcpV6Options` and
//! a pod's `<provider>.kubernetes.io/dhcp-v4-options` / `dhcp-v6-options`, read into the
//! `options` map of an OVN `DHCP_Options` row with Kube-OVN's defaults filled in.
//!
//! The text is Kube-OVN's: `key=value` entries separated by commas, spaces ignored, and `;`
//! standing for the comma inside a list (`dns_server={8.8.8.8;1.1.1.1}`). Unlike Kube-OVN, which
//! skips malformed entries and passes unknown keys on, every entry is checked against the options
//! OVN 23.03 knows: ovn-controller refuses a port's whole DHCP action over one bad option, so a
//! typo would otherwise silently turn DHCP off for every port of the subnet.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

/// `lease_time` when none is given (Kube-OVN's default, seconds).
pub const DEFAULT_LEASE_TIME: &str = "3600";
/// `server_id` of DHCPv4 when none is given: Kube-OVN's link-local server address.
pub const DEFAULT_SERVER_ID_V4: &str = "169.254.0.254";
/// The MTU offered when the Subnet sets none: Kube-OVN's for Geneve (1500 less 100 for the
/// tunnel), which is also portkeeper's CNI default.
pub const DEFAULT_MTU: u32 = 1400;

/// Suffix of the pod annotation with the DHCPv4 options of one interface (Kube-OVN's spelling).
pub const ANNOTATION_V4: &str = "dhcp-v4-options";
/// Suffix of the pod annotation with the DHCPv6 options of one interface (Kube-OVN's spelling).
pub const ANNOTATION_V6: &str = "dhcp-v6-options";
/// Another spelling of [`ANNOTATION_V4`] some Kube-OVN documentation uses; read when the first is
/// absent.
pub const ANNOTATION_V4_ALIAS: &str = "dhcp_v4_options";
/// Another spelling of [`ANNOTATION_V6`]; read when the first is absent.
pub const ANNOTATION_V6_ALIAS: &str = "dhcp_v6_options";

/// Which DHCP an options text is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// DHCPv4.
    V4,
    /// DHCPv6.
    V6,
}

impl Family {
    /// `IPv4` / `IPv6`, the `external_ids:protocol` value Kube-OVN writes on the row.
    pub fn protocol(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }
}

/// What an option's value must look like (OVN's option types, `lib/ovn-l7.h`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// One IPv4 address or a `{…}` list of them.
    Ipv4,
    /// One IPv6 address or a `{…}` list of them.
    Ipv6,
    /// An unsigned number of at most this many bits.
    Uint(u32),
    /// `true`/`false` (OVN also takes `1`/`0`).
    Bool,
    /// A MAC address.
    Mac,
    /// Free text (quoted or not), a host name, domains or static routes: passed on as given.
    Text,
}

/// The DHCPv4 options OVN 23.03 supports, with `server_mac` (not sent to clients: the server's
/// Ethernet address).
const V4_OPTIONS: &[(&str, Kind)] = &[
    ("offerip", Kind::Ipv4),
    ("netmask", Kind::Ipv4),
    ("router", Kind::Ipv4),
    ("dns_server", Kind::Ipv4),
    ("log_server", Kind::Ipv4),
    ("lpr_server", Kind::Ipv4),
    ("hostname", Kind::Text),
    ("domain_name", Kind::Text),
    ("swap_server", Kind::Ipv4),
    ("policy_filter", Kind::Ipv4),
    ("router_solicitation", Kind::Ipv4),
    ("nis_server", Kind::Ipv4),
    ("ntp_server", Kind::Ipv4),
    ("server_id", Kind::Ipv4),
    ("tftp_server", Kind::Text),
    ("classless_static_route", Kind::Text),
    ("ms_classless_static_route", Kind::Text),
    ("ip_forward_enable", Kind::Bool),
    ("router_discovery", Kind::Bool),
    ("ethernet_encap", Kind::Bool),
    ("default_ttl", Kind::Uint(8)),
    ("tcp_ttl", Kind::Uint(8)),
    ("mtu", Kind::Uint(16)),
    ("lease_time", Kind::Uint(32)),
    ("T1", Kind::Uint(32)),
    ("T2", Kind::Uint(32)),
    ("bootfile_name", Kind::Text),
    ("wpad", Kind::Text),
    ("path_prefix", Kind::Text),
    ("tftp_server_address", Kind::Ipv4),
    ("domain_search_list", Kind::Text),
    ("broadcast_address", Kind::Ipv4),
    ("netbios_name_server", Kind::Ipv4),
    ("netbios_node_type", Kind::Uint(8)),
    ("bootfile_name_alt", Kind::Text),
    ("arp_cache_timeout", Kind::Uint(32)),
    ("tcp_keepalive_interval", Kind::Uint(32)),
    ("next_server", Kind::Ipv4),
    ("server_mac", Kind::Mac),
];

/// The DHCPv6 options OVN 23.03 supports, with `dhcpv6_stateless` (addresses left to SLAAC).
const V6_OPTIONS: &[(&str, Kind)] = &[
    ("server_id", Kind::Mac),
    ("dns_server", Kind::Ipv6),
    ("domain_search", Kind::Text),
    ("dhcpv6_stateless", Kind::Bool),
];

/// Why an options text was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DhcpOptionsError {
    /// An entry is not `key=value`.
    #[error("{family:?} DHCP option {entry:?} is not key=value")]
    Malformed { family: Family, entry: String },
    /// OVN has no such option.
    #[error("{family:?} DHCP option {key:?} is not one OVN supports")]
    Unknown { family: Family, key: String },
    /// The value does not fit the option.
    #[error("{family:?} DHCP option {key}={value:?}: {why}")]
    BadValue {
        family: Family,
        key: String,
        value: String,
        why: &'static str,
    },
    /// The same option twice.
    #[error("{family:?} DHCP option {key:?} is given twice")]
    Repeated { family: Family, key: String },
}

/// Reads an options text of `family` (see the module docs). Empty text gives no options.
pub fn parse(family: Family, text: &str) -> Result<BTreeMap<String, String>, DhcpOptionsError> {
    let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    let mut options = BTreeMap::new();
    for entry in compact.split(',').filter(|e| !e.is_empty()) {
        let (key, value) = entry
            .split_once('=')
            .filter(|(k, v)| !k.is_empty() && !v.is_empty())
            .ok_or_else(|| DhcpOptionsError::Malformed {
                family,
                entry: entry.to_owned(),
            })?;
        let value = value.replace(';', ",");
        let kind = kind_of(family, key).ok_or_else(|| DhcpOptionsError::Unknown {
            family,
            key: key.to_owned(),
        })?;
        check(kind, &value).map_err(|why| DhcpOptionsError::BadValue {
            family,
            key: key.to_owned(),
            value: value.clone(),
            why,
        })?;
        if options.insert(key.to_owned(), value).is_some() {
            return Err(DhcpOptionsError::Repeated {
                family,
                key: key.to_owned(),
            });
        }
    }
    Ok(options)
}

fn kind_of(family: Family, key: &str) -> Option<Kind> {
    let table = match family {
        Family::V4 => V4_OPTIONS,
        Family::V6 => V6_OPTIONS,
    };
    table.iter().find(|(k, _)| *k == key).map(|(_, kind)| *kind)
}

fn check(kind: Kind, value: &str) -> Result<(), &'static str> {
    let items = || -> Result<Vec<&str>, &'static str> {
        match value.strip_prefix('{') {
            Some(rest) => rest
                .strip_suffix('}')
                .map(|inner| inner.split(',').collect())
                .ok_or("a list must end with }"),
            None if value.contains(',') => Err("several values must be written as {a;b}"),
            None => Ok(vec![value]),
        }
    };
    match kind {
        Kind::Ipv4 => items()?
            .iter()
            .all(|a| a.parse::<Ipv4Addr>().is_ok())
            .then_some(())
            .ok_or("not an IPv4 address (or {a;b} list of them)"),
        Kind::Ipv6 => items()?
            .iter()
            .all(|a| a.parse::<Ipv6Addr>().is_ok())
            .then_some(())
            .ok_or("not an IPv6 address (or {a;b} list of them)"),
        Kind::Uint(bits) => value
            .parse::<u64>()
            .ok()
            .filter(|n| *n < 1u64 << bits)
            .map(drop)
            .ok_or(match bits {
                8 => "not a number from 0 to 255",
                16 => "not a number from 0 to 65535",
                _ => "not a number from 0 to 4294967295",
            }),
        Kind::Bool => matches!(value, "true" | "false" | "1" | "0")
            .then_some(())
            .ok_or("not true or false"),
        Kind::Mac => is_mac(value).then_some(()).ok_or("not a MAC address"),
        Kind::Text => Ok(()),
    }
}

fn is_mac(value: &str) -> bool {
    let parts: Vec<&str> = value.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
}

/// The options of a DHCPv4 row: `given` (already [`parse`]d) with Kube-OVN's defaults for what
/// it leaves out: `lease_time` 3600, `router` the subnet's gateway, `server_id` 169.254.0.254,
/// `server_mac` the row's own (kept from the existing row, or a new one), and `mtu`.
pub fn v4_options(
    given: &BTreeMap<String, String>,
    gateway: Option<Ipv4Addr>,
    server_mac: &str,
    mtu: u32,
) -> BTreeMap<String, String> {
    let mut options = given.clone();
    let mut default = |key: &str, value: String| {
        options.entry(key.to_owned()).or_insert(value);
    };
    default("lease_time", DEFAULT_LEASE_TIME.to_owned());
    if let Some(gateway) = gateway {
        default("router", gateway.to_string());
    }
    default("server_id", DEFAULT_SERVER_ID_V4.to_owned());
    default("server_mac", server_mac.to_owned());
    default("mtu", mtu.to_string());
    options
}

/// The options of a DHCPv6 row: `given` with `server_id` the row's own MAC unless given.
pub fn v6_options(given: &BTreeMap<String, String>, server_id: &str) -> BTreeMap<String, String> {
    let mut options = given.clone();
    options
        .entry("server_id".to_owned())
        .or_insert_with(|| server_id.to_owned());
    options
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(entries: &[(&str, &str)]) -> BTreeMap<String, String> {
        entries
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn kube_ovns_documented_example_reads() {
        let v4 = parse(
            Family::V4,
            "lease_time=3600,router=10.0.0.1,server_id=169.254.0.254,server_mac=00:00:00:2E:2F:B8",
        )
        .unwrap();
        assert_eq!(v4["server_mac"], "00:00:00:2E:2F:B8");
        assert_eq!(v4.len(), 4);
        let v6 = parse(Family::V6, "server_id=00:00:00:2E:2F:C5").unwrap();
        assert_eq!(v6, map(&[("server_id", "00:00:00:2E:2F:C5")]));
    }

    #[test]
    fn spaces_are_ignored_and_semicolons_separate_list_items() {
        let v4 = parse(
            Family::V4,
            " dns_server = {10.96.0.10; 1.1.1.1} , mtu=1400 , ",
        )
        .unwrap();
        assert_eq!(
            v4,
            map(&[("dns_server", "{10.96.0.10,1.1.1.1}"), ("mtu", "1400")])
        );
        assert_eq!(parse(Family::V4, "").unwrap(), BTreeMap::new());
        assert_eq!(
            parse(Family::V6, "dns_server={fd00::a;fd00::b}").unwrap()["dns_server"],
            "{fd00::a,fd00::b}"
        );
    }

    #[test]
    fn bad_entries_are_named() {
        let e = |family, text| parse(family, text).unwrap_err().to_string();
        assert_eq!(
            e(Family::V4, "lease_time"),
            "V4 DHCP option \"lease_time\" is not key=value"
        );
        assert_eq!(
            e(Family::V4, "leasetime=5"),
            "V4 DHCP option \"leasetime\" is not one OVN supports"
        );
        assert_eq!(
            e(Family::V4, "mtu=70000"),
            "V4 DHCP option mtu=\"70000\": not a number from 0 to 65535"
        );
        assert_eq!(
            e(Family::V4, "dns_server=8.8.8.8;1.1.1.1"),
            "V4 DHCP option dns_server=\"8.8.8.8,1.1.1.1\": several values must be written as {a;b}"
        );
        assert_eq!(
            e(Family::V4, "router=fd00::1"),
            "V4 DHCP option router=\"fd00::1\": not an IPv4 address (or {a;b} list of them)"
        );
        assert_eq!(
            e(Family::V6, "server_id=169.254.0.254"),
            "V6 DHCP option server_id=\"169.254.0.254\": not a MAC address"
        );
        assert_eq!(
            e(Family::V4, "mtu=1400,mtu=1300"),
            "V4 DHCP option \"mtu\" is given twice"
        );
        assert!(matches!(
            parse(Family::V6, "lease_time=5"),
            Err(DhcpOptionsError::Unknown { .. })
        ));
    }

    #[test]
    fn v4_defaults_are_kube_ovns_and_never_override() {
        let gw = Some("10.16.0.1".parse().unwrap());
        assert_eq!(
            v4_options(&BTreeMap::new(), gw, "0a:00:00:00:00:01", 1400),
            map(&[
                ("lease_time", "3600"),
                ("mtu", "1400"),
                ("router", "10.16.0.1"),
                ("server_id", "169.254.0.254"),
                ("server_mac", "0a:00:00:00:00:01"),
            ])
        );
        let given = map(&[("router", "10.16.0.254"), ("dns_server", "10.96.0.10")]);
        let built = v4_options(&given, gw, "0a:00:00:00:00:01", 1300);
        assert_eq!(built["router"], "10.16.0.254");
        assert_eq!(built["dns_server"], "10.96.0.10");
        assert_eq!(built["mtu"], "1300");
    }

    #[test]
    fn v6_server_id_defaults_to_the_rows_mac() {
        assert_eq!(
            v6_options(&BTreeMap::new(), "0a:00:00:00:00:02"),
            map(&[("server_id", "0a:00:00:00:00:02")])
        );
        let given = map(&[("server_id", "0a:00:00:00:00:09")]);
        assert_eq!(v6_options(&given, "0a:00:00:00:00:02"), given);
    }

    proptest::proptest! {
        /// Whatever the text, the reader answers without panicking, and what it accepts it would
        /// accept again written back (so the row's options are a fixed point).
        #[test]
        fn accepted_options_read_back_the_same(
            text in proptest::prop_oneof![
                ".{0,80}",
                "( ?(mtu|lease_time|router|dns_server|server_id|server_mac|hostname|T1)=[0-9a-f.:{};=]{0,14},?){0,5}",
            ],
            v6 in proptest::bool::ANY,
        ) {
            let family = if v6 { Family::V6 } else { Family::V4 };
            if let Ok(options) = parse(family, &text) {
                let written: Vec<String> = options
                    .iter()
                    .map(|(k, v)| format!("{k}={}", v.replace(',', ";")))
                    .collect();
                proptest::prop_assert_eq!(parse(family, &written.join(",")), Ok(options));
            }
        }
    }
}
