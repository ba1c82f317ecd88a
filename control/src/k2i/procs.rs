//! Reads this host's processes from `/proc` (blocking; the executor runs
//! it off the async runtime). Processes that exit while being read are
//! skipped, not errors.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use procfs::process::{Process, all_processes};

use super::passwd;
use super::query::{HostProcs, MAX_ANSWER_BYTES, ProcInfo, ProcQuery, bound};

/// What one pass over a process gives, before its CPU use is known.
struct First {
    process: Process,
    info: ProcInfo,
    ticks: u64,
}

/// The processes matching `query`, with CPU use sampled over its window.
pub fn list(query: &ProcQuery) -> Result<HostProcs, String> {
    query.validate()?;
    let tps = procfs::ticks_per_second().max(1);
    let boot = procfs::boot_time_secs().map_err(|e| format!("reading /proc/stat: {e}"))?;
    let page = procfs::page_size();
    let users = passwd::load();
    let started = Instant::now();
    let mut firsts = Vec::new();
    match query.pid {
        Some(pid) => match Process::new(pid) {
            Ok(p) => firsts.extend(read(p, query, &users, tps, boot, page)),
            Err(_) => return Ok(HostProcs::default()),
        },
        None => {
            let all = all_processes().map_err(|e| format!("listing /proc: {e}"))?;
            firsts.extend(
                all.flatten()
                    .filter_map(|p| read(p, query, &users, tps, boot, page)),
            );
        }
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
            info.cpu_percent = round1(used as f64 / tps as f64 / elapsed * 100.0);
            info.state = stat.state.to_string();
            Some(info)
        })
        .collect();
    Ok(bound(procs, MAX_ANSWER_BYTES))
}

fn read(
    process: Process,
    query: &ProcQuery,
    users: &HashMap<u32, String>,
    tps: u64,
    boot: u64,
    page: u64,
) -> Option<First> {
    let stat = process.stat().ok()?;
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
        .map(|u| passwd::name(users, u))
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
            rss_bytes: stat.rss.saturating_mul(page),
            start_time: boot + stat.starttime / tps,
            cgroups,
        },
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
}
