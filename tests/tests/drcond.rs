//! drcond end to end: `elton limit` on real cgroups (this machine: cgroup
//! v1 with cpu, memory, blkio, pids) and real processes, through a
//! control group of one master and two slave hosts. Every host runs on
//! this machine, each with its own root
//! (`<its own cgroup>/elton-<name>`), so a test selects by pid.

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
        let ticks = || {
            let stat =
                std::fs::read_to_string(format!("/proc/{}/stat", self.0.id())).expect("stat");
            let after = &stat[stat.rfind(')').expect("comm") + 2..];
            let f: Vec<&str> = after.split_whitespace().collect();
            // utime and stime are fields 14 and 15; `after` starts at 3.
            f[11].parse::<u64>().expect("utime") + f[12].parse::<u64>().expect("stime")
        };
        let t0 = ticks();
        let start = Instant::now();
        std::thread::sleep(window);
        let used = ticks() - t0;
        used as f64 / clock_ticks() / start.elapsed().as_secs_f64() * 100.0
    }
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

/// Host `name`'s Elton root in `controller`'s hierarchy: the hosts are
/// this test's children, so they run in its cgroups.
fn root(controller: &str, name: &str) -> PathBuf {
    let own = std::fs::read_to_string("/proc/self/cgroup").expect("own cgroup");
    let path = own
        .lines()
        .find_map(|l| {
            let mut p = l.splitn(3, ':');
            let _ = p.next();
            let ctrls = p.next()?;
            let path = p.next()?;
            ctrls
                .split(',')
                .any(|c| c == controller)
                .then(|| path.to_string())
        })
        .expect("controller mounted");
    PathBuf::from("/sys/fs/cgroup")
        .join(controller)
        .join(path.trim_start_matches('/'))
        .join(format!("elton-{name}"))
}

fn groups(name: &str) -> Vec<String> {
    let mut ids = Vec::new();
    for c in ["cpu", "memory", "blkio", "pids"] {
        if let Ok(entries) = std::fs::read_dir(root(c, name)) {
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

#[test]
fn drcond() {
    if !std::path::Path::new("/sys/fs/cgroup/cpu").exists() {
        panic!("this test needs cgroup v1 with the cpu controller at /sys/fs/cgroup/cpu");
    }
    let mut g = Group::new(1, 2, &[]);
    g.converged(1, CONVERGE);
    phase1_a_cpu_limit_holds_a_busy_loop_and_release_lifts_it(&g);
    phase2_bad_input_changes_nothing(&g);
    phase3_a_temporary_limit_is_lifted_by_the_leader(&g);
    phase4_a_restarted_host_keeps_its_limit_without_duplicates(&mut g);
}

fn phase1_a_cpu_limit_holds_a_busy_loop_and_release_lifts_it(g: &Group) {
    let busy = Busy::start();
    let id = set_limit(
        g,
        &["--pid", &busy.pid(), "--host", "slave1", "--cpu", "20%"],
    );
    let group = |c: &str| root(c, "slave1").join(id.to_string());
    wait_until("the limit in effect", Duration::from_secs(10), || {
        read(group("cpu").join("cpu.cfs_quota_us")) == "20000"
            && read(group("cpu").join("cgroup.procs")) == busy.pid()
    });
    // Only slave1 made a group.
    assert!(groups("slave2").is_empty(), "{:?}", groups("slave2"));
    let used = busy.cpu_percent(Duration::from_secs(3));
    assert!(used <= 25.0, "limited to 20% but used {used:.1}%");
    let ls = limits(g);
    assert_eq!(ls[0]["id"], id, "{ls:#}");
    assert_eq!(ls[0]["hosts"], serde_json::json!(["slave1"]), "{ls:#}");
    assert_eq!(ls[0]["resources"]["cpu_percent"], 20, "{ls:#}");

    let out = g.ok(1, &["limit", "release", &id.to_string()]);
    assert!(out.contains(&format!("released limit {id}")), "{out}");
    wait_until("the group removed", Duration::from_secs(10), || {
        groups("slave1").is_empty()
    });
    // Back in the cgroup it came from (this test's), and free again.
    let own = read(PathBuf::from("/proc/self/cgroup"));
    let its = read(PathBuf::from(format!("/proc/{}/cgroup", busy.pid())));
    assert_eq!(its, own);
    let mut best: f64 = 0.0;
    for _ in 0..5 {
        best = best.max(busy.cpu_percent(Duration::from_secs(1)));
        if best > 40.0 {
            break;
        }
    }
    assert!(best > 40.0, "released but uses only {best:.1}%");
    assert!(limits(g).as_array().is_some_and(Vec::is_empty));
}

fn phase2_bad_input_changes_nothing(g: &Group) {
    let busy = Busy::start();
    let pid = busy.pid();
    let elton = g.masters[0].child.id().to_string();
    for (args, says) in [
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
            root("cpu", "slave1")
                .join(id.to_string())
                .join("cpu.cfs_quota_us"),
        ) == "20000"
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        read(
            root("cpu", "slave1")
                .join(id.to_string())
                .join("cgroup.procs")
        ),
        ""
    );
    g.ok(1, &["limit", "release", &id.to_string()]);
    wait_until("the group removed", Duration::from_secs(10), || {
        groups("slave1").is_empty()
    });
}

fn phase3_a_temporary_limit_is_lifted_by_the_leader(g: &Group) {
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
    let quota = root("cpu", "slave2")
        .join(id.to_string())
        .join("cpu.cfs_quota_us");
    wait_until("the limit in effect", Duration::from_secs(5), || {
        read(quota.clone()) == "30000"
    });
    wait_until("the limit lifted", Duration::from_secs(10), || {
        groups("slave2").is_empty()
    });
    let took = start.elapsed();
    // 2 s, one reconcile tick (0.5 s), and slack for a loaded machine.
    assert!(took < Duration::from_secs(4), "lifted after {took:?}");
    assert!(limits(g).as_array().is_some_and(Vec::is_empty));
}

fn phase4_a_restarted_host_keeps_its_limit_without_duplicates(g: &mut Group) {
    let busy = Busy::start();
    let id = set_limit(
        g,
        &["--pid", &busy.pid(), "--host", "slave1", "--cpu", "20%"],
    );
    let procs = root("cpu", "slave1")
        .join(id.to_string())
        .join("cgroup.procs");
    wait_until("the limit in effect", Duration::from_secs(10), || {
        read(procs.clone()) == busy.pid()
    });
    let before = groups("slave1");
    g.slaves[0].kill9();
    g.slaves[0].restart();
    g.converged(1, CONVERGE);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        groups("slave1"),
        before,
        "groups changed across the restart"
    );
    assert_eq!(read(procs.clone()), busy.pid());
    let used = busy.cpu_percent(Duration::from_secs(2));
    assert!(used <= 25.0, "used {used:.1}% after the restart");
    g.ok(1, &["limit", "release", &id.to_string()]);
    wait_until("nothing of Elton's left", Duration::from_secs(10), || {
        groups("slave1").is_empty() && groups("slave2").is_empty()
    });
}
