//! Membership: applying SWIM's changes to the node's view (members, regions, the lazy peers), the
//! dissemination view's refresh, and catching up on the membership after a join or a heal.

use std::sync::Arc;

use foca::OwnedNotification;
use rand_core::Rng;

use super::{
    AppEvent, CATCH_UP_ANNOUNCES, CATCH_UP_TICKS_MAX, DOWN_ANNOUNCE_MAX, HANDOFF_DELAY_US,
    HANDOFFS_LEN_MAX, LAZY_MAX, Micros, Node, RETURNED_LEN_MAX, RTT_HYSTERESIS_PCT,
    SYNC_BACK_DELAY_US, SwimRuntime, Timer,
};
use crate::envelope::OriginKey;
use crate::mesh::member::{MemberInfo, SwimId};
use crate::mesh::message::Message;
use crate::mesh::route::{self, rank};
use crate::mesh::store::Store;

impl<S: Store> Node<S> {
    pub(super) fn apply_swim(&mut self, rt: SwimRuntime) {
        // Membership notes (and only they) change the view here.
        if !rt.notes.is_empty() {
            self.view_version += 1;
        }
        for (to, data) in rt.sends {
            self.send(OriginKey(to.key), Message::Swim(data));
        }
        for (timer, after) in rt.timers {
            let at = self.now + u64::try_from(after.as_micros()).unwrap_or(u64::MAX / 2);
            self.schedule(at, Timer::Swim(timer));
        }
        let mut changed = false;
        for note in rt.notes {
            match note {
                OwnedNotification::MemberUp(m) => {
                    changed = true;
                    let key = OriginKey(m.key);
                    self.member_up(m.shared());
                    if self.router.failed.contains_key(m.region.as_str()) {
                        // Back after a partition or outage: check the link now rather
                        // than at the next probe tick.
                        self.probe(key);
                    }
                    self.push_app(AppEvent::MemberUp(Box::new(m.info().clone())));
                }
                OwnedNotification::MemberDown(m) => {
                    let key = OriginKey(m.key);
                    // A stale generation going down while a newer one is up changes nothing.
                    if self
                        .members
                        .get(&key)
                        .is_some_and(|cur| cur.generation <= m.generation)
                    {
                        changed = true;
                        if let Some(old) = self.members.remove(&key) {
                            self.region_remove(&old.region, &key);
                            self.near.remove(self.router.rtt_us(&key), key);
                        }
                        self.lazy.remove(&key);
                        self.router.member_down(&key);
                        self.own_ask_lost(&key);
                        self.push_app(AppEvent::MemberDown(Box::new(m.info().clone())));
                    }
                }
                // A member up under a new identity (a restart foca saw while it held the
                // member up). A member held down and renamed shows up with the MemberUp that
                // follows, if it is up; foca also renames a down member to another down
                // identity, with no MemberUp or MemberDown after it, and that member must
                // stay out of the live members.
                OwnedNotification::Rename(_, new) if self.members.contains_key(&new.node_key()) => {
                    changed = true;
                    self.member_up(new.shared());
                    // The application learns the new record too (a restart faster than
                    // SWIM's down timeout: a new generation, perhaps a new address).
                    self.push_app(AppEvent::MemberUp(Box::new(new.info().clone())));
                }
                // foca renewed this node's identity itself (the mesh had declared it down
                // and it rejoined with the next generation): `me` takes the generation.
                // Only that: foca's copy of the record keeps the policy epoch it was
                // created with (`set_policy_epoch` updates `me`), and the link-state record
                // that carries the epoch goes out now.
                OwnedNotification::Rejoin(next) => {
                    self.me.generation = next.generation;
                    self.router.own_forced = true;
                    self.catch_up = Some((CATCH_UP_TICKS_MAX, 0));
                }
                OwnedNotification::Defunct => {
                    // The mesh declared us down (we were cut off): come back with a new
                    // generation so members accept us again.
                    if let Some(next) = foca::Identity::renew(&SwimId::new(self.me.clone())) {
                        let mut rt2 = SwimRuntime::default();
                        if self.foca.change_identity(next.clone(), &mut rt2).is_ok() {
                            self.me = next.info().clone();
                            // Cut off for a while: members joined and left meanwhile.
                            self.catch_up = Some((CATCH_UP_TICKS_MAX, 0));
                        } else {
                            self.stats.swim_errors += 1;
                        }
                        // Apply the follow-up sends and timers (no recursion into notes).
                        for (to, data) in rt2.sends {
                            self.send(OriginKey(to.key), Message::Swim(data));
                        }
                        for (timer, after) in rt2.timers {
                            let at =
                                self.now + u64::try_from(after.as_micros()).unwrap_or(u64::MAX / 2);
                            self.schedule(at, Timer::Swim(timer));
                        }
                    }
                }
                _ => {}
            }
        }
        // Lazy peers are re-ranked by the periodic view refresh; here only fill a short set
        // (cheap: membership changes arrive one at a time, a thousand at start-up).
        if changed {
            self.router.members_changed();
        }
        if changed && self.lazy.len() < self.config.lazy.min(LAZY_MAX) {
            self.refresh_lazy();
        }
    }

