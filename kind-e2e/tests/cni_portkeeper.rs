//! portkeeper's own CNI on the local cluster: the controller allocates, each node's
//! `portkeeper-daemon` (its veths and abstract socket in the node's namespace) wires pods into OVN, and the
//! node agents run `portkeeper-cni` as a runtime does. Needs root; under `CI=true` a missing
//! prerequisite fails instead of skipping.

use k8s_openapi::api::core::v1::{Node, Pod};
use kind_e2e::harness::client_from_kubeconfig;
use kind_e2e::{Cluster, ClusterOptions};
use kube::api::{Api, DeleteParams, PostParams};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Child processes killed (by their pid) when the test ends, also on failure.
struct Processes(Vec<Child>);

impl Drop for Processes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
    })
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Builds portkeeper's CNI and controller binaries and returns the folder holding them.
fn build_binaries() -> PathBuf {
    let status = Command::new(env!("CARGO"))
        .current_dir(workspace())
        .args([
            "build",
            "-p",
            "portkeeper-cni",
            "-p",
            "portkeeper-controller",
            "--bins",
        ])
        .status()
        .expect("run cargo");
    assert!(
        status.success(),
        "building portkeeper-cni and portkeeper-controller failed"
    );
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace().join("target"), PathBuf::from);
    target.join("debug")
}

fn run(program: &str, args: &[&str], env: &[(&str, &Path)]) -> String {
    let mut command = Command::new(program);
    command.args(args);
    for (k, v) in env {
        command.env(k, v);
    }
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn state(cluster: &Cluster, key: &str) -> String {
    let text = std::fs::read_to_string(cluster.run_dir().join("state")).expect("cluster state");
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .expect("state key")
        .to_owned()
}

fn pod(name: &str, node: &str, annotations: &[(&str, &str)]) -> Pod {
    let annotations: BTreeMap<&str, &str> = annotations.iter().copied().collect();
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": {"app": "cni-e2e"}, "annotations": annotations},
        "spec": {
            "nodeName": node,
            "containers": [{"name": "c", "image": "none"}],
            "terminationGracePeriodSeconds": 0
        }
    }))
    .unwrap()
}

async fn wait_running(pods: &Api<Pod>, name: &str) -> Pod {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(p) = pods.get(name).await
            && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
            && p.status.as_ref().and_then(|s| s.pod_ip.as_ref()).is_some()
        {
            return p;
        }
        assert!(
            Instant::now() < deadline,
            "pod {name} not Running with an IP: {:?}",
            pods.get(name).await.ok().and_then(|p| p.status)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn annotation<'a>(pod: &'a Pod, key: &str) -> &'a str {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
        .unwrap_or_else(|| panic!("{key} missing"))
}

