//! Per-peer round-trip-time estimation, robust to delayed-ACK outliers.
//!
//! Three stages, each for one kind of noise:
//!
//! 1. **Window minimum.** The last [`RTT_WINDOW_LEN`] samples are kept and the filter input
//!    is their minimum. Delayed acknowledgements, queueing and scheduler stalls only ever
//!    *add* delay, so the minimum ignores them: up to `RTT_WINDOW_LEN - 1` high samples in a
//!    row never move it. The mesh core keeps the same window today
//!    (`weft_fabric::mesh::node::RTT_WINDOW_LEN`, 8, minimum only); this estimator is meant to
//!    replace that when routing is wired into the mesh (not done yet).
//! 2. **Smoothing.** An exponentially weighted moving average of the window minimum with gain
//!    `1 / RTT_SMOOTHING_DIV`, so a new minimum moves the estimate gradually.
//! 3. **Hysteresis.** The published estimate ([`RttEstimator::estimate_us`]) changes only
//!    when the smoothed value has differed from it by more than [`RTT_CHANGE_PCT`] percent
//!    (and at least [`RTT_CHANGE_US_MIN`]) for [`RTT_CHANGE_SAMPLES`] samples in a row.
//!    Consumers (peer ranking, link-state reports) react to published changes only, so two
//!    peers of nearly equal latency do not flap.
//!
//! A single *low* sample is not treated as an outlier: a round trip cannot be faster than
//! the path, so a low sample is evidence, and it stays in the window for
//! `RTT_WINDOW_LEN` samples like any other.

use thiserror::Error;

/// Samples kept per peer; the filter input is their minimum. 8, as in the mesh core: at one
/// probe per second this forgets a path change within 8 s, and bursts of up to 7 delayed
/// acknowledgements in a row are absorbed.
pub const RTT_WINDOW_LEN: usize = 8;

/// The smoothing gain is `1 / RTT_SMOOTHING_DIV`. TCP's SRTT uses 1/8 on raw samples
/// (RFC 6298); the window minimum is already filtered, so 1/4 follows a real change within a
/// few samples.
pub const RTT_SMOOTHING_DIV: i64 = 4;

/// A change counts only when the smoothed value differs from the published estimate by more
/// than this percentage of the estimate. 10 %: a relay is chosen when it saves 15 %
/// (`paths::RELAY_COST_PCT_MAX`), so a smaller drift cannot change a route decision much.
pub const RTT_CHANGE_PCT: u64 = 10;

/// ... and by more than this many microseconds: within a region RTTs are a few hundred
/// microseconds, where 10 % is scheduler noise.
pub const RTT_CHANGE_US_MIN: u64 = 200;

/// Consecutive samples the difference must persist before the published estimate moves.
pub const RTT_CHANGE_SAMPLES: u32 = 3;

/// Largest sample accepted, in microseconds (10 s, the bound Serf applies too). Anything
/// larger is a broken measurement, not a terrestrial path.
pub const RTT_US_MAX: u64 = 10_000_000;

/// A sample the estimator refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RttError {
    /// The sample exceeds [`RTT_US_MAX`]. The estimator's state did not change.
    #[error("rtt_us {rtt_us} exceeds RTT_US_MAX ({max})")]
    TooLarge {
        /// The refused sample.
        rtt_us: u64,
        /// [`RTT_US_MAX`].
        max: u64,
    },
}

/// The RTT estimate for one peer: window minimum, smoothing, hysteresis (module docs).
///
/// Held in `u32`s and bytes (44 bytes rather than 112): a node keeps one per member, so a
/// 1000-node mesh holds a million of them, and every value fits (samples are at most
/// [`RTT_US_MAX`], ten seconds in microseconds, far below `u32::MAX`).
#[derive(Debug, Clone, Default)]
pub struct RttEstimator {
    window: [u32; RTT_WINDOW_LEN],
    /// Samples in `window` (grows to `RTT_WINDOW_LEN`, then stays); the estimate is
    /// published once it is above zero.
    len: u8,
    /// Where the next sample goes.
    next: u8,
    /// Consecutive samples whose smoothed value was outside the hysteresis band.
    pending: u8,
    smoothed_us: u32,
    /// The published estimate (meaningful when `len > 0`).
    estimate_us: u32,
}

// Every value an estimator holds is at most RTT_US_MAX, and its window length fits a byte.
const _: () = assert!(RTT_US_MAX <= u32::MAX as u64 && RTT_WINDOW_LEN <= u8::MAX as usize);

