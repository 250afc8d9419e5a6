//! Keyed tables: per-key state materialized from the keyed events of a stream, with a
//! conflict strategy chosen per stream, resolving concurrent writes identically on every
//! replica. Pure and deterministic: the state after a set of writes does not depend on the
//! order they were applied in (across origins), and applying a write twice changes nothing.
//!
//! A write is one keyed event: its **dot** (origin, sequence number) identifies it, its
//! HLC orders it in time, and its payload is either an [`Op`] (content type
//! [`OP_CONTENT_TYPE`], canonical CBOR) or any other content, which is a plain put of that
//! content (for `lww` and `multi-value` tables).
//!
//! Causal contexts are **version vectors** ([`Vv`]: per origin, the highest sequence
//! number seen). That is exact because the mesh delivers each origin's events in sequence
//! order on every node: when a node has applied (O, s), it has applied every earlier write
//! of O to the table, so "everything of O up to s" is what it observed. The table relies on
//! that (a write of O with a sequence number at or below the highest applied is a
//! duplicate), and writes from different origins may come in any order.
//!
//! Strategies:
//! - `lww`: the write with the greatest (HLC, origin, sequence) wins; a delete is a
//!   tombstone in the same order, so an older write arriving late never resurrects a
//!   deleted key. HLCs respect causality (a write made after seeing another has a greater
//!   HLC), so LWW never loses a write to one it had already seen.
//! - `multi-value`: concurrent writes are kept as siblings; a write carrying a context
//!   (the versions its writer had seen) supersedes the siblings the context covers, and
//!   later-arriving writes the context covers are dropped. A delete supersedes what it
//!   covers and adds nothing (concurrent writes survive: add wins).
//! - `counter`: a PN-counter: per origin, the sums of its increments and decrements; the
//!   value is their total. A delete names, per origin, the last increment its writer had
//!   seen; every replica resets the increments of that origin up to that number that it
//!   holds itself (not the sums the delete carries), and the value counts only what came
//!   after: concurrent increments survive the reset, and an increment erased from every
//!   replica leaves no trace in a reset ([`apply_key_with`]).
//! - `set`: an observed-remove set: every insert tags its elements with its dot; a remove
//!   (or a delete of the key) removes the tags its context covers; a concurrent insert
//!   survives (add wins).
//!
//! Tombstones and the bookkeeping that makes late writes harmless (`covered`, `removed`,
//! counter resets) are kept per key. When it is safe to drop them, and why the node does
//! not yet, is in `docs/tables.md`.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::envelope::OriginKey;
use crate::hlc::Hlc;

/// Content type of a payload holding an [`Op`] in canonical CBOR.
pub const OP_CONTENT_TYPE: &str = "application/vnd.weft.table-op+cbor";

/// Most entries in one version vector of an operation (distinct origins).
pub const VV_LEN_MAX: usize = 1024;
/// Most elements one set operation names.
pub const SET_ELEMENTS_MAX: usize = 1024;
/// Most siblings a multi-value key takes new concurrent writes beside (checked where a
/// write enters the fabric, not where it is applied: every replica must apply the same
/// writes). Concurrent writes at several nodes can pass it together, by at most one each.
pub const SIBLINGS_MAX: usize = 64;
/// Most elements a set key takes new elements beside (checked where a write enters the
/// fabric, as [`SIBLINGS_MAX`]): each write carries the whole row to the store.
pub const SET_KEY_ELEMENTS_MAX: usize = 16_384;

/// How a table resolves concurrent writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Last writer wins by (HLC, origin, sequence).
    Lww,
    /// Concurrent writes kept as siblings.
    MultiValue,
    /// PN-counter.
    Counter,
    /// Observed-remove set.
    Set,
}

impl Strategy {
    /// The name used in policy bundles and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Lww => "lww",
            Strategy::MultiValue => "multi-value",
            Strategy::Counter => "counter",
            Strategy::Set => "set",
        }
    }

    /// Whether a table of this strategy takes `op`; every replica ignores one it does not
    /// (`add` on an lww table, `put` on a counter), so the node refuses it where it enters.
    pub fn takes(self, op: &Op) -> bool {
        matches!(
            (self, op),
            (
                Strategy::Lww | Strategy::MultiValue,
                Op::Put { .. } | Op::Delete { .. }
            ) | (Strategy::Counter, Op::Add { .. } | Op::Delete { .. })
                | (
                    Strategy::Set,
                    Op::Insert { .. } | Op::Remove { .. } | Op::Delete { .. }
                )
        )
    }

    /// The operations a table of this strategy takes, for error messages.
    pub fn ops(self) -> &'static str {
        match self {
            Strategy::Lww | Strategy::MultiValue => "put and delete",
            Strategy::Counter => "add and delete",
            Strategy::Set => "insert, remove and delete",
        }
    }
}

/// A write's identity: its origin and that origin's sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Dot {
    /// The producer.
    pub origin: OriginKey,
    /// Its sequence number.
    pub seq: u64,
}

/// A version vector: per origin, the highest sequence number seen.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Vv(pub BTreeMap<OriginKey, u64>);

impl Vv {
    /// Each origin's number at most `bound`'s (the meet): an origin `bound` does not name
    /// is dropped.
    pub fn capped(&self, bound: &Vv) -> Vv {
        Vv(self
            .0
            .iter()
            .filter_map(|(o, s)| {
                let cap = bound.0.get(o)?;
                Some((*o, (*s).min(*cap)))
            })
            .filter(|(_, s)| *s > 0)
            .collect())
    }

    /// Whether the vector covers `dot`.
    pub fn covers(&self, dot: &Dot) -> bool {
        self.0.get(&dot.origin).is_some_and(|s| *s >= dot.seq)
    }

