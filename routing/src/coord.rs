//! Network coordinates: Vivaldi with height, to estimate the RTT to nodes never contacted.
//!
//! Each node keeps a [`VivaldiClient`]. Whenever it measures a round trip to a peer whose
//! coordinate it knows (peers carry theirs in membership records, later), it calls
//! [`VivaldiClient::update`]; the estimated RTT between any two nodes is then
//! [`Coordinate::distance_us`] of their coordinates, without ever having measured that pair.
//!
//! # The model and the update rule
//!
//! After Dabek et al., *Vivaldi: A Decentralized Network Coordinate System* (SIGCOMM 2004),
//! with the height vector, the adjustment term and gravity of Ledlie et al., *Network
//! Coordinates in the Wild* (NSDI 2007), as HashiCorp Serf implements them
//! (`github.com/hashicorp/serf/coordinate`, `client.go` and `coordinate.go`). This is a
//! re-implementation from that description, not a copy.
//!
//! A coordinate is a point `x` in [`COORD_DIM`] Euclidean dimensions plus a height `h`
//! (the access-link delay every path from the node pays), an error estimate `e` and an
//! adjustment `a`. Distance:
//!
//! ```text
//! raw(i, j)  = |x_i - x_j| + h_i + h_j
//! dist(i, j) = raw + a_i + a_j   if that is positive, else raw
//! ```
//!
//! One update of node `i` from a sample `rtt` to node `j` (all in seconds):
//!
//! ```text
//! w     = e_i / (e_i + e_j)                       sample weight: trust the surer node more
//! ε     = |raw_or_dist(i, j) - rtt| / rtt         relative error of this sample
//! e_i  ← min(ERROR_MAX, CE·w·ε + e_i·(1 - CE·w))  error moves toward ε
//! F     = CC·w·(rtt - dist(i, j))                  spring force (positive pushes apart)
//! u     = (x_i - x_j)/|x_i - x_j|                  (a random unit vector if they coincide)
//! x_i  ← x_i + F·u
//! h_i  ← max(HEIGHT_MIN, h_i + (h_i + h_j)·F/|x_i - x_j|)
//! a_i  ← mean over the last ADJUSTMENT_WINDOW_LEN samples of (rtt - raw(i, j)) / 2
//! gravity: a force step against the origin o (height HEIGHT_MIN) with F = -(dist(o, i)/RHO)^2
//! ```
//!
//! The constants are Serf's defaults (`coordinate/config.go`), which Serf chose from the
//! two papers' experiments: [`VIVALDI_CE`] 0.25, [`VIVALDI_CC`] 0.25, [`VIVALDI_ERROR_MAX`]
//! 1.5, [`HEIGHT_MIN_S`] 10 µs, [`ADJUSTMENT_WINDOW_LEN`] 20, [`GRAVITY_RHO_S`] 150 s,
//! [`COORD_DIM`] 8.
//!
//! Two deliberate differences from Serf:
//! - **No per-peer latency filter in the client.** Serf keeps a median of the last 3 samples
//!   per peer in an unbounded map. Here the caller feeds the published estimate of
//!   [`crate::rtt::RttEstimator`] (window minimum, smoothed), which is a stronger filter
//!   and already bounded by the caller's peer table.
//! - **Randomness is injected**: the client takes a seed and draws the rare random
//!   direction (two coordinates at the same point) from its own SplitMix64 stream, so runs
//!   are reproducible and no global RNG is touched.
//!
//! The wire type [`Coordinate`] stores `f32` seconds (44 bytes of numbers) and the client
//! computes in `f64`; `f32` resolves well under a microsecond at the RTTs of a planet.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::rtt::RTT_US_MAX;

/// Euclidean dimensions of a coordinate (Serf's default; Ledlie et al. found little gain
/// past a few dimensions once the height is there, and 8 keeps the record small).
pub const COORD_DIM: usize = 8;
/// Largest error estimate; also the error of a fresh coordinate (Serf: 1.5).
pub const VIVALDI_ERROR_MAX: f64 = 1.5;
/// Gain of the error estimate's moving average (Serf: 0.25).
pub const VIVALDI_CE: f64 = 0.25;
/// Gain of the spring force, the "timestep" (Serf: 0.25).
pub const VIVALDI_CC: f64 = 0.25;
/// Smallest height, in seconds (Serf: 10 µs). Also the height of a fresh coordinate.
pub const HEIGHT_MIN_S: f64 = 10.0e-6;
/// Samples in the adjustment term's window (Serf: 20).
pub const ADJUSTMENT_WINDOW_LEN: usize = 20;
/// Gravity's scale, in seconds (Serf: 150 s): the pull toward the origin is
/// `(distance / RHO)^2`, negligible at planetary RTTs but enough to stop the whole
/// coordinate space from drifting away over months.
pub const GRAVITY_RHO_S: f64 = 150.0;
/// Below this (seconds, or metres of coordinate space) a value counts as zero (Serf's
/// `zeroThreshold`).
const ZERO_THRESHOLD: f64 = 1.0e-6;

