//! Egress transforms in the node (`docs/policy.md` §7.1): the ingress node derives, from
//! every source event it accepts on a stream with transforms, new events on the
//! transforms' target streams (fields dropped, hashed or masked, or windowed aggregates),
//! signs them with its own key and stamps them with the target's residency, so the derived
//! data may leave the jurisdiction its source may not.
//!
//! Who does what:
//! - field transforms run on the HTTP publish path, under the producer lock, right after
//!   the source events are signed (or, for a pre-signed event, verified): the derivatives
//!   go to the driver in the **same** command as their sources, hence into the same group
//!   commit. The publisher's acknowledgement covers both (`ack=local`; `regions:N` is
//!   tracked for the sources only).
//! - aggregates accumulate in the driver ([`Aggregator`]), which alone knows that a
//!   source was accepted and new; a closed window's summaries go to [`run_flusher`], which
//!   signs them under the producer lock and publishes them like any other derivative.
//!
//! Exactly once: derivation happens only where a publish enters the fabric (the HTTP API);
//! events arriving from peers are never transformed, and derivatives are never transformed
//! again (no chains, so no cycles). A failed derivation never refuses its source: the
//! source is accepted, the failure is counted (`weft_egress_failures_total{reason}`) and
//! audited (`tracing` target `audit`).

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};
use weft_fabric::{
    Event, EventData, EventDraft, EventId, Jurisdiction, Payload, Residency, SecurityContext,
};
use weft_policy::{Derived, Policy, TransformError};

use crate::driver::{Ack, Command, Published};
use crate::http::{Api, Producer};
use crate::metrics::Metrics;
use crate::policy_state::PolicyState;

/// Content type of a derived event: its payload is the transform's output,
/// `{"data": ..., "lineage": {...}}` (`weft_policy::Derived::payload`). Reserved: only a
/// node makes such events, so a pre-signed envelope carrying it is refused at the API and
/// readers can trust the `weftlineage` attribute rendered from it.
pub(crate) const DERIVED_CONTENT_TYPE: &str = "application/vnd.weft.derived+json";

/// The principal recorded in a derived event's signed security context (the tenant is the
/// source's; the transform's name is in the lineage).
pub(crate) const DERIVED_PRINCIPAL: &str = "weft-egress";

/// CloudEvents `type` of a derived event as readers see it.
const DERIVED_TYPE: &str = "weft.derived";

/// CloudEvents `source` of a derived event: this, then the transform's name.
const DERIVED_SOURCE_PREFIX: &str = "weft:transform/";

/// Ids of pre-signed source events derived from recently, for exactly-once derivation when
/// the same envelope is submitted twice concurrently (older ones are in the store, which is
/// checked first). 65 536 ids are 2 MiB and cover far more than the few milliseconds
/// between a submission and its group commit.
const RECENT_SOURCES_MAX: usize = 65_536;

/// Aggregation windows open at once, all (epoch, transform, tenant) triples together. One
/// window per aggregating transform and tenant: 64 transforms (`TRANSFORMS_MAX`) for four
/// tenants each. A new window beyond it closes the one that started first early (its
/// summaries go out as at its end): no tenant's events are refused because others'
/// windows fill the table.
pub(crate) const WINDOWS_MAX: usize = 256;

/// Estimated memory of all open windows together, bytes. Each group holds its key (part of
/// a source's data) and up to `AGGREGATE_LINEAGE_IDS_MAX` (64) hex ids; a window whose new
/// group takes the total over this is closed early (its summaries published, a new window
/// opened with the same start), so memory stays under it plus one group.
pub(crate) const WINDOW_BYTES_MAX: usize = 64 << 20;

/// Estimated bytes of one group besides its key: 64 ids of 64 hex digits in `String`s, the
/// running digest and sums, map overhead.
const GROUP_BYTES_EST: usize = 8 << 10;

/// Batches of closed-window summaries waiting for the flusher to sign them. The driver
/// closes windows at most every tick (500 ms), so 64 batches is half a minute of a stalled
/// flusher; past it summaries are dropped (`flush_queue_full`, counted and audited).
pub(crate) const FLUSH_QUEUE_LEN_MAX: usize = 64;

/// How long shutdown waits for the last windows' summaries to commit.
pub(crate) const SHUTDOWN_FLUSH_TIMEOUT: Duration = Duration::from_secs(3);

const _: () = assert!(WINDOW_BYTES_MAX > WINDOWS_MAX * GROUP_BYTES_EST);

/// Why a derivation failed. The label is the metric's `reason`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The source payload is sealed: the node cannot read it.
    Sealed,
    /// The source's data is not a JSON object (or not JSON at all).
    NotJson(String),
    /// A summed field is not a number.
    NotNumber(String),
    /// A field path cannot be followed in the source's shape, or a key holds a `.`: the
    /// field may be there untouched, so nothing is derived.
    Unresolved(String),
    /// This node does not store the target stream, so it cannot make the derivative durable.
    TargetNotStored,
    /// The policy cannot classify the target (`Policy::stamp` refused).
    Unclassified(String),
    /// The target's class may not be held on this node (its residency set leaves this
    /// node's jurisdiction out, or the target stream's `replication = "regions"` rule this
    /// node's region): the derivative would be stored here in clear.
    ResidencyIngress(String),
    /// The source was stamped more narrowly than its stream's class and that set shares
    /// no jurisdiction with the target class (`Policy::derived_stamp`).
    ResidencyDisjoint(String),
    /// The transform hashes under a node-local key this node is not given
    /// (`egress.hash_keys`).
    HashKeyMissing(String),
    /// Signing refused the derivative (too large for an envelope, clock).
    Sign(String),
    /// The store refused the derivative.
    StoreRefused(String),
    /// The store refused the source (full, erased, a reused number): its derivatives are
    /// not published.
    SourceRefused,
    /// A window's transform is not in the policy in force (this epoch) any more: its
    /// summaries are not published.
    Withdrawn(u64),
    /// The flusher's queue ([`FLUSH_QUEUE_LEN_MAX`]) is full: summaries dropped.
    FlushQueueFull,
    /// The node stopped before an open window's summaries were committed.
    DroppedAtShutdown,
}

