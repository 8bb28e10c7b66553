//! Time as the endpoint keeps and shows it: milliseconds since the Unix epoch, shown as
//! UTC text (`YYYY-MM-DD HH:MM:SS`) on its pages, in the comments it writes on bugs and in
//! the CLI's output.
//!
//! Invariant: [`format_time_ms`] takes any `u64` (a node's clock is its own, so an
//! incident's time is whatever it says) and never panics; a time outside the calendar
//! chrono knows (past the year 262,000) is shown as its number of milliseconds.

/// Milliseconds since the Unix epoch, by the system clock (0 before the epoch).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or(0)
}

/// Seconds since the Unix epoch, by the system clock.
pub fn now_secs() -> u64 {
    now_ms() / 1000
}

/// `YYYY-MM-DD HH:MM:SS` UTC.
pub fn format_time_ms(time_ms: u64) -> String {
    i64::try_from(time_ms)
        .ok()
        .and_then(chrono::DateTime::from_timestamp_millis)
        .map(|time| time.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| format!("{time_ms} ms after the epoch"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_utc_text_whatever_their_value() {
        assert_eq!(format_time_ms(0), "1970-01-01 00:00:00");
        assert_eq!(format_time_ms(1_700_000_000_000), "2023-11-14 22:13:20");
        // A leap day, and the last millisecond of a year.
        assert_eq!(format_time_ms(951_782_400_000), "2000-02-29 00:00:00");
        assert_eq!(format_time_ms(1_704_067_199_999), "2023-12-31 23:59:59");
        assert_eq!(
            format_time_ms(u64::MAX),
            "18446744073709551615 ms after the epoch"
        );
    }
}
