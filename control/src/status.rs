//! Assembling the group's status from each member's own view (pure).

use std::collections::BTreeMap;

use elton_proto::control_pb::MemberStatus;

use crate::types::{Member, NodeId};

/// What one member says about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SelfView {
    pub state: String,
    pub term: u64,
    pub last_log_index: u64,
    pub last_applied: u64,
    pub state_digest: String,
    pub applied_requests: u64,
    pub purged: u64,
}

/// One row per member of `membership` (voters first, then learners, by
/// name): its role from the membership, its own view or why there is
/// none, and its lag behind the most advanced log among the answers
/// (the leader's, when it answered).
pub fn rows(
    membership: &[(NodeId, Member, bool)],
    views: &BTreeMap<NodeId, Result<SelfView, String>>,
) -> Vec<MemberStatus> {
    let head = views
        .values()
        .filter_map(|v| v.as_ref().ok())
        .map(|v| v.last_log_index)
        .max()
        .unwrap_or(0);
    let mut out: Vec<MemberStatus> = membership
        .iter()
        .map(|(id, member, voter)| {
            let mut row = MemberStatus {
                name: member.name.clone(),
                raft_id: *id,
                addr: member.addr.clone(),
                role: if *voter { "voter" } else { "learner" }.into(),
                ..MemberStatus::default()
            };
            match views.get(id) {
                Some(Ok(v)) => {
                    row.state = v.state.clone();
                    row.term = v.term;
                    row.last_log_index = v.last_log_index;
                    row.last_applied = v.last_applied;
                    row.lag = head.saturating_sub(v.last_applied);
                    row.state_digest = v.state_digest.clone();
                    row.applied_requests = v.applied_requests;
                    row.purged = v.purged;
                }
                Some(Err(e)) => {
                    row.state = "unreachable".into();
                    row.error = e.clone();
                }
                None => {
                    row.state = "unreachable".into();
                    row.error = "not asked".into();
                }
            }
            row
        })
        .collect();
    out.sort_by(|a, b| (a.role != "voter", &a.name).cmp(&(b.role != "voter", &b.name)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Role;

    fn member(name: &str, role: Role) -> Member {
        Member {
            name: name.into(),
            addr: format!("https://{name}:1"),
            role,
        }
    }

    #[test]
    fn lag_is_behind_the_longest_log_and_silent_members_are_listed() {
        let membership = vec![
            (3, member("s1", Role::Learner), false),
            (2, member("m2", Role::Voter), true),
            (1, member("m1", Role::Voter), true),
        ];
        let view = |state: &str, log, applied| {
            Ok(SelfView {
                state: state.into(),
                term: 4,
                last_log_index: log,
                last_applied: applied,
                state_digest: String::new(),
                applied_requests: 0,
                purged: 0,
            })
        };
        let views = BTreeMap::from([
            (1, view("leader", 10, 10)),
            (2, view("follower", 9, 7)),
            (3, Err("connection refused".into())),
        ]);
        let rows = rows(&membership, &views);
        let names: Vec<_> = rows.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["m1", "m2", "s1"]);
        assert_eq!((rows[0].lag, rows[1].lag), (0, 3));
        assert_eq!(rows[2].state, "unreachable");
        assert_eq!(rows[2].role, "learner");
        assert_eq!(rows[2].error, "connection refused");
    }
}
