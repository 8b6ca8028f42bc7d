//! The dashboard's sign-in sessions: the admin token is typed once, then an HttpOnly
//! cookie stands for it until the session expires or is signed out. Kept in memory as
//! SHA-256 hashes of the cookie (a server restart signs everyone out, which is the safe
//! side), bounded in number so sign-ins cannot grow it without end. Pure: every call
//! takes the time. Replicas keep them in their database instead (`Sessions::shared`), so
//! a cookie one gave works on all; there they end by the wall clock.

use crate::keys::{hash_secret, new_secret};
use crate::store::Store;
use crate::Error;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The cookie's name.
pub const COOKIE: &str = "pinion_session";
/// How long a session lasts from sign-in when `--session-lifetime` does not say.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// The longest a session may last (`--session-lifetime` is refused above it).
pub const MAX_LIFETIME: Duration = Duration::from_secs(366 * 24 * 3600);
/// Sessions kept at most; the oldest go first. An operator signs in from a few browsers.
const MAX_SESSIONS: usize = 1000;
/// Cookies of the session's name looked at in one request, at most.
const MAX_COOKIES_LOOKED_AT: usize = 8;
/// An expired session is remembered this long, so its cookie is told "expired" rather
/// than "not valid".
const REMEMBER_EXPIRED: Duration = Duration::from_secs(24 * 3600);

/// What a presented cookie is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionCheck {
    /// Signed in; the session ends in this long.
    Valid {
        remaining: Duration,
    },
    Expired,
    Unknown,
}

pub struct Sessions {
    lifetime: Duration,
    /// Cookie hash → when the session ends.
    ends: Mutex<HashMap<String, Instant>>,
    /// The database the replicas share, which then holds the sessions instead.
    shared: Option<Arc<dyn Store>>,
}

impl Default for Sessions {
    fn default() -> Sessions {
        Sessions::new(DEFAULT_LIFETIME)
    }
}

impl Sessions {
    /// Sessions of `lifetime`, at most `MAX_LIFETIME`.
    pub fn new(lifetime: Duration) -> Sessions {
        Sessions { lifetime: lifetime.min(MAX_LIFETIME), ends: Mutex::new(HashMap::new()), shared: None }
    }

    /// Sessions of `lifetime` kept in `store`, for replicas sharing it.
    pub fn shared(lifetime: Duration, store: Arc<dyn Store>) -> Sessions {
        Sessions { shared: Some(store), ..Sessions::new(lifetime) }
    }

    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// A new session from `now`: its cookie value (256 random bits, hex).
    pub fn open(&self, now: Instant) -> Result<String, Error> {
        let secret = new_secret();
        if let Some(store) = &self.shared {
            let wall = unix_millis();
            let ends = wall.saturating_add(self.lifetime.as_millis() as i64);
            let forget_before = wall - REMEMBER_EXPIRED.as_millis() as i64;
            store.open_session(&hash_secret(&secret), ends, forget_before, MAX_SESSIONS)?;
            return Ok(secret);
        }
        let mut ends = self.ends.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        ends.retain(|_, end| now.saturating_duration_since(*end) < REMEMBER_EXPIRED);
        while ends.len() >= MAX_SESSIONS {
            let Some(oldest) = ends.iter().min_by_key(|(_, end)| **end).map(|(hash, _)| hash.clone()) else { break };
            ends.remove(&oldest);
        }
        ends.insert(hash_secret(&secret), now + self.lifetime);
        Ok(secret)
    }

    pub fn check(&self, cookie: &str, now: Instant) -> SessionCheck {
        if let Some(store) = &self.shared {
            return match store.session_end(&hash_secret(cookie)) {
                Ok(Some(end)) => match end - unix_millis() {
                    left if left > 0 => SessionCheck::Valid { remaining: Duration::from_millis(left as u64) },
                    _ => SessionCheck::Expired,
                },
                Ok(None) => SessionCheck::Unknown,
                Err(e) => {
                    log::error!("{e}");
                    SessionCheck::Unknown
                }
            };
        }
        let ends = self.ends.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match ends.get(&hash_secret(cookie)) {
            Some(end) if now < *end => SessionCheck::Valid { remaining: *end - now },
            Some(_) => SessionCheck::Expired,
            None => SessionCheck::Unknown,
        }
    }

    /// The best of several cookies of the same name (a stale one set for another path
    /// or by a sibling host comes first): valid if any is, else expired if any is.
    pub fn check_any<'a>(&self, cookies: impl Iterator<Item = &'a str>, now: Instant) -> SessionCheck {
        let mut best = SessionCheck::Unknown;
        for cookie in cookies.take(MAX_COOKIES_LOOKED_AT) {
            match self.check(cookie, now) {
                valid @ SessionCheck::Valid { .. } => return valid,
                SessionCheck::Expired => best = SessionCheck::Expired,
                SessionCheck::Unknown => {}
            }
        }
        best
    }

    /// Signs a session out; true if it was signed in.
    pub fn close(&self, cookie: &str, now: Instant) -> Result<bool, Error> {
        if let Some(store) = &self.shared {
            return Ok(store.close_session(&hash_secret(cookie))?.is_some_and(|end| end > unix_millis()));
        }
        let mut ends = self.ends.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        Ok(ends.remove(&hash_secret(cookie)).is_some_and(|end| now < end))
    }
}

