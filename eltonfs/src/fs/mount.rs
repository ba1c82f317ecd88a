//! Running a mount: state directory, crash recovery, the FUSE session, and
//! the control socket through which `elton commit|status|checkout` talk to
//! the mount process.
//!
//! State directory layout (see `docs/eltonfs.md`):
//! - `upper/`, `work/` — the writable layer (kernel overlayfs encoding);
//! - `mount.json` — volume and version the upper applies to;
//! - `commit.json` — present only while a commit is in flight (journal);
//! - `control.sock`, `mount.log`.

use std::collections::HashSet;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use elton_proto::{ObjectId, VolumeName};
use elton_slave::ObjectStore;
use elton_slave::staging::Staging;
use fuser::{Config, INodeNo, MountOption, Notifier, SessionACL};
use serde::{Deserialize, Serialize};

use super::changes::{self, ChangeSet};
use super::commit_progress::{CommitProgress, ControlLine, Phase, decode_line};
use super::commit_reporter::{Counters, Reporter};
use super::fuse::{EltonFs, MountState};
use super::layers::Layers;
use super::lower::SlaveLower;

/// How long a commit waits for files that look open for writing to be
/// released (see [`commit`]); a file really held open costs the commit
/// this much and is then kept in the upper, as before.
const RELEASE_GRACE: Duration = Duration::from_millis(50);

/// Format of `mount.json` and `commit.json`.
pub const STATE_FORMAT: u32 = 1;

fn state_format() -> u32 {
    STATE_FORMAT
}

/// What the upper applies to; survives restarts of the mount process.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MountRecord {
    #[serde(default = "state_format")]
    pub format: u32,
    pub volume: VolumeName,
    /// 0: the volume had no version yet.
    pub version: u64,
    /// Incarnation of the master's metadata `version` was read from (empty
    /// for version 0 or an older master): a commit on it is refused once
    /// the metadata is another incarnation, where the number may name
    /// another tree.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub incarnation: String,
}

/// A version as the slave resolved it.
pub struct ResolvedVersion {
    /// 0: the volume has no version yet.
    pub version: u64,
    pub root: Option<ObjectId>,
    /// Incarnation of the metadata that issued it (empty: none, or unknown).
    pub incarnation: String,
}

/// Written before the head is compare-and-set, removed after; its presence
/// at start means the last commit's outcome must be checked.
#[derive(Debug, Serialize, Deserialize)]
struct Journal {
    #[serde(default = "state_format")]
    format: u32,
    parent: u64,
    /// Unset while the tree is still being built (nothing sent yet).
    root: Option<ObjectId>,
    linked: Vec<ObjectId>,
}

pub struct MountOptions {
    pub volume: VolumeName,
    pub version: Option<u64>,
    pub mountpoint: PathBuf,
    pub state_dir: PathBuf,
    pub slave_url: String,
    pub slave_data: PathBuf,
    pub token: Option<String>,
    pub allow_other: bool,
    /// Mounted `ro`: the kernel answers EROFS to every write, and the
    /// control socket refuses commit, checkout and update, so the mount
    /// shows exactly its version for as long as it lives.
    pub read_only: bool,
    /// Files larger than this are committed as chunks plus a recipe.
    pub chunk_threshold: u64,
    /// Bound of `<state>/assembled/` (see [`super::chunked::Assembled`]).
    pub assembled_max_bytes: u64,
}

/// Requests on the control socket, one JSON object per line.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum ControlRequest {
    Info,
    Status,
    Commit {
        message: String,
        author: String,
        host: String,
        /// Revision 2: send progress lines before the answer.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        progress: bool,
    },
    Checkout {
        version: u64,
    },
    /// Move onto the volume's head, merging the upper (`elton update`).
    Update,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ControlResponse {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changes: Option<ChangeSet>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Paths an update found changed on both sides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conflicts: Option<Vec<crate::update::Conflict>>,
}

pub(super) struct Mounted {
    pub(super) state: Arc<Mutex<MountState>>,
    /// Signalled when the mount releases a file handle.
    released: Arc<Condvar>,
    pub(super) record: Mutex<MountRecord>,
    pub(super) opts: MountOptions,
    store: Arc<ObjectStore>,
    pub(super) http: reqwest::blocking::Client,
}

