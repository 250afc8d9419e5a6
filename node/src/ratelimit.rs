//! Publish rate limits and daily quotas from the policy bundle (`[[limits]]`,
//! `Policy::rate_limits`): one token bucket per principal and one per tenant, both of
//! which must admit a request, plus per-UTC-day event and byte counters.
//!
//! Hand-written rather than `governor` (the usual crate; not in this workspace's
//! dependency tree): a publish must fit the principal's bucket **and** the tenant's, all
//! its events or none, and governor checks one limiter at a time, consuming on success,
//! so a request admitted by the principal's limiter and refused by the tenant's would
//! already have spent the principal's cells. Here both buckets and both quotas are
//! checked under one lock before anything is taken. The buckets are a dozen lines of
//! arithmetic, and the clock is an argument, so the unit tests need no sleeping.
//!
//! Buckets belong to one policy epoch: a new epoch starts every bucket full under its new
//! limits. The day's counts do not: a new epoch gives no new day (a policy push used to
//! reset every quota). They are saved in `quotas.json` in the data directory (every few
//! seconds while they change, and at a graceful stop) and taken back at start if the UTC
//! day is the same, so a restarted node goes on counting the day (a `kill -9` loses at
//! most the counts of the last seconds before it).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use weft_policy::{RateLimit, RateLimits};

const MS_PER_DAY: i64 = 86_400_000;

/// Which configured limit refused a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    Principal,
    Tenant,
}

impl Scope {
    fn as_str(self) -> &'static str {
        match self {
            Scope::Principal => "principal",
            Scope::Tenant => "tenant",
        }
    }
}

/// Why a publish was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The bucket holds too few tokens now; `retry_after_ms` until it holds enough (to
    /// the millisecond: the edge port tells an agent this wait, and a bucket refilling at
    /// 100 events/s holds a batch's worth again in a fraction of a second).
    Rate {
        scope: Scope,
        name: String,
        limit: RateLimit,
        retry_after_ms: u64,
    },
    /// The request has more events than the bucket's burst: it can never be admitted
    /// whole.
    OverBurst {
        scope: Scope,
        name: String,
        limit: RateLimit,
        events: u64,
    },
    /// The day's event or byte quota would be exceeded; `retry_after_s` until UTC midnight.
    Quota {
        scope: Scope,
        name: String,
        what: &'static str,
        quota: u64,
        used: u64,
        retry_after_s: u64,
    },
}

impl Refusal {
    /// The API's reason code.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            Refusal::Rate { .. } => "rate_limited",
            Refusal::OverBurst { .. } => "batch_over_burst",
            Refusal::Quota { .. } => "quota_exceeded",
        }
    }

    /// Seconds for `Retry-After` (whole seconds, at least 1: HTTP's unit), when waiting
    /// helps.
    pub(crate) fn retry_after_s(&self) -> Option<u64> {
        match self {
            Refusal::Rate { retry_after_ms, .. } => Some(retry_after_ms.div_ceil(1000).max(1)),
            Refusal::Quota { retry_after_s, .. } => Some(*retry_after_s),
            Refusal::OverBurst { .. } => None,
        }
    }

    /// Milliseconds until waiting helps (a rate limit's exact wait; a quota's seconds to
    /// UTC midnight), for the edge port's `busy` answers.
    pub(crate) fn retry_after_ms(&self) -> Option<u64> {
        match self {
            Refusal::Rate { retry_after_ms, .. } => Some(*retry_after_ms),
            Refusal::Quota { retry_after_s, .. } => Some(retry_after_s.saturating_mul(1000)),
            Refusal::OverBurst { .. } => None,
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Rate {
                scope,
                name,
                limit,
                retry_after_ms,
            } => write!(
                f,
                "{} {name} is over its rate limit ({} events/s, burst {}); retry in {} s",
                scope.as_str(),
                limit.events_per_s,
                limit.burst,
                retry_after_ms.div_ceil(1000).max(1)
            ),
            Refusal::OverBurst {
                scope,
                name,
                limit,
                events,
            } => write!(
                f,
                "a request of {events} events is larger than the burst of {} {name}'s rate limit ({} events/s, burst {}); split it",
                scope.as_str(),
                limit.events_per_s,
                limit.burst
            ),
            Refusal::Quota {
                scope,
                name,
                what,
                quota,
                used,
                retry_after_s,
            } => write!(
                f,
                "{} {name} would exceed its daily quota of {quota} {what} ({used} used today, UTC); the quota resets in {retry_after_s} s",
                scope.as_str()
            ),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Tokens now (at `at`).
    tokens: f64,
    at: Instant,
}

/// What one principal or tenant published on one UTC day.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Day {
    /// UTC day number of the counts.
    day: i64,
    events: u64,
    bytes: u64,
}

