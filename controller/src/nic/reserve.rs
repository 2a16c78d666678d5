//! Reservations: an IP resource a user creates holds an address for a pod (or VM) that does not
//! exist yet, as in Kube-OVN (kube-ovn #3626, #2532). The IP resource is named like the nic it
//! reserves (`<pod>.<ns>`), names its Subnet, and may name the addresses and MAC; portkeeper
//! allocates it in the engine under the IP resource's own UID, fills in its spec and labels it
//! `ovn.kubernetes.io/ip_reserved=true`. The pod of that name then takes exactly those addresses
//! and that MAC (the engine hands a key's binding to its next holder), and when it goes the
//! reservation holds them again: its port goes, the IP resource and the address stay.

use std::collections::BTreeMap;

use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use portkeeper_api::{IP, annotations};
use portkeeper_engine::parse::parse_ip_address;
use portkeeper_engine::{Claim, FamilyRequest, IpRequest, Lease, MacAddress, MacRequest, NicKey};
use serde_json::json;

use super::holder::POD_UID;
use crate::allocate::claim_checked;
use crate::context::{Context, FIELD_MANAGER};
use crate::error::{Error, RejectReason, Rejection};
use crate::ovn::Northbound;
use crate::plan;
use crate::stores::Stores;

/// Whether an IP resource is a reservation: labelled `ip_reserved=true`, or written by hand (no
/// holder recorded by portkeeper, no `ip_reserved` label, no node) for a pod that does not exist.
/// An IP resource Kube-OVN wrote for a running pod is that pod's, not a reservation.
pub fn is_reservation(ip: &IP, stores: &Stores) -> bool {
    match ip
        .labels()
        .get(annotations::LABEL_IP_RESERVED)
        .map(String::as_str)
    {
        Some("true") => true,
        Some(_) => false,
        None => {
            !ip.annotations().contains_key(POD_UID)
                && ip.spec.node_name.is_empty()
                && stores.pod(&ip.spec.namespace, &ip.spec.pod_name).is_none()
        }
    }
}

/// The Subnet of the reservation of `key`, if the nic is reserved (its IP resource labelled
/// `ip_reserved=true`).
pub fn reserved_subnet(stores: &Stores, key: &NicKey) -> Option<String> {
    let ip = stores
        .ips
        .get(&kube::runtime::reflector::ObjectRef::new(key.as_str()))?;
    (ip.labels()
        .get(annotations::LABEL_IP_RESERVED)
        .map(String::as_str)
        == Some("true"))
    .then(|| ip.spec.subnet.clone())
}

/// The engine claim of a reservation: the addresses and MAC its spec names, else any.
pub fn claim(ip: &IP, uid: &str) -> Result<Claim, Rejection> {
    let invalid = |message: String| Rejection {
        reason: RejectReason::InvalidAnnotation,
        message,
    };
    let name = ip.name_any();
    if ip.spec.subnet.is_empty() {
        return Err(invalid(format!("IP {name}: spec.subnet is required")));
    }
    let addresses = ip.spec.addresses().join(",");
    let ip_request = if addresses.is_empty() {
        IpRequest::Dynamic
    } else {
        IpRequest::Static(
            parse_ip_address(&addresses).map_err(|e| invalid(format!("IP {name}: {e}")))?,
        )
    };
    let mac = if ip.spec.mac_address.is_empty() {
        MacRequest::Generate
    } else {
        MacRequest::Static(
            MacAddress::parse(&ip.spec.mac_address)
                .map_err(|e| invalid(format!("IP {name}: {e}")))?,
        )
    };
    Ok(Claim {
        subnet: ip.spec.subnet.clone(),
        key: NicKey::from(name.as_str()),
        uid: uid.to_owned(),
        ip: ip_request,
        family: FamilyRequest::Subnet,
        mac,
    })
}

/// Allocates a reservation (or confirms it) and writes what it holds into its IP resource.
/// A pod of its name holding the nic now keeps it.
pub async fn reserve<N: Northbound>(ctx: &Context<N>, ip: &IP) -> Result<(), Error> {
    let uid = ip.uid().unwrap_or_default();
    let key = NicKey::from(ip.name_any().as_str());
    let _guard = ctx.locks.lock(key.as_str()).await;
    let lease = match ctx.engine.lease(&key) {
        Some(lease) if lease.uid != uid => return Ok(()),
        Some(lease) => lease,
        None => {
            let claim = claim(ip, &uid)?;
            claim_checked(&ctx.engine, &ctx.nb, &claim, |subnet, address, except| {
                super::target::ip_resource_holder(&ctx.stores, subnet, address, except)
            })?
        }
    };
    record(ctx, ip, &lease).await
}

