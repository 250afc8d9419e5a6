//! The `Store` trait the mesh core persists events through, and an in-memory store.
//!
//! The node implements it over SQLite (issue 4); the simulator and tests use [`MemStore`].
//! Calls are synchronous: the core decides, the store records. `insert` returning means the
//! event is durable at the store's level (for SQLite, committed).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use crate::envelope::{Event, EventId, KeyBuildHasher, OriginKey};
use crate::mesh::message::{Digest, EventRef};
use crate::mesh::ranges::{RANGES_PER_ORIGIN_MAX, SeqRanges};

/// What an insert did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    /// The event is new and now stored.
    New,
    /// The event (same id) was already stored; nothing changed.
    Duplicate,
    /// The event matches an erase rule of the store (the node erased it, or everything
    /// like it, fabric-wide): it is not stored, and the store now reports its
    /// `(origin, seq)` as [`Store::erased`] and in [`Store::ranges`]. The core takes the
    /// sequence number as seen (like a Skip): nothing is delivered or passed on.
    Erased,
}

/// Why the store refused an event. The store is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The store is at its event limit.
    #[error("store holds {len} events, at the limit {max}")]
    Full {
        /// Events held.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A different event already holds this origin and sequence number (the origin
    /// signed two events with one sequence number).
    #[error("origin {origin} already has a different event at seq {seq}")]
    Equivocation {
        /// The origin.
        origin: OriginKey,
        /// The sequence number.
        seq: u64,
    },
    /// The backing storage failed (I/O, corruption).
    #[error("storage failed: {0}")]
    Backend(String),
    /// A local publish of another origin's event (a device's, through this node) to a
    /// stream outside this node's interest: it would be held in the relay cache only, where
    /// nothing answers a peer lacking it (this node's own events outside its interest are
    /// stored), so one published while no member was up would be lost and every later event
    /// of its origin would wait on it everywhere. Refused, as `weft node` refuses it.
    #[error(
        "this node does not store stream {stream}, so it cannot hold another origin's event published through it; publish through a node that stores it"
    )]
    NotStored {
        /// The stream.
        stream: crate::StreamName,
    },
    /// A local publish matches an erase rule: the event was not stored, delivered or
    /// sent; its sequence number is taken as seen (peers get a Skip for it).
    #[error("origin {origin} seq {seq} matches an erase rule and was not stored")]
    Erased {
        /// The origin.
        origin: OriginKey,
        /// The sequence number.
        seq: u64,
    },
}

/// What one event counts against an anti-entropy answer's byte bound
/// ([`BATCH_BYTES_MAX`](crate::mesh::BATCH_BYTES_MAX)), from the length of its signed bytes:
/// those and its signature.
pub fn answer_len(signed_len: usize) -> usize {
    signed_len + crate::limits::SIGNATURE_LEN
}

/// `events` up to the first at which their [`answer_len`]s add up to `bytes_max` (what
/// [`Store::get_run`] gives of a run).
pub fn within_bytes(events: impl Iterator<Item = Arc<Event>>, bytes_max: usize) -> Vec<Arc<Event>> {
    let mut bytes = 0usize;
    let mut out = Vec::new();
    for e in events {
        bytes += answer_len(e.signed_bytes().len());
        out.push(e);
        if bytes >= bytes_max {
            break;
        }
    }
    out
}

