//! OVN DHCP for VMs and pods on a three-node local cluster, asked from inside as a guest asks:
//! busybox's `udhcpc` in the launcher pod's namespace (`kind_e2e::dhcp`). The VM keeps its
//! address, so DHCP must offer exactly that address, with the Subnet's gateway, DNS servers and
//! MTU, before and after a live migration (played with traffic, `kind_e2e::migration`), a
//! controller restart and a VM restart. A pod's own `dhcp-v4-options` replace the Subnet's for
//! its port; a bad one is an Event. Turning DHCP off and deleting the Subnet remove
//! portkeeper's `DHCP_Options` rows.

use std::path::PathBuf;

use k8s_openapi::api::core::v1::Pod;
use kind_e2e::Cluster;
use kind_e2e::dataplane::{Peers, wait_running};
use kind_e2e::dhcp::{Lease, request_lease};
use kind_e2e::kubevirt::VirtController;
use kind_e2e::migration::{Ending, LiveVm, Mode};
use kind_e2e::portkeeper::{
    Controller, allocated, annotation, controller_binary, kubectl, kubectl_apply, kubeovn_resource,
    nbctl, prepare_cluster, run_on_cluster, wait_for, warnings,
};
use kind_e2e::vm::pod_netns;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

const NS: &str = "dhcp";
const CIDR: &str = "10.20.0.0/16";
const SUBNET: &str = "vmnet";
const BLOCK: &str = "10.21.0.0/24";
const GATEWAY: &str = "10.21.0.1";
const DNS: &str = "10.96.0.10 10.96.0.11";

#[test]
fn dhcp() {
    let agent = PathBuf::from(env!("CARGO_BIN_EXE_node-agent"));
    run_on_cluster(3, agent, 2, cases);
}

