//! Hybrid logical clocks (Kulkarni et al., 2014): timestamps close to wall time that never
//! go backwards and respect causality across nodes, with `now` passed in by the caller.
//!
//! A timestamp packs 48 bits of milliseconds since the Unix epoch (good until the year
//! 10889) and a 16-bit logical counter into one `u64`, so comparing the integers compares
//! the timestamps and the wire form is a single CBOR unsigned integer.

use std::fmt;

/// Bits of the logical counter in a packed [`Hlc`].
const LOGICAL_BITS: u32 = 16;

/// Largest physical time a [`Hlc`] can hold, in milliseconds since the Unix epoch.
pub const HLC_PHYSICAL_MS_MAX: u64 = (1 << (64 - LOGICAL_BITS)) - 1;

/// A hybrid logical clock timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Hlc(u64);

impl Hlc {
    /// The smallest timestamp.
    pub const ZERO: Hlc = Hlc(0);

    /// Builds a timestamp; fails if `physical_ms` exceeds [`HLC_PHYSICAL_MS_MAX`].
    pub fn new(physical_ms: u64, logical: u16) -> Result<Self, ClockError> {
        if physical_ms > HLC_PHYSICAL_MS_MAX {
            return Err(ClockError::PhysicalOutOfRange {
                physical_ms,
                max: HLC_PHYSICAL_MS_MAX,
            });
        }
        Ok(Self((physical_ms << LOGICAL_BITS) | u64::from(logical)))
    }

    /// The packed wire form.
    pub const fn as_u64(self) -> u64 {
        self.0
    }

    /// From the packed wire form; every `u64` is a valid timestamp.
    pub const fn from_u64(packed: u64) -> Self {
        Self(packed)
    }

    /// Milliseconds since the Unix epoch.
    pub const fn physical_ms(self) -> u64 {
        self.0 >> LOGICAL_BITS
    }

    /// The logical counter.
    pub const fn logical(self) -> u16 {
        (self.0 & ((1 << LOGICAL_BITS) - 1)) as u16
    }

    /// The next timestamp after `self` at the same or a later physical time: the logical
    /// counter plus one, carrying into the physical part when it overflows.
    fn successor(self) -> Result<Self, ClockError> {
        let next = self
            .0
            .checked_add(1)
            .ok_or(ClockError::PhysicalOutOfRange {
                physical_ms: HLC_PHYSICAL_MS_MAX + 1,
                max: HLC_PHYSICAL_MS_MAX,
            })?;
        Ok(Self(next))
    }
}

impl fmt::Display for Hlc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:05}", self.physical_ms(), self.logical())
    }
}

/// Why the clock refused a timestamp. The clock's state does not change on any error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClockError {
    /// A remote timestamp is further ahead of our physical time than the allowed drift.
    /// Accepting it would drag this clock (and every event it stamps) into the future.
    #[error(
        "remote timestamp {remote_ms} ms is {drift_ms} ms ahead of local time {now_ms} ms, \
         over the limit drift_ms_max = {drift_ms_max}"
    )]
    Drift {
        /// The remote physical time.
        remote_ms: u64,
        /// Our physical time.
        now_ms: u64,
        /// How far ahead the remote is.
        drift_ms: u64,
        /// The configured maximum.
        drift_ms_max: u64,
    },
    /// A physical time that does not fit the 48-bit field.
    #[error("physical time {physical_ms} ms is over the limit HLC_PHYSICAL_MS_MAX = {max}")]
    PhysicalOutOfRange {
        /// The offending time.
        physical_ms: u64,
        /// The limit.
        max: u64,
    },
}

/// A hybrid logical clock. Every timestamp it returns is strictly greater than every
/// timestamp it returned or received before.
#[derive(Debug, Clone)]
pub struct HybridClock {
    last: Hlc,
    drift_ms_max: u64,
}

impl HybridClock {
    /// A clock that rejects remote timestamps more than `drift_ms_max` ahead of `now`.
    pub fn new(drift_ms_max: u64) -> Self {
        Self {
            last: Hlc::ZERO,
            drift_ms_max,
        }
    }

    /// Restores a clock after a restart from the last timestamp it issued (kept durable).
    pub fn resume(last: Hlc, drift_ms_max: u64) -> Self {
        Self { last, drift_ms_max }
    }

    /// The last timestamp issued or received.
    pub fn last(&self) -> Hlc {
        self.last
    }

    /// A timestamp for a local event (send or publish) at physical time `now_ms`.
    pub fn tick(&mut self, now_ms: u64) -> Result<Hlc, ClockError> {
        let wall = Hlc::new(now_ms, 0)?;
        let next = if wall > self.last {
            wall
        } else {
            self.last.successor()?
        };
        self.last = next;
        Ok(next)
    }

