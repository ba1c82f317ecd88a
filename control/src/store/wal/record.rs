//! The control log's on-disk records (`docs/formats.md` §12.2a): pure
//! encoding and decoding, no IO.
//!
//! A segment is a 16-byte header followed by records:
//!
//! ```text
//! header:  "ELTONWAL"  u32 LE format (1)  u32 LE zero
//! record:  u32 LE length of the body  u64 LE check  u8 kind  body
//! ```
//!
//! `check` is the first 8 bytes of BLAKE3(kind ‖ body), read as LE. BLAKE3
//! rather than a CRC because the crate is already here and hashing the
//! ~200-byte records costs well under a microsecond; what matters is that
//! a torn or rotten record is never taken for a good one.

use crate::error::ControlError;

pub(crate) const MAGIC: &[u8; 8] = b"ELTONWAL";
/// Format of a segment; bump on any incompatible change.
pub(crate) const SEGMENT_FORMAT: u32 = 1;
pub(crate) const HEADER_LEN: usize = 16;
/// Length prefix, check and kind.
pub(crate) const RECORD_HEAD: usize = 4 + 8 + 1;
/// Largest body accepted on replay. openraft's entries are far smaller
/// (a command envelope, a membership); a length above this is damage, not
/// data, and must not make replay allocate it.
pub(crate) const MAX_BODY: usize = 64 << 20;

/// What a record says. Bodies are JSON (`Entry`, `LogId`, `Vote`) as in the
/// format-1 tables, except `Truncate`'s index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Kind {
    /// An openraft `Entry`; replaces any entry at its index and after it.
    Entry = 1,
    /// Every entry at this index or after it is gone (u64 LE).
    Truncate = 2,
    /// Every entry up to this `LogId`'s index is purged.
    Purged = 3,
    /// The vote.
    Vote = 4,
    /// The committed log id (`Option<LogId>`).
    Committed = 5,
}

impl Kind {
    fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            1 => Self::Entry,
            2 => Self::Truncate,
            3 => Self::Purged,
            4 => Self::Vote,
            5 => Self::Committed,
            _ => return None,
        })
    }
}

pub(crate) fn header() -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&SEGMENT_FORMAT.to_le_bytes());
    h
}

/// Checks a segment's header.
pub(crate) fn check_header(bytes: &[u8]) -> Result<(), ControlError> {
    if bytes.len() < HEADER_LEN || &bytes[..8] != MAGIC {
        return Err(ControlError::Corrupt(
            "control log segment has no ELTONWAL header".into(),
        ));
    }
    let mut v = [0u8; 4];
    v.copy_from_slice(&bytes[8..12]);
    match u32::from_le_bytes(v) {
        SEGMENT_FORMAT => Ok(()),
        found => Err(ControlError::Format {
            found: u64::from(found),
            supported: u64::from(SEGMENT_FORMAT),
        }),
    }
}

fn check(kind: u8, body: &[u8]) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(&[kind]);
    h.update(body);
    let mut c = [0u8; 8];
    c.copy_from_slice(&h.finalize().as_bytes()[..8]);
    u64::from_le_bytes(c)
}

/// Appends one record to `out`; returns where its body starts in `out`.
pub(crate) fn encode(out: &mut Vec<u8>, kind: Kind, body: &[u8]) -> Result<usize, ControlError> {
    let len = u32::try_from(body.len())
        .ok()
        .filter(|&n| n as usize <= MAX_BODY)
        .ok_or_else(|| {
            ControlError::Storage(format!(
                "a control log record of {} bytes is larger than {MAX_BODY}",
                body.len()
            ))
        })?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&check(kind as u8, body).to_le_bytes());
    out.push(kind as u8);
    let at = out.len();
    out.extend_from_slice(body);
    Ok(at)
}

/// One record found in a segment.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Found<'a> {
    pub kind: Kind,
    pub body: &'a [u8],
    /// Offset of the body in the segment.
    pub body_at: usize,
    /// Offset just past the record.
    pub end: usize,
}

/// Why the records of a segment stop before its end.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Stop {
    /// Fewer bytes left than the record's head or its announced body: a
    /// write that did not finish.
    Short,
    /// The record's check does not match, or its length or kind is
    /// impossible.
    Bad(String),
}

