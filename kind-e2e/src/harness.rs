//! The e2e harness: one [`Cluster`] per test binary, brought up by the local scripts (or attached
//! to a kind cluster), torn down by [`Cluster::down`] or, failing that, on drop.
//!
//! The provider is chosen by `PORTKEEPER_E2E_PROVIDER`: `local` (default) runs
//! `kind-e2e/local/up` in a private run folder; `kind` attaches to the cluster named by
//! `KUBECONFIG`, `OVN_NB_DB` and `OVN_SB_DB` (set up by `kind-e2e/kind/up`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use kube::config::{KubeConfigOptions, Kubeconfig};

/// Which kind of cluster the suite runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Provider {
    /// The local cluster of `kind-e2e/local/` (needs root).
    Local,
    /// An existing kind cluster described by the environment.
    Kind,
}

impl Provider {
    /// Reads `PORTKEEPER_E2E_PROVIDER` (`local` when unset).
    pub fn from_env() -> Result<Self, HarnessError> {
        match std::env::var("PORTKEEPER_E2E_PROVIDER").as_deref() {
            Err(_) | Ok("") | Ok("local") => Ok(Provider::Local),
            Ok("kind") => Ok(Provider::Kind),
            Ok(other) => Err(HarnessError::Env(format!(
                "PORTKEEPER_E2E_PROVIDER={other:?}: expected \"local\" or \"kind\""
            ))),
        }
    }
}

/// How to bring a cluster up.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    pub nodes: usize,
    /// Run the OVN NB database as a 3-server raft cluster.
    pub raft: bool,
    /// Let the (standalone) NB database also listen on `ssl:` ([`Cluster::nb_ssl`]).
    pub nb_ssl: bool,
    /// The node-agent binary; `None` lets the script build it with cargo.
    /// Tests in this crate pass `env!("CARGO_BIN_EXE_node-agent")`.
    pub node_agent: Option<PathBuf>,
    /// Run folder; `None` picks a fresh one under the system temporary folder.
    pub run_dir: Option<PathBuf>,
    /// Run portkeeper-controller as the cluster component `controller` (the default); a test that
    /// starts its own controller generations turns it off (`up --no-controller`).
    pub controller: bool,
    /// Real nodes: a kubelet and a containerd per node, portkeeper deployed from `yamls/`
    /// (`up --kubelet`) instead of the node agent and host processes.
    pub kubelet: bool,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            nodes: 2,
            raft: false,
            nb_ssl: false,
            node_agent: None,
            run_dir: None,
            controller: true,
            kubelet: false,
        }
    }
}

/// Why the harness could not do what a test asked.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error(
        "{script} failed ({status}) for run folder {run_dir}; its output above ends with the \
         last log lines (PORTKEEPER_KEEP_ON_FAILURE=1 keeps the folder)"
    )]
    Script {
        script: String,
        status: std::process::ExitStatus,
        run_dir: String,
    },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("environment: {0}")]
    Env(String),
    #[error("kubeconfig: {0}")]
    Kubeconfig(String),
    #[error("not supported by the {0:?} provider: {1}")]
    Unsupported(Provider, &'static str),
}

/// The `ssl:` remote of the NB database and a client's certificate files for it.
#[derive(Clone, Debug)]
pub struct NbSsl {
    pub remote: String,
    pub private_key: PathBuf,
    pub certificate: PathBuf,
    pub ca_cert: PathBuf,
}

/// A running cluster: Kubernetes API, OVN databases, nodes.
#[derive(Debug)]
pub struct Cluster {
    provider: Provider,
    run_dir: PathBuf,
    kubeconfig: PathBuf,
    nb: String,
    nb_ssl: Option<NbSsl>,
    sb: String,
    nodes: Vec<String>,
    netns_prefix: String,
    running: bool,
}

static CLUSTERS_STARTED: AtomicUsize = AtomicUsize::new(0);

/// The variable with which a developer without root lets tests that need it skip instead of fail.
pub const ALLOW_SKIP_VAR: &str = "PORTKEEPER_ALLOW_SKIP";

