//! The commands the group agrees on, as clients send them and as the log
//! stores them (JSON, see `docs/formats.md` "control commands").
//!
//! A [`Request`] is an envelope: the encoding version, the client's request
//! id (for exactly-once application) and one [`Command`]. New command kinds
//! (k2i, drcond, scheduling) are added as variants; a member that does not
//! know a kind rejects it at [`Request::decode`], before it is proposed.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::apps::fleet::InstanceRecord;
use crate::apps::{App, AppPatch, AppSpec};
use crate::drcond::LimitSpec;
use crate::error::ControlError;
use crate::k2i::ProcQuery;
use crate::types::NodeId;

/// The newest command encoding this build reads. Bump it when a change
/// would be misread by an older member (not for new client kinds, which
/// older members reject by kind before proposing), and when the leader
/// starts writing something into the log that older members cannot read.
/// 2: `batch` log entries. 3: an app's `cpu_max_percent` (and unsetting
/// it).
pub const COMMAND_VERSION: u32 = 3;

/// The version of a command that uses an app's `cpu_max_percent`; the
/// leader proposes such a command only while every member reads it
/// ([`crate::batch::every_member_reads`]).
pub const CPU_MAX_VERSION: u32 = 3;

/// The version a `batch` entry is written with; the leader forms batches
/// only while every member reads it ([`crate::batch::may_batch`]).
pub const BATCH_VERSION: u32 = 2;

/// Longest key or value a register command may carry, in bytes. Keeps one
/// log entry small; the control plane is not a data store.
pub const MAX_REGISTER_BYTES: usize = 64 * 1024;

/// Longest output a report may carry, in bytes: a host's process list
/// (k2i) is bigger than a register value, still one log entry.
pub const MAX_REPORT_BYTES: usize = 1024 * 1024;

/// Names one client request for exactly-once application: the client (a
/// random id it picks once per process) and a sequence number it never
/// reuses. A retry carries the same id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RequestId {
    pub client: String,
    pub seq: u64,
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.client, self.seq)
    }
}

/// The log's application payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// Encoding version, [`COMMAND_VERSION`] when written by this build.
    pub v: u32,
    pub id: RequestId,
    /// Every request of this client with a lower `seq` has been answered
    /// and will not be retried, so the state machine may forget their
    /// responses. 0 keeps them all.
    #[serde(default)]
    pub acked_below: u64,
    pub command: Command,
}

/// What the group is asked to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Command {
    /// Does nothing; proves the group commits (ping, benchmarks).
    Noop,
    /// Sets a register; answers with the previous value.
    Put { key: String, value: String },
    /// Reads a register through the log, so the answer is linearizable.
    Get { key: String },
    /// Sets `key` to `new` only if it holds `expected` (`None`: absent).
    Cas {
        key: String,
        expected: Option<String>,
        new: String,
    },
    /// Runs `action` on every member in `targets`; each answers with a
    /// [`Command::Report`]. The client collects the reports until all
    /// targets answered or `deadline_ms` passed.
    Execute {
        targets: Targets,
        action: Action,
        deadline_ms: u64,
    },
    /// A target's answer to the [`Command::Execute`] applied at log index
    /// `exec`.
    Report {
        exec: u64,
        node: NodeId,
        result: NodeResult,
    },
    /// drcond: a limit every host it names applies until it is released;
    /// its id is this entry's log index. `expires_at_ms` belongs to the
    /// leader: it stamps now + `spec.for_ms` when proposing.
    Limit {
        spec: LimitSpec,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expires_at_ms: Option<u64>,
    },
    /// drcond: lifts limit `id` (by a client, or by the leader at expiry).
    Release { id: u64 },
    /// drcond: the limits in force, read through the log (linearizable,
    /// like `Get`).
    Limits,
    /// Several client requests in one log entry, applied in order, each
    /// with its own request id (exactly-once as if sent alone). Formed by
    /// the leader's batcher ([`crate::batch`]), never accepted from a
    /// client; answered with [`Response::Batch`].
    Batch { requests: Vec<Request> },
    /// FastContainer: adds an app to the configuration DB.
    AppCreate { spec: AppSpec },
    /// FastContainer: changes an app (a deploy is a new `version`).
    AppSet { name: String, patch: AppPatch },
    /// FastContainer: removes an app.
    AppRemove { name: String },
    /// FastContainer: the apps, read through the log (linearizable).
    Apps,
    /// FastContainer: a host's proxy reports all its instances, replacing
    /// its previous report. `at_ms` belongs to the leader: it stamps its
    /// clock when proposing.
    InstanceReport {
        host: String,
        instances: Vec<InstanceRecord>,
        #[serde(default)]
        at_ms: u64,
    },
    /// FastContainer: a proxy asks for one more instance of `app`; the
    /// group assigns it to the least-loaded live host unless the app is
    /// cooling down or at its max. `at_ms` belongs to the leader.
    AppScaleOut {
        app: String,
        host: String,
        /// Instances of the app the asking host runs now (its report may
        /// not have been applied yet).
        #[serde(default)]
        running: u32,
        #[serde(default)]
        at_ms: u64,
    },
    /// FastContainer's reconciler: sets `app`'s per-host assignments.
    /// `at_ms` belongs to the leader (a newly assigned host's silence
    /// counts from it).
    AppAssign {
        app: String,
        hosts: BTreeMap<String, u32>,
        #[serde(default)]
        at_ms: u64,
    },
    /// FastContainer's reconciler: `host` stopped reporting; its instances
    /// are lost and its assignments dropped.
    HostLost { host: String },
}

