//! Subcommands around Eltonfs mounts: `mount`, `umount`, `commit`,
//! `status`, `checkout`, and `diff` between two versions.

use elton_proto::listing::{Strictness, load_dir_async};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use elton_proto::{DirManifest, EntryKind, ObjectId, VolumeName};

use super::client::{Endpoints, check};
use super::commit_progress::{self, CommitView};
use super::default_data_dir;
use crate::fs::daemon::Detached;
use crate::fs::mount::{self, ControlRequest, MountOptions};
use crate::fs::mount_table::MountTable;
use crate::spec::{Spec, VersionRef};

#[derive(Args, Debug)]
pub struct MountArgs {
    /// VOLUME[@VERSION]; default: the latest version.
    pub spec: Spec,
    /// An empty directory to mount the volume on.
    pub mountpoint: PathBuf,
    /// Mount even over a directory that is not empty (its files are hidden
    /// until the unmount).
    #[arg(long)]
    pub nonempty: bool,
    /// State directory holding the upper layer [default: under the slave's data dir].
    #[arg(long)]
    pub upper: Option<PathBuf>,
    /// The local slave's data directory (its store caches lower files).
    #[arg(long, env = "ELTON_SLAVE_DATA", hide_env_values = true)]
    pub slave_data: Option<PathBuf>,
    /// Stay in the foreground instead of detaching.
    #[arg(long)]
    pub foreground: bool,
    /// Let other users access the mount (permissions still apply).
    #[arg(long)]
    pub allow_other: bool,
    /// Mount read-only: writes get EROFS, and commit, checkout and update
    /// are refused (FastContainer's app mounts).
    #[arg(long)]
    pub read_only: bool,
    /// Commits store files larger than this many bytes as content-defined
    /// chunks plus a recipe.
    #[arg(long, env = "ELTON_CHUNK_THRESHOLD", hide_env_values = true, default_value_t = crate::chunking::DEFAULT_THRESHOLD)]
    pub chunk_threshold: u64,
    /// Disk space for whole copies of chunked files read through the mount
    /// (`<state>/assembled/`); least recently used copies go first.
    #[arg(long, env = "ELTON_ASSEMBLED_MAX_BYTES", hide_env_values = true, default_value_t = crate::fs::chunked::DEFAULT_ASSEMBLED_MAX_BYTES)]
    pub assembled_max_bytes: u64,
}

fn canonical(p: &Path) -> Result<PathBuf> {
    std::fs::canonicalize(p).with_context(|| format!("{}", p.display()))
}

/// The root of the Elton mount holding `path` (the root itself or any path
/// under it), as `git` finds the repository from a subdirectory.
pub fn mount_root(path: &Path) -> Result<PathBuf> {
    let p = match std::fs::canonicalize(path) {
        Ok(p) => p,
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => bail!(
            "{} is a mount whose process is gone; detach it with: elton umount {}",
            path.display(),
            path.display()
        ),
        Err(e) => return Err(e).with_context(|| format!("{}", path.display())),
    };
    let table = MountTable::read().context("reading the mount table")?;
    match table.holding(&p) {
        Some(e) if e.is_elton() => Ok(e.mountpoint.clone()),
        _ => bail!("{} is not in an Elton mount", path.display()),
    }
}

/// The mountpoint argument of `commit`/`status`/`checkout`: the working
/// directory when none is given.
pub fn mountpoint_or_cwd(p: Option<PathBuf>) -> Result<PathBuf> {
    match p {
        Some(p) => Ok(p),
        None => std::env::current_dir().context("reading the working directory"),
    }
}

pub fn state_dir(slave_data: &Path, volume: &VolumeName, mountpoint: &Path) -> PathBuf {
    let tag = blake3::hash(mountpoint.as_os_str().as_encoded_bytes()).to_hex();
    slave_data
        .join("mounts")
        .join(format!("{volume}-{}", &tag[..12]))
}

pub fn mount(ep: &Endpoints, a: MountArgs) -> Result<()> {
    let mountpoint = canonical(&a.mountpoint)?;
    if !mountpoint.is_dir() {
        bail!("{} is not a directory", mountpoint.display());
    }
    if !a.spec.path.is_root() {
        bail!("mount a whole volume: VOLUME[@VERSION], without :PATH");
    }
    let slave_data = a
        .slave_data
        .clone()
        .unwrap_or_else(|| default_data_dir().join("slave"));
    let state = a
        .upper
        .clone()
        .unwrap_or_else(|| state_dir(&slave_data, &a.spec.volume, &mountpoint));
    mount::check_free(&mountpoint, &state)?;
    if !a.nonempty && std::fs::read_dir(&mountpoint)?.next().is_some() {
        bail!(
            "{} is not empty: the mount would hide its files; mount on an empty directory, \
             or pass --nonempty to hide them until the unmount",
            mountpoint.display()
        );
    }
    let created = !state.exists();
    std::fs::create_dir_all(&state).with_context(|| format!("creating {}", state.display()))?;
    let r = mount_in(ep, a, mountpoint, slave_data, &state);
    // A mount that never came up wrote nothing the user made: leave no
    // state directory behind that a later mount would have to match.
    if r.is_err() && created {
        let _ = std::fs::remove_dir_all(&state);
    }
    r
}