/// Whether this process runs as root.
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
    })
}

/// Whether tests that need `what` (root, for the local cluster) may run: true as root. Without
/// root the test fails here with the reason, unless [`ALLOW_SKIP_VAR`]`=1` is set, which makes
/// this print that the test is skipped and return false. Never skipping by default keeps a CI
/// run without root from passing with nothing tested.
pub fn privileged(what: &str) -> bool {
    if is_root() {
        return true;
    }
    if std::env::var(ALLOW_SKIP_VAR).as_deref() == Ok("1") {
        eprintln!("{what} needs root: skipped ({ALLOW_SKIP_VAR}=1)");
        return false;
    }
    panic!(
        "{what} needs root (network namespaces, OVS); run it as root, or set {ALLOW_SKIP_VAR}=1 to skip it"
    );
}

/// The folder holding the local-cluster scripts.
pub fn local_scripts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("local")
}

impl Cluster {
    /// Brings a cluster up (local provider) or attaches to one (kind provider).
    pub fn up(opts: ClusterOptions) -> Result<Self, HarnessError> {
        match Provider::from_env()? {
            Provider::Local => Self::up_local(opts),
            Provider::Kind => Self::attach_kind(),
        }
    }

    fn up_local(opts: ClusterOptions) -> Result<Self, HarnessError> {
        let run_dir = opts.run_dir.unwrap_or_else(|| {
            std::env::temp_dir().join(format!(
                "portkeeper-e2e-{}-{}",
                std::process::id(),
                CLUSTERS_STARTED.fetch_add(1, Ordering::SeqCst)
            ))
        });
        let mut cmd = Command::new(local_scripts().join("up"));
        cmd.env("PORTKEEPER_RUN_DIR", &run_dir)
            .args(["--nodes", &opts.nodes.to_string()])
            .stdin(Stdio::null());
        if opts.raft {
            cmd.arg("--raft");
        }
        if opts.nb_ssl {
            cmd.arg("--nb-ssl");
        }
        if let Some(agent) = &opts.node_agent {
            cmd.arg("--agent").arg(agent);
        }
        if !opts.controller {
            cmd.arg("--no-controller");
        }
        if opts.kubelet {
            cmd.arg("--kubelet");
        }
        let status = cmd.status()?;
        if !status.success() {
            return Err(HarnessError::Script {
                script: "kind-e2e/local/up".into(),
                status,
                run_dir: run_dir.display().to_string(),
            });
        }
        let mut cluster = Self::attach_local(&run_dir)?;
        cluster.running = true;
        Ok(cluster)
    }

    /// Attaches to a local cluster that `kind-e2e/local/up` brought up in `run_dir`; dropping
    /// the handle leaves that cluster running.
    pub fn attach_local(run_dir: &Path) -> Result<Self, HarnessError> {
        let env = read_env_file(&run_dir.join("env"))?;
        let var = |k: &str| {
            env.get(k)
                .cloned()
                .ok_or_else(|| HarnessError::Env(format!("{k} missing from the env file")))
        };
        let state = std::fs::read_to_string(run_dir.join("state"))?;
        let field = |k: &str| {
            state
                .lines()
                .find_map(|l| l.strip_prefix(k)?.strip_prefix('='))
                .ok_or_else(|| HarnessError::Env(format!("{k} missing from the state file")))
        };
        let nodes: usize = field("PK_NODES")?
            .parse()
            .map_err(|_| HarnessError::Env("PK_NODES is not a number".into()))?;
        let nb_ssl = match env.get("OVN_NB_SSL_DB") {
            None => None,
            Some(remote) => Some(NbSsl {
                remote: remote.clone(),
                private_key: var("OVSDB_SSL_PRIVATE_KEY")?.into(),
                certificate: var("OVSDB_SSL_CERTIFICATE")?.into(),
                ca_cert: var("OVSDB_SSL_CA_CERT")?.into(),
            }),
        };
        Ok(Self {
            provider: Provider::Local,
            kubeconfig: var("KUBECONFIG")?.into(),
            nb: var("OVN_NB_DB")?,
            nb_ssl,
            sb: var("OVN_SB_DB")?,
            nodes: (1..=nodes).map(|i| format!("node{i}")).collect(),
            netns_prefix: field("PK_PREFIX")?.to_owned(),
            run_dir: run_dir.to_path_buf(),
            running: false,
        })
    }

