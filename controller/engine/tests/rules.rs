//! One test per rule of the address engine (issue 3), including the
//! addressing cases of Kube-OVN's e2e suite that the engine alone decides
//! (kube-ovn-behavior §8.3, §8.5) and the StatefulSet ordinal-offset case
//! Kube-OVN gets wrong (§9.1).

use std::net::IpAddr;
use std::sync::Arc;

use portkeeper_engine::parse::{IpPoolAnnotation, parse_ip_address, parse_ip_pool};
use portkeeper_engine::{
    Claim, ConflictOn, DualAddress, Engine, EngineError, Family, FamilyRequest, IpRequest,
    ListPick, MacAddress, MacHolder, MacRequest, NicKey, Owner, PoolSpec, Record, RecordSource,
    Snapshot, StrandedReason, SubnetSpec,
};
use rand::SeedableRng;
use rand::rngs::StdRng;

fn engine() -> Engine {
    Engine::with_rng(StdRng::seed_from_u64(7))
}

fn subnet(engine: &Engine, name: &str, cidr: &str, excludes: &[&str]) {
    engine
        .upsert_subnet(&SubnetSpec {
            name: name.into(),
            cidr_block: cidr.into(),
            exclude_ips: excludes.iter().map(|s| s.to_string()).collect(),
            ..SubnetSpec::default()
        })
        .unwrap();
}

fn key(name: &str) -> NicKey {
    NicKey::new(name, "ns", None)
}

fn dynamic(subnet: &str, name: &str) -> Claim {
    Claim::dynamic(subnet, key(name), &format!("uid-{name}"))
}

fn with_ip(mut claim: Claim, ip: IpRequest) -> Claim {
    claim.ip = ip;
    claim
}

fn static_ip(subnet: &str, name: &str, ip: &str) -> Claim {
    with_ip(
        dynamic(subnet, name),
        IpRequest::Static(parse_ip_address(ip).unwrap()),
    )
}

fn list(subnet: &str, name: &str, pool: &str, pick: ListPick) -> Claim {
    let IpPoolAnnotation::List(entries) = parse_ip_pool(pool).unwrap() else {
        panic!("{pool} is not a list")
    };
    with_ip(dynamic(subnet, name), IpRequest::List { entries, pick })
}

fn v4(engine: &Engine, claim: &Claim) -> String {
    engine.claim(claim).unwrap().v4.unwrap().to_string()
}