    /// A member reported up or renamed: recorded (no longer [`Node::silent`]), and, when it
    /// was not in the view, told of this node's recent own events (`announce_recent`) and,
    /// when it is back from down (a generation above the first), noted for a round with it
    /// (`member_returned`).
    pub(super) fn member_up(&mut self, m: Arc<MemberInfo>) {
        let key = m.node_key();
        let joined = !self.members.contains_key(&key);
        // Back under a later generation before this node had it down (a restart, or a
        // node the mesh declared down while it was cut off): it dropped the link-state
        // records of the nodes it lost, or all of them.
        let restarted = self
            .members
            .get(&key)
            .is_some_and(|old| old.generation < m.generation);
        if let Some(peer) = self.peers.get_mut(&key) {
            // Back, or under a new identity: what it did not answer before is forgiven.
            peer.unanswered_since = None;
        }
        if joined && m.generation > 0 {
            self.member_returned(key);
        }
        self.member_insert(m);
        if joined {
            self.announce_recent(key);
            self.ask_own_numbers(key);
        }
        if (joined || restarted)
            && self.handoff_turn(&key).is_some()
            && self.handoffs.len() < HANDOFFS_LEN_MAX
        {
            self.handoffs.insert(key, self.now + HANDOFF_DELAY_US);
        }
    }

    /// Records a member (new, back, or under a new identity) and files it under its
    /// region, moving it out of the one its old record named.
    pub(super) fn member_insert(&mut self, m: Arc<MemberInfo>) {
        let key = m.node_key();
        let region = m.region.clone();
        match self.members.insert(key, m) {
            None => self.near.insert(self.router.rtt_us(&key), key),
            Some(old) => {
                self.region_remove(&old.region, &key);
                if old.region != region {
                    // Back in another region: its record describes links from the old one,
                    // and it may not be in the new region's sample.
                    self.router.forget_record(&key);
                }
            }
        }
        self.region_insert(&region, key);
    }

    pub(super) fn region_insert(&mut self, region: &str, key: OriginKey) {
        self.view_version += 1;
        // Look up by `&str` first: the region is almost always known already, and
        // `entry` would allocate its key on every call.
        let list = match self.regions.get_mut(region) {
            Some(list) => list,
            None => self.regions.entry(region.to_string()).or_default(),
        };
        if let Err(at) = list.binary_search(&key) {
            list.insert(at, key);
            // A lower key joined the region's sample of link records: the member it
            // pushed out of the sample is no longer kept (`route::sampled`).
            if at < route::RECORDS_PER_REGION_MAX
                && let Some(&out) = list.get(route::RECORDS_PER_REGION_MAX)
                && out != self.me.node_key()
            {
                self.router.forget_record(&out);
            }
        }
    }

