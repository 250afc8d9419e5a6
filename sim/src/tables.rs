//! Table workloads: the keyed writes a table workload's publishers make from their own
//! replica's view (as a client reading then writing would), each simulated node's replica
//! of every table it subscribes to, and the end-of-run comparison of the replicas with
//! each other and with a reference replica that replays every write in publish order.
//!
//! The strategies themselves are `weft_fabric::table`'s, unchanged: the simulator only
//! decides which writes are made, and applies what the mesh delivers.

use std::collections::BTreeMap;

use rand_chacha::ChaCha8Rng;
use rand_core::Rng;
use weft_fabric::table::{self, ConflictStats, Dot, KeyState, Op, Table, Vv, Write};
use weft_fabric::{Hlc, OriginKey};

/// Most keys in one table workload's key space: every key's state is kept on every
/// replica, and the end-of-run comparison walks them all.
pub const TABLE_KEYS_MAX: u32 = 100_000;
/// Most elements in a set workload's element domain (one set operation names one).
pub const SET_ELEMENTS_DOMAIN_MAX: u32 = 1024;
/// Largest magnitude of a counter workload's delta: sums stay far from overflow.
pub const COUNTER_DELTA_ABS_MAX: i64 = 1_000_000_000;

/// Content type of the values lww and multi-value puts write.
pub const VALUE_CONTENT_TYPE: &str = "application/octet-stream";

/// A workload that writes a keyed table (`[workload.table]`, `docs/sim.md` 2.5.1).
#[derive(Debug, Clone, PartialEq)]
pub struct TableSpec {
    /// The conflict strategy every replica applies.
    pub strategy: table::Strategy,
    /// Keys `k0` .. `k{keys-1}`; every write picks one uniformly.
    pub keys: u32,
    /// Share of writes that delete the key, `[0, 1)`.
    pub delete: f64,
    /// `multi-value`: share of puts written without a context (blind writes, concurrent
    /// with everything); the others carry the version the writer read.
    pub blind: f64,
    /// `counter`: each add's delta, uniform in `delta_min ..= delta_max`.
    pub delta_min: i64,
    /// See `delta_min`.
    pub delta_max: i64,
    /// `set`: elements `e0` .. `e{elements-1}`; each insert or remove names one.
    pub elements: u32,
    /// `set`: share of writes that remove an element (the rest after deletes and removes
    /// insert one).
    pub remove: f64,
}

/// The key named by index `k`.
pub fn key_name(k: u32) -> Vec<u8> {
    format!("k{k}").into_bytes()
}

fn element_name(e: u32) -> Vec<u8> {
    format!("e{e}").into_bytes()
}

/// A uniform float in [0, 1).
fn unit(rng: &mut ChaCha8Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// The next write of a table workload: a key, and the operation the writer makes from its
/// replica's current view of that key (`local`): lww and multi-value deletes and
/// contextual puts carry the key's version, set removes and deletes too, a counter delete
/// the per-origin totals the writer has seen. `value_bytes` is the size of put values.
pub fn next_write(
    spec: &TableSpec,
    local: &Table,
    value_bytes: usize,
    rng: &mut ChaCha8Rng,
) -> (Vec<u8>, Op) {
    let key = key_name((rng.next_u64() % u64::from(spec.keys.max(1))) as u32);
    let state = local.get(&key);
    let version = state.map(KeyState::version).unwrap_or_default();
    let roll = unit(rng);
    let delete = roll < spec.delete;
    let op = match spec.strategy {
        table::Strategy::Lww | table::Strategy::MultiValue => {
            if delete {
                Op::Delete {
                    ctx: version,
                    totals: BTreeMap::new(),
                }
            } else {
                let mut value = vec![0u8; value_bytes];
                rng.fill_bytes(&mut value);
                let blind = spec.strategy == table::Strategy::MultiValue && unit(rng) < spec.blind;
                Op::Put {
                    content_type: VALUE_CONTENT_TYPE.into(),
                    value,
                    ctx: if blind { Vv::default() } else { version },
                }
            }
        }
        table::Strategy::Counter => {
            if delete {
                let totals = match state {
                    Some(KeyState::Counter { totals, .. }) => totals.clone(),
                    _ => BTreeMap::new(),
                };
                Op::Delete {
                    ctx: Vv::default(),
                    totals,
                }
            } else {
                let span = spec.delta_max.abs_diff(spec.delta_min) + 1;
                let delta = spec
                    .delta_min
                    .saturating_add((rng.next_u64() % span) as i64);
                Op::Add { delta }
            }
        }
        table::Strategy::Set => {
            let element = element_name((rng.next_u64() % u64::from(spec.elements.max(1))) as u32);
            if delete {
                Op::Delete {
                    ctx: version,
                    totals: BTreeMap::new(),
                }
            } else if roll < spec.delete + spec.remove {
                Op::Remove {
                    elements: vec![element],
                    ctx: version,
                }
            } else {
                // As a node writes it: superseding the element's tags it has seen.
                let mut ctx = Vv::default();
                if let Some(KeyState::Set { tags, .. }) = state {
                    tags.get(&element)
                        .into_iter()
                        .flatten()
                        .for_each(|d| ctx.add(d));
                }
                Op::Insert {
                    elements: vec![element],
                    ctx,
                }
            }
        }
    };
    (key, op)
}

/// One write as published: what the reference replica replays.
#[derive(Debug, Clone)]
pub struct Written {
    /// Its dot.
    pub dot: Dot,
    /// Its HLC.
    pub hlc: Hlc,
    /// The key.
    pub key: Vec<u8>,
    /// The operation.
    pub op: Op,
}

impl Written {
    /// As a [`Write`] to apply.
    pub fn as_write(&self) -> Write<'_> {
        Write {
            dot: self.dot,
            hlc: self.hlc,
            key: &self.key,
            op: &self.op,
        }
    }
}

