//! Attachment networks: a pod's `k8s.v1.cni.cncf.io/networks` annotation (Multus's network
//! selection) read into the nics portkeeper serves besides the primary one.
//!
//! Both forms Multus reads are accepted: the text form, a comma list of `name`, `namespace/name`
//! or `[namespace/]name@interface`, and the JSON form, a list of objects with `name`,
//! `namespace`, `interface`, `ips` and `mac` (other members, such as `default-route` or
//! `cni-args`, belong to other plugins and are ignored). The provider of an attachment is
//! Kube-OVN's `<nad>.<nad namespace>.ovn`; its nic, port and IP resource are
//! `<pod>.<ns>.<provider>`, its annotations `<provider>.kubernetes.io/...`. One reader for the
//! controller, the CNI daemon and the local cluster's meta-plugin, so they cannot disagree.

use std::collections::BTreeSet;

use portkeeper_engine::parse::parse_ip_address;
use portkeeper_engine::{DualAddress, MacAddress};
use serde::Deserialize;
use thiserror::Error;

/// The pod annotation selecting attachment networks (Multus).
pub const NETWORKS: &str = "k8s.v1.cni.cncf.io/networks";
/// The pod annotation listing every interface the pod got, written by the meta-plugin (Multus).
pub const NETWORK_STATUS: &str = "k8s.v1.cni.cncf.io/network-status";
/// The suffix Kube-OVN gives the provider of an OVN attachment: `<nad>.<ns>.ovn`.
pub const OVN_SUFFIX: &str = "ovn";

/// One attachment as the annotation selects it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    /// The NetworkAttachmentDefinition's name.
    pub name: String,
    /// Its namespace (the pod's when the selection names none).
    pub namespace: String,
    /// The interface inside the pod: the requested one, else `net<position>` as Multus names it.
    pub interface: String,
    /// Static addresses (`ips`), at most one per family; a `/prefix` is accepted and ignored.
    pub ips: Option<DualAddress>,
    /// Static MAC (`mac`).
    pub mac: Option<MacAddress>,
}

impl Attachment {
    /// Kube-OVN's provider of an OVN attachment: `<nad>.<nad namespace>.ovn`.
    pub fn provider(&self) -> String {
        format!("{}.{}.{OVN_SUFFIX}", self.name, self.namespace)
    }

    /// The provider of an IPAM-only attachment (a Subnet Kube-OVN serves without OVN ports):
    /// `<nad>.<nad namespace>`.
    pub fn ipam_provider(&self) -> String {
        format!("{}.{}", self.name, self.namespace)
    }
}

/// Why the networks annotation cannot be used. The pod gets an `InvalidAnnotation` Event
/// naming the annotation, and none of its nics is allocated until it is fixed.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("annotation {NETWORKS}={value:?} is invalid: {problem}")]
pub struct NetworksError {
    /// The rejected value.
    pub value: String,
    /// What is wrong with it.
    pub problem: String,
}

/// One element of the JSON form, as Multus's `NetworkSelectionElement` spells it.
#[derive(Deserialize)]
struct Element {
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    interface: Option<String>,
    #[serde(default, rename = "interfaceRequest")]
    interface_request: Option<String>,
    #[serde(default)]
    ips: Option<Vec<String>>,
    #[serde(default)]
    mac: Option<String>,
}

/// Reads the annotation of a pod in `pod_namespace`. An absent or blank value selects nothing.
pub fn parse(value: &str, pod_namespace: &str) -> Result<Vec<Attachment>, NetworksError> {
    let invalid = |problem: String| NetworksError {
        value: value.to_owned(),
        problem,
    };
    if value.trim().is_empty() {
        return Ok(Vec::new());
    }
    // Multus's rule: any of these characters means the JSON form.
    let elements: Vec<Element> = if value.contains(['[', '{', '"']) {
        serde_json::from_str(value).map_err(|e| invalid(format!("not a JSON list: {e}")))?
    } else {
        value
            .split(',')
            .map(|item| text_element(item.trim()).map_err(&invalid))
            .collect::<Result<_, _>>()?
    };
    let mut out = Vec::with_capacity(elements.len());
    let (mut networks, mut interfaces) = (BTreeSet::new(), BTreeSet::new());
    for (position, e) in elements.into_iter().enumerate() {
        let namespace = match e.namespace.as_deref().map(str::trim) {
            None | Some("") => pod_namespace.to_owned(),
            Some(ns) => ns.to_owned(),
        };
        let name = e.name.trim().to_owned();
        check_name(&name, 253).map_err(|why| invalid(format!("network name {name:?} {why}")))?;
        check_name(&namespace, 63)
            .map_err(|why| invalid(format!("namespace {namespace:?} {why}")))?;
        if namespace.contains('.') {
            return Err(invalid(format!("namespace {namespace:?} contains '.'")));
        }
        let interface = match e
            .interface
            .or(e.interface_request)
            .as_deref()
            .map(str::trim)
        {
            None | Some("") => format!("net{}", position + 1),
            Some(i) => i.to_owned(),
        };
        check_interface(&interface)
            .map_err(|why| invalid(format!("interface {interface:?} {why}")))?;
        let ips = match e.ips {
            None => None,
            Some(list) if list.is_empty() => None,
            Some(list) => Some(
                parse_ip_address(&list.join(","))
                    .map_err(|err| invalid(format!("ips {list:?} of {name}: {err}")))?,
            ),
        };
        let mac = match e.mac.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(m) => Some(
                MacAddress::parse(m)
                    .map_err(|err| invalid(format!("mac {m:?} of {name}: {err}")))?,
            ),
        };
        if !networks.insert((namespace.clone(), name.clone())) {
            return Err(invalid(format!(
                "network {namespace}/{name} is selected twice; portkeeper attaches a network once per pod"
            )));
        }
        if !interfaces.insert(interface.clone()) {
            return Err(invalid(format!("interface {interface} is requested twice")));
        }
        out.push(Attachment {
            name,
            namespace,
            interface,
            ips,
            mac,
        });
    }
    Ok(out)
}

