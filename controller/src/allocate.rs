//! Claiming a nic's addresses from the engine, checked against everything the engine may not
//! know about: ports on the switch that portkeeper did not make, and other IP resources.
//!
//! A foreign holder found this way is recorded in the engine under its own name, so it is never
//! offered again; a dynamic request then simply takes the next address, a static one is refused.

use std::net::IpAddr;

use portkeeper_engine::{Claim, Engine, IpRequest, Lease, MacRequest, NicKey};

use crate::error::{RejectReason, Rejection};
use crate::ovn::Northbound;

/// The engine owner id of addresses held by ports portkeeper did not make.
pub const FOREIGN_PORT_OWNER: &str = "ovn-port";

/// How many foreign holders one dynamic claim may step over before giving up (each is recorded,
/// so a retry continues where this one stopped).
const MAX_FOREIGN_SKIPS: usize = 64;

/// Who else holds an address, outside the engine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ForeignHolder {
    /// An OVN port on the same switch (or, for a MAC, anywhere).
    Port(String),
    /// Another IP resource.
    IpResource(String),
}

impl std::fmt::Display for ForeignHolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ForeignHolder::Port(p) => write!(f, "OVN port {p}"),
            ForeignHolder::IpResource(ip) => write!(f, "IP resource {ip}"),
        }
    }
}

/// Claims `claim` in the engine and checks the result against the Northbound ports and the IP
/// resources (`ip_resource_holder(subnet, address, except)` names another IP resource holding
/// the address). On success the lease is the nic's, conflict-free everywhere portkeeper looks.
pub fn claim_checked<N: Northbound>(
    engine: &Engine,
    nb: &N,
    claim: &Claim,
    ip_resource_holder: impl Fn(&str, IpAddr, &str) -> Option<String>,
) -> Result<Lease, Rejection> {
    let own = claim.key.as_str();
    for _ in 0..MAX_FOREIGN_SKIPS {
        let before = engine.lease(&claim.key);
        let lease = engine.claim(claim)?;
        let Some((address, holder)) = foreign_holder(nb, &lease, own, &ip_resource_holder) else {
            return Ok(lease);
        };
        if before.as_ref() != Some(&lease) {
            engine
                .release(&claim.key, &lease.owner())
                .expect("a lease just granted is releasable by its owner");
        }
        if let Held::Ip(ip) = address {
            record_foreign(engine, &lease.subnet, ip, &holder);
        }
        if fixed(claim, address) || before.is_some() {
            return Err(conflict(&lease, address, &holder, own));
        }
    }
    Err(Rejection {
        reason: RejectReason::AcquireAddressFailed,
        message: format!(
            "NoAvailableAddress: more than {MAX_FOREIGN_SKIPS} addresses in subnet {} are held by ports outside portkeeper; retrying",
            claim.subnet
        ),
    })
}

/// What [`claim_checked`] would do with `claim` now, changing nothing: for admission, which
/// refuses a request before its pod exists, with the message its Event would carry. A foreign
/// holder refuses only what the claim cannot step over (a static address or MAC).
pub fn check_claim<N: Northbound>(
    engine: &Engine,
    nb: &N,
    claim: &Claim,
    ip_resource_holder: impl Fn(&str, IpAddr, &str) -> Option<String>,
) -> Result<Lease, Rejection> {
    let own = claim.key.as_str();
    let lease = engine.check(claim)?;
    match foreign_holder(nb, &lease, own, &ip_resource_holder) {
        Some((address, holder)) if fixed(claim, address) => {
            Err(conflict(&lease, address, &holder, own))
        }
        _ => Ok(lease),
    }
}

#[derive(Clone, Copy, Debug)]
enum Held {
    Ip(IpAddr),
    Mac,
}

/// Whether the claim asked for exactly the held address or MAC (so it cannot take another).
fn fixed(claim: &Claim, held: Held) -> bool {
    match held {
        Held::Ip(_) => !matches!(claim.ip, IpRequest::Dynamic | IpRequest::Pools(_)),
        Held::Mac => matches!(claim.mac, MacRequest::Static(_)),
    }
}

