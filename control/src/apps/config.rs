//! The configuration DB's rules (pure): what creating, changing or
//! removing an app does to the apps already there. `state::apply` calls
//! these with the applied log index; an `Err` is the reason the command is
//! rejected, and nothing changes.

use std::collections::BTreeMap;

use super::spec::{App, AppPatch, AppSpec, MAX_APPS};

/// Adds `spec` as a new app (created at log `index`).
pub fn create(apps: &BTreeMap<String, App>, spec: &AppSpec, index: u64) -> Result<App, String> {
    spec.validate()?;
    if apps.contains_key(&spec.name) {
        return Err(format!(
            "app {:?} already exists (change it with `elton app set`)",
            spec.name
        ));
    }
    if apps.len() >= MAX_APPS {
        return Err(format!(
            "the group already has {MAX_APPS} apps, the most it keeps"
        ));
    }
    host_free(apps, &spec.host_name, &spec.name)?;
    Ok(App {
        spec: spec.clone(),
        created: index,
        updated: index,
    })
}

/// App `name` with `patch` applied (changed at log `index`); the whole
/// result is checked again.
pub fn update(
    apps: &BTreeMap<String, App>,
    name: &str,
    patch: &AppPatch,
    index: u64,
) -> Result<App, String> {
    patch.validate()?;
    let app = apps.get(name).ok_or_else(|| no_app(name))?;
    let spec = app.spec.patched(patch);
    spec.validate()?;
    host_free(apps, &spec.host_name, name)?;
    Ok(App {
        spec,
        created: app.created,
        updated: index,
    })
}

/// Checks that app `name` exists, so removing it is meaningful.
pub fn remove(apps: &BTreeMap<String, App>, name: &str) -> Result<(), String> {
    if apps.contains_key(name) {
        Ok(())
    } else {
        Err(no_app(name))
    }
}

/// The app whose host name is `host` (a request's `Host`, any case, with
/// or without a port).
pub fn by_host<'a>(apps: &'a BTreeMap<String, App>, host: &str) -> Option<&'a App> {
    let host = host
        .rsplit_once(':')
        .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
        .map_or(host, |(h, _)| h)
        .trim_end_matches('.')
        .to_ascii_lowercase();
    apps.values().find(|a| a.spec.host_name == host)
}

fn host_free(apps: &BTreeMap<String, App>, host: &str, name: &str) -> Result<(), String> {
    match apps
        .values()
        .find(|a| a.spec.host_name == host && a.spec.name != name)
    {
        Some(other) => Err(format!(
            "host name {host:?} is already app {:?}'s",
            other.spec.name
        )),
        None => Ok(()),
    }
}

fn no_app(name: &str) -> String {
    format!("no app {name:?} (see `elton app ls`)")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, host: &str) -> AppSpec {
        let mut s = AppSpec::new(name, host, "site", 1);
        s.cmd = Some("serve".into());
        s
    }

    fn with(apps: &[(&str, &str)]) -> BTreeMap<String, App> {
        apps.iter()
            .enumerate()
            .map(|(i, (n, h))| {
                let i = i as u64 + 1;
                (
                    n.to_string(),
                    create(&BTreeMap::new(), &spec(n, h), i).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn create_records_the_index_and_refuses_duplicates() {
        let apps = with(&[("web", "a.test")]);
        let app = create(&apps, &spec("api", "b.test"), 7).unwrap();
        assert_eq!((app.created, app.updated), (7, 7));
        assert!(
            create(&apps, &spec("web", "c.test"), 8)
                .unwrap_err()
                .contains("already exists")
        );
        assert!(
            create(&apps, &spec("api", "a.test"), 8)
                .unwrap_err()
                .contains("already app \"web\"'s")
        );
        let mut bad = spec("api", "b.test");
        bad.max = 0;
        assert!(create(&apps, &bad, 8).is_err());
    }

    #[test]
    fn update_keeps_creation_and_checks_the_result() {
        let apps = with(&[("web", "a.test"), ("api", "b.test")]);
        let p = AppPatch {
            version: Some(5),
            ..AppPatch::default()
        };
        let app = update(&apps, "web", &p, 9).unwrap();
        assert_eq!((app.created, app.updated, app.spec.version), (1, 9, 5));
        // Its own host name again is no conflict; another app's is.
        let same = AppPatch {
            host_name: Some("a.test".into()),
            ..AppPatch::default()
        };
        update(&apps, "web", &same, 9).unwrap();
        let taken = AppPatch {
            host_name: Some("b.test".into()),
            ..AppPatch::default()
        };
        assert!(
            update(&apps, "web", &taken, 9)
                .unwrap_err()
                .contains("already")
        );
        let min = AppPatch {
            min: Some(9),
            ..AppPatch::default()
        };
        assert!(
            update(&apps, "web", &min, 9)
                .unwrap_err()
                .contains("above max")
        );
        assert!(update(&apps, "nope", &p, 9).unwrap_err().contains("no app"));
        assert!(update(&apps, "web", &AppPatch::default(), 9).is_err());
    }

    #[test]
    fn remove_needs_the_app() {
        let apps = with(&[("web", "a.test")]);
        remove(&apps, "web").unwrap();
        assert!(remove(&apps, "api").unwrap_err().contains("no app"));
    }

    #[test]
    fn hosts_match_without_case_port_or_final_dot() {
        let apps = with(&[("web", "a.test"), ("api", "b.test")]);
        let name = |h: &str| by_host(&apps, h).map(|a| a.spec.name.clone());
        assert_eq!(name("a.test").as_deref(), Some("web"));
        assert_eq!(name("A.Test:8080").as_deref(), Some("web"));
        assert_eq!(name("b.test.").as_deref(), Some("api"));
        assert_eq!(name("c.test"), None);
        assert_eq!(name(""), None);
        assert_eq!(name("a.test:x"), None);
    }
}
