//! Attachment networks on the local cluster, Kube-OVN-compatible: NetworkAttachmentDefinitions
//! written for Kube-OVN (`"type": "kube-ovn"`, `server_socket`, `provider`), Subnets of provider
//! `<nad>.<ns>.ovn`, pods selecting them with `k8s.v1.cni.cncf.io/networks` (text and JSON form,
//! a static IP and MAC on one), wired by the node agent's Multus step through portkeeper-cni.
//! Every nic is checked where it lives: the pod's provider-prefixed annotations, its interface
//! inside the pod's namespace, its port (`ovn-nbctl`) and its IP resource; pings go across nodes
//! on each network. Deletion removes every nic; a StatefulSet and a VM keep every nic across
//! recreation, a controller restart in between; both ports of a migrating VM get the options.
//! The run ends with the consistency checker, which counts every nic.

use std::collections::BTreeMap;
use std::path::PathBuf;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use kind_e2e::Cluster;
use kind_e2e::dataplane::{assert_pings, assert_wired_as_annotated, exec, wait_running};
use kind_e2e::kubevirt::VirtController;
use kind_e2e::portkeeper::{
    Controller, controller_binary, install_kubevirt, ip_resource, kubectl, kubectl_apply,
    lsp_options, nbctl, node_chassis, port_names, prepare_cluster, repo_root, run_on_cluster,
    wait_for, warnings,
};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};

const NS: &str = "multi";
const CIDR: &str = "10.16.0.0/16";
const BLUE: &str = "blue.multi.ovn";
const RED: &str = "red.multi.ovn";
/// The static address and MAC the first pod asks for on red.
const RED_IP: &str = "10.51.0.50";
const RED_MAC: &str = "02:00:00:51:00:50";

#[test]
fn multi_network() {
    run_on_cluster(2, PathBuf::from(env!("CARGO_BIN_EXE_node-agent")), 2, cases);
}

/// One nic as its pod's annotations publish it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Nic {
    ip: String,
    mac: String,
    subnet: String,
}

/// The pod's nic on `provider`'s network, from `<provider>.kubernetes.io/...`.
fn nic_of(p: &Pod, provider: &str) -> Nic {
    let get = |suffix: &str| {
        p.annotations()
            .get(&format!("{provider}.kubernetes.io/{suffix}"))
            .cloned()
            .unwrap_or_else(|| panic!("{} lacks {provider}.kubernetes.io/{suffix}", p.name_any()))
    };
    assert_eq!(get("allocated"), "true");
    Nic {
        ip: get("ip_address"),
        mac: get("mac_address"),
        subnet: get("logical_switch"),
    }
}

/// The port name of `name`'s nic on `provider`: `<name>.multi[.<provider>]`.
fn port(name: &str, provider: &str) -> String {
    match provider {
        "ovn" => format!("{name}.{NS}"),
        p => format!("{name}.{NS}.{p}"),
    }
}

/// The nic's port and IP resource both say what the annotations say.
async fn recorded(cluster: &Cluster, client: &Client, port: &str, nic: &Nic) {
    assert_eq!(
        nbctl(cluster, &["lsp-get-addresses", port]),
        format!("{} {}", nic.mac, nic.ip),
        "port {port}"
    );
    let switch = nbctl(cluster, &["lsp-get-ls", port]);
    assert!(
        switch.contains(&format!("({})", nic.subnet)),
        "port {port} is on {switch}"
    );
    let ip = ip_resource(client, port)
        .await
        .unwrap_or_else(|| panic!("IP resource {port}"));
    assert_eq!(ip["spec"]["ipAddress"], json!(nic.ip), "IP resource {port}");
    assert_eq!(
        ip["spec"]["macAddress"],
        json!(nic.mac),
        "IP resource {port}"
    );
    assert_eq!(
        ip["spec"]["subnet"],
        json!(nic.subnet),
        "IP resource {port}"
    );
}

/// `ifname` inside the pod has exactly the nic's MAC and address (with its subnet's prefix).
fn wired(cluster: &Cluster, p: &Pod, ifname: &str, nic: &Nic, prefix: u8) {
    let name = p.name_any();
    let (ok, link) = exec(cluster, NS, &name, &["ip", "-o", "link", "show", ifname]);
    assert!(ok, "{name} has no {ifname}: {link}");
    assert!(link.contains(&nic.mac), "{name} {ifname}: {link}");
    let (ok, addrs) = exec(
        cluster,
        NS,
        &name,
        &["ip", "-o", "addr", "show", "dev", ifname, "scope", "global"],
    );
    assert!(ok, "{addrs}");
    let seen: Vec<&str> = addrs
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3))
        .collect();
    assert_eq!(seen, [format!("{}/{prefix}", nic.ip)], "{name} {ifname}");
}

