//! `volume[@version][:path]` arguments, as in `elton cat web@3:index.html`.

use std::fmt;
use std::str::FromStr;

use elton_proto::{Version, VolumeName, VolumePath};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spec {
    pub volume: VolumeName,
    /// `None` means the latest version.
    pub version: Option<Version>,
    pub path: VolumePath,
}

impl FromStr for Spec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (head, path) = s.split_once(':').unwrap_or((s, ""));
        let (volume, version) = match head.split_once('@') {
            Some((v, "latest")) => (v, None),
            Some((v, n)) => (v, Some(n.parse::<Version>().map_err(|e| e.to_string())?)),
            None => (head, None),
        };
        Ok(Self {
            volume: volume
                .parse()
                .map_err(|e: elton_proto::ProtoError| e.to_string())?,
            version,
            path: VolumePath::parse(path.trim_start_matches('/')).map_err(|e| e.to_string())?,
        })
    }
}

impl Spec {
    /// The slave URL path for this spec.
    pub fn url_path(&self) -> String {
        let version = self.version.map_or("latest".to_string(), |v| v.to_string());
        let mut p = format!("/v1/volumes/{}/{version}", self.volume);
        for c in self.path.components() {
            p.push('/');
            p.push_str(&percent_encode(c));
        }
        p
    }
}

fn percent_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl fmt::Display for Spec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.volume)?;
        if let Some(v) = self.version {
            write!(f, "@{v}")?;
        }
        if !self.path.is_root() {
            write!(f, ":{}", self.path)?;
        }
        Ok(())
    }
}

/// A version argument: a number, or `latest` (the head), as in
/// `elton diff web 3 latest`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VersionRef {
    Latest,
    Number(Version),
}

impl FromStr for VersionRef {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "latest" {
            return Ok(Self::Latest);
        }
        s.parse::<Version>()
            .map(Self::Number)
            .map_err(|_| format!("{s:?} is not a version: give a number from 1, or latest"))
    }
}

impl fmt::Display for VersionRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Latest => f.write_str("latest"),
            Self::Number(v) => write!(f, "{v}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_version_refs() {
        assert_eq!("latest".parse::<VersionRef>(), Ok(VersionRef::Latest));
        assert_eq!(
            "7".parse::<VersionRef>().map(|v| v.to_string()),
            Ok("7".into())
        );
        let e = "head".parse::<VersionRef>().unwrap_err();
        assert!(e.contains("not a version"), "{e}");
        assert!("0".parse::<VersionRef>().is_err());
    }

    #[test]
    fn parses_specs() {
        let s: Spec = "web@3:dir/ä b.txt".parse().unwrap();
        assert_eq!(s.version.map(Version::get), Some(3));
        assert_eq!(s.url_path(), "/v1/volumes/web/3/dir/%C3%A4%20b.txt");
        let s: Spec = "web".parse().unwrap();
        assert_eq!(
            (s.version, s.url_path()),
            (None, "/v1/volumes/web/latest".to_string())
        );
        assert!("web@0".parse::<Spec>().is_err());
        assert!("web:../x".parse::<Spec>().is_err());
        assert!("../web".parse::<Spec>().is_err());
    }
}
