//! What the controller needs from the OVN Northbound database, as a small trait, and the
//! desired-state types it writes: the reconcilers are written (and unit-tested) against it.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::IpAddr;

use ovsdb_client::runtime::group::GroupStats;
use portkeeper_api::dhcp::Family;
use portkeeper_engine::MacAddress;

/// `external_ids:vendor` on every row portkeeper creates; GC touches nothing without it.
pub const VENDOR: &str = "portkeeper";

/// `external_ids` keys portkeeper writes on ports (Kube-OVN's, plus the pod UID).
pub mod ids {
    /// Owner system.
    pub const VENDOR: &str = "vendor";
    /// `<namespace>/<pod-or-vm>`.
    pub const POD: &str = "pod";
    /// The port's logical switch (= Subnet name).
    pub const LS: &str = "ls";
    /// On switches: the Subnet that owns the switch.
    pub const SUBNET: &str = "subnet";
    /// On `DHCP_Options` rows: `IPv4` or `IPv6` (Kube-OVN's).
    pub const PROTOCOL: &str = "protocol";
    /// On `DHCP_Options` rows of one port's own: the port (Kube-OVN's).
    pub const PORT: &str = "port";
}

/// A logical switch port as the Northbound cache has it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObservedPort {
    /// Port name.
    pub name: String,
    /// Name of the logical switch holding the port.
    pub switch: String,
    /// `type` column (`""` for VIF ports).
    pub kind: String,
    /// `addresses` entries, e.g. `"0a:58:0a:10:00:02 10.16.0.2"`, `"router"`, `"unknown"`.
    pub addresses: Vec<String>,
    /// `external_ids`.
    pub external_ids: BTreeMap<String, String>,
    /// `options`.
    pub options: BTreeMap<String, String>,
    /// `dhcpv4_options`: the UUID of the `DHCP_Options` row OVN answers DHCPv4 from.
    pub dhcpv4_options: Option<String>,
    /// `dhcpv6_options`: the same for DHCPv6.
    pub dhcpv6_options: Option<String>,
}

impl ObservedPort {
    /// Whether portkeeper created this port.
    pub fn is_ours(&self) -> bool {
        self.external_ids.get(ids::VENDOR).map(String::as_str) == Some(VENDOR)
    }

    /// The MAC and IPs of every `"MAC IP..."` entry (keywords like `router` are skipped).
    pub fn bindings(&self) -> Vec<(Option<MacAddress>, Vec<IpAddr>)> {
        self.addresses
            .iter()
            .filter_map(|entry| {
                let mut words = entry.split_whitespace();
                let mac = MacAddress::parse(words.next()?).ok()?;
                let ips = words
                    .filter_map(|w| w.split('/').next()?.parse().ok())
                    .collect();
                Some((Some(mac), ips))
            })
            .collect()
    }

    /// Every IP in `addresses`.
    pub fn ips(&self) -> impl Iterator<Item = IpAddr> {
        self.bindings().into_iter().flat_map(|(_, ips)| ips)
    }

    /// Every MAC in `addresses`.
    pub fn macs(&self) -> impl Iterator<Item = MacAddress> {
        self.bindings().into_iter().filter_map(|(mac, _)| mac)
    }
}

/// Which `DHCP_Options` row: a Subnet's for one family, or one port's own (from its pod's
/// annotations). Its `external_ids` are Kube-OVN's: `ls`, `protocol`, and `port` for a port's own,
/// with portkeeper's vendor id.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DhcpScope {
    /// The logical switch (= Subnet name).
    pub switch: String,
    /// DHCPv4 or DHCPv6.
    pub family: Family,
    /// The port whose own row it is; `None` for the Subnet's.
    pub port: Option<String>,
}

impl DhcpScope {
    /// The row's `external_ids`.
    pub fn external_ids(&self) -> BTreeMap<String, String> {
        let mut map = BTreeMap::from([
            (ids::VENDOR.to_owned(), VENDOR.to_owned()),
            (ids::LS.to_owned(), self.switch.clone()),
            (ids::PROTOCOL.to_owned(), self.family.protocol().to_owned()),
        ]);
        if let Some(port) = &self.port {
            map.insert(ids::PORT.to_owned(), port.clone());
        }
        map
    }

    /// The scope a row's `external_ids` describe, if portkeeper made it.
    pub fn of(external_ids: &BTreeMap<String, String>) -> Option<Self> {
        if external_ids.get(ids::VENDOR).map(String::as_str) != Some(VENDOR) {
            return None;
        }
        let family = match external_ids.get(ids::PROTOCOL)?.as_str() {
            "IPv4" => Family::V4,
            "IPv6" => Family::V6,
            _ => return None,
        };
        Some(DhcpScope {
            switch: external_ids.get(ids::LS)?.clone(),
            family,
            port: external_ids.get(ids::PORT).cloned(),
        })
    }
}

/// A `DHCP_Options` row portkeeper made, as the Northbound cache has it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedDhcp {
    /// The row's UUID, which ports point at.
    pub uuid: String,
    /// Whose row it is.
    pub scope: DhcpScope,
    /// `cidr`.
    pub cidr: String,
    /// `options`.
    pub options: BTreeMap<String, String>,
}

