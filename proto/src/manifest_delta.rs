//! Decoding a manifest that differs a little from one already checked,
//! parsing only what differs.
//!
//! A commit that changes one file in a directory of 1,000 adds one page of
//! up to 256 entries, which differs from the parent's page in the same
//! place by that file's entry. Checking its canonical form by decoding and
//! encoding all of it was most of a master's work per commit (issue 16). A
//! page's canonical bytes are the header, the canonical entries joined by
//! commas, and the trailer (see [`EntrySpans`]); so where the new bytes
//! keep the base's bytes up to the start of one entry and again from the
//! end of another, only the bytes in between need to be parsed, and they
//! must be whole canonical entries themselves.
//!
//! Why the result is exact: the kept prefix and suffix are, byte for byte,
//! the base's encoding of `base[..i]` and `base[j..]` (checked once per base
//! by [`EntrySpans::of`], against the base's own entries), and the middle is
//! checked to be exactly the encoding of the entries it parses to. So the
//! new bytes are the canonical encoding of `base[..i] ++ middle ++ base[j..]`
//! under the base's format, and that manifest passes the same validation as
//! [`DirManifest::decode`] applies. Nothing is believed of the base's bytes
//! beyond what [`EntrySpans::of`] checked; anything this cannot handle (a
//! changed format, deleted entries, a difference outside the entries)
//! answers `None`, and the caller decodes in full.

use crate::manifest::MAX_MANIFEST_BYTES;
use crate::{DirManifest, Entry};

/// Where each entry lies in a manifest's canonical bytes: entry `k` is
/// `bytes[start..end]` of the `k`th span, entries are joined by one comma,
/// the header (`{"format":F,"entries":[`) ends where the first begins and
/// the trailer (`]}`) begins where the last ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntrySpans(Vec<(u32, u32)>);

impl EntrySpans {
    /// The spans of `manifest`'s entries in `bytes`, if `bytes` is exactly
    /// its canonical encoding (every entry's encoding compared in place).
    pub fn of(manifest: &DirManifest, bytes: &[u8]) -> Option<Self> {
        let header = header(manifest.format);
        if bytes.len() > MAX_MANIFEST_BYTES || !bytes.starts_with(&header) {
            return None;
        }
        let (spans, end) = locate(bytes, header.len(), &manifest.entries)?;
        (&bytes[end..] == TRAILER).then_some(Self(spans))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn start(&self, k: usize) -> usize {
        self.0[k].0 as usize
    }

    fn end(&self, k: usize) -> usize {
        self.0[k].1 as usize
    }
}

const TRAILER: &[u8] = b"]}";

/// `{"format":F,"entries":[`, as the canonical encoding writes it.
fn header(format: u32) -> Vec<u8> {
    let mut empty = serde_json::to_vec(&DirManifest {
        format,
        entries: Vec::new(),
    })
    .unwrap_or_default();
    empty.truncate(empty.len().saturating_sub(TRAILER.len()));
    empty
}

/// Where `entries`, each in its canonical encoding and joined by commas,
/// lie in `bytes` from `at` on (each compared in place), and where the
/// last one ends; `None` where the bytes are anything else.
fn locate(bytes: &[u8], mut at: usize, entries: &[Entry]) -> Option<(Vec<(u32, u32)>, usize)> {
    let mut spans = Vec::with_capacity(entries.len());
    let mut encoded = Vec::with_capacity(512);
    for (k, entry) in entries.iter().enumerate() {
        if k > 0 {
            if bytes.get(at) != Some(&b',') {
                return None;
            }
            at += 1;
        }
        encoded.clear();
        serde_json::to_writer(&mut encoded, entry).ok()?;
        let end = at + encoded.len();
        if bytes.get(at..end) != Some(encoded.as_slice()) {
            return None;
        }
        spans.push((u32::try_from(at).ok()?, u32::try_from(end).ok()?));
        at = end;
    }
    Some((spans, at))
}

/// `bytes` decoded in canonical form, as [`DirManifest::decode`] would
/// decode them, parsing only where they differ from `base` (whose
/// canonical bytes are `base_bytes`, with `spans` from
/// [`EntrySpans::of`]); with the spans of the result. `None` when the
/// difference is not a run of whole entries replaced by at least one
/// entry, or anything fails: decode in full then (which also reports what
/// is wrong).
pub fn decode_against(
    bytes: &[u8],
    base: &DirManifest,
    base_bytes: &[u8],
    spans: &EntrySpans,
) -> Option<(DirManifest, EntrySpans)> {
    let n = spans.len();
    if n == 0 || n != base.entries.len() || bytes.len() > MAX_MANIFEST_BYTES {
        return None;
    }
    let prefix = common_prefix(bytes, base_bytes);
    let suffix = common_suffix(bytes, base_bytes, prefix);
    // Keep base entries before `i` (their bytes and the comma after them
    // lie within the common prefix) and from `j` on (the comma before
    // them and the trailer lie within the common suffix); replace
    // `base[i..j]`, at least one entry.
    let i = spans
        .0
        .partition_point(|&(start, _)| start as usize <= prefix)
        .checked_sub(1)?;
    let kept_from = base_bytes.len() - suffix;
    let j = (i + 1..=n).find(|&k| spans.end(k - 1) >= kept_from)?;
    let middle_start = spans.start(i);
    let tail = base_bytes.len() - spans.end(j - 1);
    let middle_end = bytes.len().checked_sub(tail)?;
    let replacing = parse_entries(bytes.get(middle_start..middle_end)?)?;
    let (middle_spans, end) = locate(&bytes[..middle_end], middle_start, &replacing)?;
    if end != middle_end {
        return None;
    }
    let mut entries = Vec::with_capacity(n - (j - i) + replacing.len());
    entries.extend_from_slice(&base.entries[..i]);
    entries.extend(replacing);
    entries.extend_from_slice(&base.entries[j..]);
    let manifest = DirManifest {
        format: base.format,
        entries,
    };
    manifest.validate().ok()?;
    // The kept tail moved by the difference in length.
    let moved = |p: u32| u32::try_from(p as usize + bytes.len() - base_bytes.len()).ok();
    let mut result = Vec::with_capacity(manifest.entries.len());
    result.extend_from_slice(&spans.0[..i]);
    result.extend(middle_spans);
    for &(start, end) in &spans.0[j..] {
        result.push((moved(start)?, moved(end)?));
    }
    Some((manifest, EntrySpans(result)))
}

/// Entries joined by commas, nothing else (no whitespace is canonical, so
/// the encoding check that follows refuses any).
fn parse_entries(middle: &[u8]) -> Option<Vec<Entry>> {
    if middle.is_empty() {
        return None;
    }
    let mut array = Vec::with_capacity(middle.len() + 2);
    array.push(b'[');
    array.extend_from_slice(middle);
    array.push(b']');
    let entries: Vec<Entry> = serde_json::from_slice(&array).ok()?;
    (!entries.is_empty()).then_some(entries)
}

fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// The common suffix, not reaching into the first `prefix` bytes of
/// either.
fn common_suffix(a: &[u8], b: &[u8], prefix: usize) -> usize {
    let room = a.len().min(b.len()) - prefix;
    a.iter()
        .rev()
        .zip(b.iter().rev())
        .take(room)
        .take_while(|(x, y)| x == y)
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EntryKind, ObjectId};