    /// Merges a timestamp received from another node at physical time `now_ms` and returns
    /// a timestamp greater than both it and everything issued before.
    pub fn receive(&mut self, remote: Hlc, now_ms: u64) -> Result<Hlc, ClockError> {
        let wall = Hlc::new(now_ms, 0)?;
        let remote_ms = remote.physical_ms();
        if remote_ms > now_ms.saturating_add(self.drift_ms_max) {
            return Err(ClockError::Drift {
                remote_ms,
                now_ms,
                drift_ms: remote_ms - now_ms,
                drift_ms_max: self.drift_ms_max,
            });
        }
        let highest = self.last.max(remote);
        let next = if wall > highest {
            wall
        } else {
            highest.successor()?
        };
        self.last = next;
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn packs_and_orders() {
        let a = Hlc::new(1_000, 7).unwrap();
        assert_eq!(a.physical_ms(), 1_000);
        assert_eq!(a.logical(), 7);
        assert_eq!(Hlc::from_u64(a.as_u64()), a);
        assert!(Hlc::new(1_000, 8).unwrap() > a);
        assert!(Hlc::new(1_001, 0).unwrap() > Hlc::new(1_000, u16::MAX).unwrap());
        assert!(Hlc::new(HLC_PHYSICAL_MS_MAX + 1, 0).is_err());
    }

    #[test]
    fn tick_follows_wall_time_and_counts_within_a_millisecond() {
        let mut clock = HybridClock::new(1_000);
        assert_eq!(clock.tick(100).unwrap(), Hlc::new(100, 0).unwrap());
        assert_eq!(clock.tick(100).unwrap(), Hlc::new(100, 1).unwrap());
        // Wall clock steps backwards: the HLC does not.
        assert_eq!(clock.tick(90).unwrap(), Hlc::new(100, 2).unwrap());
        assert_eq!(clock.tick(101).unwrap(), Hlc::new(101, 0).unwrap());
    }

    #[test]
    fn logical_overflow_carries_into_physical() {
        let mut clock = HybridClock::resume(Hlc::new(5, u16::MAX).unwrap(), 0);
        assert_eq!(clock.tick(5).unwrap(), Hlc::new(6, 0).unwrap());
    }

    #[test]
    fn receive_rejects_excessive_drift_without_changing_state() {
        let mut clock = HybridClock::new(500);
        clock.tick(1_000).unwrap();
        let before = clock.last();
        let err = clock
            .receive(Hlc::new(1_501, 0).unwrap(), 1_000)
            .unwrap_err();
        assert_eq!(
            err,
            ClockError::Drift {
                remote_ms: 1_501,
                now_ms: 1_000,
                drift_ms: 501,
                drift_ms_max: 500
            }
        );
        assert!(err.to_string().contains("501 ms ahead"));
        assert_eq!(clock.last(), before);
        // Exactly at the limit is accepted and moves the clock past the remote.
        let remote = Hlc::new(1_500, 3).unwrap();
        assert_eq!(
            clock.receive(remote, 1_000).unwrap(),
            Hlc::new(1_500, 4).unwrap()
        );
    }

    #[derive(Debug, Clone)]
    enum Step {
        Tick(u64),
        Receive(u64, u64),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0u64..10_000).prop_map(Step::Tick),
            ((0u64..12_000), (0u64..10_000)).prop_map(|(r, n)| Step::Receive(r, n)),
        ]
    }

    proptest! {
        /// Every timestamp the clock hands out is strictly greater than everything it
        /// handed out or accepted before, whatever the wall clock does.
        #[test]
        fn monotonic_under_arbitrary_inputs(
            steps in proptest::collection::vec(step(), 1..200),
            drift in 0u64..3_000,
        ) {
            let mut clock = HybridClock::new(drift);
            let mut high = Hlc::ZERO;
            for step in steps {
                match step {
                    Step::Tick(now) => {
                        let t = clock.tick(now).unwrap();
                        prop_assert!(t > high);
                        prop_assert!(t.physical_ms() >= now);
                        high = t;
                    }
                    Step::Receive(remote_ms, now) => {
                        let remote = Hlc::new(remote_ms, 0).unwrap();
                        let before = clock.last();
                        match clock.receive(remote, now) {
                            Ok(t) => {
                                prop_assert!(t > high);
                                prop_assert!(t > remote);
                                high = t;
                            }
                            Err(ClockError::Drift { .. }) => {
                                prop_assert!(remote_ms > now + drift);
                                prop_assert_eq!(clock.last(), before);
                            }
                            Err(e) => prop_assert!(false, "unexpected {e}"),
                        }
                    }
                }
            }
        }
    }
}
