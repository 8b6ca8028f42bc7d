//! Update policies: when may a moved tag reach a device? An operator sets a policy per
//! device (the server has a default): `autoUpdate` off only records the new digest; an
//! `updateWindow` holds it until the window opens. Everything here is pure — `decide`
//! answers "apply now, hold until when, or only record?" for one instant — so the
//! refresher that acts on the answer, and the tests, need no clock and no store.
//!
//! Windows are wall-clock times in an IANA time zone, read from the system's time zone
//! database (jiff, `/usr/share/zoneinfo` or `$TZDIR`; Debian package `tzdata`). `UTC` needs
//! no database.
//!
//! # Which instants a window covers
//!
//! A window `start`–`end` occurs once per local calendar day `D`: it opens at the first
//! instant the local clock reads `D start` or later, and closes at the first instant it
//! reads `D end` or later (`D+1 end` when `end < start`, a window across midnight).
//! The interval is half-open: `start` is inside, `end` is not. For daylight-saving days
//! this means:
//! - Spring forward (Europe/Berlin 2026-03-29, 02:00 → 03:00): a window starting in the
//!   skipped hour opens when the clock jumps, so 02:00–04:00 opens at 03:00 CEST and
//!   lasts one hour. A window lying wholly inside the skipped hour (02:15–02:45) does not
//!   open that day; it opens again the next day.
//! - Fall back (Europe/Berlin 2026-10-25, 03:00 → 02:00): a time in the repeated hour
//!   means its first occurrence, and the window stays open until the clock first reads
//!   the end after that, so 02:00–04:00 is one continuous opening of three hours
//!   (00:00Z–03:00Z), and 01:00–02:30 closes at the first 02:30 and does not reopen.

use crate::Error;
use jiff::civil::{Date, DateTime, Time};
use jiff::tz::{AmbiguousOffset, TimeZone};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// When moved tags may reach one device (or, as the server default, every device
/// without its own policy).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdatePolicy {
    /// `false`: a moved tag is only recorded as a pending update, never applied by itself.
    #[serde(default = "yes")]
    pub auto_update: bool,
    /// `None`: apply at any time.
    #[serde(default)]
    pub update_window: Option<UpdateWindow>,
}

fn yes() -> bool {
    true
}

impl Default for UpdatePolicy {
    /// Apply moved tags at once: what the server did before policies existed.
    fn default() -> UpdatePolicy {
        UpdatePolicy { auto_update: true, update_window: None }
    }
}

/// A daily window of local wall-clock time in which updates may be applied. Valid by
/// construction: times are `HH:MM`, `start != end`, the time zone is known.
#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(try_from = "WindowSpec", into = "WindowSpec")]
pub struct UpdateWindow {
    start: Time,
    end: Time,
    /// The canonical IANA name (`europe/berlin` becomes `Europe/Berlin`).
    timezone: String,
    tz: TimeZone,
}

/// The wire form of a window: `{"start": "02:00", "end": "04:00", "timezone": "Europe/Berlin"}`.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WindowSpec {
    start: String,
    end: String,
    #[serde(default = "utc")]
    timezone: String,
}

fn utc() -> String {
    "UTC".into()
}

impl TryFrom<WindowSpec> for UpdateWindow {
    type Error = Error;

    fn try_from(spec: WindowSpec) -> Result<UpdateWindow, Error> {
        UpdateWindow::new(&spec.start, &spec.end, &spec.timezone)
    }
}

impl From<UpdateWindow> for WindowSpec {
    fn from(window: UpdateWindow) -> WindowSpec {
        WindowSpec { start: hh_mm(window.start), end: hh_mm(window.end), timezone: window.timezone }
    }
}

impl PartialEq for UpdateWindow {
    fn eq(&self, other: &UpdateWindow) -> bool {
        (self.start, self.end, &self.timezone) == (other.start, other.end, &other.timezone)
    }
}

