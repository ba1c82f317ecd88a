//! File recipes: the content of a large file as an ordered list of chunks.
//!
//! A manifest entry with `"recipe":true` names a recipe object instead of
//! the file's bytes; the bytes are the concatenation of the chunks, each an
//! ordinary content-addressed object. A small edit of a large file changes
//! one or two chunks (content-defined boundaries), so only those are new.
//!
//! The encoding is canonical like a manifest's, so one chunk list has one
//! recipe id. Decoding refuses anything whose sizes do not add up: a reader
//! never serves a short or padded file because of a bad recipe.

use serde::{Deserialize, Serialize};

use crate::{ObjectId, ProtoError};

/// Current recipe format; see `docs/formats.md`.
pub const RECIPE_FORMAT: u32 = 1;
/// Largest recipe accepted (about 700,000 chunks: files of several TiB).
pub const MAX_RECIPE_BYTES: usize = 64 << 20;
/// Largest chunk a recipe may name. Readers hold at most one chunk's worth
/// of a file per request, so this bounds their memory whoever wrote it.
pub const MAX_CHUNK_BYTES: u64 = 16 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Chunk {
    pub object: ObjectId,
    pub size: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    pub format: u32,
    /// Total content length: the sum of the chunk sizes.
    pub size: u64,
    pub chunks: Vec<Chunk>,
}

/// One chunk's share of a byte range of the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    /// Index into [`Recipe::chunks`].
    pub index: usize,
    pub chunk: Chunk,
    /// Where the range starts inside the chunk.
    pub start: u64,
    pub len: u64,
}

fn bad(why: String) -> ProtoError {
    ProtoError::Recipe(why)
}

impl Recipe {
    /// Builds a recipe from chunks in file order.
    pub fn new(chunks: Vec<Chunk>) -> Result<Self, ProtoError> {
        let r = Self {
            format: RECIPE_FORMAT,
            size: chunks.iter().map(|c| c.size).sum(),
            chunks,
        };
        r.validate()?;
        Ok(r)
    }

    fn validate(&self) -> Result<(), ProtoError> {
        if self.format != RECIPE_FORMAT {
            return Err(bad(format!(
                "unsupported format {} (this build reads {RECIPE_FORMAT})",
                self.format
            )));
        }
        if self.chunks.is_empty() {
            return Err(bad("no chunks".into()));
        }
        let mut total = 0u64;
        for (i, c) in self.chunks.iter().enumerate() {
            if c.size == 0 || c.size > MAX_CHUNK_BYTES {
                return Err(bad(format!(
                    "chunk {i} has size {} (must be 1..={MAX_CHUNK_BYTES})",
                    c.size
                )));
            }
            total = total
                .checked_add(c.size)
                .ok_or_else(|| bad("chunk sizes overflow".into()))?;
        }
        if total != self.size {
            return Err(bad(format!(
                "chunk sizes add up to {total}, not the recorded size {}",
                self.size
            )));
        }
        Ok(())
    }

    /// The canonical bytes; hash them for the recipe's [`ObjectId`].
    pub fn encode(&self) -> Vec<u8> {
        // Serializing plain structs, strings and integers cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn id(&self) -> ObjectId {
        ObjectId::of(&self.encode())
    }

    /// Parses and validates; the input must be exactly the canonical form.
    pub fn decode(bytes: &[u8]) -> Result<Self, ProtoError> {
        if bytes.len() > MAX_RECIPE_BYTES {
            return Err(bad(format!("{} bytes is too large", bytes.len())));
        }
        let r: Recipe = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        r.validate()?;
        if r.encode() != bytes {
            return Err(bad("not in canonical form".into()));
        }
        Ok(r)
    }

    /// The chunks that hold bytes `start .. start + len` of the file, in
    /// order, each with the part of it the range covers. The range is
    /// clipped to the file; an empty or out-of-file range touches nothing.
    /// Builds a [`ChunkIndex`] each time: a reader with many ranges of one
    /// recipe keeps one and calls [`Recipe::pieces_in`].
    pub fn pieces(&self, start: u64, len: u64) -> Vec<Piece> {
        let index = ChunkIndex::new(self);
        // Fits by construction, so this does not come back here.
        self.pieces_in(&index, start, len)
    }

    /// As [`Recipe::pieces`], finding the first chunk by binary search in
    /// `index`, built from this recipe (an index that does not fit is
    /// replaced by a fresh one, never trusted).
    pub fn pieces_in(&self, index: &ChunkIndex, start: u64, len: u64) -> Vec<Piece> {
        if index.starts.len() != self.chunks.len() {
            return self.pieces(start, len);
        }
        let end = start.saturating_add(len).min(self.size);
        let mut out = Vec::new();
        if start >= end {
            return out;
        }
        // starts[0] is 0 <= start, so at least one start is <= start.
        let first = index.starts.partition_point(|&s| s <= start) - 1;
        for (index, (chunk, &offset)) in self
            .chunks
            .iter()
            .zip(&index.starts)
            .enumerate()
            .skip(first)
        {
            if offset >= end {
                break;
            }
            let from = start.max(offset) - offset;
            let to = end.min(offset + chunk.size) - offset;
            out.push(Piece {
                index,
                chunk: *chunk,
                start: from,
                len: to - from,
            });
        }
        out
    }
}

