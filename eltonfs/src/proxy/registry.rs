//! This host's part of the cluster: it reports its instances to the
//! instance registry (one command per report, every
//! `Settings::report_every` while it runs any and at once on every
//! change), starts the instances the group assigned it, and every
//! [`SCALE_TICK`] measures its instances' load and runs the scaling rule
//! (acting on a decision found on two ticks in a row)
//! (`elton_control::apps::scale`): scale-out is asked of the group (which
//! places the instance and holds the app's cooldown), scale-up raises the
//! hot instance's CPU quota here.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use elton_control::apps::App;
use elton_control::apps::fleet::{InstanceRecord, InstanceState};
use elton_control::apps::scale::{self, Decision, HostLoad, InstanceLoad};

use super::{AppRun, EXTRA_RETRY, Proxy, Slot, wait_ready};
use crate::proxy::admission::Phase;

/// How often load is measured and the scaling rule run.
pub const SCALE_TICK: Duration = Duration::from_secs(1);

impl Proxy {
    /// How many of `app`'s instances this host keeps however idle
    /// ([`idle_floor`]).
    pub(super) fn idle_floor(&self, app: &str, min: u32) -> u32 {
        let fleet = self.fleet.lock().unwrap_or_else(PoisonError::into_inner);
        let hosts = fleet.assignments.get(app);
        let here = hosts
            .and_then(|h| h.get(&self.settings.host))
            .copied()
            .unwrap_or(0);
        let total = hosts.map_or(0, |h| h.values().copied().fold(0u32, u32::saturating_add));
        idle_floor(here, total, min)
    }

    /// Starts instances until this host runs as many of each app as it is
    /// assigned (the first instance counts, started or starting).
    pub(super) fn follow_assignments(self: &Arc<Self>, apps: &BTreeMap<String, App>) {
        let mine: Vec<(String, u32)> = {
            let fleet = self.fleet.lock().unwrap_or_else(PoisonError::into_inner);
            fleet
                .assignments
                .iter()
                .filter_map(|(app, hosts)| Some((app.clone(), *hosts.get(&self.settings.host)?)))
                .collect()
        };
        for (name, want) in mine {
            let Some(app) = apps.get(&name) else { continue };
            let r = self.run_of(&name);
            let mut run = r.lock();
            if run.extra_failed.is_some_and(|t| t.elapsed() < EXTRA_RETRY) {
                continue;
            }
            let first = usize::from(run.instance.is_some() || run.phase == Phase::Starting);
            let have = first + run.extra.len() + run.extra_starting;
            let want = usize::try_from(want).unwrap_or(usize::MAX);
            for _ in have..want {
                run.extra_starting += 1;
                self.clone().spawn_extra(app.clone(), r.clone());
            }
        }
    }

    /// Starts one more instance of `app` beside the first; it takes
    /// requests once its port accepts.
    fn spawn_extra(self: Arc<Self>, app: App, r: Arc<AppRun>) {
        tokio::spawn(async move {
            let name = app.spec.name.clone();
            let deadline = tokio::time::Instant::now() + self.settings.ready_timeout;
            let outcome = match self.runtime.start(&app.spec).await {
                Ok(i) => wait_ready(i, deadline, self.settings.ready_timeout)
                    .await
                    .map_err(|(_, why)| why),
                Err(e) => Err(format!("it could not start: {e:#}")),
            };
            self.metrics.start(&name, outcome.is_ok());
            let mut run = r.lock();
            run.extra_starting = run.extra_starting.saturating_sub(1);
            match outcome {
                Ok(instance) => {
                    tracing::info!(app = %name, addr = %instance.addr(), "extra instance ready");
                    run.extra.push(Slot::new(instance, &app));
                    run.last_request = Instant::now();
                }
                Err(why) => {
                    run.extra_failed = Some(Instant::now());
                    tracing::warn!(app = %name, "extra instance failed: {why}");
                }
            }
            drop(run);
            r.bump();
            self.changed.notify_one();
        });
    }

    /// This host's instances as the registry records them.
    fn records(&self) -> Vec<InstanceRecord> {
        let runs = self.runs_snapshot();
        let now_ms = wall_ms();
        let mut out = Vec::new();
        for (app, r) in runs {
            let run = r.lock();
            let last_ms = now_ms.saturating_sub(
                u64::try_from(run.last_request.elapsed().as_millis()).unwrap_or(u64::MAX),
            );
            let mut push = |slot: &Slot, state: InstanceState| {
                out.push(InstanceRecord {
                    app: app.clone(),
                    id: slot.instance.id(),
                    addr: SocketAddr::new(self.settings.advertise, slot.instance.addr().port())
                        .to_string(),
                    version: slot.version,
                    state,
                    last_request_ms: last_ms,
                    in_flight: u32::try_from(slot.in_flight()).unwrap_or(u32::MAX),
                    cpu_percent_of_quota: slot.cpu_percent,
                    quota_percent: slot.instance.cpu_quota_percent(),
                });
            };
            if let Some(s) = &run.instance {
                push(s, InstanceState::Ready);
            }
            for s in &run.extra {
                push(s, InstanceState::Ready);
            }
            for s in &run.draining {
                push(s, InstanceState::Draining);
            }
        }
        out
    }

