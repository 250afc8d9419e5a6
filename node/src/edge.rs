//! The edge port (issue 8): a second QUIC endpoint (`listen.edge`, ALPN `weft-edge/1`)
//! where `weft-agent` devices connect, prove their Ed25519 device key in TLS, receive
//! their profile (principal, stamps, local rules, command stream) and publish batches of
//! events they signed themselves. Protocol: `weft_fabric::edge`; docs: `docs/agent.md`.
//!
//! Admission: with a policy in force, a device key is accepted when the policy enrolls it
//! (`Policy::enrollment`); without one, when the config's `[[edge.devices]]` allow-list
//! names it. Refusals close the connection with `close::NOT_ENROLLED`, are counted
//! (`weft_rejected_total{reason}`) and audited. Events go through the same checks as the
//! HTTP pre-signed path (signature, stream stored here, policy authorization and stamp:
//! `http::enforce_presigned`), plus: the envelope's origin is the connection's device key
//! and its principal and tenant are the device's. A batch is all or nothing; it is
//! answered once the driver's group commit made it durable (`Ack::Local`). Backpressure:
//! QUIC limits each agent to `edge.batches_inflight_max` batch streams, and a full
//! publish queue or in-flight limit answers `Busy` (counted as `edge_busy`) without
//! keeping anything. A resent event the node already holds is answered durable: the core
//! drops duplicates by (origin, sequence number).
//!
//! Each connection follows the policy epoch ([`Edge::refresh`]: per connection every
//! [`EPOCH_POLL`], and before each batch and downlink page), so a device the epoch no
//! longer enrolls is cut off whether or not its agent keeps a control stream. Batches take
//! the policy's rate limits and quotas (`http::enforce_rate`, `busy` when over) and their
//! bodies the node's budget for publish bodies; one connection per device key.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use serde::Deserialize;
use tracing::{debug, info, warn};
use weft_fabric::edge::{
    self, BatchAnswer, EDGE_ALPN, FRAME_LEN_MAX, Hello, LocalRule, Profile, StampRule, Subscribe,
    close,
};
use weft_fabric::{Event, Residency, StreamName, StreamPattern};

use crate::driver::Ack;
use crate::http::Api;

/// How often a connected agent's profile is re-derived to notice a new policy epoch.
const EPOCH_POLL: Duration = Duration::from_secs(1);
/// Downlink events read from the log per query (one round trip to the store each).
const COMMANDS_PAGE_LEN: usize = 128;
/// How long a busy agent is told to wait when nothing says how long (the publish queue,
/// the body budget).
const BUSY_RETRY_MS: u64 = 100;
/// Shortest wait a rate-limited agent is told: the limiter's own wait is often a few
/// milliseconds (one batch short of a token or two), and a resend sooner would only be
/// refused again.
const RATE_RETRY_MIN_MS: u64 = 10;
/// Longest wait an agent is told (a daily quota says hours: the agent asks again after
/// this, and is answered again).
const RATE_RETRY_MAX_MS: u64 = 60_000;
/// Largest control frame (hello, subscribe), bytes.
const CONTROL_FRAME_LEN_MAX: usize = 64 << 10;
/// TLS handshakes in progress at once on the edge port (a handshake holds no agent slot).
const HANDSHAKES_MAX: usize = 256;

/// The `[edge]` config section (`docs/config.md`); the address is `listen.edge`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct EdgeConfig {
    /// Devices admitted when no policy is in force (a policy's enrollment replaces the list).
    pub(crate) devices: Vec<EdgeDevice>,
    /// Batches one agent may have in flight (QUIC stream limit).
    pub(crate) batches_inflight_max: u32,
    /// Events per batch.
    pub(crate) batch_len_max: u32,
    /// Agents connected at once.
    pub(crate) agents_max: usize,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        Self {
            devices: Vec::new(),
            batches_inflight_max: 4,
            batch_len_max: 256,
            agents_max: 1024,
        }
    }
}

/// A device in the config allow-list.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EdgeDevice {
    /// Principal name stamped in its events.
    pub(crate) name: String,
    /// Tenant.
    pub(crate) tenant: String,
    /// Hex Ed25519 public key (`weft-agent keygen` prints it).
    pub(crate) key: String,
    /// Stream patterns it may publish to.
    #[serde(default = "any_stream")]
    pub(crate) streams: Vec<String>,
    /// Local rules sent to its agent.
    #[serde(default)]
    pub(crate) rules: Vec<LocalRule>,
}

fn any_stream() -> Vec<String> {
    vec![">".into()]
}