pub(super) fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(value)?;
    elton_slave::durable::write_file(path, &bytes)
        .with_context(|| format!("writing {}", path.display()))
}

/// Like [`write_json`], without flushing: the caller makes it durable
/// with a `syncfs` of the same filesystem.
fn write_json_unflushed<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(value)?;
    elton_slave::durable::write_file_unflushed(path, &bytes)
        .with_context(|| format!("writing {}", path.display()))
}

/// Whether `a` and `b` are on one filesystem (one `syncfs` covers both).
fn same_filesystem(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev(),
        _ => false,
    }
}

pub(super) fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(
            serde_json::from_slice(&b).with_context(|| format!("parsing {}", path.display()))?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// A version's root manifest, asked of the slave; no root when the volume
/// has no version yet (version 0).
pub fn resolve(
    http: &reqwest::blocking::Client,
    slave: &str,
    volume: &VolumeName,
    version: Option<u64>,
) -> Result<ResolvedVersion> {
    let none = ResolvedVersion {
        version: 0,
        root: None,
        incarnation: String::new(),
    };
    let v = match version {
        Some(0) => return Ok(none),
        Some(n) => n.to_string(),
        None => "latest".into(),
    };
    let url = format!("{}/v1/volumes/{volume}/{v}/", slave.trim_end_matches('/'));
    let resp = http
        .get(&url)
        .send()
        .with_context(|| format!("contacting slave {slave}"))?;
    let status = resp.status();
    let body: serde_json::Value = resp.json().unwrap_or_default();
    if !status.is_success() {
        let msg = body["error"].as_str().unwrap_or("").to_string();
        if version.is_none() && msg.contains("has no version yet") {
            return Ok(none);
        }
        bail!("{volume}@{v}: {msg} (HTTP {})", status.as_u16());
    }
    let number = body["version"]
        .as_u64()
        .ok_or_else(|| anyhow!("slave answered without a version"))?;
    let root: ObjectId = body["manifest"]
        .as_str()
        .unwrap_or("")
        .parse()
        .map_err(|e| anyhow!("slave answered a bad manifest id: {e}"))?;
    Ok(ResolvedVersion {
        version: number,
        root: Some(root),
        incarnation: body["incarnation"].as_str().unwrap_or("").to_string(),
    })
}

fn upper_is_empty(upper: &Path) -> Result<bool> {
    Ok(std::fs::read_dir(upper)?.next().is_none())
}

/// Refuses a mount that would stack on an Elton mount, or share a state
/// directory (its upper) with a running mount: the kernel allows both, and
/// both lose track of which files belong to which version.
pub fn check_free(mountpoint: &Path, state_dir: &Path) -> Result<()> {
    let table = super::mount_table::MountTable::read().context("reading the mount table")?;
    if let Some(e) = table.at(mountpoint).filter(|e| e.is_elton()) {
        bail!(
            "{} is already an Elton mount (volume {}); unmount it first: elton umount {}",
            mountpoint.display(),
            e.volume().unwrap_or("?"),
            mountpoint.display()
        );
    }
    let socket = state_dir.join("control.sock");
    if super::control_path::connect(&socket).is_ok() {
        bail!(
            "{} is in use by another running mount (its control socket {} answers); \
             two mounts must not share an upper",
            state_dir.display(),
            socket.display()
        );
    }
    Ok(())
}

/// Mounts and serves until unmounted. Blocks.
pub fn run(opts: MountOptions) -> Result<()> {
    check_free(&opts.mountpoint, &opts.state_dir)?;
    let upper = opts.state_dir.join("upper");
    let work = opts.state_dir.join("work");
    for d in [&upper, &work] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    changes::empty_trash(&work).with_context(|| format!("emptying {}", work.display()))?;
    let http = reqwest::blocking::Client::builder().build()?;
    let store = ObjectStore::open(&opts.slave_data).map_err(|e| anyhow!("{e}"))?;
    let record_path = opts.state_dir.join("mount.json");
    let previous: Option<MountRecord> = read_json(&record_path)?;
    if let Some(p) = &previous
        && p.volume != opts.volume
    {
        bail!(
            "{} holds changes for volume {}, not {}",
            opts.state_dir.display(),
            p.volume,
            opts.volume
        );
    }

    // Finish or undo a commit interrupted by a crash.
    let mut recovered_version = None;
    if let Some(j) = read_json::<Journal>(&opts.state_dir.join("commit.json"))? {
        let next = j.parent + 1;
        let published =
            match j.root {
                None => false, // crashed while building: nothing was sent
                Some(root) => version_root(&http, &opts.slave_url, &opts.volume, next).context(
                    "cannot tell whether the interrupted commit was published; is the slave up?",
                )? == Some(root),
            };
        let layers = Layers::new(upper.clone(), work.clone(), Arc::new(NoLower), None);
        if published {
            tracing::info!(
                version = next,
                "interrupted commit was published; finishing it"
            );
            changes::clear_upper(&layers, &HashSet::new())?;
            recovered_version = Some(next);
        } else {
            tracing::info!("interrupted commit was not published; the upper keeps its changes");
            changes::unlink_aliases(&layers, &store)?;
            recovered_version = Some(j.parent);
        }
        std::fs::remove_file(opts.state_dir.join("commit.json"))?;
    }

    let lower = Arc::new(SlaveLower::new(&opts.slave_url, store.clone())?);
    if let Some(v) = super::mount_update::recover(
        &opts.state_dir,
        &upper,
        &work,
        lower.clone(),
        previous.as_ref(),
    )? {
        recovered_version = Some(v);
    }

    let dirty = !upper_is_empty(&upper)?;
    let wanted = match (recovered_version, &previous, opts.version) {
        (Some(v), _, None) => Some(v),
        (Some(v), _, Some(asked)) if dirty && asked != v => {
            bail!("the upper holds uncommitted changes to version {v}; mount that version")
        }
        (_, Some(p), Some(asked)) if dirty && asked != p.version => {
            bail!(
                "the upper holds uncommitted changes to version {}; mount that version (or remove {})",
                p.version,
                opts.state_dir.display()
            )
        }
        (_, Some(p), None) if dirty => Some(p.version),
        (_, _, asked) => asked,
    };
    let resolved = resolve(&http, &opts.slave_url, &opts.volume, wanted)?;
    let (version, root) = (resolved.version, resolved.root);
    if dirty
        && let Some(p) = &previous
        && p.version == version
        && !p.incarnation.is_empty()
        && !resolved.incarnation.is_empty()
        && p.incarnation != resolved.incarnation
    {
        bail!(
            "the upper holds uncommitted changes to {}@{version} of metadata incarnation {}, \
             but the master's metadata is now incarnation {} (restored or started again), \
             where version {version} may be another tree: they cannot be committed on it; copy \
             what you need out of {} and remove {}",
            opts.volume,
            p.incarnation,
            resolved.incarnation,
            upper.display(),
            opts.state_dir.display()
        );
    }
    let record = MountRecord {
        format: STATE_FORMAT,
        volume: opts.volume.clone(),
        version,
        incarnation: resolved.incarnation,
    };
    write_json(&record_path, &record)?;

    let layers = Layers::new(upper, work, lower, root);
    let state = Arc::new(Mutex::new(MountState::new(layers)));
    let socket = opts.state_dir.join("control.sock");
    let _ = std::fs::remove_file(&socket);
    let listener = super::control_path::bind(&socket)
        .with_context(|| format!("binding {}", socket.display()))?;

    let assembled =
        super::chunked::Assembled::new(opts.state_dir.join("assembled"), opts.assembled_max_bytes);
    let released = Arc::new(Condvar::new());
    let fs = EltonFs::new(state.clone(), socket.clone(), assembled, released.clone());
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName(format!("elton:{}", opts.volume)),
        MountOption::Subtype("elton".into()),
        MountOption::DefaultPermissions,
    ];
    if opts.read_only {
        config.mount_options.push(MountOption::RO);
    }
    if opts.allow_other {
        config.acl = SessionACL::All;
    }
    config.n_threads = Some(4);
    let session = fuser::Session::new(fs, &opts.mountpoint, &config)
        .with_context(|| format!("mounting at {}", opts.mountpoint.display()))?;
    let notifier = session.notifier();
    let mounted = Arc::new(Mounted {
        state,
        released,
        record: Mutex::new(record),
        opts,
        store,
        http,
    });
    let m = mounted.clone();
    std::thread::spawn(move || serve_control(listener, m, notifier));
    spawn_signal_unmount(mounted.opts.mountpoint.clone());
    tracing::info!(volume = %mounted.opts.volume, version, mountpoint = %mounted.opts.mountpoint.display(), "mounted");
    session.run().context("FUSE session")?;
    let _ = std::fs::remove_file(&socket);
    tracing::info!("unmounted");
    Ok(())
}

