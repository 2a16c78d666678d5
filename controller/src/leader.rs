//! Leader election on a `coordination.k8s.io/v1` Lease, written against the Lease API directly
//! (kube 5 has no helper). Only the leader writes anything; a replica that loses the lease stops,
//! so there is never a moment with two writers that both believe they lead.
//!
//! Expiry is judged as client-go does: by how long the record has stayed unchanged on this
//! replica's own clock, never by comparing timestamps written by another machine's clock.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};

use crate::error::Error;

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

/// A held lease; [`Leadership::keep`] renews it until it is lost.
pub struct Leadership {
    api: Api<Lease>,
    config: LeaseConfig,
}

/// Blocks until this replica holds the lease.
pub async fn acquire(client: Client, config: LeaseConfig) -> Result<Leadership, Error> {
    let api: Api<Lease> = Api::namespaced(client, &config.namespace);
    let retry = config.duration / 5;
    let mut observed: Option<(String, Instant)> = None;
    loop {
        match api.get_opt(&config.name).await? {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(config.name.clone()),
                        namespace: Some(config.namespace.clone()),
                        ..Default::default()
                    },
                    spec: Some(held_spec(&config, None)),
                };
                match api.create(&PostParams::default(), &lease).await {
                    Ok(_) => break,
                    Err(kube::Error::Api(e)) if e.code == 409 => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Some(current) => {
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
                    match api
                        .replace(&config.name, &PostParams::default(), &next)
                        .await
                    {
                        Ok(_) => break,
                        Err(kube::Error::Api(e)) if e.code == 409 => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }
        tokio::time::sleep(retry).await;
    }
    tracing::info!(lease = %config.name, identity = %config.identity, "acquired leadership");
    Ok(Leadership { api, config })
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
    /// Renews the lease every third of its duration. Returns (with an error) only when the lease
    /// is lost: taken by another replica, or not renewed within two thirds of its duration.
    pub async fn keep(self) -> Error {
        let period = self.config.duration / 3;
        let deadline = self.config.duration * 2 / 3;
        let mut last_renewal = Instant::now();
        loop {
            tokio::time::sleep(period).await;
            match self.renew().await {
                Ok(true) => last_renewal = Instant::now(),
                Ok(false) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "lease renewal failed");
                    if last_renewal.elapsed() > deadline {
                        break;
                    }
                }
            }
        }
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
