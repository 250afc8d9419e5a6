//! Planning where an event goes: the per-origin regional trees (entry node per region, then a
//! rendezvous-hash tree inside it), relay plans across regions, and the replication filter
//! applied before any peer is chosen.

use std::borrow::Cow;
use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;

use super::{
    CHILDREN_CACHE_LEN_MAX, FilterHop, Node, PLANS_LEN_MAX, REFS_PER_MESSAGE_MAX, TREE_ARITY_MAX,
    Target, chunks_of,
};
use crate::envelope::{Event, EventData, OriginKey};
use crate::mesh::message::Message;
use crate::mesh::route::{self, RelayHop};
use crate::mesh::store::Store;

impl<S: Store> Node<S> {
    /// This node's children in its own region's tree for `origin`.
    pub(super) fn children(&mut self, origin: &OriginKey) -> &[OriginKey] {
        // Every event received asks, and the answer changes only with the view.
        if self.children_at != self.view_version {
            self.children_cache.clear();
            self.children_at = self.view_version;
        }
        if !self.children_cache.contains_key(origin) {
            let c = self.compute_children(origin);
            if self.children_cache.len() >= CHILDREN_CACHE_LEN_MAX {
                self.children_cache.clear();
            }
            self.children_cache.insert(*origin, c);
        }
        self.children_cache.get(origin).map_or(&[], Vec::as_slice)
    }

    fn compute_children(&self, origin: &OriginKey) -> Vec<OriginKey> {
        let me = self.me.node_key();
        let arity = self.config.tree_arity.clamp(1, TREE_ARITY_MAX);
        let order = self.region_order(origin, &self.me.region);
        match order.iter().position(|k| *k == me) {
            Some(i) => order
                .iter()
                .skip(i * arity + 1)
                .take(arity)
                .copied()
                .collect(),
            None => Vec::new(),
        }
    }

    /// This node's own hop for `event`: what it may do with it.
    pub(super) fn own_hop(&self, event: &EventData) -> FilterHop {
        if self.filter.unrestricted(event) {
            return FilterHop::Clear;
        }
        self.filter.hop(event, &self.me)
    }

    /// Per region (indexed like the sorted region names): what the region's root for the
    /// event's origin (the member a push to the region goes to) may receive of it. This
    /// node's own region counts as clear (it is the source of any path planned here).
    fn region_hops(&self, event: &Event) -> Vec<FilterHop> {
        // Clear for every member: every region is (another region's list holds members
        // only, and an empty list is removed; this node's own region is Clear anyway).
        if self.filter.unrestricted(event) {
            return vec![FilterHop::Clear; self.regions.len()];
        }
        let origin = event.origin();
        self.regions
            .iter()
            .map(|(name, list)| {
                if *name == self.me.region {
                    return FilterHop::Clear;
                }
                route::entry_of(list, &origin)
                    .and_then(|k| self.members.get(&k))
                    .map_or(FilterHop::Refuse, |m| self.filter.hop(event, m))
            })
            .collect()
    }

    /// The region plan for `event` to the regions `dests` (indices into the sorted region
    /// names): only regions where the event is clear are destinations, and only regions
    /// that may carry it (clear or sealed transit) relay it.
    pub(super) fn plan_for(
        &mut self,
        event: &Event,
        dests: &BTreeSet<u16>,
    ) -> (Vec<(OriginKey, Vec<RelayHop>)>, Vec<String>) {
        let hops = self.region_hops(event);
        self.plan_with(&event.origin(), &hops, dests)
    }

    /// [`Node::plan_for`] with the event's [`Node::region_hops`] already known.
    fn plan_with(
        &mut self,
        origin: &OriginKey,
        hops: &[FilterHop],
        dests: &BTreeSet<u16>,
    ) -> (Vec<(OriginKey, Vec<RelayHop>)>, Vec<String>) {
        let dests: BTreeSet<u16> = dests
            .iter()
            .copied()
            .filter(|i| hops.get(usize::from(*i)) == Some(&FilterHop::Clear))
            .collect();
        let mask = hops.iter().map(|h| *h != FilterHop::Refuse).collect();
        self.plan_regions(origin, mask, &dests)
    }

