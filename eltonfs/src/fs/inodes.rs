//! Inode numbers for paths. The kernel names files by inode; the overlay
//! names them by path. Numbers are never reused within a mount; renames
//! move a subtree's paths; hard links in the upper share one number.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use foldhash::fast::RandomState;

pub const ROOT: u64 = 1;

#[derive(Default)]
pub struct Inodes {
    by_path: HashMap<PathBuf, u64, RandomState>,
    by_ino: HashMap<u64, PathBuf, RandomState>,
    /// Upper inode number → ours, for files with several links. The upper
    /// filesystem reuses the numbers of deleted files, so an entry lives
    /// only while one of our paths names its inode (see [`Self::remove`]).
    by_upper_ino: HashMap<u64, u64>,
    /// Ours → upper inode number: the reverse of `by_upper_ino`.
    upper_of: HashMap<u64, u64>,
    /// Our numbers that more than one path has named (hard links).
    shared: HashSet<u64>,
    next: u64,
}

impl Inodes {
    pub fn new() -> Self {
        let mut t = Self {
            next: ROOT + 1,
            ..Self::default()
        };
        t.by_path.insert(PathBuf::new(), ROOT);
        t.by_ino.insert(ROOT, PathBuf::new());
        t
    }

    pub fn path(&self, ino: u64) -> Option<&Path> {
        self.by_ino.get(&ino).map(PathBuf::as_path)
    }

    /// The number for `path`, allocating one on first sight. `upper_link`
    /// is the upper file's inode when it has more than one link: every
    /// name of that inode gets one number, so the kernel sees one inode
    /// (one nlink, one ctime) whichever name it looks at.
    pub fn ino(&mut self, path: &Path, upper_link: Option<u64>) -> u64 {
        // A known path keeps its number: its inode may just have gained a
        // second link (link(2) names it by this path).
        if let Some(&ino) = self.by_path.get(path) {
            if let Some(up) = upper_link {
                self.link_upper(up, ino);
            }
            return ino;
        }
        if let Some(up) = upper_link
            && let Some(&ino) = self.by_upper_ino.get(&up)
        {
            self.by_path.insert(path.to_path_buf(), ino);
            self.shared.insert(ino);
            self.by_ino.entry(ino).or_insert_with(|| path.to_path_buf());
            return ino;
        }
        let ino = self.next;
        self.next += 1;
        self.by_path.insert(path.to_path_buf(), ino);
        self.by_ino.insert(ino, path.to_path_buf());
        if let Some(up) = upper_link {
            self.link_upper(up, ino);
        }
        ino
    }

    /// Records that our `ino` is upper inode `up`.
    fn link_upper(&mut self, up: u64, ino: u64) {
        if let Some(old) = self.upper_of.insert(ino, up)
            && old != up
            && self.by_upper_ino.get(&old) == Some(&ino)
        {
            self.by_upper_ino.remove(&old);
        }
        if let Some(prev) = self.by_upper_ino.insert(up, ino)
            && prev != ino
        {
            self.upper_of.remove(&prev);
        }
    }

    /// Forgets `path` (after unlink/rmdir). Open handles keep working: they
    /// hold their files, not paths.
    pub fn remove(&mut self, path: &Path) {
        let Some(ino) = self.by_path.remove(path) else {
            return;
        };
        if self.by_ino.get(&ino).is_none_or(|p| p != path) {
            return;
        }
        // Another link may still name this inode.
        let other = if self.shared.contains(&ino) {
            self.by_path
                .iter()
                .find(|(_, i)| **i == ino)
                .map(|(p, _)| p.clone())
        } else {
            None
        };
        match other {
            Some(other) => {
                self.by_ino.insert(ino, other);
            }
            None => {
                self.by_ino.remove(&ino);
                // The upper may reuse the file's inode number now.
                if let Some(up) = self.upper_of.remove(&ino)
                    && self.by_upper_ino.get(&up) == Some(&ino)
                {
                    self.by_upper_ino.remove(&up);
                }
            }
        }
    }

