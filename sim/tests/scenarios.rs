//! Small versions of every fault class through the real engine and the real fabric core,
//! the determinism check (same seed, byte-identical report), and the shipped scenarios'
//! validity.

use weft_sim::catalog::RegionCatalog;
use weft_sim::engine::{Engine, Plan, Strategy};
use weft_sim::report::{Report, StrategyReport};
use weft_sim::scenario::Scenario;
use weft_sim::tables::TableSabotage;

/// A `node-crash` of the nodes `selector` (as written in a scenario) that loses their
/// stores, from `at_s` for `duration_s`.
fn store_loss(selector: &str, at_s: f64, duration_s: f64) -> String {
    format!(
        "\n[[fault]]\nkind = \"node-crash\"\nnodes = {selector}\nlose_memory = true\n\
         at_s = {at_s}\nduration_s = {duration_s}\n"
    )
}

/// A small four-region, three-cloud mesh publishing from everywhere, with `faults` spliced
/// in.
fn small(name: &str, faults: &str) -> String {
    small_at(name, 10, faults)
}

/// [`small`] with a chosen fabric-wide publish rate for its public stream; an EU-only stream
/// published in the EU and sealed payments published in the US run beside it, all subscribed
/// everywhere (residency withholds what a node may not hold).
fn small_at(name: &str, rate_per_s: u32, faults: &str) -> String {
    format!(
        r#"
name = "{name}"
description = "test"
duration_s = 150
seed = 5

[topology]
regions = [
  {{ region = "aws:us-east-1", nodes = 2 }},
  {{ region = "aws:eu-west-1", nodes = 2 }},
  {{ region = "azure:westeurope", nodes = 2 }},
  {{ region = "gcp:asia-south1", nodes = 2 }},
]

[network]
jitter_ms = 1.0
loss = 0.01
verify_us = 60

[policy.classes.public]
anywhere = true

[policy.classes.eu-personal]
jurisdictions = ["EU"]
transit = "forbidden"

[policy.classes.payment]
jurisdictions = ["EU", "US"]
transit = "sealed"

[[workload]]
stream = "t.events"
classification = "public"
rate_per_s = {rate_per_s}
payload_bytes = 64
start_s = 10
stop_s = 80

[[workload]]
stream = "t.eu"
classification = "eu-personal"
rate_per_s = 4
payload_bytes = 64
publishers = {{ regions = ["aws:eu-west-1", "azure:westeurope"] }}
start_s = 10
stop_s = 80

[[workload]]
stream = "t.pay"
classification = "payment"
sealed = true
rate_per_s = 4
payload_bytes = 64
publishers = {{ regions = ["aws:us-east-1"] }}
start_s = 10
stop_s = 80

{faults}

[checks]
converge_within_s = 60
"#
    )
}

fn run(text: &str, seed: Option<u64>) -> Report {
    run_enforcing(text, seed, true)
}

/// [`run`], with the nodes enforcing residency or not (the checker checks either way).
fn run_enforcing(text: &str, seed: Option<u64>, enforce: bool) -> Report {
    run_planned(text, seed, |plan| plan.enforce_residency = enforce)
}

/// [`run`], with the plan changed by `edit` first (the tests' switches that show a check
/// can fail).
fn run_planned(text: &str, seed: Option<u64>, edit: impl FnOnce(&mut Plan)) -> Report {
    let catalog = RegionCatalog::embedded().unwrap();
    let scenario = Scenario::parse(text, &catalog).unwrap_or_else(|e| panic!("{e}"));
    let mut plan = weft_sim::plan::build(&scenario, &catalog, seed);
    edit(&mut plan);
    let metrics = Engine::new(plan.clone(), Strategy::Weft).run(|_, _| {});
    let report = StrategyReport::new("weft", &plan, &metrics);
    Report::new(&scenario, &plan, vec![report])
}

fn assert_healthy(report: &Report) {
    let failed = report.failed_checks();
    assert!(
        failed.is_empty(),
        "seed {}: {failed:?}\n{}",
        report.seed,
        report.table()
    );
    // The summary says which events its latency counts when there were faults.
    assert_eq!(
        report
            .table()
            .contains("published during a fault count in `converge`"),
        !report.faults.is_empty()
    );
    let w = &report.strategies[0];
    assert!(w.published > 500, "the workload ran: {}", w.published);
    assert_eq!(w.missed, 0);
    assert_eq!(w.duplicates, 0);
    assert_eq!(w.order_violations, 0);
    assert!(w.residency.policy, "every test scenario runs with a policy");
    assert_eq!(
        w.residency.violations, 0,
        "seed {}: {:?}",
        report.seed, w.residency.examples
    );
    assert!(w.residency.checked > 0, "restricted events were checked");
    assert!(
        w.residency.withheld_pairs > 0,
        "residency withheld something"
    );
    assert_eq!(w.residency.refused_by_receivers, 0);
    // Every Skip taken on another node's word is accounted for.
    let k = &w.skips;
    assert_eq!(
        k.relayed,
        k.confirmed + k.expired + k.contradicted + k.dropped_at_restart + k.pending_at_end,
        "{k:?}"
    );
}

#[test]
fn no_faults() {
    let r = run(&small("none", ""), None);
    assert_healthy(&r);
    assert_eq!(r.strategies[0].fault_latency_ms.count, 0);
    assert!(r.strategies[0].rmr < 0.5, "rmr {}", r.strategies[0].rmr);
    // Once the workload has settled, every node summarises its anti-entropy digests, the
    // nodes outside the EU and payment jurisdictions too (compared by events stored, they
    // took every node inside them to be ahead, and sent them the whole digest every round).
    let a = &r.strategies[0].anti_entropy;
    assert!(a.summaries > 0 && a.summaries < a.requests, "{a:?}");
    assert!(a.summary_share_min > 0.2, "{a:?}");
    assert_eq!(a.unsettled, 0, "{a:?}");
    // Loss alone (1 %) makes single late RTT samples (a push or its acknowledgement
    // retransmitted on its stream), never a path that got slower: no estimate restarts
    // upwards, while the same losses do make failovers.
    let ro = &r.strategies[0].routing;
    assert!(ro.failovers > 0, "{ro:?}");
    assert_eq!(ro.rtt_shifts_up, 0, "{ro:?}");
    // The report says which of the 6 region pairs are measured and lists the derived ones,
    // as the catalog has them.
    let catalog = RegionCatalog::embedded().unwrap();
    let regions = [
        "aws:us-east-1",
        "aws:eu-west-1",
        "azure:westeurope",
        "gcp:asia-south1",
    ];
    let mut derived = Vec::new();
    let mut measured = 0;
    let mut sorted: Vec<usize> = regions
        .iter()
        .map(|r| catalog.region_index(r).unwrap())
        .collect();
    sorted.sort_unstable();
    for (i, &a) in sorted.iter().enumerate() {
        for &b in &sorted[i + 1..] {
            let e = catalog.rtt_at(a, b).unwrap();
            if e.is_measured() {
                measured += 1;
            } else {
                let (a, b) = (&catalog.regions()[a].id, &catalog.regions()[b].id);
                derived.push(format!("{a} - {b}: {:.1} ms", e.rtt_us() as f64 / 1000.0));
            }
        }
    }
    assert_eq!(measured + derived.len(), 6);
    assert!(
        measured > 0 && !derived.is_empty(),
        "both kinds: {derived:?}"
    );
    assert_eq!(r.latency_pairs.measured, measured);
    assert_eq!(r.latency_pairs.derived, derived);
}

/// `[[network.link]]` gives one region pair its own loss (and jitter): with the
/// scenario-wide loss at 0, only that link loses messages, and the fabric still delivers
/// every event once.
#[test]
fn one_lossy_link_loses_messages_and_nothing_else_does() {
    let base = small("links", "").replacen("loss = 0.01", "loss = 0.0", 1);
    let clean = run(&base, None);
    assert_healthy(&clean);
    assert_eq!(clean.strategies[0].dropped, 0, "no loss anywhere");
    let lossy = base.replacen(
        "[policy.classes.public]",
        "[[network.link]]\na = \"aws:us-east-1\"\nb = \"gcp:asia-south1\"\nloss = 0.2\njitter_ms = 30\n\n[policy.classes.public]",
        1,
    );
    assert_ne!(lossy, base);
    let r = run(&lossy, None);
    assert_healthy(&r);
    assert!(r.strategies[0].dropped > 0, "the link lost datagrams");
    assert!(
        r.strategies[0].routing.failovers > 0,
        "and pushes timed out on it"
    );
}

#[test]
fn region_outage() {
    let r = run(
        &small(
            "outage",
            r#"
[[fault]]
kind = "region-outage"
region = "aws:eu-west-1"
at_s = 30
duration_s = 30"#,
        ),
        None,
    );
    assert_healthy(&r);
    assert!(r.strategies[0].dropped > 0, "the outage dropped traffic");
}

