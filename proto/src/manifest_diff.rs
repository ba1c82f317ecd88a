//! Checking a directory's new manifest against the same directory's
//! manifest in the parent version, decoding only the entries that differ.
//!
//! A commit that changes one file in a directory of 1,000 entries writes a
//! new manifest of 1,000 entries; decoding both manifests whole on every
//! commit made a small commit cost O(size of the changed directories).
//! Here the entries in the common prefix and suffix of the two manifests'
//! bytes are set aside with a `memcmp`; what is left is split into its
//! entries' raw bytes (a scan for each entry's end, no strings or ids
//! built) and paired by name, and an entry whose bytes equal the parent's
//! entry of the same name is not decoded: it was checked, byte for byte,
//! when the parent was published. What is still checked over the whole new
//! manifest is what makes it canonical as a whole (`docs/formats.md` §2):
//! the size, the exact framing, the order of the names, the format number.

use std::borrow::Cow;

use memchr::memmem;

use crate::ProtoError;
use crate::manifest::{Entry, MANIFEST_FORMAT, MANIFEST_FORMAT_RECIPES, MAX_MANIFEST_BYTES};

/// What [`diff`] found in a new manifest.
#[derive(Debug, Default)]
pub struct DirDiff {
    /// The entries whose bytes are not among the parent's, decoded and
    /// checked, in name order.
    pub changed: Vec<Entry>,
    /// The parent's entries whose bytes are not among the new ones
    /// (removed, or replaced by a changed entry of the same name), decoded,
    /// in name order. Trusted as published; one that does not decode is
    /// left out (it then vouches for nothing).
    pub replaced: Vec<Entry>,
}

impl DirDiff {
    /// The parent's entry of that name, if it was replaced.
    pub fn replaced(&self, name: &str) -> Option<&Entry> {
        self.replaced
            .binary_search_by(|e| e.name.as_bytes().cmp(name.as_bytes()))
            .ok()
            .map(|i| &self.replaced[i])
    }
}

/// Checks `new` (a manifest's bytes) as [`crate::DirManifest::decode`]
/// would, except that entries found byte for byte in `old` (the parent's
/// manifest of the same directory, trusted) are not decoded again. With
/// `old` absent or not splittable, every entry is decoded and checked.
pub fn diff(new: &[u8], old: Option<&[u8]>) -> Result<DirDiff, ProtoError> {
    if new.len() > MAX_MANIFEST_BYTES {
        return Err(ProtoError::Manifest(format!(
            "{} bytes is too large",
            new.len()
        )));
    }
    match old.and_then(|old| Regions::trimmed(new, old)) {
        Some(regions) => regions.check(),
        None => Regions::whole(new, old)?.check(),
    }
}

/// What is left to compare once the entries known unchanged are set
/// aside.
struct Regions<'a> {
    format: u32,
    /// New entries not known to be unchanged, in order.
    new: Vec<RawEntry<'a>>,
    /// The parent's entries they may replace, in order.
    old: Vec<RawEntry<'a>>,
    /// The parent had chunked files (format 2).
    old_had_recipes: bool,
    /// Names of the unchanged entries right before and after `new`.
    before: Option<Cow<'a, [u8]>>,
    after: Option<Cow<'a, [u8]>>,
    /// Some unchanged entry outside `new` is a chunked file.
    recipe_outside: bool,
}

/// Separates two entries in canonical form. In valid JSON `,{` occurs
/// only between two objects of an array, and in a manifest the only such
/// array is `entries`: in a trusted manifest, every occurrence is an entry
/// boundary.
const SEP: &[u8] = br#",{"name":""#;

impl<'a> Regions<'a> {
    /// Every entry of `new` against every entry of `old`.
    fn whole(new: &'a [u8], old: Option<&'a [u8]>) -> Result<Self, ProtoError> {
        let new = Split::parse(new)?;
        let old = old.and_then(|o| Split::parse(o).ok());
        Ok(Self {
            format: new.format,
            new: new.entries,
            old_had_recipes: old
                .as_ref()
                .is_some_and(|o| o.format == MANIFEST_FORMAT_RECIPES),
            old: old.map(|o| o.entries).unwrap_or_default(),
            before: None,
            after: None,
            recipe_outside: false,
        })
    }

