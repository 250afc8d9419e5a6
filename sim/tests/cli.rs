//! The `weft-sim` binary as a user runs it: exit statuses (0 all checks hold, 1 a check
//! failed and the seed to reproduce is printed, 2 a bad scenario or output path), the
//! outputs it writes, and a bad output path refused before the simulation runs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A short run: eight nodes in four regions, 20 simulated seconds.
const SCENARIO: &str = r#"
name = "cli-test"
description = "test"
duration_s = 20
seed = 7

[topology]
regions = [
  { region = "aws:us-east-1", nodes = 2 },
  { region = "aws:eu-west-1", nodes = 2 },
  { region = "azure:westeurope", nodes = 2 },
  { region = "gcp:asia-south1", nodes = 2 },
]

[network]
jitter_ms = 1.0
loss = 0.0
verify_us = 60

[[workload]]
stream = "t.events"
rate_per_s = 10
payload_bytes = 64
start_s = 3
stop_s = 8

[checks]
converge_within_s = 10
"#;

/// A fresh directory for one test (removed first if an earlier run left it).
fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("weft-sim-cli-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write_scenario(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("scenario.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn weft_sim(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_weft-sim"))
        .args(args)
        .output()
        .expect("weft-sim runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn a_passing_run_exits_0_and_writes_its_reports() {
    let dir = scratch("pass");
    let scenario = write_scenario(&dir, SCENARIO);
    let json = dir.join("report.json");
    let html = dir.join("html");
    let out = weft_sim(&[
        "run",
        scenario.to_str().unwrap(),
        "--no-baselines",
        "--json",
        json.to_str().unwrap(),
        "--html",
        html.to_str().unwrap(),
    ]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("all checks passed (seed 7)"), "{stdout}");
    assert!(
        stdout.contains("simulated message deliveries in"),
        "{stdout}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["seed"], 7, "{report}");
    assert!(html.join("index.html").is_file());
    let _ = std::fs::remove_dir_all(&dir);
}

/// The binary replaces itself with a run that keeps mimalloc's freed memory
/// (`weft_sim::allocator`), unless the environment sets the purge delay already.
#[test]
fn the_run_keeps_freed_memory_unless_told_otherwise() {
    let dir = scratch("purge");
    let scenario = write_scenario(&dir, SCENARIO);
    let run = |delay: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_weft-sim"));
        cmd.args(["run", scenario.to_str().unwrap(), "--no-baselines"]);
        cmd.env_remove("MIMALLOC_PURGE_DELAY");
        if let Some(v) = delay {
            cmd.env("MIMALLOC_PURGE_DELAY", v);
        }
        let out = cmd.output().expect("weft-sim runs");
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        text(&out.stdout)
    };
    let stdout = run(None);
    assert!(
        stdout.contains("allocator: mimalloc, freed memory kept, "),
        "{stdout}"
    );
    let stdout = run(Some("25"));
    assert!(
        stdout.contains("allocator: mimalloc, purge delay 25, "),
        "{stdout}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_failed_check_exits_1_and_prints_the_seed_to_reproduce() {
    let dir = scratch("fail");
    // Stretch is at least 1 by definition (no delivery beats the shortest path) and jitter
    // alone puts some deliveries above it: a bound of exactly 1 fails.
    let scenario = write_scenario(
        &dir,
        &SCENARIO.replace(
            "converge_within_s = 10",
            "converge_within_s = 10\nstretch_p99_max = 1.0",
        ),
    );
    let out = weft_sim(&[
        "run",
        scenario.to_str().unwrap(),
        "--no-baselines",
        "--seed",
        "31",
    ]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("CHECK FAILED: stretch p99"), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "reproduce with: weft-sim run {} --seed 31",
            scenario.display()
        )),
        "{stdout}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A panic during a run (a broken node invariant panics) still names the run and prints
/// the command that reproduces it, after the panic's message, and exits non-zero.
#[test]
fn a_panic_in_a_run_prints_the_seed_to_reproduce() {
    let dir = scratch("panic");
    let scenario = write_scenario(&dir, SCENARIO);
    let out = Command::new(env!("CARGO_BIN_EXE_weft-sim"))
        .args(["run", scenario.to_str().unwrap(), "--seed", "11"])
        .env("WEFT_SIM_TEST_PANIC", "1")
        .output()
        .expect("weft-sim runs");
    assert!(!out.status.success(), "{:?}", out.status);
    let err = text(&out.stderr);
    assert!(err.contains("WEFT_SIM_TEST_PANIC is set"), "{err}");
    let repro = format!(
        "reproduce with: weft-sim run {} --seed 11",
        scenario.display()
    );
    assert!(err.contains(&repro), "{err}");
    assert!(err.contains("the weft run stopped on a panic"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_bad_output_path_is_refused_before_the_run() {
    let dir = scratch("badpath");
    let scenario = write_scenario(&dir, SCENARIO);
    let json = dir.join("no-such-dir").join("report.json");
    let out = weft_sim(&[
        "run",
        scenario.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
    ]);
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stdout}{stderr}");
    assert!(
        stderr.contains(&format!("opening {} for the JSON report", json.display())),
        "{stderr}"
    );
    // Refused up front: nothing was simulated.
    assert!(!stdout.contains("simulated message deliveries"), "{stdout}");

    // An HTML directory that cannot be created (a file stands in its way): the same.
    let blocker = dir.join("blocker");
    std::fs::write(&blocker, "").unwrap();
    let html = blocker.join("html");
    let out = weft_sim(&[
        "run",
        scenario.to_str().unwrap(),
        "--html",
        html.to_str().unwrap(),
    ]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("creating {} for the HTML report", html.display())),
        "{stderr}"
    );
    assert!(!text(&out.stdout).contains("simulated message deliveries"));

    // `--html` naming a file: said plainly (it gave "File exists (os error 17)").
    let out = weft_sim(&[
        "run",
        scenario.to_str().unwrap(),
        "--html",
        blocker.to_str().unwrap(),
    ]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "--html {}: is a file, not a directory",
            blocker.display()
        )),
        "{stderr}"
    );
    assert!(!text(&out.stdout).contains("simulated message deliveries"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--json` to a device or a pipe: `/dev/stdout` gets the report (it was refused with
/// "Invalid argument": a device cannot be truncated or synced), and a device that takes
/// nothing (`/dev/full`) gives an error that says which report was lost and why.
#[test]
fn a_json_report_to_a_device_is_written_or_its_loss_said_plainly() {
    let dir = scratch("jsondev");
    let scenario = write_scenario(&dir, SCENARIO);
    let out = weft_sim(&[
        "run",
        scenario.to_str().unwrap(),
        "--no-baselines",
        "--json",
        "/dev/stdout",
    ]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("\"scenario\": \"cli-test\""), "{stdout}");
    if Path::new("/dev/full").exists() {
        let out = weft_sim(&[
            "run",
            scenario.to_str().unwrap(),
            "--no-baselines",
            "--json",
            "/dev/full",
        ]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains("writing /dev/full: the JSON report (")
                && stderr.contains("bytes) was not written whole"),
            "{stderr}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_bad_scenario_exits_2_naming_the_field() {
    let dir = scratch("badscenario");
    let scenario = write_scenario(
        &dir,
        &SCENARIO.replace("rate_per_s = 10", "rate_per_s = -1"),
    );
    let out = weft_sim(&["run", scenario.to_str().unwrap()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("rate_per_s"), "{stderr}");

    // `list` shows it as invalid beside the valid ones instead of failing.
    std::fs::write(dir.join("good.toml"), SCENARIO).unwrap();
    let out = weft_sim(&["list", "--dir", dir.to_str().unwrap()]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("good.toml") && stdout.contains("8 nodes"),
        "{stdout}"
    );
    assert!(
        stdout.contains("scenario.toml") && stdout.contains("INVALID"),
        "{stdout}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `weft-sim sweep` runs every seed of the range (in processes of their own), lists each,
/// and exits 0 when every check of every seed held; its JSON summary has a run per seed.
#[test]
fn a_sweep_runs_every_seed_and_exits_0_when_all_pass() {
    let dir = scratch("sweep");
    let scenario = write_scenario(&dir, SCENARIO);
    let summary = dir.join("sweep.json");
    let out = weft_sim(&[
        "sweep",
        scenario.to_str().unwrap(),
        "--seeds",
        "4..6",
        "--jobs",
        "2",
        "--json",
        summary.to_str().unwrap(),
    ]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains("3 seeds: 3 passed, 0 failed a check, 0 crashed"),
        "{stdout}"
    );
    assert!(!stdout.contains("reproduce with"), "{stdout}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
    let seeds: Vec<u64> = json["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(r["result"], "passed", "{r}");
            assert_eq!(r["figures"]["missed"], 0, "{r}");
            r["seed"].as_u64().unwrap()
        })
        .collect();
    assert_eq!(seeds, [4, 5, 6]);
    // Each seed is the run `weft-sim run --seed N` makes: the same figures.
    let single = dir.join("single.json");
    let out = weft_sim(&[
        "run",
        scenario.to_str().unwrap(),
        "--no-baselines",
        "--seed",
        "5",
        "--json",
        single.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let single: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&single).unwrap()).unwrap();
    assert_eq!(
        json["runs"][1]["figures"]["p99_ms"],
        single["strategies"][0]["latency_ms"]["p99"]
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A sweep of `scenario` over seeds 1..400, one at a time, with its standard output and
/// error piped and its scratch directory in `dir` (the caller stops it or lets it end).
fn long_sweep(dir: &Path, scenario: &Path, extra: &[&str]) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_weft-sim"))
        .args([
            "sweep",
            scenario.to_str().unwrap(),
            "--seeds",
            "1..400",
            "--jobs",
            "1",
        ])
        .args(extra)
        .env("TMPDIR", dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("weft-sim runs")
}

/// A sweep prints each seed's row as soon as it and the seeds before it have run, not all
/// at the end: the first row is readable while later seeds still run, and a sweep stopped
/// then keeps it. Bounded: 400 seeds of a short scenario at one a time, killed after the
/// first row (or when the sweep ends by itself); its scratch directory is in the test's.
#[test]
fn a_sweep_prints_each_row_while_later_seeds_still_run() {
    use std::io::BufRead as _;
    let dir = scratch("sweepstream");
    let scenario = write_scenario(&dir, SCENARIO);
    let mut child = long_sweep(&dir, &scenario, &[]);
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    let first_row = loop {
        let line = lines
            .next()
            .expect("a row before the end of the output")
            .unwrap();
        seen.push(line.clone());
        if line.trim_start().starts_with("1 ") {
            break line;
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    // What the sweep printed before it was stopped: never its end (all 400 seeds run and
    // the summary written, as when the table came only at the end).
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(first_row.contains(" ok "), "{seen:?}");
    assert!(
        seen.iter().any(|l| l.contains("converge ms")),
        "header first: {seen:?}"
    );
    assert!(
        !rest.iter().any(|l| l.contains("seeds in")),
        "the first seed's row came only when the sweep ended: {rest:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A sweep whose reader goes away (`weft-sim sweep ... | head`) stops handing out seeds:
/// it ends by itself soon after, exits 1, says so on standard error, and leaves no JSON
/// summary of a range it did not run. Bounded: 400 seeds, waited for at most 120 s.
#[test]
fn a_sweep_stops_when_its_reader_goes_away() {
    use std::io::BufRead as _;
    let dir = scratch("sweepreader");
    let scenario = write_scenario(&dir, SCENARIO);
    let json = dir.join("sweep.json");
    let mut child = long_sweep(&dir, &scenario, &["--json", json.to_str().unwrap()]);
    {
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let first_row = lines.find(|l| l.as_ref().is_ok_and(|l| l.trim_start().starts_with("1 ")));
        assert!(first_row.is_some(), "no row for seed 1");
    } // the reader goes away
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > std::time::Duration::from_secs(120) {
            let _ = child.kill();
            panic!("the sweep ran on after its reader went away");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("standard output closed after"), "{stderr}");
    assert!(stderr.contains("of 400 seeds; stopped"), "{stderr}");
    assert!(!json.exists(), "a summary of a range not run");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A failed check in any seed makes the sweep exit 1 and name the seed, the check and the
/// command that reproduces it.
#[test]
fn a_sweep_names_each_failing_seed_with_its_reproduce_command() {
    let dir = scratch("sweepfail");
    let scenario = write_scenario(
        &dir,
        &SCENARIO.replace(
            "converge_within_s = 10",
            "converge_within_s = 10\nstretch_p99_max = 1.0",
        ),
    );
    let out = weft_sim(&["sweep", scenario.to_str().unwrap(), "--seeds", "8..9"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains("2 seeds: 0 passed, 2 failed a check"),
        "{stdout}"
    );
    for seed in [8, 9] {
        assert!(
            stdout.contains(&format!("seed {seed}: CHECK FAILED: stretch p99")),
            "{stdout}"
        );
        assert!(
            stdout.contains(&format!(
                "seed {seed}: reproduce with: weft-sim run {} --seed {seed}",
                scenario.display()
            )),
            "{stdout}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A seed whose run panics (the `sim` profile aborts) does not end the sweep: it is listed
/// as crashed with the end of its standard error, and the sweep exits 1.
#[test]
fn a_sweep_survives_a_crashing_seed() {
    let dir = scratch("sweepcrash");
    let scenario = write_scenario(&dir, SCENARIO);
    let out = Command::new(env!("CARGO_BIN_EXE_weft-sim"))
        .args(["sweep", scenario.to_str().unwrap(), "--seeds", "2..3"])
        .env("WEFT_SIM_TEST_PANIC", "1")
        .output()
        .expect("weft-sim runs");
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains("0 passed, 0 failed a check, 2 crashed"),
        "{stdout}"
    );
    assert!(stdout.contains("seed 2: CRASHED"), "{stdout}");
    assert!(stdout.contains("| WEFT_SIM_TEST_PANIC is set"), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "seed 3: reproduce with: weft-sim run {} --seed 3",
            scenario.display()
        )),
        "{stdout}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_sweep_refuses_a_bad_seed_range_or_scenario_before_running() {
    let dir = scratch("sweepbad");
    let scenario = write_scenario(&dir, SCENARIO);
    let out = weft_sim(&["sweep", scenario.to_str().unwrap(), "--seeds", "9..3"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("the last seed 3 is below the first 9"),
        "{}",
        text(&out.stderr)
    );
    let bad = write_scenario(&dir, "name = 1");
    let out = weft_sim(&["sweep", bad.to_str().unwrap(), "--seeds", "1..2"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stdout).is_empty(), "nothing ran");
    let _ = std::fs::remove_dir_all(&dir);
}
