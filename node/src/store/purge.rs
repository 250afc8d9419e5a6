//! Events this node may no longer hold, dropped from its disk.
//!
//! A node stores only what the policy in force lets it hold in clear (`Policy::may_hold`):
//! an ingress node refuses the rest, and the mesh's replication filter never sends it. An
//! epoch can take back what an earlier one allowed: a stream classified more narrowly, a
//! class whose jurisdictions shrink, a jurisdiction claim no longer granted. The events
//! stored before stay stamped as they were, but their effective residency follows the
//! epoch in force, so this node stops serving and relaying them at once. This pass then
//! removes them from its disk, so that no copy of their payload stays where the policy no
//! longer lets it be.
//!
//! A purged number is not erased: it stays in the origin's ranges (a row in `purged`; a
//! restart does not reopen the hole, so anti-entropy does not ask for it again), but the
//! node answers no Skip for it as it does for an erased or an expired number. A Skip says
//! "this number is not for you" to whoever asks, and a node inside the event's residency
//! that lacks it must get the event from a holder, not a Skip from two nodes that merely
//! no longer hold it (two Skips confirm one: `Node::on_skip`). Nothing else changes: the
//! `derived_from` record of a purged derivative stays, so an erase still retracts the
//! derivative fabric-wide.
//!
//! The driver runs the pass after every epoch it applies and, when the last epoch's pass
//! did not finish, after a restart ([`PURGE_EPOCH_KEY`]), over the events stored before it
//! ([`SqliteStore::purge_bound`]), a bounded batch per tick, in the step's transaction.

use rusqlite::params;
use weft_fabric::mesh::StoreError;
use weft_fabric::{EventData, OriginKey};

use super::{ErasedEvent, SqliteStore, backend, corrupt, key32};

/// The `meta` key of the policy epoch whose purge pass finished: a restart under the same
/// epoch has nothing to purge.
pub(crate) const PURGE_EPOCH_KEY: &str = "purge_epoch";

/// What one batch of the pass did.
#[derive(Debug, Default)]
pub(crate) struct Purged {
    /// The events removed.
    pub(crate) events: Vec<ErasedEvent>,
    /// Rows read (held or not).
    pub(crate) read: usize,
    /// The last row read: the next batch starts after it.
    pub(crate) last: i64,
    /// Rows up to the bound remain.
    pub(crate) more: bool,
}

impl SqliteStore {
    /// The highest event row now: a pass started now covers the rows up to it (rows after
    /// it arrived under the policy that started the pass, which let this node hold them).
    pub(crate) fn purge_bound(&self) -> Result<i64, StoreError> {
        self.conn
            .query_row("SELECT COALESCE(MAX(rowid), 0) FROM events", [], |r| {
                r.get(0)
            })
            .map_err(backend)
    }

    /// Reads up to `limit` stored events after row `after` and up to row `bound`, and
    /// removes those `holds` refuses (rows in `events`, `log` and `ce_dedup`), keeping
    /// their numbers seen (`purged`). System streams are never purged. All or nothing, in
    /// the open write transaction (committed with the driver's step).
    pub(crate) fn purge_unheld(
        &mut self,
        after: i64,
        bound: i64,
        limit: usize,
        holds: &mut dyn FnMut(&EventData) -> bool,
    ) -> Result<Purged, StoreError> {
        let mut unheld = Vec::new();
        let mut out = Purged {
            last: after,
            ..Purged::default()
        };
        {
            let mut stmt = self
                .conn
                .prepare_cached(
                    "SELECT rowid, id, origin, seq, stream, key, envelope FROM events \
                     WHERE rowid > ?1 AND rowid <= ?2 ORDER BY rowid LIMIT ?3",
                )
                .map_err(backend)?;
            let limit_sql = i64::try_from(limit).unwrap_or(i64::MAX);
            let mut rows = stmt
                .query(params![after, bound, limit_sql])
                .map_err(backend)?;
            while let Some(r) = rows.next().map_err(backend)? {
                out.read += 1;
                out.last = r.get(0).map_err(backend)?;
                let envelope: Vec<u8> = r.get(6).map_err(backend)?;
                // Stored events were verified on arrival: the claimed fields are the
                // signed ones. One that no longer decodes is left alone (reads report it).
                let Ok(unverified) = weft_fabric::decode(&envelope) else {
                    continue;
                };
                let data = unverified.claimed_data();
                if data.stream().is_system() || holds(data) {
                    continue;
                }
                unheld.push((
                    r.get::<_, Vec<u8>>(1).map_err(backend)?,
                    r.get::<_, Vec<u8>>(2).map_err(backend)?,
                    r.get::<_, i64>(3).map_err(backend)?,
                    r.get::<_, String>(4).map_err(backend)?,
                    r.get::<_, Option<Vec<u8>>>(5).map_err(backend)?,
                ));
            }
        }
        out.more = out.read == limit && out.last < bound;
        if unheld.is_empty() {
            return Ok(out);
        }
        let purged = self.in_savepoint("purge", |s| {
            unheld
                .into_iter()
                .map(|(id, origin, seq, stream, key)| s.purge_row(&id, &origin, seq, stream, key))
                .collect()
        });
        out.events = match purged {
            Ok(events) => events,
            Err(e) => {
                // None of it: the rows are back (savepoint), and so is memory.
                self.reload();
                return Err(e);
            }
        };
        self.stats.get_mut().purged += out.events.len() as u64;
        Ok(out)
    }

