//! Prometheus metrics (`GET /metrics`, text format), through prometheus-client.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
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

/// The reasons of `weft_confirm_retries_total`: a copy not sent, a member that answered
/// without the events, no answer by half the ack timeout.
pub(crate) const CONFIRM_RETRY_REASONS: [&str; 3] =
    ["not_sent", "answered_without", "no_answer_by_half_timeout"];

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
            "Confirmable copies of ack=regions:N events sent to another member of a region that had not confirmed, by reason: not_sent (a copy did not get through), answered_without (the member does not store the stream), no_answer_by_half_timeout",
            m.confirm_retries.clone(),
        );
        registry.register(
            "hlc_ahead",
            "Events applied whose HLC was more than the 60 s drift bound ahead of this node's clock (kept; their time not adopted)",
            m.hlc_ahead.clone(),
        );
        registry.register(
            "mesh_sent",
            "Mesh messages sent, by kind",
            m.mesh_sent.clone(),
        );
        registry.register(
            "mesh_received",
            "Mesh messages received, by kind",
            m.mesh_received.clone(),
        );
        registry.register(
            "mesh_dropped",
            "Mesh messages dropped before sending, by reason",
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
            "Policy bundles applied since start",
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
        // or an alert on them (a rate, an absence) works before the first event. Others
        // (per peer, per stream, per rejection reason) appear at their first event.
        for reason in CONFIRM_RETRY_REASONS {
            drop(
                m.confirm_retries
                    .get_or_create(&vec![("reason", reason.to_string())]),
            );
        }
        for level in ["none", "local", "regions"] {
            drop(
                m.ack_seconds
                    .get_or_create(&vec![("level", level.to_string())]),
            );
        }
        Self { registry, ..m }
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
        self.rejected
            .get_or_create(&vec![("reason", reason.to_string())])
            .inc();
    }

    /// Counts `n` refusals of one reason.
    pub(crate) fn reject_n(&self, reason: &str, n: u64) {
        self.rejected
            .get_or_create(&vec![("reason", reason.to_string())])
            .inc_by(n);
    }

    /// One labelled counter.
    pub(crate) fn inc(family: &Family<Labels, Counter>, key: &'static str, value: &str) {
        family.get_or_create(&vec![(key, value.to_string())]).inc();
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
        ] {
            assert!(text.lines().any(|l| l == series), "{series} in\n{text}");
        }
    }
}
