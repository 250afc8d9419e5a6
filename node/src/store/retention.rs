//! Stream retention: the policy's stream rules' `retention_s` (age) and `retention_bytes`
//! (size per node) applied to the store.
//!
//! A pass ([`SqliteStore::expire`], run by the driver every few seconds) deletes, per
//! stream in delivery-log order, the events older than their rule's `retention_s` (it
//! stops at the first younger one: an event that arrived after younger ones goes when
//! they do), then, per rule, the oldest events of the rule's streams while their envelopes
//! add up to more than `retention_bytes`. Table streams (a rule with `conflict`) and
//! system streams are never expired: a table's state is made of all its writes, and
//! system streams carry the policy and erase requests a node catching up needs.
//!
//! Each stream's logged envelope bytes are kept in `stream_bytes` (triggers update it with
//! every logged, expired or erased event), so a size rule reads a count, never a scan.
//!
//! An expired event's number stays seen: it is kept as a range in `expired`, so
//! anti-entropy does not fetch the event back, a peer asking for it gets a Skip (as for an
//! erased event, [`Store::erased`]), a restart does not reopen the hole, and the origin's
//! own numbering continues after it. Numbers a range covers are expired or still held (a
//! range only grows across numbers the store holds or erased), so one range per origin
//! is the common case. Where an origin's other numbers never reach this node (residency,
//! interest) its expired numbers take a range per run between them, so the ranges are
//! bounded (`expired_ranges_max`): at the bound the oldest ranges are dropped, from the
//! origin with the most, and every origin keeps its newest (its top is the delivery
//! cursor a restart resumes from). This node then no longer answers Skips for the numbers
//! dropped; the origin itself, which holds all its own numbers (so they expire into one
//! range there, or one per wall-clock floor it numbered past: the hole below a floor is
//! not its to expire), and nodes that hold them in one range still do.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::sync::Arc;

use rusqlite::{OptionalExtension, params};
use weft_fabric::hlc::Hlc;
use weft_fabric::mesh::StoreError;
use weft_fabric::{OriginKey, StreamName};

use super::{SqliteStore, backend, corrupt, key32};

/// Events one pass expires at most (across every stream): the pass runs on the driver's
/// thread inside its write transaction, so a large backlog goes over several passes
/// instead of stalling publishes.
pub(crate) const EXPIRE_PASS_MAX: usize = 2_000;

/// How close to its retention age an event is when another node may already have expired
/// it: the HLC drift bound nodes accept (60 s) covers their clocks and the 5 s between
/// passes.
const RETENTION_RACE_MS: u64 = 60_000;

/// Streams under an age rule one pass looks at (round robin over passes): a stream with
/// nothing due still costs a query, so a store with very many streams is covered over
/// several passes instead of stalling the driver in one.
const AGE_STREAMS_PER_PASS: usize = 1_000;

/// Rows read per stream and query while a pass walks a stream's oldest events.
const HEAD_ROWS: usize = 256;

/// Rows first read of each stream under a size rule (the merge reads a page more of a
/// stream once it has taken these).
const MERGE_FIRST_ROWS: usize = 8;

/// A stream's oldest rows not yet taken, in a size rule's merge.
struct Head {
    rows: VecDeque<Candidate>,
    /// The log position of the last row read.
    after: u64,
    /// Whether rows after `after` may remain.
    more: bool,
}

/// What retention applies to one stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rule {
    /// The stream rule's position in the bundle (streams of one rule share its size
    /// budget).
    pub(crate) index: usize,
    /// `retention_s`, in milliseconds.
    pub(crate) age_ms: Option<u64>,
    /// `retention_bytes`.
    pub(crate) bytes: Option<u64>,
}

/// The retention rules in force: the policy's stream rules (none without a policy).
#[derive(Debug, Clone, Default)]
pub(crate) struct RetentionRules {
    policy: Option<Arc<weft_policy::Policy>>,
}

impl RetentionRules {
    /// The rules of `policy`.
    pub(crate) fn new(policy: Option<Arc<weft_policy::Policy>>) -> Self {
        Self { policy }
    }

    /// Whether any stream rule sets a retention.
    pub(crate) fn any(&self) -> bool {
        self.policy.as_ref().is_some_and(|p| {
            p.bundle()
                .streams
                .iter()
                .any(|r| r.retention_s.is_some() || r.retention_bytes.is_some())
        })
    }

    /// The retention of `stream`: `None` for system streams, tables, streams without a
    /// rule and rules without a retention.
    pub(crate) fn rule(&self, stream: &StreamName) -> Option<Rule> {
        if stream.is_system() {
            return None;
        }
        let info = self.policy.as_ref()?.stream_rule(stream)?;
        if info.conflict.is_some() || (info.retention_s.is_none() && info.retention_bytes.is_none())
        {
            return None;
        }
        Some(Rule {
            index: info.index,
            age_ms: info.retention_s.map(|s| s.saturating_mul(1000)),
            bytes: info.retention_bytes,
        })
    }
}

/// What one pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Expired {
    /// Events deleted for their age.
    pub(crate) by_age: u64,
    /// Events deleted for their rule's size.
    pub(crate) by_size: u64,
    /// The pass stopped at [`EXPIRE_PASS_MAX`]: more is due (run again soon).
    pub(crate) more: bool,
    /// The pass stopped because the `expired` ranges are at `expired_ranges_max` and
    /// none can be dropped (every origin is down to one range).
    pub(crate) ranges_full: bool,
    /// Ranges dropped (oldest first) to stay within `expired_ranges_max`.
    pub(crate) ranges_dropped: u64,
    /// A deletion step failed and was rolled back (the pass stops; memory is reloaded).
    pub(crate) failed_step: bool,
    /// The pass's wall clock, ms.
    now_ms: u64,
}

/// Creates the per-stream byte counts (`stream_bytes`: the envelope bytes of each
/// stream's logged events) and the triggers that keep them: a row entering the log adds
/// its event's envelope, an event deleted while logged (retention, erase) takes it off.
/// Triggers, not statements of their own, so a count changes in the same statement as
/// the rows it counts (a failed statement undoes both), and a build that does not know
/// the table keeps it right too. A store made before them fills the counts once from its
/// rows, at its first start. Idempotent; in one transaction.
pub(crate) fn create_schema(conn: &rusqlite::Connection) -> rusqlite::Result<()> {
    let tx = rusqlite::Transaction::new_unchecked(conn, rusqlite::TransactionBehavior::Immediate)?;
    let exists = tx
        .prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'stream_bytes'")?
        .exists([])?;
    if !exists {
        tx.execute_batch(
            "CREATE TABLE stream_bytes (
                 stream TEXT PRIMARY KEY,
                 bytes INTEGER NOT NULL
             ) WITHOUT ROWID;
             INSERT INTO stream_bytes (stream, bytes)
                 SELECT l.stream, SUM(LENGTH(e.envelope)) FROM log l
                 JOIN events e ON e.id = l.id GROUP BY l.stream;",
        )?;
        tracing::info!("per-stream byte counts made for stream retention");
    }
    tx.execute_batch(
        "CREATE TRIGGER IF NOT EXISTS stream_bytes_logged AFTER INSERT ON log BEGIN
             INSERT INTO stream_bytes (stream, bytes)
                 SELECT NEW.stream, LENGTH(envelope) FROM events WHERE id = NEW.id
                 ON CONFLICT (stream) DO UPDATE SET bytes = bytes + excluded.bytes;
         END;
         CREATE TRIGGER IF NOT EXISTS stream_bytes_gone AFTER DELETE ON events
             WHEN EXISTS (SELECT 1 FROM log WHERE id = OLD.id) BEGIN
             UPDATE stream_bytes SET bytes = bytes - LENGTH(OLD.envelope)
                 WHERE stream = OLD.stream;
             DELETE FROM stream_bytes WHERE stream = OLD.stream AND bytes <= 0;
         END;",
    )?;
    tx.commit()
}