impl Failure {
    /// The metric label.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            Failure::Sealed => "sealed",
            Failure::NotJson(_) => "not_json",
            Failure::NotNumber(_) => "not_a_number",
            Failure::Unresolved(_) => "path_unresolved",
            Failure::TargetNotStored => "target_not_stored",
            Failure::Unclassified(_) => "unclassified",
            Failure::ResidencyIngress(_) => "residency_ingress",
            Failure::ResidencyDisjoint(_) => "residency_disjoint",
            Failure::HashKeyMissing(_) => "hash_key_missing",
            Failure::Sign(_) => "sign_failed",
            Failure::StoreRefused(_) => "store_refused",
            Failure::SourceRefused => "source_refused",
            Failure::Withdrawn(_) => "transform_withdrawn",
            Failure::FlushQueueFull => "flush_queue_full",
            Failure::DroppedAtShutdown => "dropped_at_shutdown",
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Sealed => write!(f, "the source payload is sealed"),
            Failure::NotJson(m) => write!(f, "the source data is not a JSON object: {m}"),
            Failure::NotNumber(field) => write!(f, "summed field `{field}` is not a number"),
            Failure::Unresolved(m) => write!(
                f,
                "{m}: the field may be in the data in another shape, so nothing is derived"
            ),
            Failure::TargetNotStored => write!(
                f,
                "this node does not store the target stream (config `streams`)"
            ),
            Failure::Unclassified(r) => write!(f, "the target cannot be stamped: {r}"),
            Failure::ResidencyIngress(m) => {
                write!(f, "the derived event is refused here: {m}")
            }
            Failure::ResidencyDisjoint(m) => write!(f, "nowhere may hold the derived event: {m}"),
            Failure::HashKeyMissing(m) => write!(f, "{m}"),
            Failure::Sign(m) => write!(f, "signing the derived event failed: {m}"),
            Failure::StoreRefused(m) => write!(f, "the store refused the derived event: {m}"),
            Failure::SourceRefused => write!(
                f,
                "the store refused the source event, so its derivative is not published"
            ),
            Failure::Withdrawn(epoch) => write!(
                f,
                "policy epoch {epoch} no longer has this aggregate: the window's summaries are not published"
            ),
            Failure::FlushQueueFull => write!(
                f,
                "the flusher's queue is full (FLUSH_QUEUE_LEN_MAX {FLUSH_QUEUE_LEN_MAX})"
            ),
            Failure::DroppedAtShutdown => {
                write!(
                    f,
                    "the node stopped before the window's summaries committed"
                )
            }
        }
    }
}

impl From<TransformError> for Failure {
    fn from(e: TransformError) -> Self {
        match e {
            TransformError::NotJson(m) => Failure::NotJson(m),
            TransformError::NotNumber { field } => Failure::NotNumber(field),
            e @ (TransformError::Unresolved { .. } | TransformError::DottedKey { .. }) => {
                Failure::Unresolved(e.to_string())
            }
            e @ TransformError::HashKeyMissing { .. } => Failure::HashKeyMissing(e.to_string()),
            other => Failure::NotJson(other.to_string()),
        }
    }
}

/// Counts and audits one failed derivation. The source event is unaffected.
pub(crate) fn fail(
    metrics: &Metrics,
    audit: &crate::audit::Audit,
    failure: &Failure,
    transform: &str,
    source: &str,
) {
    metrics.egress_failure(failure.reason());
    let mut entry = crate::audit::Entry::now(
        crate::audit::Decision::EgressFailed,
        failure.reason(),
        0,
        format!(
            "egress transform failed: {transform:?} on {source} (the source event is accepted): {failure}"
        ),
    );
    if source.len() == 64 && source.bytes().all(|b| b.is_ascii_hexdigit()) {
        entry.event_id = Some(source.to_string());
    }
    audit.record(entry);
}

/// The HTTP side's egress state.
#[derive(Debug, Default)]
pub(crate) struct Egress {
    recent: Mutex<Recent>,
}

#[derive(Debug, Default)]
struct Recent {
    set: HashSet<EventId>,
    order: VecDeque<EventId>,
}

impl Egress {
    /// Records a pre-signed source as derived from; false if it already was.
    /// Forgets sources whose publish failed (refused by the store, erased, the node
    /// stopping): a retry of the same envelope, once accepted, gets its derivatives.
    pub(crate) fn forget(&self, ids: &[EventId]) {
        let mut r = self
            .recent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for id in ids {
            if r.set.remove(id) {
                r.order.retain(|o| o != id);
            }
        }
    }

    fn first_time(&self, id: EventId) -> bool {
        let mut r = self
            .recent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !r.set.insert(id) {
            return false;
        }
        r.order.push_back(id);
        if r.order.len() > RECENT_SOURCES_MAX
            && let Some(old) = r.order.pop_front()
        {
            r.set.remove(&old);
        }
        true
    }
}

/// The JSON object a transform reads from a source event: the `data` of a stored
/// CloudEvent, or the whole payload of a JSON event. Anything else fails.
fn source_json(event: &EventData) -> Result<Vec<u8>, Failure> {
    let Payload::Clear(bytes) = event.payload() else {
        return Err(Failure::Sealed);
    };
    let essence = media_essence(event.content_type());
    if essence == crate::cloudevents::CE_JSON {
        let mut ce: Map<String, Value> = serde_json::from_slice(bytes)
            .map_err(|e| Failure::NotJson(format!("stored CloudEvent: {e}")))?;
        return match ce.remove("data") {
            Some(data @ Value::Object(_)) => Ok(data.to_string().into_bytes()),
            Some(other) => Err(Failure::NotJson(format!(
                "CloudEvent data is {}",
                kind(&other)
            ))),
            None if ce.contains_key("data_base64") => Err(Failure::NotJson(
                "CloudEvent data is binary (data_base64)".into(),
            )),
            None => Err(Failure::NotJson("the CloudEvent has no data".into())),
        };
    }
    if essence == "application/json" || essence.ends_with("+json") {
        return Ok(bytes.to_vec());
    }
    Err(Failure::NotJson(format!(
        "content type {:?} is not JSON",
        event.content_type()
    )))
}

pub(crate) use weft_fabric::cloudevents::{kind, media_essence};

/// Whether an event of `content_type` is an egress transform's derivative (the reserved
/// content type, which only nodes sign).
pub(crate) fn is_derived(content_type: &str) -> bool {
    media_essence(content_type) == DERIVED_CONTENT_TYPE
}

