//! `check_invariants` and `check_invariants_full`: what must hold after every input.

use std::collections::BTreeMap;

use super::{
    ANNOUNCERS_MAX, CHECK_TABLES_EVERY, CHECK_WINDOW, HANDOFFS_LEN_MAX, LAZY_MAX, LOST_OPEN_US,
    LOST_ORIGINS_MAX, MISSING_LEN_MAX, Missing, NearIndex, Node, REF_BUFFER_CAP_MAX,
    REF_BUFFERS_MAX, REFS_PER_MESSAGE_MAX, RELAY_CACHE_LEN_MAX, REPAIRED_LEN_MAX, RETURNED_LEN_MAX,
    TRANSMIT_QUEUE_LEN_MAX, Timer, UNCONFIRMED_LEN_MAX, UNCONFIRMED_PER_SENDER_MAX,
};
use crate::envelope::{EventId, OriginKey};
use crate::mesh::route;
use crate::mesh::seen::OriginSeen;
use crate::mesh::store::Store;

impl<S: Store> Node<S> {
    /// Checks the node's internal invariants; panics with a description if one is broken.
    /// The simulator calls it after every step.
    ///
    /// Bounded: the view (only after it changed) and the queue limits are checked whole
    /// on every call; on one call in [`CHECK_TABLES_EVERY`], the next [`CHECK_WINDOW`]
    /// entries of the missing table and of the seen-set (wrapping), so every entry is
    /// checked within `CHECK_TABLES_EVERY * len / CHECK_WINDOW` calls.
    /// [`Node::check_invariants_full`] checks everything at once (the simulator calls it
    /// at the end of a run).
    pub fn check_invariants(&self) {
        self.check_bounded();
        let calls = self.check_calls.get();
        self.check_calls.set(calls.wrapping_add(1));
        if !calls.is_multiple_of(CHECK_TABLES_EVERY) {
            return;
        }
        let (missing_at, seen_at) = self.check_cursor.get();
        let missing_at = check_window(
            |from| self.missing.range((from, std::ops::Bound::Unbounded)),
            missing_at,
            |id, m| self.check_missing(id, m),
        );
        let seen_at = check_window(
            |from| self.seen.range_from(from),
            seen_at,
            |o, s| {
                Self::check_seen(s);
                self.seen.check_origin(o, s, self.now, &self.store);
            },
        );
        self.check_cursor.set((missing_at, seen_at));
    }

    /// [`Node::check_invariants`] over every entry of every table.
    pub fn check_invariants_full(&self) {
        self.check_bounded();
        assert!(
            NearIndex::of(&self.members, &self.router) == self.near.by_rtt,
            "near index out of step with the members' estimates"
        );
        for (id, m) in &self.missing {
            self.check_missing(id, m);
        }
        assert!(self.seen.consistent(), "seen-set halves out of step");
        let me = self.me.node_key();
        assert!(
            self.relay_cache.values().all(|e| e.origin() != me),
            "an own event relayed only (a node stores its own events)"
        );
        assert!(
            self.router.hot_consistent(),
            "link records' hot queue out of step or over its bound"
        );
        assert!(
            self.ref_buffers
                .iter()
                .all(|b| b.is_empty() && b.capacity() <= REF_BUFFER_CAP_MAX),
            "a kept reference buffer is not empty or over size"
        );
        for s in self.seen.values() {
            Self::check_seen(s);
        }
        self.seen.check_summary(self.now, &self.store);
        assert!(
            self.seen.covers(&self.store),
            "an origin the store holds is missing from the seen-set"
        );
        assert_eq!(
            self.seen_count,
            self.seen.values().map(|s| s.ranges().count()).sum::<u64>(),
            "seen count out of step with the seen-set"
        );
        assert_eq!(
            self.unconfirmed_len,
            self.unconfirmed.values().map(BTreeMap::len).sum::<usize>(),
            "unconfirmed Skips out of step with their count"
        );
        assert!(self.unconfirmed_len <= UNCONFIRMED_LEN_MAX);
        let mut by: BTreeMap<OriginKey, usize> = BTreeMap::new();
        let me = self.me.node_key();
        for (origin, waiting) in &self.unconfirmed {
            assert!(!waiting.is_empty(), "an empty unconfirmed entry is kept");
            assert_ne!(*origin, me, "own numbers taken as another node's Skip");
            for u in waiting.values() {
                assert_ne!(u.by, *origin, "the origin's own Skip left unconfirmed");
                *by.entry(u.by).or_default() += 1;
            }
        }
        assert_eq!(by, self.unconfirmed_by, "per-sender counts out of step");
        assert!(by.values().all(|&n| n <= UNCONFIRMED_PER_SENDER_MAX));
        assert!(self.lost.len() <= LOST_ORIGINS_MAX, "lost words over limit");
        for wait in self.lost.values() {
            assert!(wait.ranges.range_count() > 0, "an empty Lost word is kept");
            assert!(wait.since <= self.now, "a Lost word from the future");
        }
        assert!(
            self.lost_open.len() <= LOST_ORIGINS_MAX,
            "open lost numbers over limit"
        );
        for open in self.lost_open.values() {
            assert!(open.ranges.range_count() > 0, "an empty open entry is kept");
            assert!(
                open.until <= self.now.saturating_add(LOST_OPEN_US),
                "numbers open past their window"
            );
        }
    }

