//! CPU time of other processes (the gateway or broker under test) over a
//! load run's window, read from Linux's `/proc`.
//!
//! Taken here rather than by the script that started the servers because
//! only the load run knows when publishing starts and the drain ends; a
//! window around the whole firmware-sim process would also count connecting
//! the fleet and the quiet wait at the end.

use std::collections::HashMap;

use serde::Serialize;

/// One watched process's CPU time between the start of publishing and the
/// end of the drain, two ways. `None` where the process could not be read
/// at either end (it exited).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct WatchedCpu {
    pub pid: u32,
    /// `utime + stime` of all threads, exited ones included, in clock ticks
    /// (`getconf CLK_TCK`, the reader's to apply): complete but coarse, 10 ms
    /// a tick, a large error on a quiet server's few ticks.
    pub cpu_ticks: Option<u64>,
    /// Nanoseconds on CPU (`/proc/PID/task/*/schedstat`) of the threads alive
    /// at the end, a thread started in the window counted from zero: precise,
    /// but blind to threads that ended inside the window.
    pub cpu_ns: Option<u64>,
}

/// `utime + stime` of `pid`, which the kernel sums over all its threads,
/// exited ones included.
pub fn ticks(pid: u32) -> Result<u64, String> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {path}: {e}"))?;
    parse_ticks(&text).ok_or_else(|| format!("{path} does not have the expected fields"))
}

/// Fields 14 and 15 (utime, stime). The command name (field 2) is in
/// parentheses and may hold spaces or ')', so counting starts after the
/// last ')'.
fn parse_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    // `rest` starts at field 3 (state): utime is the 12th from there.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    utime.checked_add(stime)
}

/// Nanoseconds on CPU of each live thread of `pid`, by thread id.
pub fn thread_ns(pid: u32) -> Result<HashMap<u32, u64>, String> {
    let dir = format!("/proc/{pid}/task");
    let entries = std::fs::read_dir(&dir).map_err(|e| format!("cannot read {dir}: {e}"))?;
    let mut out = HashMap::new();
    for entry in entries.flatten() {
        let Some(tid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        // A thread that ends between listing and reading is simply absent.
        let Ok(text) = std::fs::read_to_string(entry.path().join("schedstat")) else {
            continue;
        };
        if let Some(ns) = text
            .split_ascii_whitespace()
            .next()
            .and_then(|f| f.parse().ok())
        {
            out.insert(tid, ns);
        }
    }
    Ok(out)
}

/// What one process looked like at the start of the window.
struct Start {
    pid: u32,
    ticks: Option<u64>,
    threads: Option<HashMap<u32, u64>>,
}

/// CPU samples of a set of processes, taken at the start of the window.
pub struct Window {
    start: Vec<Start>,
}

fn warn_on<T>(r: Result<T, String>) -> Option<T> {
    r.map_err(|e| tracing::warn!("--cpu-pid: {e}")).ok()
}

impl Window {
    /// Starts the window. A process that cannot be read now is reported
    /// without a figure at the end rather than failing the run.
    pub fn open(pids: &[u32]) -> Window {
        let start = pids
            .iter()
            .map(|&pid| Start {
                pid,
                ticks: warn_on(ticks(pid)),
                threads: warn_on(thread_ns(pid)),
            })
            .collect();
        Window { start }
    }

    pub fn close(self) -> Vec<WatchedCpu> {
        self.start
            .into_iter()
            .map(|s| {
                let cpu_ticks = match (s.ticks, warn_on(ticks(s.pid))) {
                    (Some(b), Some(a)) => Some(a.saturating_sub(b)),
                    _ => None,
                };
                let cpu_ns = match (s.threads, warn_on(thread_ns(s.pid))) {
                    (Some(b), Some(a)) => Some(ns_delta(&b, &a)),
                    _ => None,
                };
                WatchedCpu {
                    pid: s.pid,
                    cpu_ticks,
                    cpu_ns,
                }
            })
            .collect()
    }
}

/// CPU time the threads alive at the end spent since the start.
fn ns_delta(before: &HashMap<u32, u64>, after: &HashMap<u32, u64>) -> u64 {
    after
        .iter()
        .map(|(tid, &ns)| ns.saturating_sub(before.get(tid).copied().unwrap_or(0)))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_utime_plus_stime_past_an_awkward_name() {
        let line = "4242 (a) b (c)) S 1 4242 4242 0 -1 4194560 1000 0 0 0 \
                    731 269 0 0 20 0 9 0 123 456 789";
        assert_eq!(parse_ticks(line), Some(1000));
        assert_eq!(parse_ticks("4242 (x) S 1 2"), None);
        assert_eq!(parse_ticks("no parenthesis"), None);
    }

    #[test]
    fn reads_this_process() {
        let pid = std::process::id();
        assert!(ticks(pid).is_ok());
        assert!(!thread_ns(pid).expect("threads").is_empty());
        let w = Window::open(&[pid, u32::MAX]);
        let got = w.close();
        assert_eq!(got.len(), 2);
        assert!(got[0].cpu_ticks.is_some());
        assert!(got[0].cpu_ns.is_some());
        assert_eq!(
            got[1],
            WatchedCpu {
                pid: u32::MAX,
                cpu_ticks: None,
                cpu_ns: None
            }
        );
    }

    #[test]
    fn a_thread_new_in_the_window_counts_from_zero() {
        let before = HashMap::from([(1, 100), (2, 50)]);
        let after = HashMap::from([(1, 160), (3, 30)]);
        assert_eq!(ns_delta(&before, &after), 90);
    }
}
