//! Request rates at the edge: every authenticated call spends a cell of its key's bucket and, for a
//! tenant's key, one of its tenant's bucket (GCRA, `governor`'s keyed limiters). Beyond either it is
//! refused with RESOURCE_EXHAUSTED naming the limit, `retry-after` metadata (whole seconds) and a
//! `google.rpc.RetryInfo` with the exact wait.
//!
//! Only principals that authenticated reach the limiters (`access.rs` calls [`Quotas::admit`] after
//! admitting one), so their state holds keys that exist — a caller without a valid key adds nothing —
//! and [`Quotas::sweep`] forgets those idle long enough to be indistinguishable from a fresh bucket, every
//! `RATE_LIMITER_SWEEP_MS`. Platform keys have a rate of their own (off unless set) and count against no
//! tenant: the tenant they act on is named inside the request, which is not decoded before admission.
//!
//! The buckets are this node's: nodes sharing a log each admit up to the rate.

use std::fmt;
use std::hash::Hash;
use std::num::NonZeroU32;
use std::str::FromStr;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use serde::{Deserialize, Deserializer};
use tally_engine::domain::TenantId;
use tally_engine::domain::access::{Principal, Scope};
use tonic::Status;

use crate::status;

/// A rate: `per_second` requests a second on average, up to `burst` at once after a quiet spell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub per_second: NonZeroU32,
    pub burst: NonZeroU32,
}

impl Rate {
    fn quota(self) -> Quota {
        Quota::per_second(self.per_second).allow_burst(self.burst)
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} requests/s, burst {}", self.per_second, self.burst)
    }
}

/// A rate limit as a setting spells it: `RATE`, `RATE:BURST` (requests per second, and at once; the burst
/// is one second's worth unless given) or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateLimit {
    Off,
    Limited(Rate),
}

impl RateLimit {
    pub fn rate(self) -> Option<Rate> {
        match self {
            Self::Off => None,
            Self::Limited(rate) => Some(rate),
        }
    }

    pub fn limited(per_second: u32, burst: u32) -> Self {
        match (NonZeroU32::new(per_second), NonZeroU32::new(burst)) {
            (Some(per_second), Some(burst)) => Self::Limited(Rate { per_second, burst }),
            _ => Self::Off,
        }
    }
}

impl fmt::Display for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Off => f.write_str("off"),
            Self::Limited(Rate { per_second, burst }) if per_second == burst => write!(f, "{per_second}"),
            Self::Limited(Rate { per_second, burst }) => write!(f, "{per_second}:{burst}"),
        }
    }
}

impl FromStr for RateLimit {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, String> {
        let value = value.trim();
        if value == "off" {
            return Ok(Self::Off);
        }
        let positive = |text: &str, what: &str| {
            text.trim().parse::<NonZeroU32>().map_err(|_| {
                format!("invalid rate {value:?}: {what} must be a whole number from 1 to {}; write RATE, RATE:BURST or off", u32::MAX)
            })
        };
        let (per_second, burst) = match value.split_once(':') {
            Some((per_second, burst)) => (positive(per_second, "RATE")?, positive(burst, "BURST")?),
            None => {
                let per_second = positive(value, "RATE")?;
                (per_second, per_second)
            }
        };
        Ok(Self::Limited(Rate { per_second, burst }))
    }
}

/// In the settings file a rate is a string (`"1000:2000"`, `"off"`) or a number (`1000`).
impl<'de> Deserialize<'de> for RateLimit {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Number(u32),
            Text(String),
        }
        match Written::deserialize(deserializer)? {
            Written::Number(n) => n.to_string().parse(),
            Written::Text(text) => text.parse(),
        }
        .map_err(serde::de::Error::custom)
    }
}

/// The rate limits a server applies; `None` is no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RateLimits {
    /// Each tenant key's.
    pub per_key: Option<Rate>,
    /// All of a tenant's keys' together.
    pub per_tenant: Option<Rate>,
    /// Each platform key's.
    pub per_platform_key: Option<Rate>,
}

