//! CNI plugin and node daemon that wire each pod's interface into OVS/OVN.