    /// A deterministic generator (xorshift), so a failure reproduces.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    fn entry(rng: &mut Rng, name: String) -> Entry {
        let mut e = Entry::file(
            &name,
            ObjectId::of(&rng.next().to_le_bytes()),
            rng.next() % 5000,
        );
        e.mtime = (rng.next() % 1_000_000_000_000) as i64;
        match rng.below(10) {
            0 => {
                e.kind = EntryKind::Symlink;
                e.object = None;
                e.target = Some(format!("../t\"{}\\x", rng.next() % 100));
            }
            1 => e.kind = EntryKind::Dir,
            2 => {
                e.xattrs = Some([("user.k".to_string(), "00ff".to_string())].into());
            }
            _ => {}
        }
        e
    }

    fn manifest(rng: &mut Rng, n: usize) -> DirManifest {
        let entries = (0..n)
            .map(|k| entry(rng, format!("f{:06}", k * 10)))
            .collect();
        DirManifest::new(entries).unwrap()
    }

    fn spanned(m: &DirManifest) -> (Vec<u8>, EntrySpans) {
        let bytes = m.encode();
        let spans = EntrySpans::of(m, &bytes).expect("spans of a canonical encoding");
        (bytes, spans)
    }

    #[test]
    fn phase1_spans_locate_every_entry_and_refuse_other_bytes() {
        let mut rng = Rng(7);
        for n in [0, 1, 2, 17, 256] {
            let m = manifest(&mut rng, n);
            let (bytes, spans) = spanned(&m);
            assert_eq!(spans.len(), n);
            for (k, e) in m.entries.iter().enumerate() {
                let slice = &bytes[spans.start(k)..spans.end(k)];
                assert_eq!(slice, serde_json::to_vec(e).unwrap().as_slice());
            }
            // Not its encoding: a space, another format, a missing entry.
            let mut spaced = bytes.clone();
            spaced.insert(bytes.len() - 2, b' ');
            assert!(EntrySpans::of(&m, &spaced).is_none());
            let other = DirManifest {
                format: m.format + 1,
                entries: m.entries.clone(),
            };
            assert!(EntrySpans::of(&other, &bytes).is_none());
            if n > 0 {
                let fewer = DirManifest {
                    format: m.format,
                    entries: m.entries[1..].to_vec(),
                };
                assert!(EntrySpans::of(&fewer, &bytes).is_none());
            }
        }
    }

    /// Random edits of a base: whenever the delta answers, it answers what
    /// a full decode does, with the spans a full computation gives.
    #[test]
    fn phase2_delta_decode_equals_full_decode() {
        let mut rng = Rng(0x5eed);
        let mut answered = 0;
        for round in 0..600 {
            let n = 1 + rng.below(300);
            let base = manifest(&mut rng, n);
            let (base_bytes, spans) = spanned(&base);
            let mut edited = base.clone();
            for _ in 0..1 + rng.below(3) {
                let at = rng.below(edited.entries.len());
                match rng.below(4) {
                    // Changed content.
                    0 | 1 => {
                        let name = edited.entries[at].name.clone();
                        edited.entries[at] = entry(&mut rng, name);
                    }
                    // A new name after an existing one.
                    2 => {
                        let name = format!("{}a{round}", edited.entries[at].name);
                        edited.upsert(entry(&mut rng, name));
                    }
                    // A deletion (handled by a full decode, unless other
                    // edits surround it).
                    _ if edited.entries.len() > 1 => {
                        edited.entries.remove(at);
                    }
                    _ => {}
                }
            }
            let bytes = edited.encode();
            let full = DirManifest::decode(&bytes).unwrap();
            if let Some((m, s)) = decode_against(&bytes, &base, &base_bytes, &spans) {
                answered += 1;
                assert_eq!(m, full, "round {round}");
                assert_eq!(Some(s), EntrySpans::of(&full, &bytes), "round {round}");
            }
        }
        // Most edits are handled without a full decode.
        assert!(answered > 400, "{answered} of 600");
    }

    #[test]
    fn phase3_bytes_that_full_decoding_refuses_are_never_accepted() {
        let mut rng = Rng(99);
        let base = manifest(&mut rng, 64);
        let (base_bytes, spans) = spanned(&base);
        let target = &base.entries[10];
        let good = serde_json::to_vec(target).unwrap();
        let at = spans.start(10);
        let replace = |with: &[u8]| {
            let mut b = base_bytes[..at].to_vec();
            b.extend_from_slice(with);
            b.extend_from_slice(&base_bytes[spans.end(10)..]);
            b
        };
        let text = String::from_utf8(good.clone()).unwrap();
        let bad: Vec<Vec<u8>> = vec![
            // Not canonical: whitespace, escaped where it need not be,
            // fields out of order.
            replace(text.replacen(',', ", ", 1).as_bytes()),
            replace(text.replacen("\"name\"", "\"n\\u0061me\"", 1).as_bytes()),
            replace(
                format!(
                    "{{\"type\":\"file\",{}",
                    text.replacen(",\"type\":\"file\"", "", 1)
                        .trim_start_matches('{')
                )
                .as_bytes(),
            ),
            // Out of order, and a duplicate name.
            replace(text.replacen(&target.name, "a", 1).as_bytes()),
            replace(
                text.replacen(&target.name, &base.entries[9].name, 1)
                    .as_bytes(),
            ),
            // Invalid entries and JSON.
            replace(text.replacen(&target.name, "..", 1).as_bytes()),
            replace(b"{}"),
            replace(&good[..good.len() - 1]),
            replace(format!("{text},").as_bytes()),
            replace(format!("{text},{text}").as_bytes()),
            replace(b""),
            // An unknown field.
            replace(text.replacen('{', "{\"x\":1,", 1).as_bytes()),
        ];
        for (k, bytes) in bad.iter().enumerate() {
            assert!(DirManifest::decode(bytes).is_err(), "case {k} is valid");
            assert!(
                decode_against(bytes, &base, &base_bytes, &spans).is_none(),
                "case {k} accepted"
            );
        }
        // A recipe in a format-1 page needs format 2: a full decode's job.
        let mut recipe = target.clone();
        recipe.recipe = true;
        let with_recipe = replace(&serde_json::to_vec(&recipe).unwrap());
        assert!(decode_against(&with_recipe, &base, &base_bytes, &spans).is_none());
        // And the untouched page decodes to the base.
        let same = replace(&good);
        assert_eq!(
            decode_against(&same, &base, &base_bytes, &spans).map(|(m, _)| m),
            None,
            "an unchanged page has nothing to replace"
        );
    }
}
