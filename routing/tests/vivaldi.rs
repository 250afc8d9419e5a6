//! Vivaldi converges on a synthetic metric space with known distances: 64 nodes at random
//! points of a 150 ms x 150 ms plane, each with an access delay (height) of 0.1 to 5 ms, so
//! the true RTT is `|p_i - p_j| + h_i + h_j`. Every round each node measures one random peer
//! (exactly, or through an `RttEstimator` fed with delayed-ACK noise) and updates.

use weft_routing::{RttEstimator, VivaldiClient};

const NODES: usize = 64;

struct SplitMix(u64);
impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Noise {
    /// Exact RTTs.
    None,
    /// Noisy samples straight into Vivaldi.
    Raw,
    /// Noisy samples through a per-pair `RttEstimator`, its published estimate into Vivaldi.
    Filtered,
}

/// Runs `rounds` rounds and returns the median relative error over all pairs after each
/// round in `checkpoints`.
fn run(seed: u64, rounds: usize, noise: Noise, checkpoints: &[usize]) -> Vec<f64> {
    let mut rng = SplitMix(seed);
    let pos: Vec<(f64, f64, f64)> = (0..NODES)
        .map(|_| {
            (
                rng.below(150_000) as f64,
                rng.below(150_000) as f64,
                100.0 + rng.below(4_900) as f64,
            )
        })
        .collect();
    let true_us = |i: usize, j: usize| {
        let (a, b) = (pos[i], pos[j]);
        ((a.0 - b.0).hypot(a.1 - b.1) + a.2 + b.2).round() as u64
    };
    let mut clients: Vec<VivaldiClient> = (0..NODES)
        .map(|i| VivaldiClient::new(seed ^ i as u64))
        .collect();
    let mut estimators: Vec<Vec<RttEstimator>> = (0..NODES)
        .map(|_| (0..NODES).map(|_| RttEstimator::new()).collect())
        .collect();
    let mut out = Vec::new();
    for round in 1..=rounds {
        for i in 0..NODES {
            let mut j = rng.below(NODES as u64) as usize;
            if j == i {
                j = (j + 1) % NODES;
            }
            let exact = true_us(i, j);
            // One sample in four is delayed by up to 200 ms (delayed ACK, queueing).
            let noisy = if rng.below(4) == 0 {
                exact + rng.below(200_000)
            } else {
                exact
            };
            let rtt = match noise {
                Noise::None => exact,
                Noise::Raw => noisy,
                Noise::Filtered => {
                    estimators[i][j].handle_sample(noisy).unwrap();
                    estimators[i][j].estimate_us().unwrap()
                }
            };
            let peer = clients[j].coordinate();
            clients[i].update(&peer, rtt).unwrap();
            clients[i].check_invariants();
        }
        if checkpoints.contains(&round) {
            let mut errs = Vec::new();
            for i in 0..NODES {
                for j in i + 1..NODES {
                    let est = clients[i]
                        .coordinate()
                        .distance_us(&clients[j].coordinate()) as f64;
                    let real = true_us(i, j) as f64;
                    errs.push((est - real).abs() / real);
                }
            }
            errs.sort_by(f64::total_cmp);
            out.push(errs[errs.len() / 2]);
        }
    }
    out
}

/// Measured (seeds 1-3, this code): exact RTTs give a median relative error of 0.28-0.31
/// after 10 rounds, 0.12-0.14 after 50, 0.017-0.022 after 200 and 0.004-0.005 after 1000.
/// With one sample in four delayed by up to 200 ms and an `RttEstimator` per pair: 0.21-0.23
/// after 200 rounds, 0.030-0.034 after 1000; the same noise fed raw stays at 0.27-0.33 after
/// 1000. The bounds below leave about 2x headroom over the measured figures.
#[test]
fn vivaldi_converges_on_a_synthetic_metric_space() {
    let checkpoints = [10, 50, 200, 1000];
    for seed in [1, 2, 3] {
        let mut by_noise = Vec::new();
        for noise in [Noise::None, Noise::Filtered, Noise::Raw] {
            let m = run(seed, 1000, noise, &checkpoints);
            println!(
                "seed {seed} {noise:?}: median relative error after {checkpoints:?} rounds: {m:.3?}"
            );
            by_noise.push(m);
        }
        let (exact, filtered, raw) = (&by_noise[0], &by_noise[1], &by_noise[2]);
        assert!(
            exact[2] < 0.05,
            "seed {seed}: exact, 200 rounds: {}",
            exact[2]
        );
        assert!(
            exact[3] < 0.01,
            "seed {seed}: exact, 1000 rounds: {}",
            exact[3]
        );
        assert!(
            exact[3] < exact[1] && exact[1] < exact[0],
            "seed {seed}: not converging: {exact:?}"
        );
        assert!(
            filtered[3] < 0.07,
            "seed {seed}: filtered, 1000 rounds: {}",
            filtered[3]
        );
        assert!(
            filtered[3] < raw[3],
            "seed {seed}: the filter must help: {filtered:?} vs {raw:?}"
        );
    }
}
