//! The driver: one task owns the mesh core (`weft_fabric::mesh::Node`) and the SQLite
//! store, and turns the core's outputs into QUIC sends, log appends and acknowledgements.
//!
//! Loop: wait for a mesh message, a publish, a timer or a tick; feed it to the core; drain
//! the core's transmits (to the transport) and application events (deliveries appended to
//! the local log); take every other input already queued (up to [`GROUP_MAX`]); then
//! commit once (group commit: one fsync for the whole batch) and only then acknowledge:
//! `ack=local` publishers, confirmable pushes from peers (`ack=regions:N` elsewhere), and
//! SSE readers (the committed log position).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::confirm::{Confirmations, Copies, Roster};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, error, info, info_span, warn};
use weft_fabric::mesh::{AppEvent, MemberInfo, Message, Micros, Node, Store as _};
use weft_fabric::{Event, EventId, OriginKey};

use crate::metrics::Metrics;
use crate::store::SqliteStore;
use crate::transport::{FromMesh, Outgoing, Reply, Transport};

/// An answer sent after the next commit, told whether it made the writes durable.
type CommitReply = Box<dyn FnOnce(bool) + Send>;

/// The error of a cursor write whose commit failed.
fn commit_failed() -> crate::store::RecordError {
    crate::store::RecordError::Store(weft_fabric::mesh::StoreError::Backend(
        "the commit failed".into(),
    ))
}

/// How often the driver runs a retention pass when the last one found no backlog.
const RETENTION_INTERVAL: Duration = Duration::from_secs(5);

/// Runs `f` on the store's connection inside the driver's open write transaction (begun
/// if none is), for the keyed tables' rows (`tables.rs`), with its error as text.
fn write_tx<T>(
    node: &mut Node<SqliteStore>,
    f: impl FnOnce(&rusqlite::Connection) -> Result<T, String>,
) -> Result<T, String> {
    node.store_mut()
        .write_conn()
        .map_err(|e| e.to_string())
        .and_then(f)
}

/// Wait after a failed pass of an erase or a table build before the next
/// (`Driver::erase_pass`), doubled at each failure in a row up to [`ERASE_RETRY_MAX`]: a
/// failed pass reloads the store's state from its rows, which must not happen every second.
const ERASE_RETRY: Duration = Duration::from_secs(1);
const ERASE_RETRY_MAX: Duration = Duration::from_secs(300);

/// When the next pass of a kind of background work (an erase's, a table build's) may run:
/// after a failure none for a wait that doubles with each failure in a row.
#[derive(Debug, Clone, Copy)]
struct Backoff {
    until: Instant,
    wait: Duration,
}

impl Backoff {
    fn new() -> Self {
        Self {
            until: Instant::now(),
            wait: ERASE_RETRY,
        }
    }

    fn ready(&self, now: Instant) -> bool {
        now >= self.until
    }

    /// A pass failed: none for the current wait, the next wait doubled.
    fn failed(&mut self) {
        self.until = Instant::now() + self.wait;
        self.wait = (self.wait * 2).min(ERASE_RETRY_MAX);
    }

    /// A pass held: the next failure waits the least again.
    fn held(&mut self) {
        self.wait = ERASE_RETRY;
    }
}
/// Longest a pending erase waits for a pass while inputs keep coming: inputs go first,
/// but an always busy node still gives the erase a pass this often.
const ERASE_PASS_GAP_MAX: Duration = Duration::from_millis(250);

/// Least time between two API snapshots taken after commits (the tick takes one too).
const SNAPSHOT_INTERVAL_MIN: Duration = Duration::from_millis(100);
/// Most inputs folded into one group commit.
pub(crate) const GROUP_MAX: usize = 1024;

/// How durable a publish must be before it is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) enum Ack {
    /// Accepted by the node (in memory, not yet fsync'd).
    None,
    /// Committed to this node's disk.
    Local,
    /// Committed in this many distinct regions (this node's counts as one).
    Regions(usize),
}

impl Ack {
    /// Parses `none`, `local` or `regions:N`.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        match text {
            "none" => Ok(Ack::None),
            "local" => Ok(Ack::Local),
            _ => match text.strip_prefix("regions:").map(str::parse::<usize>) {
                // This node's own region is the first: regions:1 is local.
                Some(Ok(1)) => Ok(Ack::Local),
                Some(Ok(n)) if (2..=64).contains(&n) => Ok(Ack::Regions(n)),
                _ => Err(format!(
                    "ack must be none, local or regions:N with N from 1 to 64, got {text:?}"
                )),
            },
        }
    }

    fn label(self) -> &'static str {
        match self {
            Ack::None => "none",
            Ack::Local => "local",
            Ack::Regions(_) => "regions",
        }
    }
}

/// What a publish achieved.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Published {
    /// Hex ids of the events, in request order.
    pub(crate) ids: Vec<String>,
    /// Whether the events are on this node's disk.
    pub(crate) durable_local: bool,
    /// Regions where every event of the request is confirmed committed.
    pub(crate) regions: Vec<String>,
    /// The fewest regions any one event of the request is confirmed committed in.
    pub(crate) regions_min: usize,
    /// Whether the requested ack level was reached.
    pub(crate) complete: bool,
    /// Hex ids of the events egress transforms derived from them (same group commit), in
    /// the order derived; absent when none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) derived: Vec<String>,
}

impl PublishError {
    /// How many of the request's events were taken before or beside the refusal (counted
    /// in `weft_publishes_total`).
    pub(crate) fn accepted(&self) -> usize {
        match self {
            PublishError::Store { accepted, .. }
            | PublishError::Erased { accepted, .. }
            | PublishError::SeqReused { accepted, .. } => *accepted,
        }
    }
}

/// Why a publish failed in the driver.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum PublishError {
    /// The store refused (full, or an I/O failure), counted here (`store_refused`, per
    /// event refused); `accepted` of the request's events were taken before it.
    #[error("the store refused the event: {message}")]
    Store {
        /// What was refused, and why.
        message: String,
        /// The request's events taken (stored and committed) before the refusal.
        accepted: usize,
    },
    /// An erase rule covers the event (`erase.rs`): not stored, delivered or sent;
    /// `accepted` of the request's other events were taken.
    #[error("{message}")]
    Erased {
        /// What was refused, and why.
        message: String,
        /// The request's events taken (stored and committed).
        accepted: usize,
    },
    /// A pre-signed event reuses a sequence number its origin already has here with other
    /// content (a producer that lost its numbering state): refused, the held event kept.
    #[error(
        "origin {origin} already has other content at sequence number {seq} (this node holds its numbers up to {held_max}); number new events after it"
    )]
    SeqReused {
        /// The producer.
        origin: OriginKey,
        /// The first reused number of the request.
        seq: u64,
        /// Every number of this origin the request reused (refused); the request's other
        /// events were taken.
        seqs: Vec<u64>,
        /// The highest number of the origin this node held apart from what this request
        /// added (stored or erased).
        held_max: u64,
        /// The request's events taken (stored and committed).
        accepted: usize,
    },
}

/// Inputs from the HTTP side.
#[derive(Debug)]
pub(crate) enum Command {
    /// Publish signed events.
    Publish {
        events: Vec<Arc<Event>>,
        /// Events egress transforms derived from them (signed by this node, sequence
        /// numbers after the sources'), published in the same step and group commit, each
        /// with its source's id (`None`: a window's summary). The ack level applies to
        /// `events`; a derivative the store refuses is counted, not an error of the
        /// publish, and one whose source was refused is not published (its number voided).
        derived: Vec<(Option<EventId>, Arc<Event>)>,
        ack: Ack,
        /// CloudEvents idempotency keys to record with the events (principal, source, id).
        dedup: Vec<Option<(String, String, String)>>,
        /// The request's hold on its CloudEvents (`ce_claims.rs`): released after the
        /// commit that writes their idempotency records, whatever became of the request.
        claim: Option<crate::ce_claims::Claim>,
        started: Instant,
        reply: oneshot::Sender<Result<Published, PublishError>>,
    },
    /// Save a durable subscription cursor; `reply` is answered once it is committed, or
    /// with why it could not be (its table full, a field too long).
    SaveCursor {
        name: String,
        stream: String,
        pos: u64,
        reply: oneshot::Sender<Result<(), crate::store::RecordError>>,
    },
    /// Delete a durable subscription cursor; `reply` is answered once the deletion is
    /// committed, with whether the cursor existed.
    DeleteCursor {
        name: String,
        reply: oneshot::Sender<Result<bool, crate::store::RecordError>>,
    },
    /// Close every open aggregation window and hand over the summaries (shutdown).
    DrainWindows {
        reply: oneshot::Sender<Vec<crate::egress::Pending>>,
    },
}

/// A peer as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct PeerView {
    pub(crate) key: String,
    pub(crate) region: String,
    pub(crate) cloud: String,
    pub(crate) jurisdiction: String,
    pub(crate) addr: String,
    pub(crate) state: &'static str,
    pub(crate) rtt_ms: Option<f64>,
    pub(crate) policy_epoch: u64,
    /// The peer's generation: it grows each time the peer restarts or rejoins after the
    /// mesh declared it down.
    pub(crate) generation: u32,
    /// Skips this node took from the peer for other origins' events (a Skip cannot be
    /// checked by its receiver; ARCHITECTURE.md, "Trust between nodes").
    pub(crate) skips_taken: u64,
    /// Of those, the ones the event itself then contradicted (the peer lied, or judged
    /// under another policy epoch or erase rule).
    pub(crate) skips_contradicted: u64,
}

/// A node of the fabric as this node knows it from link-state gossip.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct NodeView {
    pub(crate) key: String,
    pub(crate) name: String,
    pub(crate) region: String,
    pub(crate) cloud: String,
    pub(crate) jurisdiction: String,
    pub(crate) http: String,
    pub(crate) alive: bool,
    /// How long ago its newest record arrived.
    pub(crate) age_ms: u64,
    pub(crate) published: u64,
    pub(crate) stored: u64,
    pub(crate) missing: u64,
    pub(crate) policy_epoch: u64,
    pub(crate) links: Vec<LinkView>,
}

/// One measured link of a node.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct LinkView {
    pub(crate) to: String,
    pub(crate) rtt_ms: f64,
}

/// The path events take to one region.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RouteView {
    pub(crate) region: String,
    /// Regions from this node's to the destination.
    pub(crate) path: Vec<String>,
    /// `direct`, `relay` or `unreachable`.
    pub(crate) kind: &'static str,
    /// Estimated one-way latency along the path.
    pub(crate) latency_ms: Option<f64>,
    /// Estimated one-way latency of the direct link.
    pub(crate) direct_ms: Option<f64>,
    /// Whether the direct link is marked failed (a push went unacknowledged).
    pub(crate) direct_failed: bool,
    /// Where the first hop's latency comes from: `measured`, `reported` or `estimated`.
    pub(crate) first_hop: &'static str,
    pub(crate) alternatives: Vec<AltView>,
}

/// An alternative path.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct AltView {
    pub(crate) path: Vec<String>,
    pub(crate) latency_ms: f64,
}

/// What the driver publishes for the API after every step.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Snapshot {
    pub(crate) members_up: usize,
    /// Whether a mesh member was reachable at some time since the start: a node that was
    /// meshed stays ready when it loses every peer (it still serves its region).
    pub(crate) meshed: bool,
    pub(crate) peers: Vec<PeerView>,
    pub(crate) nodes: Vec<NodeView>,
    pub(crate) routes: Vec<RouteView>,
    pub(crate) stored_events: usize,
    pub(crate) stats: BTreeMap<&'static str, u64>,
}

/// A confirmable push from a peer: answered with the ids committed here.
type ConfirmReply = (oneshot::Sender<Vec<[u8; 32]>>, Vec<EventId>);

struct Waiting {
    ids: Vec<EventId>,
    derived: Vec<EventId>,
    ack: Ack,
    started: Instant,
    deadline: Instant,
    /// When the regions that have not confirmed yet are asked again, at another member
    /// (`Driver::confirm_again`): half the ack timeout after the publish, once.
    ask_again: Option<Instant>,
    reply: oneshot::Sender<Result<Published, PublishError>>,
}

/// Why a region's confirmation was sought at another member
/// (`weft_confirm_retries_total{reason}`).
#[derive(Debug, Clone, Copy)]
enum RetryReason {
    /// The copy did not get through (`FromMesh::ConfirmFailed`).
    NotSent,
    /// The member answered without the events: it does not store their stream.
    AnsweredWithout,
    /// The member the mesh's tree pushed the events to is known not to store their stream
    /// (it answered without that stream's events before).
    KnownNotStoring,
    /// No confirmation from the region by half the ack timeout (a blackhole).
    NoAnswerByHalfTimeout,
}

impl RetryReason {
    /// Its label, one of [`crate::metrics::CONFIRM_RETRY_REASONS`] (whose series exist
    /// from the start).
    fn label(self) -> &'static str {
        let [not_sent, answered_without, known_not_storing, half_timeout] =
            crate::metrics::CONFIRM_RETRY_REASONS;
        match self {
            RetryReason::NotSent => not_sent,
            RetryReason::AnsweredWithout => answered_without,
            RetryReason::KnownNotStoring => known_not_storing,
            RetryReason::NoAnswerByHalfTimeout => half_timeout,
        }
    }
}

