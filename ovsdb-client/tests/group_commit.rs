//! Group commit against a real standalone ovsdb-server: concurrent callers share one
//! transaction, and a failing caller's error reaches that caller only, whatever the mix.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use ovsdb_client::protocol::datum::{Atom, Value};
use ovsdb_client::protocol::operation::{
    Condition, ErrorKind, Insert, Operation, TransactError, Wait, WaitUntil,
};
use ovsdb_client::protocol::row::Row;
use ovsdb_client::runtime::group::{GroupCommit, GroupConfig};
use ovsdb_client::{Client, Error};
use proptest::prelude::*;
use support::{NB_DB, Standalone};
use tokio::time::Instant;

const SET: &str = "Address_Set";

/// What one caller sends.
#[derive(Clone, Debug)]
enum Kind {
    /// Creates its own Address_Set: commits.
    Good,
    /// An `abort` after its insert: fails at an operation of its own.
    Abort,
    /// A `wait` for a row that does not exist, timeout 0: fails with `timed out`.
    StaleWait,
    /// Creates an Address_Set named as one that exists: the commit fails (unique index), and
    /// the error names no operation.
    Duplicate,
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        6 => Just(Kind::Good),
        1 => Just(Kind::Abort),
        1 => Just(Kind::StaleWait),
        1 => Just(Kind::Duplicate),
    ]
}

fn insert(name: &str) -> Operation {
    Insert::new(SET, Row::new().with("name", Atom::string(name))).into()
}

fn operations(kind: &Kind, name: &str) -> Vec<Operation> {
    match kind {
        Kind::Good => vec![insert(name)],
        Kind::Abort => vec![insert(name), Operation::Abort],
        Kind::StaleWait => vec![
            Wait::new(
                SET,
                ["name"],
                WaitUntil::Equal,
                vec![Row::new().with("name", Atom::string(name))],
            )
            .filter(Condition::eq("name", name))
            .into(),
            insert(name),
        ],
        Kind::Duplicate => vec![insert("existing")],
    }
}

fn names(client: &Client) -> BTreeSet<String> {
    client
        .cache()
        .read()
        .rows(SET)
        .iter()
        .filter_map(|r| r.get("name")?.as_atom()?.as_str().map(str::to_owned))
        .collect()
}

fn error_kind(
    result: &Result<Vec<ovsdb_client::protocol::operation::OperationResult>, Error>,
) -> Option<ErrorKind> {
    match result {
        Err(Error::Transaction(e)) => e.ovsdb_error().map(|e| e.kind.clone()),
        _ => None,
    }
}

/// One server and client for every case; each case has its own names.
struct Fixture {
    _server: Standalone,
    client: Client,
    runtime: tokio::runtime::Runtime,
}

/// A client of `server`'s NB database monitoring the test table.
async fn connect(server: &Standalone) -> Client {
    Client::builder(&server.unix, NB_DB)
        .monitor(SET, &[])
        .connect()
        .await
        .expect("connect")
}