    /// Reports this host's instances: at once when they change, every
    /// `report_every` while there are any (so the reconciler knows the
    /// host is alive), and not at all while the host is idle and
    /// unchanged (an idle proxy appends nothing to the log).
    pub(super) async fn report_loop(me: std::sync::Weak<Self>) {
        let mut last: Option<(Vec<InstanceRecord>, Instant)> = None;
        loop {
            let Some(p) = me.upgrade() else { return };
            let every = p.settings.report_every;
            let records = p.records();
            let assigned = {
                let f = p.fleet.lock().unwrap_or_else(PoisonError::into_inner);
                f.assignments
                    .values()
                    .any(|h| h.contains_key(&p.settings.host))
            };
            let due = match &last {
                None => true,
                Some((prev, at)) => {
                    !same(prev, &records)
                        || ((!records.is_empty() || assigned) && at.elapsed() >= every)
                }
            };
            if due {
                match p.group.report(&p.settings.host, records.clone()).await {
                    Ok(()) => last = Some((records, Instant::now())),
                    Err(e) => tracing::warn!("reporting this host's instances: {e:#}"),
                }
            }
            let changed = p.changed.clone();
            drop(p);
            // A change notified meanwhile left a permit: no change is missed.
            let _ = tokio::time::timeout(every, changed.notified()).await;
        }
    }

    /// Measures each local instance's CPU (from its cgroup) and in-flight
    /// requests, and applies the scaling rule per app.
    pub(super) async fn scale_loop(me: std::sync::Weak<Self>) {
        let mut last_decision: HashMap<String, u64> = HashMap::new();
        // Apps found hot on the previous tick: a decision needs two hot
        // ticks in a row, so the burst of requests held during a cold
        // start is not taken for load.
        let mut hot: HashMap<String, bool> = HashMap::new();
        loop {
            tokio::time::sleep(SCALE_TICK).await;
            let Some(p) = me.upgrade() else { return };
            let apps = p.apps_snapshot();
            let runs = p.runs_snapshot();
            for (name, r) in runs {
                let Some(app) = apps.get(&name) else { continue };
                let loads = p.sample(app, &r);
                if loads.is_empty() {
                    continue;
                }
                let (hosts, instances, group_last) = p.cluster_loads(app, &loads);
                let last = last_decision.get(&name).copied().max(group_last);
                let now = wall_ms();
                let decision = scale::decide(&app.spec, &instances, &hosts, last, now);
                let was_hot = hot.insert(name.clone(), !matches!(decision, Decision::Hold(_)));
                if !matches!(decision, Decision::Hold(_)) && was_hot != Some(true) {
                    continue;
                }
                match decision {
                    Decision::Hold(why) => tracing::trace!(app = %name, "scaling: {why}"),
                    Decision::ScaleOut { .. } => {
                        // The group's answer starts the local cooldown; a
                        // failed call (no leader) is asked again next tick.
                        let running = u32::try_from(loads.len()).unwrap_or(u32::MAX);
                        match p.group.scale_out(&name, &p.settings.host, running).await {
                            Ok(Ok(host)) => {
                                last_decision.insert(name.clone(), now);
                                tracing::info!(app = %name, %host, "scaled out");
                                p.metrics.scale(&name, "out");
                            }
                            Ok(Err(why)) => {
                                last_decision.insert(name.clone(), now);
                                tracing::info!(app = %name, "scale-out refused: {why}");
                            }
                            Err(e) => tracing::warn!(app = %name, "asking for scale-out: {e:#}"),
                        }
                    }
                    Decision::ScaleUp { id, quota_percent } => {
                        last_decision.insert(name.clone(), now);
                        p.scale_up(&name, &r, id, quota_percent);
                    }
                }
            }
        }
    }

    /// Samples the app's local instances: (instance index, load) where the
    /// index is 0 for the first and 1.. for the extras.
    fn sample(&self, app: &App, r: &Arc<AppRun>) -> Vec<InstanceLoad> {
        let target = self.settings.target_in_flight.max(1);
        let mut run = r.lock();
        let run = &mut *run;
        let slots = run.instance.iter_mut().chain(run.extra.iter_mut());
        let mut out = Vec::new();
        for (i, slot) in slots.enumerate() {
            let quota = slot.instance.cpu_quota_percent();
            if let Some(used) = slot.instance.cpu_usage_usec() {
                let now = Instant::now();
                if let Some((at, before)) = slot.cpu_sample {
                    let wall = now.duration_since(at).as_micros().max(1);
                    let share = u128::from(quota.or(app.spec.cpu_percent).unwrap_or(100).max(1));
                    // µs used per µs of wall time, in percent of the quota.
                    let pct = u128::from(used.saturating_sub(before)) * 100 * 100 / (wall * share);
                    slot.cpu_percent = u32::try_from(pct).unwrap_or(u32::MAX);
                }
                slot.cpu_sample = Some((now, used));
            }
            let busy = slot.in_flight() * 100 / target;
            let load = slot
                .cpu_percent
                .max(u32::try_from(busy).unwrap_or(u32::MAX));
            out.push(InstanceLoad {
                id: i as u64,
                host: 0,
                cpu_percent_of_quota: load,
                quota_percent: quota,
            });
        }
        out
    }

