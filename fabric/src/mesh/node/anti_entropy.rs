//! Anti-entropy: digests of what the node holds, partner choice, and answering requests with
//! what the partner lacks.

use std::sync::Arc;

use rand_core::Rng;

use super::{
    BATCH_BYTES_MAX, DIGEST_HOLES_MAX, DIGEST_ORIGINS_MAX, FilterHop, Micros, Node, OWN_ASKS_MAX,
    OWN_FEW_MEMBERS_WAIT_US, OWN_HIGH_CLAIM_MAX, OWN_REASK_US, OwnAsk, RANDOM_PARTNER_DRAWS,
    RANKED_CANDIDATES, SYNC_BATCH_RTT_FACTOR_MAX, SYNC_BATCH_RTT_REF_US, SYNC_FRESH_US,
};
use crate::envelope::{Event, OriginKey};
use crate::mesh::message::{Digest, DigestRanges, Message, Settled};
use crate::mesh::ranges::{RANGES_PER_ORIGIN_MAX, SeqRanges};
use crate::mesh::seen::OriginSeen;
use crate::mesh::store::{Inserted, Store, answer_len};

impl<S: Store> Node<S> {
    /// An anti-entropy batch from `from` ([`Message::SyncResponse`]). Out of line: one
    /// message in a few hundred, and `handle_message`'s match stays small enough for the
    /// instruction cache.
    #[inline(never)]
    pub(super) fn on_sync_response(
        &mut self,
        from: OriginKey,
        events: Vec<Arc<Event>>,
        resume: Option<OriginKey>,
        held: u64,
        unsettled: Option<[u64; 2]>,
        your_high: u64,
    ) {
        let peer = self.peers.entry(from).or_default();
        peer.held = held;
        peer.unanswered_since = None;
        if let Some(key) = unsettled {
            // The partner has other ranges of the origins the summary stood for:
            // the round again with the whole digest (only for the summary last
            // sent: a stray or superseded answer asks for nothing).
            if peer.summary_pending == Some(key) {
                peer.summary_pending = None;
                self.stats.sync_unsettled_in += 1;
                self.send_digest(from, None, true);
            }
            return;
        }
        let mut fresh = Vec::new();
        for event in events {
            if self.own_hop(&event) != FilterHop::Clear {
                // Anti-entropy carries only what the receiver may hold.
                self.refuse_own(&event);
                continue;
            }
            if let Ok(Inserted::New) = self.accept(event.clone(), false) {
                self.stats.sync_events_new += 1;
                fresh.push(event);
            }
        }
        // Repaired events travel on lazily: peers that lack them GRAFT. Their tree
        // push may still come (see `repaired`).
        for event in &fresh {
            self.remember_repaired(event.id());
        }
        self.forward(&fresh, Some(from), false, false, &[], 0);
        self.own_answered(from, resume, your_high, held);
        if let Some(origin) = resume {
            self.send_digest(from, Some(origin), true);
        }
    }

    /// What this node has seen, from `from_origin` on: every origin, or, when
    /// `summarise` (a new round: `from_origin` is `None`), those whose ranges changed in
    /// the last [`SYNC_SETTLED_US`] (and those `seen::summary_ranges` cannot vouch for)
    /// listed and the rest summarised. The summary is kept as the seen-set changes
    /// (`seen.rs`): a summarised digest costs what it lists.
    fn digest(
        &mut self,
        partner: OriginKey,
        from_origin: Option<OriginKey>,
        summarise: bool,
    ) -> (Digest, Option<Settled>) {
        use std::ops::Bound::{Included, Unbounded};
        if summarise {
            let key = [self.rng.next_u64(), self.rng.next_u64()];
            self.settle_summary();
            let (mut count, mut hash) = self.seen.summary_totals();
            let mut listed: Vec<OriginKey> = self.seen.unsummarised().copied().collect();
            // An origin with Skips waiting for a second word, or numbers taken as lost and
            // still open to a late copy, is listed, with them left out
            // ([`Node::digest_entry`]).
            if self.unconfirmed_len > 0 || !self.lost_open.is_empty() {
                let mut holed: Vec<&OriginKey> = self
                    .unconfirmed
                    .keys()
                    .chain(self.lost_open.keys())
                    .collect();
                holed.sort_unstable();
                holed.dedup();
                for o in holed {
                    if let Some(h) = self.seen.counted(o) {
                        count -= 1;
                        hash = hash.wrapping_sub(h);
                        listed.push(*o);
                    }
                }
            }
            listed.sort_unstable();
            let digest = listed
                .iter()
                .filter_map(|o| Some(self.digest_entry(o, self.seen.get(o)?, &partner)))
                .collect();
            let settled = (count > 0).then(|| Settled {
                key,
                count: u32::try_from(count).unwrap_or(u32::MAX),
                hash,
            });
            return (digest, settled);
        }
        let from = from_origin.map_or(Unbounded, Included);
        let digest = self
            .seen
            .range_from(from)
            .map(|(o, s)| self.digest_entry(o, s, &partner))
            .collect();
        (digest, None)
    }

    /// Brings the anti-entropy summary to now ([`SeenSet::settle`]), with what the
    /// seen-set took in from the store ([`Node::took_in`]).
    fn settle_summary(&mut self) {
        let taken = self.seen.settle(self.now, &self.store);
        self.took_in(taken);
    }

    /// Origins the seen-set just took in from the store ([`SeenSet::take_in`]: at a
    /// restart, or after `store_mut`): counted, and stored events the store's cursor says
    /// were not delivered yet, in an unbroken run above it (delivery was paused, or the
    /// store kept events it had not logged as delivered), delivered at the next
    /// `poll_event` without waiting for the origin's next event.
    pub(super) fn took_in(&mut self, origins: Vec<OriginKey>) {
        for origin in origins {
            let s = self.seen.get(&origin).expect("just taken in");
            self.seen_count += s.ranges().count();
            if s.delivered < s.ranges().contiguous() {
                self.delivery_paused.insert(origin);
            }
        }
    }

