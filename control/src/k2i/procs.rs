//! Reads this host's processes from `/proc` (blocking; the caller runs
//! it off the async runtime). Processes that exit while being read are
//! skipped, not errors.
//!
//! A listing reads the pid list and, per process, `stat` (pid, state, CPU
//! ticks, RSS, start time, `comm`) with its owner (an `fstat` of the open
//! `stat`), and its command line; the cgroups come from the host's
//! [`ProcTable`], read from `/proc` only for a process the table does not
//! know (new, a reused pid, or after an `exec`). A listing of many
//! processes is split among up to [`MAX_READERS`] threads: each file
//! read is a system call that the kernel answers from the process's
//! state, and nothing orders them, so on a host with several cores the
//! pass takes a fraction of the time of one thread's (`ps` reads one
//! after the other). `--pid` reads its one process in full. With a CPU
//! window the matched processes' `stat` is read once more at its end;
//! without one CPU% is the lifetime average, as `ps` computes it.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use procfs::process::Stat;
use procfs::{Current, FromRead};

use super::passwd;
use super::proc_dir::ProcDir;
use super::query::{HostProcs, MAX_ANSWER_BYTES, ProcInfo, ProcQuery, bound};
use super::table::{Identity, Kept, ProcTable};

/// This host's process table, shared by its queries. A listing holds it
/// for its whole pass, so [`forget`] after a cgroup move cannot be undone
/// by a pass that read the process's cgroups before the move.
static TABLE: Mutex<ProcTable> = Mutex::new(ProcTable::new());

/// At most this many threads read one listing.
pub const MAX_READERS: usize = 4;
/// Each reading thread gets at least this many processes: below it,
/// starting a thread costs more than it saves.
const MIN_PER_READER: usize = 24;

/// Forgets what the table keeps of `pid`: this host moved it to another
/// cgroup, and the next query must read its cgroups again.
pub fn forget(pid: i32) {
    TABLE
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .forget(pid);
}

/// What one read of a process gives, before its cgroups and CPU use are
/// known.
struct Read {
    stat: Stat,
    /// `None`: the process was gone before its command line was read.
    cmdline: Option<Vec<String>>,
    uid: u32,
}