    /// Sets aside the entries in the longest common prefix and suffix of
    /// the two manifests' bytes, cut at entry boundaries of `old`: a
    /// changed entry costs a `memcmp` of the bytes before and after it, not
    /// a scan of them. `None` when the bytes do not lend themselves to it
    /// (then [`Self::whole`] decides).
    fn trimmed(new: &'a [u8], old: &'a [u8]) -> Option<Self> {
        let (format, new_head) = header(new)?;
        let (old_format, old_head) = header(old)?;
        let (n, o) = (new.len(), old.len());
        if !new.ends_with(TAIL) || !old.ends_with(TAIL) {
            return None;
        }
        let l = common_prefix(new, old);
        let r = common_suffix(new, old).min(n.min(o) - l);
        // The prefix: old's entries that end (with their comma) within it.
        let (p_new, p_old, prefix_entries) = if l > old_head {
            match memmem::rfind(&old[old_head..(l + SEP.len() - 1).min(o)], SEP) {
                Some(i) => (old_head + i + 1, old_head + i + 1, true),
                None => (new_head, old_head, false),
            }
        } else {
            (new_head, old_head, false)
        };
        // The suffix: old's entries that start within it, after the prefix.
        let from = (o - r).max(p_old).saturating_sub(1);
        let s_old = match memmem::find(&old[from..], SEP) {
            Some(i) => from + i + 1,
            None => o - TAIL.len(),
        };
        let suffix_entries = s_old < o - TAIL.len();
        let s_new = (s_old + n).checked_sub(o)?;
        if s_new < p_new || s_old < p_old || s_old < o - r {
            return None;
        }
        let new_mid = split_region(new, p_new, s_new, prefix_entries, suffix_entries)?;
        let old_mid = split_region(old, p_old, s_old, prefix_entries, suffix_entries)?;
        let before = if prefix_entries {
            let start = memmem::rfind(&old[old_head..p_old - 1], SEP)
                .map_or(old_head, |i| old_head + i + 1);
            Some(entry_name(&old[start..p_old - 1])?)
        } else {
            None
        };
        let after = if suffix_entries {
            Some(entry_name(&old[s_old..])?)
        } else {
            None
        };
        let old_had_recipes = old_format == MANIFEST_FORMAT_RECIPES;
        let recipe_outside = old_had_recipes
            && (memmem::find(&old[old_head..p_old], RECIPE_FIELD).is_some()
                || memmem::find(&old[s_old..], RECIPE_FIELD).is_some());
        Some(Self {
            format,
            new: new_mid,
            old: old_mid,
            old_had_recipes,
            before,
            after,
            recipe_outside,
        })
    }

