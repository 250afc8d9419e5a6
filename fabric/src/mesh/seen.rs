//! What a node has seen of each origin ([`SeenSet`]), and the anti-entropy summary kept
//! beside it as it changes.
//!
//! An anti-entropy request lists the origins whose seen ranges changed in the last
//! [`SYNC_SETTLED_US`] and summarises the others ([`super::Settled`]): how many, and the
//! wrapping sum of one hash per origin ([`origin_hash`]). A sum, unlike one hash over the
//! origins in key order, can be kept up to date as origins change: a change takes the
//! origin's term out of the sum, and its new term goes in once the origin has settled.
//! Both sides of a round then cost what the request lists, not what the node has seen:
//! with one hash over every origin, a 1000-node simulation spent most of its idle minutes
//! walking every origin on both sides of every round (docs/sim-speed.md, "The anti-entropy
//! summary kept as the seen-set changes").
//!
//! Each origin is in one of three states ([`Term`]): *recent* (changed within
//! [`SYNC_SETTLED_US`]: listed, and queued by the time of its last change), *counted*
//! (settled: its hash in the sum) or *listed* (settled, but a summary cannot vouch for it,
//! or it has no ranges yet: listed in every request). The term of an origin is a function
//! of what the node has seen of it and of what the store holds of it
//! ([`summary_ranges`]); the set recomputes it when either changes: the seen ranges change
//! only through [`SeenSet::record`] and [`SeenSet::record_range`], the store's through the core's inserts and voids
//! ([`SeenSet::store_changed`]) or through the node's `store_mut`, after which every term
//! is recomputed before the next use ([`SeenSet::store_changed_elsewhere`]).

use std::borrow::Cow;
use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};

use rustc_hash::FxHashMap;

use crate::envelope::OriginKey;
use crate::mesh::message::Digest;
use crate::mesh::ranges::{RANGES_PER_ORIGIN_MAX, SeqRanges};
use crate::mesh::store::Store;
use crate::mesh::timers::Micros;

/// An anti-entropy answer leaves out what the requester lacks of an origin when all of it
/// arrived at the answering node less than this long ago: such events are most likely on
/// their way to the requester through the tree (a push in flight, a GRAFT pending), and
/// sending them made duplicates (on `clock-skew`, 10,259 events sent for 22 the requester
/// lacked; docs/sim-speed.md, "Fresh events are left to the tree"). A requester
/// behind on older numbers of the origin as well gets everything, fresh ones included (after
/// a heal, a node is behind on the other side's origins). A fresh event that was really
/// lost is sent by a later round.
pub const SYNC_FRESH_US: Micros = 1_000_000;

/// How long an origin's seen ranges must stay unchanged before anti-entropy requests
/// summarise it instead of listing it ([`super::Settled`]): longer than SWIM takes to
/// declare a cut-off member down in a mesh of up to about 100 nodes (a failed probe, then
/// 12-24 s of suspicion; 36 s at 1000), after which the round with a member back from down
/// sends the whole digest, so the origins a short cut kept news of are usually still listed, and
/// an idle fabric's rounds carry little more than the summary.
pub const SYNC_SETTLED_US: Micros = 30_000_000;

/// What a node has seen, per origin: looked up by origin on every receipt and announcement
/// (a hash map; a tree map's walk of 32-byte keys was 2 % of a 24-node simulation's
/// instructions), walked in key order by full anti-entropy digests (the ordered key set
/// beside it), with the anti-entropy summary of the settled origins kept as it changes.
/// Origins are never removed.
#[derive(Debug, Default)]
pub(super) struct SeenSet {
    by_origin: FxHashMap<OriginKey, OriginSeen>,
    order: BTreeSet<OriginKey>,
    /// The origins with a hole in their ranges ([`OriginSeen::has_hole`]), kept as ranges
    /// change: anti-entropy asks one of them in turn every fourth round, and walking every
    /// origin to find the few (nearly always none) was a fifth of the timer work of an
    /// idle 1000-node mesh.
    holed: BTreeSet<OriginKey>,
    summary: Summary,
}

/// The summary's running state (see the module docs).
#[derive(Debug, Default)]
struct Summary {
    /// Wrapping sum of the counted origins' hashes.
    sum: u64,
    /// How many origins are counted.
    count: u64,
    /// Every recent origin once, by the time of a change of it no later than its last (a
    /// min-heap: the next to settle first).
    recent: BinaryHeap<Reverse<(Micros, OriginKey)>>,
    /// The listed origins.
    listed: BTreeSet<OriginKey>,
    /// The store was changed where the core does not see it: every settled origin's term
    /// is recomputed before the next use.
    stale: bool,
}

/// An origin's place in the summary (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Term {
    /// Changed within [`SYNC_SETTLED_US`] (or settled since its queue entry was last
    /// looked at): in [`Summary::recent`].
    Recent,
    /// Settled; this hash is in [`Summary::sum`].
    Counted(u64),
    /// Settled and not summarisable, or without ranges: in [`Summary::listed`].
    #[default]
    Listed,
}

