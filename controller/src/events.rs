//! Publishing Kubernetes Events, one series per message.
//!
//! kube's `Recorder` folds every Event of one type, reason and action about one object into a
//! single series for six minutes, and the series keeps the note of its first Event. A user who
//! fixes one bad annotation and makes another mistake of the same kind would be shown the old
//! message with a growing count. Events here go through one recorder per note instead: a
//! repeated message still counts in its series, a new message starts an Event of its own.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::runtime::events::{Event, Recorder, Reporter};
use parking_lot::Mutex;

/// The reporting controller of every Event portkeeper publishes.
pub const REPORTING_CONTROLLER: &str = "portkeeper-controller";

/// Distinct notes whose series are followed; past this the oldest series restart.
const NOTES_FOLLOWED: usize = 1024;

/// Publishes Events as portkeeper.
pub struct EventPublisher {
    client: Client,
    reporter: Reporter,
    by_note: Mutex<HashMap<String, Recorder>>,
}

impl EventPublisher {
    /// A publisher reporting as `instance` of portkeeper.
    pub fn new(client: Client, instance: String) -> Self {
        Self {
            client,
            reporter: Reporter {
                controller: REPORTING_CONTROLLER.into(),
                instance: Some(instance),
            },
            by_note: Mutex::default(),
        }
    }

    /// Publishes `event` about `reference`, in the series of earlier Events with the same note.
    /// Best effort: a failure is logged, never returned.
    pub async fn publish(&self, reference: &ObjectReference, event: Event) {
        let event = truncated(event);
        let note = event.note.clone().unwrap_or_default();
        let recorder = {
            let mut by_note = self.by_note.lock();
            if by_note.len() >= NOTES_FOLLOWED && !by_note.contains_key(&note) {
                by_note.clear();
            }
            by_note
                .entry(note)
                .or_insert_with(|| self.recorder())
                .clone()
        };
        send(&recorder, reference, &event).await;
    }

    /// Publishes `event` as an Event of its own, never counted in a series: for decisions rare
    /// enough that each deserves its own line in `kubectl describe`.
    pub async fn publish_alone(&self, reference: &ObjectReference, event: Event) {
        send(&self.recorder(), reference, &truncated(event)).await;
    }

    fn recorder(&self) -> Recorder {
        Recorder::new(self.client.clone(), self.reporter.clone())
    }
}

async fn send(recorder: &Recorder, reference: &ObjectReference, event: &Event) {
    if let Err(e) = recorder.publish(event, reference).await {
        tracing::warn!(error = %e, reason = %event.reason, "could not publish event");
    }
}

/// Event notes are limited to 1 KiB by the API server.
fn truncated(mut event: Event) -> Event {
    if let Some(note) = &mut event.note {
        let mut end = note.len().min(1000);
        while !note.is_char_boundary(end) {
            end -= 1;
        }
        note.truncate(end);
    }
    event
}

/// The Events sent, pinned with a mock API server.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::mock_api;
    use http::Method;
    use kube::runtime::events::EventType;
    use serde_json::json;

    fn rejected(note: &str) -> Event {
        Event {
            type_: EventType::Warning,
            reason: "InvalidAnnotation".into(),
            note: Some(note.into()),
            action: "Allocate".into(),
            secondary: None,
        }
    }

    #[tokio::test]
    async fn a_new_message_is_a_new_event_and_a_repeat_counts_in_its_series() {
        let (client, mut handle) = mock_api::client();
        let publisher = EventPublisher::new(client, "pk-0".into());
        let pod = ObjectReference {
            kind: Some("Pod".into()),
            namespace: Some("shop".into()),
            name: Some("web".into()),
            uid: Some("u-1".into()),
            ..Default::default()
        };
        let first = "ip_address \"10.16.0.300\" is not an IP address";
        let second = "ip_address \"10.99.0.5\" is outside subnet ovn-default";
        let mut sent = Vec::new();
        for note in [first, second, second] {
            let ((), (request, body)) = tokio::join!(
                publisher.publish(&pod, rejected(note)),
                mock_api::answer(&mut handle, Clone::clone)
            );
            sent.push((request.method, body));
        }
        let notes: Vec<_> = sent.iter().map(|(_, body)| body["note"].clone()).collect();
        assert_eq!(notes, [json!(first), json!(second), json!(second)]);
        let methods: Vec<_> = sent.iter().map(|(method, _)| method.clone()).collect();
        assert_eq!(methods, [Method::POST, Method::POST, Method::PATCH]);
        assert_eq!(sent[2].1["series"]["count"], json!(2));
        assert_eq!(sent[0].1["type"], json!("Warning"));
        assert_eq!(sent[0].1["reportingInstance"], json!("pk-0"));
    }

    #[test]
    fn long_notes_are_cut_at_a_character_boundary() {
        let note = "é".repeat(600);
        let cut = truncated(rejected(&note)).note.unwrap();
        assert_eq!(cut.len(), 1000);
        assert!(note.starts_with(&cut));
    }
}
