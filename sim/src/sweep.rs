//! `weft-sim sweep`: one scenario over a range of seeds, the way TigerBeetle's VOPR runs
//! seed after seed, so that a rare interleaving shows up as a failing seed with the command
//! that reproduces it.
//!
//! Each seed runs in a child process (`weft-sim run SCENARIO --seed N --no-baselines --json
//! FILE`): a panic aborts the `sim` profile's process, and a sweep must survive one seed's
//! crash and go on with the others. This module holds what does not spawn anything: the
//! seed range, the outcome of one seed read from its JSON report, and the summary; the
//! binary (`main.rs`) runs the children.

use serde::Serialize;

/// Most seeds one sweep runs.
pub const SWEEP_SEEDS_MAX: u64 = 100_000;
/// Most bytes of a crashed child's standard error kept for the summary (its end: the panic
/// message and the reproduce line are there).
pub const STDERR_TAIL_MAX: usize = 2_000;

/// An inclusive range of master seeds: `FIRST..LAST`, or one seed `N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seeds {
    /// The first seed run.
    pub first: u64,
    /// The last seed run (inclusive).
    pub last: u64,
}

impl Seeds {
    /// How many seeds the range holds.
    pub fn count(&self) -> u64 {
        // At most SWEEP_SEEDS_MAX for a parsed range; saturating for one built by hand
        // over the whole of u64.
        (self.last - self.first).saturating_add(1)
    }
}

impl std::str::FromStr for Seeds {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let number = |part: &str| {
            part.trim()
                .parse::<u64>()
                .map_err(|_| format!("expected FIRST..LAST (both included) or one seed, got {s:?}"))
        };
        let (first, last) = match s.split_once("..") {
            Some((a, b)) => (number(a)?, number(b.strip_prefix('=').unwrap_or(b))?),
            None => {
                let n = number(s)?;
                (n, n)
            }
        };
        if last < first {
            return Err(format!("the last seed {last} is below the first {first}"));
        }
        // Compared before adding one: 0..u64::MAX holds one seed more than u64 counts.
        if last - first >= SWEEP_SEEDS_MAX {
            return Err(format!(
                "{first}..{last} is {} seeds; a sweep runs at most {SWEEP_SEEDS_MAX}",
                u128::from(last - first) + 1
            ));
        }
        Ok(Self { first, last })
    }
}

/// Weft's figures of one seed's run, from its JSON report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Figures {
    /// Delivery latency p99, ms.
    pub p99_ms: f64,
    /// Largest delivery latency, ms.
    pub max_ms: f64,
    /// Time from the last heal (or the end of the workload) until every live interested
    /// node held every event, ms; `None` if it never converged.
    pub convergence_ms: Option<f64>,
    /// (event, node) pairs missed at the end.
    pub missed: u64,
    /// Events delivered twice to an application.
    pub duplicates: u64,
    /// Relative message redundancy.
    pub rmr: f64,
}

/// How one seed ended.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Outcome {
    /// Every check held.
    Passed {
        /// Weft's figures.
        figures: Figures,
    },
    /// The run ended and at least one check failed.
    Failed {
        /// Weft's figures.
        figures: Figures,
        /// Each failed check: its name and detail.
        failed_checks: Vec<String>,
    },
    /// The run did not end with a report: a panic (a broken node invariant aborts the
    /// process), a signal, or an error.
    Crashed {
        /// How the child process ended.
        status: String,
        /// The end of its standard error.
        stderr_tail: String,
    },
}

