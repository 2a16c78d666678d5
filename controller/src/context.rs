//! Shared state of the running controller.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::runtime::events::{Event, EventType};
use parking_lot::Mutex;
use portkeeper_api::annotations::NetworkKeys;
use portkeeper_engine::Engine;

use crate::config::Config;
use crate::error::Rejection;
use crate::events::EventPublisher;
use crate::metrics::Metrics;
use crate::ovn::{Measured, Northbound};
use crate::stores::Stores;

/// The field manager of every write portkeeper makes.
pub const FIELD_MANAGER: &str = "portkeeper-controller";

/// Everything a reconcile needs.
pub struct Context<N> {
    /// Kubernetes client.
    pub client: Client,
    /// Flags.
    pub config: Config,
    /// The address engine, rebuilt before any reconcile runs.
    pub engine: Engine,
    /// OVN Northbound, every write measured.
    pub nb: Measured<N>,
    /// Watched caches.
    pub stores: Stores,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Events, one series per message.
    pub events: EventPublisher,
    /// Annotation keys of the primary network.
    pub keys: NetworkKeys,
    /// Serialises allocation, release and GC of one nic.
    pub locks: KeyLocks,
    /// Consecutive failures per pod UID, for backoff.
    pub failures: Mutex<HashMap<String, u32>>,
}

impl<N: Northbound> Context<N> {
    /// Publishes a Warning Event for a rejected request. Failing to publish is logged, not fatal.
    pub async fn warn(&self, reference: &ObjectReference, action: &str, rejection: &Rejection) {
        self.metrics.rejected(rejection.reason.as_str());
        let event = Event {
            type_: EventType::Warning,
            reason: rejection.reason.as_str().to_owned(),
            note: Some(rejection.message.clone()),
            action: action.to_owned(),
            secondary: None,
        };
        self.events.publish(reference, event).await;
    }

    /// Publishes a Normal Event.
    pub async fn note(
        &self,
        reference: &ObjectReference,
        reason: &str,
        action: &str,
        note: String,
    ) {
        self.events
            .publish(reference, normal(reason, action, note))
            .await;
    }

    /// Publishes a Normal Event as an Event of its own, never counted in a series: each
    /// retention decision gets its own line in `kubectl describe`.
    pub async fn note_distinct(
        &self,
        reference: &ObjectReference,
        reason: &str,
        action: &str,
        note: String,
    ) {
        self.events
            .publish_alone(reference, normal(reason, action, note))
            .await;
    }

    /// The delay before retrying a failed object: 1 s doubling to 5 min.
    pub fn backoff(&self, uid: &str) -> Duration {
        let mut failures = self.failures.lock();
        let n = failures.entry(uid.to_owned()).or_default();
        *n = n.saturating_add(1);
        Duration::from_secs(1u64 << (*n - 1).min(8)).min(Duration::from_secs(300))
    }

    /// Forgets an object's failures after a success.
    pub fn succeeded(&self, uid: &str) {
        self.failures.lock().remove(uid);
    }
}

fn normal(reason: &str, action: &str, note: String) -> Event {
    Event {
        type_: EventType::Normal,
        reason: reason.to_owned(),
        note: Some(note),
        action: action.to_owned(),
        secondary: None,
    }
}

/// One async mutex per nic key, created on demand and dropped when unused.
#[derive(Default)]
pub struct KeyLocks {
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Holds a nic's lock.
pub struct KeyGuard<'a> {
    owner: &'a KeyLocks,
    key: String,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl KeyLocks {
    /// Waits for exclusive use of `key`.
    pub async fn lock(&self, key: &str) -> KeyGuard<'_> {
        let lock = self.locks.lock().entry(key.to_owned()).or_default().clone();
        let guard = lock.lock_owned().await;
        KeyGuard {
            owner: self,
            key: key.to_owned(),
            guard: Some(guard),
        }
    }
}

impl Drop for KeyGuard<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut locks = self.owner.locks.lock();
        if locks
            .get(&self.key)
            .is_some_and(|l| Arc::strong_count(l) == 1)
        {
            locks.remove(&self.key);
        }
    }
}
