//! Group commit: the transactions of concurrent callers, sent as one OVSDB transaction.
//!
//! Why: ovsdb-server pays per transaction (a log write, a round of monitor updates, one turn of
//! its main loop), so many one-port transactions cost several times what the same ports cost in
//! one. A [`GroupCommit`] queues each caller's operations; one task sends them: a caller arriving
//! while fewer than [`GroupConfig::in_flight`] batches are outstanding goes at once (after the
//! optional [`GroupConfig::linger`]), the others wait and go together in the next batch, bounded
//! by [`GroupConfig::max_members`] and [`GroupConfig::max_operations`]. The wait is bounded by
//! the batch ahead, so nobody waits on a timer when the server is idle.
//!
//! Each caller gets the results of its own operations, and only its own error. A transaction is
//! atomic, so one failing operation fails the whole batch; the batch is then split and the rest
//! sent again:
//! - an operation's error names its index, so its caller is known: if it is the batch's first
//!   caller, the error is its own (nothing ran before its operations but the common
//!   [envelope](GroupCommit::new)) and it gets it; the callers after it go again as a batch.
//!   Otherwise the batch is split before that caller, whose operations may only have failed
//!   because of an earlier caller's, and both halves go again.
//! - a failed commit (a deferred check: unique index, referential integrity) names nobody: the
//!   batch is halved until the failing caller is alone.
//! - a session failure (lost connection, timeout) is every caller's: each gets it, with
//!   [`Error::may_have_committed`] as for a transaction of its own.
//!
//! So a caller sees what it would have seen sending its operations alone, given the order, and
//! [`GroupCommit::transact_with_retry`] retries as [`Client::transact_with_retry`] does.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::protocol::operation::{Operation, OperationResult, TransactError};
use crate::runtime::cache::CacheView;
use crate::runtime::client::Client;
use crate::runtime::error::Error;

/// How callers are grouped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupConfig {
    /// Most callers in one transaction.
    pub max_members: usize,
    /// Most operations in one transaction, the envelope not counted; a caller with more goes
    /// alone.
    pub max_operations: usize,
    /// Batches outstanding at once; a caller that finds fewer goes without waiting.
    pub in_flight: usize,
    /// How long the first caller of a batch waits for others before it is sent (zero: it goes
    /// as soon as a batch may be sent).
    pub linger: Duration,
}

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig {
            max_members: 256,
            max_operations: 4096,
            in_flight: 1,
            linger: Duration::ZERO,
        }
    }
}

/// Counters of a [`GroupCommit`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GroupStats {
    /// Transactions sent, first attempts and re-sends after a split.
    pub transactions: u64,
    /// Callers served (each counted once, however often its operations were sent).
    pub members: u64,
    /// Failed batches split and sent again.
    pub splits: u64,
}

#[derive(Default)]
struct Counters {
    transactions: AtomicU64,
    members: AtomicU64,
    splits: AtomicU64,
}

type Reply = Result<Vec<OperationResult>, Error>;

/// One caller's transaction.
struct Member {
    operations: Vec<Operation>,
    deadline: Instant,
    arrived: Instant,
    reply: oneshot::Sender<Reply>,
}

/// What the sending task shares with its batches.
struct Shared {
    client: Client,
    prefix: Vec<Operation>,
    suffix: Vec<Operation>,
    counters: Counters,
}

/// Sends the transactions of concurrent callers as one (see the module documentation). Dropping
/// it stops the task once the queued callers are served.
pub struct GroupCommit {
    queue: mpsc::UnboundedSender<Member>,
    shared: Arc<Shared>,
}

impl GroupCommit {
    /// Groups transactions on `client`. Every transaction sent is `prefix`, the callers'
    /// operations in order, then `suffix`: the envelope, e.g. an `assert` of a lock and a
    /// `comment`. Spawns the sending task on the current tokio runtime.
    pub fn new(
        client: Client,
        config: GroupConfig,
        prefix: Vec<Operation>,
        suffix: Vec<Operation>,
    ) -> Self {
        let (queue, incoming) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            client,
            prefix,
            suffix,
            counters: Counters::default(),
        });
        tokio::spawn(send_batches(shared.clone(), config, incoming));
        GroupCommit { queue, shared }
    }

    /// Runs `operations` in the next batch, waiting for the session if needed, all before
    /// `deadline`; the results of these operations, or the error they would have met alone.
    /// No operations: nothing is sent.
    pub async fn transact_until(&self, operations: Vec<Operation>, deadline: Instant) -> Reply {
        if operations.is_empty() {
            return Ok(Vec::new());
        }
        let (reply, answer) = oneshot::channel();
        let member = Member {
            operations,
            deadline,
            arrived: Instant::now(),
            reply,
        };
        self.queue.send(member).map_err(|_| Error::Shutdown)?;
        answer.await.map_err(|_| Error::Shutdown)?
    }

    /// [`Client::transact_with_retry`] with every attempt sent through the group.
    pub async fn transact_with_retry<F>(&self, deadline: Instant, build: F) -> Reply
    where
        F: FnMut(&CacheView<'_>) -> Vec<Operation>,
    {
        self.shared
            .client
            .retry_until(deadline, build, |operations| {
                self.transact_until(operations, deadline)
            })
            .await
    }

    /// The counters so far.
    pub fn stats(&self) -> GroupStats {
        let counters = &self.shared.counters;
        GroupStats {
            transactions: counters.transactions.load(Ordering::Relaxed),
            members: counters.members.load(Ordering::Relaxed),
            splits: counters.splits.load(Ordering::Relaxed),
        }
    }
}