/// The driver's state.
pub(crate) struct Driver {
    /// A mesh member was up at some time since the start ([`Snapshot::meshed`]).
    meshed: bool,
    node: Node<SqliteStore>,
    me: MemberInfo,
    epoch: Instant,
    transport: Arc<Transport>,
    metrics: Arc<Metrics>,
    members: BTreeMap<OriginKey, MemberInfo>,
    down: BTreeMap<OriginKey, MemberInfo>,
    /// Publishes waiting for the next commit.
    after_commit: Vec<Waiting>,
    /// Publishes waiting for confirmations from other regions.
    confirming: Vec<Waiting>,
    /// Events awaiting `ack=regions:N`: the regions that confirmed each, the members asked
    /// and whom to ask next (`confirm.rs`).
    confirms: Confirmations,
    /// Confirmable pushes from peers, answered after the next commit.
    confirm_replies: Vec<ConfirmReply>,
    dedup: Vec<(String, String, String, EventId)>,
    last_pos: u64,
    ack_timeout: Duration,
    committed: watch::Sender<u64>,
    snapshot: watch::Sender<Snapshot>,
    last_snapshot: Instant,
    /// When an origin's equivocation was last logged and audited (each one is counted):
    /// at most once a minute per origin, so a cloned device does not flood the audit log.
    equivocation_said: BTreeMap<OriginKey, Instant>,
    /// Transmits of this step, sent after its commit.
    outbox: Vec<(OriginKey, Option<SocketAddr>, Outgoing)>,
    /// Sync answers of this step, sent after its commit.
    outbox_replies: Vec<(oneshot::Sender<Vec<u8>>, Vec<u8>)>,
    /// Stream priority classes for the transport's lanes.
    priorities: crate::transport::Priorities,
    /// Operator trust and the policy in force, when a policy is configured: bundles
    /// arriving on the policy stream are applied here (`policy_push`).
    policy: Option<(weft_policy::Trust, Arc<crate::policy_state::PolicyState>)>,
    /// The audit log: bundles applied or refused off the fabric.
    audit: crate::audit::Audit,
    /// Egress aggregation windows.
    aggregator: crate::egress::Aggregator,
    /// Keyed tables: which streams, and conflict counters per strategy.
    tables: Option<crate::tables::Declared>,
    table_stats: BTreeMap<&'static str, weft_fabric::table::ConflictStats>,
    /// The strategy each table stream was built with (`tables::apply`'s memory).
    tables_built: BTreeMap<String, weft_fabric::table::Strategy>,
    /// Tables a late write reached in this step, with the keys and origins it touched
    /// (`None`: the whole table, after a write that failed to apply): repaired once each
    /// at the step's end (`tables::repair`).
    late_tables: BTreeMap<weft_fabric::StreamName, Option<crate::tables::Touched>>,
    /// Whether the store is at `limits.events_max`, for the HTTP API (`with_store_full`).
    store_full: Arc<std::sync::atomic::AtomicBool>,
    /// What the core knows of this node's own numbering, for the producer
    /// (`with_own_numbers`).
    own_numbers: Arc<OwnNumbers>,
    /// This node's time for HLCs (`clock.rs`): every event applied here is observed, so a
    /// later local stamp is after it.
    clock: Arc<crate::clock::NodeClock>,
    /// When an applied event's HLC past the drift bound was last logged.
    hlc_ahead_logged: Option<Instant>,
    /// The applied HLC ahead of this node's clock last kept in the store
    /// (`clock::OBSERVED_META_KEY`).
    hlc_kept: u64,
    /// CloudEvents claims of the publishes since the last commit (released after it).
    claims: Vec<crate::ce_claims::Claim>,
    /// Answers waiting for the commit that makes their writes durable (cursor saves and
    /// deletions, publishes refused as erased): each is called with whether it did.
    after_commit_replies: Vec<CommitReply>,
    /// When the next retention pass is due (`store/retention.rs`).
    retention_due: Instant,
    /// The time retention last expired by ([`retention_clock`]) and when, on this
    /// process's monotonic clock.
    retention_clock: Option<(u64, Instant)>,
    /// A jump of the wall clock ahead of [`Driver::retention_clock`] was logged.
    retention_clock_warned: bool,
    /// Events an erase or a retraction removed during this step's deliveries: one still
    /// queued for delivery behind the carrier is not logged (a retracted derivative is
    /// not covered by an erase rule, so `erase_covers` does not catch it). Emptied after
    /// each step's deliveries.
    erased_in_step: std::collections::HashSet<weft_fabric::EventId>,
    /// When the next pass of a pending erase, and of a table build, may run.
    erase_backoff: Backoff,
    build_backoff: Backoff,
    /// The stream the last table build pass went to (`Driver::table_build_pass`).
    build_last: Option<String>,
    /// When the last pass of a pending erase or a table build ended.
    background_last_pass: Instant,
    /// A table may be being built a pass at a time (`tables::build_pass`): set where a
    /// build may start, cleared when none is left.
    table_build_due: bool,
    /// Whether the last pass stopped at the expired ranges' bound (warned once).
    retention_blocked: bool,
    /// The retractor's queue (`erase::run_retractor`): this node's derivative numbers to
    /// publish as retractions (`store/derived.rs`).
    retract_tx: Option<mpsc::Sender<Vec<u64>>>,
    /// When pending retractions are next published (`None`: none are pending).
    retract_due: Option<Instant>,
    /// The pending numbers last handed to the retractor and how often in a row the same
    /// ones were: after [`RETRACT_SENDS_MAX`] the node stops resending them (until a
    /// restart or a new erase) instead of publishing the same retraction for ever.
    retract_sent: (Vec<u64>, u32),
    /// Readers of anti-entropy answers' events (`read_ahead.rs`), when the driver has them
    /// ([`Driver::with_readers`]), and where their reads come back (taken by `run`).
    readers: Option<crate::read_ahead::Readers>,
    read_done: Option<mpsc::UnboundedReceiver<crate::read_ahead::Done>>,
}

/// Times the same pending retraction is published before the node gives up on it (its own
/// retraction never came back through its log: a store that refuses it, say).
const RETRACT_SENDS_MAX: u32 = 10;

