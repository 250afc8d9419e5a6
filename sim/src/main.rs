//! `weft-sim`: run a scenario of the Weft mesh (and baselines beside it) in the
//! deterministic simulator, print a summary, write a JSON report, and exit non-zero when a
//! check fails (printing the seed that reproduces it).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::{Parser, Subcommand};
use weft_sim::catalog::RegionCatalog;
use weft_sim::engine::{Engine, Strategy};
use weft_sim::report::{Report, StrategyReport};
use weft_sim::scenario::{Baseline, Scenario};

/// mimalloc instead of the system allocator: the simulator allocates and frees small objects
/// at a high rate (see the comment on the dependency in the workspace `Cargo.toml`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

thread_local! {
    /// What the command prints, written once at the end so that a closed pipe
    /// (`weft-sim run ... | head`) ends the program quietly instead of panicking.
    static OUTPUT: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// Appends formatted text to the output buffer.
macro_rules! out {
    ($($arg:tt)*) => {
        OUTPUT.with(|o| {
            use std::fmt::Write as _;
            // Writing to a String cannot fail.
            let _ = write!(o.borrow_mut(), $($arg)*);
        })
    };
}

/// Appends a line to the output buffer.
macro_rules! outln {
    ($($arg:tt)*) => {
        OUTPUT.with(|o| {
            use std::fmt::Write as _;
            let _ = writeln!(o.borrow_mut(), $($arg)*);
        })
    };
}

/// Writes the buffered output; a reader that went away is not an error.
fn flush_output() -> std::io::Result<()> {
    let text = OUTPUT.with(|o| std::mem::take(&mut *o.borrow_mut()));
    write_stdout(&text)
}

/// Writes `text` to standard output now; a reader that went away is not an error.
fn write_stdout(text: &str) -> std::io::Result<()> {
    match write_stdout_raw(text) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// Writes `text` to standard output now.
fn write_stdout_raw(text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
}

#[derive(Parser)]
#[command(
    name = "weft-sim",
    version,
    about = "Deterministic simulator of the Weft mesh"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a scenario file.
    Run {
        /// The scenario (TOML); see docs/sim.md.
        scenario: PathBuf,
        /// Master seed (overrides the scenario's).
        #[arg(long)]
        seed: Option<u64>,
        /// Write the JSON report here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Write an HTML report with SVG charts into this directory (created if missing).
        #[arg(long)]
        html: Option<PathBuf>,
        /// Skip the baseline strategies.
        #[arg(long)]
        no_baselines: bool,
    },
    /// Run a scenario over a range of seeds, each in a process of its own, and list how
    /// each seed ended (exit status 1 if any failed a check or crashed).
    Sweep {
        /// The scenario (TOML); see docs/sim.md.
        scenario: PathBuf,
        /// The seeds: FIRST..LAST (both included) or one seed.
        #[arg(long)]
        seeds: weft_sim::sweep::Seeds,
        /// Seeds run at once (default: the machine's cores).
        #[arg(long)]
        jobs: Option<std::num::NonZeroUsize>,
        /// Write the sweep's JSON summary here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// List the shipped scenarios.
    List {
        /// Directory to list.
        #[arg(long, default_value = "sim/scenarios")]
        dir: PathBuf,
    },
}

/// What a panic during a run prints after the panic's own message: which run stopped and
/// the command that reproduces it. A broken node invariant panics (`Node::check_invariants`,
/// called after every step), and the `sim` profile aborts on a panic, so this is a panic
/// hook, not `catch_unwind`: it runs either way.
static RUNNING: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// Installs the hook that prints [`RUNNING`] after the default panic message.
fn install_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        if let Some(line) = running().as_deref() {
            eprintln!("{line}");
        }
    }));
}

/// [`RUNNING`], whether or not a panic poisoned it.
fn running() -> std::sync::MutexGuard<'static, Option<String>> {
    RUNNING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn set_running(line: Option<String>) {
    *running() = line;
}

