//! The time the agent decides by. A gateway without an RTC boots at 1970 or at the time
//! fake-hwclock saved, and NTP steps its wall clock later, by hours or years; probation
//! and retry times compared in wall-clock seconds then hold a failed service for years or
//! roll back a good one. Decisions use a `Moment` instead: the boot (the kernel's boot id)
//! and the seconds since it on `CLOCK_BOOTTIME` (monotonic, counting suspend, which no
//! wall-clock step moves). A moment of another boot is past.
//! The wall clock is kept only for what people read (report and log times), and a step
//! of it is logged (`WallClockWatch`).

use std::sync::OnceLock;
use std::time::Duration;

/// A point in time on the boot clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Moment {
    /// `/proc/sys/kernel/random/boot_id`: new on every boot.
    pub boot: String,
    /// Seconds since that boot, suspend included.
    pub uptime: u64,
}

impl Moment {
    /// `d` later, on the same boot.
    pub fn after(&self, d: Duration) -> Moment {
        Moment { boot: self.boot.clone(), uptime: self.uptime.saturating_add(d.as_secs()) }
    }

    /// Whether this moment is still to come at `now`; one of another boot never is.
    pub fn is_after(&self, now: &Moment) -> bool {
        self.boot == now.boot && self.uptime > now.uptime
    }

    /// Seconds from this moment to `now` on the same boot; `None` across boots.
    pub fn seconds_until(&self, now: &Moment) -> Option<u64> {
        (self.boot == now.boot).then(|| now.uptime.saturating_sub(self.uptime))
    }
}

/// Now, on the boot clock.
pub fn now() -> Moment {
    Moment { boot: boot_id().to_string(), uptime: since_boot().as_secs() }
}

/// Time since boot, suspend included: `CLOCK_BOOTTIME`, which `/proc/uptime` shows too
/// (read through the vDSO, where reading that file was five system calls, several times
/// a cycle); without either, time since this process started (and `boot_id` is then
/// this process's own).
pub fn since_boot() -> Duration {
    static STARTED: OnceLock<std::time::Instant> = OnceLock::new();
    let started = *STARTED.get_or_init(std::time::Instant::now);
    boot_time()
        .or_else(|| read_uptime(&std::fs::read_to_string("/proc/uptime").unwrap_or_default()))
        .unwrap_or_else(|| started.elapsed())
}

/// `clock_gettime(CLOCK_BOOTTIME)`. libfaketime (the clock tests) leaves it real when
/// told not to fake the monotonic clocks, as it leaves `/proc/uptime`.
fn boot_time() -> Option<Duration> {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `now` is a valid, writable timespec; clock_gettime writes only into it.
    let status = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut now) };
    // 32 bits wide on armv7 (time_t and long), 64 here.
    #[allow(clippy::unnecessary_cast)]
    let (seconds, nanos) = (now.tv_sec as i64, now.tv_nsec as i64);
    (status == 0 && seconds >= 0 && (0..1_000_000_000).contains(&nanos))
        .then(|| Duration::new(seconds as u64, nanos as u32))
}

/// The first field of `/proc/uptime` (`"12345.67 23456.78"`).
fn read_uptime(text: &str) -> Option<Duration> {
    let seconds: f64 = text.split_whitespace().next()?.parse().ok()?;
    (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds))
}

/// This boot's id, read once.
fn boot_id() -> &'static str {
    static BOOT: OnceLock<String> = OnceLock::new();
    BOOT.get_or_init(|| {
        let id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
        match id.trim() {
            "" => format!("process-{}", crate::identity::random_hex::<16>()),
            id => id.to_string(),
        }
    })
}

/// Notices the wall clock stepping against the boot clock (NTP's first sync on a
/// gateway without an RTC, or an operator's `date -s`).
#[derive(Debug, Default)]
pub struct WallClockWatch {
    /// Wall-clock seconds minus boot-clock seconds when last looked at.
    offset: Option<i64>,
}

/// Steps smaller than this are drift and rounding, not worth a line.
const STEP_WORTH_LOGGING: i64 = 30;

impl WallClockWatch {
    /// The step in seconds (positive: forward) since the last look, when it is worth
    /// saying; `wall` is unix seconds, `uptime` the boot clock's.
    pub fn step(&mut self, wall: u64, uptime: u64) -> Option<i64> {
        let offset = wall as i64 - uptime as i64;
        let step = self.offset.map(|before| offset - before);
        self.offset = Some(offset);
        step.filter(|s| s.abs() >= STEP_WORTH_LOGGING)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(boot: &str, uptime: u64) -> Moment {
        Moment { boot: boot.into(), uptime }
    }

    #[test]
    fn a_moment_of_another_boot_is_past() {
        let deadline = at("a", 100).after(Duration::from_secs(60));
        assert!(deadline.is_after(&at("a", 159)));
        assert!(!deadline.is_after(&at("a", 160)));
        assert!(!deadline.is_after(&at("b", 5)), "after a reboot nothing waits on the old boot's clock");
        assert_eq!(at("a", 100).seconds_until(&at("a", 130)), Some(30));
        assert_eq!(at("a", 100).seconds_until(&at("b", 130)), None);
    }

    #[test]
    fn uptime_is_read_from_proc_uptime() {
        assert_eq!(read_uptime("12345.67 23456.78\n"), Some(Duration::from_secs_f64(12345.67)));
        assert_eq!(read_uptime(""), None);
        assert_eq!(read_uptime("-1 2"), None);
        assert_eq!(read_uptime("NaN 2"), None);
        let (a, b) = (now(), now());
        assert_eq!(a.boot, b.boot);
        assert!(b.uptime >= a.uptime);
    }

    #[test]
    fn the_boot_clock_is_the_one_proc_uptime_shows() {
        let before = read_uptime(&std::fs::read_to_string("/proc/uptime").unwrap()).unwrap();
        let boot = boot_time().expect("CLOCK_BOOTTIME");
        let after = read_uptime(&std::fs::read_to_string("/proc/uptime").unwrap()).unwrap();
        // /proc/uptime shows hundredths.
        assert!(before <= boot + Duration::from_millis(10) && boot <= after + Duration::from_millis(10));
    }

    #[test]
    fn wall_clock_steps_are_noticed_both_ways() {
        let mut watch = WallClockWatch::default();
        assert_eq!(watch.step(100, 100), None, "the first look has nothing to compare with");
        assert_eq!(watch.step(110, 110), None, "both clocks moved together");
        assert_eq!(watch.step(1_765_000_000, 120), Some(1_765_000_000 - 120), "NTP's first sync");
        assert_eq!(watch.step(1_765_000_005, 125), None);
        assert_eq!(watch.step(200, 130), Some(200 - 130 - (1_765_000_005 - 125)), "stepped back");
        assert_eq!(watch.step(210, 140), None);
        assert_eq!(watch.step(215, 140), None, "five seconds of drift");
    }
}
