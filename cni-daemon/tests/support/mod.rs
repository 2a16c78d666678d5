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

/// Whether the environment can run these tests. A missing prerequisite fails the test with the
/// reason, unless `PORTKEEPER_ALLOW_SKIP=1` (for developers without root) makes it skip.
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
    if std::env::var("PORTKEEPER_ALLOW_SKIP").as_deref() == Ok("1") {
        eprintln!("skipping (PORTKEEPER_ALLOW_SKIP=1): {why}");
        return false;
    }
    panic!(
        "cannot run the OVN integration tests: {why}; run `dev/test` as root, or set \
         PORTKEEPER_ALLOW_SKIP=1 to skip them"
    );
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

/// OVN central (NB, SB, northd) and its chassis, each daemon a child process of the test.
pub struct Ovn {
    pub dir: tempfile::TempDir,
    children: Vec<(String, Child)>,
    chassis: Vec<String>,
}

/// Where a chassis runs and how it reaches the others.
#[derive(Default)]
pub struct ChassisOptions<'a> {
    /// The node namespace ovs-vswitchd runs in (its `br-int` tap and the pods' host ends live there);
    /// `None` for the calling thread's.
    pub netns: Option<&'a str>,
    /// The underlay port and the tunnel endpoint address put on a `br-phy` bridge, as OVS's
    /// userspace tunnelling needs; `None` leaves the chassis without tunnels (127.0.0.1).
    pub underlay: Option<(&'a str, &'a str)>,
}

impl Ovn {
    /// Central plus one chassis `chassis` in the calling thread's namespace.
    pub fn start(chassis: &str) -> Self {
        let mut ovn = Self::central();
        ovn.add_chassis(chassis, ChassisOptions::default());
        ovn
    }

