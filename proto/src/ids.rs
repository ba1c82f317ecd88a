//! Typed identifiers. Each validates on construction so that a value of the
//! type is always well formed.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::ProtoError;

/// BLAKE3-256 hash of an object's bytes; printed as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectId([u8; 32]);

impl ObjectId {
    pub const LEN: usize = 32;

    pub fn of(bytes: &[u8]) -> Self {
        Self(*blake3::hash(bytes).as_bytes())
    }

    pub fn from_hash(hash: blake3::Hash) -> Self {
        Self(*hash.as_bytes())
    }

    pub fn from_raw(raw: [u8; 32]) -> Self {
        Self(raw)
    }

    pub fn from_bytes(raw: &[u8]) -> Result<Self, ProtoError> {
        let arr: [u8; 32] = raw
            .try_into()
            .map_err(|_| ProtoError::ObjectId(hex::encode(raw)))?;
        Ok(Self(arr))
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn to_hex(&self) -> String {
        self.hex_str(&mut [0; 64]).to_string()
    }

    /// The hex form in `buf`, without allocating: manifests print
    /// thousands of ids, and a char-by-char encoder was the largest part of
    /// a commit's CPU time on the master (issue 16).
    fn hex_str<'a>(&self, buf: &'a mut [u8; 64]) -> &'a str {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        for (i, b) in self.0.iter().enumerate() {
            buf[2 * i] = DIGITS[usize::from(b >> 4)];
            buf[2 * i + 1] = DIGITS[usize::from(b & 0xf)];
        }
        // Only ASCII digits were written.
        std::str::from_utf8(buf).unwrap_or_default()
    }
}

/// The value of each byte as a lowercase hex digit; `0xff` for every other
/// byte. A table and no branch per digit: pages of manifests hold
/// thousands of ids, and their parsing was a quarter of a commit's decoding
/// on the master (issue 16).
const HEX_VALUES: [u8; 256] = {
    let mut table = [0xff; 256];
    let mut i = 0;
    while i < 10 {
        table[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        table[b'a' as usize + i] = 10 + i as u8;
        i += 1;
    }
    table
};

impl FromStr for ObjectId {
    type Err = ProtoError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // Only the lowercase form is accepted, so one object has one URL.
        let bad = || ProtoError::ObjectId(s.chars().take(80).collect());
        let digits = s.as_bytes();
        if digits.len() != 64 {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        // Any byte that is not a digit has a high bit set in its value.
        let mut seen = 0u8;
        for (o, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
            let (hi, lo) = (
                HEX_VALUES[usize::from(pair[0])],
                HEX_VALUES[usize::from(pair[1])],
            );
            seen |= hi | lo;
            *o = hi << 4 | lo;
        }
        if seen & 0xf0 != 0 {
            return Err(bad());
        }
        Ok(Self(out))
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.hex_str(&mut [0; 64]))
    }
}

impl fmt::Debug for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectId({})", self.to_hex())
    }
}

impl Serialize for ObjectId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.hex_str(&mut [0; 64]))
    }
}

impl<'de> Deserialize<'de> for ObjectId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        /// Parses the string where the deserializer has it (no copy).
        struct Hex;
        impl serde::de::Visitor<'_> for Hex {
            type Value = ObjectId;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object id (64 lowercase hex digits)")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<ObjectId, E> {
                s.parse().map_err(E::custom)
            }
        }
        d.deserialize_str(Hex)
    }
}

fn valid_name(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

macro_rules! name_type {
    ($(#[$doc:meta])* $ty:ident, $err:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
        pub struct $ty(String);

        impl $ty {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $ty {
            type Err = ProtoError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                if valid_name(s) {
                    Ok(Self(s.to_string()))
                } else {
                    Err(ProtoError::$err(s.chars().take(160).collect()))
                }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

name_type!(
    /// A volume's name; safe to use in URLs and file names.
    VolumeName,
    VolumeName
);
name_type!(
    /// A storage node's identity, stable across restarts.
    NodeId,
    NodeId
);

/// A version number: 1, 2, 3, ... without gaps, issued by the home master.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Version(u64);

impl Version {
    pub const FIRST: Version = Version(1);

    /// `None` for 0, which the wire protocol uses for "no version".
    pub fn new(n: u64) -> Option<Self> {
        (n >= 1).then_some(Self(n))
    }

    pub fn get(self) -> u64 {
        self.0
    }

    pub fn next(self) -> Self {
        Self(self.0 + 1)
    }

    /// The version after `head` (0 = no head yet).
    pub fn after(head: u64) -> Self {
        Self(head + 1)
    }
}

impl FromStr for Version {
    type Err = ProtoError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse::<u64>()
            .ok()
            .and_then(Version::new)
            .filter(|_| !s.starts_with('+') && !s.starts_with('0'))
            .ok_or_else(|| ProtoError::Version(s.chars().take(40).collect()))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_id_round_trips_and_rejects_bad_hex() {
        let id = ObjectId::of(b"hello");
        assert_eq!(id.to_hex().parse::<ObjectId>(), Ok(id));
        assert!("xyz".parse::<ObjectId>().is_err());
        assert!(id.to_hex().to_uppercase().parse::<ObjectId>().is_err());
        assert!(ObjectId::from_bytes(&[0; 31]).is_err());
        // The hand-written codec agrees with the hex crate on every byte.
        let mut raw = [0u8; 32];
        for chunk in 0..8u8 {
            for (i, b) in raw.iter_mut().enumerate() {
                *b = chunk * 32 + i as u8;
            }
            let id = ObjectId::from_raw(raw);
            assert_eq!(id.to_hex(), hex::encode(raw));
            assert_eq!(id.to_string(), hex::encode(raw));
            assert_eq!(hex::encode(raw).parse::<ObjectId>(), Ok(id));
            let json = serde_json::to_string(&id).unwrap();
            assert_eq!(json, format!("\"{}\"", hex::encode(raw)));
            assert_eq!(serde_json::from_str::<ObjectId>(&json).unwrap(), id);
        }
        for bad in ["g", "A", " ", "é"] {
            let s = format!("{bad}{}", &id.to_hex()[bad.len()..]);
            assert!(s.parse::<ObjectId>().is_err(), "{s}");
        }
        assert!(serde_json::from_str::<ObjectId>("\"00\"").is_err());
        assert!(serde_json::from_str::<ObjectId>("7").is_err());
        // Every ASCII byte that is not a lowercase digit, at either place
        // of a byte's pair.
        let hex = id.to_hex();
        for b in (0..=0x7fu8).filter(|b| !matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            for at in [0, 1, 62, 63] {
                let mut s = hex.clone().into_bytes();
                s[at] = b;
                let s = String::from_utf8(s).unwrap();
                assert!(s.parse::<ObjectId>().is_err(), "{b:#x} at {at}");
            }
        }
    }

    #[test]
    fn names_reject_traversal_and_separators() {
        for bad in ["", "..", ".hidden", "a/b", "a b", "é", &"x".repeat(129)] {
            assert!(bad.parse::<VolumeName>().is_err(), "{bad:?}");
        }
        for good in ["web", "data-set_1.v2", "A0"] {
            assert!(good.parse::<VolumeName>().is_ok(), "{good:?}");
        }
    }

    #[test]
    fn versions_start_at_one() {
        assert!("0".parse::<Version>().is_err());
        assert!("01".parse::<Version>().is_err());
        assert!("-1".parse::<Version>().is_err());
        assert_eq!("7".parse::<Version>().map(Version::get), Ok(7));
        assert_eq!(Version::after(0), Version::FIRST);
    }
}
