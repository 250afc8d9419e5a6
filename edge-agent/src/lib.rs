//! `weft-agent` as a library: Weft's edge agent for devices (`docs/agent.md`).
//!
//! It signs every event on the device with its own Ed25519 key, keeps events in a durable
//! outbox while offline, applies the local rules its node sends (filter, sample,
//! aggregate), drains in order over QUIC to the lowest-RTT healthy node, fails over and
//! back, and hands commands from the node to the device.
//!
//! The entry points are what the `weft-agent` binary's subcommands run: [`keygen`],
//! [`run`] and [`status`]. The binary is CLI glue over them; `weft demo` links this
//! library and runs its device's agent as `weft agent-run` in a child process of its own,
//! so the demo's agent is this code, not a copy.

use std::io::{Read as _, Write as _};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use tracing::info;

mod agent;
mod config;
mod inputs;
pub mod keys;
#[cfg(feature = "mdns")]
mod mdns;
mod outbox;
mod rules;
mod tls;

/// `weft-agent keygen`: writes a new Ed25519 device key to `out` (PEM, mode 0600; refuses
/// to overwrite) and returns its public key in hex (what a policy's `device_key` or a
/// node's `edge.devices` entry names).
pub fn keygen(out: &Path) -> anyhow::Result<String> {
    let seed = keys::generate(out)?;
    Ok(weft_fabric::Signer::from_secret(&seed).origin().to_string())
}

/// Checks an agent config the way [`run`] does at start (every field, errors naming it),
/// without opening the key or the outbox. `base` is the directory relative paths in it
/// are resolved against (the config file's).
pub fn check_config(text: &str, base: &Path) -> anyhow::Result<()> {
    config::AgentConfig::parse(text, base).map(|_| ())
}

/// `weft-agent run`: runs the agent from the config file at `path` on a single-threaded
/// runtime until SIGINT or SIGTERM, or, with `exit_when_drained`, until standard input has
/// ended and the outbox is empty.
pub fn run(path: &Path, exit_when_drained: bool) -> anyhow::Result<ExitCode> {
    let config = config::AgentConfig::load(path)?;
    init_tracing(&config.raw.log.level);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(2)
        .build()
        .context("starting the async runtime")?;
    let code = runtime.block_on(serve(config, exit_when_drained));
    // A blocking task may never end by itself: standard input's read, open and idle (a
    // terminal, a quiet pipe). Dropping the runtime waited for it, so a stop hung until a
    // line came. Outbox writes in flight (blocking tasks too) get a bound to finish in; one
    // cut short is a transaction SQLite rolls back, answered to no input.
    runtime.shutdown_timeout(SHUTDOWN_BLOCKING_WAIT);
    code
}

/// How long a stopping agent waits for its blocking tasks (an outbox write) to finish.
const SHUTDOWN_BLOCKING_WAIT: Duration = Duration::from_secs(5);

fn init_tracing(level: &str) {
    let level = std::env::var("RUST_LOG")
        .ok()
        .and_then(|l| l.parse::<tracing::Level>().ok())
        .or_else(|| level.parse().ok())
        .unwrap_or(tracing::Level::INFO);
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
}

async fn serve(config: config::Resolved, exit_when_drained: bool) -> anyhow::Result<ExitCode> {
    let seed = keys::load(&config.key_path)?;
    let shared = agent::Shared::new(&config, &seed)?;
    let tx = agent::start(&shared, &config);
    let raw = &config.raw;
    let (stdin_done_tx, mut stdin_done) = tokio::sync::oneshot::channel();
    let has_stdin = raw.inputs.stdin.is_some();
    if let Some(i) = &raw.inputs.stdin {
        let stream = weft_fabric::StreamName::new(i.stream.clone())?;
        inputs::stdin(
            raw.name.clone(),
            stream,
            i.priority,
            tx.clone(),
            stdin_done_tx,
        );
    }
    if let Some(h) = &raw.inputs.http {
        let default = h
            .stream
            .as_ref()
            .map(|s| weft_fabric::StreamName::new(s.clone()))
            .transpose()?;
        inputs::http(shared.clone(), h.listen, default, h.priority, tx.clone()).await?;
    }
    for f in &raw.inputs.files {
        inputs::follow(
            shared.clone(),
            raw.name.clone(),
            f.path.clone(),
            weft_fabric::StreamName::new(f.stream.clone())?,
            f.priority,
            f.from == "start",
            tx.clone(),
        );
    }
    #[cfg(feature = "mdns")]
    if raw.mdns.enabled {
        let mut trusted = config.mdns_trusted.clone();
        trusted.extend(config.nodes.iter().map(|n| n.1));
        mdns::start(shared.clone(), raw.mdns.port, trusted)?;
    }
    info!(name = %raw.name, key = %shared.signer.origin(), "agent started");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut stdin_ended = !has_stdin;
    let mut check = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            r = &mut stdin_done, if !stdin_ended => {
                stdin_ended = true;
                let _ = r;
            }
            _ = check.tick(), if exit_when_drained && stdin_ended => {
                let s = shared.status().await?;
                if s.outbox_depth == 0 {
                    info!(delivered = s.counters.delivered, "input ended and outbox drained; exiting");
                    return Ok(ExitCode::SUCCESS);
                }
            }
        }
    }
    info!("stopping");
    Ok(ExitCode::SUCCESS)
}

