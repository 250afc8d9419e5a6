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

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use foca::{Foca, NoCustomBroadcast, OwnedNotification};
use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};

use crate::envelope::{Event, EventData, EventId, OriginKey};
use crate::mesh::member::{MemberInfo, MemberMap, SwimCodec, SwimId};
use crate::mesh::message::{Digest, DigestRanges, EventRef, Message};
use crate::mesh::ranges::{RANGES_PER_ORIGIN_MAX, SeqRanges};
use crate::mesh::route::{
    self, LINK_RECORDS_PER_MESSAGE_MAX, LinkRecord, PENDING_ACKS_MAX, PROBES_OUT_MAX, PendingAck,
    RegionRoute, RelayHop, Router,
};
use crate::mesh::seen::{OriginSeen, SeenSet};
use crate::mesh::store::{Inserted, Store, StoreError};
use crate::mesh::timers::{TimerKey, TimerQueue};
use crate::stream::{StreamName, StreamPattern};
use rustc_hash::{FxHashMap, FxHashSet};

/// Monotonic time in microseconds since an arbitrary epoch chosen by the driver.
pub type Micros = u64;

/// An anti-entropy answer leaves out what the requester lacks of an origin when all of it
/// arrived at the answering node less than this long ago: such events are most likely on
/// their way to the requester through the tree (a push in flight, a GRAFT pending), and
/// sending them made duplicates (on `clock-skew`, 10,259 events sent for 22 the requester
/// lacked; docs/sim-speed.md, "Fresh events are left to the tree"). A requester
/// behind on older numbers of the origin as well gets everything, fresh ones included (after
/// a heal, a node is behind on the other side's origins). A fresh event that was really
/// lost is sent by a later round.
pub const SYNC_FRESH_US: Micros = 1_000_000;

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
/// Most events got by anti-entropy remembered until their tree push arrives (a node still
/// passes such an event on down its region's tree when it does); the oldest are forgotten
/// first.
pub const REPAIRED_LEN_MAX: usize = 4_096;
/// Most members remembered as back from down (a healed partition, a restart) until the
/// anti-entropy round with one of them.
pub const RETURNED_LEN_MAX: usize = 64;
/// Most joined members waiting for this node's share of the link-state records
/// ([`Node::send_handoffs`]); beyond it a joiner gets the records by the rotation.
pub const HANDOFFS_LEN_MAX: usize = 64;
/// Members a joining node announces itself to per probe tick while it is still learning
/// the membership ([`Node::catch_up_membership`]); each answers with a SWIM feed of
/// random members.
pub const CATCH_UP_ANNOUNCES: usize = 3;
/// Most probe ticks a joining node spends catching up on the membership.
pub const CATCH_UP_TICKS_MAX: u32 = 30;
/// How long after a member joins (or comes back with a new generation) this node hands it
/// its share of the link-state records: time for the joiner to learn the membership, since
/// a node keeps records of known members only (`route::sampled`).
pub const HANDOFF_DELAY_US: Micros = 5_000_000;
/// How long after a member comes back the round with it starts: members of the other side
/// of a healed partition come back within moments of each other, and one round serves them
/// all.
pub const SYNC_BACK_DELAY_US: Micros = 100_000;
/// A member this node did not have in its view (new, or back from down) is told of this
/// node's own events published this recently (an IHAVE: it GRAFTs what its tree does not
/// bring), at most [`REFS_PER_MESSAGE_MAX`] of them.
pub const RECENT_OWN_US: Micros = 5_000_000;
/// A peer that has not answered an anti-entropy request for half a sync interval is
/// *silent* (cut off, or down and not yet declared so): it is not chosen as a partner while
/// another is, until it answers, sends a request of its own, comes back from down, or this
/// many sync intervals pass since it was last asked (then it is eligible again). See
/// [`Node::silent`].
pub const SILENT_RETRY_INTERVALS: u64 = 8;
/// Most members still down that a node announces itself to when another comes back (see
/// [`Node::announce_to_down`]).
pub const DOWN_ANNOUNCE_MAX: usize = 64;
/// Random draws an anti-entropy round makes for a partner likely to answer.
const RANDOM_PARTNER_DRAWS: usize = 4;
/// Best-ranked anti-entropy partners checked against SWIM's suspicion.
const RANKED_CANDIDATES: usize = 4;
/// How long an origin's seen ranges must stay unchanged before anti-entropy requests
/// summarise it instead of listing it ([`super::Settled`]): longer than SWIM takes to
/// declare a cut-off member down (after which the round with a member back from down sends
/// the whole digest), so the origins a short cut kept news of are usually still listed, and
/// an idle fabric's rounds carry little more than the summary.
pub const SYNC_SETTLED_US: Micros = 30_000_000;
/// How long a Skip taken on another node's word than the origin's waits for a second node
/// to confirm or contradict it (anti-entropy asks partners for the number again, every
/// other round one in another region) before it is final: 60 rounds at the WAN default
/// sync interval. Only numbers the origin is known to have reached expire (see
/// [`Node::expire_unconfirmed`]).
pub const SKIP_CONFIRM_US: Micros = 120_000_000;
/// Most numbers waiting for confirmation on one sender's word: a lying sender fills its own
/// quota, not the others'.
/// Honest senders use it too (the node a device publishes through sends every Skip for
/// the device's restricted events), so it is sized for several seconds of such Skips
/// between confirmations.
pub const UNCONFIRMED_PER_SENDER_MAX: usize = 8_192;
/// Most numbers waiting for confirmation over every sender (some 100 bytes each).
pub const UNCONFIRMED_LEN_MAX: usize = 65_536;
/// Most waiting numbers of one origin an anti-entropy digest leaves out (the lowest; the
/// rest wait for later rounds): each is a hole in the origin's ranges, of which a digest
/// holds at most [`RANGES_PER_ORIGIN_MAX`].
pub const DIGEST_HOLES_MAX: usize = 256;
/// Most origins read from one anti-entropy digest (a fabric with more producers syncs the
/// rest in later rounds).
pub const DIGEST_ORIGINS_MAX: usize = 65_536;
/// Most envelope bytes in one eager push or anti-entropy response (a batch of large events
/// is cut here; anti-entropy resumes where it stopped). Under [`super::wire::MESSAGE_LEN_MAX`].
pub const BATCH_BYTES_MAX: usize = 8 << 20;
/// Most lazy peers.
pub const LAZY_MAX: usize = 32;
/// Largest SWIM message (foca's `max_packet_size`; see [`MeshConfig::wan`]).
pub const SWIM_PACKET_LEN: std::num::NonZeroUsize = match std::num::NonZeroUsize::new(4096) {
    Some(n) => n,
    None => unreachable!(),
};
/// Largest tree arity: children per node in a region's tree.
pub const TREE_ARITY_MAX: usize = 16;
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
    /// Most events named by one GRAFT. GRAFTs that come due together for the same announcer
    /// (the events of one IHAVE batch, or a partition's backlog after a heal) go as one
    /// message naming up to this many; 1 sends one GRAFT per event.
    pub graft_batch_len_max: usize,
    /// How often the peer view is refreshed from membership and RTT.
    pub view_refresh_us: Micros,
    /// Stream patterns this node stores and delivers; it relays everything else.
    pub interest: Vec<StreamPattern>,
    /// How often link probes go out (to a few regions each time; see `probe_regions`).
    pub probe_interval_us: Micros,
    /// Regions probed per probe tick, round robin (regions whose link failed are probed
    /// every tick besides).
    pub probe_regions: usize,
    /// How often link-state records are gossiped.
    pub link_gossip_us: Micros,
    /// Peers each link-state gossip goes to.
    pub link_fanout: usize,
    /// A changed link estimate is republished at most this often.
    pub link_report_min_us: Micros,
    /// This node's record is republished at least this often (status counters, liveness).
    pub link_refresh_us: Micros,
    /// SWIM timings.
    pub swim: foca::Config,
    /// Whether the driver holds transmits before sending them (the node holds each step's
    /// until its group commit) and calls [`Node::transmits_released`] when they go: a
    /// push's acknowledgement timeout and RTT sample then count from there. `false` (the
    /// simulator): they count from when the core produced the push.
    pub holds_transmits: bool,
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
        // foca's WAN default (1400 bytes, one UDP datagram: about 15 member updates) made
        // membership gossip bandwidth-bound when many nodes start together: each node sends
        // each of n updates ~4 log10(n) times, and 1000 nodes were 99.7 % aware of each
        // other after 40 s, 99.99 % after 60 s, while dissemination trees built from the
        // partial views delayed some deliveries by seconds. QUIC carries a message larger
        // than a datagram on a stream (the node's transport picks by size), so the bound is
        // not the path's: 4 KiB makes it 99.9998 % at 40 s (docs/sim.md, section 3.5).
        // Steady-state SWIM messages (a probe and a few updates) still fit a datagram.
        swim.max_packet_size = SWIM_PACKET_LEN;
        // After a partition heals the sides must find each other in seconds, not the
        // default minutes: announce to members we believe down twice a second; the first
        // member found back makes the node announce to all the others at once
        // (`announce_to_down`). (Every 5 s, split-brain-writes.toml reconverged 6.7-10.6 s
        // after its heal, 1.3 s every second, 0.8 s now; down members cost a node six
        // dropped datagrams a second here, and the node's transport dials an unreachable
        // peer at most once a second whatever the rate, unless the peer dials in first.)
        swim.periodic_announce_to_down_members = Some(foca::PeriodicParams {
            frequency: Duration::from_millis(500),
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
            graft_batch_len_max: 64,
            view_refresh_us: 10_000_000,
            probe_interval_us: 2_000_000,
            probe_regions: 3,
            link_gossip_us: 2_000_000,
            link_fanout: 2,
            link_report_min_us: 10_000_000,
            // A small mesh refreshes often (dashboards read the status); a large one spreads
            // its records out: at most about 20 new records a second fabric-wide.
            link_refresh_us: (u64::from(cluster_size) * 50_000).max(5_000_000),
            interest: vec![
                StreamPattern::new(">").unwrap_or_else(|_| unreachable!("'>' is a valid pattern")),
            ],
            swim,
            holds_transmits: false,
        }
    }
}

/// What a peer may receive of an event: the replication filter's answer, asked before any
/// peer is chosen (residency policy, issue 6, implements it; the default clears everything).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FilterHop {
    /// The event itself: the peer stores it, delivers it, announces it and disseminates it.
    Clear,
    /// Sealed transit: the peer may carry the (producer-sealed) event along a source-routed
    /// relay path ([`RelayHop`]s) and nothing else: it never stores, delivers, announces or
    /// answers for it, and it is never sent the event for dissemination (eager push inside a
    /// region, IHAVE, GRAFT answer, anti-entropy).
    Transit,
    /// Nothing naming the event: no push, IHAVE, GRAFT answer or anti-entropy batch (a
    /// [`Message::Skip`] with origin and sequence number only, so its ordered delivery moves
    /// on).
    Refuse,
}

/// Decides what of an event may go to a peer (see [`FilterHop`]): applied before any peer is
/// chosen for an eager push, an IHAVE, a GRAFT answer, an anti-entropy transfer or a relay
/// region, and by a receiving node to itself (it stores only what is [`FilterHop::Clear`]
/// for its own member record).
pub trait ReplicationFilter: Send {
    /// What `peer` may receive of `event`.
    fn hop(&self, event: &EventData, peer: &MemberInfo) -> FilterHop;

    /// Whether `peer` may hold `event` (store, deliver, disseminate it): [`FilterHop::Clear`].
    fn allows(&self, event: &EventData, peer: &MemberInfo) -> bool {
        self.hop(event, peer) == FilterHop::Clear
    }

    /// Whether `event` is [`FilterHop::Clear`] for every member whatever its record says,
    /// so the mesh need not ask member by member. `false` is always a correct answer (the
    /// default); `true` must imply `hop(event, m) == Clear` for every `m`.
    fn unrestricted(&self, _event: &EventData) -> bool {
        false
    }
}

/// The filter that clears every event for every peer.
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowAll;

impl ReplicationFilter for AllowAll {
    fn hop(&self, _event: &EventData, _peer: &MemberInfo) -> FilterHop {
        FilterHop::Clear
    }

    fn unrestricted(&self, _event: &EventData) -> bool {
        true
    }
}

/// The filter of a node that must enforce residency but holds no policy yet (it trusts
/// operator keys, and its first bundle has not reached it): each event's own residency
/// set, as its ingress node stamped and signed it, decides what this node holds: an
/// unrestricted event, or one whose set names the jurisdiction this node's own config
/// declares. It passes a restricted event to no peer: without the policy it cannot check
/// a peer's declared jurisdiction against the jurisdictions the operators granted (a peer
/// misconfigured as, say, EU would be handed EU data), so those events reach peers from
/// nodes that hold the policy, by their pushes and anti-entropy, while this one waits for
/// its bundle (seconds, through the fabric). System streams follow their stamp too: policy
/// bundles are unrestricted and reach every node; an erase request of a key is stamped
/// with its stream's residency (the key is that stream's data). Without this filter such a
/// node relayed what its peers' policies sent it to any peer at all.
#[derive(Debug, Clone, Copy)]
pub struct StampedResidency {
    /// This node's key: the one member whose declared jurisdiction is taken on its word.
    me: [u8; 32],
}

impl StampedResidency {
    /// The filter of the node with key `me`.
    pub fn new(me: [u8; 32]) -> Self {
        Self { me }
    }
}

impl ReplicationFilter for StampedResidency {
    fn hop(&self, event: &EventData, peer: &MemberInfo) -> FilterHop {
        if self.unrestricted(event) {
            return FilterHop::Clear;
        }
        match &event.security().residency {
            crate::Residency::Only(set)
                if peer.key == self.me
                    && set.iter().any(|j| j.as_str() == peer.jurisdiction.as_str()) =>
            {
                FilterHop::Clear
            }
            _ => FilterHop::Refuse,
        }
    }

    fn unrestricted(&self, event: &EventData) -> bool {
        matches!(event.security().residency, crate::Residency::Unrestricted)
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
    /// An event delivered out of per-origin order, once: this node had taken a Skip for it
    /// on another node's word and moved past it, and then the event came and this node may
    /// hold it (always after [`AppEvent::SkipContradicted`] for it).
    Late(Arc<Event>),
    /// A Skip this node took from `skipped_by` (not the origin) for the origin and sequence
    /// number of `event` was wrong: the event came, and this node may hold it
    /// ([`Stats::skips_contradicted`]). Honest nodes send such Skips only when their policy
    /// epoch or erase rules differ from this node's; otherwise `skipped_by` lied. The event
    /// itself follows as [`AppEvent::Late`] or [`AppEvent::Deliver`] if this node stores
    /// its stream; it is here so that the report can name it (stream, id).
    SkipContradicted {
        /// The event whose number the Skip named.
        event: Arc<Event>,
        /// The node whose Skip the event contradicted.
        skipped_by: OriginKey,
    },
    /// A member joined, came back, or renewed its record while up (a new generation,
    /// perhaps a new address). (Boxed, as is `MemberDown`'s: a record is some
    /// 130 bytes, and the event queue moves every delivery, by far the most common event,
    /// at the size of the largest variant.)
    MemberUp(Box<MemberInfo>),
    /// A member was declared down.
    MemberDown(Box<MemberInfo>),
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
    /// Anti-entropy rounds started with a member back from down (a healed partition).
    pub sync_back_rounds: u64,
    /// SWIM announcements sent to members still down when another came back (a healed
    /// partition: the rest of the other side is told at once).
    pub down_announcements: u64,
    /// Probe ticks at which this node had no live member and announced itself to the
    /// members it holds down ([`Node::announce_when_alone`]).
    pub alone_announce_rounds: u64,
    /// Times an anti-entropy round passed over a partner because it had not answered its
    /// last request or SWIM suspected it (a partition, a crash not yet declared); a round
    /// may count more than one.
    pub sync_partners_passed_over: u64,
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
    /// Link probes sent.
    pub probes_sent: u64,
    /// Link probes answered.
    pub probes_answered: u64,
    /// Link-state records taken (new versions).
    pub link_records_new: u64,
    /// Link-state records refused (over a limit, malformed).
    pub link_records_refused: u64,
    /// Link-state messages handed to members that joined ([`Node::send_handoffs`]).
    pub link_handoffs_sent: u64,
    /// Anti-entropy requests sent: new rounds, resumed ones, and whole digests after an
    /// `unsettled` answer.
    pub sync_requests_sent: u64,
    /// Events an anti-entropy answer left out because they were all the requester lacked
    /// of their origin and arrived here less than [`SYNC_FRESH_US`] ago (most likely on
    /// their way to it through the tree).
    pub sync_events_held_back: u64,
    /// Anti-entropy requests sent with a summary of the settled origins instead of their
    /// ranges ([`super::Settled`]).
    pub sync_summaries_sent: u64,
    /// Anti-entropy requests answered `unsettled`: their summary did not match what this
    /// node has seen of those origins.
    pub sync_unsettled_out: u64,
    /// `unsettled` answers to this node's summaries (each followed by the whole digest).
    pub sync_unsettled_in: u64,
    /// Link-state pulls sent (records a peer's digest named that this node would take).
    pub link_pulls_sent: u64,
    /// Link records sent in answer to peers' pulls.
    pub link_pull_records_sent: u64,
    /// Entries of link-state digests and pulls beyond [`LINK_RECORDS_PER_MESSAGE_MAX`] per
    /// message, not read.
    pub link_entries_over_limit: u64,
    /// SWIM announcements sent to catch up on the membership after joining
    /// ([`Node::catch_up_membership`]).
    pub catch_up_announces: u64,
    /// Cross-region pushes acknowledged.
    pub pushes_acked: u64,
    /// Cross-region pushes sent without waiting for an acknowledgement (pending table full).
    pub acks_untracked: u64,
    /// Cross-region pushes whose acknowledgement did not come within the RTT timeout: the
    /// direct link was marked failed and the events rerouted.
    pub failovers: u64,
    /// Regions a rerouted push could not reach by any path (anti-entropy repairs them).
    pub reroute_unreachable: u64,
    /// Failed direct links that came back (a probe or a late acknowledgement answered).
    pub links_recovered: u64,
    /// RTT estimates restarted upwards: two samples in a row beyond the RTT timeout (the
    /// path got slower). Each replans every route at once.
    pub rtt_shifts_up: u64,
    /// RTT estimates restarted downwards: a sample under three quarters of the estimate
    /// (the path healed). Each replans every route at once.
    pub rtt_shifts_down: u64,
    /// Pushes relayed on to other regions for their origin (source-routed hops).
    pub relayed: u64,
    /// Received relay hop lists refused as malformed.
    pub hops_refused: u64,
    /// Events sent back, with relay hops, to the peer they came from (counted per event and
    /// target): this node's direct link to the hops' region failed and the best way left
    /// runs through the sender's region (see [`Node::on_push`]).
    pub relays_sent_back: u64,
    /// Sequence numbers a peer said are not for this node (residency), taken as seen.
    pub skips_in: u64,
    /// Of [`Stats::skips_in`], those a node other than the event's origin sent (a relay, an
    /// anti-entropy partner, a node that erased the event). A Skip cannot be checked by its
    /// receiver (it names no class), so these are taken on the sender's word: a node that
    /// sends many more of them than its peers do may be hiding events (ARCHITECTURE.md,
    /// "Trust between nodes"). Per sender: [`Node::skips_taken_from`].
    pub skips_in_relayed: u64,
    /// Skips taken on another node's word ([`Stats::skips_in_relayed`]) that a second node
    /// (or the origin) then confirmed: a Skip of its own for the number, or an erasure.
    pub skips_confirmed: u64,
    /// Skips taken on another node's word that an event contradicted: the event arrived,
    /// and this node may hold it ([`AppEvent::SkipContradicted`]; the event is stored, and
    /// delivered late, [`AppEvent::Late`], if delivery had passed it). Non-zero means a
    /// node lied, or the two nodes judged under different policy epochs or erase rules.
    /// Per sender: [`Node::skips_contradicted_by`].
    pub skips_contradicted: u64,
    /// Skips taken on another node's word that no other node confirmed or contradicted
    /// within [`SKIP_CONFIRM_US`] although the origin is known to have passed the number:
    /// final from then on (no holder of the event answered).
    pub skips_unconfirmed: u64,
    /// Skips from another node than the origin left untaken because
    /// [`UNCONFIRMED_PER_SENDER_MAX`] numbers already wait on that sender's word, or
    /// [`UNCONFIRMED_LEN_MAX`] in all: the number stays a gap, which anti-entropy fills
    /// later (the event, or a Skip from a sender with room).
    pub skips_deferred: u64,
    /// Skips the store kept waiting that a restart dropped instead of reloading
    /// ([`Node::new`]): the rebuilt seen-set lacks the number (it lies above the restored
    /// delivery cursor, and anti-entropy asks for it again) or the quotas are full. With
    /// the confirmed, unconfirmed, contradicted and still-waiting ones, these account for
    /// every Skip taken on another node's word ([`Stats::skips_in_relayed`]) of the
    /// store's life, counted by the run that took it.
    pub skips_dropped_at_restart: u64,
    /// Events delivered late: they arrived after a Skip for them that an event then
    /// contradicted ([`Stats::skips_contradicted`]), after the origin's later events.
    pub delivered_late: u64,
    /// Events this node carried on along a relay path as sealed transit (its own hop for
    /// them is [`FilterHop::Transit`]): relayed, never stored, delivered or announced.
    pub transit_forwarded: u64,
    /// Events received that this node may not hold (its own hop is [`FilterHop::Refuse`],
    /// or [`FilterHop::Transit`] outside a relay path): dropped unopened. Non-zero means a
    /// sender broke residency (or enforces another policy epoch).
    pub residency_refused: u64,
    /// Events the store refused as matching an erase rule ([`Inserted::Erased`]): not
    /// stored, delivered or passed on; their sequence numbers taken as seen.
    pub events_erased: u64,
    /// Skips sent for erased events a peer asked for (GRAFT, anti-entropy, hole repair).
    pub erased_skips_sent: u64,
    /// This node's own events its store refused after they were signed: their numbers
    /// voided ([`Store::void`]) so that its later events are not held up anywhere.
    pub own_voided: u64,
    /// Longest time from a cross-region push to its failover (the RTT timeout that
    /// expired), microseconds.
    pub failover_after_us_max: u64,
}

/// A push target: the peer, the relay hops it gets, whether the push wants an
/// acknowledgement (it crosses regions), and how often its path was rerouted.
type Target = (OriginKey, Vec<RelayHop>, bool, u8);

#[derive(Debug, Clone)]
enum Timer {
    Swim(foca::Timer<SwimId>),
    Graft(EventId),
    FlushIHave,
    Sync,
    /// One anti-entropy round with a member that came back from down (`Node::returned`).
    SyncBack,
    ViewRefresh,
    Probe,
    Links,
    Ack(u64),
}

#[derive(Debug)]
struct Missing {
    event: EventRef,
    announcers: VecDeque<OriginKey>,
    /// Its GRAFT timer's key: dropped with the entry when the event arrives (most do, by
    /// the tree, before the timeout: a timer step each that found nothing to do).
    timer: TimerKey,
}

/// A Skip taken on another node's word than the origin's ([`Node::on_skip`]).
#[derive(Debug, Clone, Copy)]
struct Unconfirmed {
    /// Who sent it.
    by: OriginKey,
    /// When it was taken.
    at: Micros,
}

#[derive(Debug, Default)]
struct PeerState {
    last_sync_us: Option<Micros>,
    /// The peer's [`Node::seen_count`], from its last anti-entropy answer.
    held: u64,
    /// When this node first asked the peer for a round it has not answered yet.
    unanswered_since: Option<Micros>,
    /// The key of the last request to the peer that carried a summary, if no request
    /// without one followed: an `unsettled` answer is taken only when it names this key.
    summary_pending: Option<[u64; 2]>,
    /// Skips this node took from the peer for other origins' events ([`Stats::skips_in_relayed`]).
    skips_taken: u64,
    /// Of those, the ones an event contradicted ([`Stats::skips_contradicted`]).
    skips_contradicted: u64,
}

impl PeerState {
    /// Asked at least half a sync interval ago and not answered since, and last asked less
    /// than [`SILENT_RETRY_INTERVALS`] sync intervals ago (see [`Node::silent`]).
    fn silent(&self, now: Micros, interval: Micros) -> bool {
        self.unanswered_since
            .is_some_and(|t| now.saturating_sub(t) >= interval / 2)
            && self.last_sync_us.is_some_and(|t| {
                now.saturating_sub(t) < interval.saturating_mul(SILENT_RETRY_INTERVALS)
            })
    }
}

/// The members ordered by (RTT estimate, key), `Micros::MAX` for an unmeasured one: the
/// anti-entropy partner ranking's candidates among the members this node holds no
/// [`PeerState`] for, whose rank is their estimate alone ([`Node::ranked_partner`]). Kept
/// in step as members come and go and as their estimates change, so a round looks at the
/// few nearest instead of walking every member (a 1000-node mesh walked 1000 members
/// per node every sync interval: 6 % of a `scale-1000` run).
#[derive(Debug, Default)]
struct NearIndex {
    by_rtt: BTreeSet<(Micros, OriginKey)>,
}

impl NearIndex {
    /// Where a member with estimate `rtt` sorts.
    fn place(rtt: Option<Micros>, key: OriginKey) -> (Micros, OriginKey) {
        (rtt.unwrap_or(Micros::MAX), key)
    }

    fn insert(&mut self, rtt: Option<Micros>, key: OriginKey) {
        self.by_rtt.insert(Self::place(rtt, key));
    }

    fn remove(&mut self, rtt: Option<Micros>, key: OriginKey) {
        self.by_rtt.remove(&Self::place(rtt, key));
    }

    /// The index of `members` as `router` estimates them (for the invariant check).
    fn of(members: &MemberMap, router: &route::Router) -> BTreeSet<(Micros, OriginKey)> {
        members
            .keys()
            .map(|k| Self::place(router.rtt_us(k), *k))
            .collect()
    }
}

/// Collects what foca asks of its runtime during one call.
#[derive(Default)]
struct SwimRuntime {
    sends: Vec<(SwimId, Vec<u8>)>,
    timers: Vec<(foca::Timer<SwimId>, Duration)>,
    notes: Vec<OwnedNotification<SwimId>>,
}

impl foca::Runtime<SwimId> for SwimRuntime {
    fn notify(&mut self, notification: foca::Notification<'_, SwimId>) {
        self.notes.push(notification.to_owned());
    }
    fn send_to(&mut self, to: SwimId, data: &[u8]) {
        self.sends.push((to, data.to_vec()));
    }
    fn submit_after(&mut self, event: foca::Timer<SwimId>, after: Duration) {
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
///   [`Node::handle_publish`] (a local producer's signed event), [`Node::handle_subscribe`]
///   and [`Node::handle_unsubscribe`] (a local subscriber's interest begins or ends),
///   [`Node::join`] (contact seed members). Every input takes `now`, the driver's monotonic time in microseconds,
///   which must never go backwards.
/// - **Outputs** (`poll_*`): [`Node::poll_transmit`] (messages to send, each naming its
///   channel), [`Node::poll_event`] (deliveries and membership changes for the application),
///   [`Node::poll_timeout`] (when to call `handle_timeout` next).
///
/// Persisting is not an output: the node owns its [`Store`] and writes to it inside the
/// input that accepted the event, so that what is acknowledged is stored. Nor is
/// disconnecting: the transport owns connections; the node learns of a peer gone through
/// SWIM and reports it as a membership change from `poll_event`.
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
    foca: Foca<SwimId, SwimCodec, ChaCha8Rng, NoCustomBroadcast>,
    rng: ChaCha8Rng,
    store: S,
    filter: Box<dyn ReplicationFilter>,
    router: Router,
    members: MemberMap,
    peers: BTreeMap<OriginKey, PeerState>,
    /// The members by RTT estimate, for the partner ranking.
    near: NearIndex,
    /// Members that came back from down (a generation above the first, not in the view
    /// before), oldest first, at most [`RETURNED_LEN_MAX`]: events published on their
    /// side while this node had them down reach it only by anti-entropy, and a round with
    /// one of them starts [`SYNC_BACK_DELAY_US`] after the first comes back instead of
    /// waiting for the partner rotation (seconds).
    returned: VecDeque<OriginKey>,
    /// When the last such round started; at most one per sync interval.
    sync_back: Option<Micros>,
    /// The events published here (this node's own, and devices' it published for) in
    /// the last [`RECENT_OWN_US`] (when published, origin, sequence number), at most
    /// [`REFS_PER_MESSAGE_MAX`], oldest first: announced to a member that joins the view,
    /// since pushes went only to the members known when they were made.
    recent_own: VecDeque<(Micros, OriginKey, u64)>,
    /// The next regular round goes to a stalled origin first (set by a round with a member
    /// back from down: the events it cannot give are those this node may not hold, and only
    /// a node holding them, such as their origin, can send their Skips).
    stalled_first: bool,
    lazy: BTreeSet<OriginKey>,
    /// Reused by [`Node::forward`] (no allocation per forwarded message).
    lazy_scratch: Vec<OriginKey>,
    /// Buffers of IHAVE and GRAFT messages this node received, emptied, for its own next
    /// IHAVE batches (at most [`REF_BUFFERS_MAX`], each of at most [`REF_BUFFER_CAP_MAX`]
    /// references): an IHAVE is the most frequent message, and allocating each batch and
    /// freeing each received one was 1.4 % of a 24-node simulation's instructions.
    ref_buffers: Vec<Vec<EventRef>>,
    /// Live members by region, this node included, each list sorted by key.
    regions: BTreeMap<String, Vec<OriginKey>>,
    /// Per origin: sequence numbers accepted (stored, or relayed when outside interest)
    /// and the delivery cursor.
    seen: SeenSet,
    /// Skips taken on another node's word than the origin's, waiting for a second node to
    /// confirm them (see [`Node::on_skip`]): per origin, sequence number to who sent it and
    /// when. Anti-entropy digests leave these numbers out, so partners send the event or a
    /// Skip of their own.
    unconfirmed: BTreeMap<OriginKey, BTreeMap<u64, Unconfirmed>>,
    /// Entries in `unconfirmed`, over every origin.
    unconfirmed_len: usize,
    /// Entries in `unconfirmed` per sender (no zero counts kept).
    unconfirmed_by: BTreeMap<OriginKey, usize>,
    relay_cache: FxHashMap<EventId, Arc<Event>>,
    relay_order: VecDeque<EventId>,
    /// Events got by anti-entropy whose push down the tree has not come (yet): when it
    /// does, this node still passes them on down its region's tree ([`Node::on_push`]).
    /// `repaired_order` holds them oldest first, and ids already taken out of the set.
    repaired: FxHashSet<EventId>,
    repaired_order: VecDeque<EventId>,
    /// Announced events not yet here, each with its GRAFT timer. A tree map, not a hash
    /// map: its keys are the ids peers' IHAVEs claim, unverified, and the core's hashers
    /// hash a key's first eight bytes unseeded, so a peer could make every key collide.
    missing: BTreeMap<EventId, Missing>,
    pending_ihave: PeerBatches<EventRef>,
    /// GRAFTs that came due in this `handle_timeout`, per announcer: sent together when it
    /// returns (empty between calls).
    pending_graft: PeerBatches<EventRef>,
    /// Members that joined and get a share of this node's link-state records, with when
    /// ([`Node::send_handoffs`]); at most [`HANDOFFS_LEN_MAX`].
    handoffs: BTreeMap<OriginKey, Micros>,
    timers: TimerQueue<Timer>,
    transmits: VecDeque<Transmit>,
    app: VecDeque<AppEvent>,
    /// Origins whose delivery paused because the app queue was full.
    delivery_paused: BTreeSet<OriginKey>,
    /// Anti-entropy rounds started.
    sync_rounds: u64,
    /// Sequence numbers in `seen`, over every origin ([`Node::seen_count`]).
    seen_count: u64,
    stats: Stats,
    now: Micros,
    /// Grows on every change of `me`, `members`, `regions` or `lazy` (the view).
    view_version: u64,
    /// The `view_version` whose view `check_invariants` last verified: the view checks
    /// (lookups of every lazy peer and of this node's region, a tenth of a 24-node
    /// simulation's instructions when run after every step) are repeated only after the
    /// view changed.
    view_checked: std::cell::Cell<u64>,
    /// This node's children in each origin's tree in its region, for the `view_version`
    /// `children_at` (computing them ranks and sorts the region's members).
    children_cache: FxHashMap<OriginKey, Vec<OriginKey>>,
    children_at: u64,
    /// Whether the interest matches a stream, per stream seen (asked for every event
    /// accepted). Cleared when full and whenever the interest changes
    /// ([`Node::handle_subscribe`], [`Node::handle_unsubscribe`]).
    interest_cache: FxHashMap<StreamName, bool>,
    /// An unsubscribe has narrowed the interest: delivery checks each stored event's
    /// stream against it (events stored before the unsubscribe may still wait for their
    /// turn). False until then, so the common case pays nothing.
    interest_narrowed: bool,
    /// The publisher's targets per origin and region hops ([`Node::publish_targets`]), for
    /// the region graph epoch, near epoch and `view_version` in `plans_at`: a plan reads
    /// the view, the region tree (rebuilt within [`route::GRAPH_REFRESH_US`] of a change of
    /// an estimate or record it reads, at once after a failed link or a level shift) and
    /// which regions are near (which changes only when an estimate crosses
    /// `near_region_rtt_us`). Planning was most of a publish's cost: a graph check, a tree
    /// walk and an estimate lookup per region member.
    plans: BTreeMap<(OriginKey, Vec<FilterHop>), Vec<Target>>,
    plans_at: (u64, u64, u64),
    /// Calls of `check_invariants`, and where its walk of the missing table and the
    /// seen-set resumes: one call in [`CHECK_TABLES_EVERY`] checks the next
    /// [`CHECK_WINDOW`] entries of each, so small tables are checked whole every few steps
    /// and the cost per step stays bounded however large they grow (in a partition the
    /// missing table holds thousands of entries, and walking it all after every step was
    /// most of the simulation's time).
    /// (Cells: the node is not `Sync`, its filter is a `Send` trait object only, so the
    /// checks need no atomics or lock.)
    check_calls: std::cell::Cell<u64>,
    check_cursor: std::cell::Cell<(Option<EventId>, Option<OriginKey>)>,
    /// Where the next [`Node::announce_to_down`] starts among the members held down, when
    /// there are more than it announces to at once.
    down_announce_from: usize,
    /// While catching up on the membership after joining: probe ticks left, and how many
    /// members the last tick knew ([`Node::catch_up_membership`]).
    catch_up: Option<(u32, usize)>,
}

/// Most origins whose children a node remembers (one per origin it relays for).
const CHILDREN_CACHE_LEN_MAX: usize = 4_096;

/// References an IHAVE batch makes room for when it starts (a flush interval's worth at
/// a busy node; the batch moves into its message at the flush).
const IHAVE_BATCH_RESERVE: usize = 16;
/// Most emptied reference buffers a node keeps (`Node::ref_buffers`) ...
const REF_BUFFERS_MAX: usize = 32;
/// ... and the largest it keeps (a full message's buffer is freed, not kept).
const REF_BUFFER_CAP_MAX: usize = 64;

/// Most streams `Node::interested` remembers before it starts over.
const INTEREST_CACHE_LEN_MAX: usize = 1_024;
/// Most publish plans a node remembers (one per origin it publishes for and filter
/// outcome: its own, and its edge devices').
const PLANS_LEN_MAX: usize = 1_024;

/// `check_invariants` walks the per-event tables on one call in this many ...
const CHECK_TABLES_EVERY: u64 = 16;
/// ... and then at most this many entries of each, from where the last walk stopped.
const CHECK_WINDOW: usize = 256;

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
        let foca = Foca::new(
            SwimId::new(me.clone()),
            config.swim.clone(),
            foca_rng,
            SwimCodec,
        );
        let mut seen = SeenSet::default();
        let restored = seen.take_in(&store, now);
        let mut router = Router::new(rng.next_u64());
        router.near_rtt_us = config.near_region_rtt_us;
        let mut node = Self {
            me,
            config,
            foca,
            rng,
            store,
            filter: Box::new(AllowAll),
            router,
            members: BTreeMap::new(),
            peers: BTreeMap::new(),
            near: NearIndex::default(),
            returned: VecDeque::new(),
            sync_back: None,
            recent_own: VecDeque::new(),
            stalled_first: false,
            lazy: BTreeSet::new(),
            lazy_scratch: Vec::new(),
            ref_buffers: Vec::new(),
            regions: BTreeMap::new(),
            seen,
            unconfirmed: BTreeMap::new(),
            unconfirmed_len: 0,
            unconfirmed_by: BTreeMap::new(),
            relay_cache: FxHashMap::default(),
            repaired: FxHashSet::default(),
            repaired_order: VecDeque::new(),
            relay_order: VecDeque::new(),
            missing: BTreeMap::new(),
            pending_ihave: PeerBatches::default(),
            pending_graft: PeerBatches::default(),
            handoffs: BTreeMap::new(),
            timers: TimerQueue::default(),
            transmits: VecDeque::new(),
            app: VecDeque::new(),
            delivery_paused: BTreeSet::new(),
            sync_rounds: 0,
            seen_count: 0,
            stats: Stats::default(),
            now,
            view_version: 0,
            view_checked: std::cell::Cell::new(u64::MAX),
            check_calls: std::cell::Cell::new(0),
            check_cursor: std::cell::Cell::new((None, None)),
            down_announce_from: 0,
            catch_up: None,
            children_cache: FxHashMap::default(),
            children_at: u64::MAX,
            interest_cache: FxHashMap::default(),
            interest_narrowed: false,
            plans: BTreeMap::new(),
            plans_at: (u64::MAX, u64::MAX, u64::MAX),
        };
        node.took_in(restored);
        node.reload_waiting_skips();
        node.refresh_view();
        let jitter = node.rng.next_u64() % node.config.sync_interval_us.max(1);
        node.schedule(now + node.config.sync_interval_us + jitter, Timer::Sync);
        node.schedule(now + node.config.view_refresh_us, Timer::ViewRefresh);
        let jitter = node.rng.next_u64() % node.config.probe_interval_us.max(1);
        node.schedule(now + jitter, Timer::Probe);
        let jitter = node.rng.next_u64() % node.config.link_gossip_us.max(1);
        node.schedule(now + jitter, Timer::Links);
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

