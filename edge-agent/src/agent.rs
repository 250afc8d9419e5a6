//! The running agent: inputs feed the ingest task (local rules, then the outbox), the
//! uplink keeps a QUIC connection to every candidate node and picks the lowest-RTT healthy
//! one, the drain sends the outbox in order in batches over it, and the downlink hands
//! commands to the device.
//!
//! Limits: [`INPUT_QUEUE_LEN_MAX`] input messages wait for the ingest task (inputs wait
//! when it is full: backpressure to stdin, files and HTTP); [`INGEST_GROUP_MAX`] input
//! messages share one outbox transaction; the node's profile bounds batches
//! (`batch_len_max`) and batches in flight (`batches_inflight_max`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Serialize;
use serde_json::{Map, Value, json};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinSet;
use tracing::{debug, error, info, warn};
use weft_fabric::edge::{self, BatchAnswer, Hello, LocalRule, Profile, Subscribe};
use weft_fabric::{Signer, StreamName};

use crate::config::Resolved;
use crate::outbox::{Counters, NewEvent, Outbox, SummaryRoom};
use crate::rules::{Due, Rules, Verdict};

/// Input messages waiting for the ingest task.
pub(crate) const INPUT_QUEUE_LEN_MAX: usize = 1024;
/// Input messages folded into one outbox transaction (one fsync).
pub(crate) const INGEST_GROUP_MAX: usize = 256;
/// Largest answer frame from a node, bytes.
const ANSWER_FRAME_LEN_MAX: usize = 1 << 20;
/// Longest wait for a batch's answer before the connection is considered stuck.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// Connection attempt timeout (handshake and profile).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Batches in a row a node may fail (answered `failed`, or unanswered on a live
/// connection) before the agent leaves it out for [`NODE_COOLDOWN`].
const BATCH_FAILURES_MAX: u32 = 3;
/// How long a node that failed [`BATCH_FAILURES_MAX`] batches in a row is left out.
const NODE_COOLDOWN: Duration = Duration::from_secs(30);
/// Most sequencing passes one fill of the drain window makes (each takes up to a batch of
/// events, sequenced or moved to the dead letters).
const SEQUENCE_PASSES_MAX: usize = 64;
/// First back-off between reconnection attempts to one candidate (doubling from here).
const BACKOFF_MIN: Duration = Duration::from_millis(250);
/// Longest back-off between reconnection attempts to one candidate that failed or lost
/// the connection for other reasons than the node's word ([`next_wait`]).
const BACKOFF_MAX: Duration = Duration::from_secs(4);
/// Back-off after the node refused this device (`close::NOT_ENROLLED`, `close::PROTOCOL`):
/// from this, doubling up to [`REFUSED_WAIT_MAX`]. The node audits every refusal, and only
/// an operator's change (enrolling the key, a new agent) helps.
const REFUSED_WAIT_MIN: Duration = Duration::from_secs(5);
/// See [`REFUSED_WAIT_MIN`].
const REFUSED_WAIT_MAX: Duration = Duration::from_secs(60);
/// Back-off after the node had no room (`close::TOO_MANY_AGENTS`) or another connection
/// of this device key replaced this one (`close::REPLACED`: a second agent with the same
/// key; without a wait the two would take the node from each other every 250 ms): from
/// this, doubling up to [`BUSY_WAIT_MAX`]. Other nodes serve meanwhile.
const BUSY_WAIT_MIN: Duration = Duration::from_secs(2);
/// See [`BUSY_WAIT_MIN`].
const BUSY_WAIT_MAX: Duration = Duration::from_secs(30);
/// A connection that stayed up this long resets the back-off: the next attempt after it
/// ends starts from [`BACKOFF_MIN`] (or the floor its close code sets).
const STABLE_AFTER: Duration = Duration::from_secs(10);
/// A healthy node replaces the current one only if its RTT (plus bias) is lower by this
/// fraction and [`SWITCH_MARGIN_MS`]: no flapping between nodes of similar RTT.
const SWITCH_MARGIN_PCT: f64 = 20.0;
/// See [`SWITCH_MARGIN_PCT`].
const SWITCH_MARGIN_MS: f64 = 1.0;
/// Shortest and longest pause after a node answered `busy` (its `retry_ms`, bounded
/// here): the node's rate limiter says to the millisecond how long until its bucket holds
/// the batch again (a few ms to a second), a daily quota up to the node's own ceiling of a
/// minute.
const BUSY_PAUSE_MIN: Duration = Duration::from_millis(10);
/// See [`BUSY_PAUSE_MIN`].
const BUSY_PAUSE_MAX: Duration = Duration::from_secs(60);
/// A failed attempt at a node is logged when its error differs from the last one logged
/// for that node, or this long after it: one line per cause, not one per attempt (every
/// 4 s at most), and none was logged at all before (only `status` showed the cause).
const FAILURE_LOG_EVERY: Duration = Duration::from_secs(30);
/// How long a downlink command program may run.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// Content type of events the agent makes: structured CloudEvents.
pub(crate) const CE_JSON: &str = "application/cloudevents+json";

/// One event from an input.
#[derive(Debug, Clone)]
pub(crate) struct InEvent {
    pub(crate) stream: StreamName,
    pub(crate) priority: u8,
    /// The structured CloudEvent stored as the payload.
    pub(crate) ce: Map<String, Value>,
}

/// A message from an input: events accepted together (one transaction), meta values
/// written with them (a file's offset), and who waits for the outcome.
#[derive(Debug)]
pub(crate) struct Input {
    pub(crate) events: Vec<InEvent>,
    pub(crate) meta: Vec<(String, Vec<u8>)>,
    /// Bad lines or events the input refused before (counted with this message).
    pub(crate) bad: u64,
    /// Requests the input refused because a stream is not among the device's enrolled
    /// streams (counted with this message as `not_enrolled`).
    pub(crate) not_enrolled: u64,
    /// All or none (standard input, a followed file: their lines have no one to be
    /// refused to): in `refuse` mode, when the outbox lacks room for every event the rules
    /// keep, none is taken, nothing of the message is applied (rules, `meta`, `bad`), and
    /// the outcome says `waiting`; the input offers the same lines again later instead of
    /// reading past them.
    pub(crate) whole: bool,
    /// A `whole` message its input offers again when it waits (standard input, a followed
    /// file: counted as `input_waits`): taken as its longest prefix that fits. Otherwise
    /// all or none, its sender refused when none (the HTTP input's client: counted as
    /// `refused_full`).
    pub(crate) retries: bool,
    /// For a message taken in part: the value of `meta`'s first key after each of its
    /// events (a followed file's offset past that event's line).
    pub(crate) progress: Vec<Vec<u8>>,
    pub(crate) reply: Option<oneshot::Sender<IngestOutcome>>,
}

/// What happened to an input message's events.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct IngestOutcome {
    pub(crate) accepted: usize,
    pub(crate) refused_full: usize,
    pub(crate) dropped_by_rules: usize,
    pub(crate) error: Option<String>,
    /// A `whole` message not taken, or (one its input offers again) taken only in part:
    /// the outbox had no room for all of it yet.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub(crate) waiting: bool,
    /// Of a message its input offers again, how many of its events, from the first, were
    /// handled (stored, or taken by a rule); the input offers the others again.
    #[serde(skip)]
    pub(crate) taken: usize,
    /// The positions, in the message, of the events the outbox refused (a partly taken
    /// message: `drop-oldest` found nothing to drop, or a message larger than the outbox).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) refused_at: Vec<usize>,
    /// What the outbox held against its limits right after this ingest
    /// ([`crate::outbox::Outbox::fullness`]): what a client refused for room is told.
    #[serde(skip)]
    pub(crate) full: Option<String>,
}

/// One candidate node as the status shows it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct CandidateView {
    pub(crate) addr: String,
    pub(crate) key: String,
    pub(crate) source: &'static str,
    pub(crate) state: &'static str,
    pub(crate) node: Option<String>,
    pub(crate) rtt_ms: Option<f64>,
    pub(crate) rtt_bias_ms: f64,
    pub(crate) error: Option<String>,
}

/// `weft-agent status` (`GET /v1/status` on the local HTTP input).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct StatusView {
    pub(crate) name: String,
    pub(crate) key: String,
    pub(crate) connected: Option<CandidateView>,
    pub(crate) candidates: Vec<CandidateView>,
    pub(crate) outbox_depth: u64,
    pub(crate) outbox_bytes: u64,
    pub(crate) next_seq: u64,
    pub(crate) policy_epoch: Option<u64>,
    pub(crate) counters: Counters,
    pub(crate) batches_inflight: usize,
    /// The dead letters: how many are held, the newest few with their reasons.
    pub(crate) dead_letters: crate::outbox::DeadLetters,
}

struct Candidate {
    addr: SocketAddr,
    key: [u8; 32],
    bias_ms: f64,
    source: &'static str,
    conn: Option<quinn::Connection>,
    profile: Option<Profile>,
    error: Option<String>,
    /// Batches in a row this node answered `failed` (or left unanswered on a live
    /// connection); at [`BATCH_FAILURES_MAX`] it is left out until `cooldown_until`.
    failures: u32,
    cooldown_until: Option<Instant>,
}

