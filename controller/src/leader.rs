//! Leader election on a `coordination.k8s.io/v1` Lease, written against the Lease API directly
//! (kube 5 has no helper). Only the leader writes anything, and it stops writing before another
//! replica can take the Lease over:
//!
//! - Expiry is judged as client-go does: by how long the record has stayed unchanged on this
//!   replica's own clock, never by comparing timestamps written by another machine's clock. A
//!   standby takes over after `duration` of silence.
//! - The leader's [`Term`] ends `renew deadline` (two thirds of `duration`) after the *start* of
//!   its last successful renewal, on its own clock, whether or not a renewal is still in flight:
//!   every Lease call is bounded by [`LeaseConfig::call_timeout`], so a hung apiserver cannot keep
//!   the renewal loop from noticing. After that moment the API client refuses writes
//!   ([`fenced_client`]) and the Northbound write path refuses transactions, so a replica that
//!   was paused (SIGSTOP) or cut off writes nothing when it wakes up.
//! - What is already in flight when the term ends cannot be recalled from the API server;
//!   Northbound transactions are fenced by an OVSDB lock as well (see `crate::ovn`).

use std::future::Future;
use std::time::Duration;

use http::Method;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tokio::time::Instant;

use crate::error::Error;
use crate::term::{NotLeading, Term};

/// Who competes for which lease, and how fast.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// Lease name.
    pub name: String,
    /// Lease namespace.
    pub namespace: String,
    /// This replica's identity (its pod name).
    pub identity: String,
    /// How long a silent holder keeps the lease.
    pub duration: Duration,
}

impl LeaseConfig {
    /// How long the leader may go on after the start of its last successful renewal.
    pub fn renew_deadline(&self) -> Duration {
        self.duration * 2 / 3
    }

    /// The bound on one Lease call (a renewal is a read and a write): half the renew deadline,
    /// so a renewal that hangs is given up and retried (on a new connection if need be) before
    /// the deadline.
    pub fn call_timeout(&self) -> Duration {
        self.duration / 3
    }

    /// Time between renewals: often, so that a slow API server leaves room for retries.
    fn renew_period(&self) -> Duration {
        self.duration / 5
    }

    /// Wait before retrying a failed call.
    fn retry(&self) -> Duration {
        self.duration / 15
    }
}

/// The API client every controller write goes through: reads always pass, writes
/// (`POST`/`PUT`/`PATCH`/`DELETE`) only while `term` is valid. The Lease itself is written
/// through a client without this gate.
pub fn fenced_client(config: kube::Config, term: Term) -> Result<Client, kube::Error> {
    let builder = kube::client::ClientBuilder::try_from(config)?;
    Ok(builder.with_layer(&gate(term)).build())
}

/// The write gate of [`fenced_client`], as a tower layer.
fn gate<B>(
    term: Term,
) -> tower::filter::FilterLayer<
    impl Fn(http::Request<B>) -> Result<http::Request<B>, NotLeading> + Clone,
> {
    tower::filter::FilterLayer::new(move |request: http::Request<B>| {
        let read = matches!(*request.method(), Method::GET | Method::HEAD);
        if read || term.is_valid() {
            Ok(request)
        } else {
            Err(NotLeading)
        }
    })
}

/// A held lease; [`Leadership::keep`] renews it until it is lost.
pub struct Leadership {
    api: Api<Lease>,
    config: LeaseConfig,
    term: Term,
    /// When the last successful write of the Lease started.
    renewed: Instant,
}

/// `call` bounded by the Lease call timeout; a timeout counts as a failed call.
async fn bounded<T>(
    limit: Duration,
    call: impl Future<Output = Result<T, kube::Error>>,
) -> Result<T, LeaseCallError> {
    match tokio::time::timeout(limit, call).await {
        Ok(result) => result.map_err(LeaseCallError::Kube),
        Err(_) => Err(LeaseCallError::TimedOut(limit)),
    }
}

#[derive(Debug, thiserror::Error)]
enum LeaseCallError {
    #[error("{0}")]
    Kube(kube::Error),
    #[error("no answer within {0:?}")]
    TimedOut(Duration),
}

impl LeaseCallError {
    fn conflict(&self) -> bool {
        matches!(self, LeaseCallError::Kube(kube::Error::Api(e)) if e.code == 409)
    }
}

