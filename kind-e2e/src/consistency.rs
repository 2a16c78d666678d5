//! The consistency check of a live cluster's addressing: every IP and every MAC is held by exactly
//! one nic across live pods' annotations, IP resources, Northbound ports and router ports; the
//! three records of each allocated pod agree; no port or IP resource outlives its holder (a pod,
//! or the StatefulSet or VM that keeps the identity); every Subnet's published counters match the
//! addresses held in it. It runs at the end of every e2e test and as the `portkeeper-check`
//! command against any cluster.
//!
//! The rules are restated here from the documented behaviour (Kube-OVN's naming, docs/retention.md)
//! rather than borrowed from the controller, so a bug in the controller's own bookkeeping cannot
//! hide itself. [`check`] is pure; [`Snapshot::read`] gathers what it needs; [`settle`] repeats
//! both until the cluster is consistent or a deadline passes, because the controller publishes
//! each change in several writes.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::{Resource, ResourceExt};
use ovsdb_client::Client as NbClient;
use ovsdb_client::protocol::table::Table;
use ovsdb_client::tables::nb::{LogicalRouterPort, LogicalSwitch, LogicalSwitchPort};
use portkeeper_api::annotations::{LABEL_IP_RESERVED, NetworkKeys};
use portkeeper_api::kubevirt::{LABEL_APP, LABEL_VM_NAME, LAUNCHER_APP, VirtualMachine};
use portkeeper_api::{IP, Subnet};

/// Where portkeeper records the workload keeping a nic: on IP resources (annotation) and ports
/// (`external_ids`), as `Kind/name/uid` (docs/retention.md).
const OWNER_ANNOTATION: &str = "portkeeper.io/owner";
const OWNER_PORT_KEY: &str = "owner";

/// A logical switch port as the check needs it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NbPort {
    pub name: String,
    /// The switch holding the port (empty when none does).
    pub switch: String,
    /// The `type` column: `""` for a VIF.
    pub kind: String,
    pub addresses: Vec<String>,
    pub external_ids: BTreeMap<String, String>,
}

/// A logical router port: its MAC and its `networks` (`ip/len`) are held addresses too.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NbRouterPort {
    pub name: String,
    pub mac: String,
    pub networks: Vec<String>,
}

/// Everything the check reads, as listed at one moment.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub pods: Vec<Pod>,
    pub ips: Vec<IP>,
    pub subnets: Vec<Subnet>,
    pub stateful_sets: Vec<StatefulSet>,
    pub virtual_machines: Vec<VirtualMachine>,
    pub ports: Vec<NbPort>,
    pub router_ports: Vec<NbRouterPort>,
}

/// One inconsistency.
#[derive(Clone, Debug, PartialEq)]
pub enum Finding {
    /// An IP or MAC held by more than one nic; each holder as `<record> <nic>`.
    Duplicate {
        address: String,
        holders: Vec<String>,
    },
    /// A port or IP resource that no pod or workload holds.
    Leak { record: String, why: String },
    /// An allocated pod whose records are missing or disagree.
    Mismatch { nic: String, detail: String },
    /// A Subnet counter that differs from the addresses held in the subnet.
    Counter {
        subnet: String,
        field: &'static str,
        published: f64,
        expected: f64,
    },
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Finding::Duplicate { address, holders } => {
                write!(f, "duplicate: {address} is held by {}", holders.join(", "))
            }
            Finding::Leak { record, why } => write!(f, "leak: {record}: {why}"),
            Finding::Mismatch { nic, detail } => write!(f, "mismatch: {nic}: {detail}"),
            Finding::Counter {
                subnet,
                field,
                published,
                expected,
            } => write!(
                f,
                "counter: Subnet {subnet} status.{field} is {published}, the records hold {expected}"
            ),
        }
    }
}

/// The outcome of one check: what was looked at and every finding.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub pods: usize,
    /// Allocated nics of those pods, every network's.
    pub nics: usize,
    pub ip_resources: usize,
    pub ports: usize,
    pub subnets: usize,
    pub findings: Vec<Finding>,
}

impl Report {
    pub fn is_consistent(&self) -> bool {
        self.findings.is_empty()
    }

    pub fn duplicates(&self) -> usize {
        self.count(|f| matches!(f, Finding::Duplicate { .. }))
    }

