//! Directory manifests: one JSON object per directory, stored as an object.
//!
//! The encoding is canonical (fields in a fixed order, entries sorted by name
//! bytes, no insignificant whitespace), so the same directory always has the
//! same bytes and therefore the same [`ObjectId`]. Decoding rejects anything
//! that is not exactly the canonical form, which keeps that property true for
//! manifests written by other tools too.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{ObjectId, ProtoError};

/// Manifest format of a directory without chunked files; see
/// `docs/formats.md`. Trees written before chunking keep their bytes.
pub const MANIFEST_FORMAT: u32 = 1;
/// Manifest format of a directory holding at least one chunked file
/// (`"recipe":true`): a reader that does not know recipes must refuse it
/// rather than serve a recipe's bytes as the file's content.
pub const MANIFEST_FORMAT_RECIPES: u32 = 2;

/// Largest manifest accepted from disk or network (about 100,000 entries).
pub const MAX_MANIFEST_BYTES: usize = 64 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: EntryKind,
    /// Permission bits only (`0o7777`); the type lives in `type`.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Bytes for files, target length for symlinks, entry count for dirs.
    pub size: u64,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime: i64,
    /// File content (files) or child manifest (dirs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<ObjectId>,
    /// Files only: `object` is a [`crate::Recipe`] listing the content's
    /// chunks, not the content itself. Written only when true.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub recipe: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Extended attributes, values hex-encoded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xattrs: Option<BTreeMap<String, String>>,
}

impl Entry {
    /// A file entry owned by root, mode 0644, mtime 0; other fields are set
    /// with struct update syntax where they matter.
    pub fn file(name: &str, object: ObjectId, size: u64) -> Self {
        Self {
            name: name.into(),
            kind: EntryKind::File,
            mode: 0o644,
            uid: 0,
            gid: 0,
            size,
            mtime: 0,
            object: Some(object),
            recipe: false,
            target: None,
            xattrs: None,
        }
    }

    /// A directory entry as [`Entry::file`] makes files, mode 0755.
    pub fn dir(name: &str, object: ObjectId, entries: u64) -> Self {
        Self {
            kind: EntryKind::Dir,
            mode: 0o755,
            ..Self::file(name, object, entries)
        }
    }

    pub(crate) fn validate(&self) -> Result<(), ProtoError> {
        let bad = |why: String| Err(ProtoError::Manifest(why));
        if !valid_entry_name(&self.name) {
            return bad(format!("invalid entry name {:?}", self.name));
        }
        if self.mode & !0o7777 != 0 {
            return bad(format!(
                "{:?}: mode {:o} has bits beyond 7777",
                self.name, self.mode
            ));
        }
        match (self.kind, &self.object, &self.target) {
            (EntryKind::File | EntryKind::Dir, Some(_), None) => {}
            (EntryKind::Symlink, None, Some(t)) if !t.is_empty() && !t.contains('\0') => {}
            _ => {
                return bad(format!(
                    "{:?}: a {:?} needs {}",
                    self.name,
                    self.kind,
                    if self.kind == EntryKind::Symlink {
                        "a non-empty `target` and no `object`"
                    } else {
                        "an `object` and no `target`"
                    }
                ));
            }
        }
        if self.recipe && self.kind != EntryKind::File {
            return bad(format!("{:?}: only a file can have a `recipe`", self.name));
        }
        if let Some(x) = &self.xattrs {
            // One form per tree: no empty map, lowercase hex only.
            if x.is_empty() {
                return bad(format!("{:?}: empty `xattrs` must be omitted", self.name));
            }
            for (k, v) in x {
                let lower_hex = v.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
                if k.is_empty() || k.contains('\0') || !lower_hex || hex::decode(v).is_err() {
                    return bad(format!("{:?}: invalid xattr {k:?}", self.name));
                }
            }
        }
        Ok(())
    }
}

/// A directory entry name: one path component, never `.`/`..`.
pub fn valid_entry_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name.len() <= 255
        && !name.contains(['/', '\0'])
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirManifest {
    pub format: u32,
    pub entries: Vec<Entry>,
}

impl Default for DirManifest {
    fn default() -> Self {
        Self {
            format: MANIFEST_FORMAT,
            entries: Vec::new(),
        }
    }
}

impl DirManifest {
    /// Builds a manifest from entries in any order; rejects duplicates and
    /// invalid entries.
    pub fn new(mut entries: Vec<Entry>) -> Result<Self, ProtoError> {
        entries.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
        let mut m = Self {
            format: MANIFEST_FORMAT,
            entries,
        };
        m.format = m.required_format();
        m.validate()?;
        Ok(m)
    }

