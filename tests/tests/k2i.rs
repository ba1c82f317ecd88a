//! k2i end to end: `elton ps` across the control group (two masters, two
//! slave hosts; real processes with mutual TLS and tokens). Every host of
//! a test run shares this machine's `/proc`, so every host lists the same
//! marker processes; what is checked is that each host answers for itself,
//! tagged by its name, and that a silent host is reported missing by the
//! deadline.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::group::Group;

const CONVERGE: Duration = Duration::from_secs(60);

/// A `sleep` whose argv[0] is `marker`, killed on drop.
struct Marker(Child);

impl Marker {
    fn start(marker: &str) -> Self {
        let child = Command::new("bash")
            .args(["-c", &format!("exec -a {marker} sleep 600")])
            .stdin(Stdio::null())
            .spawn()
            .expect("starting a marker process");
        // `spawn` returns once bash runs; until bash has exec'd `sleep` the
        // process is `bash -c …` (and for a moment mid-exec has no command
        // line at all), which a query made right now would list unlike a
        // marker.
        let cmdline = format!("/proc/{}/cmdline", child.id());
        let deadline = Instant::now() + Duration::from_secs(10);
        while !std::fs::read(&cmdline).is_ok_and(|c| c.starts_with(marker.as_bytes())) {
            assert!(Instant::now() < deadline, "marker {marker} never exec'd");
            std::thread::sleep(Duration::from_millis(5));
        }
        Marker(child)
    }

    fn pid(&self) -> i32 {
        i32::try_from(self.0.id()).expect("pid")
    }
}

impl Drop for Marker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn ps_json(g: &Group, master: usize, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["ps", "--json"];
    all.extend_from_slice(args);
    let out = g.ok(master, &all);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("elton ps output {out:?}: {e}"))
}

fn pids(answer: &serde_json::Value) -> Vec<i64> {
    procs(answer)
        .iter()
        .map(|p| p["pid"].as_i64().expect("pid"))
        .collect()
}

/// The marker processes of an answer: a `--name` query also finds the
/// `elton ps` (or `curl`) that carries the name in its own command line.
fn procs(answer: &serde_json::Value) -> Vec<serde_json::Value> {
    answer["procs"]
        .as_array()
        .unwrap_or_else(|| panic!("no process list in {answer}"))
        .iter()
        .filter(|p| p["name"] != "elton" && p["name"] != "elton-e2e" && p["name"] != "curl")
        .cloned()
        .collect()
}

#[test]
fn k2i() {
    let mut g = Group::new(2, 2, &[]);
    g.converged(1, CONVERGE);
    let tag = format!("elton-k2i-{}", std::process::id());
    let a = Marker::start(&format!("{tag}-a"));
    let b = Marker::start(&format!("{tag}-b"));
    phase1_ps_all_from_a_follower_tags_every_host(&g, &tag, &a, &b);
    phase2_filters_and_one_host(&g, &tag, &a);
    phase3_bad_input_is_refused(&g);
    phase4_http_json_on_a_master(&g, &tag, &a);
    phase5_a_stopped_host_is_missing_by_the_deadline(&mut g, &tag);
}

fn phase1_ps_all_from_a_follower_tags_every_host(g: &Group, tag: &str, a: &Marker, b: &Marker) {
    assert_eq!(g.leader(2).as_deref(), Some("m1"));
    let r = ps_json(g, 2, &["--all", "--name", tag]);
    let hosts = r["hosts"].as_object().expect("hosts");
    let names: Vec<&str> = hosts.keys().map(String::as_str).collect();
    assert_eq!(names, ["m1", "m2", "slave1", "slave2"], "{r:#}");
    assert_eq!(r["missing"], serde_json::json!([]), "{r:#}");
    for (host, answer) in hosts {
        let mut got = pids(answer);
        got.sort_unstable();
        let mut want = vec![i64::from(a.pid()), i64::from(b.pid())];
        want.sort_unstable();
        assert_eq!(got, want, "{host}: {answer:#}");
        for p in procs(answer) {
            assert_eq!(p["ppid"], std::process::id(), "{p}");
            assert_eq!(p["user"], "root", "{p}");
            assert_eq!(p["name"], "sleep", "{p}");
            assert!(
                p["cmdline"][0].as_str().is_some_and(|c| c.starts_with(tag)),
                "{p}"
            );
            assert!(p["rss_bytes"].as_u64().is_some_and(|r| r > 0), "{p}");
            assert!(
                p["cgroups"].as_array().is_some_and(|c| !c.is_empty()),
                "{p}"
            );
        }
    }
    // The table names the hosts and the commands.
    let text = g.ok(2, &["ps", "--all", "--name", tag]);
    for needle in ["slave1", "slave2", "m1", &format!("{tag}-a 600")] {
        assert!(text.contains(needle), "{needle} missing from {text}");
    }
}