/// Durable storage of events for one node.
pub trait Store {
    /// Stores `event` (idempotent by id).
    fn insert(&mut self, event: Arc<Event>) -> Result<Inserted, StoreError>;
    /// Whether an event with this id is stored.
    fn contains(&self, id: &EventId) -> bool;
    /// Whether the event `r` names (its origin, sequence number and id) is stored. The
    /// default asks [`Store::contains`]; a store that knows its per-origin ranges exactly
    /// may answer "no" without a lookup, and one indexed by origin and sequence number may
    /// answer from that index.
    fn holds(&self, r: &EventRef) -> bool {
        self.contains(&r.id)
    }
    /// The event of `origin` at `seq`, if stored.
    ///
    /// An error means the store cannot read it now (a failing disk, a query that fails):
    /// ordered delivery then stops before the number and tries again at its next poll
    /// ([`Stats::delivery_store_errors`](super::Stats::delivery_store_errors)), so an
    /// event is never passed over because its read failed once. A row that reads but is
    /// not a valid event (a corrupt envelope) is `Ok(None)`, counted by the store: reading
    /// it again would give the same, and delivery moves past it.
    fn get(&self, origin: &OriginKey, seq: u64) -> Result<Option<Arc<Event>>, StoreError>;
    /// The events of `origin` stored at `first..=last`, ascending (numbers not stored are
    /// left out): what [`Store::get`] gives for each number of the run, up to the first
    /// event at which the events' [`answer_len`]s add up to `bytes_max` (the rest of the
    /// run may be left out: the caller sends no more than that at once, and a run of a few
    /// thousand large events would otherwise be read whole for one message's worth). The
    /// core reads an anti-entropy answer's events through it, up to a few thousand at a
    /// time; a store that reads from disk overrides it to read the run with one query and
    /// check what it read at once (`weft-node`'s SQLite store verifies the signatures as a
    /// batch). Callers keep runs short (`last - first` at most an answer's batch length):
    /// the default asks [`Store::get`] for every number of it.
    fn get_run(
        &self,
        origin: &OriginKey,
        first: u64,
        last: u64,
        bytes_max: usize,
    ) -> Vec<Arc<Event>> {
        // An answer leaves out what cannot be read now: the requester asks again.
        within_bytes(
            (first..=last).filter_map(|seq| self.get(origin, seq).ok().flatten()),
            bytes_max,
        )
    }
    /// The lowest number in `after + 1 ..= upto` at which an event of `origin` may be
    /// stored, `Ok(None)` if none is: ordered delivery steps over numbers without an event
    /// (not for this node, skipped, taken as lost) with it, so a hole of any length costs
    /// one call. It may answer a number [`Store::get`] then finds empty (an event hidden
    /// by an erase rule); it must not pass over one `get` would give.
    ///
    /// An error means the store cannot tell (a failing disk): the core then stops
    /// delivering `origin` before the run of numbers [`Store::get`] found empty just before
    /// (its reads may be failing too) and tries again at its next poll
    /// ([`Stats::delivery_store_errors`](super::Stats::delivery_store_errors)), rather
    /// than stepping number by number across a hole that can span 10^15 numbers after a
    /// wall-clock floor. (A `get` that fails stops delivery the same way, before its
    /// number.)
    ///
    /// Required, with no default: asking [`Store::get`] number by number stepped a hole of
    /// 10^15 numbers for good, and [`Store::ranges`] alone under-claims once an origin has
    /// [`RANGES_PER_ORIGIN_MAX`] ranges (a node storing some of an origin's streams gets
    /// there soon), so an answer from them passed over events `get` would give.
    fn next_stored(
        &self,
        origin: &OriginKey,
        after: u64,
        upto: u64,
    ) -> Result<Option<u64>, StoreError>;
    /// Whether the event of `origin` at `seq` was erased (removed by an erase rule, or
    /// refused on arrival as matching one). The core answers requests for it with a Skip,
    /// so peers' ordered delivery moves past it. Default: nothing is ever erased.
    fn erased(&self, origin: &OriginKey, seq: u64) -> bool {
        let _ = (origin, seq);
        false
    }
    /// Whether the event of `origin` at `seq` was here once and is gone for good: erased
    /// ([`Store::erased`]), or removed by the store's retention where the store no longer
    /// keeps the number apart (a local publish of it is refused all the same, never
    /// taken as a resend). Unlike [`Store::erased`], never used to answer peers. Default:
    /// [`Store::erased`].
    fn gone(&self, origin: &OriginKey, seq: u64) -> bool {
        self.erased(origin, seq)
    }
    /// Records that this node's own event `id` at `seq` was signed and then refused by
    /// this store (full, or a failing disk): the number is taken as [`Store::erased`] from
    /// then on (in the ranges, answered with a Skip, not given out again after a restart),
    /// so the origin's later events are not held up on any node waiting for it. Default:
    /// not supported (the number stays a hole).
    fn void(&mut self, origin: OriginKey, seq: u64, id: EventId) -> Result<(), StoreError> {
        let _ = (origin, seq, id);
        Err(StoreError::Backend("this store cannot void numbers".into()))
    }
    /// Per-origin ranges of stored sequence numbers, erased ones included (so a restart
    /// does not reopen the holes an erase leaves). They change only when the node inserts
    /// or voids a number of that origin, or through `Node::store_mut`: the core keeps its
    /// anti-entropy summary from them between those (`seen.rs`).
    fn ranges(&self, origin: &OriginKey) -> Option<&SeqRanges>;
    /// Every origin with at least one stored event, ascending.
    fn origins(&self) -> Vec<OriginKey>;
    /// How far delivery of `origin` to the application had come when this store was last
    /// used: every sequence number up to it was delivered (or skipped as not for this
    /// node), none above it. A restarted node resumes delivery there, so events it had
    /// stored above a gap (waiting for the gap to fill) are still delivered. `None`: not
    /// known (the default); the node then takes every stored event as delivered, which
    /// loses those waiting above a gap.
    fn delivered(&self, origin: &OriginKey) -> Option<u64> {
        let _ = origin;
        None
    }
    /// Records the delivery cursor of `origin` (the node calls it as delivery advances).
    /// Default: not kept (a store that knows what was delivered otherwise, from a delivery
    /// log, answers [`Store::delivered`] from there).
    fn set_delivered(&mut self, origin: &OriginKey, seq: u64) {
        let _ = (origin, seq);
    }
    /// Skips this node took on another node's word than the origin's and that still wait
    /// for confirmation (`Node::on_skip`): `(origin, seq, sender)`, in any order. A
    /// restarted node reloads them, so that a false Skip taken shortly before a restart
    /// is still contradicted by the event instead of becoming final. Default: none kept
    /// (a restart then takes every waiting Skip as final).
    fn waiting_skips(&self) -> Vec<(OriginKey, u64, OriginKey)> {
        Vec::new()
    }
    /// Records that the Skip of `(origin, seq)` from `by` waits for confirmation. The core
    /// keeps at most [`super::node::UNCONFIRMED_LEN_MAX`] at once. Default: not kept.
    fn put_waiting_skip(&mut self, origin: &OriginKey, seq: u64, by: &OriginKey) {
        let _ = (origin, seq, by);
    }
    /// Records that the Skip of `(origin, seq)` no longer waits (confirmed, contradicted or
    /// expired). Default: not kept.
    fn take_waiting_skip(&mut self, origin: &OriginKey, seq: u64) {
        let _ = (origin, seq);
    }
    /// The numbers taken as lost that are still open to a late copy
    /// ([`super::Node::lost_open`]), by origin, as [`Store::set_lost_open`] last kept them:
    /// a restarted node reloads them, so that a holder's copy arriving after the restart is
    /// still stored and delivered instead of dropped as a duplicate. Default: none kept (a
    /// restart closes them).
    fn lost_open(&self) -> Vec<(OriginKey, Vec<(u64, u64)>)> {
        Vec::new()
    }
    /// Keeps `ranges` (normalized) as `origin`'s numbers open to a late copy, replacing
    /// what was kept for it; none: forgets the origin's. The core keeps at most
    /// [`super::node::LOST_ORIGINS_MAX`] origins. Default: not kept.
    fn set_lost_open(&mut self, origin: &OriginKey, ranges: &[(u64, u64)]) {
        let _ = (origin, ranges);
    }
    /// Number of stored events.
    fn len(&self) -> usize;
    /// Whether nothing is stored.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Forgets everything (a crash that loses the disk, in the simulator).
    fn clear(&mut self);