    /// Cross-region pushes for `regions` (indices into the sorted region names) along the
    /// current region tree: `(root of the first-hop region, hops it relays to)`.
    /// Also returns the destinations the graph has no path to (no estimate at all yet, or
    /// every way there marked failed).
    fn plan_regions(
        &mut self,
        origin: &OriginKey,
        mask: Vec<bool>,
        dests: &BTreeSet<u16>,
    ) -> (Vec<(OriginKey, Vec<RelayHop>)>, Vec<String>) {
        let (tree, names, mine) =
            self.router
                .tree(&self.me, &self.members, &self.regions, mask, self.now);
        let (plan, unreachable) = tree.plan(names, mine, dests);
        let plan = plan
            .into_iter()
            .filter_map(|(region, hops)| Some((self.region_root(origin, &region)?, hops)))
            .collect();
        (plan, unreachable)
    }

    /// Where this node pushes `event`: as the publisher [`Node::publish_targets`], else
    /// [`Node::relay_or_child_targets`]. `open`: the event is unrestricted (the caller asked
    /// the filter), so no stand-ins are needed.
    pub(super) fn targets(
        &mut self,
        event: &Event,
        publishing: bool,
        relay: &[RelayHop],
        reroutes: u8,
        from: Option<OriginKey>,
        open: bool,
    ) -> Vec<Target> {
        let (mut targets, hops) = if publishing {
            let hops = self.region_hops(event);
            (self.publish_targets(&event.origin(), &hops), Some(hops))
        } else {
            (
                self.relay_or_child_targets(event, relay, reroutes, from),
                None,
            )
        };
        if !open {
            self.add_stand_ins(event, hops.as_deref(), &mut targets);
        }
        targets
    }

    /// Whether member `k` may hold `event` (its hop is [`FilterHop::Clear`]).
    fn may_hold(&self, event: &Event, k: &OriginKey) -> bool {
        self.members
            .get(k)
            .is_some_and(|m| self.filter.hop(event, m) == FilterHop::Clear)
    }

    /// Tree nodes that may not hold `event` do not end its tree: their stand-ins
    /// ([`Node::stand_ins`]) join `targets`, for a target without relay hops that may not
    /// hold it and, as the publisher (`region_hops`: the event's [`Node::region_hops`]),
    /// for the root of each region the plan left out because its root may not hold it. A region's members need not share its root's
    /// jurisdiction (an edge site, a store with a claim of its own): without this, the
    /// members of such a region got the event only by IHAVE and GRAFT or anti-entropy, and
    /// per-origin order held back every later event of the origin there meanwhile
    /// (docs/sim.md, section 3.5).
    fn add_stand_ins(
        &self,
        event: &Event,
        region_hops: Option<&[FilterHop]>,
        targets: &mut Vec<Target>,
    ) {
        let mut extra: Vec<Target> = Vec::new();
        for (peer, hops, ack, _) in targets.iter() {
            // A target with relay hops carries the event on (or, refused, leaves it to
            // GRAFT and anti-entropy, as before).
            if hops.is_empty() && !self.may_hold(event, peer) {
                extra.extend(
                    self.stand_ins(event, peer)
                        .into_iter()
                        .map(|k| (k, Vec::new(), *ack, 0)),
                );
            }
        }
        if let Some(hops) = region_hops {
            let origin = event.origin();
            for (i, region) in self.regions.keys().enumerate() {
                if hops[i] == FilterHop::Clear || *region == self.me.region {
                    continue;
                }
                if let Some(root) = self.region_root(&origin, region) {
                    extra.extend(
                        self.stand_ins(event, &root)
                            .into_iter()
                            .map(|k| (k, Vec::new(), true, 0)),
                    );
                }
            }
        }
        for target in extra {
            if !targets.iter().any(|t| t.0 == target.0) {
                targets.push(target);
            }
        }
    }

