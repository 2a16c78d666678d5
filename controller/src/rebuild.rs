//! Start-up rebuild and garbage collection.
//!
//! The engine is rebuilt from three sources together: IP resources, the annotations of
//! allocated pods, and the ports in OVN Northbound (including ports portkeeper did not make).
//! A pod deleted while the controller was down therefore still holds its address through its
//! leftover port or IP resource until garbage collection releases it; a new pod can never be
//! handed that address in between (Kube-OVN issue #4304).

use std::net::IpAddr;
use std::sync::Arc;

use kube::{Api, Resource, ResourceExt};
use portkeeper_api::IP;
use portkeeper_api::allocation::port_name;
use portkeeper_api::annotations::{NetworkKeys, allocated_providers};
use portkeeper_engine::parse::parse_ip_address;
use portkeeper_engine::{
    DualAddress, Engine, Lease, MacAddress, NicKey, RebuildReport, Record, RecordSource, Snapshot,
};

use crate::addressing::plan::{engine_pool, engine_subnet, router_port_name};
use crate::allocate::FOREIGN_PORT_OWNER;
use crate::context::Context;
use crate::error::Error;
use crate::nic::{self, POD_UID, holder};
use crate::ovn::{Northbound, ObservedPort, ids};
use crate::plan::SubnetNetwork;
use crate::stores::Stores;

/// Builds the engine from the synced caches and Northbound.
pub fn rebuild<N: Northbound>(stores: &Stores, nb: &N, router: &str) -> (Engine, RebuildReport) {
    let mut snapshot = Snapshot::default();
    let mut subnet_names = Vec::new();
    for subnet in stores.subnets.state() {
        let Ok(network) = SubnetNetwork::of(&subnet) else {
            continue;
        };
        let mac = nb.router_port_mac(&router_port_name(router, &subnet.name_any()));
        snapshot.subnets.push(engine_subnet(&subnet, &network, mac));
        subnet_names.push(subnet.name_any());
    }
    snapshot.pools = stores
        .pools
        .state()
        .iter()
        .map(|p| engine_pool(p))
        .collect();

    let pod_uid = |namespace: &str, name: &str| {
        stores
            .pod(namespace, name)
            .and_then(|p| p.uid())
            .unwrap_or_default()
    };
    for ip in stores.ips.state() {
        let addresses = ip.spec.addresses().join(",");
        let Some(lease) = lease(
            &ip.spec.subnet,
            NicKey::from(ip.name_any().as_str()),
            holder::recorded_holder(ip.annotations())
                .unwrap_or_else(|| pod_uid(&ip.spec.namespace, &ip.spec.pod_name)),
            &addresses,
            &ip.spec.mac_address,
        ) else {
            continue;
        };
        snapshot.records.push(Record {
            lease,
            source: RecordSource::IpResource,
        });
    }
    for p in stores.pods.state() {
        let a = p.annotations();
        if !nic::wants_address(&p) {
            continue;
        }
        let (name, namespace) = (nic::name(&p), p.namespace().unwrap_or_default());
        for provider in allocated_providers(a) {
            let keys = NetworkKeys::for_provider(provider);
            let (Some(subnet), Some(addresses)) =
                (a.get(&keys.logical_switch), a.get(&keys.ip_address))
            else {
                continue;
            };
            let mac = a.get(&keys.mac_address).cloned().unwrap_or_default();
            if let Some(lease) = lease(
                subnet,
                port_name(&name, &namespace, provider),
                holder::holder_uid(&p, holder::owner_of(&p, stores).as_ref()),
                addresses,
                &mac,
            ) {
                snapshot.records.push(Record {
                    lease,
                    source: RecordSource::PodAnnotation,
                });
            }
        }
    }
    for port in nb.ports() {
        if !subnet_names.contains(&port.switch) || !port.kind.is_empty() {
            continue;
        }
        if let Some(lease) = port_lease(&port, &pod_uid) {
            snapshot.records.push(Record {
                lease,
                source: RecordSource::OvnPort,
            });
        }
    }
    Engine::rebuild(
        &snapshot,
        <rand::rngs::StdRng as rand::SeedableRng>::from_os_rng(),
    )
}