/// A deliberate fault in one replica's table application, to show that the digest checks
/// can fail (tests only; a real node never does this).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableSabotage {
    /// Node `node` does not apply the first counter add with a non-zero delta delivered
    /// to it. (A counter add, because its trace can never be overwritten: a skipped lww
    /// put that a later put of the same origin overwrote leaves exactly the state the
    /// replica would have had, and the digest, which compares states, rightly sees none.)
    SkipFirstAdd {
        /// The node.
        node: usize,
    },
    /// Node `node` applies the first counter add with a non-zero delta delivered to it
    /// twice, bypassing the table's duplicate check.
    ApplyAddTwice {
        /// The node.
        node: usize,
    },
}

/// Applies one delivered write to a replica, with the sabotage if it targets this write
/// (`sabotage` is cleared once it has fired).
pub fn apply_delivered(table: &mut Table, w: &Write<'_>, sabotage: &mut Option<TableSabotage>) {
    match *sabotage {
        Some(TableSabotage::SkipFirstAdd { .. }) if nonzero_add(w.op) => {
            *sabotage = None;
        }
        Some(TableSabotage::ApplyAddTwice { .. }) if nonzero_add(w.op) => {
            *sabotage = None;
            table.apply(w);
            let mut state = table.get(w.key).cloned();
            let mut stats = ConflictStats::default();
            table::apply_key(table.strategy(), &mut state, w, &mut stats);
            if let Some(state) = state {
                let applied = table.applied().clone();
                table.restore(w.key.to_vec(), state, &applied);
            }
        }
        _ => {
            table.apply(w);
        }
    }
}

fn nonzero_add(op: &Op) -> bool {
    matches!(op, Op::Add { delta } if *delta != 0)
}

/// One table's replicas compared at the end of a run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableMetrics {
    /// Writes published.
    pub writes: u64,
    /// Live nodes holding a replica (subscribers that may hold the stream).
    pub replicas: u64,
    /// Distinct state digests among them (1 when they agree).
    pub digests_distinct: u64,
    /// Replicas whose digest equals the reference replica's.
    pub replicas_equal_to_reference: u64,
    /// The reference replica's digest (every write replayed in publish order).
    pub reference_digest: [u8; 32],
    /// Keys present (not deleted, not empty) in the reference.
    pub reference_keys_present: u64,
    /// (replica, key) pairs present on a replica while absent in the reference: a deleted
    /// key resurrected.
    pub resurrected: u64,
    /// (replica, key) pairs absent on a replica while present in the reference: a write
    /// lost.
    pub lost: u64,
    /// Conflict counters summed over the replicas.
    pub conflicts: ConflictStats,
}

/// Adds `b`'s counters into `a`.
pub fn add_stats(a: &mut ConflictStats, b: &ConflictStats) {
    a.applied += b.applied;
    a.duplicates += b.duplicates;
    a.ignored += b.ignored;
    a.lww_lost += b.lww_lost;
    a.mv_siblings += b.mv_siblings;
    a.mv_resolved += b.mv_resolved;
    a.superseded_late += b.superseded_late;
    a.counter_merged += b.counter_merged;
    a.set_add_wins += b.set_add_wins;
}