    /// Where `event` goes in place of `peer`, a node of a region tree that may not hold it:
    /// `peer`'s children in its region's tree for the event's origin that may hold it, and
    /// for those that may not, their children in turn. Bounded: positions in the region's
    /// order only grow down the tree.
    fn stand_ins(&self, event: &Event, peer: &OriginKey) -> Vec<OriginKey> {
        let Some(region) = self.members.get(peer).map(|m| m.region.clone()) else {
            return Vec::new();
        };
        let me = self.me.node_key();
        let arity = self.config.tree_arity.clamp(1, TREE_ARITY_MAX);
        let order = self.region_order(&event.origin(), &region);
        let mut out = Vec::new();
        let mut queue: VecDeque<usize> = order.iter().position(|k| k == peer).into_iter().collect();
        while let Some(at) = queue.pop_front() {
            let first = at * arity + 1;
            let last = (first + arity).min(order.len());
            for (child, &k) in order.iter().enumerate().take(last).skip(first) {
                if k == me {
                    continue;
                }
                if self.may_hold(event, &k) {
                    out.push(k);
                } else {
                    queue.push_back(child);
                }
            }
        }
        out
    }

    /// Where this node, not the publisher, pushes `event`: its children in the event's
    /// per-origin tree, and as a relay the roots of the regions `relay` names; each target
    /// with the relay hops it gets and whether the push crosses regions (and so wants an
    /// acknowledgement). The publisher's targets are [`Node::publish_targets`]. `from`:
    /// the peer the event came from.
    fn relay_or_child_targets(
        &mut self,
        event: &Event,
        relay: &[RelayHop],
        reroutes: u8,
        from: Option<OriginKey>,
    ) -> Vec<Target> {
        let mut out = self.child_targets(&event.origin());
        if !relay.is_empty() {
            out.extend(self.relay_targets(event, relay, reroutes, from));
        }
        out
    }

    /// This node's children in `origin`'s tree in its region, as push targets (no relay
    /// hops, no acknowledgement).
    fn child_targets(&mut self, origin: &OriginKey) -> Vec<Target> {
        self.children(origin)
            .iter()
            .map(|k| (*k, Vec::new(), false, 0))
            .collect()
    }

    /// Where the publisher pushes an event of `origin` whose [`Node::region_hops`] are
    /// `hops` (all it depends on, with the view and the routes): its children in its own
    /// region, the roots of the first-hop regions of the region tree (which relay on to the
    /// rest), and every member of near regions; each with the relay hops it gets and
    /// whether the push crosses regions (and so wants an acknowledgement).
    pub(super) fn publish_targets(
        &mut self,
        origin: &OriginKey,
        hops: &[FilterHop],
    ) -> Vec<Target> {
        let epoch = self
            .router
            .ensure_graph(&self.me, &self.members, &self.regions, self.now);
        let at = (epoch, self.router.near_epoch, self.view_version);
        if self.plans_at != at {
            self.plans.clear();
            self.plans_at = at;
        }
        let key = (*origin, hops.to_vec());
        if let Some(plan) = self.plans.get(&key) {
            return plan.clone();
        }
        let plan = self.plan_publish(origin, hops);
        if self.plans.len() >= PLANS_LEN_MAX {
            self.plans.clear();
        }
        self.plans.insert(key, plan.clone());
        plan
    }

