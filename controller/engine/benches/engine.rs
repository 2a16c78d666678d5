//! Address engine benchmarks, each beside the naive reference model (a
//! `BTreeMap<address, key>` per subnet scanned for the lowest free
//! address, as the property test's model does) so the report shows the
//! ratio from one run.
//!
//! Run: `cargo bench -p portkeeper-engine --bench engine -- --warm-up-time 1 --measurement-time 3`

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use portkeeper_engine::parse::parse_ip_address;
use portkeeper_engine::{
    Claim, Engine, IpRequest, Lease, ListPick, MacAddress, NicKey, Record, RecordSource, Snapshot,
    SubnetSpec,
};
use rand::SeedableRng;
use rand::rngs::StdRng;

const SLASH16: &str = "10.16.0.0/16";
/// Usable addresses of the /16 minus its gateway.
const SLASH16_FREE: u32 = 65_533;
const BASE: u32 = 0x0a10_0000;

fn spec(cidr: &str) -> SubnetSpec {
    SubnetSpec {
        name: "s".into(),
        cidr_block: cidr.into(),
        ..SubnetSpec::default()
    }
}

fn key(i: u32) -> NicKey {
    NicKey::from(format!("pod-{i}.bench").as_str())
}

fn filled_engine(count: u32) -> Engine {
    let engine = Engine::with_rng(StdRng::seed_from_u64(1));
    engine.upsert_subnet(&spec(SLASH16)).unwrap();
    for i in 0..count {
        engine.claim(&Claim::dynamic("s", key(i), "uid")).unwrap();
    }
    engine
}

/// The naive side: the reference model's structures (a map per subnet,
/// a FIFO of released addresses) with a linear scan for the lowest free.
struct Naive {
    lo: u32,
    hi: u32,
    gateway: u32,
    held: BTreeMap<u32, NicKey>,
    released: VecDeque<u32>,
    released_set: HashSet<u32>,
}

impl Naive {
    fn new(count: u32) -> Naive {
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

    fn allocate(&mut self, key: NicKey) -> u32 {
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

    fn claim_static(&mut self, addr: u32, key: NicKey) -> bool {
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

    fn release(&mut self, addr: u32) {
        self.held.remove(&addr);
        self.released.push_back(addr);
        self.released_set.insert(addr);
    }
}

fn allocate_release(c: &mut Criterion) {
    let mut group = c.benchmark_group("allocate_release_slash16");
    for percent in [0u32, 50, 99] {
        let count = SLASH16_FREE * percent / 100;
        let engine = filled_engine(count);
        let mut next = count;
        group.bench_function(BenchmarkId::new("engine", format!("{percent}%")), |b| {
            b.iter(|| {
                next += 1;
                let lease = engine
                    .claim(&Claim::dynamic("s", key(next), "uid"))
                    .unwrap();
                engine.release(&lease.key, &lease.owner()).unwrap();
                black_box(lease.v4)
            })
        });
        let mut naive = Naive::new(count);
        group.bench_function(
            BenchmarkId::new("naive_model", format!("{percent}%")),
            |b| {
                b.iter(|| {
                    next += 1;
                    let addr = naive.allocate(key(next));
                    naive.release(addr);
                    black_box(addr)
                })
            },
        );
    }
    group.finish();
}

fn static_claim(c: &mut Criterion) {
    let mut group = c.benchmark_group("static_claim_slash16_half_full");
    let count = SLASH16_FREE / 2;
    let engine = filled_engine(count);
    let addr = BASE + 60_000;
    let mut claim = Claim::dynamic("s", key(u32::MAX), "uid");
    claim.ip =
        IpRequest::Static(parse_ip_address(&std::net::Ipv4Addr::from(addr).to_string()).unwrap());
    group.bench_function("engine", |b| {
        b.iter(|| {
            let lease = engine.claim(&claim).unwrap();
            engine.release(&lease.key, &lease.owner()).unwrap();
            black_box(lease.v4)
        })
    });
    let mut naive = Naive::new(count);
    group.bench_function("naive_model", |b| {
        b.iter(|| {
            assert!(naive.claim_static(addr, key(u32::MAX)));
            naive.release(addr);
        })
    });
    group.finish();
}

fn list_allocation(c: &mut Criterion) {
    let mut group = c.benchmark_group("list_allocation_16_entries_15_held");
    let engine = filled_engine(SLASH16_FREE / 2);
    let entries: Vec<_> = (0..16)
        .map(|i| {
            parse_ip_address(&std::net::Ipv4Addr::from(BASE + 50_000 + i).to_string()).unwrap()
        })
        .collect();
    for (i, entry) in entries.iter().take(15).enumerate() {
        let mut claim = Claim::dynamic("s", key(1_000_000 + i as u32), "uid");
        claim.ip = IpRequest::Static(*entry);
        engine.claim(&claim).unwrap();
    }
    let mut claim = Claim::dynamic("s", key(u32::MAX), "uid");
    claim.ip = IpRequest::List {
        entries: entries.clone(),
        pick: ListPick::FirstFree,
    };
    group.bench_function("engine", |b| {
        b.iter(|| {
            let lease = engine.claim(&claim).unwrap();
            engine.release(&lease.key, &lease.owner()).unwrap();
            black_box(lease.v4)
        })
    });
    let mut naive = Naive::new(SLASH16_FREE / 2);
    let list: Vec<u32> = (0..16).map(|i| BASE + 50_000 + i).collect();
    for (i, addr) in list.iter().take(15).enumerate() {
        naive.claim_static(*addr, key(1_000_000 + i as u32));
    }
    group.bench_function("naive_model", |b| {
        b.iter(|| {
            let addr = *list.iter().find(|a| !naive.held.contains_key(a)).unwrap();
            assert!(naive.claim_static(addr, key(u32::MAX)));
            naive.release(addr);
        })
    });
    group.finish();
}

/// 100,000 records (address and MAC each) across a /15, as a controller
/// restart would read them from IP resources.
fn records(count: u32) -> Snapshot {
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

fn rebuild(c: &mut Criterion) {
    let mut group = c.benchmark_group("rebuild_100k_records");
    group.sample_size(10);
    let snapshot = records(100_000);
    group.bench_function("engine", |b| {
        b.iter(|| {
            let (engine, report) = Engine::rebuild(&snapshot, StdRng::seed_from_u64(1));
            assert!(report.conflicts.is_empty());
            black_box(engine)
        })
    });
    group.bench_function("naive_model", |b| {
        b.iter(|| {
            let mut held: BTreeMap<std::net::Ipv4Addr, NicKey> = BTreeMap::new();
            let mut macs: BTreeMap<MacAddress, NicKey> = BTreeMap::new();
            for r in &snapshot.records {
                let l = &r.lease;
                assert!(held.insert(l.v4.unwrap(), l.key.clone()).is_none());
                assert!(macs.insert(l.mac.unwrap(), l.key.clone()).is_none());
            }
            black_box((held, macs))
        })
    });
    group.finish();
}

criterion_group!(
    benches,
    allocate_release,
    static_claim,
    list_allocation,
    rebuild
);
criterion_main!(benches);
