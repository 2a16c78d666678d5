//! Two chassis on one machine with the userspace datapath: each node namespace runs its own
//! ovs-vswitchd, and the nodes reach each other over a veth underlay whose addresses sit on a netdev
//! `br-phy` bridge, as OVS's userspace tunnelling requires. The daemon of each node wires one pod;
//! both ports bind on their own chassis and the pods ping each other and talk TCP through a Geneve
//! tunnel. Needs root; fails when OVN cannot start (`PORTKEEPER_ALLOW_SKIP=1` skips instead).

mod support;

use portkeeper_cni::cni::{Command, PodRef};
use portkeeper_cni::daemon::allocation::Allocation;
use portkeeper_cni::daemon::netdev::VethNames;
use portkeeper_cni::daemon::ovs::Ovs;
use portkeeper_cni::daemon::{Daemon, Settings};
use portkeeper_cni::protocol::{DaemonRequest, DaemonResponse};
use std::time::Duration;
use support::{ChassisOptions, FixedAllocations, Ovn, TestNetns, in_netns, one_ovn_at_a_time, run};

/// Runs one request through a daemon of the node whose namespace is `node`, attached to `remote`.
fn on_node(
    node: &str,
    remote: String,
    allocations: FixedAllocations,
    request: DaemonRequest,
) -> DaemonResponse {
    in_netns(node, move || async move {
        let ovs = Ovs::connect(&remote, "br-int", Duration::from_secs(10), None)
            .await
            .expect("connect to OVS");
        let settings = Settings {
            default_mtu: 1400,
            allocation_timeout: Duration::from_secs(1),
            install_timeout: Duration::from_secs(30),
        };
        Daemon::new(allocations, ovs, settings, None)
            .expect("daemon")
            .handle(request)
            .await
    })
}

fn request(command: Command, container: &str, pod_ns: &TestNetns, pod: &str) -> DaemonRequest {
    DaemonRequest {
        command,
        container_id: container.into(),
        netns: Some(pod_ns.path()),
        ifname: "eth0".into(),
        pod: Some(PodRef {
            namespace: "default".into(),
            name: pod.into(),
            uid: None,
        }),
        mtu: None,
        provider: "ovn".into(),
    }
}

#[test]
fn pods_on_two_chassis_bind_locally_and_ping_through_geneve() {
    if !support::prerequisites_met() {
        return;
    }
    let _one = one_ovn_at_a_time();
    let (node1, node2) = (TestNetns::new(), TestNetns::new());
    run(
        "ip",
        &[
            "link",
            "add",
            "pku1",
            "netns",
            &node1.name,
            "type",
            "veth",
            "peer",
            "name",
            "pku2",
            "netns",
            &node2.name,
        ],
    );
    let mut ovn = Ovn::central();
    ovn.add_chassis(
        "ch1",
        ChassisOptions {
            netns: Some(&node1.name),
            underlay: Some(("pku1", "172.31.250.1/24")),
        },
    );
    ovn.add_chassis(
        "ch2",
        ChassisOptions {
            netns: Some(&node2.name),
            underlay: Some(("pku2", "172.31.250.2/24")),
        },
    );

    ovn.nbctl(&["ls-add", "ls1"]);
    let allocations = FixedAllocations::default();
    let pods = [
        ("a", &node1, "ch1", [0x0a, 0x58, 0, 0, 1, 1], "10.17.0.11"),
        ("b", &node2, "ch2", [0x0a, 0x58, 0, 0, 1, 2], "10.17.0.12"),
    ];
    let pod_netns: Vec<TestNetns> = pods.iter().map(|_| TestNetns::new()).collect();
    for ((pod, _, _, mac, ip), _) in pods.iter().zip(&pod_netns) {
        let lsp = format!("{pod}.default");
        let mac_text = portkeeper_cni::daemon::format_mac(*mac);
        ovn.nbctl(&[
            "lsp-add",
            "ls1",
            &lsp,
            "--",
            "lsp-set-addresses",
            &lsp,
            &format!("{mac_text} {ip}"),
        ]);
        allocations.set(
            "default",
            pod,
            Allocation {
                addresses: vec![format!("{ip}/16").parse().unwrap()],
                gateways: vec!["10.17.0.1".parse().unwrap()],
                mac: *mac,
                iface_id: lsp,
                dns: None,
            },
        );
    }

    for ((pod, node, chassis, _, _), netns) in pods.iter().zip(&pod_netns) {
        let response = on_node(
            &node.name,
            ovn.chassis_remote(chassis),
            allocations.clone(),
            request(Command::Add, pod, netns, pod),
        );
        assert!(
            matches!(response, DaemonResponse::Added(_)),
            "ADD {pod} on {chassis}: {response:?}\n{}",
            ovn.log(&format!("{chassis}/ovn-controller"))
        );
        let bound_to = ovn.sbctl(&[
            "--bare",
            "--columns=chassis",
            "find",
            "port_binding",
            &format!("logical_port={pod}.default"),
        ]);
        let chassis_name = ovn.sbctl(&[
            "--bare",
            "--columns=name",
            "list",
            "chassis",
            bound_to.trim(),
        ]);
        assert_eq!(
            chassis_name.trim(),
            *chassis,
            "{pod}.default is bound to the wrong chassis"
        );
    }
    let tunnels = ovn.chassis_vsctl("ch1", &["--columns=type,options", "list", "interface"]);
    assert!(
        tunnels.contains("geneve") && tunnels.contains("172.31.250.2"),
        "ch1 has no tunnel to ch2: {tunnels}"
    );

    let ping = pod_netns[0].exec(&["ping", "-c", "3", "-W", "3", "10.17.0.12"]);
    assert!(
        ping.status.success(),
        "cross-chassis ping failed: {}",
        String::from_utf8_lossy(&ping.stdout)
    );
    pod_netns[0]
        .tcp_round_trip(&pod_netns[1], "10.17.0.12")
        .unwrap_or_else(|e| panic!("cross-chassis TCP failed: {e}"));

    for ((pod, node, chassis, _, _), netns) in pods.iter().zip(&pod_netns) {
        let response = on_node(
            &node.name,
            ovn.chassis_remote(chassis),
            allocations.clone(),
            request(Command::Del, pod, netns, pod),
        );
        assert_eq!(response, DaemonResponse::Done);
        let host = VethNames::for_container(pod, "eth0").host;
        assert!(
            !ovn.chassis_vsctl(chassis, &["list-ports", "br-int"])
                .contains(&host)
        );
        assert!(
            !support::succeeds("ip", &["-n", &node.name, "link", "show", &host]),
            "veth {host} left on {chassis}"
        );
    }
    drop(ovn);
}
