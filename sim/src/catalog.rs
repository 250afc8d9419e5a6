//! The region catalog: real cloud regions, their metadata and a complete, symmetric
//! round-trip-time matrix in which every entry says where its value comes from.
//!
//! Two embedded files feed it (`sim/data/`):
//!
//! - `region-rtt.csv`: measured RTTs between pairs of regions, one pair a row, with the
//!   statistic and the source of each (`SOURCES.md` beside it lists the sources);
//! - `regions.toml`: for each region, its cloud, a display location, the latitude and
//!   longitude of that place, and the jurisdiction its data sits in.
//!
//! Pairs the CSV does not measure are **derived** from the great-circle distance between
//! the two regions with a straight line fitted by least squares to the measured pairs,
//! `rtt_ms = a + b * great_circle_km`, and never below the physical bound of light in
//! fibre, `2 * great_circle_km / FIBRE_KM_PER_MS`. With the embedded data the fit over
//! the 68 measured pairs gives `a = 4.76 ms` and `b = 0.01571 ms/km` (paths cost 57 % more
//! than a straight fibre at 200 km/ms would), with a median relative error of 15.7 % and a
//! largest of 115 % (2.3 ms measured between two clouds in Singapore, 5.0 ms derived); the
//! test `embedded_model_constants` prints and pins them. Since `a > 0` and `b` is above
//! the fibre slope, every derived value of the embedded catalog comes from the fit itself.
//!
//! Rules, each tested:
//! - every region in the CSV has metadata, and the catalog holds every region of the TOML
//!   (a region without measurements gets derived values only);
//! - the matrix is complete and symmetric; a region to itself is [`SAME_REGION_RTT_MS`];
//! - a pair measured twice (in either direction) takes the **later row** of the CSV, the
//!   rule `SOURCES.md` states ("a->b equals b->a unless a later row says otherwise");
//! - a measured value below the fibre bound is an error (it means a wrong row or wrong
//!   coordinates), and so is every other malformed input, with its line and field.
//!
//! Regions are kept sorted by id, so region indices, iteration and the matrix layout are
//! the same on every run.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use toml::Spanned;
use weft_fabric::Jurisdiction;
use weft_fabric::limits::JURISDICTION_LEN_MAX;

use crate::toml_text::{self, line_column, render_key};

/// The measured RTT table, embedded (a copy of `shared/data/region-rtt.csv`).
pub const EMBEDDED_RTT_CSV: &str = include_str!("../data/region-rtt.csv");

/// The region metadata, embedded.
pub const EMBEDDED_REGIONS_TOML: &str = include_str!("../data/regions.toml");

/// The only header the RTT CSV may have.
pub const CSV_HEADER: &str = "region_a,region_b,rtt_ms,stat,source";

/// Most regions in a catalog. The big four clouds have about 200 regions together; 512
/// leaves room for on-prem sites while the full matrix stays small (512^2 entries).
pub const REGIONS_LEN_MAX: usize = 512;

/// Most data rows in the RTT CSV: one per unordered pair of [`REGIONS_LEN_MAX`] regions is
/// 130,816; a little more allows a few pairs measured twice.
pub const CSV_ROWS_MAX: usize = 131_072;

/// Longest region id, in bytes (the longest real one, `gcp:northamerica-northeast2`, is 27).
pub const REGION_ID_LEN_MAX: usize = 64;

/// Longest `stat` or `source` label in the CSV, in bytes: they are short keys
/// (`p95`, `avg-2017`, `AWS17`) explained in `SOURCES.md`, not prose.
pub const LABEL_LEN_MAX: usize = 32;

/// Longest display location in the TOML, in bytes.
pub const LOCATION_LEN_MAX: usize = 128;

/// Largest RTT accepted, in milliseconds. The longest measured path in the data (Brazil to
/// Singapore) is 337 ms; 1000 ms catches a value written in the wrong unit (microseconds)
/// without refusing any real terrestrial path.
pub const RTT_MS_MAX: f64 = 1000.0;

/// RTT between two nodes in the same region, in milliseconds. Clouds keep a region's
/// availability zones within about 100 km of each other and quote cross-zone round trips
/// of well under 2 ms; 1 ms is that order of magnitude and stays below every measured
/// inter-region pair (the smallest is 2.3 ms, two clouds in Singapore).
pub const SAME_REGION_RTT_MS: f64 = 1.0;

/// Speed of light in optical fibre, in km per millisecond (c divided by a refractive index
/// of about 1.47 is 204 km/ms; 200 is the customary round figure). No RTT can beat
/// `2 * distance / FIBRE_KM_PER_MS`.
pub const FIBRE_KM_PER_MS: f64 = 200.0;

/// Mean radius of the Earth, in km, for the great-circle (haversine) distance.
pub const EARTH_RADIUS_KM: f64 = 6371.0;

/// A cloud region: its id and metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct Region {
    /// The id, `cloud:name` (`aws:us-east-1`).
    pub id: String,
    /// The cloud, the id's prefix (`aws`).
    pub cloud: String,
    /// Where the region is, for people (`Dublin, Ireland`).
    pub location: String,
    /// Latitude of the location, decimal degrees, north positive.
    pub lat_deg: f64,
    /// Longitude of the location, decimal degrees, east positive.
    pub lon_deg: f64,
    /// The jurisdiction the region's data sits in (`EU`, `US`, `UK`).
    pub jurisdiction: Jurisdiction,
}

impl Region {
    /// The id without the cloud prefix (`us-east-1`).
    pub fn name(&self) -> &str {
        self.id
            .split_once(':')
            .map_or(&self.id[..], |(_, name)| name)
    }
}

