//! `monitor_cond_change`, `monitor_cancel` and the server's `monitor_canceled`
//! against a real standalone ovsdb-server.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use ovsdb_client::Client;
use ovsdb_client::protocol::datum::Atom;
use ovsdb_client::protocol::operation::{Condition, Update};
use ovsdb_client::protocol::row::Row;
use ovsdb_client::runtime::cache::Event;
use support::{NB_DB, Standalone, nb_schema, run};
use tokio::time::Instant;

const LSP: &str = "Logical_Switch_Port";

async fn client(nb: &Standalone) -> Client {
    Client::builder(&nb.unix, NB_DB)
        .monitor("Logical_Switch", &[])
        .monitor(LSP, &[])
        .backoff(Duration::from_millis(10), Duration::from_millis(50))
        .connect()
        .await
        .expect("connect")
}

/// A server with switch `ls` holding port `p1`, and a client that monitors them.
async fn switch_with_one_port() -> (Standalone, Client) {
    let nb = Standalone::start();
    nb.nbctl(&["ls-add", "ls"]);
    nb.nbctl(&["lsp-add", "ls", "p1"]);
    let client = client(&nb).await;
    (nb, client)
}

/// The names of the ports in the cache.
fn cached_ports(client: &Client) -> BTreeSet<String> {
    client
        .cache()
        .rows(LSP)
        .iter()
        .filter_map(|row| row.get("name")?.as_atom()?.as_str().map(str::to_owned))
        .collect()
}

fn names(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| (*n).to_owned()).collect()
}

/// Waits (bounded) until the cache holds exactly the ports `want`.
async fn expect_ports(client: &Client, want: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while cached_ports(client) != names(want) {
        assert!(
            Instant::now() < deadline,
            "cache holds {:?}, expected {want:?}",
            cached_ports(client)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn name_is(name: &str) -> Condition {
    Condition::eq("name", Atom::string(name))
}

#[tokio::test]
async fn changing_conditions_updates_the_cache_and_survives_reconnection() {
    let nb = Standalone::start();
    nb.nbctl(&["ls-add", "ls"]);
    for port in ["p1", "p2", "p3"] {
        nb.nbctl(&["lsp-add", "ls", port]);
    }
    let client = client(&nb).await;
    assert_eq!(cached_ports(&client), names(&["p1", "p2", "p3"]));
    let mut events = client.subscribe();

    // Clauses are or-ed: p1 or p2. The row that left arrives as a delete, and the
    // cache shows it when the call returns.
    client
        .set_monitor_condition(LSP, vec![name_is("p1"), name_is("p2")])
        .await
        .expect("monitor_cond_change");
    assert_eq!(cached_ports(&client), names(&["p1", "p2"]));
    let event = events.try_recv().expect("an event for the row that left");
    assert!(
        matches!(&event, Event::Delete { row, .. } if row.get("name").and_then(|v| v.as_atom()?.as_str().map(str::to_owned)).as_deref() == Some("p3")),
        "{event:?}"
    );
    // Later changes follow the condition.
    nb.nbctl(&["lsp-add", "ls", "p4"]);
    nb.nbctl(&["set", LSP, "p1", "external_ids:x=y"]);
    let p1 = async {
        loop {
            let found = client.cache().rows(LSP).iter().any(|row| {
                row.get("external_ids")
                    .and_then(|v| v.as_map())
                    .and_then(|m| m.get_str("x"))
                    .is_some()
            });
            if found {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), p1)
        .await
        .expect("a matching row's change arrives");
    assert_eq!(cached_ports(&client), names(&["p1", "p2"]), "p4 stays out");

    // Rows that enter the condition arrive as inserts.
    client
        .set_monitor_condition(LSP, vec![name_is("p3"), name_is("p4")])
        .await
        .expect("monitor_cond_change");
    assert_eq!(cached_ports(&client), names(&["p3", "p4"]));

    // The conditions hold for the monitor of a new connection too.
    client.reconnect("test: new connection");
    tokio::time::sleep(Duration::from_millis(50)).await;
    client
        .wait_connected(Duration::from_secs(10))
        .await
        .expect("reconnected");
    assert_eq!(cached_ports(&client), names(&["p3", "p4"]));

    // No condition: every row again.
    client
        .set_monitor_condition(LSP, Vec::new())
        .await
        .expect("monitor_cond_change");
    assert_eq!(cached_ports(&client), names(&["p1", "p2", "p3", "p4"]));
    client
        .set_monitor_condition(LSP, vec![Condition::Constant(false)])
        .await
        .expect("monitor_cond_change");
    assert!(cached_ports(&client).is_empty());

    let unmonitored = client
        .set_monitor_condition("ACL", vec![Condition::Constant(true)])
        .await
        .unwrap_err();
    assert!(
        unmonitored.to_string().contains("not monitored"),
        "{unmonitored}"
    );
}

#[tokio::test]
async fn resync_cancels_the_monitor_and_reloads_the_cache() {
    let (nb, client) = switch_with_one_port().await;
    let mut events = client.subscribe();
    let before = client.metrics();

    client
        .resync()
        .await
        .expect("monitor_cancel and monitor again");
    assert_eq!(cached_ports(&client), names(&["p1"]));
    assert!(
        std::iter::from_fn(|| events.try_recv()).any(|e| matches!(e, Event::Synced { full: true })),
        "a full resync is announced"
    );
    assert_eq!(
        client.metrics().connects,
        before.connects,
        "same connection"
    );

    // The new monitor follows the database.
    nb.nbctl(&["lsp-add", "ls", "p2"]);
    expect_ports(&client, &["p1", "p2"]).await;
    let renamed =
        Update::new(LSP, Row::new().with("name", Atom::string("p1-renamed"))).filter(name_is("p1"));
    let results = client.transact(&[renamed.into()]).await.expect("update");
    assert_eq!(results[0].count(), Some(1));
    assert_eq!(
        cached_ports(&client),
        names(&["p1-renamed", "p2"]),
        "read-your-writes on the new monitor"
    );
}

#[tokio::test]
async fn a_monitor_the_server_cancels_is_monitored_again() {
    let (nb, client) = switch_with_one_port().await;
    client
        .set_monitor_condition(LSP, vec![name_is("p1"), name_is("p2")])
        .await
        .expect("monitor_cond_change");
    let mut events = client.subscribe();
    let before = client.metrics();

    // Converting the database cancels every monitor on it; a db-change-aware
    // client gets `monitor_canceled` instead of a disconnection.
    let schema = nb_schema();
    run(
        "ovsdb-client",
        &["convert", &nb.unix, schema.to_str().expect("utf-8 path")],
    );
    let resynced = async {
        loop {
            if let Event::Synced { full: true } = events.recv().await.expect("stream open") {
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), resynced)
        .await
        .expect("the client monitors again after monitor_canceled");
    assert_eq!(
        client.metrics().connects,
        before.connects,
        "same connection"
    );
    assert_eq!(cached_ports(&client), names(&["p1"]));

    // The new monitor keeps the conditions and follows the database.
    nb.nbctl(&["lsp-add", "ls", "p2"]);
    nb.nbctl(&["lsp-add", "ls", "p3"]);
    expect_ports(&client, &["p1", "p2"]).await;
}
