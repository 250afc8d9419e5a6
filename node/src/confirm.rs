//! The book of events awaiting `ack=regions:N` (N > 1): the regions that have confirmed
//! each, the members asked and those that failed, and whom to ask next.
//!
//! The driver feeds it the core's confirmable pushes ([`Confirmations::asked_by_push`]),
//! the peers' answers ([`Confirmations::confirmed`], [`Confirmations::elsewhere`]) and the
//! transport's failures, and sends the confirmable copies it names ([`Copies`]). It holds
//! no transport and no store: the members come through a [`Roster`], so each rule is tested
//! here on its own.
//!
//! The rules, per watched event and region of another member:
//! - a region is **served** while it has confirmed, or while a member of it was asked and
//!   may still answer (up, not failed, not known to store none of the stream:
//!   `not_storing`, not silent through a half-way round);
//! - after a step's pushes, every region not served gets a copy at its next member
//!   ([`Confirmations::around_relays`]): a region routing reaches through a relay region,
//!   and one whose tree member is known to store none of the stream (it would answer
//!   without the event, one round trip later);
//! - a member's failure (not sent, or answered without the event) asks the region's next
//!   member, unless the region is served by another, or the event is already confirmed in
//!   as many regions as its publishes wait for (another event of the batch holds them);
//! - half the ack timeout after a publish, every region that has not confirmed is asked at
//!   its next member whatever it was asked before ([`Confirmations::again`]): an
//!   unreachable member that nothing reports (a blackhole) looks like one that may answer,
//!   so the members asked there until then are presumed silent from then on;
//! - each member is asked once per event.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use weft_fabric::mesh::Micros;
use weft_fabric::{Event, EventId, OriginKey, StreamName};

use crate::not_storing::NotStoring;

/// Confirmable copies to send: the events for each member.
pub(crate) type Copies = BTreeMap<OriginKey, Vec<Arc<Event>>>;

/// The members a confirmation can be asked of.
pub(crate) trait Roster {
    /// Every up member with its region (empty when not known yet), in key order.
    fn members(&self) -> impl Iterator<Item = (OriginKey, &str)>;
    /// The measured round-trip time to `member`, if any.
    fn rtt_us(&self, member: &OriginKey) -> Option<Micros>;
    /// Whether the replication filter (residency) lets `member` hold `event`: a region the
    /// policy keeps an event out of gets no copy, and cannot confirm.
    fn may_hold(&self, event: &Event, member: &OriginKey) -> bool;
}

/// One watched event.
#[derive(Debug, Default)]
struct Watch {
    /// Regions where it is confirmed committed (this node's own from the publish).
    regions: BTreeSet<String>,
    /// Publishes waiting for it: the same event can be published twice at once (a retried
    /// pre-signed envelope, a CloudEvent answered by idempotency), and the first answer
    /// must not take the regions from the second.
    refs: u32,
    /// The most regions any of its publishes waits for (kept while any waits: a second
    /// publish waiting for fewer is answered as soon as it has them).
    want: usize,
    /// The event, for copies sent after the publish step.
    event: Option<Arc<Event>>,
    /// Members sent the event to confirm (the core's direct pushes and the copies).
    asked: BTreeSet<OriginKey>,
    /// Members whose copy did not get through or that answered without it: a second
    /// report of one is not acted on again.
    failed: BTreeSet<OriginKey>,
    /// Members asked before the half-way round that had not answered by then: presumed
    /// silent (a blackhole, a lost failure report), they no longer hold their region for
    /// a failure of another member; a late answer of theirs still counts.
    silent: BTreeSet<OriginKey>,
}

/// The book (see the module's doc).
#[derive(Debug)]
pub(crate) struct Confirmations {
    /// This node's region: confirmed by the publish's own commit, never asked.
    my_region: String,
    watches: BTreeMap<EventId, Watch>,
    /// Members that answered without a stream's events: asked last for that stream.
    not_storing: NotStoring,
}

impl Confirmations {
    pub(crate) fn new(my_region: &str) -> Self {
        Confirmations {
            my_region: my_region.to_string(),
            watches: BTreeMap::new(),
            not_storing: NotStoring::default(),
        }
    }

    /// A publish waits for `want` regions (this node's counts) for each of `ids`;
    /// `events` holds those it has (for copies sent later).
    pub(crate) fn watch(
        &mut self,
        ids: &[EventId],
        events: &BTreeMap<EventId, Arc<Event>>,
        want: usize,
    ) {
        for id in ids {
            let w = self.watches.entry(*id).or_default();
            w.regions.insert(self.my_region.clone());
            w.refs += 1;
            w.want = w.want.max(want);
            if w.event.is_none() {
                w.event = events.get(id).cloned();
            }
        }
    }

