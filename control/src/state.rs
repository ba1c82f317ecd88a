//! The replicated state and the pure function that applies one log entry to
//! it. Persistence (`store::state_machine`) wraps this: it applies entries
//! here, then writes the rows [`State::take_changes`] names.

use std::collections::{BTreeMap, BTreeSet};

use openraft::EntryPayload;
use serde::{Deserialize, Serialize};

use crate::apps::fleet::Fleet;
use crate::apps::{self, App};
use crate::command::{Command, NodeResult, Request, Response};
use crate::drcond::{Limit, LimitSpec};
use crate::execution::{self, Execution};
use crate::types::{Entry, LogId, NodeId, StoredMembership};

/// Responses a client may leave unacknowledged before the oldest are
/// forgotten (a client that never sets `acked_below` must not grow the state
/// without bound). A retry of a forgotten request is rejected, never
/// re-applied.
pub const MAX_SESSION_RESPONSES: usize = 1024;

/// Executions kept for collecting results; the oldest go first.
pub const MAX_EXECUTIONS: usize = 4096;

/// One client's exactly-once bookkeeping.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// Requests with a lower `seq` were answered and acknowledged (or
    /// forgotten); a retry of one is rejected without effect.
    pub floor: u64,
    /// First responses of the requests at or above `floor`, by `seq`.
    pub responses: BTreeMap<u64, Response>,
}

/// Rows changed since the last [`State::take_changes`], for persistence.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    pub kv: BTreeSet<String>,
    /// Sessions whose floor changed.
    pub sessions: BTreeSet<String>,
    /// Dedup rows added or dropped.
    pub responses: BTreeSet<(String, u64)>,
    /// Of those, the rows added since the changes were last taken: not in
    /// the file, so dropping one again needs no write at all. (A client's
    /// answered request is usually acknowledged, and its row dropped,
    /// within a few writes; most rows never reach the file.)
    pub new_responses: BTreeSet<(String, u64)>,
    pub executions: BTreeSet<u64>,
    /// Limits set or released.
    pub limits: BTreeSet<u64>,
    /// Apps created, changed or removed.
    pub apps: BTreeSet<String>,
    /// The FastContainer fleet (registry, assignments) changed.
    pub fleet: bool,
}

impl Changes {
    fn response_added(&mut self, client: &str, seq: u64) {
        let row = (client.to_string(), seq);
        self.responses.insert(row.clone());
        self.new_responses.insert(row);
    }

    fn response_dropped(&mut self, client: &str, seq: u64) {
        let row = (client.to_string(), seq);
        if self.new_responses.remove(&row) {
            self.responses.remove(&row);
        } else {
            self.responses.insert(row);
        }
    }

    fn merge(&mut self, other: Changes) {
        self.kv.extend(other.kv);
        self.sessions.extend(other.sessions);
        self.responses.extend(other.responses);
        self.new_responses.extend(other.new_responses);
        self.executions.extend(other.executions);
        self.limits.extend(other.limits);
        self.apps.extend(other.apps);
        self.fleet |= other.fleet;
    }
}

/// Everything the group agreed on, as of `last_applied`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership,
    /// The register commands' keys.
    pub kv: BTreeMap<String, String>,
    pub sessions: BTreeMap<String, Session>,
    pub executions: BTreeMap<u64, Execution>,
    /// drcond's limits in force, by id. Absent in snapshots of builds
    /// before drcond (read as none).
    #[serde(default)]
    pub limits: BTreeMap<u64, Limit>,
    /// FastContainer's configuration DB, by app name. Absent in snapshots
    /// of builds before FastContainer (read as none).
    #[serde(default)]
    pub apps: BTreeMap<String, App>,
    /// FastContainer's instance registry and assignments. Absent in
    /// snapshots of builds before it (read as empty).
    #[serde(default)]
    pub fleet: Fleet,
    /// Client requests applied with effect (not counting retries answered
    /// from the dedup table); lets tests check exactly-once application.
    pub applied_requests: u64,
    #[serde(skip)]
    changes: Changes,
    #[serde(skip)]
    epochs: Epochs,
}