/// One entry of the RTT matrix: the value and where it comes from.
#[derive(Debug, Clone, PartialEq)]
pub struct RttEntry {
    /// Round-trip time, in milliseconds.
    pub rtt_ms: f64,
    /// Where the value comes from.
    pub provenance: Provenance,
}

impl RttEntry {
    /// The round-trip time in whole microseconds (rounded), for integer simulated time.
    pub fn rtt_us(&self) -> u64 {
        // The value is finite, positive and at most RTT_MS_MAX (or a derived value bounded
        // by half the Earth's circumference), so the cast cannot saturate.
        (self.rtt_ms * 1000.0).round() as u64
    }

    /// Whether the value was measured (a CSV row) rather than derived or the same-region
    /// constant.
    pub fn is_measured(&self) -> bool {
        matches!(self.provenance, Provenance::Measured { .. })
    }
}

/// Where an [`RttEntry`] comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Provenance {
    /// A region to itself: [`SAME_REGION_RTT_MS`], used between nodes of one region.
    SameRegion,
    /// A row of the RTT CSV.
    Measured {
        /// The statistic of the row (`p95`, `avg`, `avg-2017`).
        stat: String,
        /// The source key of the row (`AZ`, `APT`, `IBM`, `AWS17`; see `SOURCES.md`).
        source: String,
        /// The 1-based line of the row in the CSV (the later row when a pair appears twice).
        line: usize,
    },
    /// Not measured: derived from the great-circle distance.
    Derived {
        /// Great-circle distance between the two regions' locations, in km.
        distance_km: f64,
        /// Which rule produced the value.
        method: Derivation,
    },
}

/// How a derived RTT was computed; the value is the largest of the three candidates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Derivation {
    /// The fitted line `a + b * distance_km` ([`RttModel`]).
    GreatCircleFit,
    /// The fibre bound `2 * distance_km / FIBRE_KM_PER_MS`, because the fit fell below it.
    FibreBound,
    /// [`SAME_REGION_RTT_MS`], because both of the above fell below it (two regions
    /// cannot be closer than one region is to itself).
    SameRegionFloor,
}

impl fmt::Display for Derivation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Derivation::GreatCircleFit => "great-circle fit",
            Derivation::FibreBound => "fibre bound",
            Derivation::SameRegionFloor => "same-region floor",
        })
    }
}

/// The great-circle model fitted to the measured pairs: `rtt_ms = a + b * distance_km`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RttModel {
    /// `a`, the intercept, in milliseconds: the fixed cost of any inter-region path
    /// (routers, queues, the path into and out of each cloud).
    pub intercept_ms: f64,
    /// `b`, the slope, in milliseconds per km of great-circle distance.
    pub slope_ms_per_km: f64,
    /// Number of measured pairs the line was fitted to.
    pub pairs_len: usize,
    /// Median over the measured pairs of `|derived - measured| / measured`, where
    /// `derived` is what [`RttModel::derive`] would give for the pair.
    pub relative_error_median: f64,
    /// Largest `|derived - measured| / measured` over the measured pairs.
    pub relative_error_max: f64,
}

impl RttModel {
    /// The derived RTT, in ms, for two distinct regions `distance_km` apart, and the rule
    /// that produced it: the largest of the fitted line, the fibre bound and
    /// [`SAME_REGION_RTT_MS`].
    pub fn derive(&self, distance_km: f64) -> (f64, Derivation) {
        let fit = self.intercept_ms + self.slope_ms_per_km * distance_km;
        let bound = fibre_bound_ms(distance_km);
        if fit >= bound && fit >= SAME_REGION_RTT_MS {
            (fit, Derivation::GreatCircleFit)
        } else if bound >= SAME_REGION_RTT_MS {
            (bound, Derivation::FibreBound)
        } else {
            (SAME_REGION_RTT_MS, Derivation::SameRegionFloor)
        }
    }
}

/// The physical lower bound on the RTT over `distance_km` of fibre, in ms.
pub fn fibre_bound_ms(distance_km: f64) -> f64 {
    2.0 * distance_km / FIBRE_KM_PER_MS
}

/// Great-circle (haversine) distance between two regions' locations, in km.
pub fn great_circle_km(a: &Region, b: &Region) -> f64 {
    let (lat_a, lat_b) = (a.lat_deg.to_radians(), b.lat_deg.to_radians());
    let half_dlat = (lat_b - lat_a) / 2.0;
    let half_dlon = (b.lon_deg - a.lon_deg).to_radians() / 2.0;
    let h = half_dlat.sin().powi(2) + lat_a.cos() * lat_b.cos() * half_dlon.sin().powi(2);
    2.0 * EARTH_RADIUS_KM * h.sqrt().min(1.0).asin()
}

