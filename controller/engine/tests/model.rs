//! Model-based property test: random operation sequences run against the
//! engine and against a naive reference model (expanded sets and a
//! `BTreeMap<address, key>` per subnet family), compared after every step.
//!
//! The model decides every claim on its own, so a step checks the engine's
//! verdict (addresses, or the error's Kube-OVN reason), then the whole
//! state: bindings, one holder per address per subnet, one holder per MAC
//! in the cluster, status counters and range strings for every subnet and
//! pool, stranded holders, and after a rebuild that the rebuilt engine
//! equals the one it was taken from.
//!
//! `PROPTEST_CASES` overrides the default of 10,000 cases.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::IpAddr;

use portkeeper_engine::{
    AddressStatus, Claim, DualAddress, Engine, EngineError, Family, FamilyRequest, IpRequest,
    Lease, ListPick, MacAddress, MacRequest, NicKey, Owner, PoolSpec, Stranded, StrandedReason,
    SubnetSpec,
};
use proptest::prelude::*;
use rand::SeedableRng;
use rand::rngs::StdRng;

const SUBNETS: [&str; 2] = ["a", "b"];
const POOLS: [&str; 2] = ["p0", "p1"];
const V4_CIDRS: [&str; 3] = ["10.0.0.0/29", "10.0.0.0/28", "10.0.0.8/29"];
const V6_CIDRS: [&str; 3] = ["fd00::/125", "fd00::/124", "fd00::8/125"];
const STATIC_MACS: [&str; 3] = [
    "0a:00:00:00:00:01",
    "0a:00:00:00:00:02",
    "0a:00:00:00:00:03",
];
const V4_BASE: u128 = 0x0a00_0000;
const V6_BASE: u128 = 0xfd00 << 112;

fn base(family: Family) -> u128 {
    match family {
        Family::V4 => V4_BASE,
        Family::V6 => V6_BASE,
    }
}

fn to_ip(family: Family, value: u128) -> IpAddr {
    match family {
        Family::V4 => IpAddr::V4((value as u32).into()),
        Family::V6 => IpAddr::V6(value.into()),
    }
}

fn to_num(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(a) => u32::from(a).into(),
        IpAddr::V6(a) => a.into(),
    }
}

fn idx(family: Family) -> usize {
    match family {
        Family::V4 => 0,
        Family::V6 => 1,
    }
}

// ---------- Operations ----------

#[derive(Clone, Debug)]
enum IpOp {
    Dynamic,
    Static(Option<u8>, Option<u8>),
    List(Vec<(Option<u8>, Option<u8>)>, Option<(u8, u8)>),
    Pools(u8),
    MacOnly,
}

#[derive(Clone, Debug)]
enum Op {
    Subnet {
        s: usize,
        v4: Option<usize>,
        v6: Option<usize>,
        reverse: bool,
        gateway: bool,
        excludes: Vec<(bool, u8, u8)>,
    },
    Pool {
        p: usize,
        v4: Option<(u8, u8)>,
        v6: Option<(u8, u8)>,
    },
    RemovePool(usize),
    Claim {
        s: usize,
        k: u8,
        uid: u8,
        ip: IpOp,
        family: u8,
        mac: u8,
    },
    Release {
        k: u8,
        how: u8,
    },
    Rebuild,
}

/// Mostly subnet "a", so that sequences fill it and reuse released addresses.
fn subnet() -> impl Strategy<Value = usize> {
    prop_oneof![4 => Just(0usize), 1 => Just(1usize)]
}

fn offset() -> impl Strategy<Value = u8> {
    0u8..20
}

fn entry() -> impl Strategy<Value = (Option<u8>, Option<u8>)> {
    (
        proptest::option::of(offset()),
        proptest::option::of(offset()),
    )
        .prop_filter("an entry has an address", |(a, b)| {
            a.is_some() || b.is_some()
        })
}

