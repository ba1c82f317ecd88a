//! What `elton commit` shows on stderr while the mount commits: a bar on a
//! terminal, plain lines when forced (`--progress`) elsewhere, and a
//! summary at the end. stdout carries only the result, as before.

use std::time::{Duration, Instant};

use indicatif::{HumanBytes, ProgressBar, ProgressStyle};

use crate::fs::commit_progress::{CommitProgress, Phase};

/// How often plain lines are printed while the phase stays the same.
const PLAIN_EVERY: Duration = Duration::from_secs(1);

/// Whether progress is shown: for a person at a terminal unless the
/// output is for a script (`--json`); `--progress` forces it, `--quiet`
/// (which clap keeps apart from `--progress`) silences it.
pub fn shows_progress(stderr_is_terminal: bool, json: bool, forced: bool, quiet: bool) -> bool {
    !quiet && (forced || (stderr_is_terminal && !json))
}

fn phase_name(p: Phase) -> &'static str {
    match p {
        Phase::Scanning => "scanning",
        Phase::Storing => "storing",
        Phase::Publishing => "publishing",
    }
}

/// The details after the file count, shared by the bar and the lines.
fn details(p: &CommitProgress) -> String {
    format!(
        "{}, {} new object{}, {} director{}",
        HumanBytes(p.bytes),
        p.new_objects,
        if p.new_objects == 1 { "" } else { "s" },
        p.dirs,
        if p.dirs == 1 { "y" } else { "ies" }
    )
}

/// One plain progress line (no terminal).
pub fn progress_line(p: &CommitProgress) -> String {
    match p.phase {
        Phase::Scanning => "elton: commit: scanning the changes".to_string(),
        phase => format!(
            "elton: commit: {} {}/{} files, {}",
            phase_name(phase),
            p.files,
            p.total_files,
            details(p)
        ),
    }
}

/// The last line, once the version is published.
pub fn summary_line(p: &CommitProgress, elapsed: Duration) -> String {
    format!(
        "elton: committed {} file{} ({}) in {:.2} s",
        p.files,
        if p.files == 1 { "" } else { "s" },
        details(p),
        elapsed.as_secs_f64()
    )
}

/// Whether a plain line is due: at every phase change, else once per
/// [`PLAIN_EVERY`].
fn plain_due(last: Option<(Phase, Instant)>, p: &CommitProgress, now: Instant) -> bool {
    match last {
        None => true,
        Some((phase, at)) => phase != p.phase || now.duration_since(at) >= PLAIN_EVERY,
    }
}

/// The progress display of one commit.
pub struct CommitView {
    bar: Option<ProgressBar>,
    last_plain: Option<(Phase, Instant)>,
    last: Option<CommitProgress>,
    started: Instant,
}

impl CommitView {
    pub fn new(stderr_is_terminal: bool) -> CommitView {
        let bar = stderr_is_terminal.then(|| {
            let pb = ProgressBar::new(0);
            let style =
                ProgressStyle::with_template("{prefix:>10} [{bar:20}] {pos}/{len} files, {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> ");
            pb.set_style(style);
            pb.set_prefix("scanning");
            pb
        });
        CommitView {
            bar,
            last_plain: None,
            last: None,
            started: Instant::now(),
        }
    }

    pub fn update(&mut self, p: &CommitProgress) {
        self.last = Some(*p);
        match &self.bar {
            Some(pb) => {
                pb.set_prefix(phase_name(p.phase));
                pb.set_length(p.total_files);
                pb.set_position(p.files);
                // Short enough for 80 columns; the summary has the rest.
                pb.set_message(format!(
                    "{}, {} new objects",
                    HumanBytes(p.bytes),
                    p.new_objects
                ));
            }
            None => {
                let now = Instant::now();
                if plain_due(self.last_plain, p, now) {
                    eprintln!("{}", progress_line(p));
                    self.last_plain = Some((p.phase, now));
                }
            }
        }
    }

    /// Clears the bar; prints the summary when a version was published
    /// (not for "nothing to commit", nor after an error).
    pub fn finish(self, published: bool) {
        if let Some(pb) = &self.bar {
            pb.finish_and_clear();
        }
        if published && let Some(p) = &self.last {
            eprintln!("{}", summary_line(p, self.started.elapsed()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_is_for_people_unless_forced_or_silenced() {
        assert!(shows_progress(true, false, false, false));
        assert!(
            !shows_progress(false, false, false, false),
            "not a terminal"
        );
        assert!(!shows_progress(true, true, false, false), "--json");
        assert!(shows_progress(false, false, true, false), "--progress");
        assert!(
            shows_progress(false, true, true, false),
            "--progress --json"
        );
        assert!(!shows_progress(true, false, false, true), "--quiet");
    }

    #[test]
    fn lines_say_what_was_done() {
        let p = CommitProgress {
            phase: Phase::Storing,
            total_files: 5000,
            files: 1200,
            dirs: 1,
            new_objects: 1,
            bytes: 2048,
        };
        assert_eq!(
            progress_line(&p),
            "elton: commit: storing 1200/5000 files, 2.00 KiB, 1 new object, 1 directory"
        );
        assert_eq!(
            progress_line(&CommitProgress::default()),
            "elton: commit: scanning the changes"
        );
        let done = CommitProgress {
            phase: Phase::Publishing,
            files: 5000,
            total_files: 5000,
            dirs: 3,
            new_objects: 5003,
            bytes: 5_000_000,
        };
        assert_eq!(
            summary_line(&done, Duration::from_millis(2500)),
            "elton: committed 5000 files (4.77 MiB, 5003 new objects, 3 directories) in 2.50 s"
        );
    }

    #[test]
    fn plain_lines_come_at_phase_changes_and_once_a_second() {
        let t0 = Instant::now();
        let storing = CommitProgress {
            phase: Phase::Storing,
            ..CommitProgress::default()
        };
        assert!(plain_due(None, &storing, t0));
        let last = Some((Phase::Storing, t0));
        assert!(!plain_due(last, &storing, t0 + Duration::from_millis(300)));
        assert!(plain_due(last, &storing, t0 + Duration::from_secs(1)));
        let publishing = CommitProgress {
            phase: Phase::Publishing,
            ..storing
        };
        assert!(plain_due(last, &publishing, t0 + Duration::from_millis(1)));
    }
}
