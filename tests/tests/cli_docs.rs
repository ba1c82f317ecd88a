#![allow(clippy::unwrap_used)]
//! The documentation a newcomer reads agrees with the code (issue 15,
//! item 14): links point at files that exist, the troubleshooting table
//! quotes messages the code prints, and the metrics endpoints are
//! described the same way everywhere.

use std::fs;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn doc(name: &str) -> String {
    fs::read_to_string(root().join("docs").join(name)).unwrap()
}

/// Every Rust source of the crates that print messages.
fn sources() -> String {
    let mut out = String::new();
    let mut stack: Vec<PathBuf> = [
        "eltonfs/src",
        "elton-master/src",
        "elton-slave/src",
        "trust/src",
    ]
    .iter()
    .map(|d| root().join(d))
    .collect();
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push_str(&fs::read_to_string(&p).unwrap());
            }
        }
    }
    out
}

#[test]
fn phase1_relative_links_of_the_docs_exist() {
    let docs = root().join("docs");
    for name in ["architecture.md", "operations.md", "formats.md"] {
        let text = doc(name);
        // Markdown links `](target)` and quoted paths `../x.md`.
        let mut targets: Vec<String> = text
            .split("](")
            .skip(1)
            .filter_map(|t| t.split(')').next())
            .map(|t| t.split('#').next().unwrap_or("").to_string())
            .filter(|t| !t.is_empty() && !t.contains("://"))
            .collect();
        targets.extend(
            text.split('`')
                .filter(|t| t.starts_with("../") && t.ends_with(".md"))
                .map(str::to_string),
        );
        for t in targets {
            assert!(
                docs.join(&t).exists(),
                "{name} points at {t}, which is not in the repository"
            );
        }
    }
}

#[test]
fn phase2_troubleshooting_quotes_messages_the_code_prints() {
    let ops = doc("operations.md");
    let src = sources();
    for stale in [
        "no write token: pass --token",
        "token must be at least 16 characters",
        "update and retry",
    ] {
        assert!(!ops.contains(stale), "operations.md still shows {stale:?}");
        assert!(!src.contains(stale), "the code still prints {stale:?}");
    }
    for (in_docs, in_code) in [
        (
            "no token: pass --token or ELTON_TOKEN",
            "no token: pass --token or ELTON_TOKEN",
        ),
        (
            "no write token: mount with --token",
            "no write token: mount with --token",
        ),
        (
            "printable characters without spaces",
            "printable characters without spaces",
        ),
        (
            "another commit came first",
            "another commit came \\\n         first",
        ),
        ("is already an Elton mount", "is already an Elton mount"),
        (
            "is not an Elton mount; nothing was unmounted",
            "is not an Elton mount; nothing was unmounted",
        ),
        ("a commit needs a message", "a commit needs a message"),
        ("pass --create to create it", "pass --create to create it"),
    ] {
        assert!(ops.contains(in_docs), "operations.md lacks {in_docs:?}");
        assert!(src.contains(in_code), "the code does not print {in_code:?}");
    }
}

#[test]
fn phase3_the_metrics_endpoints_are_described_consistently() {
    let formats = doc("formats.md");
    let ops = doc("operations.md");
    assert!(
        formats.contains("Master `/metrics`"),
        "formats.md: master metrics"
    );
    for d in [&formats, &ops] {
        assert!(!d.contains("no metrics endpoint"));
        assert!(!d.contains("exports no metrics"));
    }
    assert!(ops.contains("--metrics-listen ADDR"));
}
