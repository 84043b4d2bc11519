//! Plant-local times to UTC: a fixed offset (`+01:00`) or an IANA time zone (`Europe/Berlin`)
//! with its daylight-saving rules (feature `time`).

use chrono::{DateTime, LocalResult, NaiveDateTime, TimeDelta, TimeZone, Utc};

/// Where a plant's local times are.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Zone {
    /// Seconds east of UTC, the same all year.
    Offset(i64),
    /// An IANA time zone; its offset follows the zone's rules on each date.
    Iana(chrono_tz::Tz),
}

impl Zone {
    /// From the two settings a plugin offers: `utc_offset` (`+01:00`, `-05:30`, `Z`) or
    /// `time_zone` (an IANA name). Both at once is an error; neither is UTC.
    pub fn from_settings(
        utc_offset: Option<&str>,
        time_zone: Option<&str>,
    ) -> Result<Zone, String> {
        match (utc_offset, time_zone) {
            (Some(_), Some(_)) => Err(
                "set utc_offset or time_zone, not both: time_zone follows daylight saving time, utc_offset does not".into(),
            ),
            (Some(offset), None) => crate::parse::utc_offset(offset).map(Zone::Offset),
            (None, Some(name)) => name.parse::<chrono_tz::Tz>().map(Zone::Iana).map_err(|_| {
                format!("time_zone {name:?} is not an IANA time zone name, e.g. Europe/Berlin or America/Chicago")
            }),
            (None, None) => Ok(Zone::Offset(0)),
        }
    }

    /// The UTC instant of a local date and time. In a zone, a time that occurs twice (clocks
    /// set back) is the first occurrence, and a time that does not exist (clocks set forward)
    /// is an error that says so.
    pub fn to_utc(&self, local: NaiveDateTime) -> Result<DateTime<Utc>, String> {
        match self {
            Zone::Offset(seconds) => local
                .checked_sub_signed(TimeDelta::seconds(*seconds))
                .map(|utc| utc.and_utc())
                .ok_or_else(|| format!("{local} is out of range")),
            Zone::Iana(tz) => match tz.from_local_datetime(&local) {
                LocalResult::Single(t) => Ok(t.with_timezone(&Utc)),
                LocalResult::Ambiguous(first, _) => Ok(first.with_timezone(&Utc)),
                LocalResult::None => Err(format!(
                    "{local} does not exist in {} (the clocks were set forward)",
                    tz.name()
                )),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(text: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M").unwrap()
    }

    #[test]
    fn a_zone_follows_daylight_saving_time() {
        let berlin = Zone::from_settings(None, Some("Europe/Berlin")).unwrap();
        let utc = |t| berlin.to_utc(local(t)).unwrap().to_rfc3339();
        assert_eq!(utc("2026-01-15 08:00"), "2026-01-15T07:00:00+00:00");
        assert_eq!(utc("2026-07-15 08:00"), "2026-07-15T06:00:00+00:00");
        // 02:30 on 25 October 2026 happens twice: the first (summer time) counts.
        assert_eq!(utc("2026-10-25 02:30"), "2026-10-25T00:30:00+00:00");
        let gap = berlin.to_utc(local("2026-03-29 02:30")).unwrap_err();
        assert!(gap.contains("does not exist in Europe/Berlin"), "{gap}");
    }

    #[test]
    fn settings_are_one_of_offset_or_zone() {
        assert_eq!(Zone::from_settings(None, None), Ok(Zone::Offset(0)));
        assert_eq!(
            Zone::from_settings(Some("+01:00"), None),
            Ok(Zone::Offset(3600))
        );
        assert!(Zone::from_settings(Some("+01:00"), Some("Europe/Berlin")).is_err());
        let bad = Zone::from_settings(None, Some("CEST")).unwrap_err();
        assert!(bad.contains("IANA"), "{bad}");
        let chicago = Zone::from_settings(None, Some("America/Chicago")).unwrap();
        assert_eq!(
            chicago
                .to_utc(local("2026-07-01 00:00"))
                .unwrap()
                .to_rfc3339(),
            "2026-07-01T05:00:00+00:00"
        );
    }
}