/// A region of three down for a minute in a 24-node mesh publishing 100 events/s: the
/// returning nodes hold hundreds of out-of-order holes per origin while they catch up. A
/// regression test: the seen-set's range limit once dropped held events and stalled the
/// delivery cursors for good (2810 pairs missed with this exact scenario and seed).
#[test]
fn region_outage_catch_up_under_load() {
    let text = r#"
name = "outage-load"
description = "test"
duration_s = 200
seed = 11

[topology]
regions = [
  { region = "aws:us-east-1", nodes = 3 },
  { region = "aws:eu-west-1", nodes = 3 },
  { region = "aws:ap-northeast-1", nodes = 3 },
  { region = "azure:westeurope", nodes = 3 },
  { region = "azure:eastus2", nodes = 3 },
  { region = "gcp:europe-west3", nodes = 3 },
  { region = "gcp:us-central1", nodes = 3 },
  { region = "gcp:asia-southeast1", nodes = 3 },
]

[network]
jitter_ms = 1.0
loss = 0.001
verify_us = 60

[policy.classes.public]
anywhere = true

[policy.classes.eu-personal]
jurisdictions = ["EU"]
transit = "forbidden"

[[workload]]
stream = "orders.created"
classification = "public"
rate_per_s = 100
payload_bytes = 512
start_s = 20
stop_s = 130

# EU-only events from the region that goes dark, mixed into its nodes' sequences: the
# returning nodes must move past the sequence numbers others were told to skip.
[[workload]]
stream = "customers.eu"
classification = "eu-personal"
rate_per_s = 20
payload_bytes = 256
publishers = { regions = ["aws:eu-west-1", "gcp:europe-west3"] }
start_s = 20
stop_s = 130

[[fault]]
kind = "region-outage"
region = "aws:eu-west-1"
at_s = 40
duration_s = 60

[checks]
converge_within_s = 60
"#;
    assert_healthy(&run(text, None));
}

#[test]
fn partition_symmetric_and_asymmetric() {
    for symmetric in [true, false] {
        let r = run(
            &small(
                "partition",
                &format!(
                    r#"
[[fault]]
kind = "partition"
a = {{ clouds = ["aws"] }}
b = "rest"
symmetric = {symmetric}
at_s = 30
duration_s = 30"#
                ),
            ),
            None,
        );
        assert_healthy(&r);
        // Events published during the cut are left out of the headline latency and have
        // figures of their own: one published at its start crossed only at the heal.
        let f = &r.strategies[0].fault_latency_ms;
        assert!(f.count > 1000 && f.max > 25_000.0, "{f:?}");
        // The 30 s cut outlasts the suspicion timeout: the sides declare each other down.
        // (Every node is on one side of this cut, so every verdict during it, or in the
        // minute after, counts as `of_cut_off`; the 30 s after that must have none.)
        let m = &r.strategies[0].membership.downs;
        assert!(m.of_cut_off > 0 && m.of_reachable == 0, "{m:?}");
        assert!(r.strategies[0].latency_ms.max < f.max, "{f:?}");
    }
}

#[test]
fn link_degradation() {
    let r = run(
        &small(
            "degrade",
            r#"
[[fault]]
kind = "link-degradation"
a = { jurisdictions = ["EU"] }
b = { jurisdictions = ["US", "IN"] }
latency_factor = 3.0
loss = 0.2
at_s = 20
duration_s = 40"#,
        ),
        None,
    );
    assert_healthy(&r);
}

/// Four regions where the Ireland - Virginia link has a faster way round through Frankfurt
/// once it degrades or breaks; `fault` is the fault section.
fn relay_scenario(name: &str, fault: &str, checks: &str) -> String {
    format!(
        r#"
name = "{name}"
description = "test"
duration_s = 120
seed = 9

[topology]
regions = [
  {{ region = "aws:eu-west-1", nodes = 2 }},
  {{ region = "aws:us-east-1", nodes = 2 }},
  {{ region = "aws:eu-central-1", nodes = 2 }},
  {{ region = "aws:ap-northeast-1", nodes = 2 }},
]

[network]
jitter_ms = 0.5
loss = 0.0
verify_us = 60

[policy.classes.public]
anywhere = true

[policy.classes.eu-personal]
jurisdictions = ["EU"]
transit = "forbidden"

[policy.classes.payment]
jurisdictions = ["EU", "US"]
transit = "sealed"

[[workload]]
stream = "t.events"
classification = "public"
rate_per_s = 40
payload_bytes = 64
start_s = 10
stop_s = 90

[[workload]]
stream = "t.eu"
classification = "eu-personal"
rate_per_s = 10
payload_bytes = 64
publishers = {{ regions = ["aws:eu-central-1"] }}
start_s = 10
stop_s = 90

{fault}

[checks]
converge_within_s = 20
{checks}
"#
    )
}

/// A degraded link: events published during the degradation are measured against the
/// ideal through the relay region, and stay within 15% of it at p99.
#[test]
fn a_degraded_link_is_routed_around_through_a_relay() {
    let r = run(
        &relay_scenario(
            "degraded-relay",
            r#"[[fault]]
kind = "link-degradation"
a = { regions = ["aws:eu-west-1"] }
b = { regions = ["aws:us-east-1"] }
latency_factor = 3.0
at_s = 30
duration_s = 50
measure = true"#,
            "stretch_p99_max = 1.15",
        ),
        None,
    );
    assert_healthy(&r);
    let w = &r.strategies[0];
    assert!(
        w.routing.relayed > 0,
        "nothing was relayed: {:?}",
        w.routing
    );
    assert!(w.routing.measured_extra_ms.count > 0);
}

/// A cut link: senders notice the missing acknowledgement and reroute within two RTTs of
/// the cut link; nothing is missed.
#[test]
fn a_cut_link_fails_over_within_two_rtts() {
    let r = run(
        &relay_scenario(
            "cut",
            r#"[[fault]]
kind = "partition"
a = { regions = ["aws:eu-west-1"] }
b = { regions = ["aws:us-east-1"] }
at_s = 30
duration_s = 50
measure = true"#,
            "reroute_within_rtt = 2.0",
        ),
        None,
    );
    assert_healthy(&r);
    let w = &r.strategies[0];
    assert!(w.routing.failovers > 0, "no failover: {:?}", w.routing);
    assert!(
        w.routing.relayed > 0,
        "nothing was relayed: {:?}",
        w.routing
    );
    assert!(
        (w.routing.measured_link_rtt_ms - 80.6).abs() < 0.01,
        "{}",
        w.routing.measured_link_rtt_ms
    );
}

/// A `measure` partition that leaves no path at all between two sides: deliveries of what
/// was published across it wait for the heal. They count in latency, not in stretch or
/// the extra delay over the ideal (there is no ideal to compare with), and the report says
/// how many. Before, the unreachable distance stood in for the ideal: a stretch of 0 and no
/// extra delay, which pulled both figures down (a user review: the check passed with p99
/// latency at 29.6 s).
#[test]
fn deliveries_with_no_path_under_a_measured_cut_have_no_stretch() {
    let text = small(
        "no-path",
        r#"
[[fault]]
kind = "partition"
a = { regions = ["gcp:asia-south1"] }
b = "rest"
at_s = 30
duration_s = 20
measure = true"#,
    );
    let r = run(&text, None);
    assert_healthy(&r);
    let w = &r.strategies[0];
    assert!(w.routing.no_path_deliveries > 0, "{:?}", w.routing);
    // Every stretch sample is a real path's (jitter aside, none below 1; the unreachable
    // distance gave 0).
    let catalog = RegionCatalog::embedded().unwrap();
    let plan = weft_sim::plan::build(&Scenario::parse(&text, &catalog).unwrap(), &catalog, None);
    let m = Engine::new(plan, Strategy::Weft).run(|_, _| {});
    let least = m.stretch_milli.iter().min().copied().unwrap_or(0);
    assert!(least >= 900, "a stretch of {least}/1000");
    assert!(
        w.latency_ms.max > 15_000.0,
        "the cut's events waited for the heal"
    );
    assert!(
        w.routing.measured_extra_ms.max < 15_000.0,
        "{:?}",
        w.routing
    );
}

#[test]
fn node_crash_with_and_without_memory_loss() {
    for lose in [false, true] {
        let r = run(
            &small(
                "crash",
                &format!(
                    r#"
[[fault]]
kind = "node-crash"
nodes = {{ nodes = ["aws:us-east-1/0"] }}
lose_memory = {lose}
at_s = 30
duration_s = 20"#
                ),
            ),
            None,
        );
        assert_healthy(&r);
    }
}

