//! The engine's event queue: a hierarchical timing wheel over a slab, with a heap beyond.
//!
//! A discrete-event simulation pops its events in `(time, seq)` order, where `seq` is the
//! order of the pushes. This queue gives exactly that order (a property test below checks it
//! against a binary heap of `(time, seq)` keys, which the engine used before), at a small
//! constant cost per event instead of a heap's logarithmic sift. Four levels of 64 buckets:
//!
//! | level | one bucket | the level's window |
//! |---|---|---|
//! | 0 | 1 µs | 64 µs |
//! | 1 | 64 µs | 4.1 ms |
//! | 2 | 4.1 ms | 262 ms |
//! | 3 | 262 ms | 16.8 s |
//!
//! and beyond the last window a binary heap of `(time, seq, slot)` (faults, workload starts,
//! long timers: a handful per run). An event goes into the lowest level whose window holds
//! its time; a bucket is a first-in, first-out list threaded through the slab (each slot
//! names the next). When level 0 runs empty, the first non-empty bucket of the lowest
//! non-empty level above becomes the window of the level below it and its events move down,
//! in list order (an event moves down at most three times; a message of ~100 ms twice).
//!
//! Why this keeps the order: the events of one microsecond leave level 0 in list order, so
//! every list must hold the events of one time in `seq` order. Events reach a list directly,
//! in push order, or from the level above, in that list's order; and the moves into a
//! window happen when the window is reached, before any direct push into it (until then its
//! times belonged to the level above or the heap, which hands them over in `(time, seq)`
//! order).
//!
//! A level is 64 list ends (512 bytes) and a bit per non-empty bucket, so the wheel's own
//! state stays in a few cache lines. A first version had two levels of 4,096 buckets: its
//! lists' ends spread over 64 KiB, and at the simulator's density (an event every few
//! hundred microseconds) nearly every bucket it touched was a cache miss, which cost as much
//! as its fewer instructions saved. The slots' links (time and next) are kept apart from
//! the events so that moving an event down touches 16 bytes, not the event.
//!
//! Hand-written: the timing-wheel crates serve timers (cancellation, coarse ticks) and none
//! keeps a microsecond's events in push order; a radix heap (`radix-heap`) was measured at
//! 16 % more instructions than the binary heap on clock-skew (docs/sim-speed.md).

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use weft_fabric::mesh::Micros;

/// Bits of a bucket index: 64 buckets per level.
const BITS: u32 = 6;
const BUCKETS: usize = 1 << BITS;
const LEVELS: usize = 4;
/// End of a bucket's list.
const NIL: u32 = u32::MAX;

/// Span of level `k`'s window, in µs.
const fn window(k: usize) -> Micros {
    1 << (BITS as usize * (k + 1))
}

/// Bits of a time below level `k`'s bucket index.
const fn shift(k: usize) -> u32 {
    BITS * k as u32
}

/// A slot's place in its bucket's list.
#[derive(Debug, Clone, Copy)]
struct Link {
    at: Micros,
    next: u32,
}

/// One level of the wheel: 64 first-in, first-out lists and a bit per non-empty one.
#[derive(Debug, Clone, Copy)]
struct Level {
    /// Start of the level's window (a multiple of its span).
    base: Micros,
    /// Per bucket, the first and the last slot of its list.
    ends: [[u32; 2]; BUCKETS],
    nonempty: u64,
}

/// The event queue (module documentation). `T` is the engine's event.
#[derive(Debug)]
pub(crate) struct EventQueue<T> {
    links: Vec<Link>,
    events: Vec<Option<T>>,
    free: Vec<u32>,
    /// The window of each level lies inside the bucket of the level above that it came
    /// from, and that bucket is empty.
    levels: [Level; LEVELS],
    beyond: BinaryHeap<Reverse<(Micros, u64, u32)>>,
}

