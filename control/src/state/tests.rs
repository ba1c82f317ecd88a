use std::collections::{BTreeMap, BTreeSet};

use openraft::{CommittedLeaderId, EntryPayload};

use super::*;
use crate::command::{Action, RequestId, Targets};
use crate::types::{Member, Membership};

struct Log {
    index: u64,
}

impl Log {
    fn new() -> Self {
        Self { index: 0 }
    }

    fn entry(&mut self, payload: EntryPayload<crate::TypeConfig>) -> Entry {
        self.index += 1;
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), self.index),
            payload,
        }
    }

    fn req(&mut self, client: &str, seq: u64, command: Command) -> Entry {
        self.req_acked(client, seq, 0, command)
    }

    fn req_acked(&mut self, client: &str, seq: u64, acked_below: u64, command: Command) -> Entry {
        let mut r = Request::new(
            RequestId {
                client: client.into(),
                seq,
            },
            command,
        );
        r.acked_below = acked_below;
        self.entry(EntryPayload::Normal(r))
    }

    fn members(&mut self, voters: &[u64], learners: &[u64]) -> Entry {
        let mut nodes = BTreeMap::new();
        for id in voters.iter().chain(learners) {
            nodes.insert(
                *id,
                Member {
                    name: format!("m{id}"),
                    addr: format!("https://127.0.0.1:{}", 7000 + id),
                    role: if voters.contains(id) {
                        crate::Role::Voter
                    } else {
                        crate::Role::Learner
                    },
                },
            );
        }
        let m = Membership::new(vec![voters.iter().copied().collect()], nodes);
        self.entry(EntryPayload::Membership(m))
    }
}

fn put(k: &str, v: &str) -> Command {
    Command::Put {
        key: k.into(),
        value: v.into(),
    }
}

fn get(k: &str) -> Command {
    Command::Get { key: k.into() }
}

fn value(v: Option<&str>) -> Response {
    Response::Value {
        value: v.map(str::to_string),
    }
}

#[test]
fn registers_put_get_cas() {
    let mut log = Log::new();
    let mut s = State::default();
    assert_eq!(apply(&mut s, &log.req("c", 1, get("k"))), value(None));
    assert_eq!(apply(&mut s, &log.req("c", 2, put("k", "a"))), value(None));
    assert_eq!(
        apply(&mut s, &log.req("c", 3, put("k", "b"))),
        value(Some("a"))
    );
    let cas = |expected: Option<&str>, new: &str| Command::Cas {
        key: "k".into(),
        expected: expected.map(str::to_string),
        new: new.into(),
    };
    assert_eq!(
        apply(&mut s, &log.req("c", 4, cas(Some("a"), "x"))),
        Response::Cas {
            swapped: false,
            current: Some("b".into())
        }
    );
    assert_eq!(
        apply(&mut s, &log.req("c", 5, cas(Some("b"), "x"))),
        Response::Cas {
            swapped: true,
            current: Some("x".into())
        }
    );
    assert_eq!(
        apply(&mut s, &log.req("c", 6, cas(None, "y"))),
        Response::Cas {
            swapped: false,
            current: Some("x".into())
        }
    );
    assert_eq!(
        apply(&mut s, &log.req("c", 7, cas(None, "n"))).clone(),
        Response::Cas {
            swapped: false,
            current: Some("x".into())
        }
    );
    let cas_new = Command::Cas {
        key: "fresh".into(),
        expected: None,
        new: "n".into(),
    };
    assert!(matches!(
        apply(&mut s, &log.req("c", 8, cas_new)),
        Response::Cas { swapped: true, .. }
    ));
    assert_eq!(apply(&mut s, &log.req("c", 9, get("k"))), value(Some("x")));
    assert_eq!(s.last_applied.map(|l| l.index), Some(9));
    assert_eq!(s.applied_requests, 9);
}

#[test]
fn a_retried_request_changes_nothing_and_gets_the_first_answer() {
    let mut log = Log::new();
    let mut s = State::default();
    let first = apply(&mut s, &log.req("c", 1, put("k", "a")));
    apply(&mut s, &log.req("d", 1, put("k", "b")));
    s.take_changes();
    let before = s.digest();
    // The same request id committed again (a client retry after a lost
    // answer): the first answer, and no effect.
    let again = apply(&mut s, &log.req("c", 1, put("k", "a")));
    assert_eq!(again, first);
    assert_eq!(s.kv.get("k").map(String::as_str), Some("b"));
    assert_eq!(s.digest(), before);
    assert_eq!(s.applied_requests, 2);
    assert_eq!(s.take_changes(), Changes::default());
}

