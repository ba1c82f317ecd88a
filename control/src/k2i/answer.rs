//! The JSON that `elton ps --json` prints and the masters' `/v1/proc`
//! routes serve (one shape for scripts either way): per host its
//! processes or its error, and the hosts that did not answer.

use serde_json::{Value, json};

use super::HostProcs;
use crate::command::NodeResult;
use crate::direct::DirectResult;

/// One host's outcome of a `ps` query.
#[derive(Debug, Clone, PartialEq)]
pub enum HostAnswer {
    Procs(HostProcs),
    Failed(String),
}

/// Each host's answer to a `ps`, by node name.
pub fn by_host(result: DirectResult) -> Vec<(String, HostAnswer)> {
    result
        .hosts
        .into_iter()
        .map(|(host, res)| {
            let answer = match res {
                NodeResult::Ok { output } => match serde_json::from_value(output) {
                    Ok(p) => HostAnswer::Procs(p),
                    Err(e) => HostAnswer::Failed(format!("unreadable answer: {e}")),
                },
                NodeResult::Failed { error } => HostAnswer::Failed(error),
            };
            (host, answer)
        })
        .collect()
}

/// `{"hosts": {name: {"procs": [...], "truncated": n} | {"error": e}},
/// "missing": [name]}`.
pub fn to_json(answers: &[(String, HostAnswer)], missing: &[String]) -> Value {
    let hosts: serde_json::Map<String, Value> = answers
        .iter()
        .map(|(host, a)| {
            let v = match a {
                HostAnswer::Procs(p) => json!({ "procs": p.procs, "truncated": p.truncated }),
                HostAnswer::Failed(e) => json!({ "error": e }),
            };
            (host.clone(), v)
        })
        .collect();
    json!({ "hosts": hosts, "missing": missing })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn hosts_are_tagged_and_failures_kept() {
        let result = DirectResult {
            node: "m1".into(),
            hosts: BTreeMap::from([
                (
                    "m1".to_string(),
                    NodeResult::Ok {
                        output: json!({ "procs": [], "truncated": 0 }),
                    },
                ),
                (
                    "s1".to_string(),
                    NodeResult::Failed {
                        error: "boom".into(),
                    },
                ),
                (
                    "s2".to_string(),
                    NodeResult::Ok {
                        output: json!("not a list"),
                    },
                ),
            ]),
            missing: vec!["s3".into()],
        };
        let answers = by_host(result);
        let v = to_json(&answers, &["s3".to_string()]);
        assert_eq!(v["hosts"]["m1"], json!({ "procs": [], "truncated": 0 }));
        assert_eq!(v["hosts"]["s1"], json!({ "error": "boom" }));
        assert!(
            v["hosts"]["s2"]["error"]
                .as_str()
                .is_some_and(|e| e.contains("unreadable"))
        );
        assert_eq!(v["missing"], json!(["s3"]));
    }
}