/// The desired state of a `DHCP_Options` row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DhcpSpec {
    /// Whose row it is (one row per scope).
    pub scope: DhcpScope,
    /// `cidr`: the Subnet's block of the family.
    pub cidr: String,
    /// `options`.
    pub options: BTreeMap<String, String>,
}

/// The desired port of a nic. Applying it is idempotent by name; `options` (where live
/// migration keeps its state) are never touched by it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortSpec {
    /// `<pod>.<ns>[.<provider>]`.
    pub name: String,
    /// The logical switch (= Subnet name).
    pub switch: String,
    /// One entry `"MAC IP [IP]"`.
    pub addresses: String,
    /// `port_security`, set only on request.
    pub port_security: Option<String>,
    /// `external_ids`: vendor, pod, ls.
    pub external_ids: BTreeMap<String, String>,
}

/// The desired state of a Subnet's switch and its gateway on the cluster router.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SwitchSpec {
    /// Switch name (= Subnet name).
    pub name: String,
    /// The cluster logical router.
    pub router: String,
    /// Router port name, `<router>-<subnet>` as in Kube-OVN.
    pub router_port: String,
    /// Router port MAC (the gateway MAC).
    pub router_port_mac: MacAddress,
    /// Router port networks: `gateway/prefix` per family.
    pub networks: Vec<String>,
}

/// A Northbound write, named as the `nb_transaction_seconds` metric and errors name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NbOp {
    /// [`Northbound::ensure_switch`].
    EnsureSwitch,
    /// [`Northbound::upsert_port`].
    UpsertPort,
    /// [`Northbound::delete_port`].
    DeletePort,
    /// [`Northbound::delete_switch`].
    DeleteSwitch,
    /// [`Northbound::update_port_options`].
    UpdatePortOptions,
    /// [`Northbound::ensure_dhcp`].
    EnsureDhcp,
    /// [`Northbound::delete_dhcp`].
    DeleteDhcp,
    /// [`Northbound::link_dhcp`].
    LinkDhcp,
}

impl NbOp {
    /// The metric label and the name in error messages.
    pub fn as_str(self) -> &'static str {
        match self {
            NbOp::EnsureSwitch => "ensure_switch",
            NbOp::UpsertPort => "upsert_port",
            NbOp::DeletePort => "delete_port",
            NbOp::DeleteSwitch => "delete_switch",
            NbOp::UpdatePortOptions => "update_port_options",
            NbOp::EnsureDhcp => "ensure_dhcp",
            NbOp::DeleteDhcp => "delete_dhcp",
            NbOp::LinkDhcp => "link_dhcp",
        }
    }
}