#[test]
fn acknowledged_requests_are_forgotten_and_never_reapplied() {
    let mut log = Log::new();
    let mut s = State::default();
    apply(&mut s, &log.req("c", 1, put("k", "a")));
    // Written to the file here: dropping row 1 later is a change to write.
    s.take_changes();
    apply(&mut s, &log.req("c", 2, put("k", "b")));
    apply(&mut s, &log.req_acked("c", 3, 3, put("k", "c")));
    let session = &s.sessions["c"];
    assert_eq!(session.floor, 3);
    assert_eq!(session.responses.keys().copied().collect::<Vec<_>>(), [3]);
    let changes = s.take_changes();
    assert!(changes.responses.contains(&("c".to_string(), 1)));
    // Row 2 came and went between two writes of the file: nothing to write.
    assert!(!changes.responses.contains(&("c".to_string(), 2)));
    assert!(changes.responses.contains(&("c".to_string(), 3)));
    assert!(changes.sessions.contains("c"));
    let r = apply(&mut s, &log.req("c", 1, put("k", "a")));
    assert!(matches!(r, Response::Rejected { .. }), "{r:?}");
    assert_eq!(s.kv["k"], "c");
    assert_eq!(s.applied_requests, 3);
}

#[test]
fn a_client_that_never_acknowledges_is_capped() {
    let mut log = Log::new();
    let mut s = State::default();
    let n = MAX_SESSION_RESPONSES as u64 + 5;
    for seq in 1..=n {
        apply(&mut s, &log.req("c", seq, Command::Noop));
    }
    let session = &s.sessions["c"];
    assert_eq!(session.responses.len(), MAX_SESSION_RESPONSES);
    assert_eq!(session.floor, 6);
    assert!(matches!(
        apply(&mut s, &log.req("c", 2, Command::Noop)),
        Response::Rejected { .. }
    ));
    assert_eq!(s.applied_requests, n);
}

fn echo() -> Action {
    Action::Echo {
        payload: "hi".into(),
    }
}

fn ok(n: u64) -> NodeResult {
    NodeResult::Ok {
        output: serde_json::json!(n),
    }
}

#[test]
fn executions_record_targets_and_reports() {
    let mut log = Log::new();
    let mut s = State::default();
    apply(&mut s, &log.members(&[1, 2, 3], &[10]));
    assert_eq!(s.membership.log_id().map(|l| l.index), Some(1));
    let exec = Command::Execute {
        targets: Targets::All,
        action: echo(),
        deadline_ms: 500,
    };
    let r = apply(&mut s, &log.req("c", 1, exec));
    let targets: BTreeSet<u64> = [1, 2, 3, 10].into();
    assert_eq!(
        r,
        Response::Executing {
            exec: 2,
            targets: targets.clone(),
            deadline_ms: 500
        }
    );
    let report = |node, result| Command::Report {
        exec: 2,
        node,
        result,
    };
    assert_eq!(
        apply(&mut s, &log.req("n10", 1, report(10, ok(10)))),
        Response::Reported { exec: 2, node: 10 }
    );
    // A second answer from the same member, a stranger's answer, and an
    // answer to an execution that does not exist change nothing.
    let before = s.executions.clone();
    for (seq, cmd) in [
        (2, report(10, ok(99))),
        (3, report(11, ok(11))),
        (
            4,
            Command::Report {
                exec: 77,
                node: 1,
                result: ok(1),
            },
        ),
    ] {
        let r = apply(&mut s, &log.req("n10", seq, cmd));
        assert!(matches!(r, Response::Rejected { .. }), "{r:?}");
    }
    assert_eq!(s.executions, before);
    let e = &s.executions[&2];
    assert_eq!(e.targets, targets);
    assert_eq!(e.reports.get(&10), Some(&ok(10)));
}

