//! `weft demo`: a local multi-region mesh of real `weft node` processes with the measured
//! inter-region latencies injected, an edge agent for a device enrolled in the sample
//! policy, a sample workload, and a printout of what to look at. Ctrl-C (or SIGTERM,
//! SIGHUP, or `--duration`) stops every node and the agent and removes the demo's
//! temporary directory.
//!
//! Each node is this same binary re-executed as `weft node --config ...`, and the agent as
//! `weft agent-run --config ...` (the `weft-agent` library, the code of the `weft-agent`
//! binary, with its own SQLite outbox), each in its own process group, with keys and
//! configs generated into a fresh directory under the system temp dir. Latency comes from
//! each node's fault injection (`chaos` in docs/config.md): every node delays what it sends
//! to each other region by half the measured round-trip time from `sim/data/region-rtt.csv`
//! (see `crate::regions`). The agent runs on loopback too; its choice of node follows the
//! measured RTTs through `rtt_bias_ms` (see [`agent_config_text`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::os::unix::fs::DirBuilderExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};

/// The demo's nodes: (name, region id). Four AWS regions on four continents whose six
/// pairs all have a measured RTT in the catalog (a test checks it), so no latency is made
/// up. Other clouds' regions lack measurements to some of these.
const NODES: [(&str, &str); 4] = [
    ("eu-1", "aws:eu-west-1"),
    ("us-1", "aws:us-east-1"),
    ("ap-1", "aws:ap-northeast-1"),
    ("sa-1", "aws:sa-east-1"),
];
/// Node `i` serves HTTP (TCP) on `base_port + i`, its edge port (QUIC, UDP) on `base_port +
/// EDGE_PORT_OFFSET + i` and the QUIC mesh (UDP) on `base_port + MESH_PORT_OFFSET + i`; the
/// agent's local HTTP input (TCP) is on `base_port + AGENT_HTTP_OFFSET`, a number no other
/// port of the demo uses (TCP or UDP). The demo uses ports base_port .. base_port +
/// PORT_SPAN.
const MESH_PORT_OFFSET: u16 = 10;
const EDGE_PORT_OFFSET: u16 = 4;
const AGENT_HTTP_OFFSET: u16 = EDGE_PORT_OFFSET + NODES.len() as u16;
const PORT_SPAN: u16 = MESH_PORT_OFFSET + NODES.len() as u16;
const _: () = assert!(EDGE_PORT_OFFSET + NODES.len() as u16 <= MESH_PORT_OFFSET);
const _: () = assert!(AGENT_HTTP_OFFSET < MESH_PORT_OFFSET);
/// The demo's device: its name (the policy's principal), where it sits, the stream it
/// publishes to and the patterns the policy enrolls it for.
const DEVICE: &str = "sensor-dublin-1";
const DEVICE_REGION: &str = "aws:eu-west-1";
const DEVICE_STREAM: &str = "telemetry.devices.sensor-dublin-1.readings";
const DEVICE_STREAMS: &str = "telemetry.devices.sensor-dublin-1.>";
/// The default `--base-port`: the CLI's default `--node` is `http://127.0.0.1:8400` (the
/// shipped configs' `listen.http`), so `weft peers` and friends reach the first demo node
/// without flags.
pub(crate) const BASE_PORT_DEFAULT: u16 = 8400;
/// Uniform jitter added to every injected one-way delay, in milliseconds (as the cluster
/// tests do): enough to keep RTT samples from being identical, small against the RTTs.
const JITTER_MS: f64 = 1.0;
/// How long the nodes get to find each other. Four nodes on loopback mesh in about two
/// seconds; a debug build on a loaded 2-core machine is several times slower.
const MESH_WAIT_MAX: Duration = Duration::from_secs(60);
/// How long a node gets to stop after SIGTERM before it is killed: its driver gets 5 s to
/// finish the last commit (`serve.rs`), plus HTTP shutdown.
const STOP_WAIT_MAX: Duration = Duration::from_secs(10);
/// The workload's period per node: one event on each of its two streams per tick, i.e.
/// 2 events/s per stream and 4 events/s per node.
const PUBLISH_INTERVAL: Duration = Duration::from_millis(500);
/// How often the demo prints a status line.
const STATUS_INTERVAL: Duration = Duration::from_secs(10);
/// Timeout of one HTTP request of the demo to a node (above the nodes' 5 s ack timeout).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Most acknowledgement latencies kept per node between two status lines (the workload
/// produces 20; the bound only matters if status lines stall).
const ACK_SAMPLES_MAX: usize = 1024;
/// The period of the device's readings (handed to the agent's local HTTP input).
const READING_INTERVAL: Duration = Duration::from_millis(500);
/// Lines of a node's log shown when it fails.
const LOG_TAIL_LINES: usize = 20;

/// What `weft demo` was asked for.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    /// Stop by itself after this many seconds of workload.
    pub(crate) duration: Option<u64>,
    /// First port of the range the demo uses (see [`MESH_PORT_OFFSET`]).
    pub(crate) base_port: u16,
}

/// Writes a line to standard output at once (the demo runs for minutes; its output cannot
/// wait for the end like the other commands'). A closed stdout is not an error.
macro_rules! say {
    ($($arg:tt)*) => {{
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, $($arg)*);
        let _ = out.flush();
    }};
}

/// `weft node --exit-with-parent PID` (hidden; `weft demo` passes it): the node asks the
/// kernel for SIGTERM when its parent dies, so the demo's nodes stop even if the demo is
/// killed with SIGKILL and cannot stop them itself (its process group does not help there:
/// nothing signals a group when its creator dies). The kernel sends the signal when the
/// parent *thread* exits, which is why the demo starts its nodes from its main thread.
///
/// The prctl runs in the child itself, first thing, rather than between fork and exec
/// (`pre_exec`), because the workspace forbids `unsafe` code and `nix` offers it safely;
/// checking the parent's pid afterwards closes the window where the demo died before the
/// prctl took effect.
pub(crate) fn exit_with_parent(parent: u32) -> anyhow::Result<()> {
    nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).context("prctl(PR_SET_PDEATHSIG)")?;
    let now = std::os::unix::process::parent_id();
    if now != parent {
        bail!("the process that started this process (pid {parent}) has exited (parent now {now})");
    }
    Ok(())
}