    fn attach_kind() -> Result<Self, HarnessError> {
        let var = |k: &str| {
            std::env::var(k).map_err(|_| HarnessError::Env(format!("{k} must be set for kind")))
        };
        let kubeconfig = PathBuf::from(var("KUBECONFIG")?);
        let out = Command::new("kubectl")
            .env("KUBECONFIG", &kubeconfig)
            .args(["get", "nodes", "-o", "jsonpath={.items[*].metadata.name}"])
            .output()?;
        Ok(Self {
            provider: Provider::Kind,
            run_dir: std::env::temp_dir(),
            kubeconfig,
            nb: var("OVN_NB_DB")?,
            nb_ssl: None,
            sb: var("OVN_SB_DB")?,
            nodes: String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .map(str::to_string)
                .collect(),
            netns_prefix: String::new(),
            running: false,
        })
    }

    /// A second handle on this cluster, for code that must hold one across awaits while the
    /// owner is shared; dropping it never tears the cluster down.
    pub fn handle(&self) -> Self {
        Self {
            provider: self.provider,
            run_dir: self.run_dir.clone(),
            kubeconfig: self.kubeconfig.clone(),
            nb: self.nb.clone(),
            nb_ssl: self.nb_ssl.clone(),
            sb: self.sb.clone(),
            nodes: self.nodes.clone(),
            netns_prefix: self.netns_prefix.clone(),
            running: false,
        }
    }

    pub fn provider(&self) -> Provider {
        self.provider
    }

    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// A kubeconfig authenticating as portkeeper-controller's service account (bound to the roles
    /// of `yamls/rbac.yaml`) on the local cluster; the admin's elsewhere.
    pub fn controller_kubeconfig(&self) -> PathBuf {
        let sa = self.run_dir.join("controller.kubeconfig");
        if self.provider == Provider::Local && sa.exists() {
            sa
        } else {
            self.kubeconfig.clone()
        }
    }

