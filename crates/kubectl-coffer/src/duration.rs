//! Duration flags (`--timeout 10s`): humantime syntax, held to a range so a typo such as `10ms`
//! for `10m` is refused with the range instead of silently taking effect.

use std::time::Duration;

/// Parses `text` as a humantime duration (`1s`, `2m30s`) within `min..=max`.
pub fn parse_within(text: &str, min: Duration, max: Duration) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text)
        .map_err(|e| format!("{e} (write a duration such as 10s, 2m or 1m30s)"))?;
    if !(min..=max).contains(&duration) {
        return Err(format!("must be between {} and {}", bound(min), bound(max)));
    }
    Ok(duration)
}

/// A whole-second bound in its largest whole unit (`24h`, not humantime's `1day`), as a user
/// would type it.
fn bound(d: Duration) -> String {
    match d.as_secs() {
        s if s >= 3600 && s % 3600 == 0 => format!("{}h", s / 3600),
        s if s >= 60 && s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_parsed_and_held_to_the_range() {
        let (min, max) = (Duration::from_secs(1), Duration::from_secs(300));
        assert_eq!(parse_within("1s", min, max), Ok(min));
        assert_eq!(parse_within("5m", min, max), Ok(max));
        assert_eq!(parse_within("1m30s", min, max), Ok(Duration::from_secs(90)));
        assert_eq!(
            parse_within("10ms", min, max).unwrap_err(),
            "must be between 1s and 5m"
        );
        assert_eq!(
            parse_within("6m", min, max).unwrap_err(),
            "must be between 1s and 5m"
        );
        assert_eq!(
            parse_within("0s", min, Duration::from_secs(86400)).unwrap_err(),
            "must be between 1s and 24h"
        );
        assert!(parse_within("soon", min, max)
            .unwrap_err()
            .contains("such as 10s"));
    }
}
