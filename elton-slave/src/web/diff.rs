//! What changed between two trees (a version and its parent), walking only
//! the subtrees whose manifest ids differ.

use elton_proto::{DirManifest, EntryKind, ObjectId};
use futures::future::BoxFuture;

use crate::SlaveError;
use crate::volumes::Volumes;

/// Most changed paths listed for one version (the page says when cut).
pub const MAX_CHANGES: usize = 500;

/// One changed path: `A`dded, `M`odified or `D`eleted (directories end in `/`).
pub type Change = (char, String);

pub async fn diff(
    volumes: &Volumes,
    a: Option<ObjectId>,
    b: Option<ObjectId>,
) -> Result<Vec<Change>, SlaveError> {
    let mut out = Vec::new();
    walk(volumes, String::new(), a, b, &mut out).await?;
    Ok(out)
}

async fn manifest(volumes: &Volumes, id: Option<ObjectId>) -> Result<DirManifest, SlaveError> {
    Ok(match id {
        Some(id) => (*volumes.manifest(id).await?).clone(),
        None => DirManifest::default(),
    })
}

fn walk<'a>(
    volumes: &'a Volumes,
    prefix: String,
    a: Option<ObjectId>,
    b: Option<ObjectId>,
    out: &'a mut Vec<Change>,
) -> BoxFuture<'a, Result<(), SlaveError>> {
    Box::pin(async move {
        if a == b || out.len() >= MAX_CHANGES {
            return Ok(());
        }
        let (ma, mb) = (manifest(volumes, a).await?, manifest(volumes, b).await?);
        let mut names: Vec<&str> = ma
            .entries
            .iter()
            .chain(&mb.entries)
            .map(|e| e.name.as_str())
            .collect();
        names.sort_unstable();
        names.dedup();
        for name in names {
            if out.len() >= MAX_CHANGES {
                break;
            }
            let path = format!("{prefix}{name}");
            let dir = |e: Option<&elton_proto::Entry>| {
                e.filter(|e| e.kind == EntryKind::Dir)
                    .and_then(|e| e.object)
            };
            match (ma.get(name), mb.get(name)) {
                (Some(x), Some(y)) if x == y => {}
                (Some(x), Some(y)) if x.kind == EntryKind::Dir && y.kind == EntryKind::Dir => {
                    if (x.mode, x.uid, x.gid) != (y.mode, y.uid, y.gid) {
                        out.push(('M', format!("{path}/")));
                    }
                    walk(volumes, format!("{path}/"), x.object, y.object, out).await?;
                }
                (Some(_), Some(_)) => out.push(('M', path)),
                (None, Some(y)) => {
                    let is_dir = y.kind == EntryKind::Dir;
                    out.push((
                        'A',
                        if is_dir {
                            format!("{path}/")
                        } else {
                            path.clone()
                        },
                    ));
                    if is_dir {
                        walk(volumes, format!("{path}/"), None, dir(Some(y)), out).await?;
                    }
                }
                (Some(x), None) => out.push((
                    'D',
                    if x.kind == EntryKind::Dir {
                        format!("{path}/")
                    } else {
                        path
                    },
                )),
                (None, None) => {}
            }
        }
        Ok(())
    })
}
