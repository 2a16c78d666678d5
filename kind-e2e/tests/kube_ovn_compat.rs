//! A Kube-OVN user's manifests on portkeeper: a Subnet and an IPPool exported from Kube-OVN with
//! every field set apply under strict validation, round-trip unchanged, and have the fields
//! portkeeper does not implement named on their status and in one Warning Event. Mistakes are
//! refused by the admission webhook at `kubectl apply`, and by the controller when the webhook is
//! down. A finished pod (a Job's) gives its address back, also one that finished while the
//! controller was down. A reserved IP goes to its named pod, also after a controller restart.
//! portkeeper takes over a cluster Kube-OVN allocated without changing a port, address or MAC.
//!
//! One cluster serves all cases, which run in order; the controller is restarted between some.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kind_e2e::Cluster;
use kind_e2e::portkeeper::{
    Controller, allocated, annotation, controller_binary, events, ip_resource, kubeovn_resource,
    nbctl, port_names, prepare_cluster, repo_root, run_on_cluster, wait_for, warnings,
};
use kube::api::{ApiResource, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde::Deserialize;
use serde_json::{Value, json};

const NS: &str = "compat";
const CIDR: &str = "10.16.0.0/16";

/// The Kube-OVN export the API crate's schema test also reads.
fn export_path() -> PathBuf {
    repo_root().join("controller/api/tests/data/kube-ovn-export.yaml")
}

/// The documents of the export, as JSON.
fn exported() -> Vec<Value> {
    let text = std::fs::read_to_string(export_path()).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap())
        .collect()
}

