//! Randomized check of `manifest_diff::diff` against the whole-manifest
//! decoder: with the parent manifest canonical (as published), a new
//! manifest is accepted exactly when `DirManifest::decode` accepts it, and
//! then `changed` / `replaced` are exactly the entries whose canonical
//! bytes are not on the other side.
//!
//! `MDIFF_FUZZ_ITERS` raises the number of rounds (default small enough
//! for a debug `cargo test`); `MDIFF_FUZZ_SEED` picks another sequence.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashSet};

use elton_proto::manifest_diff::diff;
use elton_proto::{DirManifest, Entry, EntryKind, ObjectId};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len())]
    }
}

/// Pieces that stress the raw scan: JSON punctuation, escapes, the entry
/// separator and the recipe field spelled inside strings, non-ASCII.
const PIECES: &[&str] = &[
    "a",
    "b",
    "f",
    "z",
    "é",
    "名",
    "\"",
    "\\",
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    " ",
    "\u{1}",
    "\u{7f}",
    ",{\"name\":\"",
    "},{",
    ",\"recipe\":true",
    "\"}]}",
    "\\\"",
    "name",
];

fn text(rng: &mut Rng, max: usize) -> String {
    (0..1 + rng.below(max)).map(|_| *rng.pick(PIECES)).collect()
}

fn name(rng: &mut Rng) -> String {
    loop {
        let n = text(rng, 3);
        if elton_proto::manifest::valid_entry_name(&n) {
            return n;
        }
    }
}

/// A valid entry; fields drawn from small pools so entries look alike
/// (long common runs across entry boundaries).
fn entry(rng: &mut Rng, name: String) -> Entry {
    let object = ObjectId::of(&[rng.below(3) as u8]);
    let mut e = Entry {
        mtime: [0, 1_700_000_000_000_000_000, -1][rng.below(3)],
        size: rng.below(3) as u64,
        ..Entry::file(&name, object, 0)
    };
    match rng.below(6) {
        0 => {
            e.kind = EntryKind::Dir;
            e.mode = 0o755;
        }
        1 => {
            e.kind = EntryKind::Symlink;
            e.object = None;
            e.target = Some(text(rng, 3));
        }
        2 => e.recipe = true,
        _ => {}
    }
    if rng.chance(5) {
        let mut x = BTreeMap::new();
        for _ in 0..1 + rng.below(2) {
            x.insert(
                text(rng, 2),
                ["", "00", "abcd", "7b7d"][rng.below(4)].to_string(),
            );
        }
        e.xattrs = Some(x);
    }
    e
}

fn manifest(rng: &mut Rng) -> DirManifest {
    let mut seen = HashSet::new();
    let mut entries = Vec::new();
    for _ in 0..rng.below(12) {
        let n = name(rng);
        if seen.insert(n.clone()) {
            entries.push(entry(rng, n));
        }
    }
    DirManifest::new(entries).unwrap()
}

fn raw(e: &Entry) -> String {
    serde_json::to_string(e).unwrap()
}