    pub fn leaks(&self) -> usize {
        self.count(|f| matches!(f, Finding::Leak { .. }))
    }

    fn count(&self, which: impl Fn(&Finding) -> bool) -> usize {
        self.findings.iter().filter(|f| which(f)).count()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for finding in &self.findings {
            writeln!(f, "{finding}")?;
        }
        write!(
            f,
            "checked {} allocated pods ({} nics), {} IP resources, {} ports, {} subnets: {} duplicates, {} leaks, {} other findings",
            self.pods,
            self.nics,
            self.ip_resources,
            self.ports,
            self.subnets,
            self.duplicates(),
            self.leaks(),
            self.findings.len() - self.duplicates() - self.leaks()
        )
    }
}

/// Why a snapshot could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("OVN Northbound: {0}")]
    Northbound(#[from] ovsdb_client::Error),
}

/// One allocated nic as a live pod's annotations publish it.
struct PodNic {
    nic: String,
    ips: BTreeSet<IpAddr>,
    mac: String,
    switch: String,
}

/// The name part of a pod's nic (its port and IP resource are `<nic>.<namespace>`): the VM for a
/// virt-launcher pod, else the pod itself.
fn nic_name(pod: &Pod) -> String {
    let labels = pod.labels();
    match (labels.get(LABEL_APP), labels.get(LABEL_VM_NAME)) {
        (Some(app), Some(vm)) if app == LAUNCHER_APP && !vm.is_empty() => vm.clone(),
        _ => pod.name_any(),
    }
}

/// A pod that is running or about to: not finished, not being deleted, not on the host network.
fn is_live(pod: &Pod) -> bool {
    let host_network = pod.spec.as_ref().and_then(|s| s.host_network) == Some(true);
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    !host_network
        && !matches!(phase, Some("Succeeded" | "Failed"))
        && pod.meta().deletion_timestamp.is_none()
}

/// Every nic of a live pod the controller marked allocated: the primary one (provider `ovn`,
/// `ovn.kubernetes.io/...`, nic `<name>.<ns>`) and each attachment network's (provider `P`,
/// `P.kubernetes.io/...`, nic `<name>.<ns>.P`), as Kube-OVN names them.
fn pod_nics(pod: &Pod) -> Vec<PodNic> {
    let a = pod.annotations();
    if !is_live(pod) {
        return Vec::new();
    }
    let base = format!("{}.{}", nic_name(pod), pod.namespace().unwrap_or_default());
    a.iter()
        .filter(|(_, v)| v.as_str() == "true")
        .filter_map(|(k, _)| k.strip_suffix(".kubernetes.io/allocated"))
        .map(|provider| {
            let keys = NetworkKeys::for_provider(provider);
            let get = |key: &str| a.get(key).cloned().unwrap_or_default();
            PodNic {
                nic: match provider {
                    "ovn" => base.clone(),
                    other => format!("{base}.{other}"),
                },
                ips: parse_ips(get(&keys.ip_address).split(',')),
                mac: get(&keys.mac_address).to_ascii_lowercase(),
                switch: get(&keys.logical_switch),
            }
        })
        .collect()
}

/// Addresses as written in annotations and IP resources, a prefix length allowed.
fn parse_ips<'a>(words: impl IntoIterator<Item = &'a str>) -> BTreeSet<IpAddr> {
    words
        .into_iter()
        .filter_map(|w| w.trim().split('/').next()?.parse().ok())
        .collect()
}

/// The `"MAC IP..."` entries of a port's `addresses` (keywords such as `router` hold nothing).
fn port_bindings(port: &NbPort) -> Vec<(String, BTreeSet<IpAddr>)> {
    port.addresses
        .iter()
        .filter_map(|entry| {
            let mut words = entry.split_whitespace();
            let mac = words.next()?;
            (mac.split(':').count() == 6).then(|| (mac.to_ascii_lowercase(), parse_ips(words)))
        })
        .collect()
}

/// Who holds which address: address → nic → the records naming that nic as holder.
#[derive(Default)]
struct Holders(BTreeMap<String, BTreeMap<String, BTreeSet<String>>>);

impl Holders {
    fn add(&mut self, address: impl ToString, nic: &str, record: &str) {
        self.0
            .entry(address.to_string())
            .or_default()
            .entry(nic.to_owned())
            .or_default()
            .insert(record.to_owned());
    }