    /// Pointwise maximum.
    pub fn join(&mut self, other: &Vv) {
        for (o, s) in &other.0 {
            let e = self.0.entry(*o).or_insert(0);
            *e = (*e).max(*s);
        }
    }

    /// Raises the entry of `dot`'s origin to cover it.
    pub fn add(&mut self, dot: &Dot) {
        let e = self.0.entry(dot.origin).or_insert(0);
        *e = (*e).max(dot.seq);
    }
}

/// Per-origin sums of a counter key's increments (`p`) and decrements (`n`), up to and
/// including that origin's write `seq`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Totals {
    /// The origin's last write counted.
    pub seq: u64,
    /// Sum of positive deltas.
    pub p: u128,
    /// Sum of the magnitudes of negative deltas.
    pub n: u128,
}

impl Totals {
    /// Counts an increment (`delta` >= 0) or a decrement into the sums.
    pub fn add(&mut self, delta: i64) {
        if delta >= 0 {
            self.p = self.p.wrapping_add(delta as u128);
        } else {
            self.n = self.n.wrapping_add(delta.unsigned_abs() as u128);
        }
    }
}

/// A table operation, carried as a keyed event's payload (content type
/// [`OP_CONTENT_TYPE`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `lww` / `multi-value`: set the value. `ctx`: the versions the writer had seen
    /// (multi-value resolves the siblings it covers; lww ignores it).
    Put {
        /// Content type of the value.
        content_type: String,
        /// The value.
        value: Vec<u8>,
        /// Versions superseded.
        ctx: Vv,
    },
    /// Delete the key: an lww tombstone; for multi-value and set, removes what `ctx`
    /// covers; for a counter, resets the per-origin sums in `totals`.
    Delete {
        /// Versions superseded (multi-value, set).
        ctx: Vv,
        /// Counter sums seen by the writer (counter).
        totals: BTreeMap<OriginKey, Totals>,
    },
    /// `counter`: add `delta` (negative to subtract).
    Add {
        /// The change.
        delta: i64,
    },
    /// `set`: insert elements, each tagged with the write's dot. The tags of these
    /// elements that `ctx` covers are superseded by the new one (as a remove of them with
    /// `ctx` would, then the insert): an element inserted again and again keeps one tag
    /// per concurrent inserter instead of one per insert. An empty `ctx` (a blind insert,
    /// and every insert before 2026-12-03) supersedes nothing.
    Insert {
        /// Elements.
        elements: Vec<Vec<u8>>,
        /// Versions of these elements' tags superseded.
        ctx: Vv,
    },
    /// `set`: remove the tags of these elements that `ctx` covers.
    Remove {
        /// Elements.
        elements: Vec<Vec<u8>>,
        /// Versions superseded.
        ctx: Vv,
    },
}

/// Why an operation payload was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpError {
    /// Not the CBOR of an operation.
    #[error("table operation: malformed CBOR: {0}")]
    Malformed(String),
    /// A field over its limit.
    #[error("table operation: {field} has {len} entries, over {max}")]
    TooLong {
        /// Which field.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// An origin key that is not 32 bytes.
    #[error("table operation: an origin key in {field} is {len} bytes, not 32")]
    BadOrigin {
        /// Which field.
        field: &'static str,
        /// Its length.
        len: usize,
    },
}

// The wire form: plain serde structs encoded with cbor4ii, keys as byte strings. A map
// with the operation's name under "op" and its fields beside it; read through `WireOpIn`.
#[derive(Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum WireOp {
    Put {
        content_type: String,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        #[serde(default)]
        ctx: Vec<WireVvEntry>,
    },
    Delete {
        #[serde(default)]
        ctx: Vec<WireVvEntry>,
        #[serde(default)]
        totals: Vec<WireTotals>,
    },
    Add {
        delta: i64,
    },
    Insert {
        elements: Vec<serde_bytes::ByteBuf>,
        // Left out when empty: a blind insert encodes as before (nodes of older builds
        // take it; one with a context they refuse as malformed).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        ctx: Vec<WireVvEntry>,
    },
    Remove {
        elements: Vec<serde_bytes::ByteBuf>,
        #[serde(default)]
        ctx: Vec<WireVvEntry>,
    },
}

/// The operation names of [`WireOp`].
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
enum OpKind {
    Put,
    Delete,
    Add,
    Insert,
    Remove,
}

/// How [`WireOp`] is read: every operation's fields, each optional, in one pass over the
/// map (serde reads an internally tagged enum by buffering the whole map first, which was
/// most of the time a replica spent on a table write); [`WireOpIn::check`] then refuses a
/// field the named operation does not take and requires the ones it must have, as the
/// tagged enum would.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireOpIn {
    op: OpKind,
    content_type: Option<String>,
    #[serde(default, with = "serde_bytes")]
    value: Option<Vec<u8>>,
    ctx: Option<Vec<WireVvEntry>>,
    totals: Option<Vec<WireTotals>>,
    delta: Option<i64>,
    elements: Option<Vec<serde_bytes::ByteBuf>>,
}

