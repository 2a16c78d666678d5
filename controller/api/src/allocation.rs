//! A nic's allocation as it travels on its pod: the controller writes it once the port and the IP
//! resource exist, the CNI daemon reads it to wire the interface. One type, one writer, one
//! reader, the engine's parsers, and the port-name rule, so the two sides cannot drift.
//!
//! Every key is per network ([`NetworkKeys`]): `ovn.kubernetes.io/...` on the default network,
//! `<provider>.kubernetes.io/...` on an attachment network (for example
//! `attachnet.default.ovn.kubernetes.io/ip_address`), as Kube-OVN writes them.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use portkeeper_engine::parse::{CidrBlock, parse_cidr_block, parse_ip_address};
use portkeeper_engine::{DualAddress, Family, MacAddress, NicKey};
use thiserror::Error;

use crate::annotations::NetworkKeys;
use crate::dns::PodDns;

/// The name of a nic's Logical_Switch_Port and IP resource, Kube-OVN's
/// `PodNameToPortName`: `<name>.<namespace>` on the default network,
/// `<name>.<namespace>.<provider>` on any other. `name` is the pod, or the VM for every
/// virt-launcher pod of a KubeVirt VM.
pub fn port_name(name: &str, namespace: &str, provider: &str) -> NicKey {
    NicKey::new(name, namespace, Some(provider))
}

/// What a pod carries for one network once its nic is allocated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allocation {
    /// The Subnet (and logical switch) the addresses come from (`logical_switch`).
    pub subnet: String,
    /// The nic's addresses, at most one per family (`ip_address`).
    pub addresses: DualAddress,
    /// The Subnet's CIDRs (`cidr`); each address lies in the one of its family.
    pub cidr: CidrBlock,
    /// The Subnet's gateway of each family (`gateway`); every family of `addresses` has one.
    pub gateway: DualAddress,
    /// The nic's MAC (`mac_address`).
    pub mac: MacAddress,
    /// Whether the port is wired for the pod's node (`routed`).
    pub routed: bool,
    /// The VM a virt-launcher pod runs (`virtualmachine`): its interface is the VM's port.
    pub virtual_machine: Option<String>,
    /// The Subnet's DNS settings for the CNI result (`dns`), when it has any.
    pub dns: Option<PodDns>,
}

/// An allocation annotation that cannot be used. Names the key and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("annotation {key} {problem}")]
pub struct AllocationError {
    /// The annotation key.
    pub key: String,
    /// What is wrong with its value.
    pub problem: String,
}

impl Allocation {
    /// The annotations that publish it, `allocated=true` among them: written in one patch, so
    /// a reader never sees `allocated` without the rest.
    pub fn to_annotations(&self, keys: &NetworkKeys) -> BTreeMap<String, String> {
        let mut out = BTreeMap::from([
            (keys.allocated.clone(), "true".to_owned()),
            (keys.ip_address.clone(), self.addresses.to_string()),
            (keys.cidr.clone(), self.cidr.to_string()),
            (keys.gateway.clone(), self.gateway.to_string()),
            (keys.logical_switch.clone(), self.subnet.clone()),
            (keys.mac_address.clone(), self.mac.to_string()),
        ]);
        if self.routed {
            out.insert(keys.routed.clone(), "true".to_owned());
        }
        if let Some(vm) = &self.virtual_machine {
            out.insert(keys.virtual_machine.clone(), vm.clone());
        }
        if let Some(dns) = &self.dns {
            out.insert(keys.dns.clone(), dns.to_annotation());
        }
        out
    }

    /// Reads the allocation of `keys`' network: `Ok(None)` until `allocated` is `"true"`, then
    /// every value must be present and parse, each address must lie in its family's CIDR and
    /// have a gateway of its family.
    pub fn from_annotations(
        keys: &NetworkKeys,
        annotations: &BTreeMap<String, String>,
    ) -> Result<Option<Allocation>, AllocationError> {
        if annotations.get(&keys.allocated).map(String::as_str) != Some("true") {
            return Ok(None);
        }
        let get = |key: &String| {
            annotations
                .get(key)
                .filter(|v| !v.trim().is_empty())
                .ok_or_else(|| problem(key, "is missing although allocated is true".into()))
        };
        let addresses = parsed(&keys.ip_address, parse_ip_address(get(&keys.ip_address)?))?;
        let cidr = parsed(&keys.cidr, parse_cidr_block(get(&keys.cidr)?))?;
        let gateway = parsed(&keys.gateway, parse_ip_address(get(&keys.gateway)?))?;
        let mac = parsed(
            &keys.mac_address,
            MacAddress::parse(get(&keys.mac_address)?),
        )?;
        let subnet = get(&keys.logical_switch)?.clone();
        for ip in addresses.addresses() {
            let family = Family::of(ip);
            let net = cidr.get(family).ok_or_else(|| {
                problem(&keys.cidr, format!("has no subnet of the family of {ip}"))
            })?;
            if !net.contains(&ip) {
                return Err(problem(
                    &keys.ip_address,
                    format!("{ip} is outside the subnet {net}"),
                ));
            }
            if gateway.get(family).is_none() {
                return Err(problem(
                    &keys.gateway,
                    format!("has no gateway of the family of {ip}"),
                ));
            }
        }
        Ok(Some(Allocation {
            subnet,
            addresses,
            cidr,
            gateway,
            mac,
            routed: annotations.get(&keys.routed).map(String::as_str) == Some("true"),
            virtual_machine: annotations
                .get(&keys.virtual_machine)
                .filter(|v| !v.is_empty())
                .cloned(),
            dns: annotations
                .get(&keys.dns)
                .map(|v| parsed(&keys.dns, PodDns::from_annotation(v)))
                .transpose()?,
        }))
    }