    /// The digest of everything stored.
    fn digest(&self) -> Digest {
        self.origins()
            .into_iter()
            .filter_map(|o| self.ranges(&o).map(|r| (o, r.iter().collect())))
            .collect()
    }
}

/// Events held in memory, bounded by a count.
///
/// Indexed by origin and sequence number only (what the core asks: [`Store::holds`],
/// [`Store::get`]); [`Store::contains`] by id alone walks the held events, so it serves
/// tests and checks, not a hot path. An id set beside the table cost a tenth of a
/// simulation's time in hashing and growing it.
#[derive(Debug)]
pub struct MemStore {
    /// Per origin, hashed: the simulator looks an origin up several times per message,
    /// and a tree of 32-byte keys cost a cache miss per level.
    by_origin: HashMap<OriginKey, OriginEvents, KeyBuildHasher>,
    /// The keys of `by_origin` with any sequence number recorded, ascending (for
    /// [`Store::origins`]). A tree, not a sorted vector: each new origin shifted half the
    /// vector, a quarter of a 1000-node simulation's copying.
    origins: BTreeSet<OriginKey>,
    /// Events held.
    len: usize,
    len_max: usize,
    /// Erased `(origin, seq)`s (see [`MemStore::erase`]); in the ranges, not in `events`.
    erased: BTreeSet<(OriginKey, u64)>,
    /// Skips waiting for confirmation ([`Store::put_waiting_skip`]): `(origin, seq)` to
    /// the sender. They survive a restart with the store.
    waiting: BTreeMap<(OriginKey, u64), OriginKey>,
    /// Numbers taken as lost still open to a late copy ([`Store::set_lost_open`]).
    lost_open: BTreeMap<OriginKey, Vec<(u64, u64)>>,
}

