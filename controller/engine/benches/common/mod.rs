//! Fixtures shared by the benchmarks: filled subnets, rebuild records, and
//! the naive reference model (the property test's structures: a map per
//! subnet and a FIFO of released addresses, scanned for the lowest free).

// Each bench binary uses a part of these fixtures.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashSet, VecDeque};

use portkeeper_engine::{
    Claim, Engine, Lease, MacAddress, NicKey, Record, RecordSource, Snapshot, SubnetSpec,
};
use rand::SeedableRng;
use rand::rngs::StdRng;

pub const SLASH16: &str = "10.16.0.0/16";
/// Usable addresses of the /16 minus its gateway.
pub const SLASH16_FREE: u32 = 65_533;
pub const BASE: u32 = 0x0a10_0000;

pub fn spec(cidr: &str) -> SubnetSpec {
    SubnetSpec {
        name: "s".into(),
        cidr_block: cidr.into(),
        ..SubnetSpec::default()
    }
}

pub fn key(i: u32) -> NicKey {
    NicKey::from(format!("pod-{i}.bench").as_str())
}

pub fn filled_engine(count: u32) -> Engine {
    let engine = Engine::with_rng(StdRng::seed_from_u64(1));
    engine.upsert_subnet(&spec(SLASH16)).unwrap();
    for i in 0..count {
        engine.claim(&Claim::dynamic("s", key(i), "uid")).unwrap();
    }
    engine
}

/// The naive side: the reference model's structures (a map per subnet,
/// a FIFO of released addresses) with a linear scan for the lowest free.
pub struct Naive {
    lo: u32,
    hi: u32,
    gateway: u32,
    pub held: BTreeMap<u32, NicKey>,
    released: VecDeque<u32>,
    released_set: HashSet<u32>,
}

impl Naive {
    pub fn new(count: u32) -> Naive {
        let mut naive = Naive {
            lo: BASE + 1,
            hi: BASE + 0xfffe,
            gateway: BASE + 1,
            held: BTreeMap::new(),
            released: VecDeque::new(),
            released_set: HashSet::new(),
        };
        for i in 0..count {
            naive.allocate(key(i));
        }
        naive
    }

    pub fn allocate(&mut self, key: NicKey) -> u32 {
        let never_used = (self.lo..=self.hi).find(|a| {
            *a != self.gateway && !self.held.contains_key(a) && !self.released_set.contains(a)
        });
        let addr = never_used
            .or_else(|| {
                let a = self.released.pop_front()?;
                self.released_set.remove(&a);
                Some(a)
            })
            .expect("naive subnet has room");
        self.held.insert(addr, key);
        addr
    }

    pub fn claim_static(&mut self, addr: u32, key: NicKey) -> bool {
        if addr == self.gateway || !(self.lo..=self.hi).contains(&addr) {
            return false;
        }
        match self.held.get(&addr) {
            Some(holder) => *holder == key,
            None => {
                if self.released_set.remove(&addr) {
                    self.released.retain(|a| *a != addr);
                }
                self.held.insert(addr, key);
                true
            }
        }
    }

    pub fn release(&mut self, addr: u32) {
        self.held.remove(&addr);
        self.released.push_back(addr);
        self.released_set.insert(addr);
    }
}

/// 100,000 records (address and MAC each) across a /15, as a controller
/// restart would read them from IP resources.
pub fn records(count: u32) -> Snapshot {
    let records = (0..count)
        .map(|i| {
            let addr = std::net::Ipv4Addr::from(0x0a20_0000 + 2 + i);
            let [a, b, c, d] = i.to_be_bytes();
            Record {
                lease: Lease {
                    subnet: "s".into(),
                    key: key(i),
                    uid: format!("uid-{i}"),
                    generation: u64::from(i),
                    v4: Some(addr),
                    v6: None,
                    mac: Some(MacAddress::from_octets([0x0a, 0x58, a, b, c, d])),
                },
                source: RecordSource::IpResource,
            }
        })
        .collect();
    Snapshot {
        subnets: vec![spec("10.32.0.0/15")],
        pools: vec![],
        records,
    }
}

/// The naive side of a rebuild: insert every record into address and MAC
/// maps, refusing duplicates.
pub fn naive_rebuild(
    snapshot: &Snapshot,
) -> (
    BTreeMap<std::net::Ipv4Addr, NicKey>,
    BTreeMap<MacAddress, NicKey>,
) {
    let mut held = BTreeMap::new();
    let mut macs = BTreeMap::new();
    for r in &snapshot.records {
        let l = &r.lease;
        assert!(held.insert(l.v4.unwrap(), l.key.clone()).is_none());
        assert!(macs.insert(l.mac.unwrap(), l.key.clone()).is_none());
    }
    (held, macs)
}
