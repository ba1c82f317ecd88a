//! The reconcile planner (pure): from the limits this host must apply and
//! what the host has now, the steps that make the host match. The host
//! side reads the view (its cgroup root, `/proc`), runs the steps, and
//! plans again on the next tick; a step that failed is planned again.
//!
//! Rules it keeps:
//! - a protected process (pid 1, this host's Elton processes) is never
//!   moved, whatever the selector;
//! - only processes a limit selects are moved into its group; a process
//!   two limits select goes to the oldest (lowest id) and stays there;
//! - a process in another Elton host's group (hosts sharing a machine)
//!   is left to that host and reported as held there, never moved back
//!   and forth;
//! - a group with no limit (released, expired, or left from before a
//!   restart) has its processes returned where they came from, then is
//!   removed;
//! - limits are (re)written whenever what the group has differs (beyond
//!   the kernel's rounding, [`files::holds`]), so a host restarted mid-way
//!   converges.

use std::collections::{BTreeMap, BTreeSet};

use super::files;
use super::spec::{Limit, Resources};
use super::status::Held;
use crate::types::NodeId;

/// One process as the planner needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcView {
    pub pid: i32,
    /// `comm`.
    pub name: String,
    pub cmdline: Vec<String>,
    /// Its cgroup paths, one per hierarchy (v2: one).
    pub cgroups: Vec<String>,
    /// The Elton group (limit id) it is in, if any.
    pub in_group: Option<u64>,
    /// The group of another Elton host on this machine it is in, if any
    /// ([`files::foreign_group`]).
    pub held_by: Option<String>,
}

/// What the host has now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostView {
    /// Elton's groups under this host's root, with the limits read back
    /// from their files.
    pub groups: BTreeMap<u64, Resources>,
    pub procs: Vec<ProcView>,
    /// Never moved: pid 1 and this host's Elton processes.
    pub protected: BTreeSet<i32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Make the group of limit `id`.
    Create { id: u64 },
    /// Write the group's limit files.
    Set { id: u64, resources: Resources },
    /// Move a process into the group of limit `id` (remembering where it
    /// was, to return it).
    Move { pid: i32, id: u64 },
    /// Move a process out of the group of limit `id`, back where it was.
    Return { pid: i32, id: u64 },
    /// Remove the (then empty) group of limit `id`.
    Remove { id: u64 },
}

impl Step {
    /// The limit this step is for.
    pub fn limit_id(&self) -> u64 {
        match self {
            Step::Create { id }
            | Step::Set { id, .. }
            | Step::Move { id, .. }
            | Step::Return { id, .. }
            | Step::Remove { id } => *id,
        }
    }
}

/// The limits of `all` that host `me` applies.
pub fn for_host(all: &BTreeMap<u64, Limit>, me: NodeId) -> Vec<Limit> {
    all.values()
        .filter(|l| l.hosts.contains(&me))
        .cloned()
        .collect()
}

/// The steps that make `view` match `limits` (this host's), in an order
/// safe to run: groups are made and limited before processes enter them,
/// and emptied before they are removed.
pub fn plan(limits: &[Limit], view: &HostView) -> Vec<Step> {
    let mut steps = Vec::new();
    let wanted: BTreeMap<u64, &Limit> = limits.iter().map(|l| (l.id, l)).collect();
    for (id, limit) in &wanted {
        match view.groups.get(id) {
            None => {
                steps.push(Step::Create { id: *id });
                steps.push(Step::Set {
                    id: *id,
                    resources: limit.resources.clone(),
                });
            }
            Some(have) if !files::holds(have, &limit.resources) => steps.push(Step::Set {
                id: *id,
                resources: limit.resources.clone(),
            }),
            Some(_) => {}
        }
    }
    for p in &view.procs {
        if view.protected.contains(&p.pid) || p.pid == 1 {
            // Protected processes never enter a group; one found in a
            // group (put there by hand) is taken out.
            if let Some(id) = p.in_group {
                steps.push(Step::Return { pid: p.pid, id });
            }
            continue;
        }
        match p.in_group {
            Some(id) if wanted.contains_key(&id) => {}
            Some(id) => steps.push(Step::Return { pid: p.pid, id }),
            // Another host's: see `held`.
            None if p.held_by.is_some() => {}
            None => {
                if let Some(limit) = wanted
                    .values()
                    .find(|l| l.selector.matches(p.pid, &p.name, &p.cmdline, &p.cgroups))
                {
                    steps.push(Step::Move {
                        pid: p.pid,
                        id: limit.id,
                    });
                }
            }
        }
    }
    for id in view.groups.keys() {
        if !wanted.contains_key(id) {
            steps.push(Step::Remove { id: *id });
        }
    }
    steps
}

