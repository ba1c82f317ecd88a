use super::*;

fn s(v: &str) -> Option<String> {
    Some(v.to_string())
}

fn put(v: &str) -> RegOp {
    RegOp::Put(v.into())
}

#[test]
fn a_sequential_history_is_linearizable() {
    let h = History::new();
    let c = h.client();
    let p = h.invoke(&c, "k", put("a"));
    h.ok(p, RegRet::Put(None));
    let p = h.invoke(&c, "k", RegOp::Get);
    h.ok(p, RegRet::Get(s("a")));
    let p = h.invoke(
        &c,
        "k",
        RegOp::Cas {
            expected: s("a"),
            new: "b".into(),
        },
    );
    h.ok(
        p,
        RegRet::Cas {
            swapped: true,
            current: s("b"),
        },
    );
    let p = h.invoke(&c, "k", put("c"));
    h.ok(p, RegRet::Put(s("b")));
    assert_eq!(
        h.check(),
        Ok(CheckReport {
            keys: 1,
            completed: 4,
            open: 0
        })
    );
}

#[test]
fn overlapping_operations_may_take_effect_in_either_order() {
    for read in [None, s("x")] {
        let h = History::new();
        let (c1, c2) = (h.client(), h.client());
        let w = h.invoke(&c1, "k", put("x"));
        let r = h.invoke(&c2, "k", RegOp::Get);
        h.ok(r, RegRet::Get(read.clone()));
        h.ok(w, RegRet::Put(None));
        assert!(h.check().is_ok(), "read {read:?}");
    }
}

#[test]
fn a_stale_read_after_an_acknowledged_write_is_not() {
    let h = History::new();
    let (c1, c2) = (h.client(), h.client());
    let w = h.invoke(&c1, "k", put("x"));
    h.ok(w, RegRet::Put(None));
    let r = h.invoke(&c2, "k", RegOp::Get);
    h.ok(r, RegRet::Get(None));
    let e = h.check().expect_err("stale read");
    assert!(e.contains("\"k\""), "{e}");
}

#[test]
fn a_lost_acknowledged_write_is_not() {
    let h = History::new();
    let (c1, c2) = (h.client(), h.client());
    for (v, prev) in [("x", None), ("y", s("x"))] {
        let w = h.invoke(&c1, "k", put(v));
        h.ok(w, RegRet::Put(prev));
    }
    let r = h.invoke(&c2, "k", RegOp::Get);
    h.ok(r, RegRet::Get(s("x")));
    assert!(h.check().is_err());
}

#[test]
fn a_write_applied_twice_is_not() {
    // c1's put("1") applied again after c2's put("2") would leave "1": the
    // duplicate a lost dedup table would cause.
    let h = History::new();
    let (c1, c2, c3) = (h.client(), h.client(), h.client());
    let w = h.invoke(&c1, "k", put("1"));
    h.ok(w, RegRet::Put(None));
    let w = h.invoke(&c2, "k", put("2"));
    h.ok(w, RegRet::Put(s("1")));
    let r = h.invoke(&c3, "k", RegOp::Get);
    h.ok(r, RegRet::Get(s("1")));
    assert!(h.check().is_err());
}

#[test]
fn a_wrong_previous_value_is_not() {
    let h = History::new();
    let c = h.client();
    let w = h.invoke(&c, "k", put("1"));
    h.ok(w, RegRet::Put(s("ghost")));
    assert!(h.check().is_err());
}

#[test]
fn an_open_operation_may_or_may_not_have_taken_effect() {
    for seen in [None, s("x")] {
        let h = History::new();
        let (mut c1, c2) = (h.client(), h.client());
        let w = h.invoke(&c1, "k", put("x"));
        h.unknown(&mut c1, w);
        let r = h.invoke(&c2, "k", RegOp::Get);
        h.ok(r, RegRet::Get(seen.clone()));
        // The client goes on as a new thread.
        let r = h.invoke(&c1, "k", RegOp::Get);
        h.ok(r, RegRet::Get(seen.clone()));
        let report = h.check().unwrap_or_else(|e| panic!("{seen:?}: {e}"));
        assert_eq!(report.open, 1);
        assert_eq!(report.completed, 2);
    }
}