impl Candidate {
    fn score(&self) -> Option<f64> {
        if self.cooldown_until.is_some_and(|t| Instant::now() < t) {
            return None;
        }
        let c = self.conn.as_ref()?;
        if c.close_reason().is_some() || self.profile.is_none() {
            return None;
        }
        Some(c.rtt().as_secs_f64() * 1000.0 + self.bias_ms)
    }

    fn view(&self) -> CandidateView {
        let up = self.score().is_some();
        CandidateView {
            addr: self.addr.to_string(),
            key: hex::encode(self.key),
            source: self.source,
            state: if up { "up" } else { "down" },
            node: self.profile.as_ref().filter(|_| up).map(|p| p.node.clone()),
            rtt_ms: self
                .conn
                .as_ref()
                .filter(|_| up)
                .map(|c| c.rtt().as_secs_f64() * 1000.0),
            rtt_bias_ms: self.bias_ms,
            error: if up { None } else { self.error.clone() },
        }
    }
}

/// State shared by the agent's tasks.
pub(crate) struct Shared {
    pub(crate) name: String,
    pub(crate) signer: Signer,
    pub(crate) outbox: Mutex<Outbox>,
    /// The profile of the node in use (or the last one stored).
    pub(crate) profile: RwLock<Option<Profile>>,
    /// Something entered the outbox.
    pub(crate) wake: Notify,
    candidates: Mutex<Vec<Candidate>>,
    /// A candidate went up or down, or sent a new profile.
    changed: Notify,
    active: Mutex<Option<usize>>,
    inflight: std::sync::atomic::AtomicUsize,
    /// The streams the config's inputs write to, with the field naming each: checked
    /// against every new profile's enrolled streams (events on another stream would all
    /// go to the dead letters).
    input_streams: Vec<(String, String)>,
    identity: crate::tls::Identity,
    endpoint: quinn::Endpoint,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Shared")
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub(crate) fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Runs `f` on the outbox off the async thread.
pub(crate) async fn with_outbox<T: Send + 'static>(
    shared: &Arc<Shared>,
    f: impl FnOnce(&mut Outbox) -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    let s = shared.clone();
    tokio::task::spawn_blocking(move || f(&mut lock(&s.outbox)))
        .await
        .context("outbox task")?
}

impl Shared {
    /// Opens the outbox and the QUIC endpoint.
    pub(crate) fn new(config: &Resolved, seed: &[u8; 32]) -> anyhow::Result<Arc<Self>> {
        let outbox = Outbox::open(&config.data_dir, config.raw.outbox.clone())?;
        let profile = outbox
            .meta_get("profile")?
            .and_then(|v| serde_json::from_slice(&v).ok());
        let endpoint = quinn::Endpoint::client((std::net::Ipv4Addr::UNSPECIFIED, 0).into())
            .context("binding the agent's UDP socket")?;
        let candidates = config
            .nodes
            .iter()
            .map(|(addr, key, bias)| Candidate {
                addr: *addr,
                key: *key,
                bias_ms: *bias,
                source: "config",
                conn: None,
                profile: None,
                error: None,
                failures: 0,
                cooldown_until: None,
            })
            .collect();
        Ok(Arc::new(Self {
            name: config.raw.name.clone(),
            signer: Signer::from_secret(seed),
            outbox: Mutex::new(outbox),
            profile: RwLock::new(profile),
            wake: Notify::new(),
            candidates: Mutex::new(candidates),
            changed: Notify::new(),
            active: Mutex::new(None),
            inflight: std::sync::atomic::AtomicUsize::new(0),
            input_streams: input_streams(&config.raw.inputs),
            identity: crate::tls::Identity::new(seed)?,
            endpoint,
        }))
    }

    /// The status view.
    /// What `weft-agent status` shows. The outbox's figures are read off the runtime's
    /// thread (`with_outbox`): the drain can hold the outbox for a while (sequencing
    /// passes, each with an fsync), and the agent's other tasks must not wait meanwhile.
    pub(crate) async fn status(self: &Arc<Self>) -> anyhow::Result<StatusView> {
        let (depth, bytes, next_seq, counters, dead_letters) = with_outbox(self, |o| {
            Ok((
                o.depth(),
                o.bytes(),
                o.next_seq(),
                o.counters.clone(),
                o.dead_letters(crate::outbox::DEAD_LETTERS_SHOWN)?,
            ))
        })
        .await?;
        let cands = lock(&self.candidates);
        let active = *lock(&self.active);
        Ok(StatusView {
            name: self.name.clone(),
            key: self.signer.origin().to_string(),
            connected: active.and_then(|i| cands.get(i)).map(Candidate::view),
            candidates: cands.iter().map(Candidate::view).collect(),
            outbox_depth: depth,
            outbox_bytes: bytes,
            next_seq,
            policy_epoch: self
                .profile
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .as_ref()
                .map(|p| p.epoch),
            counters,
            batches_inflight: self.inflight.load(std::sync::atomic::Ordering::Relaxed),
            dead_letters,
        })
    }

    /// Whether a node is in use now, over a live connection: the profile in use is then
    /// that node's current one (offline, it is the last one stored, possibly older than
    /// the policy).
    pub(crate) fn connected(&self) -> bool {
        let Some(idx) = *lock(&self.active) else {
            return false;
        };
        lock(&self.candidates)
            .get(idx)
            .and_then(|c| c.conn.as_ref())
            .is_some_and(|c| c.close_reason().is_none())
    }

    /// Adds a node found on the LAN (mDNS) unless known; starts its connection task.
    #[cfg_attr(not(feature = "mdns"), allow(dead_code))]
    pub(crate) fn discovered(self: &Arc<Self>, addr: SocketAddr, key: [u8; 32]) {
        let idx = {
            let mut c = lock(&self.candidates);
            if c.iter().any(|c| c.key == key && c.addr == addr)
                || c.len() >= crate::config::CANDIDATES_MAX
            {
                return;
            }
            c.push(Candidate {
                addr,
                key,
                bias_ms: 0.0,
                source: "mdns",
                conn: None,
                profile: None,
                error: None,
                failures: 0,
                cooldown_until: None,
            });
            c.len() - 1
        };
        info!(%addr, node = %hex::encode(key), "node found by mDNS");
        tokio::spawn(candidate_task(self.clone(), idx));
    }
}

/// Starts the ingest, candidate, drain and downlink tasks; returns the input sender.
pub(crate) fn start(shared: &Arc<Shared>, config: &Resolved) -> mpsc::Sender<Input> {
    let (tx, rx) = mpsc::channel(INPUT_QUEUE_LEN_MAX);
    tokio::spawn(ingest_task(shared.clone(), rx));
    let n = lock(&shared.candidates).len();
    for i in 0..n {
        tokio::spawn(candidate_task(shared.clone(), i));
    }
    tokio::spawn(drain_task(shared.clone(), config.raw.downlink.clone()));
    tx
}

// ------------------------------------------------------------------------- ingest

fn summary_ce(name: &str, summary: Value) -> Map<String, Value> {
    let mut ce = Map::new();
    ce.insert("specversion".into(), json!("1.0"));
    ce.insert("id".into(), json!(crate::inputs::event_id()));
    ce.insert("source".into(), json!(format!("weft-agent/{name}")));
    ce.insert("type".into(), json!("weft.agent.aggregate"));
    ce.insert("datacontenttype".into(), json!("application/json"));
    ce.insert("data".into(), summary);
    ce
}

/// The summary event of an ended window.
fn summary_event(name: &str, d: &Due, now: u64) -> NewEvent {
    NewEvent {
        summary: true,
        ..to_new(
            InEvent {
                stream: d.stream.clone(),
                priority: 5,
                ce: summary_ce(name, d.summary.clone()),
            },
            now,
        )
    }
}

/// What the outbox's budget for summaries has left (none when it cannot be read: the
/// windows then stay open, nothing is lost). `skip` answers an empty room without asking.
async fn summary_room(shared: &Arc<Shared>, skip: bool) -> SummaryRoom {
    if skip {
        return SummaryRoom::default();
    }
    with_outbox(shared, |o| o.summary_room())
        .await
        .unwrap_or_else(|e| {
            warn!(error = %format!("{e:#}"), "reading the outbox's room for summaries failed");
            SummaryRoom {
                held: u64::MAX,
                ..SummaryRoom::default()
            }
        })
}

fn to_new(e: InEvent, now: u64) -> NewEvent {
    NewEvent {
        stream: e.stream,
        priority: e.priority,
        produced_ms: now,
        content_type: CE_JSON.into(),
        payload: serde_json::to_vec(&e.ce).unwrap_or_default(),
        summary: false,
    }
}

