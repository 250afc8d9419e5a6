//! The store-and-forward outbox: SQLite (WAL, `synchronous=FULL`), so an event the agent
//! accepted survives power loss.
//!
//! An event enters unsequenced and unsigned. It is **sequenced and signed** when the drain
//! takes it into a batch ([`Outbox::sequence`]): the per-origin sequence number, the HLC
//! stamp and the signature are written in one transaction before any byte is sent, so a
//! restart resends the same bytes and never reuses a number. Until then the overflow rule
//! may drop it without leaving a gap that nodes would wait for. An event leaves the outbox
//! only when a node answered that it is durable ([`Outbox::ack`]).
//!
//! Bounds: `outbox.events_max` events and `outbox.bytes_max` payload bytes; the overflow
//! rule refuses the new event or drops the oldest unsequenced one of the lowest priority
//! not above the new one's. Aggregate summaries have a budget of their own beside these
//! (`outbox.summaries_max`, `outbox.summary_bytes_max`) and are never dropped for room.
//! Everything is counted ([`Counters`]), durably.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use rusqlite::{OptionalExtension as _, params};
use weft_fabric::edge::{LocalRule, Profile};
use weft_fabric::{
    EventDraft, Hlc, HybridClock, Payload, Residency, SecurityContext, Signer, StreamName,
    StreamPattern,
};

use crate::config::{OutboxConfig, Overflow};
use crate::rules::{KeptWindows, Window, WindowChanges};

/// The `meta` key of the rules the kept aggregate windows were made under.
const WINDOW_RULES: &str = "window_rules";

/// Most rows kept in the dead-letter table (events a node refused for good); older ones
/// are deleted first.
const DEAD_LETTERS_MAX: i64 = 1000;
/// [`DEAD_LETTERS_MAX`] for `weft-agent status`.
pub(crate) const DEAD_LETTERS_KEPT: i64 = DEAD_LETTERS_MAX;
/// Most bytes (payloads and envelopes) the dead-letter table keeps; older rows are deleted
/// first. An event may be 1 MiB: a thousand of them would be a gigabyte on a device.
const DEAD_LETTER_BYTES_MAX: i64 = 16 << 20;
/// Largest clock drift accepted by the agent's HLC (it only ticks locally).
const HLC_DRIFT_MS_MAX: u64 = 60_000;
/// The outbox's file in the data directory.
pub(crate) const OUTBOX_FILE: &str = "outbox.db";
/// The lock file in the data directory: one agent at a time owns the outbox.
pub(crate) const LOCK_FILE: &str = "agent.lock";
/// Attempts at the data directory's lock before another agent is taken to hold it, and
/// the pause between them.
const LOCK_TRIES: u32 = 5;
/// See [`LOCK_TRIES`].
const LOCK_RETRY: std::time::Duration = std::time::Duration::from_millis(100);
/// Dead letters `weft-agent status` shows (the newest).
pub(crate) const DEAD_LETTERS_SHOWN: usize = 5;

/// Why an outbox could not be opened, in words an operator acts on.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OpenError {
    /// Another process holds the data directory's lock.
    #[error(
        "the data directory {dir} is in use by another weft-agent{holder} (it holds {lock}): \
         two agents on one outbox each count what the other sends and stall; stop the other \
         agent, or give this one a data_dir of its own"
    )]
    Locked {
        dir: PathBuf,
        lock: PathBuf,
        /// " (pid N)" when the lock file names it.
        holder: String,
    },
    /// The data directory is not there (`status` creates nothing).
    #[error(
        "the data directory {0} does not exist: no agent has run with this config's data_dir \
         (or it names the wrong directory)"
    )]
    NoDataDir(PathBuf),
    /// The data directory holds no outbox.
    #[error("no outbox at {0}: no agent has run with this data directory")]
    NoOutbox(PathBuf),
}

/// Creates `dir` (and its parents) readable by this user only: the outbox holds the
/// device's events and the key usually sits beside it.
fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(dir)
        .with_context(|| format!("creating the data directory {}", dir.display()))
}

/// Opens `path` for writing, creating it mode 0600 (unix) if absent; never truncates.
fn open_private(path: &Path) -> std::io::Result<std::fs::File> {
    let mut o = std::fs::OpenOptions::new();
    o.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    o.open(path)
}

/// Takes the data directory's lock ([`LOCK_FILE`], an advisory `flock`-style lock the OS
/// drops when the process ends, however it ends) and writes this process's id into it.
/// A second agent on the same directory would share the SQLite file: each would count
/// the events the other inserted or acknowledged, and the counts went wrong.
fn lock_dir(dir: &Path) -> anyhow::Result<std::fs::File> {
    use std::io::{Read as _, Seek as _, Write as _};
    let path = dir.join(LOCK_FILE);
    let mut file =
        open_private(&path).with_context(|| format!("opening the lock file {}", path.display()))?;
    // A few tries: `weft-agent status` takes the lock shared for an instant to learn
    // whether an agent holds it, and an agent starting just then must not take that for
    // another agent.
    let mut tries = LOCK_TRIES;
    let locked = loop {
        match file.try_lock() {
            Err(std::fs::TryLockError::WouldBlock) if tries > 1 => {
                tries -= 1;
                std::thread::sleep(LOCK_RETRY);
            }
            r => break r,
        }
    };
    match locked {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            let pid = pid.trim();
            return Err(OpenError::Locked {
                dir: dir.to_path_buf(),
                lock: path,
                holder: if pid.is_empty() {
                    String::new()
                } else {
                    format!(" (pid {pid})")
                },
            }
            .into());
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("locking {}", path.display()));
        }
    }
    // Who holds it, for the next one's error (best effort: the lock is what counts).
    let _ = file.set_len(0);
    let _ = file.rewind();
    let _ = writeln!(file, "{}", std::process::id());
    Ok(file)
}

/// Whether an agent holds the lock of `dir` now, and its pid if it wrote one.
pub(crate) fn lock_holder(dir: &Path) -> Option<String> {
    use std::io::Read as _;
    let mut file = std::fs::File::open(dir.join(LOCK_FILE)).ok()?;
    match file.try_lock_shared() {
        Ok(()) => None,
        Err(_) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            Some(pid.trim().to_string())
        }
    }
}

/// One dead letter as `weft-agent status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub(crate) struct DeadLetter {
    /// Its sequence number (none: moved before it had one).
    pub(crate) seq: Option<u64>,
    pub(crate) stream: String,
    pub(crate) reason: String,
    pub(crate) at_ms: u64,
}

/// The dead-letter table as `weft-agent status` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub(crate) struct DeadLetters {
    /// Rows held (the newest [`DEAD_LETTERS_MAX`] at most).
    pub(crate) held: u64,
    /// The newest [`DEAD_LETTERS_SHOWN`], newest first.
    pub(crate) last: Vec<DeadLetter>,
}

