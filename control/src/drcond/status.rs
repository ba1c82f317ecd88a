//! What a host reports about the limits it applies (pure): per limit,
//! applied or failed with the reason, the processes in its group, the ones
//! it selects that another host on this machine holds, and the OOM kills
//! in it. Judged after every reconcile pass from what the pass did and
//! what the group's files say; a pass writes every limit that differs, so
//! one still differing after it is a failure with a reason, never a
//! silent "pending". Pending is only what a client shows for a limit a
//! host has not had a pass for yet (the host's `pass_at_ms` says when its
//! last one was).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::files;
use super::spec::{Limit, Resources};

/// Where a limit stands on one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum LimitState {
    /// The group exists and its files hold the limit.
    Applied,
    /// Not in a pass of the host yet (what clients show for a limit the
    /// host's report does not list; kept for reports of older builds).
    Pending,
    /// The last pass could not apply it (tried again every pass).
    Failed { reason: String },
}

/// One limit on one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitStatus {
    pub id: u64,
    #[serde(flatten)]
    pub state: LimitState,
    /// Processes in the limit's group.
    pub procs: Vec<i32>,
    /// Processes the kernel's OOM killer killed inside the group.
    pub oom_kills: u64,
    /// Processes the limit selects that another Elton host on this
    /// machine holds in its group (left to it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub held: Vec<Held>,
}

/// A selected process in another Elton host's group on this machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    pub pid: i32,
    /// That group's cgroup path (`/<base>/elton-<host>-<tag>/<id>`).
    pub group: String,
}

/// A host's answer to [`crate::Action::LimitStatus`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostLimits {
    /// Why this host applies no limits (no cgroups, no permission).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub off: Option<String>,
    pub limits: Vec<LimitStatus>,
    /// This host's root directory name, `elton-<name>-<tag>`, below the
    /// daemon's own cgroup in each hierarchy (where its groups are).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<String>,
    /// When the last reconcile pass ended (Unix ms): a limit missing from
    /// a report whose pass is recent is on its way; an old one means the
    /// host's reconciler is stuck.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pass_at_ms: Option<u64>,
}

/// The state of each of `limits` after a pass: `groups` is what the
/// groups' files hold now, `errors` the pass's failures by limit id,
/// `cores` this host's (a CPU limit above them cannot bind).
pub fn judge(
    limits: &[Limit],
    groups: &BTreeMap<u64, Resources>,
    errors: &BTreeMap<u64, String>,
    cores: u32,
) -> BTreeMap<u64, LimitState> {
    limits
        .iter()
        .map(|l| {
            let state = if let Err(reason) = l.resources.fits_host(cores) {
                LimitState::Failed { reason }
            } else if let Some(reason) = errors.get(&l.id) {
                LimitState::Failed {
                    reason: reason.clone(),
                }
            } else {
                match groups.get(&l.id) {
                    Some(have) if files::holds(have, &l.resources) => LimitState::Applied,
                    Some(have) => LimitState::Failed {
                        reason: format!(
                            "written, but the group's files hold {have}, not {}",
                            l.resources
                        ),
                    },
                    None => LimitState::Failed {
                        reason: "the group is missing after the pass that made it".into(),
                    },
                }
            };
            (l.id, state)
        })
        .collect()
}

/// The OOM kills in v1 `memory.oom_control` or v2 `memory.events`
/// (`oom_kill N`; 0 when the kernel does not count them).
pub fn oom_kills(text: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::drcond::spec::Selector;

    fn limit(id: u64, cpu: u32) -> Limit {
        Limit {
            id,
            selector: Selector::Pid { pid: 42 },
            hosts: BTreeSet::from([1]),
            resources: Resources {
                cpu_percent: Some(cpu),
                ..Resources::default()
            },
            expires_at_ms: None,
        }
    }

    #[test]
    fn states_follow_files_errors_and_cores() {
        let mut limits = vec![limit(1, 20), limit(2, 30), limit(3, 40), limit(4, 500)];
        let mut rounded = limit(5, 20);
        rounded.resources.memory_bytes = Some(5_000_000);
        limits.push(rounded);
        limits.push(limit(6, 20));
        let groups = BTreeMap::from([
            (1, limits[0].resources.clone()),
            (2, Resources::default()),
            (4, limits[3].resources.clone()),
            (
                5,
                Resources {
                    cpu_percent: Some(20),
                    memory_bytes: Some(4_997_120),
                    ..Resources::default()
                },
            ),
        ]);
        let errors = BTreeMap::from([(3, "moving 42 into group 3: EPERM".to_string())]);
        let s = judge(&limits, &groups, &errors, 2);
        assert_eq!(s[&1], LimitState::Applied);
        // After a pass, a group that still differs is a failure with what
        // it holds, not "pending" forever.
        assert!(
            matches!(&s[&2], LimitState::Failed { reason } if reason.contains("hold no limits, not cpu 30%")),
            "{:?}",
            s[&2]
        );
        assert_eq!(s[&5], LimitState::Applied);
        assert!(matches!(&s[&6], LimitState::Failed { reason } if reason.contains("missing")));
        assert!(matches!(&s[&3], LimitState::Failed { reason } if reason.contains("EPERM")));
        assert!(matches!(&s[&4], LimitState::Failed { reason } if reason.contains("2 cores")));
    }

    #[test]
    fn oom_kills_are_read_from_v1_and_v2_files() {
        assert_eq!(
            oom_kills("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n"),
            3
        );
        assert_eq!(oom_kills("low 0\nhigh 0\nmax 5\noom 2\noom_kill 2\n"), 2);
        assert_eq!(oom_kills("oom_kill_disable 0\nunder_oom 0\n"), 0);
    }

    #[test]
    fn status_json_is_flat() {
        let s = LimitStatus {
            id: 7,
            state: LimitState::Failed { reason: "x".into() },
            procs: vec![42],
            oom_kills: 1,
            held: Vec::new(),
        };
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"id": 7, "state": "failed", "reason": "x", "procs": [42], "oom_kills": 1})
        );
        assert_eq!(serde_json::from_value::<LimitStatus>(v).unwrap(), s);
    }
}