    /// Whether `id` is confirmed in at least `n` regions.
    pub(crate) fn confirmed_in(&self, id: &EventId, n: usize) -> bool {
        self.watches.get(id).is_some_and(|w| w.regions.len() >= n)
    }

    /// The regions `id` is confirmed in, for a publish's answer. `watching`: the publish
    /// waits for confirmations (N > 1) and so counts among the event's publishes; the last
    /// of them takes the entry.
    pub(crate) fn release(&mut self, id: &EventId, watching: bool) -> BTreeSet<String> {
        let last = watching
            && match self.watches.get_mut(id) {
                Some(w) if w.refs > 1 => {
                    w.refs -= 1;
                    false
                }
                _ => true,
            };
        if last {
            self.watches
                .remove(id)
                .map(|w| w.regions)
                .unwrap_or_default()
        } else {
            self.watches
                .get(id)
                .map(|w| w.regions.clone())
                .unwrap_or_default()
        }
    }

    /// A member of `region` answered that it has committed `ids`.
    pub(crate) fn confirmed(&mut self, ids: impl IntoIterator<Item = EventId>, region: &str) {
        for id in ids {
            if let Some(w) = self.watches.get_mut(&id) {
                w.regions.insert(region.to_string());
            }
        }
    }

    /// `member` answered a confirmable push without an event of `stream`.
    pub(crate) fn learn_not_storing(
        &mut self,
        member: OriginKey,
        stream: &StreamName,
        now: Instant,
    ) {
        self.not_storing.learn(member, stream, now);
    }

    /// The core pushes `events` to `to`: the watched ones count `to` as asked (a push of
    /// those travels as a confirmable one). Whether there were any; each is added to
    /// `pushed`, for [`Confirmations::around_relays`] after the step's pushes.
    pub(crate) fn asked_by_push(
        &mut self,
        to: OriginKey,
        events: &[Arc<Event>],
        pushed: &mut BTreeMap<EventId, Arc<Event>>,
    ) -> bool {
        let mut any = false;
        for e in events {
            if let Some(w) = self.watches.get_mut(&e.id()) {
                w.asked.insert(to);
                any = true;
                pushed.entry(e.id()).or_insert_with(|| e.clone());
            }
        }
        any
    }

    /// Copies of `events` (watched ones still short of the regions their publishes wait
    /// for; others are passed over) for every region not served (see the module's doc),
    /// each at the region's next member; and how many of
    /// them went to a region whose asked member is known to store none of the stream
    /// (a retry, counted as such), the others to regions nobody was asked in (behind a
    /// relay region).
    pub(crate) fn around_relays(
        &mut self,
        events: impl IntoIterator<Item = Arc<Event>>,
        roster: &impl Roster,
        now: Instant,
    ) -> (Copies, u64) {
        let regions = self.other_regions(roster);
        let mut copies = Copies::new();
        let mut retries = 0;
        for event in events {
            let id = event.id();
            let Some(w) = self.watches.get(&id).filter(|w| w.regions.len() < w.want) else {
                continue;
            };
            let mut to = Vec::new();
            for region in &regions {
                if !w.regions.contains(*region)
                    && !self.served(w, region, event.stream(), roster, now)
                    && let Some(k) = self.next(w, region, &event, roster, now)
                {
                    to.push(k);
                    let stream = event.stream();
                    retries += u64::from(roster.members().any(|(m, r)| {
                        r == *region
                            && w.asked.contains(&m)
                            && self.not_storing.known(&m, stream, now)
                    }));
                }
            }
            self.ask(&id, &event, to, &mut copies);
        }
        (copies, retries)
    }

