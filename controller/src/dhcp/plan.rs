//! The pure half of OVN DHCP: from a Subnet's spec, a port's pod annotations and the rows
//! already in Northbound to the `DHCP_Options` rows that should exist and the rows each port
//! points at. Kube-OVN's rules:
//!
//! - A Subnet with `enableDHCP` has one row per family of its CIDR block, with the options of
//!   `dhcpV4Options` / `dhcpV6Options` and Kube-OVN's defaults for what they leave out (the
//!   gateway as `router`, the Subnet's MTU, a server MAC of the row's own).
//! - A pod's `dhcp-v4-options` / `dhcp-v6-options` replace the Subnet's options for its port, with
//!   rows of the port's own, also where the Subnet has DHCP off.
//! - A port points only at rows of the families it has an address of.
//!
//! A row keeps its server MAC (v4 `server_mac`, v6 `server_id`) for life, so clients see the
//! same server across controller restarts and option changes.

use std::collections::{BTreeSet, HashSet};

use portkeeper_api::Subnet;
use portkeeper_api::dhcp::{self, DEFAULT_MTU, DhcpOptionsError, Family};

use crate::ovn::{DhcpScope, DhcpSpec, ObservedDhcp, ObservedPort};
use crate::plan::SubnetNetwork;

/// What a Subnet gives DHCP.
#[derive(Clone, Debug, PartialEq)]
pub struct SubnetDhcp {
    /// The switch (= Subnet name).
    pub switch: String,
    /// Its blocks and gateways.
    pub network: SubnetNetwork,
    /// `enableDHCP`.
    pub enabled: bool,
    /// `dhcpV4Options`.
    pub v4: String,
    /// `dhcpV6Options`.
    pub v6: String,
    /// The MTU offered: `spec.mtu`, else [`DEFAULT_MTU`].
    pub mtu: u32,
}

impl SubnetDhcp {
    /// The DHCP side of a Subnet whose network is `network`.
    pub fn of(subnet: &Subnet, network: SubnetNetwork) -> Self {
        let spec = &subnet.spec;
        SubnetDhcp {
            switch: subnet.metadata.name.clone().unwrap_or_default(),
            network,
            enabled: spec.enable_dhcp,
            v4: spec.dhcp_v4_options.clone(),
            v6: spec.dhcp_v6_options.clone(),
            mtu: if spec.mtu > 0 { spec.mtu } else { DEFAULT_MTU },
        }
    }

    /// The Subnet's own rows: one per family of its block with DHCP on, none with it off.
    pub fn rows(
        &self,
        existing: &[ObservedDhcp],
        new_mac: &mut impl FnMut() -> String,
    ) -> Result<Vec<DhcpSpec>, DhcpOptionsError> {
        if !self.enabled {
            return Ok(Vec::new());
        }
        self.build(None, [Some(&self.v4), Some(&self.v6)], existing, new_mac)
    }

    /// The rows of `port`'s own from its pod's options texts (v4, v6): one per family whose
    /// text is given and not empty, and which the block has.
    pub fn port_rows(
        &self,
        port: &str,
        texts: [Option<&str>; 2],
        existing: &[ObservedDhcp],
        new_mac: &mut impl FnMut() -> String,
    ) -> Result<Vec<DhcpSpec>, DhcpOptionsError> {
        let given = texts.map(|t| t.filter(|t| !t.trim().is_empty()));
        self.build(Some(port), given, existing, new_mac)
    }

    fn build(
        &self,
        port: Option<&str>,
        texts: [Option<&str>; 2],
        existing: &[ObservedDhcp],
        new_mac: &mut impl FnMut() -> String,
    ) -> Result<Vec<DhcpSpec>, DhcpOptionsError> {
        let mut rows = Vec::new();
        for (family, text) in [Family::V4, Family::V6].into_iter().zip(texts) {
            let (Some(text), Some(cidr)) = (text, self.cidr(family)) else {
                continue;
            };
            let given = dhcp::parse(family, text)?;
            let scope = DhcpScope {
                switch: self.switch.clone(),
                family,
                port: port.map(str::to_owned),
            };
            let mac_key = match family {
                Family::V4 => "server_mac",
                Family::V6 => "server_id",
            };
            let mac = existing
                .iter()
                .find(|r| r.scope == scope)
                .and_then(|r| r.options.get(mac_key).cloned())
                .unwrap_or_else(&mut *new_mac);
            let options = match family {
                Family::V4 => dhcp::v4_options(&given, self.network.gateway.v4, &mac, self.mtu),
                Family::V6 => dhcp::v6_options(&given, &mac),
            };
            rows.push(DhcpSpec {
                scope,
                cidr,
                options,
            });
        }
        Ok(rows)
    }

    fn cidr(&self, family: Family) -> Option<String> {
        match family {
            Family::V4 => self.network.block.v4.map(|n| n.to_string()),
            Family::V6 => self.network.block.v6.map(|n| n.to_string()),
        }
    }
}

/// The rows a port points at, by family.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Links {
    /// `dhcpv4_options`.
    pub v4: Option<DhcpScope>,
    /// `dhcpv6_options`.
    pub v6: Option<DhcpScope>,
}