fn ip_op() -> impl Strategy<Value = IpOp> {
    prop_oneof![
        4 => Just(IpOp::Dynamic),
        2 => entry().prop_map(|(a, b)| IpOp::Static(a, b)),
        2 => (
            proptest::collection::vec(entry(), 1..4),
            proptest::option::of((0u8..5, 0u8..3))
        )
            .prop_map(|(e, p)| IpOp::List(e, p)),
        2 => (1u8..4).prop_map(IpOp::Pools),
        1 => Just(IpOp::MacOnly),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (
            subnet(),
            proptest::option::weighted(0.8, 0usize..3),
            proptest::option::weighted(0.5, 0usize..3),
            any::<bool>(),
            any::<bool>(),
            proptest::collection::vec((any::<bool>(), offset(), 0u8..6), 0..3)
        )
            .prop_map(|(s, v4, v6, reverse, gateway, excludes)| Op::Subnet {
                s,
                v4,
                v6,
                reverse,
                gateway,
                excludes
            }),
        1 => (
            0usize..2,
            proptest::option::of((offset(), 0u8..6)),
            proptest::option::of((offset(), 0u8..6))
        )
            .prop_map(|(p, v4, v6)| Op::Pool { p, v4, v6 }),
        1 => (0usize..2).prop_map(Op::RemovePool),
        10 => (subnet(), 0u8..8, 0u8..2, ip_op(), 0u8..4, 0u8..6).prop_map(
            |(s, k, uid, ip, family, mac)| Op::Claim { s, k, uid, ip, family, mac }
        ),
        4 => (0u8..8, 0u8..4).prop_map(|(k, how)| Op::Release { k, how }),
        1 => Just(Op::Rebuild),
    ]
}

fn addr_of(family: Family, off: u8) -> IpAddr {
    to_ip(family, base(family) + u128::from(off))
}

fn dual(v4: Option<u8>, v6: Option<u8>) -> DualAddress {
    let mut d = DualAddress::default();
    if let Some(o) = v4 {
        d.set(addr_of(Family::V4, o));
    }
    if let Some(o) = v6 {
        d.set(addr_of(Family::V6, o));
    }
    d
}

fn range_text(family: Family, off: u8, len: u8) -> String {
    format!(
        "{}..{}",
        addr_of(family, off),
        addr_of(family, off.saturating_add(len))
    )
}

// ---------- The reference model ----------

#[derive(Clone, Debug)]
struct MFam {
    lo: u128,
    hi: u128,
    gw: u128,
    excluded: BTreeSet<u128>,
}

impl MFam {
    fn fits(&self, a: u128) -> bool {
        (self.lo..=self.hi).contains(&a) && a != self.gw
    }
}

#[derive(Clone, Debug)]
struct MSubnet {
    protocol: &'static str,
    fam: [Option<MFam>; 2],
    held: [BTreeMap<u128, String>; 2],
    released: [Vec<u128>; 2],
}

#[derive(Clone, Debug)]
struct MNic {
    subnet: String,
    uid: String,
    generation: u64,
    addr: [Option<u128>; 2],
    mac: Option<MacAddress>,
}

#[derive(Clone, Debug, Default)]
struct Model {
    subnets: BTreeMap<String, MSubnet>,
    pools: BTreeMap<String, (String, [BTreeSet<u128>; 2])>,
    nics: BTreeMap<String, MNic>,
}

type Verdict = Result<[Option<u128>; 2], &'static str>;

/// A successful claim as the model sees it: the addresses, and the MAC
/// when it is known in advance (`None`: a fresh random one).
type Prediction = ([Option<u128>; 2], Option<Option<MacAddress>>);

impl Model {
    fn fam(&self, s: &str, f: Family) -> Option<&MFam> {
        self.subnets.get(s)?.fam[idx(f)].as_ref()
    }

    fn available(&self, s: &str, f: Family, a: u128) -> bool {
        let sub = &self.subnets[s];
        sub.fam[idx(f)]
            .as_ref()
            .is_some_and(|m| m.fits(a) && !m.excluded.contains(&a))
            && !sub.held[idx(f)].contains_key(&a)
    }

    fn clipped_pool(&self, p: &str, f: Family) -> BTreeSet<u128> {
        let (s, ips) = &self.pools[p];
        match self.fam(s, f) {
            Some(m) => ips[idx(f)].range(m.lo..=m.hi).copied().collect(),
            None => BTreeSet::new(),
        }
    }

    fn pool_of(&self, s: &str, f: Family, a: u128) -> Option<String> {
        self.pools
            .iter()
            .filter(|(_, (ps, _))| ps == s)
            .find(|(p, _)| self.clipped_pool(p, f).contains(&a))
            .map(|(p, _)| p.clone())
    }

    /// Lowest never-used available address of the pool, else the oldest
    /// released one.
    fn next(&self, s: &str, f: Family, pool: Option<&str>) -> Option<u128> {
        let m = self.fam(s, f)?;
        let in_pool = |a: u128| self.pool_of(s, f, a).as_deref() == pool;
        let released = &self.subnets[s].released[idx(f)];
        (m.lo..=m.hi)
            .find(|&a| self.available(s, f, a) && in_pool(a) && !released.contains(&a))
            .or_else(|| released.iter().copied().find(|&a| in_pool(a)))
    }