    /// Half the ack timeout after a publish: each of `ids` confirmed in fewer regions than
    /// its publishes wait for (the most of them, `want`) is copied to the next member of
    /// every region that has not confirmed it, whatever was asked there before.
    pub(crate) fn again(
        &mut self,
        ids: &BTreeSet<EventId>,
        roster: &impl Roster,
        now: Instant,
    ) -> Copies {
        let regions = self.other_regions(roster);
        let mut copies = Copies::new();
        for id in ids {
            let Some(w) = self.watches.get(id).filter(|w| w.regions.len() < w.want) else {
                continue;
            };
            let Some(event) = w.event.clone() else {
                continue;
            };
            let open: Vec<&str> = regions
                .iter()
                .copied()
                .filter(|r| !w.regions.contains(*r))
                .collect();
            let silent: Vec<OriginKey> = roster
                .members()
                .filter(|(k, r)| open.contains(r) && w.asked.contains(k) && !w.failed.contains(k))
                .map(|(k, _)| k)
                .collect();
            let to: Vec<OriginKey> = open
                .iter()
                .filter_map(|r| self.next(w, r, &event, roster, now))
                .collect();
            if let Some(w) = self.watches.get_mut(id) {
                w.silent.extend(silent);
            }
            self.ask(id, &event, to, &mut copies);
        }
        copies
    }

    /// `failed` (of `region`) did not get `events` or answered without them: each still
    /// needing `region` is copied to the region's next member. A member's failure is acted
    /// on once per event.
    pub(crate) fn elsewhere(
        &mut self,
        failed: OriginKey,
        region: &str,
        events: Vec<Arc<Event>>,
        roster: &impl Roster,
        now: Instant,
    ) -> Copies {
        let mut copies = Copies::new();
        for event in events {
            let id = event.id();
            let Some(w) = self.watches.get_mut(&id) else {
                continue;
            };
            if w.regions.contains(region) || !w.failed.insert(failed) {
                continue;
            }
            w.asked.insert(failed);
            w.event.get_or_insert_with(|| event.clone());
            let w = &self.watches[&id];
            if w.regions.len() >= w.want || self.served(w, region, event.stream(), roster, now) {
                continue;
            }
            let to = self.next(w, region, &event, roster, now);
            self.ask(&id, &event, to, &mut copies);
        }
        copies
    }

