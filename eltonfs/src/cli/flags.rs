//! Global flags (`--master`, `--slave`, `--token`, `--token-file`, `--ca`)
//! that some subcommands have no use for: those subcommands neither show
//! them in their help nor accept them silently. A given flag that would do
//! nothing is an error, so a user who meant it learns at once.
//!
//! clap copies a global flag into a subcommand only when the subcommand has
//! no argument of that id; a hidden stand-in of the same id keeps it out of
//! the help and records whether the user gave it.

use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, CommandFactory};

use super::Cli;

/// The endpoint flags, by clap id and long name.
pub(super) const ENDPOINT_FLAGS: [(&str, &str); 5] = [
    ("master", "master"),
    ("slave", "slave"),
    ("token", "token"),
    ("token_file", "token-file"),
    ("ca", "ca"),
];

/// Per subcommand, the endpoint flags it does not use, and why.
const UNUSED: &[(&str, &[&str], &str)] = &[
    (
        "up",
        &["master", "slave", "token", "token_file", "ca"],
        "it runs its own master and slave (set their addresses with --master-listen and --slave-listen)",
    ),
    (
        "master",
        &["master", "slave", "token", "token_file", "ca"],
        "it is the master (see --listen, --bootstrap-token-file, --tls-dir)",
    ),
    (
        "slave",
        &["slave", "token", "token_file", "ca"],
        "a slave authenticates with its certificate (--tls-dir) and listens on --listen",
    ),
    (
        "mount",
        &["master", "ca"],
        "a mount talks to its slave only (--slave)",
    ),
    (
        "ls",
        &["master", "token", "token_file", "ca"],
        "it reads through the slave (--slave), which serves reads without a token",
    ),
    (
        "cat",
        &["master", "token", "token_file", "ca"],
        "it reads through the slave (--slave), which serves reads without a token",
    ),
    (
        "diff",
        &["master", "token", "token_file", "ca"],
        "it reads through the slave (--slave), which serves reads without a token",
    ),
    (
        "umount",
        &["master", "slave", "token", "token_file", "ca"],
        "it talks to the local mount process only",
    ),
    (
        "status",
        &["master", "slave", "token", "token_file", "ca"],
        "it asks the local mount process",
    ),
    (
        "commit",
        &["master", "slave", "token", "token_file", "ca"],
        "the mount commits through the slave and with the token it was mounted with",
    ),
    (
        "checkout",
        &["master", "slave", "token", "token_file", "ca"],
        "the mount reads through the slave it was mounted with",
    ),
    (
        "cert",
        &["master", "slave", "token", "token_file", "ca"],
        "it works on the local CA files (--pki)",
    ),
];

/// The whole command line: the derived one, with stand-ins for unused
/// flags.
pub fn command() -> clap::Command {
    hide_unused(Cli::command())
}

/// `cmd` with the hidden stand-ins of its subcommands' unused flags (of
/// those it has: a lean command line has one, `lean.rs`).
pub fn hide_unused(mut cmd: clap::Command) -> clap::Command {
    for (sub, unused, _) in UNUSED {
        if cmd.find_subcommand(sub).is_none() {
            continue;
        }
        cmd = cmd.mut_subcommand(*sub, |mut sc| {
            for id in *unused {
                let long = ENDPOINT_FLAGS
                    .iter()
                    .find(|(i, _)| i == id)
                    .map_or(*id, |(_, l)| *l);
                sc = sc.arg(
                    Arg::new(*id)
                        .long(long)
                        .hide(true)
                        .action(ArgAction::Set)
                        .num_args(1),
                );
            }
            sc
        });
    }
    cmd
}

/// An error naming the first endpoint flag given on the command line to a
/// subcommand that does not use it.
pub fn reject_unused(matches: &ArgMatches) -> Result<(), String> {
    let Some((name, sub)) = matches.subcommand() else {
        return Ok(());
    };
    let Some((_, unused, why)) = UNUSED.iter().find(|(s, _, _)| *s == name) else {
        return Ok(());
    };
    for id in *unused {
        // A flag before the subcommand is the global one (top level).
        let given = |m: &ArgMatches| {
            m.try_get_raw(id).is_ok_and(|v| v.is_some())
                && m.value_source(id) == Some(ValueSource::CommandLine)
        };
        if given(sub) || given(matches) {
            let long = ENDPOINT_FLAGS
                .iter()
                .find(|(i, _)| i == id)
                .map_or(*id, |(_, l)| *l);
            return Err(format!(
                "--{long} does nothing for `elton {name}`: {why}; nothing was done"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(args: &[&str]) -> Result<(), String> {
        let m = command()
            .try_get_matches_from(args)
            .map_err(|e| e.to_string())?;
        reject_unused(&m)
    }

    #[test]
    fn the_command_line_is_consistent() {
        command().debug_assert();
    }

    #[test]
    fn unused_endpoint_flags_are_refused() {
        let e = check(&["elton", "up", "--master", "https://x:1"]).unwrap_err();
        assert!(e.contains("--master does nothing for `elton up`"), "{e}");
        let e = check(&["elton", "--token", "t", "umount", "/mnt"]).unwrap_err();
        assert!(e.contains("--token does nothing"), "{e}");
        let e = check(&["elton", "diff", "web", "1", "2", "--token", "t"]).unwrap_err();
        assert!(e.contains("--token does nothing for `elton diff`"), "{e}");
        let e = check(&["elton", "slave", "--slave", "http://x:1"]).unwrap_err();
        assert!(e.contains("--slave does nothing for `elton slave`"), "{e}");
    }

    #[test]
    fn used_endpoint_flags_are_accepted() {
        check(&["elton", "log", "web", "--master", "https://x:1"]).expect("log");
        check(&["elton", "ls", "web", "--slave", "http://x:1"]).expect("ls");
        check(&["elton", "--slave", "http://x:1", "cat", "web:a"]).expect("cat");
        check(&["elton", "slave", "--master", "https://x:1"]).expect("slave");
        check(&["elton", "mount", "web", "/mnt", "--slave", "http://x:1"]).expect("mount");
        check(&["elton", "up"]).expect("up");
    }

    /// Every argument a user can see says what it is (issue 15, item 12).
    #[test]
    fn every_visible_argument_has_a_description() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for a in cmd.get_arguments() {
                let builtin = matches!(a.get_id().as_str(), "help" | "version");
                if !a.is_hide_set() && !builtin && a.get_help().is_none() {
                    missing.push(format!("{path} {}", a.get_id()));
                }
            }
            for sc in cmd.get_subcommands() {
                if sc.get_name() != "help" {
                    walk(sc, &format!("{path} {}", sc.get_name()), missing);
                }
            }
        }
        let mut cmd = command();
        cmd.build();
        let mut missing = Vec::new();
        walk(&cmd, "elton", &mut missing);
        assert!(missing.is_empty(), "no description: {missing:#?}");
    }

    #[test]
    fn unused_flags_are_not_in_the_help() {
        let mut cmd = command();
        cmd.build();
        let up = cmd.find_subcommand_mut("up").expect("up");
        let help = up.render_help().to_string();
        assert!(!help.contains("--master "), "{help}");
        assert!(!help.contains("--token"), "{help}");
    }
}
