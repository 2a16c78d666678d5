//! One subnet's state: its families, pools, holders and the rules for
//! choosing, taking and giving back addresses. Everything here runs under
//! the subnet's own lock; cluster-wide concerns (MACs, which subnet a key
//! lives in) are the engine's.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

use crate::error::{EngineError, Holding};
use crate::family::{Family, from_u128, to_u128};
use crate::hash::FastMap;
use crate::mac::MacAddress;
use crate::parse::{self, CidrBlock, DualAddress};
use crate::ranges::{RangeSet, ReleaseQueue};
use crate::request::{Claim, FamilyRequest, IpRequest, Lease, ListPick, NicKey, Owner};

/// The addressing half of a `kubeovn.io/v1` Subnet spec, as written in the
/// resource; [`Engine::upsert_subnet`](crate::Engine::upsert_subnet) parses it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SubnetSpec {
    /// The subnet (logical switch) name.
    pub name: String,
    /// `cidrBlock`: `v4`, `v6` or both, either order; empty for MAC-only.
    pub cidr_block: String,
    /// `gateway`: empty for the first usable address of each family.
    pub gateway: String,
    /// `excludeIps`: addresses and `a..b` ranges never handed out
    /// dynamically (they may still be claimed statically).
    pub exclude_ips: Vec<String>,
    /// The router port MAC of the subnet's gateway, reserved cluster-wide.
    pub gateway_mac: Option<MacAddress>,
}

/// The addressing half of a `kubeovn.io/v1` IPPool spec.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PoolSpec {
    /// The pool name.
    pub name: String,
    /// The subnet the pool is carved from (immutable).
    pub subnet: String,
    /// `ips`: addresses, `a..b` ranges or CIDRs, either family.
    pub ips: Vec<String>,
}

/// Why a holder no longer fits its subnet after an update.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StrandedReason {
    /// The address is outside the new CIDR (or is its network/broadcast).
    OutsideCidr,
    /// The subnet no longer has this family.
    FamilyRemoved,
    /// The address is now the gateway.
    IsGateway,
}

/// A holder whose address no longer fits its subnet. The engine keeps the
/// binding (so nothing is forgotten and nothing double-allocated) and
/// reports it, so the controller can re-address or release the nic.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Stranded {
    /// The holder.
    pub key: NicKey,
    /// The address.
    pub address: IpAddr,
    /// Why it no longer fits.
    pub reason: StrandedReason,
}

/// The parsed, validated form of a [`SubnetSpec`].
#[derive(Clone, Debug)]
pub(crate) struct SubnetConfig {
    pub(crate) spec: SubnetSpec,
    pub(crate) block: CidrBlock,
    pub(crate) gateway: [u128; 2],
    pub(crate) excluded: [RangeSet; 2],
}

/// The usable addresses of a CIDR: all but the network and broadcast (or
/// IPv6 all-ones) addresses, except for /31 and /127 point-to-point links.
pub(crate) fn usable(net: IpNet) -> (u128, u128) {
    let start = to_u128(net.network());
    let end = to_u128(net.broadcast());
    if net.max_prefix_len() - net.prefix_len() <= 1 {
        (start, end)
    } else {
        (start + 1, end - 1)
    }
}