    /// [`Node::publish_targets`] worked out.
    fn plan_publish(&mut self, origin: &OriginKey, hops: &[FilterHop]) -> Vec<Target> {
        let mut out = self.child_targets(origin);
        // An event a device signed, published here on its behalf: this region's tree for
        // the device's origin is rooted at the first member of `region_order`, which the
        // other members compute without knowing this node is the device's gateway and
        // which may be another node. This node pushes to its own subtree and to that root,
        // which covers the rest of the region (without it, the members outside this node's
        // subtree got the event only by IHAVE and GRAFT, a GRAFT timeout later).
        let me = self.me.node_key();
        if *origin != me
            && let Some(root) = self.region_root(origin, &self.me.region)
            && root != me
            && !out.iter().any(|t| t.0 == root)
        {
            out.push((root, Vec::new(), false, 0));
        }
        let mut dests = BTreeSet::new();
        let mut near_members = Vec::new();
        for (i, (region, members)) in self.regions.iter().enumerate() {
            // Regions whose root may not hold the event are no destination (their members
            // got a Skip from `forward`); they may still relay it.
            if *region == self.me.region || hops[i] != FilterHop::Clear {
                continue;
            }
            dests.insert(i as u16);
            let near = members
                .iter()
                .filter_map(|m| self.router.rtt_us(m))
                .min()
                .is_some_and(|rtt| rtt < self.config.near_region_rtt_us);
            if near {
                near_members.extend(members.iter().copied());
            }
        }
        let (plan, unreachable) = self.plan_with(origin, hops, &dests);
        for (root, hops) in plan {
            near_members.retain(|m| *m != root);
            out.push((root, hops, true, 0));
        }
        // No path known (nothing measured yet, or every way marked failed): the direct push
        // is still the best bet; its acknowledgement tells.
        for region in unreachable {
            if let Some(root) = self.region_root(origin, &region) {
                near_members.retain(|m| *m != root);
                out.push((root, Vec::new(), true, 0));
            }
        }
        out.extend(near_members.into_iter().map(|k| (k, Vec::new(), false, 0)));
        out
    }

    /// Where a relay sends `event` on: the roots of the regions `relay` names at its top
    /// level, each with its sub-list. A region whose direct link from here is marked failed
    /// is re-planned from this node's own view instead (one more reroute, if the push has
    /// any left; otherwise the direct link is tried after all). The new plan may send
    /// hops back to `from`, the peer the event came from (see [`Node::keeps`]), but not
    /// hops that came here rerouted already: those try the direct link, as the last
    /// reroute.
    pub(super) fn relay_targets(
        &mut self,
        event: &Event,
        relay: &[RelayHop],
        reroutes: u8,
        from: Option<OriginKey>,
    ) -> Vec<Target> {
        let origin = event.origin();
        let Some(next) = route::split_hops(relay, &self.me.region) else {
            self.stats.hops_refused += 1;
            return Vec::new();
        };
        let mut out = Vec::new();
        for (region, mut hops) in next {
            let mut last_try = reroutes;
            if self.router.failed.contains_key(region.as_str()) && reroutes < route::REROUTES_MAX {
                let dests = self.region_indices(
                    std::iter::once(region.as_str()).chain(hops.iter().map(|h| h.region.as_str())),
                );
                let (plan, unreachable) = self.plan_for(event, &dests);
                if unreachable.is_empty() {
                    let mut bounced = false;
                    let pushed_from = out.len();
                    for (root, sub) in plan {
                        // Rerouted hops are not sent back where they came from: that node
                        // sent them on because a way of its own failed (most often this is
                        // their way back to a sender that had sent them here, whose way to
                        // the region failed), so the way most likely ends nowhere; without
                        // this a region cut off drew two more pushes per event and a
                        // doomed one (split-brain-writes: 13 % more messages per event).
                        // They try the direct link instead, below.
                        if reroutes > 0 && Some(root) == from {
                            bounced = true;
                            continue;
                        }
                        self.stats.relayed += 1;
                        out.push((root, sub, true, reroutes + 1));
                    }
                    if !bounced {
                        continue;
                    }
                    // The last try carries only what no push above reaches: a plan that
                    // sent some of the hops a third way left the direct push carrying them
                    // too, and their regions got the event twice (`example.toml`: one in
                    // nine of these last tries).
                    let pushed = &out[pushed_from..];
                    let covered = |r: &str| {
                        pushed.iter().any(|(root, sub, _, _)| {
                            self.members.get(root).is_some_and(|m| m.region == r)
                                || sub.iter().any(|h| h.region == r)
                        })
                    };
                    hops = route::prune_hops(&hops, |r| !covered(r));
                    if hops.is_empty() && covered(&region) {
                        continue;
                    }
                    // The only way left ran back to the sender: try the direct link after
                    // all, as the last reroute (an unanswered push ends there: one doomed
                    // push per event into a region really cut off, 2 % more messages per
                    // event in split-brain-writes). Both ends hold their direct links
                    // marked failed, under loss most often because one push each went
                    // unanswered, and the marks are stale. Dropping the hops left the
                    // region to anti-entropy, seconds later for an origin's last events
                    // (`many-faults` seed 56: 7.6 s; docs/sim.md 3.5).
                    last_try = route::REROUTES_MAX;
                }
                // No other way: try the direct link after all (the failure mark may be
                // stale), below.
            }
            if let Some(root) = self.region_root(&origin, &region) {
                self.stats.relayed += 1;
                out.push((root, hops, true, last_try));
            }
        }
        out
    }