/// Checks the `[edge]` section; errors name the field.
pub(crate) fn check_config(c: &EdgeConfig) -> anyhow::Result<()> {
    let err = |f: String, m: String| anyhow::anyhow!("config field `{f}`: {m}");
    if c.batches_inflight_max == 0 || c.batches_inflight_max > 64 {
        return Err(err(
            "edge.batches_inflight_max".into(),
            "must be 1 to 64".into(),
        ));
    }
    if c.batch_len_max == 0 || c.batch_len_max as usize > edge::BATCH_LEN_MAX {
        return Err(err(
            "edge.batch_len_max".into(),
            format!("must be 1 to {} (BATCH_LEN_MAX)", edge::BATCH_LEN_MAX),
        ));
    }
    if c.agents_max == 0 {
        return Err(err("edge.agents_max".into(), "must be at least 1".into()));
    }
    let mut keys = std::collections::HashMap::new();
    let mut names = std::collections::HashMap::new();
    for (i, d) in c.devices.iter().enumerate() {
        let f = format!("edge.devices[{i}]");
        let key = crate::config::hex32(&format!("{f}.key"), &d.key)?;
        // One entry per device: two names for a key would make its principal depend on
        // the entry's order; two keys for a name would share a principal and a command
        // stream.
        if let Some(j) = keys.insert(key, i) {
            return Err(err(
                format!("{f}.key"),
                format!("the same key as edge.devices[{j}]"),
            ));
        }
        if let Some(j) = names.insert(d.name.clone(), i) {
            return Err(err(
                format!("{f}.name"),
                format!("the same name as edge.devices[{j}]"),
            ));
        }
        if d.name.is_empty() || d.name.len() > weft_fabric::limits::NAME_LEN_MAX {
            return Err(err(format!("{f}.name"), "must be 1 to 128 bytes".into()));
        }
        if d.tenant.is_empty() || d.tenant.len() > weft_fabric::limits::NAME_LEN_MAX {
            return Err(err(format!("{f}.tenant"), "must be 1 to 128 bytes".into()));
        }
        for (k, p) in d.streams.iter().enumerate() {
            StreamPattern::new(p.clone())
                .map_err(|e| err(format!("{f}.streams[{k}]"), e.to_string()))?;
        }
        if d.rules.len() > edge::RULES_MAX {
            return Err(err(
                format!("{f}.rules"),
                format!("over RULES_MAX ({})", edge::RULES_MAX),
            ));
        }
        for (k, r) in d.rules.iter().enumerate() {
            r.check().map_err(|e| err(format!("{f}.rules[{k}]"), e))?;
        }
    }
    Ok(())
}

/// An admitted device.
#[derive(Debug, Clone)]
struct Device {
    key: [u8; 32],
    principal: String,
    tenant: String,
    /// Stream patterns it may publish to (enforced here without a policy; the policy's
    /// `authorize` does it otherwise).
    streams: Vec<StreamPattern>,
    profile: Profile,
    /// The policy it was admitted under (`PolicyState::generation`: changes with the
    /// epoch, and with a bundle replaced by another of the same epoch).
    generation: u64,
}

/// One agent's connection: its device as the policy in force admits it
/// ([`Edge::refresh`]), and the profile its control stream sends.
struct Agent {
    conn: quinn::Connection,
    device: std::sync::RwLock<Device>,
    profile: tokio::sync::watch::Sender<Profile>,
}

/// The edge port's shared state.
pub(crate) struct Edge {
    api: Arc<Api>,
    config: EdgeConfig,
    allow: Vec<([u8; 32], EdgeDevice)>,
    /// Admitted agents (`edge.agents_max`).
    agents: Arc<tokio::sync::Semaphore>,
    /// TLS handshakes in progress ([`HANDSHAKES_MAX`]).
    handshakes: Arc<tokio::sync::Semaphore>,
    /// The connection of each device key (a newer one replaces the older).
    connected: std::sync::Mutex<std::collections::HashMap<[u8; 32], quinn::Connection>>,
    endpoint: quinn::Endpoint,
}

impl std::fmt::Debug for Edge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Edge")
    }
}

/// Accepts any Ed25519 client certificate (TLS still checks the handshake signature, so
/// the agent proves it holds the key); admission is decided after the handshake, where a
/// refusal can be counted, audited and explained.
#[derive(Debug)]
struct DeviceCertVerifier(WebPkiSupportedAlgorithms);

impl ClientCertVerifier for DeviceCertVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        crate::tls::cert_key(end_entity).ok_or_else(|| {
            rustls::Error::General("device certificate does not carry an Ed25519 key".into())
        })?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

fn server_config(
    seed: &[u8; 32],
    batches_inflight_max: u32,
) -> anyhow::Result<quinn::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut pkcs8 = crate::tls::ED25519_PKCS8_PREFIX.to_vec();
    pkcs8.extend_from_slice(seed);
    let key_der = PrivatePkcs8KeyDer::from(pkcs8);
    let key_pair = rcgen::KeyPair::try_from(&key_der).context("loading the node key for TLS")?;
    let cert = rcgen::CertificateParams::new(vec!["weft-node".to_string()])
        .context("certificate parameters")?
        .self_signed(&key_pair)
        .context("self-signing the edge certificate")?;
    let verifier = DeviceCertVerifier(provider.signature_verification_algorithms);
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3 server")?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_single_cert(vec![cert.der().clone()], PrivateKeyDer::Pkcs8(key_der))
        .context("edge certificate")?;
    tls.alpn_protocols = vec![EDGE_ALPN.to_vec()];
    let crypto =
        quinn::crypto::rustls::QuicServerConfig::try_from(tls).context("QUIC server crypto")?;
    let mut transport = quinn::TransportConfig::default();
    transport
        .keep_alive_interval(Some(Duration::from_secs(2)))
        .max_idle_timeout(Some(quinn::VarInt::from_u32(10_000).into()))
        .max_concurrent_uni_streams(quinn::VarInt::from_u32(0))
        // Batches in flight, plus the control stream and the downlink.
        .max_concurrent_bidi_streams(quinn::VarInt::from_u32(batches_inflight_max + 2))
        .receive_window(quinn::VarInt::from_u32(
            (FRAME_LEN_MAX as u32).saturating_mul(batches_inflight_max.min(8)),
        ))
        .stream_receive_window(quinn::VarInt::from_u32(FRAME_LEN_MAX as u32));
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(Arc::new(transport));
    Ok(server)
}