impl SubnetConfig {
    pub(crate) fn parse(spec: &SubnetSpec) -> Result<SubnetConfig, EngineError> {
        let name = &spec.name;
        let invalid = |field: &'static str| {
            move |source| EngineError::InvalidSubnet {
                subnet: name.clone(),
                field,
                source,
            }
        };
        let block = parse::parse_cidr_block(&spec.cidr_block).map_err(invalid("cidrBlock"))?;
        let given = if spec.gateway.trim().is_empty() {
            DualAddress::default()
        } else {
            parse::parse_ip_address(&spec.gateway).map_err(invalid("gateway"))?
        };
        let mut gateway = [0u128; 2];
        for addr in given.addresses() {
            let family = Family::of(addr);
            let Some(net) = block.get(family) else {
                return Err(EngineError::GatewayFamily {
                    subnet: name.clone(),
                    gateway: addr,
                });
            };
            let (lo, hi) = usable(net);
            let value = to_u128(addr);
            if !(lo..=hi).contains(&value) {
                return Err(EngineError::GatewayOutsideSubnet {
                    subnet: name.clone(),
                    gateway: addr,
                    cidr: net.to_string(),
                });
            }
            gateway[family.index()] = value;
        }
        for family in Family::ALL {
            if let (Some(net), None) = (block.get(family), given.get(family)) {
                gateway[family.index()] = usable(net).0;
            }
        }
        let mut excluded = [RangeSet::default(), RangeSet::default()];
        for range in parse::parse_exclude_ips(&spec.exclude_ips).map_err(invalid("excludeIps"))? {
            let (s, e) = range.bounds();
            excluded[range.family().index()].insert_range(s, e);
        }
        Ok(SubnetConfig {
            spec: spec.clone(),
            block,
            gateway,
            excluded,
        })
    }
}

/// A named pool's parsed addresses, per family, before clipping.
#[derive(Clone, Debug)]
pub(crate) struct PoolConfig {
    pub(crate) spec: PoolSpec,
    pub(crate) ips: [RangeSet; 2],
}

/// One pool's share of one family: the addresses it owns, the never-used
/// free ones (handed out lowest first) and the released ones (handed out
/// oldest first, once `free` is empty). `free` and `released` together are
/// exactly the pool's addresses minus the gateway, excluded and held ones.
#[derive(Clone, Debug, Default)]
pub(crate) struct PoolFamily {
    pub(crate) ips: RangeSet,
    pub(crate) free: RangeSet,
    pub(crate) released: ReleaseQueue,
}

impl PoolFamily {
    fn available(&self) -> u128 {
        self.free.len() + self.released.len() as u128
    }

    fn peek(&self) -> Option<u128> {
        self.free.first().or_else(|| self.released.oldest())
    }

    fn take(&mut self, addr: u128) {
        if !self.free.remove(addr) {
            self.released.remove(addr);
        }
    }

    fn available_set(&self) -> RangeSet {
        let mut set = self.free.clone();
        set.insert_set(&self.released.to_set());
        set
    }
}

/// One family of a subnet.
#[derive(Clone, Debug)]
pub(crate) struct FamilyState {
    pub(crate) family: Family,
    pub(crate) net: IpNet,
    pub(crate) lo: u128,
    pub(crate) hi: u128,
    pub(crate) gateway: u128,
    pub(crate) excluded: RangeSet,
    pub(crate) default: PoolFamily,
    pub(crate) named: BTreeMap<String, PoolFamily>,
    next_seq: u64,
}

impl FamilyState {
    fn pool_of_mut(&mut self, addr: u128) -> &mut PoolFamily {
        match self.named.values_mut().find(|p| p.ips.contains(addr)) {
            Some(pool) => pool,
            None => &mut self.default,
        }
    }

    fn fits(&self, addr: u128) -> bool {
        (self.lo..=self.hi).contains(&addr) && addr != self.gateway
    }

    fn give_back(&mut self, addr: u128) {
        if self.fits(addr) && !self.excluded.contains(addr) {
            let seq = self.next_seq;
            self.next_seq += 1;
            self.pool_of_mut(addr).released.push(addr, seq);
        }
    }
}

/// A nic's binding inside its subnet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Binding {
    pub(crate) uid: String,
    pub(crate) generation: u64,
    pub(crate) addr: [Option<u128>; 2],
    pub(crate) mac: Option<MacAddress>,
}