/// Why a catalog could not be built. Building has no side effects: a failed parse leaves
/// nothing behind.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CatalogError {
    /// A line of the RTT CSV is malformed or names something the TOML does not define.
    #[error("RTT CSV line {line}, {field}: {reason}")]
    Csv {
        /// 1-based line number.
        line: usize,
        /// The column (`region_a`, `rtt_ms`, ...), or `header` / `row` for the whole line.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The region TOML is not valid TOML, has a value of the wrong type, an unknown key or
    /// a missing one.
    #[error("regions TOML {path}: {message}{}", at_line_column(*.position))]
    TomlSyntax {
        /// Dotted path of the key (`regions."aws:us-east-1".lat_deg`), `document` for the
        /// whole text.
        path: String,
        /// What the TOML reader said.
        message: String,
        /// 1-based line and column, when known.
        position: Option<(usize, usize)>,
    },
    /// A region entry of the TOML breaks a rule of the catalog.
    #[error("regions TOML line {line}, {path}: {reason}")]
    Region {
        /// 1-based line of the region's table.
        line: usize,
        /// Dotted path of the field (`regions."aws:us-east-1".jurisdiction`).
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The measured pairs cannot support the great-circle fit.
    #[error("cannot fit the great-circle RTT model: {reason}")]
    Model {
        /// What is wrong.
        reason: String,
    },
}

fn at_line_column(position: Option<(usize, usize)>) -> String {
    position.map_or_else(String::new, |(line, column)| {
        format!(" (line {line}, column {column})")
    })
}

/// The region catalog: regions sorted by id, their metadata, and the RTT matrix.
#[derive(Debug, Clone)]
pub struct RegionCatalog {
    regions: Vec<Region>,
    index: BTreeMap<String, usize>,
    clouds: Vec<String>,
    jurisdictions: Vec<Jurisdiction>,
    /// Row-major `regions.len()` x `regions.len()`.
    matrix: Vec<RttEntry>,
    model: RttModel,
}

impl RegionCatalog {
    /// The catalog built from the embedded `region-rtt.csv` and `regions.toml`.
    pub fn embedded() -> Result<Self, CatalogError> {
        Self::parse(EMBEDDED_RTT_CSV, EMBEDDED_REGIONS_TOML)
    }

    /// Builds a catalog from RTT CSV text and region TOML text (formats as in the embedded
    /// files; see `docs/sim.md`).
    pub fn parse(csv: &str, toml: &str) -> Result<Self, CatalogError> {
        let regions = parse_regions(toml)?;
        let index: BTreeMap<String, usize> = regions
            .iter()
            .enumerate()
            .map(|(i, r)| (r.id.clone(), i))
            .collect();
        let measured = parse_csv(csv, &regions, &index)?;
        let n = regions.len();

        let distance = |i: usize, j: usize| great_circle_km(&regions[i], &regions[j]);
        let model = fit_model(&measured, distance)?;

        let mut matrix = Vec::with_capacity(n * n);
        for i in 0..n {
            for j in 0..n {
                let key = (i.min(j), i.max(j));
                let entry = if i == j {
                    RttEntry {
                        rtt_ms: SAME_REGION_RTT_MS,
                        provenance: Provenance::SameRegion,
                    }
                } else if let Some(m) = measured.get(&key) {
                    RttEntry {
                        rtt_ms: m.rtt_ms,
                        provenance: Provenance::Measured {
                            stat: m.stat.clone(),
                            source: m.source.clone(),
                            line: m.line,
                        },
                    }
                } else {
                    let distance_km = distance(key.0, key.1);
                    let (rtt_ms, method) = model.derive(distance_km);
                    RttEntry {
                        rtt_ms,
                        provenance: Provenance::Derived {
                            distance_km,
                            method,
                        },
                    }
                };
                matrix.push(entry);
            }
        }

        let mut clouds: Vec<String> = regions.iter().map(|r| r.cloud.clone()).collect();
        clouds.sort();
        clouds.dedup();
        let mut jurisdictions: Vec<Jurisdiction> =
            regions.iter().map(|r| r.jurisdiction.clone()).collect();
        jurisdictions.sort();
        jurisdictions.dedup();

        Ok(Self {
            regions,
            index,
            clouds,
            jurisdictions,
            matrix,
            model,
        })
    }

    /// Every region, sorted by id. A region's position here is its index.
    pub fn regions(&self) -> &[Region] {
        &self.regions
    }

    /// The region with this id.
    pub fn region(&self, id: &str) -> Option<&Region> {
        self.index.get(id).map(|&i| &self.regions[i])
    }

    /// The index of the region with this id in [`RegionCatalog::regions`].
    pub fn region_index(&self, id: &str) -> Option<usize> {
        self.index.get(id).copied()
    }

    /// The clouds with at least one region, sorted (`aws`, `azure`, `gcp`, `ibm`).
    pub fn clouds(&self) -> &[String] {
        &self.clouds
    }

    /// The jurisdictions with at least one region, sorted.
    pub fn jurisdictions(&self) -> &[Jurisdiction] {
        &self.jurisdictions
    }

    /// The RTT entry between regions `a` and `b` (by id), `None` if either is unknown.
    pub fn rtt(&self, a: &str, b: &str) -> Option<&RttEntry> {
        self.rtt_at(self.region_index(a)?, self.region_index(b)?)
    }

    /// The RTT between regions `a` and `b` (by id), in ms; `None` if either is unknown.
    pub fn rtt_ms(&self, a: &str, b: &str) -> Option<f64> {
        self.rtt(a, b).map(|e| e.rtt_ms)
    }

    /// The RTT entry between the regions at indices `a` and `b`; `None` if out of range.
    pub fn rtt_at(&self, a: usize, b: usize) -> Option<&RttEntry> {
        let n = self.regions.len();
        if a < n && b < n {
            self.matrix.get(a * n + b)
        } else {
            None
        }
    }

    /// The great-circle model fitted to the measured pairs.
    pub fn model(&self) -> &RttModel {
        &self.model
    }
}

/// One measured pair, after the later-row-wins rule.
#[derive(Debug, Clone)]
struct Measurement {
    rtt_ms: f64,
    stat: String,
    source: String,
    line: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegionsFile {
    regions: BTreeMap<String, Spanned<RegionToml>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegionToml {
    cloud: String,
    location: String,
    lat_deg: f64,
    lon_deg: f64,
    jurisdiction: String,
}

fn parse_regions(text: &str) -> Result<Vec<Region>, CatalogError> {
    let file: RegionsFile =
        toml_text::from_toml(text).map_err(|failure| CatalogError::TomlSyntax {
            path: if failure.path.is_empty() {
                "document".to_owned()
            } else {
                failure.path
            },
            message: failure.message,
            position: failure.position,
        })?;
    if file.regions.len() > REGIONS_LEN_MAX {
        return Err(CatalogError::Region {
            line: 1,
            path: "regions".to_owned(),
            reason: format!(
                "has {} regions, over the limit REGIONS_LEN_MAX = {REGIONS_LEN_MAX}",
                file.regions.len()
            ),
        });
    }
    // BTreeMap order: sorted by id.
    let mut regions = Vec::with_capacity(file.regions.len());
    for (id, spanned) in file.regions {
        let line = line_column(text, spanned.span().start).0;
        let base = format!("regions.{}", render_key(&id));
        let err = |field: &str, reason: String| CatalogError::Region {
            line,
            path: if field.is_empty() {
                base.clone()
            } else {
                format!("{base}.{field}")
            },
            reason,
        };
        let entry = spanned.into_inner();
        let (cloud, _) = check_region_id(&id).map_err(|reason| err("", reason))?;
        if entry.cloud != cloud {
            return Err(err(
                "cloud",
                format!(
                    "is {:?} but the id's prefix is {cloud:?}; they must agree",
                    entry.cloud
                ),
            ));
        }
        if entry.location.trim().is_empty() {
            return Err(err("location", "is empty".to_owned()));
        }
        if entry.location.len() > LOCATION_LEN_MAX {
            return Err(err(
                "location",
                format!(
                    "is {} bytes, over the limit LOCATION_LEN_MAX = {LOCATION_LEN_MAX}",
                    entry.location.len()
                ),
            ));
        }
        if !(entry.lat_deg.is_finite() && (-90.0..=90.0).contains(&entry.lat_deg)) {
            return Err(err(
                "lat_deg",
                format!("is {}, must be within -90..=90", entry.lat_deg),
            ));
        }
        if !(entry.lon_deg.is_finite() && (-180.0..=180.0).contains(&entry.lon_deg)) {
            return Err(err(
                "lon_deg",
                format!("is {}, must be within -180..=180", entry.lon_deg),
            ));
        }
        let jurisdiction = Jurisdiction::new(entry.jurisdiction.clone()).map_err(|_| {
            err(
                "jurisdiction",
                format!(
                    "{:?} is not a jurisdiction code: [A-Z][A-Z0-9-]+, at most \
                     JURISDICTION_LEN_MAX = {JURISDICTION_LEN_MAX} bytes",
                    entry.jurisdiction
                ),
            )
        })?;
        regions.push(Region {
            cloud: cloud.to_owned(),
            id,
            location: entry.location,
            lat_deg: entry.lat_deg,
            lon_deg: entry.lon_deg,
            jurisdiction,
        });
    }
    Ok(regions)
}

/// Checks the region id grammar, `cloud ":" name` with `cloud = [a-z][a-z0-9]*` and
/// `name = [a-z0-9][a-z0-9-]*`, at most [`REGION_ID_LEN_MAX`] bytes; returns the parts.
fn check_region_id(id: &str) -> Result<(&str, &str), String> {
    if id.len() > REGION_ID_LEN_MAX {
        return Err(format!(
            "region id is {} bytes, over the limit REGION_ID_LEN_MAX = {REGION_ID_LEN_MAX}",
            id.len()
        ));
    }
    let bad = || format!("{id:?} is not a region id (cloud:name, e.g. aws:us-east-1)");
    let (cloud, name) = id.split_once(':').ok_or_else(bad)?;
    let cloud_ok = cloud.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
        && cloud
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let name_ok = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if cloud_ok && name_ok {
        Ok((cloud, name))
    } else {
        Err(bad())
    }
}

fn parse_csv(
    text: &str,
    regions: &[Region],
    index: &BTreeMap<String, usize>,
) -> Result<BTreeMap<(usize, usize), Measurement>, CatalogError> {
    let mut measured = BTreeMap::new();
    let mut lines = text.split('\n').enumerate().map(|(i, l)| {
        let l = l.strip_suffix('\r').unwrap_or(l);
        (i + 1, l)
    });
    // `split` yields at least one (possibly empty) line, so an empty text fails here too.
    let (_, header) = lines.next().unwrap_or((1, ""));
    if header.trim() != CSV_HEADER {
        return Err(CatalogError::Csv {
            line: 1,
            field: "header",
            reason: format!("expected {CSV_HEADER:?}, found {header:?}"),
        });
    }
    let mut rows_len = 0usize;
    for (line, row) in lines {
        if row.trim().is_empty() {
            continue;
        }
        rows_len += 1;
        let err = |field: &'static str, reason: String| CatalogError::Csv {
            line,
            field,
            reason,
        };
        if rows_len > CSV_ROWS_MAX {
            return Err(err(
                "row",
                format!("more than CSV_ROWS_MAX = {CSV_ROWS_MAX} data rows"),
            ));
        }
        let fields: Vec<&str> = row.split(',').map(str::trim).collect();
        let [region_a, region_b, rtt, stat, source] = fields[..] else {
            return Err(err(
                "row",
                format!(
                    "has {} fields, expected 5 ({CSV_HEADER}); quoting is not supported",
                    fields.len()
                ),
            ));
        };
        let lookup = |field: &'static str, id: &str| -> Result<usize, CatalogError> {
            check_region_id(id).map_err(|reason| err(field, reason))?;
            index.get(id).copied().ok_or_else(|| {
                err(
                    field,
                    format!("region {id:?} has no entry in the regions TOML"),
                )
            })
        };
        let a = lookup("region_a", region_a)?;
        let b = lookup("region_b", region_b)?;
        if a == b {
            return Err(err(
                "region_b",
                format!(
                    "is the same region as region_a ({region_a}); a region's RTT to itself is \
                     SAME_REGION_RTT_MS, not a measurement"
                ),
            ));
        }
        let rtt_ms: f64 = rtt
            .parse()
            .map_err(|_| err("rtt_ms", format!("{rtt:?} is not a number")))?;
        if !rtt_ms.is_finite() || rtt_ms <= 0.0 {
            return Err(err("rtt_ms", format!("is {rtt}, must be > 0")));
        }
        if rtt_ms > RTT_MS_MAX {
            return Err(err(
                "rtt_ms",
                format!("is {rtt}, over the limit RTT_MS_MAX = {RTT_MS_MAX}"),
            ));
        }
        let distance_km = great_circle_km(&regions[a], &regions[b]);
        let bound = fibre_bound_ms(distance_km);
        if rtt_ms < bound {
            return Err(err(
                "rtt_ms",
                format!(
                    "is {rtt}, below the fibre bound {bound:.1} ms for the {distance_km:.0} km \
                     between the regions' locations; the row or a region's coordinates are wrong"
                ),
            ));
        }
        for (field, value) in [("stat", stat), ("source", source)] {
            if value.is_empty() {
                return Err(err(field, "is empty".to_owned()));
            }
            if value.len() > LABEL_LEN_MAX {
                return Err(err(
                    field,
                    format!(
                        "is {} bytes, over the limit LABEL_LEN_MAX = {LABEL_LEN_MAX}",
                        value.len()
                    ),
                ));
            }
        }
        // A later row replaces an earlier one for the same pair, in either direction.
        measured.insert(
            (a.min(b), a.max(b)),
            Measurement {
                rtt_ms,
                stat: stat.to_owned(),
                source: source.to_owned(),
                line,
            },
        );
    }
    Ok(measured)
}

/// Least-squares fit of `rtt_ms = a + b * distance_km` over the measured pairs, in the
/// pairs' sorted order (so the floating-point sums, and the constants, are reproducible).
fn fit_model(
    measured: &BTreeMap<(usize, usize), Measurement>,
    distance: impl Fn(usize, usize) -> f64,
) -> Result<RttModel, CatalogError> {
    let points: Vec<(f64, f64)> = measured
        .iter()
        .map(|(&(i, j), m)| (distance(i, j), m.rtt_ms))
        .collect();
    let n = points.len();
    if n < 2 {
        return Err(CatalogError::Model {
            reason: format!("{n} measured pairs; at least 2 are needed"),
        });
    }
    let count = n as f64;
    let x_mean = points.iter().map(|p| p.0).sum::<f64>() / count;
    let y_mean = points.iter().map(|p| p.1).sum::<f64>() / count;
    let sxx: f64 = points.iter().map(|p| (p.0 - x_mean).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - x_mean) * (p.1 - y_mean)).sum();
    // Distances below a metre of spread mean every pair is the same distance apart.
    if sxx < 1e-6 {
        return Err(CatalogError::Model {
            reason: "every measured pair is the same distance apart; the slope is undefined"
                .to_owned(),
        });
    }
    let slope_ms_per_km = sxy / sxx;
    if slope_ms_per_km <= 0.0 {
        return Err(CatalogError::Model {
            reason: format!(
                "the fitted slope is {slope_ms_per_km} ms/km; RTT must grow with distance"
            ),
        });
    }
    let mut model = RttModel {
        intercept_ms: y_mean - slope_ms_per_km * x_mean,
        slope_ms_per_km,
        pairs_len: n,
        relative_error_median: 0.0,
        relative_error_max: 0.0,
    };
    let mut errors: Vec<f64> = points
        .iter()
        .map(|&(x, y)| (model.derive(x).0 - y).abs() / y)
        .collect();
    errors.sort_by(f64::total_cmp);
    model.relative_error_median = if n % 2 == 1 {
        errors[n / 2]
    } else {
        (errors[n / 2 - 1] + errors[n / 2]) / 2.0
    };
    model.relative_error_max = errors[n - 1];
    Ok(model)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small TOML with three regions on one meridian, 1000 km-ish apart.
    const TINY_TOML: &str = r#"
[regions."x:a"]
cloud = "x"
location = "A"
lat_deg = 0.0
lon_deg = 0.0
jurisdiction = "EU"

[regions."x:b"]
cloud = "x"
location = "B"
lat_deg = 10.0
lon_deg = 0.0
jurisdiction = "EU"

[regions."y:c"]
cloud = "y"
location = "C"
lat_deg = 20.0
lon_deg = 0.0
jurisdiction = "US"
"#;

    fn csv(rows: &str) -> String {
        format!("{CSV_HEADER}\n{rows}")
    }

    fn csv_error(rows: &str) -> CatalogError {
        RegionCatalog::parse(&csv(rows), TINY_TOML).unwrap_err()
    }

    fn embedded() -> RegionCatalog {
        RegionCatalog::embedded().unwrap()
    }

    /// The CSV rows, parsed independently of the catalog: (a, b, rtt, stat, source, line).
    fn raw_rows() -> Vec<(String, String, f64, String, String, usize)> {
        EMBEDDED_RTT_CSV
            .lines()
            .enumerate()
            .skip(1)
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| {
                let f: Vec<&str> = l.split(',').collect();
                (
                    f[0].to_owned(),
                    f[1].to_owned(),
                    f[2].parse().unwrap(),
                    f[3].to_owned(),
                    f[4].to_owned(),
                    i + 1,
                )
            })
            .collect()
    }

    #[test]
    fn every_csv_region_has_metadata() {
        let catalog = embedded();
        let rows = raw_rows();
        assert_eq!(rows.len(), 68);
        for (a, b, ..) in &rows {
            for id in [a, b] {
                let region = catalog.region(id).unwrap_or_else(|| panic!("{id} missing"));
                assert_eq!(&region.id, id);
                assert_eq!(region.cloud, id.split(':').next().unwrap());
            }
        }
        assert_eq!(catalog.regions().len(), 40);
        assert_eq!(catalog.clouds(), ["aws", "azure", "gcp", "ibm"]);
    }

    #[test]
    fn every_toml_region_appears_in_the_csv() {
        // The embedded TOML describes exactly the CSV's regions, no more.
        let catalog = embedded();
        let rows = raw_rows();
        for region in catalog.regions() {
            assert!(
                rows.iter()
                    .any(|(a, b, ..)| *a == region.id || *b == region.id),
                "{} is not in the CSV",
                region.id
            );
        }
    }

    #[test]
    fn regions_are_sorted_and_indexed() {
        let catalog = embedded();
        let ids: Vec<&str> = catalog.regions().iter().map(|r| r.id.as_str()).collect();
        let mut sorted = ids.clone();
        sorted.sort_unstable();
        assert_eq!(ids, sorted);
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(catalog.region_index(id), Some(i));
        }
        assert_eq!(catalog.region("aws:us-east-1").unwrap().name(), "us-east-1");
        assert!(catalog.region("aws:nowhere-1").is_none());
        assert!(catalog.rtt("aws:us-east-1", "aws:nowhere-1").is_none());
        assert!(catalog.rtt_at(0, 40).is_none());
    }

    #[test]
    fn jurisdictions_follow_the_mapping() {
        let catalog = embedded();
        let j = |id: &str| catalog.region(id).unwrap().jurisdiction.as_str().to_owned();
        assert_eq!(j("aws:eu-west-1"), "EU");
        assert_eq!(j("aws:eu-west-2"), "UK");
        assert_eq!(j("azure:westeurope"), "EU");
        assert_eq!(j("gcp:northamerica-northeast2"), "CA");
        assert_eq!(j("ibm:br-sao"), "BR");
        let codes: Vec<&str> = catalog.jurisdictions().iter().map(|j| j.as_str()).collect();
        assert_eq!(
            codes,
            [
                "AE", "AU", "BR", "CA", "EU", "IN", "JP", "SG", "UK", "US", "ZA"
            ]
        );
    }

    #[test]
    fn matrix_is_complete_and_symmetric() {
        let catalog = embedded();
        let n = catalog.regions().len();
        for i in 0..n {
            for j in 0..n {
                let ij = catalog.rtt_at(i, j).unwrap();
                let ji = catalog.rtt_at(j, i).unwrap();
                assert_eq!(ij, ji, "{i},{j}");
                assert!(ij.rtt_ms.is_finite() && ij.rtt_ms > 0.0);
                if i == j {
                    assert_eq!(ij.provenance, Provenance::SameRegion);
                    assert_eq!(ij.rtt_ms, SAME_REGION_RTT_MS);
                    assert_eq!(ij.rtt_us(), 1000);
                } else {
                    assert!(ij.rtt_ms >= SAME_REGION_RTT_MS);
                }
            }
        }
    }

    #[test]
    fn measured_values_equal_the_csv() {
        let catalog = embedded();
        let rows = raw_rows();
        let mut measured = 0;
        for (a, b, rtt, stat, source, line) in &rows {
            let entry = catalog.rtt(a, b).unwrap();
            assert_eq!(entry.rtt_ms, *rtt, "{a} {b}");
            assert_eq!(
                entry.provenance,
                Provenance::Measured {
                    stat: stat.clone(),
                    source: source.clone(),
                    line: *line
                }
            );
            assert_eq!(catalog.rtt_ms(b, a), Some(*rtt));
            measured += 1;
        }
        // No pair is measured twice in the embedded data, so every row is in the matrix.
        let n = catalog.regions().len();
        let in_matrix = (0..n)
            .flat_map(|i| (i + 1..n).map(move |j| (i, j)))
            .filter(|&(i, j)| catalog.rtt_at(i, j).unwrap().is_measured())
            .count();
        assert_eq!(in_matrix, measured);
    }

    #[test]
    fn derived_values_are_labelled_and_above_the_fibre_bound() {
        let catalog = embedded();
        let n = catalog.regions().len();
        let mut derived = 0;
        for i in 0..n {
            for j in (i + 1)..n {
                let (a, b) = (&catalog.regions()[i], &catalog.regions()[j]);
                let entry = catalog.rtt_at(i, j).unwrap();
                let distance = great_circle_km(a, b);
                // Measured values are above the bound too: parse refuses any that is not.
                assert!(
                    entry.rtt_ms >= fibre_bound_ms(distance),
                    "{} {}",
                    a.id,
                    b.id
                );
                if let Provenance::Derived {
                    distance_km,
                    method,
                } = &entry.provenance
                {
                    derived += 1;
                    assert_eq!(*distance_km, distance);
                    let (value, expected) = catalog.model().derive(distance);
                    assert_eq!(entry.rtt_ms, value);
                    assert_eq!(*method, expected);
                    // The module docs say so: with a > 0 and b above the fibre slope the
                    // fit is always the largest candidate.
                    assert_eq!(*method, Derivation::GreatCircleFit);
                }
            }
        }
        assert_eq!(derived, 40 * 39 / 2 - 68);
    }

    #[test]
    fn derivation_picks_the_largest_candidate() {
        let model = RttModel {
            intercept_ms: -10.0,
            slope_ms_per_km: 0.012,
            pairs_len: 2,
            relative_error_median: 0.0,
            relative_error_max: 0.0,
        };
        // 0 km: fit -10, bound 0, floor 1.
        assert_eq!(model.derive(0.0), (1.0, Derivation::SameRegionFloor));
        // 2000 km: fit 14, bound 20.
        assert_eq!(model.derive(2000.0), (20.0, Derivation::FibreBound));
        // 20000 km: fit 230, bound 200.
        let (v, how) = model.derive(20_000.0);
        assert!((v - 230.0).abs() < 1e-9);
        assert_eq!(how, Derivation::GreatCircleFit);
    }

    #[test]
    fn embedded_model_constants() {
        let model = *embedded().model();
        println!(
            "great-circle fit over {} measured pairs: rtt_ms = {:.2} + {:.5} * km; \
             relative error median {:.1} %, max {:.0} %",
            model.pairs_len,
            model.intercept_ms,
            model.slope_ms_per_km,
            100.0 * model.relative_error_median,
            100.0 * model.relative_error_max,
        );
        assert_eq!(model.pairs_len, 68);
        // The values documented in the module docs and docs/sim.md; a data change that
        // moves them must update both.
        assert!((model.intercept_ms - 4.76).abs() < 0.005, "{model:?}");
        assert!(
            (model.slope_ms_per_km - 0.01571).abs() < 0.000005,
            "{model:?}"
        );
        assert!(
            (model.relative_error_median - 0.157).abs() < 0.0005,
            "{model:?}"
        );
        assert!((model.relative_error_max - 1.15).abs() < 0.005, "{model:?}");
        // The slope is physical: steeper than light in fibre.
        assert!(model.slope_ms_per_km > 2.0 / FIBRE_KM_PER_MS);
    }

    #[test]
    fn spot_checks_of_derived_pairs_are_plausible() {
        let catalog = embedded();
        // Two clouds in the same city are close; across the Atlantic is ~70-110 ms.
        let london = catalog.rtt("aws:eu-west-2", "azure:uksouth").unwrap();
        assert!(!london.is_measured());
        assert!(london.rtt_ms < 30.0, "{london:?}");
        let atlantic = catalog.rtt("azure:eastus2", "ibm:eu-gb").unwrap();
        assert!(!atlantic.is_measured());
        assert!((60.0..120.0).contains(&atlantic.rtt_ms), "{atlantic:?}");
    }

    #[test]
    fn great_circle_distances_are_right() {
        let catalog = embedded();
        let km = |a: &str, b: &str| {
            great_circle_km(catalog.region(a).unwrap(), catalog.region(b).unwrap())
        };
        // London - Frankfurt is about 640 km; Sydney - Sao Paulo about 13,400 km.
        assert!((km("aws:eu-west-2", "aws:eu-central-1") - 640.0).abs() < 15.0);
        assert!((km("aws:ap-southeast-2", "aws:sa-east-1") - 13_400.0).abs() < 150.0);
        assert_eq!(km("aws:us-east-1", "aws:us-east-1"), 0.0);
    }

    #[test]
    fn tiny_catalog_parses() {
        let catalog =
            RegionCatalog::parse(&csv("x:a,x:b,30,avg,T\ny:c,x:a,55,p95,T\n"), TINY_TOML).unwrap();
        assert_eq!(catalog.regions().len(), 3);
        assert_eq!(catalog.clouds(), ["x", "y"]);
        assert_eq!(catalog.rtt_ms("x:a", "y:c"), Some(55.0));
        let derived = catalog.rtt("x:b", "y:c").unwrap();
        assert!(matches!(derived.provenance, Provenance::Derived { .. }));
    }

    #[test]
    fn a_later_row_wins_in_either_direction() {
        let text = csv("x:a,x:b,30,avg,T\nx:a,y:c,55,p95,T\nx:b,x:a,33,p95,U\n");
        let catalog = RegionCatalog::parse(&text, TINY_TOML).unwrap();
        let entry = catalog.rtt("x:a", "x:b").unwrap();
        assert_eq!(entry.rtt_ms, 33.0);
        assert_eq!(
            entry.provenance,
            Provenance::Measured {
                stat: "p95".into(),
                source: "U".into(),
                line: 4
            }
        );
        assert_eq!(catalog.model().pairs_len, 2);
    }

    #[test]
    fn crlf_and_blank_lines_are_accepted() {
        let text = format!("{CSV_HEADER}\r\nx:a,x:b,30,avg,T\r\n\r\nx:a,y:c,55,p95,T\r\n");
        let catalog = RegionCatalog::parse(&text, TINY_TOML).unwrap();
        assert_eq!(catalog.rtt_ms("x:a", "x:b"), Some(30.0));
    }

    #[test]
    fn bad_csv_lines_name_line_and_field() {
        let cases: &[(&str, usize, &str, &str)] = &[
            ("x:a,x:b,30,avg\n", 2, "row", "has 4 fields, expected 5"),
            (
                "x:a,x:b,30,avg,T\nx:a,\"y:c\",55,p95,T\n",
                3,
                "region_b",
                "not a region id",
            ),
            (
                "x:a,x:z,30,avg,T\n",
                2,
                "region_b",
                "\"x:z\" has no entry in the regions TOML",
            ),
            ("X:A,x:b,30,avg,T\n", 2, "region_a", "not a region id"),
            (
                "x:a,x:a,30,avg,T\n",
                2,
                "region_b",
                "same region as region_a",
            ),
            (
                "x:a,x:b,thirty,avg,T\n",
                2,
                "rtt_ms",
                "\"thirty\" is not a number",
            ),
            ("x:a,x:b,-3,avg,T\n", 2, "rtt_ms", "must be > 0"),
            ("x:a,x:b,NaN,avg,T\n", 2, "rtt_ms", "must be > 0"),
            (
                "x:a,x:b,30000,avg,T\n",
                2,
                "rtt_ms",
                "over the limit RTT_MS_MAX = 1000",
            ),
            (
                "x:a,x:b,5,avg,T\n",
                2,
                "rtt_ms",
                "below the fibre bound 11.1 ms",
            ),
            ("x:a,x:b,30,,T\n", 2, "stat", "is empty"),
            (
                "x:a,x:b,30,avg,THIS-SOURCE-KEY-IS-FAR-TOO-LONG-TO-BE-A-KEY\n",
                2,
                "source",
                "over the limit LABEL_LEN_MAX = 32",
            ),
        ];
        for &(rows, line, field, reason) in cases {
            match csv_error(rows) {
                CatalogError::Csv {
                    line: l,
                    field: f,
                    reason: r,
                } => {
                    assert_eq!((l, f), (line, field), "{rows}: {r}");
                    assert!(r.contains(reason), "{rows}: {r:?} lacks {reason:?}");
                }
                other => panic!("{rows}: {other}"),
            }
        }
    }

    #[test]
    fn csv_error_display_names_line_and_field() {
        let e = csv_error("x:a,x:b,30,avg,T\nx:a,y:c,-1,avg,T\n");
        assert_eq!(e.to_string(), "RTT CSV line 3, rtt_ms: is -1, must be > 0");
    }

    #[test]
    fn wrong_header_is_refused() {
        let e =
            RegionCatalog::parse("a,b,rtt,stat,source\nx:a,x:b,30,avg,T\n", TINY_TOML).unwrap_err();
        assert!(
            matches!(
                e,
                CatalogError::Csv {
                    line: 1,
                    field: "header",
                    ..
                }
            ),
            "{e}"
        );
        let e = RegionCatalog::parse("", TINY_TOML).unwrap_err();
        assert!(
            matches!(
                e,
                CatalogError::Csv {
                    line: 1,
                    field: "header",
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn too_few_measurements_cannot_fit() {
        let e = RegionCatalog::parse(&csv("x:a,x:b,30,avg,T\n"), TINY_TOML).unwrap_err();
        assert_eq!(
            e.to_string(),
            "cannot fit the great-circle RTT model: 1 measured pairs; at least 2 are needed"
        );
        // Farther regions measured as faster give a negative slope.
        let e = RegionCatalog::parse(&csv("x:a,x:b,300,avg,T\nx:a,y:c,30,avg,T\n"), TINY_TOML)
            .unwrap_err();
        assert!(e.to_string().contains("RTT must grow with distance"), "{e}");
    }

    #[test]
    fn bad_toml_names_path_and_line() {
        let rows = csv("x:a,x:b,30,avg,T\nx:a,y:c,55,p95,T\n");
        let with = |from: &str, to: &str| {
            let toml = TINY_TOML.replacen(from, to, 1);
            assert_ne!(toml, TINY_TOML, "{from}");
            RegionCatalog::parse(&rows, &toml).unwrap_err().to_string()
        };
        assert_eq!(
            with("lat_deg = 10.0", "lat_deg = 100.0"),
            "regions TOML line 9, regions.\"x:b\".lat_deg: is 100, must be within -90..=90"
        );
        assert_eq!(
            with(
                "lon_deg = 0.0\njurisdiction = \"US\"",
                "lon_deg = 181\njurisdiction = \"US\""
            ),
            "regions TOML line 16, regions.\"y:c\".lon_deg: is 181, must be within -180..=180"
        );
        assert_eq!(
            with("cloud = \"y\"", "cloud = \"z\""),
            "regions TOML line 16, regions.\"y:c\".cloud: is \"z\" but the id's prefix is \"y\"; \
             they must agree"
        );
        assert!(
            with("jurisdiction = \"US\"", "jurisdiction = \"us\"")
                .starts_with("regions TOML line 16, regions.\"y:c\".jurisdiction: \"us\" is not")
        );
        assert_eq!(
            with("[regions.\"y:c\"]", "[regions.\"Y c\"]"),
            "regions TOML line 16, regions.\"Y c\": \"Y c\" is not a region id (cloud:name, \
             e.g. aws:us-east-1)"
        );
        assert_eq!(
            with("location = \"B\"", "location = \"B\"\ncolour = \"red\""),
            "regions TOML regions.\"x:b\".colour: unknown field `colour`, expected one of `cloud`, \
             `location`, `lat_deg`, `lon_deg`, `jurisdiction` (line 12, column 1)"
        );
        assert_eq!(
            with("lat_deg = 10.0", "lat_deg = \"ten\""),
            "regions TOML regions.\"x:b\".lat_deg: invalid type: string \"ten\", expected f64 \
             (line 12, column 11)"
        );
        let syntax = with("[regions.\"x:b\"]", "[regions.\"x:b\"");
        assert!(syntax.starts_with("regions TOML document: "), "{syntax}");
        assert!(syntax.ends_with("(line 9, column 15)"), "{syntax}");
        let missing = with("location = \"C\"\n", "");
        assert!(missing.contains("missing field `location`"), "{missing}");
    }

    #[test]
    fn csv_region_missing_from_toml_is_refused() {
        let e = RegionCatalog::parse(&csv("x:a,x:b,30,avg,T\nx:a,q:q,55,p95,T\n"), TINY_TOML)
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "RTT CSV line 3, region_b: region \"q:q\" has no entry in the regions TOML"
        );
    }

    #[test]
    fn region_id_grammar() {
        for ok in ["aws:us-east-1", "x:a", "ibm2:0-b"] {
            assert!(check_region_id(ok).is_ok(), "{ok}");
        }
        let long = format!("x:{}", "a".repeat(REGION_ID_LEN_MAX));
        for bad in [
            "", "aws", ":x", "aws:", "Aws:x", "aws:-x", "aws:x_y", "1aws:x", "a:b:c",
        ] {
            assert!(check_region_id(bad).is_err(), "{bad}");
        }
        assert!(
            check_region_id(&long)
                .unwrap_err()
                .contains("REGION_ID_LEN_MAX")
        );
    }
}
