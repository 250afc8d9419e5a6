//! The agent's configuration file (`docs/agent.md`): TOML, unknown fields refused, every
//! value checked at start with an error naming the field.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use serde::Deserialize;
use weft_fabric::StreamName;

/// Most candidate nodes (configured plus discovered): the agent keeps a connection to each.
pub(crate) const CANDIDATES_MAX: usize = 8;

/// The agent's configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AgentConfig {
    /// The device's name (logs, the hello; the fabric knows it by its key's principal).
    pub(crate) name: String,
    /// Device key (`weft-agent keygen --out device.key`), relative to the config's directory.
    pub(crate) key: PathBuf,
    /// Directory of the outbox (`outbox.db`), relative like `key`.
    pub(crate) data_dir: PathBuf,
    /// Candidate nodes.
    #[serde(default)]
    pub(crate) nodes: Vec<NodeEntry>,
    /// LAN discovery.
    #[serde(default)]
    pub(crate) mdns: MdnsConfig,
    /// Outbox bounds.
    #[serde(default)]
    pub(crate) outbox: OutboxConfig,
    /// Inputs.
    #[serde(default)]
    pub(crate) inputs: Inputs,
    /// What to do with commands from the node.
    #[serde(default)]
    pub(crate) downlink: Downlink,
    /// Logging.
    #[serde(default)]
    pub(crate) log: Log,
}

/// A candidate node.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NodeEntry {
    /// The node's edge address (`listen.edge`), UDP.
    pub(crate) addr: SocketAddr,
    /// The node's public key, 64 hex digits (`weft keygen` printed it).
    pub(crate) key: String,
    /// Added to the measured RTT when choosing (a metered or backup link costs more).
    #[serde(default)]
    pub(crate) rtt_bias_ms: f64,
}

/// LAN discovery of nodes through libp2p mDNS (nodes with `mdns = true`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct MdnsConfig {
    /// Discover nodes.
    pub(crate) enabled: bool,
    /// The edge port of discovered nodes (mDNS announces the node's IP and key).
    pub(crate) port: u16,
    /// Node keys accepted from discovery (hex); the configured nodes' keys are implied.
    pub(crate) trusted: Vec<String>,
}

impl Default for MdnsConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            port: 7500,
            trusted: Vec::new(),
        }
    }
}

/// What to do when the outbox is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Overflow {
    /// Refuse the new event (counted; HTTP 507).
    Refuse,
    /// Drop the oldest event of the lowest priority not above the new one's (counted); if
    /// there is none, refuse.
    DropOldest,
}

/// Outbox bounds and overflow rule.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct OutboxConfig {
    /// Most events held.
    pub(crate) events_max: u64,
    /// Most payload bytes held.
    pub(crate) bytes_max: u64,
    /// Overflow rule.
    pub(crate) overflow: Overflow,
    /// Aggregate summaries held at once, in a budget of their own beside `events_max`:
    /// they carry input events the rules already took, so ordinary events never displace
    /// them (the default, 256, is about four hours of one summary a minute while the device
    /// is cut off; past it, windows stay open and their summaries span more time).
    pub(crate) summaries_max: u64,
    /// Payload bytes of the summaries held at once, beside `bytes_max`.
    pub(crate) summary_bytes_max: u64,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self {
            events_max: 100_000,
            bytes_max: 64 << 20,
            overflow: Overflow::Refuse,
            summaries_max: 256,
            summary_bytes_max: 1 << 20,
        }
    }
}

/// Inputs.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Inputs {
    /// Standard input: one JSON or text line per event.
    #[serde(default)]
    pub(crate) stdin: Option<LineInput>,
    /// Local HTTP endpoint accepting CloudEvents.
    #[serde(default)]
    pub(crate) http: Option<HttpInput>,
    /// Followed files.
    #[serde(default)]
    pub(crate) files: Vec<FileInput>,
}

/// Standard input.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LineInput {
    /// Stream the lines go to.
    pub(crate) stream: String,
    /// Priority 0 (lowest) to 9, for the drop-oldest rule.
    #[serde(default = "five")]
    pub(crate) priority: u8,
}

/// The local HTTP endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HttpInput {
    /// Address; must be a loopback address.
    pub(crate) listen: SocketAddr,
    /// Stream for events naming none (`weftstream` attribute or `/v1/streams/{s}/events`).
    #[serde(default)]
    pub(crate) stream: Option<String>,
    /// Priority.
    #[serde(default = "five")]
    pub(crate) priority: u8,
}