    fn check(self) -> Result<DirDiff, ProtoError> {
        let names = self
            .before
            .iter()
            .chain(self.new.iter().map(|e| &e.name))
            .chain(self.after.iter());
        for (a, b) in names.clone().zip(names.skip(1)) {
            if a >= b {
                return Err(ProtoError::Manifest(format!(
                    "entries not strictly sorted at {:?}",
                    String::from_utf8_lossy(b)
                )));
            }
        }
        // Both lists are in name order: one merge pairs each new entry
        // with the parent's entry of the same name. (A parent out of order
        // only pairs less, which decodes more.)
        let old = &self.old[..];
        let mut changed = Vec::new();
        let mut replaced_raw = Vec::new();
        let mut has_recipe = self.recipe_outside;
        let mut j = 0;
        for e in &self.new {
            while old.get(j).is_some_and(|o| o.name < e.name) {
                replaced_raw.push(old[j].raw);
                j += 1;
            }
            if let Some(o) = old.get(j).filter(|o| o.name == e.name) {
                j += 1;
                if o.raw == e.raw {
                    has_recipe = has_recipe
                        || (self.old_had_recipes && memmem::find(e.raw, RECIPE_FIELD).is_some());
                    continue;
                }
                replaced_raw.push(o.raw);
            }
            let entry = decode_entry(e.raw)?;
            has_recipe |= entry.recipe;
            changed.push(entry);
        }
        replaced_raw.extend(old[j.min(old.len())..].iter().map(|o| o.raw));

        if self.format != MANIFEST_FORMAT && self.format != MANIFEST_FORMAT_RECIPES {
            return Err(ProtoError::Manifest(format!(
                "unsupported format {} (this build reads {MANIFEST_FORMAT} and {MANIFEST_FORMAT_RECIPES})",
                self.format
            )));
        }
        let required = if has_recipe {
            MANIFEST_FORMAT_RECIPES
        } else {
            MANIFEST_FORMAT
        };
        if self.format != required {
            return Err(ProtoError::Manifest(format!(
                "format {} must be {required} (format {MANIFEST_FORMAT_RECIPES} exactly when an entry has a recipe)",
                self.format
            )));
        }
        let replaced = replaced_raw
            .into_iter()
            .filter_map(|raw| serde_json::from_slice::<Entry>(raw).ok())
            .collect();
        Ok(DirDiff { changed, replaced })
    }
}

/// The entries of `bytes[start..end]`, which lies between the prefix's
/// entries (each followed by its `,`) and the suffix's (the first preceded
/// by its `,`); `None` unless it is entries exactly so separated.
fn split_region(
    bytes: &[u8],
    start: usize,
    end: usize,
    after_entries: bool,
    before_entries: bool,
) -> Option<Vec<RawEntry<'_>>> {
    let mut out = Vec::new();
    if start == end {
        // Between two entries, one comma; before `]}`, none.
        return (!after_entries || before_entries).then_some(out);
    }
    let mut at = start;
    loop {
        let e = object_end(bytes, at)?;
        if e > end {
            return None;
        }
        out.push(RawEntry {
            name: entry_name(&bytes[at..e])?,
            raw: &bytes[at..e],
        });
        if e == end {
            return (!before_entries).then_some(out);
        }
        if bytes[e] != b',' {
            return None;
        }
        at = e + 1;
        if at == end {
            return before_entries.then_some(out);
        }
    }
}

/// `{"format":N,"entries":[` in canonical form: N and the length.
fn header(bytes: &[u8]) -> Option<(u32, usize)> {
    let rest = bytes.strip_prefix(HEAD)?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || (digits > 1 && rest[0] == b'0') {
        return None;
    }
    let format = std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()?;
    rest[digits..]
        .starts_with(ENTRIES)
        .then_some((format, HEAD.len() + digits + ENTRIES.len()))
}

/// How many entries a manifest that [`diff`] accepted holds: one more than
/// its entry separators, which occur nowhere else in canonical JSON (a
/// quote inside a string is escaped). A scan, not a parse.
pub fn entry_count(bytes: &[u8]) -> usize {
    match header(bytes) {
        Some((_, at)) if bytes.get(at) == Some(&b'{') => memmem::find_iter(bytes, SEP).count() + 1,
        _ => 0,
    }
}

/// Length of the longest common prefix, compared a block at a time.
fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    const BLOCK: usize = 64;
    let len = a.len().min(b.len());
    let mut i = 0;
    while i + BLOCK <= len && a[i..i + BLOCK] == b[i..i + BLOCK] {
        i += BLOCK;
    }
    i + a[i..len]
        .iter()
        .zip(&b[i..len])
        .take_while(|(x, y)| x == y)
        .count()
}