impl Outcome {
    /// Reads a seed's outcome from the JSON report its run wrote.
    pub fn from_report(json: &str) -> Result<Self, String> {
        let v: serde_json::Value =
            serde_json::from_str(json).map_err(|e| format!("the report is not JSON: {e}"))?;
        let weft = v["strategies"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["strategy"] == "weft"))
            .ok_or("the report has no weft strategy")?;
        let number = |value: &serde_json::Value, what: &str| {
            value
                .as_f64()
                .ok_or_else(|| format!("the report has no number at {what}"))
        };
        let count = |value: &serde_json::Value, what: &str| {
            value
                .as_u64()
                .ok_or_else(|| format!("the report has no count at {what}"))
        };
        let figures = Figures {
            p99_ms: number(&weft["latency_ms"]["p99"], "latency_ms.p99")?,
            max_ms: number(&weft["latency_ms"]["max"], "latency_ms.max")?,
            convergence_ms: weft["convergence_ms"].as_f64(),
            missed: count(&weft["missed"], "missed")?,
            duplicates: count(&weft["duplicates"], "duplicates")?,
            rmr: number(&weft["rmr"], "rmr")?,
        };
        let checks = v["checks"].as_array().ok_or("the report has no checks")?;
        let failed_checks: Vec<String> = checks
            .iter()
            .filter(|c| c["passed"] == false)
            .map(|c| {
                format!(
                    "{}: {}",
                    c["name"].as_str().unwrap_or("?"),
                    c["detail"].as_str().unwrap_or("")
                )
            })
            .collect();
        Ok(if failed_checks.is_empty() {
            Outcome::Passed { figures }
        } else {
            Outcome::Failed {
                figures,
                failed_checks,
            }
        })
    }

    /// Weft's figures, if the run ended with a report.
    pub fn figures(&self) -> Option<&Figures> {
        match self {
            Outcome::Passed { figures } | Outcome::Failed { figures, .. } => Some(figures),
            Outcome::Crashed { .. } => None,
        }
    }

    /// One word for the table.
    pub fn word(&self) -> &'static str {
        match self {
            Outcome::Passed { .. } => "ok",
            Outcome::Failed { .. } => "FAILED",
            Outcome::Crashed { .. } => "CRASHED",
        }
    }
}

/// The end of `text`, at most [`STDERR_TAIL_MAX`] bytes, cut at a character boundary.
pub fn tail(text: &str) -> String {
    let mut from = text.len().saturating_sub(STDERR_TAIL_MAX);
    while !text.is_char_boundary(from) {
        from += 1;
    }
    text[from..].trim().to_string()
}

/// A figure of a seed's run that the summary spreads over seeds.
type Key = fn(&Figures) -> Option<f64>;

/// One seed's row of a sweep.
#[derive(Debug, Clone, Serialize)]
pub struct SeedRun {
    /// The master seed.
    pub seed: u64,
    /// Its wall-clock time, seconds.
    pub wall_s: f64,
    /// How it ended.
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// A whole sweep, as `--json` writes it.
#[derive(Debug, Clone, Serialize)]
pub struct Sweep {
    /// The scenario file.
    pub scenario: String,
    /// The first seed.
    pub first_seed: u64,
    /// Last seed (inclusive).
    pub last_seed: u64,
    /// Seeds whose every check held.
    pub passed: u64,
    /// Seeds with a failed check.
    pub failed: u64,
    /// Seeds that ended without a report.
    pub crashed: u64,
    /// Every seed, in order.
    pub runs: Vec<SeedRun>,
}

impl Sweep {
    /// The sweep of `runs` (any order; kept sorted by seed).
    pub fn new(scenario: String, seeds: Seeds, mut runs: Vec<SeedRun>) -> Self {
        runs.sort_by_key(|r| r.seed);
        let of = |w: &str| runs.iter().filter(|r| r.outcome.word() == w).count() as u64;
        Self {
            scenario,
            first_seed: seeds.first,
            last_seed: seeds.last,
            passed: of("ok"),
            failed: of("FAILED"),
            crashed: of("CRASHED"),
            runs,
        }
    }

    /// Every seed passed.
    pub fn all_passed(&self) -> bool {
        self.failed == 0 && self.crashed == 0
    }

    /// The terminal table: [`Sweep::header`], a [`Sweep::row`] per seed, then
    /// [`Sweep::summary`]. The binary prints the same in three parts, each row as soon as
    /// it and every seed before it have run.
    pub fn table(&self) -> String {
        let mut out = Self::header();
        for r in &self.runs {
            out.push_str(&Self::row(r));
        }
        out.push_str(&self.summary());
        out
    }

    /// The table's header line.
    pub fn header() -> String {
        format!(
            "{:>10}  {:<7} {:>9} {:>10} {:>12} {:>7} {:>5} {:>6} {:>7}\n",
            "seed", "result", "p99 ms", "max ms", "converge ms", "missed", "dups", "RMR", "wall s"
        )
    }

