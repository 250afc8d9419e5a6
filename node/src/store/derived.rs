//! Erasing egress derivatives with their sources.
//!
//! A field transform (`egress.rs`) makes one derived event per source event, signed by the
//! node that took the source (the derivative's origin). The derivative carries the
//! principal `weft-egress` and no key, so an erase rule naming the source's key or
//! principal does not cover it, and it may sit in regions the source may not go (a masked
//! copy). So the node that made it retracts it:
//!
//! 1. When it publishes a field derivative it records, in `derived_from`, the derivative's
//!    number with what an erase rule matches of the source: stream, key, principal,
//!    tenant and stamp. The row stays while the derivative is stored here (and a little
//!    after it expired), so an erase finds it even after the source expired.
//! 2. When it applies an erase, the rows the rule covers go and their numbers join
//!    `retract_pending`, in the same transaction ([`SqliteStore::derivatives_to_retract`]).
//! 3. The driver publishes the pending numbers as a retraction on the erase stream,
//!    signed by this node: origin and sequence numbers only, nothing of the source (the
//!    erase request before it, on the same stream, names the key or principal, as it
//!    always did; together they tie that subject to the copies' numbers).
//! 4. Every node applying a retraction erases the named derivatives of the retraction's
//!    own origin ([`SqliteStore::retract`]): stored ones as an erase does, numbers not
//!    here in `retracted` (for a week, at most [`RETRACTED_MAX`]), so that a copy that
//!    comes late is refused. Only
//!    derived events are touched: a retraction cannot remove another kind of event, nor
//!    another node's. When the retracting node applies its own retraction, the numbers
//!    leave `retract_pending`; until then the driver publishes them again every minute,
//!    up to ten times (a crash between the erase and the publish loses nothing).
//!
//! A `derived_from` row goes with its derivative when that is erased or retracted, and
//! [`DERIVED_EXPIRED_KEEP_MS`] after it expired here (other nodes expire their copies on
//! their own clocks), so the table holds about one row per derivative this node made and
//! still stores.

use std::sync::Arc;

use rusqlite::params;
use weft_fabric::mesh::{Store, StoreError};
use weft_fabric::{Event, OriginKey};

use super::{ErasedEvent, SqliteStore, backend, corrupt};

/// Most derivative numbers one retraction names (its payload stays a few kilobytes).
pub(crate) const RETRACT_NUMBERS_MAX: usize = 1_000;

/// How long the row of a derivative that expired at its ingress node stays, so that an
/// erase of its source still retracts the copies other nodes keep a little longer: twice
/// the clock and pass difference retention allows between nodes (`RETENTION_RACE_MS`). A
/// copy another node keeps longer (its own size budget) is not retracted after that.
pub(crate) const DERIVED_EXPIRED_KEEP_MS: u64 = 120_000;

/// Most numbers of derivatives retracted before they arrived that a node keeps (memory
/// and `retracted` rows); beyond it the oldest go.
const RETRACTED_MAX: usize = if cfg!(test) { 4 } else { 100_000 };

/// How long a node keeps a derivative retracted before it arrived: a copy still in flight
/// after a week (a node cut off that long) is taken again, as a partitioned node's data
/// is (docs/tables.md).
const RETRACTED_TTL_MS: u64 = 7 * 24 * 3600 * 1000;

/// What an erase rule matches of a derivative's source (`derived_from`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DerivedSource {
    pub(crate) stream: String,
    pub(crate) key: Option<Vec<u8>>,
    pub(crate) principal: String,
    pub(crate) tenant: String,
    /// The source's stamp (HLC, packed).
    pub(crate) hlc: u64,
}

impl DerivedSource {
    /// What `source` is.
    pub(crate) fn of(source: &Event) -> Self {
        let s = source.security();
        Self {
            stream: source.stream().as_str().to_string(),
            key: source.key().map(<[u8]>::to_vec),
            principal: s.principal.clone(),
            tenant: s.tenant.clone(),
            hlc: source.hlc().as_u64(),
        }
    }
}

/// What a retraction did here.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Retracted {
    /// Derivatives erased here.
    pub(crate) erased: Vec<ErasedEvent>,
    /// Numbers not stored here, kept so that their derivatives are refused on arrival.
    pub(crate) ahead: usize,
    /// Numbers not stored that need no keeping: gone here already, kept already, or the
    /// retracting node's own.
    pub(crate) skipped: usize,
    /// Numbers whose stored event is not a derivative (left as they are).
    pub(crate) not_derived: usize,
}

