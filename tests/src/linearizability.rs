//! Records a concurrent history of register operations against the control
//! group and checks that it is linearizable, with stateright's
//! `LinearizabilityTester` over a sequential register spec that models
//! Elton's `Put` (answers the previous value), `Get` and `Cas`.
//!
//! Recording: a client calls [`History::invoke`] before it sends an
//! operation and [`History::ok`] when the answer arrives. An operation whose
//! outcome is unknown (timeout, connection lost, leader killed) is passed to
//! [`History::unknown`]: it stays open — it may or may not have taken effect,
//! at any time after its invocation — and the client continues as a new
//! thread of the history, since the tester requires one open operation per
//! thread.
//!
//! Checking: linearizability is local (Herlihy & Wing), so the history is
//! split by key and each key checked on its own; this keeps the search small
//! for tests that spread operations over a few keys.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use stateright::semantics::{ConsistencyTester, LinearizabilityTester, SequentialSpec};

/// One register operation as a client sends it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RegOp {
    Put(String),
    Get,
    Cas {
        expected: Option<String>,
        new: String,
    },
}

/// The answer to a [`RegOp`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RegRet {
    /// `Put` answers the value it replaced.
    Put(Option<String>),
    Get(Option<String>),
    Cas {
        swapped: bool,
        current: Option<String>,
    },
}

/// The sequential specification: one register, absent at first.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct CasRegister(pub Option<String>);

impl SequentialSpec for CasRegister {
    type Op = RegOp;
    type Ret = RegRet;

    fn invoke(&mut self, op: &RegOp) -> RegRet {
        match op {
            RegOp::Put(v) => RegRet::Put(self.0.replace(v.clone())),
            RegOp::Get => RegRet::Get(self.0.clone()),
            RegOp::Cas { expected, new } => {
                if &self.0 == expected {
                    self.0 = Some(new.clone());
                    RegRet::Cas {
                        swapped: true,
                        current: self.0.clone(),
                    }
                } else {
                    RegRet::Cas {
                        swapped: false,
                        current: self.0.clone(),
                    }
                }
            }
        }
    }
}

#[derive(Clone, Debug)]
enum Event {
    Invoke {
        thread: u64,
        key: String,
        op: RegOp,
    },
    Return {
        thread: u64,
        key: String,
        ret: RegRet,
    },
}

/// An operation that was invoked and has not been resolved yet.
#[derive(Debug)]
#[must_use = "resolve with History::ok or History::unknown"]
pub struct Pending {
    thread: u64,
    key: String,
    pub invoked: Instant,
}

/// A client of the history: a sequence of operations, one at a time.
#[derive(Debug)]
pub struct Client {
    thread: u64,
}

/// A thread-safe recorder of invocations and returns, in real-time order.
#[derive(Debug, Default)]
pub struct History {
    events: Mutex<Vec<Event>>,
    next_thread: AtomicU64,
}

/// What [`History::check`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckReport {
    pub keys: usize,
    pub completed: usize,
    /// Operations left open (outcome unknown).
    pub open: usize,
}

impl History {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn client(&self) -> Client {
        Client {
            thread: self.next_thread.fetch_add(1, Ordering::Relaxed),
        }
    }

    fn push(&self, e: Event) {
        // A poisoned lock means a recording thread panicked; the test fails
        // on that panic, the events already recorded are still whole.
        self.events
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(e);
    }

    /// Records that `client` sends `op` on `key`; call just before sending.
    pub fn invoke(&self, client: &Client, key: &str, op: RegOp) -> Pending {
        self.push(Event::Invoke {
            thread: client.thread,
            key: key.to_string(),
            op,
        });
        Pending {
            thread: client.thread,
            key: key.to_string(),
            invoked: Instant::now(),
        }
    }

    /// Records the answer; call just after it arrived.
    pub fn ok(&self, pending: Pending, ret: RegRet) {
        self.push(Event::Return {
            thread: pending.thread,
            key: pending.key,
            ret,
        });
    }

    /// Leaves the operation open and moves `client` to a new thread.
    pub fn unknown(&self, client: &mut Client, pending: Pending) {
        debug_assert_eq!(client.thread, pending.thread);
        client.thread = self.next_thread.fetch_add(1, Ordering::Relaxed);
    }

    /// Checks every key's history. `Err` names the first key whose history
    /// has no linearization (or was recorded inconsistently).
    pub fn check(&self) -> Result<CheckReport, String> {
        let events = self
            .events
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        // The tester's search recurses once per operation; give it room.
        std::thread::Builder::new()
            .name("linearizability".into())
            .stack_size(512 << 20)
            .spawn(move || check_events(&events))
            .map_err(|e| format!("cannot start the checker thread: {e}"))?
            .join()
            .map_err(|_| "the checker panicked".to_string())?
    }
}

fn check_events(events: &[Event]) -> Result<CheckReport, String> {
    let mut testers: BTreeMap<&str, LinearizabilityTester<u64, CasRegister>> = BTreeMap::new();
    let (mut invoked, mut completed) = (0usize, 0usize);
    for e in events {
        match e {
            Event::Invoke { thread, key, op } => {
                invoked += 1;
                testers
                    .entry(key)
                    .or_insert_with(|| LinearizabilityTester::new(CasRegister::default()))
                    .on_invoke(*thread, op.clone())
                    .map_err(|m| format!("key {key:?}: bad recording: {m}"))?;
            }
            Event::Return { thread, key, ret } => {
                completed += 1;
                testers
                    .get_mut(key.as_str())
                    .ok_or_else(|| format!("key {key:?}: a return without an invocation"))?
                    .on_return(*thread, ret.clone())
                    .map_err(|m| format!("key {key:?}: bad recording: {m}"))?;
            }
        }
    }
    for (key, tester) in &testers {
        if tester.serialized_history().is_none() {
            return Err(format!(
                "key {key:?}: the history of {} operations is not linearizable",
                tester.len()
            ));
        }
    }
    Ok(CheckReport {
        keys: testers.len(),
        completed,
        open: invoked - completed,
    })
}

#[cfg(test)]
mod tests;
