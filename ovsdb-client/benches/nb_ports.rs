//! Creating logical switch ports in one switch, one transaction per port as a controller does per
//! pod, against a real ovsdb-server: portkeeper's client side by side with `ovn-nbctl` (one
//! process per port, and daemon mode) and with the floor, the same transactions pre-serialized
//! and pipelined over one socket with no client logic.
//!
//! Run with `cargo bench -p ovsdb-client --bench nb_ports`. Knobs (environment):
//! `NB_BENCH_PORTS` (10000), `NB_BENCH_WINDOW` (transactions in flight, 128),
//! `NB_BENCH_NBCTL_SAMPLE` (ports per ovn-nbctl sample, 200; 0 runs every port),
//! `NB_BENCH_MEMORY_ROWS` (ports in the cache-memory scenario, 100000),
//! `NB_BENCH_SCENARIOS` (comma-separated subset of the scenarios, all by default).

#[path = "../tests/support/mod.rs"]
mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufReader, Write};
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::sync_channel;
use std::thread;
use std::time::{Duration, Instant};

use futures::StreamExt;
use ovsdb_client::Client;
use ovsdb_client::protocol::datum::Uuid;
use ovsdb_client::runtime::connection::Coalescing;
use ovsdb_client::runtime::group::{GroupCommit, GroupConfig};
use ovsdb_client::tables::nb::{LogicalSwitch, LogicalSwitchPort, add_switch_port};
use serde_json::{Value, json};
use support::{ServerProcess, Standalone};

/// The system allocator, counting live heap bytes so the cache's memory can be measured exactly
/// (an atomic add per allocation; it costs every scenario the same).
struct CountingAllocator {
    live: AtomicUsize,
}

impl CountingAllocator {
    fn live_bytes(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }
}

// SAFETY: defers to `System` and only counts.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.live.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        self.live.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` came from `alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        self.live.fetch_add(new_size, Ordering::Relaxed);
        self.live.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller upholds `GlobalAlloc::realloc`'s contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator {
    live: AtomicUsize::new(0),
};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} must be a number"))
        })
        .unwrap_or(default)
}

/// CPU time of this process (`RUSAGE_SELF`) or of its reaped children (`RUSAGE_CHILDREN`).
fn rusage_cpu(who: libc::c_int) -> Duration {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage only writes into the struct we own.
    let rc = unsafe { libc::getrusage(who, &mut usage) };
    assert_eq!(rc, 0, "getrusage failed");
    let micros = |tv: libc::timeval| tv.tv_sec as u64 * 1_000_000 + tv.tv_usec as u64;
    Duration::from_micros(micros(usage.ru_utime) + micros(usage.ru_stime))
}

/// One line of the result table.
struct Measurement {
    scenario: String,
    ports: usize,
    wall: Duration,
    client_cpu: Duration,
    server_cpu: Duration,
    note: String,
}

impl Measurement {
    fn rate(&self) -> f64 {
        self.ports as f64 / self.wall.as_secs_f64()
    }

    fn row(&self) -> String {
        format!(
            "| {} | {} | {:.2} | {:.0} | {:.2} | {:.2} | {:.1}% | {} |",
            self.scenario,
            self.ports,
            self.wall.as_secs_f64(),
            self.rate(),
            self.client_cpu.as_secs_f64(),
            self.server_cpu.as_secs_f64(),
            100.0 * self.client_cpu.as_secs_f64() / self.server_cpu.as_secs_f64().max(1e-9),
            self.note
        )
    }
}

/// The per-port data every scenario writes: name, "MAC IP" address, external_ids.
struct Port {
    name: String,
    address: String,
    pod: String,
}

impl Port {
    fn typed(&self) -> LogicalSwitchPort {
        LogicalSwitchPort {
            name: self.name.clone(),
            addresses: BTreeSet::from([self.address.clone()]),
            external_ids: BTreeMap::from([
                ("pod".to_owned(), self.pod.clone()),
                ("vendor".to_owned(), "portkeeper".to_owned()),
            ]),
            ..Default::default()
        }
    }

    fn new(i: usize) -> Self {
        let (hi, lo) = ((i >> 8) & 0xff, i & 0xff);
        Self {
            name: format!("pod-{i}"),
            address: format!("0a:58:0a:10:{hi:02x}:{lo:02x} 10.16.{hi}.{lo}"),
            pod: format!("bench/pod-{i}"),
        }
    }
}

