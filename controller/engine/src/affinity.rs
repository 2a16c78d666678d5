//! Node affinity of IPPools and Subnets (Spiderpool's `nodeAffinity`: a Kubernetes label
//! selector over Node labels). Affinity is a filter, not a preference: only pods bound to a
//! matching node may take a pool's addresses. Given an ordered pool list, a pod on a node takes
//! the first pool that admits the node and has room; [`first_for_node`] decides, without I/O.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use thiserror::Error;

/// One requirement on a node's labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Requirement {
    /// The label is set to one of the values (`matchLabels` gives one value).
    In {
        /// The label key.
        key: String,
        /// The accepted values.
        values: BTreeSet<String>,
    },
    /// The label is unset, or set to none of the values.
    NotIn {
        /// The label key.
        key: String,
        /// The refused values.
        values: BTreeSet<String>,
    },
    /// The label is set, to anything.
    Exists {
        /// The label key.
        key: String,
    },
    /// The label is unset.
    DoesNotExist {
        /// The label key.
        key: String,
    },
}

impl Requirement {
    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            Requirement::In { key, values } => labels.get(key).is_some_and(|v| values.contains(v)),
            Requirement::NotIn { key, values } => {
                labels.get(key).is_none_or(|v| !values.contains(v))
            }
            Requirement::Exists { key } => labels.contains_key(key),
            Requirement::DoesNotExist { key } => !labels.contains_key(key),
        }
    }
}

impl fmt::Display for Requirement {
    /// kubectl's selector syntax: `k in (a,b)`, `k notin (a)`, `k`, `!k`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |values: &BTreeSet<String>| values.iter().cloned().collect::<Vec<_>>().join(",");
        match self {
            Requirement::In { key, values } if values.len() == 1 => {
                write!(f, "{key}={}", list(values))
            }
            Requirement::In { key, values } => write!(f, "{key} in ({})", list(values)),
            Requirement::NotIn { key, values } => write!(f, "{key} notin ({})", list(values)),
            Requirement::Exists { key } => write!(f, "{key}"),
            Requirement::DoesNotExist { key } => write!(f, "!{key}"),
        }
    }
}

/// A validated node selector: every requirement must hold. An empty one admits every node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeAffinity {
    requirements: Vec<Requirement>,
}

/// Why a `nodeAffinity` selector was refused.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum AffinityError {
    /// Not a Kubernetes label key (`[prefix/]name`).
    #[error("nodeAffinity label key {key:?} is invalid: {why}")]
    InvalidKey {
        /// The offending key.
        key: String,
        /// What rule it breaks.
        why: &'static str,
    },
    /// Not a Kubernetes label value.
    #[error("nodeAffinity value {value:?} of label {key:?} is invalid: {why}")]
    InvalidValue {
        /// The label key.
        key: String,
        /// The offending value.
        value: String,
        /// What rule it breaks.
        why: &'static str,
    },
    /// An operator other than `In`, `NotIn`, `Exists` and `DoesNotExist`.
    #[error(
        "nodeAffinity operator {operator:?} of label {key:?} is not In, NotIn, Exists or DoesNotExist"
    )]
    UnknownOperator {
        /// The label key.
        key: String,
        /// The offending operator.
        operator: String,
    },
    /// `In` or `NotIn` without values.
    #[error("nodeAffinity operator {operator} of label {key:?} needs at least one value")]
    MissingValues {
        /// The label key.
        key: String,
        /// The operator.
        operator: &'static str,
    },
    /// `Exists` or `DoesNotExist` with values.
    #[error("nodeAffinity operator {operator} of label {key:?} takes no values")]
    UnexpectedValues {
        /// The label key.
        key: String,
        /// The operator.
        operator: &'static str,
    },
}