async fn cases(cluster: &Cluster) -> Controller {
    let bin = controller_binary();
    let client = prepare_cluster(cluster, NS, true).await;
    let controller = Controller::start(&bin, cluster, CIDR, 0, &[]);
    kubectl_apply(
        cluster,
        &format!(
            "apiVersion: kubeovn.io/v1\nkind: Subnet\nmetadata:\n  name: {SUBNET}\nspec:\n  \
             cidrBlock: {BLOCK}\n  namespaces: [{NS}]\n  enableDHCP: true\n  \
             dhcpV4Options: \"dns_server={{10.96.0.10;10.96.0.11}},lease_time=7200\"\n"
        ),
    );
    let row = subnet_row(&client, cluster).await;
    let server_mac = nbctl(
        cluster,
        &["get", "DHCP_Options", &row, "options:server_mac"],
    );
    Peers::start(cluster, &client, NS).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let prober = pods.get("peer-node3").await.unwrap();
    let virt = VirtController::new(&client, NS);

    println!("case: a VM is offered its address, gateway, DNS servers and MTU");
    let mut vm = LiveVm::start(cluster, &virt, "vm", "node1", &prober, 7209).await;
    let ip = annotation(vm.launcher(), "ip_address").unwrap().to_owned();
    assert!(ip.starts_with("10.21.0."), "the VM is on {SUBNET}: {ip}");
    offered(cluster, vm.launcher(), &ip, DNS, "7200");
    assert_eq!(
        nbctl(cluster, &["lsp-get-dhcpv4-options", &vm.port()]),
        format!("{row} ({BLOCK})")
    );

    println!("case: the controller restarts; the row and its server MAC stay");
    controller.kill();
    let controller = Controller::start(&bin, cluster, CIDR, 1, &[]);
    assert_eq!(subnet_row(&client, cluster).await, row);
    assert_eq!(
        nbctl(
            cluster,
            &["get", "DHCP_Options", &row, "options:server_mac"]
        ),
        server_mac
    );
    offered(cluster, vm.launcher(), &ip, DNS, "7200");

    println!("case: after a live migration node1 → node2 the target is offered the same");
    let out = vm.migrate("node2", Mode::Options, Ending::Succeeded).await;
    assert_eq!(out.judged.to_vm.duplicates, 0);
    offered(cluster, vm.launcher(), &ip, DNS, "7200");

    println!("case: after a VM restart the new launcher pod is offered the same");
    let launcher = vm.launcher().name_any();
    drop(vm);
    virt.stop("vm", &launcher).await;
    virt.start("vm", Some(("vm-restarted", "node1"))).await;
    let restarted = wait_running(&pods, "vm-restarted", None).await;
    assert_eq!(annotation(&restarted, "ip_address"), Some(ip.as_str()));
    offered(cluster, &restarted, &ip, DNS, "7200");

    println!("case: a pod's own DHCP options replace the Subnet's for its port");
    let own = plain_pod(&pods, "own-options", "dns_server=10.0.0.53,lease_time=600").await;
    let own_ip = annotation(&own, "ip_address").unwrap().to_owned();
    offered(cluster, &own, &own_ip, "10.0.0.53", "600");
    let own_rows = nbctl(
        cluster,
        &[
            "--bare",
            "--columns=_uuid",
            "find",
            "DHCP_Options",
            "external_ids:port=own-options.dhcp",
        ],
    );
    assert_eq!(own_rows.lines().count(), 1, "one row of the port's own");

    println!("case: a bad DHCP option is an Event naming it; the pod keeps its address");
    let bad = plain_pod(&pods, "bad-options", "leasetime=600").await;
    assert!(annotation(&bad, "ip_address").is_some());
    let events = wait_for("InvalidAnnotation on bad-options", async || {
        let found = warnings(&client, NS, "bad-options").await;
        found
            .into_iter()
            .find(|(reason, _)| reason == "InvalidAnnotation")
    })
    .await;
    assert!(events.1.contains("\"leasetime\""), "{events:?}");
    assert_eq!(
        nbctl(cluster, &["lsp-get-dhcpv4-options", "bad-options.dhcp"]),
        "",
        "the port's DHCP stays as it was: none"
    );

    println!("case: a bad Subnet option is its Ready condition naming it; the row stays as it was");
    let subnets = kubeovn_api(&client);
    let options = |text: &str| Patch::Merge(json!({ "spec": { "dhcpV4Options": text } }));
    let before = nbctl(cluster, &["get", "DHCP_Options", &row, "options"]);
    subnets
        .patch(SUBNET, &PatchParams::default(), &options("leasetime=60"))
        .await
        .unwrap();
    let message = wait_for(
        "the Subnet's Ready condition naming the option",
        async || {
            let subnet = kubeovn_resource(&client, "subnets", "Subnet", SUBNET).await?;
            let ready = subnet["status"]["conditions"]
                .as_array()?
                .iter()
                .find(|c| c["type"] == "Ready" && c["status"] == "False")?
                .clone();
            ready["message"].as_str().map(str::to_owned)
        },
    )
    .await;
    assert!(message.contains("\"leasetime\""), "{message}");
    assert_eq!(
        nbctl(cluster, &["get", "DHCP_Options", &row, "options"]),
        before
    );
    let subnet = kubeovn_resource(&client, "subnets", "Subnet", SUBNET)
        .await
        .unwrap();
    assert_eq!(subnet["status"]["dhcpV4OptionsUUID"], row.as_str());
    offered(cluster, &own, &own_ip, "10.0.0.53", "600");
    subnets
        .patch(
            SUBNET,
            &PatchParams::default(),
            &options("dns_server={10.96.0.10;10.96.0.11},lease_time=7200"),
        )
        .await
        .unwrap();
    wait_for("the Subnet Ready again", async || {
        let subnet = kubeovn_resource(&client, "subnets", "Subnet", SUBNET).await?;
        subnet["status"]["conditions"]
            .as_array()?
            .iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
            .then_some(())
    })
    .await;

    println!("case: DHCP off removes the Subnet's row; the pod's own stays");
    subnets
        .patch(
            SUBNET,
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "enableDHCP": false } })),
        )
        .await
        .unwrap();
    wait_for("the Subnet's DHCP row gone", async || {
        rows(cluster, &format!("external_ids:ls={SUBNET}"))
            .eq(&own_rows)
            .then_some(())
    })
    .await;
    assert_eq!(nbctl(cluster, &["lsp-get-dhcpv4-options", "vm.dhcp"]), "");
    offered(cluster, &own, &own_ip, "10.0.0.53", "600");

    println!("case: the Subnet deleted with its pods takes every row with it");
    virt.stop("vm", "vm-restarted").await;
    for name in [
        "own-options",
        "bad-options",
        "peer-node1",
        "peer-node2",
        "peer-node3",
    ] {
        pods.delete(name, &DeleteParams::default()).await.unwrap();
    }
    let vms = kind_e2e::portkeeper::kubevirt_api(&client, NS, "VirtualMachine");
    vms.delete("vm", &DeleteParams::default()).await.unwrap();
    kubectl(cluster, &["delete", "subnet", SUBNET]);
    wait_for("no DHCP_Options row of portkeeper left", async || {
        rows(cluster, "external_ids:vendor=portkeeper")
            .is_empty()
            .then_some(())
    })
    .await;
    controller
}

