//! FastContainer end to end, step 1: the configuration DB. `elton app`
//! against a control group of three masters and one slave host: apps are
//! created from a volume at a version, listed by every member, changed,
//! deployed, kept across a leader restart and removed; bad input is refused
//! with a clear error and changes nothing.

mod common;

use std::time::Duration;

use common::group::Group;

const CONVERGE: Duration = Duration::from_secs(60);

fn ls(g: &Group, i: usize) -> serde_json::Value {
    serde_json::from_str(&g.ok(i, &["app", "ls", "--json"])).expect("app ls output")
}

fn show(g: &Group, name: &str) -> serde_json::Value {
    serde_json::from_str(&g.ok(1, &["app", "show", name, "--json"])).expect("app show output")
}

#[test]
fn fastcontainer_config() {
    let mut g = Group::new(3, 1, &[]);
    g.converged(1, CONVERGE);
    phase1_an_app_is_created_from_a_volume_and_every_member_lists_it(&g);
    phase2_bad_input_is_refused_and_changes_nothing(&g);
    phase3_set_and_deploy_change_only_what_they_name(&g);
    phase4_the_configuration_survives_a_leader_restart(&mut g);
    phase5_rm_removes_the_app_and_frees_its_host_name(&g);
}

fn phase1_an_app_is_created_from_a_volume_and_every_member_lists_it(g: &Group) {
    g.import(&[("index.html", "v1")], "site");
    let out = g.ok(
        1,
        &[
            "app",
            "create",
            "web",
            "--host-name",
            "example.test",
            "--volume",
            "site",
            "--cmd",
            "busybox httpd -f -p $PORT",
            "--cpu",
            "30%",
            "--memory",
            "512M",
            "--json",
        ],
    );
    let app: serde_json::Value = serde_json::from_str(&out).expect("create output");
    // No version given: the volume's head, fixed in the group.
    assert_eq!(app["version"], 1, "{app:#}");
    assert_eq!(app["host_name"], "example.test");
    assert_eq!(app["cpu_percent"], 30);
    assert_eq!(app["memory_bytes"], 512u64 << 20);
    // Defaults.
    assert_eq!(app["port_env"], "PORT");
    assert_eq!(app["idle_ms"], 60_000);
    assert_eq!(
        (app["min"].as_u64(), app["max"].as_u64()),
        (Some(0), Some(4))
    );
    assert_eq!(app["scale_at_percent"], 80);
    assert_eq!(app["cooldown_ms"], 30_000);

    g.converged(1, CONVERGE);
    // Read through the log on a follower too: the same configuration.
    let on_m1 = ls(g, 1);
    assert_eq!(on_m1.as_array().map(Vec::len), Some(1), "{on_m1:#}");
    assert_eq!(ls(g, 3), on_m1);
    let text = g.ok(1, &["app", "ls"]);
    assert!(
        text.contains("example.test") && text.contains("site@1"),
        "{text}"
    );
    let text = g.ok(2, &["app", "show", "web"]);
    assert!(text.contains("instances   0 to 4"), "{text}");
}