/// Which members must run an [`Command::Execute`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "to", rename_all = "snake_case", deny_unknown_fields)]
pub enum Targets {
    /// Every member, voters and learners.
    All,
    /// The voters (masters).
    Voters,
    /// The learners (slave hosts).
    Learners,
    /// Exactly these members; each must be in the membership.
    Nodes { ids: BTreeSet<NodeId> },
}

/// Work a member runs on its host. drcond and scheduling add variants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum Action {
    /// Answers with `payload`: proves that a member executes what the group
    /// decided (tests, `elton control status`).
    Echo { payload: String },
    /// k2i: the host's processes matching `query`, answered as a
    /// [`crate::k2i::HostProcs`] (`elton ps`).
    Ps { query: ProcQuery },
    /// What the host is (its cores, [`crate::drcond::fit::HostFacts`]):
    /// checked before a limit is proposed.
    Host,
    /// drcond: where each limit stands on the host
    /// ([`crate::drcond::status::HostLimits`], `elton limit ls`).
    LimitStatus,
    /// FastContainer: the apps and the instance registry
    /// ([`crate::apps::fleet::AppView`]), answered from the leader's
    /// applied state by the direct read path; never an execution.
    AppState,
}

/// One member's answer to an execution.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case", deny_unknown_fields)]
pub enum NodeResult {
    Ok { output: serde_json::Value },
    Failed { error: String },
}

/// The state machine's answer to one applied entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Response {
    /// Applied; nothing to report (no-op, blank and membership entries).
    Done,
    /// A register's value: the current one for `Get`, the previous one for
    /// `Put`.
    Value { value: Option<String> },
    /// Whether a `Cas` swapped, and the register's value after it.
    Cas {
        swapped: bool,
        current: Option<String>,
    },
    /// An execution was recorded at log index `exec`; `targets` must answer.
    Executing {
        exec: u64,
        targets: BTreeSet<NodeId>,
        deadline_ms: u64,
    },
    /// A report was recorded.
    Reported { exec: u64, node: NodeId },
    /// A limit was recorded with this id, for these hosts.
    Limited {
        id: u64,
        hosts: BTreeSet<NodeId>,
        expires_at_ms: Option<u64>,
    },
    /// A limit was lifted.
    Released { id: u64 },
    /// The limits in force, oldest first.
    Limits { limits: Vec<crate::drcond::Limit> },
    /// A [`Command::Batch`]'s answers, one per request, in order.
    Batch { responses: Vec<Response> },
    /// An app as created or changed.
    App { app: App },
    /// The apps, by name.
    Apps { apps: Vec<App> },
    /// An app was removed.
    AppRemoved { name: String },
    /// A scale-out was granted: `app` gets one more instance on `host`.
    ScaledOut { app: String, host: String },
    /// The command was valid when proposed but could not take effect when
    /// applied (e.g. its target left the group meanwhile). Nothing changed.
    Rejected { reason: String },
}

/// The collected answers of one execution.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecutionResult {
    pub exec: u64,
    pub results: BTreeMap<NodeId, NodeResult>,
    /// Targets that had not answered when the result was taken.
    pub missing: BTreeSet<NodeId>,
    /// Whether the deadline passed before every target answered.
    pub timed_out: bool,
}

impl Command {
    /// The oldest envelope version that carries this command, which is
    /// what a writer puts in `v`: members that read only older versions
    /// still read every command they know.
    pub fn version(&self) -> u32 {
        match self {
            Command::Batch { requests } => requests
                .iter()
                .map(|r| r.command.version())
                .fold(BATCH_VERSION, u32::max),
            Command::AppCreate { spec } if spec.cpu_max_percent.is_some() => CPU_MAX_VERSION,
            Command::AppSet { patch, .. } if patch.needs_v3() => CPU_MAX_VERSION,
            _ => 1,
        }
    }
}

/// Refuses a command version this build does not speak.
pub(crate) fn check_version(v: u32) -> Result<(), ControlError> {
    if v == 0 || v > COMMAND_VERSION {
        return Err(ControlError::UnsupportedVersion {
            found: v,
            supported: COMMAND_VERSION,
        });
    }
    Ok(())
}

impl Request {
    /// A request in this build's encoding.
    pub fn new(id: RequestId, command: Command) -> Self {
        Self {
            v: command.version(),
            id,
            acked_below: 0,
            command,
        }
    }