/// The local rules with the aggregate windows the outbox kept (a restart resumes them).
async fn kept_rules(shared: &Arc<Shared>) -> Rules {
    match with_outbox(shared, |o| o.windows()).await {
        Ok((rules, windows)) => {
            let (rules, unfit) = Rules::restore(&rules, windows);
            if rules.open_windows() > 0 {
                info!(windows = rules.open_windows(), "aggregate windows resumed");
            }
            if unfit > 0 {
                warn!(
                    windows = unfit,
                    "kept aggregate windows that fit no rule were left out"
                );
            }
            rules
        }
        Err(e) => {
            // Not fatal: events are still taken, under the profile's rules, with new windows.
            error!(error = %format!("{e:#}"), "reading the kept aggregate windows failed");
            Rules::default()
        }
    }
}

/// Warnings given once while their cause lasts.
#[derive(Debug, Default)]
struct Said {
    /// New rules wait for room for the old windows' summaries.
    waiting_rules: bool,
    /// Windows are kept open because the summaries' budget is full.
    budget_full: bool,
}

/// Whether new rules may replace the old: the summaries of every open window (`made`) fit
/// in the room, or the outbox holds no summary (a budget smaller than the windows open: it
/// then takes them all, at most `WINDOWS_MAX`). Meanwhile no window closes (they stay open
/// past their end), so the drain frees room for the change: a profile comes from a node,
/// to which the outbox drains.
fn rules_may_change(mut room: SummaryRoom, made: &[NewEvent]) -> bool {
    room.held == 0 || made.iter().all(|e| room.take(e.payload.len()))
}

/// Closes the windows that ended by `now` into the room the outbox's summary budget has,
/// earliest first, and keeps the others open past their end (nothing they hold is lost).
/// A new profile's rules replace `rules` once every open window's summary fits. Returns the
/// summary events, the new rules when they replaced the old (the outbox records them with
/// the windows), and how many windows were kept open.
async fn close_windows(
    shared: &Arc<Shared>,
    rules: &mut Rules,
    now: u64,
    said: &mut Said,
) -> (Vec<NewEvent>, Option<Vec<LocalRule>>, u64) {
    // New rules with a new profile: the old windows close first, their summaries and the
    // new rules in one transaction.
    let changed: Option<Vec<LocalRule>> = {
        let p = shared
            .profile
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let current: &[LocalRule] = p.as_ref().map_or(&[], |p| &p.rules);
        (!rules.same(current)).then(|| current.to_vec())
    };
    if let Some(current) = changed {
        let due = rules.due(now, true);
        let room = summary_room(shared, due.is_empty()).await;
        let made: Vec<NewEvent> = due
            .iter()
            .map(|d| summary_event(&shared.name, d, now))
            .collect();
        if rules_may_change(room, &made) {
            for d in &due {
                rules.close(&d.key);
            }
            *rules = Rules::new(&current);
            info!(rules = current.len(), "local rules in force");
            said.waiting_rules = false;
            return (made, Some(current), 0);
        }
        if !said.waiting_rules {
            warn!(
                windows = due.len(),
                held = room.held,
                "new local rules wait for room in the outbox for the summaries of the open windows"
            );
            said.waiting_rules = true;
        }
    }
    let due = rules.due(now, false);
    if due.is_empty() {
        return (Vec::new(), None, 0);
    }
    // While new rules wait, the room is theirs: ended windows stay open.
    let mut room = if said.waiting_rules {
        SummaryRoom::default()
    } else {
        summary_room(shared, false).await
    };
    let mut summaries = Vec::new();
    let mut deferred = 0;
    // Earliest end first: once one does not fit, the later ones wait too (and no summary
    // is made for them).
    let mut full = false;
    for d in &due {
        if !full {
            let e = summary_event(&shared.name, d, now);
            if room.take(e.payload.len()) {
                rules.close(&d.key);
                summaries.push(e);
                continue;
            }
            full = true;
        }
        if rules.extend(&d.key, now) {
            deferred += 1;
        }
    }
    if deferred > 0 && !said.budget_full {
        warn!(
            windows = deferred,
            held = room.held,
            "the outbox's budget for aggregate summaries is full: windows stay open past their end"
        );
    }
    said.budget_full = deferred > 0;
    (summaries, None, deferred)
}

/// What became of one input message in an ingest group.
enum Slice {
    /// Offered to the outbox: its kept events are `events[start..end]`; `dropped` by rules;
    /// where each of its events went among `events`; the first `taken` of its `len` events
    /// handled (fewer: a prefix, the rest waits for room).
    Taken {
        start: usize,
        end: usize,
        dropped: usize,
        at: Vec<Option<usize>>,
        taken: usize,
        len: usize,
    },
    /// An all-or-none message the outbox had no room for (its `n` events): nothing of it
    /// applied.
    Waiting(usize),
}

async fn ingest_task(shared: Arc<Shared>, mut rx: mpsc::Receiver<Input>) {
    let mut rules = kept_rules(&shared).await;
    let mut said = Said::default();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let mut group: Vec<Input> = Vec::new();
        tokio::select! {
            m = rx.recv() => match m {
                Some(m) => group.push(m),
                None => return,
            },
            _ = tick.tick() => {}
        }
        while group.len() < INGEST_GROUP_MAX {
            match rx.try_recv() {
                Ok(m) => group.push(m),
                Err(_) => break,
            }
        }
        let now = wall_ms();
        // The rules and windows as the outbox has them: put back if this group's
        // transaction fails (its inputs are told so and may send again).
        let committed = rules.clone();
        let mut extra = Counters::default();
        let (mut summaries, reset, deferred) =
            close_windows(&shared, &mut rules, now, &mut said).await;
        extra.summaries_deferred = deferred;
        let mut events = Vec::new();
        let mut meta = Vec::new();
        let mut slices = Vec::new();
        // The room a `whole` message needs, spent by the messages before it in order.
        let mut room = if group.iter().any(|m| m.whole) {
            with_outbox(&shared, |o| o.free_room())
                .await
                .unwrap_or(None)
        } else {
            None
        };
        for m in &mut group {
            let start = events.len();
            let len = m.events.len();
            // A message its input offers again (standard input, a followed file) is taken
            // as its longest prefix that fits; the input offers the rest again later. Any
            // other whole message (an HTTP request) is taken all or none.
            let prefix = m.whole && m.retries && room.is_some();
            // Put back if an all-or-none message finds no room: the rules' windows (an
            // event folded into one is taken) and the counters.
            let undo =
                (m.whole && !m.retries && room.is_some()).then(|| (rules.clone(), extra.clone()));
            let mut dropped = 0;
            let mut taken = len;
            // Where each of the message's events went among `events` (none: a rule took it).
            let mut at = Vec::with_capacity(len);
            for (i, e) in std::mem::take(&mut m.events).into_iter().enumerate() {
                // In prefix mode the event is made first, to know whether it fits. One that
                // does not still goes to the rules (they may take it: a filter, a sample,
                // an aggregate need no room), from a copy of their state put back if they
                // keep it: then it ends the prefix.
                let (made, before) = match room.as_ref() {
                    Some(r) if prefix => {
                        let new = to_new(e.clone(), now);
                        let fits = r.could_take(1, new.payload.len() as u64);
                        (Some(new), (!fits).then(|| rules.clone()))
                    }
                    _ => (None, None),
                };
                let data = e.ce.get("data");
                let verdict = rules.apply(&e.stream, data, now);
                if let Some(before) = before
                    && verdict == Verdict::Keep
                {
                    rules = before;
                    taken = i;
                    break;
                }
                at.push((verdict == Verdict::Keep).then_some(events.len()));
                match verdict {
                    Verdict::Keep => {
                        let new = made.unwrap_or_else(|| to_new(e, now));
                        if prefix && let Some(r) = room.as_mut() {
                            r.spend(1, new.payload.len() as u64);
                        }
                        events.push(new);
                    }
                    Verdict::Filtered => {
                        extra.filtered += 1;
                        dropped += 1;
                    }
                    Verdict::Sampled => {
                        extra.sampled_out += 1;
                        dropped += 1;
                    }
                    Verdict::Aggregated => {
                        extra.aggregated += 1;
                        dropped += 1;
                    }
                }
            }
            let kept = (events.len() - start) as u64;
            let kept_bytes: u64 = events[start..].iter().map(|e| e.payload.len() as u64).sum();
            if let (Some(r), Some((rules_before, extra_before))) = (room.as_mut(), undo) {
                if !r.take(kept, kept_bytes) {
                    if r.could_fit(kept, kept_bytes) {
                        // Not now: nothing of it is applied; its client is refused.
                        events.truncate(start);
                        rules = rules_before;
                        extra = extra_before;
                        extra.refused_full += len as u64;
                        slices.push(Slice::Waiting(len));
                        continue;
                    }
                    // Larger than the whole outbox: it could never be taken whole, so it
                    // is offered event by event (what does not fit is refused, counted).
                    warn!(
                        events = kept,
                        bytes = kept_bytes,
                        "a request larger than the whole outbox: taken event by event"
                    );
                    r.spend(kept, kept_bytes);
                }
            } else if !prefix && let Some(r) = room.as_mut() {
                r.spend(kept, kept_bytes);
            }
            if taken == len {
                extra.bad_input += m.bad;
                extra.not_enrolled += m.not_enrolled;
                meta.append(&mut m.meta);
            } else {
                // A prefix: the input's position after its last event (a followed file's
                // offset); its bad lines are counted when the rest is taken.
                extra.input_waits += 1;
                if let (Some(last), Some((key, _))) = (
                    taken.checked_sub(1).and_then(|i| m.progress.get(i)),
                    m.meta.first(),
                ) {
                    meta.push((key.clone(), last.clone()));
                }
            }
            slices.push(Slice::Taken {
                start,
                end: events.len(),
                dropped,
                at,
                taken,
                len,
            });
        }
        let mut windows = rules.take_changes();
        windows.reset = reset;
        if group.is_empty() && summaries.is_empty() && windows.is_empty() {
            continue;
        }
        events.append(&mut summaries);
        let waiting = slices.iter().any(|s| matches!(s, Slice::Waiting(_)));
        let result = {
            let events = events;
            // What the outbox holds right after this insert: the figures a refused client is
            // told (read later, the uplink may have drained some already). Only when some
            // client was refused: it costs a query.
            with_outbox(&shared, move |o| {
                let accepted = o.insert(&events, &meta, &extra, &windows)?;
                let refused = waiting || accepted.iter().any(|a| !a);
                Ok((accepted, refused.then(|| o.fullness())))
            })
            .await
        };
        match result {
            Ok((accepted, fullness)) => {
                for (m, slice) in group.into_iter().zip(slices) {
                    let outcome = match slice {
                        Slice::Taken {
                            start: a,
                            end: b,
                            dropped,
                            at,
                            taken,
                            len,
                        } => {
                            let ok = accepted[a..b].iter().filter(|x| **x).count();
                            IngestOutcome {
                                accepted: ok,
                                refused_full: (b - a) - ok,
                                dropped_by_rules: dropped,
                                refused_at: at
                                    .iter()
                                    .enumerate()
                                    .filter(|(_, k)| k.is_some_and(|k| !accepted[k]))
                                    .map(|(i, _)| i)
                                    .collect(),
                                waiting: taken < len,
                                taken,
                                full: fullness.clone(),
                                ..Default::default()
                            }
                        }
                        Slice::Waiting(n) => IngestOutcome {
                            refused_full: n,
                            waiting: true,
                            full: fullness.clone(),
                            ..Default::default()
                        },
                    };
                    if let Some(r) = m.reply {
                        let _ = r.send(outcome);
                    }
                }
                shared.wake.notify_one();
            }
            Err(e) => {
                error!(error = %format!("{e:#}"), "the outbox refused a write");
                // Nothing of the group was kept: neither the events the rules folded into
                // windows nor the summaries of the windows that closed.
                rules = committed;
                for m in group {
                    if let Some(r) = m.reply {
                        let _ = r.send(IngestOutcome {
                            error: Some(format!("{e:#}")),
                            ..Default::default()
                        });
                    }
                }
            }
        }
    }
}