    /// One origin's entry in a digest for `partner`: the ranges seen, less the Skips waiting
    /// for a second word and the numbers taken as lost still open to a late copy (left out,
    /// so the partner answers for them: the event, or a Skip of its own). Open numbers are
    /// not left out of their own origin's entry in a digest to that origin: it said it
    /// holds none of them, and would say so again at every round.
    fn digest_entry(
        &self,
        o: &OriginKey,
        s: &OriginSeen,
        partner: &OriginKey,
    ) -> (OriginKey, DigestRanges) {
        let waiting = (self.unconfirmed_len > 0)
            .then(|| self.unconfirmed.get(o))
            .flatten();
        let open = (!self.lost_open.is_empty() && o != partner)
            .then(|| self.lost_open.get(o))
            .flatten();
        if waiting.is_none() && open.is_none() {
            return (*o, s.ranges().iter().collect());
        }
        // Each hole can split a range: stay within the ranges a digest entry holds.
        let room = RANGES_PER_ORIGIN_MAX.saturating_sub(s.ranges().range_count() + 1);
        // The waiting Skips first (their second word is what confirms them), then the open
        // numbers, as far as the room goes: the rest at later rounds, as holes fill.
        let singles: Vec<(u64, u64)> = waiting
            .into_iter()
            .flat_map(|w| w.keys().take(DIGEST_HOLES_MAX.min(room)).map(|&q| (q, q)))
            .collect();
        let room_left = room.saturating_sub(singles.len());
        let runs = open
            .into_iter()
            .flat_map(|l| l.ranges.iter().take(DIGEST_HOLES_MAX.min(room_left)));
        let holes = SeqRanges::from_ranges(singles.iter().copied().chain(runs));
        let holes = holes.as_slice();
        (
            *o,
            s.ranges().difference_ranges(holes).into_iter().collect(),
        )
    }

    /// Whether the origins a request's digest leaves out (`listed`, sorted, each once) give,
    /// in what this node has seen or holds of them (`seen::summary_ranges`), the
    /// request's summary: then this node holds nothing of them the requester lacks.
    /// (Every origin of the store is in the seen-set: a record per stored origin is made at
    /// start, and every event stored after is recorded.) A summary resuming from an origin
    /// (this build never sends one) is taken as not matching: the requester then sends its
    /// whole digest.
    fn settled_matches(
        &mut self,
        listed: &Digest,
        from_origin: Option<OriginKey>,
        settled: &Settled,
    ) -> bool {
        if from_origin.is_some() {
            return false;
        }
        self.settle_summary();
        self.seen
            .matches(listed, settled.count, settled.hash, &self.store)
    }

    /// Starts an anti-entropy round with the best partner ([`Node::ranked_partner`]: the one
    /// known to have seen the most more than we have ([`Node::seen_count`]), else the one
    /// synced least recently, ties broken by RTT). Every other round instead goes to a
    /// random member of another region: a whole region can miss the same event (its tree
    /// root was unreachable), and "nearest" would then keep pairing nodes that all lack it.
    /// Partners that did not answer their last request or that SWIM suspects are passed
    /// over while another is at hand ([`Node::unlikely_to_answer`]): in a partition, rounds
    /// across the cut repair nothing and the events the cut stopped in flight are on this
    /// side.
    pub(super) fn start_sync(&mut self) {
        self.sync_rounds += 1;
        self.ask_own_numbers_more();
        // Every fourth round, a hole in an origin's sequence (delivery stalled behind an
        // event, or a Skip, that never came: a node the publisher did not know yet gets no
        // Skip) is repaired from the origin itself, which holds all its events: it answers
        // with the event, or with a Skip when this node may not hold it. So is the first
        // round after one with a member back from down (`stalled_first`).
        // That one asks the stalled origin with the lowest key: a request from an origin on
        // covers every origin above it, so one round repairs all the holes its answerer
        // holds (after a heal: every origin of its side).
        let stalled_first = std::mem::take(&mut self.stalled_first);
        let turn = if stalled_first {
            Some(0)
        } else {
            (self.sync_rounds % 4 == 2).then_some(self.sync_rounds / 4)
        };
        if let Some(turn) = turn
            && let Some(origin) = self.stalled_origin(turn)
        {
            // An origin that is silent or suspected (cut off, or down) is not asked: the best
            // other partner is, from that origin on (it may hold what its side got before).
            let partner = if self.unlikely_to_answer(&origin) {
                self.stats.sync_partners_passed_over += 1;
                self.ranked()
            } else {
                Some(origin)
            };
            if let Some(partner) = partner {
                self.sync_with(partner, Some(origin), true);
                return;
            }
        }
        if self.sync_rounds.is_multiple_of(2) {
            let count = self.live_count(true);
            // A few draws for one likely to answer (each draw costs a walk of the region
            // lists); when none is, the ranked choice below.
            let draws = if count > 0 { RANDOM_PARTNER_DRAWS } else { 0 };
            for _ in 0..draws {
                let pick = (self.rng.next_u64() % count as u64) as usize;
                let Some(partner) = self.live_nth(true, pick) else {
                    return;
                };
                if !self.unlikely_to_answer(&partner) {
                    self.sync_with(partner, None, false);
                    return;
                }
                self.stats.sync_partners_passed_over += 1;
            }
        }
        if let Some(partner) = self.ranked() {
            self.sync_with(partner, None, false);
        } else {
            // No partner (a lone node, or one cut off from every member): the numbers
            // waiting as lost still come due, this node's own among them. A node that
            // numbered past a wall-clock floor with no member up delivered none of its new
            // events to its own subscribers until a member came (found by hand).
            self.take_lost();
        }
    }

