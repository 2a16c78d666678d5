//! Live migration with traffic on a three-node local cluster: the VM migrates between node1 and
//! node2 while a prober pod on node3 streams numbered UDP probes to it and it streams probes
//! back, one each way every 10 ms (`kind_e2e::vm`). Launcher pods are wired by portkeeper's CNI;
//! the test plays virt-controller (`kind_e2e::kubevirt`) and QEMU's switch-over.
//!
//! Cases, in order on one VM: a migration node1 → node2 loses probes only at the switch-over
//! and duplicates none, after which peers on both nodes reach the VM at its retained address; a
//! migration back whose target pod is removed before the switch-over loses no probe at all; a
//! second successful migration. The run ends with a consistency check of the VM's identity.

use std::path::PathBuf;

use k8s_openapi::api::core::v1::Pod;
use kind_e2e::Cluster;
use kind_e2e::dataplane::{Peers, assert_pings};
use kind_e2e::kubevirt::VirtController;
use kind_e2e::migration::{Ending, LiveVm, Mode, Outcome, address};
use kind_e2e::portkeeper::{
    Controller, annotation, controller_binary, ip_resource, nb_addresses, nbctl, port_names,
    prepare_cluster, run_on_cluster,
};
use kind_e2e::probe::Verdict;
use kind_e2e::vm::INTERVAL;
use kube::{Api, Client, ResourceExt};

const NS: &str = "traffic";
const CIDR: &str = "10.18.0.0/16";

#[test]
fn migration_dataplane() {
    let agent = PathBuf::from(env!("CARGO_BIN_EXE_node-agent"));
    run_on_cluster(3, agent, 1, cases);
}

async fn cases(cluster: &Cluster) {
    let client = prepare_cluster(cluster, NS, true).await;
    let _controller = Controller::start(&controller_binary(), cluster, CIDR, 0, &[]);
    Peers::start(cluster, &client, NS).await;
    let virt = VirtController::new(&client, NS);
    let prober = peer(&client, "node3").await;
    let mut vm = LiveVm::start(cluster, &virt, "vm", "node1", &prober, 7207).await;
    let retained = (
        annotation(vm.launcher(), "ip_address").map(str::to_owned),
        annotation(vm.launcher(), "mac_address").map(str::to_owned),
    );

    println!("case: migration node1 → node2 with probes both ways");
    let out = vm.migrate("node2", Mode::Options, Ending::Succeeded).await;
    only_the_switch_over_loses(&out);
    assert_eq!(vm.node(), "node2");
    for node in ["node1", "node2"] {
        let from = peer(&client, node).await;
        let to = address(vm.launcher()).to_string();
        assert_pings(
            cluster,
            &from,
            &to,
            "the migrated VM at its retained address",
        );
    }

    println!("case: migration node2 → node1 whose target goes before the switch-over");
    let out = vm.migrate("node1", Mode::Options, Ending::Failed).await;
    for (direction, v) in directions(&out) {
        assert_eq!(
            v.lost,
            vec![],
            "{direction}: a failed migration loses nothing"
        );
        assert_eq!(v.duplicates, 0, "{direction} duplicates");
    }
    assert_eq!(vm.node(), "node2");

    println!("case: migration node2 → node1");
    let out = vm.migrate("node1", Mode::Options, Ending::Succeeded).await;
    only_the_switch_over_loses(&out);

    println!("consistency: one identity for the VM");
    let launcher = vm.launcher().clone();
    assert_eq!(
        (
            annotation(&launcher, "ip_address").map(str::to_owned),
            annotation(&launcher, "mac_address").map(str::to_owned),
        ),
        retained,
        "the VM kept its IP and MAC"
    );
    one_identity(cluster, &client, &vm.port(), &launcher).await;
}

/// The peer pod on `node` (see [`Peers`]), as it is now.
async fn peer(client: &Client, node: &str) -> Pod {
    Api::<Pod>::namespaced(client.clone(), NS)
        .get(&format!("peer-{node}"))
        .await
        .expect("the peer pod")
}

fn directions(out: &Outcome) -> [(&'static str, &Verdict); 2] {
    [
        ("prober → VM", &out.judged.to_vm),
        ("VM → prober", &out.judged.to_prober),
    ]
}

/// Probes (10 ms each) the loss may start after the switch-over mark: the 50 ms gap goal.
/// Seen in CI at load 15: the loss began 3 probes after the mark.
const SWITCH_OVER_SLACK: u64 = 5;

/// Each way: no duplicate, and every lost probe is in the one run of losses at the switch-over.
fn only_the_switch_over_loses(out: &Outcome) {
    let mark = out.switch_over.expect("a switch-over");
    for ((direction, v), next) in directions(out)
        .into_iter()
        .zip([mark.to_vm, mark.to_prober])
    {
        println!(
            "  {direction}: {} probes, gap {:?} ({:?} lost), {} reordered",
            v.sent,
            v.gap(INTERVAL),
            v.lost,
            v.reordered
        );
        assert!(v.sent > 100, "{direction}: the probes ran ({})", v.sent);
        assert_eq!(v.duplicates, 0, "{direction} duplicates");
        assert_eq!(
            v.lost_apart_from(next.saturating_sub(1), SWITCH_OVER_SLACK),
            vec![],
            "{direction}: probes lost away from the switch-over (probe {next})"
        );
    }
}

/// The VM has one port, one IP resource and its address on one port only, all carrying the
/// launcher pod's annotations.
async fn one_identity(cluster: &Cluster, client: &Client, port: &str, launcher: &Pod) {
    let ip = annotation(launcher, "ip_address").expect("ip_address");
    let mac = annotation(launcher, "mac_address").expect("mac_address");
    let resource = ip_resource(client, port)
        .await
        .expect("the VM's IP resource");
    assert_eq!(resource["spec"]["ipAddress"], ip);
    assert_eq!(resource["spec"]["macAddress"], mac);
    assert_eq!(
        port_names(cluster, &format!("external_ids:pod=\"{NS}/vm\"")),
        port
    );
    assert_eq!(
        nbctl(cluster, &["lsp-get-addresses", port]),
        format!("{mac} {ip}")
    );
    let owners = nb_addresses(cluster).iter().filter(|a| *a == ip).count();
    assert_eq!(owners, 1, "{ip} on one port");
    assert_eq!(launcher.namespace().as_deref(), Some(NS));
}
