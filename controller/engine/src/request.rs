//! What callers ask of the engine and what it hands back.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use crate::family::Family;
use crate::mac::MacAddress;
use crate::parse::DualAddress;

/// A nic's identity: `<pod-or-vm>.<namespace>[.<provider>]`, which is also
/// the OVN logical switch port name and the IP resource name. Every
/// allocation is keyed by it, so a recreated StatefulSet pod or a restarted
/// VM finds its addresses again.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NicKey(Arc<str>);

impl NicKey {
    /// Builds the key the way Kube-OVN does: the provider `ovn` (the default
    /// network) is left out, any other provider is appended.
    pub fn new(name: &str, namespace: &str, provider: Option<&str>) -> NicKey {
        match provider {
            None | Some("ovn") => NicKey(format!("{name}.{namespace}").into()),
            Some(p) => NicKey(format!("{name}.{namespace}.{p}").into()),
        }
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for NicKey {
    /// Takes an existing port or IP resource name as it is.
    fn from(name: &str) -> Self {
        NicKey(name.into())
    }
}

impl fmt::Display for NicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which families a claim wants.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FamilyRequest {
    /// Every family of the subnet (no `ip_family` annotation). A static or
    /// list request that names only one family of a dual-stack subnet gets
    /// the other one allocated dynamically, as Kube-OVN does.
    #[default]
    Subnet,
    /// Only this family (`ip_family`); an error on a subnet without it.
    Only(Family),
}

/// How the IP addresses are chosen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IpRequest {
    /// Lowest free address of the subnet's default pool, reusing released
    /// addresses last, oldest first. An address the key already holds is kept.
    Dynamic,
    /// `ip_address`: exactly these addresses.
    Static(DualAddress),
    /// `ip_pool` as a list of entries.
    List {
        /// The entries, in annotation order.
        entries: Vec<DualAddress>,
        /// How an entry is picked.
        pick: ListPick,
    },
    /// `ip_pool` naming IPPools (one from the annotation, or the namespace's
    /// pools in order): the first pool with room for every wanted family.
    /// Exhaustion is an error, never a fall-back to the rest of the subnet.
    Pools(Vec<String>),
    /// No address at all: a MAC-only (underlay without CIDR) nic.
    MacOnly,
}

/// How a nic picks its entry from an `ip_pool` list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListPick {
    /// Any workload but a StatefulSet: the entry already held, otherwise the
    /// first free entry in list order.
    FirstFree,
    /// A StatefulSet pod: entry `ordinal - start`. Kube-OVN ignores
    /// `spec.ordinals.start` here (kube-ovn-behavior §9.1); we do not.
    Ordinal {
        /// The pod's ordinal (the number after the last `-` of its name).
        ordinal: u64,
        /// The StatefulSet's `spec.ordinals.start` (0 when unset).
        start: u64,
    },
}

/// How the MAC is chosen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MacRequest {
    /// Keep the nic's MAC, or draw a random one unique in the cluster.
    #[default]
    Generate,
    /// `mac_address`: exactly this MAC (parse it with [`MacAddress::parse`]).
    Static(MacAddress),
    /// No MAC (an IPAM-only attachment whose MAC the other CNI picks).
    None,
}

/// A request to bind a nic to addresses in a subnet. Claiming again with
/// the same key returns the same addresses; a claim carrying a new UID
/// adopts the nic (a new incarnation of a StatefulSet pod or VM).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    /// The subnet to allocate in.
    pub subnet: String,
    /// The nic.
    pub key: NicKey,
    /// The UID of the owning Pod or VM.
    pub uid: String,
    /// How to pick the IPs.
    pub ip: IpRequest,
    /// Which families.
    pub family: FamilyRequest,
    /// How to pick the MAC.
    pub mac: MacRequest,
}

impl Claim {
    /// A dynamic claim for every family of the subnet with a generated MAC,
    /// the common case; adjust the public fields for the others.
    pub fn dynamic(subnet: &str, key: NicKey, uid: &str) -> Claim {
        Claim {
            subnet: subnet.to_owned(),
            key,
            uid: uid.to_owned(),
            ip: IpRequest::Dynamic,
            family: FamilyRequest::Subnet,
            mac: MacRequest::Generate,
        }
    }
}

/// A nic's binding: what a claim returns and what a snapshot lists.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Lease {
    /// The subnet.
    pub subnet: String,
    /// The nic.
    pub key: NicKey,
    /// The owner's UID.
    pub uid: String,
    /// The engine's sequence number of this binding. It changes whenever
    /// the owner UID, the addresses or the MAC change; a release must carry
    /// the current one.
    pub generation: u64,
    /// The IPv4 address, if any.
    pub v4: Option<Ipv4Addr>,
    /// The IPv6 address, if any.
    pub v6: Option<Ipv6Addr>,
    /// The MAC, if any.
    pub mac: Option<MacAddress>,
}

impl Lease {
    /// The addresses as one value.
    pub fn addresses(&self) -> DualAddress {
        DualAddress {
            v4: self.v4,
            v6: self.v6,
        }
    }

    /// The address of one family.
    pub fn address(&self, family: Family) -> Option<IpAddr> {
        self.addresses().get(family)
    }

    /// The owner as a release must name it.
    pub fn owner(&self) -> Owner {
        Owner {
            uid: self.uid.clone(),
            generation: self.generation,
        }
    }
}

/// The owner a release names: the UID and generation it was granted.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Owner {
    /// The owner's UID.
    pub uid: String,
    /// The binding's generation (see [`Lease::generation`]).
    pub generation: u64,
}

/// Where a rebuild record was read from. On a conflict the source ranked
/// first wins: IP resources are the durable claim, pod annotations the
/// running pods' word, OVN ports the last trace of a deleted pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RecordSource {
    /// A `kubeovn.io/v1` IP resource.
    IpResource,
    /// A pod's `ip_address`/`mac_address` annotations.
    PodAnnotation,
    /// An OVN logical switch port.
    OvnPort,
}

/// One observed binding fed to [`Engine::rebuild`](crate::Engine::rebuild).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Record {
    /// The binding.
    pub lease: Lease,
    /// Where it was observed.
    pub source: RecordSource,
}
