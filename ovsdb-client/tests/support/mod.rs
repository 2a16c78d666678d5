//! Real ovsdb-server fixtures for the integration tests: a standalone OVN Northbound database, a
//! three-server raft cluster on loopback, and an ssl server with certificates made by the test.
//!
//! Every server is a child process of the test, tracked by pid, killed and its run folder removed
//! when the fixture is dropped, also when the test panics. A server that cannot start fails the
//! test with its log: these tests never skip.
#![allow(dead_code)] // Each test binary uses a different part of the fixtures.

use std::fs;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// The pinned OVN Northbound schema the typed tables are generated from.
pub fn nb_schema() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/ovn-nb.ovsschema")
}

/// Name of the database in the NB schema.
pub const NB_DB: &str = "OVN_Northbound";

const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Runs a tool and returns its stdout, failing the test with stderr if it exits non-zero.
pub fn run(program: &str, args: &[&str]) -> String {
    let output = command_output(program, args);
    if !output.status.success() {
        panic!(
            "`{program} {}` failed ({}):\n{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    String::from_utf8(output.stdout).expect("tool output is UTF-8")
}

fn command_output(program: &str, args: &[&str]) -> Output {
    match Command::new(program).args(args).output() {
        Ok(output) => output,
        Err(err) => panic!("cannot run `{program}` ({err}): install OVN with `sudo dev/setup`"),
    }
}

/// A loopback TCP port that nothing listens on right now, below the kernel's ephemeral
/// range: an ephemeral port can be taken by any outgoing connection (a client's, or a
/// raft member's) between this check and the server's bind.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    const LOWEST: u16 = 10_000;
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .filter(|start| *start > LOWEST + 1_000)
        .unwrap_or(32_768);
    let span = ephemeral_start - LOWEST;
    // Tests of one binary run in parallel threads: each call takes the next port of a
    // sequence that starts at a per-process offset.
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let offset = (std::process::id() % u32::from(span)) as u16;
    for _ in 0..span {
        let step = NEXT.fetch_add(1, Ordering::Relaxed) % span;
        let port = LOWEST + (offset + step) % span;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port between {LOWEST} and {ephemeral_start}");
}

fn wait_until(what: &str, mut ready: impl FnMut() -> bool, on_timeout: impl FnOnce() -> String) {
    let deadline = Instant::now() + START_TIMEOUT;
    while !ready() {
        if Instant::now() > deadline {
            panic!("timed out waiting for {what}\n{}", on_timeout());
        }
        sleep(Duration::from_millis(50));
    }
}

/// One ovsdb-server child process with its control socket and log.
#[derive(Debug)]
pub struct ServerProcess {
    name: String,
    child: Child,
    /// `unixctl` control socket for `ovs-appctl -t`.
    pub ctl: PathBuf,
    /// The server's log file.
    pub log: PathBuf,
}

impl ServerProcess {
    /// Starts `ovsdb-server` in the foreground (so it stays our child) with its own pidfile, log
    /// and control socket in `dir`; `remotes` are `--remote=` values, `extra` any other options.
    fn spawn(dir: &Path, name: &str, db: &Path, remotes: &[String], extra: &[String]) -> Self {
        let ctl = dir.join(format!("{name}.ctl"));
        let log = dir.join(format!("{name}.log"));
        let stderr =
            fs::File::create(dir.join(format!("{name}.stderr"))).expect("create stderr file");
        let mut command = Command::new("ovsdb-server");
        command
            .arg("--no-chdir")
            .arg(format!(
                "--pidfile={}",
                dir.join(format!("{name}.pid")).display()
            ))
            .arg(format!("--log-file={}", log.display()))
            .arg(format!("--unixctl={}", ctl.display()))
            .args(remotes.iter().map(|remote| format!("--remote={remote}")))
            .args(extra)
            .arg(db)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        let child = match command.spawn() {
            Ok(child) => child,
            Err(err) => panic!(
                "cannot start ovsdb-server ({err}): install OVN and Open vSwitch with `sudo dev/setup`"
            ),
        };
        Self {
            name: name.to_owned(),
            child,
            ctl,
            log,
        }
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The server's log and stderr, for failure messages.
    pub fn diagnostics(&self) -> String {
        diagnostics(&self.name, &self.log)
    }

    /// Waits until the server answers on its control socket, failing with its log if it exits
    /// or does not come up in time.
    fn wait_ready(&mut self, socket: &Path) {
        let (name, ctl, log) = (self.name.clone(), self.ctl.clone(), self.log.clone());
        let mut exited = None;
        wait_until(
            &format!("{name} to accept connections"),
            || {
                if let Ok(Some(status)) = self.child.try_wait() {
                    exited = Some(status);
                    return true;
                }
                socket.exists()
                    && command_output("ovs-appctl", &["-t", &ctl.to_string_lossy(), "version"])
                        .status
                        .success()
            },
            || diagnostics(&name, &log),
        );
        if let Some(status) = exited {
            panic!(
                "{name} exited during start-up ({status})\n{}",
                self.diagnostics()
            );
        }
    }

    /// Sends SIGKILL and reaps the process; no clean shutdown, no pidfile removal.
    pub fn kill(&mut self) {
        if self.is_running() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }

    /// Runs `ovs-appctl -t <ctl> <args>`.
    pub fn appctl(&self, args: &[&str]) -> String {
        let ctl = self.ctl.to_string_lossy();
        let mut all = vec!["-t", &ctl];
        all.extend_from_slice(args);
        run("ovs-appctl", &all)
    }

    /// CPU time (user + system) the server has used so far.
    pub fn cpu_time(&self) -> Duration {
        process_cpu_time(self.pid())
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

fn diagnostics(name: &str, log: &Path) -> String {
    format!(
        "--- {name} log ({}) ---\n{}\n--- stderr ---\n{}",
        log.display(),
        fs::read_to_string(log).unwrap_or_default(),
        fs::read_to_string(log.with_extension("stderr")).unwrap_or_default()
    )
}

/// CPU time (utime + stime) of a process, from `/proc/<pid>/stat`.
pub fn process_cpu_time(pid: u32) -> Duration {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/<pid>/stat");
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let after_comm = &stat[stat.rfind(')').expect("stat has a command name") + 2..];
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let ticks_per_second = clock_ticks_per_second();
    Duration::from_micros(ticks * 1_000_000 / ticks_per_second)
}

fn clock_ticks_per_second() -> u64 {
    run("getconf", &["CLK_TCK"])
        .trim()
        .parse()
        .expect("CLK_TCK is a number")
}

fn create_db(db: &Path) {
    run(
        "ovsdb-tool",
        &[
            "create",
            &db.to_string_lossy(),
            &nb_schema().to_string_lossy(),
        ],
    );
}

/// A standalone OVN Northbound ovsdb-server listening on a unix socket and a loopback TCP port.
pub struct Standalone {
    /// The server process.
    pub server: ServerProcess,
    /// `unix:<path>` remote.
    pub unix: String,
    /// `tcp:127.0.0.1:<port>` remote.
    pub tcp: String,
    dir: TempDir,
}

impl Standalone {
    /// Creates an empty NB database and starts a server on it.
    pub fn start() -> Self {
        let dir = run_dir("nb");
        let db = dir.path().join("nb.db");
        create_db(&db);
        let socket = dir.path().join("nb.sock");
        let port = free_port();
        let remotes = [
            format!("punix:{}", socket.display()),
            format!("ptcp:{port}:127.0.0.1"),
        ];
        let mut server = ServerProcess::spawn(dir.path(), "nb", &db, &remotes, &[]);
        server.wait_ready(&socket);
        wait_for_tcp(&mut server, port);
        Self {
            server,
            unix: format!("unix:{}", socket.display()),
            tcp: format!("tcp:127.0.0.1:{port}"),
            dir,
        }
    }

    /// Runs `ovn-nbctl --db=<unix remote> <args>` and returns its stdout.
    pub fn nbctl(&self, args: &[&str]) -> String {
        nbctl(&self.unix, args)
    }

    /// The run folder (removed on drop).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

fn wait_for_tcp(server: &mut ServerProcess, port: u16) {
    wait_until(
        &format!("{} to listen on 127.0.0.1:{port}", server.name),
        || TcpStream::connect(("127.0.0.1", port)).is_ok(),
        || server.diagnostics(),
    );
}

/// Runs `ovn-nbctl --db=<remote> <args>` and returns its stdout, failing the test on error.
pub fn nbctl(remote: &str, args: &[&str]) -> String {
    let db = format!("--db={remote}");
    let mut all = vec![db.as_str(), "--timeout=30"];
    all.extend_from_slice(args);
    run("ovn-nbctl", &all)
}

fn run_dir(prefix: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(&format!("pk-{prefix}-"))
        .tempdir()
        .expect("create a temporary run folder")
}

/// One member of a raft cluster: its files and ports persist across kill and restart.
pub struct Member {
    name: String,
    db: PathBuf,
    socket: PathBuf,
    /// Client port on 127.0.0.1.
    pub port: u16,
    /// Raft port on 127.0.0.1.
    pub raft_port: u16,
    /// The running server, `None` while killed.
    pub server: Option<ServerProcess>,
}

impl Member {
    /// `tcp:127.0.0.1:<port>` remote of this member.
    pub fn remote(&self) -> String {
        format!("tcp:127.0.0.1:{}", self.port)
    }

    /// `unix:<path>` remote of this member.
    pub fn unix(&self) -> String {
        format!("unix:{}", self.socket.display())
    }

    fn process(&self) -> &ServerProcess {
        self.server
            .as_ref()
            .unwrap_or_else(|| panic!("{} is not running", self.name))
    }

    /// The raft role from `cluster/status` ("leader", "follower", "candidate").
    pub fn role(&self) -> Option<String> {
        let server = self.server.as_ref()?;
        let ctl = server.ctl.to_string_lossy();
        let output = command_output("ovs-appctl", &["-t", &ctl, "cluster/status", NB_DB]);
        if !output.status.success() {
            return None;
        }
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .find_map(|line| line.strip_prefix("Role: "))
            .map(str::to_owned)
    }
}

/// A three-server (or n-server) raft cluster of the NB database on loopback.
pub struct Cluster {
    /// The members in creation order; member 0 created the cluster.
    pub members: Vec<Member>,
    dir: TempDir,
}

impl Cluster {
    /// Creates an `n`-server cluster with `ovsdb-tool create-cluster` / `join-cluster`, starts
    /// every member and waits until all of them agree on a leader.
    pub fn start(n: usize) -> Self {
        assert!(n >= 1);
        let dir = run_dir("raft");
        let mut members: Vec<Member> = (0..n)
            .map(|i| {
                let name = format!("s{}", i + 1);
                Member {
                    db: dir.path().join(format!("{name}.db")),
                    socket: dir.path().join(format!("{name}.sock")),
                    name,
                    port: free_port(),
                    raft_port: free_port(),
                    server: None,
                }
            })
            .collect();
        let first_raft = format!("tcp:127.0.0.1:{}", members[0].raft_port);
        run(
            "ovsdb-tool",
            &[
                "create-cluster",
                &members[0].db.to_string_lossy(),
                &nb_schema().to_string_lossy(),
                &first_raft,
            ],
        );
        for member in &members[1..] {
            let own = format!("tcp:127.0.0.1:{}", member.raft_port);
            run(
                "ovsdb-tool",
                &[
                    "join-cluster",
                    &member.db.to_string_lossy(),
                    NB_DB,
                    &own,
                    &first_raft,
                ],
            );
        }
        let mut cluster = Self {
            members: Vec::new(),
            dir,
        };
        for member in &mut members {
            cluster.spawn(member);
        }
        cluster.members = members;
        cluster.wait_for_leader();
        cluster.wait_connected();
        cluster
    }

    fn spawn(&self, member: &mut Member) {
        let remotes = [
            format!("punix:{}", member.socket.display()),
            format!("ptcp:{}:127.0.0.1", member.port),
        ];
        let mut server =
            ServerProcess::spawn(self.dir.path(), &member.name, &member.db, &remotes, &[]);
        server.wait_ready(&member.socket);
        wait_for_tcp(&mut server, member.port);
        member.server = Some(server);
    }

    /// Waits until every running member has joined the cluster and caught up with the leader
    /// (`_Server.Database.connected`), so it serves reads.
    fn wait_connected(&self) {
        for member in self.members.iter().filter(|m| m.server.is_some()) {
            let output = command_output(
                "ovsdb-client",
                &["--timeout=20", "wait", &member.unix(), NB_DB, "connected"],
            );
            if !output.status.success() {
                panic!(
                    "{} did not connect to the cluster: {}\n{}",
                    member.name,
                    String::from_utf8_lossy(&output.stderr),
                    self.diagnostics()
                );
            }
        }
    }

    /// All members' TCP remotes, comma-separated, as a client takes them.
    pub fn remotes(&self) -> String {
        self.members
            .iter()
            .map(Member::remote)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Waits until exactly one running member reports itself leader and every other running
    /// member is a follower, and returns the leader's index.
    pub fn wait_for_leader(&self) -> usize {
        let mut leader = None;
        wait_until(
            "the raft cluster to elect a leader",
            || {
                let roles: Vec<Option<String>> = self.members.iter().map(Member::role).collect();
                let running = self.members.iter().filter(|m| m.server.is_some()).count();
                let leaders: Vec<usize> = (0..roles.len())
                    .filter(|&i| roles[i].as_deref() == Some("leader"))
                    .collect();
                let followers = roles
                    .iter()
                    .filter(|r| r.as_deref() == Some("follower"))
                    .count();
                leader = leaders.first().copied();
                leaders.len() == 1 && followers + 1 == running
            },
            || self.diagnostics(),
        );
        leader.expect("a leader was found")
    }

    /// The current leader's index (waits for an election if needed).
    pub fn leader(&self) -> usize {
        self.wait_for_leader()
    }

    /// `kill -9` the member's server, by its pid.
    pub fn kill(&mut self, index: usize) {
        let member = &mut self.members[index];
        let mut server = member.server.take().expect("member is running");
        server.kill();
    }

    /// Restarts a killed member on its existing database file and ports.
    pub fn restart(&mut self, index: usize) {
        let mut member = self.members.remove(index);
        assert!(member.server.is_none(), "{} is still running", member.name);
        self.spawn(&mut member);
        self.members.insert(index, member);
        self.wait_for_leader();
        self.wait_connected();
    }

    /// The member's process (panics if it is killed).
    pub fn process(&self, index: usize) -> &ServerProcess {
        self.members[index].process()
    }

    /// Runs `ovn-nbctl` against the whole cluster (leader-only, as users run it).
    pub fn nbctl(&self, args: &[&str]) -> String {
        nbctl(&self.remotes_of_running(), args)
    }

    fn remotes_of_running(&self) -> String {
        self.members
            .iter()
            .filter(|m| m.server.is_some())
            .map(Member::remote)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Logs of every member, for failure messages.
    pub fn diagnostics(&self) -> String {
        self.members
            .iter()
            .filter_map(|m| m.server.as_ref().map(ServerProcess::diagnostics))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// PEM files made by the test: a CA, a server certificate for 127.0.0.1 and a client certificate.
pub struct Certificates {
    /// CA certificate, PEM file.
    pub ca_cert: PathBuf,
    /// Server certificate (CN/SAN 127.0.0.1), PEM file.
    pub server_cert: PathBuf,
    /// Server private key, PEM file.
    pub server_key: PathBuf,
    /// Client certificate, PEM file.
    pub client_cert: PathBuf,
    /// Client private key, PEM file.
    pub client_key: PathBuf,
    /// A second CA that signed nothing here, to prove the client rejects an unknown server.
    pub other_ca_cert: PathBuf,
}

impl Certificates {
    /// Generates the CA and both leaf certificates into `dir`.
    pub fn generate(dir: &Path) -> Self {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
            IsCa, KeyPair, KeyUsagePurpose,
        };

        let make_ca = |name: &str| {
            let mut params = CertificateParams::new(Vec::new()).expect("CA params");
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(DnType::CommonName, name);
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key"))
                .expect("self-sign CA")
        };
        let ca = make_ca("portkeeper test CA");
        let other_ca = make_ca("portkeeper unrelated CA");

        let leaf = |name: &str, sans: Vec<String>, usage: ExtendedKeyUsagePurpose| {
            let mut params = CertificateParams::new(sans).expect("leaf params");
            params.distinguished_name.push(DnType::CommonName, name);
            params.extended_key_usages = vec![usage];
            let key = KeyPair::generate().expect("leaf key");
            let cert = params.signed_by(&key, &ca).expect("sign leaf");
            (cert.pem(), key.serialize_pem())
        };
        let (server_pem, server_key_pem) = leaf(
            "127.0.0.1",
            vec!["127.0.0.1".to_owned()],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client_pem, client_key_pem) = leaf(
            "portkeeper-test-client",
            Vec::new(),
            ExtendedKeyUsagePurpose::ClientAuth,
        );

        let write = |name: &str, contents: &str| {
            let path = dir.join(name);
            let mut file = fs::File::create(&path).expect("create certificate file");
            file.write_all(contents.as_bytes())
                .expect("write certificate file");
            path
        };
        Self {
            ca_cert: write("ca-cert.pem", &ca.pem()),
            server_cert: write("server-cert.pem", &server_pem),
            server_key: write("server-key.pem", &server_key_pem),
            client_cert: write("client-cert.pem", &client_pem),
            client_key: write("client-key.pem", &client_key_pem),
            other_ca_cert: write("other-ca-cert.pem", &other_ca.pem()),
        }
    }
}

/// A standalone NB ovsdb-server that accepts only ssl clients with a certificate from the test CA.
pub struct SslServer {
    /// The server process.
    pub server: ServerProcess,
    /// `ssl:127.0.0.1:<port>` remote.
    pub remote: String,
    /// The certificates the test generated.
    pub certs: Certificates,
    dir: TempDir,
}

impl SslServer {
    /// Generates certificates and starts the server on `pssl:<port>:127.0.0.1`.
    pub fn start() -> Self {
        let dir = run_dir("ssl");
        let certs = Certificates::generate(dir.path());
        let db = dir.path().join("nb.db");
        create_db(&db);
        let socket = dir.path().join("nb.sock");
        let port = free_port();
        let remotes = [
            format!("punix:{}", socket.display()),
            format!("pssl:{port}:127.0.0.1"),
        ];
        let extra = [
            format!("--private-key={}", certs.server_key.display()),
            format!("--certificate={}", certs.server_cert.display()),
            format!("--ca-cert={}", certs.ca_cert.display()),
        ];
        let mut server = ServerProcess::spawn(dir.path(), "nb-ssl", &db, &remotes, &extra);
        server.wait_ready(&socket);
        wait_for_tcp(&mut server, port);
        Self {
            server,
            remote: format!("ssl:127.0.0.1:{port}"),
            certs,
            dir,
        }
    }

    /// Runs `ovn-nbctl` over ssl with the test's client certificate.
    pub fn nbctl(&self, args: &[&str]) -> String {
        let key = format!("--private-key={}", self.certs.client_key.display());
        let cert = format!("--certificate={}", self.certs.client_cert.display());
        let ca = format!("--ca-cert={}", self.certs.ca_cert.display());
        let mut all = vec![key.as_str(), cert.as_str(), ca.as_str()];
        all.extend_from_slice(args);
        nbctl(&self.remote, &all)
    }

    /// The run folder (removed on drop).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}