impl Driver {
    /// A driver for `node`; `committed` carries the last committed log position to readers.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        node: Node<SqliteStore>,
        epoch: Instant,
        transport: Arc<Transport>,
        metrics: Arc<Metrics>,
        ack_timeout: Duration,
        last_pos: u64,
        committed: watch::Sender<u64>,
        snapshot: watch::Sender<Snapshot>,
        priorities: crate::transport::Priorities,
        audit: crate::audit::Audit,
        aggregator: crate::egress::Aggregator,
    ) -> Self {
        Self {
            meshed: false,
            me: node.me().clone(),
            confirms: Confirmations::new(&node.me().region),
            node,
            epoch,
            transport,
            metrics,
            members: BTreeMap::new(),
            down: BTreeMap::new(),
            after_commit: Vec::new(),
            confirming: Vec::new(),
            confirm_replies: Vec::new(),
            dedup: Vec::new(),
            last_pos,
            ack_timeout,
            committed,
            snapshot,
            last_snapshot: Instant::now(),
            equivocation_said: BTreeMap::new(),
            outbox: Vec::new(),
            outbox_replies: Vec::new(),
            priorities,
            policy: None,
            audit,
            aggregator,
            tables: None,
            table_stats: BTreeMap::new(),
            tables_built: BTreeMap::new(),
            late_tables: BTreeMap::new(),
            store_full: Arc::default(),
            own_numbers: Arc::default(),
            clock: Arc::default(),
            hlc_ahead_logged: None,
            hlc_kept: 0,
            claims: Vec::new(),
            after_commit_replies: Vec::new(),
            retention_due: Instant::now(),
            retention_clock: None,
            retention_clock_warned: false,
            erased_in_step: std::collections::HashSet::new(),
            erase_backoff: Backoff::new(),
            build_backoff: Backoff::new(),
            build_last: None,
            background_last_pass: Instant::now(),
            table_build_due: true,
            retention_blocked: false,
            retract_tx: None,
            retract_due: Some(Instant::now()),
            retract_sent: (Vec::new(), 0),
            readers: None,
            read_done: None,
        }
    }

    /// Publishes this node's retractions of derivatives through `tx` (the retractor task).
    pub(crate) fn with_retractor(mut self, tx: mpsc::Sender<Vec<u64>>) -> Self {
        self.retract_tx = Some(tx);
        self
    }

    /// Reads large anti-entropy answers' events on reader threads with their own
    /// connections to the store in `data_dir` (`read_ahead.rs`), instead of on the
    /// driver's thread.
    pub(crate) fn with_readers(mut self, data_dir: std::path::PathBuf) -> Self {
        let (readers, done) = crate::read_ahead::Readers::new(data_dir);
        self.readers = Some(readers);
        self.read_done = Some(done);
        self
    }

    /// Shares this node's time for HLCs with the producer and the ingress checks
    /// (`clock.rs`): every event the driver applies is taken into it.
    pub(crate) fn with_clock(mut self, clock: Arc<crate::clock::NodeClock>) -> Self {
        self.clock = clock;
        self
    }

    /// Shares what the core knows of this node's own numbering with the producer
    /// (`http.rs`), kept up to date after every step.
    pub(crate) fn with_own_numbers(mut self, own: Arc<OwnNumbers>) -> Self {
        own.set_from(&self.node);
        self.own_numbers = own;
        self
    }

    /// Shares whether the store is full with the HTTP API, which then refuses publishes
    /// before signing them (a signed number the store refuses is voided, not reused).
    pub(crate) fn with_store_full(mut self, flag: Arc<std::sync::atomic::AtomicBool>) -> Self {
        flag.store(
            self.node.store().is_full(),
            std::sync::atomic::Ordering::Relaxed,
        );
        self.store_full = flag;
        self
    }

    /// Materializes keyed tables (`tables.rs`) for the streams `declared` names.
    pub(crate) fn with_tables(mut self, declared: crate::tables::Declared) -> Self {
        self.tables = Some(declared);
        self
    }

    /// Brings the tables in line with what is declared now ([`crate::tables::reconcile`]):
    /// at start and when a policy is applied, in that step's transaction.
    fn reconcile_tables(&mut self) {
        let Some(tables) = self.tables.clone() else {
            return;
        };
        self.table_build_due = true;
        let result = write_tx(&mut self.node, |conn| {
            crate::tables::reconcile(
                conn,
                |s| tables.strategy(s),
                &mut self.tables_built,
                &mut self.table_stats,
            )
        });
        match result {
            Ok(changed) => {
                for (stream, strategy) in changed {
                    match strategy {
                        Some(s) => info!(
                            stream,
                            strategy = s.as_str(),
                            "table build started for the tables now declared (finished pass by pass)"
                        ),
                        None => info!(
                            stream,
                            "table dropped: its stream is no longer declared a table"
                        ),
                    }
                }
            }
            Err(e) => {
                self.metrics.reject("table_apply_failed");
                warn!(error = %e, "bringing the tables in line with the declared ones failed");
            }
        }
    }

    /// Applies a delivered keyed event to its table, in the step's transaction.
    fn apply_table(&mut self, event: &Event) {
        let Some(strategy) = self
            .tables
            .as_ref()
            .and_then(|t| t.strategy(event.stream()))
        else {
            return;
        };
        let stats = self.table_stats.entry(strategy.as_str()).or_default();
        let before = *stats;
        let result = write_tx(&mut self.node, |conn| {
            crate::tables::atomically(conn, "table_write", |conn| {
                crate::tables::apply(conn, strategy, event, stats, &mut self.tables_built)
            })
        });
        if !self.tables_built.contains_key(event.stream().as_str()) {
            // Its table is being built a pass at a time.
            self.table_build_due = true;
        }
        match result {
            Ok(_) => self.metrics.table_writes(strategy.as_str(), &before, stats),
            Err(e) => {
                // Nothing of it stayed: the table is rebuilt from the log at the end of the
                // step (the event is in it), so this replica does not go on without it.
                self.metrics.reject("table_apply_failed");
                warn!(event = %event.id(), error = %e, "applying a table write failed; the table is rebuilt from the log");
                self.tables_built.remove(event.stream().as_str());
                self.late_tables.insert(event.stream().clone(), None);
            }
        }
    }

    /// Applies bundles arriving on the policy stream, verified against `trust`, to `state`.
    pub(crate) fn with_policy(
        mut self,
        trust: weft_policy::Trust,
        state: Arc<crate::policy_state::PolicyState>,
    ) -> Self {
        self.metrics.policy_in_force(state.policy().as_deref());
        self.node
            .store_mut()
            .set_retention(crate::store::RetentionRules::new(state.policy()));
        self.policy = Some((trust, state));
        self
    }

    fn now(&self) -> Micros {
        self.epoch.elapsed().as_micros() as Micros
    }

    /// Runs until `shutdown` fires or both input channels close.
    pub(crate) async fn run(
        mut self,
        mut mesh_rx: mpsc::Receiver<FromMesh>,
        mut cmd_rx: mpsc::Receiver<Command>,
        mut shutdown: watch::Receiver<bool>,
        known_peers: Vec<MemberInfo>,
    ) {
        // A changed `[[tables]]` config (or a policy stored by an older build) takes effect
        // before anything is delivered.
        self.reconcile_tables();
        self.commit();
        let now = self.now();
        if !known_peers.is_empty() {
            // Peers remembered from before a restart: dialable at their last addresses.
            for m in &known_peers {
                self.transport
                    .learn(m.node_key(), m.addr.parse().ok(), &m.region);
                self.down.insert(m.node_key(), m.clone());
            }
            self.node.join(now, &known_peers);
            self.drain();
            self.commit();
        }
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        let mut read_done = self.read_done.take();
        loop {
            let deadline = self
                .node
                .poll_timeout()
                .map(|at| self.epoch + Duration::from_micros(at))
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
            // A pass of a pending erase when no input waits, or when none ran for
            // `ERASE_PASS_GAP_MAX` (it is not starved by a node that is always busy).
            // Likewise a pass of a table being built from the log.
            let now = Instant::now();
            let erase_due = self.node.store().erasing() && self.erase_backoff.ready(now);
            let build_due = self.table_build_due && self.build_backoff.ready(now);
            let background = (erase_due || build_due)
                && ((mesh_rx.is_empty() && cmd_rx.is_empty())
                    || self.background_last_pass.elapsed() >= ERASE_PASS_GAP_MAX);
            // Not biased: a flood of mesh input must not starve publishes and timers.
            tokio::select! {
                _ = shutdown.changed() => break,
                Some(input) = mesh_rx.recv() => {
                    self.on_mesh(input);
                    self.safe_point();
                }
                Some(cmd) = cmd_rx.recv() => {
                    self.on_command(cmd);
                    self.safe_point();
                }
                () = tokio::time::sleep_until(deadline.into()) => {
                    // What already arrived goes first: a push's acknowledgement waiting in
                    // the queue is not late, and its timeout must not fail the link over.
                    for _ in 0..GROUP_MAX {
                        let Ok(input) = mesh_rx.try_recv() else {
                            break;
                        };
                        self.on_mesh(input);
                        self.safe_point();
                    }
                    let now = self.now();
                    self.node.handle_timeout(now);
                    self.drain();
                    self.safe_point();
                }
                _ = tick.tick() => {
                    self.on_tick();
                    self.safe_point();
                }
                // An erase too large for one step is removed a pass at a time, each pass
                // one branch among the inputs (not biased: publishes, pushes and SWIM
                // answers go on meanwhile).
                () = std::future::ready(()), if background => {
                    if erase_due {
                        self.erase_pass();
                    } else {
                        self.table_build_pass();
                    }
                    self.background_last_pass = Instant::now();
                    self.safe_point();
                }
                Some(done) = next_read(&mut read_done) => {
                    self.on_read_ahead(done);
                    self.safe_point();
                }
            }
            // Group commit: fold whatever else is already queued into the same fsync.
            for _ in 0..GROUP_MAX {
                let cmd = cmd_rx.try_recv().ok();
                let mesh = mesh_rx.try_recv().ok();
                if cmd.is_none() && mesh.is_none() {
                    break;
                }
                if let Some(cmd) = cmd {
                    self.on_command(cmd);
                    self.safe_point();
                }
                if let Some(input) = mesh {
                    self.on_mesh(input);
                    self.safe_point();
                }
            }
            self.metrics.queue("driver_mesh_inputs", mesh_rx.len());
            self.metrics.queue("driver_publishes", cmd_rx.len());
            self.commit();
            self.own_numbers.set_from(&self.node);
            // Reads ahead start after the commit: they see every event the core counted
            // when it named their runs.
            let removals = self.node.store().removals();
            if let Some(readers) = &mut self.readers {
                readers.launch(removals);
            }
        }
        self.commit();
        // Publishes still waiting for other regions' confirmations are committed here:
        // answered now (`durable_local`, incomplete, as at their timeout) rather than left
        // to a closed connection, after which a client might publish them again.
        for w in std::mem::take(&mut self.confirming) {
            self.metrics.reject("ack_timeout");
            self.answer(w, true);
        }
        info!("driver stopped");
    }

    fn on_tick(&mut self) {
        let now = Instant::now();
        let expired: Vec<Waiting>;
        (expired, self.confirming) = std::mem::take(&mut self.confirming)
            .into_iter()
            .partition(|w| w.deadline <= now);
        for w in expired {
            // Committed here (they waited in `confirming`), not yet where asked.
            self.metrics.reject("ack_timeout");
            self.answer(w, true);
        }
        // Each event once (the book knows the most regions its publishes wait for).
        let mut again: BTreeSet<EventId> = BTreeSet::new();
        for w in &mut self.confirming {
            if let Some(t) = w.ask_again
                && t <= now
            {
                w.ask_again = None;
                again.extend(w.ids.iter().copied());
            }
        }
        if !again.is_empty() {
            self.confirm_again(&again);
            // Sent like a step's own messages: after a commit (nothing new to make durable).
            self.drain();
        }
        self.aggregator.tick(wall_ms().max(0) as u64);
        if now >= self.retention_due {
            self.retention_pass(now);
        }
        if self.retract_due.is_some_and(|due| now >= due) {
            self.publish_retractions(now);
        }
        self.publish_snapshot();
    }

    /// Hands the derivative numbers still waiting for their retraction
    /// (`store/derived.rs`) to the retractor, and looks again after
    /// [`crate::erase::RETRACT_RESEND`] (applying its own retraction takes them off).
    fn publish_retractions(&mut self, now: Instant) {
        let Some(tx) = &self.retract_tx else {
            self.retract_due = None;
            return;
        };
        match self.node.store().pending_retractions() {
            Ok(pending) if pending.is_empty() => self.retract_due = None,
            Ok(pending) => {
                let (last, times) = &mut self.retract_sent;
                if *last == pending {
                    *times += 1;
                } else {
                    (*last, *times) = (pending.clone(), 1);
                }
                if *times > RETRACT_SENDS_MAX {
                    self.metrics.reject("retract_abandoned");
                    error!(
                        derivatives = pending.len(),
                        "a retraction was published {RETRACT_SENDS_MAX} times and never applied here; not publishing it again until a restart"
                    );
                    self.retract_due = None;
                    return;
                }
                if tx.try_send(pending).is_err() {
                    debug!("the retractor is busy; retractions wait");
                }
                self.retract_due = Some(now + crate::erase::RETRACT_RESEND);
            }
            Err(e) => {
                warn!(error = %e, "reading pending retractions failed");
                self.retract_due = Some(now + crate::erase::RETRACT_RESEND);
            }
        }
    }

    /// One retention pass (stream rules' `retention_s`, `retention_bytes`): its deletions
    /// go into the open write transaction and are committed with this step. Runs every
    /// [`RETENTION_INTERVAL`], or at the next tick while a backlog remains.
    fn retention_pass(&mut self, now: Instant) {
        let wall = wall_ms().max(0) as u64;
        let (clock, ahead) = retention_clock(self.retention_clock, wall, now);
        if ahead > RETENTION_JUMP_WARN_MS && !self.retention_clock_warned {
            warn!(
                ahead_ms = ahead,
                "the wall clock jumped ahead: retention follows it at twice real time, so a wrong clock cannot expire every event at once"
            );
            self.retention_clock_warned = true;
        } else if ahead == 0 {
            self.retention_clock_warned = false;
        }
        self.retention_clock = Some((clock, now));
        let result = self.node.store_mut().expire(clock);
        self.retention_due = now + RETENTION_INTERVAL;
        match result {
            Ok(done) => {
                for (cause, n) in [("age", done.by_age), ("size", done.by_size)] {
                    if n > 0 {
                        self.metrics
                            .events_expired
                            .get_or_create(&vec![("cause", cause.to_string())])
                            .inc_by(n);
                    }
                }
                if done.by_age + done.by_size > 0 {
                    debug!(
                        by_age = done.by_age,
                        by_size = done.by_size,
                        "retention pass"
                    );
                }
                if done.more {
                    self.retention_due = now;
                }
                if done.ranges_full && !self.retention_blocked {
                    warn!(
                        ranges = self.node.store().expired_ranges(),
                        "retention stopped: limits.expired_ranges_max ranges of expired numbers, one per origin; raise expired_ranges_max"
                    );
                }
                self.retention_blocked = done.ranges_full;
            }
            Err(e) => warn!(error = %e, "retention pass failed"),
        }
        // From the store's count, which has every step that held (a pass that fails part
        // way keeps the steps before it).
        let dropped = self.node.store().stats().expired_ranges_dropped;
        let counted = self.metrics.expired_ranges_dropped.get();
        if dropped > counted {
            if counted == 0 {
                warn!(
                    dropped,
                    "dropping the oldest ranges of expired numbers at limits.expired_ranges_max: this node no longer answers Skips for them (their origins still do)"
                );
            }
            self.metrics
                .expired_ranges_dropped
                .inc_by(dropped - counted);
        }
        self.metrics
            .expired_ranges
            .set(self.node.store().expired_ranges() as i64);
    }

    fn on_mesh(&mut self, input: FromMesh) {
        let now = self.now();
        match input {
            FromMesh::Message {
                from,
                msg,
                reply,
                budget,
            } => {
                // A request whose answer reads many events waits for a reader thread to
                // read them (`read_ahead.rs`): the driver goes on meanwhile.
                if matches!(msg, Message::SyncRequest { .. })
                    && matches!(reply, Some(Reply::Sync(_)))
                    && self.readers.as_ref().is_some_and(|r| r.has_room())
                {
                    let runs = self.node.sync_answer_reads(now, &from, &msg);
                    if crate::read_ahead::Readers::worth_it(&runs)
                        && let Some(readers) = &mut self.readers
                    {
                        readers.park(from, msg, reply, budget, runs);
                        return;
                    }
                }
                self.on_message(now, from, msg, reply, budget);
            }
            FromMesh::Confirmed { from, ids, without } => {
                // Only a peer whose region is known counts (a member, up or down).
                let Some(region) = self
                    .members
                    .get(&from)
                    .or_else(|| self.down.get(&from))
                    .map(|m| m.region.clone())
                    .filter(|r| !r.is_empty())
                else {
                    self.metrics.reject("confirm_from_unknown_peer");
                    return;
                };
                self.confirms
                    .confirmed(ids.into_iter().map(EventId), &region);
                self.settle_confirmations();
                if !without.is_empty() {
                    // It does not store their streams (or its store refused them): it
                    // cannot confirm them, now or for the next events of those streams.
                    let at = Instant::now();
                    for e in &without {
                        self.confirms.learn_not_storing(from, e.stream(), at);
                    }
                    self.confirm_elsewhere(from, without, RetryReason::AnsweredWithout);
                }
            }
            FromMesh::ConfirmFailed { to, events } => {
                self.confirm_elsewhere(to, events, RetryReason::NotSent);
            }
            FromMesh::SeedReached { key, addr } => {
                info!(peer = %key, %addr, "seed reached; joining");
                let seed = MemberInfo {
                    key: key.0,
                    region: Default::default(),
                    cloud: Default::default(),
                    jurisdiction: Default::default(),
                    addr: addr.to_string().into(),
                    policy_epoch: 0,
                    generation: 0,
                };
                self.node.join(now, &[seed]);
            }
            FromMesh::Rtt { peer, rtt } => {
                self.node
                    .handle_rtt_sample(now, peer, rtt.as_micros() as Micros);
                self.metrics
                    .peer_rtt
                    .get_or_create(&vec![("peer", self.peer_label(&peer))])
                    .set(rtt.as_secs_f64());
            }
        }
        self.drain();
    }

    /// A message from a peer, handed to the core; `_budget` is released when it has been
    /// handled.
    fn on_message(
        &mut self,
        now: Micros,
        from: OriginKey,
        msg: Message,
        reply: Option<Reply>,
        _budget: Option<tokio::sync::OwnedSemaphorePermit>,
    ) {
        let push_ids: Vec<EventId> = match &msg {
            Message::Push { events, .. } => events.iter().map(|e| e.id()).collect(),
            _ => Vec::new(),
        };
        let is_sync = matches!(msg, Message::SyncRequest { .. });
        let before = self.node.stats().events_new;
        let refused_before = self.node.stats().residency_refused;
        if let Message::Push { events, .. } | Message::SyncResponse { events, .. } = &msg {
            for e in events {
                let _span = info_span!("hop", event = %e.id(), from = %from,
                    traceparent = e.trace().map(|t| t.traceparent.as_str()).unwrap_or(""))
                .entered();
                debug!("event received");
            }
        }
        let received = match &msg {
            Message::Push { events: e, .. } | Message::SyncResponse { events: e, .. } => {
                e.len() as u64
            }
            _ => 0,
        };
        self.node.handle_message(now, from, msg);
        // A peer sent events this node may not hold (a residency decision the peer
        // got wrong, or a lying peer): dropped by the core; audited with the sender.
        let refused = self.node.stats().residency_refused - refused_before;
        if refused > 0 {
            self.metrics.reject_n("residency_refused", refused);
            self.audit.record(crate::audit::Entry::now(
                crate::audit::Decision::Deny,
                "residency_refused",
                self.policy.as_ref().map_or(0, |(_, s)| s.epoch()),
                format!(
                    "peer {from} sent {refused} event(s) this node ({} in {}) may not hold: dropped",
                    self.me.jurisdiction, self.me.region
                ),
            ));
        }
        let new = self.node.stats().events_new - before;
        self.metrics.replicated_in.inc_by(new);
        self.metrics
            .duplicates_in
            .inc_by(received.saturating_sub(new));
        match reply {
            Some(Reply::Sync(tx)) if is_sync => {
                // The core answers a sync request at once: route that answer back
                // on the request's stream.
                self.drain_with(Some((from, tx)));
            }
            Some(Reply::Confirm(tx)) => self.confirm_replies.push((tx, push_ids)),
            _ => {}
        }
    }

    /// A request's read-ahead came back: installed in the store for the core's answer
    /// (unless stored events were removed meanwhile), then the request is handled as it
    /// arrived, and the read-ahead dropped.
    fn on_read_ahead(&mut self, mut done: crate::read_ahead::Done) {
        if let Some(readers) = &mut self.readers {
            readers.returned(&mut done);
        }
        let parked = done.parked;
        tracing::debug!(peer = %parked.from, events = done.ahead.events(), "anti-entropy answer read ahead");
        self.node_store().begin_read_ahead(done.ahead);
        let now = self.now();
        self.on_message(now, parked.from, parked.msg, parked.reply, parked.budget);
        self.node_store().end_read_ahead();
        self.drain();
    }

    fn peer_label(&self, key: &OriginKey) -> String {
        let short = &hex::encode(key.0)[..12];
        match self.members.get(key) {
            Some(m) => format!("{}/{short}", m.region),
            None => short.to_string(),
        }
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Publish {
                events,
                derived,
                ack,
                dedup,
                claim,
                started,
                reply,
            } => {
                self.claims.extend(claim);
                let now = self.now();
                let mut ids = Vec::with_capacity(events.len());
                let mut refused: Option<String> = None;
                let mut erased: Option<String> = None;
                let mut reused: Option<PublishError> = None;
                for event in &events {
                    let _span = info_span!("publish", event = %event.id(),
                        traceparent = event.trace().map(|t| t.traceparent.as_str()).unwrap_or(""))
                    .entered();
                    debug!("published");
                }
                let event_ids: Vec<EventId> = events.iter().map(|e| e.id()).collect();
                // Who published each event, and where: for the audit of a refusal.
                let whose: Vec<(String, String)> = events
                    .iter()
                    .map(|e| {
                        (
                            e.security().principal.clone(),
                            e.stream().as_str().to_string(),
                        )
                    })
                    .collect();
                let numbers: Vec<(OriginKey, u64)> =
                    events.iter().map(|e| (e.origin(), e.seq())).collect();
                // Sources an aggregating transform reads, and new here: each is added to
                // its windows once it is accepted (a source seen before was counted then).
                let watched = self.aggregator.watching(&events);
                // Once each: an envelope repeated within the request (an edge batch that
                // retransmits) is one source, not several.
                let mut first = BTreeSet::new();
                let fresh: Vec<Option<Arc<Event>>> = events
                    .iter()
                    .zip(watched)
                    .map(|(e, w)| {
                        (w && first.insert(e.id()) && !self.node.store().contains(&e.id()))
                            .then(|| e.clone())
                    })
                    .collect();
                // Events this node already holds (a producer's retry, a replay): the core
                // does not push them again, so with `ack=regions:N` they get confirmable
                // copies below, or they would never be confirmed.
                let held: Vec<Arc<Event>> = if matches!(ack, Ack::Regions(n) if n > 1) {
                    events
                        .iter()
                        .filter(|e| self.node.store().contains(&e.id()))
                        .cloned()
                        .collect()
                } else {
                    Vec::new()
                };
                // The sources first (every one offered, even after a refusal: only what the
                // store truly refuses is missing), then the derivatives of the sources it
                // took, in the same step and group commit. A derivative of a refused source
                // (full store, erased, a reused number) is not published: its content came
                // from data the fabric did not take; its number is voided.
                // What erase rules match of the sources field transforms derived from
                // (`store/derived.rs`).
                let derived_sources: BTreeMap<EventId, crate::store::DerivedSource> =
                    if derived.iter().any(|(s, _)| s.is_some()) {
                        events
                            .iter()
                            .map(|e| (e.id(), crate::store::DerivedSource::of(e)))
                            .collect()
                    } else {
                        BTreeMap::new()
                    };
                // Kept for the confirmable copies sent after this step (`confirm_again`).
                let watched: BTreeMap<EventId, Arc<Event>> = if matches!(ack, Ack::Regions(n) if n > 1)
                {
                    events.iter().map(|e| (e.id(), e.clone())).collect()
                } else {
                    BTreeMap::new()
                };
                let results = self.node.handle_publish_batch(now, events);
                let sources_refused: BTreeSet<EventId> = event_ids
                    .iter()
                    .zip(&results)
                    .filter(|(_, r)| r.is_err())
                    .map(|(id, _)| *id)
                    .collect();
                let mut kept = Vec::with_capacity(derived.len());
                let mut kept_sources = Vec::with_capacity(derived.len());
                for (source, event) in derived {
                    if source.is_some_and(|s| sources_refused.contains(&s)) {
                        if let Err(e) = self.node.void_own(now, &event) {
                            warn!(error = %e, event = %event.id(), "voiding a derivative's number failed");
                        }
                        crate::egress::fail(
                            &self.metrics,
                            &self.audit,
                            &crate::egress::Failure::SourceRefused,
                            "",
                            &source.map(|s| s.to_string()).unwrap_or_default(),
                        );
                    } else {
                        kept_sources.push(source.map(|s| (s, event.seq())));
                        kept.push(event);
                    }
                }
                let derived_ids: Vec<EventId> = kept.iter().map(|e| e.id()).collect();
                let derived_results = self.node.handle_publish_batch(now, kept);
                let mut derived_ok = Vec::with_capacity(derived_ids.len());
                for ((id, result), source) in derived_ids
                    .into_iter()
                    .zip(derived_results)
                    .zip(kept_sources)
                {
                    match result {
                        Ok(()) => {
                            // A field transform's derivative goes when its source is
                            // erased (`store/derived.rs`).
                            let me = self.me.node_key();
                            if let Some(src) = source
                                .and_then(|(s, seq)| derived_sources.get(&s).map(|src| (src, seq)))
                                && let Err(e) = self
                                    .node
                                    .store_records_mut()
                                    .record_derived(&me, src.1, src.0)
                            {
                                // Published all the same (its source was taken); an
                                // erase of the source will not reach it.
                                self.metrics.reject("derived_unrecorded");
                                warn!(error = %e, "recording a derivative's source failed; an erase of the source will not retract it");
                            }
                            derived_ok.push(id);
                        }
                        Err(e) => crate::egress::fail(
                            &self.metrics,
                            &self.audit,
                            &crate::egress::Failure::StoreRefused(e.to_string()),
                            "",
                            &id.to_string(),
                        ),
                    }
                }
                let wall = wall_ms().max(0) as u64;
                for (source, result) in fresh.iter().zip(&results) {
                    if let (Some(event), Ok(())) = (source, result) {
                        self.aggregator.add(event, wall);
                    }
                }
                let results_ok: Vec<bool> = results.iter().map(Result::is_ok).collect();
                for (((id, key), result), (principal, stream)) in
                    event_ids.into_iter().zip(dedup).zip(results).zip(whose)
                {
                    if let Err(e) = result {
                        let refuse = |reason: &str| {
                            self.metrics.reject(reason);
                            self.audit.record(
                                crate::audit::Entry::now(
                                    crate::audit::Decision::Deny,
                                    reason,
                                    self.policy.as_ref().map_or(0, |(_, s)| s.epoch()),
                                    format!("publish of event {id} refused: {e}"),
                                )
                                .principal(&principal)
                                .stream(&stream)
                                .event(id.to_string()),
                            );
                        };
                        if let weft_fabric::mesh::StoreError::Equivocation { origin, seq } = e {
                            refuse("seq_reused");
                            match &mut reused {
                                None => {
                                    reused = Some(PublishError::SeqReused {
                                        origin,
                                        seq,
                                        seqs: vec![seq],
                                        held_max: seq,
                                        accepted: 0,
                                    });
                                }
                                Some(PublishError::SeqReused {
                                    origin: first,
                                    seqs,
                                    ..
                                }) if *first == origin => seqs.push(seq),
                                Some(_) => {}
                            }
                        } else if let weft_fabric::mesh::StoreError::Erased { origin, seq } = e
                            && self.node.store().expired_covers(&origin, seq)
                        {
                            // Its number is among those retention expired here (a
                            // producer re-sending an old pre-signed event).
                            refuse("expired");
                            erased.get_or_insert(format!(
                                "origin {origin} seq {seq} was stored here and has since expired under its stream's retention"
                            ));
                        } else if let weft_fabric::mesh::StoreError::Erased { .. } = e {
                            refuse("erased");
                            erased.get_or_insert(format!(
                                "event {id} on {stream} is covered by an erase rule (an erase of its key or of its principal covers what is stamped up to 60 s, the HLC drift bound, past the request: docs/tables.md, Erasure); write it again after that"
                            ));
                        } else {
                            self.metrics.reject("store_refused");
                            refused.get_or_insert(e.to_string());
                        }
                        continue;
                    }
                    if let Some((p, s, i)) = key {
                        self.dedup.push((p, s, i, id));
                    }
                    ids.push(id);
                }
                if let Some(e) = refused {
                    let _ = reply.send(Err(PublishError::Store {
                        message: format!(
                            "{e} ({} of the request's events were accepted)",
                            ids.len()
                        ),
                        accepted: ids.len(),
                    }));
                    self.drain();
                    return;
                }
                if let Some(PublishError::SeqReused {
                    origin, seq, seqs, ..
                }) = reused
                {
                    // What the node held before this request: the request's own new events
                    // of the origin (stored in this step) do not count, or the producer
                    // would number past them and send their content twice.
                    let added: BTreeSet<u64> = numbers
                        .iter()
                        .zip(&results_ok)
                        .filter(|((o, s), ok)| **ok && *o == origin && !seqs.contains(s))
                        .map(|((_, s), _)| *s)
                        .collect();
                    let held_max = self
                        .node
                        .store()
                        .max_seq_excluding(&origin, &added)
                        .unwrap_or(0)
                        .max(seqs.iter().copied().max().unwrap_or(seq));
                    let _ = reply.send(Err(PublishError::SeqReused {
                        origin,
                        seq,
                        seqs,
                        held_max,
                        accepted: ids.len(),
                    }));
                    self.drain();
                    return;
                }
                if let Some(e) = erased {
                    // Answered after the commit of the events it did accept: the edge port
                    // takes this answer as the batch settled (durable).
                    let message = format!(
                        "{e}: not stored again ({} of the request's events were accepted)",
                        ids.len()
                    );
                    let accepted = ids.len();
                    self.after_commit_replies.push(Box::new(move |durable| {
                        let _ = reply.send(Err(if durable {
                            PublishError::Erased { message, accepted }
                        } else {
                            PublishError::Store {
                                message: format!("the commit failed; {message}"),
                                accepted: 0,
                            }
                        }));
                    }));
                    self.drain();
                    return;
                }
                if let Ack::Regions(n) = ack
                    && n > 1
                {
                    self.confirms.watch(&ids, &watched, n);
                }
                self.drain();
                self.confirm_around_relays(held);
                let w = Waiting {
                    ids,
                    derived: derived_ok,
                    ack,
                    started,
                    deadline: Instant::now() + self.ack_timeout,
                    ask_again: matches!(ack, Ack::Regions(n) if n > 1)
                        .then(|| Instant::now() + self.ack_timeout / 2),
                    reply,
                };
                if ack == Ack::None {
                    self.answer(w, false);
                } else {
                    self.after_commit.push(w);
                }
            }
            Command::SaveCursor {
                name,
                stream,
                pos,
                reply,
            } => {
                match self.node_store().cursor_set(&name, &stream, pos) {
                    // Answered once it is on disk (`commit`): an acknowledgement answered
                    // 200 survives a crash right after.
                    Ok(()) => self.after_commit_replies.push(Box::new(move |durable| {
                        let _ = reply.send(if durable {
                            Ok(())
                        } else {
                            Err(commit_failed())
                        });
                    })),
                    Err(e) => {
                        warn!(cursor = %name, error = %e, "saving a cursor failed");
                        let _ = reply.send(Err(e));
                    }
                }
            }
            Command::DeleteCursor { name, reply } => match self.node_store().cursor_delete(&name) {
                Ok(existed) => self.after_commit_replies.push(Box::new(move |durable| {
                    let _ = reply.send(if durable {
                        Ok(existed)
                    } else {
                        Err(commit_failed())
                    });
                })),
                Err(e) => {
                    warn!(cursor = %name, error = %e, "deleting a cursor failed");
                    let _ = reply.send(Err(crate::store::RecordError::Store(e)));
                }
            },
            Command::DrainWindows { reply } => {
                let _ = reply.send(self.aggregator.drain());
            }
        }
    }

    /// For consumer cursors (records beside the events).
    fn node_store(&mut self) -> &mut SqliteStore {
        self.node.store_records_mut()
    }

    fn answer(&mut self, w: Waiting, durable: bool) {
        // Each event must be durable in N regions; they need not be the same N for every
        // event of a batch. `regions` lists those holding every event, `regions_min` the
        // fewest regions any one event is confirmed in.
        let (regions, regions_min): (Vec<String>, usize) = match w.ack {
            Ack::Regions(_) => {
                let mut common: Option<BTreeSet<String>> = None;
                let mut min = usize::MAX;
                // Only `regions:N` with N > 1 watches (and counts in `confirm_refs`).
                let watching = matches!(w.ack, Ack::Regions(n) if n > 1);
                for id in &w.ids {
                    // The last publish watching it takes the entry; others see a copy.
                    let set = self.confirms.release(id, watching);
                    min = min.min(set.len());
                    common = Some(match common {
                        None => set,
                        Some(c) => c.intersection(&set).cloned().collect(),
                    });
                }
                let common: Vec<String> = common.unwrap_or_default().into_iter().collect();
                let min = if w.ids.is_empty() { common.len() } else { min };
                (common, min)
            }
            _ if durable => (vec![self.me.region.to_string()], 1),
            _ => (Vec::new(), 0),
        };
        let complete = match w.ack {
            Ack::None => true,
            Ack::Local => durable,
            Ack::Regions(n) => durable && regions_min >= n,
        };
        self.metrics
            .ack_seconds
            .get_or_create(&vec![("level", w.ack.label().to_string())])
            .observe(w.started.elapsed().as_secs_f64());
        let _ = w.reply.send(Ok(Published {
            ids: w.ids.iter().map(|i| i.to_string()).collect(),
            durable_local: durable,
            regions,
            regions_min,
            complete,
            derived: w.derived.iter().map(|i| i.to_string()).collect(),
        }));
    }

    fn settle_confirmations(&mut self) {
        let (done, waiting): (Vec<Waiting>, Vec<Waiting>) = std::mem::take(&mut self.confirming)
            .into_iter()
            .partition(|w| {
                let Ack::Regions(n) = w.ack else { return true };
                w.ids.iter().all(|id| self.confirms.confirmed_in(id, n))
            });
        self.confirming = waiting;
        for w in done {
            self.answer(w, true);
        }
    }

    /// Routing may take an event to a region through a relay region, and a relay does not
    /// answer for the regions behind it; a region's tree member may store none of the
    /// stream (known from an earlier answer). For events awaiting `ack=regions:N`, every
    /// region no member of which was asked and may answer gets a confirmable copy at its
    /// next member (a duplicate there, answered with what it has committed), so
    /// confirmations come from every region whatever the path (`confirm.rs`).
    fn confirm_around_relays(&mut self, events: impl IntoIterator<Item = Arc<Event>>) {
        let roster = DriverRoster::of(&self.members, &self.node);
        let (copies, retries) = self.confirms.around_relays(events, &roster, Instant::now());
        self.count_retries(RetryReason::KnownNotStoring, retries);
        self.send_confirm_copies(copies);
    }

    /// Half the ack timeout after a `regions:N` publish, the regions that have not confirmed
    /// its events yet are asked again, each at its next member not asked yet: a member that
    /// is unreachable without the transport knowing (a network blackhole, a crashed peer
    /// whose connection has not timed out: nothing comes back before the exchange's 30 s
    /// bound) or that answered without them does not hold the publish to its timeout. Once
    /// per publish; each member is asked once per event.
    fn confirm_again(&mut self, ids: &BTreeSet<EventId>) {
        let roster = DriverRoster::of(&self.members, &self.node);
        let copies = self.confirms.again(ids, &roster, Instant::now());
        if !copies.is_empty() {
            let copies_n: u64 = copies.values().map(|v| v.len() as u64).sum();
            self.count_retries(RetryReason::NoAnswerByHalfTimeout, copies_n);
            debug!(
                copies = copies_n,
                "regions not confirmed by half the ack timeout asked again"
            );
        }
        self.send_confirm_copies(copies);
    }

    /// A confirmable push (the core's or a copy) did not get through to `failed`, or
    /// `failed` answered without these events (`why`): each still needing `failed`'s region
    /// goes to the region's next member, unless another member of it was asked and may
    /// answer, or the event is already confirmed in as many regions as its publishes wait
    /// for (`confirm.rs`). A member's failure is acted on once per event.
    fn confirm_elsewhere(&mut self, failed: OriginKey, events: Vec<Arc<Event>>, why: RetryReason) {
        let Some(region) = self
            .members
            .get(&failed)
            .or_else(|| self.down.get(&failed))
            .map(|m| m.region.to_string())
            .filter(|r| !r.is_empty())
        else {
            return;
        };
        let roster = DriverRoster::of(&self.members, &self.node);
        let copies = self
            .confirms
            .elsewhere(failed, &region, events, &roster, Instant::now());
        // A failure to send is counted by the transport (`weft_mesh_dropped_total`).
        if !copies.is_empty() {
            let copies_n: u64 = copies.values().map(|v| v.len() as u64).sum();
            self.count_retries(why, copies_n);
            debug!(failed = %failed, copies = copies_n, %region, "confirmation sought at another member of the region");
        }
        self.send_confirm_copies(copies);
    }

    fn count_retries(&self, why: RetryReason, copies: u64) {
        // Called on every step that pushes watched events: no label built for nothing.
        if copies == 0 {
            return;
        }
        self.metrics
            .confirm_retries
            .get_or_create(&vec![("reason", why.label().to_string())])
            .inc_by(copies);
    }

    /// Queues confirmable pushes of `copies`' events to each peer (held to the step's
    /// commit, as every send).
    fn send_confirm_copies(&mut self, copies: Copies) {
        for (peer, events) in copies {
            let addr = self
                .members
                .get(&peer)
                .and_then(|m| m.addr.parse::<SocketAddr>().ok());
            for msg in confirm_pushes(&events) {
                self.outbox.push((
                    peer,
                    addr,
                    Outgoing {
                        class: self.priorities.of(&msg),
                        msg,
                        confirm: true,
                    },
                ));
            }
        }
    }

    /// Sends the core's transmits and applies its application events.
    fn drain(&mut self) {
        self.drain_with(None);
    }

    fn drain_with(&mut self, mut sync_reply: Option<(OriginKey, oneshot::Sender<Vec<u8>>)>) {
        // Events awaiting `ack=regions:N` pushed in this step (see `confirm_around_relays`).
        let mut watched: BTreeMap<EventId, Arc<Event>> = BTreeMap::new();
        while let Some(t) = self.node.poll_transmit() {
            if let Message::SyncResponse { .. } = &t.msg
                && sync_reply.as_ref().is_some_and(|(to, _)| *to == t.to)
                && let Some((_, tx)) = sync_reply.take()
            {
                self.outbox_replies
                    .push((tx, weft_fabric::mesh::wire::encode(&t.msg)));
                continue;
            }
            // A push carrying watched events travels as a confirmable one.
            let confirm = match &t.msg {
                Message::Push { events, .. } => {
                    self.confirms.asked_by_push(t.to, events, &mut watched)
                }
                _ => false,
            };
            let addr = self
                .members
                .get(&t.to)
                .or_else(|| self.down.get(&t.to))
                .and_then(|m| m.addr.parse::<SocketAddr>().ok());
            // Liveness only (a link probe and its answer; a push's acknowledgement the
            // transport sends itself, on arrival): no state of this step rides on them, so
            // they leave at once. Held to the commit they measured the
            // receiver's group commit too: RTT samples that were not the network's, and
            // needless failovers of loaded nodes on fast links (docs/performance.md).
            if matches!(t.msg, Message::Probe { .. } | Message::ProbeAck { .. }) {
                let out = Outgoing {
                    class: self.priorities.of(&t.msg),
                    msg: t.msg,
                    confirm: false,
                };
                self.transport.send(t.to, addr, out);
                continue;
            }
            // Held until the commit of this step: nothing leaves the node before the state
            // that produced it is durable (a crash can never leave peers holding sequence
            // numbers this node would hand out again after a restart).
            self.outbox.push((
                t.to,
                addr,
                Outgoing {
                    class: self.priorities.of(&t.msg),
                    msg: t.msg,
                    confirm,
                },
            ));
        }
        self.confirm_around_relays(watched.into_values());
        while let Some(ev) = self.node.poll_event() {
            match ev {
                // Queued for delivery before an erase applied earlier in this step removed
                // it: never logged.
                AppEvent::Deliver(event) if self.erased_before_delivery(&event) => {
                    debug!(event = %event.id(), "erased before delivery");
                }
                AppEvent::Deliver(event) => self.deliver(&event),
                AppEvent::SkipContradicted { event, skipped_by }
                    if self
                        .node
                        .store()
                        .retention_may_explain(&event, wall_ms().max(0) as u64) =>
                {
                    // The peer had most likely expired it under the stream's retention
                    // (nodes expire on their own clocks and size budgets): counted, no
                    // accusation. The event is taken, and this node's pass expires it.
                    self.metrics.reject("skip_contradicted_retention");
                    debug!(origin = %event.origin(), seq = event.seq(), peer = %skipped_by,
                        "a peer's Skip was contradicted by an event its stream's retention may have expired there");
                }
                AppEvent::SkipContradicted { event, skipped_by } => {
                    // A peer's Skip was wrong: the event came, and this node may hold it.
                    let (origin, seq, id) = (event.origin(), event.seq(), event.id());
                    self.metrics.reject("skip_contradicted");
                    warn!(%origin, seq, event = %id, peer = %skipped_by, "a peer's Skip was contradicted by the event");
                    self.audit.record(
                        crate::audit::Entry::now(
                            crate::audit::Decision::Deny,
                            "skip_contradicted",
                            self.policy.as_ref().map_or(0, |(_, s)| s.epoch()),
                            format!(
                                "peer {skipped_by} said sequence number {seq} of origin {origin} was not for this node, but the event came and this node may hold it (the peer lied, or judged under another policy epoch or erase rule); the event is taken"
                            ),
                        )
                        .stream(event.stream().as_str())
                        .event(id.to_string()),
                    );
                }
                // Delivered after the origin's later events: its Skip was contradicted, or
                // its number was taken as lost and a holder's copy came after all.
                AppEvent::Late(event) | AppEvent::Recovered(event)
                    if self.erased_before_delivery(&event) =>
                {
                    debug!(event = %event.id(), "erased before delivery");
                }
                AppEvent::Late(event) => self.deliver_late(&event),
                AppEvent::Recovered(event) => {
                    // Counted in `lost_recovered`; a region's worth can come back at once.
                    debug!(
                        event = %event.id(),
                        origin = %event.origin(),
                        seq = event.seq(),
                        "recovered an event its origin had lost: delivered late"
                    );
                    self.deliver_late(&event);
                }
                AppEvent::Equivocation {
                    origin,
                    seq,
                    held,
                    other,
                } => self.equivocation(origin, seq, held, other),
                AppEvent::MemberUp(m) => {
                    info!(peer = %m.node_key(), region = %m.region, addr = %m.addr, "member up");
                    let addr = m.addr.parse::<SocketAddr>().ok();
                    self.transport.learn(m.node_key(), addr, &m.region);
                    let json = serde_json::to_string(&m).unwrap_or_default();
                    let now_ms = wall_ms();
                    if let Err(e) = self
                        .node
                        .store_records_mut()
                        .peer_upsert(m.key, &json, now_ms)
                    {
                        debug!(error = %e, "remembering a peer failed");
                    }
                    self.down.remove(&m.node_key());
                    self.members.insert(m.node_key(), *m);
                }
                AppEvent::MemberDown(m) => {
                    info!(peer = %m.node_key(), region = %m.region, "member down");
                    self.members.remove(&m.node_key());
                    self.down.insert(m.node_key(), *m);
                }
            }
        }
        self.erased_in_step.clear();
        self.rebuild_late_tables();
    }

    /// Whether `event`, queued for delivery, was erased earlier in this step: covered by
    /// an erase rule applied since, or removed by an erase or a retraction
    /// ([`Driver::erased_in_step`]). It is then not logged.
    fn erased_before_delivery(&self, event: &Event) -> bool {
        self.node.store().erase_covers(event)
            || (!self.erased_in_step.is_empty() && self.erased_in_step.contains(&event.id()))
    }

    /// Repairs, once each, the tables late writes reached in this step (see
    /// [`Driver::deliver_late`]): the keys they wrote, or the whole table after a write
    /// that failed to apply.
    /// The strategy is the one declared now, not when the late write came: a policy
    /// applied later in the same step may have changed it (and rebuilt the table already).
    fn rebuild_late_tables(&mut self) {
        if !self.late_tables.is_empty() {
            self.table_build_due = true;
        }
        for (stream, touched) in std::mem::take(&mut self.late_tables) {
            let Some(strategy) = self.tables.as_ref().and_then(|t| t.strategy(&stream)) else {
                continue;
            };
            let stats = self.table_stats.entry(strategy.as_str()).or_default();
            let built = &mut self.tables_built;
            let result = write_tx(&mut self.node, |conn| {
                crate::tables::atomically(conn, "table_rebuild", |conn| {
                    crate::tables::repair(
                        conn,
                        Some(strategy),
                        &stream,
                        touched.as_ref(),
                        built,
                        stats,
                    )
                })
            });
            if let Err(e) = result {
                self.metrics.reject("table_apply_failed");
                warn!(stream = %stream, error = %e, "rebuilding a table for late writes failed; it is built again from the log, pass by pass");
                // Not left as it is, different from the other replicas' for good (a build in
                // progress included: its passes would not read the late writes again for
                // keys they reached): built again from its first key.
                self.tables_built.remove(stream.as_str());
                self.table_build_due = true;
                let restarted = write_tx(&mut self.node, |conn| {
                    crate::tables::start_build(conn, stream.as_str(), strategy)
                });
                if let Err(e) = restarted {
                    warn!(stream = %stream, error = %e, "starting the table's build again failed");
                }
            }
        }
    }

    /// Appends a delivered event to the log and applies what it carries (a policy bundle,
    /// an erase request, a table write).
    fn deliver(&mut self, event: &Event) {
        self.observe_hlc(event);
        match self.node.store_records_mut().append_log(event) {
            Ok(pos) => {
                self.last_pos = pos;
                self.metrics.deliveries.inc();
                self.record_ce_identity(event);
                if event.stream().as_str() == crate::policy_push::POLICY_STREAM {
                    self.apply_policy(event);
                } else if event.stream().as_str() == crate::erase::ERASE_STREAM {
                    self.apply_erase(event);
                } else if event.key().is_some() {
                    self.apply_table(event);
                }
            }
            Err(e) => {
                // The core counts it delivered: a step that committed without its log row
                // would leave it out of the log, its readers and its table for good.
                self.fail_stop(
                    "log_append_failed",
                    &format!("appending event {} to the log failed: {e}", event.id()),
                );
            }
        }
    }

    /// Takes an applied event's HLC into this node's clock (`clock.rs`): a write made here
    /// after it is stamped later. One more than the drift bound ahead is kept but not
    /// taken in: counted, logged at most once a minute.
    fn observe_hlc(&mut self, event: &Event) {
        if self.clock.observe(event.hlc()) {
            return;
        }
        self.metrics.hlc_ahead.inc();
        if self
            .hlc_ahead_logged
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(60))
        {
            self.hlc_ahead_logged = Some(Instant::now());
            warn!(event = %event.id(), origin = %event.origin(), hlc = %event.hlc(),
                "an applied event's HLC is more than the drift bound ahead of this node's clock: kept, its time not taken in (a producer's or this host's clock is wrong; counted in weft_hlc_ahead_total, logged once a minute)");
        }
    }

    /// Records the CloudEvents identity (principal, `source`, `id`) of an event another
    /// node (or a producer's own key) published, in the commit that makes it durable here:
    /// a client that retries through this node what it first published through another
    /// is answered from this record once the event has reached this node, as a retry
    /// through the first node is (idempotency across the fabric, eventual: a retry that
    /// overtakes the event's replication is a new event). This node's own publishes are
    /// recorded where they are taken. A sealed payload keeps its attributes from the node.
    fn record_ce_identity(&mut self, event: &Event) {
        if event.origin() == self.me.node_key()
            || event.content_type() != weft_fabric::cloudevents::CE_JSON
        {
            return;
        }
        let weft_fabric::Payload::Clear(bytes) = event.payload() else {
            return;
        };
        if let Some((source, id)) = weft_fabric::cloudevents::identity(bytes) {
            let principal = event.security().principal.clone();
            self.dedup.push((principal, source, id, event.id()));
        }
    }

    /// A peer sent an event under a number this node holds another event for: the origin's
    /// key signed both (producers sharing a key, such as a cloned device; an origin that
    /// restarted on an older or lost store and reused its numbers; or one that
    /// equivocates). Counted every time it arrives
    /// (`weft_rejected_total{reason="origin_equivocation"}`); audited (which logs it) at
    /// most once a minute per origin. The held event stays; the other is not stored here.
    fn equivocation(&mut self, origin: OriginKey, seq: u64, held: EventId, other: EventId) {
        /// How often one origin's equivocations are audited.
        const SAY_EVERY: Duration = Duration::from_secs(60);
        /// Most origins remembered for that; past it the memory starts over.
        const ORIGINS_MAX: usize = 1024;
        self.metrics.reject("origin_equivocation");
        let now = Instant::now();
        if self
            .equivocation_said
            .get(&origin)
            .is_some_and(|t| now.duration_since(*t) < SAY_EVERY)
        {
            return;
        }
        if self.equivocation_said.len() >= ORIGINS_MAX {
            self.equivocation_said.clear();
        }
        self.equivocation_said.insert(origin, now);
        let cause = if origin == self.node.me().node_key() {
            "this node's own key: it restarted on an older or lost store and reused its numbers"
        } else if self.node.members().any(|m| m.key == origin.0) {
            "a mesh member's key: it restarted on an older or lost store and reused its numbers, or two nodes run with one key"
        } else {
            "two producers share the key (a cloned device: give each its own key), or the origin restarted on an older or lost store"
        };
        self.audit.record(
            crate::audit::Entry::now(
                crate::audit::Decision::Deny,
                "origin_equivocation",
                self.policy.as_ref().map_or(0, |(_, s)| s.epoch()),
                format!(
                    "origin {origin} signed two events with sequence number {seq}: this node holds {held}, a peer sent {other} (not stored here); {cause}. Replicas may disagree on that number (counted every time; audited at most once a minute per origin)"
                ),
            )
            .event(other.to_string()),
        );
    }

    /// Appends an event delivered out of per-origin order ([`AppEvent::Late`],
    /// [`AppEvent::Recovered`]). A table
    /// tracks what each origin wrote by its highest sequence number, so a table write that
    /// comes late has its key rebuilt from the log's writes of that key (in per-origin
    /// order) at the end of the step, once however many late writes reached it
    /// (`tables::rebuild_keys`).
    fn deliver_late(&mut self, event: &Event) {
        let strategy = event
            .key()
            .and(self.tables.as_ref())
            .and_then(|t| t.strategy(event.stream()));
        if strategy.is_none() {
            self.deliver(event);
            return;
        }
        self.observe_hlc(event);
        match self.node.store_records_mut().append_log(event) {
            Ok(pos) => {
                self.last_pos = pos;
                self.metrics.deliveries.inc();
                let touched = self
                    .late_tables
                    .entry(event.stream().clone())
                    .or_insert_with(|| Some(crate::tables::Touched::default()));
                if let (Some(t), Some(key)) = (touched, event.key()) {
                    t.add(key, event.origin(), event.seq());
                }
            }
            Err(e) => {
                // The core counts it delivered: a step that committed without its log row
                // would leave it out of the log, its readers and its table for good.
                self.fail_stop(
                    "log_append_failed",
                    &format!("appending event {} to the log failed: {e}", event.id()),
                );
            }
        }
    }

    /// Applies the erase request an event on the erase stream holds (`erase.rs`), in this
    /// step's transaction: records the rule, removes what it covers (events, log rows, the
    /// key's table row; a principal's tables are rebuilt from what remains), and audits
    /// the count. An invalid request is refused and audited, and changes nothing.
    fn apply_erase(&mut self, event: &Event) {
        use crate::audit::Decision::{Apply, Deny};
        let entry = self.erase_audit(event);
        if let Some(numbers) = crate::erase::retraction(event) {
            self.apply_retraction(event, numbers);
            return;
        }
        let (target, hlc_max) = match crate::erase::carried(event) {
            Ok(t) => t,
            Err(why) => {
                self.erase_refused(
                    &entry,
                    format!("erase request from {} refused: {why}", event.origin()),
                );
                return;
            }
        };
        // A key's erase is filed under the key's stream (`weft audit --stream`), not the
        // erase stream that carried it.
        let filed_under = match &target {
            crate::erase::Target::Key { stream, .. } => stream.as_str(),
            crate::erase::Target::Principal { .. } => event.stream().as_str(),
        };
        let entry = self.erase_entry(filed_under, Some(event.id().to_string()));
        let was_pending = self
            .node
            .store()
            .erases_pending()
            .iter()
            .any(|p| p.target == target);
        let pass = match self.node.store_mut().erase(&target, hlc_max) {
            Ok(p) => p,
            Err(e) => {
                // The store changed nothing. The carrier is in this step's log: a step that
                // committed would never deliver it again, and the erase would be lost here
                // for good. Stop before the commit instead; after the restart the carrier
                // comes again (anti-entropy) and the erase is applied then.
                self.audit.record(entry(
                    Deny,
                    "erase_failed",
                    format!("erase of {target} failed: {e}; stopping before the step commits"),
                ));
                self.fail_stop("erase_failed", &format!("applying an erase failed: {e}"));
            }
        };
        let erased = &pass.events;
        self.erased_in_step.extend(erased.iter().map(|e| e.id));
        let relayed = self
            .node
            .forget_relayed(|e: &Event| e.hlc().as_u64() <= hlc_max && target.covers(e));
        // Tables: each key an erased write named is rebuilt from the writes that remain
        // (for a key rule, the key's row goes even if no write of it was stored here).
        let also = match &target {
            crate::erase::Target::Key { stream, key } => Some((stream.as_str(), key.as_slice())),
            crate::erase::Target::Principal { .. } => None,
        };
        let tables_note =
            self.repair_tables_after_removal(erased, also, &entry, &format!("erase of {target}"));
        // This node's derivatives of what the rule covers are retracted fabric-wide.
        let retract = match self
            .node
            .store_mut()
            .derivatives_to_retract(&target, hlc_max)
        {
            Ok(n) => n,
            Err(e) => {
                // Derivatives not made pending would never be retracted: as above.
                self.fail_stop(
                    "erase_failed",
                    &format!("finding the derivatives an erase retracts failed: {e}"),
                );
            }
        };
        if retract > 0 {
            self.retract_due = Some(Instant::now());
        }
        self.metrics.erased.inc_by(erased.len() as u64);
        let what = target.to_string();
        self.count_erases_pending();
        let removed = if pass.more {
            info!(
                erased = erased.len(),
                "{what} erased in part; the rest is removed pass by pass, hidden from every read meanwhile"
            );
            format!(
                "{} stored events removed so far, the rest removed pass by pass between other work (hidden from every read until then; audited as erase_completed)",
                pass.removed
            )
        } else if was_pending {
            // This request finished an erase of the same target still being removed.
            info!(
                erased = erased.len(),
                "{what} erased; it finishes the same erase still being removed"
            );
            self.erase_completed(&entry, &format!("erase of {what}"), pass.removed, "");
            format!(
                "{} stored events removed, finishing the same erase still being removed",
                erased.len()
            )
        } else {
            info!(erased = erased.len(), "{what} erased");
            format!("{} stored events removed", pass.removed)
        };
        self.audit.record(entry(
            Apply,
            "erase_applied",
            format!(
                "erase of {what} (requested through {}) applied: {removed}, {relayed} relayed copies forgotten, {retract} derivatives made here to retract{tables_note}",
                event.origin(),
            ),
        ));
    }

    /// One pass of a table being built from the log (`tables::build_pass`), between the
    /// driver's other inputs and in its write transaction; clears `table_build_due` when
    /// no build is left. A pass that fails changed nothing and is tried again after
    /// [`ERASE_RETRY`].
    fn table_build_pass(&mut self) {
        let tables = self.tables.clone();
        let result = crate::tables::builds(self.node.store().read_conn());
        let streams = match result {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "looking for tables being built failed");
                self.build_backoff.failed();
                return;
            }
        };
        // The streams in turn, so that a key rebuilt again and again (late writes before
        // its cursor) does not hold back the builds of other tables.
        let next = streams
            .iter()
            .find(|s| self.build_last.as_ref().is_none_or(|last| *s > last))
            .or(streams.first())
            .cloned();
        let Some(stream) = next else {
            self.table_build_due = false;
            return;
        };
        self.build_last = Some(stream.clone());
        let strategy = weft_fabric::StreamName::new(stream.as_str())
            .ok()
            .and_then(|name| tables.as_ref().and_then(|t| t.strategy(&name)));
        let Some(strategy) = strategy else {
            // No longer declared (a reconcile drops such a build; this is a backstop): its
            // build ends with its rows, so the builds after it go on.
            self.tables_built.remove(&stream);
            let dropped = write_tx(&mut self.node, |conn| {
                crate::tables::drop_table(conn, &stream)
            });
            if let Err(e) = dropped {
                warn!(stream, error = %e, "dropping the build of a table no longer declared failed");
                self.build_backoff.failed();
            }
            return;
        };
        let stats = self.table_stats.entry(strategy.as_str()).or_default();
        let result = write_tx(&mut self.node, |conn| {
            crate::tables::atomically(conn, "table_build", |conn| {
                crate::tables::build_pass(
                    conn,
                    &stream,
                    crate::tables::BUILD_PASS_KEYS,
                    crate::tables::BUILD_PASS_WRITES,
                    stats,
                )
            })
        });
        match result {
            Ok(Some(pass)) if pass.done => {
                self.build_backoff.held();
                self.tables_built.insert(stream.clone(), pass.strategy);
                if pass.key.is_none() {
                    info!(
                        stream,
                        strategy = pass.strategy.as_str(),
                        "table built pass by pass"
                    );
                }
            }
            Ok(Some(pass)) => {
                self.build_backoff.held();
                debug!(
                    stream,
                    keys = pass.keys,
                    writes = pass.writes,
                    "a pass of a table build"
                );
            }
            Ok(None) => {}
            Err(e) => {
                self.metrics.reject("table_apply_failed");
                warn!(stream, error = %e, "a pass of a table build failed; it is tried again");
                self.build_backoff.failed();
            }
        }
    }

    /// One pass of the oldest erase still being removed (`SqliteStore::erase_pass`),
    /// between the driver's other inputs and in its write transaction: the keys of the
    /// tables its removed writes named are repaired and the events counted; the erase's
    /// end is audited (`erase_completed`). A pass that fails changed nothing and is tried
    /// again after [`ERASE_RETRY`].
    fn erase_pass(&mut self) {
        let pass = match self.node.store_mut().erase_pass() {
            Ok(Some(p)) => p,
            Ok(None) => return,
            Err(e) => {
                self.metrics.reject("erase_pass_failed");
                warn!(error = %e, retry_s = self.erase_backoff.wait.as_secs(), "a pass of an erase failed; it is tried again (the rows it covers stay hidden)");
                self.erase_backoff.failed();
                return;
            }
        };
        self.erase_backoff.held();
        let entry = self.erase_entry(crate::erase::ERASE_STREAM, None);
        let what = format!("erase of {}", pass.target);
        let tables_note = self.repair_tables_after_removal(&pass.events, None, &entry, &what);
        self.metrics.erased.inc_by(pass.events.len() as u64);
        self.count_erases_pending();
        debug!(
            erased = pass.events.len(),
            removed = pass.removed,
            more = pass.more,
            "{what}: a pass"
        );
        // A table whose repair failed was dropped: rebuilt now, not at the next timer.
        self.rebuild_late_tables();
        if !pass.more {
            self.erase_completed(&entry, &what, pass.removed, &tables_note);
        }
    }

    /// The end of an erase removed pass by pass: logged and audited (`erase_completed`).
    fn erase_completed(
        &mut self,
        entry: &impl Fn(crate::audit::Decision, &str, String) -> crate::audit::Entry,
        what: &str,
        removed: u64,
        tables_note: &str,
    ) {
        info!(removed, "{what} finished");
        self.audit.record(entry(
            crate::audit::Decision::Apply,
            "erase_completed",
            format!(
                "{what} finished: {removed} stored events it covers removed in all{tables_note}"
            ),
        ));
    }

    /// `weft_erases_pending` after an erase or one of its passes (the status snapshot
    /// counts them too, at its own pace).
    fn count_erases_pending(&self) {
        self.metrics
            .erases_pending
            .set(self.node.store().erases_pending().len() as i64);
    }

    /// Between two inputs of a step, where no delivery is half applied: commits when the
    /// transaction reached `store::TX_WRITES_MAX` writes (the store never commits by itself
    /// inside an input). Acknowledgements and messages still wait for the step's commit.
    /// A failed commit stops the node, as the step's own would.
    fn safe_point(&mut self) {
        let result = tokio::task::block_in_place(|| self.node.store_records_mut().commit_if_over());
        if let Err(e) = result {
            self.fail_stop(
                "commit_failed",
                &format!("commit inside a step failed: {e}"),
            );
        }
    }

    /// Stops the node before this step commits (counted as `reason`): everything waiting
    /// for the commit is refused, nothing of the step is acknowledged or sent, and the
    /// process exits (74) so a supervisor restarts it from its store, whose open
    /// transaction is never committed. For a failure after which going on would lose
    /// something for good or let memory and rows disagree.
    fn fail_stop(&mut self, reason: &'static str, message: &str) -> ! {
        self.metrics.reject(reason);
        error!("{message}; stopping (nothing of this step was acknowledged or sent)");
        for w in std::mem::take(&mut self.after_commit) {
            let _ = w.reply.send(Err(PublishError::Store {
                message: message.to_string(),
                accepted: 0,
            }));
        }
        std::process::exit(74);
    }

    /// Audit entries about the erase-stream event `event`, under the epoch in force.
    /// An invalid erase request or retraction: counted and audited, nothing changes.
    fn erase_refused(
        &mut self,
        entry: &impl Fn(crate::audit::Decision, &str, String) -> crate::audit::Entry,
        message: String,
    ) {
        self.metrics.reject("erase_invalid");
        self.audit.record(entry(
            crate::audit::Decision::Deny,
            "erase_invalid",
            message,
        ));
    }

    fn erase_audit(
        &self,
        event: &Event,
    ) -> impl Fn(crate::audit::Decision, &str, String) -> crate::audit::Entry + use<> {
        self.erase_entry(event.stream().as_str(), Some(event.id().to_string()))
    }

    /// Audit entries about erasure on `stream` (about the event `id`, when one), under the
    /// epoch in force.
    fn erase_entry(
        &self,
        stream: &str,
        id: Option<String>,
    ) -> impl Fn(crate::audit::Decision, &str, String) -> crate::audit::Entry + use<> {
        let epoch = self.policy.as_ref().map_or(0, |(_, s)| s.epoch());
        let stream = stream.to_string();
        move |decision, reason: &str, message: String| {
            let e =
                crate::audit::Entry::now(decision, reason, epoch, message).stream(stream.clone());
            match &id {
                Some(id) => e.event(id.clone()),
                None => e,
            }
        }
    }

    /// Applies a retraction (`store/derived.rs`): `event`'s origin retracts its own
    /// derivatives `numbers` names; stored ones are erased, the others refused when they
    /// arrive. Audited like an erase.
    fn apply_retraction(&mut self, event: &Event, numbers: Result<Vec<u64>, String>) {
        use crate::audit::Decision::{Apply, Deny};
        let entry = self.erase_audit(event);
        let numbers = match numbers {
            Ok(n) => n,
            Err(why) => {
                self.erase_refused(
                    &entry,
                    format!("retraction from {} refused: {why}", event.origin()),
                );
                return;
            }
        };
        let origin = event.origin();
        let own = origin == self.me.node_key();
        let done = match self.node.store_mut().retract(
            &origin,
            &numbers,
            own,
            wall_ms().max(0) as u64,
        ) {
            Ok(d) => d,
            Err(e) => {
                // As for an erase (`apply_erase`): the store changed nothing, and a
                // committed step would never apply this retraction again.
                self.audit.record(entry(
                        Deny,
                        "erase_failed",
                        format!(
                            "retraction of {} derivatives of {origin} failed: {e}; stopping before the step commits",
                            numbers.len()
                        ),
                    ));
                self.fail_stop(
                    "erase_failed",
                    &format!("applying a retraction failed: {e}"),
                );
            }
        };
        self.erased_in_step.extend(done.erased.iter().map(|e| e.id));
        // A retracted derivative on a table stream leaves the table as an erase does.
        let tables_note = self.repair_tables_after_removal(
            &done.erased,
            None,
            &entry,
            &format!("retraction by {origin}"),
        );
        let wanted: BTreeSet<u64> = numbers.iter().copied().collect();
        let relayed = self.node.forget_relayed(|e: &Event| {
            e.origin() == origin
                && wanted.contains(&e.seq())
                && crate::egress::is_derived(e.content_type())
        });
        if own {
            // What is still pending goes out at the next tick.
            self.retract_due = Some(Instant::now());
        }
        self.metrics.erased.inc_by(done.erased.len() as u64);
        info!(
            erased = done.erased.len(),
            ahead = done.ahead,
            "derivatives of {origin} retracted"
        );
        self.audit.record(entry(
            Apply,
            "derivatives_retracted",
            format!(
                "retraction of {} derivatives by {origin} applied: {} stored removed, {} refused on arrival, {relayed} relayed copies forgotten, {} not derived events left{tables_note}",
                numbers.len(),
                done.erased.len(),
                done.ahead,
                done.not_derived
            ),
        ));
    }

    /// Brings the tables in line with the log after an erase or a retraction removed
    /// `removed` from the store (and, for a key rule, `also`: its key): in each stream
    /// that is a table, the keys the removed writes named are rebuilt from the writes that
    /// remain and their origins' applied numbers recomputed (`tables::repair`), at the cost
    /// of those keys' writes, not of the table's; a stream no longer a table loses its
    /// rows. The table is then the one a rebuild from the log gives, and the one of a
    /// replica that never held the removed writes.
    ///
    /// Not a stop when a repair fails: a damaged event in the log would fail it again
    /// after a restart. The events are removed all the same; the failure is counted,
    /// logged and audited (`entry`, naming `what` removed them), and the note returned
    /// (empty when all went well) goes at the end of the removal's own audit entry.
    fn repair_tables_after_removal(
        &mut self,
        removed: &[crate::store::ErasedEvent],
        also: Option<(&str, &[u8])>,
        entry: &impl Fn(crate::audit::Decision, &str, String) -> crate::audit::Entry,
        what: &str,
    ) -> String {
        let e = match self.repair_tables(removed, also) {
            Ok(()) => return String::new(),
            Err(e) => e,
        };
        self.metrics.reject("erase_failed");
        error!(error = %e, "{what}: removing its values from the tables failed");
        self.audit.record(entry(
            crate::audit::Decision::Deny,
            "erase_failed",
            format!("{what}: removing its values from the tables failed: {e}"),
        ));
        format!("; a table repair failed and the table was dropped until rebuilt ({e})")
    }

    /// [`Driver::repair_tables_after_removal`]'s repairs; the failures, if any, joined.
    fn repair_tables(
        &mut self,
        removed: &[crate::store::ErasedEvent],
        also: Option<(&str, &[u8])>,
    ) -> Result<(), String> {
        let mut touched: BTreeMap<String, crate::tables::Touched> = BTreeMap::new();
        for e in removed {
            if let Some(key) = &e.key {
                touched
                    .entry(e.stream.clone())
                    .or_default()
                    .add(key, e.origin, e.seq);
            }
        }
        if let Some((stream, key)) = also {
            touched.entry(stream.to_string()).or_default().add_key(key);
        }
        if touched.is_empty() {
            return Ok(());
        }
        self.table_build_due = true;
        let tables = self.tables.clone();
        let failed = write_tx(&mut self.node, |conn| {
            Ok(crate::tables::repair_streams(
                conn,
                &touched,
                |name| tables.as_ref().and_then(|t| t.strategy(name)),
                &mut self.tables_built,
                &mut self.table_stats,
            ))
        })?;
        if failed.is_empty() {
            return Ok(());
        }
        let mut why = Vec::with_capacity(failed.len());
        for (stream, e) in failed {
            // Dropped: rebuilt whole from the log at the end of this step.
            self.late_tables.insert(stream, None);
            why.push(e);
        }
        Err(why.join("; "))
    }

    /// Applies the bundle a policy carrier event holds (see `policy_push`); every outcome
    /// but a repeat of the bundle in force is audited.
    fn apply_policy(&mut self, event: &Event) {
        use crate::policy_push::{Outcome, apply, carried_bundle};
        let carrier = event.id();
        // Who put the carrier into the fabric: this node itself for a bundle pushed to it
        // (`weft policy push`), not a relay.
        let relayed_by = if event.origin() == self.node.me().node_key() {
            "this node (pushed to it)".to_string()
        } else {
            event.origin().to_string()
        };
        let audit = |decision, reason: &str, epoch: u64, message: String| {
            self.audit.record(
                crate::audit::Entry::now(decision, reason, epoch, message)
                    .stream(event.stream().as_str())
                    .event(carrier.to_string()),
            );
        };
        use crate::audit::Decision::{Apply, Deny};
        let Some((trust, state)) = &self.policy else {
            self.metrics.reject("policy_no_trust");
            audit(
                Deny,
                "policy_no_trust",
                0,
                format!(
                    "policy bundle relayed by {relayed_by} ignored: this node has no operator trust configured ([policy] operators)"
                ),
            );
            return;
        };
        let bytes = match carried_bundle(event) {
            Ok(b) => b,
            Err(why) => {
                self.metrics.reject("policy_carrier_invalid");
                audit(
                    Deny,
                    "policy_carrier_invalid",
                    state.epoch(),
                    format!("policy bundle relayed by {relayed_by} refused: {why}"),
                );
                return;
            }
        };
        let mut reconcile = false;
        match apply(trust, state, &mut self.node, bytes) {
            Outcome::Applied {
                epoch,
                previous,
                claim_revoked,
            } => {
                self.metrics.policy_in_force(state.policy().as_deref());
                self.metrics.policy_applied.inc();
                reconcile = true;
                let rules = crate::store::RetentionRules::new(state.policy());
                self.node.store_mut().set_retention(rules);
                self.retention_due = Instant::now();
                audit(
                    Apply,
                    "policy_applied",
                    epoch,
                    format!(
                        "policy bundle epoch {epoch} (was {previous}) from the fabric applied (relayed by {relayed_by})"
                    ),
                );
                if let Some(why) = claim_revoked {
                    self.metrics.reject("jurisdiction_claim");
                    let message = format!(
                        "policy epoch {epoch} no longer grants this node's jurisdiction claim {} in {} ({why}): it now receives only unrestricted events of streams without a replication regions scope, and a restart with this bundle is refused until a bundle grants the claim (weft check-config says so)",
                        self.me.jurisdiction, self.me.region
                    );
                    warn!("{message}");
                    audit(Deny, "jurisdiction_claim", epoch, message);
                }
            }
            Outcome::AlreadyInForce { epoch } => {
                debug!(epoch, event = %carrier, "policy bundle already in force");
            }
            Outcome::Refused(e) => {
                self.metrics.reject(e.code());
                audit(
                    Deny,
                    e.code(),
                    state.epoch(),
                    format!("policy bundle from the fabric (relayed by {relayed_by}) refused: {e}"),
                );
            }
            Outcome::NotKept(e) => {
                audit(
                    Deny,
                    "policy_not_kept",
                    state.epoch(),
                    format!(
                        "policy bundle from the fabric (relayed by {relayed_by}) verified but not kept in the store: {e}; stopping before the step commits"
                    ),
                );
                self.fail_stop(
                    "policy_not_kept",
                    &format!("keeping a policy bundle in the store failed: {e}"),
                );
            }
        }
        if reconcile {
            // The new epoch may declare, re-declare or drop tables.
            self.reconcile_tables();
        }
    }

    fn commit(&mut self) {
        // An applied HLC ahead of this node's clock goes into the same commit: a restart
        // resumes past it, so a write made after restarting still stamps after it.
        if let Some(ahead) = self.clock.observed_ahead().filter(|a| *a > self.hlc_kept) {
            match self
                .node
                .store_records_mut()
                .meta_set(crate::clock::OBSERVED_META_KEY, &ahead.to_be_bytes())
            {
                Ok(()) => self.hlc_kept = ahead,
                Err(e) => warn!(error = %e, "keeping the applied HLC ahead of this clock failed"),
            }
        }
        // The core rejoined under a later generation (the mesh had declared this node down,
        // a partition healed): kept with the store, so the next start takes the one after
        // it and its record supersedes the one the mesh holds.
        let generation = self.node.me().generation;
        if generation > self.me.generation {
            info!(
                generation,
                "the mesh had declared this node down (cut off); it rejoined under a new generation"
            );
            match self.node.store_records_mut().set_generation(generation) {
                Ok(()) => self.me.generation = generation,
                Err(e) => warn!(error = %e, generation, "recording the generation failed"),
            }
        }
        // Released once this commit is done: the idempotency records below are then on
        // disk, where a request waiting on one of these claims looks them up.
        let claims = std::mem::take(&mut self.claims);
        for (p, s, i, id) in std::mem::take(&mut self.dedup) {
            if let Err(e) = self.node.store_records_mut().ce_dedup_put(&p, &s, &i, &id) {
                debug!(error = %e, "recording a CloudEvents id failed");
            }
        }
        let started = Instant::now();
        // The fsync blocks: let the runtime move its other tasks off this worker.
        let result = tokio::task::block_in_place(|| self.node.store_records_mut().commit());
        drop(claims);
        let durable = match result {
            Ok(n) => {
                if n > 0 {
                    self.metrics
                        .commit_seconds
                        .observe(started.elapsed().as_secs_f64());
                }
                true
            }
            Err(e) => {
                // Fail-stop: the store rolled back but the core's memory did not; going on
                // would let the two disagree.
                self.fail_stop("commit_failed", &format!("group commit failed: {e}"));
            }
        };
        // Before any publish is answered: a client that sends its next publish as soon as
        // this commit's answer arrives must find the store's fullness already set, or its
        // publish is signed (a number spent) and then refused by the store.
        self.store_full.store(
            self.node.store().is_full(),
            std::sync::atomic::Ordering::Relaxed,
        );
        for (to, addr, out) in std::mem::take(&mut self.outbox) {
            self.transport.send(to, addr, out);
        }
        // Pushes' acknowledgement timeouts count from here, not from before the fsync.
        let now = self.now();
        self.node.transmits_released(now);
        for (tx, bytes) in std::mem::take(&mut self.outbox_replies) {
            let _ = tx.send(bytes);
        }
        for w in std::mem::take(&mut self.after_commit) {
            match (w.ack, durable) {
                (Ack::Regions(n), true) if n > 1 => self.confirming.push(w),
                _ => self.answer(w, durable),
            }
        }
        for reply in std::mem::take(&mut self.after_commit_replies) {
            reply(durable);
        }
        if durable {
            for (tx, ids) in std::mem::take(&mut self.confirm_replies) {
                let held: Vec<[u8; 32]> = ids
                    .into_iter()
                    .filter(|id| self.node.store().contains(id))
                    .map(|id| id.0)
                    .collect();
                let _ = tx.send(held);
            }
            self.committed.send_if_modified(|p| {
                let changed = *p != self.last_pos;
                *p = self.last_pos;
                changed
            });
        }
        self.settle_confirmations();
        if self.last_snapshot.elapsed() >= SNAPSHOT_INTERVAL_MIN {
            self.publish_snapshot();
        }
    }

    fn publish_snapshot(&mut self) {
        self.last_snapshot = Instant::now();
        let mut peers: Vec<PeerView> = Vec::new();
        let view = |m: &MemberInfo, state: &'static str, rtt: Option<Micros>| PeerView {
            key: hex::encode(m.key),
            region: m.region.to_string(),
            cloud: m.cloud.to_string(),
            jurisdiction: m.jurisdiction.to_string(),
            addr: m.addr.to_string(),
            state,
            rtt_ms: rtt.map(|r| r as f64 / 1000.0),
            policy_epoch: m.policy_epoch,
            generation: m.generation,
            skips_taken: self.node.skips_taken_from(&m.node_key()),
            skips_contradicted: self.node.skips_contradicted_by(&m.node_key()),
        };
        for m in self.members.values() {
            peers.push(view(m, "up", self.node.rtt_us(&m.node_key())));
        }
        for m in self.down.values() {
            peers.push(view(m, "down", None));
        }
        let nodes = self.node_views();
        let routes = self.route_views();
        let s = self.node.stats();
        let stats = BTreeMap::from([
            ("events_new", s.events_new),
            ("events_duplicate", s.events_duplicate),
            ("equivocations", s.equivocations),
            ("events_refused", s.events_refused),
            ("pushes_sent", s.pushes_sent),
            ("ihaves_sent", s.ihaves_sent),
            ("grafts_sent", s.grafts_sent),
            ("sync_events_sent", s.sync_events_sent),
            ("sync_events_new", s.sync_events_new),
            ("sync_back_rounds", s.sync_back_rounds),
            ("sync_requests_sent", s.sync_requests_sent),
            ("sync_events_held_back", s.sync_events_held_back),
            ("sync_summaries_sent", s.sync_summaries_sent),
            ("sync_unsettled_out", s.sync_unsettled_out),
            ("sync_unsettled_in", s.sync_unsettled_in),
            ("sync_partners_passed_over", s.sync_partners_passed_over),
            ("down_announcements", s.down_announcements),
            ("probes_sent", s.probes_sent),
            ("probes_answered", s.probes_answered),
            ("link_records_new", s.link_records_new),
            ("link_records_refused", s.link_records_refused),
            ("link_handoffs_sent", s.link_handoffs_sent),
            ("link_pulls_sent", s.link_pulls_sent),
            ("link_pull_records_sent", s.link_pull_records_sent),
            ("link_entries_over_limit", s.link_entries_over_limit),
            ("catch_up_announces", s.catch_up_announces),
            ("pushes_acked", s.pushes_acked),
            ("failovers", s.failovers),
            ("links_recovered", s.links_recovered),
            ("rtt_shifts_up", s.rtt_shifts_up),
            ("rtt_shifts_down", s.rtt_shifts_down),
            ("relayed", s.relayed),
            ("hops_refused", s.hops_refused),
            ("relays_sent_back", s.relays_sent_back),
            ("reroute_unreachable", s.reroute_unreachable),
            ("skips_in", s.skips_in),
            ("skips_in_relayed", s.skips_in_relayed),
            ("skips_confirmed", s.skips_confirmed),
            ("skips_contradicted", s.skips_contradicted),
            ("skips_unconfirmed", s.skips_unconfirmed),
            ("skips_deferred", s.skips_deferred),
            ("skips_dropped_at_restart", s.skips_dropped_at_restart),
            (
                "skips_pending",
                self.node.skips_unconfirmed_pending() as u64,
            ),
            ("delivered_late", s.delivered_late),
            ("transit_forwarded", s.transit_forwarded),
            ("residency_refused", s.residency_refused),
            ("events_erased", s.events_erased),
            ("erased_skips_sent", s.erased_skips_sent),
            ("own_voided", s.own_voided),
            ("lost_out", s.lost_out),
            ("lost_in", s.lost_in),
            ("lost_skipped", s.lost_skipped),
            ("lost_recovered", s.lost_recovered),
            ("lost_closed_at_once", s.lost_closed_at_once),
            ("lost_open", self.node.lost_open()),
            ("lost_deferred", s.lost_deferred),
            ("delivery_store_errors", s.delivery_store_errors),
            ("lost_pending", self.node.lost_pending()),
            ("own_asks", s.own_asks),
            ("own_high_claims", s.own_high_claims),
        ]);
        self.metrics.failovers.set(s.failovers as i64);
        self.metrics.relayed.set(s.relayed as i64);
        let mut stats = stats;
        let st = self.node.store().stats();
        stats.insert("store_commits", st.commits);
        stats.insert("store_commit_failures", st.commit_failures);
        stats.insert("store_corrupt_rows", st.corrupt_rows);
        stats.insert("store_query_errors", st.query_errors);
        stats.insert("store_read_ahead", st.read_ahead);
        stats.insert("store_read_ahead_dropped", st.read_ahead_dropped);
        stats.insert("store_read_ahead_hits", st.read_ahead_hits);
        stats.insert("store_commit_us_last", st.commit_us_last);
        stats.insert("store_erased", st.erased);
        stats.insert("store_erased_refused", st.erased_refused);
        stats.insert("store_expired", st.expired);
        stats.insert(
            "store_expired_ranges",
            self.node.store().expired_ranges() as u64,
        );
        stats.insert("store_expired_ranges_dropped", st.expired_ranges_dropped);
        stats.insert(
            "store_erases_pending",
            self.node.store().erases_pending().len() as u64,
        );
        match crate::tables::building_counts(self.node.store().read_conn()) {
            Ok((tables, keys)) => {
                stats.insert("tables_building", tables);
                stats.insert("table_keys_building", keys);
                self.metrics.tables_building.set(tables as i64);
                self.metrics.table_keys_building.set(keys as i64);
            }
            Err(e) => debug!(error = %e, "counting the tables being built failed"),
        }
        let stored = self.node.store().len();
        self.metrics.stored_events.set(stored as i64);
        self.count_erases_pending();
        self.metrics.members.set(self.members.len() as i64);
        self.meshed |= !self.members.is_empty();
        self.snapshot.send_replace(Snapshot {
            members_up: self.members.len(),
            meshed: self.meshed,
            peers,
            nodes,
            routes,
            stored_events: stored,
            stats,
        });
    }
}

