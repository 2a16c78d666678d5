//! Driving portkeeper's own binaries on a local cluster from the end-to-end suite: building them,
//! running the controller as a child process, and reading back what users read (`ovn-nbctl`,
//! pod annotations, the `kubeovn.io` resources and Events). Shared so every e2e test checks
//! results the same way.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{ApiResource, DynamicObject, ListParams};
use kube::{Api, Client, ResourceExt};
use serde_json::Value;

use crate::{Cluster, ClusterOptions, Provider, consistency, rbac};

/// How long a wait in the e2e suite may take before the test fails.
pub const TIMEOUT: Duration = Duration::from_secs(90);

/// The workspace root, so tests find `yamls/` and build binaries wherever they run from.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Builds one of the workspace's binaries with cargo (unless `override_var` names a prebuilt
/// one) and returns its path, so tests always run the code they were built with.
pub fn cargo_binary(package: &str, bin: &str, override_var: &str) -> PathBuf {
    if let Ok(path) = std::env::var(override_var) {
        return PathBuf::from(path);
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(repo_root())
        .args(["build", "-q", "-p", package, "--bin", bin])
        .status()
        .expect("run cargo build");
    assert!(status.success(), "building {bin} failed");
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo_root().join("target"));
    target.join("debug").join(bin)
}

/// The controller binary (`PORTKEEPER_CONTROLLER_BIN` overrides the build).
pub fn controller_binary() -> PathBuf {
    cargo_binary(
        "portkeeper-controller",
        "portkeeper-controller",
        "PORTKEEPER_CONTROLLER_BIN",
    )
}

/// The controller as a child process of the test; SIGKILLed on drop so a failing test leaves
/// no controller behind.
pub struct Controller {
    child: Child,
    metrics_port: u16,
}

impl Controller {
    /// Starts generation `generation` of the controller, logging to
    /// `<run_dir>/controller-<generation>.log` (see [`print_controller_logs`]). Its identity in
    /// the Lease is `e2e-<generation>`.
    pub fn start(
        bin: &Path,
        cluster: &Cluster,
        default_cidr: &str,
        generation: u32,
        extra_args: &[&str],
    ) -> Self {
        Self::start_with(
            bin,
            cluster,
            &cluster.controller_kubeconfig(),
            default_cidr,
            generation,
            extra_args,
        )
    }

    /// [`Controller::start`] with the API server reached through `kubeconfig`.
    pub fn start_with(
        bin: &Path,
        cluster: &Cluster,
        kubeconfig: &Path,
        default_cidr: &str,
        generation: u32,
        extra_args: &[&str],
    ) -> Self {
        let log = std::fs::File::create(controller_log(cluster, generation)).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let (metrics, identity) = (format!("127.0.0.1:{port}"), format!("e2e-{generation}"));
        let defaults = [
            ("--ovn-nb-db", cluster.nb_remote()),
            ("--default-cidr", default_cidr),
            ("--metrics-addr", &metrics),
            ("--lease-namespace", "kube-system"),
            ("--lease-duration", "5"),
            ("--identity", &identity),
        ];
        // A flag in `extra_args` replaces its default.
        let defaults = defaults
            .into_iter()
            .filter(|(flag, _)| !extra_args.contains(flag))
            .flat_map(|(flag, value)| [flag, value]);
        let child = Command::new(bin)
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .args(defaults)
            .args(extra_args)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start the controller");
        Controller {
            child,
            metrics_port: port,
        }
    }