/// Small edits to an entry's text, most of which break it.
fn garble(rng: &mut Rng, s: &str) -> String {
    const EDITS: &[(&str, &str)] = &[
        (r#""type":"file""#, r#""type": "file""#),
        (r#","mode":420,"uid":0"#, r#","uid":0,"mode":420"#),
        (r#""name":"a"#, r#""name":"\u0061"#),
        (r#""name":""#, r#""name":"/"#),
        (r#""name":""#, r#""name":"..","x":""#),
        (r#","size":0"#, r#","size":-0"#),
        (r#","size":1"#, r#","size":1.0"#),
        (r#","mtime":0"#, r#","mtime":00"#),
        (r#""object":""#, r#""object":"A"#),
        (r#","recipe":true"#, ""),
        (r#"}"#, r#","recipe":false}"#),
        (r#""target":""#, r#""target":"\/"#),
        (r#""xattrs":{"#, r#""xattrs":{"a":"00","#),
        ("\\\"", "\\u0022"),
        ("\\\\", "\\u005c"),
        ("\\u0001", "\\u0001\\u0001"),
        ("\\u0001", "\\u0002"),
        ("é", "\\u00e9"),
        (r#""type":"file""#, r#""type":"dir""#),
        (r#""type":"dir""#, r#""type":"symlink""#),
    ];
    let (from, to) = *rng.pick(EDITS);
    if s.contains(from) {
        s.replacen(from, to, 1)
    } else {
        String::from_utf8_lossy(&bytes_edit(rng, s.as_bytes().to_vec())).into_owned()
    }
}

const TOKENS: &[&[u8]] = &[
    b",",
    b"{",
    b"}",
    b"\"",
    b"\\",
    b" ",
    b"]",
    b"[",
    b",{\"name\":\"",
    b"},{",
    b",\"recipe\":true",
    b"\n",
    b"0",
    b"\xff",
];

fn bytes_edit(rng: &mut Rng, mut b: Vec<u8>) -> Vec<u8> {
    let at = rng.below(b.len() + 1);
    match rng.below(4) {
        0 => {
            let t = *rng.pick(TOKENS);
            b.splice(at..at, t.iter().copied());
        }
        1 if at < b.len() => {
            let end = (at + 1 + rng.below(12)).min(b.len());
            b.drain(at..end);
        }
        2 if at < b.len() => b[at] = *rng.pick(b",{}\"\\ab0:[]"),
        _ => {
            // Duplicate a slice of itself elsewhere.
            let s = rng.below(b.len() + 1);
            let e = (s + rng.below(40)).min(b.len());
            let piece = b[s..e].to_vec();
            b.splice(at..at, piece);
        }
    }
    b
}

fn required_format(raws: &[String]) -> u32 {
    if raws.iter().any(|r| r.contains(r#","recipe":true}"#)) {
        2
    } else {
        1
    }
}

fn mutate(rng: &mut Rng, old: &DirManifest) -> Vec<u8> {
    let mut raws: Vec<String> = old.entries.iter().map(raw).collect();
    for _ in 0..1 + rng.below(3) {
        let at = rng.below(raws.len() + 1);
        let have = at < raws.len();
        match rng.below(11) {
            // A new version of an existing entry, same name.
            0 if have => {
                let n = match serde_json::from_str::<Entry>(&raws[at]) {
                    Ok(e) => e.name,
                    Err(_) => name(rng),
                };
                raws[at] = raw(&entry(rng, n));
            }
            1 if have => {
                raws.remove(at);
            }
            // A fresh entry, put in its sorted place or anywhere.
            2 | 3 => {
                let n = name(rng);
                let e = entry(rng, n);
                let r = raw(&e);
                let place = if rng.chance(3) {
                    at
                } else {
                    raws.partition_point(|x| {
                        serde_json::from_str::<Entry>(x)
                            .map(|x| x.name.as_bytes() < e.name.as_bytes())
                            .unwrap_or(true)
                    })
                };
                if rng.chance(4) && have {
                    raws[at] = r;
                } else {
                    raws.insert(place, r);
                }
            }
            4 if have => {
                let r = raws[at].clone();
                raws.insert(at, r);
            }
            5 if at + 1 < raws.len() => raws.swap(at, at + 1),
            6 | 7 if have => raws[at] = garble(rng, &raws[at]),
            8 if have => {
                // Only the name changes (often still sorted).
                let mut e: Entry = match serde_json::from_str(&raws[at]) {
                    Ok(e) => e,
                    Err(_) => continue,
                };
                e.name = format!("{}{}", e.name, rng.pick(PIECES));
                raws[at] = raw(&e);
            }
            9 if have => {
                // An entry copied from elsewhere, renamed.
                let src = rng.below(raws.len());
                let mut e: Entry = match serde_json::from_str(&raws[src]) {
                    Ok(e) => e,
                    Err(_) => continue,
                };
                let old_name: Entry = match serde_json::from_str(&raws[at]) {
                    Ok(e) => e,
                    Err(_) => continue,
                };
                e.name = old_name.name;
                raws[at] = raw(&e);
            }
            _ => {}
        }
    }
    if rng.chance(10) {
        raws.clear();
    }
    if rng.chance(8) {
        // An empty element: a leading, doubled or trailing comma.
        let at = rng.below(raws.len() + 1);
        raws.insert(at, String::new());
    }
    let format = match rng.below(12) {
        0 => "2".to_string(),
        1 => "1".to_string(),
        2 => ["01", "3", "0", "12", "4294967297", "1 "][rng.below(6)].to_string(),
        _ => required_format(&raws).to_string(),
    };
    let mut bytes = format!(r#"{{"format":{format},"entries":[{}]}}"#, raws.join(",")).into_bytes();
    if rng.chance(4) {
        for _ in 0..1 + rng.below(2) {
            bytes = bytes_edit(rng, bytes);
        }
    }
    bytes
}

fn check(old: &DirManifest, new: &[u8]) {
    let ob = old.encode();
    let whole = DirManifest::decode(new);
    let show = || {
        format!(
            "\nold: {}\nnew: {}",
            String::from_utf8_lossy(&ob),
            String::from_utf8_lossy(new)
        )
    };
    for parent in [Some(&ob[..]), None] {
        let fast = diff(new, parent);
        match (&whole, fast) {
            (Err(e), Ok(_)) => panic!("diff accepted what decode refuses ({e}){}", show()),
            (Ok(_), Err(e)) => panic!("diff refused what decode accepts ({e}){}", show()),
            (Err(_), Err(_)) => {}
            (Ok(m), Ok(d)) => {
                let (old_raws, old_entries): (HashSet<String>, &[Entry]) = match parent {
                    Some(_) => (old.entries.iter().map(raw).collect(), &old.entries),
                    None => (HashSet::new(), &[]),
                };
                let new_raws: HashSet<String> = m.entries.iter().map(raw).collect();
                let changed: Vec<Entry> = m
                    .entries
                    .iter()
                    .filter(|e| !old_raws.contains(&raw(e)))
                    .cloned()
                    .collect();
                let replaced: Vec<Entry> = old_entries
                    .iter()
                    .filter(|e| !new_raws.contains(&raw(e)))
                    .cloned()
                    .collect();
                assert_eq!(d.changed, changed, "changed{}", show());
                assert_eq!(d.replaced, replaced, "replaced{}", show());
                for e in &m.entries {
                    let r = d.replaced(&e.name);
                    let expect = replaced.iter().find(|o| o.name == e.name);
                    assert_eq!(r, expect, "replaced({:?}){}", e.name, show());
                }
            }
        }
    }
}

#[test]
fn manifest_diff_agrees_with_whole_decode_on_random_edits() {
    let rounds: usize = std::env::var("MDIFF_FUZZ_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    let seed: u64 = std::env::var("MDIFF_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let mut rng = Rng(seed);
    let (mut accepted, mut with_changes) = (0, 0);
    for _ in 0..rounds {
        let old = manifest(&mut rng);
        let new = mutate(&mut rng, &old);
        check(&old, &new);
        if let Ok(m) = DirManifest::decode(&new) {
            accepted += 1;
            with_changes += usize::from(m != old);
        }
        // The other way round too: the parent is the edited one.
        if let Ok(m) = DirManifest::decode(&new) {
            check(&m, &old.encode());
        }
    }
    eprintln!("{accepted} of {rounds} accepted, {with_changes} changed");
    // The generator must produce plenty of valid edits, not only garbage.
    assert!(accepted * 5 > rounds, "{accepted} of {rounds} accepted");
    assert!(
        with_changes * 2 > accepted,
        "{with_changes} of {accepted} changed"
    );
}

/// Entries that differ in a byte or two, so common prefixes and suffixes
/// run across entry boundaries and overlap when an entry is dropped.
fn look_alikes() -> Vec<Entry> {
    let object = ObjectId::of(b"same");
    let mut pool: Vec<Entry> = ["a", "aa", "a,{\"name\":\"a", "b"]
        .into_iter()
        .map(|n| Entry::file(n, object, 1))
        .collect();
    pool[3].recipe = true;
    pool.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
    pool
}

fn framed(format: u32, entries: &[&Entry]) -> Vec<u8> {
    let raws: Vec<String> = entries.iter().map(|e| raw(e)).collect();
    format!(r#"{{"format":{format},"entries":[{}]}}"#, raws.join(",")).into_bytes()
}

#[test]
fn manifest_diff_every_short_sequence_of_look_alike_entries() {
    let pool = look_alikes();
    let olds: Vec<DirManifest> = (0u32..1 << pool.len())
        .map(|mask| {
            let entries = (0..pool.len())
                .filter(|i| mask & (1 << i) != 0)
                .map(|i| pool[i].clone())
                .collect();
            DirManifest::new(entries).unwrap()
        })
        .collect();
    // Every sequence of up to 3 entries of the pool (unsorted and
    // duplicated ones included), under both formats.
    let mut seqs: Vec<Vec<usize>> = vec![vec![]];
    let mut last = seqs.clone();
    for _ in 0..3 {
        last = last
            .iter()
            .flat_map(|s| {
                (0..pool.len()).map(move |i| {
                    let mut s = s.clone();
                    s.push(i);
                    s
                })
            })
            .collect();
        seqs.extend(last.iter().cloned());
    }
    for old in &olds {
        for s in &seqs {
            let entries: Vec<&Entry> = s.iter().map(|&i| &pool[i]).collect();
            for format in [1, 2] {
                check(old, &framed(format, &entries));
            }
            // An empty element anywhere: a leading, doubled or trailing
            // comma (`{A},]}` shares all but `{B}` with `[A,B]`).
            let format = 1 + u32::from(entries.iter().any(|e| e.recipe));
            let raws: Vec<String> = entries.iter().map(|e| raw(e)).collect();
            for at in 0..=raws.len() {
                let mut r = raws.clone();
                r.insert(at, String::new());
                let b = format!(r#"{{"format":{format},"entries":[{}]}}"#, r.join(","));
                check(old, b.as_bytes());
            }
        }
    }
}

#[test]
fn manifest_diff_every_one_byte_edit_near_a_valid_edit() {
    let pool = look_alikes();
    let old = DirManifest::new(pool.clone()).unwrap();
    let mut changed = old.clone();
    changed.upsert(Entry {
        size: 2,
        ..pool[2].clone()
    });
    changed.entries.remove(1);
    let base = changed.encode();
    for at in 0..=base.len() {
        if at < base.len() {
            let mut b = base.clone();
            b.remove(at);
            check(&old, &b);
            for &x in b"\",}\\" {
                let mut b = base.clone();
                b[at] = x;
                check(&old, &b);
            }
        }
        for &t in &TOKENS[..9] {
            let mut b = base.clone();
            b.splice(at..at, t.iter().copied());
            check(&old, &b);
        }
    }
}

#[test]
fn manifest_diff_hand_picked_cases() {
    let object = ObjectId::of(b"same");
    let link = |name: &str, target: &str| Entry {
        kind: EntryKind::Symlink,
        object: None,
        target: Some(target.into()),
        ..Entry::file(name, object, 1)
    };
    let chunked = Entry {
        recipe: true,
        ..Entry::file("r", object, 1)
    };
    let old = DirManifest::new(vec![
        Entry::file("a", object, 1),
        link("l", r#",{"name":"x","recipe":true}]}"#),
        chunked.clone(),
        Entry::file("z", object, 1),
    ])
    .unwrap();
    let text = String::from_utf8(old.encode()).unwrap();
    let mut cases: Vec<String> = [
        // Escaped forms of what canonical JSON writes raw.
        (r#""name":"a""#, r#""name":"\u0061""#),
        (r#""name":"z""#, r#""name":"\ud83d\ude00""#),
        (r#""name":"z""#, r#""name":"\ud800""#),
        (r#""name":"z""#, r#""name":"\u0000""#),
        (r#""name":"z""#, r#""name":"z\/""#),
        (r#""name":"z""#, r#""name":"😀""#),
        // The separator and the recipe field inside a string, cut there.
        (
            r#"recipe\":true}]}"}"#,
            r#"recipe\":true}]}"},{"name":"m"}"#,
        ),
        (r#"recipe\":true}]}"#, r#"recipe\":true}]"#),
        (r#","recipe":true}"#, r#"}"#),
        (r#""format":2"#, r#""format":1"#),
        (r#""format":2"#, r#""format":02"#),
        ("]}", "]}\0"),
        ("{", "\u{feff}{"),
    ]
    .iter()
    .map(|(from, to)| text.replacen(from, to, 1))
    .collect();
    cases.push(text.replacen(
        r#""name":"z""#,
        &format!(r#""name":"{}""#, "z".repeat(256)),
        1,
    ));
    cases.push(text.replacen(
        r#""name":"z""#,
        &format!(r#""name":"{}""#, "z".repeat(255)),
        1,
    ));
    for new in &cases {
        assert_ne!(new, &text);
        check(&old, new.as_bytes());
    }
    // The chunked entry alone, under format 1 and 2, against a parent
    // that has it and one that does not.
    let plain = DirManifest::new(vec![Entry::file("a", object, 1)]).unwrap();
    for parent in [&old, &plain] {
        for format in [1, 2] {
            check(parent, &framed(format, &[&chunked]));
            check(parent, &framed(format, &[&old.entries[0], &chunked]));
        }
    }
}