/// Starts the edge port on `addr`; agents are served until [`Edge::close`].
pub(crate) fn start(
    addr: SocketAddr,
    seed: &[u8; 32],
    config: EdgeConfig,
    api: Arc<Api>,
) -> anyhow::Result<Arc<Edge>> {
    let server = server_config(seed, config.batches_inflight_max)?;
    let endpoint = quinn::Endpoint::server(server, addr)
        .with_context(|| format!("binding the edge port on {addr} (UDP)"))?;
    let allow = config
        .devices
        .iter()
        .map(|d| Ok((crate::config::hex32("edge.devices.key", &d.key)?, d.clone())))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if !allow.is_empty() && api.policy.policy().is_some() {
        warn!("a policy is in force: edge.devices is ignored, the policy's enrollment decides");
    }
    let edge = Arc::new(Edge {
        agents: Arc::new(tokio::sync::Semaphore::new(config.agents_max)),
        handshakes: Arc::new(tokio::sync::Semaphore::new(HANDSHAKES_MAX)),
        connected: std::sync::Mutex::default(),
        api,
        config,
        allow,
        endpoint,
    });
    info!(%addr, "edge port listening (ALPN weft-edge/1)");
    let e = edge.clone();
    tokio::spawn(async move {
        while let Some(incoming) = e.endpoint.accept().await {
            tokio::spawn(e.clone().serve(incoming));
        }
    });
    Ok(edge)
}

/// Whom and what an audited edge refusal is about.
struct Subject<'a> {
    principal: &'a str,
    stream: &'a str,
    id: String,
}

/// The `busy` wait for a batch the policy's rate limit or quota refused: the limiter's
/// wait to the millisecond (`wait_ms`), within [`RATE_RETRY_MIN_MS`] and
/// [`RATE_RETRY_MAX_MS`]. It was whole seconds and at least [`BUSY_RETRY_MS`] before, so
/// an agent limited to 100 events/s with a burst of 20 waited a second for every batch of
/// 20 the bucket refilled in 200 ms, and drained at about its burst per second.
fn rate_retry_ms(wait_ms: Option<u64>) -> u64 {
    wait_ms.map_or(BUSY_RETRY_MS, |ms| {
        ms.clamp(RATE_RETRY_MIN_MS, RATE_RETRY_MAX_MS)
    })
}

/// An event of a batch refused for good (the agent dead-letters it; a void takes its
/// number). Counted and audited by the caller.
fn refused(index: usize, reason: &str, message: String) -> BatchAnswer {
    BatchAnswer::Refused {
        index: index as u32,
        reason: reason.into(),
        message,
    }
}

impl Edge {
    /// Stops accepting agents and closes their connections.
    pub(crate) fn close(&self) {
        self.endpoint.close(
            quinn::VarInt::from_u32(close::SHUTDOWN),
            b"node shutting down",
        );
    }

    /// The highest sequence number of the device's origin this node holds (stored or
    /// erased), for [`Profile::origin_seq_max`]: read off the async workers with a read slot
    /// (`http::read_store`); 0 if the store cannot be read (logged; the agent then learns
    /// of a reused number from a batch's `seq_reused` answer instead).
    async fn origin_seq_max(&self, key: &[u8; 32]) -> u64 {
        let origin = weft_fabric::OriginKey(*key);
        match crate::http::read_store(&self.api, move |r| r.max_seq(&origin)).await {
            Ok(max) => max,
            Err(e) => {
                warn!(device = %hex::encode(key), error = %e.message(), "reading the device's highest sequence number failed");
                0
            }
        }
    }

    /// Admission and profile of a device key under the policy in force (or the allow-list).
    fn admit(&self, key: &[u8; 32]) -> Result<Device, (&'static str, String)> {
        let hex_key = hex::encode(key);
        let api = &self.api;
        // A node of a governed fabric before its first policy admits no device: the
        // allow-list would stand in for an enrollment the policy has not made.
        if api.policy.pending() {
            return Err((
                crate::http::POLICY_PENDING,
                format!(
                    "device key {hex_key}: this node trusts operator keys but has no policy bundle in force yet"
                ),
            ));
        }
        let in_force = api.policy.policy();
        let generation = in_force.as_ref().map_or(0, |p| p.compilation());
        let (principal, tenant, streams, rules, stamps, default_stamp, epoch, burst) =
            match in_force {
                Some(policy) => {
                    let Some(e) = policy.enrollment(key) else {
                        return Err((
                            "device_not_enrolled",
                            format!(
                                "device key {hex_key} is not enrolled by policy epoch {}",
                                policy.epoch()
                            ),
                        ));
                    };
                    let stamps = policy
                        .bundle()
                        .streams
                        .iter()
                        .filter_map(|r| {
                            let class = policy.class(&r.classification)?;
                            Some(StampRule {
                                pattern: r.pattern.clone(),
                                classification: r.classification.clone(),
                                residency: residency_codes(&class.residency),
                            })
                        })
                        .collect();
                    // A batch over the device's burst could never be admitted whole: batches
                    // are cut to it.
                    let limits = policy.rate_limits(&e.principal, &e.tenant);
                    let burst = [limits.principal, limits.tenant]
                        .into_iter()
                        .flatten()
                        .map(|l| l.burst)
                        .min();
                    (
                        e.principal.clone(),
                        e.tenant.clone(),
                        e.streams.clone(),
                        e.rules.clone(),
                        stamps,
                        None,
                        policy.epoch(),
                        burst,
                    )
                }
                None => {
                    let Some((_, d)) = self.allow.iter().find(|(k, _)| k == key) else {
                        return Err((
                            "device_not_allowed",
                            format!(
                                "device key {hex_key} is not in this node's edge.devices (and no policy is in force)"
                            ),
                        ));
                    };
                    let streams = d
                        .streams
                        .iter()
                        .filter_map(|p| StreamPattern::new(p.clone()).ok())
                        .collect();
                    let internal = StampRule {
                        pattern: ">".into(),
                        classification: "internal".into(),
                        residency: None,
                    };
                    (
                        d.name.clone(),
                        d.tenant.clone(),
                        streams,
                        d.rules.clone(),
                        Vec::new(),
                        Some(internal),
                        0,
                        None,
                    )
                }
            };
        let commands = StreamName::new(format!("devices.{principal}.commands"))
            .ok()
            .filter(|s| api.streams.iter().any(|p| p.matches(s)))
            .map(|s| s.as_str().to_string());
        let profile = Profile {
            node: api.name.clone(),
            region: api.me.region.to_string(),
            epoch,
            principal: principal.clone(),
            tenant: tenant.clone(),
            streams: streams.iter().map(|p| p.as_str().to_string()).collect(),
            stamps,
            default_stamp,
            rules,
            commands,
            batch_len_max: burst.map_or(self.config.batch_len_max, |b| {
                self.config
                    .batch_len_max
                    .min(u32::try_from(b.max(1)).unwrap_or(u32::MAX))
            }),
            batches_inflight_max: self.config.batches_inflight_max,
            // Filled in by the caller: a store read, done off the async workers.
            origin_seq_max: 0,
        };
        Ok(Device {
            key: *key,
            principal,
            tenant,
            streams,
            profile,
            generation,
        })
    }