/// What a node has of one origin. One map entry holds both the accepted ranges and the
/// delivery cursor: they are read together on every receipt and by `check_invariants`
/// after every simulator step (two maps walked side by side were a fifth of a 24-node
/// simulation's instructions).
#[derive(Debug, Default)]
pub(super) struct OriginSeen {
    /// Sequence numbers accepted. Private: they change only through [`SeenSet::record`]
    /// and [`SeenSet::record_range`],
    /// which keeps the summary in step.
    ranges: SeqRanges,
    /// Next sequence number to deliver, minus one.
    pub(super) delivered: u64,
    /// Sequence numbers above the cursor that were stored, and so delivered, before a
    /// restart: the cursor passes them without delivering again. (The seen-set of a
    /// restarted node is its store's ranges; sequence numbers it had taken as Skips are
    /// gaps until a Skip comes again, and the events above them were delivered already.)
    /// Boxed: only a restarted node has any, and a 1000-node simulation holds a million
    /// of these records.
    restored: Option<Box<SeqRanges>>,
    /// When `ranges` last changed (anti-entropy summarises origins settled for
    /// [`SYNC_SETTLED_US`]).
    changed_us: Micros,
    /// `ranges` may lack numbers this node accepted: they reached
    /// [`RANGES_PER_ORIGIN_MAX`] once (the set then drops its highest range), or were
    /// rebuilt from a store after a restart. While false, every event of this origin that
    /// is stored or in the relay cache is in `ranges`, so a number `ranges` lacks needs no
    /// store lookup.
    pub(super) lossy: bool,
    /// The lowest sequence number recorded since `fresh_at`, 0 before the first: the
    /// origin's fresh tail here ([`SYNC_FRESH_US`]). A window starts with the first number
    /// recorded [`SYNC_FRESH_US`] or more after the last one started.
    pub(super) fresh_from: u64,
    /// When the current window of fresh numbers started.
    pub(super) fresh_at: Micros,
    /// Its place in the summary ([`OriginSeen::term`]), as two fields so that the kind
    /// packs beside `lossy` (a [`Term`] inline took 16 bytes).
    term_kind: TermKind,
    term_hash: u64,
}

/// [`Term`]'s kind, without the hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum TermKind {
    Recent,
    Counted,
    #[default]
    Listed,
}

impl OriginSeen {
    /// The record of an origin rebuilt from a store after a restart: `ranges` seen,
    /// delivered up to `delivered`, `restored` delivered above it. Lossy (a store's ranges
    /// may under-claim); changed at `now`.
    pub(super) fn restored(
        ranges: SeqRanges,
        delivered: u64,
        restored: SeqRanges,
        now: Micros,
    ) -> Self {
        Self {
            ranges,
            delivered,
            restored: (restored.range_count() > 0).then(|| Box::new(restored)),
            changed_us: now,
            lossy: true,
            ..Self::default()
        }
    }

    /// The record of `origin` rebuilt from what `store` holds of it (after a restart, or
    /// for an origin put in the store where the core did not see it): `None` if it holds
    /// nothing. A store's ranges may under-claim (see `Store::ranges`): the record is
    /// lossy.
    pub(super) fn from_store<S: Store>(store: &S, origin: &OriginKey, now: Micros) -> Option<Self> {
        let r = store.ranges(origin)?;
        Some(match store.delivered(origin) {
            // Delivery resumes at the store's cursor: everything up to it was delivered or
            // skipped (so seen), nothing above it, not even events stored above a gap that
            // was still open.
            Some(cursor) => Self::restored(
                SeqRanges::from_ranges(r.iter().chain((cursor > 0).then_some((1, cursor)))),
                cursor,
                SeqRanges::new(),
                now,
            ),
            // The store does not know: take what it holds as delivered (events that were
            // waiting above a gap are then never delivered; see `Store::delivered`).
            None => {
                let delivered = r.contiguous();
                Self::restored(
                    r.clone(),
                    delivered,
                    SeqRanges::from_ranges(r.iter().filter(|(lo, _)| *lo > delivered)),
                    now,
                )
            }
        })
    }

    /// The sequence numbers accepted.
    pub(super) fn ranges(&self) -> &SeqRanges {
        &self.ranges
    }

    /// Whether the accepted numbers have a hole: a number missing below the highest
    /// (delivery waits there for an event or a Skip).
    pub(super) fn has_hole(&self) -> bool {
        self.ranges.range_count() > usize::from(self.ranges.contiguous() > 0)
    }

    /// Whether `seq` was stored, and so delivered, before a restart (above the cursor the
    /// record was rebuilt with).
    pub(super) fn was_restored(&self, seq: u64) -> bool {
        self.restored.as_ref().is_some_and(|r| r.contains(seq))
    }

    /// Its place in the summary.
    fn term(&self) -> Term {
        match self.term_kind {
            TermKind::Recent => Term::Recent,
            TermKind::Counted => Term::Counted(self.term_hash),
            TermKind::Listed => Term::Listed,
        }
    }

    fn set_term(&mut self, term: Term) {
        (self.term_kind, self.term_hash) = match term {
            Term::Recent => (TermKind::Recent, 0),
            Term::Counted(h) => (TermKind::Counted, h),
            Term::Listed => (TermKind::Listed, 0),
        };
    }

    /// Summarised by anti-entropy requests at `now` (see [`SYNC_SETTLED_US`]): seen ranges
    /// unchanged that long.
    pub(super) fn settled(&self, now: Micros) -> bool {
        self.ranges.range_count() > 0 && now >= self.changed_us.saturating_add(SYNC_SETTLED_US)
    }

    /// Records `seq` as seen at `now`; returns false if it was already.
    fn record(&mut self, seq: u64, now: Micros) -> bool {
        if self.ranges.range_count() >= RANGES_PER_ORIGIN_MAX {
            self.lossy = true;
        }
        let new = self.ranges.insert(seq);
        if new {
            self.note_change(seq, now);
        }
        new
    }

    /// The ranges changed at `now`, from number `first` on: the change time, and the
    /// start of the fresh tail (a new window once the last is [`SYNC_FRESH_US`] old).
    fn note_change(&mut self, first: u64, now: Micros) {
        self.changed_us = now;
        if now.saturating_sub(self.fresh_at) >= SYNC_FRESH_US || self.fresh_from == 0 {
            self.fresh_from = first;
            self.fresh_at = now;
        } else {
            self.fresh_from = self.fresh_from.min(first);
        }
    }

