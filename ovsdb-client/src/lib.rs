//! Async OVSDB (RFC 7047) client with a monitored cache and typed OVN Northbound tables.
