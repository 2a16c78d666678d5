//! The monitor fallback chain and servers without `_Server`, against a scripted
//! JSON-RPC server on a unix socket (real ovsdb-servers support every method, so
//! only a scripted one can pin what the client does when they are missing).

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use ovsdb_client::Client;
use ovsdb_client::protocol::datum::{Atom, Uuid, Value};
use ovsdb_client::protocol::framing::JsonFramer;
use parking_lot::Mutex;
use serde_json::{Value as Json, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;

const SCHEMA: &str = include_str!("../schemas/ovn-nb.ovsschema");
const LS: &str = "Logical_Switch";
const ROW: &str = "dfe6395f-7d6e-49bc-8ece-07bfb747323a";

/// Serves one database; the methods in `unknown` answer `unknown method`, and
/// `_Server` does not exist. Returns the socket path and the methods called.
fn scripted_server(
    dir: &tempfile::TempDir,
    unknown: &'static [&'static str],
) -> (String, Arc<Mutex<Vec<String>>>) {
    let path = dir.path().join("db.sock");
    let listener = UnixListener::bind(&path).expect("bind");
    let calls = Arc::new(Mutex::new(Vec::new()));
    let log = calls.clone();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.expect("accept");
        let mut framer = JsonFramer::default();
        let mut buf = BytesMut::new();
        loop {
            let Some(frame) = framer.next_frame(&mut buf).expect("client sends JSON") else {
                if stream.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                    return;
                }
                continue;
            };
            let request: Json = serde_json::from_slice(&frame).expect("valid JSON");
            let method = request["method"].as_str().unwrap_or_default().to_owned();
            log.lock().push(method.clone());
            let id = request["id"].clone();
            let mut out = Vec::new();
            let reply = match method.as_str() {
                m if unknown.contains(&m) => json!({"id": id, "error": "unknown method"}),
                "set_db_change_aware" | "echo" => json!({"id": id, "result": {}, "error": null}),
                "get_schema" if request["params"][0] == "_Server" => json!({"id": id,
                    "error": {"error": "unknown database", "details": "no _Server"}}),
                "get_schema" => {
                    let schema: Json = serde_json::from_str(SCHEMA).unwrap();
                    json!({"id": id, "result": schema, "error": null})
                }
                "monitor_cond" => {
                    let monitor_id = request["params"][1].clone();
                    let reply = json!({"id": id, "error": null,
                        "result": {LS: {ROW: {"initial": {"name": "first"}}}}});
                    let update = json!({"id": null, "method": "update2", "params": [monitor_id,
                        {LS: {ROW: {"modify": {"other_config": ["map", [["subnet", "10.0.0.0/24"]]]}}}}]});
                    out.extend(reply.to_string().into_bytes());
                    update
                }
                "monitor" => {
                    let monitor_id = request["params"][1].clone();
                    let reply = json!({"id": id, "error": null,
                        "result": {LS: {ROW: {"new": {"name": "first", "ports": ["set", []]}}}}});
                    let update = json!({"id": null, "method": "update", "params": [monitor_id,
                        {LS: {ROW: {"old": {"name": "first"}, "new": {"name": "renamed", "ports": ["set", []]}}}}]});
                    out.extend(reply.to_string().into_bytes());
                    update
                }
                other => panic!("unexpected request {other}"),
            };
            out.extend(reply.to_string().into_bytes());
            if stream.write_all(&out).await.is_err() {
                return;
            }
        }
    });
    (format!("unix:{}", path.display()), calls)
}

async fn wait_for_name(client: &Client, name: &str) -> Arc<ovsdb_client::protocol::row::Row> {
    let uuid = Uuid::parse_str(ROW).unwrap();
    let wanted = Value::from(Atom::string(name));
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Some(row) = client.cache().get(LS, uuid)
                && row.get("name") == Some(&wanted)
            {
                return row;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("row never named {name}"))
}

#[tokio::test]
async fn falls_back_to_monitor_cond_and_applies_update2() {
    let dir = tempfile::tempdir().unwrap();
    let (remote, calls) = scripted_server(&dir, &["monitor_cond_since"]);
    let client = Client::builder(&remote, "OVN_Northbound")
        .monitor(LS, &[])
        .connect()
        .await
        .expect("connects without _Server and without monitor_cond_since");
    let row = wait_for_name(&client, "first").await;
    tokio::time::timeout(Duration::from_secs(5), async {
        while client
            .cache()
            .get(LS, row.uuid().unwrap())
            .unwrap()
            .get("other_config")
            != Some(&Value::map([("subnet", "10.0.0.0/24")]))
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the update2 diff was applied");
    assert_eq!(
        *calls.lock(),
        [
            "set_db_change_aware",
            "get_schema",
            "get_schema",
            "monitor_cond_since",
            "monitor_cond"
        ]
    );
    assert!(
        client.server_database().is_none(),
        "no _Server: nothing to report"
    );
    assert_eq!(client.metrics().full_resyncs, 1);
}

#[tokio::test]
async fn falls_back_to_plain_monitor_and_applies_rfc_updates() {
    let dir = tempfile::tempdir().unwrap();
    let (remote, calls) = scripted_server(&dir, &["monitor_cond_since", "monitor_cond"]);
    let client = Client::builder(&remote, "OVN_Northbound")
        .monitor(LS, &["name", "ports"])
        .connect()
        .await
        .expect("connects with plain monitor");
    wait_for_name(&client, "renamed").await;
    assert_eq!(
        calls.lock().last().map(String::as_str),
        Some("monitor"),
        "{:?}",
        calls.lock()
    );
}