/// One origin's events, the ranges of their sequence numbers and its delivery cursor (one
/// map lookup serves all three; a node of a 1000-node simulation holds a thousand, and a
/// second map for the cursors was a fifth of the store's memory and a probe per delivery).
/// An entry made by [`Store::set_delivered`] alone has no ranges and is not among
/// [`Store::origins`].
#[derive(Debug, Default)]
struct OriginEvents {
    events: SeqTable,
    ranges: SeqRanges,
    /// The delivery cursor ([`Store::set_delivered`]), if one was recorded
    /// (`has_delivered`): it survives a restart with the store.
    delivered: u64,
    has_delivered: bool,
    /// The ranges once reached [`RANGES_PER_ORIGIN_MAX`] and may have dropped numbers
    /// still held (they under-claim from then on, even after merges shrink them again).
    lossy: bool,
}

impl OriginEvents {
    fn record(&mut self, seq: u64) {
        self.ranges.insert(seq);
        if self.ranges.range_count() >= RANGES_PER_ORIGIN_MAX {
            self.lossy = true;
        }
    }
}

/// Events by sequence number: a vector indexed by `seq - 1` while sequence numbers come
/// nearly in order (they do: an origin numbers its events from 1 without gaps, and a node
/// holding only some of its streams sees gaps of a few), with a tree for the ones far
/// beyond the end, so a stray large number costs one tree entry, not a huge vector.
#[derive(Debug, Default)]
struct SeqTable {
    dense: Vec<Option<Arc<Event>>>,
    /// Only numbers beyond `dense.len() + 1`; boxed, as it is nearly always empty (an empty
    /// tree inline is 24 bytes per origin per node).
    #[allow(clippy::box_collection)] // the point: 8 bytes inline, not 24
    sparse: Option<Box<BTreeMap<u64, Arc<Event>>>>,
}

/// Most empty slots one insert may add to [`SeqTable::dense`].
const DENSE_GAP_MAX: u64 = 64;

impl SeqTable {
    /// The index of `seq` in `dense`, if it falls there.
    fn slot(&self, seq: u64) -> Option<usize> {
        let i = usize::try_from(seq.checked_sub(1)?).ok()?;
        (i < self.dense.len()).then_some(i)
    }

    fn get(&self, seq: u64) -> Option<&Arc<Event>> {
        match self.slot(seq) {
            Some(i) => self.dense[i].as_ref(),
            None => self.sparse.as_ref()?.get(&seq),
        }
    }