/// Length of the longest common suffix, compared a block at a time.
fn common_suffix(a: &[u8], b: &[u8]) -> usize {
    const BLOCK: usize = 64;
    let len = a.len().min(b.len());
    let (a, b) = (&a[a.len() - len..], &b[b.len() - len..]);
    let mut k = 0;
    while k + BLOCK <= len && a[len - k - BLOCK..len - k] == b[len - k - BLOCK..len - k] {
        k += BLOCK;
    }
    k + a[..len - k]
        .iter()
        .rev()
        .zip(b[..len - k].iter().rev())
        .take_while(|(x, y)| x == y)
        .count()
}

/// How a chunked file's entry says so in canonical form. Inside a JSON
/// string every `"` is escaped, so these bytes occur only as the field.
const RECIPE_FIELD: &[u8] = br#","recipe":true"#;

/// One entry, decoded and checked: valid in itself and in canonical form.
fn decode_entry(raw: &[u8]) -> Result<Entry, ProtoError> {
    // One JSON object and nothing else: `from_slice` refuses trailing bytes.
    let entry: Entry =
        serde_json::from_slice(raw).map_err(|e| ProtoError::Manifest(e.to_string()))?;
    entry.validate()?;
    // Serializing a plain struct of strings and integers cannot fail.
    if serde_json::to_vec(&entry).unwrap_or_default() != raw {
        return Err(ProtoError::Manifest(format!(
            "entry {:?} not in canonical form",
            entry.name
        )));
    }
    Ok(entry)
}

/// A manifest whose framing is canonical, split into its entries' raw
/// bytes. The split is a scan for each entry's closing brace outside
/// strings, not a JSON parser: every piece is then either byte-identical
/// to an entry of a manifest that passed the full check, or parsed as
/// exactly one entry by [`decode_entry`]; with the separators checked
/// here, the whole is canonical JSON.
struct Split<'a> {
    format: u32,
    entries: Vec<RawEntry<'a>>,
}

struct RawEntry<'a> {
    /// The decoded name's bytes (the order is by them).
    name: Cow<'a, [u8]>,
    raw: &'a [u8],
}

const HEAD: &[u8] = br#"{"format":"#;
const ENTRIES: &[u8] = br#","entries":["#;
const TAIL: &[u8] = b"]}";

impl<'a> Split<'a> {
    fn parse(bytes: &'a [u8]) -> Result<Self, ProtoError> {
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(ProtoError::Manifest(format!(
                "{} bytes is too large",
                bytes.len()
            )));
        }
        let not_canonical = || ProtoError::Manifest("not in canonical form".into());
        let (format, mut at) = header(bytes).ok_or_else(not_canonical)?;
        let mut entries = Vec::new();
        if bytes[at..] == *TAIL {
            return Ok(Self { format, entries });
        }
        loop {
            let end = object_end(bytes, at).ok_or_else(not_canonical)?;
            let raw = &bytes[at..end];
            entries.push(RawEntry {
                name: entry_name(raw).ok_or_else(not_canonical)?,
                raw,
            });
            match bytes.get(end) {
                Some(b',') => at = end + 1,
                Some(b']') if bytes[end..] == *TAIL => return Ok(Self { format, entries }),
                _ => return Err(not_canonical()),
            }
        }
    }
}