fn phase2_filters_and_one_host(g: &Group, tag: &str, a: &Marker) {
    let pid = a.pid().to_string();
    let r = ps_json(g, 1, &["--host", "slave1", "--pid", &pid]);
    let hosts = r["hosts"].as_object().expect("hosts");
    assert_eq!(hosts.len(), 1, "{r:#}");
    assert_eq!(pids(&r["hosts"]["slave1"]), [i64::from(a.pid())], "{r:#}");
    // Without --host, the master asked answers for its own host.
    let r = ps_json(g, 2, &["--name", &format!("{tag}-b")]);
    assert_eq!(
        r["hosts"]
            .as_object()
            .map(|h| h.keys().cloned().collect::<Vec<_>>()),
        Some(vec!["m2".to_string()]),
        "{r:#}"
    );
    // The cgroup filter takes the marker's own memory cgroup, and a cgroup
    // nobody is in lists nothing.
    let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup file");
    let path = cg
        .lines()
        .find_map(|l| l.splitn(3, ':').nth(2).filter(|p| p.starts_with('/')))
        .expect("a cgroup path");
    let r = ps_json(g, 1, &["--host", "m1", "--pid", &pid, "--cgroup", path]);
    assert_eq!(pids(&r["hosts"]["m1"]), [i64::from(a.pid())], "{r:#}");
    let r = ps_json(
        g,
        1,
        &[
            "--host",
            "m1",
            "--pid",
            &pid,
            "--cgroup",
            "/no-such-elton-group",
        ],
    );
    assert!(pids(&r["hosts"]["m1"]).is_empty(), "{r:#}");
    // An unknown pid is an empty list, not an error.
    let r = ps_json(g, 1, &["--all", "--pid", "2147483647"]);
    for (host, answer) in r["hosts"].as_object().expect("hosts") {
        assert!(pids(answer).is_empty(), "{host}: {r:#}");
    }
    // Everything: pid 1 is on every host.
    let r = ps_json(g, 1, &["--host", "slave2"]);
    assert!(pids(&r["hosts"]["slave2"]).contains(&1), "{r:#}");
}

fn phase3_bad_input_is_refused(g: &Group) {
    let before = g.converged(1, CONVERGE);
    let applied = Group::member(&before, "m1")["applied_requests"].clone();
    for (args, says) in [
        (vec!["ps", "--pid", "0"], "positive"),
        (vec!["ps", "--pid=-3"], "positive"),
        (vec!["ps", "--cgroup", "relative"], "starts with /"),
        (vec!["ps", "--name", ""], "empty"),
        (vec!["ps", "--window", "1h"], "window"),
        (vec!["ps", "--host", "nobody"], "not a member"),
        (vec!["ps", "--all", "--host", "m1"], "cannot be used with"),
    ] {
        let err = g.fails(1, &args);
        assert!(err.contains(says), "{args:?}: {err}");
    }
    // Nothing was proposed (client requests, not the blank entry of an
    // election a loaded machine may hold meanwhile).
    let after = g.converged(1, CONVERGE);
    assert_eq!(
        Group::member(&after, "m1")["applied_requests"],
        applied,
        "{after:#}"
    );
}

