//! Which metadata a master may start on (pure; the IO is in
//! [`crate::datadir`]).
//!
//! A data directory records the cluster's id and the current incarnation
//! twice: in its `identity` file and in `master.redb`. The file outlives the
//! database, so a database that is missing, unreadable, of another cluster
//! or of another incarnation is noticed instead of silently replaced by an
//! empty one that would issue version numbers again.

use std::fmt;

/// A cluster id or an incarnation id: 64 random bits, shown as 16 hex
/// digits. Never 0 (0 reads as "absent" in the wire format).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Id(u64);

impl Id {
    /// `None` for 0.
    pub fn new(raw: u64) -> Option<Self> {
        (raw != 0).then_some(Self(raw))
    }

    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl std::str::FromStr for Id {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s.len() != 16 {
            return Err(format!("{s:?} is not 16 hex digits"));
        }
        u64::from_str_radix(s, 16)
            .ok()
            .and_then(Id::new)
            .ok_or_else(|| format!("{s:?} is not a non-zero 16-hex-digit id"))
    }
}

/// Which cluster a database belongs to and which incarnation of its
/// metadata it is. A new incarnation begins whenever the metadata may have
/// lost versions that were handed out (a new empty database, a restore), so
/// `(cluster, incarnation, volume, version)` never names two trees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    pub cluster: Id,
    pub incarnation: Id,
}

impl fmt::Display for Stamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cluster {} incarnation {}",
            self.cluster, self.incarnation
        )
    }
}

/// The `identity` file as found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileState {
    Missing,
    Unreadable(String),
    Present(Stamp),
}

/// `master.redb` as found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DbState {
    Missing,
    /// Cannot be opened or read (truncated, corrupt, newer schema...).
    Unreadable(String),
    /// Locked by another process (a master running on it).
    InUse(String),
    /// `None`: written by a build that recorded no identity.
    Readable(Option<Stamp>),
}

/// What to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Both agree: serve.
    Open(Stamp),
    /// A fresh data directory: make a new cluster id and incarnation.
    Init,
    /// A database without identity and no identity file (a data directory
    /// of an earlier build): give it a new cluster id and incarnation.
    Adopt,
    /// The identity file is missing but the database names its cluster and
    /// incarnation: write the file again from it.
    RewriteFile(Stamp),
    /// `--new-incarnation`: an empty database under a new incarnation of
    /// `cluster` (a new cluster when the directory had none). An existing
    /// database file is moved aside, never deleted.
    NewIncarnation {
        cluster: Option<Id>,
        set_aside: bool,
    },
    Refuse(Refusal),
}

/// Why a master does not start; the message says what to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    InUse(String),
    Missing(Stamp),
    Unreadable {
        error: String,
        dir: Option<Stamp>,
    },
    OtherCluster {
        dir: Stamp,
        db: Stamp,
    },
    OtherIncarnation {
        dir: Stamp,
        db: Stamp,
    },
    NoIdentityInDb(Stamp),
    IdentityUnreadable(String),
    /// `--new-incarnation` over metadata that is fine.
    Intact(Stamp),
}

