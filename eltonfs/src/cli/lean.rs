//! The command line a process builds before parsing its arguments. clap
//! builds every argument of every subcommand first (about 60 commands,
//! several hundred arguments, most of a short call's heap pages), then
//! parses one. A call that must start fast (`elton ps`, which `ps aux`
//! is measured against, `docs/benchmarks.md`, k2i run 7) builds the top
//! level and its own subcommand only: the same arguments, help and
//! errors (a test compares them with the whole tree's). Anything else
//! (another subcommand, `--help`, a flag the scan does not know) builds
//! the whole tree, so nothing else changes.

use std::ffi::OsString;

use clap::{Args, Command};

use super::client::Endpoints;
use super::flags::ENDPOINT_FLAGS;
use super::ps;

/// A subcommand built alone: its name, its one-line description (the
/// same text `elton --help` lists) and its arguments.
struct Lean {
    name: &'static str,
    about: &'static str,
    args: fn(Command) -> Command,
}

const LEAN: &[Lean] = &[Lean {
    name: "ps",
    about: ps::ABOUT,
    args: ps::PsArgs::augment_args,
}];

/// What the top level of `elton` is, as `Cli`'s derive builds it: its
/// name, version and description, and the global endpoint flags.
fn top_level() -> Command {
    let top = Command::new("elton")
        .version(env!("CARGO_PKG_VERSION"))
        .about(super::ABOUT)
        .subcommand_required(true)
        .arg_required_else_help(true);
    Endpoints::augment_args(top)
}

/// The command line to parse `args` with (`args[0]` is the program).
pub fn command_for(args: &[OsString]) -> Command {
    match lean_subcommand(args) {
        Some(l) => super::flags::hide_unused(
            top_level().subcommand((l.args)(Command::new(l.name).about(l.about))),
        ),
        None => super::flags::command(),
    }
}

/// The lean subcommand `args` name: the first word that is not a global
/// endpoint flag (`--master URL`, `--master=URL`, ...) or its value.
/// `None` for any other word or flag before it.
fn lean_subcommand(args: &[OsString]) -> Option<&'static Lean> {
    let mut words = args.iter().skip(1);
    while let Some(word) = words.next() {
        let word = word.to_str()?;
        if let Some(flag) = word.strip_prefix("--") {
            let (name, inline) = match flag.split_once('=') {
                Some((name, _)) => (name, true),
                None => (flag, false),
            };
            if !ENDPOINT_FLAGS.iter().any(|(_, long)| *long == name) {
                return None;
            }
            if !inline {
                words.next()?;
            }
            continue;
        }
        if word.starts_with('-') {
            return None;
        }
        return LEAN.iter().find(|l| l.name == word);
    }
    None
}

#[cfg(test)]
mod tests {
    use clap::FromArgMatches;

    use super::super::Cli;
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    /// What parsing `args` gives: the parsed command line, or the error
    /// as clap prints it.
    fn outcome(cmd: Command, args: &[&str]) -> String {
        match cmd.try_get_matches_from(os(args)) {
            Ok(m) => match Cli::from_arg_matches(&m) {
                Ok(cli) => format!("{cli:?}"),
                Err(e) => format!("{:?}: {}", e.kind(), e.render()),
            },
            Err(e) => format!("{:?}: {}", e.kind(), e.render()),
        }
    }

    #[test]
    fn only_lean_subcommands_after_endpoint_flags_are_lean() {
        let lean = |args: &[&str]| lean_subcommand(&os(args)).map(|l| l.name);
        assert_eq!(lean(&["elton", "ps"]), Some("ps"));
        assert_eq!(lean(&["elton", "--master", "http://x:1", "ps"]), Some("ps"));
        assert_eq!(
            lean(&["elton", "--token=t", "--ca", "/c", "ps"]),
            Some("ps")
        );
        assert_eq!(lean(&["elton", "ls", "ps"]), None);
        assert_eq!(lean(&["elton", "--help", "ps"]), None);
        assert_eq!(lean(&["elton", "-V"]), None);
        assert_eq!(lean(&["elton", "--", "ps"]), None);
        assert_eq!(lean(&["elton", "--master"]), None);
        assert_eq!(lean(&["elton"]), None);
    }

    #[test]
    fn a_lean_command_line_parses_like_the_whole_tree() {
        let cases: &[&[&str]] = &[
            &["elton", "ps"],
            &[
                "elton",
                "--master",
                "http://x:1",
                "ps",
                "--host",
                "m1",
                "--window",
                "0ms",
            ],
            &[
                "elton",
                "--master=http://x:1",
                "--token",
                "t",
                "ps",
                "--all",
                "--json",
            ],
            &[
                "elton", "ps", "--pid", "42", "--name", "sh", "--cgroup", "/a",
            ],
            &["elton", "ps", "--master", "http://y:2", "--deadline", "1s"],
            &["elton", "ps", "--all", "--host", "m1"],
            &["elton", "ps", "--window", "soon"],
            &["elton", "ps", "--hots", "m1"],
            &["elton", "ps", "extra"],
            &["elton", "ps", "--help"],
            &["elton", "ps", "-h"],
            &["elton", "ps", "--version"],
        ];
        for args in cases {
            assert!(lean_subcommand(&os(args)).is_some(), "{args:?}");
            assert_eq!(
                outcome(command_for(&os(args)), args),
                outcome(super::super::flags::command(), args),
                "{args:?}"
            );
        }
    }

    #[test]
    fn the_lean_command_line_is_consistent() {
        command_for(&os(&["elton", "ps"])).debug_assert();
    }
}
