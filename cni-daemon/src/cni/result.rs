//! The result of a successful ADD, kept version-neutral and written in the runtime's CNI version.

use super::version::CniVersion;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::net::IpAddr;

/// An interface the plugin created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    /// Interface name in its namespace.
    pub name: String,
    /// MAC address, lowercase colon-separated.
    pub mac: String,
    /// The network namespace path for the pod's interface; `None` for the host end.
    pub sandbox: Option<String>,
}

/// An address configured on one of the result's interfaces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// Address with the subnet's prefix length.
    pub address: IpNet,
    /// The subnet gateway.
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`.
    pub interface: usize,
}

/// A route installed in the pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// Destination prefix.
    pub dst: IpNet,
    /// Next hop.
    pub gw: Option<IpAddr>,
}

/// The resolver settings of the result (CNI's `dns`): the Subnet's `spec.dns`, with the node's
/// `resolv.conf` filling the gaps when the Subnet asks for it. Empty when the Subnet has none.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    /// Name servers, in order.
    #[serde(default)]
    pub nameservers: Vec<IpAddr>,
    /// The local domain.
    #[serde(default)]
    pub domain: Option<String>,
    /// Search domains, in order.
    #[serde(default)]
    pub search: Vec<String>,
    /// Resolver options.
    #[serde(default)]
    pub options: Vec<String>,
}

impl From<portkeeper_api::dns::Dns> for Dns {
    fn from(d: portkeeper_api::dns::Dns) -> Self {
        Dns {
            nameservers: d.nameservers,
            domain: d.domain,
            search: d.search,
            options: d.options,
        }
    }
}

impl Dns {
    /// CNI's `dns` object: only the keys that are set.
    fn to_json(&self) -> Value {
        let mut out = serde_json::Map::new();
        if !self.nameservers.is_empty() {
            let servers: Vec<String> = self.nameservers.iter().map(ToString::to_string).collect();
            out.insert("nameservers".into(), json!(servers));
        }
        if let Some(domain) = &self.domain {
            out.insert("domain".into(), json!(domain));
        }
        if !self.search.is_empty() {
            out.insert("search".into(), json!(self.search));
        }
        if !self.options.is_empty() {
            out.insert("options".into(), json!(self.options));
        }
        Value::Object(out)
    }
}

/// What ADD made.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddResult {
    /// The host end first, then the pod's interface.
    pub interfaces: Vec<Interface>,
    /// The pod's addresses.
    pub ips: Vec<IpConfig>,
    /// The pod's routes.
    pub routes: Vec<Route>,
    /// The pod's resolver settings (absent from an older daemon's answer: empty).
    #[serde(default)]
    pub dns: Dns,
}

impl AddResult {
    /// The result object for `version` (0.3.x and 0.4.0 add `"version"` to each IP; 1.0.0 does not).
    pub fn to_json(&self, version: CniVersion) -> Value {
        let interfaces: Vec<Value> = self
            .interfaces
            .iter()
            .map(|i| {
                let mut v = json!({"name": i.name, "mac": i.mac});
                if let Some(sandbox) = &i.sandbox {
                    v["sandbox"] = json!(sandbox);
                }
                v
            })
            .collect();
        let ips: Vec<Value> = self
            .ips
            .iter()
            .map(|ip| {
                let mut v = json!({"address": ip.address.to_string(), "interface": ip.interface});
                if let Some(gw) = ip.gateway {
                    v["gateway"] = json!(gw.to_string());
                }
                if version.ips_have_version() {
                    v["version"] = json!(if ip.address.addr().is_ipv4() {
                        "4"
                    } else {
                        "6"
                    });
                }
                v
            })
            .collect();
        let routes: Vec<Value> = self
            .routes
            .iter()
            .map(|r| {
                let mut v = json!({"dst": r.dst.to_string()});
                if let Some(gw) = r.gw {
                    v["gw"] = json!(gw.to_string());
                }
                v
            })
            .collect();
        json!({
            "cniVersion": version.as_str(),
            "interfaces": interfaces,
            "ips": ips,
            "routes": routes,
            "dns": self.dns.to_json(),
        })
    }
}

/// The VERSION answer.
pub fn version_info(runtime_version: Option<CniVersion>) -> Value {
    json!({
        "cniVersion": runtime_version.unwrap_or(CniVersion::LATEST).as_str(),
        "supportedVersions": CniVersion::SUPPORTED.map(CniVersion::as_str),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dual_stack() -> AddResult {
        AddResult {
            interfaces: vec![
                Interface {
                    name: "pk0123456789ab".into(),
                    mac: "0a:58:0a:10:00:05".into(),
                    sandbox: None,
                },
                Interface {
                    name: "eth0".into(),
                    mac: "00:00:00:53:6b:b6".into(),
                    sandbox: Some("/var/run/netns/pod".into()),
                },
            ],
            ips: vec![
                IpConfig {
                    address: "10.16.0.15/16".parse().unwrap(),
                    gateway: Some("10.16.0.1".parse().unwrap()),
                    interface: 1,
                },
                IpConfig {
                    address: "fd00:10:16::f/64".parse().unwrap(),
                    gateway: Some("fd00:10:16::1".parse().unwrap()),
                    interface: 1,
                },
            ],
            routes: vec![
                Route {
                    dst: "0.0.0.0/0".parse().unwrap(),
                    gw: Some("10.16.0.1".parse().unwrap()),
                },
                Route {
                    dst: "::/0".parse().unwrap(),
                    gw: Some("fd00:10:16::1".parse().unwrap()),
                },
            ],
            dns: Dns::default(),
        }
    }

    #[test]
    fn v1_result_shape() {
        assert_eq!(
            dual_stack().to_json(CniVersion::V1_0_0),
            json!({
                "cniVersion": "1.0.0",
                "interfaces": [
                    {"name": "pk0123456789ab", "mac": "0a:58:0a:10:00:05"},
                    {"name": "eth0", "mac": "00:00:00:53:6b:b6", "sandbox": "/var/run/netns/pod"}
                ],
                "ips": [
                    {"address": "10.16.0.15/16", "gateway": "10.16.0.1", "interface": 1},
                    {"address": "fd00:10:16::f/64", "gateway": "fd00:10:16::1", "interface": 1}
                ],
                "routes": [
                    {"dst": "0.0.0.0/0", "gw": "10.16.0.1"},
                    {"dst": "::/0", "gw": "fd00:10:16::1"}
                ],
                "dns": {}
            })
        );
    }

    #[test]
    fn dns_carries_only_what_is_set() {
        let mut result = dual_stack();
        result.dns = Dns {
            nameservers: vec!["10.96.0.10".parse().unwrap()],
            search: vec!["svc.cluster.local".into()],
            ..Dns::default()
        };
        assert_eq!(
            result.to_json(CniVersion::V1_0_0)["dns"],
            json!({"nameservers": ["10.96.0.10"], "search": ["svc.cluster.local"]})
        );
        let old_daemon = json!({"interfaces": [], "ips": [], "routes": []});
        let read: AddResult = serde_json::from_value(old_daemon).unwrap();
        assert_eq!(read.dns, Dns::default());
    }

    #[test]
    fn pre_1_0_results_carry_ip_versions() {
        for v in [CniVersion::V0_3_0, CniVersion::V0_3_1, CniVersion::V0_4_0] {
            let out = dual_stack().to_json(v);
            assert_eq!(out["cniVersion"], v.as_str());
            assert_eq!(out["ips"][0]["version"], "4");
            assert_eq!(out["ips"][1]["version"], "6");
        }
    }

    #[test]
    fn version_info_lists_all() {
        assert_eq!(
            version_info(Some(CniVersion::V0_4_0)),
            json!({"cniVersion": "0.4.0", "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0"]})
        );
        assert_eq!(version_info(None)["cniVersion"], "1.0.0");
    }
}
