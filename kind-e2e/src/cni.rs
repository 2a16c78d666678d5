//! Runs CNI plugins the way a container runtime does (CNI specification 1.0).
//!
//! A network configuration list is executed plugin by plugin: `ADD` in order, each plugin receiving
//! the previous plugin's result as `prevResult`; `CHECK` in order and `DEL` in reverse order, both
//! receiving the cached result of the `ADD`. Keeping this faithful matters because the portkeeper
//! CNI plugin is later run through exactly this code.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// What can go wrong while running a network configuration.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    /// The configuration file cannot be read or is not a valid CNI configuration.
    #[error("CNI configuration {path}: {reason}")]
    Config { path: String, reason: String },
    /// No executable for a plugin type in the CNI path.
    #[error("CNI plugin {plugin:?} not found in {path}")]
    PluginNotFound { plugin: String, path: String },
    /// The plugin could not be started or waited for.
    #[error("running CNI plugin {plugin}: {source}")]
    Exec {
        plugin: String,
        source: std::io::Error,
    },
    /// The plugin did not finish in time.
    #[error("CNI plugin {plugin} {command} timed out after {seconds}s")]
    Timeout {
        plugin: String,
        command: &'static str,
        seconds: u64,
    },
    /// The plugin reported an error (CNI error object or bare exit status).
    #[error("CNI plugin {plugin} {command} failed (code {code}): {msg}{details}")]
    Plugin {
        plugin: String,
        command: &'static str,
        code: i64,
        msg: String,
        details: String,
    },
    /// The plugin printed something that is not a CNI result.
    #[error("CNI plugin {plugin} {command} printed an invalid result: {reason}")]
    BadResult {
        plugin: String,
        command: &'static str,
        reason: String,
    },
}

/// The CNI operations a runtime performs on an attachment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CniCommand {
    Add,
    Check,
    Del,
}

impl CniCommand {
    /// The value of `CNI_COMMAND`.
    pub fn as_str(self) -> &'static str {
        match self {
            CniCommand::Add => "ADD",
            CniCommand::Check => "CHECK",
            CniCommand::Del => "DEL",
        }
    }
}

/// A network configuration list (`.conflist`), or a single `.conf` seen as a list of one.
#[derive(Clone, Debug, PartialEq)]
pub struct NetworkConfigList {
    pub cni_version: String,
    pub name: String,
    pub plugins: Vec<Map<String, Value>>,
}

impl NetworkConfigList {
    /// Reads a configuration file.
    pub fn load(path: &Path) -> Result<Self, CniError> {
        let bytes = std::fs::read(path).map_err(|e| CniError::Config {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Self::parse(&bytes).map_err(|reason| CniError::Config {
            path: path.display().to_string(),
            reason,
        })
    }

    /// Parses a configuration list, or a single plugin configuration.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let value: Value = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        let mut top = match value {
            Value::Object(map) => map,
            _ => return Err("not a JSON object".into()),
        };
        let text = |map: &Map<String, Value>, key: &str| -> Result<String, String> {
            match map.get(key) {
                Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
                _ => Err(format!("missing string field {key:?}")),
            }
        };
        let cni_version = text(&top, "cniVersion")?;
        let name = text(&top, "name")?;
        let plugins = match top.remove("plugins") {
            Some(Value::Array(list)) => list
                .into_iter()
                .map(|p| match p {
                    Value::Object(map) => Ok(map),
                    _ => Err("a plugin entry is not an object".to_string()),
                })
                .collect::<Result<Vec<_>, _>>()?,
            Some(_) => return Err("\"plugins\" is not an array".into()),
            None => vec![top],
        };
        if plugins.is_empty() {
            return Err("no plugins".into());
        }
        for plugin in &plugins {
            text(plugin, "type")?;
        }
        Ok(Self {
            cni_version,
            name,
            plugins,
        })
    }

    /// The stdin of one plugin: its own configuration plus the list's name and version, and the
    /// previous result when there is one.
    pub fn plugin_config(&self, index: usize, prev_result: Option<&Value>) -> Value {
        let mut conf = self.plugins[index].clone();
        conf.insert("cniVersion".into(), Value::String(self.cni_version.clone()));
        conf.insert("name".into(), Value::String(self.name.clone()));
        match prev_result {
            Some(prev) => {
                conf.insert("prevResult".into(), prev.clone());
            }
            None => {
                conf.remove("prevResult");
            }
        }
        Value::Object(conf)
    }

    fn plugin_type(&self, index: usize) -> &str {
        self.plugins[index]
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default()
    }
}

/// One network attachment of a pod sandbox: the per-call part of the CNI environment.
#[derive(Clone, Debug)]
pub struct Attachment {
    pub container_id: String,
    pub netns: PathBuf,
    pub ifname: String,
    /// `CNI_ARGS` pairs, e.g. `K8S_POD_NAMESPACE`, `K8S_POD_NAME`.
    pub args: BTreeMap<String, String>,
}