impl UpdateWindow {
    /// A window from `HH:MM` to `HH:MM` in the IANA time zone `timezone`; a `BadRequest`
    /// saying what is wrong otherwise.
    pub fn new(start: &str, end: &str, timezone: &str) -> Result<UpdateWindow, Error> {
        let start_time = parse_hh_mm("start", start)?;
        let end_time = parse_hh_mm("end", end)?;
        if start_time == end_time {
            return Err(bad(format!(
                "updateWindow start and end are both {start}: a window must not be empty \
                 (to allow updates at any time, leave updateWindow out)"
            )));
        }
        let tz = time_zone(timezone)?;
        let timezone = tz.iana_name().unwrap_or(timezone).to_string();
        Ok(UpdateWindow { start: start_time, end: end_time, timezone, tz })
    }

    /// `"HH:MM"`.
    pub fn start(&self) -> String {
        hh_mm(self.start)
    }

    /// `"HH:MM"`.
    pub fn end(&self) -> String {
        hh_mm(self.end)
    }

    /// The IANA name of the window's time zone.
    pub fn timezone(&self) -> &str {
        &self.timezone
    }

    /// The window's occurrence on local day `day` as `[open, close)`; `None` when it
    /// does not open that day (it lies wholly inside a skipped DST hour).
    fn occurrence(&self, day: Date) -> Option<(Timestamp, Timestamp)> {
        let end_day = if self.start < self.end { day } else { day.tomorrow().ok()? };
        let open = first_instant_reading(&self.tz, day.to_datetime(self.start))?;
        let close = first_instant_reading(&self.tz, end_day.to_datetime(self.end))?;
        (open < close).then_some((open, close))
    }

    /// The local days whose occurrence may contain or follow `now`, from the day before
    /// `now`'s local date (a window across midnight opened then) onwards.
    fn days_from(&self, now: Timestamp) -> impl Iterator<Item = Date> {
        let today = self.tz.to_datetime(now).date();
        let first = today.yesterday().unwrap_or(today);
        std::iter::successors(Some(first), |day| day.tomorrow().ok())
    }
}

/// `"02:00-04:00@Europe/Berlin"`, or `"22:00-02:00"` for UTC: the `--update-window` flag.
impl FromStr for UpdateWindow {
    type Err = Error;

    fn from_str(text: &str) -> Result<UpdateWindow, Error> {
        let (times, zone) = text.split_once('@').unwrap_or((text, "UTC"));
        let Some((start, end)) = times.split_once('-') else {
            return Err(bad(format!("update window {text:?}: expected HH:MM-HH:MM or HH:MM-HH:MM@Zone")));
        };
        UpdateWindow::new(start.trim(), end.trim(), zone.trim())
    }
}

impl fmt::Display for UpdateWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}@{}", self.start(), self.end(), self.timezone)
    }
}

/// What to do with a moved tag now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Pin the new digest into the device's target now.
    ApplyNow,
    /// Keep it as a pending update; apply it when the window opens at this instant.
    HoldUntil(Timestamp),
    /// `autoUpdate` is off: keep it as a pending update until the operator acts.
    RecordOnly,
}

/// The one question of this module: may a tag that moved at `now` be applied now?
pub fn decide(policy: &UpdatePolicy, now: Timestamp) -> Decision {
    if !policy.auto_update {
        return Decision::RecordOnly;
    }
    match &policy.update_window {
        None => Decision::ApplyNow,
        Some(window) if window_contains(window, now) => Decision::ApplyNow,
        Some(window) => Decision::HoldUntil(next_opening(window, now)),
    }
}

/// Whether `now` lies in an occurrence of the window (opening instant included, closing
/// instant excluded).
pub fn window_contains(window: &UpdateWindow, now: Timestamp) -> bool {
    // An occurrence of a later day cannot have opened yet, except across a fall-back
    // that moves the local date backwards; looking one day ahead covers it.
    window
        .days_from(now)
        .take(3)
        .filter_map(|day| window.occurrence(day))
        .any(|(open, close)| open <= now && now < close)
}