// ------------------------------------------------------------------------- uplink

async fn read_frame(recv: &mut quinn::RecvStream, max: usize) -> anyhow::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    recv.read_exact(&mut len).await.context("frame length")?;
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        anyhow::bail!("frame of {len} bytes, over the limit of {max}");
    }
    let mut buf = vec![0u8; len];
    recv.read_exact(&mut buf).await.context("frame body")?;
    Ok(buf)
}

async fn write_frame(
    send: &mut quinn::SendStream,
    kind: Option<u8>,
    body: &[u8],
) -> anyhow::Result<()> {
    let mut out = Vec::with_capacity(body.len() + 5);
    if let Some(k) = kind {
        out.push(k);
    }
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
    send.write_all(&out).await?;
    Ok(())
}

fn set_profile(shared: &Arc<Shared>, idx: usize, profile: Profile) {
    let is_active = *lock(&shared.active) == Some(idx);
    if let Some(c) = lock(&shared.candidates).get_mut(idx) {
        c.profile = Some(profile.clone());
    }
    if is_active {
        adopt_profile(shared, profile);
    }
    shared.changed.notify_one();
}

/// Makes `profile` the one in use and stores it (an offline restart stamps with it).
fn adopt_profile(shared: &Arc<Shared>, profile: Profile) {
    let same = shared
        .profile
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .as_ref()
        == Some(&profile);
    if same {
        return;
    }
    info!(node = %profile.node, epoch = profile.epoch, rules = profile.rules.len(), "profile in use");
    for (field, stream) in unenrolled_inputs(&shared.input_streams, &profile) {
        warn!(
            node = %profile.node,
            epoch = profile.epoch,
            "config field `{field}`: stream {stream} is not among the device's enrolled streams ({}): its events will go to the dead letters",
            profile.streams.join(", ")
        );
    }
    let bytes = serde_json::to_vec(&profile).unwrap_or_default();
    *shared
        .profile
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(profile);
    let s = shared.clone();
    tokio::spawn(async move {
        if let Err(e) = with_outbox(&s, move |o| o.meta_set(&[("profile", &bytes)])).await {
            warn!(error = %format!("{e:#}"), "storing the profile failed");
        }
    });
}

/// The streams the config's inputs write to, each with the field that names it.
fn input_streams(inputs: &crate::config::Inputs) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Some(i) = &inputs.stdin {
        out.push(("inputs.stdin.stream".to_string(), i.stream.clone()));
    }
    if let Some(s) = inputs.http.as_ref().and_then(|h| h.stream.as_ref()) {
        out.push(("inputs.http.stream".to_string(), s.clone()));
    }
    for (i, f) in inputs.files.iter().enumerate() {
        out.push((format!("inputs.files[{i}].stream"), f.stream.clone()));
    }
    out
}

/// The inputs whose stream `profile` does not enroll.
fn unenrolled_inputs<'a>(
    inputs: &'a [(String, String)],
    profile: &Profile,
) -> Vec<&'a (String, String)> {
    let patterns: Vec<weft_fabric::StreamPattern> = profile
        .streams
        .iter()
        .filter_map(|p| weft_fabric::StreamPattern::new(p.clone()).ok())
        .collect();
    inputs
        .iter()
        .filter(|(_, s)| {
            StreamName::new(s.clone()).map_or(true, |s| !patterns.iter().any(|p| p.matches(&s)))
        })
        .collect()
}

/// Keeps a connection to candidate `idx`: connect, hello, profiles, reconnect (after
/// [`next_wait`]).
async fn candidate_task(shared: Arc<Shared>, idx: usize) {
    let (addr, key) = {
        let c = lock(&shared.candidates);
        (c[idx].addr, c[idx].key)
    };
    let mut wait = Duration::ZERO;
    // The last failure logged for this node, and when (see [`FAILURE_LOG_EVERY`]).
    let mut said: Option<(String, Instant)> = None;
    loop {
        let (closed, error, lost) = match connect(&shared, addr, key).await {
            // The control stream's send half stays open as long as the connection.
            Ok((conn, _send, mut recv, profile)) => {
                let since = Instant::now();
                said = None;
                info!(%addr, node = %profile.node, rtt_ms = conn.rtt().as_secs_f64() * 1000.0, "connected");
                {
                    let mut c = lock(&shared.candidates);
                    c[idx].conn = Some(conn.clone());
                    c[idx].error = None;
                }
                set_profile(&shared, idx, profile);
                // Profile updates until the connection ends.
                while let Ok(bytes) = read_frame(&mut recv, edge::FRAME_LEN_MAX).await {
                    match serde_json::from_slice::<Profile>(&bytes) {
                        Ok(p) => set_profile(&shared, idx, p),
                        Err(e) => warn!(%addr, error = %e, "bad profile from node"),
                    }
                }
                if since.elapsed() >= STABLE_AFTER {
                    wait = Duration::ZERO;
                }
                let reason = conn.close_reason();
                let closed = reason.as_ref().and_then(node_close_code);
                let error = explained(
                    closed,
                    reason.map_or("control stream ended".to_string(), |r| r.to_string()),
                );
                {
                    let mut c = lock(&shared.candidates);
                    c[idx].conn = None;
                    c[idx].profile = None;
                    c[idx].error = Some(error.clone());
                }
                shared.changed.notify_one();
                (closed, error, true)
            }
            Err(e) => {
                let closed = e
                    .chain()
                    .find_map(|c| c.downcast_ref::<quinn::ConnectionError>())
                    .and_then(node_close_code);
                let error = match closed {
                    Some(_) => explained(closed, format!("{e:#}")),
                    None => failure(&e, addr),
                };
                (closed, error, false)
            }
        };
        wait = next_wait(wait, closed);
        match closed {
            Some(edge::close::NOT_ENROLLED | edge::close::PROTOCOL) => {
                error!(%addr, retry_in_s = wait.as_secs_f64(), "{error}");
            }
            Some(edge::close::TOO_MANY_AGENTS | edge::close::REPLACED) => {
                warn!(%addr, retry_in_s = wait.as_secs_f64(), "{error}");
            }
            _ if lost => warn!(%addr, reason = %error, "connection to node lost"),
            _ if should_log(&mut said, &error, Instant::now()) => {
                if error.starts_with(WRONG_KEY_TEXT) {
                    error!(%addr, expected_key = %hex::encode(key), "{error}");
                } else {
                    warn!(%addr, retry_in_s = wait.as_secs_f64(), "cannot connect to the node: {error}");
                }
            }
            _ => debug!(%addr, %error, "connecting failed"),
        }
        lock(&shared.candidates)[idx].error = Some(error);
        tokio::time::sleep(wait).await;
    }
}