    async fn serve(self: Arc<Self>, incoming: quinn::Incoming) {
        let remote = incoming.remote_address();
        // Handshakes in progress have a budget of their own: a client that starts one and
        // stalls holds a handshake slot (until QUIC's idle timeout), never an agent's.
        let Ok(_handshake) = self.handshakes.clone().try_acquire_owned() else {
            self.deny(
                "edge_too_many_handshakes",
                None,
                None,
                format!("{HANDSHAKES_MAX} edge handshakes in progress (HANDSHAKES_MAX); {remote} refused"),
            );
            incoming.refuse();
            return;
        };
        let conn = match incoming.await {
            Ok(c) => c,
            Err(e) => {
                // Not a security decision (nothing was presented): counted, logged.
                self.api.metrics.reject("edge_handshake_failed");
                debug!(%remote, error = %e, "edge handshake failed");
                return;
            }
        };
        drop(_handshake);
        let Some(key) = crate::tls::peer_key(&conn) else {
            self.deny(
                "edge_no_device_key",
                None,
                None,
                format!("{remote}: the TLS certificate carries no Ed25519 device key"),
            );
            conn.close(quinn::VarInt::from_u32(close::PROTOCOL), b"no device key");
            return;
        };
        let device = match self.admit(&key) {
            Ok(mut d) => {
                d.profile.origin_seq_max = self.origin_seq_max(&key).await;
                d
            }
            Err((reason, message)) => {
                self.deny(reason, Some(&key), None, message.clone());
                conn.close(
                    quinn::VarInt::from_u32(close::NOT_ENROLLED),
                    format!("{reason}: {message}").as_bytes(),
                );
                return;
            }
        };
        // An agent slot only for an admitted device.
        let Ok(_slot) = self.agents.clone().try_acquire_owned() else {
            self.deny(
                "edge_too_many_agents",
                Some(&key),
                None,
                format!(
                    "edge.agents_max ({}) agents connected",
                    self.config.agents_max
                ),
            );
            conn.close(
                quinn::VarInt::from_u32(close::TOO_MANY_AGENTS),
                b"edge.agents_max reached",
            );
            return;
        };
        // One connection per device key: a newer one replaces the older (an agent that
        // reconnected before the node noticed its old connection was gone), so one device
        // holds one agent slot.
        let older = self
            .connected
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(key, conn.clone());
        if let Some(older) = older {
            older.close(
                quinn::VarInt::from_u32(close::REPLACED),
                b"a newer connection of this device key replaced this one",
            );
        }
        self.api.metrics.edge_agents.inc();
        info!(target: "audit", decision = "allow", device = %hex::encode(key),
            principal = %device.principal, %remote, "edge agent connected");
        let (profile, _) = tokio::sync::watch::channel(device.profile.clone());
        let agent = Arc::new(Agent {
            conn: conn.clone(),
            device: std::sync::RwLock::new(device),
            profile,
        });
        tokio::spawn(self.clone().watch_epoch(agent.clone()));
        loop {
            let (send, mut recv) = match conn.accept_bi().await {
                Ok(s) => s,
                Err(e) => {
                    debug!(error = %e, "edge connection ended");
                    break;
                }
            };
            let edge = self.clone();
            let agent = agent.clone();
            tokio::spawn(async move {
                let mut kind = [0u8; 1];
                if recv.read_exact(&mut kind).await.is_err() {
                    return;
                }
                let r = match kind[0] {
                    edge::STREAM_HELLO => edge.control(&agent, send, recv).await,
                    edge::STREAM_BATCH => edge.batch_stream(&agent, send, recv).await,
                    edge::STREAM_COMMANDS => edge.commands(&agent, send, recv).await,
                    k => {
                        edge.api.metrics.reject("edge_protocol");
                        agent.conn.close(
                            quinn::VarInt::from_u32(close::PROTOCOL),
                            format!("unknown stream kind {k}").as_bytes(),
                        );
                        Ok(())
                    }
                };
                if let Err(e) = r {
                    debug!(error = %e, "edge stream ended");
                }
            });
        }
        {
            let mut connected = self
                .connected
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if connected
                .get(&key)
                .is_some_and(|c| c.stable_id() == conn.stable_id())
            {
                connected.remove(&key);
            }
        }
        self.api.metrics.edge_agents.dec();
        info!(device = %hex::encode(key), "edge agent disconnected");
    }

    /// Follows the policy for one connection, whatever streams its agent opened: a new
    /// epoch admits the device again (its profile goes to the control stream) or closes
    /// the connection when the epoch no longer enrolls the key.
    async fn watch_epoch(self: Arc<Self>, agent: Arc<Agent>) {
        loop {
            tokio::select! {
                _ = agent.conn.closed() => return,
                () = tokio::time::sleep(EPOCH_POLL) => {}
            }
            if self.refresh(&agent).is_none() {
                return;
            }
        }
    }

