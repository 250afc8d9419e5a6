//! The `Store` trait the mesh core persists events through, and an in-memory store.
//!
//! The node implements it over SQLite (issue 4); the simulator and tests use [`MemStore`].
//! Calls are synchronous: the core decides, the store records. `insert` returning means the
//! event is durable at the store's level (for SQLite, committed).

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::envelope::{Event, EventId, KeyBuildHasher, OriginKey};
use crate::mesh::message::Digest;
use crate::mesh::ranges::SeqRanges;

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

/// Durable storage of events for one node.
pub trait Store {
    /// Stores `event` (idempotent by id).
    fn insert(&mut self, event: Arc<Event>) -> Result<Inserted, StoreError>;
    /// Whether an event with this id is stored.
    fn contains(&self, id: &EventId) -> bool;
    /// Whether `event` is stored. The default asks [`Store::contains`]; a store that
    /// knows its per-origin ranges exactly may answer "no" without a lookup.
    fn holds(&self, event: &Event) -> bool {
        self.contains(&event.id())
    }
    /// The event of `origin` at `seq`, if stored.
    fn get(&self, origin: &OriginKey, seq: u64) -> Option<Arc<Event>>;
    /// Whether the event of `origin` at `seq` was erased (removed by an erase rule, or
    /// refused on arrival as matching one). The core answers requests for it with a Skip,
    /// so peers' ordered delivery moves past it. Default: nothing is ever erased.
    fn erased(&self, origin: &OriginKey, seq: u64) -> bool {
        let _ = (origin, seq);
        false
    }
    /// Per-origin ranges of stored sequence numbers, erased ones included (so a restart
    /// does not reopen the holes an erase leaves).
    fn ranges(&self, origin: &OriginKey) -> Option<&SeqRanges>;
    /// Every origin with at least one stored event, ascending.
    fn origins(&self) -> Vec<OriginKey>;
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
#[derive(Debug)]
pub struct MemStore {
    by_origin: BTreeMap<OriginKey, OriginEvents>,
    ids: std::collections::HashSet<EventId, KeyBuildHasher>,
    len_max: usize,
    /// Erased `(origin, seq)`s (see [`MemStore::erase`]); in the ranges, not in `events`.
    erased: std::collections::BTreeSet<(OriginKey, u64)>,
}

/// One origin's events and the ranges of their sequence numbers (one map lookup serves
/// both).
#[derive(Debug, Default)]
struct OriginEvents {
    events: BTreeMap<u64, Arc<Event>>,
    ranges: SeqRanges,
}

impl MemStore {
    /// A store holding at most `len_max` events.
    pub fn new(len_max: usize) -> Self {
        Self {
            by_origin: BTreeMap::new(),
            ids: std::collections::HashSet::default(),
            len_max,
            erased: std::collections::BTreeSet::new(),
        }
    }

    /// Erases the event of `origin` at `seq` (held or not): removes it, keeps its sequence
    /// number in the ranges and reports it as [`Store::erased`]; a later insert of it
    /// returns [`Inserted::Erased`]. Returns whether an event was removed.
    pub fn erase(&mut self, origin: OriginKey, seq: u64) -> bool {
        self.erased.insert((origin, seq));
        let held = self.by_origin.entry(origin).or_default();
        held.ranges.insert(seq);
        match held.events.remove(&seq) {
            Some(e) => {
                self.ids.remove(&e.id());
                true
            }
            None => false,
        }
    }
}

impl Store for MemStore {
    fn insert(&mut self, event: Arc<Event>) -> Result<Inserted, StoreError> {
        let id = event.id();
        let origin = event.origin();
        let seq = event.seq();
        if self.erased.contains(&(origin, seq)) {
            return Ok(Inserted::Erased);
        }
        // One walk of each tree: the id is a hash of the signed bytes, which name the
        // origin and the sequence number, so the event at (origin, seq) tells both whether
        // this is a duplicate (same id) and whether it equivocates (another id). `ids`
        // always holds exactly the ids of the events in `by_origin`.
        let held = self.by_origin.get_mut(&origin);
        if let Some(existing) = held.as_ref().and_then(|h| h.events.get(&seq)) {
            return if existing.id() == id {
                Ok(Inserted::Duplicate)
            } else {
                Err(StoreError::Equivocation { origin, seq })
            };
        }
        if self.ids.len() >= self.len_max {
            return Err(StoreError::Full {
                len: self.ids.len(),
                max: self.len_max,
            });
        }
        self.ids.insert(id);
        let held = match held {
            Some(h) => h,
            None => self.by_origin.entry(origin).or_default(),
        };
        held.events.insert(seq, event);
        held.ranges.insert(seq);
        Ok(Inserted::New)
    }

    fn contains(&self, id: &EventId) -> bool {
        self.ids.contains(id)
    }

    fn get(&self, origin: &OriginKey, seq: u64) -> Option<Arc<Event>> {
        self.by_origin.get(origin)?.events.get(&seq).cloned()
    }

    fn erased(&self, origin: &OriginKey, seq: u64) -> bool {
        self.erased.contains(&(*origin, seq))
    }

    fn ranges(&self, origin: &OriginKey) -> Option<&SeqRanges> {
        self.by_origin.get(origin).map(|o| &o.ranges)
    }

    fn origins(&self) -> Vec<OriginKey> {
        self.by_origin.keys().copied().collect()
    }

    fn len(&self) -> usize {
        self.ids.len()
    }

    fn clear(&mut self) {
        self.by_origin.clear();
        self.ids.clear();
        self.erased.clear();
    }
}