/// One keyed limiter and the rate it enforces.
struct Limiter<K: Hash + Eq + Clone, C: Clock> {
    rate: Rate,
    buckets: RateLimiter<K, DefaultKeyedStateStore<K>, C, NoOpMiddleware<C::Instant>>,
}

impl<K: Hash + Eq + Clone, C: Clock + Clone> Limiter<K, C> {
    fn new(rate: Option<Rate>, clock: &C) -> Option<Self> {
        rate.map(|rate| Self { rate, buckets: RateLimiter::dashmap_with_clock(rate.quota(), clock.clone()) })
    }

    /// How long `key` must wait, if it is over the rate; otherwise spends one cell.
    fn check(&self, key: &K, clock: &C) -> Result<(), Duration> {
        self.buckets.check_key(key).map(|_| ()).map_err(|not_until| not_until.wait_time_from(clock.now()))
    }

    fn sweep(&self) {
        self.buckets.retain_recent();
        self.buckets.shrink_to_fit();
    }
}

impl<K: Hash + Eq + Clone, C: Clock> fmt::Debug for Limiter<K, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Limiter").field("rate", &self.rate).field("buckets", &self.buckets.len()).finish()
    }
}

/// The request-rate limiters of one server.
#[derive(Debug)]
pub struct Quotas<C: Clock = DefaultClock> {
    clock: C,
    keys: Option<Limiter<String, C>>,
    platform_keys: Option<Limiter<String, C>>,
    tenants: Option<Limiter<TenantId, C>>,
}

impl Quotas {
    pub fn new(limits: RateLimits) -> Self {
        Self::with_clock(limits, DefaultClock::default())
    }
}

impl<C: Clock + Clone> Quotas<C> {
    pub fn with_clock(limits: RateLimits, clock: C) -> Self {
        Self {
            keys: Limiter::new(limits.per_key, &clock),
            platform_keys: Limiter::new(limits.per_platform_key, &clock),
            tenants: Limiter::new(limits.per_tenant, &clock),
            clock,
        }
    }

    /// Lets `principal`'s call through if its key, and its tenant, are within their rates; otherwise
    /// RESOURCE_EXHAUSTED naming the limit. The key is checked first, so a key over its own rate spends
    /// nothing of its tenant's.
    pub fn admit(&self, principal: &Principal) -> Result<(), Status> {
        let (keys, tenant) = match &principal.scope {
            Scope::Platform => (&self.platform_keys, None),
            Scope::Tenant(tenant) => (&self.keys, Some(tenant)),
        };
        if let Some(keys) = keys
            && let Err(wait) = keys.check(&principal.key_id, &self.clock)
        {
            return Err(refusal("key", &format!("API key {}", principal.key_id), keys.rate, wait));
        }
        if let (Some(tenants), Some(tenant)) = (&self.tenants, tenant)
            && let Err(wait) = tenants.check(tenant, &self.clock)
        {
            return Err(refusal("tenant", &format!("tenant {tenant}"), tenants.rate, wait));
        }
        Ok(())
    }

    /// Forgets the keys and tenants whose buckets are full again: they would start from the same state.
    pub fn sweep(&self) {
        if let Some(keys) = &self.keys {
            keys.sweep();
        }
        if let Some(keys) = &self.platform_keys {
            keys.sweep();
        }
        if let Some(tenants) = &self.tenants {
            tenants.sweep();
        }
    }

    /// Keys and tenants the limiters hold state for now.
    pub fn tracked(&self) -> usize {
        self.keys.as_ref().map_or(0, |l| l.buckets.len())
            + self.platform_keys.as_ref().map_or(0, |l| l.buckets.len())
            + self.tenants.as_ref().map_or(0, |l| l.buckets.len())
    }
}

fn refusal(limit: &'static str, subject: &str, rate: Rate, wait: Duration) -> Status {
    metrics::counter!("tally_rate_limited_total", "limit" => limit).increment(1);
    tracing::debug!(subject, ?wait, "call refused: over its rate");
    let message = format!("rate limit of {subject} exceeded ({rate}); retry after {} ms", wait.as_millis().max(1));
    status::quota_exhausted(message, subject, wait)
}

