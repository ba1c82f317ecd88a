//! `Range: bytes=...` for a single range (RFC 9110 §14.1.2). Multiple ranges
//! are answered with the whole object, which the RFC allows.

/// The requested range cannot be served (416).
#[derive(Debug, PartialEq, Eq)]
pub struct Unsatisfiable;

/// `Ok(None)`: serve everything. `Ok(Some((start, len)))`: serve a slice.
pub fn parse(header: Option<&str>, size: u64) -> Result<Option<(u64, u64)>, Unsatisfiable> {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((a, b)) = spec.split_once('-') else {
        return Ok(None);
    };
    let (a, b) = (a.trim(), b.trim());
    let range = match (a.is_empty(), b.is_empty()) {
        // bytes=-N: the last N bytes
        (true, false) => {
            let n: u64 = b.parse().map_err(|_| Unsatisfiable)?;
            if n == 0 || size == 0 {
                return Err(Unsatisfiable);
            }
            let n = n.min(size);
            (size - n, n)
        }
        (false, _) => {
            let start: u64 = a.parse().map_err(|_| Unsatisfiable)?;
            if start >= size {
                return Err(Unsatisfiable);
            }
            let end = if b.is_empty() {
                size - 1
            } else {
                b.parse::<u64>().map_err(|_| Unsatisfiable)?.min(size - 1)
            };
            if end < start {
                return Err(Unsatisfiable);
            }
            (start, end - start + 1)
        }
        (true, true) => return Ok(None),
    };
    Ok(Some(range))
}

#[cfg(test)]
mod tests {
    use super::{Unsatisfiable, parse};

    #[test]
    fn single_ranges() {
        assert_eq!(parse(None, 10), Ok(None));
        assert_eq!(parse(Some("bytes=0-3"), 10), Ok(Some((0, 4))));
        assert_eq!(parse(Some("bytes=5-"), 10), Ok(Some((5, 5))));
        assert_eq!(parse(Some("bytes=-3"), 10), Ok(Some((7, 3))));
        assert_eq!(parse(Some("bytes=8-100"), 10), Ok(Some((8, 2))));
        assert_eq!(parse(Some("bytes=10-"), 10), Err(Unsatisfiable));
        assert_eq!(parse(Some("bytes=4-2"), 10), Err(Unsatisfiable));
        assert_eq!(parse(Some("bytes=0-1,3-4"), 10), Ok(None));
        assert_eq!(parse(Some("items=0-1"), 10), Ok(None));
    }
}
