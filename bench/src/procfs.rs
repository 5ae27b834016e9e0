//! /proc: the CPU time and memory of process sets, and how busy the whole
//! machine is.
//!
//! It owns reading /proc/PID/stat, /proc/PID/status, /proc/PID/smaps_rollup
//! and /proc/stat; it does not decide what to measure or when (the engine
//! and the scenarios do). The decision to know: a process that is gone or
//! unreadable counts as zero, never as an error, so a measurement taken
//! while a server exits is low rather than a failed run; and memory is PSS
//! (shared pages split between the processes that map them), falling back
//! to RSS where smaps_rollup is missing.

use std::time::{Duration, Instant};

use crate::sys;

/// Fields of /proc/PID/stat after the command name (which may hold spaces).
fn proc_stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// Indices in [`proc_stat_fields`] (proc(5)'s numbers less 3).
const STAT_PPID: usize = 1;
const STAT_UTIME: usize = 11;
const STAT_STIME: usize = 12;

/// utime + stime of a process (all its threads), in clock ticks.
pub fn cpu_ticks(pid: u32) -> u64 {
    proc_stat_fields(pid)
        .map(|f| {
            let get = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            get(STAT_UTIME) + get(STAT_STIME)
        })
        .unwrap_or(0)
}

/// CPU time used by everything on the machine, in clock ticks (all cores).
pub fn machine_busy_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(cpu) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return 0;
    };
    let f: Vec<u64> = cpu
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal: all but idle and iowait.
    [0usize, 1, 2, 5, 6, 7]
        .iter()
        .map(|&i| f.get(i).copied().unwrap_or(0))
        .sum()
}

/// `ticks` of CPU time over `secs` seconds, as % of one core.
pub fn cpu_pct(ticks: u64, secs: f64) -> f64 {
    ticks as f64 / sys::clock_ticks() / secs * 100.0
}

/// Waits until the machine is quiet (busy below `below` % of one core over
/// half a second), at most `max` seconds. Returns (busy %, seconds waited).
pub async fn wait_quiet(max: f64, below: f64) -> (f64, f64) {
    let start = Instant::now();
    loop {
        let (t, a) = (Instant::now(), machine_busy_ticks());
        tokio::time::sleep(Duration::from_millis(500)).await;
        let busy = cpu_pct(machine_busy_ticks() - a, t.elapsed().as_secs_f64());
        let waited = start.elapsed().as_secs_f64();
        if busy < below || waited >= max {
            return ((busy * 10.0).round() / 10.0, (waited * 10.0).round() / 10.0);
        }
    }
}

/// The processes whose parent is `pid`.
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(child) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(f) = proc_stat_fields(child) {
                if f.get(STAT_PPID).and_then(|p| p.parse::<u32>().ok()) == Some(pid) {
                    out.push(child);
                }
            }
        }
    }
    out
}

/// A `NAME: N kB` line of /proc/PID/FILE, in KiB (0 if absent).
fn status_kib(pid: u32, file: &str, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Per thread of `pid` (by tid): its name, ns on a CPU, and ns runnable
/// but waiting for one, from /proc/PID/task/*/schedstat. The wait is what
/// the scheduler added to the process's latency.
pub fn sched_ns(pid: u32) -> std::collections::BTreeMap<u32, (String, u64, u64)> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in tasks.flatten() {
        let Some(tid) = t.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let dir = t.path();
        let name = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        let Ok(stat) = std::fs::read_to_string(dir.join("schedstat")) else {
            continue;
        };
        let mut f = stat
            .split_whitespace()
            .map(|v| v.parse::<u64>().unwrap_or(0));
        let (run, wait) = (f.next().unwrap_or(0), f.next().unwrap_or(0));
        out.insert(tid, (name.trim().to_owned(), run, wait));
    }
    out
}

pub fn pss_kib(pid: u32) -> u64 {
    match status_kib(pid, "smaps_rollup", "Pss:") {
        0 => rss_kib(pid),
        v => v,
    }
}

pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "status", "VmRSS:")
}

/// Processes measured together: the roots and their children (nginx's workers).
#[derive(Clone, Default)]
pub struct ProcSet {
    pub roots: Vec<u32>,
}

/// [`ProcSet::mem`]'s figures, KiB.
#[derive(Clone, Copy, Default)]
pub struct Mem {
    pub pss: u64,
    pub pss_anon: u64,
    pub pss_shmem: u64,
    pub rss: u64,
}

impl ProcSet {
    fn pids(&self) -> Vec<u32> {
        let mut all = self.roots.clone();
        for &r in &self.roots {
            all.extend(children_of(r));
        }
        all
    }

    pub fn ticks(&self) -> u64 {
        self.pids().into_iter().map(cpu_ticks).sum()
    }

    pub fn pss(&self) -> u64 {
        self.pids().into_iter().map(pss_kib).sum()
    }

    pub fn mem(&self) -> Mem {
        let mut out = Mem::default();
        for pid in self.pids() {
            out.pss += pss_kib(pid);
            out.pss_anon += status_kib(pid, "smaps_rollup", "Pss_Anon:");
            out.pss_shmem += status_kib(pid, "smaps_rollup", "Pss_Shmem:");
            out.rss += rss_kib(pid);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_cpu_time_memory_and_a_parent() {
        let me = std::process::id();
        let spin = Instant::now();
        while spin.elapsed() < Duration::from_millis(100) {
            std::hint::black_box(machine_busy_ticks());
        }
        assert!(cpu_ticks(me) > 0);
        assert!(rss_kib(me) > 0 && pss_kib(me) > 0);
        let parent = proc_stat_fields(me)
            .and_then(|f| f.get(STAT_PPID)?.parse::<u32>().ok())
            .expect("a parent");
        assert!(children_of(parent).contains(&me));
        assert_eq!(cpu_ticks(u32::MAX), 0, "a missing process counts as zero");
    }
}
