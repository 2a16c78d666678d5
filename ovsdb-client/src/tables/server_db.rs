//! Typed rows of the `_Server` database every ovsdb-server hosts, generated at
//! build time from `schemas/_server.ovsschema` (fetched from ovsdb-server 3.1).
//! Its `Database` table tells whether a server is a connected raft leader and
//! how far its log has come, which is what leader-only connections check.

include!(concat!(env!("OUT_DIR"), "/server_db.rs"));