fn main() -> ExitCode {
    weft_sim::allocator::keep_freed_memory();
    install_panic_hook();
    let result = run();
    if let Err(e) = flush_output() {
        eprintln!("weft-sim: error: writing output: {e}");
        return ExitCode::from(2);
    }
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("weft-sim: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run() -> anyhow::Result<ExitCode> {
    match Cli::parse().command {
        Command::List { dir } => list(&dir),
        Command::Sweep {
            scenario,
            seeds,
            jobs,
            json,
        } => sweep(&scenario, seeds, jobs, json.as_deref()),
        Command::Run {
            scenario,
            seed,
            json,
            html,
            no_baselines,
        } => run_scenario(
            &scenario,
            seed,
            json.as_deref(),
            html.as_deref(),
            no_baselines,
        ),
    }
}

fn list(dir: &Path) -> anyhow::Result<ExitCode> {
    let rows = list_rows(dir)?;
    if rows.is_empty() {
        outln!("no scenarios (*.toml files) in {}", dir.display());
    }
    for row in rows {
        outln!("{row}");
    }
    Ok(ExitCode::SUCCESS)
}

/// One line per `*.toml` entry of `dir`, in name order: its node count, duration and first
/// sentence, or `INVALID:` and why (a scenario that does not parse, a file that cannot be
/// read or is not UTF-8, a directory): one bad entry does not end the listing.
fn list_rows(dir: &Path) -> anyhow::Result<Vec<String>> {
    let catalog = RegionCatalog::embedded()?;
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| {
            format!(
                "reading {} (the shipped scenarios are in sim/scenarios of the repository: run \
                 from its root or pass --dir DIR)",
                dir.display()
            )
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    entries.sort();
    let width = entries
        .iter()
        .map(|p| p.display().to_string().chars().count())
        .max()
        .unwrap_or(0);
    Ok(entries
        .into_iter()
        .map(|path| {
            let shown = path.display().to_string();
            let text = match std::fs::read(&path).map(String::from_utf8) {
                Ok(Ok(text)) => text,
                Ok(Err(_)) => return format!("{shown:<width$} INVALID: not UTF-8 text"),
                Err(e) if path.is_dir() => {
                    return format!("{shown:<width$} INVALID: a directory, not a file ({e})");
                }
                Err(e) => return format!("{shown:<width$} INVALID: cannot be read: {e}"),
            };
            match Scenario::parse(&text, &catalog) {
                Ok(s) => format!(
                    "{shown:<width$} {:>5} nodes {:>5.0} s  {}",
                    s.topology.len(),
                    s.duration_us as f64 / 1e6,
                    first_sentence(&s.description, SUMMARY_CHARS_MAX)
                ),
                Err(e) => format!("{shown:<width$} INVALID: {e}"),
            }
        })
        .collect())
}

/// Longest scenario summary `list` prints.
const SUMMARY_CHARS_MAX: usize = 100;

/// The first sentence of `text` (its lines joined), cut at a word to at most `max`
/// characters with "..." when longer.
fn first_sentence(text: &str, max: usize) -> String {
    let joined = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let sentence = joined
        .find(". ")
        .map_or(joined.as_str(), |end| &joined[..=end]);
    if sentence.chars().count() <= max {
        return sentence.to_string();
    }
    let mut out = String::new();
    for word in sentence.split(' ') {
        if out.chars().count() + word.chars().count() + 4 > max {
            break;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out.push_str("...");
    out
}

fn run_scenario(
    path: &Path,
    seed: Option<u64>,
    json: Option<&Path>,
    html: Option<&Path>,
    no_baselines: bool,
) -> anyhow::Result<ExitCode> {
    let catalog = RegionCatalog::embedded()?;
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let scenario =
        Scenario::parse(&text, &catalog).with_context(|| format!("in {}", path.display()))?;
    // The outputs are opened before the run, not after it: a mistyped path fails at once
    // (exit status 2, naming the path) instead of after minutes of simulation. The JSON
    // file is created (not truncated) now and written at the end.
    let mut json_out = json
        .map(|p| open_output(p, "the JSON report"))
        .transpose()?;
    if let Some(dir) = html {
        html_dir(dir)?;
    }
    let plan = weft_sim::plan::build(&scenario, &catalog, seed);
    let seed = plan.seed;
    let mut strategies = vec![Strategy::Weft];
    if !no_baselines {
        for b in &scenario.baselines {
            strategies.push(match b {
                Baseline::Flooding => Strategy::Flooding { degree: 6 },
                Baseline::RandomGossip { fanout } => Strategy::RandomGossip {
                    fanout: *fanout as usize,
                },
            });
        }
    }
    let mut reports = Vec::new();
    let mut wall_secs = Vec::new();
    // Test-only: makes the run panic at its first progress report, so that the CLI tests
    // can check what a panic prints (`a_panic_in_a_run_prints_the_seed_to_reproduce`).
    let test_panic = std::env::var_os("WEFT_SIM_TEST_PANIC").is_some();
    #[cfg(feature = "handler-timing")]
    let mut handler_times = Vec::new();
    for strategy in strategies {
        let started = Instant::now();
        let bar = progress_bar(strategy.name());
        set_running(Some(format!(
            "weft-sim: the {} run stopped on a panic (a broken node invariant, or a bug); \
             reproduce with: weft-sim run {} --seed {seed}",
            strategy.name(),
            path.display()
        )));
        let engine = Engine::new(plan.clone(), strategy);
        let metrics = engine.run(|at, end| {
            assert!(!test_panic, "WEFT_SIM_TEST_PANIC is set");
            if started.elapsed().as_secs_f64() > 1.0 {
                bar.set_length(end);
                bar.set_position(at);
            }
        });
        bar.finish_and_clear();
        let secs = started.elapsed().as_secs_f64();
        #[cfg(feature = "handler-timing")]
        handler_times.push((strategy.name(), secs, weft_sim::timing::take()));
        wall_secs.push((strategy.name(), secs, metrics.message_deliveries));
        reports.push(StrategyReport::new(strategy.name(), &plan, &metrics));
    }
    set_running(None);
    let report = Report::new(&scenario, &plan, reports);
    out!("{}", report.table());
    for (name, secs, deliveries) in &wall_secs {
        outln!(
            "{name}: {deliveries} simulated message deliveries in {secs:.2} s wall = {:.0} deliveries/s",
            *deliveries as f64 / secs.max(1e-9)
        );
    }
    #[cfg(feature = "handler-timing")]
    for (name, secs, table) in handler_times.iter().filter(|(_, _, t)| !t.is_empty()) {
        outln!("{name}: time in the mesh core's handlers (feature handler-timing)");
        outln!(
            "  {:<9} {:<13} {:>10} {:>9} {:>9} {:>7}",
            "input",
            "kind",
            "calls",
            "us each",
            "total s",
            "of wall"
        );
        for (class, kind, t) in table {
            let total = t.nanos as f64 / 1e9;
            outln!(
                "  {class:<9} {kind:<13} {:>10} {:>9.2} {:>9.2} {:>6.1}%",
                t.calls,
                t.nanos as f64 / 1e3 / t.calls.max(1) as f64,
                total,
                100.0 * total / secs.max(1e-9)
            );
        }
    }
    outln!("{}", weft_sim::allocator::describe());
    if let Some((path, file)) = json_out.as_mut() {
        write_json(file, &report.to_json()?)
            .with_context(|| format!("writing {}", path.display()))?;
        outln!("report: {}", path.display());
    }
    if let Some(dir) = html {
        let index = weft_sim::html::write(&report, dir).context("writing the HTML report")?;
        outln!("html report: {}", index.display());
    }
    let failures = report.failed_checks();
    if failures.is_empty() {
        outln!("all checks passed (seed {seed})");
        Ok(ExitCode::SUCCESS)
    } else {
        for f in &failures {
            outln!("CHECK FAILED: {f}");
        }
        outln!(
            "reproduce with: weft-sim run {} --seed {seed}",
            path.display()
        );
        Ok(ExitCode::FAILURE)
    }
}

/// `weft-sim sweep`: every seed of `seeds` as a child `weft-sim run ... --no-baselines`
/// (the checks are Weft's; the baselines are for comparison), `jobs` at once. A child per
/// seed, not a thread: the `sim` profile aborts on a panic, and one seed's crash must not
/// end the sweep.
fn sweep(
    path: &Path,
    seeds: weft_sim::sweep::Seeds,
    jobs: Option<std::num::NonZeroUsize>,
    json: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    use weft_sim::sweep::{Outcome, SeedRun, Sweep, tail};
    // A bad scenario is one error now, not one per seed.
    let catalog = RegionCatalog::embedded()?;
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Scenario::parse(&text, &catalog).with_context(|| format!("in {}", path.display()))?;
    let mut json_out = json
        .map(|p| open_output(p, "the JSON summary"))
        .transpose()?;
    let exe = std::env::current_exe().context("finding this program to run each seed")?;
    let scratch = scratch_dir()?;
    let jobs = jobs
        .or_else(|| std::thread::available_parallelism().ok())
        .map_or(1, std::num::NonZeroUsize::get)
        .min(usize::try_from(seeds.count()).unwrap_or(usize::MAX));
    outln!(
        "sweep {}: seeds {}..{} ({}), {jobs} at a time, Weft only (no baselines)",
        path.display(),
        seeds.first,
        seeds.last,
        seeds.count()
    );
    out!("{}", Sweep::header());
    flush_output()?;
    let started = Instant::now();
    let bar = indicatif::ProgressBar::new(seeds.count());
    bar.set_style(
        indicatif::ProgressStyle::with_template("{prefix:>14} [{bar:40}] {pos}/{len} seeds")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix("sweep");
    let next = std::sync::atomic::AtomicU64::new(seeds.first);
    // Rows are printed in seed order as soon as a seed and every one before it have run
    // (a long sweep shows its rows as it goes, and an interrupted one keeps them): runs
    // that finish early wait in `early`.
    // A row that cannot be written (the reader went away: `sweep ... | head`) stops the
    // handing out of seeds; the seeds running finish, and the sweep ends.
    struct Done {
        runs: Vec<SeedRun>,
        early: std::collections::BTreeMap<u64, SeedRun>,
        next_row: u64,
        write_error: Option<std::io::Error>,
    }
    let done = std::sync::Mutex::new(Done {
        runs: Vec::new(),
        early: std::collections::BTreeMap::new(),
        next_row: seeds.first,
        write_error: None,
    });
    let run_one = |seed: u64| -> SeedRun {
        let report = scratch.join(format!("{seed}.json"));
        let t0 = Instant::now();
        let child = std::process::Command::new(&exe)
            .arg("run")
            .arg(path)
            .args(["--no-baselines", "--seed", &seed.to_string(), "--json"])
            .arg(&report)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .output();
        let wall_s = t0.elapsed().as_secs_f64();
        let outcome = match child {
            Err(e) => Outcome::Crashed {
                status: format!("could not start {}: {e}", exe.display()),
                stderr_tail: String::new(),
            },
            Ok(out) => {
                let stderr = String::from_utf8_lossy(&out.stderr);
                let read = std::fs::read_to_string(&report)
                    .map_err(|e| e.to_string())
                    .and_then(|text| Outcome::from_report(&text));
                match (out.status.code(), read) {
                    // 0: every check held, 1: a check failed; either way the report says.
                    (Some(0 | 1), Ok(outcome)) => outcome,
                    (_, read) => Outcome::Crashed {
                        status: match read {
                            Err(e) if matches!(out.status.code(), Some(0 | 1)) => {
                                format!("{}, but its report is unreadable: {e}", out.status)
                            }
                            _ => out.status.to_string(),
                        },
                        stderr_tail: tail(&stderr),
                    },
                }
            }
        };
        let _ = std::fs::remove_file(&report);
        SeedRun {
            seed,
            wall_s,
            outcome,
        }
    };
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| {
                loop {
                    let lock = || {
                        done.lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                    };
                    if lock().write_error.is_some() {
                        break;
                    }
                    let seed = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if seed > seeds.last || seed < seeds.first {
                        break;
                    }
                    let run = run_one(seed);
                    let mut guard = lock();
                    let d = &mut *guard;
                    d.early.insert(run.seed, run);
                    let mut rows = String::new();
                    while let Some(run) = d.early.remove(&d.next_row) {
                        rows.push_str(&Sweep::row(&run));
                        d.runs.push(run);
                        d.next_row = d.next_row.saturating_add(1);
                    }
                    // Under the lock, so rows leave in order; above the bar, which the
                    // terminal shares with them.
                    if !rows.is_empty()
                        && d.write_error.is_none()
                        && let Err(e) = bar.suspend(|| write_stdout_raw(&rows))
                    {
                        d.write_error = Some(e);
                    }
                    bar.set_position((d.runs.len() + d.early.len()) as u64);
                }
            });
        }
    });
    bar.finish_and_clear();
    let _ = std::fs::remove_dir(&scratch);
    let done = done
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(e) = done.write_error {
        // No summary and no JSON for a sweep that did not run its range (a file opened
        // for it and still empty goes; one that held something is left as it was).
        if let Some((path, file)) = json_out
            && file.metadata().is_ok_and(|m| m.len() == 0)
        {
            let _ = std::fs::remove_file(path);
        }
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            return Err(anyhow::Error::new(e).context("writing the table"));
        }
        eprintln!(
            "weft-sim sweep: standard output closed after {} of {} seeds; stopped",
            done.runs.len(),
            seeds.count()
        );
        return Ok(ExitCode::FAILURE);
    }
    let sweep = Sweep::new(path.display().to_string(), seeds, done.runs);
    out!("{}", sweep.summary());
    outln!(
        "{} seeds in {:.1} s wall",
        seeds.count(),
        started.elapsed().as_secs_f64()
    );
    if let Some((path, file)) = json_out.as_mut() {
        let text = serde_json::to_string_pretty(&sweep).context("encoding the summary")?;
        write_json(file, &text).with_context(|| format!("writing {}", path.display()))?;
        outln!("summary: {}", path.display());
    }
    Ok(if sweep.all_passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// A fresh directory for a sweep's per-seed reports: created new (never one that exists,
/// so nothing planted there beforehand is written through) and, on Unix, readable by this
/// user only.
fn scratch_dir() -> anyhow::Result<PathBuf> {
    let base = std::env::temp_dir();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let mut builder = std::fs::DirBuilder::new();
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    for attempt in 0..16u32 {
        let dir = base.join(format!(
            "weft-sim-sweep-{}-{nanos:x}-{attempt}",
            std::process::id()
        ));
        match builder.create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("creating {} for the seeds' reports", dir.display()));
            }
        }
    }
    anyhow::bail!(
        "creating a directory for the seeds' reports in {}: 16 names taken",
        base.display()
    )
}

