//! Paths inside a volume, validated so that they can never escape the tree.

use std::fmt;

use crate::ProtoError;
use crate::manifest::valid_entry_name;

/// A relative path of zero or more components; the empty path is the root.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct VolumePath(Vec<String>);

impl VolumePath {
    /// Accepts `a/b/c` (a single trailing `/` is allowed). Rejects absolute
    /// paths, `.`/`..` components, empty components and NUL bytes.
    pub fn parse(s: &str) -> Result<Self, ProtoError> {
        let err = |reason| ProtoError::Path {
            path: s.chars().take(200).collect(),
            reason,
        };
        if s.starts_with('/') {
            return Err(err("absolute paths are not allowed"));
        }
        let trimmed = s.strip_suffix('/').unwrap_or(s);
        if trimmed.is_empty() {
            return Ok(Self::default());
        }
        let mut parts = Vec::new();
        for c in trimmed.split('/') {
            match c {
                "" => return Err(err("empty path component")),
                "." | ".." => return Err(err("`.` and `..` are not allowed")),
                c if !valid_entry_name(c) => return Err(err("invalid path component")),
                c => parts.push(c.to_string()),
            }
        }
        Ok(Self(parts))
    }

    pub fn components(&self) -> &[String] {
        &self.0
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// Splits into parent components and the final name (None for root).
    pub fn split_last(&self) -> Option<(&[String], &str)> {
        self.0
            .split_last()
            .map(|(last, parent)| (parent, last.as_str()))
    }
}

impl fmt::Display for VolumePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join("/"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_escapes() {
        for bad in ["/etc/passwd", "../x", "a/../b", "a//b", "./a", "a/\0"] {
            assert!(VolumePath::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(VolumePath::parse("a/b/").unwrap().components(), ["a", "b"]);
        assert!(VolumePath::parse("").unwrap().is_root());
    }
}