    /// [`Node::ranked_partner`], counting a suspected member it passed over.
    fn ranked(&mut self) -> Option<OriginKey> {
        let (partner, passed_over) = self.ranked_partner()?;
        self.stats.sync_partners_passed_over += u64::from(passed_over);
        Some(partner)
    }

    /// Whether `peer` has not answered this node's last anti-entropy request (see
    /// [`SILENT_RETRY_INTERVALS`]).
    pub(super) fn silent(&self, peer: &OriginKey) -> bool {
        self.peers
            .get(peer)
            .is_some_and(|p| p.silent(self.now, self.config.sync_interval_us))
    }

    /// Whether SWIM holds `peer` as suspect (a probe of it failed and it has not refuted
    /// yet): the failure detector's word, known across the mesh seconds before the member
    /// is declared down.
    pub(super) fn suspected(&self, peer: &OriginKey) -> bool {
        self.foca
            .member(&peer.0)
            .is_some_and(|m| m.state() == foca::State::Suspect)
    }

    /// [`Node::silent`] or [`Node::suspected`]: not chosen for anti-entropy while another
    /// partner is.
    fn unlikely_to_answer(&self, peer: &OriginKey) -> bool {
        self.silent(peer) || self.suspected(peer)
    }

    /// The partner of a regular anti-entropy round: members that answered before silent
    /// ones (a silent one is chosen only when every member is), then the one that has seen
    /// the most more than this node ([`Node::seen_count`]), then the stalest, then the nearest; of the
    /// [`RANKED_CANDIDATES`] best, the first SWIM does not suspect (looked up for those few
    /// only: a lookup per member costs a 1000-node mesh a cache miss each).
    /// Also says whether a better-ranked member was passed over as suspected.
    ///
    /// A member this node holds no [`PeerState`] for ranks by its estimate alone (never
    /// silent, nothing more, never synced): the best of those are the first of the near
    /// index. So the members with peer state are ranked one by one (a handful: the
    /// partners of past rounds), the others only as far into the index as the best need.
    pub(super) fn ranked_partner(&self) -> Option<(OriginKey, bool)> {
        let me = self.me.node_key();
        let held = self.seen_count;
        let (now, interval) = (self.now, self.config.sync_interval_us);
        let failed = &self.router.failed;
        // A member, not this node, and not in a region whose direct link failed.
        let eligible = |k: &OriginKey| {
            *k != me
                && self
                    .members
                    .get(k)
                    .is_some_and(|m| failed.is_empty() || !failed.contains_key(m.region.as_str()))
        };
        // The few best, in order (a sorted insert into a handful beats sorting them all).
        let mut best: smallvec::SmallVec<[_; RANKED_CANDIDATES + 1]> = smallvec::SmallVec::new();
        let mut offer = |candidate| {
            if best.len() == RANKED_CANDIDATES && best.last().is_some_and(|b| candidate >= *b) {
                return;
            }
            let at = best.partition_point(|b| *b < candidate);
            best.insert(at, candidate);
            best.truncate(RANKED_CANDIDATES);
        };
        for (k, p) in &self.peers {
            if eligible(k) {
                let rtt = self.router.rtt_us(k).unwrap_or(Micros::MAX);
                let more = p.held.saturating_sub(held);
                let last = p.last_sync_us.unwrap_or(0);
                offer((
                    p.silent(now, interval),
                    std::cmp::Reverse(more),
                    last,
                    rtt,
                    *k,
                ));
            }
        }
        let mut taken = 0;
        for &(rtt, k) in &self.near.by_rtt {
            if taken == RANKED_CANDIDATES {
                break;
            }
            if self.peers.contains_key(&k) || !eligible(&k) {
                continue;
            }
            offer((false, std::cmp::Reverse(0), 0, rtt, k));
            taken += 1;
        }
        let &(.., first) = best.first()?;
        Some(
            match best.iter().find(|&&(.., key)| !self.suspected(&key)) {
                Some(&(.., key)) => (key, key != first),
                None => (first, false),
            },
        )
    }

    /// [`Node::ranked_partner`] as it was computed before the near index: a walk of every
    /// member (the reference the index must agree with).
    #[cfg(test)]
    pub(super) fn ranked_partner_walk(&self) -> Option<(OriginKey, bool)> {
        let me = self.me.node_key();
        let held = self.seen_count;
        let (now, interval) = (self.now, self.config.sync_interval_us);
        // `members`, `peers` and the RTT estimators are all ordered by key: walk them
        // together rather than look each member up (this runs every sync interval over every
        // member).
        let mut peers = self.peers.iter().peekable();
        let mut rtts = self.router.estimators().peekable();
        let failed = &self.router.failed;
        let ranked = self
            .members
            .iter()
            // The member record is read only when some link failed: a walk of the keys
            // alone touches a fraction of the memory.
            .filter(|(k, m)| {
                **k != me && (failed.is_empty() || !failed.contains_key(m.region.as_str()))
            })
            .map(|(k, _)| k)
            .map(|k| {
                while peers.next_if(|(pk, _)| *pk < k).is_some() {}
                let p = peers.peek().filter(|(pk, _)| *pk == k).map(|(_, p)| *p);
                let silent = p.is_some_and(|p| p.silent(now, interval));
                let more = p.map_or(0, |p| p.held.saturating_sub(held));
                let last = p.and_then(|p| p.last_sync_us).unwrap_or(0);
                while rtts.next_if(|(rk, _)| *rk < k).is_some() {}
                let rtt = rtts
                    .peek()
                    .filter(|(rk, _)| *rk == k)
                    .and_then(|(_, e)| e.estimate_us())
                    .unwrap_or(Micros::MAX);
                (silent, std::cmp::Reverse(more), last, rtt, *k)
            });
        // The few best, in order (a sorted insert into a handful beats sorting them all).
        let mut best: smallvec::SmallVec<[_; RANKED_CANDIDATES + 1]> = smallvec::SmallVec::new();
        for candidate in ranked {
            if best.len() == RANKED_CANDIDATES && best.last().is_some_and(|b| candidate >= *b) {
                continue;
            }
            let at = best.partition_point(|b| *b < candidate);
            best.insert(at, candidate);
            best.truncate(RANKED_CANDIDATES);
        }
        let &(.., first) = best.first()?;
        Some(
            match best.iter().find(|&&(.., key)| !self.suspected(&key)) {
                Some(&(.., key)) => (key, key != first),
                None => (first, false),
            },
        )
    }

