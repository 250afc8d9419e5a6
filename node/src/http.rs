//! The HTTP API (axum): CloudEvents publish and read, SSE subscriptions, mesh views,
//! health, metrics and fault injection. Every refusal is a 4xx/5xx with a JSON body
//! `{"error": {"reason", "message"}}` and a count in `weft_rejected{reason}`.

use std::collections::{BTreeSet, HashMap};
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use weft_fabric::mesh::MemberInfo;
use weft_fabric::{
    Event, EventDraft, HybridClock, Payload, Residency, SecurityContext, Signer, StreamName,
    TraceContext,
};

use crate::chaos::{Chaos, Rule};
use crate::cloudevents::{self, CE_JSON, IncomingEvent};
use crate::config::Principal;
use crate::driver::{Ack, Command, Published, Snapshot};
use crate::metrics::Metrics;
use crate::store::StoreReader;

/// Content type of a pre-signed Weft envelope.
pub(crate) const WEFT_CBOR: &str = "application/vnd.weft.event+cbor";
/// Default page size of reads.
const READ_LIMIT_DEFAULT: usize = 100;
/// Log entries of every stream one step of a read over a pattern scans (a page takes as
/// many steps as it needs, up to `READ_SCAN_LEN_MAX` entries).
const PATTERN_SCAN_STEP: usize = 4096;
/// Most log entries one page read scans to fill itself past events its reader may not
/// read (`read_events`): a page of a stream mostly of other tenants' events can come back
/// short, with its cursor past them, after this many.
const READ_SCAN_LEN_MAX: usize = 10_000;
/// Most envelope bytes one read scans for the same (four pages' worth).
const READ_SCAN_BYTES_MAX: usize = 4 * crate::store::READ_LOG_BYTES_MAX;

/// The node's own producer state: events published over HTTP are signed by the node on
/// behalf of the authenticated principal, with the node's key and sequence.
pub(crate) struct Producer {
    pub(crate) signer: Signer,
    pub(crate) next_seq: u64,
    pub(crate) clock: HybridClock,
    /// This node's time, with the HLCs it applied (`clock.rs`).
    pub(crate) time: Arc<crate::clock::NodeClock>,
}

impl Producer {
    /// The HLC of the next local event: after every stamp before and every event this
    /// node applied (`clock::NodeClock::stamp`).
    pub(crate) fn stamp(&mut self) -> Result<weft_fabric::Hlc, weft_fabric::ClockError> {
        self.time.stamp(&mut self.clock)
    }

    /// The last number taken: this producer's, or a higher one the mesh is known to hold
    /// (`driver::OwnNumbers`: after a start over an emptied or older store), which the next
    /// event numbers past.
    pub(crate) fn last_seq(&mut self, own: &crate::driver::OwnNumbers) -> u64 {
        self.next_seq = self.next_seq.max(own.high());
        self.next_seq
    }
}

/// Waits until this node's own numbering is known: at most
/// [`weft_fabric::mesh::OWN_NUMBERS_WAIT_US`] after its start if no member came up to be
/// asked, [`weft_fabric::mesh::OWN_NUMBERS_ASKED_WAIT_US`] if one did. Then the producer
/// numbers past what the node holds and the members asked saw, or past the wall-clock floor
/// ([`weft_fabric::mesh::own_numbers_floor`], once, with a warning) when the core wants it
/// (`Node::own_floor_wanted`): a wait that ended without the numbering known over a store
/// that held none of the node's own events (an emptied data directory: numbering past what
/// it holds would reuse every number peers saw, and peers drop a reused number's event as
/// a duplicate), or a member's claim more than it can be believed on. A node without seeds
/// other than itself does not wait.
pub(crate) async fn own_numbers_known(api: &Api) {
    static INFORMED: std::sync::Once = std::sync::Once::new();
    loop {
        if !own_numbers_unknown(api) {
            if api.own_numbers.floor_wanted(false) {
                take_own_floor(api);
            }
            return;
        }
        if !own_numbers_worth_waiting(api) {
            if api.own_numbers.floor_wanted(true) {
                take_own_floor(api);
            } else {
                // The store held its own events (a restart): numbering from them is right
                // unless the store is an older backup, which a member's answer would have
                // shown.
                INFORMED.call_once(|| {
                    tracing::info!(
                        next = api.own_numbers.high() + 1,
                        "no member asked for this node's own events answered in time: numbering past what its store holds"
                    );
                });
            }
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Moves the producer's numbering past the wall-clock floor, at the first publish that
/// wants it (later ones find it done): the floor of this node's time, at least its latest
/// HLC.
fn take_own_floor(api: &Api) {
    let (floor, taken) = api.own_numbers.floor_once(|| {
        // A panic while the producer was held leaves its state as it was: publishes go on
        // through it (`egress::publish_pending` too), so the floor must reach it.
        let mut p = api
            .producer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let ms = p.time.now_ms().max(p.clock.last().physical_ms());
        let floor = weft_fabric::mesh::own_numbers_floor(ms);
        p.next_seq = p.next_seq.max(floor);
        floor
    });
    if taken {
        tracing::warn!(
            held = api.own_numbers.high(),
            next = floor + 1,
            "this node's own numbering could not be confirmed (the members asked did not all answer within {} s of its start, or none came up within {} s, and its store held none of its own events; or a member claimed more of its numbers than it can be believed on): numbering past the wall-clock floor, so no number peers saw is reused; peers take the numbers skipped as lost, whole, once this node names them at their next anti-entropy round with it (then after {} s)",
            weft_fabric::mesh::OWN_NUMBERS_ASKED_WAIT_US / 1_000_000,
            weft_fabric::mesh::OWN_NUMBERS_WAIT_US / 1_000_000,
            weft_fabric::mesh::LOST_WAIT_US / 1_000_000,
        );
    }
}

/// Whether this node's own numbering is not known yet while it has members to ask (seeds
/// other than itself: a lone node, or one others dial, has none).
fn own_numbers_unknown(api: &Api) -> bool {
    api.asks_own && !api.own_numbers.known()
}

/// Whether a publish still waits for the numbering (the core's rule,
/// [`weft_fabric::mesh::own_numbers_worth_waiting`], from the node's start).
fn own_numbers_worth_waiting(api: &Api) -> bool {
    let waited = u64::try_from(api.started.elapsed().as_micros()).unwrap_or(u64::MAX);
    weft_fabric::mesh::own_numbers_worth_waiting(waited, api.own_numbers.asked())
}

/// Shared state of the handlers.
pub(crate) struct Api {
    pub(crate) me: MemberInfo,
    pub(crate) name: String,
    pub(crate) cmd_tx: mpsc::Sender<Command>,
    /// Publish requests in progress (`limits.publishes_inflight_max`).
    pub(crate) inflight: Arc<tokio::sync::Semaphore>,
    /// KiB of publish bodies in progress (`limits.publish_bytes_inflight_max`).
    pub(crate) body_budget: Arc<tokio::sync::Semaphore>,
    /// `limits.http_body_max`: what a body without Content-Length is counted as.
    pub(crate) body_max: usize,
    pub(crate) producer: Mutex<Producer>,
    /// One signing task at a time (the producer lock orders them anyway): publishes wait
    /// for their turn here, on the runtime, not as threads of the blocking pool parked on
    /// the lock (64 concurrent publishers made 64 such threads).
    pub(crate) sign_gate: tokio::sync::Mutex<()>,
    /// CloudEvents being published by requests in flight (idempotency across concurrent
    /// requests).
    pub(crate) ce_claims: Arc<crate::ce_claims::CeClaims>,
    /// Per (principal, stream): when its last `read_filtered` audit entry was written and
    /// how many events were left out since (`audit_left_out`).
    pub(crate) filtered_audit: Mutex<HashMap<(String, String), (Instant, u64)>>,
    /// One permit per open subscription (`limits.subscribers_max`), taken at admission.
    pub(crate) subscriber_slots: Arc<tokio::sync::Semaphore>,
    /// Open subscriptions per principal (`""` for readers without a token), at most
    /// `subscribers_per_principal_max` each ([`PrincipalSubscription`]).
    pub(crate) subscribers_by_principal: Mutex<HashMap<String, usize>>,
    pub(crate) subscribers_per_principal_max: usize,
    /// One permit per store read in progress (`limits.reads_inflight_max`): bounds the
    /// envelopes held in memory by reads (up to 8 MiB each) and the blocking threads.
    pub(crate) read_slots: Arc<tokio::sync::Semaphore>,
    /// `limits.reads_inflight_max`: also how many idle store readers are kept.
    pub(crate) read_slots_max: usize,
    /// The store is at `limits.events_max` (set by the driver after each commit):
    /// publishes are refused before anything is signed.
    pub(crate) store_full: Arc<std::sync::atomic::AtomicBool>,
    /// This node's time for HLCs (`clock.rs`): ingress bounds pre-signed stamps with it.
    pub(crate) clock: Arc<crate::clock::NodeClock>,
    /// What the core knows of this node's own numbering (`driver::OwnNumbers`).
    pub(crate) own_numbers: Arc<crate::driver::OwnNumbers>,
    /// Whether the node has members to ask for its own events (seeds other than itself,
    /// or mDNS): only then does a publish wait for them ([`own_numbers_known`]).
    pub(crate) asks_own: bool,
    /// `limits.events_max`, for the refusal's message.
    pub(crate) events_max: usize,
    pub(crate) data_dir: PathBuf,
    pub(crate) readers: Mutex<Vec<StoreReader>>,
    pub(crate) committed: watch::Receiver<u64>,
    pub(crate) snapshot: watch::Receiver<Snapshot>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) chaos: Arc<Chaos>,
    pub(crate) tokens: HashMap<[u8; 32], Principal>,
    pub(crate) streams: Vec<weft_fabric::StreamPattern>,
    /// Egress transforms' node-local hash keys (config `egress.hash_keys`).
    pub(crate) hash_keys: weft_policy::HashKeys,
    pub(crate) read_limit_max: usize,
    /// Most durable subscriptions one principal holds (`limits.cursors_per_principal_max`).
    pub(crate) cursors_per_principal_max: usize,
    /// Seals and opens read cursors (`cursor.rs`): a reader never sees a log position.
    pub(crate) cursors: crate::cursor::Cursors,
    pub(crate) subscribers_max: usize,
    pub(crate) seeded: bool,
    pub(crate) started: Instant,
    /// Becomes true when the node starts shutting down: open SSE streams end.
    pub(crate) closing: watch::Receiver<bool>,
    /// The policy this node enforces, if any; swapped atomically when a newer bundle
    /// arrives. Take it once per request (`api.policy.policy()` or `.current()`).
    pub(crate) policy: Arc<crate::policy_state::PolicyState>,
    /// The audit log (every deny, every policy and fault-injection change).
    pub(crate) audit: crate::audit::Audit,
    /// Publish rate limits and daily quotas of the policy in force.
    pub(crate) limiter: crate::ratelimit::Limiter,
    /// The operators whose signatures this node accepts on bundles (`[policy]`), if any.
    pub(crate) policy_trust: Option<weft_policy::Trust>,
    /// Egress transforms' state on the publish path (`egress.rs`).
    pub(crate) egress: crate::egress::Egress,
    /// Which streams are keyed tables (`tables.rs`).
    pub(crate) tables: crate::tables::Declared,
}

/// An API error: status, reason code (metric label) and message.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    reason: &'static str,
    message: String,
    retry_after: Option<u64>,
    /// The wait to the millisecond when the refusal knows it (a rate limit's bucket):
    /// `retry_after` is whole seconds, too coarse for the edge port's `busy` answers.
    retry_after_ms: Option<u64>,
    /// A publish the store refused part way: how many of its events were taken before
    /// (counted in `weft_publishes_total`; the message says it too).
    accepted: usize,
}

impl ApiError {
    pub(crate) fn new(
        status: StatusCode,
        reason: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            status,
            reason,
            message: message.into(),
            retry_after: None,
            retry_after_ms: None,
            accepted: 0,
        }
    }
}

impl ApiError {
    /// The reason code (the `weft_rejected_total` label), for the edge port's answers.
    pub(crate) fn reason(&self) -> &'static str {
        self.reason
    }

    /// Milliseconds to wait before a retry: the refusal's exact wait when it has one,
    /// else `Retry-After`'s seconds, when the refusal says.
    pub(crate) fn retry_after_ms(&self) -> Option<u64> {
        self.retry_after_ms
            .or_else(|| self.retry_after.map(|s| s.saturating_mul(1000)))
    }

    /// What was wrong.
    pub(crate) fn message(&self) -> &str {
        &self.message
    }

    /// The refusal with `Retry-After: seconds`.
    pub(crate) fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// 503 with `Retry-After: 1`: a bounded resource is full; the client should retry.
    fn overloaded(message: &str) -> Self {
        let mut e = Self::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", message);
        e.retry_after = Some(1);
        e
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"reason": self.reason, "message": self.message}});
        let mut resp = (self.status, axum::Json(body)).into_response();
        if let Some(s) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        resp
    }
}

pub(crate) type ApiResult<T> = Result<T, ApiError>;

tokio::task_local! {
    /// The method and path of the HTTP request being served (set by [`json_errors`]
    /// around every route): what [`Api::refuse`]'s audit entries name.
    static REQUEST_LINE: String;
}

/// A query string, decoded like axum's `Query`, whose refusal is this API's: a JSON 400
/// `bad_query` naming what was wrong, counted (axum's own answers plain text, uncounted).
pub(crate) struct ApiQuery<T>(pub(crate) T);

impl<T: serde::de::DeserializeOwned + Send> axum::extract::FromRequestParts<Arc<Api>>
    for ApiQuery<T>
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        api: &Arc<Api>,
    ) -> Result<Self, ApiError> {
        match Query::<T>::from_request_parts(parts, api).await {
            Ok(Query(q)) => Ok(ApiQuery(q)),
            Err(e) => Err(api.fail(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_query",
                query_error(&e.body_text(), parts.uri.query()),
            ))),
        }
    }
}

/// A query the route takes no parameter of: any is 400 `bad_query` (an `ack=` or `limit=`
/// meant for another route is not dropped in silence).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NoQuery {}

/// The refusal of a query string as a reader can act on: serde's number errors ("invalid
/// digit found in string", "number too large to fit in target type") say what was
/// expected and quote the value given.
fn query_error(text: &str, query: Option<&str>) -> String {
    let msg = text
        .strip_prefix("Failed to deserialize query string: ")
        .unwrap_or(text);
    let Some((field, err)) = msg.split_once(": ") else {
        return msg.to_string();
    };
    let number = ["invalid digit", "too large to fit", "cannot parse integer"]
        .iter()
        .any(|m| err.contains(m));
    let given = query
        .and_then(|q| serde_urlencoded::from_str::<Vec<(String, String)>>(q).ok())
        .and_then(|pairs| pairs.into_iter().find(|(k, _)| k == field).map(|(_, v)| v));
    match (number, given) {
        (true, Some(v)) => format!(
            "{field}: expected a whole number (no sign, at most {}), got {v:?}",
            u64::MAX
        ),
        _ => msg.to_string(),
    }
}

/// Events rendered and waiting for one SSE subscriber's connection.
const SSE_QUEUE_LEN: usize = 16;

/// Log entries one subscription reads at a time.
const SSE_PAGE_LEN: usize = 500;

/// Envelope bytes one subscription reads at a time (at least one event): a page waits
/// in its task while a slow client reads it, so with `limits.subscribers_max` open
/// subscriptions (1024 by default) this bounds what they hold to a few hundred MiB (a
/// page of the general read limit, 8 MiB, would be 8 GiB).
const SSE_PAGE_BYTES_MAX: usize = 256 * 1024;

/// How often a principal's reads of one stream write a `read_filtered` audit entry.
const FILTERED_AUDIT_EVERY: Duration = Duration::from_secs(10);
/// Most (principal, stream) pairs whose `read_filtered` counts wait for their next entry.
const FILTERED_AUDIT_KEYS_MAX: usize = 4096;

/// Longest a CloudEvents publish waits for another request publishing the same event
/// (`ce_claims.rs`) before it is refused with 409 `publish_in_progress`.
const CE_CLAIM_WAIT: Duration = Duration::from_secs(10);

/// A reader under a policy: every event it gets is one the policy lets it read.
pub(crate) struct ReadGuard {
    policy: Arc<weft_policy::Policy>,
    principal: Principal,
    action: weft_policy::Action,
    /// This node: what it may hold under the policy is all it serves.
    me: MemberInfo,
    /// This node placed under `policy` (its granted jurisdiction and replication scopes),
    /// once for every event the guard is asked about.
    placement: weft_policy::Placement,
}

impl ReadGuard {
    pub(crate) fn new(
        policy: Arc<weft_policy::Policy>,
        principal: Principal,
        action: weft_policy::Action,
        me: MemberInfo,
    ) -> Self {
        let placement = policy.placement(&me);
        ReadGuard {
            policy,
            principal,
            action,
            me,
            placement,
        }
    }

    /// A newer policy for an open subscription: this node placed again under it (a
    /// placement's bits are positions in its own policy's tables, and an epoch may no
    /// longer grant this node's claim).
    pub(crate) fn set_policy(&mut self, policy: Arc<weft_policy::Policy>) {
        self.placement = policy.placement(&self.me);
        self.policy = policy;
    }

    /// Whether the principal may read this event: its own stream, tenant and
    /// classification, so a deny rule on a classification holds even for an event whose
    /// stream rule says otherwise, and a tenant-bound principal reads its tenant's events
    /// only. And whether this node may hold it under the policy in force: an epoch that
    /// no longer grants this node's jurisdiction claim (or narrows a class) leaves events
    /// stored here before it that it may no longer serve.
    pub(crate) fn allows(&self, event: &weft_fabric::EventData) -> bool {
        let sec = &event.draft().security;
        self.allows_write(event.stream(), &sec.tenant, &sec.classification)
            && (event.stream().is_system()
                || self.policy.may_hold_at(
                    self.placement,
                    event.stream(),
                    &sec.classification,
                    &sec.residency,
                ))
    }