    /// The format this manifest's content calls for: recipes need 2, so
    /// that older readers refuse them; everything else stays 1.
    fn required_format(&self) -> u32 {
        if self.entries.iter().any(|e| e.recipe) {
            MANIFEST_FORMAT_RECIPES
        } else {
            MANIFEST_FORMAT
        }
    }

    pub(crate) fn validate(&self) -> Result<(), ProtoError> {
        if self.format != MANIFEST_FORMAT && self.format != MANIFEST_FORMAT_RECIPES {
            return Err(ProtoError::Manifest(format!(
                "unsupported format {} (this build reads {MANIFEST_FORMAT} and {MANIFEST_FORMAT_RECIPES})",
                self.format
            )));
        }
        if self.format != self.required_format() {
            return Err(ProtoError::Manifest(format!(
                "format {} must be {} (format {MANIFEST_FORMAT_RECIPES} exactly when an entry has a recipe)",
                self.format,
                self.required_format()
            )));
        }
        for pair in self.entries.windows(2) {
            if pair[0].name.as_bytes() >= pair[1].name.as_bytes() {
                return Err(ProtoError::Manifest(format!(
                    "entries not strictly sorted at {:?}",
                    pair[1].name
                )));
            }
        }
        self.entries.iter().try_for_each(Entry::validate)
    }

    /// The canonical bytes; hash them for the manifest's [`ObjectId`].
    /// The format written is the one the entries call for, whatever
    /// `format` says, so an edited manifest never carries a stale one.
    pub fn encode(&self) -> Vec<u8> {
        let required = self.required_format();
        // Serializing plain structs, strings and integers cannot fail.
        if self.format == required {
            serde_json::to_vec(self).unwrap_or_default()
        } else {
            serde_json::to_vec(&Self {
                format: required,
                entries: self.entries.clone(),
            })
            .unwrap_or_default()
        }
    }

    pub fn id(&self) -> ObjectId {
        ObjectId::of(&self.encode())
    }

    /// Parses and validates; the input must be exactly the canonical form.
    pub fn decode(bytes: &[u8]) -> Result<Self, ProtoError> {
        let m = Self::decode_published(bytes)?;
        if m.encode() != bytes {
            return Err(ProtoError::Manifest("not in canonical form".into()));
        }
        Ok(m)
    }

