//! The node's configuration file (`docs/config.md`): TOML, every field validated at start
//! with an error that names it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use serde::Deserialize;
use weft_fabric::StreamPattern;

/// A node's configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NodeConfig {
    /// Human-readable node name (logs, dashboards).
    pub(crate) name: String,
    /// Cloud region id, e.g. `aws:eu-west-1`.
    pub(crate) region: String,
    /// Cloud provider, e.g. `aws`.
    pub(crate) cloud: String,
    /// Jurisdiction code, e.g. `EU`.
    pub(crate) jurisdiction: String,
    /// Path of the node's Ed25519 identity key (from `weft keygen`), relative to the config
    /// file's directory unless absolute.
    pub(crate) key: PathBuf,
    /// Directory of the SQLite store, relative like `key`.
    pub(crate) data_dir: PathBuf,
    /// Listen addresses.
    pub(crate) listen: Listen,
    /// Mesh address other nodes reach this one at (defaults to `listen.mesh`).
    #[serde(default)]
    pub(crate) advertise: Option<SocketAddr>,
    /// Mesh addresses of nodes to join through.
    #[serde(default)]
    pub(crate) seeds: Vec<SocketAddr>,
    /// Hex public keys of the nodes allowed to connect (this node's own is implied).
    #[serde(default)]
    pub(crate) trusted_nodes: Vec<String>,
    /// Stream patterns this node stores and serves (others it only relays).
    #[serde(default = "default_streams")]
    pub(crate) streams: Vec<String>,
    /// HTTP principals: bearer token (by SHA-256) to principal and tenant.
    #[serde(default)]
    pub(crate) principals: Vec<Principal>,
    /// Limits.
    #[serde(default)]
    pub(crate) limits: Limits,
    /// Fault injection (off unless enabled).
    #[serde(default)]
    pub(crate) chaos: ChaosConfig,
    /// Logging.
    #[serde(default)]
    pub(crate) log: LogConfig,
    /// Find trusted nodes on the local network with mDNS (libp2p), in addition to seeds.
    #[serde(default)]
    pub(crate) mdns: bool,
    /// Priority classes of streams on busy links.
    #[serde(default)]
    pub(crate) priority: PriorityConfig,
    /// The policy bundle this node enforces (docs/policy.md), if any.
    #[serde(default)]
    pub(crate) policy: Option<PolicyConfig>,
    /// Keyed tables without a policy (docs/tables.md): with a policy in force, its stream
    /// rules' `conflict` decide instead.
    #[serde(default)]
    pub(crate) tables: Vec<TableConfig>,
    /// Retention of the audit log (`audit.sqlite` in the data directory).
    #[serde(default)]
    pub(crate) audit: AuditConfig,
    /// The edge port's devices and limits (`listen.edge`; docs/agent.md).
    #[serde(default)]
    pub(crate) edge: crate::edge::EdgeConfig,
    /// Egress transforms' node-local secrets (docs/policy.md §7).
    #[serde(default)]
    pub(crate) egress: EgressConfig,
}

/// Egress transforms' node-local secrets.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct EgressConfig {
    /// Hash keys by the name transforms give as `hash_key`: each a file (relative like
    /// `key`) whose bytes, trailing whitespace removed, are the key (16 to 1024 bytes; e.g.
    /// `openssl rand -hex 32`). Never in the policy bundle, which every node holds: give
    /// them to the nodes that take the transforms' sources in.
    pub(crate) hash_keys: BTreeMap<String, PathBuf>,
}

/// A stream pattern whose keyed events form tables, and their conflict strategy.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TableConfig {
    /// Stream pattern.
    pub(crate) pattern: String,
    /// `lww`, `multi-value`, `counter` or `set`.
    pub(crate) strategy: String,
}

/// How long the audit log keeps entries: both bounds apply.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct AuditConfig {
    /// Entries older than this many days are deleted (1 to [`AUDIT_RETENTION_DAYS_MAX`]).
    pub(crate) retention_days: u32,
    /// Beyond this many entries the oldest are deleted (1 to [`AUDIT_ENTRIES_MAX`]).
    pub(crate) max_entries: u64,
}

/// Longest audit retention accepted: ten years.
pub(crate) const AUDIT_RETENTION_DAYS_MAX: u32 = 3650;
/// Largest audit log accepted, in entries (entries are typically a few hundred bytes).
pub(crate) const AUDIT_ENTRIES_MAX: u64 = 100_000_000;

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            retention_days: 90,
            max_entries: 1_000_000,
        }
    }
}

/// Where the node's policy comes from and whom it trusts to sign it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PolicyConfig {
    /// Hex public keys of the operators allowed to sign bundles.
    pub(crate) operators: Vec<String>,
    /// Signatures of distinct operators a bundle needs.
    #[serde(default = "one")]
    pub(crate) threshold: usize,
    /// The signed bundle to enforce from the start (`weft policy sign`), relative like
    /// `key`. Optional: without it the node starts with no policy (or the newest bundle it
    /// applied before a restart) and takes bundles pushed through the fabric.
    #[serde(default)]
    pub(crate) bundle: Option<PathBuf>,
}

