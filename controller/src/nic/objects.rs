//! The objects a nic is made of, written and removed: its Logical_Switch_Port and its IP
//! resource, both named after the nic key, so a retry after a crash rewrites the same objects.

use std::collections::BTreeMap;

use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use portkeeper_api::{IP, annotations};
use portkeeper_engine::{Lease, NicKey};
use serde_json::json;

use super::holder::{
    self, OWNER_ANNOTATION, OWNER_PORT_KEY, Owner, OwnerKind, POD_UID, PORT_POD_UID,
};
use crate::allocate::FOREIGN_PORT_OWNER;
use crate::context::{Context, FIELD_MANAGER};
use crate::error::Error;
use crate::ovn::{Northbound, port_spec};
use crate::plan;

/// What the port and the IP resource record about a nic's holder.
pub struct NicRecord<'a> {
    /// The nic's name part: the pod, or the VM.
    pub name: &'a str,
    /// The pod's namespace.
    pub namespace: &'a str,
    /// The writing pod's UID.
    pub pod_uid: &'a str,
    /// The workload owning the identity, if it outlives the pod.
    pub owner: Option<&'a Owner>,
    /// Whether the nic is a reservation's (its IP resource stays labelled `ip_reserved=true`).
    pub reserved: bool,
}

impl NicRecord<'_> {
    /// Kube-OVN's IP resource `podType`.
    fn pod_type(&self) -> &'static str {
        match self.owner.map(|o| o.kind) {
            Some(OwnerKind::StatefulSet) => "StatefulSet",
            Some(OwnerKind::VirtualMachine) => "VirtualMachine",
            None => "",
        }
    }

    /// Creates or updates the nic's port with the lease's addresses (idempotent by name;
    /// `options` are never touched, so live-migration state survives).
    pub async fn write_port<N: Northbound>(
        &self,
        ctx: &Context<N>,
        lease: &Lease,
        port_security: bool,
    ) -> Result<(), Error> {
        let mut spec = port_spec(
            lease.key.as_str(),
            &lease.subnet,
            &format!("{}/{}", self.namespace, self.name),
            plan::port_addresses(lease),
            port_security,
        );
        spec.external_ids
            .insert(PORT_POD_UID.to_owned(), self.pod_uid.to_owned());
        if let Some(owner) = self.owner {
            spec.external_ids
                .insert(OWNER_PORT_KEY.to_owned(), owner.to_string());
        }
        ctx.nb.upsert_port(&spec).await?;
        Ok(())
    }

    /// Creates or updates the nic's IP resource by server-side apply.
    pub async fn apply_ip(
        &self,
        client: &kube::Client,
        lease: &Lease,
        node: Option<&str>,
    ) -> Result<(), Error> {
        let mut labels = BTreeMap::from([
            (annotations::LABEL_SUBNET.to_owned(), lease.subnet.clone()),
            (
                annotations::LABEL_IP_RESERVED.to_owned(),
                self.reserved.to_string(),
            ),
            (lease.subnet.clone(), String::new()),
        ]);
        if let Some(node) = node {
            labels.insert(annotations::LABEL_NODE_NAME.to_owned(), node.to_owned());
        }
        let mut recorded = BTreeMap::from([(POD_UID, self.pod_uid.to_owned())]);
        if let Some(owner) = self.owner {
            recorded.insert(OWNER_ANNOTATION, owner.to_string());
        }
        let body = json!({
            "apiVersion": "kubeovn.io/v1",
            "kind": "IP",
            "metadata": {
                "name": lease.key.as_str(),
                "labels": labels,
                "annotations": recorded,
            },
            "spec": plan::ip_spec(self.name, self.namespace, lease, node, self.pod_type()),
        });
        Api::<IP>::all(client.clone())
            .patch(
                lease.key.as_str(),
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(body),
            )
            .await?;
        Ok(())
    }
}