/// One event a pass may expire.
struct Candidate {
    /// Its position in the delivery log.
    pos: u64,
    id: Vec<u8>,
    origin: OriginKey,
    seq: u64,
    /// Its age reference, in wall-clock milliseconds: the earlier of its stamp (HLC) and
    /// its arrival in the log.
    aged_ms: u64,
    /// Its envelope's bytes.
    len: u64,
}

impl SqliteStore {
    /// Sets the retention rules in force (at start and at each policy epoch).
    pub(crate) fn set_retention(&mut self, rules: RetentionRules) {
        self.retention = rules;
    }

    /// Whether `(origin, seq)` is covered by an expired range (expired here, or held).
    pub(crate) fn expired_covers(&self, origin: &OriginKey, seq: u64) -> bool {
        self.state
            .expired
            .get(origin)
            .and_then(|m| m.range(..=seq).next_back())
            .is_some_and(|(_, hi)| seq <= *hi)
    }

    /// Whether retention may explain why a peer no longer held `event` at wall-clock
    /// `now_ms`: its stream's rule sets a size (each node's budget is its own), or an age
    /// it is within [`RETENTION_RACE_MS`] of (nodes expire on their own clocks and
    /// passes). A Skip the event then contradicts is not taken for a lie.
    pub(crate) fn retention_may_explain(&self, event: &weft_fabric::Event, now_ms: u64) -> bool {
        let Some(rule) = self.retention.rule(event.stream()) else {
            return false;
        };
        rule.bytes.is_some()
            || rule.age_ms.is_some_and(|age| {
                event.hlc().physical_ms().saturating_add(age) <= now_ms + RETENTION_RACE_MS
            })
    }

    /// Rows in `expired` (ranges of expired numbers).
    pub(crate) fn expired_ranges(&self) -> usize {
        self.state.expired_len
    }

    /// Runs one retention pass at wall-clock `now_ms` (see the module docs). Writes go into
    /// the open write transaction (the driver commits them with its step). On an error the
    /// in-memory state is reloaded from the rows, which stay consistent: a number's range
    /// is written before its event is deleted (a range may cover held numbers).
    pub(crate) fn expire(&mut self, now_ms: u64) -> Result<Expired, StoreError> {
        let mut out = Expired {
            now_ms,
            ..Expired::default()
        };
        self.prune_derived(now_ms)?;
        if !self.retention.any() {
            return Ok(out);
        }
        match self.expire_all(now_ms, &mut out) {
            Ok(()) => Ok(out),
            Err(e) => {
                // Only a step that was rolled back leaves memory out of step with the rows.
                if out.failed_step {
                    self.reload();
                }
                Err(e)
            }
        }
    }

    fn expire_all(&mut self, now_ms: u64, out: &mut Expired) -> Result<(), StoreError> {
        let streams = self.log_streams()?;
        let mut by_rule: BTreeMap<usize, (u64, Vec<String>)> = BTreeMap::new();
        let mut aged: Vec<(String, u64)> = Vec::new();
        for stream in streams {
            let Ok(name) = StreamName::new(stream.clone()) else {
                continue;
            };
            let Some(rule) = self.retention.rule(&name) else {
                continue;
            };
            if let Some(age_ms) = rule.age_ms {
                aged.push((stream.clone(), now_ms.saturating_sub(age_ms)));
            }
            if let Some(limit) = rule.bytes {
                by_rule
                    .entry(rule.index)
                    .or_insert((limit, Vec::new()))
                    .1
                    .push(stream);
            }
        }
        // Age: at most AGE_STREAMS_PER_PASS streams a pass (each costs a query even when
        // nothing is due), round robin from where the last pass stopped.
        let start = aged.partition_point(|(s, _)| *s <= self.retention_resume);
        let visit = aged.len().min(AGE_STREAMS_PER_PASS);
        for k in 0..visit {
            let (stream, cutoff) = &aged[(start + k) % aged.len()];
            self.retention_resume.clone_from(stream);
            match self.expire_by_age(stream, *cutoff, out) {
                Ok(true) => {}
                Ok(false) => return Ok(()),
                Err(e) if out.failed_step => return Err(e),
                // A read that failed (a corrupt row): this stream waits, the others go on.
                Err(e) => {
                    tracing::warn!(stream = %stream, error = %e, "retention skipped a stream")
                }
            }
        }
        // Streams left for the next pass: soon if this one found something due (more may
        // be), else at the next interval (a pass over streams with nothing due every tick
        // would be ten times the designed rate of queries).
        if visit < aged.len() && out.by_age > 0 {
            out.more = true;
        }
        for (limit, streams) in by_rule.into_values() {
            match self.expire_by_size(&streams, limit, out) {
                Ok(true) => {}
                Ok(false) => return Ok(()),
                Err(e) if out.failed_step => return Err(e),
                Err(e) => tracing::warn!(error = %e, "retention skipped a size rule"),
            }
        }
        Ok(())
    }

    /// Expires the oldest events of `stream` whose age (the earlier of their stamp and
    /// their arrival in the log) is before `cutoff_ms`, in log order, up to the first
    /// younger one. An event stamped in the future is aged from its arrival, so it holds
    /// up the events behind it for at most the retention. `false`: the pass must stop
    /// (budget or ranges full).
    fn expire_by_age(
        &mut self,
        stream: &str,
        cutoff_ms: u64,
        out: &mut Expired,
    ) -> Result<bool, StoreError> {
        loop {
            let (due, more) = self.head_while(stream, HEAD_ROWS, |c| c.aged_ms < cutoff_ms)?;
            if due.is_empty() {
                return Ok(true);
            }
            if !self.take(due, false, out)? {
                return Ok(false);
            }
            if !more {
                return Ok(true);
            }
        }
    }

