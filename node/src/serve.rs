//! `weft node`: start a node from its config and run until Ctrl-C or SIGTERM.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::sync::{mpsc, watch};
use tracing::info;
use weft_fabric::mesh::{MemberInfo, MeshConfig, Node};
use weft_fabric::{HybridClock, Signer};

use crate::chaos::Chaos;
use crate::config::NodeConfig;
use crate::driver::{Driver, Snapshot};
use crate::http::{Api, Producer};
use crate::metrics::Metrics;
use crate::store::{SqliteStore, StoreLimits, StoreReader};
use crate::transport::Transport;

/// Most mesh inputs queued for the driver (the transport's readers wait when it is full;
/// they hold at most `transport::STREAM_READS_MAX` streams per connection, and the rest
/// wait in QUIC flow control).
const MESH_QUEUE_LEN_MAX: usize = 8192;
/// How long a stopping node waits for its audit entries to reach the disk.
const AUDIT_FLUSH_LIMIT: Duration = Duration::from_secs(5);

/// `RUST_LOG`, when set, overrides `log.level`: checked as `log.level` is (a typo would
/// silence every log line, the audit's included).
pub(crate) fn check_rust_log() -> anyhow::Result<()> {
    match std::env::var("RUST_LOG") {
        Ok(filter) => crate::config::check_log_filter(&filter)
            .map_err(|e| anyhow::anyhow!("RUST_LOG (it overrides log.level): {e}")),
        Err(std::env::VarError::NotPresent) => Ok(()),
        Err(std::env::VarError::NotUnicode(_)) => {
            anyhow::bail!("RUST_LOG (it overrides log.level): is not UTF-8")
        }
    }
}

fn init_tracing(format: &str, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    // Colours only for a terminal: a log written to a file or a journal kept the escape
    // codes (`cat -v` showed them).
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    // A second initialisation (tests) is harmless.
    let _ = if format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// The HTTP address other nodes' dashboards link to: `listen.http`, with an unspecified IP
/// (0.0.0.0, ::) replaced by the mesh's advertised one (the links pointed at
/// `http://0.0.0.0:8400/`: an operator review).
fn reachable_http(http: std::net::SocketAddr, advertise: std::net::SocketAddr) -> String {
    if http.ip().is_unspecified() {
        std::net::SocketAddr::new(advertise.ip(), http.port()).to_string()
    } else {
        http.to_string()
    }
}

/// Runs the node described by the config at `path`.
pub(crate) fn run(path: &Path) -> anyhow::Result<()> {
    let config = NodeConfig::load(path)?;
    check_rust_log()?;
    init_tracing(&config.raw.log.format, &config.raw.log.level);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("weft")
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(config))
}

