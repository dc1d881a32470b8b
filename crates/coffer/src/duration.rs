//! The one parser of every duration flag, so each refuses bad values with the same advice.

use std::time::Duration;

/// How a duration is written, quoted in every refusal.
const SYNTAX: &str = "use e.g. 2s, 500ms, 1h30m";

/// A clap value parser for a duration of at least `min`.
///
/// A zero or tiny interval is not a fast setting but a broken one (a tokio interval of zero
/// panics; `--rotate-every 0s` rotates on every check), so it is refused before anything starts.
pub fn at_least(min: Duration) -> impl Fn(&str) -> Result<Duration, String> + Clone {
    move |text| parse(text, min, None)
}

/// As [`at_least`], also refusing values of `max` or more, where `why` says what the bound is.
pub fn between(
    min: Duration,
    max: Duration,
    why: &'static str,
) -> impl Fn(&str) -> Result<Duration, String> + Clone {
    move |text| parse(text, min, Some((max, why)))
}

/// As [`at_least`], also refusing values above `max` (which is itself allowed).
pub fn within(min: Duration, max: Duration) -> impl Fn(&str) -> Result<Duration, String> + Clone {
    move |text| {
        let value = parse(text, min, None)?;
        if value > max {
            return Err(format!(
                "{text} is too long: {SYNTAX}; from {} to {}",
                show(min),
                show(max)
            ));
        }
        Ok(value)
    }
}

fn parse(text: &str, min: Duration, below: Option<(Duration, &str)>) -> Result<Duration, String> {
    let range = match below {
        Some((max, _)) => format!("at least {} and less than {}", show(min), show(max)),
        None => format!("at least {}", show(min)),
    };
    let value = humantime::parse_duration(text.trim())
        .map_err(|e| format!("{text:?} is not a duration ({e}): {SYNTAX}; {range}"))?;
    if value < min {
        return Err(format!("{text} is too short: {SYNTAX}; {range}"));
    }
    if let Some((max, why)) = below {
        if value >= max {
            return Err(format!("{text} is too long ({why}): {SYNTAX}; {range}"));
        }
    }
    Ok(value)
}

/// A bound as an operator writes it: `24h` rather than humantime's `1day`.
fn show(bound: Duration) -> String {
    const HOUR: u64 = 3600;
    match bound.as_secs() {
        secs if secs >= HOUR && secs % HOUR == 0 && bound.subsec_nanos() == 0 => {
            format!("{}h", secs / HOUR)
        }
        _ => humantime::format_duration(bound).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_say_what_a_duration_looks_like_and_the_minimum() {
        let parse = at_least(Duration::from_millis(100));
        assert_eq!(parse("2s").unwrap(), Duration::from_secs(2));
        let zero = parse("0s").unwrap_err();
        assert!(
            zero.contains("e.g. 2s") && zero.contains("at least 100ms"),
            "{zero}"
        );
        let word = parse("abc").unwrap_err();
        assert!(word.contains("\"abc\" is not a duration"), "{word}");
        assert!(word.contains("at least 100ms"), "{word}");
        let bounded = between(
            Duration::from_millis(1),
            Duration::from_secs(3),
            "the limit",
        );
        let long = bounded("3s").unwrap_err();
        assert!(
            long.contains("less than 3s") && long.contains("the limit"),
            "{long}"
        );
        let inclusive = within(Duration::from_secs(1), Duration::from_secs(3600));
        assert_eq!(inclusive("1h").unwrap(), Duration::from_secs(3600));
        let over = inclusive("61m").unwrap_err();
        assert!(over.contains("from 1s to 1h"), "{over}");
    }
}