fn one() -> usize {
    1
}

/// Stream priority classes: when a peer's send queue backs up, messages of `latency`
/// streams (and mesh control traffic) go first, `bulk` streams (and anti-entropy) last,
/// every other stream in between.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct PriorityConfig {
    /// Stream patterns sent ahead of everything else.
    pub(crate) latency: Vec<String>,
    /// Stream patterns sent behind everything else.
    pub(crate) bulk: Vec<String>,
}

/// Where the node listens.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Listen {
    /// QUIC mesh (UDP).
    pub(crate) mesh: SocketAddr,
    /// HTTP API and dashboard (TCP).
    pub(crate) http: SocketAddr,
    /// Edge agents (QUIC, UDP; ALPN `weft-edge/1`), optional.
    #[serde(default)]
    pub(crate) edge: Option<SocketAddr>,
}

/// An HTTP principal.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Principal {
    /// Principal name recorded in the security context of what it publishes.
    pub(crate) name: String,
    /// Tenant.
    pub(crate) tenant: String,
    /// Hex SHA-256 of the bearer token (`weft keygen --client` prints it).
    pub(crate) token_sha256: String,
    /// May change fault injection rules (`POST /v1/chaos`).
    #[serde(default)]
    pub(crate) admin: bool,
}

/// Limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Limits {
    /// Most events stored.
    pub(crate) events_max: usize,
    /// Largest HTTP request body in bytes.
    pub(crate) http_body_max: usize,
    /// Most publishes waiting in the driver's queue; beyond it, 503 with Retry-After.
    pub(crate) publish_queue_max: usize,
    /// Most publish requests in progress at once (including those waiting for their ack);
    /// beyond it, 503 with Retry-After. Bounds the node's memory for acknowledgements.
    pub(crate) publishes_inflight_max: usize,
    /// Most bytes of HTTP publish bodies in progress at once (declared by Content-Length,
    /// `http_body_max` for a body that declares none), taken before the body is read and
    /// held until the answer; beyond it, 503 with Retry-After. Bounds the node's memory
    /// under overload (docs/performance.md).
    pub(crate) publish_bytes_inflight_max: usize,
    /// How long `ack=regions:N` waits for confirmations, in milliseconds.
    pub(crate) ack_timeout_ms: u64,
    /// Most events one read returns.
    pub(crate) read_limit_max: usize,
    /// Most concurrent SSE subscribers.
    pub(crate) subscribers_max: usize,
    /// Most concurrent SSE subscribers of one principal (readers without a token count as
    /// one): one client cannot take every `subscribers_max` slot.
    pub(crate) subscribers_per_principal_max: usize,
    /// Most store reads in progress at once (pages, event lookups, table reads, each SSE
    /// batch), and idle store readers kept: each may hold up to 8 MiB of envelopes (a page
    /// holds its slot until its answer is built). A read beyond it waits up to 5 s for a
    /// slot, then gets 503 `reads_busy` with Retry-After (SSE and the edge downlink wait
    /// on).
    pub(crate) reads_inflight_max: usize,
    /// Most durable subscriptions (saved cursors); beyond it a new one's position is not
    /// kept: 507 `cursors_full`.
    pub(crate) cursors_max: usize,
    /// Most durable subscriptions of one principal; beyond it a new one gets 507
    /// `cursors_full` (one principal cannot take the whole table).
    pub(crate) cursors_per_principal_max: usize,
    /// Most ranges of sequence numbers expired by stream retention that the store keeps
    /// (so that peers asking for them get a Skip), on disk and in memory (some 50 bytes
    /// each). Beyond it the oldest ranges are dropped: every origin keeps its newest, and
    /// this node no longer answers for the numbers dropped (docs/policy.md §6.3).
    pub(crate) expired_ranges_max: usize,
    /// Most stored rows one pass of an erase examines. An erase covering more (a
    /// principal with a million events) is finished pass by pass between the node's other
    /// work, what it covers hidden from every read meanwhile, instead of holding the
    /// node's driver for the whole removal (about 25 us an event).
    pub(crate) erase_pass_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            events_max: 50_000_000,
            http_body_max: 16 << 20,
            publish_queue_max: 4096,
            publishes_inflight_max: 8192,
            publish_bytes_inflight_max: 32 << 20,
            ack_timeout_ms: 5_000,
            read_limit_max: 10_000,
            subscribers_max: 1024,
            subscribers_per_principal_max: 256,
            reads_inflight_max: 8,
            cursors_max: 1024,
            cursors_per_principal_max: 64,
            expired_ranges_max: 1_000_000,
            erase_pass_max: crate::store::ERASE_PASS_MAX,
        }
    }
}

