//! The control plane's Raft group end to end: three masters (voters) and
//! two slave hosts (learners) of one cluster, real processes with mutual
//! TLS and tokens. Phases share one group and run in order.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::group::Group;
use common::{TOKEN, wait_until};
use elton_proto::control_pb::control_client::ControlClient;
use elton_proto::control_pb::{JoinRequest, SubmitRequest};
use elton_tests::linearizability::{History, RegOp, RegRet};

const CONVERGE: Duration = Duration::from_secs(60);

#[test]
fn control_raft() {
    // m3 is reached through a link the test can cut.
    let mut g = Group::new(3, 2, &[3]);
    phase1_every_member_sees_one_leader_three_voters_two_learners(&g);
    phase2_a_cut_follower_and_a_stopped_learner_catch_up(&mut g);
    phase3_a_full_restart_keeps_state_and_reexecutes_nothing(&mut g);
    phase4_bad_input_changes_nothing(&g);
    phase5_leader_killed_under_load_every_ack_applied_once(&mut g);
    phase6_concurrent_writes_through_followers_each_answered_once(&g);
}

fn phase1_every_member_sees_one_leader_three_voters_two_learners(g: &Group) {
    g.submit(
        1,
        "p1",
        1,
        r#"{"kind":"put","key":"hello","value":"world"}"#,
    );
    let reference = g.converged(1, CONVERGE);
    for i in 1..=3 {
        let s = g.converged(i, CONVERGE);
        assert_eq!(s["leader"], reference["leader"], "m{i}: {s:#}");
        let members = s["members"].as_array().expect("members");
        let count = |role: &str| members.iter().filter(|m| m["role"] == role).count();
        assert_eq!((count("voter"), count("learner")), (3, 2), "m{i}: {s:#}");
        let leaders = members.iter().filter(|m| m["state"] == "leader").count();
        assert_eq!(leaders, 1, "m{i}: {s:#}");
        let applied: Vec<_> = members.iter().map(|m| &m["last_applied"]).collect();
        assert!(applied.windows(2).all(|w| w[0] == w[1]), "m{i}: {s:#}");
        assert!(members.iter().all(|m| m["lag"] == 0), "m{i}: {s:#}");
    }
    // An execution on every member answers with each member's result,
    // tagged by its id, once all have reported.
    let r = g.submit(
        2,
        "p1",
        2,
        r#"{"kind":"execute","targets":{"to":"all"},"action":{"action":"echo","payload":"ping"},"deadline_ms":10000}"#,
    );
    let results = r["response"]["results"].as_object().expect("results");
    assert_eq!(results.len(), 5, "{r}");
    assert!(
        results
            .values()
            .all(|v| v["status"] == "ok" && v["output"] == "ping"),
        "{r}"
    );
    for m in reference["members"].as_array().expect("members") {
        let id = m["raft_id"].to_string();
        assert!(results.contains_key(&id), "{id} missing from {r}");
    }
    assert_eq!(r["response"]["missing"], serde_json::json!([]), "{r}");
    assert_eq!(r["response"]["timed_out"], false, "{r}");
    // The text form names every member too.
    let text = g.ok(2, &["control", "status"]);
    for name in ["m1", "m2", "m3", "slave1", "slave2"] {
        assert!(text.contains(name), "{text}");
    }
}

