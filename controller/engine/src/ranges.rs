//! Interval sets and the delayed-reuse queue: the two structures that keep
//! the engine's memory proportional to allocations and ranges, never to the
//! size of a subnet.

use std::collections::BTreeMap;

use crate::family::{Family, from_u128};
use crate::hash::FastMap;

/// A set of addresses stored as disjoint, coalesced, inclusive ranges keyed
/// by their start. Membership, insertion and removal are O(log R) for R
/// ranges (plus the ranges merged away). The set never covers the whole
/// `u128` line (usable IPv6 ranges drop the all-ones address), so its
/// length always fits in a `u128`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct RangeSet {
    ranges: BTreeMap<u128, u128>,
    len: u128,
}

impl RangeSet {
    pub(crate) fn from_range(start: u128, end: u128) -> RangeSet {
        let mut set = RangeSet::default();
        set.insert_range(start, end);
        set
    }

    pub(crate) fn len(&self) -> u128 {
        self.len
    }

    pub(crate) fn contains(&self, value: u128) -> bool {
        self.ranges
            .range(..=value)
            .next_back()
            .is_some_and(|(_, &end)| end >= value)
    }

    pub(crate) fn first(&self) -> Option<u128> {
        self.ranges.keys().next().copied()
    }

    pub(crate) fn ranges(&self) -> impl Iterator<Item = (u128, u128)> + '_ {
        self.ranges.iter().map(|(&s, &e)| (s, e))
    }

    pub(crate) fn insert(&mut self, value: u128) {
        self.insert_range(value, value);
    }

    /// Adds `[start, end]`, merging with overlapping or adjacent ranges.
    pub(crate) fn insert_range(&mut self, start: u128, end: u128) {
        debug_assert!(start <= end);
        let mut new_start = start;
        let mut new_end = end;
        if let Some((&s, &e)) = self.ranges.range(..=start).next_back()
            && e.checked_add(1).is_none_or(|next| next >= start)
        {
            new_start = s;
            new_end = new_end.max(e);
            self.ranges.remove(&s);
            self.len -= e - s + 1;
        }
        loop {
            let upper = new_end.checked_add(1).unwrap_or(new_end);
            let Some((&s, &e)) = self.ranges.range(new_start..=upper).next() else {
                break;
            };
            self.ranges.remove(&s);
            self.len -= e - s + 1;
            new_end = new_end.max(e);
        }
        self.ranges.insert(new_start, new_end);
        self.len += new_end - new_start + 1;
    }

    /// Removes `value`; returns whether it was present.
    pub(crate) fn remove(&mut self, value: u128) -> bool {
        if !self.contains(value) {
            return false;
        }
        self.remove_range(value, value);
        true
    }

    /// Removes `[start, end]`, splitting ranges that straddle its edges.
    pub(crate) fn remove_range(&mut self, start: u128, end: u128) {
        debug_assert!(start <= end);
        let mut touched = Vec::new();
        if let Some((&s, &e)) = self.ranges.range(..start).next_back()
            && e >= start
        {
            touched.push((s, e));
        }
        touched.extend(self.ranges.range(start..=end).map(|(&s, &e)| (s, e)));
        for (s, e) in touched {
            self.ranges.remove(&s);
            self.len -= e - s + 1;
            if s < start {
                self.ranges.insert(s, start - 1);
                self.len += start - s;
            }
            if e > end {
                self.ranges.insert(end + 1, e);
                self.len += e - end;
            }
        }
    }

    /// The part of the set inside `[start, end]`.
    pub(crate) fn clipped(&self, start: u128, end: u128) -> RangeSet {
        let mut out = RangeSet::default();
        if start > end {
            return out;
        }
        if let Some((_, &e)) = self.ranges.range(..start).next_back()
            && e >= start
        {
            out.insert_range(start, e.min(end));
        }
        for (&s, &e) in self.ranges.range(start..=end) {
            out.insert_range(s, e.min(end));
        }
        out
    }

    pub(crate) fn insert_set(&mut self, other: &RangeSet) {
        for (s, e) in other.ranges() {
            self.insert_range(s, e);
        }
    }

    pub(crate) fn remove_set(&mut self, other: &RangeSet) {
        for (s, e) in other.ranges() {
            self.remove_range(s, e);
        }
    }

    /// The first range shared with `other`, if any.
    pub(crate) fn first_overlap(&self, other: &RangeSet) -> Option<(u128, u128)> {
        other
            .ranges()
            .find_map(|(s, e)| self.clipped(s, e).ranges().next())
    }

    /// Kube-OVN's range-list text: `a-b,c,d-e`, a one-address range bare.
    pub(crate) fn to_kube_string(&self, family: Family) -> String {
        let mut out = String::new();
        for (s, e) in self.ranges() {
            if !out.is_empty() {
                out.push(',');
            }
            out.push_str(&from_u128(family, s).to_string());
            if e != s {
                out.push('-');
                out.push_str(&from_u128(family, e).to_string());
            }
        }
        out
    }
}