#[test]
fn an_execution_for_a_member_that_left_is_rejected_at_apply() {
    let mut log = Log::new();
    let mut s = State::default();
    apply(&mut s, &log.members(&[1], &[]));
    let exec = Command::Execute {
        targets: Targets::Nodes { ids: [5].into() },
        action: echo(),
        deadline_ms: 1,
    };
    let r = apply(&mut s, &log.req("c", 1, exec));
    assert!(matches!(r, Response::Rejected { .. }), "{r:?}");
    assert!(s.executions.is_empty());
}

#[test]
fn old_executions_are_dropped_beyond_the_cap() {
    let mut log = Log::new();
    let mut s = State::default();
    apply(&mut s, &log.members(&[1], &[]));
    for seq in 0..(MAX_EXECUTIONS as u64 + 2) {
        let exec = Command::Execute {
            targets: Targets::Voters,
            action: echo(),
            deadline_ms: 1,
        };
        apply(&mut s, &log.req_acked("c", seq, seq, exec));
    }
    assert_eq!(s.executions.len(), MAX_EXECUTIONS);
    assert_eq!(s.executions.keys().next(), Some(&4));
    let changes = s.take_changes();
    assert!(changes.executions.contains(&2) && changes.executions.contains(&3));
}

#[test]
fn the_same_log_gives_the_same_state() {
    let entries = {
        let mut log = Log::new();
        vec![
            log.members(&[1, 2], &[3]),
            log.entry(EntryPayload::Blank),
            log.req("a", 1, put("x", "1")),
            log.req("b", 1, put("x", "2")),
            log.req("a", 1, put("x", "1")),
            log.req(
                "b",
                2,
                Command::Execute {
                    targets: Targets::Learners,
                    action: echo(),
                    deadline_ms: 9,
                },
            ),
        ]
    };
    let mut one = State::default();
    let mut two = State::default();
    let r1: Vec<_> = entries.iter().map(|e| apply(&mut one, e)).collect();
    let r2: Vec<_> = entries.iter().map(|e| apply(&mut two, e)).collect();
    assert_eq!(r1, r2);
    assert_eq!(one.digest(), two.digest());
    assert_eq!(one.kv["x"], "2");
    let mut other = State::default();
    for e in &entries[..4] {
        apply(&mut other, e);
    }
    assert_ne!(other.digest(), one.digest());
}

fn limit_spec(hosts: Targets, for_ms: Option<u64>) -> crate::drcond::LimitSpec {
    crate::drcond::LimitSpec {
        selector: crate::drcond::Selector::Name {
            name: "busy".into(),
        },
        hosts,
        resources: crate::drcond::Resources {
            cpu_percent: Some(20),
            ..crate::drcond::Resources::default()
        },
        for_ms,
    }
}

#[test]
fn limits_are_set_for_resolved_hosts_and_released_once() {
    let mut log = Log::new();
    let mut s = State::default();
    apply(&mut s, &log.members(&[1], &[10, 11]));
    let set = Command::Limit {
        spec: limit_spec(Targets::Learners, Some(60_000)),
        expires_at_ms: Some(1_060_000),
    };
    let r = apply(&mut s, &log.req("c", 1, set));
    assert_eq!(
        r,
        Response::Limited {
            id: 2,
            hosts: [10, 11].into(),
            expires_at_ms: Some(1_060_000)
        }
    );
    assert_eq!(s.limits[&2].hosts, BTreeSet::from([10, 11]));
    assert!(s.take_changes().limits.contains(&2));
    // A limit naming a member that left by the time it applies changes
    // nothing.
    let stranger = Command::Limit {
        spec: limit_spec(Targets::Nodes { ids: [99].into() }, None),
        expires_at_ms: None,
    };
    let r = apply(&mut s, &log.req("c", 2, stranger));
    assert!(matches!(r, Response::Rejected { .. }), "{r:?}");
    assert_eq!(s.limits.len(), 1);
    let digest = s.digest();
    assert_eq!(
        apply(&mut s, &log.req("c", 3, Command::Release { id: 2 })),
        Response::Released { id: 2 }
    );
    assert_ne!(s.digest(), digest);
    // Released twice (a client and the leader's expiry): the second is
    // refused and changes nothing.
    let r = apply(
        &mut s,
        &log.req("drcond-expiry", 2, Command::Release { id: 2 }),
    );
    assert!(matches!(r, Response::Rejected { .. }), "{r:?}");
    assert!(s.limits.is_empty());
    assert!(s.take_changes().limits.contains(&2));
}