    pub(super) fn region_remove(&mut self, region: &str, key: &OriginKey) {
        self.view_version += 1;
        if *key == self.me.node_key() {
            return;
        }
        if let Some(list) = self.regions.get_mut(region) {
            if let Ok(at) = list.binary_search(key) {
                list.remove(at);
            }
            if list.is_empty() {
                self.regions.remove(region);
                // Nobody left there: a failure mark would only outlive its cause.
                self.router.recover(region);
            }
        }
    }

    /// Builds the per-region member lists from scratch (at construction; afterwards they are
    /// maintained incrementally) and picks lazy peers: the nearest by measured
    /// RTT (with hysteresis, so near-equal peers do not flap), plus one at random from
    /// another region.
    pub(super) fn refresh_view(&mut self) {
        self.view_version += 1;
        let me = self.me.node_key();
        self.regions.clear();
        self.regions
            .entry(self.me.region.to_string())
            .or_default()
            .push(me);
        for (k, m) in &self.members {
            if *k != me {
                self.regions
                    .entry(m.region.to_string())
                    .or_default()
                    .push(*k);
            }
        }
        for list in self.regions.values_mut() {
            list.sort();
        }
        self.refresh_lazy();
    }

    /// Picks the lazy peers (see [`Node::refresh_view`]).
    pub(super) fn refresh_lazy(&mut self) {
        self.view_version += 1;
        let me = self.me.node_key();
        self.lazy
            .retain(|k| self.members.contains_key(k) && *k != me);
        let want = self.config.lazy.min(LAZY_MAX);
        // Measured RTT, else estimated from network coordinates (members never contacted).
        let rtt = |k: &OriginKey| self.router.estimate_us(k);
        // Members and RTT estimators are both ordered by key: walk them together instead of
        // looking every member up (this runs on every view refresh over every member).
        let mut estimators = self.router.estimators().peekable();
        let mut by_rtt: Vec<(Micros, OriginKey)> = self
            .members
            .keys()
            .filter(|k| **k != me)
            .map(|k| {
                while estimators.next_if(|(ek, _)| *ek < k).is_some() {}
                let measured = estimators
                    .peek()
                    .filter(|(ek, _)| *ek == k)
                    .and_then(|(_, e)| e.estimate_us());
                let r = measured.or_else(|| self.router.coord_estimate_us(k));
                (r.unwrap_or(Micros::MAX), *k)
            })
            .collect();
        // Near: the nearest `want - 1`, replacing a current lazy peer only when clearly
        // nearer (hysteresis).
        let near_target = want.saturating_sub(1);
        // Only the nearest `near_target` are read, in order (keys are unique: the same ones
        // a full sort would put first).
        if near_target < by_rtt.len() {
            by_rtt.select_nth_unstable(near_target);
            by_rtt.truncate(near_target);
        }
        by_rtt.sort_unstable();
        for (r, k) in &by_rtt {
            if self.lazy.contains(k) {
                continue;
            }
            if self.lazy.len() < want {
                self.lazy.insert(*k);
                continue;
            }
            let worst = self
                .lazy
                .iter()
                .map(|l| (rtt(l).unwrap_or(Micros::MAX), *l))
                .max();
            if let Some((w, wk)) = worst
                && *r != Micros::MAX
                && r.saturating_mul(100) < w.saturating_mul(RTT_HYSTERESIS_PCT)
            {
                self.lazy.remove(&wk);
                self.lazy.insert(*k);
            }
        }
        // Far: one random member of another region, if there is room (nearly always the
        // set is full by now, and the draw is skipped). Drawn in key order from the
        // per-region key lists (reading every member record for its region was a cache miss
        // per member): the drawn position is selected, not the whole list sorted.
        if self.lazy.len() >= want {
            return;
        }
        let mut others: Vec<OriginKey> = self
            .regions
            .iter()
            .filter(|(name, _)| name.as_str() != self.me.region.as_str())
            .flat_map(|(_, list)| list.iter().copied())
            .filter(|k| !self.lazy.contains(k))
            .collect();
        if !others.is_empty() {
            let at = (self.rng.next_u64() % others.len() as u64) as usize;
            let (_, k, _) = others.select_nth_unstable(at);
            self.lazy.insert(*k);
        }
    }

