//! The driver's reader threads: anti-entropy answers read ahead, off the driver's thread
//! (`store/ahead.rs` says why, and why it is safe).
//!
//! A sync request whose answer would read at least [`READ_AHEAD_NUMBERS_MIN`] numbers is
//! parked ([`Readers::park`]) instead of handed to the core; after the step's commit a
//! reader starts on it ([`Readers::launch`], on tokio's blocking pool with a read-only
//! connection of its own, kept for the next); when its read comes back the driver installs
//! it in the store and hands the request to the core as it arrived. At most
//! [`READERS_MAX`] requests are parked or being read; past that, and for smaller answers,
//! the request is answered at once, as without readers.

use std::path::PathBuf;

use tokio::sync::{OwnedSemaphorePermit, mpsc};
use weft_fabric::OriginKey;
use weft_fabric::mesh::{BATCH_BYTES_MAX, Message};

use crate::store::{ReadAhead, StoreReader};
use crate::transport::Reply;

/// Numbers an answer must read for its request to be read ahead: smaller answers cost the
/// driver under a millisecond (a 512-event answer from a cold store cost 7 ms on the driver
/// thread, docs/node.md "Durability"), and a read ahead waits for the step's commit.
pub(crate) const READ_AHEAD_NUMBERS_MIN: u64 = 64;

/// Requests parked or being read at once: one reader each, at most one per core of a
/// small machine (each verifies on up to a thread per core itself).
pub(crate) const READERS_MAX: usize = 2;

/// A sync request waiting for its read-ahead, with what came with it.
#[derive(Debug)]
pub(crate) struct Parked {
    pub(crate) from: OriginKey,
    pub(crate) msg: Message,
    pub(crate) reply: Option<Reply>,
    /// The message's share of the mesh input budget, held until it is handled.
    pub(crate) budget: Option<OwnedSemaphorePermit>,
    /// The runs `Node::sync_answer_reads` named.
    runs: Vec<(OriginKey, u64, u64)>,
}

/// A read-ahead done: the request and what was read for it.
#[derive(Debug)]
pub(crate) struct Done {
    pub(crate) parked: Parked,
    pub(crate) ahead: ReadAhead,
    reader: Option<StoreReader>,
}

/// The readers of one driver.
#[derive(Debug)]
pub(crate) struct Readers {
    data_dir: PathBuf,
    /// Connections not in use.
    idle: Vec<StoreReader>,
    /// Requests waiting for the step's commit.
    parked: Vec<Parked>,
    /// Reads started and not yet [`Readers::returned`].
    in_flight: usize,
    done_tx: mpsc::UnboundedSender<Done>,
}

impl Readers {
    /// Readers of the store in `data_dir`, and where their reads come back (unbounded:
    /// at most [`READERS_MAX`] are ever in flight).
    pub(crate) fn new(data_dir: PathBuf) -> (Self, mpsc::UnboundedReceiver<Done>) {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let readers = Self {
            data_dir,
            idle: Vec::new(),
            parked: Vec::new(),
            in_flight: 0,
            done_tx,
        };
        (readers, done_rx)
    }

    /// Whether another request may be parked.
    pub(crate) fn has_room(&self) -> bool {
        self.parked.len() + self.in_flight < READERS_MAX
    }

    /// Whether an answer reading `runs` is worth reading ahead.
    pub(crate) fn worth_it(runs: &[(OriginKey, u64, u64)]) -> bool {
        let numbers: u64 = runs
            .iter()
            .map(|(_, first, last)| last.saturating_sub(*first).saturating_add(1))
            .fold(0, u64::saturating_add);
        numbers >= READ_AHEAD_NUMBERS_MIN
    }

    /// Parks a request until the step's commit; call only when [`Readers::has_room`].
    pub(crate) fn park(
        &mut self,
        from: OriginKey,
        msg: Message,
        reply: Option<Reply>,
        budget: Option<OwnedSemaphorePermit>,
        runs: Vec<(OriginKey, u64, u64)>,
    ) {
        debug_assert!(self.has_room());
        self.parked.push(Parked {
            from,
            msg,
            reply,
            budget,
            runs,
        });
    }

    /// Starts a read for each parked request. Call after a commit, with the store's
    /// `removals` then: the reads see every row committed so far.
    pub(crate) fn launch(&mut self, removals: u64) {
        for parked in std::mem::take(&mut self.parked) {
            let reader = self.idle.pop();
            let data_dir = self.data_dir.clone();
            let done_tx = self.done_tx.clone();
            self.in_flight += 1;
            tokio::task::spawn_blocking(move || {
                // A read that panics (not expected) must still bring the request back, or
                // it would go unanswered and its slot stay taken for good: it comes back
                // with nothing read, and its connection is not reused.
                let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    let reader = match reader {
                        Some(reader) => reader,
                        None => StoreReader::open(&data_dir).map_err(|e| {
                            tracing::error!(error = %e, "cannot open a reader for anti-entropy answers; answering from the writer");
                        })?,
                    };
                    let ahead = reader.read_ahead(&parked.runs, BATCH_BYTES_MAX, removals);
                    Ok::<_, ()>((ahead, reader))
                }));
                let (ahead, reader) = match read {
                    Ok(Ok((ahead, reader))) => (ahead, Some(reader)),
                    Ok(Err(())) => (ReadAhead::empty(removals), None),
                    Err(_) => {
                        tracing::error!("a read-ahead panicked; the answer reads from the writer");
                        (ReadAhead::empty(removals), None)
                    }
                };
                // The driver may have stopped; the request then goes unanswered, as any
                // request in flight at a stop.
                let _ = done_tx.send(Done {
                    parked,
                    ahead,
                    reader,
                });
            });
        }
    }

    /// Takes a finished read's connection back.
    pub(crate) fn returned(&mut self, done: &mut Done) {
        self.in_flight = self.in_flight.saturating_sub(1);
        if let Some(reader) = done.reader.take() {
            self.idle.push(reader);
        }
    }
}