/// `kubectl <args>` with `stdin` as its input; the output, whatever the exit status.
fn kubectl_with(cluster: &Cluster, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new("kubectl")
        .env("KUBECONFIG", cluster.kubeconfig())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kubectl");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// `kubectl apply --validate=strict` of `manifest`. The local API server (v1.20) predates
/// server-side field validation and ignores kubectl's `fieldValidation=Strict`; kubectl then
/// falls back to validating on the client against the server's `/openapi/v2`, which carries the
/// CRD schemas. A fresh cache folder makes kubectl read the schema the server publishes now.
fn strict_apply(cluster: &Cluster, manifest: &str) -> Output {
    let cache = tempfile::tempdir().unwrap();
    let cache_dir = format!("--cache-dir={}", cache.path().display());
    kubectl_with(
        cluster,
        &["apply", "--validate=strict", &cache_dir, "-f", "-"],
        manifest,
    )
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn kube_ovn_compat() {
    let agent = PathBuf::from(env!("CARGO_BIN_EXE_node-agent"));
    run_on_cluster(1, agent, 6, cases);
}

/// Returns the running controller, so the final consistency check sees its last writes.
async fn cases(cluster: &Cluster) -> Controller {
    let bin = controller_binary();
    let client = prepare_cluster(cluster, NS, false).await;
    let controller = Controller::start(&bin, cluster, CIDR, 0, &[]);
    let controller = exported_manifests_apply_unchanged(cluster, &client, controller, &bin).await;
    namespace_subnet_order_as_written(&client).await;
    controller.kill();

    let pki = Webhook::new(cluster);
    let flags = pki.flags();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let controller = Controller::start(&bin, cluster, CIDR, 2, &flags);
    pki.install(&client).await;
    wait_for("the webhook in force", async || {
        let probe = subnet_manifest("probe", "10.16.9.0/24");
        let out = kubectl_with(cluster, &["apply", "--dry-run=server", "-f", "-"], &probe);
        text(&out).contains("denied the request").then_some(())
    })
    .await;
    subnets_and_pools_refused_at_the_door(cluster, &client).await;
    let denied = pods_refused_at_the_door(cluster, &client).await;

    // The webhook down (the controller restarted without it; the configuration stays, and its
    // failurePolicy Ignore lets requests through): the controller refuses on its own.
    controller.kill();
    let controller = Controller::start(&bin, cluster, CIDR, 3, &[]);
    controller_refuses_without_the_webhook(cluster, &client, &denied).await;
    let job = finished_job_pod_releases(cluster, &client).await;
    let later = reserved_ip_goes_to_its_named_pod(cluster, &client).await;

    // Through a restart: nothing comes back for the finished pod (its address is free: a pod
    // may ask for it), the reservation still holds its address for its pod, and a pod that
    // failed while the controller was down gives its address back once it is up.
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let mut once = pod("fails-while-down", &[("logical_switch", "order-a")]);
    once.spec.as_mut().unwrap().restart_policy = Some("Never".into());
    pods.create(&PostParams::default(), &once).await.unwrap();
    allocated(&pods, "fails-while-down").await;
    let failed_port = format!("fails-while-down.{NS}");
    controller.kill();
    finish(&pods, "fails-while-down", 1).await;
    let controller = Controller::start(&bin, cluster, CIDR, 4, &[]);
    wait_for("restarted controller ready", async || {
        ready(&controller).await.then_some(())
    })
    .await;
    wait_for(
        "the pod that failed while the controller was down released",
        async || released(cluster, &client, &failed_port).await.then_some(()),
    )
    .await;
    let reuse = [
        ("logical_switch", "order-a"),
        ("ip_address", job.ip.as_str()),
    ];
    pods.create(&PostParams::default(), &pod("after-restart", &reuse))
        .await
        .unwrap();
    let p = allocated(&pods, "after-restart").await;
    assert_eq!(annotation(&p, "ip_address"), Some(job.ip.as_str()));
    assert!(released(cluster, &client, &job.port).await);
    pods.create(&PostParams::default(), &pod("later", &[]))
        .await
        .unwrap();
    let p = allocated(&pods, "later").await;
    assert_eq!(annotation(&p, "ip_address"), Some(later.as_str()));

    controller.kill();
    kube_ovn_state(cluster, &client).await;
    let before = northbound_rows(cluster);
    let controller = Controller::start(&bin, cluster, CIDR, 5, &[]);
    takeover_changes_nothing(cluster, &client, &before).await;
    controller
}

/// The pods, addresses and MACs of the Kube-OVN state [`kube_ovn_state`] builds.
const KUBE_OVN_PODS: [(&str, &str, &str); 2] = [
    ("web-1", "10.83.0.11", "0a:00:00:53:00:11"),
    ("web-2", "10.83.0.12", "0a:00:00:53:00:12"),
];
const KUBE_OVN_NS: &str = "kovn-ns";

/// What kube-ovn-controller leaves behind for a Subnet `kovn` with two running pods, in the exact
/// shapes it writes: the switch, its router port and router-type switch port, the pods' ports
/// (`external_ids` vendor, ls, pod; one `"MAC IP"` address; no options), the Subnet and the IP
/// resources with Kube-OVN's finalizers and labels, and the namespace and pod annotations.
/// Kube-OVN writes `gatewayNode: ""` and empty `v6IpAddress`/`containerID`; the local v1.20 API
/// server turns an empty string of a custom resource into `null` and refuses it, so those empty
/// fields are left out here (a current API server keeps them).
async fn kube_ovn_state(cluster: &Cluster, client: &Client) {
    let vendor = "external_ids:vendor=kube-ovn";
    nbctl(cluster, &["--may-exist", "lr-add", "ovn-cluster"]);
    nbctl(
        cluster,
        &[
            "ls-add",
            "kovn",
            "--",
            "set",
            "Logical_Switch",
            "kovn",
            vendor,
            "other_config:subnet=10.83.0.0/24",
            "other_config:gateway=10.83.0.1",
            "other_config:exclude_ips=10.83.0.1",
        ],
    );
    nbctl(
        cluster,
        &[
            "lrp-add",
            "ovn-cluster",
            "ovn-cluster-kovn",
            "0a:00:00:53:00:01",
            "10.83.0.1/24",
            "--",
            "set",
            "Logical_Router_Port",
            "ovn-cluster-kovn",
            vendor,
        ],
    );
    nbctl(
        cluster,
        &[
            "lsp-add",
            "kovn",
            "kovn-ovn-cluster",
            "--",
            "lsp-set-type",
            "kovn-ovn-cluster",
            "router",
            "--",
            "lsp-set-addresses",
            "kovn-ovn-cluster",
            "router",
            "--",
            "lsp-set-options",
            "kovn-ovn-cluster",
            "router-port=ovn-cluster-kovn",
            "--",
            "set",
            "Logical_Switch_Port",
            "kovn-ovn-cluster",
            vendor,
        ],
    );
    for (pod, ip, mac) in KUBE_OVN_PODS {
        let port = format!("{pod}.{KUBE_OVN_NS}");
        nbctl(
            cluster,
            &[
                "lsp-add",
                "kovn",
                &port,
                "--",
                "lsp-set-addresses",
                &port,
                &format!("{mac} {ip}"),
                "--",
                "set",
                "Logical_Switch_Port",
                &port,
                vendor,
                "external_ids:ls=kovn",
                &format!("external_ids:pod=\"{KUBE_OVN_NS}/{pod}\""),
            ],
        );
    }

    let mut manifests = vec![
        json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": { "name": KUBE_OVN_NS, "annotations": {
                LOGICAL_SWITCH: "kovn",
                "ovn.kubernetes.io/cidr": "10.83.0.0/24",
                "ovn.kubernetes.io/exclude_ips": "10.83.0.1",
            } },
        }),
        json!({
            "apiVersion": "kubeovn.io/v1", "kind": "Subnet",
            "metadata": { "name": "kovn", "finalizers": ["kubeovn.io/kube-ovn-controller"] },
            "spec": {
                "cidrBlock": "10.83.0.0/24", "default": false, "excludeIps": ["10.83.0.1"],
                "gateway": "10.83.0.1", "gatewayType": "distributed",
                "natOutgoing": false, "private": false, "protocol": "IPv4", "provider": "ovn",
                "vpc": "ovn-cluster", "namespaces": [KUBE_OVN_NS], "enableLb": false,
            },
        }),
    ];
    for (pod, ip, mac) in KUBE_OVN_PODS {
        manifests.push(json!({
            "apiVersion": "kubeovn.io/v1", "kind": "IP",
            "metadata": {
                "name": format!("{pod}.{KUBE_OVN_NS}"),
                "finalizers": ["kube-ovn-controller"],
                "labels": {
                    "ovn.kubernetes.io/subnet": "kovn",
                    "ovn.kubernetes.io/node-name": "node1",
                    "kovn": "",
                },
            },
            "spec": {
                "podName": pod, "namespace": KUBE_OVN_NS, "subnet": "kovn", "nodeName": "node1",
                "ipAddress": ip, "v4IpAddress": ip, "macAddress": mac,
                "attachIps": [], "attachMacs": [], "attachSubnets": [],
            },
        }));
        manifests.push(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": { "name": pod, "namespace": KUBE_OVN_NS, "annotations": {
                "ovn.kubernetes.io/allocated": "true",
                "ovn.kubernetes.io/routed": "true",
                "ovn.kubernetes.io/ip_address": ip,
                "ovn.kubernetes.io/mac_address": mac,
                "ovn.kubernetes.io/cidr": "10.83.0.0/24",
                "ovn.kubernetes.io/gateway": "10.83.0.1",
                LOGICAL_SWITCH: "kovn",
                "ovn.kubernetes.io/pod_nic_type": "veth-pair",
            } },
            "spec": {
                "nodeName": "node1",
                "automountServiceAccountToken": false,
                "containers": [{ "name": "c", "image": "busybox" }],
            },
        }));
    }
    for manifest in manifests {
        let out = kubectl_with(cluster, &["create", "-f", "-"], &manifest.to_string());
        assert!(out.status.success(), "{}", text(&out));
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), KUBE_OVN_NS);
    for (pod, _, _) in KUBE_OVN_PODS {
        wait_for(&format!("{pod} running on Kube-OVN's port"), async || {
            let p = pods.get(pod).await.ok()?;
            (p.status?.phase.as_deref() == Some("Running")).then_some(())
        })
        .await;
    }
}

