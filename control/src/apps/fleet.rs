//! The instance registry and the per-host assignments (pure): what each
//! host's proxy last reported running, which instances each host must keep
//! running, and when each app's last scaling decision was made. The log's
//! commands change it here; `state::apply` calls these with the leader's
//! time stamped in the command, so every member computes the same fleet.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::App;
use super::spec::{MAX_INSTANCES, check_name};

/// Most instances one host's report may carry (every app's together).
pub const MAX_REPORTED_INSTANCES: usize = 1024;
/// Longest instance id (a pid, or a Docker container id) and address.
pub const MAX_ID_BYTES: usize = 128;
/// Most hosts the registry keeps; a report from one more is refused.
pub const MAX_HOSTS: usize = 4096;

/// Where an instance is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstanceState {
    /// Started, its port not accepting yet.
    Starting,
    /// Serving requests.
    Ready,
    /// Replaced by a newer version's instance: finishes what is in flight.
    Draining,
    /// Stopped (idle, or after draining); reported once, then dropped.
    Stopped,
    /// Its host stopped reporting: set by the leader's reconciler, never
    /// reported. Proxies do not route to it.
    Lost,
}

/// One instance as its host's proxy reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceRecord {
    pub app: String,
    /// Unique on its host while it runs: a pid, or a container id.
    pub id: String,
    /// Where other hosts' proxies reach it (`IP:PORT`).
    pub addr: String,
    /// The volume version it runs.
    pub version: u64,
    pub state: InstanceState,
    /// Wall-clock ms of its last forwarded request (0: none yet).
    #[serde(default)]
    pub last_request_ms: u64,
    /// Requests forwarded to it and not answered yet, when reported.
    #[serde(default)]
    pub in_flight: u32,
    /// CPU used over the last sampling window, in percent of its quota.
    #[serde(default)]
    pub cpu_percent_of_quota: u32,
    /// Its CPU quota (percent of one core); none: unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota_percent: Option<u32>,
}

/// What one host last reported.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRecord {
    /// The leader's clock when the report was proposed.
    pub reported_at_ms: u64,
    /// Set by the reconciler when the host stopped reporting; cleared by
    /// its next report.
    #[serde(default)]
    pub lost: bool,
    pub instances: Vec<InstanceRecord>,
    /// The leader's clock when the host was last given an assignment: a
    /// host idle until then had no reason to report, so its silence
    /// counts from here.
    #[serde(default)]
    pub assigned_at_ms: u64,
}

impl HostRecord {
    /// When the host last showed it is alive, or was given work to show
    /// it with.
    pub fn heard_at_ms(&self) -> u64 {
        self.reported_at_ms.max(self.assigned_at_ms)
    }
}

/// The registry, the assignments and the decision times.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fleet {
    /// By host name (the proxy's `--host`).
    #[serde(default)]
    pub hosts: BTreeMap<String, HostRecord>,
    /// App → host → instances that host keeps running however idle the
    /// app is (scale-out and the reconciler's placements).
    #[serde(default)]
    pub assignments: BTreeMap<String, BTreeMap<String, u32>>,
    /// App → the leader's clock at its last scaling decision.
    #[serde(default)]
    pub decisions: BTreeMap<String, u64>,
}

/// What the proxies read: the apps and the fleet, in one answer of the
/// direct read path (`Action::AppState`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppView {
    pub apps: Vec<App>,
    #[serde(default)]
    pub fleet: Fleet,
    /// The log index the view was read at.
    #[serde(default)]
    pub applied: u64,
}

impl InstanceRecord {
    pub fn validate(&self) -> Result<(), String> {
        check_name(&self.app)?;
        for (what, v) in [("id", &self.id), ("address", &self.addr)] {
            if v.is_empty() || v.len() > MAX_ID_BYTES {
                return Err(format!("instance {what} must be 1 to {MAX_ID_BYTES} bytes"));
            }
        }
        self.addr
            .parse::<std::net::SocketAddr>()
            .map_err(|e| format!("instance address {:?}: {e}", self.addr))?;
        if self.state == InstanceState::Lost {
            return Err("a host does not report its own instances as lost".into());
        }
        Ok(())
    }
}