fn port_lease(port: &ObservedPort, pod_uid: &impl Fn(&str, &str) -> String) -> Option<Lease> {
    let (mac, ips) = port.bindings().into_iter().next()?;
    let addresses = ips
        .iter()
        .map(IpAddr::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let uid = if port.is_ours() {
        holder::port_holder(&port.external_ids).unwrap_or_else(|| {
            let owner = port.external_ids.get(ids::POD);
            owner
                .and_then(|o| o.split_once('/'))
                .map(|(ns, name)| pod_uid(ns, name))
                .unwrap_or_default()
        })
    } else {
        FOREIGN_PORT_OWNER.to_owned()
    };
    lease(
        &port.switch,
        NicKey::from(port.name.as_str()),
        uid,
        &addresses,
        &mac.map(|m| m.to_string()).unwrap_or_default(),
    )
}

fn lease(subnet: &str, key: NicKey, uid: String, addresses: &str, mac: &str) -> Option<Lease> {
    let parsed: DualAddress = parse_ip_address(addresses).ok()?;
    Some(Lease {
        subnet: subnet.to_owned(),
        key,
        uid,
        generation: 0,
        v4: parsed.v4,
        v6: parsed.v6,
        mac: MacAddress::parse(mac).ok(),
    })
}

/// Releases every nic portkeeper holds for a pod that no longer exists (or was recreated under
/// the same name, for pods that do not keep their identity), and deletes portkeeper's own
/// ports and IP resources that nothing holds. Never touches objects without portkeeper's vendor
/// id or ownership annotation.
pub async fn collect_garbage<N: Northbound>(ctx: &Arc<Context<N>>) -> Result<usize, Error> {
    let mut released = 0;
    for record in ctx.engine.snapshot().records {
        let lease = record.lease;
        if lease.uid == FOREIGN_PORT_OWNER {
            continue;
        }
        let Some((name, namespace, provider)) = nic::holder_of(&ctx.stores, &lease) else {
            continue;
        };
        let allocated = NetworkKeys::for_provider(&provider).allocated;
        let _guard = ctx.locks.lock(lease.key.as_str()).await;
        let current = ctx.stores.pod(&namespace, &name);
        let orphaned = match &current {
            None => true,
            Some(p) => {
                p.uid().as_deref() != Some(lease.uid.as_str())
                    && p.annotations().get(&allocated).map(String::as_str) != Some("true")
            }
        };
        if !orphaned || ctx.engine.lease(&lease.key) != Some(lease.clone()) {
            continue;
        }
        // A workload's retained identity and a reservation wait for their pod.
        if holder::keeps_identity(ctx, &lease)
            || nic::reserve::reserved_subnet(&ctx.stores, &lease.key).is_some()
        {
            continue;
        }
        nic::release(ctx, &lease.key, Some(&lease.uid)).await?;
        released += 1;
        ctx.metrics
            .garbage_collected
            .get_or_create(&crate::metrics::ReasonLabel {
                reason: "nic".into(),
            })
            .inc();
    }
    released += collect_unheld(ctx).await?;
    Ok(released)
}

/// Ports and IP resources of portkeeper that the engine does not hold (their nic was released
/// while a write failed half-way).
async fn collect_unheld<N: Northbound>(ctx: &Arc<Context<N>>) -> Result<usize, Error> {
    let mut removed = 0;
    let owner_gone = |owner: Option<&String>| {
        owner
            .and_then(|o| o.split_once('/'))
            .is_some_and(|(ns, name)| ctx.stores.pod(ns, name).is_none())
    };
    for port in ctx.nb.ports() {
        if !port.is_ours()
            || ctx
                .engine
                .lease(&NicKey::from(port.name.as_str()))
                .is_some()
        {
            continue;
        }
        if owner_gone(port.external_ids.get(ids::POD)) {
            let _guard = ctx.locks.lock(&port.name).await;
            ctx.nb.delete_port(&port.name).await?;
            removed += 1;
        }
    }
    let api: Api<IP> = Api::all(ctx.client.clone());
    for ip in ctx.stores.ips.state() {
        let name = ip.name_any();
        if !ip.annotations().contains_key(POD_UID)
            || ctx.engine.lease(&NicKey::from(name.as_str())).is_some()
        {
            continue;
        }
        let owner = format!("{}/{}", ip.spec.namespace, ip.spec.pod_name);
        if owner_gone(Some(&owner)) {
            let _guard = ctx.locks.lock(&name).await;
            match api.delete(&name, &Default::default()).await {
                Ok(_) => removed += 1,
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(removed)
}

/// Logs what the rebuild could not take as given.
pub fn report(report: &RebuildReport) {
    for c in &report.conflicts {
        tracing::warn!(kept = %c.kept.lease.key, kept_source = ?c.kept.source,
            rejected = %c.rejected.lease.key, rejected_source = ?c.rejected.source, on = ?c.on,
            "rebuild: two records claim one address, MAC or key; the lower-ranked one is left out");
    }
    for e in &report.rejected_specs {
        tracing::warn!(error = %e, "rebuild: spec refused");
    }
    for (r, e) in &report.unplaced {
        tracing::warn!(nic = %r.lease.key, error = %e, "rebuild: record fits no subnet");
    }
}

/// The Warning Event text for each pod a rebuild conflict involves: (namespace, pod, message).
/// Both sides are told: the kept holder keeps the address, the other has lost it and will be
/// reallocated or collected.
pub fn conflict_notices(
    report: &RebuildReport,
    provider_of: impl Fn(&str) -> String,
) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for c in &report.conflicts {
        let on = match c.on {
            portkeeper_engine::ConflictOn::Address(ip) => {
                format!("{ip} in subnet {}", c.kept.lease.subnet)
            }
            portkeeper_engine::ConflictOn::Mac(mac) => format!("MAC {mac}"),
            portkeeper_engine::ConflictOn::Key => format!("nic {}", c.kept.lease.key),
        };
        let (kept, lost) = (&c.kept, &c.rejected);
        let sides = [
            (
                kept,
                format!(
                    "AddressConflict: at start two holders claimed {on}: {} (from {:?}) keeps it, {} (from {:?}) is left out",
                    kept.lease.key, kept.source, lost.lease.key, lost.source
                ),
            ),
            (
                lost,
                format!(
                    "AddressConflict: at start two holders claimed {on}: {} (from {:?}) lost it to {} (from {:?}); it is allocated again or collected",
                    lost.lease.key, lost.source, kept.lease.key, kept.source
                ),
            ),
        ];
        for (record, message) in sides {
            let provider = provider_of(&record.lease.subnet);
            if let Some((name, namespace)) = nic::split(&record.lease.key, &provider) {
                out.push((namespace.to_owned(), name.to_owned(), message));
            }
        }
    }
    out
}

/// Publishes [`conflict_notices`] as Warning Events on the pods that exist.
pub async fn announce_conflicts<N: Northbound>(ctx: &Context<N>, report: &RebuildReport) {
    let provider_of = |subnet: &str| nic::provider_of(&ctx.stores, subnet);
    for (namespace, name, message) in conflict_notices(report, provider_of) {
        if let Some(p) = ctx.stores.pod(&namespace, &name) {
            let rejection = crate::error::Rejection {
                reason: crate::error::RejectReason::AddressConflict,
                message,
            };
            ctx.warn(&p.object_ref(&()), "Rebuild", &rejection).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ovn::port_spec;

    fn no_pods(_: &str, _: &str) -> String {
        String::new()
    }

    #[test]
    fn our_port_is_a_record_of_its_pod_uid() {
        let mut spec = port_spec(
            "web.shop",
            "net1",
            "shop/web",
            "0a:00:00:00:00:02 10.0.0.2 fd00::2".into(),
            false,
        );
        spec.external_ids
            .insert(nic::PORT_POD_UID.into(), "u-1".into());
        let port = ObservedPort {
            name: spec.name.clone(),
            switch: spec.switch.clone(),
            addresses: vec![spec.addresses.clone()],
            external_ids: spec.external_ids.clone(),
            ..Default::default()
        };
        let lease = port_lease(&port, &no_pods).unwrap();
        assert_eq!(lease.key.as_str(), "web.shop");
        assert_eq!(lease.uid, "u-1");
        assert_eq!(lease.subnet, "net1");
        assert_eq!(lease.v4.unwrap().to_string(), "10.0.0.2");
        assert_eq!(lease.v6.unwrap().to_string(), "fd00::2");
        assert_eq!(lease.mac.unwrap().to_string(), "0a:00:00:00:00:02");
    }

    #[test]
    fn a_port_of_another_system_is_held_by_the_foreign_owner() {
        let port = ObservedPort {
            name: "legacy".into(),
            switch: "net1".into(),
            addresses: vec!["0a:00:00:00:00:09 10.0.0.9".into()],
            ..Default::default()
        };
        let lease = port_lease(&port, &no_pods).unwrap();
        assert_eq!(lease.uid, FOREIGN_PORT_OWNER);
        assert_eq!(lease.key.as_str(), "legacy");
    }

    #[test]
    fn a_port_without_a_recorded_uid_takes_the_uid_of_its_pod() {
        let port = ObservedPort {
            name: "web.shop".into(),
            switch: "net1".into(),
            addresses: vec!["0a:00:00:00:00:02 10.0.0.2".into()],
            external_ids: [("vendor", VENDOR_ID), ("pod", "shop/web")]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            ..Default::default()
        };
        let uid = |ns: &str, name: &str| format!("{ns}/{name}-uid");
        assert_eq!(port_lease(&port, &uid).unwrap().uid, "shop/web-uid");
    }

    #[test]
    fn ports_without_addresses_are_no_record() {
        let port = ObservedPort {
            name: "r".into(),
            switch: "net1".into(),
            addresses: vec!["router".into()],
            ..Default::default()
        };
        assert!(port_lease(&port, &no_pods).is_none());
        assert!(lease("net1", NicKey::from("x"), String::new(), "not-an-ip", "").is_none());
    }

    #[test]
    fn a_rebuild_conflict_tells_both_pods() {
        let record = |key: &str, source| Record {
            lease: lease(
                "net1",
                NicKey::from(key),
                format!("{key}-uid"),
                "10.0.0.5",
                "",
            )
            .unwrap(),
            source,
        };
        let report = RebuildReport {
            conflicts: vec![portkeeper_engine::RecordConflict {
                kept: record("old.shop", RecordSource::IpResource),
                rejected: record("new.shop", RecordSource::PodAnnotation),
                on: portkeeper_engine::ConflictOn::Address("10.0.0.5".parse().unwrap()),
            }],
            ..Default::default()
        };
        let notices = conflict_notices(&report, |_| "ovn".to_owned());
        assert_eq!(notices.len(), 2);
        for (namespace, name, message) in &notices {
            assert_eq!(namespace, "shop");
            assert!(message.contains("10.0.0.5 in subnet net1"), "{message}");
            assert!(
                message.contains("old.shop") && message.contains("new.shop"),
                "{message}"
            );
            assert!(message.starts_with("AddressConflict"), "{name}: {message}");
        }
        assert_eq!(notices[0].1, "old");
        assert!(notices[1].2.contains("lost it"));
    }

    const VENDOR_ID: &str = crate::ovn::VENDOR;
}