impl<T> Default for EventQueue<T> {
    fn default() -> Self {
        EventQueue {
            links: Vec::new(),
            events: Vec::new(),
            free: Vec::new(),
            levels: [Level {
                base: 0,
                ends: [[NIL; 2]; BUCKETS],
                nonempty: 0,
            }; LEVELS],
            beyond: BinaryHeap::new(),
        }
    }
}

impl<T> EventQueue<T> {
    /// Queues `ev` at `at`; `seq` is its push order (strictly increasing from push to push).
    ///
    /// # Panics
    ///
    /// When `at` lies before the window of the last event popped: the engine never
    /// schedules into the past.
    pub(crate) fn push(&mut self, at: Micros, seq: u64, ev: T) {
        assert!(
            at >= self.levels[0].base,
            "event queued at {at} us, before the queue's clock ({} us)",
            self.levels[0].base
        );
        let link = Link { at, next: NIL };
        let slot = match self.free.pop() {
            Some(slot) => {
                self.links[slot as usize] = link;
                self.events[slot as usize] = Some(ev);
                slot
            }
            None => {
                self.links.push(link);
                self.events.push(Some(ev));
                u32::try_from(self.links.len() - 1).expect("under 2^32 queued events")
            }
        };
        if !self.place(at, slot) {
            self.beyond.push(Reverse((at, seq, slot)));
        }
    }

    /// Takes the earliest event (the first pushed among the earliest) if it is due at
    /// `end` or before.
    pub(crate) fn pop_until(&mut self, end: Micros) -> Option<(Micros, T)> {
        let b = self.settle()?;
        let level = &mut self.levels[0];
        let at = level.base + b as Micros;
        if at > end {
            return None;
        }
        let slot = level.ends[b][0];
        let next = self.links[slot as usize].next;
        if next == NIL {
            level.ends[b] = [NIL; 2];
            level.nonempty &= !(1 << b);
        } else {
            level.ends[b][0] = next;
        }
        let ev = self.events[slot as usize]
            .take()
            .expect("every listed slot is filled");
        self.free.push(slot);
        Some((at, ev))
    }

