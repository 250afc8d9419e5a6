//! Dissemination: accepting events, ordered delivery, eager pushes down the trees, lazy IHAVEs
//! and GRAFTs.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use super::{
    ANNOUNCERS_MAX, APP_QUEUE_LEN_MAX, AppEvent, FilterHop, IHAVE_BATCH_RESERVE,
    INTEREST_CACHE_LEN_MAX, MISSING_LEN_MAX, Micros, Missing, NEXT_STORED_AFTER_MISSES, Node,
    Passed, RECENT_OWN_US, REF_BUFFER_CAP_MAX, REF_BUFFERS_MAX, REFS_PER_MESSAGE_MAX,
    REPAIRED_LEN_MAX, Target, Timer, batches_of, chunks_of,
};
use crate::envelope::{Event, EventId, OriginKey};
use crate::mesh::message::{EventRef, Message};
use crate::mesh::route::{self, PENDING_ACKS_MAX, PendingAck, RelayHop};
use crate::mesh::store::{Inserted, Store, StoreError};
use crate::stream::StreamName;

impl<S: Store> Node<S> {
    /// A local publish of a number this node has already seen: a resend of the same event
    /// (its answer was lost, or it came by another path) is fine; other content under the
    /// number (a producer that lost its sequence state, or equivocates) is refused, where
    /// the mesh's receiving path would drop it as a duplicate unseen. Only a held event can
    /// be compared: a number seen but not stored here (a stream this node does not store)
    /// counts as a resend.
    pub(super) fn republished(&self, event: &Event) -> Result<(), StoreError> {
        // The same event again (the common case): the store's id index answers, without
        // reading and checking the held envelope.
        if self.store.holds(&EventRef::of(event)) {
            return Ok(());
        }
        let (origin, seq) = (event.origin(), event.seq());
        // A store that cannot read the number now refuses the publish (its error): taking
        // it as a resend could acknowledge other content under a held number.
        match self.store.get(&origin, seq)? {
            Some(held) if held.id() != event.id() => Err(StoreError::Equivocation { origin, seq }),
            Some(_) => Ok(()),
            // Seen, not held, and erased or expired here: the publish is refused as the
            // store would refuse it, not answered as if it were stored.
            None if self.store.gone(&origin, seq) => Err(StoreError::Erased { origin, seq }),
            // Held (the store's ranges name it) but unreadable (a corrupt row): what this
            // publish carries cannot be compared with it, and taking it as a resend would
            // acknowledge content that is never stored.
            None if self.store.ranges(&origin).is_some_and(|r| r.contains(seq)) => {
                Err(StoreError::Backend(format!(
                    "the event held at {origin} seq {seq} cannot be read (a corrupt row), so this publish cannot be compared with it"
                )))
            }
            None => Ok(()),
        }
    }

    pub(super) fn note_published(&mut self, events: &[Arc<Event>]) {
        for event in events {
            if self.recent_own.len() >= REFS_PER_MESSAGE_MAX {
                self.recent_own.pop_front();
            }
            // The origin too: a device's events published through this node are its
            // first hop's to announce as much as the node's own.
            self.recent_own
                .push_back((self.now, event.origin(), event.seq()));
        }
    }

    /// Announces this node's recent own events to `member`, which has just joined the
    /// view: the pushes of those events went only to the members known then, and without
    /// this the member would get them by anti-entropy, seconds later (a fabric starting up,
    /// a healed partition). Events it may not hold get a Skip instead (the filter), so its
    /// ordered delivery does not wait for them.
    pub(super) fn announce_recent(&mut self, member: OriginKey) {
        let since = self.now.saturating_sub(RECENT_OWN_US);
        while self
            .recent_own
            .front()
            .is_some_and(|(at, _, _)| *at < since)
        {
            self.recent_own.pop_front();
        }
        if self.recent_own.is_empty() {
            return;
        }
        let events: Vec<Arc<Event>> = self
            .recent_own
            .iter()
            // What cannot be read now is left out: anti-entropy brings it.
            .filter_map(|(_, origin, seq)| self.store.get(origin, *seq).ok().flatten())
            .collect();
        let events = self.allowed_vec(events, &member, false, true);
        self.announce(member, &events);
    }

