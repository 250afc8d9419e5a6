//! Wall time the simulator spends in the mesh core's inputs, by message kind, in timer
//! steps and in publishes (feature `handler-timing`, off by default: it reads the clock
//! twice per input). Measured here, in the driver, around its calls of `Node`'s
//! `handle_*`: the core stays free of clocks. For finding where a large simulation's time
//! goes: `weft-sim` prints the table after a run (docs/sim.md §3.3, docs/sim-speed.md).
//! The table is per thread; the simulator runs every node on one.

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
    /// Starts timing a call of `kind` of `class` ("message", "timers" or "publish").
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

    /// Every span is counted under its class and kind, the table reads most time first,
    /// and `take` empties it.
    #[test]
    fn spans_are_counted_by_kind_most_time_first() {
        let _ = take();
        for _ in 0..2 {
            let _span = Span::start("message", "probe");
        }
        {
            let _span = Span::start("timers", "due");
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        let table = take();
        let calls = |class: &str, kind: &str| {
            table
                .iter()
                .find(|(c, k, _)| *c == class && *k == kind)
                .map(|(_, _, t)| t.calls)
        };
        assert_eq!(calls("message", "probe"), Some(2));
        assert_eq!(calls("timers", "due"), Some(1));
        assert_eq!(table[0].1, "due", "the slept span first: {table:?}");
        assert!(table[0].2.nanos >= 2_000_000);
        assert!(take().is_empty(), "taken tables start empty");
    }
}
