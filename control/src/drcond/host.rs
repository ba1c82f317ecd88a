//! The host side of drcond: reads what this host has (its Elton groups,
//! its processes) into a [`HostView`] and carries out the planner's
//! [`Step`]s on real cgroups with `cgroups-rs` (v1 and v2). Blocking: the
//! member runs it off the async runtime.
//!
//! Where groups live: in each hierarchy, below the cgroup this daemon runs
//! in, at `<own path>/elton-<member name>-<tag>/<limit id>` (systemd: a unit
//! with `Delegate=yes`). Several hosts on one machine therefore have
//! separate roots, and a sandbox's own accounting (a parent memory cgroup)
//! still covers the processes Elton limits.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use cgroups_rs::CgroupPid;
use cgroups_rs::fs::Cgroup;
use cgroups_rs::fs::blkio::BlkIoController;
use cgroups_rs::fs::cpu::CpuController;
use cgroups_rs::fs::hierarchies;
use cgroups_rs::fs::memory::MemController;
use serde::{Deserialize, Serialize};

use super::files::{self, GroupFiles};
use super::plan::{HostView, ProcView, Step};
use super::spec::{Limit, Resources};
use super::status::{Held, HostLimits, LimitStatus, judge, oom_kills};

/// The controllers a group uses (cgroups-rs names; v2's `io` is `blkio`).
const CONTROLLERS: [&str; 4] = ["cpu", "memory", "blkio", "pids"];
/// The hierarchy whose path says which group a process is in.
const MEMBERSHIP_CONTROLLER: &str = "memory";
const CGROUP_MOUNT: &str = "/sys/fs/cgroup";

/// Where a moved process was, to return it there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Origin {
    /// Its start time (ticks since boot): a reused pid is not "returned".
    start: u64,
    /// `(controllers, path)` lines of its `/proc/PID/cgroup`.
    paths: Vec<(String, String)>,
}

pub struct CgroupHost {
    /// `elton-<member name>-<8 hex of its control dir>`: stable across
    /// restarts, distinct for two groups' same-named members on one
    /// machine (concurrent test runs).
    leaf: String,
    v2: bool,
    /// Per controller: this daemon's own cgroup path, relative (no
    /// leading `/`).
    base: HashMap<String, String>,
    /// Moved processes' origins, saved in `origins_file` so a restarted
    /// host still returns them.
    origins: BTreeMap<i32, Origin>,
    origins_file: PathBuf,
    own_exe: Option<PathBuf>,
    /// The CFS period its CPU limits are written over.
    cfs_period_us: u64,
}

impl CgroupHost {
    /// Opens the host side for member `name`, keeping its bookkeeping in
    /// `dir`. Fails where cgroups are not mounted.
    pub fn open(name: &str, dir: &Path) -> Result<Self, String> {
        let opened = Self::open_here(name, dir);
        if let Err(e) = &opened {
            super::report::set(HostLimits {
                off: Some(e.clone()),
                ..HostLimits::default()
            });
        }
        opened
    }