    /// Records every number of `lo..=hi` as seen at `now` (numbers taken as lost: whole
    /// ranges, not number by number); returns the count of numbers before and after, and
    /// whether the ranges changed (at [`RANGES_PER_ORIGIN_MAX`] they can while the count
    /// stays or falls: the insert drops the highest range).
    fn record_range(&mut self, lo: u64, hi: u64, now: Micros) -> (u64, u64, bool) {
        if SeqRanges::from_ranges([(lo, hi)])
            .difference_ranges(self.ranges.as_slice())
            .is_empty()
        {
            let count = self.ranges.count();
            return (count, count, false);
        }
        // As in `record`: at the limit the insert may drop the highest range.
        if self.ranges.range_count() >= RANGES_PER_ORIGIN_MAX {
            self.lossy = true;
        }
        let before = self.ranges.count();
        self.ranges.insert_range(lo, hi);
        let after = self.ranges.count();
        self.note_change(lo, now);
        (before, after, true)
    }
}

/// What [`SeenSet::record`] did.
#[derive(Debug, Clone, Copy)]
pub(super) struct Recorded {
    /// The number was not seen before.
    pub(super) new: bool,
    /// The origin's count of numbers before and after, when its ranges were at
    /// [`RANGES_PER_ORIGIN_MAX`] (the set may then drop a range); `None` otherwise (the
    /// count grew by one if `new`).
    pub(super) counts: Option<(u64, u64)>,
}

/// The ranges an anti-entropy summary counts for an origin: what the node has seen of it
/// (`seen`), joined with what its store holds (`stored`) where that is more (a record
/// rebuilt from the store after a restart, or one that reached [`RANGES_PER_ORIGIN_MAX`],
/// is lossy and may under-claim; an erasure puts numbers in the store's ranges). `None`
/// when the join could reach [`RANGES_PER_ORIGIN_MAX`] (a set that drops ranges cannot
/// vouch for what it dropped): the origin is listed instead, or fails the match.
pub(super) fn summary_ranges<'a>(
    seen: &'a SeqRanges,
    stored: Option<&SeqRanges>,
) -> Option<Cow<'a, SeqRanges>> {
    if seen.range_count() >= RANGES_PER_ORIGIN_MAX {
        return None;
    }
    match stored {
        Some(stored) if !stored.difference_ranges(seen.as_slice()).is_empty() => {
            if seen.range_count() + stored.range_count() >= RANGES_PER_ORIGIN_MAX {
                return None;
            }
            Some(Cow::Owned(SeqRanges::from_ranges(
                seen.iter().chain(stored.iter()),
            )))
        }
        _ => Some(Cow::Borrowed(seen)),
    }
}

/// One origin's term in an anti-entropy summary: SipHash-1-3 under the key (0, 0) of the
/// origin's key, its range count and its ranges (little-endian `u64`s). Specified (and
/// pinned by a test vector): nodes of different builds must compute the same.
pub(super) fn origin_hash(origin: &OriginKey, ranges: &SeqRanges) -> u64 {
    use std::hash::Hasher;
    let mut h = siphasher::sip::SipHasher13::new_with_keys(0, 0);
    // A `write` is of the byte stream however it is cut (SipHash buffers the tail).
    h.write(&origin.0);
    h.write(&(ranges.range_count() as u64).to_le_bytes());
    for (lo, hi) in ranges.iter() {
        h.write(&lo.to_le_bytes());
        h.write(&hi.to_le_bytes());
    }
    h.finish()
}

/// The term `origin` has now, settled: counted with the hash of its
/// [`summary_ranges`], or listed when those cannot be had or it has no ranges.
fn term_of(origin: &OriginKey, seen: &SeqRanges, stored: Option<&SeqRanges>) -> Term {
    if seen.range_count() == 0 {
        return Term::Listed;
    }
    summary_ranges(seen, stored).map_or(Term::Listed, |r| Term::Counted(origin_hash(origin, &r)))
}

impl Summary {
    /// Takes a settled term in.
    fn add(&mut self, origin: OriginKey, term: Term) {
        match term {
            Term::Counted(h) => {
                self.sum = self.sum.wrapping_add(h);
                self.count += 1;
            }
            Term::Listed => {
                self.listed.insert(origin);
            }
            Term::Recent => unreachable!("a recent origin is queued, not added"),
        }
    }

    /// Takes a term out (the origin is about to change state).
    fn remove(&mut self, origin: &OriginKey, term: Term) {
        match term {
            Term::Counted(h) => {
                self.sum = self.sum.wrapping_sub(h);
                self.count -= 1;
            }
            Term::Listed => {
                self.listed.remove(origin);
            }
            Term::Recent => {}
        }
    }
}

impl SeenSet {
    /// Keeps `origin`'s place in [`SeenSet::holed`] after its ranges changed.
    fn note_holes(holed: &mut BTreeSet<OriginKey>, origin: OriginKey, seen: &OriginSeen) {
        if seen.has_hole() {
            holed.insert(origin);
        } else {
            holed.remove(&origin);
        }
    }

    pub(super) fn get(&self, origin: &OriginKey) -> Option<&OriginSeen> {
        self.by_origin.get(origin)
    }

    /// The origin's entry, to move its delivery cursor (its ranges change only through
    /// [`SeenSet::record_range`] and
    /// [`SeenSet::record`]).
    pub(super) fn get_mut(&mut self, origin: &OriginKey) -> Option<&mut OriginSeen> {
        self.by_origin.get_mut(origin)
    }