    /// Forgets the events this node relays without storing (its relay cache) that
    /// `erased` says are erased, so it never answers a GRAFT with them. Returns how many.
    pub fn forget_relayed(&mut self, erased: impl Fn(&Event) -> bool) -> usize {
        let before = self.relay_cache.len();
        self.relay_cache.retain(|_, e| !erased(e));
        let cache = &self.relay_cache;
        self.relay_order.retain(|id| cache.contains_key(id));
        before - self.relay_cache.len()
    }

    /// The store, for the driver's own records next to the events (log positions, cursors,
    /// peers). Inserting or removing events through it bypasses the node's bookkeeping,
    /// but for the anti-entropy summary, which is recomputed from the store's ranges
    /// before its next use (an O(origins) walk, once per call of this between rounds).
    pub fn store_mut(&mut self) -> &mut S {
        self.seen.store_changed_elsewhere();
        &mut self.store
    }

    /// The store, for the driver's records beside the events: delivery-log positions,
    /// consumer cursors, metadata, peers, idempotency and derivation records, commits.
    /// Writes through it must leave the events the store holds, and their ranges, as they
    /// are; unlike [`Node::store_mut`] it does not make the anti-entropy summary recompute
    /// every origin before its next use (the node's driver writes such records on nearly
    /// every step: through `store_mut` each of them cost a walk of every origin). Anything
    /// that inserts, removes or voids events goes through `store_mut`.
    pub fn store_records_mut(&mut self) -> &mut S {
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
        self.members.values().map(|m| &**m)
    }

    /// Current lazy peers.
    pub fn lazy_peers(&self) -> impl Iterator<Item = &OriginKey> {
        self.lazy.iter()
    }

    /// The RTT estimate to `peer`, if measured.
    pub fn rtt_us(&self, peer: &OriginKey) -> Option<Micros> {
        self.router.rtt_us(peer)
    }

    /// Whether the replication filter clears `event` for `peer` (a known member; sealed
    /// transit does not count): for drivers that send events outside the core's own
    /// dissemination (the node's confirmation copies), so that they never bypass residency.
    pub fn replication_allowed(&self, event: &Event, peer: &OriginKey) -> bool {
        self.members
            .get(peer)
            .is_some_and(|info| self.filter.allows(event, info))
    }

    /// Records the policy epoch now in force (a newer bundle was applied): gossiped at once
    /// in this node's link-state status, which is what `weft policy status` reads. The
    /// SWIM member record keeps the epoch it was announced with until its next renewal (a
    /// new SWIM identity per policy change would churn membership fabric-wide).
    pub fn set_policy_epoch(&mut self, epoch: u64) {
        self.me.policy_epoch = epoch;
        self.router.own_forced = true;
    }

    /// Sets the name and HTTP address this node gossips with its link state.
    pub fn set_status(&mut self, name: &str, http: &str) {
        let cut = |s: &str, max: usize| {
            let mut end = s.len().min(max);
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            s[..end].to_string()
        };
        self.router.status.name = cut(name, route::NODE_NAME_LEN_MAX);
        self.router.status.http = cut(http, route::NODE_HTTP_LEN_MAX);
        self.router.own_forced = true;
    }

    /// The link-state records this node holds (its own included once published): every
    /// known node's measured links, coordinate and status.
    pub fn link_records(&self) -> impl Iterator<Item = (&LinkRecord, Micros)> {
        self.router.records()
    }

    /// Regions whose direct link from this node is marked failed, with since when.
    pub fn failed_regions(&self) -> impl Iterator<Item = (&str, Micros)> {
        self.router.failed.iter().map(|(r, t)| (r.as_str(), *t))
    }

    /// This node's network coordinate.
    pub fn coordinate(&self) -> weft_routing::Coordinate {
        self.router.vivaldi.coordinate()
    }

    /// Per destination region: the path events take now, its estimated latency, the
    /// direct link and the alternatives.
    pub fn region_routes(&mut self) -> Vec<RegionRoute> {
        self.router
            .region_routes(&self.me, &self.members, &self.regions, self.now)
    }

    // ------------------------------------------------------------------ inputs

    /// Contacts seed members to join the mesh.
    pub fn join(&mut self, now: Micros, seeds: &[MemberInfo]) {
        self.advance(now);
        let me = self.me.key;
        for seed in seeds.iter().filter(|s| s.key != me) {
            let mut rt = SwimRuntime::default();
            if self
                .foca
                .announce(SwimId::new(seed.clone()), &mut rt)
                .is_err()
            {
                self.stats.swim_errors += 1;
            }
            self.apply_swim(rt);
        }
        // The driver joins again through each seed it reaches: one catch-up.
        self.catch_up.get_or_insert((CATCH_UP_TICKS_MAX, 0));
    }

    /// A local subscriber's interest in `pattern` begins: from now on this node stores and
    /// delivers the events of matching streams it accepts, besides relaying them. Events it
    /// accepted before, while it only relayed them, count as seen and are not fetched again
    /// (a subscription starts at the present, as in NATS core; the node's HTTP API reads
    /// history from its log). Returns false when the interest already had the pattern.
    pub fn handle_subscribe(&mut self, now: Micros, pattern: StreamPattern) -> bool {
        self.advance(now);
        if self.config.interest.contains(&pattern) {
            return false;
        }
        self.config.interest.push(pattern);
        self.interest_cache.clear();
        true
    }

    /// A local subscriber's interest in `pattern` ends: events of streams no pattern left
    /// matches are relayed but no longer stored, and none of them is delivered from now on,
    /// those already stored and waiting for their turn included (events stored before stay
    /// in the store for anti-entropy and retention). Returns false when the interest did
    /// not have the pattern.
    pub fn handle_unsubscribe(&mut self, now: Micros, pattern: &StreamPattern) -> bool {
        self.advance(now);
        let before = self.config.interest.len();
        self.config.interest.retain(|p| p != pattern);
        if self.config.interest.len() == before {
            return false;
        }
        self.interest_cache.clear();
        self.interest_narrowed = true;
        true
    }

    /// The stream patterns this node stores and delivers (its configuration's, as changed
    /// by subscribes and unsubscribes since).
    pub fn interest(&self) -> &[StreamPattern] {
        &self.config.interest
    }

    /// A round-trip time measured by the transport to `peer`.
    pub fn handle_rtt_sample(&mut self, now: Micros, peer: OriginKey, rtt_us: Micros) {
        self.advance(now);
        self.rtt_sample(peer, rtt_us);
    }

    /// Takes one RTT sample ([`route::Router::rtt_sample`]) and keeps the members' order by
    /// estimate in step.
    fn rtt_sample(&mut self, peer: OriginKey, rtt_us: Micros) {
        let sampled = self.router.rtt_sample(peer, rtt_us);
        match sampled.shifted {
            Some(route::Shift::Up) => self.stats.rtt_shifts_up += 1,
            Some(route::Shift::Down) => self.stats.rtt_shifts_down += 1,
            None => {}
        }
        if sampled.before != sampled.after && self.members.contains_key(&peer) {
            self.near.remove(sampled.before, peer);
            self.near.insert(sampled.after, peer);
        }
    }

    /// A signed event from a local producer: store, deliver locally, disseminate.
    pub fn handle_publish(&mut self, now: Micros, event: Arc<Event>) -> Result<(), StoreError> {
        self.advance(now);
        match self.accept(event.clone(), true)? {
            Inserted::Duplicate => self.republished(&event),
            Inserted::Erased => Err(StoreError::Erased {
                origin: event.origin(),
                seq: event.seq(),
            }),
            Inserted::New => {
                let me = self.me.node_key();
                self.note_published(std::slice::from_ref(&event));
                self.forward(&[event], Some(me), true, true, &[], 0);
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
            results.push(match self.accept(event.clone(), true) {
                Ok(Inserted::New) => {
                    fresh.push(event);
                    Ok(())
                }
                Ok(Inserted::Duplicate) => self.republished(&event),
                Ok(Inserted::Erased) => Err(StoreError::Erased {
                    origin: event.origin(),
                    seq: event.seq(),
                }),
                Err(e) => Err(e),
            });
        }
        let me = self.me.node_key();
        self.note_published(&fresh);
        self.forward(&fresh, Some(me), true, true, &[], 0);
        results
    }

    /// This node's own signed event that will not be published after all (an egress
    /// derivative whose source the store refused): its number is voided as a refused own
    /// publish's is ([`Store::void`]: seen, answered with a Skip, not reused), so the
    /// node's later events are not held up anywhere.
    pub fn void_own(&mut self, now: Micros, event: &Event) -> Result<(), StoreError> {
        self.advance(now);
        debug_assert_eq!(
            event.origin(),
            self.me.node_key(),
            "only this node's own numbers"
        );
        self.void_number(event.origin(), event.seq(), event.id())
    }

    /// Voids one of this node's own numbers in the store and takes it as seen.
    fn void_number(&mut self, origin: OriginKey, seq: u64, id: EventId) -> Result<(), StoreError> {
        self.store.void(origin, seq, id)?;
        self.seen.store_changed(&origin, &self.store);
        self.stats.own_voided += 1;
        self.arrived(&id);
        self.seen_again(origin, seq);
        Ok(())
    }

    /// A local publish of a number this node has already seen: a resend of the same event
    /// (its answer was lost, or it came by another path) is fine; other content under the
    /// number (a producer that lost its sequence state, or equivocates) is refused, where
    /// the mesh's receiving path would drop it as a duplicate unseen. Only a held event can
    /// be compared: a number seen but not stored here (a stream this node does not store)
    /// counts as a resend.
    fn republished(&self, event: &Event) -> Result<(), StoreError> {
        // The same event again (the common case): the store's id index answers, without
        // reading and checking the held envelope.
        if self.store.holds(&EventRef::of(event)) {
            return Ok(());
        }
        let (origin, seq) = (event.origin(), event.seq());
        match self.store.get(&origin, seq) {
            Some(held) if held.id() != event.id() => Err(StoreError::Equivocation { origin, seq }),
            Some(_) => Ok(()),
            // Seen, not held, and erased or expired here: the publish is refused as the
            // store would refuse it, not answered as if it were stored.
            None if self.store.gone(&origin, seq) => Err(StoreError::Erased { origin, seq }),
            None => Ok(()),
        }
    }

    fn note_published(&mut self, events: &[Arc<Event>]) {
        for event in events {
            if self.recent_own.len() >= REFS_PER_MESSAGE_MAX {
                self.recent_own.pop_front();
            }
            // The origin too: a device's events published through this node are its
            // first hop's to announce as much as the node's own.
            self.recent_own
                .push_back((self.now, event.origin(), event.seq()));
        }
    }

    /// Announces this node's recent own events to `member`, which has just joined the
    /// view: the pushes of those events went only to the members known then, and without
    /// this the member would get them by anti-entropy, seconds later (a fabric starting up,
    /// a healed partition). Events it may not hold get a Skip instead (the filter), so its
    /// ordered delivery does not wait for them.
    fn announce_recent(&mut self, member: OriginKey) {
        let since = self.now.saturating_sub(RECENT_OWN_US);
        while self
            .recent_own
            .front()
            .is_some_and(|(at, _, _)| *at < since)
        {
            self.recent_own.pop_front();
        }
        if self.recent_own.is_empty() {
            return;
        }
        let events: Vec<Arc<Event>> = self
            .recent_own
            .iter()
            .filter_map(|(_, origin, seq)| self.store.get(origin, *seq))
            .collect();
        let events = self.allowed_vec(events, &member, false, true);
        self.announce(member, &events);
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
            Message::Push {
                events,
                relay,
                ack,
                reroutes,
            } => {
                self.on_push(from, events, &relay, reroutes);
                if ack != 0 {
                    self.send(from, Message::PushAck(ack));
                }
            }
            Message::PushAck(id) => self.on_push_ack(from, id),
            Message::Probe { nonce, coord: _ } => {
                let coord = self.router.vivaldi.coordinate();
                self.send(from, Message::ProbeAck { nonce, coord });
            }
            Message::ProbeAck { nonce, coord } => self.on_probe_ack(from, nonce, coord),
            Message::Links(records) => self.on_links(records),
            Message::LinkDigest(entries) => self.on_link_digest(from, entries),
            Message::LinkPull(keys) => self.on_link_pull(from, keys),
            Message::Skip(list) => self.on_skip(from, list),
            Message::IHave(refs) => self.on_ihave(from, refs),
            Message::Graft(refs) => self.on_graft(from, refs),
            Message::SyncRequest {
                digest,
                from_origin,
                settled,
            } => self.on_sync_request(from, digest, from_origin, settled),
            Message::SyncResponse {
                events,
                resume,
                held,
                unsettled,
            } => self.on_sync_response(from, events, resume, held, unsettled),
        }
    }

    /// An anti-entropy batch from `from` ([`Message::SyncResponse`]). Out of line: one
    /// message in a few hundred, and `handle_message`'s match stays small enough for the
    /// instruction cache.
    #[inline(never)]
    fn on_sync_response(
        &mut self,
        from: OriginKey,
        events: Vec<Arc<Event>>,
        resume: Option<OriginKey>,
        held: u64,
        unsettled: Option<[u64; 2]>,
    ) {
        let peer = self.peers.entry(from).or_default();
        peer.held = held;
        peer.unanswered_since = None;
        if let Some(key) = unsettled {
            // The partner has other ranges of the origins the summary stood for:
            // the round again with the whole digest (only for the summary last
            // sent: a stray or superseded answer asks for nothing).
            if peer.summary_pending == Some(key) {
                peer.summary_pending = None;
                self.stats.sync_unsettled_in += 1;
                self.send_digest(from, None, true);
            }
            return;
        }
        let mut fresh = Vec::new();
        for event in events {
            if self.own_hop(&event) != FilterHop::Clear {
                // Anti-entropy carries only what the receiver may hold.
                self.refuse_own(&event);
                continue;
            }
            if let Ok(Inserted::New) = self.accept(event.clone(), false) {
                self.stats.sync_events_new += 1;
                fresh.push(event);
            }
        }
        // Repaired events travel on lazily: peers that lack them GRAFT. Their tree
        // push may still come (see `repaired`).
        for event in &fresh {
            self.remember_repaired(event.id());
        }
        self.forward(&fresh, Some(from), false, false, &[], 0);
        if let Some(origin) = resume {
            self.send_digest(from, Some(origin), true);
        }
    }

    /// Time has reached a deadline from [`Node::poll_timeout`].
    pub fn handle_timeout(&mut self, now: Micros) {
        self.advance(now);
        // Bounded: each timer fires once; timers they schedule are for the future.
        while let Some(timer) = self.timers.pop_due(now) {
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
                Timer::SyncBack => self.sync_with_returned(),
                Timer::ViewRefresh => {
                    // The region lists are kept up to date on every membership change; only
                    // the lazy peers need re-ranking as RTT samples arrive.
                    self.refresh_lazy();
                    let next = now + self.config.view_refresh_us;
                    self.schedule(next, Timer::ViewRefresh);
                }
                Timer::Probe => {
                    self.catch_up_membership();
                    self.announce_when_alone();
                    self.send_probes();
                    let next = now + self.config.probe_interval_us.max(1);
                    self.schedule(next, Timer::Probe);
                }
                Timer::Links => {
                    self.gossip_links();
                    self.send_handoffs();
                    let next = now + self.config.link_gossip_us.max(1);
                    self.schedule(next, Timer::Links);
                }
                Timer::Ack(id) => self.on_ack_timeout(id),
            }
        }
        self.flush_grafts();
    }

    /// Sends the GRAFTs that came due together, one message per announcer and
    /// [`MeshConfig::graft_batch_len_max`] events. (The announcer answers with pushes cut to
    /// [`MeshConfig::push_batch_len_max`] events, so a receiver verifies a bounded batch at
    /// a time.)
    fn flush_grafts(&mut self) {
        if self.pending_graft.is_empty() {
            return;
        }
        let len = self
            .config
            .graft_batch_len_max
            .clamp(1, REFS_PER_MESSAGE_MAX);
        let mut pending = self.pending_graft.take();
        for (peer, refs) in pending.drain(..) {
            // A timer of the same call may have taken the announcer down (the GRAFT timer
            // of the next announcer is already set).
            if !self.members.contains_key(&peer) {
                continue;
            }
            for chunk in chunks_of(refs, len) {
                self.stats.grafts_sent += 1;
                self.send(peer, Message::Graft(chunk));
            }
        }
        self.pending_graft.restore(pending);
    }

    // ------------------------------------------------------------------ outputs

    /// The next message to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The transmits polled so far leave the node now (see
    /// [`MeshConfig::holds_transmits`]): the acknowledgement timeouts of the pushes among
    /// them restart from `now`, and their RTT samples will count from it, so the time the
    /// driver held them (its group commit) is not taken for the link's.
    pub fn transmits_released(&mut self, now: Micros) {
        self.advance(now);
        for id in std::mem::take(&mut self.router.held_acks) {
            let Some(p) = self.router.pending.get(&id) else {
                continue;
            };
            let (old, to) = (p.timer, p.to);
            self.timers.remove(&old);
            let at = self.now + route::rto_us(self.router.rtt_us(&to));
            let timer = self.schedule(at, Timer::Ack(id));
            if let Some(p) = self.router.pending.get_mut(&id) {
                p.timer = timer;
                p.sent_us = self.now;
            }
        }
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
        self.timers.first_at()
    }

    // ------------------------------------------------------------------ invariants

    /// Checks the node's internal invariants; panics with a description if one is broken.
    /// The simulator calls it after every step.
    ///
    /// Bounded: the view (only after it changed) and the queue limits are checked whole
    /// on every call; on one call in [`CHECK_TABLES_EVERY`], the next [`CHECK_WINDOW`]
    /// entries of the missing table and of the seen-set (wrapping), so every entry is
    /// checked within `CHECK_TABLES_EVERY * len / CHECK_WINDOW` calls.
    /// [`Node::check_invariants_full`] checks everything at once (the simulator calls it
    /// at the end of a run).
    pub fn check_invariants(&self) {
        self.check_bounded();
        let calls = self.check_calls.get();
        self.check_calls.set(calls.wrapping_add(1));
        if !calls.is_multiple_of(CHECK_TABLES_EVERY) {
            return;
        }
        let (missing_at, seen_at) = self.check_cursor.get();
        let missing_at = check_window(
            |from| self.missing.range((from, std::ops::Bound::Unbounded)),
            missing_at,
            |id, m| self.check_missing(id, m),
        );
        let seen_at = check_window(
            |from| self.seen.range_from(from),
            seen_at,
            |o, s| {
                Self::check_seen(s);
                self.seen.check_origin(o, s, self.now, &self.store);
            },
        );
        self.check_cursor.set((missing_at, seen_at));
    }

    /// [`Node::check_invariants`] over every entry of every table.
    pub fn check_invariants_full(&self) {
        self.check_bounded();
        assert!(
            NearIndex::of(&self.members, &self.router) == self.near.by_rtt,
            "near index out of step with the members' estimates"
        );
        for (id, m) in &self.missing {
            self.check_missing(id, m);
        }
        assert!(self.seen.consistent(), "seen-set halves out of step");
        assert!(
            self.router.hot_consistent(),
            "link records' hot queue out of step or over its bound"
        );
        assert!(
            self.ref_buffers
                .iter()
                .all(|b| b.is_empty() && b.capacity() <= REF_BUFFER_CAP_MAX),
            "a kept reference buffer is not empty or over size"
        );
        for s in self.seen.values() {
            Self::check_seen(s);
        }
        self.seen.check_summary(self.now, &self.store);
        assert!(
            self.seen.covers(&self.store),
            "an origin the store holds is missing from the seen-set"
        );
        assert_eq!(
            self.seen_count,
            self.seen.values().map(|s| s.ranges().count()).sum::<u64>(),
            "seen count out of step with the seen-set"
        );
        assert_eq!(
            self.unconfirmed_len,
            self.unconfirmed.values().map(BTreeMap::len).sum::<usize>(),
            "unconfirmed Skips out of step with their count"
        );
        assert!(self.unconfirmed_len <= UNCONFIRMED_LEN_MAX);
        let mut by: BTreeMap<OriginKey, usize> = BTreeMap::new();
        let me = self.me.node_key();
        for (origin, waiting) in &self.unconfirmed {
            assert!(!waiting.is_empty(), "an empty unconfirmed entry is kept");
            assert_ne!(*origin, me, "own numbers taken as another node's Skip");
            for u in waiting.values() {
                assert_ne!(u.by, *origin, "the origin's own Skip left unconfirmed");
                *by.entry(u.by).or_default() += 1;
            }
        }
        assert_eq!(by, self.unconfirmed_by, "per-sender counts out of step");
        assert!(by.values().all(|&n| n <= UNCONFIRMED_PER_SENDER_MAX));
    }

    fn check_missing(&self, id: &EventId, m: &Missing) {
        assert_eq!(m.event.id, *id, "missing table keyed wrongly");
        assert!(!self.store.holds(&m.event), "missing event is stored");
        assert!(m.announcers.len() <= ANNOUNCERS_MAX);
        assert!(
            matches!(self.timers.get(&m.timer), Some(Timer::Graft(t)) if t == id),
            "missing event without its GRAFT timer"
        );
    }

    /// Forgets a missing event that arrived (or was erased), with its GRAFT timer.
    fn arrived(&mut self, id: &EventId) {
        if let Some(m) = self.missing.remove(id) {
            self.timers.remove(&m.timer);
        }
    }

    fn check_seen(s: &OriginSeen) {
        assert!(
            s.delivered <= s.ranges().contiguous(),
            "delivered past what was seen"
        );
    }

    /// The checks whose cost does not grow with the events held.
    fn check_bounded(&self) {
        assert!(
            self.pending_graft.is_empty(),
            "GRAFTs left unsent after handle_timeout"
        );
        if self.view_checked.get() != self.view_version {
            let me = self.me.node_key();
            assert!(!self.lazy.contains(&me), "self in lazy set");
            assert!(self.lazy.len() <= LAZY_MAX, "lazy set over limit");
            assert!(
                self.lazy.iter().all(|k| self.members.contains_key(k)),
                "lazy peer is not a live member"
            );
            assert!(
                self.regions
                    .get(self.me.region.as_str())
                    .is_some_and(|r| r.binary_search(&me).is_ok()),
                "this node is missing from its region's member list"
            );
            for (record, _) in self.router.records() {
                let key = OriginKey(record.node);
                assert!(
                    key == me
                        || self.members.get(&key).is_some_and(|m| {
                            self.regions
                                .get(m.region.as_str())
                                .is_some_and(|list| route::sampled(list, &key))
                        }),
                    "link record of a node outside its region's sample"
                );
            }
            self.view_checked.set(self.view_version);
        }
        assert!(
            self.transmits.len() <= TRANSMIT_QUEUE_LEN_MAX,
            "transmit queue over limit"
        );
        assert!(
            self.ref_buffers.len() <= REF_BUFFERS_MAX,
            "kept reference buffers over limit"
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
            self.repaired.len() <= self.repaired_order.len()
                && self.repaired_order.len() <= REPAIRED_LEN_MAX,
            "repaired set over limit or out of step with its order"
        );
        assert!(
            self.handoffs.len() <= HANDOFFS_LEN_MAX,
            "pending handoffs over limit"
        );
        assert!(
            self.returned.len() <= RETURNED_LEN_MAX,
            "returned members over limit"
        );
        assert!(
            self.recent_own.len() <= REFS_PER_MESSAGE_MAX,
            "recent own events over limit"
        );
        assert!(
            self.pending_ihave
                .values()
                .all(|p| p.len() < REFS_PER_MESSAGE_MAX),
            "pending IHAVE batch over limit"
        );
    }

    // ------------------------------------------------------------------ internals

    fn advance(&mut self, now: Micros) {
        debug_assert!(now >= self.now, "time went backwards");
        self.now = self.now.max(now);
    }

    /// Returns the timer's key (to drop it from `timers` again).
    fn schedule(&mut self, at: Micros, timer: Timer) -> TimerKey {
        self.timers.insert(at, timer)
    }

    fn send(&mut self, to: OriginKey, msg: Message) {
        if self.transmits.len() >= TRANSMIT_QUEUE_LEN_MAX {
            self.stats.transmits_dropped += 1;
            return;
        }
        self.transmits.push_back(Transmit { to, msg });
    }