#[cfg(test)]
mod tests {
    use governor::clock::FakeRelativeClock;
    use tally_engine::domain::access::Role;
    use tonic::Code;
    use tonic_types::StatusExt;

    use super::*;

    fn key(id: &str, tenant: Option<&str>) -> Principal {
        let scope = tenant.map_or(Scope::Platform, |t| Scope::Tenant(TenantId::parse(t).unwrap()));
        Principal { key_id: id.into(), scope, roles: [Role::Pos].into_iter().collect() }
    }

    #[test]
    fn rates_parse_as_written_and_print_back() {
        assert_eq!("off".parse::<RateLimit>().unwrap(), RateLimit::Off);
        assert_eq!("100".parse::<RateLimit>().unwrap(), RateLimit::limited(100, 100));
        assert_eq!("100:250".parse::<RateLimit>().unwrap(), RateLimit::limited(100, 250));
        for written in ["off", "100", "100:250"] {
            assert_eq!(written.parse::<RateLimit>().unwrap().to_string(), written);
        }
        for bad in ["", "0", "-1", "1.5", "10:0", "10:", ":10", "ten", "5000000000"] {
            let error = bad.parse::<RateLimit>().unwrap_err();
            assert!(error.contains("RATE:BURST"), "{bad}: {error}");
        }
    }

    #[test]
    fn a_key_over_its_rate_is_told_how_long_to_wait_and_recovers() {
        let clock = FakeRelativeClock::default();
        let limits = RateLimits { per_key: RateLimit::limited(2, 3).rate(), ..RateLimits::default() };
        let quotas = Quotas::with_clock(limits, clock.clone());
        let till = key("aaaa", Some("acme"));
        for _ in 0..3 {
            quotas.admit(&till).unwrap();
        }
        let refused = quotas.admit(&till).unwrap_err();
        assert_eq!(refused.code(), Code::ResourceExhausted);
        assert!(refused.message().contains("API key aaaa") && refused.message().contains("2 requests/s, burst 3"), "{refused:?}");
        assert_eq!(refused.metadata().get("retry-after").unwrap(), "1");
        assert_eq!(refused.get_details_retry_info().unwrap().retry_delay, Some(Duration::from_millis(500)));
        assert_eq!(refused.get_details_quota_failure().unwrap().violations[0].subject, "API key aaaa");
        clock.advance(Duration::from_millis(499));
        assert!(quotas.admit(&till).is_err());
        clock.advance(Duration::from_millis(1));
        quotas.admit(&till).unwrap();
        // Another key has a bucket of its own; platform keys are not limited unless asked.
        quotas.admit(&key("bbbb", Some("acme"))).unwrap();
        for _ in 0..100 {
            quotas.admit(&key("cccc", None)).unwrap();
        }
    }

    #[test]
    fn a_tenant_over_its_rate_refuses_its_keys_only() {
        let clock = FakeRelativeClock::default();
        let limits = RateLimits {
            per_tenant: RateLimit::limited(1, 2).rate(),
            per_platform_key: RateLimit::limited(1, 1).rate(),
            ..RateLimits::default()
        };
        let quotas = Quotas::with_clock(limits, clock.clone());
        quotas.admit(&key("a1", Some("acme"))).unwrap();
        quotas.admit(&key("a2", Some("acme"))).unwrap();
        let refused = quotas.admit(&key("a3", Some("acme"))).unwrap_err();
        assert!(refused.message().contains("tenant acme"), "{refused:?}");
        quotas.admit(&key("g1", Some("globex"))).unwrap();
        quotas.admit(&key("p", None)).unwrap();
        assert!(quotas.admit(&key("p", None)).unwrap_err().message().contains("API key p"));
        assert_eq!(quotas.tracked(), 3, "acme, globex and the platform key");
        clock.advance(Duration::from_secs(5));
        quotas.sweep();
        assert_eq!(quotas.tracked(), 0, "full buckets are forgotten");
        quotas.admit(&key("a3", Some("acme"))).unwrap();
    }
}