/// One item of the text form: `[namespace/]name[@interface]`.
fn text_element(item: &str) -> Result<Element, String> {
    let (namespace, rest) = match item.split('/').collect::<Vec<_>>()[..] {
        [rest] => (None, rest),
        [ns, rest] => (Some(ns.trim().to_owned()), rest),
        _ => return Err(format!("{item:?} has more than one '/'")),
    };
    let (name, interface) = match rest.split('@').collect::<Vec<_>>()[..] {
        [name] => (name, None),
        [name, interface] => (name, Some(interface.trim().to_owned())),
        _ => return Err(format!("{item:?} has more than one '@'")),
    };
    if let Some(namespace) = &namespace
        && namespace.is_empty()
    {
        return Err(format!("{item:?} has an empty namespace before '/'"));
    }
    Ok(Element {
        name: name.trim().to_owned(),
        namespace,
        interface,
        interface_request: None,
        ips: None,
        mac: None,
    })
}

/// A DNS-1123 name of at most `max` characters: lower-case letters, digits, `-` and `.`,
/// starting and ending with a letter or digit.
fn check_name(name: &str, max: usize) -> Result<(), &'static str> {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    if name.is_empty() {
        return Err("is empty");
    }
    if name.len() > max {
        return Err("is too long");
    }
    if !name.chars().all(|c| alnum(c) || c == '-' || c == '.')
        || !name.starts_with(alnum)
        || !name.ends_with(alnum)
    {
        return Err(
            "must be lower-case letters, digits, '-' and '.', starting and ending alphanumerically",
        );
    }
    Ok(())
}

