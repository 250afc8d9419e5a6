//! The compiled policy: a bundle checked once and turned into lookup tables, and every
//! decision the node, the mesh and the agent ask for (`docs/policy.md` §6).
//!
//! Compilation ([`Policy::compile`]) is the only validation there is: a bundle that
//! compiles is a bundle every node accepts. Evaluation never fails and never allocates on
//! the per-hop path ([`Policy::event_scope`], [`Policy::placement`], [`EventScope::hop`]:
//! residency sets are 64-bit masks, one bit per jurisdiction).

use std::cell::{Cell, RefCell};
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;

use rustc_hash::FxHashMap;
use weft_fabric::mesh::{FilterHop, MemberInfo, ReplicationFilter};
use weft_fabric::{
    EventData, EventId, Jurisdiction, KeyBuildHasher, OriginKey, Payload, Residency,
    SecurityContext, StreamName, StreamPattern,
};

use crate::bundle::*;
use crate::error::BundleError;
use crate::limits::*;
use crate::transform::Transform;

/// A bundle compiled for evaluation. Immutable; a new epoch compiles a new one.
#[derive(Debug)]
pub struct Policy {
    bundle: Bundle,
    jurisdictions: Vec<Jurisdiction>,
    // Names looked up for every event a node handles: FxHash (keys come from the signed
    // bundle, so there is no hash flooding to defend against; SipHash was a third of the
    // cost of working out an event's scope).
    jurisdiction_bits: FxHashMap<String, u8>,
    region_bits: FxHashMap<String, u8>,
    node_bits: HashMap<[u8; 32], u8>,
    principals: HashMap<String, Principal>,
    by_key: HashMap<[u8; 32], String>,
    by_token: HashMap<[u8; 32], String>,
    rules: Vec<Rule>,
    classes: FxHashMap<String, Class>,
    streams: Vec<(StreamPattern, StreamRuleInfo)>,
    /// The distinct `regions` sets of `replication = "regions"` rules, by scope bit
    /// ([`StreamRuleInfo::scope`]).
    scopes: Vec<BTreeSet<String>>,
    transforms: Vec<Transform>,
    principal_limits: HashMap<String, RateLimit>,
    tenant_limits: HashMap<String, RateLimit>,
    devices: HashMap<[u8; 32], Enrollment>,
    device_streams: HashMap<String, Vec<StreamPattern>>,
    /// This compilation's owner id in events' filter memos (`weft_fabric::FilterMemo`):
    /// process-unique, so that no two policies read each other's memo.
    memo_owner: u64,
}

/// The next [`Policy::memo_owner`].
static MEMO_OWNERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

#[derive(Debug)]
struct Principal {
    tenant: Option<String>,
    roles: BTreeSet<String>,
    /// SHA-256 of its HTTP bearer token, when that is its credential.
    token: Option<[u8; 32]>,
}

#[derive(Debug)]
struct Rule {
    label: Arc<str>,
    effect: Effect,
    actions: Vec<Action>,
    streams: Vec<StreamPattern>,
    roles: Vec<String>,
    principals: Vec<String>,
    tenants: Vec<String>,
    classifications: Vec<String>,
    regions: Vec<String>,
}

/// A residency class, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Class {
    /// The residency set stamped into events of the class.
    pub residency: Residency,
    /// Transit mode (`None` for classes allowed anywhere).
    pub transit: Option<TransitMode>,
    /// One bit per jurisdiction; `None` for anywhere.
    mask: Option<u64>,
}

/// What a stream rule says about one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamRuleInfo {
    /// Position of the rule in the bundle's `streams` list.
    pub index: usize,
    /// Classification stamped when the publisher names none.
    pub classification: String,
    /// Replication scope.
    pub replication: ReplicationScope,
    /// Regions, for [`ReplicationScope::Regions`].
    pub regions: BTreeSet<String>,
    /// For [`ReplicationScope::Regions`]: the bit of its region set in every member's
    /// placement (rules naming the same set share one).
    scope: Option<u8>,
    /// Retention time, seconds.
    pub retention_s: Option<u64>,
    /// Retention size, bytes per node.
    pub retention_bytes: Option<u64>,
    /// Conflict strategy for keyed events.
    pub conflict: Option<ConflictStrategy>,
    /// Send priority.
    pub priority: Priority,
}

/// A rate limit and quotas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Sustained events per second.
    pub events_per_s: u64,
    /// Burst, events.
    pub burst: u64,
    /// Events per UTC day.
    pub events_per_day: Option<u64>,
    /// Payload bytes per UTC day.
    pub bytes_per_day: Option<u64>,
}

/// The limits that apply to one publish: the principal's and the tenant's (both must
/// admit the event).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RateLimits {
    /// The principal's own limit.
    pub principal: Option<RateLimit>,
    /// The tenant's limit, shared by all its principals.
    pub tenant: Option<RateLimit>,
}

/// An enrolled device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enrollment {
    /// Its principal name.
    pub principal: String,
    /// Its tenant.
    pub tenant: String,
    /// Stream patterns it may publish to.
    pub streams: Vec<StreamPattern>,
    /// Its jurisdiction.
    pub jurisdiction: Jurisdiction,
    /// Local rules its agent applies (`devices.<name>.rules`).
    pub rules: Vec<weft_fabric::edge::LocalRule>,
}

/// An access question: may `principal` do `action` on `stream`?
#[derive(Debug, Clone, Copy)]
pub struct AccessRequest<'a> {
    /// Principal name.
    pub principal: &'a str,
    /// What it wants to do.
    pub action: Action,
    /// The stream.
    pub stream: &'a StreamName,
    /// The tenant it acts for (the event's tenant, or the tenant whose events it reads).
    pub tenant: &'a str,
    /// The classification involved, when known (publishing a classified event).
    pub classification: Option<&'a str>,
    /// Region of the node serving the request.
    pub region: &'a str,
}

/// Why a decision came out as it did. `Display` is the sentence for audit entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// The principal is not in the bundle.
    UnknownPrincipal,
    /// The principal belongs to another tenant than the request's.
    TenantMismatch {
        /// The principal's tenant.
        tenant: String,
    },
    /// An allow rule matched and no deny rule did.
    AllowedByRule {
        /// The rule's name, or `#index`.
        rule: Arc<str>,
    },
    /// A deny rule matched.
    DeniedByRule {
        /// The rule's name, or `#index`.
        rule: Arc<str>,
    },
    /// No rule allows it (the default).
    NoRuleAllows,
    /// An enrolled device publishing to one of its streams.
    Enrolled,
    /// A device publishing outside the streams it is enrolled for.
    NotEnrolledStream,
    /// The classification is not a class of this bundle.
    UnknownClassification {
        /// The classification.
        classification: String,
    },
    /// No classification given and no stream rule supplies a default.
    NoClassification,
    /// The residency set is not inside the class's jurisdictions.
    ResidencyWiderThanClass {
        /// The classification.
        classification: String,
    },
    /// The stamp is the class's (or a narrower requested) residency.
    Stamped {
        /// The classification.
        classification: String,
    },
    /// The key is granted the jurisdiction and the region lies in it.
    JurisdictionGranted,
    /// The jurisdiction is not in the bundle.
    UnknownJurisdiction,
    /// The key is not granted the jurisdiction.
    KeyNotGranted,
    /// The region is not in the jurisdiction.
    RegionNotInJurisdiction,
    /// A transform's derivative would be stamped with no jurisdiction: its source's own
    /// residency (narrower than its stream's class) and the target class's share none.
    DerivedResidencyDisjoint {
        /// The source event's effective residency.
        source: Residency,
        /// The target class.
        classification: String,
    },
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::UnknownPrincipal => write!(f, "principal is not in the policy"),
            Reason::TenantMismatch { tenant } => {
                write!(f, "principal belongs to tenant `{tenant}`")
            }
            Reason::AllowedByRule { rule } => write!(f, "allowed by access rule {rule}"),
            Reason::DeniedByRule { rule } => write!(f, "denied by access rule {rule}"),
            Reason::NoRuleAllows => write!(f, "no access rule allows it"),
            Reason::Enrolled => write!(f, "device enrolled for the stream"),
            Reason::NotEnrolledStream => write!(f, "device is not enrolled for the stream"),
            Reason::UnknownClassification { classification } => {
                write!(
                    f,
                    "classification `{classification}` is not a residency class"
                )
            }
            Reason::NoClassification => {
                write!(f, "no classification given and no stream rule supplies one")
            }
            Reason::ResidencyWiderThanClass { classification } => write!(
                f,
                "residency set is wider than class `{classification}` allows"
            ),
            Reason::Stamped { classification } => {
                write!(f, "residency of class `{classification}`")
            }
            Reason::JurisdictionGranted => write!(f, "jurisdiction granted to the node key"),
            Reason::UnknownJurisdiction => write!(f, "jurisdiction is not in the policy"),
            Reason::KeyNotGranted => write!(f, "node key is not granted the jurisdiction"),
            Reason::RegionNotInJurisdiction => write!(f, "region is not in the jurisdiction"),
            Reason::DerivedResidencyDisjoint {
                source,
                classification,
            } => write!(
                f,
                "the source's own residency {} and class `{classification}` share no jurisdiction",
                codes(source)
            ),
        }
    }
}

