//! Change windows and freezes: may a step advance at `now`, and if not, when may it. Pure: the
//! clock comes in as an argument, the time zone rules from jiff's database.
//!
//! Rules, chosen so that a reader can predict them:
//! - a window `[start, end)` opens on each listed day at `start` local time; an `end` at or
//!   before `start` closes on the next day (22:00-06:00 on `fri` runs Friday night into Saturday
//!   morning); `24:00` ends at midnight;
//! - local times follow daylight saving time; a start inside a spring-forward gap opens at the
//!   first instant after the gap (jiff's "compatible" rule), an ambiguous one at its first instance;
//! - a freeze `[from, to)` wins over any window;
//! - no windows means any time outside a freeze.

use jiff::civil::{Date, Weekday as CivilWeekday};
use jiff::tz::TimeZone;
use jiff::{Timestamp, Zoned};

use crate::spec::{ChangeWindow, Freeze, Rollout, Weekday};

/// Why a step may not advance now, and when it may.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    /// For `status`: "waiting for window (opens Mon 09:00 JST)".
    pub reason: String,
    /// Unix seconds when steps may advance again; None when never (a permanent freeze) or
    /// unknown (a window that cannot be read).
    pub until: Option<i64>,
}

/// A window ready to evaluate.
struct Compiled {
    days: Vec<CivilWeekday>,
    /// Minutes after local midnight.
    start: u32,
    end: u32,
    tz: TimeZone,
}

/// `HH:MM`, 00:00-23:59; `24:00` too when `end` is true. Returns minutes after midnight.
pub fn parse_hhmm(s: &str, end: bool) -> Result<u32, String> {
    let bad = || {
        format!(
            "'{s}' is not a time HH:MM (00:00-23:59{})",
            if end { " or 24:00" } else { "" }
        )
    };
    let (h, m) = s.split_once(':').ok_or_else(bad)?;
    if h.len() != 2 || m.len() != 2 || !h.bytes().chain(m.bytes()).all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let (h, m): (u32, u32) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    match (h, m) {
        (24, 0) if end => Ok(24 * 60),
        (0..=23, 0..=59) => Ok(h * 60 + m),
        _ => Err(bad()),
    }
}

/// The IANA zone, or why not.
pub fn zone(name: &str) -> Result<TimeZone, String> {
    TimeZone::get(name).map_err(|_| {
        format!(
            "unknown time zone '{name}': use an IANA name such as Europe/Berlin, Asia/Tokyo or UTC"
        )
    })
}

/// An RFC 3339 instant with an offset.
pub fn parse_instant(s: &str) -> Result<Timestamp, String> {
    s.parse::<Timestamp>().map_err(|_| {
        format!("'{s}' is not an RFC 3339 time with an offset, e.g. 2026-12-24T00:00:00Z")
    })
}

fn civil_day(d: Weekday) -> CivilWeekday {
    match d {
        Weekday::Mon => CivilWeekday::Monday,
        Weekday::Tue => CivilWeekday::Tuesday,
        Weekday::Wed => CivilWeekday::Wednesday,
        Weekday::Thu => CivilWeekday::Thursday,
        Weekday::Fri => CivilWeekday::Friday,
        Weekday::Sat => CivilWeekday::Saturday,
        Weekday::Sun => CivilWeekday::Sunday,
    }
}

fn compile(w: &ChangeWindow) -> Result<Compiled, String> {
    Ok(Compiled {
        days: w.days.iter().copied().map(civil_day).collect(),
        start: parse_hhmm(&w.start, false)?,
        end: parse_hhmm(&w.end, true)?,
        tz: zone(&w.time_zone)?,
    })
}

/// Local `minutes` after midnight of `day` in `tz` as an instant.
fn at(day: Date, minutes: u32, tz: &TimeZone) -> Option<Timestamp> {
    let (day, minutes) = if minutes >= 24 * 60 {
        (day.tomorrow().ok()?, minutes - 24 * 60)
    } else {
        (day, minutes)
    };
    let dt = day.at((minutes / 60) as i8, (minutes % 60) as i8, 0, 0);
    dt.to_zoned(tz.clone()).ok().map(|z| z.timestamp())
}