/// The root of `volume`@`n` as published, or `None` when there is no such
/// version; any other failure is an error (the answer is unknown).
fn version_root(
    http: &reqwest::blocking::Client,
    slave: &str,
    volume: &VolumeName,
    n: u64,
) -> Result<Option<ObjectId>> {
    let url = format!("{}/v1/volumes/{volume}/{n}/", slave.trim_end_matches('/'));
    let resp = http
        .get(&url)
        .send()
        .with_context(|| format!("contacting slave {slave}"))?;
    if resp.status() == reqwest::StatusCode::NOT_FOUND {
        return Ok(None);
    }
    if !resp.status().is_success() {
        bail!("{url}: HTTP {}", resp.status().as_u16());
    }
    let body: serde_json::Value = resp.json()?;
    let root = body["manifest"]
        .as_str()
        .unwrap_or("")
        .parse()
        .map_err(|e| anyhow!("bad manifest id from slave: {e}"))?;
    Ok(Some(root))
}

/// Only used while recovering, before the lower is set up.
pub(super) struct NoLower;
impl super::lower::LowerSource for NoLower {
    fn manifest(&self, _id: &ObjectId) -> std::io::Result<Arc<elton_proto::DirManifest>> {
        Err(std::io::Error::from_raw_os_error(libc::EIO))
    }
    fn object_path(&self, _id: &ObjectId) -> std::io::Result<PathBuf> {
        Err(std::io::Error::from_raw_os_error(libc::EIO))
    }
    fn recipe(&self, _id: &ObjectId) -> std::io::Result<Arc<elton_proto::Recipe>> {
        Err(std::io::Error::from_raw_os_error(libc::EIO))
    }
    fn is_local(&self, _id: &ObjectId) -> bool {
        false
    }
}

