//! Objects the webhook decides with that its caches may not hold yet.

use std::sync::Arc;

use kube::Resource;
use kube::api::Api;
use serde::de::DeserializeOwned;

/// A cluster-scoped object by name: `cached` (from the controller's caches), else from the API
/// server (one created a moment ago, in the same `kubectl apply`, may not be cached yet).
pub async fn current<K>(cached: Option<Arc<K>>, client: &kube::Client, name: &str) -> Option<Arc<K>>
where
    K: Resource<DynamicType = (), Scope = kube::core::ClusterResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    if cached.is_some() {
        return cached;
    }
    Api::<K>::all(client.clone())
        .get_opt(name)
        .await
        .ok()
        .flatten()
        .map(Arc::new)
}
