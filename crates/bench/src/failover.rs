//! `coffer bench kms --kill-pid`: what a crash under load costs the callers. The load generator
//! records every call's start and end, SIGKILLs the given process (a keyd replica) part-way
//! through the measurement, and reads the failover off the timeline: the longest time without a
//! successful answer, how the calls in flight at the kill fared, and the latency just before
//! and just after it.

use std::time::Duration;

use serde::Serialize;

use crate::error::BenchError;
use crate::stats::{self, ser, Latencies};

/// How far before and after the kill latencies are compared.
pub(crate) const AROUND: Duration = Duration::from_secs(1);

/// One call of the measured window, as offsets from the window's start.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CallEvent {
    pub start: Duration,
    pub end: Duration,
    pub ok: bool,
}

/// Latency percentiles of the successful calls in a stretch of the timeline.
#[derive(Debug, Clone, Copy, Serialize, Default)]
pub struct Stretch {
    /// Successful calls in it.
    pub calls: u64,
    /// Median latency.
    #[serde(rename = "p50_us", serialize_with = "ser::micros")]
    pub p50: Duration,
    /// 99th percentile latency.
    #[serde(rename = "p99_us", serialize_with = "ser::micros")]
    pub p99: Duration,
    /// Highest latency.
    #[serde(rename = "max_us", serialize_with = "ser::micros")]
    pub max: Duration,
}

/// The failover seen by the callers when `--kill-pid` was killed.
#[derive(Debug, Clone, Serialize)]
pub struct FailoverReport {
    /// The process killed.
    pub pid: u32,
    /// When it was killed, from the start of the measured window.
    #[serde(rename = "killed_at_secs", serialize_with = "ser::secs_f64")]
    pub killed_at: Duration,
    /// Calls started before the kill and still waiting at it.
    pub in_flight: u64,
    /// Of those, how many failed (the API server would have seen these).
    pub in_flight_failed: u64,
    /// The slowest of the calls in flight at the kill: the added latency a caller saw.
    #[serde(rename = "in_flight_max_us", serialize_with = "ser::micros")]
    pub in_flight_max: Duration,
    /// Failed calls that ended after the kill (in flight or started later).
    pub failed_after: u64,
    /// The longest time without any successful answer, from the last one before the kill.
    #[serde(rename = "stall_us", serialize_with = "ser::micros")]
    pub stall: Duration,
    /// The longest such gap before the kill, for comparison (the machine's own hiccups).
    #[serde(rename = "stall_before_us", serialize_with = "ser::micros")]
    pub stall_before: Duration,
    /// Calls that completed in the second before the kill.
    pub before: Stretch,
    /// Calls that started in the second after the kill.
    pub after: Stretch,
}

/// Reads the failover off `events` (any order) for a kill at `killed_at`.
pub(crate) fn analyse(
    pid: u32,
    killed_at: Duration,
    events: &[CallEvent],
) -> Result<FailoverReport, BenchError> {
    let mut ends: Vec<Duration> = events.iter().filter(|e| e.ok).map(|e| e.end).collect();
    ends.sort();
    let gaps = |from: Duration, to: Option<Duration>| {
        let mut last: Option<Duration> = None;
        let mut longest = Duration::ZERO;
        for &end in &ends {
            if to.is_some_and(|to| end >= to) {
                break;
            }
            if let Some(prev) = last {
                if end >= from {
                    longest = longest.max(end - prev);
                }
            }
            last = Some(end);
        }
        longest
    };
    let in_flight: Vec<&CallEvent> = events
        .iter()
        .filter(|e| e.start <= killed_at && e.end > killed_at)
        .collect();
    let stretch = |pick: &dyn Fn(&CallEvent) -> bool| -> Result<Stretch, BenchError> {
        let mut hist = stats::new_histogram()?;
        for e in events.iter().filter(|e| e.ok && pick(e)) {
            stats::record(&mut hist, e.end.saturating_sub(e.start));
        }
        let lat = Latencies::from_histogram(&hist);
        Ok(Stretch {
            calls: hist.len(),
            p50: lat.p50,
            p99: lat.p99,
            max: lat.max,
        })
    };
    let before_from = killed_at.saturating_sub(AROUND);
    Ok(FailoverReport {
        pid,
        killed_at,
        in_flight: in_flight.len() as u64,
        in_flight_failed: in_flight.iter().filter(|e| !e.ok).count() as u64,
        in_flight_max: in_flight
            .iter()
            .map(|e| e.end - e.start)
            .max()
            .unwrap_or_default(),
        failed_after: events.iter().filter(|e| !e.ok && e.end > killed_at).count() as u64,
        // The gap spanning the kill counts: it starts at the last answer before it.
        stall: gaps(killed_at, None),
        stall_before: gaps(Duration::ZERO, Some(killed_at)),
        before: stretch(&|e| e.end >= before_from && e.end < killed_at)?,
        after: stretch(&|e| e.start >= killed_at && e.start < killed_at + AROUND)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn call(start: u64, end: u64, ok: bool) -> CallEvent {
        CallEvent {
            start: ms(start),
            end: ms(end),
            ok,
        }
    }

    #[test]
    fn the_stall_spans_the_kill_and_in_flight_calls_are_counted() {
        // Answers every 10 ms, a kill at 1000 ms, a 300 ms hole, then answers again.
        let mut events: Vec<CallEvent> = (1..=99).map(|i| call(i * 10 - 5, i * 10, true)).collect();
        events.push(call(995, 1250, true)); // in flight, retried on another replica
        events.push(call(998, 1100, false)); // in flight, failed
        events.push(call(1001, 1290, true));
        events.extend((130..200).map(|i| call(i * 10 - 5, i * 10, true)));
        let r = analyse(7, ms(1000), &events).unwrap();
        assert_eq!(r.in_flight, 2);
        assert_eq!(r.in_flight_failed, 1);
        assert_eq!(r.in_flight_max, ms(255));
        assert_eq!(r.failed_after, 1);
        // Last answer before the kill at 990 ms, next at 1250 ms.
        assert_eq!(r.stall, ms(260));
        assert_eq!(r.stall_before, ms(10));
        assert_eq!(r.before.calls, 99);
        // Histogram values, to 3 significant digits.
        assert!(
            r.before.max >= ms(5) && r.before.max < ms(6),
            "{:?}",
            r.before
        );
        assert_eq!(r.after.calls, 1 + 70);
        assert!(
            r.after.max >= ms(289) && r.after.max < ms(290),
            "{:?}",
            r.after
        );
    }

    #[test]
    fn no_calls_is_an_empty_report_not_a_panic() {
        let r = analyse(1, ms(500), &[]).unwrap();
        assert_eq!(
            (r.in_flight, r.stall, r.before.calls),
            (0, Duration::ZERO, 0)
        );
    }
}