/// Deletes a nic's port (if portkeeper made it for this owner) and IP resource, then frees the
/// engine binding. `uid` limits the release to that owner; `None` releases whoever holds it
/// (garbage collection of a nic whose pod is gone). Callers hold the nic's lock.
pub async fn release<N: Northbound>(
    ctx: &Context<N>,
    key: &NicKey,
    uid: Option<&str>,
) -> Result<(), Error> {
    let lease = ctx.engine.lease(key);
    if let (Some(l), Some(uid)) = (&lease, uid)
        && l.uid != uid
    {
        return Ok(());
    }
    if lease.as_ref().is_some_and(|l| l.uid == FOREIGN_PORT_OWNER) {
        return Ok(());
    }
    if let Some(port) = ctx.nb.port(key.as_str())
        && port.is_ours()
        && uid.is_none_or(|u| holder::port_holder(&port.external_ids).is_none_or(|p| p == u))
    {
        ctx.nb.delete_port(key.as_str()).await?;
    }
    let ips: Api<IP> = Api::all(ctx.client.clone());
    let current = ips.get_opt(key.as_str()).await?;
    if let (Some(ip), Some(lease)) = (&current, &lease)
        && ip
            .labels()
            .get(annotations::LABEL_IP_RESERVED)
            .map(String::as_str)
            == Some("true")
        && ip.metadata.deletion_timestamp.is_none()
    {
        // A reservation outlives the pods that use it: their port is gone, the address and
        // MAC are held for the next pod of the name.
        return super::reserve::hold_again(ctx, ip, lease).await;
    }
    if let Some(ip) = current
        && uid.is_none_or(|u| holder::recorded_holder(ip.annotations()).is_none_or(|p| p == u))
    {
        crate::takeover::drop_kube_ovn_finalizers(&ctx.client, &ip).await?;
        match ips.delete(key.as_str(), &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    if let Some(lease) = lease
        && ctx.engine.release(key, &lease.owner()).is_ok()
    {
        ctx.metrics.releases.inc();
    }
    Ok(())
}

/// The exact request portkeeper sends for an IP resource, pinned with a mock API server: the
/// URL, the field manager, the content type and the body. Behaviour is tested against a real
/// API server in `kind-e2e/tests/controller_addressing.rs`.
#[cfg(test)]
mod request_shape_tests {
    use super::*;
    use crate::mock_api;
    use portkeeper_engine::MacAddress;

    #[tokio::test]
    async fn ip_resource_is_server_side_applied_with_force() {
        let (client, mut handle) = mock_api::client();
        let record = NicRecord {
            name: "web",
            namespace: "shop",
            pod_uid: "u-1",
            owner: None,
            reserved: false,
        };
        let reply = json!({
            "apiVersion": "kubeovn.io/v1", "kind": "IP",
            "metadata": { "name": "web.shop" }, "spec": {}
        });
        let lease = Lease {
            subnet: "ovn-default".into(),
            key: NicKey::new("web", "shop", None),
            uid: "u-1".into(),
            generation: 1,
            v4: Some("10.16.0.2".parse().unwrap()),
            v6: None,
            mac: Some(MacAddress::parse("0a:58:0a:10:00:02").unwrap()),
        };
        let sent = mock_api::patched(
            &mut handle,
            record.apply_ip(&client, &lease, Some("node1")),
            reply,
        )
        .await;
        assert_eq!(
            sent.uri,
            "/apis/kubeovn.io/v1/ips/web.shop?&force=true&fieldManager=portkeeper-controller"
        );
        assert_eq!(sent.content_type, "application/apply-patch+yaml");
        assert_eq!(
            sent.body,
            json!({
                "apiVersion": "kubeovn.io/v1",
                "kind": "IP",
                "metadata": {
                    "name": "web.shop",
                    "labels": {
                        "ovn.kubernetes.io/subnet": "ovn-default",
                        "ovn.kubernetes.io/ip_reserved": "false",
                        "ovn.kubernetes.io/node-name": "node1",
                        "ovn-default": "",
                    },
                    "annotations": { "portkeeper.io/pod-uid": "u-1" },
                },
                "spec": {
                    "podName": "web",
                    "namespace": "shop",
                    "subnet": "ovn-default",
                    "nodeName": "node1",
                    "ipAddress": "10.16.0.2",
                    "v4IpAddress": "10.16.0.2",
                    "macAddress": "0a:58:0a:10:00:02",
                },
            })
        );
    }
}