impl RttEstimator {
    /// An estimator with no samples.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes one measured round trip. Returns the new published estimate if it changed (the
    /// first sample always publishes), `None` if it did not.
    pub fn handle_sample(&mut self, rtt_us: u64) -> Result<Option<u64>, RttError> {
        if rtt_us > RTT_US_MAX {
            return Err(RttError::TooLarge {
                rtt_us,
                max: RTT_US_MAX,
            });
        }
        // In range of a u32 (RTT_US_MAX fits one, checked above).
        let sample = rtt_us as u32;
        let first = self.len == 0;
        self.window[usize::from(self.next)] = sample;
        self.next = ((usize::from(self.next) + 1) % RTT_WINDOW_LEN) as u8;
        self.len = (usize::from(self.len) + 1).min(RTT_WINDOW_LEN) as u8;
        let min_us = self.window[..usize::from(self.len)]
            .iter()
            .copied()
            .min()
            .unwrap_or(sample);
        if first {
            self.smoothed_us = min_us;
            self.estimate_us = min_us;
            self.pending = 0;
            return Ok(Some(u64::from(min_us)));
        }
        let estimate_us = u64::from(self.estimate_us);
        // EWMA toward the window minimum; a step smaller than the divisor still moves by 1 so
        // the smoothed value reaches the minimum instead of stalling below the gain.
        let delta = i64::from(min_us) - i64::from(self.smoothed_us);
        let step = match delta / RTT_SMOOTHING_DIV {
            0 => delta.signum(),
            s => s,
        };
        // Between the old smoothed value and the window minimum: both fit a u32.
        self.smoothed_us = (i64::from(self.smoothed_us) + step) as u32;
        let band_us = (estimate_us * RTT_CHANGE_PCT / 100).max(RTT_CHANGE_US_MIN);
        if u64::from(self.smoothed_us).abs_diff(estimate_us) > band_us {
            self.pending += 1;
            if u32::from(self.pending) >= RTT_CHANGE_SAMPLES {
                self.pending = 0;
                self.estimate_us = self.smoothed_us;
                return Ok(Some(u64::from(self.smoothed_us)));
            }
        } else {
            self.pending = 0;
        }
        Ok(None)
    }

    /// The published estimate in microseconds: what routing decisions should use. `None`
    /// before the first sample.
    pub fn estimate_us(&self) -> Option<u64> {
        (self.len > 0).then_some(u64::from(self.estimate_us))
    }

    /// The minimum of the current window, before smoothing and hysteresis.
    pub fn window_min_us(&self) -> Option<u64> {
        self.window[..usize::from(self.len)]
            .iter()
            .copied()
            .min()
            .map(u64::from)
    }

    /// The most recent sample, `None` before the first.
    pub fn last_sample_us(&self) -> Option<u64> {
        (self.len > 0).then(|| {
            let at = (usize::from(self.next) + RTT_WINDOW_LEN - 1) % RTT_WINDOW_LEN;
            u64::from(self.window[at])
        })
    }

    /// The smoothed window minimum, before hysteresis.
    pub fn smoothed_us(&self) -> Option<u64> {
        (self.len > 0).then_some(u64::from(self.smoothed_us))
    }

