//! The hash maps of the hot path. `foldhash` is several times faster than
//! the standard SipHash on short keys and, seeded per map, keeps some
//! resistance to crafted collisions.

/// A `HashMap` with a per-map seeded `foldhash` hasher.
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
