//! One plugin invocation: the `CNI_*` environment plus the configuration on stdin, validated.

use super::config::{NetworkConfig, peek_version};
use super::error::{CniError, ErrorCode};
use super::version::CniVersion;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The CNI operation asked for in `CNI_COMMAND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Create the pod's interface.
    Add,
    /// Remove the pod's interface; succeeds when there is nothing to remove.
    Del,
    /// Verify the pod's interface is as ADD left it.
    Check,
}

impl Command {
    /// The `CNI_COMMAND` spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Add => "ADD",
            Self::Del => "DEL",
            Self::Check => "CHECK",
        }
    }
}

/// The pod identity the runtime passes in `CNI_ARGS` (as kubelet does).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRef {
    /// `K8S_POD_NAMESPACE`.
    pub namespace: String,
    /// `K8S_POD_NAME`.
    pub name: String,
    /// `K8S_POD_UID`, when the runtime gives it: guards against acting for a newer pod of the same name.
    pub uid: Option<String>,
}

/// A validated ADD, DEL or CHECK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkInvocation {
    /// What to do.
    pub command: Command,
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_NETNS`; always set for ADD and CHECK, optional for DEL.
    pub netns: Option<PathBuf>,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// The pod, from `CNI_ARGS`; always set for ADD and CHECK, optional for DEL.
    pub pod: Option<PodRef>,
    /// The network configuration.
    pub config: NetworkConfig,
}

/// What the runtime asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invocation {
    /// `VERSION`: answered by the plugin alone.
    Version {
        /// The version the runtime wrote on stdin, when it is one we know.
        runtime_version: Option<CniVersion>,
    },
    /// ADD, DEL or CHECK: forwarded to the daemon.
    Network(Box<NetworkInvocation>),
}

impl Invocation {
    /// Validates the environment (looked up through `env`) and the stdin bytes.
    pub fn parse(env: impl Fn(&str) -> Option<String>, stdin: &[u8]) -> Result<Self, CniError> {
        let command = required(&env, "CNI_COMMAND")?;
        let command = match command.as_str() {
            "VERSION" => {
                return Ok(Self::Version {
                    runtime_version: peek_version(stdin),
                });
            }
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            other => {
                return Err(env_error(format!(
                    "CNI_COMMAND {other:?} is not one of ADD, DEL, CHECK, VERSION"
                )));
            }
        };
        let config = NetworkConfig::parse(stdin)?;
        if command == Command::Check && !config.cni_version.has_check() {
            return Err(CniError::new(
                ErrorCode::IncompatibleVersion,
                format!(
                    "CHECK needs cniVersion 0.4.0 or later, the configuration says {}",
                    config.cni_version
                ),
            ));
        }
        let container_id = required(&env, "CNI_CONTAINERID")?;
        if !is_valid_container_id(&container_id) {
            return Err(env_error(format!(
                "CNI_CONTAINERID {container_id:?} must start with a letter or digit and contain only letters, digits, '_', '.' and '-'"
            )));
        }
        let ifname = required(&env, "CNI_IFNAME")?;
        if let Err(why) = validate_ifname(&ifname) {
            return Err(env_error(format!("CNI_IFNAME {ifname:?} {why}")));
        }
        let netns = match (command, non_empty(&env, "CNI_NETNS")) {
            (_, Some(path)) => {
                let path = PathBuf::from(path);
                if !path.is_absolute() {
                    return Err(env_error(format!(
                        "CNI_NETNS {} must be an absolute path",
                        path.display()
                    )));
                }
                Some(path)
            }
            (Command::Del, None) => None,
            (_, None) => {
                return Err(env_error(
                    "CNI_NETNS is missing; ADD and CHECK need the pod's network namespace",
                ));
            }
        };
        let pod = parse_pod_ref(&non_empty(&env, "CNI_ARGS").unwrap_or_default())?;
        if pod.is_none() && command != Command::Del {
            return Err(env_error(
                "CNI_ARGS must carry K8S_POD_NAMESPACE and K8S_POD_NAME: portkeeper wires Kubernetes pods only",
            ));
        }
        Ok(Self::Network(Box::new(NetworkInvocation {
            command,
            container_id,
            netns,
            ifname,
            pod,
            config,
        })))
    }
}

/// The version to write an error in: the configuration's when it can be read, else the latest.
pub fn error_version(stdin: &[u8]) -> CniVersion {
    peek_version(stdin).unwrap_or(CniVersion::LATEST)
}

