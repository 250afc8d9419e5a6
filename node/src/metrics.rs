//! Prometheus metrics (`GET /metrics`, text format), through prometheus-client.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

type Labels = Vec<(&'static str, String)>;

/// Every metric the node exports.
pub(crate) struct Metrics {
    registry: Registry,
    /// Events accepted from local producers, by API (`cloudevents`, `cbor`).
    pub(crate) publishes: Family<Labels, Counter>,
    /// Requests or events refused, by reason.
    pub(crate) rejected: Family<Labels, Counter>,
    /// Events delivered to this node's log (local subscribers), in order.
    pub(crate) deliveries: Counter,
    /// Stored events removed by erase requests (`erase.rs`).
    pub(crate) erased: Counter,
    pub(crate) erases_pending: Gauge,
    /// Tables being built from the log a pass at a time, and keys of tables rebuilt on
    /// their own a pass at a time (`tables::build_pass`).
    pub(crate) tables_building: Gauge,
    pub(crate) table_keys_building: Gauge,
    /// Events received from peers that were new here.
    pub(crate) replicated_in: Counter,
    /// Events received from peers that were already here.
    pub(crate) duplicates_in: Counter,
    /// Events applied here whose HLC was more than the drift bound ahead of this node's
    /// clock: kept, their time not adopted by this node's clock.
    pub(crate) hlc_ahead: Counter,
    /// Confirmable copies sent to another member of a region that had not confirmed, by
    /// reason.
    pub(crate) confirm_retries: Family<Labels, Counter>,
    /// Mesh messages sent, by kind.
    pub(crate) mesh_sent: Family<Labels, Counter>,
    /// Mesh messages received, by kind.
    pub(crate) mesh_received: Family<Labels, Counter>,
    /// Mesh messages dropped before sending (peer queue full, no route, chaos), by reason.
    pub(crate) mesh_dropped: Family<Labels, Counter>,
    /// Group-commit latency of the store.
    pub(crate) commit_seconds: Histogram,
    /// Events stored.
    pub(crate) stored_events: Gauge,
    /// Members up (peers).
    pub(crate) members: Gauge,
    /// Cross-region pushes rerouted after their acknowledgement timed out (since start).
    pub(crate) failovers: Gauge,
    /// Pushes relayed on to other regions for their origin (since start).
    pub(crate) relayed: Gauge,
    /// Smoothed RTT to each peer, in seconds.
    pub(crate) peer_rtt: Family<Labels, Gauge<f64, AtomicU64>>,
    /// Queue depths, by queue.
    pub(crate) queue_depth: Family<Labels, Gauge>,
    /// Publish-to-acknowledgement latency, by ack level.
    pub(crate) ack_seconds: Family<Labels, Histogram>,
    /// Active SSE subscribers.
    pub(crate) subscribers: Gauge,
    /// Audit entries recorded, by decision (`deny`, `apply`, `change`, `overflow`).
    pub(crate) audit_entries: Family<Labels, Counter>,
    /// Audit entries not stored because the audit queue was full (each is still in the
    /// node's log under target `audit`).
    pub(crate) audit_dropped: Counter,
    /// Audit entries the writer failed to store (disk or database errors).
    pub(crate) audit_write_errors: Counter,
    /// Audit entries deleted by retention.
    pub(crate) audit_pruned: Counter,
    /// The policy epoch in force (0: none).
    pub(crate) policy_epoch: Gauge,
    /// Policy bundles applied since start (pushed, caught up or published here).
    pub(crate) policy_applied: Counter,
    /// Keyed-table writes and conflict resolutions, by strategy and kind.
    pub(crate) table_events: Family<Labels, Counter>,
    /// Events derived by egress transforms and handed to the core, by transform.
    pub(crate) egress_derived: Family<Labels, Counter>,
    /// Egress derivations that failed (their sources accepted all the same), by reason.
    pub(crate) egress_failures: Family<Labels, Counter>,
    /// Events deleted by stream retention, by cause (`age`, `size`).
    pub(crate) events_expired: Family<Labels, Counter>,
    /// Ranges of expired sequence numbers the store keeps (bounded by
    /// `limits.expired_ranges_max`).
    pub(crate) expired_ranges: Gauge,
    /// Ranges of expired numbers dropped at `limits.expired_ranges_max` (the node no
    /// longer answers Skips for them).
    pub(crate) expired_ranges_dropped: Counter,
    /// Aggregation windows open.
    pub(crate) egress_windows: Gauge,
    /// Estimated bytes held by open aggregation windows.
    pub(crate) egress_window_bytes: Gauge,
    /// Edge agents connected now.
    pub(crate) edge_agents: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_05, 2.0, 18))
}