    /// Sends the GRAFTs that came due together, one message per announcer and
    /// [`MeshConfig::graft_batch_len_max`] events. (The announcer answers with pushes cut to
    /// [`MeshConfig::push_batch_len_max`] events, so a receiver verifies a bounded batch at
    /// a time.)
    pub(super) fn flush_grafts(&mut self) {
        if self.pending_graft.is_empty() {
            return;
        }
        let len = self
            .config
            .graft_batch_len_max
            .clamp(1, REFS_PER_MESSAGE_MAX);
        let mut pending = self.pending_graft.take();
        for (peer, refs) in pending.drain(..) {
            // A timer of the same call may have taken the announcer down (the GRAFT timer
            // of the next announcer is already set).
            if !self.members.contains_key(&peer) {
                continue;
            }
            for chunk in chunks_of(refs, len) {
                self.stats.grafts_sent += 1;
                self.send(peer, Message::Graft(chunk));
            }
        }
        self.pending_graft.restore(pending);
    }

    pub(super) fn push_app(&mut self, event: AppEvent) {
        // Membership notes are few; they may exceed the soft limit rather than be lost.
        self.app.push_back(event);
    }

    /// An event this node may not hold arrived (see [`Stats::residency_refused`]): dropped
    /// unopened, its sequence number taken as seen (a Skip) so ordered delivery moves on.
    pub(super) fn refuse_own(&mut self, event: &Event) {
        self.stats.residency_refused += 1;
        self.confirmed_by_event(&event.origin(), event.seq());
        self.skip_own(event.origin(), event.seq());
    }

    /// Records `(origin, seq)` in the seen-set at `now`; returns false if it was there.
    /// Keeps [`Node::seen_count`] in step (exactly: at the range limit the set may drop a
    /// range, so the count is taken again for that origin).
    pub(super) fn note_seen(&mut self, origin: OriginKey, seq: u64) -> bool {
        let recorded = self.seen.record(origin, seq, self.now);
        match recorded.counts {
            Some((before, after)) => self.seen_count = self.seen_count - before + after,
            None => self.seen_count += u64::from(recorded.new),
        }
        recorded.new
    }

    /// Records every number of `lo..=hi` (`lo` at least 1) of an origin already seen as
    /// seen, keeping [`Node::seen_count`] in step; returns how many were new and whether
    /// the origin's ranges changed (at the range limit they can with none new).
    pub(super) fn note_seen_range(&mut self, origin: OriginKey, lo: u64, hi: u64) -> (u64, bool) {
        match self.seen.record_range(origin, lo, hi, self.now) {
            Some((before, after, changed)) => {
                self.seen_count = self.seen_count - before + after;
                (after.saturating_sub(before), changed)
            }
            None => (0, false),
        }
    }

    /// Takes `(origin, seq)` as seen without an event (a Skip): the sequence number is not
    /// for this node, so per-origin delivery and anti-entropy move past it.
    pub(super) fn skip_own(&mut self, origin: OriginKey, seq: u64) -> bool {
        if seq == 0 || origin == self.me.node_key() {
            return false;
        }
        if self.note_seen(origin, seq) {
            self.advance_delivery(origin);
            true
        } else {
            false
        }
    }

