//! Sets of per-origin sequence numbers as sorted, disjoint, non-adjacent ranges.
//!
//! Per-origin sequences start at 1 and have no gaps, so what a node holds of one origin is
//! almost always one range `1..=n`; this is the compact digest anti-entropy exchanges.

use std::collections::BTreeMap;

/// Most ranges kept per origin (16 KiB at most). Gaps come from out-of-order arrival and
/// close quickly; a node catching up after an outage can hold many holes at once. Beyond
/// the limit the highest range is dropped: the set then under-claims, which costs a resend
/// (the event comes back and is re-recorded), never a loss.
pub const RANGES_PER_ORIGIN_MAX: usize = 1024;

/// A set of sequence numbers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeqRanges {
    /// start -> end (inclusive), disjoint and non-adjacent.
    ranges: BTreeMap<u64, u64>,
    /// The end of the range starting at 1, else 0: a copy of what `ranges` says, kept
    /// beside it so the common questions (is `seq` held, how far is it contiguous) need no
    /// walk of the tree (the simulator asks them several times per message).
    contiguous: u64,
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

    /// Whether `seq` is in the set.
    pub fn contains(&self, seq: u64) -> bool {
        if seq >= 1 && seq <= self.contiguous {
            return true;
        }
        self.ranges
            .range(..=seq)
            .next_back()
            .is_some_and(|(_, end)| *end >= seq)
    }

    /// Adds `seq`; returns false if it was already present.
    pub fn insert(&mut self, seq: u64) -> bool {
        if self.contains(seq) {
            return false;
        }
        let before = self
            .ranges
            .range(..seq)
            .next_back()
            .filter(|(_, end)| end.checked_add(1) == Some(seq))
            .map(|(s, _)| *s);
        let after = seq
            .checked_add(1)
            .and_then(|n| self.ranges.get(&n).map(|end| (n, *end)));
        match (before, after) {
            (Some(start), Some((next, end))) => {
                self.ranges.remove(&next);
                self.ranges.insert(start, end);
            }
            (Some(start), None) => {
                self.ranges.insert(start, seq);
            }
            (None, Some((next, end))) => {
                self.ranges.remove(&next);
                self.ranges.insert(seq, end);
            }
            (None, None) => {
                self.ranges.insert(seq, seq);
            }
        }
        if self.ranges.len() > RANGES_PER_ORIGIN_MAX {
            // Drop the highest range: the set then under-claims, which is safe.
            let last = *self.ranges.keys().next_back().unwrap_or(&0);
            self.ranges.remove(&last);
        }
        self.update_contiguous();
        true
    }

    fn update_contiguous(&mut self) {
        self.contiguous = match self.ranges.first_key_value() {
            Some((1, end)) => *end,
            _ => 0,
        };
    }

    /// The highest `n` such that `1..=n` is in the set (0 if 1 is missing).
    pub fn contiguous(&self) -> u64 {
        self.contiguous
    }

    /// The ranges, ascending.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.ranges.iter().map(|(s, e)| (*s, *e))
    }

    /// Number of sequence numbers held.
    pub fn count(&self) -> u64 {
        self.ranges.iter().map(|(s, e)| e - s + 1).sum()
    }

    /// Builds a set from ranges (for decoding digests); overlapping input is merged.
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

    /// Sequence numbers in `self` but not in `other`, ascending, at most `limit` of them.
    /// Work is bounded by `limit` plus the number of ranges, not by the span they cover.
    pub fn difference(&self, other: &SeqRanges, limit: usize) -> Vec<u64> {
        self.difference_by(limit, |s, e| {
            let first = other.ranges.range(..=s).next_back().map_or(s, |(k, _)| *k);
            other.ranges.range(first..=e).map(|(a, b)| (*a, *b))
        })
    }

    /// Whether `ranges` is already in the form a set keeps (ascending, each `1 <= s <= e`,
    /// disjoint and non-adjacent, at most [`RANGES_PER_ORIGIN_MAX`]): then
    /// `SeqRanges::from_ranges(ranges)` holds exactly these ranges, and
    /// [`SeqRanges::difference_normalized`] can use them as they are.
    pub fn is_normalized(ranges: &[(u64, u64)]) -> bool {
        ranges.len() <= RANGES_PER_ORIGIN_MAX
            && ranges.iter().all(|(s, e)| *s >= 1 && s <= e)
            && ranges
                .windows(2)
                .all(|w| w[0].1.checked_add(1).is_some_and(|next| next < w[1].0))
    }

    /// [`SeqRanges::difference`] against a set given as normalized ranges (see
    /// [`SeqRanges::is_normalized`]; the caller checks), without building it: the same
    /// answer as `self.difference(&SeqRanges::from_ranges(other), limit)`.
    pub fn difference_normalized(&self, other: &[(u64, u64)], limit: usize) -> Vec<u64> {
        self.difference_by(limit, |s, e| {
            // The first range of `other` that can overlap [s, e]: the last starting at or
            // before s, else the first after it.
            let first = other.partition_point(|(os, _)| *os <= s).saturating_sub(1);
            other[first..]
                .iter()
                .copied()
                .take_while(move |(os, _)| *os <= e)
        })
    }

    /// The difference walk shared by both forms of `other`: `overlapping(s, e)` yields, in
    /// ascending order, the ranges of `other` that can overlap `[s, e]`.
    fn difference_by<I>(&self, limit: usize, mut overlapping: impl FnMut(u64, u64) -> I) -> Vec<u64>
    where
        I: Iterator<Item = (u64, u64)>,
    {
        let mut out = Vec::new();
        for (s, e) in self.iter() {
            let mut cur = s;
            for (os, oe) in overlapping(s, e) {
                if oe < cur {
                    continue;
                }
                while cur < os && cur <= e {
                    if out.len() >= limit {
                        return out;
                    }
                    out.push(cur);
                    cur += 1;
                }
                cur = cur.max(oe.saturating_add(1));
                if cur > e {
                    break;
                }
            }
            while cur <= e {
                if out.len() >= limit {
                    return out;
                }
                out.push(cur);
                cur += 1;
            }
        }
        out
    }

    fn insert_range(&mut self, start: u64, end: u64) {
        let mut s = start;
        let mut e = end;
        // Merge every range that overlaps or touches [s, e].
        let overlapping: Vec<(u64, u64)> = self
            .ranges
            .range(..=e.saturating_add(1))
            .filter(|(_, re)| re.saturating_add(1) >= s)
            .map(|(a, b)| (*a, *b))
            .collect();
        for (a, b) in overlapping {
            self.ranges.remove(&a);
            s = s.min(a);
            e = e.max(b);
        }
        self.ranges.insert(s, e);
        while self.ranges.len() > RANGES_PER_ORIGIN_MAX {
            let last = *self.ranges.keys().next_back().unwrap_or(&0);
            self.ranges.remove(&last);
        }
        self.update_contiguous();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
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
            prop_assert_eq!(sa.difference_normalized(&normalized, limit), expected);
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

    #[test]
    fn bounded() {
        let mut set = SeqRanges::new();
        for s in (1..5000).step_by(2) {
            set.insert(s);
        }
        assert!(set.iter().count() <= RANGES_PER_ORIGIN_MAX);
        assert!(set.contains(1));
    }
}
