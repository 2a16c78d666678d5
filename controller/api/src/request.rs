//! A pod's addressing request for one network, read from its annotations with the engine's
//! parsers, so that a value means the same here as in the engine and the CNI daemon.

use std::collections::BTreeMap;

use portkeeper_engine::{DualAddress, Family, IpPoolAnnotation, MacAddress, ParseError};
use thiserror::Error;

use crate::annotations::NetworkKeys;

/// How the nic's IP addresses are requested.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AddressRequest {
    /// No `ip_address` and no `ip_pool`: the subnet (or a namespace pool) picks.
    Any,
    /// `ip_address`: exactly these addresses.
    Static(DualAddress),
    /// `ip_pool`: a list of entries or an IPPool name.
    Pool(IpPoolAnnotation),
    /// `ip_pools` (portkeeper's extension): IPPool names in the order they are tried, once the
    /// pod is bound to a node; a pool whose node affinity does not admit the node is passed over.
    PoolList(Vec<String>),
}

/// Everything a pod asks for on one network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkRequest {
    /// The subnet named by `logical_switch`, if any.
    pub logical_switch: Option<String>,
    /// The IP request. `ip_address` wins over `ip_pool`, as in Kube-OVN, and `ip_pool` over
    /// `ip_pools`.
    pub addresses: AddressRequest,
    /// The MAC named by `mac_address`, if any.
    pub mac: Option<MacAddress>,
    /// The single family named by `ip_family`, if any.
    pub family: Option<Family>,
    /// Whether `port_security` is `"true"`.
    pub port_security: bool,
}

/// An annotation value that could not be used. The pod gets an `InvalidAnnotation` event naming
/// the key and the value, and nothing is allocated until it is fixed.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum AnnotationError {
    /// The value did not parse.
    #[error("annotation {key}={value:?} is invalid: {source}")]
    Invalid {
        /// The annotation key.
        key: String,
        /// The rejected value.
        value: String,
        /// Why.
        source: ParseError,
    },
    /// `ip_family` was not `ipv4` or `ipv6`.
    #[error("annotation {key}={value:?} is invalid: expected ipv4 or ipv6")]
    InvalidFamily {
        /// The annotation key.
        key: String,
        /// The rejected value.
        value: String,
    },
    /// `ip_family` names one family and `ip_address` holds another.
    #[error(
        "annotation {key}={value:?} has no {family} address but {family_key} asks for {family}"
    )]
    FamilyMismatch {
        /// The `ip_address` key.
        key: String,
        /// Its value.
        value: String,
        /// The `ip_family` key.
        family_key: String,
        /// The requested family.
        family: Family,
    },
    /// `logical_switch` was present but empty.
    #[error("annotation {key} is empty; name a Subnet or remove the annotation")]
    EmptySubnet {
        /// The annotation key.
        key: String,
    },
}