/// The kinds of `weft_table_events_total` each table strategy counts (the fields of
/// `weft_fabric::table::ConflictStats` its resolution moves), there from the start at 0.
pub(crate) const TABLE_EVENT_KINDS: [(&str, &[&str]); 4] = [
    ("lww", &["applied", "duplicate", "ignored", "lww_lost"]),
    (
        "multi-value",
        &[
            "applied",
            "duplicate",
            "ignored",
            "mv_siblings",
            "mv_resolved",
            "superseded_late",
        ],
    ),
    (
        "counter",
        &["applied", "duplicate", "ignored", "counter_merged"],
    ),
    (
        "set",
        &[
            "applied",
            "duplicate",
            "ignored",
            "superseded_late",
            "set_add_wins",
        ],
    ),
];

/// The reasons of `weft_confirm_retries_total`: a copy not sent, a member that answered
/// without the events, a member asked (by the mesh's tree) known to store none of the
/// stream, no answer by half the ack timeout.
pub(crate) const CONFIRM_RETRY_REASONS: [&str; 4] = [
    "not_sent",
    "answered_without",
    "known_not_storing",
    "no_answer_by_half_timeout",
];

/// Every reason of `weft_rejected_total` the node names, sorted: the API's error reasons,
/// the edge port's, the mesh transport's and the driver's. Each series is there at 0 from
/// the start. Two checks keep the list whole: a test reads the sources for the reasons
/// named where refusals are counted (`every_reason_named_in_the_sources_is_listed`), and
/// debug builds (every test of a running node) panic at a refusal whose reason is not
/// here. A release build counts it all the same, its series appearing with it.
/// `commit_failed`, `log_append_failed` and `policy_not_kept` are counted just before the
/// node stops (exit 74): alert on the restarts, not on them.
pub(crate) const REJECT_REASONS: &[&str] = &[
    "ack_timeout",
    "ack_unreachable",
    "audit_error",
    "bad_ack",
    "bad_attribute_name",
    "bad_attribute_value",
    "bad_audit_query",
    "bad_chaos",
    "bad_cursor",
    "bad_data",
    "bad_durable_name",
    "bad_envelope",
    "bad_erase_request",
    "bad_event",
    "bad_event_id",
    "bad_header_encoding",
    "bad_json",
    "bad_key",
    "bad_last",
    "bad_limit",
    "bad_path",
    "bad_query",
    "bad_request",
    "bad_signature",
    "bad_specversion",
    "bad_stream",
    "bad_table_write",
    "bad_time",
    "bad_token",
    "bad_void",
    "batch_empty",
    "batch_over_burst",
    "batch_too_large",
    "body_too_large",
    "bundle_bad_signature",
    "bundle_invalid",
    "bundle_malformed",
    "bundle_oversize",
    "bundle_rollback",
    "bundle_signer_order",
    "bundle_too_few_signers",
    "bundle_too_many_signatures",
    "bundle_unknown_signer",
    "bundle_unsigned",
    "commit_failed",
    "confirm_from_unknown_peer",
    "counter_shared",
    "cursors_full",
    "data_not_utf8",
    "derived_unrecorded",
    "device_not_allowed",
    "device_not_enrolled",
    "digest_forbidden",
    "downlink_not_held",
    "downlink_residency",
    "duplicate_attribute",
    "duplicate_in_batch",
    "edge_bad_frame",
    "edge_batch_too_large",
    "edge_busy",
    "edge_handshake_failed",
    "edge_no_device_key",
    "edge_protocol",
    "edge_stream_error",
    "edge_too_many_agents",
    "edge_too_many_handshakes",
    "erase_failed",
    "erase_invalid",
    "erase_pass_failed",
    "erase_rules_full",
    "erased",
    "event_id_reused",
    "event_not_found",
    "expired",
    "hlc_ahead",
    "internal",
    "jurisdiction_claim",
    "log_append_failed",
    "malformed_message",
    "message_too_long",
    "method_not_allowed",
    "missing_attribute",
    "missing_stream",
    "missing_token",
    "no_policy",
    "no_such_route",
    "not_a_table",
    "not_admin",
    "not_durable",
    "origin_equivocation",
    "origin_mismatch",
    "overloaded",
    "payload_too_large",
    "peer_address_other_key",
    "peer_handshake_failed",
    "peer_without_identity",
    "policy_carrier_invalid",
    "policy_no_trust",
    "policy_not_kept",
    "policy_pending",
    "principal_mismatch",
    "publish_forbidden",
    "publish_in_progress",
    "quota_exceeded",
    "rate_limited",
    "read_filtered",
    "read_forbidden",
    "reads_busy",
    "reserved_attribute",
    "reserved_content_type",
    "residency_ingress",
    "residency_refused",
    "residency_wider",
    "retract_abandoned",
    "seq_reused",
    "shutting_down",
    "skip_contradicted",
    "skip_contradicted_retention",
    "store_corrupt",
    "store_error",
    "store_refused",
    "store_unavailable",
    "stream_mismatch",
    "stream_not_allowed",
    "stream_not_stored",
    "stream_read_failed",
    "subscribe_forbidden",
    "subscription_ended",
    "subscription_not_found",
    "system_stream",
    "table_apply_failed",
    "table_building",
    "table_erasing",
    "token_revoked",
    "too_many_elements",
    "too_many_siblings",
    "too_many_subscribers",
    "too_many_subscriptions",
    "unclassified",
    "unknown_stream_kind",
    "version_ahead",
    "wrong_op",
];

