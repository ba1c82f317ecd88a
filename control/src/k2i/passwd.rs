//! User names for uids, from `/etc/passwd` (no NSS: a host whose users
//! come from elsewhere shows their numeric uids).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// uid → user name.
type Users = Arc<HashMap<u32, String>>;

/// The last users read, and the modification time of the file they came
/// from: a query reads the file again only when it changed.
static CACHE: Mutex<Option<(Option<SystemTime>, Users)>> = Mutex::new(None);

/// uid → name from the text of an `/etc/passwd` file; malformed lines
/// are skipped, the first entry for a uid wins.
pub fn parse(text: &str) -> HashMap<u32, String> {
    let mut users = HashMap::new();
    for line in text.lines() {
        let mut fields = line.split(':');
        let (Some(name), Some(_), Some(uid)) = (fields.next(), fields.next(), fields.next()) else {
            continue;
        };
        if let Ok(uid) = uid.parse::<u32>() {
            users.entry(uid).or_insert_with(|| name.to_string());
        }
    }
    users
}

/// The users of this host; empty if `/etc/passwd` cannot be read.
pub fn load() -> HashMap<u32, String> {
    std::fs::read_to_string("/etc/passwd")
        .map(|t| parse(&t))
        .unwrap_or_default()
}

/// The users of this host, read again only when `/etc/passwd` changed
/// (one `stat` per query instead of parsing the file).
pub fn cached() -> Users {
    let mtime = std::fs::metadata("/etc/passwd")
        .and_then(|m| m.modified())
        .ok();
    let mut cache = CACHE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((at, users)) = cache.as_ref()
        && *at == mtime
        && mtime.is_some()
    {
        return users.clone();
    }
    let users = Arc::new(load());
    *cache = Some((mtime, users.clone()));
    users
}

/// The name of `uid`, or the number itself.
pub fn name(users: &HashMap<u32, String>, uid: u32) -> String {
    users.get(&uid).cloned().unwrap_or_else(|| uid.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_and_skips_junk() {
        let users = parse(
            "root:x:0:0:root:/root:/bin/bash\n#junk\nbad:x:zz\nme:x:1000:1000::/h:/bin/sh\nalias:x:0:0::/:/bin/sh\n",
        );
        assert_eq!(name(&users, 0), "root");
        assert_eq!(name(&users, 1000), "me");
        assert_eq!(name(&users, 4242), "4242");
        assert_eq!(users.len(), 2);
    }

    #[test]
    fn the_cache_answers_like_the_file() {
        assert_eq!(*cached(), load());
        assert!(Arc::ptr_eq(&cached(), &cached()));
    }
}