    fn insert(&mut self, seq: u64, event: Arc<Event>) {
        let len = self.dense.len() as u64;
        match seq.checked_sub(1) {
            Some(i) if i < len => self.dense[i as usize] = Some(event),
            Some(i) if i - len <= DENSE_GAP_MAX => {
                self.dense.resize(i as usize + 1, None);
                self.dense[i as usize] = Some(event);
                // Keep every sparse number beyond the vector's end: move in those that
                // now fall inside it or continue it.
                while let Some(entry) = self.sparse.as_mut().and_then(|s| s.first_entry()) {
                    let (at, end) = (*entry.key(), self.dense.len() as u64);
                    if at > end + 1 {
                        break;
                    }
                    let e = entry.remove();
                    if at <= end {
                        self.dense[at as usize - 1] = Some(e);
                    } else {
                        self.dense.push(Some(e));
                    }
                }
            }
            _ => {
                self.sparse.get_or_insert_default().insert(seq, event);
            }
        }
    }

    fn remove(&mut self, seq: u64) -> Option<Arc<Event>> {
        match self.slot(seq) {
            Some(i) => self.dense[i].take(),
            None => self.sparse.as_mut()?.remove(&seq),
        }
    }

    /// The lowest number in `after + 1 ..= upto` that holds an event: the vector's part
    /// scanned (it has at most [`DENSE_GAP_MAX`] empty slots in a row past each insert),
    /// then the tree's, without walking the numbers between.
    fn next(&self, after: u64, upto: u64) -> Option<u64> {
        let from = after.checked_add(1)?;
        if from > upto {
            return None;
        }
        let len = self.dense.len() as u64;
        if from <= len {
            let end = upto.min(len);
            // Indices `from - 1 .. end` are numbers `from ..= end`.
            if let Some(i) = self.dense[(from - 1) as usize..end as usize]
                .iter()
                .position(Option::is_some)
            {
                return Some(from + i as u64);
            }
        }
        let lo = from.max(len + 1);
        if lo > upto {
            return None; // (`range` panics on a reversed range)
        }
        self.sparse
            .as_ref()?
            .range(lo..=upto)
            .next()
            .map(|(&seq, _)| seq)
    }

    fn iter(&self) -> impl Iterator<Item = &Arc<Event>> {
        self.dense
            .iter()
            .flatten()
            .chain(self.sparse.iter().flat_map(|s| s.values()))
    }
}

impl MemStore {
    /// A store holding at most `len_max` events.
    pub fn new(len_max: usize) -> Self {
        Self {
            by_origin: HashMap::default(),
            origins: BTreeSet::new(),
            len: 0,
            len_max,
            erased: BTreeSet::new(),
            waiting: BTreeMap::new(),
            lost_open: BTreeMap::new(),
        }
    }

    /// Erases the event of `origin` at `seq` (held or not): removes it, keeps its sequence
    /// number in the ranges and reports it as [`Store::erased`]; a later insert of it
    /// returns [`Inserted::Erased`]. Returns whether an event was removed.
    pub fn erase(&mut self, origin: OriginKey, seq: u64) -> bool {
        self.erased.insert((origin, seq));
        let held = self.by_origin.entry(origin).or_default();
        Self::record(&mut self.origins, origin, held, seq);
        let removed = held.events.remove(seq).is_some();
        if removed {
            self.len -= 1;
        }
        removed
    }

    /// Records `seq` in `held`, the entry of `origin`, listing the origin in
    /// [`Store::origins`] with its first number (an entry made by `set_delivered` alone is
    /// not listed). A function of the fields, so that a caller holding the entry can call it.
    fn record(
        origins: &mut BTreeSet<OriginKey>,
        origin: OriginKey,
        held: &mut OriginEvents,
        seq: u64,
    ) {
        if held.ranges.range_count() == 0 {
            origins.insert(origin);
        }
        held.record(seq);
    }
}

