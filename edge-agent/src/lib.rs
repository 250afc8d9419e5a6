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
    let seed = keys::load(&config.key_path).context("config field `key`")?;
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

/// `weft-agent status`: prints the connected node, its RTT, the outbox depth, the
/// counters and the dead letters of the agent whose config file is at `path` (JSON with
/// `json`). Asks the running agent over its local HTTP input, and shows its answer only if
/// it runs this config's device key; otherwise (no HTTP input, the agent stopped, another
/// agent on that address) reads the outbox on disk, creating nothing. Fails (non-zero)
/// when there is no outbox, and when another agent answers on this config's address.
pub fn status(path: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let config = config::AgentConfig::load(path)?;
    // This config's device: what the answering agent must run. The key file is the
    // device's (0600, this user's); without it, the config's name is all there is.
    let own_key = keys::load(&config.key_path)
        .map(|seed| weft_fabric::Signer::from_secret(&seed).origin().to_string())
        .ok();
    let http = config.raw.inputs.http.as_ref().map(|h| h.listen);
    let live = http.and_then(ask_status);
    let mut code = ExitCode::SUCCESS;
    let mut foreign = None;
    let value = match live {
        Some(v) => match same_agent(&v, own_key.as_deref(), &config.raw.name) {
            Ok(()) => Some(v),
            Err(why) => {
                foreign = Some(format!(
                    "the agent answering on {} is not this config's: {why}; figures from this config's outbox on disk",
                    http.map_or_else(String::new, |a| a.to_string())
                ));
                None
            }
        },
        None => None,
    };
    let value = match value {
        Some(v) => v,
        None => {
            // Another agent answered: the error says so too (it is likely the cause).
            let snap = outbox::snapshot(&config.data_dir).map_err(|e| match &foreign {
                Some(f) => e.context(f.clone()),
                None => e,
            })?;
            let note = match (&foreign, outbox::lock_holder(&config.data_dir)) {
                (Some(f), _) => f.clone(),
                (None, Some(pid)) if http.is_some() => format!(
                    "an agent holds this data directory{} but does not answer on inputs.http.listen: figures from the outbox on disk",
                    pid_text(&pid)
                ),
                (None, Some(pid)) => format!(
                    "the agent is running{} and has no [inputs.http]: figures from the outbox on disk",
                    pid_text(&pid)
                ),
                (None, None) => "the agent is not running: figures from the outbox on disk".into(),
            };
            if foreign.is_some() {
                code = ExitCode::FAILURE;
            }
            serde_json::json!({
                "name": config.raw.name,
                "connected": null,
                "note": note,
                "outbox_depth": snap.outbox_depth,
                "outbox_bytes": snap.outbox_bytes,
                "next_seq": snap.next_seq,
                "counters": snap.counters,
                "dead_letters": snap.dead_letters,
            })
        }
    };
    let text = if json {
        format!("{value}\n")
    } else {
        render_status(&value)
    };
    // A reader that went away (`weft-agent status | head -1`) is no error of ours: stop
    // quietly (println! panicked on EPIPE, exit status 101).
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        Err(e) => return Err(e).context("writing the status to standard output"),
    }
    if let Some(f) = foreign {
        eprintln!("weft-agent: {f}");
    }
    Ok(code)
}

fn pid_text(pid: &str) -> String {
    if pid.is_empty() {
        String::new()
    } else {
        format!(" (pid {pid})")
    }
}

/// `GET /v1/status` from the agent's HTTP input at `addr` (`None`: nothing answered, or
/// not with JSON).
fn ask_status(addr: std::net::SocketAddr) -> Option<serde_json::Value> {
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /v1/status HTTP/1.1\r\nhost: agent\r\nconnection: close\r\n\r\n")
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let body = out.split_once("\r\n\r\n")?.1;
    serde_json::from_str::<serde_json::Value>(body).ok()
}

/// Whether the status `v` is of this config's agent: its device key (`own_key`, when the
/// key file could be read), else its name. Another agent listening on the address this
/// config names (two configs with one `inputs.http.listen`) would otherwise be reported
/// as this one.
fn same_agent(v: &serde_json::Value, own_key: Option<&str>, name: &str) -> Result<(), String> {
    let their_key = v["key"].as_str().unwrap_or("?");
    let their_name = v["name"].as_str().unwrap_or("?");
    match own_key {
        Some(k) if k != their_key => Err(format!(
            "it runs device key {their_key} (name {their_name}), this config's key is {k}"
        )),
        None if name != their_name => Err(format!(
            "it is named {their_name}, this config {name} (the device key could not be read to compare)"
        )),
        _ => Ok(()),
    }
}