    fn duplicates(&self) -> impl Iterator<Item = Finding> + '_ {
        self.0
            .iter()
            .filter(|(_, nics)| nics.len() > 1)
            .map(|(address, nics)| Finding::Duplicate {
                address: address.clone(),
                holders: nics
                    .iter()
                    .map(|(nic, records)| {
                        let records: Vec<&str> = records.iter().map(String::as_str).collect();
                        format!("{nic} ({})", records.join(", "))
                    })
                    .collect(),
            })
    }
}

/// Checks a snapshot (see the module documentation for the rules).
pub fn check(s: &Snapshot) -> Report {
    let all_nics: Vec<PodNic> = s.pods.iter().flat_map(pod_nics).collect();
    let mut report = Report {
        pods: s.pods.iter().filter(|p| !pod_nics(p).is_empty()).count(),
        nics: all_nics.len(),
        ip_resources: s.ips.len(),
        ports: s.ports.len(),
        subnets: s.subnets.len(),
        findings: Vec::new(),
    };
    let mut holders = Holders::default();
    for nic in &all_nics {
        for ip in &nic.ips {
            holders.add(ip, &nic.nic, "pod annotations");
        }
        if !nic.mac.is_empty() {
            holders.add(&nic.mac, &nic.nic, "pod annotations");
        }
    }
    for ip in &s.ips {
        let name = ip.name_any();
        for address in parse_ips(ip.spec.addresses()) {
            holders.add(address, &name, "IP resource");
        }
        if !ip.spec.mac_address.is_empty() {
            holders.add(
                ip.spec.mac_address.to_ascii_lowercase(),
                &name,
                "IP resource",
            );
        }
    }
    for port in &s.ports {
        for (mac, ips) in port_bindings(port) {
            holders.add(&mac, &port.name, "port");
            for ip in ips {
                holders.add(ip, &port.name, "port");
            }
        }
    }
    for port in &s.router_ports {
        let nic = format!("router port {}", port.name);
        holders.add(port.mac.to_ascii_lowercase(), &nic, "router port");
        for ip in parse_ips(port.networks.iter().map(String::as_str)) {
            holders.add(ip, &nic, "router port");
        }
    }
    report.findings.extend(holders.duplicates());
    report.findings.extend(mismatches(s, &all_nics));
    report.findings.extend(leaks(s));
    report.findings.extend(counters(s, &holders));
    report
}

/// Each allocated pod's IP resource and port exist and say what its annotations say.
fn mismatches<'a>(s: &'a Snapshot, pod_nics: &'a [PodNic]) -> impl Iterator<Item = Finding> + 'a {
    pod_nics.iter().flat_map(move |nic| {
        let mut found = Vec::new();
        let mut mismatch = |detail: String| {
            found.push(Finding::Mismatch {
                nic: nic.nic.clone(),
                detail,
            })
        };
        if nic.ips.is_empty() || nic.mac.is_empty() {
            mismatch("allocated, but its ip_address or mac_address annotation is empty".into());
        }
        match s.ips.iter().find(|ip| ip.name_any() == nic.nic) {
            None => mismatch("no IP resource".into()),
            Some(ip) => {
                let ips = parse_ips(ip.spec.addresses());
                let mac = ip.spec.mac_address.to_ascii_lowercase();
                if ips != nic.ips || mac != nic.mac || ip.spec.subnet != nic.switch {
                    mismatch(format!(
                        "annotations say {:?} {} in {}, the IP resource {:?} {} in {}",
                        nic.ips, nic.mac, nic.switch, ips, mac, ip.spec.subnet
                    ));
                }
            }
        }
        match s.ports.iter().find(|p| p.name == nic.nic) {
            None => mismatch("no logical switch port".into()),
            Some(port) => {
                let bindings = port_bindings(port);
                let agrees = bindings
                    .iter()
                    .any(|(mac, ips)| *mac == nic.mac && *ips == nic.ips);
                if !agrees || port.switch != nic.switch {
                    mismatch(format!(
                        "annotations say {:?} {} in {}, the port has {:?} on switch {:?}",
                        nic.ips, nic.mac, nic.switch, port.addresses, port.switch
                    ));
                }
            }
        }
        found
    })
}

