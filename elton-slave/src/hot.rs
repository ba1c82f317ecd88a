//! Small objects kept in memory, already verified. Objects never change, so
//! a cached copy is valid forever and needs no invalidation; a hit answers
//! a request without a system call or a hand-off to the blocking pool.

use std::sync::Mutex;

use bytes::Bytes;
use elton_proto::ObjectId;
use lru::LruCache;

/// Largest object kept (bigger ones stream from disk).
pub const HOT_MAX_OBJECT: u64 = 64 << 10;

pub struct HotCache {
    max_bytes: usize,
    inner: Mutex<(LruCache<ObjectId, Bytes>, usize)>,
}

impl HotCache {
    pub fn new(max_bytes: usize) -> Self {
        Self {
            max_bytes,
            inner: Mutex::new((LruCache::unbounded(), 0)),
        }
    }

    pub fn get(&self, id: &ObjectId) -> Option<Bytes> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.0.get(id).cloned()
    }

    /// Caches `bytes`, which the caller has verified hash to `id`.
    pub fn insert(&self, id: ObjectId, bytes: Bytes) {
        if bytes.len() as u64 > HOT_MAX_OBJECT || bytes.len() > self.max_bytes {
            return;
        }
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (cache, total) = &mut *guard;
        if let Some(old) = cache.put(id, bytes.clone()) {
            *total -= old.len();
        }
        *total += bytes.len();
        while *total > self.max_bytes {
            match cache.pop_lru() {
                Some((_, evicted)) => *total -= evicted.len(),
                None => break,
            }
        }
    }

    pub fn remove(&self, id: &ObjectId) {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (cache, total) = &mut *guard;
        if let Some(old) = cache.pop(id) {
            *total -= old.len();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_least_recently_used_within_the_byte_budget() {
        let c = HotCache::new(10);
        let (a, b, d) = (ObjectId::of(b"a"), ObjectId::of(b"b"), ObjectId::of(b"d"));
        c.insert(a, Bytes::from_static(b"aaaa"));
        c.insert(b, Bytes::from_static(b"bbbb"));
        assert!(c.get(&a).is_some()); // a is now the most recent
        c.insert(d, Bytes::from_static(b"dddd"));
        assert!(c.get(&b).is_none(), "b was least recently used");
        assert!(c.get(&a).is_some() && c.get(&d).is_some());
        c.insert(ObjectId::of(b"big"), Bytes::from(vec![0u8; 11]));
        assert!(
            c.get(&ObjectId::of(b"big")).is_none(),
            "larger than the budget"
        );
    }
}
