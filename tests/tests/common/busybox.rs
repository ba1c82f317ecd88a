//! The busybox image the Docker tests run (the plugin test, the
//! FastContainer Docker runtime): built with `docker import` from Debian's
//! busybox-static, so no registry is needed.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output, Stdio};

pub const IMAGE: &str = "elton-e2e-busybox:1";

fn docker(args: &[&str]) -> std::io::Result<Output> {
    Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
}

/// A tiny image from Debian's busybox-static: /bin/busybox plus the applets
/// the tests use.
pub fn ensure_image(dir: &Path) {
    if docker(&["image", "inspect", IMAGE]).is_ok_and(|o| o.status.success()) {
        return;
    }
    let root = dir.join("rootfs");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::create_dir_all(root.join("data")).unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))
        .expect("/bin/busybox (test.sh installs busybox-static)");
    for applet in ["sh", "cat", "echo", "sleep", "ls", "true"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    let tar = dir.join("rootfs.tar");
    let status = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success(), "tar of the busybox rootfs");
    let out = docker(&["import", tar.to_str().unwrap(), IMAGE]).expect("running docker");
    assert!(
        out.status.success(),
        "docker import: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
