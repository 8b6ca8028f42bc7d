//! The server's own numbers since it started, for Prometheus (`GET /metrics`): polls and
//! reports by answer, digest resolutions by registry and status, the latency of registry
//! requests, the refresher's runs. Counted in memory where they happen (one `Arc<Metrics>`
//! shared by the API, the resolver and the refresher), so they are per replica, as
//! Prometheus expects of each target it scrapes. What the store knows (devices, fleets,
//! rollouts) is read at scrape time instead (`api::scrape`). No metrics crate: the text
//! format is `exposition`, about a hundred lines.

pub mod exposition;

use crate::pinning::{Answers, Pin, ResolveDigests};
use exposition::{Exposition, Kind};
use pinion_model::Reference;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// Registries named in labels at most; the rest are counted under `OTHER`.
pub const MAX_REGISTRIES: usize = 64;
/// Fleets named in labels at most (`api::scrape`); the rest are counted under `OTHER`.
pub const MAX_FLEETS: usize = 1000;
/// The label value of what is past a cap: no registry host and no fleet name can be it.
pub const OTHER: &str = "_other";
/// Upper bounds (seconds) of the registry request latency buckets; requests time out
/// after `--registry-timeout` (10 s by default).
pub const LATENCY_BUCKETS: [f64; 12] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// HTTP statuses counted one by one; any other counts as 599's neighbour `0` ("other").
const STATUSES: usize = 600;