impl Attachment {
    /// The `CNI_ARGS` value: `IgnoreUnknown=1` first, then the pairs, `;`-separated.
    pub fn cni_args(&self) -> String {
        std::iter::once("IgnoreUnknown=1".to_string())
            .chain(self.args.iter().map(|(k, v)| format!("{k}={v}")))
            .collect::<Vec<_>>()
            .join(";")
    }
}

/// Runs a configuration list with plugins from a CNI path.
#[derive(Clone, Debug)]
pub struct CniRuntime {
    config: NetworkConfigList,
    bin_dirs: Vec<PathBuf>,
    /// Network namespace (by `ip netns` name) the plugins run in: the node's "host" namespace.
    host_netns: Option<String>,
    timeout: Duration,
}

impl CniRuntime {
    pub fn new(config: NetworkConfigList, bin_dirs: Vec<PathBuf>) -> Self {
        Self {
            config,
            bin_dirs,
            host_netns: None,
            timeout: Duration::from_secs(60),
        }
    }

    /// Runs plugins inside this named network namespace instead of the agent's own.
    pub fn with_host_netns(mut self, netns: Option<String>) -> Self {
        self.host_netns = netns;
        self
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn config(&self) -> &NetworkConfigList {
        &self.config
    }

    /// The same runtime (CNI path, namespace, timeout) running another configuration: a
    /// delegate of an attachment network.
    pub fn delegate(&self, config: NetworkConfigList) -> Self {
        Self {
            config,
            ..self.clone()
        }
    }

    /// `ADD`: every plugin in order, chaining results; returns the last plugin's result.
    pub async fn add(&self, att: &Attachment) -> Result<Value, CniError> {
        let mut prev: Option<Value> = None;
        for index in 0..self.config.plugins.len() {
            let result = self
                .invoke(CniCommand::Add, index, att, prev.as_ref())
                .await?;
            let result = result.ok_or_else(|| CniError::BadResult {
                plugin: self.config.plugin_type(index).into(),
                command: "ADD",
                reason: "empty output".into(),
            })?;
            prev = Some(result);
        }
        Ok(prev.unwrap_or(Value::Null))
    }

    /// `CHECK`: every plugin in order against the cached `ADD` result.
    pub async fn check(&self, att: &Attachment, cached: &Value) -> Result<(), CniError> {
        for index in 0..self.config.plugins.len() {
            self.invoke(CniCommand::Check, index, att, Some(cached))
                .await?;
        }
        Ok(())
    }

    /// `DEL`: every plugin in reverse order, with the cached `ADD` result when there is one.
    pub async fn del(&self, att: &Attachment, cached: Option<&Value>) -> Result<(), CniError> {
        for index in (0..self.config.plugins.len()).rev() {
            self.invoke(CniCommand::Del, index, att, cached).await?;
        }
        Ok(())
    }

    fn find_plugin(&self, plugin: &str) -> Result<PathBuf, CniError> {
        let valid_name = !plugin.is_empty() && !plugin.contains('/') && plugin != "..";
        self.bin_dirs
            .iter()
            .map(|dir| dir.join(plugin))
            .find(|path| valid_name && path.is_file())
            .ok_or_else(|| CniError::PluginNotFound {
                plugin: plugin.into(),
                path: self.cni_path(),
            })
    }

    fn cni_path(&self) -> String {
        self.bin_dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(":")
    }

    async fn invoke(
        &self,
        command: CniCommand,
        index: usize,
        att: &Attachment,
        prev: Option<&Value>,
    ) -> Result<Option<Value>, CniError> {
        let plugin = self.config.plugin_type(index).to_string();
        let path = self.find_plugin(&plugin)?;
        let stdin = serde_json::to_vec(&self.config.plugin_config(index, prev))
            .expect("a JSON value serializes");
        let mut cmd = match &self.host_netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&path);
                c
            }
            None => Command::new(&path),
        };
        cmd.env_clear()
            .env(
                "PATH",
                std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into()),
            )
            .env("CNI_COMMAND", command.as_str())
            .env("CNI_CONTAINERID", &att.container_id)
            .env("CNI_NETNS", &att.netns)
            .env("CNI_IFNAME", &att.ifname)
            .env("CNI_ARGS", att.cni_args())
            .env("CNI_PATH", self.cni_path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let exec_err = |source| CniError::Exec {
            plugin: plugin.clone(),
            source,
        };
        let mut child = cmd.spawn().map_err(exec_err)?;
        let mut child_stdin = child.stdin.take().expect("stdin is piped");
        let run = async {
            child_stdin.write_all(&stdin).await?;
            drop(child_stdin);
            child.wait_with_output().await
        };
        let output = tokio::time::timeout(self.timeout, run)
            .await
            .map_err(|_| CniError::Timeout {
                plugin: plugin.clone(),
                command: command.as_str(),
                seconds: self.timeout.as_secs(),
            })?
            .map_err(exec_err)?;
        if !output.status.success() {
            return Err(plugin_error(
                &plugin,
                command,
                &output.stdout,
                &output.stderr,
                output.status,
            ));
        }
        if command != CniCommand::Add || output.stdout.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        serde_json::from_slice(&output.stdout)
            .map(Some)
            .map_err(|e| CniError::BadResult {
                plugin,
                command: command.as_str(),
                reason: e.to_string(),
            })
    }
}

