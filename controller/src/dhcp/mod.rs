//! OVN DHCP for VMs and pods, Kube-OVN-compatible: writes the `DHCP_Options` rows and the
//! ports' pointers that [`plan`] decides.
//!
//! Three entry points, each idempotent and cheap when nothing changed: [`apply_subnet`] with
//! every Subnet pass (its rows, and its ports when those rows come or go), [`apply_port`] with
//! every pass of a pod that holds a port (the pod's own rows from its annotations, and the
//! port's pointers), and [`collect_garbage`] with every removal pass (rows whose Subnet switch or
//! port is gone). Only rows with portkeeper's vendor id are ever touched.

pub mod plan;

use std::collections::{BTreeMap, HashSet};

use portkeeper_api::annotations::{NetworkKeys, key};
use portkeeper_api::dhcp::{
    ANNOTATION_V4, ANNOTATION_V4_ALIAS, ANNOTATION_V6, ANNOTATION_V6_ALIAS, Family,
};
use portkeeper_api::{Subnet, SubnetStatus};
use portkeeper_engine::MacAddress;

use crate::context::Context;
use crate::error::Error;
use crate::ovn::{DhcpScope, DhcpSpec, Northbound, ObservedPort};
use crate::plan::SubnetNetwork;
use plan::{Links, SubnetDhcp, links, orphans, stale};

/// The UUIDs of a Subnet's rows, as its status publishes them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SubnetRows {
    /// `status.dhcpV4OptionsUUID`.
    pub v4: String,
    /// `status.dhcpV6OptionsUUID`.
    pub v6: String,
}

impl SubnetRows {
    /// Writes them into a Subnet status.
    pub fn publish(&self, status: &mut SubnetStatus) {
        status.kube_ovn.dhcp_v4_options_uuid = self.v4.clone();
        status.kube_ovn.dhcp_v6_options_uuid = self.v6.clone();
    }
}

fn new_mac() -> String {
    MacAddress::random(&mut rand::rng()).to_string()
}

/// Makes the Subnet's rows what its spec asks for, deletes those it no longer asks for, and
/// when the rows changed points every port of the Subnet without rows of its own at them.
/// Bad options are an error naming the option, and change nothing.
pub async fn apply_subnet<N: Northbound>(
    ctx: &Context<N>,
    subnet: &Subnet,
) -> Result<SubnetRows, Error> {
    let dhcp = SubnetDhcp::of(subnet, SubnetNetwork::of(subnet)?);
    let existing = ctx.nb.dhcp_rows();
    let wanted = dhcp.rows(&existing, &mut new_mac)?;
    let uuids = ensure(ctx, &wanted).await?;
    let mine = |s: &DhcpScope| s.switch == dhcp.switch && s.port.is_none();
    ctx.nb.delete_dhcp(&stale(&existing, mine, &wanted)).await?;
    let rows = SubnetRows {
        v4: uuid_of(&uuids, &wanted, Family::V4),
        v6: uuid_of(&uuids, &wanted, Family::V6),
    };
    let published = subnet.status.as_ref().map(|s| SubnetRows {
        v4: s.kube_ovn.dhcp_v4_options_uuid.clone(),
        v6: s.kube_ovn.dhcp_v6_options_uuid.clone(),
    });
    if published.as_ref() != Some(&rows) {
        let with_own: HashSet<String> = existing
            .iter()
            .filter_map(|r| r.scope.port.clone())
            .collect();
        let scopes: Vec<DhcpScope> = wanted.iter().map(|w| w.scope.clone()).collect();
        for port in ctx.nb.ports_on_switch(&dhcp.switch) {
            if port.is_ours() && port.kind.is_empty() && !with_own.contains(&port.name) {
                link(ctx, &port, &links(&port, &[], &scopes), &uuids).await?;
            }
        }
    }
    Ok(rows)
}