    /// `http://…/<path>` on the controller's metrics and health server (`metrics`, `readyz`).
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/{path}", self.metrics_port)
    }

    /// The controller's process id (for its memory use in `/proc/<pid>/status`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, as a crash would.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends `signal` (`STOP`, `CONT`, …) to the controller process.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {}", self.child.id());
    }

    /// Waits up to `within` for the process to exit on its own; its status if it did.
    pub fn exited_within(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for the controller") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The log file of controller generation `generation`.
pub fn controller_log(cluster: &Cluster, generation: u32) -> PathBuf {
    cluster
        .run_dir()
        .join(format!("controller-{generation}.log"))
}

/// Prints the tail of each controller generation's log, for a failed test's output.
pub fn print_controller_logs(cluster: &Cluster, generations: u32) {
    for generation in 0..generations {
        let log = controller_log(cluster, generation);
        if let Ok(text) = std::fs::read_to_string(&log) {
            let lines: Vec<&str> = text.lines().collect();
            eprintln!("--- {} (last 40 lines)", log.display());
            for line in &lines[lines.len().saturating_sub(40)..] {
                eprintln!("{line}");
            }
        }
    }
}

/// Brings up a local cluster of `nodes` nodes whose kubelet is the node agent `agent`, without
/// its own controller (`cases` start theirs, [`Controller::start`]), runs `cases` on it, then
/// [`assert_consistent`] while what `cases` returned (its controller) still runs; prints the last
/// `generations` controller logs if either panics, and tears the cluster down in every case.
pub fn run_on_cluster<T>(
    nodes: usize,
    agent: PathBuf,
    generations: u32,
    cases: impl AsyncFnOnce(&Cluster) -> T,
) {
    let options = ClusterOptions {
        nodes,
        node_agent: Some(agent),
        controller: false,
        ..Default::default()
    };
    run_on_cluster_with(options, generations, cases);
}

/// [`run_on_cluster`] on a cluster brought up with `options`.
pub fn run_on_cluster_with<T>(
    options: ClusterOptions,
    generations: u32,
    cases: impl AsyncFnOnce(&Cluster) -> T,
) {
    let local = matches!(Provider::from_env(), Ok(Provider::Local));
    if local && !crate::harness::privileged("the local cluster e2e") {
        return;
    }
    let cluster = Cluster::up(options).expect("local cluster up");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        runtime.block_on(async {
            let running = cases(&cluster).await;
            assert_consistent(&cluster).await;
            drop(running);
        });
        assert_roles_sufficient(&cluster);
    }));
    drop(runtime);
    if result.is_err() {
        print_controller_logs(&cluster, generations);
    }
    cluster.down().expect("cluster down");
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

/// portkeeper's service accounts as the API server's audit log names them, each with the shipped
/// file and the name of its roles: the e2e controllers authenticate as the first
/// ([`Controller::start`]), the local cluster's CNI daemons as the second.
const ACCOUNTS: [(&str, &str, &str); 2] = [
    (
        "system:serviceaccount:kube-system:portkeeper-controller",
        "yamls/rbac.yaml",
        "portkeeper-controller",
    ),
    (
        "system:serviceaccount:kube-system:portkeeper-cni",
        "yamls/daemonset.yaml",
        "portkeeper-cni",
    ),
];

/// Fails the test if the API server refused any request of portkeeper's service accounts (the
/// controller's and the CNI daemon's): the shipped roles must be enough. Prints, per account,
/// the permissions used and those the run left unused.
pub fn assert_roles_sufficient(cluster: &Cluster) {
    let audit = cluster.run_dir().join("log/audit.log");
    if !audit.exists() {
        return; // not the local cluster: no audit log to read
    }
    for (user, file, role) in ACCOUNTS {
        let usage = rbac::usage(&audit, user);
        assert!(
            usage.refused.is_empty(),
            "{file} does not grant what {role} needed; refused:\n{}",
            usage.refused.join("\n")
        );
        let shipped = std::fs::read_to_string(repo_root().join(file)).unwrap();
        let granted = rbac::granted(&shipped, role);
        let list = |set: &mut dyn Iterator<Item = &rbac::Permission>| {
            set.map(ToString::to_string).collect::<Vec<_>>().join(", ")
        };
        println!(
            "rbac: {role} used {} of {} granted permissions, none refused; used: {}; unused in this run: {}",
            usage.used.intersection(&granted).count(),
            granted.len(),
            list(&mut usage.used.iter()),
            list(&mut granted.difference(&usage.used))
        );
    }
}