/// A yes/no decision with its reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Whether it is allowed.
    pub allowed: bool,
    /// Why.
    pub reason: Reason,
}

impl Decision {
    fn allow(reason: Reason) -> Decision {
        Decision {
            allowed: true,
            reason,
        }
    }
    fn deny(reason: Reason) -> Decision {
        Decision {
            allowed: false,
            reason,
        }
    }
}

/// What to stamp into a new event's security context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    /// The classification.
    pub classification: String,
    /// The residency set.
    pub residency: Residency,
}

/// What a node may receive of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hop {
    /// The event, to store, deliver and relay.
    Clear,
    /// The sealed event, to relay only: never stored, delivered or opened there.
    SealedTransit,
    /// Nothing about the event (no push, IHAVE or digest naming it).
    Refuse,
}

/// Why a hop decision came out as it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HopReason {
    /// The event has no residency constraint.
    Unrestricted,
    /// The node's granted jurisdiction is in the event's effective residency set.
    InResidency,
    /// Outside the set, but the class allows sealed transit and the payload is sealed.
    SealedTransit,
    /// Outside the set (or no granted jurisdiction) and the class forbids transit.
    OutsideResidency,
    /// Outside the set; the class allows sealed transit but the payload is clear.
    PayloadNotSealed,
    /// The node's region is outside the stream rule's `replication = "regions"` scope (or
    /// its jurisdiction claim does not hold, so its region is not taken on its word).
    OutsideReplicationScope,
}

impl fmt::Display for HopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HopReason::Unrestricted => "event has no residency constraint",
            HopReason::InResidency => "node's jurisdiction is in the residency set",
            HopReason::SealedTransit => "sealed transit allowed by the event's class",
            HopReason::OutsideResidency => "node is outside the residency set; transit forbidden",
            HopReason::PayloadNotSealed => "node is outside the residency set; payload not sealed",
            HopReason::OutsideReplicationScope => {
                "node's region is outside the stream's replication regions"
            }
        })
    }
}

/// A hop decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HopDecision {
    /// What the node may receive.
    pub hop: Hop,
    /// Why.
    pub reason: HopReason,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TransitState {
    Forbidden,
    Sealed,
    SealedButClear,
}

/// An event's residency as the policy sees it, computed once per event: the effective
/// residency set (the signed set narrowed to the class's jurisdictions) as a mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventScope {
    /// `None`: unrestricted.
    clear: Option<u64>,
    transit: TransitState,
    /// The stream rule's replication scope bit (`replication = "regions"`): only members
    /// whose placement has it may hold the event.
    scope: Option<u8>,
}

impl EventScope {
    /// The scope as a filter memo's two words: the clear mask, then whether there is one
    /// (bit 0), the transit state (bits 1-2) and the replication scope bit plus one (bits
    /// 3-10, 0 for none).
    fn to_words(self) -> [u64; 2] {
        let transit = match self.transit {
            TransitState::Forbidden => 0,
            TransitState::Sealed => 1,
            TransitState::SealedButClear => 2,
        };
        let scope = self.scope.map_or(0, |k| u64::from(k) + 1);
        [
            self.clear.unwrap_or(0),
            u64::from(self.clear.is_some()) | transit << 1 | scope << 3,
        ]
    }

    /// The scope [`EventScope::to_words`] encoded.
    fn from_words([mask, flags]: [u64; 2]) -> Self {
        let transit = match (flags >> 1) & 3 {
            1 => TransitState::Sealed,
            2 => TransitState::SealedButClear,
            _ => TransitState::Forbidden,
        };
        let scope = match (flags >> 3) & 0xff {
            0 => None,
            k => Some((k - 1) as u8),
        };
        Self {
            clear: (flags & 1 == 1).then_some(mask),
            transit,
            scope,
        }
    }

    /// Whether the event is clear for every node whatever its placement.
    fn unrestricted(&self) -> bool {
        self.clear.is_none() && self.scope.is_none()
    }
}

/// A node's place as the policy sees it, computed once per member record: its granted
/// jurisdiction, if its claim holds, and the replication scopes (`replication =
/// "regions"` region sets) its region is in (none unless the claim holds: a region is
/// taken on a member's word only when its key is granted the region's jurisdiction).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    bit: Option<u8>,
    scopes: u64,
}

impl Placement {
    /// Whether the node's jurisdiction claim holds.
    pub fn is_granted(&self) -> bool {
        self.bit.is_some()
    }
}

impl EventScope {
    /// What a node at `placement` may receive of the event. A few bit operations.
    pub fn hop(&self, placement: Placement) -> HopDecision {
        let in_scope = self
            .scope
            .is_none_or(|k| placement.scopes & (1u64 << k) != 0);
        let Some(clear) = self.clear else {
            return if in_scope {
                HopDecision {
                    hop: Hop::Clear,
                    reason: HopReason::Unrestricted,
                }
            } else {
                // An unrestricted class has no transit mode: nothing to carry sealed.
                HopDecision {
                    hop: Hop::Refuse,
                    reason: HopReason::OutsideReplicationScope,
                }
            };
        };
        let in_residency = placement.bit.is_some_and(|b| clear & (1u64 << b) != 0);
        if in_residency && in_scope {
            return HopDecision {
                hop: Hop::Clear,
                reason: HopReason::InResidency,
            };
        }
        match self.transit {
            // Out of the stream's scope but inside the residency set: carried sealed if the
            // class lets it be, never held.
            TransitState::Sealed if in_residency => HopDecision {
                hop: Hop::SealedTransit,
                reason: HopReason::OutsideReplicationScope,
            },
            _ if in_residency => HopDecision {
                hop: Hop::Refuse,
                reason: HopReason::OutsideReplicationScope,
            },
            TransitState::Sealed => HopDecision {
                hop: Hop::SealedTransit,
                reason: HopReason::SealedTransit,
            },
            TransitState::SealedButClear => HopDecision {
                hop: Hop::Refuse,
                reason: HopReason::PayloadNotSealed,
            },
            TransitState::Forbidden => HopDecision {
                hop: Hop::Refuse,
                reason: HopReason::OutsideResidency,
            },
        }
    }
}