/// Fault injection.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ChaosConfig {
    /// Whether `POST /v1/chaos` may change link behaviour.
    #[serde(default)]
    pub(crate) enabled: bool,
    /// Rules applied from the start (same shape as the API's).
    #[serde(default)]
    pub(crate) rules: Vec<crate::chaos::Rule>,
    /// Added to the wall clock this node stamps its events' HLCs with, in milliseconds
    /// (negative: behind): a node whose clock is wrong, for tests and game days. Only the
    /// HLC sees it (and the drift bound checked against it); retention, audit times and
    /// everything else keep the host's clock. At most a day either way.
    #[serde(default)]
    pub(crate) clock_offset_ms: i64,
}

/// Largest `chaos.clock_offset_ms` either way: a day.
pub(crate) const CLOCK_OFFSET_MS_MAX: i64 = 86_400_000;

/// Logging.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct LogConfig {
    /// `text` or `json`.
    pub(crate) format: String,
    /// A tracing filter, e.g. `info` or `weft=debug` (RUST_LOG overrides it).
    pub(crate) level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: "text".into(),
            level: "info".into(),
        }
    }
}

/// The levels a log filter names.
const LOG_LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

/// Checks a log filter (`log.level`, or `RUST_LOG`, which overrides it): comma-separated
/// directives, each a level or `target=level`. tracing takes any bare word as a target,
/// so a typo (`verbose`, `warning`) made a filter that passed nothing but that target:
/// every log line silenced, the audit entries' included (an operator review).
pub(crate) fn check_log_filter(filter: &str) -> Result<(), String> {
    let levels = LOG_LEVELS.join(", ");
    if filter.trim().is_empty() {
        return Err(format!("is empty: name a level ({levels})"));
    }
    for directive in filter.split(',').map(str::trim) {
        let level = match directive.rsplit_once('=') {
            Some((target, level)) if !target.is_empty() => level,
            _ => directive,
        };
        if !LOG_LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
            return Err(format!(
                "{directive:?} in {filter:?} is not a level ({levels}) or target=level: a bare word would be taken as a target and silence every other log line"
            ));
        }
    }
    tracing_subscriber::EnvFilter::try_new(filter)
        .map(|_| ())
        .map_err(|e| format!("{filter:?}: {e}"))
}

fn default_streams() -> Vec<String> {
    vec![">".into()]
}

/// A validated configuration with resolved paths and parsed values.
#[derive(Debug, Clone)]
pub(crate) struct Resolved {
    pub(crate) raw: NodeConfig,
    pub(crate) key_path: PathBuf,
    pub(crate) data_dir: PathBuf,
    pub(crate) trusted: BTreeSet<[u8; 32]>,
    pub(crate) streams: Vec<StreamPattern>,
    pub(crate) tokens: Vec<([u8; 32], Principal)>,
    pub(crate) advertise: SocketAddr,
    pub(crate) priorities: crate::transport::Priorities,
    /// Operator trust and the initial bundle's path, when a policy is configured.
    pub(crate) policy: Option<(weft_policy::Trust, Option<PathBuf>)>,
    /// Tables declared by the config.
    pub(crate) tables: Vec<(StreamPattern, weft_fabric::table::Strategy)>,
    /// Egress transforms' hash keys (`egress.hash_keys`), read from their files.
    pub(crate) hash_keys: weft_policy::HashKeys,
}

fn field_err(field: &str, what: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("config field `{field}`: {what}")
}

/// Parses 64 hex digits into 32 bytes.
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