/// SIGTERM/SIGINT unmount cleanly instead of leaving a dead mount behind.
fn spawn_signal_unmount(mountpoint: PathBuf) {
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut term), Ok(mut int)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) else {
                return;
            };
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        });
        tracing::info!("signal received; unmounting");
        let _ = unmount(&mountpoint, true);
    });
}

/// Unmounts a FUSE mount (lazily with `lazy`, which also works while busy).
pub fn unmount(mountpoint: &Path, lazy: bool) -> Result<()> {
    let mut cmd = std::process::Command::new("fusermount3");
    cmd.arg(if lazy { "-uz" } else { "-u" }).arg(mountpoint);
    match cmd.output() {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => bail!("{}", String::from_utf8_lossy(&o.stderr).trim()),
        Err(_) => {
            let flags = if lazy {
                rustix::mount::UnmountFlags::DETACH
            } else {
                rustix::mount::UnmountFlags::empty()
            };
            rustix::mount::unmount(mountpoint, flags)
                .map_err(|e| anyhow!("unmounting {}: {e}", mountpoint.display()))
        }
    }
}

fn serve_control(listener: UnixListener, m: Arc<Mounted>, notifier: Notifier) {
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let m = m.clone();
        let notifier = notifier.clone();
        std::thread::spawn(move || {
            if let Err(e) = handle_control(conn, &m, &notifier) {
                tracing::warn!("control connection: {e:#}");
            }
        });
    }
}