/// Blocks until this replica holds the lease, then begins `term`. Failed or timed-out calls are
/// retried; the Lease API being unreachable only delays the start.
pub async fn acquire(client: Client, config: LeaseConfig, term: Term) -> Leadership {
    let api: Api<Lease> = Api::namespaced(client, &config.namespace);
    let limit = config.call_timeout();
    let mut observed: Option<(String, Instant)> = None;
    loop {
        let started = Instant::now();
        let won = match bounded(limit, api.get_opt(&config.name)).await {
            Err(e) => {
                tracing::warn!(error = %e, "reading the leader Lease failed");
                false
            }
            Ok(None) => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(config.name.clone()),
                        namespace: Some(config.namespace.clone()),
                        ..Default::default()
                    },
                    spec: Some(held_spec(&config, None)),
                };
                written(
                    "create",
                    bounded(limit, api.create(&PostParams::default(), &lease)).await,
                )
            }
            Ok(Some(current)) => {
                let spec = current.spec.clone().unwrap_or_default();
                let version = current
                    .metadata
                    .resource_version
                    .clone()
                    .unwrap_or_default();
                let holder = spec.holder_identity.clone().unwrap_or_default();
                let silent_for = match &observed {
                    Some((v, since)) if *v == version => since.elapsed(),
                    _ => {
                        observed = Some((version, Instant::now()));
                        Duration::ZERO
                    }
                };
                let held_by_other = !holder.is_empty() && holder != config.identity;
                let duration = spec
                    .lease_duration_seconds
                    .map_or(config.duration, |s| Duration::from_secs(s.max(1) as u64));
                if !held_by_other || silent_for >= duration {
                    let mut next = current.clone();
                    next.spec = Some(held_spec(&config, Some(&spec)));
                    let params = PostParams::default();
                    let replace = api.replace(&config.name, &params, &next);
                    written("take over", bounded(limit, replace).await)
                } else {
                    false
                }
            }
        };
        if won {
            term.extend(started + config.renew_deadline());
            tracing::info!(lease = %config.name, identity = %config.identity, "acquired leadership");
            return Leadership {
                api,
                config,
                term,
                renewed: started,
            };
        }
        tokio::time::sleep(config.duration / 5).await;
    }
}

/// Whether a write of the Lease went through; a conflict (another replica wrote first) is
/// expected, anything else is logged.
fn written<T>(what: &str, result: Result<T, LeaseCallError>) -> bool {
    match result {
        Ok(_) => true,
        Err(e) if e.conflict() => false,
        Err(e) => {
            tracing::warn!(error = %e, "{what} of the leader Lease failed");
            false
        }
    }
}

fn held_spec(config: &LeaseConfig, previous: Option<&LeaseSpec>) -> LeaseSpec {
    let now = MicroTime(Timestamp::now());
    let ours = previous.and_then(|p| p.holder_identity.as_deref()) == Some(&config.identity);
    let transitions = previous.and_then(|p| p.lease_transitions).unwrap_or(0);
    LeaseSpec {
        holder_identity: Some(config.identity.clone()),
        lease_duration_seconds: Some(config.duration.as_secs().max(1) as i32),
        acquire_time: if ours {
            previous.and_then(|p| p.acquire_time.clone())
        } else {
            Some(now.clone())
        },
        renew_time: Some(now),
        lease_transitions: Some(if ours || previous.is_none() {
            transitions
        } else {
            transitions + 1
        }),
        ..Default::default()
    }
}

impl Leadership {
    /// The span in which this replica may write.
    pub fn term(&self) -> Term {
        self.term.clone()
    }

