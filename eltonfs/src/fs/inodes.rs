//! Inode numbers for paths. The kernel names files by inode; the overlay
//! names them by path. Numbers are never reused within a mount; renames
//! move a subtree's paths; hard links in the upper share one number.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

pub const ROOT: u64 = 1;

#[derive(Default)]
pub struct Inodes {
    by_path: HashMap<PathBuf, u64>,
    by_ino: HashMap<u64, PathBuf>,
    /// Upper inode number → ours, for files with several links.
    by_upper_ino: HashMap<u64, u64>,
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
    /// is the upper file's inode when it has more than one link.
    pub fn ino(&mut self, path: &Path, upper_link: Option<u64>) -> u64 {
        if let Some(up) = upper_link
            && let Some(&ino) = self.by_upper_ino.get(&up)
        {
            if self.by_path.insert(path.to_path_buf(), ino) != Some(ino) {
                self.shared.insert(ino);
            }
            self.by_ino.entry(ino).or_insert_with(|| path.to_path_buf());
            return ino;
        }
        if let Some(&ino) = self.by_path.get(path) {
            if let Some(up) = upper_link {
                self.by_upper_ino.insert(up, ino);
            }
            return ino;
        }
        let ino = self.next;
        self.next += 1;
        self.by_path.insert(path.to_path_buf(), ino);
        self.by_ino.insert(ino, path.to_path_buf());
        if let Some(up) = upper_link {
            self.by_upper_ino.insert(up, ino);
        }
        ino
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
