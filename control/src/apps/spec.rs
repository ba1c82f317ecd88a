//! What an app is in the configuration DB, and the checks a member makes
//! before proposing one (pure). Every field is checked here, so a bad
//! value is refused with a message naming it and nothing is proposed.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::drcond::spec::{MAX_CPU_PERCENT, MIN_MEMORY_BYTES};

/// Longest app name (a DNS label, so it can name cgroups and containers).
pub const MAX_NAME_BYTES: usize = 63;
/// Longest host name (DNS).
pub const MAX_HOST_NAME_BYTES: usize = 253;
/// Longest command line.
pub const MAX_CMD_BYTES: usize = 4096;
/// Longest Docker image reference.
pub const MAX_IMAGE_BYTES: usize = 255;
/// Longest environment variable name for the port.
pub const MAX_ENV_BYTES: usize = 64;
/// Idle timeouts and cooldowns: at least a second (below that, instances
/// would stop between requests of one page load), at most a day.
pub const MIN_PERIOD_MS: u64 = 1000;
pub const MAX_PERIOD_MS: u64 = 24 * 3600 * 1000;
/// Most instances of one app (per group): bounds the registry and a
/// mistyped `--max`.
pub const MAX_INSTANCES: u32 = 64;
/// Most apps in the group: the configuration DB lives in every member's
/// memory.
pub const MAX_APPS: usize = 10_000;

/// Defaults of the optional fields (also in `docs/operations.md`).
pub const DEFAULT_PORT_ENV: &str = "PORT";
pub const DEFAULT_IDLE_MS: u64 = 60_000;
pub const DEFAULT_MIN: u32 = 0;
pub const DEFAULT_MAX: u32 = 4;
pub const DEFAULT_SCALE_AT_PERCENT: u32 = 80;
pub const DEFAULT_COOLDOWN_MS: u64 = 30_000;

/// An app as configured: how to run it and how to scale it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppSpec {
    /// Unique in the group.
    pub name: String,
    /// The `Host` requests for this app carry (lower case, no port);
    /// unique in the group.
    pub host_name: String,
    /// The Elton volume holding the app's files.
    pub volume: String,
    /// The volume version instances run (resolved by the client when it is
    /// given as the head, so every host runs the same tree).
    pub version: u64,
    /// Shell command line (`sh -c`) run in the mounted volume; optional
    /// with an image (the image's own command then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<String>,
    /// Run as a Docker container of this image instead of a process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The environment variable carrying the port the app must listen on.
    pub port_env: String,
    /// An instance with no request for this long stops.
    pub idle_ms: u64,
    /// Instances kept however idle.
    pub min: u32,
    /// Instances at most.
    pub max: u32,
    /// Each instance's CPU, in percent of one core; none: unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_percent: Option<u32>,
    /// The most CPU scale-up may give one instance, in percent of one
    /// core; none: [`super::scale::MAX_SCALE_UP_FACTOR`] times
    /// `cpu_percent`. Equal to `cpu_percent`: no scale-up, only scale-out.
    /// Added in command version 3 (written only when set, so specs
    /// without it read as before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_max_percent: Option<u32>,
    /// Each instance's memory; none: unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// CPU use (of the instance's quota) or in-flight requests (of its
    /// share) above which an instance asks for more.
    pub scale_at_percent: u32,
    /// No new scaling decision for the app within this long of the last.
    pub cooldown_ms: u64,
}

/// An app in the replicated state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct App {
    pub spec: AppSpec,
    /// Log index of the command that created it.
    pub created: u64,
    /// Log index of the command that last changed it (its configuration
    /// generation: instances of an older one are replaced).
    pub updated: u64,
}

/// Fields an optional setting can be cleared of (`elton app set --unset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unset {
    Cmd,
    Image,
    Cpu,
    Memory,
    /// Command version 3.
    CpuMax,
}

/// A change to an app: the fields given are replaced, those in `unset`
/// cleared, the rest kept. The result is checked as a whole when applied
/// (e.g. `min` against the kept `max`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppPatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_env: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_percent: Option<u32>,
    /// Command version 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_max_percent: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_at_percent: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cooldown_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub unset: BTreeSet<Unset>,
}

