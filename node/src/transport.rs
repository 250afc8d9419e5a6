//! The mesh transport: one quinn endpoint, one connection per peer, and the mapping of the
//! core's channels onto QUIC.
//!
//! - `Channel::Datagram` messages (SWIM, IHAVE) go as QUIC datagrams; one too large for the
//!   path's datagram size goes on a unidirectional stream instead.
//! - `Channel::Uni` messages (pushes, GRAFT, Skip) each take one unidirectional stream: streams
//!   are cheap in QUIC, and one message per stream means no head-of-line blocking between
//!   events of different origins.
//! - `Channel::Bi` (anti-entropy): the request and its answer share one bidirectional
//!   stream. A push whose events wait for `ack=regions:N` also travels on a bidirectional
//!   stream, and the receiver answers with the ids it has committed.
//!
//! Every stream starts with one kind byte. Each peer has a bounded send queue served by
//! one task, which dials when no connection is up; after a failed dial it drops what it is
//! given for a second (counted) instead of dialing per message, unless the peer dials in
//! meanwhile. A full queue drops the message (counted): the core repairs losses through
//! GRAFT and anti-entropy.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};
use weft_fabric::mesh::wire::{self, IncomingMessage, MESSAGE_LEN_MAX};
use weft_fabric::mesh::{Channel, Message};
use weft_fabric::{Event, OriginKey};

use crate::chaos::{Chaos, Verdict};
use crate::metrics::Metrics;

/// Envelopes remembered as verified (id, origin and signature; about 8 MiB): copies of an
/// event arrive within seconds of each other, by push, relay, confirmable copy or sync.
const VERIFIED_CACHE_LEN: usize = 32_768;

/// Stream kind bytes.
const KIND_MESSAGE: u8 = 0;
const KIND_SYNC: u8 = 1;
const KIND_CONFIRM: u8 = 2;
/// Most messages queued per peer.
pub(crate) const PEER_QUEUE_LEN_MAX: usize = 4096;
/// Most messages held back by chaos delays at once (all peers); beyond it they are dropped
/// and counted (`mesh_dropped{reason="chaos_delay_overflow"}`).
pub(crate) const CHAOS_DELAYED_MAX: usize = 65_536;
/// Most outgoing bidirectional exchanges (sync, confirmable pushes) waiting for their
/// answer at once, per peer; a sender waits for a slot, so that peer's queue fills and
/// overflows (counted) instead. Per peer, not shared: a dead or stuck peer (its connection
/// not yet timed out, or its node hung while QUIC keeps the connection alive) holds only
/// its own slots, and every other peer's exchanges go on.
pub(crate) const BI_INFLIGHT_MAX: usize = 64;
/// KiB of peers' messages between their arrival and the driver's handling of them, all
/// peers together: the driver's queue is bounded by messages (a message may be up to
/// `MESSAGE_LEN_MAX`), this by bytes. A message waits for its share before it is queued,
/// holding its stream's read slot, so the peers' reads stop (QUIC flow control) until the
/// driver catches up. A message larger than the whole budget takes all of it.
pub(crate) const MESH_QUEUED_KIB_MAX: u32 = if cfg!(test) { 16 << 10 } else { 256 << 10 };
/// Bidirectional exchanges waiting for one of a peer's slots; past it the peer's send
/// queue waits too.
const EXCHANGES_WAITING_MAX: usize = 256;

/// A bidirectional exchange waiting for a slot ([`Transport::exchanges`]).
#[derive(Debug)]
struct Exchange {
    conn: quinn::Connection,
    bytes: Vec<u8>,
    /// A confirmable push of these events (else, empty, an anti-entropy request).
    confirm: Option<Vec<Arc<Event>>>,
}
/// Most incoming streams read at the same time per peer (all its connections together).
pub(crate) const STREAM_READS_MAX: usize = 32;
/// Longest wait for an answer on a bidirectional stream.
const BI_ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// After a failed dial, how long a peer is not dialed again (what is sent to it meanwhile is
/// dropped and counted), unless it dials in.
const UNREACHABLE_WAIT: Duration = Duration::from_secs(1);
/// How often one wrong member address (a peer's key dialed, another key found) is logged
/// and audited again while it persists. Every dial is counted in the metric; after a key
/// rotation the old address is dialed about once a second until every node has the new
/// record, and a warning and an audit row per dial buried everything else (an operator
/// review).
const OTHER_KEY_REPORT_EVERY: Duration = Duration::from_secs(600);
/// Distinct wrong addresses whose repeats are tracked; past it the oldest are forgotten
/// (and reported again on their next repeat).
const OTHER_KEY_TRACKED_MAX: usize = 1024;

/// What the transport hands the driver.
#[derive(Debug)]
pub(crate) enum FromMesh {
    /// A verified message from an authenticated peer. `reply` answers on the same stream
    /// (sync requests, confirmable pushes). `budget` is the message's share of
    /// [`MESH_QUEUED_KIB_MAX`]: held until the driver has handled it.
    Message {
        from: OriginKey,
        msg: Message,
        reply: Option<Reply>,
        budget: Option<tokio::sync::OwnedSemaphorePermit>,
    },
    /// Committed ids a peer confirmed for a confirmable push, and the push's events it
    /// answered without (it does not store their stream, its store refused them): for
    /// another member of its region to confirm.
    Confirmed {
        from: OriginKey,
        ids: Vec<[u8; 32]>,
        without: Vec<Arc<Event>>,
    },
    /// A confirmable push to `to` did not get through (the peer unreachable, its queue
    /// full, the exchange failed or timed out): its events, for another member of `to`'s
    /// region to confirm.
    ConfirmFailed {
        to: OriginKey,
        events: Vec<Arc<Event>>,
    },
    /// A connection to a seed address is up; the peer's key is now known.
    SeedReached { key: OriginKey, addr: SocketAddr },
    /// QUIC's RTT estimate to a peer, plus the chaos delay.
    Rtt { peer: OriginKey, rtt: Duration },
}

/// Longest wait between dials of a seed that is not reachable.
const SEED_RETRY_MAX: Duration = Duration::from_secs(5);
/// Longest wait between dials of a seed that refused this node in the TLS handshake (or
/// that this node refused): each refusal is a warning and an audit entry.
const SEED_REFUSED_RETRY_MAX: Duration = Duration::from_secs(30);

/// What a failed incoming handshake was when it was a TLS decision (a TLS alert travels as
/// a QUIC crypto error, codes 0x100-0x1ff), said by side and alert; `None` for a connection
/// that broke before it was up (a peer restarting, a timeout): only a decision is worth an
/// audit row. This node's certificate verifier refuses an untrusted key with
/// `handshake_failure` (40); a peer refusing this node's certificate closes with its own
/// alert; a wrong ALPN is `no_application_protocol` (120).
fn tls_refusal(e: &quinn::ConnectionError) -> Option<String> {
    let alert = |code: quinn::TransportErrorCode| {
        let code = u64::from(code);
        (code & !0xff == 0x100).then(|| {
            let alert = code & 0xff;
            let name = match alert {
                40 => "handshake_failure",
                42 => "bad_certificate",
                43 => "unsupported_certificate",
                46 => "certificate_unknown",
                48 => "unknown_ca",
                120 => "no_application_protocol",
                _ => "",
            };
            format!("TLS alert {alert} {name}").trim_end().to_string()
        })
    };
    match e {
        quinn::ConnectionError::TransportError(t) => alert(t.code).map(|a| {
            format!("this node refused the peer ({a}; an untrusted node key is refused so)")
        }),
        quinn::ConnectionError::ConnectionClosed(c) => alert(c.error_code)
            .map(|a| format!("the peer refused this node ({a}; it may not trust this key)")),
        _ => None,
    }
}

/// How the driver answers on a bidirectional stream.
#[derive(Debug)]
pub(crate) enum Reply {
    /// Answer a sync request with a sync response.
    Sync(oneshot::Sender<Vec<u8>>),
    /// Answer a confirmable push with the committed ids.
    Confirm(oneshot::Sender<Vec<[u8; 32]>>),
}

/// One message to send.
#[derive(Debug)]
pub(crate) struct Outgoing {
    pub(crate) msg: Message,
    /// Send a push on a bidirectional stream and collect the receiver's confirmation.
    pub(crate) confirm: bool,
    /// Which lane of the peer's queue it waits in.
    pub(crate) class: Class,
}

/// Priority class of a message: the lane it waits in when a peer's queue backs up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Class {
    /// Mesh control traffic and streams configured latency-sensitive.
    Latency = 0,
    /// Every other stream.
    Normal = 1,
    /// Anti-entropy and streams configured bulk.
    Bulk = 2,
}

/// Stream patterns per priority class (config `priority`).
#[derive(Debug, Clone, Default)]
pub(crate) struct Priorities {
    pub(crate) latency: Vec<weft_fabric::StreamPattern>,
    pub(crate) bulk: Vec<weft_fabric::StreamPattern>,
}

impl Priorities {
    /// The class of one stream.
    pub(crate) fn of_stream(&self, stream: &weft_fabric::StreamName) -> Class {
        if self.latency.iter().any(|p| p.matches(stream)) {
            Class::Latency
        } else if self.bulk.iter().any(|p| p.matches(stream)) {
            Class::Bulk
        } else {
            Class::Normal
        }
    }