/// The sending task: forms batches from the queue as the in-flight limit allows.
async fn send_batches(
    shared: Arc<Shared>,
    config: GroupConfig,
    mut incoming: mpsc::UnboundedReceiver<Member>,
) {
    let mut waiting: VecDeque<Member> = VecDeque::new();
    let mut batches = JoinSet::new();
    let mut open = true;
    loop {
        tokio::select! {
            member = incoming.recv(), if open => match member {
                Some(member) => waiting.push_back(member),
                None => open = false,
            },
            Some(_) = batches.join_next(), if !batches.is_empty() => {}
        }
        while let Ok(member) = incoming.try_recv() {
            waiting.push_back(member);
        }
        while batches.len() < config.in_flight.max(1) && !waiting.is_empty() {
            if !config.linger.is_zero() && open {
                linger(&config, &mut waiting, &mut incoming).await;
            }
            let batch = take_batch(&config, &mut waiting);
            shared
                .counters
                .members
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            batches.spawn(send(shared.clone(), batch));
        }
        if !open && waiting.is_empty() && batches.is_empty() {
            return;
        }
    }
}

/// Waits until the first waiting caller has lingered its time or the batch is full.
async fn linger(
    config: &GroupConfig,
    waiting: &mut VecDeque<Member>,
    incoming: &mut mpsc::UnboundedReceiver<Member>,
) {
    let Some(until) = waiting.front().map(|m| m.arrived + config.linger) else {
        return;
    };
    while waiting.len() < config.max_members {
        tokio::select! {
            member = incoming.recv() => match member {
                Some(member) => waiting.push_back(member),
                None => return,
            },
            () = tokio::time::sleep_until(until) => return,
        }
    }
}

/// The next batch: callers in arrival order within the bounds; the first always goes.
fn take_batch(config: &GroupConfig, waiting: &mut VecDeque<Member>) -> Vec<Member> {
    let mut batch = Vec::new();
    let mut operations = 0;
    while let Some(next) = waiting.front() {
        let fits = operations + next.operations.len() <= config.max_operations;
        if !batch.is_empty() && (!fits || batch.len() >= config.max_members) {
            break;
        }
        operations += next.operations.len();
        batch.extend(waiting.pop_front());
    }
    batch
}

/// Sends `batch`, splitting it after a failure until every caller has its answer.
async fn send(shared: Arc<Shared>, batch: Vec<Member>) {
    let mut work = VecDeque::from([batch]);
    while let Some(mut group) = work.pop_front() {
        // A caller that gave up (its future dropped) has nothing more to write.
        group.retain(|m| !m.reply.is_closed());
        if group.is_empty() {
            continue;
        }
        let deadline = group.iter().map(|m| m.deadline).min().expect("not empty");
        let (operations, ranges) = shared.envelope(&mut group);
        shared.counters.transactions.fetch_add(1, Ordering::Relaxed);
        let result = shared.client.transact_until(&operations, deadline).await;
        let mut operations = operations;
        // Give every caller its operations back (in order), for a re-send.
        for (member, range) in group.iter_mut().zip(&ranges).rev() {
            member.operations = operations.split_off(range.start);
            member.operations.truncate(range.len());
        }
        match result {
            Ok(mut results) => {
                for (member, range) in group.into_iter().zip(ranges).rev() {
                    let mut mine = results.split_off(range.start);
                    mine.truncate(range.len());
                    // The caller may have given up meanwhile: nobody to tell.
                    let _ = member.reply.send(Ok(mine));
                }
            }
            Err(Error::Transaction(TransactError::Operation { index, op, error })) => {
                let failed = ranges.iter().position(|r| r.contains(&index));
                match failed {
                    Some(0) => {
                        let mut rest = group;
                        let first = rest.remove(0);
                        // The first caller's operations follow the prefix as in a transaction
                        // of its own, so the index is its own too.
                        let error = TransactError::Operation { index, op, error };
                        let _ = first.reply.send(Err(error.into()));
                        if !rest.is_empty() {
                            shared.counters.splits.fetch_add(1, Ordering::Relaxed);
                            work.push_front(rest);
                        }
                    }
                    Some(at) => {
                        shared.counters.splits.fetch_add(1, Ordering::Relaxed);
                        let after = group.split_off(at);
                        work.push_front(after);
                        work.push_front(group);
                    }
                    // The envelope failed (e.g. the lock is not ours): everyone's error.
                    None => {
                        let error = Error::from(TransactError::Operation { index, op, error });
                        answer_all(group, &error);
                    }
                }
            }
            Err(Error::Transaction(TransactError::Commit { .. })) if group.len() > 1 => {
                shared.counters.splits.fetch_add(1, Ordering::Relaxed);
                let after = group.split_off(group.len() / 2);
                work.push_front(after);
                work.push_front(group);
            }
            Err(error) => answer_all(group, &error),
        }
    }
}

fn answer_all(group: Vec<Member>, error: &Error) {
    for member in group {
        let _ = member.reply.send(Err(error.clone()));
    }
}

impl Shared {
    /// The transaction of `group` (its operations moved out) and where each caller's
    /// operations are in it.
    fn envelope(&self, group: &mut [Member]) -> (Vec<Operation>, Vec<std::ops::Range<usize>>) {
        let total: usize = group.iter().map(|m| m.operations.len()).sum();
        let mut operations = Vec::with_capacity(self.prefix.len() + total + self.suffix.len());
        operations.extend(self.prefix.iter().cloned());
        let mut ranges = Vec::with_capacity(group.len());
        for member in group.iter_mut() {
            let start = operations.len();
            operations.append(&mut member.operations);
            ranges.push(start..operations.len());
        }
        operations.extend(self.suffix.iter().cloned());
        (operations, ranges)
    }
}
