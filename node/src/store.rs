//! Durable storage for the node: the mesh core's [`Store`] over SQLite, plus the node's
//! local delivery log, durable cursors, peer table, metadata and CloudEvents dedup.
//!
//! One [`SqliteStore`] (owned by the driver thread) is the only writer. It keeps a write
//! transaction open between commits: the first write of a batch runs `BEGIN IMMEDIATE`,
//! and the driver calls [`SqliteStore::commit`] after processing a batch of inputs (group
//! commit), then acknowledges publishers. With `journal_mode=WAL` and `synchronous=FULL`
//! a returned `commit` is on disk: `kill -9` after it loses nothing; a crash before it
//! loses the uncommitted tail, which nobody was told was durable.
//!
//! [`StoreReader`] is a separate read-only connection for HTTP readers on other threads.
//! WAL snapshots mean it sees only committed rows. Readers return raw envelope bytes.
//!
//! **Invariant:** the in-memory `len` and per-origin [`SeqRanges`] describe exactly the
//! rows the writer's connection sees (committed or in the open transaction). A failed
//! commit rolls back and reloads them from disk.
//!
//! The disk is not trusted blindly: [`Store::get`] decodes and verifies the envelope and
//! checks it is the event asked for; a corrupt row reads as absent (and is logged).

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use weft_fabric::mesh::ranges::RANGES_PER_ORIGIN_MAX;
use weft_fabric::mesh::{
    EventRef, Inserted, SeqRanges, Store, StoreError, answer_len, within_bytes,
};
use weft_fabric::{Event, EventId, OriginKey};

mod derived;
pub(crate) use derived::{DerivedSource, RETRACT_NUMBERS_MAX};
mod retention;
pub(crate) use retention::RetentionRules;
mod ahead;
pub(crate) use ahead::ReadAhead;

/// The schema version this build writes (`PRAGMA user_version`). A database with a newer
/// version is refused rather than misread.
pub(crate) const SCHEMA_VERSION: i64 = 1;

/// The database file inside the store directory.
pub(crate) const DB_FILE: &str = "weft.db";

/// How long a statement waits for a lock. The writer is alone and WAL readers never block
/// it, so waits come only from checkpoints or a second process opened by mistake; five
/// seconds rides out the first and fails the second clearly.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Writes in one transaction after which the driver commits at its next safe point
/// ([`SqliteStore::commit_if_over`], between two inputs of a step). Bounds the WAL growth
/// and the work a crash can roll back; committing early only makes data durable sooner,
/// which never breaks an acknowledgement. Never inside an input: a commit between a
/// delivery's log row and what it carries (an erase, a policy bundle, a table write) could
/// make the row durable without the rest, which a crash would then lose for good (the
/// carrier, logged, is never delivered again).
pub(crate) const TX_WRITES_MAX: usize = 65_536;

/// Bytes the WAL file is truncated to after a checkpoint (64 MiB): bounds disk use after a
/// burst without re-growing it on every batch.
const WAL_SIZE_LIMIT_BYTES: i64 = 64 * 1024 * 1024;

/// The writer's page cache (SQLite's default is 2 MiB). Every event adds entries at random
/// places of three indexes (event id, log id, CloudEvents id); with the default cache the
/// writer spilled dirty pages mid-transaction and re-read index pages from the OS at every
/// insert, a third of its time under load (perf, docs/performance.md).
const WRITER_CACHE_KIB: i64 = 64 * 1024;

/// WAL pages after which the writer checkpoints by itself (SQLite's default is 1000). The
/// [`Checkpointer`] thread copies the WAL into the database long before; this is the
/// backstop that also lets the WAL restart from its beginning under continuous writes.
const WAL_AUTOCHECKPOINT_PAGES: i64 = 8192;

/// How often the [`Checkpointer`] copies the WAL into the database.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(50);

/// Prepared statements kept per connection: every statement of this module fits.
const STATEMENT_CACHE_LEN: usize = 64;

/// Highest sequence number the store accepts: SQLite integers are signed 64-bit. An honest
/// origin never gets near it; an event beyond it is refused.
pub(crate) const SEQ_MAX: u64 = i64::MAX as u64;

/// Most entries one [`StoreReader::read_log`] call returns, whatever the caller asks: one
/// HTTP page.
pub(crate) const READ_LOG_LEN_MAX: usize = 1_000;

/// Envelope bytes after which [`StoreReader::read_log`] stops (8 MiB): eight maximal events
/// or thousands of ordinary ones. At least one entry is always returned.
pub(crate) const READ_LOG_BYTES_MAX: usize = 8 * 1024 * 1024;

/// Longest cursor name, metadata key or CloudEvents principal, in bytes.
pub(crate) const NAME_LEN_MAX: usize = 128;

/// Longest metadata value: metadata is small node state, not events; the largest value
/// is the signed policy bundle in force (kept so a restart resumes the newest epoch).
pub(crate) const META_VALUE_LEN_MAX: usize = weft_policy::limits::BUNDLE_LEN_MAX;

/// Most metadata keys: set by the node's own code, a handful in practice.
pub(crate) const META_KEYS_MAX: usize = 1_024;

/// Longest peer info JSON (4 KiB): a member record is a few hundred bytes.
pub(crate) const PEER_INFO_LEN_MAX: usize = 4 * 1024;

/// Longest CloudEvents `source` or `id` kept for dedup (512 bytes): the spec sets no limit,
/// real ids are UUIDs and sources short URIs. The parser refuses longer ones up front.
pub(crate) use weft_fabric::cloudevents::CE_FIELD_LEN_MAX;

/// The stream name limit of the envelope format, for cursors.
const STREAM_LEN_MAX: usize = weft_fabric::limits::STREAM_LEN_MAX;

/// Bounds of a [`SqliteStore`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoreLimits {
    /// Most events stored; beyond it `insert` returns [`StoreError::Full`].
    pub(crate) events_max: usize,
    /// Recently stored or read events kept decoded in memory for `get` (GRAFT answers and
    /// delivery ask for recent events). 0 disables the cache.
    pub(crate) event_cache_len: usize,
    /// Most durable cursors; beyond it `cursor_set` of a new name is refused.
    pub(crate) cursors_max: usize,
    /// Most durable cursors of one owner (the part of a cursor's name before its first
    /// `:`), so one principal cannot take the whole table.
    pub(crate) cursors_per_owner_max: usize,
    /// Most peers remembered; a new peer beyond it evicts the least recently seen.
    pub(crate) peers_max: usize,
    /// Most CloudEvents dedup entries; a new entry beyond it evicts the oldest, so the
    /// idempotency window is the last `ce_dedup_max` publishes.
    pub(crate) ce_dedup_max: usize,
    /// Most ranges of numbers expired by retention (`store/retention.rs`), in the table
    /// and in memory; beyond it the oldest are dropped (every origin keeps its newest).
    pub(crate) expired_ranges_max: usize,
    /// Most stored rows one pass of an erase examines ([`SqliteStore::erase_pass`]): an
    /// erase covering more is finished pass by pass between the driver's other inputs,
    /// its rows hidden from every read meanwhile.
    pub(crate) erase_pass_max: usize,
}

impl Default for StoreLimits {
    fn default() -> Self {
        Self {
            events_max: 10_000_000,
            event_cache_len: 4_096,
            cursors_max: 1_024,
            cursors_per_owner_max: 64,
            peers_max: 4_096,
            ce_dedup_max: 1_000_000,
            expired_ranges_max: 1_000_000,
            erase_pass_max: ERASE_PASS_MAX,
        }
    }
}

/// Stored rows one pass of an erase examines by default (`StoreLimits::erase_pass_max`):
/// at about 25 us a removed event (`measure_principal_erase`), some 6-15 ms of the
/// driver's time a pass with its commit. 1,000 held publishes behind passes of some 50 ms
/// (p50 48 ms while a 100,000-event principal was erased, against 8.5 ms at 250).
pub(crate) const ERASE_PASS_MAX: usize = 250;

/// Why a store could not be opened. Nothing was changed on disk unless stated.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OpenError {
    /// The directory could not be created.
    #[error("cannot create store directory {path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The background checkpoint thread could not be started.
    #[error("store {path}: cannot start the checkpoint thread: {source}")]
    Thread {
        /// The database file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// SQLite failed to open, configure or create the schema.
    #[error("cannot open store {path}: {source}")]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// The SQLite error.
        source: rusqlite::Error,
    },
    /// SQLite did not grant WAL journaling (a file system without shared memory?).
    #[error("store {path}: journal_mode is {mode}, WAL is required")]
    NotWal {
        /// The database file.
        path: PathBuf,
        /// The mode SQLite reported.
        mode: String,
    },
    /// The database was written by a newer build; it is left untouched.
    #[error(
        "store {path} has schema version {found}, this build reads up to {supported}; \
         upgrade weft or point it at another directory"
    )]
    NewerSchema {
        /// The database file.
        path: PathBuf,
        /// Version found.
        found: i64,
        /// Version this build supports.
        supported: i64,
    },
    /// A reader found no schema: the writer has not created the store yet.
    #[error("store {path} has no schema yet (open it with the writer first)")]
    NotInitialized {
        /// The database file.
        path: PathBuf,
    },
    /// Loading the per-origin state failed (a corrupt row or an I/O error).
    #[error("cannot load store {path}: {source}")]
    Load {
        /// The database file.
        path: PathBuf,
        /// What failed.
        source: StoreError,
    },
}

/// Why a record from a caller (cursor, metadata, peer, dedup entry) was refused. Nothing
/// changed unless the variant is [`RecordError::Store`] from a failed write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RecordError {
    /// A field is longer than its limit. Nothing changed.
    #[error("{field} is {len} bytes, over the limit {max}")]
    TooLong {
        /// The field.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The table is at its row limit and does not evict. Nothing changed.
    #[error("{table} holds {len} rows, at the limit {max}")]
    TableFull {
        /// The table.
        table: &'static str,
        /// Rows held.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A number is beyond what the store represents. Nothing changed.
    #[error("{field} is {value}, over the limit {max}")]
    OutOfRange {
        /// The field.
        field: &'static str,
        /// The value.
        value: u64,
        /// The limit.
        max: u64,
    },
    /// The storage failed; see [`StoreError::Backend`].
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Counters for metrics. Monotonic except the `_last` field.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct StoreStats {
    /// Events newly stored.
    pub(crate) inserts: u64,
    /// Inserts of an event already stored.
    pub(crate) duplicates: u64,
    /// Inserts refused as equivocation.
    pub(crate) equivocations: u64,
    /// Inserts refused at `events_max`.
    pub(crate) refused_full: u64,
    /// Successful commits (including automatic ones at [`TX_WRITES_MAX`]).
    pub(crate) commits: u64,
    /// Commits the store made by itself at [`TX_WRITES_MAX`].
    pub(crate) commits_auto: u64,
    /// Failed commits (their writes were rolled back).
    pub(crate) commit_failures: u64,
    /// Writes made durable by commits.
    pub(crate) writes_committed: u64,
    /// Duration of the last commit, in microseconds.
    pub(crate) commit_us_last: u64,
    /// Total time spent committing, in microseconds.
    pub(crate) commit_us_total: u64,
    /// `get` answered from the event cache.
    pub(crate) cache_hits: u64,
    /// Rows that failed to decode or verify (corruption).
    pub(crate) corrupt_rows: u64,
    /// Queries that failed outright (`next_stored`, `get`: a failing disk), each answered
    /// to the core as an error.
    pub(crate) query_errors: u64,
    /// Of those, reads of one event (`get`): counted apart so that their first failure is
    /// logged whatever `next_stored` logged before.
    pub(crate) read_errors: u64,
    /// Stored events removed by erase rules.
    pub(crate) erased: u64,
    /// Inserts refused as covered by an erase rule (or erased before).
    pub(crate) erased_refused: u64,
    /// Events deleted by retention (stream rules' `retention_s`, `retention_bytes`).
    pub(crate) expired: u64,
    /// Ranges of expired numbers dropped at `expired_ranges_max` (oldest first).
    pub(crate) expired_ranges_dropped: u64,
    /// Anti-entropy answers whose events a reader thread read ahead (`store/ahead.rs`).
    pub(crate) read_ahead: u64,
    /// Read-aheads dropped unused: stored events were removed while they were read.
    pub(crate) read_ahead_dropped: u64,
    /// Events an answer took from a read-ahead instead of the rows.
    pub(crate) read_ahead_hits: u64,
}

/// Verifies `events` like [`weft_fabric::verify_batch`] (same results, same order), a long
/// run on several threads: signature checks are most of a run read's time (about 20 us an
/// event in batches, docs/node.md "Durability"), they are independent, and the driver
/// thread waits for them. A run of under two batches stays on the calling thread.
fn verify_all(events: Vec<weft_fabric::UnverifiedEvent>) -> Vec<weft_fabric::sign::BatchResult> {
    let len = events.len();
    match crate::parts::in_parts(
        events,
        weft_fabric::limits::VERIFY_BATCH_LEN_MAX,
        |_, part| weft_fabric::verify_batch(part),
    ) {
        Some(parts) => parts.into_iter().flatten().collect(),
        None => {
            // Not expected (verification does not panic): the run's events read as not
            // stored (the caller lines results up with rows by position).
            tracing::error!(events = len, "a verification thread panicked");
            Vec::new()
        }
    }
}

/// Whether `event`, read from a row of `events`, is the event the row names (its origin,
/// number and id): an envelope that verifies may still be another event's bytes.
fn names(event: &Event, origin: &OriginKey, seq: u64, id: &[u8]) -> bool {
    event.origin() == *origin && event.seq() == seq && event.id().0[..] == *id
}

/// The most numbers a run read falls back to reading one by one when its query fails: more
/// than any answer's batch (8 x 512).
const RUN_FALLBACK_LEN_MAX: u64 = 1 << 16;

/// An `events` row as a run read gives it: sequence number, id, encoded envelope.
type StoredRow = (i64, Vec<u8>, Vec<u8>);

/// The events of one run read from the rows ([`read_run`]), with what the read counted.
#[derive(Debug, Default)]
struct RunRead {
    /// The events, ascending.
    events: Vec<Arc<Event>>,
    /// Rows left out: unreadable, undecodable, failing verification or not the event they
    /// name.
    corrupt_rows: u64,
    /// Events taken from the cache instead of their rows.
    cache_hits: u64,
    /// When the byte bound stopped the read before the run's end: the number after the
    /// last row taken (rows from it on were not read). `None`: read to the end.
    stopped: Option<u64>,
    /// The numbers of rows left out that could be decoded far enough to know them (for a
    /// read-ahead: the writer's cache may still hold their events).
    left_out: Vec<u64>,
}

/// The stored events of `origin` numbered `first..=last`, ascending, up to the first at
/// which their [`answer_len`]s reach `bytes_max` (as [`Store::get_run`] asks): one query
/// for the run, its rows taken until then, and the signatures of the rows `cache` (the
/// writer's) does not hold checked as a batch ([`verify_all`]). A row that cannot be read,
/// decoded or verified, or is not the event it names, is left out, logged and counted, as
/// [`Store::get`] does; an error is the query's own. Shared by the writer
/// ([`Store::get_run`]) and the driver's reader threads (`store/ahead.rs`), which see only
/// committed rows.
fn read_run(
    conn: &Connection,
    origin: &OriginKey,
    (first, last): (u64, u64),
    bytes_max: usize,
    cache: Option<&RefCell<EventCache>>,
) -> rusqlite::Result<RunRead> {
    // Rows are taken up to the bound before their signatures are checked: a row left out
    // then took a place under the bound that no event fills, so the read goes on from
    // where it stopped (again only when rows were left out; each pass takes a row or more).
    let mut read = RunRead::default();
    let mut kept = 0usize;
    let mut from = first;
    loop {
        let pass = read_pass(conn, origin, (from, last), bytes_max - kept, cache)?;
        kept += pass
            .events
            .iter()
            .map(|e| answer_len(e.signed_bytes().len()))
            .sum::<usize>();
        read.events.extend(pass.events);
        read.corrupt_rows += pass.corrupt_rows;
        read.cache_hits += pass.cache_hits;
        read.stopped = pass.stopped;
        read.left_out.extend(pass.left_out);
        match pass.stopped {
            Some(next) if kept < bytes_max => from = next,
            _ => return Ok(read),
        }
    }
}

/// One pass of [`read_run`]: rows from `first` until their decoded sizes reach `bytes_max`
/// or the run ends, then verified.
fn read_pass(
    conn: &Connection,
    origin: &OriginKey,
    (first, last): (u64, u64),
    bytes_max: usize,
    cache: Option<&RefCell<EventCache>>,
) -> rusqlite::Result<RunRead> {
    let mut read = RunRead::default();
    let (Ok(lo), Ok(hi)) = (i64::try_from(first), i64::try_from(last.min(SEQ_MAX))) else {
        return Ok(read);
    };
    let mut stmt = conn.prepare_cached(
        "SELECT seq, id, envelope FROM events \
         WHERE origin = ?1 AND seq BETWEEN ?2 AND ?3 ORDER BY seq",
    )?;
    let rows = stmt.query_map(params![&origin.0[..], lo, hi], |r| {
        Ok::<StoredRow, _>((r.get(0)?, r.get(1)?, r.get(2)?))
    })?;
    let mut out: Vec<Option<Arc<Event>>> = Vec::new();
    // Decoded rows to verify: their slot in `out`, the number and id the row names.
    let mut named: Vec<(usize, u64, Vec<u8>)> = Vec::new();
    let mut unverified = Vec::new();
    let mut bytes = 0usize;
    // The number of the last row taken.
    let mut taken = None;
    {
        let mut cache = cache.map(RefCell::borrow_mut);
        // Row by row: a row that cannot be read is one number left out and counted, as
        // `get` has it, not the whole run.
        for row in rows {
            if bytes >= bytes_max {
                // `bytes` counts taken rows only, so a row was taken: its number is below
                // the next row's, at most SEQ_MAX.
                read.stopped = taken.map(|seq: u64| seq + 1);
                break;
            }
            let (seq, id, envelope) = match row {
                Ok(row) => row,
                Err(e) => {
                    read.corrupt_rows += 1;
                    tracing::error!(%origin, first, last, error = %e, "stored event unreadable");
                    continue;
                }
            };
            let seq = seq as u64; // stored from a u64 (`SEQ_MAX`), read back the same
            taken = Some(seq);
            if let Some(event) = cache.as_mut().and_then(|c| c.get(&(*origin, seq))) {
                read.cache_hits += 1;
                bytes += answer_len(event.signed_bytes().len());
                out.push(Some(event));
                continue;
            }
            match weft_fabric::decode(&envelope) {
                Ok(u) => {
                    bytes += answer_len(u.signed_bytes().len());
                    named.push((out.len(), seq, id));
                    unverified.push(u);
                    out.push(None);
                }
                Err(e) => {
                    read.corrupt_rows += 1;
                    read.left_out.push(seq);
                    tracing::error!(%origin, seq, error = %e, "stored event unreadable: corrupt envelope");
                }
            }
        }
    }
    for ((slot, seq, id), checked) in named.into_iter().zip(verify_all(unverified)) {
        match checked {
            Ok(event) if names(&event, origin, seq, &id) => {
                out[slot] = Some(Arc::new(event));
            }
            Ok(_) => {
                read.corrupt_rows += 1;
                read.left_out.push(seq);
                tracing::error!(%origin, seq, "stored event unreadable: envelope is not the event its row names");
            }
            Err((_, e)) => {
                read.corrupt_rows += 1;
                read.left_out.push(seq);
                tracing::error!(%origin, seq, error = %e, "stored event unreadable: envelope fails verification");
            }
        }
    }
    read.events = out.into_iter().flatten().collect();
    Ok(read)
}

/// One entry of the local delivery log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LogEntry {
    /// Position in this node's log (a cursor value; ascending, never reused).
    pub(crate) pos: u64,
    /// The encoded envelope (decode and verify before trusting it).
    pub(crate) envelope: Vec<u8>,
}

/// A bounded cache of recent events in two generations: lookups hit the young one or
/// promote from the old one; when the young one is full the old one is dropped. Holds at
/// most `2 * half` events and approximates LRU at O(1) per operation.
#[derive(Debug)]
struct EventCache {
    young: HashMap<(OriginKey, u64), Arc<Event>>,
    old: HashMap<(OriginKey, u64), Arc<Event>>,
    half: usize,
    /// Calls of [`EventCache::remove`] and [`EventCache::clear`]: every removal of stored
    /// events passes here, so a read made off the writer's thread (`store/ahead.rs`) is
    /// still good while this has not moved.
    removals: u64,
}

impl EventCache {
    fn new(len_max: usize) -> Self {
        Self {
            young: HashMap::new(),
            old: HashMap::new(),
            half: len_max / 2,
            removals: 0,
        }
    }

    fn get(&mut self, key: &(OriginKey, u64)) -> Option<Arc<Event>> {
        if let Some(e) = self.young.get(key) {
            return Some(e.clone());
        }
        let e = self.old.remove(key)?;
        self.put(*key, e.clone());
        Some(e)
    }

    fn put(&mut self, key: (OriginKey, u64), event: Arc<Event>) {
        if self.half == 0 {
            return;
        }
        if self.young.len() >= self.half {
            self.old = std::mem::take(&mut self.young);
        }
        self.young.insert(key, event);
        debug_assert!(self.young.len() + self.old.len() <= 2 * self.half);
    }

    fn clear(&mut self) {
        self.young.clear();
        self.old.clear();
        self.removals += 1;
    }

    fn remove(&mut self, key: &(OriginKey, u64)) {
        self.young.remove(key);
        self.old.remove(key);
        self.removals += 1;
    }
}

/// What the writer keeps in memory about the rows, loaded at open and after a failed
/// commit.
#[derive(Debug, Default)]
struct Loaded {
    len: usize,
    ranges: BTreeMap<OriginKey, SeqRanges>,
    cursors_len: usize,
    peers_len: usize,
    meta_len: usize,
    ce_dedup_len: usize,
    /// Rows in `erased`.
    erased_len: usize,
    /// Expired sequence numbers per origin, as ranges `lo -> hi` (the `expired` rows;
    /// `store/retention.rs`). A range may cover numbers still held: never one this node
    /// did not hold.
    expired: HashMap<OriginKey, BTreeMap<u64, u64>>,
    /// Rows in `expired`.
    expired_len: usize,
    /// Per origin, the highest number of the expired ranges dropped at the bound
    /// (`expired_floor`; `store/retention.rs`): numbers up to it not held are gone.
    expired_floor: HashMap<OriginKey, u64>,
    /// The `retracted` rows (`store/derived.rs`): derivatives retracted before they
    /// arrived here. Bounded by `derived::RETRACTED_MAX`.
    retracted: HashSet<(OriginKey, u64)>,
    /// Origins whose `ranges` may under-claim (they reached [`RANGES_PER_ORIGIN_MAX`] and
    /// may have dropped a range). For every other origin the ranges are exact, so a
    /// sequence number outside them is not stored and needs no lookup ([`Store::holds`]).
    lossy: BTreeSet<OriginKey>,
}

impl Loaded {
    /// Records `seq` of `origin` as stored or erased.
    fn note(&mut self, origin: OriginKey, seq: u64) {
        let ranges = self.ranges.entry(origin).or_default();
        ranges.insert(seq);
        if ranges.range_count() >= RANGES_PER_ORIGIN_MAX {
            self.lossy.insert(origin);
        }
    }
}

/// Erase rules in memory (`erase.rs`): each target with the packed HLC it covers up to.
/// Bounded by the API (`erase::RULES_MAX`).
type EraseRules = BTreeMap<crate::erase::Target, u64>;

/// The condition, on a row of `events` named `$e`, that no erase still being removed pass
/// by pass (`erase_pending`) covers it: the SQL of [`SqliteStore::erase_covers`] over the
/// pending rules, the tenant read from the envelope (`weft_tenant`, registered on every
/// connection) only for a row of a principal such a rule names. A read of stored events
/// that leaves it out would show an erased event until the pass that removes it. The
/// principals and keys of pending erases are listed once a statement; a row naming none
/// costs a probe of that list (a log page of 1,000 events 15 % more with none pending, 38 %
/// with one: `measure_log_pages_with_pending_erases_left_out`).
macro_rules! not_erasing {
    ($e:literal) => {
        concat!(
            "NOT ((",
            $e,
            ".principal IN (SELECT a FROM erase_pending WHERE kind = 'principal') \
             OR (",
            $e,
            ".stream, ",
            $e,
            ".key) IN \
             (SELECT a, b FROM erase_pending WHERE kind = 'key')) \
             AND NOT (",
            $e,
            ".stream = '_weft' OR ",
            $e,
            ".stream GLOB '_weft.*') \
             AND EXISTS (SELECT 1 FROM erase_pending p WHERE p.hlc_max >= ",
            $e,
            ".hlc \
             AND ((p.kind = 'key' AND p.a = ",
            $e,
            ".stream AND p.b = ",
            $e,
            ".key) \
             OR (p.kind = 'principal' AND p.a = ",
            $e,
            ".principal \
             AND (p.b = X'' OR p.b = weft_tenant(",
            $e,
            ".envelope))))))"
        )
    };
}
pub(crate) use not_erasing;

/// A page of a stream's log after a position, ascending ([`StoreReader::read_log`]).
const READ_AFTER_SQL: &str = concat!(
    "SELECT log.pos, events.envelope FROM log JOIN events ON events.id = log.id \
     WHERE log.stream = ?1 AND log.pos > ?2 AND ",
    not_erasing!("events"),
    " ORDER BY log.pos LIMIT ?3"
);

/// Positions and streams of the whole log after a position, ascending: a read over a
/// pattern ([`StoreReader::read_log_matching`]) filters them before fetching envelopes.
const LOG_AFTER_SQL: &str = "SELECT pos, stream FROM log WHERE pos > ?1 ORDER BY pos LIMIT ?2";

/// The same before a position, newest first.
const LOG_BEFORE_SQL: &str =
    "SELECT pos, stream FROM log WHERE pos < ?1 ORDER BY pos DESC LIMIT ?2";

/// One log entry's envelope by position (none while an erase still being removed covers
/// it).
const LOG_AT_SQL: &str = concat!(
    "SELECT events.envelope FROM log JOIN events ON events.id = log.id \
     WHERE log.pos = ?1 AND ",
    not_erasing!("events")
);

/// What a read over a pattern scanned: the entries of streams it matches, and the last
/// position scanned (a cursor moves past the other streams' entries too, so a reader
/// never scans them again).
#[derive(Debug, Default)]
pub(crate) struct MatchedPage {
    pub(crate) entries: Vec<LogEntry>,
    /// The last position scanned (the bound given when nothing was).
    pub(crate) scanned_to: u64,
    /// Whether the scan reached the end of the log (ascending) or its start (descending).
    pub(crate) exhausted: bool,
    /// Log entries scanned, of every stream (at least `entries.len()`).
    pub(crate) scanned: usize,
}

/// A page of a stream's log before a position, newest first
/// ([`StoreReader::read_log_before`]).
const READ_BEFORE_SQL: &str = concat!(
    "SELECT log.pos, events.envelope FROM log JOIN events ON events.id = log.id \
     WHERE log.stream = ?1 AND log.pos < ?2 AND ",
    not_erasing!("events"),
    " ORDER BY log.pos DESC LIMIT ?3"
);

/// An erase whose covered rows are still being removed ([`SqliteStore::erase_pass`]; a
/// row of `erase_pending`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PendingErase {
    pub(crate) target: crate::erase::Target,
    pub(crate) hlc_max: u64,
    /// The last row examined, as `(hlc, rowid)` (a key rule's rows are read by rowid
    /// alone: its `hlc` is 0); the next pass starts after it.
    after: (i64, i64),
    /// Events removed so far.
    pub(crate) removed: u64,
}

