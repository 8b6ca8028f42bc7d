//! The digest cache in front of the registry: an answer younger than the TTL is given
//! without network; when the registry cannot be reached, the last digest it gave is used
//! (status `cached`, with its age) before a tag is kept as a fallback.

use crate::pinning::{registry_query, Answers, Pin, ResolveDigests, Staleness};
use crate::store::Store;
use crate::timefmt::unix_now;
use crate::Error;
use pinion_model::Reference;
use std::sync::Arc;
use std::time::Duration;

pub struct CachedResolver {
    registry: Box<dyn ResolveDigests + Send + Sync>,
    store: Arc<dyn Store>,
    ttl: Duration,
}

impl CachedResolver {
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
        let cached = self.store.tracked_image(key).ok()??;
        let (digest, checked_at) = (cached.digest?, cached.checked_at?);
        Some(Pin {
            digest,
            media_type: cached.media_type.unwrap_or_default(),
            stale: Some(Staleness { age_secs: (now - checked_at).max(0) as u64, reason: error.to_string() }),
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
        let now = unix_now() as i64;
        let mut answers = Answers::new();
        let mut ask = Vec::new();
        for reference in refs {
            let cached = self.store.tracked_image(&registry_query(reference).canonical()).ok().flatten();
            match cached {
                Some(c) if c.digest.is_some() && c.checked_at.is_some_and(|t| now - t < self.ttl.as_secs() as i64) => {
                    let pin = Pin {
                        digest: c.digest.unwrap_or_default(),
                        media_type: c.media_type.unwrap_or_default(),
                        stale: None,
                    };
                    answers.insert(reference.clone(), Ok(pin));
                }
                _ => ask.push(reference.clone()),
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
    use crate::store::SqliteStore;
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

    #[test]
    fn fresh_entries_answer_without_network_and_stale_ones_stand_in_for_a_dead_registry() {
        let registry = Arc::new(Switchable { digest: Mutex::new(Some("sha256:a")), asked: Mutex::new(0) });
        let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory().unwrap());
        let cache = CachedResolver::new(Box::new(Arc::clone(&registry)), Arc::clone(&store), Duration::from_secs(300));
        let nginx = Reference::parse("nginx").unwrap();
        let deadline = Duration::from_secs(1);

        assert_eq!(
            cache.resolve_all(std::slice::from_ref(&nginx), deadline)[&nginx].as_ref().unwrap().digest,
            "sha256:a"
        );
        assert_eq!(cache.resolve_all(std::slice::from_ref(&nginx), deadline)[&nginx].as_ref().unwrap().stale, None);
        assert_eq!(*registry.asked.lock().unwrap(), 1, "the second answer came from the cache");

        *registry.digest.lock().unwrap() = None;
        let answer = cache.resolve_fresh(std::slice::from_ref(&nginx), deadline).remove(&nginx).unwrap().unwrap();
        assert_eq!(answer.digest, "sha256:a");
        assert!(answer.stale.unwrap().reason.contains("connection refused"));

        let other = Reference::parse("redis").unwrap();
        assert!(cache.resolve_all(std::slice::from_ref(&other), deadline)[&other].is_err(), "nothing known: fallback");
    }
}