    /// Whether the principal may read a write to `stream` by `tenant`, classified
    /// `classification` ([`ReadGuard::allows`] for what a table row remembers of a write),
    /// and whether this node may hold writes of that class on that stream under the policy
    /// in force (a revoked jurisdiction claim, a stream classified more narrowly since: a
    /// table row built from such writes is not served here).
    pub(crate) fn allows_write(
        &self,
        stream: &StreamName,
        tenant: &str,
        classification: &str,
    ) -> bool {
        self.policy
            .authorize(&weft_policy::AccessRequest {
                principal: &self.principal.name,
                action: self.action,
                stream,
                tenant,
                classification: Some(classification),
                region: &self.me.region,
            })
            .allowed
            && (stream.is_system()
                || self.policy.may_hold_at(
                    self.placement,
                    stream,
                    classification,
                    &Residency::Unrestricted,
                ))
    }

    /// Whether the principal may read (or subscribe to) `stream` as a whole: its tenant,
    /// the classification of the stream's rule.
    fn stream_decision(&self, stream: &StreamName) -> weft_policy::Decision {
        self.policy.authorize(&weft_policy::AccessRequest {
            principal: &self.principal.name,
            action: self.action,
            stream,
            tenant: &self.principal.tenant,
            classification: self
                .policy
                .stream_rule(stream)
                .map(|r| r.classification.as_str()),
            region: &self.me.region,
        })
    }

    /// The principal reading.
    pub(crate) fn principal(&self) -> &str {
        &self.principal.name
    }

    /// The epoch of the policy the guard reads under.
    pub(crate) fn epoch(&self) -> u64 {
        self.policy.epoch()
    }
}

impl Api {
    /// The log position a cursor of `stream`'s reads names (`None`, absent: the start);
    /// 400 `bad_cursor`, counted, when it is not a token this node gave for that stream.
    /// `field` names where it came from (`after`, `Last-Event-ID`, `cursor`).
    pub(crate) fn cursor_at(
        &self,
        stream: &str,
        field: &str,
        token: Option<&str>,
    ) -> ApiResult<u64> {
        let Some(token) = token else { return Ok(0) };
        self.cursors.open(stream, token).map_err(|e| {
            self.fail(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_cursor",
                format!("{field}: {e}"),
            ))
        })
    }

    pub(crate) fn fail(&self, e: ApiError) -> ApiError {
        self.metrics.reject(e.reason);
        e
    }

    /// A security refusal: counted like every refusal, and written to the audit log with
    /// the principal, stream and policy epoch it concerns.
    pub(crate) fn refuse(
        &self,
        e: ApiError,
        principal: Option<&str>,
        stream: Option<&str>,
        epoch: u64,
    ) -> ApiError {
        // The entry names the request refused (method and path, no query: a token never
        // travels there), so a refusal without a principal or stream still says what was
        // asked.
        let message = match REQUEST_LINE.try_with(Clone::clone) {
            Ok(line) => format!("{} (request {line})", e.message),
            Err(_) => e.message.clone(),
        };
        self.audit.deny(e.reason, principal, stream, epoch, message);
        self.fail(e)
    }

    /// The principal of a bearer token, which must be an admin (`principals[].admin`): a
    /// non-admin gets 403 `not_admin` saying it may not do `what`, counted and audited.
    pub(crate) fn require_admin(&self, headers: &HeaderMap, what: &str) -> ApiResult<Principal> {
        let who = self.authenticate(headers)?;
        if who.admin {
            return Ok(who);
        }
        Err(self.refuse(
            ApiError::new(
                StatusCode::FORBIDDEN,
                "not_admin",
                format!("principal {} may not {what}", who.name),
            ),
            Some(&who.name),
            None,
            self.policy.epoch(),
        ))
    }

    /// Reads of a system stream (`_weft.>`: policy bundles with their token hashes, erase
    /// requests naming keys and principals, agents' voids) are for admins only, with or
    /// without a policy: anyone else gets 403 `system_stream`, counted and audited (a
    /// missing or unknown token 401, as everywhere). Returns whether this is an admin's
    /// read of a system stream (the policy's access rules, which name application streams,
    /// do not apply to it).
    fn check_system_read(
        &self,
        headers: &HeaderMap,
        stream: &StreamName,
        what: &str,
    ) -> ApiResult<bool> {
        if !stream.is_system() {
            return Ok(false);
        }
        let who = self.authenticate(headers)?;
        if who.admin {
            return Ok(true);
        }
        Err(self.refuse(
            ApiError::new(
                StatusCode::FORBIDDEN,
                "system_stream",
                format!(
                    "principal {} may not {what} {}: system streams (_weft.>) are read by admins only",
                    who.name,
                    stream.as_str()
                ),
            ),
            Some(&who.name),
            Some(stream.as_str()),
            self.policy.epoch(),
        ))
    }

    /// The principal of a bearer token. A missing or unknown token is refused and audited.
    pub(crate) fn authenticate(&self, headers: &HeaderMap) -> ApiResult<Principal> {
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Err(self.refuse(
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "missing_token",
                    "this request needs `Authorization: Bearer <token>`",
                ),
                None,
                None,
                self.policy.epoch(),
            ));
        };
        // The scheme is case-insensitive (RFC 9110 11.1): `bearer` is `Bearer`. Another
        // scheme (`Basic`) is refused as such, not as a token that matches no principal.
        let text = value.to_str().unwrap_or("").trim_start();
        let scheme = text.split(' ').next().unwrap_or("");
        if !scheme.eq_ignore_ascii_case("bearer") {
            // Named only when it is a known scheme followed by its credentials: a bare
            // token (no scheme) or `Bearer<TAB>token` would otherwise be quoted into the
            // answer and the audit log.
            const SCHEMES: [&str; 6] = [
                "Basic",
                "Digest",
                "Negotiate",
                "NTLM",
                "Token",
                "AWS4-HMAC-SHA256",
            ];
            let named = SCHEMES
                .iter()
                .find(|k| k.eq_ignore_ascii_case(scheme) && text.len() > scheme.len());
            let what = match named {
                Some(k) => format!("the Authorization scheme is {k}"),
                None => "the Authorization header does not start with `Bearer ` (its value is not quoted here: it may be a token)".to_string(),
            };
            return Err(self.refuse(
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "bad_token",
                    format!("{what}: this API takes `Authorization: Bearer <token>` only"),
                ),
                None,
                None,
                self.policy.epoch(),
            ));
        }
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.trim_start().split_once(' '))
            .map(|(_, t)| t.trim())
            .unwrap_or("");
        let hash = crate::keys::token_hash(token);
        let policy = self.policy.policy();
        if let Some(p) = self.tokens.get(&hash) {
            // The bundle in force manages this principal's token, and it is another one:
            // the bundle rotated it, and the config's copy no longer admits.
            if let Some(policy) = &policy
                && policy.principal_token(&p.name).is_some_and(|t| *t != hash)
            {
                return Err(self.refuse(
                    ApiError::new(
                        StatusCode::UNAUTHORIZED,
                        "token_revoked",
                        format!(
                            "principal {}'s token was replaced by policy epoch {}: use the new one",
                            p.name,
                            policy.epoch()
                        ),
                    ),
                    Some(&p.name),
                    None,
                    policy.epoch(),
                ));
            }
            return Ok(p.clone());
        }
        // A principal the signed bundle gives this token (credentials pushed fabric-wide).
        // One the node's config names keeps what the config says of it (admin, tenant): a
        // rotation through the bundle must not lock an admin out. Others must be bound to a
        // tenant, and are never admins (admins are named in a node's own config).
        if let Some(policy) = &policy
            && let Some(name) = policy.principal_for_token(&hash)
        {
            if let Some(configured) = self.tokens.values().find(|p| p.name == name) {
                return Ok(Principal {
                    token_sha256: hex::encode(hash),
                    ..configured.clone()
                });
            }
            if let Some(tenant) = policy.principal_tenant(name) {
                return Ok(Principal {
                    name: name.to_string(),
                    tenant: tenant.to_string(),
                    token_sha256: hex::encode(hash),
                    admin: false,
                });
            }
        }
        Err(self.refuse(
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "bad_token",
                "the bearer token matches no principal in this node's config or in the policy bundle's (a bundle principal needs a tenant to sign in)",
            ),
            None,
            None,
            self.policy.epoch(),
        ))
    }

    /// Who reads, under the policy in force: without a policy reads stay open (no token
    /// needed, `None`); with one, the token's principal and that policy (one epoch for the
    /// whole request).
    fn read_guard(
        &self,
        headers: &HeaderMap,
        action: weft_policy::Action,
    ) -> ApiResult<Option<ReadGuard>> {
        let Some(policy) = self.policy.policy() else {
            // A token sent anyway is checked: a wrong one is refused (401) here as it is
            // where a token is needed, not taken silently until a policy makes it matter.
            if headers.contains_key(header::AUTHORIZATION) {
                self.authenticate(headers)?;
            }
            return Ok(None);
        };
        let principal = self.authenticate(headers)?;
        Ok(Some(ReadGuard::new(
            policy,
            principal,
            action,
            self.me.clone(),
        )))
    }

    /// Authorizes `action` on one stream for the guard's principal (the stream rule's
    /// classification, the principal's tenant): 403 `read_forbidden` /
    /// `subscribe_forbidden`, counted and audited.
    fn authorize_stream(
        &self,
        guard: &ReadGuard,
        stream: &StreamName,
        what: &str,
    ) -> ApiResult<()> {
        let decision = guard.stream_decision(stream);
        if decision.allowed {
            return Ok(());
        }
        let reason = match guard.action {
            weft_policy::Action::Subscribe => "subscribe_forbidden",
            _ => "read_forbidden",
        };
        let epoch = guard.policy.epoch();
        Err(self.refuse(
            ApiError::new(
                StatusCode::FORBIDDEN,
                reason,
                format!(
                    "principal {} may not {what} {} (policy epoch {epoch}): {}",
                    guard.principal.name,
                    stream.as_str(),
                    decision.reason
                ),
            ),
            Some(&guard.principal.name),
            Some(stream.as_str()),
            epoch,
        ))
    }

    pub(crate) fn with_reader<T>(
        &self,
        f: impl FnOnce(&StoreReader) -> ApiResult<T>,
    ) -> ApiResult<T> {
        let reader = self.readers.lock().ok().and_then(|mut r| r.pop());
        let reader = match reader {
            Some(r) => r,
            None => StoreReader::open(&self.data_dir).map_err(|e| {
                self.fail(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    format!("opening a store reader: {e}"),
                ))
            })?,
        };
        let out = f(&reader);
        if let Ok(mut r) = self.readers.lock()
            && r.len() < self.read_slots_max
        {
            r.push(reader);
        }
        out
    }
}

/// The reason of a read refused because every read slot stayed taken: callers that can
/// wait (SSE, the edge downlink) wait on it instead of ending.
pub(crate) const READS_BUSY: &str = "reads_busy";

/// How long a store read waits for a slot (`limits.reads_inflight_max`) before 503.
const READ_SLOT_WAIT: Duration = Duration::from_secs(5);

/// A slot of `slots` for one store read, waiting up to `wait`; then 503 `reads_busy` with
/// Retry-After (the caller counts it).
async fn read_slot(
    slots: &Arc<tokio::sync::Semaphore>,
    wait: Duration,
) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
    match tokio::time::timeout(wait, slots.clone().acquire_owned()).await {
        Ok(Ok(permit)) => Ok(permit),
        _ => {
            let mut e = ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                READS_BUSY,
                format!(
                    "every read slot stayed taken for {} s (limits.reads_inflight_max); retry shortly",
                    wait.as_secs()
                ),
            );
            e.retry_after = Some(1);
            Err(e)
        }
    }
}

/// Runs `f` on a store reader off the async workers, holding a read slot. A store failure
/// is a 500 `store_error`, counted.
pub(crate) async fn read_store<T, F>(api: &Arc<Api>, f: F) -> ApiResult<T>
where
    T: Send + 'static,
    F: FnOnce(&StoreReader) -> Result<T, weft_fabric::mesh::StoreError> + Send + 'static,
{
    read_store_held(api, f).await.map(|(v, _slot)| v)
}

/// [`read_store`], handing back the read slot with the result: a caller that renders
/// what it read (a page of up to `read_limit_max` envelopes) holds the slot until the
/// answer is built, so the slots bound that memory too.
pub(crate) async fn read_store_held<T, F>(
    api: &Arc<Api>,
    f: F,
) -> ApiResult<(T, tokio::sync::OwnedSemaphorePermit)>
where
    T: Send + 'static,
    F: FnOnce(&StoreReader) -> Result<T, weft_fabric::mesh::StoreError> + Send + 'static,
{
    let slot = read_slot(&api.read_slots, READ_SLOT_WAIT)
        .await
        .map_err(|e| api.fail(e))?;
    let api2 = api.clone();
    // The slot moves into the blocking task: a request dropped while it runs (the client
    // went away) keeps it taken until the read is done.
    let out = tokio::task::spawn_blocking(move || {
        let read = api2.with_reader(|r| {
            f(r).map_err(|e| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "store_error",
                    e.to_string(),
                )
            })
        });
        read.map(|v| (v, slot))
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()));
    match out {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) | Err(e) => Err(api.fail(e)),
    }
}

/// The router.
pub(crate) fn router(api: Arc<Api>, body_max: usize) -> Router {
    // The data plane: closed while the node waits for its first policy (`policy_gate`).
    let data = Router::new()
        .route(
            "/v1/events",
            post(publish_any).layer(axum::middleware::from_fn_with_state(
                api.clone(),
                bound_publish_bytes,
            )),
        )
        .route("/v1/events/{id}", get(event_by_id))
        .route(
            "/v1/streams/{stream}/events",
            post(publish_stream)
                .layer(axum::middleware::from_fn_with_state(
                    api.clone(),
                    bound_publish_bytes,
                ))
                .get(read_events),
        )
        .route("/v1/streams/{stream}/subscribe", get(subscribe))
        .route(
            "/v1/streams/{stream}/subscriptions/{name}/ack",
            post(ack_subscription),
        )
        .route(
            "/v1/streams/{stream}/subscriptions/{name}",
            axum::routing::delete(delete_subscription),
        )
        .route("/v1/tables/{stream}", get(crate::tables::list))
        .route(
            "/v1/tables/{stream}/{key}",
            get(crate::tables::get_key)
                .put(crate::tables::put)
                .delete(crate::tables::delete),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            api.clone(),
            policy_gate,
        ));
    Router::new()
        .merge(data)
        .route("/v1/mesh/peers", get(peers))
        .route("/v1/mesh/routes", get(routes))
        .route("/v1/mesh/nodes", get(mesh_nodes))
        .route(
            "/v1/policy",
            admin_post(&api, policy_push, POLICY_BODY_LEN_MAX).get(policy_get),
        )
        .route("/v1/policy/bundle", get(policy_bundle))
        .route("/v1/erase", admin_post(&api, erase, ADMIN_BODY_LEN_MAX))
        .route("/v1/status", get(status))
        .route("/v1/subscriptions", get(list_subscriptions))
        .route(
            "/v1/chaos",
            admin_post(&api, chaos_set, ADMIN_BODY_LEN_MAX).get(chaos_get),
        )
        .route("/v1/audit", get(audit_get))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(crate::dashboard::routes())
        .layer(axum::middleware::from_fn_with_state(
            api.clone(),
            json_errors,
        ))
        .layer(DefaultBodyLimit::max(body_max))
        .with_state(api)
}

/// Largest body of a policy push, bytes: twice the largest signed bundle, so a bundle
/// over that gets the handler's own refusal (`bundle_oversize`, naming the limit).
const POLICY_BODY_LEN_MAX: usize = 2 * weft_policy::limits::BUNDLE_LEN_MAX;

/// Largest body of an admin request other than a policy bundle (an erase request, fault
/// injection rules), bytes.
const ADMIN_BODY_LEN_MAX: usize = 64 << 10;

/// `POST handler` for an admin-only request with a body: the admin token checked first
/// ([`admin_first`]) and the body held to `len_max` bytes.
fn admin_post<H, T>(
    api: &Arc<Api>,
    handler: H,
    len_max: usize,
) -> axum::routing::MethodRouter<Arc<Api>>
where
    H: axum::handler::Handler<T, Arc<Api>>,
    T: 'static,
{
    post(handler)
        .layer::<_, Infallible>(axum::middleware::from_fn_with_state(
            api.clone(),
            admin_first,
        ))
        .layer::<_, Infallible>(DefaultBodyLimit::max(len_max))
}

/// For admin-only requests with a body: the admin token is checked before the body is
/// read (a client without one got its whole body, up to `http_body_max`, read into memory
/// first). Each such route also holds its body to a limit of its own (`DefaultBodyLimit`).
async fn admin_first(
    State(api): State<Arc<Api>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let what = format!(
        "make admin request {} {} (principals[].admin)",
        req.method(),
        req.uri().path()
    );
    match api.require_admin(req.headers(), &what) {
        Ok(_) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

/// One open subscription counted against its principal's share
/// (`limits.subscribers_per_principal_max`); given back when dropped.
pub(crate) struct PrincipalSubscription {
    api: Arc<Api>,
    principal: String,
}

impl PrincipalSubscription {
    /// Takes one of `principal`'s subscriptions, or refuses: 429 `too_many_subscriptions`,
    /// naming the limit, counted.
    fn take(api: &Arc<Api>, principal: String) -> ApiResult<Self> {
        let mut open = api
            .subscribers_by_principal
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = open.entry(principal.clone()).or_default();
        if *n >= api.subscribers_per_principal_max {
            let who = if principal.is_empty() {
                "readers without a token".to_string()
            } else {
                format!("principal {principal}")
            };
            let mut e = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_subscriptions",
                format!(
                    "{who} already hold{} {n} subscriptions (limits.subscribers_per_principal_max)",
                    if principal.is_empty() { "" } else { "s" }
                ),
            );
            e.retry_after = Some(5);
            return Err(api.fail(e));
        }
        *n += 1;
        Ok(Self {
            api: api.clone(),
            principal,
        })
    }
}

impl Drop for PrincipalSubscription {
    fn drop(&mut self) {
        let mut open = self
            .api
            .subscribers_by_principal
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.principal) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.principal);
            }
        }
    }
}

/// Closes the data plane while the node trusts operator keys but holds no policy
/// ([`crate::policy_state::PolicyState::pending`]): 503 `policy_pending` with Retry-After,
/// counted and audited. Status, metrics, the policy endpoints (to push the first bundle)
/// and erase stay open.
async fn policy_gate(
    State(api): State<Arc<Api>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if !api.policy.pending() {
        return next.run(req).await;
    }
    let mut e = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        POLICY_PENDING,
        "this node trusts operator keys ([policy] operators) but has no policy bundle in force yet: it serves no publishes or reads until one arrives (weft policy push, or policy.bundle in its config)",
    );
    e.retry_after = Some(5);
    api.refuse(e, None, None, 0).into_response()
}