/// Kube-OVN's status fields for a subnet or an IPPool.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AddressStatus {
    /// `v4AvailableIPs`.
    pub v4_available_ips: u128,
    /// `v4UsingIPs`.
    pub v4_using_ips: u128,
    /// `v6AvailableIPs`.
    pub v6_available_ips: u128,
    /// `v6UsingIPs`.
    pub v6_using_ips: u128,
    /// `v4AvailableIPRange`, e.g. `10.16.0.2-10.16.0.5,10.16.0.9`.
    pub v4_available_ip_range: String,
    /// `v4UsingIPRange`.
    pub v4_using_ip_range: String,
    /// `v6AvailableIPRange`.
    pub v6_available_ip_range: String,
    /// `v6UsingIPRange`.
    pub v6_using_ip_range: String,
}

impl AddressStatus {
    fn set(&mut self, family: Family, available: &RangeSet, using: &RangeSet) {
        let (a, u) = (available.len(), using.len());
        let (ar, ur) = (
            available.to_kube_string(family),
            using.to_kube_string(family),
        );
        match family {
            Family::V4 => {
                (self.v4_available_ips, self.v4_using_ips) = (a, u);
                (self.v4_available_ip_range, self.v4_using_ip_range) = (ar, ur);
            }
            Family::V6 => {
                (self.v6_available_ips, self.v6_using_ips) = (a, u);
                (self.v6_available_ip_range, self.v6_using_ip_range) = (ar, ur);
            }
        }
    }
}

/// Everything the engine knows about one subnet.
#[derive(Debug)]
pub(crate) struct SubnetState {
    /// The name, shared with the registries' entries.
    pub(crate) name: Arc<str>,
    pub(crate) config: SubnetConfig,
    pub(crate) families: [Option<FamilyState>; 2],
    pub(crate) held: [BTreeMap<u128, NicKey>; 2],
    pub(crate) nics: FastMap<NicKey, Binding>,
    pub(crate) pools: BTreeMap<String, PoolConfig>,
}

impl SubnetState {
    pub(crate) fn new(config: SubnetConfig) -> SubnetState {
        let mut state = SubnetState {
            name: config.spec.name.as_str().into(),
            config,
            families: [None, None],
            held: [BTreeMap::new(), BTreeMap::new()],
            nics: FastMap::default(),
            pools: BTreeMap::new(),
        };
        state.relayout();
        state
    }

    fn name(&self) -> &str {
        &self.config.spec.name
    }

    fn family(&self, family: Family) -> Option<&FamilyState> {
        self.families[family.index()].as_ref()
    }

    /// Recomputes every pool of every family from the config, the pools and
    /// the holders. Released addresses that stay available keep their place
    /// in the reuse order, whichever pool they now belong to. O(H + R) for
    /// H holders and R ranges.
    pub(crate) fn relayout(&mut self) {
        for family in Family::ALL {
            let old = self.families[family.index()].take();
            let Some(net) = self.config.block.get(family) else {
                continue;
            };
            let (lo, hi) = usable(net);
            let gateway = self.config.gateway[family.index()];
            let excluded = self.config.excluded[family.index()].clipped(lo, hi);
            let mut reserved = excluded.clone();
            reserved.insert(gateway);
            let mut default_ips = RangeSet::from_range(lo, hi);
            let mut named = BTreeMap::new();
            for (name, pool) in &self.pools {
                let ips = pool.ips[family.index()].clipped(lo, hi);
                default_ips.remove_set(&ips);
                named.insert(name.clone(), pool_family(ips, &reserved));
            }
            let mut state = FamilyState {
                family,
                net,
                lo,
                hi,
                gateway,
                excluded,
                default: pool_family(default_ips, &reserved),
                named,
                next_seq: old.as_ref().map_or(0, |o| o.next_seq),
            };
            for &addr in self.held[family.index()].range(lo..=hi).map(|(a, _)| a) {
                state.pool_of_mut(addr).free.remove(addr);
            }
            if let Some(old) = old {
                let mut entries: Vec<(u64, u128)> = old
                    .named
                    .values()
                    .chain(std::iter::once(&old.default))
                    .flat_map(|p| p.released.entries())
                    .collect();
                entries.sort_unstable();
                for (seq, addr) in entries {
                    let pool = state.pool_of_mut(addr);
                    if pool.free.remove(addr) {
                        pool.released.push(addr, seq);
                    }
                }
            }
            self.families[family.index()] = Some(state);
        }
    }