impl Compiled {
    /// The occurrence opening on local `day`, if the window opens that day.
    fn occurrence(&self, day: Date) -> Option<(Timestamp, Timestamp)> {
        if !self.days.contains(&day.weekday()) {
            return None;
        }
        let open = at(day, self.start, &self.tz)?;
        let end_day = if self.end <= self.start {
            day.tomorrow().ok()?
        } else {
            day
        };
        let close = at(end_day, self.end, &self.tz)?;
        (open < close).then_some((open, close))
    }

    /// Occurrences that open from the day before `t`'s local day to `days` days after it.
    fn around(&self, t: Timestamp, days: i64) -> Vec<(Timestamp, Timestamp)> {
        let today = t.to_zoned(self.tz.clone()).date();
        (-1..=days)
            .filter_map(|i| today.checked_add(jiff::Span::new().days(i)).ok())
            .filter_map(|d| self.occurrence(d))
            .collect()
    }
}

struct Rules {
    windows: Vec<Compiled>,
    freeze: Vec<(Timestamp, Timestamp)>,
}

impl Rules {
    fn new(windows: &[ChangeWindow], freeze: &[Freeze]) -> Result<Rules, String> {
        Ok(Rules {
            windows: windows.iter().map(compile).collect::<Result<_, _>>()?,
            freeze: freeze
                .iter()
                .map(|f| Ok((parse_instant(&f.from)?, parse_instant(&f.to)?)))
                .collect::<Result<_, String>>()?,
        })
    }

    /// The end of the freeze covering `t` that lasts longest, if any covers it.
    fn frozen_until(&self, t: Timestamp) -> Option<Timestamp> {
        self.freeze
            .iter()
            .filter(|(from, to)| *from <= t && t < *to)
            .map(|(_, to)| *to)
            .max()
    }

    /// The window occurrence containing `t`, as (window index, close).
    fn open_window(&self, t: Timestamp) -> Option<usize> {
        if self.windows.is_empty() {
            return None;
        }
        self.windows.iter().position(|w| {
            w.around(t, 0)
                .iter()
                .any(|(open, close)| *open <= t && t < *close)
        })
    }

    fn allowed(&self, t: Timestamp) -> bool {
        self.frozen_until(t).is_none() && (self.windows.is_empty() || self.open_window(t).is_some())
    }

    /// The first instant at or after `now` when steps may advance, with the zone to show it in.
    fn next_allowed(&self, now: Timestamp) -> Option<(Timestamp, TimeZone)> {
        let mut t = now;
        // Each turn jumps to a freeze end or a window opening; weekly windows repeat, so a few
        // hundred turns cover any sane mix of overlapping freezes.
        for _ in 0..512 {
            if let Some(to) = self.frozen_until(t) {
                t = to;
                continue;
            }
            if self.windows.is_empty() {
                return Some((t, TimeZone::UTC));
            }
            if let Some(i) = self.open_window(t) {
                return Some((t, self.windows[i].tz.clone()));
            }
            t = self
                .windows
                .iter()
                .flat_map(|w| w.around(t, 8))
                .map(|(open, _)| open)
                .filter(|open| *open > t)
                .min()?;
        }
        None
    }
}

fn show(t: Timestamp, tz: TimeZone) -> String {
    let z: Zoned = t.to_zoned(tz);
    z.strftime("%a %H:%M %Z").to_string()
}

/// Whether a step may advance at `now` (Unix seconds): None if it may, else why not and until when.
pub fn hold_at(windows: &[ChangeWindow], freeze: &[Freeze], now: i64) -> Option<Hold> {
    if windows.is_empty() && freeze.is_empty() {
        return None;
    }
    let rules = match Rules::new(windows, freeze) {
        Ok(r) => r,
        // `validate` refuses these; a zone missing from this host's database fails closed.
        Err(why) => {
            return Some(Hold {
                reason: format!("a readable change window ({why})"),
                until: None,
            })
        }
    };
    let now = Timestamp::from_second(now).ok()?;
    if rules.allowed(now) {
        return None;
    }
    let what = if rules.frozen_until(now).is_some() {
        "waiting for the change freeze to end"
    } else {
        "waiting for window"
    };
    Some(match rules.next_allowed(now) {
        Some((t, tz)) => Hold {
            reason: format!("{what} (opens {})", show(t, tz)),
            until: Some(t.as_second()),
        },
        None => Hold {
            reason: format!("{what} (no window opens after the freeze)"),
            until: None,
        },
    })
}

