//! Start-up sequence and the long-running tasks.
//!
//! 1. Serve `/healthz`, `/readyz` and `/metrics`; start the watches (their triggers shut); wait
//!    for the leader Lease.
//! 2. Wait until every cache is synced and Northbound is synced with the raft leader; open the
//!    triggers. Nothing is allocated before this point.
//! 3. Rebuild the engine from IP resources, pod annotations and Northbound ports together.
//! 4. Apply Subnets and IPPools, collect garbage and sweep retained identities once, then start
//!    the pod controller, the release worker, the retention worker, periodic GC and the admission
//!    webhook. `/readyz` turns ready.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::events::EventPublisher;
use futures::StreamExt;
use kube::Client;
use kube::runtime::Controller;
use kube::runtime::controller::Config as ControllerConfig;
use portkeeper_api::annotations::NetworkKeys;
use prometheus_client::registry::Registry;

use crate::addressing;
use crate::config::Config;
use crate::context::{Context, KeyLocks};
use crate::error::Error;
use crate::http::{self, Health};
use crate::leader::{self, LeaseConfig};
use crate::metrics::Metrics;
use crate::migration;
use crate::ovn::{Measured, Northbound};
use crate::pod;
use crate::rebuild;
use crate::reservation;
use crate::retention;
use crate::stores;
use crate::webhook;

/// Runs the controller until leadership is lost or a fatal error occurs. Every write goes
/// through `client` only within `term` (see [`leader`]); the Lease, and a standby's role label
/// on its own pod, are written through `lease_client`.
pub async fn run<N: Northbound>(
    config: Config,
    client: Client,
    lease_client: Client,
    term: crate::term::Term,
    nb: Arc<N>,
) -> Result<(), Error> {
    let started = Instant::now();
    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::register(&mut registry));
    let ready = Arc::new(AtomicBool::new(true));
    let health = Health {
        registry: Arc::new(registry),
        ready: ready.clone(),
    };
    // Every task lives in this set, so dropping `run` (or returning from it) stops them all.
    let mut tasks = tokio::task::JoinSet::new();
    let addr = config.metrics_addr;
    tasks.spawn(async move {
        if let Err(e) = http::serve(addr, health).await {
            tracing::error!(error = %e, "metrics server failed");
        }
    });

    let identity = config.identity();
    if config.webhook().is_some() {
        // A standby's label on its own pod is written outside any term.
        webhook::mark_role(&lease_client, &config.lease_namespace, &identity, false).await;
    }
    // Watching is reading: a standby fills its stores before it leads (their triggers stay shut
    // until then), so a takeover does not wait for the initial lists.
    let (stores, triggers, watches, gate) = stores::start(&client).await;
    for w in watches {
        tasks.spawn(w);
    }
    let leadership = leader::acquire(
        lease_client,
        LeaseConfig {
            name: config.lease_name.clone(),
            namespace: config.lease_namespace.clone(),
            identity: identity.clone(),
            duration: config.lease_duration(),
        },
        term,
    )
    .await;
    ready.store(false, Ordering::Release);
    let (lost_tx, lost) = tokio::sync::oneshot::channel();
    tasks.spawn(async move {
        let _ = lost_tx.send(leadership.keep().await);
    });

    addressing::ensure_default_subnet(&client, &config).await?;
    stores.wait_synced(&metrics).await?;
    stores.wait_for_default_subnet(&config).await;
    gate.open(&stores);
    while !nb.ready() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    metrics.synced("northbound");

    let keys = NetworkKeys::primary();
    let (engine, report) = rebuild::rebuild(&stores, nb.as_ref(), &config.cluster_router);
    rebuild::report(&report);
    let events = EventPublisher::new(client.clone(), identity.clone());
    let ctx = Arc::new(Context {
        client,
        config: config.clone(),
        engine,
        nb: Measured::new(nb, metrics.clone()),
        stores: stores.clone(),
        metrics: metrics.clone(),
        events,
        keys,
        locks: KeyLocks::default(),
        failures: Default::default(),
    });
    rebuild::announce_conflicts(&ctx, &report).await;
    let addressing = Arc::new(addressing::Addressing {
        ctx: ctx.clone(),
        applied: addressing::Applied::default(),
    });
    addressing::apply_all(&addressing).await;
    let collected = collect_garbage(&ctx).await?;
    tracing::info!(collected, "start-up garbage collection done");
    let released = retention::sweep(&ctx).await?;
    tracing::info!(released, "start-up retention sweep done");

    tasks.spawn(addressing::run(addressing, triggers.addressing));
    tasks.spawn(release_worker(ctx.clone(), triggers.deleted_pods));
    tasks.spawn(migration::run(ctx.clone()));
    tasks.spawn(reservation::run(ctx.clone(), triggers.applied_ips));
    tasks.spawn(retention_worker(
        ctx.clone(),
        triggers.workloads,
        triggers.deleted_ips,
    ));
    if let Some(period) = config.gc_interval() {
        tasks.spawn(periodic_gc(ctx.clone(), period));
    }
    if let Some((addr, files)) = config.webhook() {
        let served = ctx.clone();
        tasks.spawn(async move {
            if let Err(e) = webhook::serve(addr, files, served).await {
                tracing::error!(error = %e, "admission webhook failed; the controller's own checks remain");
            }
        });
        webhook::mark_role(&ctx.client, &config.lease_namespace, &identity, true).await;
    }
    metrics.startup_seconds.set(started.elapsed().as_secs_f64());
    ready.store(true, Ordering::Release);
    tracing::info!(seconds = started.elapsed().as_secs_f64(), "ready");

    let waiting = stores.clone();
    let relabelled = triggers.relabelled_nodes.flat_map(move |node| {
        futures::stream::iter(pod::awaiting_node(&waiting, &node, &NetworkKeys::primary()))
    });
    let controller = Controller::for_stream(triggers.applied_pods.map(Ok), stores.pods.clone())
        .reconcile_on(relabelled)
        .with_config(ControllerConfig::default().concurrency(config.workers))
        .run(pod::reconcile, pod::error_policy, ctx)
        .for_each(|_| futures::future::ready(()));
    tokio::select! {
        () = controller => Err(Error::Cache("pod watch ended".into())),
        lost = lost => Err(lost.unwrap_or_else(|_| Error::Cache("lease keeper stopped".into()))),
    }
}