/// Counters of what happened, shared by everything that counts.
#[derive(Default)]
pub struct Metrics {
    polls: StatusCounts,
    reports: StatusCounts,
    /// (registry, status) → answers.
    resolutions: Mutex<BTreeMap<(String, &'static str), u64>>,
    /// (registry, error code) → failed answers.
    resolution_errors: Mutex<BTreeMap<(String, &'static str), u64>>,
    registry_requests: Mutex<BTreeMap<String, Histogram>>,
    refresh: Mutex<Refreshes>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// Answers by HTTP status, without a lock: polls are most of a fleet's traffic.
struct StatusCounts(Vec<AtomicU64>);

impl Default for StatusCounts {
    fn default() -> Self {
        StatusCounts((0..STATUSES).map(|_| AtomicU64::new(0)).collect())
    }
}

impl StatusCounts {
    fn add(&self, status: u16) {
        let index = if (100..STATUSES as u16).contains(&status) { status as usize } else { 0 };
        self.0[index].fetch_add(1, Ordering::Relaxed);
    }

    /// (answer label, count) of every status seen, and 200 always.
    fn seen(&self) -> Vec<(String, u64)> {
        let mut seen = Vec::new();
        for (status, count) in self.0.iter().enumerate() {
            let count = count.load(Ordering::Relaxed);
            if count > 0 || status == 200 {
                let label = if status == 0 { "other".to_string() } else { status.to_string() };
                seen.push((label, count));
            }
        }
        seen
    }
}

/// Observations of one registry's request latency.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    /// Per bucket of `LATENCY_BUCKETS` (not cumulative), then those above them all.
    pub counts: [u64; LATENCY_BUCKETS.len() + 1],
    pub sum: f64,
}

impl Histogram {
    pub fn observe(&mut self, seconds: f64) {
        let bucket = LATENCY_BUCKETS.iter().position(|bound| seconds <= *bound).unwrap_or(LATENCY_BUCKETS.len());
        self.counts[bucket] += 1;
        self.sum += seconds;
    }
}

#[derive(Default)]
struct Refreshes {
    runs: BTreeMap<&'static str, u64>,
    /// Unix seconds at the end of the last run, and how long it took.
    last: Option<(f64, f64)>,
}

fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// `key` if it is already counted or there is room for it, `OTHER` otherwise.
fn capped<V>(map: &BTreeMap<(String, &'static str), V>, registry: &str) -> String {
    let known = map.keys().any(|(r, _)| r == registry);
    let registries = map.keys().map(|(r, _)| r).collect::<std::collections::BTreeSet<_>>().len();
    if known || registries < MAX_REGISTRIES {
        registry.to_string()
    } else {
        OTHER.to_string()
    }
}

/// The status of a resolution answer, as `imageResolution.status` says it.
fn resolution_status(answer: &Result<Pin, crate::Error>) -> &'static str {
    match answer {
        Ok(Pin { stale: None, .. }) => "resolved",
        Ok(Pin { stale: Some(_), .. }) => "cached",
        Err(_) => "fallback",
    }
}

impl Metrics {
    /// A device poll (`GET /device/{uuid}/state`) answered `status`.
    pub fn poll_answered(&self, status: u16) {
        self.polls.add(status);
    }

    /// A device report (`PATCH /device/state`) answered `status`.
    pub fn report_answered(&self, status: u16) {
        self.reports.add(status);
    }

    /// The answers to one batch of references (the API's or the refresher's).
    pub fn resolved(&self, answers: &Answers) {
        let mut resolutions = locked(&self.resolutions);
        let mut errors = locked(&self.resolution_errors);
        for (reference, answer) in answers {
            let registry = capped(&resolutions, reference.domain());
            *resolutions.entry((registry.clone(), resolution_status(answer))).or_default() += 1;
            if let Err(error) = answer {
                let registry = capped(&errors, &registry);
                *errors.entry((registry, crate::api::status_of(error).1)).or_default() += 1;
            }
        }
    }

    /// One HTTP request to `registry`'s API, answered (or failed) after `took`.
    pub fn registry_request(&self, registry: &str, took: Duration) {
        let mut requests = locked(&self.registry_requests);
        let key = if requests.contains_key(registry) || requests.len() < MAX_REGISTRIES { registry } else { OTHER };
        requests.entry(key.to_string()).or_default().observe(took.as_secs_f64());
    }

    /// A refresh run (`source`: `refresh`, `webhook`) ended at `ended_at` (Unix seconds)
    /// after `took`.
    pub fn refresh_ran(&self, source: &'static str, ended_at: f64, took: Duration) {
        let mut refresh = locked(&self.refresh);
        *refresh.runs.entry(source).or_default() += 1;
        refresh.last = Some((ended_at, took.as_secs_f64()));
    }

    /// Writes every counter, each family even when nothing was counted yet.
    pub fn render(&self, out: &mut Exposition) {
        out.family("pinion_polls_total", Kind::Counter, "Device polls (GET /api/v1/device/UUID/state) by HTTP answer.");
        for (answer, count) in self.polls.seen() {
            out.sample("pinion_polls_total", &[("answer", &answer)], count as f64);
        }
        out.family(
            "pinion_reports_total",
            Kind::Counter,
            "Device reports (PATCH /api/v1/device/state) by HTTP answer.",
        );
        for (answer, count) in self.reports.seen() {
            out.sample("pinion_reports_total", &[("answer", &answer)], count as f64);
        }
        out.family(
            "pinion_digest_resolutions_total",
            Kind::Counter,
            "Tag-to-digest resolutions by registry and status: resolved (the registry answered now), \
             cached (its earlier answer), fallback (no digest).",
        );
        for ((registry, status), count) in locked(&self.resolutions).iter() {
            out.sample("pinion_digest_resolutions_total", &[("registry", registry), ("status", status)], *count as f64);
        }
        out.family(
            "pinion_digest_resolution_errors_total",
            Kind::Counter,
            "Resolutions the registry did not answer, by registry and error code.",
        );
        for ((registry, error), count) in locked(&self.resolution_errors).iter() {
            let labels = [("registry", registry.as_str()), ("error", error)];
            out.sample("pinion_digest_resolution_errors_total", &labels, *count as f64);
        }
        out.family(
            "pinion_registry_request_duration_seconds",
            Kind::Histogram,
            "Registry API requests (manifest HEAD and GET) from sending to the answer's head, by registry.",
        );
        for (registry, histogram) in locked(&self.registry_requests).iter() {
            let name = "pinion_registry_request_duration_seconds";
            out.histogram(name, &[("registry", registry)], &LATENCY_BUCKETS, &histogram.counts, histogram.sum);
        }
        let refresh = locked(&self.refresh);
        out.family("pinion_refresh_runs_total", Kind::Counter, "Runs of the refresher, by what started them.");
        for source in ["refresh", "webhook"] {
            let count = refresh.runs.get(source).copied().unwrap_or(0);
            out.sample("pinion_refresh_runs_total", &[("source", source)], count as f64);
        }
        if let Some((ended_at, took)) = refresh.last {
            out.family(
                "pinion_refresh_last_run_timestamp_seconds",
                Kind::Gauge,
                "When the refresher's last run ended (Unix seconds).",
            );
            out.sample("pinion_refresh_last_run_timestamp_seconds", &[], ended_at);
            out.family(
                "pinion_refresh_last_run_duration_seconds",
                Kind::Gauge,
                "How long the refresher's last run took.",
            );
            out.sample("pinion_refresh_last_run_duration_seconds", &[], took);
        }
    }
}

/// A resolver whose every answer is counted (`pinion_digest_resolutions_total`): put
/// around the digest cache, it sees the API's and the refresher's questions alike.
pub struct CountingResolver {
    pub inner: Arc<dyn ResolveDigests + Send + Sync>,
    pub metrics: Arc<Metrics>,
}

impl ResolveDigests for CountingResolver {
    fn resolve_all(&self, refs: &[Reference], deadline: Duration) -> Answers {
        let answers = self.inner.resolve_all(refs, deadline);
        self.metrics.resolved(&answers);
        answers
    }
    fn resolve_fresh(&self, refs: &[Reference], deadline: Duration) -> Answers {
        let answers = self.inner.resolve_fresh(refs, deadline);
        self.metrics.resolved(&answers);
        answers
    }
    fn admit(&self, reference: &Reference) -> Result<(), crate::Error> {
        self.inner.admit(reference)
    }
}

/// Counts per name, at most `cap` names, the rest summed under `OTHER` (the fleets of
/// `pinion_fleet_devices`): the names with the most first, then by name.
pub fn capped_counts<'a>(names: impl IntoIterator<Item = &'a str>, cap: usize) -> Vec<(String, u64)> {
    let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
    for name in names {
        *counts.entry(name).or_default() += 1;
    }
    let mut sorted: Vec<(&str, u64)> = counts.into_iter().collect();
    sorted.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let rest: u64 = sorted.iter().skip(cap).map(|(_, count)| count).sum();
    let mut kept: Vec<(String, u64)> = sorted.into_iter().take(cap).map(|(n, c)| (n.to_string(), c)).collect();
    if rest > 0 {
        kept.push((OTHER.to_string(), rest));
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pinning::{Staleness, WhyCached};
    use crate::Error;

    fn rendered(metrics: &Metrics) -> String {
        let mut out = Exposition::default();
        metrics.render(&mut out);
        out.into_string()
    }

    #[test]
    fn polls_and_reports_are_counted_by_answer_with_200_always_shown() {
        let metrics = Metrics::default();
        metrics.poll_answered(304);
        metrics.poll_answered(304);
        metrics.poll_answered(401);
        metrics.poll_answered(1000);
        let text = rendered(&metrics);
        assert!(text.contains("pinion_polls_total{answer=\"200\"} 0\n"), "{text}");
        assert!(text.contains("pinion_polls_total{answer=\"304\"} 2\n"), "{text}");
        assert!(text.contains("pinion_polls_total{answer=\"401\"} 1\n"), "{text}");
        assert!(text.contains("pinion_polls_total{answer=\"other\"} 1\n"), "{text}");
        assert!(text.contains("pinion_reports_total{answer=\"200\"} 0\n"), "{text}");
    }

    #[test]
    fn resolutions_are_counted_by_registry_and_status_and_errors_by_code() {
        let metrics = Metrics::default();
        let reference = |r: &str| Reference::parse(r).unwrap();
        let pin = |stale| Pin { digest: "sha256:1".into(), media_type: "m".into(), stale };
        let stale = Staleness { age_secs: 1, given_at: 1, why: WhyCached::WithinTtl { ttl_secs: 60 } };
        let answers: Answers = [
            (reference("nginx:latest"), Ok(pin(None))),
            (reference("127.0.0.1:5000/a:1"), Ok(pin(Some(stale)))),
            (
                reference("127.0.0.1:5000/b:1"),
                Err(Error::RegistryTimeout { registry: "127.0.0.1:5000".into(), reference: "b".into() }),
            ),
        ]
        .into_iter()
        .collect();
        metrics.resolved(&answers);
        let text = rendered(&metrics);
        for line in [
            "pinion_digest_resolutions_total{registry=\"docker.io\",status=\"resolved\"} 1\n",
            "pinion_digest_resolutions_total{registry=\"127.0.0.1:5000\",status=\"cached\"} 1\n",
            "pinion_digest_resolutions_total{registry=\"127.0.0.1:5000\",status=\"fallback\"} 1\n",
            "pinion_digest_resolution_errors_total{registry=\"127.0.0.1:5000\",error=\"registry_timeout\"} 1\n",
        ] {
            assert!(text.contains(line), "{line} not in\n{text}");
        }
    }

    #[test]
    fn registry_latency_is_a_histogram_per_registry() {
        let metrics = Metrics::default();
        metrics.registry_request("r:5000", Duration::from_millis(3));
        metrics.registry_request("r:5000", Duration::from_millis(300));
        metrics.registry_request("r:5000", Duration::from_secs(60));
        let text = rendered(&metrics);
        let name = "pinion_registry_request_duration_seconds";
        assert!(text.contains(&format!("{name}_bucket{{registry=\"r:5000\",le=\"0.005\"}} 1\n")), "{text}");
        assert!(text.contains(&format!("{name}_bucket{{registry=\"r:5000\",le=\"0.5\"}} 2\n")), "{text}");
        assert!(text.contains(&format!("{name}_bucket{{registry=\"r:5000\",le=\"30\"}} 2\n")), "{text}");
        assert!(text.contains(&format!("{name}_bucket{{registry=\"r:5000\",le=\"+Inf\"}} 3\n")), "{text}");
        assert!(text.contains(&format!("{name}_count{{registry=\"r:5000\"}} 3\n")), "{text}");
        assert!(text.contains(&format!("{name}_sum{{registry=\"r:5000\"}} 60.303\n")), "{text}");
    }

    #[test]
    fn registries_past_the_cap_count_as_other() {
        let metrics = Metrics::default();
        for i in 0..MAX_REGISTRIES + 5 {
            metrics.registry_request(&format!("r{i}.example"), Duration::from_millis(1));
        }
        let requests = locked(&metrics.registry_requests);
        assert_eq!(requests.len(), MAX_REGISTRIES + 1);
        assert_eq!(requests[OTHER].counts.iter().sum::<u64>(), 5);
    }

    #[test]
    fn the_refresher_s_last_run_is_shown_once_there_was_one() {
        let metrics = Metrics::default();
        assert!(!rendered(&metrics).contains("pinion_refresh_last_run"));
        metrics.refresh_ran("webhook", 1_765_119_600.5, Duration::from_millis(250));
        let text = rendered(&metrics);
        assert!(text.contains("pinion_refresh_last_run_timestamp_seconds 1765119600.5\n"), "{text}");
        assert!(text.contains("pinion_refresh_last_run_duration_seconds 0.25\n"), "{text}");
        assert!(text.contains("pinion_refresh_runs_total{source=\"webhook\"} 1\n"), "{text}");
        assert!(text.contains("pinion_refresh_runs_total{source=\"refresh\"} 0\n"), "{text}");
    }

    #[test]
    fn fleets_past_the_cap_are_summed_as_other() {
        let names = ["a", "b", "b", "c", "c", "c", "d"];
        assert_eq!(capped_counts(names, 2), vec![("c".to_string(), 3), ("b".to_string(), 2), (OTHER.to_string(), 2)]);
        assert_eq!(capped_counts(names, 10).len(), 4);
        assert!(!crate::fleets::is_valid_fleet_name(OTHER));
        assert!(Reference::parse(&format!("{OTHER}/x:1")).map_or(true, |r| r.domain() != OTHER));
    }
}