    /// Removes the stored event `id` at `(origin, seq)` and records the number purged.
    fn purge_row(
        &mut self,
        id: &[u8],
        origin: &[u8],
        seq: i64,
        stream: String,
        key: Option<Vec<u8>>,
    ) -> Result<ErasedEvent, StoreError> {
        let origin_key = OriginKey(key32(origin, "origin")?);
        let seq_u = u64::try_from(seq).map_err(|_| corrupt("seq"))?;
        self.delete_event_rows(id, &origin_key, seq_u)?;
        let added = self
            .conn
            .prepare_cached("INSERT OR IGNORE INTO purged (origin, seq) VALUES (?1, ?2)")
            .and_then(|mut s| s.execute(params![origin, seq]))
            .map_err(backend)?;
        self.tx_writes += 1;
        self.state.purged_len += added;
        Ok(ErasedEvent {
            id: weft_fabric::EventId(key32(id, "id")?),
            stream,
            key,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::Arc;

    use weft_fabric::mesh::{Inserted, Store};
    use weft_fabric::{
        Event, EventDraft, Hlc, Payload, Residency, SecurityContext, Signer, StreamName,
    };

    use crate::store::{SqliteStore, StoreLimits, StoreReader};

    fn event(stream: &str, seq: u64) -> Arc<Event> {
        let draft = EventDraft {
            stream: StreamName::new(stream).unwrap(),
            key: Some(b"k".to_vec()),
            seq,
            hlc: Hlc::new(1_764_331_200_000 + seq, 0).unwrap(),
            security: SecurityContext {
                tenant: "acme".into(),
                principal: "svc".into(),
                classification: "internal".into(),
                residency: Residency::Unrestricted,
                scopes: BTreeSet::new(),
                policy_epoch: 1,
            },
            content_type: "application/json".into(),
            payload: Payload::Clear(b"{}".to_vec()),
            trace: None,
        };
        Arc::new(Signer::from_secret(&[3; 32]).sign(draft).unwrap())
    }

    /// The pass removes exactly the events `holds` refuses, never a system stream's, a
    /// batch at a time up to its bound; their numbers stay seen across a restart but are
    /// not erased (no Skip is answered for them).
    #[test]
    fn unheld_events_go_their_numbers_stay_seen_and_no_skip_is_owed() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = SqliteStore::open(dir.path(), StoreLimits::default()).unwrap();
        let events: Vec<Arc<Event>> = (1..=5)
            .map(|seq| {
                event(
                    if seq == 4 {
                        "_weft.policy"
                    } else {
                        "customers.x"
                    },
                    seq,
                )
            })
            .chain([event("orders.x", 6)])
            .collect();
        for e in &events {
            assert_eq!(store.insert(e.clone()), Ok(Inserted::New));
            store.append_log(e).unwrap();
        }
        let origin = events[0].origin();
        let bound = store.purge_bound().unwrap();
        // An event stored after the pass started is past its bound.
        let after_start = event("customers.x", 7);
        assert_eq!(store.insert(after_start.clone()), Ok(Inserted::New));
        store.commit().unwrap();
        let mut holds = |e: &weft_fabric::EventData| !e.stream().as_str().starts_with("customers.");
        let first = store.purge_unheld(0, bound, 2, &mut holds).unwrap();
        assert_eq!((first.read, first.events.len(), first.more), (2, 2, true));
        let second = store
            .purge_unheld(first.last, bound, 10, &mut holds)
            .unwrap();
        assert_eq!(
            (second.read, second.events.len(), second.more),
            (4, 2, false)
        );
        store.commit().unwrap();
        store.check_invariants().unwrap();
        for seq in [1, 2, 3, 5] {
            assert!(store.get(&origin, seq).is_none(), "{seq} kept");
            assert!(!store.erased(&origin, seq), "{seq} answered as erased");
        }
        assert!(
            store.get(&origin, 4).is_some(),
            "a system stream's event went"
        );
        assert!(store.get(&origin, 6).is_some() && store.get(&origin, 7).is_some());
        assert_eq!(store.len(), 3);
        assert_eq!(store.stats().purged, 4);
        let reader = StoreReader::open(dir.path()).unwrap();
        assert!(reader.read_log("customers.x", 0, 10).unwrap().is_empty());
        drop(store);
        let store = SqliteStore::open(dir.path(), StoreLimits::default()).unwrap();
        store.check_invariants().unwrap();
        assert_eq!(store.ranges(&origin).map(|r| r.contiguous()), Some(7));
        assert!(!store.erased(&origin, 2));
    }
}
