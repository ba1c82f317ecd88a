//! `elton update [MOUNTPOINT]`: moves a mount with uncommitted changes onto
//! its volume's head, keeping them (three-way merge; see `crate::update`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::fs::mount::{self, ControlRequest};

#[derive(Args, Debug)]
pub struct UpdateArgs {
    /// The mount to update [default: the current directory].
    pub mountpoint: Option<PathBuf>,
    /// Print the outcome as JSON (version, conflicts) instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn update(a: UpdateArgs) -> Result<()> {
    let mountpoint = a.mountpoint.unwrap_or_else(|| PathBuf::from("."));
    let mountpoint =
        std::fs::canonicalize(&mountpoint).with_context(|| format!("{}", mountpoint.display()))?;
    let r = mount::control(&mountpoint, &ControlRequest::Update)?;
    let conflicts = r.conflicts.clone().unwrap_or_default();
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "volume": r.volume,
                "version": r.version,
                "conflicts": conflicts,
            })
        );
    } else {
        if let Some(m) = &r.message {
            println!("{m}");
        }
        print_conflicts(&mountpoint, &conflicts);
    }
    if !conflicts.is_empty() {
        // Like git after a merge with conflicts: the update is done, but a
        // script must not go on to commit as if nothing needed a look.
        bail!(
            "{} conflicting path{}: both sides are kept; resolve them, then `elton commit`",
            conflicts.len(),
            if conflicts.len() == 1 { "" } else { "s" }
        );
    }
    Ok(())
}

fn print_conflicts(mountpoint: &Path, conflicts: &[crate::update::Conflict]) {
    for c in conflicts {
        let kept = match &c.theirs {
            Some(t) => format!("yours at {}, the head's at {}", c.path, t),
            None => match c.kind {
                crate::update::plan::ConflictKind::DeletedByUs => {
                    format!("the head's at {}", c.path)
                }
                _ => format!("yours at {}", c.path),
            },
        };
        println!(
            "CONFLICT ({}): {} — kept {}",
            c.kind.describe(),
            c.path,
            kept
        );
    }
    if !conflicts.is_empty() {
        println!(
            "(paths relative to {}; remove or rename the copies you do not want before committing)",
            mountpoint.display()
        );
    }
}