/// A crashed node is declared down by every other node within SWIM's suspicion timeout
/// (12 s in a mesh of ten nodes or fewer, `MeshConfig::wan`) and a few probe periods; with
/// foca's WAN default (30 s) it took about 35 s. A running member reachable both ways is
/// never declared down.
#[test]
fn a_crashed_node_is_declared_down_within_the_suspicion_timeout() {
    let r = run(
        &small(
            "crash-detected",
            r#"
[[fault]]
kind = "node-crash"
nodes = { nodes = ["aws:us-east-1/0"] }
lose_memory = false
at_s = 30
duration_s = 60"#,
        ),
        None,
    );
    assert_healthy(&r);
    let m = &r.strategies[0].membership;
    // Each of the other seven nodes declares it down once.
    assert_eq!(m.downs.of_stopped, 7, "{m:?}");
    assert_eq!(m.detection_ms.count, 7, "{m:?}");
    assert!(m.detection_ms.max < 25_000.0, "{m:?}");
    assert!(
        m.detection_ms.p50 > 12_000.0,
        "no earlier than the timeout: {m:?}"
    );
    assert_eq!(m.downs.of_reachable, 0, "{m:?}");
    assert_eq!(m.downs.of_cut_off, 0, "{m:?}");
    assert!(
        r.table().contains("7 on stopped nodes (declared p50"),
        "{}",
        r.table()
    );
}

/// Verdicts across a cut link whose only helper (the third node) crashed are counted as
/// verdicts on a cut-off member, not as false ones: a stopped node helps no indirect probe
/// (found by review: the classification counted it as a two-hop path).
#[test]
fn a_cut_with_its_only_helper_crashed_counts_as_cut_off() {
    let text = r#"
name = "cut-helper-down"
description = "test"
duration_s = 200
seed = 5

[topology]
regions = [
  { region = "aws:us-east-1", nodes = 1 },
  { region = "azure:westeurope", nodes = 1 },
  { region = "gcp:asia-south1", nodes = 1 },
]

[network]
jitter_ms = 1.0
loss = 0.0
verify_us = 60

[policy.classes.public]
anywhere = true

[[workload]]
stream = "orders.created"
classification = "public"
rate_per_s = 10
payload_bytes = 128

[[fault]]
kind = "partition"
a = { nodes = ["aws:us-east-1/0"] }
b = { nodes = ["gcp:asia-south1/0"] }
at_s = 30
duration_s = 120

[[fault]]
kind = "node-crash"
nodes = { nodes = ["azure:westeurope/0"] }
lose_memory = false
at_s = 40
duration_s = 100
"#;
    let r = run(text, None);
    let m = &r.strategies[0].membership.downs;
    assert_eq!(m.of_stopped, 2, "the crashed helper, at both others: {m:?}");
    assert!(m.of_cut_off >= 2, "the two sides of the cut: {m:?}");
    assert_eq!(m.of_reachable, 0, "{m:?}");
}

/// One inter-region link cut for three minutes, every other link working (the shipped
/// `link-cut.toml`): no member is declared down. On seeds 4 and 20, a node probing across
/// the cut drew its three indirect-probe helpers among the cut's two regions, suspected
/// its target, and the refutation did not reach it within the 12 s timeout: a false
/// verdict and a rejoin. Five helpers (`MeshConfig::wan`) leave none.
#[test]
fn a_member_behind_one_cut_link_is_not_declared_down() {
    for seed in [4, 20] {
        let r = run(include_str!("../scenarios/link-cut.toml"), Some(seed));
        let failed = r.failed_checks();
        assert!(failed.is_empty(), "seed {seed}: {failed:?}");
        let m = &r.strategies[0].membership;
        assert_eq!(m.downs.downs, 0, "seed {seed}: {m:?}");
    }
}

#[test]
fn clock_skew() {
    let r = run(
        &small(
            "skew",
            r#"
[[fault]]
kind = "clock-skew"
nodes = { regions = ["gcp:asia-south1"] }
skew_ms = 1500
at_s = 15
duration_s = 50"#,
        ),
        None,
    );
    assert_healthy(&r);
}