/// Ports portkeeper made and IP resources, each without a pod or a workload keeping it.
fn leaks(s: &Snapshot) -> Vec<Finding> {
    let mut found = Vec::new();
    for ip in &s.ips {
        if ip.labels().get(LABEL_IP_RESERVED).map(String::as_str) == Some("true") {
            continue;
        }
        let (namespace, nic) = (&ip.spec.namespace, &ip.spec.pod_name);
        let owner = ip.annotations().get(OWNER_ANNOTATION).map(String::as_str);
        if let Some(why) = unheld(s, namespace, nic, owner) {
            found.push(Finding::Leak {
                record: format!("IP resource {}", ip.name_any()),
                why,
            });
        }
    }
    for port in &s.ports {
        let ours = port.external_ids.get("vendor").map(String::as_str) == Some("portkeeper");
        if !ours || !port.kind.is_empty() {
            continue;
        }
        let (namespace, nic) = port
            .external_ids
            .get("pod")
            .and_then(|p| p.split_once('/'))
            .unwrap_or_default();
        let owner = port.external_ids.get(OWNER_PORT_KEY).map(String::as_str);
        if let Some(why) = unheld(s, namespace, nic, owner) {
            found.push(Finding::Leak {
                record: format!("port {}", port.name),
                why,
            });
        }
    }
    found
}

/// Why nothing holds the nic `name` in `namespace` (recorded owner `owner`), or `None` when a pod
/// of that nic exists or its owner still keeps it.
fn unheld(s: &Snapshot, namespace: &str, name: &str, owner: Option<&str>) -> Option<String> {
    if name.is_empty() {
        return Some("names no pod".into());
    }
    let pod_exists = s
        .pods
        .iter()
        .any(|p| p.namespace().as_deref() == Some(namespace) && nic_name(p) == name);
    if pod_exists {
        return None;
    }
    let Some(owner) = owner else {
        return Some(format!("no pod {namespace}/{name}"));
    };
    match owner_keeps(s, namespace, name, owner) {
        Ok(()) => None,
        Err(why) => Some(format!("no pod {namespace}/{name}, and {why}")),
    }
}

/// Whether the recorded owner `Kind/name/uid` still exists and still needs the nic `nic`.
fn owner_keeps(s: &Snapshot, namespace: &str, nic: &str, owner: &str) -> Result<(), String> {
    let mut parts = owner.splitn(3, '/');
    let (kind, name, uid) = match (parts.next(), parts.next(), parts.next()) {
        (Some(k), Some(n), Some(u)) => (k, n, u),
        _ => return Err(format!("its owner record {owner:?} is unreadable")),
    };
    let same = |meta: &kube::api::ObjectMeta| {
        meta.namespace.as_deref() == Some(namespace)
            && meta.name.as_deref() == Some(name)
            && meta.uid.as_deref() == Some(uid)
            && meta.deletion_timestamp.is_none()
    };
    match kind {
        "StatefulSet" => {
            let set = s
                .stateful_sets
                .iter()
                .find(|set| same(&set.metadata))
                .ok_or_else(|| format!("its StatefulSet {name} ({uid}) is gone"))?;
            let spec = set.spec.as_ref();
            let replicas = spec.and_then(|s| s.replicas).unwrap_or(1);
            let start = spec
                .and_then(|s| s.ordinals.as_ref())
                .and_then(|o| o.start)
                .unwrap_or(0);
            let ordinal = nic
                .strip_prefix(name)
                .and_then(|rest| rest.strip_prefix('-'))
                .and_then(|n| n.parse::<i32>().ok());
            match ordinal {
                Some(n) if (start..start + replicas).contains(&n) => Ok(()),
                _ => Err(format!(
                    "StatefulSet {name} runs ordinals {start}..{}",
                    start + replicas
                )),
            }
        }
        "VirtualMachine" => s
            .virtual_machines
            .iter()
            .any(|vm| same(&vm.metadata))
            .then_some(())
            .ok_or_else(|| format!("its VirtualMachine {name} ({uid}) is gone")),
        _ => Err(format!("its owner record {owner:?} names an unknown kind")),
    }
}

