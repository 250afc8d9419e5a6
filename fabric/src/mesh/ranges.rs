//! Sets of per-origin sequence numbers as sorted, disjoint, non-adjacent ranges.
//!
//! Per-origin sequences start at 1 and have no gaps, so what a node holds of one origin is
//! almost always one range `1..=n`; this is the compact digest anti-entropy exchanges.

use smallvec::SmallVec;

/// Most ranges kept per origin (16 KiB at most). Gaps come from out-of-order arrival and
/// close quickly; a node catching up after an outage can hold many holes at once. Beyond
/// the limit the highest range is dropped: the set then under-claims, which costs a resend
/// (the event comes back and is re-recorded), never a loss.
pub const RANGES_PER_ORIGIN_MAX: usize = 1024;

/// A set of sequence numbers.
///
/// Kept as a sorted vector of ranges with room for one inline: almost every origin is one
/// range `1..=n`, so the set costs no allocation and every question is a look at one pair.
/// A tree (the first version) allocated per origin and made anti-entropy walk a thousand
/// trees per digest on a 1000-node mesh; with at most [`RANGES_PER_ORIGIN_MAX`] ranges, a
/// binary search and an occasional shift of a few KiB beat it everywhere.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeqRanges {
    /// `(start, end)` (inclusive), sorted, disjoint and non-adjacent.
    ranges: SmallVec<[(u64, u64); 1]>,
}

impl SeqRanges {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of disjoint ranges (at most [`RANGES_PER_ORIGIN_MAX`] after an insert).
    pub fn range_count(&self) -> usize {
        self.ranges.len()
    }

    /// The ranges, sorted, disjoint and non-adjacent (what a digest carries).
    pub fn as_slice(&self) -> &[(u64, u64)] {
        &self.ranges
    }

    /// Index of the first range whose start is after `seq`.
    fn after(&self, seq: u64) -> usize {
        self.ranges.partition_point(|(s, _)| *s <= seq)
    }

    /// Whether `seq` is in the set.
    pub fn contains(&self, seq: u64) -> bool {
        if let Some((1, end)) = self.ranges.first()
            && seq >= 1
            && seq <= *end
        {
            return true;
        }
        // Most numbers asked about are the newest: answer them from the last range without
        // the binary search, whose probes miss the cache when an origin's events have many
        // gaps here (a node that may not hold some of an origin's streams).
        match self.ranges.last() {
            None => return false,
            Some(&(start, end)) if seq >= start => return seq <= end,
            Some(_) => {}
        }
        let at = self.after(seq);
        at > 0 && self.ranges[at - 1].1 >= seq
    }

    /// Adds `seq`; returns false if it was already present.
    pub fn insert(&mut self, seq: u64) -> bool {
        // The common cases: the next number after the last range, or one further on (a
        // gap: the binary search below would probe ranges that are cold in the cache).
        if let Some(last) = self.ranges.last_mut()
            && seq > last.1
        {
            if last.1 + 1 == seq {
                last.1 = seq;
            } else if self.ranges.len() < RANGES_PER_ORIGIN_MAX {
                self.ranges.push((seq, seq));
            }
            // (At the limit a new highest range is dropped, as below: the set under-claims.)
            return true;
        }
        let at = self.after(seq);
        if at > 0 && self.ranges[at - 1].1 >= seq {
            return false;
        }
        let joins_before = at > 0 && self.ranges[at - 1].1.checked_add(1) == Some(seq);
        let joins_after = at < self.ranges.len() && seq.checked_add(1) == Some(self.ranges[at].0);
        match (joins_before, joins_after) {
            (true, true) => {
                self.ranges[at - 1].1 = self.ranges[at].1;
                self.ranges.remove(at);
            }
            (true, false) => self.ranges[at - 1].1 = seq,
            (false, true) => self.ranges[at].0 = seq,
            (false, false) => {
                // At the limit the highest range goes (the set then under-claims, which is
                // safe), before the insert, so the vector never grows past the limit.
                if self.ranges.len() >= RANGES_PER_ORIGIN_MAX {
                    if at >= self.ranges.len() {
                        return true;
                    }
                    self.ranges.pop();
                }
                self.ranges.insert(at, (seq, seq));
            }
        }
        true
    }