/// Every Logical_Switch_Port and Logical_Router_Port row: (uuid, name, addresses or MAC and
/// networks), to compare before and after.
fn northbound_rows(cluster: &Cluster) -> std::collections::BTreeSet<String> {
    let rows = |table: &str, columns: &str| {
        nbctl(
            cluster,
            &[
                "--format=csv",
                "--data=bare",
                "--no-headings",
                &format!("--columns={columns}"),
                "list",
                table,
            ],
        )
        .lines()
        .map(|l| format!("{table} {l}"))
        .collect::<Vec<_>>()
    };
    rows("Logical_Switch_Port", "_uuid,name,addresses,type,options")
        .into_iter()
        .chain(rows("Logical_Router_Port", "_uuid,name,mac,networks"))
        .collect()
}

/// portkeeper started on Kube-OVN's state changes no port, address or MAC (the same rows, by
/// uuid), adopts the pods' ports and IP resources (its own records, Kube-OVN's finalizers gone),
/// and from then on releases them like its own: a pod deleted after the takeover leaves nothing.
async fn takeover_changes_nothing(
    cluster: &Cluster,
    client: &Client,
    before: &std::collections::BTreeSet<String>,
) {
    println!("case: taking over from Kube-OVN changes nothing");
    for (pod, _, _) in KUBE_OVN_PODS {
        let port = format!("{pod}.{KUBE_OVN_NS}");
        wait_for(&format!("{port} adopted"), async || {
            let ids = nbctl(
                cluster,
                &["get", "Logical_Switch_Port", &port, "external_ids"],
            );
            let ip = ip_resource(client, &port).await?;
            let finalizers = ip["metadata"]["finalizers"].as_array().map_or(0, Vec::len);
            (ids.contains("vendor=portkeeper") && finalizers == 0).then_some(())
        })
        .await;
    }
    let ready = wait_for("Subnet kovn ready", async || {
        let subnet = kubeovn_resource(client, "subnets", "Subnet", "kovn").await?;
        let conditions = subnet["status"]["conditions"].as_array()?.clone();
        conditions
            .iter()
            .find(|c| c["type"] == "Ready")
            .map(|c| c["status"] == "True")
    })
    .await;
    assert!(ready, "Subnet kovn must apply");
    assert_eq!(&northbound_rows(cluster), before, "a row changed or went");
    let pods: Api<Pod> = Api::namespaced(client.clone(), KUBE_OVN_NS);
    for (pod, ip, mac) in KUBE_OVN_PODS {
        let p = pods.get(pod).await.unwrap();
        assert_eq!(annotation(&p, "ip_address"), Some(ip));
        assert_eq!(annotation(&p, "mac_address"), Some(mac));
        let resource = ip_resource(client, &format!("{pod}.{KUBE_OVN_NS}"))
            .await
            .unwrap();
        assert_eq!(resource["spec"]["v4IpAddress"], ip);
        assert_eq!(resource["spec"]["macAddress"], mac);
    }

    // Adopted means released like portkeeper's own: nothing of web-2 is left.
    pods.delete("web-2", &Default::default()).await.unwrap();
    let port = format!("web-2.{KUBE_OVN_NS}");
    wait_for("web-2's port and IP resource gone", async || {
        released(cluster, client, &port).await.then_some(())
    })
    .await;
}