/// Whether any field (one-to-one) transform applies to `stream`.
fn has_field_transforms(policy: &Policy, stream: &weft_fabric::StreamName) -> bool {
    policy.transforms_for(stream).any(|t| !t.is_aggregate())
}

/// Signs one derived payload as a new event of this node: seq and HLC from the producer,
/// classification and residency from `Policy::derived_stamp` for the target stream (the
/// target class's, narrowed to `restriction`: what its sources' own stamps keep), the
/// source's tenant. The producer's sequence advances only on success (no gap on a
/// failure).
fn sign_derived(
    api: &Api,
    p: &mut Producer,
    policy: &Policy,
    tenant: &str,
    restriction: Option<&Residency>,
    derived: Derived,
) -> Result<Arc<Event>, Failure> {
    if !api.streams.iter().any(|s| s.matches(&derived.stream)) {
        return Err(Failure::TargetNotStored);
    }
    let stamp = policy
        .derived_stamp(&derived.stream, &derived.classification, restriction)
        .map_err(|r| match r {
            weft_policy::Reason::DerivedResidencyDisjoint { .. } => {
                Failure::ResidencyDisjoint(r.to_string())
            }
            r => Failure::Unclassified(r.to_string()),
        })?;
    // Stored here before it goes anywhere: this node must be one that may hold it, as an
    // ingress node must for any event it takes in.
    if let Some(why) = crate::http::ingress_refusal(
        policy,
        &api.me,
        &derived.stream,
        &stamp.classification,
        &stamp.residency,
    ) {
        return Err(Failure::ResidencyIngress(why));
    }
    let hlc = p.stamp().map_err(|e| Failure::Sign(e.to_string()))?;
    let seq = p.last_seq(&api.own_numbers) + 1;
    let event = p
        .signer
        .sign(EventDraft {
            stream: derived.stream,
            key: None,
            seq,
            hlc,
            security: SecurityContext {
                tenant: tenant.to_string(),
                principal: DERIVED_PRINCIPAL.into(),
                classification: stamp.classification,
                residency: stamp.residency,
                scopes: Default::default(),
                policy_epoch: policy.epoch(),
            },
            content_type: DERIVED_CONTENT_TYPE.into(),
            payload: Payload::Clear(derived.payload.to_string().into_bytes()),
            trace: None,
        })
        .map_err(|e| Failure::Sign(e.to_string()))?;
    p.next_seq = seq;
    Ok(Arc::new(event))
}

/// Runs every field transform of `policy` on `sources` (already signed or verified, about
/// to be published by this node) and signs the derivatives with the producer `p`, which
/// the caller holds locked and sends both in one command while still holding it (so the
/// node's sequence numbers reach the driver in order). Failures are counted and audited
/// and derive nothing; the sources are unaffected.
///
/// Bounded by construction: at most `TRANSFORMS_MAX` (64) derivatives per source, and a
/// request holds at most `BATCH_LEN_MAX` sources.
pub(crate) fn derive(
    api: &Api,
    policy: &Policy,
    sources: &[Arc<Event>],
    p: &mut Producer,
) -> Vec<(Option<EventId>, Arc<Event>)> {
    let mut out = Vec::new();
    for source in sources {
        if !has_field_transforms(policy, source.stream()) {
            continue;
        }
        let id = source.id();
        let data = source_json(source);
        let restriction = policy.derived_restriction(source);
        for t in policy
            .transforms_for(source.stream())
            .filter(|t| !t.is_aggregate())
        {
            let result = data
                .clone()
                .and_then(|d| t.apply(&id, &d, &api.hash_keys).map_err(Failure::from))
                .and_then(|derived| {
                    sign_derived(
                        api,
                        p,
                        policy,
                        &source.security().tenant,
                        restriction.as_ref(),
                        derived,
                    )
                });
            match result {
                Ok(event) => {
                    Metrics::inc(&api.metrics.egress_derived, "transform", t.name());
                    debug!(source = %id, derived = %event.id(), transform = t.name(), "derived");
                    out.push((Some(id), event));
                }
                Err(f) => fail(&api.metrics, &api.audit, &f, t.name(), &id.to_string()),
            }
        }
    }
    out
}

/// A pre-signed envelope may not claim to be a derivation: only nodes make those.
pub(crate) fn check_presigned(event: &EventData) -> Result<(), String> {
    if media_essence(event.content_type()) == DERIVED_CONTENT_TYPE {
        return Err(format!(
            "content type {DERIVED_CONTENT_TYPE} is reserved for events the fabric's nodes derive"
        ));
    }
    Ok(())
}

/// Sends pre-signed `events` (one per request today) to the driver on `permit`, with their
/// derivatives when the policy in force has field transforms for their stream and the
/// event is new to this node (not stored, not derived from moments ago): exactly one
/// derivative per transform even when the same envelope is submitted again.
pub(crate) async fn send_presigned(
    api: &Arc<Api>,
    permit: mpsc::OwnedPermit<Command>,
    events: Vec<Arc<Event>>,
    dedup: Vec<Option<(String, String, String)>>,
    ack: Ack,
    started: Instant,
    reply: oneshot::Sender<Result<Published, crate::driver::PublishError>>,
) {
    let policy = api.policy.policy();
    let wanted = policy
        .as_ref()
        .is_some_and(|p| events.iter().any(|e| has_field_transforms(p, e.stream())));
    let command = move |events, derived| Command::Publish {
        events,
        derived,
        ack,
        dedup,
        claim: None,
        started,
        reply,
    };
    let Some(policy) = policy.filter(|_| wanted) else {
        permit.send(command(events, Vec::new()));
        return;
    };
    crate::http::own_numbers_known(api).await;
    let api2 = api.clone();
    let sent = tokio::task::spawn_blocking(move || {
        let fresh: Vec<Arc<Event>> = events
            .iter()
            .filter(|e| {
                let id = e.id();
                let stored = api2
                    .with_reader(|r| Ok(r.event_by_id(&id).ok().flatten().is_some()))
                    .unwrap_or(false);
                !stored && api2.egress.first_time(id)
            })
            .cloned()
            .collect();
        let mut p = api2
            .producer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let derived = derive(&api2, &policy, &fresh, &mut p);
        permit.send(command(events, derived));
    })
    .await;
    if let Err(e) = sent {
        // The closure panicked before sending: the permit is released, the publisher's
        // reply channel is dropped and it gets `shutting_down` (nothing was signed).
        warn!(error = %e, "deriving from a pre-signed event failed");
    }
}