    /// Replaces the config; returns every holder that no longer fits.
    pub(crate) fn update_config(&mut self, config: SubnetConfig) -> Vec<Stranded> {
        self.config = config;
        self.relayout();
        self.stranded()
    }

    /// Holders whose address is outside the subnet or is its gateway.
    pub(crate) fn stranded(&self) -> Vec<Stranded> {
        let mut out = Vec::new();
        for family in Family::ALL {
            let held = &self.held[family.index()];
            let mut push = |addr: u128, key: &NicKey, reason| {
                out.push(Stranded {
                    key: key.clone(),
                    address: from_u128(family, addr),
                    reason,
                })
            };
            match self.family(family) {
                None => held
                    .iter()
                    .for_each(|(&a, k)| push(a, k, StrandedReason::FamilyRemoved)),
                Some(fam) => {
                    for (&a, k) in held.range(..fam.lo) {
                        push(a, k, StrandedReason::OutsideCidr);
                    }
                    if fam.hi < u128::MAX {
                        for (&a, k) in held.range(fam.hi + 1..) {
                            push(a, k, StrandedReason::OutsideCidr);
                        }
                    }
                    if let Some(k) = held.get(&fam.gateway) {
                        push(fam.gateway, k, StrandedReason::IsGateway);
                    }
                }
            }
        }
        out.sort();
        out
    }

    /// Adds or replaces a named pool. Pools of one subnet may not share an
    /// address, whatever the subnet's current CIDR, so that no later subnet
    /// change can make them overlap. Entries outside the subnet are kept but
    /// have no effect until the subnet covers them (as in Kube-OVN).
    pub(crate) fn upsert_pool(&mut self, pool: PoolConfig) -> Result<(), EngineError> {
        let name = &pool.spec.name;
        for (other_name, other) in self.pools.iter().filter(|(n, _)| *n != name) {
            for family in Family::ALL {
                if let Some((s, e)) =
                    pool.ips[family.index()].first_overlap(&other.ips[family.index()])
                {
                    return Err(EngineError::PoolOverlap {
                        pool: name.clone(),
                        other: other_name.clone(),
                        subnet: self.name().to_owned(),
                        range: RangeSet::from_range(s, e).to_kube_string(family),
                    });
                }
            }
        }
        self.pools.insert(name.clone(), pool);
        self.relayout();
        Ok(())
    }

    pub(crate) fn remove_pool(&mut self, name: &str) {
        if self.pools.remove(name).is_some() {
            self.relayout();
        }
    }

    fn wanted(&self, request: FamilyRequest) -> Result<Vec<Family>, EngineError> {
        match request {
            FamilyRequest::Subnet => Ok(Family::ALL
                .into_iter()
                .filter(|f| self.family(*f).is_some())
                .collect()),
            FamilyRequest::Only(family) if self.family(family).is_some() => Ok(vec![family]),
            FamilyRequest::Only(family) => Err(EngineError::FamilyMismatch {
                requested: family,
                subnet: self.name().to_owned(),
                protocol: self.config.block.protocol(),
            }),
        }
    }

    /// An address the key holds that still fits the subnet.
    fn kept(&self, existing: Option<&Binding>, family: Family) -> Option<u128> {
        let addr = existing?.addr[family.index()]?;
        self.family(family)?.fits(addr).then_some(addr)
    }