/// The flag that starts a new incarnation, as messages name it.
pub const NEW_INCARNATION_FLAG: &str = "--new-incarnation";
/// The flag that installs a backup, as messages name it.
pub const RESTORE_FLAG: &str = "--restore FILE";

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let fix = format!(
            "restore a backup with `elton master {RESTORE_FLAG}`, or start a new incarnation \
             with `elton master {NEW_INCARNATION_FLAG}` (version numbers start again at 1; \
             slaves drop what they cached of the old incarnation)"
        );
        match self {
            Refusal::InUse(e) => write!(f, "{e}; stop it first"),
            Refusal::Missing(s) => write!(
                f,
                "master.redb is missing, but this data directory holds {s}: the metadata \
                 was lost and an empty database would issue version numbers again; {fix}"
            ),
            Refusal::Unreadable { error, dir } => {
                write!(f, "master.redb cannot be read ({error})")?;
                if let Some(s) = dir {
                    write!(f, "; this data directory holds {s}")?;
                }
                write!(f, "; {fix}")
            }
            Refusal::OtherCluster { dir, db } => write!(
                f,
                "master.redb belongs to cluster {}, but this data directory to cluster {}: \
                 the database was replaced by another cluster's; put the right file back, \
                 or {fix}",
                db.cluster, dir.cluster
            ),
            Refusal::OtherIncarnation { dir, db } => write!(
                f,
                "master.redb is of incarnation {} of this cluster, but the data directory is \
                 at incarnation {}: an older copy was put in place, whose version numbers may \
                 already have been reissued; install a copy with `elton master {RESTORE_FLAG}` \
                 (it starts a new incarnation and reports what it rolls back), or start a new \
                 incarnation with `elton master {NEW_INCARNATION_FLAG}`",
                db.incarnation, dir.incarnation
            ),
            Refusal::NoIdentityInDb(s) => write!(
                f,
                "master.redb records no cluster identity, but this data directory holds {s}: \
                 the database was replaced; put the right file back, or {fix}"
            ),
            Refusal::IdentityUnreadable(e) => write!(
                f,
                "the data directory's identity file cannot be read ({e}); repair it or, if \
                 master.redb is intact, remove it (it is written again from the database)"
            ),
            Refusal::Intact(s) => write!(
                f,
                "{NEW_INCARNATION_FLAG} was given, but the metadata ({s}) is intact: a new \
                 incarnation would discard it; start without the flag"
            ),
        }
    }
}