/// Whether a failed attempt's `error` is logged now (`said`: the last one logged and
/// when): a new cause at once, the same one again after [`FAILURE_LOG_EVERY`].
fn should_log(said: &mut Option<(String, Instant)>, error: &str, now: Instant) -> bool {
    if let Some((last, at)) = said.as_ref()
        && last == error
        && now.duration_since(*at) < FAILURE_LOG_EVERY
    {
        return false;
    }
    *said = Some((error.to_string(), now));
    true
}

/// Starts what [`failure`] says of a node that presented another key than its configured one.
const WRONG_KEY_TEXT: &str = "SECURITY: the node at this address is not the one configured";

/// A failed attempt at a node (not closed by the node with an edge code) in words an
/// operator acts on: a node with another key than the configured one (a security matter:
/// a wrong `nodes[].key`, another node at the address, or someone impersonating it), a
/// peer that refused the TLS handshake (not an edge port: a node's mesh port does that),
/// or no answer at all (nothing listening, a firewall). QUIC's own words follow.
fn failure(e: &anyhow::Error, addr: SocketAddr) -> String {
    let raw = format!("{e:#}");
    if raw.contains(crate::tls::WRONG_NODE_KEY) {
        return format!(
            "{WRONG_KEY_TEXT} (a wrong nodes[].key, another node at {addr}, or someone impersonating the node); nothing is sent to it: {raw}"
        );
    }
    let quic = e
        .chain()
        .find_map(|c| c.downcast_ref::<quinn::ConnectionError>());
    let timed_out = matches!(quic, Some(quinn::ConnectionError::TimedOut))
        || e.chain()
            .any(|c| c.downcast_ref::<tokio::time::error::Elapsed>().is_some());
    if let Some(quinn::ConnectionError::ConnectionClosed(c)) = quic
        && (0x100..0x200).contains(&u64::from(c.error_code))
    {
        return format!(
            "{addr} refused the agent's TLS handshake: is it the node's edge port (listen.edge, ALPN weft-edge/1)? A node's mesh port refuses agents so: {raw}"
        );
    }
    // QUIC's own words are left out: they are "timed out" one way or another (the
    // handshake's, or the attempt's bound), and one cause should read as one line.
    if timed_out {
        return format!(
            "no answer from {addr} within {} s: nothing listening there (the node down, or not its listen.edge port, UDP), or a firewall drops it",
            CONNECT_TIMEOUT.as_secs()
        );
    }
    raw
}

/// The edge close code (`edge::close`) a node closed a connection with, if it did.
fn node_close_code(e: &quinn::ConnectionError) -> Option<u32> {
    match e {
        quinn::ConnectionError::ApplicationClosed(c) => {
            u32::try_from(c.error_code.into_inner()).ok()
        }
        _ => None,
    }
}

/// `raw` (the connection's error as QUIC gives it) after what the node's close code means
/// for the operator, for the log and `weft-agent status`.
fn explained(code: Option<u32>, raw: String) -> String {
    let what = match code {
        Some(edge::close::NOT_ENROLLED) => {
            "the node refused this device (its key is not enrolled there, or a policy changed or revoked it)"
        }
        Some(edge::close::PROTOCOL) => {
            "the node closed the connection as a protocol violation (an agent and node of incompatible versions?)"
        }
        Some(edge::close::TOO_MANY_AGENTS) => {
            "the node has as many agents as it takes (edge.agents_max); other nodes serve meanwhile"
        }
        Some(edge::close::REPLACED) => {
            "another connection with this device's key replaced this one: is a second agent running with the same key?"
        }
        Some(edge::close::SHUTDOWN) => "the node is shutting down",
        _ => return raw,
    };
    format!("{what}: {raw}")
}

/// How long to wait before the next attempt at a node, after an attempt or connection that
/// ended with the node's close code `code` (`None`: it failed or was lost otherwise, or the
/// node shut down), `last` being the wait before it ([`Duration::ZERO`] after a stable
/// connection): doubling from a floor, up to a ceiling, both set by what the node said.
fn next_wait(last: Duration, code: Option<u32>) -> Duration {
    let (floor, ceiling) = match code {
        Some(edge::close::NOT_ENROLLED | edge::close::PROTOCOL) => {
            (REFUSED_WAIT_MIN, REFUSED_WAIT_MAX)
        }
        Some(edge::close::TOO_MANY_AGENTS | edge::close::REPLACED) => {
            (BUSY_WAIT_MIN, BUSY_WAIT_MAX)
        }
        _ => (BACKOFF_MIN, BACKOFF_MAX),
    };
    (last * 2).clamp(floor, ceiling)
}

async fn connect(
    shared: &Arc<Shared>,
    addr: SocketAddr,
    key: [u8; 32],
) -> anyhow::Result<(
    quinn::Connection,
    quinn::SendStream,
    quinn::RecvStream,
    Profile,
)> {
    let cfg = shared.identity.client_config(key)?;
    let fut = async {
        let conn = shared
            .endpoint
            .connect_with(cfg, addr, "weft-node")?
            .await
            .context("QUIC handshake")?;
        let (mut send, mut recv) = conn.open_bi().await.context("control stream")?;
        let hello = Hello {
            agent: format!("weft-agent {}", env!("CARGO_PKG_VERSION")),
            name: shared.name.clone(),
        };
        write_frame(
            &mut send,
            Some(edge::STREAM_HELLO),
            &serde_json::to_vec(&hello)?,
        )
        .await?;
        let bytes = match read_frame(&mut recv, edge::FRAME_LEN_MAX).await {
            Ok(b) => b,
            // The node's close (with its code, for `next_wait`) when it closed.
            Err(e) => match conn.close_reason() {
                Some(reason) => return Err(anyhow::Error::new(reason).context("no profile")),
                None => return Err(e.context("no profile")),
            },
        };
        let profile: Profile = serde_json::from_slice(&bytes).context("profile frame")?;
        anyhow::Ok((conn, send, recv, profile))
    };
    tokio::time::timeout(CONNECT_TIMEOUT, fut)
        .await
        .context("timed out")?
}

/// The candidate to use: the current one unless it is down or another healthy one is
/// better by the switch margin; otherwise the lowest score (RTT plus bias), ties to the
/// first configured.
fn choose(cands: &[Candidate], current: Option<usize>) -> Option<usize> {
    let best = cands
        .iter()
        .enumerate()
        .filter_map(|(i, c)| Some((i, c.score()?)))
        .min_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)))?;
    if let Some(cur) = current
        && let Some(score) = cands.get(cur).and_then(Candidate::score)
        && best.1 >= score * (1.0 - SWITCH_MARGIN_PCT / 100.0) - SWITCH_MARGIN_MS
    {
        return Some(cur);
    }
    Some(best.0)
}

// ------------------------------------------------------------------------- drain

/// Cuts `rows` to what fits one batch frame (at least one row: an envelope is at most
/// `EVENT_LEN_MAX`, well under `FRAME_LEN_MAX`); returns the sequence numbers cut off.
fn fit_frame(rows: &mut Vec<crate::outbox::Ready>) -> Vec<u64> {
    let mut total = 4;
    let mut keep = 0;
    for r in rows.iter() {
        if keep > 0 && total + 4 + r.envelope.len() > edge::FRAME_LEN_MAX {
            break;
        }
        total += 4 + r.envelope.len();
        keep += 1;
    }
    rows.split_off(keep).into_iter().map(|r| r.seq).collect()
}

struct Sent {
    seqs: Vec<u64>,
    answer: anyhow::Result<BatchAnswer>,
}

async fn send_batch(conn: quinn::Connection, rows: Vec<crate::outbox::Ready>) -> Sent {
    let seqs: Vec<u64> = rows.iter().map(|r| r.seq).collect();
    let answer = async {
        let (mut send, mut recv) = conn.open_bi().await?;
        let body = edge::encode_batch(rows.iter().map(|r| r.envelope.as_slice()));
        write_frame(&mut send, Some(edge::STREAM_BATCH), &body).await?;
        send.finish()?;
        let bytes =
            tokio::time::timeout(ANSWER_TIMEOUT, read_frame(&mut recv, ANSWER_FRAME_LEN_MAX))
                .await
                .context("no answer in time")??;
        anyhow::Ok(serde_json::from_slice::<BatchAnswer>(&bytes)?)
    }
    .await;
    Sent { seqs, answer }
}

