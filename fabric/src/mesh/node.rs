//! The mesh node state machine: SWIM membership (foca), PlumTree-style dissemination over
//! per-origin, region-aware trees (eager push, lazy IHAVE, GRAFT), anti-entropy, interest
//! and per-origin ordered delivery.
//!
//! # Why the eager tree is computed, not discovered
//!
//! PlumTree proper starts with every link eager and prunes a link when it delivers a
//! duplicate. With a tree per origin (needed for low latency from every source) that costs
//! one flood per origin before the tree settles, and a fabric has many origins publishing a
//! few events each: measured on `scale-1000.toml` (1000 nodes, 800 events from ~800
//! origins), RMR was 5.9. So each node computes, for an event of origin O, the same tree
//! every other node computes from the same membership: the origin sends directly to one
//! *entry* node in every region (the direct inter-region link, the shortest path when the
//! latency matrix obeys the triangle inequality; relays for when it does not are routing's
//! job); inside each region the event descends a `tree_arity`-ary tree whose order is a
//! rendezvous hash of (origin, member), so the load spreads over members and origins. Views
//! that disagree (membership churn) cost a duplicate or a gap; lazy IHAVEs to a few
//! RTT-ranked peers and GRAFT repair gaps within a `graft_timeout_us`, anti-entropy the rest.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use foca::{Foca, NoCustomBroadcast, OwnedNotification, PostcardCodec};
use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};

use crate::envelope::{Event, EventData, EventId, OriginKey};
use crate::mesh::member::MemberInfo;
use crate::mesh::message::{Digest, EventRef, Message};
use crate::mesh::ranges::SeqRanges;
use crate::mesh::store::{Inserted, Store, StoreError};
use crate::stream::StreamPattern;

/// Monotonic time in microseconds since an arbitrary epoch chosen by the driver.
pub type Micros = u64;

/// Most transmits queued between two `poll_transmit` drains. The driver drains after every
/// input, and one input produces at most a few hundred sends; overflow means a driver bug
/// and is counted (`Stats::transmits_dropped`).
pub const TRANSMIT_QUEUE_LEN_MAX: usize = 65_536;
/// Most application events (deliveries, member changes) queued before delivery pauses.
/// Paused deliveries resume from the per-origin cursor; nothing is lost.
pub const APP_QUEUE_LEN_MAX: usize = 16_384;
/// Most announced-but-missing events tracked for GRAFT. Beyond it, announcements are
/// ignored (counted) and anti-entropy repairs.
pub const MISSING_LEN_MAX: usize = 16_384;
/// Most announcers remembered per missing event.
pub const ANNOUNCERS_MAX: usize = 4;
/// Most event references in one IHAVE or GRAFT message (fits a datagram's worth of work).
pub const REFS_PER_MESSAGE_MAX: usize = 256;
/// Most events relayed but not stored (streams outside this node's interest) kept to answer
/// GRAFTs.
pub const RELAY_CACHE_LEN_MAX: usize = 4_096;
/// Most origins read from one anti-entropy digest (a fabric with more producers syncs the
/// rest in later rounds).
pub const DIGEST_ORIGINS_MAX: usize = 65_536;
/// Most envelope bytes in one eager push or anti-entropy response (a batch of large events
/// is cut here; anti-entropy resumes where it stopped). Under [`super::wire::MESSAGE_LEN_MAX`].
pub const BATCH_BYTES_MAX: usize = 8 << 20;
/// Most lazy peers.
pub const LAZY_MAX: usize = 32;
/// Largest tree arity: children per node in a region's tree.
pub const TREE_ARITY_MAX: usize = 16;
/// RTT samples kept per peer; the estimate is their minimum (robust to delayed-ACK
/// outliers, which only ever add delay).
pub const RTT_WINDOW_LEN: usize = 8;
/// A farther peer replaces a nearer one only if its RTT is below this percentage of the
/// current one's (hysteresis: no flapping between peers of nearly equal latency).
pub const RTT_HYSTERESIS_PCT: u64 = 80;

/// How the node behaves; defaults suit a WAN.
#[derive(Debug, Clone)]
pub struct MeshConfig {
    /// Children per node in a region's dissemination tree (depth is log base this of the
    /// region's size; intra-region hops cost well under a millisecond).
    pub tree_arity: usize,
    /// Regions whose measured RTT from the publisher is below this get the event from the
    /// publisher directly, every member at once, instead of through their tree: there a
    /// tree's sub-millisecond hops are a large fraction of the path (co-located clouds in
    /// one metro). The tree still runs, so those members also get a duplicate from it.
    pub near_region_rtt_us: Micros,
    /// Lazy peers that get an IHAVE for every event: the nearest by measured RTT, plus one
    /// at random in another region (repairs across a broken tree link).
    pub lazy: usize,
    /// How long an IHAVE waits for a batch to fill before it is sent.
    pub ihave_delay_us: Micros,
    /// How long after an IHAVE the node waits for the eager copy before it GRAFTs.
    pub graft_timeout_us: Micros,
    /// Anti-entropy period.
    pub sync_interval_us: Micros,
    /// Most events in one anti-entropy response.
    pub sync_batch_len_max: usize,
    /// Most events in one eager push.
    pub push_batch_len_max: usize,
    /// How often the peer view is refreshed from membership and RTT.
    pub view_refresh_us: Micros,
    /// Stream patterns this node stores and delivers; it relays everything else.
    pub interest: Vec<StreamPattern>,
    /// SWIM timings.
    pub swim: foca::Config,
}

impl MeshConfig {
    /// WAN defaults for a mesh of about `cluster_size` nodes.
    pub fn wan(cluster_size: u32) -> Self {
        let size =
            std::num::NonZeroU32::new(cluster_size.max(1)).unwrap_or(std::num::NonZeroU32::MIN);
        let mut swim = foca::Config::new_wan(size);
        // Probes cross oceans: allow the slowest measured pair (~330 ms RTT) several times.
        swim.probe_period = Duration::from_secs(2);
        swim.probe_rtt = Duration::from_millis(1_000);
        // After a partition heals the sides must find each other in seconds, not the
        // default minutes: announce to members we believe down every 5 s.
        swim.periodic_announce_to_down_members = Some(foca::PeriodicParams {
            frequency: Duration::from_secs(5),
            num_members: std::num::NonZeroUsize::MIN.saturating_add(2),
        });
        swim.periodic_announce = Some(foca::PeriodicParams {
            frequency: Duration::from_secs(15),
            num_members: std::num::NonZeroUsize::MIN.saturating_add(1),
        });
        Self {
            tree_arity: 8,
            near_region_rtt_us: 20_000,
            lazy: 3,
            ihave_delay_us: 20_000,
            graft_timeout_us: 120_000,
            sync_interval_us: 2_000_000,
            sync_batch_len_max: 512,
            push_batch_len_max: 64,
            view_refresh_us: 10_000_000,
            interest: vec![
                StreamPattern::new(">").unwrap_or_else(|_| unreachable!("'>' is a valid pattern")),
            ],
            swim,
        }
    }
}