/// Checks a host's report before it is proposed.
pub fn check_report(host: &str, instances: &[InstanceRecord]) -> Result<(), String> {
    check_name(host).map_err(|e| format!("host: {e}"))?;
    if instances.len() > MAX_REPORTED_INSTANCES {
        return Err(format!(
            "{} instances in one report; at most {MAX_REPORTED_INSTANCES}",
            instances.len()
        ));
    }
    instances.iter().try_for_each(InstanceRecord::validate)
}

impl Fleet {
    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty() && self.assignments.is_empty() && self.decisions.is_empty()
    }

    /// Records `host`'s report at `at_ms`: its instances replace what it
    /// reported before (stopped ones are dropped), and it is alive again.
    pub fn report(
        &mut self,
        host: &str,
        instances: &[InstanceRecord],
        at_ms: u64,
    ) -> Result<(), String> {
        check_report(host, instances)?;
        if !self.hosts.contains_key(host) && self.hosts.len() >= MAX_HOSTS {
            return Err(format!(
                "the registry already has {MAX_HOSTS} hosts, the most it keeps"
            ));
        }
        let kept = instances
            .iter()
            .filter(|i| i.state != InstanceState::Stopped)
            .cloned()
            .collect();
        let assigned_at_ms = self.hosts.get(host).map_or(0, |r| r.assigned_at_ms);
        self.hosts.insert(
            host.to_string(),
            HostRecord {
                reported_at_ms: at_ms,
                lost: false,
                instances: kept,
                assigned_at_ms,
            },
        );
        Ok(())
    }

    /// The reconciler's verdict on a silent host: its instances are lost
    /// (no proxy routes to them) and its assignments go.
    pub fn lose(&mut self, host: &str) -> Result<(), String> {
        let rec = self
            .hosts
            .get_mut(host)
            .ok_or_else(|| format!("no host {host:?} in the registry"))?;
        rec.lost = true;
        for i in &mut rec.instances {
            i.state = InstanceState::Lost;
        }
        for hosts in self.assignments.values_mut() {
            hosts.remove(host);
        }
        self.assignments.retain(|_, h| !h.is_empty());
        Ok(())
    }

    /// Sets app `app`'s assignments (hosts with 0 are dropped) at
    /// `at_ms`.
    pub fn assign(
        &mut self,
        apps: &BTreeMap<String, App>,
        app: &str,
        hosts: &BTreeMap<String, u32>,
        at_ms: u64,
    ) -> Result<(), String> {
        let spec = &apps
            .get(app)
            .ok_or_else(|| format!("no app {app:?} (see `elton app ls`)"))?
            .spec;
        for h in hosts.keys() {
            check_name(h).map_err(|e| format!("host: {e}"))?;
        }
        let total: u64 = hosts.values().map(|n| u64::from(*n)).sum();
        if total > u64::from(spec.max) {
            return Err(format!(
                "{total} instances assigned; app {app:?} runs at most {}",
                spec.max
            ));
        }
        let kept: BTreeMap<String, u32> = hosts
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(h, n)| (h.clone(), *n))
            .collect();
        let before = self.assignments.get(app);
        for (h, n) in &kept {
            let raised = before.and_then(|b| b.get(h)).is_none_or(|old| n > old);
            if raised && let Some(r) = self.hosts.get_mut(h) {
                r.assigned_at_ms = r.assigned_at_ms.max(at_ms);
            }
        }
        if kept.is_empty() {
            self.assignments.remove(app);
        } else {
            self.assignments.insert(app.to_string(), kept);
        }
        Ok(())
    }

    /// A scale-out asked by `from` (which runs `running` instances of the
    /// app now, reported or not) at `at_ms`: one more instance of `app`,
    /// assigned to the least-loaded live host. Refused within the app's
    /// cooldown and at its `max`. Returns the chosen host.
    pub fn scale_out(
        &mut self,
        apps: &BTreeMap<String, App>,
        app: &str,
        from: &str,
        running: u32,
        at_ms: u64,
    ) -> Result<String, String> {
        let spec = &apps
            .get(app)
            .ok_or_else(|| format!("no app {app:?} (see `elton app ls`)"))?
            .spec;
        if let Some(last) = self.decisions.get(app) {
            let since = at_ms.saturating_sub(*last);
            if since < spec.cooldown_ms {
                return Err(format!(
                    "cooling down: {since} ms of {} since app {app:?}'s last decision",
                    spec.cooldown_ms
                ));
            }
        }
        let reported_here = self.instances_on(app, from);
        let running_here = running.max(reported_here);
        let live = self.live_instances(app) - reported_here + running_here;
        let assigned: u32 = self.assignments.get(app).map_or(0, |h| h.values().sum());
        let count = live.max(assigned);
        if count >= spec.max.min(MAX_INSTANCES) {
            return Err(format!(
                "app {app:?} already runs {count} instances, its max"
            ));
        }
        // Least loaded live host; ties to the lowest name. The asking
        // host counts even before its first report.
        let mut candidates: BTreeMap<&str, u32> = self
            .hosts
            .iter()
            .filter(|(_, r)| !r.lost)
            .map(|(h, r)| (h.as_str(), load(r)))
            .collect();
        candidates.entry(from).or_insert(0);
        let Some((host, _)) = candidates.into_iter().min_by_key(|(h, n)| (*n, *h)) else {
            return Err("no live host to place an instance on".into());
        };
        let host = host.to_string();
        let on_host = if host == from {
            running_here
        } else {
            self.instances_on(app, &host)
        };
        let slot = self
            .assignments
            .entry(app.to_string())
            .or_default()
            .entry(host.clone())
            .or_insert(0);
        *slot = (*slot).max(on_host) + 1;
        if let Some(r) = self.hosts.get_mut(&host) {
            r.assigned_at_ms = r.assigned_at_ms.max(at_ms);
        }
        self.decisions.insert(app.to_string(), at_ms);
        Ok(host)
    }

    /// Forgets a removed app's assignments and decisions (its instances
    /// leave the registry with their hosts' next reports).
    pub fn forget_app(&mut self, app: &str) {
        self.assignments.remove(app);
        self.decisions.remove(app);
    }

    /// Instances of `app` not stopped, lost or draining, on every host.
    pub fn live_instances(&self, app: &str) -> u32 {
        let n = self
            .hosts
            .values()
            .filter(|r| !r.lost)
            .flat_map(|r| &r.instances)
            .filter(|i| i.app == app && serving(i.state))
            .count();
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    fn instances_on(&self, app: &str, host: &str) -> u32 {
        let n = self.hosts.get(host).map_or(0, |r| {
            r.instances
                .iter()
                .filter(|i| i.app == app && serving(i.state))
                .count()
        });
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// The ready instances of `app` on hosts other than `me`, which a
    /// proxy may forward to.
    pub fn remote_ready<'a>(
        &'a self,
        app: &'a str,
        me: &'a str,
    ) -> impl Iterator<Item = (&'a str, &'a InstanceRecord)> + 'a {
        self.hosts
            .iter()
            .filter(move |(h, r)| h.as_str() != me && !r.lost)
            .flat_map(|(h, r)| r.instances.iter().map(move |i| (h.as_str(), i)))
            .filter(move |(_, i)| i.app == app && i.state == InstanceState::Ready)
    }
}