/// One demo node.
struct DemoNode {
    name: &'static str,
    region: &'static str,
    jurisdiction: String,
    http: String,
    edge: String,
    mesh: String,
    key_hex: String,
    config: PathBuf,
    log: PathBuf,
}

/// The demo's edge agent.
struct DemoAgent {
    /// The device key (hex), enrolled in the policy.
    key_hex: String,
    /// Its local HTTP input (CloudEvents in, `GET /v1/status`).
    http: String,
    config: PathBuf,
    log: PathBuf,
}

impl DemoNode {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }
}

/// The running demo: its directory and child processes. Dropping it kills whatever still
/// runs and removes the directory, so an error or a panic leaves nothing behind either.
struct Demo {
    dir: PathBuf,
    nodes: Vec<DemoNode>,
    agent: DemoAgent,
    /// The nodes' processes (index `i` is node `i`), then the agent's.
    children: Vec<Option<Child>>,
    token: String,
    token_file: PathBuf,
}

impl Drop for Demo {
    fn drop(&mut self) {
        for slot in &mut self.children {
            if let Some(mut c) = slot.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs the demo until Ctrl-C, SIGTERM, SIGHUP or `--duration`.
pub(crate) fn run(opts: &Options) -> anyhow::Result<ExitCode> {
    if opts.base_port < 1024 || opts.base_port > u16::MAX - PORT_SPAN {
        bail!(
            "--base-port must be 1024 to {} (the demo uses {PORT_SPAN} ports from it), got {}",
            u16::MAX - PORT_SPAN,
            opts.base_port
        );
    }
    if opts.duration == Some(0) {
        bail!("--duration must be at least 1 second");
    }
    let exe = std::env::current_exe().context("finding this program's path")?;
    remove_stale_dirs();
    let mut demo = prepare(opts.base_port)?;
    // The runtime runs on this (main) thread only: the nodes are started from it, and
    // their parent-death signal fires when the thread that started them exits.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    say!(
        "Weft demo: {} real `weft node` processes, one per region, and an edge agent, on 127.0.0.1 (generated keys and configs in {})",
        demo.nodes.len(),
        demo.dir.display()
    );
    for i in 0..demo.nodes.len() {
        demo.start(&exe, i)?;
    }
    // The agent retries its candidates with back-off until their edge ports answer.
    demo.start_agent(&exe)?;
    let outcome = rt.block_on(demo.main(&exe, opts.duration));
    say!("stopping the nodes and the edge agent ...");
    let stopped = demo.stop();
    let dir = demo.dir.clone();
    // Kills anything still running and removes the directory.
    drop(demo);
    // The run's own failure (a node or the agent exited) is the one to report; a stop that
    // also went wrong (a node that had to be killed) is said beside it, not instead of it.
    let (nodes, agent) = match (stopped, &outcome) {
        (Ok(stopped), _) => stopped,
        (Err(e), Err(_)) => {
            eprintln!("weft demo: while stopping after the failure below: {e:#}");
            return outcome;
        }
        (Err(e), Ok(_)) => return Err(e),
    };
    say!(
        "stopped {nodes} nodes{} (SIGTERM and a clean shutdown each) and removed {}; nothing is left running",
        if agent { " and the edge agent" } else { "" },
        dir.display()
    );
    outcome
}

/// The signals that stop the demo.
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    /// `None` when the demo was started with SIGHUP ignored (`nohup`): it keeps ignoring it.
    hup: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn new() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            int: signal(SignalKind::interrupt()).context("SIGINT handler")?,
            term: signal(SignalKind::terminate()).context("SIGTERM handler")?,
            hup: if crate::serve::sighup_ignored() {
                None
            } else {
                Some(signal(SignalKind::hangup()).context("SIGHUP handler")?)
            },
        })
    }

    /// The name of the next signal that arrives.
    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "Ctrl-C",
            _ = self.term.recv() => "SIGTERM",
            _ = async {
                match &mut self.hup {
                    Some(hup) => hup.recv().await,
                    None => std::future::pending().await,
                }
            } => "SIGHUP",
        }
    }
}