    /// Moves `from` and everything below it to `to`.
    pub fn rename(&mut self, from: &Path, to: &Path) {
        self.remove(to);
        let moved: Vec<(PathBuf, u64)> = self
            .by_path
            .iter()
            .filter(|(p, _)| p.starts_with(from))
            .map(|(p, i)| (p.clone(), *i))
            .collect();
        for (old, ino) in moved {
            let new = match old.strip_prefix(from) {
                Ok(rest) if rest.as_os_str().is_empty() => to.to_path_buf(),
                Ok(rest) => to.join(rest),
                Err(_) => continue,
            };
            self.by_path.remove(&old);
            self.by_path.insert(new.clone(), ino);
            self.by_ino.insert(ino, new);
        }
    }

    /// Swaps the subtrees at `a` and `b` (`rename(RENAME_EXCHANGE)`).
    pub fn exchange(&mut self, a: &Path, b: &Path) {
        let under = |p: &Path| -> Vec<(PathBuf, u64)> {
            self.by_path
                .iter()
                .filter(|(q, _)| q.starts_with(p))
                .map(|(q, i)| (q.clone(), *i))
                .collect()
        };
        let (in_a, in_b) = (under(a), under(b));
        for (p, _) in in_a.iter().chain(&in_b) {
            self.by_path.remove(p);
        }
        for (moved, from, to) in [(in_a, a, b), (in_b, b, a)] {
            for (old, ino) in moved {
                let Ok(rest) = old.strip_prefix(from) else {
                    continue;
                };
                let new = if rest.as_os_str().is_empty() {
                    to.to_path_buf()
                } else {
                    to.join(rest)
                };
                self.by_path.insert(new.clone(), ino);
                self.by_ino.insert(ino, new);
            }
        }
    }

    /// Every (ino, path) known, for cache invalidation.
    pub fn all(&self) -> Vec<(u64, PathBuf)> {
        self.by_ino.iter().map(|(i, p)| (*i, p.clone())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rename_moves_subtrees_and_links_share_numbers() {
        let mut t = Inodes::new();
        let a = t.ino(Path::new("a"), None);
        let ab = t.ino(Path::new("a/b"), None);
        t.rename(Path::new("a"), Path::new("z"));
        assert_eq!(t.path(a), Some(Path::new("z")));
        assert_eq!(t.path(ab), Some(Path::new("z/b")));
        assert_eq!(t.ino(Path::new("z/b"), None), ab);

        let f = t.ino(Path::new("f"), Some(77));
        assert_eq!(t.ino(Path::new("g"), Some(77)), f);
        t.remove(Path::new("f"));
        assert_eq!(t.path(f), Some(Path::new("g")));
        t.remove(Path::new("g"));
        assert_eq!(t.path(f), None);
    }

    #[test]
    fn a_reused_upper_inode_number_names_a_new_inode() {
        let mut t = Inodes::new();
        let f = t.ino(Path::new("f"), None);
        assert_eq!(t.ino(Path::new("f"), Some(9)), f);
        assert_eq!(t.ino(Path::new("f2"), Some(9)), f);
        t.remove(Path::new("f"));
        t.remove(Path::new("f2"));
        // The upper deleted the file and gave its number to a new one.
        let g = t.ino(Path::new("g"), None);
        assert_ne!(g, f);
        assert_eq!(t.ino(Path::new("g"), Some(9)), g, "link(g, h) names g");
        assert_eq!(t.ino(Path::new("h"), Some(9)), g);
    }

    #[test]
    fn exchange_swaps_subtrees() {
        let mut t = Inodes::new();
        let a = t.ino(Path::new("a"), None);
        let ax = t.ino(Path::new("a/x"), None);
        let b = t.ino(Path::new("b"), None);
        t.exchange(Path::new("a"), Path::new("b"));
        assert_eq!(t.path(a), Some(Path::new("b")));
        assert_eq!(t.path(ax), Some(Path::new("b/x")));
        assert_eq!(t.path(b), Some(Path::new("a")));
        assert_eq!(t.ino(Path::new("a"), None), b);
    }
}
