//! The lock that keeps two `elton up` off one data directory: both would
//! run a master and a slave on the same files (and the second only fails,
//! seconds later, on the database lock, after printing its banner).

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::Path;

use anyhow::{Context, Result, bail};

/// An exclusive lock on `<data>/up.lock`, released when dropped or when
/// the process ends (however it ends: the kernel drops it).
pub struct UpLock(#[allow(dead_code)] File);

impl UpLock {
    pub fn acquire(data: &Path) -> Result<Self> {
        let path = data.join("up.lock");
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        match f.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = f.read_to_string(&mut holder);
                let holder = holder.trim();
                let who = if holder.is_empty() {
                    String::new()
                } else {
                    format!(" (process {holder})")
                };
                bail!(
                    "another `elton up` is running on {}{who}; stop it first, or give this one \
                     another --data-dir",
                    data.display()
                );
            }
            Err(TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", path.display()));
            }
        }
        // Only informative (who holds it): the lock itself is the flock.
        f.set_len(0)?;
        f.rewind()?;
        writeln!(f, "{}", std::process::id())?;
        Ok(Self(f))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = UpLock::acquire(dir.path()).expect("first");
        let e = UpLock::acquire(dir.path()).err().expect("second refused");
        let msg = format!("{e:#}");
        assert!(msg.contains("another `elton up` is running"), "{msg}");
        assert!(msg.contains(&std::process::id().to_string()), "{msg}");
        drop(first);
        UpLock::acquire(dir.path()).expect("free again");
    }
}
