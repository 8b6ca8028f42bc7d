//! The digest cache behind the registry: every answer with a digest is recorded, and
//! when the registry cannot answer, the last digest it gave is used (status `cached`,
//! with its age) before a tag is kept as a fallback. Only with a `--cache-ttl` (off by
//! default) does an answer younger than it stand in for asking, and it is marked so.

use crate::pinning::{registry_query, Answers, Pin, ResolveDigests, Staleness, WhyCached};
use crate::store::Store;
use crate::timefmt::unix_now;
use crate::Error;
use pinion_model::Reference;
use std::sync::Arc;
use std::time::Duration;

pub struct CachedResolver {
    registry: Box<dyn ResolveDigests + Send + Sync>,
    store: Arc<dyn Store>,
    /// Zero (the default): the registry is asked every time.
    ttl: Duration,
}

impl CachedResolver {
    /// `ttl`: how old a recorded answer may be and still be given without asking; zero
    /// asks the registry every time.
    pub fn new(registry: Box<dyn ResolveDigests + Send + Sync>, store: Arc<dyn Store>, ttl: Duration) -> Self {
        CachedResolver { registry, store, ttl }
    }

    /// Asks the registry for `refs`, records each answer, and stands in the last known
    /// digest for a registry that cannot be reached.
    fn ask(&self, refs: &[Reference], deadline: Duration) -> Answers {
        let answers = self.registry.resolve_all(refs, deadline);
        let now = unix_now() as i64;
        answers
            .into_iter()
            .map(|(reference, answer)| {
                let key = registry_query(&reference).canonical();
                let answer = match answer {
                    Ok(pin) => {
                        if let Err(e) = self.store.record_digest(&key, &pin.digest, &pin.media_type, now) {
                            log::error!("{e}");
                        }
                        Ok(pin)
                    }
                    Err(error) => {
                        if let Err(e) = self.store.record_resolution_error(&key, &error.to_string(), now) {
                            log::error!("{e}");
                        }
                        self.last_known(&key, &error, now).ok_or(error)
                    }
                };
                (reference, answer)
            })
            .collect()
    }

    fn last_known(&self, key: &str, error: &Error, now: i64) -> Option<Pin> {
        if !registry_unavailable(error) {
            return None;
        }
        self.recorded(key, now, WhyCached::RegistryUnavailable(error.to_string()))
    }

    /// The last digest the registry gave for `key`, marked with its age and `why` it
    /// stands in for asking.
    fn recorded(&self, key: &str, now: i64, why: WhyCached) -> Option<Pin> {
        let cached = self.store.tracked_image(key).ok()??;
        let (digest, checked_at) = (cached.digest?, cached.checked_at?);
        Some(Pin {
            digest,
            media_type: cached.media_type.unwrap_or_default(),
            stale: Some(Staleness {
                age_secs: (now - checked_at).max(0) as u64,
                given_at: checked_at.max(0) as u64,
                why,
            }),
        })
    }
}

/// Errors that say nothing about the tag, only that the registry could not answer now.
fn registry_unavailable(error: &Error) -> bool {
    matches!(
        error,
        Error::RegistryUnreachable { .. }
            | Error::RegistryTimeout { .. }
            | Error::ResolutionDeadline { .. }
            | Error::RateLimited { .. }
            | Error::RegistryStatus { status: 500..=599, .. }
    )
}

impl ResolveDigests for CachedResolver {
    fn resolve_all(&self, refs: &[Reference], deadline: Duration) -> Answers {
        if self.ttl.is_zero() {
            return self.ask(refs, deadline);
        }
        let now = unix_now() as i64;
        let ttl_secs = self.ttl.as_secs();
        let mut answers = Answers::new();
        let mut ask = Vec::new();
        for reference in refs {
            let young = self
                .recorded(&registry_query(reference).canonical(), now, WhyCached::WithinTtl { ttl_secs })
                // An answer dated in the future (the clock stepped back since) is not young.
                .filter(|pin| pin.stale.as_ref().is_some_and(|s| s.age_secs < ttl_secs && s.given_at as i64 <= now));
            match young {
                Some(pin) => {
                    answers.insert(reference.clone(), Ok(pin));
                }
                None => ask.push(reference.clone()),
            }
        }
        if !ask.is_empty() {
            answers.extend(self.ask(&ask, deadline));
        }
        answers
    }

    fn resolve_fresh(&self, refs: &[Reference], deadline: Duration) -> Answers {
        self.ask(refs, deadline)
    }