/// Brings a `derived_from` table made before it had `gone_ms` up to date, and indexes
/// that column. Idempotent; run at every open.
pub(super) fn upgrade_schema(conn: &rusqlite::Connection) -> rusqlite::Result<()> {
    let has = conn
        .prepare("SELECT 1 FROM pragma_table_info('derived_from') WHERE name = 'gone_ms'")?
        .exists([])?;
    if !has {
        conn.execute_batch("ALTER TABLE derived_from ADD COLUMN gone_ms INTEGER")?;
    }
    conn.execute_batch(
        "CREATE INDEX IF NOT EXISTS derived_from_gone ON derived_from (gone_ms) \
         WHERE gone_ms IS NOT NULL",
    )
}

impl SqliteStore {
    /// Records that this node's event `(origin, seq)` is a field transform's derivative of
    /// `source`. In the open write transaction.
    pub(crate) fn record_derived(
        &mut self,
        origin: &OriginKey,
        seq: u64,
        source: &DerivedSource,
    ) -> Result<(), StoreError> {
        self.begin_write()?;
        self.conn
            .prepare_cached(
                "INSERT OR REPLACE INTO derived_from (origin, seq, stream, key, principal, tenant, hlc) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    &origin.0[..],
                    seq.cast_signed(),
                    source.stream,
                    source.key,
                    source.principal,
                    source.tenant,
                    source.hlc.min(i64::MAX as u64).cast_signed(),
                ])
            })
            .map_err(backend)?;
        self.tx_writes += 1;
        Ok(())
    }

    /// The derivatives this node made of sources the erase rule `target` covers (stamped
    /// up to `hlc_max`): their `derived_from` rows go and their numbers join
    /// `retract_pending`. Returns how many. In the open write transaction (with the
    /// erase). A principal rule reads every row (a scan, like the erase's own).
    pub(crate) fn derivatives_to_retract(
        &mut self,
        target: &crate::erase::Target,
        hlc_max: u64,
    ) -> Result<usize, StoreError> {
        // All of it or none of it: a row taken from `derived_from` is pending, or stays.
        self.in_savepoint("to_retract", |s| {
            s.derivatives_to_retract_rows(target, hlc_max)
        })
    }

    fn derivatives_to_retract_rows(
        &mut self,
        target: &crate::erase::Target,
        hlc_max: u64,
    ) -> Result<usize, StoreError> {
        let hlc_sql = hlc_max.min(i64::MAX as u64).cast_signed();
        let numbers: Vec<i64> = match target {
            crate::erase::Target::Key { stream, key } => self
                .conn
                .prepare_cached(
                    "DELETE FROM derived_from WHERE stream = ?1 AND key = ?2 AND hlc <= ?3 \
                     RETURNING seq",
                )
                .and_then(|mut s| {
                    s.query_map(params![stream, key, hlc_sql], |r| r.get(0))?
                        .collect::<Result<Vec<_>, _>>()
                }),
            crate::erase::Target::Principal { principal, tenant } => self
                .conn
                .prepare_cached(
                    "DELETE FROM derived_from WHERE principal = ?1 \
                     AND (?2 = '' OR tenant = ?2) AND hlc <= ?3 RETURNING seq",
                )
                .and_then(|mut s| {
                    s.query_map(params![principal, tenant, hlc_sql], |r| r.get(0))?
                        .collect::<Result<Vec<_>, _>>()
                }),
        }
        .map_err(backend)?;
        for seq in &numbers {
            self.conn
                .prepare_cached("INSERT OR IGNORE INTO retract_pending (seq) VALUES (?1)")
                .and_then(|mut s| s.execute([seq]))
                .map_err(backend)?;
            self.tx_writes += 1;
        }
        Ok(numbers.len())
    }

    /// Notes that this node's derivative `(origin, seq)`, if it is one, expired here at
    /// `now_ms`: its row stays for [`DERIVED_EXPIRED_KEEP_MS`], so an erase of its
    /// source in that time still retracts it where it lives a little longer (nodes
    /// expire on their own clocks and passes).
    pub(crate) fn derived_expired(
        &mut self,
        origin: &OriginKey,
        seq: u64,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        self.conn
            .prepare_cached("UPDATE derived_from SET gone_ms = ?3 WHERE origin = ?1 AND seq = ?2")
            .and_then(|mut s| {
                s.execute(params![
                    &origin.0[..],
                    seq.cast_signed(),
                    now_ms.cast_signed()
                ])
            })
            .map_err(backend)?;
        Ok(())
    }

    /// Forgets the rows of derivatives that expired here more than
    /// [`DERIVED_EXPIRED_KEEP_MS`] before `now_ms`.
    pub(crate) fn prune_derived(&mut self, now_ms: u64) -> Result<(), StoreError> {
        let before = now_ms.saturating_sub(DERIVED_EXPIRED_KEEP_MS).cast_signed();
        let due = self
            .conn
            .prepare_cached(
                "SELECT 1 FROM derived_from WHERE gone_ms IS NOT NULL AND gone_ms < ?1 LIMIT 1",
            )
            .and_then(|mut s| s.exists([before]))
            .map_err(backend)?;
        if !due {
            return Ok(());
        }
        self.begin_write()?;
        let gone = self
            .conn
            .prepare_cached("DELETE FROM derived_from WHERE gone_ms IS NOT NULL AND gone_ms < ?1")
            .and_then(|mut s| s.execute([before]))
            .map_err(backend)?;
        self.tx_writes += gone;
        Ok(())
    }

    /// Forgets the `derived_from` row of `(origin, seq)`, if any: the derivative was
    /// erased (everywhere), so there is nothing left to retract.
    pub(crate) fn forget_derived(
        &mut self,
        origin: &OriginKey,
        seq: u64,
    ) -> Result<(), StoreError> {
        self.conn
            .prepare_cached("DELETE FROM derived_from WHERE origin = ?1 AND seq = ?2")
            .and_then(|mut s| s.execute(params![&origin.0[..], seq.cast_signed()]))
            .map_err(backend)?;
        Ok(())
    }

    /// Up to [`RETRACT_NUMBERS_MAX`] of this node's derivative numbers whose retraction
    /// it has not applied yet, ascending.
    pub(crate) fn pending_retractions(&self) -> Result<Vec<u64>, StoreError> {
        self.conn
            .prepare_cached("SELECT seq FROM retract_pending ORDER BY seq LIMIT ?1")
            .and_then(|mut s| {
                s.query_map([RETRACT_NUMBERS_MAX as i64], |r| r.get::<_, i64>(0))?
                    .collect::<Result<Vec<_>, _>>()
            })
            .map_err(backend)?
            .into_iter()
            .map(|s| u64::try_from(s).map_err(|_| corrupt("seq")))
            .collect()
    }

    /// Applies a retraction by `origin` of its derivatives `seqs` (see the module docs) at
    /// wall-clock `now_ms`; `own`: this node is `origin` (the numbers leave
    /// `retract_pending`). All of it or none of it (a savepoint; memory is reloaded after
    /// a failure), in the open write transaction.
    pub(crate) fn retract(
        &mut self,
        origin: &OriginKey,
        seqs: &[u64],
        own: bool,
        now_ms: u64,
    ) -> Result<Retracted, StoreError> {
        match self.in_savepoint("retract", |s| s.retract_rows(origin, seqs, own, now_ms)) {
            Ok(out) => {
                self.stats.get_mut().erased += out.erased.len() as u64;
                Ok(out)
            }
            Err(e) => {
                self.reload();
                Err(e)
            }
        }
    }

    fn retract_rows(
        &mut self,
        origin: &OriginKey,
        seqs: &[u64],
        own: bool,
        now_ms: u64,
    ) -> Result<Retracted, StoreError> {
        self.prune_retracted(now_ms.saturating_sub(RETRACTED_TTL_MS))?;
        let mut out = Retracted::default();
        for &seq in seqs {
            let seq_sql = seq.cast_signed();
            if own {
                self.conn
                    .prepare_cached("DELETE FROM retract_pending WHERE seq = ?1")
                    .and_then(|mut s| s.execute([seq_sql]))
                    .map_err(backend)?;
            }
            let row: Option<(Vec<u8>, Vec<u8>)> = self
                .conn
                .prepare_cached("SELECT id, envelope FROM events WHERE origin = ?1 AND seq = ?2")
                .and_then(|mut s| {
                    let mut rows = s.query(params![&origin.0[..], seq_sql])?;
                    rows.next()?.map(|r| Ok((r.get(0)?, r.get(1)?))).transpose()
                })
                .map_err(backend)?;
            if let Some((id, envelope)) = row {
                // Stored events were verified on arrival: the claimed fields are the
                // signed ones.
                let unverified = weft_fabric::decode(&envelope).map_err(|_| corrupt("envelope"))?;
                let data = unverified.claimed_data();
                if crate::egress::is_derived(data.content_type()) {
                    let e = self.erase_row(
                        &id,
                        &origin.0,
                        seq_sql,
                        data.stream().as_str().to_string(),
                        data.key().map(<[u8]>::to_vec),
                    )?;
                    out.erased.push(e);
                } else {
                    out.not_derived += 1;
                }
                continue;
            }
            // Not here: kept, so that the copy is refused if it comes (late, after a Skip
            // another node that had applied this retraction gave), unless it is gone
            // for good here already.
            if own || self.gone(origin, seq) || self.state.retracted.contains(&(*origin, seq)) {
                out.skipped += 1;
                continue;
            }
            if self.state.retracted.len() >= RETRACTED_MAX {
                self.prune_oldest_retracted()?;
            }
            self.conn
                .prepare_cached("INSERT INTO retracted (origin, seq, at_ms) VALUES (?1, ?2, ?3)")
                .and_then(|mut s| s.execute(params![&origin.0[..], seq_sql, now_ms.cast_signed()]))
                .map_err(backend)?;
            self.tx_writes += 1;
            self.state.retracted.insert((*origin, seq));
            out.ahead += 1;
        }
        Ok(out)
    }

    /// Forgets the `retracted` rows kept since before `before_ms`.
    fn prune_retracted(&mut self, before_ms: u64) -> Result<(), StoreError> {
        if self.state.retracted.is_empty() {
            return Ok(());
        }
        let gone = self
            .conn
            .prepare_cached("DELETE FROM retracted WHERE at_ms < ?1 RETURNING origin, seq")
            .and_then(|mut s| {
                s.query_map([before_ms.cast_signed()], |r| {
                    Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?))
                })?
                .collect::<Result<Vec<_>, _>>()
            })
            .map_err(backend)?;
        self.forget_retracted(gone)
    }

    /// Forgets the oldest `retracted` row (at [`RETRACTED_MAX`]).
    fn prune_oldest_retracted(&mut self) -> Result<(), StoreError> {
        let gone = self
            .conn
            .prepare_cached(
                "DELETE FROM retracted WHERE (origin, seq) IN (SELECT origin, seq \
                 FROM retracted ORDER BY at_ms LIMIT 1) RETURNING origin, seq",
            )
            .and_then(|mut s| {
                s.query_map([], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?)))?
                    .collect::<Result<Vec<_>, _>>()
            })
            .map_err(backend)?;
        self.forget_retracted(gone)
    }

    fn forget_retracted(&mut self, rows: Vec<(Vec<u8>, i64)>) -> Result<(), StoreError> {
        for (origin, seq) in rows {
            let origin = OriginKey(super::key32(&origin, "origin")?);
            let seq = u64::try_from(seq).map_err(|_| corrupt("seq"))?;
            self.state.retracted.remove(&(origin, seq));
            self.tx_writes += 1;
        }
        Ok(())
    }

    /// Whether `event` is a derivative its origin retracted before it arrived: then its
    /// number moves from `retracted` to `erased` (refused, seen, answered with a Skip). An
    /// event of another kind at a retracted number only clears the row.
    pub(super) fn take_retracted(&mut self, event: &Arc<Event>) -> Result<bool, StoreError> {
        let (origin, seq) = (event.origin(), event.seq());
        if !self.state.retracted.contains(&(origin, seq)) {
            return Ok(false);
        }
        let seq_sql = seq.cast_signed();
        self.begin_write()?;
        self.conn
            .prepare_cached("DELETE FROM retracted WHERE origin = ?1 AND seq = ?2")
            .and_then(|mut s| s.execute(params![&origin.0[..], seq_sql]))
            .map_err(backend)?;
        self.state.retracted.remove(&(origin, seq));
        self.tx_writes += 1;
        if !crate::egress::is_derived(event.content_type()) {
            return Ok(false);
        }
        self.note_erased(&origin, seq, &event.id().0)?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::Arc;

    use weft_fabric::mesh::{Inserted, Store};
    use weft_fabric::{
        Event, EventDraft, Hlc, OriginKey, Payload, Residency, SecurityContext, Signer, StreamName,
    };

    use super::DerivedSource;
    use crate::erase::Target;
    use crate::store::{SqliteStore, StoreLimits};

    const T0: u64 = 1_795_000_000_000;

    /// An event of origin `signer` at `seq` on `stream` by `principal` with `key`;
    /// `derived`: the reserved derivative content type.
    fn event(signer: u8, stream: &str, seq: u64, key: Option<&str>, derived: bool) -> Arc<Event> {
        let draft = EventDraft {
            stream: StreamName::new(stream).unwrap(),
            key: key.map(|k| k.as_bytes().to_vec()),
            seq,
            hlc: Hlc::new(T0 + seq, 0).unwrap(),
            security: SecurityContext {
                tenant: "acme".into(),
                principal: if derived { "weft-egress" } else { "alice" }.into(),
                classification: "internal".into(),
                residency: Residency::Unrestricted,
                scopes: BTreeSet::new(),
                policy_epoch: 1,
            },
            content_type: if derived {
                crate::egress::DERIVED_CONTENT_TYPE
            } else {
                "application/json"
            }
            .into(),
            payload: Payload::Clear(b"{}".to_vec()),
            trace: None,
        };
        Arc::new(Signer::from_secret(&[signer; 32]).sign(draft).unwrap())
    }

    fn node(signer: u8) -> OriginKey {
        event(signer, "x", 1, None, false).origin()
    }

    fn open(dir: &std::path::Path) -> SqliteStore {
        SqliteStore::open(dir, StoreLimits::default()).unwrap()
    }

    /// The ingress node: an erase of a source's key or principal makes its derivative's
    /// number pending, its own retraction erases the derivative and clears it; a source
    /// the rule does not cover keeps its derivative.
    #[test]
    fn an_erase_makes_the_derivatives_of_what_it_covers_pending_and_the_retraction_erases_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path());
        let me = node(1);
        let alice = event(1, "profiles", 1, Some("alice"), false);
        let bob = event(1, "profiles", 2, Some("bob"), false);
        let d_alice = event(1, "masked", 3, None, true);
        let d_bob = event(1, "masked", 4, None, true);
        for e in [&alice, &bob, &d_alice, &d_bob] {
            assert_eq!(store.insert(e.clone()), Ok(Inserted::New));
        }
        store
            .record_derived(&me, 3, &DerivedSource::of(&alice))
            .unwrap();
        store
            .record_derived(&me, 4, &DerivedSource::of(&bob))
            .unwrap();
        store.commit().unwrap();
        let alice_key = Target::Key {
            stream: "profiles".into(),
            key: b"alice".to_vec(),
        };
        // A rule whose stamp bound is before the source covers nothing.
        assert_eq!(store.derivatives_to_retract(&alice_key, T0).unwrap(), 0);
        assert_eq!(
            store.derivatives_to_retract(&alice_key, u64::MAX).unwrap(),
            1
        );
        assert_eq!(store.pending_retractions().unwrap(), vec![3]);
        // Found once: the row went.
        assert_eq!(
            store.derivatives_to_retract(&alice_key, u64::MAX).unwrap(),
            0
        );
        let done = store.retract(&me, &[3], true, T0).unwrap();
        assert_eq!((done.erased.len(), done.ahead, done.not_derived), (1, 0, 0));
        assert!(store.get(&me, 3).unwrap().is_none() && store.erased(&me, 3));
        assert!(store.pending_retractions().unwrap().is_empty());
        // A principal rule in another tenant covers nothing; in the source's, bob's.
        for (tenant, found) in [("other", 0), ("acme", 1)] {
            let rule = Target::Principal {
                principal: "alice".into(),
                tenant: tenant.into(),
            };
            assert_eq!(
                store.derivatives_to_retract(&rule, u64::MAX).unwrap(),
                found
            );
        }
        assert_eq!(store.pending_retractions().unwrap(), vec![4]);
        store.commit().unwrap();
        store.check_invariants().unwrap();
        // Pending numbers survive a restart (the driver publishes them again).
        drop(store);
        let store = open(dir.path());
        assert_eq!(store.pending_retractions().unwrap(), vec![4]);
    }

    /// Another node: a retraction erases the origin's stored derivatives, keeps the
    /// numbers not here so the derivative is refused when it arrives, and leaves events
    /// that are not derivatives and other origins' events alone.
    #[test]
    fn a_retraction_touches_only_its_origins_derivatives() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path());
        let (a, b) = (node(1), node(2));
        let d3 = event(1, "masked", 3, None, true);
        let plain5 = event(1, "orders", 5, None, false);
        let other = event(2, "masked", 3, None, true);
        for e in [&d3, &plain5, &other] {
            assert_eq!(store.insert(e.clone()), Ok(Inserted::New));
        }
        let done = store.retract(&a, &[3, 4, 5], false, T0).unwrap();
        assert_eq!((done.erased.len(), done.ahead, done.not_derived), (1, 1, 1));
        assert!(store.get(&a, 3).unwrap().is_none());
        assert!(store.get(&a, 5).unwrap().is_some(), "not a derivative");
        assert!(store.get(&b, 3).unwrap().is_some(), "another origin's");
        // Number 4 arrives afterwards: refused, taken as erased.
        assert_eq!(
            store.insert(event(1, "masked", 4, None, true)),
            Ok(Inserted::Erased)
        );
        assert!(store.erased(&a, 4));
        // The same retraction again changes nothing.
        let again = store.retract(&a, &[3, 4], false, T0).unwrap();
        assert_eq!((again.erased.len(), again.ahead), (0, 0));
        store.commit().unwrap();
        store.check_invariants().unwrap();
        // The retraction reaches the log before it is applied (the driver logs, then
        // applies), so the origin's delivery cursor is past every number it names: a
        // number not here is kept all the same, and a copy that comes late (after a
        // Skip from a node that had applied the retraction) is refused.
        store.append_log(&plain5).unwrap();
        let late = store.retract(&a, &[2], false, T0).unwrap();
        assert_eq!((late.ahead, late.skipped), (1, 0));
        assert_eq!(
            store.insert(event(1, "masked", 2, None, true)),
            Ok(Inserted::Erased)
        );
        assert!(store.erased(&a, 2));
        // An event of another kind at a retracted number is stored (the row goes).
        store.retract(&a, &[6], false, T0).unwrap();
        assert_eq!(
            store.insert(event(1, "orders", 6, None, false)),
            Ok(Inserted::New)
        );
        store.commit().unwrap();
        store.check_invariants().unwrap();
    }

    /// Numbers kept for derivatives not yet here expire after a week and are bounded in
    /// count (the oldest go first); the rows follow memory across a restart.
    #[test]
    fn numbers_kept_for_late_derivatives_expire_and_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path());
        let a = node(1);
        let done = store.retract(&a, &[7, 8], false, T0).unwrap();
        assert_eq!(done.ahead, 2);
        store.commit().unwrap();
        drop(store);
        let mut store = open(dir.path());
        store.check_invariants().unwrap();
        // A week later another retraction prunes them: 7 then arrives and is stored.
        let week = super::RETRACTED_TTL_MS;
        store.retract(&a, &[9], false, T0 + week + 1).unwrap();
        assert_eq!(
            store.insert(event(1, "masked", 7, None, true)),
            Ok(Inserted::New)
        );
        store.commit().unwrap();
        store.check_invariants().unwrap();
        assert_eq!(store.state.retracted.len(), 1);
    }

    /// At the bound (4 in tests) the oldest kept number goes first.
    #[test]
    fn at_the_bound_the_oldest_kept_number_goes() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path());
        let a = node(1);
        for seq in 1..=5 {
            store.retract(&a, &[seq], false, T0 + seq).unwrap();
        }
        assert_eq!(store.state.retracted.len(), super::RETRACTED_MAX);
        assert_eq!(
            store.insert(event(1, "masked", 1, None, true)),
            Ok(Inserted::New),
            "the oldest went"
        );
        assert_eq!(
            store.insert(event(1, "masked", 2, None, true)),
            Ok(Inserted::Erased)
        );
        store.commit().unwrap();
        store.check_invariants().unwrap();
    }

    /// A store whose `derived_from` predates `gone_ms` gets the column at open.
    #[test]
    fn an_older_derived_from_table_gets_its_expiry_column() {
        let dir = tempfile::tempdir().unwrap();
        drop(open(dir.path()));
        {
            let conn = rusqlite::Connection::open(dir.path().join("weft.db")).unwrap();
            conn.execute_batch(
                "DROP INDEX derived_from_gone; DROP TABLE derived_from;
                 CREATE TABLE derived_from (origin BLOB NOT NULL, seq INTEGER NOT NULL,
                     stream TEXT NOT NULL, key BLOB, principal TEXT NOT NULL,
                     tenant TEXT NOT NULL, hlc INTEGER NOT NULL,
                     PRIMARY KEY (origin, seq)) WITHOUT ROWID;",
            )
            .unwrap();
        }
        let mut store = open(dir.path());
        store.derived_expired(&node(1), 1, T0).unwrap();
        store.prune_derived(T0).unwrap();
        store.commit().unwrap();
    }
}
