//! The shipped roles against what portkeeper's service accounts did: the local cluster's API server
//! audits every request of those accounts (`kind-e2e/local/up`), and the e2e controllers
//! authenticate as the controller's account, so after a test the audit log says which permissions
//! were used and whether any request was refused. Sufficiency is checked after every e2e test (no
//! refusal); what a run left unused is reported, for keeping the roles minimal.
//!
//! A request refused once and granted at another time of the run (the same verb on the same
//! object) is not a missing grant: a restarted API server refuses everything for a moment after
//! it answers, until its authorizer has read the roles again.

use std::collections::BTreeSet;
use std::path::Path;

use serde::Deserialize;

/// One permission as RBAC grants it: API group, resource (`name/subresource` for a subresource)
/// and verb.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Permission {
    pub group: String,
    pub resource: String,
    pub verb: String,
}

impl std::fmt::Display for Permission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let group = if self.group.is_empty() {
            "core"
        } else {
            &self.group
        };
        write!(f, "{} {group}/{}", self.verb, self.resource)
    }
}

/// What one user did, as the audit log recorded it.
#[derive(Debug, Default)]
pub struct Usage {
    /// Every permission a request needed.
    pub used: BTreeSet<Permission>,
    /// Requests the API server refused as forbidden (403) and never granted in the run,
    /// described.
    pub refused: Vec<String>,
}

/// The requests of `user` (e.g. `system:serviceaccount:kube-system:portkeeper-controller`) in an
/// audit log of JSON lines.
pub fn usage(audit_log: &Path, user: &str) -> Usage {
    let text = std::fs::read_to_string(audit_log).unwrap_or_default();
    let mut usage = Usage::default();
    let (mut refused, mut allowed) = (Vec::new(), BTreeSet::new());
    let events = text
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|event| event["user"]["username"] == user);
    for event in events {
        let object = &event["objectRef"];
        let Some(resource) = object["resource"].as_str() else {
            continue; // a non-resource URL (discovery, /version)
        };
        let resource = match object["subresource"].as_str() {
            Some(sub) => format!("{resource}/{sub}"),
            None => resource.to_owned(),
        };
        let permission = Permission {
            group: object["apiGroup"].as_str().unwrap_or_default().to_owned(),
            resource,
            verb: event["verb"].as_str().unwrap_or_default().to_owned(),
        };
        let request = format!(
            "{permission} {}/{}",
            object["namespace"].as_str().unwrap_or_default(),
            object["name"].as_str().unwrap_or_default()
        );
        if event["responseStatus"]["code"] == 403 {
            refused.push(request);
        } else {
            allowed.insert(request);
        }
        usage.used.insert(permission);
    }
    usage.refused = refused
        .into_iter()
        .filter(|request| !allowed.contains(request))
        .collect();
    usage
}

#[derive(Deserialize)]
struct RoleDoc {
    kind: String,
    #[serde(default)]
    metadata: Meta,
    #[serde(default)]
    rules: Vec<Rule>,
}

#[derive(Default, Deserialize)]
struct Meta {
    #[serde(default)]
    name: String,
}

#[derive(Deserialize)]
struct Rule {
    #[serde(rename = "apiGroups", default)]
    api_groups: Vec<String>,
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default)]
    verbs: Vec<String>,
}

/// Every permission the Roles and ClusterRoles named `role` in the multi-document YAML `yaml`
/// grant (the shipped files use no wildcards).
pub fn granted(yaml: &str, role: &str) -> BTreeSet<Permission> {
    let mut granted = BTreeSet::new();
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let Ok(doc) = RoleDoc::deserialize(doc) else {
            continue; // a ServiceAccount, a binding, a Deployment…
        };
        if !matches!(doc.kind.as_str(), "Role" | "ClusterRole")
            || !doc.metadata.name.starts_with(role)
        {
            continue;
        }
        for rule in doc.rules {
            for group in &rule.api_groups {
                for resource in &rule.resources {
                    for verb in &rule.verbs {
                        granted.insert(Permission {
                            group: group.clone(),
                            resource: resource.clone(),
                            verb: verb.clone(),
                        });
                    }
                }
            }
        }
    }
    granted
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROLES: &str = r#"
apiVersion: v1
kind: ServiceAccount
metadata: {name: pk, namespace: kube-system}
---
kind: ClusterRole
metadata: {name: pk}
rules:
  - apiGroups: [""]
    resources: [pods]
    verbs: [get, patch]
---
kind: Role
metadata: {name: pk-leader}
rules:
  - apiGroups: [coordination.k8s.io]
    resources: [leases]
    verbs: [update]
---
kind: ClusterRole
metadata: {name: other}
rules:
  - apiGroups: [""]
    resources: [nodes]
    verbs: [patch]
"#;

    fn permission(group: &str, resource: &str, verb: &str) -> Permission {
        Permission {
            group: group.into(),
            resource: resource.into(),
            verb: verb.into(),
        }
    }

    #[test]
    fn roles_are_read_by_name_prefix() {
        let granted = granted(ROLES, "pk");
        let expected: BTreeSet<_> = [
            permission("", "pods", "get"),
            permission("", "pods", "patch"),
            permission("coordination.k8s.io", "leases", "update"),
        ]
        .into();
        assert_eq!(granted, expected);
    }

    #[test]
    fn audit_events_give_permissions_and_refusals() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("audit.log");
        let user = "system:serviceaccount:kube-system:pk";
        let lines = [
            serde_json::json!({"user": {"username": user}, "verb": "patch",
                "objectRef": {"resource": "subnets", "subresource": "status", "apiGroup": "kubeovn.io", "name": "s"},
                "responseStatus": {"code": 200}}),
            serde_json::json!({"user": {"username": user}, "verb": "delete",
                "objectRef": {"resource": "pods", "namespace": "ns", "name": "p"},
                "responseStatus": {"code": 403}}),
            serde_json::json!({"user": {"username": "admin"}, "verb": "create",
                "objectRef": {"resource": "pods"}, "responseStatus": {"code": 201}}),
            serde_json::json!({"user": {"username": user}, "verb": "get",
                "requestURI": "/version", "responseStatus": {"code": 200}}),
            // Refused while a restarted API server's authorizer loaded the roles, then granted.
            serde_json::json!({"user": {"username": user}, "verb": "watch",
                "objectRef": {"resource": "pods"}, "responseStatus": {"code": 403}}),
            serde_json::json!({"user": {"username": user}, "verb": "watch",
                "objectRef": {"resource": "pods"}, "responseStatus": {"code": 200}}),
        ];
        let text: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
        std::fs::write(&log, text.join("\n")).unwrap();
        let usage = usage(&log, user);
        let expected: BTreeSet<_> = [
            permission("kubeovn.io", "subnets/status", "patch"),
            permission("", "pods", "delete"),
            permission("", "pods", "watch"),
        ]
        .into();
        assert_eq!(usage.used, expected);
        assert_eq!(usage.refused, ["delete core/pods ns/p"]);
    }
}
