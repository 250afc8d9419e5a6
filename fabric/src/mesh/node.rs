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
//!
//! # Layout
//!
//! This file holds the state ([`Node`], its configuration, statistics and limits), the
//! inputs and outputs, and the helpers every part uses (`send`, `schedule`). The methods of
//! each protocol sit in a child module, one `impl Node` each, sharing the node's private
//! state: `membership` (SWIM's changes applied to the view, catching up after a join),
//! `tree` (where an event goes: per-origin trees, relay plans, the replication filter),
//! `dissemination` (accepting, ordered delivery, eager push, IHAVE, GRAFT),
//! `anti_entropy` (digests, partner choice, answers), `skips` (numbers a node will never
//! get, and Skips awaiting confirmation), `links` (RTT samples, acknowledgements and
//! failover, probes, link-state gossip) and `invariants`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use foca::{Foca, NoCustomBroadcast, OwnedNotification};
use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};

use crate::envelope::{Event, EventData, EventId, OriginKey};
use crate::mesh::member::{MemberInfo, MemberMap, SwimCodec, SwimId};
use crate::mesh::message::{EventRef, Message};
use crate::mesh::ranges::SeqRanges;
use crate::mesh::route::{self, LinkRecord, RegionRoute, RelayHop, Router};
use crate::mesh::seen::SeenSet;
use crate::mesh::store::{Inserted, Store, StoreError};
use crate::mesh::timers::{TimerKey, TimerQueue};
use crate::stream::{StreamName, StreamPattern};
use rustc_hash::{FxHashMap, FxHashSet};

mod anti_entropy;
mod dissemination;
mod invariants;
mod links;
mod membership;
mod skips;
mod tree;

pub use super::seen::{SYNC_FRESH_US, SYNC_SETTLED_US};
pub use super::timers::Micros;

/// Reference RTT for an anti-entropy answer's batch: a requester this far away or nearer
/// gets `sync_batch_len_max` events per answer, a farther one proportionally more.
pub const SYNC_BATCH_RTT_REF_US: Micros = 40_000;
/// Most an answer's batch grows for a far requester (times `sync_batch_len_max`; an
/// answer is still cut once it passes [`BATCH_BYTES_MAX`], whatever the count).
pub const SYNC_BATCH_RTT_FACTOR_MAX: u64 = 8;

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
/// first. As many as the largest answer (`sync_batch_len_max` times
/// [`SYNC_BATCH_RTT_FACTOR_MAX`] at the defaults): such an answer is a catch-up of old
/// events, whose tree pushes are long past, and it pushes out those of earlier answers. A
/// forgotten one whose push still comes is not passed down the tree from here: the
/// children below get it later, from their lazy peers' announcements or anti-entropy.
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
/// How long numbers an origin said it no longer holds ([`Message::Lost`]) wait for another
/// holder's copy before they are taken as seen, as the origin's own Skip would be: 8
/// anti-entropy rounds at the WAN default sync interval, half of them with a random member
/// of another region. While they wait, per-origin delivery waits too, so an origin that
/// alone lost its store (its events held elsewhere) costs its peers no order.
pub const LOST_WAIT_US: Micros = 16_000_000;
/// Most origins whose [`Message::Lost`] numbers wait at once (a later one is taken when the
/// origin says it again, at the next anti-entropy round that asks it); also the most
/// origins whose numbers taken as lost are kept open to a late copy ([`LOST_OPEN_US`]).
pub const LOST_ORIGINS_MAX: usize = 4_096;
/// How long numbers taken as lost ([`LOST_WAIT_US`] after their origin's word) stay open to
/// a holder's copy: anti-entropy digests leave them out (as they leave out Skips waiting
/// for a second word), so a holder that was cut off through the wait (a partition, a
/// region down for minutes) sends its copy when it is back, and the event is stored and
/// delivered late ([`AppEvent::Recovered`]). After this the numbers are final, and a copy
/// arriving later is a duplicate. 300 anti-entropy rounds at the WAN default interval.
/// The store keeps the open numbers ([`Store::set_lost_open`]); a restart reloads those its
/// rebuilt seen-set holds and starts their window again.
pub const LOST_OPEN_US: Micros = 600_000_000;
/// Members a node asks for its own events at its start
/// ([`MeshConfig::recover_own_numbers`]), not counting the members of its own region asked
/// besides ([`OwnAsk::region`]).
pub const OWN_ASKS_MAX: usize = 3;