/// Most member placements a [`PolicyFilter`] remembers; past it the cache starts over (a
/// mesh has at most `NODES_MAX` granted nodes, and a node meets each member once).
pub const PLACEMENT_CACHE_LEN_MAX: usize = NODES_MAX;

/// The mesh's [`ReplicationFilter`] backed by a compiled policy: [`Hop::Clear`] becomes
/// [`FilterHop::Clear`] (store, deliver, disseminate), [`Hop::SealedTransit`] becomes
/// [`FilterHop::Transit`] (carried along a relay path only, never stored, delivered or
/// announced there), [`Hop::Refuse`] becomes [`FilterHop::Refuse`] (nothing naming the
/// event). The receiving node applies the same filter to itself.
///
/// The mesh asks about one event for many peers in a row, and about the same few hundred
/// members again and again: the filter keeps each event's scope in the event's
/// [`FilterMemo`](weft_fabric::FilterMemo) (shared by every filter over the same compiled
/// policy; a filter over another policy remembers the last event's scope instead) and each
/// member's placement (checked against the member record's region and jurisdiction, so a
/// changed record is placed again), so that a hop is a memo read and a few bit operations.
#[derive(Clone)]
pub struct PolicyFilter {
    policy: Arc<Policy>,
    placements: RefCell<
        HashMap<OriginKey, (smol_str::SmolStr, smol_str::SmolStr, Placement), KeyBuildHasher>,
    >,
    last: Cell<Option<(EventId, EventScope)>>,
}

impl PolicyFilter {
    /// A filter enforcing `policy`.
    pub fn new(policy: Arc<Policy>) -> Self {
        Self {
            policy,
            placements: RefCell::new(HashMap::default()),
            last: Cell::new(None),
        }
    }

    /// The policy it enforces.
    pub fn policy(&self) -> &Arc<Policy> {
        &self.policy
    }

    /// The event's scope: from its memo when this policy set it, else the last event's if
    /// it is the same one, else evaluated (and memoized, unless another policy got there
    /// first).
    fn scope(&self, event: &EventData) -> EventScope {
        let owner = self.policy.memo_owner;
        let memo = event.filter_memo();
        if let Some(words) = memo.get(owner) {
            return EventScope::from_words(words);
        }
        let id = event.id();
        if let Some((last, scope)) = self.last.get()
            && last == id
        {
            return scope;
        }
        let scope = self.policy.event_scope(event);
        memo.set(owner, scope.to_words());
        self.last.set(Some((id, scope)));
        scope
    }

    fn placement(&self, member: &MemberInfo) -> Placement {
        let key = OriginKey(member.key);
        let mut cache = self.placements.borrow_mut();
        if let Some((region, jurisdiction, placement)) = cache.get(&key)
            && *region == member.region
            && *jurisdiction == member.jurisdiction
        {
            return *placement;
        }
        if cache.len() >= PLACEMENT_CACHE_LEN_MAX {
            cache.clear();
        }
        let placement = self.policy.placement(member);
        cache.insert(
            key,
            (
                member.region.clone(),
                member.jurisdiction.clone(),
                placement,
            ),
        );
        placement
    }
}

impl fmt::Debug for PolicyFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicyFilter")
            .field("epoch", &self.policy.epoch())
            .field("placements", &self.placements.borrow().len())
            .finish_non_exhaustive()
    }
}

impl Hop {
    /// The mesh's view of the hop.
    pub fn filter_hop(self) -> FilterHop {
        match self {
            Hop::Clear => FilterHop::Clear,
            Hop::SealedTransit => FilterHop::Transit,
            Hop::Refuse => FilterHop::Refuse,
        }
    }
}

impl ReplicationFilter for PolicyFilter {
    fn hop(&self, event: &EventData, peer: &MemberInfo) -> FilterHop {
        let scope = self.scope(event);
        if scope.unrestricted() {
            // Clear for every node, whatever its placement (no lookup).
            return FilterHop::Clear;
        }
        let hop = scope.hop(self.placement(peer)).hop;
        debug_assert_eq!(hop, self.policy.hop(event, peer).hop, "cache out of step");
        hop.filter_hop()
    }

    fn unrestricted(&self, event: &EventData) -> bool {
        // No clear set and no replication scope: `EventScope::hop` answers Clear whatever
        // the placement.
        self.scope(event).unrestricted()
    }
}

// ------------------------------------------------------------------ evaluation

impl Policy {
    /// The bundle this was compiled from.
    pub fn bundle(&self) -> &Bundle {
        &self.bundle
    }

    /// The policy epoch.
    pub fn epoch(&self) -> u64 {
        self.bundle.epoch
    }

    /// This compilation's process-unique id (never 0). Two policies of one epoch differ
    /// here: a node that replaced its bundle by another of the same epoch (the tie rule of
    /// an operator's mistake) must notice the change wherever it watches for a new policy,
    /// which the epoch alone would not show.
    pub fn compilation(&self) -> u64 {
        self.memo_owner
    }

    /// The principal holding the HTTP token whose SHA-256 is `token_sha256`.
    pub fn principal_for_token(&self, token_sha256: &[u8; 32]) -> Option<&str> {
        self.by_token.get(token_sha256).map(String::as_str)
    }

    /// The tenant principal `name` acts for (`None`: fabric-wide, or no such principal).
    pub fn principal_tenant(&self, name: &str) -> Option<&str> {
        self.principals.get(name)?.tenant.as_deref()
    }

    /// The SHA-256 of the HTTP bearer token this bundle gives principal `name`, if its
    /// credential is a token.
    pub fn principal_token(&self, name: &str) -> Option<&[u8; 32]> {
        self.principals.get(name)?.token.as_ref()
    }

    /// The principal holding a node or device key.
    pub fn principal_for_key(&self, key: &[u8; 32]) -> Option<&str> {
        self.by_key.get(key).map(String::as_str)
    }

    /// May the principal publish to, subscribe to or read the stream? Deny rules win over
    /// allow rules; nothing matching denies. A principal bound to a tenant acts for that
    /// tenant only; an enrolled device publishes to its enrolled streams only (and
    /// enrollment allows those unless a deny rule matches).
    pub fn authorize(&self, req: &AccessRequest<'_>) -> Decision {
        let Some(principal) = self.principals.get(req.principal) else {
            return Decision::deny(Reason::UnknownPrincipal);
        };
        if let Some(tenant) = &principal.tenant
            && tenant != req.tenant
        {
            return Decision::deny(Reason::TenantMismatch {
                tenant: tenant.clone(),
            });
        }
        let device = self.device_streams.get(req.principal);
        if req.action == Action::Publish
            && let Some(patterns) = device
            && !patterns.iter().any(|p| p.matches(req.stream))
        {
            return Decision::deny(Reason::NotEnrolledStream);
        }
        let mut allowed_by = None;
        for rule in &self.rules {
            if !rule.matches(req, principal) {
                continue;
            }
            match rule.effect {
                Effect::Deny => {
                    return Decision::deny(Reason::DeniedByRule {
                        rule: rule.label.clone(),
                    });
                }
                Effect::Allow => {
                    allowed_by.get_or_insert_with(|| rule.label.clone());
                }
            }
        }
        match allowed_by {
            Some(rule) => Decision::allow(Reason::AllowedByRule { rule }),
            None if req.action == Action::Publish && device.is_some() => {
                Decision::allow(Reason::Enrolled)
            }
            None => Decision::deny(Reason::NoRuleAllows),
        }
    }

    /// The rule for a stream: the first stream rule whose pattern matches.
    pub fn stream_rule(&self, stream: &StreamName) -> Option<&StreamRuleInfo> {
        self.streams
            .iter()
            .find(|(p, _)| p.matches(stream))
            .map(|(_, info)| info)
    }