/// Renders a derived event for readers (`cloudevents::render`): a CloudEvent with `id` =
/// the event id, `source` = `weft:transform/<name>`, `type` = `weft.derived`,
/// `datacontenttype` = `application/json`, `time` from the HLC, `data` = the derived data;
/// and the lineage as compact JSON text (for `weftlineage`). `None` if the payload is not
/// a derived payload.
pub(crate) fn render_derived(
    event: &EventData,
    bytes: &[u8],
) -> Option<(Map<String, Value>, String)> {
    let Value::Object(mut payload) = serde_json::from_slice::<Value>(bytes).ok()? else {
        return None;
    };
    let lineage = payload.remove("lineage")?;
    let data = payload.remove("data")?;
    let transform = lineage.get("transform")?.as_str()?;
    let mut map = Map::new();
    map.insert("specversion".into(), "1.0".into());
    map.insert("id".into(), event.id().to_string().into());
    map.insert(
        "source".into(),
        format!("{DERIVED_SOURCE_PREFIX}{transform}").into(),
    );
    map.insert("type".into(), DERIVED_TYPE.into());
    map.insert("datacontenttype".into(), "application/json".into());
    if let Some(time) = crate::cloudevents::rfc3339_from_ms(event.hlc().physical_ms()) {
        map.insert("time".into(), time.into());
    }
    map.insert("data".into(), data);
    Some((map, lineage.to_string()))
}

/// The transforms in force, for `GET /v1/policy` (salts are left out: a salt kept from the
/// derived data's readers is what makes hashes hard to test guesses against; a hash key is
/// named, with whether this node holds it, never shown).
pub(crate) fn view(policy: &Policy, keys: &weft_policy::HashKeys) -> Value {
    let specs = &policy.bundle().transforms;
    Value::Array(
        specs
            .iter()
            .map(|(name, s)| {
                let mut v = json!({
                    "name": name,
                    "source": s.source,
                    "target": s.target,
                    "classification": s.classification,
                });
                match &s.aggregate {
                    Some(a) => {
                        v["kind"] = "aggregate".into();
                        v["window_s"] = a.window_s.into();
                        v["group_by"] = json!(a.group_by);
                        v["sum"] = json!(a.sum);
                        v["min_count"] = json!(a.min_count.unwrap_or(1));
                    }
                    None => {
                        v["kind"] = "fields".into();
                        v["keep"] = json!(s.keep);
                        v["drop"] = json!(s.drop);
                        v["hash"] = json!(s.hash);
                        if let Some(name) = &s.hash_key {
                            v["hash_key"] = json!(name);
                            v["hash_key_held"] = json!(keys.names().any(|n| n == name));
                        }
                        v["mask"] = json!(
                            s.mask
                                .iter()
                                .map(|m| json!({"field": m.field, "keep_last": m.keep_last}))
                                .collect::<Vec<_>>()
                        );
                    }
                }
                v
            })
            .collect(),
    )
}

// ------------------------------------------------------------------ aggregates

/// A closed window's summary, waiting to be signed.
#[derive(Debug)]
pub(crate) struct Pending {
    policy: Arc<Policy>,
    tenant: String,
    transform: String,
    /// What its sources' own stamps keep (`Policy::derived_restriction`).
    restriction: Option<Residency>,
    derived: Derived,
}

/// An aggregation window's identity: the policy it was opened under (by its
/// `compilation`), the transform, the tenant, and what its sources' own stamps keep
/// (`Policy::derived_restriction`): sources a producer stamped more narrowly than their
/// stream's class are summed apart from the others, per set, and each summary is stamped
/// within its sources' set.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct WindowKey {
    compilation: u64,
    transform: String,
    tenant: String,
    restriction: Option<BTreeSet<Jurisdiction>>,
}

/// One open aggregation window.
struct Open {
    /// The epoch's policy the window was opened under (its transform, its stamp).
    policy: Arc<Policy>,
    start_ms: u64,
    end_ms: u64,
    window: weft_policy::AggregateWindow,
    /// Estimated bytes held.
    bytes: usize,
}

/// Aggregation windows, owned by the driver: one per (policy, transform, tenant) (the policy
/// by its `compilation`, so a bundle replaced within its epoch opens new windows),
/// aligned on the wall clock (`start = now - now % window_s`). An accepted, new source
/// event is added to the current window of each aggregating transform of its stream; a
/// window is closed at its end (the driver's tick, every 500 ms) or early when it reaches
/// a bound, and its summaries go to the flusher.
pub(crate) struct Aggregator {
    policy: Arc<PolicyState>,
    windows: BTreeMap<WindowKey, Open>,
    bytes: usize,
    flush_tx: mpsc::Sender<Vec<Pending>>,
    metrics: Arc<Metrics>,
    audit: crate::audit::Audit,
}

impl Aggregator {
    /// An aggregator closing windows into `flush_tx`.
    pub(crate) fn new(
        policy: Arc<PolicyState>,
        flush_tx: mpsc::Sender<Vec<Pending>>,
        metrics: Arc<Metrics>,
        audit: crate::audit::Audit,
    ) -> Self {
        Self {
            policy,
            windows: BTreeMap::new(),
            bytes: 0,
            flush_tx,
            metrics,
            audit,
        }
    }

    /// For each event, whether an aggregating transform under the policy in force reads
    /// its stream (the driver then checks it is new before publishing it).
    pub(crate) fn watching(&self, events: &[Arc<Event>]) -> Vec<bool> {
        let policy = self.policy.policy();
        events
            .iter()
            .map(|e| {
                policy
                    .as_ref()
                    .is_some_and(|p| p.transforms_for(e.stream()).any(|t| t.is_aggregate()))
            })
            .collect()
    }

