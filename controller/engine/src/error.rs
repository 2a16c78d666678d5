//! The engine's one error type. Every message names the address, the
//! subnet and, for conflicts, who holds it, so a user can act on the event.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use thiserror::Error;

use crate::family::Family;
use crate::mac::MacAddress;
use crate::parse::ParseError;
use crate::request::NicKey;

/// Who holds a MAC address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MacHolder {
    /// A nic's MAC.
    Nic {
        /// The nic key.
        key: NicKey,
        /// The subnet the nic is in.
        subnet: Arc<str>,
    },
    /// A subnet's gateway (router port) MAC.
    Gateway {
        /// The subnet.
        subnet: Arc<str>,
    },
}

impl fmt::Display for MacHolder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MacHolder::Nic { key, subnet } => write!(f, "{key} in subnet {subnet}"),
            MacHolder::Gateway { subnet } => write!(f, "the gateway of subnet {subnet}"),
        }
    }
}

/// An address and the nic holding it, for error listings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holding {
    /// The held address.
    pub address: IpAddr,
    /// Its holder.
    pub key: NicKey,
}

impl fmt::Display for Holding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} held by {}", self.address, self.key)
    }
}

fn list(holdings: &[Holding]) -> String {
    if holdings.is_empty() {
        return "none held".to_owned();
    }
    holdings
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Why the engine refused a request. Nothing changes when one is returned.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum EngineError {
    /// A Subnet spec field did not parse.
    #[error("subnet {subnet}: invalid {field}: {source}")]
    InvalidSubnet {
        /// The subnet.
        subnet: String,
        /// The spec field (`cidrBlock`, `gateway`, `excludeIps`).
        field: &'static str,
        /// The parse failure.
        source: ParseError,
    },
    /// The gateway is not a usable address of the subnet's CIDR.
    #[error("subnet {subnet}: gateway {gateway} is not a usable address of {cidr}")]
    GatewayOutsideSubnet {
        /// The subnet.
        subnet: String,
        /// The rejected gateway.
        gateway: IpAddr,
        /// The CIDR it should lie in.
        cidr: String,
    },
    /// The gateway names a family the subnet does not have.
    #[error("subnet {subnet}: gateway {gateway} has no matching CIDR in the cidrBlock")]
    GatewayFamily {
        /// The subnet.
        subnet: String,
        /// The rejected gateway.
        gateway: IpAddr,
    },
    /// No subnet of that name is known.
    #[error("subnet {subnet} does not exist")]
    UnknownSubnet {
        /// The subnet.
        subnet: String,
    },
    /// A subnet with holders cannot be removed.
    #[error("subnet {subnet} still has {holders} holder(s), for example {example}")]
    SubnetInUse {
        /// The subnet.
        subnet: String,
        /// How many nics hold addresses in it.
        holders: usize,
        /// One of them.
        example: NicKey,
    },
    /// An IPPool spec entry did not parse.
    #[error("ippool {pool}: invalid ips entry: {source}")]
    InvalidPool {
        /// The pool.
        pool: String,
        /// The parse failure.
        source: ParseError,
    },
    /// Two pools of one subnet share addresses.
    #[error("ippool {pool} has conflict IPs with ippool {other} in subnet {subnet}: {range}")]
    PoolOverlap {
        /// The pool being added.
        pool: String,
        /// The pool it overlaps.
        other: String,
        /// The subnet.
        subnet: String,
        /// The first shared range.
        range: String,
    },
    /// An IPPool's subnet is immutable.
    #[error("ippool {pool} belongs to subnet {subnet}; its subnet cannot change to {requested}")]
    PoolSubnetChanged {
        /// The pool.
        pool: String,
        /// Its subnet.
        subnet: String,
        /// The subnet asked for.
        requested: String,
    },
    /// No IPPool of that name is known.
    #[error("ippool {pool} does not exist")]
    UnknownPool {
        /// The pool.
        pool: String,
    },
    /// The IPPool belongs to another subnet than the one allocated in.
    #[error("ippool {pool} belongs to subnet {pool_subnet}, not to subnet {subnet}")]
    PoolInOtherSubnet {
        /// The pool.
        pool: String,
        /// The pool's subnet.
        pool_subnet: String,
        /// The subnet asked for.
        subnet: String,
    },
    /// A family was asked for that the subnet does not have.
    #[error("requested ip family {} does not match subnet {subnet} protocol {protocol}", requested.annotation_value())]
    FamilyMismatch {
        /// The requested family.
        requested: Family,
        /// The subnet.
        subnet: String,
        /// The subnet's protocol (`IPv4`, `IPv6`, `Dual`, `mac`).
        protocol: &'static str,
    },
    /// A static address of another family than the `ip_family` asked for.
    #[error(
        "static address {address} does not match the requested ip family {} in subnet {subnet}",
        requested.annotation_value()
    )]
    StaticFamilyMismatch {
        /// The address.
        address: IpAddr,
        /// The requested family.
        requested: Family,
        /// The subnet.
        subnet: String,
    },
    /// A gateway MAC already held by a nic or another gateway.
    #[error("subnet {subnet}: gateway MAC {mac} is already held by {holder}")]
    GatewayMacConflict {
        /// The subnet.
        subnet: String,
        /// The MAC.
        mac: MacAddress,
        /// Its holder.
        holder: MacHolder,
    },
    /// A static address outside the subnet's usable range.
    #[error("{address} is out of range of subnet {subnet} ({reason})")]
    AddressOutOfRange {
        /// The address.
        address: IpAddr,
        /// The subnet.
        subnet: String,
        /// Why it is not usable (outside the CIDR, network or broadcast address).
        reason: String,
    },
    /// A static address equal to the subnet's gateway.
    #[error("{address} is the gateway of subnet {subnet} and cannot be assigned to {key}")]
    GatewayConflict {
        /// The gateway address.
        address: IpAddr,
        /// The subnet.
        subnet: String,
        /// The requester.
        key: NicKey,
    },
    /// A static address held by another nic.
    #[error("{address} in subnet {subnet} is held by {holder}; {key} cannot take it")]
    AddressConflict {
        /// The address.
        address: IpAddr,
        /// The subnet.
        subnet: String,
        /// The current holder.
        holder: NicKey,
        /// The requester.
        key: NicKey,
    },
    /// The subnet's default pool has no free address of the family.
    #[error("no available {family} address in subnet {subnet} for {key}")]
    NoAvailableAddress {
        /// The family.
        family: Family,
        /// The subnet.
        subnet: String,
        /// The requester.
        key: NicKey,
    },
    /// None of the named IPPools has a free address of the family.
    #[error("no available {family} address in ippool(s) {pools} of subnet {subnet} for {key}")]
    PoolExhausted {
        /// The family.
        family: Family,
        /// The pools tried, in order.
        pools: String,
        /// The subnet.
        subnet: String,
        /// The requester.
        key: NicKey,
    },
    /// Every entry of an `ip_pool` list is taken or unusable.
    #[error("no available address in the ip_pool list of {size} entries in subnet {subnet} for {key}: {}", list(.holders))]
    ListExhausted {
        /// The list length.
        size: usize,
        /// The subnet.
        subnet: String,
        /// The requester.
        key: NicKey,
        /// Who holds the entries.
        holders: Vec<Holding>,
    },
    /// A StatefulSet ordinal has no entry in its `ip_pool` list.
    #[error(
        "no available address for {key}: ordinal {ordinal} with ordinals.start {start} has no entry in the ip_pool list of {size} entries in subnet {subnet}"
    )]
    OrdinalOutsideList {
        /// The pod's ordinal.
        ordinal: u64,
        /// The StatefulSet's `spec.ordinals.start`.
        start: u64,
        /// The list length.
        size: usize,
        /// The subnet.
        subnet: String,
        /// The requester.
        key: NicKey,
    },
    /// A static MAC held elsewhere or equal to a gateway MAC.
    #[error("MAC address {mac} is held by {holder}; {key} cannot take it")]
    MacConflict {
        /// The MAC.
        mac: MacAddress,
        /// Its holder.
        holder: MacHolder,
        /// The requester.
        key: NicKey,
    },
    /// The nic key already holds addresses in another subnet.
    #[error(
        "{key} holds addresses in subnet {holder_subnet}; release them before claiming in subnet {subnet}"
    )]
    KeyInOtherSubnet {
        /// The nic key.
        key: NicKey,
        /// Where it holds addresses.
        holder_subnet: String,
        /// Where it asked.
        subnet: String,
    },
    /// Release of a key that holds nothing.
    #[error("{key} holds no address")]
    NotHeld {
        /// The nic key.
        key: NicKey,
    },
    /// Release carrying another owner's UID: the nic was re-bound since.
    #[error(
        "release of {key} in subnet {subnet} by uid {given} ignored: it is now held by uid {held}"
    )]
    StaleUid {
        /// The nic key.
        key: NicKey,
        /// The subnet.
        subnet: String,
        /// The UID of the current binding.
        held: String,
        /// The UID the release carried.
        given: String,
    },
    /// Release carrying an old generation: the nic was re-bound since.
    #[error(
        "release of {key} in subnet {subnet} at generation {given} ignored: the binding is at generation {held}"
    )]
    StaleGeneration {
        /// The nic key.
        key: NicKey,
        /// The subnet.
        subnet: String,
        /// The current generation.
        held: u64,
        /// The generation the release carried.
        given: u64,
    },
}