async fn drain_task(shared: Arc<Shared>, downlink: crate::config::Downlink) {
    let mut inflight: JoinSet<Sent> = JoinSet::new();
    let mut current: Option<(usize, quinn::Connection, Profile)> = None;
    let mut next_send: u64 = 0;
    let mut retry: std::collections::VecDeque<Vec<u64>> = Default::default();
    let mut pause_until = Instant::now();
    let mut downlink_task: Option<tokio::task::JoinHandle<()>> = None;
    // Events nodes refused for reasons of their own, with the nodes that did.
    let mut refused_here = RefusedHere::default();
    let mut reselect = tokio::time::interval(Duration::from_millis(500));
    // Whether the outbox may have something to send (idle agents do not poll it).
    let mut dirty = true;
    // The node answered `busy` and has not yet taken a batch since: one batch in flight
    // until it does. The whole window resent at once after the pause would be refused but
    // for its first batch (a rate limit's bucket holds about one batch), and every refusal
    // is counted and audited by the node.
    let mut throttled = false;
    loop {
        // Which node.
        let chosen = {
            let cands = lock(&shared.candidates);
            let cur = current.as_ref().map(|c| c.0);
            choose(&cands, cur)
                .and_then(|i| Some((i, cands[i].conn.clone()?, cands[i].profile.clone()?)))
        };
        let switch = match (&current, &chosen) {
            (Some(a), Some(b)) => a.0 != b.0 || a.1.stable_id() != b.1.stable_id(),
            (None, None) => false,
            _ => true,
        };
        if switch {
            inflight.abort_all();
            while inflight.join_next().await.is_some() {}
            retry.clear();
            throttled = false;
            if let Some(t) = downlink_task.take() {
                t.abort();
            }
            *lock(&shared.active) = chosen.as_ref().map(|c| c.0);
            match &chosen {
                Some((idx, conn, profile)) => {
                    info!(node = %profile.node, addr = %conn.remote_address(),
                        rtt_ms = conn.rtt().as_secs_f64() * 1000.0, "using node");
                    adopt_profile(&shared, profile.clone());
                    // Everything not yet confirmed goes again, from the oldest.
                    next_send =
                        match with_outbox(&shared, |o| Ok(o.head_seq()?.unwrap_or(o.next_seq())))
                            .await
                        {
                            Ok(h) => h,
                            Err(e) => {
                                error!(error = %format!("{e:#}"), "outbox read failed");
                                1
                            }
                        };
                    if downlink.enabled && profile.commands.is_some() {
                        let node = lock(&shared.candidates)[*idx].key;
                        downlink_task = Some(tokio::spawn(downlink_run(
                            shared.clone(),
                            conn.clone(),
                            node,
                            downlink.command.clone(),
                        )));
                    }
                }
                None => info!("no node reachable; events wait in the outbox"),
            }
            current = chosen;
            dirty = true;
        } else if let (Some(cur), Some(ch)) = (&mut current, &chosen)
            && cur.2 != ch.2
        {
            // A new profile from the same node (a new epoch): a command stream that
            // appeared or changed gets a new subscription.
            if cur.2.commands != ch.2.commands {
                if let Some(t) = downlink_task.take() {
                    t.abort();
                }
                if downlink.enabled && ch.2.commands.is_some() {
                    let node = lock(&shared.candidates)[ch.0].key;
                    downlink_task = Some(tokio::spawn(downlink_run(
                        shared.clone(),
                        ch.1.clone(),
                        node,
                        downlink.command.clone(),
                    )));
                }
            }
            cur.2 = ch.2.clone();
            dirty = true;
        }

        // Fill the window.
        if let Some((_, conn, profile)) = &current
            && dirty
            && Instant::now() >= pause_until
        {
            dirty = false;
            let credits = if throttled {
                1
            } else {
                profile.batches_inflight_max.max(1) as usize
            };
            let batch_len = (profile.batch_len_max as usize).clamp(1, edge::BATCH_LEN_MAX);
            while inflight.len() < credits {
                let mut rows = if let Some(seqs) = retry.pop_front() {
                    let (first, last) = (seqs[0], seqs[seqs.len() - 1]);
                    let mut rows: Vec<crate::outbox::Ready> = match with_outbox(&shared, move |o| {
                        o.ready(first, (last - first + 1) as usize)
                    })
                    .await
                    {
                        Ok(r) => r.into_iter().filter(|r| r.seq <= last).collect(),
                        Err(_) => Vec::new(),
                    };
                    let over = fit_frame(&mut rows);
                    if !over.is_empty() {
                        retry.push_front(over);
                    }
                    rows
                } else {
                    let p = profile.clone();
                    let from = next_send;
                    let s = shared.clone();
                    let got = with_outbox(&shared, move |o| {
                        let mut rows = o.ready(from, batch_len)?;
                        // A pass may move every event it takes to the dead letters (streams
                        // the profile does not allow) and sequence none: take more until
                        // the batch fills or nothing unsequenced is left. Each pass takes
                        // its events out of the unsequenced ones, so this ends; the bound
                        // only caps one fill's work (the drain comes back for the rest).
                        for _ in 0..SEQUENCE_PASSES_MAX {
                            if rows.len() >= batch_len || !o.has_unsequenced()? {
                                break;
                            }
                            o.sequence(batch_len - rows.len(), &p, &s.signer)?;
                            let from = rows.last().map_or(from, |r| r.seq + 1);
                            rows.extend(o.ready(from, batch_len - rows.len())?);
                        }
                        let more = rows.is_empty() && o.has_unsequenced()?;
                        Ok((rows, more))
                    })
                    .await;
                    match got {
                        Ok((rows, more)) => {
                            // Only dead letters this time, with events left: come back
                            // at once.
                            if more {
                                shared.wake.notify_one();
                            }
                            rows
                        }
                        Err(e) => {
                            error!(error = %format!("{e:#}"), "outbox read failed");
                            Vec::new()
                        }
                    }
                };
                // Fresh rows beyond the frame are simply read again next time.
                let _ = fit_frame(&mut rows);
                let Some(last) = rows.last() else {
                    break;
                };
                next_send = next_send.max(last.seq + 1);
                inflight.spawn(send_batch(conn.clone(), rows));
            }
        }
        shared
            .inflight
            .store(inflight.len(), std::sync::atomic::Ordering::Relaxed);

        // Wait for an answer, new events, a change of nodes, or the pause to end.
        let pause = pause_until.saturating_duration_since(Instant::now());
        tokio::select! {
            Some(done) = inflight.join_next(), if !inflight.is_empty() => {
                dirty = true;
                let Ok(sent) = done else { continue };
                let profile = current.as_ref().map(|c| c.2.clone());
                handle_answer(
                    &shared,
                    profile,
                    sent,
                    &mut retry,
                    &mut pause_until,
                    &mut refused_here,
                    &mut throttled,
                )
                .await;
            }
            () = shared.wake.notified() => dirty = true,
            () = shared.changed.notified() => dirty = true,
            () = tokio::time::sleep(pause), if !pause.is_zero() => dirty = true,
            _ = reselect.tick() => {}
        }
    }
}

