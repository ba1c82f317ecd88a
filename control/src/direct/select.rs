//! Pure decisions of the direct read path: whether an action may skip
//! the log, which members a selection names, and the assembled answer.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::command::{Action, MAX_REGISTER_BYTES, NodeResult};
use crate::types::{Member, Membership};

/// Longest deadline a direct query may ask for: the member asked holds
/// the client's call that long.
pub const MAX_DIRECT_DEADLINE: Duration = Duration::from_secs(60);
/// The deadline of a query that names none.
pub const DEFAULT_DIRECT_DEADLINE: Duration = Duration::from_secs(5);

/// Which hosts a direct query runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostSelection {
    /// The member asked, alone (works before it is in a group).
    Asked,
    /// Every member of the group, voters and learners.
    All,
    /// These members, by node name.
    Named(Vec<String>),
}

/// The answer to a direct query: per host (by node name) its result, and
/// the hosts that did not answer within the deadline.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectResult {
    /// The member that ran the query.
    pub node: String,
    pub hosts: BTreeMap<String, NodeResult>,
    pub missing: Vec<String>,
}

/// Checks that `action` may take the direct path (it changes nothing)
/// and is well formed, and that `deadline` leaves it time to run.
pub fn check(action: &Action, deadline: Duration) -> Result<(), String> {
    if deadline.is_zero() || deadline > MAX_DIRECT_DEADLINE {
        return Err(format!(
            "deadline {} ms: between 1 and {} ms",
            deadline.as_millis(),
            MAX_DIRECT_DEADLINE.as_millis()
        ));
    }
    // No wildcard: a new action must decide whether it is read-only.
    match action {
        Action::Echo { payload } => {
            if payload.len() > MAX_REGISTER_BYTES {
                return Err(format!(
                    "payload is {} bytes; at most {MAX_REGISTER_BYTES}",
                    payload.len()
                ));
            }
            Ok(())
        }
        Action::Ps { query } => {
            query.validate()?;
            if Duration::from_millis(query.window_ms) >= deadline {
                return Err(format!(
                    "CPU window {} ms must be shorter than the deadline {} ms",
                    query.window_ms,
                    deadline.as_millis()
                ));
            }
            Ok(())
        }
        Action::Host | Action::LimitStatus | Action::AppState => Ok(()),
    }
}

/// The members `selection` names: `me` alone, every member, or the named
/// ones (each once, in the order given). A name that is not a member is
/// an error naming the members, before anything runs.
pub fn select(
    selection: &HostSelection,
    me: &Member,
    membership: &Membership,
) -> Result<Vec<Member>, String> {
    let members: Vec<&Member> = membership.nodes().map(|(_, m)| m).collect();
    match selection {
        HostSelection::Asked => Ok(vec![me.clone()]),
        HostSelection::All if members.is_empty() => Err(format!(
            "{} is in no control group yet, so there are no other hosts to ask",
            me.name
        )),
        HostSelection::All => Ok(members.into_iter().cloned().collect()),
        HostSelection::Named(names) => {
            if names.is_empty() {
                return Err("no hosts named".into());
            }
            let mut chosen: Vec<Member> = Vec::new();
            for name in names {
                if chosen.iter().any(|m| &m.name == name) {
                    continue;
                }
                let found = members
                    .iter()
                    .find(|m| &m.name == name)
                    .map(|m| (*m).clone())
                    .or_else(|| (name == &me.name).then(|| me.clone()));
                match found {
                    Some(m) => chosen.push(m),
                    None => {
                        let mut known: Vec<&str> =
                            members.iter().map(|m| m.name.as_str()).collect();
                        known.sort_unstable();
                        return Err(format!(
                            "host {name:?} is not a member of the control group (members: {})",
                            known.join(", ")
                        ));
                    }
                }
            }
            Ok(chosen)
        }
    }
}

/// The answer from each asked host's outcome: `None` is a host that did
/// not answer in time (or could not be reached).
pub fn assemble(node: &str, outcomes: Vec<(String, Option<NodeResult>)>) -> DirectResult {
    let mut result = DirectResult {
        node: node.to_string(),
        ..DirectResult::default()
    };
    for (host, outcome) in outcomes {
        match outcome {
            Some(r) => {
                result.hosts.insert(host, r);
            }
            None => result.missing.push(host),
        }
    }
    result.missing.sort();
    result
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::k2i::ProcQuery;
    use crate::types::Role;

    fn member(name: &str, role: Role) -> Member {
        Member {
            name: name.into(),
            addr: format!("https://{name}:1"),
            role,
        }
    }

    fn group() -> Membership {
        let nodes = BTreeMap::from([
            (1, member("m1", Role::Voter)),
            (2, member("m2", Role::Voter)),
            (10, member("s1", Role::Learner)),
        ]);
        Membership::new(vec![[1, 2].into_iter().collect()], nodes)
    }

    fn names(ms: &[Member]) -> Vec<&str> {
        ms.iter().map(|m| m.name.as_str()).collect()
    }

    #[test]
    fn selections_name_members() {
        let me = member("m2", Role::Voter);
        let g = group();
        assert_eq!(
            names(&select(&HostSelection::Asked, &me, &g).unwrap()),
            ["m2"]
        );
        assert_eq!(
            names(&select(&HostSelection::All, &me, &g).unwrap()),
            ["m1", "m2", "s1"]
        );
        let some = HostSelection::Named(vec!["s1".into(), "m1".into(), "s1".into()]);
        assert_eq!(names(&select(&some, &me, &g).unwrap()), ["s1", "m1"]);
        let err = select(&HostSelection::Named(vec!["nobody".into()]), &me, &g).unwrap_err();
        assert!(
            err.contains("not a member") && err.contains("m1, m2, s1"),
            "{err}"
        );
        assert!(select(&HostSelection::Named(vec![]), &me, &g).is_err());
        // Before joining a group a member can still answer for itself.
        let empty = Membership::new(vec![], BTreeMap::new());
        assert_eq!(
            names(&select(&HostSelection::Asked, &me, &empty).unwrap()),
            ["m2"]
        );
        assert!(select(&HostSelection::All, &me, &empty).is_err());
    }

    #[test]
    fn queries_are_checked() {
        let ps = |window_ms| Action::Ps {
            query: ProcQuery {
                window_ms,
                ..ProcQuery::default()
            },
        };
        let s = Duration::from_secs(1);
        assert!(check(&ps(100), s).is_ok());
        assert!(check(&ps(1000), s).unwrap_err().contains("shorter"));
        assert!(check(&ps(0), Duration::ZERO).is_err());
        assert!(check(&ps(0), MAX_DIRECT_DEADLINE + s).is_err());
        let bad = Action::Ps {
            query: ProcQuery {
                pid: Some(0),
                ..ProcQuery::default()
            },
        };
        assert!(check(&bad, s).unwrap_err().contains("positive"));
        let big = Action::Echo {
            payload: "x".repeat(MAX_REGISTER_BYTES + 1),
        };
        assert!(check(&big, s).is_err());
    }

    #[test]
    fn silent_hosts_are_missing() {
        let ok = NodeResult::Ok {
            output: serde_json::json!(1),
        };
        let r = assemble(
            "m1",
            vec![
                ("s2".into(), None),
                ("m1".into(), Some(ok.clone())),
                ("a".into(), None),
            ],
        );
        assert_eq!(r.node, "m1");
        assert_eq!(r.missing, ["a", "s2"]);
        assert_eq!(r.hosts.get("m1"), Some(&ok));
    }
}