fn handle_control(conn: UnixStream, m: &Mounted, notifier: &Notifier) -> Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let req: ControlRequest = serde_json::from_str(&line).context("bad control request")?;
    let reporter = match &req {
        ControlRequest::Commit { progress: true, .. } => Some(Reporter::start(&conn)?),
        _ => None,
    };
    let silent = Counters::silent();
    let counters = reporter.as_ref().map_or(&silent, Reporter::counters);
    let resp = match execute(m, req, notifier, counters) {
        Ok(r) => r,
        Err(e) => ControlResponse {
            error: Some(format!("{e:#}")),
            ..Default::default()
        },
    };
    // Every progress line goes out before the answer that ends the stream.
    if let Some(r) = reporter {
        r.finish();
    }
    let mut out = serde_json::to_vec(&resp)?;
    out.push(b'\n');
    (&conn).write_all(&out)?;
    Ok(())
}

fn execute(
    m: &Mounted,
    req: ControlRequest,
    notifier: &Notifier,
    progress: &Counters,
) -> Result<ControlResponse> {
    let record = m.record.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let base = ControlResponse {
        volume: Some(record.volume.to_string()),
        version: Some(record.version),
        ..Default::default()
    };
    if m.opts.read_only
        && matches!(
            req,
            ControlRequest::Commit { .. }
                | ControlRequest::Checkout { .. }
                | ControlRequest::Update
        )
    {
        bail!(
            "the mount at {} is read-only (it shows {}@{} only); nothing was changed",
            m.opts.mountpoint.display(),
            record.volume,
            record.version
        );
    }
    match req {
        ControlRequest::Info => Ok(base),
        ControlRequest::Status => {
            let st = m.state.lock().unwrap_or_else(|p| p.into_inner());
            let changes = changes::status(&st.layers)?;
            Ok(ControlResponse {
                changes: Some(changes),
                ..base
            })
        }
        ControlRequest::Commit {
            message,
            author,
            host,
            progress: _,
        } => commit(m, &record, message, author, host, notifier, progress),
        ControlRequest::Update => super::mount_update::update(m, &record, notifier),
        ControlRequest::Checkout { version } => {
            let invalidate = {
                let mut st = m.state.lock().unwrap_or_else(|p| p.into_inner());
                if !changes::status(&st.layers)?.is_empty() {
                    // As `git checkout`, never over local changes.
                    bail!(
                        "the mount has uncommitted changes; nothing was changed: commit them \
                         (`elton commit`), or move them onto the volume's head with `elton update`"
                    );
                }
                let resolved = resolve(&m.http, &m.opts.slave_url, &record.volume, Some(version))?;
                st.layers.root = resolved.root;
                changes::clear_upper(&st.layers, &HashSet::new())?;
                let rec = MountRecord {
                    format: STATE_FORMAT,
                    volume: record.volume.clone(),
                    version: resolved.version,
                    incarnation: resolved.incarnation,
                };
                write_json(&m.opts.state_dir.join("mount.json"), &rec)?;
                *m.record.lock().unwrap_or_else(|p| p.into_inner()) = rec;
                st.inodes.all()
            };
            invalidate_all(notifier, invalidate);
            Ok(ControlResponse {
                version: Some(version),
                ..base
            })
        }
    }
}

/// Posts a commit to the slave: the status and the JSON answer (`null`
/// when the answer is not JSON).
fn post_commit(
    http: &reqwest::blocking::Client,
    url: &str,
    token: &str,
    body: &serde_json::Value,
) -> reqwest::Result<(reqwest::StatusCode, serde_json::Value)> {
    let resp = http.post(url).bearer_auth(token).json(body).send()?;
    let status = resp.status();
    Ok((status, resp.json().unwrap_or_default()))
}