    /// The members of `region` in the dissemination order for `origin`: the origin first if
    /// it is a member there, then by rendezvous hash of (origin, member).
    pub(super) fn region_order(&self, origin: &OriginKey, region: &str) -> Vec<OriginKey> {
        let Some(list) = self.regions.get(region) else {
            return Vec::new();
        };
        let mut order: Vec<(u64, OriginKey)> = list
            .iter()
            .map(|m| {
                (
                    if m == origin {
                        0
                    } else {
                        1 + rank(origin, m) / 2
                    },
                    *m,
                )
            })
            .collect();
        order.sort_unstable();
        order.into_iter().map(|(_, k)| k).collect()
    }

    /// The root of `region`'s tree for events of `origin`: the first member in
    /// [`Node::region_order`], found without sorting the region.
    pub(super) fn region_root(&self, origin: &OriginKey, region: &str) -> Option<OriginKey> {
        route::entry_of(self.regions.get(region)?, origin)
    }

    /// After joining (or coming back under a new generation after being declared down), a
    /// node announces itself to [`CATCH_UP_ANNOUNCES`] random members per probe tick for as
    /// long as the last tick taught it new members, at most [`CATCH_UP_TICKS_MAX`] ticks.
    /// Each answers with a SWIM feed of random live members (as many as fit a SWIM
    /// message, about 60). SWIM gossip spreads changes, not the member list, and the seeds'
    /// feeds and the periodic announcements (every 15 s) alone left a node restarted in a
    /// 300-node mesh without a quarter of the members for a minute, and without some for
    /// two (docs/sim-speed.md): it could neither route to them nor keep their link records.
    /// A node with no live member left (cut off from every other node long enough for
    /// SWIM to declare them all down) announces itself to the members it holds down, once
    /// a probe tick. foca stops every timer of an instance with no active member,
    /// announcements to down members included, so without this two nodes that each found
    /// themselves alone (a two-node mesh, or a fabric of one node per region across a
    /// network outage) never found each other again after the heal.
    pub(super) fn announce_when_alone(&mut self) {
        // A node that never had a member (a mesh of one) has none held down either.
        if self.foca.num_members() > 0
            || !self
                .foca
                .iter_membership_state()
                .any(|m| m.state() == foca::State::Down)
        {
            return;
        }
        self.stats.alone_announce_rounds += 1;
        self.announce_to_down();
    }

    pub(super) fn catch_up_membership(&mut self) {
        let Some((left, known)) = self.catch_up else {
            return;
        };
        let now_known = self.members.len();
        if left == 0 || (now_known <= known && known > 0) {
            self.catch_up = None;
            return;
        }
        self.catch_up = Some((left - 1, now_known));
        let picks = self.distinct_live(false, CATCH_UP_ANNOUNCES);
        if picks.is_empty() {
            return;
        }
        let mut rt = SwimRuntime::default();
        for key in picks {
            let Some(member) = self.members.get(&key).cloned() else {
                continue;
            };
            let member = SwimId::new(MemberInfo::clone(&member));
            self.stats.catch_up_announces += 1;
            if self.foca.announce(member, &mut rt).is_err() {
                self.stats.swim_errors += 1;
            }
        }
        self.apply_swim(rt);
    }

    /// Whether members of region `name` are candidates for [`Node::live_nth`]: not in a
    /// region whose link from here failed, and, with `other_regions`, not in this node's.
    fn live_region(&self, name: &str, other_regions: bool) -> bool {
        (!other_regions || name != self.me.region) && !self.router.failed.contains_key(name)
    }

    /// The candidates' per-region key lists, each with its number of candidates (this node
    /// is in its own region's list but no candidate).
    fn live_lists(&self, other_regions: bool) -> impl Iterator<Item = (&[OriginKey], usize)> {
        let me = self.me.node_key();
        self.regions
            .iter()
            .filter(move |(name, _)| self.live_region(name, other_regions))
            .map(move |(_, list)| {
                let len = list.len() - usize::from(list.binary_search(&me).is_ok());
                (list.as_slice(), len)
            })
    }

