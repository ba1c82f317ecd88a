//! FastContainer end to end, steps 2 and 4: `elton proxy` on a host of a
//! control group (one master, one slave host). Apps run from an Eltonfs
//! mount of their volume at its version; the proxy routes by `Host`,
//! starts an app on its first request (once, however many wait), stops it
//! when idle, and answers 404 / 502 / 503 / 504 for the bad cases.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::group::Group;
use common::proxy::{ProxyOpts, ProxyProc, create_app as create, instances_under};
use common::{cgroup_dir, raw_http, wait_until};

const CONVERGE: Duration = Duration::from_secs(60);
/// The proxy's readiness deadline in this test.
const READY: Duration = Duration::from_secs(3);
/// Requests a starting app may hold in this test.
const QUEUE: usize = 100;

#[test]
fn fastcontainer_proxy() {
    let g = Group::new(1, 1, &[]);
    g.converged(1, CONVERGE);
    g.import(&[("index.html", "hello from site v1\n")], "site");
    create(
        &g,
        "web",
        "web.test",
        "exec busybox httpd -f -p 127.0.0.1:$PORT -h .",
        &["--idle", "2s"],
    );
    create(
        &g,
        "crash",
        "crash.test",
        "echo 'boom: no config file' >&2; exit 3",
        &[],
    );
    create(&g, "mute", "mute.test", "exec sleep 60", &[]);
    let queue = QUEUE.to_string();
    let args = [
        "--refresh",
        "500ms",
        "--ready-timeout",
        "3s",
        "--queue",
        &queue,
    ];
    let mut p = ProxyProc::start(&g, ProxyOpts::single(&args, &["site@1", "site@2"]));
    phase1_an_unknown_host_is_404_and_metrics_are_served(&p);
    phase2_fifty_concurrent_cold_requests_start_exactly_one_instance(&p);
    phase3_an_idle_instance_stops_and_the_next_request_starts_it_again(&p);
    phase4_an_app_that_exits_at_once_is_502_naming_its_reason(&p);
    phase5_a_port_never_opened_is_504_and_a_full_queue_503(&p);
    phase6_a_new_app_is_served_without_restarting_the_proxy(&g, &p);
    phase7_an_instance_runs_in_its_own_cgroup_with_the_apps_limits(&g, &p);
    phase8_a_deploy_during_a_request_stream_fails_no_request(&g, &p);
    phase9_a_killed_proxy_restarts_clean_and_serves_again(&g, &mut p);
}

fn phase1_an_unknown_host_is_404_and_metrics_are_served(p: &ProxyProc) {
    let (code, body) = p.get("nosuch.test", "/");
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("no app for host \"nosuch.test\""), "{body}");
    let (code, body) = p.get("127.0.0.1", "/metrics");
    assert_eq!(code, 200);
    assert!(
        body.contains("# TYPE elton_proxy_requests_total counter"),
        "{body}"
    );
}

fn phase2_fifty_concurrent_cold_requests_start_exactly_one_instance(p: &ProxyProc) {
    assert!(instances_under(&p.dir).is_empty());
    let port = p.port;
    let threads: Vec<_> = (0..50)
        .map(|_| {
            std::thread::spawn(move || {
                raw_http(
                    port,
                    "GET /index.html HTTP/1.1\r\nHost: Web.Test:8080\r\nConnection: close\r\n\r\n",
                )
            })
        })
        .collect();
    for t in threads {
        let (code, body) = t.join().expect("request thread");
        assert_eq!(code, 200, "{body}");
        assert!(body.contains("hello from site v1"), "{body}");
    }
    assert_eq!(p.metric("elton_proxy_starts_total", "web"), 1);
    assert_eq!(p.metric("elton_proxy_instances", "web"), 1);
    assert_eq!(instances_under(&p.dir).len(), 1, "one process in the mount");
    // Warm: answered by the same instance.
    let (code, body) = p.get("web.test", "/index.html");
    assert_eq!(code, 200, "{body}");
    assert_eq!(p.metric("elton_proxy_starts_total", "web"), 1);
}