    /// Panics if the internal state is inconsistent (for tests and the simulator).
    pub fn check_invariants(&self) {
        assert!(usize::from(self.len) <= RTT_WINDOW_LEN);
        assert!(usize::from(self.next) < RTT_WINDOW_LEN);
        assert!(u32::from(self.pending) < RTT_CHANGE_SAMPLES);
        // The smoothed value is a convex combination of accepted samples.
        assert!(u64::from(self.smoothed_us) <= RTT_US_MAX);
        assert!(u64::from(self.estimate_us) <= RTT_US_MAX);
        if self.len == 0 {
            assert_eq!(
                (self.smoothed_us, self.estimate_us, self.pending),
                (0, 0, 0)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(e: &mut RttEstimator, samples: &[u64]) -> Vec<u64> {
        samples
            .iter()
            .filter_map(|s| e.handle_sample(*s).unwrap())
            .collect()
    }

    #[test]
    fn the_last_sample_is_the_newest_in_the_window() {
        let mut e = RttEstimator::new();
        assert_eq!(e.last_sample_us(), None);
        for s in 1..=(RTT_WINDOW_LEN as u64 + 3) {
            e.handle_sample(s * 1_000).unwrap();
            assert_eq!(e.last_sample_us(), Some(s * 1_000));
        }
    }

    #[test]
    fn first_sample_publishes() {
        let mut e = RttEstimator::new();
        assert_eq!(e.estimate_us(), None);
        assert_eq!(e.handle_sample(50_000), Ok(Some(50_000)));
        assert_eq!(e.estimate_us(), Some(50_000));
        e.check_invariants();
    }

    #[test]
    fn single_and_burst_high_outliers_are_ignored() {
        let mut e = RttEstimator::new();
        feed(&mut e, &[50_000; 4]);
        // A delayed-ACK spike of 200 ms, then a burst of RTT_WINDOW_LEN - 1 of them.
        assert!(feed(&mut e, &[250_000]).is_empty());
        assert!(feed(&mut e, &[50_000; 3]).is_empty());
        assert!(feed(&mut e, &[240_000; RTT_WINDOW_LEN - 1]).is_empty());
        assert!(feed(&mut e, &[50_500; 20]).is_empty());
        assert_eq!(e.estimate_us(), Some(50_000));
        assert_eq!(e.window_min_us(), Some(50_500));
        e.check_invariants();
    }

    #[test]
    fn sustained_change_publishes_after_hysteresis() {
        let mut e = RttEstimator::new();
        feed(&mut e, &[50_000; 10]);
        // The path gets longer: the window minimum moves after RTT_WINDOW_LEN samples; the
        // estimate follows once the smoothed value is out of the band for 3 samples.
        let mut published_at = None;
        for i in 0..40 {
            if let Some(v) = e.handle_sample(80_000).unwrap() {
                published_at.get_or_insert((i, v));
            }
            e.check_invariants();
        }
        let (i, v) = published_at.expect("a sustained 60% increase must publish");
        assert!(
            i >= RTT_WINDOW_LEN - 1 + RTT_CHANGE_SAMPLES as usize - 1,
            "published at {i}"
        );
        assert!(v > 55_000 && v <= 80_000, "{v}");
        // And it ends within the band of the new value.
        let est = e.estimate_us().unwrap();
        assert!(80_000 - est <= 8_000, "{est}");
    }

    #[test]
    fn small_drift_never_publishes() {
        let mut e = RttEstimator::new();
        feed(&mut e, &[50_000]);
        // 8 % slower, forever: inside the 10 % band.
        assert!(feed(&mut e, &[54_000; 100]).is_empty());
        // Intra-region: 300 µs to 450 µs is inside the 200 µs absolute floor.
        let mut e = RttEstimator::new();
        feed(&mut e, &[300]);
        assert!(feed(&mut e, &[450; 100]).is_empty());
    }

    #[test]
    fn too_large_is_refused_without_state_change() {
        let mut e = RttEstimator::new();
        feed(&mut e, &[1_000]);
        let before = format!("{e:?}");
        assert_eq!(
            e.handle_sample(RTT_US_MAX + 1),
            Err(RttError::TooLarge {
                rtt_us: RTT_US_MAX + 1,
                max: RTT_US_MAX
            })
        );
        assert_eq!(before, format!("{e:?}"));
    }

    #[test]
    fn smoothing_reaches_the_minimum() {
        let mut e = RttEstimator::new();
        feed(&mut e, &[10_000]);
        feed(&mut e, &[10_003; 100]);
        assert_eq!(e.smoothed_us(), Some(10_003));
    }

    /// The estimator as it was held in `u64`s before it was packed: the reference the packed
    /// one must agree with, sample by sample.
    #[derive(Default)]
    struct Wide {
        window: [u64; RTT_WINDOW_LEN],
        len: usize,
        next: usize,
        smoothed_us: u64,
        estimate_us: Option<u64>,
        pending: u32,
    }

    impl Wide {
        fn handle_sample(&mut self, rtt_us: u64) -> Option<u64> {
            self.window[self.next] = rtt_us;
            self.next = (self.next + 1) % RTT_WINDOW_LEN;
            self.len = (self.len + 1).min(RTT_WINDOW_LEN);
            let min_us = self.window[..self.len].iter().copied().min().unwrap();
            let Some(estimate_us) = self.estimate_us else {
                self.smoothed_us = min_us;
                self.estimate_us = Some(min_us);
                return Some(min_us);
            };
            let delta = min_us as i64 - self.smoothed_us as i64;
            let step = match delta / RTT_SMOOTHING_DIV {
                0 => delta.signum(),
                s => s,
            };
            self.smoothed_us = (self.smoothed_us as i64 + step) as u64;
            let band_us = (estimate_us * RTT_CHANGE_PCT / 100).max(RTT_CHANGE_US_MIN);
            if self.smoothed_us.abs_diff(estimate_us) > band_us {
                self.pending += 1;
                if self.pending >= RTT_CHANGE_SAMPLES {
                    self.pending = 0;
                    self.estimate_us = Some(self.smoothed_us);
                    return Some(self.smoothed_us);
                }
            } else {
                self.pending = 0;
            }
            None
        }
    }

    proptest::proptest! {
        /// The packed estimator publishes, smooths and windows exactly as the `u64` one, on
        /// samples over the whole accepted range (levels, steps and outliers mixed).
        #[test]
        fn packed_agrees_with_wide(
            samples in proptest::collection::vec(
                proptest::prop_oneof![
                    0..=RTT_US_MAX,
                    RTT_US_MAX - 1_000..=RTT_US_MAX,
                    40_000u64..60_000,
                    0u64..1_000,
                ],
                1..200,
            )
        ) {
            let (mut packed, mut wide) = (RttEstimator::new(), Wide::default());
            for s in samples {
                proptest::prop_assert_eq!(packed.handle_sample(s).unwrap(), wide.handle_sample(s));
                proptest::prop_assert_eq!(packed.estimate_us(), wide.estimate_us);
                proptest::prop_assert_eq!(packed.smoothed_us(), Some(wide.smoothed_us));
                proptest::prop_assert_eq!(
                    packed.window_min_us(),
                    wide.window[..wide.len].iter().copied().min()
                );
                packed.check_invariants();
            }
        }
    }
}