/// The one decision: given what is on disk and whether a new incarnation
/// was asked for, what the master does.
pub fn plan(file: &FileState, db: &DbState, new_incarnation: bool) -> Plan {
    let dir = match file {
        FileState::Unreadable(e) => return Plan::Refuse(Refusal::IdentityUnreadable(e.clone())),
        FileState::Present(s) => Some(*s),
        FileState::Missing => None,
    };
    if let DbState::InUse(e) = db {
        return Plan::Refuse(Refusal::InUse(e.clone()));
    }
    if new_incarnation {
        return match (dir, db) {
            (Some(d), DbState::Readable(Some(s))) if *s == d => Plan::Refuse(Refusal::Intact(d)),
            (None, DbState::Readable(Some(s))) => Plan::Refuse(Refusal::Intact(*s)),
            (dir, db) => Plan::NewIncarnation {
                cluster: dir.map(|d| d.cluster),
                set_aside: *db != DbState::Missing,
            },
        };
    }
    match (dir, db) {
        (_, DbState::InUse(e)) => Plan::Refuse(Refusal::InUse(e.clone())),
        (None, DbState::Missing) => Plan::Init,
        (None, DbState::Readable(None)) => Plan::Adopt,
        (None, DbState::Readable(Some(s))) => Plan::RewriteFile(*s),
        (dir, DbState::Unreadable(error)) => Plan::Refuse(Refusal::Unreadable {
            error: error.clone(),
            dir,
        }),
        (Some(d), DbState::Missing) => Plan::Refuse(Refusal::Missing(d)),
        (Some(d), DbState::Readable(None)) => Plan::Refuse(Refusal::NoIdentityInDb(d)),
        (Some(d), DbState::Readable(Some(s))) if *s == d => Plan::Open(d),
        (Some(d), DbState::Readable(Some(s))) if s.cluster != d.cluster => {
            Plan::Refuse(Refusal::OtherCluster { dir: d, db: *s })
        }
        (Some(d), DbState::Readable(Some(s))) => {
            Plan::Refuse(Refusal::OtherIncarnation { dir: d, db: *s })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(c: u64, i: u64) -> Stamp {
        Stamp {
            cluster: Id::new(c).unwrap(),
            incarnation: Id::new(i).unwrap(),
        }
    }

    #[test]
    fn ids_print_and_parse_as_16_hex_digits() {
        let id = Id::new(0xab).unwrap();
        assert_eq!(id.to_string(), "00000000000000ab");
        assert_eq!("00000000000000ab".parse::<Id>().unwrap(), id);
        assert!(Id::new(0).is_none());
        for bad in [
            "",
            "ab",
            "0000000000000000",
            "zz000000000000ab",
            "000000000000000ab",
        ] {
            assert!(bad.parse::<Id>().is_err(), "{bad}");
        }
    }

    #[test]
    fn agreeing_metadata_opens_and_fresh_directories_initialise() {
        let s = stamp(1, 2);
        let f = FileState::Present(s);
        assert_eq!(plan(&f, &DbState::Readable(Some(s)), false), Plan::Open(s));
        assert_eq!(
            plan(&FileState::Missing, &DbState::Missing, false),
            Plan::Init
        );
        assert_eq!(
            plan(&FileState::Missing, &DbState::Readable(None), false),
            Plan::Adopt
        );
        assert_eq!(
            plan(&FileState::Missing, &DbState::Readable(Some(s)), false),
            Plan::RewriteFile(s)
        );
    }

    #[test]
    fn lost_replaced_or_unreadable_metadata_is_refused() {
        let s = stamp(1, 2);
        let f = FileState::Present(s);
        assert_eq!(
            plan(&f, &DbState::Missing, false),
            Plan::Refuse(Refusal::Missing(s))
        );
        assert_eq!(
            plan(&f, &DbState::Unreadable("truncated".into()), false),
            Plan::Refuse(Refusal::Unreadable {
                error: "truncated".into(),
                dir: Some(s)
            })
        );
        assert!(matches!(
            plan(&FileState::Missing, &DbState::Unreadable("x".into()), false),
            Plan::Refuse(Refusal::Unreadable { dir: None, .. })
        ));
        assert_eq!(
            plan(&f, &DbState::Readable(Some(stamp(9, 2))), false),
            Plan::Refuse(Refusal::OtherCluster {
                dir: s,
                db: stamp(9, 2)
            })
        );
        assert_eq!(
            plan(&f, &DbState::Readable(Some(stamp(1, 3))), false),
            Plan::Refuse(Refusal::OtherIncarnation {
                dir: s,
                db: stamp(1, 3)
            })
        );
        assert_eq!(
            plan(&f, &DbState::Readable(None), false),
            Plan::Refuse(Refusal::NoIdentityInDb(s))
        );
        for new in [false, true] {
            for file in [FileState::Missing, f.clone()] {
                assert_eq!(
                    plan(&file, &DbState::InUse("locked".into()), new),
                    Plan::Refuse(Refusal::InUse("locked".into())),
                    "a running master's file is never touched"
                );
            }
        }
        for db in [DbState::Missing, DbState::Readable(Some(s))] {
            for new in [false, true] {
                assert_eq!(
                    plan(&FileState::Unreadable("bad".into()), &db, new),
                    Plan::Refuse(Refusal::IdentityUnreadable("bad".into()))
                );
            }
        }
    }

    #[test]
    fn a_new_incarnation_keeps_the_cluster_and_never_discards_intact_metadata() {
        let s = stamp(1, 2);
        let f = FileState::Present(s);
        assert_eq!(
            plan(&f, &DbState::Missing, true),
            Plan::NewIncarnation {
                cluster: Some(s.cluster),
                set_aside: false
            }
        );
        for db in [
            DbState::Unreadable("x".into()),
            DbState::Readable(None),
            DbState::Readable(Some(stamp(9, 9))),
            DbState::Readable(Some(stamp(1, 3))),
        ] {
            assert_eq!(
                plan(&f, &db, true),
                Plan::NewIncarnation {
                    cluster: Some(s.cluster),
                    set_aside: true
                },
                "{db:?}"
            );
        }
        assert_eq!(
            plan(&f, &DbState::Readable(Some(s)), true),
            Plan::Refuse(Refusal::Intact(s))
        );
        assert_eq!(
            plan(&FileState::Missing, &DbState::Readable(Some(s)), true),
            Plan::Refuse(Refusal::Intact(s))
        );
        assert_eq!(
            plan(&FileState::Missing, &DbState::Missing, true),
            Plan::NewIncarnation {
                cluster: None,
                set_aside: false
            }
        );
    }

    #[test]
    fn refusals_name_the_way_out() {
        let s = stamp(1, 2);
        let text = Refusal::Missing(s).to_string();
        assert!(
            text.contains(NEW_INCARNATION_FLAG) && text.contains("--restore"),
            "{text}"
        );
        let text = Refusal::OtherCluster {
            dir: s,
            db: stamp(9, 2),
        }
        .to_string();
        assert!(text.contains("0000000000000009"), "{text}");
    }
}
