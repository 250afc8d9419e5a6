//! Member records: who a node is, as SWIM (foca) carries it around the mesh.

use std::borrow::Cow;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use smol_str::SmolStr;

use crate::envelope::OriginKey;

/// A node's identity and placement, gossiped by SWIM. `generation` grows each time the node
/// rejoins after a crash, so the fresh record replaces the stale one everywhere.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MemberInfo {
    /// The node's Ed25519 public key: its stable identity.
    pub key: [u8; 32],
    /// Cloud region id, e.g. `aws:eu-west-1`.
    pub region: SmolStr,
    /// Cloud provider, e.g. `aws`.
    pub cloud: SmolStr,
    /// Jurisdiction code the node claims (policy checks it in issue 6).
    pub jurisdiction: SmolStr,
    /// Where peers reach it (a socket address for the node, a label in the simulator).
    pub addr: SmolStr,
    /// The policy epoch the node enforces.
    pub policy_epoch: u64,
    /// Incremented on every rejoin.
    pub generation: u32,
}

impl MemberInfo {
    /// The node key as an [`OriginKey`].
    pub fn node_key(&self) -> OriginKey {
        OriginKey(self.key)
    }
}

/// SWIM's identity of a member: its [`MemberInfo`], held by reference.
///
/// foca keeps a copy of every member's identity, puts one in every update it sends and
/// decodes one from every update it receives, and compares each received one with the
/// copy it holds. While a 1000-node mesh forms, every node receives each of the 1000 joins
/// about a dozen times (SWIM's dissemination), nearly all of them changing nothing. Held
/// by value, each such update decoded four strings and compared a 144-byte record read
/// from a cold copy. Decoded records are instead interned ([`intern`]): an update naming a
/// record already held on this thread decodes to a handle on the same allocation, which
/// compares by pointer (handles made on different threads compare field by field). The
/// wire encoding is exactly [`MemberInfo`]'s.
#[derive(Clone)]
pub struct SwimId(Arc<MemberInfo>);

impl SwimId {
    /// The handle on `info` (interned: equal records made on one thread share one
    /// allocation).
    pub fn new(info: MemberInfo) -> Self {
        intern::with(|table| table.get_or_insert(info))
    }

    /// The member record.
    pub fn info(&self) -> &MemberInfo {
        &self.0
    }
}

impl std::ops::Deref for SwimId {
    type Target = MemberInfo;

    fn deref(&self) -> &MemberInfo {
        &self.0
    }
}

impl From<MemberInfo> for SwimId {
    fn from(info: MemberInfo) -> Self {
        SwimId::new(info)
    }
}

impl PartialEq for SwimId {
    fn eq(&self, other: &Self) -> bool {
        // Interned: equal records are nearly always one allocation.
        Arc::ptr_eq(&self.0, &other.0) || *self.0 == *other.0
    }
}

impl Eq for SwimId {}

impl std::hash::Hash for SwimId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl std::fmt::Debug for SwimId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl Serialize for SwimId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

/// [`MemberInfo`]'s fields in its order, the strings borrowed from the input where the
/// format allows: a record already interned is found without building its strings.
#[derive(Deserialize)]
#[serde(rename = "MemberInfo")]
struct WireMember<'a> {
    key: [u8; 32],
    #[serde(borrow)]
    region: Cow<'a, str>,
    #[serde(borrow)]
    cloud: Cow<'a, str>,
    #[serde(borrow)]
    jurisdiction: Cow<'a, str>,
    #[serde(borrow)]
    addr: Cow<'a, str>,
    policy_epoch: u64,
    generation: u32,
}

impl intern::Candidate for WireMember<'_> {
    fn key(&self) -> ([u8; 32], u32) {
        (self.key, self.generation)
    }

    fn matches(&self, m: &MemberInfo) -> bool {
        m.policy_epoch == self.policy_epoch
            && m.region == *self.region
            && m.cloud == *self.cloud
            && m.jurisdiction == *self.jurisdiction
            && m.addr == *self.addr
    }

    fn into_info(self) -> MemberInfo {
        MemberInfo {
            key: self.key,
            region: SmolStr::new(&self.region),
            cloud: SmolStr::new(&self.cloud),
            jurisdiction: SmolStr::new(&self.jurisdiction),
            addr: SmolStr::new(&self.addr),
            policy_epoch: self.policy_epoch,
            generation: self.generation,
        }
    }
}

impl intern::Candidate for MemberInfo {
    fn key(&self) -> ([u8; 32], u32) {
        (self.key, self.generation)
    }

    fn matches(&self, m: &MemberInfo) -> bool {
        self == m
    }