fn release(engine: &Engine, name: &str) {
    let lease = engine.lease(&key(name)).unwrap();
    engine.release(&key(name), &lease.owner()).unwrap();
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

// ---------- Subnets ----------

#[test]
fn ipv4_network_broadcast_and_gateway_are_never_handed_out() {
    let e = engine();
    subnet(&e, "s", "10.0.0.0/29", &[]);
    let got: Vec<String> = (0..5)
        .map(|i| v4(&e, &dynamic("s", &format!("p{i}"))))
        .collect();
    assert_eq!(
        got,
        ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"]
    );
    let err = e.claim(&dynamic("s", "p5")).unwrap_err();
    assert!(matches!(
        err,
        EngineError::NoAvailableAddress {
            family: Family::V4,
            ..
        }
    ));
    assert_eq!(err.reason(), "NoAvailableAddress");
    for bad in ["10.0.0.0", "10.0.0.7", "10.0.0.8"] {
        let err = e.claim(&static_ip("s", "x", bad)).unwrap_err();
        assert!(
            matches!(err, EngineError::AddressOutOfRange { .. }),
            "{bad}: {err}"
        );
        assert!(err.to_string().contains(bad) && err.to_string().contains("subnet s"));
    }
    let err = e.claim(&static_ip("s", "x", "10.0.0.1")).unwrap_err();
    assert!(matches!(err, EngineError::GatewayConflict { .. }));
}

#[test]
fn ipv6_skips_network_and_all_ones_and_point_to_point_links_use_both() {
    let e = engine();
    subnet(&e, "v6", "fd00::/126", &[]);
    assert_eq!(
        e.claim(&dynamic("v6", "a"))
            .unwrap()
            .v6
            .unwrap()
            .to_string(),
        "fd00::2"
    );
    assert!(
        e.claim(&dynamic("v6", "b")).is_err(),
        "::3 is all-ones, ::1 the gateway"
    );
    subnet(&e, "p2p", "10.9.0.0/31", &[]);
    assert_eq!(
        v4(&e, &dynamic("p2p", "c")),
        "10.9.0.1",
        "/31: .0 is the gateway, .1 usable"
    );
}

#[test]
fn dual_stack_cidr_block_in_either_order() {
    let e = engine();
    subnet(&e, "d", "fd00:10::/120,10.1.0.0/24", &[]);
    let lease = e.claim(&dynamic("d", "a")).unwrap();
    assert_eq!(lease.addresses().to_string(), "10.1.0.2,fd00:10::2");
    let status = e.subnet_status("d").unwrap();
    assert_eq!((status.v4_using_ips, status.v6_using_ips), (1, 1));
    assert_eq!(status.v4_available_ips, 254 - 1 - 1);
}

#[test]
fn explicit_gateway_is_reserved_and_validated() {
    let e = engine();
    e.upsert_subnet(&SubnetSpec {
        name: "g".into(),
        cidr_block: "10.2.0.0/29".into(),
        gateway: "10.2.0.6".into(),
        ..SubnetSpec::default()
    })
    .unwrap();
    assert_eq!(v4(&e, &dynamic("g", "a")), "10.2.0.1");
    let err = e.claim(&static_ip("g", "b", "10.2.0.6")).unwrap_err();
    assert_eq!(err.reason(), "AddressConflict");
    for (gateway, want) in [
        ("10.3.0.1", "GatewayOutsideSubnet"),
        ("10.2.0.7", "GatewayOutsideSubnet"),
        ("fd00::1", "GatewayFamily"),
    ] {
        let err = e
            .upsert_subnet(&SubnetSpec {
                name: "bad".into(),
                cidr_block: "10.2.0.0/29".into(),
                gateway: gateway.into(),
                ..SubnetSpec::default()
            })
            .unwrap_err();
        assert!(format!("{err:?}").starts_with(want), "{gateway}: {err:?}");
    }
}

#[test]
fn exclude_ips_single_and_ranges_are_never_allocated_dynamically() {
    let e = engine();
    subnet(&e, "x", "10.0.0.0/28", &["10.0.0.2", "10.0.0.4..10.0.0.13"]);
    let got: Vec<String> = (0..2)
        .map(|i| v4(&e, &dynamic("x", &format!("p{i}"))))
        .collect();
    assert_eq!(got, ["10.0.0.3", "10.0.0.14"]);
    assert!(e.claim(&dynamic("x", "p3")).is_err());
    let err = e
        .upsert_subnet(&SubnetSpec {
            name: "x".into(),
            cidr_block: "10.0.0.0/28".into(),
            exclude_ips: vec!["10.0.0.9..10.0.0.3".into()],
            ..SubnetSpec::default()
        })
        .unwrap_err();
    assert!(err.to_string().contains("excludeIps"), "{err}");
}

/// §8.5 "should create subnet with exclude ips": available = count − excludes − 1 (gateway).
#[test]
fn e2e_subnet_available_count_with_exclude_ips() {
    let e = engine();
    subnet(
        &e,
        "x",
        "10.0.0.0/24",
        &["10.0.0.10..10.0.0.19", "10.0.0.100"],
    );
    assert_eq!(e.subnet_status("x").unwrap().v4_available_ips, 254 - 11 - 1);
}

/// kube-ovn-behavior §2.4.1: an underlay subnet without a CIDR hands out MACs only.
#[test]
fn mac_only_subnet_allocates_only_a_mac() {
    let e = engine();
    subnet(&e, "underlay", "", &[]);
    let lease = e.claim(&dynamic("underlay", "a")).unwrap();
    assert_eq!((lease.v4, lease.v6), (None, None));
    assert!(lease.mac.is_some());
    let err = e
        .claim(&static_ip("underlay", "b", "10.0.0.5"))
        .unwrap_err();
    assert_eq!(err.reason(), "AddressOutOfRange");
    let mut mac_only = dynamic("s-none", "c");
    mac_only.subnet = "underlay".into();
    mac_only.ip = IpRequest::MacOnly;
    assert!(e.claim(&mac_only).unwrap().mac.is_some());
}

#[test]
fn ip_family_annotation_values() {
    assert_eq!(Family::from_annotation("ipv4"), Some(Family::V4));
    assert_eq!(Family::from_annotation("ipv6"), Some(Family::V6));
    assert_eq!(
        Family::from_annotation("IPv6"),
        None,
        "Kube-OVN accepts lower case only"
    );
    assert_eq!(Family::V6.annotation_value(), "ipv6");
}

// ---------- Owners ----------

#[test]
fn claiming_again_with_the_same_key_is_idempotent() {
    let e = engine();
    subnet(&e, "s", "10.0.0.0/24,fd00::/120", &[]);
    let first = e.claim(&dynamic("s", "a")).unwrap();
    e.claim(&dynamic("s", "b")).unwrap();
    let again = e.claim(&dynamic("s", "a")).unwrap();
    assert_eq!(first, again, "same addresses, MAC and generation");
    let pinned = static_ip("s", "c", "10.0.0.50");
    assert_eq!(e.claim(&pinned).unwrap(), e.claim(&pinned).unwrap());
    let listed = list("s", "d", "10.0.0.60;10.0.0.61", ListPick::FirstFree);
    assert_eq!(e.claim(&listed).unwrap(), e.claim(&listed).unwrap());
    assert_eq!(e.subnet_status("s").unwrap().v4_using_ips, 4);
}

#[test]
fn release_is_compare_and_swap_on_uid_and_generation() {
    let e = engine();
    subnet(&e, "s", "10.0.0.0/24", &[]);
    let old = e.claim(&dynamic("s", "web-0")).unwrap();
    let mut reborn = dynamic("s", "web-0");
    reborn.uid = "uid-new-incarnation".into();
    let new = e.claim(&reborn).unwrap();
    assert_eq!(new.v4, old.v4, "a new incarnation adopts the nic");
    assert!(new.generation > old.generation);

    let err = e.release(&key("web-0"), &old.owner()).unwrap_err();
    assert!(matches!(err, EngineError::StaleUid { .. }));
    assert!(
        err.to_string().contains("uid-web-0") && err.to_string().contains("uid-new-incarnation")
    );
    let stale_gen = Owner {
        uid: new.uid.clone(),
        generation: old.generation,
    };
    assert!(matches!(
        e.release(&key("web-0"), &stale_gen).unwrap_err(),
        EngineError::StaleGeneration { .. }
    ));
    assert_eq!(
        e.lease(&key("web-0")),
        Some(new.clone()),
        "stale releases changed nothing"
    );

    e.release(&key("web-0"), &new.owner()).unwrap();
    assert_eq!(e.lease(&key("web-0")), None);
    assert!(matches!(
        e.release(&key("web-0"), &new.owner()).unwrap_err(),
        EngineError::NotHeld { .. }
    ));
}

#[test]
fn a_key_lives_in_one_subnet_at_a_time() {
    let e = engine();
    subnet(&e, "a", "10.0.0.0/24", &[]);
    subnet(&e, "b", "10.1.0.0/24", &[]);
    e.claim(&dynamic("a", "vm")).unwrap();
    let err = e.claim(&dynamic("b", "vm")).unwrap_err();
    assert!(matches!(err, EngineError::KeyInOtherSubnet { .. }));
    assert!(err.to_string().contains("vm.ns") && err.to_string().contains("subnet a"));
    release(&e, "vm");
    assert_eq!(v4(&e, &dynamic("b", "vm")), "10.1.0.2");
}

#[test]
fn nic_keys_follow_kube_ovn_port_names() {
    assert_eq!(NicKey::new("web-0", "shop", None).as_str(), "web-0.shop");
    assert_eq!(
        NicKey::new("web-0", "shop", Some("ovn")).as_str(),
        "web-0.shop"
    );
    assert_eq!(
        NicKey::new("vm1", "ns", Some("attach.ns.ovn")).as_str(),
        "vm1.ns.attach.ns.ovn"
    );
}

// ---------- Dynamic allocation ----------

/// §8.5 "AvailableIPRange and UsingIPRange … creating pod no specify ip": lowest first.
#[test]
fn e2e_lowest_first_range_strings() {
    let e = engine();
    subnet(&e, "s", "10.16.0.0/24", &[]);
    for i in 0..5 {
        e.claim(&dynamic("s", &format!("p{i}"))).unwrap();
    }
    let status = e.subnet_status("s").unwrap();
    assert_eq!(status.v4_using_ip_range, "10.16.0.2-10.16.0.6");
    assert_eq!(status.v4_available_ip_range, "10.16.0.7-10.16.0.254");
    assert_eq!((status.v4_using_ips, status.v4_available_ips), (5, 248));
    for i in 0..5 {
        release(&e, &format!("p{i}"));
    }
    let status = e.subnet_status("s").unwrap();
    assert_eq!(status.v4_using_ip_range, "");
    assert_eq!(status.v4_available_ip_range, "10.16.0.2-10.16.0.254");
}

/// §8.5 "… is correct when restart deployment": delayed reuse.
#[test]
fn e2e_delayed_reuse_after_rollout_restart() {
    let e = engine();
    subnet(&e, "s", "10.16.0.0/24", &[]);
    for i in 0..5 {
        e.claim(&dynamic("s", &format!("old{i}"))).unwrap();
    }
    for i in 0..5 {
        e.claim(&dynamic("s", &format!("new{i}"))).unwrap();
        release(&e, &format!("old{i}"));
    }
    let status = e.subnet_status("s").unwrap();
    assert_eq!(status.v4_using_ip_range, "10.16.0.7-10.16.0.11");
    assert_eq!(
        status.v4_available_ip_range,
        "10.16.0.2-10.16.0.6,10.16.0.12-10.16.0.254"
    );
}

#[test]
fn released_addresses_are_reused_last_and_oldest_first() {
    let e = engine();
    subnet(&e, "s", "10.0.0.0/29", &[]);
    for i in 0..5 {
        e.claim(&dynamic("s", &format!("p{i}"))).unwrap();
    }
    release(&e, "p3");
    release(&e, "p1");
    assert_eq!(
        v4(&e, &dynamic("s", "n1")),
        "10.0.0.5",
        "oldest released first"
    );
    assert_eq!(v4(&e, &dynamic("s", "n2")), "10.0.0.3");
    e.claim(&dynamic("s", "n3")).unwrap_err();
}

#[test]
fn family_choice_on_dual_stack_and_mismatch_on_single_stack() {
    let e = engine();
    subnet(&e, "d", "10.0.0.0/24,fd00::/120", &[]);
    subnet(&e, "v4", "10.1.0.0/24", &[]);
    let mut only_v6 = dynamic("d", "a");
    only_v6.family = FamilyRequest::Only(Family::V6);
    let lease = e.claim(&only_v6).unwrap();
    assert_eq!(
        (lease.v4, lease.v6.unwrap().to_string()),
        (None, "fd00::2".into())
    );
    let mut only_v4 = dynamic("d", "b");
    only_v4.family = FamilyRequest::Only(Family::V4);
    assert_eq!(e.claim(&only_v4).unwrap().v6, None);
    let mut wrong = dynamic("v4", "c");
    wrong.family = FamilyRequest::Only(Family::V6);
    let err = e.claim(&wrong).unwrap_err();
    assert_eq!(
        err.to_string(),
        "requested ip family ipv6 does not match subnet v4 protocol IPv4"
    );
}

// ---------- Static claims ----------

/// §8.3.1 "should allocate static ipv4 and mac for pod".
#[test]
fn e2e_static_ip_and_mac() {
    let e = engine();
    subnet(&e, "s", "10.0.0.0/24", &[]);
    let mut claim = static_ip("s", "p", "10.0.0.33");
    claim.mac = MacRequest::Static(MacAddress::parse("0A-00-00-00-00-21").unwrap());
    let lease = e.claim(&claim).unwrap();
    assert_eq!(lease.v4.unwrap().to_string(), "10.0.0.33");
    assert_eq!(lease.mac.unwrap().to_string(), "0a:00:00:00:00:21");
}

#[test]
fn static_claims_inside_excludes_are_allowed_and_never_freed_to_others() {
    let e = engine();
    subnet(&e, "s", "10.0.0.0/29", &["10.0.0.2..10.0.0.6"]);
    assert_eq!(v4(&e, &static_ip("s", "pinned", "10.0.0.4")), "10.0.0.4");
    release(&e, "pinned");
    assert!(
        e.claim(&dynamic("s", "other")).is_err(),
        "excluded stays excluded"
    );
    assert_eq!(e.subnet_status("s").unwrap().v4_available_ips, 0);
}

#[test]
fn static_conflict_names_the_holder() {
    let e = engine();
    subnet(&e, "s", "10.0.0.0/24", &[]);
    e.claim(&static_ip("s", "first", "10.0.0.9")).unwrap();
    let err = e.claim(&static_ip("s", "second", "10.0.0.9")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "10.0.0.9 in subnet s is held by first.ns; second.ns cannot take it"
    );
    assert_eq!(err.reason(), "AddressConflict");
    assert_eq!(e.lease(&key("second")), None);
}

#[test]
fn changing_a_static_address_moves_the_nic_and_frees_the_old_one() {
    let e = engine();
    subnet(&e, "s", "10.0.0.0/29", &[]);
    let before = e.claim(&static_ip("s", "p", "10.0.0.3")).unwrap();
    let after = e.claim(&static_ip("s", "p", "10.0.0.5")).unwrap();
    assert_eq!(after.mac, before.mac, "the MAC stays with the nic");
    assert!(after.generation > before.generation);
    assert_eq!(e.subnet_status("s").unwrap().v4_using_ip_range, "10.0.0.5");
    assert_eq!(v4(&e, &static_ip("s", "q", "10.0.0.3")), "10.0.0.3");
}

#[test]
fn static_single_family_on_dual_stack_completes_the_other_family() {
    let e = engine();
    subnet(&e, "d", "10.0.0.0/24,fd00::/120", &[]);
    let lease = e.claim(&static_ip("d", "p", "10.0.0.77")).unwrap();
    assert_eq!(lease.addresses().to_string(), "10.0.0.77,fd00::2");
    let mut only = static_ip("d", "q", "10.0.0.78");
    only.family = FamilyRequest::Only(Family::V4);
    assert_eq!(e.claim(&only).unwrap().v6, None);
    only.family = FamilyRequest::Only(Family::V6);
    assert!(matches!(
        e.claim(&only).unwrap_err(),
        EngineError::StaticFamilyMismatch { .. }
    ));
    let dual = static_ip("d", "r", "fd00::80,10.0.0.80");
    assert_eq!(
        e.claim(&dual).unwrap().addresses().to_string(),
        "10.0.0.80,fd00::80"
    );
}

/// user-pain-points K3: IPv6 offsets beyond 16 and 64 bits.
#[test]
fn ipv6_static_claims_far_into_large_subnets() {
    let e = engine();
    subnet(&e, "p48", "fd00:1::/48", &[]);
    subnet(&e, "p64", "fd00:2::/64", &[]);
    subnet(&e, "p120", "fd00:3::/120", &[]);
    for (s, addr) in [
        ("p48", "fd00:1::1:0"),
        ("p48", "fd00:1:0:1234::"),
        ("p48", "fd00:1:0:ffff:ffff:ffff:ffff:fffe"),
        ("p64", "fd00:2::ffff:ffff:ffff:fffe"),
        ("p120", "fd00:3::fe"),
    ] {
        let lease = e.claim(&static_ip(s, addr, addr)).unwrap();
        assert_eq!(lease.v6, Some(addr.parse().unwrap()));
    }
    assert!(
        e.claim(&static_ip("p64", "top", "fd00:2::ffff:ffff:ffff:ffff"))
            .is_err()
    );
}

// ---------- IP lists ----------

/// §8.3.5/6: a deployment takes the first free entries, in list order.
#[test]
fn e2e_deployment_list_takes_first_free_entry_in_order() {
    let e = engine();
    subnet(&e, "s", "10.0.0.0/24", &[]);
    let pool = "10.0.0.30;10.0.0.20;10.0.0.10";
    let got: Vec<String> = (0..3)
        .map(|i| v4(&e, &list("s", &format!("d{i}"), pool, ListPick::FirstFree)))
        .collect();
    assert_eq!(got, ["10.0.0.30", "10.0.0.20", "10.0.0.10"]);
    let err = e
        .claim(&list("s", "d3", pool, ListPick::FirstFree))
        .unwrap_err();
    assert_eq!(err.reason(), "NoAvailableAddress");
    assert_eq!(
        err.to_string(),
        "no available address in the ip_pool list of 3 entries in subnet s for d3.ns: \
         10.0.0.30 held by d0.ns, 10.0.0.20 held by d1.ns, 10.0.0.10 held by d2.ns"
    );
    release(&e, "d1");
    assert_eq!(
        v4(&e, &list("s", "d3", pool, ListPick::FirstFree)),
        "10.0.0.20"
    );
    let comma = "10.0.0.40,10.0.0.41";
    assert_eq!(
        v4(&e, &list("s", "c0", comma, ListPick::FirstFree)),
        "10.0.0.40"
    );
}

/// §8.3.8/9: StatefulSet pods keep entry `ordinal` across recreation.
#[test]
fn e2e_statefulset_list_maps_ordinals_and_keeps_them() {
    let e = engine();
    subnet(&e, "s", "10.0.0.0/24", &[]);
    let pool = "10.0.0.7,10.0.0.8,10.0.0.9";
    let pick = |i| ListPick::Ordinal {
        ordinal: i,
        start: 0,
    };
    for round in 0..2 {
        for i in 0..3u64 {
            let claim = list("s", &format!("sts-{i}"), pool, pick(i));
            assert_eq!(v4(&e, &claim), format!("10.0.0.{}", 7 + i), "round {round}");
        }
        for i in 0..3 {
            release(&e, &format!("sts-{i}"));
        }
    }
}

/// §9.1: Kube-OVN indexes the list by the raw ordinal and gives every pod
/// of a StatefulSet with `ordinals.start = 10` NoAvailableAddress.
#[test]
fn statefulset_list_honours_ordinals_start() {
    let e = engine();
    subnet(&e, "s", "10.0.0.0/24", &[]);
    let pool = "10.0.0.7;10.0.0.8;10.0.0.9";
    for ordinal in 10..13u64 {
        let claim = list(
            "s",
            &format!("sts-{ordinal}"),
            pool,
            ListPick::Ordinal { ordinal, start: 10 },
        );
        assert_eq!(v4(&e, &claim), format!("10.0.0.{}", ordinal - 3));
    }
    for ordinal in [9u64, 13] {
        let claim = list(
            "s",
            &format!("sts-{ordinal}"),
            pool,
            ListPick::Ordinal { ordinal, start: 10 },
        );
        let err = e.claim(&claim).unwrap_err();
        assert!(
            matches!(
                err,
                EngineError::OrdinalOutsideList {
                    size: 3,
                    start: 10,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(err.reason(), "NoAvailableAddress");
    }
}

#[test]
fn statefulset_entry_held_by_another_key_is_a_conflict_naming_it() {
    let e = engine();
    subnet(&e, "s", "10.0.0.0/24", &[]);
    e.claim(&static_ip("s", "squatter", "10.0.0.8")).unwrap();
    let claim = list(
        "s",
        "sts-1",
        "10.0.0.7;10.0.0.8",
        ListPick::Ordinal {
            ordinal: 1,
            start: 0,
        },
    );
    let err = e.claim(&claim).unwrap_err();
    assert!(err.to_string().contains("held by squatter.ns"), "{err}");
}

#[test]
fn list_entry_without_the_requested_family_is_refused() {
    let e = engine();
    subnet(&e, "d", "10.0.0.0/24,fd00::/120", &[]);
    let mut claim = list(
        "d",
        "sts-0",
        "10.0.0.7;10.0.0.8",
        ListPick::Ordinal {
            ordinal: 0,
            start: 0,
        },
    );
    claim.family = FamilyRequest::Only(Family::V6);
    let err = e.claim(&claim).unwrap_err();
    assert_eq!(
        err.to_string(),
        "static address 10.0.0.7 does not match the requested ip family ipv6 in subnet d"
    );
    claim.family = FamilyRequest::Subnet;
    let lease = e.claim(&claim).unwrap();
    assert_eq!(
        lease.addresses().to_string(),
        "10.0.0.7,fd00::2",
        "dual-stack completion"
    );
}

/// §8.5 "should reject pod with fixed IP or IP pool using subnet gateway IP".
#[test]
fn e2e_gateway_in_ip_address_or_ip_pool_is_an_address_conflict() {
    let e = engine();
    subnet(&e, "s", "10.0.0.0/30", &["10.0.0.2"]);
    assert_eq!(e.subnet_status("s").unwrap().v4_available_ips, 0);
    let err = e.claim(&static_ip("s", "a", "10.0.0.1")).unwrap_err();
    assert_eq!(err.reason(), "AddressConflict");
    let err = e
        .claim(&list("s", "b", "10.0.0.1", ListPick::FirstFree))
        .unwrap_err();
    assert_eq!(err.reason(), "AddressConflict");
    assert_eq!(e.lease(&key("b")), None);
}

#[test]
fn dual_stack_list_entries() {
    let e = engine();
    subnet(&e, "d", "10.0.0.0/24,fd00::/120", &[]);
    let pool = "10.0.0.5,fd00::5;10.0.0.6,fd00::6";
    let a = e.claim(&list("d", "a", pool, ListPick::FirstFree)).unwrap();
    let b = e.claim(&list("d", "b", pool, ListPick::FirstFree)).unwrap();
    assert_eq!(a.addresses().to_string(), "10.0.0.5,fd00::5");
    assert_eq!(b.addresses().to_string(), "10.0.0.6,fd00::6");
}

// ---------- Named pools ----------

fn pool(e: &Engine, name: &str, subnet: &str, ips: &[&str]) -> Result<(), EngineError> {
    e.upsert_pool(&PoolSpec {
        name: name.into(),
        subnet: subnet.into(),
        ips: ips.iter().map(|s| s.to_string()).collect(),
    })
}

fn from_pools(subnet: &str, name: &str, pools: &[&str]) -> Claim {
    with_ip(
        dynamic(subnet, name),
        IpRequest::Pools(pools.iter().map(|s| s.to_string()).collect()),
    )
}

/// §8.3.12 "should support IPPool feature".
#[test]
fn e2e_pool_allocation_and_status() {
    let e = engine();
    subnet(&e, "s", "10.0.0.0/24", &["10.0.0.12"]);
    pool(&e, "p", "s", &["10.0.0.10..10.0.0.13", "10.0.0.100"]).unwrap();
    let status = e.pool_status("p").unwrap();
    assert_eq!(
        (status.v4_using_ips, status.v4_using_ip_range.as_str()),
        (0, "")
    );
    assert_eq!(
        status.v4_available_ip_range,
        "10.0.0.10-10.0.0.11,10.0.0.13,10.0.0.100"
    );
    assert_eq!(status.v4_available_ips, 4);
    for i in 0..3 {
        e.claim(&from_pools("s", &format!("d{i}"), &["p"])).unwrap();
    }
    let status = e.pool_status("p").unwrap();
    assert_eq!(status.v4_using_ip_range, "10.0.0.10-10.0.0.11,10.0.0.13");
    assert_eq!((status.v4_using_ips, status.v4_available_ips), (3, 1));
    assert_eq!(status.v4_available_ip_range, "10.0.0.100");
    for i in 0..20 {
        let lease = e.claim(&dynamic("s", &format!("plain{i}"))).unwrap();
        let last = lease.v4.unwrap().octets()[3];
        assert!(
            !(10..=13).contains(&last) && last != 100,
            "default pool never hands out pool IPs"
        );
    }
}

#[test]
fn pools_of_one_subnet_may_not_overlap() {
    let e = engine();
    subnet(&e, "s", "10.0.0.0/24", &[]);
    pool(&e, "a", "s", &["10.0.0.0/28"]).unwrap();
    let err = pool(&e, "b", "s", &["10.0.0.14..10.0.0.20"]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "ippool b has conflict IPs with ippool a in subnet s: 10.0.0.14-10.0.0.15"
    );
    pool(&e, "c", "s", &["10.9.0.1", "10.0.0.0/28"]).unwrap_err();
    pool(&e, "c", "s", &["10.9.0.1", "10.0.0.200"]).unwrap();
    let status = e.pool_status("c").unwrap();
    assert_eq!(
        status.v4_available_ip_range, "10.0.0.200",
        "entries outside the subnet have no effect"
    );
    assert!(matches!(
        pool(&e, "a", "other", &["10.0.0.1"]).unwrap_err(),
        EngineError::PoolSubnetChanged { .. }
    ));
    assert!(matches!(
        pool(&e, "d", "s", &["10.0.0.300"]).unwrap_err(),
        EngineError::InvalidPool { .. }
    ));
}

/// §8.3.3: a dual-stack pool with one address per family.
#[test]
fn e2e_requested_family_from_dual_stack_pool() {
    let e = engine();
    subnet(&e, "d", "10.0.0.0/24,fd00::/120", &[]);
    pool(&e, "p", "d", &["10.0.0.50", "fd00::50"]).unwrap();
    let status = e.pool_status("p").unwrap();
    assert_eq!(
        (
            status.v4_available_ip_range.as_str(),
            status.v6_available_ip_range.as_str()
        ),
        ("10.0.0.50", "fd00::50")
    );
    let mut v6 = from_pools("d", "a", &["p"]);
    v6.family = FamilyRequest::Only(Family::V6);
    let lease = e.claim(&v6).unwrap();
    assert_eq!(
        (lease.v4, lease.v6.unwrap().to_string()),
        (None, "fd00::50".into())
    );
    let mut v4 = from_pools("d", "b", &["p"]);
    v4.family = FamilyRequest::Only(Family::V4);
    assert_eq!(e.claim(&v4).unwrap().v4.unwrap().to_string(), "10.0.0.50");
}

/// §8.3.14/15/20: pools in order; exhaustion blocks, no fall-back.
#[test]
fn e2e_pools_in_order_and_exhaustion_blocks() {
    let e = engine();
    subnet(&e, "s", "10.0.0.0/24", &[]);
    pool(&e, "one", "s", &["10.0.0.10"]).unwrap();
    pool(&e, "two", "s", &["10.0.0.20"]).unwrap();
    assert_eq!(v4(&e, &from_pools("s", "a", &["one", "two"])), "10.0.0.10");
    assert_eq!(v4(&e, &from_pools("s", "b", &["one", "two"])), "10.0.0.20");
    let err = e.claim(&from_pools("s", "c", &["one", "two"])).unwrap_err();
    assert_eq!(
        err.to_string(),
        "no available IPv4 address in ippool(s) one,two of subnet s for c.ns"
    );
    assert_eq!(e.lease(&key("c")), None);
    subnet(&e, "t", "10.1.0.0/24", &[]);
    assert!(matches!(
        e.claim(&from_pools("t", "d", &["one"])).unwrap_err(),
        EngineError::PoolInOtherSubnet { .. }
    ));
    assert!(matches!(
        e.claim(&from_pools("s", "d", &["nope"])).unwrap_err(),
        EngineError::UnknownPool { .. }
    ));
}

/// §8.3.16 "should not allocate newly excluded addresses from a named IPPool".
#[test]
fn e2e_newly_excluded_pool_address_is_not_allocated() {
    let e = engine();
    subnet(&e, "s", "10.0.0.0/24", &[]);
    pool(&e, "p", "s", &["10.0.0.40"]).unwrap();
    subnet(&e, "s", "10.0.0.0/24", &["10.0.0.40"]);
    let status = e.pool_status("p").unwrap();
    assert_eq!((status.v4_available_ips, status.v4_using_ips), (0, 0));
    assert_eq!(status.v4_available_ip_range, "");
    assert_eq!(
        e.claim(&from_pools("s", "a", &["p"])).unwrap_err().reason(),
        "NoAvailableAddress"
    );
}

/// §8.3.17 "should not make an excluded IPPool address available after release".
#[test]
fn e2e_excluded_pool_address_not_available_after_release() {
    let e = engine();
    subnet(&e, "s", "10.0.0.0/24", &[]);
    pool(&e, "p", "s", &["10.0.0.40"]).unwrap();
    e.claim(&from_pools("s", "a", &["p"])).unwrap();
    assert!(
        e.upsert_subnet(&SubnetSpec {
            name: "s".into(),
            cidr_block: "10.0.0.0/24".into(),
            exclude_ips: vec!["10.0.0.40".into()],
            ..SubnetSpec::default()
        })
        .unwrap()
        .is_empty()
    );
    let status = e.pool_status("p").unwrap();
    assert_eq!((status.v4_available_ips, status.v4_using_ips), (0, 1));
    release(&e, "a");
    let status = e.pool_status("p").unwrap();
    assert_eq!((status.v4_available_ips, status.v4_using_ips), (0, 0));
    assert_eq!(status.v4_available_ip_range, "");
}

/// §8.3.18: static list addresses inside a named pool count for that pool.
#[test]
fn e2e_static_list_addresses_are_accounted_to_their_pool() {
    let e = engine();
    subnet(&e, "s", "10.0.0.0/24", &[]);
    pool(&e, "p", "s", &["10.0.0.60..10.0.0.64"]).unwrap();
    subnet(&e, "s", "10.0.0.0/24", &["10.0.0.200"]);
    let addrs = "10.0.0.60,10.0.0.61,10.0.0.62,10.0.0.63,10.0.0.64";
    for i in 0..5 {
        e.claim(&list("s", &format!("d{i}"), addrs, ListPick::FirstFree))
            .unwrap();
    }
    let status = e.pool_status("p").unwrap();
    assert_eq!((status.v4_available_ips, status.v4_using_ips), (0, 5));
}

/// §8.3.19 "should return deleted IPPool addresses to the default pool".
#[test]
fn e2e_deleted_pool_addresses_return_to_default_pool() {
    let e = engine();
    subnet(&e, "s", "10.0.0.0/29", &[]);
    pool(&e, "p", "s", &["10.0.0.2"]).unwrap();
    assert_eq!(v4(&e, &dynamic("s", "a")), "10.0.0.3");
    e.remove_pool("p").unwrap();
    assert_eq!(v4(&e, &static_ip("s", "b", "10.0.0.2")), "10.0.0.2");
    assert!(e.pool_status("p").is_err());
}

/// Kube-OVN keeps a nic's old address when its pool changes (§9.2); the
/// engine moves it into the pool now asked for.
#[test]
fn changing_the_requested_pool_moves_the_nic() {
    let e = engine();
    subnet(&e, "s", "10.0.0.0/24", &[]);
    pool(&e, "old", "s", &["10.0.0.10"]).unwrap();
    pool(&e, "new", "s", &["10.0.0.20"]).unwrap();
    assert_eq!(v4(&e, &from_pools("s", "sts-0", &["old"])), "10.0.0.10");
    assert_eq!(v4(&e, &from_pools("s", "sts-0", &["new"])), "10.0.0.20");
    assert_eq!(e.pool_status("old").unwrap().v4_available_ips, 1);
}

// ---------- MACs ----------

/// An RNG replaying fixed bytes, to force MAC collisions.
struct Scripted(Vec<u8>, usize);

impl rand::RngCore for Scripted {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0; 4];
        self.fill_bytes(&mut b);
        u32::from_le_bytes(b)
    }
    fn next_u64(&mut self) -> u64 {
        let mut b = [0; 8];
        self.fill_bytes(&mut b);
        u64::from_le_bytes(b)
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for byte in dest {
            *byte = self.0[self.1 % self.0.len()];
            self.1 += 1;
        }
    }
}

#[test]
fn random_macs_are_local_unicast_and_unique_across_subnets() {
    // Eight bytes seed the generation counter, then two colliding MAC
    // draws and a third, different one.
    let script = [&[0u8; 8][..], &[0x11; 6], &[0x11; 6], &[0x22; 6]].concat();
    let e = Engine::with_rng(Scripted(script, 0));
    subnet(&e, "a", "10.0.0.0/24", &[]);
    subnet(&e, "b", "10.1.0.0/24", &[]);
    let first = e.claim(&dynamic("a", "x")).unwrap().mac.unwrap();
    let second = e.claim(&dynamic("b", "y")).unwrap().mac.unwrap();
    assert_eq!(first.to_string(), "12:11:11:11:11:11");
    assert_eq!(
        second.to_string(),
        "22:22:22:22:22:22",
        "the colliding draw was retried"
    );
    for mac in [first, second] {
        assert!(mac.is_locally_administered() && !mac.is_multicast());
    }
    let seeded = engine();
    subnet(&seeded, "s", "10.0.0.0/16", &[]);
    let mut seen = std::collections::HashSet::new();
    for i in 0..2000 {
        let mac = seeded
            .claim(&dynamic("s", &format!("p{i}")))
            .unwrap()
            .mac
            .unwrap();
        assert!(mac.is_locally_administered() && !mac.is_multicast());
        assert!(seen.insert(mac));
    }
}

#[test]
fn static_mac_conflicts_name_the_holder_across_subnets_and_gateways() {
    let e = engine();
    subnet(&e, "a", "10.0.0.0/24", &[]);
    e.upsert_subnet(&SubnetSpec {
        name: "b".into(),
        cidr_block: "10.1.0.0/24".into(),
        gateway_mac: Some(MacAddress::parse("0a:00:00:00:00:01").unwrap()),
        ..SubnetSpec::default()
    })
    .unwrap();
    let mut first = dynamic("a", "x");
    first.mac = MacRequest::Static(MacAddress::parse("0A:00:00:00:00:42").unwrap());
    e.claim(&first).unwrap();
    let mut second = dynamic("b", "y");
    second.mac = MacRequest::Static(MacAddress::parse("0a-00-00-00-00-42").unwrap());
    let err = e.claim(&second).unwrap_err();
    assert_eq!(
        err.to_string(),
        "MAC address 0a:00:00:00:00:42 is held by x.ns in subnet a; y.ns cannot take it"
    );
    assert_eq!(e.lease(&key("y")), None, "nothing changed");
    second.mac = MacRequest::Static(MacAddress::parse("0a:00:00:00:00:01").unwrap());
    let err = e.claim(&second).unwrap_err();
    assert!(err.to_string().contains("the gateway of subnet b"), "{err}");
    assert_eq!(err.reason(), "AddressConflict");
}

#[test]
fn macs_stay_with_the_nic_and_are_freed_on_release() {
    let e = engine();
    subnet(&e, "s", "10.0.0.0/24", &[]);
    let lease = e.claim(&dynamic("s", "vm")).unwrap();
    let mac = lease.mac.unwrap();
    assert_eq!(e.claim(&dynamic("s", "vm")).unwrap().mac, Some(mac));
    assert!(matches!(e.mac_holder(&mac), Some(MacHolder::Nic { .. })));
    release(&e, "vm");
    assert_eq!(e.mac_holder(&mac), None);
    let mut reuse = dynamic("s", "other");
    reuse.mac = MacRequest::Static(mac);
    assert_eq!(e.claim(&reuse).unwrap().mac, Some(mac));
    let mut none = dynamic("s", "ipam-only");
    none.mac = MacRequest::None;
    assert_eq!(e.claim(&none).unwrap().mac, None);
}

// ---------- Subnet updates ----------

#[test]
fn shrinking_a_cidr_reports_stranded_holders_and_keeps_them() {
    let e = engine();
    subnet(&e, "s", "10.0.0.0/24", &[]);
    for i in 0..3 {
        e.claim(&dynamic("s", &format!("p{i}"))).unwrap();
    }
    e.claim(&static_ip("s", "far", "10.0.0.200")).unwrap();
    let stranded = e
        .upsert_subnet(&SubnetSpec {
            name: "s".into(),
            cidr_block: "10.0.0.0/25".into(),
            ..SubnetSpec::default()
        })
        .unwrap();
    assert_eq!(stranded.len(), 1);
    assert_eq!(
        (stranded[0].key.as_str(), stranded[0].address),
        ("far.ns", ip("10.0.0.200"))
    );
    assert_eq!(stranded[0].reason, StrandedReason::OutsideCidr);
    assert!(e.lease(&key("far")).is_some(), "never silently forgotten");
    assert_eq!(e.subnet_status("s").unwrap().v4_using_ips, 3);
    let back = e
        .upsert_subnet(&SubnetSpec {
            name: "s".into(),
            cidr_block: "10.0.0.0/24".into(),
            ..SubnetSpec::default()
        })
        .unwrap();
    assert!(back.is_empty());
    assert_eq!(
        e.claim(&static_ip("s", "x", "10.0.0.200"))
            .unwrap_err()
            .reason(),
        "AddressConflict"
    );
    let moved = e.claim(&dynamic("s", "far")).unwrap();
    assert_eq!(moved.v4, Some("10.0.0.200".parse().unwrap()));
}

/// user-pain-points A6: new excludes over used addresses must not re-free them.
#[test]
fn excluding_held_addresses_keeps_them_held() {
    let e = engine();
    subnet(&e, "s", "10.0.0.0/24", &[]);
    for i in 0..3 {
        e.claim(&dynamic("s", &format!("p{i}"))).unwrap();
    }
    let stranded = e
        .upsert_subnet(&SubnetSpec {
            name: "s".into(),
            cidr_block: "10.0.0.0/24".into(),
            exclude_ips: vec!["10.0.0.2..10.0.0.3".into()],
            ..SubnetSpec::default()
        })
        .unwrap();
    assert!(stranded.is_empty());
    let status = e.subnet_status("s").unwrap();
    assert!(!status.v4_available_ip_range.contains("10.0.0.3"));
    assert_eq!(v4(&e, &dynamic("s", "new")), "10.0.0.5");
    assert_eq!(
        e.claim(&static_ip("s", "x", "10.0.0.2"))
            .unwrap_err()
            .reason(),
        "AddressConflict"
    );
}

#[test]
fn moving_the_gateway_onto_a_holder_strands_it_and_families_can_go() {
    let e = engine();
    subnet(&e, "s", "10.0.0.0/24,fd00::/120", &[]);
    e.claim(&dynamic("s", "a")).unwrap();
    let stranded = e
        .upsert_subnet(&SubnetSpec {
            name: "s".into(),
            cidr_block: "10.0.0.0/24,fd00::/120".into(),
            gateway: "10.0.0.2".into(),
            ..SubnetSpec::default()
        })
        .unwrap();
    assert_eq!(stranded.len(), 1);
    assert_eq!(stranded[0].reason, StrandedReason::IsGateway);
    let stranded = e
        .upsert_subnet(&SubnetSpec {
            name: "s".into(),
            cidr_block: "10.0.0.0/24".into(),
            ..SubnetSpec::default()
        })
        .unwrap();
    assert_eq!(stranded.len(), 1);
    assert_eq!(
        (stranded[0].address, stranded[0].reason),
        (ip("fd00::2"), StrandedReason::FamilyRemoved)
    );
    assert_eq!(e.stranded("s").unwrap(), stranded);
}

#[test]
fn a_subnet_with_holders_cannot_be_removed() {
    let e = engine();
    subnet(&e, "s", "10.0.0.0/24", &[]);
    e.claim(&dynamic("s", "a")).unwrap();
    let err = e.remove_subnet("s").unwrap_err();
    assert_eq!(
        err.to_string(),
        "subnet s still has 1 holder(s), for example a.ns"
    );
    release(&e, "a");
    e.remove_subnet("s").unwrap();
    assert!(matches!(
        e.claim(&dynamic("s", "a")).unwrap_err(),
        EngineError::UnknownSubnet { .. }
    ));
}

// ---------- Rebuild ----------

fn record(subnet: &str, name: &str, v4: &str, mac: Option<&str>, source: RecordSource) -> Record {
    let addrs: DualAddress = parse_ip_address(v4).unwrap();
    Record {
        lease: portkeeper_engine::Lease {
            subnet: subnet.into(),
            key: key(name),
            uid: format!("uid-{name}"),
            generation: 1,
            v4: addrs.v4,
            v6: addrs.v6,
            mac: mac.map(|m| MacAddress::parse(m).unwrap()),
        },
        source,
    }
}

#[test]
fn rebuild_from_a_snapshot_reproduces_the_state() {
    let e = engine();
    subnet(
        &e,
        "s",
        "10.0.0.0/24,fd00::/120",
        &["10.0.0.100..10.0.0.110"],
    );
    pool(&e, "p", "s", &["10.0.0.50..10.0.0.59"]).unwrap();
    for i in 0..20 {
        e.claim(&dynamic("s", &format!("p{i}"))).unwrap();
    }
    let err = e.claim(&from_pools("s", "pooled", &["p"])).unwrap_err();
    assert_eq!(
        err.to_string(),
        "no available IPv6 address in ippool(s) p of subnet s for pooled.ns",
        "a v4-only pool cannot serve both families of a dual-stack nic"
    );
    let mut pooled = from_pools("s", "pooled", &["p"]);
    pooled.family = FamilyRequest::Only(Family::V4);
    e.claim(&pooled).unwrap();
    e.claim(&static_ip("s", "pinned", "10.0.0.105")).unwrap();
    release(&e, "p3");
    let snapshot = e.snapshot();
    let (rebuilt, report) = Engine::rebuild(&snapshot, StdRng::seed_from_u64(1));
    assert_eq!(report, Default::default());
    assert_eq!(rebuilt.snapshot(), snapshot);
    assert_eq!(
        rebuilt.subnet_status("s").unwrap(),
        e.subnet_status("s").unwrap()
    );
    assert_eq!(
        rebuilt.pool_status("p").unwrap(),
        e.pool_status("p").unwrap()
    );
    let next = rebuilt.claim(&dynamic("s", "new")).unwrap();
    assert!(
        next.generation
            > snapshot
                .records
                .iter()
                .map(|r| r.lease.generation)
                .max()
                .unwrap()
    );
}

fn one_subnet(records: Vec<Record>) -> Snapshot {
    Snapshot {
        subnets: vec![SubnetSpec {
            name: "s".into(),
            cidr_block: "10.0.0.0/24".into(),
            ..SubnetSpec::default()
        }],
        pools: vec![],
        records,
    }
}

#[test]
fn rebuild_reports_both_records_of_a_conflict_whatever_the_input_order() {
    let mac = "0a:00:00:00:00:0a";
    let a = record(
        "s",
        "pod-a",
        "10.0.0.10",
        Some(mac),
        RecordSource::PodAnnotation,
    );
    let b = record("s", "pod-b", "10.0.0.10", None, RecordSource::OvnPort);
    let c = record(
        "s",
        "pod-c",
        "10.0.0.11",
        Some(mac),
        RecordSource::IpResource,
    );
    let d = record("s", "pod-d", "10.0.0.20", None, RecordSource::PodAnnotation);
    let f = record("s", "pod-f", "10.0.0.20", None, RecordSource::OvnPort);
    let forward = vec![a.clone(), b.clone(), c.clone(), d.clone(), f.clone()];
    let mut backward = forward.clone();
    backward.reverse();
    let mut reports = Vec::new();
    for order in [forward, backward] {
        let (engine, report) = Engine::rebuild(&one_subnet(order), StdRng::seed_from_u64(1));
        assert_eq!(report.conflicts.len(), 2, "{report:?}");
        assert_eq!(
            (&report.conflicts[0].kept, &report.conflicts[0].rejected),
            (&c, &a)
        );
        assert_eq!(
            report.conflicts[0].on,
            ConflictOn::Mac(MacAddress::parse(mac).unwrap())
        );
        assert_eq!(
            (&report.conflicts[1].kept, &report.conflicts[1].rejected),
            (&d, &f)
        );
        assert_eq!(report.conflicts[1].on, ConflictOn::Address(ip("10.0.0.20")));
        assert_eq!(
            engine.lease(&key("pod-a")),
            None,
            "a lost its MAC to c, so it holds nothing"
        );
        assert_eq!(
            engine.lease(&key("pod-b")).unwrap().v4.unwrap().to_string(),
            "10.0.0.10"
        );
        reports.push((report, engine.snapshot()));
    }
    assert_eq!(reports[0], reports[1], "deterministic");
}

#[test]
fn one_nic_seen_by_several_sources_is_one_holder() {
    let records = [
        RecordSource::OvnPort,
        RecordSource::IpResource,
        RecordSource::PodAnnotation,
    ]
    .map(|source| record("s", "web-0", "10.0.0.9", Some("0a:00:00:00:00:09"), source))
    .to_vec();
    let (engine, report) = Engine::rebuild(&one_subnet(records), StdRng::seed_from_u64(1));
    assert_eq!(report, Default::default());
    assert_eq!(engine.subnet_status("s").unwrap().v4_using_ips, 1);
    let mut moved = record("s", "web-0", "10.0.0.8", None, RecordSource::OvnPort);
    moved.lease.uid = "other".into();
    let kept = record("s", "web-0", "10.0.0.9", None, RecordSource::IpResource);
    let (_, report) = Engine::rebuild(
        &one_subnet(vec![moved.clone(), kept.clone()]),
        StdRng::seed_from_u64(1),
    );
    assert_eq!(report.conflicts.len(), 1);
    assert_eq!(
        (
            &report.conflicts[0].kept,
            &report.conflicts[0].rejected,
            &report.conflicts[0].on
        ),
        (&kept, &moved, &ConflictOn::Key)
    );
}

/// kube-ovn#4304 (user-pain-points A1): a pod deleted while the controller
/// was down still has its OVN port; seeding from ports keeps its address
/// held, so a new pod asking for it gets a clear conflict, not a duplicate.
#[test]
fn ovn_port_records_keep_addresses_of_pods_deleted_while_down() {
    let stale = record("s", "gone", "10.0.0.10", None, RecordSource::OvnPort);
    let mut snapshot = one_subnet(vec![stale]);
    snapshot.records.push(record(
        "s",
        "unknown-subnet",
        "10.0.0.1",
        None,
        RecordSource::IpResource,
    ));
    snapshot.records[1].lease.subnet = "nope".into();
    let (engine, report) = Engine::rebuild(&snapshot, StdRng::seed_from_u64(1));
    assert_eq!(report.unplaced.len(), 1);
    assert!(matches!(
        report.unplaced[0].1,
        EngineError::UnknownSubnet { .. }
    ));
    let err = engine
        .claim(&static_ip("s", "new", "10.0.0.10"))
        .unwrap_err();
    assert!(err.to_string().contains("held by gone.ns"), "{err}");
    assert_ne!(v4(&engine, &dynamic("s", "random")), "10.0.0.10");
}

// ---------- Concurrency and cost ----------

#[test]
fn concurrent_claims_in_many_subnets_never_share_an_address_or_mac() {
    let e = Arc::new(engine());
    for s in 0..4 {
        subnet(&e, &format!("s{s}"), &format!("10.{s}.0.0/22"), &[]);
    }
    let handles: Vec<_> = (0..8)
        .map(|t| {
            let e = Arc::clone(&e);
            std::thread::spawn(move || {
                let subnet = format!("s{}", t % 4);
                (0..250)
                    .map(|i| e.claim(&dynamic(&subnet, &format!("t{t}-{i}"))).unwrap())
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let leases: Vec<_> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let addrs: std::collections::HashSet<_> = leases.iter().map(|l| l.v4).collect();
    let macs: std::collections::HashSet<_> = leases.iter().map(|l| l.mac).collect();
    assert_eq!((addrs.len(), macs.len()), (2000, 2000));
    for s in 0..4 {
        assert_eq!(e.subnet_status(&format!("s{s}")).unwrap().v4_using_ips, 500);
    }
}

/// The issue's scale rule: a /64 with 1,000,000 holders works, in memory
/// proportional to holders (the bench `memory` measures the bytes).
#[test]
fn a_slash_64_holds_a_million_allocations() {
    let e = engine();
    subnet(&e, "big", "fd00:64::/64", &["fd00:64::100..fd00:64::1ff"]);
    let mut claim = dynamic("big", "x");
    claim.mac = MacRequest::None;
    for i in 0..1_000_000u32 {
        claim.key = NicKey::from(format!("p{i}.ns").as_str());
        e.claim(&claim).unwrap();
    }
    let status = e.subnet_status("big").unwrap();
    assert_eq!(status.v6_using_ips, 1_000_000);
    assert_eq!(
        status.v6_available_ips,
        (1u128 << 64) - 2 - 1 - 256 - 1_000_000
    );
    assert_eq!(
        status.v6_using_ip_range,
        "fd00:64::2-fd00:64::ff,fd00:64::200-fd00:64::f:4341"
    );
}