fn request(client: &str, seq: u64, command: Command) -> Request {
    Request::new(
        RequestId {
            client: client.into(),
            seq,
        },
        command,
    )
}

#[test]
fn a_batch_applies_its_requests_in_order_and_answers_each() {
    let mut s = State::default();
    let mut log = Log::new();
    let batch = Command::Batch {
        requests: vec![
            request("a", 1, put("k", "1")),
            request("b", 1, put("k", "2")),
            request("a", 2, get("k")),
            request("c", 1, Command::Noop),
        ],
    };
    let r = apply(&mut s, &log.req("batch:m1", 1, batch));
    assert_eq!(
        r,
        Response::Batch {
            responses: vec![
                value(None),
                value(Some("1")),
                value(Some("2")),
                Response::Done
            ]
        }
    );
    assert_eq!(s.applied_requests, 4);
    assert_eq!(s.kv.get("k").map(String::as_str), Some("2"));
    // The envelope's id is not a client's: no session for it.
    assert!(!s.sessions.contains_key("batch:m1"));
    assert_eq!(s.response("b", 1), Some(&value(Some("1"))));
}

#[test]
fn a_request_retried_inside_or_across_batches_applies_once() {
    let mut s = State::default();
    let mut log = Log::new();
    let first = Command::Batch {
        requests: vec![
            request("a", 1, put("k", "1")),
            request("a", 1, put("k", "1")),
        ],
    };
    let r = apply(&mut s, &log.req("batch:m1", 1, first));
    assert_eq!(
        r,
        Response::Batch {
            responses: vec![value(None), value(None)]
        }
    );
    let again = Command::Batch {
        requests: vec![
            request("b", 1, put("k", "2")),
            request("a", 1, put("k", "1")),
        ],
    };
    let r = apply(&mut s, &log.req("batch:m2", 1, again));
    assert_eq!(
        r,
        Response::Batch {
            responses: vec![value(Some("1")), value(None)]
        }
    );
    assert_eq!(s.applied_requests, 2);
    assert_eq!(s.kv.get("k").map(String::as_str), Some("2"));
}

#[test]
fn entry_bound_and_nested_commands_in_a_batch_are_rejected_without_effect() {
    let mut s = State::default();
    let mut log = Log::new();
    apply(&mut s, &log.members(&[1], &[]));
    let before = s.digest();
    let batch = Command::Batch {
        requests: vec![
            request(
                "a",
                1,
                Command::Execute {
                    targets: Targets::All,
                    action: Action::Echo {
                        payload: "x".into(),
                    },
                    deadline_ms: 10,
                },
            ),
            request(
                "a",
                2,
                Command::Batch {
                    requests: vec![request("a", 3, put("k", "v"))],
                },
            ),
        ],
    };
    let Response::Batch { responses } = apply(&mut s, &log.req("batch:m1", 1, batch)) else {
        panic!("a batch answers with a batch");
    };
    assert_eq!(responses.len(), 2);
    assert!(
        responses
            .iter()
            .all(|r| matches!(r, Response::Rejected { .. }))
    );
    assert_eq!(s.digest(), before);
    assert!(s.executions.is_empty());
}

fn app_spec(name: &str, host: &str) -> crate::apps::AppSpec {
    let mut s = crate::apps::AppSpec::new(name, host, "site", 1);
    s.cmd = Some("serve".into());
    s
}

