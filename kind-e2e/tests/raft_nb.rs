//! The 3-server raft NB option of the local cluster: it forms a cluster, keeps accepting writes
//! when the leader stops, and the stopped server catches up when it starts again. Without root it
//! fails, unless `PORTKEEPER_ALLOW_SKIP=1` lets it skip.

use std::process::Command;
use std::time::{Duration, Instant};

use kind_e2e::{Cluster, ClusterOptions};

/// Runs ovn-nbctl until it succeeds: a client must retry while raft elects a new leader.
fn nbctl_until_ok(db: &str, args: &[&str], within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let out = Command::new("ovn-nbctl")
            .arg(format!("--db={db}"))
            .arg("--timeout=5")
            .args(args)
            .output()
            .expect("ovn-nbctl runs");
        if out.status.success() {
            return String::from_utf8_lossy(&out.stdout).into_owned();
        }
        assert!(
            Instant::now() < deadline,
            "ovn-nbctl {args:?} kept failing: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn raft_nb_survives_its_leader_stopping() {
    if !kind_e2e::harness::privileged("the raft NB e2e") {
        return;
    }
    let cluster = Cluster::up(ClusterOptions {
        nodes: 1,
        raft: true,
        node_agent: Some(env!("CARGO_BIN_EXE_node-agent").into()),
        ..ClusterOptions::default()
    })
    .expect("cluster starts");
    let remotes: Vec<String> = cluster.nb_remote().split(',').map(str::to_string).collect();
    assert_eq!(
        remotes.len(),
        3,
        "three NB servers: {}",
        cluster.nb_remote()
    );
    let all = cluster.nb_remote().to_string();
    nbctl_until_ok(&all, &["ls-add", "before"], Duration::from_secs(30));

    let leader = (1..=3)
        .find(|&k| cluster.nb_raft_role(k) == "leader")
        .expect("one server leads");
    cluster.stop(&format!("nb-{leader}")).expect("leader stops");
    nbctl_until_ok(&all, &["ls-add", "during"], Duration::from_secs(30));
    let new_leader = (1..=3).find(|&k| k != leader && cluster.nb_raft_role(k) == "leader");
    assert!(
        new_leader.is_some(),
        "another server took over from nb-{leader}"
    );

    cluster
        .start(&format!("nb-{leader}"))
        .expect("old leader starts again");
    let rejoined = &remotes[leader - 1];
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let list = nbctl_until_ok(
            rejoined,
            &["--no-leader-only", "ls-list"],
            Duration::from_secs(30),
        );
        if list.contains("(before)") && list.contains("(during)") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "nb-{leader} did not catch up: {list}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    cluster.down().expect("cluster tears down");
}
