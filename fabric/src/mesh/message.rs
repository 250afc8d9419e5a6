//! The messages mesh nodes exchange, and the QUIC channel each one travels on.

use std::sync::Arc;

use weft_routing::Coordinate;

use crate::envelope::{Event, EventId, OriginKey};
use crate::mesh::route::{LinkRecord, RelayHop};

/// Which kind of QUIC channel a message needs (one job per channel, as corrosion does).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    /// Unreliable datagrams: SWIM probes and gossip, IHAVE announcements.
    Datagram,
    /// A unidirectional stream: eager pushes, GRAFT and Skips (there is no PRUNE: the
    /// eager trees are computed, not pruned; see `mesh::node`).
    Uni,
    /// A bidirectional stream: anti-entropy sync and fetches.
    Bi,
}

/// Names one event compactly: its origin, per-origin sequence and id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventRef {
    /// The producer.
    pub origin: OriginKey,
    /// Its per-origin sequence number.
    pub seq: u64,
    /// The event id.
    pub id: EventId,
}

impl EventRef {
    /// The reference of an event.
    pub fn of(event: &Event) -> Self {
        Self {
            origin: event.origin(),
            seq: event.seq(),
            id: event.id(),
        }
    }
}

/// One origin's sequence ranges in a [`Digest`], ascending. Nearly always a single range
/// (`1..=n`), held inline: no allocation per origin.
pub type DigestRanges = smallvec::SmallVec<[(u64, u64); 1]>;

/// Per-origin sequence ranges a node holds: what anti-entropy compares.
pub type Digest = Vec<(OriginKey, DigestRanges)>;

/// The origins an anti-entropy request leaves out of its digest (those whose ranges have
/// not changed for `SYNC_SETTLED_US` at the requester): how many, and the wrapping sum of
/// one hash per origin (SipHash-1-3 under the key (0, 0) of its key, range count and
/// ranges: what the node has seen, joined with what its store holds where that is more).
/// A responder whose own ranges of the other origins give the same count and sum holds
/// nothing of them that the requester lacks; otherwise it answers `unsettled`. A sum can
/// be kept as origins change, so neither side walks every origin for a round (`seen.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settled {
    /// The request's identity, drawn by the requester: an `unsettled` answer names it, so
    /// an answer to an older request asks for nothing.
    pub key: [u64; 2],
    /// How many origins.
    pub count: u32,
    /// The wrapping sum of their hashes.
    pub hash: u64,
}

/// A message between two mesh nodes.
#[derive(Debug, Clone)]
pub enum Message {
    /// SWIM membership traffic, encoded by foca.
    Swim(Vec<u8>),
    /// Eager push of whole events (PlumTree). Inside a region `relay` is empty and `ack`
    /// is 0; across regions the sender names the regions the receiver relays on to (source
    /// routing over the region graph, `route.rs`) and asks for a [`Message::PushAck`].
    Push {
        /// The events.
        events: Vec<Arc<Event>>,
        /// Regions the receiver forwards the events to after its own region's tree.
        relay: Vec<RelayHop>,
        /// Non-zero: answer with `PushAck(ack)` on arrival (the core answers when it
        /// handles the push; the node's transport answers as it decodes it).
        ack: u64,
        /// How many times this push's path was rerouted after a failed link (bounded by
        /// `route::REROUTES_MAX`, so pushes toward an unreachable region cannot circulate).
        reroutes: u8,
    },
    /// "Your push `ack` arrived": the link works (failover detects a dead path by its
    /// absence).
    PushAck(u64),
    /// Link probe: measures RTT to a peer and carries the sender's network coordinate.
    Probe {
        /// Echoed in the answer.
        nonce: u64,
        /// The sender's Vivaldi coordinate.
        coord: Coordinate,
    },
    /// Answer to a [`Message::Probe`].
    ProbeAck {
        /// The probe's nonce.
        nonce: u64,
        /// The answerer's Vivaldi coordinate.
        coord: Coordinate,
    },
    /// Link-state records: nodes' measured link RTTs, coordinates and status, in answer to
    /// a [`Message::LinkPull`], or handed to a member that joined. Shared: a node keeps the
    /// records it sends.
    Links(Vec<Arc<LinkRecord>>),
    /// "These sequence numbers are not for you": events the replication filter (residency)
    /// kept from the receiver, named only by origin and sequence number (no id, stream or
    /// content; the gap in the sequence is visible anyway), so its per-origin delivery and
    /// anti-entropy move past them instead of waiting forever. Reliable, like a push.
    Skip(Vec<(OriginKey, u64)>),
    /// Lazy push: "I have these" (PlumTree IHAVE).
    IHave(Vec<EventRef>),
    /// "Send me these" (PlumTree GRAFT, after an IHAVE whose event did not arrive).
    Graft(Vec<EventRef>),
    /// Anti-entropy: the requester's digest; origins before `from_origin` were already
    /// settled in this round (resumable transfers).
    SyncRequest {
        /// What the requester holds: of every origin it has seen, or, with `settled`, of
        /// those whose ranges changed lately (and those a summary cannot vouch for).
        digest: Digest,
        /// Resume point of a transfer cut short by the batch limit.
        from_origin: Option<OriginKey>,
        /// The origins the digest leaves out, summarised; `None`: it leaves none out.
        settled: Option<Settled>,
    },
    /// Anti-entropy answer: events the requester lacks, at most one batch; `resume` says
    /// where to continue if there are more.
    SyncResponse {
        /// Events the requester did not have.
        events: Vec<Arc<Event>>,
        /// Where the next request should resume, if the batch was full.
        resume: Option<OriginKey>,
        /// How many sequence numbers the responder has seen, over every origin: events
        /// held or relayed and numbers taken as Skips (partner choice, "most missing",
        /// compares it with the requester's own count).
        held: u64,
        /// `Some(key)`: the summary of the request keyed `key` did not match what the
        /// responder holds or has seen of those origins; the request was not answered,
        /// and the requester sends its whole digest.
        unsettled: Option<[u64; 2]>,
        /// The highest of the requester's own sequence numbers the responder has seen
        /// (stored, relayed or taken as skipped), when the request starts at the
        /// requester's own origin and its digest names fewer of them; 0 otherwise. A node
        /// asks members for its own events at its start before it numbers on ([`super::node::MeshConfig::recover_own_numbers`]): a member that stores none
        /// of its streams sends none of them back, yet saw their numbers and will drop
        /// reused ones as duplicates, and so will every node it relays to.
        your_high: u64,
    },
    /// Link-state gossip: node and version of each record a gossip round spreads (news
    /// first, then the rotation through everything held). The receiver pulls the records
    /// it would take ([`Message::LinkPull`]): 40 bytes an entry where a record of a
    /// 1000-node mesh is some 2 KB, and most of a round's records are ones the receiver
    /// holds already.
    LinkDigest(Vec<(OriginKey, u64)>),
    /// "Send me these records": the nodes of a [`Message::LinkDigest`] whose records the
    /// sender would take; answered with [`Message::Links`].
    LinkPull(Vec<OriginKey>),
    /// "I no longer hold these numbers of mine": sent by an origin, about its own numbers
    /// only (ranges, ascending), to a peer whose anti-entropy digest lacks them, when the
    /// origin's store does not hold them either (it restarted without its store, or its
    /// retention dropped them). Unlike the origin's [`Message::Skip`], not final: the peer
    /// waits [`super::node::LOST_WAIT_US`] for another holder's copy (its anti-entropy
    /// rounds in the meantime ask other partners), then takes the numbers still missing as
    /// seen. Without it, when every holder of an origin's old events lost
    /// them, nothing the origin published afterwards was ever delivered: per-origin order
    /// waited for numbers nobody had.
    Lost(Vec<(u64, u64)>),
}

