//! DNS settings a Subnet hands its pods (portkeeper's extension; Kube-OVN has none): the
//! Subnet's `spec.dns`, the pod annotation that carries them to the CNI daemon, and a node's
//! `resolv.conf` read as kube-ipam reads it (its `resolvConf` option) to fill what the Subnet
//! leaves empty. The CNI daemon puts the result into the CNI result's `dns`.

use std::net::IpAddr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// A Subnet's `spec.dns`: what the CNI result's `dns` carries for the subnet's pods.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SubnetDns {
    /// Name server addresses, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    /// The local domain name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub domain: String,
    /// Search domains, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    /// Resolver options (`ndots:5`, `edns0`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
    /// Take every setting left empty here from the `resolv.conf` of the node the pod runs on
    /// (the daemon's `--node-resolv-conf`), as kube-ipam's `resolvConf` does.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub from_node: bool,
}

/// Validated resolver settings: the CNI result's `dns`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dns {
    /// Name servers, in order.
    pub nameservers: Vec<IpAddr>,
    /// The local domain.
    pub domain: Option<String>,
    /// Search domains, in order.
    pub search: Vec<String>,
    /// Resolver options.
    pub options: Vec<String>,
}

/// A pod's DNS as its allocation carries it: the Subnet's settings, and whether the node's
/// `resolv.conf` fills the gaps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodDns {
    /// The Subnet's own settings.
    pub dns: Dns,
    /// Fill what `dns` leaves empty from the node's `resolv.conf`.
    pub from_node: bool,
}

/// A DNS setting that cannot be used; names the field and the value.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum DnsError {
    /// A name server that is not an IP address.
    #[error("dns nameserver {0:?} is not an IP address")]
    Nameserver(String),
    /// A domain (search entry or `domain`) that is empty, too long or holds blanks.
    #[error("dns domain {0:?} is not a domain name (1 to 253 characters, no blanks)")]
    Domain(String),
    /// An option that is empty or holds blanks.
    #[error("dns option {0:?} is not a resolver option (one word such as ndots:5)")]
    Option(String),
    /// The annotation is not the JSON of a Subnet's `dns`.
    #[error("dns annotation is not valid JSON of a Subnet's spec.dns: {0}")]
    Json(String),
}

impl SubnetDns {
    /// The settings, validated.
    pub fn validate(&self) -> Result<PodDns, DnsError> {
        let nameservers = self
            .nameservers
            .iter()
            .map(|n| {
                n.trim()
                    .parse::<IpAddr>()
                    .map_err(|_| DnsError::Nameserver(n.clone()))
            })
            .collect::<Result<_, _>>()?;
        let domain = if self.domain.is_empty() {
            None
        } else {
            Some(domain_name(&self.domain)?)
        };
        let search = self
            .search
            .iter()
            .map(|d| domain_name(d))
            .collect::<Result<_, _>>()?;
        let options = self
            .options
            .iter()
            .map(|o| {
                if o.is_empty() || o.chars().any(char::is_whitespace) {
                    Err(DnsError::Option(o.clone()))
                } else {
                    Ok(o.clone())
                }
            })
            .collect::<Result<_, _>>()?;
        Ok(PodDns {
            dns: Dns {
                nameservers,
                domain,
                search,
                options,
            },
            from_node: self.from_node,
        })
    }
}

fn domain_name(text: &str) -> Result<String, DnsError> {
    if text.is_empty() || text.len() > 253 || text.chars().any(char::is_whitespace) {
        return Err(DnsError::Domain(text.to_owned()));
    }
    Ok(text.to_owned())
}

impl PodDns {
    /// The annotation value: the Subnet's `dns` as JSON.
    pub fn to_annotation(&self) -> String {
        let spec = SubnetDns {
            nameservers: self
                .dns
                .nameservers
                .iter()
                .map(ToString::to_string)
                .collect(),
            domain: self.dns.domain.clone().unwrap_or_default(),
            search: self.dns.search.clone(),
            options: self.dns.options.clone(),
            from_node: self.from_node,
        };
        serde_json::to_string(&spec).expect("plain strings serialise")
    }

    /// Reads the annotation value, validated as the Subnet's field is.
    pub fn from_annotation(text: &str) -> Result<PodDns, DnsError> {
        let spec: SubnetDns =
            serde_json::from_str(text).map_err(|e| DnsError::Json(e.to_string()))?;
        spec.validate()
    }

    /// The settings the pod gets on a node whose `resolv.conf` reads `node`: each setting the
    /// Subnet leaves empty comes from the node when `from_node` is set.
    pub fn on_node(&self, node: Option<&Dns>) -> Dns {
        let mut out = self.dns.clone();
        let Some(node) = node.filter(|_| self.from_node) else {
            return out;
        };
        if out.nameservers.is_empty() {
            out.nameservers = node.nameservers.clone();
        }
        if out.domain.is_none() {
            out.domain = node.domain.clone();
        }
        if out.search.is_empty() {
            out.search = node.search.clone();
        }
        if out.options.is_empty() {
            out.options = node.options.clone();
        }
        out
    }
}