impl Driver {
    /// Every node this one holds a link-state record of.
    fn node_views(&self) -> Vec<NodeView> {
        let now = self.now();
        let me = self.node.me().node_key();
        self.node
            .link_records()
            .map(|(r, at)| {
                let key = OriginKey(r.node);
                let info = if key == me {
                    Some(self.node.me())
                } else {
                    self.members.get(&key).or_else(|| self.down.get(&key))
                };
                NodeView {
                    key: hex::encode(r.node),
                    name: r.status.name.clone(),
                    region: info.map(|m| m.region.to_string()).unwrap_or_default(),
                    cloud: info.map(|m| m.cloud.to_string()).unwrap_or_default(),
                    jurisdiction: info.map(|m| m.jurisdiction.to_string()).unwrap_or_default(),
                    http: r.status.http.clone(),
                    alive: key == me || self.members.contains_key(&key),
                    age_ms: now.saturating_sub(at) / 1000,
                    published: r.status.published,
                    stored: r.status.stored,
                    missing: r.status.missing,
                    policy_epoch: r.status.policy_epoch,
                    links: r
                        .links
                        .iter()
                        .map(|(k, rtt)| LinkView {
                            to: hex::encode(k),
                            rtt_ms: f64::from(*rtt) / 1000.0,
                        })
                        .collect(),
                }
            })
            .collect()
    }

