//! `control.redb` across restarts and snapshot installs.

use std::collections::BTreeMap;

use elton_control::types::{Entry, LogId, Membership, Vote};
use elton_control::{
    Command, ControlError, Member, Request, RequestId, Response, Role, open_store,
};
use openraft::storage::{RaftLogReader, RaftLogStorage, RaftSnapshotBuilder, RaftStateMachine};
use openraft::{CommittedLeaderId, EntryPayload};
use tempfile::TempDir;

fn log_id(index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(1, 1), index)
}

fn put(index: u64, client: &str, seq: u64, key: &str, value: &str) -> Entry {
    Entry {
        log_id: log_id(index),
        payload: EntryPayload::Normal(Request::new(
            RequestId {
                client: client.into(),
                seq,
            },
            Command::Put {
                key: key.into(),
                value: value.into(),
            },
        )),
    }
}

fn membership(index: u64) -> Entry {
    let nodes: BTreeMap<u64, Member> = [(
        1,
        Member {
            name: "m1".into(),
            addr: "https://127.0.0.1:7001".into(),
            role: Role::Voter,
        },
    )]
    .into();
    Entry {
        log_id: log_id(index),
        payload: EntryPayload::Membership(Membership::new(vec![[1].into()], nodes)),
    }
}

#[tokio::test]
async fn state_and_dedup_survive_a_restart() -> Result<(), Box<dyn std::error::Error>> {
    let dir = TempDir::new()?;
    let path = dir.path().join("control.redb");
    let digest = {
        let (_log, mut sm) = open_store(&path)?;
        let reader = sm.reader();
        sm.apply([
            membership(1),
            put(2, "c", 1, "k", "a"),
            put(3, "c", 2, "k", "b"),
        ])
        .await?;
        assert_eq!(reader.get("k").as_deref(), Some("b"));
        assert_eq!(reader.applied().map(|l| l.index), Some(3));
        reader.digest()
    };
    let (_log, mut sm) = open_store(&path)?;
    let reader = sm.reader();
    assert_eq!(reader.digest(), digest);
    assert_eq!(reader.applied().map(|l| l.index), Some(3));
    assert_eq!(reader.membership().log_id().map(|l| l.index), Some(1));
    // A replay of an applied request (as after a crash that lost the
    // applied index but not the request) answers the first response and
    // changes nothing.
    let r = sm.apply([put(4, "c", 1, "k", "a")]).await?;
    assert_eq!(
        r,
        vec![Response::Value { value: None }],
        "first answer of c/1"
    );
    assert_eq!(reader.get("k").as_deref(), Some("b"));
    assert_eq!(reader.applied_requests(), 2);
    Ok(())
}

#[tokio::test]
async fn log_and_vote_survive_a_restart() -> Result<(), Box<dyn std::error::Error>> {
    let dir = TempDir::new()?;
    let path = dir.path().join("control.redb");
    {
        let (mut log, _sm) = open_store(&path)?;
        log.save_vote(&Vote::new(3, 2)).await?;
        let entries = (1..=5).map(|i| put(i, "c", i, "k", "v"));
        // Append through the public trait with a callback; the suite covers
        // the callback, here only the data matters.
        for e in entries {
            append_one(&mut log, e).await?;
        }
        log.truncate(log_id(5)).await?;
        log.purge(log_id(2)).await?;
    }
    let (mut log, _sm) = open_store(&path)?;
    assert_eq!(log.read_vote().await?, Some(Vote::new(3, 2)));
    let state = log.get_log_state().await?;
    assert_eq!(state.last_purged_log_id, Some(log_id(2)));
    assert_eq!(state.last_log_id, Some(log_id(4)));
    let got = indexes(&mut log, 0..100).await?;
    assert_eq!(got, [3, 4]);
    Ok(())
}

/// The indexes of the entries the log holds in `range`.
async fn indexes(
    log: &mut elton_control::LogStore,
    range: std::ops::Range<u64>,
) -> Result<Vec<u64>, Box<dyn std::error::Error>> {
    Ok(log
        .try_get_log_entries(range)
        .await?
        .iter()
        .map(|e| e.log_id.index)
        .collect())
}

async fn append_one(
    log: &mut elton_control::LogStore,
    e: Entry,
) -> Result<(), Box<dyn std::error::Error>> {
    use openraft::storage::RaftLogStorageExt;
    log.blocking_append([e]).await?;
    Ok(())
}

