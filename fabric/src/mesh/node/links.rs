//! Routing glue: RTT samples, push acknowledgements and failover, link probes and link-state
//! gossip (the algorithms are `route.rs`'s and `weft-routing`'s).

use std::collections::BTreeSet;
use std::sync::Arc;

use super::{Micros, Node};
use crate::envelope::OriginKey;
use crate::mesh::message::Message;
use crate::mesh::route::{self, LINK_RECORDS_PER_MESSAGE_MAX, LinkRecord, PROBES_OUT_MAX};
use crate::mesh::store::Store;

impl<S: Store> Node<S> {
    /// Takes one RTT sample ([`route::Router::rtt_sample`]) and keeps the members' order by
    /// estimate in step.
    pub(super) fn rtt_sample(&mut self, peer: OriginKey, rtt_us: Micros) {
        let sampled = self.router.rtt_sample(peer, rtt_us);
        match sampled.shifted {
            Some(route::Shift::Up) => self.stats.rtt_shifts_up += 1,
            Some(route::Shift::Down) => self.stats.rtt_shifts_down += 1,
            None => {}
        }
        if sampled.before != sampled.after && self.members.contains_key(&peer) {
            self.near.remove(sampled.before, peer);
            self.near.insert(sampled.after, peer);
        }
    }

    /// An acknowledgement: an RTT sample of the link at traffic rate (each push is sent
    /// once, so there is no retransmission ambiguity), and proof that the link works, also
    /// when it comes after its push timed out.
    pub(super) fn on_push_ack(&mut self, from: OriginKey, id: u64) {
        let sent = if self.router.pending.get(&id).is_some_and(|p| p.to == from) {
            // Acknowledged in time: its timeout would find nothing; drop it now (a quarter
            // of a simulation's timer steps were such timeouts).
            self.router.pending.remove(&id).map(|p| {
                self.timers.remove(&p.timer);
                p.sent_us
            })
        } else if self.router.late.get(&id).is_some_and(|(to, _)| *to == from) {
            self.router.late.remove(&id).map(|(_, sent)| sent)
        } else {
            None
        };
        let Some(sent) = sent else {
            return;
        };
        self.stats.pushes_acked += 1;
        self.rtt_sample(from, self.now.saturating_sub(sent).max(1));
        if let Some(region) = self.members.get(&from).map(|m| m.region.clone())
            && self.router.recover(&region)
        {
            self.stats.links_recovered += 1;
        }
    }

    /// A cross-region push went unacknowledged for its RTT timeout: mark the direct link
    /// to that region failed and send the events to the regions the push was for along
    /// the next-best path.
    pub(super) fn on_ack_timeout(&mut self, id: u64) {
        let Some(p) = self.router.pending.remove(&id) else {
            return;
        };
        if self.router.late.len() >= route::LATE_ACKS_MAX {
            self.router.late.pop_first();
        }
        self.router.late.insert(id, (p.to, p.sent_us));
        self.stats.failovers += 1;
        self.stats.failover_after_us_max = self
            .stats
            .failover_after_us_max
            .max(self.now.saturating_sub(p.sent_us));
        if self.router.fail(&p.region, self.now) {
            // Check the link at once: a lost acknowledgement recovers it within an RTT.
            self.probe(p.to);
        }
        if p.reroutes >= route::REROUTES_MAX {
            self.stats.reroute_unreachable += 1;
            return;
        }
        let dests = self.region_indices(
            std::iter::once(p.region.as_str()).chain(p.relay.iter().map(|h| h.region.as_str())),
        );
        let Some(first) = p.events.first().cloned() else {
            return;
        };
        let (plan, unreachable) = self.plan_for(&first, &dests);
        self.stats.reroute_unreachable += unreachable.len() as u64;
        for (root, hops) in plan {
            self.push_allowed((root, hops, true, p.reroutes + 1), &p.events, true, false);
        }
    }

    pub(super) fn probe(&mut self, target: OriginKey) {
        if self.router.probes.len() >= PROBES_OUT_MAX {
            return;
        }
        self.router.probe_nonce += 1;
        let nonce = self.router.probe_nonce;
        self.router.probes.insert(nonce, (target, self.now));
        self.stats.probes_sent += 1;
        let coord = self.router.vivaldi.coordinate();
        self.send(target, Message::Probe { nonce, coord });
    }

