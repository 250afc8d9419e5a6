//! Fault injection for tests and game days: per-peer added delay and jitter, loss, and
//! blackholes on what this node sends. Off unless the config enables it; rules change at
//! runtime through `POST /v1/chaos`.
//!
//! This machine's kernel has no netem, so real-process latency and partition tests inject
//! faults here, in the sending path of the mesh transport: every outgoing message (datagram
//! or stream) to a matching peer is dropped (loss, blackhole) or held back (delay + jitter).
//! Give both ends the same rule for a symmetric link. Round-trip estimates fed to the core
//! add twice the rule's delay to QUIC's measured RTT (QUIC's own ACKs are not delayed), so
//! routing sees the latency the rules create.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Most rules at once.
pub(crate) const RULES_MAX: usize = 256;

/// One rule: what happens to messages sent to `peer`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Rule {
    /// The peer: its hex node key, its region (e.g. `aws:us-east-1`), or `*` for all.
    pub(crate) peer: String,
    /// Added one-way delay in milliseconds.
    #[serde(default)]
    pub(crate) delay_ms: f64,
    /// Uniform jitter in milliseconds added on top (0 to this).
    #[serde(default)]
    pub(crate) jitter_ms: f64,
    /// Probability of dropping a message, 0 to 1.
    #[serde(default)]
    pub(crate) loss: f64,
    /// Drop everything.
    #[serde(default)]
    pub(crate) blackhole: bool,
    /// Act as a compromised node hiding events: every push to the peer carrying other
    /// origins' events goes as a `Skip` naming them instead ("not for you"), which tests
    /// the receiver's guard against false Skips (docs/operations.md, "Security notes").
    #[serde(default)]
    pub(crate) forge_skips: bool,
}

impl Rule {
    /// Checks the numbers; the error names the field.
    pub(crate) fn check(&self) -> Result<(), String> {
        if self.peer.is_empty() {
            return Err("peer: must be a hex node key, a region or *".into());
        }
        for (field, v, max) in [
            ("delay_ms", self.delay_ms, 60_000.0),
            ("jitter_ms", self.jitter_ms, 60_000.0),
            ("loss", self.loss, 1.0),
        ] {
            if !(0.0..=max).contains(&v) {
                return Err(format!("{field}: must be between 0 and {max}, got {v}"));
            }
        }
        Ok(())
    }

    fn matches(&self, key_hex: &str, region: &str) -> bool {
        self.peer == "*" || self.peer == key_hex || self.peer == region
    }
}

/// What to do with one message.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Verdict {
    /// Send now.
    Send,
    /// Send after this long.
    Delay(Duration),
    /// Drop it.
    Drop,
}

/// The rule set and its random source.
#[derive(Debug)]
pub(crate) struct Chaos {
    enabled: bool,
    rules: Mutex<Vec<Rule>>,
    rng: AtomicU64,
    /// Messages dropped by rules.
    pub(crate) dropped: AtomicU64,
    /// Messages delayed by rules.
    pub(crate) delayed: AtomicU64,
}

impl Chaos {
    /// A rule set; `enabled` false refuses every change.
    pub(crate) fn new(enabled: bool, rules: Vec<Rule>) -> Self {
        let mut seed = [0u8; 8];
        // A failed OS RNG only makes the fault pattern predictable, which is harmless.
        let _ = getrandom::fill(&mut seed);
        Self {
            enabled,
            rules: Mutex::new(rules),
            rng: AtomicU64::new(u64::from_le_bytes(seed) | 1),
            dropped: AtomicU64::new(0),
            delayed: AtomicU64::new(0),
        }
    }

    /// Whether fault injection is on.
    pub(crate) fn enabled(&self) -> bool {
        self.enabled
    }