    /// Takes `seq` out; returns whether it was there. Splitting a range at
    /// [`RANGES_PER_ORIGIN_MAX`] drops the highest range, as [`SeqRanges::insert`] does.
    pub fn remove(&mut self, seq: u64) -> bool {
        let at = self.after(seq);
        if at == 0 || self.ranges[at - 1].1 < seq {
            return false;
        }
        let (s, e) = self.ranges[at - 1];
        match (s == seq, e == seq) {
            (true, true) => {
                self.ranges.remove(at - 1);
            }
            (true, false) => self.ranges[at - 1].0 = seq + 1,
            (false, true) => self.ranges[at - 1].1 = seq - 1,
            (false, false) => {
                self.ranges[at - 1].1 = seq - 1;
                if self.ranges.len() >= RANGES_PER_ORIGIN_MAX {
                    if at == self.ranges.len() {
                        // The upper part would be the highest range: it is the one dropped.
                        return true;
                    }
                    self.ranges.pop();
                }
                self.ranges.insert(at, (seq + 1, e));
            }
        }
        true
    }

    /// The largest `n` such that `1..=n` is in the set (0 if 1 is missing).
    pub fn contiguous(&self) -> u64 {
        match self.ranges.first() {
            Some((1, end)) => *end,
            _ => 0,
        }
    }

