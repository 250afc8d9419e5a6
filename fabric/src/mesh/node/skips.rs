//! Skips: numbers a node will never get (not for it, voided or erased), and the bookkeeping of
//! Skips taken on another node's word until a second node confirms them or the event
//! contradicts them.

use std::sync::Arc;

use super::{
    AppEvent, LOST_OPEN_US, LOST_ORIGINS_MAX, LOST_RANGES_PER_ROUND_MAX, LOST_WAIT_US, LostOpen,
    LostWait, Node, Passed, REFS_PER_MESSAGE_MAX, SKIP_CONFIRM_US, UNCONFIRMED_LEN_MAX,
    UNCONFIRMED_PER_SENDER_MAX, Unconfirmed,
};
use crate::envelope::{Event, OriginKey};
use crate::mesh::message::Message;
use crate::mesh::ranges::{RANGES_PER_ORIGIN_MAX, SeqRanges};
use crate::mesh::store::{Inserted, Store, StoreError};

impl<S: Store> Node<S> {
    /// Skips for erased events `peer` asked for: origin and sequence number only, like a
    /// residency Skip, so the peer's ordered delivery moves on.
    pub(super) fn send_erased_skips(&mut self, peer: OriginKey, erased: &[(OriginKey, u64)]) {
        self.stats.erased_skips_sent += erased.len() as u64;
        for chunk in erased.chunks(REFS_PER_MESSAGE_MAX) {
            self.send(peer, Message::Skip(chunk.to_vec()));
        }
    }

    /// A Skip names only an origin and a sequence number (so that a node outside the
    /// event's residency learns nothing of it), so its receiver cannot check it against the
    /// event. The origin's word on its own numbers is final. Another node's word (a relay, an
    /// anti-entropy partner, a node that erased the event, the node a device publishes
    /// through) moves delivery on at once, but the number waits in `unconfirmed`: digests
    /// leave it out, so anti-entropy partners answer for it again. A Skip from a second node
    /// (or the origin) confirms it; the event itself, where this node may hold it,
    /// contradicts it and is delivered late ([`AppEvent::Late`]); after
    /// [`SKIP_CONFIRM_US`] with neither it is final. A lying node alone therefore cannot make
    /// another pass over events for good while an honest holder of them is reachable.
    pub(super) fn on_skip(&mut self, from: OriginKey, list: Vec<(OriginKey, u64)>) {
        let mut relayed = 0;
        for (origin, seq) in list.into_iter().take(REFS_PER_MESSAGE_MAX) {
            if let Some(waiting) = self.unconfirmed_get(&origin, seq) {
                if waiting.by != from {
                    self.unconfirmed_take(&origin, seq);
                    self.stats.skips_confirmed += 1;
                }
                continue;
            }
            if origin == from {
                if self.skip_own(origin, seq) {
                    self.stats.skips_in += 1;
                }
                continue;
            }
            if seq == 0 || origin == self.me.node_key() || self.has_seen(&origin, seq) {
                continue;
            }
            let on_word = self.unconfirmed_by.get(&from).copied().unwrap_or(0);
            if on_word >= UNCONFIRMED_PER_SENDER_MAX || self.unconfirmed_len >= UNCONFIRMED_LEN_MAX
            {
                self.stats.skips_deferred += 1;
                continue;
            }
            // At the seen-set's range limit a number may not be recorded (the set drops its
            // highest range): nothing then waits for it.
            if self.skip_own(origin, seq) && self.has_seen(&origin, seq) {
                self.unconfirmed_put(
                    origin,
                    seq,
                    Unconfirmed {
                        by: from,
                        at: self.now,
                    },
                );
                self.stats.skips_in += 1;
                relayed += 1;
            }
        }
        if relayed > 0 {
            self.stats.skips_in_relayed += relayed;
            if self.members.contains_key(&from) {
                self.peers.entry(from).or_default().skips_taken += relayed;
            }
        }
    }

