//! Pods deleted while the controller's watch cannot resume are released at once, not by the next
//! garbage collection. The API server is stopped; meanwhile pods are deleted straight from etcd
//! (as another API server of an HA control plane would delete them) and etcd is compacted and
//! defragmented past every revision the controller saw; the API server starts again with a new
//! watch cache. The controller's pod watch then gets 410 Gone and lists again, and a list has no
//! delete events: the controller must notice what vanished. Its periodic garbage collection is off
//! (`--gc-interval 0`) and its Lease long enough to outlive the outage (`--lease-duration 60`), so
//! neither a collection nor a restart can do the releasing.

use std::path::PathBuf;
use std::time::Instant;

use k8s_openapi::api::core::v1::Pod;
use kind_e2e::Cluster;
use kind_e2e::portkeeper::{
    Controller, allocated, controller_binary, controller_log, create_pod, ip_resource, port_names,
    prepare_cluster, run_on_cluster, wait_for,
};
use kube::api::Api;

const NS: &str = "relist";
const CIDR: &str = "10.16.0.0/16";
const KEPT: [&str; 2] = ["kept-0", "kept-1"];
const GONE: [&str; 3] = ["gone-0", "gone-1", "gone-2"];

#[test]
fn pods_deleted_while_the_watch_relists_are_released_at_once() {
    run_on_cluster(1, PathBuf::from(env!("CARGO_BIN_EXE_node-agent")), 1, cases);
}

async fn cases(cluster: &Cluster) -> Controller {
    let client = prepare_cluster(cluster, NS, false).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let controller = Controller::start(
        &controller_binary(),
        cluster,
        CIDR,
        0,
        &["--gc-interval", "0", "--lease-duration", "60"],
    );
    for name in KEPT.iter().chain(&GONE) {
        create_pod(&pods, NS, name).await;
    }
    for name in KEPT.iter().chain(&GONE) {
        allocated(&pods, name).await;
    }
    for name in GONE {
        assert!(!port_of(cluster, name).is_empty(), "{name} has a port");
    }

    println!("case: API server down, pods deleted in etcd, etcd compacted, API server up");
    cluster.stop("apiserver").expect("stop the API server");
    for name in GONE {
        let deleted = etcdctl(cluster, &["del", &format!("/registry/pods/{NS}/{name}")]);
        assert_eq!(deleted.trim(), "1", "{name} deleted from etcd");
    }
    let status = etcdctl(cluster, &["endpoint", "status", "--write-out=json"]);
    let revision = revision_of(&status);
    etcdctl(cluster, &["compact", &revision.to_string(), "--physical"]);
    etcdctl(cluster, &["defrag"]);
    cluster.start("apiserver").expect("start the API server");
    let up = Instant::now();

    for name in GONE {
        wait_for(
            &format!("{name}'s port and IP resource released"),
            async || {
                let ip = ip_resource(&client, &format!("{name}.{NS}")).await;
                (ip.is_none() && port_of(cluster, name).is_empty()).then_some(())
            },
        )
        .await;
    }
    println!(
        "released {:.1} s after the API server answered again (etcd compacted at revision {revision})",
        up.elapsed().as_secs_f64()
    );
    for name in KEPT {
        assert!(!port_of(cluster, name).is_empty(), "{name} keeps its port");
        allocated(&pods, name).await;
    }
    let log = std::fs::read_to_string(controller_log(cluster, 0)).unwrap();
    assert!(
        log.contains("deleted while the watch listed again"),
        "the release came from the relist, not from anything else:\n{log}"
    );
    controller
}

/// The port of pod `name`, by its `external_ids:pod`.
fn port_of(cluster: &Cluster, name: &str) -> String {
    port_names(cluster, &format!("external_ids:pod=\"{NS}/{name}\""))
}

/// `etcdctl`'s stdout, failing the test when it fails.
fn etcdctl(cluster: &Cluster, args: &[&str]) -> String {
    let out = cluster.etcdctl(args).expect("run etcdctl");
    assert!(
        out.status.success(),
        "etcdctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The current revision from `etcdctl endpoint status --write-out=json`.
fn revision_of(status: &str) -> i64 {
    let status: serde_json::Value = serde_json::from_str(status).expect("etcdctl JSON");
    status[0]["Status"]["header"]["revision"]
        .as_i64()
        .unwrap_or_else(|| panic!("no revision in {status}"))
}
