//! Counters a controller publishes (to Prometheus or elsewhere) without this crate
//! depending on any metrics library.
//!
//! Everything is a lock-free atomic; [`Metrics::snapshot`] copies the values into a
//! plain [`MetricsSnapshot`] to export.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (inclusive, in seconds) of the transaction latency histogram buckets.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// How a transaction ended, for the outcome counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnOutcome {
    /// Every operation succeeded and the commit went through.
    Committed,
    /// The server refused it (an operation or the commit failed).
    Failed,
    /// The connection ended before the reply: it may or may not have committed.
    ConnectionLost,
}

/// Live counters, shared by the session, the monitor and transactions.
#[derive(Debug, Default)]
pub struct Metrics {
    connects: AtomicU64,
    disconnects: AtomicU64,
    connect_failures: AtomicU64,
    wait_after_loss_micros: AtomicU64,
    backoff_micros: AtomicU64,
    full_resyncs: AtomicU64,
    incremental_resyncs: AtomicU64,
    update_messages: AtomicU64,
    row_updates: AtomicU64,
    lagged_events: AtomicU64,
    txn_committed: AtomicU64,
    txn_failed: AtomicU64,
    txn_connection_lost: AtomicU64,
    txn_retries: AtomicU64,
    latency_buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_micros: AtomicU64,
}

/// A copy of every counter at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetricsSnapshot {
    /// Successful connects (the first one included); `connects - 1` are reconnects.
    pub connects: u64,
    /// Established connections that were lost or dropped.
    pub disconnects: u64,
    /// Connection attempts that failed (dial, TLS, schema, leader checks).
    pub connect_failures: u64,
    /// Time waited after established connections were lost, before the next
    /// attempt: a few ms of jitter after one that proved itself, the backoff after
    /// one that ended too soon.
    pub wait_after_loss: Duration,
    /// Time spent backing off after rounds in which every remote failed.
    pub backoff: Duration,
    /// Monitor (re)starts that loaded the whole database (`found=false` or no resume).
    pub full_resyncs: u64,
    /// Monitor resumes that applied only the changes since the last transaction id.
    pub incremental_resyncs: u64,
    /// Update notifications applied to the cache.
    pub update_messages: u64,
    /// Row changes applied to the cache.
    pub row_updates: u64,
    /// Events subscribers missed because they fell behind (each told to resync).
    pub lagged_events: u64,
    /// Transactions that committed.
    pub txn_committed: u64,
    /// Transactions the server refused.
    pub txn_failed: u64,
    /// Transactions whose connection ended before the reply.
    pub txn_connection_lost: u64,
    /// Retries made by the retrying transaction helpers.
    pub txn_retries: u64,
    /// Cumulative latency histogram: `latency_buckets[i]` counts transactions that
    /// took at most `LATENCY_BUCKETS[i]` seconds.
    pub latency_buckets: Vec<(f64, u64)>,
    /// Number of latency observations.
    pub latency_count: u64,
    /// Sum of observed latencies.
    pub latency_sum: Duration,
}

impl MetricsSnapshot {
    /// Reconnects: connects after the first.
    pub fn reconnects(&self) -> u64 {
        self.connects.saturating_sub(1)
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

fn add_micros(counter: &AtomicU64, duration: Duration) {
    let micros = u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
    counter.fetch_add(micros, Ordering::Relaxed);
}

impl Metrics {
    pub(crate) fn connected(&self) {
        bump(&self.connects);
    }
    pub(crate) fn disconnected(&self) {
        bump(&self.disconnects);
    }
    pub(crate) fn connect_failed(&self) {
        bump(&self.connect_failures);
    }
    pub(crate) fn waited_after_loss(&self, pause: Duration) {
        add_micros(&self.wait_after_loss_micros, pause);
    }
    pub(crate) fn backed_off(&self, pause: Duration) {
        add_micros(&self.backoff_micros, pause);
    }
    pub(crate) fn resynced(&self, full: bool) {
        bump(if full {
            &self.full_resyncs
        } else {
            &self.incremental_resyncs
        });
    }
    pub(crate) fn update_applied(&self, rows: usize) {
        bump(&self.update_messages);
        self.row_updates.fetch_add(rows as u64, Ordering::Relaxed);
    }
    pub(crate) fn lagged(&self, missed: u64) {
        self.lagged_events.fetch_add(missed, Ordering::Relaxed);
    }
    pub(crate) fn retried(&self) {
        bump(&self.txn_retries);
    }

    pub(crate) fn transaction(&self, outcome: TxnOutcome, latency: Duration) {
        bump(match outcome {
            TxnOutcome::Committed => &self.txn_committed,
            TxnOutcome::Failed => &self.txn_failed,
            TxnOutcome::ConnectionLost => &self.txn_connection_lost,
        });
        let secs = latency.as_secs_f64();
        if let Some(i) = LATENCY_BUCKETS.iter().position(|&le| secs <= le) {
            bump(&self.latency_buckets[i]);
        }
        bump(&self.latency_count);
        add_micros(&self.latency_sum_micros, latency);
    }

    /// Copies every counter.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut cumulative = 0;
        let latency_buckets = LATENCY_BUCKETS
            .iter()
            .zip(&self.latency_buckets)
            .map(|(&le, count)| {
                cumulative += load(count);
                (le, cumulative)
            })
            .collect();
        MetricsSnapshot {
            connects: load(&self.connects),
            disconnects: load(&self.disconnects),
            connect_failures: load(&self.connect_failures),
            wait_after_loss: Duration::from_micros(load(&self.wait_after_loss_micros)),
            backoff: Duration::from_micros(load(&self.backoff_micros)),
            full_resyncs: load(&self.full_resyncs),
            incremental_resyncs: load(&self.incremental_resyncs),
            update_messages: load(&self.update_messages),
            row_updates: load(&self.row_updates),
            lagged_events: load(&self.lagged_events),
            txn_committed: load(&self.txn_committed),
            txn_failed: load(&self.txn_failed),
            txn_connection_lost: load(&self.txn_connection_lost),
            txn_retries: load(&self.txn_retries),
            latency_buckets,
            latency_count: load(&self.latency_count),
            latency_sum: Duration::from_micros(load(&self.latency_sum_micros)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_histogram_is_cumulative() {
        let m = Metrics::default();
        m.transaction(TxnOutcome::Committed, Duration::from_micros(300));
        m.transaction(TxnOutcome::Committed, Duration::from_millis(3));
        m.transaction(TxnOutcome::Failed, Duration::from_secs(10));
        let s = m.snapshot();
        assert_eq!((s.txn_committed, s.txn_failed), (2, 1));
        assert_eq!(s.latency_count, 3);
        assert_eq!(s.latency_buckets[0], (0.0005, 1));
        assert_eq!(s.latency_buckets[3], (0.005, 2));
        assert_eq!(
            s.latency_buckets.last(),
            Some(&(5.0, 2)),
            "10 s is above every bucket"
        );
        assert_eq!(s.latency_sum, Duration::from_micros(10_003_300));
    }

    #[test]
    fn reconnects_do_not_count_the_first_connect() {
        let m = Metrics::default();
        assert_eq!(m.snapshot().reconnects(), 0);
        m.connected();
        m.connected();
        m.connected();
        assert_eq!(m.snapshot().reconnects(), 2);
    }
}