/// Decides whether an event may go to a peer at all: applied before any peer is chosen for
/// an eager push, an IHAVE, a GRAFT answer or an anti-entropy transfer. Residency policy
/// (issue 6) implements it; the default allows everything.
pub trait ReplicationFilter: Send {
    /// Whether `event` may be sent to `peer`.
    fn allows(&self, event: &EventData, peer: &MemberInfo) -> bool;
}

/// The filter that allows every event to every peer.
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowAll;

impl ReplicationFilter for AllowAll {
    fn allows(&self, _event: &EventData, _peer: &MemberInfo) -> bool {
        true
    }
}

/// A message to send.
#[derive(Debug, Clone)]
pub struct Transmit {
    /// The peer's node key.
    pub to: OriginKey,
    /// The message; `msg.channel()` says which QUIC channel carries it.
    pub msg: Message,
}

/// Something for the application or the operator.
#[derive(Debug, Clone)]
pub enum AppEvent {
    /// An event for local subscribers: in per-origin order, exactly once per node lifetime
    /// of the store.
    Deliver(Arc<Event>),
    /// A member joined or came back.
    MemberUp(MemberInfo),
    /// A member was declared down.
    MemberDown(MemberInfo),
}

/// Counters, for metrics and the simulator's report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Events accepted for the first time.
    pub events_new: u64,
    /// Events received again (pushes, grafts or syncs of something already held).
    pub events_duplicate: u64,
    /// Events refused by the store (full, equivocation).
    pub events_refused: u64,
    /// Eager push messages sent.
    pub pushes_sent: u64,
    /// IHAVE messages sent.
    pub ihaves_sent: u64,
    /// GRAFT messages sent.
    pub grafts_sent: u64,
    /// Events sent by anti-entropy.
    pub sync_events_sent: u64,
    /// Events received through anti-entropy that were new.
    pub sync_events_new: u64,
    /// Announcements ignored because the missing table was full.
    pub missing_dropped: u64,
    /// Transmits dropped because the queue was full (driver bug).
    pub transmits_dropped: u64,
    /// Sends withheld by the replication filter.
    pub filtered: u64,
    /// Events delivered to the application.
    pub delivered: u64,
    /// SWIM errors (undecodable or unexpected membership packets).
    pub swim_errors: u64,
}

#[derive(Debug, Clone)]
enum Timer {
    Swim(foca::Timer<MemberInfo>),
    Graft(EventId),
    FlushIHave,
    Sync,
    ViewRefresh,
}

#[derive(Debug)]
struct Missing {
    event: EventRef,
    announcers: VecDeque<OriginKey>,
}

#[derive(Debug, Default)]
struct PeerState {
    rtt_samples: VecDeque<Micros>,
    /// Minimum of `rtt_samples`, kept up to date on every sample.
    rtt_min_us: Option<Micros>,
    last_sync_us: Option<Micros>,
    held: u64,
}

impl PeerState {
    fn rtt_us(&self) -> Option<Micros> {
        self.rtt_min_us
    }
}

/// Collects what foca asks of its runtime during one call.
#[derive(Default)]
struct SwimRuntime {
    sends: Vec<(MemberInfo, Vec<u8>)>,
    timers: Vec<(foca::Timer<MemberInfo>, Duration)>,
    notes: Vec<OwnedNotification<MemberInfo>>,
}

impl foca::Runtime<MemberInfo> for SwimRuntime {
    fn notify(&mut self, notification: foca::Notification<'_, MemberInfo>) {
        self.notes.push(notification.to_owned());
    }
    fn send_to(&mut self, to: MemberInfo, data: &[u8]) {
        self.sends.push((to, data.to_vec()));
    }
    fn submit_after(&mut self, event: foca::Timer<MemberInfo>, after: Duration) {
        self.timers.push((event, after));
    }
}

/// One mesh node, as a deterministic state machine with no I/O.
///
/// # Method classes
///
/// - **Inputs** (`handle_*`): [`Node::handle_message`] (a message from a peer),
///   [`Node::handle_timeout`] (time has reached [`Node::poll_timeout`]),
///   [`Node::handle_rtt_sample`] (the transport measured a round trip),
///   [`Node::handle_publish`] (a local producer's signed event), [`Node::join`] (contact
///   seed members). Every input takes `now`, the driver's monotonic time in microseconds,
///   which must never go backwards.
/// - **Outputs** (`poll_*`): [`Node::poll_transmit`] (messages to send, each naming its
///   channel), [`Node::poll_event`] (deliveries and membership changes for the application),
///   [`Node::poll_timeout`] (when to call `handle_timeout` next).
///
/// # Polling order
///
/// After every input, drain `poll_transmit` until `None`, then `poll_event` until `None`,
/// then read `poll_timeout` and arm one timer for it. Outputs are queued in bounded queues;
/// a driver that does not drain loses transmits (counted in [`Stats::transmits_dropped`]),
/// never events: deliveries pause at [`APP_QUEUE_LEN_MAX`] and resume from the per-origin
/// cursor.
///
/// # Preconditions
///
/// Events passed in have verified signatures (the type says so). The driver authenticates
/// peers: `from` in `handle_message` is the peer's verified node key.
pub struct Node<S: Store> {
    me: MemberInfo,
    config: MeshConfig,
    foca: Foca<MemberInfo, PostcardCodec, ChaCha8Rng, NoCustomBroadcast>,
    rng: ChaCha8Rng,
    store: S,
    filter: Box<dyn ReplicationFilter>,
    members: BTreeMap<OriginKey, MemberInfo>,
    peers: BTreeMap<OriginKey, PeerState>,
    lazy: BTreeSet<OriginKey>,
    /// Live members by region, this node included, each list sorted by key.
    regions: BTreeMap<String, Vec<OriginKey>>,
    /// Sequence numbers accepted per origin (stored, or relayed when outside interest).
    seen: BTreeMap<OriginKey, SeqRanges>,
    /// Next sequence number to deliver per origin, minus one.
    delivered: BTreeMap<OriginKey, u64>,
    relay_cache: BTreeMap<EventId, Arc<Event>>,
    relay_order: VecDeque<EventId>,
    missing: BTreeMap<EventId, Missing>,
    pending_ihave: BTreeMap<OriginKey, Vec<EventRef>>,
    timers: BTreeMap<(Micros, u64), Timer>,
    timer_seq: u64,
    transmits: VecDeque<Transmit>,
    app: VecDeque<AppEvent>,
    /// Origins whose delivery paused because the app queue was full.
    delivery_paused: BTreeSet<OriginKey>,
    /// Anti-entropy rounds started.
    sync_rounds: u64,
    stats: Stats,
    now: Micros,
}

