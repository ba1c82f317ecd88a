//! k2i's process table: what a host keeps between `ps` queries so that a
//! query reads two files per process (`stat`, `cmdline`) instead of three
//! (and `cgroup`). It keeps only cgroups: the command line is read every
//! time because a process may retitle itself without an exec. Pure:
//! [`super::procs`] does the reads; this type decides which of them a
//! process needs and forgets processes that are gone.
//!
//! A query still lists every process that exists when it runs (the pid
//! list, each `stat` and command line are read every time); only a
//! process's cgroups come from the table, and only while the process is
//! the same one: same pid, same start time (a reused pid is a new
//! process) and same `comm` (an `exec` changes it; a program that starts
//! by moving itself to another cgroup is then read again).

use std::collections::BTreeMap;

/// Who a process is, from its `stat`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub pid: i32,
    /// Start time in clock ticks since boot (`stat` field 22).
    pub start_ticks: u64,
    /// The executable's name as the kernel keeps it (`stat` field 2).
    pub comm: String,
}

/// What the table keeps of a process while its identity holds, read once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Kept {
    /// `/proc/PID/cgroup` lines: `hierarchy:controllers:path`.
    pub cgroups: Vec<String>,
}

impl Kept {
    /// Bytes this entry holds, to bound the table (strings plus the
    /// vector's header; close enough for a budget).
    fn bytes(&self) -> usize {
        self.cgroups.iter().map(|s| s.len() + 24).sum::<usize>() + 24
    }
}

/// How many bytes of cgroups a table keeps at most: a host with many
/// processes in deep cgroup trees must not grow a master without bound.
/// Processes beyond the budget are read on every query, as without a
/// table.
pub const MAX_TABLE_BYTES: usize = 16 << 20;

#[derive(Debug)]
struct Entry {
    start_ticks: u64,
    comm: String,
    kept: Kept,
    /// The last full pass that saw this process.
    pass: u64,
}

/// The processes seen by the last full pass, by pid.
#[derive(Debug)]
pub struct ProcTable {
    entries: BTreeMap<i32, Entry>,
    /// The current full pass (see [`ProcTable::begin_pass`]).
    pass: u64,
    bytes: usize,
    budget: usize,
}

impl Default for ProcTable {
    fn default() -> Self {
        Self::new()
    }
}

impl ProcTable {
    /// An empty table with the default budget ([`MAX_TABLE_BYTES`]).
    pub const fn new() -> Self {
        Self::with_budget(MAX_TABLE_BYTES)
    }

    /// An empty table keeping at most `budget` bytes of entries.
    pub const fn with_budget(budget: usize) -> Self {
        ProcTable {
            entries: BTreeMap::new(),
            pass: 0,
            bytes: 0,
            budget,
        }
    }

    /// Starts a pass over every process of the host: the processes it
    /// does not see ([`ProcTable::get`] or [`ProcTable::insert`]) before
    /// [`ProcTable::end_pass`] are gone.
    pub fn begin_pass(&mut self) {
        self.pass += 1;
    }

    /// Ends a full pass: forgets the processes it did not see (exited,
    /// or their pid's entry replaced). Returns how many were forgotten.
    pub fn end_pass(&mut self) -> usize {
        let pass = self.pass;
        let before = self.entries.len();
        let mut freed = 0;
        self.entries.retain(|_, e| {
            let keep = e.pass == pass;
            if !keep {
                freed += e.kept.bytes();
            }
            keep
        });
        self.bytes -= freed;
        before - self.entries.len()
    }

    /// The kept facts of `id`, when the table holds the same process
    /// (same pid, start time and `comm`); marks it seen in this pass.
    /// `None`: read them (and [`ProcTable::insert`] them).
    pub fn get(&mut self, id: &Identity) -> Option<&Kept> {
        let pass = self.pass;
        let e = self.entries.get_mut(&id.pid)?;
        if e.start_ticks != id.start_ticks || e.comm != id.comm {
            return None;
        }
        e.pass = pass;
        Some(&e.kept)
    }

    /// Keeps `kept` for `id`, replacing what the pid held (a reused pid,
    /// or the same process after an `exec`). Not kept, and the pid
    /// forgotten, when it would take the table over its budget.
    pub fn insert(&mut self, id: Identity, kept: Kept) {
        self.forget(id.pid);
        let size = kept.bytes();
        if self.bytes + size > self.budget {
            return;
        }
        self.bytes += size;
        self.entries.insert(
            id.pid,
            Entry {
                start_ticks: id.start_ticks,
                comm: id.comm,
                kept,
                pass: self.pass,
            },
        );
    }

