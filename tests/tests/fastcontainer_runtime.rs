//! FastContainer end to end, the instance runtimes: an app's instances see
//! its volume at its version through a read-only Eltonfs mount (a write
//! gets EROFS, the mount cannot be committed or moved), and an app with
//! `--image` runs as a Docker container with that mount as its working
//! directory: it answers, stops when idle (its container removed), starts
//! again, and a proxy killed with SIGKILL leaves no container behind once
//! it runs again. The Docker phases need an engine (`test.sh` starts one,
//! and installs busybox-static for the image, as the plugin test does).

// Test helpers: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::busybox::{IMAGE, ensure_image};
use common::group::Group;
use common::proxy::{ProxyOpts, ProxyProc, containers_of, create_app as create, docker};
use common::wait_until;

const CONVERGE: Duration = Duration::from_secs(60);
const HTTPD: &str = "exec busybox httpd -f -p 127.0.0.1:$PORT -h .";

/// Whether a Docker engine answers here.
fn engine_answers() -> bool {
    docker(&["info"]).is_some_and(|o| o.status.success())
}

#[test]
fn fastcontainer_runtime() {
    let g = Group::new(1, 1, &[]);
    g.converged(1, CONVERGE);
    g.import(&[("index.html", "hello from site v1\n")], "site");
    create(&g, "web", "web.test", HTTPD, &["--idle", "2s"]);
    // Containers take longer to start than processes.
    let args = ["--refresh", "500ms", "--ready-timeout", "20s"];
    let mut p = ProxyProc::start(
        &g,
        ProxyOpts {
            listen_within: Duration::from_secs(30),
            ..ProxyOpts::single(&args, &["site@1", "site@2"])
        },
    );
    phase1_an_app_cannot_write_its_volume(&g, &p);
    if !engine_answers() {
        eprintln!(
            "SKIPPED the Docker phases: no Docker engine answers (`docker info` failed); \
             test.sh starts dockerd"
        );
        return;
    }
    ensure_image(g.dir.path());
    phase2_the_app_as_a_container_answers_idle_stops_and_starts_again(&g, &p);
    phase3_a_missing_image_and_a_container_that_exits_are_502_naming_why(&g, &p);
    phase4_a_killed_proxy_removes_its_containers_on_restart(&g, &mut p);
    phase5_a_proxy_stopped_with_sigterm_removes_its_containers(&p);
}

fn phase1_an_app_cannot_write_its_volume(g: &Group, p: &ProxyProc) {
    let (code, body) = p.get("web.test", "/index.html");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("hello from site v1"), "{body}");
    // An app that tries to change its files: every attempt is refused by
    // the kernel, and its output (the 502's reason) says so.
    create(
        g,
        "scribble",
        "scribble.test",
        "rm index.html; mkdir d; echo x > new.txt; exit 7",
        &[],
    );
    let (code, body) = p.get("scribble.test", "/");
    assert_eq!(code, 502, "{body}");
    for what in ["index.html", "create directory", "new.txt"] {
        let line = body
            .split(" | ")
            .find(|l| l.contains(what))
            .unwrap_or_else(|| panic!("nothing about {what} in {body}"));
        assert!(line.contains("Read-only file system"), "{line}");
    }
    // The same from outside the app: the shared mount is read-only.
    let mount = p.dir.join("mounts/site@1");
    let err = std::fs::write(mount.join("x.txt"), "x").unwrap_err();
    assert_eq!(
        err.raw_os_error(),
        Some(rustix::io::Errno::ROFS.raw_os_error())
    );
    let err = std::fs::remove_file(mount.join("index.html")).unwrap_err();
    assert_eq!(
        err.raw_os_error(),
        Some(rustix::io::Errno::ROFS.raw_os_error())
    );
    // It cannot be moved off its version either.
    let mount_arg = mount.to_str().unwrap();
    let err = g.fails(1, &["checkout", mount_arg, "1"]);
    assert!(err.contains("read-only"), "{err}");
    let err = g.fails(1, &["commit", mount_arg, "-m", "sneaky"]);
    assert!(err.contains("read-only"), "{err}");
    // Nothing changed: the files are the version's.
    let (code, body) = p.get("web.test", "/index.html");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("hello from site v1"), "{body}");
    g.ok(1, &["app", "rm", "scribble"]);
}