impl Message {
    /// Every kind's name, indexed by [`Message::kind_index`]: the node's metric labels and
    /// the simulator's report fields.
    pub const KINDS: [&'static str; 14] = [
        "swim",
        "push",
        "ihave",
        "graft",
        "sync_request",
        "sync_response",
        "push_ack",
        "probe",
        "probe_ack",
        "links",
        "skip",
        "link_digest",
        "link_pull",
        "lost",
    ];

    /// The message's kind, as an index into [`Message::KINDS`].
    pub fn kind_index(&self) -> usize {
        match self {
            Message::Swim(_) => 0,
            Message::Push { .. } => 1,
            Message::IHave(_) => 2,
            Message::Graft(_) => 3,
            Message::SyncRequest { .. } => 4,
            Message::SyncResponse { .. } => 5,
            Message::PushAck(_) => 6,
            Message::Probe { .. } => 7,
            Message::ProbeAck { .. } => 8,
            Message::Links(_) => 9,
            Message::Skip(_) => 10,
            Message::LinkDigest(_) => 11,
            Message::LinkPull(_) => 12,
            Message::Lost(_) => 13,
        }
    }

    /// The message's kind by name ([`Message::KINDS`]).
    pub fn kind(&self) -> &'static str {
        Self::KINDS[self.kind_index()]
    }

    /// The channel the message travels on.
    pub fn channel(&self) -> Channel {
        match self {
            Message::Swim(_)
            | Message::IHave(_)
            | Message::PushAck(_)
            | Message::Probe { .. }
            | Message::ProbeAck { .. }
            | Message::Links(_)
            | Message::LinkDigest(_)
            | Message::LinkPull(_) => Channel::Datagram,
            // A Skip stands in for the push its receiver may not have: per-origin delivery
            // waits for one as for an event, so it is as reliable as a push. (On datagrams,
            // a lost Skip held back every later event of its origin at the receiver until an
            // anti-entropy round with a node that holds the event; during a partition that
            // took up to a minute: docs/sim.md, section 3.5.)
            Message::Push { .. } | Message::Graft(_) | Message::Skip(_) | Message::Lost(_) => {
                Channel::Uni
            }
            Message::SyncRequest { .. } | Message::SyncResponse { .. } => Channel::Bi,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ordered delivery waits for a Skip as for the event it stands in for: both travel on
    /// the reliable channel, and a Skip never rides a datagram.
    #[test]
    fn a_skip_is_as_reliable_as_the_push_it_stands_in_for() {
        let skip = Message::Skip(vec![(OriginKey([1; 32]), 7)]);
        let push = Message::Push {
            events: Vec::new(),
            relay: Vec::new(),
            ack: 0,
            reroutes: 0,
        };
        assert_eq!(skip.channel(), push.channel());
        assert_ne!(skip.channel(), Channel::Datagram);
    }
}
