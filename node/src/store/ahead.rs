//! Reading an anti-entropy answer's events ahead, off the driver's thread.
//!
//! The mesh core reads an answer's events from the store while it answers
//! ([`Store::get_run`](weft_fabric::mesh::Store::get_run)), on the driver's thread: thousands of old events for a far peer
//! catching up take tens of milliseconds to read and verify, and every publish, push and
//! timer of the node waits that long. So for a request whose answer reads many numbers
//! (the core says which runs: `Node::sync_answer_reads`) the driver hands the runs to a
//! reader thread with its own connection ([`StoreReader::read_ahead`]), goes on with
//! other input, and hands the request to the core when the events are read, with them
//! installed here ([`SqliteStore::begin_read_ahead`]): the answer's [`Store::get_run`](weft_fabric::mesh::Store::get_run)
//! takes what the reader read and reads only the rest from the rows.
//!
//! Never needed for correctness, and never trusted beyond what the rows said:
//! - the reader reads committed rows only and is started after the driver's commit, so it
//!   sees every event the core counted when it named the runs;
//! - events read are verified and checked against their rows as the writer checks them;
//! - removals of stored events (erases, retention, a rollback) all pass through the event
//!   cache's `EventCache::remove` or `EventCache::clear`, which count them: a
//!   read-ahead that began before a removal is dropped unused, since it may hold an event
//!   that is gone;
//! - what the state gained meanwhile (a run that now reaches further, an origin the
//!   request now lacks more of) is read from the rows as before.

use std::sync::Arc;

use weft_fabric::mesh::{answer_len, within_bytes};
use weft_fabric::{Event, OriginKey};

use super::{SqliteStore, StoreReader, read_run};

/// Events a reader read ahead for one anti-entropy answer, run by run.
#[derive(Debug, Default)]
pub(crate) struct ReadAhead {
    runs: Vec<ReadRun>,
    /// Rows the reader left out as unreadable (counted in `corrupt_rows` when installed).
    corrupt_rows: u64,
    /// The writer's count of removals ([`SqliteStore::removals`]) before the read began.
    removals: u64,
}

/// One run read ahead: every stored event of `origin` in `first..=covered` (the run's
/// last number, or less when the byte bound stopped the read).
#[derive(Debug)]
struct ReadRun {
    origin: OriginKey,
    first: u64,
    covered: u64,
    events: Vec<Arc<Event>>,
    /// Rows the reader left out (corrupt) whose numbers it knows.
    left_out: Vec<u64>,
}

impl ReadAhead {
    /// Nothing read (no reader could be had), begun at `removals`: the answer reads all.
    pub(crate) fn empty(removals: u64) -> Self {
        Self {
            removals,
            ..Self::default()
        }
    }

    /// How many events were read.
    pub(crate) fn events(&self) -> usize {
        self.runs.iter().map(|r| r.events.len()).sum()
    }
}

impl StoreReader {
    /// Reads `runs` (what `Node::sync_answer_reads` named) ahead for an answer, up to
    /// `bytes_max` in all (the answer's byte bound: it sends no more than that). `removals`
    /// is the writer's [`SqliteStore::removals`] taken after its last commit, before this
    /// read began. A run whose query fails is left out (the answer reads it itself).
    pub(crate) fn read_ahead(
        &self,
        runs: &[(OriginKey, u64, u64)],
        bytes_max: usize,
        removals: u64,
    ) -> ReadAhead {
        let mut ahead = ReadAhead {
            removals,
            ..ReadAhead::default()
        };
        let mut bytes = 0usize;
        for &(origin, first, last) in runs {
            if bytes >= bytes_max {
                break;
            }
            match read_run(&self.conn, &origin, (first, last), bytes_max - bytes, None) {
                Ok(read) => {
                    ahead.corrupt_rows += read.corrupt_rows;
                    bytes += read
                        .events
                        .iter()
                        .map(|e| answer_len(e.signed_bytes().len()))
                        .sum::<usize>();
                    ahead.runs.push(ReadRun {
                        origin,
                        first,
                        // A stop is after a row taken, so above `first`.
                        covered: read.stopped.map_or(last, |next| next - 1),
                        events: read.events,
                        left_out: read.left_out,
                    });
                }
                Err(e) => {
                    tracing::warn!(%origin, first, last, error = %e, "read-ahead of a run failed; the answer reads it");
                }
            }
        }
        ahead
    }
}

impl SqliteStore {
    /// How many times stored events were removed (or the cache cleared) since the store
    /// opened: a read made off this thread is good while this has not moved.
    pub(crate) fn removals(&self) -> u64 {
        self.cache.borrow().removals
    }

    /// Installs `ahead` for the answer about to be made; `false` (and nothing installed)
    /// when stored events were removed since it began. Call [`SqliteStore::end_read_ahead`]
    /// once the request is handled.
    pub(crate) fn begin_read_ahead(&mut self, ahead: ReadAhead) -> bool {
        let stats = self.stats.get_mut();
        stats.corrupt_rows += ahead.corrupt_rows;
        if ahead.removals != self.cache.get_mut().removals {
            stats.read_ahead_dropped += 1;
            self.ahead = ReadAhead::default();
            return false;
        }
        stats.read_ahead += 1;
        self.ahead = ahead;
        true
    }

    /// Drops what [`SqliteStore::begin_read_ahead`] installed.
    pub(crate) fn end_read_ahead(&mut self) {
        self.ahead = ReadAhead::default();
    }

    /// The events of `origin` in `first..=last` that the read-ahead holds (from a run that
    /// begins at or before `first` and covers it), up to the first at which their
    /// `answer_len`s reach `bytes_max`, and the number from which the rest must be read from
    /// the rows (`None`: nothing left). What the rows would give: a row the reader left out
    /// as corrupt is taken from the writer's cache when that holds its event, as a read of
    /// the rows does.
    pub(super) fn read_ahead_part(
        &self,
        origin: &OriginKey,
        first: u64,
        last: u64,
        bytes_max: usize,
    ) -> (Vec<Arc<Event>>, Option<u64>) {
        let Some(run) = self
            .ahead
            .runs
            .iter()
            .find(|r| r.origin == *origin && (r.first..=r.covered).contains(&first))
        else {
            return (Vec::new(), Some(first));
        };
        let within = |seq: &u64| (first..=last).contains(seq);
        let mut held: Vec<Arc<Event>> = run
            .events
            .iter()
            .filter(|e| within(&e.seq()))
            .cloned()
            .collect();
        if run.left_out.iter().any(within) {
            let mut cache = self.cache.borrow_mut();
            held.extend(
                run.left_out
                    .iter()
                    .filter(|seq| within(seq))
                    .filter_map(|seq| cache.get(&(*origin, *seq))),
            );
            held.sort_by_key(|e| e.seq());
        }
        // Cut at the bound as a read of the rows is; `get_run` reads no rest past it.
        let events = within_bytes(held.into_iter(), bytes_max);
        self.stats.borrow_mut().read_ahead_hits += events.len() as u64;
        (events, (run.covered < last).then(|| run.covered + 1))
    }
}