    /// The current rules.
    pub(crate) fn rules(&self) -> Vec<Rule> {
        self.rules.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// Replaces the rules.
    pub(crate) fn set(&self, rules: Vec<Rule>) -> Result<(), String> {
        if !self.enabled {
            return Err("fault injection is disabled in this node's config (chaos.enabled)".into());
        }
        if rules.len() > RULES_MAX {
            return Err(format!(
                "{} rules is over RULES_MAX ({RULES_MAX})",
                rules.len()
            ));
        }
        for (i, r) in rules.iter().enumerate() {
            r.check().map_err(|e| format!("rules[{i}].{e}"))?;
        }
        if let Ok(mut current) = self.rules.lock() {
            *current = rules;
        }
        Ok(())
    }

    fn uniform(&self) -> f64 {
        // xorshift64*: fault patterns need no cryptographic randomness.
        let mut x = self.rng.load(Ordering::Relaxed);
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng.store(x, Ordering::Relaxed);
        (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// The verdict for one message to the peer with `key_hex` in `region`.
    pub(crate) fn verdict(&self, key_hex: &str, region: &str) -> Verdict {
        if !self.enabled {
            return Verdict::Send;
        }
        let Some(rule) = self
            .rules
            .lock()
            .ok()
            .and_then(|r| r.iter().find(|r| r.matches(key_hex, region)).cloned())
        else {
            return Verdict::Send;
        };
        if rule.blackhole || (rule.loss > 0.0 && self.uniform() < rule.loss) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return Verdict::Drop;
        }
        let ms = rule.delay_ms + rule.jitter_ms * self.uniform();
        if ms <= 0.0 {
            return Verdict::Send;
        }
        self.delayed.fetch_add(1, Ordering::Relaxed);
        Verdict::Delay(Duration::from_secs_f64(ms / 1000.0))
    }

    /// Whether pushes to the peer go as forged Skips ([`Rule::forge_skips`]).
    pub(crate) fn forges_skips(&self, key_hex: &str, region: &str) -> bool {
        self.enabled
            && self.rules.lock().ok().is_some_and(|r| {
                r.iter()
                    .find(|r| r.matches(key_hex, region))
                    .is_some_and(|r| r.forge_skips)
            })
    }

    /// The configured one-way delay to a peer (added twice to its measured RTT).
    pub(crate) fn delay_to(&self, key_hex: &str, region: &str) -> Duration {
        if !self.enabled {
            return Duration::ZERO;
        }
        self.rules
            .lock()
            .ok()
            .and_then(|r| r.iter().find(|r| r.matches(key_hex, region)).cloned())
            .filter(|r| !r.blackhole)
            .map(|r| Duration::from_secs_f64((r.delay_ms + r.jitter_ms / 2.0) / 1000.0))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(peer: &str) -> Rule {
        Rule {
            peer: peer.into(),
            delay_ms: 0.0,
            jitter_ms: 0.0,
            loss: 0.0,
            blackhole: false,
            forge_skips: false,
        }
    }

    #[test]
    fn disabled_chaos_refuses_changes_and_sends_everything() {
        let c = Chaos::new(false, vec![]);
        assert!(c.set(vec![rule("*")]).unwrap_err().contains("disabled"));
        assert_eq!(c.verdict("ab", "r"), Verdict::Send);
    }

    #[test]
    fn rules_match_by_key_region_or_star_first_match_wins() {
        let c = Chaos::new(true, vec![]);
        let mut slow = rule("aws:eu-west-1");
        slow.delay_ms = 40.0;
        let mut hole = rule("abcd");
        hole.blackhole = true;
        c.set(vec![hole, slow]).unwrap();
        assert_eq!(c.verdict("abcd", "aws:eu-west-1"), Verdict::Drop);
        assert_eq!(
            c.verdict("ef", "aws:eu-west-1"),
            Verdict::Delay(Duration::from_millis(40))
        );
        assert_eq!(c.verdict("ef", "gcp:x"), Verdict::Send);
        assert_eq!(c.delay_to("ef", "aws:eu-west-1"), Duration::from_millis(40));
        assert_eq!(c.dropped.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn loss_drops_about_that_fraction_and_bad_rules_name_the_field() {
        let c = Chaos::new(true, vec![]);
        let mut lossy = rule("*");
        lossy.loss = 0.25;
        c.set(vec![lossy]).unwrap();
        let dropped = (0..10_000)
            .filter(|_| c.verdict("a", "r") == Verdict::Drop)
            .count();
        assert!((2_000..3_000).contains(&dropped), "{dropped}");
        let mut bad = rule("*");
        bad.loss = 1.5;
        assert!(c.set(vec![bad]).unwrap_err().contains("rules[0].loss"));
    }
}