/// How many times the rows that hosts act on (drcond's limits, executions)
/// changed in this process, so that a host's loops wake when there is
/// something for them, not on every applied write. Local, not agreed: not
/// in snapshots or digests, and counted from zero at start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Epochs {
    pub limits: u64,
    pub executions: u64,
}

impl State {
    /// The rows changed since the last call, leaving none.
    pub fn take_changes(&mut self) -> Changes {
        std::mem::take(&mut self.changes)
    }

    /// Puts back changes taken by [`State::take_changes`] that could not be
    /// written, so that the next write covers them.
    pub fn restore_changes(&mut self, taken: Changes) {
        self.changes.merge(taken);
    }

    pub fn epochs(&self) -> Epochs {
        self.epochs
    }

    /// Carries the epochs of the state this one replaces forward, one
    /// step further: after a snapshot install, anything may have changed.
    pub fn follow_epochs(&mut self, replaced: Epochs) {
        self.epochs = Epochs {
            limits: replaced.limits + 1,
            executions: replaced.executions + 1,
        };
    }

    fn limit_changed(&mut self, id: u64) {
        self.changes.limits.insert(id);
        self.epochs.limits += 1;
    }

    fn execution_changed(&mut self, exec: u64) {
        self.changes.executions.insert(exec);
        self.epochs.executions += 1;
    }

    /// The first response recorded for a request, if it is still kept.
    pub fn response(&self, client: &str, seq: u64) -> Option<&Response> {
        self.sessions.get(client)?.responses.get(&seq)
    }

    /// A hash of the agreed content (everything but `last_applied`), equal
    /// on two members that applied the same log prefix.
    pub fn digest(&self) -> String {
        #[derive(Serialize)]
        struct Content<'a> {
            membership: &'a StoredMembership,
            kv: &'a BTreeMap<String, String>,
            sessions: &'a BTreeMap<String, Session>,
            executions: &'a BTreeMap<u64, Execution>,
            applied_requests: u64,
            // Skipped while empty, so a group that never set a limit keeps
            // the digest of builds before drcond.
            #[serde(skip_serializing_if = "BTreeMap::is_empty")]
            limits: &'a BTreeMap<u64, Limit>,
            // Likewise for builds before FastContainer.
            #[serde(skip_serializing_if = "BTreeMap::is_empty")]
            apps: &'a BTreeMap<String, App>,
            #[serde(skip_serializing_if = "Fleet::is_empty")]
            fleet: &'a Fleet,
        }
        let bytes = serde_json::to_vec(&Content {
            membership: &self.membership,
            kv: &self.kv,
            sessions: &self.sessions,
            executions: &self.executions,
            applied_requests: self.applied_requests,
            limits: &self.limits,
            apps: &self.apps,
            fleet: &self.fleet,
        })
        .unwrap_or_default();
        blake3::hash(&bytes).to_hex().to_string()
    }
}

/// Applies one committed entry. Deterministic: the same entries in the same
/// order give every member the same state and responses.
pub fn apply(state: &mut State, entry: &Entry) -> Response {
    state.last_applied = Some(entry.log_id);
    match &entry.payload {
        EntryPayload::Blank => Response::Done,
        EntryPayload::Membership(m) => {
            state.membership = StoredMembership::new(Some(entry.log_id), m.clone());
            Response::Done
        }
        EntryPayload::Normal(request) => apply_request(state, entry.log_id.index, request),
    }
}