    /// Records `seq` of `origin` as seen at `now`, adding the origin if new. An origin whose
    /// ranges change becomes recent (listed by requests until it settles again).
    pub(super) fn record(&mut self, origin: OriginKey, seq: u64, now: Micros) -> Recorded {
        // A new origin starts listed (no ranges): in the listed set unless this call makes
        // it recent, so it goes in only then (not in and straight out again).
        let (s, added) = match self.by_origin.entry(origin) {
            std::collections::hash_map::Entry::Occupied(e) => (e.into_mut(), false),
            std::collections::hash_map::Entry::Vacant(e) => {
                self.order.insert(origin);
                (e.insert(OriginSeen::default()), true)
            }
        };
        let before = (s.ranges.range_count() >= RANGES_PER_ORIGIN_MAX).then(|| s.ranges.count());
        let new = s.record(seq, now);
        if new {
            Self::made_recent(&mut self.summary, &mut self.holed, origin, s, now, !added);
        } else if added {
            self.summary.listed.insert(origin);
        }
        Recorded {
            new,
            counts: before.map(|b| (b, s.ranges.count())),
        }
    }

    /// Records every number of `lo..=hi` (`lo` at least 1) of an origin already here as
    /// seen at `now`, as [`SeenSet::record`] does one; returns the origin's count of
    /// numbers before and after and whether its ranges changed (`None`: the origin is not
    /// here).
    pub(super) fn record_range(
        &mut self,
        origin: OriginKey,
        lo: u64,
        hi: u64,
        now: Micros,
    ) -> Option<(u64, u64, bool)> {
        let s = self.by_origin.get_mut(&origin)?;
        let (before, after, changed) = s.record_range(lo, hi, now);
        if changed {
            Self::made_recent(&mut self.summary, &mut self.holed, origin, s, now, true);
        }
        Some((before, after, changed))
    }

    /// Keeps the summary and the holed set in step with an origin whose ranges just
    /// changed at `now`: it is recent (listed by requests until it settles again), out of
    /// the term it had (`held`: it was in the summary already, not just added).
    fn made_recent(
        summary: &mut Summary,
        holed: &mut BTreeSet<OriginKey>,
        origin: OriginKey,
        s: &mut OriginSeen,
        now: Micros,
        held: bool,
    ) {
        Self::note_holes(holed, origin, s);
        let term = s.term();
        s.set_term(Term::Recent);
        if term != Term::Recent {
            if held {
                summary.remove(&origin, term);
            }
            summary.recent.push(Reverse((now, origin)));
        }
    }

    /// Adds the record of an origin rebuilt after a restart ([`OriginSeen::restored`]):
    /// recent from its `changed_us` on. Replaces one already there.
    pub(super) fn restore(&mut self, origin: OriginKey, mut seen: OriginSeen) {
        if let Some(old) = self.by_origin.get(&origin) {
            let term = old.term();
            self.summary.remove(&origin, term);
            if term == Term::Recent {
                self.summary.recent.retain(|Reverse((_, o))| *o != origin);
            }
        }
        seen.set_term(Term::Recent);
        self.summary.recent.push(Reverse((seen.changed_us, origin)));
        self.order.insert(origin);
        Self::note_holes(&mut self.holed, origin, &seen);
        self.by_origin.insert(origin, seen);
    }

    /// Forgets an origin (tests that stage a seen-set).
    #[cfg(test)]
    pub(super) fn remove(&mut self, origin: &OriginKey) -> Option<OriginSeen> {
        self.order.remove(origin);
        self.holed.remove(origin);
        let s = self.by_origin.remove(origin)?;
        self.summary.remove(origin, s.term());
        if s.term() == Term::Recent {
            self.summary.recent.retain(|Reverse((_, o))| o != origin);
        }
        Some(s)
    }

    /// Every entry, in no particular order.
    pub(super) fn values(&self) -> impl Iterator<Item = &OriginSeen> {
        self.by_origin.values()
    }

    /// The entries in key order from `from` on.
    pub(super) fn range_from(
        &self,
        from: std::ops::Bound<OriginKey>,
    ) -> impl Iterator<Item = (&OriginKey, &OriginSeen)> {
        self.order
            .range((from, std::ops::Bound::Unbounded))
            .map(|o| (o, &self.by_origin[o]))
    }

    /// Every entry in key order.
    #[cfg(test)]
    pub(super) fn iter(&self) -> impl Iterator<Item = (&OriginKey, &OriginSeen)> {
        self.range_from(std::ops::Bound::Unbounded)
    }

    /// The entries with a hole in their ranges ([`OriginSeen::has_hole`]), in key order.
    pub(super) fn holed(&self) -> impl Iterator<Item = (&OriginKey, &OriginSeen)> {
        self.holed.iter().map(|o| (o, &self.by_origin[o]))
    }

    /// Whether both halves name the same origins, and the holed ones are those with a hole.
    pub(super) fn consistent(&self) -> bool {
        self.order.len() == self.by_origin.len()
            && self.order.iter().all(|o| self.by_origin.contains_key(o))
            && self
                .by_origin
                .iter()
                .all(|(o, s)| s.has_hole() == self.holed.contains(o))
            && self.holed.iter().all(|o| self.by_origin.contains_key(o))
    }

    /// The core changed what `store` holds of `origin` (an insert or a void): its term is
    /// recomputed if it is settled (a recent origin's is computed when it settles).
    pub(super) fn store_changed<S: Store>(&mut self, origin: &OriginKey, store: &S) {
        if self.summary.stale {
            return;
        }
        let Some(s) = self.by_origin.get_mut(origin) else {
            return;
        };
        if s.term() == Term::Recent {
            return;
        }
        let term = term_of(origin, &s.ranges, store.ranges(origin));
        if term != s.term() {
            self.summary.remove(origin, s.term());
            s.set_term(term);
            self.summary.add(*origin, term);
        }
    }