/// Opens `path` for `what` before a run: created if missing, not truncated (that is done
/// when the output is written at the end), so a mistyped path fails at once.
fn open_output<'a>(path: &'a Path, what: &str) -> anyhow::Result<(&'a Path, std::fs::File)> {
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map(|file| (path, file))
        .with_context(|| format!("opening {} for {what}", path.display()))
}

/// Makes `--html`'s directory, or says plainly why it cannot be one.
fn html_dir(dir: &Path) -> anyhow::Result<()> {
    if dir.exists() && !dir.is_dir() {
        anyhow::bail!(
            "--html {}: is a file, not a directory (the HTML report is a directory: \
             index.html and its SVG charts)",
            dir.display()
        );
    }
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating {} for the HTML report", dir.display()))
}

/// Replaces the contents of `file` (opened before the run) with `json`. Only a regular
/// file is truncated first (a pipe or a device such as `/dev/stdout` cannot be), and a
/// failed write says which report it was and how much of it was written.
fn write_json(file: &mut std::fs::File, json: &str) -> anyhow::Result<()> {
    use std::io::Write;
    if file.metadata()?.is_file() {
        file.set_len(0)?;
    }
    file.write_all(json.as_bytes()).with_context(|| {
        format!(
            "the JSON report ({} bytes) was not written whole",
            json.len()
        )
    })?;
    match file.sync_all() {
        // Pipes, terminals and character devices cannot be synced; that is not an error.
        Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => Ok(()),
        other => other.context("syncing the JSON report to disk"),
    }
}

