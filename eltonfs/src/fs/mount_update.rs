//! The mount's side of `elton update`: plan against the head, journal,
//! apply, then switch the mount's record and lower root, all under the
//! mount's lock (metadata operations wait, as during a commit). At start,
//! an `update.json` left by a crash is applied again before mounting.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use fuser::Notifier;

use super::layers::Layers;
use super::lower::LowerSource;
use super::mount::{
    ControlResponse, MountRecord, Mounted, STATE_FORMAT, fault_point, invalidate_all, read_json,
    resolve, write_json,
};
use crate::update::{UpdateJournal, apply::apply, journal, survey::survey};

/// Moves the mount onto the volume's head, merging the upper.
pub(super) fn update(
    m: &Mounted,
    record: &MountRecord,
    notifier: &Notifier,
) -> Result<ControlResponse> {
    let (inos, journal) = {
        let mut st = m.state.lock().unwrap_or_else(|p| p.into_inner());
        let head = resolve(&m.http, &m.opts.slave_url, &record.volume, None)?;
        if !record.incarnation.is_empty()
            && !head.incarnation.is_empty()
            && record.incarnation != head.incarnation
        {
            bail!(
                "the mount's version {} was read from metadata incarnation {}, but the master's \
                 metadata is now incarnation {} (restored or started again), where that number \
                 may name another tree: nothing to merge against; copy what you need out of {}",
                record.version,
                record.incarnation,
                head.incarnation,
                st.layers.upper.display()
            );
        }
        if head.version == record.version {
            return Ok(ControlResponse {
                volume: Some(record.volume.to_string()),
                version: Some(record.version),
                message: Some(format!(
                    "already at the head of {} (version {})",
                    record.volume, record.version
                )),
                conflicts: Some(Vec::new()),
                ..Default::default()
            });
        }
        if head.version < record.version {
            bail!(
                "the head of {} is version {}, older than the mount's version {}",
                record.volume,
                head.version,
                record.version
            );
        }
        let plan = survey(&st.layers, head.root).context("planning the update")?;
        let journal = UpdateJournal {
            format: journal::UPDATE_FORMAT,
            from: record.version,
            from_root: st.layers.root,
            to: head.version,
            to_root: head.root,
            incarnation: head.incarnation,
            plan,
        };
        let journal_path = m.opts.state_dir.join(journal::FILE_NAME);
        write_json(&journal_path, &journal)?;
        fault_point("update-after-journal");
        if let Err(e) = apply(
            &mut st.layers,
            &journal.plan,
            journal.from_root,
            journal.to_root,
        ) {
            // Nothing visible changed (see `update::apply`): drop the plan.
            st.layers.root = journal.from_root;
            let _ = std::fs::remove_file(&journal_path);
            return Err(anyhow!("updating: {e}"));
        }
        fault_point("update-after-apply");
        let rec = finish(&m.opts.state_dir, record, &journal)?;
        *m.record.lock().unwrap_or_else(|p| p.into_inner()) = rec;
        (st.inodes.all(), journal)
    };
    invalidate_all(notifier, inos);
    let n = journal.plan.conflicts.len();
    Ok(ControlResponse {
        volume: Some(record.volume.to_string()),
        version: Some(journal.to),
        message: Some(format!(
            "updated {} from version {} to {}{}",
            record.volume,
            journal.from,
            journal.to,
            match n {
                0 => String::new(),
                1 => "; 1 conflict".into(),
                n => format!("; {n} conflicts"),
            }
        )),
        conflicts: Some(journal.plan.conflicts),
        ..Default::default()
    })
}

/// Records the head as the mount's version, then drops the journal.
fn finish(state_dir: &Path, record: &MountRecord, j: &UpdateJournal) -> Result<MountRecord> {
    let rec = MountRecord {
        format: STATE_FORMAT,
        volume: record.volume.clone(),
        version: j.to,
        incarnation: j.incarnation.clone(),
    };
    write_json(&state_dir.join("mount.json"), &rec)?;
    std::fs::remove_file(state_dir.join(journal::FILE_NAME))
        .context("removing the update journal")?;
    Ok(rec)
}

/// Finishes an update interrupted by a crash; returns the version the
/// upper now applies to.
pub(super) fn recover(
    state_dir: &Path,
    upper: &Path,
    work: &Path,
    lower: Arc<dyn LowerSource>,
    record: Option<&MountRecord>,
) -> Result<Option<u64>> {
    let Some(j) = read_json::<UpdateJournal>(&state_dir.join(journal::FILE_NAME))? else {
        return Ok(None);
    };
    if j.format != journal::UPDATE_FORMAT {
        bail!(
            "{} has format {}, this elton knows {}",
            state_dir.join(journal::FILE_NAME).display(),
            j.format,
            journal::UPDATE_FORMAT
        );
    }
    let Some(record) = record else {
        bail!(
            "{} has an update journal but no mount.json",
            state_dir.display()
        );
    };
    tracing::info!(
        from = j.from,
        to = j.to,
        "finishing an update interrupted by a crash"
    );
    let mut layers = Layers::new(upper.to_path_buf(), work.to_path_buf(), lower, j.from_root);
    apply(&mut layers, &j.plan, j.from_root, j.to_root).context(
        "finishing the interrupted update (it needs the slave for the head's files; is it up?)",
    )?;
    for c in &j.plan.conflicts {
        tracing::warn!(path = %c.path, kind = c.kind.describe(), theirs = ?c.theirs, "update conflict");
    }
    finish(state_dir, record, &j)?;
    Ok(Some(j.to))
}