/// A fresh server with one empty switch `bench`.
struct Fixture {
    nb: Standalone,
    switch: String,
}

impl Fixture {
    fn start() -> Self {
        let nb = Standalone::start();
        let switch = nb
            .nbctl(&["create", "Logical_Switch", "name=bench"])
            .trim()
            .to_owned();
        Self { nb, switch }
    }

    fn server(&self) -> &ServerProcess {
        &self.nb.server
    }

    fn socket_path(&self) -> &str {
        self.nb.unix.strip_prefix("unix:").expect("unix remote")
    }

    fn port_count(&self) -> usize {
        self.nb
            .nbctl(&["--columns=_uuid", "--bare", "list", "Logical_Switch_Port"])
            .lines()
            .filter(|l| !l.trim().is_empty())
            .count()
    }
}

/// The wire form of one port-creating transaction: insert the port and add it to the switch.
fn port_transaction(id: usize, switch: &str, port: &Port) -> Vec<u8> {
    let request = json!({
        "id": id,
        "method": "transact",
        "params": ["OVN_Northbound",
            {"op": "insert", "table": "Logical_Switch_Port", "uuid-name": "lsp",
             "row": {"name": port.name, "addresses": port.address,
                     "external_ids": ["map", [["pod", port.pod], ["vendor", "portkeeper"]]]}},
            {"op": "mutate", "table": "Logical_Switch", "where": [["_uuid", "==", ["uuid", switch]]],
             "mutations": [["ports", "insert", ["set", [["named-uuid", "lsp"]]]]]}]
    });
    serde_json::to_vec(&request).expect("serialize request")
}

/// A transaction inserting the ports `ports` and adding them all to the switch, for filling a
/// database quickly.
fn bulk_transaction(id: usize, switch: &str, ports: std::ops::Range<usize>) -> Vec<u8> {
    let mut ops: Vec<Value> = ports
        .clone()
        .map(|i| {
            let port = Port::new(i);
            json!({"op": "insert", "table": "Logical_Switch_Port", "uuid-name": format!("p{i}"),
                   "row": {"name": port.name, "addresses": port.address,
                           "external_ids": ["map", [["pod", port.pod], ["vendor", "portkeeper"]]]}})
        })
        .collect();
    let refs: Vec<Value> = ports
        .map(|i| json!(["named-uuid", format!("p{i}")]))
        .collect();
    ops.push(json!({"op": "mutate", "table": "Logical_Switch", "where": [["_uuid", "==", ["uuid", switch]]],
                    "mutations": [["ports", "insert", ["set", refs]]]}));
    let mut params = vec![json!("OVN_Northbound")];
    params.extend(ops);
    serde_json::to_vec(&json!({"id": id, "method": "transact", "params": params}))
        .expect("serialize")
}

/// What a controller monitors: switches and their ports.
fn monitor_request() -> Vec<u8> {
    serde_json::to_vec(&json!({
        "id": "monitor",
        "method": "monitor_cond_since",
        "params": ["OVN_Northbound", "bench",
                   {"Logical_Switch": [{}], "Logical_Switch_Port": [{}]},
                   "00000000-0000-0000-0000-000000000000"]
    }))
    .expect("serialize")
}

/// Sends pre-serialized requests over one unix socket, at most `window` unanswered, and checks
/// every reply committed. With `monitor`, first sets up the monitor a controller would have, so
/// the server also sends every change back; notifications are read and dropped. Returns the wall
/// time from first write to last reply.
fn raw_pipeline(
    fixture: &Fixture,
    requests: Vec<Vec<u8>>,
    window: usize,
    monitor: bool,
) -> Duration {
    let count = requests.len();
    let stream = UnixStream::connect(fixture.socket_path()).expect("connect to ovsdb-server");
    let mut writer = stream.try_clone().expect("clone socket");
    let mut replies =
        serde_json::Deserializer::from_reader(BufReader::new(stream)).into_iter::<Value>();
    if monitor {
        writer
            .write_all(&monitor_request())
            .expect("write monitor request");
        let reply = replies
            .next()
            .expect("monitor reply")
            .expect("well-formed reply");
        assert!(reply["error"].is_null(), "monitor failed: {reply}");
    }
    let (slots, freed) = sync_channel::<()>(window);
    let start = Instant::now();
    let sender = thread::spawn(move || {
        for request in requests {
            slots.send(()).expect("reader alive");
            writer.write_all(&request).expect("write request");
        }
    });
    let mut received = 0;
    for message in replies {
        let message = message.expect("well-formed message");
        if message["id"].is_null() {
            continue; // a monitor notification
        }
        let results = message["result"]
            .as_array()
            .unwrap_or_else(|| panic!("error reply: {message}"));
        assert!(
            results.iter().all(|r| r.get("error").is_none()),
            "transaction failed: {message}"
        );
        freed.recv().expect("sender alive");
        received += 1;
        if received == count {
            break;
        }
    }
    let wall = start.elapsed();
    sender.join().expect("sender thread");
    wall
}

