//! The daemon against a real OVN chassis (userspace datapath) and real network namespaces:
//! ADD wires pods that ping each other and talk TCP over IPv4 and IPv6, DEL leaves nothing, failed
//! ADDs roll back, and a pod recreated with a new MAC answers the very first ping. Needs root;
//! fails when OVN cannot start (`PORTKEEPER_ALLOW_SKIP=1` skips instead).

mod support;

use portkeeper_cni::cni::{CniError, Command, ErrorCode, PodRef};
use portkeeper_cni::daemon::allocation::Allocation;
use portkeeper_cni::daemon::netdev::VethNames;
use portkeeper_cni::protocol::{DaemonRequest, DaemonResponse};
use std::time::Duration;
use support::{
    Fixture, TestNetns, allocate, assert_interface_gone, assert_nothing_left, fixture,
    host_link_exists, on_fresh_node,
};

fn request(command: Command, container: &str, netns: &TestNetns, pod: &str) -> DaemonRequest {
    DaemonRequest {
        command,
        container_id: container.into(),
        netns: Some(netns.path()),
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

fn expect_added(response: DaemonResponse, f: &Fixture) -> portkeeper_cni::cni::AddResult {
    match response {
        DaemonResponse::Added(result) => result,
        other => panic!(
            "ADD failed: {other:?}\novn-controller log:\n{}",
            f.ovn.log("chassis-1/ovn-controller")
        ),
    }
}

fn expect_error(response: DaemonResponse) -> CniError {
    match response {
        DaemonResponse::Failed(err) => err,
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[test]
fn dual_stack_pods_ping_each_other_and_del_leaves_nothing() {
    if support::prerequisites_met() {
        on_fresh_node(dual_stack_pods_ping_each_other_and_del_leaves_nothing_on_node);
    }
}

async fn dual_stack_pods_ping_each_other_and_del_leaves_nothing_on_node() {
    let f = fixture(Duration::from_secs(20)).await;
    let (ns1, ns2) = (TestNetns::new(), TestNetns::new());
    allocate(
        &f,
        "pod1",
        [0x0a, 0x58, 0x0a, 0x10, 0, 0x0f],
        "10.16.0.15",
        Some("fd00:10:16::f"),
    );
    allocate(
        &f,
        "pod2",
        [0x0a, 0x58, 0x0a, 0x10, 0, 0x10],
        "10.16.0.16",
        Some("fd00:10:16::10"),
    );

    let r1 = expect_added(
        f.daemon
            .handle(request(Command::Add, "c1", &ns1, "pod1"))
            .await,
        &f,
    );
    let r2 = expect_added(
        f.daemon
            .handle(request(Command::Add, "c2", &ns2, "pod2"))
            .await,
        &f,
    );

    // The result describes exactly what was built.
    assert_eq!(r1.interfaces[1].name, "eth0");
    assert_eq!(r1.interfaces[1].mac, "0a:58:0a:10:00:0f");
    assert_eq!(
        r1.ips
            .iter()
            .map(|ip| ip.address.to_string())
            .collect::<Vec<_>>(),
        ["10.16.0.15/16", "fd00:10:16::f/64"]
    );
    assert_eq!(
        r2.interfaces[0].name,
        VethNames::for_container("c2", "eth0").host
    );

    // The pod side as the kernel sees it.
    let link = ns1.ip(&["link", "show", "eth0"]);
    assert!(
        link.contains("0a:58:0a:10:00:0f") && link.contains("mtu 1400") && link.contains("UP"),
        "{link}"
    );
    let addrs = ns1.ip(&["addr", "show", "eth0"]);
    assert!(
        addrs.contains("10.16.0.15/16") && addrs.contains("fd00:10:16::f/64"),
        "{addrs}"
    );
    let global_v6 = addrs
        .lines()
        .find(|l| l.contains("fd00:10:16::f/64"))
        .unwrap();
    assert!(
        !global_v6.contains("tentative"),
        "IPv6 address still in DAD: {global_v6}"
    );
    assert!(
        ns1.ip(&["route"])
            .contains("default via 10.16.0.1 dev eth0"),
        "{}",
        ns1.ip(&["route"])
    );
    assert!(
        ns1.ip(&["-6", "route"])
            .contains("default via fd00:10:16::1 dev eth0"),
        "{}",
        ns1.ip(&["-6", "route"])
    );

    // The OVS side as an operator sees it.
    let host = VethNames::for_container("c1", "eth0").host;
    let ids = f.ovn.vsctl(&["get", "interface", &host, "external_ids"]);
    for expected in [
        "iface-id=pod1.default",
        "attached-mac=\"0a:58:0a:10:00:0f\"",
        "pod_name=pod1",
        "pod_namespace=default",
        "ovn-installed=\"true\"",
    ] {
        assert!(ids.contains(expected), "{expected} missing from {ids}");
    }
    assert!(f.ovn.nbctl(&["lsp-get-up", "pod1.default"]).contains("up"));

    assert!(
        ns1.ping_once("10.16.0.16", 5),
        "IPv4 ping pod1 -> pod2 failed"
    );
    assert!(
        ns2.ping_once("fd00:10:16::f", 5),
        "IPv6 ping pod2 -> pod1 failed"
    );
    // TCP too, which needs the pods' transmit checksum offload off on this userspace datapath.
    ns1.tcp_round_trip(&ns2, "10.16.0.16")
        .unwrap_or_else(|e| panic!("IPv4 TCP pod1 -> pod2: {e}"));
    ns2.tcp_round_trip(&ns1, "fd00:10:16::f")
        .unwrap_or_else(|e| panic!("IPv6 TCP pod2 -> pod1: {e}"));

    // CHECK agrees with what ADD made.
    let mut check = request(Command::Check, "c1", &ns1, "pod1");
    assert_eq!(f.daemon.handle(check.clone()).await, DaemonResponse::Done);
    check.container_id = "c-unknown".into();
    assert_eq!(
        expect_error(f.daemon.handle(check).await).code,
        ErrorCode::CheckMismatch
    );

    for (container, ns, pod) in [("c1", &ns1, "pod1"), ("c2", &ns2, "pod2")] {
        assert_eq!(
            f.daemon
                .handle(request(Command::Del, container, ns, pod))
                .await,
            DaemonResponse::Done
        );
        assert_nothing_left(&f, container, Some(ns));
        // DEL again, and DEL without netns or pod (as after a node reboot), still succeed.
        assert_eq!(
            f.daemon
                .handle(request(Command::Del, container, ns, pod))
                .await,
            DaemonResponse::Done
        );
        let bare = DaemonRequest {
            netns: None,
            pod: None,
            ..request(Command::Del, container, ns, pod)
        };
        assert_eq!(f.daemon.handle(bare).await, DaemonResponse::Done);
    }
}

#[test]
fn an_attachment_nic_binds_its_own_port_and_never_touches_eth0() {
    if support::prerequisites_met() {
        on_fresh_node(an_attachment_nic_binds_its_own_port_and_never_touches_eth0_on_node);
    }
}

/// A pod with eth0 on the primary network and net1 on an attachment network (provider
/// `blue.default.ovn`, as a NetworkAttachmentDefinition's netconf names it): net1 is wired to its
/// own port with its own addresses and no default route, and its DEL leaves eth0 bound.
async fn an_attachment_nic_binds_its_own_port_and_never_touches_eth0_on_node() {
    let f = fixture(Duration::from_secs(20)).await;
    let ns = TestNetns::new();
    allocate(
        &f,
        "pod1",
        [0x0a, 0x58, 0x0a, 0x10, 0, 0x0f],
        "10.16.0.15",
        None,
    );
    let port = "pod1.default.blue.default.ovn";
    f.ovn.nbctl(&[
        "ls-add",
        "blue",
        "--",
        "lsp-add",
        "blue",
        port,
        "--",
        "lsp-set-addresses",
        port,
        "02:00:00:09:00:07 10.9.0.7",
    ]);
    f.allocations.set_on(
        "default",
        "pod1",
        "blue.default.ovn",
        Allocation {
            addresses: vec!["10.9.0.7/24".parse().unwrap()],
            gateways: vec![],
            mac: [2, 0, 0, 9, 0, 7],
            iface_id: port.into(),
            dns: None,
        },
    );
    let net1 = |command| DaemonRequest {
        ifname: "net1".into(),
        provider: "blue.default.ovn".into(),
        ..request(command, "c1", &ns, "pod1")
    };
    expect_added(
        f.daemon
            .handle(request(Command::Add, "c1", &ns, "pod1"))
            .await,
        &f,
    );
    let r = expect_added(f.daemon.handle(net1(Command::Add)).await, &f);
    assert_eq!(r.interfaces[1].name, "net1");
    assert_eq!(r.interfaces[1].mac, "02:00:00:09:00:07");
    assert!(r.routes.is_empty(), "{:?}", r.routes);

    let addrs = ns.ip(&["addr", "show", "net1"]);
    assert!(addrs.contains("10.9.0.7/24"), "{addrs}");
    let routes = ns.ip(&["route"]);
    assert!(
        routes.contains("default via 10.16.0.1 dev eth0"),
        "{routes}"
    );
    assert_eq!(routes.matches("default").count(), 1, "{routes}");
    assert!(routes.contains("10.9.0.0/24 dev net1"), "{routes}");

    let iface_id = |ifname| {
        let host = VethNames::for_container("c1", ifname).host;
        let id = f
            .ovn
            .vsctl(&["get", "interface", &host, "external_ids:iface-id"]);
        id.trim().trim_matches('"').to_owned()
    };
    assert_eq!(iface_id("eth0"), "pod1.default");
    assert_eq!(iface_id("net1"), port);
    for lsp in ["pod1.default", port] {
        assert!(
            f.ovn.nbctl(&["lsp-get-up", lsp]).contains("up"),
            "{lsp} is not up"
        );
    }

    // net1's CHECK and DEL are net1's alone: eth0 stays bound and up.
    assert_eq!(
        f.daemon.handle(net1(Command::Check)).await,
        DaemonResponse::Done
    );
    assert_eq!(
        f.daemon.handle(net1(Command::Del)).await,
        DaemonResponse::Done
    );
    assert_interface_gone(&f, "c1", "net1", Some(&ns));
    assert_eq!(iface_id("eth0"), "pod1.default");
    assert!(ns.ip(&["addr", "show", "eth0"]).contains("10.16.0.15/16"));
    assert_eq!(
        f.daemon
            .handle(request(Command::Check, "c1", &ns, "pod1"))
            .await,
        DaemonResponse::Done
    );
    assert_eq!(
        f.daemon
            .handle(request(Command::Del, "c1", &ns, "pod1"))
            .await,
        DaemonResponse::Done
    );
    assert_nothing_left(&f, "c1", Some(&ns));
}

#[test]
fn failed_adds_leave_nothing_behind() {
    if support::prerequisites_met() {
        on_fresh_node(failed_adds_leave_nothing_behind_on_node);
    }
}

async fn failed_adds_leave_nothing_behind_on_node() {
    let f = fixture(Duration::from_secs(3)).await;
    let ns = TestNetns::new();

    // No allocation for the pod.
    let err = expect_error(
        f.daemon
            .handle(request(Command::Add, "c1", &ns, "nobody"))
            .await,
    );
    assert_eq!(err.code, ErrorCode::AllocationUnavailable);
    assert_nothing_left(&f, "c1", Some(&ns));

    // A logical port ovn-controller never binds: ADD fails on the ovn-installed bound and rolls back
    // the OVS port and the veth it had already made.
    f.allocations.set(
        "default",
        "orphan",
        Allocation {
            addresses: vec!["10.16.0.30/16".parse().unwrap()],
            gateways: vec!["10.16.0.1".parse().unwrap()],
            mac: [0x0a, 0x58, 0, 0, 0, 0x30],
            iface_id: "no-such-lsp.default".into(),
            dns: None,
        },
    );
    let err = expect_error(
        f.daemon
            .handle(request(Command::Add, "c2", &ns, "orphan"))
            .await,
    );
    assert_eq!(err.code, ErrorCode::PortNotInstalled, "{err}");
    assert!(err.msg.contains("ovn-installed"), "{err}");
    assert_nothing_left(&f, "c2", Some(&ns));

    // A missing network namespace is "unknown container".
    allocate(&f, "pod3", [0x0a, 0x58, 0, 0, 0, 0x31], "10.16.0.31", None);
    let gone = DaemonRequest {
        netns: Some("/var/run/netns/pkcni-does-not-exist".into()),
        ..request(Command::Add, "c3", &ns, "pod3")
    };
    assert_eq!(
        expect_error(f.daemon.handle(gone).await).code,
        ErrorCode::UnknownContainer
    );
    assert_nothing_left(&f, "c3", None);

    // The interface name is taken inside the pod: the veth pair is removed again.
    let taken = ns.exec(&[
        "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "other0",
    ]);
    assert!(
        taken.status.success(),
        "{}",
        String::from_utf8_lossy(&taken.stderr)
    );
    let err = expect_error(
        f.daemon
            .handle(request(Command::Add, "c4", &ns, "pod3"))
            .await,
    );
    assert!(err.msg.contains("eth0"), "{err}");
    let names = VethNames::for_container("c4", "eth0");
    assert!(!host_link_exists(&names.host) && !host_link_exists(&names.transient_peer));
    assert!(!f.ovn.ports().contains(&names.host));
}

#[test]
fn recreated_pod_with_a_new_mac_answers_the_first_ping() {
    if support::prerequisites_met() {
        on_fresh_node(recreated_pod_with_a_new_mac_answers_the_first_ping_on_node);
    }
}

async fn recreated_pod_with_a_new_mac_answers_the_first_ping_on_node() {
    let f = fixture(Duration::from_secs(20)).await;
    let (client, server) = (TestNetns::new(), TestNetns::new());
    allocate(
        &f,
        "client",
        [0x0a, 0x58, 0, 0, 0, 0x01],
        "10.16.0.40",
        Some("fd00:10:16::40"),
    );
    allocate(
        &f,
        "web-0",
        [0x02, 0, 0, 0, 0, 0x11],
        "10.16.0.41",
        Some("fd00:10:16::41"),
    );
    expect_added(
        f.daemon
            .handle(request(Command::Add, "cc", &client, "client"))
            .await,
        &f,
    );
    expect_added(
        f.daemon
            .handle(request(Command::Add, "s1", &server, "web-0"))
            .await,
        &f,
    );
    assert!(client.ping_once("10.16.0.41", 5) && client.ping_once("fd00:10:16::41", 5));
    let neigh = client.ip(&["neigh"]);
    assert!(
        neigh.contains("02:00:00:00:00:11"),
        "client has not learnt the first MAC: {neigh}"
    );

    // The StatefulSet pod is deleted and comes back with the same addresses and a new MAC.
    assert_eq!(
        f.daemon
            .handle(request(Command::Del, "s1", &server, "web-0"))
            .await,
        DaemonResponse::Done
    );
    drop(server);
    let server = TestNetns::new();
    allocate(
        &f,
        "web-0",
        [0x02, 0, 0, 0, 0, 0x12],
        "10.16.0.41",
        Some("fd00:10:16::41"),
    );
    expect_added(
        f.daemon
            .handle(request(Command::Add, "s2", &server, "web-0"))
            .await,
        &f,
    );

    // The client still holds the old MAC; the announcement must have replaced it before any probe.
    assert!(
        client.ping_once("10.16.0.41", 1),
        "first IPv4 ping after recreation failed: {}",
        client.ip(&["neigh"])
    );
    assert!(
        client.ping_once("fd00:10:16::41", 1),
        "first IPv6 ping after recreation failed: {}",
        client.ip(&["neigh"])
    );
    let neigh = client.ip(&["neigh"]);
    assert!(
        !neigh.contains("02:00:00:00:00:11"),
        "stale MAC still cached: {neigh}"
    );

    for (c, ns, pod) in [("cc", &client, "client"), ("s2", &server, "web-0")] {
        assert_eq!(
            f.daemon.handle(request(Command::Del, c, ns, pod)).await,
            DaemonResponse::Done
        );
        assert_nothing_left(&f, c, Some(ns));
    }
}
