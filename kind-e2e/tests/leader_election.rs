//! Two controller replicas and the faults a leader meets: killed (SIGKILL), hung (SIGSTOP, woken
//! with SIGCONT after the standby took over), and cut off from the API server (its connections
//! black-holed, so calls hang) while it still reaches Northbound. After each fault the standby
//! takes over, and exactly one replica writes at any time: checked in the API server's audit log
//! (each replica's User-Agent names it) and in Northbound's transaction log (each transaction's
//! comment names it). The takeover time is measured from the fault to the first allocation by the
//! new leader (Lease duration 5 s, as every e2e controller runs).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kind_e2e::Cluster;
use kind_e2e::portkeeper::{
    Controller, allocated, controller_binary, create_pod, prepare_cluster, run_on_cluster, wait_for,
};
use kind_e2e::writers::{Write, api_writes, nb_writes, turns};
use kube::Client;
use kube::api::Api;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const NS: &str = "ha";
const CIDR: &str = "10.16.0.0/16";

#[test]
fn exactly_one_writer_through_leader_faults() {
    run_on_cluster(1, PathBuf::from(env!("CARGO_BIN_EXE_node-agent")), 4, cases);
}

async fn cases(cluster: &Cluster) -> Controller {
    let bin = controller_binary();
    let client = prepare_cluster(cluster, NS, false).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let proxy = BlackHole::start(cluster).await;

    let first = Controller::start(&bin, cluster, CIDR, 0, &[]);
    leader_is(&client, "e2e-0").await;
    probe(&pods, "before").await;
    let second = Controller::start(&bin, cluster, CIDR, 1, &[]);
    // The standby is up and polling before the first fault.
    tokio::time::sleep(Duration::from_secs(2)).await;

    println!("fault: SIGKILL of the leader");
    let fault = Instant::now();
    first.kill();
    report("SIGKILL", fault, &client, &pods, "e2e-1", "after-kill").await;

    // The next standby reaches the API server through the proxy, for the third fault.
    let mut third = Controller::start_with(&bin, cluster, &proxy.kubeconfig, CIDR, 2, &[]);
    tokio::time::sleep(Duration::from_secs(2)).await;

    println!("fault: SIGSTOP of the leader (hung process)");
    let mut second = second;
    let fault = Instant::now();
    second.signal("STOP");
    report("SIGSTOP", fault, &client, &pods, "e2e-2", "after-stop").await;
    second.signal("CONT");
    let status = second.exited_within(Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| !s.success()),
        "the woken leader must notice its term ended and exit: {status:?}"
    );

    let fourth = Controller::start(&bin, cluster, CIDR, 3, &[]);
    tokio::time::sleep(Duration::from_secs(2)).await;

    println!("fault: the leader's API server connections black-holed");
    let fault = Instant::now();
    proxy.cut();
    let ended = Instant::now();
    let status = third.exited_within(Duration::from_secs(10));
    let ended_after = ended.elapsed();
    assert!(
        status.is_some_and(|s| !s.success()),
        "the cut-off leader must end its term and exit: {status:?}"
    );
    println!(
        "cut-off leader exited {:.1} s after the cut (renew deadline 2 s)",
        ended_after.as_secs_f64()
    );
    report("API cut", fault, &client, &pods, "e2e-3", "after-cut").await;

    let api = api_writes(&cluster.run_dir().join("log/audit.log"));
    let nb = nb_writes(&cluster.run_dir().join("ovn/nb.db"));
    for (log, writes) in [("API audit", &api), ("Northbound", &nb)] {
        assert_eq!(
            turns(writes),
            ["e2e-0", "e2e-1", "e2e-2", "e2e-3"],
            "{log} log: replicas must write one after another, never interleaved:\n{}",
            listing(writes)
        );
    }
    println!(
        "one writer at a time: {} API writes and {} Northbound transactions in four turns",
        api.len(),
        nb.len()
    );
    fourth
}

/// Creates pod `name` right after a fault and waits until the new leader (`leader`) allocated
/// it, printing the takeover figures.
async fn report(
    fault: &str,
    since: Instant,
    client: &Client,
    pods: &Api<Pod>,
    leader: &str,
    name: &str,
) {
    probe_created(pods, name).await;
    leader_is(client, leader).await;
    let lease = since.elapsed();
    allocated(pods, name).await;
    println!(
        "takeover after {fault}: Lease held by {leader} after {:.1} s, first allocation after {:.1} s",
        lease.as_secs_f64(),
        since.elapsed().as_secs_f64()
    );
}

async fn probe(pods: &Api<Pod>, name: &str) {
    probe_created(pods, name).await;
    allocated(pods, name).await;
}

async fn probe_created(pods: &Api<Pod>, name: &str) {
    create_pod(pods, NS, name).await;
}

/// Waits until the controllers' Lease names `identity` as its holder.
async fn leader_is(client: &Client, identity: &str) {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-system");
    wait_for(&format!("{identity} holding the Lease"), async || {
        let lease = leases.get_opt("portkeeper-controller").await.ok()??;
        (lease.spec?.holder_identity.as_deref() == Some(identity)).then_some(())
    })
    .await;
}

fn listing(writes: &[Write]) -> String {
    writes
        .iter()
        .map(|w| format!("{} {} {}", w.at, w.writer, w.what))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A TCP proxy in front of the API server; [`BlackHole::cut`] makes it swallow everything from
/// then on, keeping every connection open, so calls through it hang rather than fail.
struct BlackHole {
    kubeconfig: PathBuf,
    cut: Arc<AtomicBool>,
}

impl BlackHole {
    async fn start(cluster: &Cluster) -> Self {
        let original = std::fs::read_to_string(cluster.controller_kubeconfig()).unwrap();
        let server = original
            .lines()
            .find_map(|l| l.trim().strip_prefix("server: https://"))
            .expect("the API server address in the kubeconfig")
            .to_owned();
        let target: SocketAddr = server.parse().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let kubeconfig = cluster.run_dir().join("proxied.kubeconfig");
        let proxied = original.replace(
            &format!("server: https://{server}"),
            &format!("server: https://{}", listener.local_addr().unwrap()),
        );
        std::fs::write(&kubeconfig, proxied).unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        tokio::spawn(serve(listener, target, cut.clone()));
        BlackHole { kubeconfig, cut }
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
    }
}

async fn serve(listener: TcpListener, target: SocketAddr, cut: Arc<AtomicBool>) {
    let mut swallowed = Vec::new();
    while let Ok((inbound, _)) = listener.accept().await {
        if cut.load(Ordering::SeqCst) {
            swallowed.push(inbound);
            continue;
        }
        let cut = cut.clone();
        tokio::spawn(async move {
            let Ok(outbound) = TcpStream::connect(target).await else {
                return;
            };
            let (from_client, to_client) = inbound.into_split();
            let (from_server, to_server) = outbound.into_split();
            tokio::join!(
                pump(from_client, to_server, &cut),
                pump(from_server, to_client, &cut)
            );
        });
    }
}

/// Copies bytes until either side closes; once cut, holds both ends and copies nothing more.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    cut: &AtomicBool,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if cut.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