impl Day {
    /// The counts of `day` (zero if these are of another).
    fn on(self, day: i64) -> Self {
        if self.day == day {
            self
        } else {
            Day {
                day,
                ..Day::default()
            }
        }
    }
}

impl Bucket {
    fn full(limit: &RateLimit, now: Instant) -> Self {
        Self {
            tokens: limit.burst as f64,
            at: now,
        }
    }

    /// Refills to `now`.
    fn advance(&mut self, limit: &RateLimit, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * limit.events_per_s as f64).min(limit.burst as f64);
        self.at = now;
    }
}

impl Day {
    #[allow(clippy::too_many_arguments)]
    fn check(
        &self,
        bucket: &Bucket,
        limit: &RateLimit,
        scope: Scope,
        name: &str,
        events: u64,
        bytes: u64,
        wall_ms: i64,
    ) -> Result<(), Refusal> {
        let to_midnight = || {
            let left = MS_PER_DAY - wall_ms.rem_euclid(MS_PER_DAY);
            (left as u64).div_ceil(1000).max(1)
        };
        if let Some(q) = limit.events_per_day
            && self.events.saturating_add(events) > q
        {
            return Err(Refusal::Quota {
                scope,
                name: name.into(),
                what: "events",
                quota: q,
                used: self.events,
                retry_after_s: to_midnight(),
            });
        }
        if let Some(q) = limit.bytes_per_day
            && self.bytes.saturating_add(bytes) > q
        {
            return Err(Refusal::Quota {
                scope,
                name: name.into(),
                what: "payload bytes",
                quota: q,
                used: self.bytes,
                retry_after_s: to_midnight(),
            });
        }
        if events > limit.burst {
            return Err(Refusal::OverBurst {
                scope,
                name: name.into(),
                limit: *limit,
                events,
            });
        }
        let need = events as f64 - bucket.tokens;
        if need > 0.0 {
            // Rounded up to the millisecond, so a retry after it finds the tokens there.
            let wait_ms = (need * 1000.0 / limit.events_per_s as f64).ceil() as u64;
            return Err(Refusal::Rate {
                scope,
                name: name.into(),
                limit: *limit,
                retry_after_ms: wait_ms.max(1),
            });
        }
        Ok(())
    }

    fn take(&mut self, bucket: &mut Bucket, events: u64, bytes: u64) {
        bucket.tokens -= events as f64;
        self.events = self.events.saturating_add(events);
        self.bytes = self.bytes.saturating_add(bytes);
    }
}

#[derive(Debug, Default)]
struct State {
    /// The policy the buckets were made under ([`weft_policy::Policy::compilation`]).
    policy: u64,
    /// At most one bucket per principal named in the node's config (only principals the
    /// bundle limits get one), so bounded by the config's `principals`.
    principals: HashMap<String, Bucket>,
    /// At most one per tenant of those principals.
    tenants: HashMap<String, Bucket>,
    /// The day's counts of the same principals and tenants, kept across policy epochs;
    /// counts of past days go at each save ([`Limiter::saved_if_changed`]).
    principal_days: HashMap<String, Day>,
    tenant_days: HashMap<String, Day>,
    /// Bumped by every change of the counts.
    changes: u64,
    /// [`State::changes`] at the last save.
    saved: u64,
}

/// The day's counts as `quotas.json` holds them.
#[derive(Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Saved {
    /// UTC day number (days since 1970-01-01).
    day: i64,
    /// Per principal: events, payload bytes.
    principals: BTreeMap<String, (u64, u64)>,
    /// Per tenant: events, payload bytes.
    tenants: BTreeMap<String, (u64, u64)>,
}

