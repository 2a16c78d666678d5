//! Typed rows of the `Open_vSwitch` database (the node's `ovs-vswitchd`
//! configuration), generated at build time from the pinned
//! `schemas/vswitch.ovsschema`. The CNI daemon uses `Open_vSwitch`, `Bridge`,
//! `Port` and `Interface`.

include!(concat!(env!("OUT_DIR"), "/vswitch.rs"));
