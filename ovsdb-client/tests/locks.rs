//! OVSDB locks against a real standalone ovsdb-server: two clients contending,
//! `steal`, `assert`, and a lock requested again after a reconnection.

mod support;

use std::time::Duration;

use ovsdb_client::Client;
use ovsdb_client::Error;
use ovsdb_client::protocol::operation::{ErrorKind, Operation};
use ovsdb_client::runtime::client::Lock;
use ovsdb_client::runtime::lock::LockState;
use support::{NB_DB, Standalone};

async fn client(nb: &Standalone) -> Client {
    Client::builder(&nb.unix, NB_DB)
        .monitor("NB_Global", &[])
        .backoff(Duration::from_millis(10), Duration::from_millis(50))
        .connect()
        .await
        .expect("connect")
}

/// Waits (bounded) until `lock` reaches `want`.
async fn expect_state(lock: &mut Lock, want: LockState) {
    let wait = async {
        while lock.state() != want {
            lock.changed().await.expect("client alive");
        }
    };
    tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .unwrap_or_else(|_| panic!("lock {} never became {want:?}", lock.name()));
}

/// Whether an `assert` of `name` commits for `client`.
async fn asserts(client: &Client, name: &str) -> bool {
    let assert = Operation::Assert {
        lock: name.to_owned(),
    };
    match client.transact(&[assert]).await {
        Ok(_) => true,
        Err(Error::Transaction(e)) => {
            assert_eq!(e.ovsdb_error().map(|e| &e.kind), Some(&ErrorKind::NotOwner));
            false
        }
        Err(e) => panic!("assert failed unexpectedly: {e}"),
    }
}

#[tokio::test]
async fn two_clients_contend_and_the_waiter_gets_the_lock_on_unlock() {
    let nb = Standalone::start();
    let (a, b) = (client(&nb).await, client(&nb).await);

    let held = a.lock("leader").await.expect("lock");
    assert_eq!(held.state(), LockState::Locked);
    let mut waiting = b.lock("leader").await.expect("lock");
    assert_eq!(waiting.state(), LockState::Waiting);
    assert!(asserts(&a, "leader").await);
    assert!(!asserts(&b, "leader").await, "only the owner may assert");

    // The same client cannot ask twice for one lock.
    let twice = a.lock("leader").await.unwrap_err();
    assert!(matches!(twice, Error::Config(_)), "{twice}");

    held.unlock().await.expect("unlock");
    tokio::time::timeout(Duration::from_secs(10), waiting.acquired())
        .await
        .expect("the waiter is told it holds the lock")
        .expect("client alive");
    assert!(asserts(&b, "leader").await);
    assert!(!asserts(&a, "leader").await);

    // Dropping the handle releases the lock too.
    let mut again = a.lock("leader").await.expect("lock");
    assert_eq!(again.state(), LockState::Waiting);
    drop(waiting);
    expect_state(&mut again, LockState::Locked).await;
}

#[tokio::test]
async fn steal_takes_the_lock_and_the_victim_gets_it_back_after() {
    let nb = Standalone::start();
    let (a, b) = (client(&nb).await, client(&nb).await);

    let mut victim = a.lock("owner").await.expect("lock");
    assert_eq!(victim.state(), LockState::Locked);
    let thief = b.steal("owner").await.expect("steal");
    assert_eq!(thief.state(), LockState::Locked);
    expect_state(&mut victim, LockState::Stolen).await;
    assert!(!victim.is_locked());
    assert!(!asserts(&a, "owner").await);
    assert!(asserts(&b, "owner").await);

    // The server kept the victim's request queued.
    thief.unlock().await.expect("unlock");
    expect_state(&mut victim, LockState::Locked).await;
    assert!(asserts(&a, "owner").await);
}

#[tokio::test]
async fn a_lock_is_requested_again_after_a_reconnection() {
    let nb = Standalone::start();
    let (a, b) = (client(&nb).await, client(&nb).await);

    let mut first = a.lock("singleton").await.expect("lock");
    assert_eq!(first.state(), LockState::Locked);
    let mut second = b.lock("singleton").await.expect("lock");
    assert_eq!(second.state(), LockState::Waiting);

    // The server drops a session's locks with the session: b gets the lock, and
    // a, reconnected, asks again and waits behind b.
    a.reconnect("test: drop the session");
    expect_state(&mut second, LockState::Locked).await;
    a.wait_connected(Duration::from_secs(10))
        .await
        .expect("reconnected");
    expect_state(&mut first, LockState::Waiting).await;
    assert!(!asserts(&a, "singleton").await);

    second.unlock().await.expect("unlock");
    expect_state(&mut first, LockState::Locked).await;
    assert!(asserts(&a, "singleton").await);
}