    /// The device under the policy in force: admitted again when the epoch changed since
    /// it was (its new profile sent on the control stream). `None` when the epoch no longer
    /// admits it: refused, audited, and the connection closed.
    fn refresh(&self, agent: &Agent) -> Option<Device> {
        let generation = self.api.policy.generation();
        let (key, seq_max, current) = {
            let d = agent
                .device
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            (
                d.key,
                d.profile.origin_seq_max,
                (d.generation == generation).then(|| d.clone()),
            )
        };
        if current.is_some() {
            return current;
        }
        match self.admit(&key) {
            Ok(mut d) => {
                // What the node held when the agent connected: the agent has numbered on
                // from there (it only ever raises its next number to it), so no read here.
                d.profile.origin_seq_max = seq_max;
                agent.profile.send_replace(d.profile.clone());
                info!(device = %hex::encode(key), epoch = d.profile.epoch, "edge profile updated");
                *agent
                    .device
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = d.clone();
                Some(d)
            }
            Err((reason, message)) => {
                self.deny(reason, Some(&key), None, message.clone());
                agent.conn.close(
                    quinn::VarInt::from_u32(close::NOT_ENROLLED),
                    format!("{reason}: {message}").as_bytes(),
                );
                None
            }
        }
    }

    /// The control stream: hello, the profile, and each new profile as the policy epoch
    /// changes ([`Edge::watch_epoch`]).
    async fn control(
        &self,
        agent: &Agent,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
    ) -> anyhow::Result<()> {
        let hello: Hello =
            serde_json::from_slice(&read_frame(&mut recv, CONTROL_FRAME_LEN_MAX).await?)
                .context("hello frame")?;
        let mut profiles = agent.profile.subscribe();
        let key = agent
            .device
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .key;
        info!(device = %hex::encode(key), name = %hello.name, agent = %hello.agent, "edge hello");
        loop {
            let profile = profiles.borrow_and_update().clone();
            write_frame(&mut send, &serde_json::to_vec(&profile)?).await?;
            tokio::select! {
                _ = agent.conn.closed() => return Ok(()),
                r = profiles.changed() => if r.is_err() { return Ok(()) },
            }
        }
    }

    async fn batch_stream(
        &self,
        agent: &Agent,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
    ) -> anyhow::Result<()> {
        let answer = match self.read_batch(&mut recv).await {
            Err(answer) => answer,
            Ok((body, _budget)) => match self.refresh(agent) {
                // No longer enrolled: the connection is closed, nothing to answer.
                None => return Ok(()),
                Some(device) => self.batch(&device, &body).await,
            },
        };
        write_frame(&mut send, &serde_json::to_vec(&answer)?).await?;
        send.finish()?;
        Ok(())
    }

    /// Reads a batch frame with room in the node's budget for publish bodies in progress
    /// (`limits.publish_bytes_inflight_max`, shared with HTTP), taken before the body is
    /// read and held until the batch is answered. A frame that cannot be read or is over
    /// the limit is answered `Failed` (the agent sends it again; no event of it is refused
    /// for good), no room `Busy`.
    async fn read_batch(
        &self,
        recv: &mut quinn::RecvStream,
    ) -> Result<(Vec<u8>, tokio::sync::OwnedSemaphorePermit), BatchAnswer> {
        let mut len = [0u8; 4];
        if let Err(e) = recv.read_exact(&mut len).await {
            return Err(self.failed("edge_stream_error", format!("batch frame length: {e}")));
        }
        let len = u32::from_be_bytes(len) as usize;
        if len > FRAME_LEN_MAX {
            return Err(self.failed(
                "edge_bad_frame",
                format!("batch frame of {len} bytes, over FRAME_LEN_MAX ({FRAME_LEN_MAX})"),
            ));
        }
        let kib = u32::try_from(len.div_ceil(1024).max(1)).unwrap_or(u32::MAX);
        let Ok(budget) = self.api.body_budget.clone().try_acquire_many_owned(kib) else {
            let _ = recv.stop(quinn::VarInt::from_u32(0));
            return Err(self.busy("publish_bytes_inflight_max"));
        };
        let mut body = vec![0u8; len];
        if let Err(e) = recv.read_exact(&mut body).await {
            return Err(self.failed("edge_stream_error", format!("batch frame body: {e}")));
        }
        Ok((body, budget))
    }

    fn failed(&self, reason: &'static str, message: String) -> BatchAnswer {
        self.api.metrics.reject(reason);
        debug!(reason, %message, "edge batch failed");
        BatchAnswer::Failed {
            reason: reason.into(),
            message,
        }
    }

    fn busy(&self, why: &str) -> BatchAnswer {
        self.api.metrics.reject("edge_busy");
        debug!(why, "edge batch answered busy");
        BatchAnswer::Busy {
            retry_ms: BUSY_RETRY_MS,
        }
    }

    /// Counts, logs and audits a refusal of the edge port (a device, or an event of it).
    fn deny(
        &self,
        reason: &'static str,
        key: Option<&[u8; 32]>,
        event: Option<Subject<'_>>,
        message: String,
    ) {
        let api = &self.api;
        api.metrics.reject(reason);
        let device = key.map_or_else(|| "?".to_string(), hex::encode);
        let what = if event.is_some() { "event" } else { "agent" };
        warn!(target: "audit", decision = "deny", reason, device, "edge {what} refused: {message}");
        let mut entry = crate::audit::Entry::now(
            crate::audit::Decision::Deny,
            reason,
            api.policy.epoch(),
            message,
        );
        if let Some(Subject {
            principal,
            stream,
            id,
        }) = event
        {
            entry = entry.principal(principal).stream(stream).event(id);
        }
        api.audit.record(entry);
    }