/// A node's network coordinate: the compact, serializable form carried in membership
/// records. Units are seconds. Obtain one from [`VivaldiClient::coordinate`] or
/// [`Coordinate::origin`]; check a received one with [`Coordinate::validate`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Coordinate {
    /// Position in the Euclidean part, seconds.
    pub vec: [f32; COORD_DIM],
    /// Access-link delay added to every distance, seconds (at least [`HEIGHT_MIN_S`]).
    pub height: f32,
    /// The owner's confidence: 0 is certain, [`VIVALDI_ERROR_MAX`] knows nothing.
    pub error: f32,
    /// Correction added to every distance, seconds (may be negative).
    pub adjustment: f32,
}

/// Why a coordinate or a sample was refused. The client's state did not change.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CoordError {
    /// A field of a received coordinate is NaN, infinite or out of its range.
    #[error("coordinate.{field} is not finite or out of range")]
    InvalidCoordinate {
        /// The field: `vec`, `height`, `error` or `adjustment`.
        field: &'static str,
    },
    /// The RTT sample exceeds [`RTT_US_MAX`].
    #[error("rtt_us {rtt_us} exceeds RTT_US_MAX ({max})")]
    RttTooLarge {
        /// The refused sample.
        rtt_us: u64,
        /// [`RTT_US_MAX`].
        max: u64,
    },
}

impl Coordinate {
    /// The coordinate of a node that knows nothing yet: at the origin, minimum height,
    /// largest error.
    pub fn origin() -> Self {
        Coord64::origin().to_wire()
    }

    /// Checks a coordinate received from elsewhere: every field finite; each vector
    /// component, the height and `|adjustment|` at most [`RTT_US_MAX`] (as seconds: no
    /// component of a real coordinate exceeds the largest RTT); height at least
    /// [`HEIGHT_MIN_S`] (rounded to `f32`); error in `0..=VIVALDI_ERROR_MAX`.
    pub fn validate(&self) -> Result<(), CoordError> {
        let bound_s = RTT_US_MAX as f32 / 1e6;
        if !self.vec.iter().all(|v| v.is_finite() && v.abs() <= bound_s) {
            return Err(CoordError::InvalidCoordinate { field: "vec" });
        }
        if !(self.height.is_finite()
            && self.height >= HEIGHT_MIN_S as f32
            && self.height <= bound_s)
        {
            return Err(CoordError::InvalidCoordinate { field: "height" });
        }
        if !(self.error.is_finite() && self.error >= 0.0 && self.error <= VIVALDI_ERROR_MAX as f32)
        {
            return Err(CoordError::InvalidCoordinate { field: "error" });
        }
        if !(self.adjustment.is_finite() && self.adjustment.abs() <= bound_s) {
            return Err(CoordError::InvalidCoordinate {
                field: "adjustment",
            });
        }
        Ok(())
    }

    /// Estimated RTT between the owners of two coordinates, in microseconds (rounded,
    /// saturating at [`RTT_US_MAX`]).
    pub fn distance_us(&self, other: &Coordinate) -> u64 {
        let d = Coord64::from_wire(self).distance_s(&Coord64::from_wire(other));
        seconds_to_us(d)
    }
}

fn seconds_to_us(s: f64) -> u64 {
    if s.is_finite() && s > 0.0 {
        (s * 1e6).round().min(RTT_US_MAX as f64) as u64
    } else {
        0
    }
}

/// The `f64` working form of a coordinate.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Coord64 {
    vec: [f64; COORD_DIM],
    height: f64,
    error: f64,
    adjustment: f64,
}

impl Coord64 {
    fn origin() -> Self {
        Self {
            vec: [0.0; COORD_DIM],
            height: HEIGHT_MIN_S,
            error: VIVALDI_ERROR_MAX,
            adjustment: 0.0,
        }
    }

    fn from_wire(c: &Coordinate) -> Self {
        Self {
            vec: c.vec.map(f64::from),
            height: f64::from(c.height),
            error: f64::from(c.error),
            adjustment: f64::from(c.adjustment),
        }
    }

    fn to_wire(self) -> Coordinate {
        Coordinate {
            vec: self.vec.map(|v| v as f32),
            height: self.height as f32,
            error: self.error as f32,
            adjustment: self.adjustment as f32,
        }
    }

    fn is_finite(&self) -> bool {
        self.vec.iter().all(|v| v.is_finite())
            && self.height.is_finite()
            && self.error.is_finite()
            && self.adjustment.is_finite()
    }

    fn raw_distance_s(&self, other: &Self) -> f64 {
        magnitude(&sub(&self.vec, &other.vec)) + self.height + other.height
    }

