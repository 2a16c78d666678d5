//! The runtime against a real three-server raft cluster: read-your-writes through a
//! follower, and a cache that stays equal to the server across repeated leader
//! changes, with an event stream that accounts for every change.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use ovsdb_client::Client;
use ovsdb_client::protocol::datum::{Atom, Value};
use ovsdb_client::protocol::operation::{Condition, Insert, Operation};
use ovsdb_client::protocol::row::Row;
use ovsdb_client::runtime::cache::Event;
use ovsdb_client::runtime::transaction::wait_absent;
use support::{Cluster, NB_DB};
use tokio::time::Instant;

const LS: &str = "Logical_Switch";

fn create(name: &str) -> Vec<Operation> {
    vec![
        wait_absent(LS, vec![Condition::eq("name", Atom::string(name))]),
        Insert::new(LS, Row::new().with("name", Atom::string(name))).into(),
    ]
}

fn name_of(row: &Row) -> String {
    match row.get("name").and_then(Value::as_atom) {
        Some(atom) => atom.as_str().unwrap_or_default().to_owned(),
        None => String::new(),
    }
}

fn cached_names(client: &Client) -> BTreeSet<String> {
    client.cache().rows(LS).iter().map(|r| name_of(r)).collect()
}

fn server_names(cluster: &Cluster) -> BTreeSet<String> {
    cluster
        .nbctl(&["--bare", "--columns=name", "list", "logical_switch"])
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_through_a_follower_read_their_own_writes() {
    let cluster = Cluster::start(3);
    let leader = cluster.leader();
    let follower = (leader + 1) % 3;
    let client = Client::builder(&cluster.members[follower].remote(), NB_DB)
        .leader_only(false)
        .connect()
        .await
        .expect("connect to a follower");
    let server = client.server_database().expect("clustered server row");
    assert!(server.is_clustered() && !server.leader, "{server:?}");

    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move {
                let results = client
                    .transact(&create(&format!("f-{i}")))
                    .await
                    .expect("transact");
                let uuid = results[1].uuid().expect("inserted");
                client.cache().get(LS, uuid).is_some()
            })
        })
        .collect();
    for task in tasks {
        assert!(
            task.await.unwrap(),
            "a committed row was missing from the cache on return"
        );
    }
    assert_eq!(cached_names(&client).len(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_only_refuses_a_lone_follower() {
    let cluster = Cluster::start(3);
    let follower = (cluster.leader() + 1) % 3;
    let err = Client::builder(&cluster.members[follower].remote(), NB_DB)
        .connect_timeout(Duration::from_secs(2))
        .backoff(Duration::from_millis(50), Duration::from_millis(200))
        .connect()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not the cluster leader"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_matches_the_server_after_every_leader_change() {
    let mut cluster = Cluster::start(3);
    let client = Client::builder(&cluster.remotes(), NB_DB)
        .backoff(Duration::from_millis(50), Duration::from_millis(500))
        .request_timeout(Duration::from_secs(30))
        .connect()
        .await
        .expect("connect");
    let mut events = client.subscribe();
    let mut from_events = BTreeSet::new();
    let mut created = 0;
    for round in 0..3 {
        let leader = cluster.leader();
        // Writes in flight while the leader dies: each ends committed or retriable,
        // and the guarded retry never duplicates.
        let writers: Vec<_> = (0..50)
            .map(|i| {
                let client = client.clone();
                let name = format!("r{round}-{i}");
                tokio::spawn(async move {
                    let deadline = Instant::now() + Duration::from_secs(60);
                    match client
                        .transact_with_retry(deadline, |_| create(&name))
                        .await
                    {
                        Ok(_) => true,
                        // An earlier attempt committed before the connection dropped.
                        Err(e) if e.is_precondition_failed() => true,
                        Err(e) => panic!("{name}: {e}"),
                    }
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(20)).await;
        cluster.kill(leader);
        for writer in writers {
            assert!(writer.await.unwrap());
        }
        created += 50;
        cluster.restart(leader);
        client
            .wait_connected(Duration::from_secs(30))
            .await
            .expect("reconnected");
        assert!(client.server_database().is_some_and(|db| db.leader));

        // Drain events; they must account for exactly what the cache holds.
        while let Some(event) = events.try_recv() {
            match event {
                Event::Insert { table, row } if &*table == LS => {
                    from_events.insert(name_of(&row));
                }
                Event::Delete { table, row } if &*table == LS => {
                    from_events.remove(&name_of(&row));
                }
                Event::Lagged { missed } => panic!("lagged by {missed}"),
                _ => {}
            }
        }
        let cached = cached_names(&client);
        assert_eq!(
            cached.len(),
            created,
            "round {round}: no row lost or duplicated"
        );
        assert_eq!(
            cached,
            server_names(&cluster),
            "round {round}: cache equals the server"
        );
        assert_eq!(
            from_events, cached,
            "round {round}: events account for the cache"
        );
    }
    let m = client.metrics();
    assert!(m.reconnects() >= 3, "{m:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_a_member_restarts_on_its_database_file() {
    let mut cluster = Cluster::start(3);
    let member = (cluster.leader() + 1) % 3;
    cluster.nbctl(&["ls-add", "stays", "--", "ls-add", "goes"]);
    let client = Client::builder(&cluster.members[member].remote(), NB_DB)
        .leader_only(false)
        .backoff(Duration::from_millis(50), Duration::from_millis(200))
        .connect()
        .await
        .expect("connect");
    tokio::time::timeout(Duration::from_secs(10), async {
        while cached_names(&client).len() < 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("both switches cached");
    let mut events = client.subscribe();
    let before = client.metrics();

    // While the member is down, the others delete one switch and add another.
    cluster.kill(member);
    cluster.nbctl(&["ls-del", "goes", "--", "ls-add", "new"]);
    cluster.restart(member);
    client
        .wait_connected(Duration::from_secs(30))
        .await
        .expect("reconnected");

    let deadline = Instant::now() + Duration::from_secs(20);
    let (mut inserted, mut deleted, mut full) = (Vec::new(), Vec::new(), None);
    while full.is_none() || cached_names(&client) != server_names(&cluster) {
        let event = tokio::time::timeout_at(deadline, events.recv())
            .await
            .expect("the cache converges")
            .expect("stream open");
        match event {
            Event::Insert { row, .. } => inserted.push(name_of(&row)),
            Event::Delete { row, .. } => deleted.push(name_of(&row)),
            Event::Synced { full: f } => full = full.or(Some(f)),
            _ => {}
        }
    }
    assert!(
        deleted.contains(&"goes".to_owned()),
        "vanished row announced: {deleted:?}"
    );
    assert!(
        inserted.contains(&"new".to_owned()),
        "new row announced: {inserted:?}"
    );
    assert!(
        !inserted.contains(&"stays".to_owned()),
        "unchanged row not re-announced"
    );
    // A restarted server keeps no transaction history, so it answered found=false:
    // the cache was replaced, with a delete for the row that vanished meanwhile.
    assert_eq!(full, Some(true));
    let after = client.metrics();
    assert_eq!(after.connects, before.connects + 1);
    assert_eq!(after.full_resyncs, before.full_resyncs + 1);

    // That reload gave a valid resume point: once the restarted member has history
    // again, the next reconnect resumes with found=true and receives only a delta.
    cluster.nbctl(&["ls-add", "later"]);
    tokio::time::timeout(Duration::from_secs(10), async {
        while !cached_names(&client).contains("later") {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("later cached");
    client.reconnect("test");
    let synced = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match events.recv().await.expect("stream open") {
                Event::Synced { full } => break full,
                Event::Insert { row, .. } if name_of(&row) != "later" => {
                    panic!("a resume re-announced {}", name_of(&row))
                }
                _ => {}
            }
        }
    })
    .await
    .expect("resynced");
    assert!(!synced, "expected found=true");
    let resumed = client.metrics();
    assert_eq!(resumed.incremental_resyncs, after.incremental_resyncs + 1);
    assert_eq!(cached_names(&client), server_names(&cluster));
}
