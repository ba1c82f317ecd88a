//! What a limit is (the replicated desired state) and the checks a member
//! makes before proposing one.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::command::Targets;
use crate::types::NodeId;

/// Longest name substring or cgroup path a selector may carry, in bytes.
pub const MAX_SELECTOR_BYTES: usize = 4096;
/// Highest CPU limit a command may carry (percent of one core); a host
/// refuses one above its own cores × 100.
pub const MAX_CPU_PERCENT: u32 = 100 * 1024;
/// Smallest memory limit: below this the kernel refuses or the process
/// cannot start anything.
pub const MIN_MEMORY_BYTES: u64 = 4 << 20;
/// Smallest IO rate (bytes per second).
pub const MIN_IO_BPS: u64 = 4096;
/// Longest `for` of a temporary limit.
pub const MAX_FOR_MS: u64 = 30 * 24 * 3600 * 1000;

/// Which processes a limit takes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "by", rename_all = "snake_case", deny_unknown_fields)]
pub enum Selector {
    /// One process.
    Pid { pid: i32 },
    /// Processes whose command name or line contains `name`, including
    /// ones that start later.
    Name { name: String },
    /// Processes in this cgroup or below it (a `/proc/PID/cgroup` path).
    Cgroup { path: String },
}

/// What a limit sets. At least one is given.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// Percent of one core (`150` = one and a half cores).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_percent: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// Bytes per second read from `dev`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_read_bps: Option<u64>,
    /// Bytes per second written to `dev`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_write_bps: Option<u64>,
    /// The block device IO limits apply to, `(major, minor)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dev: Option<(u32, u32)>,
}

/// A limit as a client asks for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSpec {
    pub selector: Selector,
    /// The hosts that apply it.
    pub hosts: Targets,
    pub resources: Resources,
    /// A temporary limit: released this many milliseconds after it is
    /// committed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub for_ms: Option<u64>,
}

/// A limit in the replicated state, keyed by `id` (the log index of the
/// command that set it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limit {
    pub id: u64,
    pub selector: Selector,
    /// Resolved against the membership when the limit was applied.
    pub hosts: BTreeSet<NodeId>,
    pub resources: Resources,
    /// Wall clock (Unix ms) after which the leader releases it; stamped by
    /// the leader when proposing, so every member holds the same value.
    pub expires_at_ms: Option<u64>,
}

impl Selector {
    pub fn validate(&self) -> Result<(), String> {
        match self {
            Selector::Pid { pid } if *pid == 1 => Err("pid 1 (init) is never limited".into()),
            Selector::Pid { pid } if *pid <= 0 => {
                Err(format!("pid {pid}: a pid is a positive number"))
            }
            Selector::Pid { .. } => Ok(()),
            Selector::Name { name } if name.is_empty() => Err("the name selector is empty".into()),
            Selector::Cgroup { path } if !path.starts_with('/') || path == "/" => Err(format!(
                "cgroup {path:?}: a cgroup path starts with / and is not the root"
            )),
            Selector::Name { name: s } | Selector::Cgroup { path: s } => {
                if s.len() > MAX_SELECTOR_BYTES {
                    Err(format!(
                        "selector is {} bytes; at most {MAX_SELECTOR_BYTES}",
                        s.len()
                    ))
                } else {
                    Ok(())
                }
            }
        }
    }

    /// Whether a process (pid, `comm`, command line, cgroup paths) is
    /// selected. Protection (pid 1, Elton's own processes) is the
    /// planner's, not the selector's.
    pub fn matches(&self, pid: i32, name: &str, cmdline: &[String], cgroups: &[String]) -> bool {
        match self {
            Selector::Pid { pid: p } => *p == pid,
            Selector::Name { name: n } => {
                name.contains(n.as_str()) || cmdline.join(" ").contains(n.as_str())
            }
            Selector::Cgroup { path } => {
                let want = path.trim_end_matches('/');
                cgroups
                    .iter()
                    .any(|c| c == want || c.starts_with(&format!("{want}/")))
            }
        }
    }
}

impl Resources {
    pub fn validate(&self) -> Result<(), String> {
        if self.dev.is_some() && self.is_io_free() {
            return Err("a device without --io-read or --io-write limits nothing".into());
        }
        if self.cpu_percent.is_none() && self.memory_bytes.is_none() && self.is_io_free() {
            return Err("nothing to limit: give --cpu, --memory, --io-read or --io-write".into());
        }
        if let Some(c) = self.cpu_percent {
            if c == 0 {
                return Err("a CPU limit of 0% would stop the process".into());
            }
            if c > MAX_CPU_PERCENT {
                return Err(format!("CPU limit {c}% is above any host's cores"));
            }
        }
        if let Some(m) = self.memory_bytes
            && m < MIN_MEMORY_BYTES
        {
            return Err(format!(
                "memory limit {m} bytes is below the minimum of {MIN_MEMORY_BYTES}"
            ));
        }
        for (what, v) in [("read", self.io_read_bps), ("write", self.io_write_bps)] {
            if let Some(v) = v
                && v < MIN_IO_BPS
            {
                return Err(format!(
                    "IO {what} limit {v} B/s is below the minimum of {MIN_IO_BPS}"
                ));
            }
        }
        if !self.is_io_free() && self.dev.is_none() {
            return Err("IO limits need the device they apply to: --dev MAJ:MIN".into());
        }
        Ok(())
    }