/// Commit protocol: while the mount's lock is held (metadata operations
/// wait; data already open keeps flowing), build the tree from the upper,
/// journal, compare-and-set the head through the slave, then switch the
/// mount to the new version with an empty upper.
fn commit(
    m: &Mounted,
    record: &MountRecord,
    message: String,
    author: String,
    host: String,
    notifier: &Notifier,
    progress: &Counters,
) -> Result<ControlResponse> {
    let token = m
        .opts
        .token
        .clone()
        .ok_or_else(|| anyhow!("no write token: mount with --token or ELTON_TOKEN"))?;
    let entered = std::time::Instant::now();
    let invalidate = {
        let st = m.state.lock().unwrap_or_else(|p| p.into_inner());
        // The kernel sends a file's RELEASE after close(2) has returned: a
        // file its writer closed just before this commit may still look
        // open, and would be committed but kept in the upper (and committed
        // again next time). Such a release is already on its way.
        let (mut st, _) = m
            .released
            .wait_timeout_while(st, RELEASE_GRACE, |st| !st.open_for_write().is_empty())
            .unwrap_or_else(|p| p.into_inner());
        let changes = changes::status(&st.layers)?;
        if changes.is_empty() {
            return Ok(ControlResponse {
                message: Some("nothing to commit".into()),
                volume: Some(record.volume.to_string()),
                version: Some(record.version),
                ..Default::default()
            });
        }
        let open_for_write: HashSet<(u64, u64)> = st.open_for_write().into_iter().collect();
        let journal_path = m.opts.state_dir.join("commit.json");
        // Journal first: if we crash while linking files into the store,
        // the next start knows to undo those links.
        let started = Journal {
            format: STATE_FORMAT,
            parent: record.version,
            root: None,
            linked: Vec::new(),
        };
        write_json(&journal_path, &started)?;
        // On the files' clock, or an object stored within this tick would
        // look older than the commit and survive its undo.
        let since = elton_slave::store::file_clock_now();
        let total_files = changes.files();
        progress.set_phase(Phase::Storing, total_files);
        // Everything the commit stores is staged and published with two
        // flushes of the filesystem (not two per object) before the
        // journal names the root: objects are durable before the version.
        let mut staging = Staging::new(&m.store);
        let rooted = |built: &changes::Built| Journal {
            format: STATE_FORMAT,
            parent: record.version,
            root: Some(built.root),
            linked: built.linked.clone(),
        };
        let journal_rides_flush = same_filesystem(&m.opts.state_dir, m.store.tmp_dir());
        let timer = std::time::Instant::now();
        // The lock, the wait for late releases, the status walk and the
        // journal's fsync.
        let before_build = timer - entered;
        let mut phases = [std::time::Duration::ZERO; 3];
        let built = changes::build(
            &st.layers,
            &mut staging,
            &open_for_write,
            m.opts.chunk_threshold,
            progress,
        )
        .and_then(|built| {
            phases[0] = timer.elapsed();
            let manifests: Vec<&[u8]> = built.manifests.iter().map(|(_, b)| b.as_slice()).collect();
            let puts = staging
                .bytes_many(&manifests)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            progress.objects(puts.iter().filter(|p| p.new).count() as u64);
            phases[1] = timer.elapsed();
            // The journal names the root before the flush when it lives on
            // the store's filesystem: the flush's `syncfs` then makes it
            // durable along with the objects, one flush fewer (issue 16).
            // A root in the journal only means "ask whether it was
            // published", so naming it before its objects are durable is
            // safe; publishing waits for the flush.
            if journal_rides_flush {
                let flushes = staging.has_pending();
                write_json_unflushed(&journal_path, &rooted(&built))
                    .map_err(|e| std::io::Error::other(format!("{e:#}")))?;
                fault_point("before-flush");
                staging
                    .flush()
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
                if !flushes {
                    rustix::fs::syncfs(std::fs::File::open(&m.opts.state_dir)?)?;
                }
            } else {
                staging
                    .flush()
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
            }
            phases[2] = timer.elapsed();
            Ok(built)
        });
        let stored = staging.added().to_vec();
        drop(staging); // deletes whatever was staged and not published
        let built = match built {
            Ok(b) => b,
            Err(e) => {
                let _ = changes::unlink_aliases(&st.layers, &m.store);
                changes::remove_stored(&m.store, &stored, since);
                let _ = std::fs::remove_file(&journal_path);
                return Err(e.into());
            }
        };
        if !journal_rides_flush {
            write_json(&journal_path, &rooted(&built))?;
        }
        fault_point("after-journal");
        progress.set_phase(Phase::Publishing, total_files);
        let url = format!(
            "{}/v1/volumes/{}/versions",
            m.opts.slave_url.trim_end_matches('/'),
            record.volume
        );
        let mut body = serde_json::json!({ "parent": record.version, "root": built.root, "message": message, "author": author, "host": host });
        // The slave and the master refuse the commit if the parent was read
        // from another incarnation of the metadata.
        if !record.incarnation.is_empty() {
            body["incarnation"] = record.incarnation.clone().into();
        }
        // What this commit stored in the slave's store: the slave announces
        // it and leaves the tree check to the master, which makes it anyway
        // (a large commit leaves it out, and the slave checks the tree).
        let plain = body.clone();
        // Each list within the slave's bound.
        let listed = elton_slave::http::MAX_COMMIT_LISTED;
        if built.referenced.len() <= listed && built.manifests.len() <= listed {
            body["stored"] = serde_json::json!(built.referenced);
            let manifests: Vec<&ObjectId> = built.manifests.iter().map(|(id, _)| id).collect();
            body["manifests"] = serde_json::json!(manifests);
        }
        let mut outcome = post_commit(&m.http, &url, &token, &body);
        // A slave older than `stored` refuses the field: ask it again the
        // way it knows (it checks the tree itself).
        if body.get("stored").is_some()
            && matches!(&outcome, Ok((status, v)) if *status == reqwest::StatusCode::BAD_REQUEST
                && v["error"].as_str().is_some_and(|e| e.contains("unknown field `stored`")))
        {
            outcome = post_commit(&m.http, &url, &token, &plain);
        }
        let mut refused = false;
        let published = match outcome {
            Ok((status, v)) if status.is_success() => v["version"]
                .as_u64()
                .map(|n| (n, v["incarnation"].as_str().unwrap_or("").to_string()))
                .ok_or_else(|| anyhow!("slave answered without a version")),
            Ok((status, v)) => {
                // A client error (refused: conflict, invalid tree, token)
                // surely published nothing; a server error may hide a
                // commit the master recorded.
                refused = status.is_client_error();
                let hint = if status == reqwest::StatusCode::CONFLICT {
                    format!(
                        "; run `elton update {}` to move your changes onto the head (both \
                         sides of a conflict are kept), then commit again",
                        m.opts.mountpoint.display()
                    )
                } else {
                    String::new()
                };
                Err(anyhow!(
                    "{} (HTTP {}){hint}",
                    v["error"].as_str().unwrap_or("commit failed"),
                    status.as_u16()
                ))
            }
            Err(e) => Err(anyhow!("contacting slave: {e}")),
        };
        let (version, incarnation) = match published {
            Ok(v) => v,
            Err(e) => {
                // Undo: the store must not alias upper files that stay writable.
                if let Err(undo) = changes::unlink_aliases(&st.layers, &m.store) {
                    tracing::error!("undoing store links after a failed commit: {undo}");
                }
                if refused {
                    changes::remove_stored(&m.store, &stored, since);
                }
                let _ = std::fs::remove_file(&journal_path);
                return Err(e);
            }
        };
        fault_point("after-publish");
        // Where a commit's time goes (issue 16): which phase scales with
        // what shows in a debug log, without a profiler.
        tracing::debug!(
            manifests = built.manifests.len(),
            prepare_ms = before_build.as_millis() as u64,
            build_ms = phases[0].as_millis() as u64,
            encode_ms = (phases[1] - phases[0]).as_millis() as u64,
            flush_ms = (phases[2] - phases[1]).as_millis() as u64,
            publish_ms = (timer.elapsed() - phases[2]).as_millis() as u64,
            "commit"
        );
        let published_at = std::time::Instant::now();
        changes::clear_upper(&st.layers, &open_for_write)?;
        let cleared = published_at.elapsed();
        st.layers.root = Some(built.root);
        let rec = MountRecord {
            format: STATE_FORMAT,
            volume: record.volume.clone(),
            version,
            incarnation,
        };
        write_json(&m.opts.state_dir.join("mount.json"), &rec)?;
        std::fs::remove_file(&journal_path)?;
        let recorded = published_at.elapsed();
        *m.record.lock().unwrap_or_else(|p| p.into_inner()) = rec;
        for s in &built.skipped {
            tracing::warn!("not committed (not a file, directory or symlink): {s}");
        }
        // The view did not change, except where the upper was: a one-file
        // commit in a volume whose 100,000 inodes the kernel knows sends a
        // few invalidations, not 200,000 (issue 16).
        let touched = changes.touched();
        let inos: Vec<(u64, PathBuf)> = st
            .inodes
            .all()
            .into_iter()
            .filter(|(_, p)| touched.contains(p))
            .collect();
        (inos, version, published_at, cleared, recorded)
    };
    let (inos, version, published_at, cleared, recorded) = invalidate;
    let invalidated = inos.len();
    invalidate_all(notifier, inos);
    tracing::debug!(
        clear_ms = cleared.as_millis() as u64,
        record_ms = (recorded - cleared).as_millis() as u64,
        invalidated,
        after_ms = published_at.elapsed().as_millis() as u64,
        total_ms = entered.elapsed().as_millis() as u64,
        "commit finished"
    );
    Ok(ControlResponse {
        volume: Some(record.volume.to_string()),
        version: Some(version),
        ..Default::default()
    })
}

