//! cgroup files as the host reconciler reads them back (pure parsers), for
//! cgroup v1 (`cpu.cfs_quota_us`, `memory.limit_in_bytes`,
//! `blkio.throttle.*_bps_device`) and v2 (`cpu.max`, `memory.max`,
//! `io.max`), and the Elton group a process is in from its
//! `/proc/PID/cgroup`. Reading back is how a host knows what its groups
//! have after a restart, so the planner rewrites only what differs.

use super::spec::Resources;

/// The CFS period Elton writes (the kernel's default): 100 ms.
pub const CFS_PERIOD_US: u64 = 100_000;

/// Memory limits at or above this are "no limit" (v1 shows the largest
/// page-aligned i64 when unlimited).
const UNLIMITED_MEMORY: u64 = 1 << 62;

/// The CFS quota for `percent` of one core over [`CFS_PERIOD_US`].
pub fn cfs_quota_us(percent: u32) -> u64 {
    cfs_quota_us_over(percent, CFS_PERIOD_US)
}

/// The CFS quota for `percent` of one core over `period_us`.
pub fn cfs_quota_us_over(percent: u32, period_us: u64) -> u64 {
    u64::from(percent) * period_us / 100
}

fn percent_of(quota: u64, period: u64) -> Option<u32> {
    if period == 0 {
        return None;
    }
    u32::try_from((quota * 100 + period / 2) / period).ok()
}

/// v1: `cpu.cfs_quota_us` and `cpu.cfs_period_us`; `-1` is no limit.
pub fn cpu_v1(quota: &str, period: &str) -> Option<u32> {
    let quota: i64 = quota.trim().parse().ok()?;
    let period: u64 = period.trim().parse().ok()?;
    percent_of(u64::try_from(quota).ok()?, period)
}

/// v2: `cpu.max`, `QUOTA PERIOD` or `max PERIOD`.
pub fn cpu_v2(cpu_max: &str) -> Option<u32> {
    let mut it = cpu_max.split_whitespace();
    let quota: u64 = it.next()?.parse().ok()?;
    let period: u64 = it.next()?.parse().ok()?;
    percent_of(quota, period)
}

/// v1 `memory.limit_in_bytes` or v2 `memory.max` (`max` is no limit).
pub fn memory(text: &str) -> Option<u64> {
    let v: u64 = text.trim().parse().ok()?;
    (v < UNLIMITED_MEMORY).then_some(v)
}

/// v1 `blkio.throttle.read_bps_device` / `write_bps_device`: lines of
/// `MAJ:MIN BPS`; the rate for `dev`.
pub fn blkio_v1(text: &str, dev: (u32, u32)) -> Option<u64> {
    let want = format!("{}:{}", dev.0, dev.1);
    text.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        (it.next()? == want).then_some(())?;
        it.next()?.parse().ok()
    })
}

/// v2 `io.max`: lines of `MAJ:MIN rbps=N wbps=N riops=max wiops=max`;
/// the read and write rates for `dev`.
pub fn io_v2(text: &str, dev: (u32, u32)) -> (Option<u64>, Option<u64>) {
    let want = format!("{}:{}", dev.0, dev.1);
    let Some(line) = text
        .lines()
        .find(|l| l.split_whitespace().next() == Some(want.as_str()))
    else {
        return (None, None);
    };
    let field = |key: &str| {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
    };
    (field("rbps"), field("wbps"))
}

/// The file contents a group's limits are read back from (`None`: file
/// absent or unreadable).
#[derive(Debug, Default, Clone)]
pub struct GroupFiles {
    pub v2: bool,
    /// v1: `cpu.cfs_quota_us`, `cpu.cfs_period_us`; v2: `cpu.max` (second
    /// unused).
    pub cpu: (Option<String>, Option<String>),
    pub memory: Option<String>,
    /// v1: read and write `bps_device` files; v2: `io.max` (second
    /// unused).
    pub io: (Option<String>, Option<String>),
}