fn mount_in(
    ep: &Endpoints,
    a: MountArgs,
    mountpoint: PathBuf,
    slave_data: PathBuf,
    state: &Path,
) -> Result<()> {
    let state = state.to_path_buf();
    if a.foreground {
        return mount::run(MountOptions {
            volume: a.spec.volume.clone(),
            version: a.spec.version.map(|v| v.get()),
            mountpoint,
            state_dir: state,
            slave_url: ep.slave.clone(),
            slave_data,
            token: ep.token_opt()?,
            allow_other: a.allow_other,
            read_only: a.read_only,
            chunk_threshold: a.chunk_threshold,
            assembled_max_bytes: a.assembled_max_bytes,
        });
    }
    let info = Detached {
        spec: a.spec.to_string(),
        mountpoint: mountpoint.clone(),
        state_dir: state.clone(),
        slave_url: ep.slave.clone(),
        slave_data,
        token: ep.token_opt()?,
        allow_other: a.allow_other,
        read_only: a.read_only,
        chunk_threshold: a.chunk_threshold,
        assembled_max_bytes: a.assembled_max_bytes,
    }
    .spawn()?;
    println!(
        "mounted {}@{} at {} (upper: {})",
        info.volume.unwrap_or_default(),
        info.version.unwrap_or(0),
        mountpoint.display(),
        state.join("upper").display()
    );
    Ok(())
}

pub fn umount(mountpoint: &Path) -> Result<()> {
    // A mount whose process died cannot be resolved (ENOTCONN), only named.
    let path = match std::fs::canonicalize(mountpoint) {
        Ok(p) => p,
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => std::path::absolute(mountpoint)?,
        Err(e) => return Err(e).with_context(|| format!("{}", mountpoint.display())),
    };
    let table = MountTable::read().context("reading the mount table")?;
    if !table.at(&path).is_some_and(|e| e.is_elton()) {
        bail!(
            "{} is not an Elton mount; nothing was unmounted",
            mountpoint.display()
        );
    }
    mount::unmount(&path, false).with_context(|| format!("unmounting {}", path.display()))
}

/// How `elton commit` reports (see [`super::commit_progress`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct CommitOutput {
    pub json: bool,
    pub progress: bool,
    pub quiet: bool,
}

pub fn commit(mountpoint: &Path, message: String, out: CommitOutput) -> Result<()> {
    use std::io::IsTerminal;
    if message.trim().is_empty() {
        bail!("a commit needs a message: pass -m MESSAGE (nothing was committed)");
    }
    let author = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    let host = super::import::hostname();
    let root = mount_root(mountpoint)?;
    let terminal = std::io::stderr().is_terminal();
    let show = commit_progress::shows_progress(terminal, out.json, out.progress, out.quiet);
    let req = ControlRequest::Commit {
        message,
        author,
        host,
        progress: show,
    };
    let r = if show {
        let mut view = CommitView::new(terminal);
        let r = mount::control_with_progress(&root, &req, &mut |p| view.update(p));
        view.finish(r.as_ref().is_ok_and(|r| r.message.is_none()));
        r?
    } else {
        mount::control(&root, &req)?
    };
    let volume = r.volume.unwrap_or_default();
    let version = r.version.unwrap_or(0);
    if out.json {
        let mut j = serde_json::json!({
            "volume": volume,
            "version": version,
            "committed": r.message.is_none(),
        });
        if let Some(m) = &r.message {
            j["message"] = m.clone().into();
        }
        println!("{j}");
        return Ok(());
    }
    match r.message {
        Some(m) => println!("{m}"),
        None => println!("committed {volume}@{version}"),
    }
    Ok(())
}

pub fn status(mountpoint: &Path, json: bool) -> Result<()> {
    let r = mount::control(&mount_root(mountpoint)?, &ControlRequest::Status)?;
    let changes = r.changes.unwrap_or_default();
    if json {
        println!("{}", serde_json::to_string(&changes)?);
        return Ok(());
    }
    println!(
        "{}@{}",
        r.volume.unwrap_or_default(),
        r.version.unwrap_or(0)
    );
    if changes.is_empty() {
        println!("nothing to commit");
    }
    for (tag, list) in [
        ("A", &changes.added),
        ("M", &changes.modified),
        ("D", &changes.deleted),
    ] {
        for p in list {
            println!("{tag} {p}");
        }
    }
    Ok(())
}

