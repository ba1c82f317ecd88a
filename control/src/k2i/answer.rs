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

/// A `ps` answer as a client prints it.
#[derive(Debug, Clone, PartialEq)]
pub struct PsAnswer {
    /// Each host's answer, by node name.
    pub hosts: Vec<(String, HostAnswer)>,
    /// The hosts that did not answer before the deadline.
    pub missing: Vec<String>,
}

/// A direct query's answer to a `ps`, as the member sends it (a
/// [`DirectResult`] in JSON), decoded straight into each host's
/// processes: each host's result is read as a plain struct with both
/// variants' fields, not through [`NodeResult`]'s internally tagged form,
/// which serde buffers as a tree of values before converting it (that
/// was most of a client's decoding). An answer that does not fit is
/// decoded the general way, so a host's unreadable part is reported for
/// that host. Returns the answers by host and the hosts that did not
/// answer: the same as [`by_host`] of the decoded [`DirectResult`].
pub fn decode(bytes: &[u8]) -> Result<PsAnswer, serde_json::Error> {
    #[derive(serde::Deserialize)]
    struct Wire {
        hosts: std::collections::BTreeMap<String, WireResult>,
        missing: Vec<String>,
    }
    /// [`NodeResult`]'s fields: `status` says which ones are there.
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct WireResult {
        status: String,
        #[serde(default)]
        output: Option<HostProcs>,
        #[serde(default)]
        error: Option<String>,
    }
    let typed = serde_json::from_slice::<Wire>(bytes).ok().and_then(|wire| {
        let answers = wire
            .hosts
            .into_iter()
            .map(|(host, r)| match (r.status.as_str(), r.output, r.error) {
                ("ok", Some(p), None) => Some((host, HostAnswer::Procs(p))),
                ("failed", None, Some(e)) => Some((host, HostAnswer::Failed(e))),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()?;
        Some(PsAnswer {
            hosts: answers,
            missing: wire.missing,
        })
    });
    match typed {
        Some(t) => Ok(t),
        None => {
            let result: DirectResult = serde_json::from_slice(bytes)?;
            let missing = result.missing.clone();
            Ok(PsAnswer {
                hosts: by_host(result),
                missing,
            })
        }
    }
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
    fn a_readable_answer_decodes_like_the_general_path() {
        let procs = json!({ "procs": [{
            "pid": 7, "ppid": 1, "user": "root", "state": "S", "name": "sleep",
            "cmdline": ["sleep", "9"], "cpu_percent": 0.5, "rss_bytes": 4096,
            "start_time": 1_700_000_000u64, "cgroups": ["4:memory:/"],
        }], "truncated": 2 });
        let result = DirectResult {
            node: "m1".into(),
            hosts: BTreeMap::from([
                ("m1".to_string(), NodeResult::Ok { output: procs }),
                (
                    "m2".to_string(),
                    NodeResult::Failed {
                        error: "boom".into(),
                    },
                ),
            ]),
            missing: vec!["m3".into()],
        };
        let bytes = serde_json::to_vec(&result).expect("json");
        let decoded = decode(&bytes).expect("decoding");
        assert_eq!(decoded.hosts, by_host(result));
        assert_eq!(decoded.missing, ["m3"]);
        match &decoded.hosts[0].1 {
            HostAnswer::Procs(p) => assert_eq!((p.procs[0].pid, p.truncated), (7, 2)),
            other => panic!("{other:?}"),
        }
        assert!(decode(b"not json").is_err());
    }

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
        let bytes = serde_json::to_vec(&result).expect("json");
        let answers = by_host(result);
        let decoded = decode(&bytes).expect("decoding");
        assert_eq!(decoded.missing, ["s3"]);
        assert_eq!(decoded.hosts, answers);
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