/// Each Subnet's `v4/v6 usingIPs` and `availableIPs` against the addresses held in its range,
/// counted as Kube-OVN counts them: the gateway and excluded addresses are never "using".
fn counters<'a>(s: &'a Snapshot, holders: &'a Holders) -> impl Iterator<Item = Finding> + 'a {
    let held: Vec<IpAddr> = holders.0.keys().filter_map(|a| a.parse().ok()).collect();
    s.subnets.iter().flat_map(move |subnet| {
        let name = subnet.name_any();
        let status = subnet.status.clone().unwrap_or_default();
        let mut found = Vec::new();
        let blocks: Vec<ipnet::IpNet> = subnet
            .spec
            .cidr_block
            .split(',')
            .filter_map(|c| c.trim().parse().ok())
            .collect();
        let gateways = parse_ips(subnet.spec.gateway.split(','));
        for block in blocks {
            let (lo, hi) = usable(&block);
            let gateway = gateways
                .iter()
                .find(|g| block.contains(*g))
                .map(to_u128)
                .unwrap_or(lo);
            let mut reserved: Vec<(u128, u128)> = subnet
                .spec
                .exclude_ips
                .iter()
                .filter_map(|e| range_of(e, &block))
                .collect();
            reserved.push((gateway, gateway));
            let reserved = merge(reserved, lo, hi);
            let reserved_count: u128 = reserved.iter().map(|(a, b)| b - a + 1).sum();
            let using = held
                .iter()
                .filter(|a| block.contains(*a))
                .map(to_u128)
                .filter(|a| {
                    (lo..=hi).contains(a) && !reserved.iter().any(|(x, y)| (x..=y).contains(&a))
                })
                .count() as u128;
            let available = (hi - lo + 1) - reserved_count - using;
            let (using_field, using_value, available_field, available_value) = match block {
                ipnet::IpNet::V4(_) => (
                    "v4usingIPs",
                    status.v4_using_ips,
                    "v4availableIPs",
                    status.v4_available_ips,
                ),
                ipnet::IpNet::V6(_) => (
                    "v6usingIPs",
                    status.v6_using_ips,
                    "v6availableIPs",
                    status.v6_available_ips,
                ),
            };
            for (field, published, expected) in [
                (using_field, using_value, using),
                (available_field, available_value, available),
            ] {
                if published != expected as f64 {
                    found.push(Finding::Counter {
                        subnet: name.clone(),
                        field,
                        published,
                        expected: expected as f64,
                    });
                }
            }
        }
        found
    })
}

fn to_u128(ip: &IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u32::from(*v4).into(),
        IpAddr::V6(v6) => u128::from(*v6),
    }
}

/// The assignable addresses of a block: all but the network and broadcast addresses, unless the
/// block is too small to spare them.
fn usable(block: &ipnet::IpNet) -> (u128, u128) {
    let (first, last) = (to_u128(&block.network()), to_u128(&block.broadcast()));
    if block.max_prefix_len() - block.prefix_len() <= 1 {
        (first, last)
    } else {
        (first + 1, last - 1)
    }
}

/// An `excludeIps` entry (`ip` or `first..last`) inside `block`, as a range.
fn range_of(entry: &str, block: &ipnet::IpNet) -> Option<(u128, u128)> {
    let (a, b) = entry.split_once("..").unwrap_or((entry, entry));
    let (a, b): (IpAddr, IpAddr) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    (block.contains(&a) || block.contains(&b)).then(|| (to_u128(&a), to_u128(&b)))
}

/// Ranges clipped to `lo..=hi`, sorted and merged.
fn merge(mut ranges: Vec<(u128, u128)>, lo: u128, hi: u128) -> Vec<(u128, u128)> {
    ranges.retain_mut(|(a, b)| {
        (*a, *b) = ((*a).max(lo), (*b).min(hi));
        a <= b
    });
    ranges.sort_unstable();
    let mut merged: Vec<(u128, u128)> = Vec::new();
    for (a, b) in ranges {
        match merged.last_mut() {
            Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
            _ => merged.push((a, b)),
        }
    }
    merged
}

