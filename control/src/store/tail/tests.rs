use std::ops::Bound::{Excluded, Included, Unbounded};

use openraft::{CommittedLeaderId, EntryPayload};

use super::*;

fn entry(term: u64, index: u64) -> Entry {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
        payload: EntryPayload::Blank,
    }
}

fn entries(term: u64, indexes: std::ops::RangeInclusive<u64>) -> Vec<Entry> {
    indexes.map(|i| entry(term, i)).collect()
}

fn held(t: &Tail) -> Vec<(u64, u64)> {
    t.range((Unbounded, Unbounded))
        .iter()
        .map(|e| (e.log_id.leader_id.term, e.log_id.index))
        .collect()
}

fn written(t: &Tail, es: &[Entry], len: u64) {
    let records: Vec<(LogId, u64)> = es.iter().map(|e| (e.log_id, len)).collect();
    t.written(&records);
}

#[test]
fn phase1_queued_entries_are_served_and_stay_once_written() {
    let t = Tail::default();
    let es = entries(1, 1..=3);
    t.insert(&es);
    assert_eq!(t.last().map(|l| l.index), Some(3));
    assert_eq!(t.range((Included(2), Excluded(3))).len(), 1);
    written(&t, &es[..2], 100);
    // Written entries are still read from memory.
    assert_eq!(held(&t), [(1, 1), (1, 2), (1, 3)]);
    let got = t.covering((Included(2), Unbounded)).expect("held");
    assert_eq!(got.len(), 2);
}

#[test]
fn phase2_a_read_before_the_first_held_entry_goes_to_the_log() {
    let t = Tail::default();
    t.insert(&entries(1, 10..=12));
    assert!(t.covering((Included(9), Excluded(12))).is_none());
    assert!(t.covering((Unbounded, Excluded(12))).is_none());
    assert_eq!(
        t.covering((Included(10), Excluded(12))).map(|v| v.len()),
        Some(2)
    );
    assert_eq!(
        t.covering((Excluded(10), Included(12))).map(|v| v.len()),
        Some(2)
    );
    // Past the end: nothing more exists, so an empty answer is right.
    assert_eq!(
        t.covering((Included(13), Unbounded)).map(|v| v.len()),
        Some(0)
    );
    assert!(Tail::default().covering((Included(1), Unbounded)).is_none());
    // Empty and inverted ranges are empty answers, not a panic.
    assert_eq!(
        t.covering((Included(11), Excluded(11))).map(|v| v.len()),
        Some(0)
    );
    assert_eq!(
        t.covering((Excluded(11), Excluded(11))).map(|v| v.len()),
        Some(0)
    );
    assert_eq!(
        t.covering((Included(12), Included(10))).map(|v| v.len()),
        Some(0)
    );
}

#[test]
fn phase3_a_replaced_entry_survives_the_write_of_the_old_one() {
    let t = Tail::default();
    let old = entries(1, 1..=3);
    t.insert(&old);
    // A new leader's entries replace 2 and 3 before the old ones are
    // written.
    t.truncate(2);
    assert_eq!(held(&t), [(1, 1)]);
    t.insert(&[entry(2, 2)]);
    written(&t, &old, 10);
    assert_eq!(held(&t), [(1, 1), (2, 2)]);
    assert_eq!(t.last(), Some(entry(2, 2).log_id));
    // The replacement is still queued: the bound cannot drop it.
    let small = Tail::with_bounds(0, 0);
    small.insert(&entries(1, 1..=2));
    small.truncate(2);
    small.insert(&[entry(2, 2)]);
    written(&small, &entries(1, 1..=2), 10);
    assert_eq!(held(&small), [(2, 2)]);
}

#[test]
fn phase4_an_append_replaces_from_its_index_and_a_gap_starts_over() {
    let t = Tail::default();
    t.insert(&entries(1, 1..=5));
    t.insert(&entries(2, 4..=4));
    assert_eq!(held(&t), [(1, 1), (1, 2), (1, 3), (2, 4)]);
    // Not after the last held entry: what is held would not end where the
    // new entries begin.
    t.insert(&entries(2, 9..=9));
    assert_eq!(held(&t), [(2, 9)]);
    assert!(t.covering((Included(4), Unbounded)).is_none());
}

#[test]
fn phase5_purges_and_the_bounds_drop_the_oldest_written_entries() {
    let t = Tail::with_bounds(3, 1000);
    let es = entries(1, 1..=6);
    t.insert(&es);
    // Nothing is written yet: all six are kept whatever the bound.
    assert_eq!(held(&t).len(), 6);
    written(&t, &es[..4], 10);
    // Written 1..=4 may go, down to three entries held.
    assert_eq!(held(&t), [(1, 4), (1, 5), (1, 6)]);
    written(&t, &es[4..], 10);
    t.purge(4);
    assert_eq!(held(&t), [(1, 5), (1, 6)]);
    t.purge(u64::MAX);
    assert_eq!(held(&t), []);
    assert_eq!(t.last(), None);

    // Bytes: records of 400 bytes under a 1000-byte bound keep two.
    let t = Tail::with_bounds(100, 1000);
    let es = entries(1, 1..=4);
    t.insert(&es);
    written(&t, &es, 400);
    assert_eq!(held(&t), [(1, 3), (1, 4)]);
    t.truncate(4);
    t.purge(3);
    // The byte count follows every removal: with nothing held, three new
    // records of 400 bytes keep the last two again.
    let more = entries(1, 4..=6);
    t.insert(&more);
    written(&t, &more, 400);
    assert_eq!(held(&t), [(1, 5), (1, 6)]);
}