async fn serve(config: crate::config::Resolved) -> anyhow::Result<()> {
    let raw = &config.raw;
    for ignored in raw.ignored_settings() {
        tracing::warn!("config: {ignored}");
    }
    let seed = crate::keys::load(&config.key_path)?;
    let signer = Signer::from_secret(&seed);
    let origin = signer.origin();

    let limits = StoreLimits {
        events_max: raw.limits.events_max,
        cursors_max: raw.limits.cursors_max,
        cursors_per_owner_max: raw.limits.cursors_per_principal_max,
        expired_ranges_max: raw.limits.expired_ranges_max,
        erase_pass_max: raw.limits.erase_pass_max,
        ..StoreLimits::default()
    };
    let mut store = SqliteStore::open(&config.data_dir, limits)
        .with_context(|| format!("opening the store in {}", config.data_dir.display()))?;
    // A new generation on every start: the fresh member record supersedes the one the
    // mesh remembers from before a crash.
    let generation = store.generation()?.map_or(0, |g| g.saturating_add(1));
    store
        .set_generation(generation)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    store.commit()?;
    let next_seq = store.max_seq(&origin)?;
    let hlc_last = store.hlc_last(&origin)?;
    let hlc_observed = store
        .meta_get(crate::clock::OBSERVED_META_KEY)?
        .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
        .map(u64::from_be_bytes);
    let last_pos = store.log_max_pos()?;
    let known_peers: Vec<MemberInfo> = store
        .peers()?
        .into_iter()
        .filter_map(|(_, json, _)| serde_json::from_str(&json).ok())
        .collect();

    let metrics = Arc::new(Metrics::new());
    let audit = crate::audit::Audit::start(
        &config.data_dir,
        &raw.name,
        &origin.to_string(),
        crate::audit::Retention {
            days: raw.audit.retention_days,
            entries_max: raw.audit.max_entries,
        },
        metrics.clone(),
    )
    .with_context(|| format!("opening the audit log in {}", config.data_dir.display()))?;
    // Refusals at start end the process: their entries are written before it exits.
    let refuse_start = |reason: &str, message: String| {
        audit.record(crate::audit::Entry::now(
            crate::audit::Decision::Deny,
            reason,
            0,
            message,
        ));
        if !audit.flush(AUDIT_FLUSH_LIMIT) {
            tracing::error!("the audit entry of the refusal could not be written in time");
        }
    };

    // The policy: the newest of the configured bundle and the one last applied before a
    // restart (a push through the fabric may have superseded the configured one), each
    // verified as it would be off the fabric (k-of-n operators); then this node's own
    // jurisdiction claim checked against it: a node never starts claiming a jurisdiction
    // the bundle does not grant its key and region.
    let (trust, policy) = match &config.policy {
        None => (None, None),
        Some((trust, path)) => {
            let configured = crate::policy_push::read_configured(path.as_deref())?;
            let stored = store.meta_get(crate::policy_push::META_KEY)?;
            let stale = |e: &weft_policy::VerifyError| {
                audit.deny(
                    e.code(),
                    None,
                    None,
                    0,
                    format!(
                        "the policy bundle kept from before the restart no longer verifies (skipped): {e}"
                    ),
                );
            };
            let chosen =
                crate::policy_push::at_start(trust, configured, stored, stale).map_err(|e| {
                    let shown = path
                        .as_ref()
                        .map_or(String::new(), |p| p.display().to_string());
                    refuse_start(e.code(), format!("policy bundle {shown} refused: {e}"));
                    anyhow::anyhow!("policy bundle {shown}: {e}")
                })?;
            if let Some((verified, _)) = &chosen {
                let claim = verified
                    .policy
                    .claim(&origin.0, &raw.jurisdiction, &raw.region);
                if !claim.allowed {
                    refuse_start(
                        "jurisdiction_claim",
                        format!(
                            "policy epoch {} refuses this node's claim of jurisdiction {} in region {}: {}",
                            verified.policy.epoch(),
                            raw.jurisdiction,
                            raw.region,
                            claim.reason
                        ),
                    );
                    anyhow::bail!(
                        "policy epoch {} does not grant this node's key jurisdiction {} in region {}: {}",
                        verified.policy.epoch(),
                        raw.jurisdiction,
                        raw.region,
                        claim.reason
                    );
                }
                audit.record(crate::audit::Entry::now(
                    crate::audit::Decision::Apply,
                    "policy_applied",
                    verified.policy.epoch(),
                    format!(
                        "policy bundle applied at start: epoch {}, signed by {}",
                        verified.policy.epoch(),
                        verified
                            .signers
                            .iter()
                            .map(hex::encode)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
            (Some(trust.clone()), chosen)
        }
    };
    let me = MemberInfo {
        key: origin.0,
        region: raw.region.as_str().into(),
        cloud: raw.cloud.as_str().into(),
        jurisdiction: raw.jurisdiction.as_str().into(),
        addr: config.advertise.to_string().into(),
        policy_epoch: policy.as_ref().map_or(0, |(p, _)| p.policy.epoch()),
        generation,
    };
    let mut trusted = config.trusted.clone();
    trusted.insert(origin.0);
    let mut mesh = MeshConfig::wan(trusted.len() as u32);
    mesh.interest = config.streams.clone();
    // The driver holds each step's transmits until its group commit.
    mesh.holds_transmits = true;
    // The store may be an emptied data directory or an older backup under a key the mesh
    // knows: at every start, the numbering is learned from the first members before it
    // publishes.
    mesh.recover_own_numbers = true;
    // Every node stores the system streams (policy bundles travel on them).
    mesh.interest.push(
        weft_fabric::StreamPattern::new(crate::policy_push::SYSTEM_PATTERN)
            .unwrap_or_else(|_| unreachable!("valid constant")),
    );
    let node_seed = u64::from_le_bytes(crate::keys::random32()?[..8].try_into()?);
    let epoch = Instant::now();
    let mut node = Node::new(me.clone(), mesh, node_seed, store, 0);
    node.set_status(
        &raw.name,
        &reachable_http(raw.listen.http, config.advertise),
    );
    let applied = policy.map(|(v, signed)| crate::policy_state::Applied {
        policy: Arc::new(v.policy),
        signers: v.signers.iter().map(hex::encode).collect(),
        signed: Arc::new(signed),
    });
    if let Some(a) = &applied {
        // Residency on every hop: the core asks the policy before any peer is chosen for a
        // push, an announcement or an anti-entropy batch, and before a relay region.
        node.set_filter(Box::new(weft_policy::PolicyFilter::new(a.policy.clone())));
    } else if trust.is_some() {
        // A governed node before its first bundle: each event's own residency set decides
        // what it holds and passes on, until the policy does.
        node.set_filter(Box::new(weft_fabric::mesh::StampedResidency::new(me.key)));
    }
    let policy_state =
        Arc::new(crate::policy_state::PolicyState::new(applied).requiring(trust.is_some()));
    if policy_state.pending() {
        tracing::warn!(
            "this node trusts operator keys ([policy] operators) but holds no policy bundle that verifies: it serves no publishes, reads or edge devices (503 policy_pending) until one arrives through the fabric (weft policy push) or is configured (policy.bundle)"
        );
    }

    // Set before the transport starts: its audit rows carry the epoch it reads here.
    metrics.policy_in_force(policy_state.policy().as_deref());
    let chaos = Arc::new(Chaos::new(raw.chaos.enabled, raw.chaos.rules.clone()));
    let quic = crate::tls::quic_configs(&seed, trusted.iter().copied())?;
    let (mesh_tx, mesh_rx) = mpsc::channel(MESH_QUEUE_LEN_MAX);
    let (cmd_tx, cmd_rx) = mpsc::channel(raw.limits.publish_queue_max);
    let transport = Transport::start(
        raw.listen.mesh,
        origin,
        quic,
        mesh_tx,
        chaos.clone(),
        metrics.clone(),
        trusted.clone(),
        audit.clone(),
    )?;
    transport.dial_seeds(raw.seeds.clone());
    if raw.mdns {
        crate::discovery::start(&seed, raw.listen.mesh, trusted.clone(), transport.clone())?;
    }

    let (committed_tx, committed_rx) = watch::channel(last_pos);
    let (snapshot_tx, snapshot_rx) = watch::channel(Snapshot::default());
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (closing_tx, closing_rx) = watch::channel(false);
    let (flush_tx, flush_rx) = mpsc::channel(crate::egress::FLUSH_QUEUE_LEN_MAX);
    let aggregator = crate::egress::Aggregator::new(
        policy_state.clone(),
        flush_tx,
        metrics.clone(),
        audit.clone(),
    );
    let mut driver = Driver::new(
        node,
        epoch,
        transport.clone(),
        metrics.clone(),
        Duration::from_millis(raw.limits.ack_timeout_ms),
        last_pos,
        committed_tx,
        snapshot_tx,
        config.priorities.clone(),
        audit.clone(),
        aggregator,
    );
    if let Some(trust) = &trust {
        driver = driver.with_policy(trust.clone(), policy_state.clone());
    }
    let tables = crate::tables::Declared {
        config: config.tables.clone(),
        policy: policy_state.clone(),
    };
    driver = driver.with_tables(tables.clone());
    let store_full = Arc::new(std::sync::atomic::AtomicBool::new(false));
    driver = driver.with_store_full(store_full.clone());
    let own_numbers = Arc::new(crate::driver::OwnNumbers::default());
    driver = driver.with_own_numbers(own_numbers.clone());
    let node_clock = Arc::new(crate::clock::NodeClock::new(raw.chaos.clock_offset_ms));
    if let Some(observed) = hlc_observed {
        node_clock.resume_observed(observed);
    }
    if raw.chaos.clock_offset_ms != 0 {
        tracing::warn!(
            offset_ms = raw.chaos.clock_offset_ms,
            "fault injection: this node stamps its events' HLCs off the host's clock (chaos.clock_offset_ms)"
        );
    }
    driver = driver.with_clock(node_clock.clone());
    let (retract_tx, retract_rx) = mpsc::channel(4);
    driver = driver.with_retractor(retract_tx);
    driver = driver.with_readers(config.data_dir.clone());
    let driver_task = tokio::spawn(driver.run(mesh_rx, cmd_rx, shutdown_rx, known_peers));

    let api = Arc::new(Api {
        me: me.clone(),
        name: raw.name.clone(),
        cmd_tx,
        inflight: Arc::new(tokio::sync::Semaphore::new(
            raw.limits.publishes_inflight_max,
        )),
        body_budget: Arc::new(tokio::sync::Semaphore::new(
            raw.limits.publish_bytes_inflight_max / 1024,
        )),
        body_max: raw.limits.http_body_max,
        sign_gate: tokio::sync::Mutex::new(()),
        ce_claims: Default::default(),
        filtered_audit: Mutex::new(HashMap::new()),
        subscriber_slots: Arc::new(tokio::sync::Semaphore::new(raw.limits.subscribers_max)),
        subscribers_by_principal: Mutex::new(HashMap::new()),
        subscribers_per_principal_max: raw.limits.subscribers_per_principal_max,
        read_slots: Arc::new(tokio::sync::Semaphore::new(raw.limits.reads_inflight_max)),
        read_slots_max: raw.limits.reads_inflight_max,
        store_full,
        own_numbers,
        events_max: raw.limits.events_max,
        producer: Mutex::new(Producer {
            signer,
            next_seq,
            // Never below what it stamped before the restart, whatever the wall clock says.
            clock: HybridClock::resume(
                weft_fabric::Hlc::from_u64(hlc_last),
                crate::clock::HLC_DRIFT_MS_MAX,
            ),
            time: node_clock.clone(),
        }),
        clock: node_clock,
        data_dir: config.data_dir.clone(),
        readers: Mutex::new(vec![StoreReader::open(&config.data_dir)?]),
        committed: committed_rx,
        snapshot: snapshot_rx,
        metrics,
        chaos,
        tokens: config.tokens.iter().cloned().collect::<HashMap<_, _>>(),
        streams: config.streams.clone(),
        hash_keys: config.hash_keys.clone(),
        read_limit_max: raw.limits.read_limit_max,
        cursors_per_principal_max: raw.limits.cursors_per_principal_max,
        cursors: crate::cursor::Cursors::open_or_create(&config.data_dir)?,
        subscribers_max: raw.limits.subscribers_max,
        seeded: !raw.seeds.is_empty() || raw.mdns,
        // Seeds other than itself (the first node of a mesh often lists itself), or mDNS:
        // members to ask for this node's own events before it numbers new ones.
        asks_own: raw.mdns
            || raw
                .seeds
                .iter()
                .any(|s| *s != config.advertise && *s != raw.listen.mesh),
        started: Instant::now(),
        closing: closing_rx,
        policy: policy_state,
        audit: audit.clone(),
        limiter: quota_counts(&config.data_dir),
        policy_trust: trust,
        egress: crate::egress::Egress::default(),
        tables: tables.clone(),
    });
    tokio::spawn(crate::egress::run_flusher(api.clone(), flush_rx));
    tokio::spawn(crate::erase::run_retractor(api.clone(), retract_rx));
    tokio::spawn(save_quota_counts(api.clone(), config.data_dir.clone()));
    let api_at_shutdown = api.clone();
    let listener = tokio::net::TcpListener::bind(raw.listen.http)
        .await
        .with_context(|| format!("binding HTTP on {}", raw.listen.http))?;
    info!(name = %raw.name, key = %origin, region = %raw.region, mesh = %raw.listen.mesh,
        http = %raw.listen.http, generation, "node started");
    let edge = match raw.listen.edge {
        Some(addr) => Some(crate::edge::start(
            addr,
            &seed,
            raw.edge.clone(),
            api.clone(),
        )?),
        None => None,
    };
    let app = crate::http::router(api, raw.limits.http_body_max);
    let (stopping_tx, mut stopping_rx) = tokio::sync::watch::channel(false);
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        shutdown_signal().await;
        // End SSE streams, or the graceful shutdown would wait for them forever.
        let _ = closing_tx.send(true);
        let _ = stopping_tx.send(true);
    });
    // A graceful stop waits for open connections, but not for ever: a client that stopped
    // reading (its SSE events still queued for it) would hold the stop, and with it the
    // last commit and the aggregation windows' flush.
    tokio::select! {
        served = std::future::IntoFuture::into_future(server) => served.context("HTTP server")?,
        () = async {
            let _ = stopping_rx.wait_for(|s| *s).await;
            tokio::time::sleep(HTTP_DRAIN_MAX).await;
        } => tracing::warn!(
            after_s = HTTP_DRAIN_MAX.as_secs(),
            "HTTP connections still open after the stop signal; stopping without them"
        ),
    }
    info!("shutting down");
    // Open aggregation windows: their summaries are published before the driver stops.
    crate::egress::flush_at_shutdown(&api_at_shutdown).await;
    if let Some(edge) = &edge {
        edge.close();
    }
    let _ = shutdown_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), driver_task).await;
    transport.close_after_sending(Duration::from_secs(2)).await;
    audit.flush(AUDIT_FLUSH_LIMIT);
    save_quota_counts_now(&api_at_shutdown, &config.data_dir);
    Ok(())
}

