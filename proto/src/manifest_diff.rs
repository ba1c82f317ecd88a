//! Checking a directory's new manifest against the same directory's
//! manifest in the parent version, decoding only the entries that differ.
//!
//! A commit that changes one file in a directory of 1,000 entries writes a
//! new manifest of 1,000 entries; decoding both manifests whole on every
//! commit made a small commit cost O(size of the changed directories).
//! Here both are split into their entries' raw bytes (a syntax scan, no
//! strings or ids built), and an entry whose bytes appear unchanged among
//! the parent's entries is not decoded: it was checked, byte for byte, when
//! the parent was published. What is still checked over the whole new
//! manifest is what makes it canonical as a whole (`docs/formats.md` §2):
//! the exact framing, the order of the names, the format number.

use std::borrow::Cow;
use std::collections::HashSet;

use serde::Deserialize;
use serde_json::value::RawValue;

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
    let new = Split::parse(new)?;
    let old = old.and_then(|o| Split::parse(o).ok());
    let old_raw: HashSet<&str> = old
        .iter()
        .flat_map(|o| o.entries.iter().map(|e| e.raw))
        .collect();

    let mut changed = Vec::new();
    let mut new_raw = HashSet::with_capacity(new.entries.len());
    for pair in new.entries.windows(2) {
        if pair[0].name.as_bytes() >= pair[1].name.as_bytes() {
            return Err(ProtoError::Manifest(format!(
                "entries not strictly sorted at {:?}",
                pair[1].name
            )));
        }
    }
    // An unchanged entry's recipe flag matters only for the format check;
    // a format-1 parent had none.
    let old_had_recipes = old
        .as_ref()
        .is_some_and(|o| o.format == MANIFEST_FORMAT_RECIPES);
    let mut has_recipe = false;
    for e in &new.entries {
        new_raw.insert(e.raw);
        if old_raw.contains(e.raw) {
            has_recipe = has_recipe || (old_had_recipes && e.raw.contains(RECIPE_FIELD));
            continue;
        }
        let entry = decode_entry(e.raw)?;
        has_recipe |= entry.recipe;
        changed.push(entry);
    }

    if new.format != MANIFEST_FORMAT && new.format != MANIFEST_FORMAT_RECIPES {
        return Err(ProtoError::Manifest(format!(
            "unsupported format {} (this build reads {MANIFEST_FORMAT} and {MANIFEST_FORMAT_RECIPES})",
            new.format
        )));
    }
    let required = if has_recipe {
        MANIFEST_FORMAT_RECIPES
    } else {
        MANIFEST_FORMAT
    };
    if new.format != required {
        return Err(ProtoError::Manifest(format!(
            "format {} must be {required} (format {MANIFEST_FORMAT_RECIPES} exactly when an entry has a recipe)",
            new.format
        )));
    }

    let replaced = old
        .iter()
        .flat_map(|o| o.entries.iter())
        .filter(|e| !new_raw.contains(e.raw))
        .filter_map(|e| serde_json::from_str::<Entry>(e.raw).ok())
        .collect();
    Ok(DirDiff { changed, replaced })
}

/// How a chunked file's entry says so in canonical form. Inside a JSON
/// string every `"` is escaped, so these bytes occur only as the field.
const RECIPE_FIELD: &str = r#","recipe":true"#;

/// One entry, decoded and checked: valid in itself and in canonical form.
fn decode_entry(raw: &str) -> Result<Entry, ProtoError> {
    let entry: Entry =
        serde_json::from_str(raw).map_err(|e| ProtoError::Manifest(e.to_string()))?;
    entry.validate()?;
    // Serializing a plain struct of strings and integers cannot fail.
    if serde_json::to_string(&entry).unwrap_or_default() != raw {
        return Err(ProtoError::Manifest(format!(
            "entry {:?} not in canonical form",
            entry.name
        )));
    }
    Ok(entry)
}

/// A manifest whose framing is canonical, split into its entries' raw
/// bytes; the entries themselves are not checked.
struct Split<'a> {
    format: u32,
    entries: Vec<RawEntry<'a>>,
}

struct RawEntry<'a> {
    name: Cow<'a, str>,
    raw: &'a str,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Frame<'a> {
    format: u32,
    #[serde(borrow)]
    entries: Vec<&'a RawValue>,
}

impl<'a> Split<'a> {
    fn parse(bytes: &'a [u8]) -> Result<Self, ProtoError> {
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(ProtoError::Manifest(format!(
                "{} bytes is too large",
                bytes.len()
            )));
        }
        let text = std::str::from_utf8(bytes).map_err(|e| ProtoError::Manifest(e.to_string()))?;
        let frame: Frame<'a> =
            serde_json::from_str(text).map_err(|e| ProtoError::Manifest(e.to_string()))?;
        let not_canonical = || ProtoError::Manifest("not in canonical form".into());
        // The bytes must be exactly what the encoder writes around the
        // entries: no whitespace, fields in order, entries one `,` apart.
        let prefix = format!(r#"{{"format":{},"entries":["#, frame.format);
        if !text.starts_with(&prefix) || !text.ends_with("]}") {
            return Err(not_canonical());
        }
        let base = text.as_ptr() as usize;
        let mut at = prefix.len();
        let mut entries = Vec::with_capacity(frame.entries.len());
        for (i, value) in frame.entries.iter().enumerate() {
            let raw = value.get();
            let start = raw.as_ptr() as usize - base;
            let expected = if i == 0 { at } else { at + 1 };
            if start != expected || (i > 0 && text.as_bytes()[at] != b',') {
                return Err(not_canonical());
            }
            at = start + raw.len();
            entries.push(RawEntry {
                name: entry_name(raw).ok_or_else(not_canonical)?,
                raw,
            });
        }
        if at + 2 != text.len() {
            return Err(not_canonical());
        }
        Ok(Self {
            format: frame.format,
            entries,
        })
    }
}

/// The name of an entry in canonical form (its first field), decoded;
/// `None` if the entry does not start with it.
fn entry_name(raw: &str) -> Option<Cow<'_, str>> {
    let quoted = raw.strip_prefix(r#"{"name":"#)?;
    let body = quoted.strip_prefix('"')?;
    match body.find(['"', '\\']) {
        Some(end) if body.as_bytes()[end] == b'"' => Some(Cow::Borrowed(&body[..end])),
        // Escapes: let the JSON parser read the one string.
        _ => {
            let mut de = serde_json::Deserializer::from_str(quoted);
            String::deserialize(&mut de).ok().map(Cow::Owned)
        }
    }
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
