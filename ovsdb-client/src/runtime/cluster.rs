//! Raft awareness through the server's `_Server.Database` table.
//!
//! Each connection monitors its server's `_Server.Database` row for our database.
//! A server is refused when it is not connected to its cluster, when it holds an
//! older snapshot than one we have already seen (its `index` is behind the
//! highest seen: reading from it could go back in time), or, in leader-only mode,
//! when it is not the leader or is a relay. When the row changes so that the server
//! no longer qualifies (leadership moved), the connection is dropped and the
//! session reconnects elsewhere.

use std::fmt;

use crate::protocol::datum::{Uuid, Value};
use crate::protocol::row::Row;

/// The `_Server.Database` columns the client monitors.
pub const SERVER_COLUMNS: [&str; 7] = [
    "name",
    "model",
    "connected",
    "leader",
    "index",
    "sid",
    "cid",
];

/// The state a server reports for one of its databases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerDatabase {
    /// Database name.
    pub name: String,
    /// `standalone`, `clustered` or `relay`.
    pub model: String,
    /// Whether the server is connected to its cluster (always true when standalone).
    pub connected: bool,
    /// Whether the server is the raft leader (always true when standalone).
    pub leader: bool,
    /// The raft log index of the server's snapshot, when clustered.
    pub index: Option<i64>,
    /// This server's id in the cluster.
    pub sid: Option<Uuid>,
    /// The cluster id.
    pub cid: Option<Uuid>,
}

impl ServerDatabase {
    /// Reads a cached `_Server.Database` row.
    pub fn from_row(row: &Row) -> Option<Self> {
        let atom = |c: &str| row.get(c).and_then(Value::as_atom);
        Some(Self {
            name: atom("name")?.as_str()?.to_owned(),
            model: atom("model")?.as_str()?.to_owned(),
            connected: atom("connected").and_then(|a| a.as_bool()).unwrap_or(false),
            leader: atom("leader").and_then(|a| a.as_bool()).unwrap_or(false),
            index: atom("index").and_then(|a| a.as_integer()),
            sid: atom("sid").and_then(|a| a.as_uuid()),
            cid: atom("cid").and_then(|a| a.as_uuid()),
        })
    }

    /// Whether the database is a raft cluster member.
    pub fn is_clustered(&self) -> bool {
        self.model == "clustered"
    }
}

/// Why a server is not used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The server does not serve the database.
    NoDatabase,
    /// The server lost contact with its cluster.
    NotConnected,
    /// Leader-only mode, and the server is a follower.
    NotLeader,
    /// Leader-only mode, and the server is a relay.
    Relay,
    /// The server's snapshot is older than one already seen.
    Stale {
        /// The server's index.
        index: i64,
        /// The highest index seen.
        seen: i64,
    },
    /// The server belongs to another cluster than the one pinned.
    WrongCluster,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::NoDatabase => f.write_str("server does not serve the database"),
            Refusal::NotConnected => f.write_str("server is not connected to its cluster"),
            Refusal::NotLeader => f.write_str("server is not the cluster leader"),
            Refusal::Relay => f.write_str("server is a relay, not the leader"),
            Refusal::Stale { index, seen } => {
                write!(f, "server is behind (index {index} < {seen} already seen)")
            }
            Refusal::WrongCluster => f.write_str("server belongs to another cluster"),
        }
    }
}

/// What the session remembers across servers.
#[derive(Debug, Clone, Default)]
pub struct ClusterView {
    /// The highest raft index any server reported.
    pub max_index: Option<i64>,
    /// The cluster id of the first clustered server seen; others must match.
    pub cid: Option<Uuid>,
}