    #[inline(never)] // rare: see `on_sync_response`
    pub(super) fn on_probe_ack(
        &mut self,
        from: OriginKey,
        nonce: u64,
        coord: weft_routing::Coordinate,
    ) {
        let Some((to, sent)) = self.router.probes.remove(&nonce) else {
            return;
        };
        if to != from {
            return;
        }
        self.stats.probes_answered += 1;
        let rtt = self.now.saturating_sub(sent).max(1);
        let _ = self.router.vivaldi.update(&coord, rtt);
        self.rtt_sample(from, rtt);
        if let Some(region) = self.members.get(&from).map(|m| m.region.clone())
            && self.router.recover(&region)
        {
            self.stats.links_recovered += 1;
        }
    }

    /// Probes the entry member (the root of this node's own tree) of a few regions, round
    /// robin, and of every region whose direct link is marked failed.
    pub(super) fn send_probes(&mut self) {
        let me = self.me.node_key();
        // Forget probes that were never answered.
        let horizon = self.now.saturating_sub(10 * route::RTO_US_UNKNOWN);
        self.router.probes.retain(|_, (_, sent)| *sent >= horizon);
        let others: Vec<String> = self
            .regions
            .keys()
            .filter(|r| **r != self.me.region)
            .cloned()
            .collect();
        if others.is_empty() {
            return;
        }
        let mut pick: BTreeSet<String> = self.router.failed.keys().cloned().collect();
        for i in 0..self.config.probe_regions.min(others.len()) {
            pick.insert(others[(self.router.probe_cursor + i) % others.len()].clone());
        }
        self.router.probe_cursor =
            (self.router.probe_cursor + self.config.probe_regions) % others.len();
        for region in pick {
            if let Some(target) = self.region_root(&me, &region) {
                self.probe(target);
            }
        }
    }

    /// Republishes this node's link record when due, and gossips records to a few peers.
    pub(super) fn gossip_links(&mut self) {
        let me = self.me.node_key();
        let since = self
            .router
            .own_published_us
            .map(|t| self.now.saturating_sub(t));
        let due = match since {
            None => true,
            Some(age) => {
                self.router.own_forced
                    || (self.router.own_dirty && age >= self.config.link_report_min_us)
                    || age >= self.config.link_refresh_us
            }
        };
        if due {
            self.router.status.published =
                self.seen.get(&me).map_or(0, |s| s.ranges().contiguous());
            self.router.status.stored = self.store.len() as u64;
            self.router.status.missing = self.missing.len() as u64;
            self.router.status.policy_epoch = self.me.policy_epoch;
            let record = self.router.own_record(&self.me, &self.members);
            let _ = self.router.take_record(
                Arc::new(record),
                &self.members,
                &self.regions,
                &me,
                self.now,
            );
            self.router.own_dirty = false;
            self.router.own_forced = false;
            self.router.own_published_us = Some(self.now);
        }
        let candidates = self.live_count(false);
        if candidates == 0 {
            return;
        }
        let budget = (usize::BITS - candidates.leading_zeros()) + 1;
        let batch = self.router.gossip_batch(budget, &me);
        if batch.is_empty() {
            return;
        }
        // The round's records go as a digest to distinct random peers; each pulls those it
        // would take.
        let digest = route::Router::digest_of(&batch);
        for k in self.distinct_live(false, self.config.link_fanout) {
            self.send(k, Message::LinkDigest(digest.clone()));
        }
    }

    /// Hands the members that joined [`HANDOFF_DELAY_US`] ago this node's share of the
    /// link-state records, so a node that joins a large mesh (or restarts without its
    /// memory) holds the region graph's records within seconds. The rotation alone brings
    /// it about two records a second: two minutes and more for the 300 records of a
    /// 300-node mesh (docs/sim-speed.md). The records held, in key order, are cut in slices of
    /// one message each ([`route::LINK_RECORDS_PER_MESSAGE_MAX`]); slice `t` comes from the
    /// `t`-th member after the joiner in key order ([`Node::handoff_turn`]), so each record
    /// is handed over about once, every node holding the same sample.
    pub(super) fn send_handoffs(&mut self) {
        let due: Vec<OriginKey> = self
            .handoffs
            .iter()
            .filter(|(_, at)| **at <= self.now)
            .map(|(k, _)| *k)
            .collect();
        for joiner in due {
            self.handoffs.remove(&joiner);
            if !self.members.contains_key(&joiner) {
                continue;
            }
            let Some(turn) = self.handoff_turn(&joiner) else {
                continue;
            };
            let per = route::LINK_RECORDS_PER_MESSAGE_MAX;
            let slice: Vec<Arc<LinkRecord>> = self
                .shared_records()
                .skip(turn * per)
                .take(per)
                .filter(|(k, _)| **k != joiner)
                .map(|(_, r)| r.clone())
                .collect();
            if !slice.is_empty() {
                self.stats.link_handoffs_sent += 1;
                self.send(joiner, Message::Links(slice));
            }
        }
    }