fn conflict(lease: &Lease, held: Held, holder: &ForeignHolder, own: &str) -> Rejection {
    let what = match held {
        Held::Ip(ip) => ip.to_string(),
        Held::Mac => format!(
            "MAC {}",
            lease.mac.map(|m| m.to_string()).unwrap_or_default()
        ),
    };
    Rejection {
        reason: RejectReason::AddressConflict,
        message: format!(
            "AddressConflict: {what} in subnet {} is held by {holder}; {own} cannot take it",
            lease.subnet
        ),
    }
}

fn foreign_holder<N: Northbound>(
    nb: &N,
    lease: &Lease,
    own: &str,
    ip_resource_holder: &impl Fn(&str, IpAddr, &str) -> Option<String>,
) -> Option<(Held, ForeignHolder)> {
    let addresses: Vec<IpAddr> = lease.addresses().addresses().collect();
    for ip in &addresses {
        if let Some(port) = nb
            .ip_holders(&lease.subnet, *ip)
            .into_iter()
            .find(|p| p != own)
        {
            return Some((Held::Ip(*ip), ForeignHolder::Port(port)));
        }
    }
    for ip in &addresses {
        if let Some(holder) = ip_resource_holder(&lease.subnet, *ip, own) {
            return Some((Held::Ip(*ip), ForeignHolder::IpResource(holder)));
        }
    }
    let mac = lease.mac?;
    nb.mac_holders(mac)
        .into_iter()
        .find(|p| p != own)
        .map(|p| (Held::Mac, ForeignHolder::Port(p)))
}