    /// Renews the lease every fifth of its duration. Returns (with an error) when the lease is
    /// lost: taken by another replica, or not renewed by the renew deadline. The term has ended
    /// by then: at the deadline at the latest, whatever the calls in flight are doing.
    pub async fn keep(mut self) -> Error {
        let deadline = self.config.renew_deadline();
        let mut next = self.renewed + self.config.renew_period();
        loop {
            tokio::time::sleep_until(next).await;
            let started = Instant::now();
            let expires = self.renewed + deadline;
            if started >= expires {
                tracing::warn!(lease = %self.config.name, "no renewal within the renew deadline");
                break;
            }
            let limit = self.config.call_timeout().min(expires - started);
            match bounded(limit, self.renew()).await {
                Ok(true) => {
                    self.renewed = started;
                    self.term.extend(started + deadline);
                    next = started + self.config.renew_period();
                }
                Ok(false) => {
                    tracing::warn!(lease = %self.config.name, "the Lease is held by another replica");
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "lease renewal failed");
                    next = (Instant::now() + self.config.retry()).min(expires);
                }
            }
        }
        self.term.end();
        Error::LostLeadership(self.config.name.clone())
    }

    async fn renew(&self) -> Result<bool, kube::Error> {
        let mut lease = self.api.get(&self.config.name).await?;
        let spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(&self.config.identity) {
            return Ok(false);
        }
        lease.spec = Some(held_spec(&self.config, Some(&spec)));
        self.api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mock_api;
    use http::{Request, Response};
    use kube::client::Body;
    use serde_json::json;
    use tower::Layer;

    fn config() -> LeaseConfig {
        LeaseConfig {
            name: "pk".into(),
            namespace: "default".into(),
            identity: "me".into(),
            duration: Duration::from_secs(3),
        }
    }

    fn lease(holder: &str) -> serde_json::Value {
        json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "pk", "namespace": "default", "resourceVersion": "1"},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": 3},
        })
    }

    /// A leadership won just now, its term begun.
    fn won(client: Client) -> (Leadership, Term) {
        let term = Term::default();
        let now = Instant::now();
        term.extend(now + config().renew_deadline());
        let leadership = Leadership {
            api: Api::namespaced(client, "default"),
            config: config(),
            term: term.clone(),
            renewed: now,
        };
        (leadership, term)
    }

    /// Answers the next request with `reply`; returns its method.
    async fn reply(handle: &mut mock_api::Handle, reply: serde_json::Value) -> http::Method {
        let (request, send) = handle.next_request().await.expect("a request");
        send.send_response(Response::new(Body::from(
            serde_json::to_vec(&reply).unwrap(),
        )));
        request.method().clone()
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_renewal_ends_the_term_by_the_renew_deadline() {
        let (client, mut handle) = mock_api::client();
        let (leadership, term) = won(client);
        let started = Instant::now();
        let keeper = tokio::spawn(leadership.keep());
        // Every request arrives and is never answered, as with a hung API server.
        tokio::spawn(async move {
            let mut unanswered = Vec::new();
            while let Some(request) = handle.next_request().await {
                unanswered.push(request);
            }
        });
        tokio::time::sleep(Duration::from_millis(1900)).await;
        assert!(term.is_valid(), "the term lasts until the renew deadline");
        let lost = tokio::time::timeout(config().duration, keeper)
            .await
            .expect("the keeper gives up by the renew deadline, not when the call returns");
        assert!(matches!(lost.unwrap(), Error::LostLeadership(_)));
        assert!(!term.is_valid());
        let took = started.elapsed();
        assert!(
            took <= config().renew_deadline() && config().renew_deadline() < config().duration,
            "the term ended after {took:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_renewal_extends_the_term_from_when_it_started() {
        let (client, mut handle) = mock_api::client();
        let (leadership, term) = won(client);
        let started = Instant::now();
        let keeper = tokio::spawn(leadership.keep());
        assert_eq!(reply(&mut handle, lease("me")).await, http::Method::GET);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(reply(&mut handle, lease("me")).await, http::Method::PUT);
        // Renewed when the renewal started, at the renew period: valid until then + 2 s.
        let renewed = started + config().renew_period();
        tokio::time::sleep_until(renewed + config().renew_deadline() - Duration::from_millis(10))
            .await;
        assert!(term.is_valid());
        keeper.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_taken_by_another_replica_ends_the_term_at_once() {
        let (client, mut handle) = mock_api::client();
        let (leadership, term) = won(client);
        let started = Instant::now();
        let keeper = tokio::spawn(leadership.keep());
        reply(&mut handle, lease("other")).await;
        assert!(matches!(keeper.await.unwrap(), Error::LostLeadership(_)));
        assert!(!term.is_valid());
        assert_eq!(started.elapsed(), config().renew_period());
    }

    #[tokio::test(start_paused = true)]
    async fn writes_pass_the_gate_only_within_the_term() {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let term = Term::default();
        let client = Client::new(gate(term.clone()).layer(service), "default");
        let leases: Api<Lease> = Api::namespaced(client, "default");
        let object: Lease = serde_json::from_value(lease("me")).unwrap();
        let params = PostParams::default();
        let create = || leases.create(&params, &object);

        let refused = create().await.expect_err("a standby writes nothing");
        assert!(refused.to_string().contains("not the leader"), "{refused}");
        let (read, answered) = tokio::join!(leases.get("pk"), reply(&mut handle, lease("x")));
        assert!(read.is_ok());
        assert_eq!(answered, http::Method::GET, "reads always pass");

        term.extend(Instant::now() + Duration::from_secs(1));
        let (written, method) = tokio::join!(create(), reply(&mut handle, lease("me")));
        assert!(written.is_ok());
        assert_eq!(method, http::Method::POST);

        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(create().await.is_err(), "the term is over");
        term.extend(Instant::now() + Duration::from_secs(1));
        term.end();
        assert!(create().await.is_err(), "an ended term never comes back");
    }
}
