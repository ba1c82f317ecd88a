//! Reads this host's processes from `/proc` (blocking; the caller runs
//! it off the async runtime). Processes that exit while being read are
//! skipped, not errors.
//!
//! A listing reads the pid list and, per process, `stat` (pid, state, CPU
//! ticks, RSS, start time, `comm`), its command line and the owner (an
//! `fstat` of the process's directory, already open); the cgroups come
//! from the host's [`ProcTable`], read from `/proc` only for a process the
//! table does not know (new, a reused pid, or after an `exec`). `--pid`
//! reads its one process in full. With a CPU window the matched
//! processes' `stat` is read once more at its end; without one CPU% is
//! the lifetime average, as `ps` computes it.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use procfs::Current;
use procfs::process::{Process, all_processes};

use super::passwd;
use super::query::{HostProcs, MAX_ANSWER_BYTES, ProcInfo, ProcQuery, bound};
use super::table::{Identity, Kept, ProcTable};

/// This host's process table, shared by its queries. A listing holds it
/// for its whole pass, so [`forget`] after a cgroup move cannot be undone
/// by a pass that read the process's cgroups before the move.
static TABLE: Mutex<ProcTable> = Mutex::new(ProcTable::new());

/// Forgets what the table keeps of `pid`: this host moved it to another
/// cgroup, and the next query must read its cgroups again.
pub fn forget(pid: i32) {
    TABLE
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .forget(pid);
}

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
        // One process: read in full, the table is for listings.
        Some(pid) => match Process::new(pid) {
            Ok(p) => firsts.extend(read(p, query, &host, None)),
            Err(_) => return Ok(HostProcs::default()),
        },
        None => {
            let all = all_processes().map_err(|e| format!("listing /proc: {e}"))?;
            let mut table = TABLE.lock().unwrap_or_else(PoisonError::into_inner);
            table.begin_pass();
            firsts.extend(
                all.flatten()
                    .filter_map(|p| read(p, query, &host, Some(&mut table))),
            );
            table.end_pass();
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

/// One process: its `stat` and owner, and its command line and cgroups
/// from `table` when it knows the process (else read, and kept there).
fn read(
    process: Process,
    query: &ProcQuery,
    host: &Host,
    table: Option<&mut ProcTable>,
) -> Option<First> {
    let stat = process.stat().ok()?;
    if query.pid.is_some_and(|p| p != stat.pid) {
        return None;
    }
    // Kernel threads have an empty command line. It is read every time (a
    // few µs): a process may retitle itself without an exec (nginx's and
    // PostgreSQL's workers do), and `ps` must show that.
    let cmdline = process.cmdline();
    let cgroups = match table {
        None => read_cgroups(&process).unwrap_or_default(),
        Some(table) => kept_cgroups(table, &process, &stat, cmdline.is_ok()),
    };
    let cmdline = cmdline.unwrap_or_default();
    if !query.matches_identity(stat.pid, &stat.comm, &cmdline) || !query.matches_cgroups(&cgroups) {
        return None;
    }
    // Read on every query (one `fstat` of the open directory): a process
    // may change its user without an `exec` (a daemon dropping root).
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

/// `process`'s cgroups from `table`, else read and kept there. A read is
/// kept only when the process was still there for it and for its command
/// line (`cmdline_read`): an empty answer would stand for its real facts.
fn kept_cgroups(
    table: &mut ProcTable,
    process: &Process,
    stat: &procfs::process::Stat,
    cmdline_read: bool,
) -> Vec<String> {
    let id = Identity {
        pid: stat.pid,
        start_ticks: stat.starttime,
        comm: stat.comm.clone(),
    };
    if let Some(kept) = table.get(&id) {
        return kept.cgroups.clone();
    }
    match read_cgroups(process) {
        Ok(cgroups) if cmdline_read => {
            let kept = cgroups.clone();
            table.insert(id, Kept { cgroups: kept });
            cgroups
        }
        read => read.unwrap_or_default(),
    }
}

/// A process's cgroups from `/proc/PID/cgroup`.
fn read_cgroups(process: &Process) -> procfs::ProcResult<Vec<String>> {
    Ok(process
        .cgroups()?
        .0
        .iter()
        .map(|g| format!("{}:{}:{}", g.hierarchy, g.controllers.join(","), g.pathname))
        .collect())
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

    fn listed(pid: u32) -> Option<ProcInfo> {
        let all = list(&ProcQuery {
            window_ms: 0,
            ..ProcQuery::default()
        })
        .expect("reading /proc");
        all.procs.into_iter().find(|p| p.pid == pid as i32)
    }

    #[test]
    fn listings_follow_new_processes_execs_and_exits() {
        // Warm the table, then start a process: the next listing shows it.
        assert!(listed(std::process::id()).is_some());
        let mut child = std::process::Command::new("sh")
            .args(["-c", "read _ ; exec sleep 30"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("starting sh");
        let pid = child.id();
        let before = listed(pid).expect("the new process is listed");
        assert_eq!(before.name, "sh");
        assert!(before.cmdline.iter().any(|a| a.contains("exec sleep")));
        // The same process runs another program: its command line is
        // read again, not taken from the table. The kernel renames the
        // task before the new image's arguments are in place, so a listing
        // in between shows "sleep" with an empty command line: wait for
        // the arguments, not the name.
        drop(child.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        let after = loop {
            let p = listed(pid).expect("still listed");
            if !p.cmdline.is_empty() && p.name == "sleep" || Instant::now() > deadline {
                break p;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(after.cmdline, ["sleep", "30"]);
        assert_eq!(after.start_time, before.start_time);
        let _ = child.kill();
        let _ = child.wait();
        assert!(listed(pid).is_none(), "an exited process is not listed");
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
