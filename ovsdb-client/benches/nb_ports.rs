//! Creating logical switch ports in one switch, one transaction per port as a controller does per
//! pod, against a real ovsdb-server: portkeeper's client side by side with `ovn-nbctl` (one
//! process per port, and daemon mode) and with the floor, the same transactions pre-serialized
//! and pipelined over one socket with no client logic.
//!
//! Run with `cargo bench -p ovsdb-client --bench nb_ports`. Knobs (environment):
//! `NB_BENCH_PORTS` (10000), `NB_BENCH_WINDOW` (transactions in flight, 128),
//! `NB_BENCH_NBCTL_SAMPLE` (ports per ovn-nbctl sample, 200; 0 runs every port),
//! `NB_BENCH_SCENARIOS` (comma-separated subset of the scenarios, all by default).

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::{BufReader, Write};
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::sync::mpsc::sync_channel;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{ServerProcess, Standalone};

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

/// Sends pre-serialized transactions over one unix socket, at most `window` unanswered, and
/// checks every reply committed. Returns the wall time from first write to last reply.
fn raw_pipeline(fixture: &Fixture, ports: std::ops::Range<usize>, window: usize) -> Duration {
    let requests: Vec<Vec<u8>> = ports
        .clone()
        .map(|i| port_transaction(i, &fixture.switch, &Port::new(i)))
        .collect();
    let count = requests.len();
    let stream = UnixStream::connect(fixture.socket_path()).expect("connect to ovsdb-server");
    let mut writer = stream.try_clone().expect("clone socket");
    let (slots, freed) = sync_channel::<()>(window);
    let start = Instant::now();
    let sender = thread::spawn(move || {
        for request in requests {
            slots.send(()).expect("reader alive");
            writer.write_all(&request).expect("write request");
        }
    });
    let replies =
        serde_json::Deserializer::from_reader(BufReader::new(stream)).into_iter::<Value>();
    for (received, reply) in replies.enumerate() {
        let reply = reply.expect("well-formed reply");
        let results = reply["result"]
            .as_array()
            .unwrap_or_else(|| panic!("error reply: {reply}"));
        assert!(
            results.iter().all(|r| r.get("error").is_none()),
            "transaction failed: {reply}"
        );
        freed.recv().expect("sender alive");
        if received + 1 == count {
            break;
        }
    }
    let wall = start.elapsed();
    sender.join().expect("sender thread");
    wall
}

fn floor(ports: usize, window: usize) -> Measurement {
    let fixture = Fixture::start();
    let (server0, client0) = (fixture.server().cpu_time(), rusage_cpu(libc::RUSAGE_SELF));
    let wall = raw_pipeline(&fixture, 0..ports, window);
    let (server1, client1) = (fixture.server().cpu_time(), rusage_cpu(libc::RUSAGE_SELF));
    assert_eq!(fixture.port_count(), ports);
    Measurement {
        scenario: "floor: raw pre-serialized JSON, one unix socket".into(),
        ports,
        wall,
        client_cpu: client1 - client0,
        server_cpu: server1 - server0,
        note: format!("{window} in flight, replies parsed and checked"),
    }
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
fn nbctl(ports: usize, sample: usize, window: usize, daemon: bool) -> Measurement {
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
        raw_pipeline(&fixture, sample..ports - sample, window);
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
const ALL_SCENARIOS: &[&str] = &["floor", "nbctl-daemon", "nbctl"];

fn main() {
    // `cargo bench` passes `--bench`; this binary has no options of its own.
    let ports = env_usize("NB_BENCH_PORTS", 10_000);
    let window = env_usize("NB_BENCH_WINDOW", 128);
    let sample = env_usize("NB_BENCH_NBCTL_SAMPLE", 200);

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
    for scenario in scenarios.split(',') {
        eprintln!("running {scenario} ...");
        results.push(match scenario {
            "floor" => floor(ports, window),
            "nbctl-daemon" => nbctl(ports, sample, window, true),
            "nbctl" => nbctl(ports, sample, window, false),
            other => panic!("unknown scenario {other:?}; known: {ALL_SCENARIOS:?}"),
        });
    }

    println!(
        "| scenario | ports | wall s | ports/s | client CPU s | server CPU s | client/server CPU | notes |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---|");
    for result in &results {
        println!("{}", result.row());
    }
}