impl Store for MemStore {
    fn insert(&mut self, event: Arc<Event>) -> Result<Inserted, StoreError> {
        let id = event.id();
        let origin = event.origin();
        let seq = event.seq();
        if !self.erased.is_empty() && self.erased.contains(&(origin, seq)) {
            return Ok(Inserted::Erased);
        }
        // The id is a hash of the signed bytes, which name the origin and the sequence
        // number, so the event at (origin, seq) tells both whether this is a duplicate
        // (same id) and whether it equivocates (another id).
        let held = self.by_origin.get_mut(&origin);
        if let Some(existing) = held.as_ref().and_then(|h| h.events.get(seq)) {
            return if existing.id() == id {
                Ok(Inserted::Duplicate)
            } else {
                Err(StoreError::Equivocation { origin, seq })
            };
        }
        if self.len >= self.len_max {
            return Err(StoreError::Full {
                len: self.len,
                max: self.len_max,
            });
        }
        self.len += 1;
        let held = match held {
            Some(h) => h,
            None => self.by_origin.entry(origin).or_default(),
        };
        held.events.insert(seq, event);
        Self::record(&mut self.origins, origin, held, seq);
        Ok(Inserted::New)
    }

    fn contains(&self, id: &EventId) -> bool {
        self.by_origin
            .values()
            .any(|o| o.events.iter().any(|e| e.id() == *id))
    }

    fn holds(&self, r: &EventRef) -> bool {
        // The origin's ranges answer "no" for a new event (the common question) at once.
        // They are exact unless the origin ever reached the range limit (they may then
        // under-claim for good): the table is asked then, and for every "yes".
        let Some(held) = self.by_origin.get(&r.origin) else {
            return false;
        };
        if !held.lossy && !held.ranges.contains(r.seq) {
            return false;
        }
        held.events.get(r.seq).is_some_and(|e| e.id() == r.id)
    }

    fn get(&self, origin: &OriginKey, seq: u64) -> Result<Option<Arc<Event>>, StoreError> {
        Ok(self
            .by_origin
            .get(origin)
            .and_then(|held| held.events.get(seq).cloned()))
    }

    fn next_stored(
        &self,
        origin: &OriginKey,
        after: u64,
        upto: u64,
    ) -> Result<Option<u64>, StoreError> {
        Ok(self
            .by_origin
            .get(origin)
            .and_then(|held| held.events.next(after, upto)))
    }

    fn get_run(
        &self,
        origin: &OriginKey,
        first: u64,
        last: u64,
        bytes_max: usize,
    ) -> Vec<Arc<Event>> {
        let Some(held) = self.by_origin.get(origin) else {
            return Vec::new();
        };
        within_bytes(
            (first..=last).filter_map(|seq| held.events.get(seq).cloned()),
            bytes_max,
        )
    }

    fn void(&mut self, origin: OriginKey, seq: u64, _id: EventId) -> Result<(), StoreError> {
        self.erase(origin, seq);
        Ok(())
    }

    fn erased(&self, origin: &OriginKey, seq: u64) -> bool {
        self.erased.contains(&(*origin, seq))
    }

    fn ranges(&self, origin: &OriginKey) -> Option<&SeqRanges> {
        self.by_origin
            .get(origin)
            .map(|o| &o.ranges)
            .filter(|r| r.range_count() > 0)
    }

    fn origins(&self) -> Vec<OriginKey> {
        self.origins.iter().copied().collect()
    }

    fn len(&self) -> usize {
        self.len
    }

    fn delivered(&self, origin: &OriginKey) -> Option<u64> {
        self.by_origin
            .get(origin)
            .and_then(|o| o.has_delivered.then_some(o.delivered))
    }

    fn set_delivered(&mut self, origin: &OriginKey, seq: u64) {
        let held = self.by_origin.entry(*origin).or_default();
        held.delivered = seq;
        held.has_delivered = true;
    }

    fn waiting_skips(&self) -> Vec<(OriginKey, u64, OriginKey)> {
        self.waiting
            .iter()
            .map(|(&(origin, seq), &by)| (origin, seq, by))
            .collect()
    }

    fn put_waiting_skip(&mut self, origin: &OriginKey, seq: u64, by: &OriginKey) {
        self.waiting.insert((*origin, seq), *by);
    }

