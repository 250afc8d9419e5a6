//! Which members answered a confirmable push without a stream's events: they do not store
//! that stream (their `streams` patterns do not name it), so they cannot confirm its events
//! for `ack=regions:N`.
//!
//! Member records do not carry a member's interest (SWIM gossips region, cloud,
//! jurisdiction, address and policy epoch), so the driver learns it from answers: a member
//! that answered without an event is asked last to confirm that stream's events for
//! [`NOT_STORING_TTL`], and its region's next member is asked at once instead. Last, not
//! never: an answer without an event can also come from a full store or an erasure, and a
//! region whose only member answered so is still asked. A member's interest changes only
//! when it restarts with another configuration, which the TTL outlives by at most that
//! long.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use weft_fabric::{OriginKey, StreamName};

/// How long an answer without a stream's events keeps its member from being asked to
/// confirm that stream again.
pub(crate) const NOT_STORING_TTL: Duration = Duration::from_secs(600);

/// Most (member, stream) pairs remembered: past it, the expired ones go, then all of them
/// (forgetting costs one more copy to a member that answers without, never a wrong answer).
pub(crate) const NOT_STORING_LEN_MAX: usize = 4096;

/// (member, stream) pairs known not to be stored, with when that was learned; by stream,
/// so a lookup (once per member a confirmation copy could go to) borrows the stream name
/// instead of building a key.
#[derive(Debug, Default)]
pub(crate) struct NotStoring {
    learned: HashMap<StreamName, HashMap<OriginKey, Instant>>,
    /// Pairs held, across the streams.
    len: usize,
}

impl NotStoring {
    /// `member` answered without an event of `stream` at `now`.
    pub(crate) fn learn(&mut self, member: OriginKey, stream: &StreamName, now: Instant) {
        let known = self
            .learned
            .get(stream)
            .is_some_and(|m| m.contains_key(&member));
        if !known && self.len >= NOT_STORING_LEN_MAX {
            for members in self.learned.values_mut() {
                members.retain(|_, at| now.saturating_duration_since(*at) < NOT_STORING_TTL);
            }
            self.learned.retain(|_, members| !members.is_empty());
            self.len = self.learned.values().map(HashMap::len).sum();
            if self.len >= NOT_STORING_LEN_MAX {
                self.learned.clear();
                self.len = 0;
            }
        }
        let members = match self.learned.get_mut(stream) {
            Some(members) => members,
            None => self.learned.entry(stream.clone()).or_default(),
        };
        if members.insert(member, now).is_none() {
            self.len += 1;
        }
    }

    /// Whether `member` answered without an event of `stream` less than
    /// [`NOT_STORING_TTL`] before `now`.
    pub(crate) fn known(&self, member: &OriginKey, stream: &StreamName, now: Instant) -> bool {
        self.learned
            .get(stream)
            .and_then(|members| members.get(member))
            .is_some_and(|at| now.saturating_duration_since(*at) < NOT_STORING_TTL)
    }

    /// Pairs remembered (expired ones included until they are swept).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(s: &str) -> StreamName {
        StreamName::new(s).unwrap()
    }

    /// A pair is known for the TTL, per member and per stream, and the memory stays
    /// within its bound: past it the expired pairs go first, then all.
    #[test]
    fn pairs_are_known_for_their_ttl_within_a_bound() {
        let t0 = Instant::now();
        let (a, b) = (OriginKey([1; 32]), OriginKey([2; 32]));
        let mut n = NotStoring::default();
        n.learn(a, &stream("orders.eu"), t0);
        assert!(n.known(&a, &stream("orders.eu"), t0));
        assert!(n.known(&a, &stream("orders.eu"), t0 + NOT_STORING_TTL / 2));
        assert!(!n.known(&a, &stream("orders.eu"), t0 + NOT_STORING_TTL));
        assert!(!n.known(&b, &stream("orders.eu"), t0), "another member");
        assert!(!n.known(&a, &stream("orders.us"), t0), "another stream");
        // Learning again renews it.
        n.learn(a, &stream("orders.eu"), t0 + NOT_STORING_TTL);
        assert!(n.known(&a, &stream("orders.eu"), t0 + NOT_STORING_TTL));

        // Full of pairs learned long ago: they are swept, the new one kept.
        let mut n = NotStoring::default();
        for i in 0..NOT_STORING_LEN_MAX {
            n.learn(a, &stream(&format!("s.{i}")), t0);
        }
        assert_eq!(n.len(), NOT_STORING_LEN_MAX);
        let later = t0 + NOT_STORING_TTL;
        n.learn(b, &stream("s.new"), later);
        assert_eq!(n.len(), 1);
        assert!(n.known(&b, &stream("s.new"), later));
        // Full of fresh pairs: all go, the new one stays.
        for i in 0..NOT_STORING_LEN_MAX {
            n.learn(a, &stream(&format!("t.{i}")), later);
        }
        assert!(n.len() <= NOT_STORING_LEN_MAX);
        n.learn(b, &stream("t.last"), later);
        assert!(n.len() <= NOT_STORING_LEN_MAX);
        assert!(n.known(&b, &stream("t.last"), later));
    }
}