impl WireOpIn {
    fn check(&self) -> Result<(), OpError> {
        let (name, takes, needs): (&str, &[&str], &[&str]) = match self.op {
            OpKind::Put => (
                "put",
                &["content_type", "value", "ctx"],
                &["content_type", "value"],
            ),
            OpKind::Delete => ("delete", &["ctx", "totals"], &[]),
            OpKind::Add => ("add", &["delta"], &["delta"]),
            OpKind::Insert => ("insert", &["elements", "ctx"], &["elements"]),
            OpKind::Remove => ("remove", &["elements", "ctx"], &["elements"]),
        };
        let fields = [
            ("content_type", self.content_type.is_some()),
            ("value", self.value.is_some()),
            ("ctx", self.ctx.is_some()),
            ("totals", self.totals.is_some()),
            ("delta", self.delta.is_some()),
            ("elements", self.elements.is_some()),
        ];
        for (field, present) in fields {
            if present && !takes.contains(&field) {
                return Err(OpError::Malformed(format!(
                    "unknown field `{field}` for op `{name}`"
                )));
            }
            if !present && needs.contains(&field) {
                return Err(OpError::Malformed(format!(
                    "missing field `{field}` for op `{name}`"
                )));
            }
        }
        Ok(())
    }
}

#[derive(Serialize, Deserialize)]
struct WireVvEntry(#[serde(with = "serde_bytes")] Vec<u8>, u64);

// The sums are 16-byte big-endian byte strings: the CBOR reader does not take 128-bit
// integers (a `u128` field made every counter delete with totals undecodable).
#[derive(Serialize, Deserialize)]
struct WireTotals(
    #[serde(with = "serde_bytes")] Vec<u8>,
    u64,
    #[serde(with = "serde_bytes")] Vec<u8>,
    #[serde(with = "serde_bytes")] Vec<u8>,
);

fn u128_from_wire(field: &'static str, bytes: &[u8]) -> Result<u128, OpError> {
    <[u8; 16]>::try_from(bytes)
        .map(u128::from_be_bytes)
        .map_err(|_| OpError::Malformed(format!("{field}: a sum is {} bytes, not 16", bytes.len())))
}

fn origin(field: &'static str, bytes: &[u8]) -> Result<OriginKey, OpError> {
    <[u8; 32]>::try_from(bytes)
        .map(OriginKey)
        .map_err(|_| OpError::BadOrigin {
            field,
            len: bytes.len(),
        })
}

fn vv_from_wire(field: &'static str, entries: Vec<WireVvEntry>) -> Result<Vv, OpError> {
    if entries.len() > VV_LEN_MAX {
        return Err(OpError::TooLong {
            field,
            len: entries.len(),
            max: VV_LEN_MAX,
        });
    }
    let mut vv = Vv::default();
    for WireVvEntry(o, s) in entries {
        vv.add(&Dot {
            origin: origin(field, &o)?,
            seq: s,
        });
    }
    Ok(vv)
}

fn vv_to_wire(vv: &Vv) -> Vec<WireVvEntry> {
    vv.0.iter()
        .map(|(o, s)| WireVvEntry(o.0.to_vec(), *s))
        .collect()
}

fn elements_check(elements: &[serde_bytes::ByteBuf]) -> Result<(), OpError> {
    if elements.len() > SET_ELEMENTS_MAX {
        return Err(OpError::TooLong {
            field: "elements",
            len: elements.len(),
            max: SET_ELEMENTS_MAX,
        });
    }
    Ok(())
}

impl Op {
    /// The operation's name, as its CBOR and the API spell it.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Put { .. } => "put",
            Op::Delete { .. } => "delete",
            Op::Add { .. } => "add",
            Op::Insert { .. } => "insert",
            Op::Remove { .. } => "remove",
        }
    }

    /// The writes the operation names as seen by its writer: its context, with a counter
    /// deletion's per-origin sums (each names the last write of its origin it counted).
    /// A replica applies the operation against these for good, so a node taking an
    /// operation signed elsewhere checks that their origins have written them.
    pub fn seen(&self) -> Vv {
        let mut seen = match self {
            Op::Put { ctx, .. }
            | Op::Delete { ctx, .. }
            | Op::Insert { ctx, .. }
            | Op::Remove { ctx, .. } => ctx.clone(),
            Op::Add { .. } => Vv::default(),
        };
        if let Op::Delete { totals, .. } = self {
            for (origin, t) in totals {
                seen.add(&Dot {
                    origin: *origin,
                    seq: t.seq,
                });
            }
        }
        seen
    }

    /// The operation's CBOR (what a keyed event with [`OP_CONTENT_TYPE`] carries).
    pub fn encode(&self) -> Vec<u8> {
        let bufs = |e: &[Vec<u8>]| e.iter().cloned().map(serde_bytes::ByteBuf::from).collect();
        let wire = match self {
            Op::Put {
                content_type,
                value,
                ctx,
            } => WireOp::Put {
                content_type: content_type.clone(),
                value: value.clone(),
                ctx: vv_to_wire(ctx),
            },
            Op::Delete { ctx, totals } => WireOp::Delete {
                ctx: vv_to_wire(ctx),
                totals: totals
                    .iter()
                    .map(|(o, t)| {
                        WireTotals(
                            o.0.to_vec(),
                            t.seq,
                            t.p.to_be_bytes().to_vec(),
                            t.n.to_be_bytes().to_vec(),
                        )
                    })
                    .collect(),
            },
            Op::Add { delta } => WireOp::Add { delta: *delta },
            Op::Insert { elements, ctx } => WireOp::Insert {
                elements: bufs(elements),
                ctx: vv_to_wire(ctx),
            },
            Op::Remove { elements, ctx } => WireOp::Remove {
                elements: bufs(elements),
                ctx: vv_to_wire(ctx),
            },
        };
        cbor4ii::serde::to_vec(Vec::new(), &wire)
            .unwrap_or_else(|_| unreachable!("encoding into a Vec cannot fail"))
    }

    /// Parses an operation, checking its limits.
    pub fn decode(bytes: &[u8]) -> Result<Op, OpError> {
        let wire: WireOpIn =
            cbor4ii::serde::from_slice(bytes).map_err(|e| OpError::Malformed(e.to_string()))?;
        wire.check()?;
        let unbuf = |e: Vec<serde_bytes::ByteBuf>| e.into_iter().map(|b| b.into_vec()).collect();
        // `check` made sure every field the operation needs is there: the defaults below
        // fill only optional ones.
        let ctx = wire.ctx.unwrap_or_default();
        let elements = wire.elements.unwrap_or_default();
        Ok(match wire.op {
            OpKind::Put => Op::Put {
                content_type: wire.content_type.unwrap_or_default(),
                value: wire.value.unwrap_or_default(),
                ctx: vv_from_wire("ctx", ctx)?,
            },
            OpKind::Delete => {
                let totals = wire.totals.unwrap_or_default();
                if totals.len() > VV_LEN_MAX {
                    return Err(OpError::TooLong {
                        field: "totals",
                        len: totals.len(),
                        max: VV_LEN_MAX,
                    });
                }
                let mut map = BTreeMap::new();
                for WireTotals(o, seq, p, n) in totals {
                    let t = Totals {
                        seq,
                        p: u128_from_wire("totals", &p)?,
                        n: u128_from_wire("totals", &n)?,
                    };
                    let e = map.entry(origin("totals", &o)?).or_insert(t);
                    *e = (*e).max(t);
                }
                Op::Delete {
                    ctx: vv_from_wire("ctx", ctx)?,
                    totals: map,
                }
            }
            OpKind::Add => Op::Add {
                delta: wire.delta.unwrap_or_default(),
            },
            OpKind::Insert => {
                elements_check(&elements)?;
                Op::Insert {
                    elements: unbuf(elements),
                    ctx: vv_from_wire("ctx", ctx)?,
                }
            }
            OpKind::Remove => {
                elements_check(&elements)?;
                Op::Remove {
                    elements: unbuf(elements),
                    ctx: vv_from_wire("ctx", ctx)?,
                }
            }
        })
    }

    /// The operation a keyed event stands for: its payload decoded when its content type is
    /// [`OP_CONTENT_TYPE`], else a put of the payload with an empty context.
    pub fn from_event(content_type: &str, payload: &[u8]) -> Result<Op, OpError> {
        if content_type == OP_CONTENT_TYPE {
            Op::decode(payload)
        } else {
            Ok(Op::Put {
                content_type: content_type.to_string(),
                value: payload.to_vec(),
                ctx: Vv::default(),
            })
        }
    }
}

