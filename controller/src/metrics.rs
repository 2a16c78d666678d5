//! Prometheus metrics, served on `/metrics`.

use ovsdb_client::runtime::group::GroupStats;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// A label carrying a reason or operation name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// The reason (Event reason, error kind or operation).
    pub reason: String,
}

/// A label naming a watched resource.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResourceLabel {
    /// The resource (`pods`, `subnets`, `northbound`, …).
    pub resource: String,
}

/// Every metric the controller exports.
pub struct Metrics {
    /// Nics that got addresses, port, IP resource and annotations.
    pub allocations: Counter,
    /// Nics released on deletion or by GC.
    pub releases: Counter,
    /// Rejected requests, by Event reason.
    pub rejections: Family<ReasonLabel, Counter>,
    /// Reconcile failures, by error kind.
    pub failures: Family<ReasonLabel, Counter>,
    /// Pod reconcile duration.
    pub reconcile_seconds: Histogram,
    /// Northbound transaction duration, by operation.
    pub nb_transaction_seconds: Family<ReasonLabel, Histogram>,
    /// Northbound group commit: transactions sent, writes they carried, failed batches split.
    pub nb_group: Family<ReasonLabel, Gauge>,
    /// 1 once a watched cache is synced.
    pub cache_synced: Family<ResourceLabel, Gauge>,
    /// Seconds from process start to ready (caches synced, engine rebuilt).
    pub startup_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// Objects deleted by garbage collection, by kind.
    pub garbage_collected: Family<ReasonLabel, Counter>,
    /// Live-migration option changes written to VM ports, by Event reason.
    pub migration_options: Family<ReasonLabel, Counter>,
}

fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

impl Metrics {
    /// Creates the metrics and registers them under `portkeeper_`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Metrics {
            allocations: Counter::default(),
            releases: Counter::default(),
            rejections: Family::default(),
            failures: Family::default(),
            reconcile_seconds: latency(),
            nb_transaction_seconds: Family::new_with_constructor(latency),
            nb_group: Family::default(),
            cache_synced: Family::default(),
            startup_seconds: Gauge::default(),
            garbage_collected: Family::default(),
            migration_options: Family::default(),
        };
        let r = registry.sub_registry_with_prefix("portkeeper");
        r.register("allocations", "Nics allocated", m.allocations.clone());
        r.register("releases", "Nics released", m.releases.clone());
        r.register(
            "rejections",
            "Rejected addressing requests by Event reason",
            m.rejections.clone(),
        );
        r.register(
            "reconcile_failures",
            "Failed reconciles by error kind",
            m.failures.clone(),
        );
        r.register(
            "pod_reconcile_seconds",
            "Pod reconcile duration",
            m.reconcile_seconds.clone(),
        );
        r.register(
            "nb_transaction_seconds",
            "OVN Northbound transaction duration by operation",
            m.nb_transaction_seconds.clone(),
        );
        r.register(
            "nb_group_commit",
            "Northbound group commit so far: transactions sent, writes carried, failed batches split",
            m.nb_group.clone(),
        );
        r.register(
            "cache_synced",
            "1 once the watched cache is synced",
            m.cache_synced.clone(),
        );
        r.register(
            "startup_seconds",
            "Seconds from start to ready (caches synced, engine rebuilt)",
            m.startup_seconds.clone(),
        );
        r.register(
            "garbage_collected",
            "Objects removed by garbage collection",
            m.garbage_collected.clone(),
        );
        r.register(
            "migration_options_written",
            "Live-migration option changes written to VM ports, by Event reason",
            m.migration_options.clone(),
        );
        m
    }

    /// Counts one write of a VM port's live-migration options.
    pub fn migration_options_written(&self, reason: &str) {
        self.migration_options
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Counts a rejection.
    pub fn rejected(&self, reason: &str) {
        self.rejections
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Counts a reconcile failure.
    pub fn failed(&self, kind: &str) {
        self.failures
            .get_or_create(&ReasonLabel {
                reason: kind.to_owned(),
            })
            .inc();
    }

    /// Records one Northbound transaction.
    pub fn nb_transaction(&self, op: &str, seconds: f64) {
        self.nb_transaction_seconds
            .get_or_create(&ReasonLabel {
                reason: op.to_owned(),
            })
            .observe(seconds);
    }

    /// Publishes the group commit's counters.
    pub fn nb_group(&self, stats: GroupStats) {
        for (what, value) in [
            ("transactions", stats.transactions),
            ("writes", stats.members),
            ("splits", stats.splits),
        ] {
            self.nb_group
                .get_or_create(&ReasonLabel {
                    reason: what.to_owned(),
                })
                .set(i64::try_from(value).unwrap_or(i64::MAX));
        }
    }

    /// Marks a cache synced.
    pub fn synced(&self, resource: &str) {
        self.cache_synced
            .get_or_create(&ResourceLabel {
                resource: resource.to_owned(),
            })
            .set(1);
    }
}