    /// The class of a message: a push takes its most urgent event's class, anti-entropy
    /// goes last, everything else (membership, probes, acknowledgements, announcements)
    /// first.
    pub(crate) fn of(&self, msg: &Message) -> Class {
        match msg {
            Message::Push { events, .. } => events
                .iter()
                .map(|e| self.of_stream(e.stream()))
                .min()
                .unwrap_or(Class::Normal),
            Message::SyncRequest { .. } | Message::SyncResponse { .. } => Class::Bulk,
            _ => Class::Latency,
        }
    }
}

/// A peer's send queue: one bounded lane per [`Class`], drained most urgent first.
struct Lanes {
    rx: [mpsc::Receiver<Outgoing>; 3],
}

impl Lanes {
    fn new() -> ([mpsc::Sender<Outgoing>; 3], Self) {
        let (t0, r0) = mpsc::channel(PEER_QUEUE_LEN_MAX);
        let (t1, r1) = mpsc::channel(PEER_QUEUE_LEN_MAX);
        let (t2, r2) = mpsc::channel(PEER_QUEUE_LEN_MAX);
        ([t0, t1, t2], Self { rx: [r0, r1, r2] })
    }

    /// The next message, from the most urgent lane that has one; `None` when all closed.
    async fn next(&mut self) -> Option<Outgoing> {
        let [r0, r1, r2] = &mut self.rx;
        tokio::select! {
            biased;
            Some(o) = r0.recv() => Some(o),
            Some(o) = r1.recv() => Some(o),
            Some(o) = r2.recv() => Some(o),
            else => None,
        }
    }
}

struct Peer {
    lanes: [mpsc::Sender<Outgoing>; 3],
    addr: Option<SocketAddr>,
}

/// The endpoint and the peers.
pub(crate) struct Transport {
    endpoint: quinn::Endpoint,
    client_config: quinn::ClientConfig,
    me: OriginKey,
    /// Send queues by peer; only trusted keys get one, so the map is bounded by them.
    peers: Mutex<HashMap<OriginKey, Peer>>,
    trusted: std::collections::BTreeSet<[u8; 32]>,
    conns: Mutex<HashMap<OriginKey, quinn::Connection>>,
    /// Each peer's connection in each direction (`true`: dialed by this node).
    by_direction: Mutex<HashMap<(OriginKey, bool), quinn::Connection>>,
    /// Per peer key, the last address where it proved that key in a TLS handshake (a dial
    /// that reached it, else where a connection it dialed in came from). Member addresses
    /// come from SWIM gossip, which any trusted node can send: a wrong one is tried, then
    /// this one ([`Transport::connection_to`]), so a lie cannot cut a peer off that this
    /// node has met. Bounded by the trusted keys.
    proven: Mutex<HashMap<OriginKey, SocketAddr>>,
    /// Per peer key, the slots for streams read at once ([`STREAM_READS_MAX`]), shared by
    /// both of that peer's connections ([`Transport::adopt`]: one each way).
    /// One entry per trusted key that ever connected.
    reads: Mutex<HashMap<OriginKey, Arc<tokio::sync::Semaphore>>>,
    regions: Mutex<HashMap<OriginKey, String>>,
    to_driver: mpsc::Sender<FromMesh>,
    chaos: Arc<Chaos>,
    metrics: Arc<Metrics>,
    /// Refused peers and forged events go to the audit log.
    audit: crate::audit::Audit,
    /// Messages currently held back by chaos delays.
    delayed: Arc<std::sync::atomic::AtomicUsize>,
    /// Peer send tasks running ([`Transport::close_after_sending`] waits for them).
    peer_tasks: std::sync::atomic::AtomicUsize,
    /// Envelopes that passed verification lately: a copy of one is not verified again.
    verified: Arc<weft_fabric::VerifiedCache>,
    /// Peers' messages waiting for the driver, KiB ([`MESH_QUEUED_KIB_MAX`]).
    queued: Arc<tokio::sync::Semaphore>,
    /// [`UNREACHABLE_WAIT`] in milliseconds (tests lengthen it).
    unreachable_wait_ms: std::sync::atomic::AtomicU64,
    /// Wrong member addresses reported lately ([`OTHER_KEY_REPORT_EVERY`]).
    other_key_reports: Mutex<RepeatGate<(OriginKey, SocketAddr, OriginKey)>>,
}

/// Lets one report of a repeating condition through per key and period, and counts the
/// repeats it holds back so the next report can say how many there were. Bounded: past
/// `max` keys the least recently reported is forgotten.
#[derive(Debug)]
struct RepeatGate<K> {
    every: Duration,
    max: usize,
    /// Per key: when it was last reported and the repeats held back since.
    last: HashMap<K, (std::time::Instant, u64)>,
}

impl<K: std::hash::Hash + Eq + Clone> RepeatGate<K> {
    fn new(every: Duration, max: usize) -> Self {
        Self {
            every,
            max,
            last: HashMap::new(),
        }
    }

    /// `Some(held back)` when `key` is to be reported now (never reported, or last
    /// reported at least a period ago), with the repeats held back since the last report;
    /// `None` when this repeat is only counted.
    fn report(&mut self, key: K, now: std::time::Instant) -> Option<u64> {
        if let Some((at, held)) = self.last.get_mut(&key) {
            if now.saturating_duration_since(*at) < self.every {
                *held += 1;
                return None;
            }
            let before = *held;
            *at = now;
            *held = 0;
            return Some(before);
        }
        if self.last.len() >= self.max
            && let Some(oldest) = self
                .last
                .iter()
                .min_by_key(|(_, (at, _))| *at)
                .map(|(k, _)| k.clone())
        {
            self.last.remove(&oldest);
        }
        self.last.insert(key, (now, 0));
        Some(0)
    }
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("me", &self.me)
            .finish_non_exhaustive()
    }
}

impl Transport {
    /// Binds the endpoint and starts accepting. `quic` is the (client, server) pair from
    /// [`crate::tls::quic_configs`].
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn start(
        listen: SocketAddr,
        me: OriginKey,
        quic: (quinn::ClientConfig, quinn::ServerConfig),
        to_driver: mpsc::Sender<FromMesh>,
        chaos: Arc<Chaos>,
        metrics: Arc<Metrics>,
        trusted: std::collections::BTreeSet<[u8; 32]>,
        audit: crate::audit::Audit,
    ) -> anyhow::Result<Arc<Self>> {
        let (client_config, server_config) = quic;
        let endpoint = quinn::Endpoint::server(server_config, listen)
            .map_err(|e| anyhow::anyhow!("binding the mesh endpoint on {listen}: {e}"))?;
        let t = Arc::new(Self {
            endpoint,
            client_config,
            me,
            peers: Mutex::new(HashMap::new()),
            trusted,
            conns: Mutex::new(HashMap::new()),
            by_direction: Mutex::new(HashMap::new()),
            proven: Mutex::new(HashMap::new()),
            reads: Mutex::new(HashMap::new()),
            regions: Mutex::new(HashMap::new()),
            to_driver,
            chaos,
            metrics,
            audit,
            delayed: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            peer_tasks: std::sync::atomic::AtomicUsize::new(0),
            verified: Arc::new(weft_fabric::VerifiedCache::new(VERIFIED_CACHE_LEN)),
            queued: Arc::new(tokio::sync::Semaphore::new(MESH_QUEUED_KIB_MAX as usize)),
            unreachable_wait_ms: std::sync::atomic::AtomicU64::new(
                UNREACHABLE_WAIT.as_millis() as u64
            ),
            other_key_reports: Mutex::new(RepeatGate::new(
                OTHER_KEY_REPORT_EVERY,
                OTHER_KEY_TRACKED_MAX,
            )),
        });
        tokio::spawn(t.clone().accept_loop());
        tokio::spawn(t.clone().rtt_loop());
        Ok(t)
    }

    /// Closes every connection.
    pub(crate) fn close(&self) {
        self.endpoint.close(quinn::VarInt::from_u32(0), b"shutdown");
    }

    /// A graceful stop: what the peer queues still hold (the last step's pushes, acks and
    /// confirmations, queued by the driver's final commit) is sent first, then stream data
    /// in flight gets a moment to arrive, then the endpoint closes; all within `within`.
    /// What does not make it is repaired by anti-entropy, as after a crash.
    pub(crate) async fn close_after_sending(&self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        // Dropping the queues' senders ends each peer task once its queue is sent.
        let queues = self
            .peers
            .lock()
            .map(|mut p| std::mem::take(&mut *p))
            .unwrap_or_default();
        drop(queues);
        while self.peer_tasks.load(std::sync::atomic::Ordering::Relaxed) > 0
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let grace = deadline
            .saturating_duration_since(tokio::time::Instant::now())
            .min(Duration::from_millis(500));
        tokio::time::sleep(grace).await;
        self.close();
        let rest = deadline.saturating_duration_since(tokio::time::Instant::now());
        let _ = tokio::time::timeout(rest, self.endpoint.wait_idle()).await;
    }