    /// Checks, publishes and waits for one batch: all of it durable, or nothing kept.
    async fn batch(&self, device: &Device, body: &[u8]) -> BatchAnswer {
        let started = Instant::now();
        let api = &self.api;
        // Whole-frame faults are answered `Failed`: `Refused` names one event as refused for
        // good, which the agent would dead-letter although nothing was wrong with it.
        let envelopes = match edge::decode_batch(body) {
            Ok(e) => e,
            Err(e) => return self.failed("edge_bad_frame", e.to_string()),
        };
        if envelopes.len() > self.config.batch_len_max as usize {
            return self.failed(
                "edge_batch_too_large",
                format!(
                    "{} events, over edge.batch_len_max ({})",
                    envelopes.len(),
                    self.config.batch_len_max
                ),
            );
        }
        let Ok(_inflight) = api.inflight.clone().try_acquire_owned() else {
            return self.busy("publishes_inflight_max");
        };
        let mut unverified = Vec::with_capacity(envelopes.len());
        for (i, bytes) in envelopes.iter().enumerate() {
            match weft_fabric::decode(bytes) {
                Ok(u) => unverified.push(u),
                Err(e) => {
                    let message = format!("event {i} of the batch: {e}");
                    self.deny("bad_envelope", Some(&device.key), None, message.clone());
                    return refused(i, "bad_envelope", message);
                }
            }
        }
        let mut events: Vec<Arc<Event>> = Vec::with_capacity(unverified.len());
        for (i, r) in weft_fabric::verify_batch(unverified)
            .into_iter()
            .enumerate()
        {
            match r {
                Ok(e) => events.push(Arc::new(e)),
                Err((u, e)) => {
                    let message = format!("event {}: {e}", u.id());
                    self.deny(
                        "bad_signature",
                        Some(&device.key),
                        Some(Subject {
                            principal: &device.principal,
                            stream: u.claimed_data().stream().as_str(),
                            id: u.id().to_string(),
                        }),
                        message.clone(),
                    );
                    return refused(i, "bad_signature", message);
                }
            }
        }
        // One epoch for the whole batch, the one the device was admitted under.
        let policy = api.policy.policy();
        if policy.as_ref().map_or(0, |p| p.compilation()) != device.generation {
            return self.busy("the policy epoch changed while the batch was read");
        }
        let principal = crate::config::Principal {
            name: device.principal.clone(),
            tenant: device.tenant.clone(),
            token_sha256: String::new(),
            admin: false,
        };
        for (i, event) in events.iter().enumerate() {
            let refusal = match self.check(device, &principal, policy.as_deref(), event) {
                Err(r) => Some(r),
                // A keyed event on a table stream is a write: checked as a pre-signed
                // HTTP one is (an operation the table would ignore, its bounds, a version
                // naming writes not made yet).
                Ok(()) => match crate::tables::write_refusal(
                    api,
                    event.stream(),
                    event.key(),
                    event.content_type(),
                    event.payload(),
                )
                .await
                {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => Some((e.reason(), e.message().to_string())),
                    Err(_) => return self.busy("table write check unanswered"),
                },
            };
            if let Some((reason, message)) = refusal {
                // A resend of an event this node already holds (stored under an older
                // epoch, its acknowledgement lost) is durable, not refused (and not
                // counted or audited as one).
                let id = event.id();
                match crate::http::read_store(api, move |r| r.event_by_id(&id)).await {
                    Ok(Some(_)) => continue,
                    Ok(None) => {}
                    // Not known whether it is held (reads busy, a store error): a refusal
                    // would be for good (the agent dead-letters it), so: later.
                    Err(_) => return self.busy("held check unanswered"),
                }
                self.deny(
                    reason,
                    Some(&device.key),
                    Some(Subject {
                        principal: &device.principal,
                        stream: event.stream().as_str(),
                        id: event.id().to_string(),
                    }),
                    message.clone(),
                );
                return refused(i, reason, message);
            }
        }
        // The policy's rate limits and daily quotas, for every event of the batch (voids
        // included: they are stored everywhere too), as for an HTTP publish.
        if let (Some(policy), Some(first)) = (policy.as_deref(), events.first()) {
            let bytes: u64 = envelopes.iter().map(|b| b.len() as u64).sum();
            // Counted and audited by `enforce_rate`. Kept at once: a batch admitted here
            // is answered for every event (stored, or refused for a reason of its own).
            if let Err(e) = crate::http::enforce_rate(
                api,
                policy,
                &principal,
                events.len() as u64,
                bytes,
                first.stream().as_str(),
            )
            .map(crate::http::Charge::keep)
            {
                return if e.reason() == "batch_over_burst" {
                    BatchAnswer::Failed {
                        reason: e.reason().into(),
                        message: e.message().to_string(),
                    }
                } else {
                    BatchAnswer::Busy {
                        retry_ms: rate_retry_ms(e.retry_after_ms()),
                    }
                };
            }
        }
        let permit = match crate::http::reserve(api) {
            Ok(p) => p,
            Err(_) => return self.busy("publish_queue_max"),
        };
        let n = events.len();
        let seqs: Vec<u64> = events.iter().map(|e| e.seq()).collect();
        let batch_ids: Vec<String> = events.iter().map(|e| e.id().to_string()).collect();
        let (reply, rx) = tokio::sync::oneshot::channel();
        // Egress transforms derive from device events too, as from any pre-signed publish.
        crate::egress::send_presigned(
            api,
            permit,
            events,
            vec![None; n],
            Ack::Local,
            started,
            reply,
        )
        .await;
        let answer = rx.await;
        // The batch's events the node took: all of a durable answer, and those a refusal
        // says were taken beside the refused ones.
        api.metrics.published(
            "edge",
            match &answer {
                Ok(Ok(p)) if p.durable_local => n,
                Ok(Err(e)) => e.accepted(),
                _ => 0,
            },
        );
        match answer {
            Ok(Ok(p)) if p.durable_local => BatchAnswer::Durable { ids: p.ids },
            Ok(Ok(_)) => self.failed("not_durable", "the node did not confirm the commit".into()),
            // Every event of the batch is stored or settled for good: an erase covers it,
            // or retention expired it here after it was stored. Its number is seen
            // fabric-wide, so resending it (or a void event under its number) could only
            // be refused again, for ever. Counted and audited by the driver.
            Ok(Err(e @ crate::driver::PublishError::Erased { .. })) => {
                warn!(device = %hex::encode(device.key), error = %e,
                    "edge batch: events refused as erased or expired are settled; answered durable");
                BatchAnswer::Durable { ids: batch_ids }
            }
            // Counted and audited by the driver.
            Ok(Err(e @ crate::driver::PublishError::SeqReused { .. })) => {
                let message = e.to_string();
                match e {
                    crate::driver::PublishError::SeqReused {
                        seq,
                        seqs: refused,
                        held_max,
                        ..
                    } => BatchAnswer::SeqReused {
                        index: seqs.iter().position(|s| *s == seq).unwrap_or(0) as u32,
                        seqs: refused,
                        held_max,
                        message,
                    },
                    other => BatchAnswer::Failed {
                        reason: "store_refused".into(),
                        message: other.to_string(),
                    },
                }
            }
            // Counted by the driver, once per event refused.
            Ok(Err(e)) => BatchAnswer::Failed {
                reason: "store_refused".into(),
                message: e.to_string(),
            },
            Err(_) => self.failed("shutting_down", "the node is shutting down".into()),
        }
    }