    /// Starts NB, SB and northd.
    pub fn central() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("pk-cni-ovn")
            .tempdir()
            .expect("temp dir");
        let mut ovn = Self {
            dir,
            children: Vec::new(),
            chassis: Vec::new(),
        };
        for db in ["nb", "sb"] {
            let schema = format!("/usr/share/ovn/ovn-{db}.ovsschema");
            ovn.start_db(db, &schema);
        }
        let p = |name: &str| ovn.path(name);
        let args = [
            "--no-chdir".to_string(),
            format!("--ovnnb-db=unix:{}", p("nb.sock")),
            format!("--ovnsb-db=unix:{}", p("sb.sock")),
            format!("--unixctl={}", p("northd.ctl")),
            format!("--log-file={}", p("northd.log")),
        ];
        ovn.spawn("northd", None, "ovn-northd", &args);
        ovn
    }

    /// Starts chassis `name`: its Open_vSwitch database, ovs-vswitchd (userspace datapath) with a
    /// netdev `br-int`, and ovn-controller with system-id `name`; waits until it is in the SB.
    pub fn add_chassis(&mut self, name: &str, options: ChassisOptions<'_>) {
        std::fs::create_dir_all(self.dir.path().join(name)).expect("chassis dir");
        let sock = self.start_db(
            &format!("{name}/conf"),
            "/usr/share/openvswitch/vswitch.ovsschema",
        );
        let db = format!("unix:{sock}");
        let vsctl = |args: &[&str]| {
            let mut all = vec!["--timeout=20".to_string(), format!("--db={db}")];
            all.extend(args.iter().map(|a| a.to_string()));
            let all: Vec<&str> = all.iter().map(String::as_str).collect();
            run("ovs-vsctl", &all)
        };
        vsctl(&["--no-wait", "init"]);
        let vswitchd = [
            "--no-chdir".to_string(),
            format!("--unixctl={}", self.path(&format!("{name}/vswitchd.ctl"))),
            format!("--log-file={}", self.path(&format!("{name}/vswitchd.log"))),
            db.clone(),
        ];
        self.spawn(
            &format!("{name}-vswitchd"),
            options.netns,
            "ovs-vswitchd",
            &vswitchd,
        );
        let encap_ip = options
            .underlay
            .map_or("127.0.0.1", |(_, ip)| ip.split('/').next().unwrap());
        vsctl(&[
            "set",
            "open_vswitch",
            ".",
            &format!("external_ids:system-id={name}"),
            &format!("external_ids:ovn-remote=unix:{}", self.path("sb.sock")),
            "external_ids:ovn-encap-type=geneve",
            &format!("external_ids:ovn-encap-ip={encap_ip}"),
        ]);
        vsctl(&[
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
        if let Some((port, ip)) = options.underlay {
            vsctl(&[
                "add-br",
                "br-phy",
                "--",
                "set",
                "bridge",
                "br-phy",
                "datapath_type=netdev",
            ]);
            vsctl(&["add-port", "br-phy", port]);
            let ns = options.netns.expect("an underlay needs the node namespace");
            run("ip", &["-n", ns, "link", "set", port, "up"]);
            run("ip", &["-n", ns, "addr", "add", ip, "dev", "br-phy"]);
            run("ip", &["-n", ns, "link", "set", "br-phy", "up"]);
        }
        let controller = [
            "--no-chdir".to_string(),
            format!(
                "--log-file={}",
                self.path(&format!("{name}/ovn-controller.log"))
            ),
            db,
        ];
        self.spawn(
            &format!("{name}-ovn-controller"),
            None,
            "ovn-controller",
            &controller,
        );
        let sb = format!("--db=unix:{}", self.path("sb.sock"));
        wait_for("chassis registration", Duration::from_secs(20), || {
            Command::new("ovn-sbctl")
                .args([sb.as_str(), "--bare", "--columns=name", "list", "chassis"])
                .output()
                .is_ok_and(|o| {
                    String::from_utf8_lossy(&o.stdout)
                        .lines()
                        .any(|l| l == name)
                })
        });
        self.chassis.push(name.to_owned());
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// Creates and starts an ovsdb-server for `name` (`<name>.db`), returning its socket path.
    fn start_db(&mut self, name: &str, schema: &str) -> String {
        let (db, sock) = (
            self.path(&format!("{name}.db")),
            self.path(&format!("{name}.sock")),
        );
        run("ovsdb-tool", &["create", &db, schema]);
        let args = [
            "--no-chdir".to_string(),
            format!("--remote=punix:{sock}"),
            format!("--unixctl={}", self.path(&format!("{name}.ctl"))),
            format!("--log-file={}", self.path(&format!("{name}.log"))),
            db,
        ];
        self.spawn(name, None, "ovsdb-server", &args);
        let path = PathBuf::from(&sock);
        wait_for(
            &format!("{name} ovsdb-server"),
            Duration::from_secs(10),
            || path.exists(),
        );
        sock
    }

    /// Spawns `program` (inside `netns` when given) with its run directory in our folder.
    fn spawn(&mut self, name: &str, netns: Option<&str>, program: &str, args: &[String]) {
        let rundir = self.dir.path().display().to_string();
        let mut command = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, program]);
                c
            }
            None => Command::new(program),
        };
        let child = command
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

    /// The first chassis' Open_vSwitch database remote.
    pub fn ovs_remote(&self) -> String {
        self.chassis_remote(&self.chassis[0])
    }

    /// Chassis `name`'s Open_vSwitch database remote.
    pub fn chassis_remote(&self, name: &str) -> String {
        format!("unix:{}", self.path(&format!("{name}/conf.sock")))
    }

    /// Runs `ovn-nbctl` against our NB.
    pub fn nbctl(&self, args: &[&str]) -> String {
        let db = format!("--db=unix:{}", self.path("nb.sock"));
        let mut all = vec![db.as_str()];
        all.extend_from_slice(args);
        run("ovn-nbctl", &all)
    }

    /// Runs `ovn-sbctl` against our SB.
    pub fn sbctl(&self, args: &[&str]) -> String {
        let db = format!("--db=unix:{}", self.path("sb.sock"));
        let mut all = vec![db.as_str()];
        all.extend_from_slice(args);
        run("ovn-sbctl", &all)
    }

    /// Runs `ovs-vsctl` against the first chassis' database, as an operator would to inspect it.
    pub fn vsctl(&self, args: &[&str]) -> String {
        self.chassis_vsctl(&self.chassis[0], args)
    }

    /// Runs `ovs-vsctl` against chassis `name`'s database.
    pub fn chassis_vsctl(&self, name: &str, args: &[&str]) -> String {
        let db = format!("--db={}", self.chassis_remote(name));
        let mut all = vec!["--no-wait", db.as_str()];
        all.extend_from_slice(args);
        run("ovs-vsctl", &all)
    }

    /// The ports on the first chassis' br-int.
    pub fn ports(&self) -> Vec<String> {
        self.vsctl(&["list-ports", "br-int"])
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// A log file's contents (e.g. `chassis-1/ovn-controller`), for failure messages.
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }
}