fn dead_letters(conn: &rusqlite::Connection, n: usize) -> anyhow::Result<DeadLetters> {
    let held: i64 = conn.query_row("SELECT COUNT(*) FROM dead", [], |r| r.get(0))?;
    let mut stmt = conn
        .prepare_cached("SELECT seq, stream, reason, at_ms FROM dead ORDER BY id DESC LIMIT ?1")?;
    let last = stmt
        .query_map([n as i64], |r| {
            Ok(DeadLetter {
                seq: r.get::<_, Option<i64>>(0)?.map(|s| s as u64),
                stream: r.get(1)?,
                reason: r.get(2)?,
                at_ms: r.get::<_, i64>(3)?.max(0) as u64,
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(DeadLetters {
        held: held.max(0) as u64,
        last,
    })
}

/// What `weft-agent status` reads from the outbox on disk when the agent does not answer.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Snapshot {
    pub(crate) outbox_depth: u64,
    pub(crate) outbox_bytes: u64,
    pub(crate) next_seq: u64,
    pub(crate) counters: Counters,
    pub(crate) dead_letters: DeadLetters,
}

/// Reads an existing outbox in `dir` without creating or changing anything (no
/// directory, no file, no schema) and without its lock: `weft-agent status` beside a
/// running agent, or after it.
pub(crate) fn snapshot(dir: &Path) -> anyhow::Result<Snapshot> {
    if !dir.is_dir() {
        return Err(OpenError::NoDataDir(dir.to_path_buf()).into());
    }
    let path = dir.join(OUTBOX_FILE);
    if !path.is_file() {
        return Err(OpenError::NoOutbox(path).into());
    }
    // Read-write without create: SQLite reads a WAL database through its shared-memory
    // file, which a read-only connection may not be able to make.
    let conn = rusqlite::Connection::open_with_flags(
        &path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("opening {}", path.display()))?;
    conn.busy_timeout(std::time::Duration::from_secs(2))?;
    let (depth, bytes): (i64, Option<i64>) = conn
        .query_row(
            "SELECT COUNT(*), SUM(length(payload)) FROM outbox",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .with_context(|| format!("reading {}", path.display()))?;
    let next_seq = conn
        .query_row("SELECT v FROM meta WHERE k = 'next_seq'", [], |r| {
            r.get::<_, Vec<u8>>(0)
        })
        .optional()?
        .map_or(1, |v| {
            u64::from_be_bytes(v.try_into().unwrap_or([0; 8])).max(1)
        });
    let mut counters = Counters::default();
    let rows: Vec<(String, i64)> = conn
        .prepare("SELECT k, v FROM counters")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    for (k, v) in rows {
        for (name, slot) in counters.fields() {
            if name == k {
                *slot = v.max(0) as u64;
            }
        }
    }
    Ok(Snapshot {
        outbox_depth: depth.max(0) as u64,
        outbox_bytes: bytes.unwrap_or(0).max(0) as u64,
        next_seq,
        counters,
        dead_letters: dead_letters(&conn, DEAD_LETTERS_SHOWN)?,
    })
}

/// Durable counters (`weft-agent status`).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub(crate) struct Counters {
    /// Events accepted into the outbox.
    pub(crate) accepted: u64,
    /// New events refused because the outbox was full.
    pub(crate) refused_full: u64,
    /// Events dropped by the drop-oldest overflow rule.
    pub(crate) dropped_overflow: u64,
    /// Events dropped by a filter rule.
    pub(crate) filtered: u64,
    /// Events dropped by a sample rule.
    pub(crate) sampled_out: u64,
    /// Events folded into an aggregate.
    pub(crate) aggregated: u64,
    /// Summary events made by aggregate rules and accepted into the outbox.
    pub(crate) summaries: u64,
    /// Times an aggregate window was kept open past its end because the summaries' budget
    /// in the outbox was full (its summary, later, spans more than one window).
    pub(crate) summaries_deferred: u64,
    /// Events a node confirmed durable (and that left the outbox).
    pub(crate) delivered: u64,
    /// Events moved to the dead-letter table: refused by a node, or not publishable
    /// under the device's profile (not enrolled for the stream, no classification).
    pub(crate) dead: u64,
    /// Bad input lines or requests refused at the inputs.
    pub(crate) bad_input: u64,
    /// HTTP input requests refused because a stream is not among the device's enrolled
    /// streams (by the profile in use): they would only have gone to the dead letters.
    pub(crate) not_enrolled: u64,
    /// Times standard input or a followed file found the outbox full (`refuse` mode) and
    /// waited to offer the same lines again: none of them is refused.
    pub(crate) input_waits: u64,
}

impl Counters {
    fn fields(&mut self) -> [(&'static str, &mut u64); 13] {
        [
            ("accepted", &mut self.accepted),
            ("refused_full", &mut self.refused_full),
            ("dropped_overflow", &mut self.dropped_overflow),
            ("filtered", &mut self.filtered),
            ("sampled_out", &mut self.sampled_out),
            ("aggregated", &mut self.aggregated),
            ("summaries", &mut self.summaries),
            ("summaries_deferred", &mut self.summaries_deferred),
            ("delivered", &mut self.delivered),
            ("dead", &mut self.dead),
            ("bad_input", &mut self.bad_input),
            ("not_enrolled", &mut self.not_enrolled),
            ("input_waits", &mut self.input_waits),
        ]
    }
}

/// An event handed to the outbox.
#[derive(Debug, Clone)]
pub(crate) struct NewEvent {
    pub(crate) stream: StreamName,
    pub(crate) priority: u8,
    pub(crate) produced_ms: u64,
    pub(crate) content_type: String,
    pub(crate) payload: Vec<u8>,
    /// An aggregate rule's summary (counted in [`Counters::summaries`] when accepted).
    pub(crate) summary: bool,
}

/// What the summaries' budget in the outbox has left ([`Outbox::summary_room`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct SummaryRoom {
    /// Summaries held now.
    pub(crate) held: u64,
    /// Summaries the outbox takes before its budget is full.
    pub(crate) events: u64,
    /// Payload bytes left for them.
    pub(crate) bytes: u64,
}

/// Room for ordinary events in a `refuse`-mode outbox ([`Outbox::free_room`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FreeRoom {
    /// Events it takes before it refuses.
    pub(crate) events: u64,
    /// Payload bytes it takes before it refuses.
    pub(crate) bytes: u64,
    /// `outbox.events_max`.
    pub(crate) events_max: u64,
    /// `outbox.bytes_max`.
    pub(crate) bytes_max: u64,
}

impl FreeRoom {
    /// Takes `n` events of `bytes` payload bytes from the room, if they all fit.
    pub(crate) fn take(&mut self, n: u64, bytes: u64) -> bool {
        if n > self.events || bytes > self.bytes {
            return false;
        }
        self.events -= n;
        self.bytes -= bytes;
        true
    }

    /// Takes what events the outbox may accept: as much of the room as they use, at most
    /// all of it (some may be refused there).
    pub(crate) fn spend(&mut self, n: u64, bytes: u64) {
        self.events = self.events.saturating_sub(n);
        self.bytes = self.bytes.saturating_sub(bytes);
    }

    /// Whether `n` events of `bytes` bytes fit in the room left.
    pub(crate) fn could_take(&self, n: u64, bytes: u64) -> bool {
        n <= self.events && bytes <= self.bytes
    }

    /// Whether `n` events of `bytes` bytes could ever fit, in an empty outbox.
    pub(crate) fn could_fit(&self, n: u64, bytes: u64) -> bool {
        n <= self.events_max && bytes <= self.bytes_max
    }
}

impl SummaryRoom {
    /// Takes a summary of `len` payload bytes from the room, if it fits.
    pub(crate) fn take(&mut self, len: usize) -> bool {
        let len = len as u64;
        if self.events == 0 || len > self.bytes {
            return false;
        }
        self.events -= 1;
        self.bytes -= len;
        true
    }
}

/// A sequenced event ready to send.
#[derive(Debug, Clone)]
pub(crate) struct Ready {
    pub(crate) seq: u64,
    pub(crate) envelope: Vec<u8>,
}

/// The outbox.
pub(crate) struct Outbox {
    conn: rusqlite::Connection,
    /// The data directory's lock ([`LOCK_FILE`]), held while the outbox is open.
    _lock: std::fs::File,
    config: OutboxConfig,
    depth: u64,
    bytes: u64,
    next_seq: u64,
    clock: HybridClock,
    /// Counters, written with every transaction.
    pub(crate) counters: Counters,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("depth", &self.depth)
            .field("next_seq", &self.next_seq)
            .finish_non_exhaustive()
    }
}

/// Where the clock resumes from the last stamp it issued: that stamp, unless it is more than
/// the drift bound ahead of the wall clock now (the device's clock ran ahead then and was set
/// right since): every later stamp would be refused by the nodes (`hlc_ahead`) until real
/// time caught up, so the clock starts again from now. Stamps that far ahead were refused
/// when they were sent, so no accepted stamp is passed over.
fn resumable(last: Hlc, now_ms: u64) -> Hlc {
    if last.physical_ms() > now_ms.saturating_add(HLC_DRIFT_MS_MAX) {
        tracing::warn!(
            last = %last,
            now_ms,
            "the last stamp of this outbox is more than 60 s ahead of the clock (it ran ahead before): stamping from now"
        );
        return Hlc::new(now_ms, 0).unwrap_or(last);
    }
    last
}

fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Outbox {
    /// Opens (or creates) `dir/outbox.db`, holding the directory's lock ([`LOCK_FILE`]):
    /// a second agent on the same directory is refused ([`OpenError::Locked`]). A new
    /// directory is made mode 0700 and new files 0600 (SQLite makes its `-wal` and `-shm`
    /// files with the database's mode).
    pub(crate) fn open(dir: &Path, config: OutboxConfig) -> anyhow::Result<Self> {
        create_private_dir(dir)?;
        let lock = lock_dir(dir)?;
        let path = dir.join(OUTBOX_FILE);
        // Made here, empty, with its mode: SQLite takes an empty file as a new database.
        open_private(&path).with_context(|| format!("creating {}", path.display()))?;
        let conn = rusqlite::Connection::open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL;
             PRAGMA synchronous=FULL;
             CREATE TABLE IF NOT EXISTS outbox (
                 id INTEGER PRIMARY KEY,
                 stream TEXT NOT NULL,
                 priority INTEGER NOT NULL,
                 produced_ms INTEGER NOT NULL,
                 content_type TEXT NOT NULL,
                 payload BLOB NOT NULL,
                 seq INTEGER UNIQUE,
                 envelope BLOB);
             CREATE INDEX IF NOT EXISTS outbox_unsequenced ON outbox(priority, id) WHERE seq IS NULL;
             CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v BLOB NOT NULL);
             CREATE TABLE IF NOT EXISTS counters (k TEXT PRIMARY KEY, v INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS dead (
                 id INTEGER PRIMARY KEY, seq INTEGER, stream TEXT NOT NULL,
                 payload BLOB NOT NULL, envelope BLOB, reason TEXT NOT NULL, at_ms INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS windows (
                 rule INTEGER NOT NULL, stream TEXT NOT NULL,
                 start_ms INTEGER NOT NULL, end_ms INTEGER NOT NULL, count INTEGER NOT NULL,
                 fields TEXT NOT NULL,
                 PRIMARY KEY (rule, stream));",
        )
        .context("creating the outbox schema")?;
        // An outbox from before summaries had a budget of their own gets the column (its
        // rows are ordinary events).
        let has_summary = conn
            .prepare("SELECT 1 FROM pragma_table_info('outbox') WHERE name = 'summary'")?
            .exists([])?;
        if !has_summary {
            conn.execute_batch("ALTER TABLE outbox ADD COLUMN summary INTEGER NOT NULL DEFAULT 0;")
                .context("adding the outbox's summary column")?;
        }
        conn.execute_batch(
            "CREATE INDEX IF NOT EXISTS outbox_summaries ON outbox(id) WHERE summary = 1;",
        )
        .context("creating the outbox's summary index")?;
        let (depth, bytes): (i64, Option<i64>) = conn.query_row(
            "SELECT COUNT(*), SUM(length(payload)) FROM outbox",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let mut out = Self {
            conn,
            _lock: lock,
            config,
            depth: depth as u64,
            bytes: bytes.unwrap_or(0) as u64,
            next_seq: 1,
            clock: HybridClock::new(HLC_DRIFT_MS_MAX),
            counters: Counters::default(),
        };
        if let Some(v) = out.meta_get("next_seq")? {
            out.next_seq = u64::from_be_bytes(v.try_into().unwrap_or([0; 8])).max(1);
        }
        if let Some(v) = out.meta_get("hlc_last")? {
            let last = Hlc::from_u64(u64::from_be_bytes(v.try_into().unwrap_or([0; 8])));
            out.clock = HybridClock::resume(resumable(last, wall_ms()), HLC_DRIFT_MS_MAX);
        }
        let mut stmt = out.conn.prepare("SELECT k, v FROM counters")?;
        let rows: Vec<(String, i64)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        drop(stmt);
        for (k, v) in rows {
            for (name, slot) in out.counters.fields() {
                if name == k {
                    *slot = v as u64;
                }
            }
        }
        Ok(out)
    }

    /// Counts the events and payload bytes held from the table itself. The counts in
    /// memory follow what each committed transaction changed; after a failed one (whose
    /// changes SQLite rolled back) they are read again rather than trusted.
    fn recount(&mut self) -> anyhow::Result<()> {
        let (depth, bytes): (i64, Option<i64>) = self.conn.query_row(
            "SELECT COUNT(*), SUM(length(payload)) FROM outbox",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        self.depth = depth.max(0) as u64;
        self.bytes = bytes.unwrap_or(0).max(0) as u64;
        Ok(())
    }

    /// `r`, the result of a write; after a failure the counts are read again from the table.
    fn settled<T>(&mut self, r: anyhow::Result<T>) -> anyhow::Result<T> {
        if r.is_err()
            && let Err(e) = self.recount()
        {
            tracing::warn!(error = %format!("{e:#}"), "recounting the outbox after a failed write failed");
        }
        r
    }

    /// The dead letters: how many are held and the newest `n`.
    pub(crate) fn dead_letters(&self, n: usize) -> anyhow::Result<DeadLetters> {
        dead_letters(&self.conn, n)
    }

    /// Events held.
    pub(crate) fn depth(&self) -> u64 {
        self.depth
    }

    /// Payload bytes held.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// What the outbox holds against its limits (ordinary events: aggregate summaries have
    /// a budget of their own), for the error that refuses events: which limit is reached,
    /// with the figures, as of when it is asked.
    pub(crate) fn fullness(&self) -> String {
        let (events_max, bytes_max) = (self.config.events_max, self.config.bytes_max);
        let (held, held_bytes) = Self::summaries_held(&self.conn).unwrap_or((0, 0));
        let (depth, bytes) = (
            self.depth.saturating_sub(held),
            self.bytes.saturating_sub(held_bytes),
        );
        let why = match (depth >= events_max, bytes >= bytes_max) {
            (true, _) => "events_max is reached",
            (false, true) => "bytes_max is reached",
            (false, false) if self.config.overflow == Overflow::DropOldest => {
                "drop-oldest found nothing it may drop (what is held is in flight or of a higher priority), or an event is larger than the room"
            }
            (false, false) => "the request's events do not fit in what is left",
        };
        format!(
            "it holds {depth} of outbox.events_max {events_max} events and {bytes} of outbox.bytes_max {bytes_max} payload bytes: {why}"
        )
    }

    /// The next sequence number to assign.
    pub(crate) fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// A stored value.
    pub(crate) fn meta_get(&self, k: &str) -> anyhow::Result<Option<Vec<u8>>> {
        Ok(self
            .conn
            .query_row("SELECT v FROM meta WHERE k = ?1", [k], |r| r.get(0))
            .optional()?)
    }

    fn write_counters(tx: &rusqlite::Transaction<'_>, c: &mut Counters) -> anyhow::Result<()> {
        let mut stmt =
            tx.prepare_cached("INSERT OR REPLACE INTO counters (k, v) VALUES (?1, ?2)")?;
        for (k, v) in c.fields() {
            stmt.execute(params![k, *v as i64])?;
        }
        Ok(())
    }

    /// Stores values in one transaction (profile, cursors, file offsets).
    pub(crate) fn meta_set(&mut self, pairs: &[(&str, &[u8])]) -> anyhow::Result<()> {
        let tx = self.conn.transaction()?;
        for (k, v) in pairs {
            tx.execute(
                "INSERT OR REPLACE INTO meta (k, v) VALUES (?1, ?2)",
                params![k, v],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// The open aggregate windows kept, with the rules they were made under (none kept:
    /// no rules, no windows).
    pub(crate) fn windows(&self) -> anyhow::Result<(Vec<LocalRule>, KeptWindows)> {
        let Some(rules) = self.meta_get(WINDOW_RULES)? else {
            return Ok((Vec::new(), Vec::new()));
        };
        let rules: Vec<LocalRule> =
            serde_json::from_slice(&rules).context("reading the rules of the kept windows")?;
        let mut stmt = self.conn.prepare(
            "SELECT rule, stream, start_ms, end_ms, count, fields FROM windows ORDER BY rule, stream",
        )?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, String>(5)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        let mut out = Vec::with_capacity(rows.len());
        for (rule, stream, start_ms, end_ms, count, fields) in rows {
            // One unreadable row (a store written by something else) costs only its window.
            let fields = match serde_json::from_str(&fields) {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!(rule, %stream, count, error = %e, "a kept aggregate window is unreadable; left out");
                    continue;
                }
            };
            let window = Window {
                start_ms: start_ms as u64,
                end_ms: end_ms as u64,
                count: count as u64,
                fields,
            };
            out.push(((rule as usize, stream), window));
        }
        Ok((rules, out))
    }

    /// Writes what changed in the open windows, inside the caller's transaction.
    fn write_windows(tx: &rusqlite::Transaction<'_>, w: &WindowChanges) -> anyhow::Result<()> {
        if let Some(rules) = &w.reset {
            tx.execute("DELETE FROM windows", [])?;
            tx.execute(
                "INSERT OR REPLACE INTO meta (k, v) VALUES (?1, ?2)",
                params![WINDOW_RULES, serde_json::to_vec(rules)?],
            )?;
        }
        for (rule, stream) in &w.closed {
            tx.prepare_cached("DELETE FROM windows WHERE rule = ?1 AND stream = ?2")?
                .execute(params![*rule as i64, stream])?;
        }
        for ((rule, stream), win) in &w.open {
            tx.prepare_cached(
                "INSERT OR REPLACE INTO windows (rule, stream, start_ms, end_ms, count, fields) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                *rule as i64,
                stream,
                win.start_ms as i64,
                win.end_ms as i64,
                win.count as i64,
                serde_json::to_string(&win.fields)?
            ])?;
        }
        Ok(())
    }

    /// The summaries held (count, payload bytes): few, read through their partial index.
    fn summaries_held(conn: &rusqlite::Connection) -> anyhow::Result<(u64, u64)> {
        Ok(conn.query_row(
            "SELECT COUNT(*), COALESCE(SUM(length(payload)), 0) FROM outbox WHERE summary = 1",
            [],
            |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
        )?)
    }

    /// In `refuse` mode, the room left for ordinary events (count, payload bytes) and the
    /// outbox's whole capacity for them, as [`Outbox::insert`] counts it (summaries aside):
    /// an input that must not lose lines (standard input, a followed file) offers them only
    /// when they all fit. `None` in `drop-oldest` mode (there a new event makes its room).
    pub(crate) fn free_room(&self) -> anyhow::Result<Option<FreeRoom>> {
        if self.config.overflow != Overflow::Refuse {
            return Ok(None);
        }
        let (held, held_bytes) = Self::summaries_held(&self.conn)?;
        Ok(Some(FreeRoom {
            events: self
                .config
                .events_max
                .saturating_sub(self.depth.saturating_sub(held)),
            bytes: self
                .config
                .bytes_max
                .saturating_sub(self.bytes.saturating_sub(held_bytes)),
            events_max: self.config.events_max,
            bytes_max: self.config.bytes_max,
        }))
    }

    /// What the summaries' budget has left: the ingest task (the one caller of
    /// [`Outbox::insert`], which takes every summary) closes only the windows whose
    /// summaries fit.
    pub(crate) fn summary_room(&self) -> anyhow::Result<SummaryRoom> {
        let (held, held_bytes) = Self::summaries_held(&self.conn)?;
        Ok(SummaryRoom {
            held,
            events: self.config.summaries_max.saturating_sub(held),
            bytes: self.config.summary_bytes_max.saturating_sub(held_bytes),
        })
    }

    /// Accepts events in one transaction (one fsync), applying the overflow rule; `meta`
    /// and what changed in the aggregate windows (`windows`: the events folded into them,
    /// the windows whose summaries are among `events`) are written in the same
    /// transaction (a followed file's offset moves with its lines; an input is told its
    /// events were taken only once the windows holding them are stored).
    /// Returns, per event, whether it was accepted.
    pub(crate) fn insert(
        &mut self,
        events: &[NewEvent],
        meta: &[(String, Vec<u8>)],
        extra: &Counters,
        windows: &WindowChanges,
    ) -> anyhow::Result<Vec<bool>> {
        let r = self.insert_tx(events, meta, extra, windows);
        self.settled(r)
    }

    fn insert_tx(
        &mut self,
        events: &[NewEvent],
        meta: &[(String, Vec<u8>)],
        extra: &Counters,
        windows: &WindowChanges,
    ) -> anyhow::Result<Vec<bool>> {
        let tx = self.conn.transaction()?;
        Self::write_windows(&tx, windows)?;
        let mut accepted = Vec::with_capacity(events.len());
        let mut depth = self.depth;
        let mut bytes = self.bytes;
        let mut summaries = Self::summaries_held(&tx)?;
        let mut c = self.counters.clone();
        for e in events {
            let len = e.payload.len() as u64;
            // A summary is always taken: its window is closed in this very transaction, and
            // the caller keeps the summaries' budget (`summary_room`: a window without room
            // stays open instead). Past the budget only by a change of rules (at most
            // `WINDOWS_MAX` summaries) or a voided summary's reason text. The overflow rule
            // does not apply to summaries.
            let mut ok = true;
            // Drop-oldest deletes victims one by one: if they do not make room in the end,
            // none of them goes (the savepoint) and the new event is refused alone.
            let before = (depth, bytes, c.dropped_overflow);
            tx.execute_batch("SAVEPOINT make_room")?;
            // Saturating: the counts can never go below zero here, whatever they say.
            while !e.summary
                && (depth.saturating_sub(summaries.0) + 1 > self.config.events_max
                    || bytes.saturating_sub(summaries.1) + len > self.config.bytes_max)
            {
                if self.config.overflow == Overflow::Refuse {
                    ok = false;
                    break;
                }
                let victim: Option<(i64, i64)> = tx
                    .query_row(
                        "SELECT id, length(payload) FROM outbox \
                         WHERE seq IS NULL AND priority <= ?1 AND summary = 0 \
                         ORDER BY priority, id LIMIT 1",
                        [e.priority],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .optional()?;
                let Some((id, vlen)) = victim else {
                    ok = false;
                    break;
                };
                // Counted by what the delete removed.
                if tx.execute("DELETE FROM outbox WHERE id = ?1", [id])? == 0 {
                    ok = false;
                    break;
                }
                depth = depth.saturating_sub(1);
                bytes = bytes.saturating_sub(vlen.max(0) as u64);
                c.dropped_overflow += 1;
            }
            if !ok {
                tx.execute_batch("ROLLBACK TO make_room; RELEASE make_room")?;
                (depth, bytes, c.dropped_overflow) = before;
                c.refused_full += 1;
                accepted.push(false);
                continue;
            }
            tx.execute_batch("RELEASE make_room")?;
            tx.prepare_cached(
                "INSERT INTO outbox (stream, priority, produced_ms, content_type, payload, summary) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                e.stream.as_str(),
                e.priority,
                e.produced_ms as i64,
                e.content_type,
                e.payload,
                e.summary
            ])?;
            depth += 1;
            bytes += len;
            if e.summary {
                summaries = (summaries.0 + 1, summaries.1 + len);
            }
            c.accepted += 1;
            c.summaries += u64::from(e.summary);
            accepted.push(true);
        }
        for (k, v) in meta {
            tx.execute(
                "INSERT OR REPLACE INTO meta (k, v) VALUES (?1, ?2)",
                params![k, v],
            )?;
        }
        c.filtered += extra.filtered;
        c.sampled_out += extra.sampled_out;
        c.aggregated += extra.aggregated;
        c.bad_input += extra.bad_input;
        c.not_enrolled += extra.not_enrolled;
        c.summaries_deferred += extra.summaries_deferred;
        c.input_waits += extra.input_waits;
        c.refused_full += extra.refused_full;
        Self::write_counters(&tx, &mut c)?;
        tx.commit()?;
        self.depth = depth;
        self.bytes = bytes;
        self.counters = c;
        Ok(accepted)
    }

    /// Takes the numbers `seqs` back from the events that hold them (the node holds other
    /// events under them): those events are unsequenced again, in their order, and the
    /// next numbers start after `held_max` (what the node held). Returns how many.
    pub(crate) fn renumber(&mut self, seqs: &[u64], held_max: u64) -> anyhow::Result<usize> {
        let next = self.next_seq.max(held_max.saturating_add(1));
        let tx = self.conn.transaction()?;
        let mut n = 0;
        for seq in seqs {
            let Ok(seq) = i64::try_from(*seq) else {
                continue;
            };
            n += tx.execute(
                "UPDATE outbox SET seq = NULL, envelope = NULL WHERE seq = ?1",
                [seq],
            )?;
        }
        tx.execute(
            "INSERT OR REPLACE INTO meta (k, v) VALUES ('next_seq', ?1)",
            [&next.to_be_bytes()[..]],
        )?;
        tx.commit()?;
        self.next_seq = next;
        Ok(n)
    }

    /// Sequences and signs up to `n` of the oldest unsequenced events under `profile`, in
    /// one transaction, before anything is sent. An event the profile does not allow
    /// (stream not enrolled, no classification) goes to the dead-letter table without a
    /// sequence number, so it leaves no gap. Returns how many were sequenced.
    pub(crate) fn sequence(
        &mut self,
        n: usize,
        profile: &Profile,
        signer: &Signer,
    ) -> anyhow::Result<usize> {
        let r = self.sequence_tx(n, profile, signer);
        self.settled(r)
    }

    fn sequence_tx(
        &mut self,
        n: usize,
        profile: &Profile,
        signer: &Signer,
    ) -> anyhow::Result<usize> {
        let enrolled: Vec<StreamPattern> = profile
            .streams
            .iter()
            .filter_map(|p| StreamPattern::new(p.clone()).ok())
            .collect();
        let stamps: Vec<(StreamPattern, &weft_fabric::edge::StampRule)> = profile
            .stamps
            .iter()
            .filter_map(|s| Some((StreamPattern::new(s.pattern.clone()).ok()?, s)))
            .collect();
        let tx = self.conn.transaction()?;
        let rows: Vec<(i64, String, i64, String, Vec<u8>)> = {
            let mut stmt = tx.prepare_cached(
                "SELECT id, stream, produced_ms, content_type, payload FROM outbox \
                 WHERE seq IS NULL ORDER BY id LIMIT ?1",
            )?;
            stmt.query_map([n as i64], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })?
            .collect::<Result<_, _>>()?
        };
        // Never a number the node already holds for this device (an outbox lost, or
        // restored from an older copy, would restart below it; the fabric takes a reused
        // number for an event it has, and the new event would be dropped as a duplicate).
        let mut seq = self.next_seq;
        if profile.origin_seq_max >= seq {
            tracing::warn!(
                next_seq = seq,
                node_holds = profile.origin_seq_max,
                "the node holds sequence numbers this outbox had not reached (outbox lost or restored?): numbering on after them"
            );
            seq = profile.origin_seq_max.saturating_add(1);
        }
        let mut clock = self.clock.clone();
        let mut c = self.counters.clone();
        let mut depth = self.depth;
        let mut bytes = self.bytes;
        let mut done = 0;
        let now = wall_ms();
        for (id, stream, produced_ms, content_type, payload) in rows {
            let plen = payload.len() as u64;
            // Returns how many rows left the outbox (what the counts follow).
            let refuse = |why: String, payload: &[u8]| -> anyhow::Result<u64> {
                tx.execute(
                    "INSERT INTO dead (seq, stream, payload, envelope, reason, at_ms) VALUES (NULL, ?1, ?2, NULL, ?3, ?4)",
                    params![stream, payload, why, now as i64],
                )?;
                Ok(tx.execute("DELETE FROM outbox WHERE id = ?1", [id])? as u64)
            };
            let name = StreamName::new(stream.clone());
            let stamp = name.as_ref().ok().and_then(|s| {
                stamps
                    .iter()
                    .find(|(p, _)| p.matches(s))
                    .map(|(_, r)| *r)
                    .or(profile.default_stamp.as_ref())
            });
            let why = match (&name, stamp) {
                (Err(e), _) => Some(format!("bad stream {stream:?}: {e}")),
                (Ok(s), _) if !enrolled.iter().any(|p| p.matches(s)) => Some(format!(
                    "the device is not enrolled for {stream} (epoch {})",
                    profile.epoch
                )),
                (Ok(_), None) => Some(format!("no classification for {stream}")),
                _ => None,
            };
            if let Some(why) = why {
                tracing::warn!(stream = %stream, "event not publishable, moved to dead letters: {why}");
                let gone = refuse(why, &payload)?;
                c.dead += 1;
                depth = depth.saturating_sub(gone);
                bytes = bytes.saturating_sub(plen * gone);
                continue;
            }
            let (Ok(name), Some(stamp)) = (name, stamp) else {
                continue;
            };
            let residency = match &stamp.residency {
                None => Residency::Unrestricted,
                Some(codes) => Residency::only(codes.iter().cloned())?,
            };
            // The production time is the event's physical time (the clock keeps it monotonic),
            // never later than now: an event produced while the device's clock ran ahead,
            // sequenced after it was set right, is not stamped in the future (nodes refuse a
            // stamp more than 60 s ahead of theirs, `hlc_ahead`).
            let hlc = clock.tick((produced_ms.max(0) as u64).min(now))?;
            let draft = EventDraft {
                stream: name,
                key: None,
                seq,
                hlc,
                security: SecurityContext {
                    tenant: profile.tenant.clone(),
                    principal: profile.principal.clone(),
                    classification: stamp.classification.clone(),
                    residency,
                    scopes: Default::default(),
                    policy_epoch: profile.epoch,
                },
                content_type,
                payload: Payload::Clear(payload),
                trace: None,
            };
            let event = match signer.sign(draft) {
                Ok(e) => e,
                Err(e) => {
                    let gone = refuse(format!("cannot be signed: {e}"), &[])?;
                    c.dead += 1;
                    depth = depth.saturating_sub(gone);
                    bytes = bytes.saturating_sub(plen * gone);
                    continue;
                }
            };
            tx.prepare_cached("UPDATE outbox SET seq = ?1, envelope = ?2 WHERE id = ?3")?
                .execute(params![seq as i64, event.encode(), id])?;
            seq += 1;
            done += 1;
        }
        tx.execute(
            "INSERT OR REPLACE INTO meta (k, v) VALUES ('next_seq', ?1)",
            [&seq.to_be_bytes()[..]],
        )?;
        tx.execute(
            "INSERT OR REPLACE INTO meta (k, v) VALUES ('hlc_last', ?1)",
            [&clock.last().as_u64().to_be_bytes()[..]],
        )?;
        Self::prune_dead(&tx)?;
        Self::write_counters(&tx, &mut c)?;
        tx.commit()?;
        self.next_seq = seq;
        self.clock = clock;
        self.counters = c;
        self.depth = depth;
        self.bytes = bytes;
        Ok(done)
    }

    /// Up to `n` sequenced events from `from_seq` on, in sequence order.
    pub(crate) fn ready(&self, from_seq: u64, n: usize) -> anyhow::Result<Vec<Ready>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT seq, envelope FROM outbox WHERE seq >= ?1 ORDER BY seq LIMIT ?2",
        )?;
        let out = stmt
            .query_map(params![from_seq as i64, n as i64], |r| {
                Ok(Ready {
                    seq: r.get::<_, i64>(0)? as u64,
                    envelope: r.get(1)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(out)
    }

    /// Whether unsequenced events wait.
    pub(crate) fn has_unsequenced(&self) -> anyhow::Result<bool> {
        Ok(self
            .conn
            .query_row("SELECT 1 FROM outbox WHERE seq IS NULL LIMIT 1", [], |_| {
                Ok(())
            })
            .optional()?
            .is_some())
    }

    /// The lowest sequenced, unacknowledged sequence number.
    pub(crate) fn head_seq(&self) -> anyhow::Result<Option<u64>> {
        let v: Option<i64> = self
            .conn
            .query_row("SELECT MIN(seq) FROM outbox", [], |r| r.get(0))?;
        Ok(v.map(|v| v as u64))
    }

    /// A node confirmed `first..=last` durable: they leave the outbox.
    pub(crate) fn ack(&mut self, first: u64, last: u64) -> anyhow::Result<u64> {
        let r = self.ack_tx(first, last);
        self.settled(r)
    }

    fn ack_tx(&mut self, first: u64, last: u64) -> anyhow::Result<u64> {
        let tx = self.conn.transaction()?;
        // The rows the delete removed, and their bytes: what the counts follow.
        let gone: Vec<i64> = tx
            .prepare_cached(
                "DELETE FROM outbox WHERE seq BETWEEN ?1 AND ?2 RETURNING length(payload)",
            )?
            .query_map(params![first as i64, last as i64], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let n = gone.len() as u64;
        let b: u64 = gone.iter().map(|l| (*l).max(0) as u64).sum();
        let mut c = self.counters.clone();
        c.delivered += n;
        Self::write_counters(&tx, &mut c)?;
        tx.commit()?;
        self.counters = c;
        self.depth = self.depth.saturating_sub(n);
        self.bytes = self.bytes.saturating_sub(b);
        Ok(n)
    }

    /// A node refused sequenced event `seq` for good: the event moves to the dead-letter
    /// table and its row becomes a signed **void** event under the same number
    /// (`weft_fabric::edge::VOID_STREAM`), sent in its place so that nodes, which deliver
    /// the device's events in sequence order, do not wait for the number forever.
    pub(crate) fn void(
        &mut self,
        seq: u64,
        reason: &str,
        profile: &Profile,
        signer: &Signer,
    ) -> anyhow::Result<()> {
        let r = self.void_tx(seq, reason, profile, signer);
        self.settled(r)
    }

    fn void_tx(
        &mut self,
        seq: u64,
        reason: &str,
        profile: &Profile,
        signer: &Signer,
    ) -> anyhow::Result<()> {
        use weft_fabric::edge::{VOID_CONTENT_TYPE, VOID_PAYLOAD_LEN_MAX, VOID_STREAM};
        let tx = self.conn.transaction()?;
        let row: Option<(i64, i64)> = tx
            .query_row(
                "SELECT length(payload), produced_ms FROM outbox WHERE seq = ?1",
                [seq as i64],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let Some((len, produced_ms)) = row else {
            return Ok(());
        };
        tx.execute(
            "INSERT INTO dead (seq, stream, payload, envelope, reason, at_ms) \
             SELECT seq, stream, payload, envelope, ?2, ?3 FROM outbox WHERE seq = ?1",
            params![seq as i64, reason, wall_ms() as i64],
        )?;
        // The void goes to every node: it names the refusal's code only (`reason` is
        // "code: message"), not the message, which names the refused event's stream, id,
        // class and residency. The whole text stays here, in the dead letters.
        let code: String = reason
            .split(':')
            .next()
            .unwrap_or_default()
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
            .take(VOID_PAYLOAD_LEN_MAX / 2)
            .collect();
        let payload = serde_json::to_vec(&serde_json::json!({"void": seq, "reason": code}))?;
        let mut clock = self.clock.clone();
        let draft = EventDraft {
            stream: StreamName::new(VOID_STREAM)?,
            key: None,
            seq,
            hlc: clock.tick(produced_ms.max(0) as u64)?,
            security: SecurityContext {
                tenant: profile.tenant.clone(),
                principal: profile.principal.clone(),
                classification: "_system".into(),
                residency: Residency::Unrestricted,
                scopes: Default::default(),
                policy_epoch: profile.epoch,
            },
            content_type: VOID_CONTENT_TYPE.into(),
            payload: Payload::Clear(payload.clone()),
            trace: None,
        };
        let event = signer.sign(draft)?;
        tx.execute(
            "UPDATE outbox SET stream = ?2, payload = ?3, envelope = ?4, content_type = ?5 WHERE seq = ?1",
            params![seq as i64, VOID_STREAM, payload, event.encode(), VOID_CONTENT_TYPE],
        )?;
        tx.execute(
            "INSERT OR REPLACE INTO meta (k, v) VALUES ('hlc_last', ?1)",
            [&clock.last().as_u64().to_be_bytes()[..]],
        )?;
        let mut c = self.counters.clone();
        c.dead += 1;
        Self::write_counters(&tx, &mut c)?;
        tx.commit()?;
        self.counters = c;
        self.clock = clock;
        self.bytes = self.bytes.saturating_sub(len.max(0) as u64) + payload.len() as u64;
        Ok(())
    }

    /// A node refused sequenced event `seq` for good and no profile is at hand to sign a
    /// void: it moves to the dead-letter table (its number stays a gap).
    /// Keeps the dead-letter table within [`DEAD_LETTERS_MAX`] rows and
    /// [`DEAD_LETTER_BYTES_MAX`] bytes, the newest rows kept.
    fn prune_dead(tx: &rusqlite::Transaction<'_>) -> anyhow::Result<()> {
        tx.execute(
            "DELETE FROM dead WHERE id <= (SELECT MAX(id) FROM dead) - ?1",
            [DEAD_LETTERS_MAX],
        )?;
        tx.execute(
            "DELETE FROM dead WHERE id IN (SELECT id FROM (SELECT id, SUM(length(payload) +              COALESCE(length(envelope), 0)) OVER (ORDER BY id DESC) AS kept FROM dead)              WHERE kept > ?1)",
            [DEAD_LETTER_BYTES_MAX],
        )?;
        Ok(())
    }

    pub(crate) fn dead_letter(&mut self, seq: u64, reason: &str) -> anyhow::Result<()> {
        let r = self.dead_letter_tx(seq, reason);
        self.settled(r)
    }

    fn dead_letter_tx(&mut self, seq: u64, reason: &str) -> anyhow::Result<()> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT INTO dead (seq, stream, payload, envelope, reason, at_ms) \
             SELECT seq, stream, payload, envelope, ?2, ?3 FROM outbox WHERE seq = ?1",
            params![seq as i64, reason, wall_ms() as i64],
        )?;
        // What the delete removed is what the counts follow, once the transaction
        // commits (they were lowered before the commit, and a failed commit left them
        // lowered for good).
        let gone: Vec<i64> = tx
            .prepare_cached("DELETE FROM outbox WHERE seq = ?1 RETURNING length(payload)")?
            .query_map([seq as i64], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        Self::prune_dead(&tx)?;
        let mut c = self.counters.clone();
        c.dead += gone.len() as u64;
        Self::write_counters(&tx, &mut c)?;
        tx.commit()?;
        self.counters = c;
        self.depth = self.depth.saturating_sub(gone.len() as u64);
        self.bytes = self
            .bytes
            .saturating_sub(gone.iter().map(|l| (*l).max(0) as u64).sum());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A clock that stamped far ahead (the device's clock ran ahead, then was set right)
    /// resumes from now, not from a stamp every node would refuse; one within the bound
    /// resumes where it was.
    #[test]
    fn a_stamp_far_ahead_is_not_resumed() {
        let now = 1_800_000_000_000;
        let near = Hlc::new(now + 30_000, 2).unwrap();
        assert_eq!(resumable(near, now), near);
        let far = Hlc::new(now + 3_600_000, 0).unwrap();
        assert_eq!(resumable(far, now), Hlc::new(now, 0).unwrap());
    }
    use weft_fabric::edge::StampRule;

    fn profile() -> Profile {
        Profile {
            node: "n".into(),
            region: "r".into(),
            epoch: 0,
            principal: "dev".into(),
            tenant: "acme".into(),
            streams: vec!["t.>".into()],
            stamps: vec![],
            default_stamp: Some(StampRule {
                pattern: ">".into(),
                classification: "internal".into(),
                residency: None,
            }),
            rules: vec![],
            commands: None,
            batch_len_max: 256,
            batches_inflight_max: 4,
            origin_seq_max: 0,
        }
    }

    /// A fresh outbox directory named after `tag`, a config holding `events_max` events
    /// (drop-oldest), and the test device's signer.
    fn fresh(tag: &str, events_max: u64) -> (std::path::PathBuf, OutboxConfig, Signer) {
        let dir =
            std::env::temp_dir().join(format!("weft-agent-outbox-{tag}{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let config = OutboxConfig {
            events_max,
            bytes_max: 1 << 20,
            overflow: Overflow::DropOldest,
            ..OutboxConfig::default()
        };
        (dir, config, Signer::from_secret(&[7; 32]))
    }

    fn ev(stream: &str, priority: u8, n: usize) -> NewEvent {
        NewEvent {
            stream: StreamName::new(stream.to_string()).unwrap(),
            priority,
            produced_ms: 1_700_000_000_000,
            content_type: "text/plain".into(),
            payload: format!("event {n}").into_bytes(),
            summary: false,
        }
    }

    #[test]
    fn aggregate_windows_are_kept_with_the_events_and_come_back_after_a_reopen() {
        use weft_fabric::edge::AggregateRule;
        let (dir, config, _) = fresh("windows", 100);
        let rules = vec![LocalRule {
            stream: "temp.>".into(),
            filter: None,
            sample: None,
            aggregate: Some(AggregateRule {
                window_s: 60,
                fields: vec!["c".into()],
            }),
        }];
        let none = Counters::default();
        let mut live = crate::rules::Rules::new(&rules);
        let a = StreamName::new("temp.a").unwrap();
        let b = StreamName::new("temp.b").unwrap();
        for (s, c) in [(&a, 1), (&b, 2), (&a, 3)] {
            let _ = live.apply(s, Some(&serde_json::json!({ "c": c })), 60_000);
        }
        let mut first = live.take_changes();
        first.reset = Some(rules.clone());
        {
            let mut o = Outbox::open(&dir, config.clone()).unwrap();
            assert_eq!(o.windows().unwrap(), (Vec::new(), Vec::new()), "none yet");
            o.insert(&[], &[], &none, &first).unwrap();
        }
        // Reopened (a restart): the rules and both windows, as they were.
        let mut o = Outbox::open(&dir, config.clone()).unwrap();
        let (kept_rules, kept) = o.windows().unwrap();
        assert_eq!(kept_rules, rules);
        assert_eq!(kept, first.open);
        let (mut back, unfit) = crate::rules::Rules::restore(&kept_rules, kept);
        assert_eq!(unfit, 0);
        // temp.a closes (its summary in the same transaction), temp.b takes one more.
        let _ = back.apply(&b, Some(&serde_json::json!({"c": 4})), 61_000);
        let mut second = back.take_changes();
        second.closed.push((0, "temp.a".into()));
        o.insert(&[ev("temp.a", 5, 0)], &[], &none, &second)
            .unwrap();
        let (_, kept) = o.windows().unwrap();
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].0.1, "temp.b");
        assert_eq!(kept[0].1.count, 2);
        // Kept open past its end (no room for its summary): the new end is stored, and a
        // restore resumes the window with it.
        assert!(back.extend(&(0, "temp.b".into()), 130_000));
        o.insert(&[], &[], &none, &back.take_changes()).unwrap();
        let (kept_rules, kept) = o.windows().unwrap();
        assert_eq!((kept[0].1.start_ms, kept[0].1.end_ms), (60_000, 180_000));
        let (resumed, _) = crate::rules::Rules::restore(&kept_rules, kept);
        assert!(resumed.due(179_999, false).is_empty());
        assert_eq!(resumed.due(180_000, false).len(), 1);
        // New rules: every kept window goes, and the new rules are recorded.
        let reset = WindowChanges {
            reset: Some(Vec::new()),
            ..WindowChanges::default()
        };
        o.insert(&[], &[], &none, &reset).unwrap();
        assert_eq!(o.windows().unwrap(), (Vec::new(), Vec::new()));
    }

    /// Summaries have a budget of their own: a full outbox refuses new events but takes
    /// summaries, up to the budget; with drop-oldest, ordinary events never displace them,
    /// and summaries beyond the bound make no ordinary event go.
    #[test]
    fn summaries_have_a_budget_of_their_own() {
        let (dir, mut config, _) = fresh("summaries", 2);
        config.overflow = Overflow::Refuse;
        config.summaries_max = 20;
        let mut o = Outbox::open(&dir, config.clone()).unwrap();
        let none = Counters::default();
        let no_windows = WindowChanges::default();
        let summary = |n| NewEvent {
            summary: true,
            ..ev("t.a", 5, n)
        };
        let ok = o
            .insert(&[ev("t.a", 5, 0), ev("t.a", 5, 1)], &[], &none, &no_windows)
            .unwrap();
        assert_eq!(ok, vec![true, true]);
        // Full: a new event is refused, a summary is taken.
        let ok = o
            .insert(&[ev("t.a", 5, 2), summary(3)], &[], &none, &no_windows)
            .unwrap();
        assert_eq!(ok, vec![false, true]);
        assert_eq!(o.depth(), 3);
        assert_eq!((o.counters.refused_full, o.counters.summaries), (1, 1));
        let len = summary(3).payload.len() as u64;
        assert_eq!(
            o.summary_room().unwrap(),
            SummaryRoom {
                held: 1,
                events: 19,
                bytes: (1 << 20) - len
            }
        );
        // The budget is the caller's to keep (`summary_room`): past it the outbox still takes
        // every summary, since its window is closed in the same transaction (a change of
        // rules closes them all), and the room says none is left.
        let many: Vec<NewEvent> = (0..20).map(|n| summary(10 + n)).collect();
        let ok = o.insert(&many, &[], &none, &no_windows).unwrap();
        assert_eq!(ok, vec![true; 20]);
        assert_eq!(o.depth(), 23);
        assert_eq!((o.counters.refused_full, o.counters.summaries), (1, 21));
        assert_eq!(o.summary_room().unwrap().events, 0);
        drop(o);
        // Reopened, the summaries still count against their budget, not the bound: the
        // room is still none, and an ordinary event is still refused.
        let mut o = Outbox::open(&dir, config.clone()).unwrap();
        let room = o.summary_room().unwrap();
        assert_eq!((room.held, room.events), (21, 0));
        assert_eq!(
            o.insert(&[ev("t.a", 5, 999)], &[], &none, &no_windows)
                .unwrap(),
            vec![false]
        );
        // The byte budget too: a room of one byte takes no summary.
        let mut room = SummaryRoom {
            held: 0,
            events: 5,
            bytes: len,
        };
        assert!(room.take(len as usize));
        assert!(!room.take(1));
        assert_eq!(room.events, 4);

        // Drop-oldest, an outbox full of events above the summaries' priority: summaries
        // are all kept (none displaces another), and a new ordinary event drops one
        // ordinary event, never a summary.
        let (dir, config, _) = fresh("summaries-drop", 2);
        let mut o = Outbox::open(&dir, config).unwrap();
        o.insert(&[ev("t.a", 9, 0), ev("t.a", 9, 1)], &[], &none, &no_windows)
            .unwrap();
        let five: Vec<NewEvent> = (0..5).map(|n| summary(2 + n)).collect();
        assert_eq!(
            o.insert(&five, &[], &none, &no_windows).unwrap(),
            vec![true; 5]
        );
        assert_eq!((o.depth(), o.counters.dropped_overflow), (7, 0));
        assert_eq!(
            o.insert(&[ev("t.a", 9, 7)], &[], &none, &no_windows)
                .unwrap(),
            vec![true]
        );
        assert_eq!((o.depth(), o.counters.dropped_overflow), (7, 1));
    }

    /// An outbox from before the summary column gets it at open; its rows are ordinary.
    #[test]
    fn an_older_outbox_gets_the_summary_column() {
        let (dir, config, _) = fresh("summary-column", 10);
        let mut o = Outbox::open(&dir, config.clone()).unwrap();
        let none = Counters::default();
        o.insert(&[ev("t.a", 5, 0)], &[], &none, &WindowChanges::default())
            .unwrap();
        drop(o);
        let conn = rusqlite::Connection::open(dir.join("outbox.db")).unwrap();
        conn.execute_batch("DROP INDEX outbox_summaries; ALTER TABLE outbox DROP COLUMN summary;")
            .unwrap();
        drop(conn);
        let o = Outbox::open(&dir, config).unwrap();
        assert_eq!(o.depth(), 1);
        let ordinary: i64 = o
            .conn
            .query_row("SELECT COUNT(*) FROM outbox WHERE summary = 0", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(ordinary, 1);
    }

    /// A void goes to every node: it names the refusal's code, not its message (which
    /// names the refused event's stream, id, class and residency); the dead letter here
    /// keeps the whole text.
    #[test]
    fn a_void_names_the_refusals_code_only() {
        let (dir, config, signer) = fresh("void", 10);
        let mut o = Outbox::open(&dir, config).unwrap();
        o.insert(
            &[ev("t.a", 5, 0)],
            &[],
            &Counters::default(),
            &WindowChanges::default(),
        )
        .unwrap();
        assert_eq!(o.sequence(10, &profile(), &signer).unwrap(), 1);
        let why =
            "residency_wider: event 1f2e on t.a: classification \"eu-personal\" with residency EU";
        o.void(1, why, &profile(), &signer).unwrap();
        let ready = o.ready(1, 10).unwrap();
        let void = weft_fabric::decode(&ready[0].envelope)
            .unwrap()
            .verify()
            .unwrap();
        assert_eq!(void.stream().as_str(), weft_fabric::edge::VOID_STREAM);
        let weft_fabric::Payload::Clear(bytes) = void.payload() else {
            panic!("a void is clear");
        };
        let body: serde_json::Value = serde_json::from_slice(bytes).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"void": 1, "reason": "residency_wider"})
        );
        let kept: String = o
            .conn
            .query_row("SELECT reason FROM dead WHERE seq = 1", [], |r| r.get(0))
            .unwrap();
        assert_eq!(kept, why);
    }

    /// The dead letters keep the newest rows within a row count and a byte bound: events of
    /// up to 1 MiB each, a thousand of them, would otherwise be a gigabyte on a device.
    #[test]
    fn the_dead_letters_are_bounded_in_bytes_too() {
        let (dir, mut config, signer) = fresh("deadbytes", 100);
        config.bytes_max = 64 << 20;
        let mut o = Outbox::open(&dir, config).unwrap();
        let big = |n: usize| NewEvent {
            payload: vec![b'x'; 512 << 10],
            ..ev("t.a", 5, n)
        };
        for n in 0..40 {
            o.insert(
                &[big(n)],
                &[],
                &Counters::default(),
                &WindowChanges::default(),
            )
            .unwrap();
            let seq = n as u64 + 1;
            assert_eq!(o.sequence(1, &profile(), &signer).unwrap(), 1);
            o.dead_letter(seq, "refused").unwrap();
        }
        let (rows, bytes, newest): (i64, i64, i64) = o
            .conn
            .query_row(
                "SELECT COUNT(*), SUM(length(payload) + COALESCE(length(envelope), 0)),                  MAX(seq) FROM dead",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert!(
            bytes <= DEAD_LETTER_BYTES_MAX,
            "{bytes} bytes in {rows} rows"
        );
        assert!((10..40).contains(&rows), "{rows} rows");
        assert_eq!(newest, 40, "the newest are kept");
        assert_eq!(o.counters.dead, 40, "every one counted");
    }

    /// Drop-oldest frees room only when that is enough: an event bigger than what the
    /// droppable events would free is refused alone, and nothing is dropped for it.
    #[test]
    fn drop_oldest_drops_nothing_for_an_event_it_cannot_make_room_for() {
        let (dir, mut config, _) = fresh("room", 100);
        config.bytes_max = 64 * 1024;
        let mut o = Outbox::open(&dir, config).unwrap();
        let none = Counters::default();
        let small: Vec<NewEvent> = (0..10).map(|n| ev("t.a", 5, n)).collect();
        o.insert(&small, &[], &none, &WindowChanges::default())
            .unwrap();
        let mut big = ev("t.a", 5, 99);
        big.payload = vec![b'x'; 100 * 1024];
        let r = o
            .insert(&[big], &[], &none, &WindowChanges::default())
            .unwrap();
        assert_eq!(r, vec![false]);
        assert_eq!(o.depth(), 10, "none of the ten was dropped for it");
        assert_eq!(o.counters.dropped_overflow, 0);
        assert_eq!(o.counters.refused_full, 1);
        // An event that fits once one goes: the oldest goes.
        let mut fits = ev("t.a", 5, 100);
        fits.payload = vec![b'y'; 64 * 1024 - 20];
        let r = o
            .insert(&[fits], &[], &none, &WindowChanges::default())
            .unwrap();
        assert_eq!(r, vec![true]);
        assert!(o.counters.dropped_overflow >= 1);
    }

    #[test]
    fn sequence_numbers_survive_a_reopen_and_overflow_never_drops_a_sequenced_event() {
        let (dir, config, signer) = fresh("", 3);
        let mut o = Outbox::open(&dir, config.clone()).unwrap();
        let none = Counters::default();
        let ok = o
            .insert(
                &[ev("t.a", 5, 0), ev("t.a", 5, 1), ev("x.b", 5, 2)],
                &[],
                &none,
                &WindowChanges::default(),
            )
            .unwrap();
        assert_eq!(ok, vec![true, true, true]);
        // The stream x.b is not enrolled: dead-lettered without a number.
        assert_eq!(o.sequence(10, &profile(), &signer).unwrap(), 2);
        assert_eq!(o.counters.dead, 1);
        assert_eq!(o.depth(), 2);
        // Full at 3: a new event drops the oldest unsequenced one, never a sequenced one.
        o.insert(&[ev("t.a", 5, 3)], &[], &none, &WindowChanges::default())
            .unwrap();
        let r = o
            .insert(&[ev("t.a", 5, 4)], &[], &none, &WindowChanges::default())
            .unwrap();
        assert_eq!(r, vec![true]);
        assert_eq!(o.counters.dropped_overflow, 1);
        // A lower priority cannot evict a higher one: refused.
        let r = o
            .insert(&[ev("t.a", 1, 5)], &[], &none, &WindowChanges::default())
            .unwrap();
        assert_eq!(r, vec![false]);
        assert_eq!(o.counters.refused_full, 1);
        drop(o);
        let mut o = Outbox::open(&dir, config).unwrap();
        assert_eq!(o.next_seq(), 3);
        assert_eq!(o.depth(), 3);
        assert_eq!(o.counters.dropped_overflow, 1);
        assert_eq!(o.sequence(10, &profile(), &signer).unwrap(), 1);
        let ready = o.ready(1, 10).unwrap();
        assert_eq!(
            ready.iter().map(|r| r.seq).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        let e = weft_fabric::decode(&ready[2].envelope)
            .unwrap()
            .verify()
            .unwrap();
        assert_eq!(e.seq(), 3);
        assert_eq!(e.security().principal, "dev");
        assert_eq!(o.ack(1, 2).unwrap(), 2);
        assert_eq!(o.head_seq().unwrap(), Some(3));
        assert_eq!(o.counters.delivered, 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// An outbox that starts over (lost, or restored from an older copy) while the node
    /// already holds numbers of this device numbers its events after them.
    #[test]
    fn numbering_continues_after_what_the_node_holds() {
        let (dir, config, signer) = fresh("n-", 100);
        let mut o = Outbox::open(&dir, config.clone()).unwrap();
        let none = Counters::default();
        o.insert(
            &[ev("t.a", 5, 0), ev("t.a", 5, 1)],
            &[],
            &none,
            &WindowChanges::default(),
        )
        .unwrap();
        let mut held = profile();
        held.origin_seq_max = 40;
        assert_eq!(o.sequence(10, &held, &signer).unwrap(), 2);
        let seqs = |o: &Outbox| {
            o.ready(1, 10)
                .unwrap()
                .iter()
                .map(|r| r.seq)
                .collect::<Vec<_>>()
        };
        assert_eq!(seqs(&o), vec![41, 42]);
        assert_eq!(o.next_seq(), 43);
        // Below what the outbox reached: no effect.
        o.insert(&[ev("t.a", 5, 2)], &[], &none, &WindowChanges::default())
            .unwrap();
        held.origin_seq_max = 41;
        assert_eq!(o.sequence(10, &held, &signer).unwrap(), 1);
        assert_eq!(seqs(&o), vec![41, 42, 43]);
        drop(o);
        assert_eq!(Outbox::open(&dir, config).unwrap().next_seq(), 44);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Numbers the node holds with other content are taken back: those events are
    /// numbered again after what the node holds, in their order; numbers outside the range
    /// keep their events.
    #[test]
    fn numbers_taken_back_are_given_again_after_what_the_node_holds() {
        let (dir, config, signer) = fresh("r-", 100);
        let mut o = Outbox::open(&dir, config).unwrap();
        let none = Counters::default();
        let evs: Vec<NewEvent> = (0..5).map(|n| ev("t.a", 5, n)).collect();
        o.insert(&evs, &[], &none, &WindowChanges::default())
            .unwrap();
        assert_eq!(o.sequence(10, &profile(), &signer).unwrap(), 5);
        // The node holds 2 and 3 with other content (and nothing above).
        assert_eq!(o.renumber(&[2, 3], 3).unwrap(), 2);
        assert_eq!(o.next_seq(), 6);
        assert_eq!(o.sequence(10, &profile(), &signer).unwrap(), 2);
        let ready = o.ready(1, 10).unwrap();
        let payload = |seq: u64| {
            let r = ready.iter().find(|r| r.seq == seq).unwrap();
            let e = weft_fabric::decode(&r.envelope).unwrap().verify().unwrap();
            assert_eq!(e.seq(), seq);
            match e.payload() {
                Payload::Clear(b) => String::from_utf8(b.clone()).unwrap(),
                Payload::Sealed(_) => panic!("sealed"),
            }
        };
        assert_eq!(
            ready.iter().map(|r| r.seq).collect::<Vec<_>>(),
            vec![1, 4, 5, 6, 7]
        );
        assert_eq!(payload(1), "event 0");
        assert_eq!(payload(4), "event 3");
        assert_eq!(payload(6), "event 1");
        assert_eq!(payload(7), "event 2");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// One agent per data directory: a second open is refused with an error naming the
    /// directory (two agents on one outbox wedged the first: `507 outbox_full` on an empty
    /// outbox, a depth of 2^64 - 29); the lock goes with the outbox.
    #[test]
    fn a_second_agent_on_the_data_directory_is_refused() {
        let (dir, config, _) = fresh("lock-", 10);
        let first = Outbox::open(&dir, config.clone()).unwrap();
        let e = Outbox::open(&dir, config.clone()).unwrap_err();
        let text = format!("{e:#}");
        assert!(
            matches!(e.downcast_ref(), Some(OpenError::Locked { .. })),
            "{text}"
        );
        assert!(
            text.contains(&dir.display().to_string())
                && text.contains(&format!("pid {}", std::process::id())),
            "{text}"
        );
        assert_eq!(lock_holder(&dir), Some(std::process::id().to_string()));
        drop(first);
        assert_eq!(lock_holder(&dir), None);
        Outbox::open(&dir, config).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The data directory is made 0700 and the outbox's files 0600: it holds the device's
    /// events (it was 0644 in a 0755 directory, beside a key that must be 0600).
    #[cfg(unix)]
    #[test]
    fn the_outbox_is_readable_by_its_user_only() {
        use std::os::unix::fs::PermissionsExt as _;
        let (dir, config, _) = fresh("mode-", 10);
        let dir = dir.join("nested");
        let mut o = Outbox::open(&dir, config).unwrap();
        o.insert(
            &[ev("t.a", 5, 0)],
            &[],
            &Counters::default(),
            &WindowChanges::default(),
        )
        .unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        for f in [OUTBOX_FILE, "outbox.db-wal", "outbox.db-shm", LOCK_FILE] {
            assert_eq!(mode(&dir.join(f)), 0o600, "{f}");
        }
        drop(o);
        std::fs::remove_dir_all(dir.parent().unwrap()).unwrap();
    }

    /// The counts in memory follow what SQLite changed and can never go below zero: rows
    /// another writer added behind the outbox's back (a second agent, before the lock)
    /// were acknowledged and dead-lettered here and took the depth below zero (a wrapped
    /// u64, and every later event refused as if the outbox were full). A failed write
    /// reads the counts again from the table.
    #[test]
    fn the_outbox_counts_follow_what_sqlite_changed() {
        let (dir, config, signer) = fresh("counts-", 100);
        let mut o = Outbox::open(&dir, config).unwrap();
        let none = Counters::default();
        let no_windows = WindowChanges::default();
        o.insert(&[ev("t.a", 5, 0), ev("t.a", 5, 1)], &[], &none, &no_windows)
            .unwrap();
        // Another connection adds three rows (one for a stream the profile does not
        // enroll: it is dead-lettered when sequenced).
        let other = rusqlite::Connection::open(dir.join(OUTBOX_FILE)).unwrap();
        for (stream, n) in [("t.b", 2), ("t.b", 3), ("u.x", 4)] {
            other
                .execute(
                    "INSERT INTO outbox (stream, priority, produced_ms, content_type, payload) \
                     VALUES (?1, 5, 1700000000000, 'text/plain', ?2)",
                    params![stream, format!("event {n}").into_bytes()],
                )
                .unwrap();
        }
        assert_eq!(o.depth(), 2, "the outbox does not know of them yet");
        assert_eq!(o.sequence(10, &profile(), &signer).unwrap(), 4);
        assert_eq!(o.counters.dead, 1);
        assert_eq!(o.depth(), 1);
        // All four acknowledged: the depth stops at zero.
        assert_eq!(o.ack(1, 4).unwrap(), 4);
        assert_eq!((o.depth(), o.bytes()), (0, 0));
        assert_eq!(o.counters.delivered, 4);
        // Not refused as full: the outbox takes events again.
        let ok = o
            .insert(&[ev("t.a", 5, 5)], &[], &none, &no_windows)
            .unwrap();
        assert_eq!(ok, vec![true]);
        // A write that fails (another writer holds the database) reads the counts again.
        other
            .execute(
                "INSERT INTO outbox (stream, priority, produced_ms, content_type, payload) \
                 VALUES ('t.c', 5, 0, 'text/plain', x'00')",
                [],
            )
            .unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        assert!(
            o.insert(&[ev("t.a", 5, 6)], &[], &none, &no_windows)
                .is_err()
        );
        assert_eq!(o.depth(), 2, "recounted from the table after the failure");
        other.execute_batch("ROLLBACK").unwrap();
        drop(other);
        drop(o);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
