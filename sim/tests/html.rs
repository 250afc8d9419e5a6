//! The HTML report (`--html DIR`): a short run with a fault, written to a temporary
//! directory, has its index and every SVG chart with drawn content.

use weft_sim::catalog::RegionCatalog;
use weft_sim::engine::{Engine, Strategy};
use weft_sim::report::{Report, StrategyReport};
use weft_sim::scenario::Scenario;

/// A small four-region mesh with one node crash (as in `scenarios.rs`, shorter).
fn small(name: &str) -> String {
    format!(
        r#"
name = "{name}"
description = "test"
duration_s = 60
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

[[workload]]
stream = "t.events"
rate_per_s = 10
payload_bytes = 64
start_s = 5
stop_s = 30

[[fault]]
kind = "node-crash"
nodes = {{ nodes = ["azure:westeurope/1"] }}
at_s = 10
duration_s = 8

[checks]
converge_within_s = 30
"#
    )
}

fn run(text: &str) -> Report {
    let catalog = RegionCatalog::embedded().unwrap();
    let scenario = Scenario::parse(text, &catalog).unwrap_or_else(|e| panic!("{e}"));
    let plan = weft_sim::plan::build(&scenario, &catalog, None);
    let mut reports = Vec::new();
    for strategy in [Strategy::Weft, Strategy::Flooding { degree: 6 }] {
        let metrics = Engine::new(plan.clone(), strategy).run(|_, _| {});
        reports.push(StrategyReport::new(strategy.name(), &plan, &metrics));
    }
    Report::new(&scenario, &plan, reports)
}

#[test]
fn html_report_has_index_and_charts() {
    let report = run(&small("html-smoke"));
    assert_eq!(report.faults.len(), 1);
    assert_eq!(report.faults[0].kind, "down");
    // The fault names what it hit, as the scenario wrote it.
    assert_eq!(report.faults[0].fault, "node-crash");
    assert_eq!(
        report.faults[0].targets,
        r#"{ nodes = ["azure:westeurope/1"] }"#
    );
    assert_eq!(report.faults[0].nodes, 1);
    let w = &report.strategies[0];
    assert_eq!(w.latency_cdf_ms.len(), 100);
    assert!(w.latency_cdf_ms.windows(2).all(|p| p[0].0 <= p[1].0));
    assert_eq!(w.latency_cdf_ms.last().unwrap().1, 1.0);
    assert_eq!(w.latency_by_destination.len(), 4);

    let dir = std::env::temp_dir().join(format!("weft-sim-html-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let index = weft_sim::html::write(&report, &dir).unwrap();
    assert_eq!(index, dir.join("index.html"));
    let html = std::fs::read_to_string(&index).unwrap();
    assert!(html.contains("html-smoke"), "index names the scenario");
    assert!(!html.contains("<script"), "no scripts");
    assert!(!html.contains("src=\"http"), "no external assets");
    for name in weft_sim::html::CHARTS {
        let path = dir.join(name);
        let svg =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(svg.contains("<svg"), "{name} is an SVG");
        assert!(
            svg.contains("<path") || svg.contains("<polyline"),
            "{name} draws a path or polyline"
        );
        assert!(html.contains(name), "index links {name}");
    }
    let delivered =
        std::fs::read_to_string(dir.join(weft_sim::html::DELIVERED_FRACTION_SVG)).unwrap();
    assert!(
        delivered.contains("F1 node-crash"),
        "the fault window is labelled"
    );
    assert!(
        html.contains(
            "fault F1 node-crash { nodes = [&quot;azure:westeurope/1&quot;] } (1 node), 10 s to 18 s"
        ),
        "the page lists the fault with its target"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The `y` of the chart label that reads exactly `label`.
fn label_y(svg: &str, label: &str) -> f64 {
    let end = svg
        .find(&format!(">\n{label}\n</text>"))
        .unwrap_or_else(|| panic!("no label {label:?} in {svg}"));
    let open = svg[..end].rfind("<text").unwrap();
    let attrs = &svg[open..end];
    let y = attrs.split(" y=\"").nth(1).unwrap();
    y[..y.find('"').unwrap()].parse().unwrap()
}

/// Overlapping faults' labels on the delivered-fraction chart sit in rows of their own
/// (they were all drawn at the top, over each other); a fault that starts after the
/// others' windows and labels end goes back to the top row.
#[test]
fn overlapping_fault_labels_do_not_run_together() {
    let mut report = run(&small("html-labels"));
    let first = report.faults[0].clone();
    let at = |fault: &str, at_s: f64, until_s: f64| weft_sim::report::FaultWindow {
        fault: fault.to_string(),
        at_s,
        until_s,
        ..first.clone()
    };
    // Listed out of start order: the rows follow the start times.
    report.faults = vec![
        at("partition", 10.0, 20.0),
        at("clock-skew", 15.0, 16.0),
        at("link-degradation", 12.0, 18.0),
        at("node-crash", 40.0, 45.0),
    ];
    let dir = std::env::temp_dir().join(format!("weft-sim-html-labels-{}", std::process::id()));
    weft_sim::html::write(&report, &dir).unwrap();
    let svg = std::fs::read_to_string(dir.join(weft_sim::html::DELIVERED_FRACTION_SVG)).unwrap();
    let y = [
        label_y(&svg, "F1 partition"),
        label_y(&svg, "F3 link-degradation"),
        label_y(&svg, "F2 clock-skew"),
        label_y(&svg, "F4 node-crash"),
    ];
    assert!(y[0] < y[1] && y[1] < y[2], "three overlapping rows: {y:?}");
    assert_eq!(y[3], y[0], "a later fault is labelled on the top row again");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn unwritable_dir_is_an_error_naming_the_path() {
    let report = run(&small("html-error"));
    let file = std::env::temp_dir().join(format!("weft-sim-html-file-{}", std::process::id()));
    std::fs::write(&file, "not a directory").unwrap();
    let dir = file.join("sub");
    let err = weft_sim::html::write(&report, &dir).unwrap_err();
    assert!(
        err.to_string().contains(&dir.display().to_string()),
        "{err}"
    );
    std::fs::remove_file(&file).unwrap();
}

#[test]
fn charts_draw_without_data() {
    let mut report = run(&small("html-empty"));
    let dir = std::env::temp_dir().join(format!("weft-sim-html-empty-{}", std::process::id()));
    for keep in [1, 0] {
        for s in &mut report.strategies {
            s.latency_by_destination.truncate(keep);
            if keep == 0 {
                s.latency_cdf_ms.clear();
                s.delivered_fraction.clear();
            }
        }
        weft_sim::html::write(&report, &dir).unwrap();
        for name in weft_sim::html::CHARTS {
            let svg = std::fs::read_to_string(dir.join(name)).unwrap();
            assert!(svg.contains("<svg"), "{name} with {keep} rows");
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