/// Released addresses in release order. Allocation takes from here only when
/// no never-used address is left, oldest first, so a freed address rests as
/// long as possible before a new owner gets it. Each entry keeps its sequence
/// number so that re-partitioning addresses between pools keeps their order.
#[derive(Clone, Debug, Default)]
pub(crate) struct ReleaseQueue {
    by_seq: BTreeMap<u64, u128>,
    by_addr: FastMap<u128, u64>,
}

impl ReleaseQueue {
    pub(crate) fn push(&mut self, addr: u128, seq: u64) {
        if let Some(old) = self.by_addr.insert(addr, seq) {
            self.by_seq.remove(&old);
        }
        self.by_seq.insert(seq, addr);
    }

    pub(crate) fn remove(&mut self, addr: u128) -> bool {
        match self.by_addr.remove(&addr) {
            Some(seq) => {
                self.by_seq.remove(&seq);
                true
            }
            None => false,
        }
    }

    pub(crate) fn oldest(&self) -> Option<u128> {
        self.by_seq.values().next().copied()
    }

    pub(crate) fn len(&self) -> usize {
        self.by_seq.len()
    }

    /// `(sequence, address)` pairs, oldest first.
    pub(crate) fn entries(&self) -> impl Iterator<Item = (u64, u128)> + '_ {
        self.by_seq.iter().map(|(&s, &a)| (s, a))
    }

    pub(crate) fn to_set(&self) -> RangeSet {
        let mut set = RangeSet::default();
        for &addr in self.by_seq.values() {
            set.insert(addr);
        }
        set
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_merges_adjacent_and_overlapping_ranges() {
        let mut set = RangeSet::default();
        set.insert_range(10, 12);
        set.insert_range(14, 15);
        set.insert(13);
        assert_eq!(set.ranges().collect::<Vec<_>>(), vec![(10, 15)]);
        set.insert_range(5, 11);
        set.insert_range(20, 30);
        set.insert_range(14, 22);
        assert_eq!(set.ranges().collect::<Vec<_>>(), vec![(5, 30)]);
        assert_eq!(set.len(), 26);
    }

    #[test]
    fn remove_splits_ranges() {
        let mut set = RangeSet::from_range(0, 100);
        set.remove_range(10, 19);
        assert!(set.remove(50));
        assert!(!set.remove(50));
        assert_eq!(
            set.ranges().collect::<Vec<_>>(),
            vec![(0, 9), (20, 49), (51, 100)]
        );
        assert_eq!(set.len(), 101 - 11);
        assert_eq!(
            set.clipped(5, 25).ranges().collect::<Vec<_>>(),
            vec![(5, 9), (20, 25)]
        );
    }

    #[test]
    fn extreme_values_do_not_overflow() {
        let mut set = RangeSet::from_range(u128::MAX - 1, u128::MAX);
        set.insert(u128::MAX - 3);
        set.insert(u128::MAX - 2);
        assert_eq!(
            set.ranges().collect::<Vec<_>>(),
            vec![(u128::MAX - 3, u128::MAX)]
        );
        set.remove(u128::MAX);
        assert_eq!(set.len(), 3);
    }

    #[test]
    fn kube_string_prints_single_addresses_bare() {
        let mut set = RangeSet::from_range(0x0a10_0002, 0x0a10_0005);
        set.insert(0x0a10_0009);
        assert_eq!(
            set.to_kube_string(Family::V4),
            "10.16.0.2-10.16.0.5,10.16.0.9"
        );
    }

    #[test]
    fn release_queue_is_fifo_and_removable() {
        let mut queue = ReleaseQueue::default();
        queue.push(7, 1);
        queue.push(3, 2);
        queue.push(9, 3);
        assert!(queue.remove(3));
        assert_eq!(queue.oldest(), Some(7));
        assert_eq!(queue.len(), 2);
        assert_eq!(queue.entries().collect::<Vec<_>>(), vec![(1, 7), (3, 9)]);
    }
}
