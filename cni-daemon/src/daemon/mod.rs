//! The node daemon: turns ADD, DEL and CHECK requests into a wired (or unwired) pod interface.
//!
//! ADD waits for the controller's allocation, builds the veth pair, configures the pod side (with
//! transmit checksum offload off on OVS's userspace datapath, see [`offload`]), attaches the host side to `br-int`, waits for ovn-controller's `ovn-installed` and announces the
//! addresses. Any failure undoes everything the attempt made. DEL is idempotent.

pub mod allocation;
pub mod announce;
pub mod chassis;
pub mod netdev;
pub mod netns;
pub mod offload;
pub mod ovs;
pub mod server;

use crate::cni::result::{AddResult, Interface, IpConfig, Route};
use crate::cni::{CniError, Command, ErrorCode, PodRef};
use crate::protocol::{DaemonRequest, DaemonResponse};
use allocation::Allocation;
use ipnet::IpNet;
use netdev::{PodNic, VethNames};
use netns::Netns;
use ovs::Ovs;
use portkeeper_api::dns::{Dns, parse_resolv_conf};
use std::collections::BTreeMap;
use std::future::Future;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Where the daemon learns a pod's allocation: the API server in production, fixed data in tests.
pub trait AllocationSource: Send + Sync + 'static {
    /// Waits up to `timeout` for `pod`'s allocation on `provider`'s network.
    fn wait(
        &self,
        pod: &PodRef,
        provider: &str,
        timeout: Duration,
    ) -> impl Future<Output = Result<Allocation, CniError>> + Send;
}

/// The Kubernetes API as allocation source: a watch on the one pod.
#[derive(Clone)]
pub struct KubeAllocations(pub kube::Client);

impl AllocationSource for KubeAllocations {
    fn wait(
        &self,
        pod: &PodRef,
        provider: &str,
        timeout: Duration,
    ) -> impl Future<Output = Result<Allocation, CniError>> + Send {
        allocation::wait(self.0.clone(), pod, provider, timeout)
    }
}

/// Where an ADD spent its time; logged with every ADD and read by the benchmark.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AddPhases {
    /// Waiting for the controller's allocation.
    pub allocation: Duration,
    /// Creating the veth pair and configuring the pod side.
    pub interface: Duration,
    /// The OVSDB transaction adding the port to the bridge.
    pub attach: Duration,
    /// Waiting for ovn-controller's `ovn-installed`.
    pub ovn_installed: Duration,
    /// Sending the GARP / unsolicited NA.
    pub announce: Duration,
}

/// The daemon's bounds and defaults.
#[derive(Debug, Clone)]
pub struct Settings {
    /// MTU when the network configuration gives none.
    pub default_mtu: u32,
    /// How long ADD waits for the controller's allocation.
    pub allocation_timeout: Duration,
    /// How long ADD waits for ovn-controller's `ovn-installed`.
    pub install_timeout: Duration,
}

/// One node's daemon.
pub struct Daemon<A> {
    allocations: A,
    ovs: Ovs,
    host: rtnetlink::Handle,
    settings: Settings,
    node_resolv_conf: Option<PathBuf>,
}

impl<A: AllocationSource> Daemon<A> {
    /// A daemon using `ovs`, with the pods' host ends in `node_netns` (the node's namespace when it is
    /// not the daemon's own, as on the local cluster) or else in the calling thread's namespace.
    pub fn new(
        allocations: A,
        ovs: Ovs,
        settings: Settings,
        node_netns: Option<&Netns>,
    ) -> Result<Self, CniError> {
        let host = match node_netns {
            Some(netns) => netns.enter_sync(netdev::connect)??,
            None => netdev::connect()?,
        };
        Ok(Self {
            allocations,
            ovs,
            host,
            settings,
            node_resolv_conf: None,
        })
    }

    /// Reads the node's `resolv.conf` from `path` for Subnets whose `spec.dns.fromNode` asks for
    /// it (read at every ADD, so an edited file counts from the next pod on).
    pub fn with_node_resolv_conf(mut self, path: PathBuf) -> Self {
        self.node_resolv_conf = Some(path);
        self
    }