fn phase2_a_cut_follower_and_a_stopped_learner_catch_up(g: &mut Group) {
    // The cut member is a follower: m1 won the first election and nothing
    // has disturbed it.
    assert_eq!(g.leader(1).as_deref(), Some("m1"));
    let link = g.links[2].as_ref().expect("m3 is linked");
    link.cut();
    let before = Group::member(&g.status(3).expect("m3 answers"), "m3")["last_log_index"]
        .as_u64()
        .expect("index");
    // The majority keeps committing, well past a snapshot and purge.
    for seq in 1..=60 {
        g.submit(
            1,
            "p2",
            seq,
            &format!(r#"{{"kind":"put","key":"k{seq}","value":"v{seq}"}}"#),
        );
    }
    let s = g.status(2).expect("m2 answers");
    assert_eq!(Group::member(&s, "m3")["state"], "unreachable", "{s:#}");
    // A leader keeps the entries a follower's replication still needs; a
    // follower purges behind its own snapshots. So let a follower that has
    // purged them lead: restart the leader until one does.
    let mut purged_leader = false;
    for _ in 0..5 {
        wait_until("a leader", Duration::from_secs(20), || {
            g.leader(2).is_some_and(|l| l != "m3")
        });
        let s = g.status(2).expect("m2 answers");
        let leader = s["leader"].as_str().expect("leader").to_string();
        if Group::member(&s, &leader)["purged"]
            .as_u64()
            .expect("purged")
            > before
        {
            purged_leader = true;
            break;
        }
        let i: usize = leader[1..].parse().expect("a master leads");
        g.masters[i - 1].kill9();
        g.masters[i - 1].restart();
    }
    assert!(
        purged_leader,
        "no leader purged the entries m3 misses (so a snapshot would not be needed)"
    );
    link.restore();
    g.converged(1, CONVERGE);

    // A learner that was down catches up. While it is down, an execution
    // for it answers at its deadline and lists it as missing.
    g.slaves[0].kill9();
    let s = g.converged_without("slave1", CONVERGE);
    let slave1 = Group::member(&s, "slave1")["raft_id"].as_u64().expect("id");
    let r = g.submit(
        1,
        "p2",
        100,
        &format!(
            r#"{{"kind":"execute","targets":{{"to":"nodes","ids":[{slave1}]}},"action":{{"action":"echo","payload":"late"}},"deadline_ms":1500}}"#
        ),
    );
    assert_eq!(r["response"]["missing"], serde_json::json!([slave1]), "{r}");
    assert_eq!(r["response"]["timed_out"], true, "{r}");
    let requests = |s: &serde_json::Value| {
        Group::member(s, "m1")["applied_requests"]
            .as_u64()
            .expect("applied")
    };
    let after_exec = requests(&g.status(1).expect("m1 answers"));
    for seq in 61..=80 {
        g.submit(
            2,
            "p2",
            seq,
            &format!(r#"{{"kind":"put","key":"k{seq}","value":"v{seq}"}}"#),
        );
    }
    let port = g.slaves[0].port;
    g.slaves[0].restart();
    assert_eq!(g.slaves[0].port, port);
    // Back, it runs the execution it owes and reports it (after the
    // deadline: recorded, too late for that answer).
    wait_until("slave1's late report", CONVERGE, || {
        g.status(1)
            .is_some_and(|s| requests(&s) == after_exec + 20 + 1)
    });
    g.converged(1, CONVERGE);
    let got = g.submit(3, "p2", 81, r#"{"kind":"get","key":"k80"}"#);
    assert_eq!(got["response"]["value"], "v80", "{got}");
}

fn phase3_a_full_restart_keeps_state_and_reexecutes_nothing(g: &mut Group) {
    let before = g.converged(1, CONVERGE);
    let applied = Group::member(&before, "m1")["applied_requests"].clone();
    let digest = Group::member(&before, "m1")["state_digest"].clone();
    for p in g.masters.iter_mut().chain(g.slaves.iter_mut()) {
        p.kill9();
    }
    for p in g.masters.iter_mut().chain(g.slaves.iter_mut()) {
        p.restart();
    }
    // Every member agrees, and none applied a request again on replay. (The
    // last entries may be applied only once a new leader commits again:
    // the committed index is saved lazily, so wait for that.)
    let target = applied.as_u64().expect("applied");
    let mut after = g.converged(2, CONVERGE);
    let deadline = Instant::now() + CONVERGE;
    loop {
        let counts: Vec<u64> = after["members"]
            .as_array()
            .expect("members")
            .iter()
            .map(|m| m["applied_requests"].as_u64().expect("applied"))
            .collect();
        assert!(
            counts.iter().all(|c| *c <= target),
            "re-executed: {after:#}"
        );
        if counts.iter().all(|c| *c == target) {
            break;
        }
        assert!(Instant::now() < deadline, "requests lost: {after:#}");
        std::thread::sleep(Duration::from_millis(200));
        after = g.converged(2, CONVERGE);
    }
    // The same state machine as before, on every member.
    for m in after["members"].as_array().expect("members") {
        assert_eq!(m["state_digest"], digest, "{after:#}");
    }
    // A retry of an applied request answers as the first time and changes
    // nothing.
    let again = g.submit(1, "p2", 60, r#"{"kind":"put","key":"k60","value":"other"}"#);
    assert_eq!(
        again["response"]["value"],
        serde_json::Value::Null,
        "{again}"
    );
    let s = g.converged(1, CONVERGE);
    assert_eq!(
        Group::member(&s, "slave2")["applied_requests"],
        applied,
        "{s:#}"
    );
    // The registers written before the restart are intact.
    for (seq, key, value) in [(1, "hello", "world"), (2, "k1", "v1"), (3, "k60", "v60")] {
        let got = g.submit(3, "p3", seq, &format!(r#"{{"kind":"get","key":"{key}"}}"#));
        assert_eq!(got["response"]["value"], value, "{got}");
    }
}

fn phase4_bad_input_changes_nothing(g: &Group) {
    let before = g.converged(1, CONVERGE);
    let unknown_target = r#"{"kind":"execute","targets":{"to":"nodes","ids":[12345]},"action":{"action":"echo","payload":"x"},"deadline_ms":1000}"#;
    let e = g.fails(
        2,
        &[
            "control",
            "submit",
            unknown_target,
            "--client",
            "p4",
            "--seq",
            "1",
        ],
    );
    assert!(e.contains("not in the control group"), "{e}");
    let e = g.fails(
        1,
        &[
            "control",
            "submit",
            r#"{"kind":"execute","targets":{"to":"all"},"action":{"action":"echo","payload":"x"},"deadline_ms":86400000}"#,
        ],
    );
    assert!(e.contains("above the limit"), "{e}");
    let e = g.fails(1, &["control", "submit", "--raw", "not json"]);
    assert!(e.contains("bad command"), "{e}");
    let e = g.fails(
        3,
        &[
            "control",
            "submit",
            "--raw",
            r#"{"v":1,"id":{"client":"p4","seq":2},"command":{"kind":"launch"}}"#,
        ],
    );
    assert!(e.contains("bad command") && e.contains("launch"), "{e}");
    let e = g.fails(
        1,
        &[
            "control",
            "submit",
            "--raw",
            r#"{"v":7,"id":{"client":"p4","seq":3},"command":{"kind":"noop"}}"#,
        ],
    );
    assert!(e.contains("version 7"), "{e}");
    for i in 1..=3 {
        let e = g.fails(i, &["control", "init"]);
        assert!(e.contains("already"), "{e}");
    }
    let e = g.fails(1, &["control", "leave", "nobody"]);
    assert!(e.contains("not a member"), "{e}");
    let e = g.fails(
        2,
        &[
            "control",
            "join",
            "--node",
            "m9",
            "--addr",
            "http://127.0.0.1:1",
        ],
    );
    assert!(e.contains("https"), "{e}");
    let e = g.fails(
        1,
        &[
            "control",
            "join",
            "--node",
            "s9",
            "--addr",
            "https://127.0.0.1:1",
            "--role",
            "slave",
            "--learner",
            "--token",
            "not-a-token",
        ],
    );
    assert!(e.to_lowercase().contains("token"), "{e}");
    // A slave may only join as itself.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let denied = rt.block_on(async {
        let creds = elton_trust::TlsDir::new(g.dir.path().join("slave1").join("tls"))
            .load_node()
            .expect("slave1 credentials");
        let ca = std::fs::read_to_string(g.ca()).expect("ca");
        let channel = tonic::transport::Endpoint::from_shared(g.master_url(1))
            .expect("url")
            .tls_config(elton_trust::tls::node_client(&creds, &ca))
            .expect("tls")
            .connect()
            .await
            .expect("connect");
        ControlClient::new(channel)
            .join(JoinRequest {
                node: "slave2".into(),
                addr: "https://127.0.0.1:2".into(),
                voter: false,
                role: "slave".into(),
            })
            .await
            .expect_err("slave1 speaking for slave2")
    });
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
    // An address where another member answers: its certificate names that
    // member, so the join is refused before the membership changes.
    let e = g.fails(
        1,
        &[
            "control",
            "join",
            "--node",
            "m9",
            "--addr",
            &g.control_url(2),
        ],
    );
    assert!(e.contains("names master m2, not master m9"), "{e}");
    let slave1_addr = Group::member(&before, "slave1")["addr"]
        .as_str()
        .expect("slave1's address")
        .to_string();
    let e = g.fails(
        2,
        &[
            "control",
            "join",
            "--node",
            "slave9",
            "--addr",
            &slave1_addr,
            "--role",
            "slave",
        ],
    );
    assert!(e.contains("names slave slave1, not slave slave9"), "{e}");
    let after = g.converged(1, CONVERGE);
    let members = |s: &serde_json::Value| s["members"].as_array().map(Vec::len);
    assert_eq!(members(&after), members(&before), "{after:#}");
    for name in ["m1", "slave1"] {
        let (b, a) = (Group::member(&before, name), Group::member(&after, name));
        assert_eq!(a["state_digest"], b["state_digest"], "{name}: {after:#}");
        assert_eq!(
            a["applied_requests"], b["applied_requests"],
            "{name}: {after:#}"
        );
    }
}

type Client = ControlClient<
    tonic::service::interceptor::InterceptedService<
        tonic::transport::Channel,
        elton_trust::BearerAuth,
    >,
>;

fn client(url: &str, ca: &str) -> Client {
    let channel = tonic::transport::Endpoint::from_shared(url.to_string())
        .expect("url")
        .tls_config(elton_trust::tls::anonymous_client(ca))
        .expect("tls")
        .connect_timeout(Duration::from_secs(1))
        .connect_lazy();
    ControlClient::with_interceptor(
        channel,
        elton_trust::BearerAuth::new(Some(TOKEN)).expect("token"),
    )
}

/// Eight clients (1,000 operations in all): enough concurrent writes that
/// the leader batches them, so the linearizability check covers batched
/// entries.
const CLIENTS: u64 = 8;
const PER_CLIENT: u64 = 125;

/// One client: `PER_CLIENT` register operations on four shared keys, each
/// retried with the same request id (on the next master) until it is
/// answered; an operation still unanswered after 30 s is left open.
async fn run_client(
    n: u64,
    urls: Vec<String>,
    ca: String,
    history: Arc<History>,
    acked: Arc<std::sync::atomic::AtomicU64>,
) {
    let clients: Vec<Client> = urls.iter().map(|u| client(u, &ca)).collect();
    let mut me = history.client();
    let mut target = n as usize;
    for seq in 1..=PER_CLIENT {
        let key = format!("lin-{}", seq % 4);
        let value = format!("c{n}-{seq}");
        let (op, command) = match seq % 3 {
            0 => (RegOp::Get, serde_json::json!({"kind": "get", "key": key})),
            1 => (
                RegOp::Put(value.clone()),
                serde_json::json!({"kind": "put", "key": key, "value": value}),
            ),
            _ => {
                let expected = format!("c{n}-{}", seq - 1);
                (
                    RegOp::Cas {
                        expected: Some(expected.clone()),
                        new: value.clone(),
                    },
                    serde_json::json!({"kind": "cas", "key": key, "expected": expected, "new": value}),
                )
            }
        };
        let request = serde_json::json!({
            "v": 1,
            "id": {"client": format!("p5-{n}"), "seq": seq},
            "command": command,
        });
        let bytes = serde_json::to_vec(&request).expect("json");
        let pending = history.invoke(&me, &key, op);
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut answer = None;
        while Instant::now() < deadline {
            let mut req = tonic::Request::new(SubmitRequest {
                command: bytes.clone(),
            });
            req.set_timeout(Duration::from_secs(5));
            match clients[target % clients.len()].clone().submit(req).await {
                Ok(r) => {
                    answer = Some(r.into_inner());
                    break;
                }
                Err(_) => {
                    target += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        match answer {
            Some(r) => {
                let v: serde_json::Value = serde_json::from_slice(&r.response).expect("response");
                let value = |k: &str| v[k].as_str().map(str::to_string);
                let ret = match v["kind"].as_str() {
                    Some("cas") => RegRet::Cas {
                        swapped: v["swapped"].as_bool().expect("swapped"),
                        current: value("current"),
                    },
                    Some("value") if seq % 3 == 0 => RegRet::Get(value("value")),
                    Some("value") => RegRet::Put(value("value")),
                    other => panic!("unexpected response {other:?}: {v}"),
                };
                history.ok(pending, ret);
                acked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            None => history.unknown(&mut me, pending),
        }
    }
}

fn phase5_leader_killed_under_load_every_ack_applied_once(g: &mut Group) {
    let before = g.converged(1, CONVERGE);
    let applied_before = Group::member(&before, "m1")["applied_requests"]
        .as_u64()
        .expect("applied");
    let index_before = Group::member(&before, "m1")["last_applied"]
        .as_u64()
        .expect("last applied");
    let history = Arc::new(History::new());
    let acked = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let urls: Vec<String> = (1..=3).map(|i| g.master_url(i)).collect();
    let ca = std::fs::read_to_string(g.ca()).expect("ca");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|n| {
            rt.spawn(run_client(
                n,
                urls.clone(),
                ca.clone(),
                history.clone(),
                acked.clone(),
            ))
        })
        .collect();
    wait_until("a quarter of the load", Duration::from_secs(120), || {
        acked.load(std::sync::atomic::Ordering::Relaxed) >= CLIENTS * PER_CLIENT / 4
    });
    let leader = g.leader(1).or_else(|| g.leader(2)).expect("a leader");
    let i: usize = leader
        .strip_prefix('m')
        .and_then(|n| n.parse().ok())
        .expect("a master leads");
    g.masters[i - 1].kill9();
    std::thread::sleep(Duration::from_secs(1));
    g.masters[i - 1].restart();
    for t in tasks {
        rt.block_on(t).expect("client task");
    }
    let acked = acked.load(std::sync::atomic::Ordering::Relaxed);
    let after = g.converged(1, CONVERGE);
    let members = after["members"].as_array().expect("members");
    let digest = &members[0]["state_digest"];
    for m in members {
        assert_eq!(&m["state_digest"], digest, "{after:#}");
        let applied = m["applied_requests"].as_u64().expect("applied") - applied_before;
        // Every acknowledged request applied exactly once; an unanswered
        // one at most once.
        assert!(
            applied >= acked && applied <= CLIENTS * PER_CLIENT,
            "{} applied {applied} requests, {acked} acknowledged: {after:#}",
            m["name"]
        );
    }
    assert!(
        acked >= CLIENTS * PER_CLIENT * 9 / 10,
        "only {acked} acknowledged"
    );
    // Batching was on: the requests took fewer log entries than there were
    // requests (entries also hold the new leader's blank one).
    let m1 = Group::member(&after, "m1");
    let entries = m1["last_applied"].as_u64().expect("last applied") - index_before;
    let applied = m1["applied_requests"].as_u64().expect("applied") - applied_before;
    assert!(
        entries < applied,
        "{applied} requests took {entries} log entries: nothing was batched"
    );
    let report = history.check().expect("the history is linearizable");
    eprintln!("phase 5: {acked} acknowledged, history {report:?}");
}

/// Many clients at once through the followers, whose forwarders then send
/// the leader batches: every client gets its own answer, and every write
/// is applied once, as if sent alone.
fn phase6_concurrent_writes_through_followers_each_answered_once(g: &Group) {
    const WRITERS: u64 = 32;
    const WRITES: u64 = 10;
    let leader = g.leader(1).expect("a leader");
    let followers: Vec<String> = (1..=3)
        .filter(|i| format!("m{i}") != leader)
        .map(|i| g.master_url(i))
        .collect();
    let before = g.converged(1, CONVERGE);
    let applied_before = Group::member(&before, "m1")["applied_requests"]
        .as_u64()
        .expect("applied");
    let ca = std::fs::read_to_string(g.ca()).expect("ca");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    // One connection per follower, shared by its writers (each its own
    // client id), as an application server's clients would.
    let conns: Vec<Client> =
        rt.block_on(async { followers.iter().map(|u| client(u, &ca)).collect() });
    let tasks: Vec<_> = (0..WRITERS)
        .map(|n| {
            let c = conns[n as usize % conns.len()].clone();
            rt.spawn(async move {
                for seq in 1..=WRITES {
                    let request = serde_json::json!({
                        "v": 1,
                        "id": {"client": format!("p6-{n}"), "seq": seq},
                        "command": {"kind": "put", "key": format!("p6-{n}"), "value": format!("{seq}")},
                    });
                    let mut req = tonic::Request::new(SubmitRequest {
                        command: serde_json::to_vec(&request).expect("json"),
                    });
                    req.set_timeout(Duration::from_secs(60));
                    let r = c.clone().submit(req).await.expect("a write through a follower");
                    let v: serde_json::Value =
                        serde_json::from_slice(&r.into_inner().response).expect("response");
                    // Each answer is this client's own: the previous value
                    // of its own key.
                    let previous = (seq > 1).then(|| format!("{}", seq - 1));
                    assert_eq!(v["kind"], "value", "{v}");
                    assert_eq!(v["value"].as_str(), previous.as_deref(), "p6-{n}: {v}");
                }
            })
        })
        .collect();
    for t in tasks {
        rt.block_on(t).expect("writer");
    }
    let after = g.converged(1, CONVERGE);
    for m in after["members"].as_array().expect("members") {
        let applied = m["applied_requests"].as_u64().expect("applied") - applied_before;
        assert_eq!(applied, WRITERS * WRITES, "{}: {after:#}", m["name"]);
    }
    for n in [0, WRITERS - 1] {
        let r = g.submit(
            1,
            "p6-check",
            n + 1,
            &format!(r#"{{"kind":"get","key":"p6-{n}"}}"#),
        );
        assert_eq!(r["response"]["value"], WRITES.to_string(), "{r}");
    }
}