    fn open_here(name: &str, dir: &Path) -> Result<Self, String> {
        if !Path::new(CGROUP_MOUNT).join("cgroup.procs").exists()
            && !Path::new(CGROUP_MOUNT).join("memory").exists()
        {
            return Err(format!("no cgroup file system at {CGROUP_MOUNT}"));
        }
        let v2 = hierarchies::is_cgroup2_unified_mode();
        let own = std::fs::read_to_string("/proc/self/cgroup")
            .map_err(|e| format!("reading /proc/self/cgroup: {e}"))?;
        let mut base = HashMap::new();
        for (ctrls, path) in files::origins(&own) {
            let rel = path
                .trim_start_matches('/')
                .trim_end_matches('/')
                .to_string();
            if v2 {
                if ctrls.is_empty() {
                    for c in CONTROLLERS {
                        base.insert(c.to_string(), rel.clone());
                    }
                }
            } else {
                for c in ctrls.split(',') {
                    base.insert(c.to_string(), rel.clone());
                }
            }
        }
        let origins_file = dir.join("drcond-origins.json");
        let origins = match std::fs::read(&origins_file) {
            Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
                tracing::warn!(
                    "{}: unreadable ({e}); starting afresh",
                    origins_file.display()
                );
                BTreeMap::new()
            }),
            Err(_) => BTreeMap::new(),
        };
        let tag = blake3::hash(dir.to_string_lossy().as_bytes()).to_hex();
        Ok(Self {
            leaf: format!("elton-{name}-{}", &tag.as_str()[..8]),
            v2,
            base,
            origins,
            origins_file,
            own_exe: std::fs::read_link("/proc/self/exe").ok(),
            cfs_period_us: files::CFS_PERIOD_US,
        })
    }

    /// This host's Elton root in `controller`'s hierarchy, relative.
    fn root(&self, controller: &str) -> String {
        let base = self.base.get(controller).map_or("", String::as_str);
        if base.is_empty() {
            self.leaf.clone()
        } else {
            format!("{base}/{}", self.leaf)
        }
    }

    fn group(&self, controller: &str, id: u64) -> Cgroup {
        Cgroup::load_with_specified_controllers(
            hierarchies::auto(),
            format!("{}/{id}", self.root(controller)),
            vec![controller.to_string()],
        )
    }

    fn dir(&self, controller: &str, rel: &str) -> PathBuf {
        if self.v2 {
            Path::new(CGROUP_MOUNT).join(rel)
        } else {
            Path::new(CGROUP_MOUNT).join(controller).join(rel)
        }
    }

    /// Writes CPU limits over `period_us` instead of the kernel's default
    /// 100 ms (the quota keeps its share). A group uses its quota in a
    /// burst, then waits out the rest of the period: a shorter period
    /// bounds that stall, which a web app's requests see as latency.
    pub fn set_cfs_period_us(&mut self, period_us: u64) {
        self.cfs_period_us = period_us.clamp(1_000, 1_000_000);
    }

    /// The `cgroup.procs` files through which a process joins group `id`
    /// (created), in the order [`Self::enter`] moves processes: a process
    /// writing `0` to each joins it itself. A process that must run
    /// limited from its first instruction joins before `exec` this way
    /// (a process moved after it started may already have forked
    /// children that stay outside).
    pub fn join_files(&self, id: u64) -> Vec<PathBuf> {
        let controllers: &[&str] = if self.v2 {
            &["cpu"]
        } else {
            &["blkio", "cpu", "memory", "pids"]
        };
        controllers
            .iter()
            .map(|c| {
                self.dir(c, &format!("{}/{id}", self.root(c)))
                    .join("cgroup.procs")
            })
            .filter(|p| p.exists())
            .collect()
    }

    /// The Elton groups present, by id, across the controllers.
    fn group_ids(&self) -> BTreeSet<u64> {
        let mut ids = BTreeSet::new();
        for c in CONTROLLERS {
            if let Ok(entries) = std::fs::read_dir(self.dir(c, &self.root(c))) {
                ids.extend(
                    entries
                        .flatten()
                        .filter(|e| e.path().is_dir())
                        .filter_map(|e| e.file_name().to_str()?.parse::<u64>().ok()),
                );
            }
        }
        ids
    }

    /// What group `id` has set, read back from its files.
    pub fn read_back(&self, id: u64, dev: Option<(u32, u32)>) -> Resources {
        let read = |c: &str, f: &str| {
            std::fs::read_to_string(self.dir(c, &format!("{}/{id}", self.root(c))).join(f)).ok()
        };
        let files = if self.v2 {
            GroupFiles {
                v2: true,
                cpu: (read("cpu", "cpu.max"), None),
                memory: read("memory", "memory.max"),
                io: (read("blkio", "io.max"), None),
            }
        } else {
            GroupFiles {
                v2: false,
                cpu: (
                    read("cpu", "cpu.cfs_quota_us"),
                    read("cpu", "cpu.cfs_period_us"),
                ),
                memory: read("memory", "memory.limit_in_bytes"),
                io: (
                    read("blkio", "blkio.throttle.read_bps_device"),
                    read("blkio", "blkio.throttle.write_bps_device"),
                ),
            }
        };
        files::read_back(&files, dev)
    }

    /// What this host has now. `limits` (this host's) say which device a
    /// group's IO limits are read back for; with no limits and no groups
    /// the processes are not read at all.
    pub fn view(&self, limits: &[Limit]) -> HostView {
        let ids = self.group_ids();
        let devs: BTreeMap<u64, Option<(u32, u32)>> =
            limits.iter().map(|l| (l.id, l.resources.dev)).collect();
        let groups = ids
            .iter()
            .map(|id| (*id, self.read_back(*id, devs.get(id).copied().flatten())))
            .collect();
        let mut view = HostView {
            groups,
            procs: Vec::new(),
            protected: BTreeSet::from([1, i32::try_from(std::process::id()).unwrap_or(1)]),
        };
        if limits.is_empty() && ids.is_empty() {
            return view;
        }
        let member_root = format!("/{}", self.root(MEMBERSHIP_CONTROLLER));
        let Ok(all) = procfs::process::all_processes() else {
            return view;
        };
        for p in all.flatten() {
            let Ok(stat) = p.stat() else { continue };
            // Kernel threads cannot be moved.
            if stat.ppid == 2 || stat.pid == 2 {
                continue;
            }
            let Ok(text) = std::fs::read_to_string(format!("/proc/{}/cgroup", stat.pid)) else {
                continue;
            };
            if self.own_exe.is_some() && p.exe().ok() == self.own_exe {
                view.protected.insert(stat.pid);
            }
            view.procs.push(ProcView {
                pid: stat.pid,
                in_group: files::group_of(&text, &member_root, self.v2, MEMBERSHIP_CONTROLLER),
                held_by: files::foreign_group(&text, &member_root, self.v2, MEMBERSHIP_CONTROLLER),
                cgroups: files::origins(&text).into_iter().map(|(_, p)| p).collect(),
                cmdline: p.cmdline().unwrap_or_default(),
                name: stat.comm,
            });
        }
        view
    }

    /// Carries out one step.
    pub fn run(&mut self, step: &Step) -> Result<(), String> {
        match step {
            Step::Create { id } => {
                for c in CONTROLLERS {
                    self.group(c, *id)
                        .create()
                        .map_err(|e| format!("creating group {id} ({c}): {e}"))?;
                }
                Ok(())
            }
            Step::Set { id, resources } => self.set(*id, resources),
            Step::Move { pid, id } => self.enter(*pid, *id),
            Step::Return { pid, id } => self.leave(*pid, *id),
            Step::Remove { id } => {
                for c in CONTROLLERS {
                    let g = self.group(c, *id);
                    if g.exists() {
                        g.delete()
                            .map_err(|e| format!("removing group {id} ({c}): {e}"))?;
                    }
                }
                Ok(())
            }
        }
    }

    fn set(&self, id: u64, r: &Resources) -> Result<(), String> {
        let err = |what: &str, e: cgroups_rs::fs::error::Error| {
            format!("group {id}: setting {what}: {e}")
        };
        let cpu = self.group("cpu", id);
        if let Some(c) = cpu.controller_of::<CpuController>() {
            c.set_cfs_period(self.cfs_period_us)
                .map_err(|e| err("the CPU period", e))?;
            let quota = r.cpu_percent.map_or(-1, |p| {
                i64::try_from(files::cfs_quota_us_over(p, self.cfs_period_us)).unwrap_or(i64::MAX)
            });
            c.set_cfs_quota(quota)
                .map_err(|e| err("the CPU quota", e))?;
        }
        let mem = self.group("memory", id);
        if let Some(m) = mem.controller_of::<MemController>() {
            let limit = r
                .memory_bytes
                .map_or(-1, |b| i64::try_from(b).unwrap_or(i64::MAX));
            m.set_limit(limit).map_err(|e| err("the memory limit", e))?;
        }
        if let Some((maj, min)) = r.dev {
            let io = self.group("blkio", id);
            if let Some(b) = io.controller_of::<BlkIoController>() {
                // 0 lifts a throttle.
                b.throttle_read_bps_for_device(
                    u64::from(maj),
                    u64::from(min),
                    r.io_read_bps.unwrap_or(0),
                )
                .map_err(|e| err("the read rate", e))?;
                b.throttle_write_bps_for_device(
                    u64::from(maj),
                    u64::from(min),
                    r.io_write_bps.unwrap_or(0),
                )
                .map_err(|e| err("the write rate", e))?;
            }
        }
        Ok(())
    }

    fn enter(&mut self, pid: i32, id: u64) -> Result<(), String> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .map_err(|e| format!("process {pid}: {e}"))?;
        // The plan saw it free; another host of this machine may have taken
        // it since. Its group would become the saved origin, and the
        // process be returned into it later: leave it to that host.
        let member_root = format!("/{}", self.root(MEMBERSHIP_CONTROLLER));
        if let Some(held) =
            files::foreign_group(&text, &member_root, self.v2, MEMBERSHIP_CONTROLLER)
        {
            tracing::debug!(pid, group = %held, "not taken: another Elton host holds it");
            return Ok(());
        }
        let start = procfs::process::Process::new(pid)
            .and_then(|p| p.stat())
            .map_err(|e| format!("process {pid}: {e}"))?
            .starttime;
        // Saved before moving: a crash in between still returns it.
        self.origins.insert(
            pid,
            Origin {
                start,
                paths: files::origins(&text),
            },
        );
        self.save_origins()?;
        let target = CgroupPid::from(u64::try_from(pid).unwrap_or(0));
        // blkio before memory: cgroup writeback pairs them.
        // k2i's table keeps cgroups per process: this move changes them.
        let moved = ["blkio", "cpu", "memory", "pids"].iter().try_for_each(|c| {
            self.group(c, id)
                .add_task_by_tgid(target)
                .map_err(|e| format!("moving {pid} into group {id} ({c}): {e}"))
        });
        crate::k2i::procs::forget(pid);
        moved
    }

    fn leave(&mut self, pid: i32, id: u64) -> Result<(), String> {
        let returned = self.move_back(pid, id);
        // k2i's table keeps cgroups per process: this move changes them.
        crate::k2i::procs::forget(pid);
        returned?;
        self.origins.remove(&pid);
        self.save_origins()
    }

    /// Moves `pid` out of group `id`, back to the groups it came from.
    fn move_back(&self, pid: i32, id: u64) -> Result<(), String> {
        let start = procfs::process::Process::new(pid)
            .and_then(|p| p.stat())
            .ok()
            .map(|s| s.starttime);
        let origin = self.origins.get(&pid).filter(|o| Some(o.start) == start);
        let target = CgroupPid::from(u64::try_from(pid).unwrap_or(0));
        for c in ["blkio", "cpu", "memory", "pids"] {
            // Back where it came from, or (unknown) where this daemon is.
            let from = origin.and_then(|o| {
                o.paths.iter().find_map(|(ctrls, path)| {
                    let here = if self.v2 {
                        ctrls.is_empty()
                    } else {
                        ctrls.split(',').any(|x| x == c)
                    };
                    here.then(|| path.trim_start_matches('/').to_string())
                })
            });
            // Not into one of its own groups, nor into a group that is gone
            // (a process saved by an older build while it sat in another
            // host's group): there it could never be returned.
            let rel = from
                .filter(|p| !p.starts_with(&self.root(c)))
                .filter(|p| !files::in_host_group(p))
                .filter(|p| self.dir(c, p).is_dir())
                .unwrap_or_else(|| self.base.get(c).cloned().unwrap_or_default());
            // cgroups-rs takes an empty path as "every controller's root";
            // "." names the root of this controller only.
            let rel = if rel.is_empty() { ".".to_string() } else { rel };
            let g = Cgroup::load_with_specified_controllers(
                hierarchies::auto(),
                rel,
                vec![c.to_string()],
            );
            if let Err(e) = g.add_task_by_tgid(target) {
                // Gone meanwhile: nothing to return.
                if procfs::process::Process::new(pid).is_err() {
                    break;
                }
                return Err(format!("returning {pid} from group {id} ({c}): {e}"));
            }
        }
        Ok(())
    }

    fn save_origins(&self) -> Result<(), String> {
        let bytes = serde_json::to_vec(&self.origins).map_err(|e| e.to_string())?;
        let tmp = self.origins_file.with_extension("json.tmp");
        std::fs::write(&tmp, bytes)
            .and_then(|()| std::fs::rename(&tmp, &self.origins_file))
            .map_err(|e| format!("{}: {e}", self.origins_file.display()))
    }

    /// Removes this host's (empty) roots once its last group is gone, so
    /// nothing of Elton's is left; a root still holding a group stays.
    fn remove_roots(&self) {
        for c in CONTROLLERS {
            let _ = std::fs::remove_dir(self.dir(c, &self.root(c)));
        }
    }

    /// Where each of `limits` stands after a pass that failed with
    /// `errors` (by limit id) and found `held` (by limit id) in other
    /// hosts' groups.
    pub fn status(
        &self,
        limits: &[Limit],
        errors: &BTreeMap<u64, String>,
        mut held: BTreeMap<u64, Vec<Held>>,
    ) -> HostLimits {
        let present = self.group_ids();
        let groups: BTreeMap<u64, Resources> = limits
            .iter()
            .filter(|l| present.contains(&l.id))
            .map(|l| (l.id, self.read_back(l.id, l.resources.dev)))
            .collect();
        let cores = super::fit::HostFacts::of_this_host().cores;
        let states = judge(limits, &groups, errors, cores);
        let oom_file = if self.v2 {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        let limits = states
            .into_iter()
            .map(|(id, state)| {
                let there = present.contains(&id);
                let oom = there
                    .then(|| {
                        let rel = format!("{}/{id}", self.root("memory"));
                        std::fs::read_to_string(self.dir("memory", &rel).join(oom_file)).ok()
                    })
                    .flatten();
                LimitStatus {
                    id,
                    state,
                    procs: if there { self.members(id) } else { Vec::new() },
                    oom_kills: oom.as_deref().map_or(0, oom_kills),
                    held: held.remove(&id).unwrap_or_default(),
                }
            })
            .collect();
        HostLimits {
            off: None,
            limits,
            root: Some(self.leaf.clone()),
            pass_at_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .ok()
                .and_then(|d| u64::try_from(d.as_millis()).ok()),
        }
    }

    /// Processes in group `id` (any controller).
    pub fn members(&self, id: u64) -> Vec<i32> {
        let mut pids: Vec<i32> = self
            .group(MEMBERSHIP_CONTROLLER, id)
            .procs()
            .into_iter()
            .filter_map(|p| i32::try_from(p.pid).ok())
            .collect();
        pids.dedup();
        pids
    }
}

/// One reconcile pass: read the host, plan, carry out the steps. Returns
/// the steps' errors (each is tried again on the next pass); the pass's
/// report is kept for `elton limit ls`.
pub fn reconcile(host: &mut CgroupHost, limits: &[Limit]) -> Vec<String> {
    let view = host.view(limits);
    let steps = super::plan::plan(limits, &view);
    let held = super::plan::held(limits, &view);
    let mut errors = Vec::new();
    let mut by_limit = BTreeMap::new();
    for step in &steps {
        match host.run(step) {
            Ok(()) => tracing::debug!(?step, "drcond step done"),
            Err(e) => {
                by_limit.entry(step.limit_id()).or_insert_with(|| e.clone());
                errors.push(e);
            }
        }
    }
    if limits.is_empty() && !steps.is_empty() && errors.is_empty() {
        host.remove_roots();
    }
    super::report::set(host.status(limits, &by_limit, held));
    errors
}
