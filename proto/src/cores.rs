//! How many CPUs this process may use, read once.
//!
//! `std::thread::available_parallelism` reads the process's affinity and,
//! on Linux, its cgroup's CPU quota from `/proc/self/cgroup`,
//! `/proc/self/mountinfo` and the quota files: hundreds of microseconds on a
//! host with many mounts. Hot paths (a master checks a commit's pages on
//! several threads, each `ps` splits its `/proc` pass) asked it on every
//! call; the profile of a small commit showed it as a fifth of the tree
//! check. A changed quota is seen by the next process, as tokio does for
//! its worker count.

use std::sync::OnceLock;

/// The CPUs this process may run on, at least 1, as first read.
pub fn cores() -> usize {
    static CORES: OnceLock<usize> = OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cores_is_at_least_one_and_stable() {
        let first = cores();
        assert!(first >= 1);
        assert_eq!(cores(), first);
    }
}
