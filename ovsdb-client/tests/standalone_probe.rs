//! The server's inactivity probe against a real ovsdb-server over TCP: after 5 s of silence the
//! server sends `echo`, and closes the session 5 s later unless the client answers. The client's
//! own probe is disabled here, so only its answer to the server keeps the session alive.

mod support;

use std::sync::Arc;
use std::time::Duration;

use ovsdb_client::runtime::connection::{Connection, ConnectionOptions};
use ovsdb_client::runtime::transport::{self, Remote};
use serde_json::json;
use support::Standalone;

#[tokio::test]
async fn answers_the_server_echo_probe_after_tcp_idle() {
    let nb = Standalone::start();
    // Log the server's side of the probe exchange, to prove it happened.
    nb.server
        .appctl(&["vlog/set", "jsonrpc:file:dbg", "reconnect:file:dbg"]);
    let remote = Remote::parse(&nb.tcp).unwrap();
    let stream = transport::connect(&remote, None).await.unwrap();
    let options = ConnectionOptions {
        probe_interval: None,
        ..ConnectionOptions::default()
    };
    let connection = Connection::start(remote, stream, options, Arc::new(|_| Ok(()))).unwrap();

    let dbs = connection.call("list_dbs", &json!([])).await.unwrap();
    assert!(
        dbs.as_array()
            .unwrap()
            .iter()
            .any(|db| db == "OVN_Northbound"),
        "{dbs}"
    );

    // Two full probe intervals of silence: the server probes at ~5 s and gives up at ~10 s.
    tokio::time::sleep(Duration::from_secs(12)).await;

    assert!(
        connection.close_reason().is_none(),
        "closed: {:?}",
        connection.close_reason()
    );
    let echoed = connection
        .call("echo", &json!(["still here"]))
        .await
        .unwrap();
    assert_eq!(echoed, json!(["still here"]));
    let log = std::fs::read_to_string(&nb.server.log).unwrap();
    assert!(
        !log.contains("no response to inactivity probe"),
        "server dropped us:\n{log}"
    );
    assert!(
        log.contains("sending inactivity probe")
            && log.contains(r#"received reply, result=[], id="echo""#),
        "the server never probed or saw no answer, so this test proved nothing:\n{log}"
    );
}

#[tokio::test]
async fn a_client_with_its_own_probe_off_stays_connected_through_server_probes() {
    let nb = Standalone::start();
    nb.server.appctl(&["vlog/set", "reconnect:file:dbg"]);
    let client = ovsdb_client::Client::builder(&nb.tcp, support::NB_DB)
        .probe_interval(None)
        .connect()
        .await
        .unwrap();

    tokio::time::sleep(Duration::from_secs(12)).await;

    let metrics = client.metrics();
    assert_eq!(
        (metrics.connects, metrics.disconnects),
        (1, 0),
        "{metrics:?}"
    );
    client.echo().await.unwrap();
    let log = std::fs::read_to_string(&nb.server.log).unwrap();
    assert!(
        log.contains("sending inactivity probe"),
        "the server never probed:\n{log}"
    );
    assert!(
        !log.contains("no response to inactivity probe"),
        "server dropped us:\n{log}"
    );
}