    /// The CNI result's `dns` for an allocation: the Subnet's settings, with the node's
    /// `resolv.conf` filling the gaps when the Subnet asks for it. An unreadable file is logged
    /// and leaves the Subnet's settings alone.
    fn result_dns(&self, allocation: &Allocation) -> Dns {
        let Some(dns) = &allocation.dns else {
            return Dns::default();
        };
        let node = match (&self.node_resolv_conf, dns.from_node) {
            (Some(path), true) => match std::fs::read_to_string(path) {
                Ok(text) => Some(parse_resolv_conf(&text)),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot read the node's resolv.conf for a Subnet's dns.fromNode");
                    None
                }
            },
            _ => None,
        };
        dns.on_node(node.as_ref())
    }

    /// Answers one request.
    pub async fn handle(&self, request: DaemonRequest) -> DaemonResponse {
        let outcome = match request.command {
            Command::Add => {
                let mut phases = AddPhases::default();
                let outcome = self.add(&request, &mut phases).await;
                tracing::info!(?phases, "ADD phases");
                outcome.map(DaemonResponse::Added)
            }
            Command::Del => self.del(&request).await.map(|()| DaemonResponse::Done),
            Command::Check => self.check(&request).await.map(|()| DaemonResponse::Done),
        };
        outcome.unwrap_or_else(DaemonResponse::Failed)
    }

    /// ADD, recording how long each phase took into `phases` (also when it fails).
    pub async fn add(
        &self,
        request: &DaemonRequest,
        phases: &mut AddPhases,
    ) -> Result<AddResult, CniError> {
        let (pod, netns) = pod_and_netns(request)?;
        let started = Instant::now();
        let allocation = self
            .allocations
            .wait(pod, &request.provider, self.settings.allocation_timeout)
            .await;
        phases.allocation = started.elapsed();
        let allocation = allocation?;
        let mtu = request.mtu.unwrap_or(self.settings.default_mtu);
        if mtu < 1280 && allocation.addresses.iter().any(|a| a.addr().is_ipv6()) {
            return Err(CniError::new(
                ErrorCode::InvalidNetworkConfig,
                format!("mtu {mtu} is below IPv6's minimum of 1280"),
            ));
        }
        let names = VethNames::for_container(&request.container_id, &request.ifname);
        let netns_path = request
            .netns
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let external_ids = interface_external_ids(pod, &allocation, &netns_path);
        // A retried ADD (e.g. after a daemon restart) first clears what an earlier attempt left.
        self.teardown(&names).await?;
        let nic = PodNic {
            ifname: request.ifname.clone(),
            mac: allocation.mac,
            addresses: allocation.addresses.clone(),
            gateways: allocation.gateways.clone(),
            mtu,
        };
        match self
            .build(request, &external_ids, &netns, &names, nic, phases)
            .await
        {
            Ok(result) => Ok(AddResult {
                dns: self.result_dns(&allocation).into(),
                ..result
            }),
            Err(err) => {
                if let Err(cleanup) = self.teardown(&names).await {
                    tracing::error!(port = %names.host, error = %cleanup, "rollback of a failed ADD failed");
                }
                Err(err)
            }
        }
    }

    async fn build(
        &self,
        request: &DaemonRequest,
        external_ids: &BTreeMap<String, String>,
        netns: &Netns,
        names: &VethNames,
        nic: PodNic,
        phases: &mut AddPhases,
    ) -> Result<AddResult, CniError> {
        let mut mark = Instant::now();
        let mut lap = || std::mem::replace(&mut mark, Instant::now()).elapsed();
        let host_mac = netdev::create_veth(&self.host, names, &nic, netns).await?;
        let pod_side = nic.clone();
        let checksum_off = offload::needed_for(&self.ovs.datapath_type());
        netns
            .run(move || async move {
                let ifname = pod_side.ifname.clone();
                netdev::configure_pod_side(pod_side).await?;
                if checksum_off {
                    offload::disable_tx_checksum(&ifname).map_err(|e| {
                        CniError::new(
                            ErrorCode::IoFailure,
                            format!(
                                "cannot turn transmit checksum offload off on {ifname} in the pod"
                            ),
                        )
                        .with_details(e)
                    })?;
                }
                Ok(())
            })
            .await?;
        phases.interface = lap();
        let netns_path = request
            .netns
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        self.ovs.attach(&names.host, external_ids).await?;
        phases.attach = lap();
        self.ovs
            .wait_installed(&names.host, self.settings.install_timeout)
            .await?;
        phases.ovn_installed = lap();
        let announced = nic.clone();
        netns
            .run(move || netdev::announce_pod_addresses(announced))
            .await?;
        phases.announce = lap();
        Ok(add_result(names, host_mac, &nic, &netns_path))
    }

    async fn del(&self, request: &DaemonRequest) -> Result<(), CniError> {
        self.teardown(&VethNames::for_container(
            &request.container_id,
            &request.ifname,
        ))
        .await
    }

    /// Removes the OVS port and the veth pair of `names`; absent parts are fine.
    async fn teardown(&self, names: &VethNames) -> Result<(), CniError> {
        self.ovs.detach(&names.host).await?;
        netdev::delete_link(&self.host, &names.host).await?;
        netdev::delete_link(&self.host, &names.transient_peer).await?;
        Ok(())
    }

    async fn check(&self, request: &DaemonRequest) -> Result<(), CniError> {
        let (pod, netns) = pod_and_netns(request)?;
        let allocation = self
            .allocations
            .wait(pod, &request.provider, self.settings.allocation_timeout)
            .await?;
        let ifname = request.ifname.clone();
        let observed = netns.run(move || netdev::observe_pod_side(ifname)).await?;
        let mismatch = |what: String| Err(CniError::new(ErrorCode::CheckMismatch, what));
        let Some(observed) = observed else {
            return mismatch(format!(
                "interface {} is missing in the pod",
                request.ifname
            ));
        };
        if observed.mac != Some(allocation.mac) {
            return mismatch(format!(
                "interface {} does not have the allocated MAC {}",
                request.ifname,
                format_mac(allocation.mac)
            ));
        }
        if let Some(missing) = allocation
            .addresses
            .iter()
            .find(|a| !observed.addresses.contains(a))
        {
            return mismatch(format!(
                "interface {} lacks the allocated address {missing}",
                request.ifname
            ));
        }
        let names = VethNames::for_container(&request.container_id, &request.ifname);
        let Some(external_ids) = self.ovs.interface_external_ids(&names.host) else {
            return mismatch(format!(
                "port {} is not on the integration bridge",
                names.host
            ));
        };
        if external_ids.get(ovs::IFACE_ID) != Some(&allocation.iface_id) {
            return mismatch(format!(
                "port {} is not bound to logical port {}",
                names.host, allocation.iface_id
            ));
        }
        if !self.ovs.is_installed(&names.host) {
            return mismatch(format!("port {} is not marked ovn-installed", names.host));
        }
        Ok(())
    }
}