    /// The store was changed where the core does not see it (the node's `store_mut`):
    /// every settled term is recomputed before the summary is next used.
    pub(super) fn store_changed_elsewhere(&mut self) {
        self.summary.stale = true;
    }

    /// Whether every settled term is to be recomputed before the next use.
    #[cfg(test)]
    pub(super) fn stale(&self) -> bool {
        self.summary.stale
    }

    /// Takes in, as after a restart ([`OriginSeen::from_store`]), every origin `store`
    /// holds that the set lacks, recent from `now`; returns them. A restarted node takes in
    /// its whole store so; [`SeenSet::settle`] what `store_mut` added.
    pub(super) fn take_in<S: Store>(&mut self, store: &S, now: Micros) -> Vec<OriginKey> {
        let mut taken = Vec::new();
        for origin in store.origins() {
            if !self.by_origin.contains_key(&origin)
                && let Some(seen) = OriginSeen::from_store(store, &origin, now)
            {
                self.restore(origin, seen);
                taken.push(origin);
            }
        }
        taken
    }

    /// Brings the summary to `now`: every settled term recomputed if the store changed
    /// elsewhere, and the recent origins unchanged for [`SYNC_SETTLED_US`] settled (their
    /// terms computed). Called before each use of the summary. Returns the origins the set
    /// took in ([`SeenSet::take_in`]) after the store changed elsewhere: an origin put in
    /// where the core did not see it. Without that, neither side of a summarised round
    /// would count it, and a peer lacking it would never be sent it.
    pub(super) fn settle<S: Store>(&mut self, now: Micros, store: &S) -> Vec<OriginKey> {
        let mut gained = Vec::new();
        if self.summary.stale {
            self.summary.stale = false;
            self.summary.sum = 0;
            self.summary.count = 0;
            self.summary.listed.clear();
            for (o, s) in &mut self.by_origin {
                if s.term() != Term::Recent {
                    let term = term_of(o, &s.ranges, store.ranges(o));
                    s.set_term(term);
                    self.summary.add(*o, term);
                }
            }
            gained = self.take_in(store, now);
        }
        while let Some(&Reverse((at, origin))) = self.summary.recent.peek() {
            if now < at.saturating_add(SYNC_SETTLED_US) {
                break;
            }
            self.summary.recent.pop();
            let s = self
                .by_origin
                .get_mut(&origin)
                .expect("a queued origin is in the set");
            if s.changed_us > at {
                // Changed since it was queued: queued again by its last change.
                self.summary.recent.push(Reverse((s.changed_us, origin)));
                continue;
            }
            let term = term_of(&origin, &s.ranges, store.ranges(&origin));
            s.set_term(term);
            self.summary.add(origin, term);
        }
        gained
    }

    /// The origins a summarised request lists (recent and listed ones), in no particular
    /// order, each once. Meaningful after [`SeenSet::settle`].
    pub(super) fn unsummarised(&self) -> impl Iterator<Item = &OriginKey> {
        self.summary
            .recent
            .iter()
            .map(|Reverse((_, o))| o)
            .chain(self.summary.listed.iter())
    }

    /// How many origins are counted, and the sum of their hashes (after
    /// [`SeenSet::settle`]).
    pub(super) fn summary_totals(&self) -> (u64, u64) {
        (self.summary.count, self.summary.sum)
    }

    /// The hash `origin` counts with, if it is counted.
    pub(super) fn counted(&self, origin: &OriginKey) -> Option<u64> {
        match self.by_origin.get(origin)?.term() {
            Term::Counted(h) => Some(h),
            _ => None,
        }
    }

    /// Whether the origins a request's digest leaves out (`listed`: sorted by origin,
    /// each once) give, in what this node has seen or holds of them
    /// ([`summary_ranges`]), the request's summary (`count` origins, hashes summing to
    /// `hash`): then this node holds nothing of them the requester lacks. Costs what is
    /// listed and what is recent here, not what the node has seen. Call
    /// [`SeenSet::settle`] first. `listed` must be sorted by origin without duplicates (the
    /// responder sorts and deduplicates a request's digest first).
    pub(super) fn matches<S: Store>(
        &self,
        listed: &Digest,
        count: u32,
        hash: u64,
        store: &S,
    ) -> bool {
        debug_assert!(!self.summary.stale, "settle before matching");
        debug_assert!(
            listed.windows(2).all(|w| w[0].0 < w[1].0),
            "listed unsorted"
        );
        let (mut n, mut sum) = (self.summary.count, self.summary.sum);
        for (o, _) in listed {
            if let Some(h) = self.counted(o) {
                // Never below zero for a digest without duplicates; saturating so that one
                // with them cannot wrap the count into a false match.
                n = n.saturating_sub(1);
                sum = sum.wrapping_sub(h);
            }
        }
        for o in self.unsummarised() {
            if listed.binary_search_by(|(l, _)| l.cmp(o)).is_ok() {
                continue;
            }
            let s = &self.by_origin[o];
            if s.ranges.range_count() == 0 {
                continue;
            }
            match summary_ranges(&s.ranges, store.ranges(o)) {
                Some(r) => {
                    n += 1;
                    sum = sum.wrapping_add(origin_hash(o, &r));
                }
                None => return false,
            }
        }
        n == u64::from(count) && sum == hash
    }