    /// Records where a peer is and its region (for chaos rules). The address is kept even
    /// when nothing was sent to the peer yet: the core's first messages to a new member
    /// (SWIM, an anti-entropy request) leave in the step that reports it up, before the
    /// driver's member table has its address, and a queue made without one dropped them
    /// and held the peer unreachable for [`UNREACHABLE_WAIT`].
    pub(crate) fn learn(self: &Arc<Self>, key: OriginKey, addr: Option<SocketAddr>, region: &str) {
        if let Ok(mut r) = self.regions.lock() {
            r.insert(key, region.to_string());
        }
        if let (Some(addr), Ok(mut peers)) = (addr, self.peers.lock())
            && let Some(p) = self.queue(&mut peers, key)
        {
            p.addr = Some(addr);
        }
    }

    /// `to`'s send queue, made (with its task) on first use; `None` for a key this node
    /// does not trust (the handshake would fail anyway: no queue is kept for it).
    fn queue<'a>(
        self: &Arc<Self>,
        peers: &'a mut HashMap<OriginKey, Peer>,
        to: OriginKey,
    ) -> Option<&'a mut Peer> {
        if !self.trusted.contains(&to.0) {
            return None;
        }
        Some(peers.entry(to).or_insert_with(|| {
            let (lanes, rx) = Lanes::new();
            self.peer_tasks
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tokio::spawn(self.clone().peer_task(to, rx));
            Peer { lanes, addr: None }
        }))
    }

    /// Connects to seed addresses until each answers, reporting their keys to the driver.
    pub(crate) fn dial_seeds(self: &Arc<Self>, seeds: Vec<SocketAddr>) {
        for addr in seeds {
            let t = self.clone();
            tokio::spawn(async move {
                let mut backoff = Duration::from_millis(200);
                loop {
                    let refusal = match t.connect(addr).await {
                        Ok((key, conn)) => {
                            if key == t.me {
                                return;
                            }
                            t.adopt(key, conn.clone(), true);
                            let _ = t.to_driver.send(FromMesh::SeedReached { key, addr }).await;
                            // In TLS 1.3 this side's handshake completes before the seed has
                            // checked this node's certificate: a seed that does not trust
                            // this key closes the connection right after, with its alert.
                            // Taken as reached for good, the node said it was joining and
                            // never dialed again, counting nothing (an operator review).
                            match tls_refusal(&conn.closed().await) {
                                Some(refusal) => refusal,
                                None => return,
                            }
                        }
                        Err(e) => match e
                            .downcast_ref::<quinn::ConnectionError>()
                            .and_then(tls_refusal)
                        {
                            Some(refusal) => refusal,
                            None => {
                                debug!(%addr, error = %e, "seed not reachable yet");
                                tokio::time::sleep(backoff).await;
                                backoff = (backoff * 2).min(SEED_RETRY_MAX);
                                continue;
                            }
                        },
                    };
                    // A trust decision, on either side: counted and audited here too (the
                    // side that refused does the same), and dialed again, since a trust
                    // list can change (a bundle granting the key, a config fixed and the
                    // seed restarted).
                    backoff = (backoff * 2).min(SEED_REFUSED_RETRY_MAX);
                    t.metrics.reject("peer_handshake_failed");
                    warn!(%addr, %refusal, retry_in_s = backoff.as_secs_f64(),
                        "the seed and this node do not trust each other's keys: check trusted_nodes (or the policy's node keys) on both; dialing it again");
                    t.audit.deny(
                        "peer_handshake_failed",
                        None,
                        None,
                        t.policy_epoch(),
                        format!(
                            "mesh connection to seed {addr} refused in the TLS handshake: {refusal}"
                        ),
                    );
                    tokio::time::sleep(backoff).await;
                }
            });
        }
    }

    async fn connect(&self, addr: SocketAddr) -> anyhow::Result<(OriginKey, quinn::Connection)> {
        let conn = self
            .endpoint
            .connect_with(self.client_config.clone(), addr, "weft-node")?
            .await?;
        let key = crate::tls::peer_key(&conn)
            .ok_or_else(|| anyhow::anyhow!("peer at {addr} presented no Ed25519 identity"))?;
        Ok((OriginKey(key), conn))
    }

    /// Registers a connection to `key` (`dialed`: this node opened it) and starts reading
    /// from it. A peer holds at most one connection each way: a newer one in the same
    /// direction replaces the older (a peer that restarted, or one opening connection after
    /// connection, which would each have QUIC's receive windows of buffer here), which is
    /// closed. Both directions stay: two nodes dialing each other at once keep both
    /// connections, and neither has to guess which one the other keeps.
    fn adopt(self: &Arc<Self>, key: OriginKey, conn: quinn::Connection, dialed: bool) {
        let older = self
            .by_direction
            .lock()
            .ok()
            .and_then(|mut d| d.insert((key, dialed), conn.clone()))
            .filter(|old| old.stable_id() != conn.stable_id());
        if let Some(older) = older {
            self.metrics.mesh_drop("connection_replaced");
            debug!(peer = %key, dialed, "a newer connection replaces the older");
            older.close(
                quinn::VarInt::from_u32(0),
                b"replaced by a newer connection",
            );
        }
        if let Ok(mut proven) = self.proven.lock() {
            let at = conn.remote_address();
            if dialed {
                proven.insert(key, at);
            } else {
                proven.entry(key).or_insert(at);
            }
        }
        if let Ok(mut conns) = self.conns.lock() {
            conns.insert(key, conn.clone());
        }
        tokio::spawn(self.clone().read_loop(key, conn));
    }

    async fn accept_loop(self: Arc<Self>) {
        while let Some(incoming) = self.endpoint.accept().await {
            let t = self.clone();
            let from = incoming.remote_address();
            tokio::spawn(async move {
                match incoming.await {
                    Ok(conn) => match crate::tls::peer_key(&conn) {
                        Some(key) => t.adopt(OriginKey(key), conn, false),
                        None => {
                            t.metrics.reject("peer_without_identity");
                            t.audit.deny(
                                "peer_without_identity",
                                None,
                                None,
                                t.policy_epoch(),
                                format!("mesh connection from {from} refused: no node key in its certificate"),
                            );
                        }
                    },
                    Err(e) if let Some(refusal) = tls_refusal(&e) => {
                        // Unknown keys fail here, in the TLS handshake: a security decision.
                        t.metrics.reject("peer_handshake_failed");
                        debug!(error = %e, "incoming mesh connection refused");
                        t.audit.deny(
                            "peer_handshake_failed",
                            None,
                            None,
                            t.policy_epoch(),
                            format!("mesh connection from {from} refused in the TLS handshake: {refusal}: {e}"),
                        );
                    }
                    Err(e) => {
                        // A connection that broke before it was up (a peer restarting, a
                        // timeout): no decision was made, so counted, not audited.
                        t.metrics.mesh_drop("handshake_broken");
                        debug!(error = %e, "incoming mesh connection broke in the handshake");
                    }
                }
            });
        }
    }

    async fn rtt_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let conns: Vec<(OriginKey, quinn::Connection)> = self
                .conns
                .lock()
                .map(|c| c.iter().map(|(k, c)| (*k, c.clone())).collect())
                .unwrap_or_default();
            for (peer, conn) in conns {
                if conn.close_reason().is_some() {
                    continue;
                }
                let extra = self
                    .chaos
                    .delay_to(&hex::encode(peer.0), &self.region_of(&peer));
                let rtt = conn.rtt() + extra * 2;
                if self
                    .to_driver
                    .send(FromMesh::Rtt { peer, rtt })
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    }

    fn region_of(&self, key: &OriginKey) -> String {
        self.regions
            .lock()
            .ok()
            .and_then(|r| r.get(key).cloned())
            .unwrap_or_default()
    }

    /// Queues `out` for `to`; never blocks. `addr` is where to dial if no connection is up.
    pub(crate) fn send(self: &Arc<Self>, to: OriginKey, addr: Option<SocketAddr>, out: Outgoing) {
        let Ok(mut peers) = self.peers.lock() else {
            return;
        };
        let Some(peer) = self.queue(&mut peers, to) else {
            // A member record gossiped for a key this node does not trust.
            self.metrics.mesh_drop("untrusted_peer");
            drop(peers);
            self.undelivered(to, &out);
            return;
        };
        if addr.is_some() {
            peer.addr = addr;
        }
        let k = out.msg.kind();
        match peer.lanes[out.class as usize].try_send(out) {
            Ok(()) => Metrics::inc(&self.metrics.mesh_sent, "kind", k),
            Err(e) => {
                self.metrics.mesh_drop("peer_queue_full");
                drop(peers);
                self.undelivered(to, &e.into_inner());
            }
        }
    }

    /// A message dropped before it reached `to`: when it was a confirmable push, the
    /// driver is told, so the events' confirmation is sought at another member of that
    /// region ([`FromMesh::ConfirmFailed`]) instead of the publish waiting out its ack
    /// timeout. `try_send`: this runs on the driver's own thread too (`send`), which must
    /// never wait on its own queue; a report that finds the queue full is lost, and the
    /// publish answers at its timeout as it would have.
    fn undelivered(&self, to: OriginKey, out: &Outgoing) {
        if let (true, Message::Push { events, .. }) = (out.confirm, &out.msg) {
            self.confirm_failed(to, events.clone());
        }
    }

    fn confirm_failed(&self, to: OriginKey, events: Vec<Arc<Event>>) {
        if events.is_empty() {
            return;
        }
        if self
            .to_driver
            .try_send(FromMesh::ConfirmFailed { to, events })
            .is_err()
        {
            self.metrics.mesh_drop("confirm_report_lost");
        }
    }

    /// The policy epoch in force (the driver keeps `weft_policy_epoch` current), for the
    /// audit rows the transport writes; 0 without a policy.
    fn policy_epoch(&self) -> u64 {
        u64::try_from(self.metrics.policy_epoch.get()).unwrap_or(0)
    }

    /// The connection to `to` if one is up, whichever side dialed it.
    fn live(&self, to: &OriginKey) -> Option<quinn::Connection> {
        self.conns
            .lock()
            .ok()
            .and_then(|c| c.get(to).cloned())
            .filter(|c| c.close_reason().is_none())
    }

    fn connected(&self, to: &OriginKey) -> bool {
        self.live(to).is_some()
    }

    /// How long a peer whose dial failed is not dialed again ([`UNREACHABLE_WAIT`]; tests
    /// lengthen it).
    fn unreachable_wait(&self) -> Duration {
        Duration::from_millis(
            self.unreachable_wait_ms
                .load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    /// The connection to `to`: the live one, or a dial of its member address, and when
    /// that fails (nothing answers, or another key does: a wrong address in gossip) of the
    /// address where `to` last proved its key, if it differs.
    async fn connection_to(self: &Arc<Self>, to: OriginKey) -> Option<quinn::Connection> {
        if let Some(c) = self.live(&to) {
            return Some(c);
        }
        let addr = self
            .peers
            .lock()
            .ok()
            .and_then(|p| p.get(&to).and_then(|p| p.addr));
        let proven = self.proven.lock().ok().and_then(|p| p.get(&to).copied());
        if let Some(addr) = addr
            && let Some(conn) = self.dial(to, addr).await
        {
            return Some(conn);
        }
        let proven = proven.filter(|p| Some(*p) != addr)?;
        let conn = self.dial(to, proven).await?;
        debug!(peer = %to, %proven, "reached at the address where it last proved its key");
        Some(conn)
    }

    /// Dials `to` at `addr` and adopts the connection if `to`'s key answers there.
    async fn dial(self: &Arc<Self>, to: OriginKey, addr: SocketAddr) -> Option<quinn::Connection> {
        match tokio::time::timeout(Duration::from_secs(5), self.connect(addr)).await {
            Ok(Ok((key, conn))) if key == to => {
                self.adopt(key, conn.clone(), true);
                Some(conn)
            }
            Ok(Ok((key, conn))) => {
                // Counted: a member address that holds another trusted key is a wrong
                // address in gossip (a node moved, or a lie).
                self.metrics.reject("peer_address_other_key");
                let report = self
                    .other_key_reports
                    .lock()
                    .ok()
                    .and_then(|mut g| g.report((to, addr, key), std::time::Instant::now()));
                if let Some(held) = report {
                    let repeats = match held {
                        0 => String::new(),
                        n => format!(
                            " ({n} more dials found it since the last report; reported every {} s)",
                            OTHER_KEY_REPORT_EVERY.as_secs()
                        ),
                    };
                    warn!(%addr, expected = %to, found = %key, repeats_held_back = held,
                        "peer address now has another key (each repeat is counted in weft_rejected_total{{reason=\"peer_address_other_key\"}}; reported again every {} s while it lasts)",
                        OTHER_KEY_REPORT_EVERY.as_secs());
                    self.audit.deny(
                        "peer_address_other_key",
                        None,
                        None,
                        self.policy_epoch(),
                        format!("mesh dial of {to} at {addr} found {key} there; not used as {to}'s connection{repeats}"),
                    );
                }
                conn.close(quinn::VarInt::from_u32(0), b"not the key dialed");
                None
            }
            Ok(Err(e)) => {
                debug!(%addr, error = %e, "dial failed");
                None
            }
            Err(_) => None,
        }
    }

    async fn peer_task(self: Arc<Self>, to: OriginKey, lanes: Lanes) {
        self.clone().send_queue(to, lanes).await;
        self.peer_tasks
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Sends a peer's queue until its senders are gone ([`Transport::peer_task`]).
    async fn send_queue(self: Arc<Self>, to: OriginKey, mut lanes: Lanes) {
        let key_hex = hex::encode(to.0);
        let (exchanges, waiting) = mpsc::channel(EXCHANGES_WAITING_MAX);
        tokio::spawn(self.clone().exchanges(to, waiting));
        let mut down_until: Option<tokio::time::Instant> = None;
        while let Some(out) = lanes.next().await {
            // A peer that dialed in meanwhile ends the window at once (after a partition
            // heals, the other side's announcements usually arrive before the window ends).
            if down_until.is_some_and(|t| tokio::time::Instant::now() < t) && !self.connected(&to) {
                self.metrics.mesh_drop("peer_unreachable");
                self.undelivered(to, &out);
                continue;
            }
            // The peer may have dialed in while our own dial was failing.
            let conn = match self.connection_to(to).await {
                Some(conn) => conn,
                None => match self.live(&to) {
                    Some(conn) => conn,
                    None => {
                        // Drop while the peer is unreachable instead of dialing per message.
                        down_until = Some(tokio::time::Instant::now() + self.unreachable_wait());
                        self.metrics.mesh_drop("peer_unreachable");
                        self.undelivered(to, &out);
                        continue;
                    }
                },
            };
            down_until = None;
            let out = self.forge_skips(&key_hex, &to, out);
            let verdict = self.chaos.verdict(&key_hex, &self.region_of(&to));
            let t = self.clone();
            match verdict {
                // Not reported, as a network's loss is not: the driver asks the region's
                // next member half the ack timeout after the publish instead.
                Verdict::Drop => self.metrics.mesh_drop("chaos"),
                Verdict::Send => t.transmit(to, conn, out, &exchanges).await,
                Verdict::Delay(d) => {
                    use std::sync::atomic::Ordering::Relaxed;
                    if self.delayed.fetch_add(1, Relaxed) >= CHAOS_DELAYED_MAX {
                        self.delayed.fetch_sub(1, Relaxed);
                        self.metrics.mesh_drop("chaos_delay_overflow");
                        self.undelivered(to, &out);
                        continue;
                    }
                    let delayed = self.delayed.clone();
                    let exchanges = exchanges.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(d).await;
                        delayed.fetch_sub(1, Relaxed);
                        t.transmit(to, conn, out, &exchanges).await;
                    });
                }
            }
        }
    }

    /// A peer's bidirectional exchanges (anti-entropy requests, confirmable pushes), in
    /// order: each takes one of the peer's [`BI_INFLIGHT_MAX`] slots for its whole length
    /// (bounded by [`BI_ANSWER_TIMEOUT`]). In a task of their own, so that a slow peer's
    /// exchanges waiting for slots hold up neither its other lanes nor other peers.
    async fn exchanges(self: Arc<Self>, to: OriginKey, mut waiting: mpsc::Receiver<Exchange>) {
        let bi = Arc::new(tokio::sync::Semaphore::new(BI_INFLIGHT_MAX));
        while let Some(Exchange {
            conn,
            bytes,
            confirm,
        }) = waiting.recv().await
        {
            let Ok(permit) = bi.clone().acquire_owned().await else {
                return;
            };
            let t = self.clone();
            tokio::spawn(async move {
                let _permit = permit;
                if let Some(events) = confirm {
                    if let Err(e) = t.confirm_exchange(to, conn, bytes, &events).await {
                        t.metrics.mesh_drop("confirm_failed");
                        warn!(peer = %to, error = %e, "confirmable push failed");
                        t.confirm_failed(to, events);
                    }
                } else if let Err(e) = t.sync_exchange(to, conn, bytes).await {
                    t.metrics.mesh_drop("sync_failed");
                    debug!(peer = %to, error = %e, "sync exchange failed");
                }
            });
        }
    }

    /// Under a chaos rule with `forge_skips`, a push carrying other origins' events goes as
    /// a Skip naming them: what a compromised node hiding events would send.
    fn forge_skips(&self, key_hex: &str, to: &OriginKey, out: Outgoing) -> Outgoing {
        let Message::Push { events, .. } = &out.msg else {
            return out;
        };
        if !self.chaos.forges_skips(key_hex, &self.region_of(to)) {
            return out;
        }
        let list: Vec<_> = events
            .iter()
            .filter(|e| e.origin() != self.me)
            .map(|e| (e.origin(), e.seq()))
            .collect();
        if list.is_empty() {
            return out;
        }
        debug!(peer = %to, skips = list.len(), "chaos: a push sent as forged Skips");
        Outgoing {
            msg: Message::Skip(list),
            confirm: false,
            class: out.class,
        }
    }

    /// Sends one message to `to`; a bidirectional exchange goes to the peer's exchange
    /// queue ([`Transport::exchanges`]).
    async fn transmit(
        self: Arc<Self>,
        to: OriginKey,
        conn: quinn::Connection,
        out: Outgoing,
        exchanges: &mpsc::Sender<Exchange>,
    ) {
        let bytes = wire::encode(&out.msg);
        let result: anyhow::Result<()> = async {
            match (out.msg.channel(), out.confirm) {
                (Channel::Datagram, _)
                    if conn.max_datagram_size().is_some_and(|m| bytes.len() <= m) =>
                {
                    conn.send_datagram(bytes.into())?;
                }
                // Exchanges wait for a slot in their own queue ([`Transport::exchanges`]),
                // not here: the peer's other lanes (SWIM, acknowledgements) go on meanwhile.
                (channel @ Channel::Bi, _) | (channel, true) => {
                    let exchange = Exchange {
                        conn,
                        bytes,
                        // A Bi-channel message is an anti-entropy request, whatever `confirm`.
                        confirm: match &out.msg {
                            Message::Push { events, .. } if channel != Channel::Bi => {
                                Some(events.clone())
                            }
                            _ => None,
                        },
                    };
                    // Backpressure onto this peer's queue only once that queue is full too.
                    if exchanges.send(exchange).await.is_err() {
                        anyhow::bail!("the peer's exchange queue is closed");
                    }
                }
                _ => {
                    let mut s = conn.open_uni().await?;
                    s.write_all(&[KIND_MESSAGE]).await?;
                    s.write_all(&bytes).await?;
                    s.finish()?;
                }
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            self.metrics.mesh_drop("send_failed");
            debug!(peer = %to, error = %e, "send failed");
            self.undelivered(to, &out);
        }
    }

    async fn sync_exchange(
        self: &Arc<Self>,
        to: OriginKey,
        conn: quinn::Connection,
        request: Vec<u8>,
    ) -> anyhow::Result<()> {
        // The whole exchange is bounded, opening and writing included: a peer that stops
        // granting streams or reading must not hold the slot for ever.
        let answer = tokio::time::timeout(BI_ANSWER_TIMEOUT, async {
            let (mut send, mut recv) = conn.open_bi().await?;
            send.write_all(&[KIND_SYNC]).await?;
            send.write_all(&request).await?;
            send.finish()?;
            anyhow::Ok(recv.read_to_end(MESSAGE_LEN_MAX).await?)
        })
        .await??;
        self.deliver(to, &answer, None).await;
        Ok(())
    }

    /// A confirmable push and its answer: the ids the peer holds committed, and the
    /// push's `events` it answered without, handed to the driver as
    /// `FromMesh::Confirmed`.
    async fn confirm_exchange(
        &self,
        to: OriginKey,
        conn: quinn::Connection,
        push: Vec<u8>,
        events: &[Arc<Event>],
    ) -> anyhow::Result<()> {
        // Bounded as a whole, as `sync_exchange`.
        let answer = tokio::time::timeout(BI_ANSWER_TIMEOUT, async {
            let (mut send, mut recv) = conn.open_bi().await?;
            send.write_all(&[KIND_CONFIRM]).await?;
            send.write_all(&push).await?;
            send.finish()?;
            // The ids of the push's events: 33 bytes each, so a push of many small
            // events (up to `BATCH_BYTES_MAX` of them) has an answer over a megabyte.
            anyhow::Ok(recv.read_to_end(MESSAGE_LEN_MAX).await?)
        })
        .await??;
        let ids: Vec<[u8; 32]> = postcard::from_bytes(&answer)?;
        let answered: std::collections::HashSet<&[u8; 32]> = ids.iter().collect();
        let without: Vec<Arc<Event>> = events
            .iter()
            .filter(|e| !answered.contains(&e.id().0))
            .cloned()
            .collect();
        let _ = self
            .to_driver
            .send(FromMesh::Confirmed {
                from: to,
                ids,
                without,
            })
            .await;
        Ok(())
    }

    /// Fault injection on an answer written back on a peer's bidirectional stream (sync
    /// responses, push confirmations): the same rules as for messages this node sends, so a
    /// delay rule delays both directions of an exchange. `false`: drop the answer.
    async fn chaos_gate(&self, to: OriginKey) -> bool {
        match self.chaos.verdict(&hex::encode(to.0), &self.region_of(&to)) {
            Verdict::Send => true,
            Verdict::Drop => {
                self.metrics.mesh_drop("chaos");
                false
            }
            Verdict::Delay(d) => {
                tokio::time::sleep(d).await;
                true
            }
        }
    }

    /// Decodes and verifies one message and hands it to the driver. A push that asks for
    /// an acknowledgement gets it here, as soon as it is decoded: the acknowledgement says
    /// the push arrived and the link works (`Message::PushAck`), which is what the sender
    /// fails over on. Sent after the signature checks, the driver's queue, its step and
    /// its group commit, it measured the receiver's load as well: a loaded node on a fast
    /// link answered after its sender's RTT timeout, which failed the link over for
    /// nothing (another copy of every event on another path) and fed the sender RTT
    /// samples that were not the network's (docs/performance.md). A node whose driver is
    /// stuck still acknowledges until its queue and stream-read permits fill; SWIM, which
    /// the driver answers, declares it down.
    async fn deliver(self: &Arc<Self>, from: OriginKey, bytes: &[u8], reply: Option<Reply>) {
        let kib = u32::try_from(bytes.len().div_ceil(1024))
            .unwrap_or(u32::MAX)
            .clamp(1, MESH_QUEUED_KIB_MAX);
        let Ok(budget) = self.queued.clone().acquire_many_owned(kib).await else {
            return;
        };
        let mut incoming = match wire::decode(bytes) {
            Ok(m) => m,
            Err(e) => {
                self.metrics.reject(e.reason());
                warn!(peer = %from, error = %e, "malformed mesh message");
                return;
            }
        };
        // Not while the node stops: the driver takes nothing more, and a sender that gets
        // no acknowledgement fails over at once instead of waiting for anti-entropy.
        if !self.to_driver.is_closed()
            && let Some(id) = incoming.take_push_ack()
        {
            self.send(
                from,
                None,
                Outgoing {
                    class: Class::Latency,
                    msg: Message::PushAck(id),
                    confirm: false,
                },
            );
        }
        let msg = if incoming.event_count() > 0 {
            // Signature checks are CPU work: keep them off the async workers.
            let verified = self.verified.clone();
            match tokio::task::spawn_blocking(move || incoming.verify_cached(&verified)).await {
                Ok((msg, rejected)) => {
                    for r in &rejected {
                        self.metrics.reject("bad_signature");
                        self.audit.record(
                            crate::audit::Entry::now(
                                crate::audit::Decision::Deny,
                                "bad_signature",
                                self.policy_epoch(),
                                format!(
                                    "event from peer {from} (origin {}) refused: {}",
                                    r.origin, r.error
                                ),
                            )
                            .event(r.id.to_string()),
                        );
                    }
                    msg
                }
                Err(_) => return,
            }
        } else {
            match incoming {
                IncomingMessage::Plain(m) => m,
                other => other.verify().0,
            }
        };
        Metrics::inc(&self.metrics.mesh_received, "kind", msg.kind());
        let _ = self
            .to_driver
            .send(FromMesh::Message {
                from,
                msg,
                reply,
                budget: Some(budget),
            })
            .await;
    }

    async fn read_loop(self: Arc<Self>, from: OriginKey, conn: quinn::Connection) {
        let id = conn.stable_id();
        let datagrams = {
            let t = self.clone();
            let conn = conn.clone();
            async move {
                while let Ok(d) = conn.read_datagram().await {
                    t.deliver(from, &d, None).await;
                }
            }
        };
        // Streams read at once per peer, over all its connections (each up to
        // MESSAGE_LEN_MAX): bounds the memory one peer can make this node hold; the rest
        // wait in QUIC flow control.
        let reading = self
            .reads
            .lock()
            .map(|mut r| {
                r.entry(from)
                    .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(STREAM_READS_MAX)))
                    .clone()
            })
            .unwrap_or_else(|_| Arc::new(tokio::sync::Semaphore::new(STREAM_READS_MAX)));
        let uni = {
            let t = self.clone();
            let conn = conn.clone();
            let reading = reading.clone();
            async move {
                while let Ok(mut s) = conn.accept_uni().await {
                    let t = t.clone();
                    let Ok(permit) = reading.clone().acquire_owned().await else {
                        break;
                    };
                    tokio::spawn(async move {
                        let _permit = permit;
                        match s.read_to_end(MESSAGE_LEN_MAX + 1).await {
                            Ok(b) if b.first() == Some(&KIND_MESSAGE) => {
                                t.deliver(from, &b[1..], None).await
                            }
                            Ok(_) => t.metrics.reject("unknown_stream_kind"),
                            Err(e) => {
                                t.metrics.reject("stream_read_failed");
                                debug!(peer = %from, error = %e, "uni stream");
                            }
                        }
                    });
                }
            }
        };
        let bi = {
            let t = self.clone();
            async move {
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    let t = t.clone();
                    let Ok(permit) = reading.clone().acquire_owned().await else {
                        break;
                    };
                    tokio::spawn(async move {
                        // Held until the driver has the message and answered.
                        let _permit = permit;
                        let read = recv.read_to_end(MESSAGE_LEN_MAX + 1).await;
                        let Ok(b) = read else {
                            t.metrics.reject("stream_read_failed");
                            return;
                        };
                        match b.first() {
                            Some(&KIND_SYNC) => {
                                let (tx, rx) = oneshot::channel();
                                t.deliver(from, &b[1..], Some(Reply::Sync(tx))).await;
                                if let Ok(answer) = rx.await
                                    && t.chaos_gate(from).await
                                {
                                    let _ = send.write_all(&answer).await;
                                    let _ = send.finish();
                                }
                            }
                            Some(&KIND_CONFIRM) => {
                                let (tx, rx) = oneshot::channel();
                                t.deliver(from, &b[1..], Some(Reply::Confirm(tx))).await;
                                if let Ok(ids) = rx.await
                                    && t.chaos_gate(from).await
                                {
                                    let bytes = postcard::to_allocvec(&ids).unwrap_or_default();
                                    let _ = send.write_all(&bytes).await;
                                    let _ = send.finish();
                                }
                            }
                            _ => t.metrics.reject("unknown_stream_kind"),
                        }
                        // Let the peer read the answer before the stream is dropped.
                        let _ = send.stopped().await;
                    });
                }
            }
        };
        tokio::join!(datagrams, uni, bi);
        // Forget the connection, unless a newer one to the same peer replaced it.
        if let Ok(mut conns) = self.conns.lock()
            && conns.get(&from).is_some_and(|c| c.stable_id() == id)
        {
            conns.remove(&from);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc as StdArc;

    #[test]
    fn a_repeating_report_passes_once_a_period_and_counts_what_it_held_back() {
        let t0 = std::time::Instant::now();
        let every = Duration::from_secs(600);
        let mut gate = RepeatGate::new(every, 2);
        assert_eq!(
            gate.report("a", t0),
            Some(0),
            "the first occurrence is reported"
        );
        for s in 1..=5 {
            assert_eq!(gate.report("a", t0 + Duration::from_secs(s)), None);
        }
        assert_eq!(
            gate.report("b", t0 + Duration::from_secs(6)),
            Some(0),
            "another key is its own"
        );
        assert_eq!(
            gate.report("a", t0 + every),
            Some(5),
            "a period later it is reported again with the repeats held back"
        );
        assert_eq!(gate.report("a", t0 + every + Duration::from_secs(1)), None);
        // Bounded: a third key forgets the least recently reported ("b"), which is then
        // reported afresh.
        assert_eq!(
            gate.report("c", t0 + every + Duration::from_secs(2)),
            Some(0)
        );
        assert_eq!(gate.last.len(), 2);
        assert_eq!(
            gate.report("b", t0 + every + Duration::from_secs(3)),
            Some(0)
        );
        assert!(
            !gate.last.contains_key("a"),
            "then \"a\" is the least recently reported"
        );
        assert!(gate.last.contains_key("c"));
    }
    use weft_fabric::envelope::Payload;
    use weft_fabric::{Signer, StreamPattern};

    fn push(stream: &str) -> Message {
        let event = crate::test_support::signed(stream, 1, b"x".to_vec());
        Message::Push {
            events: vec![event],
            relay: Vec::new(),
            ack: 0,
            reroutes: 0,
        }
    }

    /// A transport for test node `i` of `seeds`, trusting all of them, listening on
    /// `listen`, with a driver channel of `queue` messages.
    fn test_transport(
        seeds: &[[u8; 32]],
        i: usize,
        listen: SocketAddr,
        queue: usize,
    ) -> (Arc<Transport>, mpsc::Receiver<FromMesh>, Arc<Metrics>) {
        let keys: Vec<OriginKey> = seeds
            .iter()
            .map(|s| Signer::from_secret(s).origin())
            .collect();
        let trusted: std::collections::BTreeSet<[u8; 32]> = keys.iter().map(|k| k.0).collect();
        let metrics = Arc::new(Metrics::new());
        let (tx, rx) = mpsc::channel(queue);
        let t = Transport::start(
            listen,
            keys[i],
            crate::tls::quic_configs(&seeds[i], trusted.iter().copied()).unwrap(),
            tx,
            Arc::new(Chaos::new(false, Vec::new())),
            metrics.clone(),
            trusted,
            crate::audit::Audit::detached(metrics.clone()),
        )
        .unwrap();
        (t, rx, metrics)
    }

    /// Whether `PushAck(n)` arrives on `rx` within `limit` (other messages are skipped).
    async fn receives_ack(rx: &mut mpsc::Receiver<FromMesh>, n: u64, limit: Duration) -> bool {
        let wait = async {
            while let Some(m) = rx.recv().await {
                if matches!(m, FromMesh::Message { msg: Message::PushAck(k), .. } if k == n) {
                    return true;
                }
            }
            false
        };
        tokio::time::timeout(limit, wait).await == Ok(true)
    }

    /// Sends `events` from `a` to `to` at `addr` as one confirmable push.
    fn send_confirmable(
        a: &Arc<Transport>,
        to: OriginKey,
        addr: SocketAddr,
        events: Vec<StdArc<Event>>,
    ) {
        a.send(
            to,
            Some(addr),
            Outgoing {
                msg: Message::Push {
                    events,
                    relay: Vec::new(),
                    ack: 0,
                    reroutes: 0,
                },
                confirm: true,
                class: Class::Normal,
            },
        );
    }

    /// Events 1..=n of one origin on `orders.x`.
    fn numbered_events(n: u64) -> Vec<StdArc<Event>> {
        let signer = Signer::from_secret(&[5; 32]);
        let Message::Push { events, .. } = push("orders.x") else {
            unreachable!()
        };
        let template = events[0].draft().clone();
        (1..=n)
            .map(|seq| {
                let mut d = template.clone();
                d.seq = seq;
                StdArc::new(signer.sign(d).unwrap())
            })
            .collect()
    }

    /// The first confirmation on `rx` (its sender, the ids confirmed and the events
    /// answered without), within 30 s.
    async fn next_confirmed(
        rx: &mut mpsc::Receiver<FromMesh>,
    ) -> Option<(OriginKey, Vec<[u8; 32]>, Vec<StdArc<Event>>)> {
        tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(m) = rx.recv().await {
                if let FromMesh::Confirmed { from, ids, without } = m {
                    return Some((from, ids, without));
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
    }

    /// Plays the receiving driver: answers the first confirmable push arriving on `rx`
    /// with `held`; `false` if none came within `limit`.
    async fn answer_confirmable(
        rx: &mut mpsc::Receiver<FromMesh>,
        held: Vec<[u8; 32]>,
        limit: Duration,
    ) -> bool {
        let answered = tokio::time::timeout(limit, async {
            while let Some(m) = rx.recv().await {
                if let FromMesh::Message {
                    reply: Some(Reply::Confirm(tx)),
                    ..
                } = m
                {
                    return tx.send(held).is_ok();
                }
            }
            false
        })
        .await;
        answered == Ok(true)
    }

    fn priorities() -> Priorities {
        Priorities {
            latency: vec![StreamPattern::new("orders.>").unwrap()],
            bulk: vec![StreamPattern::new("logs.>").unwrap()],
        }
    }

    /// Only a handshake a certificate decision ended is audited: a TLS alert from either
    /// side (a QUIC crypto error), not a reset or a timeout (a peer restarting).
    #[test]
    fn only_tls_refusals_count_as_refused_handshakes() {
        use quinn::{ConnectionClose, ConnectionError, TransportErrorCode};
        let closed = |code| {
            ConnectionError::ConnectionClosed(ConnectionClose {
                error_code: code,
                frame_type: None,
                reason: bytes::Bytes::new(),
            })
        };
        // The peer refused this node: alerts 42 (bad_certificate), 40 (handshake_failure).
        assert_eq!(
            super::tls_refusal(&closed(TransportErrorCode::crypto(42))).as_deref(),
            Some(
                "the peer refused this node (TLS alert 42 bad_certificate; it may not trust this key)"
            )
        );
        assert!(super::tls_refusal(&closed(TransportErrorCode::crypto(40))).is_some());
        assert_eq!(
            super::tls_refusal(&closed(TransportErrorCode::PROTOCOL_VIOLATION)),
            None
        );
        for broken in [
            ConnectionError::Reset,
            ConnectionError::TimedOut,
            ConnectionError::LocallyClosed,
            ConnectionError::VersionMismatch,
        ] {
            assert_eq!(super::tls_refusal(&broken), None, "{broken}");
        }
    }

    #[test]
    fn messages_get_the_class_of_their_most_urgent_stream() {
        let p = priorities();
        assert_eq!(p.of(&push("orders.eu")), Class::Latency);
        assert_eq!(p.of(&push("metrics.cpu")), Class::Normal);
        assert_eq!(p.of(&push("logs.app")), Class::Bulk);
        assert_eq!(p.of(&Message::PushAck(1)), Class::Latency);
        assert_eq!(p.of(&Message::Swim(vec![1])), Class::Latency);
        assert_eq!(
            p.of(&Message::SyncRequest {
                digest: Vec::new(),
                from_origin: None,
                settled: None
            }),
            Class::Bulk
        );
    }

    /// A member address gossip got wrong (here: another trusted node's) does not cut off a
    /// peer this node has met: the dial finds another key (counted), and the address where
    /// the peer last proved its key is dialed instead.
    #[tokio::test]
    async fn a_wrong_member_address_falls_back_to_where_the_peer_proved_its_key() {
        let seeds = [[1u8; 32], [2u8; 32], [3u8; 32]];
        let keys = seeds.map(|s| Signer::from_secret(&s).origin());
        let start = |i: usize| test_transport(&seeds, i, "127.0.0.1:0".parse().unwrap(), 64);
        let ack = |n| Outgoing {
            msg: Message::PushAck(n),
            confirm: false,
            class: Class::Latency,
        };
        let (a, _a_rx, a_metrics) = start(0);
        let (b, mut b_rx, _) = start(1);
        let (c, _c_rx, _) = start(2);
        let (b_addr, c_addr) = (
            b.endpoint.local_addr().unwrap(),
            c.endpoint.local_addr().unwrap(),
        );
        // A meets B at its address.
        a.send(keys[1], Some(b_addr), ack(1));
        assert!(
            receives_ack(&mut b_rx, 1, Duration::from_secs(15)).await,
            "B never got the first message"
        );
        // The connection ends; gossip now says B is at C's address.
        a.live(&keys[1])
            .unwrap()
            .close(quinn::VarInt::from_u32(0), b"test");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while a.connected(&keys[1]) || b.connected(&keys[0]) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the connection stayed up"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        a.send(keys[1], Some(c_addr), ack(2));
        assert!(
            receives_ack(&mut b_rx, 2, Duration::from_secs(15)).await,
            "B was cut off by a wrong address"
        );
        assert_eq!(
            a_metrics
                .rejected
                .get_or_create(&vec![("reason", "peer_address_other_key".into())])
                .get(),
            1
        );
        a.close();
        b.close();
        c.close();
    }

    /// A member's address reaches the transport when the member comes up, before the
    /// driver's table has it: the core's first messages to it (sent without an address)
    /// are dialed there. Before, its queue was made without an address, they were dropped
    /// and the peer held unreachable for a second (a fresh mesh's first anti-entropy
    /// requests and confirmable pushes to it were lost).
    #[tokio::test]
    async fn a_member_learned_before_anything_is_sent_to_it_is_dialed_at_its_address() {
        let seeds = [[1u8; 32], [2u8; 32]];
        let keys = seeds.map(|s| Signer::from_secret(&s).origin());
        let start = |i: usize| test_transport(&seeds, i, "127.0.0.1:0".parse().unwrap(), 64);
        let (a, _a_rx, a_metrics) = start(0);
        let (b, mut b_rx, _) = start(1);
        a.learn(
            keys[1],
            Some(b.endpoint.local_addr().unwrap()),
            "aws:us-east-1",
        );
        a.send(
            keys[1],
            None,
            Outgoing {
                msg: Message::PushAck(7),
                confirm: false,
                class: Class::Latency,
            },
        );
        assert!(
            receives_ack(&mut b_rx, 7, Duration::from_secs(10)).await,
            "the message sent without an address was lost"
        );
        assert_eq!(
            a_metrics
                .mesh_dropped
                .get_or_create(&vec![("reason", "peer_unreachable".into())])
                .get(),
            0
        );
        a.close();
        b.close();
    }

    /// A confirmable push that cannot be sent (nothing answers at the peer's address) is
    /// reported to the driver with its events, which then asks another member of the
    /// peer's region; before, it was dropped without a word and the publish waited out
    /// its ack timeout.
    #[tokio::test]
    async fn a_confirmable_push_that_cannot_be_sent_is_reported_with_its_events() {
        let seeds = [[1u8; 32], [2u8; 32]];
        let keys = seeds.map(|s| Signer::from_secret(&s).origin());
        let (a, mut a_rx, _) = test_transport(&seeds, 0, "127.0.0.1:0".parse().unwrap(), 64);
        // B's address, with nothing listening there.
        let b_addr = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let msg = push("orders.eu");
        let Message::Push { events, .. } = &msg else {
            unreachable!()
        };
        let sent: Vec<_> = events.iter().map(|e| e.id()).collect();
        a.send(
            keys[1],
            Some(b_addr),
            Outgoing {
                msg,
                confirm: true,
                class: Class::Latency,
            },
        );
        // The dial gives up within its 5 s timeout.
        let reported = tokio::time::timeout(Duration::from_secs(15), async {
            while let Some(m) = a_rx.recv().await {
                if let FromMesh::ConfirmFailed { to, events } = m {
                    return Some((to, events.iter().map(|e| e.id()).collect::<Vec<_>>()));
                }
            }
            None
        })
        .await;
        assert_eq!(reported, Ok(Some((keys[1], sent))));
        a.close();
    }

    /// A node whose dial to a peer failed drops messages to it for a second instead of
    /// dialing per message; a connection the peer dials in meanwhile (a healed partition:
    /// the other side announces itself) ends that window at once.
    #[tokio::test]
    async fn a_peer_that_dials_in_ends_the_unreachable_window() {
        let seeds = [[1u8; 32], [2u8; 32]];
        let keys = seeds.map(|s| Signer::from_secret(&s).origin());
        let start = |i: usize, listen: SocketAddr| test_transport(&seeds, i, listen, 64);
        let ack = |n| Outgoing {
            msg: Message::PushAck(n),
            confirm: false,
            class: Class::Latency,
        };
        let dropped = |m: &Metrics| {
            m.mesh_dropped
                .get_or_create(&vec![("reason", "peer_unreachable".into())])
                .get()
        };
        // B's address, with nothing listening there yet.
        let b_addr = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let (a, _a_rx, a_metrics) = start(0, "127.0.0.1:0".parse().unwrap());
        // A window far longer than the test: it cannot end by itself on a slow machine.
        a.unreachable_wait_ms
            .store(60_000, std::sync::atomic::Ordering::Relaxed);
        let a_addr = a.endpoint.local_addr().unwrap();
        a.send(keys[1], Some(b_addr), ack(1));
        // The dial fails (at most its 5 s timeout): the message is dropped and the window
        // starts.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while dropped(&a_metrics) == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the dial never failed"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // B comes up and dials A.
        let (b, mut b_rx, _) = start(1, b_addr);
        b.send(keys[0], Some(a_addr), ack(2));
        while !a.connected(&keys[1]) {
            assert!(tokio::time::Instant::now() < deadline, "B never reached A");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Within A's window: the message goes over B's connection.
        a.send(keys[1], Some(b_addr), ack(3));
        assert!(
            receives_ack(&mut b_rx, 3, Duration::from_secs(10)).await,
            "A's message did not reach B within the window"
        );
        assert_eq!(
            dropped(&a_metrics),
            1,
            "only the message sent before B was up"
        );
        a.close();
        b.close();
    }

    /// A peer that stops answering (its node hung: the connection stays up, nothing is
    /// read) holds only its own exchange slots: confirmable pushes and plain messages to
    /// another peer still go at once.
    #[tokio::test]
    async fn a_stuck_peer_does_not_hold_up_the_others() {
        let seeds = [[1u8; 32], [2u8; 32], [3u8; 32]];
        let keys = seeds.map(|s| Signer::from_secret(&s).origin());
        let start = |i: usize, queue: usize| {
            test_transport(&seeds, i, "127.0.0.1:0".parse().unwrap(), queue)
        };
        let (a, _a_rx, _) = start(0, 64);
        // B's driver never reads: its transport stops reading, nothing is answered.
        let (b, _b_rx, _) = start(1, 1);
        let (c, mut c_rx, _) = start(2, 1024);
        let (b_addr, c_addr) = (
            b.endpoint.local_addr().unwrap(),
            c.endpoint.local_addr().unwrap(),
        );
        let confirmable = || Outgoing {
            msg: push("orders.x"),
            confirm: true,
            class: Class::Normal,
        };
        for _ in 0..300 {
            a.send(keys[1], Some(b_addr), confirmable());
        }
        // Let A's sends to B take every slot they can.
        tokio::time::sleep(Duration::from_millis(500)).await;
        a.send(keys[2], Some(c_addr), confirmable());
        a.send(
            keys[2],
            Some(c_addr),
            Outgoing {
                msg: Message::PushAck(7),
                confirm: false,
                class: Class::Latency,
            },
        );
        let got = tokio::time::timeout(Duration::from_secs(5), async {
            let (mut push, mut ack) = (false, false);
            while let Some(m) = c_rx.recv().await {
                if let FromMesh::Message { msg, reply, .. } = m {
                    match msg {
                        Message::Push { .. } if reply.is_some() => push = true,
                        Message::PushAck(7) => ack = true,
                        _ => {}
                    }
                }
                if push && ack {
                    return true;
                }
            }
            false
        })
        .await;
        assert_eq!(got, Ok(true), "C waited behind the stuck B");
        a.close();
        b.close();
        c.close();
    }

    /// A peer keeps one connection each way: each newer connection it opens replaces (and
    /// closes) the older one, so a trusted node opening connection after connection does
    /// not hold QUIC's receive buffers many times over.
    #[tokio::test]
    async fn a_newer_connection_from_a_peer_replaces_the_older() {
        let seeds = [[1u8; 32], [2u8; 32]];
        let keys = seeds.map(|s| Signer::from_secret(&s).origin());
        let start = |i: usize| test_transport(&seeds, i, "127.0.0.1:0".parse().unwrap(), 64);
        let (a, _a_rx, _) = start(0);
        let (b, _b_rx, b_metrics) = start(1);
        let b_addr = b.endpoint.local_addr().unwrap();
        let mut dialed = Vec::new();
        for _ in 0..3 {
            let (key, conn) = a.connect(b_addr).await.unwrap();
            assert_eq!(key, keys[1]);
            dialed.push(conn);
            // B adopts each as it accepts it.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while dialed[..2].iter().any(|c| c.close_reason().is_none()) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "B kept the older connections open"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(dialed[2].close_reason().is_none(), "the newest was closed");
        assert_eq!(
            b_metrics
                .mesh_dropped
                .get_or_create(&vec![("reason", "connection_replaced".into())])
                .get(),
            2
        );
        a.close();
        b.close();
    }

    /// A peer's exchanges waiting for slots (64 confirmable pushes in flight to a peer that
    /// does not answer them yet) do not hold up its latency lane: an acknowledgement sent
    /// after them arrives at once, not when the exchanges time out (30 s).
    #[tokio::test]
    async fn exchanges_waiting_for_slots_do_not_hold_up_acknowledgements() {
        let seeds = [[1u8; 32], [2u8; 32]];
        let keys = seeds.map(|s| Signer::from_secret(&s).origin());
        let start = |i: usize| test_transport(&seeds, i, "127.0.0.1:0".parse().unwrap(), 1024);
        let (a, _a_rx, _) = start(0);
        let (b, mut b_rx, _) = start(1);
        let b_addr = b.endpoint.local_addr().unwrap();
        for _ in 0..BI_INFLIGHT_MAX + 10 {
            a.send(
                keys[1],
                Some(b_addr),
                Outgoing {
                    msg: push("orders.x"),
                    confirm: true,
                    class: Class::Normal,
                },
            );
        }
        // B's driver takes the pushes and holds their answers (a loaded node), until no
        // more come (B reads a bounded number of streams at once): A's slots are all taken.
        let mut held = Vec::new();
        while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(1), b_rx.recv()).await {
            if let FromMesh::Message { reply: Some(r), .. } = m {
                held.push(r);
            }
        }
        assert!(!held.is_empty(), "no confirmable push arrived");
        let sent = tokio::time::Instant::now();
        a.send(
            keys[1],
            Some(b_addr),
            Outgoing {
                msg: Message::PushAck(9),
                confirm: false,
                class: Class::Latency,
            },
        );
        assert!(
            receives_ack(&mut b_rx, 9, Duration::from_secs(10)).await,
            "the acknowledgement waited behind the exchanges"
        );
        assert!(sent.elapsed() < Duration::from_secs(10));
        drop(held);
        a.close();
        b.close();
    }

    /// Peers' messages waiting for the driver are bounded by bytes: a driver that does not
    /// keep up holds at most `MESH_QUEUED_KIB_MAX` of them (16 MiB in tests), and the rest
    /// come as it handles those.
    #[tokio::test]
    async fn messages_waiting_for_the_driver_are_bounded_by_bytes() {
        const PUSHES: usize = 30;
        let seeds = [[1u8; 32], [2u8; 32]];
        let keys = seeds.map(|s| Signer::from_secret(&s).origin());
        let start = |i: usize| test_transport(&seeds, i, "127.0.0.1:0".parse().unwrap(), 1024);
        let (a, _a_rx, _) = start(0);
        let (b, mut b_rx, _) = start(1);
        let b_addr = b.endpoint.local_addr().unwrap();
        let signer = Signer::from_secret(&[5; 32]);
        let Message::Push { events, .. } = push("orders.x") else {
            unreachable!()
        };
        let mut draft = events[0].draft().clone();
        draft.payload = Payload::Clear(vec![7u8; 900 << 10]);
        for seq in 1..=PUSHES as u64 {
            draft.seq = seq;
            a.send(
                keys[1],
                Some(b_addr),
                Outgoing {
                    msg: Message::Push {
                        events: vec![StdArc::new(signer.sign(draft.clone()).unwrap())],
                        relay: Vec::new(),
                        ack: 0,
                        reroutes: 0,
                    },
                    confirm: false,
                    class: Class::Normal,
                },
            );
        }
        // The driver takes what is queued but has not handled it yet (holds the messages).
        let mut held = Vec::new();
        let pushes = |held: &Vec<FromMesh>| {
            held.iter()
                .filter(|m| {
                    matches!(
                        m,
                        FromMesh::Message {
                            msg: Message::Push { .. },
                            ..
                        }
                    )
                })
                .count()
        };
        // Until no push has come for two seconds (RTT reports keep coming).
        let mut quiet_since = tokio::time::Instant::now();
        while quiet_since.elapsed() < Duration::from_secs(2) {
            if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(200), b_rx.recv()).await
            {
                if matches!(
                    m,
                    FromMesh::Message {
                        msg: Message::Push { .. },
                        ..
                    }
                ) {
                    quiet_since = tokio::time::Instant::now();
                }
                held.push(m);
            }
        }
        let first = pushes(&held);
        assert!(
            (1..PUSHES).contains(&first),
            "{first} pushes of 900 KiB queued against a budget of 16 MiB"
        );
        assert!(first <= (16 << 10) / 900, "{first} pushes queued");
        // Handled: the rest arrive.
        held.clear();
        let mut rest = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while first + rest < PUSHES {
            match tokio::time::timeout_at(deadline, b_rx.recv()).await {
                Ok(Some(FromMesh::Message {
                    msg: Message::Push { .. },
                    ..
                })) => rest += 1,
                Ok(Some(_)) => {}
                _ => break,
            }
        }
        assert_eq!(first + rest, PUSHES, "pushes lost");
        a.close();
        b.close();
    }

    /// A confirmable push of many small events is confirmed: its answer (33 bytes per id)
    /// is over a megabyte, which the sender once refused to read, so the publisher's
    /// `regions:N` timed out although the other region had committed.
    #[tokio::test]
    async fn a_push_of_many_small_events_is_confirmed() {
        const N: u64 = 40_000;
        let seeds = [[1u8; 32], [2u8; 32]];
        let keys = seeds.map(|s| Signer::from_secret(&s).origin());
        let start = |i: usize| test_transport(&seeds, i, "127.0.0.1:0".parse().unwrap(), 64);
        let (a, mut a_rx, a_metrics) = start(0);
        let (b, mut b_rx, _) = start(1);
        let b_addr = b.endpoint.local_addr().unwrap();
        let events = numbered_events(N);
        let ids: Vec<[u8; 32]> = events.iter().map(|e| e.id().0).collect();
        assert!(
            ids.len() * 33 > 1 << 20,
            "the answer must be over a megabyte"
        );
        send_confirmable(&a, keys[1], b_addr, events);
        // B's driver commits them all and confirms.
        assert!(
            answer_confirmable(&mut b_rx, ids.clone(), Duration::from_secs(30)).await,
            "B never got the confirmable push"
        );
        let confirmed = next_confirmed(&mut a_rx).await.map(|(from, ids, without)| {
            assert!(without.is_empty(), "every event was confirmed");
            (from, ids.len())
        });
        let failed = a_metrics
            .mesh_dropped
            .get_or_create(&vec![("reason", "confirm_failed".into())])
            .get();
        assert_eq!(
            confirmed,
            Some((keys[1], N as usize)),
            "the confirmation never came back (confirm_failed {failed})"
        );
        a.close();
        b.close();
    }

    /// A peer answering a confirmable push without some of its events (it does not store
    /// their stream) is reported with those events, for the driver to ask the region's
    /// next member at once (before, such an answer was reported as the ids alone, and the
    /// publish waited for its half-way round).
    #[tokio::test]
    async fn an_answer_without_some_events_reports_them() {
        let seeds = [[1u8; 32], [2u8; 32]];
        let keys = seeds.map(|s| Signer::from_secret(&s).origin());
        let start = |i: usize| test_transport(&seeds, i, "127.0.0.1:0".parse().unwrap(), 64);
        let (a, mut a_rx, _) = start(0);
        let (b, mut b_rx, _) = start(1);
        let b_addr = b.endpoint.local_addr().unwrap();
        let events = numbered_events(3);
        send_confirmable(&a, keys[1], b_addr, events.clone());
        // B holds only the first.
        assert!(
            answer_confirmable(&mut b_rx, vec![events[0].id().0], Duration::from_secs(30)).await,
            "B never got the confirmable push"
        );
        let confirmed = next_confirmed(&mut a_rx).await.map(|(from, ids, without)| {
            (
                from,
                ids,
                without.iter().map(|e| e.id()).collect::<Vec<_>>(),
            )
        });
        assert_eq!(
            confirmed,
            Some((
                keys[1],
                vec![events[0].id().0],
                vec![events[1].id(), events[2].id()]
            ))
        );
        a.close();
        b.close();
    }

    /// A backed-up peer queue drains latency-sensitive traffic first, bulk last, each lane
    /// in its own order.
    #[tokio::test]
    async fn a_busy_queue_sends_latency_first_and_bulk_last() {
        let p = priorities();
        let (lanes, mut rx) = Lanes::new();
        for stream in [
            "logs.a",
            "metrics.a",
            "orders.a",
            "logs.b",
            "orders.b",
            "metrics.b",
        ] {
            let msg = push(stream);
            let class = p.of(&msg);
            lanes[class as usize]
                .try_send(Outgoing {
                    msg,
                    confirm: false,
                    class,
                })
                .unwrap();
        }
        drop(lanes);
        let mut order = Vec::new();
        while let Some(out) = rx.next().await {
            if let Message::Push { events, .. } = &out.msg {
                order.push(events[0].stream().as_str().to_string());
            }
        }
        assert_eq!(
            order,
            [
                "orders.a",
                "orders.b",
                "metrics.a",
                "metrics.b",
                "logs.a",
                "logs.b"
            ]
        );
    }
}
