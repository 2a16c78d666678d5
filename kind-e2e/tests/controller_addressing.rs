//! The controller on the local cluster: each case is verified three ways, through the pod's
//! annotations, its IP resource and `ovn-nbctl`. One cluster and one controller process serve
//! all cases, which run in order; the controller is SIGKILLed and restarted where a case needs it.
//!
//! The controller binary is built with cargo (or taken from `PORTKEEPER_CONTROLLER_BIN`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kind_e2e::Cluster;
use kind_e2e::pods::SANDBOX_FAILURE_REASON;
use kind_e2e::portkeeper::{
    Controller, allocated, annotation, controller_binary, install_kubevirt, ip_resource, kubectl,
    kubectl_apply, kubeovn_resource, nb_addresses, nbctl, port_names, repo_root, run_on_cluster,
    wait_for, warnings,
};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};

const NS: &str = "addr";
const CIDR: &str = "10.16.0.0/16";

/// Pod annotations as (key without the `ovn.kubernetes.io/` prefix, value) pairs.
type Annotations<'a> = &'a [(&'a str, &'a str)];

fn pod(name: &str, annotations: Annotations) -> Pod {
    let annotations: BTreeMap<String, String> = annotations
        .iter()
        .map(|(k, v)| (format!("ovn.kubernetes.io/{k}"), v.to_string()))
        .collect();
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": name, "namespace": NS, "annotations": annotations },
        "spec": {
            "automountServiceAccountToken": false,
            "containers": [{ "name": "c", "image": "busybox" }],
        },
    }))
    .unwrap()
}

async fn create(pods: &Api<Pod>, p: Pod) {
    pods.create(&PostParams::default(), &p)
        .await
        .expect("create pod");
}

/// The three views of one allocated nic must agree.
async fn verify_three_ways(cluster: &Cluster, client: &Client, p: &Pod) -> (String, String) {
    let name = p.name_any();
    let port = format!("{name}.{NS}");
    let ip = annotation(p, "ip_address").expect("ip_address").to_owned();
    let mac = annotation(p, "mac_address")
        .expect("mac_address")
        .to_owned();
    assert_eq!(annotation(p, "cidr"), Some(CIDR));
    assert_eq!(annotation(p, "gateway"), Some("10.16.0.1"));
    assert_eq!(annotation(p, "logical_switch"), Some("ovn-default"));

    let resource = ip_resource(client, &port).await.expect("IP resource");
    assert_eq!(resource["spec"]["v4IpAddress"], json!(ip));
    assert_eq!(resource["spec"]["ipAddress"], json!(ip));
    assert_eq!(resource["spec"]["macAddress"], json!(mac));
    assert_eq!(resource["spec"]["podName"], json!(name));
    assert_eq!(resource["spec"]["namespace"], json!(NS));
    assert_eq!(resource["spec"]["subnet"], json!("ovn-default"));

    assert_eq!(
        nbctl(cluster, &["lsp-get-addresses", &port]),
        format!("{mac} {ip}")
    );
    let ids = nbctl(
        cluster,
        &["get", "Logical_Switch_Port", &port, "external_ids"],
    );
    for expected in [
        "vendor=portkeeper".to_owned(),
        format!("pod=\"{NS}/{name}\""),
        "ls=ovn-default".to_owned(),
    ] {
        assert!(
            ids.contains(&expected),
            "{port} external_ids {ids} lack {expected}"
        );
    }
    (ip, mac)
}