    fn apply_swim(&mut self, rt: SwimRuntime) {
        // Membership notes (and only they) change the view here.
        if !rt.notes.is_empty() {
            self.view_version += 1;
        }
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
                    self.member_up(m.shared());
                    if self.router.failed.contains_key(m.region.as_str()) {
                        // Back after a partition or outage: check the link now rather
                        // than at the next probe tick.
                        self.probe(key);
                    }
                    self.push_app(AppEvent::MemberUp(Box::new(m.info().clone())));
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
                            self.near.remove(self.router.rtt_us(&key), key);
                        }
                        self.lazy.remove(&key);
                        self.router.member_down(&key);
                        self.push_app(AppEvent::MemberDown(Box::new(m.info().clone())));
                    }
                }
                // A member up under a new identity (a restart foca saw while it held the
                // member up). A member held down and renamed shows up with the MemberUp that
                // follows, if it is up; foca also renames a down member to another down
                // identity, with no MemberUp or MemberDown after it, and that member must
                // stay out of the live members.
                OwnedNotification::Rename(_, new) if self.members.contains_key(&new.node_key()) => {
                    changed = true;
                    self.member_up(new.shared());
                    // The application learns the new record too (a restart faster than
                    // SWIM's down timeout: a new generation, perhaps a new address).
                    self.push_app(AppEvent::MemberUp(Box::new(new.info().clone())));
                }
                // foca renewed this node's identity itself (the mesh had declared it down
                // and it rejoined with the next generation): `me` takes the generation.
                // Only that: foca's copy of the record keeps the policy epoch it was
                // created with (`set_policy_epoch` updates `me`), and the link-state record
                // that carries the epoch goes out now.
                OwnedNotification::Rejoin(next) => {
                    self.me.generation = next.generation;
                    self.router.own_forced = true;
                    self.catch_up = Some((CATCH_UP_TICKS_MAX, 0));
                }
                OwnedNotification::Defunct => {
                    // The mesh declared us down (we were cut off): come back with a new
                    // generation so members accept us again.
                    if let Some(next) = foca::Identity::renew(&SwimId::new(self.me.clone())) {
                        let mut rt2 = SwimRuntime::default();
                        if self.foca.change_identity(next.clone(), &mut rt2).is_ok() {
                            self.me = next.info().clone();
                            // Cut off for a while: members joined and left meanwhile.
                            self.catch_up = Some((CATCH_UP_TICKS_MAX, 0));
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
        if changed {
            self.router.members_changed();
        }
        if changed && self.lazy.len() < self.config.lazy.min(LAZY_MAX) {
            self.refresh_lazy();
        }
    }

    /// A member reported up or renamed: recorded (no longer [`Node::silent`]), and, when it
    /// was not in the view, told of this node's recent own events (`announce_recent`) and,
    /// when it is back from down (a generation above the first), noted for a round with it
    /// (`member_returned`).
    fn member_up(&mut self, m: Arc<MemberInfo>) {
        let key = m.node_key();
        let joined = !self.members.contains_key(&key);
        // Back under a later generation before this node had it down (a restart, or a
        // node the mesh declared down while it was cut off): it dropped the link-state
        // records of the nodes it lost, or all of them.
        let restarted = self
            .members
            .get(&key)
            .is_some_and(|old| old.generation < m.generation);
        if let Some(peer) = self.peers.get_mut(&key) {
            // Back, or under a new identity: what it did not answer before is forgiven.
            peer.unanswered_since = None;
        }
        if joined && m.generation > 0 {
            self.member_returned(key);
        }
        self.member_insert(m);
        if joined {
            self.announce_recent(key);
        }
        if (joined || restarted)
            && self.handoff_turn(&key).is_some()
            && self.handoffs.len() < HANDOFFS_LEN_MAX
        {
            self.handoffs.insert(key, self.now + HANDOFF_DELAY_US);
        }
    }

    /// Records a member (new, back, or under a new identity) and files it under its
    /// region, moving it out of the one its old record named.
    fn member_insert(&mut self, m: Arc<MemberInfo>) {
        let key = m.node_key();
        let region = m.region.clone();
        match self.members.insert(key, m) {
            None => self.near.insert(self.router.rtt_us(&key), key),
            Some(old) => {
                self.region_remove(&old.region, &key);
                if old.region != region {
                    // Back in another region: its record describes links from the old one,
                    // and it may not be in the new region's sample.
                    self.router.forget_record(&key);
                }
            }
        }
        self.region_insert(&region, key);
    }

    fn region_insert(&mut self, region: &str, key: OriginKey) {
        self.view_version += 1;
        // Look up by `&str` first: the region is almost always known already, and
        // `entry` would allocate its key on every call.
        let list = match self.regions.get_mut(region) {
            Some(list) => list,
            None => self.regions.entry(region.to_string()).or_default(),
        };
        if let Err(at) = list.binary_search(&key) {
            list.insert(at, key);
            // A lower key joined the region's sample of link records: the member it
            // pushed out of the sample is no longer kept (`route::sampled`).
            if at < route::RECORDS_PER_REGION_MAX
                && let Some(&out) = list.get(route::RECORDS_PER_REGION_MAX)
                && out != self.me.node_key()
            {
                self.router.forget_record(&out);
            }
        }
    }

    fn region_remove(&mut self, region: &str, key: &OriginKey) {
        self.view_version += 1;
        if *key == self.me.node_key() {
            return;
        }
        if let Some(list) = self.regions.get_mut(region) {
            if let Ok(at) = list.binary_search(key) {
                list.remove(at);
            }
            if list.is_empty() {
                self.regions.remove(region);
                // Nobody left there: a failure mark would only outlive its cause.
                self.router.recover(region);
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
        self.view_version += 1;
        let me = self.me.node_key();
        self.regions.clear();
        self.regions
            .entry(self.me.region.to_string())
            .or_default()
            .push(me);
        for (k, m) in &self.members {
            if *k != me {
                self.regions
                    .entry(m.region.to_string())
                    .or_default()
                    .push(*k);
            }
        }
        for list in self.regions.values_mut() {
            list.sort();
        }
        self.refresh_lazy();
    }

    /// Picks the lazy peers (see [`Node::refresh_view`]).
    fn refresh_lazy(&mut self) {
        self.view_version += 1;
        let me = self.me.node_key();
        self.lazy
            .retain(|k| self.members.contains_key(k) && *k != me);
        let want = self.config.lazy.min(LAZY_MAX);
        // Measured RTT, else estimated from network coordinates (members never contacted).
        let rtt = |k: &OriginKey| self.router.estimate_us(k);
        // Members and RTT estimators are both ordered by key: walk them together instead of
        // looking every member up (this runs on every view refresh over every member).
        let mut estimators = self.router.estimators().peekable();
        let mut by_rtt: Vec<(Micros, OriginKey)> = self
            .members
            .keys()
            .filter(|k| **k != me)
            .map(|k| {
                while estimators.next_if(|(ek, _)| *ek < k).is_some() {}
                let measured = estimators
                    .peek()
                    .filter(|(ek, _)| *ek == k)
                    .and_then(|(_, e)| e.estimate_us());
                let r = measured.or_else(|| self.router.coord_estimate_us(k));
                (r.unwrap_or(Micros::MAX), *k)
            })
            .collect();
        // Near: the nearest `want - 1`, replacing a current lazy peer only when clearly
        // nearer (hysteresis).
        let near_target = want.saturating_sub(1);
        // Only the nearest `near_target` are read, in order (keys are unique: the same ones
        // a full sort would put first).
        if near_target < by_rtt.len() {
            by_rtt.select_nth_unstable(near_target);
            by_rtt.truncate(near_target);
        }
        by_rtt.sort_unstable();
        for (r, k) in &by_rtt {
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
        // Far: one random member of another region, if there is room (nearly always the
        // set is full by now, and the draw is skipped). Drawn in key order from the
        // per-region key lists (reading every member record for its region was a cache miss
        // per member): the drawn position is selected, not the whole list sorted.
        if self.lazy.len() >= want {
            return;
        }
        let mut others: Vec<OriginKey> = self
            .regions
            .iter()
            .filter(|(name, _)| name.as_str() != self.me.region.as_str())
            .flat_map(|(_, list)| list.iter().copied())
            .filter(|k| !self.lazy.contains(k))
            .collect();
        if !others.is_empty() {
            let at = (self.rng.next_u64() % others.len() as u64) as usize;
            let (_, k, _) = others.select_nth_unstable(at);
            self.lazy.insert(*k);
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

    /// The root of `region`'s tree for events of `origin`: the first member in
    /// [`Node::region_order`], found without sorting the region.
    fn region_root(&self, origin: &OriginKey, region: &str) -> Option<OriginKey> {
        route::entry_of(self.regions.get(region)?, origin)
    }

    /// This node's children in its own region's tree for `origin`.
    fn children(&mut self, origin: &OriginKey) -> &[OriginKey] {
        // Every event received asks, and the answer changes only with the view.
        if self.children_at != self.view_version {
            self.children_cache.clear();
            self.children_at = self.view_version;
        }
        if !self.children_cache.contains_key(origin) {
            let c = self.compute_children(origin);
            if self.children_cache.len() >= CHILDREN_CACHE_LEN_MAX {
                self.children_cache.clear();
            }
            self.children_cache.insert(*origin, c);
        }
        self.children_cache.get(origin).map_or(&[], Vec::as_slice)
    }

    fn compute_children(&self, origin: &OriginKey) -> Vec<OriginKey> {
        let me = self.me.node_key();
        let arity = self.config.tree_arity.clamp(1, TREE_ARITY_MAX);
        let order = self.region_order(origin, &self.me.region);
        match order.iter().position(|k| *k == me) {
            Some(i) => order
                .iter()
                .skip(i * arity + 1)
                .take(arity)
                .copied()
                .collect(),
            None => Vec::new(),
        }
    }

    /// This node's own hop for `event`: what it may do with it.
    fn own_hop(&self, event: &EventData) -> FilterHop {
        if self.filter.unrestricted(event) {
            return FilterHop::Clear;
        }
        self.filter.hop(event, &self.me)
    }

    /// An event this node may not hold arrived (see [`Stats::residency_refused`]): dropped
    /// unopened, its sequence number taken as seen (a Skip) so ordered delivery moves on.
    fn refuse_own(&mut self, event: &Event) {
        self.stats.residency_refused += 1;
        self.confirmed_by_event(&event.origin(), event.seq());
        self.skip_own(event.origin(), event.seq());
    }

    /// Records `(origin, seq)` in the seen-set at `now`; returns false if it was there.
    /// Keeps [`Node::seen_count`] in step (exactly: at the range limit the set may drop a
    /// range, so the count is taken again for that origin).
    fn note_seen(&mut self, origin: OriginKey, seq: u64) -> bool {
        let recorded = self.seen.record(origin, seq, self.now);
        match recorded.counts {
            Some((before, after)) => self.seen_count = self.seen_count - before + after,
            None => self.seen_count += u64::from(recorded.new),
        }
        recorded.new
    }

    /// How many sequence numbers this node has seen, over every origin: events stored or
    /// relayed, and numbers taken as Skips (not for this node) or erased. Anti-entropy
    /// compares partners by it (an answer's `held`): a node that may not hold an event class
    /// (residency) or does not store a stream (interest) has seen those numbers all the
    /// same, so it does not look behind a node that stores them (docs/sim-speed.md,
    /// "Partners compared by what they have seen").
    pub fn seen_count(&self) -> u64 {
        self.seen_count
    }

    /// Takes `(origin, seq)` as seen without an event (a Skip): the sequence number is not
    /// for this node, so per-origin delivery and anti-entropy move past it.
    fn skip_own(&mut self, origin: OriginKey, seq: u64) -> bool {
        if seq == 0 || origin == self.me.node_key() {
            return false;
        }
        if self.note_seen(origin, seq) {
            self.advance_delivery(origin);
            true
        } else {
            false
        }
    }

    /// Per region (indexed like the sorted region names): what the region's root for the
    /// event's origin (the member a push to the region goes to) may receive of it. This
    /// node's own region counts as clear (it is the source of any path planned here).
    fn region_hops(&self, event: &Event) -> Vec<FilterHop> {
        // Clear for every member: every region is (another region's list holds members
        // only, and an empty list is removed; this node's own region is Clear anyway).
        if self.filter.unrestricted(event) {
            return vec![FilterHop::Clear; self.regions.len()];
        }
        let origin = event.origin();
        self.regions
            .iter()
            .map(|(name, list)| {
                if *name == self.me.region {
                    return FilterHop::Clear;
                }
                route::entry_of(list, &origin)
                    .and_then(|k| self.members.get(&k))
                    .map_or(FilterHop::Refuse, |m| self.filter.hop(event, m))
            })
            .collect()
    }

    /// The region plan for `event` to the regions `dests` (indices into the sorted region
    /// names): only regions where the event is clear are destinations, and only regions
    /// that may carry it (clear or sealed transit) relay it.
    fn plan_for(
        &mut self,
        event: &Event,
        dests: &BTreeSet<u16>,
    ) -> (Vec<(OriginKey, Vec<RelayHop>)>, Vec<String>) {
        let hops = self.region_hops(event);
        self.plan_with(&event.origin(), &hops, dests)
    }

    /// [`Node::plan_for`] with the event's [`Node::region_hops`] already known.
    fn plan_with(
        &mut self,
        origin: &OriginKey,
        hops: &[FilterHop],
        dests: &BTreeSet<u16>,
    ) -> (Vec<(OriginKey, Vec<RelayHop>)>, Vec<String>) {
        let dests: BTreeSet<u16> = dests
            .iter()
            .copied()
            .filter(|i| hops.get(usize::from(*i)) == Some(&FilterHop::Clear))
            .collect();
        let mask = hops.iter().map(|h| *h != FilterHop::Refuse).collect();
        self.plan_regions(origin, mask, &dests)
    }

    /// Cross-region pushes for `regions` (indices into the sorted region names) along the
    /// current region tree: `(root of the first-hop region, hops it relays to)`.
    /// Also returns the destinations the graph has no path to (no estimate at all yet, or
    /// every way there marked failed).
    fn plan_regions(
        &mut self,
        origin: &OriginKey,
        mask: Vec<bool>,
        dests: &BTreeSet<u16>,
    ) -> (Vec<(OriginKey, Vec<RelayHop>)>, Vec<String>) {
        let (tree, names, mine) =
            self.router
                .tree(&self.me, &self.members, &self.regions, mask, self.now);
        let (plan, unreachable) = tree.plan(names, mine, dests);
        let plan = plan
            .into_iter()
            .filter_map(|(region, hops)| Some((self.region_root(origin, &region)?, hops)))
            .collect();
        (plan, unreachable)
    }

    /// Where this node pushes `event`: as the publisher [`Node::publish_targets`], else
    /// [`Node::relay_or_child_targets`]. `open`: the event is unrestricted (the caller asked
    /// the filter), so no stand-ins are needed.
    fn targets(
        &mut self,
        event: &Event,
        publishing: bool,
        relay: &[RelayHop],
        reroutes: u8,
        from: Option<OriginKey>,
        open: bool,
    ) -> Vec<Target> {
        let (mut targets, hops) = if publishing {
            let hops = self.region_hops(event);
            (self.publish_targets(&event.origin(), &hops), Some(hops))
        } else {
            (
                self.relay_or_child_targets(event, relay, reroutes, from),
                None,
            )
        };
        if !open {
            self.add_stand_ins(event, hops.as_deref(), &mut targets);
        }
        targets
    }

    /// Whether member `k` may hold `event` (its hop is [`FilterHop::Clear`]).
    fn may_hold(&self, event: &Event, k: &OriginKey) -> bool {
        self.members
            .get(k)
            .is_some_and(|m| self.filter.hop(event, m) == FilterHop::Clear)
    }

    /// Tree nodes that may not hold `event` do not end its tree: their stand-ins
    /// ([`Node::stand_ins`]) join `targets`, for a target without relay hops that may not
    /// hold it and, as the publisher (`region_hops`: the event's [`Node::region_hops`]),
    /// for the root of each region the plan left out because its root may not hold it. A region's members need not share its root's
    /// jurisdiction (an edge site, a store with a claim of its own): without this, the
    /// members of such a region got the event only by IHAVE and GRAFT or anti-entropy, and
    /// per-origin order held back every later event of the origin there meanwhile
    /// (docs/sim.md, section 3.5).
    fn add_stand_ins(
        &self,
        event: &Event,
        region_hops: Option<&[FilterHop]>,
        targets: &mut Vec<Target>,
    ) {
        let mut extra: Vec<Target> = Vec::new();
        for (peer, hops, ack, _) in targets.iter() {
            // A target with relay hops carries the event on (or, refused, leaves it to
            // GRAFT and anti-entropy, as before).
            if hops.is_empty() && !self.may_hold(event, peer) {
                extra.extend(
                    self.stand_ins(event, peer)
                        .into_iter()
                        .map(|k| (k, Vec::new(), *ack, 0)),
                );
            }
        }
        if let Some(hops) = region_hops {
            let origin = event.origin();
            for (i, region) in self.regions.keys().enumerate() {
                if hops[i] == FilterHop::Clear || *region == self.me.region {
                    continue;
                }
                if let Some(root) = self.region_root(&origin, region) {
                    extra.extend(
                        self.stand_ins(event, &root)
                            .into_iter()
                            .map(|k| (k, Vec::new(), true, 0)),
                    );
                }
            }
        }
        for target in extra {
            if !targets.iter().any(|t| t.0 == target.0) {
                targets.push(target);
            }
        }
    }

    /// Where `event` goes in place of `peer`, a node of a region tree that may not hold it:
    /// `peer`'s children in its region's tree for the event's origin that may hold it, and
    /// for those that may not, their children in turn. Bounded: positions in the region's
    /// order only grow down the tree.
    fn stand_ins(&self, event: &Event, peer: &OriginKey) -> Vec<OriginKey> {
        let Some(region) = self.members.get(peer).map(|m| m.region.clone()) else {
            return Vec::new();
        };
        let me = self.me.node_key();
        let arity = self.config.tree_arity.clamp(1, TREE_ARITY_MAX);
        let order = self.region_order(&event.origin(), &region);
        let mut out = Vec::new();
        let mut queue: VecDeque<usize> = order.iter().position(|k| k == peer).into_iter().collect();
        while let Some(at) = queue.pop_front() {
            let first = at * arity + 1;
            let last = (first + arity).min(order.len());
            for (child, &k) in order.iter().enumerate().take(last).skip(first) {
                if k == me {
                    continue;
                }
                if self.may_hold(event, &k) {
                    out.push(k);
                } else {
                    queue.push_back(child);
                }
            }
        }
        out
    }

    /// Where this node, not the publisher, pushes `event`: its children in the event's
    /// per-origin tree, and as a relay the roots of the regions `relay` names; each target
    /// with the relay hops it gets and whether the push crosses regions (and so wants an
    /// acknowledgement). The publisher's targets are [`Node::publish_targets`]. `from`:
    /// the peer the event came from.
    fn relay_or_child_targets(
        &mut self,
        event: &Event,
        relay: &[RelayHop],
        reroutes: u8,
        from: Option<OriginKey>,
    ) -> Vec<Target> {
        let mut out = self.child_targets(&event.origin());
        if !relay.is_empty() {
            out.extend(self.relay_targets(event, relay, reroutes, from));
        }
        out
    }

    /// This node's children in `origin`'s tree in its region, as push targets (no relay
    /// hops, no acknowledgement).
    fn child_targets(&mut self, origin: &OriginKey) -> Vec<Target> {
        self.children(origin)
            .iter()
            .map(|k| (*k, Vec::new(), false, 0))
            .collect()
    }

    /// Where the publisher pushes an event of `origin` whose [`Node::region_hops`] are
    /// `hops` (all it depends on, with the view and the routes): its children in its own
    /// region, the roots of the first-hop regions of the region tree (which relay on to the
    /// rest), and every member of near regions; each with the relay hops it gets and
    /// whether the push crosses regions (and so wants an acknowledgement).
    fn publish_targets(&mut self, origin: &OriginKey, hops: &[FilterHop]) -> Vec<Target> {
        let epoch = self
            .router
            .ensure_graph(&self.me, &self.members, &self.regions, self.now);
        let at = (epoch, self.router.near_epoch, self.view_version);
        if self.plans_at != at {
            self.plans.clear();
            self.plans_at = at;
        }
        let key = (*origin, hops.to_vec());
        if let Some(plan) = self.plans.get(&key) {
            return plan.clone();
        }
        let plan = self.plan_publish(origin, hops);
        if self.plans.len() >= PLANS_LEN_MAX {
            self.plans.clear();
        }
        self.plans.insert(key, plan.clone());
        plan
    }

    /// [`Node::publish_targets`] worked out.
    fn plan_publish(&mut self, origin: &OriginKey, hops: &[FilterHop]) -> Vec<Target> {
        let mut out = self.child_targets(origin);
        // An event a device signed, published here on its behalf: this region's tree for
        // the device's origin is rooted at the first member of `region_order`, which the
        // other members compute without knowing this node is the device's gateway and
        // which may be another node. This node pushes to its own subtree and to that root,
        // which covers the rest of the region (without it, the members outside this node's
        // subtree got the event only by IHAVE and GRAFT, a GRAFT timeout later).
        let me = self.me.node_key();
        if *origin != me
            && let Some(root) = self.region_root(origin, &self.me.region)
            && root != me
            && !out.iter().any(|t| t.0 == root)
        {
            out.push((root, Vec::new(), false, 0));
        }
        let mut dests = BTreeSet::new();
        let mut near_members = Vec::new();
        for (i, (region, members)) in self.regions.iter().enumerate() {
            // Regions whose root may not hold the event are no destination (their members
            // got a Skip from `forward`); they may still relay it.
            if *region == self.me.region || hops[i] != FilterHop::Clear {
                continue;
            }
            dests.insert(i as u16);
            let near = members
                .iter()
                .filter_map(|m| self.router.rtt_us(m))
                .min()
                .is_some_and(|rtt| rtt < self.config.near_region_rtt_us);
            if near {
                near_members.extend(members.iter().copied());
            }
        }
        let (plan, unreachable) = self.plan_with(origin, hops, &dests);
        for (root, hops) in plan {
            near_members.retain(|m| *m != root);
            out.push((root, hops, true, 0));
        }
        // No path known (nothing measured yet, or every way marked failed): the direct push
        // is still the best bet; its acknowledgement tells.
        for region in unreachable {
            if let Some(root) = self.region_root(origin, &region) {
                near_members.retain(|m| *m != root);
                out.push((root, Vec::new(), true, 0));
            }
        }
        out.extend(near_members.into_iter().map(|k| (k, Vec::new(), false, 0)));
        out
    }

    /// Where a relay sends `event` on: the roots of the regions `relay` names at its top
    /// level, each with its sub-list. A region whose direct link from here is marked failed
    /// is re-planned from this node's own view instead (one more reroute, if the push has
    /// any left; otherwise the direct link is tried after all). The new plan may send
    /// hops back to `from`, the peer the event came from (see [`Node::keeps`]), but not
    /// hops that came here rerouted already: those try the direct link, as the last
    /// reroute.
    fn relay_targets(
        &mut self,
        event: &Event,
        relay: &[RelayHop],
        reroutes: u8,
        from: Option<OriginKey>,
    ) -> Vec<Target> {
        let origin = event.origin();
        let Some(next) = route::split_hops(relay, &self.me.region) else {
            self.stats.hops_refused += 1;
            return Vec::new();
        };
        let mut out = Vec::new();
        for (region, mut hops) in next {
            let mut last_try = reroutes;
            if self.router.failed.contains_key(region.as_str()) && reroutes < route::REROUTES_MAX {
                let dests = self.region_indices(
                    std::iter::once(region.as_str()).chain(hops.iter().map(|h| h.region.as_str())),
                );
                let (plan, unreachable) = self.plan_for(event, &dests);
                if unreachable.is_empty() {
                    let mut bounced = false;
                    let pushed_from = out.len();
                    for (root, sub) in plan {
                        // Rerouted hops are not sent back where they came from: that node
                        // sent them on because a way of its own failed (most often this is
                        // their way back to a sender that had sent them here, whose way to
                        // the region failed), so the way most likely ends nowhere; without
                        // this a region cut off drew two more pushes per event and a
                        // doomed one (split-brain-writes: 13 % more messages per event).
                        // They try the direct link instead, below.
                        if reroutes > 0 && Some(root) == from {
                            bounced = true;
                            continue;
                        }
                        self.stats.relayed += 1;
                        out.push((root, sub, true, reroutes + 1));
                    }
                    if !bounced {
                        continue;
                    }
                    // The last try carries only what no push above reaches: a plan that
                    // sent some of the hops a third way left the direct push carrying them
                    // too, and their regions got the event twice (`example.toml`: one in
                    // nine of these last tries).
                    let pushed = &out[pushed_from..];
                    let covered = |r: &str| {
                        pushed.iter().any(|(root, sub, _, _)| {
                            self.members.get(root).is_some_and(|m| m.region == r)
                                || sub.iter().any(|h| h.region == r)
                        })
                    };
                    hops = route::prune_hops(&hops, |r| !covered(r));
                    if hops.is_empty() && covered(&region) {
                        continue;
                    }
                    // The only way left ran back to the sender: try the direct link after
                    // all, as the last reroute (an unanswered push ends there: one doomed
                    // push per event into a region really cut off, 2 % more messages per
                    // event in split-brain-writes). Both ends hold their direct links
                    // marked failed, under loss most often because one push each went
                    // unanswered, and the marks are stale. Dropping the hops left the
                    // region to anti-entropy, seconds later for an origin's last events
                    // (`many-faults` seed 56: 7.6 s; docs/sim.md 3.5).
                    last_try = route::REROUTES_MAX;
                }
                // No other way: try the direct link after all (the failure mark may be
                // stale), below.
            }
            if let Some(root) = self.region_root(&origin, &region) {
                self.stats.relayed += 1;
                out.push((root, hops, true, last_try));
            }
        }
        out
    }

    /// Indices of the named regions in the sorted region list (unknown names skipped).
    fn region_indices<'a>(&self, names: impl Iterator<Item = &'a str>) -> BTreeSet<u16> {
        let list: Vec<&String> = self.regions.keys().collect();
        names
            .filter_map(|r| list.binary_search_by(|n| n.as_str().cmp(r)).ok())
            .map(|i| i as u16)
            .collect()
    }

    /// Stores (or relays) a new event and delivers what is now in order. `publishing`: a
    /// local publish (its own number, refused by the store, is voided).
    fn accept(&mut self, event: Arc<Event>, publishing: bool) -> Result<Inserted, StoreError> {
        let id = event.id();
        let origin = event.origin();
        let seq = event.seq();
        // The seen-set first: a small ordered map of per-origin ranges answers most
        // duplicates without a probe of the store's id index (a cache miss per event on a
        // large store).
        let seen = self.seen.get(&origin);
        if seen.is_some_and(|r| r.ranges().contains(seq)) {
            if let Some(waiting) = self.unconfirmed_take(&origin, seq) {
                return self.accept_late(event, waiting);
            }
            self.stats.events_duplicate += 1;
            return Ok(Inserted::Duplicate);
        }
        // An exact seen-set that lacks the number: neither stored nor relayed (no lookup).
        if seen.is_none_or(|r| r.lossy)
            && (self.store.holds(&EventRef::of(&event)) || self.relay_cache.contains_key(&id))
        {
            self.stats.events_duplicate += 1;
            // Held, but the seen-set dropped it at its range limit: re-record it so
            // delivery and digests move on.
            self.seen_again(origin, seq);
            return Ok(Inserted::Duplicate);
        }
        let interested = self.interested(event.stream());
        if interested {
            // A local publish of this node's own event (not one of its events coming back
            // from a peer: a store restored from a backup refusing those must not void
            // numbers other nodes hold events for).
            let own = publishing && origin == self.me.node_key();
            let inserted = self.store.insert(event);
            self.seen.store_changed(&origin, &self.store);
            match inserted {
                Ok(Inserted::Duplicate) => {
                    self.stats.events_duplicate += 1;
                    // Held after all (a store whose `holds` under-claims): record it as
                    // seen so delivery and digests move on.
                    self.seen_again(origin, seq);
                    return Ok(Inserted::Duplicate);
                }
                Ok(Inserted::New) => {}
                Ok(Inserted::Erased) => {
                    // Erased fabric-wide: for this node's order a Skip (its own events
                    // too, so its own delivery moves on), nothing stored or passed on.
                    self.stats.events_erased += 1;
                    self.arrived(&id);
                    self.seen_again(origin, seq);
                    return Ok(Inserted::Erased);
                }
                Err(e) => {
                    self.stats.events_refused += 1;
                    // This node's own number, signed and now never to be stored: voided
                    // like an erased event (seen, answered with a Skip, kept across a
                    // restart), or its later events would wait for it everywhere.
                    if own && !matches!(e, StoreError::Equivocation { .. }) {
                        let _ = self.void_number(origin, seq, id);
                    }
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
        self.note_seen(origin, seq);
        self.arrived(&id);
        self.advance_delivery(origin);
        Ok(Inserted::New)
    }

    /// [`Node::accept`]'s rare paths (a held event the seen-set had dropped, an erased one):
    /// records `seq` as seen and moves delivery on. Cold and out of line, so that `accept`
    /// keeps one inlined copy of the delivery step, on its common path.
    #[cold]
    #[inline(never)]
    fn seen_again(&mut self, origin: OriginKey, seq: u64) {
        if self.note_seen(origin, seq) {
            self.advance_delivery(origin);
        }
    }

    /// Whether this node's configured interest names `stream` (it stores and delivers the
    /// stream's events; others it only relays).
    fn interested(&mut self, stream: &StreamName) -> bool {
        if let Some(&yes) = self.interest_cache.get(stream) {
            return yes;
        }
        let yes = self.config.interest.iter().any(|p| p.matches(stream));
        if self.interest_cache.len() >= INTEREST_CACHE_LEN_MAX {
            self.interest_cache.clear();
        }
        self.interest_cache.insert(stream.clone(), yes);
        yes
    }

    /// Delivers stored events of `origin` in sequence order from its cursor.
    fn advance_delivery(&mut self, origin: OriginKey) {
        let Some(seen) = self.seen.get_mut(&origin) else {
            return;
        };
        let upto = seen.ranges().contiguous();
        let from = seen.delivered;
        let mut cursor = from;
        while cursor < upto {
            if self.app.len() >= APP_QUEUE_LEN_MAX {
                self.delivery_paused.insert(origin);
                break;
            }
            cursor += 1;
            if seen.was_restored(cursor) {
                continue;
            }
            if let Some(event) = self.store.get(&origin, cursor) {
                if self.interest_narrowed
                    && !self
                        .config
                        .interest
                        .iter()
                        .any(|p| p.matches(event.stream()))
                {
                    continue;
                }
                self.stats.delivered += 1;
                self.app.push_back(AppEvent::Deliver(event));
            }
        }
        seen.delivered = cursor;
        if cursor > from {
            // Kept with the store: a restart resumes delivery here (`Store::delivered`).
            self.store.set_delivered(&origin, cursor);
        }
    }

    /// Pushes `events` down their trees (as publisher or relay, with the relay hops they
    /// arrived with) and queues IHAVEs for the lazy peers, skipping `except` (where they
    /// came from). With `eager` false (events repaired by anti-entropy) it only announces.
    fn forward(
        &mut self,
        events: &[Arc<Event>],
        except: Option<OriginKey>,
        eager: bool,
        publishing: bool,
        relay: &[RelayHop],
        reroutes: u8,
    ) {
        if events.is_empty() {
            return;
        }
        // Asked once here and passed down (the filter is a dynamic call per event, and
        // targets, pushes and announcements would each ask again).
        let open = events.iter().all(|e| self.filter.unrestricted(e));
        if publishing && !open {
            self.skip_members(events);
        }
        if eager {
            if let [event] = events {
                // One event (most relayed pushes, every local publish): no per-target
                // batching. Sorted and deduplicated like the batch map below, so both ways
                // push in the same order.
                let mut targets = self.targets(event, publishing, relay, reroutes, except, open);
                targets.retain(|t| self.keeps(t, except));
                targets.sort_unstable();
                targets.dedup();
                for target in targets {
                    self.push_allowed(target, events, !publishing, open);
                }
            } else {
                self.forward_batches(events, except, publishing, relay, reroutes);
            }
        }
        let mut lazy = std::mem::take(&mut self.lazy_scratch);
        lazy.extend(self.lazy.iter().copied().filter(|p| Some(*p) != except));
        // Events every member may hold go to every lazy peer as they are: lazy peers are
        // members (`check_invariants`), so the member lookup `allowed` starts with (a walk
        // of the member map per peer and event batch) would only say so again.
        for peer in lazy.drain(..) {
            if open {
                self.announce(peer, events);
            } else {
                let batch = self.allowed(events, &peer, false, !publishing, false);
                self.announce(peer, &batch);
            }
        }
        self.lazy_scratch = lazy;
    }

    /// [`Node::forward`]'s eager pushes of several events: one push (or a few, see
    /// [`batches_of`]) per distinct target.
    fn forward_batches(
        &mut self,
        events: &[Arc<Event>],
        except: Option<OriginKey>,
        publishing: bool,
        relay: &[RelayHop],
        reroutes: u8,
    ) {
        let mut batches: BTreeMap<Target, Vec<Arc<Event>>> = BTreeMap::new();
        // (A publisher's plans are cached per origin and filter outcome: see `plans`.)
        for event in events {
            let open = self.filter.unrestricted(event);
            for target in self.targets(event, publishing, relay, reroutes, except, open) {
                if self.keeps(&target, except) {
                    let batch = batches.entry(target).or_default();
                    // A target named twice for one event gets it once.
                    if !batch.last().is_some_and(|last| Arc::ptr_eq(last, event)) {
                        batch.push(event.clone());
                    }
                }
            }
        }
        for (target, batch) in batches {
            // A publisher already told every member that may not hold an event.
            self.push_allowed(target, &batch, !publishing, false);
        }
    }

    /// Pushes to `target` what of `events` the filter lets it have ([`Node::allowed`]; a
    /// target with relay hops may carry sealed transit), Skips for the rest with `notify`.
    /// `open`: the caller found every event unrestricted.
    fn push_allowed(&mut self, target: Target, events: &[Arc<Event>], notify: bool, open: bool) {
        let (peer, hops, ack, reroutes) = target;
        let relaying = !hops.is_empty();
        let batch = self.allowed(events, &peer, relaying, notify, open);
        self.push(peer, &batch, hops, ack, reroutes);
    }

    /// The publisher's Skips: every member that may not hold one of `events` (its hop is
    /// not [`FilterHop::Clear`]) gets their origins and sequence numbers, so that its
    /// per-origin delivery never waits for them. Only the publisher, which evaluates the
    /// filter for each member, sends these: a Skip is never passed on (a node outside an
    /// event's residency cannot tell which of its neighbours are inside).
    fn skip_members(&mut self, events: &[Arc<Event>]) {
        if events.iter().all(|e| self.filter.unrestricted(e)) {
            return;
        }
        let mut skips: Vec<(OriginKey, Vec<(OriginKey, u64)>)> = Vec::new();
        for (key, info) in &self.members {
            let list: Vec<(OriginKey, u64)> = events
                .iter()
                .filter(|e| self.filter.hop(e, info) != FilterHop::Clear)
                .map(|e| (e.origin(), e.seq()))
                .collect();
            if !list.is_empty() {
                skips.push((*key, list));
            }
        }
        for (peer, list) in skips {
            self.stats.filtered += list.len() as u64;
            for chunk in list.chunks(REFS_PER_MESSAGE_MAX) {
                self.send(peer, Message::Skip(chunk.to_vec()));
            }
        }
    }

    /// Sends `events` to `peer` in batches, each naming `hops`; with `ack`, each batch is
    /// remembered until acknowledged or timed out (failover).
    fn push(
        &mut self,
        peer: OriginKey,
        events: &[Arc<Event>],
        hops: Vec<RelayHop>,
        ack: bool,
        reroutes: u8,
    ) {
        let chunks = batches_of(events, self.config.push_batch_len_max);
        let last = chunks.len().saturating_sub(1);
        let mut hops = Some(hops);
        for (i, chunk) in chunks.into_iter().enumerate() {
            let relay = if i == last {
                hops.take().unwrap_or_default()
            } else {
                hops.clone().unwrap_or_default()
            };
            self.stats.pushes_sent += 1;
            let mut id = 0;
            if ack {
                if self.router.pending.len() < PENDING_ACKS_MAX
                    && let Some(region) = self.members.get(&peer).map(|m| m.region.clone())
                {
                    self.router.ack_seq += 1;
                    id = self.router.ack_seq;
                    let at = self.now + route::rto_us(self.router.rtt_us(&peer));
                    let timer = self.schedule(at, Timer::Ack(id));
                    if self.config.holds_transmits && self.router.held_acks.len() < PENDING_ACKS_MAX
                    {
                        self.router.held_acks.push(id);
                    }
                    self.router.pending.insert(
                        id,
                        PendingAck {
                            to: peer,
                            region,
                            events: chunk.to_vec(),
                            relay: relay.clone(),
                            reroutes,
                            sent_us: self.now,
                            timer,
                        },
                    );
                } else {
                    self.stats.acks_untracked += 1;
                }
            }
            self.send(
                peer,
                Message::Push {
                    events: chunk.to_vec(),
                    relay,
                    ack: id,
                    reroutes,
                },
            );
        }
    }

    /// An acknowledgement: an RTT sample of the link at traffic rate (each push is sent
    /// once, so there is no retransmission ambiguity), and proof that the link works, also
    /// when it comes after its push timed out.
    fn on_push_ack(&mut self, from: OriginKey, id: u64) {
        let sent = if self.router.pending.get(&id).is_some_and(|p| p.to == from) {
            // Acknowledged in time: its timeout would find nothing; drop it now (a quarter
            // of a simulation's timer steps were such timeouts).
            self.router.pending.remove(&id).map(|p| {
                self.timers.remove(&p.timer);
                p.sent_us
            })
        } else if self.router.late.get(&id).is_some_and(|(to, _)| *to == from) {
            self.router.late.remove(&id).map(|(_, sent)| sent)
        } else {
            None
        };
        let Some(sent) = sent else {
            return;
        };
        self.stats.pushes_acked += 1;
        self.rtt_sample(from, self.now.saturating_sub(sent).max(1));
        if let Some(region) = self.members.get(&from).map(|m| m.region.clone())
            && self.router.recover(&region)
        {
            self.stats.links_recovered += 1;
        }
    }

    /// A cross-region push went unacknowledged for its RTT timeout: mark the direct link
    /// to that region failed and send the events to the regions the push was for along
    /// the next-best path.
    fn on_ack_timeout(&mut self, id: u64) {
        let Some(p) = self.router.pending.remove(&id) else {
            return;
        };
        if self.router.late.len() >= route::LATE_ACKS_MAX {
            self.router.late.pop_first();
        }
        self.router.late.insert(id, (p.to, p.sent_us));
        self.stats.failovers += 1;
        self.stats.failover_after_us_max = self
            .stats
            .failover_after_us_max
            .max(self.now.saturating_sub(p.sent_us));
        if self.router.fail(&p.region, self.now) {
            // Check the link at once: a lost acknowledgement recovers it within an RTT.
            self.probe(p.to);
        }
        if p.reroutes >= route::REROUTES_MAX {
            self.stats.reroute_unreachable += 1;
            return;
        }
        let dests = self.region_indices(
            std::iter::once(p.region.as_str()).chain(p.relay.iter().map(|h| h.region.as_str())),
        );
        let Some(first) = p.events.first().cloned() else {
            return;
        };
        let (plan, unreachable) = self.plan_for(&first, &dests);
        self.stats.reroute_unreachable += unreachable.len() as u64;
        for (root, hops) in plan {
            self.push_allowed((root, hops, true, p.reroutes + 1), &p.events, true, false);
        }
    }

    fn probe(&mut self, target: OriginKey) {
        if self.router.probes.len() >= PROBES_OUT_MAX {
            return;
        }
        self.router.probe_nonce += 1;
        let nonce = self.router.probe_nonce;
        self.router.probes.insert(nonce, (target, self.now));
        self.stats.probes_sent += 1;
        let coord = self.router.vivaldi.coordinate();
        self.send(target, Message::Probe { nonce, coord });
    }

    #[inline(never)] // rare: see `on_sync_response`
    fn on_probe_ack(&mut self, from: OriginKey, nonce: u64, coord: weft_routing::Coordinate) {
        let Some((to, sent)) = self.router.probes.remove(&nonce) else {
            return;
        };
        if to != from {
            return;
        }
        self.stats.probes_answered += 1;
        let rtt = self.now.saturating_sub(sent).max(1);
        let _ = self.router.vivaldi.update(&coord, rtt);
        self.rtt_sample(from, rtt);
        if let Some(region) = self.members.get(&from).map(|m| m.region.clone())
            && self.router.recover(&region)
        {
            self.stats.links_recovered += 1;
        }
    }

    /// Probes the entry member (the root of this node's own tree) of a few regions, round
    /// robin, and of every region whose direct link is marked failed.
    fn send_probes(&mut self) {
        let me = self.me.node_key();
        // Forget probes that were never answered.
        let horizon = self.now.saturating_sub(10 * route::RTO_US_UNKNOWN);
        self.router.probes.retain(|_, (_, sent)| *sent >= horizon);
        let others: Vec<String> = self
            .regions
            .keys()
            .filter(|r| **r != self.me.region)
            .cloned()
            .collect();
        if others.is_empty() {
            return;
        }
        let mut pick: BTreeSet<String> = self.router.failed.keys().cloned().collect();
        for i in 0..self.config.probe_regions.min(others.len()) {
            pick.insert(others[(self.router.probe_cursor + i) % others.len()].clone());
        }
        self.router.probe_cursor =
            (self.router.probe_cursor + self.config.probe_regions) % others.len();
        for region in pick {
            if let Some(target) = self.region_root(&me, &region) {
                self.probe(target);
            }
        }
    }

    /// Republishes this node's link record when due, and gossips records to a few peers.
    fn gossip_links(&mut self) {
        let me = self.me.node_key();
        let since = self
            .router
            .own_published_us
            .map(|t| self.now.saturating_sub(t));
        let due = match since {
            None => true,
            Some(age) => {
                self.router.own_forced
                    || (self.router.own_dirty && age >= self.config.link_report_min_us)
                    || age >= self.config.link_refresh_us
            }
        };
        if due {
            self.router.status.published =
                self.seen.get(&me).map_or(0, |s| s.ranges().contiguous());
            self.router.status.stored = self.store.len() as u64;
            self.router.status.missing = self.missing.len() as u64;
            self.router.status.policy_epoch = self.me.policy_epoch;
            let record = self.router.own_record(&self.me, &self.members);
            let _ = self.router.take_record(
                Arc::new(record),
                &self.members,
                &self.regions,
                &me,
                self.now,
            );
            self.router.own_dirty = false;
            self.router.own_forced = false;
            self.router.own_published_us = Some(self.now);
        }
        let candidates = self.live_count(false);
        if candidates == 0 {
            return;
        }
        let budget = (usize::BITS - candidates.leading_zeros()) + 1;
        let batch = self.router.gossip_batch(budget, &me);
        if batch.is_empty() {
            return;
        }
        // The round's records go as a digest to distinct random peers; each pulls those it
        // would take.
        let digest = route::Router::digest_of(&batch);
        for k in self.distinct_live(false, self.config.link_fanout) {
            self.send(k, Message::LinkDigest(digest.clone()));
        }
    }

    /// After joining (or coming back under a new generation after being declared down), a
    /// node announces itself to [`CATCH_UP_ANNOUNCES`] random members per probe tick for as
    /// long as the last tick taught it new members, at most [`CATCH_UP_TICKS_MAX`] ticks.
    /// Each answers with a SWIM feed of random live members (as many as fit a SWIM
    /// message, about 60). SWIM gossip spreads changes, not the member list, and the seeds'
    /// feeds and the periodic announcements (every 15 s) alone left a node restarted in a
    /// 300-node mesh without a quarter of the members for a minute, and without some for
    /// two (docs/sim-speed.md): it could neither route to them nor keep their link records.
    /// A node with no live member left (cut off from every other node long enough for
    /// SWIM to declare them all down) announces itself to the members it holds down, once
    /// a probe tick. foca stops every timer of an instance with no active member,
    /// announcements to down members included, so without this two nodes that each found
    /// themselves alone (a two-node mesh, or a fabric of one node per region across a
    /// network outage) never found each other again after the heal.
    fn announce_when_alone(&mut self) {
        // A node that never had a member (a mesh of one) has none held down either.
        if self.foca.num_members() > 0
            || !self
                .foca
                .iter_membership_state()
                .any(|m| m.state() == foca::State::Down)
        {
            return;
        }
        self.stats.alone_announce_rounds += 1;
        self.announce_to_down();
    }

    fn catch_up_membership(&mut self) {
        let Some((left, known)) = self.catch_up else {
            return;
        };
        let now_known = self.members.len();
        if left == 0 || (now_known <= known && known > 0) {
            self.catch_up = None;
            return;
        }
        self.catch_up = Some((left - 1, now_known));
        let picks = self.distinct_live(false, CATCH_UP_ANNOUNCES);
        if picks.is_empty() {
            return;
        }
        let mut rt = SwimRuntime::default();
        for key in picks {
            let Some(member) = self.members.get(&key).cloned() else {
                continue;
            };
            let member = SwimId::new(MemberInfo::clone(&member));
            self.stats.catch_up_announces += 1;
            if self.foca.announce(member, &mut rt).is_err() {
                self.stats.swim_errors += 1;
            }
        }
        self.apply_swim(rt);
    }

    /// Hands the members that joined [`HANDOFF_DELAY_US`] ago this node's share of the
    /// link-state records, so a node that joins a large mesh (or restarts without its
    /// memory) holds the region graph's records within seconds. The rotation alone brings
    /// it about two records a second: two minutes and more for the 300 records of a
    /// 300-node mesh (docs/sim-speed.md). The records held, in key order, are cut in slices of
    /// one message each ([`route::LINK_RECORDS_PER_MESSAGE_MAX`]); slice `t` comes from the
    /// `t`-th member after the joiner in key order ([`Node::handoff_turn`]), so each record
    /// is handed over about once, every node holding the same sample.
    fn send_handoffs(&mut self) {
        let due: Vec<OriginKey> = self
            .handoffs
            .iter()
            .filter(|(_, at)| **at <= self.now)
            .map(|(k, _)| *k)
            .collect();
        for joiner in due {
            self.handoffs.remove(&joiner);
            if !self.members.contains_key(&joiner) {
                continue;
            }
            let Some(turn) = self.handoff_turn(&joiner) else {
                continue;
            };
            let per = route::LINK_RECORDS_PER_MESSAGE_MAX;
            let slice: Vec<Arc<LinkRecord>> = self
                .shared_records()
                .skip(turn * per)
                .take(per)
                .filter(|(k, _)| **k != joiner)
                .map(|(_, r)| r.clone())
                .collect();
            if !slice.is_empty() {
                self.stats.link_handoffs_sent += 1;
                self.send(joiner, Message::Links(slice));
            }
        }
    }

    /// The link records every node holds alike, in key order: all this node holds, less
    /// its own when it is outside its region's sample (the others do not keep it).
    fn shared_records(&self) -> impl Iterator<Item = (&OriginKey, &Arc<LinkRecord>)> {
        let me = self.me.node_key();
        let own_shared = self
            .regions
            .get(self.me.region.as_str())
            .is_some_and(|list| route::sampled(list, &me));
        self.router
            .record_arcs()
            .filter(move |(k, _)| **k != me || own_shared)
    }

    /// Which slice of the link-state records this node hands to `joiner`: its place among
    /// the members after the joiner in key order (wrapping), if it is one of the first as
    /// many as there are slices of the records it holds.
    fn handoff_turn(&self, joiner: &OriginKey) -> Option<usize> {
        use std::ops::Bound::{Excluded, Unbounded};
        let me = self.me.node_key();
        let slices = self
            .shared_records()
            .count()
            .div_ceil(route::LINK_RECORDS_PER_MESSAGE_MAX);
        if *joiner == me || slices == 0 {
            return None;
        }
        let turn = if me > *joiner {
            self.members
                .range((Excluded(*joiner), Excluded(me)))
                .take(slices)
                .count()
        } else {
            let after = self
                .members
                .range((Excluded(*joiner), Unbounded))
                .take(slices)
                .count();
            after
                + self
                    .members
                    .range(..me)
                    .take(slices - after.min(slices))
                    .count()
        };
        (turn < slices).then_some(turn)
    }

    /// Whether members of region `name` are candidates for [`Node::live_nth`]: not in a
    /// region whose link from here failed, and, with `other_regions`, not in this node's.
    fn live_region(&self, name: &str, other_regions: bool) -> bool {
        (!other_regions || name != self.me.region) && !self.router.failed.contains_key(name)
    }

    /// The candidates' per-region key lists, each with its number of candidates (this node
    /// is in its own region's list but no candidate).
    fn live_lists(&self, other_regions: bool) -> impl Iterator<Item = (&[OriginKey], usize)> {
        let me = self.me.node_key();
        self.regions
            .iter()
            .filter(move |(name, _)| self.live_region(name, other_regions))
            .map(move |(_, list)| {
                let len = list.len() - usize::from(list.binary_search(&me).is_ok());
                (list.as_slice(), len)
            })
    }

    /// How many live members other than this node [`Node::live_nth`] chooses from.
    fn live_count(&self, other_regions: bool) -> usize {
        self.live_lists(other_regions).map(|(_, len)| len).sum()
    }

    /// The `n`th of the [`Node::live_count`] candidates, region by region in name order
    /// and by key inside a region. Read from the per-region key lists: O(regions + one
    /// region's members), where walking every member record cost a 1000-node mesh a fifth
    /// of a millisecond per call (every record a cache miss).
    /// Up to `wanted` distinct live members ([`Node::live_nth`]'s), drawn at random: a
    /// position drawn twice is drawn again, at most four times the draws wanted; with no
    /// more members than wanted, all of them (no draw).
    fn distinct_live(
        &mut self,
        other_regions: bool,
        wanted: usize,
    ) -> smallvec::SmallVec<[OriginKey; 4]> {
        let count = self.live_count(other_regions);
        let mut picks: smallvec::SmallVec<[usize; 4]> = smallvec::SmallVec::new();
        if count <= wanted {
            picks.extend(0..count);
        } else {
            for _ in 0..4 * wanted {
                let pick = (self.rng.next_u64() % count as u64) as usize;
                if !picks.contains(&pick) {
                    picks.push(pick);
                }
                if picks.len() == wanted {
                    break;
                }
            }
        }
        picks
            .into_iter()
            .map_while(|pick| self.live_nth(other_regions, pick))
            .collect()
    }

    fn live_nth(&self, other_regions: bool, mut n: usize) -> Option<OriginKey> {
        let me = self.me.node_key();
        for (list, len) in self.live_lists(other_regions) {
            if n < len {
                return list.iter().filter(|k| **k != me).nth(n).copied();
            }
            n -= len;
        }
        None
    }

    #[inline(never)] // rare: see `on_sync_response`
    fn on_links(&mut self, records: Vec<Arc<LinkRecord>>) {
        let me = self.me.node_key();
        for record in records.into_iter().take(LINK_RECORDS_PER_MESSAGE_MAX) {
            match self
                .router
                .take_record(record, &self.members, &self.regions, &me, self.now)
            {
                Ok(true) => self.stats.link_records_new += 1,
                Ok(false) => {}
                Err(_) => self.stats.link_records_refused += 1,
            }
        }
    }

    /// The first [`LINK_RECORDS_PER_MESSAGE_MAX`] entries of a link-state digest or pull,
    /// the rest counted in [`Stats::link_entries_over_limit`].
    fn link_entries_read<'a, T>(&mut self, entries: &'a [T]) -> &'a [T] {
        let read = entries.len().min(LINK_RECORDS_PER_MESSAGE_MAX);
        self.stats.link_entries_over_limit += (entries.len() - read) as u64;
        &entries[..read]
    }

    /// A peer's link-state digest: pulls the records this node would take, at most
    /// [`LINK_RECORDS_PER_MESSAGE_MAX`] entries read (the rest counted in
    /// [`Stats::link_entries_over_limit`]).
    #[inline(never)] // rare: see `on_sync_response`
    fn on_link_digest(&mut self, from: OriginKey, entries: Vec<(OriginKey, u64)>) {
        let read = self.link_entries_read(&entries);
        let me = self.me.node_key();
        let pulls = self
            .router
            .pulls_for(read, &self.members, &self.regions, &me, self.now);
        if !pulls.is_empty() {
            self.stats.link_pulls_sent += 1;
            self.send(from, Message::LinkPull(pulls));
        }
    }

    /// A peer's pull: the records asked for that this node holds, in one message (at most
    /// [`LINK_RECORDS_PER_MESSAGE_MAX`] keys read, the rest counted in
    /// [`Stats::link_entries_over_limit`]).
    #[inline(never)] // rare: see `on_sync_response`
    fn on_link_pull(&mut self, from: OriginKey, keys: Vec<OriginKey>) {
        // Each record once, however often it is named (a key repeated 16 times would
        // otherwise draw 16 copies).
        let mut read: Vec<OriginKey> = Vec::with_capacity(LINK_RECORDS_PER_MESSAGE_MAX);
        for k in self.link_entries_read(&keys) {
            if !read.contains(k) {
                read.push(*k);
            }
        }
        let records = self.router.records_of(&read);
        if !records.is_empty() {
            self.stats.link_pull_records_sent += records.len() as u64;
            self.send(from, Message::Links(records));
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
        let pending = self.pending_ihave.entry(peer);
        if pending.capacity() == 0 {
            match self.ref_buffers.pop() {
                Some(buffer) => *pending = buffer,
                // Room for a typical flush at once, rather than growing through 4, 8, 16.
                None => pending.reserve(IHAVE_BATCH_RESERVE.max(events.len())),
            }
        }
        pending.extend(events.iter().map(|e| EventRef::of(e)));
        // Bounded: a full message's worth goes out at once instead of waiting.
        if pending.len() >= REFS_PER_MESSAGE_MAX {
            let full: Vec<EventRef> = std::mem::take(pending);
            for chunk in chunks_of(full, REFS_PER_MESSAGE_MAX) {
                self.stats.ihaves_sent += 1;
                self.send(peer, Message::IHave(chunk));
            }
        }
    }

    /// The events the replication filter lets go to `peer`: those clear for it, and, when
    /// `relaying` (the push names relay hops for the peer to carry it on), those it may carry
    /// as sealed transit. With `notify`, events kept from the peer are announced as
    /// [`Message::Skip`] (origin and sequence number only), so the peer's ordered delivery
    /// does not wait for them. `open`: the caller found every event unrestricted (false:
    /// not known, asked here).
    fn allowed<'a>(
        &mut self,
        events: &'a [Arc<Event>],
        peer: &OriginKey,
        relaying: bool,
        notify: bool,
        open: bool,
    ) -> Cow<'a, [Arc<Event>]> {
        let Some(info) = self.members.get(peer) else {
            // Not a known member (yet): nothing may go there until membership says who it is.
            self.stats.filtered += events.len() as u64;
            return Cow::Owned(Vec::new());
        };
        if open || events.iter().all(|e| self.filter.unrestricted(e)) {
            return Cow::Borrowed(events);
        }
        let passes =
            |hop: FilterHop| hop == FilterHop::Clear || (relaying && hop == FilterHop::Transit);
        // All of them may go (the usual case, also for restricted events): the list as it
        // is, no copy.
        let Some(first_kept) = events
            .iter()
            .position(|e| !passes(self.filter.hop(e, info)))
        else {
            return Cow::Borrowed(events);
        };
        let mut out = Vec::with_capacity(events.len());
        out.extend_from_slice(&events[..first_kept]);
        let mut skipped = Vec::new();
        for e in &events[first_kept..] {
            match self.filter.hop(e, info) {
                FilterHop::Clear => out.push(e.clone()),
                FilterHop::Transit if relaying => out.push(e.clone()),
                FilterHop::Transit | FilterHop::Refuse => {
                    self.stats.filtered += 1;
                    if notify {
                        skipped.push((e.origin(), e.seq()));
                    }
                }
            }
        }
        for chunk in chunks_of(skipped, REFS_PER_MESSAGE_MAX) {
            self.send(*peer, Message::Skip(chunk));
        }
        Cow::Owned(out)
    }

    /// [`Node::allowed`] of a list this node owns: the list itself when all of it may go.
    fn allowed_vec(
        &mut self,
        events: Vec<Arc<Event>>,
        peer: &OriginKey,
        relaying: bool,
        notify: bool,
    ) -> Vec<Arc<Event>> {
        let kept = match self.allowed(&events, peer, relaying, notify, false) {
            Cow::Owned(kept) => Some(kept),
            Cow::Borrowed(_) => None,
        };
        kept.unwrap_or(events)
    }

    /// Skips for erased events `peer` asked for: origin and sequence number only, like a
    /// residency Skip, so the peer's ordered delivery moves on.
    fn send_erased_skips(&mut self, peer: OriginKey, erased: &[(OriginKey, u64)]) {
        self.stats.erased_skips_sent += erased.len() as u64;
        for chunk in erased.chunks(REFS_PER_MESSAGE_MAX) {
            self.send(peer, Message::Skip(chunk.to_vec()));
        }
    }

    /// A Skip names only an origin and a sequence number (so that a node outside the
    /// event's residency learns nothing of it), so its receiver cannot check it against the
    /// event. The origin's word on its own numbers is final. Another node's word (a relay, an
    /// anti-entropy partner, a node that erased the event, the node a device publishes
    /// through) moves delivery on at once, but the number waits in `unconfirmed`: digests
    /// leave it out, so anti-entropy partners answer for it again. A Skip from a second node
    /// (or the origin) confirms it; the event itself, where this node may hold it,
    /// contradicts it and is delivered late ([`AppEvent::Late`]); after
    /// [`SKIP_CONFIRM_US`] with neither it is final. A lying node alone therefore cannot make
    /// another pass over events for good while an honest holder of them is reachable.
    fn on_skip(&mut self, from: OriginKey, list: Vec<(OriginKey, u64)>) {
        let mut relayed = 0;
        for (origin, seq) in list.into_iter().take(REFS_PER_MESSAGE_MAX) {
            if let Some(waiting) = self.unconfirmed_get(&origin, seq) {
                if waiting.by != from {
                    self.unconfirmed_take(&origin, seq);
                    self.stats.skips_confirmed += 1;
                }
                continue;
            }
            if origin == from {
                if self.skip_own(origin, seq) {
                    self.stats.skips_in += 1;
                }
                continue;
            }
            if seq == 0 || origin == self.me.node_key() || self.has_seen(&origin, seq) {
                continue;
            }
            let on_word = self.unconfirmed_by.get(&from).copied().unwrap_or(0);
            if on_word >= UNCONFIRMED_PER_SENDER_MAX || self.unconfirmed_len >= UNCONFIRMED_LEN_MAX
            {
                self.stats.skips_deferred += 1;
                continue;
            }
            // At the seen-set's range limit a number may not be recorded (the set drops its
            // highest range): nothing then waits for it.
            if self.skip_own(origin, seq) && self.has_seen(&origin, seq) {
                self.unconfirmed_put(
                    origin,
                    seq,
                    Unconfirmed {
                        by: from,
                        at: self.now,
                    },
                );
                self.stats.skips_in += 1;
                relayed += 1;
            }
        }
        if relayed > 0 {
            self.stats.skips_in_relayed += relayed;
            if self.members.contains_key(&from) {
                self.peers.entry(from).or_default().skips_taken += relayed;
            }
        }
    }

    /// Whether `(origin, seq)` is in the seen-set.
    fn has_seen(&self, origin: &OriginKey, seq: u64) -> bool {
        self.seen
            .get(origin)
            .is_some_and(|s| s.ranges().contains(seq))
    }

    fn unconfirmed_get(&self, origin: &OriginKey, seq: u64) -> Option<Unconfirmed> {
        if self.unconfirmed_len == 0 {
            return None;
        }
        self.unconfirmed.get(origin)?.get(&seq).copied()
    }

    /// Puts `(origin, seq)` among the Skips waiting for confirmation (not there yet), in
    /// memory and in the store (so that a restart keeps it waiting).
    fn unconfirmed_put(&mut self, origin: OriginKey, seq: u64, u: Unconfirmed) {
        if self.unconfirmed_note(origin, seq, u) {
            self.store.put_waiting_skip(&origin, seq, &u.by);
        }
    }

    /// [`Node::unconfirmed_put`] in memory only; whether the entry is new.
    fn unconfirmed_note(&mut self, origin: OriginKey, seq: u64, u: Unconfirmed) -> bool {
        let new = self
            .unconfirmed
            .entry(origin)
            .or_default()
            .insert(seq, u)
            .is_none();
        if new {
            self.unconfirmed_len += 1;
            *self.unconfirmed_by.entry(u.by).or_default() += 1;
        }
        new
    }

    /// Reloads the Skips the store kept waiting ([`Store::waiting_skips`]) after a
    /// restart. Their confirmation time starts again now (the node's clock does not
    /// survive a restart). An entry whose number the rebuilt seen-set lacks (above the
    /// restored delivery cursor: anti-entropy asks for it again) or beyond the quotas is
    /// dropped from the store.
    fn reload_waiting_skips(&mut self) {
        let me = self.me.node_key();
        for (origin, seq, by) in self.store.waiting_skips() {
            let keep = seq > 0
                && origin != me
                && origin != by
                && self.has_seen(&origin, seq)
                && self.unconfirmed_len < UNCONFIRMED_LEN_MAX
                && self.unconfirmed_by.get(&by).copied().unwrap_or(0) < UNCONFIRMED_PER_SENDER_MAX;
            let at = self.now;
            if !(keep && self.unconfirmed_note(origin, seq, Unconfirmed { by, at })) {
                self.stats.skips_dropped_at_restart += 1;
                self.store.take_waiting_skip(&origin, seq);
            }
        }
    }

    /// Removes `(origin, seq)` from the Skips waiting for confirmation.
    fn unconfirmed_take(&mut self, origin: &OriginKey, seq: u64) -> Option<Unconfirmed> {
        if self.unconfirmed_len == 0 {
            return None;
        }
        let of_origin = self.unconfirmed.get_mut(origin)?;
        let taken = of_origin.remove(&seq)?;
        if of_origin.is_empty() {
            self.unconfirmed.remove(origin);
        }
        self.store.take_waiting_skip(origin, seq);
        self.unconfirmed_len -= 1;
        self.unconfirmed_by_dec(&taken.by, 1);
        Some(taken)
    }

    fn unconfirmed_by_dec(&mut self, by: &OriginKey, n: usize) {
        if let Some(count) = self.unconfirmed_by.get_mut(by) {
            *count -= n;
            if *count == 0 {
                self.unconfirmed_by.remove(by);
            }
        }
    }

    /// The highest sequence number `origin` is known to have reached: the highest this
    /// node has seen other than on a word still waiting for confirmation (an event, the
    /// origin's own Skip, a confirmed or expired Skip, which expired only at or below such
    /// a number). 0 if none.
    fn reached(&self, origin: &OriginKey) -> u64 {
        let Some(seen) = self.seen.get(origin) else {
            return 0;
        };
        let waiting = self.unconfirmed.get(origin);
        for &(lo, hi) in seen.ranges().as_slice().iter().rev() {
            let mut q = hi;
            loop {
                if !waiting.is_some_and(|w| w.contains_key(&q)) {
                    return q;
                }
                if q == lo {
                    break;
                }
                q -= 1;
            }
        }
        0
    }

    /// Skips that waited [`SKIP_CONFIRM_US`] for confirmation become final, if their origin
    /// is known to have passed their number ([`Node::reached`]). A Skip for a number the
    /// origin has not reached keeps waiting: when the origin publishes it, the event comes
    /// and contradicts it (otherwise a lie about numbers not yet published would expire
    /// into a gap no event fills).
    fn expire_unconfirmed(&mut self) {
        if self.unconfirmed_len == 0 {
            return;
        }
        let now = self.now;
        let origins: Vec<OriginKey> = self.unconfirmed.keys().copied().collect();
        for origin in origins {
            let reached = self.reached(&origin);
            let Some(waiting) = self.unconfirmed.get_mut(&origin) else {
                continue;
            };
            let mut expired: Vec<(u64, OriginKey)> = Vec::new();
            waiting.retain(|&seq, u| {
                let keep = seq > reached || now.saturating_sub(u.at) < SKIP_CONFIRM_US;
                if !keep {
                    expired.push((seq, u.by));
                }
                keep
            });
            if waiting.is_empty() {
                self.unconfirmed.remove(&origin);
            }
            self.unconfirmed_len -= expired.len();
            self.stats.skips_unconfirmed += expired.len() as u64;
            for (seq, by) in expired {
                self.unconfirmed_by_dec(&by, 1);
                self.store.take_waiting_skip(&origin, seq);
            }
        }
    }

    /// An event arrived that this node may not hold (refused, or carried as sealed
    /// transit): a Skip waiting for confirmation of its number was right.
    fn confirmed_by_event(&mut self, origin: &OriginKey, seq: u64) {
        if self.unconfirmed_take(origin, seq).is_some() {
            self.stats.skips_confirmed += 1;
        }
    }

    /// An event arrived whose number this node had taken as a Skip on `waiting.by`'s word
    /// (not its origin's), and this node may hold it (the caller checked its own hop): the
    /// Skip was wrong, unless the store finds the event erased here (then it was right) or
    /// already held. The event is stored and delivered now, out of per-origin order
    /// ([`AppEvent::Late`]), or in order if delivery had not reached it yet; the
    /// contradiction is reported ([`AppEvent::SkipContradicted`]) and counted against the
    /// sender. A store error puts the Skip back to wait, so the number is asked for again.
    #[inline(never)]
    fn accept_late(
        &mut self,
        event: Arc<Event>,
        waiting: Unconfirmed,
    ) -> Result<Inserted, StoreError> {
        let id = event.id();
        let (origin, seq) = (event.origin(), event.seq());
        let interested = self.interested(event.stream());
        if interested {
            let inserted = self.store.insert(event.clone());
            self.seen.store_changed(&origin, &self.store);
            match inserted {
                Ok(Inserted::New) => {}
                Ok(Inserted::Duplicate) => {
                    self.stats.events_duplicate += 1;
                    self.arrived(&id);
                    return Ok(Inserted::Duplicate);
                }
                Ok(Inserted::Erased) => {
                    // Erased here too: the Skip (an erased Skip) was right.
                    self.stats.events_erased += 1;
                    self.stats.skips_confirmed += 1;
                    self.arrived(&id);
                    return Ok(Inserted::Erased);
                }
                Err(e) => {
                    self.stats.events_refused += 1;
                    self.unconfirmed_put(origin, seq, waiting);
                    return Err(e);
                }
            }
        } else {
            if self.relay_cache.contains_key(&id) {
                self.stats.events_duplicate += 1;
                self.arrived(&id);
                return Ok(Inserted::Duplicate);
            }
            if self.relay_order.len() >= RELAY_CACHE_LEN_MAX
                && let Some(old) = self.relay_order.pop_front()
            {
                self.relay_cache.remove(&old);
            }
            self.relay_cache.insert(id, event.clone());
            self.relay_order.push_back(id);
        }
        self.stats.skips_contradicted += 1;
        if self.members.contains_key(&waiting.by) {
            self.peers.entry(waiting.by).or_default().skips_contradicted += 1;
        }
        self.app.push_back(AppEvent::SkipContradicted {
            event: event.clone(),
            skipped_by: waiting.by,
        });
        if interested {
            if self.seen.get(&origin).is_some_and(|s| s.delivered >= seq) {
                self.stats.delivered += 1;
                self.stats.delivered_late += 1;
                self.app.push_back(AppEvent::Late(event));
            } else {
                // Delivery has not passed it yet (a gap below): it goes out in order.
                self.advance_delivery(origin);
            }
        }
        self.stats.events_new += 1;
        self.arrived(&id);
        Ok(Inserted::New)
    }

    /// How many Skips this node took from `peer` for events of other origins since it started
    /// ([`Stats::skips_in_relayed`], per sender; only members are counted).
    pub fn skips_taken_from(&self, peer: &OriginKey) -> u64 {
        self.peers.get(peer).map_or(0, |p| p.skips_taken)
    }

    /// How many of the Skips this node took from `peer` an event then contradicted
    /// ([`Stats::skips_contradicted`], per sender; only members are counted).
    pub fn skips_contradicted_by(&self, peer: &OriginKey) -> u64 {
        self.peers.get(peer).map_or(0, |p| p.skips_contradicted)
    }

    /// How many Skips taken on another node's word wait for confirmation.
    pub fn skips_unconfirmed_pending(&self) -> usize {
        self.unconfirmed_len
    }

    fn flush_ihave(&mut self) {
        let mut pending = self.pending_ihave.take();
        for (peer, refs) in pending.drain(..) {
            for chunk in chunks_of(refs, REFS_PER_MESSAGE_MAX) {
                self.stats.ihaves_sent += 1;
                self.send(peer, Message::IHave(chunk));
            }
        }
        self.pending_ihave.restore(pending);
    }

    fn on_push(
        &mut self,
        from: OriginKey,
        events: Vec<Arc<Event>>,
        relay: &[RelayHop],
        reroutes: u8,
    ) {
        // Inline: most pushes carry one event or a few (no allocation per push).
        let mut fresh: smallvec::SmallVec<[Arc<Event>; 4]> = smallvec::SmallVec::new();
        let mut held: smallvec::SmallVec<[Arc<Event>; 4]> = smallvec::SmallVec::new();
        let mut late: smallvec::SmallVec<[Arc<Event>; 4]> = smallvec::SmallVec::new();
        for event in events {
            match self.own_hop(&event) {
                FilterHop::Clear => match self.accept(event.clone(), false) {
                    Ok(Inserted::New) => fresh.push(event),
                    Ok(Inserted::Duplicate) if self.repaired.remove(&event.id()) => {
                        late.push(event);
                    }
                    Ok(Inserted::Duplicate) if !relay.is_empty() => held.push(event),
                    _ => {}
                },
                // Sealed transit: carried on along the relay path, never stored, delivered,
                // announced or passed down this region's tree; for this node's own ordered
                // delivery it is a Skip.
                FilterHop::Transit if !relay.is_empty() => {
                    self.stats.transit_forwarded += 1;
                    self.confirmed_by_event(&event.origin(), event.seq());
                    self.skip_own(event.origin(), event.seq());
                    held.push(event);
                }
                FilterHop::Transit | FilterHop::Refuse => self.refuse_own(&event),
            }
        }
        self.forward(&fresh, Some(from), true, false, relay, reroutes);
        // Events this node already had (or carries in transit) still go on to the regions
        // it relays for (a rerouted push passes through regions that hold the event
        // already).
        if !held.is_empty() {
            self.forward_held(held, from, relay, reroutes);
        }
        // Events anti-entropy brought before this, their tree push: they go on down this
        // region's tree (and to the regions it relays for) as new ones would. Otherwise a
        // region root repaired just before a rerouted push leaves its children to an IHAVE
        // and a GRAFT timeout (`link-cut`, seeds 131 and 135: 223 and 231 ms over the
        // ideal against a bound of 161 ms). Peers heard of them lazily at the repair, so
        // only the eager pushes.
        if !late.is_empty() {
            self.forward_batches(&late, Some(from), false, relay, reroutes);
        }
    }

    /// [`Node::on_push`]'s events this node already had (or carries in sealed transit):
    /// on to the regions it relays for.
    fn forward_held(
        &mut self,
        held: smallvec::SmallVec<[Arc<Event>; 4]>,
        from: OriginKey,
        relay: &[RelayHop],
        reroutes: u8,
    ) {
        let mut by_target: BTreeMap<Target, Vec<Arc<Event>>> = BTreeMap::new();
        for event in held {
            for target in self.relay_targets(&event, relay, reroutes, Some(from)) {
                if self.keeps(&target, Some(from)) {
                    by_target.entry(target).or_default().push(event.clone());
                }
            }
        }
        for (target, events) in by_target {
            self.push_allowed(target, &events, true, false);
        }
    }

    /// Whether this node pushes to `target`: not to itself, nor back to the peer the events
    /// came from (`except`), which holds them already (or carries them in sealed transit),
    /// unless the push carries relay hops (counted in [`Stats::relays_sent_back`]). A relay
    /// whose direct link to a region failed may find its best way there through the region
    /// it was sent from, whose root for the origin's events is the sender itself (the
    /// origin, when it pushed the event): that push must go, or the regions it names are
    /// dropped (`example.toml` seed 17: `aws:eu-west-1` missed an event for 1.7 s, until
    /// anti-entropy). The sender relays for the hops as for any others (see
    /// [`Node::on_push`]); `route::REROUTES_MAX` bounds the way back and forth.
    fn keeps(&mut self, target: &Target, except: Option<OriginKey>) -> bool {
        if target.0 == self.me.node_key() {
            return false;
        }
        if Some(target.0) != except {
            return true;
        }
        let relays = !target.1.is_empty();
        self.stats.relays_sent_back += u64::from(relays);
        relays
    }

    /// Remembers an event anti-entropy brought (see `repaired`), forgetting the oldest
    /// beyond [`REPAIRED_LEN_MAX`].
    fn remember_repaired(&mut self, id: EventId) {
        if self.repaired_order.len() >= REPAIRED_LEN_MAX
            && let Some(old) = self.repaired_order.pop_front()
        {
            self.repaired.remove(&old);
        }
        if self.repaired.insert(id) {
            self.repaired_order.push_back(id);
        }
    }

    fn on_ihave(&mut self, from: OriginKey, refs: Vec<EventRef>) {
        for &r in refs.iter().take(REFS_PER_MESSAGE_MAX) {
            // Cheapest test first (the seen-set answers nearly every announcement).
            if self
                .seen
                .get(&r.origin)
                .is_some_and(|s| s.ranges().contains(r.seq))
            {
                // Seen on another node's word only, and announced by a third: a node that
                // holds the event and may send it here. Fetch it: if it comes, it
                // contradicts the Skip now rather than at the next anti-entropy round.
                if self
                    .unconfirmed_get(&r.origin, r.seq)
                    .is_some_and(|u| u.by != from)
                    && !self.store.holds(&r)
                    && !self.relay_cache.contains_key(&r.id)
                {
                    self.note_missing(from, r);
                }
                continue;
            }
            if self.store.holds(&r) || self.relay_cache.contains_key(&r.id) {
                continue;
            }
            self.note_missing(from, r);
        }
        self.keep_ref_buffer(refs);
    }

    /// [`Node::on_ihave`]'s announcement of an event this node lacks: `from` joins its
    /// announcers, or it becomes missing with a GRAFT timer. Out of line: the seen-set
    /// answers nearly every announcement before this.
    #[inline(never)]
    fn note_missing(&mut self, from: OriginKey, r: EventRef) {
        if let Some(m) = self.missing.get_mut(&r.id) {
            if m.announcers.len() < ANNOUNCERS_MAX && !m.announcers.contains(&from) {
                m.announcers.push_back(from);
            }
            return;
        }
        if self.missing.len() >= MISSING_LEN_MAX {
            self.stats.missing_dropped += 1;
            return;
        }
        let at = self.now + self.config.graft_timeout_us;
        let timer = self.schedule(at, Timer::Graft(r.id));
        self.missing.insert(
            r.id,
            Missing {
                event: r,
                announcers: VecDeque::from([from]),
                timer,
            },
        );
    }

    /// Keeps an emptied reference buffer for the next IHAVE batch (see `ref_buffers`).
    fn keep_ref_buffer(&mut self, mut refs: Vec<EventRef>) {
        if self.ref_buffers.len() < REF_BUFFERS_MAX
            && (1..=REF_BUFFER_CAP_MAX).contains(&refs.capacity())
        {
            refs.clear();
            self.ref_buffers.push(refs);
        }
    }

    fn on_graft_timer(&mut self, id: EventId) {
        let Some(m) = self.missing.get_mut(&id) else {
            return;
        };
        // The nearest announcer first (measured, else estimated from coordinates): the
        // graft's answer comes back soonest from there.
        let router = &self.router;
        let nearest = m
            .announcers
            .iter()
            .enumerate()
            .min_by_key(|(i, k)| (router.estimate_us(k).unwrap_or(Micros::MAX), *i))
            .map(|(i, _)| i);
        let Some(peer) = nearest.and_then(|i| m.announcers.remove(i)) else {
            self.missing.remove(&id);
            return;
        };
        let r = m.event;
        let retry = !m.announcers.is_empty();
        if !retry {
            self.missing.remove(&id);
        }
        if self.members.contains_key(&peer) {
            self.pending_graft.entry(peer).push(r);
        }
        if retry {
            let at = self.now + self.config.graft_timeout_us;
            let timer = self.schedule(at, Timer::Graft(id));
            if let Some(m) = self.missing.get_mut(&id) {
                m.timer = timer;
            }
        }
    }

    #[inline(never)] // rare: see `on_sync_response`
    fn on_graft(&mut self, from: OriginKey, refs: Vec<EventRef>) {
        let mut events = Vec::new();
        let mut erased = Vec::new();
        for &r in refs.iter().take(REFS_PER_MESSAGE_MAX) {
            if let Some(e) = self
                .store
                .get(&r.origin, r.seq)
                .or_else(|| self.relay_cache.get(&r.id).cloned())
                && e.id() == r.id
            {
                events.push(e);
            } else if self.store.erased(&r.origin, r.seq) {
                erased.push((r.origin, r.seq));
            }
        }
        self.keep_ref_buffer(refs);
        self.send_erased_skips(from, &erased);
        let events = self.allowed_vec(events, &from, false, true);
        // A GRAFT may name up to REFS_PER_MESSAGE_MAX events (this node's own name up to
        // `graft_batch_len_max`): `push` cuts the answer into push-sized batches (count and
        // bytes), never one message over the wire limit.
        self.push(from, &events, Vec::new(), false, 0);
    }

    /// What this node has seen, from `from_origin` on: every origin, or, when
    /// `summarise` (a new round: `from_origin` is `None`), those whose ranges changed in
    /// the last [`SYNC_SETTLED_US`] (and those `seen::summary_ranges` cannot vouch for)
    /// listed and the rest summarised. The summary is kept as the seen-set changes
    /// (`seen.rs`): a summarised digest costs what it lists.
    fn digest(
        &mut self,
        from_origin: Option<OriginKey>,
        summarise: bool,
    ) -> (Digest, Option<super::Settled>) {
        use std::ops::Bound::{Included, Unbounded};
        if summarise {
            let key = [self.rng.next_u64(), self.rng.next_u64()];
            self.settle_summary();
            let (mut count, mut hash) = self.seen.summary_totals();
            let mut listed: Vec<OriginKey> = self.seen.unsummarised().copied().collect();
            // An origin with Skips waiting for a second word is listed, with them left out
            // ([`Node::digest_entry`]).
            if self.unconfirmed_len > 0 {
                for o in self.unconfirmed.keys() {
                    if let Some(h) = self.seen.counted(o) {
                        count -= 1;
                        hash = hash.wrapping_sub(h);
                        listed.push(*o);
                    }
                }
            }
            listed.sort_unstable();
            let digest = listed
                .iter()
                .filter_map(|o| Some(self.digest_entry(o, self.seen.get(o)?)))
                .collect();
            let settled = (count > 0).then(|| super::Settled {
                key,
                count: u32::try_from(count).unwrap_or(u32::MAX),
                hash,
            });
            return (digest, settled);
        }
        let from = from_origin.map_or(Unbounded, Included);
        let digest = self
            .seen
            .range_from(from)
            .map(|(o, s)| self.digest_entry(o, s))
            .collect();
        (digest, None)
    }

    /// Brings the anti-entropy summary to now ([`SeenSet::settle`]), with what the
    /// seen-set took in from the store ([`Node::took_in`]).
    fn settle_summary(&mut self) {
        let taken = self.seen.settle(self.now, &self.store);
        self.took_in(taken);
    }

    /// Origins the seen-set just took in from the store ([`SeenSet::take_in`]: at a
    /// restart, or after `store_mut`): counted, and stored events the store's cursor says
    /// were not delivered yet, in an unbroken run above it (delivery was paused, or the
    /// store kept events it had not logged as delivered), delivered at the next
    /// `poll_event` without waiting for the origin's next event.
    fn took_in(&mut self, origins: Vec<OriginKey>) {
        for origin in origins {
            let s = self.seen.get(&origin).expect("just taken in");
            self.seen_count += s.ranges().count();
            if s.delivered < s.ranges().contiguous() {
                self.delivery_paused.insert(origin);
            }
        }
    }

    /// One origin's entry in a digest: the ranges seen, less the Skips waiting for a second
    /// word (left out, so the partner answers for them: the event, or a Skip of its own).
    fn digest_entry(&self, o: &OriginKey, s: &OriginSeen) -> (OriginKey, DigestRanges) {
        if self.unconfirmed_len > 0
            && let Some(waiting) = self.unconfirmed.get(o)
        {
            // Each hole can split a range: stay within the ranges a digest entry holds.
            let room = RANGES_PER_ORIGIN_MAX.saturating_sub(s.ranges().range_count() + 1);
            let holes: Vec<(u64, u64)> = waiting
                .keys()
                .take(DIGEST_HOLES_MAX.min(room))
                .map(|&q| (q, q))
                .collect();
            return (
                *o,
                s.ranges().difference_ranges(&holes).into_iter().collect(),
            );
        }
        (*o, s.ranges().iter().collect())
    }

    /// Whether the origins a request's digest leaves out (`listed`, sorted, each once) give,
    /// in what this node has seen or holds of them (`seen::summary_ranges`), the
    /// request's summary: then this node holds nothing of them the requester lacks.
    /// (Every origin of the store is in the seen-set: a record per stored origin is made at
    /// start, and every event stored after is recorded.) A summary resuming from an origin
    /// (this build never sends one) is taken as not matching: the requester then sends its
    /// whole digest.
    fn settled_matches(
        &mut self,
        listed: &Digest,
        from_origin: Option<OriginKey>,
        settled: &super::Settled,
    ) -> bool {
        if from_origin.is_some() {
            return false;
        }
        self.settle_summary();
        self.seen
            .matches(listed, settled.count, settled.hash, &self.store)
    }

    /// Starts an anti-entropy round with the best partner ([`Node::ranked_partner`]: the one
    /// known to have seen the most more than we have ([`Node::seen_count`]), else the one
    /// synced least recently, ties broken by RTT). Every other round instead goes to a
    /// random member of another region: a whole region can miss the same event (its tree
    /// root was unreachable), and "nearest" would then keep pairing nodes that all lack it.
    /// Partners that did not answer their last request or that SWIM suspects are passed
    /// over while another is at hand ([`Node::unlikely_to_answer`]): in a partition, rounds
    /// across the cut repair nothing and the events the cut stopped in flight are on this
    /// side.
    fn start_sync(&mut self) {
        self.sync_rounds += 1;
        // Every fourth round, a hole in an origin's sequence (delivery stalled behind an
        // event, or a Skip, that never came: a node the publisher did not know yet gets no
        // Skip) is repaired from the origin itself, which holds all its events: it answers
        // with the event, or with a Skip when this node may not hold it. So is the first
        // round after one with a member back from down (`stalled_first`).
        // That one asks the stalled origin with the lowest key: a request from an origin on
        // covers every origin above it, so one round repairs all the holes its answerer
        // holds (after a heal: every origin of its side).
        let stalled_first = std::mem::take(&mut self.stalled_first);
        let turn = if stalled_first {
            Some(0)
        } else {
            (self.sync_rounds % 4 == 2).then_some(self.sync_rounds / 4)
        };
        if let Some(turn) = turn
            && let Some(origin) = self.stalled_origin(turn)
        {
            // An origin that is silent or suspected (cut off, or down) is not asked: the best
            // other partner is, from that origin on (it may hold what its side got before).
            let partner = if self.unlikely_to_answer(&origin) {
                self.stats.sync_partners_passed_over += 1;
                self.ranked()
            } else {
                Some(origin)
            };
            if let Some(partner) = partner {
                self.sync_with(partner, Some(origin), true);
                return;
            }
        }
        if self.sync_rounds.is_multiple_of(2) {
            let count = self.live_count(true);
            // A few draws for one likely to answer (each draw costs a walk of the region
            // lists); when none is, the ranked choice below.
            let draws = if count > 0 { RANDOM_PARTNER_DRAWS } else { 0 };
            for _ in 0..draws {
                let pick = (self.rng.next_u64() % count as u64) as usize;
                let Some(partner) = self.live_nth(true, pick) else {
                    return;
                };
                if !self.unlikely_to_answer(&partner) {
                    self.sync_with(partner, None, false);
                    return;
                }
                self.stats.sync_partners_passed_over += 1;
            }
        }
        if let Some(partner) = self.ranked() {
            self.sync_with(partner, None, false);
        }
    }

    /// [`Node::ranked_partner`], counting a suspected member it passed over.
    fn ranked(&mut self) -> Option<OriginKey> {
        let (partner, passed_over) = self.ranked_partner()?;
        self.stats.sync_partners_passed_over += u64::from(passed_over);
        Some(partner)
    }

    /// Whether `peer` has not answered this node's last anti-entropy request (see
    /// [`SILENT_RETRY_INTERVALS`]).
    fn silent(&self, peer: &OriginKey) -> bool {
        self.peers
            .get(peer)
            .is_some_and(|p| p.silent(self.now, self.config.sync_interval_us))
    }

    /// Whether SWIM holds `peer` as suspect (a probe of it failed and it has not refuted
    /// yet): the failure detector's word, known across the mesh seconds before the member
    /// is declared down.
    fn suspected(&self, peer: &OriginKey) -> bool {
        self.foca
            .member(&peer.0)
            .is_some_and(|m| m.state() == foca::State::Suspect)
    }

    /// [`Node::silent`] or [`Node::suspected`]: not chosen for anti-entropy while another
    /// partner is.
    fn unlikely_to_answer(&self, peer: &OriginKey) -> bool {
        self.silent(peer) || self.suspected(peer)
    }

    /// The partner of a regular anti-entropy round: members that answered before silent
    /// ones (a silent one is chosen only when every member is), then the one that has seen
    /// the most more than this node ([`Node::seen_count`]), then the stalest, then the nearest; of the
    /// [`RANKED_CANDIDATES`] best, the first SWIM does not suspect (looked up for those few
    /// only: a lookup per member costs a 1000-node mesh a cache miss each).
    /// Also says whether a better-ranked member was passed over as suspected.
    ///
    /// A member this node holds no [`PeerState`] for ranks by its estimate alone (never
    /// silent, nothing more, never synced): the best of those are the first of the near
    /// index. So the members with peer state are ranked one by one (a handful: the
    /// partners of past rounds), the others only as far into the index as the best need.
    fn ranked_partner(&self) -> Option<(OriginKey, bool)> {
        let me = self.me.node_key();
        let held = self.seen_count;
        let (now, interval) = (self.now, self.config.sync_interval_us);
        let failed = &self.router.failed;
        // A member, not this node, and not in a region whose direct link failed.
        let eligible = |k: &OriginKey| {
            *k != me
                && self
                    .members
                    .get(k)
                    .is_some_and(|m| failed.is_empty() || !failed.contains_key(m.region.as_str()))
        };
        // The few best, in order (a sorted insert into a handful beats sorting them all).
        let mut best: smallvec::SmallVec<[_; RANKED_CANDIDATES + 1]> = smallvec::SmallVec::new();
        let mut offer = |candidate| {
            if best.len() == RANKED_CANDIDATES && best.last().is_some_and(|b| candidate >= *b) {
                return;
            }
            let at = best.partition_point(|b| *b < candidate);
            best.insert(at, candidate);
            best.truncate(RANKED_CANDIDATES);
        };
        for (k, p) in &self.peers {
            if eligible(k) {
                let rtt = self.router.rtt_us(k).unwrap_or(Micros::MAX);
                let more = p.held.saturating_sub(held);
                let last = p.last_sync_us.unwrap_or(0);
                offer((
                    p.silent(now, interval),
                    std::cmp::Reverse(more),
                    last,
                    rtt,
                    *k,
                ));
            }
        }
        let mut taken = 0;
        for &(rtt, k) in &self.near.by_rtt {
            if taken == RANKED_CANDIDATES {
                break;
            }
            if self.peers.contains_key(&k) || !eligible(&k) {
                continue;
            }
            offer((false, std::cmp::Reverse(0), 0, rtt, k));
            taken += 1;
        }
        let &(.., first) = best.first()?;
        Some(
            match best.iter().find(|&&(.., key)| !self.suspected(&key)) {
                Some(&(.., key)) => (key, key != first),
                None => (first, false),
            },
        )
    }

    /// [`Node::ranked_partner`] as it was computed before the near index: a walk of every
    /// member (the reference the index must agree with).
    #[cfg(test)]
    fn ranked_partner_walk(&self) -> Option<(OriginKey, bool)> {
        let me = self.me.node_key();
        let held = self.seen_count;
        let (now, interval) = (self.now, self.config.sync_interval_us);
        // `members`, `peers` and the RTT estimators are all ordered by key: walk them
        // together rather than look each member up (this runs every sync interval over every
        // member).
        let mut peers = self.peers.iter().peekable();
        let mut rtts = self.router.estimators().peekable();
        let failed = &self.router.failed;
        let ranked = self
            .members
            .iter()
            // The member record is read only when some link failed: a walk of the keys
            // alone touches a fraction of the memory.
            .filter(|(k, m)| {
                **k != me && (failed.is_empty() || !failed.contains_key(m.region.as_str()))
            })
            .map(|(k, _)| k)
            .map(|k| {
                while peers.next_if(|(pk, _)| *pk < k).is_some() {}
                let p = peers.peek().filter(|(pk, _)| *pk == k).map(|(_, p)| *p);
                let silent = p.is_some_and(|p| p.silent(now, interval));
                let more = p.map_or(0, |p| p.held.saturating_sub(held));
                let last = p.and_then(|p| p.last_sync_us).unwrap_or(0);
                while rtts.next_if(|(rk, _)| *rk < k).is_some() {}
                let rtt = rtts
                    .peek()
                    .filter(|(rk, _)| *rk == k)
                    .and_then(|(_, e)| e.estimate_us())
                    .unwrap_or(Micros::MAX);
                (silent, std::cmp::Reverse(more), last, rtt, *k)
            });
        // The few best, in order (a sorted insert into a handful beats sorting them all).
        let mut best: smallvec::SmallVec<[_; RANKED_CANDIDATES + 1]> = smallvec::SmallVec::new();
        for candidate in ranked {
            if best.len() == RANKED_CANDIDATES && best.last().is_some_and(|b| candidate >= *b) {
                continue;
            }
            let at = best.partition_point(|b| *b < candidate);
            best.insert(at, candidate);
            best.truncate(RANKED_CANDIDATES);
        }
        let &(.., first) = best.first()?;
        Some(
            match best.iter().find(|&&(.., key)| !self.suspected(&key)) {
                Some(&(.., key)) => (key, key != first),
                None => (first, false),
            },
        )
    }

    /// Notes a member back from down and schedules the round with it (none is pending and
    /// none ran within the last sync interval: a later one serves members still noted).
    fn member_returned(&mut self, key: OriginKey) {
        if self.returned.len() >= RETURNED_LEN_MAX {
            self.returned.pop_front();
        }
        self.returned.push_back(key);
        let at = match self.sync_back {
            // One is pending: it serves this member too.
            Some(at) if at > self.now => return,
            // One ran within the interval: the next once the interval has passed.
            Some(at) if self.now - at < self.config.sync_interval_us => {
                at + self.config.sync_interval_us
            }
            _ => self.now + SYNC_BACK_DELAY_US,
        };
        self.sync_back = Some(at);
        self.schedule(at, Timer::SyncBack);
    }

    /// The round with a member back from down: the nearest of those noted that is still a
    /// member. The others are forgotten (their side's events come with this round, or with
    /// the regular ones).
    fn sync_with_returned(&mut self) {
        let returned = std::mem::take(&mut self.returned);
        let partner = returned
            .iter()
            .filter(|k| self.members.contains_key(k))
            .min_by_key(|k| self.router.estimate_us(k).unwrap_or(Micros::MAX))
            .copied();
        if let Some(partner) = partner {
            self.stats.sync_back_rounds += 1;
            // After a heal: what the other side published while cut off is in origins that
            // look settled here, so the whole digest at once.
            self.sync_with(partner, None, true);
            self.stalled_first = true;
        }
        self.announce_to_down();
    }

    /// A member came back from down, most likely because a partition healed: announces
    /// this node to the members SWIM still holds down (at most [`DOWN_ANNOUNCE_MAX`]), the
    /// rest of the other side, instead of waiting for the periodic announcements (a few
    /// members a second) to find them one by one. Rate-limited with the round with a
    /// returned member: once per sync interval at most. With more members down than that,
    /// each call starts where the last one stopped, so successive heals reach them all.
    fn announce_to_down(&mut self) {
        let held: Vec<&SwimId> = self
            .foca
            .iter_membership_state()
            .filter(|m| m.state() == foca::State::Down)
            .map(|m| m.id())
            .collect();
        let n = held.len();
        let start = if n > DOWN_ANNOUNCE_MAX {
            self.down_announce_from % n
        } else {
            0
        };
        let down: Vec<SwimId> = held
            .into_iter()
            .cycle()
            .skip(start)
            .take(n.min(DOWN_ANNOUNCE_MAX))
            .cloned()
            .collect();
        self.down_announce_from = start + down.len();
        let mut rt = SwimRuntime::default();
        for member in down {
            self.stats.down_announcements += 1;
            if self.foca.announce(member, &mut rt).is_err() {
                self.stats.swim_errors += 1;
            }
        }
        self.apply_swim(rt);
    }

    /// Sends `partner` this node's digest (from `from_origin` on, when resuming or asking an
    /// origin) and notes when.
    fn sync_with(&mut self, partner: OriginKey, from_origin: Option<OriginKey>, full: bool) {
        self.peers.entry(partner).or_default().last_sync_us = Some(self.now);
        self.send_digest(partner, from_origin, full);
    }

    /// Sends `partner` this node's digest, from `from_origin` on (a new round, or one
    /// resumed where the partner's answer was cut). A new round summarises the origins
    /// settled for [`SYNC_SETTLED_US`] ([`super::Settled`]) unless `full`, or unless the
    /// partner was known to have seen more than this node ([`Node::seen_count`]; then the
    /// summary would likely only cost a round trip).
    fn send_digest(&mut self, partner: OriginKey, from_origin: Option<OriginKey>, full: bool) {
        // A resumed round waits for an answer too: a partner cut off mid-transfer goes silent.
        let now = self.now;
        self.expire_unconfirmed();
        let held = self.seen_count;
        let peer = self.peers.entry(partner).or_default();
        peer.unanswered_since.get_or_insert(now);
        let summarise = !full && from_origin.is_none() && peer.held <= held;
        let (digest, settled) = self.digest(from_origin, summarise);
        if let Some(p) = self.peers.get_mut(&partner) {
            p.summary_pending = settled.map(|s| s.key);
        }
        self.stats.sync_requests_sent += 1;
        self.stats.sync_summaries_sent += u64::from(settled.is_some());
        self.send(
            partner,
            Message::SyncRequest {
                digest,
                from_origin,
                settled,
            },
        );
    }

    /// A live origin (not in a region whose link failed) with a hole in what this node has
    /// seen of it: the `turn`th of them (modulo their number) in key order, so successive
    /// turns rotate over them.
    fn stalled_origin(&self, turn: u64) -> Option<OriginKey> {
        let me = self.me.node_key();
        // Only the origins with a hole (few), which the seen-set keeps apart.
        let stalled = || {
            self.seen.holed().filter_map(|(o, _)| {
                let live = || {
                    self.members
                        .get(o)
                        .is_some_and(|m| !self.router.failed.contains_key(m.region.as_str()))
                };
                (*o != me && live()).then_some(*o)
            })
        };
        let count = stalled().count();
        if count == 0 {
            return None;
        }
        stalled().nth(turn as usize % count)
    }

    #[inline(never)] // rare: see `on_sync_response`
    fn on_sync_request(
        &mut self,
        from: OriginKey,
        digest: Digest,
        from_origin: Option<OriginKey>,
        settled: Option<super::Settled>,
    ) {
        // It reaches this node: no longer silent (a cut shorter than SWIM's down timeout
        // brings no MemberUp to clear it).
        if let Some(peer) = self.peers.get_mut(&from) {
            peer.unanswered_since = None;
        }
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
        let held = self.seen_count;
        // A summary of the origins the digest leaves out: if this node has seen the same of
        // them, only the listed origins can hold anything the requester lacks; if not, it
        // asks for the whole digest (answering as if the requester had nothing of them
        // would send all of it).
        let origins: Vec<OriginKey> = match &settled {
            Some(summary) if !self.settled_matches(&theirs, from_origin, summary) => {
                self.stats.sync_unsettled_out += 1;
                self.send(
                    from,
                    Message::SyncResponse {
                        events: Vec::new(),
                        resume: None,
                        held,
                        unsettled: Some(summary.key),
                    },
                );
                return;
            }
            Some(_) => theirs.iter().map(|(o, _)| *o).collect(),
            None => self.store.origins(),
        };
        let mut events = Vec::new();
        let mut erased = Vec::new();
        let mut resume = None;
        let mut bytes = 0usize;
        let limit = self.config.sync_batch_len_max.max(1);
        for origin in origins
            .into_iter()
            .filter(|o| from_origin.is_none_or(|f| *o >= f))
        {
            let Some(mine) = self.store.ranges(&origin) else {
                continue;
            };
            let room = limit - events.len();
            let lacking = match theirs.binary_search_by(|(o, _)| o.cmp(&origin)) {
                Err(_) => mine.difference_ranges(&[]),
                Ok(at) if SeqRanges::is_normalized(&theirs[at].1) => {
                    mine.difference_ranges(&theirs[at].1)
                }
                Ok(at) => mine.difference_ranges(
                    SeqRanges::from_ranges(theirs[at].1.iter().copied()).as_slice(),
                ),
            };
            // Nothing lacking (the common case): no more to look up for this origin.
            if lacking.is_empty() {
                continue;
            }
            let lacking_count = SeqRanges::covered(&lacking);
            let mut cut = false;
            // All the requester lacks of this origin is what arrived here lately: most
            // likely on its way to the requester too (SYNC_FRESH_US). Behind on older
            // numbers as well, it gets everything.
            let fresh_from = self
                .seen
                .get(&origin)
                .filter(|s| s.fresh_from > 0 && self.now.saturating_sub(s.fresh_at) < SYNC_FRESH_US)
                .map_or(u64::MAX, |s| s.fresh_from);
            if lacking.first().is_some_and(|(seq, _)| *seq >= fresh_from) {
                self.stats.sync_events_held_back += lacking_count.min(room as u64);
                continue;
            }
            for seq in lacking.iter().flat_map(|&(s, e)| s..=e).take(room) {
                if let Some(e) = self.store.get(&origin, seq) {
                    bytes += e.signed_bytes().len() + 64;
                    events.push(e);
                    if bytes >= BATCH_BYTES_MAX {
                        cut = true;
                        break;
                    }
                } else if self.store.erased(&origin, seq) {
                    // In the ranges, not stored: erased here. The peer gets a Skip so
                    // its ordered delivery does not wait for it.
                    erased.push((origin, seq));
                }
            }
            if cut || lacking_count > room as u64 {
                resume = Some(origin);
                break;
            }
        }
        self.send_erased_skips(from, &erased);
        let events = self.allowed_vec(events, &from, false, true);
        self.stats.sync_events_sent += events.len() as u64;
        self.send(
            from,
            Message::SyncResponse {
                events,
                resume,
                held,
                unsettled: None,
            },
        );
    }
}

/// Checks up to [`CHECK_WINDOW`] entries after `after` (from the first when `None`) of a
/// table walked in key order by `range_from` (its entries from a bound on), and returns
/// where the next window starts (`None`: from the first again).
fn check_window<'a, K: Copy + 'a, V: 'a, I: Iterator<Item = (&'a K, &'a V)>>(
    range_from: impl FnOnce(std::ops::Bound<K>) -> I,
    after: Option<K>,
    mut check: impl FnMut(&K, &V),
) -> Option<K> {
    let from = after.map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded);
    let mut last = None;
    let mut taken = 0;
    for (k, v) in range_from(from).take(CHECK_WINDOW) {
        check(k, v);
        last = Some(*k);
        taken += 1;
    }
    // The end reached: the next walk starts over.
    if taken < CHECK_WINDOW { None } else { last }
}

/// Splits `events` into batches of at most `len_max` events and [`BATCH_BYTES_MAX`] bytes
/// (a single larger event still travels, alone). Inline for the common single batch (no
/// allocation per push). Public for pushes built outside the core (the node's confirmable
/// copies), which must fit a message the same way.
pub fn batches_of(events: &[Arc<Event>], len_max: usize) -> smallvec::SmallVec<[&[Arc<Event>]; 1]> {
    let len_max = len_max.max(1);
    let mut out = smallvec::SmallVec::new();
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

/// Batches per peer (IHAVEs waiting for their flush, GRAFTs due in one timer call), in
/// the order of the peers' keys: a short vector searched by key. A node batches for a
/// handful of peers at a time; a tree map allocated its nodes afresh after every flush and
/// walked them again to free them.
#[derive(Debug)]
struct PeerBatches<T>(Vec<(OriginKey, Vec<T>)>);

impl<T> Default for PeerBatches<T> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<T> PeerBatches<T> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `peer`'s batch, added empty if it has none.
    fn entry(&mut self, peer: OriginKey) -> &mut Vec<T> {
        let at = match self.0.binary_search_by(|(k, _)| k.cmp(&peer)) {
            Ok(at) => at,
            Err(at) => {
                self.0.insert(at, (peer, Vec::new()));
                at
            }
        };
        &mut self.0[at].1
    }

    /// Every batch, in key order, leaving none.
    fn take(&mut self) -> Vec<(OriginKey, Vec<T>)> {
        std::mem::take(&mut self.0)
    }

    /// Gives back the vector [`PeerBatches::take`] returned, drained, for its allocation.
    fn restore(&mut self, mut list: Vec<(OriginKey, Vec<T>)>) {
        if self.0.is_empty() {
            list.clear();
            self.0 = list;
        }
    }

    fn values(&self) -> impl Iterator<Item = &Vec<T>> {
        self.0.iter().map(|(_, batch)| batch)
    }

    #[cfg(test)]
    fn clear(&mut self) {
        self.0.clear();
    }
}

/// `list` in chunks of at most `len` (at least 1) items, in order, as `slice::chunks` cuts
/// it (none for an empty list). The usual single chunk is `list` itself, moved (no copy
/// per message).
fn chunks_of<T: Clone>(list: Vec<T>, len: usize) -> smallvec::SmallVec<[Vec<T>; 1]> {
    let len = len.max(1);
    if list.is_empty() {
        return smallvec::SmallVec::new();
    }
    if list.len() <= len {
        return smallvec::smallvec![list];
    }
    list.chunks(len).map(<[T]>::to_vec).collect()
}

/// Rendezvous rank of `member` for `origin`: a fixed mixing function (splitmix64) of both
/// keys, the same on every node and every run.
pub(crate) fn rank(origin: &OriginKey, member: &OriginKey) -> u64 {
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

    /// A member with key `[key; 32]` in `region`.
    fn member_of(key: u8, region: &str) -> MemberInfo {
        MemberInfo::for_test(key, region)
    }

    /// Nodes with keys from `seeds`, spread over `regions`, each knowing all the others,
    /// with RTTs between regions from `rtts` (a 6 x 6 matrix, symmetrized) measured by
    /// every node and shared as link-state records.
    fn mesh(
        seeds: &[u8],
        regions: usize,
        arity: usize,
        rtts: &[u64],
    ) -> Vec<Node<crate::mesh::MemStore>> {
        let infos: Vec<MemberInfo> = seeds
            .iter()
            .enumerate()
            .map(|(i, seed)| {
                let signer = crate::Signer::from_secret(&[*seed; 32]);
                MemberInfo {
                    key: signer.origin().0,
                    region: format!("r{}", i % regions).into(),
                    cloud: "c".into(),
                    jurisdiction: "EU".into(),
                    addr: format!("n{i}").into(),
                    policy_epoch: 0,
                    generation: 0,
                }
            })
            .collect();
        let rtt = |a: usize, b: usize| -> u64 {
            let (ra, rb) = (a % regions, b % regions);
            if ra == rb {
                500
            } else {
                rtts[ra.min(rb) * 6 + ra.max(rb)]
            }
        };
        let mut nodes: Vec<Node<crate::mesh::MemStore>> = infos
            .iter()
            .enumerate()
            .map(|(i, me)| {
                let mut config = MeshConfig::wan(infos.len() as u32);
                config.tree_arity = arity;
                // Near regions get a deliberate duplicate (see `near_region_rtt_us`).
                config.near_region_rtt_us = 0;
                let mut node = Node::new(me.clone(), config, 1, crate::mesh::MemStore::new(16), 0);
                for (j, other) in infos.iter().enumerate().filter(|(_, o)| o.key != me.key) {
                    node.member_insert(Arc::new(other.clone()));
                    node.handle_rtt_sample(0, OriginKey(other.key), rtt(i, j));
                }
                node.router.members_changed();
                node.gossip_links();
                node
            })
            .collect();
        let records: Vec<Arc<LinkRecord>> = nodes
            .iter()
            .flat_map(|n| {
                n.link_records()
                    .map(|(r, _)| Arc::new(r.clone()))
                    .collect::<Vec<_>>()
            })
            .collect();
        for node in &mut nodes {
            for chunk in records.chunks(LINK_RECORDS_PER_MESSAGE_MAX) {
                node.on_links(chunk.to_vec());
            }
            while node.poll_transmit().is_some() {}
        }
        nodes
    }

    /// The RTT table [`mesh`] reads (up to six regions), from `(region, region, RTT us)`
    /// pairs; pairs left out are 0.
    fn region_rtts(pairs: &[(usize, usize, u64)]) -> Vec<u64> {
        let mut rtts = vec![0u64; 36];
        for &(a, b, rtt) in pairs {
            rtts[a.min(b) * 6 + a.max(b)] = rtt;
        }
        rtts
    }

    fn event_of(seed: u8) -> Arc<Event> {
        signed_event(seed, 1, "orders.eu", b"x").unwrap()
    }

    /// Without a policy, a governed node's filter follows each event's own residency set.
    #[test]
    fn stamped_residency_lets_only_the_events_jurisdictions_hold_it() {
        let with = |stream: &str, residency: crate::envelope::Residency| {
            let draft = crate::envelope::EventDraft {
                stream: crate::StreamName::new(stream).unwrap(),
                key: None,
                seq: 1,
                hlc: crate::Hlc::new(1_764_000_000_000, 0).unwrap(),
                security: crate::envelope::SecurityContext {
                    tenant: "acme".into(),
                    principal: "svc".into(),
                    classification: "eu-personal".into(),
                    residency,
                    scopes: Default::default(),
                    policy_epoch: 1,
                },
                content_type: "text/plain".into(),
                payload: crate::envelope::Payload::Clear(b"x".to_vec()),
                trace: None,
            };
            crate::Signer::from_secret(&[9; 32]).sign(draft).unwrap()
        };
        let mut eu = member_of(1, "aws:eu-west-1");
        eu.jurisdiction = "EU".into();
        let mut us = member_of(2, "aws:us-east-1");
        us.jurisdiction = "US".into();
        let f = StampedResidency::new(eu.key);
        let eu_only = with(
            "customers.eu",
            crate::envelope::Residency::only(["EU"]).unwrap(),
        );
        assert_eq!(f.hop(&eu_only, &eu), FilterHop::Clear);
        assert_eq!(f.hop(&eu_only, &us), FilterHop::Refuse);
        // Another node that declares EU is not taken on its word: without the policy it
        // cannot be checked, so it gets restricted events from nodes that hold one.
        let mut other_eu = member_of(3, "aws:eu-west-1");
        other_eu.jurisdiction = "EU".into();
        assert_eq!(f.hop(&eu_only, &other_eu), FilterHop::Refuse);
        assert!(!f.unrestricted(&eu_only));
        let open = with("metrics.x", crate::envelope::Residency::Unrestricted);
        assert_eq!(f.hop(&open, &us), FilterHop::Clear);
        assert!(f.unrestricted(&open));
        // System streams follow their stamp: policy bundles (unrestricted) go everywhere,
        // an erase request of an EU stream's key stays in the EU.
        let bundle = with("_weft.policy", crate::envelope::Residency::Unrestricted);
        assert_eq!(f.hop(&bundle, &us), FilterHop::Clear);
        let erase = with(
            "_weft.erase",
            crate::envelope::Residency::only(["EU"]).unwrap(),
        );
        assert_eq!(f.hop(&erase, &eu), FilterHop::Clear);
        assert_eq!(f.hop(&erase, &us), FilterHop::Refuse);
        assert_eq!(f.hop(&bundle, &other_eu), FilterHop::Clear);
    }

    /// A signed event of the origin with secret `[seed; 32]`: sequence number `seq` (HLC
    /// `seq` ms after a fixed start, capped), `stream`, `payload`; `None` where signing
    /// refuses the draft (a sequence number of 0).
    fn signed_event(seed: u8, seq: u64, stream: &str, payload: &[u8]) -> Option<Arc<Event>> {
        let draft = crate::envelope::EventDraft {
            stream: crate::StreamName::new(stream).unwrap(),
            key: None,
            seq,
            hlc: crate::Hlc::new(1_764_000_000_000 + seq.min(1_000_000), 0).ok()?,
            security: crate::envelope::SecurityContext {
                tenant: "acme".into(),
                principal: "svc".into(),
                classification: "internal".into(),
                residency: crate::envelope::Residency::Unrestricted,
                scopes: Default::default(),
                policy_epoch: 0,
            },
            content_type: "text/plain".into(),
            payload: crate::envelope::Payload::Clear(payload.to_vec()),
            trace: None,
        };
        crate::Signer::from_secret(&[seed; 32])
            .sign(draft)
            .ok()
            .map(Arc::new)
    }

    /// Six nodes in three regions: r0 - r2 direct 200 ms; r0 - r1 30 ms and r1 - r2 40 ms,
    /// so a publisher in r0 (node 0) relays to r2 through r1. Returns the nodes, their
    /// seeds and the index of r1's root for node 0's events.
    fn relay_triangle() -> (Vec<Node<crate::mesh::MemStore>>, Vec<u8>, usize) {
        let rtts = region_rtts(&[(0, 1, 30_000), (0, 2, 200_000), (1, 2, 40_000)]);
        let seeds: Vec<u8> = (1..=6).collect();
        let nodes = mesh(&seeds, 3, 2, &rtts);
        let origin = nodes[0].me().node_key();
        let relay = nodes[1].region_root(&origin, "r1").unwrap();
        let relay_at = nodes
            .iter()
            .position(|n| n.me().node_key() == relay)
            .unwrap();
        (nodes, seeds, relay_at)
    }

    #[test]
    fn a_publisher_reaches_a_far_region_through_a_relay_region() {
        let (mut nodes, seeds, _) = relay_triangle();
        let region_of: BTreeMap<OriginKey, String> = nodes
            .iter()
            .map(|n| (n.me().node_key(), n.me().region.to_string()))
            .collect();
        let event = event_of(seeds[0]);
        let open = nodes[0].filter.unrestricted(&event);
        let targets = nodes[0].targets(&event, true, &[], 0, None, open);
        let cross: Vec<(&str, &[RelayHop])> = targets
            .iter()
            .filter(|(k, _, ack, _)| *ack && region_of[k] != "r0")
            .map(|(k, hops, _, _)| (region_of[k].as_str(), hops.as_slice()))
            .collect();
        assert_eq!(
            cross,
            vec![(
                "r1",
                &[RelayHop {
                    region: "r2".into(),
                    parent: None
                }][..]
            )]
        );
        let routes = nodes[0].region_routes();
        let r2 = routes.iter().find(|r| r.region == "r2").unwrap();
        assert_eq!(r2.path, vec!["r0", "r1", "r2"]);
        assert_eq!(r2.latency_us, 35_000);
        assert_eq!(r2.direct_us, Some(100_000));
    }

    /// A relay whose direct link to the next region failed sends the event back to the
    /// region it came from when that is the best way left, even when the root there is the
    /// sender: the regions it relays for are not dropped.
    #[test]
    fn a_relay_with_a_failed_link_sends_the_hops_back_through_the_sender() {
        let (mut nodes, seeds, relay_at) = relay_triangle();
        // The relay's link to r2 failed: its way there is back through r0, whose root for
        // the origin's events is the origin, the sender.
        assert!(nodes[relay_at].router.fail("r2", 0));
        let event = event_at(seeds[0], 1, "orders.all");
        nodes[0].handle_publish(0, event.clone()).unwrap();
        // Only what goes eagerly at once: no IHAVE delay, no GRAFT timeout, no sync.
        let seen = pump(&mut nodes, 0, 0);
        assert!(
            seen[0].pushes.contains(&(event.id(), true)),
            "the relay sent the event back to the origin with the hops: {:?}",
            seen[0].pushes
        );
        assert_eq!(nodes[relay_at].stats().relays_sent_back, 1);
        for n in &nodes {
            assert!(
                n.store().contains(&event.id()),
                "{} ({}) did not get the event eagerly",
                n.me().addr,
                n.me().region
            );
        }
    }

    /// Hops that come back rerouted are not sent back again: when the origin's own link to
    /// the region is marked failed too, its way and the relay's both run through the
    /// other. The origin tries its direct link after all, as the last reroute: under loss
    /// both marks are most often stale, and the region gets the event at once.
    #[test]
    fn rerouted_hops_try_the_direct_link_rather_than_go_back() {
        let (mut nodes, seeds, relay_at) = relay_triangle();
        assert!(nodes[relay_at].router.fail("r2", 0));
        assert!(nodes[0].router.fail("r2", 0));
        let event = event_at(seeds[0], 1, "orders.all");
        nodes[0].handle_publish(0, event.clone()).unwrap();
        let seen = pump(&mut nodes, 0, 0);
        // The origin's plan went through r1 (its own link marked failed); the relay sent
        // the hops back once; the origin pushed into r2 directly.
        assert_eq!(nodes[relay_at].stats().relays_sent_back, 1);
        assert_eq!(nodes[0].stats().reroute_unreachable, 0);
        let relayed_to_relay = relayed_pushes(&seen[relay_at], &event);
        assert_eq!(relayed_to_relay, 1, "{:?}", seen[relay_at].pushes);
        for n in nodes.iter().filter(|n| n.me().region == "r2") {
            assert!(
                n.store().contains(&event.id()),
                "{} did not get the event eagerly",
                n.me().addr
            );
        }
        // The answer cleared the origin's stale mark.
        assert!(!nodes[0].router.failed.contains_key("r2"));
    }

    /// The direct push of [`rerouted_hops_try_the_direct_link_rather_than_go_back`] is the
    /// last reroute: into a region really cut off it goes once, and when its
    /// acknowledgement does not come the hops are left to GRAFT and anti-entropy instead
    /// of circling between the two nodes.
    #[test]
    fn the_last_direct_try_into_a_region_cut_off_ends_there() {
        let (mut nodes, seeds, relay_at) = relay_triangle();
        assert!(nodes[relay_at].router.fail("r2", 0));
        assert!(nodes[0].router.fail("r2", 0));
        let in_r2: Vec<bool> = nodes.iter().map(|n| n.me().region == "r2").collect();
        let event = event_at(seeds[0], 1, "orders.all");
        nodes[0].handle_publish(0, event.clone()).unwrap();
        // Long enough for every acknowledgement timeout (and the GRAFTs it leads to).
        let seen = pump_cut(&mut nodes, 0, 3_000_000, |i| in_r2[i]);
        let eager_into_r2: usize = seen
            .iter()
            .zip(&in_r2)
            .filter(|(_, cut)| **cut)
            .map(|(s, _)| s.pushes.iter().filter(|(id, _)| *id == event.id()).count())
            .sum();
        assert_eq!(eager_into_r2, 1, "one last direct try, no circling");
        let relayed_to_relay = relayed_pushes(&seen[relay_at], &event);
        assert_eq!(relayed_to_relay, 1, "{:?}", seen[relay_at].pushes);
        assert_eq!(nodes[relay_at].stats().relays_sent_back, 1);
        // The unanswered last try reroutes no further.
        assert_eq!(nodes[0].stats().reroute_unreachable, 1);
        assert!(nodes[0].router.failed.contains_key("r2"));
    }

    /// The last direct try carries only the hops no other push of the re-plan reaches.
    /// Four regions: r0 - r1 30 ms, r1 - r2 40, r0 - r3 50, r2 - r3 40, r0 - r2 200 (marked
    /// failed at node 0), r1 - r3 300. Node 0 gets r2 (with r3 below it) back from r1,
    /// rerouted: its re-plan sends r3 directly and r2 back through r1, the sender, so it
    /// tries r2 directly, without r3 (which would get the event twice).
    #[test]
    fn the_last_direct_try_carries_only_hops_no_other_push_reaches() {
        let rtts = region_rtts(&[
            (0, 1, 30_000),
            (0, 2, 200_000),
            (0, 3, 50_000),
            (1, 2, 40_000),
            (1, 3, 300_000),
            (2, 3, 40_000),
        ]);
        let seeds: Vec<u8> = (1..=8).collect();
        let mut nodes = mesh(&seeds, 4, 2, &rtts);
        let region_of: BTreeMap<OriginKey, String> = nodes
            .iter()
            .map(|n| (n.me().node_key(), n.me().region.to_string()))
            .collect();
        assert!(nodes[0].router.fail("r2", 0));
        let event = event_at(seeds[0], 1, "orders.all");
        let origin = event.origin();
        let from = nodes[0].region_root(&origin, "r1").unwrap();
        let hops = [
            RelayHop {
                region: "r2".into(),
                parent: None,
            },
            RelayHop {
                region: "r3".into(),
                parent: Some(0),
            },
        ];
        let targets = nodes[0].relay_targets(&event, &hops, 1, Some(from));
        let reached: Vec<(&str, Vec<&str>, u8)> = targets
            .iter()
            .map(|(k, sub, _, reroutes)| {
                let sub = sub.iter().map(|h| h.region.as_str()).collect();
                (region_of[k].as_str(), sub, *reroutes)
            })
            .collect();
        assert_eq!(
            reached,
            vec![("r3", vec![], 2), ("r2", vec![], route::REROUTES_MAX)],
            "r3 directly, r2 by the last direct try, each once"
        );
    }

    /// Interest changes at run time: a node that only relays a stream stores and delivers
    /// its events once subscribed, and neither stores nor delivers them after the
    /// unsubscribe, while it goes on relaying.
    #[test]
    fn subscribing_and_unsubscribing_change_what_a_node_stores_and_delivers() {
        let seeds: Vec<u8> = (1..=3).collect();
        let mut nodes = mesh(&seeds, 1, 2, &[0u64; 36]);
        let all = StreamPattern::new(">").unwrap();
        let orders = StreamPattern::new("orders.>").unwrap();
        assert!(nodes[1].handle_unsubscribe(0, &all));
        assert!(!nodes[1].handle_unsubscribe(0, &all), "not held any more");
        assert!(nodes[1].interest().is_empty());
        // Event `seq` is published at `seq` x 300 ms; each interest change comes between.
        let publish = |nodes: &mut Vec<Node<crate::mesh::MemStore>>, seq: u64| {
            let at = seq * 300_000;
            let event = event_at(seeds[0], seq, "orders.all");
            nodes[0].handle_publish(at, event.clone()).unwrap();
            pump(nodes, at, at + 200_000);
            event
        };
        let before = publish(&mut nodes, 1);
        assert!(!nodes[1].store().contains(&before.id()));
        assert_eq!(nodes[1].stats().delivered, 0);
        assert!(
            nodes[2].store().contains(&before.id()),
            "the others still get it"
        );
        assert!(nodes[1].handle_subscribe(550_000, orders.clone()));
        assert!(
            !nodes[1].handle_subscribe(550_000, orders.clone()),
            "held already"
        );
        let during = publish(&mut nodes, 2);
        assert!(nodes[1].store().contains(&during.id()));
        assert_eq!(
            nodes[1].stats().delivered,
            1,
            "the subscription starts at the present"
        );
        assert!(nodes[1].handle_unsubscribe(850_000, &orders));
        let after = publish(&mut nodes, 3);
        assert!(!nodes[1].store().contains(&after.id()));
        assert_eq!(nodes[1].stats().delivered, 1);
        assert!(nodes[2].store().contains(&after.id()));
        assert_eq!(nodes[2].stats().delivered, 3);
    }

    /// An event stored while subscribed but waiting behind a gap is not delivered once the
    /// unsubscribe has come: delivery checks the interest as it passes.
    #[test]
    fn an_unsubscribe_also_holds_back_events_stored_and_waiting() {
        let seeds: Vec<u8> = (1..=2).collect();
        let mut nodes = mesh(&seeds, 1, 2, &[0u64; 36]);
        let from = nodes[0].me().node_key();
        let push = |event: Arc<Event>| Message::Push {
            events: vec![event],
            relay: Vec::new(),
            ack: 0,
            reroutes: 0,
        };
        let (first, second) = (
            event_at(seeds[0], 1, "orders.all"),
            event_at(seeds[0], 2, "orders.all"),
        );
        nodes[1].handle_message(1_000, from, push(second.clone()));
        assert!(
            nodes[1].store().contains(&second.id()),
            "stored, waiting for 1"
        );
        assert_eq!(nodes[1].stats().delivered, 0);
        assert!(nodes[1].handle_unsubscribe(2_000, &StreamPattern::new(">").unwrap()));
        nodes[1].handle_message(3_000, from, push(first.clone()));
        assert!(
            !nodes[1].store().contains(&first.id()),
            "not stored after the unsubscribe"
        );
        assert_eq!(nodes[1].stats().delivered, 0, "neither delivered");
        assert!(delivered_seqs(&mut nodes[1]).is_empty());
        nodes[1].check_invariants_full();
    }

    /// How many pushes with relay hops carried `event` to the node `seen` records.
    fn relayed_pushes(seen: &Seen, event: &Event) -> usize {
        seen.pushes
            .iter()
            .filter(|(id, relayed)| *id == event.id() && *relayed)
            .count()
    }

    /// A residency filter by region name (regions not named are clear).
    struct ByRegion(BTreeMap<String, FilterHop>);

    impl ReplicationFilter for ByRegion {
        fn hop(&self, _event: &EventData, peer: &MemberInfo) -> FilterHop {
            self.0
                .get(peer.region.as_str())
                .copied()
                .unwrap_or(FilterHop::Clear)
        }
    }

    /// Refuses every event to one node.
    struct RefusesOne(OriginKey);

    impl ReplicationFilter for RefusesOne {
        fn hop(&self, _event: &EventData, peer: &MemberInfo) -> FilterHop {
            if peer.key == self.0.0 {
                FilterHop::Refuse
            } else {
                FilterHop::Clear
            }
        }
    }

    /// A region's tree root that may not hold an event does not cut the region off: the
    /// publisher pushes to its children instead, and they on down the tree. The publisher
    /// had left the region out of its plan, so its members got the event only by IHAVE and
    /// GRAFT or anti-entropy (`example.toml`: the Zurich store, CH, among EU nodes).
    #[test]
    fn a_tree_steps_over_a_node_that_may_not_hold_the_event() {
        let rtts = vec![40_000u64; 36];
        // r0 holds nodes 0, 2, 4, 6 and r1 nodes 1, 3, 5, 7; arity 2: a root, its two
        // children and a grandchild in each region.
        let seeds: Vec<u8> = (1..=8).collect();
        let mut nodes = mesh(&seeds, 2, 2, &rtts);
        let origin = nodes[0].me().node_key();
        let root = nodes[1].region_root(&origin, "r1").unwrap();
        for n in &mut nodes {
            n.set_filter(Box::new(RefusesOne(root)));
        }
        let event = event_at(seeds[0], 1, "orders.all");
        nodes[0].handle_publish(0, event.clone()).unwrap();
        // Only what goes eagerly at once: no IHAVE delay, no GRAFT timeout, no sync.
        let seen = pump(&mut nodes, 0, 0);
        for (i, n) in nodes.iter().enumerate() {
            let key = n.me().node_key();
            if key == root {
                assert!(!n.store().contains(&event.id()), "the root may not hold it");
                assert!(seen[i].pushes.is_empty(), "nothing pushed to the root");
                assert!(seen[i].skips.contains(&(origin, 1)), "the root got a Skip");
            } else {
                assert!(
                    n.store().contains(&event.id()),
                    "{} did not get the event eagerly",
                    n.me().addr
                );
            }
        }
    }

    /// What the pump saw go to each node: messages naming an event, by kind.
    #[derive(Default, Debug)]
    struct Seen {
        pushes: Vec<(EventId, bool)>,
        named: Vec<(&'static str, EventId)>,
        skips: Vec<(OriginKey, u64)>,
    }

    /// Delivers every queued message (membership traffic aside: the harness fixed the
    /// views) and fires timers, in 10 ms steps up to `until_us`, recording per receiving
    /// node the messages that name an event.
    fn pump(
        nodes: &mut [Node<crate::mesh::MemStore>],
        from_us: Micros,
        until_us: Micros,
    ) -> Vec<Seen> {
        pump_cut(nodes, from_us, until_us, |_| false)
    }

    /// [`pump`] with the nodes `cut` names cut off: what is sent to them is recorded, then
    /// lost.
    fn pump_cut(
        nodes: &mut [Node<crate::mesh::MemStore>],
        from_us: Micros,
        until_us: Micros,
        cut: impl Fn(usize) -> bool,
    ) -> Vec<Seen> {
        let by_key: BTreeMap<OriginKey, usize> = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.me().node_key(), i))
            .collect();
        let mut seen: Vec<Seen> = (0..nodes.len()).map(|_| Seen::default()).collect();
        let mut now = from_us;
        while now <= until_us {
            for n in nodes.iter_mut() {
                n.handle_timeout(now);
            }
            // Bounded: each round delivers what the previous one queued; dissemination of
            // one event settles in a few rounds.
            for _ in 0..64 {
                let mut queued = Vec::new();
                for (i, n) in nodes.iter_mut().enumerate() {
                    while let Some(t) = n.poll_transmit() {
                        queued.push((i, t));
                    }
                    while n.poll_event().is_some() {}
                }
                if queued.is_empty() {
                    break;
                }
                for (i, t) in queued {
                    let Some(&j) = by_key.get(&t.to) else {
                        continue;
                    };
                    let s = &mut seen[j];
                    match &t.msg {
                        Message::Swim(_) => continue,
                        Message::Push { events, relay, .. } => {
                            for e in events {
                                s.pushes.push((e.id(), !relay.is_empty()));
                            }
                        }
                        Message::IHave(refs) | Message::Graft(refs) => {
                            s.named.extend(refs.iter().map(|r| ("ihave/graft", r.id)));
                        }
                        Message::SyncResponse { events, .. } => {
                            s.named.extend(events.iter().map(|e| ("sync", e.id())));
                        }
                        Message::Skip(list) => s.skips.extend(list.iter().copied()),
                        _ => {}
                    }
                    if cut(i) || cut(j) {
                        continue;
                    }
                    let from = nodes[i].me().node_key();
                    nodes[j].handle_message(now, from, t.msg);
                }
            }
            for n in nodes.iter() {
                n.check_invariants();
            }
            now += 10_000;
        }
        seen
    }

    #[test]
    fn sealed_transit_crosses_a_region_without_being_stored_there() {
        // r0 - r2 direct 200 ms; through r1: 30 + 40 ms. r3 is near everything.
        let rtts = region_rtts(&[
            (0, 1, 30_000),
            (0, 2, 200_000),
            (0, 3, 20_000),
            (1, 2, 40_000),
            (1, 3, 20_000),
            (2, 3, 20_000),
        ]);
        let seeds: Vec<u8> = (1..=8).collect();
        let mut nodes = mesh(&seeds, 4, 2, &rtts);
        let filter = || {
            ByRegion(BTreeMap::from([
                ("r1".to_string(), FilterHop::Transit),
                ("r3".to_string(), FilterHop::Refuse),
            ]))
        };
        for n in &mut nodes {
            n.set_filter(Box::new(filter()));
        }
        let region: Vec<String> = nodes.iter().map(|n| n.me().region.to_string()).collect();
        let event = event_of(seeds[0]);
        let id = event.id();
        assert_eq!(region[0], "r0");
        nodes[0].handle_publish(0, event).unwrap();
        // Several anti-entropy rounds and IHAVE/GRAFT timeouts.
        let seen = pump(&mut nodes, 0, 12_000_000);
        for (i, n) in nodes.iter().enumerate() {
            let s = &seen[i];
            match region[i].as_str() {
                "r0" | "r2" => {
                    assert!(n.store().contains(&id), "{} lacks the event", n.me().addr);
                    assert_eq!(n.stats().delivered, 1, "{}", n.me().addr);
                }
                "r1" => {
                    assert!(!n.store().contains(&id), "transit region stored it");
                    assert!(!n.relay_cache.contains_key(&id), "transit region cached it");
                    assert!(
                        s.pushes.iter().all(|(_, relaying)| *relaying),
                        "a transit node got the event outside a relay path: {s:?}"
                    );
                    assert!(
                        s.named.is_empty(),
                        "a transit node was named the event: {s:?}"
                    );
                    assert_eq!(n.stats().delivered, 0);
                    // Its own ordered delivery moved past the sequence number.
                    assert!(
                        n.seen
                            .get(&nodes[0].me().node_key())
                            .expect("origin seen")
                            .ranges()
                            .contains(1)
                    );
                }
                "r3" => {
                    assert!(!n.store().contains(&id));
                    assert!(
                        s.pushes.is_empty() && s.named.is_empty(),
                        "refused node got {s:?}"
                    );
                    assert!(s.skips.contains(&(nodes[0].me().node_key(), 1)));
                    assert_eq!(n.stats().delivered, 0);
                }
                r => unreachable!("{r}"),
            }
            assert_eq!(n.stats().residency_refused, 0, "{}", n.me().addr);
        }
        // The far region got it through the transit region, not over the slow direct link.
        let transit: u64 = nodes
            .iter()
            .zip(&region)
            .filter(|(_, r)| *r == "r1")
            .map(|(n, _)| n.stats().transit_forwarded)
            .sum();
        assert_eq!(transit, 1, "exactly one transit forward (r1's root)");
        let via_r1 = nodes
            .iter()
            .zip(&region)
            .filter(|(_, r)| *r == "r1")
            .any(|(n, _)| n.stats().relayed > 0);
        assert!(via_r1, "r1 relayed the push to r2");
    }

    /// Refuses events of stream `orders.eu` to every node but their origin; clears
    /// everything else.
    struct OriginOnly;

    impl ReplicationFilter for OriginOnly {
        fn hop(&self, event: &EventData, peer: &MemberInfo) -> FilterHop {
            if event.stream().as_str() == "orders.eu" && event.origin().0 != peer.key {
                FilterHop::Refuse
            } else {
                FilterHop::Clear
            }
        }
    }

    /// A node of its own in region r0 (key from secret 9).
    fn lone_member() -> MemberInfo {
        MemberInfo {
            key: crate::Signer::from_secret(&[9; 32]).origin().0,
            region: "r0".into(),
            cloud: "c".into(),
            jurisdiction: "EU".into(),
            addr: "n9".into(),
            policy_epoch: 0,
            generation: 0,
        }
    }

    /// Sequence numbers of the deliveries `node` has queued, in order.
    fn delivered_seqs<S: Store>(node: &mut Node<S>) -> Vec<u64> {
        let mut seqs = Vec::new();
        while let Some(e) = node.poll_event() {
            if let AppEvent::Deliver(e) = e {
                seqs.push(e.seq());
            }
        }
        seqs
    }

    fn event_at(seed: u8, seq: u64, stream: &str) -> Arc<Event> {
        signed_event(seed, seq, stream, b"x").unwrap()
    }

    /// A local publish of a number the node holds: the same event again is a resend (Ok);
    /// other content under that number is refused as an equivocation, one by one or in a
    /// batch (the mesh's receiving path would drop it as a duplicate, unseen).
    #[test]
    fn a_republished_number_with_other_content_is_refused() {
        let mut node = Node::new(
            lone_member(),
            MeshConfig::wan(2),
            1,
            crate::mesh::MemStore::new(100),
            0,
        );
        let first = signed_event(9, 1, "orders.all", b"first").unwrap();
        let other = signed_event(9, 1, "orders.all", b"other").unwrap();
        let next = signed_event(9, 2, "orders.all", b"next").unwrap();
        node.handle_publish(0, first.clone()).unwrap();
        assert_eq!(node.handle_publish(1, first.clone()), Ok(()));
        let refused = Err(StoreError::Equivocation {
            origin: first.origin(),
            seq: 1,
        });
        assert_eq!(node.handle_publish(2, other.clone()), refused);
        assert_eq!(
            node.handle_publish_batch(3, vec![first.clone(), other, next.clone()]),
            vec![Ok(()), refused, Ok(())]
        );
        assert_eq!(
            node.store().get(&first.origin(), 1).unwrap().id(),
            first.id()
        );
        assert!(node.store().contains(&next.id()));
    }

    /// A seen-set that once reached its range limit is no longer trusted to be exact: an
    /// event it dropped but the store holds still counts as a duplicate when pushed again
    /// (and an exact seen-set spares the store lookup for every new event).
    #[test]
    fn a_seen_set_at_its_range_limit_falls_back_to_the_store() {
        let me = lone_member();
        let mut node = Node::new(
            me,
            MeshConfig::wan(2),
            1,
            crate::mesh::MemStore::new(10_000),
            0,
        );
        let from = crate::Signer::from_secret(&[1; 32]).origin();
        let push = |node: &mut Node<crate::mesh::MemStore>, event: Arc<Event>| {
            node.handle_message(
                1,
                from,
                Message::Push {
                    events: vec![event],
                    relay: Vec::new(),
                    ack: 0,
                    reroutes: 0,
                },
            );
        };
        // Odd numbers only: every one is a range of its own.
        let last = 2 * RANGES_PER_ORIGIN_MAX as u64 + 1;
        let mut events = Vec::new();
        for seq in (1..=last).step_by(2) {
            let e = event_at(1, seq, "orders.eu");
            push(&mut node, e.clone());
            events.push(e);
        }
        let seen = node.seen.get(&from).expect("origin seen");
        assert!(seen.lossy, "the limit was reached");
        let dropped = events
            .iter()
            .find(|e| !seen.ranges().contains(e.seq()))
            .expect("the set under-claims at its limit")
            .clone();
        assert!(node.store.holds(&EventRef::of(&dropped)));
        let before = node.stats.events_duplicate;
        push(&mut node, dropped);
        assert_eq!(node.stats.events_duplicate, before + 1);
        assert!(
            node.seen
                .values()
                .all(|s| s.ranges().range_count() <= RANGES_PER_ORIGIN_MAX)
        );
    }

    /// A node that crashes while events wait above a gap delivers them after its restart,
    /// once the gap fills: the store keeps the delivery cursor, so only what was delivered
    /// counts as delivered. A store that keeps no cursor makes the node take everything it
    /// holds as delivered, and those events are never delivered (the old behaviour, kept
    /// as the fallback; shown here so the difference stays visible).
    #[test]
    fn events_waiting_above_a_gap_at_a_crash_are_delivered_after_the_restart() {
        /// A MemStore that keeps no delivery cursor.
        struct Forgetful(crate::mesh::MemStore);
        impl Store for Forgetful {
            fn insert(&mut self, event: Arc<Event>) -> Result<Inserted, StoreError> {
                self.0.insert(event)
            }
            fn contains(&self, id: &EventId) -> bool {
                self.0.contains(id)
            }
            fn get(&self, origin: &OriginKey, seq: u64) -> Option<Arc<Event>> {
                self.0.get(origin, seq)
            }
            fn ranges(&self, origin: &OriginKey) -> Option<&SeqRanges> {
                self.0.ranges(origin)
            }
            fn origins(&self) -> Vec<OriginKey> {
                self.0.origins()
            }
            fn len(&self) -> usize {
                self.0.len()
            }
            fn clear(&mut self) {
                self.0.clear();
            }
        }
        fn run<S: Store>(store: S) -> Vec<u64> {
            let me = lone_member();
            let from = crate::Signer::from_secret(&[1; 32]).origin();
            let push = |node: &mut Node<S>, now: Micros, seq: u64| {
                node.handle_message(
                    now,
                    from,
                    Message::Push {
                        events: vec![event_at(1, seq, "orders.eu")],
                        relay: Vec::new(),
                        ack: 0,
                        reroutes: 0,
                    },
                );
            };
            let mut node = Node::new(me.clone(), MeshConfig::wan(2), 1, store, 0);
            for seq in [1, 2, 4] {
                push(&mut node, 1, seq);
            }
            let mut seqs = delivered_seqs(&mut node);
            assert_eq!(seqs, [1, 2], "4 waits for 3");
            // Crash and restart with the same store.
            let store = node.into_store();
            let mut node = Node::new(me, MeshConfig::wan(2), 2, store, 10);
            push(&mut node, 20, 3);
            seqs.extend(delivered_seqs(&mut node));
            seqs
        }
        assert_eq!(
            run(crate::mesh::MemStore::new(100)),
            [1, 2, 3, 4],
            "the cursor survives with the store"
        );
        assert_eq!(
            run(Forgetful(crate::mesh::MemStore::new(100))),
            [1, 2, 3],
            "without a cursor, 4 was taken as delivered"
        );
    }

    /// Stored events above the store's cursor in an unbroken run (delivery was paused, or
    /// the store held events it had not logged as delivered) are delivered at the first
    /// poll after a restart, without waiting for the origin's next event.
    #[test]
    fn a_restart_delivers_what_the_cursor_has_not_reached() {
        let mut store = crate::mesh::MemStore::new(100);
        let origin = crate::Signer::from_secret(&[1; 32]).origin();
        for seq in 1..=3 {
            store.insert(event_at(1, seq, "orders.eu")).unwrap();
        }
        store.set_delivered(&origin, 1);
        let me = lone_member();
        let mut node = Node::new(me, MeshConfig::wan(2), 1, store, 0);
        assert_eq!(delivered_seqs(&mut node), [2, 3]);
        assert_eq!(node.store.delivered(&origin), Some(3));
    }

    /// The messages `node` has queued for `to` (every queued transmit is drained).
    fn drain_to(node: &mut Node<crate::mesh::MemStore>, to: OriginKey) -> Vec<Message> {
        let mut out = Vec::new();
        while let Some(t) = node.poll_transmit() {
            if t.to == to {
                out.push(t.msg);
            }
        }
        out
    }

    /// Anti-entropy rounds this node started with a member back from down, and the
    /// requests it sent to `to` (drained).
    fn sync_back_requests(node: &mut Node<crate::mesh::MemStore>, to: OriginKey) -> (u64, usize) {
        let requests = drain_to(node, to)
            .iter()
            .filter(|m| {
                matches!(
                    m,
                    Message::SyncRequest {
                        from_origin: None,
                        ..
                    }
                )
            })
            .count();
        (node.stats().sync_back_rounds, requests)
    }

    /// A driver that holds transmits (until its commit) releases them late: the push's
    /// acknowledgement timeout counts from the release, and its RTT sample is the
    /// network's, so a slow commit does not fail the link over; without the release call
    /// (the control) the same wait fails it over.
    #[test]
    fn acknowledgement_timeouts_count_from_when_held_transmits_leave() {
        for release in [true, false] {
            let (mut nodes, _) = six_in_two_regions();
            nodes[0].config.holds_transmits = true;
            let t = 50_000_000;
            let event = signed_event(60, 1, "orders.eu", b"x").unwrap();
            nodes[0].handle_publish(t, event).unwrap();
            let acked: Vec<(OriginKey, u64)> = std::iter::from_fn(|| nodes[0].poll_transmit())
                .filter_map(|tr| match tr.msg {
                    Message::Push { ack, .. } if ack != 0 => Some((tr.to, ack)),
                    _ => None,
                })
                .collect();
            assert!(
                !acked.is_empty(),
                "a cross-region push asks for an acknowledgement"
            );
            // The driver's commit took 100 ms; the RTT is 40 ms (timeout 55 ms).
            let released = t + 100_000;
            if release {
                nodes[0].transmits_released(released);
            }
            nodes[0].handle_timeout(released + 1);
            let failed = nodes[0].stats().failovers;
            if !release {
                assert_eq!(failed, acked.len() as u64, "the control fails over");
                continue;
            }
            assert_eq!(failed, 0, "held 100 ms, then sent: not late yet");
            for (to, id) in &acked {
                nodes[0].handle_message(released + 40_000, *to, Message::PushAck(*id));
            }
            nodes[0].handle_timeout(released + 200_000);
            assert_eq!(nodes[0].stats().failovers, 0);
            assert_eq!(nodes[0].stats().pushes_acked, acked.len() as u64);
            let rtt = nodes[0].rtt_us(&acked[0].0).unwrap();
            assert!(rtt < 60_000, "RTT {rtt} us counts the hold");
        }
    }

    /// Six nodes in two regions 40 ms apart, and their member records.
    fn six_in_two_regions() -> (Vec<Node<crate::mesh::MemStore>>, Vec<MemberInfo>) {
        let rtts = vec![40_000u64; 36];
        let seeds: Vec<u8> = (1..=6).collect();
        let nodes = mesh(&seeds, 2, 2, &rtts);
        let infos = nodes.iter().map(|n| n.me().clone()).collect();
        (nodes, infos)
    }

    /// Makes SWIM hold `members` down (foca keeps down members to announce to) and drops
    /// what that queued.
    fn hold_down(node: &mut Node<crate::mesh::MemStore>, members: &[MemberInfo]) {
        let mut rt = SwimRuntime::default();
        node.foca
            .apply_many(
                members.iter().map(|m| foca::Member::down(m.clone().into())),
                false,
                &mut rt,
            )
            .expect("foca takes the updates");
        while node.poll_transmit().is_some() {}
    }

    /// The members the queued SWIM messages go to (the queue is drained).
    fn swim_recipients(node: &mut Node<crate::mesh::MemStore>) -> BTreeSet<OriginKey> {
        let mut to = BTreeSet::new();
        while let Some(t) = node.poll_transmit() {
            if matches!(t.msg, Message::Swim(_)) {
                to.insert(t.to);
            }
        }
        to
    }

    /// More members down than one announcement reaches: successive calls go on where the
    /// last one stopped, so every member held down is told within two.
    #[test]
    fn announcements_to_down_members_rotate_when_more_are_down_than_one_reaches() {
        let rtts = vec![40_000u64; 36];
        let seeds: Vec<u8> = (1..=2).collect();
        let mut nodes = mesh(&seeds, 1, 2, &rtts);
        let node = &mut nodes[0];
        let held: Vec<MemberInfo> = (0..DOWN_ANNOUNCE_MAX + 6)
            .map(|i| {
                let signer = crate::Signer::from_secret(&[(i + 10) as u8; 32]);
                MemberInfo {
                    key: signer.origin().0,
                    region: "r1".into(),
                    cloud: "c".into(),
                    jurisdiction: "EU".into(),
                    addr: format!("down{i}").into(),
                    policy_epoch: 0,
                    generation: 0,
                }
            })
            .collect();
        hold_down(node, &held);
        let told = |node: &mut Node<crate::mesh::MemStore>| {
            node.announce_to_down();
            swim_recipients(node)
        };
        let first = told(node);
        let second = told(node);
        assert_eq!(first.len(), DOWN_ANNOUNCE_MAX);
        assert_eq!(second.len(), DOWN_ANNOUNCE_MAX);
        let all: BTreeSet<OriginKey> = held.iter().map(|m| m.node_key()).collect();
        let both: BTreeSet<OriginKey> = first.union(&second).copied().collect();
        assert_eq!(
            both, all,
            "every member held down was told within two calls"
        );
        assert_ne!(first, second);
    }

    /// foca renames a member held down to another down identity with no MemberUp or
    /// MemberDown after it: the member stays out of the live members. A member held up and
    /// renamed (a restart seen while it was up) stays in, under the new generation.
    #[test]
    fn a_down_member_renamed_to_another_down_identity_stays_out() {
        let (mut nodes, infos) = six_in_two_regions();
        let node = &mut nodes[0];
        let gone = infos[2].clone();
        let mut rt = SwimRuntime::default();
        rt.notes
            .push(OwnedNotification::MemberDown(gone.clone().into()));
        node.apply_swim(rt);
        assert!(!node.members.contains_key(&gone.node_key()));
        // foca renames `old` to the same key under the next generation.
        let rename = |node: &mut Node<crate::mesh::MemStore>, old: MemberInfo| {
            let mut new = old.clone();
            new.generation += 1;
            let mut rt = SwimRuntime::default();
            rt.notes
                .push(OwnedNotification::Rename(old.into(), new.clone().into()));
            node.apply_swim(rt);
            new
        };
        let renamed = rename(node, gone);
        assert!(
            !node.members.contains_key(&renamed.node_key()),
            "still down"
        );
        let restarted = rename(node, infos[3].clone());
        assert_eq!(
            node.members
                .get(&restarted.node_key())
                .map(|m| m.generation),
            Some(restarted.generation)
        );
        node.check_invariants_full();
    }

    #[test]
    fn a_member_back_from_down_makes_the_node_announce_itself_to_those_still_down() {
        let (mut nodes, infos) = six_in_two_regions();
        let node = &mut nodes[0];
        // A partition: SWIM holds nodes 2 to 5 down (foca keeps down members to announce to).
        hold_down(node, &infos[2..]);
        let start = node.now;
        let swim_to = swim_recipients;
        // Node 2 comes back under a new generation: the partition healed.
        let back = infos[2].clone();
        node.members.remove(&back.node_key());
        node.region_remove(&back.region, &back.node_key());
        let mut renewed = back.clone();
        renewed.generation += 1;
        let mut rt = SwimRuntime::default();
        rt.notes.push(OwnedNotification::Rename(
            back.into(),
            renewed.clone().into(),
        ));
        rt.notes
            .push(OwnedNotification::MemberUp(renewed.clone().into()));
        node.apply_swim(rt);
        let mut rt = SwimRuntime::default();
        node.foca
            .apply_many(
                std::iter::once(foca::Member::alive(renewed.into())),
                false,
                &mut rt,
            )
            .expect("foca takes the update");
        swim_to(node);
        node.handle_timeout(start + SYNC_BACK_DELAY_US);
        let announced = swim_to(node);
        let still_down: BTreeSet<OriginKey> = infos[3..].iter().map(|i| i.node_key()).collect();
        assert!(
            still_down.is_subset(&announced),
            "every member still down is told at once: {announced:?}"
        );
        assert_eq!(node.stats().down_announcements, still_down.len() as u64);
    }

    /// The partner of the next anti-entropy round `node` starts at `now`; a partner other
    /// than `mute` answers (an empty response) half a sync interval later.
    fn next_sync_partner(
        node: &mut Node<crate::mesh::MemStore>,
        now: Micros,
        mute: OriginKey,
    ) -> OriginKey {
        node.now = now;
        node.start_sync();
        let t = node.poll_transmit().expect("a sync request");
        assert!(matches!(t.msg, Message::SyncRequest { .. }));
        while node.poll_transmit().is_some() {}
        if t.to != mute {
            let answer = Message::SyncResponse {
                events: Vec::new(),
                resume: None,
                held: 0,
                unsettled: None,
            };
            node.handle_message(now + node.config.sync_interval_us / 2, t.to, answer);
            while node.poll_transmit().is_some() {}
        }
        t.to
    }

    #[test]
    fn anti_entropy_passes_over_partners_that_do_not_answer_or_are_suspected() {
        let (mut nodes, infos) = six_in_two_regions();
        let node = &mut nodes[0];
        let interval = node.config.sync_interval_us;
        let start = node.now + interval;
        let nobody = OriginKey([0; 32]);

        // Before anything is marked, rounds go to every other member, the two below too.
        let mute = infos[1].node_key();
        let suspect = infos[3].node_key();
        let mut asked = BTreeSet::new();
        for round in 0..40 {
            asked.insert(next_sync_partner(node, start + round * interval, nobody));
        }
        assert!(asked.contains(&mute) && asked.contains(&suspect));

        // `mute` stops answering: asked once more, then passed over (ranked and random
        // rounds alike) until SILENT_RETRY_INTERVALS intervals after that ask.
        let mut t = start + 40 * interval;
        let mut asked_mute = Vec::new();
        for _ in 0..40 {
            if next_sync_partner(node, t, mute) == mute {
                asked_mute.push(t);
            }
            t += interval;
        }
        assert!(asked_mute.len() >= 2, "asked again: {asked_mute:?}");
        for pair in asked_mute.windows(2) {
            let gap = pair[1] - pair[0];
            assert!(
                (SILENT_RETRY_INTERVALS * interval..=(SILENT_RETRY_INTERVALS + 2) * interval)
                    .contains(&gap),
                "a silent member is eligible again after the retry period, not before and \
                 not much later: {asked_mute:?}"
            );
        }

        // It answers: a partner like the others again.
        node.handle_message(
            t,
            mute,
            Message::SyncResponse {
                events: Vec::new(),
                resume: None,
                held: 0,
                unsettled: None,
            },
        );
        assert!(!node.silent(&mute));

        // So does a request of its own (a cut shorter than SWIM's down timeout brings no
        // MemberUp), and a resumed round that goes unanswered silences it again.
        node.now = t;
        node.send_digest(mute, Some(infos[2].node_key()), true);
        while node.poll_transmit().is_some() {}
        t += interval;
        node.now = t;
        assert!(
            node.silent(&mute),
            "a resumed round waits for its answer too"
        );
        let request = Message::SyncRequest {
            digest: Vec::new(),
            from_origin: None,
            settled: None,
        };
        node.handle_message(t, mute, request);
        while node.poll_transmit().is_some() {}
        assert!(!node.silent(&mute));

        // SWIM suspects `suspect`: no round goes to it while others answer.
        let mut rt = SwimRuntime::default();
        let update = foca::Member::new(infos[3].clone().into(), 0, foca::State::Suspect);
        node.foca
            .apply_many(std::iter::once(update), false, &mut rt)
            .expect("foca takes the update");
        assert!(node.suspected(&suspect));
        let mut asked = BTreeSet::new();
        for _ in 0..40 {
            asked.insert(next_sync_partner(node, t, nobody));
            t += interval;
        }
        assert!(
            !asked.contains(&suspect),
            "a suspected member is passed over"
        );
        assert!(node.stats().sync_partners_passed_over > 0);
        assert!(
            asked.contains(&mute),
            "the member that answered again is asked"
        );

        // A stalled origin that SWIM suspects is not asked for its events: another member
        // is, from that origin on.
        node.seen.record(suspect, 3, 0);
        node.stalled_first = true;
        node.now = t;
        node.start_sync();
        let request = node.poll_transmit().expect("a sync request");
        assert_ne!(request.to, suspect);
        assert!(matches!(
            request.msg,
            Message::SyncRequest { from_origin: Some(o), .. } if o == suspect
        ));
    }

    #[test]
    fn a_member_joining_the_view_is_told_of_recent_own_events() {
        let rtts = vec![40_000u64; 36];
        let seeds: Vec<u8> = (1..=4).collect();
        let mut nodes = mesh(&seeds, 2, 2, &rtts);
        let infos: Vec<MemberInfo> = nodes.iter().map(|n| n.me().clone()).collect();
        let node = &mut nodes[0];
        node.set_filter(Box::new(OriginOnly));
        while node.poll_transmit().is_some() {}
        // nodes[3] is not in nodes[0]'s view while it publishes: an old event, then (more
        // than RECENT_OWN_US later) one every member may hold and one only its origin may.
        let late = infos[3].node_key();
        node.members.remove(&late);
        node.region_remove(&infos[3].region, &late);
        node.router.members_changed();
        let t0 = node.now;
        node.handle_publish(t0, event_at(seeds[0], 1, "orders.all"))
            .unwrap();
        let t1 = t0 + RECENT_OWN_US + 1;
        node.handle_publish(t1, event_at(seeds[0], 2, "orders.all"))
            .unwrap();
        node.handle_publish(t1, event_at(seeds[0], 3, "orders.eu"))
            .unwrap();
        // A device's event published through it, numbered 2 in the device's own order
        // (it must be announced as the device's, not taken for this node's event 2).
        let device = event_at(77, 2, "orders.all");
        node.handle_publish(t1, device.clone()).unwrap();
        assert!(
            drain_to(node, late).is_empty(),
            "nothing goes to a non-member"
        );
        // It joins: an IHAVE for the recent event it may hold (after the IHAVE delay), a
        // Skip for the one it may not; nothing about the old one.
        let mut rt = SwimRuntime::default();
        rt.notes
            .push(OwnedNotification::MemberUp(infos[3].clone().into()));
        node.apply_swim(rt);
        let skips: Vec<u64> = drain_to(node, late)
            .iter()
            .flat_map(|m| match m {
                Message::Skip(s) => s.iter().map(|(_, seq)| *seq).collect(),
                _ => Vec::new(),
            })
            .collect();
        assert_eq!(skips, [3]);
        node.handle_timeout(t1 + node.config.ihave_delay_us);
        let announced: Vec<(OriginKey, u64)> = drain_to(node, late)
            .iter()
            .flat_map(|m| match m {
                Message::IHave(refs) => refs.iter().map(|r| (r.origin, r.seq)).collect(),
                _ => Vec::new(),
            })
            .collect();
        assert_eq!(announced, [(infos[0].node_key(), 2), (device.origin(), 2)]);
        // A member already in the view is not told again.
        let mut rt = SwimRuntime::default();
        rt.notes
            .push(OwnedNotification::MemberUp(infos[3].clone().into()));
        node.apply_swim(rt);
        node.handle_timeout(t1 + 2 * node.config.ihave_delay_us);
        assert!(
            !drain_to(node, late)
                .iter()
                .any(|m| matches!(m, Message::IHave(_) | Message::Skip(_)))
        );
    }

    #[test]
    fn a_member_back_from_down_gets_an_anti_entropy_round_at_once() {
        let rtts = vec![40_000u64; 36];
        let seeds: Vec<u8> = (1..=4).collect();
        let mut nodes = mesh(&seeds, 2, 2, &rtts);
        let infos: Vec<MemberInfo> = nodes.iter().map(|n| n.me().clone()).collect();
        let node = &mut nodes[0];
        while node.poll_transmit().is_some() {}
        let start = node.now;
        // nodes[0] had nodes[1] and nodes[2] down (a partition); each comes back under a
        // new generation: foca renames it, then reports it up.
        let back = |node: &mut Node<crate::mesh::MemStore>, info: MemberInfo| {
            let key = info.node_key();
            node.members.remove(&key);
            node.region_remove(&info.region, &key);
            let mut renewed = info.clone();
            renewed.generation += 1;
            let mut rt = SwimRuntime::default();
            rt.notes.push(OwnedNotification::Rename(
                info.into(),
                renewed.clone().into(),
            ));
            rt.notes.push(OwnedNotification::MemberUp(renewed.into()));
            node.apply_swim(rt);
            key
        };
        let first = back(node, infos[1].clone());
        assert_eq!(node.returned, [first]);
        node.handle_timeout(start + SYNC_BACK_DELAY_US - 1);
        assert_eq!(
            sync_back_requests(node, first),
            (0, 0),
            "not before the delay"
        );
        node.handle_timeout(start + SYNC_BACK_DELAY_US);
        assert_eq!(
            sync_back_requests(node, first),
            (1, 1),
            "one round, with it"
        );
        assert!(node.returned.is_empty());

        // The next regular round asks the stalled origin with the lowest key (its answer
        // covers the origins above it), whatever the rotation would pick.
        let mut holes: Vec<OriginKey> = infos[2..].iter().map(|i| i.node_key()).collect();
        holes.sort();
        for o in &holes {
            node.seen.record(*o, 3, 0);
        }
        assert!(node.stalled_first);
        node.sync_rounds = 0; // the next round is the first: not a stalled-origin turn
        node.start_sync();
        assert!(!node.stalled_first);
        let t = node.poll_transmit().expect("a sync request");
        assert_eq!(t.to, holes[0]);
        assert!(
            matches!(&t.msg, Message::SyncRequest { from_origin: Some(o), .. } if *o == holes[0])
        );
        while node.poll_transmit().is_some() {}
        for o in &holes {
            node.seen.remove(o);
        }

        // Another member back within the sync interval: its round waits for the interval
        // to pass since the last one (at most one such round per interval).
        let ran = start + SYNC_BACK_DELAY_US;
        let second = back(node, infos[2].clone());
        let interval = node.config.sync_interval_us;
        node.handle_timeout(ran + interval - 1);
        assert_eq!(
            sync_back_requests(node, second).0,
            1,
            "not within the interval"
        );
        node.handle_timeout(ran + interval);
        assert_eq!(sync_back_requests(node, second), (2, 1));

        // A member seen for the first time (its first generation) is not back from down.
        let mut rt = SwimRuntime::default();
        let mut new = infos[3].clone();
        node.members.remove(&new.node_key());
        new.generation = 0;
        rt.notes.push(OwnedNotification::MemberUp(new.into()));
        node.apply_swim(rt);
        assert!(node.returned.is_empty());
    }

    /// A node the publisher did not know when it published gets no Skip for the sequence
    /// number it may not hold; its delivery of the origin's next events stalls on the hole
    /// until anti-entropy with the origin (here the only node holding the event) answers
    /// with a Skip.
    #[test]
    fn a_missed_skip_is_repaired_from_the_origin() {
        let rtts = vec![40_000u64; 36];
        let seeds: Vec<u8> = (1..=6).collect();
        let mut nodes = mesh(&seeds, 2, 2, &rtts);
        for n in &mut nodes {
            n.set_filter(Box::new(OriginOnly));
        }
        // nodes[0] (r0) publishes; it does not know nodes[5] (r1, not its region's root for
        // this origin) yet.
        let unknown = nodes[5].me().node_key();
        assert_eq!(nodes[5].me().region, "r1");
        let origin = nodes[0].me().node_key();
        assert_ne!(nodes[0].region_root(&origin, "r1"), Some(unknown));
        nodes[0].members.remove(&unknown);
        nodes[0].region_remove("r1", &unknown);
        nodes[0].router.member_down(&unknown);
        nodes[0].router.members_changed();
        nodes[0]
            .handle_publish(0, event_at(seeds[0], 1, "orders.eu"))
            .unwrap();
        let public = event_at(seeds[0], 2, "orders.all");
        nodes[0].handle_publish(0, public.clone()).unwrap();
        let seen = pump(&mut nodes, 0, 1_000_000);
        assert!(
            nodes[5].store().contains(&public.id()),
            "the public event arrived"
        );
        assert_eq!(nodes[5].stats().delivered, 0, "delivery waits on the hole");
        assert!(seen[5].skips.is_empty());
        // Membership catches up. The next anti-entropy round of the stalled node goes to
        // the origin of its hole (the only node holding the event, so no other partner could
        // answer), starting at that origin's events.
        let info = nodes[5].me().clone();
        nodes[0].members.insert(unknown, Arc::new(info));
        nodes[0].region_insert("r1", unknown);
        let rtt = nodes[0].router.rtt_us(&unknown);
        nodes[0].near.insert(rtt, unknown);
        nodes[0].router.members_changed();
        nodes[5].sync_rounds = 1;
        nodes[5].start_sync();
        let t = nodes[5].poll_transmit().expect("a sync request");
        assert_eq!(t.to, origin);
        assert!(
            matches!(&t.msg, Message::SyncRequest { from_origin: Some(o), .. } if *o == origin),
            "{:?}",
            t.msg
        );
        nodes[0].handle_message(1_000_000, unknown, t.msg);
        let seen = pump(&mut nodes, 1_000_000, 1_500_000);
        assert!(seen[5].skips.contains(&(origin, 1)), "{:?}", seen[5]);
        assert!(seen[5].pushes.iter().all(|(id, _)| *id == public.id()));
        assert!(seen[5].named.iter().all(|(_, id)| *id == public.id()));
        assert_eq!(
            nodes[5].stats().delivered,
            1,
            "the public event was delivered"
        );
        assert_eq!(nodes[5].stats().residency_refused, 0);
    }

    /// Writes beside the events (`store_records_mut`) leave the anti-entropy summary as it
    /// is; `store_mut` makes it recompute every settled origin before its next use.
    #[test]
    fn only_store_mut_makes_the_summary_recompute_every_origin() {
        let rtts = vec![10_000u64; 36];
        let mut nodes = mesh(&[1, 2], 1, 2, &rtts);
        nodes[0]
            .handle_publish(0, event_at(1, 1, "orders.all"))
            .unwrap();
        pump(&mut nodes, 0, 500_000);
        let _ = nodes[0].store_records_mut();
        assert!(!nodes[0].seen.stale());
        let _ = nodes[0].store_mut();
        assert!(nodes[0].seen.stale());
        nodes[0].check_invariants_full();
    }

    /// An origin the store holds and the seen-set lacks (events put in through
    /// `store_mut`, which the core does not see): its events still reach a peer by
    /// anti-entropy, through summarised rounds too. The holder's summary leaves the origin
    /// out and the peer's has nothing of it, so their summaries may match; the origin is
    /// found when the peer's full round (every regular round that is not summarised, and
    /// every round after an unsettled answer) walks the store's origins.
    #[test]
    fn an_origin_only_the_store_holds_reaches_a_peer_by_anti_entropy() {
        let rtts = vec![10_000u64; 36];
        let mut nodes = mesh(&[1, 2], 1, 2, &rtts);
        nodes[0]
            .handle_publish(0, event_at(1, 1, "orders.all"))
            .unwrap();
        // Past the settling time: rounds are summarised from here on.
        let settled = 2 * SYNC_SETTLED_US;
        pump(&mut nodes, 0, settled);
        let summaries = nodes[1].stats().sync_summaries_sent;
        assert!(summaries > 0, "no summarised round to test");
        // Two imports: one whose origin the store records as delivered up to 0 (so the
        // event is still to be delivered here, as after a restart), one without a cursor
        // (taken as delivered, as after a restart).
        let imported = event_at(3, 1, "orders.all");
        let delivered_elsewhere = event_at(4, 1, "orders.all");
        let delivered_before = [nodes[0].stats().delivered, nodes[1].stats().delivered];
        let store = nodes[0].store_mut();
        store.set_delivered(&imported.origin(), 0);
        for e in [&imported, &delivered_elsewhere] {
            assert_eq!(store.insert(e.clone()), Ok(Inserted::New));
        }
        assert!(nodes[0].seen.get(&imported.origin()).is_none());
        pump(&mut nodes, settled, settled + SYNC_SETTLED_US);
        for e in [&imported, &delivered_elsewhere] {
            assert!(
                nodes[1].store().contains(&e.id()),
                "an imported event never reached the peer"
            );
        }
        assert!(nodes[1].stats().sync_summaries_sent > summaries);
        assert!(nodes[0].stats().sync_events_sent >= 2);
        // Delivered (the harness drains the application queues): here the import above
        // its cursor only, there both.
        assert_eq!(nodes[0].stats().delivered, delivered_before[0] + 1);
        assert_eq!(nodes[1].stats().delivered, delivered_before[1] + 2);
        let s = nodes[0].seen.get(&imported.origin()).expect("taken in");
        assert_eq!(s.delivered, 1);
        for n in &nodes {
            n.check_invariants_full();
        }
    }

    /// An event erased at the only node holding it (its store reports it erased): a peer
    /// missing it asks by anti-entropy, gets a Skip, and its ordered delivery of the
    /// origin's later events moves on; the erased event is never sent again, and a copy
    /// arriving later is refused by the store, seen but not delivered.
    #[test]
    fn a_peer_missing_an_erased_event_gets_a_skip_and_moves_on() {
        let rtts = vec![10_000u64; 36];
        let seeds: Vec<u8> = vec![1, 2];
        let mut nodes = mesh(&seeds, 1, 2, &rtts);
        let origin = nodes[0].me().node_key();
        let peer = nodes[1].me().node_key();
        let first = event_at(seeds[0], 1, "orders.all");
        let erased = event_at(seeds[0], 2, "orders.all");
        let third = event_at(seeds[0], 3, "orders.all");
        nodes[0].handle_publish(0, first).unwrap();
        pump(&mut nodes, 0, 500_000);
        // The second event never reaches the peer, and is erased at its origin.
        nodes[0].handle_publish(500_000, erased.clone()).unwrap();
        while nodes[0].poll_transmit().is_some() {}
        nodes[0].pending_ihave.clear();
        assert!(nodes[0].store_mut().erase(origin, 2));
        nodes[0].handle_publish(500_000, third.clone()).unwrap();
        let seen = pump(&mut nodes, 500_000, 1_000_000);
        assert!(nodes[1].store().contains(&third.id()));
        assert_eq!(nodes[1].stats().delivered, 1, "delivery waits on the hole");
        assert!(seen[1].skips.is_empty(), "{:?}", seen[1]);
        nodes[1].sync_rounds = 1;
        nodes[1].start_sync();
        let t = nodes[1].poll_transmit().expect("a sync request");
        assert_eq!(t.to, origin);
        nodes[0].handle_message(1_000_000, peer, t.msg);
        let seen = pump(&mut nodes, 1_000_000, 1_500_000);
        assert!(seen[1].skips.contains(&(origin, 2)), "{:?}", seen[1]);
        assert!(seen[1].pushes.iter().all(|(id, _)| *id != erased.id()));
        assert!(seen[1].named.iter().all(|(_, id)| *id != erased.id()));
        assert_eq!(nodes[0].stats().erased_skips_sent, 1);
        assert_eq!(
            nodes[1].stats().delivered,
            2,
            "the third event was delivered"
        );
        assert!(!nodes[1].store().contains(&erased.id()));
        // A GRAFT for it is answered with a Skip too.
        let graft = Message::Graft(vec![EventRef {
            id: erased.id(),
            origin,
            seq: 2,
        }]);
        nodes[0].handle_message(1_500_000, peer, graft);
        let t = nodes[0].poll_transmit().expect("an answer");
        assert!(
            matches!(&t.msg, Message::Skip(list) if list == &vec![(origin, 2)]),
            "{:?}",
            t.msg
        );
        // A late copy (a node that had not applied the erase yet pushes it) is refused by
        // a store that erased it: seen, never stored or delivered.
        let mut late = crate::mesh::MemStore::new(100);
        late.erase(origin, 2);
        assert_eq!(late.insert(erased.clone()), Ok(Inserted::Erased));
        assert!(late.erased(&origin, 2) && late.ranges(&origin).is_some_and(|r| r.contains(2)));
        for n in &nodes {
            n.check_invariants_full();
        }
    }

    /// This node's own event, signed and then refused by its full store, does not hold up
    /// its later events anywhere: the number is voided (seen, kept as erased), and a peer
    /// that reaches the hole gets a Skip from the origin. Before, the peer waited for it
    /// for good once the store had room again.
    #[test]
    fn an_own_event_the_store_refused_leaves_no_hole() {
        let rtts = vec![10_000u64; 36];
        let seeds: Vec<u8> = vec![1, 2];
        let mut nodes = mesh(&seeds, 1, 2, &rtts);
        let origin = nodes[0].me().node_key();
        // The origin's store holds 16 events: fill it.
        for seq in 1..=16 {
            nodes[0]
                .handle_publish(0, event_at(seeds[0], seq, "orders.all"))
                .unwrap();
        }
        pump(&mut nodes, 0, 500_000);
        assert_eq!(nodes[1].stats().delivered, 16);
        let refused = event_at(seeds[0], 17, "orders.all");
        assert!(matches!(
            nodes[0].handle_publish(500_000, refused.clone()),
            Err(StoreError::Full { .. })
        ));
        assert_eq!(nodes[0].stats().own_voided, 1);
        assert!(nodes[0].store().erased(&origin, 17));
        // Room again (an erase, on both nodes: each holds 16), and the next event goes out.
        assert!(nodes[0].store_mut().erase(origin, 1));
        assert!(nodes[1].store_mut().erase(origin, 1));
        let next = event_at(seeds[0], 18, "orders.all");
        nodes[0].handle_publish(600_000, next.clone()).unwrap();
        pump(&mut nodes, 600_000, 1_000_000);
        assert!(nodes[1].store().contains(&next.id()));
        nodes[1].sync_rounds = 1;
        nodes[1].start_sync();
        pump(&mut nodes, 1_000_000, 2_000_000);
        assert_eq!(
            nodes[1].stats().delivered,
            17,
            "the event after the voided number was delivered"
        );
        assert!(!nodes[1].store().contains(&refused.id()));
        for n in &nodes {
            n.check_invariants_full();
        }
    }

    /// A publish of an event whose number the store erased (or a node's retention expired)
    /// is refused as erased, not answered as a stored duplicate.
    #[test]
    fn republishing_an_erased_number_is_refused() {
        let rtts = vec![10_000u64; 36];
        let seeds: Vec<u8> = vec![1, 2];
        let mut nodes = mesh(&seeds, 1, 2, &rtts);
        let origin = nodes[0].me().node_key();
        let first = event_at(seeds[0], 1, "orders.all");
        nodes[0].handle_publish(0, first.clone()).unwrap();
        pump(&mut nodes, 0, 500_000);
        assert_eq!(nodes[0].handle_publish(500_000, first.clone()), Ok(()));
        assert!(nodes[0].store_mut().erase(origin, 1));
        assert_eq!(
            nodes[0].handle_publish(600_000, first.clone()),
            Err(StoreError::Erased { origin, seq: 1 })
        );
        let results = nodes[0].handle_publish_batch(700_000, vec![first]);
        assert_eq!(results, vec![Err(StoreError::Erased { origin, seq: 1 })]);
    }

    /// A region's root that got an event by anti-entropy before the push it was waiting for
    /// still passes it on down its region's tree when that push comes. It had taken the push
    /// as a duplicate, and its children waited for an IHAVE and a GRAFT timeout (`link-cut`,
    /// seeds 131 and 135: a rerouted push came after a sync had brought the event, 223 and
    /// 231 ms over the ideal against a bound of 161 ms).
    #[test]
    fn a_tree_push_after_an_anti_entropy_repair_still_goes_down_the_tree() {
        let rtts = vec![40_000u64; 36];
        // Two regions of four: r0 holds nodes 0, 2, 4, 6 and r1 nodes 1, 3, 5, 7.
        let seeds: Vec<u8> = (1..=8).collect();
        let mut nodes = mesh(&seeds, 2, 2, &rtts);
        let origin = nodes[0].me().node_key();
        let root_key = nodes[1].region_root(&origin, "r1").unwrap();
        let root = nodes
            .iter()
            .position(|n| n.me().node_key() == root_key)
            .unwrap();
        let mut children = nodes[root].children(&origin).to_vec();
        children.sort();
        assert_eq!(children.len(), 2, "arity 2 under the root of four");
        let partner = nodes[2].me().node_key();
        let pushes_of = |node: &mut Node<crate::mesh::MemStore>, event: &Arc<Event>| {
            let mut to = Vec::new();
            while let Some(t) = node.poll_transmit() {
                if let Message::Push { events, relay, .. } = &t.msg
                    && events.iter().any(|e| e.id() == event.id())
                {
                    assert!(relay.is_empty(), "no relay hops were asked for");
                    to.push(t.to);
                }
            }
            to.sort();
            to
        };
        for seq in 1..=2 {
            let event = event_at(seeds[0], seq, "orders.all");
            // Repaired by a sync with a node of r0 other than the origin: announced lazily,
            // pushed to nobody.
            nodes[root].handle_message(
                seq * 1_000,
                partner,
                Message::SyncResponse {
                    events: vec![event.clone()],
                    resume: None,
                    held: seq,
                    unsettled: None,
                },
            );
            assert!(pushes_of(&mut nodes[root], &event).is_empty());
            // Then its tree push from the origin (twice: the second is a plain duplicate).
            for _ in 0..2 {
                nodes[root].handle_message(
                    seq * 1_000 + 500,
                    origin,
                    Message::Push {
                        events: vec![event.clone()],
                        relay: Vec::new(),
                        ack: 0,
                        reroutes: 0,
                    },
                );
            }
            assert_eq!(
                pushes_of(&mut nodes[root], &event),
                children,
                "pushed to its children in r1 (once), and only to them"
            );
        }
        nodes[root].check_invariants();
    }

    #[test]
    fn a_graft_naming_many_events_is_answered_in_push_sized_batches() {
        let rtts = vec![10_000u64; 36];
        let seeds: Vec<u8> = vec![1, 2];
        let mut nodes = mesh(&seeds, 1, 2, &rtts);
        let peer = nodes[1].me().node_key();
        // Small batches: the test mesh's stores hold 16 events.
        nodes[0].config.push_batch_len_max = 4;
        let len_max = 4;
        let count = len_max * 2 + 3;
        let mut refs = Vec::new();
        for seq in 1..=count as u64 {
            let e = event_at(seeds[0], seq, "orders.all");
            refs.push(EventRef::of(&e));
            nodes[0].handle_publish(0, e).unwrap();
            while nodes[0].poll_transmit().is_some() {}
        }
        let pushes_before = nodes[0].stats().pushes_sent;
        nodes[0].handle_message(1_000, peer, Message::Graft(refs.clone()));
        let mut answered = Vec::new();
        while let Some(t) = nodes[0].poll_transmit() {
            if let Message::Push { events, relay, .. } = t.msg {
                assert_eq!(t.to, peer);
                assert!(relay.is_empty());
                assert!(
                    events.len() <= len_max,
                    "{} events in one push",
                    events.len()
                );
                answered.extend(events.iter().map(|e| EventRef::of(e)));
            }
        }
        assert_eq!(answered, refs, "every event, in order, in 3 pushes");
        assert_eq!(nodes[0].stats().pushes_sent - pushes_before, 3);
    }

    /// A region's sample of link records is its lowest keys among the live members: when a
    /// member with a lower key joins, the record of the member it pushes out of the sample
    /// is dropped, so a node keeps RECORDS_PER_REGION_MAX records of the region, the same
    /// ones as every other node.
    #[test]
    fn a_lower_key_joining_a_region_pushes_the_highest_sampled_record_out() {
        use crate::mesh::route::RECORDS_PER_REGION_MAX;
        let info = member_of;
        let me = info(250, "a");
        let mut node = Node::new(
            me.clone(),
            MeshConfig::wan(20),
            1,
            crate::mesh::MemStore::new(16),
            0,
        );
        let others: Vec<MemberInfo> = (10..10 + RECORDS_PER_REGION_MAX as u8)
            .map(|k| info(k, "b"))
            .collect();
        for m in &others {
            node.member_insert(Arc::new(m.clone()));
        }
        let record = |m: &MemberInfo| {
            Arc::new(LinkRecord {
                node: m.key,
                version: 1,
                coord: weft_routing::Coordinate::origin(),
                links: vec![],
                status: Default::default(),
            })
        };
        node.on_links(others.iter().map(record).collect());
        let held = |node: &Node<crate::mesh::MemStore>| {
            let mut keys: Vec<u8> = node.link_records().map(|(r, _)| r.node[0]).collect();
            keys.sort_unstable();
            keys
        };
        assert_eq!(held(&node), (10..26).collect::<Vec<u8>>());
        // A lower key joins: the highest sampled member (25) leaves the sample.
        let low = info(5, "b");
        node.member_insert(Arc::new(low.clone()));
        assert_eq!(held(&node), (10..25).collect::<Vec<u8>>());
        node.on_links(vec![record(&low), record(&others[15])]);
        let mut want: Vec<u8> = (10..25).collect();
        want.insert(0, 5);
        assert_eq!(held(&node), want, "the new member in, 25 refused");
        // A higher key joining changes nothing.
        node.member_insert(Arc::new(info(200, "b")));
        assert_eq!(held(&node), want);
        node.check_invariants_full();
        // A member back in another region loses its record (its links were measured from
        // the old one), though it is in the new region's sample.
        node.member_insert(Arc::new(info(12, "c")));
        want.retain(|k| *k != 12);
        assert_eq!(held(&node), want, "12 moved to c");
        node.check_invariants_full();
    }

    /// A node that joins announces itself to CATCH_UP_ANNOUNCES members a probe tick
    /// (each answers with a feed of members) while the last tick taught it members, and
    /// stops at the first tick that did not, or after CATCH_UP_TICKS_MAX.
    #[test]
    fn a_joining_node_catches_up_on_the_membership_while_it_learns() {
        let info = |key: u8| member_of(key, &format!("r{}", key % 3));
        let fresh = || {
            Node::new(
                info(200),
                MeshConfig::wan(50),
                1,
                crate::mesh::MemStore::new(16),
                0,
            )
        };
        // SWIM messages sent, each to another member (asserted).
        let swim_sent = |node: &mut Node<crate::mesh::MemStore>| {
            let mut to = BTreeSet::new();
            let mut n = 0;
            while let Some(t) = node.poll_transmit() {
                if matches!(t.msg, Message::Swim(_)) {
                    n += 1;
                    assert!(to.insert(t.to), "asked {} twice in one tick", t.to);
                }
            }
            n
        };
        let mut node = fresh();
        node.join(0, &[info(1)]);
        assert_eq!(swim_sent(&mut node), 1, "the seed");
        // The seed's feed taught it ten members: it asks three of them for more.
        for k in 1..=10 {
            node.member_insert(Arc::new(info(k)));
        }
        node.catch_up_membership();
        assert_eq!(swim_sent(&mut node), CATCH_UP_ANNOUNCES);
        // Their feeds taught it more: again.
        for k in 11..=20 {
            node.member_insert(Arc::new(info(k)));
        }
        node.catch_up_membership();
        assert_eq!(swim_sent(&mut node), CATCH_UP_ANNOUNCES);
        // A tick with nothing new ends it for good.
        node.catch_up_membership();
        assert_eq!(swim_sent(&mut node), 0);
        node.member_insert(Arc::new(info(21)));
        node.catch_up_membership();
        assert_eq!(swim_sent(&mut node), 0, "over");
        assert_eq!(
            node.stats().catch_up_announces,
            2 * CATCH_UP_ANNOUNCES as u64
        );
        // A membership that keeps growing is asked for CATCH_UP_TICKS_MAX ticks at most.
        let mut node = fresh();
        node.join(0, &[info(1)]);
        assert_eq!(swim_sent(&mut node), 1, "the seed");
        let mut ticks = 0;
        for k in 1..=100u8 {
            node.member_insert(Arc::new(info(k)));
            node.catch_up_membership();
            ticks += usize::from(swim_sent(&mut node) > 0);
        }
        assert_eq!(ticks, CATCH_UP_TICKS_MAX as usize);
    }

    /// Anti-entropy between nodes that have seen the same of every origin for
    /// SYNC_SETTLED_US sends those origins as a summary (nothing listed), which the partner
    /// matches and answers with nothing. When the partner has seen more of an origin the
    /// requester holds settled, it answers `unsettled`; the requester then sends its whole
    /// digest and gets the event it lacks. A stray `unsettled` answer asks for nothing.
    /// An answer leaves out an origin's fresh tail when that is all the requester lacks
    /// (it is most likely on its way through the tree), and sends it once it is older than
    /// SYNC_FRESH_US, or at once to a requester behind on older numbers too.
    #[test]
    fn anti_entropy_leaves_a_fresh_tail_to_the_tree() {
        let rtts = vec![10_000u64; 36];
        let seeds: Vec<u8> = vec![1, 2];
        let mut nodes = mesh(&seeds, 1, 2, &rtts);
        let (k0, k1) = (nodes[0].me().node_key(), nodes[1].me().node_key());
        for seq in 1..=3 {
            nodes[0]
                .handle_publish(0, event_at(seeds[0], seq, "orders.all"))
                .unwrap();
        }
        let t = 10_000_000;
        nodes[0]
            .handle_publish(t, event_at(seeds[0], 4, "orders.all"))
            .unwrap();
        while nodes[0].poll_transmit().is_some() {}
        let ask = |node: &mut Node<crate::mesh::MemStore>, at: Micros, has: u64| {
            node.handle_message(
                at,
                k1,
                Message::SyncRequest {
                    digest: vec![(k0, vec![(1, has)].into())],
                    from_origin: None,
                    settled: None,
                },
            );
            match node.poll_transmit().map(|t| t.msg) {
                Some(Message::SyncResponse { events, .. }) => {
                    events.iter().map(|e| e.seq()).collect::<Vec<u64>>()
                }
                other => panic!("expected an answer, got {other:?}"),
            }
        };
        // Only the fresh event lacking: left to the tree, and counted.
        assert_eq!(ask(&mut nodes[0], t + 100_000, 3), Vec::<u64>::new());
        assert_eq!(nodes[0].stats().sync_events_held_back, 1);
        // Behind on an older one too: everything, the fresh one included.
        assert_eq!(ask(&mut nodes[0], t + 100_000, 2), vec![3, 4]);
        // No longer fresh: sent.
        assert_eq!(ask(&mut nodes[0], t + SYNC_FRESH_US, 3), vec![4]);
        assert_eq!(nodes[0].stats().sync_events_held_back, 1);
    }

    #[test]
    fn anti_entropy_summarises_settled_origins_and_falls_back_to_the_whole_digest() {
        let rtts = vec![10_000u64; 36];
        let seeds: Vec<u8> = vec![1, 2, 3];
        let mut nodes = mesh(&seeds, 1, 2, &rtts);
        let keys: Vec<OriginKey> = nodes.iter().map(|n| n.me().node_key()).collect();
        for (i, seed) in seeds.iter().enumerate() {
            nodes[i]
                .handle_publish(0, event_at(*seed, 1, "orders.all"))
                .unwrap();
        }
        pump(&mut nodes, 0, 1_000_000);
        assert!(nodes.iter().all(|n| n.store().len() == 3));
        let sync = |nodes: &mut Vec<Node<crate::mesh::MemStore>>, at: Micros| {
            nodes[0].now = at;
            nodes[0].sync_with(keys[1], None, false);
            let t = nodes[0].poll_transmit().expect("a request");
            assert_eq!(t.to, keys[1]);
            t.msg
        };
        let answer = |nodes: &mut Vec<Node<crate::mesh::MemStore>>,
                      at: Micros,
                      from: OriginKey,
                      to: usize,
                      msg: Message| {
            nodes[to].handle_message(at, from, msg);
            nodes[to].poll_transmit().expect("an answer").msg
        };
        // Not settled yet: every origin listed.
        match sync(&mut nodes, SYNC_SETTLED_US - 1) {
            Message::SyncRequest {
                digest, settled, ..
            } => assert!(digest.len() == 3 && settled.is_none()),
            other => panic!("{other:?}"),
        }
        // Settled: a summary of three origins and nothing listed; the partner matches it.
        let t = SYNC_SETTLED_US + 1_000_000;
        let request = sync(&mut nodes, t);
        match &request {
            Message::SyncRequest {
                digest,
                settled: Some(s),
                ..
            } => assert!(digest.is_empty() && s.count == 3),
            other => panic!("{other:?}"),
        }
        assert!(request.wire_len() < 100, "{}", request.wire_len());
        match answer(&mut nodes, t, keys[0], 1, request) {
            Message::SyncResponse {
                events, unsettled, ..
            } => assert!(events.is_empty() && unsettled.is_none()),
            other => panic!("{other:?}"),
        }
        assert_eq!(nodes[0].stats().sync_summaries_sent, 1);
        // Node 2's next event reaches node 1 only.
        let late = event_at(seeds[2], 2, "orders.all");
        let push = Message::Push {
            events: vec![late.clone()],
            relay: Vec::new(),
            ack: 0,
            reroutes: 0,
        };
        nodes[1].handle_message(t, keys[2], push);
        while nodes[1].poll_transmit().is_some() {}
        // Node 0 holds node 2's origin settled: node 1 has seen more of it.
        let t = t + 1_000_000;
        let request = sync(&mut nodes, t);
        let unsettled = answer(&mut nodes, t, keys[0], 1, request);
        assert!(
            matches!(&unsettled, Message::SyncResponse { unsettled: Some(_), events, .. } if events.is_empty())
        );
        assert_eq!(nodes[1].stats().sync_unsettled_out, 1);
        // The whole digest follows, answered with the event node 0 lacks.
        let full = answer(&mut nodes, t, keys[1], 0, unsettled.clone());
        assert!(
            matches!(&full, Message::SyncRequest { digest, settled: None, .. } if digest.len() == 3)
        );
        assert_eq!(nodes[0].stats().sync_unsettled_in, 1);
        match answer(&mut nodes, t, keys[0], 1, full) {
            Message::SyncResponse {
                events, unsettled, ..
            } => {
                assert!(unsettled.is_none());
                assert_eq!(events.len(), 1);
                assert_eq!(events[0].id(), late.id());
            }
            other => panic!("{other:?}"),
        }
        // An `unsettled` answer to no summary asks for nothing, nor does one naming another
        // summary than the last sent (here: a new one, pending).
        nodes[0].handle_message(t, keys[1], unsettled.clone());
        assert!(nodes[0].poll_transmit().is_none());
        let _pending = sync(&mut nodes, t + 100_000);
        nodes[0].handle_message(t + 100_000, keys[1], unsettled);
        assert!(nodes[0].poll_transmit().is_none());
        assert_eq!(nodes[0].stats().sync_unsettled_in, 1);
        nodes[0].check_invariants_full();
    }

    /// Refuses events of `eu.` streams to members of one region (a residency class).
    struct EuOutside(&'static str);

    impl ReplicationFilter for EuOutside {
        fn hop(&self, event: &EventData, peer: &MemberInfo) -> FilterHop {
            if peer.region.as_str() == self.0 && event.stream().as_str().starts_with("eu.") {
                FilterHop::Refuse
            } else {
                FilterHop::Clear
            }
        }
    }

    /// Anti-entropy compares partners by the sequence numbers they have seen, not by the
    /// events they store: a node that may not hold a class has seen its numbers as Skips.
    /// Compared by events stored, a node outside the class ranked every node inside it
    /// first for "most missing" in every round, and never summarised its digest to them.
    #[test]
    fn partners_are_compared_by_what_they_have_seen_not_by_what_they_store() {
        let rtts = vec![40_000u64; 36];
        let seeds: Vec<u8> = vec![1, 2, 3, 4];
        let mut nodes = mesh(&seeds, 2, 2, &rtts);
        for n in &mut nodes {
            n.set_filter(Box::new(EuOutside("r1")));
        }
        let keys: Vec<OriginKey> = nodes.iter().map(|n| n.me().node_key()).collect();
        // Node 0 (r0) publishes two EU events around a public one.
        for (seq, stream) in [(1, "eu.orders"), (2, "all.orders"), (3, "eu.orders")] {
            nodes[0]
                .handle_publish(0, event_at(seeds[0], seq, stream))
                .unwrap();
        }
        pump(&mut nodes, 0, 2_000_000);
        assert_eq!(nodes[1].me().region, "r1");
        assert_eq!(nodes[2].me().region, "r0");
        assert_eq!(nodes[1].store().len(), 1, "r1 holds the public event only");
        assert_eq!(nodes[2].store().len(), 3);
        for n in &nodes {
            assert_eq!(n.seen_count(), 3, "stored, relayed or skipped alike");
            n.check_invariants_full();
        }
        // Node 2 answers node 1 with what it has seen, which is what node 1 has seen.
        let t = SYNC_SETTLED_US + 1_000_000;
        nodes[1].now = t;
        nodes[1].sync_with(keys[2], None, false);
        let request = nodes[1].poll_transmit().expect("a request").msg;
        assert!(
            matches!(&request, Message::SyncRequest { settled: Some(s), digest, .. } if s.count == 1 && digest.is_empty()),
            "{request:?}"
        );
        nodes[2].handle_message(t, keys[1], request);
        let answer = nodes[2].poll_transmit().expect("an answer").msg;
        assert!(
            matches!(&answer, Message::SyncResponse { held: 3, events, unsettled: None, .. } if events.is_empty()),
            "{answer:?}"
        );
        // (Answered a round trip later: the round is an RTT sample too.)
        nodes[1].handle_message(t + 40_000, keys[2], answer);
        // So the next round with node 2 summarises again, and nodes 0 and 2 do not rank
        // above node 3, synced least recently, for "most missing".
        let t = t + 1_000_000;
        nodes[1].now = t;
        nodes[1].sync_with(keys[2], None, false);
        let request = nodes[1].poll_transmit().expect("a request").msg;
        assert!(
            matches!(
                &request,
                Message::SyncRequest {
                    settled: Some(_),
                    ..
                }
            ),
            "{request:?}"
        );
        for (k, last) in [(keys[0], t), (keys[2], t), (keys[3], t - 10_000_000)] {
            let p = nodes[1].peers.entry(k).or_default();
            (p.held, p.last_sync_us, p.unanswered_since) = (3, Some(last), None);
        }
        assert_eq!(nodes[1].ranked_partner(), Some((keys[3], false)));
        // A partner that has seen more still ranks first.
        nodes[1].peers.get_mut(&keys[0]).unwrap().held = 4;
        assert_eq!(nodes[1].ranked_partner(), Some((keys[0], false)));
    }

    proptest::proptest! {
        /// The partner ranking through the near index is the walk of every member it
        /// replaced, whatever the estimates (samples, level shifts, refused samples), peer
        /// states, failed links and departures.
        #[test]
        fn the_near_index_ranks_as_the_walk_of_every_member(
            samples in proptest::collection::vec((0usize..8, 1u64..12_000_000), 0..60),
            peers in proptest::collection::vec(
                (0usize..8, 0u64..6, proptest::option::of(0u64..5_000_000), proptest::bool::ANY),
                0..8,
            ),
            held in 0u64..6,
            failed in proptest::option::of(0usize..3),
            downs in proptest::collection::vec(1usize..8, 0..3),
        ) {
            let seeds: Vec<u8> = (1..=8).collect();
            let rtts = vec![10_000u64; 36];
            let mut nodes = mesh(&seeds, 3, 2, &rtts);
            let keys: Vec<OriginKey> = nodes.iter().map(|n| n.me().node_key()).collect();
            let infos: Vec<MemberInfo> = nodes.iter().map(|n| n.me().clone()).collect();
            let node = &mut nodes[0];
            for (j, r) in samples {
                node.handle_rtt_sample(0, keys[j], r);
            }
            for (j, h, last, silent) in peers {
                let p = node.peers.entry(keys[j]).or_default();
                (p.held, p.last_sync_us) = (h, last);
                p.unanswered_since = silent.then_some(0);
            }
            if let Some(r) = failed {
                node.router.fail(&format!("r{r}"), 0);
            }
            let mut rt = SwimRuntime::default();
            for j in downs {
                rt.notes
                    .push(OwnedNotification::MemberDown(SwimId::new(infos[j].clone())));
            }
            node.apply_swim(rt);
            // The index is the members' estimates (among the node's invariants).
            node.check_invariants_full();
            node.seen_count = held;
            node.now = 6_000_000;
            proptest::prop_assert_eq!(node.ranked_partner(), node.ranked_partner_walk());
        }
    }

    /// A node restarted from its store holds every origin as `lossy` (its seen ranges are
    /// rebuilt from the store's): summaries still match it both ways, through the join of
    /// seen and stored ranges, instead of an `unsettled` round trip on every round.
    #[test]
    fn a_node_restarted_from_its_store_matches_summaries_both_ways() {
        let rtts = vec![10_000u64; 36];
        let seeds: Vec<u8> = vec![1, 2];
        let mut nodes = mesh(&seeds, 1, 2, &rtts);
        for (i, seed) in seeds.iter().enumerate() {
            for seq in 1..=3 {
                nodes[i]
                    .handle_publish(0, event_at(*seed, seq, "orders.all"))
                    .unwrap();
            }
        }
        pump(&mut nodes, 0, 1_000_000);
        let keys: Vec<OriginKey> = nodes.iter().map(|n| n.me().node_key()).collect();
        let old = nodes.pop().unwrap();
        let info = old.me().clone();
        let t = 2_000_000;
        let mut back = Node::new(info, MeshConfig::wan(2), 9, old.into_store(), t);
        back.member_insert(Arc::new(nodes[0].me().clone()));
        assert!(back.seen.values().all(|s| s.lossy));
        let mut first = nodes.pop().unwrap();
        // The restarted node answers a summary of what it holds.
        let t = t + SYNC_SETTLED_US;
        first.now = t;
        first.sync_with(keys[1], None, false);
        let request = first.poll_transmit().unwrap().msg;
        assert!(
            matches!(&request, Message::SyncRequest { digest, settled: Some(s), .. } if digest.is_empty() && s.count == 2)
        );
        back.handle_message(t, keys[0], request);
        match back.poll_transmit().map(|t| t.msg) {
            Some(Message::SyncResponse {
                events, unsettled, ..
            }) => assert!(events.is_empty() && unsettled.is_none()),
            other => panic!("{other:?}"),
        }
        // And its own requests summarise its origins, once settled since the restart.
        back.now = t;
        back.sync_with(keys[0], None, false);
        let request = back.poll_transmit().unwrap().msg;
        assert!(
            matches!(&request, Message::SyncRequest { digest, settled: Some(s), .. } if digest.is_empty() && s.count == 2)
        );
        first.handle_message(t, keys[1], request);
        match first.poll_transmit().map(|t| t.msg) {
            Some(Message::SyncResponse {
                events, unsettled, ..
            }) => assert!(events.is_empty() && unsettled.is_none()),
            other => panic!("{other:?}"),
        }
        assert_eq!(first.stats().sync_unsettled_out, 0);
        assert_eq!(back.stats().sync_unsettled_out, 0);
    }

    /// Link-state gossip sends digests (node and version per record), not records; a peer
    /// pulls only the records it would take, once for several digests naming the same
    /// version (again after LINK_PULL_RETRY_US), and the pull is answered with them.
    #[test]
    fn link_gossip_sends_digests_and_peers_pull_only_what_they_would_take() {
        let rtts = vec![40_000u64; 36];
        let seeds: Vec<u8> = (1..=6).collect();
        let mut nodes = mesh(&seeds, 2, 2, &rtts);
        let mut b = nodes.pop().unwrap();
        let mut a = nodes.pop().unwrap();
        for n in [&mut a, &mut b] {
            while n.poll_transmit().is_some() {}
            assert_eq!(n.link_records().count(), 6);
        }
        let (ka, kb) = (a.me().node_key(), b.me().node_key());
        let held = |n: &Node<crate::mesh::MemStore>, k: &OriginKey| {
            n.link_records()
                .find(|(r, _)| r.node == k.0)
                .map(|(r, _)| r.version)
                .unwrap()
        };
        // A new record of a's own: its next round names it, to peers, as a digest.
        a.now = 1_000_000;
        a.router.own_forced = true;
        a.gossip_links();
        let version = held(&a, &ka);
        assert!(version > held(&b, &ka));
        let mut digests = 0;
        while let Some(t) = a.poll_transmit() {
            match t.msg {
                Message::LinkDigest(entries) => {
                    digests += 1;
                    assert!(entries.contains(&(ka, version)));
                    assert!(entries.len() <= LINK_RECORDS_PER_MESSAGE_MAX);
                }
                other => panic!("link gossip sent {other:?}"),
            }
        }
        assert_eq!(digests, a.config.link_fanout);
        // b would take that version, and nothing else the digest might name that it holds.
        let stale = held(&b, &kb);
        b.now = 1_000_000;
        b.on_link_digest(ka, vec![(ka, version), (kb, stale)]);
        let pulled = match b.poll_transmit().map(|t| (t.to, t.msg)) {
            Some((to, Message::LinkPull(keys))) if to == ka => keys,
            other => panic!("expected a pull to a, got {other:?}"),
        };
        assert_eq!(pulled, vec![ka]);
        assert!(b.poll_transmit().is_none());
        // A second digest naming the same version (another peer's) does not pull it again.
        b.on_link_digest(kb, vec![(ka, version)]);
        assert!(b.poll_transmit().is_none());
        // Nor do records of non-members or versions no newer than held.
        b.on_link_digest(ka, vec![(OriginKey([7; 32]), 1), (ka, held(&b, &ka))]);
        assert!(b.poll_transmit().is_none());
        // a answers the pull with the records it holds of the keys asked.
        a.on_link_pull(kb, vec![ka, OriginKey([7; 32])]);
        let records = match a.poll_transmit().map(|t| (t.to, t.msg)) {
            Some((to, Message::Links(records))) if to == kb => records,
            other => panic!("expected records for b, got {other:?}"),
        };
        assert_eq!(records.len(), 1);
        assert_eq!(a.stats().link_pull_records_sent, 1);
        b.on_links(records);
        assert_eq!(held(&b, &ka), version);
        // Taken: a digest naming it pulls nothing.
        b.on_link_digest(ka, vec![(ka, version)]);
        assert!(b.poll_transmit().is_none());
        // A pull that went unanswered is asked again after LINK_PULL_RETRY_US.
        b.on_link_digest(ka, vec![(ka, version + 1)]);
        assert!(matches!(
            b.poll_transmit().map(|t| t.msg),
            Some(Message::LinkPull(_))
        ));
        b.now += route::LINK_PULL_RETRY_US - 1;
        b.on_link_digest(ka, vec![(ka, version + 1)]);
        assert!(b.poll_transmit().is_none());
        b.now += 1;
        b.on_link_digest(ka, vec![(ka, version + 1)]);
        assert!(matches!(
            b.poll_transmit().map(|t| t.msg),
            Some(Message::LinkPull(_))
        ));
        assert_eq!(b.stats().link_pulls_sent, 3);
        // Entries over the per-message bound are not read, and counted.
        let long: Vec<(OriginKey, u64)> = (0..20u8).map(|i| (OriginKey([i; 32]), 1)).collect();
        b.on_link_digest(ka, long);
        b.on_link_pull(ka, (0..18u8).map(|i| OriginKey([i; 32])).collect());
        assert_eq!(b.stats().link_entries_over_limit, 4 + 2);
        b.check_invariants_full();
        // Every round's peers are distinct (drawn with replacement, a round sent one peer
        // the same digest twice in about one round in five here).
        while a.poll_transmit().is_some() {}
        for round in 1..=50 {
            a.now += 1_000_000;
            a.router.own_forced = true;
            a.gossip_links();
            let to: Vec<OriginKey> = std::iter::from_fn(|| a.poll_transmit())
                .map(|t| t.to)
                .collect();
            assert_eq!(to.len(), a.config.link_fanout, "round {round}");
            assert!(to[0] != to[1], "round {round}: {to:?}");
        }
    }

    /// A member that joins gets the link-state records from the members after it in key
    /// order, one slice of a message each, HANDOFF_DELAY_US after they see it join: every
    /// record once, instead of two a second by the rotation.
    #[test]
    fn a_joining_member_is_handed_the_records_in_slices() {
        let rtts = vec![40_000u64; 36];
        let seeds: Vec<u8> = (1..=21).collect();
        let mut nodes = mesh(&seeds, 2, 2, &rtts);
        // The node with the highest key joins late (its slices come from the lowest keys,
        // the count wrapping around): the others forget it, it starts afresh knowing the
        // members.
        let last = (0..nodes.len()).max_by_key(|i| nodes[*i].me().key).unwrap();
        let joiner = nodes.swap_remove(last).me().clone();
        let key = joiner.node_key();
        for n in &mut nodes {
            n.members.remove(&key);
            n.region_remove(&joiner.region, &key);
            n.router.member_down(&key);
            assert_eq!(n.link_records().count(), 20);
        }
        let mut fresh = Node::new(
            joiner.clone(),
            MeshConfig::wan(21),
            1,
            crate::mesh::MemStore::new(16),
            0,
        );
        for n in &nodes {
            fresh.member_insert(Arc::new(n.me().clone()));
        }
        // Everyone sees it join; nothing is handed over before the delay.
        for n in &mut nodes {
            n.member_up(Arc::new(joiner.clone()));
            n.send_handoffs();
            while let Some(t) = n.poll_transmit() {
                assert!(t.to != key || !matches!(t.msg, Message::Links(_)));
            }
        }
        let mut senders = 0;
        let mut records = 0;
        for n in &mut nodes {
            n.now = HANDOFF_DELAY_US;
            n.send_handoffs();
            let mut sent = false;
            while let Some(t) = n.poll_transmit() {
                if let (true, Message::Links(batch)) = (t.to == key, t.msg) {
                    assert!(batch.len() <= LINK_RECORDS_PER_MESSAGE_MAX);
                    records += batch.len();
                    sent = true;
                    fresh.on_links(batch);
                }
            }
            senders += usize::from(sent);
            assert!(n.handoffs.is_empty());
            assert_eq!(n.stats().link_handoffs_sent, u64::from(sent));
        }
        // 20 records held by each: two slices, from the two members after the joiner (the
        // two lowest keys).
        let mut keys: Vec<[u8; 32]> = nodes.iter().map(|n| n.me().key).collect();
        keys.sort_unstable();
        for (i, n) in nodes.iter().enumerate() {
            let sent = n.stats().link_handoffs_sent > 0;
            assert_eq!(sent, keys[..2].contains(&n.me().key), "node {i}");
        }
        assert_eq!(senders, 2, "one member per slice");
        assert_eq!(records, 20, "each record once");
        assert_eq!(fresh.link_records().count(), 20);
        fresh.check_invariants_full();
        // A restart (the same key under a later generation, seen before it was taken
        // down) lost the records too: handed over again.
        let mut again = joiner.clone();
        again.generation = 1;
        let first = nodes
            .iter_mut()
            .find(|n| n.handoff_turn(&key) == Some(0))
            .unwrap();
        first.member_up(Arc::new(again));
        assert!(first.handoffs.contains_key(&key));
    }

    /// This node's own record stays when lower keys push it out of its own region's
    /// sample: it is the record the node gossips.
    #[test]
    fn a_nodes_own_record_stays_when_its_region_sample_passes_it_by() {
        use crate::mesh::route::RECORDS_PER_REGION_MAX;
        let info = |key: u8| member_of(key, "a");
        let me = info(100);
        let mut node = Node::new(
            me.clone(),
            MeshConfig::wan(20),
            1,
            crate::mesh::MemStore::new(16),
            0,
        );
        node.gossip_links();
        let own =
            |node: &Node<crate::mesh::MemStore>| node.link_records().any(|(r, _)| r.node == me.key);
        assert!(own(&node));
        // Sixteen lower keys join this node's region: it is seventeenth.
        for k in 1..=RECORDS_PER_REGION_MAX as u8 {
            node.member_insert(Arc::new(info(k)));
            assert!(own(&node), "after key {k}");
        }
        node.check_invariants_full();
    }

    /// GRAFTs that come due together go as one message per announcer, cut at
    /// `graft_batch_len_max` events (after a heal a node lacks thousands of the other side's
    /// events, announced in IHAVE batches: one GRAFT and one answering push per event was
    /// 43,000 GRAFTs on `cloud-partition`); with a limit of 1, one GRAFT per event.
    #[test]
    fn grafts_due_together_go_as_one_message_per_announcer() {
        let rtts = vec![10_000u64; 36];
        let seeds: Vec<u8> = vec![1, 2, 3];
        for len_max in [4usize, 1] {
            let mut nodes = mesh(&seeds, 1, 3, &rtts);
            nodes[0].config.graft_batch_len_max = len_max;
            let (a, b) = (nodes[1].me().node_key(), nodes[2].me().node_key());
            let refs_of = |origin: u8, seqs: std::ops::RangeInclusive<u64>| -> Vec<EventRef> {
                seqs.map(|seq| EventRef::of(&event_at(origin, seq, "orders.all")))
                    .collect()
            };
            let from_a = refs_of(seeds[1], 1..=9);
            let from_b = refs_of(seeds[2], 1..=2);
            nodes[0].handle_message(1_000, a, Message::IHave(from_a.clone()));
            nodes[0].handle_message(1_000, b, Message::IHave(from_b.clone()));
            while nodes[0].poll_transmit().is_some() {}
            let before = nodes[0].stats().grafts_sent;
            let due = 1_000 + nodes[0].config.graft_timeout_us;
            nodes[0].handle_timeout(due);
            let mut grafts: BTreeMap<OriginKey, Vec<Vec<EventRef>>> = BTreeMap::new();
            while let Some(t) = nodes[0].poll_transmit() {
                if let Message::Graft(refs) = t.msg {
                    assert!(refs.len() <= len_max, "{} refs in one GRAFT", refs.len());
                    grafts.entry(t.to).or_default().push(refs);
                }
            }
            let messages: usize = grafts.values().map(Vec::len).sum();
            assert_eq!(
                messages,
                from_a.len().div_ceil(len_max) + from_b.len().div_ceil(len_max),
                "limit {len_max}: {grafts:?}"
            );
            assert_eq!(nodes[0].stats().grafts_sent - before, messages as u64);
            assert_eq!(
                grafts[&a].concat(),
                from_a,
                "each announcer's events, in order"
            );
            assert_eq!(grafts[&b].concat(), from_b);
            nodes[0].check_invariants_full();
        }
    }

    #[test]
    fn an_announced_event_that_arrives_takes_its_graft_timer_with_it() {
        let rtts = vec![10_000u64; 36];
        let seeds: Vec<u8> = vec![1, 2, 3];
        let mut nodes = mesh(&seeds, 1, 3, &rtts);
        let a = nodes[1].me().node_key();
        let events: Vec<Arc<Event>> = (1..=3)
            .map(|seq| event_at(seeds[1], seq, "orders.all"))
            .collect();
        let refs: Vec<EventRef> = events.iter().map(|e| EventRef::of(e)).collect();
        let grafts = |n: &Node<_>| {
            n.timers
                .values()
                .filter(|t| matches!(t, Timer::Graft(_)))
                .count()
        };
        let before = grafts(&nodes[0]);
        nodes[0].handle_message(1_000, a, Message::IHave(refs));
        assert_eq!(grafts(&nodes[0]), before + 3, "one GRAFT timer per event");
        nodes[0].check_invariants_full();
        // Two of the three come by the tree before the timeout: their timers go with them.
        let pushed = Message::Push {
            events: events[..2].to_vec(),
            relay: Vec::new(),
            ack: 0,
            reroutes: 0,
        };
        nodes[0].handle_message(2_000, a, pushed);
        assert_eq!(grafts(&nodes[0]), before + 1);
        assert_eq!(nodes[0].missing.len(), 1);
        nodes[0].check_invariants_full();
        while nodes[0].poll_transmit().is_some() {}
        // The third is grafted when its timer fires, from the one announcer.
        let due = 1_000 + nodes[0].config.graft_timeout_us;
        nodes[0].handle_timeout(due);
        let grafted: Vec<EventRef> = std::iter::from_fn(|| nodes[0].poll_transmit())
            .filter_map(|t| match t.msg {
                Message::Graft(refs) if t.to == a => Some(refs),
                _ => None,
            })
            .flatten()
            .collect();
        assert_eq!(grafted, vec![EventRef::of(&events[2])]);
        assert_eq!(grafts(&nodes[0]), before, "no announcer left: no retry");
        nodes[0].check_invariants_full();
    }

    #[test]
    fn chunks_of_cuts_as_slice_chunks_does() {
        for len in 0..=12usize {
            for max in 0..=5usize {
                let list: Vec<usize> = (0..len).collect();
                let expected: Vec<Vec<usize>> =
                    list.chunks(max.max(1)).map(<[usize]>::to_vec).collect();
                let got: Vec<Vec<usize>> = chunks_of(list, max).into_iter().collect();
                assert_eq!(got, expected, "{len} items in chunks of {max}");
            }
        }
    }

    #[test]
    fn peer_batches_keep_key_order() {
        let mut batches = PeerBatches::default();
        let keys: Vec<OriginKey> = [7u8, 3, 9, 3, 1, 7]
            .iter()
            .map(|&b| OriginKey([b; 32]))
            .collect();
        for (i, k) in keys.iter().enumerate() {
            batches.entry(*k).push(i);
        }
        let mut taken = batches.take();
        assert!(batches.is_empty());
        let got: Vec<(u8, Vec<usize>)> = taken.drain(..).map(|(k, v)| (k.0[0], v)).collect();
        assert_eq!(
            got,
            vec![(1, vec![4]), (3, vec![1, 3]), (7, vec![0, 5]), (9, vec![2])]
        );
        batches.restore(taken);
        assert!(batches.is_empty());
    }

    #[test]
    fn a_node_refuses_what_it_may_not_hold() {
        let rtts = vec![50_000u64; 36];
        let seeds: Vec<u8> = (1..=4).collect();
        let mut nodes = mesh(&seeds, 2, 2, &rtts);
        for n in &mut nodes {
            n.set_filter(Box::new(ByRegion(BTreeMap::from([(
                "r1".to_string(),
                FilterHop::Transit,
            )]))));
        }
        let event = event_of(seeds[0]);
        let from = nodes[0].me().node_key();
        // A transit node sent the event outside a relay path (a GRAFT answer, say), and in
        // an anti-entropy batch: both refused, counted, never stored or delivered.
        let push = Message::Push {
            events: vec![event.clone()],
            relay: Vec::new(),
            ack: 0,
            reroutes: 0,
        };
        nodes[1].handle_message(1, from, push);
        let sync = Message::SyncResponse {
            events: vec![event.clone()],
            resume: None,
            held: 1,
            unsettled: None,
        };
        nodes[1].handle_message(2, from, sync);
        assert_eq!(nodes[1].me().region, "r1");
        assert_eq!(nodes[1].stats().residency_refused, 2);
        assert!(!nodes[1].store().contains(&event.id()));
        assert_eq!(nodes[1].stats().delivered, 0);
        while let Some(t) = nodes[1].poll_transmit() {
            assert!(
                !matches!(t.msg, Message::Push { .. } | Message::IHave(_)),
                "a refused event went on: {:?}",
                t.msg
            );
        }
        // The same event is clear in r0: stored and delivered.
        nodes[2].handle_message(
            3,
            from,
            Message::Push {
                events: vec![event.clone()],
                relay: Vec::new(),
                ack: 0,
                reroutes: 0,
            },
        );
        assert_eq!(nodes[2].me().region, "r0");
        assert!(nodes[2].store().contains(&event.id()));
        assert_eq!(nodes[2].stats().residency_refused, 0);
        nodes[1].check_invariants_full();
        nodes[2].check_invariants_full();
    }

    /// [`signed_event`] on `orders.eu`; `variant` changes the payload, so two variants of
    /// one number are an equivocating origin's two events.
    fn variant_event(seed: u8, seq: u64, variant: u8) -> Option<Arc<Event>> {
        signed_event(seed, seq, "orders.eu", &[b'x', variant])
    }

    /// One step of what a member that breaks the protocol (or a peer of another version,
    /// or a corrupted one) can make a node handle: every message kind with fields drawn
    /// freely (origins among the mesh's and an unknown one, sequence numbers at the edges,
    /// relay hops naming unknown regions and bad parents, coordinates with NaN), events
    /// that are validly signed (a peer cannot forge a signature, but may replay, reorder
    /// and send an equivocating origin's two events of one number), and time passing.
    #[derive(Debug, Clone)]
    enum Hostile {
        Push {
            events: Vec<(u8, u64, u8)>,
            relay: Vec<(u8, Option<u8>)>,
            ack: u64,
            reroutes: u8,
        },
        SyncResponse {
            events: Vec<(u8, u64, u8)>,
            resume: Option<u8>,
            held: u64,
            unsettled: Option<[u64; 2]>,
        },
        Skip(Vec<(u8, u64)>),
        IHave(Vec<(u8, u64, u8)>),
        Graft(Vec<(u8, u64, u8)>),
        SyncRequest {
            digest: Vec<(u8, Vec<(u64, u64)>)>,
            from_origin: Option<u8>,
            settled: Option<([u64; 2], u32, u64)>,
        },
        PushAck(u64),
        Probe(u64),
        ProbeAck(u64, f32),
        LinkDigest(Vec<(u8, u64)>),
        LinkPull(Vec<u8>),
        Swim(Vec<u8>),
        Tick(u64),
        Publish,
    }

    /// Skips are counted by who sent them: the origin itself, or another node (taken on its
    /// word), per sender for members; a Skip for a number already seen counts nothing.
    #[test]
    fn skips_from_others_than_the_origin_are_counted_per_sender() {
        let seeds = [1u8, 2, 3, 4];
        let mut nodes = mesh(&seeds, 2, 2, &[20_000u64; 36]);
        let keys: Vec<OriginKey> = nodes.iter().map(|n| n.me().node_key()).collect();
        let stranger = crate::Signer::from_secret(&[9; 32]).origin();
        let node = &mut nodes[0];
        // Node 1 says node 2's number 1 is not for us: relayed.
        node.handle_message(1, keys[1], Message::Skip(vec![(keys[2], 1)]));
        // Node 2 says so of its own number 2: from the origin.
        node.handle_message(2, keys[2], Message::Skip(vec![(keys[2], 2)]));
        // Again, and from node 1 for the same numbers: already seen, nothing counted.
        node.handle_message(3, keys[1], Message::Skip(vec![(keys[2], 1), (keys[2], 2)]));
        // A stranger's Skip is counted in the total but has no per-sender entry.
        node.handle_message(4, stranger, Message::Skip(vec![(keys[3], 1), (keys[3], 2)]));
        assert_eq!(node.stats().skips_in, 4);
        assert_eq!(node.stats().skips_in_relayed, 3);
        assert_eq!(node.skips_taken_from(&keys[1]), 1);
        assert_eq!(node.skips_taken_from(&keys[2]), 0);
        assert_eq!(node.skips_taken_from(&stranger), 0);
        assert!(!node.peers.contains_key(&stranger));
        node.check_invariants_full();
    }

    /// A plain push of `events` (no relay hops, no acknowledgement).
    fn push_of(events: Vec<Arc<Event>>) -> Message {
        Message::Push {
            events,
            relay: Vec::new(),
            ack: 0,
            reroutes: 0,
        }
    }

    /// What `node` has for its application, drained, as lines: `deliver SEQ`, `late SEQ`
    /// and `contradicted O:SEQ by B`, where `O` and `B` are the origin's and the Skip
    /// sender's indexes in `keys` (membership events left out).
    fn app_trace(node: &mut Node<crate::mesh::MemStore>, keys: &[OriginKey]) -> Vec<String> {
        let index = |k: OriginKey| keys.iter().position(|x| *x == k).unwrap();
        let mut got = Vec::new();
        while let Some(e) = node.poll_event() {
            match e {
                AppEvent::Deliver(e) => got.push(format!("deliver {}", e.seq())),
                AppEvent::Late(e) => got.push(format!("late {}", e.seq())),
                AppEvent::SkipContradicted { event, skipped_by } => got.push(format!(
                    "contradicted {}:{} by {}",
                    index(event.origin()),
                    event.seq(),
                    index(skipped_by)
                )),
                _ => {}
            }
        }
        got
    }

    /// The digest `node` sends `to` in an anti-entropy round it starts now: the ranges it
    /// lists for `origin`.
    fn digest_for(
        node: &mut Node<crate::mesh::MemStore>,
        to: OriginKey,
        origin: OriginKey,
    ) -> Option<Vec<(u64, u64)>> {
        node.send_digest(to, None, true);
        drain_to(node, to).into_iter().find_map(|m| match m {
            Message::SyncRequest { digest, .. } => digest
                .into_iter()
                .find(|(o, _)| *o == origin)
                .map(|(_, r)| r.into_iter().collect()),
            _ => None,
        })
    }

    /// A Skip from a node other than the origin moves delivery on, but its number is left
    /// out of anti-entropy digests until a second node confirms it; the same sender saying
    /// it again does not. A Skip from the origin is final at once.
    #[test]
    fn a_skip_on_another_nodes_word_waits_for_a_second_word() {
        let seeds = [1u8, 2, 3, 4];
        let mut nodes = mesh(&seeds, 2, 2, &[20_000u64; 36]);
        let keys: Vec<OriginKey> = nodes.iter().map(|n| n.me().node_key()).collect();
        let node = &mut nodes[0];
        let origin = keys[2];
        node.handle_message(1, origin, Message::Skip(vec![(origin, 1)]));
        node.handle_message(2, keys[1], Message::Skip(vec![(origin, 2), (origin, 3)]));
        assert_eq!(node.skips_unconfirmed_pending(), 2);
        assert_eq!(node.stats().skips_in, 3);
        // Delivery moved past all three; the digest claims only the origin's word.
        assert_eq!(node.seen.get(&origin).unwrap().delivered, 3);
        assert_eq!(digest_for(node, keys[3], origin), Some(vec![(1, 1)]));
        // The same sender again: still waiting.
        node.handle_message(3, keys[1], Message::Skip(vec![(origin, 2)]));
        assert_eq!(node.skips_unconfirmed_pending(), 2);
        // A second node confirms 2, the origin confirms 3.
        node.handle_message(4, keys[3], Message::Skip(vec![(origin, 2)]));
        node.handle_message(5, origin, Message::Skip(vec![(origin, 3)]));
        assert_eq!(node.skips_unconfirmed_pending(), 0);
        assert_eq!(node.stats().skips_confirmed, 2);
        assert_eq!(node.stats().skips_in, 3, "confirmations are not new Skips");
        assert_eq!(digest_for(node, keys[3], origin), Some(vec![(1, 3)]));
        node.check_invariants_full();
    }

    /// A false Skip from a relay, then the event itself (which this node may hold): the
    /// event is stored and delivered late, once, and the contradiction is counted against
    /// the relay.
    #[test]
    fn a_false_skip_is_contradicted_by_the_event_and_the_event_delivered_late() {
        let seeds = [1u8, 2, 3, 4];
        let mut nodes = mesh(&seeds, 2, 2, &[20_000u64; 36]);
        let keys: Vec<OriginKey> = nodes.iter().map(|n| n.me().node_key()).collect();
        let node = &mut nodes[0];
        // Node 2's events 1 and 2; node 1 lies that 1 is not for us, ahead of the pushes.
        let e1 = signed_event(3, 1, "orders.eu", b"one").unwrap();
        let e2 = signed_event(3, 2, "orders.eu", b"two").unwrap();
        assert_eq!(e1.origin(), keys[2]);
        node.handle_message(1, keys[1], Message::Skip(vec![(keys[2], 1)]));
        node.handle_message(2, keys[2], push_of(vec![e2.clone()]));
        node.handle_message(3, keys[2], push_of(vec![e1.clone()]));
        // Once more, from another node: a duplicate now.
        node.handle_message(4, keys[3], push_of(vec![e1.clone()]));
        assert_eq!(
            app_trace(node, &keys),
            ["deliver 2", "contradicted 2:1 by 1", "late 1"]
        );
        assert!(node.store.get(&keys[2], 1).is_some(), "stored");
        assert_eq!(node.stats().skips_contradicted, 1);
        assert_eq!(node.stats().delivered_late, 1);
        assert_eq!(node.skips_contradicted_by(&keys[1]), 1);
        assert_eq!(node.skips_contradicted_by(&keys[2]), 0);
        assert_eq!(node.skips_unconfirmed_pending(), 0);
        node.check_invariants_full();
    }

    /// An event a device signed reaches every member of the region its gateway publishes
    /// in by pushes, wherever the gateway sits in that region's tree for the device's
    /// origin (the members compute the tree without knowing the gateway): the gateway
    /// pushes to its subtree and to the tree's root. Before, the members outside its
    /// subtree got only an IHAVE and the event a GRAFT timeout later.
    #[test]
    fn a_device_event_reaches_the_gateways_whole_region_by_pushes() {
        let seeds = [1u8, 2, 3, 4, 5, 6, 7];
        let mut nodes = mesh(&seeds, 1, 2, &[500u64; 36]);
        let keys: Vec<OriginKey> = nodes.iter().map(|n| n.me().node_key()).collect();
        let grafts_after = nodes[0].config.graft_timeout_us;
        let mut tried = 0;
        for device in 40u8..52 {
            let event = signed_event(device, 1, "orders.eu", b"reading").unwrap();
            let origin = event.origin();
            let root = nodes[0].region_root(&origin, "r0").unwrap();
            let root_i = keys.iter().position(|k| *k == root).unwrap();
            let under_root = nodes[root_i].children(&origin).to_vec();
            // A gateway that is neither the tree's root nor the root's child (so that part
            // of the region is outside its subtree).
            let Some(gateway) =
                (0..nodes.len()).find(|&i| i != root_i && !under_root.contains(&keys[i]))
            else {
                continue;
            };
            tried += 1;
            let now = 1_000_000 * u64::from(device);
            nodes[gateway].handle_publish(now, event.clone()).unwrap();
            let seen = pump(&mut nodes, now, now + grafts_after / 2);
            for (j, s) in seen.iter().enumerate().filter(|(j, _)| *j != gateway) {
                assert!(
                    s.pushes.iter().any(|(id, _)| *id == event.id()),
                    "device {device}: node {j} got no push from gateway {gateway} (root {root:?}): {s:?}"
                );
            }
        }
        assert!(tried > 0, "no device put its gateway mid-tree");
    }

    /// A Skip waiting for confirmation survives a restart with the store: the restarted
    /// node still leaves its number out of digests, and the event, when it comes,
    /// contradicts it and is delivered late, as before the restart. Without the store's
    /// record the rebuilt seen-set (up to the delivery cursor) would hold the number as
    /// seen for good.
    #[test]
    fn a_waiting_skip_survives_a_restart_with_the_store() {
        let seeds = [1u8, 2, 3, 4];
        let mut nodes = mesh(&seeds, 2, 2, &[20_000u64; 36]);
        let keys: Vec<OriginKey> = nodes.iter().map(|n| n.me().node_key()).collect();
        let node = nodes.swap_remove(0);
        let (me, config) = (node.me().clone(), node.config.clone());
        let mut node = node;
        let e1 = signed_event(3, 1, "orders.eu", b"one").unwrap();
        let e2 = signed_event(3, 2, "orders.eu", b"two").unwrap();
        node.handle_message(1, keys[1], Message::Skip(vec![(keys[2], 1)]));
        node.handle_message(2, keys[2], push_of(vec![e2.clone()]));
        while node.poll_event().is_some() {}
        assert_eq!(node.store().delivered(&keys[2]), Some(2));
        assert_eq!(node.store().waiting_skips(), [(keys[2], 1, keys[1])]);
        // Restart on the same store, later.
        let t = 100_000_000;
        let mut node = Node::new(me.clone(), config.clone(), 9, node.into_store(), t);
        assert_eq!(node.skips_unconfirmed_pending(), 1);
        assert_eq!(
            digest_for(&mut node, keys[3], keys[2]),
            Some(vec![(2, 2)]),
            "the waiting number is asked for again"
        );
        node.check_invariants_full();
        // Its confirmation time started again at the restart: not final 120 s after the
        // Skip, only 120 s after the restart.
        let later = SKIP_CONFIRM_US + 1;
        node.handle_timeout(later);
        node.expire_unconfirmed();
        assert_eq!(node.skips_unconfirmed_pending(), 1);
        node.handle_message(later + 1, keys[3], push_of(vec![e1.clone()]));
        assert_eq!(
            app_trace(&mut node, &keys),
            ["contradicted 2:1 by 1", "late 1"]
        );
        assert!(node.store().waiting_skips().is_empty(), "no longer waiting");
        node.check_invariants_full();
        // A record whose number the rebuilt seen-set lacks (above the delivery cursor,
        // with nothing stored there) is dropped: anti-entropy asks for the number anyway.
        let mut store = node.into_store();
        store.put_waiting_skip(&keys[2], 7, &keys[1]);
        let node = Node::new(me, config, 10, store, later + 2);
        assert_eq!(node.skips_unconfirmed_pending(), 0);
        assert!(node.store().waiting_skips().is_empty());
        assert_eq!(node.stats().skips_dropped_at_restart, 1, "and counted");
    }

    /// An IHAVE from a third node for a number taken on another node's word fetches the
    /// event (a GRAFT when the timer fires), which then contradicts the Skip; the Skip's
    /// own sender announcing it fetches nothing.
    #[test]
    fn an_announcement_of_a_skipped_number_fetches_the_event() {
        let seeds = [1u8, 2, 3, 4];
        let mut nodes = mesh(&seeds, 2, 2, &[20_000u64; 36]);
        let keys: Vec<OriginKey> = nodes.iter().map(|n| n.me().node_key()).collect();
        let node = &mut nodes[0];
        let e1 = signed_event(3, 1, "orders.eu", b"one").unwrap();
        node.handle_message(1, keys[1], Message::Skip(vec![(keys[2], 1)]));
        let refs = vec![EventRef::of(&e1)];
        node.handle_message(2, keys[1], Message::IHave(refs.clone()));
        assert!(
            node.missing.is_empty(),
            "the liar's own announcement fetches nothing"
        );
        node.handle_message(3, keys[3], Message::IHave(refs));
        assert!(node.missing.contains_key(&e1.id()));
        while node.poll_transmit().is_some() {}
        node.handle_timeout(3 + node.config.graft_timeout_us);
        let grafts: Vec<Message> = drain_to(node, keys[3])
            .into_iter()
            .filter(|m| matches!(m, Message::Graft(_)))
            .collect();
        assert_eq!(grafts.len(), 1, "{grafts:?}");
        // The answer contradicts the Skip.
        let push = push_of(vec![e1]);
        node.handle_message(4 + node.config.graft_timeout_us, keys[3], push);
        assert_eq!(node.stats().skips_contradicted, 1);
        assert!(node.missing.is_empty());
        node.check_invariants_full();
    }

    /// Skips on another node's word are bounded per sender (a further one is left untaken,
    /// another sender's still counts) and digests leave out only the lowest
    /// [`DIGEST_HOLES_MAX`] of an origin. One that no one confirms or contradicts is final
    /// after [`SKIP_CONFIRM_US`] only once the origin is known to have reached its number:
    /// a lie about numbers not yet published keeps waiting, and the event, when it comes,
    /// contradicts it.
    #[test]
    fn unconfirmed_skips_are_bounded_and_expire_only_below_what_the_origin_reached() {
        let seeds = [1u8, 2, 3, 4];
        let mut nodes = mesh(&seeds, 2, 2, &[20_000u64; 36]);
        let keys: Vec<OriginKey> = nodes.iter().map(|n| n.me().node_key()).collect();
        let node = &mut nodes[0];
        let origin = keys[2];
        let n = UNCONFIRMED_PER_SENDER_MAX as u64;
        for chunk in (1..=n + 10).collect::<Vec<_>>().chunks(100) {
            node.handle_message(
                1,
                keys[1],
                Message::Skip(chunk.iter().map(|&q| (origin, q)).collect()),
            );
        }
        assert_eq!(node.skips_unconfirmed_pending(), UNCONFIRMED_PER_SENDER_MAX);
        assert_eq!(node.stats().skips_deferred, 10);
        assert_eq!(node.seen.get(&origin).unwrap().delivered, n);
        let lowest = DIGEST_HOLES_MAX as u64;
        assert_eq!(
            digest_for(node, keys[3], origin),
            Some(vec![(lowest + 1, n)])
        );
        // Another sender's word still counts.
        node.handle_message(2, keys[3], Message::Skip(vec![(origin, n + 1)]));
        assert_eq!(
            node.skips_unconfirmed_pending(),
            UNCONFIRMED_PER_SENDER_MAX + 1
        );
        // Past the window, nothing expires: the origin is not known to have reached any of
        // these numbers.
        node.handle_timeout(SKIP_CONFIRM_US + 10);
        assert_eq!(
            digest_for(node, keys[3], origin),
            Some(vec![(lowest + 1, n + 1)])
        );
        assert_eq!(node.stats().skips_unconfirmed, 0);
        // Event 1 comes: the lie is contradicted, the event delivered late.
        let e1 = signed_event(3, 1, "orders.eu", b"one").unwrap();
        let push = push_of(vec![e1]);
        node.handle_message(SKIP_CONFIRM_US + 20, origin, push);
        assert_eq!(node.stats().skips_contradicted, 1);
        assert_eq!(node.stats().delivered_late, 1);
        // The origin's own Skip for n + 5 shows it reached that far: the waiting numbers
        // below it are final at the next round, and the digest claims them.
        node.handle_message(
            SKIP_CONFIRM_US + 30,
            origin,
            Message::Skip(vec![(origin, n + 5)]),
        );
        assert_eq!(
            digest_for(node, keys[3], origin),
            Some(vec![(1, n + 1), (n + 5, n + 5)])
        );
        assert_eq!(node.skips_unconfirmed_pending(), 0);
        assert_eq!(node.stats().skips_unconfirmed, n);
        node.check_invariants_full();
    }

    /// For the hostile-input test: events of two origins are refused to the node's region
    /// (r0) when their sequence number is 0 mod 3 and transit-only there when it is 1 mod
    /// 3; everything else is clear.
    struct MixedResidency([OriginKey; 2]);

    impl ReplicationFilter for MixedResidency {
        fn hop(&self, event: &EventData, peer: &MemberInfo) -> FilterHop {
            if !self.0.contains(&event.origin()) || peer.region.as_str() != "r0" {
                return FilterHop::Clear;
            }
            match event.seq() % 3 {
                0 => FilterHop::Refuse,
                1 => FilterHop::Transit,
                _ => FilterHop::Clear,
            }
        }
    }

    fn hostile_seq() -> impl Strategy<Value = u64> {
        prop_oneof![4 => 1u64..8, 1 => Just(0u64), 1 => Just(u64::MAX), 1 => any::<u64>()]
    }

    fn hostile_refs() -> impl Strategy<Value = Vec<(u8, u64, u8)>> {
        proptest::collection::vec((0u8..5, hostile_seq(), 0u8..3), 0..6)
    }

    fn hostile() -> impl Strategy<Value = Hostile> {
        prop_oneof![
            4 => (
                hostile_refs(),
                proptest::collection::vec((0u8..4, proptest::option::of(0u8..5)), 0..4),
                prop_oneof![Just(0u64), any::<u64>()],
                any::<u8>(),
            )
                .prop_map(|(events, relay, ack, reroutes)| Hostile::Push {
                    events,
                    relay,
                    ack,
                    reroutes,
                }),
            2 => (
                hostile_refs(),
                proptest::option::of(0u8..5),
                any::<u64>(),
                proptest::option::of(any::<[u64; 2]>()),
            )
                .prop_map(|(events, resume, held, unsettled)| Hostile::SyncResponse {
                    events,
                    resume,
                    held,
                    unsettled,
                }),
            2 => proptest::collection::vec((0u8..5, hostile_seq()), 0..6).prop_map(Hostile::Skip),
            2 => hostile_refs().prop_map(Hostile::IHave),
            2 => hostile_refs().prop_map(Hostile::Graft),
            2 => (
                proptest::collection::vec(
                    (0u8..5, proptest::collection::vec((hostile_seq(), hostile_seq()), 0..3)),
                    0..5,
                ),
                proptest::option::of(0u8..5),
                proptest::option::of(any::<([u64; 2], u32, u64)>()),
            )
                .prop_map(|(digest, from_origin, settled)| Hostile::SyncRequest {
                    digest,
                    from_origin,
                    settled,
                }),
            1 => any::<u64>().prop_map(Hostile::PushAck),
            1 => any::<u64>().prop_map(Hostile::Probe),
            1 => (any::<u64>(), proptest::num::f32::ANY).prop_map(|(n, c)| Hostile::ProbeAck(n, c)),
            1 => proptest::collection::vec((0u8..5, any::<u64>()), 0..4).prop_map(Hostile::LinkDigest),
            1 => proptest::collection::vec(0u8..5, 0..4).prop_map(Hostile::LinkPull),
            1 => proptest::collection::vec(any::<u8>(), 0..64).prop_map(Hostile::Swim),
            3 => (1u64..3_000_000).prop_map(Hostile::Tick),
            2 => Just(Hostile::Publish),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// A node fed any sequence of messages by a member or a stranger never panics, keeps
        /// its invariants after every step (every table at the end), delivers each
        /// `(origin, seq)` to the application at most once, and in per-origin order, even
        /// when an origin equivocates or a peer replays the node's own events to it; with a
        /// residency filter, it never delivers or stores an event it may not hold.
        #[test]
        fn a_node_survives_any_message_sequence_from_a_peer(
            steps in proptest::collection::vec(hostile(), 1..60),
            stranger in any::<bool>(),
            residency in any::<bool>(),
        ) {
            // Seeds 1-4 are the mesh (node 0 under test, in r0; 1 and 2 in r1 and r0...);
            // seed 9 is an origin nobody knows.
            let seeds = [1u8, 2, 3, 4];
            let mut nodes = mesh(&seeds, 2, 2, &[20_000u64; 36]);
            let mut node = nodes.swap_remove(0);
            // Room for every event the steps can bring (a full store refuses a publish).
            node.store = crate::mesh::MemStore::new(4_096);
            let pool = [1u8, 2, 3, 4, 9];
            // Each origin's key, derived once (a key derivation per message field was most
            // of the test's time).
            let keys = pool.map(|seed| crate::Signer::from_secret(&[seed; 32]).origin());
            let key_of = |i: u8| keys[usize::from(i % 5)];
            let from = if stranger { key_of(4) } else { key_of(1) };
            if residency {
                node.set_filter(Box::new(MixedResidency([key_of(2), key_of(3)])));
            }
            let regions = ["r0", "r1", "r9", ""];
            let mut now: Micros = 1_000;
            let mut own_published = 0u64;
            let mut delivered: BTreeMap<OriginKey, u64> = BTreeMap::new();
            let mut seen: BTreeSet<(OriginKey, u64)> = BTreeSet::new();
            let mut late = 0u64;
            let mut contradicted: Vec<(OriginKey, u64)> = Vec::new();
            // Events of the node's own origin come only from what it published: a peer cannot
            // sign as the node, only replay it.
            let events_of = |refs: &[(u8, u64, u8)], own: u64| -> Vec<Arc<Event>> {
                refs.iter()
                    .filter(|(o, seq, _)| *o != 0 || (1..=own).contains(seq))
                    .filter_map(|(o, seq, v)| variant_event(pool[usize::from(*o)], *seq, *v))
                    .collect()
            };
            let ref_of = |(o, seq, v): &(u8, u64, u8)| -> EventRef {
                match variant_event(pool[usize::from(*o)], *seq, *v) {
                    Some(e) => EventRef::of(&e),
                    None => EventRef { origin: key_of(*o), seq: *seq, id: EventId([*v; 32]) },
                }
            };
            for step in steps {
                now += 1_000;
                let msg = match step {
                    Hostile::Tick(dt) => {
                        now += dt;
                        if node.poll_timeout().is_some_and(|t| t <= now) {
                            node.handle_timeout(now);
                        }
                        None
                    }
                    Hostile::Publish => {
                        own_published += 1;
                        let event = variant_event(1, own_published, 0).unwrap();
                        let published = node.handle_publish(now, event);
                        prop_assert!(published.is_ok(), "publish refused: {:?}", published);
                        None
                    }
                    Hostile::Push { events, relay, ack, reroutes } => Some(Message::Push {
                        events: events_of(&events, own_published),
                        relay: relay
                            .iter()
                            .map(|(r, parent)| RelayHop {
                                region: regions[usize::from(*r)].into(),
                                parent: *parent,
                            })
                            .collect(),
                        ack,
                        reroutes,
                    }),
                    Hostile::SyncResponse { events, resume, held, unsettled } => {
                        Some(Message::SyncResponse {
                            events: events_of(&events, own_published),
                            resume: resume.map(key_of),
                            held,
                            unsettled,
                        })
                    }
                    Hostile::Skip(list) => Some(Message::Skip(
                        list.iter().map(|(o, seq)| (key_of(*o), *seq)).collect(),
                    )),
                    Hostile::IHave(refs) => Some(Message::IHave(refs.iter().map(ref_of).collect())),
                    Hostile::Graft(refs) => Some(Message::Graft(refs.iter().map(ref_of).collect())),
                    Hostile::SyncRequest { digest, from_origin, settled } => {
                        Some(Message::SyncRequest {
                            digest: digest
                                .into_iter()
                                .map(|(o, ranges)| (key_of(o), ranges.into_iter().collect()))
                                .collect(),
                            from_origin: from_origin.map(key_of),
                            settled: settled.map(|(key, count, hash)| crate::mesh::message::Settled { key, count, hash }),
                        })
                    }
                    Hostile::PushAck(id) => Some(Message::PushAck(id)),
                    Hostile::Probe(nonce) => Some(Message::Probe {
                        nonce,
                        coord: weft_routing::Coordinate::origin(),
                    }),
                    Hostile::ProbeAck(nonce, x) => {
                        let mut coord = weft_routing::Coordinate::origin();
                        coord.vec[0] = x;
                        coord.height = x;
                        Some(Message::ProbeAck { nonce, coord })
                    }
                    Hostile::LinkDigest(list) => Some(Message::LinkDigest(
                        list.iter().map(|(o, v)| (key_of(*o), *v)).collect(),
                    )),
                    Hostile::LinkPull(list) => {
                        Some(Message::LinkPull(list.iter().map(|o| key_of(*o)).collect()))
                    }
                    Hostile::Swim(bytes) => Some(Message::Swim(bytes)),
                };
                if let Some(msg) = msg {
                    node.handle_message(now, from, msg);
                }
                while node.poll_transmit().is_some() {}
                while let Some(e) = node.poll_event() {
                    match e {
                        AppEvent::Deliver(event) => {
                            let (origin, seq) = (event.origin(), event.seq());
                            prop_assert_eq!(node.own_hop(&event), FilterHop::Clear, "delivered {:?}", event);
                            prop_assert!(seen.insert((origin, seq)), "({origin:?}, {seq}) delivered twice");
                            let last = delivered.insert(origin, seq).unwrap_or(0);
                            prop_assert!(seq > last, "{origin:?}: {seq} delivered after {last}");
                        }
                        // Out of order, and only right after a contradicted Skip for it.
                        AppEvent::Late(event) => {
                            let (origin, seq) = (event.origin(), event.seq());
                            prop_assert_eq!(node.own_hop(&event), FilterHop::Clear, "delivered {:?}", event);
                            prop_assert!(seen.insert((origin, seq)), "({origin:?}, {seq}) delivered twice");
                            prop_assert_eq!(contradicted.last(), Some(&(origin, seq)));
                            late += 1;
                        }
                        AppEvent::SkipContradicted { event, skipped_by } => {
                            prop_assert_ne!(skipped_by, event.origin());
                            contradicted.push((event.origin(), event.seq()));
                        }
                        _ => {}
                    }
                }
                node.check_invariants();
            }
            node.check_invariants_full();
            prop_assert_eq!(node.stats().delivered_late, late);
            prop_assert_eq!(node.stats().skips_contradicted, contradicted.len() as u64);
            if residency {
                // Neither delivered, nor stored, nor kept for relaying: every event of the
                // two restricted origins the steps can have made.
                for (origin, seq) in &seen {
                    prop_assert!(
                        !(*origin == key_of(2) || *origin == key_of(3)) || seq % 3 == 2,
                        "delivered ({origin:?}, {seq}), which it may not hold"
                    );
                }
                for o in [2usize, 3] {
                    for seq in (1..8).chain([u64::MAX]).filter(|seq| seq % 3 != 2) {
                        for v in 0..3 {
                            if let Some(e) = variant_event(pool[o], seq, v) {
                                prop_assert!(!node.store().contains(&e.id()), "stored {:?}", e);
                                prop_assert!(!node.relay_cache.contains_key(&e.id()), "cached {:?}", e);
                            }
                        }
                    }
                }
            }
            // The node's own events are delivered to its application, once each, in order.
            prop_assert_eq!(
                delivered.get(&key_of(0)).copied().unwrap_or(0),
                own_published,
                "own events delivered"
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// With consistent views, the computed trees reach every node exactly once: the
        /// publisher's sends plus every receiver's children and relay hops cover the mesh
        /// with no duplicate and no gap, whatever the origin, the region layout, the arity
        /// and the inter-region latencies (which decide where relays are used).
        #[test]
        fn computed_trees_cover_every_node_exactly_once(
            seeds in proptest::collection::btree_set(1u8..=250, 1..40),
            regions in 1usize..6,
            arity in 1usize..9,
            origin_pick in any::<prop::sample::Index>(),
            rtts in proptest::collection::vec(1_000u64..300_000, 36),
        ) {
            let seeds: Vec<u8> = seeds.into_iter().collect();
            let mut nodes = mesh(&seeds, regions, arity, &rtts);
            let by_key: BTreeMap<OriginKey, usize> =
                nodes.iter().enumerate().map(|(i, n)| (n.me().node_key(), i)).collect();
            let origin = origin_pick.index(nodes.len());
            let event = event_of(seeds[origin]);
            let mut received = vec![0u32; nodes.len()];
            received[origin] = 1;
            let open = nodes[origin].filter.unrestricted(&event);
            let mut frontier: Vec<(usize, Vec<RelayHop>)> = nodes[origin]
                .targets(&event, true, &[], 0, None, open)
                .into_iter()
                .map(|(k, hops, _, _)| (by_key[&k], hops))
                .collect();
            // Bounded: every node forwards at most once (duplicates stop the walk).
            while let Some((i, hops)) = frontier.pop() {
                received[i] += 1;
                if received[i] > 1 {
                    continue;
                }
                let open = nodes[i].filter.unrestricted(&event);
                let next = nodes[i].targets(&event, false, &hops, 0, None, open);
                frontier.extend(next.into_iter().map(|(k, h, _, _)| (by_key[&k], h)));
            }
            prop_assert!(received.iter().all(|r| *r == 1), "coverage {:?}", received);
        }
    }
}