/// A followed file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileInput {
    /// The file.
    pub(crate) path: PathBuf,
    /// Stream its lines go to.
    pub(crate) stream: String,
    /// Where to start the first time (`end`, like `tail -f`, or `start`); afterwards the
    /// agent resumes at the offset it stored.
    #[serde(default = "end")]
    pub(crate) from: String,
    /// Priority.
    #[serde(default = "five")]
    pub(crate) priority: u8,
}

/// Commands from the node.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Downlink {
    /// Subscribe to the device's command stream.
    #[serde(default)]
    pub(crate) enabled: bool,
    /// Program and arguments run per command with its JSON on standard input; absent:
    /// print one JSON line per command on standard output.
    #[serde(default)]
    pub(crate) command: Vec<String>,
}

/// Logging.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Log {
    /// `error`, `warn`, `info`, `debug` or `trace` (`RUST_LOG` overrides).
    pub(crate) level: String,
}

impl Default for Log {
    fn default() -> Self {
        Self {
            level: "info".into(),
        }
    }
}

fn five() -> u8 {
    5
}

fn end() -> String {
    "end".into()
}

fn field_err(field: &str, what: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("config field `{field}`: {what}")
}

/// Parses 64 hex digits.
pub(crate) fn hex32(field: &str, text: &str) -> anyhow::Result<[u8; 32]> {
    let bytes = hex::decode(text.trim())
        .map_err(|e| field_err(field, format!("not hex ({e}): {text:?}")))?;
    bytes.try_into().map_err(|b: Vec<u8>| {
        field_err(
            field,
            format!("expected 32 bytes (64 hex digits), got {}", b.len()),
        )
    })
}

/// A checked configuration with resolved paths.
#[derive(Debug, Clone)]
pub(crate) struct Resolved {
    pub(crate) raw: AgentConfig,
    pub(crate) key_path: PathBuf,
    pub(crate) data_dir: PathBuf,
    /// (address, node key, bias) of each configured node.
    pub(crate) nodes: Vec<(SocketAddr, [u8; 32], f64)>,
    /// Checked in every build (an error names the field); only read with the `mdns` feature.
    #[cfg_attr(not(feature = "mdns"), allow(dead_code))]
    pub(crate) mdns_trusted: Vec<[u8; 32]>,
}

