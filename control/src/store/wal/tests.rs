use std::ops::Bound::Unbounded;

use openraft::{CommittedLeaderId, EntryPayload};
use tempfile::TempDir;

use super::*;

fn id(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn entry(term: u64, index: u64) -> Entry {
    Entry {
        log_id: id(term, index),
        payload: EntryPayload::Blank,
    }
}

fn new_log(tmp: &TempDir) -> (PathBuf, Arc<Wal>, Appender) {
    let dir = tmp.path().join("control.wal");
    Wal::create(&dir, None, None, None, &[]).expect("create");
    let (wal, app) = Wal::open(&dir).expect("open");
    (dir, wal, app)
}

fn append(wal: &Wal, app: &mut Appender, entries: &[Entry]) {
    let changes: Vec<Change<'_>> = entries.iter().map(Change::Entry).collect();
    app.write(wal, &changes, true).expect("write");
}

fn indexes(wal: &Wal) -> Vec<(u64, u64)> {
    wal.entries((Unbounded, Unbounded))
        .expect("read")
        .iter()
        .map(|e| (e.log_id.leader_id.term, e.log_id.index))
        .collect()
}

fn segments(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .expect("dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn phase1_every_change_survives_a_reopen() {
    let tmp = TempDir::new().expect("tmp");
    let (dir, wal, mut app) = new_log(&tmp);
    append(
        &wal,
        &mut app,
        &[entry(1, 1), entry(1, 2), entry(1, 3), entry(1, 4)],
    );
    app.write(&wal, &[Change::Vote(Vote::new(2, 1))], true)
        .expect("vote");
    // A new leader's entries replace the tail.
    app.write(
        &wal,
        &[Change::Truncate(3), Change::Entry(&entry(2, 3))],
        true,
    )
    .expect("truncate");
    app.write(&wal, &[Change::Purged(id(1, 1))], true)
        .expect("purge");
    app.write(&wal, &[Change::Committed(Some(id(2, 3)))], false)
        .expect("committed");
    app.flush().expect("flush");
    let before = indexes(&wal);
    assert_eq!(before, [(1, 2), (2, 3)]);
    drop((wal, app));
    let (wal, _app) = Wal::open(&dir).expect("reopen");
    assert_eq!(indexes(&wal), before);
    assert_eq!(wal.vote(), Some(Vote::new(2, 1)));
    assert_eq!(wal.purged(), Some(id(1, 1)));
    assert_eq!(wal.committed(), Some(id(2, 3)));
    assert_eq!(wal.last(), Some(id(2, 3)));
}

#[test]
fn phase2_a_write_cut_by_a_crash_is_dropped_and_nothing_before_it() {
    for tail in [
        vec![7u8, 0, 0], // a record head cut short
        vec![0u8; 700],  // the file grew, the data never landed
        {
            // a whole record head announcing more body than is there
            let mut r = Vec::new();
            record::encode(&mut r, Kind::Entry, &[b'x'; 100]).expect("encode");
            r.truncate(60);
            r
        },
    ] {
        let tmp = TempDir::new().expect("tmp");
        let (dir, wal, mut app) = new_log(&tmp);
        append(&wal, &mut app, &[entry(1, 1), entry(1, 2)]);
        let seg = dir.join(segment_name(1));
        let mut bytes = fs::read(&seg).expect("read");
        let good = bytes.len();
        bytes.extend_from_slice(&tail);
        fs::write(&seg, &bytes).expect("write");
        drop((wal, app));
        let (wal, mut app) = Wal::open(&dir).expect("a torn tail is not an error");
        assert_eq!(indexes(&wal), [(1, 1), (1, 2)]);
        assert_eq!(fs::metadata(&seg).expect("meta").len(), good as u64);
        // And the log goes on where the good records end.
        append(&wal, &mut app, &[entry(1, 3)]);
        drop((wal, app));
        let (wal, _) = Wal::open(&dir).expect("reopen");
        assert_eq!(indexes(&wal), [(1, 1), (1, 2), (1, 3)]);
    }
}

#[test]
fn phase3_damage_to_acknowledged_records_is_an_error_not_a_cut() {
    let tmp = TempDir::new().expect("tmp");
    let (dir, wal, mut app) = new_log(&tmp);
    append(&wal, &mut app, &[entry(1, 1), entry(1, 2), entry(1, 3)]);
    drop((wal, app));
    let seg = dir.join(segment_name(1));
    let mut bytes = fs::read(&seg).expect("read");
    let n = bytes.len();
    // A flipped bit in the middle record, with a good record after it.
    bytes[n - 120] ^= 0x01;
    fs::write(&seg, &bytes).expect("write");
    let err = Wal::open(&dir).err().expect("damage must not open");
    assert!(matches!(err, ControlError::Corrupt(_)), "{err}");
    assert_eq!(fs::read(&seg).expect("read").len(), n, "nothing was cut");
}

#[test]
fn phase4_segments_rotate_and_a_purge_deletes_the_old_ones_keeping_the_vote() {
    let tmp = TempDir::new().expect("tmp");
    let (dir, wal, mut app) = new_log(&tmp);
    app.segment_bytes = 400;
    app.write(&wal, &[Change::Vote(Vote::new(5, 1))], true)
        .expect("vote");
    for i in 1..=40 {
        append(&wal, &mut app, &[entry(5, i)]);
    }
    let many = segments(&dir).len();
    assert!(many > 4, "{:?}", segments(&dir));
    app.write(&wal, &[Change::Purged(id(5, 38))], true)
        .expect("purge");
    let left = segments(&dir);
    assert!(left.len() < many && left.len() <= 2, "{left:?}");
    assert_eq!(indexes(&wal), [(5, 39), (5, 40)]);
    drop((wal, app));
    let (wal, _) = Wal::open(&dir).expect("reopen");
    assert_eq!(
        wal.vote(),
        Some(Vote::new(5, 1)),
        "the vote lives on in a later segment"
    );
    assert_eq!(wal.purged(), Some(id(5, 38)));
    assert_eq!(indexes(&wal), [(5, 39), (5, 40)]);
}

#[test]
fn phase5_a_failed_write_stops_the_log() {
    let tmp = TempDir::new().expect("tmp");
    let (_dir, wal, mut app) = new_log(&tmp);
    append(&wal, &mut app, &[entry(1, 1)]);
    app.failed = Some("injected".into());
    let Err(e) = app.write(&wal, &[Change::Entry(&entry(1, 2))], true) else {
        panic!("a write after a failure was accepted");
    };
    assert!(e.to_string().contains("restart"), "{e}");
    assert_eq!(indexes(&wal), [(1, 1)]);
}

#[test]
fn phase6_leftovers_of_an_unfinished_rotation_are_removed() {
    let tmp = TempDir::new().expect("tmp");
    let (dir, wal, mut app) = new_log(&tmp);
    append(&wal, &mut app, &[entry(1, 1)]);
    drop((wal, app));
    fs::write(dir.join(format!("{}.tmp", segment_name(2))), b"ELTONW").expect("tmp");
    let (wal, _) = Wal::open(&dir).expect("open");
    assert_eq!(indexes(&wal), [(1, 1)]);
    assert_eq!(segments(&dir), [segment_name(1)]);
}

#[test]
fn torn_needs_a_zero_sector_or_an_all_zero_tail() {
    assert!(torn(&[0; 10], 100));
    assert!(!torn(&[1; 2000], 100));
    let mut t = vec![1u8; 2000];
    // Offset 100: the first whole sector of the tail starts at 412.
    t[412..924].fill(0);
    assert!(torn(&t, 100));
}
