//! The CLI's notations for limits (pure): `30%`, `512M`, `8:0`.

/// `N%` (or `N`) of one core, N a whole number ≥ 1. `150%` is one and a
/// half cores.
pub fn percent(s: &str) -> Result<u32, String> {
    let digits = s.trim().strip_suffix('%').unwrap_or(s.trim());
    let n: u32 = digits
        .parse()
        .map_err(|_| format!("{s:?}: a CPU limit is a whole percentage of one core, e.g. 30%"))?;
    if n == 0 {
        return Err(format!("{s:?}: a CPU limit of 0% would stop the process"));
    }
    Ok(n)
}

/// A byte count: `N`, `NK`, `NM`, `NG`, `NT` (powers of 1024; `KiB`,
/// `MiB`.. and a trailing `B` are accepted too).
pub fn size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let bad = || format!("{s:?}: a size is a whole number with an optional K, M, G or T suffix");
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let unit = unit.to_ascii_uppercase();
    let unit = unit
        .strip_suffix("IB")
        .or_else(|| unit.strip_suffix('B'))
        .unwrap_or(&unit);
    let shift = match unit {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(bad()),
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("{s:?}: too large"))
}

/// A block device as `MAJ:MIN`.
pub fn device(s: &str) -> Result<(u32, u32), String> {
    let bad = || format!("{s:?}: a device is MAJ:MIN, e.g. 8:0 (see lsblk)");
    let (maj, min) = s.trim().split_once(':').ok_or_else(bad)?;
    Ok((
        maj.parse().map_err(|_| bad())?,
        min.parse().map_err(|_| bad())?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages() {
        assert_eq!(percent("30%"), Ok(30));
        assert_eq!(percent("150"), Ok(150));
        for bad in ["0%", "-5%", "abc", "", "%", "12.5%"] {
            assert!(percent(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(size("512M"), Ok(512 << 20));
        assert_eq!(size("64MiB"), Ok(64 << 20));
        assert_eq!(size("10m"), Ok(10 << 20));
        assert_eq!(size("4096"), Ok(4096));
        assert_eq!(size("2GB"), Ok(2 << 30));
        for bad in ["", "M", "12X", "1.5G", "-1M", "99999999999999999999T"] {
            assert!(size(bad).is_err(), "{bad}");
        }
        assert!(size("99999999T").is_err());
    }

    #[test]
    fn devices() {
        assert_eq!(device("8:0"), Ok((8, 0)));
        assert_eq!(device("253:17"), Ok((253, 17)));
        for bad in ["8", "8:", ":0", "a:b", "8:0:1"] {
            assert!(device(bad).is_err(), "{bad}");
        }
    }
}