    /// Whether events of `stream` replicate to a node in `region` by the stream's scope
    /// alone (residency narrows it further; [`Policy::may_hold`] and the replication filter
    /// apply both). Streams without a rule, and system streams, replicate to all.
    pub fn replicates_to(&self, stream: &StreamName, region: &str) -> bool {
        stream.is_system()
            || self.stream_rule(stream).is_none_or(|r| {
                r.replication != ReplicationScope::Regions || r.regions.contains(region)
            })
    }

    /// A residency class by classification.
    pub fn class(&self, classification: &str) -> Option<&Class> {
        self.classes.get(classification)
    }

    /// What to stamp on a new event on `stream`: the publisher's `classification`, or the
    /// stream rule's default; the class's residency set, or `requested` if it is narrower
    /// (a requested set wider than the class is refused).
    pub fn stamp(
        &self,
        stream: &StreamName,
        classification: Option<&str>,
        requested: &Residency,
    ) -> Result<Stamp, Reason> {
        let classification = match classification {
            Some(c) => c,
            None => match self.stream_rule(stream) {
                Some(rule) => rule.classification.as_str(),
                None => return Err(Reason::NoClassification),
            },
        };
        let Some(class) = self.classes.get(classification) else {
            return Err(Reason::UnknownClassification {
                classification: classification.into(),
            });
        };
        let residency = match requested {
            Residency::Unrestricted => class.residency.clone(),
            Residency::Only(_) => {
                if !within(requested, &class.residency) {
                    return Err(Reason::ResidencyWiderThanClass {
                        classification: classification.into(),
                    });
                }
                requested.clone()
            }
        };
        Ok(Stamp {
            classification: classification.into(),
            residency,
        })
    }

    /// The residency a transform's derivatives of `source` keep from it: the source's
    /// effective residency when it is narrower than the class its stream's rule names (the
    /// event's own class on a stream without a rule); `None` when it is not.
    ///
    /// A transform is the policy's word that data of the source stream's class, so
    /// transformed, may go where the target class allows. A producer who stamped its event
    /// more narrowly than that (a pre-signed event, a device's event, a class narrower than
    /// the stream's) asked for more than the policy's default, and the event's derivatives
    /// keep the request ([`Policy::derived_stamp`]). An aggregate sums only sources with
    /// the same answer into one summary.
    pub fn derived_restriction(&self, source: &EventData) -> Option<Residency> {
        let security = source.security();
        let class_of = |c: &str| self.classes.get(c).map(|c| &c.residency);
        let own = class_of(&security.classification);
        // What the transform's author reasoned about: the stream rule's class (its
        // default), or the event's own class on a stream without a rule.
        let reference = self
            .stream_rule(source.stream())
            .and_then(|r| class_of(&r.classification))
            .or(own);
        let effective = [Some(&security.residency), own, reference]
            .into_iter()
            .flatten()
            .fold(Residency::Unrestricted, |acc, r| intersect(&acc, r));
        let narrower = match reference {
            Some(reference) => !within(reference, &effective),
            None => effective != Residency::Unrestricted,
        };
        narrower.then_some(effective)
    }

    /// What a transform's derivative on `target` is stamped with: the stamp of
    /// `classification` on `target` ([`Policy::stamp`]), narrowed to `restriction`, what
    /// its sources keep ([`Policy::derived_restriction`]): it goes only where both the
    /// target class and the sources' own sets allow. When they share no jurisdiction
    /// nothing may be derived ([`Reason::DerivedResidencyDisjoint`]).
    pub fn derived_stamp(
        &self,
        target: &StreamName,
        classification: &str,
        restriction: Option<&Residency>,
    ) -> Result<Stamp, Reason> {
        let mut stamp = self.stamp(target, Some(classification), &Residency::Unrestricted)?;
        if let Some(restriction) = restriction {
            stamp.residency = intersect(&stamp.residency, restriction);
            if stamp.residency == Residency::Only(BTreeSet::new()) {
                return Err(Reason::DerivedResidencyDisjoint {
                    source: restriction.clone(),
                    classification: classification.into(),
                });
            }
        }
        Ok(stamp)
    }

    /// Checks a security context stamped elsewhere (a pre-signed event, a device's event):
    /// the classification must be a class and the residency set inside it.
    pub fn check_stamped(&self, security: &SecurityContext) -> Decision {
        let Some(class) = self.classes.get(&security.classification) else {
            return Decision::deny(Reason::UnknownClassification {
                classification: security.classification.clone(),
            });
        };
        let reason = Reason::Stamped {
            classification: security.classification.clone(),
        };
        if within(&security.residency, &class.residency) {
            Decision::allow(reason)
        } else {
            Decision::deny(Reason::ResidencyWiderThanClass {
                classification: security.classification.clone(),
            })
        }
    }

    /// Checks the security context of an event on `stream` signed elsewhere (a pre-signed
    /// event, a device's event): [`Policy::check_stamped`], and the classification must
    /// be at least as restrictive as the stream rule's (its residency set within the
    /// default class's): an event cannot escape its stream's residency by naming a laxer
    /// class.
    pub fn check_presigned(&self, stream: &StreamName, security: &SecurityContext) -> Decision {
        let decision = self.check_stamped(security);
        if !decision.allowed {
            return decision;
        }
        if let Some(rule) = self.stream_rule(stream)
            && rule.classification != security.classification
        {
            let narrower = match (
                self.classes.get(&security.classification),
                self.classes.get(&rule.classification),
            ) {
                // Narrower in where it is clear, and no laxer in transit: a class that may
                // transit sealed is not narrower than one whose events never leave their
                // set (their headers would travel where the stream's class forbids).
                (Some(own), Some(default)) => {
                    within(&own.residency, &default.residency)
                        && !(default.transit == Some(crate::bundle::TransitMode::Forbidden)
                            && own.transit == Some(crate::bundle::TransitMode::Sealed))
                }
                _ => false,
            };
            if !narrower {
                return Decision::deny(Reason::ResidencyWiderThanClass {
                    classification: rule.classification.clone(),
                });
            }
        }
        decision
    }

    /// May the node with `key` in `region` claim `jurisdiction`? Both the key and the
    /// region must be granted to it.
    pub fn claim(&self, key: &[u8; 32], jurisdiction: &str, region: &str) -> Decision {
        match self.claim_bit(key, jurisdiction, region) {
            Ok(_) => Decision::allow(Reason::JurisdictionGranted),
            Err(reason) => Decision::deny(reason),
        }
    }

    fn claim_bit(&self, key: &[u8; 32], jurisdiction: &str, region: &str) -> Result<u8, Reason> {
        let Some(&bit) = self.jurisdiction_bits.get(jurisdiction) else {
            return Err(Reason::UnknownJurisdiction);
        };
        if self.node_bits.get(key) != Some(&bit) {
            return Err(Reason::KeyNotGranted);
        }
        if self.region_bits.get(region) != Some(&bit) {
            return Err(Reason::RegionNotInJurisdiction);
        }
        Ok(bit)
    }

    /// A member's placement: its claimed jurisdiction if the claim holds, none otherwise
    /// (such a node receives only unrestricted events and sealed transit).
    pub fn placement(&self, member: &MemberInfo) -> Placement {
        let bit = self
            .claim_bit(&member.key, &member.jurisdiction, &member.region)
            .ok();
        let scopes = match bit {
            Some(_) => self
                .scopes
                .iter()
                .enumerate()
                .filter(|(_, set)| set.contains(member.region.as_str()))
                .fold(0u64, |m, (k, _)| m | (1u64 << k)),
            None => 0,
        };
        Placement { bit, scopes }
    }

