//! Running one job per item on its own thread and collecting what is answered within one
//! deadline: the caller is never held past it, and jobs still running are left to finish
//! on their own (each registry request has its own timeout, so they do end).

use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

/// What became of one item's job.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome<V> {
    Done(V),
    /// Not answered before the deadline (or its thread died without answering).
    Late,
    /// No thread could be started for it; the reason.
    NotStarted(String),
}

/// Runs `job` for every item concurrently; returns the items in order with their outcomes.
pub(crate) fn run_with_deadline<K, V, F>(items: Vec<K>, deadline: Duration, job: F) -> Vec<(K, Outcome<V>)>
where
    K: Clone + Send + 'static,
    V: Send + 'static,
    F: Fn(&K) -> V + Send + Sync + 'static,
{
    let started = Instant::now();
    let job = Arc::new(job);
    let (tx, rx) = mpsc::channel::<(usize, V)>();
    let mut outcomes: Vec<Outcome<V>> = Vec::with_capacity(items.len());
    let mut running = 0usize;
    for (index, item) in items.iter().enumerate() {
        let (tx, job, item) = (tx.clone(), Arc::clone(&job), item.clone());
        let spawned = thread::Builder::new().name(format!("pinion-resolve-{index}")).spawn(move || {
            let value = job(&item);
            // The receiver is gone once the deadline passed: the answer is dropped.
            let _ = tx.send((index, value));
        });
        match spawned {
            Ok(_) => {
                running += 1;
                outcomes.push(Outcome::Late);
            }
            Err(e) => outcomes.push(Outcome::NotStarted(e.to_string())),
        }
    }
    // Only the threads hold senders now: when all have ended, `recv` stops waiting.
    drop(tx);
    while running > 0 {
        let left = deadline.saturating_sub(started.elapsed());
        if left.is_zero() {
            break;
        }
        match rx.recv_timeout(left) {
            Ok((index, value)) => {
                if let Some(slot) = outcomes.get_mut(index) {
                    *slot = Outcome::Done(value);
                }
                running -= 1;
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
    fn no_items_no_wait() {
        let results = run_with_deadline(Vec::<u8>::new(), Duration::from_secs(30), |_| ());
        assert!(results.is_empty());
    }
}
