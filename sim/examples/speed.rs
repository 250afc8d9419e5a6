//! The simulator's speed against its own floor, side by side: simulated message deliveries
//! per wall-clock second (the figure of issue 3's target, 1,000,000 on one core) for Weft
//! and for the flooding baseline, on the same plan and seed, in the same process.
//!
//! Flooding runs in the same engine (queue, network model, residency audit, metrics) with
//! the least protocol work there is per message, so its figure is what the engine alone
//! reaches on this machine in this hour, and the ratio Weft / flooding is what the real
//! protocol costs on top. Both move together with the machine's speed; the ratio does not.
//! A pointer chase over 8 MiB (one dependent load per step, to a random cache line) before
//! and after the runs says how far memory is: a few tens of nanoseconds when the last-level
//! cache holds the buffer, 120-160 ns on the shared machine these figures were measured on
//! (docs/sim-speed.md) when its other tenants had taken that cache (figures from before
//! 2026-12-04 were taken on 4 KiB pages; the chase now runs on the heap's huge pages
//! where the kernel gives them, see `weft_sim::allocator`).
//!
//! Each scenario runs `--rounds` times (default 3), Weft and flooding interleaved, and the
//! best round of each counts (the least disturbed by the machine's other tenants).
//!
//! Run: `cargo run --profile sim -p weft-sim --example speed [-- --rounds N]
//! [--scenario NAME]...` (the `sim` profile is the simulator's speed build; `--release`
//! works too). Bounded: nine scenarios of 8 to 24 nodes (or the ones named), each run
//! stops at its scenario's simulated end.

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, bail};
use weft_sim::catalog::RegionCatalog;
use weft_sim::engine::{Engine, Strategy};
use weft_sim::scenario::Scenario;

/// The allocator of the `weft-sim` binary (`src/main.rs`), so that the figures are the
/// binary's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The shipped fault scenarios.
const SCENARIOS: [&str; 9] = [
    "region-outage",
    "cloud-partition",
    "transoceanic-degradation",
    "rolling-crash",
    "clock-skew",
    "link-cut",
    "degraded-link-relay",
    "sovereignty-under-failure",
    "split-brain-writes",
];

/// Issue 3's target.
const TARGET_PER_S: f64 = 1_000_000.0;

/// The pointer chase's buffer: past the machine's second-level cache (1 MiB here), inside
/// a typical last-level cache.
const CHASE_BYTES: usize = 8 << 20;
/// Loads per chase.
const CHASE_STEPS: usize = 20_000_000;

fn main() -> ExitCode {
    // As the binary runs (`weft_sim::allocator`).
    weft_sim::allocator::keep_freed_memory();
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("speed: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run() -> anyhow::Result<()> {
    let mut rounds = 3usize;
    let mut names: Vec<String> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--rounds" => {
                let n = args.next().context("--rounds needs a number")?;
                rounds = n
                    .parse()
                    .with_context(|| format!("--rounds: {n:?} is not a number"))?;
                if !(1..=20).contains(&rounds) {
                    bail!("--rounds: {rounds} is outside 1..=20");
                }
            }
            "--scenario" => names.push(args.next().context("--scenario needs a name")?),
            other => {
                bail!("unknown argument {other:?} (usage: speed [--rounds N] [--scenario NAME]...)")
            }
        }
    }
    if names.is_empty() {
        names = SCENARIOS.iter().map(|s| s.to_string()).collect();
    }

    let catalog = RegionCatalog::embedded()?;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let mut plans = Vec::new();
    for name in names {
        let path = dir.join(format!("{name}.toml"));
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let scenario =
            Scenario::parse(&text, &catalog).with_context(|| format!("in {}", path.display()))?;
        plans.push((name, weft_sim::plan::build(&scenario, &catalog, None)));
    }

    let chase_before = chase_ns();
    println!(
        "memory: {chase_before:.0} ns per dependent load over {} MiB",
        CHASE_BYTES >> 20
    );
    println!(
        "best of {rounds} interleaved rounds; M simulated message deliveries per wall-clock second"
    );
    println!();
    println!(
        "(engine us: flooding's wall time per delivery, the engine's floor; protocol us: what \
         Weft adds per delivery on top of it)"
    );
    println!();
    println!(
        "{:<26} {:>11} {:>9} {:>11} {:>7} {:>10} {:>12} {:>12}",
        "scenario",
        "deliveries",
        "weft",
        "flooding",
        "ratio",
        "engine us",
        "protocol us",
        "weft/target"
    );
    let mut met = 0;
    for (name, plan) in &plans {
        let mut best = [(0u64, f64::MAX); 2];
        for _ in 0..rounds {
            for (k, strategy) in [Strategy::Weft, Strategy::Flooding { degree: 6 }]
                .into_iter()
                .enumerate()
            {
                let started = Instant::now();
                let metrics = Engine::new(plan.clone(), strategy).run(|_, _| {});
                let secs = started.elapsed().as_secs_f64();
                if secs < best[k].1 {
                    best[k] = (metrics.message_deliveries, secs);
                }
            }
        }
        let rate = |(n, s): (u64, f64)| n as f64 / s.max(1e-9);
        let (weft, flooding) = (rate(best[0]), rate(best[1]));
        if weft >= TARGET_PER_S {
            met += 1;
        }
        let (engine_us, weft_us) = (1e6 / flooding, 1e6 / weft);
        println!(
            "{:<26} {:>10.2}M {:>8.3}M {:>10.3}M {:>7.2} {:>10.2} {:>12.2} {:>12.2}",
            name,
            best[0].0 as f64 / 1e6,
            weft / 1e6,
            flooding / 1e6,
            weft / flooding,
            engine_us,
            weft_us - engine_us,
            weft / TARGET_PER_S
        );
    }
    let chase_after = chase_ns();
    println!();
    println!(
        "target (1 M/s) met on {met} of {} scenarios; memory {chase_before:.0} ns before, \
         {chase_after:.0} ns after",
        plans.len()
    );
    println!("{}", weft_sim::allocator::describe());
    Ok(())
}

/// Nanoseconds per step of a pointer chase through one random cycle over
/// [`CHASE_BYTES`] (each step loads the next index from a random cache line).
fn chase_ns() -> f64 {
    const LINE: usize = 64 / std::mem::size_of::<u64>();
    let lines = CHASE_BYTES / 64;
    // The lines in a random order (Fisher-Yates, a fixed-seed xorshift), each linked to the
    // next and the last to the first: one cycle through all of them.
    let mut order: Vec<usize> = (0..lines).collect();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for i in (1..lines).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        order.swap(i, (x % (i as u64 + 1)) as usize);
    }
    let mut next = vec![0u64; lines * LINE];
    for (i, &line) in order.iter().enumerate() {
        next[line * LINE] = (order[(i + 1) % lines] * LINE) as u64;
    }
    let started = Instant::now();
    let mut at = 0usize;
    for _ in 0..CHASE_STEPS {
        at = next[at] as usize;
    }
    let ns = started.elapsed().as_secs_f64() * 1e9 / CHASE_STEPS as f64;
    std::hint::black_box(at);
    ns
}
