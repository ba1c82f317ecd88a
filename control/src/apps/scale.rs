//! The scaling rule (pure): given an app's instances with their load, the
//! hosts that can run one, and when the app's last decision was made,
//! whether to scale out (one more instance, on the least-loaded host),
//! scale up (raise the hot instance's CPU quota) or do nothing. Each
//! host's proxy evaluates it for the instances it runs
//! (`docs/architecture.md` §9, "FastContainer").

use super::spec::AppSpec;
use crate::types::NodeId;

/// How far scale-up raises an instance's CPU quota when the app sets no
/// `cpu_max_percent`: at most this many times its `cpu_percent`.
pub const MAX_SCALE_UP_FACTOR: u32 = 4;

/// One instance's load, as its host measured it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceLoad {
    pub id: u64,
    pub host: NodeId,
    /// CPU used over the last window, in percent of its quota (of one
    /// core when it has none).
    pub cpu_percent_of_quota: u32,
    /// Its CPU quota now (percent of one core); `None`: unlimited.
    pub quota_percent: Option<u32>,
}

/// A host that can run instances, with how many it runs (of any app).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostLoad {
    pub host: NodeId,
    pub instances: u32,
    /// Its cores × 100: no quota is raised above it.
    pub cpu_capacity_percent: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nothing to do, and why (logged, shown to operators).
    Hold(String),
    /// Start one more instance on `host`.
    ScaleOut { host: NodeId },
    /// Raise instance `id`'s CPU quota to `quota_percent`.
    ScaleUp { id: u64, quota_percent: u32 },
}