    fn is_io_free(&self) -> bool {
        self.io_read_bps.is_none() && self.io_write_bps.is_none()
    }

    /// The host's own check: a CPU limit above its cores cannot bind.
    pub fn fits_host(&self, cores: u32) -> Result<(), String> {
        match self.cpu_percent {
            Some(c) if c > cores.saturating_mul(100) => Err(format!(
                "CPU limit {c}% is above this host's {cores} cores ({}%)",
                cores.saturating_mul(100)
            )),
            _ => Ok(()),
        }
    }
}

/// `cpu 20%, memory 67108864, write 2097152/s on 8:0`; empty limits
/// nothing (a fresh group's read-back).
impl std::fmt::Display for Resources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if let Some(c) = self.cpu_percent {
            parts.push(format!("cpu {c}%"));
        }
        if let Some(m) = self.memory_bytes {
            parts.push(format!("memory {m}"));
        }
        if let (Some(v), Some((maj, min))) = (self.io_read_bps, self.dev) {
            parts.push(format!("read {v}/s on {maj}:{min}"));
        }
        if let (Some(v), Some((maj, min))) = (self.io_write_bps, self.dev) {
            parts.push(format!("write {v}/s on {maj}:{min}"));
        }
        if parts.is_empty() {
            f.write_str("no limits")
        } else {
            f.write_str(&parts.join(", "))
        }
    }
}

impl LimitSpec {
    pub fn validate(&self) -> Result<(), String> {
        self.selector.validate()?;
        self.resources.validate()?;
        if let Targets::Nodes { ids } = &self.hosts
            && ids.is_empty()
        {
            return Err("no hosts named".into());
        }
        match self.for_ms {
            Some(0) => Err("a limit for 0 s would be released at once".into()),
            Some(ms) if ms > MAX_FOR_MS => Err(format!(
                "--for {ms} ms is above the limit of {MAX_FOR_MS} ms (30 days)"
            )),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(selector: Selector, resources: Resources) -> LimitSpec {
        LimitSpec {
            selector,
            hosts: Targets::All,
            resources,
            for_ms: None,
        }
    }

    fn cpu(c: u32) -> Resources {
        Resources {
            cpu_percent: Some(c),
            ..Resources::default()
        }
    }

    #[test]
    fn bad_limits_are_refused() {
        let name = || Selector::Name { name: "x".into() };
        let bad = [
            spec(Selector::Pid { pid: 1 }, cpu(20)),
            spec(Selector::Pid { pid: 0 }, cpu(20)),
            spec(Selector::Name { name: "".into() }, cpu(20)),
            spec(Selector::Cgroup { path: "/".into() }, cpu(20)),
            spec(Selector::Cgroup { path: "a/b".into() }, cpu(20)),
            spec(name(), Resources::default()),
            spec(name(), cpu(0)),
            spec(name(), cpu(MAX_CPU_PERCENT + 1)),
            spec(
                name(),
                Resources {
                    memory_bytes: Some(1024),
                    ..Resources::default()
                },
            ),
            spec(
                name(),
                Resources {
                    io_write_bps: Some(2 << 20),
                    ..Resources::default()
                },
            ),
            spec(
                name(),
                Resources {
                    dev: Some((8, 0)),
                    ..Resources::default()
                },
            ),
            LimitSpec {
                for_ms: Some(0),
                ..spec(name(), cpu(20))
            },
            LimitSpec {
                hosts: Targets::Nodes {
                    ids: BTreeSet::new(),
                },
                ..spec(name(), cpu(20))
            },
        ];
        for b in bad {
            assert!(b.validate().is_err(), "{b:?}");
        }
        let ok = spec(
            Selector::Pid { pid: 42 },
            Resources {
                cpu_percent: Some(20),
                memory_bytes: Some(64 << 20),
                io_write_bps: Some(2 << 20),
                dev: Some((8, 0)),
                ..Resources::default()
            },
        );
        assert_eq!(ok.validate(), Ok(()));
    }

    #[test]
    fn cpu_must_fit_the_host() {
        assert!(cpu(200).fits_host(2).is_ok());
        assert!(cpu(500).fits_host(2).is_err());
        assert!(Resources::default().fits_host(1).is_ok());
    }

    #[test]
    fn selectors_match() {
        let cmd = vec!["python3".to_string(), "job.py".to_string()];
        let cgs = vec!["/user.slice/session-1".to_string()];
        assert!(Selector::Pid { pid: 7 }.matches(7, "python3", &cmd, &cgs));
        assert!(!Selector::Pid { pid: 8 }.matches(7, "python3", &cmd, &cgs));
        assert!(Selector::Name { name: "job".into() }.matches(7, "python3", &cmd, &cgs));
        assert!(
            !Selector::Name {
                name: "nginx".into()
            }
            .matches(7, "python3", &cmd, &cgs)
        );
        let cg = |p: &str| Selector::Cgroup { path: p.into() };
        assert!(cg("/user.slice").matches(7, "", &[], &cgs));
        assert!(cg("/user.slice/session-1/").matches(7, "", &[], &cgs));
        assert!(!cg("/user").matches(7, "", &[], &cgs));
    }
}