fn pod_and_netns(request: &DaemonRequest) -> Result<(&PodRef, Netns), CniError> {
    let pod = request.pod.as_ref().ok_or_else(|| {
        CniError::new(
            ErrorCode::InvalidEnvironment,
            format!(
                "{} needs K8S_POD_NAMESPACE and K8S_POD_NAME in CNI_ARGS",
                request.command.as_str()
            ),
        )
    })?;
    let path = request.netns.as_ref().ok_or_else(|| {
        CniError::new(
            ErrorCode::InvalidEnvironment,
            format!("{} needs CNI_NETNS", request.command.as_str()),
        )
    })?;
    Ok((pod, Netns::open(path)?))
}

/// The Interface `external_ids`, with Kube-OVN's keys so `ovs-vsctl` habits keep working.
pub fn interface_external_ids(
    pod: &PodRef,
    allocation: &Allocation,
    netns: &str,
) -> BTreeMap<String, String> {
    let ips: Vec<String> = allocation
        .addresses
        .iter()
        .map(|a| a.addr().to_string())
        .collect();
    BTreeMap::from([
        (ovs::IFACE_ID.to_owned(), allocation.iface_id.clone()),
        ("attached-mac".to_owned(), format_mac(allocation.mac)),
        ("pod_name".to_owned(), pod.name.clone()),
        ("pod_namespace".to_owned(), pod.namespace.clone()),
        ("pod_netns".to_owned(), netns.to_owned()),
        ("ip".to_owned(), ips.join(",")),
        ("vendor".to_owned(), "portkeeper".to_owned()),
    ])
}

