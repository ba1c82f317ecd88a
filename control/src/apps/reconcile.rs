//! The reconciler's planner (pure): compares the desired state (each
//! app's `min`, the per-host assignments) with the actual one (the
//! instance registry, which hosts still report) and names the commands
//! that bring them together. The leader runs it every tick
//! (`crate::app_reconciler`); commands it issues twice change nothing the
//! second time, so a new leader simply plans again.

use std::collections::BTreeMap;

use super::App;
use super::fleet::{Fleet, HostRecord};
use crate::command::Command;

/// A host that runs instances (or is assigned some) and has not reported
/// for this long is lost: five of the proxies' default report periods.
pub const DEFAULT_LOST_AFTER_MS: u64 = 10_000;

/// The commands that make the fleet match the apps at `now_ms`, in order:
/// silent hosts lost first, then placements that restore each app's
/// `min`, then the assignments of idle apps brought back to their `min`.
pub fn plan(
    apps: &BTreeMap<String, App>,
    fleet: &Fleet,
    now_ms: u64,
    lost_after_ms: u64,
) -> Vec<Command> {
    let mut out = Vec::new();
    let mut after = fleet.clone();
    let silent = |r: &HostRecord| r.heard_at_ms().saturating_add(lost_after_ms) < now_ms;
    for (host, rec) in &fleet.hosts {
        let assigned = fleet.assignments.values().any(|h| h.contains_key(host));
        if !rec.lost && silent(rec) && (!rec.instances.is_empty() || assigned) {
            out.push(Command::HostLost { host: host.clone() });
            let _ = after.lose(host);
        }
    }
    // Hosts that can take an instance: every host not lost, least loaded
    // first. An idle host reports only when something changes, so an old
    // report is no sign of death; a dead one that is assigned an instance
    // stays silent and is lost `lost_after_ms` later, and the instance is
    // placed again.
    let live: Vec<(&String, &HostRecord)> = after.hosts.iter().filter(|(_, r)| !r.lost).collect();
    for (name, app) in apps {
        let spec = &app.spec;
        let assigned: BTreeMap<String, u32> =
            after.assignments.get(name).cloned().unwrap_or_default();
        let total: u32 = assigned.values().sum();
        let running = after.live_instances(name);
        if spec.min > 0 && running.max(total) < spec.min && !live.is_empty() {
            let mut next = assigned.clone();
            for _ in running.max(total)..spec.min {
                let pick = live
                    .iter()
                    .map(|(h, r)| {
                        let load = r.instances.len() as u64
                            + u64::from(next.get(h.as_str()).copied().unwrap_or(0));
                        (load, h.as_str())
                    })
                    .min();
                if let Some((_, h)) = pick {
                    *next.entry(h.to_string()).or_insert(0) += 1;
                }
            }
            out.push(Command::AppAssign {
                app: name.clone(),
                hosts: next,
                at_ms: 0,
            });
            continue;
        }
        // Scale-out placements outlive their load only until the app is
        // idle everywhere: then back to `min`.
        if total > spec.min && idle(&after, name, spec.idle_ms, now_ms) {
            let mut left = spec.min;
            let next: BTreeMap<String, u32> = assigned
                .iter()
                .map(|(h, n)| {
                    let keep = (*n).min(left);
                    left -= keep;
                    (h.clone(), keep)
                })
                .collect();
            out.push(Command::AppAssign {
                app: name.clone(),
                hosts: next,
                at_ms: 0,
            });
        }
    }
    out
}