#[test]
fn apps_are_created_changed_and_removed_and_conflicts_change_nothing() {
    let mut log = Log::new();
    let mut s = State::default();
    let create = Command::AppCreate {
        spec: app_spec("web", "a.test"),
    };
    let Response::App { app } = apply(&mut s, &log.req("c", 1, create)) else {
        panic!("not created");
    };
    assert_eq!((app.created, app.updated), (1, 1));
    assert_eq!(s.take_changes().apps, BTreeSet::from(["web".to_string()]));

    // Same host name for another app: rejected, nothing written.
    let digest = s.digest();
    let clash = Command::AppCreate {
        spec: app_spec("api", "a.test"),
    };
    assert!(matches!(
        apply(&mut s, &log.req("c", 2, clash)),
        Response::Rejected { reason } if reason.contains("already app")
    ));
    assert!(s.take_changes().apps.is_empty());
    assert_eq!(s.apps.len(), 1);
    assert_ne!(
        digest,
        s.digest(),
        "the session's answer is part of the state"
    );

    let deploy = Command::AppSet {
        name: "web".into(),
        patch: crate::apps::AppPatch {
            version: Some(2),
            ..Default::default()
        },
    };
    let Response::App { app } = apply(&mut s, &log.req("c", 3, deploy)) else {
        panic!("not changed");
    };
    assert_eq!((app.created, app.updated, app.spec.version), (1, 3, 2));
    assert!(matches!(
        apply(&mut s, &log.req("c", 4, Command::Apps)),
        Response::Apps { apps } if apps.len() == 1 && apps[0].spec.version == 2
    ));

    let rm = Command::AppRemove { name: "web".into() };
    assert!(matches!(
        apply(&mut s, &log.req("c", 5, rm.clone())),
        Response::AppRemoved { name } if name == "web"
    ));
    assert!(s.apps.is_empty());
    assert!(matches!(
        apply(&mut s, &log.req("c", 6, rm)),
        Response::Rejected { reason } if reason.contains("no app")
    ));
}

#[test]
fn a_state_without_apps_keeps_its_digest() {
    // Builds before FastContainer computed the digest without an apps
    // field; an empty configuration DB must not change it.
    let s = State::default();
    let before = s.digest();
    let mut with = s.clone();
    with.apps.insert(
        "web".into(),
        crate::apps::App {
            spec: app_spec("web", "a.test"),
            created: 1,
            updated: 1,
        },
    );
    assert_ne!(before, with.digest());
    with.apps.clear();
    assert_eq!(before, with.digest());
}

#[test]
fn the_fleet_follows_reports_scale_outs_and_the_reconciler() {
    use crate::apps::fleet::{InstanceRecord, InstanceState};
    let mut log = Log::new();
    let mut s = State::default();
    let mut spec = app_spec("web", "a.test");
    spec.cooldown_ms = 10_000;
    apply(&mut s, &log.req("c", 1, Command::AppCreate { spec }));
    s.take_changes();
    let report = |host: &str, at_ms: u64| Command::InstanceReport {
        host: host.into(),
        instances: vec![InstanceRecord {
            app: "web".into(),
            id: "42".into(),
            addr: "127.0.0.1:9000".into(),
            version: 1,
            state: InstanceState::Ready,
            last_request_ms: 0,
            in_flight: 0,
            cpu_percent_of_quota: 90,
            quota_percent: None,
        }],
        at_ms,
    };
    assert_eq!(
        apply(&mut s, &log.req("h1", 1, report("h1", 1_000))),
        Response::Done
    );
    assert!(s.take_changes().fleet);
    apply(
        &mut s,
        &log.req(
            "h2",
            1,
            Command::InstanceReport {
                host: "h2".into(),
                instances: vec![],
                at_ms: 1_000,
            },
        ),
    );
    let out = |at_ms| Command::AppScaleOut {
        app: "web".into(),
        host: "h1".into(),
        running: 1,
        at_ms,
    };
    assert_eq!(
        apply(&mut s, &log.req("h1", 2, out(2_000))),
        Response::ScaledOut {
            app: "web".into(),
            host: "h2".into()
        }
    );
    // Within the cooldown: refused, nothing changes.
    s.take_changes();
    let digest = s.fleet.clone();
    assert!(matches!(
        apply(&mut s, &log.req("h1", 3, out(5_000))),
        Response::Rejected { reason } if reason.contains("cooling down")
    ));
    assert_eq!(s.fleet, digest);
    assert!(!s.take_changes().fleet);
    // The reconciler loses h2: its assignment goes.
    assert_eq!(
        apply(
            &mut s,
            &log.req("r", 1, Command::HostLost { host: "h2".into() })
        ),
        Response::Done
    );
    assert!(s.fleet.assignments.is_empty());
    assert!(s.fleet.hosts["h2"].lost);
    // Removing the app forgets its decision.
    apply(
        &mut s,
        &log.req("c", 2, Command::AppRemove { name: "web".into() }),
    );
    assert!(s.fleet.decisions.is_empty());
}