impl NodeAffinity {
    /// Validates a label selector given as its `matchLabels` and its `matchExpressions`
    /// (`key`, `operator`, `values`), as Kubernetes validates one.
    pub fn parse<'a>(
        match_labels: impl IntoIterator<Item = (&'a str, &'a str)>,
        match_expressions: impl IntoIterator<Item = (&'a str, &'a str, &'a [String])>,
    ) -> Result<NodeAffinity, AffinityError> {
        let mut requirements = Vec::new();
        for (key, value) in match_labels {
            check_key(key)?;
            check_value(key, value)?;
            requirements.push(Requirement::In {
                key: key.to_owned(),
                values: BTreeSet::from([value.to_owned()]),
            });
        }
        for (key, operator, values) in match_expressions {
            check_key(key)?;
            for value in values {
                check_value(key, value)?;
            }
            let key = key.to_owned();
            let set = || values.iter().cloned().collect::<BTreeSet<_>>();
            let requirement = match operator {
                "In" | "NotIn" if values.is_empty() => {
                    return Err(AffinityError::MissingValues {
                        key,
                        operator: if operator == "In" { "In" } else { "NotIn" },
                    });
                }
                "Exists" | "DoesNotExist" if !values.is_empty() => {
                    return Err(AffinityError::UnexpectedValues {
                        key,
                        operator: if operator == "Exists" {
                            "Exists"
                        } else {
                            "DoesNotExist"
                        },
                    });
                }
                "In" => Requirement::In { key, values: set() },
                "NotIn" => Requirement::NotIn { key, values: set() },
                "Exists" => Requirement::Exists { key },
                "DoesNotExist" => Requirement::DoesNotExist { key },
                other => {
                    return Err(AffinityError::UnknownOperator {
                        key,
                        operator: other.to_owned(),
                    });
                }
            };
            requirements.push(requirement);
        }
        Ok(NodeAffinity { requirements })
    }

    /// Whether a node with `labels` is admitted.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }

    /// The requirements, all of which must hold.
    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }
}

impl fmt::Display for NodeAffinity {
    /// kubectl's selector syntax, requirements joined with `,`; `<any node>` when empty.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.requirements.is_empty() {
            return f.write_str("<any node>");
        }
        let parts: Vec<String> = self.requirements.iter().map(ToString::to_string).collect();
        f.write_str(&parts.join(","))
    }
}

/// A label name: 1 to 63 characters, alphanumeric at both ends, `-`, `_`, `.` inside.
fn label_name(text: &str) -> Result<(), &'static str> {
    if text.is_empty() || text.len() > 63 {
        return Err("must be 1 to 63 characters");
    }
    let bytes = text.as_bytes();
    if !bytes[0].is_ascii_alphanumeric() || !bytes[bytes.len() - 1].is_ascii_alphanumeric() {
        return Err("must begin and end with a letter or digit");
    }
    if !bytes
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err("may hold only letters, digits, '-', '_' and '.'");
    }
    Ok(())
}

fn check_key(key: &str) -> Result<(), AffinityError> {
    let invalid = |why| AffinityError::InvalidKey {
        key: key.to_owned(),
        why,
    };
    let name = match key.split_once('/') {
        None => key,
        Some((prefix, name)) => {
            let subdomain = !prefix.is_empty()
                && prefix.len() <= 253
                && prefix.split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && l.bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                        && !l.starts_with('-')
                        && !l.ends_with('-')
                });
            if !subdomain {
                return Err(invalid("its prefix must be a lower-case DNS subdomain"));
            }
            name
        }
    };
    label_name(name).map_err(invalid)
}

fn check_value(key: &str, value: &str) -> Result<(), AffinityError> {
    if value.is_empty() {
        return Ok(());
    }
    label_name(value).map_err(|why| AffinityError::InvalidValue {
        key: key.to_owned(),
        value: value.to_owned(),
        why,
    })
}

/// One pool of an ordered list, as the choice sees it.
#[derive(Clone, Debug)]
pub struct PoolCandidate<'a> {
    /// The pool's name.
    pub name: &'a str,
    /// What must admit the node: the pool's affinity and its Subnet's (either may be absent).
    /// `Err` is a selector that does not validate: it admits no node.
    pub affinities: Vec<Result<&'a NodeAffinity, &'a AffinityError>>,
    /// Whether the pool has a free address for the nic.
    pub has_room: bool,
}

/// Why a pool of the list was passed over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Passed {
    /// Its affinity (or its Subnet's) does not admit the node; the text names the selector.
    NotForNode(String),
    /// It admits the node but has no free address.
    Full,
}

/// No pool of the list serves the node: each pool with why it was passed over, in list order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoPool {
    /// `(pool, why)` for every candidate.
    pub passed: Vec<(String, Passed)>,
}

impl NoPool {
    /// Whether some pool admits the node (so the list is exhausted rather than unschedulable).
    pub fn exhausted(&self) -> bool {
        self.passed.iter().any(|(_, p)| *p == Passed::Full)
    }
}

impl fmt::Display for NoPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .passed
            .iter()
            .map(|(pool, why)| match why {
                Passed::NotForNode(selector) => {
                    format!("{pool}: nodeAffinity {selector} does not admit the node")
                }
                Passed::Full => format!("{pool}: no free address"),
            })
            .collect();
        f.write_str(&parts.join("; "))
    }
}