/// What one call of [`SqliteStore::erase`] or [`SqliteStore::erase_pass`] removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ErasedPass {
    pub(crate) target: crate::erase::Target,
    pub(crate) events: Vec<ErasedEvent>,
    /// Events the erase removed in all its passes so far, these included.
    pub(crate) removed: u64,
    /// Whether the erase covers rows not yet examined: more passes follow.
    pub(crate) more: bool,
}

/// What [`SqliteStore::erase_some`] removed, the last row it examined, and whether it
/// stopped at its bound.
type SomeErased = (Vec<ErasedEvent>, (i64, i64), bool);

/// One event an erase removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ErasedEvent {
    pub(crate) id: weft_fabric::EventId,
    /// Its producer and number (what it wrote to a table is recomputed:
    /// `tables::rebuild_keys`).
    pub(crate) origin: OriginKey,
    pub(crate) seq: u64,
    pub(crate) stream: String,
    pub(crate) key: Option<Vec<u8>>,
}

/// Skips taken on another node's word that wait for confirmation (`Store::waiting_skips`;
/// idempotent, run at every open). Bounded by the core (`UNCONFIRMED_LEN_MAX` rows).
const WAITING_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS waiting_skips (
    origin BLOB NOT NULL,
    seq INTEGER NOT NULL,
    sender BLOB NOT NULL,
    PRIMARY KEY (origin, seq)
) WITHOUT ROWID;
";

/// Numbers taken as lost still open to a late copy (`Store::lost_open`; idempotent, run
/// at every open): one row per range. Bounded by the core (`LOST_ORIGINS_MAX` origins, a
/// range limit per origin).
const LOST_OPEN_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS lost_open (
    origin BLOB NOT NULL,
    lo INTEGER NOT NULL,
    hi INTEGER NOT NULL,
    PRIMARY KEY (origin, lo)
) WITHOUT ROWID;
";

/// The `meta` key of the time the log got its arrival column (`at_ms`): rows logged before
/// are taken as arrived then.
const LOG_AT_FROM_KEY: &str = "log_at_from_ms";

/// The `meta` key of [`SqliteStore::generation`].
const GENERATION_KEY: &str = "generation";