    /// [`Message::Lost`] from `from`: numbers of its own its store no longer holds. Those
    /// this node lacks, up to the highest `from` is known to have reached
    /// ([`Node::reached`]: an origin cannot have lost what it never published), wait
    /// [`LOST_WAIT_US`] for another holder's copy ([`Node::take_lost`]); a later word
    /// adds numbers but not time.
    pub(super) fn on_lost(&mut self, from: OriginKey, ranges: Vec<(u64, u64)>) {
        if from == self.me.node_key() {
            return;
        }
        let reached = self.reached(&from);
        let named = SeqRanges::from_ranges(
            ranges
                .into_iter()
                .take(RANGES_PER_ORIGIN_MAX)
                .map(|(lo, hi)| (lo, hi.min(reached))),
        );
        let seen = self
            .seen
            .get(&from)
            .map_or(&[][..], |s| s.ranges().as_slice());
        let lacking = named.difference_ranges(seen);
        if lacking.is_empty() {
            return;
        }
        if !self.lost.contains_key(&from) && self.lost.len() >= LOST_ORIGINS_MAX {
            self.stats.lost_deferred += 1;
            return;
        }
        let now = self.now;
        let wait = self.lost.entry(from).or_insert_with(|| LostWait {
            ranges: SeqRanges::new(),
            since: now,
        });
        let before = SeqRanges::covered(wait.ranges.as_slice());
        wait.ranges = SeqRanges::from_ranges(wait.ranges.iter().chain(lacking));
        self.stats.lost_in = self
            .stats
            .lost_in
            .saturating_add(SeqRanges::covered(wait.ranges.as_slice()).saturating_sub(before));
    }

    /// Numbers their origins said they no longer hold that waited [`LOST_WAIT_US`] without
    /// a holder's copy arriving: taken as seen, as the origin's own Skip for them would be,
    /// so per-origin delivery moves on to the origin's later events, whole ranges at a time.
    /// At most [`LOST_RANGES_PER_ROUND_MAX`] ranges a call (the rest wait for the next);
    /// called at every anti-entropy round.
    pub(super) fn take_lost(&mut self) {
        self.note_own_gaps();
        let now = self.now;
        let dirty = &mut self.lost_open_dirty;
        self.lost_open.retain(|origin, open| {
            let keep = open.until > now;
            if !keep {
                dirty.insert(*origin);
            }
            keep
        });
        self.take_lost_due();
        self.keep_lost_open();
    }

    /// The store keeps the open numbers of every origin whose entry changed since the last
    /// call ([`Store::set_lost_open`]). Once a round: a number closed by its copy and not
    /// kept yet when the node stops is reloaded open, and its copy, arriving again, is a
    /// duplicate.
    fn keep_lost_open(&mut self) {
        for origin in std::mem::take(&mut self.lost_open_dirty) {
            let ranges = self
                .lost_open
                .get(&origin)
                .map_or(&[][..], |o| o.ranges.as_slice());
            self.store.set_lost_open(&origin, ranges);
        }
    }

    /// The part of [`Node::take_lost`] that takes the numbers whose wait is over.
    fn take_lost_due(&mut self) {
        let now = self.now;
        if self.lost.is_empty() {
            return;
        }
        let due: Vec<OriginKey> = self
            .lost
            .iter()
            .filter(|(_, w)| now.saturating_sub(w.since) >= LOST_WAIT_US)
            .map(|(o, _)| *o)
            .collect();
        let mut budget = LOST_RANGES_PER_ROUND_MAX;
        for origin in due {
            let Some(wait) = self.lost.remove(&origin) else {
                continue;
            };
            let seen = |node: &Self| {
                node.seen
                    .get(&origin)
                    .map_or(&[][..], |s| s.ranges().as_slice())
                    .to_vec()
            };
            let missing = wait.ranges.difference_ranges(&seen(self));
            let (mut taken, mut changed) = (0, false);
            let mut opened = Vec::new();
            for (lo, hi) in missing {
                if budget == 0 {
                    break;
                }
                budget -= 1;
                // Whole ranges at once (a hole can span billions of numbers: a member's
                // word moved a restarted origin's numbering far on), this node's own
                // numbers too (`note_own_gaps`), which `skip_own` refuses.
                let (new, moved) = self.note_seen_range(origin, lo.max(1), hi);
                taken += new;
                changed |= moved;
                opened.push((lo.max(1), hi));
            }
            self.stats.lost_skipped = self.stats.lost_skipped.saturating_add(taken);
            if origin == self.me.node_key() {
                for &(lo, hi) in &opened {
                    self.own_gone.insert_range(lo, hi);
                }
            }
            self.lost_open_ranges(origin, &opened);
            if changed {
                // Also when none is counted new: at the range limit the set may drop its
                // highest range for this one, and delivery can still move on.
                self.advance_delivery(origin);
            }
            let left = wait.ranges.difference_ranges(&seen(self));
            if !left.is_empty() {
                self.lost.insert(
                    origin,
                    LostWait {
                        ranges: SeqRanges::from_ranges(left),
                        since: wait.since,
                    },
                );
            }
        }
    }

