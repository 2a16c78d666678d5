//! Pure address engine: subnets, pools, static claims and MACs, with no I/O.