/// Compares `replicas` with each other and with the reference replay of `written`.
pub fn compare<'a>(
    strategy: table::Strategy,
    written: &[Written],
    replicas: impl Iterator<Item = &'a Table>,
) -> TableMetrics {
    let mut reference = Table::new(strategy);
    for w in written {
        reference.apply(&w.as_write());
    }
    let reference_digest = reference.digest();
    let present = |t: &Table, k: &[u8]| t.get(k).is_some_and(|s| !s.is_absent());
    let mut m = TableMetrics {
        writes: written.len() as u64,
        reference_digest,
        reference_keys_present: reference.iter().filter(|(_, s)| !s.is_absent()).count() as u64,
        ..TableMetrics::default()
    };
    let mut digests: BTreeMap<[u8; 32], u64> = BTreeMap::new();
    for replica in replicas {
        m.replicas += 1;
        let d = replica.digest();
        *digests.entry(d).or_default() += 1;
        if d == reference_digest {
            m.replicas_equal_to_reference += 1;
        }
        let keys: std::collections::BTreeSet<&Vec<u8>> = replica
            .iter()
            .map(|(k, _)| k)
            .chain(reference.iter().map(|(k, _)| k))
            .collect();
        for k in keys {
            match (present(replica, k), present(&reference, k)) {
                (true, false) => m.resurrected += 1,
                (false, true) => m.lost += 1,
                _ => {}
            }
        }
        add_stats(&mut m.conflicts, &replica.stats());
    }
    m.digests_distinct = digests.len() as u64;
    m
}

/// Hex of the first 8 bytes of a digest (for reports).
pub fn short_hex(d: &[u8; 32]) -> String {
    d[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// A dot (an event's origin and sequence number).
pub fn dot(origin: OriginKey, seq: u64) -> Dot {
    Dot { origin, seq }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::SeedableRng;

    fn spec(strategy: table::Strategy) -> TableSpec {
        TableSpec {
            strategy,
            keys: 2,
            delete: 0.2,
            blind: 0.3,
            delta_min: -3,
            delta_max: 5,
            elements: 3,
            remove: 0.3,
        }
    }

    /// Two replicas write from their own view, exchange everything (in different orders),
    /// and compare equal to each other and to the reference; a counter replica that
    /// skipped one add compares unequal, and one that applied an add twice too.
    #[test]
    fn replicas_compare_and_a_broken_replica_is_caught() {
        for strategy in [
            table::Strategy::Lww,
            table::Strategy::MultiValue,
            table::Strategy::Counter,
            table::Strategy::Set,
        ] {
            let s = spec(strategy);
            let mut rng = ChaCha8Rng::seed_from_u64(7);
            let origins = [OriginKey([1; 32]), OriginKey([2; 32])];
            let mut tables = [Table::new(strategy), Table::new(strategy)];
            let mut written: Vec<Written> = Vec::new();
            for i in 0..40u64 {
                let who = (i % 2) as usize;
                let (key, op) = next_write(&s, &tables[who], 4, &mut rng);
                let w = Written {
                    dot: dot(origins[who], i / 2 + 1),
                    hlc: Hlc::from_u64((1000 + i) << 16),
                    key,
                    op,
                };
                tables[who].apply(&w.as_write());
                written.push(w);
            }
            // Each replica receives the other's writes afterwards (a partition healed).
            for (who, table) in tables.iter_mut().enumerate() {
                for w in written.iter().filter(|w| w.dot.origin != origins[who]) {
                    table.apply(&w.as_write());
                }
            }
            let m = compare(strategy, &written, tables.iter());
            assert_eq!((m.replicas, m.digests_distinct), (2, 1), "{strategy:?}");
            assert_eq!(m.replicas_equal_to_reference, 2, "{strategy:?}");
            assert_eq!((m.resurrected, m.lost), (0, 0));
        }
        let s = spec(table::Strategy::Counter);
        let mut rng = ChaCha8Rng::seed_from_u64(8);
        let mut one = Table::new(table::Strategy::Counter);
        let mut twice = Table::new(table::Strategy::Counter);
        let mut skipped = Table::new(table::Strategy::Counter);
        let mut sabotage = Some(TableSabotage::ApplyAddTwice { node: 0 });
        let mut skip = Some(TableSabotage::SkipFirstAdd { node: 0 });
        let mut written = Vec::new();
        for i in 0..10u64 {
            let (key, op) = next_write(&s, &one, 0, &mut rng);
            let w = Written {
                dot: dot(OriginKey([1; 32]), i + 1),
                hlc: Hlc::from_u64((1000 + i) << 16),
                key,
                op,
            };
            one.apply(&w.as_write());
            apply_delivered(&mut twice, &w.as_write(), &mut sabotage);
            apply_delivered(&mut skipped, &w.as_write(), &mut skip);
            written.push(w);
        }
        assert!(sabotage.is_none() && skip.is_none(), "both sabotages fired");
        let m = compare(
            table::Strategy::Counter,
            &written,
            [&one, &twice, &skipped].into_iter(),
        );
        assert_eq!(m.digests_distinct, 3);
        assert_eq!(m.replicas_equal_to_reference, 1);
    }
}
