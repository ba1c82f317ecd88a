//! FastContainer end to end, the cluster side: `elton proxy` on three
//! hosts of a control group. Proxies read the apps and the instance
//! registry without the Raft log, report their instances, balance across
//! every host's ready instances, scale out (through the group, which
//! places the instance and holds the cooldown) and up (the instance's CPU
//! quota), and the leader's reconciler restores the desired state after
//! instances, proxies or whole hosts are killed.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::group::Group;
use common::proxy::{ProxyOpts, ProxyProc, create_app, instances_under, kill_all_under};
use common::{cgroup_dir, raw_http, wait_until};

const CONVERGE: Duration = Duration::from_secs(60);
const SERVE: &str = "exec busybox httpd -f -v -p 127.0.0.1:$PORT -h .";

fn create(g: &Group, name: &str, extra: &[&str]) {
    create_app(g, name, &format!("{name}.test"), SERVE, extra);
}

/// Host `h{slave}`'s proxy, through master 2: a follower, which forwards
/// to whichever master leads, so the leader can be killed under it.
fn start_proxy(g: &Group, slave: usize) -> ProxyProc {
    let args = [
        "--refresh",
        "300ms",
        "--report-every",
        "500ms",
        "--ready-timeout",
        "5s",
        "--target-in-flight",
        "1",
    ];
    ProxyProc::start(
        g,
        ProxyOpts {
            host: Some(format!("h{slave}")),
            master: 2,
            slave,
            ..ProxyOpts::single(&args, &["site@1"])
        },
    )
}

/// The master the test's CLI calls go to (2 once the first is killed).
static VIA: AtomicUsize = AtomicUsize::new(1);

/// `elton app show NAME --json`.
fn show(g: &Group, name: &str) -> serde_json::Value {
    let out = g.ok(
        VIA.load(Ordering::Relaxed),
        &["app", "show", name, "--json"],
    );
    serde_json::from_str(out.trim()).expect("app show --json")
}

/// The app's registered instances that serve (starting or ready).
fn serving(g: &Group, name: &str) -> Vec<serde_json::Value> {
    show(g, name)["instances"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|i| i["state"] == "ready" || i["state"] == "starting")
        .collect()
}

fn applied_requests(g: &Group) -> u64 {
    let s = g.status(1).expect("status");
    Group::member(&s, "m1")["applied_requests"]
        .as_u64()
        .expect("applied_requests")
}

