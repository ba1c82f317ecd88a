//! The persister against a real redb file: what an apply leaves in memory
//! reaches the file at the next flush, whole, and never behind a snapshot
//! install.

use openraft::{CommittedLeaderId, EntryPayload};

use super::*;
use crate::command::{Command, Request, RequestId};
use crate::state;
use crate::store::state_machine::{create_tables, load_state};
use crate::types::Entry;

fn put(index: u64, seq: u64, key: &str, value: &str) -> Entry {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(Request::new(
            RequestId {
                client: "c".into(),
                seq,
            },
            Command::Put {
                key: key.into(),
                value: value.into(),
            },
        )),
    }
}

fn open() -> (tempfile::TempDir, Persister, Arc<RwLock<State>>) {
    let dir = tempfile::TempDir::new().unwrap();
    let db = Arc::new(Database::create(dir.path().join("sm.redb")).unwrap());
    let txn = db.begin_write().unwrap();
    create_tables(&txn).unwrap();
    txn.commit().unwrap();
    let state = Arc::new(RwLock::new(State::default()));
    let persister = Persister::new(db, state.clone());
    (dir, persister, state)
}

fn apply(state: &RwLock<State>, entries: &[Entry]) {
    let mut s = state.write().unwrap();
    for e in entries {
        state::apply(&mut s, e);
    }
}

fn on_file(p: &Persister) -> State {
    load_state(p.db()).unwrap()
}

#[test]
fn phase1_applies_reach_the_file_at_the_flush_not_before() {
    let (_dir, p, state) = open();
    apply(&state, &[put(1, 1, "a", "1"), put(2, 2, "b", "2")]);
    assert_eq!(on_file(&p).last_applied, None, "an apply writes no file");
    p.flush().unwrap();
    let file = on_file(&p);
    assert_eq!(file.last_applied.map(|l| l.index), Some(2));
    assert_eq!(file.digest(), state.read().unwrap().digest());
}

#[test]
fn phase2_later_changes_to_the_same_rows_are_written_with_their_last_values() {
    let (_dir, p, state) = open();
    apply(&state, &[put(1, 1, "a", "1")]);
    p.flush().unwrap();
    apply(&state, &[put(2, 2, "a", "2"), put(3, 3, "a", "3")]);
    apply(&state, &[put(4, 4, "b", "x")]);
    p.flush().unwrap();
    let file = on_file(&p);
    assert_eq!(file.kv.get("a").map(String::as_str), Some("3"));
    assert_eq!(file.digest(), state.read().unwrap().digest());
    assert_eq!(
        file.response("c", 3),
        state.read().unwrap().response("c", 3)
    );
}

#[test]
fn phase3_a_flush_with_nothing_applied_writes_nothing() {
    let (_dir, p, state) = open();
    apply(&state, &[put(1, 1, "a", "1")]);
    p.flush().unwrap();
    p.flush().unwrap();
    assert_eq!(on_file(&p).last_applied.map(|l| l.index), Some(1));
}

#[test]
fn phase4_a_replacement_is_not_overwritten_by_rows_applied_before_it() {
    let (_dir, p, state) = open();
    apply(&state, &[put(1, 1, "a", "old")]);
    // A snapshot install replaces the state (and the file) before the
    // flush of the apply above: that apply's rows must not come back.
    let mut incoming = State::default();
    state::apply(&mut incoming, &put(9, 1, "z", "new"));
    incoming.take_changes();
    p.replace(|| {
        let txn = p.db().begin_write()?;
        crate::store::state_machine::write_all(&txn, &incoming)?;
        txn.commit()?;
        let mut s = state.write().unwrap();
        *s = incoming.clone();
        Ok(s.last_applied)
    })
    .unwrap();
    p.flush().unwrap();
    let file = on_file(&p);
    assert_eq!(file.last_applied.map(|l| l.index), Some(9));
    assert_eq!(file.kv.get("a"), None);
    assert_eq!(file.kv.get("z").map(String::as_str), Some("new"));
}

#[test]
fn phase5_dedup_rows_dropped_before_a_flush_never_reach_the_file_and_others_leave_it() {
    let (_dir, p, state) = open();
    let acked = |index, seq, below| {
        let mut e = put(index, seq, "k", "v");
        if let EntryPayload::Normal(r) = &mut e.payload {
            r.acked_below = below;
        }
        e
    };
    apply(&state, &[put(1, 1, "k", "v")]);
    p.flush().unwrap();
    // Row 1 is in the file and dropped now; row 2 comes and goes between
    // two flushes.
    apply(&state, &[acked(2, 2, 2), acked(3, 3, 3)]);
    p.flush().unwrap();
    let file = on_file(&p);
    let kept: Vec<u64> = file.sessions["c"].responses.keys().copied().collect();
    assert_eq!(kept, [3]);
    assert_eq!(file.sessions["c"].floor, 3);
    assert_eq!(file.digest(), state.read().unwrap().digest());
}