    /// Checks one origin's summary state against its record and the store at `now`
    /// (`check_invariants` walks a window of origins at a time).
    pub(super) fn check_origin<S: Store>(
        &self,
        origin: &OriginKey,
        s: &OriginSeen,
        now: Micros,
        store: &S,
    ) {
        match s.term() {
            Term::Recent => {}
            Term::Counted(_) | Term::Listed => {
                assert!(
                    s.ranges.range_count() == 0 || s.settled(now),
                    "an unsettled origin is summarised or listed as settled"
                );
                assert_eq!(
                    s.term() == Term::Listed,
                    self.summary.listed.contains(origin),
                    "the listed set out of step"
                );
                if !self.summary.stale {
                    assert_eq!(
                        s.term(),
                        term_of(origin, &s.ranges, store.ranges(origin)),
                        "a settled origin's term out of step with its ranges"
                    );
                }
            }
        }
    }

    /// Checks the whole summary at `now` against the records and the store.
    pub(super) fn check_summary<S: Store>(&self, now: Micros, store: &S) {
        let mut queued: FxHashMap<OriginKey, usize> = FxHashMap::default();
        for Reverse((at, o)) in &self.summary.recent {
            *queued.entry(*o).or_default() += 1;
            let s = self
                .by_origin
                .get(o)
                .expect("a queued origin is in the set");
            assert!(*at <= s.changed_us, "queued after its last change");
        }
        let (mut count, mut sum, mut listed) = (0u64, 0u64, 0usize);
        for (o, s) in &self.by_origin {
            self.check_origin(o, s, now, store);
            match s.term() {
                Term::Recent => {
                    assert_eq!(queued.get(o), Some(&1), "a recent origin not queued once")
                }
                Term::Counted(h) => {
                    count += 1;
                    sum = sum.wrapping_add(h);
                }
                Term::Listed => listed += 1,
            }
            if s.term() != Term::Recent {
                assert!(!queued.contains_key(o), "a settled origin is queued");
            }
        }
        assert_eq!(
            (count, sum, listed),
            (
                self.summary.count,
                self.summary.sum,
                self.summary.listed.len()
            ),
            "summary totals out of step with the terms"
        );
    }