    /// The ranges, ascending.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.ranges.iter().copied()
    }

    /// How many sequence numbers the set holds.
    pub fn count(&self) -> u64 {
        self.ranges.iter().map(|(s, e)| e - s + 1).sum()
    }

    /// Builds a set from ranges (any order, may overlap); ranges with start 0 or end <
    /// start are ignored.
    pub fn from_ranges(ranges: impl IntoIterator<Item = (u64, u64)>) -> Self {
        let mut set = Self::new();
        for (s, e) in ranges {
            if s == 0 || e < s {
                continue;
            }
            // Bounded by RANGES_PER_ORIGIN_MAX inserts of whole ranges.
            set.insert_range(s, e);
        }
        set
    }

    /// Up to `limit` sequence numbers in `self` but not in `other`, ascending (listed from
    /// [`SeqRanges::difference_ranges`]).
    pub fn difference(&self, other: &SeqRanges, limit: usize) -> Vec<u64> {
        self.difference_ranges(&other.ranges)
            .into_iter()
            .flat_map(|(s, e)| s..=e)
            .take(limit)
            .collect()
    }

    /// Whether `ranges` is what a set would hold: sorted, disjoint, non-adjacent, no zero,
    /// within [`RANGES_PER_ORIGIN_MAX`]. A peer's digest that passes can be used as is.
    pub fn is_normalized(ranges: &[(u64, u64)]) -> bool {
        ranges.len() <= RANGES_PER_ORIGIN_MAX
            && ranges.iter().all(|(s, e)| *s >= 1 && s <= e)
            && ranges
                .windows(2)
                .all(|w| w[0].1.checked_add(1).is_some_and(|next| next < w[1].0))
    }

    /// The numbers in `self` but not in `other` (ranges that pass
    /// [`SeqRanges::is_normalized`]: a peer's digest is used without building a set from
    /// it) as ascending, disjoint ranges: at most as many as the
    /// two hold between them, however many numbers they cover. (An anti-entropy answer
    /// works on these: listing the numbers up to its batch limit cost more than the answer
    /// when it sends a few events of a long gap, or none of a fresh tail.)
    pub fn difference_ranges(&self, other: &[(u64, u64)]) -> smallvec::SmallVec<[(u64, u64); 2]> {
        let mut out = smallvec::SmallVec::new();
        // `other` holds everything up to `upto` (its first range starts at 1; a peer that
        // is not behind holds one range from 1): only ranges of `self` that end past it can
        // hold anything `other` lacks. Found by bisection: a store that keeps some streams
        // of an origin holds its numbers in hundreds of ranges.
        let upto = match other.first() {
            Some(&(1, end)) => end,
            _ => 0,
        };
        let start = self.ranges.partition_point(|(_, e)| *e <= upto);
        for &(s, e) in &self.ranges[start..] {
            // The first range of `other` that can overlap [s, e]: the last starting at or
            // before s, else the first after it.
            let first = other.partition_point(|(os, _)| *os <= s).saturating_sub(1);
            // The next number of [s, e] not yet placed; `None`: past u64::MAX.
            let mut cur = Some(s);
            for &(os, oe) in other[first..].iter().take_while(|(os, _)| *os <= e) {
                let Some(c) = cur.filter(|c| *c <= e) else {
                    break;
                };
                if oe < c {
                    continue;
                }
                if c < os {
                    out.push((c, os - 1));
                }
                cur = oe.checked_add(1);
            }
            if let Some(c) = cur.filter(|c| *c <= e) {
                out.push((c, e));
            }
        }
        out
    }

    /// The numbers from 1 to the highest in the set that the set lacks: the gaps before
    /// and between its ranges (none for the usual single range `1..=n`).
    pub fn holes(&self) -> SeqRanges {
        let mut holes = SeqRanges::new();
        let mut next = 1u64;
        for &(s, e) in &self.ranges {
            if s > next {
                holes.ranges.push((next, s - 1));
            }
            next = e.saturating_add(1);
        }
        holes
    }

    /// How many numbers `ranges` (ascending, disjoint) cover, at most `u64::MAX`.
    pub fn covered(ranges: &[(u64, u64)]) -> u64 {
        ranges.iter().fold(0u64, |n, (s, e)| {
            n.saturating_add((e - s).saturating_add(1))
        })
    }

    /// Adds every number of `start..=end` (`start` at least 1), merging what it touches;
    /// at [`RANGES_PER_ORIGIN_MAX`] the highest range goes, as with [`SeqRanges::insert`].
    pub fn insert_range(&mut self, start: u64, end: u64) {
        // Every range that overlaps or touches [start, end] is merged into it: they are
        // the ones from the first ending at or after start - 1 to the last starting at or
        // before end + 1.
        let lo = self
            .ranges
            .partition_point(|(_, e)| e.saturating_add(1) < start);
        let hi = self
            .ranges
            .partition_point(|(s, _)| *s <= end.saturating_add(1));
        let (mut s, mut e) = (start, end);
        if lo < hi {
            s = s.min(self.ranges[lo].0);
            e = e.max(self.ranges[hi - 1].1);
        }
        self.ranges.drain(lo..hi);
        if self.ranges.len() >= RANGES_PER_ORIGIN_MAX {
            // As in `insert`: the highest range goes first.
            if lo >= self.ranges.len() {
                return;
            }
            self.ranges.pop();
        }
        self.ranges.insert(lo, (s, e));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Splitting a range at the range limit drops the highest range, as an insert does.
    #[test]
    fn a_split_at_the_limit_drops_the_highest_range() {
        let mut set = SeqRanges::from_ranges((0..RANGES_PER_ORIGIN_MAX as u64).map(|i| {
            let lo = i * 10 + 1;
            (lo, lo + 4)
        }));
        assert_eq!(set.range_count(), RANGES_PER_ORIGIN_MAX);
        let top = set.as_slice()[RANGES_PER_ORIGIN_MAX - 1];
        assert!(set.remove(3));
        assert_eq!(set.range_count(), RANGES_PER_ORIGIN_MAX);
        assert_eq!(&set.as_slice()[..2], &[(1, 2), (4, 5)]);
        assert!(!set.contains(top.0), "the highest range went");
        // Splitting the highest range itself keeps its lower part.
        let last = set.as_slice()[RANGES_PER_ORIGIN_MAX - 1];
        assert!(set.remove(last.0 + 2));
        assert_eq!(
            set.as_slice()[RANGES_PER_ORIGIN_MAX - 1],
            (last.0, last.0 + 1)
        );
        assert!(!set.remove(last.0 + 2));
        assert!(!set.remove(0));
    }

    proptest! {
        /// Inserts and removes in any order agree with a set (well under the range limit).
        #[test]
        fn removes_like_a_set(ops in proptest::collection::vec((any::<bool>(), 1u64..120), 0..400)) {
            let mut set = SeqRanges::new();
            let mut model = std::collections::BTreeSet::new();
            for (add, s) in ops {
                if add {
                    prop_assert_eq!(set.insert(s), model.insert(s));
                } else {
                    prop_assert_eq!(set.remove(s), model.remove(&s));
                }
                prop_assert!(SeqRanges::is_normalized(set.as_slice()));
            }
            for s in 0..130 {
                prop_assert_eq!(set.contains(s), model.contains(&s));
            }
        }

        #[test]
        fn behaves_like_a_set(seqs in proptest::collection::vec(1u64..200, 0..300)) {
            let mut set = SeqRanges::new();
            let mut model = std::collections::BTreeSet::new();
            for s in seqs {
                prop_assert_eq!(set.insert(s), model.insert(s));
            }
            for s in 0..210 {
                prop_assert_eq!(set.contains(s), model.contains(&s));
            }
            let contiguous = (1..).take_while(|s| model.contains(s)).count() as u64;
            prop_assert_eq!(set.contiguous(), contiguous);
            prop_assert_eq!(set.count(), model.len() as u64);
            let rebuilt = SeqRanges::from_ranges(set.iter());
            prop_assert_eq!(&rebuilt, &set);
        }

        /// Numbers mostly in ascending order with gaps (a node holding some of an
        /// origin's streams), now and then an older one: the shortcuts for the newest
        /// numbers agree with the model.
        #[test]
        fn ascending_with_gaps_behaves_like_a_set(
            steps in proptest::collection::vec((1u64..4, 0u64..12), 0..300),
        ) {
            let mut set = SeqRanges::new();
            let mut model = std::collections::BTreeSet::new();
            let mut top = 0;
            for (gap, back) in steps {
                top += gap;
                // Every fourth step or so an older number (present or not) instead.
                let s = if back < 3 { top.saturating_sub(back * 2).max(1) } else { top };
                prop_assert_eq!(set.contains(s), model.contains(&s));
                prop_assert_eq!(set.insert(s), model.insert(s));
                prop_assert_eq!(set.contains(s), true);
                prop_assert_eq!(set.contains(top + 1), false);
            }
            for s in 0..top + 3 {
                prop_assert_eq!(set.contains(s), model.contains(&s));
            }
            prop_assert_eq!(set.count(), model.len() as u64);
            prop_assert_eq!(&SeqRanges::from_ranges(set.iter()), &set);
        }

        #[test]
        fn difference_matches_the_model(
            a in proptest::collection::btree_set(1u64..120, 0..80),
            b in proptest::collection::btree_set(1u64..120, 0..80),
            limit in 0usize..100,
        ) {
            let sa = SeqRanges::from_ranges(a.iter().map(|s| (*s, *s)));
            let sb = SeqRanges::from_ranges(b.iter().map(|s| (*s, *s)));
            let expected: Vec<u64> = a.difference(&b).copied().take(limit).collect();
            prop_assert_eq!(sa.difference(&sb, limit), expected.clone());
            let normalized: Vec<(u64, u64)> = sb.iter().collect();
            prop_assert!(SeqRanges::is_normalized(&normalized));
            let ranges = sa.difference_ranges(&normalized);
            let listed: Vec<u64> = ranges.iter().flat_map(|&(s, e)| s..=e).take(limit).collect();
            prop_assert_eq!(listed, expected);
            prop_assert!(ranges.iter().all(|(s, e)| *s >= 1 && s <= e));
            prop_assert!(ranges.windows(2).all(|w| w[0].1 + 1 < w[1].0));
            prop_assert!(ranges.len() <= sa.range_count() + sb.range_count());
            prop_assert_eq!(SeqRanges::covered(&ranges), a.difference(&b).count() as u64);
        }

        /// Raw ranges (as a peer's digest may carry them) are normalized exactly when the
        /// set built from them holds them unchanged.
        #[test]
        fn normalized_means_unchanged_by_from_ranges(
            raw in proptest::collection::vec((0u64..60, 0u64..60), 0..12),
        ) {
            let set = SeqRanges::from_ranges(raw.iter().copied());
            let kept: Vec<(u64, u64)> = set.iter().collect();
            prop_assert_eq!(SeqRanges::is_normalized(&raw), kept == raw);
        }
    }

    /// The shortcut for two prefixes agrees with the general walk.
    #[test]
    fn prefixes_differ_only_past_the_shorter() {
        let upto = |n| SeqRanges::from_ranges([(1, n)]);
        assert!(upto(5).difference(&upto(7), 10).is_empty());
        assert!(upto(5).difference(&upto(5), 10).is_empty());
        assert_eq!(upto(7).difference(&upto(5), 10), vec![6, 7]);
        assert_eq!(upto(7).difference(&upto(5), 1), vec![6]);
        assert_eq!(
            upto(10).difference_ranges(&[(1, 5), (9, 9)]).as_slice(),
            &[(6, 8), (10, 10)]
        );
        assert!(upto(5).difference_ranges(&[(1, 5), (9, 9)]).is_empty());
    }

    #[test]
    fn bounded() {
        let mut set = SeqRanges::new();
        for s in (1..5000).step_by(2) {
            set.insert(s);
        }
        assert!(set.iter().count() <= RANGES_PER_ORIGIN_MAX);
        assert!(set.contains(1));
        // The lowest ranges are kept; a new highest one past the limit is not.
        let last = 2 * RANGES_PER_ORIGIN_MAX as u64 - 1;
        assert!(set.contains(last));
        assert!(!set.contains(last + 2));
        assert!(set.insert(last + 2), "not claimed as present before");
        assert!(!set.contains(last + 2));
        assert_eq!(set.range_count(), RANGES_PER_ORIGIN_MAX);
    }

    #[test]
    fn holes_are_the_gaps_below_the_highest_number() {
        let holes = |r: &[(u64, u64)]| SeqRanges::from_ranges(r.iter().copied()).holes();
        assert_eq!(holes(&[]).as_slice(), &[]);
        assert_eq!(holes(&[(1, 9)]).as_slice(), &[]);
        assert_eq!(holes(&[(4, 9)]).as_slice(), &[(1, 3)]);
        assert_eq!(
            holes(&[(1, 2), (5, 6), (9, u64::MAX)]).as_slice(),
            &[(3, 4), (7, 8)]
        );
        let r = SeqRanges::from_ranges([(3, 4), (8, 8)]);
        assert_eq!(
            r.holes().as_slice(),
            SeqRanges::from_ranges([(1, 8)])
                .difference_ranges(r.as_slice())
                .as_slice()
        );
    }
}
