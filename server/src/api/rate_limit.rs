//! Per-address limits on what a brute force or a flood needs many of: failed
//! authentications and registrations. `RateLimiter` is the pure part — a GCRA (token
//! bucket kept as one "theoretical arrival time" per address), the time passed in, memory
//! bounded by evicting the address idle longest — and `ClientLimits` is the edge the HTTP
//! workers share: two limiters behind mutexes, read against the clock.

use crate::Error;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failed authentications per minute and address when `--auth-failures-per-minute` is not given.
pub const DEFAULT_AUTH_FAILURES_PER_MINUTE: u32 = 20;
/// Registrations per minute and address when `--registrations-per-minute` is not given.
pub const DEFAULT_REGISTRATIONS_PER_MINUTE: u32 = 30;
/// Addresses each limiter remembers at most (a few tens of bytes each).
pub const MAX_TRACKED_CLIENTS: usize = 10_000;
/// How long a credential that succeeded from an address keeps its pass there.
const KNOWN_GOOD_FOR: Duration = Duration::from_secs(3600);
/// (address, credential) passes remembered at most.
const MAX_KNOWN_GOOD: usize = 10_000;

/// At most `per_minute` events per client within any minute as a burst, then one every
/// `60 s / per_minute`: each client's theoretical arrival time (TAT) moves one interval
/// ahead per event, and a client whose TAT is more than `per_minute - 1` intervals ahead
/// of now is over the limit.
#[derive(Debug)]
pub struct RateLimiter {
    interval: Duration,
    /// How far ahead of now a TAT may be and the client still be admitted.
    tolerance: Duration,
    max_clients: usize,
    arrivals: HashMap<IpAddr, Instant>,
}

impl RateLimiter {
    /// `None` when `per_minute` is 0: no limit.
    pub fn per_minute(per_minute: u32, max_clients: usize) -> Option<RateLimiter> {
        let interval = Duration::from_secs(60).checked_div(per_minute)?;
        Some(RateLimiter {
            interval,
            tolerance: interval * (per_minute - 1),
            max_clients: max_clients.max(1),
            arrivals: HashMap::new(),
        })
    }

    /// How long `client` must wait before its next event is admitted; `None`: admitted now.
    pub fn retry_after(&self, client: IpAddr, now: Instant) -> Option<Duration> {
        let tat = *self.arrivals.get(&client_key(client))?;
        let ahead = tat.checked_duration_since(now)?;
        ahead.checked_sub(self.tolerance).filter(|wait| !wait.is_zero())
    }

    /// Counts one event of `client` at `now`, admitted or not.
    pub fn record(&mut self, client: IpAddr, now: Instant) {
        let key = client_key(client);
        if !self.arrivals.contains_key(&key) && self.arrivals.len() >= self.max_clients {
            self.make_room(now);
        }
        let tat = self.arrivals.get(&key).map_or(now, |&tat| tat.max(now));
        // An Instant that far ahead does not exist in practice; keep the old one then.
        let next = tat.checked_add(self.interval).unwrap_or(tat);
        self.arrivals.insert(key, next);
    }

    /// `retry_after`, and `record` when admitted: one event that must pass the limit.
    pub fn take(&mut self, client: IpAddr, now: Instant) -> Result<(), Duration> {
        match self.retry_after(client, now) {
            Some(wait) => Err(wait),
            None => {
                self.record(client, now);
                Ok(())
            }
        }
    }

    /// The events a client may have at once (its limit per minute).
    pub fn burst(&self) -> u32 {
        (self.tolerance.as_nanos() / self.interval.as_nanos().max(1)) as u32 + 1
    }

    /// Addresses remembered now.
    pub fn tracked(&self) -> usize {
        self.arrivals.len()
    }

    /// Forgets clients whose TAT has passed (they are as if never seen), then, if still
    /// full, the one whose TAT is earliest: the one idle longest.
    fn make_room(&mut self, now: Instant) {
        self.arrivals.retain(|_, tat| *tat > now);
        while self.arrivals.len() >= self.max_clients {
            let Some(oldest) = self.arrivals.iter().min_by_key(|(_, tat)| **tat).map(|(key, _)| *key) else {
                break;
            };
            self.arrivals.remove(&oldest);
        }
    }
}