fn serving(s: InstanceState) -> bool {
    matches!(s, InstanceState::Starting | InstanceState::Ready)
}

/// A host's load for placement: the instances it runs, of any app.
fn load(r: &HostRecord) -> u32 {
    let n = r.instances.iter().filter(|i| serving(i.state)).count();
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apps::AppSpec;
    use crate::apps::config::create;

    fn apps() -> BTreeMap<String, App> {
        let mut s = AppSpec::new("web", "a.test", "site", 1);
        s.cmd = Some("serve".into());
        s.max = 3;
        s.cooldown_ms = 10_000;
        let app = create(&BTreeMap::new(), &s, 1).unwrap();
        BTreeMap::from([("web".to_string(), app)])
    }

    fn inst(app: &str, id: &str, state: InstanceState) -> InstanceRecord {
        InstanceRecord {
            app: app.into(),
            id: id.into(),
            addr: "127.0.0.1:8080".into(),
            version: 1,
            state,
            last_request_ms: 0,
            in_flight: 0,
            cpu_percent_of_quota: 0,
            quota_percent: None,
        }
    }

    #[test]
    fn reports_replace_the_hosts_instances_and_drop_stopped_ones() {
        let mut f = Fleet::default();
        f.report(
            "h1",
            &[
                inst("web", "1", InstanceState::Ready),
                inst("web", "2", InstanceState::Stopped),
            ],
            100,
        )
        .unwrap();
        assert_eq!(f.hosts["h1"].instances.len(), 1);
        assert_eq!(f.live_instances("web"), 1);
        f.report("h1", &[], 200).unwrap();
        assert_eq!(f.hosts["h1"].reported_at_ms, 200);
        assert_eq!(f.live_instances("web"), 0);
        let mut bad = inst("web", "3", InstanceState::Ready);
        bad.addr = "nowhere".into();
        assert!(f.report("h1", &[bad], 300).unwrap_err().contains("address"));
        assert!(
            f.report("h1", &[inst("web", "4", InstanceState::Lost)], 300)
                .is_err()
        );
        assert!(f.report("bad host", &[], 300).is_err());
        assert_eq!(f.hosts["h1"].reported_at_ms, 200);
    }

    #[test]
    fn scale_out_places_on_the_least_loaded_host_and_cools_down() {
        let apps = apps();
        let mut f = Fleet::default();
        f.report("h1", &[inst("web", "1", InstanceState::Ready)], 0)
            .unwrap();
        f.report("h2", &[], 0).unwrap();
        assert_eq!(f.scale_out(&apps, "web", "h1", 0, 1000).unwrap(), "h2");
        assert_eq!(f.assignments["web"]["h2"], 1);
        let e = f.scale_out(&apps, "web", "h1", 0, 5000).unwrap_err();
        assert!(e.contains("cooling down"), "{e}");
        // After the cooldown: h2 now counts its assignment once it reports
        // the instance, so the next goes to the lower name of equals.
        f.report("h2", &[inst("web", "7", InstanceState::Ready)], 11_000)
            .unwrap();
        assert_eq!(f.scale_out(&apps, "web", "h1", 0, 11_000).unwrap(), "h1");
        assert_eq!(f.assignments["web"]["h1"], 2);
        // Three of three: at max.
        f.report(
            "h1",
            &[
                inst("web", "1", InstanceState::Ready),
                inst("web", "2", InstanceState::Ready),
            ],
            30_000,
        )
        .unwrap();
        let e = f.scale_out(&apps, "web", "h1", 0, 30_000).unwrap_err();
        assert!(e.contains("its max"), "{e}");
        assert!(f.scale_out(&apps, "nope", "h1", 0, 30_000).is_err());
    }

    #[test]
    fn a_lost_host_loses_its_instances_and_assignments_until_it_reports() {
        let apps = apps();
        let mut f = Fleet::default();
        f.report("h1", &[inst("web", "1", InstanceState::Ready)], 0)
            .unwrap();
        f.report("h2", &[inst("web", "2", InstanceState::Ready)], 0)
            .unwrap();
        f.assign(&apps, "web", &BTreeMap::from([("h2".into(), 1)]), 0)
            .unwrap();
        f.lose("h2").unwrap();
        assert_eq!(f.live_instances("web"), 1);
        assert_eq!(f.hosts["h2"].instances[0].state, InstanceState::Lost);
        assert!(!f.assignments.contains_key("web"));
        assert_eq!(f.remote_ready("web", "h1").count(), 0);
        assert_eq!(f.remote_ready("web", "h2").count(), 1);
        // A lost host is no placement target.
        assert_eq!(f.scale_out(&apps, "web", "h1", 0, 0).unwrap(), "h1");
        f.report("h2", &[], 50).unwrap();
        assert!(!f.hosts["h2"].lost);
        assert!(f.lose("h9").is_err());
    }

    #[test]
    fn assignments_are_bounded_by_max() {
        let apps = apps();
        let mut f = Fleet::default();
        let too_many = BTreeMap::from([("h1".into(), 2), ("h2".into(), 2)]);
        assert!(
            f.assign(&apps, "web", &too_many, 0)
                .unwrap_err()
                .contains("at most 3")
        );
        f.assign(&apps, "web", &BTreeMap::from([("h1".into(), 0)]), 0)
            .unwrap();
        assert!(!f.assignments.contains_key("web"));
        assert!(f.assign(&apps, "nope", &BTreeMap::new(), 0).is_err());
    }
}