    /// The round with a member back from down: the nearest of those noted that is still a
    /// member. The others are forgotten (their side's events come with this round, or with
    /// the regular ones).
    pub(super) fn sync_with_returned(&mut self) {
        let returned = std::mem::take(&mut self.returned);
        let partner = returned
            .iter()
            .filter(|k| self.members.contains_key(k))
            .min_by_key(|k| self.router.estimate_us(k).unwrap_or(Micros::MAX))
            .copied();
        if let Some(partner) = partner {
            self.stats.sync_back_rounds += 1;
            // After a heal: what the other side published while cut off is in origins that
            // look settled here, so the whole digest at once.
            self.sync_with(partner, None, true);
            self.stalled_first = true;
        }
        self.announce_to_down();
    }

    /// Sends `partner` this node's digest (from `from_origin` on, when resuming or asking an
    /// origin) and notes when.
    pub(super) fn sync_with(
        &mut self,
        partner: OriginKey,
        from_origin: Option<OriginKey>,
        full: bool,
    ) {
        self.peers.entry(partner).or_default().last_sync_us = Some(self.now);
        self.send_digest(partner, from_origin, full);
    }

    /// Sends `partner` this node's digest, from `from_origin` on (a new round, or one
    /// resumed where the partner's answer was cut). A new round summarises the origins
    /// settled for [`SYNC_SETTLED_US`] ([`Settled`]) unless `full`, or unless the
    /// partner was known to have seen more than this node ([`Node::seen_count`]; then the
    /// summary would likely only cost a round trip).
    pub(super) fn send_digest(
        &mut self,
        partner: OriginKey,
        from_origin: Option<OriginKey>,
        full: bool,
    ) {
        // A resumed round waits for an answer too: a partner cut off mid-transfer goes silent.
        let now = self.now;
        self.expire_unconfirmed();
        self.take_lost();
        let held = self.seen_count;
        let peer = self.peers.entry(partner).or_default();
        peer.unanswered_since.get_or_insert(now);
        let summarise = !full && from_origin.is_none() && peer.held <= held;
        let (digest, settled) = self.digest(partner, from_origin, summarise);
        if let Some(p) = self.peers.get_mut(&partner) {
            p.summary_pending = settled.map(|s| s.key);
        }
        self.stats.sync_requests_sent += 1;
        self.stats.sync_summaries_sent += u64::from(settled.is_some());
        self.send(
            partner,
            Message::SyncRequest {
                digest,
                from_origin,
                settled,
            },
        );
    }

    /// A live origin (not in a region whose link failed) with a hole in what this node has
    /// seen of it: the `turn`th of them (modulo their number) in key order, so successive
    /// turns rotate over them.
    fn stalled_origin(&self, turn: u64) -> Option<OriginKey> {
        let me = self.me.node_key();
        // Only the origins with a hole (few), which the seen-set keeps apart.
        let stalled = || {
            self.seen.holed().filter_map(|(o, _)| {
                let live = || {
                    self.members
                        .get(o)
                        .is_some_and(|m| !self.router.failed.contains_key(m.region.as_str()))
                };
                (*o != me && live()).then_some(*o)
            })
        };
        let count = stalled().count();
        if count == 0 {
            return None;
        }
        stalled().nth(turn as usize % count)
    }

    /// Adds to `erased` the numbers of `seqs` (of `origin`, in the store's ranges but not
    /// read from it) that were erased here: the peer gets a Skip for each, so its ordered
    /// delivery does not wait for them.
    fn push_erased(
        &self,
        origin: OriginKey,
        seqs: impl Iterator<Item = u64>,
        erased: &mut Vec<(OriginKey, u64)>,
    ) {
        erased.extend(
            seqs.filter(|seq| self.store.erased(&origin, *seq))
                .map(|seq| (origin, seq)),
        );
    }

    /// The store runs `(origin, first, last)` an answer to `msg` from `from` would read
    /// through [`Store::get_run`] if it were handled at `now`, in the order it would read
    /// them; empty for any other message and for a request whose summary does not match
    /// (its answer reads nothing). For a store that reads ahead off the caller's thread
    /// (the node reads a large answer's events on a reader thread, then hands the request
    /// in): a hint, never needed for correctness, since the state may change before the
    /// request is handled. It changes what any input at `now` changes first: the node's
    /// clock moves to `now` and the anti-entropy summary settles what is due by then. Runs
    /// are counted against the answer's batch length number by number; the answer itself
    /// also stops at [`BATCH_BYTES_MAX`], so it may read less than listed.
    pub fn sync_answer_reads(
        &mut self,
        now: Micros,
        from: &OriginKey,
        msg: &Message,
    ) -> Vec<(OriginKey, u64, u64)> {
        self.advance(now);
        let Message::SyncRequest {
            digest,
            from_origin,
            settled,
        } = msg
        else {
            return Vec::new();
        };
        let theirs = normalized_digest(digest);
        let Some(origins) = self.answer_origins(&theirs, *from_origin, settled.as_ref()) else {
            return Vec::new();
        };
        let limit = sync_batch_len(self.config.sync_batch_len_max, self.router.rtt_us(from));
        let mut runs = Vec::new();
        let mut taken = 0usize;
        for origin in origins {
            if taken == limit {
                break;
            }
            let Lacking::Runs(lacking) = self.lacking(&origin, &theirs, from) else {
                continue;
            };
            for (first, last) in runs_within(&lacking, limit - taken) {
                taken += run_len(first, last);
                runs.push((origin, first, last));
            }
        }
        runs
    }

