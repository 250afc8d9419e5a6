//! This node's time for HLC stamps, shared by the publish paths (which stamp), the ingress
//! checks (which bound what producers stamp) and the driver (which observes what it
//! applies).
//!
//! Hybrid logical clocks respect causality only if a node's clock takes in the stamps it
//! receives: a write made after this node applied another must carry a later HLC, or an
//! `lww` table lets the earlier write win whenever the two nodes' wall clocks disagree by
//! more than the time between the writes. The driver observes the HLC of every event it
//! applies; the next stamp is past it. A stamp more than [`HLC_DRIFT_MS_MAX`] ahead of this
//! node's clock is not taken in (one producer with a wrong clock would drag every node's
//! clock ahead with it): counted (`weft_hlc_ahead_total`), the event kept. Producers
//! publishing pre-signed events (HTTP, the edge port) are refused such stamps at ingress
//! (`hlc_ahead`): a far-future stamp would win every `lww` write of its key for good and
//! escape the erase rules, which cover up to the bound past their request.

use std::sync::atomic::{AtomicU64, Ordering};

use weft_fabric::{ClockError, Hlc, HybridClock};

/// Largest clock drift accepted from remote HLC stamps, ms.
pub(crate) const HLC_DRIFT_MS_MAX: u64 = 60_000;
/// Store metadata key of the highest applied HLC ahead of this node's clock when last
/// committed ([`NodeClock::observed_ahead`]): a restart resumes past it.
pub(crate) const OBSERVED_META_KEY: &str = "hlc_observed";

/// This node's time for HLC stamps: the host's wall clock plus `chaos.clock_offset_ms`, and
/// the highest HLC of an event it applied within the drift bound.
#[derive(Debug, Default)]
pub(crate) struct NodeClock {
    offset_ms: i64,
    /// The highest applied HLC taken in ([`Hlc::as_u64`]).
    observed: AtomicU64,
}

impl NodeClock {
    /// A clock `offset_ms` off the host's (0 unless fault injection sets it).
    pub(crate) fn new(offset_ms: i64) -> Self {
        Self {
            offset_ms,
            observed: AtomicU64::new(0),
        }
    }

    /// Milliseconds since the Unix epoch as this node stamps them.
    pub(crate) fn now_ms(&self) -> u64 {
        crate::driver::wall_ms()
            .saturating_add(self.offset_ms)
            .max(0) as u64
    }

    /// How far `hlc` is ahead of this node's clock past the drift bound, if it is.
    pub(crate) fn ahead_ms(&self, hlc: Hlc) -> Option<u64> {
        let now = self.now_ms();
        (hlc.physical_ms() > now.saturating_add(HLC_DRIFT_MS_MAX)).then(|| hlc.physical_ms() - now)
    }

    /// Takes the HLC of an event this node applied into account: its next stamp is later.
    /// `false` (not taken in) when it is more than the drift bound ahead.
    pub(crate) fn observe(&self, hlc: Hlc) -> bool {
        // Not past what was taken in already (replicas of older writes, repairs): nothing
        // to take in, and no wall-clock read for it.
        if hlc.as_u64() <= self.observed.load(Ordering::Relaxed) {
            return true;
        }
        if self.ahead_ms(hlc).is_some() {
            return false;
        }
        self.observed.fetch_max(hlc.as_u64(), Ordering::Relaxed);
        true
    }

    /// The highest applied HLC ([`Hlc::as_u64`]) when it is ahead of this node's clock
    /// (what a restart must not stamp below; one behind it the clock passes by itself).
    pub(crate) fn observed_ahead(&self) -> Option<u64> {
        let observed = self.observed.load(Ordering::Relaxed);
        (Hlc::from_u64(observed).physical_ms() > self.now_ms()).then_some(observed)
    }

    /// Resumes past an HLC kept from before a restart ([`OBSERVED_META_KEY`]), within the
    /// drift bound as any observation.
    pub(crate) fn resume_observed(&self, packed: u64) {
        self.observe(Hlc::from_u64(packed));
    }

