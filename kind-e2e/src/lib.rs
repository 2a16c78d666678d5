//! Local cluster node agent and the end-to-end suite.
