//! The network configuration the runtime passes on stdin.

use super::error::{CniError, ErrorCode};
use super::version::CniVersion;
use serde::Deserialize;
use std::path::PathBuf;

/// Where the daemon listens when the configuration names no socket.
pub const DEFAULT_DAEMON_SOCKET: &str = "/run/portkeeper/cni.sock";

/// Kube-OVN's daemon socket, as NetworkAttachmentDefinitions written for Kube-OVN name it in
/// `server_socket`: portkeeper's daemon takes its place, so it means [`DEFAULT_DAEMON_SOCKET`].
pub const KUBE_OVN_SERVER_SOCKET: &str = "/run/openvswitch/kube-ovn-daemon.sock";

/// The provider of the primary network.
pub const DEFAULT_PROVIDER: &str = "ovn";

/// Smallest MTU accepted: the IPv4 minimum (IPv6 needs 1280; the daemon checks that with the addresses).
pub const MIN_MTU: u32 = 68;

/// Largest MTU a Linux netdevice accepts.
pub const MAX_MTU: u32 = 65535;

/// The fields of our network configuration, as decoded before validation.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawConfig {
    cni_version: Option<String>,
    name: Option<String>,
    #[serde(rename = "type")]
    plugin_type: Option<String>,
    daemon_socket: Option<PathBuf>,
    /// Kube-OVN's spelling of the daemon socket.
    #[serde(rename = "server_socket")]
    server_socket: Option<PathBuf>,
    provider: Option<String>,
    mtu: Option<u32>,
}

/// A validated network configuration. Fields we do not know (runtimeConfig, args, prevResult…) are ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkConfig {
    /// The CNI version the runtime speaks; results are written in it.
    pub cni_version: CniVersion,
    /// The network name.
    pub name: String,
    /// The daemon's unix socket.
    pub daemon_socket: PathBuf,
    /// The network this interface is on: `ovn` (the primary network, the default) or an
    /// attachment network's provider (`<nad>.<ns>.ovn`), whose allocation the daemon wires.
    pub provider: String,
    /// MTU for the pod interface; `None` leaves the daemon's default.
    pub mtu: Option<u32>,
}

impl NetworkConfig {
    /// Decodes and validates the configuration bytes read from stdin.
    pub fn parse(bytes: &[u8]) -> Result<Self, CniError> {
        let raw: RawConfig = serde_json::from_slice(bytes).map_err(|e| {
            CniError::new(
                ErrorCode::DecodingFailure,
                "network configuration on stdin is not valid JSON of the expected shape",
            )
            .with_details(e)
        })?;
        let version = raw.cni_version.ok_or_else(|| missing("cniVersion"))?;
        let cni_version = CniVersion::parse(&version)?;
        let name = raw.name.ok_or_else(|| missing("name"))?;
        if !is_valid_network_name(&name) {
            return Err(invalid(format!(
                "network name {name:?} must start with a letter or digit and contain only letters, digits, '_', '.' and '-'"
            )));
        }
        match raw.plugin_type.as_deref() {
            None => return Err(missing("type")),
            Some("") => return Err(invalid("network configuration field \"type\" is empty")),
            Some(_) => {}
        }
        let daemon_socket = match (raw.daemon_socket, raw.server_socket) {
            (Some(socket), _) => socket,
            (None, Some(socket)) if socket != std::path::Path::new(KUBE_OVN_SERVER_SOCKET) => {
                socket
            }
            _ => PathBuf::from(DEFAULT_DAEMON_SOCKET),
        };
        if !daemon_socket.is_absolute() && abstract_name(&daemon_socket).is_none() {
            return Err(invalid(format!(
                "daemonSocket {} must be an absolute path or @name (an abstract socket)",
                daemon_socket.display()
            )));
        }
        let provider = match raw.provider.as_deref().map(str::trim) {
            None | Some("") => DEFAULT_PROVIDER.to_owned(),
            Some(p) if is_valid_provider(p) => p.to_owned(),
            Some(p) => {
                return Err(invalid(format!(
                    "provider {p:?} must be lower-case letters, digits, '-' and '.', like <nad>.<namespace>.ovn"
                )));
            }
        };
        if let Some(mtu) = raw.mtu
            && !(MIN_MTU..=MAX_MTU).contains(&mtu)
        {
            return Err(invalid(format!(
                "mtu {mtu} is outside {MIN_MTU}..={MAX_MTU}"
            )));
        }
        Ok(Self {
            cni_version,
            name,
            daemon_socket,
            provider,
            mtu: raw.mtu,
        })
    }
}

/// The name of an abstract unix socket (`@name`), which lives in the network namespace rather than
/// the file system: one per node namespace when several nodes share a machine.
pub fn abstract_name(socket: &std::path::Path) -> Option<&[u8]> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = socket.as_os_str().as_bytes();
    bytes
        .strip_prefix(b"@")
        .filter(|name| !name.is_empty() && name.len() < 107)
}

/// Reads only `cniVersion`, so that errors found before full validation are written in the runtime's version.
pub fn peek_version(bytes: &[u8]) -> Option<CniVersion> {
    #[derive(Deserialize)]
    struct Peek {
        #[serde(rename = "cniVersion")]
        cni_version: String,
    }
    let peek: Peek = serde_json::from_slice(bytes).ok()?;
    CniVersion::parse(&peek.cni_version).ok()
}

