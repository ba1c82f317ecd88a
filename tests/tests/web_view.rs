#![allow(clippy::unwrap_used)]
//! The web view, loaded by a real headless browser (Debian's `chromium`):
//! the page of a volume lists its versions and renders the history graph,
//! a screenshot goes to the test's output directory, and the browser logs
//! no console message. The other pages answer with what they promise.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Cluster, raw_http};

/// A volume with three versions: import, then two edits with messages.
fn volume_with_history(c: &Cluster) {
    let src = c.dir.path().join("src");
    fs::create_dir_all(src.join("docs")).unwrap();
    fs::write(src.join("index.html"), "<h1>hello</h1>\n").unwrap();
    fs::write(src.join("docs/guide.md"), "guide\n").unwrap();
    let imp = |msg: &str| {
        c.ok(
            1,
            &[
                "import",
                src.to_str().unwrap(),
                "site",
                "-m",
                msg,
                "--create",
            ],
        )
    };
    imp("first import");
    fs::write(src.join("index.html"), "<h1>hello, world</h1>\n").unwrap();
    fs::write(src.join("docs/new <page>.md"), "new\n").unwrap();
    c.ok(
        1,
        &[
            "import",
            src.to_str().unwrap(),
            "site",
            "-m",
            "second: new page",
        ],
    );
    fs::remove_file(src.join("docs/guide.md")).unwrap();
    c.ok(
        1,
        &[
            "import",
            src.to_str().unwrap(),
            "site",
            "-m",
            "third: drop the guide",
        ],
    );
}

fn out_dir() -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join("web_view");
    fs::create_dir_all(&d).unwrap();
    d
}

/// Runs headless Chromium on `url` with `args`; returns (stdout, stderr).
fn chromium(url: &str, args: &[&str]) -> (String, String) {
    let profile = tempfile::tempdir().unwrap();
    // Bounded: a hung browser fails the test instead of stalling it.
    let out = Command::new("timeout")
        .args([
            "90",
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
            "--enable-logging=stderr",
            "--v=0",
            "--window-size=1200,1400",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(url)
        .output()
        .expect("chromium (test.sh installs Debian's chromium)");
    assert!(
        out.status.success(),
        "chromium: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn console_lines(stderr: &str) -> Vec<&str> {
    stderr.lines().filter(|l| l.contains(":CONSOLE")).collect()
}

#[test]
fn phase1_a_browser_sees_the_versions_and_the_graph_without_console_errors() {
    let c = Cluster::new(1);
    volume_with_history(&c);
    let url = format!("{}/ui/volumes/site", c.slave_url(1));

    let (dom, stderr) = chromium(&url, &["--dump-dom"]);
    assert!(dom.contains("<h1>Volume site</h1>"), "{dom}");
    assert!(dom.contains("class=\"history\""), "the graph: {dom}");
    assert_eq!(dom.matches("<circle").count(), 3, "one dot per version");
    assert_eq!(dom.matches("<tr class=\"version\">").count(), 3);
    for msg in ["first import", "second: new page", "third: drop the guide"] {
        assert!(dom.contains(msg), "{msg} in {dom}");
    }
    assert!(console_lines(&stderr).is_empty(), "{stderr}");

    let shot = out_dir().join("volume.png");
    let _ = fs::remove_file(&shot);
    let (_, stderr) = chromium(&url, &[&format!("--screenshot={}", shot.display())]);
    let png = fs::read(&shot).unwrap_or_else(|e| panic!("{}: {e}\n{stderr}", shot.display()));
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 5_000,
        "a real picture"
    );
    assert!(console_lines(&stderr).is_empty(), "{stderr}");
}

#[test]
fn phase2_overview_version_diff_and_tree_pages() {
    let c = Cluster::new(1);
    volume_with_history(&c);
    let base = c.slave_url(1);

    let (dom, stderr) = chromium(&format!("{base}/"), &["--dump-dom"]);
    assert!(dom.contains("href=\"/ui/volumes/site\""), "{dom}");
    assert!(
        dom.contains("id=\"nodes\"") && dom.contains("slave1"),
        "{dom}"
    );
    assert!(dom.contains("<span class=\"ok\">up</span>"), "{dom}");
    assert!(dom.contains("WAN traffic per peer"), "{dom}");
    assert!(console_lines(&stderr).is_empty(), "{stderr}");
    let shot = out_dir().join("overview.png");
    chromium(
        &format!("{base}/"),
        &[&format!("--screenshot={}", shot.display())],
    );
    assert!(shot.exists());

    // Version 2 against version 1: one file changed, one added (escaped).
    let (dom, _) = chromium(&format!("{base}/ui/volumes/site/2"), &["--dump-dom"]);
    assert!(dom.contains("second: new page"), "{dom}");
    assert!(
        dom.contains("<td class=\"M\">M</td><td><code>index.html</code>"),
        "{dom}"
    );
    assert!(
        dom.contains("<td class=\"A\">A</td><td><code>docs/new &lt;page&gt;.md</code>"),
        "{dom}"
    );
    // Version 3 deleted the guide.
    let (dom, _) = chromium(&format!("{base}/ui/volumes/site/3"), &["--dump-dom"]);
    assert!(
        dom.contains("<td class=\"D\">D</td><td><code>docs/guide.md</code>"),
        "{dom}"
    );

    // Browsing a directory of version 2; files link to the CDN URLs.
    let (dom, _) = chromium(
        &format!("{base}/ui/volumes/site/2/tree/docs"),
        &["--dump-dom"],
    );
    assert!(
        dom.contains("href=\"/v1/volumes/site/2/docs/guide.md\""),
        "{dom}"
    );
    assert!(
        dom.contains("href=\"/v1/volumes/site/2/docs/new%20%3Cpage%3E.md\""),
        "{dom}"
    );

    // Errors are pages with their status; the view is read-only.
    let port = c.slaves[0].port;
    let (code, body) = raw_http(port, "GET /ui/volumes/nope HTTP/1.0\r\n\r\n");
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("unknown volume"), "{body}");
    let (code, _) = raw_http(port, "GET /ui/volumes/site/x HTTP/1.0\r\n\r\n");
    assert_eq!(code, 400);
    let (code, _) = raw_http(port, "POST / HTTP/1.0\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(code, 405);
}