    /// Expires the oldest events of `streams` (one rule's) while their envelopes add up
    /// to more than `limit` bytes, oldest first across the streams by log position: a
    /// merge of the streams' heads, each read a few rows at first and a page at a time
    /// after as the merge reaches it, so a rule over many streams costs a query per
    /// stream and per page taken, not a page of every stream at every step.
    fn expire_by_size(
        &mut self,
        streams: &[String],
        limit: u64,
        out: &mut Expired,
    ) -> Result<bool, StoreError> {
        let mut sizes = Vec::with_capacity(streams.len());
        for s in streams {
            sizes.push(self.stream_bytes(s)?);
        }
        let mut over = sizes.iter().sum::<u64>().saturating_sub(limit);
        if over == 0 {
            return Ok(true);
        }
        let mut heads: Vec<Head> = Vec::with_capacity(streams.len());
        let mut queue = BinaryHeap::new();
        for (i, (stream, size)) in streams.iter().zip(sizes).enumerate() {
            let mut head = Head {
                rows: VecDeque::new(),
                after: 0,
                more: size > 0,
            };
            if head.more {
                self.refill(stream, &mut head, MERGE_FIRST_ROWS)?;
            }
            if let Some(c) = head.rows.front() {
                queue.push(Reverse((c.pos, i)));
            }
            heads.push(head);
        }
        while over > 0 {
            let done = out.by_age + out.by_size;
            let room = (EXPIRE_PASS_MAX as u64).saturating_sub(done) as usize;
            if room == 0 {
                out.more = true;
                return Ok(false);
            }
            // A step: the oldest rows across the streams while the rule is over its size.
            let mut picked: BTreeMap<usize, Vec<Candidate>> = BTreeMap::new();
            let (mut n, mut left) = (0, over);
            while left > 0 && n < room.min(HEAD_ROWS) {
                let Some(Reverse((_, i))) = queue.pop() else {
                    break;
                };
                let head = &mut heads[i];
                let Some(c) = head.rows.pop_front() else {
                    continue;
                };
                if head.rows.is_empty() && head.more {
                    self.refill(&streams[i], head, HEAD_ROWS)?;
                }
                if let Some(next) = head.rows.front() {
                    queue.push(Reverse((next.pos, i)));
                }
                left = left.saturating_sub(c.len);
                n += 1;
                picked.entry(i).or_default().push(c);
            }
            if picked.is_empty() {
                return Ok(true);
            }
            for due in picked.into_values() {
                let bytes: u64 = due.iter().map(|c| c.len).sum();
                if !self.take(due, true, out)? {
                    return Ok(false);
                }
                // The triggers took the same bytes off the streams' counts.
                over = over.saturating_sub(bytes);
            }
        }
        Ok(true)
    }

    /// Reads up to `n` more of `stream`'s oldest logged rows after `head.after` into
    /// `head`.
    fn refill(&self, stream: &str, head: &mut Head, n: usize) -> Result<(), StoreError> {
        let (rows, more) = self.head_after(stream, head.after, n)?;
        if let Some(last) = rows.last() {
            head.after = last.pos;
        }
        head.more = more;
        head.rows.extend(rows);
        Ok(())
    }

    /// Deletes `due` (oldest first, of one stream) within the pass's budget and the ranges'
    /// room, after recording their numbers as expired, and counts them in `out` (by size
    /// or by age). Returns whether the pass may go on.
    fn take(
        &mut self,
        mut due: Vec<Candidate>,
        by_size: bool,
        out: &mut Expired,
    ) -> Result<bool, StoreError> {
        let done = out.by_age + out.by_size;
        let budget = (EXPIRE_PASS_MAX as u64).saturating_sub(done) as usize;
        let mut go_on = true;
        if due.len() > budget {
            due.truncate(budget);
            out.more = true;
            go_on = false;
        }
        // Each number may need a range row of its own (at worst). Beyond the room left
        // under `expired_ranges_max` the oldest ranges go first, a step at a time (the
        // numbers a step expires make ranges a later step may drop); when none can go
        // (one range per origin), the pass stops.
        let mut due = due.into_iter().peekable();
        while due.peek().is_some() {
            let room = self
                .limits
                .expired_ranges_max
                .saturating_sub(self.state.expired_len);
            let step: Vec<Candidate> = due
                .by_ref()
                .take(room.saturating_add(self.droppable_ranges()))
                .collect();
            if step.is_empty() {
                out.ranges_full = true;
                return Ok(false);
            }
            let dropped = self.take_step(&step, step.len().saturating_sub(room), out)?;
            out.ranges_dropped += dropped as u64;
            self.stats.get_mut().expired_ranges_dropped += dropped as u64;
            self.stats.get_mut().expired += step.len() as u64;
            if by_size {
                out.by_size += step.len() as u64;
            } else {
                out.by_age += step.len() as u64;
            }
        }
        Ok(go_on)
    }

    /// One step of [`SqliteStore::take`], all of it or none of it: a failure rolls the
    /// rows back to its start (the caller then reloads the in-memory state from them), so
    /// no event is deleted without its range or left half deleted, and no range is dropped
    /// for nothing.
    fn take_step(
        &mut self,
        step: &[Candidate],
        drop: usize,
        out: &mut Expired,
    ) -> Result<usize, StoreError> {
        let now_ms = out.now_ms;
        let result = self.in_savepoint("expire_take", |s| s.take_rows(step, drop, now_ms));
        out.failed_step |= result.is_err();
        result
    }

    /// [`SqliteStore::take`]'s writes: at least `drop` of the oldest ranges dropped, the
    /// new ranges (a number in a range is served as its event while it is held), then the
    /// rows. Returns how many ranges were dropped.
    fn take_rows(
        &mut self,
        due: &[Candidate],
        drop: usize,
        now_ms: u64,
    ) -> Result<usize, StoreError> {
        let dropped = if drop > 0 {
            self.drop_oldest_ranges(drop)?
        } else {
            0
        };
        let mut numbers: BTreeMap<OriginKey, Vec<u64>> = BTreeMap::new();
        for c in due {
            numbers.entry(c.origin).or_default().push(c.seq);
        }
        for (origin, mut seqs) in numbers {
            seqs.sort_unstable();
            self.record_expired(origin, &seqs)?;
        }
        for c in due {
            // The event row first: a trigger takes a logged event's bytes off its
            // stream's count.
            for sql in [
                "DELETE FROM events WHERE id = ?1",
                "DELETE FROM log WHERE id = ?1",
            ] {
                self.conn
                    .prepare_cached(sql)
                    .and_then(|mut s| s.execute([&c.id[..]]))
                    .map_err(backend)?;
            }
            // An own derivative expired here may live a little longer elsewhere: its
            // source's erase still retracts it for a while (`store/derived.rs`).
            self.derived_expired(&c.origin, c.seq, now_ms)?;
            self.tx_writes += 2;
            self.state.len -= 1;
            self.cache.get_mut().remove(&(c.origin, c.seq));
        }
        Ok(dropped)
    }

    /// Ranges [`SqliteStore::drop_oldest_ranges`] may drop: all but each origin's newest.
    fn droppable_ranges(&self) -> usize {
        self.state.expired_len - self.state.expired.len()
    }

