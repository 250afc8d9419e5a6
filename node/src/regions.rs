//! The region catalog's data files (`sim/data/region-rtt.csv` and `sim/data/regions.toml`),
//! read at build time: measured round-trip times for `weft demo`'s injected latencies, and
//! region coordinates and jurisdictions for the demo and the dashboard's map.
//!
//! The simulator (`weft-sim`) has the full catalog with derived pairs; the node does not
//! depend on it (it would pull the simulator into the deployed binary). Only measured pairs
//! are used here, and a region pair without a measurement is an error, not a guess.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use anyhow::{Context as _, bail};
use serde::Deserialize;

/// The measured RTT table (`region_a,region_b,rtt_ms,stat,source`, one pair a row).
const RTT_CSV: &str = include_str!("../../sim/data/region-rtt.csv");
/// Region metadata: cloud, location, coordinates, jurisdiction.
const REGIONS_TOML: &str = include_str!("../../sim/data/regions.toml");

/// Most rows read from the RTT table; the shipped one has under 100.
const RTT_ROWS_MAX: usize = 10_000;

/// One region of the catalog.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
pub(crate) struct Region {
    /// Cloud provider, e.g. `aws`.
    pub(crate) cloud: String,
    /// Where the region is, for people.
    pub(crate) location: String,
    /// Latitude in degrees, north positive.
    pub(crate) lat_deg: f64,
    /// Longitude in degrees, east positive.
    pub(crate) lon_deg: f64,
    /// Jurisdiction code, e.g. `EU`.
    pub(crate) jurisdiction: String,
}

#[derive(Deserialize)]
struct RegionsFile {
    regions: BTreeMap<String, Region>,
}

/// The catalog's regions by id, parsed once.
pub(crate) fn regions() -> &'static BTreeMap<String, Region> {
    static REGIONS: OnceLock<BTreeMap<String, Region>> = OnceLock::new();
    REGIONS.get_or_init(|| {
        // The file is part of the binary and checked by this module's tests: a parse error
        // is a build defect, not bad input.
        parse_regions(REGIONS_TOML).unwrap_or_else(|e| panic!("sim/data/regions.toml: {e:#}"))
    })
}

fn parse_regions(text: &str) -> anyhow::Result<BTreeMap<String, Region>> {
    let file: RegionsFile = toml::from_str(text).context("parsing regions.toml")?;
    Ok(file.regions)
}

/// The measured RTT in milliseconds between two regions (either order), if measured.
pub(crate) fn measured_rtt_ms(a: &str, b: &str) -> Option<f64> {
    static RTT: OnceLock<BTreeMap<(String, String), f64>> = OnceLock::new();
    let table = RTT.get_or_init(|| {
        parse_rtt_csv(RTT_CSV).unwrap_or_else(|e| panic!("sim/data/region-rtt.csv: {e:#}"))
    });
    let key = if a <= b {
        (a.to_string(), b.to_string())
    } else {
        (b.to_string(), a.to_string())
    };
    table.get(&key).copied()
}

/// Parses the RTT table into unordered pairs (stored with the smaller id first). A later
/// row for the same pair replaces an earlier one (`SOURCES.md`: rows are undirected unless
/// a later row says otherwise).
fn parse_rtt_csv(text: &str) -> anyhow::Result<BTreeMap<(String, String), f64>> {
    let mut out = BTreeMap::new();
    let mut lines = text.lines().enumerate();
    match lines.next() {
        Some((_, header)) if header.starts_with("region_a,region_b,rtt_ms") => {}
        other => bail!("line 1: expected the header region_a,region_b,rtt_ms,..., got {other:?}"),
    }
    for (i, line) in lines {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if out.len() >= RTT_ROWS_MAX {
            bail!("more than RTT_ROWS_MAX ({RTT_ROWS_MAX}) rows");
        }
        let cols: Vec<&str> = line.split(',').collect();
        let [a, b, rtt, ..] = cols[..] else {
            bail!("line {}: expected region_a,region_b,rtt_ms,...", i + 1);
        };
        let rtt: f64 = rtt
            .trim()
            .parse()
            .with_context(|| format!("line {}: rtt_ms {rtt:?}", i + 1))?;
        if !(rtt.is_finite() && rtt > 0.0) {
            bail!("line {}: rtt_ms must be positive, got {rtt}", i + 1);
        }
        let (a, b) = (a.trim().to_string(), b.trim().to_string());
        let key = if a <= b { (a, b) } else { (b, a) };
        out.insert(key, rtt);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_files_parse_and_agree() {
        let regions = regions();
        assert!(regions.len() >= 20, "{} regions", regions.len());
        let eu = &regions["aws:eu-west-1"];
        assert_eq!(eu.jurisdiction, "EU");
        assert_eq!(eu.cloud, "aws");
        // A pair the cluster tests use, in both orders.
        assert_eq!(
            measured_rtt_ms("aws:eu-west-1", "aws:us-east-1"),
            Some(80.6)
        );
        assert_eq!(
            measured_rtt_ms("aws:us-east-1", "aws:eu-west-1"),
            Some(80.6)
        );
        assert_eq!(measured_rtt_ms("aws:eu-west-1", "gcp:nowhere"), None);
    }

    #[test]
    fn a_bad_table_is_an_error_naming_the_line() {
        let bad = [
            ("nope\n", "line 1"),
            ("region_a,region_b,rtt_ms\na,b\n", "line 2"),
            ("region_a,region_b,rtt_ms\na,b,x\n", "line 2"),
            ("region_a,region_b,rtt_ms\na,b,1\na,c,-3\n", "line 3"),
        ];
        for (text, want) in bad {
            let err = format!("{:#}", parse_rtt_csv(text).unwrap_err());
            assert!(err.contains(want), "{text:?}: {err}");
        }
        let ok = parse_rtt_csv("region_a,region_b,rtt_ms\nb,a,5\n").unwrap();
        assert_eq!(ok[&("a".to_string(), "b".to_string())], 5.0);
    }
}