impl AppSpec {
    /// A spec with every optional field at its default.
    pub fn new(name: &str, host_name: &str, volume: &str, version: u64) -> Self {
        Self {
            name: name.into(),
            host_name: host_name.into(),
            volume: volume.into(),
            version,
            cmd: None,
            image: None,
            port_env: DEFAULT_PORT_ENV.into(),
            idle_ms: DEFAULT_IDLE_MS,
            min: DEFAULT_MIN,
            max: DEFAULT_MAX,
            cpu_percent: None,
            cpu_max_percent: None,
            memory_bytes: None,
            scale_at_percent: DEFAULT_SCALE_AT_PERCENT,
            cooldown_ms: DEFAULT_COOLDOWN_MS,
        }
    }

    /// Checks every field; the message names the first bad one.
    pub fn validate(&self) -> Result<(), String> {
        check_name(&self.name)?;
        check_host_name(&self.host_name)?;
        check_volume(&self.volume)?;
        if self.version == 0 {
            return Err(format!(
                "version 0 of volume {:?}: versions start at 1",
                self.volume
            ));
        }
        if let Some(cmd) = &self.cmd {
            check_cmd(cmd)?;
        }
        if let Some(image) = &self.image {
            check_image(image)?;
        }
        if self.cmd.is_none() && self.image.is_none() {
            return Err("an app needs a command (--cmd), or an image (--image) to run".into());
        }
        check_env(&self.port_env)?;
        check_period("idle timeout", self.idle_ms)?;
        check_period("cooldown", self.cooldown_ms)?;
        if self.max == 0 || self.max > MAX_INSTANCES {
            return Err(format!(
                "max {}: an app runs 1 to {MAX_INSTANCES} instances at most",
                self.max
            ));
        }
        if self.min > self.max {
            return Err(format!(
                "min {} is above max {}: min instances are kept running, at most max",
                self.min, self.max
            ));
        }
        if let Some(cpu) = self.cpu_percent
            && (cpu == 0 || cpu > MAX_CPU_PERCENT)
        {
            return Err(format!(
                "cpu {cpu}%: a CPU limit is 1% to {MAX_CPU_PERCENT}% of one core"
            ));
        }
        if let Some(max) = self.cpu_max_percent {
            let Some(cpu) = self.cpu_percent else {
                return Err(format!(
                    "max-cpu {max}% bounds scale-up of a CPU limit, and the app has none \
                     (give --cpu too)"
                ));
            };
            if max < cpu || max > MAX_CPU_PERCENT {
                return Err(format!(
                    "max-cpu {max}%: scale-up's bound is from the app's cpu ({cpu}%) to \
                     {MAX_CPU_PERCENT}% of one core"
                ));
            }
        }
        if let Some(m) = self.memory_bytes
            && m < MIN_MEMORY_BYTES
        {
            return Err(format!(
                "memory {m} bytes: at least {} MiB",
                MIN_MEMORY_BYTES >> 20
            ));
        }
        if self.scale_at_percent == 0 || self.scale_at_percent > 100 {
            return Err(format!(
                "scale-at {}%: a threshold is 1% to 100%",
                self.scale_at_percent
            ));
        }
        Ok(())
    }

