//! The mesh `Node` in a tiny deterministic harness (in the spirit of quinn-proto's `Pair`):
//! virtual time, fixed latencies, every transmit delivered in time order. The simulator
//! (`weft-sim`) runs the same code at scale with faults; these tests pin the basics next to
//! the code.

mod util;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use weft_fabric::mesh::{AppEvent, MemStore, MemberInfo, MeshConfig, Message, Micros, Node};
use weft_fabric::{Event, EventId, Hlc, OriginKey, Signer};

/// Nodes in two "regions" 40 ms apart (one way), 0.5 ms inside a region.
struct Net {
    now: Micros,
    nodes: Vec<Option<Node<MemStore>>>,
    signers: Vec<Signer>,
    regions: Vec<&'static str>,
    keys: BTreeMap<OriginKey, usize>,
    queue: BTreeMap<(Micros, u64), (usize, usize, Message)>,
    seq: u64,
    delivered: Vec<Vec<EventId>>,
    /// Of `delivered`, the events delivered late ([`AppEvent::Late`]): a Skip for them was
    /// contradicted.
    late: Vec<BTreeSet<EventId>>,
}

impl Net {
    fn new(regions: &[&'static str]) -> Self {
        let signers: Vec<Signer> = (0..regions.len())
            .map(|i| Signer::from_secret(&[i as u8 + 40; 32]))
            .collect();
        let mut net = Net {
            now: 0,
            nodes: Vec::new(),
            keys: signers
                .iter()
                .enumerate()
                .map(|(i, s)| (s.origin(), i))
                .collect(),
            signers,
            regions: regions.to_vec(),
            queue: BTreeMap::new(),
            seq: 0,
            delivered: vec![Vec::new(); regions.len()],
            late: vec![BTreeSet::new(); regions.len()],
        };
        for i in 0..regions.len() {
            let node = net.fresh(i, 0);
            net.nodes.push(Some(node));
        }
        let seeds = vec![net.info(0, 0)];
        for i in 0..regions.len() {
            net.nodes[i].as_mut().unwrap().join(0, &seeds);
            net.drain(i);
        }
        net
    }

    fn info(&self, i: usize, generation: u32) -> MemberInfo {
        MemberInfo {
            key: self.signers[i].origin().0,
            region: self.regions[i].into(),
            cloud: "test".into(),
            jurisdiction: "EU".into(),
            addr: format!("n{i}").into(),
            policy_epoch: 0,
            generation,
        }
    }

    fn fresh(&self, i: usize, generation: u32) -> Node<MemStore> {
        Node::new(
            self.info(i, generation),
            MeshConfig::wan(8),
            7 + i as u64,
            MemStore::new(100_000),
            self.now,
        )
    }

    fn latency(&self, a: usize, b: usize) -> Micros {
        if self.regions[a] == self.regions[b] {
            500
        } else {
            40_000
        }
    }

    fn drain(&mut self, i: usize) {
        let Some(node) = self.nodes[i].as_mut() else {
            return;
        };
        let mut out = Vec::new();
        while let Some(t) = node.poll_transmit() {
            out.push(t);
        }
        let mut app = Vec::new();
        while let Some(e) = node.poll_event() {
            app.push(e);
        }
        node.check_invariants();
        for t in out {
            let to = self.keys[&t.to];
            let at = self.now + self.latency(i, to);
            self.seq += 1;
            self.queue.insert((at, self.seq), (i, to, t.msg));
        }
        for e in app {
            match e {
                AppEvent::Deliver(ev) => self.delivered[i].push(ev.id()),
                AppEvent::Late(event) | AppEvent::Recovered(event) => {
                    self.delivered[i].push(event.id());
                    self.late[i].insert(event.id());
                }
                AppEvent::SkipContradicted { .. } => {}
                AppEvent::Equivocation { origin, seq, .. } => {
                    panic!("no two producers here share a key: {origin} {seq}")
                }
                AppEvent::MemberUp(m) => {
                    let j = self.keys[&OriginKey(m.key)];
                    let rtt = 2 * self.latency(i, j);
                    let now = self.now;
                    if let Some(node) = self.nodes[i].as_mut() {
                        node.handle_rtt_sample(now, OriginKey(m.key), rtt);
                    }
                }
                AppEvent::MemberDown(_) => {}
            }
        }
    }

    /// Runs until `until`, delivering messages and firing timers in time order.
    fn run_until(&mut self, until: Micros) {
        loop {
            let next_msg = self.queue.first_key_value().map(|(k, _)| k.0);
            let next_timer = self
                .nodes
                .iter()
                .enumerate()
                .filter_map(|(i, n)| n.as_ref().and_then(|n| n.poll_timeout()).map(|t| (t, i)))
                .min();
            let next = match (next_msg, next_timer) {
                (Some(m), Some((t, _))) => m.min(t),
                (Some(m), None) => m,
                (None, Some((t, _))) => t,
                (None, None) => break,
            };
            if next > until {
                break;
            }
            self.now = next;
            if next_msg == Some(next) {
                let (_, (from, to, msg)) = self.queue.pop_first().unwrap();
                let from_key = self.signers[from].origin();
                if let Some(node) = self.nodes[to].as_mut() {
                    node.handle_message(next, from_key, msg);
                    self.drain(to);
                }
            } else if let Some((_, i)) = next_timer {
                self.nodes[i].as_mut().unwrap().handle_timeout(next);
                self.drain(i);
            }
        }
        self.now = until;
    }

    fn publish(&mut self, i: usize, seq: u64) -> EventId {
        self.publish_event(i, seq).id()
    }

    /// [`Net::publish`], returning the event itself.
    fn publish_event(&mut self, i: usize, seq: u64) -> Arc<Event> {
        let mut d = util::draft("t.events", seq, b"x");
        d.hlc = Hlc::new(1_000_000 + self.now / 1000, 0).unwrap();
        let event: Arc<Event> = Arc::new(self.signers[i].sign(d).unwrap());
        let now = self.now;
        self.nodes[i]
            .as_mut()
            .unwrap()
            .handle_publish(now, event.clone())
            .unwrap();
        self.drain(i);
        event
    }
}

const SECOND: Micros = 1_000_000;

#[test]
fn events_reach_every_node_once_and_in_order() {
    let mut net = Net::new(&["eu", "eu", "eu", "us", "us", "us"]);
    net.run_until(10 * SECOND);
    for n in net.nodes.iter().flatten() {
        assert_eq!(n.members().count(), 5, "membership converged");
    }
    let mut ids = Vec::new();
    for seq in 1..=20 {
        ids.push(net.publish(0, seq));
        net.run_until(net.now + 50_000);
    }
    net.run_until(net.now + 5 * SECOND);
    for (i, got) in net.delivered.iter().enumerate() {
        assert_eq!(got, &ids, "node {i} got every event once, in publish order");
    }
    // The tree delivered without redundant copies of the payload.
    let duplicates: u64 = net
        .nodes
        .iter()
        .flatten()
        .map(|n| n.stats().events_duplicate)
        .sum();
    assert!(
        duplicates < 20,
        "{duplicates} duplicate copies for 20 events x 5 receivers"
    );
}

#[test]
fn a_restarted_node_catches_up_by_anti_entropy() {
    let mut net = Net::new(&["eu", "eu", "us", "us"]);
    net.run_until(10 * SECOND);
    // Node 3 crashes and loses everything.
    net.nodes[3] = None;
    let mut ids = BTreeSet::new();
    for seq in 1..=30 {
        ids.insert(net.publish(1, seq));
        net.run_until(net.now + 100_000);
    }
    // It comes back with a new generation and an empty store.
    let node = net.fresh(3, 1);
    net.nodes[3] = Some(node);
    net.delivered[3].clear();
    let seeds = vec![net.info(0, 0)];
    let now = net.now;
    net.nodes[3].as_mut().unwrap().join(now, &seeds);
    net.drain(3);
    net.run_until(net.now + 30 * SECOND);
    let got: BTreeSet<EventId> = net.delivered[3].iter().copied().collect();
    assert_eq!(got, ids, "every event reached the restarted node");
    assert_eq!(net.delivered[3].len(), ids.len(), "exactly once");
    assert!(
        net.nodes[3].as_ref().unwrap().stats().sync_events_new > 0,
        "through anti-entropy"
    );
}

#[test]
fn a_published_batch_travels_in_shared_pushes_and_arrives_once_in_order() {
    let mut net = Net::new(&["eu", "eu", "us", "us"]);
    net.run_until(10 * SECOND);
    let events: Vec<Arc<Event>> = (1..=50)
        .map(|seq| {
            let mut d = util::draft("t.events", seq, b"x");
            d.hlc = Hlc::new(1_000_000 + net.now / 1000, 0).unwrap();
            Arc::new(net.signers[0].sign(d).unwrap())
        })
        .collect();
    let ids: Vec<EventId> = events.iter().map(|e| e.id()).collect();
    let pushes_before = net.nodes[0].as_ref().unwrap().stats().pushes_sent;
    let now = net.now;
    let results = net.nodes[0]
        .as_mut()
        .unwrap()
        .handle_publish_batch(now, events.clone());
    assert!(results.iter().all(Result::is_ok));
    net.drain(0);
    let pushes = net.nodes[0].as_ref().unwrap().stats().pushes_sent - pushes_before;
    // One push per target peer for the whole batch (50 events fit one batch), not 50.
    assert!(pushes <= 3, "{pushes} pushes for one batch");
    // Publishing the same batch again changes nothing.
    let again = net.nodes[0]
        .as_mut()
        .unwrap()
        .handle_publish_batch(now, events);
    assert!(again.iter().all(Result::is_ok));
    net.run_until(net.now + 5 * SECOND);
    for (i, got) in net.delivered.iter().enumerate() {
        assert_eq!(got, &ids, "node {i} got the batch once, in order");
    }
}

/// A noisy member's message: every kind but Skip (an unsigned Skip is believed: see
/// ARCHITECTURE.md, "Trust between nodes"), with fields drawn from `r`: announcements and
/// GRAFTs of real origins' next numbers under wrong ids, replays of real events with
/// made-up relay hops, digests claiming ranges nobody has, acknowledgements of nothing,
/// coordinates at the edges, SWIM garbage.
fn noise(r: &mut impl FnMut() -> u64, origins: &[OriginKey], events: &[Arc<Event>]) -> Message {
    use weft_fabric::mesh::{DigestRanges, EventRef, RelayHop, Settled};
    let origin = origins[(r() % origins.len() as u64) as usize];
    let seq = match r() % 4 {
        0 => r(),
        _ => 1 + r() % 40,
    };
    let bogus_ref = |r: &mut dyn FnMut() -> u64| EventRef {
        origin,
        seq,
        id: EventId([(r() % 256) as u8; 32]),
    };
    match r() % 12 {
        0 => Message::IHave((0..1 + r() % 8).map(|_| bogus_ref(r)).collect()),
        1 => Message::Graft((0..1 + r() % 8).map(|_| bogus_ref(r)).collect()),
        2 if !events.is_empty() => Message::Push {
            events: vec![events[(r() % events.len() as u64) as usize].clone()],
            relay: (0..r() % 3)
                .map(|i| RelayHop {
                    region: ["eu", "us", "mars"][(r() % 3) as usize].into(),
                    parent: r().is_multiple_of(2).then_some((i + r() % 2) as u8),
                })
                .collect(),
            ack: r() % 3,
            reroutes: (r() % 256) as u8,
        },
        3 => Message::SyncRequest {
            digest: vec![(
                origin,
                DigestRanges::from_iter([(1, seq.max(1)), (seq.saturating_add(5), u64::MAX)]),
            )],
            from_origin: r().is_multiple_of(2).then_some(origin),
            settled: r().is_multiple_of(2).then(|| Settled {
                key: [r(), r()],
                count: (r() % 8) as u32,
                hash: r(),
            }),
        },
        4 => Message::SyncResponse {
            events: Vec::new(),
            resume: r().is_multiple_of(2).then_some(origin),
            held: r(),
            unsettled: r().is_multiple_of(2).then(|| [r(), r()]),
            your_high: if r().is_multiple_of(2) { r() } else { 0 },
        },
        5 => Message::PushAck(r()),
        6 => Message::LinkDigest(vec![(origin, r())]),
        7 => Message::LinkPull(vec![origin]),
        8 => {
            let mut coord = weft_routing::Coordinate::origin();
            coord.vec[0] = f32::from_bits(r() as u32);
            coord.height = [f32::NAN, f32::INFINITY, -1.0, 1e30][(r() % 4) as usize];
            Message::ProbeAck { nonce: r(), coord }
        }
        10 => Message::Skip(
            (0..1 + r() % 8)
                .map(|_| (origins[(r() % origins.len() as u64) as usize], 1 + r() % 40))
                .collect(),
        ),
        9 => Message::Probe {
            nonce: r(),
            coord: weft_routing::Coordinate::origin(),
        },
        _ => Message::Swim((0..r() % 64).map(|_| (r() % 256) as u8).collect()),
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(12))]