/// The decision for `app` at `now_ms`. `last_ms`: when its last scaling
/// decision was made (none: never).
pub fn decide(
    app: &AppSpec,
    instances: &[InstanceLoad],
    hosts: &[HostLoad],
    last_ms: Option<u64>,
    now_ms: u64,
) -> Decision {
    if let Some(last) = last_ms
        && now_ms.saturating_sub(last) < app.cooldown_ms
    {
        return Decision::Hold(format!(
            "cooling down: {} ms of {} since the last decision",
            now_ms.saturating_sub(last),
            app.cooldown_ms
        ));
    }
    // The hottest instance over the threshold, if any.
    let Some(hot) = instances
        .iter()
        .filter(|i| i.cpu_percent_of_quota >= app.scale_at_percent)
        .max_by_key(|i| (i.cpu_percent_of_quota, std::cmp::Reverse(i.id)))
    else {
        return Decision::Hold(format!(
            "no instance at or above {}% of its CPU",
            app.scale_at_percent
        ));
    };
    let count = u32::try_from(instances.len()).unwrap_or(u32::MAX);
    if count < app.max {
        // Least loaded first; ties to the lowest id, so every member that
        // evaluates this picks the same host.
        if let Some(h) = hosts.iter().min_by_key(|h| (h.instances, h.host)) {
            return Decision::ScaleOut { host: h.host };
        }
    }
    // Out of instances (or hosts): give the hot one more CPU, if it is
    // limited and below its bound.
    let (Some(base), Some(quota)) = (app.cpu_percent, hot.quota_percent) else {
        return Decision::Hold(format!(
            "at max {} instances and instance {} has no CPU limit to raise",
            app.max, hot.id
        ));
    };
    let capacity = hosts
        .iter()
        .find(|h| h.host == hot.host)
        .map_or(quota, |h| h.cpu_capacity_percent);
    let bound = app
        .cpu_max_percent
        .unwrap_or_else(|| base.saturating_mul(MAX_SCALE_UP_FACTOR))
        .min(capacity);
    if quota >= bound {
        return Decision::Hold(format!(
            "at max {} instances and instance {} at its CPU bound of {bound}%",
            app.max, hot.id
        ));
    }
    Decision::ScaleUp {
        id: hot.id,
        quota_percent: quota.saturating_mul(2).min(bound),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app() -> AppSpec {
        let mut s = AppSpec::new("web", "a.test", "site", 1);
        s.cmd = Some("serve".into());
        s.max = 2;
        s.cpu_percent = Some(30);
        s.scale_at_percent = 80;
        s.cooldown_ms = 30_000;
        s
    }

    fn inst(id: u64, host: NodeId, cpu: u32, quota: Option<u32>) -> InstanceLoad {
        InstanceLoad {
            id,
            host,
            cpu_percent_of_quota: cpu,
            quota_percent: quota,
        }
    }

    fn hosts() -> Vec<HostLoad> {
        vec![
            HostLoad {
                host: 1,
                instances: 3,
                cpu_capacity_percent: 200,
            },
            HostLoad {
                host: 2,
                instances: 1,
                cpu_capacity_percent: 200,
            },
            HostLoad {
                host: 3,
                instances: 1,
                cpu_capacity_percent: 200,
            },
        ]
    }

    #[test]
    fn a_hot_instance_scales_out_on_the_least_loaded_host() {
        let d = decide(&app(), &[inst(7, 1, 95, Some(30))], &hosts(), None, 0);
        assert_eq!(d, Decision::ScaleOut { host: 2 });
    }

    #[test]
    fn below_the_threshold_nothing_happens() {
        let d = decide(&app(), &[inst(7, 1, 79, Some(30))], &hosts(), None, 0);
        assert!(matches!(d, Decision::Hold(why) if why.contains("80%")));
    }

    #[test]
    fn the_cooldown_holds_the_next_decision() {
        let hot = [inst(7, 1, 95, Some(30))];
        let d = decide(&app(), &hot, &hosts(), Some(10_000), 39_999);
        assert!(matches!(d, Decision::Hold(why) if why.contains("cooling down")));
        let d = decide(&app(), &hot, &hosts(), Some(10_000), 40_000);
        assert_eq!(d, Decision::ScaleOut { host: 2 });
    }

    #[test]
    fn at_max_the_hot_instance_is_scaled_up_to_its_bound() {
        let two = [inst(7, 1, 95, Some(30)), inst(8, 2, 50, Some(30))];
        assert_eq!(
            decide(&app(), &two, &hosts(), None, 0),
            Decision::ScaleUp {
                id: 7,
                quota_percent: 60
            }
        );
        // Doubling stops at 4 × 30%.
        let two = [inst(7, 1, 95, Some(90)), inst(8, 2, 50, Some(30))];
        assert_eq!(
            decide(&app(), &two, &hosts(), None, 0),
            Decision::ScaleUp {
                id: 7,
                quota_percent: 120
            }
        );
        let two = [inst(7, 1, 95, Some(120)), inst(8, 2, 50, Some(30))];
        assert!(matches!(
            decide(&app(), &two, &hosts(), None, 0),
            Decision::Hold(why) if why.contains("CPU bound of 120%")
        ));
    }

    #[test]
    fn the_host_capacity_bounds_scale_up_and_unlimited_apps_hold() {
        let small = vec![HostLoad {
            host: 1,
            instances: 2,
            cpu_capacity_percent: 100,
        }];
        let two = [inst(7, 1, 95, Some(80)), inst(8, 1, 95, Some(30))];
        assert_eq!(
            decide(&app(), &two, &small, None, 0),
            Decision::ScaleUp {
                id: 7,
                quota_percent: 100
            }
        );
        let mut unlimited = app();
        unlimited.cpu_percent = None;
        let two = [inst(7, 1, 95, None), inst(8, 2, 95, None)];
        assert!(matches!(
            decide(&unlimited, &two, &hosts(), None, 0),
            Decision::Hold(why) if why.contains("no CPU limit")
        ));
    }

    #[test]
    fn max_cpu_bounds_scale_up_and_at_the_base_only_scale_out_remains() {
        let mut a = app();
        a.max = 1;
        a.cpu_max_percent = Some(45);
        let hot = [inst(7, 1, 95, Some(30))];
        assert_eq!(
            decide(&a, &hot, &hosts(), None, 0),
            Decision::ScaleUp {
                id: 7,
                quota_percent: 45
            }
        );
        a.cpu_max_percent = Some(30);
        assert!(matches!(
            decide(&a, &hot, &hosts(), None, 0),
            Decision::Hold(why) if why.contains("CPU bound of 30%")
        ));
        // Raising max then lets it scale out.
        a.max = 2;
        assert_eq!(
            decide(&a, &hot, &hosts(), None, 0),
            Decision::ScaleOut { host: 2 }
        );
    }

    #[test]
    fn the_same_inputs_give_the_same_decision() {
        // Ties: the hottest, then the lowest instance id; the least
        // loaded, then the lowest host id.
        let tied = [inst(9, 1, 95, Some(30)), inst(8, 1, 95, Some(30))];
        let mut a = app();
        a.max = 2;
        assert_eq!(
            decide(&a, &tied, &hosts(), None, 0),
            Decision::ScaleUp {
                id: 8,
                quota_percent: 60
            }
        );
    }
}
