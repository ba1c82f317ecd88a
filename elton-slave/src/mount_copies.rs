//! Checking the whole-file copies of chunked files that Eltonfs mounts keep
//! (`<state>/assembled/<recipe id>`, see `docs/eltonfs.md`) for mounts whose
//! state directory is the default, `<data>/mounts/<name>/`. A mount passes
//! these files through to the kernel, so a bad byte in one would be served
//! without any hash check. A copy is good when it has the recipe's length
//! and each chunk's range hashes to that chunk's id. A bad copy is cut off
//! like a bad object ([`crate::quarantine`]): its bytes go to `corrupt/`,
//! the file is removed, and earlier opens read end-of-file; the mount's
//! next open assembles the file again from verified chunks.

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use elton_proto::{ObjectId, Recipe};

use crate::scrub::ScrubReport;
use crate::scrub_pace::Pace;
use crate::store::ObjectStore;

/// Checks every copy under `mounts/*/assembled/`; returns the recipes of
/// the bad ones (cut off). Blocking.
pub fn check_all(
    store: &ObjectStore,
    mounts: &Path,
    pace: &mut Pace,
    report: &mut ScrubReport,
) -> Vec<ObjectId> {
    let mut bad = Vec::new();
    let Ok(states) = fs::read_dir(mounts) else {
        return bad; // no mounts here
    };
    for state in states.flatten() {
        let Ok(copies) = fs::read_dir(state.path().join("assembled")) else {
            continue;
        };
        for copy in copies.flatten() {
            let Some(recipe_id) = copy
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<ObjectId>().ok())
            else {
                continue; // a temp file of an assembly in progress
            };
            let path = copy.path();
            match check_copy(store, &path, &recipe_id, pace) {
                Ok(Verdict::Good(size)) => {
                    report.mount_copies += 1;
                    report.bytes += size;
                }
                Ok(Verdict::Unchecked) => {}
                Ok(Verdict::Bad(ino)) => {
                    report.mount_copies += 1;
                    report.mount_copies_bad += 1;
                    cut_off(store, &path, &recipe_id, ino);
                    bad.push(recipe_id);
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {} // evicted meanwhile
                Err(e) => tracing::warn!(path = %path.display(), "scrub: {e}"),
            }
        }
    }
    bad
}

enum Verdict {
    Good(u64),
    /// Its recipe is not in the store (or malformed): nothing to check
    /// against. The mount verifies such a copy itself before using it.
    Unchecked,
    /// Bad; the inode checked.
    Bad(u64),
}

fn check_copy(
    store: &ObjectStore,
    path: &Path,
    recipe_id: &ObjectId,
    pace: &mut Pace,
) -> io::Result<Verdict> {
    let recipe = match store.read(recipe_id) {
        Ok(Some(bytes)) => match Recipe::decode(&bytes) {
            Ok(r) => r,
            Err(_) => return Ok(Verdict::Unchecked),
        },
        _ => return Ok(Verdict::Unchecked),
    };
    let mut file = File::open(path)?;
    let meta = file.metadata()?;
    let wait = pace.charge(meta.len(), Instant::now());
    if !wait.is_zero() {
        std::thread::sleep(wait);
    }
    if matches_recipe(&mut file, meta.len(), &recipe)? {
        Ok(Verdict::Good(meta.len()))
    } else {
        Ok(Verdict::Bad(meta.ino()))
    }
}

/// Whether `len` bytes of `r` are the recipe's file, chunk by chunk.
pub fn matches_recipe(r: &mut impl Read, len: u64, recipe: &Recipe) -> io::Result<bool> {
    if len != recipe.size {
        return Ok(false);
    }
    let mut buf = Vec::new();
    for chunk in &recipe.chunks {
        buf.resize(chunk.size as usize, 0);
        match r.read_exact(&mut buf) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(false),
            Err(e) => return Err(e),
        }
        if ObjectId::of(&buf) != chunk.object {
            return Ok(false);
        }
    }
    Ok(true)
}

fn cut_off(store: &ObjectStore, path: &Path, recipe_id: &ObjectId, ino: u64) {
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let evidence = store
        .corrupt_dir()
        .join(format!("assembled-{recipe_id}.{stamp}"));
    match crate::quarantine::cut_off(path, Some(&evidence), Some(ino)) {
        Ok(_) => tracing::error!(
            path = %path.display(),
            moved_to = %evidence.display(),
            "corrupt assembled copy of a mount removed"
        ),
        Err(e) => {
            tracing::error!(path = %path.display(), "corrupt assembled copy could not be removed: {e}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use elton_proto::recipe::Chunk;

    fn recipe_of(parts: &[&[u8]]) -> Recipe {
        Recipe {
            format: 1,
            size: parts.iter().map(|p| p.len() as u64).sum(),
            chunks: parts
                .iter()
                .map(|p| Chunk {
                    object: ObjectId::of(p),
                    size: p.len() as u64,
                })
                .collect(),
        }
    }

    #[test]
    fn a_copy_matches_only_with_every_chunk_and_the_length() {
        let r = recipe_of(&[b"abc", b"defg"]);
        assert!(matches_recipe(&mut &b"abcdefg"[..], 7, &r).unwrap());
        assert!(!matches_recipe(&mut &b"abcdefX"[..], 7, &r).unwrap());
        assert!(!matches_recipe(&mut &b"abcdef"[..], 6, &r).unwrap());
        assert!(!matches_recipe(&mut &b"abcdef"[..], 7, &r).unwrap());
    }
}