fn phase3_an_idle_instance_stops_and_the_next_request_starts_it_again(p: &ProxyProc) {
    let t0 = Instant::now();
    wait_until("the idle instance stopped", Duration::from_secs(15), || {
        p.metric("elton_proxy_idle_stops_total", "web") == 1
    });
    assert!(
        t0.elapsed() >= Duration::from_secs(1),
        "stopped before its 2 s idle timeout"
    );
    wait_until("its process gone", Duration::from_secs(5), || {
        instances_under(&p.dir).is_empty()
    });
    assert_eq!(p.metric("elton_proxy_instances", "web"), 0);
    let (code, body) = p.get("web.test", "/index.html");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("hello from site v1"), "{body}");
    assert_eq!(p.metric("elton_proxy_starts_total", "web"), 2);
}

fn phase4_an_app_that_exits_at_once_is_502_naming_its_reason(p: &ProxyProc) {
    let (code, body) = p.get("crash.test", "/");
    assert_eq!(code, 502, "{body}");
    assert!(body.contains("boom: no config file"), "{body}");
    assert!(body.contains("exit status: 3"), "{body}");
    assert_eq!(p.metric("elton_proxy_start_failures_total", "crash"), 1);
    // The next request tries again (and fails the same way).
    let (code, _) = p.get("crash.test", "/");
    assert_eq!(code, 502);
    assert_eq!(p.metric("elton_proxy_starts_total", "crash"), 2);
}

fn phase5_a_port_never_opened_is_504_and_a_full_queue_503(p: &ProxyProc) {
    let port = p.port;
    let t0 = Instant::now();
    let threads: Vec<_> = (0..QUEUE + 20)
        .map(|_| {
            std::thread::spawn(move || {
                let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
                use std::io::{Read, Write};
                s.write_all(b"GET / HTTP/1.1\r\nHost: mute.test\r\nConnection: close\r\n\r\n")
                    .expect("write");
                let mut buf = String::new();
                let _ = s.read_to_string(&mut buf);
                buf
            })
        })
        .collect();
    let answers: Vec<String> = threads
        .into_iter()
        .map(|t| t.join().expect("request thread"))
        .collect();
    let with = |code: &str| answers.iter().filter(|a| a.starts_with(code)).count();
    let (timeouts, busy) = (with("HTTP/1.1 504"), with("HTTP/1.1 503"));
    assert_eq!(timeouts + busy, QUEUE + 20, "{:?}", answers.first());
    assert!(busy >= 20, "{busy} got 503");
    assert!(timeouts >= 1, "no 504");
    let busy_answer = answers
        .iter()
        .find(|a| a.starts_with("HTTP/1.1 503"))
        .expect("a 503");
    assert!(
        busy_answer.to_ascii_lowercase().contains("retry-after: 1"),
        "{busy_answer}"
    );
    let timeout_answer = answers
        .iter()
        .find(|a| a.starts_with("HTTP/1.1 504"))
        .expect("a 504");
    assert!(
        timeout_answer.contains("did not listen on port"),
        "{timeout_answer}"
    );
    assert!(t0.elapsed() >= READY, "answered before the deadline");
    assert_eq!(p.metric("elton_proxy_starts_total", "mute"), 1);
    // The silent process was stopped at the deadline.
    wait_until("the mute instance stopped", Duration::from_secs(5), || {
        instances_under(&p.dir).is_empty()
            || p.metric("elton_proxy_instances", "web") == 1 && instances_under(&p.dir).len() == 1
    });
}

fn phase6_a_new_app_is_served_without_restarting_the_proxy(g: &Group, p: &ProxyProc) {
    create(
        g,
        "late",
        "late.test",
        "exec busybox httpd -f -p 127.0.0.1:$PORT -h .",
        &[],
    );
    let (code, body) = p.get("late.test", "/index.html");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("hello from site v1"), "{body}");
    // Both apps run from the one mount of site@1.
    let mounts = std::fs::read_dir(p.dir.join("mounts"))
        .expect("mounts dir")
        .count();
    assert_eq!(mounts, 1);
}