    /// Stores (or relays) a new event and delivers what is now in order. `publishing`: a
    /// local publish (its own number, refused by the store, is voided).
    pub(super) fn accept(
        &mut self,
        event: Arc<Event>,
        publishing: bool,
    ) -> Result<Inserted, StoreError> {
        let id = event.id();
        let origin = event.origin();
        let seq = event.seq();
        // The seen-set first: a small ordered map of per-origin ranges answers whether the
        // number is new without a probe of the store's id index (a cache miss per event on
        // a large store). Only a duplicate from a peer probes it, to tell a resend from an
        // equivocation (`compare_held`): duplicates are a few percent of what arrives.
        let seen = self.seen.get(&origin);
        if seen.is_some_and(|r| r.ranges().contains(seq)) {
            if let Some(waiting) = self.unconfirmed_take(&origin, seq) {
                return self.accept_late(event, Passed::Skip(waiting));
            }
            if self.lost_open_take(&origin, seq) {
                return self.accept_late(event, Passed::Lost);
            }
            self.stats.events_duplicate += 1;
            if !publishing {
                self.compare_held(origin, seq, id, false);
            }
            return Ok(Inserted::Duplicate);
        }
        // An exact seen-set that lacks the number: neither stored nor relayed (no lookup).
        if seen.is_none_or(|r| r.lossy)
            && (self.store.holds(&EventRef::of(&event)) || self.relay_cache.contains_key(&id))
        {
            self.stats.events_duplicate += 1;
            // Held, but the seen-set dropped it at its range limit: re-record it so
            // delivery and digests move on.
            self.seen_again(origin, seq);
            return Ok(Inserted::Duplicate);
        }
        if self.stores(&event) {
            // A local publish of this node's own event (not one of its events coming back
            // from a peer: a store restored from a backup refusing those must not void
            // numbers other nodes hold events for).
            let own = publishing && origin == self.me.node_key();
            let inserted = self.store.insert(event);
            self.seen.store_changed(&origin, &self.store);
            match inserted {
                Ok(Inserted::Duplicate) => {
                    self.stats.events_duplicate += 1;
                    // Held after all (a store whose `holds` under-claims): record it as
                    // seen so delivery and digests move on.
                    self.seen_again(origin, seq);
                    return Ok(Inserted::Duplicate);
                }
                Ok(Inserted::New) => {}
                Ok(Inserted::Erased) => {
                    // Erased fabric-wide: for this node's order a Skip (its own events
                    // too, so its own delivery moves on), nothing stored or passed on.
                    self.stats.events_erased += 1;
                    self.arrived(&id);
                    self.seen_again(origin, seq);
                    return Ok(Inserted::Erased);
                }
                Err(e) => {
                    self.stats.events_refused += 1;
                    // A peer's other event under a held number the seen-set no longer
                    // listed (it reached its range limit): named as on the common path.
                    if !publishing && matches!(e, StoreError::Equivocation { .. }) {
                        self.compare_held(origin, seq, id, true);
                    }
                    // This node's own number, signed and now never to be stored: voided
                    // like an erased event (seen, answered with a Skip, kept across a
                    // restart), or its later events would wait for it everywhere.
                    if own && !matches!(e, StoreError::Equivocation { .. }) {
                        let _ = self.void_number(origin, seq, id);
                    }
                    return Err(e);
                }
            }
        } else if publishing {
            // Another origin's event published here (a device's) that this node would only
            // relay: `StoreError::NotStored` says why it is refused.
            self.stats.events_refused += 1;
            return Err(StoreError::NotStored {
                stream: event.stream().clone(),
            });
        } else {
            self.relay_keep(id, event);
        }
        self.stats.events_new += 1;
        self.note_seen(origin, seq);
        self.arrived(&id);
        self.advance_delivery(origin);
        Ok(Inserted::New)
    }

    /// A peer's event `id` under a number already seen: the same event again, or other
    /// content under a number the store holds, an equivocation ([`AppEvent::Equivocation`]).
    /// A number seen but not held here (a stream this node only relays, an erased or
    /// expired event) cannot be compared. Only events that arrive whole are compared
    /// (pushes, GRAFT and anti-entropy answers): an IHAVE for a seen number is not, and
    /// anti-entropy compares numbers, not contents. `known`: the store has said it holds
    /// the number (its ranges may under-claim once they reached their limit).
    fn compare_held(&mut self, origin: OriginKey, seq: u64, id: crate::EventId, known: bool) {
        // The store's ranges (in memory) first: a number this node does not store (a
        // stream it only relays) has nothing to compare, and costs no store read. A
        // held number is compared by reading its event (recent ones are cached).
        if !known && !self.store.ranges(&origin).is_some_and(|r| r.contains(seq)) {
            return;
        }
        // A held event that cannot be read now is not compared (the store counts it).
        if let Ok(Some(held)) = self.store.get(&origin, seq)
            && held.id() != id
        {
            self.stats.equivocations += 1;
            self.app.push_back(AppEvent::Equivocation {
                origin,
                seq,
                held: held.id(),
                other: id,
            });
        }
    }

    /// [`Node::accept`]'s rare paths (a held event the seen-set had dropped, an erased one):
    /// records `seq` as seen and moves delivery on. Cold and out of line, so that `accept`
    /// keeps one inlined copy of the delivery step, on its common path.
    #[cold]
    #[inline(never)]
    pub(super) fn seen_again(&mut self, origin: OriginKey, seq: u64) {
        if self.note_seen(origin, seq) {
            self.advance_delivery(origin);
        }
    }

