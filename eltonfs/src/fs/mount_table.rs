//! The kernel's mount table (`/proc/self/mountinfo`), read to answer
//! "is this path an Elton mount, and which one holds it": the CLI refuses
//! to stack a mount on a mount, finds the mount root from a subdirectory,
//! and tells a path that is not mounted from a failing unmount.
//!
//! Parsing is pure (unit-tested here); only [`MountTable::read`] does IO.

use std::path::{Path, PathBuf};

/// The source every Eltonfs mount names: `elton:VOLUME` (its FSName).
pub const ELTON_SOURCE_PREFIX: &str = "elton:";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    pub mountpoint: PathBuf,
    pub fstype: String,
    /// `elton:VOLUME` for Eltonfs mounts.
    pub source: String,
}

impl MountEntry {
    /// A FUSE mount named `elton:...`. The type is `fuse` or `fuse.elton`
    /// depending on how the mount was made (the kernel's or fusermount3's
    /// way of passing the subtype), so the source decides.
    pub fn is_elton(&self) -> bool {
        self.fstype.starts_with("fuse") && self.source.starts_with(ELTON_SOURCE_PREFIX)
    }

    /// The volume named by an Eltonfs mount's source (`elton:VOLUME`).
    pub fn volume(&self) -> Option<&str> {
        self.source.strip_prefix(ELTON_SOURCE_PREFIX)
    }
}

/// Mounts in the kernel's order: a later entry at the same mountpoint is
/// stacked on an earlier one.
#[derive(Clone, Debug, Default)]
pub struct MountTable(pub Vec<MountEntry>);

impl MountTable {
    pub fn read() -> std::io::Result<Self> {
        Ok(Self::parse(&std::fs::read_to_string(
            "/proc/self/mountinfo",
        )?))
    }

    /// Parses mountinfo text; malformed lines are skipped (the kernel
    /// writes none, and one bad line must not hide the others).
    pub fn parse(text: &str) -> Self {
        Self(text.lines().filter_map(parse_line).collect())
    }

    /// The topmost mount exactly at `path` (already canonical).
    pub fn at(&self, path: &Path) -> Option<&MountEntry> {
        self.0.iter().rev().find(|e| e.mountpoint == path)
    }

    /// The topmost mount holding `path` (already canonical): the one with
    /// the longest mountpoint that is `path` or one of its ancestors.
    pub fn holding(&self, path: &Path) -> Option<&MountEntry> {
        let mut best: Option<&MountEntry> = None;
        for e in &self.0 {
            if path.starts_with(&e.mountpoint)
                && best.is_none_or(|b| {
                    e.mountpoint.components().count() >= b.mountpoint.components().count()
                })
            {
                best = Some(e);
            }
        }
        best
    }
}

/// One mountinfo line: `ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [TAGS...] -
/// FSTYPE SOURCE SUPEROPTS`.
fn parse_line(line: &str) -> Option<MountEntry> {
    let (head, tail) = line.split_once(" - ")?;
    let mountpoint = head.split(' ').nth(4)?;
    let mut t = tail.split(' ');
    let fstype = t.next()?;
    let source = t.next()?;
    Some(MountEntry {
        mountpoint: PathBuf::from(unescape(mountpoint)),
        fstype: unescape(fstype),
        source: unescape(source),
    })
}

/// Undoes the kernel's octal escapes (`\040` for a space, `\011`, `\012`,
/// `\134`).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            if let Ok(v) = u8::try_from(v) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/vda rw
30 22 0:40 / /mnt/a rw,nosuid,nodev,relatime shared:5 - fuse.elton elton:web rw,user_id=0
31 30 0:41 / /mnt/a rw,nosuid,nodev,relatime shared:6 - fuse elton:other rw,user_id=0
32 22 0:42 / /mnt/with\\040space rw - fuse.elton elton:sp rw
33 22 0:43 / /mnt/plain rw - tmpfs tmpfs rw
bad line
";

    #[test]
    fn parses_and_unescapes() {
        let t = MountTable::parse(TEXT);
        assert_eq!(t.0.len(), 5);
        assert!(t.0[2].is_elton(), "plain fuse type, elton source");
        assert_eq!(t.0[3].mountpoint, PathBuf::from("/mnt/with space"));
        assert_eq!(t.0[3].volume(), Some("sp"));
        assert!(!t.0[4].is_elton());
    }

    #[test]
    fn the_topmost_of_stacked_mounts_wins() {
        let t = MountTable::parse(TEXT);
        let top = t.at(Path::new("/mnt/a")).expect("mounted");
        assert_eq!(top.volume(), Some("other"));
        let held = t.holding(Path::new("/mnt/a/x/y")).expect("held");
        assert_eq!(held.volume(), Some("other"));
    }

    #[test]
    fn a_path_is_held_by_its_nearest_mount() {
        let t = MountTable::parse(TEXT);
        assert_eq!(
            t.holding(Path::new("/mnt/plain/sub")).map(|e| e.is_elton()),
            Some(false)
        );
        assert_eq!(
            t.holding(Path::new("/home")).map(|e| e.fstype.as_str()),
            Some("ext4")
        );
        // A sibling whose name starts alike is not inside.
        assert_eq!(
            t.holding(Path::new("/mnt/ab")).map(|e| e.fstype.as_str()),
            Some("ext4")
        );
        assert!(t.at(Path::new("/mnt/ab")).is_none());
    }

    #[test]
    fn unescape_leaves_plain_backslashes() {
        assert_eq!(unescape("a\\b"), "a\\b");
        assert_eq!(unescape("a\\134b"), "a\\b");
        assert_eq!(unescape("x\\04"), "x\\04");
    }
}