/// How often the day's quota counts are saved while they change.
const QUOTA_SAVE_EVERY: Duration = Duration::from_secs(2);

/// The publish limiter, with the day's counts a previous run of this node saved (same UTC
/// day only). A file that cannot be read is logged and the day counted from zero: the
/// node still starts.
fn quota_counts(data_dir: &std::path::Path) -> crate::ratelimit::Limiter {
    let limiter = crate::ratelimit::Limiter::default();
    match crate::ratelimit::Saved::load(data_dir) {
        Ok(Some(saved)) => {
            if limiter.restore(&saved, crate::driver::wall_ms()) {
                info!(
                    "today's quota counts taken back from {}",
                    crate::ratelimit::SAVED_FILE
                );
            }
        }
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "quota counts not taken back; today's are counted from zero")
        }
    }
    limiter
}

/// Saves the day's quota counts every [`QUOTA_SAVE_EVERY`] while they change, for as
/// long as the process runs (through a stop too: the publishes a stop still answers are
/// counted; `serve`'s last save, after the driver stopped, takes the same lock).
async fn save_quota_counts(api: Arc<Api>, data_dir: std::path::PathBuf) {
    loop {
        tokio::time::sleep(QUOTA_SAVE_EVERY).await;
        let api = api.clone();
        let dir = data_dir.clone();
        let _ = tokio::task::spawn_blocking(move || save_quota_counts_now(&api, &dir)).await;
    }
}