/// What a group has, in the terms of [`Resources`]; the device is the one
/// the limit names (a group limits one device).
pub fn read_back(files: &GroupFiles, dev: Option<(u32, u32)>) -> Resources {
    let cpu_percent = match (&files.cpu, files.v2) {
        ((Some(max), _), true) => cpu_v2(max),
        ((Some(q), Some(p)), false) => cpu_v1(q, p),
        _ => None,
    };
    let (io_read_bps, io_write_bps) = match (dev, &files.io, files.v2) {
        (Some(d), (Some(max), _), true) => io_v2(max, d),
        (Some(d), (r, w), false) => (
            r.as_deref().and_then(|t| blkio_v1(t, d)),
            w.as_deref().and_then(|t| blkio_v1(t, d)),
        ),
        _ => (None, None),
    };
    Resources {
        cpu_percent,
        memory_bytes: files.memory.as_deref().and_then(memory),
        io_read_bps,
        io_write_bps,
        dev: dev.filter(|_| io_read_bps.is_some() || io_write_bps.is_some()),
    }
}

/// The largest page size a kernel rounds a memory limit down to (arm64
/// and ppc64 run 64 KiB pages; x86 4 KiB).
const MAX_PAGE_BYTES: u64 = 64 << 10;

/// Whether what a group's files hold (`have`, read back) is the limit
/// `want`: equal, except that the kernel keeps a memory limit rounded down
/// to whole pages (`5000000` reads back as `4997120` on 4 KiB pages), which
/// must not count as "not applied" or the group would be rewritten on every
/// pass and never reported applied.
pub fn holds(have: &Resources, want: &Resources) -> bool {
    let memory_ok = match (have.memory_bytes, want.memory_bytes) {
        (Some(h), Some(w)) => h <= w && w - h < MAX_PAGE_BYTES,
        (h, w) => h == w,
    };
    memory_ok
        && have.cpu_percent == want.cpu_percent
        && have.io_read_bps == want.io_read_bps
        && have.io_write_bps == want.io_write_bps
        && have.dev == want.dev
}

/// The Elton group (limit id) a process is in, from its
/// `/proc/PID/cgroup` text: its path in `hierarchy` (v1: a controller
/// such as `memory`; v2: the `0::` line) is `<root>/<id>` or below.
/// `root` is absolute, e.g. `/elton/host1`.
pub fn group_of(proc_cgroup: &str, root: &str, v2: bool, controller: &str) -> Option<u64> {
    let root = root.trim_end_matches('/');
    let rest = hierarchy_path(proc_cgroup, v2, controller)?
        .strip_prefix(root)?
        .strip_prefix('/')?;
    rest.split('/').next()?.parse().ok()
}

/// The process's path in `hierarchy` (v1: the line naming `controller`;
/// v2: the `0::` line) from its `/proc/PID/cgroup` text.
fn hierarchy_path<'a>(proc_cgroup: &'a str, v2: bool, controller: &str) -> Option<&'a str> {
    proc_cgroup.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (hier, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
        let ours = if v2 {
            hier == "0" && ctrls.is_empty()
        } else {
            ctrls.split(',').any(|c| c == controller)
        };
        ours.then_some(path)
    })
}

/// The group of *another* Elton host on this machine a process is in, as
/// the path of that group (`/<base>/elton-<name>-<tag>/<id>`), from its
/// `/proc/PID/cgroup` text: a path component shaped like a host root
/// (`elton-<name>-<8 hex>`, see `host.rs`) followed by a limit id, that is
/// not below this host's `root`. Several hosts of one machine (tests, a
/// master and a slave side by side) see the same processes; one that
/// another host holds is left to it, or the hosts would move it back and
/// forth on every tick and each return it into the other's group.
pub fn foreign_group(proc_cgroup: &str, root: &str, v2: bool, controller: &str) -> Option<String> {
    let root = root.trim_end_matches('/');
    let path = hierarchy_path(proc_cgroup, v2, controller)?;
    if path.strip_prefix(root).is_some_and(|r| r.starts_with('/')) {
        return None;
    }
    let parts: Vec<&str> = path.split('/').collect();
    let at = parts
        .windows(2)
        .position(|w| is_host_root(w[0]) && w[1].parse::<u64>().is_ok())?;
    Some(parts[..at + 2].join("/"))
}

