//! What taking over from Kube-OVN needs beyond reading its state: Kube-OVN marks its ports with
//! `external_ids:vendor=kube-ovn` and holds its Subnets, IPPools and IP resources with a
//! finalizer only kube-ovn-controller removes. portkeeper adopts the ports as they are (same
//! name, switch, addresses and MAC; its own `external_ids`) and drops those finalizers, so a
//! Subnet, IPPool or IP resource deleted after the takeover goes away instead of hanging.

use std::fmt::Debug;

use kube::api::{Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::json;

/// Kube-OVN's `external_ids:vendor` on the rows it creates.
pub const KUBE_OVN_VENDOR: &str = "kube-ovn";

/// The finalizers kube-ovn-controller puts on its objects (older and newer spelling).
pub const KUBE_OVN_FINALIZERS: [&str; 2] =
    ["kube-ovn-controller", "kubeovn.io/kube-ovn-controller"];

/// The object's finalizers without Kube-OVN's, if it has any of those.
pub fn without_kube_ovn_finalizers<K: Resource>(object: &K) -> Option<Vec<String>> {
    let finalizers = object.finalizers();
    finalizers
        .iter()
        .any(|f| KUBE_OVN_FINALIZERS.contains(&f.as_str()))
        .then(|| {
            finalizers
                .iter()
                .filter(|f| !KUBE_OVN_FINALIZERS.contains(&f.as_str()))
                .cloned()
                .collect()
        })
}

/// How often a conflicting finalizer patch is tried again on a fresh read before the error goes
/// to the caller's retry.
const FINALIZER_ATTEMPTS: usize = 5;

/// Removes Kube-OVN's finalizers from a cluster-scoped object, conditional on the version read;
/// on a conflict (another writer changed the object) it reads the object again and retries, so
/// the finalizers are never left behind by a race: a caller may not pass here again (an adopted
/// port is not adopted twice).
pub async fn drop_kube_ovn_finalizers<K>(
    client: &kube::Client,
    object: &K,
) -> Result<(), kube::Error>
where
    K: Resource<DynamicType = (), Scope = kube::core::ClusterResourceScope>
        + Clone
        + DeserializeOwned
        + Debug,
{
    let api = Api::<K>::all(client.clone());
    let params = PatchParams {
        field_manager: Some(crate::context::FIELD_MANAGER.to_owned()),
        ..Default::default()
    };
    let mut current = object.clone();
    let mut attempt = 1;
    loop {
        let Some(kept) = without_kube_ovn_finalizers(&current) else {
            return Ok(());
        };
        let body = json!({ "metadata": {
            "finalizers": kept,
            "resourceVersion": current.resource_version(),
        } });
        match api
            .patch(&current.name_any(), &params, &Patch::Merge(body))
            .await
        {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => return Ok(()),
            Err(kube::Error::Api(e)) if e.code == 409 && attempt < FINALIZER_ATTEMPTS => {
                attempt += 1;
                match api.get_opt(&current.name_any()).await? {
                    Some(fresh) => current = fresh,
                    None => return Ok(()),
                }
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portkeeper_api::{IP, IPSpec};

    #[test]
    fn only_kube_ovns_finalizers_are_dropped() {
        let mut ip = IP::new("web.shop", IPSpec::default());
        assert_eq!(without_kube_ovn_finalizers(&ip), None);
        ip.metadata.finalizers = Some(vec![
            "kube-ovn-controller".into(),
            "example.com/keep".into(),
            "kubeovn.io/kube-ovn-controller".into(),
        ]);
        assert_eq!(
            without_kube_ovn_finalizers(&ip),
            Some(vec!["example.com/keep".to_owned()])
        );
    }
}