impl Snapshot {
    /// Lists everything the check reads: the Kubernetes objects through `client`, the ports from
    /// `nb`'s monitored replica (see [`connect_northbound`]).
    pub async fn read(client: &kube::Client, nb: &NbClient) -> Result<Snapshot, CheckError> {
        let all = ListParams::default();
        let virtual_machines = match Api::<VirtualMachine>::all(client.clone()).list(&all).await {
            Ok(list) => list.items,
            // KubeVirt not installed: no VM keeps anything.
            Err(kube::Error::Api(e)) if e.code == 404 => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        let mut snapshot = Snapshot {
            pods: Api::<Pod>::all(client.clone()).list(&all).await?.items,
            ips: Api::<IP>::all(client.clone()).list(&all).await?.items,
            subnets: Api::<Subnet>::all(client.clone()).list(&all).await?.items,
            stateful_sets: Api::<StatefulSet>::all(client.clone())
                .list(&all)
                .await?
                .items,
            virtual_machines,
            ..Snapshot::default()
        };
        let view = nb.cache().read();
        let mut switch_of = BTreeMap::new();
        for row in view.rows(LogicalSwitch::TABLE) {
            if let Ok(switch) = LogicalSwitch::from_row(&row) {
                for port in switch.ports {
                    switch_of.insert(port, switch.name.clone());
                }
            }
        }
        for row in view.rows(LogicalSwitchPort::TABLE) {
            if let Ok(port) = LogicalSwitchPort::from_row(&row) {
                snapshot.ports.push(NbPort {
                    switch: switch_of.get(&port.uuid).cloned().unwrap_or_default(),
                    name: port.name,
                    kind: port.type_,
                    addresses: port.addresses.into_iter().collect(),
                    external_ids: port.external_ids,
                });
            }
        }
        for row in view.rows(LogicalRouterPort::TABLE) {
            if let Ok(port) = LogicalRouterPort::from_row(&row) {
                snapshot.router_ports.push(NbRouterPort {
                    name: port.name,
                    mac: port.mac,
                    networks: port.networks.into_iter().collect(),
                });
            }
        }
        Ok(snapshot)
    }
}

/// A Northbound session monitoring the tables the check reads, connected and loaded.
pub async fn connect_northbound(
    remotes: &str,
    tls: Option<ovsdb_client::runtime::transport::TlsConfig>,
) -> Result<NbClient, CheckError> {
    // Whole rows: a typed row decodes only from all of its columns.
    let mut builder = NbClient::builder(remotes, "OVN_Northbound")
        .monitor(LogicalSwitch::TABLE, &[])
        .monitor(LogicalSwitchPort::TABLE, &[])
        .monitor(LogicalRouterPort::TABLE, &[])
        .connect_timeout(Duration::from_secs(30));
    if let Some(tls) = tls {
        builder = builder.tls(tls);
    }
    Ok(builder.connect().await?)
}

/// Checks until the cluster is consistent or `patience` has passed, and returns the last report:
/// the controller publishes a change in several writes, so a check in between would see a half.
pub async fn settle(
    client: &kube::Client,
    nb: &NbClient,
    patience: Duration,
) -> Result<Report, CheckError> {
    let deadline = Instant::now() + patience;
    loop {
        let report = check(&Snapshot::read(client, nb).await?);
        if report.is_consistent() || Instant::now() >= deadline {
            return Ok(report);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, ip: &str, mac: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}"),
                "annotations": {
                    "ovn.kubernetes.io/allocated": "true",
                    "ovn.kubernetes.io/ip_address": ip,
                    "ovn.kubernetes.io/mac_address": mac,
                    "ovn.kubernetes.io/logical_switch": "net",
                }},
            "spec": {"containers": []},
        }))
        .unwrap()
    }

    fn ip_resource(nic: &str, pod: &str, ip: &str, mac: &str) -> IP {
        serde_json::from_value(json!({
            "metadata": {"name": format!("{nic}.ns")},
            "spec": {"podName": pod, "namespace": "ns", "subnet": "net", "v4IpAddress": ip,
                "ipAddress": ip, "macAddress": mac},
        }))
        .unwrap()
    }

    fn port(nic: &str, pod: &str, ip: &str, mac: &str) -> NbPort {
        NbPort {
            name: format!("{nic}.ns"),
            switch: "net".into(),
            kind: String::new(),
            addresses: vec![format!("{mac} {ip}")],
            external_ids: [("vendor", "portkeeper"), ("pod", &format!("ns/{pod}"))]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        }
    }

    /// `net` 10.0.0.0/24 with gateway 10.0.0.1, `.10..=.19` excluded, publishing `using` in use.
    fn subnet(using: f64) -> Subnet {
        serde_json::from_value(json!({
            "metadata": {"name": "net"},
            "spec": {"cidrBlock": "10.0.0.0/24", "gateway": "10.0.0.1",
                "excludeIps": ["10.0.0.10..10.0.0.19"]},
            "status": {"v4usingIPs": using, "v4availableIPs": 253.0 - 10.0 - using,
                "v6usingIPs": 0, "v6availableIPs": 0},
        }))
        .unwrap()
    }

    /// Two pods, each with its IP resource and port, the gateway on its router port.
    fn consistent() -> Snapshot {
        let pods = [
            ("a", "10.0.0.2", "0a:00:00:00:00:02"),
            ("b", "10.0.0.3", "0a:00:00:00:00:03"),
        ];
        Snapshot {
            pods: pods.iter().map(|(n, i, m)| pod(n, i, m)).collect(),
            ips: pods
                .iter()
                .map(|(n, i, m)| ip_resource(n, n, i, m))
                .collect(),
            ports: pods.iter().map(|(n, i, m)| port(n, n, i, m)).collect(),
            router_ports: vec![NbRouterPort {
                name: "ovn-cluster-net".into(),
                mac: "0a:00:00:00:00:01".into(),
                networks: vec!["10.0.0.1/24".into()],
            }],
            subnets: vec![subnet(2.0)],
            ..Snapshot::default()
        }
    }

    #[test]
    fn a_consistent_cluster_has_no_findings() {
        let report = check(&consistent());
        assert!(report.is_consistent(), "{report}");
        assert_eq!((report.pods, report.ip_resources, report.ports), (2, 2, 2));
    }

    #[test]
    fn an_ip_on_a_second_pod_is_a_duplicate() {
        let mut s = consistent();
        s.pods.push(pod("c", "10.0.0.2", "0a:00:00:00:00:04"));
        let report = check(&s);
        assert_eq!(report.duplicates(), 1, "{report}");
        let text = report.to_string();
        assert!(text.contains("10.0.0.2 is held by a.ns (IP resource, pod annotations, port), c.ns (pod annotations)"), "{text}");
    }

    #[test]
    fn a_mac_on_a_foreign_port_or_the_gateway_address_is_a_duplicate() {
        let mut s = consistent();
        s.ports.push(NbPort {
            name: "foreign".into(),
            switch: "net".into(),
            addresses: vec!["0A:00:00:00:00:03 10.0.0.1".into()],
            ..NbPort::default()
        });
        let report = check(&s);
        let duplicated: Vec<&str> = report
            .findings
            .iter()
            .filter_map(|f| match f {
                Finding::Duplicate { address, .. } => Some(address.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(duplicated, ["0a:00:00:00:00:03", "10.0.0.1"], "{report}");
    }

    #[test]
    fn records_without_a_pod_are_leaks() {
        let mut s = consistent();
        s.pods.remove(1);
        s.subnets = vec![subnet(2.0)];
        let report = check(&s);
        assert_eq!(report.leaks(), 2, "{report}");
        assert!(
            report
                .to_string()
                .contains("leak: IP resource b.ns: no pod ns/b"),
            "{report}"
        );
        assert!(
            report.to_string().contains("leak: port b.ns: no pod ns/b"),
            "{report}"
        );
    }

    #[test]
    fn a_workload_keeps_its_identity_while_it_needs_it() {
        let mut s = consistent();
        s.pods.remove(1);
        let owner = "StatefulSet/b/set-uid";
        s.ips[1]
            .annotations_mut()
            .insert(OWNER_ANNOTATION.into(), owner.into());
        s.ports[1]
            .external_ids
            .insert(OWNER_PORT_KEY.into(), owner.into());
        for (ip, port) in s.ips.iter_mut().zip(&mut s.ports).skip(1) {
            ip.spec.pod_name = "b-0".into();
            port.external_ids.insert("pod".into(), "ns/b-0".into());
        }
        let set = |replicas: i32| -> StatefulSet {
            serde_json::from_value(json!({
                "metadata": {"name": "b", "namespace": "ns", "uid": "set-uid"},
                "spec": {"replicas": replicas, "selector": {}, "template": {}, "serviceName": "b"},
            }))
            .unwrap()
        };
        s.stateful_sets = vec![set(1)];
        assert!(check(&s).is_consistent(), "{}", check(&s));
        s.stateful_sets = vec![set(0)];
        let report = check(&s);
        assert_eq!(report.leaks(), 2, "{report}");
        assert!(
            report.to_string().contains("runs ordinals 0..0"),
            "{report}"
        );
    }

    #[test]
    fn records_that_disagree_with_the_annotations_are_mismatches() {
        let mut s = consistent();
        s.ips[0].spec.mac_address = "0a:00:00:00:00:99".into();
        s.ports.remove(1);
        let report = check(&s);
        let nics: Vec<String> = report
            .findings
            .iter()
            .filter_map(|f| match f {
                Finding::Mismatch { nic, .. } => Some(nic.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(nics, ["a.ns", "b.ns"], "{report}");
    }

    #[test]
    fn a_counter_that_misses_a_held_address_is_reported() {
        let mut s = consistent();
        s.subnets = vec![subnet(1.0)];
        let report = check(&s);
        assert_eq!(
            report.findings,
            [
                Finding::Counter {
                    subnet: "net".into(),
                    field: "v4usingIPs",
                    published: 1.0,
                    expected: 2.0
                },
                Finding::Counter {
                    subnet: "net".into(),
                    field: "v4availableIPs",
                    published: 242.0,
                    expected: 241.0
                }
            ]
        );
    }

    #[test]
    fn every_attachment_nic_is_checked_like_the_primary_one() {
        let mut s = consistent();
        let attach = |p: &mut Pod, ip: &str, mac: &str| {
            p.annotations_mut().extend(
                [
                    ("allocated", "true"),
                    ("ip_address", ip),
                    ("mac_address", mac),
                    ("logical_switch", "net"),
                ]
                .map(|(k, v)| (format!("blue.ns.ovn.kubernetes.io/{k}"), v.to_owned())),
            );
        };
        attach(&mut s.pods[0], "10.0.0.4", "0a:00:00:00:00:04");
        s.ips.push(ip_resource(
            "a.ns.blue",
            "a",
            "10.0.0.4",
            "0a:00:00:00:00:04",
        ));
        s.ips.last_mut().unwrap().metadata.name = Some("a.ns.blue.ns.ovn".into());
        let mut p = port("a", "a", "10.0.0.4", "0a:00:00:00:00:04");
        p.name = "a.ns.blue.ns.ovn".into();
        s.ports.push(p);
        s.subnets = vec![subnet(3.0)];
        let report = check(&s);
        assert!(report.is_consistent(), "{report}");
        assert_eq!((report.pods, report.nics), (2, 3));

        // The attachment's address on the other pod's primary nic is a duplicate; without its
        // port the attachment is a mismatch; with the pod gone, its records are leaks.
        attach(&mut s.pods[1], "10.0.0.3", "0a:00:00:00:00:05");
        let report = check(&s);
        assert!(
            report.to_string().contains("10.0.0.3 is held by b.ns (IP resource, pod annotations, port), b.ns.blue.ns.ovn (pod annotations)"),
            "{report}"
        );
        let mut s2 = consistent();
        attach(&mut s2.pods[0], "10.0.0.4", "0a:00:00:00:00:04");
        let report = check(&s2);
        assert!(
            report
                .findings
                .iter()
                .any(|f| matches!(f, Finding::Mismatch { nic, .. } if nic == "a.ns.blue.ns.ovn")),
            "{report}"
        );
        s.pods.remove(0);
        s.pods[0]
            .annotations_mut()
            .retain(|k, _| !k.starts_with("blue."));
        let report = check(&s);
        assert!(
            report
                .to_string()
                .contains("leak: port a.ns.blue.ns.ovn: no pod ns/a"),
            "{report}"
        );
    }

    #[test]
    fn launcher_pods_of_one_vm_share_its_nic() {
        let mut s = consistent();
        for name in ["virt-launcher-vm-x", "virt-launcher-vm-y"] {
            let mut p = pod(name, "10.0.0.3", "0a:00:00:00:00:03");
            p.labels_mut().extend([
                (LABEL_APP.into(), LAUNCHER_APP.into()),
                (LABEL_VM_NAME.into(), "b".into()),
            ]);
            s.pods.push(p);
        }
        s.pods.remove(1);
        let report = check(&s);
        assert!(report.is_consistent(), "{report}");
    }
}