    /// Adds a source event this node accepted (new here) at wall time `now_ms`.
    pub(crate) fn add(&mut self, event: &Event, now_ms: u64) {
        let Some(policy) = self.policy.policy() else {
            return;
        };
        let id = event.id();
        let data = source_json(event);
        let tenant = &event.security().tenant;
        let restriction = match policy.derived_restriction(event) {
            Some(Residency::Only(set)) => Some(set),
            // Narrower than its class and yet anywhere cannot be: fail closed (an empty
            // set, which `derived_stamp` refuses as sharing no jurisdiction).
            Some(Residency::Unrestricted) => Some(BTreeSet::new()),
            None => None,
        };
        for t in policy
            .transforms_for(event.stream())
            .filter(|t| t.is_aggregate())
        {
            let data = match &data {
                Ok(d) => d,
                Err(f) => {
                    fail(&self.metrics, &self.audit, f, t.name(), &id.to_string());
                    continue;
                }
            };
            let window_ms = t.window_s().unwrap_or(1).saturating_mul(1000).max(1);
            let start_ms = now_ms - now_ms % window_ms;
            let key = WindowKey {
                compilation: policy.compilation(),
                transform: t.name().to_string(),
                tenant: tenant.clone(),
                restriction: restriction.clone(),
            };
            if self
                .windows
                .get(&key)
                .is_some_and(|w| w.start_ms != start_ms)
            {
                self.close(&key);
            }
            if !self.windows.contains_key(&key)
                && self.windows.len() >= WINDOWS_MAX
                && let Some(oldest) = self
                    .windows
                    .iter()
                    .min_by(|a, b| (a.1.start_ms, a.0).cmp(&(b.1.start_ms, b.0)))
                    .map(|(k, _)| k.clone())
            {
                self.close(&oldest);
            }
            let mut attempt = 0;
            loop {
                let w = self.windows.entry(key.clone()).or_insert_with(|| Open {
                    policy: policy.clone(),
                    start_ms,
                    end_ms: start_ms + window_ms,
                    window: t.window().unwrap_or_default(),
                    bytes: 0,
                });
                let groups = w.window.groups_len();
                match w.window.add(t, &id, data) {
                    Ok(()) => {
                        if w.window.groups_len() > groups {
                            let cost = data.len() + GROUP_BYTES_EST;
                            w.bytes += cost;
                            self.bytes += cost;
                        }
                        if self.bytes > WINDOW_BYTES_MAX {
                            // Over the memory bound: publish what this window holds now.
                            self.close(&key);
                        }
                        break;
                    }
                    Err(TransformError::GroupsFull { .. }) if attempt == 0 => {
                        // AGGREGATE_GROUPS_MAX groups: close early, add to a fresh window.
                        self.close(&key);
                        attempt += 1;
                    }
                    Err(e) => {
                        fail(
                            &self.metrics,
                            &self.audit,
                            &Failure::from(e),
                            t.name(),
                            &id.to_string(),
                        );
                        break;
                    }
                }
            }
        }
        self.gauges();
    }

    /// Closes every window that ended by `now_ms`.
    pub(crate) fn tick(&mut self, now_ms: u64) {
        let ended: Vec<_> = self
            .windows
            .iter()
            .filter(|(_, w)| w.end_ms <= now_ms)
            .map(|(k, _)| k.clone())
            .collect();
        for key in ended {
            self.close(&key);
        }
        self.gauges();
    }

    /// Closes every open window and returns the summaries (shutdown).
    pub(crate) fn drain(&mut self) -> Vec<Pending> {
        let keys: Vec<_> = self.windows.keys().cloned().collect();
        let out = keys.iter().flat_map(|k| self.finish(k)).collect();
        self.gauges();
        out
    }

    fn finish(&mut self, key: &WindowKey) -> Vec<Pending> {
        let Some(w) = self.windows.remove(key) else {
            return Vec::new();
        };
        self.bytes -= w.bytes;
        let WindowKey {
            transform: name,
            tenant,
            restriction,
            ..
        } = key;
        let restriction = restriction.clone().map(Residency::Only);
        let Some(t) = w.policy.transform(name) else {
            return Vec::new();
        };
        // A window opened under another policy goes out only if the policy in force still
        // derives exactly what it folded (the same aggregate: target, class, groups and
        // sums), and is stamped under that policy: an epoch that withdraws or changes a
        // leaking aggregate (a narrower class, a group field dropped) stops what its
        // windows hold instead of publishing them the old way.
        let policy = match self.policy.policy() {
            Some(now) if now.compilation() != w.policy.compilation() => match now.transform(name) {
                Some(n) if n.same_derivation(t) => now,
                _ => {
                    fail(
                        &self.metrics,
                        &self.audit,
                        &Failure::Withdrawn(now.epoch()),
                        name,
                        "window",
                    );
                    return Vec::new();
                }
            },
            _ => w.policy.clone(),
        };
        w.window
            .finish(t, w.start_ms)
            .into_iter()
            .map(|derived| Pending {
                policy: policy.clone(),
                tenant: tenant.clone(),
                transform: name.clone(),
                restriction: restriction.clone(),
                derived,
            })
            .collect()
    }

    fn close(&mut self, key: &WindowKey) {
        let batch = self.finish(key);
        if batch.is_empty() {
            return;
        }
        if let Err(e) = self.flush_tx.try_send(batch) {
            let batch = match e {
                mpsc::error::TrySendError::Full(b) | mpsc::error::TrySendError::Closed(b) => b,
            };
            for p in &batch {
                fail(
                    &self.metrics,
                    &self.audit,
                    &Failure::FlushQueueFull,
                    &p.transform,
                    "window",
                );
            }
        }
    }

    fn gauges(&self) {
        self.metrics.egress_windows.set(self.windows.len() as i64);
        self.metrics.egress_window_bytes.set(self.bytes as i64);
    }
}

/// Signs a batch of summaries under the producer lock and sends them to the driver as one
/// publish; returns the driver's answer. Waits for room in the driver's queue (the
/// summaries are few and the flusher is the only waiter).
async fn publish_pending(
    api: &Arc<Api>,
    batch: Vec<Pending>,
    ack: Ack,
) -> Option<oneshot::Receiver<Result<Published, crate::driver::PublishError>>> {
    crate::http::own_numbers_known(api).await;
    let permit = api.cmd_tx.clone().reserve_owned().await.ok()?;
    let (reply, rx) = oneshot::channel();
    let api2 = api.clone();
    let sent = tokio::task::spawn_blocking(move || {
        let mut p = api2
            .producer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut derived = Vec::with_capacity(batch.len());
        for pending in batch {
            match sign_derived(
                &api2,
                &mut p,
                &pending.policy,
                &pending.tenant,
                pending.restriction.as_ref(),
                pending.derived,
            ) {
                Ok(event) => {
                    Metrics::inc(
                        &api2.metrics.egress_derived,
                        "transform",
                        &pending.transform,
                    );
                    derived.push((None, event));
                }
                Err(f) => fail(&api2.metrics, &api2.audit, &f, &pending.transform, "window"),
            }
        }
        if derived.is_empty() {
            return false;
        }
        permit.send(Command::Publish {
            events: Vec::new(),
            derived,
            ack,
            dedup: Vec::new(),
            claim: None,
            started: Instant::now(),
            reply,
        });
        true
    })
    .await;
    matches!(sent, Ok(true)).then_some(rx)
}