impl std::fmt::Display for NbOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a Northbound write failed.
#[derive(Clone, Debug, thiserror::Error)]
pub enum NbFailure {
    /// The OVSDB session or the server refused (see the client error for whether to retry).
    #[error(transparent)]
    Ovsdb(#[from] ovsdb_client::Error),
    /// The port's logical switch is not in Northbound (its Subnet is not applied yet).
    #[error("logical switch {0} does not exist")]
    NoSwitch(String),
    /// This replica is not the leader (any more): it writes nothing.
    #[error(transparent)]
    NotLeading(#[from] crate::term::NotLeading),
    /// A `DHCP_Options` row written a moment ago is gone (deleted by another writer).
    #[error("the DHCP_Options row of {0:?} vanished after it was written")]
    Vanished(DhcpScope),
}

/// A Northbound write that failed: the operation, and why.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{op}: {source}")]
pub struct NbError {
    /// What was attempted.
    pub op: NbOp,
    /// Why it failed.
    #[source]
    pub source: NbFailure,
}

impl NbError {
    /// `op` failed for `source`.
    pub fn new(op: NbOp, source: impl Into<NbFailure>) -> Self {
        NbError {
            op,
            source: source.into(),
        }
    }
}

/// The controller's view of OVN Northbound: reads from a monitored cache, writes as transactions
/// confirmed by the raft leader.
pub trait Northbound: Send + Sync + 'static {
    /// True once the cache holds a full copy and the session is with the leader.
    fn ready(&self) -> bool;
    /// Every logical switch port, with its switch.
    fn ports(&self) -> Vec<ObservedPort>;
    /// One port by name.
    fn port(&self, name: &str) -> Option<ObservedPort>;
    /// The ports on one switch.
    fn ports_on_switch(&self, switch: &str) -> Vec<ObservedPort>;
    /// Names of the ports on `switch` whose addresses hold `ip`, sorted. What a claim checks
    /// for every address it is about to hand out, so implementations answer from an index.
    fn ip_holders(&self, switch: &str, ip: IpAddr) -> Vec<String> {
        let mut names: Vec<String> = self
            .ports_on_switch(switch)
            .into_iter()
            .filter(|p| p.ips().any(|held| held == ip))
            .map(|p| p.name)
            .collect();
        names.sort();
        names
    }
    /// Names of the ports on any switch whose addresses hold `mac`, sorted.
    fn mac_holders(&self, mac: MacAddress) -> Vec<String> {
        let mut names: Vec<String> = self
            .ports()
            .into_iter()
            .filter(|p| p.macs().any(|held| held == mac))
            .map(|p| p.name)
            .collect();
        names.sort();
        names
    }
    /// Names of the Subnets whose switch portkeeper made (the switch carries portkeeper's vendor
    /// id and the Subnet's name), whether or not the Subnet still exists.
    fn subnet_switches(&self) -> Vec<String>;
    /// The MAC of a logical router port, if it exists.
    fn router_port_mac(&self, name: &str) -> Option<MacAddress>;
    /// Creates or updates the switch, the cluster router, the router port and the switch's
    /// router-type port.
    fn ensure_switch(&self, spec: &SwitchSpec) -> impl Future<Output = Result<(), NbError>> + Send;
    /// Creates or updates a port; moves it if it sits on another switch.
    fn upsert_port(&self, spec: &PortSpec) -> impl Future<Output = Result<(), NbError>> + Send;
    /// Deletes a port if it exists.
    fn delete_port(&self, name: &str) -> impl Future<Output = Result<(), NbError>> + Send;
    /// Deletes a deleted Subnet's switch (with its ports) and its gateway port on `router`,
    /// each only if it carries portkeeper's vendor id; absent objects are fine.
    fn delete_switch(
        &self,
        name: &str,
        router: &str,
        router_port: &str,
    ) -> impl Future<Output = Result<(), NbError>> + Send;
    /// Sets and removes single keys of a port's `options`, leaving every other key as it is
    /// (live migration owns `requested-chassis` and `activation-strategy`). A missing port is
    /// left missing.
    fn update_port_options(
        &self,
        name: &str,
        set: &BTreeMap<String, String>,
        remove: &[String],
    ) -> impl Future<Output = Result<(), NbError>> + Send;
    /// The group commit's counters, when writes are grouped.
    fn group_stats(&self) -> Option<GroupStats> {
        None
    }
    /// Every `DHCP_Options` row portkeeper made.
    fn dhcp_rows(&self) -> Vec<ObservedDhcp>;
    /// Creates the row of `spec.scope` or updates its `cidr` and `options`; returns its UUID.
    fn ensure_dhcp(&self, spec: &DhcpSpec) -> impl Future<Output = Result<String, NbError>> + Send;
    /// Deletes `DHCP_Options` rows by UUID (ports pointing at them lose the pointer: the
    /// references are weak); absent rows are fine.
    fn delete_dhcp(&self, uuids: &[String]) -> impl Future<Output = Result<(), NbError>> + Send;
    /// Points a port's `dhcpv4_options` and `dhcpv6_options` at these rows (`None` clears). A
    /// missing port is left missing.
    fn link_dhcp(
        &self,
        port: &str,
        v4: Option<&str>,
        v6: Option<&str>,
    ) -> impl Future<Output = Result<(), NbError>> + Send;
}

/// The desired port of a nic.
pub fn port_spec(
    name: &str,
    switch: &str,
    pod_key: &str,
    addresses: String,
    port_security: bool,
) -> PortSpec {
    PortSpec {
        name: name.to_owned(),
        switch: switch.to_owned(),
        port_security: port_security.then(|| addresses.clone()),
        addresses,
        external_ids: BTreeMap::from([
            (ids::VENDOR.to_owned(), VENDOR.to_owned()),
            (ids::POD.to_owned(), pod_key.to_owned()),
            (ids::LS.to_owned(), switch.to_owned()),
        ]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bindings_skip_keywords_and_prefixes() {
        let port = ObservedPort {
            addresses: vec![
                "router".into(),
                "0a:00:00:00:00:01 10.0.0.5 fd00::5".into(),
                "unknown".into(),
            ],
            ..Default::default()
        };
        let ips: Vec<IpAddr> = port.ips().collect();
        assert_eq!(
            ips,
            vec![
                "10.0.0.5".parse::<IpAddr>().unwrap(),
                "fd00::5".parse().unwrap()
            ]
        );
        assert_eq!(port.macs().count(), 1);
        assert!(!port.is_ours());
    }

    #[test]
    fn port_spec_sets_security_only_on_request() {
        let p = port_spec(
            "a.b",
            "ls",
            "b/a",
            "0a:00:00:00:00:01 10.0.0.5".into(),
            false,
        );
        assert_eq!(p.port_security, None);
        assert_eq!(p.external_ids["vendor"], "portkeeper");
        assert_eq!(p.external_ids["pod"], "b/a");
        assert_eq!(p.external_ids["ls"], "ls");
        let p = port_spec(
            "a.b",
            "ls",
            "b/a",
            "0a:00:00:00:00:01 10.0.0.5".into(),
            true,
        );
        assert_eq!(
            p.port_security.as_deref(),
            Some("0a:00:00:00:00:01 10.0.0.5")
        );
    }
}