    /// This node's own numbers below the highest it has seen that it neither holds nor has
    /// seen (it restarted without its store, and no holder sent them back yet): its own
    /// delivery waits on them as its peers' does. Noted once as a Lost word of its own, and
    /// taken as seen after [`LOST_WAIT_US`] like its peers take it (before, its own new
    /// events were never delivered here).
    fn note_own_gaps(&mut self) {
        let me = self.me.node_key();
        if self.lost.contains_key(&me) || self.lost.len() >= LOST_ORIGINS_MAX {
            return;
        }
        let Some(seen) = self.seen.get(&me).filter(|s| s.has_hole()) else {
            return;
        };
        let ranges = seen.ranges().holes();
        if ranges.range_count() == 0 {
            return;
        }
        self.stats.lost_in = self
            .stats
            .lost_in
            .saturating_add(SeqRanges::covered(ranges.as_slice()));
        let since = self.now;
        self.lost.insert(me, LostWait { ranges, since });
    }

    /// How many numbers origins said they no longer hold wait here for a holder's copy
    /// ([`Node::on_lost`]).
    pub fn lost_pending(&self) -> u64 {
        self.lost
            .values()
            .map(|w| SeqRanges::covered(w.ranges.as_slice()))
            .fold(0u64, u64::saturating_add)
    }

    /// Keeps `ranges` of `origin`, just taken as lost, open to a holder's copy for
    /// [`LOST_OPEN_US`] from now (the origin's earlier open numbers with them).
    fn lost_open_ranges(&mut self, origin: OriginKey, ranges: &[(u64, u64)]) {
        if ranges.is_empty() {
            return;
        }
        if !self.lost_open.contains_key(&origin) && self.lost_open.len() >= LOST_ORIGINS_MAX {
            self.stats.lost_closed_at_once += SeqRanges::covered(ranges);
            return;
        }
        let until = self.now.saturating_add(LOST_OPEN_US);
        let open = self.lost_open.entry(origin).or_insert_with(|| LostOpen {
            ranges: SeqRanges::new(),
            until,
        });
        // At RANGES_PER_ORIGIN_MAX ranges the highest goes: those numbers close early.
        let before =
            SeqRanges::covered(open.ranges.as_slice()).saturating_add(SeqRanges::covered(ranges));
        open.ranges = SeqRanges::from_ranges(open.ranges.iter().chain(ranges.iter().copied()));
        open.until = until;
        let kept = SeqRanges::covered(open.ranges.as_slice());
        self.stats.lost_closed_at_once += before.saturating_sub(kept);
        self.lost_open_dirty.insert(origin);
    }

    /// Reloads the numbers the store kept open to a late copy ([`Store::lost_open`]) after
    /// a restart. Their window starts again now, as waiting Skips' confirmation time does
    /// (the node's clock does not survive a restart). Only numbers the rebuilt seen-set
    /// holds stay open (anti-entropy asks for the others again, as for any gap); an origin
    /// past [`LOST_ORIGINS_MAX`] is closed and counted in `lost_closed_at_once`.
    pub(super) fn reload_lost_open(&mut self) {
        for (origin, kept) in self.store.lost_open() {
            let seen = self
                .seen
                .get(&origin)
                .map_or(&[][..], |s| s.ranges().as_slice());
            let kept_set = SeqRanges::from_ranges(kept.iter().copied());
            // Kept and seen: kept less what of it is not seen.
            let unseen = kept_set.difference_ranges(seen);
            let open = kept_set.difference_ranges(&unseen).to_vec();
            let room = self.lost_open.len() < LOST_ORIGINS_MAX;
            if open.is_empty() || !room {
                self.stats.lost_closed_at_once += SeqRanges::covered(&open);
                self.store.set_lost_open(&origin, &[]);
                continue;
            }
            if open != kept {
                self.store.set_lost_open(&origin, &open);
            }
            // Its own numbers among them need no more: a node that stores its own events
            // names the holes of its store as lost ([`Node::own_lost`]), and one that stores
            // none rebuilds no seen-set of its own origin, so none of them is reloaded.
            self.lost_open.insert(
                origin,
                LostOpen {
                    ranges: SeqRanges::from_ranges(open),
                    until: self.now.saturating_add(LOST_OPEN_US),
                },
            );
        }
    }