/// A reservation taken back from the pod that used it (deleted or finished): the engine binding
/// returns to the reservation's UID with the same addresses and MAC, and its IP resource says so
/// again. The caller removes the pod's port.
pub async fn hold_again<N>(ctx: &Context<N>, ip: &IP, lease: &Lease) -> Result<(), Error> {
    let uid = ip.uid().unwrap_or_default();
    let claim = Claim {
        subnet: lease.subnet.clone(),
        key: lease.key.clone(),
        uid,
        ip: IpRequest::Static(lease.addresses()),
        family: FamilyRequest::Subnet,
        mac: lease.mac.map_or(MacRequest::Generate, MacRequest::Static),
    };
    let held = ctx.engine.claim(&claim).map_err(Rejection::from)?;
    record(ctx, ip, &held).await
}

/// Writes what a reservation holds into its IP resource: the addresses and MAC, the
/// `ip_reserved=true` label, and the reservation as the holder.
async fn record<N>(ctx: &Context<N>, ip: &IP, lease: &Lease) -> Result<(), Error> {
    let holder = lease.uid.clone();
    let written = plan::ip_spec(&ip.spec.pod_name, &ip.spec.namespace, lease, None, "");
    let labels = BTreeMap::from([
        (annotations::LABEL_IP_RESERVED.to_owned(), "true".to_owned()),
        (annotations::LABEL_SUBNET.to_owned(), lease.subnet.clone()),
    ]);
    let unchanged = ip.annotations().get(POD_UID) == Some(&holder)
        && labels.iter().all(|(k, v)| ip.labels().get(k) == Some(v))
        && ip.spec.addresses() == written.addresses()
        && ip.spec.mac_address == written.mac_address;
    if unchanged {
        return Ok(());
    }
    // Empty fields are left out of the spec (the API server refuses empty strings).
    let body = json!({
        "metadata": { "labels": labels, "annotations": { POD_UID: holder } },
        "spec": written,
    });
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..Default::default()
    };
    Api::<IP>::all(ctx.client.clone())
        .patch(&ip.name_any(), &params, &Patch::Merge(body))
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use portkeeper_api::IPSpec;

    fn ip(spec: IPSpec) -> IP {
        IP::new("db-0.shop", spec)
    }

    #[test]
    fn a_reservation_claims_what_its_spec_names() {
        let spec = IPSpec {
            subnet: "net1".into(),
            pod_name: "db-0".into(),
            namespace: "shop".into(),
            v4_ip_address: "10.0.0.9".into(),
            mac_address: "0a:00:00:00:00:09".into(),
            ..Default::default()
        };
        let claim = claim(&ip(spec), "r-1").unwrap();
        assert_eq!(claim.key.as_str(), "db-0.shop");
        assert_eq!(claim.uid, "r-1");
        assert_eq!(
            claim.ip,
            IpRequest::Static(parse_ip_address("10.0.0.9").unwrap())
        );
        assert_eq!(
            claim.mac,
            MacRequest::Static(MacAddress::parse("0a:00:00:00:00:09").unwrap())
        );
        let any = claim_of(IPSpec {
            subnet: "net1".into(),
            ..Default::default()
        });
        assert_eq!(
            (any.ip, any.mac),
            (IpRequest::Dynamic, MacRequest::Generate)
        );
    }

    fn claim_of(spec: IPSpec) -> Claim {
        claim(&ip(spec), "r").unwrap()
    }

    #[test]
    fn a_bad_reservation_says_why() {
        let no_subnet = claim(&ip(IPSpec::default()), "r").unwrap_err();
        assert!(no_subnet.message.contains("spec.subnet is required"));
        let bad = claim(
            &ip(IPSpec {
                subnet: "net1".into(),
                v4_ip_address: "10.0.0.300".into(),
                ..Default::default()
            }),
            "r",
        )
        .unwrap_err();
        assert!(bad.message.contains("10.0.0.300"), "{}", bad.message);
    }
}
