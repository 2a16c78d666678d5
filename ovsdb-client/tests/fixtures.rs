//! The fixtures themselves work against real servers: each starts, answers `ovn-nbctl`, and is
//! gone (process and run folder) after drop.

mod support;

use std::path::Path;

use support::{Cluster, SslServer, Standalone};

fn process_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|stat| stat.contains(") Z "))
}

#[test]
fn standalone_serves_nbctl_and_cleans_up() {
    let nb = Standalone::start();
    nb.nbctl(&["ls-add", "fixture-ls"]);
    let listed = support::nbctl(&nb.tcp, &["ls-list"]);
    assert!(listed.contains("fixture-ls"), "{listed}");
    let (pid, dir) = (nb.server.pid(), nb.dir().to_owned());
    drop(nb);
    assert!(
        !process_exists(pid),
        "ovsdb-server {pid} survived the fixture"
    );
    assert!(
        !dir.exists(),
        "run folder {} survived the fixture",
        dir.display()
    );
}

#[test]
fn cluster_elects_a_new_leader_after_kill_and_rejoins() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.leader();
    cluster.nbctl(&["ls-add", "before-kill"]);
    let old_pid = cluster.process(leader).pid();
    cluster.kill(leader);
    assert!(!process_exists(old_pid));
    let new_leader = cluster.wait_for_leader();
    assert_ne!(new_leader, leader);
    cluster.nbctl(&["ls-add", "after-kill"]);
    cluster.restart(leader);
    cluster.wait_for_leader();
    // The restarted member catches up with what was committed while it was down.
    let restarted = support::nbctl(
        &cluster.members[leader].unix(),
        &["--no-leader-only", "ls-list"],
    );
    assert!(restarted.contains("before-kill"), "{restarted}");
    let all = cluster.nbctl(&["ls-list"]);
    assert!(
        all.contains("before-kill") && all.contains("after-kill"),
        "{all}"
    );
}

#[test]
fn ssl_server_accepts_the_test_client_certificate() {
    let nb = SslServer::start();
    nb.nbctl(&["ls-add", "over-ssl"]);
    assert!(nb.nbctl(&["ls-list"]).contains("over-ssl"));
}

#[test]
fn ssl_server_rejects_a_client_trusting_another_ca() {
    let nb = SslServer::start();
    let output = std::process::Command::new("ovn-nbctl")
        .arg(format!("--db={}", nb.remote))
        .arg("--timeout=3")
        .arg(format!("--private-key={}", nb.certs.client_key.display()))
        .arg(format!("--certificate={}", nb.certs.client_cert.display()))
        .arg(format!("--ca-cert={}", nb.certs.other_ca_cert.display()))
        .arg("ls-list")
        .output()
        .expect("run ovn-nbctl");
    assert!(
        !output.status.success(),
        "a client trusting an unrelated CA connected"
    );
}