    /// The raft role (`leader`, `follower`, …; `unreachable` when it does not answer) of NB server
    /// `server` (1..=3) of a cluster brought up with [`ClusterOptions::raft`].
    pub fn nb_raft_role(&self, server: usize) -> String {
        let out = std::process::Command::new("ovn-appctl")
            .arg("-t")
            .arg(self.run_dir.join(format!("ovn/nb{server}.ctl")))
            .args(["cluster/status", "OVN_Northbound"])
            .output()
            .expect("ovn-appctl runs");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("Role: "))
            .unwrap_or("unreachable")
            .to_owned()
    }

    /// The NB raft server (1..=3) that is the leader now, if one is.
    pub fn nb_raft_leader(&self) -> Option<usize> {
        (1..=3).find(|&server| self.nb_raft_role(server) == "leader")
    }

    /// SIGKILL to a component (`nb-2`, `apiserver`, …), by the pid the local cluster recorded, as
    /// a crash would; [`Cluster::start`] starts it again.
    pub fn kill(&self, component: &str) -> Result<(), HarnessError> {
        let record = std::fs::read_to_string(self.run_dir.join("pid").join(component))?;
        let pid = record
            .split_whitespace()
            .next()
            .ok_or_else(|| HarnessError::Env(format!("no pid recorded for {component}")))?;
        let status = Command::new("kill").args(["-9", pid]).status()?;
        if status.success() {
            Ok(())
        } else {
            Err(HarnessError::Env(format!(
                "kill -9 {pid} ({component}) failed"
            )))
        }
    }

    /// A kube client for the cluster's admin user.
    pub async fn client(&self) -> Result<kube::Client, HarnessError> {
        client_from_kubeconfig(&self.kubeconfig).await
    }

    /// The OVN northbound database remote(s), as `OVN_NB_DB` spells them.
    pub fn nb_remote(&self) -> &str {
        &self.nb
    }

    /// The NB database's `ssl:` remote and client certificate, when brought up with
    /// [`ClusterOptions::nb_ssl`].
    pub fn nb_ssl(&self) -> Option<&NbSsl> {
        self.nb_ssl.as_ref()
    }

    /// The OVN southbound database remote, as `OVN_SB_DB` spells it.
    pub fn sb_remote(&self) -> &str {
        &self.sb
    }

    /// Node names (`node1`… for the local provider).
    pub fn nodes(&self) -> &[String] {
        &self.nodes
    }

    /// The local run folder (logs in `log/`, per-node state in `nodes/<node>/`).
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// A node's folder: its Open_vSwitch database socket `db.sock` and the agent's sandbox records.
    pub fn node_dir(&self, node: &str) -> PathBuf {
        self.run_dir.join("nodes").join(node)
    }

    /// The prefix of every network namespace of the local cluster: `<prefix><node>` is a node's
    /// host namespace, `<prefix><pod uid>` a pod's (empty for kind).
    pub fn netns_prefix(&self) -> &str {
        &self.netns_prefix
    }

    /// Runs a command in a pod's network namespace (local) or container (kind).
    pub fn pod_exec(
        &self,
        namespace: &str,
        pod: &str,
        cmd: &[&str],
    ) -> Result<Output, HarnessError> {
        Ok(self.pod_command(namespace, pod, cmd).output()?)
    }

    /// The command [`Cluster::pod_exec`] runs, to spawn it instead (a listener, a long ping).
    pub fn pod_command(&self, namespace: &str, pod: &str, cmd: &[&str]) -> Command {
        let mut command = match self.provider {
            Provider::Local => {
                let mut c = Command::new(local_scripts().join("pod-exec"));
                c.env("PORTKEEPER_RUN_DIR", &self.run_dir);
                c.args([namespace, pod]);
                c
            }
            Provider::Kind => {
                let mut c = Command::new("kubectl");
                c.args(["exec", "-n", namespace, pod]);
                c
            }
        };
        command
            .env("KUBECONFIG", &self.kubeconfig)
            .arg("--")
            .args(cmd)
            .stdin(Stdio::null());
        command
    }

    /// Runs `ovn-nbctl` against the cluster's northbound database.
    pub fn ovn_nbctl(&self, args: &[&str]) -> Result<Output, HarnessError> {
        Ok(Command::new("ovn-nbctl")
            .arg(format!("--db={}", self.nb))
            .arg("--timeout=20")
            .args(args)
            .output()?)
    }

    /// Runs `ovn-sbctl` against the cluster's southbound database.
    pub fn ovn_sbctl(&self, args: &[&str]) -> Result<Output, HarnessError> {
        Ok(Command::new("ovn-sbctl")
            .arg(format!("--db={}", self.sb))
            .arg("--timeout=20")
            .args(args)
            .output()?)
    }

    /// Runs `etcdctl` (v3 API) against the local cluster's etcd (`ETCDCTL_ENDPOINTS` of its env
    /// file), for faults below the API server: keys deleted behind its back, compaction.
    pub fn etcdctl(&self, args: &[&str]) -> Result<Output, HarnessError> {
        if self.provider != Provider::Local {
            return Err(HarnessError::Unsupported(self.provider, "etcdctl"));
        }
        let env = read_env_file(&self.run_dir.join("env"))?;
        let endpoints = env.get("ETCDCTL_ENDPOINTS").ok_or_else(|| {
            HarnessError::Env("ETCDCTL_ENDPOINTS missing from the env file".into())
        })?;
        Ok(Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .env("ETCDCTL_ENDPOINTS", endpoints)
            .args(args)
            .stdin(Stdio::null())
            .output()?)
    }

    /// Stops and starts one component (`agent-node1`, `nb`, `nb-2`, `northd`, `apiserver`, …).
    pub fn restart(&self, component: &str) -> Result<(), HarnessError> {
        self.component(component, None)
    }

    /// Stops one component, leaving it down until [`Cluster::start`].
    pub fn stop(&self, component: &str) -> Result<(), HarnessError> {
        self.component(component, Some("--stop"))
    }

    /// Starts a component stopped by [`Cluster::stop`].
    pub fn start(&self, component: &str) -> Result<(), HarnessError> {
        self.component(component, Some("--start"))
    }

    fn component(&self, component: &str, mode: Option<&str>) -> Result<(), HarnessError> {
        if self.provider != Provider::Local {
            return Err(HarnessError::Unsupported(
                self.provider,
                "restarting a component",
            ));
        }
        let status = Command::new(local_scripts().join("restart"))
            .env("PORTKEEPER_RUN_DIR", &self.run_dir)
            .arg(component)
            .args(mode)
            .stdin(Stdio::null())
            .status()?;
        if status.success() {
            Ok(())
        } else {
            Err(HarnessError::Script {
                script: format!("kind-e2e/local/restart {component}"),
                status,
                run_dir: self.run_dir.display().to_string(),
            })
        }
    }

    /// Tears the cluster down: every process, namespace and file of the run (local provider).
    pub fn down(mut self) -> Result<(), HarnessError> {
        self.tear_down()
    }

    fn tear_down(&mut self) -> Result<(), HarnessError> {
        if !self.running {
            return Ok(());
        }
        self.running = false;
        let status = Command::new(local_scripts().join("down"))
            .env("PORTKEEPER_RUN_DIR", &self.run_dir)
            .stdin(Stdio::null())
            .status()?;
        if status.success() {
            Ok(())
        } else {
            Err(HarnessError::Script {
                script: "kind-e2e/local/down".into(),
                status,
                run_dir: self.run_dir.display().to_string(),
            })
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Err(e) = self.tear_down() {
            eprintln!("tearing the cluster down: {e}");
        }
    }
}