    fn upsert_subnet(&mut self, spec: &SubnetSpec) -> Vec<Stranded> {
        let block = portkeeper_engine::parse::parse_cidr_block(&spec.cidr_block).unwrap();
        let gateway = portkeeper_engine::parse::parse_ip_address(&spec.gateway).ok();
        let excludes = portkeeper_engine::parse::parse_exclude_ips(&spec.exclude_ips).unwrap();
        let mut fam = [None, None];
        for f in Family::ALL {
            let Some(net) = block.get(f) else { continue };
            let (lo, hi) = (to_num(net.network()) + 1, to_num(net.broadcast()) - 1);
            let gw = gateway.and_then(|g| g.get(f)).map_or(lo, to_num);
            let mut excluded = BTreeSet::new();
            for r in excludes.iter().filter(|r| r.family() == f) {
                excluded
                    .extend((to_num(r.start)..=to_num(r.end)).filter(|a| (lo..=hi).contains(a)));
            }
            fam[idx(f)] = Some(MFam {
                lo,
                hi,
                gw,
                excluded,
            });
        }
        let sub = self
            .subnets
            .entry(spec.name.clone())
            .or_insert_with(|| MSubnet {
                protocol: "",
                fam: [None, None],
                held: Default::default(),
                released: Default::default(),
            });
        sub.protocol = block.protocol();
        sub.fam = fam;
        let s = spec.name.clone();
        for f in Family::ALL {
            let released = self.subnets[&s].released[idx(f)].clone();
            let kept = released
                .into_iter()
                .filter(|&a| self.available(&s, f, a))
                .collect();
            self.subnets.get_mut(&s).unwrap().released[idx(f)] = kept;
        }
        self.stranded(&s)
    }

    fn stranded(&self, s: &str) -> Vec<Stranded> {
        let sub = &self.subnets[s];
        let mut out = Vec::new();
        for f in Family::ALL {
            for (&a, k) in &sub.held[idx(f)] {
                let reason = match &sub.fam[idx(f)] {
                    None => StrandedReason::FamilyRemoved,
                    Some(m) if !(m.lo..=m.hi).contains(&a) => StrandedReason::OutsideCidr,
                    Some(m) if a == m.gw => StrandedReason::IsGateway,
                    Some(_) => continue,
                };
                out.push(Stranded {
                    key: NicKey::from(k.as_str()),
                    address: to_ip(f, a),
                    reason,
                });
            }
        }
        out.sort();
        out
    }

