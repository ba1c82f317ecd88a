//! The CLI's notations for apps (pure): `web@3` for a volume at a version.
//! CPU and memory use drcond's (`30%`, `512M`: [`crate::drcond::parse`]).

/// `VOLUME[@VERSION]`: the volume, and its version if given (none: the
/// client resolves the head). The volume name itself is checked by
/// [`super::spec::check_volume`].
pub fn volume_ref(s: &str) -> Result<(String, Option<u64>), String> {
    let bad = || format!("{s:?}: expected VOLUME or VOLUME@VERSION, e.g. site@3");
    match s.split_once('@') {
        None => {
            super::spec::check_volume(s)?;
            Ok((s.to_string(), None))
        }
        Some((volume, version)) => {
            super::spec::check_volume(volume)?;
            let v: u64 = version.parse().map_err(|_| bad())?;
            if v == 0 {
                return Err(format!("{s:?}: versions start at 1"));
            }
            Ok((volume.to_string(), Some(v)))
        }
    }
}

/// A threshold `N%` (or `N`), 1 to 100.
pub fn threshold(s: &str) -> Result<u32, String> {
    let digits = s.trim().strip_suffix('%').unwrap_or(s.trim());
    match digits.parse::<u32>() {
        Ok(n) if (1..=100).contains(&n) => Ok(n),
        _ => Err(format!(
            "{s:?}: a threshold is a whole percentage from 1% to 100%"
        )),
    }
}

/// A duration in whole milliseconds, from the CLI's `60s`, `5m`.
pub fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_refs() {
        assert_eq!(volume_ref("site"), Ok(("site".into(), None)));
        assert_eq!(volume_ref("site@3"), Ok(("site".into(), Some(3))));
        for bad in [
            "", "@3", "site@", "site@0", "site@x", "site@-1", "a/b@2", "s@1@2",
        ] {
            assert!(volume_ref(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn thresholds() {
        assert_eq!(threshold("80%"), Ok(80));
        assert_eq!(threshold("100"), Ok(100));
        for bad in ["0%", "101%", "", "x", "50.5%"] {
            assert!(threshold(bad).is_err(), "{bad}");
        }
    }
}
