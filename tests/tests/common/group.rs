//! A control plane group: N masters of one cluster sharing one CA (made up
//! front with [`Pki`]), each with its own certificate and data, plus slave
//! hosts that join as learners (`--control-listen`). Masters listed in
//! `linked` are reached by the others through a [`Link`] (their advertised
//! control address is the link's), so a test can cut them off.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use elton_tests::link::Link;

use super::{Pki, Proc, TOKEN, bin, free_port, wait_until};

pub const CLUSTER: &str = "ctl";

pub struct Group {
    pub dir: tempfile::TempDir,
    pub pki: Pki,
    pub masters: Vec<Proc>,
    /// Per master: the link in front of its control address, if linked.
    pub links: Vec<Option<Link>>,
    pub slaves: Vec<Proc>,
}

impl Group {
    /// `elton import DIR VOLUME --create` of `files` through master 1 and
    /// the first slave.
    pub fn import(&self, files: &[(&str, &str)], volume: &str) {
        let dir = self.dir.path().join(format!("src-{volume}"));
        std::fs::create_dir_all(&dir).expect("source dir");
        for (name, body) in files {
            std::fs::write(dir.join(name), body).expect("source file");
        }
        let out = std::process::Command::new(super::bin())
            .arg("import")
            .arg(&dir)
            .args([volume, "--create"])
            .env("ELTON_MASTER", self.master_url(1))
            .env("ELTON_SLAVE", self.slaves[0].url())
            .env("ELTON_TOKEN", super::TOKEN)
            .env("ELTON_CA", self.ca())
            .env("ELTON_HOME", self.dir.path().join("home"))
            .output()
            .expect("running elton import");
        assert!(
            out.status.success(),
            "import: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts `masters` masters (the first initialises the group, the others
    /// join as voters) and `slaves` slave hosts (learners), and waits until
    /// every member is in.
    pub fn new(masters: usize, slaves: usize, linked: &[usize]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("token"), TOKEN).expect("token");
        let pki = Pki::new(CLUSTER);
        let mut g = Self {
            dir,
            pki,
            masters: Vec::new(),
            links: Vec::new(),
            slaves: Vec::new(),
        };
        for i in 1..=masters {
            g.start_master(i, linked.contains(&i));
        }
        wait_until("m1 leads", Duration::from_secs(20), || {
            g.status(1).is_some_and(|s| s["leader"] == "m1")
        });
        for i in 2..=masters {
            let addr = g.control_url(i);
            g.ok(
                1,
                &[
                    "control",
                    "join",
                    "--node",
                    &format!("m{i}"),
                    "--addr",
                    &addr,
                ],
            );
        }
        for i in 1..=slaves {
            g.start_slave(i);
        }
        let members = masters + slaves;
        wait_until("every member in", Duration::from_secs(30), || {
            g.status(1)
                .is_some_and(|s| s["members"].as_array().is_some_and(|m| m.len() == members))
        });
        g
    }

    fn issue(&self, node: &str, role: &str, out: &std::path::Path) {
        let o = Command::new(bin())
            .args(["cert", "issue", "--node", node, "--role", role, "--out"])
            .arg(out)
            .arg("--pki")
            .arg(self.pki.dir.path())
            .output()
            .expect("elton cert issue");
        assert!(
            o.status.success(),
            "elton cert issue: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }

    fn start_master(&mut self, i: usize, linked: bool) {
        let port = free_port();
        let name = format!("m{i}");
        let tls = self.dir.path().join(format!("{name}-tls"));
        self.issue(&name, "master", &tls);
        let mut args: Vec<String> = [
            "master",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--id",
            &name,
            "--cluster",
            CLUSTER,
            "--data-dir",
            &self.dir.path().join(&name).display().to_string(),
            "--tls-dir",
            &tls.display().to_string(),
            "--bootstrap-token-file",
            &self.dir.path().join("token").display().to_string(),
            "--heartbeat-ms",
            "200",
            "--control-heartbeat-ms",
            "50",
            "--control-election-min-ms",
            "400",
            "--control-election-max-ms",
            "800",
            "--control-rpc-timeout-ms",
            "1000",
            // Small, so that a member cut off for a few dozen commands
            // must be caught up by a snapshot.
            "--control-snapshot-every",
            "20",
            "--control-keep-logs",
            "5",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if i == 1 {
            args.push("--control-init".into());
        }
        let link = linked.then(|| {
            Link::start(format!("127.0.0.1:{port}").parse().expect("addr")).expect("link")
        });
        if let Some(l) = &link {
            args.push("--control-advertise".into());
            args.push(format!("https://{}", l.addr()));
        }
        let log = self.dir.path().join(format!("{name}.log"));
        self.masters.push(Proc::spawn(args, port, log));
        self.links.push(link);
    }

    fn start_slave(&mut self, i: usize) {
        let port = free_port();
        let control = free_port();
        let name = format!("slave{i}");
        let data = self.dir.path().join(&name);
        let tls = data.join("tls");
        self.issue(&name, "slave", &tls);
        let args: Vec<String> = [
            "slave",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
            &data.display().to_string(),
            "--master-url",
            &self.master_url(1),
            "--node-id",
            &name,
            "--tls-dir",
            &tls.display().to_string(),
            "--control-listen",
            &format!("127.0.0.1:{control}"),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let log = self.dir.path().join(format!("{name}.log"));
        self.slaves.push(Proc::spawn(args, port, log));
    }

    pub fn master_url(&self, i: usize) -> String {
        format!("https://127.0.0.1:{}", self.masters[i - 1].port)
    }

    /// Where the other members reach master `i` (through its link, if any).
    pub fn control_url(&self, i: usize) -> String {
        match &self.links[i - 1] {
            Some(l) => format!("https://{}", l.addr()),
            None => self.master_url(i),
        }
    }

    pub fn ca(&self) -> PathBuf {
        self.pki.ca()
    }

    /// The CLI against master `i`, with the admin token.
    pub fn cli(&self, i: usize, args: &[&str]) -> Output {
        Command::new(bin())
            .args(args)
            .env("ELTON_MASTER", self.master_url(i))
            .env("ELTON_TOKEN", TOKEN)
            .env("ELTON_CA", self.ca())
            .env("ELTON_HOME", self.dir.path().join("home"))
            .output()
            .expect("running elton")
    }

    pub fn ok(&self, i: usize, args: &[&str]) -> String {
        let out = self.cli(i, args);
        assert!(
            out.status.success(),
            "elton {args:?} against m{i} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The CLI's stderr, asserting it failed.
    pub fn fails(&self, i: usize, args: &[&str]) -> String {
        let out = self.cli(i, args);
        assert!(
            !out.status.success(),
            "elton {args:?} against m{i} succeeded: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// `elton control status --json` from master `i`; `None` while it
    /// does not answer.
    pub fn status(&self, i: usize) -> Option<serde_json::Value> {
        let out = self.cli(i, &["control", "status", "--json"]);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// Submits a command through master `i`; returns the response JSON.
    pub fn submit(&self, i: usize, client: &str, seq: u64, command: &str) -> serde_json::Value {
        let out = self.ok(
            i,
            &[
                "control",
                "submit",
                command,
                "--client",
                client,
                "--seq",
                &seq.to_string(),
                "--json",
            ],
        );
        serde_json::from_str(&out).expect("submit output")
    }

    /// The member rows of a status, by name.
    pub fn member<'a>(status: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
        status["members"]
            .as_array()
            .and_then(|m| m.iter().find(|m| m["name"] == name))
            .unwrap_or_else(|| panic!("no member {name} in {status}"))
    }

    /// Waits until master `i` sees every member answer with the same
    /// applied index and state digest; returns that status.
    pub fn converged(&self, i: usize, timeout: Duration) -> serde_json::Value {
        let mut last = None;
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Some(s) = self.status(i) {
                let members = s["members"].as_array().cloned().unwrap_or_default();
                let same = |f: &str| members.windows(2).all(|w| w[0][f] == w[1][f]);
                let answered = members.iter().all(|m| m["error"].is_null());
                if !members.is_empty()
                    && answered
                    && same("last_applied")
                    && same("state_digest")
                    && !s["leader"].is_null()
                {
                    return s;
                }
                last = Some(s);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("members did not converge; last status: {last:#?}");
    }

    /// As [`Group::converged`] from m1, ignoring member `down` (which must be
    /// unreachable).
    pub fn converged_without(&self, down: &str, timeout: Duration) -> serde_json::Value {
        let deadline = std::time::Instant::now() + timeout;
        let mut last = None;
        while std::time::Instant::now() < deadline {
            if let Some(s) = self.status(1) {
                let members: Vec<_> = s["members"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|m| m["name"] != down)
                    .collect();
                let same = |f: &str| members.windows(2).all(|w| w[0][f] == w[1][f]);
                if Self::member(&s, down)["state"] == "unreachable"
                    && members.iter().all(|m| m["error"].is_null())
                    && same("last_applied")
                {
                    return s;
                }
                last = Some(s);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("members did not converge without {down}; last status: {last:#?}");
    }

    /// The name of the current leader, as master `i` sees it.
    pub fn leader(&self, i: usize) -> Option<String> {
        self.status(i)
            .and_then(|s| s["leader"].as_str().map(str::to_string))
    }
}

impl Drop for Group {
    /// On failure, show the tail of every process log.
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        super::print_log_tails(self.dir.path(), 25);
    }
}
