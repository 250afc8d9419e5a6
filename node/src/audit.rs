//! The audit log: every security decision the node takes (each deny, each policy or
//! fault-injection change) with its reason code, principal, stream, event id, policy epoch
//! and node, kept in SQLite (`audit.sqlite` in the data directory) with retention by age
//! and count, read back through `GET /v1/audit` and `weft audit`.
//!
//! Why a database of its own rather than a table in `weft.db`: SQLite has one writer per
//! database, and the driver's group commit must never wait behind an audit write (or the
//! reverse). The two files share nothing but the directory.
//!
//! Writing never blocks a request: [`Audit::record`] writes the `audit` tracing line at
//! once, then puts the entry on a bounded queue ([`AUDIT_QUEUE_LEN_MAX`]) drained by one
//! writer thread in transactions of up to [`AUDIT_BATCH_LEN_MAX`]. When the queue is full
//! the entry is not stored, but it is not silently lost either: its tracing line is already
//! in the node's log, `weft_audit_dropped_total` counts it, and the writer stores one
//! `audit_overflow` entry saying how many entries are missing as soon as the queue has room.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags, params_from_iter};
use serde::Serialize;

use crate::metrics::Metrics;

/// Entries waiting for the writer. A deny costs the writer about 10 µs in a batch; 16384
/// entries is over a second of the fastest refusal rate the HTTP API sustains on one core,
/// and about 8 MB of memory at the largest entry size.
pub(crate) const AUDIT_QUEUE_LEN_MAX: usize = 16_384;
/// Entries per write transaction (one fsync each).
pub(crate) const AUDIT_BATCH_LEN_MAX: usize = 1024;
/// Most entries one `GET /v1/audit` returns.
pub(crate) const AUDIT_READ_LIMIT_MAX: usize = 1000;
/// Entries `GET /v1/audit` returns without `limit`.
pub(crate) const AUDIT_READ_LIMIT_DEFAULT: usize = 100;
/// How often the writer applies retention.
pub(crate) const AUDIT_PRUNE_INTERVAL: Duration = Duration::from_secs(60);
/// Longest message stored (bytes; longer ones are cut at a character boundary).
pub(crate) const AUDIT_MESSAGE_LEN_MAX: usize = 2048;
/// Longest principal or stream stored (bytes).
pub(crate) const AUDIT_NAME_LEN_MAX: usize = 256;
/// Reason codes are snake_case identifiers of at most this many bytes.
pub(crate) const AUDIT_REASON_LEN_MAX: usize = 64;
/// Most distinct reasons a read lists when its reason filter names one the log does not
/// hold (`reasons_in_log`).
pub(crate) const AUDIT_REASONS_LISTED_MAX: usize = 200;

const MS_PER_DAY: i64 = 86_400_000;

/// What was decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Decision {
    /// A request, event or start-up claim was refused.
    Deny,
    /// A policy bundle was applied.
    Apply,
    /// Fault injection (or another runtime setting) was changed.
    Change,
    /// Entries were dropped because the audit queue was full.
    Overflow,
    /// An egress transform could not derive its event (the source event is accepted).
    EgressFailed,
}

impl Decision {
    /// Every decision, as stored and as `?decision=` accepts it.
    pub(crate) const ALL: [Decision; 5] = [
        Decision::Deny,
        Decision::Apply,
        Decision::Change,
        Decision::Overflow,
        Decision::EgressFailed,
    ];

    /// The stored text.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Decision::Deny => "deny",
            Decision::Apply => "apply",
            Decision::Change => "change",
            Decision::Overflow => "overflow",
            Decision::EgressFailed => "egress_failed",
        }
    }

    /// Parses the stored text.
    pub(crate) fn parse(s: &str) -> Option<Decision> {
        Self::ALL.into_iter().find(|d| d.as_str() == s)
    }
}

