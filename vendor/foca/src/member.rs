/* This Source Code Form is subject to the terms of the Mozilla Public
 * License, v. 2.0. If a copy of the MPL was not distributed with this
 * file, You can obtain one at https://mozilla.org/MPL/2.0/. */
extern crate alloc;
use alloc::vec::Vec;
use core::hash::{BuildHasherDefault, Hasher};

use rand::{
    RngExt,
    prelude::{IteratorRandom, SliceRandom},
};

/// State describes how a Foca instance perceives a member of the cluster.
///
/// This is part of the Suspicion Mechanism described in section 4.2 of the
/// original SWIM paper.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum State {
    /// Member is active.
    Alive,
    /// Member is active, but at least one cluster member
    /// suspects its down. For all purposes, a `Suspect` member
    /// is treated as if it were `Alive` until either it
    /// refutes the suspicion (becoming `Alive`) or fails to
    /// do so (being declared `Down`).
    Suspect,
    /// Confirmed Down.
    /// A member that reaches this state can't join the cluster
    /// with the same identity until the cluster forgets
    /// this knowledge.
    Down,
}

/// Incarnation is a member-controlled cluster-global number attached
/// to a member identity.
/// A member M's incarnation starts with zero and can only be incremented
/// by said member M when refuting suspicion.
pub type Incarnation = u16;

/// A Cluster Member. Also often called "cluster update".
///
/// A [`Member`] represents Foca's snapshot knowledge about an
/// [`crate::Identity`]. An individual cluster update is simply a
/// serialized Member which other Foca instances receive and use to
/// update their own cluster state representation.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Member<T> {
    id: T,
    incarnation: Incarnation,
    state: State,
}

impl<T> Member<T> {
    /// Initializes a new member.
    ///
    /// `id` is an identity used to uniquely identify an individual
    /// cluster member (say, a primary key).
    pub const fn new(id: T, incarnation: Incarnation, state: State) -> Self {
        Self {
            id,
            incarnation,
            state,
        }
    }

    /// Shortcut for initializing a member as [`State::Alive`].
    pub fn alive(id: T) -> Self {
        Self::new(id, Incarnation::default(), State::Alive)
    }

    #[cfg(test)]
    pub(crate) fn suspect(id: T) -> Self {
        Self::new(id, Incarnation::default(), State::Suspect)
    }

    /// Shortcut for initializing a member as [`State::Down`].
    pub fn down(id: T) -> Self {
        Self::new(id, Incarnation::default(), State::Down)
    }

    /// Getter for the member's Incarnation
    pub const fn incarnation(&self) -> Incarnation {
        self.incarnation
    }

    /// Getter for the member's State
    pub const fn state(&self) -> State {
        self.state
    }

    /// Getter for the member's identity
    pub const fn id(&self) -> &T {
        &self.id
    }

    pub(crate) const fn is_active(&self) -> bool {
        match self.state {
            State::Alive | State::Suspect => true,
            State::Down => false,
        }
    }

    pub(crate) const fn change_state(&mut self, incarnation: Incarnation, state: State) -> bool {
        if self.can_change(incarnation, state) {
            self.state = state;
            self.incarnation = incarnation;
            true
        } else {
            false
        }
    }

    const fn can_change(&self, other_incarnation: Incarnation, other: State) -> bool {
        // This implements the order of preference of the Suspicion subprotocol
        // outlined on section 4.2 of the paper.
        match self.state {
            State::Alive => match other {
                State::Alive => other_incarnation > self.incarnation,
                State::Suspect => other_incarnation >= self.incarnation,
                State::Down => true,
            },
            State::Suspect => match other {
                State::Alive | State::Suspect => other_incarnation > self.incarnation,
                State::Down => true,
            },
            State::Down => false,
        }
    }

    pub(crate) fn into_identity(self) -> T {
        self.id
    }
}

pub(crate) struct Members<T: crate::Identity> {
    pub(crate) inner: Vec<Member<T>>,
    cursor: usize,
    num_active: usize,
    // Weft patch: position of each member in `inner` by address, so
    // lookups are O(log n) instead of a scan of every member (which
    // dominated large clusters: every received update did one).
    // `inner` holds at most one member per address.
    //
    // Weft patch (12): the table holds positions only, hashed by the
    // address of the member at that position and compared through it
    // (the lookup reads that member next anyway). A map from address to
    // position held a copy of every address: 40 bytes a bucket against
    // 4 here, 84 KB against 10 KB per node of a 1000-node mesh, a cold
    // cache line more per update received.
    index: hashbrown::HashTable<u32>,
}