/// Why the demo ended.
enum End {
    Signal(&'static str),
    Duration,
}

/// Removes the directories of earlier demos whose process no longer exists (a demo killed
/// with SIGKILL cannot remove its own).
fn remove_stale_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("weft-demo-")
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Checks that the demo's ports are free, so a clash is one clear error up front.
fn check_ports(base_port: u16) -> anyhow::Result<()> {
    for i in 0..NODES.len() as u16 {
        let http = base_port + i;
        std::net::TcpListener::bind(("127.0.0.1", http)).with_context(|| {
            format!("TCP port {http} (HTTP of node {i}) is in use: is another demo or node running? Pick other ports with --base-port")
        })?;
        let mesh = base_port + MESH_PORT_OFFSET + i;
        std::net::UdpSocket::bind(("127.0.0.1", mesh)).with_context(|| {
            format!("UDP port {mesh} (mesh of node {i}) is in use: is another demo or node running? Pick other ports with --base-port")
        })?;
        let edge = base_port + EDGE_PORT_OFFSET + i;
        std::net::UdpSocket::bind(("127.0.0.1", edge)).with_context(|| {
            format!("UDP port {edge} (edge port of node {i}) is in use: is another demo or node running? Pick other ports with --base-port")
        })?;
    }
    let agent = base_port + AGENT_HTTP_OFFSET;
    std::net::TcpListener::bind(("127.0.0.1", agent)).with_context(|| {
        format!("TCP port {agent} (the edge agent's HTTP input) is in use: is another demo running? Pick other ports with --base-port")
    })?;
    Ok(())
}

/// Half the measured RTT between two regions: each side delays its sends by this much.
fn one_way_ms(a: &str, b: &str) -> anyhow::Result<f64> {
    crate::regions::measured_rtt_ms(a, b)
        .map(|rtt| rtt / 2.0)
        .with_context(|| format!("sim/data/region-rtt.csv has no measured RTT for {a} <-> {b}"))
}

/// Generates keys, the client token and the configs in a fresh private directory.
fn prepare(base_port: u16) -> anyhow::Result<Demo> {
    check_ports(base_port)?;
    let suffix = hex::encode(&crate::keys::random32()?[..4]);
    let dir = std::env::temp_dir().join(format!("weft-demo-{}-{suffix}", std::process::id()));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let mut demo = Demo {
        dir: dir.clone(),
        nodes: Vec::new(),
        agent: DemoAgent {
            key_hex: String::new(),
            http: format!("127.0.0.1:{}", base_port + AGENT_HTTP_OFFSET),
            config: dir.join("agent.toml"),
            log: dir.join("agent.log"),
        },
        children: Vec::new(),
        token: String::new(),
        token_file: dir.join("demo.token"),
    };
    let (token, token_hash) = crate::keys::generate_token(&demo.token_file)?;
    demo.token = token;
    for (i, (name, region)) in NODES.iter().enumerate() {
        let meta = crate::regions::regions()
            .get(*region)
            .with_context(|| format!("region {region} is not in sim/data/regions.toml"))?;
        let signer = crate::keys::generate(&dir.join(format!("{name}.key")))?;
        demo.nodes.push(DemoNode {
            name,
            region,
            jurisdiction: meta.jurisdiction.clone(),
            http: format!("127.0.0.1:{}", base_port + i as u16),
            edge: format!("127.0.0.1:{}", base_port + EDGE_PORT_OFFSET + i as u16),
            mesh: format!("127.0.0.1:{}", base_port + MESH_PORT_OFFSET + i as u16),
            key_hex: signer.origin().to_string(),
            config: dir.join(format!("{name}.toml")),
            log: dir.join(format!("{name}.log")),
        });
    }
    // The device key, in the same PEM format `weft-agent keygen` writes.
    let device = crate::keys::generate(&dir.join(format!("{DEVICE}.key")))?;
    demo.agent.key_hex = device.origin().to_string();
    let operator = write_policy(&dir, &demo.nodes, &token_hash, &demo.agent.key_hex)?;
    for i in 0..demo.nodes.len() {
        let text = config_text(&demo.nodes, i, &token_hash)?
            + &format!(
                "\n# The demo's policy, signed by its operator key (`weft policy sign`).\n\
                 [policy]\noperators = [\"{operator}\"]\nthreshold = 1\nbundle = \"policy.cbor\"\n"
            );
        // Refuse to start anything from a config the node would refuse.
        crate::config::NodeConfig::parse(&text, &dir)
            .with_context(|| format!("the generated config of {}", demo.nodes[i].name))?;
        std::fs::write(&demo.nodes[i].config, text)
            .with_context(|| format!("writing {}", demo.nodes[i].config.display()))?;
        demo.children.push(None);
    }
    let text = agent_config_text(&demo.nodes, &demo.agent)?;
    // Refuse to start an agent from a config it would refuse.
    weft_agent::check_config(&text, &dir).context("the generated agent config")?;
    std::fs::write(&demo.agent.config, text)
        .with_context(|| format!("writing {}", demo.agent.config.display()))?;
    demo.children.push(None);
    Ok(demo)
}

/// The EU-resident stream of the sample policy (published by the EU node).
const EU_STREAM: &str = "customers.eu.profiles";

/// Writes the demo's policy bundle (`policy.toml`, for reading) signed by a fresh operator
/// key (`policy.cbor`, what the nodes enforce) and returns the operator's public key: each
/// node granted its own jurisdiction, personal data of EU customers (`customers.eu.>`,
/// class `eu-personal`) kept in the EU with transit forbidden, orders and telemetry public,
/// the demo's principal allowed to publish to those three, and the demo's device enrolled
/// for its telemetry stream.
fn write_policy(
    dir: &Path,
    nodes: &[DemoNode],
    token_hash: &str,
    device_key: &str,
) -> anyhow::Result<String> {
    let device_jurisdiction = &crate::regions::regions()
        .get(DEVICE_REGION)
        .with_context(|| format!("region {DEVICE_REGION} is not in sim/data/regions.toml"))?
        .jurisdiction;
    let operator = crate::keys::generate(&dir.join("operator.key"))?;
    let mut jurisdictions: BTreeMap<&str, (Vec<&str>, Vec<&str>)> = BTreeMap::new();
    for n in nodes {
        let j = jurisdictions.entry(n.jurisdiction.as_str()).or_default();
        j.0.push(n.region);
        j.1.push(n.key_hex.as_str());
    }
    let mut text = String::from(
        "# The `weft demo` policy (docs/policy.md), generated; the nodes enforce its signed form.\n\
         format = 1\nepoch = 1\ndescription = \"weft demo: EU customer data stays in the EU\"\n",
    );
    for (j, (regions, keys)) in &jurisdictions {
        let _ = write!(
            text,
            "\n[jurisdictions.{j}]\nregions = [{}]\nnodes = [{}]\n",
            quoted(regions.iter().copied()),
            quoted(keys.iter().copied())
        );
    }
    let _ = write!(
        text,
        r#"
[tenants.demo]

[roles.app]

[principals.demo-app]
tenant = "demo"
roles = ["app"]
token_sha256 = "{token_hash}"

[[access]]
name = "demo-app-publishes"
effect = "allow"
actions = ["publish", "subscribe", "read"]
streams = ["orders.>", "telemetry.>", "customers.eu.>"]
roles = ["app"]

[classes.eu-personal]
description = "personal data of EU customers: never leaves the EU"
jurisdictions = ["EU"]
transit = "forbidden"

[classes.public]
anywhere = true

[[streams]]
pattern = "customers.eu.>"
classification = "eu-personal"
replication = "all"

[[streams]]
pattern = "orders.>"
classification = "public"
replication = "all"

[[streams]]
pattern = "telemetry.>"
classification = "public"
replication = "all"

# The demo's device: its key is admitted at the nodes' edge ports (listen.edge) and may
# publish to its enrolled streams; its events carry this principal and tenant.
[principals.{DEVICE}]
tenant = "demo"
device_key = "{device_key}"

[devices.{DEVICE}]
streams = ["{DEVICE_STREAMS}"]
jurisdiction = "{device_jurisdiction}"
"#
    );
    std::fs::write(dir.join("policy.toml"), &text)?;
    let bundle = weft_policy::Bundle::from_toml(&text)
        .map_err(|e| anyhow::anyhow!("the demo's policy bundle: {e}"))?;
    let mut signed = weft_policy::SignedBundle::new(&bundle)
        .map_err(|e| anyhow::anyhow!("the demo's policy bundle: {e}"))?;
    let secret = crate::keys::load(&dir.join("operator.key"))?;
    signed.add_signature(&ed25519_dalek::SigningKey::from_bytes(&secret));
    std::fs::write(dir.join("policy.cbor"), signed.encode())?;
    Ok(operator.origin().to_string())
}

/// The config of node `i`: every other node as a seed and trusted, the demo's principal,
/// and chaos rules delaying sends to each other region by half the measured RTT.
fn config_text(nodes: &[DemoNode], i: usize, token_hash: &str) -> anyhow::Result<String> {
    let n = &nodes[i];
    let seeds = quoted(
        nodes
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, o)| o.mesh.as_str()),
    );
    let trusted = quoted(nodes.iter().map(|o| o.key_hex.as_str()));
    let cloud = n.region.split(':').next().unwrap_or(n.region);
    let mut text = format!(
        r#"# `weft demo` node {name} in {region}: generated, removed when the demo stops.
name = "{name}"
region = "{region}"
cloud = "{cloud}"
jurisdiction = "{jur}"
key = "{name}.key"
data_dir = "data/{name}"
seeds = [{seeds}]
trusted_nodes = [{trusted}]

[listen]
mesh = "{mesh}"
http = "{http}"
# Edge agents (QUIC); the policy enrolls the devices admitted here.
edge = "{edge}"

[[principals]]
name = "demo-app"
tenant = "demo"
token_sha256 = "{token_hash}"
# The demo's one principal may also push policy bundles and set fault injection.
admin = true

# Realistic WAN latency on loopback: half the measured RTT to each other region.
[chaos]
enabled = true
"#,
        name = n.name,
        region = n.region,
        jur = n.jurisdiction,
        mesh = n.mesh,
        http = n.http,
        edge = n.edge,
    );
    for o in nodes.iter().filter(|o| o.region != n.region) {
        let delay = one_way_ms(n.region, o.region)?;
        let _ = write!(
            text,
            "\n[[chaos.rules]]\npeer = \"{}\"\ndelay_ms = {delay}\njitter_ms = {JITTER_MS}\n",
            o.region
        );
    }
    Ok(text)
}