/// A value with its content type.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Value {
    /// Content type.
    pub content_type: String,
    /// Bytes.
    pub bytes: Vec<u8>,
}

/// One key's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyState {
    /// `lww`: the winning write; `None` is a tombstone.
    Lww {
        /// The winner's HLC.
        hlc: Hlc,
        /// The winner.
        dot: Dot,
        /// Its value, or `None` for a delete.
        value: Option<Value>,
    },
    /// `multi-value`.
    MultiValue {
        /// Writes no applied context covers.
        siblings: BTreeMap<Dot, (Hlc, Value)>,
        /// Join of every applied context: a write it covers is superseded.
        covered: Vv,
    },
    /// `counter`.
    Counter {
        /// Per origin, its sums so far.
        totals: BTreeMap<OriginKey, Totals>,
        /// Per origin, the greatest number a delete named (`seq`) and the sums of the
        /// increments applied here numbered up to it (`p`, `n`): those the value leaves out.
        reset: BTreeMap<OriginKey, Totals>,
    },
    /// `set`.
    Set {
        /// Per element, the dots of the inserts that hold it.
        tags: BTreeMap<Vec<u8>, BTreeSet<Dot>>,
        /// Per element, the join of the contexts of removes naming it.
        removed: BTreeMap<Vec<u8>, Vv>,
        /// Join of the contexts of deletes of the key (removes every element).
        cleared: Vv,
    },
}

impl KeyState {
    /// Whether the key reads as absent (a tombstone, no siblings, an empty set, a counter
    /// at zero with no history is still present: counters exist once written).
    pub fn is_absent(&self) -> bool {
        match self {
            KeyState::Lww { value, .. } => value.is_none(),
            KeyState::MultiValue { siblings, .. } => siblings.is_empty(),
            KeyState::Counter { .. } => false,
            KeyState::Set { tags, .. } => tags.is_empty(),
        }
    }

    /// A counter's value (0 for other strategies).
    pub fn counter_value(&self) -> i128 {
        let KeyState::Counter { totals, reset } = self else {
            return 0;
        };
        let mut v: i128 = 0;
        for (o, t) in totals {
            let r = reset.get(o).copied().unwrap_or_default();
            v = v
                .wrapping_add(t.p.wrapping_sub(r.p) as i128)
                .wrapping_sub(t.n.wrapping_sub(r.n) as i128);
        }
        // Resets of an origin none of whose increments are here: their sums are zero,
        // but a row stored before 2026-12-06 may hold the sums a delete carried (which the
        // increments arriving later made good).
        for (o, r) in reset {
            if !totals.contains_key(o) {
                v = v.wrapping_sub(r.p as i128).wrapping_add(r.n as i128);
            }
        }
        v
    }

    /// The version a client sends back to supersede what it read: the dots of the
    /// siblings (multi-value), of every tag (set), the winner (lww), as a vector.
    pub fn version(&self) -> Vv {
        let mut vv = Vv::default();
        match self {
            KeyState::Lww { dot, .. } => vv.add(dot),
            KeyState::MultiValue { siblings, .. } => siblings.keys().for_each(|d| vv.add(d)),
            KeyState::Counter { totals, .. } => {
                for (o, t) in totals {
                    vv.add(&Dot {
                        origin: *o,
                        seq: t.seq,
                    });
                }
            }
            KeyState::Set { tags, .. } => tags.values().flatten().for_each(|d| vv.add(d)),
        }
        vv
    }
}