    /// Number of queued events: the slots in use.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.links.len() - self.free.len()
    }

    /// Appends `slot` (due at `at`, not before level 0's window) to the lowest level whose
    /// window holds `at`; false when none does.
    fn place(&mut self, at: Micros, slot: u32) -> bool {
        for k in 0..LEVELS {
            let level = &mut self.levels[k];
            if at - level.base < window(k) {
                let b = ((at - level.base) >> shift(k)) as usize;
                let ends = &mut level.ends[b];
                if ends[1] == NIL {
                    *ends = [slot; 2];
                    level.nonempty |= 1 << b;
                } else {
                    self.links[ends[1] as usize].next = slot;
                    ends[1] = slot;
                }
                return true;
            }
        }
        false
    }

    /// Moves events down the levels until level 0 holds the earliest one, and returns its
    /// bucket (`None` when the queue is empty).
    fn settle(&mut self) -> Option<usize> {
        loop {
            if self.levels[0].nonempty != 0 {
                return Some(self.levels[0].nonempty.trailing_zeros() as usize);
            }
            let Some(k) = (1..LEVELS).find(|&k| self.levels[k].nonempty != 0) else {
                // Every level is empty: the heap's next window becomes the top level's.
                let &Reverse((at, _, _)) = self.beyond.peek()?;
                let base = at - at % window(LEVELS - 1);
                for level in &mut self.levels {
                    level.base = base;
                }
                while let Some(&Reverse((at, _, slot))) = self.beyond.peek() {
                    if !self.place(at, slot) {
                        break;
                    }
                    self.beyond.pop();
                }
                continue;
            };
            // Level k's first bucket becomes the window of every level below it.
            let level = &mut self.levels[k];
            let f = level.nonempty.trailing_zeros() as usize;
            let base = level.base + ((f as Micros) << shift(k));
            let mut slot = level.ends[f][0];
            level.ends[f] = [NIL; 2];
            level.nonempty &= !(1 << f);
            for level in &mut self.levels[..k] {
                level.base = base;
            }
            while slot != NIL {
                let Link { at, next } = self.links[slot as usize];
                self.links[slot as usize].next = NIL;
                let placed = self.place(at, slot);
                debug_assert!(placed, "a bucket's events fit the windows below it");
                slot = next;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The order the engine's queue must give: `(time, seq)`, as a binary heap of keys.
    #[derive(Default)]
    struct Reference {
        heap: BinaryHeap<Reverse<(Micros, u64)>>,
    }

    /// One step of a run: push an event `delay` µs after the clock, or pop one.
    #[derive(Debug, Clone)]
    enum Op {
        Push(Micros),
        Pop,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            // The same microsecond (ties), each level's window and beyond the last.
            3 => (0..4u64).prop_map(Op::Push),
            2 => (0..window(0) * 2).prop_map(Op::Push),
            2 => (0..window(1) * 2).prop_map(Op::Push),
            2 => (0..window(2) * 2).prop_map(Op::Push),
            2 => (0..window(3) * 2).prop_map(Op::Push),
            1 => (0..window(3) * 40).prop_map(Op::Push),
            6 => Just(Op::Pop),
        ]
    }

    proptest! {
        /// Any run of pushes (never before the clock) and pops gives the events in the
        /// order of a binary heap of `(time, seq)`, each with its time.
        #[test]
        fn pops_in_time_then_push_order(ops in prop::collection::vec(op(), 1..600)) {
            let mut q = EventQueue::default();
            let mut r = Reference::default();
            let (mut now, mut seq) = (0, 0u64);
            for op in ops {
                match op {
                    Op::Push(delay) => {
                        seq += 1;
                        q.push(now + delay, seq, seq);
                        r.heap.push(Reverse((now + delay, seq)));
                    }
                    Op::Pop => {
                        // A bound before the earliest event pops nothing.
                        if let Some(&Reverse((at, _))) = r.heap.peek() && at > 0 {
                            prop_assert_eq!(q.pop_until(at - 1), None);
                        }
                        let want = r.heap.pop().map(|Reverse(k)| k);
                        let got = q.pop_until(Micros::MAX);
                        prop_assert_eq!(got, want);
                        if let Some((at, _)) = got {
                            now = at;
                        }
                    }
                }
                prop_assert_eq!(q.len(), r.heap.len());
            }
            // Drain what is left.
            while let Some(want) = r.heap.pop().map(|Reverse(k)| k) {
                prop_assert_eq!(q.pop_until(Micros::MAX), Some(want));
            }
            prop_assert_eq!(q.pop_until(Micros::MAX), None);
            prop_assert_eq!(q.len(), 0);
        }
    }

    /// Many events in one microsecond leave in push order, across window changes.
    #[test]
    fn ties_leave_in_push_order_after_moving_down() {
        let mut q = EventQueue::default();
        let at = window(3) * 3 + window(1) * 5 + 17;
        for seq in 0..100 {
            q.push(at, seq, seq);
        }
        q.push(at - 1, 100, 100);
        assert_eq!(q.pop_until(Micros::MAX), Some((at - 1, 100)));
        for seq in 0..100 {
            // Pushed after the window was reached: behind the earlier ones.
            q.push(at, 101 + seq, 101 + seq);
        }
        for seq in (0..100).chain(101..201) {
            assert_eq!(q.pop_until(Micros::MAX), Some((at, seq)), "seq {seq}");
        }
        assert_eq!(q.pop_until(Micros::MAX), None);
    }

    #[test]
    #[should_panic(expected = "before the queue's clock")]
    fn an_event_in_the_past_is_refused() {
        let mut q = EventQueue::default();
        q.push(window(3) * 2, 1, ());
        assert_eq!(q.pop_until(Micros::MAX), Some((window(3) * 2, ())));
        q.push(window(3), 2, ());
    }
}