/// The agent's config: every node's edge port as a candidate, the device's local HTTP input.
/// The device sits in [`DEVICE_REGION`] but everything runs on loopback, so each candidate's
/// `rtt_bias_ms` is the measured RTT from that region to the node's: the agent's choice
/// (lowest RTT plus bias) is the one a device there would make.
fn agent_config_text(nodes: &[DemoNode], agent: &DemoAgent) -> anyhow::Result<String> {
    let mut text = format!(
        r#"# `weft demo`'s edge agent (docs/agent.md) for device {DEVICE} in {DEVICE_REGION}:
# generated, removed when the demo stops.
name = "{DEVICE}"
key = "{DEVICE}.key"
data_dir = "agent"

# The demo hands the agent a reading (a CloudEvent) every 500 ms on its local HTTP input,
# which also serves GET /v1/status (what `weft agent-status` shows).
[inputs.http]
listen = "{http}"
stream = "{DEVICE_STREAM}"

[log]
level = "info"
"#,
        http = agent.http,
    );
    for n in nodes {
        let bias = if n.region == DEVICE_REGION {
            0.0
        } else {
            crate::regions::measured_rtt_ms(DEVICE_REGION, n.region).with_context(|| {
                format!(
                    "sim/data/region-rtt.csv has no measured RTT for {DEVICE_REGION} <-> {}",
                    n.region
                )
            })?
        };
        let _ = write!(
            text,
            "\n# {} in {}\n[[nodes]]\naddr = \"{}\"\nkey = \"{}\"\nrtt_bias_ms = {bias:?}\n",
            n.name, n.region, n.edge, n.key_hex
        );
    }
    Ok(text)
}