    /// Puts `(origin, seq)` back among the numbers open to a late copy (its copy came but
    /// the store refused it).
    fn lost_open_put(&mut self, origin: OriginKey, seq: u64) {
        self.lost_open_ranges(origin, &[(seq, seq)]);
    }

    /// Whether `(origin, seq)` was taken as lost and is still open to a late copy; if so it
    /// is closed (its copy has come).
    pub(super) fn lost_open_take(&mut self, origin: &OriginKey, seq: u64) -> bool {
        if self.lost_open.is_empty() {
            return false;
        }
        let Some(open) = self.lost_open.get_mut(origin) else {
            return false;
        };
        if !open.ranges.remove(seq) {
            return false;
        }
        self.lost_open_dirty.insert(*origin);
        if open.ranges.range_count() == 0 {
            self.lost_open.remove(origin);
        }
        true
    }

    /// How many numbers taken as lost are still open to a holder's copy ([`LOST_OPEN_US`]).
    pub fn lost_open(&self) -> u64 {
        self.lost_open
            .values()
            .map(|o| SeqRanges::covered(o.ranges.as_slice()))
            .fold(0u64, u64::saturating_add)
    }

    /// Whether this node has seen `origin`'s number `seq` (stored, relayed, skipped, erased
    /// or taken as lost): another event under it would be dropped here as a duplicate, or
    /// named as an equivocation where the held one can be compared. A seen-set that reached
    /// its range limit may under-claim. The simulator asks it when an origin reuses a number.
    pub fn has_seen(&self, origin: &OriginKey, seq: u64) -> bool {
        self.seen
            .get(origin)
            .is_some_and(|s| s.ranges().contains(seq))
    }

    pub(super) fn unconfirmed_get(&self, origin: &OriginKey, seq: u64) -> Option<Unconfirmed> {
        if self.unconfirmed_len == 0 {
            return None;
        }
        self.unconfirmed.get(origin)?.get(&seq).copied()
    }

    /// Puts `(origin, seq)` among the Skips waiting for confirmation (not there yet), in
    /// memory and in the store (so that a restart keeps it waiting).
    fn unconfirmed_put(&mut self, origin: OriginKey, seq: u64, u: Unconfirmed) {
        if self.unconfirmed_note(origin, seq, u) {
            self.store.put_waiting_skip(&origin, seq, &u.by);
        }
    }

    /// [`Node::unconfirmed_put`] in memory only; whether the entry is new.
    fn unconfirmed_note(&mut self, origin: OriginKey, seq: u64, u: Unconfirmed) -> bool {
        let new = self
            .unconfirmed
            .entry(origin)
            .or_default()
            .insert(seq, u)
            .is_none();
        if new {
            self.unconfirmed_len += 1;
            *self.unconfirmed_by.entry(u.by).or_default() += 1;
        }
        new
    }