    /// The checks of one event: who signed it, whom it claims, and the HTTP pre-signed
    /// path's stream and policy checks. The error is (reason, message), neither counted
    /// nor audited yet (the caller does, unless the event turns out to be held already).
    fn check(
        &self,
        device: &Device,
        principal: &crate::config::Principal,
        policy: Option<&weft_policy::Policy>,
        event: &Event,
    ) -> Result<(), (&'static str, String)> {
        if event.origin().0 != device.key {
            return Err((
                "origin_mismatch",
                format!(
                    "event {} is signed by {}, not by this connection's device key {}",
                    event.id(),
                    event.origin(),
                    hex::encode(device.key)
                ),
            ));
        }
        let s = event.security();
        if s.principal != device.principal || s.tenant != device.tenant {
            return Err((
                "principal_mismatch",
                format!(
                    "event {} claims principal {:?} tenant {:?}; the device is {:?} of {:?}",
                    event.id(),
                    s.principal,
                    s.tenant,
                    device.principal,
                    device.tenant
                ),
            ));
        }
        let api: &Api = &self.api;
        if event.stream().as_str() == edge::VOID_STREAM {
            // A void fills the device's own sequence number after a refusal: no policy
            // applies to it (it carries nothing but the reason), only its size.
            return match event.payload() {
                weft_fabric::Payload::Clear(b) if b.len() <= edge::VOID_PAYLOAD_LEN_MAX => Ok(()),
                _ => Err((
                    "bad_void",
                    format!(
                        "a void event must have a clear payload of at most {} bytes (VOID_PAYLOAD_LEN_MAX)",
                        edge::VOID_PAYLOAD_LEN_MAX
                    ),
                )),
            };
        }
        // A stamp past the drift bound (a void's is not checked: it only fills a number
        // after a refusal, perhaps this one, and no table or erase rule reads its time).
        if let Some(message) = api.clock.refusal(&event.id(), event.hlc()) {
            return Err(("hlc_ahead", message));
        }
        crate::http::stored_here(api, event.stream())
            .map_err(|e| (e.reason(), e.message().to_string()))?;
        // The derived content type is the nodes' own: a device sending it would pass off
        // its events as a transform's output, lineage included (as the HTTP path refuses).
        if let Err(m) = crate::egress::check_presigned(event) {
            return Err(("reserved_content_type", m));
        }
        match policy {
            Some(p) => crate::http::presigned_refusal(api, p, principal, event)
                .map_err(|e| (e.reason(), e.message().to_string())),
            None if device.streams.iter().any(|p| p.matches(event.stream())) => Ok(()),
            None => Err((
                "stream_not_allowed",
                format!(
                    "device {} may not publish to {} (edge.devices streams)",
                    device.principal,
                    event.stream().as_str()
                ),
            )),
        }
    }

