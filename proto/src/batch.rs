//! The body of a batch upload (`POST /v1/objects`, see `docs/formats.md`):
//! objects one after another, each a 40-byte header (the 32-byte object id,
//! then its length as a big-endian u64) followed by exactly that many bytes.
//!
//! One request carries thousands of small objects, so the slave pays for one
//! request, one syncfs and one announcement to the master per batch instead
//! of per object. [`Decoder`] is the pure, incremental parser the slave runs
//! over the body as it arrives; it never buffers an object's bytes.
//!
//! Before uploading, a client asks which objects the slave lacks
//! (`POST /v1/objects/missing`): both bodies of that call are id lists,
//! raw 32-byte ids one after another ([`encode_ids`], [`decode_ids`]).

use crate::ObjectId;

/// Bytes of a frame header: the id, then the length.
pub const HEADER_LEN: usize = 32 + 8;

/// The header that starts the frame of an object of `len` bytes.
pub fn header(id: &ObjectId, len: u64) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..32].copy_from_slice(id.as_bytes());
    h[32..].copy_from_slice(&len.to_be_bytes());
    h
}

/// What the decoder found in the bytes it was given, in order.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A new object starts; `len` bytes of data follow.
    Begin { id: ObjectId, len: u64 },
    /// Some of the current object's bytes.
    Data(&'a [u8]),
    /// The current object's bytes are complete.
    End,
}

/// Why a body is not a well-formed batch.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("object {id} of the batch declares {len} bytes, over the limit of {limit}")]
    TooLarge { id: ObjectId, len: u64, limit: u64 },
    #[error("the batch ends inside {0}")]
    Truncated(&'static str),
    #[error("an id list of {0} bytes is not a whole number of 32-byte ids")]
    Ragged(usize),
    #[error("an id list of {count} ids is over the limit of {limit}")]
    TooManyIds { count: usize, limit: usize },
}

/// The most ids one `POST /v1/objects/missing` may ask about (2 MiB).
pub const MAX_IDS: usize = 65_536;

/// An id list body: the raw ids, one after another.
pub fn encode_ids(ids: &[ObjectId]) -> Vec<u8> {
    let mut out = Vec::with_capacity(ids.len() * 32);
    for id in ids {
        out.extend_from_slice(id.as_bytes());
    }
    out
}

/// Parses an id list body of at most `limit` ids.
pub fn decode_ids(body: &[u8], limit: usize) -> Result<Vec<ObjectId>, BatchError> {
    if !body.len().is_multiple_of(32) {
        return Err(BatchError::Ragged(body.len()));
    }
    let count = body.len() / 32;
    if count > limit {
        return Err(BatchError::TooManyIds { count, limit });
    }
    Ok(body
        .chunks_exact(32)
        .map(|raw| {
            let mut id = [0u8; 32];
            id.copy_from_slice(raw);
            ObjectId::from_raw(id)
        })
        .collect())
}

/// Incremental parser of a batch body. Feed it the body's chunks in order
/// with [`Decoder::feed`], then call [`Decoder::finish`].
#[derive(Debug)]
pub struct Decoder {
    limit: u64,
    header: Vec<u8>,
    /// Bytes of the current object still to come; `None` between objects.
    remaining: Option<u64>,
}

impl Decoder {
    /// A decoder refusing any object over `limit` bytes.
    pub fn new(limit: u64) -> Self {
        Self {
            limit,
            header: Vec::with_capacity(HEADER_LEN),
            remaining: None,
        }
    }

