//! Coalescing of cross-cluster fetches: at most one WAN transfer per object
//! at a time.
//!
//! The first requester of an object that no local node holds becomes the
//! *lead* and fetches it from a peer. Later requesters *wait* until the lead
//! is settled: the object got registered in this cluster (`AddLocations`),
//! the transfer failed, or a grace period after a complete transfer passed
//! without registration (the requester rejected the bytes). Then they look
//! for a local holder again, and one of them leads if there is still none.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use elton_proto::ObjectId;
use tokio::sync::watch;

#[derive(Default)]
pub struct Coalescer {
    /// object → (generation of the lead, sender whose drop wakes waiters)
    inflight: Mutex<HashMap<ObjectId, (u64, watch::Sender<()>)>>,
    generation: AtomicU64,
}

/// The caller's role for one object.
pub enum Turn {
    Lead(Lead),
    Wait(Waiter),
}

/// Held while this requester's WAN transfer is under way; dropping it lets
/// the waiters go.
pub struct Lead {
    owner: Arc<Coalescer>,
    object: ObjectId,
    generation: u64,
}

pub struct Waiter(watch::Receiver<()>);

impl Waiter {
    /// Returns once the lead is settled.
    pub async fn settled(mut self) {
        // No value is ever sent: `changed` fails exactly when the sender is
        // dropped, which is the settlement.
        while self.0.changed().await.is_ok() {}
    }
}

impl Coalescer {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<ObjectId, (u64, watch::Sender<()>)>> {
        // The map holds no invariant a panic could break.
        self.inflight.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn join(self: &Arc<Self>, object: ObjectId) -> Turn {
        let mut map = self.map();
        if let Some((_, tx)) = map.get(&object) {
            return Turn::Wait(Waiter(tx.subscribe()));
        }
        let generation = self.generation.fetch_add(1, Ordering::Relaxed);
        let (tx, _) = watch::channel(());
        map.insert(object, (generation, tx));
        Turn::Lead(Lead {
            owner: self.clone(),
            object,
            generation,
        })
    }

    /// The objects are now registered in this cluster: wake their waiters.
    pub fn settle(&self, objects: &[ObjectId]) {
        let mut map = self.map();
        if map.is_empty() {
            return;
        }
        for o in objects {
            map.remove(o);
        }
    }

    pub fn in_flight(&self) -> usize {
        self.map().len()
    }
}

impl Drop for Lead {
    fn drop(&mut self) {
        let mut map = self.owner.map();
        // A later lead of the same object (after `settle`) is not ours to end.
        if map
            .get(&self.object)
            .is_some_and(|(g, _)| *g == self.generation)
        {
            map.remove(&self.object);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn one_lead_per_object_waiters_wake_on_settle_or_drop() {
        let c = Arc::new(Coalescer::default());
        let a = ObjectId::of(b"a");
        let Turn::Lead(lead) = c.join(a) else {
            panic!("first is lead")
        };
        let Turn::Wait(w1) = c.join(a) else {
            panic!("second waits")
        };
        assert!(matches!(c.join(ObjectId::of(b"b")), Turn::Lead(_)));
        let waiting = tokio::spawn(w1.settled());
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished());
        c.settle(&[a]);
        tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .unwrap()
            .unwrap();

        // A new lead after settlement is not ended by the old one's drop.
        let Turn::Lead(lead2) = c.join(a) else {
            panic!("lead again")
        };
        drop(lead);
        let Turn::Wait(w2) = c.join(a) else {
            panic!("lead2 still holds")
        };
        drop(lead2);
        tokio::time::timeout(Duration::from_secs(1), w2.settled())
            .await
            .unwrap();
        assert_eq!(c.in_flight(), 0);
    }
}
