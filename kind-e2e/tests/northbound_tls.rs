//! The controller on an `ssl:` Northbound. The local cluster's NB database also listens on `ssl:`
//! (server and client certificates from the cluster's CA; OVSDB checks both ends), and the
//! controller is given only that remote and its `--ssl-*` files. A pod is allocated; without the
//! files the controller refuses to start and says why; the NB database restarts and a second pod
//! is allocated through the new TLS session; the consistency check reads Northbound over `ssl:`.

use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kind_e2e::portkeeper::{
    Controller, allocated, controller_binary, controller_log, create_pod, port_names,
    prepare_cluster, run_on_cluster_with,
};
use kind_e2e::{Cluster, ClusterOptions, consistency};
use kube::api::Api;
use ovsdb_client::runtime::transport::TlsConfig;

const NS: &str = "tls";
const CIDR: &str = "10.16.0.0/16";

#[test]
fn controller_on_an_ssl_northbound() {
    let options = ClusterOptions {
        nodes: 1,
        nb_ssl: true,
        controller: false,
        node_agent: Some(PathBuf::from(env!("CARGO_BIN_EXE_node-agent"))),
        ..ClusterOptions::default()
    };
    run_on_cluster_with(options, 2, cases);
}

async fn cases(cluster: &Cluster) -> Controller {
    let bin = controller_binary();
    let ssl = cluster.nb_ssl().expect("the NB database on ssl:").clone();
    let client = prepare_cluster(cluster, NS, false).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let (key, cert, ca) = (
        ssl.private_key.to_str().unwrap(),
        ssl.certificate.to_str().unwrap(),
        ssl.ca_cert.to_str().unwrap(),
    );

    println!("case: without certificate files an ssl: remote is refused at start, with the reason");
    let mut refused = Controller::start(&bin, cluster, CIDR, 0, &["--ovn-nb-db", &ssl.remote]);
    let status = refused.exited_within(Duration::from_secs(30));
    assert!(status.is_some_and(|s| !s.success()), "{status:?}");
    let log = std::fs::read_to_string(controller_log(cluster, 0)).unwrap();
    assert!(
        log.contains("ssl: remotes need a TLS configuration"),
        "{log}"
    );

    println!("case: a pod is allocated through the ssl: session");
    let tls_args = [
        "--ovn-nb-db",
        &ssl.remote,
        "--ssl-private-key",
        key,
        "--ssl-certificate",
        cert,
        "--ssl-ca-cert",
        ca,
    ];
    let controller = Controller::start(&bin, cluster, CIDR, 1, &tls_args);
    create(&pods, "first").await;
    allocated(&pods, "first").await;
    assert_eq!(
        port_names(cluster, &format!("external_ids:pod=\"{NS}/first\"")),
        "first.tls"
    );

    println!("case: after an NB restart the session comes back over ssl:");
    cluster.restart("nb").unwrap();
    create(&pods, "second").await;
    allocated(&pods, "second").await;

    let nb = consistency::connect_northbound(
        &ssl.remote,
        Some(TlsConfig::new(ca, cert, key).verify_hostname(false)),
    )
    .await
    .expect("the checker connects over ssl:");
    let report = consistency::settle(&client, &nb, Duration::from_secs(30))
        .await
        .unwrap();
    assert!(report.is_consistent(), "{report}");
    assert_eq!(report.pods, 2, "{report}");
    controller
}

async fn create(pods: &Api<Pod>, name: &str) {
    create_pod(pods, NS, name).await;
}