fn exec(cluster: &Cluster, pod: &str, cmd: &[&str]) -> (bool, String) {
    let out = cluster.pod_exec("default", pod, cmd).expect("pod-exec");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
#[ignore = "flaky: a pod's CNI DEL sometimes never reaches the daemon, so its veth and OVS port stay (issue 7 stays open; run with `cargo test -p portkeeper-kind-e2e --test cni_portkeeper -- --ignored`)"]
fn portkeeper_cni_wires_pods_with_their_annotated_addresses() {
    if !is_root() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true: the CNI e2e needs root"
        );
        eprintln!("the CNI e2e needs root: skipped");
        return;
    }
    let bin = build_binaries();
    let scratch = tempfile::tempdir().unwrap();
    let cni_bin = scratch.path().join("cni-bin");
    std::fs::create_dir_all(&cni_bin).unwrap();
    std::fs::copy(bin.join("portkeeper-cni"), cni_bin.join("portkeeper-cni")).unwrap();
    let conflist = scratch.path().join("portkeeper.conflist");
    std::fs::write(
        &conflist,
        r#"{"cniVersion":"1.0.0","name":"portkeeper","plugins":[{"type":"portkeeper-cni","daemonSocket":"@portkeeper-cni"}]}"#,
    )
    .unwrap();
    // SAFETY: set before any other thread of this test binary starts; the cluster scripts read them.
    unsafe {
        std::env::set_var("PORTKEEPER_CNI_CONFLIST", &conflist);
        std::env::set_var("PORTKEEPER_CNI_BIN_DIR", &cni_bin);
    }
    let cluster = Cluster::up(ClusterOptions {
        node_agent: Some(env!("CARGO_BIN_EXE_node-agent").into()),
        ..ClusterOptions::default()
    })
    .expect("local cluster up");
    let kubeconfig = cluster.kubeconfig().to_path_buf();
    run(
        "kubectl",
        &[
            "apply",
            "-f",
            &workspace().join("yamls/crds.yaml").display().to_string(),
        ],
        &[("KUBECONFIG", &kubeconfig)],
    );

    // Our processes' logs outlive the cluster's run folder: kept when the test fails, removed when it passes.
    let log_dir = std::env::temp_dir().join("portkeeper-cni-e2e-logs");
    let _ = std::fs::remove_dir_all(&log_dir);
    std::fs::create_dir_all(&log_dir).unwrap();
    let mut processes = Processes(Vec::new());
    let log = |name: &str| {
        Stdio::from(std::fs::File::create(log_dir.join(format!("{name}.log"))).unwrap())
    };
    processes.0.push(
        Command::new(bin.join("portkeeper-controller"))
            .env("KUBECONFIG", &kubeconfig)
            .env("OVN_NB_DB", cluster.nb_remote())
            .env("PORTKEEPER_DEFAULT_CIDR", "10.16.0.0/16")
            .env("PORTKEEPER_METRICS_ADDR", "127.0.0.1:0")
            .env("RUST_LOG", "info")
            .stdout(log("portkeeper-controller"))
            .stderr(log("portkeeper-controller.err"))
            .spawn()
            .expect("start portkeeper-controller"),
    );
    let prefix = state(&cluster, "PK_PREFIX");
    for node in cluster.nodes() {
        let db = format!("unix:{}", cluster.node_dir(node).join("db.sock").display());
        processes.0.push(
            Command::new(bin.join("portkeeper-daemon"))
                .args([
                    "--node-name",
                    node,
                    "--socket",
                    "@portkeeper-cni",
                    "--ovs-db",
                    &db,
                ])
                .arg("--netns")
                .arg(Path::new("/run/netns").join(format!("{prefix}{node}")))
                .env("KUBECONFIG", &kubeconfig)
                .stdout(log(&format!("portkeeper-daemon-{node}")))
                .stderr(log(&format!("portkeeper-daemon-{node}.err")))
                .spawn()
                .expect("start portkeeper-daemon"),
        );
    }

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = client_from_kubeconfig(&kubeconfig).await.unwrap();
        let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
        let nodes: Api<Node> = Api::all(client.clone());

        // Each node publishes its chassis name for the controller.
        for node in cluster.nodes() {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let n = nodes.get(node).await.unwrap();
                let chassis = n
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get("ovn.kubernetes.io/chassis").cloned());
                if chassis.as_deref() == Some(node.as_str()) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{node} has no chassis annotation: {chassis:?}; daemon log:\n{}",
                    std::fs::read_to_string(
                        log_dir.join(format!("portkeeper-daemon-{node}.err.log"))
                    )
                    .unwrap_or_default()
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }

        // Two pods on node1, one with a static IP and MAC, and one on node2.
        let static_ip = [
            ("ovn.kubernetes.io/ip_address", "10.16.0.100"),
            ("ovn.kubernetes.io/mac_address", "02:00:00:00:01:00"),
        ];
        for (name, node, annotations) in [
            ("a", "node1", &static_ip[..]),
            ("b", "node1", &[][..]),
            ("c", "node2", &[][..]),
        ] {
            pods.create(&PostParams::default(), &pod(name, node, annotations))
                .await
                .expect("create pod");
        }
        let mut running = BTreeMap::new();
        for name in ["a", "b", "c"] {
            running.insert(name, wait_running(&pods, name).await);
        }

        // eth0 has exactly the annotated address and MAC, and the pod status says the same.
        for (name, p) in &running {
            let ip = annotation(p, "ovn.kubernetes.io/ip_address");
            let mac = annotation(p, "ovn.kubernetes.io/mac_address").to_lowercase();
            assert_eq!(
                p.status.as_ref().unwrap().pod_ip.as_deref(),
                Some(ip),
                "pod {name} status IP"
            );
            let (ok, link) = exec(&cluster, name, &["ip", "-o", "link", "show", "eth0"]);
            assert!(
                ok && link.contains(&mac),
                "pod {name} eth0 {link} lacks MAC {mac}"
            );
            let (ok, addrs) = exec(&cluster, name, &["ip", "-o", "-4", "addr", "show", "eth0"]);
            assert!(
                ok && addrs.contains(&format!("{ip}/16")),
                "pod {name} eth0 {addrs} lacks {ip}/16"
            );
        }
        assert_eq!(
            annotation(&running["a"], "ovn.kubernetes.io/ip_address"),
            "10.16.0.100"
        );
        assert_eq!(
            annotation(&running["a"], "ovn.kubernetes.io/mac_address"),
            "02:00:00:00:01:00"
        );

        // Same-node traffic.
        let b_ip = annotation(&running["b"], "ovn.kubernetes.io/ip_address").to_owned();
        let (ok, out) = exec(&cluster, "a", &["ping", "-c", "2", "-W", "3", &b_ip]);
        assert!(ok, "a -> b on node1: {out}");

        // Both chassis bind their own pods.
        for (name, chassis) in [("a", "node1"), ("c", "node2")] {
            let out = cluster
                .ovn_sbctl(&[
                    "--bare",
                    "--columns=chassis",
                    "find",
                    "port_binding",
                    &format!("logical_port={name}.default"),
                ])
                .unwrap();
            let uuid = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            let out = cluster
                .ovn_sbctl(&["--bare", "--columns=name", "list", "chassis", &uuid])
                .unwrap();
            assert_eq!(
                String::from_utf8_lossy(&out.stdout).trim(),
                chassis,
                "{name}.default binding"
            );
        }
        let c_ip = annotation(&running["c"], "ovn.kubernetes.io/ip_address").to_owned();
        let (cross, out) = exec(&cluster, "a", &["ping", "-c", "2", "-W", "3", &c_ip]);
        eprintln!(
            "cross-node ping a (node1) -> c (node2): {}",
            if cross { "ok" } else { &out }
        );
        let gateway = annotation(&running["a"], "ovn.kubernetes.io/gateway")
            .split(',')
            .next()
            .unwrap()
            .to_owned();
        let (gw, out) = exec(&cluster, "a", &["ping", "-c", "2", "-W", "3", &gateway]);
        eprintln!(
            "ping a -> gateway {gateway}: {}",
            if gw { "ok" } else { &out }
        );

        // Deleting the pods removes their ports and veths.
        for name in ["a", "b", "c"] {
            pods.delete(name, &DeleteParams::default()).await.unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let left: Vec<String> = cluster
                .nodes()
                .iter()
                .flat_map(|node| {
                    let db = format!(
                        "--db=unix:{}",
                        cluster.node_dir(node).join("db.sock").display()
                    );
                    let ports = run("ovs-vsctl", &[&db, "list-ports", "br-int"], &[]);
                    let links = run("ip", &["-n", &format!("{prefix}{node}"), "-o", "link"], &[]);
                    ports
                        .lines()
                        .chain(links.lines().filter_map(|l| l.split(": ").nth(1)))
                        .filter(|n| n.starts_with("pk"))
                        .map(str::to_owned)
                        .collect::<Vec<_>>()
                })
                .collect();
            if left.is_empty()
                && pods
                    .list(&Default::default())
                    .await
                    .unwrap()
                    .items
                    .is_empty()
            {
                break;
            }
            if Instant::now() > deadline {
                // Keep the node agents' logs (the cluster's run folder goes with the cluster).
                for entry in std::fs::read_dir(cluster.run_dir().join("log"))
                    .unwrap()
                    .flatten()
                {
                    let _ = std::fs::copy(entry.path(), log_dir.join(entry.file_name()));
                }
                panic!("left after DEL: {left:?}; logs in {}", log_dir.display());
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    drop(processes);
    cluster.down().expect("cluster down");
    let _ = std::fs::remove_dir_all(&log_dir);
}
