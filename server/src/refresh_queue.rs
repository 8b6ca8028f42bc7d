//! The references webhooks named, waiting to be asked of their registry again: a bounded
//! set, so a reference named a thousand times waits once, and a flood of webhooks costs
//! at most `MAX_WAITING` entries. The API fills it; the refresher takes a batch at a time.

use std::collections::BTreeSet;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// References waiting at most; more are dropped (the periodic refresh asks them anyway).
pub const MAX_WAITING: usize = 10_000;

#[derive(Default)]
pub struct RefreshQueue {
    waiting: Mutex<BTreeSet<String>>,
    arrived: Condvar,
}

impl RefreshQueue {
    /// Adds references; returns how many were dropped because the queue is full.
    pub fn push(&self, references: impl IntoIterator<Item = String>) -> usize {
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        let mut dropped = 0;
        for reference in references {
            if waiting.len() < MAX_WAITING || waiting.contains(&reference) {
                waiting.insert(reference);
            } else {
                dropped += 1;
            }
        }
        self.arrived.notify_one();
        dropped
    }

    /// Up to `max` references, waiting at most `timeout` for the first.
    pub fn take(&self, max: usize, timeout: Duration) -> Vec<String> {
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        if waiting.is_empty() && !timeout.is_zero() {
            waiting = self.arrived.wait_timeout(waiting, timeout).unwrap_or_else(|p| p.into_inner()).0;
        }
        let batch: Vec<String> = waiting.iter().take(max).cloned().collect();
        for reference in &batch {
            waiting.remove(reference);
        }
        batch
    }

    pub fn len(&self) -> usize {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reference_waits_once_and_the_queue_is_bounded() {
        let queue = RefreshQueue::default();
        assert_eq!(queue.push(["a".to_string(), "a".to_string(), "b".to_string()]), 0);
        assert_eq!(queue.len(), 2);
        assert_eq!(queue.push((0..MAX_WAITING + 10).map(|n| format!("r{n}"))), 12);
        assert_eq!(queue.len(), MAX_WAITING);
        assert_eq!(queue.push(["a".to_string()]), 0, "one already waiting is not dropped");
        assert_eq!(queue.take(3, Duration::ZERO), ["a", "b", "r0"]);
        assert_eq!(queue.len(), MAX_WAITING - 3);
    }

    #[test]
    fn taking_from_an_empty_queue_waits_at_most_its_timeout() {
        let queue = RefreshQueue::default();
        assert!(queue.take(10, Duration::from_millis(10)).is_empty());
    }
}