    /// Drops at least `want` ranges of expired numbers (if [`droppable`] allows), and up
    /// to a 64th of `expired_ranges_max` more, so that a busy pass does not come back here
    /// at every step: the lowest ranges of the origin with the most, again while short.
    /// Every origin keeps its newest range: its top is the origin's delivery cursor here
    /// (`Store::delivered`), from which a restart resumes. This node then no longer answers
    /// Skips for the numbers dropped; they stay seen (in memory, and below the cursor after
    /// a restart), so an event sent again under one is still not taken. Rows first, then
    /// memory; inside the caller's savepoint. Returns how many went.
    ///
    /// [`droppable`]: SqliteStore::droppable_ranges
    fn drop_oldest_ranges(&mut self, want: usize) -> Result<usize, StoreError> {
        let target = want.max(self.limits.expired_ranges_max / 64);
        // The origins with the most ranges first, ties to the lowest key (deterministic
        // whatever the map's order): one sort per call, not a scan per origin taken.
        let mut order: Vec<(usize, OriginKey)> = self
            .state
            .expired
            .iter()
            .filter(|(_, m)| m.len() > 1)
            .map(|(o, m)| (m.len(), *o))
            .collect();
        order.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        let mut dropped = 0;
        for (len, origin) in order {
            if dropped >= target {
                break;
            }
            let k = (len - 1).min(target - dropped);
            let Some(map) = self.state.expired.get(&origin) else {
                continue;
            };
            let gone: Vec<(u64, u64)> = map.iter().take(k).map(|(l, h)| (*l, *h)).collect();
            let Some(&(last_lo, last_hi)) = gone.last() else {
                continue;
            };
            self.conn
                .prepare_cached("DELETE FROM expired WHERE origin = ?1 AND lo <= ?2")
                .and_then(|mut st| st.execute(params![&origin.0[..], last_lo.cast_signed()]))
                .map_err(backend)?;
            // Numbers up to the floor that are not held are gone for good (a publish of
            // one is refused, `Store::gone`), though no longer answered with Skips.
            self.conn
                .prepare_cached(
                    "INSERT INTO expired_floor (origin, hi) VALUES (?1, ?2) \
                     ON CONFLICT (origin) DO UPDATE SET hi = MAX(hi, excluded.hi)",
                )
                .and_then(|mut st| st.execute(params![&origin.0[..], last_hi.cast_signed()]))
                .map_err(backend)?;
            self.tx_writes += 2;
            // The numbers the dropped ranges covered leave the store's ranges too (as a
            // restart would read them), but for those still held or erased. A range of
            // one number is an expired one (a range grows only across held or erased
            // numbers), so only wider ranges are looked up.
            let mut kept = Vec::new();
            for &(lo, hi) in gone.iter().filter(|(lo, hi)| hi > lo) {
                kept.extend(self.held_or_erased_in(&origin, lo, hi)?);
            }
            if let Some(ranges) = self.state.ranges.get_mut(&origin) {
                *ranges = weft_fabric::mesh::SeqRanges::from_ranges(
                    ranges
                        .difference_ranges(&gone)
                        .into_iter()
                        .chain(kept.into_iter().map(|s| (s, s))),
                );
            }
            if let Some(map) = self.state.expired.get_mut(&origin) {
                *map = map.split_off(&(last_lo + 1));
            }
            let floor = self.state.expired_floor.entry(origin).or_default();
            *floor = (*floor).max(last_hi);
            self.state.expired_len -= k;
            dropped += k;
        }
        Ok(dropped)
    }

    /// The numbers of `origin` from `lo` to `hi` the store holds or erased, ascending.
    fn held_or_erased_in(
        &self,
        origin: &OriginKey,
        lo: u64,
        hi: u64,
    ) -> Result<Vec<u64>, StoreError> {
        self.conn
            .prepare_cached(
                "SELECT seq FROM events WHERE origin = ?1 AND seq BETWEEN ?2 AND ?3 \
                 UNION SELECT seq FROM erased WHERE origin = ?1 AND seq BETWEEN ?2 AND ?3 \
                 ORDER BY seq",
            )
            .and_then(|mut st| {
                st.query_map(
                    params![&origin.0[..], lo.cast_signed(), hi.cast_signed()],
                    |r| r.get::<_, i64>(0),
                )?
                .collect::<Result<Vec<_>, _>>()
            })
            .map_err(backend)?
            .into_iter()
            .map(|s| u64::try_from(s).map_err(|_| corrupt("seq")))
            .collect()
    }

    /// Adds `seqs` (ascending, still stored: deleted right after) of `origin` to its
    /// expired ranges: a number joins the range below it, and the one above, when every
    /// number between is held or erased here (so a range never covers a number this node
    /// never had). The rows are written as the ranges change; memory follows each write.
    fn record_expired(&mut self, origin: OriginKey, seqs: &[u64]) -> Result<(), StoreError> {
        for &s in seqs {
            if self.expired_covers(&origin, s) {
                continue;
            }
            let ranges = self.state.expired.get(&origin);
            let below = ranges
                .and_then(|m| m.range(..s).next_back())
                .map(|(l, h)| (*l, *h));
            let above = ranges
                .and_then(|m| m.range(s + 1..).next())
                .map(|(l, h)| (*l, *h));
            let (mut lo, mut hi) = (s, s);
            let mut gone = Vec::new();
            if let Some((plo, phi)) = below
                && self.gap_settled(&origin, phi, s)?
            {
                lo = plo;
            }
            if let Some((nlo, nhi)) = above
                && self.gap_settled(&origin, s, nlo)?
            {
                hi = nhi;
                gone.push(nlo);
            }
            for old in &gone {
                self.conn
                    .prepare_cached("DELETE FROM expired WHERE origin = ?1 AND lo = ?2")
                    .and_then(|mut st| st.execute(params![&origin.0[..], old.cast_signed()]))
                    .map_err(backend)?;
                self.tx_writes += 1;
            }
            self.conn
                .prepare_cached(
                    "INSERT OR REPLACE INTO expired (origin, lo, hi) VALUES (?1, ?2, ?3)",
                )
                .and_then(|mut st| {
                    st.execute(params![&origin.0[..], lo.cast_signed(), hi.cast_signed()])
                })
                .map_err(backend)?;
            self.tx_writes += 1;
            let map = self.state.expired.entry(origin).or_default();
            for old in gone {
                map.remove(&old);
                self.state.expired_len -= 1;
            }
            if map.insert(lo, hi).is_none() {
                self.state.expired_len += 1;
            }
        }
        Ok(())
    }

    /// Whether every number strictly between `a` and `b` of `origin` is stored or erased.
    fn gap_settled(&self, origin: &OriginKey, a: u64, b: u64) -> Result<bool, StoreError> {
        let Some(want) = b.checked_sub(a).and_then(|d| d.checked_sub(1)) else {
            return Ok(false);
        };
        if want == 0 {
            return Ok(true);
        }
        let held: i64 = self
            .conn
            .prepare_cached(
                "SELECT (SELECT COUNT(*) FROM events WHERE origin = ?1 AND seq > ?2 AND seq < ?3) \
                 + (SELECT COUNT(*) FROM erased WHERE origin = ?1 AND seq > ?2 AND seq < ?3)",
            )
            .and_then(|mut s| {
                s.query_row(
                    params![&origin.0[..], a.cast_signed(), b.cast_signed()],
                    |r| r.get(0),
                )
            })
            .map_err(backend)?;
        Ok(u64::try_from(held).is_ok_and(|h| h == want))
    }

    /// Every stream that has had events in the delivery log.
    fn log_streams(&self) -> Result<Vec<String>, StoreError> {
        self.conn
            .prepare_cached("SELECT stream FROM stream_bytes ORDER BY stream")
            .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
            .map_err(backend)
    }

    /// The envelope bytes of `stream`'s logged events.
    fn stream_bytes(&self, stream: &str) -> Result<u64, StoreError> {
        let total: Option<i64> = self
            .conn
            .prepare_cached("SELECT bytes FROM stream_bytes WHERE stream = ?1")
            .and_then(|mut s| s.query_row([stream], |r| r.get(0)).optional())
            .map_err(backend)?;
        u64::try_from(total.unwrap_or(0)).map_err(|_| corrupt("negative size"))
    }

