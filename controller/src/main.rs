//! The portkeeper controller: pods and addressing CRDs to OVN logical switch ports.

fn main() {}