/// The earliest instant at or after `now` at which the window opens. While the window is
/// open this is the next day's opening.
pub fn next_opening(window: &UpdateWindow, now: Timestamp) -> Timestamp {
    // At most one day's occurrence is ever skipped (a window inside a DST gap), so the
    // loop ends within a few days; the bound only guards against a broken tz database.
    window
        .days_from(now)
        .take(8)
        .filter_map(|day| window.occurrence(day))
        .map(|(open, _)| open)
        .find(|open| *open >= now)
        .unwrap_or_else(|| now.checked_add(jiff::SignedDuration::from_hours(24)).unwrap_or(now))
}

/// The first instant at which the local clock of `tz` reads `dt` or later: `dt` itself
/// when it occurs once, its first occurrence in a repeated (fall-back) hour, and the
/// transition when `dt` falls into a skipped (spring-forward) hour.
fn first_instant_reading(tz: &TimeZone, dt: DateTime) -> Option<Timestamp> {
    match tz.to_ambiguous_timestamp(dt).offset() {
        AmbiguousOffset::Unambiguous { offset } => offset.to_timestamp(dt).ok(),
        AmbiguousOffset::Fold { before, .. } => before.to_timestamp(dt).ok(),
        AmbiguousOffset::Gap { after, .. } => {
            // `dt` read with the later offset is an instant before the jump; the first
            // transition after it is the jump.
            let before_jump = after.to_timestamp(dt).ok()?;
            tz.following(before_jump).next().map(|transition| transition.timestamp())
        }
    }
}

/// Looks up an IANA time zone; `UTC` works without a time zone database.
fn time_zone(name: &str) -> Result<TimeZone, Error> {
    if name.eq_ignore_ascii_case("UTC") {
        return Ok(TimeZone::UTC);
    }
    match jiff::tz::db().get(name) {
        Ok(tz) => Ok(tz),
        Err(_) if jiff::tz::db().is_definitively_empty() => Err(bad(format!(
            "time zone {name:?} cannot be looked up: this server has no time zone database \
             (install the tzdata package, which provides /usr/share/zoneinfo, or set TZDIR); \
             only UTC works without it"
        ))),
        Err(_) => Err(bad(format!(
            "unknown time zone {name:?} in updateWindow: expected an IANA name such as Europe/Berlin or UTC"
        ))),
    }
}

/// Whether a time zone other than UTC can be looked up at all: false when the system
/// has no time zone database.
pub fn time_zone_database_found() -> bool {
    !jiff::tz::db().is_definitively_empty()
}

/// `HH:MM`, 00:00 to 23:59, two digits each.
fn parse_hh_mm(field: &str, text: &str) -> Result<Time, Error> {
    let invalid =
        || bad(format!("updateWindow {field} {text:?} is not a time of day: expected HH:MM from 00:00 to 23:59"));
    let bytes = text.as_bytes();
    if bytes.len() != 5 || bytes[2] != b':' || !text.chars().enumerate().all(|(i, c)| i == 2 || c.is_ascii_digit()) {
        return Err(invalid());
    }
    let hour: i8 = text[..2].parse().map_err(|_| invalid())?;
    let minute: i8 = text[3..].parse().map_err(|_| invalid())?;
    Time::new(hour, minute, 0, 0).map_err(|_| invalid())
}

fn hh_mm(time: Time) -> String {
    format!("{:02}:{:02}", time.hour(), time.minute())
}