/// The reasons of `weft_egress_failures_total` (`egress::Failure::reason`), sorted.
pub(crate) const EGRESS_FAILURE_REASONS: &[&str] = &[
    "dropped_at_shutdown",
    "flush_queue_full",
    "hash_key_missing",
    "not_a_number",
    "not_json",
    "path_unresolved",
    "residency_disjoint",
    "residency_ingress",
    "sealed",
    "sign_failed",
    "source_refused",
    "store_refused",
    "target_not_stored",
    "transform_withdrawn",
    "unclassified",
];

/// The reasons of `weft_mesh_dropped_total` (the transport's), sorted.
pub(crate) const MESH_DROP_REASONS: &[&str] = &[
    "chaos",
    "chaos_delay_overflow",
    "confirm_failed",
    "confirm_report_lost",
    "connection_replaced",
    "handshake_broken",
    "peer_queue_full",
    "peer_unreachable",
    "send_failed",
    "sync_failed",
    "untrusted_peer",
];

/// The APIs of `weft_publishes_total`.
pub(crate) const PUBLISH_APIS: [&str; 4] = ["cbor", "cloudevents", "edge", "table"];

/// The causes of `weft_events_expired_total`.
pub(crate) const EXPIRED_CAUSES: [&str; 2] = ["age", "size"];

/// The queues of `weft_queue_depth`.
pub(crate) const QUEUES: [&str; 3] = ["audit", "driver_mesh_inputs", "driver_publishes"];

/// In debug builds, panics when `value` is not in `list`: its series would not be there
/// from the start ([`REJECT_REASONS`]).
fn listed(list: &[&str], value: &str) {
    debug_assert!(
        list.contains(&value),
        "{value:?} is not listed in node/src/metrics.rs: add it so its series is exported at 0"
    );
}

/// Creates the series of `family` for each of `values` of label `key` (at 0).
fn zeros<M, C: MetricConstructor<M>>(
    family: &Family<Labels, M, C>,
    key: &'static str,
    values: &[&str],
) {
    for v in values {
        drop(family.get_or_create(&vec![(key, (*v).to_string())]));
    }
}