/// How long [`assert_consistent`] lets changes in flight settle.
const SETTLE: Duration = Duration::from_secs(30);

/// Fails the test unless [`consistency::check`] finds nothing within [`SETTLE`]: every address
/// held once, no leaked port or IP resource, Subnet counters right. Prints the summary line.
pub async fn assert_consistent(cluster: &Cluster) {
    let client = cluster.client().await.expect("kube client");
    assert_consistent_through(&client, cluster.nb_remote()).await;
}

/// [`assert_consistent`] through a kube client and the Northbound remote(s).
pub async fn assert_consistent_through(client: &Client, nb_remote: &str) {
    let report = consistency_report(client, nb_remote, SETTLE).await;
    assert!(
        report.is_consistent(),
        "consistency check failed:\n{report}"
    );
    println!("consistency: {report}");
}

/// The [`consistency`] report once the cluster is consistent, or after `patience`.
pub async fn consistency_report(
    client: &Client,
    nb_remote: &str,
    patience: Duration,
) -> consistency::Report {
    let nb = consistency::connect_northbound(nb_remote, None)
        .await
        .expect("connect to OVN Northbound");
    consistency::settle(client, &nb, patience)
        .await
        .expect("read the cluster for the consistency check")
}

/// `ovn-nbctl` against the cluster's NB database; its trimmed stdout, failing the test on error.
pub fn nbctl(cluster: &Cluster, args: &[&str]) -> String {
    checked_stdout("ovn-nbctl", args, cluster.ovn_nbctl(args))
}

