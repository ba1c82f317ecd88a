//! Content-defined chunking of large files (FastCDC 2020): a file above the
//! threshold is stored as chunks plus a [`Recipe`] listing them. Chunk
//! boundaries depend only on nearby content, so a small edit changes the
//! one or two chunks around it and every other chunk keeps its id: only
//! the changed chunks are new objects, and only they travel to readers.

use std::io::{self, Read};

use crate::recipe::Chunk;
use crate::{ObjectId, Recipe};
use fastcdc::v2020::StreamCDC;

/// Files larger than this are chunked by default (`elton import
/// --chunk-threshold`, and always for a slave's one-file HTTP upload); smaller files stay one object, exactly as before
/// chunking existed, so their trees keep their hashes.
pub const DEFAULT_THRESHOLD: u64 = 4 << 20;
/// FastCDC parameters: chunks of 256 KiB to 4 MiB, about 1 MiB on average.
/// Changing them changes the chunks (not the format) of newly written files.
pub const MIN_CHUNK: usize = 256 << 10;
pub const AVG_CHUNK: usize = 1 << 20;
pub const MAX_CHUNK: usize = 4 << 20;

/// Whether a file of `size` bytes is stored as a recipe.
pub fn is_chunked(size: u64, threshold: u64) -> bool {
    size > threshold
}

/// Splits `source` into chunks, handing each one (its offset in the file,
/// its id and its bytes) to `each` in order, and returns the recipe. A
/// source that turns out empty has no recipe (`InvalidData`): callers
/// chunk only files above the threshold.
pub fn chunk(
    source: impl Read,
    mut each: impl FnMut(u64, ObjectId, &[u8]) -> io::Result<()>,
) -> io::Result<Recipe> {
    let mut chunks = Vec::new();
    for c in StreamCDC::new(source, MIN_CHUNK, AVG_CHUNK, MAX_CHUNK) {
        let c = c.map_err(io::Error::from)?;
        let id = ObjectId::of(&c.data);
        each(c.offset, id, &c.data)?;
        chunks.push(Chunk {
            object: id,
            size: c.length as u64,
        });
    }
    Recipe::new(chunks).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    /// Deterministic pseudo-random bytes (xorshift), incompressible enough
    /// for content-defined boundaries to behave as on real data.
    fn noise(len: usize, mut seed: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            out.extend_from_slice(&seed.to_le_bytes());
        }
        out.truncate(len);
        out
    }

    fn recipe_of(data: &[u8]) -> Recipe {
        let mut seen = 0u64;
        let r = chunk(data, |offset, id, bytes| {
            assert_eq!(offset, seen, "chunks arrive in order");
            assert_eq!(id, ObjectId::of(bytes));
            seen += bytes.len() as u64;
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, data.len() as u64);
        r
    }

    #[test]
    fn chunks_respect_the_size_bounds_and_cover_the_file() {
        let data = noise(24 << 20, 7);
        let r = recipe_of(&data);
        assert_eq!(r.size, data.len() as u64);
        let (last, rest) = r.chunks.split_last().unwrap();
        for c in rest {
            assert!(c.size >= MIN_CHUNK as u64 && c.size <= MAX_CHUNK as u64);
        }
        assert!(last.size <= MAX_CHUNK as u64);
        // About 1 MiB on average: 24 MiB gives some 12 to 48 chunks.
        assert!((12..=48).contains(&r.chunks.len()), "{}", r.chunks.len());
        assert_eq!(recipe_of(&data), r, "same bytes, same recipe");
    }

    #[test]
    fn a_one_byte_edit_in_the_middle_changes_one_or_two_chunks() {
        let data = noise(32 << 20, 42);
        let before = recipe_of(&data);
        let mut edited = data.clone();
        edited[16 << 20] ^= 0xff;
        let after = recipe_of(&edited);
        assert_eq!(after.size, before.size);
        assert_ne!(after.id(), before.id());
        let old: HashSet<_> = before.chunks.iter().map(|c| c.object).collect();
        let new: Vec<_> = after
            .chunks
            .iter()
            .filter(|c| !old.contains(&c.object))
            .collect();
        assert!(
            (1..=2).contains(&new.len()),
            "{} new chunks of {}",
            new.len(),
            after.chunks.len()
        );
        let new_bytes: u64 = new.iter().map(|c| c.size).sum();
        assert!(new_bytes <= 2 * MAX_CHUNK as u64);
    }

    #[test]
    fn an_empty_source_has_no_recipe() {
        assert!(chunk(&b""[..], |_, _, _| Ok(())).is_err());
    }
}