/// Which row of each family `port` points at: the port's own among `own`, else the Subnet's
/// among `subnet`, and only for the families it has an address of.
pub fn links(port: &ObservedPort, own: &[DhcpScope], subnet: &[DhcpScope]) -> Links {
    let has = |family: Family| {
        port.ips().any(|ip| match family {
            Family::V4 => ip.is_ipv4(),
            Family::V6 => ip.is_ipv6(),
        })
    };
    let pick = |family: Family| {
        has(family)
            .then(|| {
                own.iter()
                    .chain(subnet)
                    .find(|s| s.family == family)
                    .cloned()
            })
            .flatten()
    };
    Links {
        v4: pick(Family::V4),
        v6: pick(Family::V6),
    }
}

/// The UUIDs of the rows in `existing` that `belongs` claims for this decision and `wanted` no
/// longer has.
pub fn stale(
    existing: &[ObservedDhcp],
    belongs: impl Fn(&DhcpScope) -> bool,
    wanted: &[DhcpSpec],
) -> Vec<String> {
    let kept: BTreeSet<&DhcpScope> = wanted.iter().map(|w| &w.scope).collect();
    existing
        .iter()
        .filter(|r| belongs(&r.scope) && !kept.contains(&r.scope))
        .map(|r| r.uuid.clone())
        .collect()
}