/// `docker inspect -f FORMAT ID`, trimmed.
fn inspect(id: &str, format: &str) -> String {
    let out = docker(&["inspect", "-f", format, id]).unwrap();
    assert!(
        out.status.success(),
        "docker inspect {id}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn phase2_the_app_as_a_container_answers_idle_stops_and_starts_again(g: &Group, p: &ProxyProc) {
    assert!(containers_of(&p.dir).is_empty());
    create(
        g,
        "boxed",
        "boxed.test",
        HTTPD,
        &[
            "--image", IMAGE, "--idle", "2s", "--cpu", "50%", "--memory", "64M",
        ],
    );
    let (code, body) = p.get("boxed.test", "/index.html");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("hello from site v1"), "{body}");
    let ids = containers_of(&p.dir);
    assert_eq!(ids.len(), 1, "one container: {ids:?}");
    let id = &ids[0];
    assert_eq!(inspect(id, "{{.State.Running}}"), "true");
    assert_eq!(inspect(id, "{{.Config.WorkingDir}}"), "/app");
    assert_eq!(
        inspect(id, "{{index .Config.Labels \"elton.app\"}}"),
        "boxed"
    );
    assert_eq!(inspect(id, "{{.HostConfig.NanoCpus}}"), "500000000");
    assert_eq!(
        inspect(id, "{{.HostConfig.Memory}}"),
        (64u64 << 20).to_string()
    );
    assert_eq!(
        inspect(id, "{{range .Mounts}}{{.Source}} {{.RW}}{{end}}"),
        format!("{} false", p.dir.join("mounts/site@1").display())
    );
    // Read-only inside the container as well.
    let out = docker(&["exec", id, "sh", "-c", "echo x > /app/new.txt"]).unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Read-only file system"), "{err}");
    // Idle: stopped, and the container removed.
    wait_until(
        "the idle container stopped",
        Duration::from_secs(15),
        || p.metric("elton_proxy_idle_stops_total", "boxed") == 1,
    );
    wait_until("its container removed", Duration::from_secs(10), || {
        containers_of(&p.dir).is_empty()
    });
    assert!(!docker(&["inspect", id]).unwrap().status.success());
    // The next request starts a new one.
    let (code, body) = p.get("boxed.test", "/index.html");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("hello from site v1"), "{body}");
    assert_eq!(p.metric("elton_proxy_starts_total", "boxed"), 2);
    let again = containers_of(&p.dir);
    assert_eq!(again.len(), 1);
    assert_ne!(&again[0], id);
}

fn phase3_a_missing_image_and_a_container_that_exits_are_502_naming_why(g: &Group, p: &ProxyProc) {
    create(
        g,
        "ghost",
        "ghost.test",
        HTTPD,
        &["--image", "elton-e2e-no-such-image:7"],
    );
    let (code, body) = p.get("ghost.test", "/");
    assert_eq!(code, 502, "{body}");
    assert!(
        body.contains("image \"elton-e2e-no-such-image:7\" is not on this host's Docker engine"),
        "{body}"
    );
    create(
        g,
        "boom",
        "boom.test",
        "echo 'boom in a box' >&2; exit 4",
        &["--image", IMAGE],
    );
    let (code, body) = p.get("boom.test", "/");
    assert_eq!(code, 502, "{body}");
    assert!(body.contains("exit code 4"), "{body}");
    assert!(body.contains("boom in a box"), "{body}");
    // The exited container is removed; only the serving one is left.
    wait_until(
        "the exited container removed",
        Duration::from_secs(10),
        || containers_of(&p.dir).len() == 1,
    );
    g.ok(1, &["app", "rm", "ghost"]);
    g.ok(1, &["app", "rm", "boom"]);
}

fn phase4_a_killed_proxy_removes_its_containers_on_restart(g: &Group, p: &mut ProxyProc) {
    let (code, body) = p.get("boxed.test", "/index.html");
    assert_eq!(code, 200, "{body}");
    let before = containers_of(&p.dir);
    assert_eq!(before.len(), 1, "the boxed app runs");
    p.kill_and_restart(g);
    // Removed before the new run serves.
    let now = containers_of(&p.dir);
    assert!(
        before.iter().all(|id| !now.contains(id)),
        "old containers {before:?} still there: {now:?}"
    );
    let (code, body) = p.get("boxed.test", "/index.html");
    assert_eq!(code, 200, "{body}");
    assert_eq!(containers_of(&p.dir).len(), 1);
}

fn phase5_a_proxy_stopped_with_sigterm_removes_its_containers(p: &ProxyProc) {
    let (code, body) = p.get("boxed.test", "/index.html");
    assert_eq!(code, 200, "{body}");
    assert_eq!(containers_of(&p.dir).len(), 1);
    let pid = p.pid().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    wait_until("the proxy exited", Duration::from_secs(20), || {
        !Path::new(&format!("/proc/{pid}/cmdline")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| s.contains(") Z "))
    });
    assert!(
        containers_of(&p.dir).is_empty(),
        "{:?}",
        containers_of(&p.dir)
    );
}