    fn upsert_pool(&mut self, spec: &PoolSpec) -> Result<(), &'static str> {
        let s = &spec.subnet;
        if !self.subnets.contains_key(s) {
            return Err("NotFound");
        }
        let mut ips: [BTreeSet<u128>; 2] = Default::default();
        for e in &spec.ips {
            let r = portkeeper_engine::parse::parse_pool_entry(e).unwrap();
            ips[idx(r.family())].extend(to_num(r.start)..=to_num(r.end));
        }
        for (other, (os, oips)) in &self.pools {
            if other == &spec.name || os != s {
                continue;
            }
            if Family::ALL
                .into_iter()
                .any(|f| ips[idx(f)].intersection(&oips[idx(f)]).next().is_some())
            {
                return Err("InvalidIPPool");
            }
        }
        self.pools.insert(spec.name.clone(), (s.clone(), ips));
        Ok(())
    }

    fn kept(&self, s: &str, existing: Option<&MNic>, f: Family) -> Option<u128> {
        let a = existing?.addr[idx(f)]?;
        self.fam(s, f)?.fits(a).then_some(a)
    }

    fn check_static(&self, s: &str, key: &str, f: Family, a: u128) -> Result<u128, &'static str> {
        let m = self.fam(s, f).ok_or("AddressOutOfRange")?;
        if !(m.lo..=m.hi).contains(&a) {
            return Err("AddressOutOfRange");
        }
        if a == m.gw {
            return Err("AddressConflict");
        }
        match self.subnets[s].held[idx(f)].get(&a) {
            Some(h) if h != key => Err("AddressConflict"),
            _ => Ok(a),
        }
    }

    fn statics(&self, s: &str, key: &str, e: &DualAddress, fr: FamilyRequest) -> Verdict {
        let mut out = [None, None];
        for a in e.addresses() {
            let f = Family::of(a);
            if matches!(fr, FamilyRequest::Only(r) if r != f) {
                return Err("IPFamilyMismatch");
            }
            out[idx(f)] = Some(self.check_static(s, key, f, to_num(a))?);
        }
        Ok(out)
    }

    fn dynamic(&self, s: &str, existing: Option<&MNic>, f: Family) -> Result<u128, &'static str> {
        self.kept(s, existing, f)
            .or_else(|| self.next(s, f, None))
            .ok_or("NoAvailableAddress")
    }

    fn entry_for(e: &DualAddress, fr: FamilyRequest) -> DualAddress {
        match fr {
            FamilyRequest::Subnet => *e,
            FamilyRequest::Only(f) => {
                let mut d = DualAddress::default();
                if let Some(a) = e.get(f) {
                    d.set(a);
                }
                d
            }
        }
    }

    fn plan(&self, c: &Claim, existing: Option<&MNic>) -> Verdict {
        let s = c.subnet.as_str();
        let key = c.key.as_str();
        let sub = &self.subnets[s];
        let wanted: Vec<Family> = match c.family {
            FamilyRequest::Subnet => Family::ALL
                .into_iter()
                .filter(|f| sub.fam[idx(*f)].is_some())
                .collect(),
            FamilyRequest::Only(f) if sub.fam[idx(f)].is_some() => vec![f],
            FamilyRequest::Only(_) => return Err("IPFamilyMismatch"),
        };
        let complete = |mut fixed: [Option<u128>; 2]| -> Verdict {
            if c.family == FamilyRequest::Subnet {
                for &f in &wanted {
                    if fixed[idx(f)].is_none() {
                        fixed[idx(f)] = Some(self.dynamic(s, existing, f)?);
                    }
                }
            }
            Ok(fixed)
        };
        match &c.ip {
            IpRequest::MacOnly => Ok([None, None]),
            IpRequest::Dynamic => {
                let mut out = [None, None];
                for &f in &wanted {
                    out[idx(f)] = Some(self.dynamic(s, existing, f)?);
                }
                Ok(out)
            }
            IpRequest::Static(e) => {
                let mut fixed = self.statics(s, key, e, c.family)?;
                for &f in &wanted {
                    if fixed[idx(f)].is_none() {
                        fixed[idx(f)] = Some(self.dynamic(s, existing, f)?);
                    }
                }
                Ok(fixed)
            }
            IpRequest::List { entries, pick } => {
                let fixed = match *pick {
                    ListPick::Ordinal { ordinal, start } => {
                        let i = ordinal
                            .checked_sub(start)
                            .filter(|&i| (i as usize) < entries.len())
                            .ok_or("NoAvailableAddress")?;
                        let e = Self::entry_for(&entries[i as usize], c.family);
                        if e.is_empty() {
                            return Err("IPFamilyMismatch");
                        }
                        self.statics(s, key, &e, c.family)?
                    }
                    ListPick::FirstFree => {
                        let candidates: Vec<DualAddress> = entries
                            .iter()
                            .map(|e| Self::entry_for(e, c.family))
                            .filter(|e| !e.is_empty())
                            .collect();
                        let owned = existing.and_then(|n| {
                            candidates.iter().find(|e| {
                                e.addresses().all(|a| {
                                    let f = Family::of(a);
                                    n.addr[idx(f)] == Some(to_num(a))
                                        && self.check_static(s, key, f, to_num(a)).is_ok()
                                })
                            })
                        });
                        match owned {
                            Some(e) => self.statics(s, key, e, c.family)?,
                            None => {
                                let results: Vec<Verdict> = candidates
                                    .iter()
                                    .map(|e| self.statics(s, key, e, c.family))
                                    .collect();
                                match results.iter().find(|r| r.is_ok()) {
                                    Some(ok) => (*ok)?,
                                    None if candidates.len() == 1 => results[0]?,
                                    None => return Err("NoAvailableAddress"),
                                }
                            }
                        }
                    }
                };
                complete(fixed)
            }
            IpRequest::Pools(names) => {
                let mut out = [None, None];
                let mut need = Vec::new();
                for &f in &wanted {
                    let kept = self
                        .kept(s, existing, f)
                        .filter(|&a| names.iter().any(|n| self.clipped_pool(n, f).contains(&a)));
                    match kept {
                        Some(a) => out[idx(f)] = Some(a),
                        None => need.push(f),
                    }
                }
                if need.is_empty() {
                    return Ok(out);
                }
                let chosen = names
                    .iter()
                    .find(|n| need.iter().all(|&f| self.next(s, f, Some(n)).is_some()))
                    .ok_or("NoAvailableAddress")?;
                for f in need {
                    out[idx(f)] = self.next(s, f, Some(chosen));
                }
                Ok(out)
            }
        }
    }

    fn mac_holder(&self, mac: MacAddress) -> Option<&str> {
        self.nics
            .iter()
            .find(|(_, n)| n.mac == Some(mac))
            .map(|(k, _)| k.as_str())
    }

    /// Predicts a claim; on success returns the addresses and, for a static
    /// or kept MAC, the MAC (`None` inside means "a fresh random one").
    fn predict(&self, c: &Claim) -> Result<Prediction, &'static str> {
        if let IpRequest::Pools(names) = &c.ip {
            for n in names {
                match self.pools.get(n) {
                    Some((s, _)) if *s == c.subnet => {}
                    _ => return Err("NotFound"),
                }
            }
        }
        if !self.subnets.contains_key(&c.subnet) {
            return Err("NotFound");
        }
        let existing = self.nics.get(c.key.as_str());
        if existing.is_some_and(|n| n.subnet != c.subnet) {
            return Err("AddressConflict");
        }
        let addr = self.plan(c, existing)?;
        let old_mac = existing.and_then(|n| n.mac);
        let mac = match c.mac {
            MacRequest::None => Some(None),
            MacRequest::Generate if old_mac.is_some() => Some(old_mac),
            MacRequest::Generate => None,
            MacRequest::Static(m) => {
                if old_mac != Some(m) && self.mac_holder(m).is_some() {
                    return Err("AddressConflict");
                }
                Some(Some(m))
            }
        };
        Ok((addr, mac))
    }

    fn commit(&mut self, key: &str, nic: MNic) {
        let s = nic.subnet.clone();
        let old = self.nics.get(key).map(|n| n.addr).unwrap_or([None, None]);
        for f in Family::ALL {
            let (before, after) = (old[idx(f)], nic.addr[idx(f)]);
            if before == after {
                continue;
            }
            let sub = self.subnets.get_mut(&s).unwrap();
            if let Some(a) = after {
                sub.held[idx(f)].insert(a, key.to_owned());
                sub.released[idx(f)].retain(|&r| r != a);
            }
            if let Some(a) = before {
                self.give_back(&s, f, a);
            }
        }
        self.nics.insert(key.to_owned(), nic);
    }

    fn give_back(&mut self, s: &str, f: Family, a: u128) {
        let sub = self.subnets.get_mut(s).unwrap();
        sub.held[idx(f)].remove(&a);
        if sub.fam[idx(f)]
            .as_ref()
            .is_some_and(|m| m.fits(a) && !m.excluded.contains(&a))
        {
            sub.released[idx(f)].push(a);
        }
    }

    fn release(&mut self, key: &str, owner: &Owner) -> Result<(), &'static str> {
        let nic = self.nics.get(key).ok_or("NotHeld")?;
        if nic.uid != owner.uid || nic.generation != owner.generation {
            return Err("StaleRelease");
        }
        let nic = self.nics.remove(key).unwrap();
        for f in Family::ALL {
            if let Some(a) = nic.addr[idx(f)] {
                self.give_back(&nic.subnet, f, a);
            }
        }
        Ok(())
    }

    fn ranges(f: Family, set: &BTreeSet<u128>) -> String {
        let mut parts: Vec<String> = Vec::new();
        let mut iter = set.iter().copied().peekable();
        while let Some(start) = iter.next() {
            let mut end = start;
            while iter.peek() == Some(&(end + 1)) {
                end = iter.next().unwrap();
            }
            parts.push(if start == end {
                to_ip(f, start).to_string()
            } else {
                format!("{}-{}", to_ip(f, start), to_ip(f, end))
            });
        }
        parts.join(",")
    }

    fn set_status(
        st: &mut AddressStatus,
        f: Family,
        avail: &BTreeSet<u128>,
        using: &BTreeSet<u128>,
    ) {
        let (a, u) = (avail.len() as u128, using.len() as u128);
        let (ar, ur) = (Self::ranges(f, avail), Self::ranges(f, using));
        match f {
            Family::V4 => {
                (st.v4_available_ips, st.v4_using_ips) = (a, u);
                (st.v4_available_ip_range, st.v4_using_ip_range) = (ar, ur);
            }
            Family::V6 => {
                (st.v6_available_ips, st.v6_using_ips) = (a, u);
                (st.v6_available_ip_range, st.v6_using_ip_range) = (ar, ur);
            }
        }
    }

    fn subnet_status(&self, s: &str) -> AddressStatus {
        let mut st = AddressStatus::default();
        for f in Family::ALL {
            let Some(m) = self.fam(s, f) else { continue };
            let avail = (m.lo..=m.hi).filter(|&a| self.available(s, f, a)).collect();
            let using = self.subnets[s].held[idx(f)]
                .keys()
                .copied()
                .filter(|&a| m.fits(a) && !m.excluded.contains(&a))
                .collect();
            Self::set_status(&mut st, f, &avail, &using);
        }
        st
    }

    fn pool_status(&self, p: &str) -> AddressStatus {
        let s = &self.pools[p].0;
        let mut st = AddressStatus::default();
        for f in Family::ALL {
            let Some(m) = self.fam(s, f) else { continue };
            let ips = self.clipped_pool(p, f);
            let avail = ips
                .iter()
                .copied()
                .filter(|&a| self.available(s, f, a))
                .collect();
            let using = ips
                .iter()
                .copied()
                .filter(|&a| a != m.gw && self.subnets[s].held[idx(f)].contains_key(&a))
                .collect();
            Self::set_status(&mut st, f, &avail, &using);
        }
        st
    }
}