/// One transaction per port, pre-serialized.
fn port_requests(fixture: &Fixture, ports: std::ops::Range<usize>) -> Vec<Vec<u8>> {
    ports
        .map(|i| port_transaction(i, &fixture.switch, &Port::new(i)))
        .collect()
}

/// Fills the switch with `ports` quickly (1,000 ports per transaction).
fn fill(fixture: &Fixture, ports: std::ops::Range<usize>) {
    let chunks: Vec<Vec<u8>> = ports
        .clone()
        .step_by(1_000)
        .map(|first| {
            bulk_transaction(
                first,
                &fixture.switch,
                first..(first + 1_000).min(ports.end),
            )
        })
        .collect();
    raw_pipeline(fixture, chunks, 4, false);
}

fn floor(ports: usize, window: usize, monitor: bool) -> Measurement {
    let fixture = Fixture::start();
    let requests = port_requests(&fixture, 0..ports);
    let (server0, client0) = (fixture.server().cpu_time(), rusage_cpu(libc::RUSAGE_SELF));
    let wall = raw_pipeline(&fixture, requests, window, monitor);
    let (server1, client1) = (fixture.server().cpu_time(), rusage_cpu(libc::RUSAGE_SELF));
    assert_eq!(fixture.port_count(), ports);
    Measurement {
        scenario: if monitor {
            "floor + monitor: raw pre-serialized JSON, one unix socket, LS+LSP monitored".into()
        } else {
            "floor: raw pre-serialized JSON, one unix socket".into()
        },
        ports,
        wall,
        client_cpu: client1 - client0,
        server_cpu: server1 - server0,
        note: format!(
            "{window} in flight; requests serialized before timing; replies parsed and checked"
        ),
    }
}

/// The client as a controller uses it: one `add_switch_port` transaction per port, `window` in
/// flight. With `monitor`, the cache follows Logical_Switch and Logical_Switch_Port and every
/// transaction returns only once the cache shows it (read-your-writes); without, only NB_Global
/// is monitored. With `grouped`, the transactions go through a [`GroupCommit`], so those waiting
/// while one is in flight go together as one.
fn client(
    runtime: &tokio::runtime::Runtime,
    ports: usize,
    window: usize,
    monitor: bool,
    coalescing: bool,
    grouped: bool,
) -> (Measurement, Option<Lookups>) {
    let fixture = Fixture::start();
    let switch: Uuid = fixture.switch.parse().expect("switch uuid");
    runtime.block_on(async {
        let builder = Client::builder(&fixture.nb.unix, "OVN_Northbound")
            .coalescing(coalescing.then(Coalescing::default));
        let builder = if monitor {
            builder
                .monitor(LogicalSwitch::TABLE, &[])
                .monitor(LogicalSwitchPort::TABLE, &[])
                .index(LogicalSwitchPort::TABLE, &["external_ids:pod"])
        } else {
            builder.monitor("NB_Global", &[])
        };
        let client = builder.connect().await.expect("connect");
        let group = grouped.then(|| {
            std::sync::Arc::new(GroupCommit::new(
                client.clone(),
                GroupConfig::default(),
                vec![],
                vec![],
            ))
        });
        let wanted: Vec<LogicalSwitchPort> = (0..ports).map(|i| Port::new(i).typed()).collect();
        let (server0, client0) = (fixture.server().cpu_time(), rusage_cpu(libc::RUSAGE_SELF));
        let start = Instant::now();
        // The transactions run as futures polled together by one task, as kube-runtime's
        // controller runs its reconcilers (a `FuturesUnordered` inside one stream), not on
        // the thread blocked in `block_on`.
        let driver = {
            let (client, group) = (client.clone(), group.clone());
            tokio::spawn(async move {
                futures::stream::iter(wanted)
                    .for_each_concurrent(window, |port| {
                        let (client, group) = (&client, &group);
                        async move {
                            let operations = add_switch_port(switch, &port, None);
                            match group {
                                Some(group) => {
                                    let deadline =
                                        tokio::time::Instant::now() + Duration::from_secs(60);
                                    group.transact_until(operations, deadline).await
                                }
                                None => client.transact(&operations).await,
                            }
                            .expect("port committed");
                        }
                    })
                    .await;
            })
        };
        driver.await.expect("driver");
        let wall = start.elapsed();
        let (server1, client1) = (fixture.server().cpu_time(), rusage_cpu(libc::RUSAGE_SELF));
        assert_eq!(fixture.port_count(), ports);
        let lookups = monitor.then(|| {
            assert_eq!(client.cache().read().len(LogicalSwitchPort::TABLE), ports);
            lookups(&client, ports)
        });
        let measurement = Measurement {
            scenario: format!(
                "portkeeper client, {}{}{}",
                if monitor {
                    "LS+LSP monitored (read-your-writes)"
                } else {
                    "transact only (NB_Global monitored)"
                },
                if coalescing {
                    ""
                } else {
                    ", no reply coalescing"
                },
                if grouped { ", group commit" } else { "" },
            ),
            ports,
            wall,
            client_cpu: client1 - client0,
            server_cpu: server1 - server0,
            note: match &group {
                Some(group) => {
                    let stats = group.stats();
                    format!(
                        "{window} in flight; one add_switch_port per port, {} transactions ({:.1} ports each)",
                        stats.transactions,
                        stats.members as f64 / stats.transactions.max(1) as f64
                    )
                }
                None => format!("{window} in flight; one add_switch_port transaction per port"),
            },
        };
        (measurement, lookups)
    })
}