#[derive(Deserialize)]
struct ErrorObject {
    code: i64,
    #[serde(default)]
    msg: String,
    #[serde(default)]
    details: String,
}

fn plugin_error(
    plugin: &str,
    command: CniCommand,
    stdout: &[u8],
    stderr: &[u8],
    status: std::process::ExitStatus,
) -> CniError {
    let (code, msg, details) = match serde_json::from_slice::<ErrorObject>(stdout) {
        Ok(e) if e.msg.is_empty() => (
            e.code,
            String::from_utf8_lossy(stderr).trim().to_string(),
            e.details,
        ),
        Ok(e) => (e.code, e.msg, e.details),
        Err(_) => {
            let text = String::from_utf8_lossy(if stderr.is_empty() { stdout } else { stderr });
            (
                i64::from(status.code().unwrap_or(-1)),
                text.trim().to_string(),
                String::new(),
            )
        }
    };
    CniError::Plugin {
        plugin: plugin.into(),
        command: command.as_str(),
        code,
        msg,
        details: if details.is_empty() {
            String::new()
        } else {
            format!("; {details}")
        },
    }
}

/// The pod's addresses in a CNI result: the `ips` on an interface inside the sandbox, or on no
/// interface in particular, in result order.
pub fn result_ips(result: &Value) -> Vec<IpAddr> {
    let interfaces = result
        .get("interfaces")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let in_sandbox = |index: u64| {
        interfaces
            .get(index as usize)
            .and_then(|i| i.get("sandbox"))
            .and_then(Value::as_str)
            .is_some_and(|s| !s.is_empty())
    };
    result
        .get("ips")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|ip| match ip.get("interface").and_then(Value::as_u64) {
            Some(index) => in_sandbox(index),
            None => true,
        })
        .filter_map(|ip| ip.get("address").and_then(Value::as_str))
        .filter_map(|cidr| cidr.split('/').next()?.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn conflist_and_single_conf_parse() {
        let list = NetworkConfigList::parse(
            br#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"a"},{"type":"b","x":1}]}"#,
        )
        .unwrap();
        assert_eq!(list.plugins.len(), 2);
        let single =
            NetworkConfigList::parse(br#"{"cniVersion":"1.0.0","name":"n","type":"a"}"#).unwrap();
        assert_eq!(single.plugins.len(), 1);
        assert_eq!(single.plugin_type(0), "a");
    }

    #[test]
    fn invalid_configs_say_what_is_wrong() {
        for (input, want) in [
            (&br#"[]"#[..], "not a JSON object"),
            (br#"{"name":"n","plugins":[]}"#, "cniVersion"),
            (
                br#"{"cniVersion":"1.0.0","plugins":[{"type":"a"}]}"#,
                "name",
            ),
            (
                br#"{"cniVersion":"1.0.0","name":"n","plugins":[]}"#,
                "no plugins",
            ),
            (
                br#"{"cniVersion":"1.0.0","name":"n","plugins":[{"x":1}]}"#,
                "type",
            ),
        ] {
            let err = NetworkConfigList::parse(input).unwrap_err();
            assert!(err.contains(want), "{err} should mention {want}");
        }
    }

    #[test]
    fn plugin_config_injects_name_version_and_prev_result() {
        let list = NetworkConfigList::parse(
            br#"{"cniVersion":"1.0.0","name":"net","plugins":[{"type":"a","prevResult":"stale"}]}"#,
        )
        .unwrap();
        assert_eq!(
            list.plugin_config(0, None),
            json!({"type":"a","cniVersion":"1.0.0","name":"net"})
        );
        assert_eq!(
            list.plugin_config(0, Some(&json!({"ips":[]}))),
            json!({"type":"a","cniVersion":"1.0.0","name":"net","prevResult":{"ips":[]}})
        );
    }

    #[test]
    fn cni_args_start_with_ignore_unknown() {
        let att = Attachment {
            container_id: "c".into(),
            netns: "/run/netns/x".into(),
            ifname: "eth0".into(),
            args: [("K8S_POD_NAME", "p"), ("K8S_POD_NAMESPACE", "ns")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        assert_eq!(
            att.cni_args(),
            "IgnoreUnknown=1;K8S_POD_NAME=p;K8S_POD_NAMESPACE=ns"
        );
    }

    #[test]
    fn result_ips_keep_sandbox_addresses_only() {
        let result = json!({
            "interfaces": [
                {"name": "cni0", "mac": "aa:bb:cc:dd:ee:00"},
                {"name": "eth0", "mac": "aa:bb:cc:dd:ee:01", "sandbox": "/run/netns/p"}
            ],
            "ips": [
                {"address": "10.244.1.1/24", "interface": 0},
                {"address": "10.244.1.7/24", "interface": 1, "gateway": "10.244.1.1"},
                {"address": "fd00::7/64"}
            ]
        });
        let ips: Vec<String> = result_ips(&result).iter().map(|i| i.to_string()).collect();
        assert_eq!(ips, ["10.244.1.7", "fd00::7"]);
    }
}