impl NetworkRequest {
    /// Reads the request of the network whose keys are `keys` from `annotations`.
    pub fn from_annotations(
        keys: &NetworkKeys,
        annotations: &BTreeMap<String, String>,
    ) -> Result<Self, AnnotationError> {
        fn get<'a, 'k>(
            annotations: &'a BTreeMap<String, String>,
            key: &'k str,
        ) -> Option<(&'k str, &'a str)> {
            annotations.get(key).map(|v| (key, v.as_str()))
        }
        let get = |key| get(annotations, key);
        let invalid = |key: &str, value: &str, source| AnnotationError::Invalid {
            key: key.to_owned(),
            value: value.to_owned(),
            source,
        };

        let logical_switch = match get(&keys.logical_switch) {
            None => None,
            Some((key, v)) if v.trim().is_empty() => {
                return Err(AnnotationError::EmptySubnet {
                    key: key.to_owned(),
                });
            }
            Some((_, v)) => Some(v.trim().to_owned()),
        };
        let family = match get(&keys.ip_family) {
            None => None,
            Some((key, v)) => Some(Family::from_annotation(v.trim()).ok_or_else(|| {
                AnnotationError::InvalidFamily {
                    key: key.to_owned(),
                    value: v.to_owned(),
                }
            })?),
        };
        let mac = match get(&keys.mac_address) {
            None => None,
            Some((key, v)) => Some(MacAddress::parse(v).map_err(|e| invalid(key, v, e.into()))?),
        };
        let addresses = if let Some((key, v)) = get(&keys.ip_address) {
            let parsed =
                portkeeper_engine::parse::parse_ip_address(v).map_err(|e| invalid(key, v, e))?;
            if let Some(f) = family
                && parsed.get(f).is_none()
            {
                return Err(AnnotationError::FamilyMismatch {
                    key: key.to_owned(),
                    value: v.to_owned(),
                    family_key: keys.ip_family.clone(),
                    family: f,
                });
            }
            AddressRequest::Static(parsed)
        } else if let Some((key, v)) = get(&keys.ip_pool) {
            AddressRequest::Pool(
                portkeeper_engine::parse::parse_ip_pool(v).map_err(|e| invalid(key, v, e))?,
            )
        } else if let Some((key, v)) = get(&keys.ip_pools) {
            AddressRequest::PoolList(
                portkeeper_engine::parse::parse_pool_list(v).map_err(|e| invalid(key, v, e))?,
            )
        } else {
            AddressRequest::Any
        };
        let port_security = get(&keys.port_security).is_some_and(|(_, v)| v.trim() == "true");

        Ok(Self {
            logical_switch,
            addresses,
            mac,
            family,
            port_security,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(pairs: &[(&str, &str)]) -> Result<NetworkRequest, AnnotationError> {
        let annotations = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        NetworkRequest::from_annotations(&NetworkKeys::primary(), &annotations)
    }

    #[test]
    fn no_annotations_is_any() {
        let r = read(&[]).unwrap();
        assert_eq!(r.addresses, AddressRequest::Any);
        assert_eq!(r.logical_switch, None);
        assert_eq!(r.mac, None);
        assert!(!r.port_security);
    }

    #[test]
    fn static_dual_stack_and_mac() {
        let r = read(&[
            ("ovn.kubernetes.io/ip_address", "10.16.0.5,fd00::5"),
            ("ovn.kubernetes.io/mac_address", "00:00:00:53:6B:B6"),
            ("ovn.kubernetes.io/logical_switch", "net1"),
            ("ovn.kubernetes.io/port_security", "true"),
        ])
        .unwrap();
        let AddressRequest::Static(a) = r.addresses else {
            panic!("static expected")
        };
        assert_eq!(a.v4, Some("10.16.0.5".parse().unwrap()));
        assert_eq!(a.v6, Some("fd00::5".parse().unwrap()));
        assert_eq!(r.mac.unwrap().to_string(), "00:00:00:53:6b:b6");
        assert_eq!(r.logical_switch.as_deref(), Some("net1"));
        assert!(r.port_security);
    }

    #[test]
    fn ip_address_wins_over_ip_pool() {
        let r = read(&[
            ("ovn.kubernetes.io/ip_address", "10.16.0.5"),
            ("ovn.kubernetes.io/ip_pool", "pool-a"),
        ])
        .unwrap();
        assert!(matches!(r.addresses, AddressRequest::Static(_)));
    }

    #[test]
    fn named_pool_and_list() {
        let r = read(&[("ovn.kubernetes.io/ip_pool", "pool-a")]).unwrap();
        assert_eq!(
            r.addresses,
            AddressRequest::Pool(IpPoolAnnotation::Named("pool-a".into()))
        );
        let r = read(&[("ovn.kubernetes.io/ip_pool", "10.0.0.1,10.0.0.2")]).unwrap();
        let AddressRequest::Pool(IpPoolAnnotation::List(l)) = r.addresses else {
            panic!()
        };
        assert_eq!(l.len(), 2);
    }

    #[test]
    fn pool_list_in_order_and_below_ip_pool() {
        let r = read(&[("ovn.kubernetes.io/ip_pools", "zone-b,zone-a")]).unwrap();
        assert_eq!(
            r.addresses,
            AddressRequest::PoolList(vec!["zone-b".into(), "zone-a".into()])
        );
        let r = read(&[
            ("ovn.kubernetes.io/ip_pool", "pool-a"),
            ("ovn.kubernetes.io/ip_pools", "zone-b"),
        ])
        .unwrap();
        assert!(matches!(r.addresses, AddressRequest::Pool(_)));
    }

    #[test]
    fn bad_values_name_key_and_value() {
        for (key, value) in [
            ("ovn.kubernetes.io/ip_address", "10.0.0.300"),
            ("ovn.kubernetes.io/mac_address", "zz:00:00:00:00:01"),
            ("ovn.kubernetes.io/mac_address", "01:00:5e:00:00:01"),
            ("ovn.kubernetes.io/mac_address", "ff:ff:ff:ff:ff:ff"),
            ("ovn.kubernetes.io/mac_address", "00:00:00:00:00:00"),
            ("ovn.kubernetes.io/ip_family", "IPv4"),
            ("ovn.kubernetes.io/ip_address", "10.0.0.1,10.0.0.2"),
            ("ovn.kubernetes.io/logical_switch", " "),
            ("ovn.kubernetes.io/ip_pools", "a,a"),
            ("ovn.kubernetes.io/ip_pools", "10.0.0.1"),
        ] {
            let err = read(&[(key, value)]).expect_err(value);
            let msg = err.to_string();
            assert!(msg.contains(key), "{msg} should name {key}");
        }
    }

    #[test]
    fn family_must_match_static_address() {
        let err = read(&[
            ("ovn.kubernetes.io/ip_address", "10.0.0.1"),
            ("ovn.kubernetes.io/ip_family", "ipv6"),
        ])
        .unwrap_err();
        assert!(matches!(
            err,
            AnnotationError::FamilyMismatch {
                family: Family::V6,
                ..
            }
        ));
    }
}
