//! Counting numbered probes: what one direction of a stream lost, duplicated and reordered over
//! a window of sequence numbers. Pure, so the verdicts the live-migration e2e and benchmark judge
//! by are unit-tested apart from any network.

use std::ops::Range;
use std::time::Duration;

/// What arrived of the probes numbered `window`, judged from their arrival order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// How many probes the window holds.
    pub sent: u64,
    /// The probes that never arrived, as maximal runs of consecutive numbers.
    pub lost: Vec<Range<u64>>,
    /// Arrivals of a probe that had already arrived.
    pub duplicates: u64,
    /// First arrivals of a probe after a later-numbered one.
    pub reordered: u64,
}

impl Verdict {
    /// Judges the probes numbered `window` from `arrivals`, every sequence number received in
    /// arrival order (numbers outside the window are ignored).
    pub fn of(window: Range<u64>, arrivals: &[u64]) -> Verdict {
        let len = usize::try_from(window.end.saturating_sub(window.start)).unwrap_or(0);
        let mut seen = vec![false; len];
        let (mut duplicates, mut reordered, mut highest) = (0, 0, None);
        for &seq in arrivals.iter().filter(|s| window.contains(s)) {
            let slot = &mut seen[(seq - window.start) as usize];
            if *slot {
                duplicates += 1;
                continue;
            }
            *slot = true;
            if highest.is_some_and(|h| seq < h) {
                reordered += 1;
            }
            highest = highest.max(Some(seq));
        }
        let mut lost: Vec<Range<u64>> = Vec::new();
        for seq in window
            .clone()
            .filter(|s| !seen[(s - window.start) as usize])
        {
            match lost.last_mut() {
                Some(run) if run.end == seq => run.end += 1,
                _ => lost.push(seq..seq + 1),
            }
        }
        Verdict {
            sent: len as u64,
            lost,
            duplicates,
            reordered,
        }
    }

    /// How many probes were lost.
    pub fn lost_count(&self) -> u64 {
        self.lost.iter().map(|r| r.end - r.start).sum()
    }

    /// The traffic gap: the time the lost probes stood for, at one probe per `interval`.
    pub fn gap(&self, interval: Duration) -> Duration {
        interval * u32::try_from(self.lost_count()).unwrap_or(u32::MAX)
    }

    /// Lost probes that are not part of the run containing `moment` (the probe number current at
    /// the switch-over) or starting at most `slack + 1` probes after it: losses the switch-over
    /// cannot explain. The slack absorbs the delay between the mark and the target's activation
    /// on a loaded machine.
    pub fn lost_apart_from(&self, moment: u64, slack: u64) -> Vec<Range<u64>> {
        self.lost
            .iter()
            .filter(|run| !(run.start <= moment + 1 + slack && moment <= run.end))
            .cloned()
            .collect()
    }
}

/// The `q`-quantile (0..=1) of `values` by the nearest-rank method; `None` when empty.
pub fn quantile(values: &[Duration], q: f64) -> Option<Duration> {
    let mut sorted = values.to_vec();
    sorted.sort();
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len().max(1)) - 1).copied()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn everything_in_order_is_clean() {
        let v = Verdict::of(10..15, &[10, 11, 12, 13, 14]);
        assert_eq!(
            v,
            Verdict {
                sent: 5,
                ..Verdict::default()
            }
        );
        assert_eq!(v.gap(Duration::from_millis(10)), Duration::ZERO);
    }

    #[test]
    fn losses_are_grouped_into_runs() {
        let v = Verdict::of(0..10, &[0, 1, 4, 5, 6, 9]);
        assert_eq!(v.lost, vec![2..4, 7..9]);
        assert_eq!(v.lost_count(), 4);
        assert_eq!(v.gap(Duration::from_millis(10)), Duration::from_millis(40));
    }

    #[test]
    fn duplicates_and_reordering_are_counted_once_each() {
        let v = Verdict::of(0..5, &[0, 2, 1, 2, 3, 4, 4]);
        assert_eq!(v.duplicates, 2);
        assert_eq!(v.reordered, 1);
        assert!(v.lost.is_empty());
    }

    #[test]
    fn arrivals_outside_the_window_are_ignored() {
        let v = Verdict::of(5..8, &[3, 5, 6, 7, 9]);
        assert_eq!(v.sent, 3);
        assert!(v.lost.is_empty());
        assert_eq!(v.reordered, 0);
    }

    #[test]
    fn only_the_run_at_the_switch_over_is_explained() {
        let v = Verdict::of(
            0..20,
            &[0, 1, 2, 5, 6, 7, 8, 9, 10, 12, 13, 14, 15, 16, 17, 18, 19],
        );
        assert_eq!(v.lost, vec![3..5, 11..12]);
        // The switch-over happened while probe 4 was current: 3..5 is its gap.
        assert_eq!(v.lost_apart_from(4, 0), vec![11..12]);
        // A run right after the switch-over moment is its gap too.
        assert_eq!(v.lost_apart_from(2, 0), vec![11..12]);
        assert_eq!(v.lost_apart_from(8, 0), v.lost);
    }

    #[test]
    fn quantiles_by_nearest_rank() {
        let ms = |v: &[u64]| {
            v.iter()
                .map(|&m| Duration::from_millis(m))
                .collect::<Vec<_>>()
        };
        let values = ms(&[50, 10, 40, 20, 30]);
        assert_eq!(quantile(&values, 0.5), Some(Duration::from_millis(30)));
        assert_eq!(quantile(&values, 0.99), Some(Duration::from_millis(50)));
        assert_eq!(quantile(&values, 0.0), Some(Duration::from_millis(10)));
        assert_eq!(quantile(&[], 0.5), None);
    }

    proptest! {
        /// Whatever arrives, every probe of the window is either received or in exactly one lost
        /// run, and the counts add up.
        #[test]
        fn every_probe_is_received_or_lost_once(
            start in 0u64..1000,
            len in 0u64..200,
            arrivals in proptest::collection::vec(0u64..1300, 0..400),
        ) {
            let window = start..start + len;
            let v = Verdict::of(window.clone(), &arrivals);
            let received: std::collections::BTreeSet<u64> =
                arrivals.iter().copied().filter(|s| window.contains(s)).collect();
            prop_assert_eq!(v.lost_count() + received.len() as u64, len);
            for run in &v.lost {
                prop_assert!(run.start < run.end);
                for seq in run.clone() {
                    prop_assert!(!received.contains(&seq));
                }
            }
            for pair in v.lost.windows(2) {
                prop_assert!(pair[0].end < pair[1].start, "runs are maximal and ordered");
            }
            let in_window = arrivals.iter().filter(|s| window.contains(s)).count() as u64;
            prop_assert_eq!(v.duplicates, in_window - received.len() as u64);
        }
    }
}