/// Records an address held outside the engine so it is never handed out. The key is the
/// holder's name (a port or IP resource name), which cannot collide with a pod nic key
/// unless it is that nic's own record.
fn record_foreign(engine: &Engine, subnet: &str, ip: IpAddr, holder: &ForeignHolder) {
    let name = match holder {
        ForeignHolder::Port(p) | ForeignHolder::IpResource(p) => p,
    };
    let mut address = portkeeper_engine::DualAddress::default();
    address.set(ip);
    let claim = Claim {
        ip: IpRequest::Static(address),
        mac: MacRequest::None,
        ..Claim::dynamic(subnet, NicKey::from(name.as_str()), FOREIGN_PORT_OWNER)
    };
    if let Err(e) = engine.claim(&claim) {
        tracing::warn!(%subnet, %ip, holder = %name, error = %e, "could not record a foreign holder");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ovn::memory::MemoryNb;
    use portkeeper_engine::{SubnetSpec, parse::parse_ip_address};

    fn engine() -> Engine {
        let e = Engine::new();
        e.upsert_subnet(&SubnetSpec {
            name: "net1".into(),
            cidr_block: "10.0.0.0/24".into(),
            ..Default::default()
        })
        .unwrap();
        e
    }

    fn none(_: &str, _: IpAddr, _: &str) -> Option<String> {
        None
    }

    #[test]
    fn dynamic_claim_steps_over_foreign_ports() {
        let (e, nb) = (engine(), MemoryNb::default());
        nb.add_foreign("router-thing", "net1", "0a:00:00:00:00:01 10.0.0.2");
        nb.add_foreign("other", "net1", "0a:00:00:00:00:02 10.0.0.3");
        let claim = Claim::dynamic("net1", NicKey::new("a", "ns", None), "u1");
        let lease = claim_checked(&e, &nb, &claim, none).unwrap();
        assert_eq!(lease.v4.unwrap().to_string(), "10.0.0.4");
        // The foreign holders are now known to the engine.
        assert!(e.lease(&NicKey::from("router-thing")).is_some());
        let second = Claim::dynamic("net1", NicKey::new("b", "ns", None), "u2");
        assert_eq!(
            claim_checked(&e, &nb, &second, none)
                .unwrap()
                .v4
                .unwrap()
                .to_string(),
            "10.0.0.5"
        );
    }

    #[test]
    fn static_claim_on_foreign_port_is_a_conflict_and_changes_nothing() {
        let (e, nb) = (engine(), MemoryNb::default());
        nb.add_foreign("legacy", "net1", "0a:00:00:00:00:01 10.0.0.9");
        let mut claim = Claim::dynamic("net1", NicKey::new("a", "ns", None), "u1");
        claim.ip = IpRequest::Static(parse_ip_address("10.0.0.9").unwrap());
        let r = claim_checked(&e, &nb, &claim, none).unwrap_err();
        assert_eq!(r.reason, RejectReason::AddressConflict);
        assert!(r.message.contains("10.0.0.9"), "{}", r.message);
        assert!(r.message.contains("net1"), "{}", r.message);
        assert!(r.message.contains("OVN port legacy"), "{}", r.message);
        assert_eq!(e.lease(&claim.key), None);
    }

    #[test]
    fn another_ip_resource_is_a_conflict() {
        let (e, nb) = (engine(), MemoryNb::default());
        let mut claim = Claim::dynamic("net1", NicKey::new("a", "ns", None), "u1");
        claim.ip = IpRequest::Static(parse_ip_address("10.0.0.7").unwrap());
        let holder = |s: &str, ip: IpAddr, except: &str| {
            (s == "net1" && ip.to_string() == "10.0.0.7" && except != "reserved.ns")
                .then(|| "reserved.ns".to_owned())
        };
        let r = claim_checked(&e, &nb, &claim, holder).unwrap_err();
        assert!(
            r.message.contains("IP resource reserved.ns"),
            "{}",
            r.message
        );
        assert_eq!(e.lease(&claim.key), None);
    }

    #[test]
    fn own_port_is_not_a_conflict() {
        let (e, nb) = (engine(), MemoryNb::default());
        nb.add_foreign("a.ns", "net1", "0a:00:00:00:00:01 10.0.0.2");
        let claim = Claim::dynamic("net1", NicKey::new("a", "ns", None), "u1");
        assert_eq!(
            claim_checked(&e, &nb, &claim, none)
                .unwrap()
                .v4
                .unwrap()
                .to_string(),
            "10.0.0.2"
        );
    }

    #[test]
    fn the_check_refuses_what_the_claim_refuses_and_changes_nothing() {
        let (e, nb) = (engine(), MemoryNb::default());
        nb.add_foreign("legacy", "net1", "0a:00:00:00:00:01 10.0.0.9");
        let mut claim = Claim::dynamic("net1", NicKey::new("a", "ns", None), "u1");
        claim.ip = IpRequest::Static(parse_ip_address("10.0.0.9").unwrap());
        let checked = check_claim(&e, &nb, &claim, none).unwrap_err();
        assert_eq!(checked, claim_checked(&e, &nb, &claim, none).unwrap_err());
        // A dynamic claim steps over the foreign port: no refusal, and nothing recorded.
        let dynamic = Claim::dynamic("net1", NicKey::new("b", "ns", None), "u2");
        let before = e.snapshot();
        assert!(check_claim(&e, &nb, &dynamic, none).is_ok());
        assert_eq!(e.snapshot(), before);
        // Outside the subnet is the engine's refusal, with its message.
        claim.ip = IpRequest::Static(parse_ip_address("10.9.0.9").unwrap());
        let r = check_claim(&e, &nb, &claim, none).unwrap_err();
        assert_eq!(r.reason, RejectReason::AcquireAddressFailed);
        assert!(r.message.starts_with("AddressOutOfRange"), "{}", r.message);
    }

    #[test]
    fn static_mac_on_a_foreign_port_is_a_conflict() {
        let (e, nb) = (engine(), MemoryNb::default());
        nb.add_foreign("legacy", "other-switch", "0a:00:00:00:00:42 192.168.0.2");
        let mut claim = Claim::dynamic("net1", NicKey::new("a", "ns", None), "u1");
        claim.mac =
            MacRequest::Static(portkeeper_engine::MacAddress::parse("0a:00:00:00:00:42").unwrap());
        let r = claim_checked(&e, &nb, &claim, none).unwrap_err();
        assert_eq!(r.reason, RejectReason::AddressConflict);
        assert!(r.message.contains("MAC 0a:00:00:00:00:42"), "{}", r.message);
        assert_eq!(e.lease(&claim.key), None);
    }
}