/// The UUIDs of rows nothing can use any more: a Subnet's whose switch is not among
/// `switches`, and a port's own whose port is gone or sits on another switch now
/// (`switch_of` says where a port is).
pub fn orphans(
    existing: &[ObservedDhcp],
    switches: &HashSet<String>,
    switch_of: impl Fn(&str) -> Option<String>,
) -> Vec<String> {
    existing
        .iter()
        .filter(|r| match &r.scope.port {
            None => !switches.contains(&r.scope.switch),
            Some(port) => switch_of(port).as_ref() != Some(&r.scope.switch),
        })
        .map(|r| r.uuid.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use portkeeper_api::SubnetSpec;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn subnet(cidr: &str, enabled: bool, v4: &str, v6: &str, mtu: u32) -> SubnetDhcp {
        let subnet = Subnet::new(
            "vmnet",
            SubnetSpec {
                cidr_block: cidr.into(),
                enable_dhcp: enabled,
                dhcp_v4_options: v4.into(),
                dhcp_v6_options: v6.into(),
                mtu,
                ..Default::default()
            },
        );
        SubnetDhcp::of(&subnet, SubnetNetwork::of(&subnet).unwrap())
    }

    fn macs() -> impl FnMut() -> String {
        let mut n = 0;
        move || {
            n += 1;
            format!("0a:00:00:00:00:{n:02x}")
        }
    }

    fn observed(spec: &DhcpSpec, uuid: &str) -> ObservedDhcp {
        ObservedDhcp {
            uuid: uuid.into(),
            scope: spec.scope.clone(),
            cidr: spec.cidr.clone(),
            options: spec.options.clone(),
        }
    }

    fn port(name: &str, addresses: &str) -> ObservedPort {
        ObservedPort {
            name: name.into(),
            switch: "vmnet".into(),
            addresses: vec![addresses.into()],
            ..Default::default()
        }
    }

    fn scope(family: Family, port: Option<&str>) -> DhcpScope {
        DhcpScope {
            switch: "vmnet".into(),
            family,
            port: port.map(str::to_owned),
        }
    }

    #[test]
    fn a_subnet_with_dhcp_has_a_row_per_family_with_kube_ovns_defaults() {
        let s = subnet(
            "10.17.0.0/16,fd00:17::/64",
            true,
            "dns_server=10.96.0.10",
            "",
            0,
        );
        let rows = s.rows(&[], &mut macs()).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].scope, scope(Family::V4, None));
        assert_eq!(rows[0].cidr, "10.17.0.0/16");
        assert_eq!(
            rows[0].options,
            BTreeMap::from([
                ("dns_server".to_owned(), "10.96.0.10".to_owned()),
                ("lease_time".to_owned(), "3600".to_owned()),
                ("mtu".to_owned(), "1400".to_owned()),
                ("router".to_owned(), "10.17.0.1".to_owned()),
                ("server_id".to_owned(), "169.254.0.254".to_owned()),
                ("server_mac".to_owned(), "0a:00:00:00:00:01".to_owned()),
            ])
        );
        assert_eq!(rows[1].cidr, "fd00:17::/64");
        assert_eq!(rows[1].options["server_id"], "0a:00:00:00:00:02");
        assert_eq!(
            subnet("10.17.0.0/16", false, "", "", 0)
                .rows(&[], &mut macs())
                .unwrap(),
            vec![]
        );
    }

    #[test]
    fn the_subnet_mtu_is_offered_and_a_row_keeps_its_server_mac() {
        let s = subnet("10.17.0.0/16", true, "", "", 1300);
        let first = s.rows(&[], &mut macs()).unwrap();
        assert_eq!(first[0].options["mtu"], "1300");
        let existing = [observed(&first[0], "u1")];
        let changed = subnet("10.17.0.0/16", true, "lease_time=60", "", 1300);
        let mut other = || "0a:ff:ff:ff:ff:ff".to_owned();
        let again = changed.rows(&existing, &mut other).unwrap();
        assert_eq!(again[0].options["server_mac"], "0a:00:00:00:00:01");
        assert_eq!(again[0].options["lease_time"], "60");
    }

    #[test]
    fn a_bad_option_refuses_the_whole_decision() {
        let s = subnet("10.17.0.0/16", true, "leasetime=60", "", 0);
        assert!(matches!(
            s.rows(&[], &mut macs()),
            Err(DhcpOptionsError::Unknown { .. })
        ));
    }

    #[test]
    fn a_port_has_rows_of_its_own_only_for_given_families_of_the_block() {
        let s = subnet("10.17.0.0/16", false, "", "", 0);
        let rows = s
            .port_rows(
                "vm.ns",
                [Some("dns_server=10.0.0.53"), Some("dns_server=fd00::53")],
                &[],
                &mut macs(),
            )
            .unwrap();
        assert_eq!(rows.len(), 1, "no IPv6 block, no v6 row");
        assert_eq!(rows[0].scope, scope(Family::V4, Some("vm.ns")));
        assert_eq!(rows[0].options["dns_server"], "10.0.0.53");
        assert_eq!(
            s.port_rows("vm.ns", [Some("  "), None], &[], &mut macs())
                .unwrap(),
            vec![]
        );
    }

    #[test]
    fn links_prefer_the_ports_own_rows_and_follow_its_families() {
        let subnet_rows = [scope(Family::V4, None), scope(Family::V6, None)];
        let own = [scope(Family::V4, Some("a.ns"))];
        let dual = port("a.ns", "0a:00:00:00:00:01 10.17.0.5 fd00:17::5");
        assert_eq!(
            links(&dual, &own, &subnet_rows),
            Links {
                v4: Some(own[0].clone()),
                v6: Some(subnet_rows[1].clone()),
            }
        );
        let v4_only = port("b.ns", "0a:00:00:00:00:02 10.17.0.6");
        assert_eq!(
            links(&v4_only, &[], &subnet_rows),
            Links {
                v4: Some(subnet_rows[0].clone()),
                v6: None,
            }
        );
        assert_eq!(links(&v4_only, &[], &[]), Links::default());
    }

    #[test]
    fn stale_and_orphan_rows() {
        let s = subnet("10.17.0.0/16,fd00:17::/64", true, "", "", 0);
        let both = s.rows(&[], &mut macs()).unwrap();
        let existing = [observed(&both[0], "u4"), observed(&both[1], "u6")];
        let v4_only = subnet("10.17.0.0/16", true, "", "", 0)
            .rows(&existing, &mut macs())
            .unwrap();
        let mine = |s: &DhcpScope| s.switch == "vmnet" && s.port.is_none();
        assert_eq!(stale(&existing, mine, &v4_only), vec!["u6".to_owned()]);
        assert_eq!(stale(&existing, mine, &both), Vec::<String>::new());

        let own = ObservedDhcp {
            uuid: "p4".into(),
            scope: scope(Family::V4, Some("a.ns")),
            cidr: "10.17.0.0/16".into(),
            options: BTreeMap::new(),
        };
        let all = [existing[0].clone(), own];
        let switches = HashSet::from(["vmnet".to_owned()]);
        let on = |switch: &'static str| move |port: &str| (port == "a.ns").then(|| switch.into());
        assert_eq!(orphans(&all, &switches, on("vmnet")), Vec::<String>::new());
        assert_eq!(orphans(&all, &switches, |_| None), vec!["p4".to_owned()]);
        assert_eq!(orphans(&all, &switches, on("other")), vec!["p4".to_owned()]);
        assert_eq!(
            orphans(&all, &HashSet::new(), on("vmnet")),
            vec!["u4".to_owned()]
        );
    }

    proptest! {
        /// Applying a decision and deciding again changes nothing: the rows' options (server
        /// MACs included) are a fixed point, and nothing is stale.
        #[test]
        fn deciding_twice_is_a_fixed_point(
            enabled in any::<bool>(),
            dual in any::<bool>(),
            lease in proptest::option::of(1u32..100_000),
            mtu in 0u32..9000,
        ) {
            let cidr = if dual { "10.17.0.0/16,fd00:17::/64" } else { "10.17.0.0/16" };
            let v4 = lease.map(|l| format!("lease_time={l}")).unwrap_or_default();
            let s = subnet(cidr, enabled, &v4, "", mtu);
            let first = s.rows(&[], &mut macs()).unwrap();
            let existing: Vec<ObservedDhcp> = first
                .iter()
                .enumerate()
                .map(|(i, r)| observed(r, &format!("u{i}")))
                .collect();
            let mut unused = || "0a:ff:ff:ff:ff:ff".to_owned();
            let second = s.rows(&existing, &mut unused).unwrap();
            prop_assert_eq!(&second, &first);
            let mine = |sc: &DhcpScope| sc.port.is_none();
            prop_assert!(stale(&existing, mine, &second).is_empty());
        }
    }
}
