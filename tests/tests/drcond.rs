//! drcond end to end: `elton limit` on real cgroups (this machine: cgroup
//! v1 with cpu, memory, blkio, pids) and real processes, through a
//! control group of three masters and two slave hosts. Every host runs on
//! this machine, each with its own root
//! (`<its own cgroup>/elton-<name>-<tag>`), so a test selects by pid.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::group::Group;
use common::wait_until;

const CONVERGE: Duration = Duration::from_secs(60);

/// A busy loop, killed on drop.
struct Busy(Child);

impl Busy {
    fn start() -> Self {
        Busy(
            Command::new("sh")
                .args(["-c", "while :; do :; done"])
                .stdin(Stdio::null())
                .spawn()
                .expect("starting a busy loop"),
        )
    }

    fn pid(&self) -> String {
        self.0.id().to_string()
    }

    /// Its CPU use over `window`, in percent of one core, from its own
    /// `/proc/PID/stat`.
    fn cpu_percent(&self, window: Duration) -> f64 {
        cpu_percents(&[self], window)[0]
    }

    /// CPU time used so far, in clock ticks.
    fn ticks(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.0.id())).expect("stat");
        let after = &stat[stat.rfind(')').expect("comm") + 2..];
        let f: Vec<&str> = after.split_whitespace().collect();
        // utime and stime are fields 14 and 15; `after` starts at 3.
        f[11].parse::<u64>().expect("utime") + f[12].parse::<u64>().expect("stime")
    }
}

/// The CPU use of each loop over the same `window`, in percent of one core.
fn cpu_percents(loops: &[&Busy], window: Duration) -> Vec<f64> {
    let t0: Vec<u64> = loops.iter().map(|b| b.ticks()).collect();
    let start = Instant::now();
    std::thread::sleep(window);
    let secs = start.elapsed().as_secs_f64();
    loops
        .iter()
        .zip(t0)
        .map(|(b, t0)| (b.ticks() - t0) as f64 / clock_ticks() / secs * 100.0)
        .collect()
}

impl Drop for Busy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn clock_ticks() -> f64 {
    let out = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .expect("getconf");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("CLK_TCK")
}

/// Host `name`'s root directory name, `elton-<name>-<tag>`: the tag is
/// the first 8 hex digits of the BLAKE3 of its control dir (a slave's data
/// dir), so leftovers of other runs are not mistaken for it.
fn leaf(g: &Group, name: &str) -> String {
    let dir = g.dir.path().join(name);
    let tag = blake3::hash(dir.to_string_lossy().as_bytes()).to_hex();
    format!("elton-{name}-{}", &tag.as_str()[..8])
}

/// A host's Elton root in `controller`'s hierarchy: the hosts are this
/// test's children, so they run in its cgroups.
fn root(controller: &str, leaf: &str) -> PathBuf {
    common::cgroup_dir("self", controller).join(leaf)
}

fn groups(leaf: &str) -> Vec<String> {
    let mut ids = Vec::new();
    for c in ["cpu", "memory", "blkio", "pids"] {
        if let Ok(entries) = std::fs::read_dir(root(c, leaf)) {
            for e in entries.flatten() {
                if e.path().is_dir() {
                    ids.push(format!("{c}/{}", e.file_name().to_string_lossy()));
                }
            }
        }
    }
    ids.sort();
    ids
}