/// The status as text.
fn render_status(value: &serde_json::Value) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let c = &value["connected"];
    if c.is_null() {
        let _ = writeln!(
            o,
            "connected:     no{}",
            value["note"]
                .as_str()
                .map(|n| format!(" ({n})"))
                .unwrap_or_default()
        );
    } else {
        let key = c["key"].as_str().unwrap_or("?");
        let _ = writeln!(
            o,
            "connected:     {} at {} (key {})",
            c["node"].as_str().unwrap_or("?"),
            c["addr"].as_str().unwrap_or("?"),
            key.get(..16).unwrap_or(key)
        );
        let _ = writeln!(
            o,
            "rtt:           {:.2} ms",
            c["rtt_ms"].as_f64().unwrap_or(f64::NAN)
        );
    }
    let _ = writeln!(
        o,
        "outbox:        {} events, {} bytes (next seq {})",
        value["outbox_depth"], value["outbox_bytes"], value["next_seq"]
    );
    let k = &value["counters"];
    let _ = writeln!(
        o,
        "delivered:     {}   accepted: {}",
        k["delivered"], k["accepted"]
    );
    let _ = writeln!(
        o,
        "drops:         overflow {}  refused (full) {}  filtered {}  sampled out {}  aggregated {}  dead letters {}  bad input {}  not enrolled {}",
        k["dropped_overflow"],
        k["refused_full"],
        k["filtered"],
        k["sampled_out"],
        k["aggregated"],
        k["dead"],
        k["bad_input"],
        k["not_enrolled"]
    );
    let _ = writeln!(
        o,
        "aggregates:    {} summaries  {} window extensions (summary budget full)",
        k["summaries"], k["summaries_deferred"]
    );
    let _ = writeln!(
        o,
        "inputs:        {} waits for room (outbox full; standard input and files offer their lines again)",
        k["input_waits"]
    );
    let dead = &value["dead_letters"];
    if let Some(held) = dead["held"].as_u64() {
        let _ = writeln!(
            o,
            "dead letters:  {held} held (the newest {} kept)",
            outbox::DEAD_LETTERS_KEPT
        );
        for d in dead["last"].as_array().into_iter().flatten() {
            let _ = writeln!(
                o,
                "  {} seq {} {}: {}",
                d["at_ms"].as_u64().map_or("?".into(), utc),
                d["seq"].as_u64().map_or("-".into(), |s| s.to_string()),
                d["stream"].as_str().unwrap_or("?"),
                d["reason"].as_str().unwrap_or("?")
            );
        }
    }
    if let Some(cands) = value["candidates"].as_array() {
        for c in cands {
            let _ = writeln!(
                o,
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
    o
}

/// `ms` since the epoch as `YYYY-MM-DD HH:MM:SS` UTC: the fabric's RFC 3339 timestamp
/// (as `weft audit` prints it), to the second; one past 9999 prints as its milliseconds.
fn utc(ms: u64) -> String {
    weft_fabric::cloudevents::rfc3339_from_ms(ms).map_or_else(
        || ms.to_string(),
        |t| t.replacen('T', " ", 1).chars().take(19).collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_prints_seconds_of_unix_milliseconds() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(1_709_251_199_999), "2024-02-29 23:59:59");
    }

    #[test]
    fn status_names_another_agent_on_the_configured_address() {
        let v = serde_json::json!({"name": "till-9", "key": "bb"});
        assert_eq!(same_agent(&v, Some("bb"), "till-7"), Ok(()));
        let e = same_agent(&v, Some("aa"), "till-9").unwrap_err();
        assert!(
            e.contains("device key bb") && e.contains("key is aa"),
            "{e}"
        );
        // Without the key file, the name decides.
        assert_eq!(same_agent(&v, None, "till-9"), Ok(()));
        assert!(same_agent(&v, None, "till-7").is_err());
    }

    #[test]
    fn status_shows_the_newest_dead_letters_with_their_reasons() {
        let v = serde_json::json!({
            "connected": null, "note": "n", "outbox_depth": 0, "outbox_bytes": 0,
            "next_seq": 4, "counters": {"dead": 2},
            "dead_letters": {"held": 2, "last": [
                {"seq": 3, "stream": "t.b", "reason": "refused: residency_wider", "at_ms": 1_764_979_200_000u64},
                {"seq": null, "stream": "t.x", "reason": "the device is not enrolled for t.x (epoch 1)", "at_ms": 0},
            ]},
        });
        let text = render_status(&v);
        assert!(text.contains("dead letters:  2 held"), "{text}");
        assert!(
            text.contains("  2025-12-06 00:00:00 seq 3 t.b: refused: residency_wider"),
            "{text}"
        );
        assert!(
            text.contains("  1970-01-01 00:00:00 seq - t.x: the device is not enrolled for t.x"),
            "{text}"
        );
    }

    /// A config whose data directory does not exist: `status` says so, fails, and makes
    /// nothing (it made `nodata/outbox.db` and printed zeros).
    #[test]
    fn status_of_a_missing_data_dir_fails_and_creates_nothing() {
        let dir = std::env::temp_dir().join(format!("weft-agent-status-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        keygen(&dir.join("device.key")).unwrap();
        let cfg = dir.join("agent.toml");
        std::fs::write(
            &cfg,
            format!(
                "name = \"t\"\nkey = \"device.key\"\ndata_dir = \"nodata\"\n\
                 [[nodes]]\naddr = \"127.93.0.1:7500\"\nkey = \"{}\"\n",
                "01".repeat(32)
            ),
        )
        .unwrap();
        let e = status(&cfg, true).unwrap_err();
        let text = format!("{e:#}");
        assert!(
            text.contains("does not exist") && text.contains("nodata"),
            "{text}"
        );
        assert!(!dir.join("nodata").exists());
        // An existing directory without an outbox: the same, nothing made.
        std::fs::create_dir(dir.join("nodata")).unwrap();
        let text = format!("{:#}", status(&cfg, true).unwrap_err());
        assert!(text.contains("no outbox at"), "{text}");
        assert!(!dir.join("nodata").join("outbox.db").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