/// A process that passed the filters, before its CPU use is known.
struct First {
    info: ProcInfo,
    ticks: u64,
    /// When it started, in clock ticks since boot: the same process at
    /// the end of a CPU window.
    start_ticks: u64,
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
        boot: boot_time()?,
        page: procfs::page_size(),
        uptime: procfs::Uptime::current()
            .map_err(|e| format!("reading /proc/uptime: {e}"))?
            .uptime,
    };
    let dir = ProcDir::open().map_err(|e| format!("opening /proc: {e}"))?;
    let started = Instant::now();
    let firsts = match query.pid {
        // One process: read in full, the table is for listings.
        Some(pid) => read(&dir, pid, &mut Vec::new())
            .and_then(|r| {
                let cgroups = read_cgroups(&dir, pid, &mut Vec::new()).unwrap_or_default();
                first(r, cgroups, query, &host)
            })
            .into_iter()
            .collect(),
        None => listing(&dir, query, &host)?,
    };
    if query.window_ms == 0 {
        let procs = firsts
            .into_iter()
            .map(|f| ProcInfo {
                cpu_percent: lifetime_percent(
                    f.ticks,
                    host.tps,
                    host.uptime - f.start_ticks as f64 / host.tps as f64,
                ),
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
    let procs = in_parallel(firsts, |f, buf| {
        // Gone during the window, or its pid reused: no longer a process
        // to report.
        dir.read(f.info.pid, "stat", buf, false).ok()?;
        let stat = Stat::from_read(&buf[..]).ok()?;
        if stat.starttime != f.start_ticks {
            return None;
        }
        let used = (stat.utime + stat.stime).saturating_sub(f.ticks);
        let mut info = f.info;
        info.cpu_percent = round1(used as f64 / host.tps as f64 / elapsed * 100.0);
        info.state = stat.state.to_string();
        Some(info)
    });
    Ok(bound(procs, MAX_ANSWER_BYTES))
}

/// Every process of the host that passes `query`'s filters. The table is
/// held for the whole pass (see [`TABLE`]).
fn listing(dir: &ProcDir, query: &ProcQuery, host: &Host) -> Result<Vec<First>, String> {
    let mut table = TABLE.lock().unwrap_or_else(PoisonError::into_inner);
    let pids = dir.pids().map_err(|e| format!("listing /proc: {e}"))?;
    // The files every process needs, read in parallel; the pid and name
    // filters are applied as they come in.
    let reads = in_parallel(pids, |pid, buf| {
        read(dir, pid, buf).filter(|r| {
            let cmdline = r.cmdline.as_deref().unwrap_or_default();
            query.matches_identity(r.stat.pid, &r.stat.comm, cmdline)
        })
    });
    // The cgroups the table keeps; the others are read (new processes).
    table.begin_pass();
    let mut known = Vec::with_capacity(reads.len());
    let mut unknown = Vec::new();
    for r in reads {
        match table.get(&identity(&r.stat)) {
            Some(kept) => {
                let cgroups = kept.cgroups.clone();
                known.push((r, cgroups));
            }
            None => unknown.push(r),
        }
    }
    let fresh = in_parallel(unknown, |r, buf| {
        let cgroups = read_cgroups(dir, r.stat.pid, buf);
        Some((r, cgroups))
    });
    for (r, cgroups) in fresh {
        // Kept only when the process was still there for its cgroups and
        // its command line: an empty answer would stand for its facts.
        let cgroups = match cgroups {
            Ok(cgroups) if r.cmdline.is_some() => {
                table.insert(
                    identity(&r.stat),
                    Kept {
                        cgroups: cgroups.clone(),
                    },
                );
                cgroups
            }
            read => read.unwrap_or_default(),
        };
        known.push((r, cgroups));
    }
    table.end_pass();
    drop(table);
    let mut firsts: Vec<First> = known
        .into_iter()
        .filter_map(|(r, cgroups)| first(r, cgroups, query, host))
        .collect();
    firsts.sort_by_key(|f| f.info.pid);
    Ok(firsts)
}

/// One process's `stat`, owner and command line; `None` when it is gone.
/// Kernel threads have an empty command line. It is read every time (a
/// few µs): a process may retitle itself without an exec (nginx's and
/// PostgreSQL's workers do), and `ps` must show that. The owner is read
/// every time too: a process may change its user without an `exec` (a
/// daemon dropping root).
fn read(dir: &ProcDir, pid: i32, buf: &mut Vec<u8>) -> Option<Read> {
    let uid = dir.read(pid, "stat", buf, true).ok()??;
    let stat = Stat::from_read(&buf[..]).ok()?;
    let cmdline = dir.read(pid, "cmdline", buf, false).ok().map(|_| {
        buf.split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect()
    });
    Some(Read { stat, cmdline, uid })
}

/// A process read in full as a listed process, when it passes the
/// filters.
fn first(r: Read, cgroups: Vec<String>, query: &ProcQuery, host: &Host) -> Option<First> {
    let Read { stat, cmdline, uid } = r;
    let cmdline = cmdline.unwrap_or_default();
    if !query.matches_identity(stat.pid, &stat.comm, &cmdline) || !query.matches_cgroups(&cgroups) {
        return None;
    }
    Some(First {
        ticks: stat.utime + stat.stime,
        start_ticks: stat.starttime,
        info: ProcInfo {
            pid: stat.pid,
            ppid: stat.ppid,
            user: passwd::name(&host.users, uid),
            state: stat.state.to_string(),
            name: stat.comm,
            cmdline,
            cpu_percent: 0.0,
            rss_bytes: stat.rss.saturating_mul(host.page),
            start_time: host.boot + stat.starttime / host.tps,
            cgroups,
        },
    })
}

fn identity(stat: &Stat) -> Identity {
    Identity {
        pid: stat.pid,
        start_ticks: stat.starttime,
        comm: stat.comm.clone(),
    }
}

/// A process's cgroups: the lines of `/proc/PID/cgroup`, which are
/// `hierarchy:controllers:path` already.
fn read_cgroups(dir: &ProcDir, pid: i32, buf: &mut Vec<u8>) -> std::io::Result<Vec<String>> {
    dir.read(pid, "cgroup", buf, false)?;
    Ok(String::from_utf8_lossy(buf)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect())
}

/// `f` over `items`, split in order among up to [`MAX_READERS`] threads
/// (this one included); each thread reuses one read buffer. The results
/// keep the items' order.
fn in_parallel<T, R, F>(items: Vec<T>, f: F) -> Vec<R>
where
    T: Send,
    R: Send,
    F: Fn(T, &mut Vec<u8>) -> Option<R> + Sync,
{
    let readers = readers_for(items.len());
    let run = |chunk: Vec<T>| {
        let mut buf = Vec::new();
        chunk
            .into_iter()
            .filter_map(|item| f(item, &mut buf))
            .collect::<Vec<R>>()
    };
    if readers <= 1 {
        return run(items);
    }
    let per = items.len().div_ceil(readers);
    let mut chunks = Vec::with_capacity(readers);
    let mut items = items.into_iter();
    loop {
        let chunk: Vec<T> = items.by_ref().take(per).collect();
        if chunk.is_empty() {
            break;
        }
        chunks.push(chunk);
    }
    let mut chunks = chunks.into_iter();
    let mine = chunks.next().unwrap_or_default();
    std::thread::scope(|s| {
        let others: Vec<_> = chunks.map(|c| s.spawn(|| run(c))).collect();
        let mut out = run(mine);
        for o in others {
            // A reader's panic is the query's: an answer missing a share
            // of the processes would look complete.
            match o.join() {
                Ok(mut part) => out.append(&mut part),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        out
    })
}

/// How many threads read `n` processes: one per [`MIN_PER_READER`]
/// processes, at most one per core and [`MAX_READERS`].
fn readers_for(n: usize) -> usize {
    (n / MIN_PER_READER).clamp(1, elton_proto::cores::cores().clamp(1, MAX_READERS))
}

/// When the host booted, in seconds since the Unix epoch: read from
/// `/proc/stat` once per process (procfs caches it per thread, and the
/// blocking threads that run queries come and go; the file holds every
/// CPU's and interrupt's counters).
fn boot_time() -> Result<u64, String> {
    static BOOT: OnceLock<u64> = OnceLock::new();
    if let Some(b) = BOOT.get() {
        return Ok(*b);
    }
    let b = procfs::boot_time_secs().map_err(|e| format!("reading /proc/stat: {e}"))?;
    Ok(*BOOT.get_or_init(|| b))
}

/// CPU% over a process's life: `ticks` of CPU in `alive` seconds.
fn lifetime_percent(ticks: u64, tps: u64, alive: f64) -> f64 {
    if alive <= 0.0 {
        return 0.0;
    }
    round1(ticks as f64 / tps as f64 / alive * 100.0)
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
        // `spawn` returns once the child is inside `execve`, which names
        // the task before the new image's arguments are in place: wait
        // for them (a listing in between shows "sh" with no arguments).
        let deadline = Instant::now() + Duration::from_secs(5);
        let before = loop {
            let p = listed(pid).expect("the new process is listed");
            if !p.cmdline.is_empty() || Instant::now() > deadline {
                break p;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        assert_eq!(before.name, "sh");
        assert!(
            before.cmdline.iter().any(|a| a.contains("exec sleep")),
            "{before:?}"
        );
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
    fn parallel_reads_keep_the_order_and_drop_what_is_gone() {
        let items: Vec<i32> = (0..1000).collect();
        let out = in_parallel(items, |i, buf| {
            buf.push(0);
            (i % 3 != 0).then_some(i * 2)
        });
        let want: Vec<i32> = (0..1000).filter(|i| i % 3 != 0).map(|i| i * 2).collect();
        assert_eq!(out, want);
        assert_eq!(
            in_parallel(Vec::<i32>::new(), |i, _| Some(i)),
            Vec::<i32>::new()
        );
        assert_eq!(readers_for(0), 1);
        assert_eq!(readers_for(MIN_PER_READER - 1), 1);
        assert!((1..=MAX_READERS).contains(&readers_for(100_000)));
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
