//! Pure part of follower-side batching: a follower forwards the client
//! requests that queue up while earlier forwards are in flight as one
//! `Submit` of a `batch` envelope (member certificate, `x-elton-forwarded`),
//! and the leader answers each request on its own (docs/formats.md §11,
//! "Forwarded batches"). The leader does not log the envelope: it feeds
//! the inner requests to its own batcher, where they join the requests of
//! its other clients and followers.

use serde::{Deserialize, Serialize};

use crate::batch;
use crate::command::{Command, Request, Response, check_version};
use crate::error::ControlError;

/// One request's outcome in a forwarded batch's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    /// Applied at `log_index`.
    Ok {
        response: Box<Response>,
        log_index: u64,
    },
    /// Refused or failed: what a lone `Submit` would have failed with.
    Err { code: i32, message: String },
}

/// The leader's answer to a forwarded batch (the `Submit` response's
/// `response` bytes): one [`Answer`] per request, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answers {
    pub answers: Vec<Answer>,
}

impl Answers {
    pub fn encode(&self) -> Vec<u8> {
        // Plain data with string keys: serialising cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The leader's answer for `expected` requests; anything else is the
    /// leader's fault, reported to every waiter.
    pub fn decode(bytes: &[u8], expected: usize) -> Result<Vec<Answer>, String> {
        let a: Answers = serde_json::from_slice(bytes)
            .map_err(|e| format!("malformed answer to a forwarded batch: {e}"))?;
        if a.answers.len() != expected {
            return Err(format!(
                "a forwarded batch of {expected} requests was answered with {}",
                a.answers.len()
            ));
        }
        Ok(a.answers)
    }
}

/// If `bytes` (a `Submit` from another member) is a forwarded batch, its
/// requests, each still to be checked as a client's (`Request::decode`).
/// `None`: an ordinary command.
pub fn forwarded_batch(bytes: &[u8]) -> Result<Option<Vec<Request>>, ControlError> {
    // Only the command's kind first (serde skips the rest without building
    // it), and the typed envelope only for a batch.
    #[derive(Deserialize)]
    struct Peek {
        command: Option<Kind>,
    }
    #[derive(Deserialize)]
    struct Kind {
        kind: Option<String>,
    }
    let peek: Peek = serde_json::from_slice(bytes)
        .map_err(|e| ControlError::BadCommand(format!("not a JSON object: {e}")))?;
    if peek.command.and_then(|c| c.kind).as_deref() != Some("batch") {
        return Ok(None);
    }
    let envelope: Request =
        serde_json::from_slice(bytes).map_err(|e| ControlError::BadCommand(e.to_string()))?;
    check_version(envelope.v)?;
    match envelope.command {
        Command::Batch { requests } if !requests.is_empty() => Ok(Some(requests)),
        _ => Err(ControlError::BadCommand("an empty forwarded batch".into())),
    }
}

/// Checks one request of a forwarded batch as the leader would a client's.
pub fn check_forwarded(request: Request) -> Result<Request, ControlError> {
    request.check()?;
    if !batch::batchable(&request.command) {
        return Err(ControlError::BadCommand(
            "execute, limit and batch commands are never forwarded in a batch".into(),
        ));
    }
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::RequestId;

    fn req(seq: u64, command: Command) -> Request {
        Request::new(
            RequestId {
                client: "c".into(),
                seq,
            },
            command,
        )
    }

    #[test]
    fn a_forwarded_batch_is_recognised_and_ordinary_commands_pass() {
        let put = req(
            1,
            Command::Put {
                key: "k".into(),
                value: "v".into(),
            },
        );
        assert_eq!(forwarded_batch(&put.encode()).unwrap(), None);
        let b = batch::envelope(vec![put.clone(), req(2, Command::Noop)], put.id.clone());
        let inner = forwarded_batch(&b.encode()).unwrap().unwrap();
        assert_eq!(inner.len(), 2);
        assert_eq!(check_forwarded(inner[0].clone()).unwrap(), put);
        let empty = req(3, Command::Batch { requests: vec![] });
        assert!(forwarded_batch(&empty.encode()).is_err());
        assert!(forwarded_batch(b"{").is_err());
    }

    #[test]
    fn entry_bound_commands_are_refused_inside() {
        let nested = req(1, Command::Batch { requests: vec![] });
        assert!(check_forwarded(nested.clone()).is_err());
        let release = req(2, Command::Release { id: 4 });
        assert!(check_forwarded(release.clone()).is_ok());
    }

    #[test]
    fn answers_round_trip_and_a_wrong_count_is_an_error() {
        let a = Answers {
            answers: vec![
                Answer::Ok {
                    response: Box::new(Response::Done),
                    log_index: 7,
                },
                Answer::Err {
                    code: 3,
                    message: "bad".into(),
                },
            ],
        };
        assert_eq!(Answers::decode(&a.encode(), 2).unwrap(), a.answers);
        assert!(Answers::decode(&a.encode(), 3).is_err());
        assert!(Answers::decode(b"[]", 0).is_err());
    }
}
