//! Memory of a /64 holding 1,000,000 allocations, measured with a counting
//! global allocator, beside the naive reference model's map for the same
//! holders.
//!
//! Run: `cargo bench -p portkeeper-engine --bench memory`

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

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

const HOLDERS: u32 = 1_000_000;

fn keys() -> Vec<NicKey> {
    (0..HOLDERS)
        .map(|i| NicKey::from(format!("pod-{i}.bench").as_str()))
        .collect()
}

fn main() {
    // Criterion passes `--bench`; there is nothing to parse.
    let before_keys = LIVE.load(Ordering::Relaxed);
    let keys = keys();
    let key_bytes = LIVE.load(Ordering::Relaxed) - before_keys;
    let before = LIVE.load(Ordering::Relaxed);
    let started = Instant::now();
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
    let elapsed = started.elapsed();
    let engine_bytes = LIVE.load(Ordering::Relaxed) - before;
    let status = engine.subnet_status("big").unwrap();
    assert_eq!(status.v6_using_ips, u128::from(HOLDERS));
    black_box(&engine);

    let before = LIVE.load(Ordering::Relaxed);
    let mut naive: BTreeMap<u128, NicKey> = BTreeMap::new();
    let base = u128::from("fd00:64::2".parse::<std::net::Ipv6Addr>().unwrap());
    for (i, key) in keys.iter().enumerate() {
        naive.insert(base + i as u128, key.clone());
    }
    let naive_bytes = LIVE.load(Ordering::Relaxed) - before;
    black_box(&naive);

    let per = |bytes: usize| bytes as f64 / f64::from(HOLDERS);
    println!("memory_slash64_1m_allocations");
    println!("  holders:                 {HOLDERS} (IPv6 /64, each with a random MAC)");
    println!(
        "  engine heap:             {engine_bytes} bytes ({:.0} bytes per holder, nic keys excluded)",
        per(engine_bytes)
    );
    println!(
        "  nic key strings:         {key_bytes} bytes ({:.0} bytes per holder, shared by both)",
        per(key_bytes)
    );
    println!(
        "  naive model map:         {naive_bytes} bytes ({:.0} bytes per holder, address -> key only)",
        per(naive_bytes)
    );
    println!(
        "  engine build time:       {:.2} s ({:.2} us per claim)",
        elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1e6 / f64::from(HOLDERS)
    );
    println!("  available after:         {}", status.v6_available_ips);
}