/// The reason of a request refused because the node waits for its first policy.
pub(crate) const POLICY_PENDING: &str = "policy_pending";

/// Publish bodies in progress are bounded in bytes before they are read: the request takes
/// its declared length (Content-Length; `limits.http_body_max` when it declares none) from
/// `limits.publish_bytes_inflight_max` and gives it back with the answer, so everything a
/// publish keeps (the body, its parsed and signed events, the driver's queue) scales with a
/// fixed budget, not with how many clients send at once. Beyond it: 503 `overloaded` with
/// Retry-After, counted.
async fn bound_publish_bytes(
    State(api): State<Arc<Api>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    // Only a publisher the node knows takes from the budget: a client without a valid
    // token could otherwise hold all of it with bodies it never finishes sending, and
    // every tenant's publishes would be 503 meanwhile. (The handler authenticates again:
    // a hash and a map lookup.)
    if let Err(e) = api.authenticate(req.headers()) {
        return e.into_response();
    }
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(api.body_max)
        .min(api.body_max);
    let kib = u32::try_from(declared.div_ceil(1024).max(1)).unwrap_or(u32::MAX);
    let Ok(permit) = api.body_budget.clone().try_acquire_many_owned(kib) else {
        // Read the body chunk by chunk and drop it (at most `http_body_max`): answering
        // before it is read would make HTTP/1.1 close the connection under a client still
        // sending, which then sees a reset instead of the 503.
        let mut body = req.into_body().into_data_stream();
        let mut drained = 0usize;
        while drained <= api.body_max
            && let Some(Ok(chunk)) = futures_util::StreamExt::next(&mut body).await
        {
            drained += chunk.len();
        }
        return api
            .fail(ApiError::overloaded(
                "publish bodies in progress are at limits.publish_bytes_inflight_max; retry shortly",
            ))
            .into_response();
    };
    let resp = next.run(req).await;
    drop(permit);
    resp
}

/// Every refusal is this API's JSON error, counted: the answers axum and its extractors
/// give by themselves (an unknown route 404, a wrong method 405, a path segment that is not
/// UTF-8 400, a body over `limits.http_body_max` 413, a JSON body of the wrong shape
/// 400/415/422) are plain text and were counted nowhere. `/readyz` keeps its plain 503 (not
/// a client error, so not rewritten): a probe's answer, not a refusal.
async fn json_errors(
    State(api): State<Arc<Api>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    // The request line, for the audit entries the request's refusals write: the route's
    // template (`/v1/tables/{stream}/{key}`), not the path, whose segments may be personal
    // data (a table key) that an erase must not leave behind in the audit log.
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(
            || "an unknown route".to_string(),
            |m| m.as_str().to_string(),
        );
    let resp = REQUEST_LINE
        .scope(format!("{method} {route}"), next.run(req))
        .await;
    let status = resp.status();
    let json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    // `/readyz`'s own 503 is not a client error: a wrong method on it is refused as on any
    // route (it was an empty 405, counted nowhere).
    if json || !(status.is_client_error()) {
        return resp;
    }
    let (reason, message) = match status {
        StatusCode::NOT_FOUND => (
            "no_such_route",
            format!("no route {method} {path}: the API is listed in docs/node.md"),
        ),
        StatusCode::METHOD_NOT_ALLOWED => (
            "method_not_allowed",
            format!("{path} does not take {method}: the API is listed in docs/node.md"),
        ),
        StatusCode::PAYLOAD_TOO_LARGE => (
            "body_too_large",
            format!(
                "the request body is over limits.http_body_max = {} bytes",
                api.body_max
            ),
        ),
        _ => {
            // The extractor's own text says what was wrong (bounded: it is axum's).
            let body = axum::body::to_bytes(resp.into_body(), 4096)
                .await
                .unwrap_or_default();
            let text = String::from_utf8_lossy(&body).trim().to_string();
            let reason = if text.contains("path") || text.contains("URL") {
                "bad_path"
            } else {
                "bad_request"
            };
            return api
                .fail(ApiError::new(
                    status,
                    reason,
                    format!("{method} {path}: {text}"),
                ))
                .into_response();
        }
    };
    api.fail(ApiError::new(status, reason, message))
        .into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishQuery {
    ack: Option<String>,
}

async fn publish_any(
    State(api): State<Arc<Api>>,
    ApiQuery(q): ApiQuery<PublishQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    publish(api, None, q, headers, body).await
}

async fn publish_stream(
    State(api): State<Arc<Api>>,
    Path(stream): Path<String>,
    ApiQuery(q): ApiQuery<PublishQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    publish(api, Some(stream), q, headers, body).await
}

fn media_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default()
}

async fn publish(
    api: Arc<Api>,
    path_stream: Option<String>,
    q: PublishQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match publish_inner(&api, path_stream, q, headers, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn publish_inner(
    api: &Arc<Api>,
    path_stream: Option<String>,
    q: PublishQuery,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let started = Instant::now();
    let ack = match q.ack.as_deref() {
        None => Ack::Local,
        Some(a) => Ack::parse(a)
            .map_err(|m| api.fail(ApiError::new(StatusCode::BAD_REQUEST, "bad_ack", m)))?,
    };
    let path_stream = match path_stream {
        Some(s) => Some(StreamName::new(s.clone()).map_err(|e| {
            api.fail(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_stream",
                format!("stream {s:?}: {e}"),
            ))
        })?),
        None => None,
    };
    let principal = api.authenticate(&headers)?;
    // Held until the answer: bounds everything kept per waiting publish.
    let _inflight = api.inflight.clone().try_acquire_owned().map_err(|_| {
        api.fail(ApiError::overloaded(
            "too many publishes in progress (limits.publishes_inflight_max); retry shortly",
        ))
    })?;
    let media = media_type(&headers);
    if media == WEFT_CBOR {
        let event = presigned(api, &principal, &body, path_stream.as_ref())?;
        let s = event.security();
        ack_reachable(
            api,
            api.policy.policy().as_deref(),
            ack,
            0,
            (event.stream(), &s.classification, &s.residency),
        )?;
        hlc_check(api, &principal.name, &event).await?;
        table_write_check(api, &principal.name, &event).await?;
        let charge = match api.policy.policy() {
            Some(policy) => Some(enforce_rate(
                api,
                &policy,
                &principal,
                1,
                body.len() as u64,
                event.stream().as_str(),
            )?),
            None => None,
        };
        let out = submit(api, vec![Arc::new(event)], vec![None], ack, started).await;
        if out.is_ok() {
            api.metrics.published("cbor", 1);
            if let Some(c) = charge {
                c.keep();
            }
        }
        return out;
    }
    let pairs: Vec<(&str, &[u8])> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_bytes()))
        .collect();
    let incoming = cloudevents::parse_http(pairs, &body).map_err(|e| {
        api.fail(ApiError::new(
            StatusCode::BAD_REQUEST,
            e.reason(),
            e.to_string(),
        ))
    })?;
    let trace = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(|t| TraceContext {
            traceparent: t.to_string(),
            tracestate: headers
                .get("tracestate")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
        })
        .filter(|t| t.check().is_ok());

    // A CloudEvent is identified by its source and id: the same pair twice in one request
    // is one event sent twice, which the store's idempotency record (written at the
    // commit) could not catch within the request. Refused, naming both.
    {
        let mut first: HashMap<(&str, &str), usize> = HashMap::new();
        for (j, e) in incoming.iter().enumerate() {
            if let Some(i) = first.insert((e.source.as_str(), e.id.as_str()), j) {
                return Err(api.fail(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "duplicate_in_batch",
                    format!(
                        "event {j} has the source and id of event {i} ({:?}, {:?}): a CloudEvent is identified by them; send it once",
                        e.source, e.id
                    ),
                )));
            }
        }
    }
    // Idempotent publish, in flight: while another request of this principal publishes
    // one of these events, wait for it to finish (`ce_claims.rs`), so the lookup below
    // finds its record instead of both storing the event.
    let claim = api
        .ce_claims
        .claim(
            incoming
                .iter()
                .map(|e| (principal.name.clone(), e.source.clone(), e.id.clone()))
                .collect(),
            CE_CLAIM_WAIT,
        )
        .await
        .map_err(|(_, source, id)| {
            let mut e = ApiError::new(
                StatusCode::CONFLICT,
                "publish_in_progress",
                format!(
                    "another request is still publishing the event with source {source:?} and id {id:?} after {} s; retry to get its answer",
                    CE_CLAIM_WAIT.as_secs()
                ),
            );
            e.retry_after = Some(1);
            api.fail(e)
        })?;
    // Idempotent publish: a CloudEvent already accepted from this principal (same source
    // and id) is answered with the stored event's id, not stored twice.
    let mut fresh: Vec<IncomingEvent> = Vec::new();
    // Each fresh event's index in the request, for messages that name it.
    let mut fresh_at: Vec<usize> = Vec::new();
    let mut known: Vec<(usize, String)> = Vec::new();
    {
        // Each event's source and id, and the stream and payload it would be stored with,
        // to tell a retry (the same event again) from another event under the same
        // identity.
        let keys: Vec<(String, String, Option<StreamName>, Vec<u8>)> = incoming
            .iter()
            .map(|e| {
                (
                    e.source.clone(),
                    e.id.clone(),
                    path_stream.clone().or_else(|| e.stream.clone()),
                    e.to_payload(),
                )
            })
            .collect();
        let name = principal.name.clone();
        let found = read_store(api, move |r| {
            keys.iter()
                .map(|(s, i, stream, payload)| {
                    let Some(id) = r.ce_dedup_get(&name, s, i)? else {
                        return Ok(None);
                    };
                    let stored = r.event_by_id(&id)?;
                    Ok(Some((
                        id,
                        stored_elsewhere(stored.as_deref(), stream, payload),
                    )))
                })
                .collect::<Result<Vec<_>, weft_fabric::mesh::StoreError>>()
        })
        .await?;
        for (i, (event, seen)) in incoming.into_iter().zip(found).enumerate() {
            match seen {
                Some((id, Some(differs))) => {
                    return Err(api.fail(ApiError::new(
                        StatusCode::CONFLICT,
                        "event_id_reused",
                        format!(
                            "event {i}: source {:?} and id {:?} were already published by {} as event {id} {differs}; a CloudEvent is identified by its source and id, so this is not a retry of it: give a different event another id",
                            event.source, event.id, principal.name
                        ),
                    )));
                }
                Some((id, None)) => known.push((i, id.to_string())),
                None => {
                    fresh.push(event);
                    fresh_at.push(i);
                }
            }
        }
    }

    let mut drafts = Vec::with_capacity(fresh.len());
    let mut dedup = Vec::with_capacity(fresh.len());
    let mut payload_bytes = 0u64;
    // One epoch for the whole request, even if a newer bundle lands meanwhile.
    let policy = api.policy.policy();
    for (e, &i) in fresh.iter().zip(&fresh_at) {
        let stream = match (&path_stream, &e.stream) {
            (Some(p), Some(w)) if p != w => {
                return Err(api.fail(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "stream_mismatch",
                    format!(
                        "event {i}: weftstream {} differs from the path's stream {}",
                        w.as_str(),
                        p.as_str()
                    ),
                )));
            }
            (Some(p), _) => p.clone(),
            (None, Some(w)) => w.clone(),
            (None, None) => {
                return Err(api.fail(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "missing_stream",
                    format!("event {i}: no stream: POST to /v1/streams/{{stream}}/events or set the weftstream attribute"),
                )));
            }
        };
        check_stored(api, &principal.name, &stream)?;
        let (classification, residency) = match &policy {
            None => ("internal".to_string(), Residency::Unrestricted),
            Some(policy) => enforce_publish(api, policy, &principal, &stream, i)?,
        };
        ack_reachable(
            api,
            policy.as_deref(),
            ack,
            i,
            (&stream, &classification, &residency),
        )?;
        drafts.push(EventDraft {
            stream,
            key: e.key.as_ref().map(|k| k.as_bytes().to_vec()),
            seq: 0,
            hlc: weft_fabric::Hlc::new(0, 0).unwrap_or_else(|_| unreachable!("zero HLC")),
            security: SecurityContext {
                tenant: principal.tenant.clone(),
                principal: principal.name.clone(),
                classification,
                residency,
                scopes: BTreeSet::new(),
                policy_epoch: policy.as_ref().map_or(0, |p| p.epoch()),
            },
            content_type: CE_JSON.into(),
            payload: Payload::Clear({
                let p = e.to_payload();
                payload_bytes += p.len() as u64;
                p
            }),
            trace: trace.clone(),
        });
        dedup.push(Some((
            principal.name.clone(),
            e.source.clone(),
            e.id.clone(),
        )));
    }
    // A keyed event on a table stream is a put without a version (on a multi-value
    // table, a sibling): refused where the table would ignore it or is full.
    for d in &drafts {
        crate::tables::write_refusal(
            api,
            &d.stream,
            d.key.as_deref(),
            &d.content_type,
            &d.payload,
        )
        .await?
        .map_err(|e| api.fail(e))?;
    }
    // Rate limits and quotas: every event of the request fits, or none is taken.
    let charge = match (&policy, drafts.first()) {
        (Some(policy), Some(first)) => {
            let stream = first.stream.as_str().to_string();
            Some(enforce_rate(
                api,
                policy,
                &principal,
                drafts.len() as u64,
                payload_bytes,
                &stream,
            )?)
        }
        _ => None,
    };
    let new_events = drafts.len();
    // Already-known events are on this node's disk; when the request asks for more
    // regions, they are confirmed as a pre-signed resend is (the driver asks the other
    // regions for them), not answered complete unchecked.
    let known_out = if known.is_empty() {
        None
    } else if matches!(ack, Ack::Regions(n) if n > 1) {
        Some(confirm_known(api, &known, ack, started).await?)
    } else {
        Some(Published {
            ids: known.iter().map(|(_, id)| id.clone()).collect(),
            durable_local: true,
            regions: vec![api.me.region.to_string()],
            regions_min: 1,
            complete: true,
            derived: Vec::new(),
        })
    };
    if drafts.is_empty() {
        let out = known_out.unwrap_or(Published {
            ids: Vec::new(),
            durable_local: true,
            regions: vec![],
            regions_min: 0,
            complete: true,
            derived: Vec::new(),
        });
        return Ok(published_response(&out, out.complete));
    }
    // The claim goes with the events to the driver, which releases it after the commit
    // that writes their idempotency records: whether the answer is an error, comes before
    // the commit (`ack=none`) or the client has gone, a request waiting on it then finds
    // them.
    let mut out = sign_and_send(api, policy, drafts, dedup, Some(claim), ack, started)
        .await
        .inspect_err(|e| api.metrics.published("cloudevents", e.accepted))?;
    api.metrics.published("cloudevents", new_events);
    if let Some(c) = charge {
        c.keep();
    }
    if let Some(k) = known_out {
        // Ids of already-known events go back in request order.
        for ((i, _), id) in known.iter().zip(k.ids) {
            out.ids.insert((*i).min(out.ids.len()), id);
        }
        out.durable_local &= k.durable_local;
        out.regions.retain(|r| k.regions.contains(r));
        out.regions_min = out.regions_min.min(k.regions_min);
        out.complete &= k.complete;
    }
    Ok(published_response(&out, out.complete))
}

/// How the event stored under a CloudEvent's identity differs from the one being published
/// again (`stream`, `payload`): on another stream, or with other content (`None`: the same,
/// a retry, or not stored any more, which the caller answers as it always has).
fn stored_elsewhere(
    stored: Option<&[u8]>,
    stream: &Option<StreamName>,
    payload: &[u8],
) -> Option<String> {
    let event = weft_fabric::decode(stored?).ok()?;
    let data = event.claimed_data();
    if let Some(stream) = stream
        && data.stream() != stream
    {
        return Some(format!("on stream {}", data.stream().as_str()));
    }
    match data.payload() {
        Payload::Clear(bytes) if bytes.as_slice() != payload => Some(format!(
            "on stream {} with other content",
            data.stream().as_str()
        )),
        _ => None,
    }
}

/// Confirms already-accepted CloudEvents (answered by idempotency) at the request's ack
/// level: their stored envelopes go through the pre-signed resend path, which the driver
/// confirms in the regions that hold them. An event no longer stored (erased, or past
/// retention) cannot be confirmed: the answer is not complete.
async fn confirm_known(
    api: &Arc<Api>,
    known: &[(usize, String)],
    ack: Ack,
    started: Instant,
) -> ApiResult<Published> {
    let ids: Vec<String> = known.iter().map(|(_, id)| id.clone()).collect();
    let wanted: Vec<weft_fabric::EventId> = ids
        .iter()
        .filter_map(|id| crate::config::hex32("id", id).ok())
        .map(weft_fabric::EventId)
        .collect();
    let found = read_store(api, move |r| {
        wanted
            .iter()
            .map(|id| r.event_by_id(id))
            .collect::<Result<Vec<_>, _>>()
    })
    .await?;
    let unconfirmable = |ids| Published {
        ids,
        durable_local: true,
        regions: vec![api.me.region.to_string()],
        regions_min: 1,
        complete: false,
        derived: Vec::new(),
    };
    if found.len() < ids.len() || found.iter().any(Option::is_none) {
        return Ok(unconfirmable(ids));
    }
    let mut events = Vec::with_capacity(found.len());
    for bytes in found.into_iter().flatten() {
        let corrupt = |e: String| {
            api.fail(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "store_corrupt",
                format!("a stored event fails its checks: {e}"),
            ))
        };
        let event = weft_fabric::decode(&bytes)
            .map_err(|e| corrupt(e.to_string()))?
            .verify()
            .map_err(|e| corrupt(e.to_string()))?;
        events.push(Arc::new(event));
    }
    let (reply, rx) = tokio::sync::oneshot::channel();
    let permit = reserve(api)?;
    let n = events.len();
    crate::egress::send_presigned(api, permit, events, vec![None; n], ack, started, reply).await;
    wait_published(api, rx).await
}