/// The record at `at` in `seg`, `Ok(None)` at the exact end.
pub(crate) fn next(seg: &[u8], at: usize) -> Result<Option<Found<'_>>, Stop> {
    let rest = seg.get(at..).unwrap_or_default();
    if rest.is_empty() {
        return Ok(None);
    }
    if rest.len() < RECORD_HEAD {
        return Err(Stop::Short);
    }
    let mut len = [0u8; 4];
    len.copy_from_slice(&rest[..4]);
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_BODY {
        return Err(Stop::Bad(format!("record length {len} above {MAX_BODY}")));
    }
    let mut sum = [0u8; 8];
    sum.copy_from_slice(&rest[4..12]);
    let sum = u64::from_le_bytes(sum);
    let kind_byte = rest[12];
    let Some(body) = rest.get(RECORD_HEAD..RECORD_HEAD + len) else {
        return Err(Stop::Short);
    };
    if check(kind_byte, body) != sum {
        return Err(Stop::Bad("record check does not match".into()));
    }
    let kind = Kind::from_byte(kind_byte)
        .ok_or_else(|| Stop::Bad(format!("unknown record kind {kind_byte}")))?;
    Ok(Some(Found {
        kind,
        body,
        body_at: at + RECORD_HEAD,
        end: at + RECORD_HEAD + len,
    }))
}

/// Reads a body located by [`Found::body_at`] back: checks it against the
/// record head just before it.
pub(crate) fn verify_at(record: &[u8], kind: Kind) -> Result<&[u8], ControlError> {
    match next(record, 0) {
        Ok(Some(f)) if f.kind == kind && f.end == record.len() => Ok(f.body),
        Ok(_) => Err(ControlError::Corrupt(
            "control log record is not where the index says".into(),
        )),
        Err(Stop::Short) => Err(ControlError::Corrupt("control log record is cut".into())),
        Err(Stop::Bad(why)) => Err(ControlError::Corrupt(format!("control log record: {why}"))),
    }
}

pub(crate) fn u64_body(body: &[u8]) -> Result<u64, ControlError> {
    <[u8; 8]>::try_from(body)
        .map(u64::from_le_bytes)
        .map_err(|_| ControlError::Corrupt("truncate record is not 8 bytes".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(records: &[(Kind, &[u8])]) -> Vec<u8> {
        let mut s = header().to_vec();
        for (k, b) in records {
            encode(&mut s, *k, b).expect("encode");
        }
        s
    }

    fn all(seg: &[u8]) -> (Vec<(Kind, Vec<u8>)>, Option<Stop>) {
        let mut at = HEADER_LEN;
        let mut out = Vec::new();
        loop {
            match next(seg, at) {
                Ok(Some(f)) => {
                    out.push((f.kind, f.body.to_vec()));
                    at = f.end;
                }
                Ok(None) => return (out, None),
                Err(stop) => return (out, Some(stop)),
            }
        }
    }

    #[test]
    fn records_read_back_in_order() {
        let seg = segment(&[(Kind::Vote, b"{}"), (Kind::Truncate, &7u64.to_le_bytes())]);
        check_header(&seg).expect("header");
        let (recs, stop) = all(&seg);
        assert_eq!(stop, None);
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[1].0, Kind::Truncate);
        assert_eq!(u64_body(&recs[1].1).expect("u64"), 7);
    }

    #[test]
    fn every_cut_of_the_last_record_is_short_and_keeps_the_first() {
        let seg = segment(&[(Kind::Vote, b"{\"a\":1}"), (Kind::Entry, b"{\"b\":2}")]);
        let first_end = HEADER_LEN + RECORD_HEAD + 7;
        for cut in first_end + 1..seg.len() {
            let (recs, stop) = all(&seg[..cut]);
            assert_eq!(recs.len(), 1, "cut at {cut}");
            assert_eq!(stop, Some(Stop::Short), "cut at {cut}");
        }
    }

    #[test]
    fn a_flipped_bit_anywhere_in_a_record_is_caught() {
        let seg = segment(&[(Kind::Entry, b"{\"index\":12}")]);
        for i in HEADER_LEN..seg.len() {
            let mut bad = seg.clone();
            bad[i] ^= 0x10;
            let (recs, stop) = all(&bad);
            assert!(recs.is_empty(), "flip at {i} read as {recs:?}");
            assert!(stop.is_some(), "flip at {i}");
        }
    }

    #[test]
    fn headers_of_other_files_or_formats_are_refused() {
        assert!(check_header(b"ELTONWA").is_err());
        assert!(check_header(b"NOTAWAL\0\x01\0\0\0\0\0\0\0").is_err());
        let mut h = header();
        h[8] = 9;
        assert!(matches!(
            check_header(&h),
            Err(ControlError::Format { found: 9, .. })
        ));
    }

    #[test]
    fn verify_at_rereads_one_record() {
        let mut seg = Vec::new();
        encode(&mut seg, Kind::Entry, b"xyz").expect("encode");
        assert_eq!(verify_at(&seg, Kind::Entry).expect("ok"), b"xyz");
        assert!(verify_at(&seg, Kind::Vote).is_err());
        assert!(verify_at(&seg[..seg.len() - 1], Kind::Entry).is_err());
    }
}