/// A member asked for this node's own numbers ([`MeshConfig::recover_own_numbers`]).
#[derive(Debug, Clone, Copy)]
struct OwnAsk {
    /// The member.
    peer: OriginKey,
    /// When it was last asked; `None` once it answered past this node's origin.
    pending: Option<Micros>,
    /// When it was first asked.
    first: Micros,
    /// It was in this node's region when asked (judged then: a member that goes down
    /// later leaves the members map).
    region: bool,
}
/// Highest own number a member's word can make a node restarted without its store number
/// past ([`Message::SyncResponse::your_high`], also at most the member's own count of
/// numbers seen): 2^48, some nine years of a million events a second from one origin, so a
/// lie cannot leave the node too few numbers to publish with. A member's word is not signed
/// by anyone, and a wrong one is not free: the numbers it skips are a hole that peers
/// lacking them take as lost (a whole range at a time) [`LOST_WAIT_US`] after the origin
/// says it does not hold them, the origin's later events waiting behind it there until
/// then (ARCHITECTURE.md, "Trust between nodes").
pub const OWN_HIGH_CLAIM_MAX: u64 = 1 << 48;
/// How long after its start a node asking for its own events ([`OWN_ASKS_MAX`]) takes the
/// answers of fewer members as enough, when it knows of fewer others: membership is still
/// coming in just after a start, and a region whose nodes all restarted without their
/// stores at once met each other first, each answering the other with nothing (found by
/// the simulator: `many-faults` with the modelled node renumbering, 1,836 pairs missed).
pub const OWN_FEW_MEMBERS_WAIT_US: Micros = 1_000_000;
/// While its numbering is not known, how soon a node asks a member again that has not
/// answered its request for its own events (one sent before the connection was up is
/// lost): publishes wait meanwhile, so not a whole anti-entropy interval (2-4 s on a WAN).
pub const OWN_REASK_US: Micros = 300_000;
/// How long after a start a publish through the node waits for its numbering to be known
/// when no member came up to be asked; then it numbers from what it
/// holds (a node that has no members to ask never waits).
pub const OWN_NUMBERS_WAIT_US: Micros = 5_000_000;
/// How long at most such a publish waits once a member was asked (each asked member that
/// goes down unanswered is replaced by another); then it numbers from what the node holds,
/// with a warning: it may reuse numbers a peer holds.
pub const OWN_NUMBERS_ASKED_WAIT_US: Micros = 10_000_000;

/// Whether a publish through a node whose own numbering is not known yet
/// ([`Node::own_numbers`]) still waits for it, `waited` µs after the node's start, with a
/// member asked (`asked`) or not: the rule the node's publishes follow and weft-sim models
/// ([`OWN_NUMBERS_WAIT_US`], [`OWN_NUMBERS_ASKED_WAIT_US`]).
pub fn own_numbers_worth_waiting(waited: Micros, asked: bool) -> bool {
    waited < OWN_NUMBERS_ASKED_WAIT_US && (waited < OWN_NUMBERS_WAIT_US || asked)
}
/// Numbers a node takes per millisecond of wall-clock time in [`own_numbers_floor`].
pub const OWN_FLOOR_PER_MS: u64 = 1_000;