    /// Parses bytes already verified against the id of a manifest in a
    /// published version (a reader's lower tree). The master checked their
    /// canonical form before it published them, and the id pins the bytes,
    /// so only the checks that protect the reader run again (entry names,
    /// order, format); re-encoding to compare, a third of the cost of
    /// [`Self::decode`], is skipped. Never use it on bytes about to be
    /// published.
    pub fn decode_published(bytes: &[u8]) -> Result<Self, ProtoError> {
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(ProtoError::Manifest(format!(
                "{} bytes is too large",
                bytes.len()
            )));
        }
        let m: DirManifest =
            serde_json::from_slice(bytes).map_err(|e| ProtoError::Manifest(e.to_string()))?;
        m.validate()?;
        Ok(m)
    }

    pub fn get(&self, name: &str) -> Option<&Entry> {
        self.entries
            .binary_search_by(|e| e.name.as_bytes().cmp(name.as_bytes()))
            .ok()
            .map(|i| &self.entries[i])
    }

    /// Inserts or replaces the entry with the same name, keeping order.
    pub fn upsert(&mut self, entry: Entry) {
        match self
            .entries
            .binary_search_by(|e| e.name.as_bytes().cmp(entry.name.as_bytes()))
        {
            Ok(i) => self.entries[i] = entry,
            Err(i) => self.entries.insert(i, entry),
        }
        self.format = self.required_format();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, content: &[u8]) -> Entry {
        Entry {
            mtime: 1_700_000_000_000_000_000,
            ..Entry::file(name, ObjectId::of(content), content.len() as u64)
        }
    }

    #[test]
    fn recipes_need_format_2_and_plain_trees_keep_format_1() {
        let plain = DirManifest::new(vec![file("a", b"1")]).unwrap();
        assert!(plain.encode().starts_with(br#"{"format":1,"#));
        let mut big = file("big", b"recipe bytes");
        big.recipe = true;
        let mut m = DirManifest::new(vec![file("a", b"1"), big.clone()]).unwrap();
        let bytes = m.encode();
        assert!(bytes.starts_with(br#"{"format":2,"#));
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.contains(r#""object":""#) && text.contains(r#"","recipe":true}"#));
        assert_eq!(DirManifest::decode(&bytes).unwrap(), m);
        // The same entries under the wrong format, or `"recipe":false`, are refused.
        let wrong = text.replacen(r#""format":2"#, r#""format":1"#, 1);
        assert!(DirManifest::decode(wrong.as_bytes()).is_err());
        let explicit_false = String::from_utf8(plain.encode())
            .unwrap()
            .replace("}]}", r#","recipe":false}]}"#);
        assert!(DirManifest::decode(explicit_false.as_bytes()).is_err());
        let two_plain = br#"{"format":2,"entries":[]}"#;
        assert!(DirManifest::decode(two_plain).is_err());
        // Replacing the chunked file by a plain one goes back to format 1.
        m.upsert(file("big", b"small now"));
        assert!(m.encode().starts_with(br#"{"format":1,"#));
        assert!(DirManifest::decode(&m.encode()).is_ok());
        let mut dir = big;
        dir.kind = EntryKind::Dir;
        assert!(DirManifest::new(vec![dir]).is_err(), "recipe on a dir");
    }

    #[test]
    fn same_tree_same_bytes_whatever_the_insertion_order() {
        let a = DirManifest::new(vec![file("b", b"2"), file("a", b"1")]).unwrap();
        let b = DirManifest::new(vec![file("a", b"1"), file("b", b"2")]).unwrap();
        assert_eq!(a.encode(), b.encode());
        assert_eq!(DirManifest::decode(&a.encode()).unwrap(), a);
    }

    #[test]
    fn a_published_manifest_skips_only_the_canonical_comparison() {
        let m = DirManifest::new(vec![file("a", b"1"), file("b", b"2")]).unwrap();
        assert_eq!(DirManifest::decode_published(&m.encode()).unwrap(), m);
        // Layout is what the id pins; a reader need not check it again.
        let pretty = serde_json::to_vec_pretty(&m).unwrap();
        assert_eq!(DirManifest::decode_published(&pretty).unwrap(), m);
        // What protects the reader is still checked.
        let text = String::from_utf8(m.encode()).unwrap();
        for bad in [
            text.replacen(r#""name":"a""#, r#""name":"..""#, 1),
            text.replacen(r#""name":"a""#, r#""name":"x/y""#, 1),
            text.replacen(r#""name":"a""#, r#""name":"c""#, 1),
            text.replacen(r#""name":"a""#, r#""name":"b""#, 1),
            text.replacen(r#""format":1"#, r#""format":9"#, 1),
        ] {
            assert!(
                DirManifest::decode_published(bad.as_bytes()).is_err(),
                "{bad}"
            );
        }
        let huge = vec![b' '; MAX_MANIFEST_BYTES + 1];
        assert!(DirManifest::decode_published(&huge).is_err());
    }

    #[test]
    fn rejects_non_canonical_and_malformed_input() {
        let m = DirManifest::new(vec![file("a", b"1")]).unwrap();
        let pretty = serde_json::to_vec_pretty(&m).unwrap();
        assert!(DirManifest::decode(&pretty).is_err());
        assert!(DirManifest::decode(b"{not json").is_err());
        assert!(DirManifest::decode(br#"{"format":2,"entries":[]}"#).is_err());
        assert!(DirManifest::new(vec![file("..", b"x")]).is_err());
        assert!(DirManifest::new(vec![file("a/b", b"x")]).is_err());
        assert!(DirManifest::new(vec![file("a", b"1"), file("a", b"2")]).is_err());
        let mut x = file("x", b"1");
        x.xattrs = Some(BTreeMap::new());
        assert!(DirManifest::new(vec![x.clone()]).is_err(), "empty xattrs");
        x.xattrs = Some([("user.a".to_string(), "AB".to_string())].into());
        assert!(DirManifest::new(vec![x.clone()]).is_err(), "uppercase hex");
        x.xattrs = Some([("user.a".to_string(), "ab".to_string())].into());
        assert!(DirManifest::new(vec![x]).is_ok());
        let mut link = file("l", b"");
        link.kind = EntryKind::Symlink;
        assert!(
            DirManifest::new(vec![link]).is_err(),
            "symlink without target"
        );
    }

    #[test]
    fn upsert_keeps_order() {
        let mut m = DirManifest::new(vec![file("a", b"1"), file("c", b"3")]).unwrap();
        m.upsert(file("b", b"2"));
        m.upsert(file("a", b"x"));
        let names: Vec<_> = m.entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert_eq!(m.get("a").unwrap().object, Some(ObjectId::of(b"x")));
        assert!(DirManifest::decode(&m.encode()).is_ok());
    }
}