    /// Each address with the prefix length of its subnet, v4 first.
    pub fn networks(&self) -> Vec<IpNet> {
        self.addresses
            .addresses()
            .filter_map(|ip| {
                let net = self.cidr.get(Family::of(ip))?;
                IpNet::new(ip, net.prefix_len()).ok()
            })
            .collect()
    }

    /// The gateway of each family the nic has an address of, v4 first.
    pub fn gateways(&self) -> Vec<IpAddr> {
        self.addresses
            .addresses()
            .filter_map(|ip| self.gateway.get(Family::of(ip)))
            .collect()
    }

    /// The port the pod `pod` of `namespace` plugs into on `keys`' network: the VM's port for a
    /// virt-launcher pod, else the pod's own.
    pub fn port_name(&self, keys: &NetworkKeys, pod: &str, namespace: &str) -> NicKey {
        let name = self.virtual_machine.as_deref().unwrap_or(pod);
        port_name(name, namespace, &keys.provider)
    }
}

fn parsed<T, E: std::fmt::Display>(key: &str, result: Result<T, E>) -> Result<T, AllocationError> {
    result.map_err(|e| problem(key, format!("is invalid: {e}")))
}

fn problem(key: &str, problem: String) -> AllocationError {
    AllocationError {
        key: key.to_owned(),
        problem,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn annotations(keys: &NetworkKeys, pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    format!("{}.kubernetes.io/{k}", keys.provider),
                    v.to_string(),
                )
            })
            .collect()
    }

    fn dual() -> Vec<(&'static str, &'static str)> {
        vec![
            ("allocated", "true"),
            ("ip_address", "10.16.0.15,fd00:10:16::f"),
            ("mac_address", "00:00:00:53:6b:b6"),
            ("cidr", "10.16.0.0/16,fd00:10:16::/64"),
            ("gateway", "10.16.0.1,fd00:10:16::1"),
            ("logical_switch", "ovn-default"),
        ]
    }

    #[test]
    fn nothing_until_allocated() {
        let keys = NetworkKeys::primary();
        assert_eq!(
            Allocation::from_annotations(&keys, &BTreeMap::new()),
            Ok(None)
        );
        let pending = annotations(&keys, &[("allocated", "false"), ("ip_address", "x")]);
        assert_eq!(Allocation::from_annotations(&keys, &pending), Ok(None));
    }

    #[test]
    fn dual_stack_reads_with_prefixes_and_gateways() {
        let keys = NetworkKeys::primary();
        let a = Allocation::from_annotations(&keys, &annotations(&keys, &dual()))
            .unwrap()
            .unwrap();
        assert_eq!(
            a.networks(),
            vec![
                "10.16.0.15/16".parse::<IpNet>().unwrap(),
                "fd00:10:16::f/64".parse().unwrap()
            ]
        );
        assert_eq!(
            a.gateways(),
            vec![
                "10.16.0.1".parse::<IpAddr>().unwrap(),
                "fd00:10:16::1".parse().unwrap()
            ]
        );
        assert_eq!(a.mac.to_string(), "00:00:00:53:6b:b6");
        assert_eq!(
            a.port_name(&keys, "web-0", "default").as_str(),
            "web-0.default"
        );
    }

    #[test]
    fn a_single_family_nic_on_a_dual_subnet_uses_only_its_family() {
        let keys = NetworkKeys::primary();
        let mut pairs = dual();
        pairs[1] = ("ip_address", "fd00:10:16::f");
        let a = Allocation::from_annotations(&keys, &annotations(&keys, &pairs))
            .unwrap()
            .unwrap();
        assert_eq!(a.networks().len(), 1);
        assert_eq!(
            a.gateways(),
            vec!["fd00:10:16::1".parse::<IpAddr>().unwrap()]
        );
    }

    #[test]
    fn launcher_pods_plug_into_the_vm_port_and_providers_get_their_own_keys_and_ports() {
        let keys = NetworkKeys::for_provider("attachnet.default.ovn");
        let mut pairs = dual();
        pairs.push(("virtualmachine", "vm1"));
        let written = annotations(&keys, &pairs);
        assert!(written.contains_key("attachnet.default.ovn.kubernetes.io/ip_address"));
        let a = Allocation::from_annotations(&keys, &written)
            .unwrap()
            .unwrap();
        assert_eq!(
            a.port_name(&keys, "virt-launcher-vm1-x", "default")
                .as_str(),
            "vm1.default.attachnet.default.ovn"
        );
        assert_eq!(
            Allocation::from_annotations(&NetworkKeys::primary(), &written),
            Ok(None),
            "another network's keys are not this network's"
        );
    }

    #[test]
    fn malformed_allocations_name_the_key() {
        let keys = NetworkKeys::primary();
        let cases = [
            ("ip_address", "10.16.0.300"),
            ("ip_address", ""),
            ("ip_address", "10.17.0.1"),
            ("ip_address", "10.16.0.2,10.16.0.3"),
            ("mac_address", "zz:00:00:00:00:00"),
            ("mac_address", "01:00:5e:00:00:01"),
            ("cidr", "10.16.0.0/16"),
            ("cidr", "10.16.0.0/99,fd00:10:16::/64"),
            ("gateway", "10.16.0.1"),
            ("logical_switch", ""),
            ("dns", "{\"nameservers\":[\"ns1\"]}"),
        ];
        for (key, value) in cases {
            let mut pairs = dual();
            pairs.retain(|(k, _)| *k != key);
            pairs.push((key, value));
            let err = Allocation::from_annotations(&keys, &annotations(&keys, &pairs)).unwrap_err();
            assert_eq!(
                err.key,
                format!("ovn.kubernetes.io/{key}"),
                "{key}={value}: {err}"
            );
        }
    }

    fn allocation() -> impl Strategy<Value = Allocation> {
        (
            prop::option::of((any::<u32>(), 8u8..31)),
            prop::option::of((any::<u128>(), 64u8..127)),
            any::<[u8; 6]>(),
            any::<bool>(),
            prop::option::of("[a-z][a-z0-9-]{0,20}"),
            prop::option::of((
                prop::collection::vec(any::<IpAddr>(), 0..3),
                prop::collection::vec("[a-z0-9.-]{1,12}", 0..3),
                any::<bool>(),
            )),
        )
            .prop_filter("a nic has an address", |(v4, v6, ..)| {
                v4.is_some() || v6.is_some()
            })
            .prop_map(|(v4, v6, mac, routed, vm, dns)| {
                let mut addresses = DualAddress::default();
                let mut gateway = DualAddress::default();
                let mut cidr = CidrBlock::default();
                if let Some((bits, prefix)) = v4 {
                    let net = ipnet::Ipv4Net::new(bits.into(), prefix).unwrap().trunc();
                    cidr.v4 = Some(net);
                    addresses.v4 = Some(bits.into());
                    gateway.v4 = Some(net.network());
                }
                if let Some((bits, prefix)) = v6 {
                    let net = ipnet::Ipv6Net::new(bits.into(), prefix).unwrap().trunc();
                    cidr.v6 = Some(net);
                    addresses.v6 = Some(bits.into());
                    gateway.v6 = Some(net.network());
                }
                let mut octets = mac;
                octets[0] = (octets[0] | 0x02) & !0x01;
                octets[5] |= 1;
                Allocation {
                    subnet: "net1".into(),
                    addresses,
                    cidr,
                    gateway,
                    mac: MacAddress::parse(&octets.map(|o| format!("{o:02x}")).join(":")).unwrap(),
                    routed,
                    virtual_machine: vm,
                    dns: dns.map(|(nameservers, search, from_node)| PodDns {
                        dns: crate::dns::Dns {
                            nameservers,
                            search,
                            ..Default::default()
                        },
                        from_node,
                    }),
                }
            })
    }

    proptest! {
        /// What the controller writes is exactly what the CNI daemon reads, on any network.
        #[test]
        fn written_allocations_read_back_unchanged(
            a in allocation(),
            provider in prop_oneof![Just("ovn".to_owned()), "[a-z]{1,8}\\.[a-z]{1,8}\\.ovn"],
        ) {
            let keys = NetworkKeys::for_provider(&provider);
            let read = Allocation::from_annotations(&keys, &a.to_annotations(&keys));
            prop_assert_eq!(read, Ok(Some(a)));
        }
    }
}