#[tokio::test]
async fn installing_a_snapshot_replaces_the_state() -> Result<(), Box<dyn std::error::Error>> {
    let dir = TempDir::new()?;
    let (_l1, mut leader) = open_store(&dir.path().join("a.redb"))?;
    let (_l2, mut lagging) = open_store(&dir.path().join("b.redb"))?;
    leader
        .apply([
            membership(1),
            put(2, "c", 1, "x", "1"),
            put(3, "c", 2, "y", "2"),
        ])
        .await?;
    // The lagging member has a row the snapshot does not: it must go.
    lagging
        .apply([membership(1), put(2, "d", 1, "stale", "s")])
        .await?;
    let snap = leader.get_snapshot_builder().await.build_snapshot().await?;
    let mut incoming = lagging.begin_receiving_snapshot().await?;
    *incoming = *snap.snapshot;
    lagging.install_snapshot(&snap.meta, incoming).await?;
    let reader = lagging.reader();
    assert_eq!(reader.digest(), leader.reader().digest());
    assert_eq!(reader.get("stale"), None);
    assert_eq!(reader.applied().map(|l| l.index), Some(3));
    drop((_l2, lagging));
    // And it is what a restart finds.
    let (_l2, again) = open_store(&dir.path().join("b.redb"))?;
    assert_eq!(again.reader().digest(), leader.reader().digest());
    assert_eq!(again.reader().get("stale"), None);
    Ok(())
}

#[tokio::test]
async fn a_damaged_snapshot_changes_nothing() -> Result<(), Box<dyn std::error::Error>> {
    let dir = TempDir::new()?;
    let (_l, mut sm) = open_store(&dir.path().join("a.redb"))?;
    sm.apply([membership(1), put(2, "c", 1, "x", "1")]).await?;
    let before = sm.reader().digest();
    let snap = sm.get_snapshot_builder().await.build_snapshot().await?;
    let mut bad_meta = snap.meta.clone();
    bad_meta.last_log_id = Some(log_id(9));
    let r = sm
        .install_snapshot(&bad_meta, Box::new(std::io::Cursor::new(b"{}".to_vec())))
        .await;
    assert!(r.is_err());
    let r = sm.install_snapshot(&bad_meta, snap.snapshot).await;
    assert!(r.is_err(), "metadata that does not match the content");
    assert_eq!(sm.reader().digest(), before);
    Ok(())
}

#[test]
fn a_file_of_another_format_is_refused() -> Result<(), Box<dyn std::error::Error>> {
    let dir = TempDir::new()?;
    let path = dir.path().join("control.redb");
    drop(open_store(&path)?);
    {
        let db = redb::Database::open(&path)?;
        let txn = db.begin_write()?;
        let def: redb::TableDefinition<'_, &str, &[u8]> = redb::TableDefinition::new("meta");
        txn.open_table(def)?
            .insert("format", 99u64.to_le_bytes().as_slice())?;
        txn.commit()?;
    }
    match open_store(&path) {
        Err(ControlError::Format { found: 99, .. }) => Ok(()),
        Err(e) => Err(format!("wrong error: {e}").into()),
        Ok(_) => Err("opened a format-99 file".into()),
    }
}

/// Appends queued together share commits (group commit); every one whose
/// callback fired is on disk after a restart, in order.
#[tokio::test]
async fn queued_appends_are_all_durable() -> Result<(), Box<dyn std::error::Error>> {
    use openraft::storage::RaftLogStorageExt;
    let dir = TempDir::new()?;
    let path = dir.path().join("control.redb");
    {
        let (log, _sm) = open_store(&path)?;
        let mut clones: Vec<_> = (0..200).map(|_| log.clone()).collect();
        // The futures send in creation order on their first poll, as
        // openraft's sequential appends do.
        let appends: Vec<_> = clones
            .iter_mut()
            .enumerate()
            .map(|(i, l)| l.blocking_append([put(i as u64 + 1, "c", i as u64, "k", "v")]))
            .collect();
        for r in futures::future::join_all(appends).await {
            r?;
        }
    }
    let (mut log, _sm) = open_store(&path)?;
    let got = indexes(&mut log, 0..1000).await?;
    assert_eq!(got, (1..=200).collect::<Vec<u64>>());
    Ok(())
}