/// A rejected pod: the Warning event with `reason` naming every `needle`, and no side effect.
async fn rejected(cluster: &Cluster, client: &Client, name: &str, reason: &str, needles: &[&str]) {
    let (r, message) = wait_for(&format!("{reason} event on {name}"), async || {
        // The controller's Event; the node's sandbox failures (no allocation) come later.
        warnings(client, NS, name)
            .await
            .into_iter()
            .find(|(r, _)| r != SANDBOX_FAILURE_REASON)
    })
    .await;
    assert_eq!(r, reason, "{name}: {message}");
    for needle in needles {
        assert!(
            message.to_lowercase().contains(&needle.to_lowercase()),
            "{name}: {message:?} should name {needle}"
        );
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let p = pods.get(name).await.unwrap();
    assert_eq!(
        annotation(&p, "allocated"),
        None,
        "{name} must not be allocated"
    );
    let port = format!("{name}.{NS}");
    assert!(
        ip_resource(client, &port).await.is_none(),
        "{port} IP resource must not exist"
    );
    assert_eq!(
        port_names(cluster, &format!("name={port}")),
        "",
        "{port} must have no OVN port"
    );
}

/// Whether no row of the Northbound `table` is named `name`.
fn absent(cluster: &Cluster, table: &str, name: &str) -> bool {
    nbctl(
        cluster,
        &[
            "--bare",
            "--columns=name",
            "find",
            table,
            &format!("name={name}"),
        ],
    )
    .is_empty()
}

/// `subnet` was deleted while the pod `holder` has an address in it: the pod is told with a
/// `SubnetDeleted` Event and keeps its port while it lives; once it is deleted, its port, the
/// switch and the switch's router port leave OVN.
async fn held_subnet_leaves_after_its_pod(
    cluster: &Cluster,
    client: &Client,
    holder: &Pod,
    subnet: &str,
) {
    let name = holder.name_any();
    let ip = annotation(holder, "ip_address").unwrap();
    let (_, message) = wait_for(&format!("SubnetDeleted event on {name}"), async || {
        warnings(client, NS, &name)
            .await
            .into_iter()
            .find(|(reason, _)| reason == "SubnetDeleted")
    })
    .await;
    assert!(
        message.contains(subnet) && message.contains(ip),
        "{message}"
    );
    let port = format!("{name}.{NS}");
    assert!(
        !absent(cluster, "Logical_Switch", subnet),
        "{name} still uses {subnet}"
    );
    assert_eq!(
        nbctl(cluster, &["lsp-get-addresses", &port]),
        format!("{} {ip}", annotation(holder, "mac_address").unwrap()),
        "the pod keeps its port while it lives"
    );
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    pods.delete(&name, &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    let router_port = format!("ovn-cluster-{subnet}");
    wait_for(
        &format!("{subnet}'s port, switch and router port deleted"),
        async || {
            (absent(cluster, "Logical_Switch_Port", &port)
                && absent(cluster, "Logical_Switch", subnet)
                && absent(cluster, "Logical_Router_Port", &router_port))
            .then_some(())
        },
    )
    .await;
}

/// Waits until `status.<field>` of a Subnet or IPPool equals `want`.
async fn status_is(
    client: &Client,
    plural: &str,
    kind: &str,
    name: &str,
    field: &str,
    want: Value,
) {
    wait_for(
        &format!("{kind} {name} status.{field} = {want}"),
        async || {
            let r = kubeovn_resource(client, plural, kind, name).await?;
            let got = r["status"].get(field).cloned().unwrap_or(Value::Null);
            let same = got == want || (got.is_number() && got.as_f64() == want.as_f64());
            same.then_some(())
        },
    )
    .await
}

fn workload(kind: &str, name: &str, replicas: u32, pool: &str) -> String {
    let extra = if kind == "StatefulSet" {
        format!("  serviceName: {name}\n  podManagementPolicy: Parallel\n")
    } else {
        String::new()
    };
    format!(
        "apiVersion: apps/v1\nkind: {kind}\nmetadata:\n  name: {name}\n  namespace: {NS}\nspec:\n  replicas: {replicas}\n{extra}  selector:\n    matchLabels:\n      app: {name}\n  template:\n    metadata:\n      labels:\n        app: {name}\n      annotations:\n        ovn.kubernetes.io/ip_pool: \"{pool}\"\n    spec:\n      automountServiceAccountToken: false\n      containers:\n        - name: c\n          image: busybox\n"
    )
}

async fn pods_of(pods: &Api<Pod>, app: &str, count: usize) -> Vec<Pod> {
    wait_for(&format!("{count} allocated pods of {app}"), async || {
        let list = pods
            .list(&ListParams::default().labels(&format!("app={app}")))
            .await
            .ok()?;
        let ready: Vec<Pod> = list
            .items
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter(|p| annotation(p, "allocated") == Some("true"))
            .collect();
        (ready.len() == count).then_some(ready)
    })
    .await
}

#[test]
fn controller_addressing() {
    let agent = PathBuf::from(env!("CARGO_BIN_EXE_node-agent"));
    run_on_cluster(1, agent, 3, cases);
}

/// Returns the running controller, so the final consistency check sees its last writes.
async fn cases(cluster: &Cluster) -> Controller {
    let bin = controller_binary();
    // The generated CRDs must be structural and accepted by the API server as they are.
    let crds = repo_root().join("yamls/crds.yaml");
    kubectl(cluster, &["apply", "-f", crds.to_str().unwrap()]);
    let client = cluster.client().await.unwrap();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({ "metadata": { "name": NS } })).unwrap(),
        )
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let mut controller = Controller::start(&bin, cluster, CIDR, 0, &[]);

    println!("case: a pod without annotations gets the lowest free address");
    create(&pods, pod("plain", &[])).await;
    let p = allocated(&pods, "plain").await;
    let (ip, _) = verify_three_ways(cluster, &client, &p).await;
    assert_eq!(ip, "10.16.0.2");

    println!("case: static IP and MAC (MAC normalised)");
    create(
        &pods,
        pod(
            "pinned",
            &[
                ("ip_address", "10.16.0.50"),
                ("mac_address", "00:00:00:53:6B:B6"),
            ],
        ),
    )
    .await;
    let p = allocated(&pods, "pinned").await;
    assert_eq!(
        verify_three_ways(cluster, &client, &p).await,
        ("10.16.0.50".into(), "00:00:00:53:6b:b6".into())
    );

    println!("case: bad input gets an Event and changes nothing");
    let bad: &[(&str, Annotations, &str, &[&str])] = &[
        (
            "bad-ip",
            &[("ip_address", "10.16.0.300")],
            "InvalidAnnotation",
            &["10.16.0.300"],
        ),
        (
            "bad-mac",
            &[("mac_address", "zz:00:00:00:00:01")],
            "InvalidAnnotation",
            &["zz:00:00:00:00:01"],
        ),
        (
            "multicast-mac",
            &[("mac_address", "01:00:5e:00:00:01")],
            "InvalidAnnotation",
            &["multicast"],
        ),
        (
            "broadcast-mac",
            &[("mac_address", "ff:ff:ff:ff:ff:ff")],
            "InvalidAnnotation",
            &["broadcast"],
        ),
        (
            "zero-mac",
            &[("mac_address", "00:00:00:00:00:00")],
            "InvalidAnnotation",
            &["00:00:00:00:00:00"],
        ),
        (
            "bad-dual",
            &[("ip_address", "10.16.0.7,10.16.0.8")],
            "InvalidAnnotation",
            &["10.16.0.7,10.16.0.8"],
        ),
        (
            "bad-family",
            &[("ip_family", "ipv6")],
            "AcquireAddressFailed",
            &["ipv6", "ovn-default"],
        ),
        (
            "outside",
            &[("ip_address", "10.99.0.5")],
            "AcquireAddressFailed",
            &["10.99.0.5", "ovn-default"],
        ),
        (
            "gateway",
            &[("ip_address", "10.16.0.1")],
            "AddressConflict",
            &["10.16.0.1", "ovn-default"],
        ),
        (
            "taken-ip",
            &[("ip_address", "10.16.0.50")],
            "AddressConflict",
            &["10.16.0.50", "ovn-default", "pinned.addr"],
        ),
        (
            "taken-mac",
            &[("mac_address", "00:00:00:53:6b:b6")],
            "AddressConflict",
            &["00:00:00:53:6b:b6", "pinned.addr"],
        ),
        (
            "no-subnet",
            &[("logical_switch", "nope")],
            "AcquireAddressFailed",
            &["nope"],
        ),
        (
            "no-pool",
            &[("ip_pool", "nopool")],
            "AcquireAddressFailed",
            &["nopool"],
        ),
    ];
    for (name, annotations, _, _) in bad {
        create(&pods, pod(name, annotations)).await;
    }
    for (name, _, reason, needles) in bad {
        rejected(cluster, &client, name, reason, needles).await;
    }
    println!("case: a second mistake of the same kind gets an Event with its own message");
    pods.patch(
        "bad-mac",
        &PatchParams::default(),
        &Patch::Merge(json!({ "metadata": { "annotations": { "ovn.kubernetes.io/mac_address": "yy:00:00:00:00:02" } } })),
    )
    .await
    .unwrap();
    let seen = wait_for(
        "an InvalidAnnotation event naming yy:00:00:00:00:02",
        async || {
            let seen = warnings(&client, NS, "bad-mac").await;
            seen.iter()
                .any(|(reason, message)| {
                    reason == "InvalidAnnotation" && message.contains("yy:00:00:00:00:02")
                })
                .then_some(seen)
        },
    )
    .await;
    assert!(
        seen.iter()
            .any(|(_, message)| message.contains("zz:00:00:00:00:01")),
        "the first mistake's Event stays: {seen:?}"
    );

    println!("case: fixing the annotation lets the pod proceed");
    pods.patch(
        "bad-ip",
        &PatchParams::default(),
        &Patch::Merge(json!({ "metadata": { "annotations": { "ovn.kubernetes.io/ip_address": "10.16.0.60" } } })),
    )
    .await
    .unwrap();
    let p = allocated(&pods, "bad-ip").await;
    assert_eq!(
        verify_three_ways(cluster, &client, &p).await.0,
        "10.16.0.60"
    );

    println!("case: an address held by a port portkeeper did not make");
    nbctl(cluster, &["lsp-add", "ovn-default", "legacy"]);
    nbctl(
        cluster,
        &[
            "lsp-set-addresses",
            "legacy",
            "0a:00:00:00:00:99 10.16.0.70",
        ],
    );
    create(&pods, pod("on-legacy", &[("ip_address", "10.16.0.70")])).await;
    rejected(
        cluster,
        &client,
        "on-legacy",
        "AddressConflict",
        &["10.16.0.70", "legacy"],
    )
    .await;
    assert_eq!(
        nbctl(cluster, &["lsp-get-addresses", "legacy"]),
        "0a:00:00:00:00:99 10.16.0.70"
    );

    println!("case: release on deletion; the address comes back to a later pod");
    pods.delete("pinned", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    wait_for("pinned released", async || {
        (ip_resource(&client, "pinned.addr").await.is_none()
            && nbctl(
                cluster,
                &[
                    "--bare",
                    "--columns=name",
                    "find",
                    "Logical_Switch_Port",
                    "name=pinned.addr",
                ],
            )
            .is_empty())
        .then_some(())
    })
    .await;
    pods.delete("taken-ip", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    create(&pods, pod("taken-ip-2", &[("ip_address", "10.16.0.50")])).await;
    let p = allocated(&pods, "taken-ip-2").await;
    assert_eq!(
        verify_three_ways(cluster, &client, &p).await.0,
        "10.16.0.50"
    );

    println!("case: an ip_pool list on pods: first free entry, then too short for a third pod");
    create(&pods, pod("list-a", &[("ip_pool", "10.16.1.1,10.16.1.2")])).await;
    let a = allocated(&pods, "list-a").await;
    assert_eq!(verify_three_ways(cluster, &client, &a).await.0, "10.16.1.1");
    create(&pods, pod("list-b", &[("ip_pool", "10.16.1.1,10.16.1.2")])).await;
    let b = allocated(&pods, "list-b").await;
    assert_eq!(verify_three_ways(cluster, &client, &b).await.0, "10.16.1.2");
    create(&pods, pod("list-c", &[("ip_pool", "10.16.1.1,10.16.1.2")])).await;
    rejected(
        cluster,
        &client,
        "list-c",
        "AcquireAddressFailed",
        &["NoAvailableAddress", "ovn-default"],
    )
    .await;
    pods.delete("list-a", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    let c = allocated(&pods, "list-c").await;
    assert_eq!(verify_three_ways(cluster, &client, &c).await.0, "10.16.1.1");

    println!("case: a StatefulSet with a 3-entry ip_pool list: pod i takes entry i, and keeps it");
    kubectl_apply(
        cluster,
        &workload("StatefulSet", "sts", 3, "10.16.2.10,10.16.2.11,10.16.2.12"),
    );
    for p in pods_of(&pods, "sts", 3).await {
        let (ip, _) = verify_three_ways(cluster, &client, &p).await;
        let ordinal: u32 = p.name_any().rsplit('-').next().unwrap().parse().unwrap();
        assert_eq!(ip, format!("10.16.2.{}", 10 + ordinal), "{}", p.name_any());
    }
    pods.delete("sts-2", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    let again = wait_for("sts-2 recreated and allocated", async || {
        let p = pods.get_opt("sts-2").await.ok()??;
        (p.metadata.deletion_timestamp.is_none() && annotation(&p, "allocated") == Some("true"))
            .then_some(p)
    })
    .await;
    assert_eq!(
        verify_three_ways(cluster, &client, &again).await.0,
        "10.16.2.12"
    );

    println!(
        "case: a Deployment on a named IPPool: lowest pool addresses first, pool status counts and ranges"
    );
    kubectl_apply(
        cluster,
        "apiVersion: kubeovn.io/v1\nkind: IPPool\nmetadata:\n  name: pool1\nspec:\n  subnet: ovn-default\n  ips:\n    - 10.16.3.1..10.16.3.5\n",
    );
    status_is(
        &client,
        "ippools",
        "IPPool",
        "pool1",
        "v4AvailableIPs",
        json!(5.0),
    )
    .await;
    kubectl_apply(cluster, &workload("Deployment", "deploy", 3, "pool1"));
    let mut ips: Vec<String> = Vec::new();
    for p in pods_of(&pods, "deploy", 3).await {
        ips.push(verify_three_ways(cluster, &client, &p).await.0);
    }
    ips.sort();
    assert_eq!(ips, ["10.16.3.1", "10.16.3.2", "10.16.3.3"]);
    status_is(
        &client,
        "ippools",
        "IPPool",
        "pool1",
        "v4UsingIPs",
        json!(3.0),
    )
    .await;
    status_is(
        &client,
        "ippools",
        "IPPool",
        "pool1",
        "v4UsingIPRange",
        json!("10.16.3.1-10.16.3.3"),
    )
    .await;
    status_is(
        &client,
        "ippools",
        "IPPool",
        "pool1",
        "v4AvailableIPRange",
        json!("10.16.3.4-10.16.3.5"),
    )
    .await;

    println!("case: subnet status ranges, lowest-first and delayed reuse");
    kubectl_apply(
        cluster,
        "apiVersion: kubeovn.io/v1\nkind: Subnet\nmetadata:\n  name: reuse\nspec:\n  cidrBlock: 10.17.0.0/24\n",
    );
    status_is(
        &client,
        "subnets",
        "Subnet",
        "reuse",
        "v4availableIPs",
        json!(253.0),
    )
    .await;
    wait_for(
        "reuse's spec defaults filled in as Kube-OVN does",
        async || {
            let r = kubeovn_resource(&client, "subnets", "Subnet", "reuse").await?;
            (r["spec"]["gateway"] == json!("10.17.0.1")
                && r["spec"]["excludeIps"] == json!(["10.17.0.1"])
                && r["spec"]["protocol"] == json!("IPv4"))
            .then_some(())
        },
    )
    .await;
    let first: Vec<String> = (0..5).map(|i| format!("reuse-{i}")).collect();
    for name in &first {
        create(&pods, pod(name, &[("logical_switch", "reuse")])).await;
    }
    let mut got = Vec::new();
    for name in &first {
        got.push(
            annotation(&allocated(&pods, name).await, "ip_address")
                .unwrap()
                .to_owned(),
        );
    }
    got.sort();
    assert_eq!(
        got,
        [
            "10.17.0.2",
            "10.17.0.3",
            "10.17.0.4",
            "10.17.0.5",
            "10.17.0.6"
        ]
    );
    status_is(
        &client,
        "subnets",
        "Subnet",
        "reuse",
        "v4usingIPrange",
        json!("10.17.0.2-10.17.0.6"),
    )
    .await;
    for name in &first {
        pods.delete(name, &DeleteParams::default().grace_period(0))
            .await
            .unwrap();
    }
    status_is(
        &client,
        "subnets",
        "Subnet",
        "reuse",
        "v4usingIPs",
        json!(0.0),
    )
    .await;
    for i in 5..10 {
        create(
            &pods,
            pod(&format!("reuse-{i}"), &[("logical_switch", "reuse")]),
        )
        .await;
    }
    let mut got = Vec::new();
    for i in 5..10 {
        got.push(
            annotation(&allocated(&pods, &format!("reuse-{i}")).await, "ip_address")
                .unwrap()
                .to_owned(),
        );
    }
    got.sort();
    assert_eq!(
        got,
        [
            "10.17.0.10",
            "10.17.0.11",
            "10.17.0.7",
            "10.17.0.8",
            "10.17.0.9"
        ],
        "released addresses are reused last"
    );

    println!("case: dual stack: both families, one family by ip_family, a static dual pair");
    kubectl_apply(
        cluster,
        "apiVersion: kubeovn.io/v1\nkind: Subnet\nmetadata:\n  name: dual\nspec:\n  cidrBlock: 10.18.0.0/24,fd00:10:18::/64\n",
    );
    status_is(
        &client,
        "subnets",
        "Subnet",
        "dual",
        "v4availableIPs",
        json!(253.0),
    )
    .await;
    let dual_cases: [(&str, Annotations, &str, &str); 4] = [
        ("dual-both", &[], "10.18.0.2", "fd00:10:18::2"),
        ("dual-v4", &[("ip_family", "ipv4")], "10.18.0.3", ""),
        ("dual-v6", &[("ip_family", "ipv6")], "", "fd00:10:18::3"),
        (
            "dual-static",
            &[("ip_address", "10.18.0.20,fd00:10:18::20")],
            "10.18.0.20",
            "fd00:10:18::20",
        ),
    ];
    for (name, extra, v4, v6) in dual_cases {
        let mut annotations = vec![("logical_switch", "dual")];
        annotations.extend_from_slice(extra);
        create(&pods, pod(name, &annotations)).await;
        let p = allocated(&pods, name).await;
        let joined = [v4, v6]
            .into_iter()
            .filter(|a| !a.is_empty())
            .collect::<Vec<_>>()
            .join(",");
        assert_eq!(
            annotation(&p, "ip_address"),
            Some(joined.as_str()),
            "{name}"
        );
        assert_eq!(annotation(&p, "cidr"), Some("10.18.0.0/24,fd00:10:18::/64"));
        assert_eq!(annotation(&p, "gateway"), Some("10.18.0.1,fd00:10:18::1"));
        let port = format!("{name}.{NS}");
        let r = ip_resource(&client, &port).await.expect("IP resource");
        assert_eq!(
            r["spec"]["v4IpAddress"].as_str().unwrap_or(""),
            v4,
            "{name}"
        );
        assert_eq!(
            r["spec"]["v6IpAddress"].as_str().unwrap_or(""),
            v6,
            "{name}"
        );
        let mac = annotation(&p, "mac_address").unwrap();
        assert_eq!(
            nbctl(cluster, &["lsp-get-addresses", &port]),
            format!("{mac} {}", joined.replace(',', " ")),
            "{name}"
        );
        assert!(nbctl(cluster, &["lsp-get-ls", &port]).ends_with("(dual)"));
    }
    create(
        &pods,
        pod(
            "dual-bad",
            &[
                ("logical_switch", "dual"),
                ("ip_address", "10.18.0.21;fd00:10:18::21"),
            ],
        ),
    )
    .await;
    rejected(
        cluster,
        &client,
        "dual-bad",
        "InvalidAnnotation",
        &["10.18.0.21;fd00:10:18::21"],
    )
    .await;

    println!("case: a deleted Subnet stays in OVN while a pod holds it, then leaves");
    kubectl_apply(
        cluster,
        "apiVersion: kubeovn.io/v1\nkind: Subnet\nmetadata:\n  name: doomed\nspec:\n  cidrBlock: 10.21.0.0/24\n",
    );
    status_is(
        &client,
        "subnets",
        "Subnet",
        "doomed",
        "v4availableIPs",
        json!(253.0),
    )
    .await;
    create(&pods, pod("doomed-pod", &[("logical_switch", "doomed")])).await;
    let p = allocated(&pods, "doomed-pod").await;
    assert_eq!(annotation(&p, "ip_address"), Some("10.21.0.2"));
    kubectl(cluster, &["delete", "subnet", "doomed"]);
    held_subnet_leaves_after_its_pod(cluster, &client, &p, "doomed").await;

    println!("case: every example manifest in yamls/examples is allocated");
    // The VM example needs KubeVirt's kinds; static-ip goes first, as its address is in the
    // pool-list example's pool.
    install_kubevirt(cluster, &client).await;
    let examples = repo_root().join("yamls/examples");
    kubectl(
        cluster,
        &[
            "apply",
            "-f",
            examples.join("ip_address.yaml").to_str().unwrap(),
        ],
    );
    let default_pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    allocated(&default_pods, "static-ip").await;
    kubectl(cluster, &["apply", "-f", examples.to_str().unwrap()]);
    for (name, ip) in [
        ("static-ip", Some("10.16.0.15")),
        ("static-mac", None),
        ("on-net1", None),
        ("dual-stack", None),
        ("v6-only", None),
        ("secured", None),
    ] {
        let p = wait_for(&format!("example {name} allocated"), async || {
            let p = default_pods.get_opt(name).await.ok()??;
            (annotation(&p, "allocated") == Some("true")).then_some(p)
        })
        .await;
        if let Some(ip) = ip {
            assert_eq!(annotation(&p, "ip_address"), Some(ip));
        }
    }
    assert_eq!(
        nbctl(cluster, &["lsp-get-port-security", "secured.default"]),
        nbctl(cluster, &["lsp-get-addresses", "secured.default"])
    );
    let team: Api<Pod> = Api::namespaced(client.clone(), "team-a");
    let bound = wait_for("example bound allocated", async || {
        let p = team.get_opt("bound").await.ok()??;
        (annotation(&p, "allocated") == Some("true")).then_some(p)
    })
    .await;
    assert_eq!(annotation(&bound, "logical_switch"), Some("team-a"));
    let namespaces_api: Api<Namespace> = Api::all(client.clone());
    wait_for("namespace team-a annotated with its subnet", async || {
        let ns = namespaces_api.get("team-a").await.ok()?;
        let a = ns.annotations();
        (a.get("ovn.kubernetes.io/logical_switch")
            .map(String::as_str)
            == Some("team-a")
            && a.get("ovn.kubernetes.io/cidr").map(String::as_str) == Some("10.19.0.0/24"))
        .then_some(())
    })
    .await;
    for (app, count) in [("db", 2), ("web", 3), ("pool-list", 2)] {
        let ips = wait_for(&format!("example {app} allocated"), async || {
            let list = default_pods
                .list(&ListParams::default().labels(&format!("app={app}")))
                .await
                .ok()?;
            let mut ips: Vec<String> = list
                .items
                .iter()
                .filter(|p| annotation(p, "allocated") == Some("true"))
                .filter_map(|p| annotation(p, "ip_address").map(str::to_owned))
                .collect();
            ips.sort();
            (ips.len() == count).then_some(ips)
        })
        .await;
        if app == "pool-list" {
            assert_eq!(
                ips,
                ["10.16.0.16", "10.16.0.17"],
                "static-ip holds 10.16.0.15"
            );
        }
    }
    println!(
        "case: a static pod deleted and its address re-requested while the controller is down (#4304)"
    );
    create(&pods, pod("old", &[("ip_address", "10.16.0.80")])).await;
    allocated(&pods, "old").await;
    // Two Subnets deleted while the controller is down: one empty, one a pod still uses.
    for (subnet, cidr) in [("emptied", "10.22.0.0/24"), ("left", "10.23.0.0/24")] {
        kubectl_apply(
            cluster,
            &format!(
                "apiVersion: kubeovn.io/v1\nkind: Subnet\nmetadata:\n  name: {subnet}\nspec:\n  cidrBlock: {cidr}\n"
            ),
        );
        status_is(
            &client,
            "subnets",
            "Subnet",
            subnet,
            "v4availableIPs",
            json!(253.0),
        )
        .await;
    }
    create(&pods, pod("left-pod", &[("logical_switch", "left")])).await;
    let left_pod = allocated(&pods, "left-pod").await;
    assert_eq!(annotation(&left_pod, "ip_address"), Some("10.23.0.2"));
    controller.kill();
    kubectl(cluster, &["delete", "subnet", "emptied", "left"]);
    pods.delete("old", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    wait_for("old gone", async || {
        pods.get_opt("old").await.unwrap().is_none().then_some(())
    })
    .await;
    create(&pods, pod("new", &[("ip_address", "10.16.0.80")])).await;
    create(&pods, pod("dynamic-while-down", &[])).await;
    // Two pods annotated by hand as holding one address: the rebuild keeps one of them.
    for (name, mac) in [
        ("dup-a", "0a:00:00:00:90:0a"),
        ("dup-b", "0a:00:00:00:90:0b"),
    ] {
        let annotations: Annotations = &[
            ("allocated", "true"),
            ("ip_address", "10.16.0.90"),
            ("mac_address", mac),
            ("logical_switch", "ovn-default"),
            ("cidr", CIDR),
            ("gateway", "10.16.0.1"),
        ];
        create(&pods, pod(name, annotations)).await;
    }
    controller = Controller::start(&bin, cluster, CIDR, 1, &["--gc-interval", "2"]);
    let p = allocated(&pods, "new").await;
    assert_eq!(
        verify_three_ways(cluster, &client, &p).await.0,
        "10.16.0.80"
    );
    let d = allocated(&pods, "dynamic-while-down").await;
    assert_ne!(
        verify_three_ways(cluster, &client, &d).await.0,
        "10.16.0.80"
    );
    assert!(
        ip_resource(&client, "old.addr").await.is_none(),
        "the old pod's IP resource is collected"
    );
    let addresses = nb_addresses(cluster);
    assert_eq!(
        addresses.iter().filter(|a| *a == "10.16.0.80").count(),
        1,
        "{addresses:?}"
    );

    println!(
        "case: Subnets deleted while the controller was down leave OVN once nothing holds them"
    );
    wait_for(
        "the emptied Subnet's switch and router port deleted",
        async || {
            (absent(cluster, "Logical_Switch", "emptied")
                && absent(cluster, "Logical_Router_Port", "ovn-cluster-emptied"))
            .then_some(())
        },
    )
    .await;
    held_subnet_leaves_after_its_pod(cluster, &client, &left_pod, "left").await;

    println!("case: two holders of one address found at start: a Warning Event on each pod");
    for name in ["dup-a", "dup-b"] {
        let (_, message) = wait_for(&format!("rebuild conflict event on {name}"), async || {
            warnings(&client, NS, name)
                .await
                .into_iter()
                .find(|(reason, m)| reason == "AddressConflict" && m.contains("at start"))
        })
        .await;
        for needle in ["10.16.0.90", "ovn-default", "dup-a.addr", "dup-b.addr"] {
            assert!(message.contains(needle), "{name}: {message}");
        }
    }
    // The kept one gets its port; the other asked for that address statically and is refused.
    let winner = wait_for("one dup pod's port in NB", async || {
        ["dup-a", "dup-b"].into_iter().find(|name| {
            cluster
                .ovn_nbctl(&["lsp-get-addresses", &format!("{name}.{NS}")])
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("10.16.0.90"))
        })
    })
    .await;
    let p = pods.get(winner).await.unwrap();
    assert_eq!(
        verify_three_ways(cluster, &client, &p).await.0,
        "10.16.0.90"
    );
    let addresses = nb_addresses(cluster);
    assert_eq!(
        addresses.iter().filter(|a| *a == "10.16.0.90").count(),
        1,
        "{addresses:?}"
    );
    for name in ["dup-a", "dup-b"] {
        pods.delete(name, &DeleteParams::default().grace_period(0))
            .await
            .unwrap();
    }

    println!("case: a port deleted behind portkeeper's back comes back with the same addresses");
    let before = allocated(&pods, "plain").await;
    let (ip, mac) = verify_three_ways(cluster, &client, &before).await;
    nbctl(cluster, &["lsp-del", "plain.addr"]);
    wait_for("plain.addr restored", async || {
        let out = cluster
            .ovn_nbctl(&["lsp-get-addresses", "plain.addr"])
            .ok()?;
        (String::from_utf8_lossy(&out.stdout).trim() == format!("{mac} {ip}")).then_some(())
    })
    .await;
    let after = allocated(&pods, "plain").await;
    assert_eq!(verify_three_ways(cluster, &client, &after).await, (ip, mac));
    let restored = wait_for("PortRestored event on plain", async || {
        kind_e2e::portkeeper::events(&client, NS, "plain")
            .await
            .into_iter()
            .find(|(_, reason, _)| reason == "PortRestored")
    })
    .await;
    assert!(restored.2.contains("plain.addr"), "{restored:?}");

    println!("case: SIGKILL and restart during a burst of 200 pods");
    for i in 0..200 {
        create(&pods, pod(&format!("burst-{i}"), &[])).await;
        if i == 60 {
            controller.kill();
            controller = Controller::start(&bin, cluster, CIDR, 2, &[]);
        }
    }
    for i in 0..200 {
        let p = allocated(&pods, &format!("burst-{i}")).await;
        if i % 20 == 0 {
            verify_three_ways(cluster, &client, &p).await;
        }
    }
    let addresses = nb_addresses(cluster);
    let unique: BTreeSet<&String> = addresses.iter().collect();
    assert_eq!(
        unique.len(),
        addresses.len(),
        "an address appears twice in NB: {addresses:?}"
    );
    let all = pods.list(&ListParams::default()).await.unwrap();
    let mut annotated = BTreeSet::new();
    for p in all
        .items
        .iter()
        .filter(|p| annotation(p, "allocated") == Some("true"))
    {
        assert!(
            annotated.insert(annotation(p, "ip_address").unwrap().to_owned()),
            "duplicate annotation"
        );
    }

    controller
}
