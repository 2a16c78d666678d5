//! An IPPool's or Subnet's `nodeAffinity` (a label selector as JSON, `LabelSelector::node_affinity`):
//! never panics; an accepted selector admits a node exactly when every `matchLabels` pair is
//! among the node's labels and every expression holds, read the plain way; a refusal names the
//! offending key, value or operator.
//!
//! Input: the selector's JSON, a line break, then the node's labels as `key=value` lines.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use portkeeper_api::subnet::LabelSelector;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (selector, labels) = text.split_once('\n').unwrap_or((text, ""));
    let Ok(selector) = serde_json::from_str::<LabelSelector>(selector) else {
        return;
    };
    let labels: BTreeMap<String, String> = labels
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    match selector.node_affinity() {
        Ok(affinity) => {
            let plain = selector
                .match_labels
                .iter()
                .all(|(k, v)| labels.get(k) == Some(v))
                && selector.match_expressions.iter().all(|e| {
                    let label = labels.get(&e.key);
                    match e.operator.as_str() {
                        "In" => label.is_some_and(|l| e.values.contains(l)),
                        "NotIn" => label.is_none_or(|l| !e.values.contains(l)),
                        "Exists" => label.is_some(),
                        "DoesNotExist" => label.is_none(),
                        other => panic!("operator {other:?} accepted"),
                    }
                });
            assert_eq!(
                affinity.matches(&labels),
                plain,
                "{selector:?} on {labels:?}"
            );
        }
        Err(e) => {
            let message = e.to_string();
            let named = selector.match_labels.iter().any(|(k, v)| {
                message.contains(&format!("{k:?}")) || message.contains(&format!("{v:?}"))
            }) || selector
                .match_expressions
                .iter()
                .any(|x| message.contains(&format!("{:?}", x.key)));
            assert!(named, "{message:?} names nothing of {selector:?}");
        }
    }
});