fn read(path: PathBuf) -> String {
    std::fs::read_to_string(&path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn set_limit(g: &Group, args: &[&str]) -> u64 {
    let mut all = vec!["limit", "--json"];
    all.extend_from_slice(args);
    let out = g.ok(1, &all);
    let v: serde_json::Value = serde_json::from_str(&out).expect("limit output");
    v["id"].as_u64().unwrap_or_else(|| panic!("no id in {v}"))
}

fn limits(g: &Group) -> serde_json::Value {
    serde_json::from_str(&g.ok(1, &["limit", "ls", "--json"])).expect("limit ls output")
}

/// The first limit's status on `host`, or `None` while `limit ls` fails
/// (a loaded machine may time a call out; the caller polls).
fn first_status(g: &Group, host: &str) -> Option<serde_json::Value> {
    let out = g.cli(1, &["limit", "ls", "--json"]);
    if !out.status.success() {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    Some(v[0]["status"][host].clone())
}

#[test]
fn drcond() {
    if !std::path::Path::new("/sys/fs/cgroup/cpu").exists() {
        panic!("this test needs cgroup v1 with the cpu controller at /sys/fs/cgroup/cpu");
    }
    let mut g = Group::new(3, 2, &[]);
    g.converged(1, CONVERGE);
    phase1_a_cpu_limit_holds_a_busy_loop_and_release_lifts_it(&g);
    phase2_a_pid_every_host_selects_is_held_by_one_and_not_fought_over(&g);
    phase3_bad_input_changes_nothing(&g);
    phase4_a_temporary_limit_is_lifted_by_the_leader(&g);
    phase5_a_memory_limit_holds_a_growing_process_in_its_group(&g);
    phase6_an_io_write_limit_slows_direct_writes(&g);
    phase7_a_restarted_host_keeps_its_limit_without_duplicates(&mut g);
    phase8_a_temporary_limit_is_lifted_when_the_leader_is_killed(&mut g);
}

fn phase1_a_cpu_limit_holds_a_busy_loop_and_release_lifts_it(g: &Group) {
    let (s1, s2) = (leaf(g, "slave1"), leaf(g, "slave2"));
    let busy = Busy::start();
    let id = set_limit(
        g,
        &["--pid", &busy.pid(), "--host", "slave1", "--cpu", "20%"],
    );
    let group = |c: &str| root(c, &s1).join(id.to_string());
    wait_until("the limit in effect", Duration::from_secs(10), || {
        read(group("cpu").join("cpu.cfs_quota_us")) == "20000"
            && read(group("cpu").join("cgroup.procs")) == busy.pid()
    });
    // Only slave1 made a group.
    assert!(groups(&s2).is_empty(), "{:?}", groups(&s2));
    let used = busy.cpu_percent(Duration::from_secs(3));
    assert!(used <= 25.0, "limited to 20% but used {used:.1}%");
    let ls = limits(g);
    assert_eq!(ls[0]["id"], id, "{ls:#}");
    assert_eq!(ls[0]["hosts"], serde_json::json!(["slave1"]), "{ls:#}");
    assert_eq!(ls[0]["resources"]["cpu_percent"], 20, "{ls:#}");
    // The host reports the limit applied, with the process in its group.
    let busy_pid: i64 = busy.pid().parse().expect("pid");
    wait_until("slave1 reports the limit", Duration::from_secs(10), || {
        first_status(g, "slave1").is_some_and(|st| {
            st["state"] == "applied" && st["procs"] == serde_json::json!([busy_pid])
        })
    });
    let text = g.ok(1, &["limit", "ls"]);
    assert!(
        text.contains(&format!(
            "slave1: applied, 1 process [{busy_pid}], 0 OOM kills"
        )),
        "{text}"
    );

    let out = g.ok(1, &["limit", "release", &id.to_string()]);
    assert!(out.contains(&format!("released limit {id}")), "{out}");
    wait_until("the group removed", Duration::from_secs(10), || {
        groups(&s1).is_empty()
    });
    // Back in the cgroup it came from (this test's), and free again.
    let own = read(PathBuf::from("/proc/self/cgroup"));
    let its = read(PathBuf::from(format!("/proc/{}/cgroup", busy.pid())));
    assert_eq!(its, own);
    // Free again: well above the 20% cap, or, on a machine so loaded that
    // the cap would not bind, as much as an unlimited twin gets over the
    // same windows (held at 20%, it would get a fraction of the twin's).
    let twin = Busy::start();
    let (mut ours, mut twins, mut seen) = (0.0, 0.0, Vec::new());
    let free = (0..5).any(|_| {
        let used = cpu_percents(&[&busy, &twin], Duration::from_secs(1));
        seen.push(format!("{:.1}% (twin {:.1}%)", used[0], used[1]));
        ours += used[0];
        twins += used[1];
        used[0] > 40.0
    }) || ours >= 0.6 * twins;
    assert!(free, "released but still held: {seen:?}");
    assert!(limits(g).as_array().is_some_and(Vec::is_empty));
}

/// Every host of this run shares the machine: a pid selected on all of
/// them is taken by the first host that reconciles; the others make their
/// groups, leave the process to it and say so in `elton limit ls`. Before,
/// each host took it back on every tick and, on release, returned it into
/// another host's (vanishing) group.
fn phase2_a_pid_every_host_selects_is_held_by_one_and_not_fought_over(g: &Group) {
    let hosts = ["m1", "m2", "m3", "slave1", "slave2"];
    let leaves: Vec<String> = hosts.iter().map(|h| leaf(g, h)).collect();
    let busy = Busy::start();
    let pid: i64 = busy.pid().parse().expect("pid");
    let id = set_limit(g, &["--pid", &busy.pid(), "--all", "--cpu", "50%"]);
    let in_groups = || {
        leaves
            .iter()
            .filter(|l| {
                read(root("cpu", l).join(id.to_string()).join("cgroup.procs")) == busy.pid()
            })
            .count()
    };
    wait_until("every host applied it", Duration::from_secs(15), || {
        let out = g.cli(1, &["limit", "ls", "--json"]);
        let Ok(ls) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
            return false;
        };
        hosts
            .iter()
            .all(|h| ls[0]["status"][h]["state"] == "applied")
            && in_groups() == 1
    });
    // Held by one host, steadily, over several reconcile ticks.
    let memory = || {
        read(PathBuf::from(format!("/proc/{}/cgroup", busy.pid())))
            .lines()
            .find(|l| l.contains(":memory:"))
            .map(str::to_string)
            .unwrap_or_default()
    };
    let first = memory();
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(memory(), first, "the process moved between hosts' groups");
        assert_eq!(in_groups(), 1);
    }
    let ls = limits(g);
    let holders: Vec<&str> = hosts
        .iter()
        .copied()
        .filter(|h| ls[0]["status"][h]["procs"] == serde_json::json!([pid]))
        .collect();
    assert_eq!(holders.len(), 1, "{ls:#}");
    let holder_root = &leaves[hosts.iter().position(|h| *h == holders[0]).expect("holder")];
    for h in hosts.iter().filter(|h| **h != holders[0]) {
        let st = &ls[0]["status"][h];
        assert_eq!(st["procs"], serde_json::json!([]), "{h}: {ls:#}");
        assert_eq!(st["held"][0]["pid"], pid, "{h}: {ls:#}");
        let group = st["held"][0]["group"].as_str().unwrap_or_default();
        assert!(
            group.ends_with(&format!("/{holder_root}/{id}")),
            "{h}: {ls:#}"
        );
    }
    let text = g.ok(1, &["limit", "ls"]);
    assert!(
        text.contains(&format!(
            "process {pid} not taken: another Elton host on this machine holds it"
        )),
        "{text}"
    );

    g.ok(1, &["limit", "release", &id.to_string()]);
    wait_until("every group removed", Duration::from_secs(10), || {
        leaves.iter().all(|l| groups(l).is_empty())
    });
    // Back where it came from: this test's cgroups.
    let own = read(PathBuf::from("/proc/self/cgroup"));
    let its = read(PathBuf::from(format!("/proc/{}/cgroup", busy.pid())));
    assert_eq!(its, own);
}

fn phase3_bad_input_changes_nothing(g: &Group) {
    let s1 = leaf(g, "slave1");
    let busy = Busy::start();
    let pid = busy.pid();
    let elton = g.masters[0].child.id().to_string();
    // Every host of a test run is this machine: one core more than it has.
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let too_much = format!("{}%", (cores + 1) * 100);
    for (args, says) in [
        (
            vec![
                "limit", "--pid", &pid, "--host", "slave1", "--cpu", &too_much,
            ],
            "cores",
        ),
        (
            vec!["limit", "--pid", &pid, "--all", "--cpu", &too_much],
            "cores",
        ),
        (vec!["limit", "--pid", "1", "--cpu", "20%"], "pid 1"),
        (vec!["limit", "--pid", &pid, "--cpu", "0%"], "0%"),
        (vec!["limit", "--pid", &pid, "--cpu", "lots"], "percentage"),
        (vec!["limit", "--pid", &pid, "--memory", "12X"], "size"),
        (vec!["limit", "--pid", &pid, "--memory", "1K"], "minimum"),
        (vec!["limit", "--pid", &pid, "--io-write", "2M"], "--dev"),
        (vec!["limit", "--pid", &pid], "nothing to limit"),
        (vec!["limit", "--cpu", "20%"], "--pid"),
        (
            vec!["limit", "--pid", &pid, "--cpu", "20%", "--host", "nobody"],
            "not a member",
        ),
        (vec!["limit", "release", "999999"], "no limit 999999"),
    ] {
        let err = g.fails(1, &args);
        assert!(err.contains(says), "{args:?}: {err}");
    }
    assert!(limits(g).as_array().is_some_and(Vec::is_empty));
    // An Elton process is never moved, even when a limit selects it.
    let id = set_limit(g, &["--pid", &elton, "--host", "slave1", "--cpu", "20%"]);
    wait_until("the group made", Duration::from_secs(10), || {
        read(
            root("cpu", &s1)
                .join(id.to_string())
                .join("cpu.cfs_quota_us"),
        ) == "20000"
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        read(root("cpu", &s1).join(id.to_string()).join("cgroup.procs")),
        ""
    );
    g.ok(1, &["limit", "release", &id.to_string()]);
    wait_until("the group removed", Duration::from_secs(10), || {
        groups(&s1).is_empty()
    });
}

fn phase4_a_temporary_limit_is_lifted_by_the_leader(g: &Group) {
    let s2 = leaf(g, "slave2");
    let busy = Busy::start();
    let start = Instant::now();
    let id = set_limit(
        g,
        &[
            "--pid",
            &busy.pid(),
            "--host",
            "slave2",
            "--cpu",
            "30%",
            "--for",
            "2s",
        ],
    );
    let quota = || {
        root("cpu", &s2)
            .join(id.to_string())
            .join("cpu.cfs_quota_us")
    };
    wait_until("the limit in effect", Duration::from_secs(5), || {
        read(quota()) == "30000"
    });
    wait_until("the limit lifted", Duration::from_secs(10), || {
        groups(&s2).is_empty()
    });
    let took = start.elapsed();
    // 2 s, one reconcile tick (0.5 s), and slack for a loaded machine.
    assert!(took < Duration::from_secs(4), "lifted after {took:?}");
    assert!(limits(g).as_array().is_some_and(Vec::is_empty));
}

/// A shell that waits until it is in an Elton group, then execs `cmd`.
fn once_limited(cmd: &str) -> Child {
    Command::new("sh")
        .args([
            "-c",
            &format!("while ! grep -q elton- /proc/self/cgroup; do sleep 0.05; done; exec {cmd}"),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning")
}

fn phase5_a_memory_limit_holds_a_growing_process_in_its_group(g: &Group) {
    let s2 = leaf(g, "slave2");
    // Allocates (and touches) 8 MiB every 50 ms, up to 512 MiB.
    let mut grower = once_limited(
        "python3 -c 'import time; b=[(b\"x\"*(8<<20), time.sleep(0.05)) for i in range(64)]; print(\"survived\")'",
    );
    let bystander = Busy::start();
    let pid = grower.id().to_string();
    let id = set_limit(g, &["--pid", &pid, "--host", "slave2", "--memory", "64M"]);
    let group = root("memory", &s2).join(id.to_string());
    let status = grower.wait().expect("waiting for the grower");
    // No swap here: held at 64 MiB, it is killed by the OOM killer of its
    // group (reclaim cannot free anonymous memory).
    let out = String::from_utf8_lossy(
        &grower
            .stdout
            .take()
            .map(|mut o| {
                let mut s = Vec::new();
                let _ = std::io::Read::read_to_end(&mut o, &mut s);
                s
            })
            .unwrap_or_default(),
    )
    .into_owned();
    assert!(
        !status.success() && !out.contains("survived"),
        "{status:?} {out}"
    );
    assert_eq!(
        read(group.join("memory.limit_in_bytes")),
        (64u64 << 20).to_string()
    );
    let peak: u64 = read(group.join("memory.max_usage_in_bytes"))
        .parse()
        .expect("peak");
    assert!(peak <= 64 << 20, "peak {peak}");
    assert!(
        read(group.join("memory.oom_control")).contains("oom_kill 1")
            || read(group.join("memory.failcnt")) != "0",
        "no OOM or reclaim recorded in the group"
    );
    // The kill is reported by the host in `elton limit ls` (where the
    // kernel counts OOM kills per group).
    if read(group.join("memory.oom_control")).contains("oom_kill 1") {
        wait_until(
            "slave2 reports the OOM kill",
            Duration::from_secs(10),
            || {
                first_status(g, "slave2")
                    .is_some_and(|st| st["state"] == "applied" && st["oom_kills"] == 1)
            },
        );
    }
    // Nothing outside it was touched.
    assert!(std::fs::metadata(format!("/proc/{}", bystander.pid())).is_ok());
    g.ok(1, &["limit", "release", &id.to_string()]);
    wait_until("the group removed", Duration::from_secs(10), || {
        groups(&s2).is_empty()
    });
}

fn phase6_an_io_write_limit_slows_direct_writes(g: &Group) {
    let s1 = leaf(g, "slave1");
    let dir = tempfile::tempdir_in("/var/tmp").expect("tempdir");
    let file = dir.path().join("direct");
    let meta = std::fs::metadata(dir.path()).expect("stat");
    let dev = std::os::unix::fs::MetadataExt::dev(&meta);
    // The disk, not a partition's own number: blkio throttles whole disks
    // and partitions alike by the number the file system reports.
    let (major, minor) = ((dev >> 8) & 0xfff, (dev & 0xff) | ((dev >> 12) & 0xfff00));
    let mut writer = once_limited(&format!(
        "dd if=/dev/zero of={} bs=1M count=8 oflag=direct",
        file.display()
    ));
    let pid = writer.id().to_string();
    let id = set_limit(
        g,
        &[
            "--pid",
            &pid,
            "--host",
            "slave1",
            "--io-write",
            "2M",
            "--dev",
            &format!("{major}:{minor}"),
        ],
    );
    let status = writer.wait().expect("dd");
    let mut err = String::new();
    if let Some(mut e) = writer.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }
    assert!(status.success(), "dd: {err}");
    // "8388608 bytes (8.4 MB, 8.0 MiB) copied, 4.00 s, 2.1 MB/s"
    let secs: f64 = err
        .split("copied, ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("dd output: {err}"));
    let rate = 8.0 / secs;
    assert!(
        rate <= 3.0,
        "wrote at {rate:.2} MiB/s under a 2 MiB/s limit ({err})"
    );
    g.ok(1, &["limit", "release", &id.to_string()]);
    wait_until("the group removed", Duration::from_secs(10), || {
        groups(&s1).is_empty()
    });
}

fn phase7_a_restarted_host_keeps_its_limit_without_duplicates(g: &mut Group) {
    let (s1, s2) = (leaf(g, "slave1"), leaf(g, "slave2"));
    let busy = Busy::start();
    let id = set_limit(
        g,
        &["--pid", &busy.pid(), "--host", "slave1", "--cpu", "20%"],
    );
    let procs = || root("cpu", &s1).join(id.to_string()).join("cgroup.procs");
    wait_until("the limit in effect", Duration::from_secs(10), || {
        read(procs()) == busy.pid()
    });
    let before = groups(&s1);
    g.slaves[0].kill9();
    g.slaves[0].restart();
    g.converged(1, CONVERGE);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(groups(&s1), before, "groups changed across the restart");
    assert_eq!(read(procs()), busy.pid());
    let used = busy.cpu_percent(Duration::from_secs(2));
    assert!(used <= 25.0, "used {used:.1}% after the restart");
    g.ok(1, &["limit", "release", &id.to_string()]);
    wait_until("nothing of Elton's left", Duration::from_secs(10), || {
        ["cpu", "memory", "blkio", "pids"]
            .iter()
            .all(|c| !root(c, &s1).exists() && !root(c, &s2).exists())
    });
}

fn phase8_a_temporary_limit_is_lifted_when_the_leader_is_killed(g: &mut Group) {
    let s1 = leaf(g, "slave1");
    assert_eq!(g.leader(2).as_deref(), Some("m1"));
    let busy = Busy::start();
    let start = Instant::now();
    let out = g.ok(
        2,
        &[
            "limit",
            "--json",
            "--pid",
            &busy.pid(),
            "--host",
            "slave1",
            "--cpu",
            "30%",
            "--for",
            "2s",
        ],
    );
    let id = serde_json::from_str::<serde_json::Value>(&out).expect("limit output")["id"]
        .as_u64()
        .expect("id");
    let quota = || {
        root("cpu", &s1)
            .join(id.to_string())
            .join("cpu.cfs_quota_us")
    };
    wait_until("the limit in effect", Duration::from_secs(5), || {
        read(quota()) == "30000"
    });
    // The leader that stamped the expiry dies; a new one releases it.
    g.masters[0].kill9();
    wait_until("the limit lifted", Duration::from_secs(15), || {
        groups(&s1).is_empty()
    });
    let took = start.elapsed();
    // 2 s, one reconcile tick, an election (0.4 to 0.8 s here), slack.
    assert!(took < Duration::from_secs(5), "lifted after {took:?}");
    let ls: serde_json::Value =
        serde_json::from_str(&g.ok(2, &["limit", "ls", "--json"])).expect("ls");
    assert_eq!(ls, serde_json::json!([]), "{ls:#}");
}