/// Read authorization of one stream under the policy in force (none without a policy),
/// for the keyed tables: the token's principal, the stream rule's classification; 403
/// `read_forbidden`, counted and audited.
/// Returns the reader's guard (`None`: no policy in force, every write is visible), for the
/// per-write filter of table reads (`tables.rs`).
pub(crate) fn authorize_read(
    api: &Api,
    headers: &HeaderMap,
    stream: &StreamName,
) -> ApiResult<Option<ReadGuard>> {
    match api.read_guard(headers, weft_policy::Action::Read)? {
        None => Ok(None),
        Some(guard) => {
            api.authorize_stream(&guard, stream, "read the table")?;
            Ok(Some(guard))
        }
    }
}

/// Publishes one keyed event carrying `payload` (a table operation, `tables.rs`) for the
/// token's principal: the same checks as any publish (stream stored, access rules,
/// residency stamping, inflight bound), signed by this node, acknowledged at `ack`.
pub(crate) async fn publish_op(
    api: &Arc<Api>,
    headers: &HeaderMap,
    stream: StreamName,
    key: Vec<u8>,
    content_type: &str,
    payload: Vec<u8>,
    ack: Option<&str>,
) -> ApiResult<Response> {
    let started = Instant::now();
    let ack = match ack {
        None => Ack::Local,
        Some(a) => Ack::parse(a)
            .map_err(|m| api.fail(ApiError::new(StatusCode::BAD_REQUEST, "bad_ack", m)))?,
    };
    let principal = api.authenticate(headers)?;
    let _inflight = api.inflight.clone().try_acquire_owned().map_err(|_| {
        api.fail(ApiError::overloaded(
            "too many publishes in progress (limits.publishes_inflight_max); retry shortly",
        ))
    })?;
    check_stored(api, &principal.name, &stream)?;
    let policy = api.policy.policy();
    let mut charge = None;
    let (classification, residency) = match &policy {
        None => ("internal".to_string(), Residency::Unrestricted),
        Some(p) => {
            let stamped = enforce_publish(api, p, &principal, &stream, 0)?;
            charge = Some(enforce_rate(
                api,
                p,
                &principal,
                1,
                payload.len() as u64,
                stream.as_str(),
            )?);
            stamped
        }
    };
    ack_reachable(
        api,
        policy.as_deref(),
        ack,
        0,
        (&stream, &classification, &residency),
    )?;
    let draft = EventDraft {
        stream,
        key: Some(key),
        seq: 0,
        hlc: weft_fabric::Hlc::new(0, 0).unwrap_or_else(|_| unreachable!("zero HLC")),
        security: SecurityContext {
            tenant: principal.tenant.clone(),
            principal: principal.name.clone(),
            classification,
            residency,
            scopes: BTreeSet::new(),
            policy_epoch: policy.as_ref().map_or(0, |p| p.epoch()),
        },
        content_type: content_type.to_string(),
        payload: Payload::Clear(payload),
        trace: None,
    };
    let out = sign_and_send(api, policy, vec![draft], vec![None], None, ack, started).await?;
    api.metrics.published("table", 1);
    if let Some(c) = charge {
        c.keep();
    }
    Ok(published_response(&out, out.complete))
}

/// Signs drafts with this node's key and sequence and hands them to the driver, with the
/// derivatives of `policy`'s egress transforms; returns what the publish achieved at the
/// requested ack level.
pub(crate) async fn sign_and_send(
    api: &Arc<Api>,
    policy: Option<Arc<weft_policy::Policy>>,
    drafts: Vec<EventDraft>,
    dedup: Vec<Option<(String, String, String)>>,
    claim: Option<crate::ce_claims::Claim>,
    ack: Ack,
    started: Instant,
) -> ApiResult<Published> {
    // A full store would refuse the events after they were signed: refuse now, with
    // nothing signed (a number refused after signing is voided, not a hole, but it is
    // still a number spent).
    if api.store_full.load(std::sync::atomic::Ordering::Relaxed)
        && !drafts.iter().all(|d| d.stream.is_system())
    {
        // Counted once per event refused, as the driver counts those it refuses.
        api.metrics.reject_n("store_refused", drafts.len() as u64);
        return Err(ApiError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            "store_refused",
            format!(
                "the node's store is full (limits.events_max = {}): nothing was signed or stored",
                api.events_max
            ),
        ));
    }
    own_numbers_known(api).await;
    // Reserve the driver's queue before signing: an event signed with a sequence number
    // must reach the core, or its origin's later events would wait for it forever.
    let permit = reserve(api)?;
    let api2 = api.clone();
    let (reply, rx) = tokio::sync::oneshot::channel();
    let gate = api.sign_gate.lock().await;
    let signed = tokio::task::spawn_blocking(move || -> Result<(), String> {
        let mut p = api2
            .producer
            .lock()
            .map_err(|_| "producer lock poisoned".to_string())?;
        // All or nothing: the sequence advances only once every event of the request is
        // signed, and then all of them go to the core (the permit cannot fail), so a
        // refused event never leaves a gap in this node's sequence.
        let base = p.last_seq(&api2.own_numbers);
        let mut stamped = Vec::with_capacity(drafts.len());
        for (i, mut d) in drafts.into_iter().enumerate() {
            let hlc = p.stamp().map_err(|e| e.to_string())?;
            d.seq = base + i as u64 + 1;
            d.hlc = hlc;
            stamped.push(d);
        }
        let events = sign_all(&p.signer, stamped)?;
        p.next_seq = base + events.len() as u64;
        // Egress transforms: derivatives signed right after their sources, sent with them.
        let derived = match &policy {
            Some(policy) => crate::egress::derive(&api2, policy, &events, &mut p),
            None => Vec::new(),
        };
        permit.send(Command::Publish {
            events,
            derived,
            ack,
            dedup,
            claim,
            started,
            reply,
        });
        Ok(())
    })
    .await;
    drop(gate);
    match signed {
        Ok(Ok(())) => {}
        Ok(Err(m)) => {
            return Err(api.fail(ApiError::new(StatusCode::BAD_REQUEST, "bad_event", m)));
        }
        Err(e) => {
            return Err(api.fail(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                e.to_string(),
            )));
        }
    }
    wait_published(api, rx).await
}

/// Fewest events per signing thread: below it a thread costs more than it saves.
const SIGN_CHUNK_MIN: usize = 64;

/// Signs `drafts` in order, a large batch on several threads: Ed25519 is the largest cost
/// of a publish (about 20 µs an event on this project's machines, docs/performance.md) and
/// the events of one request are independent once numbered. Error messages name the
/// event's index in the request.
fn sign_all(
    signer: &weft_fabric::Signer,
    drafts: Vec<EventDraft>,
) -> Result<Vec<Arc<weft_fabric::Event>>, String> {
    let parts = crate::parts::in_parts(drafts, SIGN_CHUNK_MIN, |first, part| {
        part.into_iter()
            .enumerate()
            .map(|(j, d)| {
                signer
                    .sign(d)
                    .map(Arc::new)
                    .map_err(|e| format!("event {}: {e}", first + j))
            })
            .collect::<Result<Vec<_>, String>>()
    })
    .ok_or_else(|| "a signing thread panicked".to_string())?;
    let mut out = Vec::new();
    for part in parts {
        out.extend(part?);
    }
    Ok(out)
}

/// A node accepts publishes only on streams it stores: an event it signs or takes in must
/// be durable here before it is acknowledged or sent on.
pub(crate) fn check_stored(api: &Api, principal: &str, stream: &StreamName) -> ApiResult<()> {
    stored_here(api, stream).map_err(|e| {
        if e.reason() == "system_stream" {
            api.refuse(
                e,
                Some(principal),
                Some(stream.as_str()),
                api.policy.epoch(),
            )
        } else {
            api.fail(e)
        }
    })
}

/// [`check_stored`]'s check, neither counted nor audited.
pub(crate) fn stored_here(api: &Api, stream: &StreamName) -> Result<(), ApiError> {
    if stream.is_system() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "system_stream",
            format!(
                "{} is a system stream (first token `_weft`): only nodes publish there (policy bundles go through POST /v1/policy)",
                stream.as_str()
            ),
        ));
    }
    if api.streams.iter().any(|p| p.matches(stream)) {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::BAD_REQUEST,
        "stream_not_stored",
        format!(
            "this node does not store {} (config `streams`), so it cannot make it durable; publish through a node that does",
            stream.as_str()
        ),
    ))
}

fn presigned(
    api: &Api,
    principal: &Principal,
    body: &[u8],
    path_stream: Option<&StreamName>,
) -> ApiResult<Event> {
    let unverified = weft_fabric::decode(body).map_err(|e| {
        api.fail(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_envelope",
            e.to_string(),
        ))
    })?;
    let id = unverified.id().to_string();
    // The stream it claims, unverified: the audit names where it was aimed.
    let claimed = unverified.claimed_data().stream().as_str().to_string();
    let event = unverified.verify().map_err(|e| {
        api.audit.record(
            crate::audit::Entry::now(
                crate::audit::Decision::Deny,
                "bad_signature",
                api.policy.epoch(),
                format!("pre-signed event refused: {e}"),
            )
            .principal(&principal.name)
            .stream(&claimed)
            .event(id),
        );
        api.fail(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_signature",
            e.to_string(),
        ))
    })?;
    check_stored(api, &principal.name, event.stream())?;
    crate::egress::check_presigned(&event).map_err(|m| {
        api.fail(ApiError::new(
            StatusCode::BAD_REQUEST,
            "reserved_content_type",
            m,
        ))
    })?;
    if let Some(s) = path_stream
        && event.stream() != s
    {
        return Err(api.fail(ApiError::new(
            StatusCode::BAD_REQUEST,
            "stream_mismatch",
            format!(
                "the envelope's stream {} differs from the path's {}",
                event.stream().as_str(),
                s.as_str()
            ),
        )));
    }
    match api.policy.policy() {
        Some(policy) => enforce_presigned(api, &policy, principal, &event)?,
        // Without a policy every principal of the config is bound to its tenant: an
        // envelope stamped for another would be read as that tenant's. An admin may pass
        // on another tenant's signed events (a relay, a restore).
        None if !principal.admin && event.security().tenant != principal.tenant => {
            let e = ApiError::new(
                StatusCode::FORBIDDEN,
                "publish_forbidden",
                format!(
                    "event {} is stamped for tenant {:?}; principal {} is bound to tenant {:?} and may publish only its own tenant's events",
                    event.id(),
                    event.security().tenant,
                    principal.name,
                    principal.tenant
                ),
            );
            audit_event(api, &e, &principal.name, &event, 0);
            return Err(api.fail(e));
        }
        None => {}
    }
    Ok(event)
}

/// Whether this node holds `event` already (committed): a resend, durable, taken as any.
async fn holds(api: &Arc<Api>, event: &Event) -> ApiResult<bool> {
    let id = event.id();
    Ok(read_store(api, move |r| r.event_by_id(&id))
        .await?
        .is_some())
}

/// A pre-signed event stamped past the HLC drift bound (`clock.rs`) is refused (400
/// `hlc_ahead`, counted and audited): it would win every `lww` write of its key for good and
/// escape erase rules. A resend of one this node holds already is durable, and taken as any
/// resend (as the edge port does).
async fn hlc_check(api: &Arc<Api>, principal: &str, event: &Event) -> ApiResult<()> {
    let Some(message) = api.clock.refusal(&event.id(), event.hlc()) else {
        return Ok(());
    };
    if holds(api, event).await? {
        return Ok(());
    }
    let e = ApiError::new(StatusCode::BAD_REQUEST, "hlc_ahead", message);
    audit_event(api, &e, principal, event, api.policy.epoch());
    Err(api.fail(e))
}

/// A pre-signed keyed event on a table stream is a write the tables API did not build:
/// [`crate::tables::write_refusal`] checks it (counted; a version naming writes not made
/// yet, a guard against silencing other writers, is audited too). A resend of one this node
/// holds already is durable, and taken as any resend.
async fn table_write_check(api: &Arc<Api>, principal: &str, event: &Event) -> ApiResult<()> {
    let refusal = crate::tables::write_refusal(
        api,
        event.stream(),
        event.key(),
        event.content_type(),
        event.payload(),
    )
    .await?;
    let Err(e) = refusal else {
        return Ok(());
    };
    if holds(api, event).await? {
        return Ok(());
    }
    if e.reason == "version_ahead" {
        audit_event(api, &e, principal, event, api.policy.epoch());
    }
    Err(api.fail(e))
}

/// Policy on an event signed elsewhere: the token's principal must be allowed to publish
/// it, and the security context its producer signed must be one the policy would stamp
/// (a known class, at least as restrictive as the stream's, residency within it). A
/// refusal is a 403, counted and audited with the event id.
pub(crate) fn enforce_presigned(
    api: &Api,
    policy: &weft_policy::Policy,
    principal: &Principal,
    event: &Event,
) -> ApiResult<()> {
    presigned_refusal(api, policy, principal, event).map_err(|e| {
        audit_event(api, &e, &principal.name, event, policy.epoch());
        api.fail(e)
    })
}

/// [`enforce_presigned`]'s checks, neither counted nor audited (the edge port first looks
/// whether a refused event is one it already holds).
pub(crate) fn presigned_refusal(
    api: &Api,
    policy: &weft_policy::Policy,
    principal: &Principal,
    event: &Event,
) -> Result<(), ApiError> {
    let security = event.security();
    // The tenant the event names, not the token's: a principal bound to a tenant may not
    // publish events stamped for another (they would be read as that tenant's).
    let decision = policy.authorize(&weft_policy::AccessRequest {
        principal: &principal.name,
        action: weft_policy::Action::Publish,
        stream: event.stream(),
        tenant: &security.tenant,
        classification: Some(&security.classification),
        region: &api.me.region,
    });
    if !decision.allowed {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "publish_forbidden",
            format!(
                "principal {} may not publish to {} (policy epoch {}): {}",
                principal.name,
                event.stream().as_str(),
                policy.epoch(),
                decision.reason
            ),
        ));
    }
    let decision = policy.check_presigned(event.stream(), security);
    if !decision.allowed {
        let code = match decision.reason {
            weft_policy::Reason::UnknownClassification { .. } => "unclassified",
            _ => "residency_wider",
        };
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            code,
            format!(
                "event {} on {}: classification {:?} with residency {} refused by policy epoch {}: {}",
                event.id(),
                event.stream().as_str(),
                security.classification,
                weft_policy::residency_text(&security.residency),
                policy.epoch(),
                decision.reason
            ),
        ));
    }
    check_may_hold(
        api,
        policy,
        event.stream(),
        &security.classification,
        &security.residency,
    )
}

/// A node stores what it accepts, so it accepts a publish only of a class it may hold in
/// clear: an EU-resident event published at a US node is refused there (403
/// `residency_ingress`), never stored and forwarded. So is an event on a stream whose rule
/// keeps it to other regions (`replication = "regions"`): the same code, so that an edge
/// agent tries another node as it does for residency (`REFUSED_HERE_ONLY`).
fn check_may_hold(
    api: &Api,
    policy: &weft_policy::Policy,
    stream: &StreamName,
    classification: &str,
    residency: &Residency,
) -> Result<(), ApiError> {
    ingress_refusal(policy, &api.me, stream, classification, residency).map_or(Ok(()), |why| {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "residency_ingress",
            format!("{why}: send it to a node that may hold it"),
        ))
    })
}

/// Why `me` may not hold an event on `stream` of `classification` stamped `residency`
/// (`None`: it may), naming the rule that keeps it out: the residency set, or the stream
/// rule's replication regions.
pub(crate) fn ingress_refusal(
    policy: &weft_policy::Policy,
    me: &weft_fabric::mesh::MemberInfo,
    stream: &StreamName,
    classification: &str,
    residency: &Residency,
) -> Option<String> {
    let decision = policy.hold_decision(me, stream, classification, residency);
    if decision.hop == weft_policy::Hop::Clear {
        return None;
    }
    Some(match (decision.reason, policy.stream_rule(stream)) {
        (weft_policy::HopReason::OutsideReplicationScope, Some(rule)) => {
            let scope = rule.regions.iter().cloned().collect::<Vec<_>>().join(", ");
            // Where residency narrows the scope further, say which of its regions remain.
            let held = policy
                .regions_that_may_hold(stream, classification, residency)
                .map(|r| r.into_iter().collect::<Vec<_>>().join(", "))
                .filter(|held| *held != scope)
                .map_or(String::new(), |held| {
                    format!(" (of those, class {classification} may be held in: {held})")
                });
            format!(
                "this node ({} in {}) may not hold events on {}: stream rule streams[{}] of policy epoch {} keeps them to regions {scope}{held}{}",
                me.jurisdiction,
                me.region,
                stream.as_str(),
                rule.index,
                policy.epoch(),
                if policy.placement(me).is_granted() {
                    ""
                } else {
                    " (and this node's jurisdiction claim is not granted, so its region is not taken on its word)"
                }
            )
        }
        _ => format!(
            "this node ({} in {}) may not hold events of class {classification} (residency {}, policy epoch {})",
            me.jurisdiction,
            me.region,
            weft_policy::residency_text(residency),
            policy.epoch()
        ),
    })
}

async fn submit(
    api: &Arc<Api>,
    events: Vec<Arc<Event>>,
    dedup: Vec<Option<(String, String, String)>>,
    ack: Ack,
    started: Instant,
) -> ApiResult<Response> {
    let (reply, rx) = tokio::sync::oneshot::channel();
    let permit = reserve(api)?;
    let ids: Vec<weft_fabric::EventId> = events.iter().map(|e| e.id()).collect();
    crate::egress::send_presigned(api, permit, events, dedup, ack, started, reply).await;
    let out = match wait_published(api, rx).await {
        Ok(out) => out,
        Err(e) => {
            // Not taken: a retry that is taken must get its derivatives (their
            // exactly-once record was written when they were made).
            api.egress.forget(&ids);
            return Err(e);
        }
    };
    Ok(published_response(&out, out.complete))
}

/// A slot in the driver's publish queue, or 503 when it is full.
pub(crate) fn reserve(api: &Api) -> ApiResult<mpsc::OwnedPermit<Command>> {
    api.cmd_tx.clone().try_reserve_owned().map_err(|e| match e {
        mpsc::error::TrySendError::Closed(_) => shutting_down(api),
        mpsc::error::TrySendError::Full(_) => api.fail(ApiError::overloaded(
            "the node's publish queue is full (limits.publish_queue_max); retry shortly",
        )),
    })
}

