//! What a member does for an execution it is a target of: the action's
//! result, reported back through the log. drcond and scheduling add their
//! actions here.

use crate::command::{Action, Command, NodeResult, Request, RequestId};
use crate::types::NodeId;

/// Runs `action` on this host. May block (reading `/proc`, sleeping out
/// a CPU sampling window): call it off the async runtime.
pub fn run(action: &Action) -> NodeResult {
    match action {
        Action::Echo { payload } => NodeResult::Ok {
            output: serde_json::Value::String(payload.clone()),
        },
        Action::Ps { query } => match crate::k2i::procs::list(query) {
            Ok(procs) => match serde_json::to_value(procs) {
                Ok(output) => NodeResult::Ok { output },
                Err(e) => NodeResult::Failed {
                    error: format!("encoding the process list: {e}"),
                },
            },
            Err(error) => NodeResult::Failed { error },
        },
        Action::Host => encoded(crate::drcond::fit::HostFacts::of_this_host()),
        Action::LimitStatus => encoded(crate::drcond::report::last()),
        // Read from the replicated state by the member asked, never run on
        // a host (`Request::validate` refuses it in an execution).
        Action::AppState => NodeResult::Failed {
            error: "app_state is answered by the member asked, not run on hosts".into(),
        },
    }
}

fn encoded(value: impl serde::Serialize) -> NodeResult {
    match serde_json::to_value(value) {
        Ok(output) => NodeResult::Ok { output },
        Err(e) => NodeResult::Failed {
            error: format!("encoding the answer: {e}"),
        },
    }
}

/// The report of member `node` (named `name`) for execution `exec`. Its
/// request id is fixed by the execution, so a report sent twice (a retry,
/// or again after a restart) is applied once.
pub fn report(name: &str, node: NodeId, exec: u64, result: NodeResult) -> Request {
    Request::new(
        RequestId {
            client: format!("report:{name}"),
            seq: exec,
        },
        Command::Report { exec, node, result },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_answers_its_payload_and_reports_are_idempotent() {
        let result = run(&Action::Echo {
            payload: "hi".into(),
        });
        assert_eq!(
            result,
            NodeResult::Ok {
                output: serde_json::json!("hi")
            }
        );
        let a = report("s1", 7, 42, result.clone());
        let b = report("s1", 7, 42, result);
        assert_eq!(a.id, b.id);
        assert!(a.validate().is_ok());
    }
}