    fn into_info(self) -> MemberInfo {
        self
    }
}

impl<'de> Deserialize<'de> for SwimId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let wire = WireMember::deserialize(deserializer)?;
        Ok(intern::with(|table| table.get_or_insert(wire)))
    }
}

impl foca::Identity for SwimId {
    type Addr = [u8; 32];

    fn renew(&self) -> Option<Self> {
        let mut next = (*self.0).clone();
        next.generation = self.generation.checked_add(1)?;
        Some(SwimId::new(next))
    }

    fn addr(&self) -> [u8; 32] {
        self.key
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.generation > adversary.generation
    }
}

/// The interning table of [`SwimId`]: one per thread, so that equal records decoded by any
/// node on that thread share one allocation (the simulator runs all its nodes on one; the
/// node's core may move between the runtime's threads, and a record interned on two of
/// them is two allocations, equal by their fields). A thread's table holds at most 4,096
/// records or twice what was held at its last sweep, whichever is more (a sweep runs on an
/// insert that passes that). The table's hasher is `FxHash`, as the core's other
/// maps: its keys come from members, whose messages the transport authenticates.
///
/// Hand-written rather than an interning crate: the lookup is by a record's key and
/// generation with the other fields compared against the borrowed wire form (so a hit
/// builds nothing), and entries no handle holds any more are swept, which the general
/// interners (`internment`, `arc-interner`) do not offer together.
mod intern {
    use super::*;
    use std::cell::RefCell;

    /// The records of one (key, generation): several when the node changed its policy
    /// epoch or address under one generation.
    type Records = smallvec::SmallVec<[Arc<MemberInfo>; 1]>;

    /// Records by (key, generation).
    #[derive(Default)]
    pub(super) struct Table {
        by_key: rustc_hash::FxHashMap<([u8; 32], u32), Records>,
        len: usize,
        /// Entries after the last sweep: the next comes when the table has doubled.
        swept_len: usize,
    }

    /// The smallest table that is swept (below it, sweeping costs more than it frees).
    const SWEEP_FLOOR: usize = 4096;

    /// A record to intern: its (key, generation), whether a held record is it, and the
    /// record itself (built only when none is).
    pub(super) trait Candidate {
        fn key(&self) -> ([u8; 32], u32);
        fn matches(&self, held: &MemberInfo) -> bool;
        fn into_info(self) -> MemberInfo;
    }

    impl Table {
        pub(super) fn get_or_insert(&mut self, record: impl Candidate) -> SwimId {
            let held = self.by_key.entry(record.key()).or_default();
            if let Some(found) = held.iter().find(|h| record.matches(h)) {
                return SwimId(Arc::clone(found));
            }
            let made = Arc::new(record.into_info());
            held.push(Arc::clone(&made));
            self.len += 1;
            if self.len > SWEEP_FLOOR.max(2 * self.swept_len) {
                self.sweep();
            }
            SwimId(made)
        }

        /// Records in the table, held or not.
        #[cfg(test)]
        pub(super) fn len(&self) -> usize {
            self.len
        }

        /// Drops the records no handle holds.
        fn sweep(&mut self) {
            self.by_key.retain(|_, held| {
                held.retain(|h| Arc::strong_count(h) > 1);
                !held.is_empty()
            });
            self.len = self.by_key.values().map(|h| h.len()).sum();
            self.swept_len = self.len;
        }
    }

    thread_local! {
        static TABLE: RefCell<Table> = RefCell::new(Table::default());
    }

    pub(super) fn with<R>(f: impl FnOnce(&mut Table) -> R) -> R {
        TABLE.with(|t| f(&mut t.borrow_mut()))
    }
}