impl<S: Store> std::fmt::Debug for Node<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("me", &self.me.addr)
            .field("members", &self.members.len())
            .field("lazy", &self.lazy.len())
            .field("stored", &self.store.len())
            .finish_non_exhaustive()
    }
}

impl<S: Store> Node<S> {
    /// A node with identity `me`, randomness derived from `seed`, and `store` (which may
    /// already hold events from before a restart).
    pub fn new(me: MemberInfo, config: MeshConfig, seed: u64, store: S, now: Micros) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let foca_rng = ChaCha8Rng::seed_from_u64(rng.next_u64());
        let foca = Foca::new(me.clone(), config.swim.clone(), foca_rng, PostcardCodec);
        let mut seen = BTreeMap::new();
        let mut delivered = BTreeMap::new();
        for origin in store.origins() {
            if let Some(r) = store.ranges(&origin) {
                seen.insert(origin, r.clone());
                // A restarted node has delivered what it stored (the node's durable
                // subscription cursors refine this in issue 4).
                delivered.insert(origin, r.contiguous());
            }
        }
        let mut node = Self {
            me,
            config,
            foca,
            rng,
            store,
            filter: Box::new(AllowAll),
            members: BTreeMap::new(),
            peers: BTreeMap::new(),
            lazy: BTreeSet::new(),
            regions: BTreeMap::new(),
            seen,
            delivered,
            relay_cache: BTreeMap::new(),
            relay_order: VecDeque::new(),
            missing: BTreeMap::new(),
            pending_ihave: BTreeMap::new(),
            timers: BTreeMap::new(),
            timer_seq: 0,
            transmits: VecDeque::new(),
            app: VecDeque::new(),
            delivery_paused: BTreeSet::new(),
            sync_rounds: 0,
            stats: Stats::default(),
            now,
        };
        node.refresh_view();
        let jitter = node.rng.next_u64() % node.config.sync_interval_us.max(1);
        node.schedule(now + node.config.sync_interval_us + jitter, Timer::Sync);
        node.schedule(now + node.config.view_refresh_us, Timer::ViewRefresh);
        node
    }

    /// Replaces the replication filter (policy installs the residency filter here).
    pub fn set_filter(&mut self, filter: Box<dyn ReplicationFilter>) {
        self.filter = filter;
    }

    /// This node's member record.
    pub fn me(&self) -> &MemberInfo {
        &self.me
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The store, for the driver's own records next to the events (log positions, cursors,
    /// peers). Inserting or removing events through it bypasses the node's bookkeeping.
    pub fn store_mut(&mut self) -> &mut S {
        &mut self.store
    }

    /// Takes the store out (the simulator keeps it across a crash that keeps the disk).
    pub fn into_store(self) -> S {
        self.store
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Members currently up (excluding this node).
    pub fn members(&self) -> impl Iterator<Item = &MemberInfo> {
        self.members.values()
    }

    /// Current lazy peers.
    pub fn lazy_peers(&self) -> impl Iterator<Item = &OriginKey> {
        self.lazy.iter()
    }

    /// The RTT estimate to `peer`, if measured.
    pub fn rtt_us(&self, peer: &OriginKey) -> Option<Micros> {
        self.peers.get(peer).and_then(PeerState::rtt_us)
    }

    // ------------------------------------------------------------------ inputs

    /// Contacts seed members to join the mesh.
    pub fn join(&mut self, now: Micros, seeds: &[MemberInfo]) {
        self.advance(now);
        let me = self.me.key;
        for seed in seeds.iter().filter(|s| s.key != me) {
            let mut rt = SwimRuntime::default();
            if self.foca.announce(seed.clone(), &mut rt).is_err() {
                self.stats.swim_errors += 1;
            }
            self.apply_swim(rt);
        }
    }

    /// A round-trip time measured by the transport to `peer`.
    pub fn handle_rtt_sample(&mut self, now: Micros, peer: OriginKey, rtt_us: Micros) {
        self.advance(now);
        let state = self.peers.entry(peer).or_default();
        if state.rtt_samples.len() == RTT_WINDOW_LEN {
            state.rtt_samples.pop_front();
        }
        state.rtt_samples.push_back(rtt_us);
        state.rtt_min_us = state.rtt_samples.iter().min().copied();
    }

    /// A signed event from a local producer: store, deliver locally, disseminate.
    pub fn handle_publish(&mut self, now: Micros, event: Arc<Event>) -> Result<(), StoreError> {
        self.advance(now);
        match self.accept(event.clone())? {
            Inserted::Duplicate => Ok(()),
            Inserted::New => {
                let me = self.me.node_key();
                self.forward(&[event], Some(me), true, true);
                Ok(())
            }
        }
    }

    /// Signed events from local producers, published together: each is stored and
    /// delivered as by [`Node::handle_publish`], and the new ones are disseminated in shared
    /// pushes (one message per peer and batch instead of one per event). Returns one result
    /// per event, in order; a refused event does not stop the others.
    pub fn handle_publish_batch(
        &mut self,
        now: Micros,
        events: Vec<Arc<Event>>,
    ) -> Vec<Result<(), StoreError>> {
        self.advance(now);
        let mut fresh = Vec::with_capacity(events.len());
        let mut results = Vec::with_capacity(events.len());
        for event in events {
            results.push(match self.accept(event.clone()) {
                Ok(Inserted::New) => {
                    fresh.push(event);
                    Ok(())
                }
                Ok(Inserted::Duplicate) => Ok(()),
                Err(e) => Err(e),
            });
        }
        let me = self.me.node_key();
        self.forward(&fresh, Some(me), true, true);
        results
    }

    /// A message from peer `from` (authenticated by the transport).
    pub fn handle_message(&mut self, now: Micros, from: OriginKey, msg: Message) {
        self.advance(now);
        match msg {
            Message::Swim(bytes) => {
                let mut rt = SwimRuntime::default();
                if self.foca.handle_data(&bytes, &mut rt).is_err() {
                    self.stats.swim_errors += 1;
                }
                self.apply_swim(rt);
            }
            Message::Push(events) => self.on_push(from, events),
            Message::IHave(refs) => self.on_ihave(from, refs),
            Message::Graft(refs) => self.on_graft(from, refs),
            Message::SyncRequest {
                digest,
                from_origin,
            } => self.on_sync_request(from, digest, from_origin),
            Message::SyncResponse {
                events,
                resume,
                held,
            } => {
                self.peers.entry(from).or_default().held = held;
                let mut fresh = Vec::new();
                for event in events {
                    if let Ok(Inserted::New) = self.accept(event.clone()) {
                        self.stats.sync_events_new += 1;
                        fresh.push(event);
                    }
                }
                // Repaired events travel on lazily: peers that lack them GRAFT.
                self.forward(&fresh, Some(from), false, false);
                if let Some(origin) = resume {
                    let digest = self.digest();
                    self.send(
                        from,
                        Message::SyncRequest {
                            digest,
                            from_origin: Some(origin),
                        },
                    );
                }
            }
        }
    }

    /// Time has reached a deadline from [`Node::poll_timeout`].
    pub fn handle_timeout(&mut self, now: Micros) {
        self.advance(now);
        // Bounded: each timer fires once; timers they schedule are for the future.
        while let Some((&(at, seq), _)) = self.timers.first_key_value() {
            if at > now {
                break;
            }
            let Some(timer) = self.timers.remove(&(at, seq)) else {
                break;
            };
            match timer {
                Timer::Swim(t) => {
                    let mut rt = SwimRuntime::default();
                    if self.foca.handle_timer(t, &mut rt).is_err() {
                        self.stats.swim_errors += 1;
                    }
                    self.apply_swim(rt);
                }
                Timer::Graft(id) => self.on_graft_timer(id),
                Timer::FlushIHave => self.flush_ihave(),
                Timer::Sync => {
                    self.start_sync();
                    let next = now + self.config.sync_interval_us;
                    self.schedule(next, Timer::Sync);
                }
                Timer::ViewRefresh => {
                    // The region lists are kept up to date on every membership change; only
                    // the lazy peers need re-ranking as RTT samples arrive.
                    self.refresh_lazy();
                    let next = now + self.config.view_refresh_us;
                    self.schedule(next, Timer::ViewRefresh);
                }
            }
        }
    }

    // ------------------------------------------------------------------ outputs

    /// The next message to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next delivery or membership change.
    pub fn poll_event(&mut self) -> Option<AppEvent> {
        if self.app.is_empty() && !self.delivery_paused.is_empty() {
            let paused = std::mem::take(&mut self.delivery_paused);
            for origin in paused {
                self.advance_delivery(origin);
            }
        }
        self.app.pop_front()
    }

    /// When [`Node::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Micros> {
        self.timers.first_key_value().map(|(&(at, _), _)| at)
    }

    // ------------------------------------------------------------------ invariants

    /// Checks the node's internal invariants; panics with a description if one is broken.
    /// The simulator calls it after every step.
    pub fn check_invariants(&self) {
        let me = self.me.node_key();
        assert!(!self.lazy.contains(&me), "self in lazy set");
        assert!(self.lazy.len() <= LAZY_MAX, "lazy set over limit");
        assert!(
            self.lazy.iter().all(|k| self.members.contains_key(k)),
            "lazy peer is not a live member"
        );
        assert!(
            self.regions
                .get(&self.me.region)
                .is_some_and(|r| r.binary_search(&me).is_ok()),
            "this node is missing from its region's member list"
        );
        assert!(
            self.transmits.len() <= TRANSMIT_QUEUE_LEN_MAX,
            "transmit queue over limit"
        );
        assert!(
            self.missing.len() <= MISSING_LEN_MAX,
            "missing table over limit"
        );
        assert!(
            self.relay_cache.len() <= RELAY_CACHE_LEN_MAX,
            "relay cache over limit"
        );
        assert_eq!(
            self.relay_cache.len(),
            self.relay_order.len(),
            "relay cache index out of step"
        );
        assert!(
            self.pending_ihave
                .values()
                .all(|p| p.len() < REFS_PER_MESSAGE_MAX),
            "pending IHAVE batch over limit"
        );
        for (id, m) in &self.missing {
            assert!(!self.store.contains(id), "missing event is stored");
            assert!(m.announcers.len() <= ANNOUNCERS_MAX);
        }
        // Both maps are ordered by origin: walk them together instead of a lookup per
        // origin (the simulator runs this after every step).
        let mut seen = self.seen.iter().peekable();
        for (origin, cursor) in &self.delivered {
            while seen.next_if(|(o, _)| *o < origin).is_some() {}
            let upto = seen
                .peek()
                .filter(|(o, _)| *o == origin)
                .map_or(0, |(_, r)| r.contiguous());
            assert!(*cursor <= upto, "delivered past what was seen");
        }
    }

    // ------------------------------------------------------------------ internals

    fn advance(&mut self, now: Micros) {
        debug_assert!(now >= self.now, "time went backwards");
        self.now = self.now.max(now);
    }

    fn schedule(&mut self, at: Micros, timer: Timer) {
        self.timer_seq += 1;
        self.timers.insert((at, self.timer_seq), timer);
    }

    fn send(&mut self, to: OriginKey, msg: Message) {
        if self.transmits.len() >= TRANSMIT_QUEUE_LEN_MAX {
            self.stats.transmits_dropped += 1;
            return;
        }
        self.transmits.push_back(Transmit { to, msg });
    }

    fn apply_swim(&mut self, rt: SwimRuntime) {
        for (to, data) in rt.sends {
            self.send(OriginKey(to.key), Message::Swim(data));
        }
        for (timer, after) in rt.timers {
            let at = self.now + u64::try_from(after.as_micros()).unwrap_or(u64::MAX / 2);
            self.schedule(at, Timer::Swim(timer));
        }
        let mut changed = false;
        for note in rt.notes {
            match note {
                OwnedNotification::MemberUp(m) => {
                    changed = true;
                    let key = OriginKey(m.key);
                    if let Some(old) = self.members.insert(key, m.clone()) {
                        self.region_remove(&old.region, &key);
                    }
                    self.region_insert(&m.region, key);
                    self.push_app(AppEvent::MemberUp(m));
                }
                OwnedNotification::MemberDown(m) => {
                    let key = OriginKey(m.key);
                    // A stale generation going down while a newer one is up changes nothing.
                    if self
                        .members
                        .get(&key)
                        .is_some_and(|cur| cur.generation <= m.generation)
                    {
                        changed = true;
                        if let Some(old) = self.members.remove(&key) {
                            self.region_remove(&old.region, &key);
                        }
                        self.lazy.remove(&key);
                        self.push_app(AppEvent::MemberDown(m));
                    }
                }
                OwnedNotification::Rename(_, new) => {
                    changed = true;
                    let key = OriginKey(new.key);
                    if let Some(old) = self.members.insert(key, new.clone()) {
                        self.region_remove(&old.region, &key);
                    }
                    self.region_insert(&new.region, key);
                }
                OwnedNotification::Defunct => {
                    // The mesh declared us down (we were cut off): come back with a new
                    // generation so members accept us again.
                    if let Some(next) = foca::Identity::renew(&self.me) {
                        let mut rt2 = SwimRuntime::default();
                        if self.foca.change_identity(next.clone(), &mut rt2).is_ok() {
                            self.me = next;
                        } else {
                            self.stats.swim_errors += 1;
                        }
                        // Apply the follow-up sends and timers (no recursion into notes).
                        for (to, data) in rt2.sends {
                            self.send(OriginKey(to.key), Message::Swim(data));
                        }
                        for (timer, after) in rt2.timers {
                            let at =
                                self.now + u64::try_from(after.as_micros()).unwrap_or(u64::MAX / 2);
                            self.schedule(at, Timer::Swim(timer));
                        }
                    }
                }
                _ => {}
            }
        }
        // Lazy peers are re-ranked by the periodic view refresh; here only fill a short set
        // (cheap: membership changes arrive one at a time, a thousand at start-up).
        if changed && self.lazy.len() < self.config.lazy.min(LAZY_MAX) {
            self.refresh_lazy();
        }
    }

    fn region_insert(&mut self, region: &str, key: OriginKey) {
        // Look up by `&str` first: the region is almost always known already, and
        // `entry` would allocate its key on every call.
        let list = match self.regions.get_mut(region) {
            Some(list) => list,
            None => self.regions.entry(region.to_string()).or_default(),
        };
        if let Err(at) = list.binary_search(&key) {
            list.insert(at, key);
        }
    }

    fn region_remove(&mut self, region: &str, key: &OriginKey) {
        if *key == self.me.node_key() {
            return;
        }
        if let Some(list) = self.regions.get_mut(region) {
            if let Ok(at) = list.binary_search(key) {
                list.remove(at);
            }
            if list.is_empty() {
                self.regions.remove(region);
            }
        }
    }

    fn push_app(&mut self, event: AppEvent) {
        // Membership notes are few; they may exceed the soft limit rather than be lost.
        self.app.push_back(event);
    }

    /// Builds the per-region member lists from scratch (at construction; afterwards they are
    /// maintained incrementally) and picks lazy peers: the nearest by measured
    /// RTT (with hysteresis, so near-equal peers do not flap), plus one at random from
    /// another region.
    fn refresh_view(&mut self) {
        let me = self.me.node_key();
        self.regions.clear();
        self.regions
            .entry(self.me.region.clone())
            .or_default()
            .push(me);
        for (k, m) in &self.members {
            if *k != me {
                self.regions.entry(m.region.clone()).or_default().push(*k);
            }
        }
        for list in self.regions.values_mut() {
            list.sort();
        }
        self.refresh_lazy();
    }

    /// Picks the lazy peers (see [`Node::refresh_view`]).
    fn refresh_lazy(&mut self) {
        let me = self.me.node_key();
        self.lazy
            .retain(|k| self.members.contains_key(k) && *k != me);
        let want = self.config.lazy.min(LAZY_MAX);
        let rtt = |k: &OriginKey| self.peers.get(k).and_then(PeerState::rtt_us);
        let mut by_rtt: Vec<(Micros, OriginKey)> = self
            .members
            .keys()
            .filter(|k| **k != me)
            .map(|k| (rtt(k).unwrap_or(Micros::MAX), *k))
            .collect();
        by_rtt.sort();
        // Near: the nearest `want - 1`, replacing a current lazy peer only when clearly
        // nearer (hysteresis).
        let near_target = want.saturating_sub(1);
        for (r, k) in by_rtt.iter().take(near_target) {
            if self.lazy.contains(k) {
                continue;
            }
            if self.lazy.len() < want {
                self.lazy.insert(*k);
                continue;
            }
            let worst = self
                .lazy
                .iter()
                .map(|l| (rtt(l).unwrap_or(Micros::MAX), *l))
                .max();
            if let Some((w, wk)) = worst
                && *r != Micros::MAX
                && r.saturating_mul(100) < w.saturating_mul(RTT_HYSTERESIS_PCT)
            {
                self.lazy.remove(&wk);
                self.lazy.insert(*k);
            }
        }
        // Far: one random member of another region, if there is room.
        let others: Vec<OriginKey> = self
            .members
            .iter()
            .filter(|(k, m)| **k != me && m.region != self.me.region && !self.lazy.contains(*k))
            .map(|(k, _)| *k)
            .collect();
        if self.lazy.len() < want && !others.is_empty() {
            let k = others[(self.rng.next_u64() % others.len() as u64) as usize];
            self.lazy.insert(k);
        }
    }

    /// The members of `region` in the dissemination order for `origin`: the origin first if
    /// it is a member there, then by rendezvous hash of (origin, member).
    fn region_order(&self, origin: &OriginKey, region: &str) -> Vec<OriginKey> {
        let Some(list) = self.regions.get(region) else {
            return Vec::new();
        };
        let mut order: Vec<(u64, OriginKey)> = list
            .iter()
            .map(|m| {
                (
                    if m == origin {
                        0
                    } else {
                        1 + rank(origin, m) / 2
                    },
                    *m,
                )
            })
            .collect();
        order.sort_unstable();
        order.into_iter().map(|(_, k)| k).collect()
    }

    /// Where this node pushes an event of `origin`: as the publisher, to the root of every
    /// region's tree (or, for its own region's tree if it is the root, to its children);
    /// otherwise to its children in its own region's tree.
    fn tree_targets(&self, origin: &OriginKey, publishing: bool) -> Vec<OriginKey> {
        let me = self.me.node_key();
        let arity = self.config.tree_arity.clamp(1, TREE_ARITY_MAX);
        let children = |order: &[OriginKey]| -> Vec<OriginKey> {
            match order.iter().position(|k| *k == me) {
                Some(i) => order
                    .iter()
                    .skip(i * arity + 1)
                    .take(arity)
                    .copied()
                    .collect(),
                None => Vec::new(),
            }
        };
        if !publishing {
            return children(&self.region_order(origin, &self.me.region));
        }
        let mut out = Vec::new();
        for (region, members) in &self.regions {
            let near = *region != self.me.region
                && members
                    .iter()
                    .filter_map(|m| self.peers.get(m).and_then(PeerState::rtt_us))
                    .min()
                    .is_some_and(|rtt| rtt < self.config.near_region_rtt_us);
            if near {
                out.extend(members.iter().copied());
                continue;
            }
            let order = self.region_order(origin, region);
            match order.first() {
                Some(root) if *root == me => out.extend(children(&order)),
                Some(root) => out.push(*root),
                None => {}
            }
        }
        out
    }

    /// Stores (or relays) a new event and delivers what is now in order.
    fn accept(&mut self, event: Arc<Event>) -> Result<Inserted, StoreError> {
        let id = event.id();
        let origin = event.origin();
        let seq = event.seq();
        if self.store.contains(&id) || self.relay_cache.contains_key(&id) {
            self.stats.events_duplicate += 1;
            // Held, but the seen-set may have dropped it at its range limit: re-record it
            // so delivery and digests move on.
            if self.seen.entry(origin).or_default().insert(seq) {
                self.advance_delivery(origin);
            }
            return Ok(Inserted::Duplicate);
        }
        if self.seen.get(&origin).is_some_and(|r| r.contains(seq)) {
            self.stats.events_duplicate += 1;
            return Ok(Inserted::Duplicate);
        }
        let interested = self
            .config
            .interest
            .iter()
            .any(|p| p.matches(event.stream()));
        if interested {
            match self.store.insert(event) {
                Ok(Inserted::Duplicate) => {
                    self.stats.events_duplicate += 1;
                    return Ok(Inserted::Duplicate);
                }
                Ok(Inserted::New) => {}
                Err(e) => {
                    self.stats.events_refused += 1;
                    return Err(e);
                }
            }
        } else {
            if self.relay_order.len() >= RELAY_CACHE_LEN_MAX
                && let Some(old) = self.relay_order.pop_front()
            {
                self.relay_cache.remove(&old);
            }
            self.relay_cache.insert(id, event);
            self.relay_order.push_back(id);
        }
        self.stats.events_new += 1;
        self.seen.entry(origin).or_default().insert(seq);
        self.missing.remove(&id);
        self.advance_delivery(origin);
        Ok(Inserted::New)
    }

    /// Delivers stored events of `origin` in sequence order from its cursor.
    fn advance_delivery(&mut self, origin: OriginKey) {
        let Some(seen) = self.seen.get(&origin) else {
            return;
        };
        let upto = seen.contiguous();
        let cursor = self.delivered.entry(origin).or_insert(0);
        while *cursor < upto {
            if self.app.len() >= APP_QUEUE_LEN_MAX {
                self.delivery_paused.insert(origin);
                return;
            }
            *cursor += 1;
            if let Some(event) = self.store.get(&origin, *cursor) {
                self.stats.delivered += 1;
                self.app.push_back(AppEvent::Deliver(event));
            }
        }
    }

    /// Pushes `events` down their trees (as publisher or relay) and queues IHAVEs for the
    /// lazy peers, skipping `except` (where they came from). With `eager` false (events
    /// repaired by anti-entropy) it only announces.
    fn forward(
        &mut self,
        events: &[Arc<Event>],
        except: Option<OriginKey>,
        eager: bool,
        publishing: bool,
    ) {
        if events.is_empty() {
            return;
        }
        let me = self.me.node_key();
        if eager {
            let mut batches: BTreeMap<OriginKey, Vec<Arc<Event>>> = BTreeMap::new();
            for event in events {
                for target in self.tree_targets(&event.origin(), publishing) {
                    if Some(target) != except && target != me {
                        batches.entry(target).or_default().push(event.clone());
                    }
                }
            }
            for (peer, batch) in batches {
                let batch = self.allowed(&batch, &peer);
                for chunk in batches_of(&batch, self.config.push_batch_len_max) {
                    self.stats.pushes_sent += 1;
                    self.send(peer, Message::Push(chunk.to_vec()));
                }
            }
        }
        let lazy: Vec<OriginKey> = self
            .lazy
            .iter()
            .copied()
            .filter(|p| Some(*p) != except)
            .collect();
        for peer in lazy {
            let batch = self.allowed(events, &peer);
            self.announce(peer, &batch);
        }
    }

    /// Queues IHAVEs for `events` to `peer`, sent in one batch after `ihave_delay_us`.
    fn announce(&mut self, peer: OriginKey, events: &[Arc<Event>]) {
        if events.is_empty() {
            return;
        }
        if self.pending_ihave.is_empty() {
            let at = self.now + self.config.ihave_delay_us;
            self.schedule(at, Timer::FlushIHave);
        }
        let pending = self.pending_ihave.entry(peer).or_default();
        pending.extend(events.iter().map(|e| EventRef::of(e)));
        // Bounded: a full message's worth goes out at once instead of waiting.
        if pending.len() >= REFS_PER_MESSAGE_MAX {
            let full: Vec<EventRef> = std::mem::take(pending);
            for chunk in full.chunks(REFS_PER_MESSAGE_MAX) {
                self.stats.ihaves_sent += 1;
                self.send(peer, Message::IHave(chunk.to_vec()));
            }
        }
    }

    /// The events the replication filter lets go to `peer`.
    fn allowed(&mut self, events: &[Arc<Event>], peer: &OriginKey) -> Vec<Arc<Event>> {
        let Some(info) = self.members.get(peer) else {
            // Not a known member (yet): nothing may go there until membership says who it is.
            self.stats.filtered += events.len() as u64;
            return Vec::new();
        };
        let mut out = Vec::with_capacity(events.len());
        for e in events {
            if self.filter.allows(e, info) {
                out.push(e.clone());
            } else {
                self.stats.filtered += 1;
            }
        }
        out
    }

    fn flush_ihave(&mut self) {
        let pending = std::mem::take(&mut self.pending_ihave);
        for (peer, refs) in pending {
            for chunk in refs.chunks(REFS_PER_MESSAGE_MAX) {
                self.stats.ihaves_sent += 1;
                self.send(peer, Message::IHave(chunk.to_vec()));
            }
        }
    }

    fn on_push(&mut self, from: OriginKey, events: Vec<Arc<Event>>) {
        let mut fresh = Vec::new();
        for event in events {
            if let Ok(Inserted::New) = self.accept(event.clone()) {
                fresh.push(event);
            }
        }
        self.forward(&fresh, Some(from), true, false);
    }

    fn on_ihave(&mut self, from: OriginKey, refs: Vec<EventRef>) {
        for r in refs.into_iter().take(REFS_PER_MESSAGE_MAX) {
            if self.store.contains(&r.id)
                || self.relay_cache.contains_key(&r.id)
                || self.seen.get(&r.origin).is_some_and(|s| s.contains(r.seq))
            {
                continue;
            }
            if let Some(m) = self.missing.get_mut(&r.id) {
                if m.announcers.len() < ANNOUNCERS_MAX && !m.announcers.contains(&from) {
                    m.announcers.push_back(from);
                }
                continue;
            }
            if self.missing.len() >= MISSING_LEN_MAX {
                self.stats.missing_dropped += 1;
                continue;
            }
            self.missing.insert(
                r.id,
                Missing {
                    event: r,
                    announcers: VecDeque::from([from]),
                },
            );
            let at = self.now + self.config.graft_timeout_us;
            self.schedule(at, Timer::Graft(r.id));
        }
    }

    fn on_graft_timer(&mut self, id: EventId) {
        let Some(m) = self.missing.get_mut(&id) else {
            return;
        };
        let Some(peer) = m.announcers.pop_front() else {
            self.missing.remove(&id);
            return;
        };
        let r = m.event;
        let retry = !m.announcers.is_empty();
        if !retry {
            self.missing.remove(&id);
        }
        if self.members.contains_key(&peer) {
            self.stats.grafts_sent += 1;
            self.send(peer, Message::Graft(vec![r]));
        }
        if retry {
            let at = self.now + self.config.graft_timeout_us;
            self.schedule(at, Timer::Graft(id));
        }
    }

    fn on_graft(&mut self, from: OriginKey, refs: Vec<EventRef>) {
        let mut events = Vec::new();
        for r in refs.into_iter().take(REFS_PER_MESSAGE_MAX) {
            if let Some(e) = self
                .store
                .get(&r.origin, r.seq)
                .or_else(|| self.relay_cache.get(&r.id).cloned())
                && e.id() == r.id
            {
                events.push(e);
            }
        }
        let events = self.allowed(&events, &from);
        if !events.is_empty() {
            self.stats.pushes_sent += 1;
            self.send(from, Message::Push(events));
        }
    }

    fn digest(&self) -> Digest {
        self.seen
            .iter()
            .map(|(o, r)| (*o, r.iter().collect()))
            .collect()
    }

    /// Starts an anti-entropy round with the best partner: the one known to hold the most
    /// more than we do, else the one synced least recently, ties broken by RTT. Every other
    /// round instead goes to a random member of another region: a whole region can miss the
    /// same event (its tree root was unreachable), and "nearest" would then keep pairing
    /// nodes that all lack it.
    fn start_sync(&mut self) {
        let me = self.me.node_key();
        self.sync_rounds += 1;
        if self.sync_rounds.is_multiple_of(2) {
            let others = || {
                self.members
                    .iter()
                    .filter(|(k, m)| **k != me && m.region != self.me.region)
                    .map(|(k, _)| *k)
            };
            let count = others().count();
            if count > 0 {
                let pick = (self.rng.next_u64() % count as u64) as usize;
                let Some(partner) = others().nth(pick) else {
                    return;
                };
                self.peers.entry(partner).or_default().last_sync_us = Some(self.now);
                let digest = self.digest();
                self.send(
                    partner,
                    Message::SyncRequest {
                        digest,
                        from_origin: None,
                    },
                );
                return;
            }
        }
        let held = self.store.len() as u64;
        // `members` and `peers` are both ordered by key: walk them together rather than
        // look each member up (this runs every sync interval over every member).
        let mut peers = self.peers.iter().peekable();
        let partner = self
            .members
            .keys()
            .filter(|k| **k != me)
            .map(|k| {
                while peers.next_if(|(pk, _)| *pk < k).is_some() {}
                let p = peers.peek().filter(|(pk, _)| *pk == k).map(|(_, p)| *p);
                let more = p.map_or(0, |p| p.held.saturating_sub(held));
                let last = p.and_then(|p| p.last_sync_us).unwrap_or(0);
                let rtt = p.and_then(PeerState::rtt_us).unwrap_or(Micros::MAX);
                // Most missing first (descending), then stalest, then nearest.
                (std::cmp::Reverse(more), last, rtt, *k)
            })
            .min()
            .map(|(_, _, _, k)| k);
        let Some(partner) = partner else {
            return;
        };
        self.peers.entry(partner).or_default().last_sync_us = Some(self.now);
        let digest = self.digest();
        self.send(
            partner,
            Message::SyncRequest {
                digest,
                from_origin: None,
            },
        );
    }

    fn on_sync_request(&mut self, from: OriginKey, digest: Digest, from_origin: Option<OriginKey>) {
        // The digest as a list sorted by origin (a later duplicate of an origin replaces an
        // earlier one). Digests arrive sorted and with normalized ranges (they are built
        // from ordered sets), so this is usually just a check: building a set per origin
        // of every digest was most of a 1000-node simulation's time.
        let mut theirs: Digest = digest;
        theirs.truncate(DIGEST_ORIGINS_MAX);
        if !theirs.windows(2).all(|w| w[0].0 < w[1].0) {
            theirs.sort_by_key(|entry| entry.0); // stable: duplicates keep their order
            let mut dedup: Digest = Vec::with_capacity(theirs.len());
            for entry in theirs {
                match dedup.last_mut() {
                    Some(last) if last.0 == entry.0 => *last = entry,
                    _ => dedup.push(entry),
                }
            }
            theirs = dedup;
        }
        let mut events = Vec::new();
        let mut resume = None;
        let mut bytes = 0usize;
        let limit = self.config.sync_batch_len_max.max(1);
        let empty = SeqRanges::new();
        for origin in self
            .store
            .origins()
            .into_iter()
            .filter(|o| from_origin.is_none_or(|f| *o >= f))
        {
            let Some(mine) = self.store.ranges(&origin) else {
                continue;
            };
            let room = limit - events.len();
            let lacking = match theirs.binary_search_by(|(o, _)| o.cmp(&origin)) {
                Err(_) => mine.difference(&empty, room + 1),
                Ok(at) if SeqRanges::is_normalized(&theirs[at].1) => {
                    mine.difference_normalized(&theirs[at].1, room + 1)
                }
                Ok(at) => mine.difference(
                    &SeqRanges::from_ranges(theirs[at].1.iter().copied()),
                    room + 1,
                ),
            };
            let mut cut = false;
            for seq in lacking.iter().take(room) {
                if let Some(e) = self.store.get(&origin, *seq) {
                    bytes += e.signed_bytes().len() + 64;
                    events.push(e);
                    if bytes >= BATCH_BYTES_MAX {
                        cut = true;
                        break;
                    }
                }
            }
            if cut || lacking.len() > room {
                resume = Some(origin);
                break;
            }
        }
        let events = self.allowed(&events, &from);
        self.stats.sync_events_sent += events.len() as u64;
        let held = self.store.len() as u64;
        self.send(
            from,
            Message::SyncResponse {
                events,
                resume,
                held,
            },
        );
    }
}

