//! Pure decisions about executions: which members must answer a command,
//! and what the collected answers amount to. No clocks here: the caller says
//! whether the deadline has passed.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::command::{Action, ExecutionResult, NodeResult, Targets};
use crate::error::ControlError;
use crate::types::{Membership, NodeId};

/// An execution as the state machine records it, keyed by the log index of
/// its `Execute` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Execution {
    pub exec: u64,
    pub action: Action,
    /// Fixed when the command is applied, so a member joining later is not
    /// waited for and one leaving later is reported missing.
    pub targets: BTreeSet<NodeId>,
    pub deadline_ms: u64,
    pub reports: BTreeMap<NodeId, NodeResult>,
}

/// The members `targets` names in `membership`. An explicit id that is not a
/// member is an error (nothing is proposed, or the applied command is
/// rejected); so is a selection that names nobody.
pub fn resolve_targets(
    targets: &Targets,
    membership: &Membership,
) -> Result<BTreeSet<NodeId>, ControlError> {
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    let learners: BTreeSet<NodeId> = membership.learner_ids().collect();
    let chosen: BTreeSet<NodeId> = match targets {
        Targets::All => voters.union(&learners).copied().collect(),
        Targets::Voters => voters,
        Targets::Learners => learners,
        Targets::Nodes { ids } => {
            if let Some(unknown) = ids
                .iter()
                .find(|id| !voters.contains(id) && !learners.contains(id))
            {
                return Err(ControlError::UnknownMember(*unknown));
            }
            ids.clone()
        }
    };
    if chosen.is_empty() {
        return Err(ControlError::BadCommand(
            "execute: the selection names no member".into(),
        ));
    }
    Ok(chosen)
}

/// Whether `node` must still run `exec` (it is a target and has not
/// answered).
pub fn owes_answer(exec: &Execution, node: NodeId) -> bool {
    exec.targets.contains(&node) && !exec.reports.contains_key(&node)
}

/// The result of `exec` once it is final: every target answered, or the
/// deadline passed (then the silent targets are listed as missing). `None`
/// while answers are still due before the deadline.
pub fn collect(exec: &Execution, deadline_passed: bool) -> Option<ExecutionResult> {
    let missing: BTreeSet<NodeId> = exec
        .targets
        .iter()
        .filter(|t| !exec.reports.contains_key(t))
        .copied()
        .collect();
    if !missing.is_empty() && !deadline_passed {
        return None;
    }
    Some(ExecutionResult {
        exec: exec.exec,
        results: exec
            .reports
            .iter()
            .filter(|(n, _)| exec.targets.contains(n))
            .map(|(n, r)| (*n, r.clone()))
            .collect(),
        timed_out: !missing.is_empty(),
        missing,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::types::Member;

    fn membership(voters: &[u64], learners: &[u64]) -> Membership {
        let mut nodes = BTreeMap::new();
        for id in voters.iter().chain(learners) {
            nodes.insert(*id, Member::default());
        }
        Membership::new(vec![voters.iter().copied().collect()], nodes)
    }

    fn set(ids: &[u64]) -> BTreeSet<u64> {
        ids.iter().copied().collect()
    }

    #[test]
    fn targets_follow_membership() {
        let m = membership(&[1, 2, 3], &[10, 11]);
        assert_eq!(
            resolve_targets(&Targets::All, &m).ok(),
            Some(set(&[1, 2, 3, 10, 11]))
        );
        assert_eq!(
            resolve_targets(&Targets::Voters, &m).ok(),
            Some(set(&[1, 2, 3]))
        );
        assert_eq!(
            resolve_targets(&Targets::Learners, &m).ok(),
            Some(set(&[10, 11]))
        );
        let some = Targets::Nodes { ids: set(&[2, 11]) };
        assert_eq!(resolve_targets(&some, &m).ok(), Some(set(&[2, 11])));
    }

    #[test]
    fn unknown_or_empty_targets_are_errors() {
        let m = membership(&[1], &[]);
        let unknown = Targets::Nodes { ids: set(&[1, 7]) };
        assert!(matches!(
            resolve_targets(&unknown, &m),
            Err(ControlError::UnknownMember(7))
        ));
        assert!(matches!(
            resolve_targets(&Targets::Learners, &m),
            Err(ControlError::BadCommand(_))
        ));
    }

    fn exec(targets: &[u64], answered: &[u64]) -> Execution {
        Execution {
            exec: 9,
            action: Action::Echo {
                payload: "x".into(),
            },
            targets: set(targets),
            deadline_ms: 1000,
            reports: answered
                .iter()
                .map(|n| {
                    (
                        *n,
                        NodeResult::Ok {
                            output: serde_json::json!(n),
                        },
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn result_waits_for_every_target_until_the_deadline() {
        let e = exec(&[1, 2, 3], &[1, 3]);
        assert_eq!(collect(&e, false), None);
        assert!(owes_answer(&e, 2));
        assert!(!owes_answer(&e, 1));
        assert!(!owes_answer(&e, 4));
        let r = collect(&e, true).expect("final after the deadline");
        assert!(r.timed_out);
        assert_eq!(r.missing, set(&[2]));
        assert_eq!(
            r.results.keys().copied().collect::<BTreeSet<_>>(),
            set(&[1, 3])
        );
    }

    #[test]
    fn result_is_final_once_all_answered() {
        let r = collect(&exec(&[1, 2], &[1, 2]), false).expect("complete");
        assert!(!r.timed_out);
        assert!(r.missing.is_empty());
        assert_eq!(r.results.len(), 2);
    }
}
