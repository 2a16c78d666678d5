//! The pod's veth pair, built and removed through rtnetlink.
//!
//! The host end's name is derived from the container ID and interface name, so DEL finds it again
//! without any state kept by the daemon.

use super::announce;
use super::netns::Netns;
use crate::cni::{CniError, ErrorCode};
use futures::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags};
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::{Handle, LinkUnspec, LinkVeth, RouteMessageBuilder};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;

/// The pod side of the interface as the allocation describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodNic {
    /// Name inside the pod (`CNI_IFNAME`).
    pub ifname: String,
    /// The allocated MAC.
    pub mac: [u8; 6],
    /// The allocated addresses with the subnet prefix length.
    pub addresses: Vec<IpNet>,
    /// Default-route next hops, one per family.
    pub gateways: Vec<IpAddr>,
    /// Link MTU.
    pub mtu: u32,
}

/// Names of the two ends while the pod end is still in the host namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VethNames {
    /// The end that stays on the host and joins `br-int`; also the OVS port name.
    pub host: String,
    /// The pod end's name until it moves into the pod and takes `CNI_IFNAME`.
    pub transient_peer: String,
}

impl VethNames {
    /// `pk` + 12 hex digits of a stable hash of container ID and interface name (14 bytes, under IFNAMSIZ).
    pub fn for_container(container_id: &str, ifname: &str) -> Self {
        let hash = fnv1a(format!("{container_id}/{ifname}").as_bytes());
        let hex = format!("{:012x}", hash & 0xffff_ffff_ffff);
        Self {
            host: format!("pk{hex}"),
            transient_peer: format!("pc{hex}"),
        }
    }
}

/// 64-bit FNV-1a: stable across releases, unlike std's hasher, so names survive a daemon upgrade.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Opens an rtnetlink connection in the calling thread's namespace, driven on the current runtime.
pub fn connect() -> Result<Handle, CniError> {
    let (connection, handle, _) = rtnetlink::new_connection().map_err(|e| {
        CniError::new(ErrorCode::IoFailure, "cannot open a netlink socket").with_details(e)
    })?;
    tokio::spawn(connection);
    Ok(handle)
}

/// Creates the veth pair, moves the pod end into `netns` under its final name with the allocated MAC and
/// MTU, and brings the host end up. Returns the host end's MAC.
pub async fn create_veth(
    handle: &Handle,
    names: &VethNames,
    nic: &PodNic,
    netns: &Netns,
) -> Result<[u8; 6], CniError> {
    handle
        .link()
        .add(
            LinkVeth::new(&names.host, &names.transient_peer)
                .mtu(nic.mtu)
                .build(),
        )
        .execute()
        .await
        .map_err(|e| netlink_error(format!("cannot create veth pair {}", names.host), e))?;
    let peer = find_link(handle, &names.transient_peer)
        .await?
        .ok_or_else(|| {
            CniError::new(
                ErrorCode::IoFailure,
                format!("veth end {} vanished", names.transient_peer),
            )
        })?;
    handle
        .link()
        .set(
            LinkUnspec::new_with_index(peer.header.index)
                .address(nic.mac.to_vec())
                .mtu(nic.mtu)
                .build(),
        )
        .execute()
        .await
        .map_err(|e| {
            netlink_error(
                format!("cannot set MAC and MTU on {}", names.transient_peer),
                e,
            )
        })?;
    handle
        .link()
        .set(
            LinkUnspec::new_with_index(peer.header.index)
                .setns_by_fd(netns.file().as_raw_fd())
                .name(nic.ifname.clone())
                .build(),
        )
        .execute()
        .await
        .map_err(|e| {
            let code = if e_is(&e, libc::EEXIST) {
                ErrorCode::InvalidEnvironment
            } else {
                ErrorCode::IoFailure
            };
            CniError::new(
                code,
                format!(
                    "cannot move the pod end into the pod's namespace as {}",
                    nic.ifname
                ),
            )
            .with_details(e)
        })?;
    let host = find_link(handle, &names.host).await?.ok_or_else(|| {
        CniError::new(
            ErrorCode::IoFailure,
            format!("veth end {} vanished", names.host),
        )
    })?;
    handle
        .link()
        .set(LinkUnspec::new_with_index(host.header.index).up().build())
        .execute()
        .await
        .map_err(|e| netlink_error(format!("cannot bring {} up", names.host), e))?;
    link_mac(&host)
        .ok_or_else(|| CniError::new(ErrorCode::IoFailure, format!("{} has no MAC", names.host)))
}

/// Deletes the link called `name` if it exists (the peer goes with it). Returns whether it existed.
pub async fn delete_link(handle: &Handle, name: &str) -> Result<bool, CniError> {
    let Some(link) = find_link(handle, name).await? else {
        return Ok(false);
    };
    match handle.link().del(link.header.index).execute().await {
        Ok(()) => Ok(true),
        Err(e) if e_is(&e, libc::ENODEV) => Ok(false),
        Err(e) => Err(netlink_error(format!("cannot delete link {name}"), e)),
    }
}

/// Looks a link up by name; `None` when there is none.
pub async fn find_link(handle: &Handle, name: &str) -> Result<Option<LinkMessage>, CniError> {
    match handle
        .link()
        .get()
        .match_name(name)
        .execute()
        .try_next()
        .await
    {
        Ok(link) => Ok(link),
        Err(e) if e_is(&e, libc::ENODEV) => Ok(None),
        Err(e) => Err(netlink_error(format!("cannot look up link {name}"), e)),
    }
}