impl ClusterView {
    /// Decides whether `db` is usable, and records what it reveals.
    pub fn evaluate(
        &mut self,
        db: Option<&ServerDatabase>,
        leader_only: bool,
    ) -> Result<(), Refusal> {
        let db = db.ok_or(Refusal::NoDatabase)?;
        if !db.connected {
            return Err(Refusal::NotConnected);
        }
        if db.is_clustered() {
            if let (Some(pinned), Some(cid)) = (self.cid, db.cid)
                && pinned != cid
            {
                return Err(Refusal::WrongCluster);
            }
            if let (Some(index), Some(seen)) = (db.index, self.max_index)
                && index < seen
            {
                return Err(Refusal::Stale { index, seen });
            }
            if leader_only && !db.leader {
                return Err(Refusal::NotLeader);
            }
            self.cid = self.cid.or(db.cid);
            if let Some(index) = db.index {
                self.max_index = Some(self.max_index.map_or(index, |m| m.max(index)));
            }
        } else if db.model == "relay" && leader_only {
            return Err(Refusal::Relay);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::datum::Atom;

    fn clustered(leader: bool, connected: bool, index: i64) -> ServerDatabase {
        ServerDatabase {
            name: "OVN_Northbound".into(),
            model: "clustered".into(),
            connected,
            leader,
            index: Some(index),
            sid: Some(Uuid::from_u128(1)),
            cid: Some(Uuid::from_u128(7)),
        }
    }

    #[test]
    fn leader_only_refuses_followers_disconnected_and_stale_servers() {
        let mut view = ClusterView::default();
        assert_eq!(
            view.evaluate(Some(&clustered(true, true, 10)), true),
            Ok(())
        );
        assert_eq!(
            view.evaluate(Some(&clustered(false, true, 12)), true),
            Err(Refusal::NotLeader)
        );
        assert_eq!(
            view.evaluate(Some(&clustered(true, false, 12)), true),
            Err(Refusal::NotConnected)
        );
        assert_eq!(
            view.evaluate(Some(&clustered(true, true, 9)), true),
            Err(Refusal::Stale { index: 9, seen: 10 })
        );
        assert_eq!(view.evaluate(None, true), Err(Refusal::NoDatabase));
        let mut other = clustered(true, true, 11);
        other.cid = Some(Uuid::from_u128(8));
        assert_eq!(
            view.evaluate(Some(&other), true),
            Err(Refusal::WrongCluster)
        );
    }

    #[test]
    fn followers_are_fine_without_leader_only_but_never_stale_ones() {
        let mut view = ClusterView::default();
        assert_eq!(
            view.evaluate(Some(&clustered(false, true, 5)), false),
            Ok(())
        );
        assert_eq!(view.max_index, Some(5));
        assert_eq!(
            view.evaluate(Some(&clustered(false, true, 4)), false),
            Err(Refusal::Stale { index: 4, seen: 5 })
        );
    }

    #[test]
    fn standalone_and_relay() {
        let mut view = ClusterView::default();
        let standalone = ServerDatabase {
            model: "standalone".into(),
            index: None,
            sid: None,
            cid: None,
            ..clustered(true, true, 0)
        };
        assert_eq!(view.evaluate(Some(&standalone), true), Ok(()));
        let relay = ServerDatabase {
            model: "relay".into(),
            leader: false,
            ..standalone
        };
        assert_eq!(view.evaluate(Some(&relay), true), Err(Refusal::Relay));
        assert_eq!(view.evaluate(Some(&relay), false), Ok(()));
    }

    #[test]
    fn reads_captured_rows() {
        let row = Row::new()
            .with("name", Atom::string("OVN_Northbound"))
            .with("model", Atom::string("standalone"))
            .with("connected", Atom::from(true))
            .with("leader", Atom::from(true))
            .with("index", Value::empty_set())
            .with("sid", Value::empty_set())
            .with("cid", Value::empty_set());
        let db = ServerDatabase::from_row(&row).unwrap();
        assert_eq!((db.index, db.sid, db.leader), (None, None, true));
        let row = row
            .with("model", Atom::string("clustered"))
            .with("index", Value::set([Atom::from(3i64)]))
            .with("sid", Value::set([Atom::Uuid(Uuid::from_u128(5))]));
        let db = ServerDatabase::from_row(&row).unwrap();
        assert_eq!((db.index, db.sid), (Some(3), Some(Uuid::from_u128(5))));
    }
}