async fn handle_answer(
    shared: &Arc<Shared>,
    profile: Option<Profile>,
    sent: Sent,
    retry: &mut std::collections::VecDeque<Vec<u64>>,
    pause_until: &mut Instant,
    refused_here: &mut RefusedHere,
    throttled: &mut bool,
) {
    let (first, last) = (sent.seqs[0], sent.seqs[sent.seqs.len() - 1]);
    match sent.answer {
        Ok(BatchAnswer::Durable { ids }) => {
            debug!(first, last, n = ids.len(), "batch durable");
            batch_outcome(shared, None);
            *throttled = false;
            if let Err(e) = with_outbox(shared, move |o| o.ack(first, last)).await {
                error!(error = %format!("{e:#}"), "outbox ack failed");
            }
            shared.wake.notify_one();
        }
        Ok(BatchAnswer::Busy { retry_ms }) => {
            debug!(first, last, retry_ms, "node busy");
            retry.push_back(sent.seqs);
            *throttled = true;
            *pause_until = Instant::now() + busy_pause(retry_ms);
        }
        Ok(BatchAnswer::Refused {
            index,
            reason,
            message,
        }) if edge::REFUSED_HERE_ONLY.contains(&reason.as_str())
            && refused_here.another_may_take(
                shared,
                sent.seqs.get(index as usize).copied().unwrap_or(first),
            ) =>
        {
            // This node cannot take it; another known node may (an EU-resident event at a
            // US node the drain failed over to, the EU node down for now): kept, and this
            // node left out for a while. Once every known node refused it so, it goes the
            // way of any refusal (below), or the device's later events would wait for ever.
            let why = format!("{reason}: {message}");
            warn!(%why, "the node cannot hold an event of the batch; leaving it out and keeping the event for another node");
            leave_out(shared, &why);
            retry.push_back(sent.seqs);
        }
        Ok(BatchAnswer::Refused {
            index,
            reason,
            message,
        }) => {
            let seq = sent.seqs.get(index as usize).copied().unwrap_or(first);
            warn!(seq, %reason, %message,
                "the node refused an event for good; moved to dead letters, a void event takes its number");
            let why = format!("{reason}: {message}");
            let s = shared.clone();
            let voided = with_outbox(shared, move |o| match profile {
                Some(p) => o.void(seq, &why, &p, &s.signer).map(|()| true),
                None => o.dead_letter(seq, &why).map(|()| false),
            })
            .await;
            let rest: Vec<u64> = match voided {
                Ok(true) => sent.seqs,
                Ok(false) => sent.seqs.into_iter().filter(|s| *s != seq).collect(),
                Err(e) => {
                    error!(error = %format!("{e:#}"), "outbox dead-letter failed");
                    sent.seqs.into_iter().filter(|s| *s != seq).collect()
                }
            };
            if !rest.is_empty() {
                retry.push_back(rest);
            }
        }
        Ok(BatchAnswer::SeqReused {
            index,
            seqs,
            held_max,
            message,
        }) => {
            // An older node names only the first refused number.
            let refused: Vec<u64> = if seqs.is_empty() {
                sent.seqs.get(index as usize).copied().into_iter().collect()
            } else {
                seqs
            };
            warn!(?refused, held_max, %message,
                "the node holds other events under these numbers (outbox restored from an older copy?): numbering them again after it");
            let taken = refused.clone();
            let renumbered = with_outbox(shared, move |o| o.renumber(&taken, held_max)).await;
            if let Err(e) = renumbered {
                error!(error = %format!("{e:#}"), "outbox renumbering failed");
            }
            // The batch's other events were taken (or are held): resent, answered durable.
            let rest: Vec<u64> = sent
                .seqs
                .into_iter()
                .filter(|s| !refused.contains(s))
                .collect();
            if !rest.is_empty() {
                retry.push_back(rest);
            }
            shared.wake.notify_one();
        }
        Ok(BatchAnswer::Failed { reason, message }) => {
            warn!(%reason, %message, "the node failed to store a batch; retrying");
            batch_outcome(shared, Some(&format!("{reason}: {message}")));
            retry.push_back(sent.seqs);
            *pause_until = Instant::now() + Duration::from_secs(1);
        }
        Err(e) => {
            debug!(error = %format!("{e:#}"), "batch not answered; will resend");
            batch_outcome(shared, Some(&format!("batch not answered: {e:#}")));
            retry.push_back(sent.seqs);
            *pause_until = Instant::now() + Duration::from_millis(200);
        }
    }
}

/// The pause after a `busy` answer: the node's `retry_ms` (its rate limiter's wait, to the
/// millisecond), within [`BUSY_PAUSE_MIN`] and [`BUSY_PAUSE_MAX`].
fn busy_pause(retry_ms: u64) -> Duration {
    Duration::from_millis(retry_ms).clamp(BUSY_PAUSE_MIN, BUSY_PAUSE_MAX)
}

/// Counts a batch's outcome against the node in use: `None` for durable (the count starts
/// again), `Some(why)` for a failure. A node that fails [`BATCH_FAILURES_MAX`] batches in a
/// row while its connection stays up (its store full or failing, answers timing out) is
/// left out for [`NODE_COOLDOWN`], so the drain moves to the next best node (and resends
/// from the oldest unconfirmed event) instead of retrying it for ever; `status` shows why.
/// A lost connection is not counted here: reconnecting handles it.
fn batch_outcome(shared: &Arc<Shared>, failure: Option<&str>) {
    let Some(idx) = *lock(&shared.active) else {
        return;
    };
    let mut cands = lock(&shared.candidates);
    let Some(c) = cands.get_mut(idx) else {
        return;
    };
    let Some(why) = failure else {
        c.failures = 0;
        return;
    };
    if c.conn
        .as_ref()
        .is_none_or(|conn| conn.close_reason().is_some())
    {
        return;
    }
    c.failures += 1;
    if c.failures < BATCH_FAILURES_MAX {
        return;
    }
    drop(cands);
    leave_out(
        shared,
        &format!("{BATCH_FAILURES_MAX} batches in a row failed (last: {why})"),
    );
}

/// Events nodes refused for a reason of their own (`edge::REFUSED_HERE_ONLY`), with the
/// keys of the nodes that did: one such event heads the device's sequence, so this holds
/// a handful at most.
#[derive(Default)]
struct RefusedHere(BTreeMap<u64, std::collections::BTreeSet<[u8; 32]>>);

impl RefusedHere {
    /// Notes that the node in use refused `seq` for a reason of its own, and says whether
    /// a known node that has not refused it is left to try (up or not: a node that can
    /// hold the event may be down for now).
    fn another_may_take(&mut self, shared: &Arc<Shared>, seq: u64) -> bool {
        let Some(idx) = *lock(&shared.active) else {
            return false;
        };
        let cands = lock(&shared.candidates);
        let Some(me) = cands.get(idx) else {
            return false;
        };
        // Only the events at the head matter: older entries were settled.
        self.0.retain(|s, _| *s >= seq);
        let refused = self.0.entry(seq).or_default();
        refused.insert(me.key);
        let left = cands.iter().any(|c| !refused.contains(&c.key));
        if !left {
            self.0.remove(&seq);
        }
        left
    }
}

/// Leaves the node in use out for [`NODE_COOLDOWN`] because of `why` (its failures, or an
/// event it cannot hold), so the drain moves to the next best node; `status` shows why.
fn leave_out(shared: &Arc<Shared>, why: &str) {
    let Some(idx) = *lock(&shared.active) else {
        return;
    };
    let mut cands = lock(&shared.candidates);
    let Some(c) = cands.get_mut(idx) else {
        return;
    };
    c.failures = 0;
    c.cooldown_until = Some(Instant::now() + NODE_COOLDOWN);
    let error = format!("{why}; left out for {} s", NODE_COOLDOWN.as_secs());
    warn!(addr = %c.addr, %error, "leaving a node out");
    c.error = Some(error);
    drop(cands);
    shared.changed.notify_one();
}

// ------------------------------------------------------------------------- downlink

/// Outbox meta key of the downlink's position in the log of the node with this key (hex):
/// positions are per node, so each node has its own.
fn downlink_cursor_key(node: &[u8; 32]) -> String {
    format!("downlink_cursor:{}", hex::encode(node))
}

/// Outbox meta key of the highest sequence number of each command origin the downlink ran
/// (JSON `{origin hex: seq}`): a command another node delivers again after a failover is
/// not run twice (each node's log holds an origin's commands in sequence order).
const DOWNLINK_DONE_KEY: &str = "downlink_done";

/// Most command origins [`DOWNLINK_DONE_KEY`] remembers (the nodes that published commands
/// to this device); past it the one whose commands are oldest is forgotten.
const DOWNLINK_ORIGINS_MAX: usize = 1024;

async fn downlink_run(
    shared: Arc<Shared>,
    conn: quinn::Connection,
    node: [u8; 32],
    command: Vec<String>,
) {
    let cursor_key = downlink_cursor_key(&node);
    let r = async {
        let key = cursor_key.clone();
        let (after, mut done) = with_outbox(&shared, move |o| {
            let pos = |v: Option<Vec<u8>>| v.and_then(|v| v.try_into().ok().map(u64::from_be_bytes));
            // The one cursor of an older agent, for the node it most likely came from.
            let after = pos(o.meta_get(&key)?)
                .or(pos(o.meta_get("downlink_cursor")?))
                .unwrap_or(0);
            let done: BTreeMap<String, u64> = o
                .meta_get(DOWNLINK_DONE_KEY)?
                .and_then(|v| serde_json::from_slice(&v).ok())
                .unwrap_or_default();
            Ok((after, done))
        })
        .await?;
        let (mut send, mut recv) = conn.open_bi().await?;
        write_frame(
            &mut send,
            Some(edge::STREAM_COMMANDS),
            &serde_json::to_vec(&Subscribe { after })?,
        )
        .await?;
        info!(after, "downlink subscribed");
        loop {
            let frame = read_frame(&mut recv, edge::FRAME_LEN_MAX).await?;
            let (pos, envelope) = edge::decode_command(&frame)?;
            // No envelope: the node withheld commands up to `pos` (their residency does not
            // reach this device's jurisdiction; the node audits each); the cursor moves on.
            if envelope.is_empty() {
                info!(pos, "downlink commands withheld by the node's policy up to this position");
                let key = cursor_key.clone();
                with_outbox(&shared, move |o| o.meta_set(&[(key.as_str(), &pos.to_be_bytes())]))
                    .await?;
                continue;
            }
            let checked = weft_fabric::decode(envelope)
                .map_err(anyhow::Error::from)
                .and_then(|u| u.verify().map_err(anyhow::Error::from));
            match checked {
                // Skipped, not the end of the downlink: stopping here would stop at it
                // again after every reconnect.
                Err(e) => warn!(pos, error = %format!("{e:#}"), "a downlink command that does not verify is skipped"),
                Ok(event) => {
                    let origin = event.origin().to_string();
                    if done.get(&origin).is_some_and(|s| *s >= event.seq()) {
                        debug!(pos, %origin, seq = event.seq(), "downlink command already run (delivered by another node before)");
                    } else {
                        run_downlink(&event, pos, &command).await;
                        done.insert(origin, event.seq());
                        if done.len() > DOWNLINK_ORIGINS_MAX
                            && let Some(oldest) = done.iter().min_by_key(|(_, s)| **s).map(|(o, _)| o.clone())
                        {
                            done.remove(&oldest);
                        }
                    }
                }
            }
            let key = cursor_key.clone();
            let done_json = serde_json::to_vec(&done)?;
            with_outbox(&shared, move |o| {
                o.meta_set(&[(key.as_str(), &pos.to_be_bytes()), (DOWNLINK_DONE_KEY, &done_json)])
            })
            .await?;
        }
        #[allow(unreachable_code)]
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = r {
        debug!(error = %format!("{e:#}"), "downlink ended");
    }
}

/// Hands one command to the downlink's program (or prints it as a JSON line).
async fn run_downlink(event: &weft_fabric::Event, pos: u64, command: &[String]) {
    let payload = match event.payload() {
        weft_fabric::Payload::Clear(b) => serde_json::from_slice::<Value>(b)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(b).into_owned())),
        weft_fabric::Payload::Sealed(_) => Value::Null,
    };
    let line = json!({
        "pos": pos,
        "stream": event.stream().as_str(),
        "id": event.id().to_string(),
        "origin": event.origin().to_string(),
        "seq": event.seq(),
        "principal": event.security().principal,
        "payload": payload,
    });
    if command.is_empty() {
        println!("{line}");
    } else {
        run_command(command, &line.to_string()).await;
    }
}

