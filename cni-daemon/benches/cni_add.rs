//! CNI ADD latency for N pods (default 100) on one node whose allocations already exist, against a
//! real OVN chassis (userspace datapath) in a fresh node namespace. Rounds in one run: the
//! daemon's ADD with its phases (how much is the wait for `ovn-installed`), then the same pods
//! through the `portkeeper-cni` binary and the daemon socket (call to result, as a runtime sees
//! it), then Kube-OVN's attach step for comparison with ours: one `ovs-vsctl add-port` process per
//! pod, without and with waiting for ovs-vswitchd.
//!
//! Needs root. `cargo bench -p portkeeper-cni --bench cni_add` (`PK_CNI_BENCH_PODS` sets N).

#[path = "../tests/support/mod.rs"]
mod support;

use portkeeper_cni::cni::{Command, PodRef};
use portkeeper_cni::daemon::{AddPhases, server};
use portkeeper_cni::protocol::DaemonRequest;
use std::time::{Duration, Instant};
use support::{TestNetns, allocate, fixture, on_fresh_node};

fn main() {
    if std::env::args().any(|a| a == "--list") || !support::prerequisites_met() {
        return;
    }
    let pods: usize = std::env::var("PK_CNI_BENCH_PODS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100);
    on_fresh_node(move || bench(pods));
}

async fn bench(pods: usize) {
    let f = fixture(Duration::from_secs(30)).await;
    let namespaces: Vec<TestNetns> = (0..pods).map(|_| TestNetns::new()).collect();
    for i in 0..pods {
        let mac = [0x0a, 0x58, 0x0a, 0x10, (i >> 8) as u8, i as u8];
        allocate(
            &f,
            &format!("bench-{i}"),
            mac,
            &format!("10.16.{}.{}", 1 + i / 250, 1 + i % 250),
            None,
        );
    }
    let request = |i: usize, round: &str| DaemonRequest {
        command: Command::Add,
        container_id: format!("{round}{i}"),
        netns: Some(namespaces[i].path()),
        ifname: "eth0".into(),
        pod: Some(PodRef {
            namespace: "default".into(),
            name: format!("bench-{i}"),
            uid: None,
        }),
        mtu: None,
        provider: "ovn".into(),
    };

    let mut totals = Vec::with_capacity(pods);
    let mut phases = Vec::with_capacity(pods);
    for i in 0..pods {
        let mut p = AddPhases::default();
        let started = Instant::now();
        f.daemon.add(&request(i, "d"), &mut p).await.expect("ADD");
        totals.push(started.elapsed());
        phases.push(p);
    }
    for i in 0..pods {
        f.daemon
            .handle(DaemonRequest {
                command: Command::Del,
                ..request(i, "d")
            })
            .await;
    }

    let run_dir = tempfile::tempdir().unwrap();
    let socket = run_dir.path().join("portkeeper").join("cni.sock");
    tokio::spawn(server::serve(
        server::bind(&socket).unwrap(),
        f.daemon.clone(),
    ));
    let config = serde_json::json!({"cniVersion": "1.0.0", "name": "portkeeper", "type": "portkeeper-cni", "daemonSocket": socket});
    let mut plugin_totals = Vec::with_capacity(pods);
    for (i, ns) in namespaces.iter().enumerate() {
        let started = Instant::now();
        let ok = plugin(&config, &format!("p{i}"), ns, i).await;
        plugin_totals.push(started.elapsed());
        assert!(ok, "plugin ADD {i} failed");
    }
    for (i, ns) in namespaces.iter().enumerate() {
        let mut del = request(i, "p");
        del.command = Command::Del;
        del.netns = Some(ns.path());
        f.daemon.handle(del).await;
    }

    let (vsctl_no_wait, vsctl_wait) = (vsctl_attach(&f, pods, false), vsctl_attach(&f, pods, true));

    println!(
        "CNI ADD, {pods} pods in sequence on one node (allocations present), real OVN 23.03 userspace datapath"
    );
    report("daemon ADD total", &totals);
    report(
        "  wait for ovn-installed",
        &phases.iter().map(|p| p.ovn_installed).collect::<Vec<_>>(),
    );
    report(
        "  veth + pod side (netlink)",
        &phases.iter().map(|p| p.interface).collect::<Vec<_>>(),
    );
    report(
        "  OVSDB attach transaction",
        &phases.iter().map(|p| p.attach).collect::<Vec<_>>(),
    );
    report(
        "  GARP/NA",
        &phases.iter().map(|p| p.announce).collect::<Vec<_>>(),
    );
    report("plugin binary ADD (call to result)", &plugin_totals);
    report("ovs-vsctl --no-wait add-port (baseline)", &vsctl_no_wait);
    report("ovs-vsctl add-port, waits (baseline)", &vsctl_wait);
}

/// Kube-OVN's attach step, timed per pod: `ovs-vsctl add-port br-int <veth> -- set Interface
/// <veth> external_ids:iface-id=..` as one process, like our attach transaction adding Port and
/// Interface with the pod's `iface-id`. With `wait`, ovs-vsctl's default: it returns once
/// ovs-vswitchd has applied the change; without, the database transaction alone (as ours). Each
/// port gets a real veth (made before timing) and an `iface-id` no logical port has, so
/// ovn-controller leaves it alone; all are removed afterwards.
fn vsctl_attach(f: &support::Fixture, pods: usize, wait: bool) -> Vec<Duration> {
    let db = format!("--db={}", f.ovn.ovs_remote());
    let names: Vec<String> = (0..pods)
        .map(|i| format!("pkb{}{i}", if wait { 'w' } else { 'n' }))
        .collect();
    for name in &names {
        support::run(
            "ip",
            &[
                "link",
                "add",
                name,
                "type",
                "veth",
                "peer",
                "name",
                &format!("{name}p"),
            ],
        );
    }
    let timings = names
        .iter()
        .map(|name| {
            let iface_id = format!("external_ids:iface-id=vsctl-baseline-{name}");
            let mut args = vec![db.as_str()];
            if !wait {
                args.push("--no-wait");
            }
            args.extend(["--may-exist", "add-port", "br-int", name]);
            args.extend(["--", "set", "Interface", name, &iface_id]);
            let started = Instant::now();
            let out = std::process::Command::new("ovs-vsctl")
                .args(&args)
                .output()
                .expect("run ovs-vsctl");
            let took = started.elapsed();
            assert!(
                out.status.success(),
                "ovs-vsctl add-port {name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            took
        })
        .collect();
    for name in &names {
        f.ovn.vsctl(&["del-port", "br-int", name]);
        support::run("ip", &["link", "del", name]);
    }
    timings
}

async fn plugin(config: &serde_json::Value, container: &str, ns: &TestNetns, i: usize) -> bool {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_portkeeper-cni"))
        .env_clear()
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", container)
        .env("CNI_NETNS", ns.path())
        .env("CNI_IFNAME", "eth0")
        .env(
            "CNI_ARGS",
            format!("K8S_POD_NAMESPACE=default;K8S_POD_NAME=bench-{i}"),
        )
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("run portkeeper-cni");
    let mut input = child.stdin.take().unwrap();
    input
        .write_all(config.to_string().as_bytes())
        .await
        .unwrap();
    drop(input);
    child.wait().await.is_ok_and(|s| s.success())
}

fn report(what: &str, samples: &[Duration]) {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let at =
        |q: f64| sorted[((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1];
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{what:<40} p50 {:>8.1} ms   p99 {:>8.1} ms   max {:>8.1} ms",
        ms(at(0.50)),
        ms(at(0.99)),
        ms(*sorted.last().unwrap())
    );
}
