//! The consistency check can fail: on a live cluster, faults of each kind are made for real (a
//! pod deleted while the controller is down leaves its port and IP resource, a foreign port takes
//! a pod's address, a Subnet counter is overwritten) and the check must name each one; once the
//! controller has repaired what is its to repair, and the foreign port is gone, it passes.

use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kind_e2e::Cluster;
use kind_e2e::consistency::{Finding, Report};
use kind_e2e::portkeeper::{
    Controller, allocated, annotation, consistency_report, controller_binary, create_pod, nbctl,
    prepare_cluster, run_on_cluster,
};
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use portkeeper_api::Subnet;
use serde_json::json;

const NS: &str = "check";
const CIDR: &str = "10.16.0.0/16";

#[test]
fn consistency_check_reports_real_faults() {
    run_on_cluster(1, PathBuf::from(env!("CARGO_BIN_EXE_node-agent")), 2, cases);
}

async fn cases(cluster: &Cluster) -> Controller {
    let bin = controller_binary();
    let client = prepare_cluster(cluster, NS, false).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let controller = Controller::start(&bin, cluster, CIDR, 0, &[]);
    for name in ["kept", "gone"] {
        create_pod(&pods, NS, name).await;
    }
    let kept = allocated(&pods, "kept").await;
    allocated(&pods, "gone").await;
    let report = consistency_report(&client, cluster.nb_remote(), Duration::from_secs(30)).await;
    assert!(report.is_consistent(), "{report}");
    assert_eq!(report.pods, 2, "{report}");

    println!("case: a pod deleted while the controller is down leaves two leaks");
    controller.kill();
    pods.delete("gone", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    let report = once(&client, cluster).await;
    assert_eq!(report.leaks(), 2, "{report}");
    let text = report.to_string();
    for leak in [
        "leak: IP resource gone.check: no pod check/gone",
        "leak: port gone.check: no pod check/gone",
    ] {
        assert!(text.contains(leak), "{text}");
    }

    println!("case: a foreign port holding a pod's IP is a duplicate");
    let ip = annotation(&kept, "ip_address").unwrap().to_owned();
    // On a switch of its own: ovn-nbctl refuses a duplicate within one switch.
    nbctl(
        cluster,
        &[
            "ls-add",
            "intruders",
            "--",
            "lsp-add",
            "intruders",
            "intruder",
            "--",
            "lsp-set-addresses",
            "intruder",
            &format!("0a:00:00:00:ee:01 {ip}"),
        ],
    );
    let report = once(&client, cluster).await;
    let duplicates: Vec<&Finding> = report
        .findings
        .iter()
        .filter(|f| matches!(f, Finding::Duplicate { .. }))
        .collect();
    assert_eq!(
        duplicates,
        [&Finding::Duplicate {
            address: ip.clone(),
            holders: vec![
                "intruder (port)".into(),
                "kept.check (IP resource, pod annotations, port)".into()
            ],
        }],
        "{report}"
    );

    println!("case: a Subnet counter that disagrees with the held addresses");
    let subnets: Api<Subnet> = Api::all(client.clone());
    subnets
        .patch_status(
            "ovn-default",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"v4usingIPs": 1000}})),
        )
        .await
        .unwrap();
    let report = once(&client, cluster).await;
    assert!(
        report.findings.iter().any(|f| matches!(
            f,
            Finding::Counter { field: "v4usingIPs", published, .. } if *published == 1000.0
        )),
        "{report}"
    );

    println!("case: the controller's start-up collects the leaks and republishes the counters");
    nbctl(cluster, &["ls-del", "intruders"]);
    Controller::start(&bin, cluster, CIDR, 1, &[])
}

/// One check, without waiting for anything to settle.
async fn once(client: &Client, cluster: &Cluster) -> Report {
    consistency_report(client, cluster.nb_remote(), Duration::ZERO).await
}