/// Where each chunk of a recipe starts in the file, for finding the chunks
/// of a byte range by binary search instead of a walk from the first chunk
/// (a reader of a large file asks once per read).
#[derive(Clone, Debug, Default)]
pub struct ChunkIndex {
    starts: Vec<u64>,
}

impl ChunkIndex {
    pub fn new(recipe: &Recipe) -> Self {
        let mut offset = 0u64;
        let starts = recipe
            .chunks
            .iter()
            .map(|c| {
                let at = offset;
                // A validated recipe's sizes add up without overflow.
                offset = offset.saturating_add(c.size);
                at
            })
            .collect();
        Self { starts }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(content: &[u8]) -> Chunk {
        Chunk {
            object: ObjectId::of(content),
            size: content.len() as u64,
        }
    }

    #[test]
    fn encodes_canonically_and_round_trips() {
        let r = Recipe::new(vec![chunk(b"abc"), chunk(b"de")]).unwrap();
        assert_eq!(r.size, 5);
        let bytes = r.encode();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.starts_with(r#"{"format":1,"size":5,"chunks":[{"object":""#));
        assert!(text.ends_with(r#"","size":2}]}"#));
        assert_eq!(Recipe::decode(&bytes).unwrap(), r);
        assert_eq!(Recipe::decode(&bytes).unwrap().id(), ObjectId::of(&bytes));
    }

    #[test]
    fn rejects_malformed_recipes() {
        let good = Recipe::new(vec![chunk(b"abc"), chunk(b"de")]).unwrap();
        let text = String::from_utf8(good.encode()).unwrap();
        let cases = [
            // sizes that do not add up, both ways
            text.replacen(r#""size":5"#, r#""size":6"#, 1),
            text.replacen(r#""size":5"#, r#""size":4"#, 1),
            // an empty chunk, an unknown format, no chunks, extra fields
            text.replace(r#""size":2}"#, r#""size":0}"#)
                .replacen(r#""size":5"#, r#""size":3"#, 1),
            text.replacen(r#""format":1"#, r#""format":2"#, 1),
            r#"{"format":1,"size":0,"chunks":[]}"#.to_string(),
            text.replacen(r#"{"format":1,"#, r#"{"format":1,"x":1,"#, 1),
            // not canonical: whitespace, reordered keys
            text.replacen(r#""size":5,"#, r#""size": 5,"#, 1),
            text.replacen(r#"{"format":1,"size":5,"#, r#"{"size":5,"format":1,"#, 1),
            "not json".to_string(),
        ];
        for c in &cases {
            assert!(Recipe::decode(c.as_bytes()).is_err(), "accepted {c}");
        }
        let too_big = Chunk {
            object: ObjectId::of(b"x"),
            size: MAX_CHUNK_BYTES + 1,
        };
        assert!(Recipe::new(vec![too_big]).is_err());
        let overflow = Chunk {
            object: ObjectId::of(b"x"),
            size: MAX_CHUNK_BYTES,
        };
        let mut huge = Recipe::new(vec![overflow]).unwrap();
        huge.size = u64::MAX;
        assert!(Recipe::decode(&huge.encode()).is_err());
    }

    #[test]
    fn pieces_cover_exactly_the_range() {
        let r = Recipe::new(vec![chunk(b"0123"), chunk(b"45"), chunk(b"6789")]).unwrap();
        let spans = |s, l| {
            r.pieces(s, l)
                .iter()
                .map(|p| (p.index, p.start, p.len))
                .collect::<Vec<_>>()
        };
        assert_eq!(spans(0, 10), [(0, 0, 4), (1, 0, 2), (2, 0, 4)]);
        assert_eq!(spans(3, 2), [(0, 3, 1), (1, 0, 1)]);
        assert_eq!(spans(4, 2), [(1, 0, 2)]);
        assert_eq!(spans(5, 100), [(1, 1, 1), (2, 0, 4)]);
        assert_eq!(spans(9, 1), [(2, 3, 1)]);
        assert!(spans(10, 1).is_empty());
        assert!(spans(2, 0).is_empty());
    }

    #[test]
    fn an_index_finds_the_same_pieces_as_a_walk() {
        let chunks: Vec<Chunk> = (1..=40u64)
            .map(|i| Chunk {
                object: ObjectId::of(&i.to_le_bytes()),
                size: i * 7 % 13 + 1,
            })
            .collect();
        let r = Recipe::new(chunks).unwrap();
        let index = ChunkIndex::new(&r);
        // The walk, written out: every byte's chunk and offset in it.
        let mut owner = Vec::new();
        for (i, c) in r.chunks.iter().enumerate() {
            owner.extend((0..c.size).map(|o| (i, o)));
        }
        for start in 0..=r.size + 1 {
            for len in [0, 1, 5, 13, 40, r.size] {
                let got = r.pieces_in(&index, start, len);
                let bytes: Vec<(usize, u64)> = got
                    .iter()
                    .flat_map(|p| (p.start..p.start + p.len).map(move |o| (p.index, o)))
                    .collect();
                let end = (start + len).min(r.size) as usize;
                let want = owner.get(start as usize..end).unwrap_or(&[]);
                assert_eq!(bytes, want, "range {start}+{len}");
                assert_eq!(got, r.pieces(start, len));
            }
        }
        // An index that does not fit is not trusted.
        let other = Recipe::new(vec![chunk(b"x")]).unwrap();
        assert_eq!(r.pieces_in(&ChunkIndex::new(&other), 3, 9), r.pieces(3, 9));
    }
}