    /// Whether this node stores `event`: every event of its own origin, whatever its
    /// interest (it delivers only those its interest names), and others' events of the
    /// streams its interest names. Held in the relay cache only, an own event whose pushes
    /// the network dropped (a partition) had no copy anywhere once the cache, shared with
    /// every event the node relays, pushed it out, and every later event of the origin
    /// waited on it everywhere (found by the simulator).
    pub(super) fn stores(&mut self, event: &Event) -> bool {
        event.origin() == self.me.node_key() || self.interested(event.stream())
    }

    /// Whether this node's configured interest names `stream` (it stores and delivers the
    /// stream's events; others it only relays).
    pub(super) fn interested(&mut self, stream: &StreamName) -> bool {
        if let Some(&yes) = self.interest_cache.get(stream) {
            return yes;
        }
        let yes = self.config.interest.iter().any(|p| p.matches(stream));
        if self.interest_cache.len() >= INTEREST_CACHE_LEN_MAX {
            self.interest_cache.clear();
        }
        self.interest_cache.insert(stream.clone(), yes);
        yes
    }

    /// Delivers stored events of `origin` in sequence order from its cursor.
    ///
    /// Numbers without a stored event are stepped over; after
    /// [`NEXT_STORED_AFTER_MISSES`] of them in a row, the store is asked where the next
    /// stored one is ([`Store::next_stored`]).
    pub(super) fn advance_delivery(&mut self, origin: OriginKey) {
        let Some(seen) = self.seen.get_mut(&origin) else {
            return;
        };
        let upto = seen.ranges().contiguous();
        let from = seen.delivered;
        let mut cursor = from;
        let mut misses = 0u32;
        // Where the current run of numbers without an event began: a store failing to say
        // where the next event is may be failing its reads too, so delivery goes back there
        // and reads them again at the next try, not past events it could not read while
        // the store fails. (A `get` that fails stops delivery before its own number.)
        let mut run_from = cursor;
        // This node's own events are stored whatever its interest (`accept`): only those
        // its interest names are delivered.
        let mine = origin == self.me.node_key();
        while cursor < upto {
            if self.app.len() >= APP_QUEUE_LEN_MAX {
                self.delivery_paused.insert(origin);
                break;
            }
            cursor += 1;
            if seen.was_restored(cursor) {
                continue;
            }
            let read = match self.store.get(&origin, cursor) {
                Ok(read) => read,
                Err(_) => {
                    // The store cannot read this number now: delivery stops before it and
                    // reads it again at the next poll, never past an event whose read
                    // failed (a row whose read fails is not a row that is absent).
                    self.stats.delivery_store_errors += 1;
                    self.delivery_paused.insert(origin);
                    cursor -= 1;
                    break;
                }
            };
            let Some(event) = read else {
                // Numbers without a stored event (not for this node, skipped, taken as
                // lost) deliver nothing: past a few in a row, on to the next stored one in
                // one step, not number by number (a hole taken as lost can span billions of
                // numbers). Not at the first miss: a node storing some of an origin's
                // streams sees holes of one or two, where a store's search (a query in
                // SQLite) would cost more than the next `get`.
                if misses == 0 {
                    run_from = cursor - 1;
                }
                misses += 1;
                if misses >= NEXT_STORED_AFTER_MISSES {
                    misses = 0;
                    cursor = match self.store.next_stored(&origin, cursor, upto) {
                        // Only an answer inside the window moves the cursor on (a store
                        // answering outside it is stepped past number by number).
                        Ok(Some(next)) if next > cursor && next <= upto => next - 1,
                        Ok(Some(_)) => cursor,
                        Ok(None) => upto,
                        Err(_) => {
                            // The store cannot tell where the next event is: delivery stops
                            // before the run of misses and resumes at the next poll, rather
                            // than stepping number by number across a hole that may span
                            // 10^15 numbers, or past events whose reads failed.
                            self.stats.delivery_store_errors += 1;
                            self.delivery_paused.insert(origin);
                            cursor = run_from;
                            break;
                        }
                    };
                }
                continue;
            };
            misses = 0;
            if (self.interest_narrowed || mine)
                && !self
                    .config
                    .interest
                    .iter()
                    .any(|p| p.matches(event.stream()))
            {
                continue;
            }
            self.stats.delivered += 1;
            self.app.push_back(AppEvent::Deliver(event));
        }
        seen.delivered = cursor;
        if cursor > from {
            // Kept with the store: a restart resumes delivery here (`Store::delivered`).
            self.store.set_delivered(&origin, cursor);
        }
    }