    /// An event's effective residency: its signed set narrowed to its class's
    /// jurisdictions (an event cannot widen its class), and to those of the class its
    /// stream's rule names now, when that is another restricted class (an epoch that
    /// reclassifies a stream more narrowly holds the events stamped before it to the new
    /// class too; one that widens it does not widen them: their signed stamp stands); plus
    /// whether sealed transit applies (only if every class that restricts the event allows
    /// it). An event whose classification this epoch does not know keeps its signed set,
    /// with transit forbidden. System streams (`_weft.*`) follow their own stamp only.
    pub fn event_scope(&self, event: &EventData) -> EventScope {
        let security = event.security();
        let sealed = matches!(event.payload(), Payload::Sealed(_));
        self.scope_of(
            event.stream(),
            &security.classification,
            &security.residency,
            sealed,
        )
    }

    /// Whether `node` may hold (store and deliver, in clear) an event on `stream` of
    /// `classification` stamped with `residency` ([`Policy::event_scope`]): what a node asks
    /// before accepting a publish, since it stores what it accepts, and before serving what
    /// it holds.
    pub fn may_hold(
        &self,
        node: &MemberInfo,
        stream: &StreamName,
        classification: &str,
        residency: &Residency,
    ) -> bool {
        self.hold_decision(node, stream, classification, residency)
            .hop
            == Hop::Clear
    }

    /// [`Policy::may_hold`] for a node already placed ([`Policy::placement`]): a caller that
    /// asks for many events on one node (a read serving a page) places it once.
    pub fn may_hold_at(
        &self,
        placement: Placement,
        stream: &StreamName,
        classification: &str,
        residency: &Residency,
    ) -> bool {
        self.scope_of(stream, classification, residency, false)
            .hop(placement)
            .hop
            == Hop::Clear
    }

    /// [`Policy::may_hold`] with its reason: why a node may not hold such an event
    /// (outside the residency set, or outside the stream's replication regions), for the
    /// error that refuses a publish there.
    pub fn hold_decision(
        &self,
        node: &MemberInfo,
        stream: &StreamName,
        classification: &str,
        residency: &Residency,
    ) -> HopDecision {
        self.scope_of(stream, classification, residency, false)
            .hop(self.placement(node))
    }

    /// The regions whose nodes may hold an event on `stream` of `classification` stamped
    /// with `residency` (in clear): its effective residency's jurisdictions' regions,
    /// narrowed to the stream rule's replication regions; in order. `None` when neither
    /// restricts it. What `ack=regions:N` can at most be confirmed in.
    pub fn regions_that_may_hold(
        &self,
        stream: &StreamName,
        classification: &str,
        residency: &Residency,
    ) -> Option<BTreeSet<&str>> {
        let scope = self.scope_of(stream, classification, residency, false);
        let in_scope = |r: &str| {
            scope
                .scope
                .is_none_or(|k| self.scopes[usize::from(k)].contains(r))
        };
        match scope.clear {
            None => Some(
                self.scopes[usize::from(scope.scope?)]
                    .iter()
                    .map(String::as_str)
                    .collect(),
            ),
            Some(mask) => Some(
                self.region_bits
                    .iter()
                    .filter(|(r, b)| mask & (1u64 << **b) != 0 && in_scope(r))
                    .map(|(r, _)| r.as_str())
                    .collect(),
            ),
        }
    }

    /// Whether an enrolled device may receive (in clear) an event of `classification`
    /// stamped with `residency`, as its node's downlink asks of each command: the device's
    /// enrolled jurisdiction against the event's effective residency. The enrollment is this
    /// policy's own word, so the jurisdiction needs no claim; sealed transit does not apply
    /// (a device is an end, never a relay).
    pub fn device_may_hold(
        &self,
        device: &Enrollment,
        stream: &StreamName,
        classification: &str,
        residency: &Residency,
    ) -> bool {
        let placement = Placement {
            bit: self
                .jurisdiction_bits
                .get(device.jurisdiction.as_str())
                .copied(),
            // A stream's replication scope places copies on nodes; a device is an end
            // served by a node, which must itself be in the scope to hold the command.
            scopes: u64::MAX,
        };
        self.scope_of(stream, classification, residency, false)
            .hop(placement)
            .hop
            == Hop::Clear
    }

    fn scope_of(
        &self,
        stream: &StreamName,
        classification: &str,
        residency: &Residency,
        sealed: bool,
    ) -> EventScope {
        let class = self.classes.get(classification);
        // System streams follow their own stamp only.
        let rule = if stream.is_system() {
            None
        } else {
            self.stream_rule(stream)
        };
        // The class the stream's rule names now, when it is another one that restricts.
        let reclassified = rule
            .filter(|r| r.classification != classification)
            .and_then(|r| self.classes.get(&r.classification))
            .filter(|c| c.mask.is_some());
        let signed = match residency {
            Residency::Unrestricted => None,
            Residency::Only(set) => Some(set.iter().fold(0u64, |mask, j| {
                self.jurisdiction_bits
                    .get(j.as_str())
                    .map_or(mask, |b| mask | (1u64 << b))
            })),
        };
        let clear = [
            signed,
            class.and_then(|c| c.mask),
            reclassified.and_then(|c| c.mask),
        ]
        .into_iter()
        .flatten()
        .reduce(|a, b| a & b);
        let sealed_ok = |c: Option<&Class>| c.and_then(|c| c.transit) == Some(TransitMode::Sealed);
        let transit = if sealed_ok(class) && reclassified.is_none_or(|r| sealed_ok(Some(r))) {
            if sealed {
                TransitState::Sealed
            } else {
                TransitState::SealedButClear
            }
        } else {
            TransitState::Forbidden
        };
        EventScope {
            clear,
            transit,
            scope: rule.and_then(|r| r.scope),
        }
    }

    /// What `node` may receive of `event` (the replication filter's predicate). The mesh
    /// should cache [`Policy::placement`] per member and [`Policy::event_scope`] per event
    /// and call [`EventScope::hop`]; this convenience computes both.
    pub fn hop(&self, event: &EventData, node: &MemberInfo) -> HopDecision {
        self.event_scope(event).hop(self.placement(node))
    }

    /// The enrollment of a device key.
    pub fn enrollment(&self, device_key: &[u8; 32]) -> Option<&Enrollment> {
        self.devices.get(device_key)
    }

    /// The rate limits for a publish by `principal` for `tenant`.
    pub fn rate_limits(&self, principal: &str, tenant: &str) -> RateLimits {
        RateLimits {
            principal: self.principal_limits.get(principal).copied(),
            tenant: self.tenant_limits.get(tenant).copied(),
        }
    }

    /// The egress transforms whose source pattern matches `stream`. None for a system
    /// stream (`_weft.*`: policy bundles, erase requests), whatever the pattern (`>`).
    pub fn transforms_for<'a>(
        &'a self,
        stream: &'a StreamName,
    ) -> impl Iterator<Item = &'a Transform> + 'a {
        let system = stream.is_system();
        self.transforms
            .iter()
            .filter(move |t| !system && t.source().matches(stream))
    }

    /// Every egress transform, in the bundle's order.
    pub fn transforms(&self) -> impl Iterator<Item = &Transform> {
        self.transforms.iter()
    }

    /// A transform by name.
    pub fn transform(&self, name: &str) -> Option<&Transform> {
        self.transforms.iter().find(|t| t.name() == name)
    }
}

/// The jurisdictions both `a` and `b` allow (`Only` of an empty set when they share none).
fn intersect(a: &Residency, b: &Residency) -> Residency {
    match (a, b) {
        (Residency::Unrestricted, x) | (x, Residency::Unrestricted) => x.clone(),
        (Residency::Only(a), Residency::Only(b)) => {
            Residency::Only(a.intersection(b).cloned().collect())
        }
    }
}

