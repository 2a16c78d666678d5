//! Properties of node-affinity pools: a selector admits exactly the nodes a plain reading of
//! Kubernetes' selector rules admits, the pool choice takes the first admitting pool with room
//! (never one that does not admit the node), and `ip_pools` lists read back in order.

use std::collections::BTreeMap;

use portkeeper_engine::affinity::{Passed, PoolCandidate, first_for_node};
use portkeeper_engine::parse::parse_pool_list;
use portkeeper_engine::{AffinityError, NodeAffinity};
use proptest::prelude::*;

const KEYS: [&str; 3] = ["zone", "topology.kubernetes.io/region", "gpu"];
const VALUES: [&str; 3] = ["a", "b", ""];
const OPERATORS: [&str; 4] = ["In", "NotIn", "Exists", "DoesNotExist"];

/// `(key, operator, values)` with the values an operator takes.
fn expression() -> impl Strategy<Value = (String, String, Vec<String>)> {
    (
        0..KEYS.len(),
        0..OPERATORS.len(),
        prop::collection::vec(0..VALUES.len(), 1..3),
    )
        .prop_map(|(k, o, v)| {
            let operator = OPERATORS[o];
            let values = if o < 2 {
                v.into_iter().map(|i| VALUES[i].to_owned()).collect()
            } else {
                Vec::new()
            };
            (KEYS[k].to_owned(), operator.to_owned(), values)
        })
}

fn labels() -> impl Strategy<Value = BTreeMap<String, String>> {
    prop::collection::btree_map(
        (0..KEYS.len()).prop_map(|k| KEYS[k].to_owned()),
        (0..VALUES.len()).prop_map(|v| VALUES[v].to_owned()),
        0..4,
    )
}

/// Kubernetes' rules, read literally.
fn reference(
    match_labels: &BTreeMap<String, String>,
    expressions: &[(String, String, Vec<String>)],
    labels: &BTreeMap<String, String>,
) -> bool {
    match_labels.iter().all(|(k, v)| labels.get(k) == Some(v))
        && expressions.iter().all(|(k, op, values)| {
            let label = labels.get(k);
            match op.as_str() {
                "In" => label.is_some_and(|l| values.contains(l)),
                "NotIn" => label.is_none_or(|l| !values.contains(l)),
                "Exists" => label.is_some(),
                _ => label.is_none(),
            }
        })
}

fn parse(
    match_labels: &BTreeMap<String, String>,
    expressions: &[(String, String, Vec<String>)],
) -> Result<NodeAffinity, AffinityError> {
    NodeAffinity::parse(
        match_labels.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        expressions
            .iter()
            .map(|(k, o, v)| (k.as_str(), o.as_str(), v.as_slice())),
    )
}

proptest! {
    #[test]
    fn a_selector_admits_what_the_rules_admit(
        match_labels in labels(),
        expressions in prop::collection::vec(expression(), 0..4),
        node in labels(),
    ) {
        let affinity = parse(&match_labels, &expressions).expect("valid keys and values");
        prop_assert_eq!(affinity.matches(&node), reference(&match_labels, &expressions, &node));
    }

    #[test]
    fn the_choice_is_the_first_admitting_pool_with_room(
        pools in prop::collection::vec(
            (prop::option::of((labels(), prop::collection::vec(expression(), 0..2))), any::<bool>()),
            0..6,
        ),
        node in labels(),
    ) {
        let affinities: Vec<Option<NodeAffinity>> = pools
            .iter()
            .map(|(a, _)| a.as_ref().map(|(l, e)| parse(l, e).unwrap()))
            .collect();
        let names: Vec<String> = (0..pools.len()).map(|i| format!("pool-{i}")).collect();
        let candidates: Vec<PoolCandidate<'_>> = pools
            .iter()
            .enumerate()
            .map(|(i, (_, room))| PoolCandidate {
                name: &names[i],
                affinities: affinities[i].iter().map(Ok).collect(),
                has_room: *room,
            })
            .collect();
        let admits = |i: usize| affinities[i].as_ref().is_none_or(|a| a.matches(&node));
        let expected = (0..pools.len()).find(|&i| admits(i) && pools[i].1);
        match first_for_node(&candidates, &node) {
            Ok(i) => prop_assert_eq!(Some(i), expected),
            Err(none) => {
                prop_assert_eq!(expected, None);
                prop_assert_eq!(none.passed.len(), pools.len());
                for (i, (name, why)) in none.passed.iter().enumerate() {
                    prop_assert_eq!(name, &names[i]);
                    prop_assert_eq!(*why == Passed::Full, admits(i));
                }
            }
        }
    }

    #[test]
    fn a_pool_list_reads_back_in_order(
        names in prop::collection::btree_set("[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?(\\.[a-z0-9]{1,4})?", 1..6),
        order in any::<u64>(),
        pad in "[ ]{0,2}",
    ) {
        let mut names: Vec<String> = names.into_iter().filter(|n| n.parse::<std::net::IpAddr>().is_err()).collect();
        prop_assume!(!names.is_empty());
        let len = names.len();
        names.rotate_left((order as usize) % len);
        let text = names.iter().map(|n| format!("{pad}{n}{pad}")).collect::<Vec<_>>().join(",");
        prop_assert_eq!(parse_pool_list(&text), Ok(names));
    }
}

#[test]
fn an_invalid_selector_admits_no_node() {
    let error = NodeAffinity::parse([("zone", "-a")], []).unwrap_err();
    let candidates = [PoolCandidate {
        name: "bad",
        affinities: vec![Err(&error)],
        has_room: true,
    }];
    let none = first_for_node(&candidates, &BTreeMap::new()).unwrap_err();
    assert!(!none.exhausted());
    assert!(none.to_string().contains("invalid"), "{none}");
}