    /// The scaling rule's view: this host's instances (host 0) plus the
    /// other hosts' of the app from the registry, the hosts' loads, and the
    /// group's last decision for the app.
    fn cluster_loads(
        &self,
        app: &App,
        local: &[InstanceLoad],
    ) -> (Vec<HostLoad>, Vec<InstanceLoad>, Option<u64>) {
        let fleet = self.fleet.lock().unwrap_or_else(PoisonError::into_inner);
        let capacity = elton_proto::cores::cores().saturating_mul(100);
        let capacity = u32::try_from(capacity).unwrap_or(u32::MAX);
        let mut instances = local.to_vec();
        let mut hosts = vec![HostLoad {
            host: 0,
            instances: u32::try_from(local.len()).unwrap_or(u32::MAX),
            cpu_capacity_percent: capacity,
        }];
        for (n, (name, rec)) in fleet
            .hosts
            .iter()
            .filter(|(h, r)| **h != self.settings.host && !r.lost)
            .enumerate()
        {
            let host = n as u64 + 1;
            let _ = name;
            hosts.push(HostLoad {
                host,
                instances: u32::try_from(rec.instances.len()).unwrap_or(u32::MAX),
                cpu_capacity_percent: capacity,
            });
            for (k, i) in rec
                .instances
                .iter()
                .filter(|i| i.app == app.spec.name && i.state == InstanceState::Ready)
                .enumerate()
            {
                instances.push(InstanceLoad {
                    id: 1_000_000 * host + k as u64,
                    host,
                    cpu_percent_of_quota: i.cpu_percent_of_quota,
                    quota_percent: i.quota_percent,
                });
            }
        }
        let last = fleet.decisions.get(&app.spec.name).copied();
        (hosts, instances, last)
    }

    /// Raises local instance `id`'s CPU quota (scale-up); a decision for
    /// another host's instance is that host's to make.
    fn scale_up(&self, name: &str, r: &Arc<AppRun>, id: u64, quota_percent: u32) {
        let mut run = r.lock();
        let run = &mut *run;
        let Some(slot) = run
            .instance
            .iter_mut()
            .chain(run.extra.iter_mut())
            .nth(usize::try_from(id).unwrap_or(usize::MAX))
        else {
            return;
        };
        match slot.instance.set_cpu_quota(quota_percent) {
            Ok(()) => {
                tracing::info!(app = %name, quota_percent, "scaled up");
                self.metrics.scale(name, "up");
                self.changed.notify_one();
            }
            Err(e) => tracing::warn!(app = %name, "scale-up: {e}"),
        }
    }
}

/// Whether two reports say the same (load figures and request times
/// change all the time and do not count).
fn same(a: &[InstanceRecord], b: &[InstanceRecord]) -> bool {
    let key = |i: &InstanceRecord| {
        (
            i.app.clone(),
            i.id.clone(),
            i.addr.clone(),
            i.version,
            i.state,
            i.quota_percent,
        )
    };
    a.len() == b.len() && a.iter().map(key).eq(b.iter().map(key))
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The instances of an app a host keeps however idle: those assigned to
/// it. Until the group's assignments cover the app's `min` (the
/// reconciler has not placed them yet), a host keeps one as well, so a
/// `min` app that a request started does not stop meanwhile; once they
/// cover it, instances elsewhere are extras and stop when idle.
pub(super) fn idle_floor(assigned_here: u32, assigned_total: u32, min: u32) -> u32 {
    if assigned_total >= min {
        assigned_here
    } else {
        assigned_here.max(u32::from(min > 0))
    }
}

#[cfg(test)]
mod floor_tests {
    use super::idle_floor;

    #[test]
    fn a_host_keeps_its_assignments_and_min_only_until_it_is_placed() {
        // No min: only assignments (scale-out) are kept.
        assert_eq!(idle_floor(0, 0, 0), 0);
        assert_eq!(idle_floor(2, 3, 0), 2);
        // min 1 placed on another host: this host's instance is an extra.
        assert_eq!(idle_floor(0, 1, 1), 0);
        // ...on this one: kept.
        assert_eq!(idle_floor(1, 1, 1), 1);
        // Not placed yet: every host keeps one.
        assert_eq!(idle_floor(0, 0, 1), 1);
        assert_eq!(idle_floor(0, 1, 2), 1);
    }
}