/// Where the object starting at `start` (a `{`) ends: the index after its
/// closing brace, braces inside strings not counted.
fn object_end(bytes: &[u8], start: usize) -> Option<usize> {
    if bytes.get(start) != Some(&b'{') {
        return None;
    }
    let mut depth = 0usize;
    let mut i = start;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'"' => {
                i = string_end(bytes, i + 1)?;
                continue;
            }
            b'{' => depth += 1,
            b'}' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(i + 1);
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// The index after the `"` closing the string whose contents start at `i`.
fn string_end(bytes: &[u8], mut i: usize) -> Option<usize> {
    loop {
        let j = i + memchr::memchr2(b'"', b'\\', bytes.get(i..)?)?;
        if bytes[j] == b'"' {
            return Some(j + 1);
        }
        i = j + 2; // the escaped byte
    }
}

/// The name of an entry in canonical form (its first field), decoded;
/// `None` if the entry does not start with it.
fn entry_name(raw: &[u8]) -> Option<Cow<'_, [u8]>> {
    let quoted = raw.strip_prefix(br#"{"name":"#)?;
    let end = string_end(quoted, 1)?;
    let body = &quoted[1..end - 1];
    if !body.contains(&b'\\') {
        return Some(Cow::Borrowed(body));
    }
    // Escapes: let the JSON parser read the one string.
    serde_json::from_slice::<String>(&quoted[..end])
        .ok()
        .map(|s| Cow::Owned(s.into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DirManifest, EntryKind, ObjectId};

    fn file(name: &str) -> Entry {
        Entry {
            mtime: 1_700_000_000_000_000_000,
            ..Entry::file(name, ObjectId::of(name.as_bytes()), name.len() as u64)
        }
    }

    /// 1,000 files f0000..f0999, canonical.
    fn big() -> DirManifest {
        DirManifest::new((0..1000).map(|i| file(&format!("f{i:04}"))).collect()).unwrap()
    }

    /// `base`'s bytes with entry `at` replaced by `raw` (or `raw` inserted
    /// before it), framing kept canonical.
    fn edited(base: &DirManifest, at: usize, raw: &str, insert: bool) -> Vec<u8> {
        let mut raws: Vec<String> = base
            .entries
            .iter()
            .map(|e| serde_json::to_string(e).unwrap())
            .collect();
        if insert {
            raws.insert(at, raw.to_string());
        } else {
            raws[at] = raw.to_string();
        }
        format!(
            r#"{{"format":{},"entries":[{}]}}"#,
            base.format,
            raws.join(",")
        )
        .into_bytes()
    }

    fn refused(new: &[u8], old: &[u8]) -> String {
        let e = diff(new, Some(old)).unwrap_err().to_string();
        // The full decoder agrees.
        assert!(DirManifest::decode(new).is_err(), "decode accepted: {e}");
        e
    }

    #[test]
    fn only_the_changed_entries_are_decoded() {
        let old = big();
        let mut new = old.clone();
        new.upsert(Entry {
            size: 7,
            ..file("f0500")
        });
        new.upsert(file("g"));
        new.entries.remove(3);
        let d = diff(&new.encode(), Some(&old.encode())).unwrap();
        let names = |v: &[Entry]| v.iter().map(|e| e.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&d.changed), ["f0500", "g"]);
        assert_eq!(names(&d.replaced), ["f0003", "f0500"]);
        assert_eq!(d.replaced("f0500").map(|e| e.size), Some(5));
        // Without a parent, everything is new.
        assert_eq!(diff(&new.encode(), None).unwrap().changed.len(), 1000);
        // A parent that is not a manifest vouches for nothing.
        assert_eq!(
            diff(&new.encode(), Some(b"{}")).unwrap().changed.len(),
            1000
        );
    }

    #[test]
    fn one_bad_entry_among_1000_unchanged_is_refused() {
        let old = big();
        let ob = old.encode();
        let good = serde_json::to_string(&file("f0500x")).unwrap();
        let id = ObjectId::of(b"f0500x").to_hex();
        // Bad hash: not 64 lowercase hex digits.
        let bad_hash = good.replace(&id, &id.to_uppercase());
        let e = refused(&edited(&old, 501, &bad_hash, true), &ob);
        assert!(e.contains("object id"), "{e}");
        let short = good.replace(&id, &id[1..]);
        refused(&edited(&old, 501, &short, true), &ob);
        // Bad names: traversal, separator, empty.
        for (name, shown) in [("..", r#"".."#), ("a/b", "a/b"), ("", r#""""#)] {
            let raw = good.replace("f0500x", name);
            let e = refused(&edited(&old, 0, &raw, true), &ob);
            assert!(e.contains(shown) || e.contains("sorted"), "{e}");
        }
        // Duplicate: a second f0500 next to the unchanged one.
        let dup = serde_json::to_string(&Entry {
            size: 9,
            ..file("f0500")
        })
        .unwrap();
        let e = refused(&edited(&old, 501, &dup, true), &ob);
        assert!(e.contains("sorted"), "{e}");
        // An exact copy of an unchanged entry, twice.
        let same = serde_json::to_string(&old.entries[500]).unwrap();
        refused(&edited(&old, 501, &same, true), &ob);
        // Unsorted: a new entry out of place.
        let e = refused(&edited(&old, 10, &good, true), &ob);
        assert!(e.contains("sorted"), "{e}");
        // Unsorted with every entry unchanged: two swapped.
        let mut swapped = old.clone();
        swapped.entries.swap(10, 11);
        let bytes = serde_json::to_vec(&swapped).unwrap();
        assert!(
            diff(&bytes, Some(&ob))
                .unwrap_err()
                .to_string()
                .contains("sorted")
        );
        // A chunked file where format 1 says none.
        let recipe = serde_json::to_string(&Entry {
            recipe: true,
            ..file("f0500x")
        })
        .unwrap();
        let e = refused(&edited(&old, 501, &recipe, true), &ob);
        assert!(e.contains("format"), "{e}");
        // A changed entry not in canonical form (field order, spacing).
        let spaced = good.replacen(r#""type":"file""#, r#""type": "file""#, 1);
        refused(&edited(&old, 501, &spaced, true), &ob);
        let reordered = good.replacen(r#","mode":420,"uid":0"#, r#","uid":0,"mode":420"#, 1);
        assert_ne!(reordered, good);
        refused(&edited(&old, 501, &reordered, true), &ob);
        // A symlink without a target.
        let link = serde_json::to_string(&Entry {
            kind: EntryKind::Symlink,
            ..file("f0500x")
        })
        .unwrap();
        refused(&edited(&old, 501, &link, true), &ob);
        // The good one passes.
        assert_eq!(
            diff(&edited(&old, 501, &good, true), Some(&ob))
                .unwrap()
                .changed
                .len(),
            1
        );
    }

    #[test]
    fn framing_must_be_canonical_even_when_every_entry_is_unchanged() {
        let old = big();
        let ob = old.encode();
        let text = String::from_utf8(ob.clone()).unwrap();
        for bad in [
            text.replacen(r#"},{"#, r#"}, {"#, 1),
            text.replacen(r#"{"format":1,"#, r#"{ "format":1,"#, 1),
            text.replacen(r#"]}"#, r#"] }"#, 1),
            format!("{text}\n"),
            text.replacen(
                r#"{"format":1,"entries":["#,
                r#"{"format":01,"entries":["#,
                1,
            ),
            text.replacen(r#"{"format":1,"#, r#"{"format":2,"#, 1),
            text.replacen(r#"{"format":1,"#, r#"{"format":3,"#, 1),
            text.replacen(r#"]}"#, r#"],"extra":1}"#, 1),
        ] {
            assert!(diff(bad.as_bytes(), Some(&ob)).is_err(), "{}", &bad[..40]);
            assert!(DirManifest::decode(bad.as_bytes()).is_err());
        }
        assert!(diff(&ob, Some(&ob)).unwrap().changed.is_empty());
        // Too large, even when it shares every byte but one with the parent.
        let mut huge = ob.clone();
        huge.splice(
            ob.len() - 2..ob.len() - 2,
            std::iter::repeat_n(b' ', MAX_MANIFEST_BYTES),
        );
        let e = diff(&huge, Some(&ob)).unwrap_err().to_string();
        assert!(e.contains("too large"), "{e}");
        let empty = DirManifest::default().encode();
        assert!(diff(&empty, Some(&ob)).unwrap().replaced.len() == 1000);
    }

    #[test]
    fn names_with_escapes_sort_by_their_bytes() {
        let m =
            DirManifest::new(vec![file("a\"b"), file("a\\b"), file("a\u{1}"), file("é")]).unwrap();
        let d = diff(&m.encode(), None).unwrap();
        assert_eq!(d.changed, m.entries);
        let old = m.clone();
        let mut new = m;
        new.upsert(file("a"));
        assert_eq!(
            diff(&new.encode(), Some(&old.encode()))
                .unwrap()
                .changed
                .len(),
            1
        );
    }

    /// What a check decided, comparably.
    fn outcome(r: Result<DirDiff, ProtoError>) -> Result<(Vec<Entry>, Vec<Entry>), ()> {
        r.map(|d| (d.changed, d.replaced)).map_err(|_| ())
    }

    #[test]
    fn trimming_the_common_prefix_and_suffix_decides_as_the_whole_check() {
        // Edits at the start, the middle and the end, inserts, removals,
        // bad entries, and manifests emptied or filled, each decided the
        // same with and without setting the common bytes aside.
        let base: Vec<Entry> = (0..50).map(|i| file(&format!("f{i:02}"))).collect();
        let old = DirManifest::new(base.clone()).unwrap();
        let ob = old.encode();
        let mut seed = 7u64;
        let mut next = |n: usize| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as usize % n
        };
        let mut trimmed = 0;
        for round in 0..400 {
            let mut raws: Vec<String> = base
                .iter()
                .map(|e| serde_json::to_string(e).unwrap())
                .collect();
            for _ in 0..1 + next(3) {
                let at = next(raws.len() + 1);
                let fresh = file(&format!("f{:02}{}", next(50), ["", "x", "\\"][next(3)]));
                let mut raw = serde_json::to_string(&fresh).unwrap();
                if next(10) == 0 {
                    raw = raw.replacen(r#""mode":420"#, r#""mode": 420"#, 1);
                }
                match next(3) {
                    0 if at < raws.len() => raws[at] = raw,
                    1 if at < raws.len() => {
                        raws.remove(at);
                    }
                    _ => raws.insert(at, raw),
                }
            }
            if round % 50 == 0 {
                raws.clear();
            }
            let new = format!(r#"{{"format":1,"entries":[{}]}}"#, raws.join(",")).into_bytes();
            let fast = Regions::trimmed(&new, &ob);
            trimmed += usize::from(fast.is_some());
            let fast = outcome(match fast {
                Some(r) => r.check(),
                None => Regions::whole(&new, Some(&ob)).and_then(Regions::check),
            });
            let slow = outcome(Regions::whole(&new, Some(&ob)).and_then(Regions::check));
            assert_eq!(
                fast,
                slow,
                "round {round}: {}",
                String::from_utf8_lossy(&new)
            );
            assert_eq!(
                fast.is_ok(),
                DirManifest::decode(&new).is_ok(),
                "round {round}"
            );
        }
        assert!(
            trimmed > 300,
            "the common bytes were set aside {trimmed} times"
        );
        // The old manifest emptied, and filled from empty.
        let empty = DirManifest::default().encode();
        for (new, old) in [(&ob, &empty), (&empty, &ob)] {
            let fast = outcome(Regions::trimmed(new, old).unwrap().check());
            assert_eq!(
                fast,
                outcome(Regions::whole(new, Some(old)).and_then(Regions::check))
            );
        }
    }

    #[test]
    fn unchanged_chunked_entries_keep_format_2() {
        let mut old = big();
        old.upsert(Entry {
            recipe: true,
            ..file("z")
        });
        assert_eq!(old.format, MANIFEST_FORMAT_RECIPES);
        let mut new = old.clone();
        new.upsert(file("f0001"));
        new.upsert(Entry {
            size: 3,
            ..file("f0002")
        });
        assert!(diff(&new.encode(), Some(&old.encode())).is_ok());
        // The same entries claiming format 1 are refused.
        let wrong =
            String::from_utf8(new.encode())
                .unwrap()
                .replacen(r#""format":2"#, r#""format":1"#, 1);
        assert!(diff(wrong.as_bytes(), Some(&old.encode())).is_err());
    }
}