pub fn checkout(mountpoint: &Path, version: u64) -> Result<()> {
    let r = mount::control(
        &mount_root(mountpoint)?,
        &ControlRequest::Checkout { version },
    )?;
    println!(
        "{} now at version {}",
        mountpoint.display(),
        r.version.unwrap_or(version)
    );
    Ok(())
}

/// Lists what changed between two versions, skipping identical subtrees by
/// their hash.
pub async fn diff(ep: &Endpoints, volume: &str, v1: VersionRef, v2: VersionRef) -> Result<()> {
    let volume: VolumeName = volume.parse()?;
    let http = reqwest::Client::new();
    let root = |v: VersionRef| {
        let url = ep.slave_url(&format!("/v1/volumes/{volume}/{v}/"));
        let http = http.clone();
        async move {
            let resp = check(
                http.get(&url)
                    .send()
                    .await
                    .with_context(|| format!("contacting slave {url}"))?,
            )
            .await?;
            let j: serde_json::Value = resp.json().await?;
            j["manifest"]
                .as_str()
                .unwrap_or("")
                .parse::<ObjectId>()
                .map_err(|e| anyhow!("{e}"))
        }
    };
    let (a, b) = (root(v1).await?, root(v2).await?);
    let mut out = Vec::new();
    diff_dirs(ep, &http, "", Some(a), Some(b), &mut out).await?;
    if out.is_empty() {
        // stdout stays empty for scripts (as `git diff`); say why on stderr.
        eprintln!("{volume}@{v1} and {volume}@{v2} have the same tree: no differences");
    }
    for line in out {
        println!("{line}");
    }
    Ok(())
}

/// An object's bytes from the local slave, checked against `id`.
async fn object(ep: &Endpoints, http: &reqwest::Client, id: ObjectId) -> Result<Vec<u8>> {
    let resp = check(
        http.get(ep.slave_url(&format!("/v1/objects/{id}")))
            .send()
            .await?,
    )
    .await?;
    let bytes = resp.bytes().await?.to_vec();
    anyhow::ensure!(
        ObjectId::of(&bytes) == id,
        "the slave sent other bytes for {id}"
    );
    Ok(bytes)
}

/// A directory's whole listing, its pages read together if it is paged.
async fn manifest(ep: &Endpoints, http: &reqwest::Client, id: ObjectId) -> Result<DirManifest> {
    let bytes = object(ep, http, id).await?;
    let pages = |ids: Vec<ObjectId>| {
        futures::future::try_join_all(ids.into_iter().map(|p| object(ep, http, p)))
    };
    let loaded =
        load_dir_async::<anyhow::Error, _, _>(&bytes, Strictness::Canonical, pages).await?;
    Ok(loaded.manifest)
}

fn diff_dirs<'a>(
    ep: &'a Endpoints,
    http: &'a reqwest::Client,
    prefix: &'a str,
    a: Option<ObjectId>,
    b: Option<ObjectId>,
    out: &'a mut Vec<String>,
) -> futures::future::BoxFuture<'a, Result<()>> {
    Box::pin(async move {
        if a == b {
            return Ok(());
        }
        let ma = match a {
            Some(id) => manifest(ep, http, id).await?,
            None => DirManifest::default(),
        };
        let mb = match b {
            Some(id) => manifest(ep, http, id).await?,
            None => DirManifest::default(),
        };
        let mut names: Vec<&str> = ma
            .entries
            .iter()
            .chain(&mb.entries)
            .map(|e| e.name.as_str())
            .collect();
        names.sort_unstable();
        names.dedup();
        for name in names {
            let path = if prefix.is_empty() {
                name.to_string()
            } else {
                format!("{prefix}/{name}")
            };
            let (ea, eb) = (ma.get(name), mb.get(name));
            let dir = |e: Option<&elton_proto::Entry>| {
                e.filter(|e| e.kind == EntryKind::Dir)
                    .and_then(|e| e.object)
            };
            match (ea, eb) {
                (Some(x), Some(y)) if x == y => {}
                (Some(x), Some(y)) if x.kind == EntryKind::Dir && y.kind == EntryKind::Dir => {
                    if x.mode != y.mode || x.uid != y.uid || x.gid != y.gid {
                        out.push(format!("M {path}/"));
                    }
                    diff_dirs(ep, http, &path, x.object, y.object, out).await?;
                }
                (Some(_), Some(_)) => out.push(format!("M {path}")),
                (None, Some(y)) => {
                    out.push(format!(
                        "A {path}{}",
                        if y.kind == EntryKind::Dir { "/" } else { "" }
                    ));
                    diff_dirs(ep, http, &path, None, dir(eb), out).await?;
                }
                (Some(x), None) => {
                    out.push(format!(
                        "D {path}{}",
                        if x.kind == EntryKind::Dir { "/" } else { "" }
                    ));
                }
                (None, None) => {}
            }
        }
        Ok(())
    })
}