    /// Pushes `events` down their trees (as publisher or relay, with the relay hops they
    /// arrived with) and queues IHAVEs for the lazy peers, skipping `except` (where they
    /// came from). With `eager` false (events repaired by anti-entropy) it only announces.
    pub(super) fn forward(
        &mut self,
        events: &[Arc<Event>],
        except: Option<OriginKey>,
        eager: bool,
        publishing: bool,
        relay: &[RelayHop],
        reroutes: u8,
    ) {
        if events.is_empty() {
            return;
        }
        // Asked once here and passed down (the filter is a dynamic call per event, and
        // targets, pushes and announcements would each ask again).
        let open = events.iter().all(|e| self.filter.unrestricted(e));
        if publishing && !open {
            self.skip_members(events);
        }
        if eager {
            if let [event] = events {
                // One event (most relayed pushes, every local publish): no per-target
                // batching. Sorted and deduplicated like the batch map below, so both ways
                // push in the same order.
                let mut targets = self.targets(event, publishing, relay, reroutes, except, open);
                targets.retain(|t| self.keeps(t, except));
                targets.sort_unstable();
                targets.dedup();
                for target in targets {
                    self.push_allowed(target, events, !publishing, open);
                }
            } else {
                self.forward_batches(events, except, publishing, relay, reroutes);
            }
        }
        let mut lazy = std::mem::take(&mut self.lazy_scratch);
        lazy.extend(self.lazy.iter().copied().filter(|p| Some(*p) != except));
        // Events every member may hold go to every lazy peer as they are: lazy peers are
        // members (`check_invariants`), so the member lookup `allowed` starts with (a walk
        // of the member map per peer and event batch) would only say so again.
        for peer in lazy.drain(..) {
            if open {
                self.announce(peer, events);
            } else {
                let batch = self.allowed(events, &peer, false, !publishing, false);
                self.announce(peer, &batch);
            }
        }
        self.lazy_scratch = lazy;
    }

    /// [`Node::forward`]'s eager pushes of several events: one push (or a few, see
    /// [`batches_of`]) per distinct target.
    fn forward_batches(
        &mut self,
        events: &[Arc<Event>],
        except: Option<OriginKey>,
        publishing: bool,
        relay: &[RelayHop],
        reroutes: u8,
    ) {
        let mut batches: BTreeMap<Target, Vec<Arc<Event>>> = BTreeMap::new();
        // (A publisher's plans are cached per origin and filter outcome: see `plans`.)
        for event in events {
            let open = self.filter.unrestricted(event);
            for target in self.targets(event, publishing, relay, reroutes, except, open) {
                if self.keeps(&target, except) {
                    let batch = batches.entry(target).or_default();
                    // A target named twice for one event gets it once.
                    if !batch.last().is_some_and(|last| Arc::ptr_eq(last, event)) {
                        batch.push(event.clone());
                    }
                }
            }
        }
        for (target, batch) in batches {
            // A publisher already told every member that may not hold an event.
            self.push_allowed(target, &batch, !publishing, false);
        }
    }

    /// Pushes to `target` what of `events` the filter lets it have ([`Node::allowed`]; a
    /// target with relay hops may carry sealed transit), Skips for the rest with `notify`.
    /// `open`: the caller found every event unrestricted.
    pub(super) fn push_allowed(
        &mut self,
        target: Target,
        events: &[Arc<Event>],
        notify: bool,
        open: bool,
    ) {
        let (peer, hops, ack, reroutes) = target;
        let relaying = !hops.is_empty();
        let batch = self.allowed(events, &peer, relaying, notify, open);
        self.push(peer, &batch, hops, ack, reroutes);
    }

    /// The publisher's Skips: every member that may not hold one of `events` (its hop is
    /// not [`FilterHop::Clear`]) gets their origins and sequence numbers, so that its
    /// per-origin delivery never waits for them. Only the publisher, which evaluates the
    /// filter for each member, sends these: a Skip is never passed on (a node outside an
    /// event's residency cannot tell which of its neighbours are inside).
    fn skip_members(&mut self, events: &[Arc<Event>]) {
        if events.iter().all(|e| self.filter.unrestricted(e)) {
            return;
        }
        let mut skips: Vec<(OriginKey, Vec<(OriginKey, u64)>)> = Vec::new();
        for (key, info) in &self.members {
            let list: Vec<(OriginKey, u64)> = events
                .iter()
                .filter(|e| self.filter.hop(e, info) != FilterHop::Clear)
                .map(|e| (e.origin(), e.seq()))
                .collect();
            if !list.is_empty() {
                skips.push((*key, list));
            }
        }
        for (peer, list) in skips {
            self.stats.filtered += list.len() as u64;
            for chunk in list.chunks(REFS_PER_MESSAGE_MAX) {
                self.send(peer, Message::Skip(chunk.to_vec()));
            }
        }
    }