/// The file in the data directory holding the day's counts.
pub(crate) const SAVED_FILE: &str = "quotas.json";

/// The node's publish limiter.
#[derive(Debug, Default)]
pub(crate) struct Limiter {
    state: Mutex<State>,
    /// Held by a save from its snapshot to its rename ([`Limiter::save_to`]): the periodic
    /// save and the last one at a stop never write the file at once, nor an older
    /// snapshot over a newer one.
    saving: Mutex<()>,
}

impl Limiter {
    /// Admits `events` events of `bytes` payload bytes from `principal` of `tenant` under
    /// `limits` of the policy `policy` ([`weft_policy::Policy::compilation`]: a new one
    /// refills every bucket), taking their tokens from both buckets, or refuses and
    /// takes nothing. `now` drives the buckets, `wall_ms` (unix ms) the UTC-day quotas.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn admit(
        &self,
        policy: u64,
        limits: &RateLimits,
        principal: &str,
        tenant: &str,
        events: u64,
        bytes: u64,
        now: Instant,
        wall_ms: i64,
    ) -> Result<(), Refusal> {
        if limits.principal.is_none() && limits.tenant.is_none() {
            return Ok(());
        }
        let day = wall_ms.div_euclid(MS_PER_DAY);
        let mut s = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if s.policy != policy {
            // A new policy: every bucket starts full under the new limits.
            s.policy = policy;
            s.principals.clear();
            s.tenants.clear();
        }
        let State {
            principals,
            tenants,
            principal_days,
            tenant_days,
            changes,
            ..
        } = &mut *s;
        let mut p = limits.principal.map(|l| {
            let b = principals
                .entry(principal.to_string())
                .or_insert_with(|| Bucket::full(&l, now));
            b.advance(&l, now);
            let d = principal_days.entry(principal.to_string()).or_default();
            *d = d.on(day);
            (l, b, d)
        });
        let mut t = limits.tenant.map(|l| {
            let b = tenants
                .entry(tenant.to_string())
                .or_insert_with(|| Bucket::full(&l, now));
            b.advance(&l, now);
            let d = tenant_days.entry(tenant.to_string()).or_default();
            *d = d.on(day);
            (l, b, d)
        });
        if let Some((l, b, d)) = &p {
            d.check(b, l, Scope::Principal, principal, events, bytes, wall_ms)?;
        }
        if let Some((l, b, d)) = &t {
            d.check(b, l, Scope::Tenant, tenant, events, bytes, wall_ms)?;
        }
        if let Some((_, b, d)) = &mut p {
            d.take(b, events, bytes);
        }
        if let Some((_, b, d)) = &mut t {
            d.take(b, events, bytes);
        }
        *changes += 1;
        Ok(())
    }

    /// Gives back what [`Limiter::admit`] took for a publish refused after it (the
    /// driver's queue, the store or the ack refused it): the tokens, up to the burst,
    /// unless the policy changed since (its buckets started afresh), and the day's counts,
    /// unless the day turned.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn refund(
        &self,
        policy: u64,
        limits: &RateLimits,
        principal: &str,
        tenant: &str,
        events: u64,
        bytes: u64,
        wall_ms: i64,
    ) {
        let day = wall_ms.div_euclid(MS_PER_DAY);
        let mut s = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if limits.principal.is_none() && limits.tenant.is_none() {
            return;
        }
        let same_policy = s.policy == policy;
        let give_day = |d: &mut Day| {
            if d.day == day {
                d.events = d.events.saturating_sub(events);
                d.bytes = d.bytes.saturating_sub(bytes);
            }
        };
        let give = |b: &mut Bucket, l: &RateLimit| {
            b.tokens = (b.tokens + events as f64).min(l.burst as f64);
        };
        if limits.principal.is_some()
            && let Some(d) = s.principal_days.get_mut(principal)
        {
            give_day(d);
        }
        if limits.tenant.is_some()
            && let Some(d) = s.tenant_days.get_mut(tenant)
        {
            give_day(d);
        }
        if same_policy {
            if let Some(l) = &limits.principal
                && let Some(b) = s.principals.get_mut(principal)
            {
                give(b, l);
            }
            if let Some(l) = &limits.tenant
                && let Some(b) = s.tenants.get_mut(tenant)
            {
                give(b, l);
            }
        }
        s.changes += 1;
    }

    /// Writes the day's counts to `data_dir`'s [`SAVED_FILE`] if they changed since the
    /// last save that succeeded (a failed one is tried again at the next call); returns
    /// whether it wrote.
    pub(crate) fn save_to(&self, data_dir: &Path, wall_ms: i64) -> anyhow::Result<bool> {
        let _one_at_a_time = self
            .saving
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some((saved, generation)) = self.saved_if_changed(wall_ms) else {
            return Ok(false);
        };
        saved.save(data_dir)?;
        let mut s = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        s.saved = s.saved.max(generation);
        Ok(true)
    }

    /// The day's counts to save with the generation they are of, if they changed since
    /// the last save (counts of days before `wall_ms`'s are dropped). `None`: nothing to
    /// write.
    fn saved_if_changed(&self, wall_ms: i64) -> Option<(Saved, u64)> {
        let day = wall_ms.div_euclid(MS_PER_DAY);
        let mut s = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if s.changes == s.saved {
            return None;
        }
        let generation = s.changes;
        s.principal_days.retain(|_, d| d.day >= day);
        s.tenant_days.retain(|_, d| d.day >= day);
        let today = |m: &HashMap<String, Day>| {
            m.iter()
                .filter(|(_, d)| d.day == day)
                .map(|(k, d)| (k.clone(), (d.events, d.bytes)))
                .collect()
        };
        Some((
            Saved {
                day,
                principals: today(&s.principal_days),
                tenants: today(&s.tenant_days),
            },
            generation,
        ))
    }

    /// Takes back counts saved earlier, if they are of `wall_ms`'s UTC day; returns
    /// whether they were.
    pub(crate) fn restore(&self, saved: &Saved, wall_ms: i64) -> bool {
        if saved.day != wall_ms.div_euclid(MS_PER_DAY) {
            return false;
        }
        let mut s = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let day = |(events, bytes): &(u64, u64)| Day {
            day: saved.day,
            events: *events,
            bytes: *bytes,
        };
        for (name, c) in &saved.principals {
            s.principal_days.insert(name.clone(), day(c));
        }
        for (name, c) in &saved.tenants {
            s.tenant_days.insert(name.clone(), day(c));
        }
        true
    }
}