fn save_quota_counts_now(api: &Api, data_dir: &std::path::Path) {
    if let Err(e) = api.limiter.save_to(data_dir, crate::driver::wall_ms()) {
        tracing::warn!(error = %format!("{e:#}"), "saving the day's quota counts failed; tried again in 2 s");
    }
}

/// Longest a graceful stop waits for open HTTP connections after the stop signal.
const HTTP_DRAIN_MAX: Duration = Duration::from_secs(3);

/// Waits for SIGINT, SIGTERM or SIGHUP and logs which came. SIGHUP stops the node
/// gracefully too (it was not caught, and the node died at once, without its last commit,
/// quota save or aggregation flush): the node reloads no configuration, so a changed config
/// takes a restart (policy bundles are pushed through the fabric, `weft policy push`).
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    async fn wait(kind: SignalKind) {
        match signal(kind) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    }
    // A node started with SIGHUP ignored (`nohup`) keeps ignoring it: tokio would install
    // a handler all the same, and a terminal's hangup would then stop it.
    let hangup = async {
        if sighup_ignored() {
            std::future::pending::<()>().await;
        }
        wait(SignalKind::hangup()).await;
    };
    let name = tokio::select! {
        () = wait(SignalKind::interrupt()) => "SIGINT",
        () = wait(SignalKind::terminate()) => "SIGTERM",
        () = hangup => "SIGHUP",
    };
    if name == "SIGHUP" {
        tracing::info!(
            signal = name,
            "stopping gracefully: the node reloads no configuration on SIGHUP (restart it to \
             apply a changed config; policy bundles are pushed with `weft policy push`)"
        );
    } else {
        tracing::info!(signal = name, "stopping gracefully");
    }
}