/// Crash-test seam: with `ELTON_FAULT_PAUSE=<point>` the commit stops at
/// that point long enough for a test to `kill -9` the mount process.
pub(super) fn fault_point(point: &str) {
    if std::env::var("ELTON_FAULT_PAUSE").is_ok_and(|p| p == point) {
        tracing::warn!(point, "fault injection: pausing commit");
        std::thread::sleep(Duration::from_secs(60));
    }
}

/// Drops the kernel's cached attributes, data and names after the lower
/// changed under every path.
pub(super) fn invalidate_all(notifier: &Notifier, inos: Vec<(u64, PathBuf)>) {
    let mut by_path = std::collections::HashMap::new();
    for (ino, path) in &inos {
        by_path.insert(path.clone(), *ino);
    }
    for (ino, path) in inos {
        let _ = notifier.inval_inode(INodeNo(ino), 0, 0);
        if let (Some(parent), Some(name)) = (path.parent(), path.file_name())
            && let Some(&pino) = by_path.get(parent)
        {
            let _ = notifier.inval_entry(INodeNo(pino), name);
        }
    }
}

/// Asks a running mount over its control socket.
pub fn control(mountpoint: &Path, req: &ControlRequest) -> Result<ControlResponse> {
    control_with_progress(mountpoint, req, &mut |_| {})
}