async fn wait_published(
    api: &Api,
    rx: tokio::sync::oneshot::Receiver<Result<Published, crate::driver::PublishError>>,
) -> ApiResult<Published> {
    match rx.await {
        Ok(Ok(p)) => Ok(p),
        // Counted (and audited where it is a decision) by the driver: `store_refused` once
        // per event refused, not again per request.
        Ok(Err(e)) => {
            let (status, reason) = match &e {
                crate::driver::PublishError::Erased { .. } => (StatusCode::CONFLICT, "erased"),
                crate::driver::PublishError::SeqReused { .. } => {
                    (StatusCode::CONFLICT, "seq_reused")
                }
                crate::driver::PublishError::Store { .. } => {
                    (StatusCode::INSUFFICIENT_STORAGE, "store_refused")
                }
            };
            let mut refused = ApiError::new(status, reason, e.to_string());
            refused.accepted = e.accepted();
            Err(refused)
        }
        Err(_) => Err(api.fail(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the node is shutting down",
        ))),
    }
}

fn published_response(p: &Published, complete: bool) -> Response {
    let status = if complete {
        StatusCode::OK
    } else if p.durable_local {
        // Stored here and replicating, but not yet confirmed where the client asked.
        StatusCode::GATEWAY_TIMEOUT
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(json!(p))).into_response()
}

/// `GET /v1/streams/{stream}/events`'s parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadQuery {
    /// A cursor token (`cursor.rs`), or 0 for the start.
    after: Option<String>,
    /// Start with the last N events the reader may read (instead of `after`).
    last: Option<usize>,
    limit: Option<usize>,
}

/// `GET /v1/streams/{stream}/subscribe`'s parameters: no `limit` (a stream has no page; a
/// `limit` taken and ignored gave an endless stream to a client that expected a cap).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SubscribeQuery {
    /// A cursor token (`cursor.rs`), or 0 for the start.
    after: Option<String>,
    /// Start with the last N events the reader may read (instead of `after`).
    last: Option<usize>,
    /// A durable subscription's name.
    durable: Option<String>,
}

/// What a read or subscription names: one stream, or a pattern of streams (`orders.>`,
/// `*.eu`). A pattern reads the entries of every stream it matches in log order, each event
/// authorized by its own stream (under a policy); the node's own `_weft.*` streams never
/// match (they are read by name, by admins).
#[derive(Debug, Clone)]
pub(crate) enum Selector {
    One(StreamName),
    Pattern(weft_fabric::StreamPattern),
}

impl Selector {
    /// The text a cursor is sealed with and a durable subscription is kept under.
    pub(crate) fn as_str(&self) -> &str {
        match self {
            Selector::One(n) => n.as_str(),
            Selector::Pattern(p) => p.as_str(),
        }
    }

    fn stream(&self) -> Option<&StreamName> {
        match self {
            Selector::One(n) => Some(n),
            Selector::Pattern(_) => None,
        }
    }
}

/// A stream name, or a pattern (400 `bad_stream` naming what is wrong with it as either).
fn check_selector(api: &Api, text: &str) -> ApiResult<Selector> {
    let selector = parse_selector(api, text)?;
    if let Selector::One(name) = &selector
        // Every node stores the system streams (policy bundles and erase requests travel
        // on them), whatever its config's `streams` say: an admin reads them anywhere.
        && !name.is_system()
        && !api.streams.iter().any(|p| p.matches(name))
    {
        return Err(api.fail(ApiError::new(
            StatusCode::NOT_FOUND,
            "stream_not_stored",
            format!(
                "this node does not store {text} (config `streams`); read it from a node that does"
            ),
        )));
    }
    Ok(selector)
}

/// A stream name or a pattern, checked as text only ([`check_selector`] also asks that
/// this node store a stream named alone): what a principal frees (a durable subscription)
/// need not be stored here any more.
fn parse_selector(api: &Api, text: &str) -> ApiResult<Selector> {
    if let Ok(name) = StreamName::new(text.to_string()) {
        return Ok(Selector::One(name));
    }
    let bad = |m: String| api.fail(ApiError::new(StatusCode::BAD_REQUEST, "bad_stream", m));
    let pattern = weft_fabric::StreamPattern::new(text.to_string())
        .map_err(|e| bad(format!("stream or pattern {text:?}: {e}")))?;
    if text.starts_with("_weft.") {
        return Err(bad(format!(
            "pattern {text:?}: system streams are read by name (by admins), not by pattern"
        )));
    }
    Ok(Selector::Pattern(pattern))
}

/// One log entry as the CloudEvent JSON text a reader gets (`weftcursor` added), or `None`
/// when the reader may not read it (counted in `left_out`) or it does not decode. Rendered
/// one at a time and kept as text: a JSON tree costs many times its text, and a page holds
/// up to 8 MiB of envelopes.
fn render_one(
    entry: &crate::store::LogEntry,
    guard: Option<&ReadGuard>,
    pattern: bool,
    left_out: &mut u64,
    cursor: &dyn Fn(u64) -> String,
) -> Option<(String, String)> {
    let u = weft_fabric::decode(&entry.envelope).ok()?;
    // Over a pattern each event's stream is authorized too (one stream is, before).
    if let Some(g) = guard
        && (!g.allows(u.claimed_data())
            || pattern && !g.stream_decision(u.claimed_data().stream()).allowed)
    {
        *left_out += 1;
        return None;
    }
    let mut obj = cloudevents::render(u.claimed_data());
    let token = cursor(entry.pos);
    obj.insert("weftcursor".into(), Value::String(token.clone()));
    Some((Value::Object(obj).to_string(), token))
}

/// The position `last=N` starts after: just before the N-th newest event of `stream`
/// the reader may read, found walking the log back from its end (at most
/// `READ_SCAN_LEN_MAX` entries: further back, the start is where the walk stopped).
/// Events left out are not counted, so how many come says nothing of them either.
fn start_of_last(
    r: &crate::store::StoreReader,
    sel: &Selector,
    n: usize,
    guard: Option<&ReadGuard>,
) -> Result<u64, weft_fabric::mesh::StoreError> {
    let mut before = u64::MAX;
    let mut found = 0;
    let mut scanned = 0;
    let mut scanned_bytes = 0;
    while scanned < READ_SCAN_LEN_MAX && scanned_bytes < READ_SCAN_BYTES_MAX {
        let want = (READ_SCAN_LEN_MAX - scanned).min(crate::store::READ_LOG_LEN_MAX);
        // Over a pattern, the lowest position the page scanned: the next starts below it.
        let mut page_end = None;
        let entries = match sel {
            Selector::One(stream) => r.read_log_before(stream.as_str(), before, want)?,
            Selector::Pattern(p) => {
                // Entries of other streams count toward the scan bound too (at most
                // `want` scanned a call; those matching are counted below).
                let page = r.read_log_matching_before(p, before, want, want)?;
                // Other streams' entries scanned count toward the bound (those matching
                // are counted below).
                scanned += page.scanned - page.entries.len();
                if page.entries.is_empty() {
                    if page.exhausted {
                        return Ok(0);
                    }
                    before = page.scanned_to;
                    continue;
                }
                page_end = Some(page.scanned_to);
                page.entries
            }
        };
        if entries.is_empty() {
            return Ok(0);
        }
        for e in &entries {
            scanned += 1;
            scanned_bytes += e.envelope.len();
            before = e.pos;
            let readable = weft_fabric::decode(&e.envelope).is_ok_and(|u| {
                guard.is_none_or(|g| {
                    g.allows(u.claimed_data())
                        && (matches!(sel, Selector::One(_))
                            || g.stream_decision(u.claimed_data().stream()).allowed)
                })
            });
            if readable {
                found += 1;
                if found == n {
                    return Ok(e.pos - 1);
                }
            }
        }
        if let Some(end) = page_end {
            before = before.min(end);
        }
    }
    Ok(before.saturating_sub(1))
}

/// `last=N` checked: 1 to `limits.read_limit_max`, and not with `after`.
fn check_last(api: &Api, last: Option<usize>, after: bool) -> ApiResult<Option<usize>> {
    match last {
        None => Ok(None),
        Some(_) if after => Err(api.fail(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_last",
            "last and after cannot both be given: last=N starts with the last N events, after=CURSOR after a cursor".to_string(),
        ))),
        Some(n) if n == 0 || n > api.read_limit_max => Err(api.fail(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_last",
            format!(
                "last must be 1 to {} (limits.read_limit_max), got {n}",
                api.read_limit_max
            ),
        ))),
        Some(n) => Ok(Some(n)),
    }
}

/// Counts events left out of a read (every one, in `weft_rejected_total`) and audits them
/// (at most one entry per principal and stream every `FILTERED_AUDIT_EVERY`).
fn audit_left_out(api: &Api, guard: &ReadGuard, stream: &str, left_out: u64) {
    if left_out == 0 {
        return;
    }
    api.metrics.reject_n("read_filtered", left_out);
    // Audited at most once per principal and stream every `FILTERED_AUDIT_EVERY`, with
    // the count since the last entry: on a stream several tenants share, leaving events
    // out is the normal case, and an entry per page or SSE batch flooded the audit log
    // (its queue then dropped genuine denials). The metric counts every event; the
    // audit's counts of reads within the interval are written with the next read of the
    // pair after it, so the last reads' may never be (the metric has them).
    let left_out = {
        let mut due = api
            .filtered_audit
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        if due.len() >= FILTERED_AUDIT_KEYS_MAX {
            due.retain(|_, (at, _)| now.duration_since(*at) < FILTERED_AUDIT_EVERY);
        }
        let key = (guard.principal.name.clone(), stream.to_string());
        match due.get_mut(&key) {
            // Within the interval: counted for the next entry.
            Some(e) if now.duration_since(e.0) < FILTERED_AUDIT_EVERY => {
                e.1 += left_out;
                return;
            }
            Some(e) => {
                let n = e.1 + left_out;
                *e = (now, 0);
                n
            }
            None => {
                // Still full of pairs seen within the interval: audited at once, untracked.
                if due.len() < FILTERED_AUDIT_KEYS_MAX {
                    due.insert(key, (now, 0));
                }
                left_out
            }
        }
    };
    api.audit.deny(
        "read_filtered",
        Some(&guard.principal.name),
        Some(stream),
        guard.policy.epoch(),
        format!(
            "{left_out} events of {stream} left out of a {} by principal {}: their tenant or classification (or, over a pattern, their stream) is not readable by it (policy epoch {})",
            if guard.action == weft_policy::Action::Subscribe { "subscription" } else { "read" },
            guard.principal.name,
            guard.policy.epoch()
        ),
    );
}

async fn read_events(
    State(api): State<Arc<Api>>,
    Path(stream): Path<String>,
    ApiQuery(q): ApiQuery<ReadQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let name = check_selector(&api, &stream)?;
    let system = match name.stream() {
        Some(s) => api.check_system_read(&headers, s, "read")?,
        None => false,
    };
    let guard = if system {
        None
    } else {
        api.read_guard(&headers, weft_policy::Action::Read)?
    };
    if let (Some(g), Some(s)) = (&guard, name.stream()) {
        api.authorize_stream(g, s, "read")?;
    }
    let last = check_last(&api, q.last, q.after.is_some())?;
    // `last=N` alone: a page of those N. Without either, the default page, no larger than
    // the node's limit (a node configured under 100 refused every read that named none).
    let limit = q
        .limit
        .or(last)
        .unwrap_or(READ_LIMIT_DEFAULT.min(api.read_limit_max));
    if limit == 0 || limit > api.read_limit_max {
        return Err(api.fail(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_limit",
            format!(
                "limit must be 1 to {} (limits.read_limit_max), got {limit}",
                api.read_limit_max
            ),
        )));
    }
    let after = api.cursor_at(name.as_str(), "after", q.after.as_deref())?;
    let stream_name = name.as_str().to_string();
    let pattern = matches!(name, Selector::Pattern(_));
    let api2 = api.clone();
    // The page is filled past the events left out (up to `READ_SCAN_LEN_MAX` log entries
    // scanned), so that how many a page holds says nothing of how many the reader may
    // not read, as the opaque cursors say nothing of where they sit.
    let ((body, next, left_out, guard, caught_up), _slot) = read_store_held(&api, move |r| {
        let stream = name.as_str();
        let cursor = |pos: u64| api2.cursors.seal(stream, pos);
        let mut next = match last {
            Some(n) => start_of_last(r, &name, n, guard.as_ref())?,
            None => after,
        };
        let mut left_out = 0;
        let mut shown = 0;
        let mut scanned = 0;
        let mut scanned_bytes = 0;
        let mut shown_bytes = 0;
        let mut body = String::from("[");
        // Whether the page stopped at the end of the log (nothing more to read now), rather
        // than at its limit or a scan bound: `weft-caught-up`.
        let mut caught_up = false;
        // After `last=N` the walk back bounded the work already, and the page must reach
        // the newest events: no scan bound forward.
        let (scan_len_max, scan_bytes_max) = match last {
            Some(_) => (usize::MAX, usize::MAX),
            None => (READ_SCAN_LEN_MAX, READ_SCAN_BYTES_MAX),
        };
        'pages: while shown < limit && scanned < scan_len_max && scanned_bytes < scan_bytes_max {
            // What the page still needs first (nothing left out: one query), then, once
            // events were left out, batches large enough not to go one row at a time.
            let need = limit - shown;
            let want = if left_out == 0 { need } else { need.max(256) }
                .min(crate::store::READ_LOG_LEN_MAX)
                .min(scan_len_max - scanned);
            // Over a pattern, the last position scanned: past other streams' entries.
            let mut tail = None;
            let entries = match &name {
                Selector::One(s) => r.read_log(s.as_str(), next, want)?,
                Selector::Pattern(p) => {
                    let scan = (scan_len_max - scanned).min(PATTERN_SCAN_STEP);
                    let page =
                        r.read_log_matching(p, next, want, crate::store::READ_LOG_BYTES_MAX, scan)?;
                    // Other streams' entries count toward the scan bound (those matching
                    // are counted below).
                    scanned += page.scanned - page.entries.len();
                    if page.entries.is_empty() {
                        next = next.max(page.scanned_to);
                        if page.exhausted {
                            caught_up = true;
                            break;
                        }
                        continue;
                    }
                    tail = Some(page.scanned_to);
                    page.entries
                }
            };
            if entries.is_empty() {
                caught_up = true;
                break;
            }
            for e in &entries {
                scanned += 1;
                scanned_bytes += e.envelope.len();
                // The cursor moves past events left out too, so a reader never rereads
                // them.
                next = e.pos;
                if let Some((text, _)) =
                    render_one(e, guard.as_ref(), pattern, &mut left_out, &cursor)
                {
                    if body.len() > 1 {
                        body.push(',');
                    }
                    body.push_str(&text);
                    shown += 1;
                    shown_bytes += e.envelope.len();
                    if shown == limit || shown_bytes >= crate::store::READ_LOG_BYTES_MAX {
                        break 'pages;
                    }
                }
            }
            // Every entry taken: past the other streams' entries scanned after them.
            if let Some(t) = tail {
                next = next.max(t);
            }
        }
        body.push(']');
        Ok((body, next, left_out, guard, caught_up))
    })
    .await?;
    if let Some(g) = &guard {
        audit_left_out(&api, g, &stream_name, left_out);
    }
    let mut resp = ([(header::CONTENT_TYPE, cloudevents::CE_BATCH_JSON)], body).into_response();
    let next = api.cursors.seal(&stream_name, next);
    resp.headers_mut().insert(
        "weft-next-cursor",
        HeaderValue::from_str(&next).expect("base64url is a header value"),
    );
    // A page short (even empty) for a scan bound is not the end: this says which it is
    // (cursors are sealed afresh each time, so comparing them cannot).
    resp.headers_mut().insert(
        "weft-caught-up",
        HeaderValue::from_static(if caught_up { "true" } else { "false" }),
    );
    Ok(resp)
}

/// `GET /v1/events/{id}`: one event by its hex id, as a CloudEvent. Under a policy, a
/// read of the event's stream, tenant and classification.
async fn event_by_id(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
    ApiQuery(NoQuery {}): ApiQuery<NoQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let guard = api.read_guard(&headers, weft_policy::Action::Read)?;
    let key = crate::config::hex32("id", &id).map_err(|_| {
        api.fail(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_event_id",
            format!(
                "event id {:?}: an event id is 64 hex digits (the SHA-256 `weftid` of a read)",
                id.chars().take(80).collect::<String>()
            ),
        ))
    })?;
    let found = read_store(&api, move |r| r.event_by_id(&weft_fabric::EventId(key))).await?;
    let Some(bytes) = found else {
        return Err(api.fail(ApiError::new(
            StatusCode::NOT_FOUND,
            "event_not_found",
            format!("no event {id} is stored on this node"),
        )));
    };
    let event = weft_fabric::decode(&bytes).map_err(|e| {
        api.fail(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "store_corrupt",
            e.to_string(),
        ))
    })?;
    let system =
        api.check_system_read(&headers, event.claimed_data().stream(), "read an event of")?;
    // As a paged read of its stream would: the stream (its rule's classification now) and
    // the event (its own tenant and classification). An event the principal may not read
    // is answered as one not stored, so an id tells nothing of what the node holds; the
    // refusal is counted and audited as `read_forbidden`.
    if let Some(g) = guard.as_ref().filter(|_| !system) {
        let stream = event.claimed_data().stream();
        if !g.stream_decision(stream).allowed || !g.allows(event.claimed_data()) {
            let epoch = g.policy.epoch();
            api.metrics.reject("read_forbidden");
            api.audit.record(
                crate::audit::Entry::now(
                    crate::audit::Decision::Deny,
                    "read_forbidden",
                    epoch,
                    format!(
                        "principal {} may not read event {id} of {} (policy epoch {epoch}); answered as not stored",
                        g.principal.name,
                        stream.as_str()
                    ),
                )
                .principal(g.principal.name.clone())
                .stream(stream.as_str().to_string())
                .event(id.clone()),
            );
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "event_not_found",
                format!("no event {id} is stored on this node"),
            ));
        }
    }
    Ok((
        [(header::CONTENT_TYPE, CE_JSON)],
        Value::Object(cloudevents::render(event.claimed_data())).to_string(),
    )
        .into_response())
}