/// An IP resource created by hand reserves an address for a pod that does not exist yet: the
/// controller allocates it (the addresses its spec names, else any) and labels it reserved; the
/// pod of that name gets exactly those addresses and MAC, also in another subnet than its
/// namespace would give it; when the pod goes, the reservation holds them again, refusing any
/// other pod. Returns the address the dynamic reservation `later.compat` holds.
async fn reserved_ip_goes_to_its_named_pod(cluster: &Cluster, client: &Client) -> String {
    println!("case: a reserved IP goes to its named pod");
    let ips: Api<DynamicObject> = Api::all_with(client.clone(), &kubeovn("IP", "ips"));
    for (name, address) in [("reserved", "10.81.0.50"), ("later", "")] {
        let mut spec = json!({ "subnet": "order-a", "podName": name, "namespace": NS });
        if !address.is_empty() {
            spec["v4IpAddress"] = json!(address);
        }
        let ip: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "kubeovn.io/v1", "kind": "IP",
            "metadata": { "name": format!("{name}.{NS}") },
            "spec": spec,
        }))
        .unwrap();
        ips.create(&PostParams::default(), &ip).await.unwrap();
    }
    // (v4 address, MAC) of a reservation once the controller has allocated it.
    let reserved = async |name: &str| {
        wait_for(&format!("{name} reserved"), async || {
            let ip = ip_resource(client, &format!("{name}.{NS}")).await?;
            let labelled = ip["metadata"]["labels"]["ovn.kubernetes.io/ip_reserved"] == "true";
            let v4 = ip["spec"]["v4IpAddress"].as_str()?.to_owned();
            let mac = ip["spec"]["macAddress"].as_str()?.to_owned();
            labelled.then_some((v4, mac))
        })
        .await
    };
    let (v4, mac) = reserved("reserved").await;
    assert_eq!(v4, "10.81.0.50");
    let (later, _) = reserved("later").await;

    // The pod asks for nothing: its namespace would give it order-z, its reservation order-a.
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    pods.create(&PostParams::default(), &pod("reserved", &[]))
        .await
        .unwrap();
    let p = allocated(&pods, "reserved").await;
    assert_eq!(annotation(&p, "ip_address"), Some("10.81.0.50"));
    assert_eq!(annotation(&p, "mac_address"), Some(mac.as_str()));
    assert_eq!(annotation(&p, "logical_switch"), Some("order-a"));
    let port = format!("reserved.{NS}");
    assert_eq!(
        nbctl(cluster, &["lsp-get-addresses", &port]),
        format!("{mac} 10.81.0.50")
    );

    // The pod goes; the reservation stays and holds the address against any other pod.
    pods.delete("reserved", &Default::default()).await.unwrap();
    wait_for("the reserved pod's port gone", async || {
        port_names(cluster, &format!("name={port}"))
            .is_empty()
            .then_some(())
    })
    .await;
    let kept = ip_resource(client, &port)
        .await
        .expect("the reservation stays");
    assert_eq!(kept["spec"]["v4IpAddress"], "10.81.0.50");
    pods.create(
        &PostParams::default(),
        &pod("thief", &[("ip_address", "10.81.0.50")]),
    )
    .await
    .unwrap();
    let (reason, note) = wait_for("AddressConflict Event on thief", async || {
        warnings(client, NS, "thief").await.into_iter().next()
    })
    .await;
    assert_eq!(reason, "AddressConflict", "{note}");
    assert!(note.contains("reserved.compat"), "{note}");
    later
}

/// What a finished pod gave back.
struct Released {
    /// Its nic's port and IP resource name.
    port: String,
    /// The address it held.
    ip: String,
}

/// A Job's pod that completes gives its address back while the pod object stays: its port
/// and IP resource go, and the address is reused only after the never-used ones.
async fn finished_job_pod_releases(cluster: &Cluster, client: &Client) -> Released {
    println!("case: a Job's pod releases its address when it completes");
    let jobs: Api<Job> = Api::namespaced(client.clone(), NS);
    let job: Job = serde_json::from_value(json!({
        "metadata": { "name": "once", "namespace": NS },
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {
                    "labels": { "job": "once" },
                    "annotations": { LOGICAL_SWITCH: "order-a" },
                },
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": false,
                    "containers": [{ "name": "c", "image": "busybox" }],
                },
            },
        },
    }))
    .unwrap();
    jobs.create(&PostParams::default(), &job).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let running = wait_for("the Job's pod allocated and running", async || {
        let list = pods
            .list(&ListParams::default().labels("job=once"))
            .await
            .ok()?;
        let p = list.items.into_iter().next()?;
        let running = p.status.as_ref()?.phase.as_deref() == Some("Running");
        (running && annotation(&p, "allocated") == Some("true")).then_some(p)
    })
    .await;
    let name = running.name_any();
    let port = format!("{name}.{NS}");
    let ip = annotation(&running, "ip_address").unwrap().to_owned();
    assert_eq!(port_names(cluster, &format!("name={port}")), port);

    finish(&pods, &name, 0).await;
    wait_for("the Job succeeded", async || {
        let job = jobs.get("once").await.ok()?;
        (job.status?.succeeded? == 1).then_some(())
    })
    .await;
    wait_for("the finished pod's port and IP resource gone", async || {
        released(cluster, client, &port).await.then_some(())
    })
    .await;
    let finished = pods.get(&name).await.expect("the pod object stays");
    assert_eq!(finished.status.unwrap().phase.as_deref(), Some("Succeeded"));

    // Delayed reuse: the next pod gets a never-used address, not the one just released.
    pods.create(
        &PostParams::default(),
        &pod("after-job", &[("logical_switch", "order-a")]),
    )
    .await
    .unwrap();
    let next = allocated(&pods, "after-job").await;
    assert_ne!(annotation(&next, "ip_address"), Some(ip.as_str()));
    Released { port, ip }
}