/// The lowest number a node gives its next event when [`Node::own_floor_wanted`] says so
/// (its wait for its own numbering ended without it known over a store that held none of
/// its own events, or a member asked claimed more than it can be believed on), at `wall_ms`
/// (milliseconds since the Unix epoch, at least this node's latest HLC):
/// [`OWN_FLOOR_PER_MS`] numbers per millisecond.
///
/// Numbering past what it holds instead reused every number its peers saw and it lost (an
/// emptied data directory, an older backup, a restart cut off from every member): each new
/// event was dropped where its number was seen, accepted and then lost without a word
/// (found by the simulator's own record of every origin's numbers). An earlier life of the
/// node used a number at or above this floor only if it numbered more than a thousand
/// events a millisecond on average from where its numbering began (1, so since 1970; or an
/// earlier floor, so since that floor's time), or if the wall clock now reads earlier than
/// it did then. The skipped numbers are a hole, taken whole: the node names them lost
/// ([`Message::Lost`]) to each peer whose digest lacks them at their next anti-entropy
/// round, and a peer's delivery of the node's later events waits [`LOST_WAIT_US`] more for
/// them, once. Latency, not loss. The floor
/// stays below 2^53, which JSON readers hold exactly, until the year 2255.
pub fn own_numbers_floor(wall_ms: u64) -> u64 {
    wall_ms.saturating_mul(OWN_FLOOR_PER_MS)
}
/// Most ranges of numbers taken as seen from [`Message::Lost`] words per anti-entropy
/// round (the rest at the next rounds). Each is taken whole, whatever its length, and
/// delivery steps over numbers without a stored event in one step
/// ([`Store::next_stored`]), so the work of a round is bounded by ranges, not numbers.
pub const LOST_RANGES_PER_ROUND_MAX: u64 = 4_096;
/// Numbers without a stored event in a row after which ordered delivery asks the store
/// where the next stored one is ([`Store::next_stored`]) instead of trying each.
pub const NEXT_STORED_AFTER_MISSES: u32 = 4;
/// Most waiting numbers of one origin an anti-entropy digest leaves out (the lowest; the
/// rest wait for later rounds): each is a hole in the origin's ranges, of which a digest
/// holds at most [`crate::mesh::ranges::RANGES_PER_ORIGIN_MAX`].
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
    /// Most events in one anti-entropy response to a requester within
    /// [`SYNC_BATCH_RTT_REF_US`]; a farther one gets proportionally more (at most
    /// [`SYNC_BATCH_RTT_FACTOR_MAX`] times this).
    pub sync_batch_len_max: usize,
    /// Most events in one eager push.
    pub push_batch_len_max: usize,
    /// Most events named by one GRAFT. GRAFTs that come due together for the same announcer
    /// (the events of one IHAVE batch, or a partition's backlog after a heal) go as one
    /// message naming up to this many; 1 sends one GRAFT per event.
    pub graft_batch_len_max: usize,
    /// How often the peer view is refreshed from membership and RTT.
    pub view_refresh_us: Micros,
    /// Stream patterns this node stores and delivers; it relays everything else, but for
    /// its own events, which it stores whatever their stream (and delivers only those
    /// named here): a full store therefore refuses an own publish outside the interest too,
    /// voiding its number, as it does inside it.
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
    /// Whether a node asks the first members it meets ([`OWN_ASKS_MAX`]) for its own numbers
    /// at its start, before it takes its numbering as known ([`Node::own_numbers`]): its
    /// store may be an emptied data directory, or an older backup, under a key whose events
    /// the mesh holds, and numbering past what it holds would reuse numbers peers hold
    /// (they drop such events as duplicates). The node sets it; `false` (the simulator,
    /// whose nodes keep their numbering across a restart): known at once.
    pub recover_own_numbers: bool,
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
        // foca's WAN default derives the suspicion timeout from its own 5 s probe period
        // (`max(1, log10 n) * 6 * 5 s`: 30 s in a mesh of ten nodes or fewer, so a stopped
        // node stayed in every view for about 35 s). Derived from the period used here
        // instead, with the same multiplier: 12 s up to ten nodes, 24 s at 100, 36 s at
        // 1000. A live member learns of a suspicion within a gossip round or two (any
        // message to it carries it: `vendor/foca/WEFT-PATCHES.md`, item 6) and refutes,
        // but the refutation reaches the suspector only through others' gossip copies
        // (docs/sim.md, section 3.6: what the sweeps showed, and what is left open).
        swim.suspect_to_down_after = suspicion_timeout(size, swim.probe_period);
        // So fewer suspicions should start: a failed direct probe asks five members to
        // probe indirectly, not foca's three. Across one cut link, three helpers drawn
        // where the cut's two regions hold half the members could all sit on the cut
        // (link-cut.toml: false verdicts on 2 of 24 seeds with three, none in 60 with
        // five). Failed direct probes are rare (faults, loss): two more requests each.
        swim.num_indirect_probes = std::num::NonZeroUsize::MIN.saturating_add(4);
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
            recover_own_numbers: false,
        }
    }
}