/// A kube client from a kubeconfig file (for code that must not hold the [`Cluster`] meanwhile).
pub async fn client_from_kubeconfig(path: &Path) -> Result<kube::Client, HarnessError> {
    let kubeconfig =
        Kubeconfig::read_from(path).map_err(|e| HarnessError::Kubeconfig(e.to_string()))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|e| HarnessError::Kubeconfig(e.to_string()))?;
    kube::Client::try_from(config).map_err(|e| HarnessError::Kubeconfig(e.to_string()))
}

/// Reads `export KEY=VALUE` lines.
fn read_env_file(path: &Path) -> Result<BTreeMap<String, String>, HarnessError> {
    let text = std::fs::read_to_string(path)?;
    Ok(text
        .lines()
        .filter_map(|line| line.strip_prefix("export "))
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches(['"', '\'']).to_string()))
        .collect())
}

/// A fixture the trials of one test binary share (a cluster, and what runs on it): made by the
/// first trial that needs it. When making it fails, that trial and every later one fail with the
/// same message instead of trying again.
pub struct Shared<T> {
    value: Mutex<Option<T>>,
    failure: OnceLock<String>,
}

impl<T> Shared<T> {
    pub const fn new() -> Self {
        Self {
            value: Mutex::new(None),
            failure: OnceLock::new(),
        }
    }

    /// Runs `f` on the fixture, made by `make` first if there is none yet.
    pub fn with<R>(
        &self,
        make: impl FnOnce() -> Result<T, String>,
        f: impl FnOnce(&T) -> R,
    ) -> Result<R, String> {
        let mut guard = self.value.lock().unwrap_or_else(|e| e.into_inner());
        if guard.is_none() {
            if let Some(failure) = self.failure.get() {
                return Err(failure.clone());
            }
            match make() {
                Ok(value) => *guard = Some(value),
                Err(e) => {
                    let _ = self.failure.set(e.clone());
                    return Err(e);
                }
            }
        }
        Ok(f(guard.as_ref().expect("made above")))
    }

    /// Takes the fixture out, to tear it down before the binary exits.
    pub fn take(&self) -> Option<T> {
        self.value.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

impl<T> Default for Shared<T> {
    fn default() -> Self {
        Self::new()
    }
}