/// The pod's only container exits with `code`, and the pod's phase becomes `Succeeded` (0) or
/// `Failed`: what kubelet reports (the local node agent plays kubelet, and a test plays the
/// container).
async fn finish(pods: &Api<Pod>, name: &str, code: i32) {
    let now = "2030-01-01T00:00:00Z";
    let (phase, reason) = if code == 0 {
        ("Succeeded", "Completed")
    } else {
        ("Failed", "Error")
    };
    let done = json!({ "status": {
        "phase": phase,
        "containerStatuses": [{
            "name": "c", "image": "busybox", "imageID": "", "ready": false, "restartCount": 0,
            "state": { "terminated": {
                "exitCode": code, "reason": reason, "startedAt": now, "finishedAt": now,
            } },
        }],
    } });
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&done))
        .await
        .unwrap();
}

/// Whether the nic `port` has neither a Northbound port nor an IP resource.
async fn released(cluster: &Cluster, client: &Client, port: &str) -> bool {
    port_names(cluster, &format!("name={port}")).is_empty()
        && ip_resource(client, port).await.is_none()
}

/// Pods whose addressing annotations are mistakes, refused at `kubectl apply` with the message
/// of the Event the controller would publish; nothing is created. Returns the refusal of the
/// pod `taken-ip`, which the next case compares with the controller's Event.
async fn pods_refused_at_the_door(cluster: &Cluster, client: &Client) -> String {
    println!("case: pods with taken, outside or invalid addresses are refused at kubectl apply");
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let ordered = pods.get("ordered").await.unwrap();
    let mac = annotation(&ordered, "mac_address").unwrap().to_owned();
    let cases: &[(&str, Annotations, &[&str])] = &[
        (
            "taken-ip",
            &[("ip_address", "10.82.0.2")],
            &["AddressConflict", "10.82.0.2", "ordered.compat"],
        ),
        (
            "taken-mac",
            &[("logical_switch", "order-a"), ("mac_address", &mac)],
            &["AddressConflict", &mac, "ordered.compat"],
        ),
        (
            "gateway-ip",
            &[("logical_switch", "order-z"), ("ip_address", "10.82.0.1")],
            &["AddressConflict", "10.82.0.1"],
        ),
        (
            "outside",
            &[("logical_switch", "order-z"), ("ip_address", "10.99.0.5")],
            &["AddressOutOfRange", "10.99.0.5"],
        ),
        (
            "bad-ip",
            &[("ip_address", "10.82.0.300")],
            &["InvalidAnnotation", "10.82.0.300"],
        ),
        (
            "multicast-mac",
            &[("mac_address", "01:00:5e:00:00:01")],
            &["InvalidAnnotation", "multicast"],
        ),
        (
            "no-subnet",
            &[("logical_switch", "missing-subnet")],
            &["subnet missing-subnet does not exist"],
        ),
        (
            "no-pool",
            &[("ip_pool", "missing-pool")],
            &["ippool missing-pool does not exist"],
        ),
    ];
    let mut taken = String::new();
    for (name, annotations, needles) in cases {
        let manifest = serde_json::to_string(&pod(name, annotations)).unwrap();
        let said = refused(cluster, "pods", name, &manifest, needles);
        if *name == "taken-ip" {
            taken = said;
        }
        // Nothing in OVN either.
        assert_eq!(
            port_names(cluster, &format!("name={name}.{NS}")),
            "",
            "{name}: no port"
        );
    }
    // A pod that fits is admitted.
    pods.create(
        &PostParams::default(),
        &pod(
            "fits",
            &[("logical_switch", "order-z"), ("ip_address", "10.82.0.40")],
        ),
    )
    .await
    .unwrap();
    let p = allocated(&pods, "fits").await;
    assert_eq!(annotation(&p, "ip_address"), Some("10.82.0.40"));
    taken
}

/// With the webhook unreachable, the same mistakes get in and the controller refuses them: the
/// pod gets the Event whose message the webhook gave, and an overlapping Subnet stays unapplied
/// (Ready false, a Warning Event, no switch in OVN).
async fn controller_refuses_without_the_webhook(cluster: &Cluster, client: &Client, denied: &str) {
    println!("case: with the webhook down, the controller still refuses with an Event");
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    pods.create(
        &PostParams::default(),
        &pod("taken-ip", &[("ip_address", "10.82.0.2")]),
    )
    .await
    .expect("the webhook is down, so the pod is created");
    let (reason, note) = wait_for("AddressConflict Event on taken-ip", async || {
        warnings(client, NS, "taken-ip").await.into_iter().next()
    })
    .await;
    assert_eq!(reason, "AddressConflict");
    assert!(
        denied.ends_with(&note),
        "webhook said {denied:?}, the Event {note:?}"
    );
    assert_eq!(
        annotation(&pods.get("taken-ip").await.unwrap(), "allocated"),
        None
    );

    let overlapping = subnet_manifest("inside-default", "10.16.5.0/24");
    let out = kubectl_with(cluster, &["apply", "-f", "-"], &overlapping);
    assert!(out.status.success(), "{}", text(&out));
    let message = wait_for("inside-default not ready", async || {
        let subnet = kubeovn_resource(client, "subnets", "Subnet", "inside-default").await?;
        let conditions = subnet["status"]["conditions"].as_array()?.clone();
        conditions
            .iter()
            .find(|c| c["type"] == "Ready" && c["status"] == "False")
            .and_then(|c| c["message"].as_str().map(str::to_owned))
    })
    .await;
    assert!(
        message.contains("overlaps subnet ovn-default (10.16.0.0/16)"),
        "{message}"
    );
    let notes = wait_for("ReconcileFailed Event on inside-default", async || {
        let notes: Vec<String> = events(client, "default", "inside-default")
            .await
            .into_iter()
            .filter(|(kind, reason, _)| kind == "Warning" && reason == "ReconcileFailed")
            .map(|(_, _, note)| note)
            .collect();
        (!notes.is_empty()).then_some(notes)
    })
    .await;
    assert_eq!(notes, [message]);
    assert!(
        !nbctl(cluster, &["ls-list"]).contains("inside-default"),
        "an overlapping Subnet gets no switch"
    );
    // The user deletes the mistake, and it goes (an unapplied Subnet holds nothing).
    Api::<DynamicObject>::all_with(client.clone(), &kubeovn("Subnet", "subnets"))
        .delete("inside-default", &Default::default())
        .await
        .unwrap();
    wait_for("inside-default deleted", async || {
        let gone = kubeovn_resource(client, "subnets", "Subnet", "inside-default")
            .await
            .is_none();
        gone.then_some(())
    })
    .await;
}

