//! Scale figures that criterion's wall-clock timing cannot give on a
//! shared machine: on-CPU time per operation (from the thread's
//! `/proc/thread-self/schedstat`, so time spent waiting for a CPU does not
//! count) and the heap held by a /64 with 1,000,000 allocations (from a
//! counting global allocator), each beside the naive reference model.
//!
//! Run: `cargo bench -p portkeeper-engine --bench scale`

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::{Naive, SLASH16_FREE, filled_engine, key, naive_rebuild, records};
use portkeeper_engine::{Claim, Engine, NicKey, SubnetSpec};
use rand::SeedableRng;
use rand::rngs::StdRng;

/// Counts live heap bytes.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; the
// counter only observes sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size, Ordering::Relaxed);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Nanoseconds this thread has spent on a CPU.
fn cpu_ns() -> u64 {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").expect("schedstat");
    stat.split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .expect("schedstat run time")
}

/// On-CPU nanoseconds per call of `op`, over `iterations` calls.
fn per_op(iterations: u32, mut op: impl FnMut()) -> f64 {
    let start = cpu_ns();
    for _ in 0..iterations {
        op();
    }
    (cpu_ns() - start) as f64 / f64::from(iterations)
}

fn allocate_release() {
    println!("allocate+release in a /16, on-CPU time per pair");
    for percent in [0u32, 50, 99] {
        let count = SLASH16_FREE * percent / 100;
        let engine = filled_engine(count);
        let claims: Vec<Claim> = (0..200_000)
            .map(|i| Claim::dynamic("s", key(count + 1 + i), "uid"))
            .collect();
        let mut iter = claims.iter();
        let engine_ns = per_op(200_000, || {
            let lease = engine.claim(iter.next().unwrap()).unwrap();
            engine.release(&lease.key, &lease.owner()).unwrap();
        });
        // Enough naive pairs for at least ~100 ms of CPU; at 0% its scan
        // grows with the addresses released so far.
        let naive_pairs = if percent == 0 { 20_000 } else { 200 };
        let mut naive = Naive::new(count);
        let keys: Vec<NicKey> = (0..naive_pairs).map(|i| key(count + 1 + i)).collect();
        let mut keys = keys.into_iter();
        let naive_ns = per_op(naive_pairs, || {
            let addr = naive.allocate(keys.next().unwrap());
            naive.release(addr);
        });
        println!(
            "  {percent:>2}% full: engine {:>8.0} ns   naive model {:>10.0} ns   ratio {:>6.0}x",
            engine_ns,
            naive_ns,
            naive_ns / engine_ns
        );
    }
}

/// Claims and releases timed apart: rounds of 600 claims then their 600
/// releases in a /16 at 99%. Each reading of the CPU clock may lag by up
/// to a scheduler tick; over 300 rounds the lags of round starts and ends
/// cancel out on average.
fn claim_then_release() {
    let count = SLASH16_FREE * 99 / 100;
    let engine = filled_engine(count);
    let (mut claim_ns, mut release_ns, mut next) = (0u64, 0u64, count);
    const ROUNDS: u32 = 300;
    const BATCH: u32 = 600;
    for _ in 0..ROUNDS {
        let claims: Vec<Claim> = (0..BATCH)
            .map(|i| Claim::dynamic("s", key(next + 1 + i), "uid"))
            .collect();
        next += BATCH;
        let start = cpu_ns();
        let leases: Vec<_> = claims.iter().map(|c| engine.claim(c).unwrap()).collect();
        let middle = cpu_ns();
        for lease in &leases {
            engine.release(&lease.key, &lease.owner()).unwrap();
        }
        release_ns += cpu_ns() - middle;
        claim_ns += middle - start;
    }
    let ops = f64::from(ROUNDS * BATCH);
    println!(
        "  99% full, timed apart: claim {:.0} ns   release {:.0} ns",
        claim_ns as f64 / ops,
        release_ns as f64 / ops
    );
}

fn rebuild() {
    let snapshot = records(100_000);
    let start = cpu_ns();
    let (engine, report) = Engine::rebuild(&snapshot, StdRng::seed_from_u64(1));
    let engine_ms = (cpu_ns() - start) as f64 / 1e6;
    assert!(report.conflicts.is_empty());
    black_box(engine);
    let start = cpu_ns();
    black_box(naive_rebuild(&snapshot));
    let naive_ms = (cpu_ns() - start) as f64 / 1e6;
    println!(
        "rebuild from 100,000 records, on-CPU time: engine {engine_ms:.1} ms   naive model {naive_ms:.1} ms"
    );
}

const HOLDERS: u32 = 1_000_000;

fn memory() {
    let before_keys = LIVE.load(Ordering::Relaxed);
    let keys: Vec<NicKey> = (0..HOLDERS).map(key).collect();
    let key_bytes = LIVE.load(Ordering::Relaxed) - before_keys;
    let before = LIVE.load(Ordering::Relaxed);
    let start = cpu_ns();
    let engine = Engine::with_rng(StdRng::seed_from_u64(1));
    engine
        .upsert_subnet(&SubnetSpec {
            name: "big".into(),
            cidr_block: "fd00:64::/64".into(),
            ..SubnetSpec::default()
        })
        .unwrap();
    for key in &keys {
        engine
            .claim(&Claim::dynamic(
                "big",
                key.clone(),
                "0d9f1c2e-5b7a-4c3d-8e6f-1a2b3c4d5e6f",
            ))
            .unwrap();
    }
    let build_ns = cpu_ns() - start;
    let engine_bytes = LIVE.load(Ordering::Relaxed) - before;
    let status = engine.subnet_status("big").unwrap();
    assert_eq!(status.v6_using_ips, u128::from(HOLDERS));
    black_box(&engine);

    let before = LIVE.load(Ordering::Relaxed);
    let base = u128::from("fd00:64::2".parse::<std::net::Ipv6Addr>().unwrap());
    let naive: BTreeMap<u128, NicKey> = keys
        .iter()
        .enumerate()
        .map(|(i, key)| (base + i as u128, key.clone()))
        .collect();
    let naive_bytes = LIVE.load(Ordering::Relaxed) - before;
    black_box(&naive);

    let per = |bytes: usize| bytes as f64 / f64::from(HOLDERS);
    println!("a /64 holding {HOLDERS} allocations, each with a random MAC");
    println!(
        "  engine heap      {engine_bytes:>11} bytes ({:.0} per holder, nic key text excluded)",
        per(engine_bytes)
    );
    println!(
        "  nic key text     {key_bytes:>11} bytes ({:.0} per holder, shared)",
        per(key_bytes)
    );
    println!(
        "  naive model map  {naive_bytes:>11} bytes ({:.0} per holder, address -> key only)",
        per(naive_bytes)
    );
    println!(
        "  engine claims    {:.2} s on-CPU ({:.0} ns per claim)",
        build_ns as f64 / 1e9,
        build_ns as f64 / f64::from(HOLDERS)
    );
}

fn main() {
    // Criterion-style arguments (`--bench`) are ignored.
    allocate_release();
    claim_then_release();
    rebuild();
    memory();
}