async fn subscribe(
    State(api): State<Arc<Api>>,
    Path(stream): Path<String>,
    ApiQuery(q): ApiQuery<SubscribeQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let name = check_selector(&api, &stream)?;
    let system = match name.stream() {
        Some(s) => api.check_system_read(&headers, s, "subscribe to")?,
        None => false,
    };
    let mut guard = if system {
        None
    } else {
        api.read_guard(&headers, weft_policy::Action::Subscribe)?
    };
    if let (Some(g), Some(s)) = (&guard, name.stream()) {
        let what = match &q.durable {
            Some(d) => format!("hold durable subscription {d} on"),
            None => "subscribe to".to_string(),
        };
        api.authorize_stream(g, s, &what)?;
    }
    let pattern = matches!(name, Selector::Pattern(_));
    // Taken now and held by the stream's task: concurrent admissions cannot pass the
    // limit together.
    let Ok(slot) = api.subscriber_slots.clone().try_acquire_owned() else {
        let mut e = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_subscribers",
            format!(
                "{} subscribers open (limits.subscribers_max)",
                api.subscribers_max
            ),
        );
        e.retry_after = Some(5);
        return Err(api.fail(e));
    };
    // One principal's share (readers without a token count as one).
    let who = match &guard {
        Some(g) => g.principal().to_string(),
        None if headers.contains_key(header::AUTHORIZATION) => api.authenticate(&headers)?.name,
        None => String::new(),
    };
    let principal_slot = PrincipalSubscription::take(&api, who)?;
    if let Some(d) = &q.durable {
        check_durable_name(&api, name.as_str(), d)?;
    }
    // A stream has no page: a `last` above the page limit starts with the newest
    // `limits.read_limit_max` (the dashboard's tail asks for 40 whatever the node's limit).
    let last = check_last(
        &api,
        q.last.map(|n| n.min(api.read_limit_max)),
        q.after.is_some(),
    )?;
    let after_param = q
        .after
        .as_deref()
        .map(|t| api.cursor_at(name.as_str(), "after", Some(t)))
        .transpose()?;
    // A Last-Event-ID this node cannot take (not its token, or from before cursors were
    // tokens) is 400 for a plain subscription, which asked to resume from a place this node
    // does not know; a durable one resumes from its saved position instead, counted (a
    // client that keeps sending the header would otherwise never get back in).
    let last_event_id = match headers
        .get("last-event-id")
        .map(|v| v.to_str().unwrap_or("\u{fffd}"))
        .filter(|v| !v.is_empty())
    {
        None => None,
        Some(v) if q.durable.is_some() => match api.cursors.open(name.as_str(), v) {
            Ok(pos) => Some(pos),
            Err(e) => {
                api.metrics.reject("bad_cursor");
                tracing::debug!(error = %e, "Last-Event-ID ignored: the durable subscription resumes from its saved position");
                None
            }
        },
        Some(v) => Some(api.cursor_at(name.as_str(), "Last-Event-ID", Some(v))?),
    };
    // Whose subscription: the reader's principal (an admin's for a system stream). A
    // durable one needs a token even where reads need none: its position is a
    // principal's, and one kept for no principal could never be moved (acks and
    // Last-Event-ID saves are a token's), so it would start over at every reconnect.
    let owner = match (&guard, q.durable.is_some()) {
        (_, false) => String::new(),
        (Some(g), true) => g.principal().to_string(),
        (None, true) if !headers.contains_key(header::AUTHORIZATION) => {
            return Err(api.refuse(
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "missing_token",
                    "a durable subscription belongs to a principal: it needs `Authorization: Bearer <token>` even where reads need none (drop ?durable= to read without one)",
                ),
                None,
                name.stream().map(StreamName::as_str),
                api.policy.epoch(),
            ));
        }
        (None, true) => api.authenticate(&headers)?.name,
    };
    let durable = q
        .durable
        .as_deref()
        .map(|d| cursor_key(&owner, name.as_str(), d));
    let saved = match &durable {
        Some(d) => {
            let d = d.clone();
            read_store(&api, move |r| r.cursor_get(&d))
                .await?
                .map(|(_, pos)| pos)
        }
        None => None,
    };
    // Reconnecting with Last-Event-ID acknowledges everything up to it: a write, so only
    // with a token, as the ack endpoint (reads may be open; moving another subscriber's
    // cursor may not). Without one the stream is served from Last-Event-ID and the saved
    // position stays (a browser's EventSource reconnects without headers of its own).
    let mut kept = saved.is_some();
    if let (Some(d), Some(pos)) = (&durable, last_event_id)
        && saved.is_none_or(|s| pos > s)
        && pos <= *api.committed.borrow()
        && headers.contains_key(header::AUTHORIZATION)
    {
        api.authenticate(&headers)?;
        save_cursor(&api, d.clone(), name.as_str(), pos).await?;
        kept = true;
    }
    // Started from `last=N` rather than from a position the client gave or a durable
    // one saved: the client learns where (below).
    let from_last = last.is_some() && last_event_id.or(after_param).or(saved).is_none();
    let mut after = match last_event_id.or(after_param).or(saved) {
        Some(after) => after,
        None => match last {
            Some(n) => {
                let sel = name.clone();
                let (start, g) = read_store(&api, move |r| {
                    start_of_last(r, &sel, n, guard.as_ref()).map(|s| (s, guard))
                })
                .await?;
                guard = g;
                start
            }
            None => 0,
        },
    };
    // A durable subscription this principal does not hold yet is kept from its start, now:
    // a position the node cannot keep (`cursors_full`) is refused before any event is
    // sent, not found out at the first ack after the subscriber processed them (which
    // then failed at every run, the same events replayed each time), and a reconnect
    // before the first ack resumes where it began instead of choosing its start again.
    if let Some(d) = &durable
        && !kept
    {
        // As an acknowledgement is: a start beyond this node's log is refused.
        within_log(&api, after, "the durable subscription's start").await?;
        save_cursor(&api, d.clone(), name.as_str(), after).await?;
    }
    // The token it was opened with, checked again whenever a new policy epoch comes into
    // force: a bundle that rotates or drops it ends the stream (refused and audited as
    // `token_revoked` or `bad_token`, as a new request would be).
    let auth: Option<HeaderMap> = headers.get(header::AUTHORIZATION).map(|v| {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, v.clone());
        h
    });
    let mut policy_seen = api.policy.generation();
    // A few events queued per subscriber: a client that reads slowly holds little.
    let (tx, rx) = mpsc::channel::<Result<SseEvent, Infallible>>(SSE_QUEUE_LEN);
    let api2 = api.clone();
    // Opened while reads needed no token (no policy in force, not an admin's system read).
    let opened_open = guard.is_none() && !system;
    api.metrics.subscribers.inc();
    // Where a `last=N` stream starts, as an event with an id and no data (which an SSE
    // client takes as its last event id and dispatches nothing): one that reconnects before
    // an event came resumes from there instead of asking for the newest N again, which
    // would miss what came in between beyond N. Queued before any event.
    if from_last {
        let start = SseEvent::default().id(api.cursors.seal(name.as_str(), after));
        let _ = tx.try_send(Ok(start));
    }
    tokio::spawn(async move {
        let mut committed = api2.committed.clone();
        let mut closing = api2.closing.clone();
        loop {
            // A stopping node ends every stream, busy ones too (a graceful stop waits for
            // open connections).
            if *closing.borrow() {
                break;
            }
            // The first policy decides who reads from then on: a subscription opened
            // without a token ends (the client reconnects with one), audited and counted.
            if opened_open && let Some(p) = api2.policy.policy() {
                api2.metrics.reject("subscription_ended");
                api2.audit.deny(
                    "subscription_ended",
                    None,
                    Some(name.as_str()),
                    p.epoch(),
                    format!(
                        "a subscription to {} opened without a token ended: policy epoch {} now decides who reads",
                        name.as_str(),
                        p.epoch()
                    ),
                );
                break;
            }
            if api2.policy.generation() != policy_seen {
                policy_seen = api2.policy.generation();
                if let Some(h) = &auth {
                    match api2.authenticate(h) {
                        Err(_) => break,
                        // An admin's system-stream subscription needs an admin still.
                        Ok(p) if system && !p.admin => break,
                        Ok(p) => {
                            if let Some(g) = &mut guard {
                                g.principal = p;
                            }
                        }
                    }
                }
            }
            // A newer policy decides from its epoch on: an open subscription it no longer
            // allows ends (refused and audited like a new one).
            if let Some(g) = &mut guard
                && let Some(p) = api2.policy.policy()
                && p.compilation() != g.policy.compilation()
            {
                g.set_policy(p);
                if let Some(s) = name.stream()
                    && api2.authorize_stream(g, s, "subscribe to").is_err()
                {
                    break;
                }
            }
            let sel = name.clone();
            // Over a pattern, the last position scanned: past other streams' entries.
            let entries = match read_store(&api2, move |r| match &sel {
                Selector::One(s) => r
                    .read_log_within(s.as_str(), after, SSE_PAGE_LEN, SSE_PAGE_BYTES_MAX)
                    .map(|e| {
                        let exhausted = e.is_empty();
                        (e, None, exhausted)
                    }),
                Selector::Pattern(p) => r
                    .read_log_matching(
                        p,
                        after,
                        SSE_PAGE_LEN,
                        SSE_PAGE_BYTES_MAX,
                        PATTERN_SCAN_STEP,
                    )
                    .map(|page| {
                        let exhausted = page.exhausted && page.entries.is_empty();
                        (page.entries, Some(page.scanned_to), exhausted)
                    }),
            })
            .await
            {
                Ok(entries) => entries,
                // Every read slot taken for a while: the subscriber waits, it is not
                // dropped (a reconnect would only read again).
                Err(e) if e.reason() == READS_BUSY => {
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        _ = closing.changed() => break,
                    }
                }
                Err(_) => break,
            };
            let (entries, tail, exhausted) = entries;
            let last = entries.last().map(|e| e.pos);
            // Each event rendered just before it is sent, not the whole batch first.
            let mut left_out = 0;
            let mut ended = false;
            let cursor = |pos: u64| api2.cursors.seal(name.as_str(), pos);
            for e in &entries {
                let Some((text, token)) =
                    render_one(e, guard.as_ref(), pattern, &mut left_out, &cursor)
                else {
                    continue;
                };
                let ev = SseEvent::default().id(token).data(text);
                // A client that stops reading holds this send: a stopping node does not
                // wait for it.
                ended = tokio::select! {
                    sent = tx.send(Ok(ev)) => sent.is_err(),
                    _ = closing.changed() => true,
                };
                if ended {
                    break;
                }
                after = e.pos;
            }
            drop(entries);
            if let Some(g) = &guard {
                audit_left_out(&api2, g, name.as_str(), left_out);
            }
            if ended {
                break;
            }
            // Past the events left out too, and over a pattern past the other streams'
            // entries scanned.
            after = last.map_or(after, |l| l.max(after));
            if let Some(t) = tail {
                after = after.max(t);
            }
            if !exhausted && last.is_none() {
                // A pattern matching little of a long log: one step of 4,096 entries at a
                // time, a pause between them, so that catching up does not hold a read
                // slot back to back.
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(5)) => {}
                    _ = closing.changed() => break,
                }
            }
            if exhausted {
                tokio::select! {
                    r = committed.changed() => if r.is_err() { break },
                    () = tx.closed() => break,
                    _ = closing.changed() => break,
                    () = tokio::time::sleep(Duration::from_secs(5)) => {}
                }
            }
        }
        api2.metrics.subscribers.dec();
        drop(slot);
        drop(principal_slot);
    });
    Ok(Sse::new(ReceiverStream::new(rx))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

/// Hex characters of the owner's hash in a cursor key ([`cursor_key`]).
const CURSOR_OWNER_HEX: usize = 16;

/// The store key of a durable subscription: its owner (a hash of the principal's name;
/// of "" for one opened without a token on a node whose reads need none), the stream and
/// the name. A subscription belongs to the principal that holds it: another principal
/// using the same name gets a subscription of its own, and can neither move, read nor
/// replay this one's position.
fn cursor_key(owner: &str, stream: &str, name: &str) -> String {
    format!("{}{stream}/{name}", cursor_owner(owner))
}

/// The start of every durable subscription key `owner` holds ([`cursor_key`]): `OWNER:`.
fn cursor_owner(owner: &str) -> String {
    use sha2::Digest as _;
    let hash = hex::encode(sha2::Sha256::digest(owner.as_bytes()));
    format!("{}:", &hash[..CURSOR_OWNER_HEX])
}

/// Refuses (400 `bad_cursor`, as `field`) a position beyond this node's log: only a token
/// this node gave passes `cursor_at`, and it gives none beyond its log, so it is a store
/// replaced under the same key; kept, it would skip what comes next.
async fn within_log(api: &Arc<Api>, pos: u64, field: &str) -> ApiResult<()> {
    let committed = *api.committed.borrow();
    // The driver announces positions after its group commit; a batch the store committed
    // by itself (`TX_WRITES_MAX`) may already be read. Ask the log.
    if pos > committed && pos > read_store(api, |r| r.log_max_pos()).await? {
        return Err(api.fail(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_cursor",
            format!("{field}: beyond this node's log (was its store replaced?)"),
        )));
    }
    Ok(())
}

/// A durable subscription's name: its cursor is kept as `OWNER:{stream}/{name}`
/// ([`cursor_key`]), which must fit the store's name limit (`store::NAME_LEN_MAX`, 128
/// bytes).
fn check_durable_name(api: &Api, stream: &str, d: &str) -> ApiResult<()> {
    let max = crate::store::NAME_LEN_MAX.saturating_sub(stream.len() + 2 + CURSOR_OWNER_HEX);
    let fixed = CURSOR_OWNER_HEX + 2;
    let what = if max == 0 {
        // No name fits: the stream's own name takes the whole key.
        format!(
            "no durable subscription fits a stream name of {} bytes: its position is kept as OWNER:STREAM/NAME in at most {} bytes ({fixed} for the owner and separators), so the stream's name may be at most {} bytes",
            stream.len(),
            crate::store::NAME_LEN_MAX,
            crate::store::NAME_LEN_MAX - fixed - 1
        )
    } else if d.is_empty() {
        "the subscription name is empty".to_string()
    } else if let Some(c) = d
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "-_.".contains(*c)))
    {
        format!("the subscription name {d:?} has {c:?}, which is not one of A-Z a-z 0-9 - _ .")
    } else if d.len() > max {
        format!(
            "the subscription name {d:?} is {} bytes; on stream {stream} ({} bytes) it may be at most {max} (its position is kept as OWNER:STREAM/NAME in at most {} bytes)",
            d.len(),
            stream.len(),
            crate::store::NAME_LEN_MAX
        )
    } else {
        return Ok(());
    };
    Err(api.fail(ApiError::new(
        StatusCode::BAD_REQUEST,
        "bad_durable_name",
        what,
    )))
}

/// 503 `shutting_down`, counted: the driver is gone (the node is stopping).
fn shutting_down(api: &Api) -> ApiError {
    api.fail(ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "shutting_down",
        "the node is shutting down",
    ))
}

/// Saves a durable cursor through the driver and waits for the outcome: a full cursor
/// table is 507 `cursors_full`, counted (the position was not kept, and saying so beats a
/// subscriber that replays from the start after its next reconnect).
async fn save_cursor(api: &Api, name: String, stream: &str, pos: u64) -> ApiResult<()> {
    let (reply, rx) = tokio::sync::oneshot::channel();
    let shutting_down = || shutting_down(api);
    // A full driver queue answers 503 with Retry-After, as a publish does, rather than
    // hold the request (and its connection) until there is room.
    reserve(api)?.send(Command::SaveCursor {
        name,
        stream: stream.to_string(),
        pos,
        reply,
    });
    match rx.await.map_err(|_| shutting_down())? {
        Ok(()) => Ok(()),
        Err(e @ crate::store::RecordError::TableFull { table, .. }) => {
            let limit = if table == "cursors" {
                "limits.cursors_max"
            } else {
                "limits.cursors_per_principal_max; list them with weft subscriptions or GET /v1/subscriptions and DELETE one first"
            };
            Err(api.fail(ApiError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "cursors_full",
                format!("the subscription's position was not saved: {e} ({limit})"),
            )))
        }
        Err(e @ crate::store::RecordError::TooLong { .. }) => Err(api.fail(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_durable_name",
            format!("the subscription's position was not saved: {e}"),
        ))),
        Err(e) => Err(api.fail(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            format!("the subscription's position was not saved: {e}"),
        ))),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AckQuery {
    /// A cursor token of the stream (`cursor.rs`).
    cursor: String,
}

/// `POST /v1/streams/{stream}/subscriptions/{name}/ack?cursor=TOKEN`: the subscriber has
/// processed everything up to that cursor; a reconnect of the durable subscription
/// resumes after it. The cursor only moves forward; the answer gives the one in force.
async fn ack_subscription(
    State(api): State<Arc<Api>>,
    Path((stream, name)): Path<(String, String)>,
    ApiQuery(q): ApiQuery<AckQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let who = api.authenticate(&headers)?;
    let who_name = who.name.clone();
    let stream = check_selector(&api, &stream)?;
    let system = match stream.stream() {
        Some(s) => api.check_system_read(&headers, s, "hold a subscription on")?,
        None => false,
    };
    check_durable_name(&api, stream.as_str(), &name)?;
    if let Some(policy) = api.policy.policy().filter(|_| !system)
        && let Some(s) = stream.stream()
    {
        let guard = ReadGuard::new(policy, who, weft_policy::Action::Subscribe, api.me.clone());
        api.authorize_stream(
            &guard,
            s,
            &format!("acknowledge durable subscription {name} on"),
        )?;
    }
    let cursor = api.cursor_at(stream.as_str(), "cursor", Some(&q.cursor))?;
    within_log(&api, cursor, "cursor").await?;
    let key = cursor_key(&who_name, stream.as_str(), &name);
    let k2 = key.clone();
    let saved = read_store(&api, move |r| r.cursor_get(&k2))
        .await?
        .map(|(_, pos)| pos);
    if saved.is_none_or(|s| cursor > s) {
        save_cursor(&api, key, stream.as_str(), cursor).await?;
    }
    let held = api
        .cursors
        .seal(stream.as_str(), cursor.max(saved.unwrap_or(0)));
    Ok(axum::Json(json!({"cursor": held})).into_response())
}