#[cfg(test)]
impl MemberInfo {
    /// A member record for tests: key `[key; 32]` in `region`.
    pub(crate) fn for_test(key: u8, region: &str) -> Self {
        MemberInfo {
            key: [key; 32],
            region: region.into(),
            cloud: "c".into(),
            jurisdiction: "EU".into(),
            addr: format!("n{key}").into(),
            policy_epoch: 0,
            generation: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn len() -> usize {
        intern::with(|t| t.len())
    }

    /// A handle encodes exactly as its record (the wire is unchanged), decodes to an equal
    /// record, and decodes of one record share one allocation.
    #[test]
    fn a_handle_is_its_record_on_the_wire_and_equal_records_share_one() {
        let info = MemberInfo::for_test(7, "aws:eu-west-1");
        let id = SwimId::new(info.clone());
        let bytes = postcard::to_allocvec(&id).unwrap();
        assert_eq!(bytes, postcard::to_allocvec(&info).unwrap());
        let a: SwimId = postcard::from_bytes(&bytes).unwrap();
        let b: SwimId = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(*a.info(), info);
        assert!(Arc::ptr_eq(&a.0, &b.0) && Arc::ptr_eq(&a.0, &id.0));
        // Every field tells records apart: each changed one decodes to another record.
        let changes: [fn(&mut MemberInfo); 7] = [
            |m| m.key[31] ^= 1,
            |m| m.region = "aws:us-east-1".into(),
            |m| m.cloud = "d".into(),
            |m| m.jurisdiction = "US".into(),
            |m| m.addr = "elsewhere:1".into(),
            |m| m.policy_epoch += 1,
            |m| m.generation += 1,
        ];
        for change in changes {
            let mut other = info.clone();
            change(&mut other);
            let decoded: SwimId =
                postcard::from_bytes(&postcard::to_allocvec(&other).unwrap()).unwrap();
            assert_eq!(*decoded.info(), other);
            assert_ne!(decoded, a);
            assert!(!Arc::ptr_eq(&decoded.0, &a.0));
        }
        // A format that cannot lend its strings (escapes in JSON) decodes the same record.
        let mut escaped = info.clone();
        escaped.addr = "n\"7\"".into();
        let json = serde_json::to_string(&escaped).unwrap();
        let from_json: SwimId = serde_json::from_str(&json).unwrap();
        assert_eq!(*from_json.info(), escaped);
        // A renewed identity is the next generation of the same record.
        let next = foca::Identity::renew(&a).unwrap();
        assert_eq!(next.generation, 1);
        assert_eq!(foca::Identity::addr(&next), info.key);
        assert!(foca::Identity::win_addr_conflict(&next, &a));
    }

    /// Holds `n` records while 80,000 others pass through the table; returns the most the
    /// table held, having checked that a decode still finds each held one.
    fn churn_holding(n: u32) -> usize {
        let held: Vec<SwimId> = (0..n)
            .map(|g| {
                let mut m = MemberInfo::for_test(1, "r");
                m.generation = 1_000_000 + g;
                SwimId::new(m)
            })
            .collect();
        let mut most = 0;
        for g in 0..20 * 4096u32 {
            let mut m = MemberInfo::for_test(2, "r");
            m.generation = g;
            drop(SwimId::new(m));
            most = most.max(len());
        }
        // The held ones survived every sweep: a decode still finds them.
        for id in &held {
            let bytes = postcard::to_allocvec(id).unwrap();
            let again: SwimId = postcard::from_bytes(&bytes).unwrap();
            assert!(Arc::ptr_eq(&again.0, &id.0));
        }
        most
    }

    /// Records no handle holds any more are swept: the table holds at most its floor (4,096)
    /// or twice what is held (and the record being made), however many pass through it.
    #[test]
    fn records_no_handle_holds_are_swept() {
        let most = churn_holding(100);
        assert!(most <= 4096 + 1, "the table grew to {most} holding 100");
    }

    #[test]
    fn a_table_holding_many_records_stays_within_twice_what_it_holds() {
        let most = churn_holding(3000);
        assert!(
            most <= 2 * 3001 + 1,
            "the table grew to {most} holding 3000"
        );
    }

    /// Two records of one key and generation (another policy epoch) are both held, and
    /// each decodes to its own.
    #[test]
    fn records_of_one_key_and_generation_are_told_apart() {
        let first = MemberInfo::for_test(3, "r");
        let mut second = first.clone();
        second.policy_epoch = 9;
        let (a, b) = (SwimId::new(first.clone()), SwimId::new(second.clone()));
        assert!(!Arc::ptr_eq(&a.0, &b.0));
        for (id, info) in [(&a, &first), (&b, &second)] {
            let again: SwimId =
                postcard::from_bytes(&postcard::to_allocvec(info).unwrap()).unwrap();
            assert!(Arc::ptr_eq(&again.0, &id.0));
        }
    }

    /// The node's core may move between threads: a record interned on another thread is
    /// another allocation, and still equal (foca must not see one member as two).
    #[test]
    fn handles_made_on_two_threads_are_equal() {
        let info = MemberInfo::for_test(4, "r");
        let bytes = postcard::to_allocvec(&info).unwrap();
        let here: SwimId = postcard::from_bytes(&bytes).unwrap();
        let there: SwimId = std::thread::spawn(move || postcard::from_bytes(&bytes).unwrap())
            .join()
            .unwrap();
        assert!(!Arc::ptr_eq(&here.0, &there.0));
        assert_eq!(here, there);
        let mut other = info.clone();
        other.addr = "moved:1".into();
        assert_ne!(here, SwimId::new(other));
    }
}
