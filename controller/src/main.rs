//! The portkeeper controller binary.

fn main() {}
