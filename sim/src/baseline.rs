//! Baseline dissemination strategies run beside Weft in the same simulation: naive flooding
//! over a random overlay, and random-peer gossip (infect and die). Both know the whole
//! membership from the start (an advantage Weft does not get) and do no repair.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};
use weft_fabric::mesh::{AppEvent, Message, Micros, Transmit};
use weft_fabric::{Event, EventId, OriginKey};

/// Which baseline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BaselineKind {
    /// Forward every new event to every overlay neighbour.
    Flooding,
    /// Forward every new event to `fanout` peers picked at random, once.
    RandomGossip {
        /// Peers per forward.
        fanout: usize,
    },
}

/// One node running a baseline.
#[derive(Debug)]
pub struct BaselineNode {
    kind: BaselineKind,
    me: OriginKey,
    /// Overlay neighbours (flooding) or the whole membership (gossip).
    peers: Vec<OriginKey>,
    seen: HashSet<EventId>,
    rng: ChaCha8Rng,
    transmits: VecDeque<Transmit>,
    app: VecDeque<AppEvent>,
    events_new: u64,
}

impl BaselineNode {
    /// A baseline node with its peer list and seed.
    pub fn new(kind: BaselineKind, me: OriginKey, peers: Vec<OriginKey>, seed: u64) -> Self {
        Self {
            kind,
            me,
            peers,
            seen: HashSet::new(),
            rng: ChaCha8Rng::seed_from_u64(seed),
            transmits: VecDeque::new(),
            app: VecDeque::new(),
            events_new: 0,
        }
    }

    /// A locally published event.
    pub fn handle_publish(&mut self, event: Arc<Event>) {
        self.receive(None, event);
    }

    /// A message from a peer; only pushes mean anything to a baseline.
    pub fn handle_message(&mut self, from: OriginKey, msg: Message) {
        if let Message::Push { events, .. } = msg {
            for e in events {
                self.receive(Some(from), e);
            }
        }
    }

    fn receive(&mut self, from: Option<OriginKey>, event: Arc<Event>) {
        if !self.seen.insert(event.id()) {
            return;
        }
        self.events_new += 1;
        self.app.push_back(AppEvent::Deliver(event.clone()));
        let targets: Vec<OriginKey> = match self.kind {
            BaselineKind::Flooding => self
                .peers
                .iter()
                .copied()
                .filter(|p| Some(*p) != from)
                .collect(),
            BaselineKind::RandomGossip { fanout } => {
                let mut picked = Vec::with_capacity(fanout);
                // Bounded: at most 4 * fanout draws.
                for _ in 0..4 * fanout {
                    if picked.len() == fanout || self.peers.is_empty() {
                        break;
                    }
                    let p = self.peers[(self.rng.next_u64() % self.peers.len() as u64) as usize];
                    if p != self.me && Some(p) != from && !picked.contains(&p) {
                        picked.push(p);
                    }
                }
                picked
            }
        };
        for to in targets {
            self.transmits.push_back(Transmit {
                to,
                msg: Message::Push {
                    events: vec![event.clone()],
                    relay: Vec::new(),
                    ack: 0,
                    reroutes: 0,
                },
            });
        }
    }

    /// Next message to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// Next delivery.
    pub fn poll_event(&mut self) -> Option<AppEvent> {
        self.app.pop_front()
    }

    /// Baselines have no timers.
    pub fn poll_timeout(&self) -> Option<Micros> {
        None
    }

    /// Events received for the first time (including own publishes).
    pub fn events_new(&self) -> u64 {
        self.events_new
    }
}