impl Saved {
    /// Reads `data_dir`'s [`SAVED_FILE`]; `None` when there is none.
    pub(crate) fn load(data_dir: &Path) -> anyhow::Result<Option<Saved>> {
        let path = data_dir.join(SAVED_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .with_context(|| format!("reading {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Writes `data_dir`'s [`SAVED_FILE`] whole or not at all (a temporary file synced,
    /// renamed over it, the directory synced). Callers hold [`Limiter::save_to`]'s lock.
    fn save(&self, data_dir: &Path) -> anyhow::Result<()> {
        // Readable by the node's user only: it names the principals and tenants.
        crate::keys::replace_private(data_dir, SAVED_FILE, &serde_json::to_vec(self)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limit(per_s: u64, burst: u64) -> RateLimit {
        RateLimit {
            events_per_s: per_s,
            burst,
            events_per_day: None,
            bytes_per_day: None,
        }
    }

    /// A publish refused after it was charged (queue or store full) gives its tokens and
    /// its quota back: a client retrying through an overload does not burn its day.
    #[test]
    fn a_refund_gives_back_tokens_and_quota() {
        let l = Limiter::default();
        let limits = RateLimits {
            principal: Some(RateLimit {
                events_per_s: 1,
                burst: 5,
                events_per_day: Some(8),
                bytes_per_day: None,
            }),
            tenant: None,
        };
        let t0 = Instant::now();
        l.admit(1, &limits, "p", "acme", 5, 0, t0, 0).unwrap();
        assert!(
            l.admit(1, &limits, "p", "acme", 1, 0, t0, 0).is_err(),
            "burst spent"
        );
        l.refund(1, &limits, "p", "acme", 5, 0, 0);
        l.admit(1, &limits, "p", "acme", 5, 0, t0, 0).unwrap();
        // The day's quota was given back too: 5 + 3 more fit in 8 once tokens refill.
        let later = t0 + Duration::from_secs(10);
        l.admit(1, &limits, "p", "acme", 3, 0, later, 0).unwrap();
        assert!(matches!(
            l.admit(
                1,
                &limits,
                "p",
                "acme",
                1,
                0,
                later + Duration::from_secs(10),
                0
            ),
            Err(Refusal::Quota { .. })
        ));
        // A refund of a publish charged under another policy gives back the day's count
        // (the day goes on across epochs), not tokens of buckets made since.
        l.refund(2, &limits, "p", "acme", 1, 0, 0);
        l.admit(
            1,
            &limits,
            "p",
            "acme",
            1,
            0,
            later + Duration::from_secs(20),
            0,
        )
        .unwrap();
        assert!(matches!(
            l.admit(
                1,
                &limits,
                "p",
                "acme",
                1,
                0,
                later + Duration::from_secs(30),
                0
            ),
            Err(Refusal::Quota { .. })
        ));
    }

    #[test]
    fn a_bucket_admits_its_burst_then_refills_at_its_rate() {
        let l = Limiter::default();
        let limits = RateLimits {
            principal: Some(limit(10, 5)),
            tenant: None,
        };
        let t0 = Instant::now();
        let admit = |n, t| l.admit(1, &limits, "p", "acme", n, 0, t, 0);
        for _ in 0..5 {
            admit(1, t0).unwrap();
        }
        let refusal = admit(1, t0).unwrap_err();
        assert_eq!(refusal.reason(), "rate_limited");
        assert_eq!(refusal.retry_after_s(), Some(1));
        // One token at 10 a second: 100 ms, to the millisecond (the edge port's wait).
        assert_eq!(refusal.retry_after_ms(), Some(100));
        let text = refusal.to_string();
        assert!(
            text.contains("principal p") && text.contains("10 events/s, burst 5"),
            "{text}"
        );
        // 0.3 s later: three tokens back.
        let t1 = t0 + Duration::from_millis(300);
        admit(3, t1).unwrap();
        assert!(admit(1, t1).is_err());
        // Larger than the burst: never admissible, no Retry-After.
        let r = admit(6, t1 + Duration::from_secs(60)).unwrap_err();
        assert_eq!(r.reason(), "batch_over_burst");
        assert_eq!(r.retry_after_s(), None);
    }

    #[test]
    fn both_buckets_must_admit_and_a_refusal_takes_nothing() {
        let l = Limiter::default();
        let limits = RateLimits {
            principal: Some(limit(1, 10)),
            tenant: Some(limit(1, 4)),
        };
        let t0 = Instant::now();
        l.admit(1, &limits, "a", "acme", 4, 0, t0, 0).unwrap();
        // The tenant is empty: refused, and the principal keeps its 6 tokens.
        let r = l.admit(1, &limits, "a", "acme", 1, 0, t0, 0).unwrap_err();
        assert!(
            matches!(
                r,
                Refusal::Rate {
                    scope: Scope::Tenant,
                    ..
                }
            ),
            "{r:?}"
        );
        let other = RateLimits {
            principal: Some(limit(1, 10)),
            tenant: None,
        };
        l.admit(1, &other, "a", "globex", 6, 0, t0, 0).unwrap();
        assert!(l.admit(1, &other, "a", "globex", 1, 0, t0, 0).is_err());
    }

    #[test]
    fn a_new_epoch_refills_every_bucket() {
        let l = Limiter::default();
        let limits = RateLimits {
            principal: Some(limit(1, 2)),
            tenant: None,
        };
        let t0 = Instant::now();
        l.admit(1, &limits, "p", "t", 2, 0, t0, 0).unwrap();
        assert!(l.admit(1, &limits, "p", "t", 1, 0, t0, 0).is_err());
        l.admit(2, &limits, "p", "t", 2, 0, t0, 0).unwrap();
    }

    /// A new epoch refills the buckets but gives no new day: a policy push used to reset
    /// every principal's and tenant's daily quota.
    #[test]
    fn a_new_epoch_keeps_the_days_counts() {
        let l = Limiter::default();
        let quota = RateLimit {
            events_per_day: Some(5),
            ..limit(100, 100)
        };
        let limits = RateLimits {
            principal: Some(quota),
            tenant: Some(quota),
        };
        let t0 = Instant::now();
        l.admit(1, &limits, "p", "t", 5, 0, t0, 0).unwrap();
        for policy in [1, 2] {
            let r = l.admit(policy, &limits, "p", "t", 1, 0, t0, 0).unwrap_err();
            assert!(matches!(r, Refusal::Quota { used: 5, .. }), "{r}");
        }
    }

    /// The day's counts saved and taken back by a new limiter (a restarted node) go on
    /// counting the same day; counts of another day are not taken; nothing changed,
    /// nothing to save.
    #[test]
    fn the_days_counts_are_saved_and_taken_back_on_the_same_day() {
        let quota = RateLimit {
            events_per_day: Some(10),
            bytes_per_day: Some(1000),
            ..limit(100, 100)
        };
        let limits = RateLimits {
            principal: Some(quota),
            tenant: Some(quota),
        };
        let t0 = Instant::now();
        let noon = 20_000 * MS_PER_DAY + MS_PER_DAY / 2;
        let l = Limiter::default();
        l.admit(1, &limits, "p", "t", 7, 300, t0, noon).unwrap();
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Saved::load(dir.path()).unwrap(), None);
        // A save that fails (no such directory) is tried again at the next call.
        let gone = dir.path().join("gone");
        assert!(l.save_to(&gone, noon).is_err());
        assert!(
            l.save_to(dir.path(), noon).unwrap(),
            "written after the failure"
        );
        assert!(
            !l.save_to(dir.path(), noon).unwrap(),
            "nothing changed since"
        );
        let back = Saved::load(dir.path()).unwrap().unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.path().join(SAVED_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(back.day, 20_000);
        assert_eq!(back.principals["p"], (7, 300));
        assert_eq!(back.tenants["t"], (7, 300));
        let restarted = Limiter::default();
        assert!(restarted.restore(&back, noon + 1000));
        let r = restarted
            .admit(1, &limits, "p", "t", 4, 0, t0, noon + 1000)
            .unwrap_err();
        assert!(matches!(r, Refusal::Quota { used: 7, .. }), "{r}");
        restarted
            .admit(1, &limits, "p", "t", 3, 0, t0, noon + 1000)
            .unwrap();
        // The next day starts from zero, whatever the file says.
        let tomorrow = Limiter::default();
        assert!(!tomorrow.restore(&back, noon + MS_PER_DAY));
        tomorrow
            .admit(1, &limits, "p", "t", 10, 0, t0, noon + MS_PER_DAY)
            .unwrap();
        // A damaged file is an error naming it, not a silent zero.
        std::fs::write(dir.path().join(SAVED_FILE), b"{").unwrap();
        let err = format!("{:#}", Saved::load(dir.path()).unwrap_err());
        assert!(err.contains(SAVED_FILE), "{err}");
    }

    #[test]
    fn daily_quotas_count_events_and_bytes_and_reset_at_utc_midnight() {
        let l = Limiter::default();
        let limits = RateLimits {
            principal: None,
            tenant: Some(RateLimit {
                events_per_s: 1000,
                burst: 1000,
                events_per_day: Some(10),
                bytes_per_day: Some(100),
            }),
        };
        let t0 = Instant::now();
        let noon = 5 * MS_PER_DAY + MS_PER_DAY / 2;
        l.admit(1, &limits, "p", "acme", 9, 50, t0, noon).unwrap();
        let r = l
            .admit(1, &limits, "p", "acme", 2, 0, t0, noon)
            .unwrap_err();
        assert_eq!(r.reason(), "quota_exceeded");
        assert_eq!(r.retry_after_s(), Some(43_200));
        let r = l
            .admit(1, &limits, "p", "acme", 1, 51, t0, noon)
            .unwrap_err();
        assert!(r.to_string().contains("100 payload bytes"), "{r}");
        l.admit(1, &limits, "p", "acme", 1, 50, t0, noon).unwrap();
        // The next UTC day starts from zero.
        l.admit(1, &limits, "p", "acme", 10, 100, t0, noon + MS_PER_DAY)
            .unwrap();
    }
}