/// Starts this binary as `weft <command> --config <config>` with its stderr in `log`, in its
/// own process group, stopping when the demo dies.
fn spawn_child(exe: &Path, command: &str, config: &Path, log: &Path) -> anyhow::Result<Child> {
    let log = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    Command::new(exe)
        .arg(command)
        .arg("--config")
        .arg(config)
        .arg("--exit-with-parent")
        .arg(std::process::id().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        // Its own process group: Ctrl-C in the terminal signals the terminal's foreground
        // group, i.e. only the demo, which then stops its children in order (SIGTERM,
        // wait for a clean shutdown, remove the directory) instead of racing them.
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {} {command} --config ...", exe.display()))
}

/// `"a", "b"`: a TOML array's items.
fn quoted<'a>(items: impl Iterator<Item = &'a str>) -> String {
    items
        .map(|s| format!("\"{s}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Demo {
    /// Starts node `i`: this binary as `weft node`, in its own process group, stopping
    /// when the demo dies.
    fn start(&mut self, exe: &Path, i: usize) -> anyhow::Result<()> {
        let n = &self.nodes[i];
        self.children[i] = Some(spawn_child(exe, "node", &n.config, &n.log)?);
        Ok(())
    }

    /// Starts the edge agent: this binary as `weft agent-run` (the `weft-agent` library),
    /// like the nodes in its own process group and stopping when the demo dies.
    fn start_agent(&mut self, exe: &Path) -> anyhow::Result<()> {
        let child = spawn_child(exe, "agent-run", &self.agent.config, &self.agent.log)?;
        self.children[self.nodes.len()] = Some(child);
        Ok(())
    }

    /// What child `i` is, for messages: node `i`, or the agent after the nodes.
    fn label(&self, i: usize) -> String {
        match self.nodes.get(i) {
            Some(n) => format!("node {}", n.name),
            None => format!("the edge agent ({DEVICE})"),
        }
    }

    /// The last lines of child `i`'s log.
    fn log_tail(&self, i: usize) -> String {
        let log = self.nodes.get(i).map_or(&self.agent.log, |n| &n.log);
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
    }

    /// A node that exited by itself, as an error with its log.
    fn check_children(&mut self) -> anyhow::Result<()> {
        for i in 0..self.children.len() {
            let Some(c) = self.children[i].as_mut() else {
                continue;
            };
            if let Some(status) = c.try_wait().context("checking a child process")? {
                self.children[i] = None;
                bail!(
                    "{} exited unexpectedly ({status}); the end of its log:\n{}",
                    self.label(i),
                    self.log_tail(i)
                );
            }
        }
        Ok(())
    }

    /// Stops every node and the agent: SIGTERM, up to [`STOP_WAIT_MAX`] for a clean
    /// shutdown, then SIGKILL. Returns how many nodes were running, and whether the agent
    /// was.
    fn stop(&mut self) -> anyhow::Result<(usize, bool)> {
        let nodes = self.children[..self.nodes.len()].iter().flatten().count();
        let agent = self.children[self.nodes.len()..].iter().flatten().count() > 0;
        for c in self.children.iter().flatten() {
            // The process may have exited already: nothing to do then.
            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
        }
        let deadline = Instant::now() + STOP_WAIT_MAX;
        let mut unclean = Vec::new();
        for (i, slot) in self.children.iter_mut().enumerate() {
            let Some(mut c) = slot.take() else { continue };
            loop {
                match c.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    _ => {
                        unclean.push(i);
                        let _ = c.kill();
                        let _ = c.wait();
                        break;
                    }
                }
            }
        }
        if !unclean.is_empty() {
            let names: Vec<String> = unclean.iter().map(|&i| self.label(i)).collect();
            bail!(
                "{} did not stop within {STOP_WAIT_MAX:?} of SIGTERM and were killed",
                names.join(", ")
            );
        }
        Ok((nodes, agent))
    }

    /// Waits for the mesh, prints what to look at, runs the workload until a stop.
    async fn main(&mut self, exe: &Path, duration: Option<u64>) -> anyhow::Result<ExitCode> {
        let client = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .context("building the HTTP client")?;
        // Handlers first: a Ctrl-C while the mesh forms also stops everything cleanly.
        let mut signals = Signals::new()?;
        let started = Instant::now();
        tokio::select! {
            r = self.wait_meshed(&client) => r?,
            s = signals.recv() => {
                say!("{s} before the mesh was up: stopping");
                return Ok(ExitCode::SUCCESS);
            }
        }
        say!(
            "mesh up after {:.1} s: every node sees the other {} as up",
            started.elapsed().as_secs_f64(),
            self.nodes.len() - 1
        );
        self.print_guide(exe, duration);

        let acks: Arc<Mutex<BTreeMap<&'static str, Vec<f64>>>> = Arc::default();
        let errors: Arc<Mutex<Vec<String>>> = Arc::default();
        let workload: Vec<_> = self
            .nodes
            .iter()
            .map(|n| {
                tokio::spawn(workload(
                    client.clone(),
                    n.name,
                    n.region,
                    n.url(""),
                    self.token.clone(),
                    acks.clone(),
                    errors.clone(),
                ))
            })
            .collect();
        let feed = tokio::spawn(device_readings(
            client.clone(),
            format!("http://{}/v1/events", self.agent.http),
            errors.clone(),
        ));

        let end = self
            .until_stop(&client, &mut signals, duration, &acks, &errors)
            .await;
        for w in workload {
            w.abort();
        }
        feed.abort();
        match end? {
            End::Signal(s) => say!("{s}: stopping"),
            End::Duration => say!("--duration reached: stopping"),
        }
        Ok(ExitCode::SUCCESS)
    }

    async fn wait_meshed(&mut self, client: &reqwest::Client) -> anyhow::Result<()> {
        let want = self.nodes.len() - 1;
        let deadline = Instant::now() + MESH_WAIT_MAX;
        let mut pending: Vec<usize> = (0..self.nodes.len()).collect();
        while !pending.is_empty() {
            self.check_children()?;
            let mut still = Vec::new();
            for &i in &pending {
                let up = async {
                    let v: Value = client
                        .get(self.nodes[i].url("/v1/mesh/peers"))
                        .send()
                        .await
                        .ok()?
                        .json()
                        .await
                        .ok()?;
                    Some(
                        v["peers"]
                            .as_array()?
                            .iter()
                            .filter(|p| p["state"] == "up")
                            .count(),
                    )
                }
                .await;
                if up != Some(want) {
                    still.push(i);
                }
            }
            pending = still;
            if pending.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                let i = pending[0];
                bail!(
                    "node {} did not see the other {want} nodes within {MESH_WAIT_MAX:?}; the end of its log:\n{}",
                    self.nodes[i].name,
                    self.log_tail(i)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(())
    }

    fn print_guide(&self, exe: &Path, duration: Option<u64>) {
        let weft = weft_command(exe);
        let first = &self.nodes[0];
        let second = &self.nodes[1];
        let others: Vec<&str> = self.nodes[1..].iter().map(|n| n.http.as_str()).collect();
        say!("");
        say!(
            "  {:<6} {:<20} {:<4} {:<26} {:<17} edge (agents, QUIC)",
            "node",
            "region",
            "jur",
            "dashboard and HTTP API",
            "mesh (QUIC)"
        );
        for n in &self.nodes {
            say!(
                "  {:<6} {:<20} {:<4} {:<26} {:<17} {}",
                n.name,
                n.region,
                n.jurisdiction,
                n.url("/"),
                n.mesh,
                n.edge
            );
        }
        say!("");
        say!("Injected round-trip times (measured, sim/data/region-rtt.csv):");
        for (i, a) in self.nodes.iter().enumerate() {
            for b in &self.nodes[i + 1..] {
                say!(
                    "  {:<6} <-> {:<6} {:>6.1} ms",
                    a.name,
                    b.name,
                    crate::regions::measured_rtt_ms(a.region, b.region).unwrap_or(f64::NAN)
                );
            }
        }
        say!("");
        say!(
            "Workload: each node publishes 2 events/s to orders.<node> (ack=regions:2, confirmed in a second region)"
        );
        say!(
            "and 2 events/s to telemetry.<node> (ack=local); eu-1 also publishes 2 customer profiles/s to"
        );
        say!(
            "{EU_STREAM}, which the policy keeps in the EU: eu-1 is the only EU node, so no other node ever sees it."
        );
        say!(
            "Policy: {} (epoch 1, signed by the demo's operator key; readable in {}).",
            self.dir.join("policy.cbor").display(),
            self.dir.join("policy.toml").display()
        );
        say!("");
        say!("Open the dashboard (every node serves one; this one also polls the others):");
        // The token rides in the fragment (never sent to a server): the policy authorizes
        // the page's live tail like any other subscription.
        say!(
            "  {}?nodes={}&stream=orders.{}#token={}",
            first.url("/"),
            others.join(","),
            short(second.name),
            self.token
        );
        say!("");
        say!("Try (the policy authorizes reads and publishes alike: both need the demo's token):");
        say!(
            "  {weft} tail --node {} --token-file {} orders.{}          # {} orders arriving in {}",
            second.url(""),
            self.token_file.display(),
            short(first.name),
            first.region,
            second.region
        );
        say!(
            "  {weft} publish --node {} --token-file {} --ack regions:3 orders.{} '{{\"hello\":\"from {}\"}}'",
            self.nodes[2].url(""),
            self.token_file.display(),
            short(self.nodes[2].name),
            self.nodes[2].region
        );
        say!("  {weft} peers --node {}", first.url(""));
        say!("  {weft} routes --node {}", first.url(""));
        say!("  {weft} status --node {}", second.url(""));
        say!("  curl -s {}", first.url("/metrics"));
        say!(
            "  curl -s {}          # the policy in force",
            second.url("/v1/policy")
        );
        say!(
            "  curl -s -H \"Authorization: Bearer $(cat {})\" {}   # EU customer data on eu-1 ...",
            self.token_file.display(),
            first.url(&format!("/v1/streams/{EU_STREAM}/events?limit=2"))
        );
        say!(
            "  curl -s -H \"Authorization: Bearer $(cat {})\" {}   # ... and none on us-1",
            self.token_file.display(),
            second.url(&format!("/v1/streams/{EU_STREAM}/events?limit=2"))
        );
        say!("");
        say!("Change the policy everywhere with one push (raise `epoch` in the TOML first):");
        say!(
            "  {weft} policy sign --key {} --out {} {}",
            self.dir.join("operator.key").display(),
            self.dir.join("policy-2.cbor").display(),
            self.dir.join("policy.toml").display()
        );
        say!(
            "  {weft} policy push --node {} --token-file {} {}",
            second.url(""),
            self.token_file.display(),
            self.dir.join("policy-2.cbor").display()
        );
        say!("  {weft} policy status --node {}", first.url(""));
        say!("");
        self.print_agent_guide(&weft);
        say!("");
        match duration {
            Some(s) => say!("Stopping by itself after {s} s (--duration), or on Ctrl-C."),
            None => say!(
                "Ctrl-C stops every node and removes {}.",
                self.dir.display()
            ),
        }
    }

    /// The guide's part about the edge agent.
    fn print_agent_guide(&self, weft: &str) {
        let eu = &self.nodes[0];
        let second = &self.nodes[1];
        say!(
            "Edge agent: device {DEVICE} in {DEVICE_REGION}, key {}",
            self.agent.key_hex
        );
        say!(
            "(enrolled in the policy for {DEVICE_STREAMS}; tenant demo, jurisdiction {}). It is the",
            eu.jurisdiction
        );
        say!(
            "weft-agent code in a process of its own (`weft agent-run`; log {}, SQLite outbox in {}).",
            self.agent.log.display(),
            self.dir.join("agent").display()
        );
        say!(
            "Its candidates are the {} nodes' edge ports; it uses the lowest RTT plus bias, and as all run on",
            self.nodes.len()
        );
        say!(
            "loopback each node's bias is its measured RTT from {DEVICE_REGION}: it picks {} (agent-status shows it).",
            eu.name
        );
        say!(
            "The demo hands it a reading every {} ms on its local HTTP input ({}); the agent signs each",
            READING_INTERVAL.as_millis(),
            self.agent.http
        );
        say!("with the device key (weftorigin) and the fabric carries it to every region.");
        say!(
            "  {weft} tail --node {} --token-file {} {DEVICE_STREAM}   # the device's readings in {}",
            second.url(""),
            self.token_file.display(),
            second.region
        );
        say!(
            "  {weft} agent-status --config {}   # the agent: connected node, RTT, outbox, counters",
            self.agent.config.display()
        );
        say!("  curl -s http://{}/v1/status", self.agent.http);
        say!(
            "  curl -s -H 'content-type: application/cloudevents+json' -d '{{\"specversion\":\"1.0\",\"id\":\"mine-1\",\"source\":\"me\",\"type\":\"demo.device.reading\",\"data\":{{\"celsius\":30}}}}' http://{}/v1/events   # a reading of your own",
            self.agent.http
        );
        let others: Vec<&str> = self
            .nodes
            .iter()
            .filter(|n| n.name != second.name)
            .map(|n| n.http.as_str())
            .collect();
        say!("The device's readings live in {}'s dashboard:", second.name);
        say!(
            "  {}?nodes={}&stream={DEVICE_STREAM}#token={}",
            second.url("/"),
            others.join(","),
            self.token
        );
    }

    /// Prints a status line every [`STATUS_INTERVAL`] until a signal or the duration.
    async fn until_stop(
        &mut self,
        client: &reqwest::Client,
        signals: &mut Signals,
        duration: Option<u64>,
        acks: &Mutex<BTreeMap<&'static str, Vec<f64>>>,
        errors: &Mutex<Vec<String>>,
    ) -> anyhow::Result<End> {
        let started = tokio::time::Instant::now();
        let end_at = duration.map(|s| started + Duration::from_secs(s));
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        let mut next_status = started + STATUS_INTERVAL;
        loop {
            tokio::select! {
                s = signals.recv() => return Ok(End::Signal(s)),
                _ = tick.tick() => {}
            }
            self.check_children()?;
            let now = tokio::time::Instant::now();
            if end_at.is_some_and(|e| now >= e) {
                return Ok(End::Duration);
            }
            if now >= next_status {
                next_status += STATUS_INTERVAL;
                let line = self
                    .status_line(client, started.elapsed(), acks, errors)
                    .await;
                say!("{line}");
            }
        }
    }

    async fn status_line(
        &self,
        client: &reqwest::Client,
        elapsed: Duration,
        acks: &Mutex<BTreeMap<&'static str, Vec<f64>>>,
        errors: &Mutex<Vec<String>>,
    ) -> String {
        let mut line = format!("[{:>4} s] stored:", elapsed.as_secs());
        for n in &self.nodes {
            let stored = async {
                let v: Value = client
                    .get(n.url("/v1/status"))
                    .send()
                    .await
                    .ok()?
                    .json()
                    .await
                    .ok()?;
                v["stored_events"].as_u64()
            }
            .await;
            let _ = write!(
                line,
                " {} {}",
                n.name,
                stored.map_or("?".to_string(), |s| s.to_string())
            );
        }
        let agent = async {
            let v: Value = client
                .get(format!("http://{}/v1/status", self.agent.http))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            Some(format!(
                " | device {DEVICE} via {}: delivered {}, outbox {}",
                v["connected"]["node"].as_str().unwrap_or("-"),
                v["counters"]["delivered"],
                v["outbox_depth"]
            ))
        }
        .await;
        line.push_str(&agent.unwrap_or_else(|| format!(" | device {DEVICE}: no status")));
        line.push_str(" | order ack (regions:2) median:");
        let mut acks = acks
            .lock()
            .map(|mut a| std::mem::take(&mut *a))
            .unwrap_or_default();
        for n in &self.nodes {
            let med = acks.get_mut(n.name).and_then(|v| median(v));
            let _ = write!(
                line,
                " {} {}",
                n.name,
                med.map_or("-".to_string(), |m| format!("{m:.0} ms"))
            );
        }
        let errors = errors
            .lock()
            .map(|mut e| std::mem::take(&mut *e))
            .unwrap_or_default();
        match errors.first() {
            None => line.push_str(" | publish errors: 0"),
            Some(first) => {
                let _ = write!(line, " | publish errors: {} (first: {first})", errors.len());
            }
        }
        line
    }
}

fn median(v: &mut [f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(v[v.len() / 2])
}

/// The short form of a node name used in its streams: `eu-1` -> `eu`.
fn short(name: &str) -> &str {
    name.split('-').next().unwrap_or(name)
}

/// How to call this binary in the printed commands: `weft` if that is what `PATH` finds,
/// otherwise its full path (e.g. `target/release/weft` under `cargo run`).
fn weft_command(exe: &Path) -> String {
    let on_path = std::env::var_os("PATH").is_some_and(|p| {
        std::env::split_paths(&p).any(|d| {
            let cand = d.join("weft");
            std::fs::canonicalize(&cand).ok() == std::fs::canonicalize(exe).ok()
        })
    });
    if on_path {
        "weft".to_string()
    } else {
        exe.display().to_string()
    }
}

/// Sample product codes for the order events.
const SKUS: [&str; 5] = ["kettle", "lamp", "chair", "desk", "mug"];

/// One node's workload: every [`PUBLISH_INTERVAL`], one order (`ack=regions:2`) and one
/// telemetry reading (`ack=local`) as CloudEvents through the node's HTTP API.
async fn workload(
    client: reqwest::Client,
    name: &'static str,
    region: &'static str,
    base: String,
    token: String,
    acks: Arc<Mutex<BTreeMap<&'static str, Vec<f64>>>>,
    errors: Arc<Mutex<Vec<String>>>,
) {
    let mut tick = tokio::time::interval(PUBLISH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stream = short(name);
    let (orders, telemetry) = (format!("orders.{stream}"), format!("telemetry.{stream}"));
    // The EU node also publishes EU-resident customer data (the policy keeps it in the EU).
    let customers = (region == "aws:eu-west-1").then_some(EU_STREAM);
    for n in 0u64.. {
        tick.tick().await;
        let order = json!({
            "specversion": "1.0",
            "id": format!("demo-{name}-order-{n}"),
            "source": format!("weft-demo/{name}"),
            "type": "demo.order.placed",
            "datacontenttype": "application/json",
            "data": {"order": n, "region": region, "sku": SKUS[(n % 5) as usize],
                     "amount_eur": ((n * 37) % 500) as f64 + 0.99},
        });
        let reading = json!({
            "specversion": "1.0",
            "id": format!("demo-{name}-reading-{n}"),
            "source": format!("weft-demo/{name}"),
            "type": "demo.telemetry.reading",
            "datacontenttype": "application/json",
            "data": {"sensor": format!("{stream}-line-{}", n % 3),
                     "celsius": 18.0 + ((n * 7) % 90) as f64 / 10.0},
        });
        let t0 = Instant::now();
        let (o, r) = tokio::join!(
            publish(&client, &base, &orders, "regions:2", &token, &order),
            publish(&client, &base, &telemetry, "local", &token, &reading),
        );
        match o {
            Ok(()) => {
                if let Ok(mut a) = acks.lock() {
                    let v = a.entry(name).or_default();
                    if v.len() < ACK_SAMPLES_MAX {
                        v.push(t0.elapsed().as_secs_f64() * 1000.0);
                    }
                }
            }
            Err(e) => push_error(&errors, name, e),
        }
        if let Err(e) = r {
            push_error(&errors, name, e);
        }
        if let Some(stream) = customers {
            let profile = json!({
                "specversion": "1.0",
                "id": format!("demo-{name}-profile-{n}"),
                "source": format!("weft-demo/{name}"),
                "type": "demo.customer.updated",
                "datacontenttype": "application/json",
                "data": {"customer": n % 50, "country": "IE", "email": format!("c{}@example.eu", n % 50)},
            });
            if let Err(e) = publish(&client, &base, stream, "local", &token, &profile).await {
                push_error(&errors, name, e);
            }
        }
    }
}

/// The device's readings: every [`READING_INTERVAL`], one CloudEvent to the agent's local
/// HTTP input (the agent answers 202 once the reading is in its outbox on disk; it signs
/// and sends it to a node from there).
async fn device_readings(client: reqwest::Client, url: String, errors: Arc<Mutex<Vec<String>>>) {
    let mut tick = tokio::time::interval(READING_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for n in 0u64.. {
        tick.tick().await;
        let reading = json!({
            "specversion": "1.0",
            "id": format!("demo-{DEVICE}-reading-{n}"),
            "source": format!("weft-demo/{DEVICE}"),
            "type": "demo.device.reading",
            "datacontenttype": "application/json",
            "data": {"reading": n, "celsius": 19.0 + ((n * 3) % 40) as f64 / 10.0,
                     "humidity_pct": 40 + (n * 7) % 25},
        });
        let sent = async {
            let resp = client
                .post(&url)
                .header("content-type", crate::cloudevents::CE_JSON)
                .body(reading.to_string())
                .send()
                .await
                .context("POST to the agent")?;
            let status = resp.status();
            if !status.is_success() {
                let body = resp.text().await.unwrap_or_default();
                bail!("the agent's HTTP input: {status} {}", body.trim());
            }
            Ok(())
        }
        .await;
        if let Err(e) = sent {
            push_error(&errors, DEVICE, e);
        }
    }
}

fn push_error(errors: &Mutex<Vec<String>>, name: &str, e: anyhow::Error) {
    if let Ok(mut v) = errors.lock()
        && v.len() < ACK_SAMPLES_MAX
    {
        v.push(format!("{name}: {e:#}"));
    }
}

async fn publish(
    client: &reqwest::Client,
    base: &str,
    stream: &str,
    ack: &str,
    token: &str,
    event: &Value,
) -> anyhow::Result<()> {
    let resp = client
        .post(format!("{base}/v1/streams/{stream}/events?ack={ack}"))
        .bearer_auth(token)
        .header("content-type", crate::cloudevents::CE_JSON)
        .body(event.to_string())
        .send()
        .await
        .context("POST")?;
    let status = resp.status();
    if !status.is_success() {
        let body = resp.text().await.unwrap_or_default();
        bail!("{stream}: {status} {}", body.trim());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_demo_region_pair_is_measured_and_every_region_known() {
        for (i, (_, a)) in NODES.iter().enumerate() {
            assert!(crate::regions::regions().contains_key(*a), "{a}");
            for (_, b) in &NODES[i + 1..] {
                assert!(one_way_ms(a, b).unwrap() > 1.0, "{a} {b}");
            }
        }
        assert!(
            format!(
                "{:#}",
                one_way_ms("aws:eu-west-1", "gcp:us-east4").unwrap_err()
            )
            .contains("no measured RTT")
        );
    }

    #[test]
    fn generated_configs_parse_and_inject_half_the_measured_rtt() {
        let nodes: Vec<DemoNode> = NODES
            .iter()
            .enumerate()
            .map(|(i, (name, region))| DemoNode {
                name,
                region,
                jurisdiction: crate::regions::regions()[*region].jurisdiction.clone(),
                http: format!("127.0.0.1:{}", 9000 + i),
                edge: format!("127.0.0.1:{}", 9004 + i),
                mesh: format!("127.0.0.1:{}", 9010 + i),
                key_hex: format!("{i:02}").repeat(32),
                config: PathBuf::new(),
                log: PathBuf::new(),
            })
            .collect();
        let text = config_text(&nodes, 0, &"ab".repeat(32)).unwrap();
        let c = crate::config::NodeConfig::parse(&text, Path::new("/tmp/x")).unwrap();
        assert_eq!(c.raw.name, "eu-1");
        assert_eq!(c.raw.jurisdiction, "EU");
        assert_eq!(c.trusted.len(), 4);
        assert_eq!(c.raw.seeds.len(), 3);
        assert!(c.raw.chaos.enabled);
        let to_us = c
            .raw
            .chaos
            .rules
            .iter()
            .find(|r| r.peer == "aws:us-east-1")
            .unwrap();
        assert_eq!(to_us.delay_ms, 40.3);
        assert_eq!(c.raw.chaos.rules.len(), 3);
        assert_eq!(c.raw.listen.edge, Some("127.0.0.1:9004".parse().unwrap()));
        // The agent's config: accepted by the agent, every node a candidate, biased by the
        // measured RTT from the device's region (none for its own).
        let agent = DemoAgent {
            key_hex: String::new(),
            http: "127.0.0.1:9008".into(),
            config: PathBuf::new(),
            log: PathBuf::new(),
        };
        let text = agent_config_text(&nodes, &agent).unwrap();
        weft_agent::check_config(&text, Path::new("/tmp/x")).unwrap();
        let v: toml::Table = toml::from_str(&text).unwrap();
        let cands = v["nodes"].as_array().unwrap();
        assert_eq!(cands.len(), 4);
        assert_eq!(cands[0]["addr"].as_str(), Some("127.0.0.1:9004"));
        assert_eq!(cands[0]["rtt_bias_ms"].as_float(), Some(0.0));
        assert_eq!(cands[1]["rtt_bias_ms"].as_float(), Some(80.6));
        assert_eq!(v["inputs"]["http"]["stream"].as_str(), Some(DEVICE_STREAM));
    }

    #[test]
    fn bad_options_are_refused_with_the_flag_named() {
        let e = run(&Options {
            duration: None,
            base_port: 80,
        })
        .unwrap_err();
        assert!(format!("{e:#}").contains("--base-port"), "{e:#}");
        let e = run(&Options {
            duration: Some(0),
            base_port: 20000,
        })
        .unwrap_err();
        assert!(format!("{e:#}").contains("--duration"), "{e:#}");
    }

    #[test]
    fn medians_and_short_names() {
        assert_eq!(median(&mut []), None);
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(short("eu-1"), "eu");
    }
}