#[tokio::test]
async fn limits_survive_a_restart_and_a_snapshot() -> Result<(), Box<dyn std::error::Error>> {
    use elton_control::drcond::{LimitSpec, Resources, Selector};
    let dir = TempDir::new()?;
    let path = dir.path().join("control.redb");
    let limit = |index: u64, seq: u64| Entry {
        log_id: log_id(index),
        payload: EntryPayload::Normal(Request::new(
            RequestId {
                client: "c".into(),
                seq,
            },
            Command::Limit {
                spec: LimitSpec {
                    selector: Selector::Pid { pid: 42 },
                    hosts: elton_control::Targets::All,
                    resources: Resources {
                        memory_bytes: Some(64 << 20),
                        ..Resources::default()
                    },
                    for_ms: None,
                },
                expires_at_ms: None,
            },
        )),
    };
    let snapshot = {
        let (_log, mut sm) = open_store(&path)?;
        sm.apply([membership(1), limit(2, 1), limit(3, 2)]).await?;
        let release = Entry {
            log_id: log_id(4),
            payload: EntryPayload::Normal(Request::new(
                RequestId {
                    client: "c".into(),
                    seq: 3,
                },
                Command::Release { id: 2 },
            )),
        };
        sm.apply([release]).await?;
        let ids: Vec<u64> = sm.reader().limits().into_keys().collect();
        assert_eq!(ids, [3]);
        sm.get_snapshot_builder().await.build_snapshot().await?
    };
    let (_log, sm) = open_store(&path)?;
    let ids: Vec<u64> = sm.reader().limits().into_keys().collect();
    assert_eq!(ids, [3], "after a restart");
    // A fresh member installing the snapshot gets the same limits.
    let other = dir.path().join("other.redb");
    let (_log, mut fresh) = open_store(&other)?;
    fresh
        .install_snapshot(&snapshot.meta, snapshot.snapshot)
        .await?;
    assert_eq!(fresh.reader().limits(), sm.reader().limits());
    Ok(())
}

#[tokio::test]
async fn apps_survive_a_restart_and_a_snapshot() -> Result<(), Box<dyn std::error::Error>> {
    use elton_control::apps::{AppPatch, AppSpec};
    let dir = TempDir::new()?;
    let path = dir.path().join("control.redb");
    let req = |index: u64, command: Command| Entry {
        log_id: log_id(index),
        payload: EntryPayload::Normal(Request::new(
            RequestId {
                client: "c".into(),
                seq: index,
            },
            command,
        )),
    };
    let spec = |name: &str, host: &str| {
        let mut s = AppSpec::new(name, host, "site", 1);
        s.cmd = Some("serve".into());
        s
    };
    let snapshot = {
        let (_log, mut sm) = open_store(&path)?;
        sm.apply([
            membership(1),
            req(
                2,
                Command::AppCreate {
                    spec: spec("web", "a.test"),
                },
            ),
            req(
                3,
                Command::AppCreate {
                    spec: spec("api", "b.test"),
                },
            ),
            req(
                4,
                Command::AppSet {
                    name: "web".into(),
                    patch: AppPatch {
                        version: Some(7),
                        ..AppPatch::default()
                    },
                },
            ),
            req(5, Command::AppRemove { name: "api".into() }),
        ])
        .await?;
        sm.get_snapshot_builder().await.build_snapshot().await?
    };
    let (_log, sm) = open_store(&path)?;
    let apps = sm.reader().apps();
    assert_eq!(apps.keys().collect::<Vec<_>>(), ["web"], "after a restart");
    assert_eq!(apps["web"].spec.version, 7);
    assert_eq!((apps["web"].created, apps["web"].updated), (2, 4));
    let other = dir.path().join("other.redb");
    let (_log, mut fresh) = open_store(&other)?;
    fresh
        .install_snapshot(&snapshot.meta, snapshot.snapshot)
        .await?;
    assert_eq!(fresh.reader().apps(), apps);
    assert_eq!(fresh.reader().digest(), sm.reader().digest());
    Ok(())
}