/// Gives the port `name` the rows of its own its pod's annotations ask for (deleting those they
/// no longer ask for) and points it at its own rows, else its Subnet's. A port on no known Subnet
/// is left alone; bad options are an error naming the option, and change nothing.
pub async fn apply_port<N: Northbound>(
    ctx: &Context<N>,
    name: &str,
    keys: &NetworkKeys,
    annotations: &BTreeMap<String, String>,
) -> Result<(), Error> {
    let Some(port) = ctx.nb.port(name) else {
        return Ok(());
    };
    let subnet = ctx
        .stores
        .subnets
        .get(&kube::runtime::reflector::ObjectRef::new(&port.switch));
    let Some(subnet) = subnet else {
        return Ok(());
    };
    let dhcp = SubnetDhcp::of(&subnet, SubnetNetwork::of(&subnet)?);
    let text = |primary: &str, alias: &str| {
        annotations
            .get(&key(&keys.provider, primary))
            .or_else(|| annotations.get(&key(&keys.provider, alias)))
            .map(String::as_str)
    };
    let existing = ctx.nb.dhcp_rows();
    let own = dhcp.port_rows(
        name,
        [
            text(ANNOTATION_V4, ANNOTATION_V4_ALIAS),
            text(ANNOTATION_V6, ANNOTATION_V6_ALIAS),
        ],
        &existing,
        &mut new_mac,
    )?;
    let uuids = ensure(ctx, &own).await?;
    let mine = |s: &DhcpScope| s.port.as_deref() == Some(name);
    ctx.nb.delete_dhcp(&stale(&existing, mine, &own)).await?;
    let subnet_rows: Vec<&_> = existing
        .iter()
        .filter(|r| r.scope.switch == port.switch && r.scope.port.is_none())
        .collect();
    let mut all = uuids;
    all.extend(
        subnet_rows
            .iter()
            .map(|r| (r.scope.clone(), r.uuid.clone())),
    );
    let own_scopes: Vec<DhcpScope> = own.iter().map(|r| r.scope.clone()).collect();
    let subnet_scopes: Vec<DhcpScope> = subnet_rows.iter().map(|r| r.scope.clone()).collect();
    link(ctx, &port, &links(&port, &own_scopes, &subnet_scopes), &all).await
}

/// Deletes the rows nothing can use any more: a Subnet's whose switch is gone (the Subnet was
/// removed from OVN), and a port's own whose port is gone.
pub async fn collect_garbage<N: Northbound>(ctx: &Context<N>) -> Result<(), Error> {
    let existing = ctx.nb.dhcp_rows();
    if existing.is_empty() {
        return Ok(());
    }
    let switches: HashSet<String> = ctx.nb.subnet_switches().into_iter().collect();
    let gone = orphans(&existing, &switches, |port| {
        ctx.nb.port(port).map(|p| p.switch)
    });
    if !gone.is_empty() {
        tracing::info!(
            rows = gone.len(),
            "removing DHCP_Options rows whose Subnet or port is gone"
        );
        ctx.nb.delete_dhcp(&gone).await?;
    }
    Ok(())
}

/// Writes each row; their UUIDs by scope.
async fn ensure<N: Northbound>(
    ctx: &Context<N>,
    rows: &[DhcpSpec],
) -> Result<BTreeMap<DhcpScope, String>, Error> {
    let mut uuids = BTreeMap::new();
    for row in rows {
        uuids.insert(row.scope.clone(), ctx.nb.ensure_dhcp(row).await?);
    }
    Ok(uuids)
}

fn uuid_of(uuids: &BTreeMap<DhcpScope, String>, rows: &[DhcpSpec], family: Family) -> String {
    rows.iter()
        .find(|r| r.scope.family == family)
        .and_then(|r| uuids.get(&r.scope).cloned())
        .unwrap_or_default()
}

/// Points `port` at the rows `wanted` names, unless it already does.
async fn link<N: Northbound>(
    ctx: &Context<N>,
    port: &ObservedPort,
    wanted: &Links,
    uuids: &BTreeMap<DhcpScope, String>,
) -> Result<(), Error> {
    let resolve = |scope: &Option<DhcpScope>| scope.as_ref().and_then(|s| uuids.get(s)).cloned();
    let (v4, v6) = (resolve(&wanted.v4), resolve(&wanted.v6));
    if port.dhcpv4_options == v4 && port.dhcpv6_options == v6 {
        return Ok(());
    }
    ctx.nb
        .link_dhcp(&port.name, v4.as_deref(), v6.as_deref())
        .await?;
    Ok(())
}