/// The hold a split's rollout settings put on step advances at `now` (Unix seconds).
pub fn hold(rollout: Option<&Rollout>, now: u64) -> Option<Hold> {
    let r = rollout?;
    hold_at(&r.windows, &r.freeze, i64::try_from(now).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn win(days: &[Weekday], start: &str, end: &str, tz: &str) -> ChangeWindow {
        ChangeWindow {
            days: days.to_vec(),
            start: start.into(),
            end: end.into(),
            time_zone: tz.into(),
        }
    }
    fn ts(s: &str) -> i64 {
        s.parse::<Timestamp>().unwrap().as_second()
    }
    use Weekday::*;
    const WEEKDAYS: [Weekday; 5] = [Mon, Tue, Wed, Thu, Fri];

    #[test]
    fn tokyo_business_hours() {
        let w = [win(&WEEKDAYS, "09:00", "17:00", "Asia/Tokyo")];
        // 2026-12-02 is a Wednesday. Tokyo is UTC+9 all year.
        // (instant, expected hold reason or None, expected until)
        let table: [(&str, Option<&str>, Option<&str>); 6] = [
            ("2026-12-02T00:00:00Z", None, None), // 09:00 JST: opens, inclusive
            ("2026-12-02T07:59:59Z", None, None), // 16:59:59 JST
            (
                "2026-12-02T08:00:00Z", // 17:00 JST: closed, exclusive
                Some("waiting for window (opens Thu 09:00 JST)"),
                Some("2026-12-03T00:00:00Z"),
            ),
            (
                "2026-12-01T23:59:00Z", // Wed 08:59 JST
                Some("waiting for window (opens Wed 09:00 JST)"),
                Some("2026-12-02T00:00:00Z"),
            ),
            (
                "2026-12-04T10:00:00Z", // Fri 19:00 JST: next is Monday
                Some("waiting for window (opens Mon 09:00 JST)"),
                Some("2026-12-07T00:00:00Z"),
            ),
            (
                "2026-12-05T03:00:00Z", // Sat noon JST
                Some("waiting for window (opens Mon 09:00 JST)"),
                Some("2026-12-07T00:00:00Z"),
            ),
        ];
        for (now, reason, until) in table {
            let h = hold_at(&w, &[], ts(now));
            assert_eq!(h.as_ref().map(|h| h.reason.as_str()), reason, "{now}");
            assert_eq!(h.and_then(|h| h.until), until.map(ts), "{now}");
        }
    }

    #[test]
    fn overnight_window_belongs_to_the_day_it_opens() {
        let w = [win(&[Fri], "22:00", "06:00", "UTC")];
        // 2026-12-04 is a Friday.
        assert_eq!(hold_at(&w, &[], ts("2026-12-04T22:00:00Z")), None);
        assert_eq!(
            hold_at(&w, &[], ts("2026-12-05T05:59:00Z")),
            None,
            "Saturday morning"
        );
        let h = hold_at(&w, &[], ts("2026-12-05T06:00:00Z")).expect("closed at 06:00");
        assert_eq!(h.reason, "waiting for window (opens Fri 22:00 UTC)");
        assert_eq!(h.until, Some(ts("2026-12-11T22:00:00Z")));
        // Thursday night is not Friday's window.
        assert!(hold_at(&w, &[], ts("2026-12-04T01:00:00Z")).is_some());
        // 24:00 ends at midnight.
        let w = [win(&[Fri], "20:00", "24:00", "UTC")];
        assert_eq!(hold_at(&w, &[], ts("2026-12-04T23:59:59Z")), None);
        assert!(hold_at(&w, &[], ts("2026-12-05T00:00:00Z")).is_some());
    }

    #[test]
    fn windows_follow_daylight_saving_time() {
        let w = [win(&WEEKDAYS, "09:00", "17:00", "Europe/Berlin")];
        // Winter (CET, UTC+1): 09:00 local is 08:00Z. Summer (CEST, UTC+2): 07:00Z.
        assert!(
            hold_at(&w, &[], ts("2026-03-27T07:30:00Z")).is_some(),
            "Fri 08:30 CET"
        );
        assert_eq!(
            hold_at(&w, &[], ts("2026-03-27T08:00:00Z")),
            None,
            "Fri 09:00 CET"
        );
        // Clocks go forward on Sunday 2026-03-29; Monday 09:00 CEST is 07:00Z.
        let h = hold_at(&w, &[], ts("2026-03-28T12:00:00Z")).unwrap();
        assert_eq!(h.reason, "waiting for window (opens Mon 09:00 CEST)");
        assert_eq!(h.until, Some(ts("2026-03-30T07:00:00Z")));
        assert_eq!(hold_at(&w, &[], ts("2026-03-30T07:00:00Z")), None);
        assert!(
            hold_at(&w, &[], ts("2026-03-30T15:00:00Z")).is_some(),
            "17:00 CEST"
        );
        // A start inside the spring-forward gap (02:30 does not exist) opens after the gap.
        let w = [win(&[Sun], "02:30", "04:00", "Europe/Berlin")];
        let h = hold_at(&w, &[], ts("2026-03-29T00:00:00Z")).unwrap();
        assert_eq!(h.until, Some(ts("2026-03-29T01:30:00Z")), "03:30 CEST");
    }

    #[test]
    fn freeze_wins_over_windows() {
        let w = [win(&WEEKDAYS, "09:00", "17:00", "UTC")];
        let f = [Freeze {
            from: "2026-12-24T00:00:00Z".into(),
            to: "2026-12-28T12:00:00Z".into(),
        }];
        // Thu 24 Dec 10:00 is inside the window but frozen; Mon 28 Dec 09:00 still frozen;
        // the freeze ends Mon 12:00, inside that day's window.
        let h = hold_at(&w, &f, ts("2026-12-24T10:00:00Z")).unwrap();
        assert_eq!(
            h.reason,
            "waiting for the change freeze to end (opens Mon 12:00 UTC)"
        );
        assert_eq!(h.until, Some(ts("2026-12-28T12:00:00Z")));
        // Without windows a freeze alone holds, and its end is the opening.
        let h = hold_at(&[], &f, ts("2026-12-25T00:00:00Z")).unwrap();
        assert_eq!(h.until, Some(ts("2026-12-28T12:00:00Z")));
        assert_eq!(
            hold_at(&[], &f, ts("2026-12-28T12:00:00Z")),
            None,
            "end is exclusive"
        );
        assert_eq!(hold_at(&[], &f, ts("2026-12-23T23:59:59Z")), None);
        // A freeze ending after the window closed waits for the next window.
        let f = [Freeze {
            from: "2026-12-24T00:00:00Z".into(),
            to: "2026-12-28T18:00:00Z".into(),
        }];
        let h = hold_at(&w, &f, ts("2026-12-24T10:00:00Z")).unwrap();
        assert_eq!(h.until, Some(ts("2026-12-29T09:00:00Z")));
    }

    #[test]
    fn nothing_configured_never_holds_and_bad_zone_fails_closed() {
        assert_eq!(hold_at(&[], &[], 0), None);
        let w = [win(&[Mon], "09:00", "17:00", "Mars/Olympus")];
        let h = hold_at(&w, &[], ts("2026-12-07T10:00:00Z")).unwrap();
        assert!(
            h.reason.contains("unknown time zone 'Mars/Olympus'"),
            "{}",
            h.reason
        );
        assert_eq!(h.until, None);
    }

    #[test]
    fn times_parse_strictly() {
        assert_eq!(parse_hhmm("09:00", false), Ok(540));
        assert_eq!(parse_hhmm("23:59", false), Ok(1439));
        assert_eq!(parse_hhmm("24:00", true), Ok(1440));
        for bad in [
            "24:00", "9:00", "09:60", "0900", "09:00:00", "", "ab:cd", "-1:00",
        ] {
            assert!(parse_hhmm(bad, false).is_err(), "{bad}");
        }
        assert!(parse_hhmm("24:01", true).is_err());
    }
}
