//! Skips: numbers a node will never get (not for it, voided or erased), and the bookkeeping of
//! Skips taken on another node's word until a second node confirms them or the event
//! contradicts them.

use std::sync::Arc;

use super::{
    AppEvent, Node, REFS_PER_MESSAGE_MAX, RELAY_CACHE_LEN_MAX, SKIP_CONFIRM_US,
    UNCONFIRMED_LEN_MAX, UNCONFIRMED_PER_SENDER_MAX, Unconfirmed,
};
use crate::envelope::{Event, OriginKey};
use crate::mesh::message::Message;
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

    /// Whether `(origin, seq)` is in the seen-set.
    fn has_seen(&self, origin: &OriginKey, seq: u64) -> bool {
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

    /// An event arrived whose number this node had taken as a Skip on `waiting.by`'s word
    /// (not its origin's), and this node may hold it (the caller checked its own hop): the
    /// Skip was wrong, unless the store finds the event erased here (then it was right) or
    /// already held. The event is stored and delivered now, out of per-origin order
    /// ([`AppEvent::Late`]), or in order if delivery had not reached it yet; the
    /// contradiction is reported ([`AppEvent::SkipContradicted`]) and counted against the
    /// sender. A store error puts the Skip back to wait, so the number is asked for again.
    #[inline(never)]
    pub(super) fn accept_late(
        &mut self,
        event: Arc<Event>,
        waiting: Unconfirmed,
    ) -> Result<Inserted, StoreError> {
        let id = event.id();
        let (origin, seq) = (event.origin(), event.seq());
        let interested = self.interested(event.stream());
        if interested {
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
                    // Erased here too: the Skip (an erased Skip) was right.
                    self.stats.events_erased += 1;
                    self.stats.skips_confirmed += 1;
                    self.arrived(&id);
                    return Ok(Inserted::Erased);
                }
                Err(e) => {
                    self.stats.events_refused += 1;
                    self.unconfirmed_put(origin, seq, waiting);
                    return Err(e);
                }
            }
        } else {
            if self.relay_cache.contains_key(&id) {
                self.stats.events_duplicate += 1;
                self.arrived(&id);
                return Ok(Inserted::Duplicate);
            }
            if self.relay_order.len() >= RELAY_CACHE_LEN_MAX
                && let Some(old) = self.relay_order.pop_front()
            {
                self.relay_cache.remove(&old);
            }
            self.relay_cache.insert(id, event.clone());
            self.relay_order.push_back(id);
        }
        self.stats.skips_contradicted += 1;
        if self.members.contains_key(&waiting.by) {
            self.peers.entry(waiting.by).or_default().skips_contradicted += 1;
        }
        self.app.push_back(AppEvent::SkipContradicted {
            event: event.clone(),
            skipped_by: waiting.by,
        });
        if interested {
            if self.seen.get(&origin).is_some_and(|s| s.delivered >= seq) {
                self.stats.delivered += 1;
                self.stats.delivered_late += 1;
                self.app.push_back(AppEvent::Late(event));
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