/// What applying a write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Changed (or confirmed) the key's state.
    Applied,
    /// Already applied: nothing changed.
    Duplicate,
    /// An operation this table's strategy does not take (e.g. `add` on an lww table):
    /// ignored on every replica alike.
    Ignored,
}

/// Counters of conflict resolution (order-dependent: they differ between replicas, and
/// are not part of the state's digest).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ConflictStats {
    /// Writes applied.
    pub applied: u64,
    /// Duplicates ignored.
    pub duplicates: u64,
    /// Operations the strategy does not take.
    pub ignored: u64,
    /// `lww`: writes that lost to a newer one already applied (arrived late).
    pub lww_lost: u64,
    /// `multi-value`: writes kept beside concurrent siblings.
    pub mv_siblings: u64,
    /// `multi-value`: siblings resolved by a write's context.
    pub mv_resolved: u64,
    /// `multi-value` / `set`: writes dropped because a context applied earlier covered them.
    pub superseded_late: u64,
    /// `counter`: increments merged with concurrent ones from other origins.
    pub counter_merged: u64,
    /// `set`: inserted tags that survived a remove of the same element (add wins).
    pub set_add_wins: u64,
}

/// One table: a stream's keyed state under one strategy.
#[derive(Debug, Clone)]
pub struct Table {
    strategy: Strategy,
    keys: BTreeMap<Vec<u8>, KeyState>,
    /// Per origin, the highest sequence number applied (per-origin order: anything at or
    /// below is a duplicate).
    applied: Vv,
    stats: ConflictStats,
}

/// One write to apply.
#[derive(Debug, Clone)]
pub struct Write<'a> {
    /// The event's dot.
    pub dot: Dot,
    /// The event's HLC.
    pub hlc: Hlc,
    /// The key.
    pub key: &'a [u8],
    /// The operation.
    pub op: &'a Op,
}

impl Table {
    /// An empty table.
    pub fn new(strategy: Strategy) -> Self {
        Self {
            strategy,
            keys: BTreeMap::new(),
            applied: Vv::default(),
            stats: ConflictStats::default(),
        }
    }

    /// The strategy.
    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    /// A key's state.
    pub fn get(&self, key: &[u8]) -> Option<&KeyState> {
        self.keys.get(key)
    }

    /// Keys in order, with their state (absent ones included: tombstones).
    pub fn iter(&self) -> impl Iterator<Item = (&Vec<u8>, &KeyState)> {
        self.keys.iter()
    }

    /// Keys starting with `prefix`, in order.
    pub fn prefix<'a>(
        &'a self,
        prefix: &'a [u8],
    ) -> impl Iterator<Item = (&'a Vec<u8>, &'a KeyState)> + 'a {
        self.keys
            .range(prefix.to_vec()..)
            .take_while(move |(k, _)| k.starts_with(prefix))
    }

    /// Conflict counters.
    pub fn stats(&self) -> ConflictStats {
        self.stats
    }

    /// What was applied, per origin.
    pub fn applied(&self) -> &Vv {
        &self.applied
    }

    /// Restores a key's state (from a store), without counting anything.
    pub fn restore(&mut self, key: Vec<u8>, state: KeyState, applied: &Vv) {
        self.applied.join(applied);
        self.keys.insert(key, state);
    }

    /// Applies one write. Writes of one origin must come in sequence order (the mesh
    /// delivers them so); writes of different origins in any order.
    pub fn apply(&mut self, w: &Write<'_>) -> Applied {
        if self.applied.covers(&w.dot) {
            self.stats.duplicates += 1;
            return Applied::Duplicate;
        }
        // Ignored writes count as applied for deduplication: every replica ignores them.
        self.applied.add(&w.dot);
        // A key already held is updated in place (taking its entry out and putting it back
        // cost a tree rebalance twice and a key allocation per write).
        let Some(held) = self.keys.get_mut(w.key) else {
            let mut state = None;
            let outcome = apply_key(self.strategy, &mut state, w, &mut self.stats);
            if let Some(state) = state {
                self.keys.insert(w.key.to_vec(), state);
            }
            return outcome;
        };
        // A stand-in without allocations while `apply_key` owns the state.
        let stand_in = KeyState::Counter {
            totals: BTreeMap::new(),
            reset: BTreeMap::new(),
        };
        let mut state = Some(std::mem::replace(held, stand_in));
        let outcome = apply_key(self.strategy, &mut state, w, &mut self.stats);
        match state {
            Some(state) => *held = state,
            None => {
                self.keys.remove(w.key);
            }
        }
        outcome
    }

    /// A SHA-256 digest of the table's state (keys, values, versions and the bookkeeping
    /// that decides later writes): equal on two replicas exactly when their states are.
    pub fn digest(&self) -> [u8; 32] {
        digest(
            self.strategy,
            &self.applied,
            self.keys.iter().map(|(k, s)| (k.as_slice(), s)),
        )
    }
}

/// The digest of a table given as its strategy, what it applied and its keys in ascending
/// order ([`Table::digest`]; the node computes it over its SQLite rows).
pub fn digest<'a>(
    strategy: Strategy,
    applied: &Vv,
    keys: impl Iterator<Item = (&'a [u8], &'a KeyState)>,
) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(strategy.as_str().as_bytes());
    digest_vv(&mut h, applied);
    let mut n: u64 = 0;
    for (k, s) in keys {
        digest_bytes(&mut h, k);
        digest_state(&mut h, s);
        n += 1;
    }
    h.update(n.to_be_bytes());
    h.finalize().into()
}