    /// The oldest logged events of `stream`, in log order, while `keep` holds, at most
    /// `n`; and whether more rows may follow (`n` were read, or one failed `keep`). Rows
    /// are stepped one at a time, so a young head costs one row.
    fn head_while(
        &self,
        stream: &str,
        n: usize,
        keep: impl Fn(&Candidate) -> bool,
    ) -> Result<(Vec<Candidate>, bool), StoreError> {
        self.rows_after(stream, 0, n, keep)
    }

    /// [`SqliteStore::head_while`] of the rows after log position `after`, all kept.
    fn head_after(
        &self,
        stream: &str,
        after: u64,
        n: usize,
    ) -> Result<(Vec<Candidate>, bool), StoreError> {
        self.rows_after(stream, after, n, |_| true)
    }

    fn rows_after(
        &self,
        stream: &str,
        after: u64,
        n: usize,
        keep: impl Fn(&Candidate) -> bool,
    ) -> Result<(Vec<Candidate>, bool), StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT l.pos, e.id, e.origin, e.seq, e.hlc, LENGTH(e.envelope), l.at_ms \
                 FROM log l JOIN events e ON e.id = l.id WHERE l.stream = ?1 AND l.pos > ?2 \
                 ORDER BY l.pos LIMIT ?3",
            )
            .map_err(backend)?;
        let mut rows = stmt
            .query(params![stream, after.cast_signed(), n as i64])
            .map_err(backend)?;
        let mut out = Vec::new();
        while let Some(r) = rows.next().map_err(backend)? {
            let pos: i64 = r.get(0).map_err(backend)?;
            let id: Vec<u8> = r.get(1).map_err(backend)?;
            let origin: Vec<u8> = r.get(2).map_err(backend)?;
            let seq: i64 = r.get(3).map_err(backend)?;
            let hlc: i64 = r.get(4).map_err(backend)?;
            let len: i64 = r.get(5).map_err(backend)?;
            let at: Option<i64> = r.get(6).map_err(backend)?;
            let stamped = Hlc::from_u64(hlc.cast_unsigned()).physical_ms();
            // A row logged before the log had arrival times arrived by then at the latest.
            let arrived = at
                .and_then(|a| u64::try_from(a).ok())
                .or((self.log_at_from_ms > 0).then_some(self.log_at_from_ms))
                .unwrap_or(stamped);
            let c = Candidate {
                pos: u64::try_from(pos).map_err(|_| corrupt("log position"))?,
                id,
                origin: OriginKey(key32(&origin, "origin")?),
                seq: u64::try_from(seq).map_err(|_| corrupt("seq"))?,
                aged_ms: stamped.min(arrived),
                len: u64::try_from(len).map_err(|_| corrupt("size"))?,
            };
            if !keep(&c) {
                return Ok((out, true));
            }
            out.push(c);
        }
        let more = out.len() == n;
        Ok((out, more))
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

    use super::{EXPIRE_PASS_MAX, RetentionRules};
    use crate::store::{SqliteStore, StoreLimits};

    /// The wall clock when the tests' module was first used: events are stamped before it
    /// and logged at about it.
    static NOW: std::sync::LazyLock<u64> =
        std::sync::LazyLock::new(|| crate::driver::wall_ms() as u64);

    const BUNDLE: &str = r#"
format = 1
epoch = 2
[classes.internal]
anywhere = true

[[streams]]
pattern = "metrics"
classification = "internal"
replication = "all"
retention_s = 60

[[streams]]
pattern = "prefs"
classification = "internal"
replication = "all"
conflict = "lww"
retention_s = 60

[[streams]]
pattern = "logs.>"
classification = "internal"
replication = "all"
retention_bytes = 3000