/// A residency set as its jurisdiction codes, for messages.
fn codes(r: &Residency) -> String {
    match r {
        Residency::Unrestricted => "(anywhere)".into(),
        Residency::Only(set) => {
            let v: Vec<&str> = set.iter().map(|j| j.as_str()).collect();
            format!("[{}]", v.join(", "))
        }
    }
}

/// A residency set in words for messages: its jurisdiction codes (`EU`, `EU, US`), or
/// `anywhere` when unrestricted (its `Debug` form is Rust syntax).
pub fn residency_text(r: &Residency) -> String {
    match r {
        Residency::Unrestricted => "anywhere".into(),
        Residency::Only(set) => set
            .iter()
            .map(|j| j.as_str())
            .collect::<Vec<_>>()
            .join(", "),
    }
}

/// Whether residency `a` is inside `b`.
fn within(a: &Residency, b: &Residency) -> bool {
    match (a, b) {
        (_, Residency::Unrestricted) => true,
        (Residency::Unrestricted, Residency::Only(_)) => false,
        (Residency::Only(a), Residency::Only(b)) => a.is_subset(b),
    }
}

impl Rule {
    fn matches(&self, req: &AccessRequest<'_>, principal: &Principal) -> bool {
        self.actions.contains(&req.action)
            && self.streams.iter().any(|p| p.matches(req.stream))
            && (self.principals.iter().any(|p| p == req.principal)
                || self.roles.iter().any(|r| principal.roles.contains(r)))
            && (self.tenants.is_empty() || self.tenants.iter().any(|t| t == req.tenant))
            && (self.classifications.is_empty()
                || req
                    .classification
                    .is_some_and(|c| self.classifications.iter().any(|x| x == c)))
            && (self.regions.is_empty() || self.regions.iter().any(|r| r == req.region))
    }
}

// ------------------------------------------------------------------ compilation