    /// This spec with `patch` applied (not checked: see [`Self::validate`]).
    pub fn patched(&self, patch: &AppPatch) -> Self {
        let mut s = self.clone();
        for u in &patch.unset {
            match u {
                Unset::Cmd => s.cmd = None,
                Unset::Image => s.image = None,
                Unset::Cpu => s.cpu_percent = None,
                Unset::Memory => s.memory_bytes = None,
                Unset::CpuMax => s.cpu_max_percent = None,
            }
        }
        let set = |dst: &mut String, v: &Option<String>| {
            if let Some(v) = v {
                dst.clone_from(v);
            }
        };
        set(&mut s.host_name, &patch.host_name);
        set(&mut s.volume, &patch.volume);
        set(&mut s.port_env, &patch.port_env);
        if patch.cmd.is_some() {
            s.cmd.clone_from(&patch.cmd);
        }
        if patch.image.is_some() {
            s.image.clone_from(&patch.image);
        }
        if patch.cpu_percent.is_some() {
            s.cpu_percent = patch.cpu_percent;
        }
        if patch.cpu_max_percent.is_some() {
            s.cpu_max_percent = patch.cpu_max_percent;
        }
        if patch.memory_bytes.is_some() {
            s.memory_bytes = patch.memory_bytes;
        }
        s.version = patch.version.unwrap_or(s.version);
        s.idle_ms = patch.idle_ms.unwrap_or(s.idle_ms);
        s.min = patch.min.unwrap_or(s.min);
        s.max = patch.max.unwrap_or(s.max);
        s.scale_at_percent = patch.scale_at_percent.unwrap_or(s.scale_at_percent);
        s.cooldown_ms = patch.cooldown_ms.unwrap_or(s.cooldown_ms);
        s
    }
}

impl AppPatch {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Whether the patch uses a field added in command version 3.
    pub fn needs_v3(&self) -> bool {
        self.cpu_max_percent.is_some() || self.unset.contains(&Unset::CpuMax)
    }

    /// What can be checked without the app it changes: the patch changes
    /// something, sets no field it also clears, and every value it sets
    /// is valid on its own (sizes are checked by the whole spec later).
    pub fn validate(&self) -> Result<(), String> {
        if self.is_empty() {
            return Err("nothing to change: give at least one setting".into());
        }
        let both = |u: Unset, given: bool, what: &str| {
            if given && self.unset.contains(&u) {
                Err(format!("{what} is both set and unset"))
            } else {
                Ok(())
            }
        };
        both(Unset::Cmd, self.cmd.is_some(), "cmd")?;
        both(Unset::Image, self.image.is_some(), "image")?;
        both(Unset::Cpu, self.cpu_percent.is_some(), "cpu")?;
        both(Unset::Memory, self.memory_bytes.is_some(), "memory")?;
        both(Unset::CpuMax, self.cpu_max_percent.is_some(), "max-cpu")?;
        if let Some(h) = &self.host_name {
            check_host_name(h)?;
        }
        if let Some(v) = &self.volume {
            check_volume(v)?;
        }
        if self.version == Some(0) {
            return Err("version 0: versions start at 1".into());
        }
        if let Some(c) = &self.cmd {
            check_cmd(c)?;
        }
        if let Some(i) = &self.image {
            check_image(i)?;
        }
        if let Some(e) = &self.port_env {
            check_env(e)?;
        }
        if let Some(ms) = self.idle_ms {
            check_period("idle timeout", ms)?;
        }
        if let Some(ms) = self.cooldown_ms {
            check_period("cooldown", ms)?;
        }
        Ok(())
    }
}

/// An app name: a DNS label in lower case (it names cgroups, containers
/// and metrics).
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "app name {name:?}: use 1-{MAX_NAME_BYTES} of [a-z0-9-], not starting or ending \
             with '-'"
        ))
    }
}

/// A host name as `Host` headers carry it: lower-case DNS labels, no port.
pub fn check_host_name(host: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("host name {host:?}: {why}"));
    if host.is_empty() || host.len() > MAX_HOST_NAME_BYTES {
        return bad(&format!("1 to {MAX_HOST_NAME_BYTES} bytes"));
    }
    if host.contains(':') {
        return bad("no port: the proxy routes by name, whatever port it listens on");
    }
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        return bad("use lower case (host names match case-insensitively)");
    }
    for label in host.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return bad(
                "dot-separated labels of 1-63 of [a-z0-9-], not starting or ending with '-'",
            );
        }
    }
    Ok(())
}

/// An Elton volume name (the master's rule, `docs/formats.md` §2).
pub fn check_volume(volume: &str) -> Result<(), String> {
    let ok = !volume.is_empty()
        && volume.len() <= 128
        && volume.as_bytes()[0].is_ascii_alphanumeric()
        && volume
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid volume name {volume:?}: use 1-128 of [A-Za-z0-9._-], starting with a \
             letter or digit"
        ))
    }
}