/// The key an address is counted under: IPv4 as is (IPv4-mapped IPv6 too), IPv6 by its
/// /64, which one host usually has whole.
fn client_key(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// The limits every HTTP worker consults: failed authentications (checked before any
/// credentials are looked at, counted after a 401/403) and registrations (each counted).
/// A request without a peer address (an in-process call) is never limited.
#[derive(Debug)]
pub struct ClientLimits {
    auth_failures: Option<Mutex<RateLimiter>>,
    registrations: Option<Mutex<RateLimiter>>,
    /// Credentials (64 bits of their SHA-256, never the secret) that succeeded from an
    /// address within `KNOWN_GOOD_FOR`: they stay admitted while that address is over its
    /// failure limit, so one client sharing an address (a NAT, a proxy) with working
    /// devices and operators cannot lock them out. Any other credential from there is
    /// still refused before it is looked at: a guess learns nothing.
    known_good: Mutex<HashMap<(IpAddr, u64), Instant>>,
    /// Events counted here and not yet shared with the other replicas (`replica_sync`),
    /// by kind and client; `None` for a server alone.
    unshared: Option<Mutex<HashMap<(LimitKind, IpAddr), u32>>>,
}

/// What a limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LimitKind {
    AuthFailure,
    Registration,
}

impl LimitKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LimitKind::AuthFailure => "auth_failure",
            LimitKind::Registration => "registration",
        }
    }

    pub fn parse(kind: &str) -> Option<LimitKind> {
        match kind {
            "auth_failure" => Some(LimitKind::AuthFailure),
            "registration" => Some(LimitKind::Registration),
            _ => None,
        }
    }
}

impl ClientLimits {
    /// Limits per minute and address; 0 turns one off.
    pub fn per_minute(auth_failures: u32, registrations: u32) -> ClientLimits {
        let limiter = |n| RateLimiter::per_minute(n, MAX_TRACKED_CLIENTS).map(Mutex::new);
        ClientLimits {
            auth_failures: limiter(auth_failures),
            registrations: limiter(registrations),
            known_good: Mutex::new(HashMap::new()),
            unshared: None,
        }
    }

    /// For one of several replicas: what it counts is kept for `take_unshared`.
    pub fn shared(self) -> ClientLimits {
        ClientLimits { unshared: Some(Mutex::default()), ..self }
    }

    /// The events counted here since the last call, by kind and client.
    pub fn take_unshared(&self) -> Vec<(LimitKind, IpAddr, u32)> {
        let Some(unshared) = &self.unshared else { return Vec::new() };
        let taken = std::mem::take(&mut *unshared.lock().unwrap_or_else(|p| p.into_inner()));
        taken.into_iter().map(|((kind, client), count)| (kind, client, count)).collect()
    }

    /// Counts `count` events another replica counted (at most a minute's worth: more
    /// cannot change a decision).
    pub fn counted_elsewhere(&self, kind: LimitKind, client: IpAddr, count: u32, now: Instant) {
        let limiter = match kind {
            LimitKind::AuthFailure => &self.auth_failures,
            LimitKind::Registration => &self.registrations,
        };
        if let Some(limiter) = limiter {
            let mut limiter = lock(limiter);
            for _ in 0..count.min(limiter.burst()) {
                limiter.record(client, now);
            }
        }
    }

    fn counted(&self, kind: LimitKind, client: IpAddr) {
        if let Some(unshared) = &self.unshared {
            let mut unshared = unshared.lock().unwrap_or_else(|p| p.into_inner());
            // Bounded as the limiters are: a flood from more addresses than that within
            // one round is counted here but not all of it shared.
            let key = (kind, client_key(client));
            if unshared.len() < MAX_TRACKED_CLIENTS || unshared.contains_key(&key) {
                *unshared.entry(key).or_default() += 1;
            }
        }
    }

    /// No limits.
    pub fn off() -> ClientLimits {
        ClientLimits::per_minute(0, 0)
    }

