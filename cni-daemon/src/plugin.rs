//! The plugin side: turn one runtime invocation into stdout bytes and an exit status.

use crate::cni::invocation::error_version;
use crate::cni::result::version_info;
use crate::cni::{CniError, ErrorCode, Invocation};
use crate::protocol::{DaemonRequest, DaemonResponse};
use std::path::Path;

/// What the plugin prints and whether it succeeded (exit status 0) or failed (1).
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// JSON to print on stdout; `None` prints nothing (successful DEL and CHECK).
    pub stdout: Option<serde_json::Value>,
    /// Whether the invocation succeeded.
    pub success: bool,
}

/// Validates the invocation, hands ADD/DEL/CHECK to the daemon through `call`, and formats the answer.
pub fn run(
    env: impl Fn(&str) -> Option<String>,
    stdin: &[u8],
    call: impl FnOnce(&Path, &DaemonRequest) -> Result<DaemonResponse, CniError>,
) -> Outcome {
    let version = error_version(stdin);
    let failed = |err: CniError| Outcome {
        stdout: Some(err.to_json(version.as_str())),
        success: false,
    };
    let invocation = match Invocation::parse(env, stdin) {
        Ok(Invocation::Version { runtime_version }) => {
            return Outcome {
                stdout: Some(version_info(runtime_version)),
                success: true,
            };
        }
        Ok(Invocation::Network(n)) => n,
        Err(err) => return failed(err),
    };
    let request = DaemonRequest {
        command: invocation.command,
        container_id: invocation.container_id,
        netns: invocation.netns,
        ifname: invocation.ifname,
        pod: invocation.pod,
        mtu: invocation.config.mtu,
        provider: invocation.config.provider.clone(),
    };
    let version = invocation.config.cni_version;
    match (
        call(&invocation.config.daemon_socket, &request),
        request.command,
    ) {
        (Ok(DaemonResponse::Added(result)), crate::cni::Command::Add) => Outcome {
            stdout: Some(result.to_json(version)),
            success: true,
        },
        (Ok(DaemonResponse::Done), crate::cni::Command::Del | crate::cni::Command::Check) => {
            Outcome {
                stdout: None,
                success: true,
            }
        }
        (Ok(DaemonResponse::Failed(err)), _) | (Err(err), _) => Outcome {
            stdout: Some(err.to_json(version.as_str())),
            success: false,
        },
        (Ok(other), command) => failed(
            CniError::new(
                ErrorCode::IoFailure,
                format!(
                    "portkeeper-daemon answered {} with an unexpected response",
                    command.as_str()
                ),
            )
            .with_details(format!("{other:?}")),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cni::result::{AddResult, Interface};
    use crate::cni::{CniVersion, Command};
    use std::collections::HashMap;
    use std::path::PathBuf;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    fn invocation(command: &'static str) -> Vec<(&'static str, &'static str)> {
        vec![
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", "/run/netns/p"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", "K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p"),
        ]
    }

    const CONFIG_031: &[u8] =
        br#"{"cniVersion":"0.3.1","name":"pk","type":"portkeeper-cni","daemonSocket":"/tmp/d.sock","mtu":1400}"#;

    #[test]
    fn add_forwards_and_formats_in_the_config_version() {
        let result = AddResult {
            interfaces: vec![Interface {
                name: "eth0".into(),
                mac: "00:00:00:00:00:01".into(),
                sandbox: None,
            }],
            ..AddResult::default()
        };
        let expected = result.to_json(CniVersion::V0_3_1);
        let out = run(env(&invocation("ADD")), CONFIG_031, |socket, req| {
            assert_eq!(socket, PathBuf::from("/tmp/d.sock"));
            assert_eq!(req.command, Command::Add);
            assert_eq!(req.mtu, Some(1400));
            assert_eq!(req.pod.as_ref().unwrap().name, "p");
            Ok(DaemonResponse::Added(result))
        });
        assert_eq!(
            out,
            Outcome {
                stdout: Some(expected),
                success: true
            }
        );
    }

    #[test]
    fn del_prints_nothing() {
        let out = run(env(&invocation("DEL")), CONFIG_031, |_, _| {
            Ok(DaemonResponse::Done)
        });
        assert_eq!(
            out,
            Outcome {
                stdout: None,
                success: true
            }
        );
    }

    #[test]
    fn daemon_error_is_printed_in_the_config_version() {
        let out = run(env(&invocation("ADD")), CONFIG_031, |_, _| {
            Ok(DaemonResponse::Failed(CniError::new(
                ErrorCode::AllocationUnavailable,
                "no allocation",
            )))
        });
        assert!(!out.success);
        assert_eq!(
            out.stdout.unwrap(),
            serde_json::json!({"cniVersion": "0.3.1", "code": 100, "msg": "no allocation", "details": ""})
        );
    }

    #[test]
    fn validation_errors_never_reach_the_daemon() {
        let out = run(env(&[("CNI_COMMAND", "ADD")]), CONFIG_031, |_, _| {
            panic!("called the daemon")
        });
        assert!(!out.success);
        assert_eq!(out.stdout.as_ref().unwrap()["code"], 4);
        assert_eq!(out.stdout.unwrap()["cniVersion"], "0.3.1");
    }

    #[test]
    fn mismatched_response_is_an_error() {
        let out = run(env(&invocation("DEL")), CONFIG_031, |_, _| {
            Ok(DaemonResponse::Added(AddResult::default()))
        });
        assert!(!out.success);
        assert_eq!(out.stdout.unwrap()["code"], 5);
    }

    #[test]
    fn version_is_answered_locally() {
        let out = run(
            env(&[("CNI_COMMAND", "VERSION")]),
            br#"{"cniVersion":"1.0.0"}"#,
            |_, _| panic!("called"),
        );
        assert!(out.success);
        assert_eq!(out.stdout.unwrap()["supportedVersions"][3], "1.0.0");
    }
}