    /// The current path to every other region.
    fn route_views(&mut self) -> Vec<RouteView> {
        let ms = |us: u64| us as f64 / 1000.0;
        self.node
            .region_routes()
            .into_iter()
            .map(|r| RouteView {
                kind: match r.path.len() {
                    0 => "unreachable",
                    2 => "direct",
                    _ => "relay",
                },
                latency_ms: (!r.path.is_empty()).then(|| ms(r.latency_us)),
                direct_ms: r.direct_us.map(ms),
                direct_failed: r.direct_failed,
                first_hop: match r.first_hop {
                    weft_fabric::mesh::route::EdgeSource::Measured => "measured",
                    weft_fabric::mesh::route::EdgeSource::Reported => "reported",
                    weft_fabric::mesh::route::EdgeSource::Estimated => "estimated",
                },
                alternatives: r
                    .alternatives
                    .into_iter()
                    .map(|(path, l)| AltView {
                        path,
                        latency_ms: ms(l),
                    })
                    .collect(),
                region: r.region,
                path: r.path,
            })
            .collect()
    }
}

/// The next read-ahead done, if the driver has readers (else never).
async fn next_read(
    done: &mut Option<mpsc::UnboundedReceiver<crate::read_ahead::Done>>,
) -> Option<crate::read_ahead::Done> {
    match done {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The driver's up members as [`confirm.rs`](crate::confirm) sees them.
struct DriverRoster<'a> {
    members: &'a BTreeMap<OriginKey, MemberInfo>,
    node: &'a Node<SqliteStore>,
}

impl<'a> DriverRoster<'a> {
    fn of(members: &'a BTreeMap<OriginKey, MemberInfo>, node: &'a Node<SqliteStore>) -> Self {
        DriverRoster { members, node }
    }
}

impl Roster for DriverRoster<'_> {
    fn members(&self) -> impl Iterator<Item = (OriginKey, &str)> {
        self.members.iter().map(|(k, m)| (*k, m.region.as_str()))
    }

    fn rtt_us(&self, member: &OriginKey) -> Option<Micros> {
        self.node.rtt_us(member)
    }

    fn may_hold(&self, event: &Event, member: &OriginKey) -> bool {
        self.node.replication_allowed(event, member)
    }
}