fn add_result(names: &VethNames, host_mac: [u8; 6], nic: &PodNic, netns: &str) -> AddResult {
    let gateway_for = |addr: &IpNet| {
        nic.gateways
            .iter()
            .copied()
            .find(|g| g.is_ipv4() == addr.addr().is_ipv4())
    };
    AddResult {
        interfaces: vec![
            Interface {
                name: names.host.clone(),
                mac: format_mac(host_mac),
                sandbox: None,
            },
            Interface {
                name: nic.ifname.clone(),
                mac: format_mac(nic.mac),
                sandbox: Some(netns.to_owned()),
            },
        ],
        ips: nic
            .addresses
            .iter()
            .map(|a| IpConfig {
                address: *a,
                gateway: gateway_for(a),
                interface: 1,
            })
            .collect(),
        routes: nic
            .gateways
            .iter()
            .map(|gw| Route {
                dst: match gw {
                    IpAddr::V4(_) => "0.0.0.0/0".parse().expect("literal"),
                    IpAddr::V6(_) => "::/0".parse().expect("literal"),
                },
                gw: Some(*gw),
            })
            .collect(),
        dns: Default::default(),
    }
}

/// Lowercase colon-separated MAC, as CNI results and OVN write them.
pub fn format_mac(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn external_ids_use_kube_ovn_keys() {
        let pod = PodRef {
            namespace: "ns".into(),
            name: "web-0".into(),
            uid: None,
        };
        let allocation = Allocation {
            addresses: vec![
                "10.16.0.15/16".parse().unwrap(),
                "fd00::f/64".parse().unwrap(),
            ],
            gateways: vec![],
            mac: [0, 0, 0, 0x53, 0x6b, 0xb6],
            iface_id: "web-0.ns".into(),
            dns: None,
        };
        let ids = interface_external_ids(&pod, &allocation, "/run/netns/x");
        assert_eq!(ids["iface-id"], "web-0.ns");
        assert_eq!(ids["attached-mac"], "00:00:00:53:6b:b6");
        assert_eq!(ids["pod_name"], "web-0");
        assert_eq!(ids["pod_namespace"], "ns");
        assert_eq!(ids["ip"], "10.16.0.15,fd00::f");
    }

    #[test]
    fn result_points_ips_at_the_pod_interface() {
        let names = VethNames::for_container("c", "eth0");
        let nic = PodNic {
            ifname: "eth0".into(),
            mac: [2, 0, 0, 0, 0, 1],
            addresses: vec![
                "10.0.0.5/24".parse().unwrap(),
                "fd00::5/64".parse().unwrap(),
            ],
            gateways: vec!["10.0.0.1".parse().unwrap(), "fd00::1".parse().unwrap()],
            mtu: 1400,
        };
        let r = add_result(&names, [2, 0, 0, 0, 0, 2], &nic, "/run/netns/p");
        assert_eq!(r.interfaces[1].sandbox.as_deref(), Some("/run/netns/p"));
        assert_eq!(r.ips[0].gateway, Some("10.0.0.1".parse().unwrap()));
        assert_eq!(r.ips[1].gateway, Some("fd00::1".parse().unwrap()));
        assert!(r.ips.iter().all(|ip| ip.interface == 1));
        assert_eq!(r.routes[1].dst, "::/0".parse::<IpNet>().unwrap());
        assert_eq!(format_mac([0xaa, 0xbb, 0, 1, 2, 0xff]), "aa:bb:00:01:02:ff");
    }
}