/// The index of the first candidate that admits a node with `labels` and has room, in list
/// order; otherwise why each was passed over.
pub fn first_for_node(
    candidates: &[PoolCandidate<'_>],
    labels: &BTreeMap<String, String>,
) -> Result<usize, NoPool> {
    let mut passed = Vec::with_capacity(candidates.len());
    for (index, candidate) in candidates.iter().enumerate() {
        let refusing = candidate.affinities.iter().find_map(|a| match a {
            Ok(affinity) => (!affinity.matches(labels)).then(|| affinity.to_string()),
            Err(error) => Some(format!("(invalid: {error})")),
        });
        match refusing {
            Some(selector) => {
                passed.push((candidate.name.to_owned(), Passed::NotForNode(selector)))
            }
            None if !candidate.has_room => passed.push((candidate.name.to_owned(), Passed::Full)),
            None => return Ok(index),
        }
    }
    Err(NoPool { passed })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn values(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn match_labels_and_expressions_all_hold() {
        let zone = values(&["a", "b"]);
        let gpu: Vec<String> = Vec::new();
        let affinity = NodeAffinity::parse(
            [("kubernetes.io/os", "linux")],
            [
                ("topology.kubernetes.io/zone", "In", zone.as_slice()),
                ("gpu", "DoesNotExist", gpu.as_slice()),
            ],
        )
        .unwrap();
        assert!(affinity.matches(&labels(&[
            ("kubernetes.io/os", "linux"),
            ("topology.kubernetes.io/zone", "b")
        ])));
        assert!(!affinity.matches(&labels(&[
            ("kubernetes.io/os", "linux"),
            ("topology.kubernetes.io/zone", "c")
        ])));
        assert!(!affinity.matches(&labels(&[
            ("kubernetes.io/os", "linux"),
            ("topology.kubernetes.io/zone", "a"),
            ("gpu", "")
        ])));
        assert_eq!(
            affinity.to_string(),
            "kubernetes.io/os=linux,topology.kubernetes.io/zone in (a,b),!gpu"
        );
    }

    #[test]
    fn not_in_admits_a_node_without_the_label() {
        let v = values(&["node1"]);
        let affinity =
            NodeAffinity::parse([], [("kubernetes.io/hostname", "NotIn", v.as_slice())]).unwrap();
        assert!(affinity.matches(&labels(&[])));
        assert!(!affinity.matches(&labels(&[("kubernetes.io/hostname", "node1")])));
    }

    #[test]
    fn bad_selectors_name_what_is_wrong() {
        let none: Vec<String> = Vec::new();
        let one = values(&["x"]);
        let bad = values(&["-x"]);
        for (key, op, v, expected) in [
            ("", "Exists", &none, "label key \"\""),
            ("a/b/c", "Exists", &none, "a/b/c"),
            ("Example.com/x", "Exists", &none, "prefix"),
            ("zone", "Gt", &one, "\"Gt\""),
            ("zone", "In", &none, "needs at least one value"),
            ("zone", "Exists", &one, "takes no values"),
            ("zone", "In", &bad, "\"-x\""),
        ] {
            let err = NodeAffinity::parse([], [(key, op, v.as_slice())]).unwrap_err();
            assert!(err.to_string().contains(expected), "{err}");
        }
        let long = "x".repeat(64);
        assert!(NodeAffinity::parse([(long.as_str(), "v")], []).is_err());
    }

    #[test]
    fn the_first_admitting_pool_with_room_wins() {
        let zone_a = NodeAffinity::parse([("zone", "a")], []).unwrap();
        let zone_b = NodeAffinity::parse([("zone", "b")], []).unwrap();
        let pools = [
            PoolCandidate {
                name: "a",
                affinities: vec![Ok(&zone_a)],
                has_room: true,
            },
            PoolCandidate {
                name: "b-full",
                affinities: vec![Ok(&zone_b)],
                has_room: false,
            },
            PoolCandidate {
                name: "b",
                affinities: vec![Ok(&zone_b)],
                has_room: true,
            },
        ];
        assert_eq!(first_for_node(&pools, &labels(&[("zone", "a")])), Ok(0));
        assert_eq!(first_for_node(&pools, &labels(&[("zone", "b")])), Ok(2));
        let none = first_for_node(&pools, &labels(&[("zone", "c")])).unwrap_err();
        assert!(!none.exhausted());
        assert_eq!(
            none.to_string(),
            "a: nodeAffinity zone=a does not admit the node; b-full: nodeAffinity zone=b does \
             not admit the node; b: nodeAffinity zone=b does not admit the node"
        );
        let full = first_for_node(&pools[1..2], &labels(&[("zone", "b")])).unwrap_err();
        assert!(full.exhausted());
    }
}