    /// Sends `events` to `peer` in batches, each naming `hops`; with `ack`, each batch is
    /// remembered until acknowledged or timed out (failover).
    pub(super) fn push(
        &mut self,
        peer: OriginKey,
        events: &[Arc<Event>],
        hops: Vec<RelayHop>,
        ack: bool,
        reroutes: u8,
    ) {
        let chunks = batches_of(events, self.config.push_batch_len_max);
        let last = chunks.len().saturating_sub(1);
        let mut hops = Some(hops);
        for (i, chunk) in chunks.into_iter().enumerate() {
            let relay = if i == last {
                hops.take().unwrap_or_default()
            } else {
                hops.clone().unwrap_or_default()
            };
            self.stats.pushes_sent += 1;
            let mut id = 0;
            if ack {
                if self.router.pending.len() < PENDING_ACKS_MAX
                    && let Some(region) = self.members.get(&peer).map(|m| m.region.clone())
                {
                    self.router.ack_seq += 1;
                    id = self.router.ack_seq;
                    let at = self.now + route::rto_us(self.router.rtt_us(&peer));
                    let timer = self.schedule(at, Timer::Ack(id));
                    if self.config.holds_transmits && self.router.held_acks.len() < PENDING_ACKS_MAX
                    {
                        self.router.held_acks.push(id);
                    }
                    self.router.pending.insert(
                        id,
                        PendingAck {
                            to: peer,
                            region,
                            events: chunk.to_vec(),
                            relay: relay.clone(),
                            reroutes,
                            sent_us: self.now,
                            timer,
                        },
                    );
                } else {
                    self.stats.acks_untracked += 1;
                }
            }
            self.send(
                peer,
                Message::Push {
                    events: chunk.to_vec(),
                    relay,
                    ack: id,
                    reroutes,
                },
            );
        }
    }

    /// Queues IHAVEs for `events` to `peer`, sent in one batch after `ihave_delay_us`.
    pub(super) fn announce(&mut self, peer: OriginKey, events: &[Arc<Event>]) {
        if events.is_empty() {
            return;
        }
        if self.pending_ihave.is_empty() {
            let at = self.now + self.config.ihave_delay_us;
            self.schedule(at, Timer::FlushIHave);
        }
        let pending = self.pending_ihave.entry(peer);
        if pending.capacity() == 0 {
            match self.ref_buffers.pop() {
                Some(buffer) => *pending = buffer,
                // Room for a typical flush at once, rather than growing through 4, 8, 16.
                None => pending.reserve(IHAVE_BATCH_RESERVE.max(events.len())),
            }
        }
        pending.extend(events.iter().map(|e| EventRef::of(e)));
        // Bounded: a full message's worth goes out at once instead of waiting.
        if pending.len() >= REFS_PER_MESSAGE_MAX {
            let full: Vec<EventRef> = std::mem::take(pending);
            for chunk in chunks_of(full, REFS_PER_MESSAGE_MAX) {
                self.stats.ihaves_sent += 1;
                self.send(peer, Message::IHave(chunk));
            }
        }
    }

    pub(super) fn flush_ihave(&mut self) {
        let mut pending = self.pending_ihave.take();
        for (peer, refs) in pending.drain(..) {
            for chunk in chunks_of(refs, REFS_PER_MESSAGE_MAX) {
                self.stats.ihaves_sent += 1;
                self.send(peer, Message::IHave(chunk));
            }
        }
        self.pending_ihave.restore(pending);
    }