/// The CNI specification's rule for network names: `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`.
fn is_valid_network_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// A provider is a network's annotation prefix (`<provider>.kubernetes.io/...`): DNS labels
/// joined by `.`.
pub fn is_valid_provider(provider: &str) -> bool {
    provider.len() <= 253
        && provider.split('.').all(|label| {
            !label.is_empty()
                && label
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

fn missing(field: &str) -> CniError {
    invalid(format!("network configuration has no {field:?} field"))
}

fn invalid(msg: impl Into<String>) -> CniError {
    CniError::new(ErrorCode::InvalidNetworkConfig, msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<NetworkConfig, CniError> {
        NetworkConfig::parse(json.as_bytes())
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let cfg =
            parse(r#"{"cniVersion":"1.0.0","name":"portkeeper","type":"portkeeper-cni"}"#).unwrap();
        assert_eq!(cfg.cni_version, CniVersion::V1_0_0);
        assert_eq!(cfg.daemon_socket, PathBuf::from(DEFAULT_DAEMON_SOCKET));
        assert_eq!(cfg.provider, "ovn");
        assert_eq!(cfg.mtu, None);
    }

    #[test]
    fn a_netconf_written_for_kube_ovn_works_unchanged() {
        let cfg = parse(
            r#"{"cniVersion":"0.3.1","name":"attachnet","type":"kube-ovn",
                "server_socket":"/run/openvswitch/kube-ovn-daemon.sock","provider":"attachnet.default.ovn"}"#,
        )
        .unwrap();
        assert_eq!(cfg.provider, "attachnet.default.ovn");
        assert_eq!(cfg.daemon_socket, PathBuf::from(DEFAULT_DAEMON_SOCKET));
        let own = parse(
            r#"{"cniVersion":"1.0.0","name":"a","type":"kube-ovn","server_socket":"/run/other.sock"}"#,
        )
        .unwrap();
        assert_eq!(own.daemon_socket, PathBuf::from("/run/other.sock"));
        let both = parse(
            r#"{"cniVersion":"1.0.0","name":"a","type":"portkeeper-cni","daemonSocket":"@pk","server_socket":"/run/other.sock"}"#,
        )
        .unwrap();
        assert_eq!(both.daemon_socket, PathBuf::from("@pk"));
    }

    #[test]
    fn full_config_with_runtime_extras() {
        let cfg = parse(
            r#"{"cniVersion":"0.4.0","name":"pk","type":"portkeeper-cni","daemonSocket":"/run/x.sock","mtu":1400,
                "runtimeConfig":{"portMappings":[]},"prevResult":{"ips":[]},"args":{"k":"v"}}"#,
        )
        .unwrap();
        assert_eq!(cfg.cni_version, CniVersion::V0_4_0);
        assert_eq!(cfg.daemon_socket, PathBuf::from("/run/x.sock"));
        assert_eq!(cfg.mtu, Some(1400));
    }

    #[test]
    fn each_bad_input_has_its_code() {
        let cases = [
            ("", ErrorCode::DecodingFailure),
            ("{", ErrorCode::DecodingFailure),
            ("[]", ErrorCode::DecodingFailure),
            (r#"{"cniVersion":1}"#, ErrorCode::DecodingFailure),
            (
                r#"{"name":"a","type":"t"}"#,
                ErrorCode::InvalidNetworkConfig,
            ),
            (
                r#"{"cniVersion":"9.9.9","name":"a","type":"t"}"#,
                ErrorCode::IncompatibleVersion,
            ),
            (
                r#"{"cniVersion":"1.0.0","type":"t"}"#,
                ErrorCode::InvalidNetworkConfig,
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"-a","type":"t"}"#,
                ErrorCode::InvalidNetworkConfig,
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"a b","type":"t"}"#,
                ErrorCode::InvalidNetworkConfig,
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"a"}"#,
                ErrorCode::InvalidNetworkConfig,
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"a","type":""}"#,
                ErrorCode::InvalidNetworkConfig,
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"a","type":"t","daemonSocket":"rel.sock"}"#,
                ErrorCode::InvalidNetworkConfig,
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"a","type":"t","mtu":20}"#,
                ErrorCode::InvalidNetworkConfig,
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"a","type":"t","mtu":70000}"#,
                ErrorCode::InvalidNetworkConfig,
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"a","type":"t","mtu":-1}"#,
                ErrorCode::DecodingFailure,
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"a","type":"t","provider":"A.b.ovn"}"#,
                ErrorCode::InvalidNetworkConfig,
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"a","type":"t","provider":"a..ovn"}"#,
                ErrorCode::InvalidNetworkConfig,
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"a","type":"t","server_socket":"rel.sock"}"#,
                ErrorCode::InvalidNetworkConfig,
            ),
        ];
        for (json, code) in cases {
            let err = parse(json).unwrap_err();
            assert_eq!(err.code, code, "{json}: {err}");
            assert!(!err.msg.is_empty());
        }
    }

    #[test]
    fn peek_version_reads_only_the_version() {
        assert_eq!(
            peek_version(br#"{"cniVersion":"0.3.1","mtu":"x"}"#),
            Some(CniVersion::V0_3_1)
        );
        assert_eq!(peek_version(b"nonsense"), None);
    }
}