/// The confirmable copies of `events` for one peer: pushes cut at the core's
/// [`weft_fabric::mesh::BATCH_BYTES_MAX`] as its own are, so each fits a message the peer
/// reads whole (one push of a large `ack=regions:N` batch went over the read limit, and its
/// confirmation never came).
fn confirm_pushes(events: &[Arc<Event>]) -> Vec<Message> {
    weft_fabric::mesh::batches_of(events, usize::MAX)
        .into_iter()
        .map(|batch| Message::Push {
            events: batch.to_vec(),
            relay: Vec::new(),
            ack: 0,
            reroutes: 0,
        })
        .collect()
}

/// How far ahead of retention's clock the wall clock may be before a warning, ms.
const RETENTION_JUMP_WARN_MS: u64 = 60_000;

/// The time a retention pass expires by, from the last one (`prev`: its time and when it
/// ran), the wall clock `wall` and the monotonic `now`; and how far the wall clock is ahead
/// of it. It never goes back, and advances at most twice as fast as real time (plus a
/// second): a wall clock stepped far ahead (a bad NTP answer, an operator's typo) would
/// otherwise expire every event of the streams under an age rule in one pass, for good.
/// A real jump is caught up at twice real time.
fn retention_clock(prev: Option<(u64, Instant)>, wall: u64, now: Instant) -> (u64, u64) {
    let Some((last, at)) = prev else {
        return (wall, 0);
    };
    let elapsed = u64::try_from(now.saturating_duration_since(at).as_millis()).unwrap_or(u64::MAX);
    let cap = last
        .saturating_add(elapsed.saturating_mul(2))
        .saturating_add(1_000);
    let clock = wall.clamp(last, cap.max(last));
    (clock, wall.saturating_sub(clock))
}