/// `GET /v1/subscriptions`: the caller's durable subscriptions on this node (stream, name,
/// the position kept as a cursor), at most `limits.cursors_per_principal_max`: what to
/// `DELETE` when the principal's share is full (the 507 says to).
async fn list_subscriptions(
    State(api): State<Arc<Api>>,
    ApiQuery(NoQuery {}): ApiQuery<NoQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let who = api.authenticate(&headers)?;
    let prefix = cursor_owner(&who.name);
    let limit = api.cursors_per_principal_max.max(1);
    let p2 = prefix.clone();
    // One more than listed, to say when there are more (a limit lowered since they were
    // made leaves a principal holding more than it now may).
    let mut rows = read_store(&api, move |r| r.cursors_with_prefix(&p2, limit + 1)).await?;
    let truncated = rows.len() > limit;
    rows.truncate(limit);
    let held: Vec<Value> = rows
        .into_iter()
        .filter_map(|(name, stream, pos)| {
            // `OWNER:{stream}/{name}`: names have no '/'.
            let (_, name) = name.strip_prefix(&prefix)?.rsplit_once('/')?;
            Some(json!({
                "stream": stream,
                "name": name,
                "cursor": api.cursors.seal(&stream, pos),
            }))
        })
        .collect();
    Ok(
        axum::Json(json!({"principal": who.name, "subscriptions": held, "truncated": truncated}))
            .into_response(),
    )
}

/// `DELETE /v1/streams/{stream}/subscriptions/{name}`: forgets the caller's durable
/// subscription (its saved position); a later subscription of that name starts afresh.
/// 204 once the deletion is committed; 404 `subscription_not_found` when the caller holds
/// none of that name (another principal's of the same name is its own, untouched).
async fn delete_subscription(
    State(api): State<Arc<Api>>,
    Path((stream, name)): Path<(String, String)>,
    ApiQuery(NoQuery {}): ApiQuery<NoQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    // Only the caller's own subscription can be named (the key is built from its
    // principal), so no stream right is asked: a principal that lost its right to
    // subscribe can still free what it held.
    let who = api.authenticate(&headers)?;
    // A stream this node no longer stores (its config changed) still frees what was held.
    let stream = parse_selector(&api, &stream)?;
    check_durable_name(&api, stream.as_str(), &name)?;
    let who_name = who.name;
    let (reply, rx) = tokio::sync::oneshot::channel();
    let shutting_down = || shutting_down(&api);
    reserve(&api)?.send(Command::DeleteCursor {
        name: cursor_key(&who_name, stream.as_str(), &name),
        reply,
    });
    match rx.await.map_err(|_| shutting_down())? {
        Ok(true) => Ok(StatusCode::NO_CONTENT.into_response()),
        Ok(false) => Err(api.fail(ApiError::new(
            StatusCode::NOT_FOUND,
            "subscription_not_found",
            format!(
                "no durable subscription {name} on {} is held by this principal",
                stream.as_str()
            ),
        ))),
        Err(e) => Err(api.fail(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            format!("the subscription was not deleted: {e}"),
        ))),
    }
}

async fn peers(State(api): State<Arc<Api>>) -> Response {
    let s = api.snapshot.borrow().clone();
    axum::Json(json!({"self": {
        "key": hex::encode(api.me.key), "name": api.name, "region": api.me.region,
        "cloud": api.me.cloud, "jurisdiction": api.me.jurisdiction, "addr": api.me.addr},
        "peers": s.peers}))
    .into_response()
}

async fn routes(State(api): State<Arc<Api>>) -> Response {
    // Per destination region: the path over the region graph (direct or through relay
    // regions), its estimated one-way latency, the direct link and the alternatives.
    let s = api.snapshot.borrow().clone();
    axum::Json(json!({"from": api.me.region, "routes": s.routes})).into_response()
}

async fn policy_get(State(api): State<Arc<Api>>) -> Response {
    let Some(applied) = api.policy.current() else {
        return axum::Json(json!({"epoch": 0, "policy": null})).into_response();
    };
    let p = &applied.policy;
    let b = p.bundle();
    axum::Json(json!({
        "epoch": p.epoch(),
        "bundle_sha256": applied.bundle_sha256(),
        "signers": applied.signers,
        "description": b.description,
        "jurisdictions": b.jurisdictions.keys().collect::<Vec<_>>(),
        "classes": b.classes.keys().collect::<Vec<_>>(),
        "tenants": b.tenants.keys().collect::<Vec<_>>(),
        "principals": b.principals.len(),
        "access_rules": b.access.len(),
        "stream_rules": b.streams.len(),
        "transforms": crate::egress::view(p, &api.hash_keys),
    }))
    .into_response()
}

/// `POST /v1/policy` (`weft policy push`): an admin hands this node a signed bundle. The
/// node verifies it as every node will (operator signatures, threshold, epoch newer than
/// the one in force), then publishes it on the policy system stream; every node, this one
/// included, applies it when the carrier reaches its log (`policy_push`). The answer comes
/// after this node has applied it and made it durable.
async fn policy_push(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let who = api.require_admin(&headers, "push policy bundles (principals[].admin)")?;
    let Some(trust) = &api.policy_trust else {
        return Err(api.refuse(
            ApiError::new(
                StatusCode::CONFLICT,
                "policy_no_trust",
                "this node has no operator keys configured ([policy] operators), so it cannot verify a bundle",
            ),
            Some(&who.name),
            None,
            0,
        ));
    };
    let previous = api.policy.epoch();
    let verified = crate::policy_push::check(trust, &api.policy, &body).map_err(|e| {
        api.audit.deny(
            e.code(),
            Some(&who.name),
            None,
            previous,
            format!("policy push refused (epoch {previous} in force): {e}"),
        );
        let status = match &e {
            weft_policy::VerifyError::Oversize { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            weft_policy::VerifyError::Rollback { .. } => StatusCode::CONFLICT,
            weft_policy::VerifyError::Malformed(_) | weft_policy::VerifyError::Invalid(_) => {
                StatusCode::BAD_REQUEST
            }
            _ => StatusCode::FORBIDDEN,
        };
        api.fail(ApiError::new(
            status,
            e.code(),
            format!("policy bundle refused: {e}"),
        ))
    })?;
    let epoch = verified.policy.epoch();
    let draft = EventDraft {
        stream: crate::policy_push::policy_stream(),
        key: None,
        seq: 0,
        hlc: weft_fabric::Hlc::new(0, 0).unwrap_or_else(|_| unreachable!("zero HLC")),
        security: SecurityContext {
            tenant: who.tenant.clone(),
            principal: who.name.clone(),
            classification: crate::policy_push::SYSTEM_CLASSIFICATION.into(),
            residency: Residency::Unrestricted,
            scopes: BTreeSet::new(),
            policy_epoch: previous,
        },
        content_type: crate::policy_push::BUNDLE_CONTENT_TYPE.into(),
        payload: Payload::Clear(body.to_vec()),
        trace: None,
    };
    // No egress transforms on system streams.
    let out = sign_and_send(
        &api,
        None,
        vec![draft],
        vec![None],
        None,
        Ack::Local,
        Instant::now(),
    )
    .await?;
    let in_force = api.policy.epoch();
    if in_force != epoch {
        // Another bundle landed between the check and the apply.
        return Err(api.refuse(
            ApiError::new(
                StatusCode::CONFLICT,
                "bundle_rollback",
                format!("epoch {in_force} came into force first; epoch {epoch} was not applied"),
            ),
            Some(&who.name),
            None,
            in_force,
        ));
    }
    let mut entry = crate::audit::Entry::now(
        crate::audit::Decision::Apply,
        "policy_pushed",
        epoch,
        format!("policy bundle epoch {epoch} (was {previous}) pushed to the fabric"),
    )
    .principal(who.name.clone());
    entry.event_id = out.ids.first().cloned();
    api.audit.record(entry);
    Ok(axum::Json(json!({
        "epoch": epoch,
        "previous": previous,
        "event": out.ids.first(),
        "signers": verified.signers.iter().map(hex::encode).collect::<Vec<_>>(),
    }))
    .into_response())
}

/// `POST /v1/erase` (`weft erase`): an admin asks for a key (`{"stream", "key"}`) or all
/// data of a principal (`{"principal", "tenant"?}`) to be erased fabric-wide. The node checks
/// the request, audits it and publishes it on the erase system stream; every node, this
/// one included, applies it when the event reaches its log (`erase.rs`). The answer comes
/// after this node has applied it and made it durable.
async fn erase(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let who = api.require_admin(&headers, "erase data (principals[].admin)")?;
    let epoch = api.policy.epoch();
    let bad = |message: String| {
        api.refuse(
            ApiError::new(StatusCode::BAD_REQUEST, "bad_erase_request", message),
            Some(&who.name),
            None,
            epoch,
        )
    };
    let rule: crate::erase::Rule = serde_json::from_slice(&body).map_err(|e| {
        bad(format!(
            "erase request is not valid JSON of the expected shape: {e}"
        ))
    })?;
    let target = rule
        .check()
        .map_err(|e| bad(format!("erase request refused: {e}")))?;
    let rules = read_store(&api, |r| {
        r.conn()
            .query_row("SELECT COUNT(*) FROM erase_rules", [], |row| {
                row.get::<_, i64>(0)
            })
            .map_err(|e| weft_fabric::mesh::StoreError::Backend(e.to_string()))
    })
    .await?;
    if usize::try_from(rules).unwrap_or(usize::MAX) >= crate::erase::RULES_MAX {
        return Err(api.refuse(
            ApiError::new(
                StatusCode::CONFLICT,
                "erase_rules_full",
                format!(
                    "this node keeps {rules} erase rules, at the limit {} (RULES_MAX)",
                    crate::erase::RULES_MAX
                ),
            ),
            Some(&who.name),
            None,
            epoch,
        ));
    }
    // A key erase names the key, which is the stream's data as much as its events are: the
    // request is stamped with the residency of the stream's class, so it travels only
    // where the events may (nodes outside never held them), and only a node that may hold
    // them takes it in. A principal erase goes everywhere: a principal's name is in the
    // signed context of its events, which every node that relays them sees.
    let residency = match (&target, api.policy.policy()) {
        (crate::erase::Target::Key { stream, .. }, Some(policy)) => {
            match StreamName::new(stream.as_str())
                .ok()
                .and_then(|s| Some((policy.stamp(&s, None, &Residency::Unrestricted).ok()?, s)))
            {
                Some((stamp, s)) => {
                    check_may_hold(&api, &policy, &s, &stamp.classification, &stamp.residency)
                        .map_err(|e| {
                            api.refuse(e, Some(&who.name), Some(stream.as_str()), epoch)
                        })?;
                    stamp.residency
                }
                // No class for the stream: its events go everywhere, and so does this.
                None => Residency::Unrestricted,
            }
        }
        _ => Residency::Unrestricted,
    };
    let payload = serde_json::to_vec(&rule)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    let stream = StreamName::new(crate::erase::ERASE_STREAM)
        .unwrap_or_else(|_| unreachable!("valid constant"));
    let draft = EventDraft {
        stream,
        key: None,
        seq: 0,
        hlc: weft_fabric::Hlc::new(0, 0).unwrap_or_else(|_| unreachable!("zero HLC")),
        security: SecurityContext {
            tenant: who.tenant.clone(),
            principal: who.name.clone(),
            classification: crate::policy_push::SYSTEM_CLASSIFICATION.into(),
            residency,
            scopes: BTreeSet::new(),
            policy_epoch: epoch,
        },
        content_type: crate::erase::CONTENT_TYPE.into(),
        payload: Payload::Clear(payload),
        trace: None,
    };
    let out = sign_and_send(
        &api,
        None,
        vec![draft],
        vec![None],
        None,
        Ack::Local,
        Instant::now(),
    )
    .await?;
    let mut entry = crate::audit::Entry::now(
        crate::audit::Decision::Apply,
        "erase_requested",
        epoch,
        format!("erase of {target} requested; published to the fabric"),
    )
    .principal(who.name.clone())
    // A key's erase under the key's stream (`weft audit --stream`); a principal's under the
    // erase stream.
    .stream(match &target {
        crate::erase::Target::Key { stream, .. } => stream.as_str(),
        crate::erase::Target::Principal { .. } => crate::erase::ERASE_STREAM,
    });
    entry.event_id = out.ids.first().cloned();
    api.audit.record(entry);
    Ok(axum::Json(json!({
        "event": out.ids.first(),
        "rule": rule,
    }))
    .into_response())
}

async fn policy_bundle(State(api): State<Arc<Api>>, headers: HeaderMap) -> ApiResult<Response> {
    // The signed bundle in force, byte for byte as the operators signed it: what
    // `weft policy verify` checks. Admins only: it lists principals' token hashes and the
    // transforms' hashing salts.
    api.require_admin(
        &headers,
        "read the signed bundle (principals[].admin): it holds token hashes and salts",
    )?;
    match api.policy.current() {
        None => Err(api.fail(ApiError::new(
            StatusCode::NOT_FOUND,
            "no_policy",
            "this node enforces no policy bundle",
        ))),
        Some(a) => Ok((
            [(axum::http::header::CONTENT_TYPE, "application/cbor")],
            a.signed.as_ref().clone(),
        )
            .into_response()),
    }
}

/// Refuses an `ack=regions:N` (N > 1) the policy keeps from ever being met: the event may
/// be held in fewer than N regions (its class's jurisdictions' regions, narrowed to the
/// stream rule's replication regions). Refused before anything is signed or stored (400
/// `ack_unreachable`, naming the regions), instead of stored and answered 504 after the
/// ack timeout, at every retry.
/// Regions the policy allows but no node runs in yet are not known here: that stays a 504.
fn ack_reachable(
    api: &Api,
    policy: Option<&weft_policy::Policy>,
    ack: Ack,
    index: usize,
    (stream, classification, residency): (&StreamName, &str, &Residency),
) -> ApiResult<()> {
    let (Ack::Regions(n), Some(policy)) = (ack, policy) else {
        return Ok(());
    };
    let Some(regions) = policy
        .regions_that_may_hold(stream, classification, residency)
        .filter(|r| r.len() < n)
    else {
        return Ok(());
    };
    let most = regions.len();
    let list = regions.into_iter().collect::<Vec<_>>().join(", ");
    let scoped = !stream.is_system()
        && policy
            .stream_rule(stream)
            .is_some_and(|r| r.replication == weft_policy::ReplicationScope::Regions);
    let why = if scoped {
        ": residency and the stream's replication regions"
    } else {
        ""
    };
    Err(api.fail(ApiError::new(
        StatusCode::BAD_REQUEST,
        "ack_unreachable",
        format!(
            "event {index}: ack=regions:{n} can never be met: policy epoch {} lets events of class {classification} on {} be held in {most} region(s) ({list}{why}); ask for at most regions:{most}",
            policy.epoch(),
            stream.as_str(),
        ),
    )))
}

/// Publish authorization and residency stamping under the policy: who may publish to the
/// stream, and which classification and residency set the event is signed with. A refusal
/// is a 403 naming the rule's reason, counted and audited.
pub(crate) fn enforce_publish(
    api: &Api,
    policy: &weft_policy::Policy,
    principal: &Principal,
    stream: &StreamName,
    index: usize,
) -> ApiResult<(String, Residency)> {
    // The stamp first: rules that name classifications (a deny of `eu-personal` for a
    // principal) apply to the class the event will carry.
    let stamp = policy.stamp(stream, None, &Residency::Unrestricted);
    let decision = policy.authorize(&weft_policy::AccessRequest {
        principal: &principal.name,
        action: weft_policy::Action::Publish,
        stream,
        tenant: &principal.tenant,
        classification: stamp.as_ref().ok().map(|s| s.classification.as_str()),
        region: &api.me.region,
    });
    if !decision.allowed {
        return Err(api.refuse(
            ApiError::new(
                StatusCode::FORBIDDEN,
                "publish_forbidden",
                format!(
                    "event {index}: principal {} may not publish to {} (policy epoch {}): {}",
                    principal.name,
                    stream.as_str(),
                    policy.epoch(),
                    decision.reason
                ),
            ),
            Some(&principal.name),
            Some(stream.as_str()),
            policy.epoch(),
        ));
    }
    match stamp {
        Ok(stamp) => {
            check_may_hold(api, policy, stream, &stamp.classification, &stamp.residency).map_err(
                |e| api.refuse(e, Some(&principal.name), Some(stream.as_str()), policy.epoch()),
            )?;
            Ok((stamp.classification, stamp.residency))
        }
        Err(reason) => Err(api.refuse(
            ApiError::new(
                StatusCode::FORBIDDEN,
                "unclassified",
                format!(
                    "event {index}: stream {} has no classification under policy epoch {}: {reason}",
                    stream.as_str(),
                    policy.epoch()
                ),
            ),
            Some(&principal.name),
            Some(stream.as_str()),
            policy.epoch(),
        )),
    }
}

/// Audits a refused pre-signed event with its id.
fn audit_event(api: &Api, e: &ApiError, principal: &str, event: &Event, epoch: u64) {
    api.audit.record(
        crate::audit::Entry::now(
            crate::audit::Decision::Deny,
            e.reason,
            epoch,
            e.message.clone(),
        )
        .principal(principal)
        .stream(event.stream().as_str())
        .event(event.id().to_string()),
    );
}

/// Publish rate limits and daily quotas of the policy (`Policy::rate_limits`): the
/// principal's and the tenant's token buckets must both admit every event of the request.
/// A refusal is 429 `rate_limited` or `quota_exceeded` with `Retry-After`, or 400
/// `batch_over_burst` for a request no bucket could ever admit whole; counted and audited.
/// What is taken is given back unless the publish goes through ([`Charge`]).
pub(crate) fn enforce_rate<'a>(
    api: &'a Api,
    policy: &weft_policy::Policy,
    principal: &Principal,
    events: u64,
    bytes: u64,
    stream: &str,
) -> ApiResult<Charge<'a>> {
    let limits = policy.rate_limits(&principal.name, &principal.tenant);
    let wall_ms = crate::driver::wall_ms();
    let refusal = match api.limiter.admit(
        policy.compilation(),
        &limits,
        &principal.name,
        &principal.tenant,
        events,
        bytes,
        Instant::now(),
        wall_ms,
    ) {
        Ok(()) => {
            return Ok(Charge {
                api,
                policy: policy.compilation(),
                limits,
                principal: principal.name.clone(),
                tenant: principal.tenant.clone(),
                events,
                bytes,
                wall_ms,
                kept: false,
            });
        }
        Err(r) => r,
    };
    let status = match refusal {
        crate::ratelimit::Refusal::OverBurst { .. } => StatusCode::BAD_REQUEST,
        _ => StatusCode::TOO_MANY_REQUESTS,
    };
    let mut e = ApiError::new(
        status,
        refusal.reason(),
        format!("policy epoch {}: {refusal}", policy.epoch()),
    );
    e.retry_after = refusal.retry_after_s();
    e.retry_after_ms = refusal.retry_after_ms();
    Err(api.refuse(e, Some(&principal.name), Some(stream), policy.epoch()))
}