    /// The regions of the other up members, each once, in order.
    fn other_regions<'r>(&self, roster: &'r impl Roster) -> BTreeSet<&'r str> {
        roster
            .members()
            .map(|(_, r)| r)
            .filter(|r| !r.is_empty() && *r != self.my_region)
            .collect()
    }

    /// Whether a member of `region` was asked for the event and may still answer: up (in
    /// the roster), not failed, not known to store none of `stream`, not presumed silent.
    fn served(
        &self,
        w: &Watch,
        region: &str,
        stream: &StreamName,
        roster: &impl Roster,
        now: Instant,
    ) -> bool {
        roster.members().any(|(k, r)| {
            r == region
                && w.asked.contains(&k)
                && !w.failed.contains(&k)
                && !w.silent.contains(&k)
                && !self.not_storing.known(&k, stream, now)
        })
    }

    /// The member of `region` not asked yet that may hold `event`, first by: not known to
    /// store none of its stream (an order, not a filter: such an answer can also come from
    /// a full store, and a region's only member is still asked), the nearest, the key.
    fn next(
        &self,
        w: &Watch,
        region: &str,
        event: &Event,
        roster: &impl Roster,
        now: Instant,
    ) -> Option<OriginKey> {
        roster
            .members()
            .filter(|(k, r)| *r == region && !w.asked.contains(k) && roster.may_hold(event, k))
            .map(|(k, _)| {
                (
                    self.not_storing.known(&k, event.stream(), now),
                    roster.rtt_us(&k).unwrap_or(Micros::MAX),
                    k,
                )
            })
            .min()
            .map(|(_, _, k)| k)
    }

    /// Marks `to` asked for `id` and adds the copies.
    fn ask(
        &mut self,
        id: &EventId,
        event: &Arc<Event>,
        to: impl IntoIterator<Item = OriginKey>,
        copies: &mut Copies,
    ) {
        let Some(w) = self.watches.get_mut(id) else {
            return;
        };
        for k in to {
            if w.asked.insert(k) {
                copies.entry(k).or_default().push(event.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Members: key byte, region, RTT in ms, whether the replication filter lets them
    /// hold the events.
    struct TestRoster(Vec<(OriginKey, &'static str, Micros, bool)>);

    impl Roster for TestRoster {
        fn members(&self) -> impl Iterator<Item = (OriginKey, &str)> {
            self.0.iter().map(|(k, r, _, _)| (*k, *r))
        }
        fn rtt_us(&self, member: &OriginKey) -> Option<Micros> {
            self.0.iter().find(|m| m.0 == *member).map(|m| m.2)
        }
        fn may_hold(&self, _: &Event, member: &OriginKey) -> bool {
            self.0.iter().any(|m| m.0 == *member && m.3)
        }
    }

    fn key(b: u8) -> OriginKey {
        OriginKey([b; 32])
    }

    /// eu (this node's region); us-1 (near) and us-2 (far); ap-1 (near) and ap-2 (far).
    const US1: u8 = 11;
    const US2: u8 = 12;
    const AP1: u8 = 21;
    const AP2: u8 = 22;

    fn roster() -> TestRoster {
        TestRoster(vec![
            (key(US1), "us", 80_000, true),
            (key(US2), "us", 90_000, true),
            (key(AP1), "ap", 200_000, true),
            (key(AP2), "ap", 210_000, true),
        ])
    }

    fn event(seq: u64) -> Arc<Event> {
        crate::test_support::signed("orders.eu", seq, b"{}".to_vec())
    }

    /// A book watching `events` for `want` regions.
    fn watching(events: &[Arc<Event>], want: usize) -> Confirmations {
        let mut book = Confirmations::new("eu");
        let ids: Vec<EventId> = events.iter().map(|e| e.id()).collect();
        let held = events.iter().map(|e| (e.id(), e.clone())).collect();
        book.watch(&ids, &held, want);
        book
    }

    /// The copies as (member byte, event seqs), for assertions.
    fn sent(copies: &Copies) -> Vec<(u8, Vec<u64>)> {
        copies
            .iter()
            .map(|(k, es)| (k.0[0], es.iter().map(|e| e.seq()).collect()))
            .collect()
    }

    /// The core's tree push reached a region's member: that region waits for its answer;
    /// a region routing reaches only through a relay gets a copy at its nearest member.
    #[test]
    fn a_pushed_region_waits_for_its_member_and_one_behind_a_relay_gets_a_copy() {
        let e = event(1);
        let mut book = watching(std::slice::from_ref(&e), 2);
        let mut pushed = BTreeMap::new();
        assert!(book.asked_by_push(key(US1), std::slice::from_ref(&e), &mut pushed));
        let (copies, retries) = book.around_relays(pushed.into_values(), &roster(), Instant::now());
        assert_eq!(sent(&copies), vec![(AP1, vec![1])]);
        assert_eq!(retries, 0, "a region nobody was asked in is no retry");
        // A push of events nobody watches is not a confirmable one.
        let mut pushed = BTreeMap::new();
        assert!(!book.asked_by_push(key(US1), &[event(2)], &mut pushed));
        assert!(pushed.is_empty());
    }

    /// A region's tree member known to store none of the stream would answer without the
    /// event one round trip later: the region's next member gets a copy at once, and the
    /// tree member's answer without it then asks nobody more. Before, every event of the
    /// stream waited for that answer before the next member was asked.
    #[test]
    fn a_tree_member_known_to_store_none_of_the_stream_does_not_hold_its_region() {
        let now = Instant::now();
        let us3 = 13;
        let mut three_in_us = roster();
        three_in_us.0.push((key(us3), "us", 100_000, true));
        let e = event(1);
        let mut book = watching(std::slice::from_ref(&e), 2);
        book.learn_not_storing(key(US1), e.stream(), now);
        let mut pushed = BTreeMap::new();
        book.asked_by_push(key(US1), std::slice::from_ref(&e), &mut pushed);
        book.asked_by_push(key(AP1), std::slice::from_ref(&e), &mut pushed);
        let (copies, retries) = book.around_relays(pushed.into_values(), &three_in_us, now);
        assert_eq!(sent(&copies), vec![(US2, vec![1])]);
        assert_eq!(retries, 1);
        // us-1's answer without the event: us-2 was asked and may answer.
        let copies = book.elsewhere(key(US1), "us", vec![e.clone()], &three_in_us, now);
        assert!(copies.is_empty(), "{:?}", sent(&copies));
        // us-2 does not get through: us-3 is asked.
        let copies = book.elsewhere(key(US2), "us", vec![e.clone()], &three_in_us, now);
        assert_eq!(sent(&copies), vec![(us3, vec![1])]);
    }

    /// A member's failure asks its region's next member, once per failure.
    #[test]
    fn a_failed_member_hands_its_region_to_the_next_once() {
        let now = Instant::now();
        let e = event(1);
        let mut book = watching(std::slice::from_ref(&e), 3);
        let mut pushed = BTreeMap::new();
        book.asked_by_push(key(US1), std::slice::from_ref(&e), &mut pushed);
        book.asked_by_push(key(AP1), std::slice::from_ref(&e), &mut pushed);
        assert!(
            book.around_relays(pushed.into_values(), &roster(), now)
                .0
                .is_empty()
        );
        let copies = book.elsewhere(key(US1), "us", vec![e.clone()], &roster(), now);
        assert_eq!(sent(&copies), vec![(US2, vec![1])]);
        // The same failure reported again is not acted on again.
        let copies = book.elsewhere(key(US1), "us", vec![e.clone()], &roster(), now);
        assert!(copies.is_empty());
        // A region that has confirmed needs nobody more.
        book.confirmed([e.id()], "ap");
        let copies = book.elsewhere(key(AP1), "ap", vec![e.clone()], &roster(), now);
        assert!(copies.is_empty());
        assert!(!book.confirmed_in(&e.id(), 3));
        book.confirmed([e.id()], "us");
        assert!(book.confirmed_in(&e.id(), 3));
    }

    /// An event of a batch already confirmed in as many regions as its publish waits for
    /// is not copied again when a member of a third region fails, while another event of
    /// the batch still waits (the publish is still open). Before, it was.
    #[test]
    fn an_event_confirmed_in_enough_regions_is_not_copied_while_its_batch_waits() {
        let now = Instant::now();
        let (a, b) = (event(1), event(2));
        let mut book = watching(&[a.clone(), b.clone()], 2);
        let mut pushed = BTreeMap::new();
        book.asked_by_push(key(US1), &[a.clone(), b.clone()], &mut pushed);
        book.asked_by_push(key(AP1), &[a.clone(), b.clone()], &mut pushed);
        book.around_relays(pushed.into_values(), &roster(), now);
        // us-1 confirmed a only (its store refused b, say); ap-1 is unreachable.
        book.confirmed([a.id()], "us");
        let copies = book.elsewhere(key(AP1), "ap", vec![a.clone(), b.clone()], &roster(), now);
        assert_eq!(sent(&copies), vec![(AP2, vec![2])]);
        // Nor when the mesh pushes it again later (a GRAFT), in a step of its own.
        let mut pushed = BTreeMap::new();
        book.asked_by_push(key(US2), std::slice::from_ref(&a), &mut pushed);
        let (copies, _) = book.around_relays(pushed.into_values(), &roster(), now);
        assert!(copies.is_empty(), "{:?}", sent(&copies));
    }

    /// Half the ack timeout on, each region not confirmed is asked at its next member even
    /// while an earlier one may still answer (nothing reports a blackhole); a confirmed
    /// region and an event confirmed in enough regions are not.
    #[test]
    fn the_half_way_round_asks_past_members_that_may_still_answer() {
        let now = Instant::now();
        let (a, b) = (event(1), event(2));
        let mut book = watching(&[a.clone(), b.clone()], 3);
        let mut pushed = BTreeMap::new();
        book.asked_by_push(key(US1), &[a.clone(), b.clone()], &mut pushed);
        book.asked_by_push(key(AP1), &[a.clone(), b.clone()], &mut pushed);
        book.around_relays(pushed.into_values(), &roster(), now);
        book.confirmed([a.id(), b.id()], "ap");
        book.confirmed([b.id()], "us");
        let ids = [a.id(), b.id()].into_iter().collect();
        let copies = book.again(&ids, &roster(), now);
        assert_eq!(sent(&copies), vec![(US2, vec![1])]);
        // Every member of the region asked: nothing more to ask.
        assert!(book.again(&ids, &roster(), now).is_empty());
    }

    /// A member asked before the half-way round and silent through it (a blackhole: nothing
    /// reports it) no longer holds its region: when the member the round asked fails too,
    /// the next is asked at once. Before, the silent one kept the region served, and the
    /// publish waited out its ack timeout.
    #[test]
    fn a_member_silent_through_the_half_way_round_does_not_hold_its_region() {
        let now = Instant::now();
        let us3 = 13;
        let mut three_in_us = roster();
        three_in_us.0.push((key(us3), "us", 100_000, true));
        let e = event(1);
        let mut book = watching(std::slice::from_ref(&e), 3);
        let mut pushed = BTreeMap::new();
        book.asked_by_push(key(US1), std::slice::from_ref(&e), &mut pushed);
        book.asked_by_push(key(AP1), std::slice::from_ref(&e), &mut pushed);
        book.around_relays(pushed.into_values(), &three_in_us, now);
        book.confirmed([e.id()], "ap");
        let ids = [e.id()].into_iter().collect();
        let copies = book.again(&ids, &three_in_us, now);
        assert_eq!(sent(&copies), vec![(US2, vec![1])]);
        let copies = book.elsewhere(key(US2), "us", vec![e.clone()], &three_in_us, now);
        assert_eq!(sent(&copies), vec![(us3, vec![1])]);
        // us-1's answer, late, still counts.
        book.confirmed([e.id()], "us");
        assert!(book.confirmed_in(&e.id(), 3));
    }

    /// A member asked that is no longer up (not in the roster) holds no region.
    #[test]
    fn a_member_gone_down_does_not_hold_its_region() {
        let now = Instant::now();
        let e = event(1);
        let mut book = watching(std::slice::from_ref(&e), 2);
        let mut pushed = BTreeMap::new();
        book.asked_by_push(key(US1), std::slice::from_ref(&e), &mut pushed);
        let mut us1_down = roster();
        us1_down.0.retain(|m| m.0 != key(US1));
        let (copies, _) = book.around_relays(pushed.into_values(), &us1_down, now);
        assert_eq!(sent(&copies), vec![(US2, vec![1]), (AP1, vec![1])]);
    }

    /// Two publishes of one event waiting for 3 and 2 regions: a failure is acted on until
    /// the event has 3 (the most), not 2 (the last watch).
    #[test]
    fn an_event_waits_for_the_most_regions_any_of_its_publishes_wants() {
        let now = Instant::now();
        let e = event(1);
        let mut book = watching(std::slice::from_ref(&e), 3);
        book.watch(&[e.id()], &BTreeMap::new(), 2);
        let mut pushed = BTreeMap::new();
        book.asked_by_push(key(US1), std::slice::from_ref(&e), &mut pushed);
        book.asked_by_push(key(AP1), std::slice::from_ref(&e), &mut pushed);
        book.around_relays(pushed.into_values(), &roster(), now);
        book.confirmed([e.id()], "us");
        let copies = book.elsewhere(key(AP1), "ap", vec![e.clone()], &roster(), now);
        assert_eq!(sent(&copies), vec![(AP2, vec![1])]);
    }

    /// Nearest first, but a member known to store none of the stream last; such a member
    /// is still asked when it is the region's only one left. A member the replication
    /// filter keeps the event from is never asked.
    #[test]
    fn members_are_ranked_by_what_they_store_then_by_distance() {
        let now = Instant::now();
        let e = event(1);
        let mut book = watching(std::slice::from_ref(&e), 2);
        book.learn_not_storing(key(AP1), e.stream(), now);
        let copies = book.around_relays([e.clone()], &roster(), now).0;
        assert_eq!(sent(&copies), vec![(US1, vec![1]), (AP2, vec![1])]);
        let copies = book.elsewhere(key(AP2), "ap", vec![e.clone()], &roster(), now);
        assert_eq!(sent(&copies), vec![(AP1, vec![1])]);
        // ap kept out by the policy: no copy there.
        let mut kept_out = roster();
        for m in &mut kept_out.0 {
            m.3 = m.1 != "ap";
        }
        let f = event(2);
        let mut book = watching(std::slice::from_ref(&f), 2);
        let copies = book.around_relays([f.clone()], &kept_out, now).0;
        assert_eq!(sent(&copies), vec![(US1, vec![2])]);
    }

    /// Two publishes of one event at once: the first answered keeps the entry for the
    /// second, whose answer takes it; the regions confirmed count for both. A publish not
    /// watching (N of 1) only reads.
    #[test]
    fn the_last_publish_of_an_event_takes_its_entry() {
        let e = event(1);
        let mut book = watching(std::slice::from_ref(&e), 2);
        book.watch(&[e.id()], &BTreeMap::new(), 2);
        book.confirmed([e.id()], "us");
        let both: BTreeSet<String> = ["eu", "us"].map(String::from).into();
        assert_eq!(book.release(&e.id(), false), both);
        assert_eq!(book.release(&e.id(), true), both);
        assert!(book.confirmed_in(&e.id(), 2));
        assert_eq!(book.release(&e.id(), true), both);
        assert!(!book.confirmed_in(&e.id(), 1));
        // A second publish of a held event reaches regions already served only once.
        let mut book = watching(std::slice::from_ref(&e), 2);
        assert_eq!(
            book.around_relays([e.clone()], &roster(), Instant::now())
                .0
                .len(),
            2
        );
        book.watch(&[e.id()], &BTreeMap::new(), 2);
        assert!(
            book.around_relays([e.clone()], &roster(), Instant::now())
                .0
                .is_empty()
        );
    }
}