// ---------- Running a sequence ----------

fn reason<T: std::fmt::Debug>(r: &Result<T, EngineError>) -> Result<(), &'static str> {
    r.as_ref().map(|_| ()).map_err(EngineError::reason)
}

struct Harness {
    engine: Engine,
    model: Model,
    seed: u64,
}

impl Harness {
    fn subnet_spec(op: &Op) -> SubnetSpec {
        let Op::Subnet {
            s,
            v4,
            v6,
            reverse,
            gateway,
            excludes,
        } = op
        else {
            unreachable!()
        };
        let mut cidrs: Vec<&str> = Vec::new();
        cidrs.extend(v4.map(|i| V4_CIDRS[i]));
        cidrs.extend(v6.map(|i| V6_CIDRS[i]));
        if *reverse {
            cidrs.reverse();
        }
        let gw = |family: Family, cidr: &str| {
            let net: ipnet::IpNet = cidr.parse().unwrap();
            to_ip(family, to_num(net.network()) + 5).to_string()
        };
        let mut gws: Vec<String> = Vec::new();
        if *gateway {
            gws.extend(v4.map(|i| gw(Family::V4, V4_CIDRS[i])));
            gws.extend(v6.map(|i| gw(Family::V6, V6_CIDRS[i])));
        }
        SubnetSpec {
            name: SUBNETS[*s].into(),
            cidr_block: cidrs.join(","),
            gateway: gws.join(","),
            exclude_ips: excludes
                .iter()
                .map(|&(v6, off, len)| {
                    range_text(if v6 { Family::V6 } else { Family::V4 }, off, len)
                })
                .collect(),
            gateway_mac: None,
        }
    }