fn apply_request(state: &mut State, index: u64, request: &Request) -> Response {
    if let Command::Batch { requests } = &request.command {
        // The envelope's own id names no client request: only the inner
        // ones are recorded for exactly-once.
        let responses = requests
            .iter()
            .map(|r| match crate::batch::batchable(&r.command) {
                true => apply_request(state, index, r),
                false => Response::Rejected {
                    reason: format!(
                        "request {} cannot share a log entry with other commands",
                        r.id
                    ),
                },
            })
            .collect();
        return Response::Batch { responses };
    }
    let client = &request.id.client;
    let seq = request.id.seq;
    let session = state.sessions.get(client);
    if let Some(session) = session {
        if let Some(first) = session.responses.get(&seq) {
            return first.clone();
        }
        if seq < session.floor {
            return Response::Rejected {
                reason: format!(
                    "request {} is older than its client's acknowledged requests; it was applied \
                     or abandoned before and is not applied again",
                    request.id
                ),
            };
        }
    }
    let response = apply_command(state, index, &request.command);
    state.applied_requests += 1;
    let session = state.sessions.entry(client.clone()).or_default();
    session.responses.insert(seq, response.clone());
    state.changes.response_added(client, seq);
    // Forget what the client acknowledged, then the oldest beyond the cap.
    let mut floor = session.floor.max(request.acked_below);
    while session.responses.len() > MAX_SESSION_RESPONSES {
        if let Some((oldest, _)) = session.responses.pop_first() {
            state.changes.response_dropped(client, oldest);
            floor = floor.max(oldest + 1);
        }
    }
    if floor != session.floor {
        let dropped: Vec<u64> = session.responses.range(..floor).map(|(s, _)| *s).collect();
        for s in dropped {
            session.responses.remove(&s);
            state.changes.response_dropped(client, s);
        }
        session.floor = floor;
        state.changes.sessions.insert(client.clone());
    }
    response
}

fn apply_command(state: &mut State, index: u64, command: &Command) -> Response {
    match command {
        Command::Noop => Response::Done,
        Command::Put { key, value } => {
            state.changes.kv.insert(key.clone());
            Response::Value {
                value: state.kv.insert(key.clone(), value.clone()),
            }
        }
        Command::Get { key } => Response::Value {
            value: state.kv.get(key).cloned(),
        },
        Command::Cas { key, expected, new } => {
            let current = state.kv.get(key);
            if current == expected.as_ref() {
                state.kv.insert(key.clone(), new.clone());
                state.changes.kv.insert(key.clone());
                Response::Cas {
                    swapped: true,
                    current: Some(new.clone()),
                }
            } else {
                Response::Cas {
                    swapped: false,
                    current: current.cloned(),
                }
            }
        }
        Command::Execute {
            targets,
            action,
            deadline_ms,
        } => {
            let targets = match execution::resolve_targets(targets, state.membership.membership()) {
                Ok(t) => t,
                Err(e) => {
                    return Response::Rejected {
                        reason: e.to_string(),
                    };
                }
            };
            state.executions.insert(
                index,
                Execution {
                    exec: index,
                    action: action.clone(),
                    targets: targets.clone(),
                    deadline_ms: *deadline_ms,
                    reports: BTreeMap::new(),
                },
            );
            state.execution_changed(index);
            while state.executions.len() > MAX_EXECUTIONS {
                if let Some((old, _)) = state.executions.pop_first() {
                    state.execution_changed(old);
                }
            }
            Response::Executing {
                exec: index,
                targets,
                deadline_ms: *deadline_ms,
            }
        }
        Command::Report { exec, node, result } => report(state, *exec, *node, result),
        Command::Limit {
            spec,
            expires_at_ms,
        } => limit(state, index, spec, *expires_at_ms),
        Command::Limits => Response::Limits {
            limits: state.limits.values().cloned().collect(),
        },
        // `apply_request` unwraps a batch and rejects one nested in a batch
        // before it gets here; kept for an exhaustive, total apply.
        Command::Batch { .. } => Response::Rejected {
            reason: "a batch cannot hold another batch".into(),
        },
        Command::Release { id } => {
            if state.limits.remove(id).is_none() {
                return Response::Rejected {
                    reason: format!("no limit {id} (never set, or already released)"),
                };
            }
            state.limit_changed(*id);
            Response::Released { id: *id }
        }
        Command::AppCreate { spec } => match apps::config::create(&state.apps, spec, index) {
            Ok(app) => {
                state.apps.insert(app.spec.name.clone(), app.clone());
                state.changes.apps.insert(app.spec.name.clone());
                Response::App { app }
            }
            Err(reason) => Response::Rejected { reason },
        },
        Command::AppSet { name, patch } => {
            match apps::config::update(&state.apps, name, patch, index) {
                Ok(app) => {
                    state.apps.insert(name.clone(), app.clone());
                    state.changes.apps.insert(name.clone());
                    Response::App { app }
                }
                Err(reason) => Response::Rejected { reason },
            }
        }
        Command::AppRemove { name } => match apps::config::remove(&state.apps, name) {
            Ok(()) => {
                state.apps.remove(name);
                state.changes.apps.insert(name.clone());
                state.fleet.forget_app(name);
                state.changes.fleet = true;
                Response::AppRemoved { name: name.clone() }
            }
            Err(reason) => Response::Rejected { reason },
        },
        Command::Apps => Response::Apps {
            apps: state.apps.values().cloned().collect(),
        },
        Command::InstanceReport {
            host,
            instances,
            at_ms,
        } => fleet_change(state, |s| s.fleet.report(host, instances, *at_ms)),
        Command::AppScaleOut {
            app,
            host,
            running,
            at_ms,
        } => {
            match state
                .fleet
                .scale_out(&state.apps, app, host, *running, *at_ms)
            {
                Ok(chosen) => {
                    state.changes.fleet = true;
                    Response::ScaledOut {
                        app: app.clone(),
                        host: chosen,
                    }
                }
                Err(reason) => Response::Rejected { reason },
            }
        }
        Command::AppAssign { app, hosts, at_ms } => {
            fleet_change(state, |s| s.fleet.assign(&s.apps, app, hosts, *at_ms))
        }
        Command::HostLost { host } => fleet_change(state, |s| s.fleet.lose(host)),
    }
}