/// Splits `events` into batches of at most `len_max` events and [`BATCH_BYTES_MAX`] bytes
/// (a single larger event still travels, alone).
fn batches_of(events: &[Arc<Event>], len_max: usize) -> Vec<&[Arc<Event>]> {
    let len_max = len_max.max(1);
    let mut out = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (i, event) in events.iter().enumerate() {
        let len = event.signed_bytes().len() + 64;
        if i > start && (i - start == len_max || bytes + len > BATCH_BYTES_MAX) {
            out.push(&events[start..i]);
            start = i;
            bytes = 0;
        }
        bytes += len;
    }
    if start < events.len() {
        out.push(&events[start..]);
    }
    out
}

/// Rendezvous rank of `member` for `origin`: a fixed mixing function (splitmix64) of both
/// keys, the same on every node and every run.
fn rank(origin: &OriginKey, member: &OriginKey) -> u64 {
    let word = |k: &OriginKey, at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&k.0[at..at + 8]);
        u64::from_le_bytes(b)
    };
    splitmix64(
        word(origin, 0)
            ^ splitmix64(word(member, 0) ^ word(member, 8))
            ^ word(origin, 8).rotate_left(17),
    )
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wan_config_is_sane() {
        let c = MeshConfig::wan(100);
        assert!((1..=TREE_ARITY_MAX).contains(&c.tree_arity));
        assert!(c.lazy <= LAZY_MAX);
        assert!(c.graft_timeout_us > c.ihave_delay_us);
    }

    use proptest::prelude::*;

    /// Nodes with keys from `seeds`, spread over `regions`, each knowing all the others.
    fn mesh(seeds: &[u8], regions: usize, arity: usize) -> Vec<Node<crate::mesh::MemStore>> {
        let infos: Vec<MemberInfo> = seeds
            .iter()
            .enumerate()
            .map(|(i, seed)| {
                let signer = crate::Signer::from_secret(&[*seed; 32]);
                MemberInfo {
                    key: signer.origin().0,
                    region: format!("r{}", i % regions),
                    cloud: "c".into(),
                    jurisdiction: "EU".into(),
                    addr: format!("n{i}"),
                    policy_epoch: 0,
                    generation: 0,
                }
            })
            .collect();
        infos
            .iter()
            .map(|me| {
                let mut config = MeshConfig::wan(infos.len() as u32);
                config.tree_arity = arity;
                let mut node = Node::new(me.clone(), config, 1, crate::mesh::MemStore::new(16), 0);
                for other in infos.iter().filter(|o| o.key != me.key) {
                    node.members.insert(OriginKey(other.key), other.clone());
                    node.region_insert(&other.region, OriginKey(other.key));
                }
                node
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// With consistent views, the computed trees reach every node exactly once: the
        /// publisher's sends plus every receiver's children cover the mesh with no
        /// duplicate and no gap, whatever the origin, the region layout and the arity.
        #[test]
        fn computed_trees_cover_every_node_exactly_once(
            seeds in proptest::collection::btree_set(1u8..=250, 1..40),
            regions in 1usize..6,
            arity in 1usize..9,
            origin_pick in any::<prop::sample::Index>(),
        ) {
            let seeds: Vec<u8> = seeds.into_iter().collect();
            let nodes = mesh(&seeds, regions, arity);
            let by_key: BTreeMap<OriginKey, usize> =
                nodes.iter().enumerate().map(|(i, n)| (n.me().node_key(), i)).collect();
            let origin = origin_pick.index(nodes.len());
            let origin_key = nodes[origin].me().node_key();
            let mut received = vec![0u32; nodes.len()];
            received[origin] = 1;
            let mut frontier: Vec<usize> = nodes[origin]
                .tree_targets(&origin_key, true)
                .iter()
                .map(|k| by_key[k])
                .collect();
            // Bounded: every node forwards at most once (duplicates stop the walk).
            while let Some(i) = frontier.pop() {
                received[i] += 1;
                if received[i] > 1 {
                    continue;
                }
                frontier.extend(nodes[i].tree_targets(&origin_key, false).iter().map(|k| by_key[k]));
            }
            prop_assert!(received.iter().all(|r| *r == 1), "coverage {:?}", received);
        }
    }
}