/// How long SWIM holds a member suspect before it declares it down, for a mesh of
/// `cluster_size` nodes probing every `probe_period`: Lifeguard's and foca's rule
/// (`max(1, log10 n)` probe periods times a multiplier, 6 on a WAN), over the period the
/// mesh really probes at.
fn suspicion_timeout(cluster_size: std::num::NonZeroU32, probe_period: Duration) -> Duration {
    const MULTIPLIER: f64 = 6.0;
    let periods = f64::from(cluster_size.get()).log10().max(1.0) * MULTIPLIER;
    // Finite and positive: log10 of a u32 is at most 9.7 and the period is a Duration.
    probe_period.mul_f64(periods)
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
    /// An event delivered out of per-origin order, once: its origin had said it no longer
    /// holds it ([`Message::Lost`]), no holder's copy came within [`LOST_WAIT_US`], and this
    /// node moved past its number; then, within [`LOST_OPEN_US`], a holder that had been
    /// cut off sent it ([`Stats::lost_recovered`]). Not a fault: the copy that survived the
    /// origin's store reached this node after the origin's later events.
    Recovered(Arc<Event>),
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
    /// A peer sent an event under an origin and sequence number this node holds another
    /// event for ([`Stats::equivocations`]): the origin's key signed two events with one
    /// number (two producers sharing a key, such as a cloned device, or an origin that
    /// equivocates). The held event stays; the other is dropped here, and other nodes may
    /// hold it instead, so replicas disagree on that number. Only a node that stores the
    /// stream can compare.
    Equivocation {
        /// The origin whose key signed both.
        origin: OriginKey,
        /// The number.
        seq: u64,
        /// The event this node holds.
        held: crate::EventId,
        /// The event the peer sent.
        other: crate::EventId,
    },
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
    /// Events a peer sent under an origin and number this node holds another event for
    /// ([`AppEvent::Equivocation`]).
    pub equivocations: u64,
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
    /// Entries of link-state digests and pulls beyond [`route::LINK_RECORDS_PER_MESSAGE_MAX`] per
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
    /// Of this node's own numbers, those it told a peer it no longer holds
    /// ([`Message::Lost`]: its store lacks them, below numbers it holds), counted per
    /// message. This and the other `lost_*` counts of numbers saturate: a wall-clock
    /// floor's hole ([`own_numbers_floor`]) is some 1.8e15 numbers.
    pub lost_out: u64,
    /// Numbers origins said they no longer hold that this node lacked, first word only.
    pub lost_in: u64,
    /// Of those, taken as seen (as the origin's Skip is) after [`LOST_WAIT_US`] without a
    /// holder's copy: delivery moves past them. They stay open to a holder's copy for
    /// [`LOST_OPEN_US`] ([`Stats::lost_recovered`]); a copy arriving after that is a
    /// duplicate.
    pub lost_skipped: u64,
    /// Of the numbers taken as lost, those whose event a holder sent within
    /// [`LOST_OPEN_US`]: stored (where this node stores the stream) and delivered late
    /// ([`AppEvent::Recovered`]), or relayed.
    pub lost_recovered: u64,
    /// Numbers taken as lost that were final at once, not kept open to a late copy:
    /// [`LOST_ORIGINS_MAX`] origins' numbers were already open, or the origin's open
    /// numbers were at [`crate::mesh::ranges::RANGES_PER_ORIGIN_MAX`] ranges.
    pub lost_closed_at_once: u64,
    /// Members asked for this node's own numbers after a start over a store without them
    /// ([`MeshConfig::recover_own_numbers`]).
    pub own_asks: u64,
    /// Answers to those asks that named more of this node's own numbers than came back with
    /// them ([`Message::SyncResponse::your_high`]): the numbering went past them.
    pub own_high_claims: u64,
    /// [`Message::Lost`] words not taken: [`LOST_ORIGINS_MAX`] origins already waited (the
    /// origin says it again when next asked).
    pub lost_deferred: u64,
    /// Times ordered delivery stopped because the store could not read an origin's next
    /// event ([`Store::get`] failed) or say where it is ([`Store::next_stored`] failed);
    /// it resumes at the next poll, from before what could not be read.
    pub delivery_store_errors: u64,
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

/// Numbers an origin said it no longer holds ([`Node::on_lost`]), waiting for another
/// holder's copy until [`LOST_WAIT_US`] after `since`.
#[derive(Debug, Clone)]
struct LostWait {
    /// The numbers the origin named (normalized; some may have arrived since).
    ranges: SeqRanges,
    /// When the origin first said so (a later word adds numbers, not time).
    since: Micros,
}

/// What a number an event arrived for had been passed over on ([`Node::accept_late`]).
#[derive(Debug, Clone, Copy)]
enum Passed {
    /// A Skip taken on another node's word, waiting for confirmation.
    Skip(Unconfirmed),
    /// Taken as lost after its origin's word ([`Node::take_lost`]), still open.
    Lost,
}

/// Numbers of one origin taken as lost ([`Node::take_lost`]) and still open to a holder's
/// copy until `until` ([`LOST_OPEN_US`]).
#[derive(Debug, Clone)]
struct LostOpen {
    /// The numbers (normalized, never empty; each taken out when its event comes).
    ranges: SeqRanges,
    /// When they close: [`LOST_OPEN_US`] after the last of them was taken.
    until: Micros,
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
    /// Numbers their origins said they no longer hold ([`Message::Lost`]), waiting for a
    /// holder's copy ([`Node::take_lost`]); at most [`LOST_ORIGINS_MAX`] origins.
    lost: BTreeMap<OriginKey, LostWait>,
    /// Numbers taken as lost ([`Node::take_lost`]) still open to a holder's copy
    /// ([`LOST_OPEN_US`]): digests leave them out; at most [`LOST_ORIGINS_MAX`] origins.
    lost_open: BTreeMap<OriginKey, LostOpen>,
    /// Origins whose `lost_open` entry changed since the store last kept it
    /// ([`Store::set_lost_open`], once a round in [`Node::take_lost`]: a holder's return
    /// brings thousands of copies, each closing one number).
    lost_open_dirty: BTreeSet<OriginKey>,
    /// Whether this node's numbering is known ([`Node::own_numbers`]).
    own_known: bool,
    /// Members asked for this node's own numbers while it was not ([`OWN_ASKS_MAX`], and
    /// members of its own region besides: [`OwnAsk`]; a member that goes down unanswered is
    /// dropped, so another is asked; one that does not answer within a sync interval is
    /// asked again).
    own_asked: Vec<OwnAsk>,
    /// The highest own number a member asked has seen (its answer's
    /// [`Message::SyncResponse::your_high`], at most [`OWN_HIGH_CLAIM_MAX`]): a member that
    /// stores none of this node's streams gives none of its events back, yet dropped
    /// reused numbers as duplicates.
    own_claimed: u64,
    /// Whether the store held any of this node's own events at its start: then one asked
    /// member's answer makes the numbering known ([`Node::own_numbers`]); a store without
    /// any waits for every member asked.
    own_held_at_start: bool,
    /// Whether a member asked claimed more of this node's numbers than it can be believed
    /// on (its answer's `your_high` above its own count of numbers seen, or above
    /// [`OWN_HIGH_CLAIM_MAX`]): numbering past the believed part could fall inside a hole
    /// its peers took as lost (a wall-clock floor taken before), so the producer numbers
    /// past the floor ([`Node::own_floor_wanted`]).
    own_claim_cut: bool,
    /// When this node started ([`OWN_FEW_MEMBERS_WAIT_US`]).
    started_at: Micros,
    relay_cache: FxHashMap<EventId, Arc<Event>>,
    relay_order: VecDeque<EventId>,
    /// This node's own numbers it took as lost itself since its start ([`Node::take_lost`]:
    /// a hole in its own numbers no holder filled). A peer lacking them is told so
    /// ([`Message::Lost`], [`Node::own_lost`]); before, an origin that stores none of its
    /// streams named only the holes of its seen-set, which taking them as lost fills, so a
    /// peer that came back later waited on them for good.
    own_gone: SeqRanges,
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
    /// Origins whose delivery paused (the app queue was full, or the store could not read
    /// or find their next event): resumed at the next poll with the app queue empty.
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
            lost: BTreeMap::new(),
            lost_open: BTreeMap::new(),
            lost_open_dirty: BTreeSet::new(),
            own_known: true,
            own_asked: Vec::new(),
            own_claimed: 0,
            own_held_at_start: false,
            own_claim_cut: false,
            started_at: now,
            relay_cache: FxHashMap::default(),
            repaired: FxHashSet::default(),
            repaired_order: VecDeque::new(),
            relay_order: VecDeque::new(),
            own_gone: SeqRanges::new(),
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
        node.reload_lost_open();
        // Asked at every start, not only over a store without any of its own events: a
        // store restored from an older backup under the same key holds some of them, and
        // numbering past its highest would reuse the numbers the mesh holds since (peers
        // drop those events as duplicates). Members send back what it lacks of its own.
        node.own_known = !node.config.recover_own_numbers;
        let me = node.me.node_key();
        node.own_held_at_start = node.store.ranges(&me).is_some_and(|r| r.range_count() > 0);
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

    /// The events this node relays without storing, held in memory only (its relay
    /// cache, at most [`RELAY_CACHE_LEN_MAX`]): lost with the process.
    pub fn relay_cached(&self) -> impl Iterator<Item = &Arc<Event>> {
        self.relay_cache.values()
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

    /// Keeps another origin's `event` (not stored: outside this node's interest) in the
    /// relay cache, to answer GRAFTs, pushing out the oldest at [`RELAY_CACHE_LEN_MAX`].
    fn relay_keep(&mut self, id: EventId, event: Arc<Event>) {
        if self.relay_order.len() >= RELAY_CACHE_LEN_MAX
            && let Some(old) = self.relay_order.pop_front()
        {
            self.relay_cache.remove(&old);
        }
        self.relay_cache.insert(id, event);
        self.relay_order.push_back(id);
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
    /// matches are relayed but no longer stored (this node's own excepted: it stores its own
    /// events whatever its interest), and none of them is delivered from now on,
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
            Message::Lost(ranges) => self.on_lost(from, ranges),
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
                your_high,
            } => self.on_sync_response(from, events, resume, held, unsettled, your_high),
        }
    }

    /// Time has reached a deadline from [`Node::poll_timeout`].
    pub fn handle_timeout(&mut self, now: Micros) {
        self.advance(now);
        if !self.own_known {
            // Rare: only until a node just started knows its numbering.
            self.ask_own_numbers_more();
        }
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

    /// How many sequence numbers this node has seen, over every origin: events stored or
    /// relayed, and numbers taken as Skips (not for this node) or erased. Anti-entropy
    /// compares partners by it (an answer's `held`): a node that may not hold an event class
    /// (residency) or does not store a stream (interest) has seen those numbers all the
    /// same, so it does not look behind a node that stores them (docs/sim-speed.md,
    /// "Partners compared by what they have seen").
    pub fn seen_count(&self) -> u64 {
        self.seen_count
    }
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

#[cfg(test)]
mod tests;