#[test]
fn an_open_write_cannot_appear_then_vanish() {
    let h = History::new();
    let (mut c1, c2) = (h.client(), h.client());
    let w = h.invoke(&c1, "k", put("x"));
    h.unknown(&mut c1, w);
    let r = h.invoke(&c2, "k", RegOp::Get);
    h.ok(r, RegRet::Get(s("x")));
    let r = h.invoke(&c2, "k", RegOp::Get);
    h.ok(r, RegRet::Get(None));
    assert!(h.check().is_err());
}

#[test]
fn an_open_write_cannot_take_effect_before_its_invocation() {
    let h = History::new();
    let (mut c1, c2) = (h.client(), h.client());
    let r = h.invoke(&c2, "k", RegOp::Get);
    h.ok(r, RegRet::Get(s("x")));
    let w = h.invoke(&c1, "k", put("x"));
    h.unknown(&mut c1, w);
    assert!(h.check().is_err());
}

#[test]
fn keys_are_checked_separately() {
    let h = History::new();
    let (c1, c2) = (h.client(), h.client());
    let w = h.invoke(&c1, "good", put("1"));
    h.ok(w, RegRet::Put(None));
    let w = h.invoke(&c1, "bad", put("1"));
    h.ok(w, RegRet::Put(None));
    let r = h.invoke(&c2, "good", RegOp::Get);
    h.ok(r, RegRet::Get(s("1")));
    let r = h.invoke(&c2, "bad", RegOp::Get);
    h.ok(r, RegRet::Get(s("2")));
    let e = h.check().expect_err("bad key");
    assert!(e.contains("\"bad\""), "{e}");
}

/// A deterministic simulation: 4 clients, overlapping operations that take
/// effect at a random point inside their interval, a few left open. The
/// checker must accept it quickly at the size of the e2e test.
#[test]
fn a_large_simulated_history_checks_quickly() {
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let h = History::new();
    let keys = ["a", "b", "c", "d"];
    let mut truth: BTreeMap<&str, CasRegister> = BTreeMap::new();
    /// An operation in flight: invoked, on a key, whether it took effect.
    type InFlight<'k> = Option<(Pending, RegOp, &'k str, bool)>;
    let mut clients: Vec<(Client, InFlight<'_>)> = (0..4).map(|_| (h.client(), None)).collect();
    let mut results: Vec<Option<RegRet>> = vec![None; 4];
    let mut done = 0;
    let mut counter = 0;
    while done < 1000 {
        let i = next(4) as usize;
        let (client, inflight) = &mut clients[i];
        match inflight.take() {
            None => {
                let key = keys[next(4) as usize];
                counter += 1;
                let op = match next(3) {
                    0 => put(&format!("v{counter}")),
                    1 => RegOp::Get,
                    _ => RegOp::Cas {
                        expected: truth.get(key).and_then(|r| r.0.clone()),
                        new: format!("v{counter}"),
                    },
                };
                let p = h.invoke(client, key, op.clone());
                *inflight = Some((p, op, key, false));
            }
            Some((p, op, key, false)) => {
                // Takes effect now, answers later.
                results[i] = Some(truth.entry(key).or_default().invoke(&op));
                *inflight = Some((p, op, key, true));
            }
            Some((p, _, _, true)) => {
                let ret = results[i].take().expect("effect recorded");
                if next(50) == 0 {
                    h.unknown(client, p);
                } else {
                    h.ok(p, ret);
                }
                done += 1;
            }
        }
    }
    let started = Instant::now();
    let report = h.check().expect("a simulated history is linearizable");
    assert_eq!(report.keys, 4);
    assert!(report.open > 0);
    assert!(
        started.elapsed().as_secs() < 20,
        "checking took {:?}",
        started.elapsed()
    );
}