/// Inside the pod: brings `lo` and the interface up, adds the addresses and default routes, then
/// announces each address. Runs on a [`Netns::run`] thread.
pub async fn configure_pod_side(nic: PodNic) -> Result<(), CniError> {
    let handle = connect()?;
    if let Some(lo) = find_link(&handle, "lo").await? {
        handle
            .link()
            .set(LinkUnspec::new_with_index(lo.header.index).up().build())
            .execute()
            .await
            .map_err(|e| netlink_error("cannot bring lo up in the pod", e))?;
    }
    let index = pod_link_index(&handle, &nic.ifname).await?;
    for address in &nic.addresses {
        let mut request = handle
            .address()
            .add(index, address.addr(), address.prefix_len());
        if address.addr().is_ipv6() {
            // The address is ours by allocation: skip duplicate address detection so it works at once.
            request.message_mut().header.flags |= AddressHeaderFlags::Nodad;
            request
                .message_mut()
                .attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        request.execute().await.map_err(|e| {
            netlink_error(
                format!("cannot add {address} to {} in the pod", nic.ifname),
                e,
            )
        })?;
    }
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(|e| netlink_error(format!("cannot bring {} up in the pod", nic.ifname), e))?;
    for gateway in &nic.gateways {
        let route = match gateway {
            IpAddr::V4(gw) => RouteMessageBuilder::<Ipv4Addr>::new()
                .gateway(*gw)
                .output_interface(index)
                .build(),
            IpAddr::V6(gw) => RouteMessageBuilder::<Ipv6Addr>::new()
                .gateway(*gw)
                .output_interface(index)
                .build(),
        };
        handle.route().add(route).execute().await.map_err(|e| {
            netlink_error(
                format!("cannot add the default route via {gateway} in the pod"),
                e,
            )
        })?;
    }
    Ok(())
}

/// Inside the pod: the index of the pod's interface, which must exist by now.
async fn pod_link_index(handle: &Handle, ifname: &str) -> Result<u32, CniError> {
    Ok(find_link(handle, ifname)
        .await?
        .ok_or_else(|| {
            CniError::new(
                ErrorCode::IoFailure,
                format!("{ifname} is missing in the pod"),
            )
        })?
        .header
        .index)
}

/// Inside the pod: sends a gratuitous ARP or unsolicited NA for each address.
pub async fn announce_pod_addresses(nic: PodNic) -> Result<(), CniError> {
    let handle = connect()?;
    let index = pod_link_index(&handle, &nic.ifname).await?;
    for address in &nic.addresses {
        let (ethertype, frame) = announce::frame(nic.mac, address.addr());
        announce::send(index, ethertype, &frame).map_err(|e| {
            CniError::new(
                ErrorCode::IoFailure,
                format!("cannot announce {} from the pod", address.addr()),
            )
            .with_details(e)
        })?;
    }
    Ok(())
}

/// What the pod's interface looks like now, for CHECK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedNic {
    /// Its MAC.
    pub mac: Option<[u8; 6]>,
    /// Its addresses with prefix lengths.
    pub addresses: Vec<IpNet>,
}

/// Inside the pod: reads the interface's MAC and addresses; `None` when the interface is missing.
pub async fn observe_pod_side(ifname: String) -> Result<Option<ObservedNic>, CniError> {
    let handle = connect()?;
    let Some(link) = find_link(&handle, &ifname).await? else {
        return Ok(None);
    };
    let messages: Vec<_> = handle
        .address()
        .get()
        .set_link_index_filter(link.header.index)
        .execute()
        .try_collect()
        .await
        .map_err(|e| netlink_error(format!("cannot list the addresses of {ifname}"), e))?;
    let addresses = messages
        .iter()
        .filter_map(|m| {
            m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(ip) => IpNet::new(*ip, m.header.prefix_len).ok(),
                _ => None,
            })
        })
        .collect();
    Ok(Some(ObservedNic {
        mac: link_mac(&link),
        addresses,
    }))
}

fn link_mac(link: &LinkMessage) -> Option<[u8; 6]> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(bytes) => bytes.as_slice().try_into().ok(),
        _ => None,
    })
}

fn e_is(error: &rtnetlink::Error, errno: i32) -> bool {
    matches!(error, rtnetlink::Error::NetlinkError(m) if m.raw_code() == -errno)
}

fn netlink_error(msg: impl Into<String>, e: rtnetlink::Error) -> CniError {
    CniError::new(ErrorCode::IoFailure, msg).with_details(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veth_names_are_stable_short_and_distinct() {
        let a = VethNames::for_container("0123456789abcdef", "eth0");
        assert_eq!(a, VethNames::for_container("0123456789abcdef", "eth0"));
        assert_eq!(a.host.len(), 14);
        assert!(a.host.starts_with("pk") && a.transient_peer.starts_with("pc"));
        assert_eq!(a.host[2..], a.transient_peer[2..]);
        assert_ne!(a, VethNames::for_container("0123456789abcdef", "net1"));
        assert_ne!(a, VethNames::for_container("0123456789abcdeF", "eth0"));
        // FNV-1a's published test vector pins the hash across releases.
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
