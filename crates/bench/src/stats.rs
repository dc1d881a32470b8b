//! Percentiles, histogram helpers and human/JSON formatting of durations.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::error::BenchError;

/// Highest latency the histograms track, in µs (one hour; larger values are clamped).
const MAX_TRACKED_US: u64 = 3_600_000_000;

/// A new latency histogram in µs with 3 significant digits.
pub(crate) fn new_histogram() -> Result<Histogram<u64>, BenchError> {
    Histogram::new_with_bounds(1, MAX_TRACKED_US, 3)
        .map_err(|e| BenchError::Histogram(e.to_string()))
}

/// Records one latency, clamped to the histogram's range.
pub(crate) fn record(h: &mut Histogram<u64>, latency: Duration) {
    let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
    h.saturating_record(us);
}

/// Latency percentiles read off a histogram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Latencies {
    pub p50: Duration,
    pub p90: Duration,
    pub p99: Duration,
    pub p999: Duration,
    pub max: Duration,
}

impl Latencies {
    pub(crate) fn from_histogram(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let q = |q: f64| Duration::from_micros(h.value_at_quantile(q));
        Latencies {
            p50: q(0.50),
            p90: q(0.90),
            p99: q(0.99),
            p999: q(0.999),
            max: Duration::from_micros(h.max()),
        }
    }
}

/// Order statistics of a set of timed runs.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Timing {
    /// Fastest run.
    #[serde(rename = "min_ms", serialize_with = "ser::millis_f64")]
    pub min: Duration,
    /// Median run.
    #[serde(rename = "median_ms", serialize_with = "ser::millis_f64")]
    pub median: Duration,
    /// 90th percentile (nearest rank).
    #[serde(rename = "p90_ms", serialize_with = "ser::millis_f64")]
    pub p90: Duration,
    /// Slowest run.
    #[serde(rename = "max_ms", serialize_with = "ser::millis_f64")]
    pub max: Duration,
}

impl Timing {
    /// The statistics of `samples` (any order); `None` when there are none.
    pub(crate) fn from(samples: &[Duration]) -> Option<Timing> {
        let mut sorted = samples.to_vec();
        sorted.sort();
        Some(Timing {
            min: *sorted.first()?,
            median: median(&sorted)?,
            p90: percentile(&sorted, 0.9)?,
            max: *sorted.last()?,
        })
    }
}

/// Nearest-rank percentile (`q` in 0..=1) of an ascending slice; `None` if it is empty.
pub(crate) fn percentile(sorted: &[Duration], q: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let n = sorted.len();
    let rank = (q.clamp(0.0, 1.0) * n as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, n) - 1])
}

/// Median of an ascending slice (mean of the two middle values for an even count).
pub(crate) fn median(sorted: &[Duration]) -> Option<Duration> {
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2),
    }
}

/// Formats a latency compactly: `870µs`, `1.24ms`, `3.10s`.
pub(crate) fn fmt_latency(d: Duration) -> String {
    if d < Duration::from_millis(1) {
        format!("{}µs", d.as_micros())
    } else if d < Duration::from_secs(1) {
        format!("{:.2}ms", d.as_secs_f64() * 1e3)
    } else {
        format!("{:.2}s", d.as_secs_f64())
    }
}

/// Formats a duration in milliseconds with one decimal: `12.3 ms`.
pub(crate) fn fmt_ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// Formats a count with thousands separators: `1 234 567`.
pub(crate) fn fmt_count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

/// serde helpers: durations as plain numbers, since `{secs, nanos}` objects are unreadable.
pub(crate) mod ser {
    use serde::Serializer;
    use std::time::Duration;

    pub(crate) fn micros<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
    }

    pub(crate) fn millis_f64<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64() * 1e3)
    }

    pub(crate) fn secs_f64<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub(crate) fn millis_f64_vec<S: Serializer>(v: &[Duration], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|d| d.as_secs_f64() * 1e3))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: &[u64]) -> Vec<Duration> {
        v.iter().map(|&m| Duration::from_millis(m)).collect()
    }

    #[test]
    fn nearest_rank_percentiles() {
        let s = ms(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
        assert_eq!(percentile(&s, 0.0), Some(Duration::from_millis(1)));
        assert_eq!(percentile(&s, 0.5), Some(Duration::from_millis(5)));
        assert_eq!(percentile(&s, 0.9), Some(Duration::from_millis(9)));
        assert_eq!(percentile(&s, 0.91), Some(Duration::from_millis(10)));
        assert_eq!(percentile(&s, 1.0), Some(Duration::from_millis(10)));
        assert_eq!(percentile(&ms(&[7]), 0.9), Some(Duration::from_millis(7)));
        assert_eq!(percentile(&[], 0.5), None);
        assert_eq!(percentile(&s, f64::NAN), Some(Duration::from_millis(1)));
    }

    #[test]
    fn medians() {
        assert_eq!(median(&ms(&[1, 2, 9])), Some(Duration::from_millis(2)));
        assert_eq!(median(&ms(&[1, 2, 4, 9])), Some(Duration::from_millis(3)));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn histogram_percentiles() {
        let mut h = new_histogram().unwrap();
        for us in 1..=1000u64 {
            record(&mut h, Duration::from_micros(us));
        }
        record(&mut h, Duration::from_secs(10 * 3600)); // clamped, not a panic
        let l = Latencies::from_histogram(&h);
        assert!(l.p50 >= Duration::from_micros(499) && l.p50 <= Duration::from_micros(502));
        assert!(l.p90 >= Duration::from_micros(899) && l.p90 <= Duration::from_micros(902));
        assert!(l.p99 >= Duration::from_micros(989) && l.p99 <= Duration::from_micros(992));
        assert!(l.max >= Duration::from_secs(3599));
        assert_eq!(
            Latencies::from_histogram(&new_histogram().unwrap()),
            Latencies::default()
        );
    }

    #[test]
    fn human_formats() {
        assert_eq!(fmt_latency(Duration::from_micros(870)), "870µs");
        assert_eq!(fmt_latency(Duration::from_micros(1240)), "1.24ms");
        assert_eq!(fmt_latency(Duration::from_millis(3100)), "3.10s");
        assert_eq!(fmt_ms(Duration::from_micros(12_345)), "12.3 ms");
        assert_eq!(fmt_count(0), "0");
        assert_eq!(fmt_count(999), "999");
        assert_eq!(fmt_count(1000), "1 000");
        assert_eq!(fmt_count(1_234_567), "1 234 567");
    }
}