/// Each mistake is refused by `kubectl apply` with the webhook's message and leaves nothing
/// behind: the object does not exist afterwards (or, for an update, keeps its spec).
async fn subnets_and_pools_refused_at_the_door(cluster: &Cluster, client: &Client) {
    println!("case: Subnet and IPPool mistakes are refused at kubectl apply");
    let cases: &[(&str, &str, String, &[&str])] = &[
        (
            "subnets",
            "inside-default",
            subnet_manifest("inside-default", "10.16.5.0/24"),
            &["overlaps subnet ovn-default (10.16.0.0/16)"],
        ),
        (
            "subnets",
            "around-order",
            subnet_manifest("around-order", "10.80.0.0/12"),
            &["overlaps subnet", "10.80.0.0/12"],
        ),
        (
            "subnets",
            "bad-cidr",
            subnet_manifest("bad-cidr", "10.90.0.0/33"),
            &["cidrBlock", "10.90.0.0/33"],
        ),
        (
            "ippools",
            "outside",
            pool_manifest("outside", "order-a", &["10.81.0.10", "10.99.0.1"]),
            &["10.99.0.1 is outside subnet order-a (10.81.0.0/24)"],
        ),
        (
            "ippools",
            "no-subnet",
            pool_manifest("no-subnet", "missing-subnet", &["10.81.0.10"]),
            &["subnet missing-subnet does not exist"],
        ),
    ];
    for (plural, name, manifest, needles) in cases {
        refused(cluster, plural, name, manifest, needles);
    }

    // Pools: one that fits is admitted; one sharing an address with it is refused.
    let fits = pool_manifest("pool-a", "order-a", &["10.81.0.10..10.81.0.19"]);
    let out = kubectl_with(cluster, &["apply", "-f", "-"], &fits);
    assert!(out.status.success(), "{}", text(&out));
    let overlapping = pool_manifest("pool-b", "order-a", &["10.81.0.15..10.81.0.25"]);
    refused(
        cluster,
        "ippools",
        "pool-b",
        &overlapping,
        &["pool-a", "10.81.0.15"],
    );

    // An update that would overlap is refused and the stored spec stays.
    let moved = json!({
        "apiVersion": "kubeovn.io/v1", "kind": "Subnet",
        "metadata": { "name": "order-a" },
        "spec": { "cidrBlock": "10.82.0.0/25", "gateway": "10.82.0.1", "excludeIps": ["10.82.0.1"] },
    })
    .to_string();
    let out = kubectl_with(cluster, &["apply", "-f", "-"], &moved);
    assert!(!out.status.success(), "the update must be refused");
    assert!(
        text(&out).contains("overlaps subnet order-z (10.82.0.0/24)"),
        "{}",
        text(&out)
    );
    let stored = kubeovn_resource(client, "subnets", "Subnet", "order-a")
        .await
        .unwrap();
    assert_eq!(stored["spec"]["cidrBlock"], "10.81.0.0/24");
}

/// `kubectl apply` of `manifest` fails with the webhook's refusal naming each needle, and
/// `<plural>/<name>` does not exist.
fn refused(
    cluster: &Cluster,
    plural: &str,
    name: &str,
    manifest: &str,
    needles: &[&str],
) -> String {
    let out = kubectl_with(cluster, &["apply", "-f", "-"], manifest);
    let said = text(&out);
    assert!(
        !out.status.success(),
        "{plural}/{name} must be refused: {said}"
    );
    assert!(
        said.contains("denied the request"),
        "{plural}/{name}: {said}"
    );
    for needle in needles {
        assert!(
            said.contains(needle),
            "{plural}/{name}: {said:?} lacks {needle:?}"
        );
    }
    let get = kubectl_with(cluster, &["get", plural, name, "-n", NS], "");
    assert!(
        text(&get).contains("NotFound"),
        "{plural}/{name} must not exist: {}",
        text(&get)
    );
    said.trim_end()
        .rsplit_once("denied the request: ")
        .map(|(_, m)| m.to_owned())
        .unwrap_or_default()
}

fn subnet_manifest(name: &str, cidr: &str) -> String {
    json!({
        "apiVersion": "kubeovn.io/v1", "kind": "Subnet",
        "metadata": { "name": name },
        "spec": { "cidrBlock": cidr },
    })
    .to_string()
}

fn pool_manifest(name: &str, subnet: &str, ips: &[&str]) -> String {
    json!({
        "apiVersion": "kubeovn.io/v1", "kind": "IPPool",
        "metadata": { "name": name },
        "spec": { "subnet": subnet, "ips": ips },
    })
    .to_string()
}