/// Per limit, the processes it selects that another Elton host on this
/// machine holds in its group (not moved; `elton limit ls` shows them, so
/// a limit holding nothing says why).
pub fn held(limits: &[Limit], view: &HostView) -> BTreeMap<u64, Vec<Held>> {
    let mut held: BTreeMap<u64, Vec<Held>> = BTreeMap::new();
    for p in &view.procs {
        let Some(group) = &p.held_by else { continue };
        if view.protected.contains(&p.pid) || p.pid == 1 || p.in_group.is_some() {
            continue;
        }
        for l in limits {
            if l.selector.matches(p.pid, &p.name, &p.cmdline, &p.cgroups) {
                held.entry(l.id).or_default().push(Held {
                    pid: p.pid,
                    group: group.clone(),
                });
            }
        }
    }
    held
}

/// Limits whose expiry has passed at `now_ms` (the leader releases them).
pub fn expired(all: &BTreeMap<u64, Limit>, now_ms: u64) -> Vec<u64> {
    all.values()
        .filter(|l| l.expires_at_ms.is_some_and(|e| e <= now_ms))
        .map(|l| l.id)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drcond::spec::Selector;

    fn cpu(c: u32) -> Resources {
        Resources {
            cpu_percent: Some(c),
            ..Resources::default()
        }
    }

    fn limit(id: u64, selector: Selector, c: u32) -> Limit {
        Limit {
            id,
            selector,
            hosts: [1].into_iter().collect(),
            resources: cpu(c),
            expires_at_ms: None,
        }
    }

    fn proc(pid: i32, name: &str, in_group: Option<u64>) -> ProcView {
        ProcView {
            pid,
            name: name.into(),
            cmdline: vec![name.into()],
            cgroups: vec!["/user.slice".into()],
            in_group,
            held_by: None,
        }
    }

    fn view(groups: &[(u64, Resources)], procs: Vec<ProcView>) -> HostView {
        HostView {
            groups: groups.iter().cloned().collect(),
            procs,
            protected: [1, 500].into_iter().collect(),
        }
    }

    #[test]
    fn a_new_limit_makes_its_group_then_moves_what_it_selects() {
        let l = limit(
            10,
            Selector::Name {
                name: "busy".into(),
            },
            20,
        );
        let v = view(
            &[],
            vec![
                proc(1, "busy-init", None),
                proc(500, "busy-elton", None),
                proc(42, "busy", None),
                proc(43, "idle", None),
            ],
        );
        assert_eq!(
            plan(&[l], &v),
            vec![
                Step::Create { id: 10 },
                Step::Set {
                    id: 10,
                    resources: cpu(20)
                },
                Step::Move { pid: 42, id: 10 },
            ]
        );
    }

    #[test]
    fn a_matched_host_needs_nothing_and_late_processes_are_taken() {
        let l = limit(
            10,
            Selector::Name {
                name: "busy".into(),
            },
            20,
        );
        let settled = view(&[(10, cpu(20))], vec![proc(42, "busy", Some(10))]);
        assert!(plan(std::slice::from_ref(&l), &settled).is_empty());
        let late = view(
            &[(10, cpu(20))],
            vec![proc(42, "busy", Some(10)), proc(44, "busy", None)],
        );
        assert_eq!(plan(&[l], &late), vec![Step::Move { pid: 44, id: 10 }]);
    }

    #[test]
    fn changed_limits_are_rewritten() {
        let l = limit(10, Selector::Pid { pid: 42 }, 30);
        let v = view(&[(10, cpu(20))], vec![proc(42, "x", Some(10))]);
        assert_eq!(
            plan(&[l], &v),
            vec![Step::Set {
                id: 10,
                resources: cpu(30)
            }]
        );
    }

    #[test]
    fn released_or_orphaned_groups_are_emptied_then_removed() {
        let v = view(
            &[(10, cpu(20)), (11, cpu(50))],
            vec![proc(42, "busy", Some(10)), proc(43, "other", None)],
        );
        assert_eq!(
            plan(&[], &v),
            vec![
                Step::Return { pid: 42, id: 10 },
                Step::Remove { id: 10 },
                Step::Remove { id: 11 },
            ]
        );
    }

    #[test]
    fn protected_processes_are_never_moved_and_taken_out_if_found_inside() {
        let l = limit(10, Selector::Cgroup { path: "/".into() }, 20);
        let v = view(
            &[(10, cpu(20))],
            vec![proc(1, "init", Some(10)), proc(500, "elton", None)],
        );
        assert_eq!(plan(&[l], &v), vec![Step::Return { pid: 1, id: 10 }]);
    }

    #[test]
    fn the_oldest_limit_takes_a_process_two_select() {
        let a = limit(10, Selector::Name { name: "job".into() }, 20);
        let b = limit(12, Selector::Pid { pid: 42 }, 50);
        let v = view(&[(10, cpu(20)), (12, cpu(50))], vec![proc(42, "job", None)]);
        assert_eq!(plan(&[b, a], &v), vec![Step::Move { pid: 42, id: 10 }]);
    }

    #[test]
    fn a_process_another_host_holds_is_left_to_it_and_reported() {
        // Three hosts on one machine, one pid selected by all: host 2
        // took it first; this host makes its group but leaves the process.
        let l = limit(10, Selector::Pid { pid: 42 }, 50);
        let mut p = proc(42, "sleep", None);
        p.held_by = Some("/sb/elton-m2-5ececb01/10".into());
        let v = view(&[], vec![p]);
        assert_eq!(
            plan(std::slice::from_ref(&l), &v),
            vec![
                Step::Create { id: 10 },
                Step::Set {
                    id: 10,
                    resources: cpu(50)
                },
            ]
        );
        assert_eq!(
            held(&[l], &v),
            BTreeMap::from([(
                10,
                vec![Held {
                    pid: 42,
                    group: "/sb/elton-m2-5ececb01/10".into()
                }]
            )])
        );
    }

    #[test]
    fn a_memory_limit_the_kernel_rounded_is_not_rewritten() {
        let want = Resources {
            memory_bytes: Some(5_000_000),
            ..Resources::default()
        };
        let have = Resources {
            memory_bytes: Some(4_997_120),
            ..Resources::default()
        };
        let mut l = limit(10, Selector::Pid { pid: 42 }, 0);
        l.resources = want;
        let v = view(&[(10, have)], vec![proc(42, "x", Some(10))]);
        assert!(plan(&[l], &v).is_empty());
    }

    #[test]
    fn hosts_and_expiry() {
        let mut all = BTreeMap::new();
        let mut l = limit(10, Selector::Pid { pid: 42 }, 20);
        l.expires_at_ms = Some(1_000);
        all.insert(10, l);
        let mut other = limit(11, Selector::Pid { pid: 43 }, 20);
        other.hosts = [2].into_iter().collect();
        all.insert(11, other);
        assert_eq!(for_host(&all, 1).len(), 1);
        assert_eq!(for_host(&all, 2)[0].id, 11);
        assert!(expired(&all, 999).is_empty());
        assert_eq!(expired(&all, 1_000), vec![10]);
    }
}
