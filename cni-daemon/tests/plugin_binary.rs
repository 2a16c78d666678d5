//! The `portkeeper-cni` binary as a container runtime runs it: environment and stdin in, a CNI result
//! or error object out, through the daemon's root-only socket to a real OVN chassis. Every bad input
//! gets its CNI error code and leaves nothing behind. Needs root; fails when OVN cannot start
//! (`PORTKEEPER_ALLOW_SKIP=1` skips instead).

mod support;

use portkeeper_cni::daemon::server;
use serde_json::{Value, json};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;
use support::{TestNetns, allocate, assert_nothing_left, fixture, on_fresh_node};

struct Call {
    status: i32,
    stdout: Value,
}

/// Runs the plugin with `command`, `stdin` and the usual kubelet environment.
async fn plugin(command: &str, stdin: &Value, container: &str, netns: &Path, pod: &str) -> Call {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_portkeeper-cni"))
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/opt/cni/bin")
        .env("CNI_ARGS", format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod};K8S_POD_INFRA_CONTAINER_ID={container}"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run portkeeper-cni");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.to_string().as_bytes()).await.unwrap();
    drop(input);
    let out = child.wait_with_output().await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    Call {
        status: out.status.code().expect("exited"),
        stdout: if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("stdout {text:?}: {e}"))
        },
    }
}

fn config(version: &str, socket: &Path) -> Value {
    json!({"cniVersion": version, "name": "portkeeper", "type": "portkeeper-cni", "daemonSocket": socket, "mtu": 1400})
}

fn assert_error(call: &Call, code: u64) {
    assert_eq!(call.status, 1, "{}", call.stdout);
    assert_eq!(call.stdout["code"], code, "{}", call.stdout);
    assert!(
        !call.stdout["msg"].as_str().unwrap_or_default().is_empty(),
        "{}",
        call.stdout
    );
}

#[test]
fn plugin_binary_through_the_daemon_socket() {
    if support::prerequisites_met() {
        on_fresh_node(plugin_binary_on_node);
    }
}

async fn plugin_binary_on_node() {
    let f = fixture(Duration::from_secs(20)).await;
    let run_dir = tempfile::tempdir().unwrap();
    let socket = run_dir.path().join("portkeeper").join("cni.sock");
    let listener = server::bind(&socket).expect("bind the daemon socket");
    let meta = std::fs::metadata(&socket).unwrap();
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o600,
        "socket must be root-only"
    );
    assert_eq!(
        std::fs::metadata(socket.parent().unwrap()).unwrap().mode() & 0o077,
        0,
        "socket dir must be root-only"
    );
    assert_eq!(meta.uid(), 0);
    tokio::spawn(server::serve(listener, f.daemon.clone()));

    let ns = TestNetns::new();
    allocate(
        &f,
        "web-0",
        [0x0a, 0x58, 0x0a, 0x10, 0, 0x20],
        "10.16.0.32",
        Some("fd00:10:16::20"),
    );

    // ADD in CNI 1.0.0: the result names both ends, the annotated addresses and the default routes.
    let add = plugin(
        "ADD",
        &config("1.0.0", &socket),
        "ctr1",
        &ns.path(),
        "web-0",
    )
    .await;
    assert_eq!(add.status, 0, "{}", add.stdout);
    assert_eq!(add.stdout["cniVersion"], "1.0.0");
    assert_eq!(
        add.stdout["interfaces"][1],
        json!({"name": "eth0", "mac": "0a:58:0a:10:00:20", "sandbox": ns.path()})
    );
    assert_eq!(
        add.stdout["ips"],
        json!([
            {"address": "10.16.0.32/16", "gateway": "10.16.0.1", "interface": 1},
            {"address": "fd00:10:16::20/64", "gateway": "fd00:10:16::1", "interface": 1}
        ])
    );
    assert_eq!(
        add.stdout["routes"],
        json!([{"dst": "0.0.0.0/0", "gw": "10.16.0.1"}, {"dst": "::/0", "gw": "fd00:10:16::1"}])
    );

    let check = plugin(
        "CHECK",
        &config("1.0.0", &socket),
        "ctr1",
        &ns.path(),
        "web-0",
    )
    .await;
    assert_eq!((check.status, &check.stdout), (0, &Value::Null));
    let del = plugin(
        "DEL",
        &config("1.0.0", &socket),
        "ctr1",
        &ns.path(),
        "web-0",
    )
    .await;
    assert_eq!((del.status, &del.stdout), (0, &Value::Null));
    assert_nothing_left(&f, "ctr1", Some(&ns));
    let again = plugin(
        "DEL",
        &config("1.0.0", &socket),
        "ctr1",
        &ns.path(),
        "web-0",
    )
    .await;
    assert_eq!(
        again.status, 0,
        "DEL of something unknown must succeed: {}",
        again.stdout
    );

    // An older runtime gets the older result shape.
    let add = plugin(
        "ADD",
        &config("0.3.1", &socket),
        "ctr2",
        &ns.path(),
        "web-0",
    )
    .await;
    assert_eq!(add.status, 0, "{}", add.stdout);
    assert_eq!(add.stdout["cniVersion"], "0.3.1");
    assert_eq!(add.stdout["ips"][0]["version"], "4");
    assert_eq!(add.stdout["ips"][1]["version"], "6");
    assert_eq!(
        plugin(
            "DEL",
            &config("0.3.1", &socket),
            "ctr2",
            &ns.path(),
            "web-0"
        )
        .await
        .status,
        0
    );
    assert_nothing_left(&f, "ctr2", Some(&ns));

    // Bad inputs: each its own code, nothing left behind.
    let malformed = plugin("ADD", &json!("not a config"), "ctr3", &ns.path(), "web-0").await;
    assert_error(&malformed, 6);
    let unknown_version = plugin(
        "ADD",
        &config("9.9.9", &socket),
        "ctr3",
        &ns.path(),
        "web-0",
    )
    .await;
    assert_error(&unknown_version, 1);
    assert!(
        unknown_version.stdout["msg"]
            .as_str()
            .unwrap()
            .contains("1.0.0")
    );
    let missing_netns = plugin(
        "ADD",
        &config("1.0.0", &socket),
        "ctr3",
        Path::new("/var/run/netns/pkcni-gone"),
        "web-0",
    )
    .await;
    assert_error(&missing_netns, 3);
    let no_allocation = plugin(
        "ADD",
        &config("1.0.0", &socket),
        "ctr3",
        &ns.path(),
        "never-allocated",
    )
    .await;
    assert_error(&no_allocation, 100);
    let relative_netns = plugin(
        "ADD",
        &config("1.0.0", &socket),
        "ctr3",
        Path::new("netns/x"),
        "web-0",
    )
    .await;
    assert_error(&relative_netns, 4);
    assert_nothing_left(&f, "ctr3", Some(&ns));
    let no_daemon = plugin(
        "ADD",
        &config("1.0.0", &run_dir.path().join("nobody.sock")),
        "ctr3",
        &ns.path(),
        "web-0",
    )
    .await;
    assert_error(&no_daemon, 11);

    let version = plugin(
        "VERSION",
        &json!({"cniVersion": "1.0.0"}),
        "x",
        &ns.path(),
        "web-0",
    )
    .await;
    assert_eq!(
        version.stdout["supportedVersions"],
        json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0"])
    );
}