    /// The origins an answer to a request (its digest sorted, `theirs`) goes through, in
    /// order from `from_origin`; `None` when the request's summary does not match.
    fn answer_origins(
        &mut self,
        theirs: &Digest,
        from_origin: Option<OriginKey>,
        settled: Option<&Settled>,
    ) -> Option<Vec<OriginKey>> {
        // A summary of the origins the digest leaves out: if this node has seen the same of
        // them, only the listed origins can hold anything the requester lacks; if not, it
        // asks for the whole digest (answering as if the requester had nothing of them
        // would send all of it).
        let origins: Vec<OriginKey> = match settled {
            Some(summary) if !self.settled_matches(theirs, from_origin, summary) => return None,
            Some(_) => theirs.iter().map(|(o, _)| *o).collect(),
            None => self.store.origins(),
        };
        Some(match from_origin {
            Some(f) => origins.into_iter().filter(|o| *o >= f).collect(),
            None => origins,
        })
    }

    /// The lowest of `origin`'s numbers that arrived here lately, within [`SYNC_FRESH_US`]
    /// (most likely on their way to a requester too); `u64::MAX` if none did.
    fn fresh_from(&self, origin: &OriginKey) -> u64 {
        self.seen
            .get(origin)
            .filter(|s| s.fresh_from > 0 && self.now.saturating_sub(s.fresh_at) < SYNC_FRESH_US)
            .map_or(u64::MAX, |s| s.fresh_from)
    }

    /// What the requester `from` (its digest sorted, `theirs`) lacks of `origin` that this
    /// node holds.
    fn lacking(&self, origin: &OriginKey, theirs: &Digest, from: &OriginKey) -> Lacking {
        let Some(mine) = self.store.ranges(origin) else {
            return Lacking::Nothing;
        };
        let lacking = match theirs.binary_search_by(|(o, _)| o.cmp(origin)) {
            Err(_) => mine.difference_ranges(&[]),
            Ok(at) if SeqRanges::is_normalized(&theirs[at].1) => {
                mine.difference_ranges(&theirs[at].1)
            }
            Ok(at) => mine
                .difference_ranges(SeqRanges::from_ranges(theirs[at].1.iter().copied()).as_slice()),
        };
        // Nothing lacking (the common case): no more to look up for this origin.
        if lacking.is_empty() {
            return Lacking::Nothing;
        }
        // All the requester lacks of this origin is what arrived here lately: most likely
        // on its way to the requester too (SYNC_FRESH_US). Behind on older numbers as well,
        // it gets everything. Never its own events: nothing brings those to it but this
        // answer (it restarted without them, and asks for them before it numbers on).
        let fresh_from = if origin == from {
            u64::MAX
        } else {
            self.fresh_from(origin)
        };
        if lacking.first().is_some_and(|(seq, _)| *seq >= fresh_from) {
            return Lacking::Fresh(SeqRanges::covered(&lacking));
        }
        Lacking::Runs(lacking)
    }