    /// The link records every node holds alike, in key order: all this node holds, less
    /// its own when it is outside its region's sample (the others do not keep it).
    fn shared_records(&self) -> impl Iterator<Item = (&OriginKey, &Arc<LinkRecord>)> {
        let me = self.me.node_key();
        let own_shared = self
            .regions
            .get(self.me.region.as_str())
            .is_some_and(|list| route::sampled(list, &me));
        self.router
            .record_arcs()
            .filter(move |(k, _)| **k != me || own_shared)
    }

    /// Which slice of the link-state records this node hands to `joiner`: its place among
    /// the members after the joiner in key order (wrapping), if it is one of the first as
    /// many as there are slices of the records it holds.
    pub(super) fn handoff_turn(&self, joiner: &OriginKey) -> Option<usize> {
        use std::ops::Bound::{Excluded, Unbounded};
        let me = self.me.node_key();
        let slices = self
            .shared_records()
            .count()
            .div_ceil(route::LINK_RECORDS_PER_MESSAGE_MAX);
        if *joiner == me || slices == 0 {
            return None;
        }
        let turn = if me > *joiner {
            self.members
                .range((Excluded(*joiner), Excluded(me)))
                .take(slices)
                .count()
        } else {
            let after = self
                .members
                .range((Excluded(*joiner), Unbounded))
                .take(slices)
                .count();
            after
                + self
                    .members
                    .range(..me)
                    .take(slices - after.min(slices))
                    .count()
        };
        (turn < slices).then_some(turn)
    }

    #[inline(never)] // rare: see `on_sync_response`
    pub(super) fn on_links(&mut self, records: Vec<Arc<LinkRecord>>) {
        let me = self.me.node_key();
        for record in records.into_iter().take(LINK_RECORDS_PER_MESSAGE_MAX) {
            match self
                .router
                .take_record(record, &self.members, &self.regions, &me, self.now)
            {
                Ok(true) => self.stats.link_records_new += 1,
                Ok(false) => {}
                Err(_) => self.stats.link_records_refused += 1,
            }
        }
    }

    /// The first [`LINK_RECORDS_PER_MESSAGE_MAX`] entries of a link-state digest or pull,
    /// the rest counted in [`Stats::link_entries_over_limit`].
    fn link_entries_read<'a, T>(&mut self, entries: &'a [T]) -> &'a [T] {
        let read = entries.len().min(LINK_RECORDS_PER_MESSAGE_MAX);
        self.stats.link_entries_over_limit += (entries.len() - read) as u64;
        &entries[..read]
    }

    /// A peer's link-state digest: pulls the records this node would take, at most
    /// [`LINK_RECORDS_PER_MESSAGE_MAX`] entries read (the rest counted in
    /// [`Stats::link_entries_over_limit`]).
    #[inline(never)] // rare: see `on_sync_response`
    pub(super) fn on_link_digest(&mut self, from: OriginKey, entries: Vec<(OriginKey, u64)>) {
        let read = self.link_entries_read(&entries);
        let me = self.me.node_key();
        let pulls = self
            .router
            .pulls_for(read, &self.members, &self.regions, &me, self.now);
        if !pulls.is_empty() {
            self.stats.link_pulls_sent += 1;
            self.send(from, Message::LinkPull(pulls));
        }
    }

    /// A peer's pull: the records asked for that this node holds, in one message (at most
    /// [`LINK_RECORDS_PER_MESSAGE_MAX`] keys read, the rest counted in
    /// [`Stats::link_entries_over_limit`]).
    #[inline(never)] // rare: see `on_sync_response`
    pub(super) fn on_link_pull(&mut self, from: OriginKey, keys: Vec<OriginKey>) {
        // Each record once, however often it is named (a key repeated 16 times would
        // otherwise draw 16 copies).
        let mut read: Vec<OriginKey> = Vec::with_capacity(LINK_RECORDS_PER_MESSAGE_MAX);
        for k in self.link_entries_read(&keys) {
            if !read.contains(k) {
                read.push(*k);
            }
        }
        let records = self.router.records_of(&read);
        if !records.is_empty() {
            self.stats.link_pull_records_sent += records.len() as u64;
            self.send(from, Message::Links(records));
        }
    }
}