/// Microseconds per cache lookup, by a schema index and by a client map-key index.
struct Lookups {
    rows: usize,
    by_name: Duration,
    by_pod: Duration,
    lookups: usize,
}

fn lookups(client: &Client, rows: usize) -> Lookups {
    const LOOKUPS: usize = 100_000;
    let names: Vec<Vec<ovsdb_client::protocol::datum::Value>> = (0..rows)
        .map(|i| vec![Port::new(i).name.as_str().into()])
        .collect();
    let pods: Vec<Vec<ovsdb_client::protocol::datum::Value>> = (0..rows)
        .map(|i| vec![Port::new(i).pod.as_str().into()])
        .collect();
    let time = |columns: &[&str], keys: &[Vec<ovsdb_client::protocol::datum::Value>]| {
        let start = Instant::now();
        for i in 0..LOOKUPS {
            // A stride co-prime with the row count visits keys in a cache-unfriendly order.
            let key = &keys[(i * 7_919) % keys.len()];
            let found = client
                .cache()
                .find(LogicalSwitchPort::TABLE, columns, key)
                .expect("index");
            assert_eq!(found.len(), 1);
        }
        start.elapsed() / LOOKUPS as u32
    };
    Lookups {
        rows,
        by_name: time(&["name"], &names),
        by_pod: time(&["external_ids:pod"], &pods),
        lookups: LOOKUPS,
    }
}

/// Live heap bytes of a client whose cache holds `rows` ports, measured with the counting
/// allocator: after the initial monitor reply is applied, minus before the client existed.
fn cache_memory(runtime: &tokio::runtime::Runtime, rows: usize) -> (usize, Duration) {
    let fixture = Fixture::start();
    fill(&fixture, 0..rows);
    assert_eq!(fixture.port_count(), rows);
    runtime.block_on(async {
        let before = ALLOCATOR.live_bytes();
        let start = Instant::now();
        let client = Client::builder(&fixture.nb.unix, "OVN_Northbound")
            .monitor(LogicalSwitch::TABLE, &[])
            .monitor(LogicalSwitchPort::TABLE, &[])
            .index(LogicalSwitchPort::TABLE, &["external_ids:pod"])
            .connect()
            .await
            .expect("connect");
        let sync = start.elapsed();
        assert_eq!(client.cache().read().len(LogicalSwitchPort::TABLE), rows);
        // Let the connection's read buffer shrink back after the large initial reply.
        client.echo().await.expect("echo");
        (ALLOCATOR.live_bytes().saturating_sub(before), sync)
    })
}