fn bad(reason: String) -> Error {
    Error::BadRequest { reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An instant written as RFC 3339 (`2026-03-29T01:00:00Z`).
    fn at(text: &str) -> Timestamp {
        text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    /// Tests in named zones need the system tzdb; the failure says so when it is missing.
    fn window(start: &str, end: &str, zone: &str) -> UpdateWindow {
        UpdateWindow::new(start, end, zone).unwrap_or_else(|e| panic!("window {start}-{end}@{zone}: {e}"))
    }

    fn policy(window: Option<UpdateWindow>) -> UpdatePolicy {
        UpdatePolicy { auto_update: true, update_window: window }
    }

    #[test]
    fn a_same_day_window_in_utc() {
        let w = window("02:00", "04:00", "UTC");
        assert!(!window_contains(&w, at("2026-06-10T01:59:59Z")));
        assert!(window_contains(&w, at("2026-06-10T02:00:00Z")), "start is inside");
        assert!(window_contains(&w, at("2026-06-10T03:59:59Z")));
        assert!(!window_contains(&w, at("2026-06-10T04:00:00Z")), "end is outside");
        assert_eq!(next_opening(&w, at("2026-06-10T01:00:00Z")), at("2026-06-10T02:00:00Z"));
        assert_eq!(next_opening(&w, at("2026-06-10T02:00:00Z")), at("2026-06-10T02:00:00Z"));
        assert_eq!(next_opening(&w, at("2026-06-10T03:00:00Z")), at("2026-06-11T02:00:00Z"), "open: the next day's");
        assert_eq!(next_opening(&w, at("2026-06-10T05:00:00Z")), at("2026-06-11T02:00:00Z"));
    }

    #[test]
    fn a_window_across_midnight_in_utc() {
        let w = window("22:00", "02:00", "UTC");
        assert!(window_contains(&w, at("2026-06-10T23:30:00Z")), "before midnight");
        assert!(window_contains(&w, at("2026-06-11T00:00:00Z")), "at midnight");
        assert!(window_contains(&w, at("2026-06-11T01:59:59Z")), "after midnight");
        assert!(!window_contains(&w, at("2026-06-11T02:00:00Z")));
        assert!(!window_contains(&w, at("2026-06-11T12:00:00Z")), "outside");
        assert!(!window_contains(&w, at("2026-06-11T21:59:59Z")));
        assert_eq!(next_opening(&w, at("2026-06-11T12:00:00Z")), at("2026-06-11T22:00:00Z"));
        assert_eq!(next_opening(&w, at("2026-06-10T23:30:00Z")), at("2026-06-11T22:00:00Z"));
        assert_eq!(next_opening(&w, at("2026-06-11T01:00:00Z")), at("2026-06-11T22:00:00Z"));
        assert_eq!(next_opening(&w, at("2026-12-31T23:00:00Z")), at("2027-01-01T22:00:00Z"), "over a year end");
    }

    #[test]
    fn a_window_in_berlin_follows_local_time_in_summer_and_winter() {
        let w = window("02:00", "04:00", "Europe/Berlin");
        // Summer (CEST, +02): 02:00–04:00 local is 00:00–02:00Z.
        assert!(window_contains(&w, at("2026-07-01T00:00:00Z")));
        assert!(!window_contains(&w, at("2026-07-01T02:00:00Z")));
        assert_eq!(next_opening(&w, at("2026-07-01T12:00:00Z")), at("2026-07-02T00:00:00Z"));
        // Winter (CET, +01): 01:00–03:00Z.
        assert!(!window_contains(&w, at("2026-01-15T00:30:00Z")));
        assert!(window_contains(&w, at("2026-01-15T01:00:00Z")));
        assert_eq!(next_opening(&w, at("2026-01-15T12:00:00Z")), at("2026-01-16T01:00:00Z"));
    }

    #[test]
    fn a_window_across_midnight_in_berlin() {
        let w = window("22:00", "02:00", "Europe/Berlin");
        // Summer: 20:00Z to 00:00Z.
        assert!(window_contains(&w, at("2026-07-01T21:00:00Z")), "before local midnight");
        assert!(window_contains(&w, at("2026-07-01T23:30:00Z")), "after local midnight");
        assert!(!window_contains(&w, at("2026-07-02T00:00:00Z")));
        assert!(!window_contains(&w, at("2026-07-02T10:00:00Z")));
        assert_eq!(next_opening(&w, at("2026-07-02T10:00:00Z")), at("2026-07-02T20:00:00Z"));
        assert_eq!(next_opening(&w, at("2026-07-01T23:30:00Z")), at("2026-07-02T20:00:00Z"));
    }

    #[test]
    fn spring_forward_a_window_starting_in_the_skipped_hour_opens_when_the_clock_jumps() {
        // Europe/Berlin 2026-03-29: 02:00 CET (01:00Z) becomes 03:00 CEST.
        let w = window("02:00", "04:00", "Europe/Berlin");
        assert_eq!(next_opening(&w, at("2026-03-28T12:00:00Z")), at("2026-03-29T01:00:00Z"));
        assert!(!window_contains(&w, at("2026-03-29T00:59:59Z")), "01:59:59 CET");
        assert!(window_contains(&w, at("2026-03-29T01:00:00Z")), "03:00 CEST");
        assert!(window_contains(&w, at("2026-03-29T01:59:59Z")), "03:59:59 CEST");
        assert!(!window_contains(&w, at("2026-03-29T02:00:00Z")), "04:00 CEST: one hour that day");
        assert_eq!(next_opening(&w, at("2026-03-29T01:30:00Z")), at("2026-03-30T00:00:00Z"), "then 02:00 CEST");

        let ends_in_gap = window("01:00", "02:30", "Europe/Berlin");
        assert!(window_contains(&ends_in_gap, at("2026-03-29T00:59:59Z")));
        assert!(!window_contains(&ends_in_gap, at("2026-03-29T01:00:00Z")), "closes at the jump");

        let across_midnight = window("22:00", "02:30", "Europe/Berlin");
        assert!(window_contains(&across_midnight, at("2026-03-28T21:00:00Z")), "22:00 CET");
        assert!(window_contains(&across_midnight, at("2026-03-29T00:59:59Z")));
        assert!(!window_contains(&across_midnight, at("2026-03-29T01:00:00Z")));
    }

    #[test]
    fn spring_forward_a_window_inside_the_skipped_hour_waits_a_day() {
        let w = window("02:15", "02:45", "Europe/Berlin");
        assert!(!window_contains(&w, at("2026-03-29T01:00:00Z")));
        assert_eq!(next_opening(&w, at("2026-03-28T12:00:00Z")), at("2026-03-30T00:15:00Z"));
        let policy = policy(Some(w));
        assert_eq!(decide(&policy, at("2026-03-29T00:00:00Z")), Decision::HoldUntil(at("2026-03-30T00:15:00Z")));
    }

    #[test]
    fn fall_back_a_window_over_the_repeated_hour_is_one_continuous_opening() {
        // Europe/Berlin 2026-10-25: 03:00 CEST (01:00Z) becomes 02:00 CET.
        let w = window("02:00", "04:00", "Europe/Berlin");
        assert_eq!(next_opening(&w, at("2026-10-24T12:00:00Z")), at("2026-10-25T00:00:00Z"), "the first 02:00");
        assert!(!window_contains(&w, at("2026-10-24T23:59:59Z")));
        for t in ["2026-10-25T00:00:00Z", "2026-10-25T00:59:59Z", "2026-10-25T01:00:00Z", "2026-10-25T02:59:59Z"] {
            assert!(window_contains(&w, at(t)), "{t} is inside");
        }
        assert!(!window_contains(&w, at("2026-10-25T03:00:00Z")), "04:00 CET: three hours that day");
        assert_eq!(next_opening(&w, at("2026-10-25T01:30:00Z")), at("2026-10-26T01:00:00Z"), "then 02:00 CET");

        // Ending in the repeated hour: closes at its first 02:30 and does not reopen.
        let w = window("01:00", "02:30", "Europe/Berlin");
        assert!(window_contains(&w, at("2026-10-25T00:29:59Z")), "02:29:59 CEST");
        assert!(!window_contains(&w, at("2026-10-25T00:30:00Z")), "02:30 CEST");
        assert!(!window_contains(&w, at("2026-10-25T01:15:00Z")), "02:15 CET, the second time round");
        // Starting in the repeated hour: opens at its first occurrence, stays open.
        let w = window("02:30", "05:00", "Europe/Berlin");
        assert_eq!(next_opening(&w, at("2026-10-24T12:00:00Z")), at("2026-10-25T00:30:00Z"));
        assert!(window_contains(&w, at("2026-10-25T01:15:00Z")), "02:15 CET is still inside");
        assert!(!window_contains(&w, at("2026-10-25T04:00:00Z")), "05:00 CET");
    }

    #[test]
    fn decisions() {
        let now = at("2026-06-10T12:00:00Z");
        assert_eq!(decide(&UpdatePolicy::default(), now), Decision::ApplyNow, "no window");
        let off = UpdatePolicy { auto_update: false, update_window: None };
        assert_eq!(decide(&off, now), Decision::RecordOnly);
        let off_with_window = UpdatePolicy { auto_update: false, update_window: Some(window("11:00", "13:00", "UTC")) };
        assert_eq!(decide(&off_with_window, now), Decision::RecordOnly, "even inside the window");
        assert_eq!(decide(&policy(Some(window("11:00", "13:00", "UTC"))), now), Decision::ApplyNow);
        assert_eq!(
            decide(&policy(Some(window("02:00", "04:00", "UTC"))), now),
            Decision::HoldUntil(at("2026-06-11T02:00:00Z"))
        );
    }

    #[test]
    fn policies_round_trip_as_json_and_default_to_auto_update() {
        let json = r#"{"autoUpdate":true,"updateWindow":{"start":"02:00","end":"04:00","timezone":"Europe/Berlin"}}"#;
        let parsed: UpdatePolicy = serde_json::from_str(json).unwrap();
        assert_eq!(parsed, policy(Some(window("02:00", "04:00", "Europe/Berlin"))));
        assert_eq!(serde_json::to_string(&parsed).unwrap(), json);
        assert_eq!(serde_json::from_str::<UpdatePolicy>("{}").unwrap(), UpdatePolicy::default());
        let utc: UpdatePolicy = serde_json::from_str(r#"{"updateWindow":{"start":"22:00","end":"02:00"}}"#).unwrap();
        assert_eq!(utc.update_window.unwrap().timezone(), "UTC", "the time zone defaults to UTC");
        let canonical = window("02:00", "04:00", "europe/berlin");
        assert_eq!(canonical.timezone(), "Europe/Berlin");
    }

    #[test]
    fn invalid_windows_say_what_is_wrong() {
        let message = |start: &str, end: &str, zone: &str| UpdateWindow::new(start, end, zone).unwrap_err().to_string();
        for bad_time in ["24:00", "2:00", "02:60", "0200", "02:00:00", "ab:cd", "", "+1:00", "02:0x"] {
            assert!(message(bad_time, "04:00", "UTC").contains("is not a time of day"), "{bad_time}");
            assert!(message("04:00", bad_time, "UTC").contains("updateWindow end"), "{bad_time}");
        }
        assert!(message("02:00", "02:00", "UTC").contains("must not be empty"));
        assert!(message("02:00", "04:00", "Mars/Olympus_Mons").contains("unknown time zone \"Mars/Olympus_Mons\""));
        assert!(matches!(UpdateWindow::new("02:00", "02:00", "UTC"), Err(Error::BadRequest { .. })));

        let unknown_field = serde_json::from_str::<UpdatePolicy>(r#"{"autoupdate":false}"#).unwrap_err();
        assert!(unknown_field.to_string().contains("unknown field `autoupdate`"), "{unknown_field}");
        let bad_time = serde_json::from_str::<UpdatePolicy>(r#"{"updateWindow":{"start":"25:00","end":"01:00"}}"#);
        assert!(bad_time.unwrap_err().to_string().contains("updateWindow start \"25:00\""));
    }

    #[test]
    fn the_update_window_flag() {
        let w: UpdateWindow = "02:00-04:00@Europe/Berlin".parse().unwrap();
        assert_eq!(w, window("02:00", "04:00", "Europe/Berlin"));
        assert_eq!(w.to_string(), "02:00-04:00@Europe/Berlin");
        assert_eq!("22:00-02:00".parse::<UpdateWindow>().unwrap(), window("22:00", "02:00", "UTC"));
        assert!("02:00".parse::<UpdateWindow>().unwrap_err().to_string().contains("expected HH:MM-HH:MM"));
    }
}