    /// Whether the set holds an entry for every origin `store` holds (true of a node's set
    /// between the core's own changes: every insert records first, a restart takes in
    /// the store, and [`SeenSet::settle`] takes in what `store_mut` added).
    pub(super) fn covers<S: Store>(&self, store: &S) -> bool {
        self.summary.stale
            || store
                .origins()
                .iter()
                .all(|o| self.by_origin.contains_key(o))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::MemStore;
    use proptest::prelude::*;

    fn key(i: u8) -> OriginKey {
        OriginKey([i; 32])
    }

    /// The summary as the walk over every origin computes it at `now` (what the kept
    /// summary replaced): the settled origins that can be summarised, counted and hashed;
    /// every other origin listed, in key order.
    fn walk(set: &SeenSet, now: Micros, store: &MemStore) -> (u64, u64, Vec<OriginKey>) {
        let (mut count, mut sum, mut listed) = (0, 0u64, Vec::new());
        for (o, s) in set.iter() {
            match summary_ranges(s.ranges(), store.ranges(o)).filter(|_| s.settled(now)) {
                Some(r) => {
                    count += 1;
                    sum = sum.wrapping_add(origin_hash(o, &r));
                }
                None => listed.push(*o),
            }
        }
        (count, sum, listed)
    }

    /// The responder's match as the walk computes it: every origin with ranges not
    /// listed, each summarisable, hashing to the request's summary.
    fn walk_matches(
        set: &SeenSet,
        listed: &[OriginKey],
        count: u64,
        sum: u64,
        store: &MemStore,
    ) -> bool {
        let (mut n, mut h) = (0u64, 0u64);
        for (o, s) in set.iter() {
            if listed.contains(o) || s.ranges().range_count() == 0 {
                continue;
            }
            match summary_ranges(s.ranges(), store.ranges(o)) {
                Some(r) => {
                    n += 1;
                    h = h.wrapping_add(origin_hash(o, &r));
                }
                None => return false,
            }
        }
        n == count && h == sum
    }

    fn digest_of(listed: &[OriginKey]) -> Digest {
        listed.iter().map(|o| (*o, Default::default())).collect()
    }

    /// An origin's term is SipHash-1-3 under the key (0, 0) of its key, range count and
    /// ranges, little-endian: pinned, since nodes of different builds must compute the
    /// same, and the same as one hash of the whole byte string.
    #[test]
    fn an_origin_hash_is_pinned() {
        use std::hash::Hasher;
        let ranges = SeqRanges::from_ranges([(1, 5), (9, 9)]);
        let h = origin_hash(&key(7), &ranges);
        let mut bytes = vec![7u8; 32];
        for v in [2u64, 1, 5, 9, 9] {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        let mut whole = siphasher::sip::SipHasher13::new_with_keys(0, 0);
        whole.write(&bytes);
        assert_eq!(h, whole.finish());
        assert_eq!(h, 10_107_157_288_475_681_431);
        assert_ne!(h, origin_hash(&key(8), &ranges), "the key is hashed");
    }

    /// An origin is recent (listed) for SYNC_SETTLED_US after its last change, then
    /// counted; a change takes it out of the sum again.
    #[test]
    fn origins_settle_into_the_sum_and_leave_it_on_a_change() {
        let store = MemStore::new(16);
        let mut set = SeenSet::default();
        set.record(key(1), 1, 0);
        set.record(key(2), 1, 10);
        set.settle(SYNC_SETTLED_US - 1, &store);
        assert_eq!(set.summary_totals(), (0, 0));
        assert_eq!(set.unsummarised().count(), 2);
        set.settle(SYNC_SETTLED_US, &store);
        let one = origin_hash(&key(1), &SeqRanges::from_ranges([(1, 1)]));
        assert_eq!(set.summary_totals(), (1, one));
        assert_eq!(set.counted(&key(1)), Some(one));
        assert_eq!(set.unsummarised().copied().collect::<Vec<_>>(), [key(2)]);
        // A change after it was queued: it settles by its last change, not its first.
        set.record(key(2), 2, 20);
        set.settle(SYNC_SETTLED_US + 10, &store);
        assert_eq!(set.summary_totals().0, 1);
        set.settle(SYNC_SETTLED_US + 20, &store);
        assert_eq!(set.summary_totals().0, 2);
        // A counted origin that changes leaves the sum.
        set.record(key(1), 2, SYNC_SETTLED_US + 30);
        let two = origin_hash(&key(2), &SeqRanges::from_ranges([(1, 2)]));
        assert_eq!(set.summary_totals(), (1, two));
        assert_eq!(set.counted(&key(1)), None);
        // Seen again: no change, still counted.
        set.record(key(2), 1, SYNC_SETTLED_US + 40);
        assert_eq!(set.counted(&key(2)), Some(two));
        set.check_summary(SYNC_SETTLED_US + 40, &store);
    }

    /// A range recorded whole counts its new numbers and says whether the ranges changed:
    /// a range already held changes nothing; at the range limit a new range can change them
    /// while the count stays (the highest range is dropped for it), which its caller must
    /// still act on (delivery may move on); and a counted origin leaves the sum as with
    /// `record`.
    #[test]
    fn a_range_recorded_whole_says_what_it_changed() {
        let store = MemStore::new(16);
        let mut set = SeenSet::default();
        set.record(key(1), 1, 0);
        assert_eq!(
            set.record_range(key(1), 2, 1_000_000, 5),
            Some((1, 1_000_000, true))
        );
        assert_eq!(set.get(&key(1)).unwrap().ranges().contiguous(), 1_000_000);
        assert_eq!(
            set.record_range(key(1), 10, 20, 6),
            Some((1_000_000, 1_000_000, false))
        );
        assert_eq!(
            set.record_range(key(9), 1, 2, 7),
            None,
            "an origin not here"
        );
        set.settle(SYNC_SETTLED_US + 6, &store);
        assert!(set.counted(&key(1)).is_some());
        // At the limit: 1024 ranges of one number, four apart.
        for i in 0..RANGES_PER_ORIGIN_MAX as u64 {
            set.record(key(2), 1 + 4 * i, 10);
        }
        let full = set.get(&key(2)).unwrap().ranges().count();
        let (before, after, changed) = set.record_range(key(2), 3, 3, 11).unwrap();
        assert_eq!((before, after, changed), (full, full, true));
        assert!(set.get(&key(2)).unwrap().ranges().contains(3));
        // A change takes a counted origin out of the sum.
        set.record_range(key(1), 1_000_001, 1_000_002, SYNC_SETTLED_US + 7);
        assert_eq!(set.counted(&key(1)), None);
        assert!(set.consistent());
    }

    /// An origin at the range limit cannot be vouched for: listed once settled, and a
    /// responder holding one unlisted fails the match.
    #[test]
    fn an_origin_at_the_range_limit_is_listed_and_fails_a_match() {
        let store = MemStore::new(16);
        let mut set = SeenSet::default();
        for i in 0..RANGES_PER_ORIGIN_MAX as u64 {
            set.record(key(1), 2 * i + 1, 0);
        }
        set.record(key(2), 1, 0);
        set.settle(SYNC_SETTLED_US, &store);
        assert_eq!(set.counted(&key(1)), None);
        assert_eq!(set.unsummarised().copied().collect::<Vec<_>>(), [key(1)]);
        let (count, sum) = set.summary_totals();
        assert_eq!(count, 1);
        assert!(!set.matches(&digest_of(&[]), 1, sum, &store));
        assert!(set.matches(&digest_of(&[key(1)]), 1, sum, &store));
        set.check_summary(SYNC_SETTLED_US, &store);
    }

    /// What the store holds beyond what was seen is in an origin's term: a change the
    /// core makes is taken in at once, one made elsewhere before the next use.
    #[test]
    fn the_store_changes_a_settled_term() {
        let mut store = MemStore::new(16);
        let mut set = SeenSet::default();
        set.record(key(1), 1, 0);
        set.settle(SYNC_SETTLED_US, &store);
        let seen_only = set.summary_totals();
        // The core erases a number it has not seen (an erasure puts it in the ranges).
        store.erase(key(1), 3);
        set.store_changed(&key(1), &store);
        let joined = origin_hash(&key(1), &SeqRanges::from_ranges([(1, 1), (3, 3)]));
        assert_eq!(set.summary_totals(), (1, joined));
        set.check_summary(SYNC_SETTLED_US, &store);
        // Elsewhere (the node's `store_mut`): recomputed when next settled.
        store.erase(key(1), 5);
        set.store_changed_elsewhere();
        set.settle(SYNC_SETTLED_US, &store);
        let again = origin_hash(&key(1), &SeqRanges::from_ranges([(1, 1), (3, 3), (5, 5)]));
        assert_eq!(set.summary_totals(), (1, again));
        assert_ne!(seen_only, set.summary_totals());
        set.check_summary(SYNC_SETTLED_US, &store);
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// Record a number of an origin.
        Record(u8, u64),
        /// Time passes.
        Advance(Micros),
        /// The core changes what the store holds of an origin.
        StoreHere(u8, u64),
        /// The store is changed elsewhere.
        StoreElsewhere(u8, u64),
        /// A request listing these origins (bit i: origin i) is matched.
        Match(u8),
        /// Every other number from this one on, past the range limit: the origin's seen
        /// ranges reach [`RANGES_PER_ORIGIN_MAX`] and drop their highest.
        Burst(u8, u64),
        /// The same in the store (the core's change, or one elsewhere): the store's
        /// ranges, and the join of both, reach the limit.
        StoreBurst(u8, u64, bool),
        /// The origin is rebuilt as after a restart (`OriginSeen::restored`): what the
        /// store holds of it and 1..=n, delivered up to d.
        Restore(u8, u64, u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u8..6, 1u64..30).prop_map(|(o, s)| Op::Record(o, s)),
            3 => (0u64..20_000_000).prop_map(Op::Advance),
            1 => (0u8..6, 1u64..30).prop_map(|(o, s)| Op::StoreHere(o, s)),
            1 => (0u8..6, 1u64..30).prop_map(|(o, s)| Op::StoreElsewhere(o, s)),
            2 => any::<u8>().prop_map(Op::Match),
            1 => (0u8..6, 1u64..40).prop_map(|(o, s)| Op::Burst(o, s)),
            1 => (0u8..6, 1u64..40, any::<bool>()).prop_map(|(o, s, h)| Op::StoreBurst(o, s, h)),
            1 => (0u8..6, 0u64..30, 0u64..30).prop_map(|(o, n, d)| Op::Restore(o, n, d)),
        ]
    }

    /// `from`, `from + 2`, ... : one range each, past the range limit.
    fn spread(from: u64) -> impl Iterator<Item = u64> {
        (0..RANGES_PER_ORIGIN_MAX as u64 + 3).map(move |i| from + 2 * i)
    }

    proptest! {
        /// The kept summary is at every step what the walk over every origin computes:
        /// the same count and sum, the same origins listed, and a responder's match the
        /// same for requests that list any origins, with its own summary or another's; so
        /// are the holed origins.
        #[test]
        fn the_kept_summary_is_the_walks(ops in proptest::collection::vec(op(), 1..80)) {
            let mut store = MemStore::new(64);
            let mut set = SeenSet::default();
            let mut now: Micros = 0;
            // A second node's set, for requests with a summary of its own.
            let mut other = SeenSet::default();
            for (i, op) in ops.into_iter().enumerate() {
                match op {
                    Op::Record(o, s) => {
                        set.record(key(o), s, now);
                        if i % 3 != 0 {
                            other.record(key(o), s, now);
                        }
                    }
                    Op::Advance(d) => now += d,
                    Op::StoreHere(o, s) => {
                        store.erase(key(o), s);
                        set.store_changed(&key(o), &store);
                    }
                    Op::StoreElsewhere(o, s) => {
                        store.erase(key(o), s);
                        set.store_changed_elsewhere();
                    }
                    Op::Burst(o, from) => {
                        for seq in spread(from) {
                            set.record(key(o), seq, now);
                        }
                    }
                    Op::StoreBurst(o, from, here) => {
                        for seq in spread(from) {
                            store.erase(key(o), seq);
                        }
                        if here {
                            set.store_changed(&key(o), &store);
                        } else {
                            set.store_changed_elsewhere();
                        }
                    }
                    Op::Restore(o, n, d) => {
                        let mut ranges = store.ranges(&key(o)).cloned().unwrap_or_default();
                        for seq in 1..=n {
                            ranges.insert(seq);
                        }
                        let seen = OriginSeen::restored(ranges, d.min(n), SeqRanges::new(), now);
                        set.restore(key(o), seen);
                    }
                    Op::Match(bits) => {
                        set.settle(now, &store);
                        let listed: Vec<OriginKey> =
                            (0..6).filter(|b| bits & (1 << b) != 0).map(key).collect();
                        let empty = MemStore::new(1);
                        other.settle(now, &empty);
                        let (oc, os) = other.summary_totals();
                        let (mc, ms) = set.summary_totals();
                        for (count, sum) in [(oc, os), (mc, ms)] {
                            prop_assert_eq!(
                                set.matches(&digest_of(&listed), count as u32, sum, &store),
                                walk_matches(&set, &listed, count, sum, &store)
                            );
                        }
                    }
                }
                set.settle(now, &store);
                let (count, sum, listed) = walk(&set, now, &store);
                prop_assert_eq!(set.summary_totals(), (count, sum));
                let mut unsummarised: Vec<OriginKey> = set.unsummarised().copied().collect();
                unsummarised.sort();
                prop_assert_eq!(unsummarised, listed);
                set.check_summary(now, &store);
                // The holed origins kept apart are those a walk finds with a range after
                // the first gap (the rule anti-entropy's repair turn used to walk for).
                let walked: Vec<OriginKey> = set
                    .iter()
                    .filter(|(_, s)| {
                        let first_gap = usize::from(s.ranges().contiguous() > 0);
                        s.ranges().iter().nth(first_gap).is_some()
                    })
                    .map(|(o, _)| *o)
                    .collect();
                let kept: Vec<OriginKey> = set.holed().map(|(o, _)| *o).collect();
                prop_assert_eq!(kept, walked);
                prop_assert!(set.consistent());
            }
        }
    }

    /// A node of a 1000-node mesh holds a thousand of these records (and as many of the
    /// store's): their size is most of a simulation's memory once events flow.
    #[cfg(target_pointer_width = "64")]
    #[test]
    fn an_origin_record_stays_within_eighty_bytes() {
        assert!(
            std::mem::size_of::<OriginSeen>() <= 80,
            "{}",
            std::mem::size_of::<OriginSeen>()
        );
    }
}