/// The UUIDs of the `DHCP_Options` rows matching an `ovn-nbctl find` condition, one a line.
fn rows(cluster: &Cluster, condition: &str) -> String {
    nbctl(
        cluster,
        &[
            "--bare",
            "--columns=_uuid",
            "find",
            "DHCP_Options",
            condition,
        ],
    )
}

fn kubeovn_api(client: &Client) -> Api<kube::api::DynamicObject> {
    Api::all_with(
        client.clone(),
        &kube::api::ApiResource {
            group: "kubeovn.io".into(),
            version: "v1".into(),
            api_version: "kubeovn.io/v1".into(),
            kind: "Subnet".into(),
            plural: "subnets".into(),
        },
    )
}

/// Waits until the Subnet's one IPv4 row exists and its status names it; returns its UUID.
async fn subnet_row(client: &Client, cluster: &Cluster) -> String {
    wait_for("the Subnet's DHCP row, named in its status", async || {
        let row = rows(cluster, &format!("external_ids:ls={SUBNET}"));
        let subnet = kubeovn_resource(client, "subnets", "Subnet", SUBNET).await?;
        let status = subnet["status"]["dhcpV4OptionsUUID"].as_str()?.to_owned();
        (row.lines().count() == 1 && row == status).then_some(row)
    })
    .await
}

/// A pod on node1 in the namespace, with `dhcp-v4-options` set to `options`, allocated.
async fn plain_pod(pods: &Api<Pod>, name: &str, options: &str) -> Pod {
    let pod = serde_json::from_value(json!({
        "metadata": {
            "name": name,
            "annotations": { "ovn.kubernetes.io/dhcp-v4-options": options },
        },
        "spec": {
            "nodeName": "node1",
            "terminationGracePeriodSeconds": 0,
            "automountServiceAccountToken": false,
            "containers": [{ "name": "c", "image": "busybox" }],
        },
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    allocated(pods, name).await;
    wait_running(pods, name, None).await
}

/// Asks for a lease from inside `pod`'s namespace and checks it is exactly `ip` with the
/// Subnet's gateway and MTU and the expected DNS servers and lease time.
fn offered(cluster: &Cluster, pod: &Pod, ip: &str, dns: &str, lease: &str) {
    let netns = pod_netns(cluster.netns_prefix(), &pod.uid().unwrap());
    let got = request_lease(&netns).unwrap_or_else(|e| panic!("{}: {e}", pod.name_any()));
    assert_eq!(
        got,
        Lease {
            ip: ip.to_owned(),
            subnet: "255.255.255.0".into(),
            router: GATEWAY.into(),
            dns: dns.into(),
            mtu: "1400".into(),
            lease: lease.into(),
        },
        "the lease offered to {}",
        pod.name_any()
    );
}