    /// `Err(TooManyAttempts)` when `peer` is over its limit of failed authentications
    /// (unless `credential` succeeded from there lately), or, for a registration, of
    /// registrations (which this one then counts against).
    pub fn admit(
        &self,
        peer: Option<SocketAddr>,
        registering: bool,
        credential: Option<&str>,
        now: Instant,
    ) -> Result<(), Error> {
        let Some(client) = peer.map(|p| p.ip()) else {
            return Ok(());
        };
        let refused = |attempts: &'static str, wait: Duration| Error::TooManyAttempts {
            client: client.to_string(),
            attempts,
            retry_after_secs: whole_seconds(wait),
        };
        if let Some(limiter) = &self.auth_failures {
            if let Some(wait) = lock(limiter).retry_after(client, now) {
                if !self.known_good(client, credential, now) {
                    return Err(refused("failed authentications", wait));
                }
            }
        }
        if let (true, Some(limiter)) = (registering, &self.registrations) {
            lock(limiter).take(client, now).map_err(|wait| refused("registrations", wait))?;
            self.counted(LimitKind::Registration, client);
        }
        Ok(())
    }

    /// Remembers that `credential` worked from `peer` (a request answered below 400).
    pub fn record_success(&self, peer: Option<SocketAddr>, credential: Option<&str>, now: Instant) {
        let (Some(peer), Some(credential)) = (peer, credential) else { return };
        let key = (client_key(peer.ip()), fingerprint(credential));
        let mut passes = self.known_good.lock().unwrap_or_else(|p| p.into_inner());
        if passes.get(&key).is_some_and(|at| now.saturating_duration_since(*at) < Duration::from_secs(60)) {
            return;
        }
        if passes.len() >= MAX_KNOWN_GOOD && !passes.contains_key(&key) {
            passes.retain(|_, at| now.saturating_duration_since(*at) < KNOWN_GOOD_FOR);
            if passes.len() >= MAX_KNOWN_GOOD {
                // Still full of live passes: the oldest go.
                let mut ages: Vec<Instant> = passes.values().copied().collect();
                ages.sort_unstable();
                let cutoff = ages[ages.len() / 2];
                passes.retain(|_, at| *at > cutoff);
            }
        }
        passes.insert(key, now);
    }

    fn known_good(&self, client: IpAddr, credential: Option<&str>, now: Instant) -> bool {
        let Some(credential) = credential else { return false };
        let passes = self.known_good.lock().unwrap_or_else(|p| p.into_inner());
        passes
            .get(&(client_key(client), fingerprint(credential)))
            .is_some_and(|at| now.saturating_duration_since(*at) < KNOWN_GOOD_FOR)
    }

    /// Counts a refused authentication of `peer`.
    pub fn record_failure(&self, peer: Option<SocketAddr>, now: Instant) {
        if let (Some(peer), Some(limiter)) = (peer, &self.auth_failures) {
            lock(limiter).record(peer.ip(), now);
            self.counted(LimitKind::AuthFailure, peer.ip());
        }
    }
}

/// 64 bits of a credential's SHA-256: enough to tell credentials apart, nothing to find
/// one from.
fn fingerprint(credential: &str) -> u64 {
    let digest = Sha256::digest(credential.as_bytes());
    u64::from_be_bytes(digest[..8].try_into().unwrap_or_default())
}

/// A `Retry-After` value: whole seconds, rounded up, at least 1.
fn whole_seconds(wait: Duration) -> u64 {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    seconds.max(1)
}

