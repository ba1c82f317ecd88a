//! Progress of a commit as the mount reports it on the control socket
//! (control protocol revision 2, `docs/formats.md` §8): pure encoding and
//! decoding of the lines, no IO.
//!
//! A client that asks for progress (`"progress":true` in the commit
//! request) reads lines until one without a `progress` key: that one is
//! the final answer, exactly as a revision-1 mount sends it. A revision-1
//! mount ignores the request field and sends only the final answer, so a
//! client must expect zero progress lines.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::mount::ControlResponse;

/// Revision of the control-socket protocol this build speaks.
pub const CONTROL_REVISION: u32 = 2;

/// Where a commit is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Listing the upper's changes (the totals are not known yet).
    #[default]
    Scanning,
    /// Hashing the changed files and adding them to the local store.
    Storing,
    /// Asking the slave (and through it the master) to publish the version.
    Publishing,
}

impl Phase {
    pub fn as_u8(self) -> u8 {
        match self {
            Phase::Scanning => 0,
            Phase::Storing => 1,
            Phase::Publishing => 2,
        }
    }

    pub fn from_u8(n: u8) -> Phase {
        match n {
            0 => Phase::Scanning,
            1 => Phase::Storing,
            _ => Phase::Publishing,
        }
    }
}

/// One progress report; every count is since the commit started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitProgress {
    pub phase: Phase,
    /// Files, symlinks and special files in the upper to commit (known
    /// once scanning is done; 0 before).
    #[serde(default)]
    pub total_files: u64,
    /// Of those, how many are done.
    #[serde(default)]
    pub files: u64,
    /// Directory manifests built.
    #[serde(default)]
    pub dirs: u64,
    /// Objects that were not in the store before this commit.
    #[serde(default)]
    pub new_objects: u64,
    /// Bytes of file contents committed so far.
    #[serde(default)]
    pub bytes: u64,
}

/// The wrapper that marks a line as progress, not the final answer.
#[derive(Serialize, Deserialize)]
struct ProgressLine {
    progress: CommitProgress,
}

/// One line a client reads from the control socket.
#[derive(Debug)]
pub enum ControlLine {
    Progress(CommitProgress),
    Done(ControlResponse),
}

/// The bytes of a progress line, newline included.
pub fn encode_progress(p: &CommitProgress) -> Vec<u8> {
    let mut out =
        serde_json::to_vec(&ProgressLine { progress: *p }).unwrap_or_else(|_| b"{}".to_vec());
    out.push(b'\n');
    out
}

/// Reads one line of the mount's answer.
pub fn decode_line(line: &str) -> Result<ControlLine> {
    let value: serde_json::Value =
        serde_json::from_str(line).context("bad answer from the mount")?;
    if value.get("progress").is_some() {
        let p: ProgressLine =
            serde_json::from_value(value).context("bad progress line from the mount")?;
        return Ok(ControlLine::Progress(p.progress));
    }
    let resp: ControlResponse =
        serde_json::from_value(value).context("bad answer from the mount")?;
    Ok(ControlLine::Done(resp))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_progress_line_round_trips() {
        let p = CommitProgress {
            phase: Phase::Storing,
            total_files: 5000,
            files: 1200,
            dirs: 3,
            new_objects: 1100,
            bytes: 123_456,
        };
        let bytes = encode_progress(&p);
        assert_eq!(bytes.last(), Some(&b'\n'));
        let line = std::str::from_utf8(&bytes).expect("utf-8");
        assert_eq!(line.matches('\n').count(), 1, "one line: {line}");
        assert!(
            line.starts_with(r#"{"progress":{"phase":"storing","#),
            "{line}"
        );
        match decode_line(line).expect("decodes") {
            ControlLine::Progress(q) => assert_eq!(q, p),
            other => panic!("not progress: {other:?}"),
        }
    }

    #[test]
    fn a_final_answer_is_not_progress() {
        let line = r#"{"volume":"web","version":3}"#;
        match decode_line(line).expect("decodes") {
            ControlLine::Done(r) => {
                assert_eq!(r.volume.as_deref(), Some("web"));
                assert_eq!(r.version, Some(3));
                assert!(r.error.is_none());
            }
            other => panic!("not final: {other:?}"),
        }
        match decode_line(r#"{"error":"conflict (HTTP 409)"}"#).expect("decodes") {
            ControlLine::Done(r) => assert_eq!(r.error.as_deref(), Some("conflict (HTTP 409)")),
            other => panic!("not final: {other:?}"),
        }
    }

    #[test]
    fn missing_counts_read_as_zero_and_unknown_fields_are_ignored() {
        let line = r#"{"progress":{"phase":"publishing","files":7,"later":1}}"#;
        match decode_line(line).expect("decodes") {
            ControlLine::Progress(p) => {
                assert_eq!(p.phase, Phase::Publishing);
                assert_eq!(p.files, 7);
                assert_eq!(p.total_files, 0);
            }
            other => panic!("not progress: {other:?}"),
        }
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(decode_line("not json").is_err());
        assert!(decode_line(r#"{"progress":{"phase":"flying"}}"#).is_err());
        assert!(decode_line(r#"{"progress":3}"#).is_err());
    }

    #[test]
    fn phases_survive_their_atomic_encoding() {
        for p in [Phase::Scanning, Phase::Storing, Phase::Publishing] {
            assert_eq!(Phase::from_u8(p.as_u8()), p);
        }
    }
}