/// `GET` of a master's k2i route with curl (HTTP/2 over TLS, the
/// group's CA, the name in the master's certificate); returns the HTTP
/// status and the JSON body.
fn http(g: &Group, master: usize, path: &str, token: Option<&str>) -> (u16, serde_json::Value) {
    // A master's certificate names its role, not its address.
    let port = g.masters[master - 1].port;
    let url = format!("https://elton-master:{port}{path}");
    let ca = g.ca();
    let mut args = vec![
        "-sS".to_string(),
        "--resolve".into(),
        format!("elton-master:{port}:127.0.0.1"),
        "--cacert".into(),
        ca.display().to_string(),
        "-w".into(),
        "\n%{http_code}".into(),
    ];
    if let Some(t) = token {
        args.push("-H".into());
        args.push(format!("Authorization: Bearer {t}"));
    }
    args.push(url);
    let out = Command::new("curl")
        .args(&args)
        .output()
        .expect("running curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or_else(|| {
        panic!(
            "curl {path}: {text:?} {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let code: u16 = code
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("status in {text:?}"));
    let json = serde_json::from_str(body).unwrap_or_else(|e| {
        panic!(
            "{path}: HTTP {code}, {body:?}: {e}; curl: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (code, json)
}

fn phase4_http_json_on_a_master(g: &Group, tag: &str, a: &Marker) {
    let before = g.converged(1, CONVERGE);
    let applied = Group::member(&before, "m1")["applied_requests"].clone();
    let made = g.ok(
        1,
        &[
            "token", "create", "--name", "k2i-read", "--scope", "read", "--json",
        ],
    );
    let made: serde_json::Value = serde_json::from_str(&made).expect("token json");
    let read = made["secret"].as_str().expect("secret").to_string();
    let read = read.as_str();
    // k2i's paths, with the host selector; the same JSON as `elton ps`.
    let (code, r) = http(g, 1, &format!("/v1/proc/cmd/{tag}?all=1"), Some(read));
    assert_eq!(code, 200, "{r:#}");
    let names: Vec<&str> = r["hosts"]
        .as_object()
        .expect("hosts")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(names, ["m1", "m2", "slave1", "slave2"], "{r:#}");
    assert_eq!(r["missing"], serde_json::json!([]), "{r:#}");
    assert!(
        r["hosts"]
            .as_object()
            .expect("hosts")
            .values()
            .all(|h| pids(h).len() == 2),
        "{r:#}"
    );
    let (code, r) = http(
        g,
        1,
        &format!("/v1/proc/{}?host=slave1,m2", a.pid()),
        Some(read),
    );
    assert_eq!(code, 200, "{r:#}");
    assert_eq!(pids(&r["hosts"]["slave1"]), [i64::from(a.pid())], "{r:#}");
    assert_eq!(pids(&r["hosts"]["m2"]), [i64::from(a.pid())], "{r:#}");
    // No host named: the master asked answers for itself, all processes.
    let (code, r) = http(g, 1, "/v1/proc", Some(read));
    assert_eq!(code, 200, "{r:#}");
    assert!(pids(&r["hosts"]["m1"]).contains(&1), "{r:#}");
    // Token-protected like every other call, and bad input is refused.
    for (path, token, want) in [
        ("/v1/proc".to_string(), None, 401),
        ("/v1/proc".to_string(), Some("not-a-token"), 401),
        ("/v1/proc/abc".to_string(), Some(read), 400),
        ("/v1/proc/0".to_string(), Some(read), 400),
        ("/v1/proc?host=nobody".to_string(), Some(read), 404),
        ("/v1/proc?all=1&host=m1".to_string(), Some(read), 400),
        ("/v1/proc?bogus=1".to_string(), Some(read), 400),
        ("/v1/proc?window_ms=60000".to_string(), Some(read), 400),
    ] {
        let (code, r) = http(g, 1, &path, token);
        assert_eq!(code, want, "{path}: {r:#}");
        assert!(
            r["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{path}: {r:#}"
        );
    }
    // Queries are reads: neither these nor `elton ps` went through the log.
    ps_json(g, 2, &["--all", "--name", tag]);
    let after = g.converged(1, CONVERGE);
    let after_applied = &Group::member(&after, "m1")["applied_requests"];
    assert_eq!(*after_applied, applied, "{after:#}");
}

fn phase5_a_stopped_host_is_missing_by_the_deadline(g: &mut Group, tag: &str) {
    g.slaves[1].kill9();
    g.converged_without("slave2", CONVERGE);
    let started = Instant::now();
    let r = ps_json(g, 2, &["--all", "--name", tag, "--deadline", "2s"]);
    let took = started.elapsed();
    assert_eq!(r["missing"], serde_json::json!(["slave2"]), "{r:#}");
    let hosts = r["hosts"].as_object().expect("hosts");
    assert_eq!(hosts.len(), 3, "{r:#}");
    assert!(hosts.values().all(|h| pids(h).len() == 2), "{r:#}");
    assert!(took < Duration::from_secs(8), "took {took:?}");
    // Back up, it answers again.
    g.slaves[1].restart();
    g.converged(1, CONVERGE);
    let r = ps_json(g, 2, &["--host", "slave2", "--name", tag]);
    assert_eq!(pids(&r["hosts"]["slave2"]).len(), 2, "{r:#}");
}