/// Weft patch (12): the index's hash of `addr`.
fn addr_hash<A: core::hash::Hash>(addr: &A) -> u64 {
    use core::hash::BuildHasher;
    BuildHasherDefault::<AddrHasher>::default().hash_one(addr)
}

/// Weft patch: the hasher of the member index. Fixed (no per-process
/// seed, so runs are reproducible) and cheap; addresses are few and
/// chosen by members the cluster admits, and a collision only costs
/// a probe.
#[derive(Default)]
pub(crate) struct AddrHasher(u64);

impl Hasher for AddrHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x517c_c1b7_2722_0a95;
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(word)).wrapping_mul(K);
        }
        for byte in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ u64::from(*byte)).wrapping_mul(K);
        }
    }
}

#[cfg(test)]
impl<T: crate::Identity> Members<T> {
    pub(crate) fn len(&self) -> usize {
        self.inner.len()
    }
}

impl<T> Members<T>
where
    T: PartialEq + Clone + crate::Identity,
{
    pub(crate) const fn num_active(&self) -> usize {
        self.num_active
    }

    pub(crate) fn new(inner: Vec<Member<T>>) -> Self {
        // XXX This doesn't prevent someone initializing with
        //     duplicated members... Not a problem (yet?) since
        //     inner is always empty outside of tests
        let num_active = inner.iter().filter(|member| member.is_active()).count();

        let mut members = Self {
            cursor: 0,
            num_active,
            inner,
            index: Default::default(),
        };
        members.reindex();
        members
    }

    fn reindex(&mut self) {
        self.index.clear();
        let inner = &self.inner;
        self.index.reserve(inner.len(), |&pos| {
            addr_hash(&inner[pos as usize].id.addr())
        });
        for (i, member) in inner.iter().enumerate() {
            self.index
                .insert_unique(addr_hash(&member.id.addr()), Self::pos32(i), |&pos| {
                    addr_hash(&inner[pos as usize].id.addr())
                });
        }
    }

    fn pos32(pos: usize) -> u32 {
        u32::try_from(pos).expect("fewer than 2^32 members")
    }

    fn position(&self, addr: &T::Addr) -> Option<usize> {
        self.index
            .find(addr_hash(addr), |&pos| {
                self.inner[pos as usize].id.addr() == *addr
            })
            .map(|&pos| pos as usize)
    }

    /// Weft patch (12): points the index entry of the member at position
    /// `from` (whose address is `addr`) at position `to`.
    fn move_position(&mut self, addr: &T::Addr, from: usize, to: usize) {
        let (from, to) = (Self::pos32(from), Self::pos32(to));
        if let Some(pos) = self.index.find_mut(addr_hash(addr), |&pos| pos == from) {
            *pos = to;
        }
    }

    /// Weft patch (12): indexes a member not held yet, at position `pos`.
    fn index_new(&mut self, addr: &T::Addr, pos: usize) {
        let inner = &self.inner;
        self.index
            .insert_unique(addr_hash(addr), Self::pos32(pos), |&p| {
                addr_hash(&inner[p as usize].id.addr())
            });
    }

    // Next member that's considered active
    // Chosen at random (shuffle + round-robin)
    pub(crate) fn next(&mut self, mut rng: impl RngExt) -> Option<&Member<T>> {
        // Round-robin with a shuffle at the end
        if self.cursor >= self.inner.len() {
            self.inner.shuffle(&mut rng);
            self.reindex();
            self.cursor = 0;
        }

        // Find an active member from cursor..len()
        let position = self
            .inner
            .iter()
            .skip(self.cursor)
            .position(|m| m.is_active())
            // Since we skip(), position() will start counting from zero
            // this ensures it's actually the index of the chosen member
            .map(|pos| pos + self.cursor);

        // And if we don't find any: try from 0..cursor
        let position = position.or_else(|| {
            self.inner
                .iter()
                .take(self.cursor)
                .position(|m| m.is_active())
        });

        if let Some(pos) = position {
            if pos < self.cursor {
                // We wrapped around the list to find a member. A shuffle
                // is needed, so we set it to MAX. Any other value could
                // cause the shuffle to not happen since members may join
                // in-between probes
                self.cursor = usize::MAX;
            } else {
                self.cursor = pos.saturating_add(1);
            }
            self.inner.get(pos)
        } else {
            None
        }
    }

    fn choose_members<F>(
        &self,
        wanted: usize,
        output: &mut Vec<Member<T>>,
        mut rng: impl RngExt,
        picker: F,
    ) where
        F: Fn(&Member<T>) -> bool,
    {
        // Basic reservoir sampling
        // Weft patch: sample positions and clone only the chosen members
        // (identities may own heap data); same random draws, same result.
        let mut chosen: Vec<usize> = Vec::with_capacity(wanted.min(self.inner.len()));
        let mut num_seen = 0;

        for (pos, member) in self.inner.iter().enumerate() {
            if !picker(member) {
                continue;
            }

            num_seen += 1;
            if chosen.len() < wanted {
                chosen.push(pos);
            } else {
                let replace_at = rng.random_range(0..num_seen);
                if replace_at < wanted {
                    chosen[replace_at] = pos;
                }
            }
        }
        output.extend(chosen.into_iter().map(|pos| self.inner[pos].clone()));
    }

    pub(crate) fn choose_down_members(
        &self,
        wanted: usize,
        output: &mut Vec<Member<T>>,
        rng: impl RngExt,
    ) {
        // Weft patch: no member is down (the common case), so none can be
        // chosen: skip the walk of every member. The walk draws no random
        // number before a member qualifies, so the draws are the same.
        if self.num_active == self.inner.len() {
            return;
        }
        self.choose_members(wanted, output, rng, |member| !member.is_active());
    }

    pub(crate) fn choose_active_members<F>(
        &self,
        wanted: usize,
        output: &mut Vec<Member<T>>,
        mut rng: impl RngExt,
        picker: F,
    ) where
        F: Fn(&T) -> bool,
    {
        // Weft patch: when most members are active and many more than
        // `wanted`, draw random positions and keep the first `wanted`
        // distinct ones that qualify (rejection sampling: uniform over
        // the qualifying members, like the reservoir walk) instead of
        // walking every member (a thousand per gossip round in a large
        // cluster). Too many rejections (the picker refuses most) fall
        // back to the walk.
        let len = self.inner.len();
        if wanted > 0 && self.num_active >= wanted.saturating_mul(4) && 2 * self.num_active >= len {
            let mut chosen: Vec<usize> = Vec::with_capacity(wanted);
            for _ in 0..(8 * wanted + 32) {
                let pos = rng.random_range(0..len);
                let member = &self.inner[pos];
                if member.is_active() && !chosen.contains(&pos) && picker(member.id()) {
                    chosen.push(pos);
                    if chosen.len() == wanted {
                        output.extend(chosen.into_iter().map(|pos| self.inner[pos].clone()));
                        return;
                    }
                }
            }
        }
        self.choose_members(wanted, output, rng, |member| {
            member.is_active() && picker(member.id())
        });
    }

    pub(crate) fn remove_if_down(&mut self, id: &T) -> Option<Member<T>> {
        let position = self
            .position(&id.addr())
            .filter(|&pos| &self.inner[pos].id == id && self.inner[pos].state == State::Down);

        position.map(|pos| {
            let addr = id.addr();
            if let Ok(entry) = self
                .index
                .find_entry(addr_hash(&addr), |&p| p == Self::pos32(pos))
            {
                entry.remove();
            }
            let last = self.inner.len() - 1;
            if pos != last {
                let moved = self.inner[last].id.addr();
                self.move_position(&moved, last, pos);
            }
            self.inner.swap_remove(pos)
        })
    }

    /// Weft patch: the record held for `addr`, whatever its state.
    pub(crate) fn get(&self, addr: &T::Addr) -> Option<&Member<T>> {
        self.position(addr).map(|pos| &self.inner[pos])
    }

    /// Weft patch: `id`'s record if we hold it as suspect.
    pub(crate) fn suspect(&self, id: &T) -> Option<&Member<T>> {
        self.position(&id.addr())
            .map(|pos| &self.inner[pos])
            .filter(|m| &m.id == id && m.state == State::Suspect)
    }

    pub(crate) fn iter_active(&self) -> impl Iterator<Item = &Member<T>> {
        self.inner.iter().filter(|m| m.is_active())
    }

    pub(crate) fn is_active(&self, id: &T) -> bool {
        self.position(&id.addr())
            .is_some_and(|pos| &self.inner[pos].id == id && self.inner[pos].is_active())
    }

    pub(crate) fn apply_existing_if<F: Fn(&Member<T>) -> bool>(
        &mut self,
        update: Member<T>,
        condition: F,
    ) -> Option<ApplySummary<T>> {
        self.position(&update.id().addr())
            .map(|pos| self.apply_at(pos, update, condition))
    }

    /// Weft patch (13): applies `update` to the member at `pos`, which the
    /// caller found by the update's address: `apply` looks the address up
    /// once instead of twice (the index probe and the member it points to
    /// are two cold reads per update at a thousand members).
    fn apply_at<F: Fn(&Member<T>) -> bool>(
        &mut self,
        pos: usize,
        mut update: Member<T>,
        condition: F,
    ) -> ApplySummary<T> {
        let known_member = &mut self.inner[pos];
        let id_conflict = known_member.id != update.id;

        // If the update wins the conflict, the full member
        // state is replaced (it's essentially a rejoin)
        // If it doesn't, it gets discarded
        if id_conflict && known_member.id.win_addr_conflict(&update.id) {
            return ApplySummary {
                is_active_now: known_member.is_active(),
                apply_successful: false,
                changed_active_set: false,
                conflict: ConflictResult::Lost,
            };
        }

        if !condition(known_member) {
            return ApplySummary {
                is_active_now: known_member.is_active(),
                apply_successful: false,
                changed_active_set: false,
                conflict: if id_conflict {
                    ConflictResult::FailedCondition
                } else {
                    ConflictResult::NoConflict
                },
            };
        }
        let was_active = known_member.is_active();

        let (apply_successful, conflict) = if id_conflict {
            core::mem::swap(&mut known_member.id, &mut update.id);
            known_member.state = update.state;
            known_member.incarnation = update.incarnation;
            (true, ConflictResult::Replaced(update.id))
        } else {
            (
                known_member.change_state(update.incarnation, update.state),
                ConflictResult::NoConflict,
            )
        };

        let is_active_now = known_member.is_active();
        let changed_active_set = is_active_now != was_active;

        if changed_active_set {
            // XXX Overzealous checking
            if is_active_now {
                self.num_active = self.num_active.saturating_add(1);
            } else {
                self.num_active = self.num_active.saturating_sub(1);
            }
        }

        ApplySummary {
            is_active_now,
            apply_successful,
            changed_active_set,
            conflict,
        }
    }

    pub(crate) fn apply(&mut self, update: Member<T>, mut rng: impl RngExt) -> ApplySummary<T> {
        // Weft patch: look the member up first instead of cloning every
        // update (identities may own heap data) for a speculative apply.
        if let Some(pos) = self.position(&update.id().addr()) {
            return self.apply_at(pos, update, |_member| true);
        }
        {
            {
                // Unknown member, we'll register it
                let is_active_now = update.is_active();

                // Insert at the end and swap with a random position.
                let addr = update.id().addr();
                self.inner.push(update);
                let inserted_at = self.inner.len() - 1;

                let swap_idx = (0..self.inner.len())
                    .choose(&mut rng)
                    .unwrap_or(inserted_at);

                self.inner.swap(swap_idx, inserted_at);
                // Weft patch (12): the member that was at `swap_idx` is at the
                // end now and the new one in its place. Its entry is found by
                // its old position and moved before the new entry goes in:
                // an insert may grow the table, which rehashes every entry by
                // the address at its position.
                if swap_idx != inserted_at {
                    let displaced = self.inner[inserted_at].id.addr();
                    self.move_position(&displaced, swap_idx, inserted_at);
                }
                self.index_new(&addr, swap_idx);

                if is_active_now {
                    self.num_active = self.num_active.saturating_add(1);
                }

                ApplySummary {
                    is_active_now,
                    apply_successful: true,
                    // Registering a new active member changes the active set
                    changed_active_set: is_active_now,
                    conflict: ConflictResult::NoConflict,
                }
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
#[must_use]
pub(crate) struct ApplySummary<T> {
    pub(crate) is_active_now: bool,
    pub(crate) apply_successful: bool,
    pub(crate) changed_active_set: bool,
    pub(crate) conflict: ConflictResult<T>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ConflictResult<T> {
    NoConflict,
    Replaced(T),
    Lost,
    FailedCondition,
}

#[cfg(test)]
mod tests {

    use crate::Identity;

    use super::*;

    use alloc::vec;
    use rand::{SeedableRng, rngs::SmallRng};

    #[derive(Clone, Debug, PartialEq, Eq, Copy, PartialOrd, Ord)]
    struct Id(&'static str);
    impl crate::Identity for Id {
        type Addr = &'static str;

        fn renew(&self) -> Option<Self> {
            None
        }

        fn addr(&self) -> Self::Addr {
            self.0
        }

        fn win_addr_conflict(&self, _adversary: &Self) -> bool {
            panic!("addr is self, there'll never be a conflict");
        }
    }

    use State::*;

    #[test]
    fn alive_transitions() {
        let mut member = Member::new(Id("a"), 0, Alive);

        // Alive => Alive
        assert!(
            member.change_state(member.incarnation + 1, Alive),
            "can transition to a higher incarnation"
        );

        assert_eq!(1, member.incarnation);
        assert_eq!(Alive, member.state);

        assert!(
            !member.change_state(member.incarnation - 1, Alive),
            "cannot transition to a lower incarnation"
        );

        assert!(
            !member.change_state(member.incarnation, Alive),
            "cannot transition to same state and incarnation {:?}",
            member
        );

        // Alive => Suspect
        assert!(
            !member.change_state(member.incarnation - 1, Suspect),
            "lower suspect incarnation shouldn't transition"
        );

        assert!(
            member.change_state(member.incarnation, Suspect),
            "transition to suspect with same incarnation"
        );
        assert_eq!(Suspect, member.state);

        member = Member::new(Id("b"), 0, Alive);
        assert!(
            member.change_state(member.incarnation + 1, Suspect),
            "transition to suspect with higher incarnation"
        );
        assert_eq!(1, member.incarnation);
        assert_eq!(Suspect, member.state);

        // Alive => Down, always works
        assert!(
            Member::new("c", 1, Alive).change_state(0, Down),
            "transitions to down on lower incarnation"
        );
        assert!(
            Member::new("c", 0, Alive).change_state(0, Down),
            "transitions to down on same incarnation"
        );
        assert!(
            Member::new("c", 0, Alive).change_state(1, Down),
            "transitions to down on higher incarnation"
        );
    }

    #[test]
    fn suspect_transitions() {
        let mut member = Member::new(Id("a"), 0, Suspect);

        // Suspect => Suspect
        assert!(
            member.change_state(member.incarnation + 1, Suspect),
            "can transition to a higher incarnation"
        );

        assert_eq!(1, member.incarnation);
        assert_eq!(Suspect, member.state);

        assert!(
            !member.change_state(member.incarnation - 1, Suspect),
            "cannot transition to a lower incarnation"
        );

        assert!(
            !member.change_state(member.incarnation, Suspect),
            "cannot transition to same state and incarnation {:?}",
            member
        );

        // Suspect => Alive
        assert!(
            !member.change_state(member.incarnation - 1, Alive),
            "lower alive incarnation shouldn't transition"
        );
        assert!(
            !member.change_state(member.incarnation, Alive),
            "same alive incarnation shouldn't transition"
        );

        assert!(
            member.change_state(member.incarnation + 1, Alive),
            "can transition to alive with higher incarnation"
        );
        assert_eq!(Alive, member.state);

        // Suspect => Down, always works
        assert!(
            Member::new("c", 1, Suspect).change_state(0, Down),
            "transitions to down on lower incarnation"
        );
        assert!(
            Member::new("c", 0, Suspect).change_state(0, Down),
            "transitions to down on same incarnation"
        );
        assert!(
            Member::new("c", 0, Suspect).change_state(1, Down),
            "transitions to down on higher incarnation"
        );
    }

    #[test]
    fn down_never_transitions() {
        let mut member = Member::new("dead", 1, Down);

        for incarnation in 0..=2 {
            assert!(!member.change_state(incarnation, Alive));
            assert!(!member.change_state(incarnation, Suspect));
            assert!(!member.change_state(incarnation, Down));
        }
    }

    #[test]
    fn next_walks_sequentially_then_shuffles() {
        let ordered_ids = vec![Id("1"), Id("2"), Id("3"), Id("4"), Id("5")];
        let mut members = Members::new(ordered_ids.iter().cloned().map(Member::alive).collect());

        let mut rng = SmallRng::seed_from_u64(0xF0CA);

        for wanted in ordered_ids.iter() {
            let got = members
                .next(&mut rng)
                .expect("Non-empty set of Alive members should always yield Some()")
                .id;
            assert_eq!(wanted, &got);
        }

        // By now we walked through all known live members so
        // the internal state should've shuffled.
        // We'll verify that by calling `next()` multiple
        // times and comparing with the original `ordered_ids`
        let mut after_shuffle = (0..ordered_ids.len())
            .map(|_| members.next(&mut rng).unwrap().id)
            .collect::<Vec<_>>();
        assert_ne!(ordered_ids, after_shuffle);

        // The shuffle only happens once the cursor walks
        // through the whole set, so `after_shuffle` should
        // contain every member, like `ordered_ids`, but in
        // a distinct order
        after_shuffle.sort_unstable();
        assert_eq!(ordered_ids, after_shuffle);
    }

    #[test]
    fn apply_existing_if_behaviour() {
        let mut members = Members::new(Vec::new());

        assert_eq!(
            None,
            members.apply_existing_if(Member::alive(Id("1")), |_member| true),
            "Only yield None only if member is not found"
        );

        let mut rng = SmallRng::seed_from_u64(0xF0CA);
        let _ = members.apply(Member::alive(Id("1")), &mut rng);

        assert_ne!(
            None,
            members.apply_existing_if(Member::alive(Id("1")), |_member| true),
            "Must yield Some() if existing, regardless of condition"
        );

        assert_ne!(
            None,
            members.apply_existing_if(Member::alive(Id("1")), |_member| false),
            "Must yield Some() if existing, regardless of condition"
        );
    }

    #[test]
    fn apply_summary_behaviour() {
        let mut members = Members::new(Vec::new());
        let mut rng = SmallRng::seed_from_u64(0xF0CA);

        // New and active member
        let res = members.apply(Member::suspect(Id("1")), &mut rng);
        assert_eq!(
            ApplySummary {
                is_active_now: true,
                apply_successful: true,
                changed_active_set: true,
                conflict: ConflictResult::NoConflict,
            },
            res,
        );
        assert_eq!(1, members.len());
        assert_eq!(1, members.num_active());

        // Failed attempt to change member id=1 to alive
        // (since it's already suspect with same incarnation)
        let res = members.apply(Member::alive(Id("1")), &mut rng);
        assert_eq!(
            ApplySummary {
                is_active_now: true,
                apply_successful: false,
                changed_active_set: false,
                conflict: ConflictResult::NoConflict,
            },
            res,
        );
        assert_eq!(1, members.len());

        // Successful attempt at changing member id=1 to
        // alive by using a higher incarnation
        let res = members.apply(Member::new(Id("1"), 1, State::Alive), &mut rng);
        assert_eq!(
            ApplySummary {
                is_active_now: true,
                apply_successful: true,
                changed_active_set: false,
                conflict: ConflictResult::NoConflict,
            },
            res,
        );
        assert_eq!(1, members.len());

        // Change existing member to down
        let res = members.apply(Member::down(Id("1")), &mut rng);
        assert_eq!(
            ApplySummary {
                is_active_now: false,
                apply_successful: true,
                changed_active_set: true,
                conflict: ConflictResult::NoConflict,
            },
            res,
        );
        assert_eq!(1, members.len());
        assert_eq!(0, members.num_active());

        // New and inactive member
        let res = members.apply(Member::down(Id("2")), &mut rng);
        assert_eq!(
            ApplySummary {
                is_active_now: false,
                apply_successful: true,
                changed_active_set: false,
                conflict: ConflictResult::NoConflict,
            },
            res,
        );
        assert_eq!(2, members.len());
        assert_eq!(0, members.num_active());
    }

    #[test]
    fn remove_if_down_works() {
        let mut members = Members::new(Vec::new());
        let mut rng = SmallRng::seed_from_u64(0xF0CA);

        assert_eq!(
            None,
            members.remove_if_down(&Id("1")),
            "cant remove member that does not exist"
        );
        let _ = members.apply(Member::alive(Id("1")), &mut rng);

        assert_eq!(
            None,
            members.remove_if_down(&Id("1")),
            "cant remove member that isnt down"
        );
        let _ = members.apply(Member::down(Id("1")), &mut rng);

        assert_eq!(
            Some(Member::down(Id("1"))),
            members.remove_if_down(&Id("1")),
            "must return the removed member"
        );
    }

    #[test]
    fn next_yields_none_with_no_active_members() {
        let mut members = Members::new(Vec::new());
        let mut rng = SmallRng::seed_from_u64(0xF0CA);

        assert_eq!(
            None,
            members.next(&mut rng),
            "next() should yield None when there are no members"
        );

        let _ = members.apply(Member::down(Id("-1")), &mut rng);
        let _ = members.apply(Member::down(Id("-2")), &mut rng);
        let _ = members.apply(Member::down(Id("-3")), &mut rng);

        assert_eq!(
            None,
            members.next(&mut rng),
            "next() should yield None when there are no active members"
        );

        let _ = members.apply(Member::alive(Id("1")), &mut rng);

        for _i in 0..10 {
            assert_eq!(
                Some(Id("1")),
                members.next(&mut rng).map(|m| m.id),
                "next() should yield the same member if its the only active"
            );
        }
    }

    // Weft patch: the random-position draw of a large, mostly active
    // cluster chooses distinct qualifying members, each about equally
    // often, and falls back to the walk when the picker refuses most.
    #[test]
    fn choose_active_members_draws_uniformly_in_large_clusters() {
        let names: Vec<&'static str> = (0..100)
            .map(|i| &*alloc::boxed::Box::leak(alloc::format!("{i}").into_boxed_str()))
            .collect();
        let members = Members::new(
            names
                .iter()
                .enumerate()
                .map(|(i, n)| if i < 90 { Member::alive(Id(n)) } else { Member::down(Id(n)) })
                .collect(),
        );
        let mut rng = SmallRng::seed_from_u64(0xF0CA);
        let mut counts = alloc::collections::BTreeMap::new();
        let mut out = Vec::new();
        for _ in 0..9_000 {
            out.clear();
            // Member "0" is never wanted.
            members.choose_active_members(3, &mut out, &mut rng, |id| id.0 != "0");
            assert_eq!(3, out.len());
            assert!(out.iter().all(|m| m.is_active() && m.id.0 != "0"));
            assert!(out[0].id != out[1].id && out[0].id != out[2].id && out[1].id != out[2].id);
            for m in &out {
                *counts.entry(m.id.0).or_insert(0u32) += 1;
            }
        }
        // 27,000 picks over 89 qualifying members: about 303 each.
        assert_eq!(89, counts.len());
        assert!(counts.values().all(|c| (200..=410).contains(c)), "{counts:?}");

        // Only two qualify: the draw gives up and the walk finds both.
        out.clear();
        members.choose_active_members(3, &mut out, &mut rng, |id| id.0 == "7" || id.0 == "8");
        let mut found: Vec<&str> = out.iter().map(|m| m.id.0).collect();
        found.sort_unstable();
        assert_eq!(vec!["7", "8"], found);
    }

    #[test]
    fn choose_active_members_behaviour() {
        let members = Members::new(Vec::from([
            // 5 active members
            Member::alive(Id("1")),
            Member::alive(Id("2")),
            Member::alive(Id("3")),
            Member::suspect(Id("4")),
            Member::suspect(Id("5")),
            // 2 down
            Member::down(Id("6")),
            Member::down(Id("7")),
        ]));

        assert_eq!(7, members.len());
        assert_eq!(5, members.num_active());

        let mut out = Vec::new();
        let mut rng = SmallRng::seed_from_u64(0xF0CA);

        out.clear();
        members.choose_active_members(0, &mut out, &mut rng, |_| true);
        assert_eq!(0, out.len(), "Can pointlessly choose 0 members");

        out.clear();
        members.choose_active_members(10, &mut out, &mut rng, |_| false);
        assert_eq!(0, out.len(), "Filtering works");

        out.clear();
        members.choose_active_members(members.len(), &mut out, &mut rng, |_| true);
        assert_eq!(
            members.num_active(),
            out.len(),
            "Only chooses active members"
        );

        out.clear();
        members.choose_active_members(2, &mut out, &mut rng, |_| true);
        assert_eq!(2, out.len(), "Respects `wanted` even if we have more");

        out.clear();
        members.choose_active_members(usize::MAX, &mut out, &mut rng, |&member_id| {
            member_id.0.parse::<usize>().expect("number") > 4
        });
        assert_eq!(vec![Member::suspect(Id("5"))], out);

        out.clear();
        members.choose_down_members(3, &mut out, &mut rng);
        assert_eq!(2, out.len());
        assert!(out.iter().any(|m| m.id == Id("7")));
        assert!(out.iter().any(|m| m.id == Id("6")));
    }

    // Weft patch 12: the index of positions finds every member where a
    // scan of `inner` does, through inserts (each swapped with a random
    // position), address conflicts, state changes, removals and the
    // shuffles of the probe round, including growth of the table.
    #[test]
    fn the_position_index_agrees_with_a_scan() {
        use crate::testing::ID;
        let mut rng = SmallRng::seed_from_u64(0x1d_e7);
        let mut members: Members<ID> = Members::new(Vec::new());
        let check = |members: &Members<ID>| {
            for addr in 0..=u8::MAX {
                let scan = members.inner.iter().position(|m| m.id.addr() == addr);
                assert_eq!(members.position(&addr), scan, "address {addr}");
            }
        };
        for step in 0..4000u32 {
            let addr = rng.random_range(0..200u8);
            let bump = rng.random_range(0..3u8);
            let id = ID::new_with_bump(addr, bump);
            match rng.random_range(0..10u8) {
                0..=5 => {
                    let state = [Alive, Suspect, Down][rng.random_range(0..3usize)];
                    let incarnation = rng.random_range(0..4u16);
                    let _ = members.apply(Member::new(id, incarnation, state), &mut rng);
                }
                6..=8 => {
                    // Removes the member held under this address if it is down.
                    if let Some(held) = members.get(&addr).map(|m| m.id) {
                        let _ = members.remove_if_down(&held);
                    }
                }
                _ => {
                    let _ = members.next(&mut rng);
                }
            }
            if step % 97 == 0 || members.inner.len() < 8 {
                check(&members);
            }
        }
        check(&members);
        assert!(members.inner.len() > 50, "the table grew past its first sizes");
    }

    // Weft patch 10: with no member down, nothing is chosen and no
    // random number is drawn (the walk it skips would draw none).
    #[test]
    fn choosing_down_members_when_none_is_down_draws_nothing() {
        let mut members = Members::new(Vec::from([
            Member::alive(Id("1")),
            Member::suspect(Id("2")),
            Member::alive(Id("3")),
        ]));
        let mut rng = SmallRng::seed_from_u64(0xF0CA);
        let mut untouched = rng.clone();
        let mut out = Vec::new();
        members.choose_down_members(2, &mut out, &mut rng);
        assert!(out.is_empty());
        assert_eq!(
            untouched.random::<u64>(),
            rng.random::<u64>(),
            "no draw was made"
        );

        // One member down: it is found.
        let update = Member::down(Id("3"));
        assert!(members.apply_existing_if(update, |_| true).is_some());
        members.choose_down_members(2, &mut out, &mut rng);
        assert_eq!(vec![Member::down(Id("3"))], out);
    }

    #[test]
    fn sets_replaced_id_on_addr_conflict() {
        let id = crate::testing::ID::new(1).rejoinable();
        let mut members = Members::new(Vec::from([
            // 5 active members
            Member::alive(id),
        ]));

        let renewed = id.renew().unwrap();
        let summary = members
            .apply_existing_if(Member::alive(renewed), |_| true)
            .expect("member found");

        assert!(summary.apply_successful);
        assert_eq!(ConflictResult::Replaced(id), summary.conflict);

        let another = renewed.renew().unwrap();
        let summary = members
            .apply_existing_if(Member::alive(another), |_| false)
            .expect("member found");

        assert!(!summary.apply_successful);
        assert_eq!(
            ConflictResult::FailedCondition,
            summary.conflict,
            "must not apply if condition fails"
        );

        // trying to go back to the past leads to
        // conflict resolution failure
        let summary = members
            .apply_existing_if(Member::alive(id), |_| true)
            .expect("member found");

        assert_eq!(ConflictResult::Lost, summary.conflict,);
        assert!(!summary.apply_successful, "must not apply if conflict lost");
    }
}
