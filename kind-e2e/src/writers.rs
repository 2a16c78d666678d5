//! Who wrote, and when, as the servers recorded it: the API server's audit log (the local cluster
//! logs every write request with its User-Agent) and Northbound's transaction log (each
//! transaction with its comment). portkeeper-controller names its replica in both
//! (`portkeeper-controller/<version> (<identity>)` and `portkeeper-controller <identity>`), so a
//! test can tell whether two replicas ever wrote at the same time.

use std::path::Path;
use std::process::Command;

/// One write a replica made: the server's time for it (sortable text, UTC) and what it was.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Write {
    pub at: String,
    pub writer: String,
    pub what: String,
}

/// The API verbs that change something.
const WRITE_VERBS: [&str; 5] = ["create", "update", "patch", "delete", "deletecollection"];

/// The writes portkeeper-controller replicas made through the API server, from its audit log,
/// except those to their leader-election Lease (every replica writes that).
pub fn api_writes(audit_log: &Path) -> Vec<Write> {
    let text = std::fs::read_to_string(audit_log).unwrap_or_default();
    let mut writes: Vec<Write> = text
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter_map(|event| {
            let agent = event["userAgent"].as_str()?;
            let writer = agent
                .strip_prefix("portkeeper-controller/")?
                .split_once(" (")?
                .1
                .strip_suffix(')')?
                .to_owned();
            let object = &event["objectRef"];
            let verb = event["verb"].as_str()?;
            // Reads are audited too (for the RBAC check); every replica reads.
            if object["resource"] == "leases" || !WRITE_VERBS.contains(&verb) {
                return None;
            }
            Some(Write {
                at: event["stageTimestamp"].as_str()?.to_owned(),
                writer,
                what: format!(
                    "{verb} {}/{} {}",
                    object["resource"].as_str().unwrap_or_default(),
                    object["name"].as_str().unwrap_or_default(),
                    event["responseStatus"]["code"]
                ),
            })
        })
        .collect();
    writes.sort();
    writes
}

/// The transactions portkeeper-controller replicas committed to a standalone Northbound database
/// file, from `ovsdb-tool show-log`.
pub fn nb_writes(db: &Path) -> Vec<Write> {
    let out = Command::new("ovsdb-tool")
        .arg("show-log")
        .arg(db)
        .output()
        .expect("run ovsdb-tool show-log");
    assert!(
        out.status.success(),
        "ovsdb-tool show-log {}: {}",
        db.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    // `record 7: 2026-12-04 16:11:17.111 "portkeeper-controller e2e-0"`
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let (_, rest) = line.split_once(": ")?;
            let (at, comment) = rest.split_once(" \"")?;
            let writer = comment.strip_prefix("portkeeper-controller ")?;
            Some(Write {
                at: at.to_owned(),
                writer: writer.trim_end_matches('"').to_owned(),
                what: line.to_owned(),
            })
        })
        .collect()
}

/// The writers in the order they wrote, each run of writes by one writer as one entry: two
/// replicas writing at once show up as a writer that comes back (`a, b, a`).
pub fn turns(writes: &[Write]) -> Vec<String> {
    let mut turns: Vec<String> = Vec::new();
    for write in writes {
        if turns.last() != Some(&write.writer) {
            turns.push(write.writer.clone());
        }
    }
    turns
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_events_of_the_controller_are_its_writes_except_the_lease() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("audit.log");
        let event = |agent: &str, resource: &str, at: &str| {
            serde_json::json!({
                "userAgent": agent, "verb": "patch", "stageTimestamp": at,
                "objectRef": {"resource": resource, "name": "x"},
                "responseStatus": {"code": 200},
            })
            .to_string()
        };
        let lines = [
            event(
                "portkeeper-controller/0.1.0 (e2e-1)",
                "pods",
                "2026-01-01T00:00:02.000000Z",
            ),
            event(
                "portkeeper-controller/0.1.0 (e2e-0)",
                "pods",
                "2026-01-01T00:00:01.000000Z",
            ),
            event(
                "portkeeper-controller/0.1.0 (e2e-0)",
                "leases",
                "2026-01-01T00:00:03.000000Z",
            ),
            event("kubectl/v1.20", "pods", "2026-01-01T00:00:04.000000Z"),
            event(
                "portkeeper-controller/0.1.0 (e2e-0)",
                "pods",
                "2026-01-01T00:00:05.000000Z",
            ),
        ];
        std::fs::write(&log, lines.join("\n")).unwrap();
        let writes = api_writes(&log);
        assert_eq!(writes.len(), 3, "{writes:?}");
        assert_eq!(turns(&writes), ["e2e-0", "e2e-1", "e2e-0"]);
        assert_eq!(writes[0].what, "patch pods/x 200");
    }
}