    fn distance_s(&self, other: &Self) -> f64 {
        let raw = self.raw_distance_s(other);
        let adjusted = raw + self.adjustment + other.adjustment;
        if adjusted > 0.0 { adjusted } else { raw }
    }

    /// Moves `self` by `force` along the direction away from `other`, and its height with it.
    fn apply_force(&mut self, force: f64, other: &Self, rng: &mut SplitMix64) {
        let (unit, mag) = unit_vector_at(&self.vec, &other.vec, rng);
        for (v, u) in self.vec.iter_mut().zip(unit) {
            *v += u * force;
        }
        if mag > ZERO_THRESHOLD {
            self.height =
                ((self.height + other.height) * force / mag + self.height).max(HEIGHT_MIN_S);
        }
    }
}

fn sub(a: &[f64; COORD_DIM], b: &[f64; COORD_DIM]) -> [f64; COORD_DIM] {
    std::array::from_fn(|i| a[i] - b[i])
}

fn magnitude(v: &[f64; COORD_DIM]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

/// The unit vector from `b` toward `a` and the distance between them; a random unit vector
/// (and distance 0) if they coincide.
fn unit_vector_at(
    a: &[f64; COORD_DIM],
    b: &[f64; COORD_DIM],
    rng: &mut SplitMix64,
) -> ([f64; COORD_DIM], f64) {
    let diff = sub(a, b);
    let mag = magnitude(&diff);
    if mag > ZERO_THRESHOLD {
        return (diff.map(|d| d / mag), mag);
    }
    // Bounded: each draw is nonzero with probability 1 - 2^-53 per component.
    for _ in 0..4 {
        let r: [f64; COORD_DIM] = std::array::from_fn(|_| rng.next_f64() - 0.5);
        let m = magnitude(&r);
        if m > ZERO_THRESHOLD {
            return (r.map(|d| d / m), 0.0);
        }
    }
    ([0.0; COORD_DIM], 0.0)
}

/// SplitMix64 (Steele, Lea, Flood 2014): a tiny seeded generator for the rare random
/// direction; not for anything security-related.
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// One node's Vivaldi state: its own coordinate and the adjustment window (module docs).
#[derive(Debug, Clone)]
pub struct VivaldiClient {
    coord: Coord64,
    adjustment_samples_s: [f64; ADJUSTMENT_WINDOW_LEN],
    adjustment_next: usize,
    rng: SplitMix64,
    updates: u64,
    resets: u64,
}

impl VivaldiClient {
    /// A client at the origin. `seed` feeds the random direction used when two coordinates
    /// coincide; give each node a different one (a hash of its key will do).
    pub fn new(seed: u64) -> Self {
        Self {
            coord: Coord64::origin(),
            adjustment_samples_s: [0.0; ADJUSTMENT_WINDOW_LEN],
            adjustment_next: 0,
            rng: SplitMix64(seed),
            updates: 0,
            resets: 0,
        }
    }

    /// This node's coordinate, in the compact form to publish.
    pub fn coordinate(&self) -> Coordinate {
        self.coord.to_wire()
    }

    /// Estimated RTT from this node to the owner of `other`, in microseconds.
    pub fn estimate_rtt_us(&self, other: &Coordinate) -> u64 {
        seconds_to_us(self.coord.distance_s(&Coord64::from_wire(other)))
    }

    /// Updates this node's coordinate from one RTT sample (ideally a filtered estimate, see
    /// the module docs) to a peer whose coordinate is `peer`. Errors leave the state
    /// unchanged.
    pub fn update(&mut self, peer: &Coordinate, rtt_us: u64) -> Result<(), CoordError> {
        peer.validate()?;
        if rtt_us > RTT_US_MAX {
            return Err(CoordError::RttTooLarge {
                rtt_us,
                max: RTT_US_MAX,
            });
        }
        let other = Coord64::from_wire(peer);
        let rtt_s = (rtt_us as f64 / 1e6).max(ZERO_THRESHOLD);
        self.update_vivaldi(&other, rtt_s);
        self.update_adjustment(&other, rtt_s);
        self.update_gravity();
        self.updates += 1;
        if !self.coord.is_finite() {
            // Cannot happen with validated inputs, but a NaN must never be published.
            self.coord = Coord64::origin();
            self.resets += 1;
        }
        Ok(())
    }

    fn update_vivaldi(&mut self, other: &Coord64, rtt_s: f64) {
        let dist_s = self.coord.distance_s(other);
        let wrongness = (dist_s - rtt_s).abs() / rtt_s;
        let total_error = (self.coord.error + other.error).max(ZERO_THRESHOLD);
        let weight = self.coord.error / total_error;
        self.coord.error = (VIVALDI_CE * weight * wrongness
            + self.coord.error * (1.0 - VIVALDI_CE * weight))
            .min(VIVALDI_ERROR_MAX);
        let force = VIVALDI_CC * weight * (rtt_s - dist_s);
        self.coord.apply_force(force, other, &mut self.rng);
    }

    fn update_adjustment(&mut self, other: &Coord64, rtt_s: f64) {
        self.adjustment_samples_s[self.adjustment_next] = rtt_s - self.coord.raw_distance_s(other);
        self.adjustment_next = (self.adjustment_next + 1) % ADJUSTMENT_WINDOW_LEN;
        let sum: f64 = self.adjustment_samples_s.iter().sum();
        self.coord.adjustment = sum / (2.0 * ADJUSTMENT_WINDOW_LEN as f64);
    }

    fn update_gravity(&mut self) {
        let origin = Coord64::origin();
        let dist_s = origin.distance_s(&self.coord);
        let force = -(dist_s / GRAVITY_RHO_S).powi(2);
        self.coord.apply_force(force, &origin, &mut self.rng);
    }

    /// Samples applied so far.
    pub fn updates(&self) -> u64 {
        self.updates
    }

    /// Times the coordinate went non-finite and was reset to the origin (expected 0).
    pub fn resets(&self) -> u64 {
        self.resets
    }

    /// Panics if the coordinate is not publishable (for tests and the simulator).
    pub fn check_invariants(&self) {
        assert!(self.coord.is_finite());
        assert!(self.coord.height >= HEIGHT_MIN_S);
        assert!((0.0..=VIVALDI_ERROR_MAX).contains(&self.coord.error));
        assert!(self.adjustment_next < ADJUSTMENT_WINDOW_LEN);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_coordinates_are_valid_and_at_distance_twice_height_min() {
        let c = Coordinate::origin();
        c.validate().unwrap();
        assert_eq!(c.distance_us(&c), 20);
    }

    #[test]
    fn two_nodes_learn_their_distance() {
        let mut a = VivaldiClient::new(1);
        let mut b = VivaldiClient::new(2);
        for _ in 0..200 {
            let cb = b.coordinate();
            a.update(&cb, 80_000).unwrap();
            let ca = a.coordinate();
            b.update(&ca, 80_000).unwrap();
        }
        let est = a.estimate_rtt_us(&b.coordinate());
        assert!(est.abs_diff(80_000) < 4_000, "estimated {est} µs for 80000");
        assert!(a.coordinate().error < 0.2, "{}", a.coordinate().error);
        a.check_invariants();
        b.check_invariants();
        assert_eq!(a.resets() + b.resets(), 0);
        assert_eq!(a.updates(), 200);
    }

    #[test]
    fn invalid_peer_coordinates_are_refused_without_state_change() {
        let mut a = VivaldiClient::new(1);
        a.update(&Coordinate::origin(), 10_000).unwrap();
        let before = a.coordinate();
        let mut bad = Coordinate::origin();
        bad.vec[3] = f32::NAN;
        assert_eq!(
            a.update(&bad, 10_000),
            Err(CoordError::InvalidCoordinate { field: "vec" })
        );
        let mut bad = Coordinate::origin();
        bad.height = 0.0;
        assert_eq!(
            a.update(&bad, 10_000),
            Err(CoordError::InvalidCoordinate { field: "height" })
        );
        let mut bad = Coordinate::origin();
        bad.error = 2.0;
        assert_eq!(
            a.update(&bad, 10_000),
            Err(CoordError::InvalidCoordinate { field: "error" })
        );
        let mut bad = Coordinate::origin();
        bad.adjustment = f32::INFINITY;
        assert_eq!(
            a.update(&bad, 10_000),
            Err(CoordError::InvalidCoordinate {
                field: "adjustment"
            })
        );
        assert_eq!(
            a.update(&Coordinate::origin(), RTT_US_MAX + 1),
            Err(CoordError::RttTooLarge {
                rtt_us: RTT_US_MAX + 1,
                max: RTT_US_MAX
            })
        );
        assert_eq!(before, a.coordinate());
    }

    #[test]
    fn serde_round_trip() {
        let mut a = VivaldiClient::new(7);
        a.update(&Coordinate::origin(), 33_000).unwrap();
        let c = a.coordinate();
        let json = serde_json::to_string(&c).unwrap();
        let back: Coordinate = serde_json::from_str(&json).unwrap();
        assert_eq!(c, back);
    }

    #[test]
    fn same_seed_same_coordinates() {
        let run = |seed| {
            let mut a = VivaldiClient::new(seed);
            for rtt in [10_000, 20_000, 15_000] {
                a.update(&Coordinate::origin(), rtt).unwrap();
            }
            a.coordinate()
        };
        assert_eq!(run(5), run(5));
        assert_ne!(run(5), run(6));
    }
}
