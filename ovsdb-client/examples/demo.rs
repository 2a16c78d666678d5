//! Creates a logical switch `demo` and a few ports with addresses and `external_ids` in an OVN
//! Northbound database through the client, idempotently: a second run changes nothing, and a
//! port whose addresses or `external_ids` drifted is put back.
//!
//! ```sh
//! cargo run -p ovsdb-client --example demo -- --db unix:/run/ovn/ovnnb_db.sock
//! OVN_NB_DB=tcp:127.0.0.1:6641 cargo run -p ovsdb-client --example demo
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use clap::Parser;
use ovsdb_client::Client;
use ovsdb_client::Error;
use ovsdb_client::protocol::datum::Uuid;
use ovsdb_client::protocol::operation::{Condition, Insert, Operation, Update, Wait};
use ovsdb_client::protocol::row::Row;
use ovsdb_client::protocol::table::Table;
use ovsdb_client::runtime::cache::CacheView;
use ovsdb_client::runtime::transaction::{wait_absent, wait_unchanged};
use ovsdb_client::tables::nb::{LogicalSwitch, LogicalSwitchPort, add_switch_port};
use tokio::time::Instant;

/// Create the `demo` switch and its ports in an OVN NB database.
#[derive(Parser)]
struct Args {
    /// NB database remote(s), comma-separated: `unix:PATH`, `tcp:IP:PORT`, `ssl:IP:PORT`.
    #[arg(long, env = "OVN_NB_DB")]
    db: String,
    /// Name of the logical switch to create.
    #[arg(long, default_value = "demo")]
    switch: String,
    /// How many ports to create.
    #[arg(long, default_value_t = 3)]
    ports: u8,
}

/// The same `owner` tag on everything we create, as Kube-OVN tags its rows with `vendor`.
const VENDOR: (&str, &str) = ("vendor", "portkeeper");
const DEADLINE: Duration = Duration::from_secs(30);

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args = Args::parse();
    let client = Client::builder(&args.db, "OVN_Northbound")
        .monitor(LogicalSwitch::TABLE, &[])
        .monitor(LogicalSwitchPort::TABLE, &[])
        .connect()
        .await?;
    println!(
        "connected to {}",
        client
            .connected_remote()
            .map(|r| r.to_string())
            .unwrap_or_default()
    );

    let switch = ensure_switch(&client, &args.switch).await?;
    for i in 1..=args.ports {
        let port = demo_port(&args.switch, i);
        let outcome = ensure_port(&client, switch, &port).await?;
        println!(
            "port {} ({}): {outcome}",
            port.name,
            port.addresses.iter().next().unwrap()
        );
    }
    Ok(())
}

fn demo_port(switch: &str, i: u8) -> LogicalSwitchPort {
    let name = format!("{switch}-pod{i}");
    LogicalSwitchPort {
        addresses: BTreeSet::from([format!("0a:58:0a:00:00:{i:02x} 10.0.0.{i}")]),
        external_ids: BTreeMap::from([
            ("pod".to_owned(), format!("default/{name}")),
            (VENDOR.0.to_owned(), VENDOR.1.to_owned()),
        ]),
        name,
        ..Default::default()
    }
}

fn find_switch(view: &CacheView<'_>, name: &str) -> Option<Uuid> {
    view.iter(LogicalSwitch::TABLE)
        .find(|(_, row)| LogicalSwitch::from_row(row).is_ok_and(|ls| ls.name == name))
        .map(|(uuid, _)| *uuid)
}

/// Switch names are not unique in OVN, so creating one is guarded by a `wait` for its absence:
/// if another writer created it meanwhile, the transaction fails, the cache catches up, and the
/// existing switch is used.
async fn ensure_switch(client: &Client, name: &str) -> Result<Uuid, Error> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(uuid) = find_switch(&client.cache().read(), name) {
            println!("switch {name}: exists ({uuid})");
            return Ok(uuid);
        }
        let version = client.cache().version();
        let switch = LogicalSwitch {
            name: name.to_owned(),
            external_ids: BTreeMap::from([(VENDOR.0.to_owned(), VENDOR.1.to_owned())]),
            ..Default::default()
        };
        let ops = [
            wait_absent(LogicalSwitch::TABLE, vec![Condition::eq("name", name)]),
            Insert::new(LogicalSwitch::TABLE, switch.to_row()).into(),
        ];
        match client.transact_until(&ops, deadline).await {
            Ok(results) => {
                let uuid = results[1].uuid().expect("insert result");
                println!("switch {name}: created ({uuid})");
                return Ok(uuid);
            }
            Err(e) if e.is_precondition_failed() => client.cache().changed_after(version).await,
            Err(e) => return Err(e),
        }
    }
}

/// Creates the port, or brings its addresses and `external_ids` back to `wanted`. Every
/// transaction carries a precondition on what it read, so a concurrent writer or a replay after
/// a lost connection makes it fail and re-plan instead of duplicating or clobbering.
async fn ensure_port(
    client: &Client,
    switch: Uuid,
    wanted: &LogicalSwitchPort,
) -> Result<&'static str, Error> {
    let current = |view: &CacheView<'_>| {
        let rows = view.find(
            LogicalSwitchPort::TABLE,
            &["name"],
            &[wanted.name.as_str().into()],
        )?;
        rows.first().cloned()
    };
    let unchanged = |row: &Row| {
        LogicalSwitchPort::from_row(row)
            .is_ok_and(|p| p.addresses == wanted.addresses && p.external_ids == wanted.external_ids)
    };
    if current(&client.cache().read()).is_some_and(|row| unchanged(&row)) {
        return Ok("unchanged");
    }
    let mut outcome = "created";
    client
        .transact_with_retry(Instant::now() + DEADLINE, |view| match current(view) {
            None => {
                outcome = "created";
                let absent = Wait::absent(
                    LogicalSwitchPort::TABLE,
                    vec![Condition::eq("name", wanted.name.as_str())],
                );
                add_switch_port(switch, wanted, Some(absent))
            }
            Some(row) => {
                outcome = if unchanged(&row) {
                    "unchanged"
                } else {
                    "updated"
                };
                let columns = ["addresses", "external_ids"];
                let values = wanted.to_row();
                let mut update = Row::new();
                for column in columns {
                    update.insert(
                        column,
                        values
                            .get(column)
                            .expect("typed row has every column")
                            .clone(),
                    );
                }
                let uuid = row.uuid().expect("cached rows have a uuid");
                wait_unchanged(LogicalSwitchPort::TABLE, &row, &columns)
                    .into_iter()
                    .chain([Operation::from(
                        Update::new(LogicalSwitchPort::TABLE, update)
                            .filter(Condition::uuid_is(uuid)),
                    )])
                    .collect()
            }
        })
        .await?;
    Ok(outcome)
}