    /// The stamp of a local event: later than everything `clock` issued and everything
    /// this node applied.
    pub(crate) fn stamp(&self, clock: &mut HybridClock) -> Result<Hlc, ClockError> {
        let now = self.now_ms();
        let observed = Hlc::from_u64(self.observed.load(Ordering::Relaxed));
        if observed > clock.last() {
            // Within the bound when observed; a host clock stepped back since makes
            // `receive` refuse it as too far ahead: the clock then resumes from it, so the
            // stamp is still after it.
            match clock.receive(observed, now) {
                Ok(hlc) => return Ok(hlc),
                Err(_) => *clock = HybridClock::resume(observed, HLC_DRIFT_MS_MAX),
            }
        }
        clock.tick(now)
    }

    /// The refusal of a pre-signed event stamped past the drift bound (`hlc_ahead`), if it
    /// is: the message names the stamp, how far ahead it is and the bound.
    pub(crate) fn refusal(&self, id: &weft_fabric::EventId, hlc: Hlc) -> Option<String> {
        let ahead = self.ahead_ms(hlc)?;
        Some(format!(
            "event {id} is stamped at HLC {hlc} ({ahead} ms ahead of this node's clock); at most {HLC_DRIFT_MS_MAX} ms ahead is accepted (the HLC drift bound): check the producer's clock"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node whose clock is behind another's stamps its next event after the one it
    /// applied, not at its own wall time (which would let the earlier write win an lww
    /// table); a stamp past the drift bound is neither taken in nor accepted at ingress.
    #[test]
    fn stamps_follow_what_the_node_applied_within_the_bound() {
        let clock = NodeClock::new(0);
        let mut hc = HybridClock::new(HLC_DRIFT_MS_MAX);
        let now = clock.now_ms();
        let ahead = Hlc::new(now + 20_000, 3).unwrap();
        assert!(clock.observe(ahead));
        let next = clock.stamp(&mut hc).unwrap();
        assert!(next > ahead, "{next} after {ahead}");
        // Later stamps stay after it too.
        assert!(clock.stamp(&mut hc).unwrap() > next);
        let far = Hlc::new(now + HLC_DRIFT_MS_MAX + 10_000, 0).unwrap();
        assert!(!clock.observe(far));
        assert!(clock.stamp(&mut hc).unwrap() < far);
        let id = weft_fabric::EventId([1; 32]);
        let refusal = clock.refusal(&id, far).expect("refused");
        assert!(refusal.contains("60000 ms"), "{refusal}");
        assert_eq!(clock.refusal(&id, ahead), None);
    }

    /// A host clock stepped back after an observation (here: the offset moved under it)
    /// still stamps after what the node applied.
    #[test]
    fn a_clock_stepped_back_still_stamps_after_what_was_applied() {
        let ahead = NodeClock::new(0);
        let applied = Hlc::new(ahead.now_ms() + 50_000, 0).unwrap();
        assert!(ahead.observe(applied));
        // The same observation on a clock that is now 30 s behind: 80 s ahead of it.
        let behind = NodeClock::new(-30_000);
        behind.observed.store(applied.as_u64(), Ordering::Relaxed);
        let mut hc = HybridClock::new(HLC_DRIFT_MS_MAX);
        assert!(behind.stamp(&mut hc).unwrap() > applied);
    }

    /// What is ahead of the node's clock is what a restart must keep; one behind it is not.
    #[test]
    fn only_an_observation_ahead_of_the_clock_is_kept() {
        let clock = NodeClock::new(0);
        assert!(clock.observe(Hlc::new(clock.now_ms() - 5_000, 0).unwrap()));
        assert_eq!(clock.observed_ahead(), None);
        let ahead = Hlc::new(clock.now_ms() + 20_000, 0).unwrap();
        assert!(clock.observe(ahead));
        assert_eq!(clock.observed_ahead(), Some(ahead.as_u64()));
        let restarted = NodeClock::new(0);
        restarted.resume_observed(ahead.as_u64());
        let mut hc = HybridClock::new(HLC_DRIFT_MS_MAX);
        assert!(restarted.stamp(&mut hc).unwrap() > ahead);
    }

    /// The offset moves the node's stamps (fault injection: a node with a wrong clock).
    #[test]
    fn the_offset_moves_the_stamps() {
        let behind = NodeClock::new(-30_000);
        let mut hc = HybridClock::new(HLC_DRIFT_MS_MAX);
        let stamp = behind.stamp(&mut hc).unwrap();
        let host = crate::driver::wall_ms() as u64;
        assert!(stamp.physical_ms() + 29_000 < host, "{stamp} vs {host}");
    }
}