/// Whether this process was started with SIGHUP ignored (`nohup`), read from the kernel's
/// `SigIgn` mask in `/proc/self/status` (no unsafe `sigaction` query: the workspace forbids
/// unsafe code). Elsewhere than Linux: false.
pub(crate) fn sighup_ignored() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|status| sig_ignored(&status, 1))
}

/// Whether signal `signo` is set in the `SigIgn:` mask of a `/proc/<pid>/status` text.
fn sig_ignored(status: &str, signo: u32) -> bool {
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .is_some_and(|mask| signo >= 1 && mask & (1 << (signo - 1)) != 0)
}

#[cfg(test)]
mod tests {
    /// The `SigIgn` mask is read as the kernel writes it: bit `n - 1` for signal `n`.
    #[test]
    fn an_ignored_signal_is_read_from_the_status_mask() {
        let status = |mask: &str| {
            format!("Name:\tweft\nSigBlk:\t0000000000000000\nSigIgn:\t{mask}\nSigCgt:\t0\n")
        };
        assert!(super::sig_ignored(&status("0000000000000001"), 1), "SIGHUP");
        assert!(!super::sig_ignored(&status("0000000000001000"), 1));
        assert!(
            super::sig_ignored(&status("0000000000001000"), 13),
            "SIGPIPE"
        );
        assert!(!super::sig_ignored("no mask here", 1));
        // This test process: whatever its mask, reading it does not fail.
        let _ = super::sighup_ignored();
    }

    #[test]
    fn dashboards_link_to_a_reachable_http_address() {
        let adv: std::net::SocketAddr = "10.0.2.10:7400".parse().unwrap();
        let any: std::net::SocketAddr = "0.0.0.0:8400".parse().unwrap();
        let any6: std::net::SocketAddr = "[::]:8400".parse().unwrap();
        let one: std::net::SocketAddr = "127.0.0.1:8400".parse().unwrap();
        assert_eq!(super::reachable_http(any, adv), "10.0.2.10:8400");
        assert_eq!(super::reachable_http(any6, adv), "10.0.2.10:8400");
        assert_eq!(super::reachable_http(one, adv), "127.0.0.1:8400");
    }
}