impl Drop for Ovn {
    fn drop(&mut self) {
        // Newest first: ovn-controllers and vswitchds before the databases they use.
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

    /// Connects over TCP from this namespace to a listener in `server` on `addr` (either family),
    /// sends a line and reads it echoed back: pings alone do not show that TCP's checksums survive
    /// the datapath. The error says which side failed and how.
    pub fn tcp_round_trip(&self, server: &TestNetns, addr: &str) -> Result<(), String> {
        use std::io::{Read, Write};
        use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
        const TIMEOUT: Duration = Duration::from_secs(10);
        const LINE: &[u8] = b"portkeeper tcp\n";
        let ip: IpAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
        let unspecified: IpAddr = if ip.is_ipv6() {
            std::net::Ipv6Addr::UNSPECIFIED.into()
        } else {
            std::net::Ipv4Addr::UNSPECIFIED.into()
        };
        let listener = in_netns(&server.name, move || async move {
            TcpListener::bind(SocketAddr::new(unspecified, 0))
        })
        .map_err(|e| format!("listen in {}: {e}", server.name))?;
        let port = listener.local_addr().map_err(|e| e.to_string())?.port();
        // The listening socket stays in the server's namespace; accepting needs no setns.
        let echo = std::thread::spawn(move || -> Result<(), String> {
            listener.set_nonblocking(true).map_err(|e| e.to_string())?;
            let deadline = Instant::now() + TIMEOUT;
            let mut stream = loop {
                match listener.accept() {
                    Ok((stream, _)) => break stream,
                    Err(e)
                        if e.kind() == std::io::ErrorKind::WouldBlock
                            && Instant::now() < deadline =>
                    {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(e) => return Err(format!("server: no connection ({e})")),
                }
            };
            stream.set_nonblocking(false).map_err(|e| e.to_string())?;
            stream
                .set_read_timeout(Some(TIMEOUT))
                .map_err(|e| e.to_string())?;
            let mut line = vec![0; LINE.len()];
            stream
                .read_exact(&mut line)
                .map_err(|e| format!("server: read: {e}"))?;
            stream
                .write_all(&line)
                .map_err(|e| format!("server: write: {e}"))
        });
        let to = SocketAddr::new(ip, port);
        let sent = in_netns(&self.name, move || async move {
            let mut stream = TcpStream::connect_timeout(&to, TIMEOUT)
                .map_err(|e| format!("client: connect to {to}: {e}"))?;
            stream
                .set_read_timeout(Some(TIMEOUT))
                .map_err(|e| e.to_string())?;
            stream
                .write_all(LINE)
                .map_err(|e| format!("client: write: {e}"))?;
            let mut back = vec![0; LINE.len()];
            stream
                .read_exact(&mut back)
                .map_err(|e| format!("client: read: {e}"))?;
            if back == LINE {
                Ok(())
            } else {
                Err(format!("client: got {back:?} back"))
            }
        });
        let echoed = echo
            .join()
            .map_err(|_| "the echo thread panicked".to_owned())?;
        sent.and(echoed)
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
    run("ip", &["-n", &node.name, "link", "set", "lo", "up"]);
    let outcome =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| in_netns(&node.name, body)));
    drop(node);
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// Runs `body` on a thread inside namespace `netns` on a current-thread runtime and returns its
/// output; a panic in `body` is re-raised here.
pub fn in_netns<T, F, Fut>(netns: &str, body: F) -> T
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T>,
{
    let ns = std::fs::File::open(Path::new("/var/run/netns").join(netns)).expect("open namespace");
    let thread = std::thread::spawn(move || {
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("enter namespace");
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(body())
    });
    thread
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// Serialises tests that start their own OVN: the machine has two cores.
pub fn one_ovn_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_NODE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether a link of that name exists in the calling thread's namespace.
pub fn host_link_exists(name: &str) -> bool {
    succeeds("ip", &["link", "show", "dev", name])
}

/// Allocations set by the test per pod and network (provider), standing in for the controller's
/// annotations.
#[derive(Clone, Default)]
pub struct FixedAllocations(Arc<Mutex<HashMap<NetworkOfPod, Allocation>>>);

/// (namespace, pod, provider).
type NetworkOfPod = (String, String, String);

impl FixedAllocations {
    /// The pod's allocation on the primary network.
    pub fn set(&self, namespace: &str, name: &str, allocation: Allocation) {
        self.set_on(namespace, name, "ovn", allocation);
    }

    /// The pod's allocation on `provider`'s network.
    pub fn set_on(&self, namespace: &str, name: &str, provider: &str, allocation: Allocation) {
        self.0
            .lock()
            .unwrap()
            .insert((namespace.into(), name.into(), provider.into()), allocation);
    }
}

impl AllocationSource for FixedAllocations {
    fn wait(
        &self,
        pod: &PodRef,
        provider: &str,
        _timeout: Duration,
    ) -> impl Future<Output = Result<Allocation, CniError>> + Send {
        let found = self
            .0
            .lock()
            .unwrap()
            .get(&(pod.namespace.clone(), pod.name.clone(), provider.to_owned()))
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
    let ovs = Ovs::connect(&ovn.ovs_remote(), "br-int", Duration::from_secs(10), None)
        .await
        .expect("connect to OVS");
    assert_eq!(ovs.system_id().as_deref(), Some("chassis-1"));
    let allocations = FixedAllocations::default();
    let settings = Settings {
        default_mtu: 1400,
        allocation_timeout: Duration::from_secs(1),
        install_timeout,
    };
    let daemon = Arc::new(Daemon::new(allocations.clone(), ovs, settings, None).expect("daemon"));
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
            dns: None,
        },
    );
}

/// Asserts that no OVS port, host veth or pod interface of `container`'s eth0 remains.
pub fn assert_nothing_left(f: &Fixture, container: &str, netns: Option<&TestNetns>) {
    assert_interface_gone(f, container, "eth0", netns);
}

/// Asserts that no OVS port, host veth or pod interface of `container`'s `ifname` remains.
pub fn assert_interface_gone(
    f: &Fixture,
    container: &str,
    ifname: &str,
    netns: Option<&TestNetns>,
) {
    let names = VethNames::for_container(container, ifname);
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
            !ns.ip(&["link"]).contains(&format!(" {ifname}@")),
            "{ifname} left in the pod: {}",
            ns.ip(&["link"])
        );
    }
}
