//! What `elton ps` asks a host and what a host answers (pure: no IO).

use serde::{Deserialize, Serialize};

/// Longest name substring or cgroup path a query may carry, in bytes.
pub const MAX_QUERY_FIELD: usize = 4096;
/// Longest CPU sampling window a query may ask for: a member runs the
/// query while the client waits.
pub const MAX_WINDOW_MS: u64 = 5_000;
/// How much of a report a host's process list may fill (JSON bytes); the
/// rest is cut and the answer says so.
pub const MAX_ANSWER_BYTES: usize = 900 * 1024;

/// Which processes to list. Every given filter must match; none lists all.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    /// A substring of the command name (`comm`) or of the command line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A cgroup path (as in `/proc/PID/cgroup`): the process is in it or
    /// below it in some hierarchy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    /// How long CPU use is sampled over, in milliseconds.
    pub window_ms: u64,
}

/// One process as a host reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcInfo {
    pub pid: i32,
    pub ppid: i32,
    pub user: String,
    /// The kernel's one-letter state (R, S, D, Z, T, ...).
    pub state: String,
    /// `comm`: the executable's name as the kernel keeps it.
    pub name: String,
    /// The command line; empty for kernel threads.
    pub cmdline: Vec<String>,
    /// Percent of one core over the sampling window.
    pub cpu_percent: f64,
    pub rss_bytes: u64,
    /// Start time, seconds since the Unix epoch.
    pub start_time: u64,
    /// `/proc/PID/cgroup` lines: `hierarchy:controllers:path`.
    pub cgroups: Vec<String>,
}

/// A host's answer to a [`ProcQuery`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HostProcs {
    pub procs: Vec<ProcInfo>,
    /// Processes left out because the answer reached [`MAX_ANSWER_BYTES`].
    pub truncated: usize,
}

impl ProcQuery {
    /// Checks what a member can check before anything runs.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(pid) = self.pid
            && pid <= 0
        {
            return Err(format!("pid {pid}: a pid is a positive number"));
        }
        for (what, v) in [("name", &self.name), ("cgroup", &self.cgroup)] {
            if let Some(v) = v {
                if v.is_empty() {
                    return Err(format!("{what} filter is empty"));
                }
                if v.len() > MAX_QUERY_FIELD {
                    return Err(format!(
                        "{what} filter is {} bytes; at most {MAX_QUERY_FIELD}",
                        v.len()
                    ));
                }
            }
        }
        if let Some(c) = &self.cgroup
            && !c.starts_with('/')
        {
            return Err(format!("cgroup {c:?}: a cgroup path starts with /"));
        }
        if self.window_ms > MAX_WINDOW_MS {
            return Err(format!(
                "CPU window {} ms is above the limit of {MAX_WINDOW_MS} ms",
                self.window_ms
            ));
        }
        Ok(())
    }

    /// Whether the process identified by `pid`, `name` and `cmdline`
    /// passes the pid and name filters (checked before the costlier
    /// reads).
    pub fn matches_identity(&self, pid: i32, name: &str, cmdline: &[String]) -> bool {
        if self.pid.is_some_and(|p| p != pid) {
            return false;
        }
        match &self.name {
            None => true,
            Some(n) => name.contains(n.as_str()) || cmdline.join(" ").contains(n.as_str()),
        }
    }

    /// Whether a process in `cgroups` (`hierarchy:controllers:path`
    /// lines) passes the cgroup filter.
    pub fn matches_cgroups(&self, cgroups: &[String]) -> bool {
        let Some(want) = &self.cgroup else {
            return true;
        };
        let want = want.trim_end_matches('/');
        cgroups.iter().any(|line| {
            let path = line.splitn(3, ':').nth(2).unwrap_or("");
            want.is_empty() || path == want || path.starts_with(&format!("{want}/"))
        })
    }
}

/// Keeps the processes (in pid order) whose JSON fits in `budget` bytes,
/// counting the ones cut.
pub fn bound(mut procs: Vec<ProcInfo>, budget: usize) -> HostProcs {
    procs.sort_by_key(|p| p.pid);
    let mut used = 0;
    let mut kept = Vec::with_capacity(procs.len());
    let mut truncated = 0;
    for p in procs {
        // Serialising plain data cannot fail; a failure counts as too big.
        let mut counter = ByteCount(0);
        let size = serde_json::to_writer(&mut counter, &p).map_or(usize::MAX, |()| counter.0 + 1);
        if truncated == 0 && used + size <= budget {
            used += size;
            kept.push(p);
        } else {
            truncated += 1;
        }
    }
    HostProcs {
        procs: kept,
        truncated,
    }
}