/// The webhook on the local cluster: the controller runs as a process of the test, so the API
/// server calls it by URL on 127.0.0.1 with a certificate for that address, signed by a CA the
/// webhook configuration carries (in a real cluster the configuration names the Service of
/// yamls/webhook.yaml instead).
struct Webhook {
    port: u16,
    ca_pem: String,
    cert: PathBuf,
    key: PathBuf,
}

impl Webhook {
    fn new(cluster: &Cluster) -> Self {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair,
            KeyUsagePurpose,
        };
        let mut params = CertificateParams::new(Vec::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        params
            .distinguished_name
            .push(DnType::CommonName, "portkeeper e2e webhook CA");
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "127.0.0.1");
        let key = KeyPair::generate().unwrap();
        let leaf = params.signed_by(&key, &ca).unwrap();
        let (cert, key_path) = (
            cluster.run_dir().join("webhook.crt"),
            cluster.run_dir().join("webhook.key"),
        );
        std::fs::write(&cert, leaf.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Webhook {
            port,
            ca_pem: ca.pem(),
            cert,
            key: key_path,
        }
    }

    /// The controller flags that serve the webhook.
    fn flags(&self) -> Vec<String> {
        vec![
            format!("--webhook-addr=127.0.0.1:{}", self.port),
            format!("--webhook-cert-file={}", self.cert.display()),
            format!("--webhook-key-file={}", self.key.display()),
        ]
    }

    /// yamls/webhook.yaml's configuration, with the URL and CA of this webhook instead of the
    /// Service and cert-manager's CA.
    async fn install(&self, client: &Client) {
        let text = std::fs::read_to_string(repo_root().join("yamls/webhook.yaml")).unwrap();
        let mut config = serde_yaml::Deserializer::from_str(&text)
            .map(|doc| Value::deserialize(doc).unwrap())
            .find(|doc| doc["kind"] == "ValidatingWebhookConfiguration")
            .unwrap();
        for hook in config["webhooks"].as_array_mut().unwrap() {
            hook["clientConfig"] = json!({
                "url": format!("https://127.0.0.1:{}/validate", self.port),
                "caBundle": ByteString(self.ca_pem.clone().into_bytes()),
            });
        }
        let config: ValidatingWebhookConfiguration = serde_json::from_value(config).unwrap();
        Api::<ValidatingWebhookConfiguration>::all(client.clone())
            .create(&PostParams::default(), &config)
            .await
            .unwrap();
    }
}

/// Two subnets bound to one namespace: the controller lists them in the namespace's
/// `logical_switch` annotation; a user who reorders that list is obeyed, and a pod takes its
/// address from the first subnet of the order written, not of the names' order.
async fn namespace_subnet_order_as_written(client: &Client) {
    println!("case: the namespace's subnet order as written decides the subnet");
    let subnets: Api<DynamicObject> = Api::all_with(client.clone(), &kubeovn("Subnet", "subnets"));
    for (name, cidr) in [("order-a", "10.81.0.0/24"), ("order-z", "10.82.0.0/24")] {
        let subnet: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "kubeovn.io/v1", "kind": "Subnet",
            "metadata": { "name": name },
            "spec": { "cidrBlock": cidr, "namespaces": [NS] },
        }))
        .unwrap();
        subnets
            .create(&PostParams::default(), &subnet)
            .await
            .unwrap();
    }
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let listed = async || {
        namespaces
            .get(NS)
            .await
            .ok()?
            .annotations()
            .get(LOGICAL_SWITCH)
            .cloned()
    };
    wait_for("both subnets in the namespace annotation", async || {
        listed().await.filter(|l| l == "order-a,order-z")
    })
    .await;
    let reorder = json!({ "metadata": { "annotations": { LOGICAL_SWITCH: "order-z,order-a" } } });
    namespaces
        .patch(NS, &PatchParams::default(), &Patch::Merge(&reorder))
        .await
        .unwrap();
    // The controller republishes every 2 s: the order written must survive several passes.
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    assert_eq!(listed().await.as_deref(), Some("order-z,order-a"));
    let cidr = namespaces.get(NS).await.unwrap().annotations()["ovn.kubernetes.io/cidr"].clone();
    assert_eq!(cidr, "10.82.0.0/24;10.81.0.0/24");

    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    pods.create(&PostParams::default(), &pod("ordered", &[]))
        .await
        .unwrap();
    let p = allocated(&pods, "ordered").await;
    assert_eq!(annotation(&p, "logical_switch"), Some("order-z"));
    assert_eq!(annotation(&p, "ip_address"), Some("10.82.0.2"));
}

const LOGICAL_SWITCH: &str = "ovn.kubernetes.io/logical_switch";

fn kubeovn(kind: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: "kubeovn.io".into(),
        version: "v1".into(),
        api_version: "kubeovn.io/v1".into(),
        kind: kind.into(),
        plural: plural.into(),
    }
}

/// Pod annotations as (key without the `ovn.kubernetes.io/` prefix, value) pairs.
type Annotations<'a> = &'a [(&'a str, &'a str)];

/// A pod in the test namespace with `ovn.kubernetes.io/<key>` annotations.
fn pod(name: &str, annotations: Annotations) -> Pod {
    let annotations: BTreeMap<String, String> = annotations
        .iter()
        .map(|(k, v)| (format!("ovn.kubernetes.io/{k}"), v.to_string()))
        .collect();
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": name, "namespace": NS, "annotations": annotations },
        "spec": {
            "automountServiceAccountToken": false,
            "containers": [{ "name": "c", "image": "busybox" }],
        },
    }))
    .unwrap()
}