/// Writes a format-1 store by hand: the log in redb's `log` and `meta`
/// tables, as builds before the control log wrote it.
fn write_format_1(
    path: &std::path::Path,
    entries: &[Entry],
) -> Result<(), Box<dyn std::error::Error>> {
    let db = redb::Database::create(path)?;
    let txn = db.begin_write()?;
    {
        let meta_def: redb::TableDefinition<'_, &str, &[u8]> = redb::TableDefinition::new("meta");
        let log_def: redb::TableDefinition<'_, u64, &[u8]> = redb::TableDefinition::new("log");
        let mut meta = txn.open_table(meta_def)?;
        meta.insert("format", 1u64.to_le_bytes().as_slice())?;
        meta.insert("vote", serde_json::to_vec(&Vote::new(4, 1))?.as_slice())?;
        meta.insert(
            "committed",
            serde_json::to_vec(&Some(log_id(3)))?.as_slice(),
        )?;
        meta.insert("last_purged", serde_json::to_vec(&log_id(1))?.as_slice())?;
        let mut log = txn.open_table(log_def)?;
        for e in entries {
            log.insert(e.log_id.index, serde_json::to_vec(e)?.as_slice())?;
        }
    }
    txn.commit()?;
    Ok(())
}

#[tokio::test]
async fn a_format_1_store_is_migrated_also_after_a_cut_migration()
-> Result<(), Box<dyn std::error::Error>> {
    let dir = TempDir::new()?;
    let path = dir.path().join("control.redb");
    write_format_1(&path, &[put(2, "c", 1, "k", "a"), put(3, "c", 2, "k", "b")])?;
    // A migration cut short left a log directory with a stray segment: the
    // format-1 file still counts, and the log is built again from it.
    let wal = elton_control::store::log_dir(&path);
    std::fs::create_dir(&wal)?;
    std::fs::write(wal.join("0000000000000001.seg"), b"half a segment")?;
    {
        let (mut log, _sm) = open_store(&path)?;
        assert_eq!(log.read_vote().await?, Some(Vote::new(4, 1)));
        assert_eq!(log.read_committed().await?, Some(log_id(3)));
        let state = log.get_log_state().await?;
        assert_eq!(state.last_purged_log_id, Some(log_id(1)));
        assert_eq!(state.last_log_id, Some(log_id(3)));
        let got = indexes(&mut log, 0..10).await?;
        assert_eq!(got, [2, 3]);
        append_one(&mut log, put(4, "c", 3, "k", "c")).await?;
    }
    {
        // Format 2 now, and redb no longer holds the log.
        let db = redb::Database::open(&path)?;
        let txn = redb::ReadableDatabase::begin_read(&db)?;
        let meta_def: redb::TableDefinition<'_, &str, &[u8]> = redb::TableDefinition::new("meta");
        let meta = txn.open_table(meta_def)?;
        let format = meta.get("format")?.ok_or("no format")?.value().to_vec();
        assert_eq!(format, 2u64.to_le_bytes());
        assert!(meta.get("vote")?.is_none());
        let log_def: redb::TableDefinition<'_, u64, &[u8]> = redb::TableDefinition::new("log");
        assert!(txn.open_table(log_def).is_err(), "the log table is gone");
    }
    let (mut log, _sm) = open_store(&path)?;
    let got = indexes(&mut log, 0..10).await?;
    assert_eq!(got, [2, 3, 4]);
    Ok(())
}

#[test]
fn a_log_without_its_state_machine_or_the_reverse_is_refused()
-> Result<(), Box<dyn std::error::Error>> {
    let dir = TempDir::new()?;
    let path = dir.path().join("control.redb");
    drop(open_store(&path)?);
    let wal = elton_control::store::log_dir(&path);
    // The state machine file without its log.
    let aside = dir.path().join("aside.wal");
    std::fs::rename(&wal, &aside)?;
    match open_store(&path) {
        Err(ControlError::Corrupt(m)) if m.contains("missing") => {}
        Err(e) => return Err(format!("wrong error: {e}").into()),
        Ok(_) => return Err("opened without its log".into()),
    }
    // The log without its state machine file.
    std::fs::rename(&aside, &wal)?;
    std::fs::remove_file(&path)?;
    match open_store(&path) {
        Err(ControlError::Corrupt(m)) if m.contains("without its state machine") => {}
        Err(e) => return Err(format!("wrong error: {e}").into()),
        Ok(_) => return Err("opened a log beside a new state machine".into()),
    }
    assert!(
        wal.join("0000000000000001.seg").exists(),
        "the log was left alone"
    );
    assert!(!path.exists(), "no state machine file was created");
    Ok(())
}