fn progress_bar(name: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(1);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix:>14} [{bar:40}] {percent:>3}% simulated time",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_prefix(name.to_string());
    bar
}

#[cfg(test)]
mod tests {
    use super::{first_sentence, list_rows};

    /// `list` went through a directory until an entry it could not read as text (a file
    /// that is not UTF-8, a directory named `*.toml`), then stopped with an error naming
    /// neither: every entry gets its row, a bad one `INVALID:` and why.
    #[test]
    fn list_names_each_entry_it_cannot_read_and_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a-binary.toml"), [0xff, 0xfe, 0x00]).unwrap();
        std::fs::create_dir(dir.path().join("b-dir.toml")).unwrap();
        std::fs::write(dir.path().join("c-bad.toml"), "duration_s = ").unwrap();
        std::fs::copy(
            concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios/link-cut.toml"),
            dir.path().join("d-good.toml"),
        )
        .unwrap();
        let rows = list_rows(dir.path()).unwrap();
        assert_eq!(rows.len(), 4, "{rows:#?}");
        assert!(rows[0].contains("a-binary.toml") && rows[0].contains("INVALID: not UTF-8"));
        assert!(rows[1].contains("b-dir.toml") && rows[1].contains("INVALID: a directory"));
        assert!(rows[2].contains("c-bad.toml") && rows[2].contains("INVALID:"));
        assert!(
            rows[3].contains("d-good.toml") && rows[3].contains(" nodes "),
            "{rows:#?}"
        );
    }

    #[test]
    fn list_summaries_are_the_first_sentence_cut_at_a_word() {
        let text = "One cloud is cut off\nfrom the others. Then it heals.";
        assert_eq!(
            first_sentence(text, 100),
            "One cloud is cut off from the others."
        );
        let cut = first_sentence(text, 20);
        assert_eq!(cut, "One cloud is cut...");
        assert!(cut.chars().count() <= 20);
        assert_eq!(first_sentence("no full stop", 100), "no full stop");
    }
}