    fn claim(&self, op: &Op) -> Claim {
        let Op::Claim {
            s,
            k,
            uid,
            ip,
            family,
            mac,
        } = op
        else {
            unreachable!()
        };
        let ip = match ip {
            IpOp::Dynamic => IpRequest::Dynamic,
            IpOp::Static(a, b) => IpRequest::Static(dual(*a, *b)),
            IpOp::List(entries, pick) => IpRequest::List {
                entries: entries.iter().map(|(a, b)| dual(*a, *b)).collect(),
                pick: match pick {
                    None => ListPick::FirstFree,
                    Some((o, st)) => ListPick::Ordinal {
                        ordinal: u64::from(*o),
                        start: u64::from(*st),
                    },
                },
            },
            IpOp::Pools(mask) => IpRequest::Pools(
                (0..2)
                    .filter(|i| mask & (1 << i) != 0)
                    .map(|i| POOLS[i].to_owned())
                    .collect(),
            ),
            IpOp::MacOnly => IpRequest::MacOnly,
        };
        Claim {
            subnet: SUBNETS[*s].into(),
            key: NicKey::from(format!("k{k}.ns").as_str()),
            uid: format!("u{uid}"),
            ip,
            family: match family {
                0 | 1 => FamilyRequest::Subnet,
                2 => FamilyRequest::Only(Family::V4),
                _ => FamilyRequest::Only(Family::V6),
            },
            mac: match mac {
                0..=2 => MacRequest::Generate,
                5 => MacRequest::None,
                m => {
                    MacRequest::Static(MacAddress::parse(STATIC_MACS[usize::from(m - 3)]).unwrap())
                }
            },
        }
    }