    /// Forgets `pid`: its facts are read again on the next query (this
    /// host moved it to another cgroup).
    pub fn forget(&mut self, pid: i32) {
        if let Some(old) = self.entries.remove(&pid) {
            self.bytes -= old.kept.bytes();
        }
    }

    /// How many processes the table holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes of entries held (see [`MAX_TABLE_BYTES`]).
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(pid: i32, start: u64, comm: &str) -> Identity {
        Identity {
            pid,
            start_ticks: start,
            comm: comm.into(),
        }
    }

    /// What a pass reads for a process; `tag` tells processes apart.
    fn kept(tag: &str) -> Kept {
        Kept {
            cgroups: vec![format!("1:cpu:/{tag}")],
        }
    }

    /// One full pass: each process is looked up, and read (inserted)
    /// when the table does not know it. Returns the pids that were read.
    fn pass(t: &mut ProcTable, procs: &[(Identity, &str)]) -> Vec<i32> {
        t.begin_pass();
        let mut read = Vec::new();
        for (i, tag) in procs {
            if t.get(i).is_none() {
                read.push(i.pid);
                t.insert(i.clone(), kept(tag));
            }
        }
        t.end_pass();
        read
    }

    #[test]
    fn a_known_process_is_not_read_again() {
        let mut t = ProcTable::new();
        let procs = [(id(1, 5, "init"), "/sbin/init"), (id(42, 900, "sh"), "sh")];
        assert_eq!(pass(&mut t, &procs), [1, 42]);
        assert_eq!(pass(&mut t, &procs), Vec::<i32>::new());
        assert_eq!(t.get(&procs[1].0), Some(&kept("sh")));
    }

    #[test]
    fn a_new_process_is_read() {
        let mut t = ProcTable::new();
        pass(&mut t, &[(id(1, 5, "init"), "init")]);
        let read = pass(
            &mut t,
            &[(id(1, 5, "init"), "init"), (id(7, 1000, "new"), "new")],
        );
        assert_eq!(read, [7]);
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn a_reused_pid_is_a_new_process() {
        let mut t = ProcTable::new();
        pass(&mut t, &[(id(42, 900, "sh"), "sh -c old")]);
        // Same pid and name, later start: another process.
        assert_eq!(pass(&mut t, &[(id(42, 950, "sh"), "sh -c new")]), [42]);
        assert_eq!(t.get(&id(42, 950, "sh")), Some(&kept("sh -c new")));
        assert_eq!(t.get(&id(42, 900, "sh")), None);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn an_exec_is_read_again() {
        let mut t = ProcTable::new();
        pass(&mut t, &[(id(42, 900, "sh"), "sh -c sleep")]);
        // Same process, new program: comm changed, so it is read again.
        assert_eq!(pass(&mut t, &[(id(42, 900, "sleep"), "sleep 9")]), [42]);
        assert_eq!(t.get(&id(42, 900, "sleep")), Some(&kept("sleep 9")));
    }

    #[test]
    fn vanished_processes_are_forgotten() {
        let mut t = ProcTable::new();
        pass(&mut t, &[(id(1, 5, "a"), "a"), (id(2, 6, "b"), "b")]);
        let held = t.bytes();
        assert!(held > 0);
        pass(&mut t, &[(id(1, 5, "a"), "a")]);
        assert_eq!(t.len(), 1);
        assert!(t.bytes() < held);
        pass(&mut t, &[]);
        assert!(t.is_empty());
        assert_eq!(t.bytes(), 0);
    }

    #[test]
    fn a_forgotten_process_is_read_again() {
        let mut t = ProcTable::new();
        let p = [(id(9, 1, "job"), "job")];
        pass(&mut t, &p);
        t.forget(9);
        assert_eq!(t.bytes(), 0);
        assert_eq!(pass(&mut t, &p), [9]);
        t.forget(12345); // unknown: nothing to do
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn the_budget_bounds_the_table() {
        let one = kept("x").bytes();
        let mut t = ProcTable::with_budget(one * 2);
        let procs: Vec<_> = (1..=4).map(|p| (id(p, 1, "x"), "x")).collect();
        assert_eq!(pass(&mut t, &procs), [1, 2, 3, 4]);
        assert_eq!(t.len(), 2);
        assert!(t.bytes() <= one * 2);
        // Those kept are not read again; the others are, every time.
        assert_eq!(pass(&mut t, &procs), [3, 4]);
    }
}