    /// Why `key` may not claim `addr` statically, if anything; cheap, so
    /// that list scans build an error only for the entry they report.
    fn static_problem<'a>(&'a self, addr: IpAddr, key: &NicKey) -> Option<StaticProblem<'a>> {
        let family = Family::of(addr);
        let value = to_u128(addr);
        let Some(fam) = self.family(family) else {
            return Some(StaticProblem::NoFamily);
        };
        if !fam.net.contains(&addr) {
            return Some(StaticProblem::OutsideCidr(fam.net));
        }
        if !(fam.lo..=fam.hi).contains(&value) {
            return Some(StaticProblem::NetworkOrBroadcast(fam.net));
        }
        if value == fam.gateway {
            return Some(StaticProblem::Gateway);
        }
        match self.held[family.index()].get(&value) {
            Some(holder) if holder != key => Some(StaticProblem::HeldBy(holder)),
            _ => None,
        }
    }

    /// Checks that `addr` may be claimed statically by `key`.
    fn check_static(&self, addr: IpAddr, key: &NicKey) -> Result<u128, EngineError> {
        let out_of_range = |reason: String| EngineError::AddressOutOfRange {
            address: addr,
            subnet: self.name().to_owned(),
            reason,
        };
        match self.static_problem(addr, key) {
            None => Ok(to_u128(addr)),
            Some(StaticProblem::NoFamily) => Err(out_of_range(format!(
                "the subnet has no {} CIDR",
                Family::of(addr)
            ))),
            Some(StaticProblem::OutsideCidr(net)) => Err(out_of_range(format!("outside {net}"))),
            Some(StaticProblem::NetworkOrBroadcast(net)) => Err(out_of_range(format!(
                "the network or broadcast address of {net}"
            ))),
            Some(StaticProblem::Gateway) => Err(EngineError::GatewayConflict {
                address: addr,
                subnet: self.name().to_owned(),
                key: key.clone(),
            }),
            Some(StaticProblem::HeldBy(holder)) => Err(EngineError::AddressConflict {
                address: addr,
                subnet: self.name().to_owned(),
                holder: holder.clone(),
                key: key.clone(),
            }),
        }
    }

    /// The static addresses of `entry` for the wanted families.
    fn static_addresses(
        &self,
        entry: &DualAddress,
        request: FamilyRequest,
        key: &NicKey,
    ) -> Result<[Option<u128>; 2], EngineError> {
        let mut out = [None, None];
        for addr in entry.addresses() {
            let family = Family::of(addr);
            if let FamilyRequest::Only(requested) = request
                && requested != family
            {
                return Err(EngineError::StaticFamilyMismatch {
                    address: addr,
                    requested,
                    subnet: self.name().to_owned(),
                });
            }
            out[family.index()] = Some(self.check_static(addr, key)?);
        }
        Ok(out)
    }

    /// Fills wanted families a static or list claim left open (Kube-OVN's
    /// dual-stack completion): the address held already, otherwise the
    /// default pool's next one.
    fn complete(
        &self,
        mut addrs: [Option<u128>; 2],
        wanted: &[Family],
        existing: Option<&Binding>,
        key: &NicKey,
    ) -> Result<[Option<u128>; 2], EngineError> {
        for &family in wanted {
            if addrs[family.index()].is_none() {
                addrs[family.index()] = Some(self.dynamic(family, existing, key)?);
            }
        }
        Ok(addrs)
    }

    fn dynamic(
        &self,
        family: Family,
        existing: Option<&Binding>,
        key: &NicKey,
    ) -> Result<u128, EngineError> {
        if let Some(addr) = self.kept(existing, family) {
            return Ok(addr);
        }
        self.family(family)
            .and_then(|f| f.default.peek())
            .ok_or_else(|| EngineError::NoAvailableAddress {
                family,
                subnet: self.name().to_owned(),
                key: key.clone(),
            })
    }

    /// Decides the addresses a claim gets, without changing anything.
    pub(crate) fn plan(
        &self,
        claim: &Claim,
        existing: Option<&Binding>,
    ) -> Result<[Option<u128>; 2], EngineError> {
        let key = &claim.key;
        let wanted = self.wanted(claim.family)?;
        match &claim.ip {
            IpRequest::MacOnly => Ok([None, None]),
            IpRequest::Dynamic => {
                let mut out = [None, None];
                for &family in &wanted {
                    out[family.index()] = Some(self.dynamic(family, existing, key)?);
                }
                Ok(out)
            }
            IpRequest::Static(addrs) => {
                let fixed = self.static_addresses(addrs, claim.family, key)?;
                self.complete(fixed, &wanted, existing, key)
            }
            IpRequest::List { entries, pick } => {
                let fixed = self.pick_entry(entries, *pick, claim.family, existing, key)?;
                let open = if claim.family == FamilyRequest::Subnet {
                    &wanted[..]
                } else {
                    &[]
                };
                self.complete(fixed, open, existing, key)
            }
            IpRequest::Pools(names) => self.pick_pool(names, &wanted, existing, key),
        }
    }

    fn entry_for(&self, entry: &DualAddress, request: FamilyRequest) -> DualAddress {
        match request {
            FamilyRequest::Subnet => *entry,
            FamilyRequest::Only(family) => {
                let mut out = DualAddress::default();
                if let Some(addr) = entry.get(family) {
                    out.set(addr);
                }
                out
            }
        }
    }

    fn pick_entry(
        &self,
        entries: &[DualAddress],
        pick: ListPick,
        request: FamilyRequest,
        existing: Option<&Binding>,
        key: &NicKey,
    ) -> Result<[Option<u128>; 2], EngineError> {
        match pick {
            ListPick::Ordinal { ordinal, start } => {
                let index = ordinal
                    .checked_sub(start)
                    .and_then(|i| usize::try_from(i).ok())
                    .filter(|&i| i < entries.len())
                    .ok_or_else(|| EngineError::OrdinalOutsideList {
                        ordinal,
                        start,
                        size: entries.len(),
                        subnet: self.name().to_owned(),
                        key: key.clone(),
                    })?;
                let entry = self.entry_for(&entries[index], request);
                match (entry.is_empty(), entries[index].addresses().next(), request) {
                    (true, Some(address), FamilyRequest::Only(requested)) => {
                        Err(EngineError::StaticFamilyMismatch {
                            address,
                            requested,
                            subnet: self.name().to_owned(),
                        })
                    }
                    (true, _, _) => Err(EngineError::OrdinalOutsideList {
                        ordinal,
                        start,
                        size: entries.len(),
                        subnet: self.name().to_owned(),
                        key: key.clone(),
                    }),
                    (false, _, _) => self.static_addresses(&entry, request, key),
                }
            }
            ListPick::FirstFree => {
                let candidates: Vec<DualAddress> = entries
                    .iter()
                    .map(|e| self.entry_for(e, request))
                    .filter(|e| !e.is_empty())
                    .collect();
                if let Some(held) = existing {
                    let owns = |e: &&DualAddress| {
                        e.addresses().all(|a| {
                            held.addr[Family::of(a).index()] == Some(to_u128(a))
                                && self.static_problem(a, key).is_none()
                        })
                    };
                    if let Some(entry) = candidates.iter().find(owns) {
                        return self.static_addresses(entry, request, key);
                    }
                }
                let usable =
                    |e: &&DualAddress| e.addresses().all(|a| self.static_problem(a, key).is_none());
                if let Some(entry) = candidates.iter().find(usable) {
                    return self.static_addresses(entry, request, key);
                }
                match candidates.as_slice() {
                    [only] => self.static_addresses(only, request, key),
                    _ => Err(EngineError::ListExhausted {
                        size: entries.len(),
                        subnet: self.name().to_owned(),
                        key: key.clone(),
                        holders: self.list_holders(&candidates),
                    }),
                }
            }
        }
    }

    fn list_holders(&self, entries: &[DualAddress]) -> Vec<Holding> {
        entries
            .iter()
            .flat_map(|e| e.addresses())
            .filter_map(|a| {
                self.held[Family::of(a).index()]
                    .get(&to_u128(a))
                    .map(|k| Holding {
                        address: a,
                        key: k.clone(),
                    })
            })
            .collect()
    }

    fn pick_pool(
        &self,
        names: &[String],
        wanted: &[Family],
        existing: Option<&Binding>,
        key: &NicKey,
    ) -> Result<[Option<u128>; 2], EngineError> {
        for name in names {
            if !self.pools.contains_key(name) {
                return Err(EngineError::UnknownPool { pool: name.clone() });
            }
        }
        let mut out = [None, None];
        let mut need = Vec::new();
        for &family in wanted {
            let fam = self.family(family).expect("wanted families exist");
            let in_listed = |addr: u128| {
                names
                    .iter()
                    .any(|n| fam.named.get(n).is_some_and(|p| p.ips.contains(addr)))
            };
            match self.kept(existing, family).filter(|&a| in_listed(a)) {
                Some(addr) => out[family.index()] = Some(addr),
                None => need.push(family),
            }
        }
        if need.is_empty() {
            return Ok(out);
        }
        let pool_has = |name: &String, family: Family| {
            self.family(family)
                .and_then(|f| f.named.get(name))
                .and_then(PoolFamily::peek)
        };
        let chosen = names
            .iter()
            .find(|n| need.iter().all(|&f| pool_has(n, f).is_some()))
            .ok_or_else(|| EngineError::PoolExhausted {
                family: need
                    .iter()
                    .copied()
                    .find(|&f| names.iter().all(|n| pool_has(n, f).is_none()))
                    .unwrap_or(need[0]),
                pools: names.join(","),
                subnet: self.name().to_owned(),
                key: key.clone(),
            })?;
        for family in need {
            out[family.index()] = pool_has(chosen, family);
        }
        Ok(out)
    }

    /// Applies a planned binding: takes new addresses before giving back
    /// old ones, so a nic moving within the subnet never gets its own old
    /// address back as the "next" one.
    pub(crate) fn commit(&mut self, key: &NicKey, binding: Binding) {
        let old = self.nics.get(key).map(|b| b.addr).unwrap_or([None, None]);
        for family in Family::ALL {
            let i = family.index();
            let (before, after) = (old[i], binding.addr[i]);
            if before == after {
                continue;
            }
            if let Some(addr) = after {
                if let Some(fam) = self.families[i].as_mut() {
                    fam.pool_of_mut(addr).take(addr);
                }
                self.held[i].insert(addr, key.clone());
            }
            if let Some(addr) = before {
                self.held[i].remove(&addr);
                if let Some(fam) = self.families[i].as_mut() {
                    fam.give_back(addr);
                }
            }
        }
        self.nics.insert(key.clone(), binding);
    }

    /// Compare-and-swap release: only the current owner and generation
    /// free the nic.
    pub(crate) fn release(&mut self, key: &NicKey, owner: &Owner) -> Result<Binding, EngineError> {
        let binding = self
            .nics
            .get(key)
            .ok_or_else(|| EngineError::NotHeld { key: key.clone() })?;
        if binding.uid != owner.uid {
            return Err(EngineError::StaleUid {
                key: key.clone(),
                subnet: self.name().to_owned(),
                held: binding.uid.clone(),
                given: owner.uid.clone(),
            });
        }
        if binding.generation != owner.generation {
            return Err(EngineError::StaleGeneration {
                key: key.clone(),
                subnet: self.name().to_owned(),
                held: binding.generation,
                given: owner.generation,
            });
        }
        let binding = self.nics.remove(key).expect("checked above");
        for family in Family::ALL {
            if let Some(addr) = binding.addr[family.index()] {
                self.held[family.index()].remove(&addr);
                if let Some(fam) = self.families[family.index()].as_mut() {
                    fam.give_back(addr);
                }
            }
        }
        Ok(binding)
    }

    /// The first holder of any of `addrs` other than `key`.
    pub(crate) fn holder_of_any(
        &self,
        addrs: &[Option<u128>; 2],
        key: &NicKey,
    ) -> Option<(IpAddr, NicKey)> {
        Family::ALL.into_iter().find_map(|family| {
            let addr = addrs[family.index()]?;
            let holder = self.held[family.index()].get(&addr)?;
            (holder != key).then(|| (from_u128(family, addr), holder.clone()))
        })
    }

    pub(crate) fn lease(&self, key: &NicKey, binding: &Binding) -> Lease {
        let get = |family: Family| binding.addr[family.index()].map(|a| from_u128(family, a));
        Lease {
            subnet: self.name().to_owned(),
            key: key.clone(),
            uid: binding.uid.clone(),
            generation: binding.generation,
            v4: get(Family::V4).map(|a| match a {
                IpAddr::V4(v4) => v4,
                IpAddr::V6(_) => unreachable!("v4 slot holds v4"),
            }),
            v6: get(Family::V6).map(|a| match a {
                IpAddr::V6(v6) => v6,
                IpAddr::V4(_) => unreachable!("v6 slot holds v6"),
            }),
            mac: binding.mac,
        }
    }

    pub(crate) fn leases(&self) -> Vec<Lease> {
        let mut out: Vec<Lease> = self.nics.iter().map(|(k, b)| self.lease(k, b)).collect();
        out.sort();
        out
    }

    /// Kube-OVN's subnet status: available = free and released addresses of
    /// every pool; using = held addresses that fit the subnet and are not
    /// excluded (Kube-OVN leaves excluded holders out of the subnet counts).
    pub(crate) fn status(&self) -> AddressStatus {
        let mut status = AddressStatus::default();
        for fam in self.families.iter().flatten() {
            let mut available = fam.default.available_set();
            for pool in fam.named.values() {
                available.insert_set(&pool.available_set());
            }
            let mut using = RangeSet::default();
            for (&addr, _) in self.held[fam.family.index()].range(fam.lo..=fam.hi) {
                if addr != fam.gateway && !fam.excluded.contains(addr) {
                    using.insert(addr);
                }
            }
            debug_assert_eq!(
                available.len(),
                fam.default.available()
                    + fam.named.values().map(PoolFamily::available).sum::<u128>()
            );
            status.set(fam.family, &available, &using);
        }
        status
    }

    /// Kube-OVN's IPPool status: using counts every holder inside the pool,
    /// excluded ones included (e2e "should not make an excluded IPPool
    /// address available after release").
    pub(crate) fn pool_status(&self, name: &str) -> Option<AddressStatus> {
        self.pools.get(name)?;
        let mut status = AddressStatus::default();
        for fam in self.families.iter().flatten() {
            let pool = fam.named.get(name)?;
            let mut using = RangeSet::default();
            for (s, e) in pool.ips.ranges() {
                for (&addr, _) in self.held[fam.family.index()].range(s..=e) {
                    if addr != fam.gateway {
                        using.insert(addr);
                    }
                }
            }
            status.set(fam.family, &pool.available_set(), &using);
        }
        Some(status)
    }
}

/// What stands in the way of a static claim.
enum StaticProblem<'a> {
    NoFamily,
    OutsideCidr(IpNet),
    NetworkOrBroadcast(IpNet),
    Gateway,
    HeldBy(&'a NicKey),
}

fn pool_family(ips: RangeSet, reserved: &RangeSet) -> PoolFamily {
    let mut free = ips.clone();
    free.remove_set(reserved);
    PoolFamily {
        ips,
        free,
        released: ReleaseQueue::default(),
    }
}

impl PoolConfig {
    pub(crate) fn parse(spec: &PoolSpec) -> Result<PoolConfig, EngineError> {
        let mut ips = [RangeSet::default(), RangeSet::default()];
        for entry in &spec.ips {
            let range =
                parse::parse_pool_entry(entry).map_err(|source| EngineError::InvalidPool {
                    pool: spec.name.clone(),
                    source,
                })?;
            let (s, e) = range.bounds();
            ips[range.family().index()].insert_range(s, e);
        }
        Ok(PoolConfig {
            spec: spec.clone(),
            ips,
        })
    }
}