/// Asks a running mount, passing each progress line it sends before its
/// answer (a commit asked with `progress`) to `on_progress`.
pub fn control_with_progress(
    mountpoint: &Path,
    req: &ControlRequest,
    on_progress: &mut dyn FnMut(&CommitProgress),
) -> Result<ControlResponse> {
    let mut buf = vec![0u8; 4096];
    let n = rustix::fs::getxattr(mountpoint, super::fuse::CONTROL_XATTR, &mut buf[..])
        .map_err(|e| anyhow!("{} is not an Elton mount ({e})", mountpoint.display()))?;
    let socket = PathBuf::from(String::from_utf8_lossy(&buf[..n]).into_owned());
    let conn = super::control_path::connect(&socket)
        .with_context(|| format!("connecting to {}", socket.display()))?;
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    (&conn).write_all(&line)?;
    let mut reader = BufReader::new(conn);
    let resp = loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            bail!(
                "the mount at {} closed the connection without an answer (see its mount.log)",
                mountpoint.display()
            );
        }
        match decode_line(&line)? {
            ControlLine::Progress(p) => on_progress(&p),
            ControlLine::Done(resp) => break resp,
        }
    };
    match &resp.error {
        Some(e) => Err(anyhow!("{e}")),
        None => Ok(resp),
    }
}
