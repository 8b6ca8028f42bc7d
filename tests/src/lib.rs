//! pinion-tests: the end-to-end test harness (real docker-registry processes, fakes for
//! faults a real registry cannot produce, and the pinion binaries as processes).