/// Waits until pod `name` (of any UID but `not_uid`) runs with a nic on every network of
/// `providers` allocated; returns it.
async fn running_with(
    pods: &Api<Pod>,
    name: &str,
    providers: &[&str],
    not_uid: Option<&str>,
) -> Pod {
    wait_running(pods, name, not_uid).await;
    wait_for(&format!("{name} allocated on {providers:?}"), async || {
        let p = pods.get(name).await.ok()?;
        let allocated = |provider: &&str| {
            p.annotations()
                .get(&format!("{provider}.kubernetes.io/allocated"))
                .is_some_and(|v| v == "true")
        };
        (p.uid().as_deref() != not_uid && providers.iter().all(allocated)).then_some(p)
    })
    .await
}

/// A pod bound to `node`, selecting `networks`, with `extra` annotations.
async fn pod_on(pods: &Api<Pod>, name: &str, node: &str, networks: &str, extra: Value) {
    let mut annotations = json!({ "k8s.v1.cni.cncf.io/networks": networks });
    if let (Some(into), Some(more)) = (annotations.as_object_mut(), extra.as_object()) {
        into.extend(more.clone());
    }
    let pod = serde_json::from_value(json!({
        "metadata": { "name": name, "namespace": NS, "annotations": annotations },
        "spec": {
            "nodeName": node,
            "automountServiceAccountToken": false,
            "terminationGracePeriodSeconds": 0,
            "containers": [{ "name": "c", "image": "busybox" }],
        },
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
}

/// The attachment Subnets and their NetworkAttachmentDefinitions, written as for Kube-OVN.
fn networks(cluster: &Cluster) {
    kubectl(
        cluster,
        &[
            "apply",
            "-f",
            repo_root()
                .join("yamls/network-attachment-definition.yaml")
                .to_str()
                .unwrap(),
        ],
    );
    for (name, cidr) in [("blue", "10.50.0.0/24"), ("red", "10.51.0.0/24")] {
        kubectl_apply(
            cluster,
            &format!(
                r#"
apiVersion: kubeovn.io/v1
kind: Subnet
metadata: {{name: {name}}}
spec: {{cidrBlock: "{cidr}", provider: {name}.{NS}.ovn}}
---
apiVersion: k8s.cni.cncf.io/v1
kind: NetworkAttachmentDefinition
metadata: {{name: {name}, namespace: {NS}}}
spec:
  config: '{{"cniVersion": "0.3.1", "name": "{name}", "type": "kube-ovn", "server_socket": "@portkeeper-cni", "provider": "{name}.{NS}.ovn"}}'
"#
            ),
        );
    }
}

/// Returns the running controller, so the final consistency check sees its last writes.
async fn cases(cluster: &Cluster) -> Controller {
    let bin = controller_binary();
    let client = prepare_cluster(cluster, NS, false).await;
    install_kubevirt(cluster, &client).await;
    networks(cluster);
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let controller = Controller::start(&bin, cluster, CIDR, 0, &[]);

    two_attachments(cluster, &client, &pods).await;
    a_bad_selection_changes_nothing(cluster, &client, &pods).await;
    let controller = statefulset_keeps_every_nic(cluster, &client, &pods, &bin, controller).await;
    vm_keeps_both_nics(cluster, &client).await;
    controller
}

async fn two_attachments(cluster: &Cluster, client: &Client, pods: &Api<Pod>) {
    println!("case: a pod with two attachment networks, one with a static IP and MAC");
    let selection = json!([
        { "name": "blue" },
        { "name": "red", "namespace": NS, "ips": [RED_IP], "mac": RED_MAC },
    ])
    .to_string();
    pod_on(pods, "a", "node1", &selection, json!({})).await;
    pod_on(pods, "peer", "node2", "blue, multi/red", json!({})).await;
    let all = ["ovn", BLUE, RED];
    let a = running_with(pods, "a", &all, None).await;
    let peer = running_with(pods, "peer", &all, None).await;

    let red = nic_of(&a, RED);
    assert_eq!((red.ip.as_str(), red.mac.as_str()), (RED_IP, RED_MAC));
    assert_eq!(red.subnet, "red");
    assert_eq!(nic_of(&a, BLUE).subnet, "blue");
    for p in [&a, &peer] {
        assert_wired_as_annotated(cluster, p);
        wired(cluster, p, "net1", &nic_of(p, BLUE), 24);
        wired(cluster, p, "net2", &nic_of(p, RED), 24);
        for provider in all {
            recorded(
                cluster,
                client,
                &port(&p.name_any(), provider),
                &nic_of(p, provider),
            )
            .await;
        }
        let (_, routes) = exec(cluster, NS, &p.name_any(), &["ip", "route"]);
        assert_eq!(routes.matches("default").count(), 1, "{routes}");
        assert!(
            routes.contains("default via 10.16.0.1 dev eth0"),
            "{routes}"
        );
    }

    // Each network across nodes, from each NIC.
    assert_pings(cluster, &a, &nic_of(&peer, "ovn").ip, "eth0 across nodes");
    assert_pings(
        cluster,
        &a,
        &nic_of(&peer, BLUE).ip,
        "net1 (blue) across nodes",
    );
    assert_pings(
        cluster,
        &a,
        &nic_of(&peer, RED).ip,
        "net2 (red) across nodes",
    );
    assert_pings(cluster, &peer, RED_IP, "to the static address on red");

    // Multus's network-status lists all three interfaces.
    let status: Value = serde_json::from_str(
        a.annotations()
            .get("k8s.v1.cni.cncf.io/network-status")
            .expect("network-status"),
    )
    .unwrap();
    let listed: Vec<(String, String, String)> = status
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap_or_default().to_owned(),
                s["interface"].as_str().unwrap_or_default().to_owned(),
                s["ips"][0].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        vec![
            ("portkeeper".into(), "eth0".into(), nic_of(&a, "ovn").ip),
            (format!("{NS}/blue"), "net1".into(), nic_of(&a, BLUE).ip),
            (format!("{NS}/red"), "net2".into(), RED_IP.into()),
        ]
    );

    println!("case: deleting the pod removes all its ports and IP resources");
    pods.delete("a", &DeleteParams::default()).await.unwrap();
    wait_for("a's ports and IP resources gone", async || {
        let ports = port_names(cluster, &format!("external_ids:pod=\"{NS}/a\""));
        let mut left = !ports.is_empty();
        for provider in all {
            left |= ip_resource(client, &port("a", provider)).await.is_some();
        }
        (!left).then_some(())
    })
    .await;
    assert!(
        !port_names(cluster, &format!("external_ids:pod=\"{NS}/peer\"")).is_empty(),
        "the peer keeps its ports"
    );
    pods.delete("peer", &DeleteParams::default()).await.unwrap();
}

async fn a_bad_selection_changes_nothing(cluster: &Cluster, client: &Client, pods: &Api<Pod>) {
    println!("case: a bad networks annotation is a Warning Event and allocates nothing");
    pod_on(pods, "bad", "node1", "blue/red/green", json!({})).await;
    let message = wait_for("InvalidAnnotation on bad", async || {
        warnings(client, NS, "bad")
            .await
            .into_iter()
            .find(|(reason, _)| reason == "InvalidAnnotation")
            .map(|(_, m)| m)
    })
    .await;
    assert!(message.contains("k8s.v1.cni.cncf.io/networks"), "{message}");
    let p = pods.get("bad").await.unwrap();
    assert!(
        !p.annotations().keys().any(|k| k.ends_with("/allocated")),
        "{:?}",
        p.annotations()
    );
    assert!(port_names(cluster, &format!("external_ids:pod=\"{NS}/bad\"")).is_empty());
    pods.delete("bad", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
}

/// Every nic of a pod, by provider.
fn nics(p: &Pod, providers: &[&str]) -> BTreeMap<String, Nic> {
    providers
        .iter()
        .map(|provider| (provider.to_string(), nic_of(p, provider)))
        .collect()
}

async fn statefulset_keeps_every_nic(
    cluster: &Cluster,
    client: &Client,
    pods: &Api<Pod>,
    bin: &std::path::Path,
    controller: Controller,
) -> Controller {
    println!("case: a StatefulSet with attachments keeps every nic across recreation");
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), NS);
    let set = json!({
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": { "name": "db", "namespace": NS },
        "spec": {
            "replicas": 1,
            "serviceName": "db",
            "selector": { "matchLabels": { "app": "db" } },
            "template": {
                "metadata": { "labels": { "app": "db" }, "annotations": {
                    "k8s.v1.cni.cncf.io/networks": "blue, red",
                    "red.multi.ovn.kubernetes.io/ip_pool": "10.51.0.60",
                }},
                "spec": {
                    "automountServiceAccountToken": false,
                    "terminationGracePeriodSeconds": 0,
                    "containers": [{ "name": "c", "image": "busybox" }],
                },
            },
        },
    });
    sets.create(
        &PostParams::default(),
        &serde_json::from_value(set).unwrap(),
    )
    .await
    .unwrap();
    let all = ["ovn", BLUE, RED];
    let first = running_with(pods, "db-0", &all, None).await;
    let before = nics(&first, &all);
    assert_eq!(before[RED].ip, "10.51.0.60", "the ordinal's ip_pool entry");

    pods.delete("db-0", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    let second = running_with(pods, "db-0", &all, first.uid().as_deref()).await;
    assert_eq!(nics(&second, &all), before, "after a pod recreation");

    println!("case: ... and through a controller restart with the pod recreated meanwhile");
    controller.kill();
    pods.delete("db-0", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    let controller = Controller::start(bin, cluster, CIDR, 1, &[]);
    let third = running_with(pods, "db-0", &all, second.uid().as_deref()).await;
    assert_eq!(nics(&third, &all), before, "after a controller restart");
    for provider in all {
        recorded(cluster, client, &port("db-0", provider), &before[provider]).await;
        wired(
            cluster,
            &third,
            match provider {
                BLUE => "net1",
                RED => "net2",
                _ => "eth0",
            },
            &before[provider],
            if provider == "ovn" { 16 } else { 24 },
        );
    }
    controller
}

async fn vm_keeps_both_nics(cluster: &Cluster, client: &Client) {
    println!("case: a VM with two NICs keeps both across launcher pods and migrates both");
    let virt = VirtController::new(client, NS);
    virt.create_vm("vm1").await;
    virt.vms
        .patch(
            "vm1",
            &PatchParams::default(),
            &Patch::Merge(
                json!({ "spec": { "template": { "metadata": { "annotations": {
                    "k8s.v1.cni.cncf.io/networks": "blue",
                    "blue.multi.ovn.kubernetes.io/mac_address": "02:00:00:50:00:99",
                }}}}}),
            ),
        )
        .await
        .unwrap();
    let both = ["ovn", BLUE];
    let vmi = virt.start("vm1", Some(("vm1-a", "node1"))).await;
    let a = running_with(&virt.pods, "vm1-a", &both, None).await;
    let identity = nics(&a, &both);
    assert_eq!(identity[BLUE].mac, "02:00:00:50:00:99");
    for provider in both {
        recorded(cluster, client, &port("vm1", provider), &identity[provider]).await;
    }
    wired(cluster, &a, "net1", &identity[BLUE], 24);

    // A migration to node2: the target launcher pod holds the same two nics, and both ports
    // get requested-chassis for both nodes and activation-strategy, then the target alone.
    let migration = virt.migrate("vm1", "vm1-mig").await;
    virt.phase("vm1-mig", "Scheduling").await;
    virt.launcher(
        "vm1",
        &vmi,
        "vm1-b",
        Some(("vm1-mig", &migration)),
        Some("node2"),
    )
    .await;
    let b = running_with(&virt.pods, "vm1-b", &both, None).await;
    assert_eq!(
        nics(&b, &both),
        identity,
        "the target pod has the VM's nics"
    );
    let (source, target) = (
        node_chassis(cluster, "node1"),
        node_chassis(cluster, "node2"),
    );
    let dual = BTreeMap::from([
        ("activation-strategy".to_owned(), "rarp".to_owned()),
        ("requested-chassis".to_owned(), format!("{source},{target}")),
    ]);
    for provider in both {
        let name = port("vm1", provider);
        wait_for(&format!("{name} options {dual:?}"), async || {
            (lsp_options(cluster, &name) == dual).then_some(())
        })
        .await;
    }
    virt.migration_state("vm1", &migration, ("vm1-a", "vm1-b"), ("node1", "node2"))
        .await;
    virt.finish("vm1", "vm1-mig", true, "node2").await;
    let pinned = BTreeMap::from([("requested-chassis".to_owned(), target.clone())]);
    for provider in both {
        let name = port("vm1", provider);
        wait_for(&format!("{name} pinned to {target}"), async || {
            (lsp_options(cluster, &name) == pinned).then_some(())
        })
        .await;
    }

    // The source launcher pod goes; then the VM restarts in a new launcher pod: same nics.
    virt.delete_pod("vm1-a").await;
    virt.stop("vm1", "vm1-b").await;
    virt.start("vm1", Some(("vm1-c", "node1"))).await;
    let c = running_with(&virt.pods, "vm1-c", &both, None).await;
    assert_eq!(
        nics(&c, &both),
        identity,
        "a new launcher pod has the VM's nics"
    );
    for provider in both {
        recorded(cluster, client, &port("vm1", provider), &identity[provider]).await;
    }
    wired(cluster, &c, "net1", &identity[BLUE], 24);
}