/// Kube-OVN's name for a kind of failure, which users grep for in `AcquireAddressFailed`
/// events and which decides the Event reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// `CIDRInvalid`: a bad CIDR or gateway.
    CidrInvalid,
    /// `InvalidIPPool`.
    InvalidIpPool,
    /// `NotFound`: no such subnet or pool.
    NotFound,
    /// `SubnetInUse`.
    SubnetInUse,
    /// `IPFamilyMismatch`.
    IpFamilyMismatch,
    /// `AddressConflict`: another holder has it.
    AddressConflict,
    /// `AddressOutOfRange`.
    AddressOutOfRange,
    /// `NoAvailableAddress`.
    NoAvailableAddress,
    /// `NotHeld`.
    NotHeld,
    /// `StaleRelease`.
    StaleRelease,
}

impl ErrorKind {
    /// The Kube-OVN spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::CidrInvalid => "CIDRInvalid",
            ErrorKind::InvalidIpPool => "InvalidIPPool",
            ErrorKind::NotFound => "NotFound",
            ErrorKind::SubnetInUse => "SubnetInUse",
            ErrorKind::IpFamilyMismatch => "IPFamilyMismatch",
            ErrorKind::AddressConflict => "AddressConflict",
            ErrorKind::AddressOutOfRange => "AddressOutOfRange",
            ErrorKind::NoAvailableAddress => "NoAvailableAddress",
            ErrorKind::NotHeld => "NotHeld",
            ErrorKind::StaleRelease => "StaleRelease",
        }
    }
}