    pub(super) fn on_push(
        &mut self,
        from: OriginKey,
        events: Vec<Arc<Event>>,
        relay: &[RelayHop],
        reroutes: u8,
    ) {
        // Inline: most pushes carry one event or a few (no allocation per push).
        let mut fresh: smallvec::SmallVec<[Arc<Event>; 4]> = smallvec::SmallVec::new();
        let mut held: smallvec::SmallVec<[Arc<Event>; 4]> = smallvec::SmallVec::new();
        let mut late: smallvec::SmallVec<[Arc<Event>; 4]> = smallvec::SmallVec::new();
        for event in events {
            match self.own_hop(&event) {
                FilterHop::Clear => match self.accept(event.clone(), false) {
                    Ok(Inserted::New) => fresh.push(event),
                    Ok(Inserted::Duplicate) if self.repaired.remove(&event.id()) => {
                        late.push(event);
                    }
                    Ok(Inserted::Duplicate) if !relay.is_empty() => held.push(event),
                    _ => {}
                },
                // Sealed transit: carried on along the relay path, never stored, delivered,
                // announced or passed down this region's tree; for this node's own ordered
                // delivery it is a Skip.
                FilterHop::Transit if !relay.is_empty() => {
                    self.stats.transit_forwarded += 1;
                    self.confirmed_by_event(&event.origin(), event.seq());
                    self.skip_own(event.origin(), event.seq());
                    held.push(event);
                }
                FilterHop::Transit | FilterHop::Refuse => self.refuse_own(&event),
            }
        }
        self.forward(&fresh, Some(from), true, false, relay, reroutes);
        // Events this node already had (or carries in transit) still go on to the regions
        // it relays for (a rerouted push passes through regions that hold the event
        // already).
        if !held.is_empty() {
            self.forward_held(held, from, relay, reroutes);
        }
        // Events anti-entropy brought before this, their tree push: they go on down this
        // region's tree (and to the regions it relays for) as new ones would. Otherwise a
        // region root repaired just before a rerouted push leaves its children to an IHAVE
        // and a GRAFT timeout (`link-cut`, seeds 131 and 135: 223 and 231 ms over the
        // ideal against a bound of 161 ms). Peers heard of them lazily at the repair, so
        // only the eager pushes.
        if !late.is_empty() {
            self.forward_batches(&late, Some(from), false, relay, reroutes);
        }
    }

    /// [`Node::on_push`]'s events this node already had (or carries in sealed transit):
    /// on to the regions it relays for.
    fn forward_held(
        &mut self,
        held: smallvec::SmallVec<[Arc<Event>; 4]>,
        from: OriginKey,
        relay: &[RelayHop],
        reroutes: u8,
    ) {
        let mut by_target: BTreeMap<Target, Vec<Arc<Event>>> = BTreeMap::new();
        for event in held {
            for target in self.relay_targets(&event, relay, reroutes, Some(from)) {
                if self.keeps(&target, Some(from)) {
                    by_target.entry(target).or_default().push(event.clone());
                }
            }
        }
        for (target, events) in by_target {
            self.push_allowed(target, &events, true, false);
        }
    }

    /// Whether this node pushes to `target`: not to itself, nor back to the peer the events
    /// came from (`except`), which holds them already (or carries them in sealed transit),
    /// unless the push carries relay hops (counted in [`Stats::relays_sent_back`]). A relay
    /// whose direct link to a region failed may find its best way there through the region
    /// it was sent from, whose root for the origin's events is the sender itself (the
    /// origin, when it pushed the event): that push must go, or the regions it names are
    /// dropped (`example.toml` seed 17: `aws:eu-west-1` missed an event for 1.7 s, until
    /// anti-entropy). The sender relays for the hops as for any others (see
    /// [`Node::on_push`]); `route::REROUTES_MAX` bounds the way back and forth.
    pub(super) fn keeps(&mut self, target: &Target, except: Option<OriginKey>) -> bool {
        if target.0 == self.me.node_key() {
            return false;
        }
        if Some(target.0) != except {
            return true;
        }
        let relays = !target.1.is_empty();
        self.stats.relays_sent_back += u64::from(relays);
        relays
    }

    /// Remembers an event anti-entropy brought (see `repaired`), forgetting the oldest
    /// beyond [`REPAIRED_LEN_MAX`].
    pub(super) fn remember_repaired(&mut self, id: EventId) {
        if self.repaired_order.len() >= REPAIRED_LEN_MAX
            && let Some(old) = self.repaired_order.pop_front()
        {
            self.repaired.remove(&old);
        }
        if self.repaired.insert(id) {
            self.repaired_order.push_back(id);
        }
    }