/// The control state machine's batch apply, checked: rounds of batches of
/// concurrent register operations from several clients go through
/// `elton_control::state::apply` as the leader's batcher forms them (every
/// operation of a batch is invoked before the entry and answered after
/// it), and the recorded history must be linearizable. A batch apply that
/// answered a request with another one's response, or applied out of
/// order, fails it.
#[test]
fn batched_applies_of_the_state_machine_are_linearizable() {
    let report = record_batches(false).expect("batched applies are linearizable");
    assert!(report.completed > 100, "{report:?}");
    // The check can fail: the same history with each batch's answers
    // handed out in reverse (a batcher mixing up its waiters) is not.
    assert!(record_batches(true).is_err());
}

/// Runs the batches; `mangle` reverses each batch's responses before they
/// are recorded.
fn record_batches(mangle: bool) -> Result<CheckReport, String> {
    use elton_control::state::{State, apply};
    use elton_control::types::Entry;
    use elton_control::{Command, Request, RequestId, Response};
    use openraft::{CommittedLeaderId, EntryPayload, LogId};

    const CLIENTS: u64 = 6;
    let h = History::new();
    let clients: Vec<Client> = (0..CLIENTS).map(|_| h.client()).collect();
    let mut state = State::default();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for index in 1..=60u64 {
        // A random subset of the clients, each with one operation.
        let mut ops = Vec::new();
        for (c, client) in clients.iter().enumerate() {
            if next() % 3 == 0 {
                continue;
            }
            let key = format!("k{}", next() % 2);
            let value = format!("c{c}-{index}");
            let (op, command) = match next() % 3 {
                0 => (RegOp::Get, Command::Get { key: key.clone() }),
                1 => (
                    put(&value),
                    Command::Put {
                        key: key.clone(),
                        value: value.clone(),
                    },
                ),
                _ => {
                    let expected =
                        (next() % 2 == 0).then(|| format!("c{}-{}", next() % CLIENTS, index - 1));
                    (
                        RegOp::Cas {
                            expected: expected.clone(),
                            new: value.clone(),
                        },
                        Command::Cas {
                            key: key.clone(),
                            expected,
                            new: value.clone(),
                        },
                    )
                }
            };
            let pending = h.invoke(client, &key, op.clone());
            let request = Request::new(
                RequestId {
                    client: format!("c{c}"),
                    seq: index,
                },
                command,
            );
            ops.push((pending, op, request));
        }
        if ops.is_empty() {
            continue;
        }
        let requests = ops.iter().map(|(_, _, r)| r.clone()).collect();
        let entry = Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Request::new(
                RequestId {
                    client: "batch:m1".into(),
                    seq: index,
                },
                Command::Batch { requests },
            )),
        };
        let Response::Batch { mut responses } = apply(&mut state, &entry) else {
            panic!("a batch answers with a batch");
        };
        if mangle {
            responses.reverse();
        }
        assert_eq!(responses.len(), ops.len());
        for ((pending, op, _), response) in ops.into_iter().zip(responses) {
            let ret = match (op, response) {
                (RegOp::Get, Response::Value { value }) => RegRet::Get(value),
                (RegOp::Put(_), Response::Value { value }) => RegRet::Put(value),
                (RegOp::Cas { .. }, Response::Cas { swapped, current }) => {
                    RegRet::Cas { swapped, current }
                }
                (RegOp::Cas { .. }, _) => RegRet::Cas {
                    swapped: false,
                    current: None,
                },
                (RegOp::Get, _) => RegRet::Get(Some("mismatched answer".into())),
                (RegOp::Put(_), _) => RegRet::Put(Some("mismatched answer".into())),
            };
            h.ok(pending, ret);
        }
    }
    h.check()
}