impl EngineError {
    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        use EngineError::*;
        match self {
            InvalidSubnet { .. } | GatewayOutsideSubnet { .. } | GatewayFamily { .. } => {
                ErrorKind::CidrInvalid
            }
            InvalidPool { .. } | PoolOverlap { .. } | PoolSubnetChanged { .. } => {
                ErrorKind::InvalidIpPool
            }
            UnknownSubnet { .. } | UnknownPool { .. } | PoolInOtherSubnet { .. } => {
                ErrorKind::NotFound
            }
            SubnetInUse { .. } => ErrorKind::SubnetInUse,
            FamilyMismatch { .. } | StaticFamilyMismatch { .. } => ErrorKind::IpFamilyMismatch,
            AddressOutOfRange { .. } => ErrorKind::AddressOutOfRange,
            GatewayMacConflict { .. }
            | GatewayConflict { .. }
            | AddressConflict { .. }
            | MacConflict { .. }
            | KeyInOtherSubnet { .. } => ErrorKind::AddressConflict,
            NoAvailableAddress { .. }
            | PoolExhausted { .. }
            | ListExhausted { .. }
            | OrdinalOutsideList { .. } => ErrorKind::NoAvailableAddress,
            NotHeld { .. } => ErrorKind::NotHeld,
            StaleUid { .. } | StaleGeneration { .. } => ErrorKind::StaleRelease,
        }
    }

    /// The Kube-OVN error name (`AddressConflict`, `NoAvailableAddress`,
    /// `AddressOutOfRange`, …) that users grep for in `AcquireAddressFailed`
    /// events.
    pub fn reason(&self) -> &'static str {
        self.kind().as_str()
    }
}