    fn check_missing(&self, id: &EventId, m: &Missing) {
        assert_eq!(m.event.id, *id, "missing table keyed wrongly");
        assert!(!self.store.holds(&m.event), "missing event is stored");
        assert!(m.announcers.len() <= ANNOUNCERS_MAX);
        assert!(
            matches!(self.timers.get(&m.timer), Some(Timer::Graft(t)) if t == id),
            "missing event without its GRAFT timer"
        );
    }

    /// Forgets a missing event that arrived (or was erased), with its GRAFT timer.
    pub(super) fn arrived(&mut self, id: &EventId) {
        if let Some(m) = self.missing.remove(id) {
            self.timers.remove(&m.timer);
        }
    }

    fn check_seen(s: &OriginSeen) {
        assert!(
            s.delivered <= s.ranges().contiguous(),
            "delivered past what was seen"
        );
    }

    /// The checks whose cost does not grow with the events held.
    fn check_bounded(&self) {
        assert!(
            self.pending_graft.is_empty(),
            "GRAFTs left unsent after handle_timeout"
        );
        if self.view_checked.get() != self.view_version {
            let me = self.me.node_key();
            assert!(!self.lazy.contains(&me), "self in lazy set");
            assert!(self.lazy.len() <= LAZY_MAX, "lazy set over limit");
            assert!(
                self.lazy.iter().all(|k| self.members.contains_key(k)),
                "lazy peer is not a live member"
            );
            assert!(
                self.regions
                    .get(self.me.region.as_str())
                    .is_some_and(|r| r.binary_search(&me).is_ok()),
                "this node is missing from its region's member list"
            );
            for (record, _) in self.router.records() {
                let key = OriginKey(record.node);
                assert!(
                    key == me
                        || self.members.get(&key).is_some_and(|m| {
                            self.regions
                                .get(m.region.as_str())
                                .is_some_and(|list| route::sampled(list, &key))
                        }),
                    "link record of a node outside its region's sample"
                );
            }
            self.view_checked.set(self.view_version);
        }
        assert!(
            self.transmits.len() <= TRANSMIT_QUEUE_LEN_MAX,
            "transmit queue over limit"
        );
        assert!(
            self.ref_buffers.len() <= REF_BUFFERS_MAX,
            "kept reference buffers over limit"
        );
        assert!(
            self.missing.len() <= MISSING_LEN_MAX,
            "missing table over limit"
        );
        assert!(
            self.relay_cache.len() <= RELAY_CACHE_LEN_MAX,
            "relay cache over limit"
        );
        assert_eq!(
            self.relay_cache.len(),
            self.relay_order.len(),
            "relay cache index out of step"
        );
        assert!(
            self.repaired.len() <= self.repaired_order.len()
                && self.repaired_order.len() <= REPAIRED_LEN_MAX,
            "repaired set over limit or out of step with its order"
        );
        assert!(
            self.handoffs.len() <= HANDOFFS_LEN_MAX,
            "pending handoffs over limit"
        );
        assert!(
            self.returned.len() <= RETURNED_LEN_MAX,
            "returned members over limit"
        );
        assert!(
            self.recent_own.len() <= REFS_PER_MESSAGE_MAX,
            "recent own events over limit"
        );
        assert!(
            self.pending_ihave
                .values()
                .all(|p| p.len() < REFS_PER_MESSAGE_MAX),
            "pending IHAVE batch over limit"
        );
    }
}

/// Checks up to [`CHECK_WINDOW`] entries after `after` (from the first when `None`) of a
/// table walked in key order by `range_from` (its entries from a bound on), and returns
/// where the next window starts (`None`: from the first again).
fn check_window<'a, K: Copy + 'a, V: 'a, I: Iterator<Item = (&'a K, &'a V)>>(
    range_from: impl FnOnce(std::ops::Bound<K>) -> I,
    after: Option<K>,
    mut check: impl FnMut(&K, &V),
) -> Option<K> {
    let from = after.map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded);
    let mut last = None;
    let mut taken = 0;
    for (k, v) in range_from(from).take(CHECK_WINDOW) {
        check(k, v);
        last = Some(*k);
        taken += 1;
    }
    // The end reached: the next walk starts over.
    if taken < CHECK_WINDOW { None } else { last }
}