impl NodeConfig {
    /// Settings the node accepts but that do nothing in this configuration (or do less than
    /// they seem to), each with why: `weft check-config` lists them as warnings and the
    /// node logs them at start.
    pub(crate) fn ignored_settings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.streams.is_empty() {
            out.push(
                "`streams = []`: this node stores and serves no stream, it only relays \
                 (leave the field out to store every stream)"
                    .to_string(),
            );
        }
        let devices = self.edge.devices.len();
        if devices > 0 && self.listen.edge.is_none() {
            out.push(format!(
                "[[edge.devices]] lists {devices} device(s) but `listen.edge` is not set: \
                 there is no edge port for them to connect to"
            ));
        }
        if self.policy.is_some() {
            if devices > 0 {
                out.push(format!(
                    "[[edge.devices]] ({devices}) is not used with a [policy]: once a bundle \
                     is in force its device enrollment decides which devices connect, and \
                     until then devices are refused"
                ));
            }
            if !self.tables.is_empty() {
                out.push(format!(
                    "[[tables]] ({}) is superseded by a [policy]: once a bundle is in force \
                     its stream rules (`conflict`) decide which streams are tables; until \
                     then these are built, and dropped when it comes",
                    self.tables.len()
                ));
            }
        }
        out
    }

    /// Reads and validates `path`.
    pub(crate) fn load(path: &Path) -> anyhow::Result<Resolved> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config {}", path.display()))?;
        Self::parse(&text, path.parent().unwrap_or(Path::new(".")))
            .with_context(|| format!("config {}", path.display()))
    }

    /// Parses and validates config text; relative paths resolve against `base`.
    pub(crate) fn parse(text: &str, base: &Path) -> anyhow::Result<Resolved> {
        let de = toml::Deserializer::parse(text).map_err(|e| anyhow::anyhow!("{e}"))?;
        let raw: NodeConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if path == "." {
                // A top-level field: the path would read "`.`", and the TOML span points
                // at the file's first line, which is not where anything is wrong.
                anyhow::anyhow!(
                    "config, top level (before any [table]): {}",
                    inner.message()
                )
            } else {
                anyhow::anyhow!("config field `{path}`: {inner}")
            }
        })?;
        raw.resolve(base)
    }

    /// The listeners and the advertised address, as the node will use them: peers dial the
    /// advertised mesh address from SWIM gossip, so it must name this host (an unspecified
    /// one, `0.0.0.0` or `::`, dials the dialer's own host: every peer then finds another
    /// key there); the mesh and edge ports are both UDP (QUIC), so they must not share a
    /// port on overlapping addresses (the second bind would fail at start with a bare
    /// "address in use").
    fn check_addresses(&self) -> anyhow::Result<()> {
        let mesh = self.listen.mesh;
        let (field, advertise) = match self.advertise {
            Some(a) => ("advertise", a),
            None => ("listen.mesh", mesh),
        };
        if advertise.ip().is_unspecified() || advertise.port() == 0 {
            bail!(field_err(
                field,
                format!(
                    "{advertise} is not an address peers can dial ({}); set `advertise` to this host's mesh address, e.g. \"10.0.0.5:{}\"",
                    if advertise.port() == 0 {
                        "port 0"
                    } else {
                        "an unspecified IP"
                    },
                    if mesh.port() == 0 { 7400 } else { mesh.port() }
                )
            ));
        }
        if let Some(edge) = self.listen.edge
            && edge.port() != 0
            && edge.port() == mesh.port()
            && (edge.ip() == mesh.ip() || edge.ip().is_unspecified() || mesh.ip().is_unspecified())
        {
            bail!(field_err(
                "listen.edge",
                format!(
                    "{edge} overlaps listen.mesh {mesh}: both are UDP (QUIC) listeners and cannot share a port; give the edge port its own (the shipped configs use 7500)"
                )
            ));
        }
        Ok(())
    }

    fn resolve(self, base: &Path) -> anyhow::Result<Resolved> {
        for (field, value, max) in [
            ("name", &self.name, 128),
            ("region", &self.region, 64),
            ("cloud", &self.cloud, 32),
            (
                "jurisdiction",
                &self.jurisdiction,
                weft_fabric::limits::JURISDICTION_LEN_MAX,
            ),
        ] {
            if value.is_empty() || value.len() > max {
                bail!(field_err(
                    field,
                    format!("must be 1 to {max} bytes, got {}", value.len())
                ));
            }
        }
        weft_fabric::Jurisdiction::new(self.jurisdiction.clone())
            .map_err(|e| field_err("jurisdiction", e))?;
        self.check_addresses()?;
        let mut trusted = BTreeSet::new();
        for (i, k) in self.trusted_nodes.iter().enumerate() {
            trusted.insert(hex32(&format!("trusted_nodes[{i}]"), k)?);
        }
        let mut streams = Vec::new();
        for (i, p) in self.streams.iter().enumerate() {
            streams.push(
                StreamPattern::new(p.clone())
                    .map_err(|e| field_err(&format!("streams[{i}]"), e))?,
            );
        }
        let patterns = |field: &str, list: &[String]| -> anyhow::Result<Vec<StreamPattern>> {
            list.iter()
                .enumerate()
                .map(|(i, p)| {
                    StreamPattern::new(p.clone())
                        .map_err(|e| field_err(&format!("{field}[{i}]"), e))
                })
                .collect()
        };
        let priorities = crate::transport::Priorities {
            latency: patterns("priority.latency", &self.priority.latency)?,
            bulk: patterns("priority.bulk", &self.priority.bulk)?,
        };
        let policy = match &self.policy {
            None => None,
            Some(p) => {
                let mut keys = Vec::new();
                for (i, k) in p.operators.iter().enumerate() {
                    keys.push(hex32(&format!("policy.operators[{i}]"), k)?);
                }
                let trust = weft_policy::Trust::new(keys, p.threshold)
                    .map_err(|e| field_err("policy", e))?;
                Some((trust, p.bundle.clone()))
            }
        };
        let mut tokens: Vec<([u8; 32], Principal)> = Vec::new();
        for (i, p) in self.principals.iter().enumerate() {
            if p.name.is_empty() || p.name.len() > weft_fabric::limits::NAME_LEN_MAX {
                bail!(field_err(
                    &format!("principals[{i}].name"),
                    "must be 1 to 128 bytes"
                ));
            }
            if p.tenant.is_empty() || p.tenant.len() > weft_fabric::limits::NAME_LEN_MAX {
                bail!(field_err(
                    &format!("principals[{i}].tenant"),
                    "must be 1 to 128 bytes"
                ));
            }
            let hash = hex32(&format!("principals[{i}].token_sha256"), &p.token_sha256)?;
            // One token signs in as one principal: a second principal with the same hash
            // would sign in as whichever the lookup keeps (an admin's token given to a
            // service, say), and two principals of one name would be one in the audit log
            // and the security context of what they publish.
            for (j, (other_hash, other)) in tokens.iter().enumerate() {
                if *other_hash == hash {
                    bail!(field_err(
                        &format!("principals[{i}].token_sha256"),
                        format!(
                            "principals {:?} (principals[{j}]) and {:?} (principals[{i}]) have the same token_sha256: each principal needs a token of its own (weft keygen --client)",
                            other.name, p.name
                        )
                    ));
                }
                if other.name == p.name {
                    bail!(field_err(
                        &format!("principals[{i}].name"),
                        format!(
                            "principals[{j}] and principals[{i}] are both named {:?}: names must be unique",
                            p.name
                        )
                    ));
                }
            }
            tokens.push((hash, p.clone()));
        }
        let l = &self.limits;
        for (field, value) in [
            ("limits.events_max", l.events_max),
            ("limits.http_body_max", l.http_body_max),
            ("limits.publish_queue_max", l.publish_queue_max),
            ("limits.publishes_inflight_max", l.publishes_inflight_max),
            (
                "limits.publish_bytes_inflight_max",
                l.publish_bytes_inflight_max,
            ),
            ("limits.read_limit_max", l.read_limit_max),
            ("limits.subscribers_max", l.subscribers_max),
            (
                "limits.subscribers_per_principal_max",
                l.subscribers_per_principal_max,
            ),
            ("limits.reads_inflight_max", l.reads_inflight_max),
            ("limits.cursors_max", l.cursors_max),
            (
                "limits.cursors_per_principal_max",
                l.cursors_per_principal_max,
            ),
            ("limits.expired_ranges_max", l.expired_ranges_max),
            ("limits.erase_pass_max", l.erase_pass_max),
        ] {
            if value == 0 {
                bail!(field_err(field, "must be at least 1"));
            }
        }
        if l.ack_timeout_ms == 0 {
            bail!(field_err("limits.ack_timeout_ms", "must be at least 1"));
        }
        if l.publish_bytes_inflight_max < l.http_body_max {
            bail!(field_err(
                "limits.publish_bytes_inflight_max",
                format!(
                    "must be at least limits.http_body_max ({} bytes), or a largest body could never be taken; got {}",
                    l.http_body_max, l.publish_bytes_inflight_max
                )
            ));
        }
        // An edge batch frame takes its size from the same budget before it is read
        // (`edge.rs`): a budget under the largest frame would answer such a batch `busy`
        // for ever, and the agent's drain would stall behind it.
        if self.listen.edge.is_some()
            && l.publish_bytes_inflight_max < weft_fabric::edge::FRAME_LEN_MAX
        {
            bail!(field_err(
                "limits.publish_bytes_inflight_max",
                format!(
                    "must be at least the edge port's largest batch frame (FRAME_LEN_MAX, {} bytes) when listen.edge is set, or such a batch could never be taken; got {}",
                    weft_fabric::edge::FRAME_LEN_MAX,
                    l.publish_bytes_inflight_max
                )
            ));
        }
        // Semaphores hold these as permits: past their bound the node would panic at start.
        for (field, value) in [
            ("limits.subscribers_max", l.subscribers_max),
            ("limits.publishes_inflight_max", l.publishes_inflight_max),
            ("limits.reads_inflight_max", l.reads_inflight_max),
        ] {
            if value > tokio::sync::Semaphore::MAX_PERMITS {
                bail!(field_err(
                    field,
                    format!(
                        "is too large (at most {})",
                        tokio::sync::Semaphore::MAX_PERMITS
                    )
                ));
            }
        }
        if l.publish_bytes_inflight_max / 1024 > tokio::sync::Semaphore::MAX_PERMITS {
            bail!(field_err(
                "limits.publish_bytes_inflight_max",
                "is too large (at most about 2 PiB)"
            ));
        }
        if self.audit.retention_days == 0 || self.audit.retention_days > AUDIT_RETENTION_DAYS_MAX {
            bail!(field_err(
                "audit.retention_days",
                format!(
                    "must be 1 to {AUDIT_RETENTION_DAYS_MAX} (days), got {}",
                    self.audit.retention_days
                )
            ));
        }
        if self.audit.max_entries == 0 || self.audit.max_entries > AUDIT_ENTRIES_MAX {
            bail!(field_err(
                "audit.max_entries",
                format!(
                    "must be 1 to {AUDIT_ENTRIES_MAX}, got {}",
                    self.audit.max_entries
                )
            ));
        }
        crate::edge::check_config(&self.edge)?;
        if !matches!(self.log.format.as_str(), "text" | "json") {
            bail!(field_err(
                "log.format",
                format!("must be \"text\" or \"json\", got {:?}", self.log.format)
            ));
        }
        if let Err(e) = check_log_filter(&self.log.level) {
            bail!(field_err("log.level", e));
        }
        if !self.chaos.enabled && !self.chaos.rules.is_empty() {
            bail!(field_err(
                "chaos.rules",
                "set chaos.enabled = true to use fault injection"
            ));
        }
        if !self.chaos.enabled && self.chaos.clock_offset_ms != 0 {
            bail!(field_err(
                "chaos.clock_offset_ms",
                "set chaos.enabled = true to use fault injection"
            ));
        }
        if self.chaos.clock_offset_ms.unsigned_abs() > CLOCK_OFFSET_MS_MAX.unsigned_abs() {
            bail!(field_err(
                "chaos.clock_offset_ms",
                format!(
                    "must be between -{CLOCK_OFFSET_MS_MAX} and {CLOCK_OFFSET_MS_MAX} (a day), got {}",
                    self.chaos.clock_offset_ms
                )
            ));
        }
        // The checks `POST /v1/chaos` applies: a negative delay from the config panicked
        // the RTT loop at start.
        for (i, rule) in self.chaos.rules.iter().enumerate() {
            if let Err(e) = rule.check() {
                bail!(field_err(&format!("chaos.rules[{i}]"), e));
            }
        }
        let resolve = |p: &Path| {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };
        let mut tables = Vec::new();
        for (i, t) in self.tables.iter().enumerate() {
            let pattern = StreamPattern::new(t.pattern.clone())
                .map_err(|e| field_err(&format!("tables[{i}].pattern"), e))?;
            let strategy = crate::tables::parse_strategy(&t.strategy).ok_or_else(|| {
                field_err(
                    &format!("tables[{i}].strategy"),
                    format!(
                        "{:?} is not a strategy: lww, multi-value, counter or set",
                        t.strategy
                    ),
                )
            })?;
            tables.push((pattern, strategy));
        }
        let mut hash_keys = weft_policy::HashKeys::new();
        for (name, path) in &self.egress.hash_keys {
            let field = format!("egress.hash_keys.{name}");
            let path = resolve(path);
            let mut key = std::fs::read(&path)
                .map_err(|e| field_err(&field, format!("reading {}: {e}", path.display())))?;
            while key.last().is_some_and(u8::is_ascii_whitespace) {
                key.pop();
            }
            hash_keys
                .insert(name, key)
                .map_err(|e| field_err(&field, format!("{}: {e}", path.display())))?;
        }
        Ok(Resolved {
            hash_keys,
            tables,
            key_path: resolve(&self.key),
            data_dir: resolve(&self.data_dir),
            advertise: self.advertise.unwrap_or(self.listen.mesh),
            priorities,
            policy: policy.map(|(trust, path)| (trust, path.map(|p| resolve(&p)))),
            trusted,
            streams,
            tokens,
            raw: self,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "eu-1"
region = "aws:eu-west-1"
cloud = "aws"
jurisdiction = "EU"
key = "eu-1.key"
data_dir = "data/eu-1"
seeds = ["127.0.0.2:7400"]
trusted_nodes = ["0101010101010101010101010101010101010101010101010101010101010101"]
[listen]
mesh = "127.0.0.1:7400"
http = "127.0.0.1:8400"
"#;

    #[test]
    fn a_good_config_resolves_paths_and_defaults() {
        let c = NodeConfig::parse(GOOD, Path::new("/etc/weft")).unwrap();
        assert_eq!(c.key_path, Path::new("/etc/weft/eu-1.key"));
        assert_eq!(c.data_dir, Path::new("/etc/weft/data/eu-1"));
        assert_eq!(c.advertise.to_string(), "127.0.0.1:7400");
        assert_eq!(c.trusted.len(), 1);
        assert_eq!(c.streams.len(), 1);
        assert_eq!(c.raw.limits.ack_timeout_ms, 5_000);
    }

    /// Hash keys are read at start from their files (relative like `key`, trailing
    /// whitespace removed); a missing, short or badly named one stops the node, naming the
    /// field and the limit.
    #[test]
    fn hash_keys_are_read_from_their_files_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("good.key"), "0123456789abcdef0123\n").unwrap();
        std::fs::write(dir.path().join("short.key"), "0123456789abcde\n\n").unwrap();
        let with = |entries: &str| format!("{GOOD}\n[egress.hash_keys]\n{entries}\n");
        let c = NodeConfig::parse(&with("orders = \"good.key\""), dir.path()).unwrap();
        assert_eq!(c.hash_keys.names().collect::<Vec<_>>(), ["orders"]);
        assert_eq!(format!("{:?}", c.hash_keys), "{\"orders\"}");
        for (entries, want) in [
            ("orders = \"short.key\"", "HASH_KEY_LEN_MIN"),
            ("orders = \"absent.key\"", "reading"),
            ("\"or ders\" = \"good.key\"", "letters, digits"),
        ] {
            let err = format!(
                "{:#}",
                NodeConfig::parse(&with(entries), dir.path()).unwrap_err()
            );
            assert!(
                err.contains("egress.hash_keys.") && err.contains(want),
                "{entries}: {err}"
            );
        }
    }

    /// Fault-injection rules in the config are checked as `POST /v1/chaos` checks them (a
    /// negative delay passed and panicked the node's RTT loop; a loss of 2 passed).
    #[test]
    fn log_filters_name_levels() {
        for good in ["info", "WARN", "weft=debug,info", "weft::mesh=trace", "off"] {
            assert_eq!(check_log_filter(good), Ok(()), "{good}");
        }
        for bad in ["verbose", "warning", "weft", "info,weft=loud", "", " , "] {
            assert!(check_log_filter(bad).is_err(), "{bad:?}");
        }
        let e = check_log_filter("verbose").unwrap_err();
        assert!(e.contains("silence") && e.contains("trace, debug"), "{e}");
    }

    #[test]
    fn chaos_rules_in_the_config_are_checked_as_the_api_checks_them() {
        let with =
            |rule: &str| format!("{GOOD}\n[chaos]\nenabled = true\n[[chaos.rules]]\n{rule}\n");
        assert!(NodeConfig::parse(&with("peer = \"*\"\ndelay_ms = 5.0"), Path::new("/")).is_ok());
        for (rule, want) in [
            (
                "peer = \"*\"\ndelay_ms = -5.0",
                "delay_ms: must be between 0 and 60000, got -5",
            ),
            (
                "peer = \"*\"\nloss = 2.0",
                "loss: must be between 0 and 1, got 2",
            ),
            ("peer = \"\"", "peer: must be"),
        ] {
            let err = format!(
                "{:#}",
                NodeConfig::parse(&with(rule), Path::new("/")).unwrap_err()
            );
            assert!(
                err.contains("chaos.rules[0]") && err.contains(want),
                "{rule}: {err}"
            );
        }
    }

    /// Settings the node accepts but ignores in a configuration are named, with why.
    #[test]
    fn settings_that_do_nothing_are_named() {
        let parse = |text: &str| NodeConfig::parse(text, Path::new("/")).unwrap().raw;
        assert!(parse(GOOD).ignored_settings().is_empty(), "{GOOD}");
        let relay = parse(&format!("streams = []\n{GOOD}")).ignored_settings();
        assert!(
            relay.len() == 1 && relay[0].contains("only relays"),
            "{relay:?}"
        );
        let key = "02".repeat(32);
        let devices =
            format!("{GOOD}\n[[edge.devices]]\nname = \"d\"\ntenant = \"t\"\nkey = \"{key}\"\n");
        let w = parse(&devices).ignored_settings();
        assert!(
            w.len() == 1 && w[0].contains("`listen.edge` is not set"),
            "{w:?}"
        );
        let with_edge = devices.replace(
            "http = \"127.0.0.1:8400\"",
            "http = \"127.0.0.1:8400\"\nedge = \"127.0.0.1:7500\"",
        );
        assert!(parse(&with_edge).ignored_settings().is_empty());
        // With a policy, the bundle decides devices and tables.
        let policed = format!(
            "{with_edge}\n[policy]\noperators = [\"{}\"]\n\
             [[tables]]\npattern = \"prefs.>\"\nstrategy = \"lww\"\n",
            "03".repeat(32)
        );
        let w = parse(&policed).ignored_settings();
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].contains("[[edge.devices]] (1) is not used"), "{w:?}");
        assert!(w[1].contains("[[tables]] (1) is superseded"), "{w:?}");
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (GOOD.replace("aws:eu-west-1", ""), "`region`"),
            (GOOD.replace("127.0.0.1:8400", "nope"), "listen.http"),
            (
                GOOD.replace(
                    "0101010101010101010101010101010101010101010101010101010101010101",
                    "zz",
                ),
                "trusted_nodes[0]",
            ),
            (
                format!("{GOOD}\n[limits]\nevents_max = 0\n"),
                "limits.events_max",
            ),
            // Past a semaphore's bound the node panicked at start.
            (
                format!("{GOOD}\n[limits]\nsubscribers_max = 9223372036854775807\n"),
                "limits.subscribers_max",
            ),
            (
                format!("{GOOD}\n[limits]\nreads_inflight_max = 0\n"),
                "limits.reads_inflight_max",
            ),
            (
                format!("{GOOD}\n[limits]\nreads_inflight_max = 9223372036854775807\n"),
                "limits.reads_inflight_max",
            ),
            (
                format!(
                    "{GOOD}\n[limits]\nhttp_body_max = 2048\npublish_bytes_inflight_max = 1024\n"
                ),
                "limits.publish_bytes_inflight_max",
            ),
            // With an edge port: at least its largest batch frame (4 MiB).
            (
                format!(
                    "{}\n[limits]\nhttp_body_max = 1024\npublish_bytes_inflight_max = 1048576\n",
                    GOOD.replace(
                        "http = \"127.0.0.1:8400\"",
                        "http = \"127.0.0.1:8400\"\nedge = \"127.0.0.1:7500\""
                    )
                ),
                "FRAME_LEN_MAX",
            ),
            // Peers would dial 0.0.0.0, i.e. their own host.
            (
                GOOD.replace("mesh = \"127.0.0.1:7400\"", "mesh = \"0.0.0.0:7400\""),
                "`listen.mesh`: 0.0.0.0:7400 is not an address peers can dial",
            ),
            (
                format!("advertise = \"[::]:7400\"\n{GOOD}"),
                "`advertise`: [::]:7400 is not an address peers can dial",
            ),
            (format!("advertise = \"10.0.0.5:0\"\n{GOOD}"), "(port 0)"),
            // The mesh and edge ports are both UDP.
            (
                GOOD.replace(
                    "http = \"127.0.0.1:8400\"",
                    "http = \"127.0.0.1:8400\"\nedge = \"0.0.0.0:7400\"",
                ),
                "`listen.edge`: 0.0.0.0:7400 overlaps listen.mesh 127.0.0.1:7400",
            ),
            // A missing top-level field said "config field `.`" and pointed at line 1.
            (
                GOOD.replacen("name = \"eu-1\"\n", "", 1),
                "config, top level (before any [table]): missing field `name`",
            ),
            (format!("{GOOD}\n[log]\nformat = \"xml\"\n"), "log.format"),
            (format!("{GOOD}\n[log]\nlevel = \"verbose\"\n"), "log.level"),
            (
                format!("{GOOD}\n[log]\nlevel = \"weft=warning\"\n"),
                "log.level",
            ),
            (format!("{GOOD}\n[log]\nlevel = \"\"\n"), "log.level"),
            (
                format!("{GOOD}\n[audit]\nretention_days = 0\n"),
                "audit.retention_days",
            ),
            (
                format!("{GOOD}\n[audit]\nmax_entries = 0\n"),
                "audit.max_entries",
            ),
            (
                format!("{GOOD}\n[audit]\nretention_days = 99999\n"),
                "audit.retention_days",
            ),
            (format!("{GOOD}\n[audit]\nkeep = 1\n"), "audit.keep"),
            (
                format!("{GOOD}\n[edge]\nbatch_len_max = 0\n"),
                "edge.batch_len_max",
            ),
            (
                format!("{GOOD}\n[[edge.devices]]\nname = \"d\"\ntenant = \"t\"\nkey = \"zz\"\n"),
                "edge.devices[0].key",
            ),
            (
                format!(
                    "{GOOD}\n[[edge.devices]]\nname = \"d\"\ntenant = \"t\"\nkey = \"{k}\"\n[[edge.devices]]\nname = \"e\"\ntenant = \"t\"\nkey = \"{k}\"\n",
                    k = "ab".repeat(32)
                ),
                "edge.devices[1].key",
            ),
            (
                format!(
                    "{GOOD}\n[[edge.devices]]\nname = \"d\"\ntenant = \"t\"\nkey = \"{}\"\n[[edge.devices]]\nname = \"d\"\ntenant = \"t\"\nkey = \"{}\"\n",
                    "ab".repeat(32),
                    "cd".repeat(32)
                ),
                "edge.devices[1].name",
            ),
            (format!("{GOOD}\nbogus = 1\n"), "bogus"),
            // One token, two principals: the token would sign in as either.
            (
                format!(
                    "{GOOD}\n[[principals]]\nname = \"admin\"\ntenant = \"ops\"\ntoken_sha256 = \"{h}\"\nadmin = true\n[[principals]]\nname = \"orders-svc\"\ntenant = \"shop\"\ntoken_sha256 = \"{h}\"\n",
                    h = "ab".repeat(32)
                ),
                "principals \"admin\" (principals[0]) and \"orders-svc\" (principals[1]) have the same token_sha256",
            ),
            (
                format!(
                    "{GOOD}\n[[principals]]\nname = \"svc\"\ntenant = \"a\"\ntoken_sha256 = \"{}\"\n[[principals]]\nname = \"svc\"\ntenant = \"b\"\ntoken_sha256 = \"{}\"\n",
                    "ab".repeat(32),
                    "cd".repeat(32)
                ),
                "principals[0] and principals[1] are both named \"svc\"",
            ),
            (
                GOOD.replace("data_dir", "streams = [\"a..b\"]\ndata_dir"),
                "streams[0]",
            ),
            (
                GOOD.replace("name = \"eu-1\"", "name = \"eu-1\"\nmdns = 1"),
                "mdns",
            ),
        ];
        for (text, field) in cases {
            let err = format!(
                "{:#}",
                NodeConfig::parse(&text, Path::new(".")).unwrap_err()
            );
            assert!(err.contains(field), "{field}: {err}");
        }
    }
}