/// One audit entry, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    /// Unix time, milliseconds.
    pub(crate) time_ms: i64,
    /// What was decided.
    pub(crate) decision: Decision,
    /// The reason code: the API error's `reason` and the `weft_rejected_total` label.
    pub(crate) reason: String,
    /// The principal the decision concerns, when there is one.
    pub(crate) principal: Option<String>,
    /// The stream, when there is one.
    pub(crate) stream: Option<String>,
    /// The event id (hex), when the decision is about one event.
    pub(crate) event_id: Option<String>,
    /// The policy epoch in force (0: none).
    pub(crate) epoch: u64,
    /// The sentence: what was refused or changed, and why.
    pub(crate) message: String,
}

impl Entry {
    /// An entry stamped with the current wall-clock time.
    pub(crate) fn now(decision: Decision, reason: &str, epoch: u64, message: String) -> Self {
        Self {
            time_ms: crate::driver::wall_ms(),
            decision,
            reason: reason.to_string(),
            principal: None,
            stream: None,
            event_id: None,
            epoch,
            message,
        }
    }

    /// With a principal.
    pub(crate) fn principal(mut self, p: impl Into<String>) -> Self {
        self.principal = Some(p.into());
        self
    }

    /// With a stream.
    pub(crate) fn stream(mut self, s: impl Into<String>) -> Self {
        self.stream = Some(s.into());
        self
    }

    /// With an event id.
    pub(crate) fn event(mut self, id: impl Into<String>) -> Self {
        self.event_id = Some(id.into());
        self
    }

    fn bounded(mut self) -> Self {
        cut(&mut self.message, AUDIT_MESSAGE_LEN_MAX);
        cut(&mut self.reason, AUDIT_REASON_LEN_MAX);
        for s in [&mut self.principal, &mut self.stream, &mut self.event_id]
            .into_iter()
            .flatten()
        {
            cut(s, AUDIT_NAME_LEN_MAX);
        }
        self
    }
}

fn cut(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

/// A stored entry with its id (the cursor of `GET /v1/audit`) and the node that wrote it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct Row {
    /// Ascending with insertion; `before=` pages backwards through it.
    pub(crate) id: i64,
    pub(crate) time_ms: i64,
    pub(crate) node: String,
    pub(crate) node_key: String,
    pub(crate) decision: String,
    pub(crate) reason: String,
    pub(crate) principal: Option<String>,
    pub(crate) stream: Option<String>,
    pub(crate) event_id: Option<String>,
    pub(crate) epoch: u64,
    pub(crate) message: String,
}

/// Which entries a query wants: newest first, all conditions together.
#[derive(Debug, Clone, Default)]
pub(crate) struct Filter {
    /// Entries at or after this unix time (ms).
    pub(crate) since_ms: Option<i64>,
    /// Entries with an id below this (the previous page's `next_before`).
    pub(crate) before: Option<i64>,
    pub(crate) decision: Option<Decision>,
    pub(crate) reason: Option<String>,
    pub(crate) principal: Option<String>,
    pub(crate) stream: Option<String>,
    /// 1 to [`AUDIT_READ_LIMIT_MAX`].
    pub(crate) limit: usize,
}

/// How long entries are kept: both bounds apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Retention {
    /// Entries older than this many days are deleted.
    pub(crate) days: u32,
    /// Beyond this many entries, the oldest are deleted.
    pub(crate) entries_max: u64,
}