/// Whether the app has instances and none served a request within its
/// idle period, nor was its last scale-out that recent (the instances it
/// placed may not be reported yet).
fn idle(fleet: &Fleet, app: &str, idle_ms: u64, now_ms: u64) -> bool {
    let past = |ms: u64| ms.saturating_add(idle_ms) < now_ms;
    let mut instances = fleet
        .hosts
        .values()
        .flat_map(|r| &r.instances)
        .filter(|i| i.app == app)
        .peekable();
    instances.peek().is_some()
        && instances.all(|i| past(i.last_request_ms))
        && fleet.decisions.get(app).is_none_or(|d| past(*d))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apps::AppSpec;
    use crate::apps::config::create;
    use crate::apps::fleet::{InstanceRecord, InstanceState};

    fn apps(min: u32) -> BTreeMap<String, App> {
        let mut s = AppSpec::new("web", "a.test", "site", 1);
        s.cmd = Some("serve".into());
        s.min = min;
        s.max = 4;
        s.idle_ms = 5_000;
        BTreeMap::from([("web".to_string(), create(&BTreeMap::new(), &s, 1).unwrap())])
    }

    fn inst(last_request_ms: u64) -> InstanceRecord {
        InstanceRecord {
            app: "web".into(),
            id: "1".into(),
            addr: "127.0.0.1:9000".into(),
            version: 1,
            state: InstanceState::Ready,
            last_request_ms,
            in_flight: 0,
            cpu_percent_of_quota: 0,
            quota_percent: None,
        }
    }

    #[test]
    fn a_silent_host_is_lost_and_its_min_placed_elsewhere() {
        let mut f = Fleet::default();
        f.report("h1", &[inst(0)], 0).unwrap();
        f.report("h2", &[], 20_000).unwrap();
        let cmds = plan(&apps(1), &f, 20_000, DEFAULT_LOST_AFTER_MS);
        assert_eq!(
            cmds,
            vec![
                Command::HostLost { host: "h1".into() },
                Command::AppAssign {
                    app: "web".into(),
                    hosts: BTreeMap::from([("h2".into(), 1)]),
                    at_ms: 0,
                },
            ]
        );
        // Applied, the plan is empty: a second leader issues nothing new.
        let mut f2 = f.clone();
        f2.lose("h1").unwrap();
        f2.assign(&apps(1), "web", &BTreeMap::from([("h2".into(), 1)]), 20_000)
            .unwrap();
        assert!(plan(&apps(1), &f2, 20_000, DEFAULT_LOST_AFTER_MS).is_empty());
    }

    #[test]
    fn a_newly_assigned_idle_host_gets_time_to_report() {
        let mut f = Fleet::default();
        f.report("h1", &[inst(29_000)], 30_000).unwrap();
        // h2 last reported long ago (idle); assigned an instance just now.
        f.report("h2", &[], 0).unwrap();
        f.assign(&apps(0), "web", &BTreeMap::from([("h2".into(), 1)]), 29_000)
            .unwrap();
        assert!(plan(&apps(0), &f, 30_000, DEFAULT_LOST_AFTER_MS).is_empty());
        // Still silent 10 s later: lost.
        assert_eq!(
            plan(&apps(0), &f, 39_500, DEFAULT_LOST_AFTER_MS),
            vec![Command::HostLost { host: "h2".into() }]
        );
    }

    #[test]
    fn a_killed_instance_below_min_is_replaced_and_idle_hosts_stay() {
        let mut f = Fleet::default();
        // h1 reported its instance gone; h2 idle and silent: not lost,
        // and a candidate (ties to the lower name).
        f.report("h1", &[], 9_000).unwrap();
        f.report("h2", &[], 0).unwrap();
        let cmds = plan(&apps(1), &f, 12_000, DEFAULT_LOST_AFTER_MS);
        assert_eq!(
            cmds,
            vec![Command::AppAssign {
                app: "web".into(),
                hosts: BTreeMap::from([("h1".into(), 1)]),
                at_ms: 0,
            }]
        );
        assert!(plan(&apps(0), &f, 12_000, DEFAULT_LOST_AFTER_MS).is_empty());
    }

    #[test]
    fn placements_not_reported_yet_are_not_idle() {
        let mut f = Fleet::default();
        f.report("h1", &[], 0).unwrap();
        f.report("h2", &[], 0).unwrap();
        f.scale_out(&apps(0), "web", "h1", 0, 9_000).unwrap();
        assert!(plan(&apps(0), &f, 9_500, DEFAULT_LOST_AFTER_MS).is_empty());
    }

    #[test]
    fn scale_out_assignments_return_to_min_when_idle() {
        let mut f = Fleet::default();
        f.report("h1", &[inst(1_000)], 9_000).unwrap();
        f.assign(&apps(0), "web", &BTreeMap::from([("h1".into(), 2)]), 0)
            .unwrap();
        // Busy a second ago: kept.
        assert!(plan(&apps(0), &f, 5_000, DEFAULT_LOST_AFTER_MS).is_empty());
        let cmds = plan(&apps(0), &f, 9_000, DEFAULT_LOST_AFTER_MS);
        assert_eq!(
            cmds,
            vec![Command::AppAssign {
                app: "web".into(),
                hosts: BTreeMap::from([("h1".into(), 0)]),
                at_ms: 0,
            }]
        );
    }
}