/// Strict validation refuses a field the schema lacks (so it is really on), accepts the whole
/// Kube-OVN export, and the API server keeps every field: `kubectl get -o json` returns the spec
/// exactly as written. The status names the fields portkeeper does not implement, and one
/// Warning Event says the same, also after a controller restart.
async fn exported_manifests_apply_unchanged(
    cluster: &Cluster,
    client: &Client,
    controller: Controller,
    bin: &std::path::Path,
) -> Controller {
    println!("case: strict validation is on and refuses an undeclared field");
    wait_for("the Subnet schema published in /openapi/v2", async || {
        let out = kubectl_with(cluster, &["get", "--raw", "/openapi/v2"], "");
        let published = String::from_utf8_lossy(&out.stdout);
        (published.contains("io.kubeovn.v1.Subnet") && published.contains("u2oFeatures"))
            .then_some(())
    })
    .await;
    let typo = "apiVersion: kubeovn.io/v1\nkind: Subnet\nmetadata:\n  name: typo\nspec:\n  cidrBlock: 10.90.0.0/24\n  natOutgoingg: true\n";
    let out = strict_apply(cluster, typo);
    assert!(!out.status.success(), "a misspelt field must be refused");
    assert!(text(&out).contains("natOutgoingg"), "{}", text(&out));
    assert!(
        kubeovn_resource(client, "subnets", "Subnet", "typo")
            .await
            .is_none()
    );

    println!("case: a Kube-OVN export with all 41 Subnet fields applies with --validate=strict");
    let manifest = std::fs::read_to_string(export_path()).unwrap();
    let out = strict_apply(cluster, &manifest);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        !text(&out).to_lowercase().contains("unknown field"),
        "{}",
        text(&out)
    );

    println!("case: the spec round-trips unchanged through kubectl get -o yaml");
    for (doc, plural) in exported().iter().zip(["subnets", "ippools"]) {
        let name = doc["metadata"]["name"].as_str().unwrap();
        let out = kubectl_with(cluster, &["get", plural, name, "-o", "yaml"], "");
        assert!(out.status.success(), "{}", text(&out));
        let stored: Value = serde_yaml::from_slice(&out.stdout).unwrap();
        assert_eq!(stored["spec"], doc["spec"], "{plural}/{name} spec changed");
    }

    println!("case: the status names the unsupported fields, once in a Warning Event");
    let expected = [
        "natOutgoing",
        "private",
        "allowSubnets",
        "gatewayNode",
        "vlan",
    ];
    let message = wait_for("Unsupported condition on vlan-prod", async || {
        let subnet = kubeovn_resource(client, "subnets", "Subnet", "vlan-prod").await?;
        let conditions = subnet["status"]["conditions"].as_array()?.clone();
        conditions
            .iter()
            .find(|c| c["type"] == "Unsupported" && c["status"] == "True")
            .and_then(|c| c["message"].as_str().map(str::to_owned))
    })
    .await;
    for field in expected {
        assert!(message.contains(field), "{message:?} should name {field}");
    }
    for honoured in [
        "cidrBlock",
        "excludeIps",
        "disableGatewayCheck",
        "logicalGateway",
        "enableDHCP",
        "dhcpV4Options",
        "mtu",
    ] {
        assert!(!message.contains(honoured), "{message:?} names {honoured}");
    }
    let pool_message = wait_for("Unsupported condition on vlan-prod-pool", async || {
        let pool = kubeovn_resource(client, "ippools", "IPPool", "vlan-prod-pool").await?;
        let conditions = pool["status"]["conditions"].as_array()?.clone();
        conditions
            .iter()
            .find(|c| c["type"] == "Unsupported")
            .and_then(|c| c["message"].as_str().map(str::to_owned))
    })
    .await;
    assert!(pool_message.contains("enableAddressSet"), "{pool_message}");

    let unsupported_events = async || {
        events(client, "default", "vlan-prod")
            .await
            .into_iter()
            .filter(|(kind, reason, _)| kind == "Warning" && reason == "Unsupported")
            .map(|(_, _, note)| note)
            .collect::<Vec<_>>()
    };
    let notes = wait_for("Unsupported Event on vlan-prod", async || {
        let notes = unsupported_events().await;
        (!notes.is_empty()).then_some(notes)
    })
    .await;
    assert_eq!(notes, std::slice::from_ref(&message));

    // The condition lives in the status, so a restarted controller does not warn again.
    controller.kill();
    let controller = Controller::start(bin, cluster, CIDR, 1, &[]);
    wait_for("restarted controller ready", async || {
        ready(&controller).await.then_some(())
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    assert_eq!(unsupported_events().await, [message]);
    controller
}

/// Whether the controller's `/readyz` answers 200.
async fn ready(controller: &Controller) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let url = controller.url("readyz");
    let authority = url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let Ok(mut stream) = tokio::net::TcpStream::connect(&authority).await else {
        return false;
    };
    let request = format!("GET /readyz HTTP/1.0\r\nHost: {authority}\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut reply = String::new();
    let _ = stream.read_to_string(&mut reply).await;
    reply.starts_with("HTTP/1.0 200") || reply.starts_with("HTTP/1.1 200")
}
