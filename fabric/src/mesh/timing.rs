//! Wall time spent in the core's input handlers, by message kind, by timer kind and in
//! publishes (feature `handler-timing`, off by default: it reads the clock twice per
//! input). For finding where a large simulation's time goes: `weft-sim` built with its
//! `handler-timing` feature prints the table after a run (docs/sim.md §3.3,
//! docs/sim-speed.md). The table is per thread; the simulator runs every node on one.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::Instant;

/// What one handler kind took.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HandlerTime {
    /// Calls timed.
    pub calls: u64,
    /// Wall time in them, nanoseconds.
    pub nanos: u64,
}

thread_local! {
    static TABLE: RefCell<BTreeMap<(&'static str, &'static str), HandlerTime>> =
        const { RefCell::new(BTreeMap::new()) };
}

/// Times one handler call from its start to its drop.
pub(crate) struct Span {
    key: (&'static str, &'static str),
    started: Instant,
}

impl Span {
    /// Starts timing a call of `kind` of `class` ("message", "timer" or "publish").
    // The one clock read in the core, and only in this feature's builds: what it measures
    // never reaches the state machine, whose time stays the `now` of its inputs.
    #[allow(clippy::disallowed_methods)]
    pub(crate) fn start(class: &'static str, kind: &'static str) -> Self {
        Self {
            key: (class, kind),
            started: Instant::now(),
        }
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        let nanos = u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        TABLE.with_borrow_mut(|table| {
            let entry = table.entry(self.key).or_default();
            entry.calls += 1;
            entry.nanos = entry.nanos.saturating_add(nanos);
        });
    }
}

/// Everything timed on this thread since the last call, most time first (ties by class and
/// kind); the table starts empty again.
pub fn take() -> Vec<(&'static str, &'static str, HandlerTime)> {
    let table = TABLE.with_borrow_mut(std::mem::take);
    let mut out: Vec<_> = table.into_iter().map(|((c, k), t)| (c, k, t)).collect();
    out.sort_by(|a, b| b.2.nanos.cmp(&a.2.nanos).then((a.0, a.1).cmp(&(b.0, b.1))));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::{MemStore, MemberInfo, MeshConfig, Message, Node};

    fn node(key: u8) -> Node<MemStore> {
        let me = MemberInfo {
            key: [key; 32],
            region: "aws:eu-west-1".into(),
            cloud: "aws".into(),
            jurisdiction: "IE".into(),
            addr: format!("n{key}").into(),
            policy_epoch: 0,
            generation: 1,
        };
        Node::new(me, MeshConfig::wan(3), u64::from(key), MemStore::new(64), 0)
    }

    /// Every message and every timer that fires is counted under its kind, and `take`
    /// empties the table.
    #[test]
    fn handlers_are_timed_by_kind() {
        let _ = take();
        let mut a = node(1);
        let b = node(2);
        a.handle_message(
            0,
            b.me().node_key(),
            Message::Probe {
                nonce: 7,
                coord: weft_routing::Coordinate::origin(),
            },
        );
        a.handle_message(
            1,
            b.me().node_key(),
            Message::Probe {
                nonce: 8,
                coord: weft_routing::Coordinate::origin(),
            },
        );
        // Past the first periodic timers.
        a.handle_timeout(30_000_000);
        let table = take();
        let probes = table
            .iter()
            .find(|(c, k, _)| *c == "message" && *k == "probe")
            .map(|(_, _, t)| *t)
            .expect("probes timed");
        assert_eq!(probes.calls, 2);
        assert!(
            table.iter().any(|(c, _, t)| *c == "timer" && t.calls > 0),
            "timers timed: {table:?}"
        );
        assert!(
            table.windows(2).all(|w| w[0].2.nanos >= w[1].2.nanos),
            "most time first"
        );
        assert!(take().is_empty(), "taken tables start empty");
    }
}