/// Parses `CNI_ARGS` (`K=V;K=V`). Returns the pod when both namespace and name are present.
///
/// Keys other than the `K8S_*` ones are ignored, as kubelet asks with `IgnoreUnknown=1`.
pub fn parse_pod_ref(args: &str) -> Result<Option<PodRef>, CniError> {
    let (mut namespace, mut name, mut uid) = (None, None, None);
    for pair in args.split(';').filter(|p| !p.is_empty()) {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(env_error(format!(
                "CNI_ARGS entry {pair:?} is not KEY=VALUE"
            )));
        };
        match key {
            "K8S_POD_NAMESPACE" => namespace = Some(value),
            "K8S_POD_NAME" => name = Some(value),
            "K8S_POD_UID" => uid = Some(value),
            _ => {}
        }
    }
    if let (Some(ns), Some(n)) = (namespace, name) {
        let pod = PodRef {
            namespace: ns.to_owned(),
            name: n.to_owned(),
            uid: uid.map(str::to_owned),
        };
        pod.validate()?;
        Ok(Some(pod))
    } else {
        Ok(None)
    }
}

impl PodRef {
    /// Checks the names against Kubernetes' rules; they end up in OVS rows and API field selectors.
    pub fn validate(&self) -> Result<(), CniError> {
        if !is_dns_label(&self.namespace) {
            return Err(env_error(format!(
                "CNI_ARGS K8S_POD_NAMESPACE {:?} is not a valid namespace name",
                self.namespace
            )));
        }
        if !is_dns_subdomain(&self.name) {
            return Err(env_error(format!(
                "CNI_ARGS K8S_POD_NAME {:?} is not a valid pod name",
                self.name
            )));
        }
        if let Some(u) = &self.uid
            && (u.is_empty()
                || u.len() > 64
                || !u.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
        {
            return Err(env_error(format!(
                "CNI_ARGS K8S_POD_UID {u:?} is not a valid UID"
            )));
        }
        Ok(())
    }
}

/// The CNI rule for interface names: 1..=15 bytes, not `.` or `..`, no `/`, `:` or whitespace.
pub fn validate_ifname(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        Err("is empty")
    } else if name.len() > 15 {
        Err("is longer than 15 bytes")
    } else if name == "." || name == ".." {
        Err("may not be '.' or '..'")
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        Err("may not contain '/', ':', whitespace or control characters")
    } else {
        Ok(())
    }
}