/// The flusher task: signs and publishes closed windows' summaries as they come.
pub(crate) async fn run_flusher(api: Arc<Api>, mut rx: mpsc::Receiver<Vec<Pending>>) {
    while let Some(batch) = rx.recv().await {
        publish_pending(&api, batch, Ack::None).await;
    }
}

/// At shutdown, before the driver stops: closes the open windows and publishes their
/// summaries (`ack=local`), waiting at most [`SHUTDOWN_FLUSH_TIMEOUT`]. What does not
/// commit in time is counted as `dropped_at_shutdown` (a crash loses open windows too:
/// aggregate summaries are at most once per window).
pub(crate) async fn flush_at_shutdown(api: &Arc<Api>) {
    let work = async {
        let (tx, rx) = oneshot::channel();
        api.cmd_tx
            .send(Command::DrainWindows { reply: tx })
            .await
            .ok()?;
        let batch = rx.await.ok()?;
        let n = batch.len();
        if n == 0 {
            return Some((0, 0));
        }
        let rx = publish_pending(api, batch, Ack::Local).await?;
        let done = rx.await.ok()?.ok()?;
        Some((n, done.derived.len()))
    };
    match tokio::time::timeout(SHUTDOWN_FLUSH_TIMEOUT, work).await {
        Ok(Some((n, committed))) if committed == n => {
            if n > 0 {
                tracing::info!(
                    summaries = n,
                    "open aggregation windows flushed at shutdown"
                );
            }
        }
        Ok(Some((n, committed))) => {
            for _ in committed..n {
                fail(
                    &api.metrics,
                    &api.audit,
                    &Failure::DroppedAtShutdown,
                    "",
                    "window",
                );
            }
        }
        _ => fail(
            &api.metrics,
            &api.audit,
            &Failure::DroppedAtShutdown,
            "",
            "window",
        ),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use weft_fabric::{Hlc, Signer, StreamName};

    fn event(content_type: &str, payload: &[u8]) -> Event {
        Signer::from_secret(&[7; 32])
            .sign(EventDraft {
                stream: StreamName::new("customers.eu.profiles").unwrap(),
                key: None,
                seq: 1,
                hlc: Hlc::new(1_795_000_000_000, 0).unwrap(),
                security: SecurityContext {
                    tenant: "acme".into(),
                    principal: "p".into(),
                    classification: "c".into(),
                    residency: Residency::Unrestricted,
                    scopes: Default::default(),
                    policy_epoch: 0,
                },
                content_type: content_type.into(),
                payload: Payload::Clear(payload.to_vec()),
                trace: None,
            })
            .unwrap()
    }

    const WINDOW_MS: u64 = 10_000;
    const T0: u64 = 1_700_000_000_000;

    pub(crate) fn state() -> Arc<PolicyState> {
        let bundle = weft_policy::Bundle::from_toml(
            r#"format = 1
epoch = 2
[jurisdictions.EU]
regions = ["aws:eu-west-1"]
[jurisdictions.CH]
regions = ["aws:eu-central-2"]
[classes.eu]
jurisdictions = ["EU", "CH"]
transit = "forbidden"
[classes.public]
anywhere = true
[[streams]]
pattern = "customers.eu.>"
classification = "eu"
replication = "all"
[transforms.per-country]
source = "customers.eu.>"
target = "customers.global.per-country"
classification = "public"
aggregate = { window_s = 10, group_by = ["country"], sum = ["ltv"] }
"#,
        )
        .unwrap();
        let policy = Arc::new(Policy::compile(&bundle).unwrap());
        Arc::new(PolicyState::new(Some(crate::policy_state::Applied {
            policy,
            signers: Vec::new(),
            signed: Arc::new(Vec::new()),
        })))
    }

    fn profile(seq: u64, tenant: &str, country: &str, ltv: u64) -> Event {
        stamped_profile(seq, tenant, country, ltv, Residency::Unrestricted)
    }

    fn stamped_profile(
        seq: u64,
        tenant: &str,
        country: &str,
        ltv: u64,
        residency: Residency,
    ) -> Event {
        Signer::from_secret(&[8; 32])
            .sign(EventDraft {
                stream: StreamName::new("customers.eu.profiles").unwrap(),
                key: None,
                seq,
                hlc: Hlc::new(T0, 0).unwrap(),
                security: SecurityContext {
                    tenant: tenant.into(),
                    principal: "p".into(),
                    classification: "eu".into(),
                    residency,
                    scopes: Default::default(),
                    policy_epoch: 2,
                },
                content_type: "application/json".into(),
                payload: Payload::Clear(
                    json!({"country": country, "ltv": ltv, "email": "x@example.eu"})
                        .to_string()
                        .into_bytes(),
                ),
                trace: None,
            })
            .unwrap()
    }

    fn aggregator() -> (Aggregator, mpsc::Receiver<Vec<Pending>>, Arc<Metrics>) {
        let (tx, rx) = mpsc::channel(FLUSH_QUEUE_LEN_MAX);
        let metrics = Arc::new(Metrics::new());
        let audit = crate::audit::Audit::detached(metrics.clone());
        (
            Aggregator::new(state(), tx, metrics.clone(), audit),
            rx,
            metrics,
        )
    }

    fn failures(metrics: &Metrics, reason: &str) -> u64 {
        metrics
            .egress_failures
            .get_or_create(&vec![("reason", reason.to_string())])
            .get()
    }

    /// (tenant, country) -> (count, sum.ltv) over summaries.
    fn totals(batches: &[Vec<Pending>]) -> BTreeMap<(String, String), (u64, f64)> {
        let mut out = BTreeMap::new();
        for p in batches.iter().flatten() {
            let data = &p.derived.payload["data"];
            let e = out
                .entry((
                    p.tenant.clone(),
                    data["country"].as_str().unwrap().to_string(),
                ))
                .or_insert((0, 0.0));
            e.0 += data["count"].as_u64().unwrap();
            e.1 += data["sum.ltv"].as_f64().unwrap();
        }
        out
    }

    fn take(rx: &mut mpsc::Receiver<Vec<Pending>>) -> Vec<Vec<Pending>> {
        std::iter::from_fn(|| rx.try_recv().ok()).collect()
    }

    #[test]
    fn windows_are_per_tenant_and_close_at_their_end() {
        let (mut agg, mut rx, metrics) = aggregator();
        let t = T0 + 3_000;
        agg.add(&profile(1, "acme", "IE", 10), t);
        agg.add(&profile(2, "acme", "IE", 5), t + 1);
        agg.add(&profile(3, "acme", "DE", 7), t + 2);
        agg.add(&profile(4, "globex", "IE", 100), t + 3);
        assert_eq!(metrics.egress_windows.get(), 2, "one window per tenant");
        agg.tick(T0 + WINDOW_MS - 1);
        assert!(take(&mut rx).is_empty(), "closed before its end");
        agg.tick(T0 + WINDOW_MS);
        let batches = take(&mut rx);
        assert_eq!(batches.len(), 2);
        let want = BTreeMap::from([
            (("acme".into(), "DE".into()), (1, 7.0)),
            (("acme".into(), "IE".into()), (2, 15.0)),
            (("globex".into(), "IE".into()), (1, 100.0)),
        ]);
        assert_eq!(totals(&batches), want, "tenants never share a summary");
        for p in batches.iter().flatten() {
            assert_eq!(p.derived.stream.as_str(), "customers.global.per-country");
            assert_eq!(p.derived.payload["lineage"]["window_start_ms"], T0);
            assert!(p.derived.payload["data"].get("email").is_none());
        }
        assert_eq!(metrics.egress_windows.get(), 0);
        assert_eq!(metrics.egress_window_bytes.get(), 0);
    }

    /// A window of an older epoch whose transform the policy in force withdrew is not
    /// published (before, it went out under the old epoch's rules); one whose transform
    /// is still there is, stamped under the new policy.
    #[test]
    fn a_window_of_a_withdrawn_aggregate_is_not_published() {
        // Withdrawn, kept as it was, changed (its groups: what it folded is not what the
        // new epoch would publish).
        for (keep, change) in [(false, false), (true, false), (false, true)] {
            let (mut agg, _rx, metrics) = aggregator();
            agg.add(&profile(1, "acme", "IE", 1), T0);
            let old = agg.policy.policy().unwrap();
            let mut text = old.bundle().clone();
            text.epoch = 3;
            if change {
                for t in text.transforms.values_mut() {
                    if let Some(a) = &mut t.aggregate {
                        a.group_by.clear();
                    }
                }
            } else if !keep {
                text.transforms.clear();
            }
            let policy = Arc::new(Policy::compile(&text).unwrap());
            agg.policy.set(crate::policy_state::Applied {
                policy,
                signers: Vec::new(),
                signed: Arc::new(Vec::new()),
            });
            let out = agg.drain();
            if keep {
                assert_eq!(out.len(), 1);
                assert_eq!(
                    out[0].policy.epoch(),
                    3,
                    "stamped under the policy in force"
                );
                assert_eq!(failures(&metrics, "transform_withdrawn"), 0);
            } else {
                assert!(out.is_empty(), "{out:?}");
                assert_eq!(failures(&metrics, "transform_withdrawn"), 1);
            }
        }
    }

    /// A source its producer stamped more narrowly than its stream's class is summed apart
    /// from the others, and its summary keeps that set (`Policy::derived_stamp` narrows the
    /// public target's stamp to it): an EU-only count never rides in a summary that may go
    /// anywhere.
    #[test]
    fn sources_stamped_narrower_than_their_class_are_summed_apart() {
        let (mut agg, mut rx, metrics) = aggregator();
        let only_eu = Residency::only(["EU"]).unwrap();
        let t = T0 + 3_000;
        agg.add(&profile(1, "acme", "IE", 10), t);
        agg.add(&stamped_profile(2, "acme", "IE", 5, only_eu.clone()), t);
        agg.add(&stamped_profile(3, "acme", "IE", 7, only_eu.clone()), t);
        // Stamped with the whole class: not narrower, summed with the first.
        let class = Residency::only(["EU", "CH"]).unwrap();
        agg.add(&stamped_profile(4, "acme", "IE", 1, class), t);
        assert_eq!(metrics.egress_windows.get(), 2, "one window per own set");
        agg.tick(T0 + WINDOW_MS);
        let mut summaries: Vec<(Option<Residency>, u64, f64)> = take(&mut rx)
            .into_iter()
            .flatten()
            .map(|p| {
                let data = &p.derived.payload["data"];
                (
                    p.restriction.clone(),
                    data["count"].as_u64().unwrap(),
                    data["sum.ltv"].as_f64().unwrap(),
                )
            })
            .collect();
        summaries.sort_by(|a, b| a.2.total_cmp(&b.2));
        assert_eq!(
            summaries,
            vec![(None, 2, 11.0), (Some(only_eu.clone()), 2, 12.0)]
        );
        // What each is stamped with on the public target.
        let policy = state().policy().unwrap();
        let target = weft_fabric::StreamName::new("customers.global.per-country").unwrap();
        let stamp = |r: Option<&Residency>| policy.derived_stamp(&target, "public", r).unwrap();
        assert_eq!(stamp(Some(&only_eu)).residency, only_eu);
        assert_eq!(stamp(None).residency, Residency::Unrestricted);
    }

    #[test]
    fn the_next_window_closes_the_previous_one_and_drain_closes_all() {
        let (mut agg, mut rx, _) = aggregator();
        agg.add(&profile(1, "acme", "IE", 1), T0);
        agg.add(&profile(2, "acme", "IE", 2), T0 + WINDOW_MS);
        let first = take(&mut rx);
        assert_eq!(totals(&first)[&("acme".into(), "IE".into())], (1, 1.0));
        let rest = agg.drain();
        assert_eq!(rest.len(), 1);
        assert_eq!(
            rest[0].derived.payload["lineage"]["window_start_ms"],
            T0 + WINDOW_MS
        );
        assert!(agg.drain().is_empty());
    }

    /// Open windows are bounded: one more closes the one that started first early, so no
    /// event is refused (before, the new tenant's events were refused for the rest of the
    /// window: one publisher naming many tenants starved the others).
    #[test]
    fn open_windows_are_bounded_and_the_oldest_closes_early() {
        let (mut agg, mut rx, metrics) = aggregator();
        agg.add(&profile(1, "early", "IE", 1), T0 - WINDOW_MS / 2);
        for i in 1..=WINDOWS_MAX as u64 {
            agg.add(&profile(i + 1, &format!("t{i}"), "IE", 1), T0);
        }
        assert_eq!(metrics.egress_windows.get(), WINDOWS_MAX as i64);
        let early = take(&mut rx);
        assert_eq!(
            totals(&early).keys().collect::<Vec<_>>(),
            [&("early".to_string(), "IE".to_string())],
            "the oldest window closed early"
        );
        let rest = agg.drain();
        assert_eq!(
            rest.len(),
            WINDOWS_MAX,
            "every other tenant's event aggregated"
        );
    }

    #[test]
    fn a_window_at_its_group_limit_closes_early_and_nothing_is_lost() {
        let (mut agg, mut rx, metrics) = aggregator();
        let max = weft_policy::limits::AGGREGATE_GROUPS_MAX;
        for i in 0..=max as u64 {
            agg.add(&profile(i + 1, "acme", &format!("c{i}"), 1), T0);
        }
        let early = take(&mut rx);
        assert_eq!(early.iter().map(Vec::len).sum::<usize>(), max);
        let rest = agg.drain();
        assert_eq!(rest.len(), 1);
        let all = totals(&[early.into_iter().flatten().chain(rest).collect()]);
        assert_eq!(all.len(), max + 1);
        assert!(all.values().all(|&(n, s)| n == 1 && s == 1.0));
        assert_eq!(failures(&metrics, "windows_full"), 0);
    }

    #[test]
    fn a_source_that_is_not_json_is_counted_not_added() {
        let (mut agg, _rx, metrics) = aggregator();
        agg.add(&event("text/plain", b"hello"), T0);
        assert_eq!(failures(&metrics, "not_json"), 1);
        assert!(agg.drain().is_empty());
    }

    #[test]
    fn source_json_reads_cloudevent_data_or_a_json_payload() {
        let ce = br#"{"specversion":"1.0","id":"1","source":"s","type":"t","data":{"a":1}}"#;
        let e = event(crate::cloudevents::CE_JSON, ce);
        assert_eq!(source_json(&e).unwrap(), br#"{"a":1}"#.to_vec());
        let e = event("application/json; charset=utf-8", br#"{"b":2}"#);
        assert_eq!(source_json(&e).unwrap(), br#"{"b":2}"#.to_vec());
        let e = event("application/ld+json", br#"{"c":3}"#);
        assert_eq!(source_json(&e).unwrap(), br#"{"c":3}"#.to_vec());
    }

    #[test]
    fn source_json_refuses_what_is_not_a_json_object_with_a_reason() {
        let cases: [(&str, &[u8], &str); 5] = [
            ("text/plain", b"hi", "not JSON"),
            (
                crate::cloudevents::CE_JSON,
                br#"{"specversion":"1.0","id":"1","source":"s","type":"t","data":"x"}"#,
                "a string",
            ),
            (
                crate::cloudevents::CE_JSON,
                br#"{"specversion":"1.0","id":"1","source":"s","type":"t","data_base64":"AA=="}"#,
                "binary",
            ),
            (
                crate::cloudevents::CE_JSON,
                br#"{"specversion":"1.0","id":"1","source":"s","type":"t"}"#,
                "no data",
            ),
            (
                crate::cloudevents::CE_JSON,
                b"{not json",
                "stored CloudEvent",
            ),
        ];
        for (ct, payload, want) in cases {
            let f = source_json(&event(ct, payload)).unwrap_err();
            assert_eq!(f.reason(), "not_json");
            assert!(f.to_string().contains(want), "{f} lacks {want:?}");
        }
    }

    #[test]
    fn a_presigned_envelope_may_not_claim_to_be_derived() {
        let e = event(DERIVED_CONTENT_TYPE, b"{}");
        assert!(check_presigned(&e).unwrap_err().contains("reserved"));
        assert!(check_presigned(&event("application/json", b"{}")).is_ok());
    }

    #[test]
    fn render_derived_puts_data_and_lineage_apart() {
        let payload = json!({"data": {"email": "sha256:ab"}, "lineage": {"transform": "t1",
            "policy_epoch": 3, "sources": ["00"]}});
        let e = event(DERIVED_CONTENT_TYPE, payload.to_string().as_bytes());
        let (map, lineage) = render_derived(&e, payload.to_string().as_bytes()).unwrap();
        assert_eq!(map["data"], json!({"email": "sha256:ab"}));
        assert_eq!(map["source"], "weft:transform/t1");
        assert_eq!(map["type"], DERIVED_TYPE);
        assert_eq!(map["id"], e.id().to_string());
        let l: Value = serde_json::from_str(&lineage).unwrap();
        assert_eq!(l["sources"][0], "00");
        assert!(render_derived(&e, b"{\"data\": 1}").is_none());
    }

    #[test]
    fn recent_sources_are_bounded_and_remembered() {
        let egress = Egress::default();
        let id = |i: u32| {
            let mut b = [0u8; 32];
            b[..4].copy_from_slice(&i.to_le_bytes());
            EventId(b)
        };
        assert!(egress.first_time(id(0)));
        assert!(!egress.first_time(id(0)));
        for i in 1..=RECENT_SOURCES_MAX as u32 {
            assert!(egress.first_time(id(i)));
        }
        let r = egress.recent.lock().unwrap();
        assert_eq!(r.set.len(), RECENT_SOURCES_MAX);
        assert_eq!(r.order.len(), RECENT_SOURCES_MAX);
        assert!(!r.set.contains(&id(0)), "the oldest id is forgotten first");
    }

    /// A source whose publish failed is forgotten: its retry, once taken, is derived from
    /// (before, the retry got no derivative: the id was recorded when the failed attempt
    /// was derived from).
    #[test]
    fn a_source_whose_publish_failed_is_derived_from_on_its_retry() {
        let egress = Egress::default();
        let id = EventId([7; 32]);
        assert!(egress.first_time(id));
        egress.forget(&[id]);
        assert!(egress.first_time(id), "the retry is derived from");
        assert!(!egress.first_time(id), "once");
        let r = egress.recent.lock().unwrap();
        assert_eq!((r.set.len(), r.order.len()), (1, 1));
    }
}