/// What the core knows of this node's own sequence numbers (`Node::own_numbers`), shared
/// by the driver with the producer: whether the numbering is known (after a start, the
/// members asked for this node's own events answered), and the
/// highest of its numbers known to be taken. The producer numbers past it, so a node
/// started over an emptied data directory, or an older backup, under a key whose events
/// the mesh holds does not reuse their numbers. When the members asked do not answer in
/// time, the producer numbers past a wall-clock floor instead, once
/// ([`OwnNumbers::floor_once`]).
#[derive(Debug, Default)]
pub(crate) struct OwnNumbers {
    known: std::sync::atomic::AtomicBool,
    asked: std::sync::atomic::AtomicBool,
    high: std::sync::atomic::AtomicU64,
    /// Whether the producer numbers past the wall-clock floor if its wait ends without the
    /// numbering known (`Node::own_floor_wanted(true)`).
    floor_if_waited_out: std::sync::atomic::AtomicBool,
    /// Whether it does so in any case (`Node::own_floor_wanted(false)`: a member's claim
    /// was more than it can be believed on).
    floor_wanted: std::sync::atomic::AtomicBool,
    /// The floor taken ([`OwnNumbers::floor_once`]).
    floor: std::sync::OnceLock<u64>,
}

impl OwnNumbers {
    /// Takes in what the core knows now (`Node::own_numbers`, `Node::own_floor_wanted`);
    /// `known` last, so that a reader that sees it known sees the rest as of then.
    fn set_from(&self, node: &Node<SqliteStore>) {
        use std::sync::atomic::Ordering::Release;
        let (known, asked, high) = node.own_numbers();
        self.high.fetch_max(high, Release);
        self.asked.store(asked, Release);
        self.floor_if_waited_out
            .store(node.own_floor_wanted(true), Release);
        self.floor_wanted
            .store(node.own_floor_wanted(false), Release);
        self.known.store(known, Release);
    }