/// Reads a `resolv.conf` as the resolver does: `nameserver` lines in order (an entry that is not
/// an IP address is skipped), the last `domain` and the last `search` line, every `options`
/// word; comments (`#`, `;`) and other lines are ignored.
pub fn parse_resolv_conf(text: &str) -> Dns {
    let mut out = Dns::default();
    for line in text.lines() {
        let line = line.split(['#', ';']).next().unwrap_or_default();
        let mut words = line.split_whitespace();
        let Some(keyword) = words.next() else {
            continue;
        };
        match keyword {
            "nameserver" => {
                if let Some(ip) = words.next().and_then(|w| w.parse().ok()) {
                    out.nameservers.push(ip);
                }
            }
            "domain" => {
                out.domain = words.next().and_then(|d| domain_name(d).ok());
                out.search.clear();
            }
            "search" => {
                out.search = words.filter_map(|d| domain_name(d).ok()).collect();
                out.domain = None;
            }
            "options" => out.options.extend(words.map(str::to_owned)),
            _ => {}
        }
    }
    out
}

impl Dns {
    /// Whether nothing is set.
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.is_none()
            && self.search.is_empty()
            && self.options.is_empty()
    }

    /// The settings as a `resolv.conf`, which [`parse_resolv_conf`] reads back unchanged.
    pub fn to_resolv_conf(&self) -> String {
        let mut out = String::new();
        for n in &self.nameservers {
            out.push_str(&format!("nameserver {n}\n"));
        }
        if let Some(d) = &self.domain
            && self.search.is_empty()
        {
            out.push_str(&format!("domain {d}\n"));
        }
        if !self.search.is_empty() {
            out.push_str(&format!("search {}\n", self.search.join(" ")));
        }
        if !self.options.is_empty() {
            out.push_str(&format!("options {}\n", self.options.join(" ")));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_subnet_dns_travels_through_its_annotation() {
        let spec = SubnetDns {
            nameservers: vec!["10.96.0.10".into(), "fd00::a".into()],
            domain: String::new(),
            search: vec!["svc.cluster.local".into()],
            options: vec!["ndots:5".into()],
            from_node: true,
        };
        let dns = spec.validate().unwrap();
        assert_eq!(
            dns.to_annotation(),
            r#"{"nameservers":["10.96.0.10","fd00::a"],"search":["svc.cluster.local"],"options":["ndots:5"],"fromNode":true}"#
        );
        assert_eq!(PodDns::from_annotation(&dns.to_annotation()), Ok(dns));
    }

    #[test]
    fn bad_settings_name_the_value() {
        for (spec, expected) in [
            (
                SubnetDns {
                    nameservers: vec!["dns.example".into()],
                    ..Default::default()
                },
                "\"dns.example\" is not an IP address",
            ),
            (
                SubnetDns {
                    search: vec!["a b".into()],
                    ..Default::default()
                },
                "\"a b\"",
            ),
            (
                SubnetDns {
                    options: vec![String::new()],
                    ..Default::default()
                },
                "option \"\"",
            ),
        ] {
            let err = spec.validate().unwrap_err().to_string();
            assert!(err.contains(expected), "{err}");
        }
        assert!(PodDns::from_annotation("{\"nameservers\":1}").is_err());
    }

    #[test]
    fn the_node_fills_only_what_the_subnet_leaves_empty() {
        let node = parse_resolv_conf(
            "# generated\nnameserver 192.168.1.1\nnameserver bogus\nsearch lan corp.example\n\
             options edns0 ndots:2 ; trailing\n",
        );
        assert_eq!(
            node.nameservers,
            vec!["192.168.1.1".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(node.search, vec!["lan", "corp.example"]);
        assert_eq!(node.options, vec!["edns0", "ndots:2"]);
        let subnet = SubnetDns {
            nameservers: vec!["10.96.0.10".into()],
            from_node: true,
            ..Default::default()
        }
        .validate()
        .unwrap();
        let pod = subnet.on_node(Some(&node));
        assert_eq!(pod.nameservers, subnet.dns.nameservers);
        assert_eq!(pod.search, node.search);
        let not_from_node = PodDns {
            from_node: false,
            ..subnet.clone()
        };
        assert_eq!(not_from_node.on_node(Some(&node)), subnet.dns);
    }

    proptest! {
        #[test]
        fn resolv_conf_reads_back(
            nameservers in prop::collection::vec(any::<IpAddr>(), 0..4),
            domain in prop::option::of("[a-z]{1,8}(\\.[a-z]{1,5})?"),
            search in prop::collection::vec("[a-z0-9-]{1,8}(\\.[a-z]{1,5})?", 0..4),
            options in prop::collection::vec("[a-z0-9:]{1,8}", 0..3),
        ) {
            let dns = Dns {
                nameservers,
                domain: domain.filter(|_| search.is_empty()),
                search,
                options,
            };
            prop_assert_eq!(parse_resolv_conf(&dns.to_resolv_conf()), dns);
        }
    }
}