/// Whether `path` (a hierarchy path) lies in some Elton host's limit
/// group: a host root followed by a limit id. No process is ever returned
/// into one: that host may be removing it (its `rmdir` would then fail
/// with EBUSY and the group stay), and it is not where the process came
/// from but where another host had just put it.
pub fn in_host_group(path: &str) -> bool {
    path.split('/')
        .collect::<Vec<_>>()
        .windows(2)
        .any(|w| is_host_root(w[0]) && w[1].parse::<u64>().is_ok())
}

/// Whether a directory name is a host root: `elton-<name>-<8 hex>`.
fn is_host_root(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("elton-") else {
        return false;
    };
    rest.rsplit_once('-').is_some_and(|(host, tag)| {
        !host.is_empty()
            && tag.len() == 8
            && tag
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// A process's path in each hierarchy, to return it there later:
/// `(controllers, path)` per line (v2: one line with no controllers).
pub fn origins(proc_cgroup: &str) -> Vec<(String, String)> {
    proc_cgroup
        .lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ':');
            let _ = parts.next()?;
            Some((parts.next()?.to_string(), parts.next()?.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &str = "9:name=systemd:/\n8:pids:/\n7:blkio:/elton/h1/12\n4:memory:/elton/h1/12/\n2:cpu,cpuacct:/elton/h1/12\n0::/\n";
    const V2: &str = "0::/elton/h2/7\n";

    #[test]
    fn cpu_files() {
        assert_eq!(cfs_quota_us(20), 20_000);
        assert_eq!(cfs_quota_us(150), 150_000);
        assert_eq!(cfs_quota_us_over(25, 10_000), 2_500);
        assert_eq!(cpu_v1("20000\n", "100000\n"), Some(20));
        assert_eq!(cpu_v1("-1", "100000"), None);
        assert_eq!(cpu_v2("30000 100000\n"), Some(30));
        assert_eq!(cpu_v2("max 100000"), None);
        assert_eq!(cpu_v2(""), None);
    }

    #[test]
    fn memory_files() {
        assert_eq!(memory("67108864\n"), Some(64 << 20));
        assert_eq!(memory("9223372036854771712"), None);
        assert_eq!(memory("max\n"), None);
    }

    #[test]
    fn io_files() {
        let v1 = "8:0 2097152\n8:16 1048576\n";
        assert_eq!(blkio_v1(v1, (8, 16)), Some(1 << 20));
        assert_eq!(blkio_v1(v1, (8, 32)), None);
        let v2 = "8:0 rbps=10485760 wbps=max riops=max wiops=max\n259:0 rbps=max wbps=2097152 riops=max wiops=max\n";
        assert_eq!(io_v2(v2, (8, 0)), (Some(10 << 20), None));
        assert_eq!(io_v2(v2, (259, 0)), (None, Some(2 << 20)));
        assert_eq!(io_v2(v2, (1, 1)), (None, None));
    }

    #[test]
    fn read_back_matches_what_was_written() {
        let v1 = GroupFiles {
            v2: false,
            cpu: (Some("20000".into()), Some("100000".into())),
            memory: Some("67108864".into()),
            io: (Some(String::new()), Some("8:0 2097152".into())),
        };
        let want = Resources {
            cpu_percent: Some(20),
            memory_bytes: Some(64 << 20),
            io_read_bps: None,
            io_write_bps: Some(2 << 20),
            dev: Some((8, 0)),
        };
        assert_eq!(read_back(&v1, Some((8, 0))), want);
        let v2 = GroupFiles {
            v2: true,
            cpu: (Some("20000 100000".into()), None),
            memory: Some("67108864".into()),
            io: (Some("8:0 rbps=max wbps=2097152".into()), None),
        };
        assert_eq!(read_back(&v2, Some((8, 0))), want);
        // A fresh group limits nothing.
        let fresh = GroupFiles {
            v2: false,
            cpu: (Some("-1".into()), Some("100000".into())),
            memory: Some("9223372036854771712".into()),
            io: (Some(String::new()), Some(String::new())),
        };
        assert_eq!(read_back(&fresh, None), Resources::default());
    }

    #[test]
    fn memory_rounded_to_pages_holds_the_limit() {
        let mem = |m: u64| Resources {
            memory_bytes: Some(m),
            ..Resources::default()
        };
        assert!(holds(&mem(4_997_120), &mem(5_000_000)));
        assert!(holds(&mem(64 << 20), &mem(64 << 20)));
        assert!(!holds(&mem(5_001_216), &mem(5_000_000)));
        assert!(!holds(&mem(32 << 20), &mem(64 << 20)));
        assert!(!holds(&Resources::default(), &mem(64 << 20)));
        let cpu = Resources {
            cpu_percent: Some(20),
            ..mem(4_997_120)
        };
        assert!(!holds(&cpu, &mem(5_000_000)));
    }

    #[test]
    fn a_group_of_another_host_on_this_machine() {
        let mine = "/sb/elton-m1-0a0b0c0d";
        let v1 = |path: &str| format!("7:blkio:/\n4:memory:{path}\n2:cpu:/\n");
        assert_eq!(
            foreign_group(&v1("/sb/elton-m2-5ececb01/8"), mine, false, "memory"),
            Some("/sb/elton-m2-5ececb01/8".to_string())
        );
        // Another host's root at another base, a process below a group.
        assert_eq!(
            foreign_group(&v1("/other/elton-s-1-00ff00ff/12/x"), mine, false, "memory"),
            Some("/other/elton-s-1-00ff00ff/12".to_string())
        );
        // Its own groups, plain cgroups and look-alikes are not foreign.
        for path in [
            "/sb/elton-m1-0a0b0c0d/8",
            "/sb",
            "/",
            "/sb/elton-m2-5ececb01",
            "/sb/elton-m2-5ECECB01/8",
            "/sb/elton-m2-5ececb0/8",
            "/sb/elton--5ececb01/8",
            "/sb/elton-m2-5ececb01/web",
        ] {
            assert_eq!(
                foreign_group(&v1(path), mine, false, "memory"),
                None,
                "{path}"
            );
        }
        assert_eq!(
            foreign_group(&v1("/sb/elton-m2-5ececb01/8"), mine, false, "cpu"),
            None
        );
        assert_eq!(
            foreign_group("0::/elton-m3-12345678/4\n", "/elton-m1-0a0b0c0d", true, ""),
            Some("/elton-m3-12345678/4".to_string())
        );
    }

    #[test]
    fn no_return_into_any_hosts_group() {
        assert!(in_host_group("system.slice/elton-m2-0a0b0c0d/15"));
        assert!(in_host_group("elton-m2-0a0b0c0d/15/"));
        assert!(!in_host_group("system.slice/elton-m2-0a0b0c0d"));
        assert!(!in_host_group("user.slice/session-3.scope"));
        assert!(!in_host_group("elton-m2-notahex1/15"));
        assert!(!in_host_group(""));
    }

    #[test]
    fn the_group_a_process_is_in() {
        assert_eq!(group_of(V1, "/elton/h1", false, "memory"), Some(12));
        assert_eq!(group_of(V1, "/elton/h1", false, "cpu"), Some(12));
        assert_eq!(group_of(V1, "/elton/h1", false, "pids"), None);
        assert_eq!(group_of(V1, "/elton/h2", false, "memory"), None);
        assert_eq!(group_of(V2, "/elton/h2", true, ""), Some(7));
        assert_eq!(group_of(V2, "/elton/h22", true, ""), None);
        assert_eq!(group_of("0::/elton/h2x/7\n", "/elton/h2", true, ""), None);
        assert_eq!(
            origins(V1)[3],
            ("memory".to_string(), "/elton/h1/12/".to_string())
        );
        assert_eq!(origins(V2), [(String::new(), "/elton/h2/7".to_string())]);
    }
}