/// Applies a change of the fleet: done, or rejected with nothing changed.
fn fleet_change(
    state: &mut State,
    change: impl FnOnce(&mut State) -> Result<(), String>,
) -> Response {
    match change(state) {
        Ok(()) => {
            state.changes.fleet = true;
            Response::Done
        }
        Err(reason) => Response::Rejected { reason },
    }
}

fn limit(state: &mut State, index: u64, spec: &LimitSpec, expires_at_ms: Option<u64>) -> Response {
    let hosts = match execution::resolve_targets(&spec.hosts, state.membership.membership()) {
        Ok(h) => h,
        Err(e) => {
            return Response::Rejected {
                reason: e.to_string(),
            };
        }
    };
    state.limits.insert(
        index,
        Limit {
            id: index,
            selector: spec.selector.clone(),
            hosts: hosts.clone(),
            resources: spec.resources.clone(),
            expires_at_ms,
        },
    );
    state.limit_changed(index);
    Response::Limited {
        id: index,
        hosts,
        expires_at_ms,
    }
}

fn report(state: &mut State, exec: u64, node: NodeId, result: &NodeResult) -> Response {
    let Some(execution) = state.executions.get_mut(&exec) else {
        return Response::Rejected {
            reason: format!("no execution {exec} (unknown, or forgotten as too old)"),
        };
    };
    if !execution.targets.contains(&node) {
        return Response::Rejected {
            reason: format!("member {node} is not a target of execution {exec}"),
        };
    }
    if execution.reports.contains_key(&node) {
        return Response::Rejected {
            reason: format!("member {node} already reported on execution {exec}"),
        };
    }
    execution.reports.insert(node, result.clone());
    state.execution_changed(exec);
    Response::Reported { exec, node }
}

#[cfg(test)]
mod tests;