fn phase2_bad_input_is_refused_and_changes_nothing(g: &Group) {
    let before = ls(g, 1);
    // A valid `create` of "api" with `extra` replacing or adding flags.
    let create = |extra: &[&'static str]| -> Vec<&'static str> {
        let mut a = vec!["app", "create", "api", "--cmd", "serve"];
        if !extra.contains(&"--host-name") {
            a.extend_from_slice(&["--host-name", "api.test"]);
        }
        if !extra.contains(&"--volume") {
            a.extend_from_slice(&["--volume", "site"]);
        }
        a.extend_from_slice(extra);
        a
    };
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "app",
                "create",
                "Api",
                "--host-name",
                "a.test",
                "--volume",
                "site",
                "--cmd",
                "x",
            ],
            "app name",
        ),
        (
            vec!["app", "create", "api", "--volume", "site", "--cmd", "x"],
            "needs --host-name",
        ),
        (
            vec![
                "app",
                "create",
                "api",
                "--host-name",
                "a.test",
                "--cmd",
                "x",
            ],
            "needs --volume",
        ),
        (
            vec![
                "app",
                "create",
                "api",
                "--host-name",
                "a.test",
                "--volume",
                "site",
            ],
            "needs a command",
        ),
        (create(&["--host-name", "Api.Test"]), "lower case"),
        (create(&["--host-name", "api.test:80"]), "no port"),
        (create(&["--volume", "site@0"]), "versions start at 1"),
        (create(&["--volume", "site@x"]), "VOLUME@VERSION"),
        (create(&["--volume", "site@9"]), "has no version 9"),
        (create(&["--volume", "nosuch"]), "nosuch"),
        (create(&["--cpu", "0%"]), "0%"),
        (create(&["--max-cpu", "50%"]), "has none"),
        (create(&["--cpu", "50%", "--max-cpu", "40%"]), "max-cpu 40%"),
        (create(&["--memory", "12X"]), "size"),
        (create(&["--memory", "1K"]), "memory"),
        (create(&["--min", "5"]), "above max"),
        (create(&["--max", "0"]), "max 0"),
        (create(&["--max", "65"]), "max 65"),
        (create(&["--idle", "10ms"]), "idle timeout"),
        (create(&["--idle", "soon"]), "soon"),
        (create(&["--cooldown", "100ms"]), "cooldown"),
        (create(&["--scale-at", "120%"]), "threshold"),
        (create(&["--port-env", "port"]), "port variable"),
        (create(&["--image", "busy box"]), "image"),
        // Conflicts only the group can see.
        (
            vec![
                "app",
                "create",
                "web",
                "--host-name",
                "b.test",
                "--volume",
                "site",
                "--cmd",
                "x",
            ],
            "already exists",
        ),
        (
            create(&["--host-name", "example.test"]),
            "already app \"web\"'s",
        ),
        (vec!["app", "set", "web"], "nothing to change"),
        (vec!["app", "set", "web", "--min", "9"], "above max"),
        (
            vec!["app", "set", "web", "--cpu", "5%", "--unset", "cpu"],
            "both set and unset",
        ),
        (
            vec!["app", "set", "web", "--unset", "cmd"],
            "needs a command",
        ),
        (vec!["app", "set", "web", "--unset", "disk"], "one of cmd"),
        (vec!["app", "set", "nosuch", "--max", "2"], "no app"),
        (
            vec!["app", "deploy", "web", "--version", "7"],
            "has no version 7",
        ),
        (vec!["app", "show", "nosuch"], "no app"),
        (vec!["app", "rm", "nosuch"], "no app"),
    ];
    for (args, says) in cases {
        let err = g.fails(1, &args);
        assert!(
            err.to_lowercase().contains(&says.to_lowercase()),
            "elton {args:?}: {err:?} does not say {says:?}"
        );
    }
    assert_eq!(ls(g, 1), before, "a refused command changed the apps");
}

fn phase3_set_and_deploy_change_only_what_they_name(g: &Group) {
    let before = show(g, "web");
    let out = g.ok(
        1,
        &[
            "app",
            "set",
            "web",
            "--max",
            "8",
            "--idle",
            "90s",
            "--scale-at",
            "50%",
            "--max-cpu",
            "60%",
            "--unset",
            "memory",
            "--json",
        ],
    );
    let app: serde_json::Value = serde_json::from_str(&out).expect("set output");
    assert_eq!(app["max"], 8);
    // A command-version-3 field, accepted once every member reads it.
    assert_eq!(app["cpu_max_percent"], 60);
    assert_eq!(app["idle_ms"], 90_000);
    assert_eq!(app["scale_at_percent"], 50);
    assert!(app.get("memory_bytes").is_none(), "{app:#}");
    for kept in [
        "host_name",
        "volume",
        "version",
        "cmd",
        "cpu_percent",
        "created",
    ] {
        assert_eq!(app[kept], before[kept], "{kept}");
    }
    assert!(app["updated"].as_u64() > before["updated"].as_u64());

    // A deploy is a commit: version 2, then back to 1 by number.
    g.import(&[("index.html", "v2"), ("extra.txt", "x")], "site");
    let app: serde_json::Value =
        serde_json::from_str(&g.ok(1, &["app", "deploy", "web", "--json"])).expect("deploy");
    assert_eq!(app["version"], 2, "{app:#}");
    let app: serde_json::Value =
        serde_json::from_str(&g.ok(1, &["app", "deploy", "web", "--version", "1", "--json"]))
            .expect("deploy");
    assert_eq!(app["version"], 1, "{app:#}");
    assert_eq!(app["max"], 8, "a deploy keeps the settings");
}

fn phase4_the_configuration_survives_a_leader_restart(g: &mut Group) {
    let before = ls(g, 1);
    g.masters[0].restart();
    g.converged(2, CONVERGE);
    assert_eq!(ls(g, 1), before, "after m1 restarted");
    assert_eq!(ls(g, 2), before);
}

fn phase5_rm_removes_the_app_and_frees_its_host_name(g: &Group) {
    let out = g.ok(1, &["app", "rm", "web"]);
    assert!(out.contains("removed app web"), "{out}");
    assert_eq!(ls(g, 2), serde_json::json!([]));
    // Its host name is free for another app.
    g.ok(
        1,
        &[
            "app",
            "create",
            "web2",
            "--host-name",
            "example.test",
            "--volume",
            "site@2",
            "--image",
            "busybox:1.36",
        ],
    );
    let apps = ls(g, 3);
    assert_eq!(apps[0]["name"], "web2", "{apps:#}");
    assert_eq!(apps[0]["version"], 2);
    assert!(apps[0].get("cmd").is_none());
}