    pub(super) fn on_ihave(&mut self, from: OriginKey, refs: Vec<EventRef>) {
        for &r in refs.iter().take(REFS_PER_MESSAGE_MAX) {
            // Cheapest test first (the seen-set answers nearly every announcement).
            if self
                .seen
                .get(&r.origin)
                .is_some_and(|s| s.ranges().contains(r.seq))
            {
                // Seen on another node's word only, and announced by a third: a node that
                // holds the event and may send it here. Fetch it: if it comes, it
                // contradicts the Skip now rather than at the next anti-entropy round.
                if self
                    .unconfirmed_get(&r.origin, r.seq)
                    .is_some_and(|u| u.by != from)
                    && !self.store.holds(&r)
                    && !self.relay_cache.contains_key(&r.id)
                {
                    self.note_missing(from, r);
                }
                continue;
            }
            if self.store.holds(&r) || self.relay_cache.contains_key(&r.id) {
                continue;
            }
            self.note_missing(from, r);
        }
        self.keep_ref_buffer(refs);
    }

    /// [`Node::on_ihave`]'s announcement of an event this node lacks: `from` joins its
    /// announcers, or it becomes missing with a GRAFT timer. Out of line: the seen-set
    /// answers nearly every announcement before this.
    #[inline(never)]
    fn note_missing(&mut self, from: OriginKey, r: EventRef) {
        if let Some(m) = self.missing.get_mut(&r.id) {
            if m.announcers.len() < ANNOUNCERS_MAX && !m.announcers.contains(&from) {
                m.announcers.push_back(from);
            }
            return;
        }
        if self.missing.len() >= MISSING_LEN_MAX {
            self.stats.missing_dropped += 1;
            return;
        }
        let at = self.now + self.config.graft_timeout_us;
        let timer = self.schedule(at, Timer::Graft(r.id));
        self.missing.insert(
            r.id,
            Missing {
                event: r,
                announcers: VecDeque::from([from]),
                timer,
            },
        );
    }

    /// Keeps an emptied reference buffer for the next IHAVE batch (see `ref_buffers`).
    fn keep_ref_buffer(&mut self, mut refs: Vec<EventRef>) {
        if self.ref_buffers.len() < REF_BUFFERS_MAX
            && (1..=REF_BUFFER_CAP_MAX).contains(&refs.capacity())
        {
            refs.clear();
            self.ref_buffers.push(refs);
        }
    }

    pub(super) fn on_graft_timer(&mut self, id: EventId) {
        let Some(m) = self.missing.get_mut(&id) else {
            return;
        };
        // The nearest announcer first (measured, else estimated from coordinates): the
        // graft's answer comes back soonest from there.
        let router = &self.router;
        let nearest = m
            .announcers
            .iter()
            .enumerate()
            .min_by_key(|(i, k)| (router.estimate_us(k).unwrap_or(Micros::MAX), *i))
            .map(|(i, _)| i);
        let Some(peer) = nearest.and_then(|i| m.announcers.remove(i)) else {
            self.missing.remove(&id);
            return;
        };
        let r = m.event;
        let retry = !m.announcers.is_empty();
        if !retry {
            self.missing.remove(&id);
        }
        if self.members.contains_key(&peer) {
            self.pending_graft.entry(peer).push(r);
        }
        if retry {
            let at = self.now + self.config.graft_timeout_us;
            let timer = self.schedule(at, Timer::Graft(id));
            if let Some(m) = self.missing.get_mut(&id) {
                m.timer = timer;
            }
        }
    }

    #[inline(never)] // rare: see `on_sync_response`
    pub(super) fn on_graft(&mut self, from: OriginKey, refs: Vec<EventRef>) {
        let mut events = Vec::new();
        let mut erased = Vec::new();
        for &r in refs.iter().take(REFS_PER_MESSAGE_MAX) {
            // What cannot be read now is not sent: the peer's GRAFT timer asks another.
            if let Some(e) = self
                .store
                .get(&r.origin, r.seq)
                .ok()
                .flatten()
                .or_else(|| self.relay_cache.get(&r.id).cloned())
                && e.id() == r.id
            {
                events.push(e);
            } else if self.store.erased(&r.origin, r.seq) {
                erased.push((r.origin, r.seq));
            }
        }
        self.keep_ref_buffer(refs);
        self.send_erased_skips(from, &erased);
        let events = self.allowed_vec(events, &from, false, true);
        // A GRAFT may name up to REFS_PER_MESSAGE_MAX events (this node's own name up to
        // `graft_batch_len_max`): `push` cuts the answer into push-sized batches (count and
        // bytes), never one message over the wire limit.
        self.push(from, &events, Vec::new(), false, 0);
    }
}