    /// Reloads the Skips the store kept waiting ([`Store::waiting_skips`]) after a
    /// restart. Their confirmation time starts again now (the node's clock does not
    /// survive a restart). An entry whose number the rebuilt seen-set lacks (above the
    /// restored delivery cursor: anti-entropy asks for it again) or beyond the quotas is
    /// dropped from the store.
    pub(super) fn reload_waiting_skips(&mut self) {
        let me = self.me.node_key();
        for (origin, seq, by) in self.store.waiting_skips() {
            let keep = seq > 0
                && origin != me
                && origin != by
                && self.has_seen(&origin, seq)
                && self.unconfirmed_len < UNCONFIRMED_LEN_MAX
                && self.unconfirmed_by.get(&by).copied().unwrap_or(0) < UNCONFIRMED_PER_SENDER_MAX;
            let at = self.now;
            if !(keep && self.unconfirmed_note(origin, seq, Unconfirmed { by, at })) {
                self.stats.skips_dropped_at_restart += 1;
                self.store.take_waiting_skip(&origin, seq);
            }
        }
    }

    /// Removes `(origin, seq)` from the Skips waiting for confirmation.
    pub(super) fn unconfirmed_take(&mut self, origin: &OriginKey, seq: u64) -> Option<Unconfirmed> {
        if self.unconfirmed_len == 0 {
            return None;
        }
        let of_origin = self.unconfirmed.get_mut(origin)?;
        let taken = of_origin.remove(&seq)?;
        if of_origin.is_empty() {
            self.unconfirmed.remove(origin);
        }
        self.store.take_waiting_skip(origin, seq);
        self.unconfirmed_len -= 1;
        self.unconfirmed_by_dec(&taken.by, 1);
        Some(taken)
    }

    fn unconfirmed_by_dec(&mut self, by: &OriginKey, n: usize) {
        if let Some(count) = self.unconfirmed_by.get_mut(by) {
            *count -= n;
            if *count == 0 {
                self.unconfirmed_by.remove(by);
            }
        }
    }

    /// The highest sequence number `origin` is known to have reached: the highest this
    /// node has seen other than on a word still waiting for confirmation (an event, the
    /// origin's own Skip, a confirmed or expired Skip, which expired only at or below such
    /// a number). 0 if none.
    fn reached(&self, origin: &OriginKey) -> u64 {
        let Some(seen) = self.seen.get(origin) else {
            return 0;
        };
        let waiting = self.unconfirmed.get(origin);
        for &(lo, hi) in seen.ranges().as_slice().iter().rev() {
            let mut q = hi;
            loop {
                if !waiting.is_some_and(|w| w.contains_key(&q)) {
                    return q;
                }
                if q == lo {
                    break;
                }
                q -= 1;
            }
        }
        0
    }

    /// Skips that waited [`SKIP_CONFIRM_US`] for confirmation become final, if their origin
    /// is known to have passed their number ([`Node::reached`]). A Skip for a number the
    /// origin has not reached keeps waiting: when the origin publishes it, the event comes
    /// and contradicts it (otherwise a lie about numbers not yet published would expire
    /// into a gap no event fills).
    pub(super) fn expire_unconfirmed(&mut self) {
        if self.unconfirmed_len == 0 {
            return;
        }
        let now = self.now;
        let origins: Vec<OriginKey> = self.unconfirmed.keys().copied().collect();
        for origin in origins {
            let reached = self.reached(&origin);
            let Some(waiting) = self.unconfirmed.get_mut(&origin) else {
                continue;
            };
            let mut expired: Vec<(u64, OriginKey)> = Vec::new();
            waiting.retain(|&seq, u| {
                let keep = seq > reached || now.saturating_sub(u.at) < SKIP_CONFIRM_US;
                if !keep {
                    expired.push((seq, u.by));
                }
                keep
            });
            if waiting.is_empty() {
                self.unconfirmed.remove(&origin);
            }
            self.unconfirmed_len -= expired.len();
            self.stats.skips_unconfirmed += expired.len() as u64;
            for (seq, by) in expired {
                self.unconfirmed_by_dec(&by, 1);
                self.store.take_waiting_skip(&origin, seq);
            }
        }
    }

    /// An event arrived that this node may not hold (refused, or carried as sealed
    /// transit): a Skip waiting for confirmation of its number was right.
    pub(super) fn confirmed_by_event(&mut self, origin: &OriginKey, seq: u64) {
        if self.unconfirmed_take(origin, seq).is_some() {
            self.stats.skips_confirmed += 1;
        }
    }