impl Metrics {
    /// All metrics, registered.
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("weft");
        let m = Self {
            publishes: Family::default(),
            rejected: Family::default(),
            deliveries: Counter::default(),
            erased: Counter::default(),
            erases_pending: Gauge::default(),
            tables_building: Gauge::default(),
            table_keys_building: Gauge::default(),
            replicated_in: Counter::default(),
            duplicates_in: Counter::default(),
            hlc_ahead: Counter::default(),
            confirm_retries: Family::default(),
            mesh_sent: Family::default(),
            mesh_received: Family::default(),
            mesh_dropped: Family::default(),
            commit_seconds: latency_histogram(),
            stored_events: Gauge::default(),
            members: Gauge::default(),
            failovers: Gauge::default(),
            relayed: Gauge::default(),
            peer_rtt: Family::default(),
            policy_epoch: Gauge::default(),
            policy_applied: Counter::default(),
            edge_agents: Gauge::default(),
            queue_depth: Family::default(),
            ack_seconds: Family::new_with_constructor(latency_histogram),
            subscribers: Gauge::default(),
            audit_entries: Family::default(),
            audit_dropped: Counter::default(),
            audit_write_errors: Counter::default(),
            audit_pruned: Counter::default(),
            egress_derived: Family::default(),
            table_events: Family::default(),
            egress_failures: Family::default(),
            events_expired: Family::default(),
            expired_ranges: Gauge::default(),
            expired_ranges_dropped: Counter::default(),
            egress_windows: Gauge::default(),
            egress_window_bytes: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "publishes",
            "Events accepted from local producers",
            m.publishes.clone(),
        );
        registry.register(
            "rejected",
            "Requests and events refused, by reason",
            m.rejected.clone(),
        );
        registry.register(
            "deliveries",
            "Events appended to the local log in order",
            m.deliveries.clone(),
        );
        registry.register(
            "erased_events",
            "Stored events removed by erase requests",
            m.erased.clone(),
        );
        registry.register(
            "erases_pending",
            "Erases whose covered events are still being removed pass by pass (hidden from reads meanwhile)",
            m.erases_pending.clone(),
        );
        registry.register(
            "tables_building",
            "Tables being built from the log pass by pass (a new table or strategy; listings answer 503 meanwhile)",
            m.tables_building.clone(),
        );
        registry.register(
            "table_keys_building",
            "Table keys of more writes than a pass rebuilt from the log pass by pass (after an erase, a late write or in a build; their table's listing answers 503 meanwhile)",
            m.table_keys_building.clone(),
        );
        registry.register(
            "replicated_in",
            "New events received from peers",
            m.replicated_in.clone(),
        );
        registry.register(
            "duplicates_in",
            "Events received from peers already held",
            m.duplicates_in.clone(),
        );
        registry.register(
            "confirm_retries",
            "Confirmable copies of ack=regions:N events sent to another member of a region that had not confirmed, by reason: not_sent (a copy did not get through), answered_without (the member does not store the stream), known_not_storing (a member known to store none of the stream was passed over), no_answer_by_half_timeout",
            m.confirm_retries.clone(),
        );
        registry.register(
            "hlc_ahead",
            "Events applied whose HLC was more than the 60 s drift bound ahead of this node's clock (kept; their time not adopted)",
            m.hlc_ahead.clone(),
        );
        registry.register(
            "mesh_sent",
            "Mesh messages handed to the transport to send, by kind (a message fault injection or a broken connection then drops is in weft_mesh_dropped_total too)",
            m.mesh_sent.clone(),
        );
        registry.register(
            "mesh_received",
            "Mesh messages received, by kind",
            m.mesh_received.clone(),
        );
        registry.register(
            "mesh_dropped",
            "Mesh messages and connections dropped, by reason: before sending (full queue, no route, fault injection), or a connection lost or replaced (handshake_broken, connection_replaced, sync_failed, untrusted_peer)",
            m.mesh_dropped.clone(),
        );
        registry.register(
            "store_commit_seconds",
            "Group commit (fsync) latency",
            m.commit_seconds.clone(),
        );
        registry.register(
            "stored_events",
            "Events in the store",
            m.stored_events.clone(),
        );
        registry.register(
            "members",
            "Mesh members up, excluding this node",
            m.members.clone(),
        );
        registry.register(
            "route_failovers",
            "Cross-region pushes rerouted after a missing acknowledgement, since start",
            m.failovers.clone(),
        );
        registry.register(
            "route_relayed",
            "Pushes relayed on to other regions, since start",
            m.relayed.clone(),
        );
        registry.register(
            "peer_rtt_seconds",
            "RTT estimate per peer",
            m.peer_rtt.clone(),
        );
        registry.register("queue_depth", "Queue depths", m.queue_depth.clone());
        registry.register(
            "ack_seconds",
            "Publish to acknowledgement, by ack level",
            m.ack_seconds.clone(),
        );
        registry.register(
            "sse_subscribers",
            "Open SSE subscriptions",
            m.subscribers.clone(),
        );
        registry.register(
            "audit_entries",
            "Audit entries recorded, by decision",
            m.audit_entries.clone(),
        );
        registry.register(
            "audit_dropped",
            "Audit entries not stored because the audit queue was full",
            m.audit_dropped.clone(),
        );
        registry.register(
            "audit_write_errors",
            "Audit entries the writer failed to store",
            m.audit_write_errors.clone(),
        );
        registry.register(
            "audit_pruned",
            "Audit entries deleted by retention",
            m.audit_pruned.clone(),
        );
        registry.register(
            "policy_epoch",
            "Policy epoch in force (0: no policy)",
            m.policy_epoch.clone(),
        );
        registry.register(
            "policy_applied",
            "Policy bundles applied since start (pushes and bundles from the fabric; not the one loaded at start, which weft_policy_epoch shows)",
            m.policy_applied.clone(),
        );
        registry.register(
            "table_events",
            "Keyed-table writes (applied, duplicate, ignored) and conflicts resolved, by strategy and kind",
            m.table_events.clone(),
        );
        registry.register(
            "egress_derived",
            "Events derived by egress transforms, by transform",
            m.egress_derived.clone(),
        );
        registry.register(
            "egress_failures",
            "Egress derivations that failed (sources still accepted), by reason",
            m.egress_failures.clone(),
        );
        registry.register(
            "events_expired",
            "Events deleted by stream retention (retention_s, retention_bytes), by cause",
            m.events_expired.clone(),
        );
        registry.register(
            "expired_ranges",
            "Ranges of expired sequence numbers kept so peers get a Skip for them",
            m.expired_ranges.clone(),
        );
        registry.register(
            "expired_ranges_dropped",
            "Ranges of expired numbers dropped, oldest first, at limits.expired_ranges_max (Skips for them are no longer answered here)",
            m.expired_ranges_dropped.clone(),
        );
        registry.register(
            "egress_windows",
            "Aggregation windows open",
            m.egress_windows.clone(),
        );
        registry.register(
            "egress_window_bytes",
            "Estimated bytes held by open aggregation windows",
            m.egress_window_bytes.clone(),
        );
        registry.register(
            "edge_agents",
            "Edge agents connected",
            m.edge_agents.clone(),
        );
        // Series whose labels are a fixed set are there from the start, at 0: a dashboard
        // or an alert on them (an `increase`, a rate, an absence) works from the first
        // event (in Prometheus a series that appears at 1 shows no increase, so the first
        // forged signature would pass an `increase(...) > 0` alert by). Those per egress
        // transform appear with the policy that names them (`policy_in_force`); the
        // per-peer RTT gauge appears with the peer's first sample.
        zeros(&m.confirm_retries, "reason", &CONFIRM_RETRY_REASONS);
        zeros(&m.ack_seconds, "level", &["none", "local", "regions"]);
        zeros(&m.rejected, "reason", REJECT_REASONS);
        zeros(&m.egress_failures, "reason", EGRESS_FAILURE_REASONS);
        zeros(&m.mesh_dropped, "reason", MESH_DROP_REASONS);
        zeros(&m.mesh_sent, "kind", &weft_fabric::mesh::Message::KINDS);
        zeros(&m.mesh_received, "kind", &weft_fabric::mesh::Message::KINDS);
        zeros(&m.publishes, "api", &PUBLISH_APIS);
        zeros(&m.events_expired, "cause", &EXPIRED_CAUSES);
        zeros(&m.queue_depth, "queue", &QUEUES);
        let decisions = crate::audit::Decision::ALL.map(crate::audit::Decision::as_str);
        zeros(&m.audit_entries, "decision", &decisions);
        for (strategy, kinds) in TABLE_EVENT_KINDS {
            for kind in kinds {
                drop(m.table_events.get_or_create(&vec![
                    ("strategy", strategy.to_string()),
                    ("kind", kind.to_string()),
                ]));
            }
        }
        Self { registry, ..m }
    }

    /// The policy in force changed (or was set at start; `None`: no policy): the epoch
    /// gauge, and each of its egress transforms' series at 0 unless counted already.
    pub(crate) fn policy_in_force(&self, policy: Option<&weft_policy::Policy>) {
        self.policy_epoch
            .set(policy.map_or(0, weft_policy::Policy::epoch) as i64);
        if let Some(p) = policy {
            let names: Vec<&str> = p.transforms().map(|t| t.name()).collect();
            zeros(&self.egress_derived, "transform", &names);
        }
    }

    /// Counts what one table write did: the difference between two snapshots of a
    /// strategy's conflict counters.
    pub(crate) fn table_writes(
        &self,
        strategy: &str,
        before: &weft_fabric::table::ConflictStats,
        after: &weft_fabric::table::ConflictStats,
    ) {
        let pairs = [
            ("applied", before.applied, after.applied),
            ("duplicate", before.duplicates, after.duplicates),
            ("ignored", before.ignored, after.ignored),
            ("lww_lost", before.lww_lost, after.lww_lost),
            ("mv_siblings", before.mv_siblings, after.mv_siblings),
            ("mv_resolved", before.mv_resolved, after.mv_resolved),
            (
                "superseded_late",
                before.superseded_late,
                after.superseded_late,
            ),
            (
                "counter_merged",
                before.counter_merged,
                after.counter_merged,
            ),
            ("set_add_wins", before.set_add_wins, after.set_add_wins),
        ];
        for (kind, b, a) in pairs {
            if a > b {
                // Every process test checks the list (as `listed` does the reasons).
                debug_assert!(
                    TABLE_EVENT_KINDS
                        .iter()
                        .any(|(s, k)| *s == strategy && k.contains(&kind)),
                    "table event {strategy}/{kind} not in TABLE_EVENT_KINDS"
                );
                self.table_events
                    .get_or_create(&vec![
                        ("strategy", strategy.to_string()),
                        ("kind", kind.to_string()),
                    ])
                    .inc_by(a - b);
            }
        }
    }

    /// Counts a refusal.
    pub(crate) fn reject(&self, reason: &str) {
        listed(REJECT_REASONS, reason);
        self.rejected
            .get_or_create(&vec![("reason", reason.to_string())])
            .inc();
    }

    /// Counts `n` refusals of one reason.
    pub(crate) fn reject_n(&self, reason: &str, n: u64) {
        listed(REJECT_REASONS, reason);
        self.rejected
            .get_or_create(&vec![("reason", reason.to_string())])
            .inc_by(n);
    }

    /// Counts a mesh message dropped before sending ([`MESH_DROP_REASONS`]).
    pub(crate) fn mesh_drop(&self, reason: &str) {
        listed(MESH_DROP_REASONS, reason);
        Self::inc(&self.mesh_dropped, "reason", reason);
    }

    /// Counts an egress transform's failure ([`EGRESS_FAILURE_REASONS`]).
    pub(crate) fn egress_failure(&self, reason: &str) {
        listed(EGRESS_FAILURE_REASONS, reason);
        Self::inc(&self.egress_failures, "reason", reason);
    }

    /// One labelled counter.
    pub(crate) fn inc(family: &Family<Labels, Counter>, key: &'static str, value: &str) {
        family.get_or_create(&vec![(key, value.to_string())]).inc();
    }

    /// `n` events taken from local producers through `api` (`weft_publishes_total`):
    /// counted once the driver took them, not before (refused ones, a full queue's, an
    /// erased key's were counted as published).
    pub(crate) fn published(&self, api: &'static str, n: usize) {
        listed(&PUBLISH_APIS, api);
        if n > 0 {
            self.publishes
                .get_or_create(&vec![("api", api.to_string())])
                .inc_by(n as u64);
        }
    }

    /// Sets a queue depth gauge.
    pub(crate) fn queue(&self, queue: &str, depth: usize) {
        self.queue_depth
            .get_or_create(&vec![("queue", queue.to_string())])
            .set(depth as i64);
    }

    /// The text exposition.
    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    /// Series with a fixed set of labels are rendered at 0 before any event (they were
    /// absent until their first event, so a rate or an absence alert had nothing to read).
    #[test]
    fn fixed_label_series_are_there_from_the_start() {
        let text = super::Metrics::new().render();
        for series in [
            "weft_confirm_retries_total{reason=\"not_sent\"} 0",
            "weft_confirm_retries_total{reason=\"answered_without\"} 0",
            "weft_confirm_retries_total{reason=\"no_answer_by_half_timeout\"} 0",
            "weft_ack_seconds_count{level=\"regions\"} 0",
            "weft_ack_seconds_count{level=\"local\"} 0",
            "weft_rejected_total{reason=\"bad_signature\"} 0",
            "weft_rejected_total{reason=\"peer_handshake_failed\"} 0",
            "weft_egress_failures_total{reason=\"not_json\"} 0",
            "weft_mesh_dropped_total{reason=\"peer_queue_full\"} 0",
            "weft_mesh_sent_total{kind=\"push\"} 0",
            "weft_mesh_received_total{kind=\"sync_request\"} 0",
            "weft_publishes_total{api=\"edge\"} 0",
            "weft_events_expired_total{cause=\"age\"} 0",
            "weft_queue_depth{queue=\"driver_publishes\"} 0",
            "weft_audit_entries_total{decision=\"deny\"} 0",
            "weft_table_events_total{strategy=\"lww\",kind=\"lww_lost\"} 0",
            "weft_table_events_total{strategy=\"multi-value\",kind=\"mv_siblings\"} 0",
            "weft_table_events_total{strategy=\"counter\",kind=\"counter_merged\"} 0",
            "weft_table_events_total{strategy=\"set\",kind=\"set_add_wins\"} 0",
        ] {
            assert!(text.lines().any(|l| l == series), "{series} in\n{text}");
        }
        let rejected = text
            .lines()
            .filter(|l| l.starts_with("weft_rejected_total{"))
            .count();
        assert_eq!(rejected, super::REJECT_REASONS.len(), "{text}");
    }

    /// Each table strategy's kinds are listed under the name the API and the metric use,
    /// and a strategy counts no kind of another's resolution.
    #[test]
    fn table_event_kinds_name_every_strategy() {
        use weft_fabric::table::Strategy;
        let names: Vec<&str> = super::TABLE_EVENT_KINDS.iter().map(|(s, _)| *s).collect();
        let strategies = [
            Strategy::Lww,
            Strategy::MultiValue,
            Strategy::Counter,
            Strategy::Set,
        ];
        assert_eq!(names, strategies.map(Strategy::as_str));
        for (strategy, kinds) in super::TABLE_EVENT_KINDS {
            assert_eq!(
                kinds[..3],
                ["applied", "duplicate", "ignored"],
                "{strategy}"
            );
        }
        let text = super::Metrics::new().render();
        assert!(
            !text.contains("strategy=\"counter\",kind=\"lww_lost\""),
            "{text}"
        );
    }

    /// A policy's transforms have their series at 0 once it is in force.
    #[test]
    fn a_policy_in_force_brings_its_transforms_series() {
        let metrics = super::Metrics::new();
        let line = "weft_egress_derived_total{transform=\"per-country\"} 0";
        assert!(!metrics.render().contains(line));
        let state = crate::egress::tests::state();
        metrics.policy_in_force(state.policy().as_deref());
        let text = metrics.render();
        assert!(text.lines().any(|l| l == line), "{text}");
        assert!(text.lines().any(|l| l == "weft_policy_epoch 2"), "{text}");
    }

    /// The lists are sorted and without repeats (a repeat would be one series, and the
    /// order is what a reader of the source searches by).
    #[test]
    fn label_lists_are_sorted_sets() {
        for list in [
            super::REJECT_REASONS,
            super::EGRESS_FAILURE_REASONS,
            super::MESH_DROP_REASONS,
            &super::PUBLISH_APIS,
            &super::EXPIRED_CAUSES,
            &super::QUEUES,
        ] {
            assert!(list.windows(2).all(|w| w[0] < w[1]), "{list:?}");
        }
    }

    /// The first snake_case string literal in the argument list that starts at `open`
    /// (just after its `(`), if any.
    fn first_reason(text: &str, open: usize) -> Option<&str> {
        let bytes = text.as_bytes();
        let (mut depth, mut i) = (1, open);
        while depth > 0 && i < bytes.len() {
            match bytes[i] {
                // A char literal `'"'` or `'('` is no quote or parenthesis.
                b'\'' if bytes.get(i + 2) == Some(&b'\'') => i += 2,
                b'"' => {
                    let mut end = i + 1;
                    while end < bytes.len() && bytes[end] != b'"' {
                        end += if bytes[end] == b'\\' { 2 } else { 1 };
                    }
                    let lit = text.get(i + 1..end)?;
                    if is_reason(lit) {
                        return Some(lit);
                    }
                    i = end;
                }
                b'(' => depth += 1,
                b')' => depth -= 1,
                _ => {}
            }
            i += 1;
        }
        None
    }

    fn is_reason(s: &str) -> bool {
        s.starts_with(|c: char| c.is_ascii_lowercase())
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    }

    /// The string literals of every `fn reason(&self)` / `fn code(&self)` body in `text`.
    fn reason_fn_literals(text: &str) -> Vec<&str> {
        let mut out = Vec::new();
        for head in [
            "fn reason(&self) -> &'static str {",
            "fn code(&self) -> &'static str {",
        ] {
            for (at, _) in text.match_indices(head) {
                let body = &text[at + head.len()..];
                let mut depth = 1;
                let end = body
                    .char_indices()
                    .find(|&(_, c)| {
                        depth += match c {
                            '{' => 1,
                            '}' => -1,
                            _ => 0,
                        };
                        depth == 0
                    })
                    .map_or(body.len(), |(i, _)| i);
                out.extend(
                    body[..end]
                        .split('"')
                        .skip(1)
                        .step_by(2)
                        .filter(|l| is_reason(l)),
                );
            }
        }
        out
    }

    fn source(path: &str) -> String {
        let full = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
        std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
    }

    /// Every reason the sources name where a refusal is counted (the calls that count one,
    /// the refusals edge devices get, the error types' `reason`/`code`) is in
    /// [`super::REJECT_REASONS`], and so on for the egress failures and the transport's
    /// drops: their series are there from the start. Found by reading the source, so a
    /// reason chosen into a variable or held in a constant is not seen here; debug builds
    /// check those where they are counted (`listed`), which the node's process tests run.
    #[test]
    fn every_reason_named_in_the_sources_is_listed() {
        let calls = [
            "reject(",
            "reject_n(",
            "ApiError::new(",
            "Self::new(StatusCode",
            "fail_stop(",
            "failed(",
            "deny(",
            "refused(",
            "refuse(",
            "bad(",
            "Err((",
        ];
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut files = Vec::new();
        let mut dirs = vec![root.join("src")];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    files.push(path);
                }
            }
        }
        files.sort();
        let mut missing = std::collections::BTreeSet::new();
        let mut found = 0;
        for path in files {
            let name = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let mut text = source(&name);
            if name.ends_with("metrics.rs") {
                // This test names the calls it looks for.
                text.truncate(text.find("#[cfg(test)]\nmod tests").unwrap());
            }
            for call in calls {
                for (at, m) in text.match_indices(call) {
                    let before = text[..at].chars().next_back();
                    if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                        continue;
                    }
                    let open = at + m.find('(').unwrap() + 1;
                    if let Some(r) = first_reason(&text, open) {
                        found += 1;
                        if !super::REJECT_REASONS.contains(&r) {
                            missing.insert(format!("{r} ({name}, {call})"));
                        }
                    }
                }
            }
            for (at, m) in text.match_indices("mesh_drop(") {
                if let Some(r) = first_reason(&text, at + m.len()) {
                    found += 1;
                    if !super::MESH_DROP_REASONS.contains(&r) {
                        missing.insert(format!("{r} ({name}, mesh_drop)"));
                    }
                }
            }
        }
        for (file, list) in [
            ("../fabric/src/cloudevents.rs", super::REJECT_REASONS),
            ("../fabric/src/mesh/wire.rs", super::REJECT_REASONS),
            ("../policy/src/error.rs", super::REJECT_REASONS),
            ("src/ratelimit.rs", super::REJECT_REASONS),
            ("src/egress.rs", super::EGRESS_FAILURE_REASONS),
        ] {
            for r in reason_fn_literals(&source(file)) {
                found += 1;
                if !list.contains(&r) {
                    missing.insert(format!("{r} ({file}, reason fn)"));
                }
            }
        }
        // The reading works: it finds well over a hundred named reasons.
        assert!(found > 150, "only {found} reasons found in the sources");
        assert!(missing.is_empty(), "not listed in metrics.rs: {missing:#?}");
    }
}