    /// The downlink: the device's command stream from the agent's cursor, then live.
    async fn commands(
        &self,
        agent: &Agent,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
    ) -> anyhow::Result<()> {
        let sub: Subscribe =
            serde_json::from_slice(&read_frame(&mut recv, CONTROL_FRAME_LEN_MAX).await?)
                .context("subscribe frame")?;
        let Some(stream) = self.refresh(agent).and_then(|d| d.profile.commands) else {
            send.finish()?;
            return Ok(());
        };
        let mut after = sub.after;
        let mut committed = self.api.committed.clone();
        let mut closing = self.api.closing.clone();
        loop {
            // The device as the policy in force admits it, before every page: a new epoch
            // that renames its command stream (or stops admitting it) ends the downlink.
            let Some(device) = self
                .refresh(agent)
                .filter(|d| d.profile.commands.as_ref() == Some(&stream))
            else {
                send.finish()?;
                return Ok(());
            };
            let s = stream.clone();
            let entries = match crate::http::read_store(&self.api, move |r| {
                r.read_log(&s, after, COMMANDS_PAGE_LEN)
            })
            .await
            {
                Ok(entries) => entries,
                // Every read slot taken for a while: the downlink waits, it does not end.
                Err(e) if e.reason() == crate::http::READS_BUSY => {
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        _ = closing.changed() => return Ok(()),
                        _ = send.stopped() => return Ok(()),
                    }
                }
                Err(e) => return Err(anyhow::anyhow!("{}", e.message())),
            };
            if entries.is_empty() {
                tokio::select! {
                    r = committed.changed() => if r.is_err() { return Ok(()) },
                    _ = closing.changed() => return Ok(()),
                    () = tokio::time::sleep(Duration::from_secs(5)) => {}
                    _ = send.stopped() => return Ok(()),
                }
                continue;
            }
            // Each command under the policy the device was admitted in (a newer one admits
            // it again first).
            let policy = self.api.policy.policy();
            if policy.as_ref().map_or(0, |p| p.compilation()) != device.generation {
                continue;
            }
            let mut withheld_to = None;
            for e in entries {
                if let Some(policy) = &policy
                    && self.withholds(policy, &device, &e.envelope)
                {
                    withheld_to = Some(e.pos);
                    continue;
                }
                // Past what was withheld before it: the agent's cursor moves with this one.
                withheld_to = None;
                write_frame(&mut send, &edge::encode_command(e.pos, &e.envelope)).await?;
                after = e.pos;
            }
            if let Some(last) = withheld_to {
                // Withheld commands at the end of the page: a frame without an envelope
                // moves the agent's cursor past them, so a reconnect does not read (and
                // audit) them again.
                write_frame(&mut send, &edge::encode_command(last, &[])).await?;
                after = last;
            }
        }
    }

    /// Whether the downlink withholds a command from `device` (counted and audited here): an event whose effective residency does not include the device's
    /// enrolled jurisdiction ([`weft_policy::Policy::device_may_hold`]: a device is an
    /// end, so sealed transit does not reach it either), or one this node may no longer
    /// hold itself (an epoch that revoked its jurisdiction claim, or narrowed the class).
    /// The residency promise covers every hop, and the last hop is the device.
    fn withholds(&self, policy: &weft_policy::Policy, device: &Device, envelope: &[u8]) -> bool {
        let Ok(u) = weft_fabric::decode(envelope) else {
            // Stored envelopes were verified on the way in; one that no longer decodes is
            // the agent's to skip (it verifies every command).
            return false;
        };
        let data = u.claimed_data();
        let sec = data.security();
        let Some(enrolled) = policy.enrollment(&device.key) else {
            return false; // admitted under this policy: enrolled
        };
        let reason = if !policy.device_may_hold(
            enrolled,
            data.stream(),
            &sec.classification,
            &sec.residency,
        ) {
            "downlink_residency"
        } else if !policy.may_hold(
            &self.api.me,
            data.stream(),
            &sec.classification,
            &sec.residency,
        ) {
            "downlink_not_held"
        } else {
            return false;
        };
        let id = data.id().to_string();
        self.deny(
            reason,
            Some(&device.key),
            Some(Subject {
                principal: &sec.principal,
                stream: data.stream().as_str(),
                id,
            }),
            format!(
                "command {} on {} withheld from device {} (jurisdiction {}): class {} {}",
                data.id(),
                data.stream().as_str(),
                device.principal,
                enrolled.jurisdiction.as_str(),
                sec.classification,
                if reason == "downlink_residency" {
                    "may not be held there"
                } else {
                    "may no longer be held by this node (outside its residency, or its stream's replication regions)"
                },
            ),
        );
        true
    }
}

fn residency_codes(r: &Residency) -> Option<Vec<String>> {
    match r {
        Residency::Unrestricted => None,
        Residency::Only(set) => Some(set.iter().map(|j| j.as_str().to_string()).collect()),
    }
}

/// Reads one length-prefixed frame of at most `max` bytes.
async fn read_frame(recv: &mut quinn::RecvStream, max: usize) -> anyhow::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    recv.read_exact(&mut len).await.context("frame length")?;
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        anyhow::bail!("frame of {len} bytes, over the limit of {max}");
    }
    let mut buf = vec![0u8; len];
    recv.read_exact(&mut buf).await.context("frame body")?;
    Ok(buf)
}

/// Writes one length-prefixed frame.
async fn write_frame(send: &mut quinn::SendStream, body: &[u8]) -> anyhow::Result<()> {
    send.write_all(&(body.len() as u32).to_be_bytes()).await?;
    send.write_all(body).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A rate-limited batch is told the limiter's own wait, to the millisecond, within a
    /// floor and a ceiling: a bucket of 100 events/s a batch of 20 short waits 200 ms, not
    /// the second it was told before (whole seconds, at least 1).
    #[test]
    fn edge_busy_waits_as_long_as_the_rate_limiter_says() {
        use crate::ratelimit::Limiter;
        let limits = weft_policy::RateLimits {
            principal: Some(weft_policy::RateLimit {
                events_per_s: 100,
                burst: 20,
                events_per_day: None,
                bytes_per_day: None,
            }),
            tenant: None,
        };
        let l = Limiter::default();
        let t0 = Instant::now();
        l.admit(1, &limits, "sensor-1", "acme", 20, 0, t0, 0)
            .unwrap();
        let refusal = l
            .admit(1, &limits, "sensor-1", "acme", 20, 0, t0, 0)
            .unwrap_err();
        assert_eq!(rate_retry_ms(refusal.retry_after_ms()), 200);
        // 150 ms later, 15 tokens back: 50 ms more.
        let later = t0 + Duration::from_millis(150);
        let refusal = l
            .admit(1, &limits, "sensor-1", "acme", 20, 0, later, 0)
            .unwrap_err();
        assert_eq!(rate_retry_ms(refusal.retry_after_ms()), 50);
        // Floor, ceiling (a quota until midnight), and no hint at all.
        assert_eq!(rate_retry_ms(Some(1)), RATE_RETRY_MIN_MS);
        assert_eq!(rate_retry_ms(Some(43_200_000)), RATE_RETRY_MAX_MS);
        assert_eq!(rate_retry_ms(None), BUSY_RETRY_MS);
    }
}