/// The trimmed stdout of a finished OVN tool, failing the test when it could not run or failed.
fn checked_stdout(
    tool: &str,
    args: &[&str],
    out: Result<std::process::Output, crate::HarnessError>,
) -> String {
    let out = out.unwrap_or_else(|e| panic!("run {tool}: {e}"));
    assert!(
        out.status.success(),
        "{tool} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Every IP on a VIF port of the NB database, with duplicates, to prove none is held twice.
pub fn nb_addresses(cluster: &Cluster) -> Vec<String> {
    nbctl(
        cluster,
        &[
            "--bare",
            "--columns=addresses",
            "find",
            "Logical_Switch_Port",
            "type=\"\"",
        ],
    )
    .split_whitespace()
    .filter(|w| w.parse::<std::net::IpAddr>().is_ok())
    .map(str::to_owned)
    .collect()
}

/// `kubectl` against the cluster, failing the test on error.
pub fn kubectl(cluster: &Cluster, args: &[&str]) {
    let out = Command::new("kubectl")
        .env("KUBECONFIG", cluster.kubeconfig())
        .args(args)
        .output()
        .expect("run kubectl");
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `kubectl apply` of a manifest given as text.
pub fn kubectl_apply(cluster: &Cluster, manifest: &str) {
    use std::io::Write;
    let mut child = Command::new("kubectl")
        .env("KUBECONFIG", cluster.kubeconfig())
        .args(["apply", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("run kubectl");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(manifest.as_bytes())
        .unwrap();
    assert!(
        child.wait().unwrap().success(),
        "kubectl apply failed:\n{manifest}"
    );
}

/// Polls `check` until it yields a value, failing the test after [`TIMEOUT`].
pub async fn wait_for<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A Kube-OVN annotation of a pod, by its key without the `ovn.kubernetes.io/` prefix.
pub fn annotation<'a>(p: &'a Pod, key: &str) -> Option<&'a str> {
    p.annotations()
        .get(&format!("ovn.kubernetes.io/{key}"))
        .map(String::as_str)
}

/// A cluster-scoped `kubeovn.io/v1` object (Subnet, IP, IPPool) as JSON, if it exists.
pub async fn kubeovn_resource(
    client: &Client,
    plural: &str,
    kind: &str,
    name: &str,
) -> Option<Value> {
    let api: Api<DynamicObject> = Api::all_with(
        client.clone(),
        &ApiResource {
            group: "kubeovn.io".into(),
            version: "v1".into(),
            api_version: "kubeovn.io/v1".into(),
            kind: kind.into(),
            plural: plural.into(),
        },
    );
    api.get_opt(name)
        .await
        .unwrap()
        .map(|o| serde_json::to_value(o).unwrap())
}

/// The IP resource of a nic (`<pod>.<ns>[.<provider>]`), if it exists.
pub async fn ip_resource(client: &Client, name: &str) -> Option<Value> {
    kubeovn_resource(client, "ips", "IP", name).await
}

/// (reason, message) of every Warning Event about the object `name` in `namespace`.
pub async fn warnings(client: &Client, namespace: &str, name: &str) -> Vec<(String, String)> {
    events(client, namespace, name)
        .await
        .into_iter()
        .filter(|(kind, _, _)| kind == "Warning")
        .map(|(_, reason, message)| (reason, message))
        .collect()
}

/// (type, reason, message) of every Event about the object `name` in `namespace`.
pub async fn events(client: &Client, namespace: &str, name: &str) -> Vec<(String, String, String)> {
    let api: Api<Event> = Api::namespaced(client.clone(), namespace);
    api.list(&ListParams::default().fields(&format!("involvedObject.name={name}")))
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|e| {
            (
                e.type_.unwrap_or_default(),
                e.reason.unwrap_or_default(),
                e.message.unwrap_or_default(),
            )
        })
        .collect()
}

/// The KubeVirt CRDs for the local cluster (`kind-e2e/crds/kubevirt.yaml`), so a test can play
/// virt-controller with VirtualMachine, VirtualMachineInstance and migration objects.
pub fn kubevirt_crds() -> PathBuf {
    repo_root().join("kind-e2e/crds/kubevirt.yaml")
}

/// The namespaced `kubevirt.io/v1` API of `kind` (`VirtualMachine`, `VirtualMachineInstance`,
/// `VirtualMachineInstanceMigration`), untyped: tests write KubeVirt's objects as JSON.
pub fn kubevirt_api(client: &Client, namespace: &str, kind: &str) -> Api<DynamicObject> {
    Api::namespaced_with(
        client.clone(),
        namespace,
        &ApiResource {
            group: "kubevirt.io".into(),
            version: "v1".into(),
            api_version: "kubevirt.io/v1".into(),
            kind: kind.into(),
            plural: format!("{}s", kind.to_lowercase()),
        },
    )
}

/// A node's OVN chassis name: `external_ids:system-id` of its Open_vSwitch database, which is
/// what ovn-controller registers the chassis under (local provider).
pub fn node_chassis(cluster: &Cluster, node: &str) -> String {
    vsctl(
        cluster,
        node,
        &["get", "Open_vSwitch", ".", "external_ids:system-id"],
    )
    .trim()
    .trim_matches('"')
    .to_owned()
}

/// The names of the OVS interfaces on `node` that match an `ovs-vsctl find` condition, such as
/// `external_ids:iface-id=PORT` (local provider).
pub fn ovs_interfaces(cluster: &Cluster, node: &str, condition: &str) -> Vec<String> {
    vsctl(
        cluster,
        node,
        &["--bare", "--columns=name", "find", "interface", condition],
    )
    .lines()
    .filter(|l| !l.is_empty())
    .map(str::to_owned)
    .collect()
}

/// `ovs-vsctl` on `node`'s Open_vSwitch database; its output.
fn vsctl(cluster: &Cluster, node: &str, args: &[&str]) -> String {
    let db = cluster.node_dir(node).join("db.sock");
    let out = Command::new("ovs-vsctl")
        .arg(format!("--db=unix:{}", db.display()))
        .arg("--timeout=10")
        .args(args)
        .output()
        .expect("run ovs-vsctl");
    assert!(
        out.status.success(),
        "ovs-vsctl {args:?} on {node}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A port's `options` as `ovn-nbctl lsp-get-options` prints them.
pub fn lsp_options(cluster: &Cluster, port: &str) -> std::collections::BTreeMap<String, String> {
    nbctl(cluster, &["lsp-get-options", port])
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// Applies the KubeVirt CRDs and waits until the API server serves all three kinds, so that a
/// controller started next sees KubeVirt installed.
pub async fn install_kubevirt(cluster: &Cluster, client: &Client) {
    kubectl(cluster, &["apply", "-f", kubevirt_crds().to_str().unwrap()]);
    for kind in [
        "VirtualMachine",
        "VirtualMachineInstance",
        "VirtualMachineInstanceMigration",
    ] {
        wait_for(&format!("kubevirt.io/v1 {kind} served"), async || {
            let api = kubevirt_api(client, "default", kind);
            api.list(&ListParams::default().limit(1))
                .await
                .ok()
                .map(drop)
        })
        .await;
    }
}

/// A numeric setting of a benchmark from the environment, `default` when unset or unreadable.
pub fn setting<T: std::str::FromStr>(var: &str, default: T) -> T {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A busybox container that sleeps: it keeps its pod running on a real node (`up --kubelet`),
/// where busybox's own command (`sh`, no input) would exit at once; the node agent runs none.
pub fn sleeping_container(name: &str) -> serde_json::Value {
    serde_json::json!({"name": name, "image": "busybox", "command": ["sleep", "infinity"]})
}

/// The plain pod `namespace/name`: one busybox container, no service account token.
pub fn plain_pod(namespace: &str, name: &str) -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"automountServiceAccountToken": false,
            "containers": [sleeping_container("c")]},
    }))
    .unwrap()
}

/// Creates the [`plain_pod`] `namespace/name`.
pub async fn create_pod(pods: &Api<Pod>, namespace: &str, name: &str) {
    pods.create(
        &kube::api::PostParams::default(),
        &plain_pod(namespace, name),
    )
    .await
    .unwrap();
}

/// The 1-, 5- and 15-minute load averages, for a benchmark's record of the machine's load.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Waits until the controller has marked the pod allocated, and returns it.
pub async fn allocated(pods: &Api<Pod>, name: &str) -> Pod {
    wait_for(&format!("{name} allocated"), async || {
        let p = pods.get(name).await.ok()?;
        (annotation(&p, "allocated") == Some("true")).then_some(p)
    })
    .await
}

/// Applies portkeeper's CRDs (and KubeVirt's, when `kubevirt`), creates `namespace`, and returns
/// a client: the common start of a controller e2e test.
pub async fn prepare_cluster(cluster: &Cluster, namespace: &str, kubevirt: bool) -> Client {
    let crds = repo_root().join("yamls/crds.yaml");
    kubectl(cluster, &["apply", "-f", crds.to_str().unwrap()]);
    let client = cluster.client().await.unwrap();
    if kubevirt {
        install_kubevirt(cluster, &client).await;
    }
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let object = serde_json::from_value(serde_json::json!({ "metadata": { "name": namespace } }))
        .expect("a namespace object");
    namespaces
        .create(&kube::api::PostParams::default(), &object)
        .await
        .unwrap();
    client
}

/// `ovn-sbctl` against the cluster's SB database; its trimmed stdout, failing the test on error.
pub fn sbctl(cluster: &Cluster, args: &[&str]) -> String {
    checked_stdout("ovn-sbctl", args, cluster.ovn_sbctl(args))
}

/// The names of the logical switch ports matching an `ovn-nbctl find` condition such as
/// `external_ids:pod="ns/name"`, one per line.
pub fn port_names(cluster: &Cluster, condition: &str) -> String {
    nbctl(
        cluster,
        &[
            "--bare",
            "--columns=name",
            "find",
            "Logical_Switch_Port",
            condition,
        ],
    )
}
