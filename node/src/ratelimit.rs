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
//! limits. Daily counters are kept in memory: a restarted node starts the day's counts
//! from zero (documented in docs/policy.md).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

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
    /// The bucket holds too few tokens now; `retry_after_s` until it holds enough.
    Rate {
        scope: Scope,
        name: String,
        limit: RateLimit,
        retry_after_s: u64,
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

    /// Seconds for `Retry-After`, when waiting helps.
    pub(crate) fn retry_after_s(&self) -> Option<u64> {
        match self {
            Refusal::Rate { retry_after_s, .. } | Refusal::Quota { retry_after_s, .. } => {
                Some(*retry_after_s)
            }
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
                retry_after_s,
            } => write!(
                f,
                "{} {name} is over its rate limit ({} events/s, burst {}); retry in {retry_after_s} s",
                scope.as_str(),
                limit.events_per_s,
                limit.burst
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
    /// UTC day number of the counters.
    day: i64,
    events_today: u64,
    bytes_today: u64,
}

impl Bucket {
    fn full(limit: &RateLimit, now: Instant, day: i64) -> Self {
        Self {
            tokens: limit.burst as f64,
            at: now,
            day,
            events_today: 0,
            bytes_today: 0,
        }
    }

    /// Refills to `now` and rolls the day over.
    fn advance(&mut self, limit: &RateLimit, now: Instant, day: i64) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * limit.events_per_s as f64).min(limit.burst as f64);
        self.at = now;
        if day != self.day {
            self.day = day;
            self.events_today = 0;
            self.bytes_today = 0;
        }
    }

    fn check(
        &self,
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
            && self.events_today.saturating_add(events) > q
        {
            return Err(Refusal::Quota {
                scope,
                name: name.into(),
                what: "events",
                quota: q,
                used: self.events_today,
                retry_after_s: to_midnight(),
            });
        }
        if let Some(q) = limit.bytes_per_day
            && self.bytes_today.saturating_add(bytes) > q
        {
            return Err(Refusal::Quota {
                scope,
                name: name.into(),
                what: "payload bytes",
                quota: q,
                used: self.bytes_today,
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
        let need = events as f64 - self.tokens;
        if need > 0.0 {
            let wait = (need / limit.events_per_s as f64).ceil() as u64;
            return Err(Refusal::Rate {
                scope,
                name: name.into(),
                limit: *limit,
                retry_after_s: wait.max(1),
            });
        }
        Ok(())
    }

    fn take(&mut self, events: u64, bytes: u64) {
        self.tokens -= events as f64;
        self.events_today = self.events_today.saturating_add(events);
        self.bytes_today = self.bytes_today.saturating_add(bytes);
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
}

/// The node's publish limiter.
#[derive(Debug, Default)]
pub(crate) struct Limiter {
    state: Mutex<State>,
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
            ..
        } = &mut *s;
        let mut p = limits.principal.map(|l| {
            let b = principals
                .entry(principal.to_string())
                .or_insert_with(|| Bucket::full(&l, now, day));
            b.advance(&l, now, day);
            (l, b)
        });
        let mut t = limits.tenant.map(|l| {
            let b = tenants
                .entry(tenant.to_string())
                .or_insert_with(|| Bucket::full(&l, now, day));
            b.advance(&l, now, day);
            (l, b)
        });
        if let Some((l, b)) = &p {
            b.check(l, Scope::Principal, principal, events, bytes, wall_ms)?;
        }
        if let Some((l, b)) = &t {
            b.check(l, Scope::Tenant, tenant, events, bytes, wall_ms)?;
        }
        if let Some((_, b)) = &mut p {
            b.take(events, bytes);
        }
        if let Some((_, b)) = &mut t {
            b.take(events, bytes);
        }
        Ok(())
    }

    /// Gives back what [`Limiter::admit`] took for a publish refused after it (the
    /// driver's queue, the store or the ack refused it): the tokens, up to the burst, and
    /// the day's counts. Nothing when the policy changed since (its buckets started
    /// afresh) or the day turned.
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
        if s.policy != policy {
            return;
        }
        let give = |b: &mut Bucket, l: &RateLimit| {
            b.tokens = (b.tokens + events as f64).min(l.burst as f64);
            if b.day == day {
                b.events_today = b.events_today.saturating_sub(events);
                b.bytes_today = b.bytes_today.saturating_sub(bytes);
            }
        };
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
        // A refund under another policy changes nothing.
        l.refund(2, &limits, "p", "acme", 8, 0, 0);
        assert!(
            l.admit(
                1,
                &limits,
                "p",
                "acme",
                1,
                0,
                later + Duration::from_secs(20),
                0
            )
            .is_err()
        );
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