    /// An event arrived whose number this node had moved past without it, and this node
    /// may hold it (the caller checked its own hop): a Skip taken on `waiting.by`'s word
    /// (not its origin's), which the event contradicts unless the store finds it erased
    /// here (then the Skip was right) or already held; or a number taken as lost
    /// ([`Passed::Lost`], [`Node::take_lost`]), whose copy a holder kept. The event is
    /// stored and delivered now, out of per-origin order ([`AppEvent::Late`],
    /// [`AppEvent::Recovered`]), or in order if delivery had not reached it yet. A
    /// contradiction is reported ([`AppEvent::SkipContradicted`]) and counted against the
    /// sender. A store error puts the number back to wait, so it is asked for again.
    #[inline(never)]
    pub(super) fn accept_late(
        &mut self,
        event: Arc<Event>,
        passed: Passed,
    ) -> Result<Inserted, StoreError> {
        let id = event.id();
        let (origin, seq) = (event.origin(), event.seq());
        let interested = self.interested(event.stream());
        // This node's own events are stored whatever its interest, delivered only if it
        // names them (`Node::stores`).
        let stored = self.stores(&event);
        if stored {
            let inserted = self.store.insert(event.clone());
            self.seen.store_changed(&origin, &self.store);
            match inserted {
                Ok(Inserted::New) => {}
                Ok(Inserted::Duplicate) => {
                    self.stats.events_duplicate += 1;
                    self.arrived(&id);
                    return Ok(Inserted::Duplicate);
                }
                Ok(Inserted::Erased) => {
                    // Erased here too: for a Skip (an erased Skip), it was right.
                    self.stats.events_erased += 1;
                    if let Passed::Skip(_) = passed {
                        self.stats.skips_confirmed += 1;
                    }
                    self.arrived(&id);
                    return Ok(Inserted::Erased);
                }
                Err(e) => {
                    self.stats.events_refused += 1;
                    match passed {
                        Passed::Skip(waiting) => self.unconfirmed_put(origin, seq, waiting),
                        Passed::Lost => self.lost_open_put(origin, seq),
                    }
                    return Err(e);
                }
            }
        } else {
            if self.relay_cache.contains_key(&id) {
                self.stats.events_duplicate += 1;
                self.arrived(&id);
                return Ok(Inserted::Duplicate);
            }
            self.relay_keep(id, event.clone());
        }
        match passed {
            Passed::Skip(waiting) => {
                self.stats.skips_contradicted += 1;
                if self.members.contains_key(&waiting.by) {
                    self.peers.entry(waiting.by).or_default().skips_contradicted += 1;
                }
                self.app.push_back(AppEvent::SkipContradicted {
                    event: event.clone(),
                    skipped_by: waiting.by,
                });
            }
            Passed::Lost => self.stats.lost_recovered += 1,
        }
        if stored {
            if self.seen.get(&origin).is_some_and(|s| s.delivered >= seq) {
                // Stored only (this node's own event outside its interest): not delivered.
                if interested {
                    self.stats.delivered += 1;
                    self.app.push_back(match passed {
                        Passed::Skip(_) => {
                            self.stats.delivered_late += 1;
                            AppEvent::Late(event)
                        }
                        Passed::Lost => AppEvent::Recovered(event),
                    });
                }
            } else {
                // Delivery has not passed it yet (a gap below): it goes out in order.
                self.advance_delivery(origin);
            }
        }
        self.stats.events_new += 1;
        self.arrived(&id);
        Ok(Inserted::New)
    }

    /// How many Skips this node took from `peer` for events of other origins since it started
    /// ([`super::Stats::skips_in_relayed`], per sender; only members are counted).
    pub fn skips_taken_from(&self, peer: &OriginKey) -> u64 {
        self.peers.get(peer).map_or(0, |p| p.skips_taken)
    }

    /// How many of the Skips this node took from `peer` an event then contradicted
    /// ([`super::Stats::skips_contradicted`], per sender; only members are counted).
    pub fn skips_contradicted_by(&self, peer: &OriginKey) -> u64 {
        self.peers.get(peer).map_or(0, |p| p.skips_contradicted)
    }

    /// How many Skips taken on another node's word wait for confirmation.
    pub fn skips_unconfirmed_pending(&self) -> usize {
        self.unconfirmed_len
    }
}