    /// One seed's line of the table.
    pub fn row(r: &SeedRun) -> String {
        match r.outcome.figures() {
            Some(f) => {
                let converge = f
                    .convergence_ms
                    .map_or_else(|| "never".to_string(), |c| format!("{c:.1}"));
                format!(
                    "{:>10}  {:<7} {:>9.1} {:>10.1} {:>12} {:>7} {:>5} {:>6.3} {:>7.2}\n",
                    r.seed,
                    r.outcome.word(),
                    f.p99_ms,
                    f.max_ms,
                    converge,
                    f.missed,
                    f.duplicates,
                    f.rmr,
                    r.wall_s
                )
            }
            None => format!(
                "{:>10}  {:<7} {:>62.2}\n",
                r.seed,
                r.outcome.word(),
                r.wall_s
            ),
        }
    }

    /// What follows the rows: the counts, the spread over seeds, then what failed and the
    /// command that reproduces each failing seed.
    pub fn summary(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let total = self.runs.len();
        let _ = writeln!(
            out,
            "{total} seeds: {} passed, {} failed a check, {} crashed",
            self.passed, self.failed, self.crashed
        );
        let worst = |key: Key| {
            self.runs
                .iter()
                .filter_map(|r| Some((key(r.outcome.figures()?)?, r.seed)))
                .max_by(|a, b| a.0.total_cmp(&b.0).then(b.1.cmp(&a.1)))
        };
        let median = |key: Key| {
            let mut v: Vec<f64> = self
                .runs
                .iter()
                .filter_map(|r| key(r.outcome.figures()?))
                .collect();
            v.sort_by(f64::total_cmp);
            v.get(v.len() / 2).copied()
        };
        let spread: [(&str, Key); 3] = [
            ("p99 ms", |f| Some(f.p99_ms)),
            ("max ms", |f| Some(f.max_ms)),
            ("converge ms", |f| f.convergence_ms),
        ];
        for (name, key) in spread {
            if let (Some(m), Some((w, seed))) = (median(key), worst(key)) {
                let _ = writeln!(
                    out,
                    "  {name:<12} median {m:.1}, worst {w:.1} (seed {seed})"
                );
            }
        }
        for r in &self.runs {
            match &r.outcome {
                Outcome::Passed { .. } => continue,
                Outcome::Failed { failed_checks, .. } => {
                    for c in failed_checks {
                        let _ = writeln!(out, "seed {}: CHECK FAILED: {c}", r.seed);
                    }
                }
                Outcome::Crashed {
                    status,
                    stderr_tail,
                } => {
                    let _ = writeln!(out, "seed {}: CRASHED ({status})", r.seed);
                    for line in stderr_tail.lines() {
                        let _ = writeln!(out, "  | {line}");
                    }
                }
            }
            let _ = writeln!(
                out,
                "seed {}: reproduce with: weft-sim run {} --seed {}",
                r.seed, self.scenario, r.seed
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_ranges_parse_inclusive_and_refuse_what_they_cannot_run() {
        assert_eq!("3..7".parse(), Ok(Seeds { first: 3, last: 7 }));
        assert_eq!("3..=7".parse(), Ok(Seeds { first: 3, last: 7 }));
        assert_eq!(
            "42".parse(),
            Ok(Seeds {
                first: 42,
                last: 42
            })
        );
        assert_eq!(Seeds { first: 3, last: 7 }.count(), 5);
        assert!(
            "7..3"
                .parse::<Seeds>()
                .unwrap_err()
                .contains("below the first")
        );
        assert!("a..3".parse::<Seeds>().unwrap_err().contains("FIRST..LAST"));
        assert!("".parse::<Seeds>().is_err());
        let too_many = format!("1..{}", SWEEP_SEEDS_MAX + 1);
        assert!(
            too_many
                .parse::<Seeds>()
                .unwrap_err()
                .contains(&SWEEP_SEEDS_MAX.to_string())
        );
        let most = format!("1..{SWEEP_SEEDS_MAX}");
        assert!(most.parse::<Seeds>().is_ok());
        // The whole of u64 is too many, not zero seeds (the count would wrap).
        let all = format!("0..{}", u64::MAX);
        assert!(
            all.parse::<Seeds>()
                .unwrap_err()
                .contains("18446744073709551616 seeds")
        );
        let top = format!("{}..{}", u64::MAX - 1, u64::MAX);
        assert_eq!(top.parse::<Seeds>().map(|s| s.count()), Ok(2));
    }

    fn report(passed: bool) -> String {
        serde_json::json!({
            "strategies": [
                {"strategy": "weft", "latency_ms": {"p99": 90.5, "max": 120.0},
                 "convergence_ms": 71.8, "missed": 0, "duplicates": 0, "rmr": 0.166}
            ],
            "checks": [
                {"name": "missed = 0 after faults heal", "passed": true, "detail": "0 pairs"},
                {"name": "RMR", "passed": passed, "detail": "0.166 (bound 0.1)"}
            ]
        })
        .to_string()
    }

    #[test]
    fn an_outcome_is_read_from_the_report_and_names_each_failed_check() {
        let ok = Outcome::from_report(&report(true)).unwrap();
        assert_eq!(ok.word(), "ok");
        let f = ok.figures().unwrap();
        assert_eq!(
            (f.p99_ms, f.convergence_ms, f.rmr),
            (90.5, Some(71.8), 0.166)
        );
        match Outcome::from_report(&report(false)).unwrap() {
            Outcome::Failed { failed_checks, .. } => {
                assert_eq!(failed_checks, vec!["RMR: 0.166 (bound 0.1)".to_string()]);
            }
            other => panic!("expected a failure, got {other:?}"),
        }
        assert!(Outcome::from_report("{}").unwrap_err().contains("weft"));
        assert!(Outcome::from_report("not json").is_err());
    }

    #[test]
    fn the_summary_counts_each_result_and_prints_how_to_reproduce_each_failure() {
        let seeds = Seeds { first: 1, last: 3 };
        let runs = vec![
            SeedRun {
                seed: 3,
                wall_s: 0.1,
                outcome: Outcome::Crashed {
                    status: "signal 6".into(),
                    stderr_tail: "panicked at node.rs".into(),
                },
            },
            SeedRun {
                seed: 1,
                wall_s: 0.1,
                outcome: Outcome::from_report(&report(true)).unwrap(),
            },
            SeedRun {
                seed: 2,
                wall_s: 0.1,
                outcome: Outcome::from_report(&report(false)).unwrap(),
            },
        ];
        let sweep = Sweep::new("s.toml".into(), seeds, runs);
        assert_eq!((sweep.passed, sweep.failed, sweep.crashed), (1, 1, 1));
        assert!(!sweep.all_passed());
        assert_eq!(
            sweep.runs.iter().map(|r| r.seed).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        let table = sweep.table();
        // A crashed row's wall time sits under the header's.
        let header = table.lines().next().unwrap();
        let crashed = table.lines().find(|l| l.contains("CRASHED")).unwrap();
        assert_eq!(header.len(), crashed.len(), "{header}\n{crashed}");
        assert!(table.contains("3 seeds: 1 passed, 1 failed a check, 1 crashed"));
        assert!(table.contains("seed 2: CHECK FAILED: RMR: 0.166 (bound 0.1)"));
        assert!(table.contains("seed 2: reproduce with: weft-sim run s.toml --seed 2"));
        assert!(table.contains("seed 3: CRASHED (signal 6)"));
        assert!(table.contains("  | panicked at node.rs"));
        assert!(table.contains("seed 3: reproduce with: weft-sim run s.toml --seed 3"));
        assert!(!table.contains("seed 1: reproduce"));
        let json = serde_json::to_value(&sweep).unwrap();
        assert_eq!(json["runs"][0]["result"], "passed");
        assert_eq!(json["runs"][2]["result"], "crashed");
    }

    #[test]
    fn a_tail_keeps_the_end_at_a_character_boundary() {
        let long = format!("{}é end", "x".repeat(STDERR_TAIL_MAX));
        let t = tail(&long);
        assert!(t.ends_with("é end") && t.len() <= STDERR_TAIL_MAX);
        assert_eq!(tail("short\n"), "short");
    }
}