/// Every node loses its store at once (a crash of the whole fabric with its disks): the
/// events before are gone everywhere, memories included. Each node asks members for its
/// own events before it numbers on (its publishes wait), finds none anywhere, and numbers
/// from 1 again: what it publishes after the restart must reach everyone. (Before the
/// simulator modelled the node's numbering, the origins numbered on from where they were,
/// and every later event waited for good on numbers nobody held until origins said they
/// no longer held them: `Message::Lost`, exercised below.) Then the two nodes of one region
/// lose theirs 200 ms apart, each the other's nearest holder.
#[test]
fn every_node_losing_its_store_at_once_leaves_later_events_flowing() {
    let r = run(&small("all-lose", &store_loss("\"all\"", 30.0, 10.0)), None);
    assert_healthy(&r);
    let w = &r.strategies[0];
    assert!(w.publishes_held > 0, "publishes waited for the numbering");
    // Numbered from 1 again where no node remembers the old numbers: not a reuse.
    assert_eq!((w.numbers_reused, w.equivocations), (0, 0));
    assert!(w.numbers_renumbered > 0, "{}", w.numbers_renumbered);
    // One node losing its store: its new application instance gets every earlier event
    // again from the others. Those are counted apart (`redeliveries`); `deliveries` counts
    // each (event, node) pair once, so with nothing missed or destroyed it is every pair
    // the residency allows (before, the re-deliveries were added to it).
    let r = run(
        &small(
            "one-loses",
            &store_loss(r#"{ nodes = ["aws:us-east-1/1"] }"#, 30.0, 10.0),
        ),
        None,
    );
    assert_healthy(&r);
    let w = &r.strategies[0];
    assert_eq!((w.missed, w.destroyed), (0, 0));
    assert!(w.redeliveries > 100, "{}", w.redeliveries);
    assert_eq!(
        w.deliveries,
        w.published * r.nodes as u64 - w.residency.withheld_pairs,
        "redeliveries {}",
        w.redeliveries
    );
    let r = run(
        &small(
            "two-lose",
            &(store_loss(r#"{ nodes = ["gcp:asia-south1/0"] }"#, 30.0, 10.0)
                + &store_loss(r#"{ nodes = ["gcp:asia-south1/1"] }"#, 30.2, 10.0)),
        ),
        None,
    );
    assert_healthy(&r);
}

/// A node restarted without its store numbers past the numbers a member that only relays
/// its stream saw, and peers move past the numbers nobody holds any more. The publisher
/// stores none of its stream (its only subscriber is in Tokyo); the subscriber is down
/// (store kept) from 25 to 50 s; the publisher's region loses its stores from 30 to 40 s.
/// At 40 s the publisher asks its region peer (which lost its store too) and the two US
/// relays, which saw numbers up to about 250: it numbers on past them (without that it
/// numbered from 1, and the subscriber, back with 1..200, dropped them as duplicates:
/// 200 pairs missed). The subscriber then lacks 201..250, which only the crashed publisher
/// ever held: the publisher, which stores none of its events, names them lost from its
/// seen-set (without that the subscriber waited for them for good: 650 pairs missed), and
/// the report counts them as destroyed.
#[test]
fn a_restarted_publisher_numbers_past_what_relays_saw() {
    let text = ireland_publisher(
        "relay-saw-numbers",
        150,
        5,
        &["aws:ap-northeast-1/0"],
        &[
            (r#"{ nodes = ["aws:ap-northeast-1/0"] }"#, false, 25, 25),
            (r#"{ regions = ["aws:eu-west-1"] }"#, true, 30, 10),
        ],
    );
    let text = text.as_str();
    let r = run(text, None);
    let failed = r.failed_checks();
    assert!(failed.is_empty(), "{failed:?}\n{}", r.table());
    let w = &r.strategies[0];
    assert_eq!((w.missed, w.duplicates, w.order_violations), (0, 0, 0));
    assert!(w.published > 800 && w.publishes_held > 0);
    assert_eq!(
        w.destroyed, 50,
        "201..250: held by the crashed publisher alone"
    );
    assert!(w.skips.lost_skipped >= 50, "{:?}", w.skips);
}

/// A publisher restarted without its store while cut off from every member: the Irish
/// publisher loses its store at 30 s and is back at 35 s, cut off from every other node
/// until 60 s, while every other node remembers its numbers 1 to about 250. No member
/// answers its ask for its own numbers, so after the 5 s wait it numbers past the
/// wall-clock floor (`own_numbers_floor`), as the node does: nothing is reused, the hole
/// below the floor is taken as lost (whole) once the partition heals, and every event
/// reaches the subscriber. With the floor switched off (nodes before 2026-12-07, which
/// numbered past what they held) it numbers from 1 again: the "no sequence number reused"
/// check fails and names the first one, and the reused events are missed where the old
/// ones were seen.
#[test]
fn a_publisher_restarted_cut_off_numbers_past_the_wall_clock_floor() {
    let mut text = ireland_publisher(
        "reuse-cut-off",
        150,
        5,
        &["aws:ap-northeast-1/0"],
        &[(r#"{ nodes = ["aws:eu-west-1/0"] }"#, true, 30, 5)],
    );
    text += "\n[[fault]]\nkind = \"partition\"\na = { nodes = [\"aws:eu-west-1/0\"] }\nb = \"rest\"\nat_s = 34\nduration_s = 26\n";
    let r = run(&text, None);
    let w = &r.strategies[0];
    let failed = r.failed_checks();
    assert!(failed.is_empty(), "{failed:?}\n{}", r.table());
    assert_eq!(w.numbers_floored, 1, "{}", r.table());
    assert_eq!((w.numbers_reused, w.equivocations), (0, 0));
    assert_eq!((w.missed, w.duplicates, w.order_violations), (0, 0, 0));
    assert!(
        w.publishes_held > 0 && w.published >= 900,
        "{}",
        w.published
    );
    // The subscriber moved past the hole below the floor on the publisher's word.
    assert!(w.skips.lost_in > 1_000_000_000, "{:?}", w.skips);

    let r = run_planned(&text, None, |plan| plan.numbering_floor = false);
    let w = &r.strategies[0];
    assert_eq!(w.numbers_floored, 0);
    assert!(
        w.numbers_reused > 100,
        "{}\n{}",
        w.numbers_reused,
        r.table()
    );
    // Every reused event is missed where the old one was seen, and none is named: the
    // pushes were cut, and anti-entropy compares numbers, not contents.
    assert!(
        w.missed >= w.numbers_reused,
        "{} {}",
        w.missed,
        w.numbers_reused
    );
    assert_eq!(w.equivocations, 0);
    let first = w.numbers_reused_first.as_deref().unwrap_or_default();
    assert!(
        first.contains("aws:eu-west-1/0") && first.contains("seq 1,"),
        "{first}"
    );
    let failed = r.failed_checks();
    assert!(
        failed
            .iter()
            .any(|c| c.starts_with("no sequence number reused")),
        "{failed:?}"
    );
    // The same crash with the publisher reachable: it asks members for its numbers
    // before it publishes (held meanwhile) and numbers past them; nothing is reused.
    let text = ireland_publisher(
        "reuse-reachable",
        150,
        5,
        &["aws:ap-northeast-1/0"],
        &[(r#"{ nodes = ["aws:eu-west-1/0"] }"#, true, 30, 5)],
    );
    let r = run(&text, None);
    let w = &r.strategies[0];
    assert_eq!((w.numbers_reused, w.equivocations), (0, 0), "{}", r.table());
    assert!(w.publishes_held > 0);
    assert!(r.failed_checks().is_empty(), "{:?}", r.failed_checks());
}

/// Devices behind a node sign and number their own events, and the node stores what they
/// publish through it. A scenario whose device publisher does not subscribe is refused (the
/// simulator ran it: the node held the devices' events in its relay cache only, one
/// published at its restart went nowhere, and every later event of that device was missed
/// at the subscriber). The node's restart, its store kept or lost, cut off so that no
/// member can tell it its own numbers, neither holds the devices' events nor takes a
/// wall-clock floor for them (the simulator did both).
#[test]
fn device_events_through_a_node_restarted_cut_off_are_neither_held_nor_floored() {
    let devices = |lose_memory: bool, subscribers: &[&str]| {
        let mut text = ireland_publisher(
            "devices-cut-off",
            150,
            5,
            subscribers,
            &[(r#"{ nodes = ["aws:eu-west-1/0"] }"#, lose_memory, 30, 5)],
        )
        .replace("payload_bytes = 64\n", "payload_bytes = 64\ndevices = 5\n");
        assert!(text.contains("devices = 5"));
        text += "\n[[fault]]\nkind = \"partition\"\na = { nodes = [\"aws:eu-west-1/0\"] }\nb = \"rest\"\nat_s = 34\nduration_s = 26\n";
        text
    };
    let catalog = RegionCatalog::embedded().unwrap();
    let e = Scenario::parse(&devices(false, &["aws:ap-northeast-1/0"]), &catalog)
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with(
            "workload[0].publishers: node aws:eu-west-1/0 publishes for devices to a stream it does not subscribe to"
        ),
        "{e}"
    );
    // Subscribed to the stream through another workload: accepted (a node's interest is
    // every stream it subscribes to).
    let also = devices(false, &["aws:ap-northeast-1/0"]).replacen(
        "\n[[fault]]",
        "\n[[workload]]\nstream = \"t.events\"\nclassification = \"public\"\nrate_per_s = 1\npayload_bytes = 8\npublishers = { nodes = [\"aws:us-east-1/0\"] }\nsubscribers = { nodes = [\"aws:eu-west-1/0\"] }\n\n[[fault]]",
        1,
    );
    assert!(also.matches("[[workload]]").count() == 2, "{also}");
    Scenario::parse(&also, &catalog).unwrap_or_else(|e| panic!("{e}"));
    for lose_memory in [false, true] {
        let r = run(
            &devices(lose_memory, &["aws:eu-west-1/0", "aws:ap-northeast-1/0"]),
            None,
        );
        let w = &r.strategies[0];
        let failed = r.failed_checks();
        assert!(failed.is_empty(), "{failed:?}\n{}", r.table());
        assert_eq!(
            (w.numbers_floored, w.publishes_held),
            (0, 0),
            "lose_memory {lose_memory}\n{}",
            r.table()
        );
        assert_eq!((w.numbers_reused, w.missed, w.duplicates), (0, 0, 0));
        assert!(w.published >= 900, "{}", w.published);
    }
}

/// Every scenario of `sim/stress/` (docs/sim.md, section 9) reads and plans: they are
/// swept by hand, not run here, and must not rot.
#[test]
fn every_stress_scenario_is_valid() {
    let catalog = RegionCatalog::embedded().unwrap();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("stress");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let scenario =
            Scenario::parse(&text, &catalog).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let plan = weft_sim::plan::build(&scenario, &catalog, None);
        assert!(!plan.faults.is_empty(), "{}: no fault", path.display());
        names.push(path.file_name().unwrap().to_string_lossy().into_owned());
    }
    names.sort();
    assert_eq!(
        names,
        [
            "churn.toml",
            "devices-under-faults.toml",
            "floors.toml",
            "relay-publishers.toml",
            "tables-under-faults.toml"
        ]
    );
}

/// Publishers that subscribe to none of their stream, crashes with lost stores, a
/// one-way partition, a region outage. Before session 65 a publisher kept its own events
/// of such a stream in its relay cache only (4,096 events, shared with every event it
/// relays): the pushes it made into the partition were dropped by the network, the events
/// were pushed out of the cache before the heal, no copy was left, and every later event
/// of the origin waited on them for good at every subscriber (12,800 pairs missed on this
/// seed; 96 of 200 seeds failed). Now a node stores its own events whatever its interest.
/// (`sim/stress/relay-publishers.toml`, seed 52.)
#[test]
fn publishers_outside_their_interest_lose_nothing_to_a_partition() {
    let r = run(include_str!("../stress/relay-publishers.toml"), Some(52));
    let failed = r.failed_checks();
    assert!(failed.is_empty(), "{failed:?}\n{}", r.table());
    let w = &r.strategies[0];
    assert_eq!((w.missed, w.duplicates, w.order_violations), (0, 0, 0));
    assert!(w.published > 18_000, "{}", w.published);
}

/// A scenario of five nodes (Ireland 2, Virginia 2, Tokyo 1) and one publisher,
/// `aws:eu-west-1/0`, of 10 events a second from 5 to 100 s, with `subscribers` (nodes)
/// and node crashes `(selector, lose_memory, at_s, duration_s)`.
fn ireland_publisher(
    name: &str,
    duration_s: u32,
    seed: u64,
    subscribers: &[&str],
    crashes: &[(&str, bool, u32, u32)],
) -> String {
    let subscribers: Vec<String> = subscribers.iter().map(|n| format!("{n:?}")).collect();
    let mut text = format!(
        r#"
name = "{name}"
description = "test"
duration_s = {duration_s}
seed = {seed}

[topology]
regions = [
  {{ region = "aws:eu-west-1", nodes = 2 }},
  {{ region = "aws:us-east-1", nodes = 2 }},
  {{ region = "aws:ap-northeast-1", nodes = 1 }},
]

[network]
jitter_ms = 1.0
loss = 0.01
verify_us = 60

[policy.classes.public]
anywhere = true

[[workload]]
stream = "t.events"
classification = "public"
rate_per_s = 10
payload_bytes = 64
publishers = {{ nodes = ["aws:eu-west-1/0"] }}
subscribers = {{ nodes = [{}] }}
start_s = 5
stop_s = 100
"#,
        subscribers.join(", ")
    );
    for (nodes, lose_memory, at_s, duration_s) in crashes {
        text += &format!(
            "\n[[fault]]\nkind = \"node-crash\"\nnodes = {nodes}\nlose_memory = {lose_memory}\nat_s = {at_s}\nduration_s = {duration_s}\n"
        );
    }
    text
}

/// Two subscribers (Virginia, Tokyo) of a publisher in Ireland that subscribes to none of
/// its stream (it stores its own events only); Virginia down 20-35 s, Tokyo down 28-88 s (stores kept), the publisher's region
/// down 30-40 s: with its stores lost (`lose_memory`), or not.
fn late_holder(lose_memory: bool) -> String {
    late_holder_with(lose_memory, &[])
}

/// [`late_holder`] with `more` faults after its own.
fn late_holder_with(lose_memory: bool, more: &[(&str, bool, u32, u32)]) -> String {
    let mut faults = vec![
        (r#"{ nodes = ["aws:us-east-1/0"] }"#, false, 20, 15),
        (r#"{ nodes = ["aws:ap-northeast-1/0"] }"#, false, 28, 60),
        (r#"{ regions = ["aws:eu-west-1"] }"#, lose_memory, 30, 10),
    ];
    faults.extend_from_slice(more);
    ireland_publisher(
        "late-holder",
        200,
        7,
        &["aws:us-east-1/0", "aws:ap-northeast-1/0"],
        &faults,
    )
}

/// A holder cut off through the whole wait still brings back what its origin lost. Two
/// subscribers, Virginia and Tokyo; the publisher (Ireland) stores none of its stream.
/// Virginia is down (store kept) from 20 to 35 s, so the events of those seconds reach
/// Tokyo and not it; Tokyo goes down (store kept) at 28 s and stays down until 88 s; the
/// publisher's region loses its stores at 30 s. Back at 40 s, the publisher names the
/// numbers it no longer holds as lost; Virginia waits 16 s, takes them as lost, and keeps
/// them open: when Tokyo is back its copies come, stored and delivered late, not as an
/// order violation. (The publisher's store went with its region's.) Before, Virginia's digests claimed the numbers, Tokyo sent nothing, and
/// every event of 20 to 28 s was missed there (Tokyo's store held them to the end).
#[test]
fn a_holder_cut_off_through_the_lost_wait_still_delivers_its_copies() {
    let r = run(&late_holder(true), None);
    let failed = r.failed_checks();
    assert!(failed.is_empty(), "{failed:?}\n{}", r.table());
    let w = &r.strategies[0];
    assert_eq!((w.missed, w.duplicates, w.order_violations), (0, 0, 0));
    assert!(
        w.skips.lost_recovered >= 50,
        "the events of 20 to 28 s came from Tokyo: {:?}",
        w.skips
    );
    assert!(w.skips.lost_skipped >= w.skips.lost_recovered);
    // The publisher's region keeping its stores: the publisher, which subscribes to none of
    // its stream, stores its own events all the same (since session 65), so Virginia gets
    // them from it and nothing is taken as lost. (Before, it held them in its relay cache
    // only, lost them with the process, and took its own numbers as lost.)
    let r = run(&late_holder(false), None);
    let failed = r.failed_checks();
    assert!(failed.is_empty(), "{failed:?}\n{}", r.table());
    let w = &r.strategies[0];
    assert_eq!((w.missed, w.duplicates, w.order_violations), (0, 0, 0));
    assert_eq!(
        (w.skips.lost_in, w.skips.lost_recovered),
        (0, 0),
        "{:?}",
        w.skips
    );
}

/// The node that took the numbers as lost restarts (store kept) inside their open window:
/// the late-holder scenario with Virginia down again from 70 to 75 s, after it took them
/// (about 56 s) and before Tokyo is back (88 s). Its store kept the open numbers, so
/// Tokyo's copies still reach it. Before, the restart closed them: Virginia's rebuilt
/// seen-set claimed them, and the events of 20 to 28 s were missed there.
#[test]
fn numbers_taken_as_lost_stay_open_across_a_restart_of_the_node_that_took_them() {
    let text = late_holder_with(
        true,
        &[(r#"{ nodes = ["aws:us-east-1/0"] }"#, false, 70, 5)],
    );
    let r = run(&text, None);
    let failed = r.failed_checks();
    assert!(failed.is_empty(), "{failed:?}\n{}", r.table());
    let w = &r.strategies[0];
    assert_eq!((w.missed, w.duplicates, w.order_violations), (0, 0, 0));
    assert!(w.skips.lost_recovered >= 50, "{:?}", w.skips);
    // The publisher's region keeping its stores, and the publisher restarted inside the
    // window too: it stores its own events (though it subscribes to none of its stream), so
    // nothing is taken as lost.
    let text = late_holder_with(
        false,
        &[
            (r#"{ nodes = ["aws:us-east-1/0"] }"#, false, 70, 5),
            (r#"{ regions = ["aws:eu-west-1"] }"#, false, 76, 5),
        ],
    );
    let r = run(&text, None);
    let failed = r.failed_checks();
    assert!(failed.is_empty(), "{failed:?}\n{}", r.table());
    let w = &r.strategies[0];
    assert_eq!((w.missed, w.duplicates, w.order_violations), (0, 0, 0));
    assert_eq!((w.skips.lost_in, w.skips.lost_recovered), (0, 0));
}

/// A publisher that subscribes to none of its stream restarts with its store kept: its
/// first event after the restart is published before any member is up, so it goes nowhere.
/// Before session 59 it sat in the publisher's relay cache alone and every subscriber's
/// delivery of that publisher waited on its number for good: 1,200 pairs missed. Since
/// session 65 the publisher stores its own events whatever its interest, and answers a
/// peer lacking them from its store.
#[test]
fn a_publisher_that_stores_none_of_its_stream_loses_nothing_at_a_restart() {
    let text = ireland_publisher(
        "store-none-restart",
        200,
        7,
        &["aws:us-east-1/0", "aws:ap-northeast-1/0"],
        &[(r#"{ regions = ["aws:eu-west-1"] }"#, false, 30, 10)],
    );
    let r = run(&text, None);
    let failed = r.failed_checks();
    assert!(failed.is_empty(), "{failed:?}\n{}", r.table());
    let w = &r.strategies[0];
    assert_eq!((w.missed, w.destroyed, w.duplicates), (0, 0, 0));
    assert_eq!(w.deliveries, 2 * w.published);
}

#[test]
fn same_seed_same_report_byte_for_byte() {
    let text = small(
        "determinism",
        &store_loss(r#"{ nodes = ["azure:westeurope/1"] }"#, 30.0, 20.0),
    );
    let a = run(&text, Some(99)).to_json().unwrap();
    let b = run(&text, Some(99)).to_json().unwrap();
    assert_eq!(a, b);
    let c = run(&text, Some(100)).to_json().unwrap();
    assert_ne!(a, c, "a different seed must change something");
}

/// Signing is modelled by default (the signature is not computed; verification is modelled
/// either way): the run with every event really signed, sealed ones included, gives the
/// same report but for the field that says how events were signed.
#[test]
fn modelled_signing_changes_nothing_but_the_run_time() {
    let text = small("signing", "");
    let executed = text.replace("verify_us = 60", "verify_us = 60\nsigning = \"executed\"");
    assert_ne!(text, executed);
    let modelled = run(&text, Some(7));
    let signed = run(&executed, Some(7));
    assert_eq!(modelled.signing, "modelled");
    assert_eq!(signed.signing, "executed");
    assert_healthy(&signed);
    let json = |r: &Report| {
        let mut v: serde_json::Value = serde_json::from_str(&r.to_json().unwrap()).unwrap();
        v.as_object_mut().unwrap().remove("signing");
        v
    };
    assert_eq!(json(&modelled), json(&signed));
}

/// The checker is independent of the cores' filter: a fabric whose nodes do not enforce
/// residency (every core runs `AllowAll`) is caught on its first sends, and the report's
/// residency check fails.
#[test]
fn a_fabric_that_does_not_enforce_residency_is_caught() {
    let r = run_enforcing(&small("no-enforcement", ""), None, false);
    let w = &r.strategies[0];
    assert!(w.residency.violations > 0, "{:?}", w.residency);
    assert!(!w.residency.examples.is_empty());
    assert!(
        r.failed_checks()
            .iter()
            .any(|c| c.starts_with("residency violations = 0")),
        "{:?}",
        r.failed_checks()
    );
    // The same scenario with enforcement: clean.
    assert_healthy(&run(&small("enforcement", ""), None));
}

/// The shipped sovereignty scenario: the Ireland - Frankfurt link degrades and the fast path
/// runs through Virginia. EU personal data stays in the EU on the slow direct link, sealed
/// EU payments cross Virginia as sealed transit, public data takes the fast path; nothing
/// is missed and nothing is violated.
#[test]
fn sovereignty_under_failure_keeps_eu_data_in_the_eu() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scenarios/sovereignty-under-failure.toml"
    ))
    .unwrap();
    let r = run(&text, None);
    assert!(r.failed_checks().is_empty(), "{:?}", r.failed_checks());
    let w = &r.strategies[0];
    assert_eq!(w.missed, 0);
    assert_eq!(w.residency.violations, 0);
    assert!(w.residency.transit_forwarded > 0, "no sealed transit");
    let p50 = |stream: &str| {
        let wl = w.workloads.iter().find(|x| x.stream == stream).unwrap();
        wl.latency_by_region_pair
            .iter()
            .find(|p| p.from == "aws:eu-west-1" && p.to == "aws:eu-central-1")
            .unwrap()
            .latency_ms
            .p50
    };
    let (personal, payment, public) = (
        p50("customers.eu"),
        p50("payments.eu"),
        p50("catalogue.global"),
    );
    // Most events are published during the degradation: the medians are fault-time paths.
    assert!(
        personal > 150.0,
        "EU personal data took the direct EU link: {personal}"
    );
    assert!(
        public < 100.0,
        "public data took the fast path through the US: {public}"
    );
    assert!(
        payment < 100.0,
        "sealed payments crossed the US in transit: {payment}"
    );
    // The US regions never got EU events for themselves.
    for wl in &w.workloads {
        if wl.classification != "public" {
            assert!(
                wl.latency_by_region_pair
                    .iter()
                    .all(|p| !p.to.starts_with("aws:us-")),
                "{} delivered in the US",
                wl.stream
            );
        }
    }
}

/// Every fault kind at once over a lossy network (`many-faults.toml`): the checks pass, and
/// some Skips that waited for a second word when their node stopped were not waiting again
/// after its restart (its memory lost, or the number above its restored delivery cursor).
/// `assert_healthy` checks that every Skip taken on another node's word is accounted for;
/// before `dropped_at_restart` those vanished from the report. Whether a seed has such a
/// Skip depends on which messages its run loses, which any protocol change moves, so the
/// test takes the first of a few seeds that has one (on 2026-12-05: the shipped seed 3 has
/// 6, seeds 6 and 7 have 11), and every run it makes must pass.
#[test]
fn many_faults_at_once_and_every_waiting_skip_accounted_for() {
    let mut tried = Vec::new();
    for seed in [None, Some(6), Some(7), Some(2)] {
        let r = run(include_str!("../scenarios/many-faults.toml"), seed);
        assert_healthy(&r);
        assert_eq!(
            r.strategies[0].missed, 0,
            "their numbers came by anti-entropy"
        );
        let k = r.strategies[0].skips.clone();
        if k.dropped_at_restart > 0 {
            return;
        }
        tried.push((r.seed, k));
    }
    panic!("no seed had Skips dropped at a restart: {tried:?}");
}

#[test]
fn shipped_scenarios_parse() {
    let catalog = RegionCatalog::embedded().unwrap();
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let scenario =
            Scenario::parse(&text, &catalog).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        // Every shipped scenario runs under a policy of at least two residency classes, at
        // least one of them restricted.
        let policy = scenario
            .policy
            .as_ref()
            .unwrap_or_else(|| panic!("{}: no [policy]", path.display()));
        assert!(policy.classes.len() >= 2, "{}", path.display());
        assert!(
            policy.classes.values().any(|c| !c.anywhere),
            "{}: no restricted class",
            path.display()
        );
        names.push(path.file_stem().unwrap().to_string_lossy().into_owned());
    }
    for required in [
        "region-outage",
        "cloud-partition",
        "transoceanic-degradation",
        "rolling-crash",
        "clock-skew",
        "scale-1000",
        "sovereignty-under-failure",
        "split-brain-writes",
        "device-gateways",
    ] {
        assert!(names.iter().any(|n| n == required), "missing {required}");
    }
}

/// `[policy]` and workload classifications are validated with the field named.
#[test]
fn policy_errors_name_the_field() {
    let catalog = RegionCatalog::embedded().unwrap();
    let base = small("policy", "");
    let err = |text: &str| Scenario::parse(text, &catalog).unwrap_err().to_string();
    let no_policy = base
        .split("[policy.classes.public]")
        .next()
        .unwrap()
        .to_string()
        + &base[base.find("[[workload]]").unwrap()..];
    assert!(
        err(&no_policy).starts_with("workload[0].classification: classifications and sealed"),
        "{}",
        err(&no_policy)
    );
    let unknown = base.replacen(
        "classification = \"public\"",
        "classification = \"secret\"",
        1,
    );
    assert!(
        err(&unknown).starts_with("workload[0].classification: \"secret\" is not a class"),
        "{}",
        err(&unknown)
    );
    let missing = base.replacen("classification = \"public\"\n", "", 1);
    assert_eq!(
        err(&missing),
        "workload[0].classification: required with a [policy] section"
    );
    let outside = base.replace(
        "publishers = { regions = [\"aws:eu-west-1\", \"azure:westeurope\"] }",
        "publishers = { regions = [\"aws:us-east-1\"] }",
    );
    assert!(
        err(&outside).starts_with(
            "workload[1].publishers: node aws:us-east-1/0 (jurisdiction US) may not hold"
        ),
        "{}",
        err(&outside)
    );
    let bad_transit = base.replace("transit = \"forbidden\"", "transit = \"sometimes\"");
    assert!(
        err(&bad_transit).contains("policy.classes"),
        "{}",
        err(&bad_transit)
    );
    let unknown_jurisdiction = base.replace("jurisdictions = [\"EU\"]", "jurisdictions = [\"eu\"]");
    assert!(
        err(&unknown_jurisdiction).starts_with("policy: "),
        "{}",
        err(&unknown_jurisdiction)
    );
}

/// Two clouds partitioned while both sides write the same four keys of one table per
/// strategy (`split-brain-writes.toml` in small), then healed.
fn split_brain(name: &str) -> String {
    format!(
        r#"
name = "{name}"
description = "test"
duration_s = 160
seed = 9

[topology]
regions = [
  {{ region = "aws:us-east-1", nodes = 2 }},
  {{ region = "aws:eu-west-1", nodes = 1 }},
  {{ region = "gcp:us-central1", nodes = 2 }},
  {{ region = "gcp:europe-west1", nodes = 1 }},
]

[network]
jitter_ms = 1.0
loss = 0.01
verify_us = 60

[policy.classes.public]
anywhere = true

[policy.classes.eu-personal]
jurisdictions = ["EU"]
transit = "forbidden"

[[workload]]
stream = "t.lww"
classification = "public"
rate_per_s = 4
payload_bytes = 16
start_s = 10
stop_s = 100
table = {{ strategy = "lww", keys = 4, delete = 0.2 }}

[[workload]]
stream = "t.mv"
classification = "public"
rate_per_s = 4
payload_bytes = 16
start_s = 10
stop_s = 100
table = {{ strategy = "multi-value", keys = 4, delete = 0.1, blind = 0.25 }}

[[workload]]
stream = "t.counter"
classification = "public"
rate_per_s = 4
payload_bytes = 0
start_s = 10
stop_s = 100
table = {{ strategy = "counter", keys = 4, delete = 0.1, delta_min = -5, delta_max = 10 }}

[[workload]]
stream = "t.set"
classification = "public"
rate_per_s = 4
payload_bytes = 0
start_s = 10
stop_s = 100
table = {{ strategy = "set", keys = 4, elements = 5, delete = 0.05, remove = 0.35 }}

[[workload]]
stream = "t.eu"
classification = "eu-personal"
rate_per_s = 2
payload_bytes = 64
publishers = {{ regions = ["aws:eu-west-1", "gcp:europe-west1"] }}
start_s = 10
stop_s = 100

[[fault]]
kind = "partition"
a = {{ clouds = ["aws"] }}
b = "rest"
at_s = 30
duration_s = 60

[checks]
converge_within_s = 60
"#
    )
}

fn run_sabotaged(text: &str, sabotage: TableSabotage) -> Report {
    let catalog = RegionCatalog::embedded().unwrap();
    let scenario = Scenario::parse(text, &catalog).unwrap_or_else(|e| panic!("{e}"));
    let mut plan = weft_sim::plan::build(&scenario, &catalog, None);
    plan.table_sabotage = Some(sabotage);
    let metrics = Engine::new(plan.clone(), Strategy::Weft).run(|_, _| {});
    let report = StrategyReport::new("weft", &plan, &metrics);
    Report::new(&scenario, &plan, vec![report])
}

/// Both sides of a cloud partition write the same keys; after the heal every replica of
/// every table has the same digest, equal to the reference replay of all writes, and each
/// strategy resolved conflicts. The same seed gives the same report, byte for byte.
#[test]
fn split_brain_writes_converge_to_the_reference() {
    let text = split_brain("split-brain");
    let r = run(&text, None);
    assert!(
        r.failed_checks().is_empty(),
        "seed {}: {:?}\n{}",
        r.seed,
        r.failed_checks(),
        r.table()
    );
    let w = &r.strategies[0];
    assert_eq!(w.missed, 0);
    assert_eq!(w.residency.violations, 0);
    assert!(
        w.residency.withheld_pairs > 0,
        "residency withheld the EU stream"
    );
    assert_eq!(w.tables.len(), 4);
    for t in &w.tables {
        assert_eq!(t.replicas, 6, "{}", t.stream);
        assert!(t.writes > 300, "{}: {} writes", t.stream, t.writes);
        assert!(t.digests_equal && t.digests_distinct == 1, "{t:?}");
        assert!(t.equal_to_reference, "{t:?}");
        assert_eq!((t.resurrected, t.lost), (0, 0), "{t:?}");
        assert_eq!(
            t.conflicts.ignored, 0,
            "{t:?}: every write was readable and taken"
        );
        let c = &t.conflicts;
        let resolved = match t.strategy.as_str() {
            "lww" => c.lww_lost,
            "multi-value" => c.mv_siblings.min(c.mv_resolved),
            "counter" => c.counter_merged,
            "set" => c.set_add_wins,
            other => panic!("strategy {other}"),
        };
        assert!(resolved > 0, "{}: no conflict resolved: {c:?}", t.stream);
    }
    assert!(
        r.table().contains("table t.counter"),
        "one summary line per table"
    );
    let again = run(&text, None);
    assert_eq!(r.to_json().unwrap(), again.to_json().unwrap());
}

/// The table checks can fail: a replica that skips one delivered counter add, or applies
/// one twice, differs from the others and from the reference, and the run fails.
#[test]
fn a_replica_that_skips_or_repeats_a_write_fails_the_table_checks() {
    let text = split_brain("split-brain-sabotaged");
    let skipped = run_sabotaged(&text, TableSabotage::SkipFirstAdd { node: 2 });
    let failed = skipped.failed_checks();
    assert!(
        failed
            .iter()
            .any(|c| c.starts_with("table digests equal on every replica")),
        "{failed:?}"
    );
    assert!(
        failed
            .iter()
            .any(|c| c.starts_with("table digests = reference replay")),
        "{failed:?}"
    );
    let diverged: Vec<_> = skipped.strategies[0]
        .tables
        .iter()
        .filter(|t| !t.digests_equal)
        .collect();
    assert_eq!(diverged.len(), 1, "exactly the table of the skipped write");
    assert_eq!(diverged[0].strategy, "counter");
    assert_eq!(diverged[0].digests_distinct, 2);
    assert_eq!(diverged[0].replicas_equal_to_reference, 5);

    let twice = run_sabotaged(&text, TableSabotage::ApplyAddTwice { node: 0 });
    let counter = twice.strategies[0]
        .tables
        .iter()
        .find(|t| t.strategy == "counter")
        .unwrap();
    assert!(
        !counter.digests_equal && !counter.equal_to_reference,
        "{counter:?}"
    );
    assert!(!twice.failed_checks().is_empty());
}

/// `[workload.table]` errors name the field.
#[test]
fn table_workload_errors_name_the_field() {
    let catalog = RegionCatalog::embedded().unwrap();
    let base = split_brain("table-errors");
    let err = |from: &str, to: &str| {
        let text = base.replacen(from, to, 1);
        assert_ne!(text, base, "{from}");
        Scenario::parse(&text, &catalog).unwrap_err().to_string()
    };
    let lww = r#"table = { strategy = "lww", keys = 4, delete = 0.2 }"#;
    let e = err(lww, r#"table = { strategy = "lwx", keys = 4 }"#);
    assert!(
        e.starts_with("workload[0].table.strategy: unknown variant"),
        "{e}"
    );
    let e = err(lww, r#"table = { strategy = "lww", keys = 0 }"#);
    assert_eq!(e, "workload[0].table.keys: must be at least 1");
    let e = err(
        lww,
        r#"table = { strategy = "lww", keys = 4, blind = 0.5 }"#,
    );
    assert_eq!(
        e,
        "workload[0].table.blind: is a field of multi-value tables, not of lww"
    );
    let e = err(
        lww,
        r#"table = { strategy = "lww", keys = 4, delete = 1.0 }"#,
    );
    assert!(
        e.starts_with("workload[0].table.delete: is 1, must be >= 0 and < 1"),
        "{e}"
    );
    let e = err(lww, r#"table = { strategy = "lww", keys = 4, colour = 1 }"#);
    assert!(
        e.starts_with("workload[0].table.colour: unknown field"),
        "{e}"
    );
    let e = err(
        "delta_min = -5, delta_max = 10",
        "delta_min = 5, delta_max = 1",
    );
    assert_eq!(e, "workload[2].table.delta_max: is 1, below delta_min = 5");
    let e = err("delete = 0.05, remove = 0.35", "delete = 0.5, remove = 0.5");
    assert!(
        e.starts_with("workload[3].table.remove: delete + remove is 1"),
        "{e}"
    );
    let e = err(
        "payload_bytes = 16\nstart_s = 10\nstop_s = 100\ntable = { strategy = \"lww\"",
        "payload_bytes = 16\nsubscribers = { clouds = [\"gcp\"] }\nstart_s = 10\nstop_s = 100\ntable = { strategy = \"lww\"",
    );
    assert!(
        e.starts_with("workload[0].publishers: node aws:eu-west-1/0 publishes to a table it does not subscribe to"),
        "{e}"
    );
    let e = err(lww, &format!("sealed = true\n{lww}"));
    assert!(
        e.starts_with("workload[0].table: a table workload cannot be sealed"),
        "{e}"
    );
}

/// What a run delivered, how fast and with which messages: everything in the strategy's
/// report but the step count (a fault that changes nothing is still a step; the fault list
/// is the run's, outside the strategy's report).
fn outcome(report: &Report) -> serde_json::Value {
    let mut v = serde_json::to_value(&report.strategies[0]).unwrap();
    let map = v.as_object_mut().unwrap();
    map.remove("steps");
    v
}

/// Overlapping partitions of the same node pairs compose: the pairs stay cut until the last
/// of them heals, exactly as under one partition over the union of their windows.
#[test]
fn overlapping_partitions_compose() {
    let fault = |at: u32, len: u32| {
        format!(
            r#"
[[fault]]
kind = "partition"
a = {{ clouds = ["aws"] }}
b = "rest"
at_s = {at}
duration_s = {len}"#
        )
    };
    let both = run(
        &small("overlap", &format!("{}{}", fault(30, 30), fault(40, 40))),
        None,
    );
    let union = run(&small("overlap", &fault(30, 50)), None);
    assert_healthy(&both);
    assert!(
        both.strategies[0].dropped > 0,
        "the partitions dropped messages"
    );
    assert_eq!(outcome(&both), outcome(&union));
}

/// Overlapping degradations of one link compose: factors multiply and losses combine as
/// independent, exactly as one degradation with the composed values.
#[test]
fn overlapping_degradations_compose() {
    let fault = |factor: f64, loss: f64| {
        format!(
            r#"
[[fault]]
kind = "link-degradation"
a = {{ jurisdictions = ["EU"] }}
b = {{ jurisdictions = ["US", "IN"] }}
latency_factor = {factor:?}
loss = {loss:?}
at_s = 20
duration_s = 40"#
        )
    };
    let both = run(
        &small(
            "overlap",
            &format!("{}{}", fault(2.0, 0.5), fault(3.0, 0.5)),
        ),
        None,
    );
    let composed = run(&small("overlap", &fault(6.0, 0.75)), None);
    let single = run(&small("overlap", &fault(3.0, 0.5)), None);
    assert_healthy(&both);
    assert_eq!(outcome(&both), outcome(&composed));
    assert_ne!(
        outcome(&both),
        outcome(&single),
        "the second degradation does not replace the first"
    );
}

/// EU nodes as gateways of `devices`, each device an origin of its own publishing EU-only
/// telemetry and public status; the US and Japan subscribe to both. `rates` are the two
/// workloads' fabric-wide rates, `faults` is spliced in.
fn gateways(seed: u64, devices: u32, rates: (u32, u32), loss: f64, faults: &str) -> String {
    let devices = if devices > 0 {
        format!("devices = {devices}")
    } else {
        String::new()
    };
    format!(
        r#"
name = "gateways"
description = "test"
duration_s = 200
seed = {seed}

[topology]
regions = [
  {{ region = "aws:eu-west-1", nodes = 3 }},
  {{ region = "aws:eu-central-1", nodes = 3 }},
  {{ region = "aws:us-east-1", nodes = 3 }},
  {{ region = "aws:ap-northeast-1", nodes = 2 }},
]

[network]
jitter_ms = 0.5
loss = {loss}
verify_us = 60

[policy.classes.eu-personal]
description = "EU only"
jurisdictions = ["EU"]
transit = "forbidden"

[policy.classes.public]
description = "anywhere"
anywhere = true

[[workload]]
stream = "telemetry.eu"
classification = "eu-personal"
rate_per_s = {}
payload_bytes = 200
publishers = {{ regions = ["aws:eu-west-1", "aws:eu-central-1"] }}
subscribers = "all"
{devices}
start_s = 30
stop_s = 160

[[workload]]
stream = "status.global"
classification = "public"
rate_per_s = {}
payload_bytes = 200
publishers = {{ regions = ["aws:eu-west-1", "aws:eu-central-1"] }}
subscribers = "all"
{devices}
start_s = 30
stop_s = 160

[checks]
converge_within_s = 30
{faults}
"#,
        rates.0, rates.1
    )
}

/// Events devices sign, published through the EU nodes they connect to: every member of a
/// gateway's region gets them by pushes (no GRAFT: before, the part of the region outside
/// the gateway's subtree waited a GRAFT timeout for each), each device's order holds, and
/// every Skip the US and Japan take for EU-only events (none from the origin: a device is
/// no member) is confirmed by a second node; none waits at the end, none was deferred.
#[test]
fn device_events_go_by_pushes_and_their_skips_are_confirmed() {
    let r = run(&gateways(7, 40, (100, 25), 0.0, ""), None);
    assert_healthy(&r);
    let w = &r.strategies[0];
    assert_eq!(w.messages_by_kind.get("graft").copied().unwrap_or(0), 0);
    let k = &w.skips;
    assert_eq!(k.from_origin, 0, "{k:?}");
    assert!(k.relayed > 1_000, "{k:?}");
    assert_eq!(k.confirmed, k.relayed, "{k:?}");
    assert_eq!(
        (k.deferred, k.contradicted, k.pending_at_end),
        (0, 0, 0),
        "{k:?}"
    );
    let eu = w
        .workloads
        .iter()
        .find(|x| x.stream == "telemetry.eu")
        .unwrap();
    // Inside the EU: a region hop or two, never a GRAFT timeout (120 ms).
    assert!(eu.latency_ms.p99 < 50.0, "{:?}", eu.latency_ms);
}

/// A partition between the EU and the rest, long enough for each side to declare the other
/// down: at the heal every node learns the others declared it down and rejoins under its
/// next generation. foca's own rejoin left each instance disconnected with its timers
/// invalidated, and the mesh core kept its old identity; with every node of a side doing so
/// at once, no node sent SWIM again, the sides never found each other and the events
/// published from the partition on never reached the other side (on these seeds: 35,000
/// pairs missed). Both were fixed (vendor/foca/WEFT-PATCHES.md, 9; `Node::apply_swim`).
#[test]
fn membership_heals_when_every_node_rejoins_at_once() {
    let partition = r#"
[[fault]]
kind = "partition"
a = { regions = ["aws:eu-west-1", "aws:eu-central-1"] }
b = { regions = ["aws:us-east-1", "aws:ap-northeast-1"] }
at_s = 90
duration_s = 60
"#;
    for seed in [91, 1] {
        let r = run(&gateways(seed, 0, (400, 100), 0.001, partition), None);
        assert_healthy(&r);
    }
}

/// `devices` above its limit is refused, naming the field and the limit.
#[test]
fn too_many_devices_is_refused_naming_the_field() {
    let catalog = RegionCatalog::embedded().unwrap();
    let text = gateways(7, 1_001, (10, 10), 0.0, "");
    let e = Scenario::parse(&text, &catalog).unwrap_err().to_string();
    assert!(
        e.contains("workload[0].devices") && e.contains("1000"),
        "{e}"
    );
}

/// A baseline ignores residency: its deliveries to nodes an event's residency excludes are
/// counted as residency violations, not as deliveries, so its delivered fraction compares
/// with what the run expects and never goes above 1 (flooding's was 1.12 on
/// `region-outage`, found by a user review).
#[test]
fn a_baselines_deliveries_residency_excludes_are_violations_not_deliveries() {
    let catalog = RegionCatalog::embedded().unwrap();
    let scenario = Scenario::parse(&small("baseline", ""), &catalog).unwrap();
    let plan = weft_sim::plan::build(&scenario, &catalog, None);
    let metrics = Engine::new(plan.clone(), Strategy::Flooding { degree: 6 }).run(|_, _| {});
    let r = StrategyReport::new("flooding", &plan, &metrics);
    assert!(r.residency.violations > 0, "{:?}", r.residency);
    let fractions: Vec<f64> = r.delivered_fraction.iter().map(|(_, f)| *f).collect();
    assert!(fractions.iter().all(|f| *f <= 1.0), "{fractions:?}");
    assert!(*fractions.last().unwrap() > 0.99, "{fractions:?}");
}

/// A stream kept to two regions (`[[policy.streams]]`, a bundle's `replication =
/// "regions"` rule) through a region outage of one of them and a partition: every node of
/// those regions gets every event (missed 0 after the heal), no node elsewhere ever gets one
/// (the checker counts a clear send outside the scope as a violation), and a fabric that
/// does not enforce the scope is caught by the checker.
#[test]
fn a_stream_kept_to_regions_stays_there_through_faults() {
    let text = r#"
name = "kept-to-regions"
description = "test"
duration_s = 150
seed = 9

[topology]
regions = [
  { region = "aws:us-east-1", nodes = 2 },
  { region = "aws:eu-west-1", nodes = 2 },
  { region = "azure:westeurope", nodes = 2 },
  { region = "gcp:asia-south1", nodes = 2 },
]

[network]
jitter_ms = 1.0
loss = 0.01
verify_us = 60

[policy.classes.public]
anywhere = true

[[policy.streams]]
pattern = "t.kept.>"
classification = "public"
regions = ["aws:us-east-1", "gcp:asia-south1"]

[[workload]]
stream = "t.events"
classification = "public"
rate_per_s = 10
payload_bytes = 64
start_s = 10
stop_s = 80

[[workload]]
stream = "t.kept.audit"
classification = "public"
rate_per_s = 10
payload_bytes = 64
publishers = { regions = ["aws:us-east-1", "gcp:asia-south1"] }
start_s = 10
stop_s = 80

[[fault]]
kind = "region-outage"
region = "gcp:asia-south1"
at_s = 30
duration_s = 20

[[fault]]
kind = "partition"
a = { regions = ["aws:us-east-1"] }
b = { regions = ["gcp:asia-south1"] }
at_s = 55
duration_s = 15

[checks]
converge_within_s = 60
"#;
    let r = run(text, None);
    assert_healthy(&r);
    let w = &r.strategies[0];
    let kept = w
        .workloads
        .iter()
        .find(|x| x.stream == "t.kept.audit")
        .unwrap();
    let to: std::collections::BTreeSet<&str> = kept
        .latency_by_region_pair
        .iter()
        .map(|p| p.to.as_str())
        .collect();
    assert_eq!(
        to,
        ["aws:us-east-1", "gcp:asia-south1"].into(),
        "delivered in exactly the stream's regions"
    );
    // Without enforcement the checker catches the scoped stream (the only restricted one).
    let r = run_enforcing(text, None, false);
    let w = &r.strategies[0];
    assert!(w.residency.violations > 0, "{:?}", w.residency);
    // A publisher outside the scope is refused, naming the rule.
    let catalog = RegionCatalog::embedded().unwrap();
    let e = Scenario::parse(
        &text.replace(
            r#"publishers = { regions = ["aws:us-east-1", "gcp:asia-south1"] }"#,
            r#"publishers = { regions = ["aws:eu-west-1"] }"#,
        ),
        &catalog,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains(
            "workload[1].publishers: node aws:eu-west-1/0 (region aws:eu-west-1) may not hold \
             events on t.kept.audit, which policy.streams[0] keeps to aws:us-east-1, \
             gcp:asia-south1: a publisher stores what it publishes"
        ),
        "{e}"
    );
    // A rule naming a restricted class narrows the workload's (as the engine does): a
    // publisher outside that class is refused before the run, not caught as violations.
    let e = Scenario::parse(
        &text
            .replace(
                "[[policy.streams]]\npattern = \"t.kept.>\"\nclassification = \"public\"\n\
                 regions = [\"aws:us-east-1\", \"gcp:asia-south1\"]",
                "[policy.classes.eu]\njurisdictions = [\"EU\"]\ntransit = \"forbidden\"\n\n\
                 [[policy.streams]]\npattern = \"t.kept.>\"\nclassification = \"eu\"\n\
                 regions = [\"aws:us-east-1\", \"aws:eu-west-1\"]",
            )
            .replace(
                r#"publishers = { regions = ["aws:us-east-1", "gcp:asia-south1"] }"#,
                r#"publishers = { regions = ["aws:us-east-1"] }"#,
            ),
        &catalog,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("workload[1].publishers") && e.contains("names class \"eu\""),
        "{e}"
    );
}