// ------------------------------------------------------------------ storage

type WireDot = ([u8; 32], u64);

#[derive(Serialize, Deserialize)]
enum StoredState {
    Lww {
        hlc: u64,
        dot: WireDot,
        value: Option<(String, Vec<u8>)>,
    },
    MultiValue {
        siblings: Vec<(WireDot, u64, String, Vec<u8>)>,
        covered: Vec<WireDot>,
    },
    Counter {
        totals: Vec<([u8; 32], u64, u128, u128)>,
        reset: Vec<([u8; 32], u64, u128, u128)>,
    },
    Set {
        tags: Vec<(Vec<u8>, Vec<WireDot>)>,
        removed: Vec<(Vec<u8>, Vec<WireDot>)>,
        cleared: Vec<WireDot>,
    },
}

fn wire_dot(d: &Dot) -> WireDot {
    (d.origin.0, d.seq)
}

fn from_wire_dot((o, s): WireDot) -> Dot {
    Dot {
        origin: OriginKey(o),
        seq: s,
    }
}

fn wire_vv(vv: &Vv) -> Vec<WireDot> {
    vv.0.iter().map(|(o, s)| (o.0, *s)).collect()
}

fn from_wire_vv(v: Vec<WireDot>) -> Vv {
    Vv(v.into_iter().map(|(o, s)| (OriginKey(o), s)).collect())
}

fn wire_totals(m: &BTreeMap<OriginKey, Totals>) -> Vec<([u8; 32], u64, u128, u128)> {
    m.iter().map(|(o, t)| (o.0, t.seq, t.p, t.n)).collect()
}

fn from_wire_totals(v: Vec<([u8; 32], u64, u128, u128)>) -> BTreeMap<OriginKey, Totals> {
    v.into_iter()
        .map(|(o, seq, p, n)| (OriginKey(o), Totals { seq, p, n }))
        .collect()
}

impl KeyState {
    /// The state's compact encoding for a store (postcard), read back by
    /// [`KeyState::decode`].
    pub fn encode(&self) -> Vec<u8> {
        let stored = match self {
            KeyState::Lww { hlc, dot, value } => StoredState::Lww {
                hlc: hlc.as_u64(),
                dot: wire_dot(dot),
                value: value
                    .as_ref()
                    .map(|v| (v.content_type.clone(), v.bytes.clone())),
            },
            KeyState::MultiValue { siblings, covered } => StoredState::MultiValue {
                siblings: siblings
                    .iter()
                    .map(|(d, (h, v))| {
                        (
                            wire_dot(d),
                            h.as_u64(),
                            v.content_type.clone(),
                            v.bytes.clone(),
                        )
                    })
                    .collect(),
                covered: wire_vv(covered),
            },
            KeyState::Counter { totals, reset } => StoredState::Counter {
                totals: wire_totals(totals),
                reset: wire_totals(reset),
            },
            KeyState::Set {
                tags,
                removed,
                cleared,
            } => StoredState::Set {
                tags: tags
                    .iter()
                    .map(|(e, ds)| (e.clone(), ds.iter().map(wire_dot).collect()))
                    .collect(),
                removed: removed
                    .iter()
                    .map(|(e, vv)| (e.clone(), wire_vv(vv)))
                    .collect(),
                cleared: wire_vv(cleared),
            },
        };
        postcard::to_allocvec(&stored).unwrap_or_else(|_| unreachable!("encoding into a Vec"))
    }

    /// Reads a state written by [`KeyState::encode`].
    pub fn decode(bytes: &[u8]) -> Result<KeyState, OpError> {
        let stored: StoredState =
            postcard::from_bytes(bytes).map_err(|e| OpError::Malformed(e.to_string()))?;
        Ok(match stored {
            StoredState::Lww { hlc, dot, value } => KeyState::Lww {
                hlc: Hlc::from_u64(hlc),
                dot: from_wire_dot(dot),
                value: value.map(|(content_type, bytes)| Value {
                    content_type,
                    bytes,
                }),
            },
            StoredState::MultiValue { siblings, covered } => KeyState::MultiValue {
                siblings: siblings
                    .into_iter()
                    .map(|(d, h, content_type, bytes)| {
                        (
                            from_wire_dot(d),
                            (
                                Hlc::from_u64(h),
                                Value {
                                    content_type,
                                    bytes,
                                },
                            ),
                        )
                    })
                    .collect(),
                covered: from_wire_vv(covered),
            },
            StoredState::Counter { totals, reset } => KeyState::Counter {
                totals: from_wire_totals(totals),
                reset: from_wire_totals(reset),
            },
            StoredState::Set {
                tags,
                removed,
                cleared,
            } => KeyState::Set {
                tags: tags
                    .into_iter()
                    .map(|(e, ds)| (e, ds.into_iter().map(from_wire_dot).collect()))
                    .collect(),
                removed: removed
                    .into_iter()
                    .map(|(e, vv)| (e, from_wire_vv(vv)))
                    .collect(),
                cleared: from_wire_vv(cleared),
            },
        })
    }
}

/// Applies one write to one key's state (`None`: the key has none yet). The caller has
/// checked that the write is not a duplicate (per-origin sequence order). This is what a
/// store that keeps each key's state apart (the node's SQLite tables) calls.
///
/// A counter delete that names a number below increments of that origin already applied
/// here takes the sums it carries for the increments up to it: exact while every replica
/// holds the same increments (per-origin order), not after an erase removed some of them.
/// A store that can erase passes the sums it holds itself through [`apply_key_with`].
pub fn apply_key(
    strategy: Strategy,
    state: &mut Option<KeyState>,
    w: &Write<'_>,
    stats: &mut ConflictStats,
) -> Applied {
    apply_key_with(strategy, state, w, stats, &mut |_, _, _| None)
}