/// Clients sending requests for `host` to the proxies at `ports` (round
/// robin) until stopped; counts answers by status.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(ports: &[u16], host: &str, clients: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let threads = (0..clients)
            .map(|c| {
                let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
                let ports = ports.to_vec();
                let req = format!(
                    "GET /index.html HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
                );
                std::thread::spawn(move || {
                    let mut n = c;
                    while !stop.load(Ordering::Relaxed) {
                        let (code, _) = raw_http(ports[n % ports.len()], &req);
                        n += 1;
                        if code == 200 {
                            ok.fetch_add(1, Ordering::Relaxed);
                        } else {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        Self {
            stop,
            ok,
            failed,
            threads,
        }
    }

    /// Stops the clients: (answered 200, failed).
    fn finish(self) -> (usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

#[test]
fn fastcontainer_cluster() {
    let mut g = Group::new(3, 3, &[]);
    g.converged(1, CONVERGE);
    g.import(&[("index.html", "hello from site v1\n")], "site");
    let mut proxies: Vec<ProxyProc> = (1..=3).map(|i| start_proxy(&g, i)).collect();
    phase1_idle_proxies_append_nothing_to_the_log(&g, &proxies);
    phase2_instances_are_registered_and_shown(&g, &proxies);
    phase3_scale_out_under_load_spreads_requests_and_cools_down(&g, &proxies);
    phase4_scale_up_raises_the_quota(&g, &proxies);
    phase5_an_instance_killed_by_hand_is_replaced(&g, &proxies);
    phase6_a_restarted_proxy_picks_its_assignments_up(&g, &mut proxies);
    let gone = phase7_a_silent_hosts_instances_are_rescheduled(&g, &mut proxies);
    phase8_the_leader_killed_during_scaling(&mut g, &proxies, &gone);
}

fn phase1_idle_proxies_append_nothing_to_the_log(g: &Group, proxies: &[ProxyProc]) {
    create(g, "web", &["--idle", "30s"]);
    // Each proxy reports once when it starts (its host joins the
    // registry); then, idle, only reads.
    std::thread::sleep(Duration::from_secs(2));
    let before = applied_requests(g);
    // Ten reads per proxy at --refresh 300ms.
    std::thread::sleep(Duration::from_secs(3));
    let after = applied_requests(g);
    assert_eq!(
        before,
        after,
        "idle proxies appended {} requests in 3 s",
        after - before
    );
    // The new app is known to every proxy without a log read.
    let (code, body) = proxies[0].get("nosuch.test", "/");
    assert_eq!(code, 404, "{body}");
}

fn phase2_instances_are_registered_and_shown(g: &Group, proxies: &[ProxyProc]) {
    let (code, body) = proxies[0].get("web.test", "/index.html");
    assert_eq!(code, 200, "{body}");
    wait_until("the instance registered", CONVERGE, || {
        serving(g, "web").len() == 1
    });
    let inst = serving(g, "web").remove(0);
    assert_eq!(inst["host"], "h1", "{inst}");
    assert_eq!(inst["version"], 1, "{inst}");
    let pid: u32 = inst["id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("a pid as id");
    assert!(instances_under(&proxies[0].dir).contains(&pid), "{inst}");
    assert!(
        inst["addr"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.1:"))
    );
    let text = g.ok(1, &["app", "show", "web"]);
    assert!(text.contains("h1") && text.contains("ready"), "{text}");
    // The other hosts forward to it rather than starting their own (once
    // their next read shows it).
    std::thread::sleep(Duration::from_secs(1));
    let (code, body) = proxies[1].get("web.test", "/index.html");
    assert_eq!(code, 200, "{body}");
    assert!(instances_under(&proxies[1].dir).is_empty());
}

fn phase3_scale_out_under_load_spreads_requests_and_cools_down(g: &Group, proxies: &[ProxyProc]) {
    create(
        g,
        "busy",
        &["--max", "3", "--scale-at", "10%", "--cooldown", "60s"],
    );
    let load = Load::start(&[proxies[0].port], "busy.test", 8);
    wait_until("a second instance on another host", CONVERGE, || {
        serving(g, "busy").len() == 2
    });
    let shown = show(g, "busy");
    let hosts: Vec<&str> = shown["instances"]
        .as_array()
        .expect("instances")
        .iter()
        .filter_map(|i| i["host"].as_str())
        .collect();
    assert!(hosts.contains(&"h1") && hosts.len() == 2, "{shown}");
    assert_eq!(
        shown["assigned"].as_object().map(|o| o.len()),
        Some(1),
        "{shown}"
    );
    let other = proxies
        .iter()
        .find(|p| hosts.contains(&p.host.as_str()) && p.host != "h1")
        .expect("the second host");
    let decided = shown["last_decision_ms"].as_u64().expect("a decision time");
    // Both serve: the first host forwards to the second's instance.
    let remote_before = other.served("busy");
    std::thread::sleep(Duration::from_secs(4));
    let (ok, failed) = load.finish();
    assert!(
        other.served("busy") > remote_before,
        "the second instance took no requests"
    );
    assert!(proxies[0].served("busy") > 0);
    assert_eq!(failed, 0, "{failed} failed of {}", ok + failed);
    // Cooldown: still hot, still two, and no newer decision.
    let shown = show(g, "busy");
    assert_eq!(shown["last_decision_ms"].as_u64(), Some(decided), "{shown}");
    assert_eq!(serving(g, "busy").len(), 2, "{shown}");
    g.ok(1, &["app", "rm", "busy"]);
}

fn phase4_scale_up_raises_the_quota(g: &Group, proxies: &[ProxyProc]) {
    create(
        g,
        "up",
        &[
            "--max",
            "1",
            "--cpu",
            "10%",
            "--scale-at",
            "10%",
            "--cooldown",
            "2s",
        ],
    );
    let load = Load::start(&[proxies[0].port], "up.test", 8);
    wait_until("the quota raised", CONVERGE, || {
        serving(g, "up")
            .first()
            .and_then(|i| i["quota_percent"].as_u64())
            .is_some_and(|q| q > 10)
    });
    let (_, failed) = load.finish();
    assert_eq!(failed, 0);
    let inst = serving(g, "up").remove(0);
    let quota = inst["quota_percent"].as_u64().expect("quota");
    assert!([20, 40].contains(&quota), "doubling from 10%: {inst}");
    // Read back from the cgroup itself.
    let pid: u32 = inst["id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("a pid");
    let read = |f: &str| -> u64 {
        std::fs::read_to_string(cgroup_dir(&pid.to_string(), "cpu").join(f))
            .expect("cgroup file")
            .trim()
            .parse()
            .expect("a number")
    };
    let (us, period) = (read("cpu.cfs_quota_us"), read("cpu.cfs_period_us"));
    assert!(us * 100 / period >= 20, "cfs quota {us} of {period} µs");
    g.ok(1, &["app", "rm", "up"]);
}

fn phase5_an_instance_killed_by_hand_is_replaced(g: &Group, proxies: &[ProxyProc]) {
    // A short idle timeout: instances a proxy starts beside the kept one
    // (below) stop soon; the kept one never does.
    create(g, "keep", &["--min", "1", "--idle", "2s"]);
    // The reconciler places it with no request.
    wait_until("the min instance placed and running", CONVERGE, || {
        serving(g, "keep").len() == 1
    });
    let inst = serving(g, "keep").remove(0);
    let pid = inst["id"].as_str().expect("id").to_string();
    // What the app answers a request with a body (busybox httpd serves no
    // POST to a file): the same answer must come after the kill.
    let (posted, _) = proxies[0].post("keep.test", "/index.html", "a=1");
    assert_ne!(posted, 502);
    let _ = Command::new("kill").args(["-9", &pid]).status();
    // At once, before any registry shows it gone: the proxies find the
    // connection refused and send the request on (another instance, or
    // one they start), its body too; none answers 502.
    for p in proxies {
        let (code, body) = p.post("keep.test", "/index.html", "a=1");
        assert_eq!(
            code, posted,
            "{}: a POST right after the kill: {body}",
            p.host
        );
        let (code, body) = p.get("keep.test", "/index.html");
        assert_eq!(code, 200, "{} right after the kill: {body}", p.host);
    }
    wait_until("a replacement registered", CONVERGE, || {
        serving(g, "keep")
            .first()
            .is_some_and(|i| i["id"].as_str() != Some(pid.as_str()))
    });
    // Every proxy reaches it once its next read shows it (none starts
    // its own).
    std::thread::sleep(Duration::from_secs(1));
    for p in proxies {
        let (code, body) = p.get("keep.test", "/index.html");
        assert_eq!(code, 200, "{body}");
    }
    // Instances started for the requests right after the kill go idle.
    wait_until("only the kept instance left", CONVERGE, || {
        serving(g, "keep").len() == 1
    });
}

/// The host assigned app `keep`'s instance, and that instance's id.
fn assigned_keep(g: &Group) -> (String, String) {
    let shown = show(g, "keep");
    let host = shown["assigned"]
        .as_object()
        .and_then(|o| o.keys().next().cloned())
        .expect("an assignment");
    let id = serving(g, "keep")
        .into_iter()
        .find(|i| i["host"] == host.as_str())
        .and_then(|i| i["id"].as_str().map(str::to_string))
        .expect("its instance");
    (host, id)
}

fn phase6_a_restarted_proxy_picks_its_assignments_up(g: &Group, proxies: &mut [ProxyProc]) {
    let (host, old) = assigned_keep(g);
    let p = proxies
        .iter_mut()
        .find(|p| p.host == host)
        .expect("its proxy");
    p.kill();
    p.restart(g);
    wait_until("the assignment running again", CONVERGE, || {
        serving(g, "keep")
            .iter()
            .any(|i| i["host"] == host.as_str() && i["id"].as_str() != Some(old.as_str()))
    });
    assert!(!alive(&old), "the previous run's instance was reaped");
}

/// Returns the host that went silent.
fn phase7_a_silent_hosts_instances_are_rescheduled(g: &Group, proxies: &mut [ProxyProc]) -> String {
    let (host, _) = assigned_keep(g);
    let p = proxies
        .iter_mut()
        .find(|p| p.host == host)
        .expect("its proxy");
    // The whole host goes: its proxy and its instances.
    p.kill();
    kill_all_under(&p.dir.clone());
    let t0 = Instant::now();
    let lost = || {
        show(g, "keep")["instances"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|i| i["state"] == "lost" && i["host"] == host.as_str())
            .count()
    };
    wait_until(
        "marked lost and rescheduled on another host",
        CONVERGE,
        || {
            lost() == 1
                && serving(g, "keep")
                    .iter()
                    .any(|i| i["host"] != host.as_str())
        },
    );
    assert!(
        t0.elapsed() >= Duration::from_secs(5),
        "lost before the host was silent long"
    );
    eprintln!("rescheduled after {:?}", t0.elapsed());
    // Every live proxy routes to the new instance, none to the lost one.
    for p in proxies.iter().filter(|p| p.host != host) {
        let (code, body) = p.get("keep.test", "/index.html");
        assert_eq!(code, 200, "{} answered {body}", p.host);
    }
    host
}

fn phase8_the_leader_killed_during_scaling(g: &mut Group, proxies: &[ProxyProc], gone: &str) {
    assert_eq!(g.leader(2).as_deref(), Some("m1"));
    // The slaves reach the masters through m1 only (the harness's
    // `--master-url`), so a host mounting the volume for the first time
    // after m1 is killed could not: every live host mounts it now, each
    // through an app of its own that no other host runs.
    for q in proxies.iter().filter(|q| q.host != gone) {
        if common::is_elton_mount(&q.dir.join("mounts/site@1")) {
            continue;
        }
        let name = format!("prime-{}", q.host);
        create(g, &name, &[]);
        let host = format!("{name}.test");
        wait_until("the host mounted the volume", CONVERGE, || {
            q.get(&host, "/index.html").0 == 200
        });
        g.ok(1, &["app", "rm", &name]);
    }
    create(
        g,
        "late",
        &["--max", "3", "--scale-at", "10%", "--cooldown", "60s"],
    );
    let p = proxies
        .iter()
        .find(|p| p.host != gone)
        .expect("a live proxy");
    wait_until("the app served", CONVERGE, || {
        p.get("late.test", "/index.html").0 == 200
    });
    // The leader goes just as the load that makes the app scale begins.
    g.masters[0].kill9();
    VIA.store(2, Ordering::Relaxed);
    let load = Load::start(&[p.port], "late.test", 8);
    wait_until("a new leader", CONVERGE, || {
        g.leader(2).is_some_and(|l| l != "m1")
    });
    wait_until(
        "the second instance despite the lost leader",
        CONVERGE,
        || serving(g, "late").len() == 2,
    );
    std::thread::sleep(Duration::from_secs(2));
    let (ok, failed) = load.finish();
    // The instances serve on while the group elects: nothing fails.
    assert_eq!(failed, 0, "{failed} failed of {}", ok + failed);
    assert_eq!(
        serving(g, "late").len(),
        2,
        "one decision within the cooldown"
    );
}

/// Whether process `pid` runs (a zombie, killed and waiting for a parent
/// to reap it, does not).
fn alive(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = s[s.rfind(')')? + 1..].trim_start().to_string();
            rest.chars().next()
        })
        .is_some_and(|state| state != 'Z' && state != 'X')
}