    /// Whether the producer numbers past the wall-clock floor: `waited_out` (its wait for
    /// the numbering ended without it known) over a store that held none of its own events
    /// at the start, or a member's claim more than it can be believed on.
    pub(crate) fn floor_wanted(&self, waited_out: bool) -> bool {
        use std::sync::atomic::Ordering::Acquire;
        self.floor_wanted.load(Acquire) || (waited_out && self.floor_if_waited_out.load(Acquire))
    }

    /// Whether a member was asked for this node's own events (and has not all answered).
    pub(crate) fn asked(&self) -> bool {
        self.asked.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Whether the numbering is known.
    pub(crate) fn known(&self) -> bool {
        self.known.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The highest of this node's own numbers known to be taken.
    pub(crate) fn high(&self) -> u64 {
        self.high.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The wall-clock floor this node numbers past since its wait for its numbering ended
    /// without it known: `take` (which raises the producer's numbering) runs once, for the
    /// first publish after the wait; every later caller gets the same floor and `false`.
    pub(crate) fn floor_once(&self, take: impl FnOnce() -> u64) -> (u64, bool) {
        let mut taken = false;
        let floor = *self.floor.get_or_init(|| {
            taken = true;
            take()
        });
        (floor, taken)
    }

    /// The floor taken, if the wait ended without the numbering known
    /// ([`OwnNumbers::floor_once`]).
    pub(crate) fn floor(&self) -> Option<u64> {
        self.floor.get().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_follows_a_jumping_wall_clock_at_twice_real_time() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        // First pass: the wall clock as it is.
        assert_eq!(retention_clock(None, 1_000_000, t0), (1_000_000, 0));
        // Normal progress: the wall clock.
        assert_eq!(
            retention_clock(Some((1_000_000, t0)), 1_005_000, at(5)),
            (1_005_000, 0)
        );
        // A jump of a day ahead: 5 s later retention has moved 11 s, the rest is ahead.
        let day = 86_400_000;
        let (clock, ahead) = retention_clock(Some((1_000_000, t0)), 1_000_000 + day, at(5));
        assert_eq!(clock, 1_011_000);
        assert_eq!(ahead, day - 11_000);
        // Backwards: retention's clock stays.
        assert_eq!(
            retention_clock(Some((1_000_000, t0)), 500_000, at(5)),
            (1_000_000, 0)
        );
    }

    /// Twenty events of the largest payload (about a megabyte) go as several pushes, each within the message
    /// limit a peer reads, all events once and in order.
    #[test]
    fn confirmable_copies_fit_the_message_limit() {
        let events: Vec<Arc<Event>> = (1..=20)
            .map(|seq| {
                crate::test_support::signed(
                    "orders.big",
                    seq,
                    vec![7; weft_fabric::limits::PAYLOAD_LEN_MAX],
                )
            })
            .collect();
        let pushes = confirm_pushes(&events);
        assert!(pushes.len() >= 3, "{} pushes", pushes.len());
        let mut seqs = Vec::new();
        for msg in &pushes {
            assert!(msg.wire_len() <= weft_fabric::mesh::wire::MESSAGE_LEN_MAX);
            let Message::Push { events, .. } = msg else {
                panic!("not a push");
            };
            seqs.extend(events.iter().map(|e| e.seq()));
        }
        assert_eq!(seqs, (1..=20).collect::<Vec<_>>());
    }
}