/// The CNI rule for container IDs: `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$` (bounded to keep names sane).
pub fn is_valid_container_id(id: &str) -> bool {
    let mut chars = id.chars();
    id.len() <= 256
        && chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// RFC 1123 label, as Kubernetes requires of namespace names.
fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// RFC 1123 subdomain, as Kubernetes requires of pod names.
fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

fn required(env: &impl Fn(&str) -> Option<String>, key: &str) -> Result<String, CniError> {
    non_empty(env, key).ok_or_else(|| env_error(format!("{key} is missing or empty")))
}

fn non_empty(env: &impl Fn(&str) -> Option<String>, key: &str) -> Option<String> {
    env(key).filter(|v| !v.is_empty())
}

fn env_error(msg: impl Into<String>) -> CniError {
    CniError::new(ErrorCode::InvalidEnvironment, msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const CONFIG: &str = r#"{"cniVersion":"1.0.0","name":"pk","type":"portkeeper-cni"}"#;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    fn add_env() -> Vec<(&'static str, &'static str)> {
        vec![
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc123"),
            ("CNI_NETNS", "/var/run/netns/pod"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/opt/cni/bin"),
            (
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=abc123",
            ),
        ]
    }

    fn with(
        mut base: Vec<(&'static str, &'static str)>,
        key: &'static str,
        value: Option<&'static str>,
    ) -> Vec<(&'static str, &'static str)> {
        base.retain(|(k, _)| *k != key);
        if let Some(v) = value {
            base.push((key, v));
        }
        base
    }

    #[test]
    fn add_parses() {
        let inv = Invocation::parse(env(&add_env()), CONFIG.as_bytes()).unwrap();
        let Invocation::Network(n) = inv else {
            panic!("not a network invocation")
        };
        assert_eq!(n.command, Command::Add);
        assert_eq!(n.container_id, "abc123");
        assert_eq!(n.netns, Some(PathBuf::from("/var/run/netns/pod")));
        assert_eq!(n.ifname, "eth0");
        assert_eq!(
            n.pod,
            Some(PodRef {
                namespace: "default".into(),
                name: "web-0".into(),
                uid: None
            })
        );
    }

    #[test]
    fn version_needs_nothing_but_the_command() {
        let inv = Invocation::parse(
            env(&[("CNI_COMMAND", "VERSION")]),
            br#"{"cniVersion":"0.4.0"}"#,
        )
        .unwrap();
        assert_eq!(
            inv,
            Invocation::Version {
                runtime_version: Some(CniVersion::V0_4_0)
            }
        );
        let inv = Invocation::parse(env(&[("CNI_COMMAND", "VERSION")]), b"").unwrap();
        assert_eq!(
            inv,
            Invocation::Version {
                runtime_version: None
            }
        );
    }

    #[test]
    fn del_tolerates_missing_netns_and_pod() {
        let e = with(
            with(
                with(add_env(), "CNI_COMMAND", Some("DEL")),
                "CNI_NETNS",
                None,
            ),
            "CNI_ARGS",
            None,
        );
        let Invocation::Network(n) = Invocation::parse(env(&e), CONFIG.as_bytes()).unwrap() else {
            panic!()
        };
        assert_eq!((n.command, n.netns, n.pod), (Command::Del, None, None));
    }

    #[test]
    fn bad_environment_names_the_variable() {
        let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
            (with(add_env(), "CNI_COMMAND", None), "CNI_COMMAND"),
            (with(add_env(), "CNI_COMMAND", Some("GC")), "CNI_COMMAND"),
            (with(add_env(), "CNI_CONTAINERID", None), "CNI_CONTAINERID"),
            (
                with(add_env(), "CNI_CONTAINERID", Some("-bad")),
                "CNI_CONTAINERID",
            ),
            (
                with(add_env(), "CNI_CONTAINERID", Some("a/b")),
                "CNI_CONTAINERID",
            ),
            (with(add_env(), "CNI_IFNAME", None), "CNI_IFNAME"),
            (
                with(add_env(), "CNI_IFNAME", Some("averyveryverylongname")),
                "CNI_IFNAME",
            ),
            (with(add_env(), "CNI_IFNAME", Some("a/b")), "CNI_IFNAME"),
            (with(add_env(), "CNI_IFNAME", Some("..")), "CNI_IFNAME"),
            (with(add_env(), "CNI_IFNAME", Some("eth 0")), "CNI_IFNAME"),
            (with(add_env(), "CNI_NETNS", None), "CNI_NETNS"),
            (
                with(add_env(), "CNI_NETNS", Some("relative/ns")),
                "CNI_NETNS",
            ),
            (with(add_env(), "CNI_ARGS", None), "CNI_ARGS"),
            (
                with(add_env(), "CNI_ARGS", Some("K8S_POD_NAMESPACE=default")),
                "CNI_ARGS",
            ),
            (with(add_env(), "CNI_ARGS", Some("garbage")), "CNI_ARGS"),
            (
                with(
                    add_env(),
                    "CNI_ARGS",
                    Some("K8S_POD_NAMESPACE=Default;K8S_POD_NAME=a"),
                ),
                "K8S_POD_NAMESPACE",
            ),
            (
                with(
                    add_env(),
                    "CNI_ARGS",
                    Some("K8S_POD_NAMESPACE=d;K8S_POD_NAME=a_b"),
                ),
                "K8S_POD_NAME",
            ),
            (
                with(
                    add_env(),
                    "CNI_ARGS",
                    Some("K8S_POD_NAMESPACE=d;K8S_POD_NAME=a;K8S_POD_UID=x y"),
                ),
                "K8S_POD_UID",
            ),
        ];
        for (e, var) in cases {
            let err = Invocation::parse(env(&e), CONFIG.as_bytes()).unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidEnvironment, "{var}: {err}");
            assert!(err.msg.contains(var), "{var} not named in {:?}", err.msg);
        }
    }

    #[test]
    fn check_needs_0_4_0() {
        let e = with(add_env(), "CNI_COMMAND", Some("CHECK"));
        let old = r#"{"cniVersion":"0.3.1","name":"pk","type":"portkeeper-cni"}"#;
        let err = Invocation::parse(env(&e), old.as_bytes()).unwrap_err();
        assert_eq!(err.code, ErrorCode::IncompatibleVersion);
        assert!(Invocation::parse(env(&e), CONFIG.as_bytes()).is_ok());
    }

    #[test]
    fn config_errors_pass_through() {
        let err = Invocation::parse(env(&add_env()), b"{not json").unwrap_err();
        assert_eq!(err.code, ErrorCode::DecodingFailure);
        let err = Invocation::parse(
            env(&add_env()),
            br#"{"cniVersion":"0.1.0","name":"a","type":"b"}"#,
        )
        .unwrap_err();
        assert_eq!(err.code, ErrorCode::IncompatibleVersion);
    }

    #[test]
    fn pod_uid_is_kept() {
        let pod = parse_pod_ref("K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p.q;K8S_POD_UID=0b5f1c2e-aaaa-bbbb-cccc-0123456789ab").unwrap();
        assert_eq!(
            pod.unwrap().uid.as_deref(),
            Some("0b5f1c2e-aaaa-bbbb-cccc-0123456789ab")
        );
    }
}
