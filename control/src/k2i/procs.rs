//! Reads this host's processes from `/proc` (blocking; the caller runs
//! it off the async runtime). Processes that exit while being read are
//! skipped, not errors.
//!
//! One pass reads, per process, `stat` (pid, state, CPU ticks, RSS, start
//! time), `cmdline`, then `cgroup` only for a process the pid and name
//! filters kept, and the owner from the directory's metadata (no
//! `status`). With a
//! CPU window the matched processes' `stat` is read once more at its end;
//! without one CPU% is the lifetime average, as `ps` computes it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use procfs::Current;
use procfs::process::{Process, all_processes};

use super::passwd;
use super::query::{HostProcs, MAX_ANSWER_BYTES, ProcInfo, ProcQuery, bound};

/// What one pass over a process gives, before its CPU use is known.
struct First {
    process: Process,
    info: ProcInfo,
    ticks: u64,
    /// When it started, in seconds since boot.
    started: f64,
}

/// The host facts a pass needs, read once per query.
struct Host {
    users: std::sync::Arc<HashMap<u32, String>>,
    tps: u64,
    boot: u64,
    page: u64,
    /// Seconds since boot, for lifetime CPU% (no window).
    uptime: f64,
}

/// The processes matching `query`, with CPU use sampled over its window
/// (or, with a zero window, averaged over each process's life).
pub fn list(query: &ProcQuery) -> Result<HostProcs, String> {
    query.validate()?;
    let host = Host {
        users: passwd::cached(),
        tps: procfs::ticks_per_second().max(1),
        boot: procfs::boot_time_secs().map_err(|e| format!("reading /proc/stat: {e}"))?,
        page: procfs::page_size(),
        uptime: procfs::Uptime::current()
            .map_err(|e| format!("reading /proc/uptime: {e}"))?
            .uptime,
    };
    let started = Instant::now();
    let mut firsts = Vec::new();
    match query.pid {
        Some(pid) => match Process::new(pid) {
            Ok(p) => firsts.extend(read(p, query, &host)),
            Err(_) => return Ok(HostProcs::default()),
        },
        None => {
            let all = all_processes().map_err(|e| format!("listing /proc: {e}"))?;
            firsts.extend(all.flatten().filter_map(|p| read(p, query, &host)));
        }
    }
    if query.window_ms == 0 {
        let procs = firsts
            .into_iter()
            .map(|f| ProcInfo {
                cpu_percent: lifetime_percent(f.ticks, host.tps, host.uptime - f.started),
                ..f.info
            })
            .collect();
        return Ok(bound(procs, MAX_ANSWER_BYTES));
    }
    let window = Duration::from_millis(query.window_ms);
    if let Some(rest) = window.checked_sub(started.elapsed()) {
        std::thread::sleep(rest);
    }
    let elapsed = started.elapsed().as_secs_f64().max(1e-3);
    let procs = firsts
        .into_iter()
        .filter_map(|f| {
            // Gone during the window: no longer a process to report.
            let stat = f.process.stat().ok()?;
            let used = (stat.utime + stat.stime).saturating_sub(f.ticks);
            let mut info = f.info;
            info.cpu_percent = round1(used as f64 / host.tps as f64 / elapsed * 100.0);
            info.state = stat.state.to_string();
            Some(info)
        })
        .collect();
    Ok(bound(procs, MAX_ANSWER_BYTES))
}

/// CPU% over a process's life: `ticks` of CPU in `alive` seconds.
fn lifetime_percent(ticks: u64, tps: u64, alive: f64) -> f64 {
    if alive <= 0.0 {
        return 0.0;
    }
    round1(ticks as f64 / tps as f64 / alive * 100.0)
}

fn read(process: Process, query: &ProcQuery, host: &Host) -> Option<First> {
    let stat = process.stat().ok()?;
    if query.pid.is_some_and(|p| p != stat.pid) {
        return None;
    }
    // Kernel threads have an empty command line; a process that exited
    // meanwhile is dropped by the reads below.
    let cmdline = process.cmdline().unwrap_or_default();
    if !query.matches_identity(stat.pid, &stat.comm, &cmdline) {
        return None;
    }
    let cgroups: Vec<String> = process
        .cgroups()
        .map(|c| {
            c.0.iter()
                .map(|g| format!("{}:{}:{}", g.hierarchy, g.controllers.join(","), g.pathname))
                .collect()
        })
        .unwrap_or_default();
    if !query.matches_cgroups(&cgroups) {
        return None;
    }
    let user = process
        .uid()
        .map(|u| passwd::name(&host.users, u))
        .unwrap_or_default();
    Some(First {
        ticks: stat.utime + stat.stime,
        info: ProcInfo {
            pid: stat.pid,
            ppid: stat.ppid,
            user,
            state: stat.state.to_string(),
            name: stat.comm,
            cmdline,
            cpu_percent: 0.0,
            rss_bytes: stat.rss.saturating_mul(host.page),
            start_time: host.boot + stat.starttime / host.tps,
            cgroups,
        },
        started: stat.starttime as f64 / host.tps as f64,
        process,
    })
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_this_process_with_its_cgroups() {
        let me = std::process::id() as i32;
        let q = ProcQuery {
            pid: Some(me),
            window_ms: 20,
            ..ProcQuery::default()
        };
        let r = list(&q).expect("reading /proc");
        assert_eq!(r.procs.len(), 1);
        let p = &r.procs[0];
        assert_eq!(p.pid, me);
        assert!(p.rss_bytes > 0);
        assert!(!p.cgroups.is_empty());
        assert!(p.start_time > 1_000_000_000);
        let all = list(&ProcQuery {
            window_ms: 0,
            ..ProcQuery::default()
        })
        .expect("reading /proc");
        assert!(all.procs.iter().any(|p| p.pid == me));
        assert!(all.procs.iter().any(|p| p.pid == 1));
        let none = list(&ProcQuery {
            pid: Some(i32::MAX),
            window_ms: 0,
            ..ProcQuery::default()
        })
        .expect("no such process is an empty answer");
        assert!(none.procs.is_empty());
    }

    #[test]
    fn lifetime_cpu_is_ticks_over_time_alive() {
        assert_eq!(lifetime_percent(200, 100, 4.0), 50.0);
        assert_eq!(lifetime_percent(5, 100, 0.0), 0.0);
        assert_eq!(lifetime_percent(5, 100, -1.0), 0.0);
    }

    #[test]
    fn without_a_window_a_busy_process_shows_its_lifetime_use() {
        // This test thread spins for a while, so the process's lifetime
        // average is above zero.
        let until = Instant::now() + Duration::from_millis(300);
        let mut x = 0u64;
        while Instant::now() < until {
            x = x.wrapping_add(1);
        }
        assert!(x > 0);
        let r = list(&ProcQuery {
            pid: Some(std::process::id() as i32),
            window_ms: 0,
            ..ProcQuery::default()
        })
        .expect("reading /proc");
        assert!(r.procs[0].cpu_percent > 0.0, "{:?}", r.procs[0]);
    }
}