/// Counts the bytes written to it: a JSON size without the JSON.
struct ByteCount(usize);

impl std::io::Write for ByteCount {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proc(pid: i32, name: &str, cgroup: &str) -> ProcInfo {
        ProcInfo {
            pid,
            ppid: 1,
            user: "root".into(),
            state: "S".into(),
            name: name.into(),
            cmdline: vec![format!("/usr/bin/{name}"), "--flag".into()],
            cpu_percent: 0.0,
            rss_bytes: 4096,
            start_time: 0,
            cgroups: vec![format!("4:memory:{cgroup}"), "2:cpu,cpuacct:/".into()],
        }
    }

    fn q() -> ProcQuery {
        ProcQuery {
            window_ms: 100,
            ..ProcQuery::default()
        }
    }

    #[test]
    fn filters_combine() {
        let p = proc(42, "sleep", "/elton/job");
        let all = q();
        assert!(all.matches_identity(p.pid, &p.name, &p.cmdline));
        assert!(all.matches_cgroups(&p.cgroups));
        let by_pid = ProcQuery {
            pid: Some(43),
            ..q()
        };
        assert!(!by_pid.matches_identity(p.pid, &p.name, &p.cmdline));
        let by_cmdline = ProcQuery {
            name: Some("--fl".into()),
            ..q()
        };
        assert!(by_cmdline.matches_identity(p.pid, &p.name, &p.cmdline));
        let by_name = ProcQuery {
            name: Some("slee".into()),
            pid: Some(42),
            ..q()
        };
        assert!(by_name.matches_identity(p.pid, &p.name, &p.cmdline));
        let other = ProcQuery {
            name: Some("nginx".into()),
            ..q()
        };
        assert!(!other.matches_identity(p.pid, &p.name, &p.cmdline));
    }

    #[test]
    fn cgroup_filter_takes_a_subtree_not_a_prefix() {
        let p = proc(42, "sleep", "/elton/job");
        let cg = |c: &str| ProcQuery {
            cgroup: Some(c.into()),
            ..q()
        };
        assert!(cg("/elton").matches_cgroups(&p.cgroups));
        assert!(cg("/elton/").matches_cgroups(&p.cgroups));
        assert!(cg("/elton/job").matches_cgroups(&p.cgroups));
        assert!(!cg("/elt").matches_cgroups(&p.cgroups));
        assert!(!cg("/elton/job2").matches_cgroups(&p.cgroups));
        // Every process is under the root.
        assert!(cg("/").matches_cgroups(&p.cgroups));
    }

    #[test]
    fn bad_queries_are_refused() {
        let bad = [
            ProcQuery {
                pid: Some(0),
                ..q()
            },
            ProcQuery {
                name: Some(String::new()),
                ..q()
            },
            ProcQuery {
                cgroup: Some("elton".into()),
                ..q()
            },
            ProcQuery {
                name: Some("x".repeat(MAX_QUERY_FIELD + 1)),
                ..q()
            },
            ProcQuery {
                window_ms: MAX_WINDOW_MS + 1,
                ..q()
            },
        ];
        for b in bad {
            assert!(b.validate().is_err(), "{b:?}");
        }
        assert!(q().validate().is_ok());
    }

    #[test]
    fn answers_are_bounded_in_pid_order() {
        let procs: Vec<ProcInfo> = (1..=100).rev().map(|i| proc(i, "p", "/")).collect();
        let one = serde_json::to_vec(&procs[0]).expect("json").len() + 1;
        let all = bound(procs.clone(), usize::MAX);
        assert_eq!((all.procs.len(), all.truncated), (100, 0));
        assert_eq!(all.procs[0].pid, 1);
        let some = bound(procs, one * 10 + 5);
        assert_eq!((some.procs.len(), some.truncated), (10, 90));
        assert_eq!(some.procs[9].pid, 10);
    }
}