async fn release_worker<N: Northbound>(
    ctx: Arc<Context<N>>,
    mut deleted: futures::channel::mpsc::UnboundedReceiver<k8s_openapi::api::core::v1::Pod>,
) {
    while let Some(pod) = deleted.next().await {
        let mut delay = Duration::from_millis(200);
        while let Err(e) = pod::release_deleted(&pod, &ctx).await {
            tracing::warn!(pod = ?pod.metadata.name, error = %e, "release failed; retrying");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(30));
        }
    }
}

/// Sweeps retained identities on every StatefulSet or VM change and periodically, and releases
/// the identity of a workload whose IP resource a user deleted.
async fn retention_worker<N: Northbound>(
    ctx: Arc<Context<N>>,
    mut workloads: futures::channel::mpsc::UnboundedReceiver<()>,
    mut deleted_ips: futures::channel::mpsc::UnboundedReceiver<portkeeper_api::IP>,
) {
    let mut tick = tokio::time::interval(ctx.config.retention_interval());
    loop {
        tokio::select! {
            ip = deleted_ips.next() => {
                let Some(ip) = ip else { return };
                if let Err(e) = retention::ip_deleted(&ctx, &ip).await {
                    tracing::warn!(error = %e, "releasing a deleted IP resource's nic failed");
                }
                if let Err(e) = reservation::deleted(&ctx, &ip).await {
                    tracing::warn!(error = %e, "releasing a deleted reservation failed");
                }
                continue;
            }
            w = workloads.next() => if w.is_none() { return },
            _ = tick.tick() => {}
        }
        while workloads.try_recv().is_ok() {}
        if let Err(e) = retention::sweep(&ctx).await {
            tracing::warn!(error = %e, "retention sweep failed");
        }
    }
}

async fn periodic_gc<N: Northbound>(ctx: Arc<Context<N>>, period: Duration) {
    let mut tick = tokio::time::interval(period);
    tick.tick().await;
    loop {
        tick.tick().await;
        match collect_garbage(&ctx).await {
            Ok(n) => tracing::info!(collected = n, "garbage collection done"),
            Err(e) => tracing::warn!(error = %e, "garbage collection failed"),
        }
    }
}

/// Garbage collection, then the ports that vanished from Northbound are restored.
async fn collect_garbage<N: Northbound>(ctx: &Arc<Context<N>>) -> Result<usize, Error> {
    let collected = rebuild::collect_garbage(ctx).await?;
    let restored = pod::restore_vanished_ports(ctx).await;
    if restored > 0 {
        tracing::info!(restored, "ports restored");
    }
    Ok(collected)
}