    /// Parses `chunk`, calling `on` for each event; stops at the first
    /// error of the body or of `on`.
    pub fn feed<E: From<BatchError>>(
        &mut self,
        mut chunk: &[u8],
        on: &mut dyn FnMut(Event<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        while !chunk.is_empty() {
            match self.remaining {
                None => {
                    let take = (HEADER_LEN - self.header.len()).min(chunk.len());
                    self.header.extend_from_slice(&chunk[..take]);
                    chunk = &chunk[take..];
                    if self.header.len() < HEADER_LEN {
                        return Ok(());
                    }
                    let mut raw_id = [0u8; 32];
                    raw_id.copy_from_slice(&self.header[..32]);
                    let mut raw_len = [0u8; 8];
                    raw_len.copy_from_slice(&self.header[32..]);
                    self.header.clear();
                    let id = ObjectId::from_raw(raw_id);
                    let len = u64::from_be_bytes(raw_len);
                    if len > self.limit {
                        return Err(BatchError::TooLarge {
                            id,
                            len,
                            limit: self.limit,
                        }
                        .into());
                    }
                    on(Event::Begin { id, len })?;
                    self.remaining = Some(len);
                    if len == 0 {
                        self.remaining = None;
                        on(Event::End)?;
                    }
                }
                Some(left) => {
                    let take = left.min(chunk.len() as u64) as usize;
                    on(Event::Data(&chunk[..take]))?;
                    chunk = &chunk[take..];
                    let left = left - take as u64;
                    if left == 0 {
                        self.remaining = None;
                        on(Event::End)?;
                    } else {
                        self.remaining = Some(left);
                    }
                }
            }
        }
        Ok(())
    }

    /// Checks that the body ended between objects.
    pub fn finish(&self) -> Result<(), BatchError> {
        if self.remaining.is_some() {
            return Err(BatchError::Truncated("an object's bytes"));
        }
        if !self.header.is_empty() {
            return Err(BatchError::Truncated("a frame header"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    enum Seen {
        Begin(ObjectId, u64),
        Data(Vec<u8>),
        End,
    }

    fn decode(body: &[u8], split: usize, limit: u64) -> Result<Vec<Seen>, BatchError> {
        let mut d = Decoder::new(limit);
        let mut seen = Vec::new();
        for piece in body.chunks(split.max(1)) {
            d.feed::<BatchError>(piece, &mut |e| {
                seen.push(match e {
                    Event::Begin { id, len } => Seen::Begin(id, len),
                    Event::Data(b) => Seen::Data(b.to_vec()),
                    Event::End => Seen::End,
                });
                Ok(())
            })?;
        }
        d.finish()?;
        Ok(seen)
    }

    /// Merges adjacent data events, so splits of the body compare equal.
    fn merged(seen: Vec<Seen>) -> Vec<Seen> {
        let mut out: Vec<Seen> = Vec::new();
        for s in seen {
            match (out.last_mut(), s) {
                (Some(Seen::Data(a)), Seen::Data(b)) => a.extend(b),
                (_, s) => out.push(s),
            }
        }
        out
    }

    fn body(objects: &[&[u8]]) -> Vec<u8> {
        let mut b = Vec::new();
        for o in objects {
            b.extend(header(&ObjectId::of(o), o.len() as u64));
            b.extend(*o);
        }
        b
    }

    #[test]
    fn every_split_of_a_body_decodes_to_the_same_objects() {
        let objects: [&[u8]; 3] = [b"hello", b"", b"world, again"];
        let b = body(&objects);
        let want = vec![
            Seen::Begin(ObjectId::of(b"hello"), 5),
            Seen::Data(b"hello".to_vec()),
            Seen::End,
            Seen::Begin(ObjectId::of(b""), 0),
            Seen::End,
            Seen::Begin(ObjectId::of(b"world, again"), 12),
            Seen::Data(b"world, again".to_vec()),
            Seen::End,
        ];
        for split in 1..=b.len() {
            assert_eq!(
                merged(decode(&b, split, 100).unwrap()),
                want,
                "split {split}"
            );
        }
    }

    #[test]
    fn id_lists_round_trip_and_ragged_or_long_ones_are_refused() {
        let ids = vec![ObjectId::of(b"a"), ObjectId::of(b"b"), ObjectId::of(b"a")];
        let body = encode_ids(&ids);
        assert_eq!(body.len(), 96);
        assert_eq!(decode_ids(&body, 3).unwrap(), ids);
        assert_eq!(decode_ids(&[], 0).unwrap(), vec![]);
        assert_eq!(decode_ids(&body[..95], 3), Err(BatchError::Ragged(95)));
        assert_eq!(
            decode_ids(&body, 2),
            Err(BatchError::TooManyIds { count: 3, limit: 2 })
        );
    }

    #[test]
    fn an_empty_body_is_an_empty_batch() {
        assert_eq!(decode(&[], 1, 100).unwrap(), vec![]);
    }

    #[test]
    fn truncated_bodies_are_refused() {
        let b = body(&[b"hello"]);
        for cut in 1..b.len() {
            let err = decode(&b[..cut], 7, 100).unwrap_err();
            let want = if cut < HEADER_LEN {
                BatchError::Truncated("a frame header")
            } else {
                BatchError::Truncated("an object's bytes")
            };
            assert_eq!(err, want, "cut at {cut}");
        }
    }

    #[test]
    fn an_object_over_the_limit_is_refused_before_its_bytes() {
        let b = body(&[b"0123456789"]);
        let err = decode(&b, 64, 9).unwrap_err();
        assert_eq!(
            err,
            BatchError::TooLarge {
                id: ObjectId::of(b"0123456789"),
                len: 10,
                limit: 9
            }
        );
    }
}
