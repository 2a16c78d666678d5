//! Address engine benchmarks, each beside the naive reference model (a
//! `BTreeMap<address, key>` per subnet scanned for the lowest free
//! address, as the property test's model does) so the report shows the
//! ratio from one run.
//!
//! Run: `cargo bench -p portkeeper-engine --bench engine -- --warm-up-time 1 --measurement-time 3`

mod common;

use std::hint::black_box;

use common::{BASE, Naive, SLASH16_FREE, filled_engine, key, naive_rebuild, records};
use criterion::{BatchSize, BenchmarkId, Criterion, criterion_group, criterion_main};
use portkeeper_engine::parse::parse_ip_address;
use portkeeper_engine::{Claim, Engine, IpRequest, ListPick};
use rand::SeedableRng;
use rand::rngs::StdRng;

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

/// A claim alone in a /16 at 99%, the previous claim released untimed.
fn claim_only(c: &mut Criterion) {
    let count = SLASH16_FREE * 99 / 100;
    let engine = filled_engine(count);
    let last = std::cell::RefCell::new(None::<portkeeper_engine::Lease>);
    let mut next = count;
    c.bench_function("claim_only_slash16_99%/engine", |b| {
        b.iter_batched(
            || {
                if let Some(lease) = last.borrow_mut().take() {
                    engine.release(&lease.key, &lease.owner()).unwrap();
                }
                next += 1;
                Claim::dynamic("s", key(next), "uid")
            },
            |claim| *last.borrow_mut() = Some(engine.claim(&claim).unwrap()),
            BatchSize::PerIteration,
        )
    });
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
        b.iter(|| black_box(naive_rebuild(&snapshot)))
    });
    group.finish();
}

criterion_group!(
    benches,
    allocate_release,
    claim_only,
    static_claim,
    list_allocation,
    rebuild
);
criterion_main!(benches);