    /// How many live members other than this node [`Node::live_nth`] chooses from.
    pub(super) fn live_count(&self, other_regions: bool) -> usize {
        self.live_lists(other_regions).map(|(_, len)| len).sum()
    }

    /// Up to `wanted` distinct live members ([`Node::live_nth`]'s), drawn at random: a
    /// position drawn twice is drawn again, at most four times the draws wanted; with no
    /// more members than wanted, all of them (no draw).
    pub(super) fn distinct_live(
        &mut self,
        other_regions: bool,
        wanted: usize,
    ) -> smallvec::SmallVec<[OriginKey; 4]> {
        let count = self.live_count(other_regions);
        let mut picks: smallvec::SmallVec<[usize; 4]> = smallvec::SmallVec::new();
        if count <= wanted {
            picks.extend(0..count);
        } else {
            for _ in 0..4 * wanted {
                let pick = (self.rng.next_u64() % count as u64) as usize;
                if !picks.contains(&pick) {
                    picks.push(pick);
                }
                if picks.len() == wanted {
                    break;
                }
            }
        }
        picks
            .into_iter()
            .map_while(|pick| self.live_nth(other_regions, pick))
            .collect()
    }

    /// The `n`th of the [`Node::live_count`] candidates, region by region in name order
    /// and by key inside a region. Read from the per-region key lists: O(regions + one
    /// region's members), where walking every member record cost a 1000-node mesh a fifth
    /// of a millisecond per call (every record a cache miss).
    pub(super) fn live_nth(&self, other_regions: bool, mut n: usize) -> Option<OriginKey> {
        let me = self.me.node_key();
        for (list, len) in self.live_lists(other_regions) {
            if n < len {
                return list.iter().filter(|k| **k != me).nth(n).copied();
            }
            n -= len;
        }
        None
    }

    /// Notes a member back from down and schedules the round with it (none is pending and
    /// none ran within the last sync interval: a later one serves members still noted).
    fn member_returned(&mut self, key: OriginKey) {
        if self.returned.len() >= RETURNED_LEN_MAX {
            self.returned.pop_front();
        }
        self.returned.push_back(key);
        let at = match self.sync_back {
            // One is pending: it serves this member too.
            Some(at) if at > self.now => return,
            // One ran within the interval: the next once the interval has passed.
            Some(at) if self.now - at < self.config.sync_interval_us => {
                at + self.config.sync_interval_us
            }
            _ => self.now + SYNC_BACK_DELAY_US,
        };
        self.sync_back = Some(at);
        self.schedule(at, Timer::SyncBack);
    }

    /// A member came back from down, most likely because a partition healed: announces
    /// this node to the members SWIM still holds down (at most [`DOWN_ANNOUNCE_MAX`]), the
    /// rest of the other side, instead of waiting for the periodic announcements (a few
    /// members a second) to find them one by one. Rate-limited with the round with a
    /// returned member: once per sync interval at most. With more members down than that,
    /// each call starts where the last one stopped, so successive heals reach them all.
    pub(super) fn announce_to_down(&mut self) {
        let held: Vec<&SwimId> = self
            .foca
            .iter_membership_state()
            .filter(|m| m.state() == foca::State::Down)
            .map(|m| m.id())
            .collect();
        let n = held.len();
        let start = if n > DOWN_ANNOUNCE_MAX {
            self.down_announce_from % n
        } else {
            0
        };
        let down: Vec<SwimId> = held
            .into_iter()
            .cycle()
            .skip(start)
            .take(n.min(DOWN_ANNOUNCE_MAX))
            .cloned()
            .collect();
        self.down_announce_from = start + down.len();
        let mut rt = SwimRuntime::default();
        for member in down {
            self.stats.down_announcements += 1;
            if self.foca.announce(member, &mut rt).is_err() {
                self.stats.swim_errors += 1;
            }
        }
        self.apply_swim(rt);
    }
}