/// The sums (`p`, `n`) of the increments of an origin to the key being written that the
/// replica holds, numbered in `(after, upto]`; `None` when it cannot tell.
pub type HeldSums<'a> = dyn FnMut(&OriginKey, u64, u64) -> Option<(u128, u128)> + 'a;

/// [`apply_key`], with `held` to ask what increments of an origin the replica holds when a
/// counter delete names a number below some it has applied (the increments in between
/// are not in the key's state, only their sums). With `held` answering from what the
/// replica holds, every replica's reset is the sums of the increments it holds up to the
/// named numbers: increments erased from every replica (a principal's erase) leave no
/// trace in it, whatever sums the delete carried.
pub fn apply_key_with(
    strategy: Strategy,
    state: &mut Option<KeyState>,
    w: &Write<'_>,
    stats: &mut ConflictStats,
    held: &mut HeldSums<'_>,
) -> Applied {
    let outcome = match strategy {
        Strategy::Lww => apply_lww(state, w, stats),
        Strategy::MultiValue => apply_mv(state, w, stats),
        Strategy::Counter => apply_counter(state, w, stats, held),
        Strategy::Set => apply_set(state, w, stats),
    };
    match outcome {
        Applied::Ignored => stats.ignored += 1,
        _ => stats.applied += 1,
    }
    outcome
}

fn apply_lww(state: &mut Option<KeyState>, w: &Write<'_>, stats: &mut ConflictStats) -> Applied {
    let value = match w.op {
        Op::Put {
            content_type,
            value,
            ..
        } => Some(Value {
            content_type: content_type.clone(),
            bytes: value.clone(),
        }),
        Op::Delete { .. } => None,
        _ => return Applied::Ignored,
    };
    let new = KeyState::Lww {
        hlc: w.hlc,
        dot: w.dot,
        value,
    };
    match state {
        Some(KeyState::Lww { hlc, dot, .. }) if (*hlc, *dot) > (w.hlc, w.dot) => {
            stats.lww_lost += 1;
        }
        _ => *state = Some(new),
    }
    Applied::Applied
}

fn apply_mv(state: &mut Option<KeyState>, w: &Write<'_>, stats: &mut ConflictStats) -> Applied {
    let (ctx, value) = match w.op {
        Op::Put {
            content_type,
            value,
            ctx,
        } => (
            ctx,
            Some(Value {
                content_type: content_type.clone(),
                bytes: value.clone(),
            }),
        ),
        Op::Delete { ctx, .. } => (ctx, None),
        _ => return Applied::Ignored,
    };
    let state = state.get_or_insert_with(|| KeyState::MultiValue {
        siblings: BTreeMap::new(),
        covered: Vv::default(),
    });
    let KeyState::MultiValue { siblings, covered } = state else {
        // State of another strategy (the stream's strategy changed): the node rebuilds
        // the table from its log; ignore rather than mix strategies.
        return Applied::Ignored;
    };
    let before = siblings.len();
    siblings.retain(|d, _| !ctx.covers(d));
    let resolved = before - siblings.len();
    stats.mv_resolved += resolved as u64;
    covered.join(ctx);
    if let Some(value) = value {
        if covered.covers(&w.dot) {
            stats.superseded_late += 1;
        } else {
            if !siblings.is_empty() {
                stats.mv_siblings += 1;
            }
            siblings.insert(w.dot, (w.hlc, value));
        }
    }
    Applied::Applied
}

fn apply_counter(
    state: &mut Option<KeyState>,
    w: &Write<'_>,
    stats: &mut ConflictStats,
    held: &mut HeldSums<'_>,
) -> Applied {
    if !matches!(w.op, Op::Add { .. } | Op::Delete { .. }) {
        return Applied::Ignored;
    }
    let state = state.get_or_insert_with(|| KeyState::Counter {
        totals: BTreeMap::new(),
        reset: BTreeMap::new(),
    });
    let KeyState::Counter { totals, reset } = state else {
        // State of another strategy (the stream's strategy changed): the node rebuilds
        // the table from its log; ignore rather than mix strategies.
        return Applied::Ignored;
    };
    match w.op {
        Op::Add { delta } => {
            if totals.keys().any(|o| *o != w.dot.origin) {
                stats.counter_merged += 1;
            }
            let t = totals.entry(w.dot.origin).or_default();
            t.seq = t.seq.max(w.dot.seq);
            t.add(*delta);
            // An increment a delete applied here already named: reset with the others.
            if let Some(r) = reset.get_mut(&w.dot.origin)
                && w.dot.seq <= r.seq
            {
                r.add(*delta);
            }
        }
        Op::Delete { totals: seen, .. } => {
            for (o, named) in seen {
                let before = reset.get(o).copied().unwrap_or_default();
                if named.seq <= before.seq {
                    continue;
                }
                let here = totals.get(o).copied().unwrap_or_default();
                let (p, n) = if here.seq <= named.seq {
                    // Every increment of `o` held here is numbered up to the delete's (those
                    // still to come count into the reset as they arrive, above).
                    (here.p, here.n)
                } else {
                    // Some past it are applied too: the sums up to it are not in the state.
                    match held(o, before.seq, named.seq) {
                        Some((p, n)) => (before.p.wrapping_add(p), before.n.wrapping_add(n)),
                        None => (named.p, named.n),
                    }
                };
                reset.insert(
                    *o,
                    Totals {
                        seq: named.seq,
                        p,
                        n,
                    },
                );
            }
        }
        _ => unreachable!("checked above"),
    }
    Applied::Applied
}