    fn step(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match op {
            Op::Subnet { .. } => {
                let spec = Self::subnet_spec(op);
                let got = self.engine.upsert_subnet(&spec);
                let want = self.model.upsert_subnet(&spec);
                prop_assert_eq!(got, Ok(want), "upsert {:?}", spec);
            }
            Op::Pool { p, v4, v6 } => {
                let mut ips = Vec::new();
                ips.extend(v4.map(|(o, l)| range_text(Family::V4, o, l)));
                ips.extend(v6.map(|(o, l)| range_text(Family::V6, o, l)));
                let spec = PoolSpec {
                    name: POOLS[*p].into(),
                    subnet: "a".into(),
                    ips,
                };
                let got = self.engine.upsert_pool(&spec);
                let want = self.model.upsert_pool(&spec);
                prop_assert_eq!(reason(&got), want, "pool {:?}: {:?}", spec, got);
            }
            Op::RemovePool(p) => {
                let got = self.engine.remove_pool(POOLS[*p]);
                let want = self
                    .model
                    .pools
                    .remove(POOLS[*p])
                    .map(|_| ())
                    .ok_or("NotFound");
                prop_assert_eq!(reason(&got), want);
            }
            Op::Claim { .. } => {
                let claim = self.claim(op);
                // `check` predicts `claim` exactly (result and addresses) and changes nothing.
                let before = self.engine.snapshot();
                let checked = self.engine.check(&claim);
                prop_assert_eq!(self.engine.snapshot(), before);
                let got = self.engine.claim(&claim);
                let message =
                    |r: &Result<Lease, EngineError>| r.as_ref().err().map(ToString::to_string);
                prop_assert_eq!(message(&checked), message(&got), "{:?}", claim);
                if let (Ok(checked), Ok(got)) = (&checked, &got) {
                    prop_assert_eq!((checked.v4, checked.v6), (got.v4, got.v6));
                    if matches!(claim.mac, MacRequest::Static(_)) {
                        prop_assert_eq!(checked.mac, got.mac);
                    }
                }
                let want = self.model.predict(&claim);
                prop_assert_eq!(reason(&got), want.map(|_| ()), "{:?} -> {:?}", claim, got);
                if let (Ok(lease), Ok((addr, mac))) = (got, want) {
                    let got_addr = [
                        lease.v4.map(|a| to_num(a.into())),
                        lease.v6.map(|a| to_num(a.into())),
                    ];
                    prop_assert_eq!(got_addr, addr, "{:?}", claim);
                    match mac {
                        Some(expected) => prop_assert_eq!(lease.mac, expected),
                        None => {
                            let m = lease.mac.unwrap();
                            prop_assert!(m.is_locally_administered() && !m.is_multicast());
                            prop_assert_eq!(self.model.mac_holder(m), None);
                        }
                    }
                    let key = claim.key.as_str();
                    let existing = self.model.nics.get(key);
                    let unchanged = existing.is_some_and(|n| {
                        n.uid == claim.uid && n.addr == addr && n.mac == lease.mac
                    });
                    if unchanged {
                        prop_assert_eq!(lease.generation, existing.unwrap().generation);
                    } else {
                        let max = self.model.nics.values().map(|n| n.generation).max();
                        prop_assert!(max.is_none_or(|m| lease.generation > m));
                        self.model.commit(
                            key,
                            MNic {
                                subnet: claim.subnet.clone(),
                                uid: claim.uid.clone(),
                                generation: lease.generation,
                                addr,
                                mac: lease.mac,
                            },
                        );
                    }
                }
            }
            Op::Release { k, how } => {
                let key = format!("k{k}.ns");
                let (uid, generation) = self
                    .model
                    .nics
                    .get(&key)
                    .map_or(("u0".to_owned(), 0), |n| (n.uid.clone(), n.generation));
                let owner = match how {
                    0 | 1 => Owner { uid, generation },
                    2 => Owner {
                        uid: format!("{uid}-old"),
                        generation,
                    },
                    _ => Owner {
                        uid,
                        generation: generation.wrapping_sub(1),
                    },
                };
                let got = self.engine.release(&NicKey::from(key.as_str()), &owner);
                let want = self.model.release(&key, &owner);
                prop_assert_eq!(reason(&got), want, "release {} {:?}: {:?}", key, owner, got);
            }
            Op::Rebuild => {
                let snapshot = self.engine.snapshot();
                self.seed += 1;
                let (rebuilt, report) =
                    Engine::rebuild(&snapshot, StdRng::seed_from_u64(self.seed));
                prop_assert_eq!(report, Default::default());
                prop_assert_eq!(rebuilt.snapshot(), snapshot);
                for s in SUBNETS {
                    prop_assert_eq!(rebuilt.subnet_status(s), self.engine.subnet_status(s));
                }
                self.engine = rebuilt;
                for sub in self.model.subnets.values_mut() {
                    sub.released = Default::default();
                }
            }
        }
        self.check()
    }