    /// Indices of the named regions in the sorted region list (unknown names skipped).
    pub(super) fn region_indices<'a>(&self, names: impl Iterator<Item = &'a str>) -> BTreeSet<u16> {
        let list: Vec<&String> = self.regions.keys().collect();
        names
            .filter_map(|r| list.binary_search_by(|n| n.as_str().cmp(r)).ok())
            .map(|i| i as u16)
            .collect()
    }

    /// The events the replication filter lets go to `peer`: those clear for it, and, when
    /// `relaying` (the push names relay hops for the peer to carry it on), those it may carry
    /// as sealed transit. With `notify`, events kept from the peer are announced as
    /// [`Message::Skip`] (origin and sequence number only), so the peer's ordered delivery
    /// does not wait for them. `open`: the caller found every event unrestricted (false:
    /// not known, asked here).
    pub(super) fn allowed<'a>(
        &mut self,
        events: &'a [Arc<Event>],
        peer: &OriginKey,
        relaying: bool,
        notify: bool,
        open: bool,
    ) -> Cow<'a, [Arc<Event>]> {
        let Some(info) = self.members.get(peer) else {
            // Not a known member (yet): nothing may go there until membership says who it is.
            self.stats.filtered += events.len() as u64;
            return Cow::Owned(Vec::new());
        };
        if open || events.iter().all(|e| self.filter.unrestricted(e)) {
            return Cow::Borrowed(events);
        }
        let passes =
            |hop: FilterHop| hop == FilterHop::Clear || (relaying && hop == FilterHop::Transit);
        // All of them may go (the usual case, also for restricted events): the list as it
        // is, no copy.
        let Some(first_kept) = events
            .iter()
            .position(|e| !passes(self.filter.hop(e, info)))
        else {
            return Cow::Borrowed(events);
        };
        let mut out = Vec::with_capacity(events.len());
        out.extend_from_slice(&events[..first_kept]);
        let mut skipped = Vec::new();
        for e in &events[first_kept..] {
            match self.filter.hop(e, info) {
                FilterHop::Clear => out.push(e.clone()),
                FilterHop::Transit if relaying => out.push(e.clone()),
                FilterHop::Transit | FilterHop::Refuse => {
                    self.stats.filtered += 1;
                    if notify {
                        skipped.push((e.origin(), e.seq()));
                    }
                }
            }
        }
        for chunk in chunks_of(skipped, REFS_PER_MESSAGE_MAX) {
            self.send(*peer, Message::Skip(chunk));
        }
        Cow::Owned(out)
    }

    /// [`Node::allowed`] of a list this node owns: the list itself when all of it may go.
    pub(super) fn allowed_vec(
        &mut self,
        events: Vec<Arc<Event>>,
        peer: &OriginKey,
        relaying: bool,
        notify: bool,
    ) -> Vec<Arc<Event>> {
        let kept = match self.allowed(&events, peer, relaying, notify, false) {
            Cow::Owned(kept) => Some(kept),
            Cow::Borrowed(_) => None,
        };
        kept.unwrap_or(events)
    }
}