    #[inline(never)] // rare: see `on_sync_response`
    pub(super) fn on_sync_request(
        &mut self,
        from: OriginKey,
        digest: Digest,
        from_origin: Option<OriginKey>,
        settled: Option<Settled>,
    ) {
        // It reaches this node: no longer silent (a cut shorter than SWIM's down timeout
        // brings no MemberUp to clear it).
        if let Some(peer) = self.peers.get_mut(&from) {
            peer.unanswered_since = None;
        }
        let theirs = normalized_digest(&digest);
        let held = self.seen_count;
        let Some(origins) = self.answer_origins(&theirs, from_origin, settled.as_ref()) else {
            self.stats.sync_unsettled_out += 1;
            self.send(
                from,
                Message::SyncResponse {
                    events: Vec::new(),
                    resume: None,
                    held,
                    unsettled: settled.map(|s| s.key),
                    your_high: 0,
                },
            );
            return;
        };
        let mut events = Vec::new();
        let mut erased = Vec::new();
        let mut resume = None;
        let mut bytes = 0usize;
        // A far requester gets a round trip's worth more per answer: a node catching up
        // (restarted without its store, back from a long partition) over a 230 ms link
        // otherwise moves one batch per RTT, a fifth of what a 40 ms partner gives it.
        let limit = sync_batch_len(self.config.sync_batch_len_max, self.router.rtt_us(&from));
        for origin in origins {
            // Erased numbers count as events do: an answer names at most `limit` numbers
            // in all, whether as events or as Skips.
            let room = limit - events.len() - erased.len();
            let lacking = match self.lacking(&origin, &theirs, &from) {
                Lacking::Nothing => continue,
                Lacking::Fresh(count) => {
                    self.stats.sync_events_held_back += count.min(room as u64);
                    continue;
                }
                Lacking::Runs(lacking) => lacking,
            };
            let lacking_count = SeqRanges::covered(&lacking);
            let mut cut = false;
            // The first `room` numbers lacking, a run at a time (one read of the store
            // per run: a disk store reads and checks the run at once).
            'runs: for (first, last) in runs_within(&lacking, room) {
                let mut next = first;
                // Under the byte bound here (else the answer was cut): the store reads no
                // further than the event that reaches it.
                let bytes_left = BATCH_BYTES_MAX - bytes;
                for e in self.store.get_run(&origin, first, last, bytes_left) {
                    // Ascending and inside the run, as the trait asks: a store that broke
                    // that must not break the answer's bounds.
                    if e.seq() < next || e.seq() > last {
                        continue;
                    }
                    self.push_erased(origin, next..e.seq(), &mut erased);
                    next = e.seq().saturating_add(1);
                    bytes += answer_len(e.signed_bytes().len());
                    events.push(e);
                    if bytes >= BATCH_BYTES_MAX {
                        cut = true;
                        break 'runs;
                    }
                }
                self.push_erased(origin, next..=last, &mut erased);
            }
            if cut || lacking_count > room as u64 {
                resume = Some(origin);
                break;
            }
        }
        self.send_erased_skips(from, &erased);
        let events = self.allowed_vec(events, &from, false, true);
        self.stats.sync_events_sent += events.len() as u64;
        let your_high = self.your_high(&from, &theirs, from_origin);
        self.send(
            from,
            Message::SyncResponse {
                events,
                resume,
                held,
                unsettled: None,
                your_high,
            },
        );
        // After the answer: its events are what makes the numbers below them a hole there.
        let lost = self.own_lost(&theirs, from_origin, settled.is_some());
        if !lost.is_empty() {
            self.stats.lost_out = self
                .stats
                .lost_out
                .saturating_add(SeqRanges::covered(&lost));
            self.send(from, Message::Lost(lost));
        }
    }

    /// While this node's numbering is not known ([`super::MeshConfig::recover_own_numbers`]):
    /// asks `peer` for what it holds from this node's own origin on (the answer starts with
    /// this node's own events): the first [`OWN_ASKS_MAX`] members met, and a member of
    /// this node's own region besides while one is wanted ([`Node::own_region_wanted`]).
    /// Returns whether it asked.
    pub(super) fn ask_own_numbers(&mut self, peer: OriginKey) -> bool {
        if self.own_known || self.own_asked.iter().any(|a| a.peer == peer) {
            return false;
        }
        let region = self.in_own_region(&peer);
        if self.own_asked.len() >= OWN_ASKS_MAX && !(region && self.own_region_wanted()) {
            return false;
        }
        self.own_asked.push(OwnAsk {
            peer,
            pending: Some(self.now),
            first: self.now,
            region,
        });
        self.send_own_ask(peer);
        true
    }

    /// Sends `peer` an anti-entropy request from this node's own origin on.
    fn send_own_ask(&mut self, peer: OriginKey) {
        self.stats.own_asks += 1;
        let me = self.me.node_key();
        self.sync_with(peer, Some(me), true);
    }

    /// An anti-entropy answer from `from` arrived (its events stored), `resume` where the
    /// next request would go on. While this node's numbering is not known, an asked member's
    /// answer that got past this node's origin (`resume` beyond it, or none) has given
    /// every event of it that member holds; one cut inside it (the batch limit) has not,
    /// and the request resumes there. The numbering is known once [`OWN_ASKS_MAX`] members
    /// (every other member, if fewer) answered so: one member may be behind, or store none
    /// of its streams.
    ///
    /// `your_high`, the highest of this node's numbers the member has seen, counts from any
    /// answer of a member asked (one cut by the batch limit too): it may store none of
    /// this node's streams and so send none back, yet it (and every node it relays to)
    /// drops reused numbers as duplicates.
    fn own_answered(
        &mut self,
        from: OriginKey,
        resume: Option<OriginKey>,
        your_high: u64,
        held: u64,
    ) {
        if self.own_known {
            return;
        }
        // A member cannot have seen more of this node's numbers than it has seen numbers
        // at all (`held`, its count over every origin, in the same answer).
        let claim = your_high.min(held).min(OWN_HIGH_CLAIM_MAX);
        let asked = self.own_asked.iter().any(|a| a.peer == from);
        if claim > self.own_claimed && asked {
            self.own_claimed = claim;
            self.stats.own_high_claims += 1;
        }
        // More than it can be believed on: a lie, or a member that saw numbers past a
        // wall-clock floor this node took in an earlier life but not yet the hole below
        // them (its count is short of them) or took it (past the cap). Numbering past the
        // believed part could fall inside that hole, which peers took as lost: the floor.
        if your_high > claim && asked {
            self.own_claim_cut = true;
        }
        let me = self.me.node_key();
        if resume.is_some_and(|r| r <= me) {
            return;
        }
        let Some(asked) = self.own_asked.iter_mut().find(|a| a.peer == from) else {
            return;
        };
        asked.pending = None;
        self.own_check_known();
    }

    /// The numbering is known once one member asked answered, when the store held this
    /// node's own events at the start; else once [`OWN_ASKS_MAX`] members asked answered, or
    /// every other member, if fewer, from [`OWN_FEW_MEMBERS_WAIT_US`] after the start on
    /// (before, the members known are those met first, which may have lost their stores
    /// too), every member asked outside its region among them, and, while a member of its
    /// own region is up, one of those.
    fn own_check_known(&mut self) {
        // Nobody asked yet (no member met): never known on no one's word.
        if self.own_known || self.own_asked.is_empty() {
            return;
        }
        let answered = self
            .own_asked
            .iter()
            .filter(|a| a.pending.is_none())
            .count();
        // A store that held its own events at the start (a restart; an older backup at
        // worst): one member's answer brings back what it lacks and says how far the
        // numbers went. Waiting for every member asked held an ordinary restart up to the
        // whole wait when one of them had just crashed (it stays up in SWIM's view for
        // seconds).
        if self.own_held_at_start && answered > 0 {
            self.own_known = true;
            return;
        }
        if self
            .own_asked
            .iter()
            .any(|a| !a.region && a.pending.is_some())
        {
            return;
        }
        // A member of its own region too, while one is up: the members its last pushes
        // reached first, and often the only ones (a region cut off from the others one
        // way, or a crash in the middle of a partition). Three far members that had not
        // seen its last events made a node restarted over a lost store reuse them
        // (`many-faults` seeds 1045 and 1148: 24-27 numbers reused). One region member's
        // answer is enough; one silent for `OWN_REASK_US` (crashed, not yet declared down)
        // is passed over for the next, and a region silent through the whole wait leaves
        // the numbering unknown (the producer then takes the wall-clock floor).
        let me = self.me.node_key();
        let region_up: Vec<OriginKey> = self
            .regions
            .get(self.me.region.as_str())
            .map(|keys| keys.iter().copied().filter(|k| *k != me).collect())
            .unwrap_or_default();
        if !region_up.is_empty()
            && !self
                .own_asked
                .iter()
                .any(|a| a.region && a.pending.is_none())
        {
            if self.own_region_wanted() {
                let asked = &self.own_asked;
                if let Some(peer) = region_up
                    .into_iter()
                    .find(|k| !asked.iter().any(|a| a.peer == *k))
                {
                    self.ask_own_numbers(peer);
                }
            }
            return;
        }
        let others = self.members.keys().filter(|k| **k != me).count();
        let few_taken = self.now.saturating_sub(self.started_at) >= OWN_FEW_MEMBERS_WAIT_US;
        if answered >= OWN_ASKS_MAX || (few_taken && answered >= OWN_ASKS_MAX.min(others)) {
            self.own_known = true;
        }
    }

    /// Whether a member of this node's own region is to be asked for its own numbers: none
    /// asked answered, none asked is waiting less than [`OWN_REASK_US`] for its answer,
    /// and fewer than [`OWN_ASKS_MAX`] were asked.
    fn own_region_wanted(&self) -> bool {
        let mut asked = 0;
        for a in self.own_asked.iter().filter(|a| a.region) {
            if a.pending.is_none() || self.now.saturating_sub(a.first) < OWN_REASK_US {
                return false;
            }
            asked += 1;
        }
        asked < OWN_ASKS_MAX
    }

    /// Whether member `peer` is in this node's region.
    fn in_own_region(&self, peer: &OriginKey) -> bool {
        self.members
            .get(peer)
            .is_some_and(|m| m.region == self.me.region)
    }

    /// While this node's numbering is not known: asks again the members asked that have not
    /// answered within [`OWN_REASK_US`] (a request sent before the connection was up is
    /// lost), and, while fewer than [`OWN_ASKS_MAX`] were asked, the nearest member not
    /// asked yet (one that went down unanswered was dropped from the list).
    pub(super) fn ask_own_numbers_more(&mut self) {
        self.own_check_known();
        if self.own_known {
            return;
        }
        let (now, interval) = (self.now, OWN_REASK_US.min(self.config.sync_interval_us));
        let again: Vec<OriginKey> = self
            .own_asked
            .iter_mut()
            .filter_map(|a| {
                let at = a.pending.as_mut()?;
                (now.saturating_sub(*at) >= interval).then(|| {
                    *at = now;
                    a.peer
                })
            })
            .collect();
        for peer in again {
            self.send_own_ask(peer);
        }
        if self.own_asked.len() >= OWN_ASKS_MAX {
            return;
        }
        let next =
            self.near.by_rtt.iter().map(|&(_, k)| k).find(|k| {
                self.members.contains_key(k) && !self.own_asked.iter().any(|a| a.peer == *k)
            });
        if let Some(peer) = next {
            self.ask_own_numbers(peer);
        }
    }

    /// A member went down: if it was asked for this node's own numbers and has not
    /// answered, another is asked in its place ([`Node::ask_own_numbers`] at the next
    /// anti-entropy round).
    pub(super) fn own_ask_lost(&mut self, peer: &OriginKey) {
        if !self.own_known {
            self.own_asked
                .retain(|a| a.peer != *peer || a.pending.is_none());
        }
    }

    /// What this node knows of its own numbering: whether it is known (the members asked
    /// answered, one of them if its store held its own events at the start, or
    /// [`super::MeshConfig::recover_own_numbers`] is off), whether a member was asked, and
    /// the highest of its own numbers in use: the highest its store holds, or a member
    /// asked saw, if more. Its own signed events, held here, raise that number; of a
    /// peer's word only an asked member's answer does (not a digest, which any peer sends
    /// at any time), and at most to [`OWN_HIGH_CLAIM_MAX`], so a wrong one cannot push the
    /// numbering out of range. A producer numbers past it.
    pub fn own_numbers(&self) -> (bool, bool, u64) {
        let me = self.me.node_key();
        let held = self
            .store
            .ranges(&me)
            .and_then(|r| r.as_slice().last().map(|&(_, hi)| hi))
            .unwrap_or(0);
        // Known stays known: set once, by an answer or by the first timer after the wait
        // for fewer members ends (`handle_timeout`). Evaluated here, it came and went as
        // members came up and were asked.
        (
            self.own_known,
            !self.own_asked.is_empty(),
            held.max(self.own_claimed),
        )
    }

    /// Whether this node's producer numbers past the wall-clock floor
    /// ([`super::own_numbers_floor`]) rather than past [`Node::own_numbers`]' highest, once
    /// its wait for its numbering is over: when a member asked claimed more of its numbers
    /// than it can be believed on, or (`waited_out`: the wait ended without the numbering
    /// known) when its store held none of its own events at the start (an emptied data
    /// directory, or a first start: peers may hold any number of them). A store that held
    /// its own events numbers past them when no member answers (an ordinary restart cut off
    /// from its members; an older backup restored then reuses the numbers it lacks, the
    /// exposure the operator's guide warns of).
    pub fn own_floor_wanted(&self, waited_out: bool) -> bool {
        self.own_claim_cut || (waited_out && !self.own_known && !self.own_held_at_start)
    }

    /// The highest of the requester `from`'s own numbers this node has seen, for an answer
    /// to a request that starts at `from`'s origin (`from_origin`) whose digest (`theirs`,
    /// sorted) names fewer of them: a node asking for its own events after a start
    /// without its store ([`Node::ask_own_numbers`]); 0 otherwise (every other answer keeps
    /// its bytes).
    fn your_high(&self, from: &OriginKey, theirs: &Digest, from_origin: Option<OriginKey>) -> u64 {
        if from_origin != Some(*from) {
            return 0;
        }
        let seen = self
            .seen
            .get(from)
            .and_then(|s| s.ranges().as_slice().last().map(|&(_, hi)| hi))
            .unwrap_or(0);
        let named = theirs
            .binary_search_by(|(o, _)| o.cmp(from))
            .ok()
            .and_then(|at| theirs[at].1.iter().map(|&(_, hi)| hi).max())
            .unwrap_or(0);
        if seen > named { seen } else { 0 }
    }

    /// This node's own numbers the requester (its digest sorted, `theirs`) lacks and this
    /// node's store lacks too, below the highest it holds (or, when its store holds none of
    /// its own events, the numbers it has not seen below the highest it used), with those
    /// it took as lost itself (`own_gone`) and does not hold again: lost with a store the
    /// node restarted without, or dropped by a retention that keeps no record of them.
    /// The origin's word is the only one that can move its peers past such numbers when no
    /// node holds them ([`Message::Lost`]). Only for a request that covers this node's origin:
    /// not one resuming past it, nor one whose summary stands for it (it is not listed).
    fn own_lost(
        &self,
        theirs: &Digest,
        from_origin: Option<OriginKey>,
        summarised: bool,
    ) -> Vec<(u64, u64)> {
        let me = self.me.node_key();
        if from_origin.is_some_and(|f| f > me) {
            return Vec::new();
        }
        let listed = theirs.binary_search_by(|(o, _)| o.cmp(&me)).ok();
        if summarised && listed.is_none() {
            return Vec::new();
        }
        // A node whose store holds none of its own events (restarted over an emptied data
        // directory, none back yet): the numbers it has not seen since its start below the
        // highest it used are the ones it knows of no copy of (its publishes and the copies
        // that came back since are in its seen-set). Without this it never said Lost, and a
        // peer missing numbers nobody held any more waited for them for good (found by the
        // simulator once a restarted node numbers past what a relay saw).
        // The numbers it took as lost itself (`own_gone`) are lost too, less what it stores
        // again.
        let held = self.store.ranges(&me).filter(|r| r.range_count() > 0);
        let mut gaps = match held {
            Some(held) => held.holes(),
            None => match self.seen.get(&me) {
                Some(seen) => seen.ranges().holes(),
                None => return Vec::new(),
            },
        };
        if self.own_gone.range_count() > 0 {
            for (lo, hi) in self.own_gone.iter() {
                gaps.insert_range(lo, hi);
            }
            if let Some(held) = held {
                gaps = SeqRanges::from_ranges(gaps.difference_ranges(held.as_slice()));
            }
        }
        if gaps.range_count() == 0 {
            return Vec::new();
        }
        let lacking = match listed {
            None => gaps.difference_ranges(&[]),
            Some(at) if SeqRanges::is_normalized(&theirs[at].1) => {
                gaps.difference_ranges(&theirs[at].1)
            }
            Some(at) => gaps
                .difference_ranges(SeqRanges::from_ranges(theirs[at].1.iter().copied()).as_slice()),
        };
        lacking.into_iter().take(RANGES_PER_ORIGIN_MAX).collect()
    }
}