/// The limiter, also after a panic elsewhere while it was held (its state stays valid).
fn lock(limiter: &Mutex<RateLimiter>) -> std::sync::MutexGuard<'_, RateLimiter> {
    limiter.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replica_counts_what_another_counted_and_shares_only_its_own() {
        let now = Instant::now();
        let (a, b) = (ClientLimits::per_minute(3, 30).shared(), ClientLimits::per_minute(3, 30).shared());
        let guesser = Some(SocketAddr::from(([192, 0, 2, 7], 40000)));
        for _ in 0..3 {
            a.record_failure(guesser, now);
        }
        assert!(a.admit(guesser, false, None, now).is_err(), "over the limit on a");
        assert!(b.admit(guesser, false, None, now).is_ok(), "b has not heard yet");
        let shared = a.take_unshared();
        assert_eq!(shared, [(LimitKind::AuthFailure, ip(7), 3)]);
        assert!(a.take_unshared().is_empty(), "shared once");
        for (kind, client, count) in shared {
            b.counted_elsewhere(kind, client, count, now);
        }
        assert!(b.admit(guesser, false, None, now).is_err(), "over the limit on b too");
        assert!(b.take_unshared().is_empty(), "what came from elsewhere is not shared back");
        assert_eq!(RateLimiter::per_minute(20, 1).unwrap().burst(), 20);
        assert_eq!(LimitKind::parse(LimitKind::Registration.as_str()), Some(LimitKind::Registration));
    }
    use std::net::Ipv4Addr;

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, last))
    }

    #[test]
    fn a_burst_of_the_limit_is_admitted_and_the_next_event_waits_one_interval() {
        let mut limiter = RateLimiter::per_minute(3, 10).unwrap();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(limiter.retry_after(ip(1), t0), None);
            limiter.record(ip(1), t0);
        }
        // 3 per minute: one interval is 20 s; the 4th waits for the first to age out.
        assert_eq!(limiter.retry_after(ip(1), t0), Some(Duration::from_secs(20)));
        assert_eq!(limiter.retry_after(ip(1), t0 + Duration::from_secs(5)), Some(Duration::from_secs(15)));
        assert_eq!(limiter.retry_after(ip(1), t0 + Duration::from_secs(20)), None);
        assert_eq!(limiter.retry_after(ip(2), t0), None, "other addresses are not affected");
    }

    #[test]
    fn events_spread_at_the_rate_are_never_limited() {
        let mut limiter = RateLimiter::per_minute(2, 10).unwrap();
        let t0 = Instant::now();
        for i in 0..100 {
            let now = t0 + Duration::from_secs(30 * i);
            assert_eq!(limiter.take(ip(1), now), Ok(()), "event {i}");
        }
    }

    #[test]
    fn take_counts_only_admitted_events() {
        let mut limiter = RateLimiter::per_minute(2, 10).unwrap();
        let t0 = Instant::now();
        assert_eq!(limiter.take(ip(1), t0), Ok(()));
        assert_eq!(limiter.take(ip(1), t0), Ok(()));
        for _ in 0..50 {
            assert_eq!(limiter.take(ip(1), t0), Err(Duration::from_secs(30)), "refusals do not push the wait out");
        }
        assert_eq!(limiter.take(ip(1), t0 + Duration::from_secs(30)), Ok(()));
    }

    #[test]
    fn recorded_failures_while_limited_push_the_wait_out() {
        let mut limiter = RateLimiter::per_minute(1, 10).unwrap();
        let t0 = Instant::now();
        limiter.record(ip(1), t0);
        limiter.record(ip(1), t0);
        assert_eq!(limiter.retry_after(ip(1), t0), Some(Duration::from_secs(120)));
    }

    #[test]
    fn zero_per_minute_is_no_limiter() {
        assert!(RateLimiter::per_minute(0, 10).is_none());
        let limits = ClientLimits::off();
        let peer: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        for _ in 0..1000 {
            limits.record_failure(Some(peer), Instant::now());
            assert!(limits.admit(Some(peer), true, None, Instant::now()).is_ok());
        }
    }

    #[test]
    fn memory_is_bounded_and_the_longest_idle_address_goes_first() {
        let mut limiter = RateLimiter::per_minute(1, 3).unwrap();
        let t0 = Instant::now();
        for (i, last) in [1, 2, 3].into_iter().enumerate() {
            limiter.record(ip(last), t0 + Duration::from_secs(i as u64));
        }
        limiter.record(ip(4), t0 + Duration::from_secs(3));
        assert_eq!(limiter.tracked(), 3);
        assert_eq!(limiter.retry_after(ip(1), t0 + Duration::from_secs(3)), None, "ip 1 was evicted");
        assert!(limiter.retry_after(ip(2), t0 + Duration::from_secs(3)).is_some());
        assert!(limiter.retry_after(ip(4), t0 + Duration::from_secs(3)).is_some());
        for last in 10..=255 {
            limiter.record(ip(last), t0 + Duration::from_secs(4));
        }
        assert_eq!(limiter.tracked(), 3);
    }

    #[test]
    fn addresses_whose_wait_has_passed_are_dropped_before_active_ones() {
        let mut limiter = RateLimiter::per_minute(1, 2).unwrap();
        let t0 = Instant::now();
        limiter.record(ip(1), t0);
        limiter.record(ip(2), t0 + Duration::from_secs(59));
        limiter.record(ip(3), t0 + Duration::from_secs(61));
        assert_eq!(limiter.tracked(), 2);
        assert!(limiter.retry_after(ip(2), t0 + Duration::from_secs(61)).is_some(), "ip 2 still counted");
    }

    #[test]
    fn ipv6_is_counted_per_64_and_mapped_ipv4_as_ipv4() {
        let mut limiter = RateLimiter::per_minute(1, 10).unwrap();
        let t0 = Instant::now();
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        limiter.record(a, t0);
        assert!(limiter.retry_after(b, t0).is_some());
        assert!(limiter.retry_after(other, t0).is_none());
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        limiter.record(mapped, t0);
        assert!(limiter.retry_after(ip(7), t0).is_some());
    }

    #[test]
    fn client_limits_refuse_with_the_address_and_a_whole_second_wait() {
        let limits = ClientLimits::per_minute(2, 1);
        let peer: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let t0 = Instant::now();
        assert!(limits.admit(None, true, None, t0).is_ok());
        assert!(limits.admit(Some(peer), true, None, t0).is_ok(), "first registration");
        match limits.admit(Some(peer), true, None, t0) {
            Err(Error::TooManyAttempts { client, attempts, retry_after_secs }) => {
                assert_eq!((client.as_str(), attempts, retry_after_secs), ("127.0.0.1", "registrations", 60));
            }
            other => panic!("{other:?}"),
        }
        assert!(limits.admit(Some(peer), false, None, t0).is_ok(), "other routes do not count registrations");
        limits.record_failure(Some(peer), t0);
        limits.record_failure(Some(peer), t0);
        match limits.admit(Some(peer), false, None, t0 + Duration::from_millis(1500)) {
            Err(Error::TooManyAttempts { attempts, retry_after_secs, .. }) => {
                assert_eq!((attempts, retry_after_secs), ("failed authentications", 29));
            }
            other => panic!("{other:?}"),
        }
        assert!(limits.admit(None, false, None, t0).is_ok(), "in-process calls have no address");
    }

    #[test]
    fn waits_round_up_to_whole_seconds() {
        assert_eq!(whole_seconds(Duration::from_millis(1)), 1);
        assert_eq!(whole_seconds(Duration::from_millis(1500)), 2);
        assert_eq!(whole_seconds(Duration::from_secs(3)), 3);
        assert_eq!(whole_seconds(Duration::ZERO), 1);
    }

    #[test]
    fn a_credential_that_worked_from_an_address_keeps_working_while_guesses_from_there_are_refused() {
        let limits = ClientLimits::per_minute(3, 0);
        let shared = SocketAddr::new(ip(7), 1000);
        let t0 = Instant::now();
        limits.record_success(Some(shared), Some("device-key"), t0);
        for _ in 0..3 {
            limits.record_failure(Some(shared), t0);
        }
        let later = t0 + Duration::from_secs(1);
        assert!(limits.admit(Some(shared), false, Some("a-guess"), later).is_err(), "a guess is refused unseen");
        assert!(limits.admit(Some(shared), false, None, later).is_err());
        assert!(limits.admit(Some(shared), false, Some("device-key"), later).is_ok(), "the working key keeps working");
        let other = SocketAddr::new(ip(8), 1000);
        for _ in 0..3 {
            limits.record_failure(Some(other), t0);
        }
        assert!(limits.admit(Some(other), false, Some("device-key"), later).is_err(), "its pass is for its address");
        let hour_later = t0 + KNOWN_GOOD_FOR + Duration::from_secs(1);
        for _ in 0..3 {
            limits.record_failure(Some(shared), hour_later);
        }
        assert!(limits.admit(Some(shared), false, Some("device-key"), hour_later).is_err(), "passes expire");
    }
}