[[streams]]
pattern = "ticks.>"
classification = "internal"
replication = "all"
retention_s = 60
"#;

    fn rules() -> RetentionRules {
        let bundle = weft_policy::Bundle::from_toml(BUNDLE).unwrap();
        RetentionRules::new(Some(Arc::new(
            weft_policy::Policy::compile(&bundle).unwrap(),
        )))
    }

    /// An event of origin `signer` at `seq`, stamped `age_s` seconds before [`NOW`], with
    /// `len` payload bytes.
    fn event(signer: u8, stream: &str, seq: u64, age_s: i64, len: usize) -> Arc<Event> {
        let draft = EventDraft {
            stream: StreamName::new(stream).unwrap(),
            key: Some(b"k".to_vec()),
            seq,
            hlc: Hlc::new((*NOW as i64 - age_s * 1000) as u64, 0).unwrap(),
            security: SecurityContext {
                tenant: "acme".into(),
                principal: "svc".into(),
                classification: "internal".into(),
                residency: Residency::Unrestricted,
                scopes: BTreeSet::new(),
                policy_epoch: 2,
            },
            content_type: "application/json".into(),
            payload: Payload::Clear(vec![b'x'; len]),
            trace: None,
        };
        Arc::new(Signer::from_secret(&[signer; 32]).sign(draft).unwrap())
    }

    fn open(dir: &std::path::Path, events_max: usize) -> SqliteStore {
        open_with(
            dir,
            StoreLimits {
                events_max,
                ..StoreLimits::default()
            },
        )
    }

    /// A store keeping at most `ranges` expired ranges.
    fn open_bounded(dir: &std::path::Path, ranges: usize) -> SqliteStore {
        open_with(
            dir,
            StoreLimits {
                expired_ranges_max: ranges,
                ..StoreLimits::default()
            },
        )
    }

    fn open_with(dir: &std::path::Path, limits: StoreLimits) -> SqliteStore {
        let mut store = SqliteStore::open(dir, limits).unwrap();
        store.set_retention(rules());
        store
    }

    /// Stores and logs `e` (delivery), as the driver does.
    fn put(store: &mut SqliteStore, e: &Arc<Event>) {
        assert_eq!(store.insert(e.clone()), Ok(Inserted::New));
        store.append_log(e).unwrap();
    }

    fn origin(signer: u8) -> OriginKey {
        event(signer, "metrics", 1, 0, 0).origin()
    }

    #[test]
    fn old_events_expire_by_age_and_stay_seen_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path(), 1000);
        // Origin 1: seq 1-4 old metrics, 5 a young metric, 6 an old event of a stream
        // without retention, 7 an old table write (retention on a table: not applied).
        let evs = [
            event(1, "metrics", 1, 300, 10),
            event(1, "metrics", 2, 200, 10),
            event(1, "metrics", 3, 120, 10),
            event(1, "metrics", 4, 61, 10),
            event(1, "metrics", 5, 30, 10),
            event(1, "orders", 6, 300, 10),
            event(1, "prefs", 7, 300, 10),
        ];
        for e in &evs {
            put(&mut store, e);
        }
        store.commit().unwrap();
        let done = store.expire(*NOW).unwrap();
        assert_eq!((done.by_age, done.by_size, done.more), (4, 0, false));
        store.commit().unwrap();
        store.check_invariants().unwrap();
        let o = origin(1);
        for seq in 1..=4 {
            assert!(store.get(&o, seq).unwrap().is_none(), "seq {seq} expired");
            assert!(store.erased(&o, seq), "seq {seq} answered with a Skip");
        }
        for seq in 5..=7 {
            assert!(store.get(&o, seq).unwrap().is_some(), "seq {seq} kept");
        }
        // Every number stays seen, and the origin's numbering continues after them.
        assert!(store.ranges(&o).unwrap().contains(1));
        assert_eq!(store.ranges(&o).unwrap().contiguous(), 7);
        assert_eq!(store.len(), 3);
        assert_eq!(store.stats().expired, 4);
        // One range: 1-4 are consecutive.
        assert_eq!(store.expired_ranges(), 1);
        // A second pass finds nothing more.
        assert_eq!(store.expire(*NOW).unwrap().by_age, 0);
        // A peer sending an expired event back: refused, not stored again.
        assert_eq!(store.insert(evs[0].clone()), Ok(Inserted::Erased));
        drop(store);

        let mut store = open(dir.path(), 1000);
        store.check_invariants().unwrap();
        assert!(store.erased(&o, 2));
        assert!(!store.erased(&o, 6), "a held number is not expired");
        assert_eq!(store.ranges(&o).unwrap().contiguous(), 7);
        assert_eq!(store.max_seq(&o), Ok(7));
        assert_eq!(store.insert(evs[1].clone()), Ok(Inserted::Erased));
        // Time passes: the young metric goes too, and joins the range across 5's
        // neighbours... 5 is next to 4: still one range.
        assert_eq!(store.expire(*NOW + 31_000).unwrap().by_age, 1);
        store.commit().unwrap();
        assert_eq!(store.expired_ranges(), 1);
        store.check_invariants().unwrap();
    }

    #[test]
    fn a_range_grows_across_held_numbers_but_never_across_a_hole() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path(), 1000);
        // Origin 1: odd numbers on an expiring stream, even ones kept.
        for seq in 1..=9 {
            let stream = if seq % 2 == 1 { "metrics" } else { "orders" };
            put(&mut store, &event(1, stream, seq, 300, 10));
        }
        // Origin 2: 3 never held here (a residency Skip, say).
        for seq in [1, 2, 4, 5] {
            put(&mut store, &event(2, "metrics", seq, 300, 10));
        }
        store.commit().unwrap();
        assert_eq!(store.expire(*NOW).unwrap().by_age, 9);
        store.commit().unwrap();
        store.check_invariants().unwrap();
        // Origin 1: one range 1-9 over the held even numbers; origin 2: two.
        assert_eq!(store.expired_ranges(), 3);
        let (o1, o2) = (origin(1), origin(2));
        assert!(store.erased(&o1, 9));
        assert!(
            store.get(&o1, 4).unwrap().is_some(),
            "held, served as the event"
        );
        assert!(
            !store.erased(&o2, 3),
            "never held here: no Skip claimed for it"
        );
        assert!(store.erased(&o2, 4));
        // Every number of origin 2 expired: its numbering still continues after them, and
        // a restart resumes its delivery after them (not walking them again).
        assert_eq!(store.max_seq(&o2), Ok(5));
        assert_eq!(store.max_seq_excluding(&o2, &BTreeSet::new()), Ok(5));
        assert_eq!(store.delivered(&o2), Some(5));
    }

    /// Rows logged before the log had arrival times are taken as arrived at the upgrade:
    /// one stamped in the future goes one retention after it, not at its stamp.
    #[test]
    fn rows_logged_before_arrival_times_age_from_the_upgrade() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut store = open(dir.path(), 1000);
            put(&mut store, &event(11, "metrics", 1, -7 * 86_400, 1));
            put(&mut store, &event(11, "metrics", 2, 3600, 1));
            store.commit().unwrap();
        }
        let conn = rusqlite::Connection::open(crate::store::db_path(dir.path())).unwrap();
        conn.execute_batch(
            "ALTER TABLE log DROP COLUMN at_ms; DELETE FROM meta WHERE k = 'log_at_from_ms';",
        )
        .unwrap();
        drop(conn);
        let mut store = open(dir.path(), 1000);
        // The upgrade time is the wall clock at this open, which on a loaded machine can be
        // seconds after NOW was first read: a minute after the open, not after NOW.
        let upgraded = crate::driver::wall_ms() as u64;
        assert_eq!(store.expire(*NOW).unwrap().by_age, 0, "upgraded just now");
        assert_eq!(store.expire(upgraded + 61_000).unwrap().by_age, 2);
        store.commit().unwrap();
        store.check_invariants().unwrap();
    }

    /// Very many streams under an age rule are covered over several passes (each looks
    /// at a bounded number of them, round robin), not in one long pass.
    #[test]
    fn many_streams_are_covered_round_robin() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path(), 10_000);
        let n = super::AGE_STREAMS_PER_PASS as u64 + 5;
        for seq in 1..=n {
            put(
                &mut store,
                &event(10, &format!("ticks.t{seq}"), seq, 300, 1),
            );
        }
        store.commit().unwrap();
        // Nothing due yet: the pass does not ask to run again before its interval.
        let early = store.expire(*NOW - 3_600_000).unwrap();
        assert_eq!((early.by_age, early.more), (0, false));
        let first = store.expire(*NOW).unwrap();
        assert_eq!(
            (first.by_age, first.more),
            (super::AGE_STREAMS_PER_PASS as u64, true)
        );
        let second = store.expire(*NOW).unwrap();
        assert_eq!(
            second.by_age, 5,
            "the rest, from where the first pass stopped"
        );
        store.commit().unwrap();
        assert_eq!(store.len(), 0);
        store.check_invariants().unwrap();
    }

    /// A Skip contradicted by an event near its stream's retention age (or under a size
    /// rule) is put down to retention, not to a lie; elsewhere it is not.
    #[test]
    fn retention_explains_a_contradicted_skip_only_near_the_boundary() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), 1000);
        let now = *NOW;
        // metrics: retention_s = 60.
        assert!(store.retention_may_explain(&event(9, "metrics", 1, 61, 1), now));
        assert!(store.retention_may_explain(&event(9, "metrics", 2, 10, 1), now));
        assert!(!store.retention_may_explain(&event(9, "metrics", 3, 10, 1), now - 120_000));
        // logs.>: a size rule, whose budget is each node's own.
        assert!(store.retention_may_explain(&event(9, "logs.a", 4, 0, 1), now));
        // orders: no rule; prefs: a table (retention not applied).
        assert!(!store.retention_may_explain(&event(9, "orders", 5, 3600, 1), now));
        assert!(!store.retention_may_explain(&event(9, "prefs", 6, 3600, 1), now));
    }

    /// A store made before the per-stream byte counts gets them at its first start,
    /// counted from its rows, and a size rule then applies to it at once.
    #[test]
    fn an_older_store_gets_its_stream_byte_counts_at_the_first_start() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut store = open(dir.path(), 1000);
            for seq in 1..=20 {
                put(&mut store, &event(7, "logs.a", seq, 1, 200));
            }
            store.commit().unwrap();
        }
        let conn = rusqlite::Connection::open(crate::store::db_path(dir.path())).unwrap();
        conn.execute_batch("DROP TABLE stream_bytes").unwrap();
        drop(conn);
        let mut store = open(dir.path(), 1000);
        store.check_invariants().unwrap();
        assert!(store.stream_bytes("logs.a").unwrap() > 3000);
        assert!(store.expire(*NOW).unwrap().by_size > 0);
        store.commit().unwrap();
        assert!(store.stream_bytes("logs.a").unwrap() <= 3000);
        store.check_invariants().unwrap();
    }

    /// A pass that fails part way (here its log deletes) leaves the rows, the ranges and
    /// the byte counts as they were, and the next pass does the work.
    #[test]
    fn a_pass_that_fails_part_way_leaves_the_counts_right() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path(), 1000);
        for seq in 1..=20 {
            put(&mut store, &event(8, "logs.a", seq, 1, 200));
        }
        store.commit().unwrap();
        store
            .conn
            .execute_batch(
                "CREATE TEMP TRIGGER fail_log BEFORE DELETE ON log BEGIN SELECT RAISE(ABORT, 'disk'); END;",
            )
            .unwrap();
        assert!(store.expire(*NOW).is_err());
        store.commit().unwrap();
        store.check_invariants().unwrap();
        assert_eq!(store.len(), 20, "the failed step deleted nothing");
        assert_eq!(store.expired_ranges(), 0);
        store.conn.execute_batch("DROP TRIGGER fail_log").unwrap();
        store.expire(*NOW).unwrap();
        store.commit().unwrap();
        store.check_invariants().unwrap();
        assert!(store.stream_bytes("logs.a").unwrap() <= 3000);
        let kept = (1..=20)
            .filter(|s| store.get(&origin(8), *s).unwrap().is_some())
            .count();
        assert!(kept >= 5, "only what was over the budget went: {kept} kept");
    }

    /// An event stamped in the future (a producer's clock a year ahead) is aged from its
    /// arrival: it holds up the older events logged behind it for at most the retention,
    /// not for a year.
    #[test]
    fn a_future_stamp_holds_up_its_stream_for_one_retention_at_most() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path(), 1000);
        put(&mut store, &event(5, "metrics", 1, -365 * 86_400, 10));
        for seq in 2..=101 {
            put(&mut store, &event(5, "metrics", seq, 3600, 10));
        }
        store.commit().unwrap();
        assert_eq!(
            store.expire(*NOW).unwrap().by_age,
            0,
            "the head arrived just now"
        );
        let later = store.expire(*NOW + 61_000).unwrap();
        assert_eq!(later.by_age, 101);
        store.commit().unwrap();
        store.check_invariants().unwrap();
    }

    /// With more than a page of one stream's events older than another's, the size pass
    /// still takes the oldest first across the rule's streams.
    #[test]
    fn size_takes_the_oldest_across_streams_past_a_page() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path(), 10_000);
        let mut newer = Vec::new();
        for seq in 1..=300 {
            put(&mut store, &event(6, "logs.a", seq, 1, 200));
        }
        for seq in 301..=310 {
            let e = event(6, "logs.b", seq, 1, 200);
            put(&mut store, &e);
            newer.push(e);
        }
        store.commit().unwrap();
        store.expire(*NOW).unwrap();
        store.commit().unwrap();
        let o = origin(6);
        for seq in 1..=300 {
            assert!(
                store.get(&o, seq).unwrap().is_none(),
                "logs.a {seq} older than every logs.b"
            );
        }
        let kept = newer
            .iter()
            .filter(|e| store.get(&o, e.seq()).unwrap().is_some())
            .count();
        assert!(kept >= 5, "{kept} of the 10 newest kept");
        store.check_invariants().unwrap();
    }

    /// A size rule over many streams (1,200, three events each, interleaved): the passes
    /// take exactly the oldest across all of them, a budget at a time.
    #[test]
    fn size_over_many_streams_takes_exactly_the_oldest() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path(), 10_000);
        let mut all = Vec::new();
        for round in 0..3u64 {
            for i in 0..1200u64 {
                let e = event(7, &format!("logs.s{i}"), round * 1200 + i + 1, 1, 100);
                put(&mut store, &e);
                all.push(e);
            }
        }
        store.commit().unwrap();
        let mut passes = Vec::new();
        loop {
            let done = store.expire(*NOW).unwrap();
            store.commit().unwrap();
            passes.push(done.by_size);
            if !done.more {
                break;
            }
        }
        assert_eq!(passes[0], EXPIRE_PASS_MAX as u64, "{passes:?}");
        store.check_invariants().unwrap();
        let o = origin(7);
        let size = |e: &Arc<Event>| e.encode().len() as u64;
        let kept: Vec<&Arc<Event>> = all
            .iter()
            .filter(|e| store.get(&o, e.seq()).unwrap().is_some())
            .collect();
        let kept_bytes: u64 = kept.iter().map(|e| size(e)).sum();
        assert!(kept_bytes <= 3000, "{kept_bytes} bytes kept");
        let first_kept = kept.first().unwrap().seq();
        assert!(kept.iter().map(|e| e.seq()).eq(first_kept..=3600));
        assert!(kept_bytes + size(&all[first_kept as usize - 2]) > 3000);
        assert_eq!(passes.iter().sum::<u64>(), first_kept - 1);
        assert_eq!(store.expired_ranges(), 1);
    }

    #[test]
    fn size_keeps_a_rule_under_its_budget_oldest_first_across_its_streams() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path(), 1000);
        // Two streams of one rule (3000 bytes), interleaved, 20 events of some 300 bytes
        // each; all young (age does not apply to this rule).
        let mut all = Vec::new();
        for seq in 1..=20 {
            let stream = if seq % 2 == 0 { "logs.a" } else { "logs.b" };
            let e = event(3, stream, seq, 1, 200);
            put(&mut store, &e);
            all.push(e);
        }
        store.commit().unwrap();
        let size = |e: &Arc<Event>| e.encode().len() as u64;
        let total: u64 = all.iter().map(size).sum();
        assert!(total > 3000);
        let done = store.expire(*NOW).unwrap();
        assert_eq!(done.by_age, 0);
        store.commit().unwrap();
        store.check_invariants().unwrap();
        let o = origin(3);
        let kept: Vec<&Arc<Event>> = all
            .iter()
            .filter(|e| store.get(&o, e.seq()).unwrap().is_some())
            .collect();
        let kept_bytes: u64 = kept.iter().map(|e| size(e)).sum();
        assert!(kept_bytes <= 3000, "{kept_bytes} bytes kept");
        // Only as many as needed went, and the oldest: the kept ones are the newest.
        let first_kept = kept.first().unwrap().seq();
        assert!(kept.iter().map(|e| e.seq()).eq(first_kept..=20));
        assert!(kept_bytes + size(&all[first_kept as usize - 2]) > 3000);
        assert_eq!(done.by_size, first_kept - 1);
        // New events: the budget holds, counted from what the pass measured.
        for seq in 21..=24 {
            let e = event(3, "logs.a", seq, 1, 200);
            put(&mut store, &e);
            all.push(e);
        }
        store.expire(*NOW).unwrap();
        store.commit().unwrap();
        let kept_bytes: u64 = all
            .iter()
            .filter(|e| store.get(&o, e.seq()).unwrap().is_some())
            .map(size)
            .sum();
        assert!(
            kept_bytes <= 3000,
            "{kept_bytes} bytes kept after more events"
        );
        assert_eq!(store.expired_ranges(), 1);
    }

    #[test]
    fn a_pass_is_bounded_and_so_are_the_ranges() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path(), 10_000);
        for seq in 1..=(EXPIRE_PASS_MAX as u64 + 5) {
            put(&mut store, &event(4, "metrics", seq, 300, 1));
        }
        store.commit().unwrap();
        let first = store.expire(*NOW).unwrap();
        assert_eq!((first.by_age, first.more), (EXPIRE_PASS_MAX as u64, true));
        let second = store.expire(*NOW).unwrap();
        assert_eq!((second.by_age, second.more), (5, false));
        store.commit().unwrap();
        store.check_invariants().unwrap();

        // At most 3 ranges: three origins fill them (none can be dropped: each origin
        // keeps its newest); a fourth origin's old event waits.
        let dir = tempfile::tempdir().unwrap();
        let mut store = open_bounded(dir.path(), 3);
        for signer in 10..13 {
            put(&mut store, &event(signer, "metrics", 1, 300, 1));
        }
        assert_eq!(store.expire(*NOW).unwrap().by_age, 3);
        put(&mut store, &event(13, "metrics", 1, 300, 1));
        let blocked = store.expire(*NOW).unwrap();
        assert_eq!((blocked.by_age, blocked.ranges_full), (0, true));
        assert!(store.get(&origin(13), 1).unwrap().is_some());
        store.commit().unwrap();
        store.check_invariants().unwrap();
    }

    #[test]
    fn at_the_ranges_bound_the_oldest_go_and_every_origin_keeps_its_newest() {
        // Origin 20's odd numbers only (its even ones never reach this node: residency,
        // interest), so each expired number is a range of its own; origin 21 has one.
        let dir = tempfile::tempdir().unwrap();
        let mut store = open_bounded(dir.path(), 4);
        put(&mut store, &event(21, "metrics", 1, 300, 1));
        for seq in (1..=19).step_by(2) {
            put(&mut store, &event(20, "metrics", seq, 300, 1));
        }
        put(&mut store, &event(20, "orders", 21, 0, 1));
        store.commit().unwrap();
        let done = store.expire(*NOW).unwrap();
        // Nothing waits: all eleven went, the ranges stayed within the bound.
        assert_eq!(
            (done.by_age, done.ranges_full, done.more),
            (11, false, false)
        );
        assert_eq!(done.ranges_dropped, 11 - 4);
        assert_eq!(store.stats().expired_ranges_dropped, 7);
        assert_eq!(store.expired_ranges(), 4);
        store.commit().unwrap();
        store.check_invariants().unwrap();
        let (o20, o21) = (origin(20), origin(21));
        let answers = |store: &SqliteStore| {
            (
                (1..=19)
                    .step_by(2)
                    .filter(|s| store.erased(&o20, *s))
                    .collect::<Vec<_>>(),
                store.erased(&o21, 1),
                store.delivered(&o20),
                store.delivered(&o21),
            )
        };
        // Origin 20's three newest expired numbers are still answered (Skips), its oldest
        // no longer; origin 21 keeps its only range; the delivery cursors are unchanged
        // (origin 20's is its held order's number).
        let want = (vec![15, 17, 19], true, Some(21), Some(1));
        assert_eq!(answers(&store), want);
        assert!(store.get(&o20, 21).unwrap().is_some());
        // A dropped number is gone for good all the same: not answered as erased (this
        // node no longer tells it from numbers it never held), but neither taken again
        // nor published again.
        assert!(store.gone(&o20, 1) && store.gone(&o20, 13) && !store.gone(&o20, 2 + 100));
        assert!(!store.gone(&o20, 21), "held");
        assert_eq!(
            store.insert(event(20, "metrics", 1, 300, 1)),
            Ok(Inserted::Erased)
        );
        assert!(store.get(&o20, 1).unwrap().is_none());
        // The rows say the same after a restart.
        drop(store);
        let mut store = open_bounded(dir.path(), 4);
        store.check_invariants().unwrap();
        assert_eq!(answers(&store), want);
        assert_eq!(store.expired_ranges(), 4);
        assert!(store.gone(&o20, 1) && store.gone(&o20, 13));
        // More of origin 20 expires: still within the bound, the newest kept.
        for seq in (23..=27).step_by(2) {
            put(&mut store, &event(20, "metrics", seq, 300, 1));
        }
        store.commit().unwrap();
        let done = store.expire(*NOW).unwrap();
        assert_eq!((done.by_age, done.ranges_full), (3, false));
        assert!(store.expired_ranges() <= 4);
        assert!(store.erased(&o20, 27) && store.erased(&o20, 25));
        assert_eq!(store.delivered(&o20), Some(27));
        store.commit().unwrap();
        store.check_invariants().unwrap();
    }

    /// An origin past the in-memory range limit (1,024) whose oldest ranges are dropped:
    /// memory may under-claim, never over-claim, and the rows stay consistent.
    #[test]
    fn dropping_ranges_of_an_origin_past_the_range_limit_keeps_the_store_consistent() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open_bounded(dir.path(), 300);
        for k in 0..1200u64 {
            let stream = if k < 600 { "metrics" } else { "orders" };
            let age = if k < 600 { 300 } else { 0 };
            put(&mut store, &event(22, stream, 2 * k + 1, age, 1));
        }
        store.commit().unwrap();
        loop {
            let done = store.expire(*NOW).unwrap();
            store.commit().unwrap();
            if !done.more {
                break;
            }
        }
        assert!(store.expired_ranges() <= 300);
        store.check_invariants().unwrap();
        let o = origin(22);
        assert!(
            store.get(&o, 2 * 600 + 1).unwrap().is_some(),
            "young orders stay"
        );
        assert!(store.get(&o, 1).unwrap().is_none() && store.gone(&o, 1));
    }

    /// A derivative that expires at its ingress node keeps its source's row for a while:
    /// an erase of the source in that time still retracts the copies other nodes keep a
    /// little longer; after it the row goes.
    #[test]
    fn an_expired_derivatives_source_row_outlives_it_for_a_while() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path(), 1000);
        let copy = event(30, "metrics", 1, 300, 1);
        put(&mut store, &copy);
        let source = crate::store::DerivedSource {
            stream: "profiles".into(),
            key: Some(b"alice".to_vec()),
            principal: "svc".into(),
            tenant: "acme".into(),
            hlc: 1,
        };
        store.record_derived(&origin(30), 1, &source).unwrap();
        store.commit().unwrap();
        assert_eq!(store.expire(*NOW).unwrap().by_age, 1);
        store.commit().unwrap();
        assert!(store.get(&origin(30), 1).unwrap().is_none());
        let alice = crate::erase::Target::Key {
            stream: "profiles".into(),
            key: b"alice".to_vec(),
        };
        // Within the grace: found (and taken).
        assert_eq!(store.derivatives_to_retract(&alice, u64::MAX).unwrap(), 1);
        store.commit().unwrap();
        // Another one, past the grace: gone.
        put(&mut store, &event(30, "metrics", 2, 300, 1));
        store.record_derived(&origin(30), 2, &source).unwrap();
        store.expire(*NOW).unwrap();
        store
            .expire(*NOW + super::super::derived::DERIVED_EXPIRED_KEEP_MS + 1)
            .unwrap();
        store.commit().unwrap();
        assert_eq!(store.derivatives_to_retract(&alice, u64::MAX).unwrap(), 0);
        store.commit().unwrap();
        store.check_invariants().unwrap();
    }
}