/// `weft-agent status`: prints the connected node, its RTT, the outbox depth and the
/// counters of the agent whose config file is at `path` (JSON with `json`). Asks the
/// running agent over its local HTTP input; without one (or with the agent stopped) reads
/// the outbox directly.
pub fn status(path: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let config = config::AgentConfig::load(path)?;
    let live = config.raw.inputs.http.as_ref().and_then(|h| {
        let mut s = std::net::TcpStream::connect_timeout(&h.listen, Duration::from_secs(2)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        s.write_all(b"GET /v1/status HTTP/1.1\r\nhost: agent\r\nconnection: close\r\n\r\n")
            .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        let body = out.split_once("\r\n\r\n")?.1;
        serde_json::from_str::<serde_json::Value>(body).ok()
    });
    let value = match live {
        Some(v) => v,
        None => {
            let o = outbox::Outbox::open(&config.data_dir, config.raw.outbox.clone())?;
            serde_json::json!({
                "name": config.raw.name,
                "connected": null,
                "note": "the agent is not running, or has no [inputs.http]: figures from the outbox on disk",
                "outbox_depth": o.depth(),
                "outbox_bytes": o.bytes(),
                "next_seq": o.next_seq(),
                "counters": o.counters,
            })
        }
    };
    if json {
        println!("{value}");
        return Ok(ExitCode::SUCCESS);
    }
    let c = &value["connected"];
    if c.is_null() {
        println!(
            "connected:     no{}",
            value["note"]
                .as_str()
                .map(|n| format!(" ({n})"))
                .unwrap_or_default()
        );
    } else {
        println!(
            "connected:     {} at {} (key {})",
            c["node"].as_str().unwrap_or("?"),
            c["addr"].as_str().unwrap_or("?"),
            &c["key"].as_str().unwrap_or("?")[..16.min(c["key"].as_str().unwrap_or("?").len())]
        );
        println!(
            "rtt:           {:.2} ms",
            c["rtt_ms"].as_f64().unwrap_or(f64::NAN)
        );
    }
    println!(
        "outbox:        {} events, {} bytes (next seq {})",
        value["outbox_depth"], value["outbox_bytes"], value["next_seq"]
    );
    let k = &value["counters"];
    println!(
        "delivered:     {}   accepted: {}",
        k["delivered"], k["accepted"]
    );
    println!(
        "drops:         overflow {}  refused (full) {}  filtered {}  sampled out {}  aggregated {}  dead letters {}  bad input {}",
        k["dropped_overflow"],
        k["refused_full"],
        k["filtered"],
        k["sampled_out"],
        k["aggregated"],
        k["dead"],
        k["bad_input"]
    );
    println!(
        "aggregates:    {} summaries  {} window extensions (summary budget full)",
        k["summaries"], k["summaries_deferred"]
    );
    println!(
        "inputs:        {} waits for room (outbox full; standard input and files offer their lines again)",
        k["input_waits"]
    );
    if let Some(cands) = value["candidates"].as_array() {
        for c in cands {
            println!(
                "node {:<22} {:<5} {:<6} rtt {} ms{}",
                c["addr"].as_str().unwrap_or("?"),
                c["source"].as_str().unwrap_or("?"),
                c["state"].as_str().unwrap_or("?"),
                c["rtt_ms"]
                    .as_f64()
                    .map_or("-".to_string(), |r| format!("{r:.2}")),
                c["error"]
                    .as_str()
                    .map(|e| format!("  ({e})"))
                    .unwrap_or_default()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
