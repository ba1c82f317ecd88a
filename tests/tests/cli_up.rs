#![allow(clippy::unwrap_used)]
//! `elton up` as a newcomer runs it (issue 15): its mount cannot be
//! stacked on (item 1), a second `up` on the same data directory is
//! refused before it prints anything or starts anything (item 6), and
//! `--metrics-listen` serves the master's metrics (item 13).

mod common;

use std::fs;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{KillOnDrop, MountGuard, free_port, is_elton_mount, text, wait_until};

fn up(data: &str, mp: u16, sp: u16, extra: &[&str]) -> Command {
    let mut c = Command::new(common::bin());
    c.args(["up", "--data-dir", data])
        .args(["--master-listen", &format!("127.0.0.1:{mp}")])
        .args(["--slave-listen", &format!("127.0.0.1:{sp}")])
        .args(extra)
        .env_remove("ELTON_MASTER")
        .env_remove("ELTON_TOKEN")
        .stdin(Stdio::null());
    c
}

#[test]
fn phase1_one_up_per_data_dir_and_its_mount_is_not_stacked_on() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("home");
    let data_s = data.to_str().unwrap().to_string();
    let (mp, sp, metrics) = (free_port(), free_port(), free_port());
    let log = fs::File::create(dir.path().join("up.log")).unwrap();
    let _up = KillOnDrop(
        up(
            &data_s,
            mp,
            sp,
            &["--metrics-listen", &format!("127.0.0.1:{metrics}")],
        )
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap(),
    );
    let mnt = data.join("volumes/default");
    let _guard = MountGuard(mnt.clone());
    wait_until("elton up to mount", Duration::from_secs(60), || {
        is_elton_mount(&mnt)
    });

    // The master's metrics, on the asked address.
    let r = reqwest::blocking::get(format!("http://127.0.0.1:{metrics}/metrics")).unwrap();
    assert_eq!(r.status().as_u16(), 200);

    // A mount over up's own mount: refused; up's mount stays.
    let o = Command::new(common::bin())
        .args(["mount", "default", mnt.to_str().unwrap()])
        .args(["--slave-data", data.join("slave").to_str().unwrap()])
        .env("ELTON_SLAVE", format!("http://127.0.0.1:{sp}"))
        .env("ELTON_HOME", &data)
        .output()
        .unwrap();
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("is already an Elton mount (volume default)"),
        "{}",
        text(&o)
    );
    assert!(is_elton_mount(&mnt));

    // A second up on the same data: refused at once, no banner, nothing
    // started (its ports stay free).
    let (mp2, sp2) = (free_port(), free_port());
    let mut second = KillOnDrop(
        up(&data_s, mp2, sp2, &[])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = second.0.try_wait().unwrap() {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "the second elton up kept running"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut out = String::new();
    let mut err = String::new();
    second
        .0
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    second
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(!status.success());
    assert!(!out.contains("Elton is up"), "{out}");
    assert!(err.contains("another `elton up` is running"), "{err}");
    assert!(std::net::TcpListener::bind(("127.0.0.1", sp2)).is_ok());

    // The first one still works end to end.
    fs::write(mnt.join("hello.txt"), b"hello\n").unwrap();
    let o = Command::new(common::bin())
        .args(["commit", mnt.to_str().unwrap(), "-m", "first"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));

    // Someone unmounts up's mount: up says so in its log (plain text, no
    // colour codes: it is a file) and keeps serving.
    let o = Command::new(common::bin())
        .args(["umount", mnt.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let log_path = dir.path().join("up.log");
    wait_until("up to report the unmount", Duration::from_secs(20), || {
        fs::read_to_string(&log_path)
            .is_ok_and(|l| l.contains("was unmounted; the master and the slave keep running"))
    });
    let log = fs::read_to_string(&log_path).unwrap();
    assert!(!log.contains('\u{1b}'), "colour codes in a log file: {log}");
    let r = reqwest::blocking::get(format!(
        "http://127.0.0.1:{sp}/v1/volumes/default/1/hello.txt"
    ))
    .unwrap();
    assert_eq!(r.status().as_u16(), 200);
}