fn unix_millis() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// The session cookie's values among a request's `Cookie` headers, in order.
pub fn cookie_values<'a>(cookie_headers: impl Iterator<Item = &'a str>) -> impl Iterator<Item = &'a str> {
    cookie_headers
        .flat_map(|header| header.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim().trim_matches('"'))
        .filter(|value| !value.is_empty())
}

/// `Set-Cookie` for a session that lasts `max_age` (zero: clears it). `Secure` when the
/// browser reached the server over https.
pub fn set_cookie(value: &str, max_age: Duration, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE}={value}; Max-Age={}; Path=/; HttpOnly; SameSite=Strict{secure}", max_age.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_one_replica_opened_works_on_another_until_signed_out_there() {
        let store: Arc<dyn Store> = Arc::new(crate::store::SqlStore::in_memory().unwrap());
        let (a, b) =
            (Sessions::shared(DEFAULT_LIFETIME, Arc::clone(&store)), Sessions::shared(DEFAULT_LIFETIME, store));
        let now = Instant::now();
        let cookie = a.open(now).unwrap();
        assert!(matches!(b.check(&cookie, now), SessionCheck::Valid { remaining } if remaining > DEFAULT_LIFETIME / 2));
        assert!(b.close(&cookie, now).unwrap());
        assert_eq!(a.check(&cookie, now), SessionCheck::Unknown);
        assert_eq!(a.check("never-opened", now), SessionCheck::Unknown);
    }

    #[test]
    fn a_session_is_valid_until_its_lifetime_then_expired_then_forgotten() {
        let start = Instant::now();
        let sessions = Sessions::new(Duration::from_secs(60));
        let cookie = sessions.open(start).unwrap();
        assert_eq!(cookie.len(), 64);
        assert_eq!(sessions.check(&cookie, start), SessionCheck::Valid { remaining: Duration::from_secs(60) });
        assert!(matches!(sessions.check(&cookie, start + Duration::from_secs(59)), SessionCheck::Valid { .. }));
        assert_eq!(sessions.check(&cookie, start + Duration::from_secs(60)), SessionCheck::Expired);
        assert_eq!(sessions.check("0".repeat(64).as_str(), start), SessionCheck::Unknown);
        // Opening another session later drops the long-expired one.
        let later = start + Duration::from_secs(60) + REMEMBER_EXPIRED;
        let other = sessions.open(later).unwrap();
        assert_eq!(sessions.check(&cookie, later), SessionCheck::Unknown);
        assert!(matches!(sessions.check(&other, later), SessionCheck::Valid { .. }));
    }

    #[test]
    fn signing_out_ends_only_that_session() {
        let now = Instant::now();
        let sessions = Sessions::new(DEFAULT_LIFETIME);
        let (a, b) = (sessions.open(now).unwrap(), sessions.open(now).unwrap());
        assert_ne!(a, b);
        assert!(sessions.close(&a, now).unwrap());
        assert!(!sessions.close(&a, now).unwrap());
        assert_eq!(sessions.check(&a, now), SessionCheck::Unknown);
        assert!(matches!(sessions.check(&b, now), SessionCheck::Valid { .. }));
    }

    #[test]
    fn a_stale_cookie_before_the_valid_one_does_not_hide_it() {
        let now = Instant::now();
        let sessions = Sessions::new(Duration::from_secs(10));
        let old = sessions.open(now).unwrap();
        let valid = sessions.open(now + Duration::from_secs(5)).unwrap();
        let later = now + Duration::from_secs(12);
        let check = |cookies: &[&str]| sessions.check_any(cookies.iter().copied(), later);
        assert!(matches!(check(&["bad", old.as_str(), valid.as_str()]), SessionCheck::Valid { .. }));
        assert_eq!(check(&["bad", old.as_str()]), SessionCheck::Expired);
        assert_eq!(check(&["bad"]), SessionCheck::Unknown);
        assert_eq!(check(&[]), SessionCheck::Unknown);
    }

    #[test]
    fn sign_ins_cannot_grow_the_table_without_end() {
        let now = Instant::now();
        let sessions = Sessions::new(DEFAULT_LIFETIME);
        let first = sessions.open(now).unwrap();
        for i in 1..=MAX_SESSIONS as u64 {
            sessions.open(now + Duration::from_millis(i)).unwrap();
        }
        assert_eq!(sessions.ends.lock().unwrap().len(), MAX_SESSIONS);
        assert_eq!(sessions.check(&first, now), SessionCheck::Unknown, "the oldest went first");
    }

    #[test]
    fn the_cookie_is_found_among_others_and_set_strictly() {
        let values = |headers: &[&'static str]| cookie_values(headers.iter().copied()).collect::<Vec<_>>();
        assert_eq!(values(&["a=1; pinion_session=abc ; b=2"]), ["abc"]);
        assert_eq!(values(&["x=1", "pinion_session=\"q\"; pinion_session=r"]), ["q", "r"]);
        assert!(values(&["pinion_sessionx=1; pinion_session="]).is_empty());
        assert!(values(&[]).is_empty());
        let set = set_cookie("abc", Duration::from_secs(60), true);
        assert_eq!(set, "pinion_session=abc; Max-Age=60; Path=/; HttpOnly; SameSite=Strict; Secure");
        assert!(!set_cookie("", Duration::ZERO, false).contains("Secure"));
    }
}