/// Field-path helpers for errors.
fn count(field: &str, len: usize, limit: &'static str, max: usize) -> Result<(), BundleError> {
    if len > max {
        return Err(BundleError::TooMany {
            field: field.into(),
            len,
            limit,
            max,
        });
    }
    Ok(())
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> BundleError {
    BundleError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

fn unknown(field: impl Into<String>, kind: &'static str, name: &str) -> BundleError {
    BundleError::Unknown {
        field: field.into(),
        kind,
        name: name.into(),
    }
}

/// Names of regions, tenants, roles, principals, classes, transforms and rules: 1 to
/// `max` bytes, an ASCII letter or digit, then letters, digits, `.`, `_`, `:`, `-`.
fn name(field: &str, s: &str, limit: &'static str, max: usize) -> Result<(), BundleError> {
    if s.len() > max {
        return Err(BundleError::TooLong {
            field: field.into(),
            len: s.len(),
            limit,
            max,
        });
    }
    let ok = s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
    if !ok {
        return Err(invalid(
            field,
            format!(
                "`{s}` is not a name (an ASCII letter or digit, then letters, digits, `.`, `_`, `:`, `-`)"
            ),
        ));
    }
    Ok(())
}

fn plain_name(field: &str, s: &str) -> Result<(), BundleError> {
    name(field, s, "NAME_LEN_MAX", NAME_LEN_MAX)
}

fn text(
    field: &str,
    s: &Option<String>,
    limit: &'static str,
    max: usize,
) -> Result<(), BundleError> {
    if let Some(s) = s
        && s.len() > max
    {
        return Err(BundleError::TooLong {
            field: field.into(),
            len: s.len(),
            limit,
            max,
        });
    }
    Ok(())
}

fn description(field: &str, s: &Option<String>) -> Result<(), BundleError> {
    text(field, s, "DESCRIPTION_LEN_MAX", DESCRIPTION_LEN_MAX)
}

/// A 32-byte value written as exactly 64 lowercase hex digits (one spelling per value, so
/// the canonical CBOR is unique).
pub(crate) fn key_hex(field: &str, s: &str) -> Result<[u8; 32], BundleError> {
    let bytes = s.as_bytes();
    if bytes.len() != 64 || !bytes.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(invalid(field, "must be exactly 64 lowercase hex digits"));
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks(2).enumerate() {
        let digit = |c: u8| if c <= b'9' { c - b'0' } else { c - b'a' + 10 };
        out[i] = digit(pair[0]) << 4 | digit(pair[1]);
    }
    Ok(out)
}

fn pattern(field: &str, s: &str) -> Result<StreamPattern, BundleError> {
    StreamPattern::new(s).map_err(|e| invalid(field, e.to_string()))
}

fn no_duplicates(field: &str, items: &[String]) -> Result<(), BundleError> {
    let mut seen = BTreeSet::new();
    for item in items {
        if !seen.insert(item) {
            return Err(invalid(field, format!("`{item}` is listed twice")));
        }
    }
    Ok(())
}

/// A list of names in a rule, what they name, and how to tell a declared one.
type RefCheck<'a> = (
    &'a str,
    &'a Vec<String>,
    &'static str,
    &'a dyn Fn(&str) -> bool,
);

fn rule_list<T>(field: &str, items: &[T]) -> Result<(), BundleError> {
    count(field, items.len(), "RULE_LIST_LEN_MAX", RULE_LIST_LEN_MAX)
}

impl Policy {
    /// Checks every limit, grammar and reference of `bundle` and builds the evaluator.
    /// Errors name the field path and the limit; nothing is partially applied.
    pub fn compile(bundle: &Bundle) -> Result<Policy, BundleError> {
        let b = bundle;
        if b.format != BUNDLE_FORMAT {
            return Err(invalid(
                "format",
                format!(
                    "format {} is not supported (this node reads {BUNDLE_FORMAT})",
                    b.format
                ),
            ));
        }
        if b.epoch == 0 {
            return Err(invalid("epoch", "epochs start at 1"));
        }
        description("description", &b.description)?;

        // Jurisdictions, regions, node keys.
        count(
            "jurisdictions",
            b.jurisdictions.len(),
            "JURISDICTIONS_MAX",
            JURISDICTIONS_MAX,
        )?;
        let mut jurisdictions = Vec::new();
        let mut jurisdiction_bits = FxHashMap::default();
        let mut region_bits = FxHashMap::default();
        let mut node_bits = HashMap::new();
        for (i, (code, spec)) in b.jurisdictions.iter().enumerate() {
            let field = format!("jurisdictions.{code}");
            let j = Jurisdiction::new(code.clone()).map_err(|e| invalid(&field, e.to_string()))?;
            let bit = u8::try_from(i).unwrap_or(u8::MAX);
            jurisdictions.push(j);
            jurisdiction_bits.insert(code.clone(), bit);
            for (k, region) in spec.regions.iter().enumerate() {
                let f = format!("{field}.regions[{k}]");
                plain_name(&f, region)?;
                if region_bits.insert(region.clone(), bit).is_some() {
                    return Err(invalid(f, format!("region `{region}` is granted twice")));
                }
                count(&f, region_bits.len(), "REGIONS_MAX", REGIONS_MAX)?;
            }
            for (k, node) in spec.nodes.iter().enumerate() {
                let f = format!("{field}.nodes[{k}]");
                let key = key_hex(&f, node)?;
                if node_bits.insert(key, bit).is_some() {
                    return Err(invalid(f, "node key is granted twice"));
                }
                count(&f, node_bits.len(), "NODES_MAX", NODES_MAX)?;
            }
        }

        // Tenants and roles.
        count("tenants", b.tenants.len(), "TENANTS_MAX", TENANTS_MAX)?;
        for (t, spec) in &b.tenants {
            plain_name(&format!("tenants.{t}"), t)?;
            description(&format!("tenants.{t}.description"), &spec.description)?;
        }
        count("roles", b.roles.len(), "ROLES_MAX", ROLES_MAX)?;
        for (r, spec) in &b.roles {
            plain_name(&format!("roles.{r}"), r)?;
            description(&format!("roles.{r}.description"), &spec.description)?;
        }

        // Principals.
        count(
            "principals",
            b.principals.len(),
            "PRINCIPALS_MAX",
            PRINCIPALS_MAX,
        )?;
        let mut principals = HashMap::new();
        let mut by_key = HashMap::new();
        let mut by_token = HashMap::new();
        for (p, spec) in &b.principals {
            let field = format!("principals.{p}");
            plain_name(&field, p)?;
            if let Some(t) = &spec.tenant
                && !b.tenants.contains_key(t)
            {
                return Err(unknown(format!("{field}.tenant"), "tenant", t));
            }
            count(
                &format!("{field}.roles"),
                spec.roles.len(),
                "PRINCIPAL_ROLES_MAX",
                PRINCIPAL_ROLES_MAX,
            )?;
            no_duplicates(&format!("{field}.roles"), &spec.roles)?;
            for (k, r) in spec.roles.iter().enumerate() {
                if !b.roles.contains_key(r) {
                    return Err(unknown(format!("{field}.roles[{k}]"), "role", r));
                }
            }
            let credentials = [
                ("node_key", &spec.node_key),
                ("device_key", &spec.device_key),
                ("token_sha256", &spec.token_sha256),
            ];
            let set: Vec<_> = credentials.iter().filter(|(_, v)| v.is_some()).collect();
            let [(cred, Some(value))] = set.as_slice() else {
                return Err(invalid(
                    field,
                    "set exactly one of node_key, device_key, token_sha256",
                ));
            };
            let f = format!("{field}.{cred}");
            let bytes = key_hex(&f, value)?;
            let table = if *cred == "token_sha256" {
                &mut by_token
            } else {
                &mut by_key
            };
            if table.insert(bytes, p.clone()).is_some() {
                return Err(invalid(
                    f,
                    "credential is already held by another principal",
                ));
            }
            principals.insert(
                p.clone(),
                Principal {
                    tenant: spec.tenant.clone(),
                    roles: spec.roles.iter().cloned().collect(),
                    token: (*cred == "token_sha256").then_some(bytes),
                },
            );
        }

        // Residency classes.
        count("classes", b.classes.len(), "CLASSES_MAX", CLASSES_MAX)?;
        let mut classes = FxHashMap::default();
        for (c, spec) in &b.classes {
            let field = format!("classes.{c}");
            name(
                &field,
                c,
                "CLASSIFICATION_LEN_MAX",
                weft_fabric::limits::CLASSIFICATION_LEN_MAX,
            )?;
            description(&format!("{field}.description"), &spec.description)?;
            let class = match (spec.anywhere, spec.jurisdictions.is_empty(), spec.transit) {
                (true, true, None) => Class {
                    residency: Residency::Unrestricted,
                    transit: None,
                    mask: None,
                },
                (true, _, _) => {
                    return Err(invalid(
                        field,
                        "`anywhere = true` excludes `jurisdictions` and `transit`",
                    ));
                }
                (false, true, _) => {
                    return Err(invalid(
                        field,
                        "set `jurisdictions` (with `transit`) or `anywhere = true`",
                    ));
                }
                (false, false, None) => {
                    return Err(invalid(
                        format!("{field}.transit"),
                        "required with `jurisdictions`: \"forbidden\" or \"sealed\"",
                    ));
                }
                (false, false, Some(transit)) => {
                    let f = format!("{field}.jurisdictions");
                    count(
                        &f,
                        spec.jurisdictions.len(),
                        "RESIDENCY_LEN_MAX",
                        weft_fabric::limits::RESIDENCY_LEN_MAX,
                    )?;
                    no_duplicates(&f, &spec.jurisdictions)?;
                    let mut mask = 0u64;
                    for (k, j) in spec.jurisdictions.iter().enumerate() {
                        let Some(bit) = jurisdiction_bits.get(j) else {
                            return Err(unknown(format!("{f}[{k}]"), "jurisdiction", j));
                        };
                        mask |= 1u64 << bit;
                    }
                    let residency = Residency::only(spec.jurisdictions.iter().cloned())
                        .map_err(|e| invalid(&f, e.to_string()))?;
                    Class {
                        residency,
                        transit: Some(transit),
                        mask: Some(mask),
                    }
                }
            };
            classes.insert(c.clone(), class);
        }

        // Access rules.
        count(
            "access",
            b.access.len(),
            "ACCESS_RULES_MAX",
            ACCESS_RULES_MAX,
        )?;
        let mut rules = Vec::with_capacity(b.access.len());
        for (i, rule) in b.access.iter().enumerate() {
            let field = format!("access[{i}]");
            if let Some(n) = &rule.name {
                plain_name(&format!("{field}.name"), n)?;
            }
            rule_list(&format!("{field}.actions"), &rule.actions)?;
            rule_list(&format!("{field}.streams"), &rule.streams)?;
            rule_list(&format!("{field}.roles"), &rule.roles)?;
            rule_list(&format!("{field}.principals"), &rule.principals)?;
            rule_list(&format!("{field}.tenants"), &rule.tenants)?;
            rule_list(&format!("{field}.classifications"), &rule.classifications)?;
            rule_list(&format!("{field}.regions"), &rule.regions)?;
            if rule.actions.is_empty() {
                return Err(invalid(
                    format!("{field}.actions"),
                    "name at least one action",
                ));
            }
            if rule.streams.is_empty() {
                return Err(invalid(
                    format!("{field}.streams"),
                    "name at least one stream pattern",
                ));
            }
            if rule.roles.is_empty() && rule.principals.is_empty() {
                return Err(invalid(field, "name at least one role or principal"));
            }
            let streams = rule
                .streams
                .iter()
                .enumerate()
                .map(|(k, s)| pattern(&format!("{field}.streams[{k}]"), s))
                .collect::<Result<Vec<_>, _>>()?;
            let refs: [RefCheck<'_>; 5] = [
                ("roles", &rule.roles, "role", &|n| b.roles.contains_key(n)),
                ("principals", &rule.principals, "principal", &|n| {
                    b.principals.contains_key(n)
                }),
                ("tenants", &rule.tenants, "tenant", &|n| {
                    b.tenants.contains_key(n)
                }),
                ("classifications", &rule.classifications, "class", &|n| {
                    b.classes.contains_key(n)
                }),
                ("regions", &rule.regions, "region", &|n| {
                    region_bits.contains_key(n)
                }),
            ];
            for (list, items, kind, known) in refs {
                for (k, item) in items.iter().enumerate() {
                    if !known(item) {
                        return Err(unknown(format!("{field}.{list}[{k}]"), kind, item));
                    }
                }
            }
            rules.push(Rule {
                label: rule.name.clone().unwrap_or_else(|| format!("#{i}")).into(),
                effect: rule.effect,
                actions: rule.actions.clone(),
                streams,
                roles: rule.roles.clone(),
                principals: rule.principals.clone(),
                tenants: rule.tenants.clone(),
                classifications: rule.classifications.clone(),
                regions: rule.regions.clone(),
            });
        }

        // Stream rules.
        count(
            "streams",
            b.streams.len(),
            "STREAM_RULES_MAX",
            STREAM_RULES_MAX,
        )?;
        let mut streams = Vec::with_capacity(b.streams.len());
        let mut scopes: Vec<BTreeSet<String>> = Vec::new();
        for (i, rule) in b.streams.iter().enumerate() {
            let field = format!("streams[{i}]");
            let p = pattern(&format!("{field}.pattern"), &rule.pattern)?;
            if !b.classes.contains_key(&rule.classification) {
                return Err(unknown(
                    format!("{field}.classification"),
                    "class",
                    &rule.classification,
                ));
            }
            let f = format!("{field}.regions");
            count(
                &f,
                rule.regions.len(),
                "STREAM_REGIONS_MAX",
                STREAM_REGIONS_MAX,
            )?;
            no_duplicates(&f, &rule.regions)?;
            match (rule.replication, rule.regions.is_empty()) {
                (ReplicationScope::Regions, true) => {
                    return Err(invalid(f, "required with replication = \"regions\""));
                }
                (ReplicationScope::All | ReplicationScope::Interest, false) => {
                    return Err(invalid(f, "only with replication = \"regions\""));
                }
                _ => {}
            }
            for (k, r) in rule.regions.iter().enumerate() {
                if !region_bits.contains_key(r) {
                    return Err(unknown(format!("{f}[{k}]"), "region", r));
                }
            }
            // A scope none of whose regions the class lets hold the events leaves the
            // stream nowhere to be held: every node would refuse its publishes.
            if let Some(mask) = classes.get(&rule.classification).and_then(|c| c.mask)
                && !rule.regions.is_empty()
                && rule
                    .regions
                    .iter()
                    .all(|r| region_bits.get(r).is_none_or(|b| mask & (1u64 << b) == 0))
            {
                return Err(invalid(
                    f,
                    format!(
                        "names no region of class {}'s jurisdictions: its events could be held nowhere",
                        rule.classification
                    ),
                ));
            }
            if rule.retention_s == Some(0) {
                return Err(invalid(
                    format!("{field}.retention_s"),
                    "must be at least 1",
                ));
            }
            if rule.retention_bytes == Some(0) {
                return Err(invalid(
                    format!("{field}.retention_bytes"),
                    "must be at least 1",
                ));
            }
            let regions: BTreeSet<String> = rule.regions.iter().cloned().collect();
            let scope = if rule.replication == ReplicationScope::Regions {
                let k = match scopes.iter().position(|s| *s == regions) {
                    Some(k) => k,
                    None if scopes.len() == REPLICATION_SCOPES_MAX => {
                        return Err(invalid(
                            f,
                            format!(
                                "would be distinct regions set {} of the replication = \"regions\" rules, over REPLICATION_SCOPES_MAX ({REPLICATION_SCOPES_MAX}); rules naming the same set share one",
                                scopes.len() + 1
                            ),
                        ));
                    }
                    None => {
                        scopes.push(regions.clone());
                        scopes.len() - 1
                    }
                };
                Some(u8::try_from(k).expect("at most REPLICATION_SCOPES_MAX (64) scopes"))
            } else {
                None
            };
            streams.push((
                p,
                StreamRuleInfo {
                    index: i,
                    classification: rule.classification.clone(),
                    replication: rule.replication,
                    regions,
                    scope,
                    retention_s: rule.retention_s,
                    retention_bytes: rule.retention_bytes,
                    conflict: rule.conflict,
                    priority: rule.priority,
                },
            ));
        }

        // Transforms.
        count(
            "transforms",
            b.transforms.len(),
            "TRANSFORMS_MAX",
            TRANSFORMS_MAX,
        )?;
        let mut transforms = Vec::with_capacity(b.transforms.len());
        for (t, spec) in &b.transforms {
            let field = format!("transforms.{t}");
            plain_name(&field, t)?;
            if !b.classes.contains_key(&spec.classification) {
                return Err(unknown(
                    format!("{field}.classification"),
                    "class",
                    &spec.classification,
                ));
            }
            transforms.push(Transform::compile(&field, t, spec, b.epoch)?);
        }

        // Rate limits.
        count("limits", b.limits.len(), "RATE_LIMITS_MAX", RATE_LIMITS_MAX)?;
        let mut principal_limits = HashMap::new();
        let mut tenant_limits = HashMap::new();
        for (i, spec) in b.limits.iter().enumerate() {
            let field = format!("limits[{i}]");
            let limit = RateLimit {
                events_per_s: spec.events_per_s,
                burst: spec.burst,
                events_per_day: spec.events_per_day,
                bytes_per_day: spec.bytes_per_day,
            };
            if spec.events_per_s == 0 {
                return Err(invalid(
                    format!("{field}.events_per_s"),
                    "must be at least 1",
                ));
            }
            if spec.burst == 0 {
                return Err(invalid(format!("{field}.burst"), "must be at least 1"));
            }
            let (table, who, kind, known) = match (&spec.principal, &spec.tenant) {
                (Some(p), None) => (
                    &mut principal_limits,
                    p,
                    "principal",
                    b.principals.contains_key(p),
                ),
                (None, Some(t)) => (&mut tenant_limits, t, "tenant", b.tenants.contains_key(t)),
                _ => return Err(invalid(field, "set exactly one of principal, tenant")),
            };
            if !known {
                return Err(unknown(format!("{field}.{kind}"), kind, who));
            }
            if table.insert(who.clone(), limit).is_some() {
                return Err(invalid(
                    field,
                    format!("{kind} `{who}` already has a limit"),
                ));
            }
        }

        // Devices.
        count("devices", b.devices.len(), "DEVICES_MAX", DEVICES_MAX)?;
        let mut devices = HashMap::new();
        let mut device_streams = HashMap::new();
        for (d, spec) in &b.devices {
            let field = format!("devices.{d}");
            let Some(principal) = b.principals.get(d) else {
                return Err(unknown(field, "principal", d));
            };
            let (Some(key), Some(tenant)) = (&principal.device_key, &principal.tenant) else {
                return Err(invalid(
                    field,
                    format!("principal `{d}` must have a device_key and a tenant to be enrolled"),
                ));
            };
            let f = format!("{field}.streams");
            count(
                &f,
                spec.streams.len(),
                "DEVICE_STREAMS_MAX",
                DEVICE_STREAMS_MAX,
            )?;
            if spec.streams.is_empty() {
                return Err(invalid(f, "name at least one stream pattern"));
            }
            let patterns = spec
                .streams
                .iter()
                .enumerate()
                .map(|(k, s)| pattern(&format!("{f}[{k}]"), s))
                .collect::<Result<Vec<_>, _>>()?;
            if !jurisdiction_bits.contains_key(&spec.jurisdiction) {
                return Err(unknown(
                    format!("{field}.jurisdiction"),
                    "jurisdiction",
                    &spec.jurisdiction,
                ));
            }
            let jurisdiction = Jurisdiction::new(spec.jurisdiction.clone())
                .map_err(|e| invalid(format!("{field}.jurisdiction"), e.to_string()))?;
            let f = format!("{field}.rules");
            count(
                &f,
                spec.rules.len(),
                "RULES_MAX",
                weft_fabric::edge::RULES_MAX,
            )?;
            for (k, rule) in spec.rules.iter().enumerate() {
                rule.check().map_err(|e| invalid(format!("{f}[{k}]"), e))?;
            }
            let key = key_hex(&format!("principals.{d}.device_key"), key)?;
            device_streams.insert(d.clone(), patterns.clone());
            devices.insert(
                key,
                Enrollment {
                    principal: d.clone(),
                    tenant: tenant.clone(),
                    streams: patterns,
                    jurisdiction,
                    rules: spec.rules.clone(),
                },
            );
        }

        Ok(Policy {
            bundle: bundle.clone(),
            jurisdictions,
            jurisdiction_bits,
            region_bits,
            node_bits,
            principals,
            by_key,
            by_token,
            rules,
            classes,
            streams,
            scopes,
            transforms,
            principal_limits,
            tenant_limits,
            devices,
            device_streams,
            memo_owner: MEMO_OWNERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        })
    }

    /// The jurisdictions of the bundle, in code order.
    pub fn jurisdictions(&self) -> &[Jurisdiction] {
        &self.jurisdictions
    }
}