/// Removes the tags of `e` that `ctx` covers and remembers `ctx` for copies of them that
/// arrive later; true if tags `ctx` does not cover remain (a concurrent insert: add wins).
fn remove_covered(
    tags: &mut BTreeMap<Vec<u8>, BTreeSet<Dot>>,
    removed: &mut BTreeMap<Vec<u8>, Vv>,
    cleared: &Vv,
    e: &[u8],
    ctx: &Vv,
) -> bool {
    let r = removed.entry(e.to_vec()).or_default();
    r.join(ctx);
    normalize(r, cleared);
    if r.0.is_empty() {
        removed.remove(e);
    }
    let Some(t) = tags.get_mut(e) else {
        return false;
    };
    t.retain(|d| !ctx.covers(d));
    if t.is_empty() {
        tags.remove(e);
        false
    } else {
        true
    }
}

fn apply_set(state: &mut Option<KeyState>, w: &Write<'_>, stats: &mut ConflictStats) -> Applied {
    if !matches!(
        w.op,
        Op::Insert { .. } | Op::Remove { .. } | Op::Delete { .. }
    ) {
        return Applied::Ignored;
    }
    let state = state.get_or_insert_with(|| KeyState::Set {
        tags: BTreeMap::new(),
        removed: BTreeMap::new(),
        cleared: Vv::default(),
    });
    let KeyState::Set {
        tags,
        removed,
        cleared,
    } = state
    else {
        // State of another strategy (the stream's strategy changed): the node rebuilds
        // the table from its log; ignore rather than mix strategies.
        return Applied::Ignored;
    };
    match w.op {
        Op::Insert { elements, ctx } => {
            for e in elements {
                if !ctx.0.is_empty() {
                    // Supersede the tags of `e` the writer saw, exactly as a remove of `e`
                    // with `ctx` would (a copy of them arriving late stays out), then tag.
                    remove_covered(tags, removed, cleared, e, ctx);
                }
                let gone =
                    cleared.covers(&w.dot) || removed.get(e).is_some_and(|vv| vv.covers(&w.dot));
                if gone {
                    stats.superseded_late += 1;
                } else {
                    tags.entry(e.clone()).or_default().insert(w.dot);
                }
            }
        }
        Op::Remove { elements, ctx } => {
            for e in elements {
                if remove_covered(tags, removed, cleared, e, ctx) {
                    stats.set_add_wins += 1;
                }
            }
        }
        Op::Delete { ctx, .. } => {
            cleared.join(ctx);
            tags.retain(|_, t| {
                t.retain(|d| !ctx.covers(d));
                !t.is_empty()
            });
            // Per-element removals keep only what the key-wide context does not cover
            // (canonical whatever the order removes and deletes came in).
            removed.retain(|_, vv| {
                normalize(vv, cleared);
                !vv.0.is_empty()
            });
        }
        _ => unreachable!("checked above"),
    }
    Applied::Applied
}

/// Drops the entries of `vv` that `cleared` covers.
fn normalize(vv: &mut Vv, cleared: &Vv) {
    vv.0.retain(|o, s| cleared.0.get(o).is_none_or(|c| c < s));
}

fn digest_bytes(h: &mut Sha256, b: &[u8]) {
    h.update((b.len() as u64).to_be_bytes());
    h.update(b);
}

fn digest_dot(h: &mut Sha256, d: &Dot) {
    h.update(d.origin.0);
    h.update(d.seq.to_be_bytes());
}

fn digest_vv(h: &mut Sha256, vv: &Vv) {
    h.update((vv.0.len() as u64).to_be_bytes());
    for (o, s) in &vv.0 {
        h.update(o.0);
        h.update(s.to_be_bytes());
    }
}

fn digest_value(h: &mut Sha256, v: &Value) {
    digest_bytes(h, v.content_type.as_bytes());
    digest_bytes(h, &v.bytes);
}

fn digest_totals(h: &mut Sha256, m: &BTreeMap<OriginKey, Totals>) {
    h.update((m.len() as u64).to_be_bytes());
    for (o, t) in m {
        h.update(o.0);
        h.update(t.seq.to_be_bytes());
        h.update(t.p.to_be_bytes());
        h.update(t.n.to_be_bytes());
    }
}

fn digest_state(h: &mut Sha256, s: &KeyState) {
    match s {
        KeyState::Lww { hlc, dot, value } => {
            h.update([0]);
            h.update(hlc.as_u64().to_be_bytes());
            digest_dot(h, dot);
            match value {
                Some(v) => {
                    h.update([1]);
                    digest_value(h, v);
                }
                None => h.update([0]),
            }
        }
        KeyState::MultiValue { siblings, covered } => {
            h.update([1]);
            h.update((siblings.len() as u64).to_be_bytes());
            for (d, (hlc, v)) in siblings {
                digest_dot(h, d);
                h.update(hlc.as_u64().to_be_bytes());
                digest_value(h, v);
            }
            digest_vv(h, covered);
        }
        KeyState::Counter { totals, reset } => {
            h.update([2]);
            digest_totals(h, totals);
            digest_totals(h, reset);
        }
        KeyState::Set {
            tags,
            removed,
            cleared,
        } => {
            h.update([3]);
            h.update((tags.len() as u64).to_be_bytes());
            for (e, dots) in tags {
                digest_bytes(h, e);
                h.update((dots.len() as u64).to_be_bytes());
                dots.iter().for_each(|d| digest_dot(h, d));
            }
            h.update((removed.len() as u64).to_be_bytes());
            for (e, vv) in removed {
                digest_bytes(h, e);
                digest_vv(h, vv);
            }
            digest_vv(h, cleared);
        }
    }
}