fn check_cmd(cmd: &str) -> Result<(), String> {
    if cmd.trim().is_empty() {
        return Err("the command is empty".into());
    }
    if cmd.len() > MAX_CMD_BYTES {
        return Err(format!(
            "the command is {} bytes; at most {MAX_CMD_BYTES}",
            cmd.len()
        ));
    }
    if cmd.contains('\0') {
        return Err("the command contains a NUL byte".into());
    }
    Ok(())
}

/// A Docker image reference: `[registry/]name[:tag][@digest]`, checked for
/// its alphabet and size (the engine checks the rest when pulling).
fn check_image(image: &str) -> Result<(), String> {
    let ok = !image.is_empty()
        && image.len() <= MAX_IMAGE_BYTES
        && image.as_bytes()[0].is_ascii_alphanumeric()
        && image.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/' | b':' | b'@')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "image {image:?}: a Docker image reference of 1-{MAX_IMAGE_BYTES} of \
             [A-Za-z0-9._/:@-], e.g. busybox:1.36"
        ))
    }
}

fn check_env(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_ENV_BYTES
        && !name.as_bytes()[0].is_ascii_digit()
        && name
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "port variable {name:?}: an environment variable name of [A-Z0-9_], not \
             starting with a digit"
        ))
    }
}

fn check_period(what: &str, ms: u64) -> Result<(), String> {
    if (MIN_PERIOD_MS..=MAX_PERIOD_MS).contains(&ms) {
        Ok(())
    } else {
        Err(format!(
            "{what} of {ms} ms: between {}s and {}h",
            MIN_PERIOD_MS / 1000,
            MAX_PERIOD_MS / 3_600_000
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn web() -> AppSpec {
        let mut s = AppSpec::new("web", "example.test", "site", 3);
        s.cmd = Some("python3 -m http.server $PORT".into());
        s
    }

    #[test]
    fn a_good_spec_passes() {
        web().validate().unwrap();
        let mut s = web();
        s.cmd = None;
        s.image = Some("busybox:1.36".into());
        s.cpu_percent = Some(30);
        s.memory_bytes = Some(512 << 20);
        s.min = 4;
        s.validate().unwrap();
        s.cpu_max_percent = Some(30);
        s.validate().unwrap();
    }

    #[test]
    fn a_spec_without_max_cpu_encodes_as_before_version_3() {
        let mut s = web();
        s.cpu_percent = Some(30);
        let json = serde_json::to_string(&s).unwrap();
        assert!(!json.contains("cpu_max"), "{json}");
        assert!(!AppPatch::default().needs_v3());
        s.cpu_max_percent = Some(60);
        let back: AppSpec = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
        let p = AppPatch {
            unset: BTreeSet::from([Unset::CpuMax]),
            ..AppPatch::default()
        };
        assert!(p.needs_v3());
    }

    #[test]
    fn every_field_is_checked_and_named() {
        type Change = Box<dyn Fn(&mut AppSpec)>;
        let cases: Vec<(Change, &str)> = vec![
            (Box::new(|s| s.name = "Web".into()), "app name"),
            (Box::new(|s| s.name = "-web".into()), "app name"),
            (Box::new(|s| s.name = "a".repeat(64)), "app name"),
            (Box::new(|s| s.host_name = "".into()), "host name"),
            (
                Box::new(|s| s.host_name = "Example.test".into()),
                "lower case",
            ),
            (
                Box::new(|s| s.host_name = "example.test:80".into()),
                "no port",
            ),
            (Box::new(|s| s.host_name = "a..b".into()), "labels"),
            (Box::new(|s| s.host_name = "a b".into()), "labels"),
            (Box::new(|s| s.volume = "-x".into()), "volume name"),
            (Box::new(|s| s.volume = "a/b".into()), "volume name"),
            (Box::new(|s| s.version = 0), "versions start at 1"),
            (Box::new(|s| s.cmd = Some("  ".into())), "command is empty"),
            (Box::new(|s| s.cmd = Some("a\0b".into())), "NUL"),
            (Box::new(|s| s.cmd = Some("x".repeat(5000))), "at most"),
            (Box::new(|s| s.cmd = None), "needs a command"),
            (Box::new(|s| s.image = Some("busy box".into())), "image"),
            (Box::new(|s| s.port_env = "port".into()), "port variable"),
            (Box::new(|s| s.port_env = "1PORT".into()), "port variable"),
            (Box::new(|s| s.idle_ms = 10), "idle timeout"),
            (Box::new(|s| s.idle_ms = 2 * MAX_PERIOD_MS), "idle timeout"),
            (Box::new(|s| s.cooldown_ms = 999), "cooldown"),
            (Box::new(|s| s.max = 0), "max 0"),
            (Box::new(|s| s.max = MAX_INSTANCES + 1), "max"),
            (Box::new(|s| s.min = 5), "min 5 is above max 4"),
            (Box::new(|s| s.cpu_percent = Some(0)), "cpu 0%"),
            (
                Box::new(|s| s.cpu_percent = Some(MAX_CPU_PERCENT + 1)),
                "cpu",
            ),
            (Box::new(|s| s.cpu_max_percent = Some(50)), "has none"),
            (
                Box::new(|s| {
                    s.cpu_percent = Some(50);
                    s.cpu_max_percent = Some(40);
                }),
                "max-cpu 40%",
            ),
            (
                Box::new(|s| {
                    s.cpu_percent = Some(50);
                    s.cpu_max_percent = Some(MAX_CPU_PERCENT + 1);
                }),
                "max-cpu",
            ),
            (Box::new(|s| s.memory_bytes = Some(1024)), "memory"),
            (Box::new(|s| s.scale_at_percent = 0), "scale-at"),
            (Box::new(|s| s.scale_at_percent = 101), "scale-at"),
        ];
        for (change, says) in cases {
            let mut s = web();
            change(&mut s);
            let e = s.validate().expect_err(&format!("{s:?} passed"));
            assert!(e.contains(says), "{e:?} does not say {says:?}");
        }
    }

    #[test]
    fn a_patch_replaces_what_it_names_and_clears_what_it_unsets() {
        let mut s = web();
        s.cpu_percent = Some(50);
        let p = AppPatch {
            version: Some(4),
            max: Some(8),
            image: Some("busybox".into()),
            unset: BTreeSet::from([Unset::Cpu, Unset::Cmd]),
            ..AppPatch::default()
        };
        p.validate().unwrap();
        let t = s.patched(&p);
        assert_eq!(t.version, 4);
        assert_eq!(t.max, 8);
        assert_eq!(t.cpu_percent, None);
        assert_eq!(t.cmd, None);
        assert_eq!(t.image.as_deref(), Some("busybox"));
        assert_eq!(t.host_name, s.host_name);
        assert_eq!(t.idle_ms, s.idle_ms);
        t.validate().unwrap();
    }

    #[test]
    fn bad_patches_are_refused_on_their_own() {
        assert!(
            AppPatch::default()
                .validate()
                .unwrap_err()
                .contains("nothing")
        );
        let both = AppPatch {
            cpu_percent: Some(10),
            unset: BTreeSet::from([Unset::Cpu]),
            ..AppPatch::default()
        };
        assert!(both.validate().unwrap_err().contains("both set and unset"));
        let host = AppPatch {
            host_name: Some("A.test".into()),
            ..AppPatch::default()
        };
        assert!(host.validate().unwrap_err().contains("lower case"));
        let v0 = AppPatch {
            version: Some(0),
            ..AppPatch::default()
        };
        assert!(v0.validate().is_err());
        let idle = AppPatch {
            idle_ms: Some(1),
            ..AppPatch::default()
        };
        assert!(idle.validate().unwrap_err().contains("idle timeout"));
    }

    #[test]
    fn a_patch_that_breaks_the_whole_is_caught_by_the_spec() {
        // min 6 alone is fine; against the kept max 4 it is not.
        let p = AppPatch {
            min: Some(6),
            ..AppPatch::default()
        };
        p.validate().unwrap();
        assert!(
            web()
                .patched(&p)
                .validate()
                .unwrap_err()
                .contains("above max")
        );
    }
}