/// An audit log failure; nothing was stored.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AuditError {
    /// SQLite refused an operation on the audit database.
    #[error("audit log {path}: {source}")]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    /// The writer thread could not be started.
    #[error("starting the audit writer: {0}")]
    Thread(#[source] std::io::Error),
    /// The audit database file could not be created (mode 0600).
    #[error("creating the audit log {path}: {source}")]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time_ms INTEGER NOT NULL,
    node TEXT NOT NULL,
    node_key TEXT NOT NULL,
    decision TEXT NOT NULL,
    reason TEXT NOT NULL,
    principal TEXT,
    stream TEXT,
    event_id TEXT,
    epoch INTEGER NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_time ON audit (time_ms);
CREATE INDEX IF NOT EXISTS audit_reason ON audit (reason, id);
CREATE INDEX IF NOT EXISTS audit_principal ON audit (principal, id);
";

/// The audit database file in a data directory.
pub(crate) fn db_path(dir: &Path) -> PathBuf {
    dir.join("audit.sqlite")
}

/// The SQLite side: one connection (the writer's, or a reader's).
pub(crate) struct AuditStore {
    conn: Connection,
    path: PathBuf,
}

impl AuditStore {
    /// Opens (creating if needed) the audit database in `dir`, WAL, `synchronous=FULL`: an
    /// entry the writer committed survives a crash.
    pub(crate) fn open(dir: &Path) -> Result<Self, AuditError> {
        let path = db_path(dir);
        let err = |source| AuditError::Sqlite {
            path: path.clone(),
            source,
        };
        // Readable by this user only (it was created 0644 under a umask of 022: an
        // operator review); one that exists keeps its mode, with a warning.
        crate::store::private_db_file(&path).map_err(|source| AuditError::Create {
            path: path.clone(),
            source,
        })?;
        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(err)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(err)?;
        let _: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
            .map_err(err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(err)?;
        conn.execute_batch(SCHEMA).map_err(err)?;
        Ok(Self { conn, path })
    }

    /// A read-only connection to the audit database in `dir` (for queries).
    pub(crate) fn open_reader(dir: &Path) -> Result<Self, AuditError> {
        let path = db_path(dir);
        let err = |source| AuditError::Sqlite {
            path: path.clone(),
            source,
        };
        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(err)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(err)?;
        Ok(Self { conn, path })
    }

    fn err(&self, source: rusqlite::Error) -> AuditError {
        AuditError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// Stores `entries` in one transaction, attributed to `node` / `node_key`.
    pub(crate) fn insert(
        &mut self,
        node: &str,
        node_key: &str,
        entries: &[Entry],
    ) -> Result<(), AuditError> {
        let tx = self.conn.transaction().map_err(|e| AuditError::Sqlite {
            path: self.path.clone(),
            source: e,
        })?;
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT INTO audit (time_ms, node, node_key, decision, reason, principal, \
                     stream, event_id, epoch, message) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10)",
                )
                .map_err(|e| AuditError::Sqlite {
                    path: self.path.clone(),
                    source: e,
                })?;
            for e in entries {
                stmt.execute(rusqlite::params![
                    e.time_ms,
                    node,
                    node_key,
                    e.decision.as_str(),
                    e.reason,
                    e.principal,
                    e.stream,
                    e.event_id,
                    i64::try_from(e.epoch).unwrap_or(i64::MAX),
                    e.message,
                ])
                .map_err(|e| AuditError::Sqlite {
                    path: self.path.clone(),
                    source: e,
                })?;
            }
        }
        tx.commit().map_err(|e| self.err(e))
    }

    /// Deletes entries older than `retention.days` before `now_ms` and, beyond
    /// `retention.entries_max`, the oldest. Returns how many were deleted.
    pub(crate) fn prune(&mut self, now_ms: i64, retention: Retention) -> Result<u64, AuditError> {
        let cutoff = now_ms.saturating_sub(i64::from(retention.days).saturating_mul(MS_PER_DAY));
        let by_age = self
            .conn
            .execute("DELETE FROM audit WHERE time_ms < ?1", [cutoff])
            .map_err(|e| self.err(e))?;
        let keep = i64::try_from(retention.entries_max).unwrap_or(i64::MAX);
        // Ids ascend with insertion: everything at or below the (keep+1)-th newest goes.
        let by_count = self
            .conn
            .execute(
                "DELETE FROM audit WHERE id <= (SELECT id FROM audit ORDER BY id DESC \
                 LIMIT 1 OFFSET ?1)",
                [keep],
            )
            .map_err(|e| self.err(e))?;
        Ok((by_age + by_count) as u64)
    }

    /// The distinct reasons the log holds, in order, at most `limit`: what a reader who
    /// filtered on a reason no entry has can pick from. A loose index scan over
    /// `audit_reason` (one seek per distinct reason), not a walk of every entry.
    pub(crate) fn reasons(&self, limit: usize) -> Result<Vec<String>, AuditError> {
        let mut stmt = self
            .conn
            .prepare(
                "WITH RECURSIVE r(reason) AS ( \
                   SELECT MIN(reason) FROM audit \
                   UNION ALL \
                   SELECT (SELECT MIN(reason) FROM audit WHERE reason > r.reason) FROM r \
                   WHERE r.reason IS NOT NULL) \
                 SELECT reason FROM r WHERE reason IS NOT NULL LIMIT ?1",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([limit as i64], |r| r.get(0))
            .map_err(|e| self.err(e))?
            .collect::<Result<Vec<String>, _>>()
            .map_err(|e| self.err(e))?;
        Ok(rows)
    }

    /// Entries matching `f`, newest first.
    pub(crate) fn query(&self, f: &Filter) -> Result<Vec<Row>, AuditError> {
        let mut sql = String::from(
            "SELECT id, time_ms, node, node_key, decision, reason, principal, stream, \
             event_id, epoch, message FROM audit WHERE 1=1",
        );
        let mut args: Vec<rusqlite::types::Value> = Vec::new();
        let mut cond = |sql: &mut String, clause: &str, v: rusqlite::types::Value| {
            args.push(v);
            sql.push_str(&format!(" AND {clause} ?{}", args.len()));
        };
        if let Some(s) = f.since_ms {
            cond(&mut sql, "time_ms >=", s.into());
        }
        if let Some(b) = f.before {
            cond(&mut sql, "id <", b.into());
        }
        if let Some(d) = f.decision {
            cond(&mut sql, "decision =", d.as_str().to_string().into());
        }
        if let Some(r) = &f.reason {
            cond(&mut sql, "reason =", r.clone().into());
        }
        if let Some(p) = &f.principal {
            cond(&mut sql, "principal =", p.clone().into());
        }
        if let Some(s) = &f.stream {
            cond(&mut sql, "stream =", s.clone().into());
        }
        let limit = f.limit.clamp(1, AUDIT_READ_LIMIT_MAX);
        sql.push_str(&format!(" ORDER BY id DESC LIMIT {limit}"));
        let mut stmt = self.conn.prepare(&sql).map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params_from_iter(args), |r| {
                Ok(Row {
                    id: r.get(0)?,
                    time_ms: r.get(1)?,
                    node: r.get(2)?,
                    node_key: r.get(3)?,
                    decision: r.get(4)?,
                    reason: r.get(5)?,
                    principal: r.get(6)?,
                    stream: r.get(7)?,
                    event_id: r.get(8)?,
                    epoch: u64::try_from(r.get::<_, i64>(9)?).unwrap_or(0),
                    message: r.get(10)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }

    /// Entries stored.
    #[cfg(test)]
    pub(crate) fn count(&self) -> Result<u64, AuditError> {
        self.conn
            .query_row("SELECT COUNT(*) FROM audit", [], |r| r.get::<_, i64>(0))
            .map(|n| n as u64)
            .map_err(|e| self.err(e))
    }
}

enum Msg {
    Entry(Box<Entry>),
    /// Answered once everything queued before it is committed.
    Flush(std::sync::mpsc::Sender<()>),
}

struct Inner {
    tx: SyncSender<Msg>,
    node: String,
    node_key: String,
    dir: PathBuf,
    metrics: Arc<Metrics>,
    /// Entries refused by a full queue since the writer last reported them.
    dropped: AtomicU64,
    /// Entries queued and not yet written (for the queue-depth gauge).
    queued: AtomicU64,
}

/// The node's audit log: cheap to clone, shared by the HTTP handlers, the driver and
/// `serve`.
#[derive(Clone)]
pub(crate) struct Audit {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Audit")
    }
}

impl Audit {
    /// Opens the audit database in `dir` and starts its writer thread, which applies
    /// `retention` at start and every [`AUDIT_PRUNE_INTERVAL`].
    pub(crate) fn start(
        dir: &Path,
        node: &str,
        node_key: &str,
        retention: Retention,
        metrics: Arc<Metrics>,
    ) -> Result<Self, AuditError> {
        let (audit, run) =
            Self::build(dir, node, node_key, retention, metrics, AUDIT_QUEUE_LEN_MAX)?;
        std::thread::Builder::new()
            .name("weft-audit".into())
            .spawn(run)
            .map_err(AuditError::Thread)?;
        Ok(audit)
    }

    /// The handle and its writer loop (not yet running), with a queue of `queue_len`.
    fn build(
        dir: &Path,
        node: &str,
        node_key: &str,
        retention: Retention,
        metrics: Arc<Metrics>,
        queue_len: usize,
    ) -> Result<(Self, impl FnOnce() + Send + 'static), AuditError> {
        let store = AuditStore::open(dir)?;
        let (tx, rx) = std::sync::mpsc::sync_channel(queue_len);
        let inner = Arc::new(Inner {
            tx,
            node: node.to_string(),
            node_key: node_key.to_string(),
            dir: dir.to_path_buf(),
            metrics,
            dropped: AtomicU64::new(0),
            queued: AtomicU64::new(0),
        });
        let weak = Arc::downgrade(&inner);
        Ok((Self { inner }, move || writer(store, rx, weak, retention)))
    }

    /// A handle with no database behind it, for unit tests of other modules: entries go
    /// to the tracing line and count as dropped.
    #[cfg(test)]
    pub(crate) fn detached(metrics: Arc<Metrics>) -> Self {
        let (tx, _) = std::sync::mpsc::sync_channel(1);
        Self {
            inner: Arc::new(Inner {
                tx,
                node: "test".into(),
                node_key: String::new(),
                dir: PathBuf::new(),
                metrics,
                dropped: AtomicU64::new(0),
                queued: AtomicU64::new(0),
            }),
        }
    }

    /// Records an entry: the `audit` tracing line now, the database row by the writer
    /// thread. Never blocks; a full queue is counted (see the module docs).
    pub(crate) fn record(&self, entry: Entry) {
        let e = entry.bounded();
        // `None` fields are left out of the line.
        let principal = e.principal.as_deref();
        let stream = e.stream.as_deref();
        let event = e.event_id.as_deref();
        match e.decision {
            Decision::Deny | Decision::Overflow | Decision::EgressFailed => {
                tracing::warn!(target: "audit", decision = e.decision.as_str(), reason = %e.reason,
                    principal, stream, event, epoch = e.epoch, "{}", e.message);
            }
            Decision::Apply | Decision::Change => {
                tracing::info!(target: "audit", decision = e.decision.as_str(), reason = %e.reason,
                    principal, stream, event, epoch = e.epoch, "{}", e.message);
            }
        }
        crate::metrics::Metrics::inc(
            &self.inner.metrics.audit_entries,
            "decision",
            e.decision.as_str(),
        );
        // Counted before it is sent: the writer may take and write it before this thread
        // runs again, and its decrement must find the increment there (counted after, the
        // gauge drifted up by one each time that happened).
        self.inner.queued.fetch_add(1, Ordering::Relaxed);
        match self.inner.tx.try_send(Msg::Entry(Box::new(e))) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.inner.queued.fetch_sub(1, Ordering::Relaxed);
                self.inner.dropped.fetch_add(1, Ordering::Relaxed);
                self.inner.metrics.audit_dropped.inc();
            }
        }
    }

    /// A deny: `reason` is the API error's reason code.
    pub(crate) fn deny(
        &self,
        reason: &str,
        principal: Option<&str>,
        stream: Option<&str>,
        epoch: u64,
        message: impl Into<String>,
    ) {
        let mut e = Entry::now(Decision::Deny, reason, epoch, message.into());
        e.principal = principal.map(str::to_string);
        e.stream = stream.map(str::to_string);
        self.record(e);
    }

    /// Waits (at most `limit`) until everything recorded so far is committed. For the
    /// paths that end the process (a refused bundle at start, shutdown).
    pub(crate) fn flush(&self, limit: Duration) -> bool {
        let (tx, rx) = std::sync::mpsc::channel();
        let deadline = Instant::now() + limit;
        let mut msg = Msg::Flush(tx);
        loop {
            match self.inner.tx.try_send(msg) {
                Ok(()) => break,
                Err(TrySendError::Full(m)) if Instant::now() < deadline => {
                    msg = m;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(_) => return false,
            }
        }
        rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .is_ok()
    }

    /// Entries matching `f`, newest first (a reader connection of its own; blocking).
    pub(crate) fn query(&self, f: &Filter) -> Result<Vec<Row>, AuditError> {
        AuditStore::open_reader(&self.inner.dir)?.query(f)
    }

    /// Entries matching `f`, and when a reason filter matched none, the reasons the log
    /// does hold (at most [`AUDIT_REASONS_LISTED_MAX`]): a mistyped reason is told apart
    /// from a quiet log (a reader connection of its own; blocking).
    pub(crate) fn query_explained(
        &self,
        f: &Filter,
    ) -> Result<(Vec<Row>, Option<Vec<String>>), AuditError> {
        let store = AuditStore::open_reader(&self.inner.dir)?;
        let rows = store.query(f)?;
        let reasons = match &f.reason {
            Some(r) if rows.is_empty() => {
                let held = store.reasons(AUDIT_REASONS_LISTED_MAX)?;
                (!held.contains(r)).then_some(held)
            }
            _ => None,
        };
        Ok((rows, reasons))
    }

    /// This node's name and key, as entries carry them.
    pub(crate) fn node(&self) -> (&str, &str) {
        (&self.inner.node, &self.inner.node_key)
    }

    /// Entries waiting for the writer.
    pub(crate) fn queued(&self) -> u64 {
        self.inner.queued.load(Ordering::Relaxed)
    }
}

/// The writer thread: batches, overflow reports, retention. Ends when every handle is
/// gone (the channel closes).
fn writer(
    mut store: AuditStore,
    rx: Receiver<Msg>,
    inner: std::sync::Weak<Inner>,
    retention: Retention,
) {
    let prune = |store: &mut AuditStore, metrics: Option<&Metrics>| match store
        .prune(crate::driver::wall_ms(), retention)
    {
        Ok(n) => {
            if let Some(m) = metrics {
                m.audit_pruned.inc_by(n);
            }
        }
        Err(e) => tracing::error!(error = %e, "applying audit retention failed"),
    };
    prune(&mut store, inner.upgrade().as_deref().map(|i| &*i.metrics));
    let mut last_prune = Instant::now();
    let mut batch: Vec<Entry> = Vec::with_capacity(AUDIT_BATCH_LEN_MAX);
    let mut flushes = Vec::new();
    loop {
        let first = match rx.recv_timeout(AUDIT_PRUNE_INTERVAL) {
            Ok(m) => Some(m),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let mut next = first;
        while let Some(m) = next {
            match m {
                Msg::Entry(e) => batch.push(*e),
                Msg::Flush(done) => flushes.push(done),
            }
            if batch.len() >= AUDIT_BATCH_LEN_MAX {
                break;
            }
            next = rx.try_recv().ok();
        }
        let Some(shared) = inner.upgrade() else {
            break;
        };
        let dropped = shared.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            batch.push(Entry::now(
                Decision::Overflow,
                "audit_overflow",
                0,
                format!(
                    "{dropped} audit entries were not stored: the audit queue \
                     (AUDIT_QUEUE_LEN_MAX = {AUDIT_QUEUE_LEN_MAX}) was full; each one is in \
                     the node's log under target `audit`"
                ),
            ));
        }
        if !batch.is_empty() {
            let n = batch.len() as u64;
            if let Err(e) = store.insert(&shared.node, &shared.node_key, &batch) {
                shared.metrics.audit_write_errors.inc_by(n);
                tracing::error!(error = %e, entries = n,
                    "writing audit entries failed; they are in the log under target `audit`");
            }
            let written = n - u64::from(dropped > 0);
            shared.queued.fetch_sub(written, Ordering::Relaxed);
            batch.clear();
        }
        for f in flushes.drain(..) {
            let _ = f.send(());
        }
        if last_prune.elapsed() >= AUDIT_PRUNE_INTERVAL {
            prune(&mut store, Some(&shared.metrics));
            last_prune = Instant::now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(time_ms: i64, decision: Decision, reason: &str, principal: &str) -> Entry {
        Entry {
            time_ms,
            decision,
            reason: reason.into(),
            principal: Some(principal.into()),
            stream: Some("orders.eu".into()),
            event_id: None,
            epoch: 3,
            message: format!("{reason} for {principal}"),
        }
    }

    /// The audit log is readable by its user only, whatever the umask (it was created 0644
    /// under 022: who did what, principals and streams named), its WAL too.
    #[test]
    fn a_new_audit_log_is_readable_by_its_user_only() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let mut s = AuditStore::open(dir.path()).unwrap();
        s.insert("n", "k", &[entry(1, Decision::Deny, "bad_token", "p")])
            .unwrap();
        let mode = |p: PathBuf| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(db_path(dir.path())), 0o600);
        assert_eq!(mode(dir.path().join("audit.sqlite-wal")), 0o600);
        drop(s);
        // One that exists with a mode others may read (a backup restored with `cp`) is set
        // back to 0600.
        std::fs::set_permissions(db_path(dir.path()), std::fs::Permissions::from_mode(0o640))
            .unwrap();
        drop(AuditStore::open(dir.path()).unwrap());
        assert_eq!(mode(db_path(dir.path())), 0o600);
    }

    #[test]
    fn retention_prunes_by_age_and_by_count() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = AuditStore::open(dir.path()).unwrap();
        let day = MS_PER_DAY;
        let now = 100 * day;
        // Three entries older than two days, five recent ones.
        let mut entries: Vec<Entry> = (0..3)
            .map(|i| entry(now - 3 * day - i, Decision::Deny, "bad_token", "old"))
            .collect();
        entries.extend((0..5).map(|i| entry(now - i, Decision::Deny, "rate_limited", "new")));
        s.insert("n", "k", &entries).unwrap();
        assert_eq!(s.count().unwrap(), 8);
        let deleted = s
            .prune(
                now,
                Retention {
                    days: 2,
                    entries_max: 100,
                },
            )
            .unwrap();
        assert_eq!(deleted, 3);
        assert_eq!(s.count().unwrap(), 5);
        let all = s
            .query(&Filter {
                limit: 100,
                ..Filter::default()
            })
            .unwrap();
        assert!(all.iter().all(|r| r.principal.as_deref() == Some("new")));
        // By count: the two newest stay.
        let deleted = s
            .prune(
                now,
                Retention {
                    days: 2,
                    entries_max: 2,
                },
            )
            .unwrap();
        assert_eq!(deleted, 3);
        let left = s
            .query(&Filter {
                limit: 100,
                ..Filter::default()
            })
            .unwrap();
        assert_eq!(left.len(), 2);
        let max_id = left[0].id;
        assert_eq!(left[1].id, max_id - 1, "the newest two are kept");
    }

    #[test]
    fn queries_filter_and_page_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = AuditStore::open(dir.path()).unwrap();
        let entries: Vec<Entry> = (0..10)
            .map(|i| {
                let (d, r) = if i % 2 == 0 {
                    (Decision::Deny, "read_forbidden")
                } else {
                    (Decision::Apply, "policy_applied")
                };
                entry(1000 + i, d, r, if i < 5 { "a" } else { "b" })
            })
            .collect();
        s.insert("node-1", "ab", &entries).unwrap();
        let q = |f: Filter| s.query(&f).unwrap();
        let denies = q(Filter {
            decision: Some(Decision::Deny),
            limit: 100,
            ..Filter::default()
        });
        assert_eq!(denies.len(), 5);
        assert!(denies.windows(2).all(|w| w[0].id > w[1].id), "newest first");
        assert_eq!(denies[0].node, "node-1");
        let page1 = q(Filter {
            limit: 3,
            ..Filter::default()
        });
        let page2 = q(Filter {
            limit: 3,
            before: Some(page1[2].id),
            ..Filter::default()
        });
        assert_eq!(page2[0].id, page1[2].id - 1);
        let b_since = q(Filter {
            principal: Some("b".into()),
            since_ms: Some(1007),
            limit: 100,
            ..Filter::default()
        });
        assert_eq!(
            b_since.iter().map(|r| r.time_ms).collect::<Vec<_>>(),
            vec![1009, 1008, 1007]
        );
        let by_reason = q(Filter {
            reason: Some("policy_applied".into()),
            limit: 100,
            ..Filter::default()
        });
        assert_eq!(by_reason.len(), 5);
    }

    /// The distinct reasons a log holds, in order (each once, however many entries), capped.
    #[test]
    fn the_reasons_a_log_holds_are_listed_once_each() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = AuditStore::open(dir.path()).unwrap();
        assert!(s.reasons(10).unwrap().is_empty(), "an empty log");
        let entries: Vec<Entry> = ["rate_limited", "read_forbidden", "policy_applied"]
            .iter()
            .cycle()
            .take(30)
            .enumerate()
            .map(|(i, r)| entry(1000 + i as i64, Decision::Deny, r, "a"))
            .collect();
        s.insert("node-1", "ab", &entries).unwrap();
        assert_eq!(
            s.reasons(10).unwrap(),
            vec!["policy_applied", "rate_limited", "read_forbidden"]
        );
        assert_eq!(
            s.reasons(2).unwrap(),
            vec!["policy_applied", "rate_limited"]
        );
    }

    #[test]
    fn the_writer_stores_entries_and_flush_waits_for_them() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::new());
        let audit = Audit::start(
            dir.path(),
            "n1",
            "00",
            Retention {
                days: 1,
                entries_max: 1000,
            },
            metrics.clone(),
        )
        .unwrap();
        for i in 0..50 {
            audit.deny(
                "bad_token",
                Some("p"),
                None,
                0,
                format!("refusal {i} {}", "x".repeat(5000)),
            );
        }
        assert!(audit.flush(Duration::from_secs(10)));
        let rows = audit
            .query(&Filter {
                limit: 1000,
                ..Filter::default()
            })
            .unwrap();
        assert_eq!(rows.len(), 50);
        assert!(rows[0].message.len() <= AUDIT_MESSAGE_LEN_MAX);
        assert!(rows[0].message.starts_with("refusal 49"));
        assert_eq!(metrics.audit_dropped.get(), 0);
        assert_eq!(audit.queued(), 0);
    }

    #[test]
    fn a_full_queue_is_counted_and_reported_in_the_log_itself() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::new());
        let (audit, run) = Audit::build(
            dir.path(),
            "n1",
            "00",
            Retention {
                days: 1,
                entries_max: 1000,
            },
            metrics.clone(),
            4,
        )
        .unwrap();
        // The writer is not running yet: four entries fit, six do not.
        for i in 0..10 {
            audit.deny("bad_token", None, None, 0, format!("refusal {i}"));
        }
        assert_eq!(metrics.audit_dropped.get(), 6);
        std::thread::spawn(run);
        assert!(audit.flush(Duration::from_secs(10)));
        let rows = audit
            .query(&Filter {
                limit: 100,
                ..Filter::default()
            })
            .unwrap();
        assert_eq!(rows.len(), 5, "{rows:?}");
        let overflow = &rows[0];
        assert_eq!(overflow.decision, "overflow");
        assert_eq!(overflow.reason, "audit_overflow");
        assert!(
            overflow.message.starts_with("6 audit entries"),
            "{overflow:?}"
        );
        assert!(rows[1..].iter().all(|r| r.reason == "bad_token"));
        assert_eq!(audit.queued(), 0);
    }
}