/// Rate-limit tokens and quota a publish took ([`enforce_rate`]): given back when dropped
/// unless [`Charge::keep`] ran, so a publish refused after it was charged (the driver's
/// queue full, the store full, an event the store refused) costs its principal nothing,
/// as a refused request should.
#[must_use = "dropped, the charge is given back"]
pub(crate) struct Charge<'a> {
    api: &'a Api,
    policy: u64,
    limits: weft_policy::RateLimits,
    principal: String,
    tenant: String,
    events: u64,
    bytes: u64,
    wall_ms: i64,
    kept: bool,
}

impl Charge<'_> {
    /// The publish went through: the tokens stay spent.
    pub(crate) fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for Charge<'_> {
    fn drop(&mut self) {
        if !self.kept {
            self.api.limiter.refund(
                self.policy,
                &self.limits,
                &self.principal,
                &self.tenant,
                self.events,
                self.bytes,
                self.wall_ms,
            );
        }
    }
}

async fn mesh_nodes(State(api): State<Arc<Api>>) -> Response {
    // The fabric as this node knows it from link-state gossip: every node's links, status
    // and counters (at most RECORDS_PER_REGION_MAX nodes per region are kept: each region's
    // live members with the lowest keys, the same on every node).
    let s = api.snapshot.borrow().clone();
    axum::Json(json!({"me": hex::encode(api.me.key), "nodes": s.nodes})).into_response()
}

async fn status(State(api): State<Arc<Api>>) -> Response {
    let s = api.snapshot.borrow().clone();
    // Asked once: `ready` and `not_ready` agree.
    let why_not_ready = not_ready(&api);
    axum::Json(json!({
        "name": api.name,
        "key": hex::encode(api.me.key),
        "region": api.me.region,
        "cloud": api.me.cloud,
        "jurisdiction": api.me.jurisdiction,
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_s": api.started.elapsed().as_secs(),
        "ready": why_not_ready.is_none(),
        "not_ready": why_not_ready,
        // Whether the policy in force grants this node's jurisdiction claim (null without
        // a policy): a node it does not grant holds only unrestricted events, and refuses
        // to start with that bundle.
        "jurisdiction_granted": api
            .policy
            .policy()
            .map(|p| p.claim(&api.me.key, &api.me.jurisdiction, &api.me.region).allowed),
        // The wall-clock floor this node numbers past since its wait for its own numbering
        // ended with no member asked answering (null: it did not; `own_numbers_known`).
        "own_numbers_floor": api.own_numbers.floor(),
        "members_up": s.members_up,
        "stored_events": s.stored_events,
        "policy_epoch": api.policy.epoch(),
        "stats": s.stats,
    }))
    .into_response()
}

/// Why this node is not ready to take clients (`/readyz`'s 503, `/v1/status`'s
/// `not_ready`), or `None` when it is.
fn not_ready(api: &Api) -> Option<&'static str> {
    let meshed = api.snapshot.borrow().meshed;
    // Not ready until the node has reached the mesh once (seeds configured): before, it may
    // not know the fabric's state. After, losing every peer leaves it ready: it still takes
    // `ack=local` publishes and serves its region, which a probe must not pull out of
    // service (a user review, 2026-12-06).
    if api.seeded && !meshed {
        return Some(
            "no mesh member reachable yet (seeds configured; a seed that refuses this node's key is logged and counted as peer_handshake_failed)",
        );
    }
    // Nor while it asks members for its own events at its start (its store may be an emptied
    // data directory or an older backup under a key the mesh knows), as long as a publish
    // would wait.
    if own_numbers_unknown(api) && own_numbers_worth_waiting(api) {
        return Some("asking mesh members for this node's own events before numbering new ones");
    }
    // Nor while it trusts operator keys and holds no bundle yet: it refuses every publish,
    // read and edge device (503 `policy_pending`), so a load balancer must not send it
    // clients. The bundle comes through the mesh, which readiness must not gate (the
    // shipped Kubernetes mesh Services publish addresses that are not ready; the first push
    // goes to a pod, not through the HTTP Service, which routes to ready pods only).
    if api.policy.pending() {
        return Some(
            "no policy bundle in force yet (this node trusts operator keys; it serves no data until one arrives: weft policy push, or policy.bundle)",
        );
    }
    None
}

async fn readyz(State(api): State<Arc<Api>>) -> Response {
    match not_ready(&api) {
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
            .into_response(),
        None => {
            let up = api.snapshot.borrow().members_up;
            (StatusCode::OK, format!("ready: {up} members up\n")).into_response()
        }
    }
}

async fn metrics(State(api): State<Arc<Api>>) -> Response {
    // (Messages fault injection dropped are `weft_mesh_dropped_total{reason="chaos"}`, a
    // counter: they were also a `weft_queue_depth` label, a running count among depths.)
    api.metrics.queue("audit", api.audit.queued() as usize);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        api.metrics.render(),
    )
        .into_response()
}

/// `GET /v1/chaos`: the fault injection in force, for an admin principal (as changing it
/// is): which links are cut or slowed is an attacker's map.
async fn chaos_get(State(api): State<Arc<Api>>, headers: HeaderMap) -> ApiResult<Response> {
    api.require_admin(&headers, "read fault injection (principals[].admin)")?;
    Ok(
        axum::Json(json!({"enabled": api.chaos.enabled(), "rules": api.chaos.rules()}))
            .into_response(),
    )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChaosBody {
    rules: Vec<Rule>,
}

async fn chaos_set(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let who = api.require_admin(&headers, "change fault injection (principals[].admin)")?;
    let parsed: ChaosBody = serde_json::from_slice(&body).map_err(|e| {
        api.fail(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_chaos",
            format!("body: {e}"),
        ))
    })?;
    api.chaos.set(parsed.rules).map_err(|m| {
        let status = if api.chaos.enabled() {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::FORBIDDEN
        };
        api.fail(ApiError::new(status, "bad_chaos", m))
    })?;
    api.audit.record(
        crate::audit::Entry::now(
            crate::audit::Decision::Change,
            "chaos_changed",
            api.policy.epoch(),
            format!(
                "fault injection rules changed to {}",
                serde_json::to_string(&api.chaos.rules()).unwrap_or_default()
            ),
        )
        .principal(who.name.clone()),
    );
    Ok(axum::Json(json!({"enabled": true, "rules": api.chaos.rules()})).into_response())
}

/// `GET /v1/audit` parameters; anything else is refused.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    since: Option<i64>,
    before: Option<i64>,
    limit: Option<usize>,
    decision: Option<String>,
    reason: Option<String>,
    principal: Option<String>,
    stream: Option<String>,
}

/// `GET /v1/audit`: audit entries, newest first, for an admin principal. Filters combine;
/// `next_before` is the cursor of the next (older) page, null on the last one.
async fn audit_get(
    State(api): State<Arc<Api>>,
    q: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    use crate::audit::{AUDIT_NAME_LEN_MAX, AUDIT_READ_LIMIT_DEFAULT, AUDIT_READ_LIMIT_MAX};
    api.require_admin(&headers, "read the audit log (principals[].admin)")?;
    let bad = |m: String| api.fail(ApiError::new(StatusCode::BAD_REQUEST, "bad_audit_query", m));
    let Query(q) = q.map_err(|e| bad(e.body_text()))?;
    let limit = q.limit.unwrap_or(AUDIT_READ_LIMIT_DEFAULT);
    if limit == 0 || limit > AUDIT_READ_LIMIT_MAX {
        return Err(api.fail(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_limit",
            format!(
                "limit must be 1 to {AUDIT_READ_LIMIT_MAX} (AUDIT_READ_LIMIT_MAX), got {limit}"
            ),
        )));
    }
    if q.since.is_some_and(|s| s < 0) {
        return Err(bad(
            "since is a unix time in milliseconds, at least 0".into()
        ));
    }
    if q.before.is_some_and(|b| b < 1) {
        return Err(bad(
            "before is an entry id (next_before of the previous page), at least 1".into(),
        ));
    }
    let decision = match q.decision.as_deref() {
        None => None,
        Some(d) => Some(crate::audit::Decision::parse(d).ok_or_else(|| {
            bad(format!(
                "decision {d:?} is not one of {}",
                crate::audit::Decision::ALL
                    .map(crate::audit::Decision::as_str)
                    .join(", ")
            ))
        })?),
    };
    if let Some(r) = &q.reason
        && (r.is_empty()
            || r.len() > crate::audit::AUDIT_REASON_LEN_MAX
            || !r
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'))
    {
        return Err(bad(format!(
            "reason {r:?} is not a reason code (snake_case, 1 to {} bytes)",
            crate::audit::AUDIT_REASON_LEN_MAX
        )));
    }
    for (field, v) in [("principal", &q.principal), ("stream", &q.stream)] {
        if let Some(v) = v
            && (v.is_empty() || v.len() > AUDIT_NAME_LEN_MAX)
        {
            return Err(bad(format!(
                "{field} must be 1 to {AUDIT_NAME_LEN_MAX} bytes"
            )));
        }
    }
    let filter = crate::audit::Filter {
        since_ms: q.since,
        before: q.before,
        decision,
        reason: q.reason,
        principal: q.principal,
        stream: q.stream,
        limit,
    };
    let audit = api.audit.clone();
    let (rows, reasons_in_log) =
        tokio::task::spawn_blocking(move || audit.query_explained(&filter))
            .await
            .map_err(|e| {
                api.fail(ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    e.to_string(),
                ))
            })?
            .map_err(|e| {
                api.fail(ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "audit_error",
                    e.to_string(),
                ))
            })?;
    let next_before = (rows.len() == limit)
        .then(|| rows.last().map(|r| r.id))
        .flatten();
    let (node, key) = api.audit.node();
    let mut body = json!({
        "node": node,
        "node_key": key,
        "entries": rows,
        "next_before": next_before,
    });
    // A reason no entry of the log has (a typo, or a code this node never audits): the
    // reasons it does hold, so an empty answer is not read as "nothing happened".
    if let Some(reasons) = reasons_in_log {
        body["reasons_in_log"] = json!(reasons);
    }
    Ok(axum::Json(body).into_response())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Reads beyond `limits.reads_inflight_max` wait for a slot, and get 503 `reads_busy`
    /// with Retry-After when none frees in time.
    #[tokio::test]
    async fn a_read_waits_for_a_slot_then_gets_503() {
        let slots = Arc::new(tokio::sync::Semaphore::new(1));
        let held = read_slot(&slots, Duration::from_millis(10)).await.unwrap();
        let refused = read_slot(&slots, Duration::from_millis(50))
            .await
            .unwrap_err();
        assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(refused.reason(), "reads_busy");
        assert_eq!(refused.retry_after, Some(1));
        assert!(refused.message.contains("limits.reads_inflight_max"));
        // A slot freed while a read waits goes to it.
        let release = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            drop(held);
        });
        let got = read_slot(&slots, Duration::from_secs(10)).await;
        assert!(got.is_ok());
        release.await.unwrap();
        assert_eq!(
            slots.available_permits(),
            0,
            "the waiting read holds the slot"
        );
    }

    const BUNDLE: &str = r#"
format = 1
epoch = 2
[tenants.acme]
[tenants.globex]
[roles.analyst]
[principals.ana]
tenant = "acme"
roles = ["analyst"]
token_sha256 = "eb759c4f289ff540bc4f7b7a3af9e2dda169e7cdfefe42f732e4442325ce655b"

[[access]]
name = "read-all"
effect = "allow"
actions = ["read", "subscribe"]
streams = [">"]
roles = ["analyst"]

[[access]]
name = "no-personal"
effect = "deny"
actions = ["read", "subscribe"]
streams = [">"]
roles = ["analyst"]
classifications = ["personal"]

[classes.personal]
anywhere = true
[classes.public]
anywhere = true

[[streams]]
pattern = "orders.>"
classification = "public"
replication = "all"
"#;

    /// A node's member record in `region`, claiming `jurisdiction`.
    pub(crate) fn node_in(region: &str, jurisdiction: &str) -> MemberInfo {
        MemberInfo {
            key: [3; 32],
            region: region.into(),
            cloud: "aws".into(),
            jurisdiction: jurisdiction.into(),
            addr: "127.0.0.1:7400".into(),
            policy_epoch: 0,
            generation: 0,
        }
    }

    fn event(stream: &str, tenant: &str, classification: &str) -> Event {
        Signer::from_secret(&[7; 32])
            .sign(EventDraft {
                stream: StreamName::new(stream).unwrap(),
                key: None,
                seq: 1,
                hlc: weft_fabric::Hlc::new(1, 0).unwrap(),
                security: SecurityContext {
                    tenant: tenant.into(),
                    principal: "p".into(),
                    classification: classification.into(),
                    residency: Residency::Unrestricted,
                    scopes: BTreeSet::new(),
                    policy_epoch: 2,
                },
                content_type: CE_JSON.into(),
                payload: Payload::Clear(b"{}".to_vec()),
                trace: None,
            })
            .unwrap()
    }

    /// A node serves only what the policy in force lets it hold: events stored before an
    /// epoch revoked its jurisdiction claim (or narrowed their class) are left out of
    /// reads, whatever the reader's rights.
    #[test]
    fn a_node_serves_only_what_it_may_hold() {
        let eu_key = hex::encode([3u8; 32]);
        let us_key = hex::encode([4u8; 32]);
        let bundle_text = format!(
            r#"format = 1
epoch = 3
[jurisdictions.EU]
regions = ["aws:eu-west-1"]
nodes = ["{eu_key}"]
[jurisdictions.US]
regions = ["aws:us-east-1"]
nodes = ["{us_key}"]
[tenants.acme]
[roles.analyst]
[principals.ana]
tenant = "acme"
roles = ["analyst"]
token_sha256 = "eb759c4f289ff540bc4f7b7a3af9e2dda169e7cdfefe42f732e4442325ce655b"
[[access]]
name = "read-all"
effect = "allow"
actions = ["read", "subscribe"]
streams = [">"]
roles = ["analyst"]
[classes.eu-personal]
jurisdictions = ["EU"]
transit = "forbidden"
[classes.public]
anywhere = true
[[streams]]
pattern = "customers.>"
classification = "eu-personal"
replication = "all"
[[streams]]
pattern = ">"
classification = "public"
replication = "all"
"#
        );
        let bundle = weft_policy::Bundle::from_toml(&bundle_text).unwrap();
        let policy = Arc::new(weft_policy::Policy::compile(&bundle).unwrap());
        let guard = |me: MemberInfo| {
            ReadGuard::new(
                policy.clone(),
                Principal {
                    name: "ana".into(),
                    tenant: "acme".into(),
                    token_sha256: String::new(),
                    admin: false,
                },
                weft_policy::Action::Read,
                me,
            )
        };
        let eu = guard(node_in("aws:eu-west-1", "EU"));
        let mut us_node = node_in("aws:us-east-1", "US");
        us_node.key = [4; 32];
        let us = guard(us_node);
        let personal = Signer::from_secret(&[7; 32])
            .sign(EventDraft {
                stream: StreamName::new("customers.eu").unwrap(),
                key: None,
                seq: 1,
                hlc: weft_fabric::Hlc::new(1, 0).unwrap(),
                security: SecurityContext {
                    tenant: "acme".into(),
                    principal: "p".into(),
                    classification: "eu-personal".into(),
                    residency: Residency::only(["EU"]).unwrap(),
                    scopes: BTreeSet::new(),
                    policy_epoch: 3,
                },
                content_type: CE_JSON.into(),
                payload: Payload::Clear(b"{}".to_vec()),
                trace: None,
            })
            .unwrap();
        assert!(eu.allows(&personal));
        assert!(!us.allows(&personal), "held here before, not servable now");
        assert!(us.allows(&event("orders.x", "acme", "public")));
        // Stamped public before an epoch classified its stream EU personal: held to the
        // new class (the EU node serves it, the US node no longer does).
        let reclassified = event("customers.us", "acme", "public");
        assert!(eu.allows(&reclassified));
        assert!(
            !us.allows(&reclassified),
            "reclassified since it was stamped"
        );
        // Table rows remember each write's stream, tenant and class: the same holds.
        let customers = StreamName::new("customers.us").unwrap();
        assert!(eu.allows_write(&customers, "acme", "public"));
        assert!(!us.allows_write(&customers, "acme", "public"));
        let orders = StreamName::new("orders.x").unwrap();
        assert!(!us.allows_write(&orders, "acme", "eu-personal"));
        assert!(us.allows_write(&orders, "acme", "public"));
        // An open subscription's guard given a newer epoch that no longer grants the EU
        // node's claim places the node again: the personal event is no longer served
        // (the placement cached from the older epoch kept serving it).
        let demoting = bundle_text.replace(&format!("nodes = [\"{eu_key}\"]"), "nodes = []");
        let demoting =
            weft_policy::Bundle::from_toml(&demoting.replace("epoch = 3", "epoch = 4")).unwrap();
        let mut open = guard(node_in("aws:eu-west-1", "EU"));
        assert!(open.allows(&personal));
        open.set_policy(Arc::new(weft_policy::Policy::compile(&demoting).unwrap()));
        assert!(!open.allows(&personal), "served under the older placement");
    }

    #[test]
    fn a_reader_gets_only_events_its_tenant_and_the_event_classification_allow() {
        let bundle = weft_policy::Bundle::from_toml(BUNDLE).unwrap();
        let guard = ReadGuard::new(
            Arc::new(weft_policy::Policy::compile(&bundle).unwrap()),
            Principal {
                name: "ana".into(),
                tenant: "acme".into(),
                token_sha256: String::new(),
                admin: false,
            },
            weft_policy::Action::Read,
            node_in("aws:eu-west-1", "EU"),
        );
        // The stream rule says public, but the event itself is classified personal: the
        // deny rule on the classification holds per event.
        assert!(guard.allows(&event("orders.eu", "acme", "public")));
        assert!(!guard.allows(&event("orders.eu", "acme", "personal")));
        // Another tenant's event on the same stream.
        assert!(!guard.allows(&event("orders.eu", "globex", "public")));
        // Any stream, as a pattern read would return them.
        assert!(guard.allows(&event("catalogue.items", "acme", "public")));
        assert!(!guard.allows(&event("customers.eu", "acme", "personal")));
    }
}