async fn run_command(command: &[String], input: &str) {
    use tokio::io::AsyncWriteExt as _;
    let mut child = match tokio::process::Command::new(&command[0])
        .args(&command[1..])
        .stdin(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            warn!(program = %command[0], error = %e, "downlink command could not start");
            return;
        }
    };
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(input.as_bytes()).await;
        let _ = stdin.write_all(b"\n").await;
    }
    match tokio::time::timeout(COMMAND_TIMEOUT, child.wait()).await {
        Ok(Ok(s)) if s.success() => {}
        Ok(Ok(s)) => warn!(program = %command[0], status = %s, "downlink command failed"),
        Ok(Err(e)) => warn!(program = %command[0], error = %e, "downlink command failed"),
        Err(_) => warn!(program = %command[0], "downlink command timed out; killed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_or_replaced_agent_waits_longer_before_it_tries_again() {
        use edge::close;
        let walk = |code: Option<u32>| {
            let mut wait = Duration::ZERO;
            (0..7)
                .map(|_| {
                    wait = next_wait(wait, code);
                    wait.as_millis()
                })
                .collect::<Vec<_>>()
        };
        // A lost connection, a node that shut down: quick, up to 4 s.
        let quick = vec![250, 500, 1000, 2000, 4000, 4000, 4000];
        assert_eq!(walk(None), quick);
        assert_eq!(walk(Some(close::SHUTDOWN)), quick);
        // Refused: every attempt is audited by the node; from 5 s up to a minute.
        let refused = vec![5000, 10_000, 20_000, 40_000, 60_000, 60_000, 60_000];
        assert_eq!(walk(Some(close::NOT_ENROLLED)), refused);
        assert_eq!(walk(Some(close::PROTOCOL)), refused);
        // No room, or a second agent with this key: from 2 s up to 30 s.
        let busy = vec![2000, 4000, 8000, 16_000, 30_000, 30_000, 30_000];
        assert_eq!(walk(Some(close::TOO_MANY_AGENTS)), busy);
        assert_eq!(walk(Some(close::REPLACED)), busy);
        // A refusal after quick attempts starts at its own floor, and a quick failure
        // after a long wait doubles under the quick ceiling.
        assert_eq!(
            next_wait(Duration::from_millis(500), Some(close::NOT_ENROLLED)),
            REFUSED_WAIT_MIN
        );
        assert_eq!(next_wait(REFUSED_WAIT_MAX, None), BACKOFF_MAX);
    }

    /// A failed attempt is logged once per cause, and again after FAILURE_LOG_EVERY: a
    /// misconfigured node (wrong key, wrong port, nothing there) logged nothing before.
    #[test]
    fn connection_failures_are_logged_once_per_cause_and_every_30_s() {
        let t0 = Instant::now();
        let mut said = None;
        assert!(should_log(&mut said, "timed out", t0));
        assert!(!should_log(
            &mut said,
            "timed out",
            t0 + Duration::from_secs(4)
        ));
        assert!(!should_log(
            &mut said,
            "timed out",
            t0 + Duration::from_secs(29)
        ));
        assert!(should_log(
            &mut said,
            "refused",
            t0 + Duration::from_secs(29)
        ));
        assert!(should_log(
            &mut said,
            "timed out",
            t0 + Duration::from_secs(30)
        ));
        assert!(should_log(
            &mut said,
            "timed out",
            t0 + Duration::from_secs(60)
        ));
        // A wrong key is said as a security matter, naming the address.
        let addr: SocketAddr = "127.0.0.9:7500".parse().unwrap();
        let e = anyhow::anyhow!("{} aa, not the configured bb", crate::tls::WRONG_NODE_KEY)
            .context("QUIC handshake");
        let text = failure(&e, addr);
        assert!(
            text.starts_with(WRONG_KEY_TEXT) && text.contains("127.0.0.9:7500"),
            "{text}"
        );
        assert_eq!(failure(&anyhow::anyhow!("odd"), addr), "odd");
    }

    /// An input configured for a stream the profile does not enroll is named (its events
    /// would all be dead-lettered, silently but for the counter).
    #[test]
    fn inputs_on_streams_the_profile_does_not_enroll_are_named() {
        let config: crate::config::Inputs = toml::from_str(
            "[stdin]\nstream = \"t.dev.raw\"\n\
             [http]\nlisten = \"127.0.0.1:8700\"\nstream = \"t.other\"\n\
             [[files]]\npath = \"/x\"\nstream = \"t.dev.log\"\n",
        )
        .unwrap();
        let inputs = input_streams(&config);
        assert_eq!(inputs.len(), 3);
        let profile = Profile {
            node: "n".into(),
            region: "r".into(),
            epoch: 1,
            principal: "dev".into(),
            tenant: "acme".into(),
            streams: vec!["t.dev.>".into()],
            stamps: vec![],
            default_stamp: None,
            rules: vec![],
            commands: None,
            batch_len_max: 1,
            batches_inflight_max: 1,
            origin_seq_max: 0,
        };
        let named: Vec<&str> = unenrolled_inputs(&inputs, &profile)
            .iter()
            .map(|(f, _)| f.as_str())
            .collect();
        assert_eq!(named, vec!["inputs.http.stream"]);
    }

    #[test]
    fn a_busy_node_is_waited_for_as_long_as_it_says() {
        assert_eq!(busy_pause(200), Duration::from_millis(200));
        assert_eq!(busy_pause(37), Duration::from_millis(37));
        assert_eq!(busy_pause(0), BUSY_PAUSE_MIN);
        assert_eq!(busy_pause(3_600_000), BUSY_PAUSE_MAX);
    }

    #[test]
    fn a_close_by_the_node_is_explained_with_its_own_words_kept() {
        let raw =
            "no profile: closed by peer: 16: device_not_allowed: not in this node's edge.devices";
        let e = explained(Some(edge::close::NOT_ENROLLED), raw.into());
        assert!(e.starts_with("the node refused this device"), "{e}");
        assert!(e.ends_with(raw), "{e}");
        let e = explained(Some(edge::close::REPLACED), "closed".into());
        assert!(e.contains("second agent running with the same key"), "{e}");
        assert_eq!(explained(None, "timed out".into()), "timed out");
        assert_eq!(explained(Some(0x999), "odd".into()), "odd");
    }

    #[test]
    fn new_rules_wait_until_every_open_windows_summary_fits() {
        let d = |n: usize| Due {
            key: (0, format!("t.{n}")),
            end_ms: 60_000,
            stream: StreamName::new(format!("t.{n}")).unwrap(),
            summary: json!({"count": n}),
        };
        let made: Vec<NewEvent> = (0..3).map(|n| summary_event("dev", &d(n), 1)).collect();
        let len = made.iter().map(|e| e.payload.len() as u64).sum::<u64>();
        let room = |held, events, bytes| SummaryRoom {
            held,
            events,
            bytes,
        };
        assert!(rules_may_change(room(5, 3, len), &made));
        assert!(
            !rules_may_change(room(5, 2, len), &made),
            "one summary short"
        );
        assert!(
            !rules_may_change(room(5, 3, len - 1), &made),
            "one byte short"
        );
        // An outbox holding no summary takes them all, whatever its budget.
        assert!(rules_may_change(room(0, 1, 0), &made));
        // No window open: nothing to fit.
        assert!(rules_may_change(room(5, 0, 0), &[]));
        assert!(made.iter().all(|e| e.summary));
    }
}