    fn admit(&self, reference: &Reference) -> Result<(), Error> {
        self.registry.admit(reference)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SqlStore;
    use std::sync::Mutex;

    /// A registry stand-in that counts questions and can be switched off.
    struct Switchable {
        digest: Mutex<Option<&'static str>>,
        asked: Mutex<usize>,
    }

    impl ResolveDigests for Arc<Switchable> {
        fn resolve_all(&self, refs: &[Reference], _: Duration) -> Answers {
            *self.asked.lock().unwrap() += refs.len();
            let digest = *self.digest.lock().unwrap();
            refs.iter()
                .map(|r| {
                    let answer = match digest {
                        Some(d) => Ok(Pin { digest: d.into(), media_type: "m".into(), stale: None }),
                        None => Err(Error::RegistryUnreachable {
                            registry: "r".into(),
                            reason: "connection refused".into(),
                        }),
                    };
                    (r.clone(), answer)
                })
                .collect()
        }
    }

    fn setup(ttl_secs: u64) -> (Arc<Switchable>, CachedResolver) {
        let registry = Arc::new(Switchable { digest: Mutex::new(Some("sha256:a")), asked: Mutex::new(0) });
        let store: Arc<dyn Store> = Arc::new(SqlStore::in_memory().unwrap());
        let cache = CachedResolver::new(Box::new(Arc::clone(&registry)), store, Duration::from_secs(ttl_secs));
        (registry, cache)
    }

    fn answer(cache: &CachedResolver, fresh: bool, reference: &Reference) -> Result<Pin, Error> {
        let refs = std::slice::from_ref(reference);
        let mut answers = if fresh {
            cache.resolve_fresh(refs, Duration::from_secs(1))
        } else {
            cache.resolve_all(refs, Duration::from_secs(1))
        };
        answers.remove(reference).expect("every reference is answered")
    }

    #[test]
    fn without_a_ttl_every_request_asks_the_registry() {
        let (registry, cache) = setup(0);
        let nginx = Reference::parse("nginx").unwrap();
        assert_eq!(answer(&cache, false, &nginx).unwrap().digest, "sha256:a");
        *registry.digest.lock().unwrap() = Some("sha256:b");
        let second = answer(&cache, false, &nginx).unwrap();
        assert_eq!((second.digest.as_str(), second.stale), ("sha256:b", None), "a push is seen at once");
        assert_eq!(*registry.asked.lock().unwrap(), 2);
    }

    #[test]
    fn a_dead_registry_is_stood_in_for_by_its_last_answer_marked_with_why() {
        let (registry, cache) = setup(0);
        let nginx = Reference::parse("nginx").unwrap();
        answer(&cache, false, &nginx).unwrap();
        *registry.digest.lock().unwrap() = None;
        for fresh in [false, true] {
            let pin = answer(&cache, fresh, &nginx).unwrap();
            assert_eq!(pin.digest, "sha256:a");
            let stale = pin.stale.expect("marked as the registry's earlier answer");
            assert!(stale.age_secs < 60 && stale.given_at + stale.age_secs >= unix_now() - 1, "{stale:?}");
            assert!(
                matches!(&stale.why, WhyCached::RegistryUnavailable(r) if r.contains("connection refused")),
                "{stale:?}"
            );
        }
        let redis = Reference::parse("redis").unwrap();
        assert!(answer(&cache, false, &redis).is_err(), "nothing known: fallback");
    }

    #[test]
    fn with_a_ttl_a_young_answer_is_given_without_asking_and_says_so() {
        let (registry, cache) = setup(300);
        let nginx = Reference::parse("nginx").unwrap();
        assert_eq!(answer(&cache, false, &nginx).unwrap().stale, None, "first: from the registry");
        *registry.digest.lock().unwrap() = Some("sha256:b");
        let cached = answer(&cache, false, &nginx).unwrap();
        assert_eq!(cached.digest, "sha256:a");
        let stale = cached.stale.expect("a cache answer is never passed off as the registry's");
        assert_eq!(stale.why, WhyCached::WithinTtl { ttl_secs: 300 });
        assert_eq!(*registry.asked.lock().unwrap(), 1, "the second answer came from the cache");
        // `Cache-Control: no-cache` (resolve_fresh) asks regardless.
        let fresh = answer(&cache, true, &nginx).unwrap();
        assert_eq!((fresh.digest.as_str(), fresh.stale), ("sha256:b", None));
    }

    #[test]
    fn a_ttl_answer_older_than_the_ttl_is_asked_again() {
        let (registry, cache) = setup(300);
        let nginx = Reference::parse("nginx").unwrap();
        let key = registry_query(&nginx).canonical();
        cache.store.record_digest(&key, "sha256:old", "m", unix_now() as i64 - 301).unwrap();
        assert_eq!(
            answer(&cache, false, &nginx).unwrap(),
            Pin { digest: "sha256:a".into(), media_type: "m".into(), stale: None }
        );
        assert_eq!(*registry.asked.lock().unwrap(), 1);
    }
}