/// What a requester lacks of one origin ([`Node::lacking`]).
enum Lacking {
    /// Nothing this node holds.
    Nothing,
    /// Only numbers that reached this node lately (`SYNC_FRESH_US`), this many: most
    /// likely on their way to the requester, so not sent.
    Fresh(u64),
    /// These ranges, ascending.
    Runs(smallvec::SmallVec<[(u64, u64); 2]>),
}

/// The first `room` numbers of `lacking` (ascending ranges), as ranges.
fn runs_within(lacking: &[(u64, u64)], room: usize) -> impl Iterator<Item = (u64, u64)> + '_ {
    let mut left = room;
    lacking.iter().map_while(move |&(first, end)| {
        if left == 0 {
            return None;
        }
        let last = end.min(first.saturating_add(left as u64 - 1));
        left = left.saturating_sub(run_len(first, last));
        Some((first, last))
    })
}

/// How many numbers `first..=last` holds, as a length (saturating).
fn run_len(first: u64, last: u64) -> usize {
    usize::try_from(last - first + 1).unwrap_or(usize::MAX)
}

/// A request's digest sorted by origin, each origin once (a later duplicate replaces an
/// earlier one), at most [`DIGEST_ORIGINS_MAX`] entries. Digests arrive sorted and with
/// normalized ranges (they are built from ordered sets), so this is usually just a check
/// and a borrow: building a set per origin of every digest was most of a 1000-node
/// simulation's time.
fn normalized_digest(digest: &Digest) -> std::borrow::Cow<'_, Digest> {
    let listed = &digest[..digest.len().min(DIGEST_ORIGINS_MAX)];
    if listed.windows(2).all(|w| w[0].0 < w[1].0) {
        if listed.len() == digest.len() {
            return std::borrow::Cow::Borrowed(digest);
        }
        return std::borrow::Cow::Owned(listed.to_vec());
    }
    let mut sorted = listed.to_vec();
    sorted.sort_by_key(|entry| entry.0); // stable: duplicates keep their order
    let mut dedup: Digest = Vec::with_capacity(sorted.len());
    for entry in sorted {
        match dedup.last_mut() {
            Some(last) if last.0 == entry.0 => *last = entry,
            _ => dedup.push(entry),
        }
    }
    std::borrow::Cow::Owned(dedup)
}

/// Events in one anti-entropy answer to a requester `rtt_us` away: `base` up to
/// [`SYNC_BATCH_RTT_REF_US`], then in proportion to the RTT, at most
/// [`SYNC_BATCH_RTT_FACTOR_MAX`] times `base`.
pub(super) fn sync_batch_len(base: usize, rtt_us: Option<Micros>) -> usize {
    let base = base.max(1);
    let Some(rtt) = rtt_us else {
        return base;
    };
    let scaled = (base as u64).saturating_mul(rtt) / SYNC_BATCH_RTT_REF_US;
    let most = (base as u64).saturating_mul(SYNC_BATCH_RTT_FACTOR_MAX);
    usize::try_from(scaled.clamp(base as u64, most)).unwrap_or(base)
}