impl AgentConfig {
    /// Reads and checks `path`.
    pub(crate) fn load(path: &Path) -> anyhow::Result<Resolved> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config {}", path.display()))?;
        Self::parse(&text, path.parent().unwrap_or(Path::new(".")))
            .with_context(|| format!("config {}", path.display()))
    }

    /// Parses and checks config text; relative paths resolve against `base`.
    pub(crate) fn parse(text: &str, base: &Path) -> anyhow::Result<Resolved> {
        let raw: AgentConfig = toml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
        if raw.name.is_empty() || raw.name.len() > 128 {
            bail!(field_err("name", "must be 1 to 128 bytes"));
        }
        let mut nodes = Vec::new();
        for (i, n) in raw.nodes.iter().enumerate() {
            let key = hex32(&format!("nodes[{i}].key"), &n.key)?;
            if !(0.0..=60_000.0).contains(&n.rtt_bias_ms) {
                bail!(field_err(
                    &format!("nodes[{i}].rtt_bias_ms"),
                    "must be 0 to 60000"
                ));
            }
            nodes.push((n.addr, key, n.rtt_bias_ms));
        }
        let mut mdns_trusted = Vec::new();
        for (i, k) in raw.mdns.trusted.iter().enumerate() {
            mdns_trusted.push(hex32(&format!("mdns.trusted[{i}]"), k)?);
        }
        if nodes.len() + usize::from(raw.mdns.enabled) * mdns_trusted.len() > CANDIDATES_MAX {
            bail!(field_err(
                "nodes",
                format!(
                    "at most {CANDIDATES_MAX} candidate nodes (CANDIDATES_MAX), configured and discovered together"
                )
            ));
        }
        if nodes.is_empty() && !raw.mdns.enabled {
            bail!(field_err(
                "nodes",
                "name at least one node, or enable [mdns]"
            ));
        }
        if raw.mdns.enabled && !cfg!(feature = "mdns") {
            bail!(field_err(
                "mdns.enabled",
                "this weft-agent was built without the `mdns` feature"
            ));
        }
        let o = &raw.outbox;
        if o.events_max == 0 || o.events_max > 100_000_000 {
            bail!(field_err("outbox.events_max", "must be 1 to 100000000"));
        }
        if o.bytes_max < 1 << 16 {
            bail!(field_err("outbox.bytes_max", "must be at least 65536"));
        }
        if o.summaries_max == 0 || o.summaries_max > 1_000_000 {
            bail!(field_err("outbox.summaries_max", "must be 1 to 1000000"));
        }
        // Room for one summary of the largest rule (16 fields of 256-byte names).
        if o.summary_bytes_max < 1 << 16 {
            bail!(field_err(
                "outbox.summary_bytes_max",
                "must be at least 65536"
            ));
        }
        let stream = |field: &str, s: &str| {
            let name = StreamName::new(s.to_string()).map_err(|e| field_err(field, e))?;
            if name.is_system() {
                bail!(field_err(
                    field,
                    format!(
                        "{s} is a system stream (_weft.>): a device publishes application streams only"
                    )
                ));
            }
            Ok::<_, anyhow::Error>(name)
        };
        if let Some(i) = &raw.inputs.stdin {
            stream("inputs.stdin.stream", &i.stream)?;
            check_priority("inputs.stdin.priority", i.priority)?;
        }
        if let Some(h) = &raw.inputs.http {
            if !h.listen.ip().is_loopback() {
                bail!(field_err(
                    "inputs.http.listen",
                    format!(
                        "must be a loopback address (127.0.0.0/8 or ::1), got {}",
                        h.listen
                    )
                ));
            }
            if let Some(s) = &h.stream {
                stream("inputs.http.stream", s)?;
            }
            check_priority("inputs.http.priority", h.priority)?;
        }
        if raw.inputs.files.len() > 16 {
            bail!(field_err("inputs.files", "at most 16 followed files"));
        }
        for (i, f) in raw.inputs.files.iter().enumerate() {
            stream(&format!("inputs.files[{i}].stream"), &f.stream)?;
            check_priority(&format!("inputs.files[{i}].priority"), f.priority)?;
            if f.from != "end" && f.from != "start" {
                bail!(field_err(
                    &format!("inputs.files[{i}].from"),
                    format!("must be \"end\" or \"start\", got {:?}", f.from)
                ));
            }
        }
        if !matches!(
            raw.log.level.as_str(),
            "error" | "warn" | "info" | "debug" | "trace"
        ) {
            bail!(field_err(
                "log.level",
                "must be error, warn, info, debug or trace"
            ));
        }
        let resolve = |p: &Path| {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };
        let mut raw = raw;
        for f in &mut raw.inputs.files {
            f.path = resolve(&f.path);
        }
        Ok(Resolved {
            key_path: resolve(&raw.key),
            data_dir: resolve(&raw.data_dir),
            nodes,
            mdns_trusted,
            raw,
        })
    }
}

fn check_priority(field: &str, p: u8) -> anyhow::Result<()> {
    if p > 9 {
        bail!(field_err(field, format!("must be 0 to 9, got {p}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "till-7"
key = "device.key"
data_dir = "data"
[[nodes]]
addr = "127.0.0.1:7500"
key = "0101010101010101010101010101010101010101010101010101010101010101"
[inputs.stdin]
stream = "telemetry.till-7"
"#;

    #[test]
    fn a_good_config_resolves_and_errors_name_the_field() {
        let c = AgentConfig::parse(GOOD, Path::new("/etc/weft")).unwrap();
        assert_eq!(c.key_path, Path::new("/etc/weft/device.key"));
        assert_eq!(c.raw.outbox.overflow, Overflow::Refuse);
        let cases = [
            (GOOD.replace("0101", "zz01"), "nodes[0].key"),
            (
                GOOD.replace("telemetry.till-7", "a..b"),
                "inputs.stdin.stream",
            ),
            (
                GOOD.replace("telemetry.till-7", "_weft.void"),
                "inputs.stdin.stream",
            ),
            (
                format!("{GOOD}\n[outbox]\nevents_max = 0\n"),
                "outbox.events_max",
            ),
            (
                format!("{GOOD}\n[outbox]\noverflow = \"maybe\"\n"),
                "overflow",
            ),
            (
                format!("{GOOD}\n[outbox]\nsummaries_max = 0\n"),
                "outbox.summaries_max",
            ),
            (
                format!("{GOOD}\n[outbox]\nsummary_bytes_max = 4096\n"),
                "outbox.summary_bytes_max",
            ),
            (
                format!("{GOOD}\n[inputs.http]\nlisten = \"0.0.0.0:8700\"\n"),
                "inputs.http.listen",
            ),
            (format!("{GOOD}\nbogus = 1\n"), "bogus"),
        ];
        for (text, field) in cases {
            let err = format!(
                "{:#}",
                AgentConfig::parse(&text, Path::new(".")).unwrap_err()
            );
            assert!(err.contains(field), "{field}: {err}");
        }
    }
}
