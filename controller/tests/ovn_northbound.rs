//! The OVN adapter against a real ovsdb-server with the OVN Northbound schema, checked with
//! `ovn-nbctl` as a user would. The server is a child of the test, killed on drop; a server
//! that cannot start fails the test.

use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use std::collections::BTreeMap;

use ovsdb_client::runtime::group::GroupConfig;
use portkeeper_api::dhcp::Family;
use portkeeper_controller::ovn::{
    DhcpScope, DhcpSpec, Fence, Northbound, OvnNorthbound, PortSpec, SwitchSpec, WRITER_LOCK,
    port_spec,
};
use portkeeper_controller::term::Term;
use portkeeper_engine::MacAddress;

struct NbServer {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl NbServer {
    fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = dir.path().join("nb.db");
        let socket = dir.path().join("nb.sock");
        let schema = ["/usr/share/ovn/ovn-nb.ovsschema"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("OVN's NB schema (install ovn-central)");
        let status = Command::new("ovsdb-tool")
            .args(["create", db.to_str().unwrap(), schema])
            .status()
            .expect("run ovsdb-tool (install openvswitch-common)");
        assert!(status.success(), "ovsdb-tool create failed");
        let child = Command::new("ovsdb-server")
            .arg(format!("--remote=punix:{}", socket.display()))
            .arg("--log-file=".to_owned() + dir.path().join("nb.log").to_str().unwrap())
            .arg(format!("--unixctl={}", dir.path().join("ctl").display()))
            .arg("-vconsole:off")
            .arg(&db)
            .spawn()
            .expect("start ovsdb-server");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !socket.exists() {
            assert!(
                Instant::now() < deadline,
                "ovsdb-server did not create {socket:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        NbServer {
            child,
            socket,
            _dir: dir,
        }
    }

    fn remote(&self) -> String {
        format!("unix:{}", self.socket.display())
    }

    fn db(&self) -> PathBuf {
        self._dir.path().join("nb.db")
    }

    /// The database file's transactions as `ovsdb-tool show-log` prints them (with comments).
    fn transaction_log(&self) -> String {
        let log = Command::new("ovsdb-tool")
            .arg("show-log")
            .arg(self.db())
            .output()
            .expect("run ovsdb-tool show-log");
        String::from_utf8_lossy(&log.stdout).into_owned()
    }

    fn nbctl(&self, args: &[&str]) -> String {
        let out = Command::new("ovn-nbctl")
            .arg(format!("--db={}", self.remote()))
            .args(args)
            .output()
            .expect("run ovn-nbctl");
        assert!(
            out.status.success(),
            "ovn-nbctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }
}

impl Drop for NbServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn ready(nb: &OvnNorthbound) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !nb.ready() {
        assert!(Instant::now() < deadline, "northbound never became ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn switch(name: &str) -> SwitchSpec {
    SwitchSpec {
        name: name.into(),
        router: "ovn-cluster".into(),
        router_port: format!("ovn-cluster-{name}"),
        router_port_mac: MacAddress::parse("0a:58:0a:10:00:01").unwrap(),
        networks: vec!["10.16.0.1/16".into()],
    }
}

#[tokio::test]
async fn switches_ports_and_foreign_ports() {
    let server = NbServer::start();
    let nb = OvnNorthbound::start(&server.remote(), None, None).unwrap();
    ready(&nb).await;

    nb.ensure_switch(&switch("net1")).await.unwrap();
    nb.ensure_switch(&switch("net1")).await.unwrap();
    assert_eq!(
        server.nbctl(&["--bare", "--columns=name", "list", "Logical_Switch"]),
        "net1"
    );
    assert_eq!(
        server.nbctl(&[
            "get",
            "Logical_Router_Port",
            "ovn-cluster-net1",
            "mac",
            "networks"
        ]),
        "\"0a:58:0a:10:00:01\"\n[\"10.16.0.1/16\"]"
    );
    assert_eq!(
        server.nbctl(&["lsp-get-type", "net1-ovn-cluster"]),
        "router",
        "the switch is attached to the cluster router"
    );
    assert_eq!(
        nb.router_port_mac("ovn-cluster-net1").unwrap().to_string(),
        "0a:58:0a:10:00:01"
    );

    server.nbctl(&["lsp-add", "net1", "legacy"]);
    server.nbctl(&["lsp-set-addresses", "legacy", "0a:00:00:00:00:99 10.16.0.9"]);

    let spec = web_shop("net1", "0a:58:0a:10:00:02 10.16.0.2", false);
    nb.upsert_port(&spec).await.unwrap();
    assert_eq!(
        server.nbctl(&["lsp-get-addresses", "web.shop"]),
        "0a:58:0a:10:00:02 10.16.0.2"
    );
    let ids = server.nbctl(&["get", "Logical_Switch_Port", "web.shop", "external_ids"]);
    assert!(
        ids.contains("vendor=portkeeper")
            && ids.contains("pod=\"shop/web\"")
            && ids.contains("ls=net1"),
        "{ids}"
    );

    let on_switch = nb.ports_on_switch("net1");
    let legacy = on_switch
        .iter()
        .find(|p| p.name == "legacy")
        .expect("foreign port is listed");
    assert!(!legacy.is_ours());
    assert_eq!(
        legacy.ips().map(|i| i.to_string()).collect::<Vec<_>>(),
        ["10.16.0.9"]
    );
    assert!(nb.port("web.shop").unwrap().is_ours());

    // Options (where migration state lives) survive an update; port security is applied on request.
    server.nbctl(&["lsp-set-options", "web.shop", "requested-chassis=node1"]);
    let secured = web_shop("net1", "0a:58:0a:10:00:02 10.16.0.3", true);
    nb.upsert_port(&secured).await.unwrap();
    assert_eq!(
        server.nbctl(&["lsp-get-addresses", "web.shop"]),
        "0a:58:0a:10:00:02 10.16.0.3"
    );
    assert_eq!(
        server.nbctl(&["lsp-get-port-security", "web.shop"]),
        "0a:58:0a:10:00:02 10.16.0.3"
    );
    assert_eq!(
        server.nbctl(&["lsp-get-options", "web.shop"]),
        "requested-chassis=node1"
    );

    // A port moves when its subnet changes.
    nb.ensure_switch(&SwitchSpec {
        networks: vec!["10.17.0.1/24".into()],
        ..switch("net2")
    })
    .await
    .unwrap();
    let moved = web_shop("net2", "0a:58:0a:10:00:02 10.17.0.2", false);
    nb.upsert_port(&moved).await.unwrap();
    assert!(
        server
            .nbctl(&["lsp-get-ls", "web.shop"])
            .ends_with("(net2)")
    );

    nb.delete_port("web.shop").await.unwrap();
    nb.delete_port("web.shop").await.unwrap();
    assert!(nb.port("web.shop").is_none());
    assert_eq!(
        server.nbctl(&["lsp-list", "net2"]).lines().count(),
        1,
        "only the router port is left"
    );
    assert!(nb.port("legacy").is_some(), "the foreign port is untouched");
}

/// Polls `check` until it holds, failing after 20 s: the replica follows the server a moment later.
/// The port of pod `shop/web` on `switch`, as the pod reconciler writes it.
fn web_shop(switch: &str, addresses: &str, port_security: bool) -> PortSpec {
    port_spec(
        "web.shop",
        switch,
        "shop/web",
        addresses.into(),
        port_security,
    )
}

async fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn address_lookups_follow_changes_made_by_others() {
    let server = NbServer::start();
    let nb = OvnNorthbound::start(&server.remote(), None, None).unwrap();
    ready(&nb).await;
    nb.ensure_switch(&switch("net1")).await.unwrap();
    server.nbctl(&["ls-add", "other"]);

    // 200 ports from one ovn-nbctl transaction, as another system would add them.
    let mut args: Vec<String> = Vec::new();
    for i in 0..200 {
        let name = format!("p{i}");
        let addresses = format!("0a:00:00:00:01:{:02x} 10.16.1.{}", i, i + 1);
        args.extend(["--", "lsp-add", "net1", &name].map(String::from));
        args.extend(["--", "lsp-set-addresses", &name, &addresses].map(String::from));
    }
    server.nbctl(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let ip = |text: &str| text.parse::<std::net::IpAddr>().unwrap();
    let mac = |text: &str| MacAddress::parse(text).unwrap();
    eventually("200 ports indexed", || {
        nb.ip_holders("net1", ip("10.16.1.200")) == ["p199"]
    })
    .await;
    assert_eq!(
        nb.ports_on_switch("net1").len(),
        201,
        "200 + the router port"
    );
    assert_eq!(nb.mac_holders(mac("0a:00:00:00:01:05")), ["p5"]);
    assert!(
        nb.ip_holders("other", ip("10.16.1.6")).is_empty(),
        "an address counts on its own switch only"
    );

    // A port deleted, one moved to another switch, one readdressed: each lookup follows.
    server.nbctl(&["lsp-del", "p5"]);
    server.nbctl(&[
        "--",
        "lsp-del",
        "p6",
        "--",
        "lsp-add",
        "other",
        "p6",
        "--",
        "lsp-set-addresses",
        "p6",
        "0a:00:00:00:01:06 10.16.1.7",
    ]);
    server.nbctl(&["lsp-set-addresses", "p7", "0a:00:00:00:02:07 10.16.2.8"]);
    eventually("changes indexed", || {
        nb.port("p5").is_none()
            && nb.ip_holders("other", ip("10.16.1.7")) == ["p6"]
            && nb.ip_holders("net1", ip("10.16.2.8")) == ["p7"]
    })
    .await;
    assert!(nb.ip_holders("net1", ip("10.16.1.6")).is_empty());
    assert!(nb.ip_holders("net1", ip("10.16.1.7")).is_empty());
    assert!(nb.mac_holders(mac("0a:00:00:00:01:05")).is_empty());
    assert!(nb.mac_holders(mac("0a:00:00:00:01:07")).is_empty());
    assert_eq!(nb.mac_holders(mac("0a:00:00:00:02:07")), ["p7"]);
    assert_eq!(nb.port("p6").unwrap().switch, "other");
    assert_eq!(nb.ports().len(), 200, "199 on net1 + p6 + the router port");

    // portkeeper's own write of a port is visible to the next lookup without waiting.
    let spec = web_shop("net1", "0a:58:0a:10:00:02 10.16.0.2", false);
    nb.upsert_port(&spec).await.unwrap();
    assert_eq!(nb.ip_holders("net1", ip("10.16.0.2")), ["web.shop"]);
}

#[tokio::test]
async fn a_deleted_subnet_takes_only_portkeepers_objects() {
    let server = NbServer::start();
    let nb = OvnNorthbound::start(&server.remote(), None, None).unwrap();
    ready(&nb).await;
    nb.ensure_switch(&switch("net1")).await.unwrap();
    let spec = web_shop("net1", "0a:58:0a:10:00:02 10.16.0.2", false);
    nb.upsert_port(&spec).await.unwrap();
    // A switch and a router port of another system, named as portkeeper would name them.
    server.nbctl(&["ls-add", "theirs"]);
    server.nbctl(&[
        "lrp-add",
        "ovn-cluster",
        "ovn-cluster-theirs",
        "0a:00:00:00:00:aa",
        "10.99.0.1/24",
    ]);

    nb.delete_switch("net1", "ovn-cluster", "ovn-cluster-net1")
        .await
        .unwrap();
    nb.delete_switch("net1", "ovn-cluster", "ovn-cluster-net1")
        .await
        .unwrap();
    nb.delete_switch("theirs", "ovn-cluster", "ovn-cluster-theirs")
        .await
        .unwrap();
    assert_eq!(
        server.nbctl(&["--bare", "--columns=name", "list", "Logical_Switch"]),
        "theirs"
    );
    assert_eq!(
        server.nbctl(&["--bare", "--columns=name", "list", "Logical_Router_Port"]),
        "ovn-cluster-theirs"
    );
    assert_eq!(
        server.nbctl(&["--bare", "--columns=name", "list", "Logical_Switch_Port"]),
        "",
        "the switch's ports went with it"
    );
}

/// The fenced write path: a replica outside its term writes nothing; inside it, the replica's
/// transactions assert the writer lock, so once a new leader has stolen the lock a transaction of
/// the deposed one fails with `not owner` instead of committing; and the database log names the
/// replica of every transaction it committed.
#[tokio::test]
async fn a_deposed_writer_is_fenced_by_the_writer_lock() {
    deposed_writer_is_fenced(false).await;
}

/// The same with group commit: the lock's `assert` and the comment wrap every grouped
/// transaction.
#[tokio::test]
async fn a_deposed_grouped_writer_is_fenced_by_the_writer_lock() {
    deposed_writer_is_fenced(true).await;
}

/// `nb`, with group commit when `grouped`.
fn maybe_grouped(nb: OvnNorthbound, grouped: bool) -> OvnNorthbound {
    if grouped {
        nb.grouped(GroupConfig::default())
    } else {
        nb
    }
}

async fn deposed_writer_is_fenced(grouped: bool) {
    let server = NbServer::start();
    let standby = OvnNorthbound::start(
        &server.remote(),
        None,
        Some(Fence::new(Term::default(), "standby")),
    )
    .unwrap();
    let standby = maybe_grouped(standby, grouped);
    ready(&standby).await;
    let refused = standby.ensure_switch(&switch("net0")).await.unwrap_err();
    assert!(refused.to_string().contains("not the leader"), "{refused}");

    let term = Term::default();
    term.extend(tokio::time::Instant::now() + Duration::from_secs(600));
    let leader =
        OvnNorthbound::start(&server.remote(), None, Some(Fence::new(term, "old"))).unwrap();
    let leader = maybe_grouped(leader, grouped);
    ready(&leader).await;
    leader.ensure_switch(&switch("net1")).await.unwrap();

    let successor = ovsdb_client::Client::builder(&server.remote(), "OVN_Northbound")
        .connect()
        .await
        .unwrap();
    let _lock = successor.steal(WRITER_LOCK).await.unwrap();
    let fenced = leader.ensure_switch(&switch("net2")).await.unwrap_err();
    assert!(fenced.to_string().contains("not owner"), "{fenced}");
    assert_eq!(
        server.nbctl(&["--bare", "--columns=name", "list", "Logical_Switch"]),
        "net1",
        "neither the standby's nor the deposed leader's switch exists"
    );

    let log = server.transaction_log();
    let named: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("portkeeper-controller"))
        .collect();
    assert!(
        !named.is_empty()
            && named
                .iter()
                .all(|l| l.ends_with("\"portkeeper-controller old\"")),
        "{log}"
    );
}

/// Group commit through the seam: concurrent upserts of many pods go out in fewer transactions,
/// each lands as it would alone (checked with ovn-nbctl), and one racing a foreign writer that
/// creates its port first is rebuilt into an update without failing the others.
#[tokio::test]
async fn grouped_upserts_share_transactions_and_each_lands() {
    let server = NbServer::start();
    let term = Term::default();
    term.extend(tokio::time::Instant::now() + Duration::from_secs(600));
    let nb = OvnNorthbound::start(&server.remote(), None, Some(Fence::new(term, "grouped")))
        .unwrap()
        .grouped(GroupConfig::default());
    ready(&nb).await;
    nb.ensure_switch(&switch("net1")).await.unwrap();
    let before = nb.group_stats().unwrap();

    // The foreign port exists in NB before the burst but, written by another client a moment
    // ago, possibly not in this replica's cache yet.
    server.nbctl(&["lsp-add", "net1", "p7.ns"]);
    let specs: Vec<PortSpec> = (0..40)
        .map(|i| {
            port_spec(
                &format!("p{i}.ns"),
                "net1",
                &format!("ns/p{i}"),
                format!("0a:58:0a:10:01:{i:02x} 10.16.1.{i}"),
                false,
            )
        })
        .collect();
    let results = futures::future::join_all(specs.iter().map(|spec| nb.upsert_port(spec))).await;
    for (spec, result) in specs.iter().zip(&results) {
        assert!(result.is_ok(), "{}: {result:?}", spec.name);
        assert_eq!(
            server.nbctl(&["get", "Logical_Switch_Port", &spec.name, "addresses"]),
            format!("[\"{}\"]", spec.addresses),
        );
    }
    let stats = nb.group_stats().unwrap();
    let (writes, transactions) = (
        stats.members - before.members,
        stats.transactions - before.transactions,
    );
    assert!(writes >= 40, "{stats:?}");
    assert!(
        transactions < writes,
        "no write shared a transaction: {stats:?}"
    );
    // Every transaction is the fenced writer's.
    let log = server.transaction_log();
    assert!(log.contains("\"portkeeper-controller grouped\""), "{log}");
}

#[tokio::test]
async fn dhcp_rows_are_made_once_updated_in_place_linked_and_deleted() {
    let server = NbServer::start();
    let nb = OvnNorthbound::start(&server.remote(), None, None).unwrap();
    ready(&nb).await;
    nb.ensure_switch(&switch("net1")).await.unwrap();
    nb.upsert_port(&web_shop("net1", "0a:58:0a:10:00:05 10.16.0.5", false))
        .await
        .unwrap();
    let scope = DhcpScope {
        switch: "net1".into(),
        family: Family::V4,
        port: None,
    };
    let mut spec = DhcpSpec {
        scope: scope.clone(),
        cidr: "10.16.0.0/16".into(),
        options: BTreeMap::from([
            ("lease_time".to_owned(), "3600".to_owned()),
            ("router".to_owned(), "10.16.0.1".to_owned()),
            ("server_id".to_owned(), "169.254.0.254".to_owned()),
            ("server_mac".to_owned(), "0a:00:00:00:00:fe".to_owned()),
        ]),
    };
    let uuid = nb.ensure_dhcp(&spec).await.unwrap();
    assert_eq!(
        nb.ensure_dhcp(&spec).await.unwrap(),
        uuid,
        "one row per scope"
    );
    spec.options.insert("lease_time".into(), "60".into());
    assert_eq!(
        nb.ensure_dhcp(&spec).await.unwrap(),
        uuid,
        "updated in place"
    );
    assert_eq!(
        server.nbctl(&["--bare", "--columns=_uuid", "find", "DHCP_Options"]),
        uuid
    );
    assert_eq!(
        server.nbctl(&["get", "DHCP_Options", &uuid, "options:lease_time", "cidr"]),
        "\"60\"\n\"10.16.0.0/16\""
    );
    assert_eq!(
        server.nbctl(&["get", "DHCP_Options", &uuid, "external_ids"]),
        "{ls=net1, protocol=IPv4, vendor=portkeeper}"
    );
    assert_eq!(
        nb.dhcp_rows()
            .into_iter()
            .map(|r| (r.uuid, r.scope))
            .collect::<Vec<_>>(),
        vec![(uuid.clone(), scope)]
    );

    nb.link_dhcp("web.shop", Some(&uuid), None).await.unwrap();
    assert_eq!(
        server.nbctl(&["lsp-get-dhcpv4-options", "web.shop"]),
        format!("{uuid} (10.16.0.0/16)")
    );
    assert_eq!(
        nb.port("web.shop").unwrap().dhcpv4_options,
        Some(uuid.clone())
    );
    // A foreign row (another system's) is never reported as ours.
    server.nbctl(&["create", "DHCP_Options", "cidr=10.99.0.0/24"]);
    assert_eq!(nb.dhcp_rows().len(), 1);

    nb.delete_dhcp(std::slice::from_ref(&uuid)).await.unwrap();
    assert_eq!(server.nbctl(&["lsp-get-dhcpv4-options", "web.shop"]), "");
    assert_eq!(nb.port("web.shop").unwrap().dhcpv4_options, None);
    assert!(nb.dhcp_rows().is_empty());
    assert_eq!(
        server.nbctl(&["--bare", "--columns=cidr", "list", "DHCP_Options"]),
        "10.99.0.0/24"
    );
}