/// A Linux interface name: 1 to 15 bytes, no `/`, `:`, `%` or white space, not `.` or `..`.
fn check_interface(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > 15 {
        return Err("must be 1 to 15 characters long");
    }
    if name == "." || name == ".." {
        return Err("is not a valid interface name");
    }
    if name
        .chars()
        .any(|c| c == '/' || c == ':' || c == '%' || c.is_whitespace() || c.is_control())
    {
        return Err("contains '/', ':', '%' or white space");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn one(value: &str) -> Attachment {
        let mut all = parse(value, "pods").unwrap();
        assert_eq!(all.len(), 1, "{value}");
        all.remove(0)
    }

    #[test]
    fn blank_selects_nothing() {
        assert_eq!(parse("", "pods").unwrap(), vec![]);
        assert_eq!(parse("  ", "pods").unwrap(), vec![]);
    }

    #[test]
    fn text_form_names_namespaces_and_interfaces() {
        let all = parse("a, other/b ,c@data, other/d@net9", "pods").unwrap();
        let got: Vec<(&str, &str, &str)> = all
            .iter()
            .map(|a| (a.name.as_str(), a.namespace.as_str(), a.interface.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("a", "pods", "net1"),
                ("b", "other", "net2"),
                ("c", "pods", "data"),
                ("d", "other", "net9"),
            ]
        );
        assert_eq!(all[1].provider(), "b.other.ovn");
        assert_eq!(all[1].ipam_provider(), "b.other");
    }

    #[test]
    fn json_form_with_ips_mac_and_interface() {
        let a = one(
            r#"[{"name":"attach","namespace":"net-ns","interface":"eth1",
                 "ips":["10.1.0.5/24","fd00:1::5"],"mac":"02:00:00:AA:BB:01","default-route":["10.1.0.1"]}]"#,
        );
        assert_eq!(a.name, "attach");
        assert_eq!(a.namespace, "net-ns");
        assert_eq!(a.interface, "eth1");
        let ips = a.ips.unwrap();
        assert_eq!(ips.v4, Some("10.1.0.5".parse().unwrap()));
        assert_eq!(ips.v6, Some("fd00:1::5".parse().unwrap()));
        assert_eq!(a.mac.unwrap().to_string(), "02:00:00:aa:bb:01");
        let b = one(r#"[{"name":"attach","interfaceRequest":"old"}]"#);
        assert_eq!(
            (b.namespace.as_str(), b.interface.as_str()),
            ("pods", "old")
        );
        let c = one(r#"[{"name":"attach","ips":[]}]"#);
        assert_eq!((c.ips, c.interface.as_str()), (None, "net1"));
    }

    #[test]
    fn bad_values_name_the_annotation_and_the_fault() {
        for (value, fault) in [
            ("a/b/c", "more than one '/'"),
            ("a@b@c", "more than one '@'"),
            ("/a", "empty namespace"),
            ("a,,b", "is empty"),
            ("Upper", "lower-case"),
            ("-a", "lower-case"),
            ("a@", "net1"), // an empty interface falls back to the position
            ("a@this-name-is-too-long", "1 to 15"),
            ("a@x/y", "namespace \"a@x\""),
            ("a,a", "selected twice"),
            ("a@x,b@x", "requested twice"),
            ("a,b@net1", "requested twice"),
            ("[", "not a JSON list"),
            (r#"[{"namespace":"x"}]"#, "not a JSON list"),
            (r#"{"name":"a"}"#, "not a JSON list"),
            (r#"[{"name":"a","ips":["10.0.0.300"]}]"#, "ips"),
            (r#"[{"name":"a","ips":["10.0.0.1","10.0.0.2"]}]"#, "ips"),
            (r#"[{"name":"a","mac":"01:00:5e:00:00:01"}]"#, "mac"),
            (r#"[{"name":"a","interface":"a b"}]"#, "white space"),
            (r#"[{"name":"a","namespace":"x.y"}]"#, "contains '.'"),
        ] {
            match parse(value, "pods") {
                Ok(all) => {
                    assert_eq!(fault, "net1", "{value} accepted: {all:?}");
                    assert_eq!(all[0].interface, "net1");
                }
                Err(e) => {
                    let text = e.to_string();
                    assert!(text.contains(NETWORKS), "{text}");
                    assert!(text.contains(fault), "{value}: {text}");
                }
            }
        }
    }

    fn attachment() -> impl Strategy<Value = (String, Option<String>, Option<String>)> {
        (
            "[a-z0-9]([a-z0-9.-]{0,10}[a-z0-9])?",
            prop::option::of("[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?"),
            prop::option::of("[a-zA-Z0-9_.-]{3,15}"),
        )
    }

    proptest! {
        /// The text and the JSON form of the same selection read the same, with Multus's
        /// default interface names and the pod's namespace filled in; never a panic.
        #[test]
        fn text_and_json_forms_agree(list in prop::collection::vec(attachment(), 1..5)) {
            let text: Vec<String> = list
                .iter()
                .map(|(name, ns, interface)| {
                    let mut s = ns.as_ref().map_or(String::new(), |n| format!("{n}/"));
                    s.push_str(name);
                    if let Some(i) = interface {
                        s.push('@');
                        s.push_str(i);
                    }
                    s
                })
                .collect();
            let json: Vec<serde_json::Value> = list
                .iter()
                .map(|(name, ns, interface)| {
                    serde_json::json!({"name": name, "namespace": ns, "interface": interface})
                })
                .collect();
            let from_text = parse(&text.join(","), "pods").map_err(|e| e.problem);
            let from_json =
                parse(&serde_json::Value::from(json).to_string(), "pods").map_err(|e| e.problem);
            prop_assert_eq!(&from_text, &from_json);
            if let Ok(all) = from_text {
                for (i, (a, (name, ns, interface))) in all.iter().zip(&list).enumerate() {
                    prop_assert_eq!(&a.name, name);
                    prop_assert_eq!(&a.namespace, ns.as_deref().unwrap_or("pods"));
                    let default = format!("net{}", i + 1);
                    prop_assert_eq!(&a.interface, interface.as_ref().unwrap_or(&default));
                    prop_assert_eq!(a.provider(), format!("{}.{}.ovn", a.name, a.namespace));
                }
            }
        }

        /// Any text is read or refused with a message naming the annotation; what is read has
        /// one attachment per network and per interface.
        #[test]
        fn anything_is_read_or_refused_by_name(value in ".{0,60}") {
            match parse(&value, "pods") {
                Ok(all) => {
                    let providers: BTreeSet<String> = all.iter().map(Attachment::provider).collect();
                    let interfaces: BTreeSet<&str> = all.iter().map(|a| a.interface.as_str()).collect();
                    prop_assert_eq!(providers.len(), all.len());
                    prop_assert_eq!(interfaces.len(), all.len());
                }
                Err(e) => prop_assert!(e.to_string().contains(NETWORKS)),
            }
        }
    }
}