    fn take_waiting_skip(&mut self, origin: &OriginKey, seq: u64) {
        self.waiting.remove(&(*origin, seq));
    }

    fn lost_open(&self) -> Vec<(OriginKey, Vec<(u64, u64)>)> {
        self.lost_open
            .iter()
            .map(|(o, r)| (*o, r.clone()))
            .collect()
    }

    fn set_lost_open(&mut self, origin: &OriginKey, ranges: &[(u64, u64)]) {
        if ranges.is_empty() {
            self.lost_open.remove(origin);
        } else {
            self.lost_open.insert(*origin, ranges.to_vec());
        }
    }

    fn clear(&mut self) {
        self.waiting.clear();
        self.lost_open.clear();
        self.by_origin.clear();
        self.origins.clear();
        self.len = 0;
        self.erased.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn event(seq: u64) -> Arc<Event> {
        let draft = crate::EventDraft {
            stream: crate::StreamName::new("orders.eu").unwrap(),
            key: None,
            seq,
            hlc: crate::Hlc::new(1_764_000_000_000, 0).unwrap(),
            security: crate::SecurityContext {
                tenant: "acme".into(),
                principal: "svc".into(),
                classification: "internal".into(),
                residency: crate::Residency::Unrestricted,
                scopes: Default::default(),
                policy_epoch: 0,
            },
            content_type: "text/plain".into(),
            payload: crate::Payload::Clear(b"x".to_vec()),
            trace: None,
        };
        Arc::new(crate::Signer::from_secret(&[7; 32]).sign(draft).unwrap())
    }

    proptest! {
        /// The table of one origin's events answers like a map, whatever order and gaps
        /// sequence numbers come in (near ones go to the vector, far ones to the tree and
        /// move into the vector when it reaches them).
        #[test]
        fn the_seq_table_behaves_like_a_map(
            seqs in proptest::collection::vec(
                prop_oneof![1u64..40, 1u64..400, Just(u64::MAX)], 0..120),
        ) {
            let mut table = SeqTable::default();
            let mut model = BTreeMap::new();
            for seq in seqs {
                let e = event(seq);
                table.insert(seq, e.clone());
                model.insert(seq, e);
                prop_assert!(table.sparse.iter().flat_map(|s| s.keys()).all(|k| *k > table.dense.len() as u64 + 1));
            }
            for seq in (0..420).chain([u64::MAX, u64::MAX - 1]) {
                prop_assert_eq!(table.get(seq).map(|e| e.id()), model.get(&seq).map(|e| e.id()));
            }
            prop_assert_eq!(table.iter().count(), model.len());
            // `next` finds what a walk number by number would, over any window.
            for (after, upto) in [(0, 420), (0, u64::MAX), (5, 30), (39, 41), (300, 299), (u64::MAX - 1, u64::MAX), (u64::MAX, u64::MAX)] {
                let walked = model.range(after.saturating_add(1).max(1)..).map(|(&s, _)| s).find(|&s| s > after && s <= upto);
                prop_assert_eq!(table.next(after, upto), walked, "after {} upto {}", after, upto);
            }
            if let Some((&seq, _)) = model.iter().next() {
                prop_assert!(table.remove(seq).is_some());
                prop_assert!(table.get(seq).is_none());
            }
        }
    }

    /// Ranges that once hit the limit under-claim even after merges shrink them below it:
    /// `holds` must then ask the table (a stored event reported as not held stalls
    /// ordered delivery).
    #[test]
    fn holds_stays_exact_after_the_ranges_dropped_a_number() {
        let mut store = MemStore::new(5_000);
        let odd: Vec<u64> = (1..2 * RANGES_PER_ORIGIN_MAX as u64).step_by(2).collect();
        for seq in odd {
            store.insert(event(seq)).unwrap();
        }
        let far = event(4_000);
        assert_eq!(store.insert(far.clone()), Ok(Inserted::New));
        store.insert(event(2)).unwrap();
        assert!(store.ranges(&far.origin()).unwrap().range_count() < RANGES_PER_ORIGIN_MAX);
        assert!(
            store.holds(&EventRef::of(&far)),
            "a stored event reported as not held"
        );
        assert!(store.contains(&far.id()));
    }

    /// A run read at once gives what `get` gives number by number: held numbers in order,
    /// holes, erased and far (tree-held) numbers left out, an unknown origin nothing.
    #[test]
    fn a_run_reads_like_get_number_by_number() {
        let mut store = MemStore::new(100);
        for seq in [1, 2, 4, 5, 9, 300] {
            store.insert(event(seq)).unwrap();
        }
        let origin = event(1).origin();
        store.erase(origin, 5);
        for (first, last) in [(1, 10), (3, 3), (4, 4), (6, 8), (1, 400), (299, 301)] {
            let run: Vec<u64> = store
                .get_run(&origin, first, last, usize::MAX)
                .iter()
                .map(|e| e.seq())
                .collect();
            let one_by_one: Vec<u64> = (first..=last)
                .filter_map(|seq| store.get(&origin, seq).unwrap())
                .map(|e| e.seq())
                .collect();
            assert_eq!(run, one_by_one, "run {first}..={last}");
        }
        assert_eq!(store.get_run(&origin, 1, 10, usize::MAX).len(), 4);
        assert!(
            store
                .get_run(&OriginKey([9; 32]), 1, 10, usize::MAX)
                .is_empty()
        );
    }

    #[test]
    fn holds_and_contains_agree_with_insert() {
        let mut store = MemStore::new(10);
        let (a, b) = (event(1), event(500));
        assert_eq!(store.insert(a.clone()), Ok(Inserted::New));
        assert_eq!(store.insert(b.clone()), Ok(Inserted::New));
        assert_eq!(store.insert(a.clone()), Ok(Inserted::Duplicate));
        for e in [&a, &b] {
            assert!(store.holds(&EventRef::of(e)));
            assert!(store.contains(&e.id()));
        }
        let absent = event(2);
        assert!(!store.holds(&EventRef::of(&absent)));
        assert!(!store.contains(&absent.id()));
        assert_eq!(store.len(), 2);
        assert!(store.erase(a.origin(), 1));
        assert!(!store.holds(&EventRef::of(&a)) && store.len() == 1);
        assert_eq!(store.insert(a), Ok(Inserted::Erased));
    }

    /// A delivery cursor shares its origin's entry with the events: recorded alone it lists
    /// no origin and claims no ranges; the origin's first insert or erase lists it.
    #[test]
    fn a_delivery_cursor_alone_lists_no_origin() {
        let (a, b) = (event(1), event(2));
        let origin = a.origin();
        for erase_first in [false, true] {
            let mut store = MemStore::new(10);
            assert_eq!(store.delivered(&origin), None);
            store.set_delivered(&origin, 0);
            assert_eq!(store.delivered(&origin), Some(0));
            assert!(store.origins().is_empty() && store.ranges(&origin).is_none());
            assert!(store.digest().is_empty());
            if erase_first {
                assert!(!store.erase(origin, 1));
            } else {
                assert_eq!(store.insert(a.clone()), Ok(Inserted::New));
            }
            assert_eq!(store.origins(), vec![origin]);
            assert_eq!(store.ranges(&origin).map(SeqRanges::count), Some(1));
            store.insert(b.clone()).unwrap();
            store.set_delivered(&origin, 2);
            assert_eq!(store.delivered(&origin), Some(2));
            assert_eq!(store.origins(), vec![origin], "listed once");
            store.clear();
            assert_eq!(store.delivered(&origin), None);
            assert!(store.origins().is_empty() && store.is_empty());
        }
    }

    /// A node of a 1000-node mesh holds a thousand of these entries (see the seen-set's
    /// twin of this test).
    #[cfg(target_pointer_width = "64")]
    #[test]
    fn an_origin_entry_stays_within_seventy_two_bytes() {
        assert!(
            std::mem::size_of::<OriginEvents>() <= 72,
            "{}",
            std::mem::size_of::<OriginEvents>()
        );
    }
}