    fn check(&self) -> Result<(), TestCaseError> {
        let snapshot = self.engine.snapshot();
        let mut addrs = HashSet::new();
        let mut macs = HashSet::new();
        for r in &snapshot.records {
            let l = &r.lease;
            for a in l.addresses().addresses() {
                prop_assert!(
                    addrs.insert((l.subnet.clone(), a)),
                    "{} held twice in {}",
                    a,
                    l.subnet
                );
            }
            if let Some(m) = l.mac {
                prop_assert!(macs.insert(m), "MAC {} held twice", m);
            }
            let n = self.model.nics.get(l.key.as_str());
            prop_assert!(n.is_some(), "engine holds unknown {}", l.key);
            let n = n.unwrap();
            prop_assert_eq!(
                (&n.subnet, &n.uid, n.generation, n.mac),
                (&l.subnet, &l.uid, l.generation, l.mac)
            );
            prop_assert_eq!(
                n.addr,
                [
                    l.v4.map(|a| to_num(a.into())),
                    l.v6.map(|a| to_num(a.into()))
                ]
            );
        }
        prop_assert_eq!(snapshot.records.len(), self.model.nics.len());
        for s in self.model.subnets.keys() {
            prop_assert_eq!(
                self.engine.subnet_status(s).unwrap(),
                self.model.subnet_status(s),
                "subnet {}",
                s
            );
            prop_assert_eq!(self.engine.stranded(s).unwrap(), self.model.stranded(s));
        }
        for p in self.model.pools.keys() {
            prop_assert_eq!(
                self.engine.pool_status(p).unwrap(),
                self.model.pool_status(p),
                "pool {}",
                p
            );
        }
        Ok(())
    }
}

/// Operations that churn one small dual-stack subnet: enough claims and
/// releases to exhaust never-used addresses and exercise delayed reuse.
fn churn_op() -> impl Strategy<Value = Op> {
    let ip = prop_oneof![
        5 => Just(IpOp::Dynamic),
        1 => entry().prop_map(|(a, b)| IpOp::Static(a, b)),
    ];
    prop_oneof![
        6 => (0u8..8, 0u8..2, ip).prop_map(|(k, uid, ip)| Op::Claim { s: 0, k, uid, ip, family: 0, mac: 0 }),
        4 => (0u8..8, 0u8..3).prop_map(|(k, how)| Op::Release { k, how }),
        1 => Just(Op::Rebuild),
    ]
}

fn run(first: Op, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut harness = Harness {
        engine: Engine::with_rng(StdRng::seed_from_u64(7)),
        model: Model::default(),
        seed: 100,
    };
    harness.step(&first)?;
    for op in ops {
        harness.step(op)?;
    }
    Ok(())
}

/// `PROPTEST_CASES` (default 10,000) split between the two properties.
fn cases(share: u32) -> u32 {
    let total = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000u32);
    (total * share / 10).max(1)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(7),
        max_shrink_iters: 2_000,
        ..ProptestConfig::default()
    })]

    /// Every operation kind, two subnets, two pools.
    #[test]
    fn engine_matches_the_reference_model(
        first in 0usize..3,
        ops in proptest::collection::vec(op(), 1..32),
    ) {
        // Every sequence starts with subnet "a" so claims have somewhere to go.
        let start = Op::Subnet { s: 0, v4: Some(first), v6: (first > 0).then_some(first), reverse: first == 2, gateway: false, excludes: vec![] };
        run(start, &ops)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(3),
        max_shrink_iters: 2_000,
        ..ProptestConfig::default()
    })]

    /// Claims and releases in one /29 + /125 subnet, with rebuilds.
    #[test]
    fn churn_matches_the_reference_model(ops in proptest::collection::vec(churn_op(), 1..40)) {
        let start = Op::Subnet { s: 0, v4: Some(0), v6: Some(0), reverse: false, gateway: false, excludes: vec![] };
        run(start, &ops)?;
    }
}
