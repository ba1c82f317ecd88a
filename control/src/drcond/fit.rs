//! Whether a limit fits the hosts it names (pure): a CPU limit above a
//! host's cores × 100% cannot bind there, so it is refused before it is
//! proposed. Each host reports its own cores (a direct query,
//! [`crate::Action::Host`]); the IO is in [`super::fit_check`].

use serde::{Deserialize, Serialize};

use super::Resources;
use crate::command::NodeResult;
use crate::direct::DirectResult;

/// What a host reports about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostFacts {
    /// CPUs its Elton process may run on (affinity and cgroup quota
    /// included), at least 1.
    pub cores: u32,
}

impl HostFacts {
    pub fn of_this_host() -> Self {
        let cores = u32::try_from(elton_proto::cores::cores()).unwrap_or(u32::MAX);
        Self { cores }
    }
}

/// `Err` naming every answering host the limit does not fit. Hosts that
/// did not answer, or failed, are not judged here: each host checks again
/// when it reconciles.
pub fn check(resources: &Resources, answers: &DirectResult) -> Result<(), String> {
    let refusals: Vec<String> = answers
        .hosts
        .iter()
        .filter_map(|(host, r)| match r {
            NodeResult::Ok { output } => {
                let facts: HostFacts = serde_json::from_value(output.clone()).ok()?;
                resources
                    .fits_host(facts.cores)
                    .err()
                    .map(|e| format!("{host}: {e}"))
            }
            NodeResult::Failed { .. } => None,
        })
        .collect();
    if refusals.is_empty() {
        Ok(())
    } else {
        Err(refusals.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn answers(cores: &[(&str, u32)]) -> DirectResult {
        DirectResult {
            node: "m1".into(),
            hosts: cores
                .iter()
                .map(|(h, c)| {
                    (
                        h.to_string(),
                        NodeResult::Ok {
                            output: serde_json::to_value(HostFacts { cores: *c }).unwrap(),
                        },
                    )
                })
                .chain([(
                    "broken".to_string(),
                    NodeResult::Failed { error: "x".into() },
                )])
                .collect::<BTreeMap<_, _>>(),
            missing: vec!["down".into()],
        }
    }

    #[test]
    fn cpu_above_a_hosts_cores_is_refused_naming_it() {
        let cpu = |c| Resources {
            cpu_percent: Some(c),
            ..Resources::default()
        };
        let a = answers(&[("big", 8), ("small", 2)]);
        assert!(check(&cpu(200), &a).is_ok());
        let err = check(&cpu(500), &a).unwrap_err();
        assert!(
            err.starts_with("small: ") && err.contains("2 cores"),
            "{err}"
        );
        assert!(!err.contains("big"), "{err}");
        assert!(check(&Resources::default(), &a).is_ok());
        assert!(HostFacts::of_this_host().cores >= 1);
    }
}
