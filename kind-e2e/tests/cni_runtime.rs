//! The CNI runtime against stand-in plugins that record what they were given: the environment,
//! the stdin of each plugin, `prevResult` chaining, the order of ADD, CHECK and DEL, and how a
//! plugin's error object is reported. (The real bridge + host-local plugins are exercised by
//! the local-cluster suite.)

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use kind_e2e::cni::{Attachment, CniError, CniRuntime, NetworkConfigList};
use serde_json::{Value, json};

const FIRST_RESULT: &str = r#"{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"/run/netns/x"}],"ips":[{"address":"10.9.0.5/24","interface":0}]}"#;
const SECOND_RESULT: &str = r#"{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"/run/netns/x"}],"ips":[{"address":"10.9.0.5/24","interface":0}],"dns":{"nameservers":["10.9.0.1"]}}"#;

/// Writes a plugin that records each call as `<n>-<name>-<COMMAND>.{stdin,env}` in `log`.
fn plugin(bin: &Path, log: &Path, name: &str, add_output: &str, exit: i32) {
    let script = format!(
        "#!/bin/bash\nn=$(ls '{log}' | wc -l)\nn=$(printf '%03d' \"$n\")\n\
         cat > '{log}'/$n-{name}-$CNI_COMMAND.stdin\n\
         env | grep '^CNI_' | sort > '{log}'/$n-{name}-$CNI_COMMAND.env\n\
         if [ \"$CNI_COMMAND\" = ADD ] || [ {exit} != 0 ]; then printf '%s' '{add_output}'; fi\n\
         exit {exit}\n",
        log = log.display()
    );
    let path = bin.join(name);
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

struct Call {
    plugin: String,
    command: String,
    stdin: Value,
    env: BTreeMap<String, String>,
}

fn calls(log: &Path) -> Vec<Call> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(log)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "stdin"))
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|stdin| {
            let stem = stdin.file_stem().unwrap().to_string_lossy().into_owned();
            let mut parts = stem.splitn(3, '-');
            let (_, plugin, command) = (parts.next(), parts.next().unwrap(), parts.next().unwrap());
            let env = std::fs::read_to_string(stdin.with_extension("env"))
                .unwrap()
                .lines()
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            Call {
                plugin: plugin.into(),
                command: command.into(),
                stdin: serde_json::from_slice(&std::fs::read(&stdin).unwrap()).unwrap(),
                env,
            }
        })
        .collect()
}

fn attachment() -> Attachment {
    Attachment {
        container_id: "0123abcd".into(),
        netns: "/run/netns/pk-test".into(),
        ifname: "eth0".into(),
        args: [("K8S_POD_NAMESPACE", "ns1"), ("K8S_POD_NAME", "web-0")]
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect(),
    }
}

fn setup(plugins: &[(&str, &str, i32)]) -> (tempfile::TempDir, PathBuf, CniRuntime) {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    let log = dir.path().join("log");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(&log).unwrap();
    for (name, out, exit) in plugins {
        plugin(&bin, &log, name, out, *exit);
    }
    let types: Vec<Value> = plugins
        .iter()
        .map(|(name, _, _)| json!({"type": name, "opt": name}))
        .collect();
    let conf = json!({"cniVersion": "1.0.0", "name": "testnet", "plugins": types});
    let list = NetworkConfigList::parse(conf.to_string().as_bytes()).unwrap();
    let runtime = CniRuntime::new(list, vec![dir.path().join("empty"), bin]);
    (dir, log, runtime)
}

#[tokio::test]
async fn add_chains_results_and_del_runs_in_reverse_with_the_cached_result() {
    let (_dir, log, runtime) = setup(&[("first", FIRST_RESULT, 0), ("second", SECOND_RESULT, 0)]);
    let att = attachment();
    let result = runtime.add(&att).await.unwrap();
    assert_eq!(
        result,
        serde_json::from_str::<Value>(SECOND_RESULT).unwrap()
    );
    runtime.check(&att, &result).await.unwrap();
    runtime.del(&att, Some(&result)).await.unwrap();

    let calls = calls(&log);
    let order: Vec<(String, String)> = calls
        .iter()
        .map(|c| (c.plugin.clone(), c.command.clone()))
        .collect();
    let expected = [
        ("first", "ADD"),
        ("second", "ADD"),
        ("first", "CHECK"),
        ("second", "CHECK"),
        ("second", "DEL"),
        ("first", "DEL"),
    ];
    assert_eq!(order, expected.map(|(p, c)| (p.to_string(), c.to_string())));

    let first_add = &calls[0];
    assert_eq!(
        first_add.stdin,
        json!({"type": "first", "opt": "first", "cniVersion": "1.0.0", "name": "testnet"})
    );
    assert_eq!(
        calls[1].stdin["prevResult"],
        serde_json::from_str::<Value>(FIRST_RESULT).unwrap(),
        "the second plugin gets the first one's result"
    );
    for call in &calls[2..] {
        assert_eq!(
            call.stdin["prevResult"], result,
            "{} {} gets the cached result",
            call.plugin, call.command
        );
    }
    for call in &calls {
        let env = &call.env;
        assert_eq!(env["CNI_COMMAND"], call.command);
        assert_eq!(env["CNI_CONTAINERID"], "0123abcd");
        assert_eq!(env["CNI_NETNS"], "/run/netns/pk-test");
        assert_eq!(env["CNI_IFNAME"], "eth0");
        assert_eq!(
            env["CNI_ARGS"],
            "IgnoreUnknown=1;K8S_POD_NAME=web-0;K8S_POD_NAMESPACE=ns1"
        );
        assert!(
            env["CNI_PATH"].ends_with("/bin"),
            "CNI_PATH lists the plugin folders: {}",
            env["CNI_PATH"]
        );
        assert!(env["CNI_PATH"].contains(':'));
    }
}

#[tokio::test]
async fn a_plugin_error_object_is_reported_and_stops_the_chain() {
    let error = r#"{"cniVersion":"1.0.0","code":11,"msg":"no IP addresses available","details":"range 10.9.0.0/24"}"#;
    let (_dir, log, runtime) = setup(&[("failing", error, 1), ("never", SECOND_RESULT, 0)]);
    let err = runtime.add(&attachment()).await.unwrap_err();
    match &err {
        CniError::Plugin {
            plugin,
            command,
            code,
            msg,
            ..
        } => {
            assert_eq!((plugin.as_str(), *command, *code), ("failing", "ADD", 11));
            assert_eq!(msg, "no IP addresses available");
        }
        other => panic!("unexpected error {other:?}"),
    }
    assert!(err.to_string().contains("range 10.9.0.0/24"), "{err}");
    let plugins: Vec<String> = calls(&log).into_iter().map(|c| c.plugin).collect();
    assert_eq!(plugins, ["failing"], "nothing runs after a failed plugin");
}

#[tokio::test]
async fn a_missing_plugin_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let list =
        NetworkConfigList::parse(br#"{"cniVersion":"1.0.0","name":"n","type":"absent"}"#).unwrap();
    let runtime = CniRuntime::new(list, vec![dir.path().into()]);
    let err = runtime.add(&attachment()).await.unwrap_err();
    assert!(
        matches!(err, CniError::PluginNotFound { ref plugin, .. } if plugin == "absent"),
        "{err}"
    );
}