fn fixture() -> Fixture {
    let server = Standalone::start();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let client = runtime.block_on(async {
        let client = connect(&server).await;
        client.transact(&[insert("existing")]).await.unwrap();
        client
    });
    Fixture {
        _server: server,
        client,
        runtime,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Any mix of good and failing callers sent together: every good caller commits with the
    /// results of its own operations, every failing one gets its own error and changes nothing.
    #[test]
    fn one_failing_caller_fails_alone(kinds in prop::collection::vec(kind(), 1..24)) {
        static FIXTURE: std::sync::OnceLock<std::sync::Mutex<Fixture>> = std::sync::OnceLock::new();
        static CASE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let fixture = FIXTURE.get_or_init(|| std::sync::Mutex::new(fixture())).lock().unwrap();
        let case = CASE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let client = fixture.client.clone();
        let (results, stats) = fixture.runtime.block_on(async {
            let group = GroupCommit::new(
                client.clone(),
                // Everyone in one batch: the first caller lingers until the last has come.
                GroupConfig { linger: Duration::from_millis(200), ..GroupConfig::default() },
                Vec::new(),
                vec![Operation::comment("group commit test")],
            );
            let deadline = Instant::now() + Duration::from_secs(20);
            let calls = kinds.iter().enumerate().map(|(i, kind)| {
                let operations = operations(kind, &format!("c{case}-m{i}"));
                group.transact_until(operations, deadline)
            });
            let results = futures::future::join_all(calls).await;
            (results, group.stats())
        });
        let present = names(&client);
        for (i, (kind, result)) in kinds.iter().zip(&results).enumerate() {
            let name = format!("c{case}-m{i}");
            match kind {
                Kind::Good => {
                    let results = result.as_ref().unwrap_or_else(|e| panic!("{name}: {e}"));
                    prop_assert_eq!(results.len(), 1);
                    let uuid = results[0].uuid().expect("insert result");
                    let row = client.cache().get(SET, uuid).expect("its row is cached");
                    prop_assert_eq!(row.get("name"), Some(&Value::from(Atom::string(name.as_str()))));
                }
                Kind::Abort => prop_assert_eq!(error_kind(result), Some(ErrorKind::Aborted)),
                Kind::StaleWait => {
                    prop_assert_eq!(error_kind(result), Some(ErrorKind::TimedOut));
                    // Its index as in a transaction of its own (no prefix): its first operation.
                    let Err(Error::Transaction(TransactError::Operation { index, .. })) = result
                    else {
                        panic!("{name}: {result:?}");
                    };
                    prop_assert_eq!(*index, 0);
                }
                Kind::Duplicate => {
                    prop_assert_eq!(error_kind(result), Some(ErrorKind::ConstraintViolation));
                }
            }
            prop_assert_eq!(present.contains(&name), matches!(kind, Kind::Good), "{}", name);
        }
        prop_assert_eq!(stats.members, kinds.len() as u64);
        let failing = kinds.iter().filter(|k| !matches!(k, Kind::Good)).count() as u64;
        if failing == 0 || kinds.len() == 1 {
            // Nothing failed, or the one caller failed alone: nothing to split.
            prop_assert_eq!(stats.transactions, 1);
        } else {
            prop_assert!(stats.transactions > 1 && stats.splits >= 1, "{stats:?}");
        }
    }
}

/// A failing envelope (an `assert` of a lock this session does not hold) is every caller's error,
/// and callers arriving while a batch is in flight go together in the next one.
#[tokio::test]
async fn envelope_failure_reaches_every_caller_and_waiting_callers_share_a_batch() {
    let server = Standalone::start();
    let client = connect(&server).await;
    let deadline = Instant::now() + Duration::from_secs(20);

    let fenced = GroupCommit::new(
        client.clone(),
        GroupConfig::default(),
        vec![Operation::Assert {
            lock: "nobody_holds_it".into(),
        }],
        Vec::new(),
    );
    let calls = (0..5).map(|i| fenced.transact_until(vec![insert(&format!("f{i}"))], deadline));
    for result in futures::future::join_all(calls).await {
        assert_eq!(error_kind(&result), Some(ErrorKind::NotOwner), "{result:?}");
    }
    assert!(names(&client).iter().all(|n| !n.starts_with('f')));

    let group = GroupCommit::new(
        client.clone(),
        GroupConfig::default(),
        Vec::new(),
        Vec::new(),
    );
    let calls = (0..64).map(|i| group.transact_until(vec![insert(&format!("g{i}"))], deadline));
    for result in futures::future::join_all(calls).await {
        result.expect("commits");
    }
    let stats = group.stats();
    assert_eq!(stats.members, 64);
    // No linger: the first caller goes alone, the others queue behind it.
    assert!(stats.transactions < 64, "{stats:?}");
    assert_eq!(
        names(&client).iter().filter(|n| n.starts_with('g')).count(),
        64
    );
}

/// `transact_with_retry` through the group rebuilds after another writer got in between, as the
/// client's own does.
#[tokio::test]
async fn retry_rebuilds_after_a_concurrent_writer() {
    let server = Standalone::start();
    let client = connect(&server).await;
    let group = GroupCommit::new(
        client.clone(),
        GroupConfig::default(),
        Vec::new(),
        Vec::new(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut attempts = 0;
    let result = group
        .transact_with_retry(deadline, |view| {
            attempts += 1;
            let exists = view
                .rows(SET)
                .iter()
                .any(|r| r.get("name").and_then(|v| v.as_atom()?.as_str()) == Some("r"));
            if exists {
                return Vec::new();
            }
            if attempts == 1 {
                // Another writer creates it after this build.
                server.nbctl(&["create", "Address_Set", "name=r"]);
            }
            vec![
                ovsdb_client::runtime::transaction::wait_absent(
                    SET,
                    vec![Condition::eq("name", "r")],
                ),
                insert("r"),
            ]
        })
        .await;
    assert_eq!(result.unwrap(), Vec::new(), "the rebuild found the row");
    assert_eq!(attempts, 2);
}