/// Erase rules and erased events (idempotent; run at every open).
const ERASE_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS erase_rules (
    kind TEXT NOT NULL,
    a TEXT NOT NULL,
    b BLOB NOT NULL,
    hlc_max INTEGER NOT NULL,
    PRIMARY KEY (kind, a, b)
) WITHOUT ROWID;
-- Erases whose covered rows are still being removed, pass by pass (`erase_pass`): the
-- rule, the last row a pass examined (by the order the rule's rows are read in) and how
-- many events were removed so far. Every read of stored events leaves the rows such an
-- erase covers out (`not_erasing!`).
CREATE TABLE IF NOT EXISTS erase_pending (
    kind TEXT NOT NULL,
    a TEXT NOT NULL,
    b BLOB NOT NULL,
    hlc_max INTEGER NOT NULL,
    after_hlc INTEGER NOT NULL,
    after_row INTEGER NOT NULL,
    removed INTEGER NOT NULL,
    PRIMARY KEY (kind, a, b)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS erased (
    origin BLOB NOT NULL,
    seq INTEGER NOT NULL,
    id BLOB NOT NULL,
    PRIMARY KEY (origin, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS expired (
    origin BLOB NOT NULL,
    lo INTEGER NOT NULL,
    hi INTEGER NOT NULL,
    PRIMARY KEY (origin, lo)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS expired_floor (
    origin BLOB PRIMARY KEY,
    hi INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS derived_from (
    origin BLOB NOT NULL,
    seq INTEGER NOT NULL,
    stream TEXT NOT NULL,
    key BLOB,
    principal TEXT NOT NULL,
    tenant TEXT NOT NULL,
    hlc INTEGER NOT NULL,
    gone_ms INTEGER,
    PRIMARY KEY (origin, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS derived_from_key ON derived_from (stream, key);
CREATE INDEX IF NOT EXISTS derived_from_principal ON derived_from (principal, hlc);
CREATE TABLE IF NOT EXISTS retract_pending (seq INTEGER PRIMARY KEY);
CREATE TABLE IF NOT EXISTS retracted (
    origin BLOB NOT NULL,
    seq INTEGER NOT NULL,
    at_ms INTEGER NOT NULL,
    PRIMARY KEY (origin, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS retracted_at ON retracted (at_ms);
-- An erased event's CloudEvents dedup row is found by its event id (`erase_row`): without
-- this, each erased event scanned the whole table (up to `ce_dedup_max` rows).
CREATE INDEX IF NOT EXISTS ce_dedup_event ON ce_dedup (event_id);
";

/// The node's event store over SQLite: the mesh core's [`Store`] plus the node's tables.
/// `Send`, not `Sync`: one thread owns it.
#[derive(Debug)]
pub(crate) struct SqliteStore {
    conn: Connection,
    /// Copies the WAL into the database off the writer's thread; stops with the store.
    _checkpointer: Checkpointer,
    limits: StoreLimits,
    state: Loaded,
    /// Whether `BEGIN IMMEDIATE` ran and `COMMIT` has not.
    in_tx: bool,
    /// Writes in the open transaction.
    tx_writes: usize,
    cache: RefCell<EventCache>,
    stats: RefCell<StoreStats>,
    /// Erase rules in force (loaded at open; `erase_rules` rows).
    erase_rules: EraseRules,
    /// Erases still being removed pass by pass (`erase_pending` rows), in the order their
    /// passes run: made pending in this process last, loaded at open by rule.
    erase_pending: Vec<PendingErase>,
    /// Retention rules in force (`store/retention.rs`).
    retention: retention::RetentionRules,
    /// The last stream an age pass looked at (passes go round robin).
    retention_resume: String,
    /// When the log got its arrival column (`LOG_AT_FROM_KEY`; 0 when unknown).
    log_at_from_ms: u64,
    /// The read-ahead of the request being answered, if any (`store/ahead.rs`).
    ahead: ReadAhead,
}

const SCHEMA: &str = "
CREATE TABLE events (
    id BLOB PRIMARY KEY,
    origin BLOB NOT NULL,
    seq INTEGER NOT NULL,
    stream TEXT NOT NULL,
    key BLOB,
    hlc INTEGER NOT NULL,
    envelope BLOB NOT NULL,
    UNIQUE (origin, seq)
);
CREATE TABLE log (
    pos INTEGER PRIMARY KEY AUTOINCREMENT,
    id BLOB NOT NULL,
    stream TEXT NOT NULL
);
CREATE INDEX log_stream_pos ON log (stream, pos);
CREATE UNIQUE INDEX log_id ON log (id);
CREATE TABLE cursors (name TEXT PRIMARY KEY, stream TEXT NOT NULL, pos INTEGER NOT NULL);
CREATE TABLE peers (key BLOB PRIMARY KEY, info TEXT NOT NULL, last_seen_ms INTEGER NOT NULL);
CREATE TABLE meta (k TEXT PRIMARY KEY, v BLOB NOT NULL);
CREATE TABLE ce_dedup (
    principal TEXT NOT NULL,
    source TEXT NOT NULL,
    ce_id TEXT NOT NULL,
    event_id BLOB NOT NULL,
    PRIMARY KEY (principal, source, ce_id)
);
";

/// The highest sequence number of `origin` in `events` or `erased` (0 if none): for the
/// writer ([`SqliteStore::max_seq`]) and the readers ([`StoreReader::max_seq`]) alike.
fn max_seq_in(conn: &Connection, origin: &OriginKey) -> Result<u64, StoreError> {
    // Each MAX alone is answered from the (origin, seq) index's end, not a scan of the
    // origin's rows (this runs at every agent connect).
    let max: Option<i64> = conn
        .prepare_cached(
            "SELECT MAX(m) FROM (SELECT MAX(seq) AS m FROM events WHERE origin = ?1 \
             UNION ALL SELECT MAX(seq) AS m FROM erased WHERE origin = ?1 \
             UNION ALL SELECT (SELECT hi FROM expired WHERE origin = ?1 ORDER BY lo DESC LIMIT 1) AS m)",
        )
        .and_then(|mut s| s.query_row([&origin.0[..]], |r| r.get(0)))
        .map_err(backend)?;
    max.map_or(Ok(0), |m| u64::try_from(m).map_err(|_| corrupt("seq")))
}

/// The highest position in the delivery log (0 when empty), as `conn` sees it.
fn log_max_pos_in(conn: &Connection) -> Result<u64, StoreError> {
    conn.query_row("SELECT COALESCE(MAX(pos), 0) FROM log", [], |r| {
        r.get::<_, i64>(0)
    })
    .map(|p| p.max(0) as u64)
    .map_err(backend)
}

/// Whether the `errors`-th failure of a query the core asks again at every poll while the
/// disk fails goes to the log: the first, then one in a thousand (the metric counts them
/// all).
fn logged_failure(errors: u64) -> bool {
    errors == 1 || errors.is_multiple_of(1000)
}

fn backend(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Backend(format!("corrupt row: {what}"))
}

fn key32(bytes: &[u8], what: &str) -> Result<[u8; 32], StoreError> {
    bytes.try_into().map_err(|_| corrupt(what))
}

fn pos_from_sql(pos: i64) -> Result<u64, StoreError> {
    u64::try_from(pos).map_err(|_| corrupt("negative log position"))
}

fn check_len(field: &'static str, value: &[u8], max: usize) -> Result<(), RecordError> {
    if value.len() > max {
        return Err(RecordError::TooLong {
            field,
            len: value.len(),
            max,
        });
    }
    Ok(())
}

fn db_path(dir: &Path) -> PathBuf {
    dir.join(DB_FILE)
}

/// Creates `dir` (and its parents) readable by this user only: the store holds events in
/// clear, and under a umask of 022 it was world-readable (a user review, 2026-12-06). A
/// directory that exists keeps its mode.
fn create_private(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// Creates the database file mode 0600 before SQLite opens it (its WAL and shared-memory
/// files take the database's mode). One that exists with a mode others may read (a backup
/// restored with `cp`, which takes the umask) is set back to 0600, with its `-wal` and
/// `-shm` files, and a warning says so; one this user cannot change keeps its mode, with a
/// warning.
pub(crate) fn private_db_file(path: &Path) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt as _;
                let mode = std::fs::metadata(path)?.permissions().mode();
                if mode & 0o077 != 0 {
                    let private = std::fs::Permissions::from_mode(0o600);
                    let mut files = vec![path.to_path_buf()];
                    for suffix in ["-wal", "-shm"] {
                        let mut p = path.as_os_str().to_owned();
                        p.push(suffix);
                        files.push(PathBuf::from(p));
                    }
                    let tightened = files.iter().all(|f| {
                        !f.exists() || std::fs::set_permissions(f, private.clone()).is_ok()
                    });
                    if tightened {
                        tracing::warn!(
                            path = %path.display(),
                            was = format!("{:o}", mode & 0o777),
                            "a database of the node could be read by other users of this machine (a backup restored without its mode?): set back to 600 with its -wal and -shm files"
                        );
                    } else {
                        tracing::warn!(
                            path = %path.display(),
                            mode = format!("{:o}", mode & 0o777),
                            "a database of the node may be read by other users of this machine (the store holds events in clear, the audit log who did what), and this user cannot change its mode: chmod 600 it and its -wal and -shm files"
                        );
                    }
                }
            }
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Opens a connection with the settings both handles share.
fn connect(path: &Path, flags: OpenFlags) -> Result<Connection, OpenError> {
    let sqlite = |source| OpenError::Sqlite {
        path: path.to_owned(),
        source,
    };
    let conn = Connection::open_with_flags(path, flags).map_err(sqlite)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(sqlite)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE_LEN);
    register_tenant_fn(&conn).map_err(sqlite)?;
    Ok(conn)
}

/// Registers `weft_tenant(envelope)`: the tenant an envelope's security context names, as
/// bytes (NULL for one that does not decode), for [`not_erasing!`]'s principal rules with
/// a tenant. Stored events were verified on arrival, so the claimed context is the signed
/// one.
fn register_tenant_fn(conn: &Connection) -> rusqlite::Result<()> {
    use rusqlite::functions::FunctionFlags;
    conn.create_scalar_function(
        "weft_tenant",
        1,
        FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
        |ctx| {
            let envelope = ctx.get_raw(0).as_blob_or_null()?;
            Ok(envelope
                .and_then(|b| weft_fabric::decode(b).ok())
                .map(|u| u.claimed_data().security().tenant.as_bytes().to_vec()))
        },
    )
}

/// A thread with a connection of its own that runs a PASSIVE checkpoint every
/// [`CHECKPOINT_INTERVAL`]: it copies committed WAL frames into the database file and
/// fsyncs it, never waiting for the writer nor making it wait. Done inside `COMMIT` by
/// SQLite's automatic checkpoint, that copy cost the driver a quarter of its time under
/// load (perf, docs/performance.md); here it runs on the other core. A failed checkpoint
/// is only logged: the writer's own automatic checkpoint
/// ([`WAL_AUTOCHECKPOINT_PAGES`]) still bounds the WAL.
#[derive(Debug)]
struct Checkpointer {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checkpointer {
    fn start(path: &Path) -> Result<Self, OpenError> {
        let conn = connect(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("weft-checkpoint".into())
            .spawn(move || {
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(CHECKPOINT_INTERVAL)
                {
                    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                    {
                        tracing::debug!(error = %e, "background checkpoint failed");
                    }
                }
            })
            .map_err(|source| OpenError::Thread {
                path: path.to_owned(),
                source,
            })?;
        Ok(Self {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Refuses a schema newer than [`SCHEMA_VERSION`]; returns the version found.
fn schema_version(conn: &Connection, path: &Path) -> Result<i64, OpenError> {
    let found: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(|source| OpenError::Sqlite {
            path: path.to_owned(),
            source,
        })?;
    if found > SCHEMA_VERSION {
        return Err(OpenError::NewerSchema {
            path: path.to_owned(),
            found,
            supported: SCHEMA_VERSION,
        });
    }
    Ok(found)
}

/// The rows a principal erase reads (`SqliteStore::erase`), a pass at a time: the
/// principal's, by the `events_principal` index in its order (stamp, then rowid), after
/// the last row the previous pass examined, up to the rule's stamp, never a system
/// stream's (first token `_weft`, as `StreamName::is_system`: GLOB, which is
/// case-sensitive as stream names are; LIKE is not, and skipped `_WEFT.x`).
const PRINCIPAL_ROWS_SQL: &str = "SELECT id, origin, seq, stream, key, envelope, hlc, rowid \
     FROM events WHERE principal = ?1 AND hlc <= ?2 \
     AND NOT (stream = '_weft' OR stream GLOB '_weft.*') AND (hlc, rowid) > (?3, ?4) \
     ORDER BY hlc, rowid LIMIT ?5";

/// The rows a key erase reads, a pass at a time: the key's, by the `events_stream_key`
/// index in its order (rowid), after the last row the previous pass examined.
const KEY_ROWS_SQL: &str = "SELECT id, origin, seq, stream, key, envelope, hlc, rowid \
     FROM events WHERE stream = ?1 AND key = ?2 AND hlc <= ?3 AND rowid > ?4 \
     ORDER BY rowid LIMIT ?5";

/// An erased event's CloudEvents dedup row (`erase_row`), by the `ce_dedup_event` index.
const DEDUP_OF_EVENT_SQL: &str = "DELETE FROM ce_dedup WHERE event_id = ?1";

/// Rows backfilled per transaction by [`upgrade_principal_column`].
const BACKFILL_CHUNK: usize = 4096;

/// Gives `events` its `principal` column (the signed security context's principal, added
/// after version 1) and the index a principal erase reads (`SqliteStore::erase`): without
/// it that erase decoded every stored envelope inside the driver's step, seconds per
/// million events with the mesh waiting. Rows stored before the column are backfilled
/// here, once, in chunks (each its own transaction: an interrupted backfill goes on at the
/// next open); a row whose envelope does not decode fails the open, as a corrupt store.
/// Returns the number of rows backfilled.
fn upgrade_principal_column(conn: &Connection) -> Result<usize, StoreError> {
    let has_column: bool = conn
        .prepare("SELECT 1 FROM pragma_table_info('events') WHERE name = 'principal'")
        .and_then(|mut s| s.exists([]))
        .map_err(backend)?;
    if !has_column {
        conn.execute_batch("ALTER TABLE events ADD COLUMN principal TEXT")
            .map_err(backend)?;
    }
    conn.execute_batch("CREATE INDEX IF NOT EXISTS events_principal ON events (principal, hlc)")
        .map_err(backend)?;
    let mut done = 0;
    loop {
        let rows: Vec<(Vec<u8>, Vec<u8>)> = conn
            .prepare_cached("SELECT id, envelope FROM events WHERE principal IS NULL LIMIT ?1")
            .and_then(|mut s| {
                s.query_map([BACKFILL_CHUNK as i64], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect()
            })
            .map_err(backend)?;
        if rows.is_empty() {
            break;
        }
        let tx = conn.unchecked_transaction().map_err(backend)?;
        for (id, envelope) in &rows {
            // Stored events were verified on arrival: the claimed fields are the signed ones.
            let unverified = weft_fabric::decode(envelope).map_err(|_| corrupt("envelope"))?;
            tx.prepare_cached("UPDATE events SET principal = ?1 WHERE id = ?2")
                .and_then(|mut s| {
                    s.execute(params![unverified.claimed_data().security().principal, id])
                })
                .map_err(backend)?;
        }
        tx.commit().map_err(backend)?;
        done += rows.len();
        if rows.len() < BACKFILL_CHUNK {
            break;
        }
    }
    if done > 0 {
        tracing::info!(rows = done, "stored events indexed by principal");
    }
    Ok(done)
}

fn count(conn: &Connection, table: &str) -> Result<usize, StoreError> {
    // `table` is one of this module's constant names, never input.
    let n: i64 = conn
        .prepare_cached(&format!("SELECT COUNT(*) FROM {table}"))
        .and_then(|mut s| s.query_row([], |r| r.get(0)))
        .map_err(backend)?;
    usize::try_from(n).map_err(|_| corrupt("negative count"))
}

/// Reads the counts and the per-origin ranges. Streams `(origin, seq)` in index order and
/// keeps at most [`RANGES_PER_ORIGIN_MAX`] ranges per origin (the lowest, as
/// [`SeqRanges`] does), so memory is bounded whatever the table holds.
fn load(conn: &Connection) -> Result<Loaded, StoreError> {
    let mut ranges = BTreeMap::new();
    let mut lossy = BTreeSet::new();
    let mut len = 0usize;
    {
        // (origin, seq) of stored and of erased events, and the expired ranges (which may
        // cover stored numbers too): all are seen.
        let mut stmt = conn
            .prepare(
                "SELECT origin, seq AS lo, seq AS hi FROM events \
                 UNION ALL SELECT origin, seq, seq FROM erased \
                 UNION ALL SELECT origin, lo, hi FROM expired ORDER BY origin, lo",
            )
            .map_err(backend)?;
        let mut rows = stmt.query([]).map_err(backend)?;
        let mut current: Option<(OriginKey, Vec<(u64, u64)>)> = None;
        let mut flush = |cur: Option<(OriginKey, Vec<(u64, u64)>)>| {
            if let Some((origin, islands)) = cur {
                ranges.insert(origin, SeqRanges::from_ranges(islands));
            }
        };
        while let Some(row) = rows.next().map_err(backend)? {
            let origin_ref = row.get_ref(0).map_err(backend)?;
            let origin = OriginKey(key32(
                origin_ref.as_blob().map_err(|_| corrupt("origin"))?,
                "origin",
            )?);
            let number = |i| -> Result<u64, StoreError> {
                let n: i64 = row.get(i).map_err(backend)?;
                u64::try_from(n)
                    .ok()
                    .filter(|s| *s >= 1)
                    .ok_or_else(|| corrupt("seq"))
            };
            let (lo, hi) = (number(1)?, number(2)?);
            if current.as_ref().is_none_or(|(o, _)| *o != origin) {
                flush(current.take());
                current = Some((origin, Vec::new()));
            }
            if let Some((_, islands)) = current.as_mut() {
                let full = islands.len() >= RANGES_PER_ORIGIN_MAX;
                match islands.last_mut() {
                    // Adjacent or overlapping (an expired range over stored numbers).
                    Some((_, end)) if lo <= end.saturating_add(1) => *end = (*end).max(hi),
                    _ if full => {
                        lossy.insert(origin);
                    }
                    _ => islands.push((lo, hi)),
                }
            }
        }
        flush(current);
    }
    // Erased sequence numbers are in the ranges (a restart must not reopen their holes),
    // not in the count of stored events.
    len += count(conn, "events")?;
    let mut expired: HashMap<OriginKey, BTreeMap<u64, u64>> = HashMap::new();
    let mut expired_len = 0;
    {
        let mut stmt = conn
            .prepare("SELECT origin, lo, hi FROM expired")
            .map_err(backend)?;
        let mut rows = stmt.query([]).map_err(backend)?;
        while let Some(row) = rows.next().map_err(backend)? {
            let origin: Vec<u8> = row.get(0).map_err(backend)?;
            let (lo, hi): (i64, i64) = (row.get(1).map_err(backend)?, row.get(2).map_err(backend)?);
            let (Ok(lo), Ok(hi)) = (u64::try_from(lo), u64::try_from(hi)) else {
                return Err(corrupt("expired range"));
            };
            if lo == 0 || hi < lo {
                return Err(corrupt("expired range"));
            }
            expired
                .entry(OriginKey(key32(&origin, "origin")?))
                .or_default()
                .insert(lo, hi);
            expired_len += 1;
        }
    }
    let mut expired_floor = HashMap::new();
    {
        let mut stmt = conn
            .prepare("SELECT origin, hi FROM expired_floor")
            .map_err(backend)?;
        let mut rows = stmt.query([]).map_err(backend)?;
        while let Some(row) = rows.next().map_err(backend)? {
            let origin: Vec<u8> = row.get(0).map_err(backend)?;
            let hi: i64 = row.get(1).map_err(backend)?;
            let hi = u64::try_from(hi).map_err(|_| corrupt("expired floor"))?;
            expired_floor.insert(OriginKey(key32(&origin, "origin")?), hi);
        }
    }
    Ok(Loaded {
        len,
        ranges,
        lossy,
        expired,
        expired_len,
        expired_floor,
        erased_len: count(conn, "erased")?,
        retracted: {
            let mut stmt = conn
                .prepare("SELECT origin, seq FROM retracted")
                .map_err(backend)?;
            let mut rows = stmt.query([]).map_err(backend)?;
            let mut set = HashSet::new();
            while let Some(row) = rows.next().map_err(backend)? {
                let origin: Vec<u8> = row.get(0).map_err(backend)?;
                let seq: i64 = row.get(1).map_err(backend)?;
                set.insert((
                    OriginKey(key32(&origin, "origin")?),
                    u64::try_from(seq).map_err(|_| corrupt("seq"))?,
                ));
            }
            set
        },
        cursors_len: count(conn, "cursors")?,
        peers_len: count(conn, "peers")?,
        meta_len: count(conn, "meta")?,
        ce_dedup_len: count(conn, "ce_dedup")?,
    })
}

fn cursor_get(conn: &Connection, name: &str) -> Result<Option<(String, u64)>, StoreError> {
    let row: Option<(String, i64)> = conn
        .prepare_cached("SELECT stream, pos FROM cursors WHERE name = ?1")
        .and_then(|mut s| {
            s.query_row([name], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
        })
        .map_err(backend)?;
    row.map(|(stream, pos)| Ok((stream, pos_from_sql(pos)?)))
        .transpose()
}

/// Reads the erases still being removed ([`SqliteStore::erase_pass`]), ordered by the
/// rule's columns (a `WITHOUT ROWID` table keeps no insertion order; any order serves:
/// each is finished in turn).
fn load_erase_pending(conn: &Connection) -> Result<Vec<PendingErase>, StoreError> {
    let mut stmt = conn
        .prepare(
            "SELECT kind, a, b, hlc_max, after_hlc, after_row, removed FROM erase_pending \
             ORDER BY kind, a, b",
        )
        .map_err(backend)?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Vec<u8>>(2)?,
                r.get::<_, i64>(3)?,
                (r.get::<_, i64>(4)?, r.get::<_, i64>(5)?),
                r.get::<_, i64>(6)?,
            ))
        })
        .map_err(backend)?;
    let mut out = Vec::new();
    for row in rows {
        let (kind, a, b, hlc_max, after, removed) = row.map_err(backend)?;
        let target = crate::erase::Target::from_columns(&kind, a, b)
            .ok_or_else(|| corrupt("pending erase"))?;
        out.push(PendingErase {
            target,
            hlc_max: hlc_max.cast_unsigned(),
            after,
            removed: removed.cast_unsigned(),
        });
    }
    Ok(out)
}

/// Reads the erase rules (bounded by the API's `erase::RULES_MAX`).
fn load_erase_rules(conn: &Connection) -> Result<EraseRules, StoreError> {
    let mut stmt = conn
        .prepare("SELECT kind, a, b, hlc_max FROM erase_rules")
        .map_err(backend)?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Vec<u8>>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })
        .map_err(backend)?;
    let mut rules = EraseRules::new();
    for row in rows {
        let (kind, a, b, hlc_max) = row.map_err(backend)?;
        let target =
            crate::erase::Target::from_columns(&kind, a, b).ok_or_else(|| corrupt("erase rule"))?;
        rules.insert(target, hlc_max.cast_unsigned());
    }
    Ok(rules)
}

impl SqliteStore {
    /// Opens (creating if needed) the store in `dir` (`dir/weft.db`), configures WAL and
    /// full sync, creates or checks the schema and loads the per-origin ranges and counts.
    pub(crate) fn open(dir: &Path, limits: StoreLimits) -> Result<Self, OpenError> {
        create_private(dir).map_err(|source| OpenError::Dir {
            path: dir.to_owned(),
            source,
        })?;
        let path = db_path(dir);
        private_db_file(&path).map_err(|source| OpenError::Dir {
            path: path.clone(),
            source,
        })?;
        let conn = connect(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        let sqlite = |source| OpenError::Sqlite {
            path: path.clone(),
            source,
        };
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
            .map_err(sqlite)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(OpenError::NotWal { path, mode });
        }
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(sqlite)?;
        conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT_BYTES)
            .map_err(sqlite)?;
        conn.pragma_update(None, "cache_size", -WRITER_CACHE_KIB)
            .map_err(sqlite)?;
        conn.pragma_update(None, "wal_autocheckpoint", WAL_AUTOCHECKPOINT_PAGES)
            .map_err(sqlite)?;
        // Erased rows (`erase`) are overwritten with zeros in the file, not just unlinked.
        conn.pragma_update(None, "secure_delete", "ON")
            .map_err(sqlite)?;
        if schema_version(&conn, &path)? == 0 {
            conn.execute_batch(&format!(
                "BEGIN IMMEDIATE; {SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
            ))
            .map_err(sqlite)?;
            tracing::info!(path = %path.display(), version = SCHEMA_VERSION, "created store");
        }
        // Keyed tables' materialized state (added after version 1; created when missing).
        crate::tables::create_schema(&conn).map_err(sqlite)?;
        // When each event entered the log (added after version 1; older rows have none):
        // retention ages an event by its stamp or its arrival, whichever is earlier.
        let has_at: bool = conn
            .prepare("SELECT 1 FROM pragma_table_info('log') WHERE name = 'at_ms'")
            .and_then(|mut s| s.exists([]))
            .map_err(sqlite)?;
        if !has_at {
            // Rows logged before have no arrival time: they are taken as arrived by now
            // (`LOG_AT_FROM_KEY`), so one stamped in the future still goes one retention
            // after this start at the latest.
            conn.execute_batch("ALTER TABLE log ADD COLUMN at_ms INTEGER")
                .map_err(sqlite)?;
            conn.execute(
                "INSERT OR REPLACE INTO meta (k, v) VALUES (?1, ?2)",
                params![
                    LOG_AT_FROM_KEY,
                    crate::driver::wall_ms().to_le_bytes().to_vec()
                ],
            )
            .map_err(sqlite)?;
        }
        let log_at_from_ms: u64 = conn
            .query_row("SELECT v FROM meta WHERE k = ?1", [LOG_AT_FROM_KEY], |r| {
                r.get::<_, Vec<u8>>(0)
            })
            .optional()
            .map_err(sqlite)?
            .and_then(|v| v.try_into().ok().map(i64::from_le_bytes))
            .map_or(0, |ms| u64::try_from(ms).unwrap_or(0));
        conn.execute_batch(ERASE_SCHEMA).map_err(sqlite)?;
        upgrade_principal_column(&conn).map_err(|source| OpenError::Load {
            path: path.clone(),
            source,
        })?;
        retention::create_schema(&conn).map_err(sqlite)?;
        derived::upgrade_schema(&conn).map_err(sqlite)?;
        // Durable cursors from before they had owners (`OWNER:` keys) are never read again
        // (their subscriptions start afresh under the new key) and could not be deleted
        // through the API: they would hold `cursors_max` rows for ever.
        let orphans = conn
            .execute("DELETE FROM cursors WHERE instr(name, ':') = 0", [])
            .map_err(sqlite)?;
        if orphans > 0 {
            tracing::info!(
                orphans,
                "deleted durable cursors kept before cursors had owners"
            );
        }
        conn.execute_batch(WAITING_SCHEMA).map_err(sqlite)?;
        conn.execute_batch(LOST_OPEN_SCHEMA).map_err(sqlite)?;
        let erase_rules = load_erase_rules(&conn).map_err(|source| OpenError::Load {
            path: path.clone(),
            source,
        })?;
        let erase_pending = load_erase_pending(&conn).map_err(|source| OpenError::Load {
            path: path.clone(),
            source,
        })?;
        if !erase_pending.is_empty() {
            tracing::info!(
                erases = erase_pending.len(),
                "erases still being removed: resumed where their last pass stopped"
            );
        }
        let state = load(&conn).map_err(|source| OpenError::Load {
            path: path.clone(),
            source,
        })?;
        tracing::info!(
            path = %path.display(),
            events = state.len,
            origins = state.ranges.len(),
            "opened store"
        );
        let checkpointer = Checkpointer::start(&path)?;
        Ok(Self {
            conn,
            _checkpointer: checkpointer,
            cache: RefCell::new(EventCache::new(limits.event_cache_len)),
            limits,
            state,
            in_tx: false,
            tx_writes: 0,
            stats: RefCell::new(StoreStats::default()),
            erase_rules,
            erase_pending,
            retention: retention::RetentionRules::default(),
            retention_resume: String::new(),
            log_at_from_ms,
            ahead: ReadAhead::default(),
        })
    }

    /// Counters for metrics.
    pub(crate) fn stats(&self) -> StoreStats {
        *self.stats.borrow()
    }

    /// The highest position in the delivery log (0 when empty).
    pub(crate) fn log_max_pos(&self) -> Result<u64, StoreError> {
        log_max_pos_in(&self.conn)
    }

    /// Makes every write since the last commit durable (fsync'd); returns how many writes
    /// that was. A no-op returning 0 without an open transaction. On failure the open
    /// transaction is rolled back, the in-memory state is reloaded from disk and nothing
    /// of the batch is durable: do not acknowledge it.
    pub(crate) fn commit(&mut self) -> Result<usize, StoreError> {
        if !self.in_tx {
            return Ok(0);
        }
        let started = Instant::now();
        let result = self.conn.execute_batch("COMMIT");
        let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        let writes = std::mem::take(&mut self.tx_writes);
        self.in_tx = false;
        match result {
            Ok(()) => {
                debug_assert!(self.conn.is_autocommit());
                let mut stats = self.stats.borrow_mut();
                stats.commits += 1;
                stats.writes_committed += writes as u64;
                stats.commit_us_last = us;
                stats.commit_us_total = stats.commit_us_total.saturating_add(us);
                Ok(writes)
            }
            Err(e) => {
                tracing::error!(error = %e, writes, "store commit failed; rolling back");
                self.stats.borrow_mut().commit_failures += 1;
                if !self.conn.is_autocommit()
                    && let Err(rb) = self.conn.execute_batch("ROLLBACK")
                {
                    tracing::error!(error = %rb, "store rollback failed");
                }
                self.reload();
                Err(StoreError::Backend(format!(
                    "commit failed, {writes} writes rolled back: {e}"
                )))
            }
        }
    }

    /// Reloads the in-memory state from the rows (after a rollback).
    fn reload(&mut self) {
        self.cache.borrow_mut().clear();
        match load(&self.conn) {
            Ok(state) => self.state = state,
            Err(e) => tracing::error!(error = %e, "store reload failed; state may be stale"),
        }
        match load_erase_pending(&self.conn) {
            Ok(pending) => self.erase_pending = pending,
            Err(e) => tracing::error!(error = %e, "reloading pending erases failed"),
        }
    }

    /// Runs `f` inside a savepoint of the open write transaction (opened if none is): all
    /// of its writes or none of them. On an error the rows are rolled back to the
    /// savepoint; memory `f` changed is the caller's to restore (`reload`).
    fn in_savepoint<T>(
        &mut self,
        name: &str,
        f: impl FnOnce(&mut Self) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.begin_write()?;
        self.conn
            .execute_batch(&format!("SAVEPOINT {name}"))
            .map_err(backend)?;
        match f(self) {
            Ok(v) => {
                self.conn
                    .execute_batch(&format!("RELEASE {name}"))
                    .map_err(backend)?;
                Ok(v)
            }
            Err(e) => {
                if let Err(rb) = self
                    .conn
                    .execute_batch(&format!("ROLLBACK TO {name}; RELEASE {name}"))
                {
                    tracing::error!(error = %rb, savepoint = name, "rolling back to a savepoint failed");
                }
                Err(e)
            }
        }
    }

    /// Commits when the open transaction reached [`TX_WRITES_MAX`] writes (`true` then).
    /// The driver calls it between two inputs of a step, where no delivery is half
    /// applied; on an error nothing of the transaction is durable ([`SqliteStore::commit`]).
    pub(crate) fn commit_if_over(&mut self) -> Result<bool, StoreError> {
        if !self.in_tx || self.tx_writes < TX_WRITES_MAX {
            return Ok(false);
        }
        tracing::debug!(
            writes = self.tx_writes,
            "committing inside a step at TX_WRITES_MAX"
        );
        self.commit()?;
        self.stats.borrow_mut().commits_auto += 1;
        Ok(true)
    }

    /// The write connection for a read that must not open a write transaction (a status
    /// count, a look for work to do): it sees what is committed and what the open step
    /// wrote.
    pub(crate) fn read_conn(&self) -> &Connection {
        &self.conn
    }

    /// Opens the write transaction if none is open. Never commits (see
    /// [`TX_WRITES_MAX`]).
    fn begin_write(&mut self) -> Result<(), StoreError> {
        if !self.in_tx {
            self.conn
                .execute_batch("BEGIN IMMEDIATE")
                .map_err(backend)?;
            self.in_tx = true;
        }
        Ok(())
    }

    /// Appends a delivered event to the local log and returns its position. Call in
    /// delivery order. Idempotent: an event already logged keeps its position.
    pub(crate) fn append_log(&mut self, event: &Event) -> Result<u64, StoreError> {
        let id = event.id();
        self.begin_write()?;
        // One probe of the id index, not two: the insert finds an entry already there.
        let added = self
            .conn
            .prepare_cached(
                "INSERT INTO log (id, stream, at_ms) VALUES (?1, ?2, ?3) ON CONFLICT (id) DO NOTHING",
            )
            .and_then(|mut s| {
                s.execute(params![
                    &id.0[..],
                    event.stream().as_str(),
                    crate::driver::wall_ms()
                ])
            })
            .map_err(backend)?;
        if added == 0 {
            let pos: i64 = self
                .conn
                .prepare_cached("SELECT pos FROM log WHERE id = ?1")
                .and_then(|mut s| s.query_row([&id.0[..]], |r| r.get(0)))
                .map_err(backend)?;
            return pos_from_sql(pos);
        }
        self.tx_writes += 1;
        // (A trigger adds the event's bytes to its stream's count: `store/retention.rs`.)
        pos_from_sql(self.conn.last_insert_rowid())
    }

    /// Whether a row is stored at `(origin, seq)` (whatever its id or state).
    fn holds_number(&self, origin: &OriginKey, seq: u64) -> bool {
        let Ok(seq_sql) = i64::try_from(seq) else {
            return false;
        };
        self.conn
            .prepare_cached("SELECT 1 FROM events WHERE origin = ?1 AND seq = ?2")
            .and_then(|mut s| s.exists(params![&origin.0[..], seq_sql]))
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, "store lookup failed");
                true
            })
    }

    /// Whether the store holds `limits.events_max` events: it refuses new ones.
    pub(crate) fn is_full(&self) -> bool {
        self.state.len >= self.limits.events_max
    }

    /// The highest stored sequence number of `origin` (0 if none). Exact (read from the
    /// rows, not from the bounded ranges): a restarting publisher continues after it.
    pub(crate) fn max_seq(&self, origin: &OriginKey) -> Result<u64, StoreError> {
        max_seq_in(&self.conn, origin)
    }

    /// The latest HLC stamp among `origin`'s newest stored events (its last 64 numbers;
    /// 0 when it has none): where this node's clock resumes at start, so that a wall clock
    /// stepped back across a restart does not stamp new events below acknowledged ones
    /// (an lww write would lose to an older one). Read from the `(origin, seq)` index.
    pub(crate) fn hlc_last(&self, origin: &OriginKey) -> Result<u64, StoreError> {
        let last: Option<i64> = self
            .conn
            .query_row(
                "SELECT MAX(hlc) FROM (SELECT hlc FROM events WHERE origin = ?1 \
                 ORDER BY seq DESC LIMIT 64)",
                [&origin.0[..]],
                |r| r.get(0),
            )
            .map_err(backend)?;
        Ok(last.map_or(0, |h| u64::try_from(h).unwrap_or(0)))
    }

    /// [`SqliteStore::max_seq`] leaving out the stored numbers in `skip` (a publish's own
    /// new events, stored in the open step): what the node held before it.
    pub(crate) fn max_seq_excluding(
        &self,
        origin: &OriginKey,
        skip: &BTreeSet<u64>,
    ) -> Result<u64, StoreError> {
        let limit = i64::try_from(skip.len() + 1).unwrap_or(i64::MAX);
        let stored: Vec<i64> = self
            .conn
            .prepare_cached("SELECT seq FROM events WHERE origin = ?1 ORDER BY seq DESC LIMIT ?2")
            .and_then(|mut s| {
                s.query_map(params![&origin.0[..], limit], |r| r.get(0))?
                    .collect::<Result<_, _>>()
            })
            .map_err(backend)?;
        let stored = stored
            .into_iter()
            .filter_map(|s| u64::try_from(s).ok())
            .find(|s| !skip.contains(s))
            .unwrap_or(0);
        let erased: Option<i64> = self
            .conn
            .prepare_cached(
                "SELECT MAX(m) FROM (SELECT MAX(seq) AS m FROM erased WHERE origin = ?1 \
                 UNION ALL SELECT (SELECT hi FROM expired WHERE origin = ?1 ORDER BY lo DESC LIMIT 1) AS m)",
            )
            .and_then(|mut s| s.query_row([&origin.0[..]], |r| r.get(0)))
            .map_err(backend)?;
        Ok(stored.max(erased.and_then(|e| u64::try_from(e).ok()).unwrap_or(0)))
    }

    /// The member-record generation this node last ran under (`None`: never started).
    pub(crate) fn generation(&self) -> Result<Option<u32>, StoreError> {
        Ok(self
            .meta_get(GENERATION_KEY)?
            .and_then(|v| v.try_into().ok().map(u32::from_le_bytes)))
    }

    /// Records the generation this node runs under (durable at the next commit): set at
    /// every start and when it rejoins under a later one.
    pub(crate) fn set_generation(&mut self, generation: u32) -> Result<(), RecordError> {
        self.meta_set(GENERATION_KEY, &generation.to_le_bytes())
    }

    /// A metadata value.
    pub(crate) fn meta_get(&self, k: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.conn
            .prepare_cached("SELECT v FROM meta WHERE k = ?1")
            .and_then(|mut s| s.query_row([k], |r| r.get(0)).optional())
            .map_err(backend)
    }

    /// Sets a metadata value (durable at the next commit).
    pub(crate) fn meta_set(&mut self, k: &str, v: &[u8]) -> Result<(), RecordError> {
        check_len("meta key", k.as_bytes(), NAME_LEN_MAX)?;
        check_len("meta value", v, META_VALUE_LEN_MAX)?;
        let exists = self.meta_get(k)?.is_some();
        if !exists && self.state.meta_len >= META_KEYS_MAX {
            return Err(RecordError::TableFull {
                table: "meta",
                len: self.state.meta_len,
                max: META_KEYS_MAX,
            });
        }
        self.begin_write()?;
        self.conn
            .prepare_cached(
                "INSERT INTO meta (k, v) VALUES (?1, ?2) ON CONFLICT (k) DO UPDATE SET v = ?2",
            )
            .and_then(|mut s| s.execute(params![k, v]))
            .map_err(backend)?;
        self.tx_writes += 1;
        if !exists {
            self.state.meta_len += 1;
        }
        Ok(())
    }

    /// A durable cursor: its stream and log position.
    pub(crate) fn cursor_get(&self, name: &str) -> Result<Option<(String, u64)>, StoreError> {
        cursor_get(&self.conn, name)
    }

    /// Creates or moves a durable cursor (durable at the next commit).
    /// (A cursor only moves forward: an older position than the stored one is ignored.)
    pub(crate) fn cursor_set(
        &mut self,
        name: &str,
        stream: &str,
        pos: u64,
    ) -> Result<(), RecordError> {
        check_len("cursor name", name.as_bytes(), NAME_LEN_MAX)?;
        check_len("cursor stream", stream.as_bytes(), STREAM_LEN_MAX)?;
        let pos_sql = i64::try_from(pos).map_err(|_| RecordError::OutOfRange {
            field: "cursor pos",
            value: pos,
            max: SEQ_MAX,
        })?;
        let exists = self.cursor_get(name)?.is_some();
        if !exists && self.state.cursors_len >= self.limits.cursors_max {
            return Err(RecordError::TableFull {
                table: "cursors",
                len: self.state.cursors_len,
                max: self.limits.cursors_max,
            });
        }
        if !exists && let Some((owner, _)) = name.split_once(':') {
            // The owner's names sort together: `owner:` up to `owner;` (':' + 1).
            let held: i64 = self
                .conn
                .prepare_cached("SELECT COUNT(*) FROM cursors WHERE name > ?1 AND name < ?2")
                .and_then(|mut s| {
                    s.query_row(params![format!("{owner}:"), format!("{owner};")], |r| {
                        r.get(0)
                    })
                })
                .map_err(backend)?;
            let held = usize::try_from(held).unwrap_or(usize::MAX);
            if held >= self.limits.cursors_per_owner_max {
                return Err(RecordError::TableFull {
                    table: "this principal's share of the cursors table",
                    len: held,
                    max: self.limits.cursors_per_owner_max,
                });
            }
        }
        self.begin_write()?;
        self.conn
            .prepare_cached(
                "INSERT INTO cursors (name, stream, pos) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (name) DO UPDATE SET stream = ?2, pos = MAX(pos, ?3)",
            )
            .and_then(|mut s| s.execute(params![name, stream, pos_sql]))
            .map_err(backend)?;
        self.tx_writes += 1;
        if !exists {
            self.state.cursors_len += 1;
        }
        Ok(())
    }

    /// Deletes a durable cursor (durable at the next commit). Returns whether it existed.
    pub(crate) fn cursor_delete(&mut self, name: &str) -> Result<bool, StoreError> {
        self.begin_write()?;
        let n = self
            .conn
            .prepare_cached("DELETE FROM cursors WHERE name = ?1")
            .and_then(|mut s| s.execute([name]))
            .map_err(backend)?;
        self.tx_writes += 1;
        self.state.cursors_len -= n.min(self.state.cursors_len);
        Ok(n > 0)
    }

    /// Records a peer (durable at the next commit). A new peer at `peers_max` evicts the
    /// least recently seen one.
    pub(crate) fn peer_upsert(
        &mut self,
        key: [u8; 32],
        info_json: &str,
        last_seen_ms: i64,
    ) -> Result<(), RecordError> {
        check_len("peer info", info_json.as_bytes(), PEER_INFO_LEN_MAX)?;
        let exists = self
            .conn
            .prepare_cached("SELECT 1 FROM peers WHERE key = ?1")
            .and_then(|mut s| s.exists([&key[..]]))
            .map_err(backend)?;
        if !exists && self.limits.peers_max == 0 {
            return Err(RecordError::TableFull {
                table: "peers",
                len: 0,
                max: 0,
            });
        }
        self.begin_write()?;
        if !exists && self.state.peers_len >= self.limits.peers_max {
            let evicted = self
                .conn
                .prepare_cached(
                    "DELETE FROM peers WHERE key = \
                     (SELECT key FROM peers ORDER BY last_seen_ms, key LIMIT 1)",
                )
                .and_then(|mut s| s.execute([]))
                .map_err(backend)?;
            self.state.peers_len -= evicted.min(self.state.peers_len);
            self.tx_writes += 1;
        }
        self.conn
            .prepare_cached(
                "INSERT INTO peers (key, info, last_seen_ms) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (key) DO UPDATE SET info = ?2, last_seen_ms = ?3",
            )
            .and_then(|mut s| s.execute(params![&key[..], info_json, last_seen_ms]))
            .map_err(backend)?;
        self.tx_writes += 1;
        if !exists {
            self.state.peers_len += 1;
        }
        Ok(())
    }

    /// Every remembered peer (at most `peers_max`), by key.
    pub(crate) fn peers(&self) -> Result<Vec<([u8; 32], String, i64)>, StoreError> {
        let limit = i64::try_from(self.limits.peers_max).unwrap_or(i64::MAX);
        let mut stmt = self
            .conn
            .prepare_cached("SELECT key, info, last_seen_ms FROM peers ORDER BY key LIMIT ?1")
            .map_err(backend)?;
        let mut rows = stmt.query([limit]).map_err(backend)?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(backend)? {
            let key = row.get_ref(0).map_err(backend)?;
            let key = key32(key.as_blob().map_err(|_| corrupt("peer key"))?, "peer key")?;
            out.push((
                key,
                row.get(1).map_err(backend)?,
                row.get(2).map_err(backend)?,
            ));
        }
        Ok(out)
    }

    /// The connection inside the open write transaction (begun if needed), for the keyed
    /// tables' rows (`tables.rs`): committed with everything else of the driver's step.
    pub(crate) fn write_conn(&mut self) -> Result<&Connection, StoreError> {
        self.begin_write()?;
        self.tx_writes += 1;
        Ok(&self.conn)
    }

    /// The event a CloudEvent `(principal, source, ce_id)` was published as, if recorded.
    pub(crate) fn ce_dedup_get(
        &self,
        principal: &str,
        source: &str,
        ce_id: &str,
    ) -> Result<Option<EventId>, StoreError> {
        ce_dedup_lookup(&self.conn, principal, source, ce_id)
    }

    /// Records that a CloudEvent was published as `event_id` (durable at the next commit).
    /// The first record of a triple wins. A new entry at `ce_dedup_max` evicts the oldest.
    pub(crate) fn ce_dedup_put(
        &mut self,
        principal: &str,
        source: &str,
        ce_id: &str,
        event_id: &EventId,
    ) -> Result<(), RecordError> {
        check_len("principal", principal.as_bytes(), NAME_LEN_MAX)?;
        check_len("ce source", source.as_bytes(), CE_FIELD_LEN_MAX)?;
        check_len("ce id", ce_id.as_bytes(), CE_FIELD_LEN_MAX)?;
        if self.limits.ce_dedup_max == 0 {
            return Ok(());
        }
        if self.erase_pending.is_empty() {
            // No entry can name a hidden event: the first record stays (`OR IGNORE`), one
            // statement instead of a lookup (with its probe of `events`) and an insert; every
            // node records the CloudEvents it stores from others (`Driver::record_ce_identity`).
            self.begin_write()?;
            let added = self
                .conn
                .prepare_cached(
                    "INSERT OR IGNORE INTO ce_dedup (principal, source, ce_id, event_id) \
                     VALUES (?1, ?2, ?3, ?4)",
                )
                .and_then(|mut s| s.execute(params![principal, source, ce_id, &event_id.0[..]]))
                .map_err(backend)?;
            self.tx_writes += 1;
            self.state.ce_dedup_len += added;
            if added > 0 && self.state.ce_dedup_len > self.limits.ce_dedup_max {
                self.evict_oldest_ce_dedup()?;
            }
            return Ok(());
        }
        if self.ce_dedup_get(principal, source, ce_id)?.is_some() {
            return Ok(());
        }
        // An entry naming an event a pending erase hides: replaced in place (its event goes
        // with the erase's pass, which then finds no entry to delete).
        if !self.erase_pending.is_empty() {
            self.begin_write()?;
            let replaced = self
                .conn
                .prepare_cached(
                    "UPDATE ce_dedup SET event_id = ?4 \
                     WHERE principal = ?1 AND source = ?2 AND ce_id = ?3",
                )
                .and_then(|mut s| s.execute(params![principal, source, ce_id, &event_id.0[..]]))
                .map_err(backend)?;
            self.tx_writes += 1;
            if replaced > 0 {
                return Ok(());
            }
        }
        self.begin_write()?;
        if self.state.ce_dedup_len >= self.limits.ce_dedup_max {
            self.evict_oldest_ce_dedup()?;
        }
        self.conn
            .prepare_cached(
                "INSERT INTO ce_dedup (principal, source, ce_id, event_id) VALUES (?1, ?2, ?3, ?4)",
            )
            .and_then(|mut s| s.execute(params![principal, source, ce_id, &event_id.0[..]]))
            .map_err(backend)?;
        self.tx_writes += 1;
        self.state.ce_dedup_len += 1;
        Ok(())
    }

    /// Drops the oldest idempotency record: rowids ascend with insertion and only the
    /// lowest is deleted, so the window is FIFO.
    fn evict_oldest_ce_dedup(&mut self) -> Result<(), RecordError> {
        let evicted = self
            .conn
            .prepare_cached("DELETE FROM ce_dedup WHERE rowid = (SELECT MIN(rowid) FROM ce_dedup)")
            .and_then(|mut s| s.execute([]))
            .map_err(backend)?;
        self.state.ce_dedup_len -= evicted.min(self.state.ce_dedup_len);
        self.tx_writes += 1;
        Ok(())
    }

    /// Whether an erase rule in force covers `event` (it must not be stored or logged).
    pub(crate) fn erase_covers(&self, event: &weft_fabric::EventData) -> bool {
        if self.erase_rules.is_empty() {
            return false;
        }
        let hlc = event.hlc().as_u64();
        let s = event.security();
        let key_rule = event.key().and_then(|k| {
            self.erase_rules.get(&crate::erase::Target::Key {
                stream: event.stream().as_str().to_string(),
                key: k.to_vec(),
            })
        });
        let principal = |tenant: &str| {
            self.erase_rules.get(&crate::erase::Target::Principal {
                principal: s.principal.clone(),
                tenant: tenant.to_string(),
            })
        };
        [key_rule, principal(""), principal(&s.tenant)]
            .into_iter()
            .flatten()
            .any(|bound| hlc <= *bound)
            && !event.stream().is_system()
    }

    /// Whether `event`, still stored, is one an erase being removed pass by pass covers
    /// (the core's reads leave it out, as [`not_erasing!`] does the readers').
    fn hidden_by_erase(&self, event: &weft_fabric::EventData) -> bool {
        !self.erase_pending.is_empty() && self.erase_covers(event)
    }

    /// Whether the stored event at `(origin, seq)` is one an erase being removed covers
    /// (by the SQL of [`not_erasing!`]; no envelope decoded for a row no rule names).
    fn pending_covers(&self, origin: &OriginKey, seq: u64) -> bool {
        let Ok(seq_sql) = i64::try_from(seq) else {
            return false;
        };
        self.conn
            .prepare_cached(concat!(
                "SELECT 1 FROM events e WHERE e.origin = ?1 AND e.seq = ?2 AND NOT ",
                not_erasing!("e")
            ))
            .and_then(|mut s| s.exists(params![&origin.0[..], seq_sql]))
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, "store lookup failed");
                false
            })
    }

    /// Number of erase rules in force.
    #[cfg(test)]
    pub(crate) fn erase_rules_len(&self) -> usize {
        self.erase_rules.len()
    }

    /// Records the erase rule `target` (covering events stamped up to `hlc_max`) and
    /// erases the stored events it covers, up to `limits.erase_pass_max` rows examined:
    /// rows in `events`, `log` and `ce_dedup` go, each event's `(origin, seq, id)` goes to
    /// `erased` (still in the ranges). An erase that covers more is recorded pending
    /// (`erase_pending`) and finished by [`SqliteStore::erase_pass`]; every read of stored
    /// events leaves out what it covers meanwhile ([`not_erasing!`] and the core's reads
    /// here), and the rule refuses what it covers from now on. In the open write
    /// transaction (committed with the driver's step). A rule reads its own rows only, by
    /// index: a key rule the key's (`events_stream_key`), a principal rule the
    /// principal's (`events_principal`). All or nothing: on an error no row changed and
    /// the rule is not in force (memory reloaded), so the caller can stop before the step
    /// that carried the erase commits, and apply it again when it is delivered again.
    pub(crate) fn erase(
        &mut self,
        target: &crate::erase::Target,
        hlc_max: u64,
    ) -> Result<ErasedPass, StoreError> {
        let before = self.erase_rules.get(target).copied();
        match self.in_savepoint("erase", |s| s.erase_rows(target, hlc_max)) {
            Ok(pass) => {
                self.stats.get_mut().erased += pass.events.len() as u64;
                Ok(pass)
            }
            Err(e) => {
                // None of it: the rows are back (savepoint), and so are memory and the rule.
                self.reload();
                match before {
                    Some(bound) => self.erase_rules.insert(target.clone(), bound),
                    None => self.erase_rules.remove(target),
                };
                Err(e)
            }
        }
    }

    /// The next pass of the first erase still being removed ([`SqliteStore::erase`]):
    /// up to `limits.erase_pass_max` of its rows examined and the covered ones erased, in
    /// the open write transaction. `None` when no erase is pending. All or nothing: on an
    /// error no row changed and the erase stays pending where it was.
    pub(crate) fn erase_pass(&mut self) -> Result<Option<ErasedPass>, StoreError> {
        let Some(pending) = self.erase_pending.first().cloned() else {
            return Ok(None);
        };
        let result = self.in_savepoint("erase_pass", |s| {
            s.erase_after(
                &pending.target,
                pending.hlc_max,
                pending.after,
                pending.removed,
            )
        });
        match result {
            Ok(pass) => {
                self.stats.get_mut().erased += pass.events.len() as u64;
                Ok(Some(pass))
            }
            Err(e) => {
                self.reload();
                Err(e)
            }
        }
    }

    /// Whether an erase is still being removed pass by pass.
    pub(crate) fn erasing(&self) -> bool {
        !self.erase_pending.is_empty()
    }

    /// The erases still being removed, in the order their passes run.
    pub(crate) fn erases_pending(&self) -> &[PendingErase] {
        &self.erase_pending
    }

    /// [`SqliteStore::erase`]'s writes, inside its savepoint.
    fn erase_rows(
        &mut self,
        target: &crate::erase::Target,
        hlc_max: u64,
    ) -> Result<ErasedPass, StoreError> {
        let (kind, a, b) = target.columns();
        let hlc_sql = hlc_max.min(i64::MAX as u64).cast_signed();
        self.conn
            .prepare_cached(
                "INSERT INTO erase_rules (kind, a, b, hlc_max) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (kind, a, b) DO UPDATE SET hlc_max = MAX(hlc_max, excluded.hlc_max)",
            )
            .and_then(|mut s| s.execute(params![kind, a, b, hlc_sql]))
            .map_err(backend)?;
        self.tx_writes += 1;
        let bound = self.erase_rules.entry(target.clone()).or_insert(hlc_max);
        *bound = (*bound).max(hlc_max);
        let bound = *bound;
        // The same rule still being removed goes on where it stopped, what it removed so
        // far counted, unless it is a key rule whose bound rose: its rows are read by
        // rowid, and rows passed over as above the old bound may be under the new one, so
        // it starts again from its first row. (A principal rule reads in stamp order: rows
        // the raised bound adds all come after where it stopped.)
        let pending = self.erase_pending.iter().find(|p| &p.target == target);
        let removed = pending.map_or(0, |p| p.removed);
        let start = match (pending, target) {
            (Some(p), crate::erase::Target::Principal { .. }) => p.after,
            (Some(p), crate::erase::Target::Key { .. }) if p.hlc_max == bound => p.after,
            _ => (i64::MIN, i64::MIN),
        };
        self.erase_after(target, bound, start, removed)
    }

    /// One pass of erase `target` (up to `hlc_max`) from after row `after`, `removed`
    /// events removed before it: its rows erased ([`SqliteStore::erase_some`]) and where it
    /// stands recorded ([`SqliteStore::set_pending`]).
    fn erase_after(
        &mut self,
        target: &crate::erase::Target,
        hlc_max: u64,
        after: (i64, i64),
        removed: u64,
    ) -> Result<ErasedPass, StoreError> {
        let (events, last, more) = self.erase_some(target, hlc_max, after)?;
        let removed = removed + events.len() as u64;
        self.set_pending(target, hlc_max, last, removed, more)?;
        Ok(ErasedPass {
            target: target.clone(),
            events,
            removed,
            more,
        })
    }

    /// Records where erase `target` stands: pending after row `after` when `more`,
    /// finished (its pending row gone) otherwise. Memory follows the row.
    fn set_pending(
        &mut self,
        target: &crate::erase::Target,
        hlc_max: u64,
        after: (i64, i64),
        removed: u64,
        more: bool,
    ) -> Result<(), StoreError> {
        let (kind, a, b) = target.columns();
        let held = self.erase_pending.iter().position(|p| &p.target == target);
        if more {
            self.conn
                .prepare_cached(
                    "INSERT OR REPLACE INTO erase_pending \
                     (kind, a, b, hlc_max, after_hlc, after_row, removed) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        kind,
                        a,
                        b,
                        hlc_max.min(i64::MAX as u64).cast_signed(),
                        after.0,
                        after.1,
                        removed.min(i64::MAX as u64).cast_signed()
                    ])
                })
                .map_err(backend)?;
            let p = PendingErase {
                target: target.clone(),
                hlc_max,
                after,
                removed,
            };
            match held {
                Some(i) => self.erase_pending[i] = p,
                None => self.erase_pending.push(p),
            }
        } else if let Some(i) = held {
            self.conn
                .prepare_cached("DELETE FROM erase_pending WHERE kind = ?1 AND a = ?2 AND b = ?3")
                .and_then(|mut s| s.execute(params![kind, a, b]))
                .map_err(backend)?;
            self.erase_pending.remove(i);
        }
        self.tx_writes += 1;
        Ok(())
    }

    /// Examines up to `limits.erase_pass_max` of the rows rule `target` (up to `hlc_max`)
    /// reads, after row `after`, and erases the covered ones. Returns them, the last row
    /// examined, and whether the pass stopped at its bound (more rows may follow).
    fn erase_some(
        &mut self,
        target: &crate::erase::Target,
        hlc_max: u64,
        after: (i64, i64),
    ) -> Result<SomeErased, StoreError> {
        let hlc_sql = hlc_max.min(i64::MAX as u64).cast_signed();
        let budget = self.limits.erase_pass_max.max(1);
        let limit = i64::try_from(budget).unwrap_or(i64::MAX);
        // The rows the rule covers: (id, origin, seq, stream, key). Rows are read one at a
        // time and only the covered ones kept, so a pass holds the matches, not every
        // envelope, in memory.
        type Row = (Vec<u8>, Vec<u8>, i64, String, Option<Vec<u8>>);
        let (sql, args): (&str, Vec<rusqlite::types::Value>) = match target {
            crate::erase::Target::Key { stream, key } => (
                KEY_ROWS_SQL,
                vec![
                    stream.clone().into(),
                    key.clone().into(),
                    hlc_sql.into(),
                    after.1.into(),
                    limit.into(),
                ],
            ),
            // The tenant is checked on the decoded context below.
            crate::erase::Target::Principal { principal, .. } => (
                PRINCIPAL_ROWS_SQL,
                vec![
                    principal.clone().into(),
                    hlc_sql.into(),
                    after.0.into(),
                    after.1.into(),
                    limit.into(),
                ],
            ),
        };
        let mut covered: Vec<Row> = Vec::new();
        let mut last = after;
        let mut examined = 0usize;
        {
            let mut stmt = self.conn.prepare_cached(sql).map_err(backend)?;
            let mut rows = stmt
                .query(rusqlite::params_from_iter(args))
                .map_err(backend)?;
            while let Some(r) = rows.next().map_err(backend)? {
                examined += 1;
                let (hlc, rowid): (i64, i64) =
                    (r.get(6).map_err(backend)?, r.get(7).map_err(backend)?);
                last = match target {
                    crate::erase::Target::Key { .. } => (0, rowid),
                    crate::erase::Target::Principal { .. } => (hlc, rowid),
                };
                let envelope: Vec<u8> = r.get(5).map_err(backend)?;
                // Stored events were verified on arrival: the claimed fields are the signed
                // ones. A row that no longer decodes (a damaged file) matched the rule's
                // columns (stream and key, or principal, and the stamp): it goes too, with
                // an error in the log, rather than fail the erase (which would leave every
                // other covered event stored).
                let covers = match weft_fabric::decode(&envelope) {
                    Ok(unverified) => target.covers(unverified.claimed_data()),
                    Err(e) => {
                        let id: Vec<u8> = r.get(0).map_err(backend)?;
                        tracing::error!(id = %hex::encode(&id), error = %e, "a stored event the erase matches does not decode; erased all the same");
                        true
                    }
                };
                if covers {
                    covered.push((
                        r.get(0).map_err(backend)?,
                        r.get(1).map_err(backend)?,
                        r.get(2).map_err(backend)?,
                        r.get(3).map_err(backend)?,
                        r.get(4).map_err(backend)?,
                    ));
                }
            }
        }
        let mut erased = Vec::with_capacity(covered.len());
        for (id, origin, seq, stream, key) in covered {
            erased.push(self.erase_row(&id, &origin, seq, stream, key)?);
        }
        Ok((erased, last, examined >= budget))
    }

    /// Records `(origin, seq)` (event `id`) as erased: a row in `erased` and a number in
    /// the ranges. In the open write transaction.
    fn note_erased(&mut self, origin: &OriginKey, seq: u64, id: &[u8]) -> Result<(), StoreError> {
        let added = self
            .conn
            .prepare_cached("INSERT OR IGNORE INTO erased (origin, seq, id) VALUES (?1, ?2, ?3)")
            .and_then(|mut s| s.execute(params![&origin.0[..], seq.cast_signed(), id]))
            .map_err(backend)?;
        self.tx_writes += 1;
        self.state.erased_len += added;
        self.state.note(*origin, seq);
        Ok(())
    }

    /// Erases the stored event `id` at `(origin, seq)` (on `stream`, with `key`): its
    /// rows in `events`, `log` and `ce_dedup` go, `(origin, seq, id)` goes to `erased`
    /// (still in the ranges). In the open write transaction.
    fn erase_row(
        &mut self,
        id: &[u8],
        origin: &[u8],
        seq: i64,
        stream: String,
        key: Option<Vec<u8>>,
    ) -> Result<ErasedEvent, StoreError> {
        let origin_key = OriginKey(key32(origin, "origin")?);
        let seq_u = u64::try_from(seq).map_err(|_| corrupt("seq"))?;
        // The event row first: a trigger takes a logged event's bytes off its stream's
        // count (`store/retention.rs`).
        for sql in [
            "DELETE FROM events WHERE id = ?1",
            "DELETE FROM log WHERE id = ?1",
        ] {
            self.conn
                .prepare_cached(sql)
                .and_then(|mut s| s.execute([id]))
                .map_err(backend)?;
        }
        let dedup = self
            .conn
            .prepare_cached(DEDUP_OF_EVENT_SQL)
            .and_then(|mut s| s.execute([id]))
            .map_err(backend)?;
        self.note_erased(&origin_key, seq_u, id)?;
        // An own derivative gone: nothing left to retract (`store/derived.rs`).
        self.forget_derived(&origin_key, seq_u)?;
        self.state.len -= 1;
        self.state.ce_dedup_len -= dedup;
        self.cache.get_mut().remove(&(origin_key, seq_u));
        Ok(ErasedEvent {
            id: weft_fabric::EventId(key32(id, "id")?),
            origin: origin_key,
            seq: seq_u,
            stream,
            key,
        })
    }

    /// Checks the in-memory state against the rows (slow: counts every table). For tests
    /// and debugging.
    #[cfg(test)]
    pub(crate) fn check_invariants(&self) -> Result<(), String> {
        let rows = load(&self.conn).map_err(|e| e.to_string())?;
        let pairs = [
            ("events", self.state.len, rows.len),
            ("cursors", self.state.cursors_len, rows.cursors_len),
            ("peers", self.state.peers_len, rows.peers_len),
            ("meta", self.state.meta_len, rows.meta_len),
            ("ce_dedup", self.state.ce_dedup_len, rows.ce_dedup_len),
            ("erased", self.state.erased_len, rows.erased_len),
            ("expired", self.state.expired_len, rows.expired_len),
        ];
        for (table, memory, disk) in pairs {
            if memory != disk {
                return Err(format!("{table}: {memory} in memory, {disk} rows"));
            }
        }
        if self.state.expired != rows.expired {
            return Err("expired ranges differ from the rows".into());
        }
        let unindexed: i64 = self
            .conn
            .query_row(
                "SELECT COUNT(*) FROM events WHERE principal IS NULL",
                [],
                |r| r.get(0),
            )
            .map_err(|e| e.to_string())?;
        if unindexed != 0 {
            return Err(format!("{unindexed} events without their principal"));
        }
        let counted: Vec<(String, i64)> = self
            .conn
            .prepare(
                "SELECT b.stream, b.bytes - COALESCE((SELECT SUM(LENGTH(e.envelope)) FROM log l \
                 JOIN events e ON e.id = l.id WHERE l.stream = b.stream), 0) FROM stream_bytes b",
            )
            .and_then(|mut s| s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
            .map_err(|e| e.to_string())?;
        if let Some((stream, off)) = counted.iter().find(|(_, off)| *off != 0) {
            return Err(format!("stream_bytes of {stream} is off by {off}"));
        }
        let uncounted: i64 = self
            .conn
            .query_row(
                "SELECT COUNT(DISTINCT stream) FROM log WHERE stream NOT IN (SELECT stream FROM stream_bytes)",
                [],
                |r| r.get(0),
            )
            .map_err(|e| e.to_string())?;
        if uncounted != 0 {
            return Err(format!("{uncounted} logged streams without stream_bytes"));
        }
        if self.state.retracted != rows.retracted {
            return Err("retracted numbers differ from the rows".into());
        }
        if self.state.expired_floor != rows.expired_floor {
            return Err("expired floors differ from the rows".into());
        }
        // An origin whose ranges reached the limit keeps its lowest in memory; ranges
        // dropped since may leave memory short of what the rows give (it under-claims).
        for (origin, mine) in &self.state.ranges {
            let exact = rows.ranges.get(origin) == Some(mine);
            let under = self.state.lossy.contains(origin)
                && rows.ranges.get(origin).is_some_and(|theirs| {
                    mine.iter()
                        .all(|(lo, hi)| (lo..=hi).all(|n| theirs.contains(n)))
                });
            if !(exact || under) {
                return Err(format!("ranges of {origin} differ from the rows"));
            }
        }
        if rows
            .ranges
            .keys()
            .any(|o| !self.state.ranges.contains_key(o))
        {
            return Err("per-origin ranges differ from the rows".into());
        }
        if self.in_tx == self.conn.is_autocommit() {
            return Err("transaction flag out of step with SQLite".into());
        }
        Ok(())
    }

    /// Counts a failed query (`read`: a read of one event, else a search for the next
    /// one) and returns how many of its kind failed so far.
    fn query_failed(&self, read: bool) -> u64 {
        let mut stats = self.stats.borrow_mut();
        stats.query_errors += 1;
        if read {
            stats.read_errors += 1;
            stats.read_errors
        } else {
            stats.query_errors - stats.read_errors
        }
    }

    /// The row of `origin` at `seq`: `Err` when the query itself fails (the disk, the
    /// database), `Ok(Err(what))` when a row is there but is not a valid event (an
    /// undecodable or unverifiable envelope, a column of the wrong type, another event
    /// than the row names) or SQLite finds the page holding it corrupt: reading it again
    /// would give the same, and an error would stop the origin's delivery for good.
    fn get_row(
        &self,
        origin: &OriginKey,
        seq: u64,
    ) -> rusqlite::Result<Result<Option<Arc<Event>>, String>> {
        match self.read_row(origin, seq) {
            Err(e)
                if matches!(
                    e.sqlite_error_code(),
                    Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase)
                ) =>
            {
                Ok(Err(format!("corrupt page: {e}")))
            }
            read => read,
        }
    }

    /// [`SqliteStore::get_row`]'s query and checks.
    fn read_row(
        &self,
        origin: &OriginKey,
        seq: u64,
    ) -> rusqlite::Result<Result<Option<Arc<Event>>, String>> {
        let Ok(seq_sql) = i64::try_from(seq) else {
            return Ok(Ok(None));
        };
        // Each column's read kept apart from the query's: a column of the wrong type is
        // the row's fault (corrupt), not the disk's.
        type Columns = (rusqlite::Result<Vec<u8>>, rusqlite::Result<Vec<u8>>);
        let row: Option<Columns> = self
            .conn
            .prepare_cached("SELECT id, envelope FROM events WHERE origin = ?1 AND seq = ?2")?
            .query_row(params![&origin.0[..], seq_sql], |r| {
                Ok((r.get(0), r.get(1)))
            })
            .optional()?;
        let Some((id, envelope)) = row else {
            return Ok(Ok(None));
        };
        let (id, envelope) = match (id, envelope) {
            (Ok(id), Ok(envelope)) => (id, envelope),
            (Err(e), _) | (_, Err(e)) => return Ok(Err(format!("unreadable column: {e}"))),
        };
        let event = match weft_fabric::decode(&envelope) {
            Ok(unverified) => match unverified.verify() {
                Ok(event) => event,
                Err(e) => return Ok(Err(format!("envelope fails verification: {e}"))),
            },
            Err(e) => return Ok(Err(format!("corrupt envelope: {e}"))),
        };
        if !names(&event, origin, seq, &id) {
            return Ok(Err("envelope is not the event its row names".into()));
        }
        Ok(Ok(Some(Arc::new(event))))
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        if self.in_tx {
            // Closing the connection rolls the transaction back: never acknowledged.
            tracing::debug!(
                writes = self.tx_writes,
                "store dropped with uncommitted writes"
            );
        }
    }
}

impl Store for SqliteStore {
    fn insert(&mut self, event: Arc<Event>) -> Result<Inserted, StoreError> {
        let id = event.id();
        let origin = event.origin();
        let seq = event.seq();
        let seq_sql = i64::try_from(seq)
            .map_err(|_| StoreError::Backend(format!("seq {seq} is over the limit {SEQ_MAX}")))?;
        let existing: Option<Vec<u8>> = self
            .conn
            .prepare_cached("SELECT id FROM events WHERE origin = ?1 AND seq = ?2")
            .and_then(|mut s| {
                s.query_row(params![&origin.0[..], seq_sql], |r| r.get(0))
                    .optional()
            })
            .map_err(backend)?;
        // The id hashes the signed bytes, origin and seq included: a stored id sits at its
        // own (origin, seq), so this one lookup finds duplicates and equivocations.
        if let Some(existing) = existing {
            if existing[..] == id.0[..] {
                if self.hidden_by_erase(&event) {
                    // Still stored until its erase's pass: refused as the erase refuses it.
                    self.stats.borrow_mut().erased_refused += 1;
                    return Ok(Inserted::Erased);
                }
                self.stats.borrow_mut().duplicates += 1;
                return Ok(Inserted::Duplicate);
            }
            self.stats.borrow_mut().equivocations += 1;
            return Err(StoreError::Equivocation { origin, seq });
        }
        if (self.state.erased_len > 0 || self.state.expired_len > 0) && self.gone(&origin, seq) {
            // Erased, or expired here by retention: seen, not stored again. (Below the
            // floor of dropped expired ranges the number is not reported erased: this
            // node no longer knows it apart from numbers it never held.)
            self.stats.borrow_mut().erased_refused += 1;
            return Ok(Inserted::Erased);
        }
        if !self.state.retracted.is_empty() && self.take_retracted(&event)? {
            // A derivative its origin retracted before it arrived (`store/derived.rs`).
            self.stats.borrow_mut().erased_refused += 1;
            return Ok(Inserted::Erased);
        }
        if self.erase_covers(&event) {
            // Covered by an erase rule: never stored; its (origin, seq) is kept as erased
            // so peers asking for it get a Skip and a restart does not reopen the hole.
            // Those rows are bounded like events (a flood of covered events cannot grow
            // the table past the store's event limit).
            if self.state.erased_len >= self.limits.events_max {
                self.stats.borrow_mut().refused_full += 1;
                return Err(StoreError::Full {
                    len: self.state.erased_len,
                    max: self.limits.events_max,
                });
            }
            self.begin_write()?;
            self.note_erased(&origin, seq, &id.0)?;
            self.stats.borrow_mut().erased_refused += 1;
            return Ok(Inserted::Erased);
        }
        // System streams (policy bundles, erase requests) are taken past the limit: a full
        // node must still learn of a new policy (a revoked token) and of erasures. They
        // are operators' and admins' events, rare and signed.
        if self.state.len >= self.limits.events_max && !event.stream().is_system() {
            self.stats.borrow_mut().refused_full += 1;
            return Err(StoreError::Full {
                len: self.state.len,
                max: self.limits.events_max,
            });
        }
        self.begin_write()?;
        let hlc = event.hlc().as_u64().cast_signed();
        self.conn
            .prepare_cached(
                "INSERT INTO events (id, origin, seq, stream, key, hlc, envelope, principal) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    &id.0[..],
                    &origin.0[..],
                    seq_sql,
                    event.stream().as_str(),
                    event.key(),
                    hlc,
                    event.encode(),
                    event.security().principal,
                ])
            })
            .map_err(backend)?;
        self.tx_writes += 1;
        self.state.len += 1;
        self.state.note(origin, seq);
        self.cache.get_mut().put((origin, seq), event);
        self.stats.get_mut().inserts += 1;
        Ok(Inserted::New)
    }

    fn holds(&self, r: &EventRef) -> bool {
        let (origin, seq) = (r.origin, r.seq);
        // Exact ranges answer "not stored" from memory: a new event (the common case on the
        // publish path) costs no probe of the id index, a random read on a large store.
        if !self.state.lossy.contains(&origin)
            && !self
                .state
                .ranges
                .get(&origin)
                .is_some_and(|r| r.contains(seq))
        {
            return false;
        }
        self.contains(&r.id)
    }

    fn contains(&self, id: &EventId) -> bool {
        self.conn
            .prepare_cached("SELECT 1 FROM events WHERE id = ?1")
            .and_then(|mut s| s.exists([&id.0[..]]))
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, "store lookup failed");
                false
            })
    }

    /// A failed query is an error (counted in `query_errors`): the core stops delivering
    /// the origin before the number and reads it again at its next poll, where answering
    /// "not stored", as this did, passed the event over for good. A row that reads but is
    /// not a valid event is a miss, logged and counted in `corrupt_rows`.
    fn get(&self, origin: &OriginKey, seq: u64) -> Result<Option<Arc<Event>>, StoreError> {
        let key = (*origin, seq);
        if let Some(event) = self.cache.borrow_mut().get(&key) {
            self.stats.borrow_mut().cache_hits += 1;
            return Ok(Some(event).filter(|e| !self.hidden_by_erase(e)));
        }
        match self.get_row(origin, seq) {
            Ok(Ok(Some(event))) => {
                let event = Some(event).filter(|e| !self.hidden_by_erase(e));
                if let Some(event) = &event {
                    self.cache.borrow_mut().put(key, event.clone());
                }
                Ok(event)
            }
            Ok(Ok(None)) => Ok(None),
            Ok(Err(what)) => {
                self.stats.borrow_mut().corrupt_rows += 1;
                tracing::error!(%origin, seq, error = %what, "stored event unreadable");
                Ok(None)
            }
            Err(e) => {
                let errors = self.query_failed(true);
                if logged_failure(errors) {
                    tracing::warn!(
                        %origin, seq, error = %e, errors,
                        "reading a stored event failed; its origin's delivery waits for it (if delivery asked)"
                    );
                }
                Err(StoreError::Backend(format!(
                    "reading the event of {origin} at {seq}: {e}"
                )))
            }
        }
    }

    /// One query on the `(origin, seq)` index instead of a `get` per number: ordered
    /// delivery steps over a hole taken as lost, whatever its length, in one call. A failed
    /// query is an error (counted in `query_errors`): the core stops delivering the origin
    /// there and asks again at its next poll, so it never passes over a stored event and
    /// never steps number by number across a hole (one past a wall-clock floor spans
    /// 10^15 numbers; answering the next number, as this did, held the driver thread).
    fn next_stored(
        &self,
        origin: &OriginKey,
        after: u64,
        upto: u64,
    ) -> Result<Option<u64>, StoreError> {
        let Some(from) = after.checked_add(1) else {
            return Ok(None);
        };
        if from > upto {
            return Ok(None);
        }
        // Numbers past SQLite's signed range are never stored (`SEQ_MAX`).
        let Ok(after_sql) = i64::try_from(after) else {
            return Ok(None);
        };
        let upto_sql = i64::try_from(upto).unwrap_or(i64::MAX);
        let next: rusqlite::Result<Option<i64>> = self
            .conn
            .prepare_cached(
                "SELECT MIN(seq) FROM events WHERE origin = ?1 AND seq > ?2 AND seq <= ?3",
            )
            .and_then(|mut s| {
                s.query_row(params![&origin.0[..], after_sql, upto_sql], |r| r.get(0))
            });
        match next {
            Ok(next) => Ok(next.and_then(|n| u64::try_from(n).ok())),
            Err(e) => {
                let errors = self.query_failed(false);
                if logged_failure(errors) {
                    tracing::warn!(
                        %origin, after, error = %e, errors,
                        "finding the next stored event failed; delivery of the origin waits"
                    );
                }
                Err(StoreError::Backend(format!(
                    "finding the next stored event of {origin} after {after}: {e}"
                )))
            }
        }
    }

    /// The part of the run a reader thread read ahead for the request being answered
    /// (`store/ahead.rs`), then the rest with one query ([`read_run`]) and the signatures
    /// of the rows the cache does not hold checked as a batch: read number by number, each
    /// row cost its own query and a single verification, and an anti-entropy answer of a
    /// few thousand old events (a far peer catching up) held the driver thread for that
    /// long. Rows read here are not put in the cache: a transfer's old events would push
    /// out the recent ones pushes and GRAFTs read.
    fn get_run(
        &self,
        origin: &OriginKey,
        first: u64,
        last: u64,
        bytes_max: usize,
    ) -> Vec<Arc<Event>> {
        // What a reader thread read ahead for the request being answered (`store/ahead.rs`),
        // then the rest of the run from the rows.
        let (mut out, rest) = self.read_ahead_part(origin, first, last, bytes_max);
        let used: usize = out.iter().map(|e| answer_len(e.signed_bytes().len())).sum();
        let Some(first) = rest.filter(|_| used < bytes_max) else {
            out.retain(|e| !self.hidden_by_erase(e));
            return out;
        };
        let bytes_max = bytes_max - used;
        match read_run(
            &self.conn,
            origin,
            (first, last),
            bytes_max,
            Some(&self.cache),
        ) {
            Ok(read) => {
                let mut stats = self.stats.borrow_mut();
                stats.cache_hits += read.cache_hits;
                stats.corrupt_rows += read.corrupt_rows;
                out.extend(read.events);
            }
            Err(e) => {
                // The query itself failed: number by number, each logged and counted there.
                tracing::error!(%origin, first, last, error = %e, "store run lookup failed");
                // Callers keep runs short (an answer's batch); a run named past that is
                // not walked number by number for ever.
                let end = last
                    .min(SEQ_MAX)
                    .min(first.saturating_add(RUN_FALLBACK_LEN_MAX));
                out.extend(within_bytes(
                    (first..=end).filter_map(|seq| self.get(origin, seq).ok().flatten()),
                    bytes_max,
                ));
            }
        }
        // An answer leaves out what an erase still being removed covers, as it leaves out
        // what an erase removed.
        out.retain(|e| !self.hidden_by_erase(e));
        out
    }

    fn ranges(&self, origin: &OriginKey) -> Option<&SeqRanges> {
        self.state.ranges.get(origin)
    }

    fn void(&mut self, origin: OriginKey, seq: u64, id: EventId) -> Result<(), StoreError> {
        i64::try_from(seq)
            .map_err(|_| StoreError::Backend(format!("seq {seq} is over the limit {SEQ_MAX}")))?;
        // Not bounded by `events_max` as erased rows are: a voided number is one this
        // node signed itself, and publishes are refused before signing while the store
        // is full (`Api::store_full`), so only the few that raced the limit land here.
        self.begin_write()?;
        self.note_erased(&origin, seq, &id.0)
    }

    fn gone(&self, origin: &OriginKey, seq: u64) -> bool {
        self.erased(origin, seq)
            || (self
                .state
                .expired_floor
                .get(origin)
                .is_some_and(|floor| seq <= *floor)
                && !self.holds_number(origin, seq))
    }

    fn erased(&self, origin: &OriginKey, seq: u64) -> bool {
        // Still stored, covered by an erase being removed pass by pass: erased for good
        // already as far as a peer asking is concerned (it gets a Skip, and its ordered
        // delivery of the origin does not wait for the pass).
        if !self.erase_pending.is_empty() && self.pending_covers(origin, seq) {
            return true;
        }
        // Expired by retention (`store/retention.rs`): answered like an erased number. A
        // range may cover numbers still held: those are not expired (the core asks after
        // a failed `get`, which an unreadable row or another id at the number also gives).
        if self.expired_covers(origin, seq) {
            return !self.holds_number(origin, seq);
        }
        let Ok(seq_sql) = i64::try_from(seq) else {
            return false;
        };
        self.conn
            .prepare_cached("SELECT 1 FROM erased WHERE origin = ?1 AND seq = ?2")
            .and_then(|mut s| s.exists(params![&origin.0[..], seq_sql]))
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, "store lookup failed");
                false
            })
    }

    fn origins(&self) -> Vec<OriginKey> {
        self.state.ranges.keys().copied().collect()
    }

    /// Read from the delivery log, which holds every event the node delivered: delivery is
    /// in sequence order per origin (an event delivered late, after a contradicted Skip, is
    /// below the cursor anyway), so the highest logged sequence number of the origin is its
    /// cursor, and stored events above it (waiting above a gap at a crash) are still to be
    /// delivered. An erase removes an event from both tables. `None` only when the query
    /// fails (the node then takes every stored event as delivered).
    fn delivered(&self, origin: &OriginKey) -> Option<u64> {
        // Down the (origin, seq) index from the top: the newest events are the ones most
        // likely logged, so this stops at once instead of joining every event of the origin.
        let max: Option<i64> = self
            .conn
            .prepare_cached(
                "SELECT seq FROM events e WHERE origin = ?1 \
                 AND EXISTS (SELECT 1 FROM log WHERE id = e.id) ORDER BY seq DESC LIMIT 1",
            )
            .and_then(|mut s| s.query_row([&origin.0[..]], |r| r.get(0)).optional())
            .ok()?;
        let logged = max.map_or(0, |m| u64::try_from(m).unwrap_or(0));
        // Expired numbers were delivered (logged) before retention removed them; a range
        // ends at an expired number. Without this a restart would walk them again.
        let expired = self
            .state
            .expired
            .get(origin)
            .and_then(|m| m.last_key_value())
            .map_or(0, |(_, hi)| *hi);
        Some(logged.max(expired))
    }

    fn waiting_skips(&self) -> Vec<(OriginKey, u64, OriginKey)> {
        let rows = self
            .conn
            .prepare_cached("SELECT origin, seq, sender FROM waiting_skips")
            .and_then(|mut s| {
                s.query_map([], |r| {
                    Ok((
                        r.get::<_, Vec<u8>>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, Vec<u8>>(2)?,
                    ))
                })?
                .collect::<Result<Vec<_>, _>>()
            });
        let rows = match rows {
            Ok(rows) => rows,
            Err(e) => {
                // The node then takes them as final, as a store that keeps none would.
                tracing::error!(error = %e, "reading waiting Skips failed");
                return Vec::new();
            }
        };
        rows.into_iter()
            .filter_map(|(origin, seq, by)| {
                let parsed = (
                    key32(&origin, "origin").ok(),
                    u64::try_from(seq).ok(),
                    key32(&by, "sender").ok(),
                );
                let (Some(origin), Some(seq), Some(by)) = parsed else {
                    tracing::error!("corrupt waiting Skip row skipped");
                    return None;
                };
                Some((OriginKey(origin), seq, OriginKey(by)))
            })
            .collect()
    }

    fn put_waiting_skip(&mut self, origin: &OriginKey, seq: u64, by: &OriginKey) {
        let Ok(seq_sql) = i64::try_from(seq) else {
            return;
        };
        let result = self.begin_write().and_then(|()| {
            self.conn
                .prepare_cached(
                    "INSERT OR REPLACE INTO waiting_skips (origin, seq, sender) \
                     VALUES (?1, ?2, ?3)",
                )
                .and_then(|mut s| s.execute(params![&origin.0[..], seq_sql, &by.0[..]]))
                .map_err(backend)
        });
        match result {
            Ok(_) => self.tx_writes += 1,
            // Kept in memory only: a restart would take it as final.
            Err(e) => tracing::error!(error = %e, "recording a waiting Skip failed"),
        }
    }

    fn take_waiting_skip(&mut self, origin: &OriginKey, seq: u64) {
        let Ok(seq_sql) = i64::try_from(seq) else {
            return;
        };
        let result = self.begin_write().and_then(|()| {
            self.conn
                .prepare_cached("DELETE FROM waiting_skips WHERE origin = ?1 AND seq = ?2")
                .and_then(|mut s| s.execute(params![&origin.0[..], seq_sql]))
                .map_err(backend)
        });
        match result {
            Ok(_) => self.tx_writes += 1,
            // The row stays; a restart reloads it, and the node drops it if it no longer
            // applies (the number is then not in the rebuilt seen-set) or it waits again.
            Err(e) => tracing::error!(error = %e, "clearing a waiting Skip failed"),
        }
    }

    fn lost_open(&self) -> Vec<(OriginKey, Vec<(u64, u64)>)> {
        let rows = self
            .conn
            .prepare_cached("SELECT origin, lo, hi FROM lost_open ORDER BY origin, lo")
            .and_then(|mut s| {
                s.query_map([], |r| {
                    Ok((
                        r.get::<_, Vec<u8>>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                })?
                .collect::<Result<Vec<_>, _>>()
            });
        let rows = match rows {
            Ok(rows) => rows,
            Err(e) => {
                // The numbers then close, as with a store that keeps none.
                tracing::error!(error = %e, "reading the numbers open to a late copy failed");
                return Vec::new();
            }
        };
        let mut out: Vec<(OriginKey, Vec<(u64, u64)>)> = Vec::new();
        for (origin, lo, hi) in rows {
            let parsed = (
                key32(&origin, "origin").ok(),
                u64::try_from(lo).ok().filter(|&lo| lo > 0),
                u64::try_from(hi).ok(),
            );
            let (Some(origin), Some(lo), Some(hi)) = parsed else {
                tracing::error!("corrupt row of numbers open to a late copy skipped");
                continue;
            };
            if hi < lo {
                tracing::error!("corrupt row of numbers open to a late copy skipped");
                continue;
            }
            let origin = OriginKey(origin);
            match out.last_mut() {
                Some((o, ranges)) if *o == origin => ranges.push((lo, hi)),
                _ => out.push((origin, vec![(lo, hi)])),
            }
        }
        out
    }

    fn set_lost_open(&mut self, origin: &OriginKey, ranges: &[(u64, u64)]) {
        // One savepoint: the origin's rows are replaced whole or not at all.
        let result = self.in_savepoint("lost_open", |store| {
            store
                .conn
                .prepare_cached("DELETE FROM lost_open WHERE origin = ?1")
                .and_then(|mut s| s.execute(params![&origin.0[..]]))
                .map_err(backend)?;
            let mut insert = store
                .conn
                .prepare_cached("INSERT INTO lost_open (origin, lo, hi) VALUES (?1, ?2, ?3)")
                .map_err(backend)?;
            for &(lo, hi) in ranges {
                // Numbers are stored up to SEQ_MAX (i64): a range reaching past it keeps
                // its part below, one wholly past it closes at a restart.
                let (Ok(lo), Ok(hi)) = (i64::try_from(lo), i64::try_from(hi.min(SEQ_MAX))) else {
                    continue;
                };
                insert
                    .execute(params![&origin.0[..], lo, hi])
                    .map_err(backend)?;
            }
            Ok(ranges.len().max(1))
        });
        match result {
            Ok(rows) => self.tx_writes += rows,
            // As before the call: a restart reloads the origin's earlier rows (numbers
            // closed since are then open again, and their copies duplicates).
            Err(e) => tracing::error!(error = %e, "recording numbers open to a late copy failed"),
        }
    }

    fn len(&self) -> usize {
        self.state.len
    }

    fn clear(&mut self) {
        // `log` keeps its AUTOINCREMENT counter: positions are never reused, so a reader's
        // saved cursor never points at a different event.
        let result = self.begin_write().and_then(|()| {
            self.conn
                .execute_batch(
                    "DELETE FROM events; DELETE FROM log; DELETE FROM cursors; \
                     DELETE FROM peers; DELETE FROM meta; DELETE FROM ce_dedup; \
                     DELETE FROM erased; DELETE FROM erase_rules; DELETE FROM erase_pending; \
                     DELETE FROM waiting_skips; DELETE FROM lost_open; \
                     DELETE FROM expired; DELETE FROM stream_bytes; DELETE FROM expired_floor; \
                     DELETE FROM derived_from; DELETE FROM retract_pending; DELETE FROM retracted;",
                )
                .map_err(backend)
        });
        match result {
            Ok(()) => {
                self.tx_writes += 1;
                self.state = Loaded::default();
                self.erase_rules.clear();
                self.erase_pending.clear();
                self.cache.get_mut().clear();
            }
            Err(e) => {
                tracing::error!(error = %e, "store clear failed");
                self.reload();
            }
        }
    }
}

/// A read-only handle for readers on other threads (HTTP). Its own connection, with
/// `query_only`; every query sees one committed snapshot. `Send`, not `Sync`: open one per
/// worker or share it behind a mutex.
#[derive(Debug)]
pub(crate) struct StoreReader {
    conn: Connection,
}

fn ce_dedup_lookup(
    conn: &Connection,
    principal: &str,
    source: &str,
    ce_id: &str,
) -> Result<Option<EventId>, StoreError> {
    // An entry whose event a pending erase hides names nothing a client may be pointed
    // to: the publish is taken as new (the entry is then replaced, `ce_dedup_put`).
    let id: Option<Vec<u8>> = conn
        .prepare_cached(concat!(
            "SELECT d.event_id FROM ce_dedup d WHERE d.principal = ?1 AND d.source = ?2 \
             AND d.ce_id = ?3 AND NOT EXISTS (SELECT 1 FROM events e \
             WHERE e.id = d.event_id AND NOT ",
            not_erasing!("e"),
            ")"
        ))
        .and_then(|mut s| {
            s.query_row([principal, source, ce_id], |r| r.get(0))
                .optional()
        })
        .map_err(backend)?;
    id.map(|id| key32(&id, "ce_dedup event_id").map(EventId))
        .transpose()
}

impl StoreReader {
    /// A metadata value, as committed (`SqliteStore::meta_get`).
    pub(crate) fn meta_get(&self, k: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.conn
            .prepare_cached("SELECT v FROM meta WHERE k = ?1")
            .and_then(|mut s| s.query_row([k], |r| r.get(0)).optional())
            .map_err(backend)
    }

    /// The connection (committed data only), for the keyed tables' reads.
    pub(crate) fn conn(&self) -> &Connection {
        &self.conn
    }

    /// The event a CloudEvent (principal, source, id) was published as, if committed.
    pub(crate) fn ce_dedup_get(
        &self,
        principal: &str,
        source: &str,
        ce_id: &str,
    ) -> Result<Option<EventId>, StoreError> {
        ce_dedup_lookup(&self.conn, principal, source, ce_id)
    }

    /// Opens the store in `dir` for reading. The writer must have created it.
    pub(crate) fn open(dir: &Path) -> Result<Self, OpenError> {
        let path = db_path(dir);
        let conn = connect(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.pragma_update(None, "query_only", true)
            .map_err(|source| OpenError::Sqlite {
                path: path.clone(),
                source,
            })?;
        if schema_version(&conn, &path)? == 0 {
            return Err(OpenError::NotInitialized { path });
        }
        Ok(Self { conn })
    }

    /// Up to `limit` (at most [`READ_LOG_LEN_MAX`], and about [`READ_LOG_BYTES_MAX`] bytes)
    /// log entries of `stream` after position `after`, ascending.
    pub(crate) fn read_log(
        &self,
        stream: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<LogEntry>, StoreError> {
        self.read_log_within(stream, after, limit, READ_LOG_BYTES_MAX)
    }

    /// [`StoreReader::read_log`], stopping after about `bytes_max` envelope bytes (at least
    /// one entry) instead of [`READ_LOG_BYTES_MAX`].
    pub(crate) fn read_log_within(
        &self,
        stream: &str,
        after: u64,
        limit: usize,
        bytes_max: usize,
    ) -> Result<Vec<LogEntry>, StoreError> {
        let Ok(after) = i64::try_from(after) else {
            return Ok(Vec::new());
        };
        self.read_log_rows(READ_AFTER_SQL, stream, after, limit, bytes_max)
    }

    /// Up to `limit` (at most [`READ_LOG_LEN_MAX`], and about [`READ_LOG_BYTES_MAX`] bytes)
    /// log entries of `stream` before position `before`, newest first (a subscription's
    /// `last=N`).
    pub(crate) fn read_log_before(
        &self,
        stream: &str,
        before: u64,
        limit: usize,
    ) -> Result<Vec<LogEntry>, StoreError> {
        let before = i64::try_from(before).unwrap_or(i64::MAX);
        self.read_log_rows(READ_BEFORE_SQL, stream, before, limit, READ_LOG_BYTES_MAX)
    }

    /// The rows of a log query taking (stream, position bound, limit).
    fn read_log_rows(
        &self,
        sql: &str,
        stream: &str,
        bound: i64,
        limit: usize,
        bytes_max: usize,
    ) -> Result<Vec<LogEntry>, StoreError> {
        let limit = limit.min(READ_LOG_LEN_MAX);
        let bytes_max = bytes_max.min(READ_LOG_BYTES_MAX);
        let mut stmt = self.conn.prepare_cached(sql).map_err(backend)?;
        let limit_sql = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut rows = stmt
            .query(params![stream, bound, limit_sql])
            .map_err(backend)?;
        let mut out = Vec::new();
        let mut bytes = 0usize;
        while let Some(row) = rows.next().map_err(backend)? {
            let pos = pos_from_sql(row.get(0).map_err(backend)?)?;
            let envelope: Vec<u8> = row.get(1).map_err(backend)?;
            bytes = bytes.saturating_add(envelope.len());
            out.push(LogEntry { pos, envelope });
            if bytes >= bytes_max {
                break;
            }
        }
        debug_assert!(out.len() <= limit);
        Ok(out)
    }

    /// Up to `limit` (at most [`READ_LOG_LEN_MAX`], about `bytes_max` bytes) entries of the
    /// streams `pattern` matches after position `after`, ascending, scanning at most
    /// `scan_max` entries of the whole log. The node's own `_weft.*` streams never match
    /// (they are read by name, by admins). Hand-written rather than one SQL query: a NATS
    /// pattern is not a SQL predicate, and filtering on (position, stream) before joining
    /// the events reads no envelope of another stream.
    pub(crate) fn read_log_matching(
        &self,
        pattern: &weft_fabric::StreamPattern,
        after: u64,
        limit: usize,
        bytes_max: usize,
        scan_max: usize,
    ) -> Result<MatchedPage, StoreError> {
        let bound = i64::try_from(after).unwrap_or(i64::MAX);
        self.matching(LOG_AFTER_SQL, pattern, bound, limit, bytes_max, scan_max)
            .map(|mut p| {
                if p.scanned_to == 0 {
                    p.scanned_to = after;
                }
                p
            })
    }

    /// [`StoreReader::read_log_matching`] backwards from `before`, newest first (a
    /// subscription's `last=N` over a pattern).
    pub(crate) fn read_log_matching_before(
        &self,
        pattern: &weft_fabric::StreamPattern,
        before: u64,
        limit: usize,
        scan_max: usize,
    ) -> Result<MatchedPage, StoreError> {
        let bound = i64::try_from(before).unwrap_or(i64::MAX);
        self.matching(
            LOG_BEFORE_SQL,
            pattern,
            bound,
            limit,
            READ_LOG_BYTES_MAX,
            scan_max,
        )
    }

    fn matching(
        &self,
        sql: &str,
        pattern: &weft_fabric::StreamPattern,
        bound: i64,
        limit: usize,
        bytes_max: usize,
        scan_max: usize,
    ) -> Result<MatchedPage, StoreError> {
        let limit = limit.min(READ_LOG_LEN_MAX);
        let bytes_max = bytes_max.min(READ_LOG_BYTES_MAX);
        let scan = i64::try_from(scan_max.max(1)).unwrap_or(i64::MAX);
        let mut stmt = self.conn.prepare_cached(sql).map_err(backend)?;
        let mut rows = stmt.query(params![bound, scan]).map_err(backend)?;
        let mut at = self.conn.prepare_cached(LOG_AT_SQL).map_err(backend)?;
        let mut page = MatchedPage::default();
        let mut scanned = 0usize;
        let mut bytes = 0usize;
        while let Some(row) = rows.next().map_err(backend)? {
            scanned += 1;
            page.scanned = scanned;
            let pos: i64 = row.get(0).map_err(backend)?;
            let stream: String = row.get(1).map_err(backend)?;
            page.scanned_to = pos_from_sql(pos)?;
            let Ok(name) = weft_fabric::StreamName::new(stream) else {
                continue;
            };
            if name.is_system() || !pattern.matches(&name) {
                continue;
            }
            let envelope: Option<Vec<u8>> = at
                .query_row([pos], |r| r.get(0))
                .optional()
                .map_err(backend)?;
            let Some(envelope) = envelope else {
                continue;
            };
            bytes = bytes.saturating_add(envelope.len());
            page.entries.push(LogEntry {
                pos: pos_from_sql(pos)?,
                envelope,
            });
            if page.entries.len() >= limit || bytes >= bytes_max {
                return Ok(page);
            }
        }
        page.exhausted = scanned < scan_max.max(1);
        Ok(page)
    }

    /// The last log position of `stream` (0 if it has none).
    #[cfg(test)]
    pub(crate) fn last_pos(&self, stream: &str) -> Result<u64, StoreError> {
        let pos: Option<i64> = self
            .conn
            .prepare_cached("SELECT MAX(pos) FROM log WHERE stream = ?1")
            .and_then(|mut s| s.query_row([stream], |r| r.get(0)))
            .map_err(backend)?;
        pos.map_or(Ok(0), pos_from_sql)
    }

    /// The highest sequence number of `origin` stored or erased (0 if none), as
    /// [`SqliteStore::max_seq`] answers it, from committed rows.
    pub(crate) fn max_seq(&self, origin: &OriginKey) -> Result<u64, StoreError> {
        max_seq_in(&self.conn, origin)
    }

    /// The envelope of event `id`, if stored (and not covered by an erase still being
    /// removed).
    pub(crate) fn event_by_id(&self, id: &EventId) -> Result<Option<Vec<u8>>, StoreError> {
        self.conn
            .prepare_cached(concat!(
                "SELECT envelope FROM events WHERE id = ?1 AND ",
                not_erasing!("events")
            ))
            .and_then(|mut s| s.query_row([&id.0[..]], |r| r.get(0)).optional())
            .map_err(backend)
    }

    /// Number of committed events (counts an index: linear, cheap per call).
    #[cfg(test)]
    pub(crate) fn count(&self) -> Result<u64, StoreError> {
        count(&self.conn, "events").map(|n| n as u64)
    }

    /// The highest committed position in the delivery log (0 when empty).
    pub(crate) fn log_max_pos(&self) -> Result<u64, StoreError> {
        log_max_pos_in(&self.conn)
    }

    /// A durable cursor: its stream and log position.
    pub(crate) fn cursor_get(&self, name: &str) -> Result<Option<(String, u64)>, StoreError> {
        cursor_get(&self.conn, name)
    }

    /// The durable cursors whose names start with `prefix` (one owner's: `OWNER:`), in
    /// name order, at most `limit`: (name, stream, position).
    pub(crate) fn cursors_with_prefix(
        &self,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<(String, String, u64)>, StoreError> {
        // The names from `prefix` up to the prefix with its last byte raised (':' + 1 is
        // ';'): an index range of the primary key, not a scan.
        let mut end = prefix.as_bytes().to_vec();
        if let Some(last) = end.last_mut() {
            *last = last.saturating_add(1);
        }
        let end = String::from_utf8_lossy(&end).into_owned();
        let rows: Vec<(String, String, i64)> = self
            .conn
            .prepare_cached(
                "SELECT name, stream, pos FROM cursors WHERE name >= ?1 AND name < ?2 \
                 ORDER BY name LIMIT ?3",
            )
            .and_then(|mut s| {
                s.query_map(params![prefix, end, limit as i64], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })?
                .collect()
            })
            .map_err(backend)?;
        rows.into_iter()
            .map(|(name, stream, pos)| Ok((name, stream, pos_from_sql(pos)?)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use weft_fabric::mesh::MemStore;
    use weft_fabric::{EventDraft, Hlc, Payload, Residency, SecurityContext, Signer, StreamName};

    fn event(signer: u8, stream: &str, seq: u64, payload: &[u8]) -> Arc<Event> {
        event_as(signer, stream, seq, payload, ("acme", "orders-service"))
    }

    /// [`event`] published as `principal` of `tenant`.
    fn event_as(
        signer: u8,
        stream: &str,
        seq: u64,
        payload: &[u8],
        (tenant, principal): (&str, &str),
    ) -> Arc<Event> {
        let draft = EventDraft {
            stream: StreamName::new(stream).unwrap(),
            key: Some(b"k".to_vec()),
            seq,
            hlc: Hlc::new(1_764_331_200_000 + seq, 0).unwrap(),
            security: SecurityContext {
                tenant: tenant.into(),
                principal: principal.into(),
                classification: "internal".into(),
                residency: Residency::Unrestricted,
                scopes: BTreeSet::new(),
                policy_epoch: 1,
            },
            content_type: "application/json".into(),
            payload: Payload::Clear(payload.to_vec()),
            trace: None,
        };
        Arc::new(Signer::from_secret(&[signer; 32]).sign(draft).unwrap())
    }

    /// A store in a new directory holding events 1..=`n` of one origin (signer 1, stream
    /// `a`) with `payload`, committed and closed; the directory and the origin.
    fn stored_run(n: u64, payload: &[u8]) -> (tempfile::TempDir, OriginKey) {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path());
        for seq in 1..=n {
            store.insert(event(1, "a", seq, payload)).unwrap();
        }
        store.commit().unwrap();
        (dir, event(1, "a", 1, payload).origin())
    }

    fn open(dir: &Path) -> SqliteStore {
        SqliteStore::open(dir, StoreLimits::default()).unwrap()
    }

    /// The store holds events in clear: a new data directory is its user's only (0700) and
    /// so are the database and its WAL (0600), whatever the umask (022 made them readable
    /// by every user of the machine).
    #[cfg(unix)]
    #[test]
    fn a_new_store_is_readable_by_its_user_only() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data").join("a");
        let mut store = open(&data);
        store.insert(event(1, "a", 1, b"x")).unwrap();
        store.commit().unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&data), 0o700);
        assert_eq!(mode(&dir.path().join("data")), 0o700);
        for file in [DB_FILE.to_string(), format!("{DB_FILE}-wal")] {
            assert_eq!(mode(&data.join(&file)), 0o600, "{file}");
        }
        drop(store);
        // A store others may read (a backup restored with `cp`) is set back to 0600.
        std::fs::set_permissions(data.join(DB_FILE), std::fs::Permissions::from_mode(0o644))
            .unwrap();
        drop(open(&data));
        assert_eq!(mode(&data.join(DB_FILE)), 0o600);
    }

    /// What the node held before a publish: the publish's own new numbers left out,
    /// erased numbers counted.
    #[test]
    fn max_seq_excluding_leaves_out_a_publishs_own_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path());
        let origin = event(1, "orders", 1, b"").origin();
        for seq in 1..=5 {
            store.insert(event(1, "orders", seq, b"x")).unwrap();
        }
        store.commit().unwrap();
        let skip = |s: &[u64]| s.iter().copied().collect::<BTreeSet<u64>>();
        assert_eq!(store.max_seq_excluding(&origin, &skip(&[])), Ok(5));
        assert_eq!(store.max_seq_excluding(&origin, &skip(&[4, 5])), Ok(3));
        assert_eq!(
            store.max_seq_excluding(&origin, &skip(&[1, 2, 3, 4, 5])),
            Ok(0)
        );
        assert_eq!(store.max_seq(&origin), Ok(5));
    }

    #[test]
    fn insert_duplicate_equivocation_full() {
        let dir = tempfile::tempdir().unwrap();
        let limits = StoreLimits {
            events_max: 2,
            ..StoreLimits::default()
        };
        let mut store = SqliteStore::open(dir.path(), limits).unwrap();
        let a = event(1, "orders", 1, b"a");
        assert_eq!(store.insert(a.clone()), Ok(Inserted::New));
        assert_eq!(store.insert(a.clone()), Ok(Inserted::Duplicate));
        assert!(store.contains(&a.id()));
        let other = event(1, "orders", 1, b"other");
        assert!(!store.contains(&other.id()));
        assert_eq!(
            store.insert(other),
            Err(StoreError::Equivocation {
                origin: a.origin(),
                seq: 1
            })
        );
        assert_eq!(store.insert(event(1, "orders", 2, b"b")), Ok(Inserted::New));
        assert_eq!(
            store.insert(event(1, "orders", 3, b"c")),
            Err(StoreError::Full { len: 2, max: 2 })
        );
        assert_eq!(store.len(), 2);
        assert_eq!(store.get(&a.origin(), 1).unwrap().as_deref(), Some(&*a));
        assert_eq!(store.max_seq(&a.origin()), Ok(2));
        let stats = store.stats();
        assert_eq!(
            (stats.inserts, stats.duplicates, stats.equivocations),
            (2, 1, 1)
        );
        assert_eq!(store.commit(), Ok(2));
        assert_eq!(store.commit(), Ok(0));
        store.check_invariants().unwrap();
    }

    #[test]
    fn state_reloads_and_uncommitted_writes_vanish() {
        let dir = tempfile::tempdir().unwrap();
        let (o1, o2) = (
            event(1, "a", 1, b"").origin(),
            event(2, "a", 1, b"").origin(),
        );
        {
            let mut store = open(dir.path());
            for seq in [1, 2, 3, 5] {
                store.insert(event(1, "a", seq, b"x")).unwrap();
            }
            store.insert(event(2, "a", 1, b"x")).unwrap();
            store.cursor_set("o:c", "a", 3).unwrap();
            store.commit().unwrap();
            // A crash before commit: these are lost.
            store.insert(event(1, "a", 4, b"x")).unwrap();
            store.insert(event(3, "a", 1, b"x")).unwrap();
            store.cursor_set("o:c", "a", 9).unwrap();
            store.meta_set("m", b"v").unwrap();
            assert_eq!(store.len(), 7);
        }
        let store = open(dir.path());
        store.check_invariants().unwrap();
        assert_eq!(store.len(), 5);
        assert_eq!(store.origins(), {
            let mut v = vec![o1, o2];
            v.sort();
            v
        });
        let r1: Vec<_> = store.ranges(&o1).unwrap().iter().collect();
        assert_eq!(r1, vec![(1, 3), (5, 5)]);
        assert_eq!(store.ranges(&o2).unwrap().contiguous(), 1);
        assert!(store.get(&o1, 4).unwrap().is_none());
        assert!(store.get(&o1, 5).unwrap().is_some());
        assert_eq!(store.cursor_get("o:c"), Ok(Some(("a".into(), 3))));
        assert_eq!(store.meta_get("m"), Ok(None));
    }

    /// The delivery cursor a restarted node resumes from is read from the log: the highest
    /// logged sequence number of the origin, however far the store holds beyond it (events
    /// waiting above a gap were stored, not delivered); 0 when nothing of it was delivered.
    #[test]
    fn the_delivery_cursor_is_read_from_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let (o1, o2) = (
            event(1, "a", 1, b"").origin(),
            event(2, "a", 1, b"").origin(),
        );
        {
            let mut store = open(dir.path());
            for seq in [1, 2, 4, 5] {
                let e = event(1, "a", seq, b"x");
                store.insert(e.clone()).unwrap();
                if seq <= 2 {
                    store.append_log(&e).unwrap();
                }
            }
            store.insert(event(2, "a", 1, b"x")).unwrap();
            store.commit().unwrap();
        }
        let store = open(dir.path());
        assert_eq!(store.delivered(&o1), Some(2));
        assert_eq!(store.delivered(&o2), Some(0));
    }

    /// A failed query for the next stored event is an error to the core (which pauses the
    /// origin's delivery), counted, never an answer: the old answer (the very next number)
    /// made delivery step a hole number by number.
    #[test]
    fn a_failed_next_stored_query_is_an_error_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path());
        for seq in [1, 9] {
            store.insert(event(1, "a", seq, b"x")).unwrap();
        }
        store.commit().unwrap();
        let origin = event(1, "a", 1, b"").origin();
        assert_eq!(store.next_stored(&origin, 1, u64::MAX), Ok(Some(9)));
        store
            .conn
            .execute_batch("ALTER TABLE events RENAME TO events_gone")
            .unwrap();
        let err = store.next_stored(&origin, 1, u64::MAX).unwrap_err();
        assert!(
            err.to_string().contains("finding the next stored event"),
            "{err}"
        );
        assert_eq!(store.stats().query_errors, 1);
        store
            .conn
            .execute_batch("ALTER TABLE events_gone RENAME TO events")
            .unwrap();
        assert_eq!(store.next_stored(&origin, 1, u64::MAX), Ok(Some(9)));
        assert_eq!(store.stats().query_errors, 1);
    }

    /// A failed query for one event is an error to the core (which stops the origin's
    /// delivery before it and reads it again at the next poll), counted in `query_errors`;
    /// a row that reads but is corrupt stays a counted miss (`corrupt_rows`). Before, both
    /// were misses, and delivery passed over an event whose read had failed once.
    #[test]
    fn a_failed_read_of_an_event_is_an_error_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let e = event(1, "a", 1, b"x");
        let origin = e.origin();
        {
            let mut store = open(dir.path());
            store.insert(e.clone()).unwrap();
            store.commit().unwrap();
        }
        // Reopened: the event is not in the cache, so `get` reads the row.
        let store = open(dir.path());
        store
            .conn
            .execute_batch("ALTER TABLE events RENAME TO events_gone")
            .unwrap();
        let err = store.get(&origin, 1).unwrap_err();
        assert!(err.to_string().contains("reading the event of"), "{err}");
        assert_eq!(store.stats().query_errors, 1);
        assert_eq!(store.stats().corrupt_rows, 0);
        store
            .conn
            .execute_batch("ALTER TABLE events_gone RENAME TO events")
            .unwrap();
        assert_eq!(store.get(&origin, 1).unwrap().map(|e| e.id()), Some(e.id()));
        assert_eq!(store.stats().query_errors, 1);
    }

    #[test]
    fn erase_removes_rows_refuses_later_copies_and_survives_reopen() {
        use crate::erase::Target;
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path());
        let a = event(1, "orders", 1, b"a");
        let b = event(1, "orders", 2, b"b");
        let other = event(1, "prefs", 3, b"c");
        let origin = a.origin();
        for e in [&a, &b, &other] {
            assert_eq!(store.insert(e.clone()), Ok(Inserted::New));
            store.append_log(e).unwrap();
        }
        store
            .write_conn()
            .unwrap()
            .execute(
                "INSERT INTO ce_dedup VALUES ('p', 's', 'ce-1', ?1)",
                [&a.id().0[..]],
            )
            .unwrap();
        store.state.ce_dedup_len += 1;
        store.commit().unwrap();
        // A key rule whose bound is before the events covers nothing (an erase is not a
        // ban on later writes).
        let key = Target::Key {
            stream: "orders".into(),
            key: b"k".to_vec(),
        };
        assert_eq!(
            store.erase(&key, a.hlc().as_u64() - 1).map(|p| p.events),
            Ok(vec![])
        );
        // Covering both events of the key: both go, the other stream's event stays.
        let bound = weft_fabric::Hlc::new(b.hlc().physical_ms() + 1000, 0)
            .unwrap()
            .as_u64();
        let erased = store.erase(&key, bound).unwrap().events;
        assert_eq!(
            erased.iter().map(|e| e.id).collect::<Vec<_>>(),
            vec![a.id(), b.id()]
        );
        assert_eq!(erased[0].key.as_deref(), Some(&b"k"[..]));
        store.commit().unwrap();
        store.check_invariants().unwrap();
        assert!(!store.contains(&a.id()) && store.get(&origin, 1).unwrap().is_none());
        assert!(store.erased(&origin, 1) && store.erased(&origin, 2));
        assert!(!store.erased(&origin, 3) && store.contains(&other.id()));
        assert_eq!(store.ranges(&origin).map(|r| r.contiguous()), Some(3));
        assert_eq!(store.len(), 1);
        let reader = StoreReader::open(dir.path()).unwrap();
        assert!(reader.read_log("orders", 0, 10).unwrap().is_empty());
        assert_eq!(reader.event_by_id(&a.id()).unwrap(), None);
        assert_eq!(reader.read_log("prefs", 0, 10).unwrap().len(), 1);
        assert_eq!(store.state.ce_dedup_len, 0);
        // Later copies are refused: the erased event itself, and a new event the rule
        // covers (its sequence number is then erased too).
        assert_eq!(store.insert(a.clone()), Ok(Inserted::Erased));
        let late = event(1, "orders", 4, b"late");
        assert!(store.erase_covers(&late));
        assert_eq!(store.insert(late.clone()), Ok(Inserted::Erased));
        assert!(store.erased(&origin, 4) && !store.contains(&late.id()));
        let later = event(1, "orders", 5_000_000, b"after the bound");
        assert!(!store.erase_covers(&later), "stamped after the bound");
        store.commit().unwrap();
        store.check_invariants().unwrap();
        // A restart: the rule, the erased set and the ranges are back; the origin's
        // sequence continues after its erased events.
        drop(store);
        let mut store = open(dir.path());
        store.check_invariants().unwrap();
        assert_eq!(store.ranges(&origin).map(|r| r.contiguous()), Some(4));
        assert!(store.erased(&origin, 4) && store.erase_covers(&late));
        assert_eq!(store.erase_rules_len(), 1);
        assert_eq!(store.max_seq(&origin), Ok(4));
        assert_eq!(store.insert(b.clone()), Ok(Inserted::Erased));
        // A principal rule: every event of the principal, other streams included, never
        // system streams.
        let system = event(1, "_weft.erase", 6, b"{}");
        assert_eq!(store.insert(system.clone()), Ok(Inserted::New));
        // Not a system stream (those are the first token `_weft` exactly): erased.
        let upper = event(1, "_WEFT.profile", 7, b"u");
        assert_eq!(store.insert(upper.clone()), Ok(Inserted::New));
        let principal = Target::Principal {
            principal: "orders-service".into(),
            tenant: String::new(),
        };
        let erased = store.erase(&principal, u64::MAX >> 1).unwrap().events;
        let mut ids: Vec<_> = erased.iter().map(|e| e.id).collect();
        ids.sort();
        let mut want = vec![other.id(), upper.id()];
        want.sort();
        assert_eq!(ids, want);
        assert!(store.contains(&system.id()));
        let wrong_tenant = Target::Principal {
            principal: "orders-service".into(),
            tenant: "globex".into(),
        };
        assert!(
            store
                .erase(&wrong_tenant, u64::MAX >> 1)
                .unwrap()
                .events
                .is_empty()
        );
        store.commit().unwrap();
        store.check_invariants().unwrap();
        assert_eq!(store.stats().erased, 2, "counted since the reopen");
    }

    /// An erase covering more rows than a pass: the first pass goes with the rule, the
    /// rest waits (`erase_pending`); meanwhile every read leaves out what it covers and
    /// nothing else (log pages after and before a position, lookups by id, the core's
    /// `get` and `get_run`, cached or not), the rule refuses new copies, and the pending
    /// erase outlives a restart and finishes where it stopped.
    #[test]
    fn an_erase_larger_than_a_pass_hides_what_it_covers_until_its_last_pass() {
        use crate::erase::Target;
        let dir = tempfile::tempdir().unwrap();
        let limits = StoreLimits {
            erase_pass_max: 3,
            ..StoreLimits::default()
        };
        let mut store = SqliteStore::open(dir.path(), limits.clone()).unwrap();
        // alice of acme (signer 1, eight events), alice of globex (signer 2) and bob of
        // acme (signer 3), interleaved in one stream; a system event of alice's too.
        let alice: Vec<_> = (1..=8)
            .map(|seq| event_as(1, "s", seq, b"a", ("acme", "alice")))
            .collect();
        let globex: Vec<_> = (1..=2)
            .map(|seq| event_as(2, "s", seq, b"g", ("globex", "alice")))
            .collect();
        let bob: Vec<_> = (1..=2)
            .map(|seq| event_as(3, "s", seq, b"b", ("acme", "bob")))
            .collect();
        let system = event_as(1, "_weft.erase", 9, b"{}", ("acme", "alice"));
        let order = [
            &alice[0], &globex[0], &alice[1], &alice[2], &bob[0], &alice[3], &alice[4], &globex[1],
            &alice[5], &bob[1], &alice[6], &alice[7], &system,
        ];
        for e in order {
            assert_eq!(store.insert((*e).clone()), Ok(Inserted::New));
            store.append_log(e).unwrap();
        }
        store.commit().unwrap();
        let kept: Vec<_> = order
            .iter()
            .filter(|e| e.security().principal != "alice" || e.security().tenant != "acme")
            .filter(|e| e.stream().as_str() == "s")
            .map(|e| e.id())
            .collect();
        assert_eq!(kept.len(), 4);
        let target = Target::Principal {
            principal: "alice".into(),
            tenant: "acme".into(),
        };
        // alice's rows in stamp order: her 1st of acme and of globex, her 2nd of acme, ...
        // A pass examines three: two of them hers of acme.
        let first = store.erase(&target, u64::MAX >> 1).unwrap();
        assert!(first.more && first.removed == 2);
        assert_eq!(first.events.len(), 2);
        store.commit().unwrap();
        store.check_invariants().unwrap();
        assert!(store.erasing());
        let reader = StoreReader::open(dir.path()).unwrap();
        let ids = |entries: Vec<LogEntry>| -> Vec<EventId> {
            entries
                .iter()
                .map(|e| weft_fabric::decode(&e.envelope).unwrap().id())
                .collect()
        };
        let check_hidden = |store: &SqliteStore, reader: &StoreReader| {
            assert_eq!(ids(reader.read_log("s", 0, 100).unwrap()), kept);
            // A page is filled past what is hidden: its limit counts events shown.
            assert_eq!(ids(reader.read_log("s", 0, 2).unwrap()), kept[..2]);
            let mut newest_first = kept.clone();
            newest_first.reverse();
            assert_eq!(
                ids(reader.read_log_before("s", u64::MAX, 100).unwrap()),
                newest_first
            );
            assert_eq!(reader.read_log("_weft.erase", 0, 10).unwrap().len(), 1);
            for e in &alice {
                assert_eq!(reader.event_by_id(&e.id()).unwrap(), None);
                assert!(
                    store.get(&e.origin(), e.seq()).unwrap().is_none(),
                    "{}",
                    e.seq()
                );
            }
            assert!(reader.event_by_id(&globex[0].id()).unwrap().is_some());
            assert_eq!(store.get_run(&alice[0].origin(), 1, 9, usize::MAX).len(), 1);
            assert_eq!(
                store.get_run(&globex[0].origin(), 1, 2, usize::MAX).len(),
                2
            );
            assert!(store.get(&bob[1].origin(), 2).unwrap().is_some());
        };
        check_hidden(&store, &reader);
        assert_eq!(
            store.insert(event_as(1, "s", 10, b"late", ("acme", "alice"))),
            Ok(Inserted::Erased),
            "refused while the rows are still being removed"
        );
        // A copy of a hidden event is refused as erased, not taken as a duplicate, and a
        // peer asking for its number is told it is erased (a Skip), as after the pass.
        assert_eq!(store.insert(alice[7].clone()), Ok(Inserted::Erased));
        assert!(store.erased(&alice[7].origin(), 8) && store.erased(&alice[0].origin(), 1));
        assert!(!store.erased(&globex[0].origin(), 1) && !store.erased(&bob[0].origin(), 1));
        // A CloudEvents dedup entry naming a hidden event names nothing: the same
        // CloudEvent published again is stored anew, its entry replaced in place.
        let dedup_len = store.state.ce_dedup_len;
        store
            .write_conn()
            .unwrap()
            .execute(
                "INSERT INTO ce_dedup VALUES ('alice', 'src', 'ce-7', ?1)",
                [&alice[7].id().0[..]],
            )
            .unwrap();
        store.state.ce_dedup_len += 1;
        store
            .write_conn()
            .unwrap()
            .execute(
                "INSERT INTO ce_dedup VALUES ('bob', 'src', 'ce-1', ?1)",
                [&bob[0].id().0[..]],
            )
            .unwrap();
        store.state.ce_dedup_len += 1;
        assert_eq!(store.ce_dedup_get("alice", "src", "ce-7"), Ok(None));
        assert_eq!(
            store.ce_dedup_get("bob", "src", "ce-1"),
            Ok(Some(bob[0].id()))
        );
        let again = EventId([9; 32]);
        store.ce_dedup_put("alice", "src", "ce-7", &again).unwrap();
        assert_eq!(store.ce_dedup_get("alice", "src", "ce-7"), Ok(Some(again)));
        assert_eq!(store.state.ce_dedup_len, dedup_len + 2);
        store.commit().unwrap();
        store.check_invariants().unwrap();
        // A restart: the pending erase is back where its first pass stopped, the rows it
        // covers still hidden (from the core's reads now served from rows, not the cache).
        drop(store);
        let mut store = SqliteStore::open(dir.path(), limits).unwrap();
        assert_eq!(store.erases_pending().len(), 1);
        assert_eq!(store.erases_pending()[0].removed, 2);
        check_hidden(&store, &reader);
        let mut passes = 0;
        let mut removed = 2;
        let mut each = Vec::new();
        while let Some(pass) = store.erase_pass().unwrap() {
            passes += 1;
            each.push(pass.events.len());
            removed += pass.events.len();
            assert_eq!(pass.removed, removed as u64);
            assert_eq!(pass.more, store.erasing());
            store.commit().unwrap();
            store.check_invariants().unwrap();
            check_hidden(&store, &reader);
        }
        // Ten rows of alice's examined three a pass (eight of acme, two of globex; the
        // late one was refused): three passes after the first, removing 2, 3 and 1.
        assert_eq!((passes, removed, each), (3, 8, vec![2, 3, 1]));
        assert!(!store.erasing());
        assert_eq!(store.len(), 5);
        for e in &alice {
            assert!(store.erased(&e.origin(), e.seq()));
        }
        check_hidden(&store, &reader);
        drop(store);
        let store = open(dir.path());
        assert!(!store.erasing());
    }

    /// A second erase of a target still being removed raises its bound and starts again
    /// from its first row (a key rule's rows are read by rowid: rows passed over as above
    /// the old bound may be under the new one); what was removed stays counted.
    #[test]
    fn an_erase_raised_while_pending_starts_again_under_the_new_bound() {
        use crate::erase::Target;
        let dir = tempfile::tempdir().unwrap();
        let limits = StoreLimits {
            erase_pass_max: 2,
            ..StoreLimits::default()
        };
        let mut store = SqliteStore::open(dir.path(), limits).unwrap();
        let events: Vec<_> = (1..=6).map(|seq| event(1, "orders", seq, b"x")).collect();
        // The sixth first: the lowest rowid, stamped above the first erase's bound, so a
        // pass that went on after the raise from where it stopped would never read it.
        for e in events[5..].iter().chain(&events[..5]) {
            store.insert(e.clone()).unwrap();
            store.append_log(e).unwrap();
        }
        store.commit().unwrap();
        let key = Target::Key {
            stream: "orders".into(),
            key: b"k".to_vec(),
        };
        // Up to event 4: two removed, more to examine.
        let first = store.erase(&key, events[3].hlc().as_u64()).unwrap();
        assert_eq!((first.events.len(), first.more), (2, true));
        // Raised to cover all six: examined again from the start.
        let second = store.erase(&key, u64::MAX >> 1).unwrap();
        assert_eq!(
            (second.events.len(), second.removed, second.more),
            (2, 4, true)
        );
        let mut last = None;
        while let Some(pass) = store.erase_pass().unwrap() {
            last = Some(pass);
        }
        let last = last.unwrap();
        assert_eq!((last.removed, last.more), (6, false));
        store.commit().unwrap();
        store.check_invariants().unwrap();
        assert_eq!(store.len(), 0);
    }

    #[test]
    fn a_failed_erase_changes_nothing_and_a_damaged_row_does_not_fail_it() {
        use crate::erase::Target;
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path());
        let events: Vec<_> = (1..=3).map(|seq| event(1, "orders", seq, b"x")).collect();
        for e in &events {
            store.insert(e.clone()).unwrap();
            store.append_log(e).unwrap();
        }
        store.commit().unwrap();
        let origin = events[0].origin();
        let principal = Target::Principal {
            principal: "orders-service".into(),
            tenant: String::new(),
        };
        // A statement fails midway (the second row's log delete): nothing of the erase
        // stays, in the rows or in memory, and the rule is not in force.
        store
            .conn
            .execute_batch(&format!(
                "CREATE TEMP TRIGGER fail_log BEFORE DELETE ON log WHEN old.id = x'{}' \
                 BEGIN SELECT RAISE(ABORT, 'disk'); END;",
                hex::encode(events[1].id().0)
            ))
            .unwrap();
        assert!(store.erase(&principal, u64::MAX >> 1).is_err());
        store.commit().unwrap();
        store.check_invariants().unwrap();
        assert_eq!(store.len(), 3);
        assert!(!store.erase_covers(&events[0]), "the rule is not in force");
        assert!(store.get(&origin, 1).unwrap().is_some() && !store.erased(&origin, 1));
        assert_eq!(store.erase_rules_len(), 0);
        store.conn.execute_batch("DROP TRIGGER fail_log").unwrap();
        // A row that no longer decodes, matched by the rule's columns: erased with the rest.
        store
            .conn
            .execute(
                "UPDATE events SET envelope = zeroblob(length(envelope)) WHERE id = ?1",
                [&events[2].id().0[..]],
            )
            .unwrap();
        let erased = store.erase(&principal, u64::MAX >> 1).unwrap().events;
        assert_eq!(erased.len(), 3);
        store.commit().unwrap();
        store.check_invariants().unwrap();
        assert_eq!(store.len(), 0);
        assert!(store.erase_covers(&events[0]) && store.erased(&origin, 3));
    }

    #[test]
    fn an_erase_reads_and_deletes_its_rows_by_index() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let plan = |sql: &str, args: &[&dyn rusqlite::ToSql]| -> Vec<String> {
            store
                .conn
                .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
                .unwrap()
                .query_map(args, |r| r.get::<_, String>(3))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap()
        };
        // A principal's rows, not a scan of every stored event.
        let principal = plan(PRINCIPAL_ROWS_SQL, &[&"p", &1i64, &0i64, &0i64, &10i64]);
        // A pass starts where the last stopped and reads in the index's order: no sort of
        // the principal's remaining rows at each pass.
        assert_eq!(
            principal,
            ["SEARCH events USING INDEX events_principal (principal=? AND hlc>? AND hlc<?)"]
        );
        let key = plan(KEY_ROWS_SQL, &[&"s", &b"k".to_vec(), &1i64, &0i64, &10i64]);
        assert_eq!(
            key,
            ["SEARCH events USING INDEX events_stream_key (stream=? AND key=? AND rowid>?)"]
        );
        // A page of the log with the pending erases left out: the log by stream and
        // position, each row's event by id; the principals and keys of pending erases
        // listed once for the statement, and only a row naming one checked against the
        // pending erases (by their key).
        let page = plan(READ_AFTER_SQL, &[&"s", &0i64, &10i64]);
        assert_eq!(
            page,
            [
                "SEARCH log USING INDEX log_stream_pos (stream=? AND pos>?)",
                "SEARCH events USING INDEX sqlite_autoindex_events_1 (id=?)",
                "LIST SUBQUERY 1",
                "SEARCH erase_pending USING PRIMARY KEY (kind=?)",
                "CREATE BLOOM FILTER",
                "LIST SUBQUERY 2",
                "SEARCH erase_pending USING PRIMARY KEY (kind=?)",
                "CREATE BLOOM FILTER",
                "CORRELATED SCALAR SUBQUERY 3",
                "MULTI-INDEX OR",
                "INDEX 1",
                "SEARCH p USING PRIMARY KEY (kind=? AND a=? AND b=?)",
                "INDEX 2",
                "SEARCH p USING PRIMARY KEY (kind=? AND a=? AND b=?)"
            ]
        );
        // Each erased event's dedup row, not a scan of the dedup window.
        let dedup = plan(DEDUP_OF_EVENT_SQL, &[&vec![0u8; 32]]);
        assert!(
            dedup
                .iter()
                .any(|step| step.contains("INDEX ce_dedup_event (event_id=?)")),
            "{dedup:?}"
        );
    }

    #[test]
    fn a_store_from_before_the_principal_column_is_backfilled_at_open() {
        use crate::erase::Target;
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path());
        // More rows than one backfill chunk (`event` signs as "orders-service").
        let n = BACKFILL_CHUNK as u64 + 10;
        for seq in 1..=n {
            store.insert(event(1, "orders", seq, b"x")).unwrap();
        }
        store.commit().unwrap();
        store.check_invariants().unwrap();
        // As a store written before the column: no index, no column.
        store
            .conn
            .execute_batch("DROP INDEX events_principal; ALTER TABLE events DROP COLUMN principal;")
            .unwrap();
        drop(store);
        let mut store = open(dir.path());
        store.check_invariants().unwrap();
        let unindexed: i64 = store
            .conn
            .query_row(
                "SELECT COUNT(*) FROM events WHERE principal IS NULL",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(unindexed, 0);
        // The backfilled rows are found by a principal erase, and only its own.
        let other = Target::Principal {
            principal: "someone-else".into(),
            tenant: String::new(),
        };
        assert!(
            store
                .erase(&other, u64::MAX >> 1)
                .unwrap()
                .events
                .is_empty()
        );
        let mine = Target::Principal {
            principal: "orders-service".into(),
            tenant: String::new(),
        };
        // More than one pass: the first with the rule, the rest pass by pass.
        let first = store.erase(&mine, u64::MAX >> 1).unwrap();
        assert!(first.more && first.events.len() == ERASE_PASS_MAX);
        let mut removed = first.events.len();
        while let Some(pass) = store.erase_pass().unwrap() {
            removed += pass.events.len();
            assert_eq!(pass.removed, removed as u64);
        }
        assert_eq!(removed, n as usize);
        assert!(!store.erasing());
        store.commit().unwrap();
        store.check_invariants().unwrap();
        assert_eq!(store.len(), 0);
    }

    #[test]
    fn a_log_page_stops_at_its_byte_bound_and_holds_at_least_one_entry() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path());
        for seq in 1..=10u64 {
            let e = event(1, "big", seq, &[7u8; 1000]);
            store.insert(e.clone()).unwrap();
            store.append_log(&e).unwrap();
        }
        store.commit().unwrap();
        let reader = StoreReader::open(dir.path()).unwrap();
        let one = reader.read_log("big", 0, 10).unwrap()[0].envelope.len();
        // Two and a half envelopes' worth: three entries (the one that crosses it is in).
        let page = reader.read_log_within("big", 0, 10, one * 5 / 2).unwrap();
        assert_eq!(page.len(), 3);
        // A bound under one envelope still gives one.
        assert_eq!(reader.read_log_within("big", 0, 10, 1).unwrap().len(), 1);
        assert_eq!(reader.read_log("big", 0, 10).unwrap().len(), 10);
    }

    /// A read over a pattern: the entries of the streams it matches, in log order, in pages
    /// of at most `limit` and steps of at most `scan_max` entries scanned, each page's
    /// `scanned_to` where the next starts (past other streams' entries), `exhausted` once
    /// the log's end is reached; system streams never match; the same backwards.
    #[test]
    fn a_log_read_over_a_pattern_takes_its_streams_in_order_in_bounded_steps() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path());
        let reader = StoreReader::open(dir.path()).unwrap();
        let streams = [
            "o.a",
            "x",
            "o.b",
            "_weft.erase",
            "x",
            "x",
            "o.a",
            "ox",
            "o.c",
        ];
        let mut want = Vec::new();
        for (i, stream) in streams.iter().enumerate() {
            let e = event(1, stream, i as u64 + 1, b"p");
            store.insert(e.clone()).unwrap();
            let pos = store.append_log(&e).unwrap();
            if stream.starts_with("o.") {
                want.push(pos);
            }
        }
        store.commit().unwrap();
        for pattern in [">", "o.>", "o.*"] {
            let p = weft_fabric::StreamPattern::new(pattern).unwrap();
            let matches = |s: &str| s != "_weft.erase" && (pattern == ">" || s.starts_with("o."));
            let expected: Vec<u64> = streams
                .iter()
                .enumerate()
                .filter(|(_, s)| matches(s))
                .map(|(i, _)| i as u64 + 1)
                .collect();
            for (limit, scan) in [(100, 100), (1, 100), (2, 3), (1, 1)] {
                let (mut after, mut got, mut steps) = (0, Vec::new(), 0);
                loop {
                    steps += 1;
                    assert!(steps < 50, "{pattern} {limit}/{scan}: no progress");
                    let page = reader
                        .read_log_matching(&p, after, limit, READ_LOG_BYTES_MAX, scan)
                        .unwrap();
                    assert!(page.entries.len() <= limit.min(scan));
                    assert!(page.scanned <= scan && page.scanned >= page.entries.len());
                    got.extend(page.entries.iter().map(|e| e.pos));
                    assert!(page.scanned_to >= after, "never back");
                    after = page.scanned_to;
                    if page.exhausted {
                        break;
                    }
                }
                assert_eq!(got, expected, "{pattern} limit {limit} scan {scan}");
            }
            let back = reader
                .read_log_matching_before(&p, u64::MAX, 100, 100)
                .unwrap();
            let mut rev: Vec<u64> = back.entries.iter().map(|e| e.pos).collect();
            rev.reverse();
            assert_eq!(rev, expected, "{pattern} backwards");
        }
        assert_eq!(want, vec![1, 3, 7, 9]);
    }

    #[test]
    fn log_pages_per_stream_and_reader_sees_only_commits() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path());
        let reader = StoreReader::open(dir.path()).unwrap();
        let mut expected: BTreeMap<&str, Vec<(u64, Vec<u8>)>> = BTreeMap::new();
        for seq in 1..=10u64 {
            let stream = if seq % 3 == 0 { "b" } else { "a" };
            let e = event(1, stream, seq, &seq.to_be_bytes());
            store.insert(e.clone()).unwrap();
            let pos = store.append_log(&e).unwrap();
            assert_eq!(store.append_log(&e), Ok(pos), "idempotent");
            expected.entry(stream).or_default().push((pos, e.encode()));
        }
        assert_eq!(reader.count(), Ok(0));
        assert_eq!(reader.read_log("a", 0, 100), Ok(Vec::new()));
        assert_eq!(reader.last_pos("a"), Ok(0));
        store.commit().unwrap();
        assert_eq!(reader.count(), Ok(10));
        for (stream, entries) in &expected {
            let positions: Vec<u64> = entries.iter().map(|(p, _)| *p).collect();
            assert!(positions.windows(2).all(|w| w[0] < w[1]));
            assert_eq!(reader.last_pos(stream), Ok(*positions.last().unwrap()));
            let mut after = 0;
            let mut got = Vec::new();
            loop {
                let page = reader.read_log(stream, after, 2).unwrap();
                assert!(page.len() <= 2);
                let Some(last) = page.last() else { break };
                after = last.pos;
                got.extend(page.into_iter().map(|e| (e.pos, e.envelope)));
            }
            assert_eq!(&got, entries);
        }
        let e = event(1, "a", 1, &1u64.to_be_bytes());
        assert_eq!(reader.event_by_id(&e.id()), Ok(Some(e.encode())));
        assert_eq!(reader.read_log("none", 0, 10), Ok(Vec::new()));
        store.cursor_set("o:sub", "a", 4).unwrap();
        assert_eq!(reader.cursor_get("o:sub"), Ok(None));
        store.commit().unwrap();
        assert_eq!(reader.cursor_get("o:sub"), Ok(Some(("a".into(), 4))));
    }

    /// A Skip taken on another node's word and still waiting survives a restart of the
    /// mesh core on this store: the delivery log's cursor passes its number (the next
    /// event of the origin was logged), so without the `waiting_skips` row the restarted
    /// node would hold the number as seen for good; with it, the event still contradicts
    /// the Skip and is delivered late. The rows are cleared when the Skip stops waiting,
    /// and with the store.
    #[test]
    fn a_waiting_skip_survives_a_restart_on_the_sqlite_store() {
        use weft_fabric::mesh::node::{AppEvent, MeshConfig, Node};
        use weft_fabric::mesh::{MemberInfo, Message};
        let dir = tempfile::tempdir().unwrap();
        let me = MemberInfo {
            key: Signer::from_secret(&[9; 32]).origin().0,
            region: "aws:ap-northeast-1".into(),
            cloud: "aws".into(),
            jurisdiction: "JP".into(),
            addr: "127.0.0.1:1".into(),
            policy_epoch: 0,
            generation: 0,
        };
        let (e1, e2) = (event(1, "orders", 1, b"one"), event(1, "orders", 2, b"two"));
        let (origin, liar, honest) = (e1.origin(), OriginKey([2; 32]), OriginKey([3; 32]));
        let push = |e: &Arc<Event>| Message::Push {
            events: vec![e.clone()],
            relay: Vec::new(),
            ack: 0,
            reroutes: 0,
        };
        let mut node = Node::new(me.clone(), MeshConfig::wan(4), 1, open(dir.path()), 0);
        node.handle_message(1, liar, Message::Skip(vec![(origin, 1)]));
        node.handle_message(2, origin, push(&e2));
        let mut delivered = Vec::new();
        while let Some(e) = node.poll_event() {
            if let AppEvent::Deliver(e) = e {
                delivered.push(e);
            }
        }
        assert_eq!(delivered.len(), 1);
        let mut store = node.into_store();
        store.append_log(&delivered[0]).unwrap();
        store.commit().unwrap();
        assert_eq!(store.delivered(&origin), Some(2));
        drop(store);

        let mut node = Node::new(me.clone(), MeshConfig::wan(4), 2, open(dir.path()), 5);
        assert_eq!(node.skips_unconfirmed_pending(), 1, "still waiting");
        node.handle_message(6, honest, push(&e1));
        let mut got = Vec::new();
        while let Some(e) = node.poll_event() {
            match e {
                AppEvent::SkipContradicted { event, skipped_by } => got.push(format!(
                    "contradicted {} by liar {}",
                    event.seq(),
                    skipped_by == liar
                )),
                AppEvent::Late(e) => got.push(format!("late {}", e.seq())),
                AppEvent::Deliver(e) => got.push(format!("deliver {}", e.seq())),
                _ => {}
            }
        }
        assert_eq!(got, ["contradicted 1 by liar true", "late 1"]);
        let mut store = node.into_store();
        store.commit().unwrap();
        assert!(
            store.waiting_skips().is_empty(),
            "the row went with the wait"
        );

        store.put_waiting_skip(&origin, 3, &liar);
        store.commit().unwrap();
        assert_eq!(store.waiting_skips(), [(origin, 3, liar)]);
        store.clear();
        store.commit().unwrap();
        assert!(store.waiting_skips().is_empty(), "cleared with the store");
    }

    /// Numbers taken as lost and still open to a late copy survive reopening the store
    /// (`Store::set_lost_open`, read back by the restarted core, whose tests cover the
    /// reload); an origin's rows are replaced whole, none forgets them, and they go with
    /// the store.
    #[test]
    fn numbers_open_to_a_late_copy_survive_reopening_the_sqlite_store() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (OriginKey([1; 32]), OriginKey([2; 32]));
        let mut store = open(dir.path());
        assert!(store.lost_open().is_empty());
        store.set_lost_open(&b, &[(7, 7)]);
        // Past SEQ_MAX: the part below is kept, a range wholly past it is not.
        store.set_lost_open(
            &a,
            &[
                (1, 2),
                (5, 1 << 40),
                (1 << 62, u64::MAX - 2),
                (u64::MAX - 1, u64::MAX),
            ],
        );
        store.set_lost_open(&b, &[(3, 4), (9, 12)]);
        store.commit().unwrap();
        drop(store);
        let mut store = open(dir.path());
        assert_eq!(
            store.lost_open(),
            [
                (a, vec![(1, 2), (5, 1 << 40), (1 << 62, SEQ_MAX)]),
                (b, vec![(3, 4), (9, 12)])
            ]
        );
        store.set_lost_open(&a, &[]);
        store.commit().unwrap();
        assert_eq!(store.lost_open(), [(b, vec![(3, 4), (9, 12)])]);
        store.clear();
        store.commit().unwrap();
        assert!(store.lost_open().is_empty(), "cleared with the store");
    }

    /// The store never commits by itself inside a step: past [`TX_WRITES_MAX`] writes the
    /// transaction stays open until the driver's safe point commits it.
    #[test]
    fn the_clock_resumes_from_the_newest_stamp_of_the_nodes_own_events() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path());
        let origin = event(1, "a", 1, b"").origin();
        assert_eq!(store.hlc_last(&origin), Ok(0));
        for seq in 1..=3 {
            store.insert(event(1, "a", seq, b"x")).unwrap();
        }
        store.insert(event(2, "a", 9, b"other origin")).unwrap();
        store.commit().unwrap();
        assert_eq!(
            store.hlc_last(&origin),
            Ok(event(1, "a", 3, b"x").hlc().as_u64())
        );
    }

    #[test]
    fn the_store_commits_past_its_write_bound_only_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path());
        let e = event(1, "orders", 1, b"a");
        store.insert(e.clone()).unwrap();
        assert_eq!(store.commit_if_over(), Ok(false), "under the bound");
        store.tx_writes = TX_WRITES_MAX;
        store.append_log(&e).unwrap();
        let reader = StoreReader::open(dir.path()).unwrap();
        assert!(
            reader.read_log("orders", 0, 10).unwrap().is_empty(),
            "not committed by a write"
        );
        assert_eq!(store.commit_if_over(), Ok(true));
        assert_eq!(reader.read_log("orders", 0, 10).unwrap().len(), 1);
        assert_eq!(store.stats().commits_auto, 1);
        assert_eq!(store.commit_if_over(), Ok(false), "nothing open");
    }

    #[test]
    fn records_round_trip_and_stay_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let limits = StoreLimits {
            cursors_max: 1,
            peers_max: 2,
            ce_dedup_max: 2,
            ..StoreLimits::default()
        };
        let mut store = SqliteStore::open(dir.path(), limits.clone()).unwrap();
        store.cursor_set("o:one", "s", 1).unwrap();
        store.cursor_set("o:one", "s", 2).unwrap();
        assert!(matches!(
            store.cursor_set("o:two", "s", 1),
            Err(RecordError::TableFull { .. })
        ));
        assert!(matches!(
            store.cursor_set(&"n".repeat(NAME_LEN_MAX + 1), "s", 1),
            Err(RecordError::TooLong { .. })
        ));
        store.peer_upsert([1; 32], "{\"a\":1}", 10).unwrap();
        store.peer_upsert([2; 32], "{}", 20).unwrap();
        store.peer_upsert([1; 32], "{\"a\":2}", 30).unwrap();
        store.peer_upsert([3; 32], "{}", 40).unwrap(); // evicts [2] (seen at 20)
        let (e1, e2, e3) = (EventId([7; 32]), EventId([8; 32]), EventId([9; 32]));
        store.ce_dedup_put("p", "src", "id-1", &e1).unwrap();
        store.ce_dedup_put("p", "src", "id-1", &e2).unwrap(); // first wins
        store.ce_dedup_put("p", "src", "id-2", &e2).unwrap();
        store.ce_dedup_put("p", "src", "id-3", &e3).unwrap(); // evicts id-1
        store.meta_set("k", b"\x00\x01").unwrap();
        store.meta_set("k", b"\x02").unwrap();
        store.check_invariants().unwrap();
        store.commit().unwrap();
        drop(store);
        let store = SqliteStore::open(dir.path(), limits).unwrap();
        store.check_invariants().unwrap();
        assert_eq!(store.cursor_get("o:one"), Ok(Some(("s".into(), 2))));
        drop(store);
        // Per owner (the name up to its first ':'), and deletable; a cursor without an
        // owner (kept before cursors had owners) is gone at the next open.
        let limits = StoreLimits {
            cursors_max: 10,
            cursors_per_owner_max: 2,
            ..StoreLimits::default()
        };
        let mut store = SqliteStore::open(dir.path(), limits.clone()).unwrap();
        store.cursor_set("o:two", "s", 1).unwrap();
        assert!(matches!(
            store.cursor_set("o:three", "s", 1),
            Err(RecordError::TableFull { len: 2, max: 2, .. })
        ));
        store.cursor_set("p:three", "s", 1).unwrap();
        assert_eq!(store.cursor_delete("o:two"), Ok(true));
        assert_eq!(store.cursor_delete("o:two"), Ok(false));
        store.cursor_set("o:three", "s", 1).unwrap();
        store
            .conn
            .execute(
                "INSERT INTO cursors (name, stream, pos) VALUES ('legacy', 's', 1)",
                [],
            )
            .unwrap();
        store.commit().unwrap();
        drop(store);
        let store = SqliteStore::open(dir.path(), limits).unwrap();
        assert_eq!(store.cursor_get("legacy"), Ok(None));
        assert_eq!(store.cursor_get("o:three"), Ok(Some(("s".into(), 1))));
        store.check_invariants().unwrap();
        assert_eq!(
            store.peers(),
            Ok(vec![
                ([1; 32], "{\"a\":2}".into(), 30),
                ([3; 32], "{}".into(), 40)
            ])
        );
        assert_eq!(store.ce_dedup_get("p", "src", "id-1"), Ok(None));
        assert_eq!(store.ce_dedup_get("p", "src", "id-2"), Ok(Some(e2)));
        assert_eq!(store.ce_dedup_get("p", "src", "id-3"), Ok(Some(e3)));
        assert_eq!(store.meta_get("k"), Ok(Some(vec![2])));
    }

    /// Flips the last byte of the stored envelope at `seq` (every origin's).
    fn flip_envelope_byte(raw: &Connection, seq: i64) {
        let mut bytes: Vec<u8> = raw
            .query_row("SELECT envelope FROM events WHERE seq = ?1", [seq], |r| {
                r.get(0)
            })
            .unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x01;
        set_envelope(raw, seq, bytes);
    }

    /// Replaces the stored envelope at `seq` (every origin's) with `bytes`.
    fn set_envelope(raw: &Connection, seq: i64, bytes: Vec<u8>) {
        raw.execute(
            "UPDATE events SET envelope = ?1 WHERE seq = ?2",
            params![bytes, seq],
        )
        .unwrap();
    }

    #[test]
    fn get_verifies_what_the_disk_returns() {
        let dir = tempfile::tempdir().unwrap();
        let e = event(1, "a", 1, b"payload");
        let f = event(1, "a", 2, b"payload");
        {
            let mut store = open(dir.path());
            store.insert(e.clone()).unwrap();
            store.insert(f.clone()).unwrap();
            store.commit().unwrap();
        }
        let raw = Connection::open(db_path(dir.path())).unwrap();
        // Flip a byte of one envelope; give the other the bytes of a different (valid)
        // event.
        flip_envelope_byte(&raw, 1);
        set_envelope(&raw, 2, event(1, "a", 3, b"x").encode());
        drop(raw);
        let store = open(dir.path());
        assert!(store.get(&e.origin(), 1).unwrap().is_none());
        assert!(store.get(&e.origin(), 2).unwrap().is_none());
        assert_eq!(store.stats().corrupt_rows, 2);
        assert!(store.contains(&e.id()));
    }

    /// A run read with one query and a batch verification gives what `get` gives number
    /// by number: holes and the other origin's events left out, a corrupt row (a flipped
    /// byte; another valid event's bytes; a value SQLite cannot read as bytes) left out and
    /// counted, cached events served from the cache, and the good events kept beside the
    /// bad ones.
    #[test]
    fn a_run_reads_and_verifies_like_get_number_by_number() {
        let dir = tempfile::tempdir().unwrap();
        let origin = event(1, "a", 1, b"p").origin();
        {
            let mut store = open(dir.path());
            for seq in [1, 2, 3, 4, 5, 6, 9] {
                store.insert(event(1, "a", seq, b"payload")).unwrap();
            }
            store.insert(event(2, "a", 7, b"other origin")).unwrap();
            store.commit().unwrap();
        }
        let raw = Connection::open(db_path(dir.path())).unwrap();
        flip_envelope_byte(&raw, 3);
        set_envelope(&raw, 5, event(1, "a", 8, b"x").encode());
        // A row SQLite cannot read as bytes: that number alone is left out.
        raw.execute("UPDATE events SET envelope = 'text' WHERE seq = 6", [])
            .unwrap();
        drop(raw);
        let store = open(dir.path());
        assert!(store.get(&origin, 2).unwrap().is_some(), "now in the cache");
        let hits = store.stats().cache_hits;
        let seqs = |run: Vec<Arc<Event>>| run.iter().map(|e| e.seq()).collect::<Vec<u64>>();
        assert_eq!(
            seqs(store.get_run(&origin, 1, 10, usize::MAX)),
            vec![1, 2, 4, 9]
        );
        assert_eq!(store.stats().corrupt_rows, 3);
        assert_eq!(store.stats().cache_hits, hits + 1);
        for (first, last) in [(1, 1), (3, 3), (4, 8), (7, 7), (8, 20), (1, SEQ_MAX + 5)] {
            let one_by_one: Vec<u64> = (first..=last.min(20))
                .filter_map(|seq| store.get(&origin, seq).unwrap())
                .map(|e| e.seq())
                .collect();
            assert_eq!(
                seqs(store.get_run(&origin, first, last, usize::MAX)),
                one_by_one,
                "{first}..={last}"
            );
        }
        let run = store.get_run(&origin, 9, 9, usize::MAX);
        assert_eq!(run[0].id(), event(1, "a", 9, b"payload").id());
        assert!(
            store
                .get_run(&OriginKey([9; 32]), 1, 10, usize::MAX)
                .is_empty()
        );
        assert!(
            store
                .get_run(&origin, SEQ_MAX + 1, u64::MAX, usize::MAX)
                .is_empty()
        );
    }

    /// A run long enough to be verified on several threads (600 events: two parts on a
    /// machine with two cores or more) comes back whole and in order, with a corrupt row
    /// in the second part left out and counted.
    #[test]
    fn a_long_run_is_verified_in_parts_and_kept_in_order() {
        let (dir, origin) = stored_run(600, b"payload");
        let raw = Connection::open(db_path(dir.path())).unwrap();
        set_envelope(&raw, 450, event(1, "a", 451, b"payload").encode());
        drop(raw);
        let store = open(dir.path());
        let run = store.get_run(&origin, 1, 600, usize::MAX);
        let seqs: Vec<u64> = run.iter().map(|e| e.seq()).collect();
        let expected: Vec<u64> = (1..=600).filter(|s| *s != 450).collect();
        assert_eq!(seqs, expected);
        assert!(
            run.iter()
                .all(|e| e.id() == event(1, "a", e.seq(), b"payload").id())
        );
        assert_eq!(store.stats().corrupt_rows, 1);
    }

    /// A run is read up to the answer's byte bound: the events up to the first at which
    /// their sizes reach it, not the whole run (a run of thousands of 1 MiB events would
    /// otherwise be read whole for one 8 MiB answer). A row left out (here one that fails
    /// verification) takes no place under the bound: the read goes on past it, by the
    /// writer and by a reader thread alike, and a read-ahead that stopped at the bound
    /// leaves the rest of the run to the rows.
    #[test]
    fn a_run_is_read_up_to_the_byte_bound() {
        let (dir, origin) = stored_run(10, &[7u8; 1000]);
        let raw = Connection::open(db_path(dir.path())).unwrap();
        flip_envelope_byte(&raw, 2);
        drop(raw);
        let mut store = open(dir.path());
        let one = answer_len(event(1, "a", 1, &[7u8; 1000]).signed_bytes().len());
        let seqs = |run: Vec<Arc<Event>>| run.iter().map(|e| e.seq()).collect::<Vec<u64>>();
        for (bytes_max, expected) in [
            (1, vec![1]),
            (one, vec![1]),
            (one + 1, vec![1, 3]),
            (3 * one, vec![1, 3, 4]),
            (usize::MAX, vec![1, 3, 4, 5, 6, 7, 8, 9, 10]),
        ] {
            assert_eq!(
                seqs(store.get_run(&origin, 1, 10, bytes_max)),
                expected,
                "bytes_max {bytes_max}"
            );
        }
        assert_eq!(
            store.stats().corrupt_rows,
            3,
            "row 2, once in each read past row 1"
        );
        let reader = StoreReader::open(dir.path()).unwrap();
        let ahead = reader.read_ahead(
            &[(origin, 1, 6), (origin, 8, 10)],
            3 * one,
            store.removals(),
        );
        assert_eq!(ahead.events(), 3, "the read-ahead stops at the bound too");
        assert!(store.begin_read_ahead(ahead));
        assert_eq!(
            seqs(store.get_run(&origin, 1, 6, usize::MAX)),
            vec![1, 3, 4, 5, 6],
            "1, 3 and 4 read ahead, 5 and 6 from the rows"
        );
        assert_eq!(store.stats().read_ahead_hits, 3);
        // A read-ahead of the whole run gives what the rows give under a smaller bound.
        store.end_read_ahead();
        let ahead = reader.read_ahead(&[(origin, 1, 10)], usize::MAX, store.removals());
        assert!(store.begin_read_ahead(ahead));
        for (bytes_max, expected) in [
            (one, vec![1]),
            (one + 1, vec![1, 3]),
            (3 * one, vec![1, 3, 4]),
        ] {
            assert_eq!(
                seqs(store.get_run(&origin, 1, 10, bytes_max)),
                expected,
                "read ahead, bytes_max {bytes_max}"
            );
        }
        store.end_read_ahead();
    }

    /// A row corrupted on disk while the writer still holds its event in the cache: a
    /// read-ahead (whose reader has no cache) leaves the row out, and the answer takes the
    /// event from the cache, as a read of the rows does.
    #[test]
    fn a_row_the_reader_left_out_comes_from_the_writers_cache() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path());
        for seq in 1..=5 {
            store.insert(event(1, "a", seq, b"payload")).unwrap();
        }
        store.commit().unwrap();
        let origin = event(1, "a", 1, b"payload").origin();
        let raw = Connection::open(db_path(dir.path())).unwrap();
        flip_envelope_byte(&raw, 3);
        let seqs = |run: Vec<Arc<Event>>| run.iter().map(|e| e.seq()).collect::<Vec<u64>>();
        let rows = seqs(store.get_run(&origin, 1, 5, usize::MAX));
        assert_eq!(rows, vec![1, 2, 3, 4, 5], "3 from the cache");
        let reader = StoreReader::open(dir.path()).unwrap();
        let ahead = reader.read_ahead(&[(origin, 1, 5)], usize::MAX, store.removals());
        assert_eq!(ahead.events(), 4, "the reader left row 3 out");
        assert!(store.begin_read_ahead(ahead));
        assert_eq!(seqs(store.get_run(&origin, 1, 5, usize::MAX)), rows);
        store.end_read_ahead();
    }

    /// An answer takes what a reader read ahead and reads only the rest from the rows: a
    /// row corrupted after the read-ahead is still served from it (it was read and verified
    /// before), the numbers past the read-ahead come from the rows, and once the request is
    /// handled the read-ahead is gone. A read-ahead begun before a removal of stored events
    /// (an erase) is dropped unused: an erased event is never served from it.
    #[test]
    fn an_answer_takes_a_read_ahead_unless_events_were_removed_since() {
        let (dir, origin) = stored_run(10, b"payload");
        let seqs = |run: Vec<Arc<Event>>| run.iter().map(|e| e.seq()).collect::<Vec<u64>>();
        let reader = StoreReader::open(dir.path()).unwrap();
        let mut store = open(dir.path());
        let ahead = reader.read_ahead(&[(origin, 1, 6)], usize::MAX, store.removals());
        assert_eq!(ahead.events(), 6);
        let raw = Connection::open(db_path(dir.path())).unwrap();
        flip_envelope_byte(&raw, 3);
        assert!(store.begin_read_ahead(ahead));
        assert_eq!(
            seqs(store.get_run(&origin, 1, 10, usize::MAX)),
            (1..=10).collect::<Vec<_>>()
        );
        assert_eq!(store.stats().read_ahead_hits, 6);
        assert_eq!(store.stats().corrupt_rows, 0);
        store.end_read_ahead();
        assert_eq!(
            seqs(store.get_run(&origin, 1, 10, usize::MAX)),
            vec![1, 2, 4, 5, 6, 7, 8, 9, 10],
            "without the read-ahead the corrupt row is left out"
        );
        assert_eq!(store.stats().corrupt_rows, 1);
        // A run to the end of the numbers, and one past the highest a store takes.
        let ahead = reader.read_ahead(
            &[(origin, 9, u64::MAX), (origin, SEQ_MAX + 1, u64::MAX)],
            usize::MAX,
            store.removals(),
        );
        assert_eq!(ahead.events(), 2);
        assert!(store.begin_read_ahead(ahead));
        assert_eq!(
            seqs(store.get_run(&origin, 9, u64::MAX, usize::MAX)),
            vec![9, 10]
        );
        assert!(
            store
                .get_run(&origin, SEQ_MAX + 1, u64::MAX, usize::MAX)
                .is_empty()
        );
        store.end_read_ahead();
        // Read ahead, then an erase of 1..=2 before the answer: dropped, the rows answer.
        let ahead = reader.read_ahead(&[(origin, 1, 6)], usize::MAX, store.removals());
        let key = crate::erase::Target::Key {
            stream: "a".into(),
            key: b"k".to_vec(),
        };
        let bound = event(1, "a", 2, b"payload").hlc().as_u64();
        assert_eq!(store.erase(&key, bound).unwrap().events.len(), 2);
        store.commit().unwrap();
        assert!(!store.begin_read_ahead(ahead));
        assert_eq!(store.stats().read_ahead_dropped, 1);
        assert_eq!(
            seqs(store.get_run(&origin, 1, 10, usize::MAX)),
            vec![4, 5, 6, 7, 8, 9, 10]
        );
        store.end_read_ahead();
    }

    /// A measurement, not a check of speed (run it with `cargo test --release -p weft-node
    /// --bin weft measure_ -- --ignored --nocapture`): a principal erase that removes every
    /// stored and logged event of `n`, in one step (the baseline: `erase_pass_max`
    /// unbounded, as before erases went pass by pass) and pass by pass at the default
    /// bound, side by side: the whole time, and the longest the driver's thread is held at
    /// once (a pass with its commit), which is what a publish or a SWIM answer waits behind.
    #[test]
    #[ignore = "a measurement: prints timings, run by hand"]
    fn measure_principal_erase() {
        let fill = |dir: &Path, n: u64, erase_pass_max: usize| {
            let limits = StoreLimits {
                erase_pass_max,
                ..StoreLimits::default()
            };
            let mut store = SqliteStore::open(dir, limits).unwrap();
            for seq in 1..=n {
                let e = event(1, "a", seq, &[7u8; 256]);
                store.insert(e.clone()).unwrap();
                store.append_log(&e).unwrap();
                if seq % 1000 == 0 {
                    store.commit().unwrap();
                }
            }
            store.commit().unwrap();
            store
        };
        let target = crate::erase::Target::Principal {
            principal: "orders-service".into(),
            tenant: String::new(),
        };
        println!(
            "events | one step: held     per event | pass by pass: passes  whole     longest hold"
        );
        for n in [2_000u64, 20_000, 100_000] {
            let dir = tempfile::tempdir().unwrap();
            let mut store = fill(dir.path(), n, usize::MAX);
            let t = Instant::now();
            let erased = store.erase(&target, u64::MAX >> 1).unwrap().events;
            store.commit().unwrap();
            let one = t.elapsed();
            assert_eq!(erased.len(), n as usize);
            drop(store);
            let dir = tempfile::tempdir().unwrap();
            let mut store = fill(dir.path(), n, ERASE_PASS_MAX);
            let (mut passes, mut longest, mut removed) = (1, Duration::ZERO, 0);
            let all = Instant::now();
            let t = Instant::now();
            let mut pass = Some(store.erase(&target, u64::MAX >> 1).unwrap());
            store.commit().unwrap();
            longest = longest.max(t.elapsed());
            while let Some(p) = pass {
                removed += p.events.len();
                let t = Instant::now();
                pass = store.erase_pass().unwrap();
                store.commit().unwrap();
                longest = longest.max(t.elapsed());
                passes += usize::from(pass.is_some());
            }
            let whole = all.elapsed();
            assert_eq!(removed, n as usize);
            println!(
                "{n:>6} | {:>9.1} ms {:>8.1} us | {passes:>6} {:>9.1} ms {:>9.1} ms ({:.0}x shorter)",
                one.as_secs_f64() * 1e3,
                one.as_secs_f64() * 1e6 / n as f64,
                whole.as_secs_f64() * 1e3,
                longest.as_secs_f64() * 1e3,
                one.as_secs_f64() / longest.as_secs_f64()
            );
        }
    }

    /// A measurement, not a check of speed (run it with `cargo test --release -p weft-node
    /// --bin weft measure_ -- --ignored --nocapture`): what leaving out the rows of pending
    /// erases ([`not_erasing!`]) costs a log page of 1,000 events, against the same query
    /// without it (the baseline), with no erase pending and with one pending of a
    /// principal who wrote none of the page. Median of five rounds.
    #[test]
    #[ignore = "a measurement: prints timings, run by hand"]
    fn measure_log_pages_with_pending_erases_left_out() {
        let (dir, _) = stored_run(0, b"");
        let mut store = open(dir.path());
        for seq in 1..=20_000u64 {
            let e = event(1, "a", seq, &[7u8; 256]);
            store.insert(e.clone()).unwrap();
            store.append_log(&e).unwrap();
        }
        store.commit().unwrap();
        let reader = StoreReader::open(dir.path()).unwrap();
        let plain = "SELECT log.pos, events.envelope FROM log JOIN events ON events.id = log.id \
                     WHERE log.stream = ?1 AND log.pos > ?2 ORDER BY log.pos LIMIT ?3";
        let page = |sql: &str| {
            let mut rounds: Vec<Duration> = (0..5)
                .map(|_| {
                    let t = Instant::now();
                    let mut after = 0;
                    for _ in 0..20 {
                        let rows = reader
                            .read_log_rows(sql, "a", after, 1_000, usize::MAX)
                            .unwrap();
                        assert_eq!(rows.len(), 1_000);
                        after = rows.last().unwrap().pos.cast_signed();
                    }
                    t.elapsed() / 20
                })
                .collect();
            rounds.sort();
            rounds[2]
        };
        let show = |what: &str| {
            let (base, filtered) = (page(plain), page(READ_AFTER_SQL));
            println!(
                "{what:<34} plain {:>7.0} us  filtered {:>7.0} us  ratio {:.2}",
                base.as_secs_f64() * 1e6,
                filtered.as_secs_f64() * 1e6,
                filtered.as_secs_f64() / base.as_secs_f64()
            );
        };
        show("no erase pending");
        store
            .write_conn()
            .unwrap()
            .execute(
                "INSERT INTO erase_pending VALUES ('principal', 'someone-else', X'', ?1, 0, 0, 0)",
                [i64::MAX],
            )
            .unwrap();
        store.commit().unwrap();
        show("an erase of another principal");
    }

    /// A measurement, not a check of speed (run it with `cargo test --release -p weft-node
    /// --bin weft measure_ -- --ignored --nocapture`): how long the driver thread reads an
    /// anti-entropy answer's events from a cold store (reopened, nothing cached) number by
    /// number (the baseline: a query and a single verification each) and as one run (one
    /// query, batch verification on up to a thread per core), side by side for the default
    /// batch (512) and the largest a far peer gets (8 x 512); and read ahead on a reader
    /// thread (`store/ahead.rs`), with what is then left on the driver's thread. Median of
    /// three rounds; 256-byte payloads.
    #[test]
    #[ignore = "a measurement: prints timings, run by hand"]
    fn measure_run_reads_against_point_reads() {
        let (dir, origin) = stored_run(4096, &[7u8; 256]);
        let median = |f: &dyn Fn() -> (Duration, usize)| {
            let mut rounds: Vec<(Duration, usize)> = (0..3).map(|_| f()).collect();
            rounds.sort();
            rounds[1]
        };
        println!(
            "events  one by one      as a run   ratio   read ahead: reader thread, driver thread"
        );
        for n in [512u64, 4096] {
            let (one, a) = median(&|| {
                let store = open(dir.path());
                let t = Instant::now();
                let got = (1..=n)
                    .filter_map(|s| store.get(&origin, s).unwrap())
                    .count();
                (t.elapsed(), got)
            });
            let (run, b) = median(&|| {
                let store = open(dir.path());
                let t = Instant::now();
                let got = store.get_run(&origin, 1, n, usize::MAX).len();
                (t.elapsed(), got)
            });
            // The same run read ahead on another connection (`store/ahead.rs`): the reader's
            // time, then what is left on the driver's thread (install, the answer's run).
            let (reader, c) = median(&|| {
                let reader = StoreReader::open(dir.path()).unwrap();
                let t = Instant::now();
                let got = reader.read_ahead(&[(origin, 1, n)], usize::MAX, 0).events();
                (t.elapsed(), got)
            });
            let (driver, d) = median(&|| {
                let mut store = open(dir.path());
                let ahead = StoreReader::open(dir.path()).unwrap().read_ahead(
                    &[(origin, 1, n)],
                    usize::MAX,
                    store.removals(),
                );
                let t = Instant::now();
                assert!(store.begin_read_ahead(ahead));
                let got = store.get_run(&origin, 1, n, usize::MAX).len();
                store.end_read_ahead();
                (t.elapsed(), got)
            });
            assert_eq!(
                (a, b, c, d),
                (n as usize, n as usize, n as usize, n as usize)
            );
            println!(
                "{n:>6} {:>10.1} ms {:>10.1} ms {:>6.2}x {:>18.1} ms {:>12.2} ms",
                one.as_secs_f64() * 1e3,
                run.as_secs_f64() * 1e3,
                one.as_secs_f64() / run.as_secs_f64(),
                reader.as_secs_f64() * 1e3,
                driver.as_secs_f64() * 1e3,
            );
        }
    }

    /// What recording a replicated CloudEvent's identity (`Driver::record_ce_identity`:
    /// reading `source` and `id` from its JSON, the idempotency record's lookup and insert)
    /// adds to storing it (insert, log append, a commit every 256 events as the group
    /// commit under load): 20,000 CloudEvents of about 300 bytes, stored into fresh stores
    /// without and with the records, interleaved, the median of three rounds each.
    #[test]
    #[ignore = "a measurement: prints timings, run by hand"]
    fn measure_ce_identity_records_against_storing() {
        const N: u64 = 20_000;
        let events: Vec<Arc<Event>> = (1..=N)
            .map(|seq| {
                let ce = serde_json::json!({"specversion": "1.0", "id": format!("order-{seq}"),
                    "source": "/shop/eu", "type": "order.created",
                    "datacontenttype": "application/json",
                    "data": {"order": seq, "sku": "A-1234", "qty": 3, "note": "x".repeat(120)}});
                let mut draft = event(1, "orders", seq, b"").draft().clone();
                draft.content_type = weft_fabric::cloudevents::CE_JSON.into();
                draft.payload = Payload::Clear(serde_json::to_vec(&ce).unwrap());
                Arc::new(Signer::from_secret(&[1; 32]).sign(draft).unwrap())
            })
            .collect();
        let run = |record: bool| {
            let dir = tempfile::tempdir().unwrap();
            let mut store = open(dir.path());
            let t = Instant::now();
            for (i, e) in events.iter().enumerate() {
                store.insert(e.clone()).unwrap();
                store.append_log(e).unwrap();
                if record {
                    let Payload::Clear(bytes) = e.payload() else {
                        unreachable!()
                    };
                    let (source, id) = weft_fabric::cloudevents::identity(bytes).unwrap();
                    store
                        .ce_dedup_put(&e.security().principal, &source, &id, &e.id())
                        .unwrap();
                }
                if i % 256 == 255 {
                    store.commit().unwrap();
                }
            }
            store.commit().unwrap();
            let took = t.elapsed();
            if record {
                assert_eq!(store.state.ce_dedup_len, N as usize);
            }
            took
        };
        let (mut without, mut with) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            without.push(run(false));
            with.push(run(true));
        }
        without.sort();
        with.sort();
        let per = |d: Duration| d.as_secs_f64() * 1e6 / N as f64;
        println!(
            "storing {N} CloudEvents: {:.1} us/event without the record, {:.1} with ({:+.1} us, {:.2}x)",
            per(without[1]),
            per(with[1]),
            per(with[1]) - per(without[1]),
            per(with[1]) / per(without[1]),
        );
    }

    #[test]
    fn clear_forgets_everything_and_newer_schemas_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path());
        let e = event(1, "a", 1, b"");
        store.insert(e.clone()).unwrap();
        store.append_log(&e).unwrap();
        store.meta_set("k", b"v").unwrap();
        store.commit().unwrap();
        store.clear();
        assert!(store.is_empty());
        assert!(store.origins().is_empty());
        assert!(store.get(&e.origin(), 1).unwrap().is_none());
        store.check_invariants().unwrap();
        store.commit().unwrap();
        drop(store);
        let raw = Connection::open(db_path(dir.path())).unwrap();
        raw.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        drop(raw);
        assert!(matches!(
            SqliteStore::open(dir.path(), StoreLimits::default()),
            Err(OpenError::NewerSchema { found, .. }) if found == SCHEMA_VERSION + 1
        ));
        assert!(matches!(
            StoreReader::open(dir.path()),
            Err(OpenError::NewerSchema { .. })
        ));
        let empty = tempfile::tempdir().unwrap();
        assert!(StoreReader::open(empty.path()).is_err());
    }

    #[test]
    fn reader_works_from_another_thread() {
        fn send<T: Send>() {}
        send::<SqliteStore>();
        send::<StoreReader>();
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path());
        let reader = StoreReader::open(dir.path()).unwrap();
        let e = event(1, "a", 1, b"");
        store.insert(e.clone()).unwrap();
        store.append_log(&e).unwrap();
        store.commit().unwrap();
        let page = std::thread::spawn(move || reader.read_log("a", 0, 10))
            .join()
            .unwrap()
            .unwrap();
        assert_eq!(
            page,
            vec![LogEntry {
                pos: 1,
                envelope: e.encode()
            }]
        );
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(24))]

            /// Random inserts (with duplicates, equivocations and commits) leave the same
            /// outcomes, ranges and length as a `MemStore`, before and after a reopen.
            #[test]
            fn ranges_match_memstore(
                ops in proptest::collection::vec((0u8..3, 1u64..24, 0u8..2, any::<bool>()), 0..60),
            ) {
                let dir = tempfile::tempdir().unwrap();
                let limits = StoreLimits { events_max: 40, ..StoreLimits::default() };
                let mut store = SqliteStore::open(dir.path(), limits.clone()).unwrap();
                let mut model = MemStore::new(40);
                for (signer, seq, variant, commit) in ops {
                    let e = event(signer, "s", seq, &[variant]);
                    prop_assert_eq!(store.insert(e.clone()), model.insert(e));
                    if commit {
                        store.commit().unwrap();
                    }
                }
                store.commit().unwrap();
                let check = |store: &SqliteStore| -> Result<(), TestCaseError> {
                    prop_assert_eq!(store.len(), model.len());
                    prop_assert_eq!(store.origins(), model.origins());
                    for origin in model.origins() {
                        prop_assert_eq!(store.ranges(&origin), model.ranges(&origin));
                        // Delivery's step over numbers without an event agrees too.
                        for (after, upto) in [(0, 30), (0, u64::MAX), (3, 9), (12, 12), (23, 40)] {
                            prop_assert_eq!(
                                store.next_stored(&origin, after, upto),
                                model.next_stored(&origin, after, upto),
                                "after {} upto {}", after, upto
                            );
                        }
                    }
                    prop_assert_eq!(store.digest(), model.digest());
                    store.check_invariants().map_err(TestCaseError::fail)?;
                    Ok(())
                };
                check(&store)?;
                drop(store);
                check(&SqliteStore::open(dir.path(), limits).unwrap())?;
            }
        }
    }
}
