//! Root-level fixtures: a real OVN (NB, SB, northd) and one chassis (ovsdb-server, ovs-vswitchd with
//! the userspace datapath, ovn-controller), plus network namespaces. Everything is removed on drop,
//! also when a test fails: processes are killed by the pid we spawned, namespaces deleted by name.

#![allow(dead_code)]

use portkeeper_cni::cni::{CniError, ErrorCode, PodRef};
use portkeeper_cni::daemon::allocation::Allocation;
use portkeeper_cni::daemon::netdev::VethNames;
use portkeeper_cni::daemon::ovs::Ovs;
use portkeeper_cni::daemon::{AllocationSource, Daemon, Settings, format_mac};
use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Whether the environment can run these tests; under `CI=true` a missing prerequisite is a failure.
pub fn prerequisites_met() -> bool {
    let missing: Vec<&str> = [
        "ovsdb-server",
        "ovs-vswitchd",
        "ovn-controller",
        "ovn-northd",
        "ovn-nbctl",
        "ip",
        "ping",
    ]
    .into_iter()
    .filter(|tool| {
        !Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
    .collect();
    let root = nix::unistd::Uid::effective().is_root();
    if missing.is_empty() && root {
        return true;
    }
    let why = format!("needs root and {missing:?} (root: {root})");
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("CI=true: cannot run the OVN integration tests: {why}");
    }
    eprintln!("skipping: {why}");
    false
}

/// Runs `program args` and returns stdout, panicking with stderr on failure.
pub fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command and reports only whether it succeeded.
pub fn succeeds(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn wait_for(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ready() {
        assert!(
            Instant::now() < deadline,
            "{what} not ready after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// OVN central plus one chassis, each daemon a child process of the test.
pub struct Ovn {
    pub dir: tempfile::TempDir,
    children: Vec<(String, Child)>,
}

impl Ovn {
    /// Starts NB, SB, northd, the chassis' database and vswitchd, creates `br-int` (netdev) and
    /// starts ovn-controller with system-id `chassis`.
    pub fn start(chassis: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("pk-cni-ovn")
            .tempdir()
            .expect("temp dir");
        let mut ovn = Self {
            dir,
            children: Vec::new(),
        };
        let r = ovn.dir.path().to_path_buf();
        let p = |name: &str| r.join(name).display().to_string();
        run(
            "ovsdb-tool",
            &["create", &p("nb.db"), "/usr/share/ovn/ovn-nb.ovsschema"],
        );
        run(
            "ovsdb-tool",
            &["create", &p("sb.db"), "/usr/share/ovn/ovn-sb.ovsschema"],
        );
        run(
            "ovsdb-tool",
            &[
                "create",
                &p("conf.db"),
                "/usr/share/openvswitch/vswitch.ovsschema",
            ],
        );
        for db in ["nb", "sb", "conf"] {
            let remote = format!("--remote=punix:{}", p(&format!("{db}.sock")));
            let ctl = format!("--unixctl={}", p(&format!("{db}.ctl")));
            let log = format!("--log-file={}", p(&format!("{db}.log")));
            ovn.spawn(
                db,
                "ovsdb-server",
                &["--no-chdir", &remote, &ctl, &log, &p(&format!("{db}.db"))],
            );
        }
        for db in ["nb", "sb", "conf"] {
            let sock = r.join(format!("{db}.sock"));
            wait_for(
                &format!("{db} ovsdb-server"),
                Duration::from_secs(10),
                || sock.exists(),
            );
        }
        let nb = format!("--ovnnb-db=unix:{}", p("nb.sock"));
        let sb = format!("--ovnsb-db=unix:{}", p("sb.sock"));
        ovn.spawn(
            "northd",
            "ovn-northd",
            &[
                "--no-chdir",
                &nb,
                &sb,
                &format!("--unixctl={}", p("northd.ctl")),
                &format!("--log-file={}", p("northd.log")),
            ],
        );
        let db = format!("unix:{}", p("conf.sock"));
        let vsctl = |args: &[&str]| {
            let mut all = vec!["--no-wait".to_string(), format!("--db={db}")];
            all.extend(args.iter().map(|a| a.to_string()));
            let all: Vec<&str> = all.iter().map(String::as_str).collect();
            run("ovs-vsctl", &all)
        };
        vsctl(&["init"]);
        ovn.spawn(
            "vswitchd",
            "ovs-vswitchd",
            &[
                "--no-chdir",
                &format!("--unixctl={}", p("vswitchd.ctl")),
                &format!("--log-file={}", p("vswitchd.log")),
                &db,
            ],
        );
        vsctl(&[
            "set",
            "open_vswitch",
            ".",
            &format!("external_ids:system-id={chassis}"),
            &format!("external_ids:ovn-remote=unix:{}", p("sb.sock")),
            "external_ids:ovn-encap-type=geneve",
            "external_ids:ovn-encap-ip=127.0.0.1",
        ]);
        vsctl(&[
            "--may-exist",
            "add-br",
            "br-int",
            "--",
            "set",
            "bridge",
            "br-int",
            "datapath_type=netdev",
            "fail-mode=secure",
            "other-config:disable-in-band=true",
        ]);
        ovn.spawn(
            "ovn-controller",
            "ovn-controller",
            &[
                "--no-chdir",
                &format!("--log-file={}", p("ovn-controller.log")),
                &db,
            ],
        );
        let chassis = chassis.to_owned();
        let sb_remote = format!("--db=unix:{}", p("sb.sock"));
        wait_for("chassis registration", Duration::from_secs(20), || {
            Command::new("ovn-sbctl")
                .args([&sb_remote, "--bare", "--columns=name", "list", "chassis"])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(&chassis))
        });
        ovn
    }

    fn spawn(&mut self, name: &str, program: &str, args: &[&str]) {
        let rundir = self.dir.path().display().to_string();
        let child = Command::new(program)
            .args(args)
            .env("OVS_RUNDIR", &rundir)
            .env("OVN_RUNDIR", &rundir)
            .env("OVS_DBDIR", &rundir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
        self.children.push((name.to_owned(), child));
    }

    /// The chassis' Open_vSwitch database remote.
    pub fn ovs_remote(&self) -> String {
        format!("unix:{}", self.dir.path().join("conf.sock").display())
    }

    /// Runs `ovn-nbctl` against our NB.
    pub fn nbctl(&self, args: &[&str]) -> String {
        let db = format!("--db=unix:{}", self.dir.path().join("nb.sock").display());
        let mut all = vec![db.as_str()];
        all.extend_from_slice(args);
        run("ovn-nbctl", &all)
    }

    /// Runs `ovs-vsctl` against the chassis' database, as an operator would to inspect it.
    pub fn vsctl(&self, args: &[&str]) -> String {
        let db = format!("--db={}", self.ovs_remote());
        let mut all = vec!["--no-wait", db.as_str()];
        all.extend_from_slice(args);
        run("ovs-vsctl", &all)
    }

    /// The ports on br-int.
    pub fn ports(&self) -> Vec<String> {
        self.vsctl(&["list-ports", "br-int"])
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// A log file's contents, for failure messages.
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }
}

impl Drop for Ovn {
    fn drop(&mut self) {
        // ovn-controller first so it does not chase a vanishing database; then the rest, newest first.
        while let Some((_, mut child)) = self.children.pop() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

static NETNS_SEQ: AtomicU32 = AtomicU32::new(0);

/// A named network namespace, deleted on drop.
pub struct TestNetns {
    pub name: String,
}

impl TestNetns {
    pub fn new() -> Self {
        let name = format!(
            "pkcni-{}-{}",
            std::process::id(),
            NETNS_SEQ.fetch_add(1, Ordering::Relaxed)
        );
        run("ip", &["netns", "add", &name]);
        Self { name }
    }

    /// The path runtimes pass as `CNI_NETNS`.
    pub fn path(&self) -> PathBuf {
        Path::new("/var/run/netns").join(&self.name)
    }

    /// Runs a command inside the namespace.
    pub fn exec(&self, args: &[&str]) -> std::process::Output {
        let mut all = vec!["netns", "exec", self.name.as_str()];
        all.extend_from_slice(args);
        Command::new("ip")
            .args(&all)
            .output()
            .expect("ip netns exec")
    }

    /// Whether one ping to `addr` is answered within `wait_s` seconds.
    pub fn ping_once(&self, addr: &str, wait_s: u32) -> bool {
        self.exec(&["ping", "-c", "1", "-W", &wait_s.to_string(), addr])
            .status
            .success()
    }

    /// `ip -o` output of `what` (e.g. `addr`, `route`, `-6 route`) inside the namespace.
    pub fn ip(&self, what: &[&str]) -> String {
        let mut args = vec!["ip", "-o"];
        args.extend_from_slice(what);
        String::from_utf8_lossy(&self.exec(&args).stdout).into_owned()
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// One fake node at a time: its OVN daemons spawn at start and the machine has two cores.
static ONE_NODE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs `body` on a thread inside a fresh "node" network namespace, on a current-thread runtime.
///
/// Everything the test spawns (ovs-vswitchd's `br-int` tap, the daemon's host-side veths) then lives
/// in that namespace, apart from the machine's own and any local cluster's, and goes away with it.
pub fn on_fresh_node<F, Fut>(body: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let _one = ONE_NODE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let node = TestNetns::new();
    let ns = std::fs::File::open(node.path()).expect("open node namespace");
    let thread = std::thread::spawn(move || {
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("enter node namespace");
        run("ip", &["link", "set", "lo", "up"]);
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(body());
    });
    let outcome = thread.join();
    drop(node);
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// Whether a link of that name exists in the calling thread's namespace.
pub fn host_link_exists(name: &str) -> bool {
    succeeds("ip", &["link", "show", "dev", name])
}

/// Allocations set by the test, standing in for the controller's annotations.
#[derive(Clone, Default)]
pub struct FixedAllocations(Arc<Mutex<HashMap<(String, String), Allocation>>>);

impl FixedAllocations {
    pub fn set(&self, namespace: &str, name: &str, allocation: Allocation) {
        self.0
            .lock()
            .unwrap()
            .insert((namespace.into(), name.into()), allocation);
    }
}

impl AllocationSource for FixedAllocations {
    fn wait(
        &self,
        pod: &PodRef,
        _timeout: Duration,
    ) -> impl Future<Output = Result<Allocation, CniError>> + Send {
        let found = self
            .0
            .lock()
            .unwrap()
            .get(&(pod.namespace.clone(), pod.name.clone()))
            .cloned();
        async move {
            found.ok_or_else(|| {
                CniError::new(
                    ErrorCode::AllocationUnavailable,
                    "the test set no allocation",
                )
            })
        }
    }
}

pub struct Fixture {
    pub ovn: Ovn,
    pub allocations: FixedAllocations,
    pub daemon: Arc<Daemon<FixedAllocations>>,
}

pub async fn fixture(install_timeout: Duration) -> Fixture {
    let ovn = Ovn::start("chassis-1");
    ovn.nbctl(&["ls-add", "ls1"]);
    let ovs = Ovs::connect(&ovn.ovs_remote(), "br-int", Duration::from_secs(10))
        .await
        .expect("connect to OVS");
    assert_eq!(ovs.system_id().as_deref(), Some("chassis-1"));
    let allocations = FixedAllocations::default();
    let settings = Settings {
        default_mtu: 1400,
        allocation_timeout: Duration::from_secs(1),
        install_timeout,
    };
    let daemon = Arc::new(Daemon::new(allocations.clone(), ovs, settings).expect("daemon"));
    Fixture {
        ovn,
        allocations,
        daemon,
    }
}

/// Creates the LSP `<pod>.default` and the allocation the controller would have written.
pub fn allocate(f: &Fixture, pod: &str, mac: [u8; 6], v4: &str, v6: Option<&str>) {
    let lsp = format!("{pod}.default");
    let mut addresses = format!("{} {v4}", format_mac(mac));
    if let Some(v6) = v6 {
        addresses.push(' ');
        addresses.push_str(v6);
    }
    f.ovn.nbctl(&[
        "--may-exist",
        "lsp-add",
        "ls1",
        &lsp,
        "--",
        "lsp-set-addresses",
        &lsp,
        &addresses,
    ]);
    let mut nets = vec![format!("{v4}/16").parse().unwrap()];
    let mut gateways = vec!["10.16.0.1".parse().unwrap()];
    if let Some(v6) = v6 {
        nets.push(format!("{v6}/64").parse().unwrap());
        gateways.push("fd00:10:16::1".parse().unwrap());
    }
    f.allocations.set(
        "default",
        pod,
        Allocation {
            addresses: nets,
            gateways,
            mac,
            iface_id: lsp,
        },
    );
}

/// Asserts that no OVS port, host veth or pod interface of `container` remains.
pub fn assert_nothing_left(f: &Fixture, container: &str, netns: Option<&TestNetns>) {
    let names = VethNames::for_container(container, "eth0");
    assert!(
        !f.ovn.ports().contains(&names.host),
        "OVS port {} left on br-int",
        names.host
    );
    assert!(
        !host_link_exists(&names.host),
        "veth {} left on the host",
        names.host
    );
    assert!(
        !host_link_exists(&names.transient_peer),
        "veth {} left on the host",
        names.transient_peer
    );
    if let Some(ns) = netns {
        assert!(
            !ns.ip(&["link"]).contains("eth0"),
            "eth0 left in the pod: {}",
            ns.ip(&["link"])
        );
    }
}
