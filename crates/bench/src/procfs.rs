//! Reading CPU time and peak RSS from `/proc`, and this process's CPU time.

use std::time::Duration;

/// Clock ticks per second for `/proc/<pid>/stat` times (`getconf CLK_TCK`). The kernel's
/// `USER_HZ` is 100 on every mainstream Linux architecture, and rustix offers no `sysconf`.
pub(crate) const CLK_TCK: u64 = 100;

/// `utime + stime` in clock ticks from the contents of `/proc/<pid>/stat`.
///
/// The command name (field 2) is in parentheses and may contain spaces and `)`, so fields are
/// counted from the last `)`.
pub(crate) fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    let mut fields = after.split_ascii_whitespace();
    // After the comm come field 3 (state) ... field 14 (utime), field 15 (stime).
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// `VmHWM` (peak resident set size) in KiB from the contents of `/proc/<pid>/status`.
pub(crate) fn parse_status_vm_hwm_kib(status: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let rest = line.strip_prefix("VmHWM:")?;
        let mut parts = rest.split_ascii_whitespace();
        let value = parts.next()?.parse().ok()?;
        match parts.next() {
            Some("kB") | None => Some(value),
            Some(_) => None,
        }
    })
}

/// CPU time (user + system) consumed so far by process `pid`, from `/proc/<pid>/stat`.
pub(crate) fn process_cpu(pid: u32) -> Result<Duration, String> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).map_err(|e| e.to_string())?;
    let ticks = parse_stat_cpu_ticks(&text).ok_or_else(|| format!("cannot parse {path}"))?;
    Ok(ticks_to_duration(ticks))
}

/// Peak RSS of process `pid` in KiB, from `/proc/<pid>/status`.
pub(crate) fn process_peak_rss_kib(pid: u32) -> Result<u64, String> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).map_err(|e| e.to_string())?;
    parse_status_vm_hwm_kib(&text).ok_or_else(|| format!("no VmHWM line in {path}"))
}

fn ticks_to_duration(ticks: u64) -> Duration {
    Duration::from_secs(ticks / CLK_TCK)
        + Duration::from_nanos((ticks % CLK_TCK) * (1_000_000_000 / CLK_TCK))
}

/// CPU time (user + system, all threads) consumed so far by this process, with nanosecond
/// resolution (`CLOCK_PROCESS_CPUTIME_ID`, the same clock `getrusage(RUSAGE_SELF)` sums up).
pub(crate) fn self_cpu() -> Duration {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_awkward_comm() {
        // Fields 14 and 15 are 7 and 5.
        let line = "1234 (we ird) (name)) S 1 2 3 4 5 6 7 8 9 10 7 5 0 0 20 0 1 0 100 0 0";
        assert_eq!(parse_stat_cpu_ticks(line), Some(12));
        assert_eq!(parse_stat_cpu_ticks("1234 (x) S 1 2"), None);
        assert_eq!(parse_stat_cpu_ticks("garbage"), None);
    }

    #[test]
    fn parses_vm_hwm() {
        let status = "Name:\tcoffer\nVmPeak:\t  20000 kB\nVmHWM:\t    8123 kB\nVmRSS:\t 8000 kB\n";
        assert_eq!(parse_status_vm_hwm_kib(status), Some(8123));
        assert_eq!(parse_status_vm_hwm_kib("Name:\tx\n"), None);
        assert_eq!(parse_status_vm_hwm_kib("VmHWM:\t 12 MB\n"), None);
    }

    #[test]
    fn reads_proc_self() {
        let pid = std::process::id();
        // Burn a little CPU so the tick counters have something to show.
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(30) {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        let cpu = process_cpu(pid).unwrap();
        assert!(cpu > Duration::ZERO, "{cpu:?}");
        let rss = process_peak_rss_kib(pid).unwrap();
        assert!(rss > 100, "{rss} KiB");
        assert!(self_cpu() >= Duration::from_millis(20));
        // Both clocks measure the same thing, at different resolutions (and /proc/self/stat
        // may lag by up to a tick).
        let own = self_cpu();
        assert!(cpu <= own + Duration::from_millis(50), "{cpu:?} vs {own:?}");
    }

    #[test]
    fn missing_process_is_an_error() {
        assert!(process_cpu(u32::MAX).is_err());
        assert!(process_peak_rss_kib(u32::MAX).is_err());
    }

    #[test]
    fn ticks_convert_at_100_hz() {
        assert_eq!(ticks_to_duration(250), Duration::from_millis(2500));
    }
}