    /// Parses a client's bytes, checking the version before the body so a
    /// newer client gets a version error rather than a parse error, and
    /// validating what can be checked without the group's state.
    pub fn decode(bytes: &[u8]) -> Result<Self, ControlError> {
        // Only "v" first (serde skips the rest without building it), then
        // the typed body: a `serde_json::Value` of the whole request was a
        // visible share of a write's CPU on the leader.
        #[derive(Deserialize)]
        struct Version {
            v: Option<u64>,
        }
        let v = serde_json::from_slice::<Version>(bytes)
            .map_err(|e| ControlError::BadCommand(format!("not a JSON object: {e}")))?
            .v
            .ok_or_else(|| ControlError::BadCommand("missing version field \"v\"".into()))?;
        check_version(u32::try_from(v).unwrap_or(u32::MAX))?;
        let request: Request =
            serde_json::from_slice(bytes).map_err(|e| ControlError::BadCommand(e.to_string()))?;
        request.validate()?;
        Ok(request)
    }

    /// Checks a request that arrived already typed (inside a forwarded
    /// batch) as [`Request::decode`] checks a client's bytes.
    pub fn check(&self) -> Result<(), ControlError> {
        check_version(self.v)?;
        self.validate()
    }

    pub fn encode(&self) -> Vec<u8> {
        // Serialising plain data with string keys cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Checks what needs no group state: sizes and non-empty names.
    pub fn validate(&self) -> Result<(), ControlError> {
        let bad = |m: String| Err(ControlError::BadCommand(m));
        if self.id.client.is_empty() || self.id.client.len() > 128 {
            return bad("client id must be 1 to 128 bytes".into());
        }
        let check = |what: &str, s: &str| {
            if s.len() > MAX_REGISTER_BYTES {
                Err(ControlError::BadCommand(format!(
                    "{what} is {} bytes; at most {MAX_REGISTER_BYTES}",
                    s.len()
                )))
            } else {
                Ok(())
            }
        };
        match &self.command {
            Command::Noop => Ok(()),
            Command::Put { key, value } => {
                check("key", key)?;
                check("value", value)
            }
            Command::Get { key } => check("key", key),
            Command::Cas { key, expected, new } => {
                check("key", key)?;
                check("expected", expected.as_deref().unwrap_or(""))?;
                check("new value", new)
            }
            Command::Execute {
                targets, action, ..
            } => {
                if let Targets::Nodes { ids } = targets
                    && ids.is_empty()
                {
                    return bad("execute: no target nodes".into());
                }
                match action {
                    Action::Echo { payload } => check("payload", payload),
                    Action::Ps { query } => query
                        .validate()
                        .map_err(|e| ControlError::BadCommand(format!("ps: {e}"))),
                    Action::Host | Action::LimitStatus => Ok(()),
                    Action::AppState => bad(
                        "app_state is read from the replicated state: ask it with a direct query"
                            .into(),
                    ),
                }
            }
            Command::Limit { spec, .. } => spec
                .validate()
                .map_err(|e| ControlError::BadCommand(format!("limit: {e}"))),
            Command::Batch { .. } => bad(
                "a batch is formed by the leader from single commands; send one command per \
                 request"
                    .into(),
            ),
            Command::Release { .. } | Command::Limits | Command::Apps => Ok(()),
            Command::AppCreate { spec } => spec
                .validate()
                .map_err(|e| ControlError::BadCommand(format!("app: {e}"))),
            Command::AppSet { name, patch } => crate::apps::spec::check_name(name)
                .and_then(|()| patch.validate())
                .map_err(|e| ControlError::BadCommand(format!("app {name:?}: {e}"))),
            Command::AppRemove { name } => crate::apps::spec::check_name(name)
                .map_err(|e| ControlError::BadCommand(format!("app: {e}"))),
            Command::InstanceReport {
                host, instances, ..
            } => crate::apps::fleet::check_report(host, instances)
                .map_err(|e| ControlError::BadCommand(format!("instance report: {e}"))),
            Command::AppScaleOut { app, host, .. } => crate::apps::spec::check_name(app)
                .and_then(|()| crate::apps::spec::check_name(host))
                .map_err(|e| ControlError::BadCommand(format!("scale out: {e}"))),
            Command::AppAssign { app, hosts, .. } => std::iter::once(app)
                .chain(hosts.keys())
                .try_for_each(|n| crate::apps::spec::check_name(n))
                .map_err(|e| ControlError::BadCommand(format!("assign: {e}"))),
            Command::HostLost { host } => crate::apps::spec::check_name(host)
                .map_err(|e| ControlError::BadCommand(format!("host lost: {e}"))),
            Command::Report { result, .. } => match result {
                NodeResult::Ok { output } => {
                    let len = output.to_string().len();
                    if len > MAX_REPORT_BYTES {
                        return bad(format!(
                            "report output is {len} bytes; at most {MAX_REPORT_BYTES}"
                        ));
                    }
                    Ok(())
                }
                NodeResult::Failed { error } => check("error", error),
            },
        }
    }
}

#[cfg(test)]
mod tests;
