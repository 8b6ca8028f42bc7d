//! Running one job per item concurrently and collecting what is answered within one
//! deadline: the caller is never held past it, and jobs still running are left to finish
//! on their own (each registry request has its own timeout, so they do end).
//!
//! Bounded twice: one call starts at most `THREADS_PER_CALL` threads, which take the
//! items in turn, and at most `RUNNING_SERVER_WIDE` jobs run at once in the whole
//! process (every target POST and the refresher share them). A webhook naming 5,500
//! references once started 5,500 threads and ran the process out of descriptors.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Threads one call starts at most.
pub(crate) const THREADS_PER_CALL: usize = 16;
/// Jobs (registry resolutions) running at once in the process at most.
pub(crate) const RUNNING_SERVER_WIDE: usize = 32;

/// What became of one item's job.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome<V> {
    Done(V),
    /// Not answered before the deadline (or its thread died without answering).
    Late,
    /// No thread could be started for it; the reason.
    NotStarted(String),
}

/// The process's permits to run a job: taken before, given back after (also when the
/// job panics).
struct Permits {
    running: Mutex<usize>,
    freed: Condvar,
}

static PERMITS: Permits = Permits { running: Mutex::new(0), freed: Condvar::new() };

struct Permit;

impl Permits {
    /// A permit, waiting for one until `until`; `None` if none came in time.
    fn take(&'static self, until: Instant) -> Option<Permit> {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        while *running >= RUNNING_SERVER_WIDE {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            running = self.freed.wait_timeout(running, left).unwrap_or_else(|p| p.into_inner()).0;
        }
        *running += 1;
        Some(Permit)
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        *PERMITS.running.lock().unwrap_or_else(|p| p.into_inner()) -= 1;
        PERMITS.freed.notify_one();
    }
}

/// Runs `job` for every item, a few at a time; returns the items in order with their
/// outcomes. An item whose job has not finished (or not started) by `deadline` is `Late`.
pub(crate) fn run_with_deadline<K, V, F>(items: Vec<K>, deadline: Duration, job: F) -> Vec<(K, Outcome<V>)>
where
    K: Clone + Send + Sync + 'static,
    V: Send + 'static,
    F: Fn(&K) -> V + Send + Sync + 'static,
{
    let until = Instant::now() + deadline;
    let shared = Arc::new((items.clone(), job, AtomicUsize::new(0)));
    let (tx, rx) = mpsc::channel::<(usize, V)>();
    let mut outcomes: Vec<Outcome<V>> = items.iter().map(|_| Outcome::Late).collect();
    let mut started = 0;
    let mut spawn_error = None;
    for worker in 0..items.len().min(THREADS_PER_CALL) {
        let (tx, shared) = (tx.clone(), Arc::clone(&shared));
        let spawned = thread::Builder::new().name(format!("pinion-resolve-{worker}")).spawn(move || {
            let (items, job, next) = &*shared;
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                let Some(item) = items.get(index) else { return };
                let Some(permit) = PERMITS.take(until) else { return };
                let value = job(item);
                drop(permit);
                // The receiver is gone once the deadline passed: the answer is dropped.
                if tx.send((index, value)).is_err() {
                    return;
                }
            }
        });
        match spawned {
            Ok(_) => started += 1,
            Err(e) => spawn_error = Some(e.to_string()),
        }
    }
    if started == 0 {
        let reason = spawn_error.unwrap_or_default();
        return items.into_iter().map(|item| (item, Outcome::NotStarted(reason.clone()))).collect();
    }
    // Only the threads hold senders now: when all have ended, `recv` stops waiting.
    drop(tx);
    let mut answered = 0;
    while answered < outcomes.len() {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match rx.recv_timeout(left) {
            Ok((index, value)) => {
                if let Some(slot) = outcomes.get_mut(index) {
                    *slot = Outcome::Done(value);
                }
                answered += 1;
            }
            Err(_) => break, // deadline passed, or every thread has ended
        }
    }
    items.into_iter().zip(outcomes).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_in_time_are_kept_and_hanging_jobs_are_left_behind() {
        let started = Instant::now();
        let results = run_with_deadline(vec![1u64, 2, 3], Duration::from_millis(300), |&n| {
            if n == 2 {
                thread::sleep(Duration::from_secs(30));
            }
            n * 10
        });
        assert!(started.elapsed() < Duration::from_secs(20), "waited for the hanging job");
        assert_eq!(results, [(1, Outcome::Done(10)), (2, Outcome::Late), (3, Outcome::Done(30))]);
    }

    #[test]
    fn a_job_that_panics_is_late_and_does_not_hold_the_caller() {
        let started = Instant::now();
        let results = run_with_deadline(vec![false, true], Duration::from_secs(30), |&boom| {
            if boom {
                panic!("job failed (expected in this test)");
            }
            "ok"
        });
        assert!(started.elapsed() < Duration::from_secs(20), "waited for the deadline");
        assert_eq!(results, [(false, Outcome::Done("ok")), (true, Outcome::Late)]);
    }

    #[test]
    fn many_items_run_on_a_few_threads_and_never_more_at_once_than_the_server_allows() {
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let (r, m) = (running, Arc::clone(&most));
        // Four calls at once: 64 threads, of which never more than 32 run a job.
        let calls: Vec<_> = (0..4)
            .map(|_| {
                let (r, m) = (Arc::clone(&r), Arc::clone(&m));
                thread::spawn(move || {
                    run_with_deadline((0..200u32).collect(), Duration::from_secs(60), move |&n| {
                        let now = r.fetch_add(1, Ordering::SeqCst) + 1;
                        m.fetch_max(now, Ordering::SeqCst);
                        thread::sleep(Duration::from_millis(5));
                        r.fetch_sub(1, Ordering::SeqCst);
                        n
                    })
                })
            })
            .collect();
        for call in calls {
            let results = call.join().unwrap();
            assert!(results.iter().all(|(n, outcome)| *outcome == Outcome::Done(*n)));
        }
        let most = most.load(Ordering::SeqCst);
        assert!(most <= RUNNING_SERVER_WIDE, "{most} at once");
        assert!(most > THREADS_PER_CALL, "the calls did run side by side ({most} at once at most)");
    }

    #[test]
    fn no_items_no_wait() {
        let results = run_with_deadline(Vec::<u8>::new(), Duration::from_secs(30), |_| ());
        assert!(results.is_empty());
    }
}