/// The `ovn-nbctl` command a user or script runs per port.
fn nbctl_port_args(port: &Port) -> Vec<String> {
    vec![
        "lsp-add".into(),
        "bench".into(),
        port.name.clone(),
        "--".into(),
        "lsp-set-addresses".into(),
        port.name.clone(),
        port.address.clone(),
        "--".into(),
        "set".into(),
        "Logical_Switch_Port".into(),
        port.name.clone(),
        format!("external_ids:pod={}", port.pod),
        "external_ids:vendor=portkeeper".into(),
    ]
}

/// How `ovn-nbctl` reaches the database: directly, or through its daemon.
enum NbctlMode {
    OneShot { db: String },
    Daemon { control: String },
}

fn run_nbctl(mode: &NbctlMode, args: &[String]) {
    let mut command = Command::new("ovn-nbctl");
    match mode {
        NbctlMode::OneShot { db } => command.arg(format!("--db={db}")),
        NbctlMode::Daemon { control } => command.env("OVN_NB_DAEMON", control),
    };
    let output = command.args(args).output().expect("run ovn-nbctl");
    assert!(
        output.status.success(),
        "ovn-nbctl failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Time and CPU of one `ovn-nbctl` run over a range of ports.
struct Sample {
    wall: Duration,
    client_cpu: Duration,
    server_cpu: Duration,
}

fn nbctl_sample(
    fixture: &Fixture,
    mode: &NbctlMode,
    daemon_pid: Option<u32>,
    ports: std::ops::Range<usize>,
) -> Sample {
    let daemon_cpu = || {
        daemon_pid
            .map(support::process_cpu_time)
            .unwrap_or_default()
    };
    let (server0, children0, daemon0) = (
        fixture.server().cpu_time(),
        rusage_cpu(libc::RUSAGE_CHILDREN),
        daemon_cpu(),
    );
    let start = Instant::now();
    for i in ports {
        run_nbctl(mode, &nbctl_port_args(&Port::new(i)));
    }
    let wall = start.elapsed();
    let client_cpu = rusage_cpu(libc::RUSAGE_CHILDREN) - children0 + (daemon_cpu() - daemon0);
    Sample {
        wall,
        client_cpu,
        server_cpu: fixture.server().cpu_time() - server0,
    }
}

/// `ovn-nbctl` one port per call. With a sample size below `ports`, times the first `sample`
/// ports on an empty switch and the last `sample` ports after filling the switch to
/// `ports - sample` with the raw pipeline, and extrapolates linearly between the two (each call's
/// cost grows with the database, so neither end alone is representative).
fn nbctl(ports: usize, sample: usize, daemon: bool) -> Measurement {
    let fixture = Fixture::start();
    let mut daemon_pid = None;
    let mode = if daemon {
        let dir = fixture.nb.dir();
        let pidfile = dir.join("nbctl.pid");
        let control = support::run(
            "ovn-nbctl",
            &[
                &format!("--db={}", fixture.nb.unix),
                "--detach",
                "--no-chdir",
                &format!("--pidfile={}", pidfile.display()),
                &format!("--log-file={}", dir.join("nbctl.log").display()),
                &format!("--unixctl={}", dir.join("nbctl.ctl").display()),
            ],
        );
        let pid = std::fs::read_to_string(&pidfile).expect("daemon pidfile");
        daemon_pid = Some(pid.trim().parse().expect("pid"));
        NbctlMode::Daemon {
            control: control.trim().to_owned(),
        }
    } else {
        NbctlMode::OneShot {
            db: fixture.nb.unix.clone(),
        }
    };
    let name = if daemon {
        "ovn-nbctl daemon mode (--detach, OVN_NB_DAEMON), one call per port"
    } else {
        "ovn-nbctl, one process per port"
    };
    let measurement = if sample == 0 || sample * 2 >= ports {
        let s = nbctl_sample(&fixture, &mode, daemon_pid, 0..ports);
        Measurement {
            scenario: name.into(),
            ports,
            wall: s.wall,
            client_cpu: s.client_cpu,
            server_cpu: s.server_cpu,
            note: "sequential calls, measured in full".into(),
        }
    } else {
        let first = nbctl_sample(&fixture, &mode, daemon_pid, 0..sample);
        fill(&fixture, sample..ports - sample);
        let last = nbctl_sample(&fixture, &mode, daemon_pid, ports - sample..ports);
        let scale = |a: Duration, b: Duration| (a + b).mul_f64(ports as f64 / (2 * sample) as f64);
        Measurement {
            scenario: format!("{name} (estimate)"),
            ports,
            wall: scale(first.wall, last.wall),
            client_cpu: scale(first.client_cpu, last.client_cpu),
            server_cpu: scale(first.server_cpu, last.server_cpu),
            note: format!(
                "sequential calls; measured ports 1-{sample} ({:.1} ms/port) and {}-{ports} \
                 ({:.1} ms/port), extrapolated linearly",
                first.wall.as_secs_f64() * 1e3 / sample as f64,
                ports - sample + 1,
                last.wall.as_secs_f64() * 1e3 / sample as f64
            ),
        }
    };
    assert_eq!(fixture.port_count(), ports);
    if let Some(pid) = daemon_pid {
        // The daemon detached itself, so it is not our child: stop it by its pid.
        let _ = Command::new("kill").arg(pid.to_string()).status();
    }
    measurement
}

/// Every scenario, in the order of the table.
const ALL_SCENARIOS: &[&str] = &[
    "floor",
    "floor-monitor",
    "client",
    "client-eager",
    "client-monitor",
    "client-monitor-eager",
    "client-grouped",
    "client-monitor-grouped",
    "nbctl-daemon",
    "nbctl",
    "memory",
];

fn main() {
    // `cargo bench` passes `--bench`; this binary has no options of its own.
    let ports = env_usize("NB_BENCH_PORTS", 10_000);
    let window = env_usize("NB_BENCH_WINDOW", 128);
    let sample = env_usize("NB_BENCH_NBCTL_SAMPLE", 200);
    let memory_rows = env_usize("NB_BENCH_MEMORY_ROWS", 100_000);
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");

    let cores = thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!("nb_ports: {ports} logical switch ports in one switch, one transaction per port");
    println!(
        "machine: {cores} cores; {}",
        support::run("ovsdb-server", &["--version"])
            .lines()
            .next()
            .unwrap_or("")
    );
    println!();

    let scenarios = std::env::var("NB_BENCH_SCENARIOS").unwrap_or_else(|_| ALL_SCENARIOS.join(","));
    let mut results = Vec::new();
    let mut lookup_results = None;
    let mut memory = None;
    for scenario in scenarios.split(',') {
        eprintln!("running {scenario} ...");
        match scenario {
            "floor" => results.push(floor(ports, window, false)),
            "floor-monitor" => results.push(floor(ports, window, true)),
            "client" => results.push(client(&runtime, ports, window, false, true, false).0),
            "client-eager" => {
                results.push(client(&runtime, ports, window, false, false, false).0);
            }
            "client-monitor-eager" => {
                results.push(client(&runtime, ports, window, true, false, false).0);
            }
            "client-grouped" => {
                results.push(client(&runtime, ports, window, false, true, true).0);
            }
            "client-monitor-grouped" => {
                results.push(client(&runtime, ports, window, true, true, true).0);
            }
            "client-monitor" => {
                let (measurement, lookups) = client(&runtime, ports, window, true, true, false);
                results.push(measurement);
                lookup_results = lookups;
            }
            "nbctl-daemon" => results.push(nbctl(ports, sample, true)),
            "nbctl" => results.push(nbctl(ports, sample, false)),
            "memory" => memory = Some(cache_memory(&runtime, memory_rows)),
            other => panic!("unknown scenario {other:?}; known: {ALL_SCENARIOS:?}"),
        }
    }

    if !results.is_empty() {
        println!(
            "| scenario | ports | wall s | ports/s | client CPU s | server CPU s | client/server CPU | notes |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---|");
        for result in &results {
            println!("{}", result.row());
        }
        println!();
    }
    if let Some(l) = lookup_results {
        println!(
            "| cache lookup ({} rows, {} lookups) | µs per lookup |",
            l.rows, l.lookups
        );
        println!("|---|---:|");
        println!(
            "| by name (schema unique index) | {:.2} |",
            l.by_name.as_secs_f64() * 1e6
        );
        println!(
            "| by external_ids:pod (client map-key index) | {:.2} |",
            l.by_pod.as_secs_f64() * 1e6
        );
        println!();
    }
    if let Some((bytes, sync)) = memory {
        println!("| cache memory | value |");
        println!("|---|---:|");
        println!(
            "| live heap after the initial sync of {memory_rows} ports | {:.1} MiB |",
            bytes as f64 / 1048576.0
        );
        println!("| per port row | {} bytes |", bytes / memory_rows.max(1));
        println!(
            "| connect + initial monitor sync | {:.2} s |",
            sync.as_secs_f64()
        );
    }
}