    /// One member sends the others a stream of junk (every kind, Skips for real events
    /// among it) while the rest publish: every honest node still delivers every event once
    /// (missed = 0 after the noise stops), in per-origin order but for events whose false
    /// Skip an event contradicted (delivered late, and counted against the noisy member),
    /// and keeps its invariants throughout.
    #[test]
    fn a_noisy_member_cannot_stop_the_others_delivering(seed in proptest::prelude::any::<u64>()) {
        use rand_core::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut r = move || rng.next_u64();
        let mut net = Net::new(&["eu", "eu", "us", "us", "us"]);
        net.run_until(10 * SECOND);
        let noisy = 4;
        let honest: Vec<usize> = (0..4).collect();
        let origins: Vec<OriginKey> = honest.iter().map(|&i| net.signers[i].origin()).collect();
        let mut published: Vec<Arc<Event>> = Vec::new();
        let mut by_origin: BTreeMap<usize, Vec<EventId>> = BTreeMap::new();
        let mut next_seq = [1u64; 4];
        // Eight seconds: each 100 ms an honest node publishes, and the noisy member sends
        // one to three junk messages to random honest nodes.
        for _ in 0..80 {
            let i = honest[(r() % 4) as usize];
            let event = net.publish_event(i, next_seq[i]);
            next_seq[i] += 1;
            by_origin.entry(i).or_default().push(event.id());
            published.push(event);
            for _ in 0..1 + r() % 3 {
                let to = honest[(r() % 4) as usize];
                let msg = noise(&mut r, &origins, &published);
                let at = net.now + net.latency(noisy, to) + r() % 50_000;
                net.seq += 1;
                net.queue.insert((at, net.seq), (noisy, to, msg));
            }
            net.run_until(net.now + 100_000);
        }
        proptest::prop_assert_eq!(published.len(), 80, "every published event is replayable");
        net.run_until(net.now + 40 * SECOND);
        let noisy_key = net.signers[noisy].origin();
        for &i in &honest {
            let got = &net.delivered[i];
            let late = &net.late[i];
            let unique: BTreeSet<&EventId> = got.iter().collect();
            proptest::prop_assert_eq!(unique.len(), got.len(), "node {} got an event twice", i);
            for (origin, ids) in &by_origin {
                let all: BTreeSet<&EventId> = ids.iter().collect();
                let mine: BTreeSet<&EventId> = got.iter().filter(|id| all.contains(id)).collect();
                proptest::prop_assert_eq!(&mine, &all, "node {} missed events of origin {}", i, origin);
                let order: Vec<EventId> = got
                    .iter()
                    .filter(|id| all.contains(id) && !late.contains(id))
                    .copied()
                    .collect();
                let expected: Vec<EventId> =
                    ids.iter().filter(|id| !late.contains(id)).copied().collect();
                proptest::prop_assert_eq!(&order, &expected, "node {} from origin {}", i, origin);
            }
            let node = net.nodes[i].as_ref().unwrap();
            proptest::prop_assert_eq!(node.stats().delivered_late, late.len() as u64);
            proptest::prop_assert_eq!(
                node.skips_contradicted_by(&noisy_key),
                node.stats().skips_contradicted,
                "node {}: only the noisy member's Skips are contradicted", i
            );
            node.check_invariants_full();
        }
    }
}