fn phase7_an_instance_runs_in_its_own_cgroup_with_the_apps_limits(g: &Group, p: &ProxyProc) {
    if !Path::new("/sys/fs/cgroup/cpu").exists() {
        panic!("this test needs cgroup v1 with the cpu controller at /sys/fs/cgroup/cpu");
    }
    let before = instances_under(&p.dir);
    create(
        g,
        "capped",
        "capped.test",
        // No `exec`: the shell forks the server at once, and the server
        // must be limited as well as the shell.
        "busybox httpd -f -p 127.0.0.1:$PORT -h .",
        &["--cpu", "20%", "--memory", "64M"],
    );
    let (code, body) = p.get("capped.test", "/index.html");
    assert_eq!(code, 200, "{body}");
    let new: Vec<u32> = instances_under(&p.dir)
        .into_iter()
        .filter(|pid| !before.contains(pid))
        .collect();
    assert!(new.len() >= 2, "the shell and the server: {new:?}");
    let pid = new[0];
    let cpu = cgroup_dir(&pid.to_string(), "cpu");
    for other in &new {
        assert_eq!(
            cgroup_dir(&other.to_string(), "cpu"),
            cpu,
            "process {other} of the instance is outside its group"
        );
        assert_eq!(
            cgroup_dir(&other.to_string(), "memory"),
            cgroup_dir(&pid.to_string(), "memory"),
            "process {other} of the instance is outside its memory group"
        );
    }
    assert!(
        cpu.to_string_lossy().contains("/elton-proxy-"),
        "not in the proxy's groups: {}",
        cpu.display()
    );
    let read = |p: PathBuf| {
        std::fs::read_to_string(&p)
            .expect("cgroup file")
            .trim()
            .to_string()
    };
    // 20 % over the instances' 10 ms period.
    assert_eq!(read(cpu.join("cpu.cfs_quota_us")), "2000");
    assert_eq!(read(cpu.join("cpu.cfs_period_us")), "10000");
    assert_eq!(
        read(cgroup_dir(&pid.to_string(), "memory").join("memory.limit_in_bytes")),
        (64u64 << 20).to_string()
    );
    // Removed with the app: its idle instance stops and the group goes.
    g.ok(1, &["app", "rm", "capped"]);
    wait_until(
        "the capped instance stopped",
        Duration::from_secs(10),
        || !instances_under(&p.dir).contains(&pid),
    );
    wait_until("its group removed", Duration::from_secs(5), || {
        !cpu.exists()
    });
}

fn phase8_a_deploy_during_a_request_stream_fails_no_request(g: &Group, p: &ProxyProc) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let stop = Arc::new(AtomicBool::new(false));
    let port = p.port;
    let stream = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut answers = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                answers.push(raw_http(
                    port,
                    "GET /index.html HTTP/1.1\r\nHost: web.test\r\nConnection: close\r\n\r\n",
                ));
                std::thread::sleep(Duration::from_millis(5));
            }
            answers
        })
    };
    wait_until("the stream is answered", Duration::from_secs(10), || {
        let (code, body) = p.get("web.test", "/index.html");
        code == 200 && body.contains("site v1")
    });
    g.import(&[("index.html", "hello from site v2\n")], "site");
    let app: serde_json::Value =
        serde_json::from_str(&g.ok(1, &["app", "deploy", "web", "--json"])).expect("deploy");
    assert_eq!(app["version"], 2, "{app:#}");
    wait_until("answers from version 2", Duration::from_secs(15), || {
        p.get("web.test", "/index.html").1.contains("site v2")
    });
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    let answers = stream.join().expect("stream thread");
    assert!(answers.len() > 20, "only {} requests", answers.len());
    for (code, body) in &answers {
        assert_eq!(*code, 200, "a request failed during the deploy: {body}");
    }
    // Once version 2 answers, only version 2 does.
    let first_v2 = answers
        .iter()
        .position(|(_, b)| b.contains("site v2"))
        .expect("the stream saw version 2");
    assert!(
        answers[first_v2..]
            .iter()
            .all(|(_, b)| b.contains("site v2")),
        "version 1 answered after version 2"
    );
    // The old instance drained and stopped.
    wait_until("one web instance", Duration::from_secs(10), || {
        p.metric("elton_proxy_instances", "web") == 1
    });
}

fn phase9_a_killed_proxy_restarts_clean_and_serves_again(g: &Group, p: &mut ProxyProc) {
    let before = instances_under(&p.dir);
    assert!(!before.is_empty(), "instances are running");
    p.kill_and_restart(g);
    // The new run stopped the old run's instances before serving.
    let now = instances_under(&p.dir);
    assert!(
        before.iter().all(|pid| !now.contains(pid)),
        "old instances {before:?} still run: {now:?}"
    );
    let (code, body) = p.get("web.test", "/index.html");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("hello from site v2"), "{body}");
    assert_eq!(
        p.metric("elton_proxy_starts_total", "web"),
        1,
        "a fresh count"
    );
    assert_eq!(instances_under(&p.dir).len(), 1);
}
