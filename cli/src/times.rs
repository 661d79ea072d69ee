//! Times and sizes as the CLI writes and reads them: wall-clock times in the local time zone,
//! ages (`3 min ago`), durations (`450ms`, `1.2s`, `3m`), and the `DUR`/`SIZE` arguments of
//! commands (`30d`, `64K`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jiff::tz::TimeZone;
use jiff::Timestamp;

/// Now, in milliseconds since the Unix epoch (the unit of every time in the root's JSON).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// How long ago `then_ms` was: `just now`, `12 s ago`, `3 min ago`, `5 h ago`, `2 days ago`, then
/// the local date.
pub fn age(now_ms: u64, then_ms: u64) -> String {
    age_in(now_ms, then_ms, &TimeZone::system())
}

/// [`age`] in a given time zone (tests use UTC).
pub fn age_in(now_ms: u64, then_ms: u64, tz: &TimeZone) -> String {
    let secs = now_ms.saturating_sub(then_ms) / 1000;
    match secs {
        0 => "just now".into(),
        1..=59 => format!("{secs} s ago"),
        60..=3599 => format!("{} min ago", secs / 60),
        3600..=86_399 => format!("{} h ago", secs / 3600),
        86_400..=172_799 => "1 day ago".into(),
        172_800..=604_799 => format!("{} days ago", secs / 86_400),
        _ => format_in(then_ms, "%Y-%m-%d", tz),
    }
}

/// A time as `2026-12-02 08:01:02` in the local time zone.
pub fn local_time(ms: u64) -> String {
    format_in(ms, "%Y-%m-%d %H:%M:%S", &TimeZone::system())
}

/// A time as `2026-12-02 08:01` in the local time zone.
pub fn local_minute(ms: u64) -> String {
    format_in(ms, "%Y-%m-%d %H:%M", &TimeZone::system())
}

/// A time written with a `strftime` format in a time zone; the raw number if it is out of range.
pub fn format_in(ms: u64, format: &str, tz: &TimeZone) -> String {
    i64::try_from(ms)
        .ok()
        .and_then(|ms| Timestamp::from_millisecond(ms).ok())
        .map_or_else(
            || ms.to_string(),
            |t| t.to_zoned_datetime(tz.clone()).strftime(format).to_string(),
        )
}

/// A duration as people read them: `450ms`, `1.2s`, `42s`, `3m`, `3m12s`, `2h5m`, `3d4h`.
pub fn duration(ms: u64) -> String {
    let s = ms / 1000;
    match ms {
        0..=999 => format!("{ms}ms"),
        1000..=9_999 => format!("{:.1}s", ms as f64 / 1000.0),
        10_000..=59_999 => format!("{s}s"),
        60_000..=3_599_999 => with_rest(s / 60, "m", s % 60, "s"),
        3_600_000..=86_399_999 => with_rest(s / 3600, "h", s % 3600 / 60, "m"),
        _ => with_rest(s / 86_400, "d", s % 86_400 / 3600, "h"),
    }
}

fn with_rest(big: u64, big_unit: &str, small: u64, small_unit: &str) -> String {
    if small == 0 {
        format!("{big}{big_unit}")
    } else {
        format!("{big}{big_unit}{small}{small_unit}")
    }
}

/// A `DUR` argument: `500ms`, `1s`, `2m`, `1h` (as every banyan program reads them), and also
/// `30d` and `2w` for token lifetimes and audit windows.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    for (suffix, secs) in [("d", 86_400u64), ("w", 7 * 86_400)] {
        if let Some(n) = t.strip_suffix(suffix) {
            let n: u64 = n.trim().parse().map_err(|_| {
                format!("invalid duration {text:?}: write it like 500ms, 1s, 2m, 1h, 30d or 2w")
            })?;
            return n
                .checked_mul(secs)
                .filter(|&s| s <= 100 * 365 * 86_400)
                .map(Duration::from_secs)
                .ok_or_else(|| format!("invalid duration {text:?}: out of range"));
        }
    }
    banyan_protocol::duration::parse(t)
}

/// A `SIZE` argument: bytes, or `K`, `M`, `G` (powers of 1024, `KiB`/`KB` read the same).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let bad = || format!("invalid size {text:?}: write it like 65536, 64K or 4M");
    let n: u64 = num.parse().map_err(|_| bad())?;
    let unit = unit.trim().to_ascii_lowercase();
    let shift = match unit.trim_end_matches("ib").trim_end_matches('b') {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        _ => return Err(bad()),
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("invalid size {text:?}: too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_grow_from_seconds_to_dates() {
        let utc = TimeZone::UTC;
        let now = 1_764_662_400_000; // 2025-12-02 08:00:00 UTC
        assert_eq!(age_in(now, now + 5_000, &utc), "just now");
        assert_eq!(age_in(now, now - 400, &utc), "just now");
        assert_eq!(age_in(now, now - 12_000, &utc), "12 s ago");
        assert_eq!(age_in(now, now - 3 * 60_000 - 500, &utc), "3 min ago");
        assert_eq!(age_in(now, now - 5 * 3_600_000, &utc), "5 h ago");
        assert_eq!(age_in(now, now - 30 * 3_600_000, &utc), "1 day ago");
        assert_eq!(age_in(now, now - 3 * 86_400_000, &utc), "3 days ago");
        assert_eq!(age_in(now, now - 30 * 86_400_000, &utc), "2025-11-02");
    }

    #[test]
    fn local_times_follow_the_zone() {
        let t = 1_764_662_400_000;
        assert_eq!(
            format_in(t, "%Y-%m-%d %H:%M:%S", &TimeZone::UTC),
            "2025-12-02 08:00:00"
        );
        let paris = TimeZone::get("Europe/Paris").unwrap_or(TimeZone::fixed(jiff::tz::offset(1)));
        assert_eq!(format_in(t, "%H:%M", &paris), "09:00");
    }

    #[test]
    fn durations_read_short() {
        assert_eq!(duration(450), "450ms");
        assert_eq!(duration(1_234), "1.2s");
        assert_eq!(duration(42_000), "42s");
        assert_eq!(duration(180_000), "3m");
        assert_eq!(duration(192_000), "3m12s");
        assert_eq!(duration(7_500_000), "2h5m");
        assert_eq!(duration(3 * 86_400_000 + 4 * 3_600_000), "3d4h");
    }

    #[test]
    fn duration_arguments_take_days_and_weeks_too() {
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_duration("2w"), Ok(Duration::from_secs(14 * 86_400)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert!(parse_duration("xd").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn sizes_are_powers_of_1024() {
        assert_eq!(parse_size("65536"), Ok(65_536));
        assert_eq!(parse_size("64K"), Ok(65_536));
        assert_eq!(parse_size("64KiB"), Ok(65_536));
        assert_eq!(parse_size("4m"), Ok(4 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert!(parse_size("4X").is_err());
        assert!(parse_size("").is_err());
    }
}
