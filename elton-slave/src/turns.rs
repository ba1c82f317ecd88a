//! One fetch per object at a time on this slave: a request that misses an
//! object takes its [`Turn`]; concurrent requests for the same object wait
//! for it and then find the object stored (or fetch it themselves if the
//! first one failed).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use elton_proto::ObjectId;
use tokio::sync::OwnedMutexGuard;

type Gates = Arc<Mutex<HashMap<ObjectId, Arc<tokio::sync::Mutex<()>>>>>;

#[derive(Default)]
pub struct Turns {
    gates: Gates,
}

/// Held while fetching one object. Dropping it (also when the holder's
/// future is cancelled, waiting or not) lets the next waiter go, and
/// removes the object's gate once nobody holds or waits for it.
pub struct Turn {
    gates: Gates,
    id: ObjectId,
    gate: Arc<tokio::sync::Mutex<()>>,
    guard: Option<OwnedMutexGuard<()>>,
}

fn lock(
    gates: &Gates,
) -> std::sync::MutexGuard<'_, HashMap<ObjectId, Arc<tokio::sync::Mutex<()>>>> {
    // The map holds no invariant a panic could break.
    gates.lock().unwrap_or_else(|p| p.into_inner())
}

impl Turns {
    /// Waits until no other request of this slave holds `id`'s turn.
    pub async fn take(&self, id: ObjectId) -> Turn {
        let mut turn = self.unheld(id);
        turn.guard = Some(turn.gate.clone().lock_owned().await);
        turn
    }

    /// `id`'s turn if nobody holds it, without waiting.
    pub fn try_take(&self, id: ObjectId) -> Option<Turn> {
        let mut turn = self.unheld(id);
        // A held gate drops `turn` here, which removes the gate only if it
        // was made for this call.
        turn.guard = Some(turn.gate.clone().try_lock_owned().ok()?);
        Some(turn)
    }

    /// A turn on `id`'s gate, not holding it yet: built before waiting, so
    /// that a cancelled wait still cleans up.
    fn unheld(&self, id: ObjectId) -> Turn {
        let gate = lock(&self.gates).entry(id).or_default().clone();
        Turn {
            gates: self.gates.clone(),
            id,
            gate,
            guard: None,
        }
    }

    #[cfg(test)]
    fn gates(&self) -> usize {
        lock(&self.gates).len()
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        self.guard.take();
        let mut gates = lock(&self.gates);
        // Clones are only made under this lock, so the count cannot grow
        // meanwhile: two references (the map's and ours) mean nobody else
        // holds or waits for this gate. A gate that replaced ours (ours was
        // removed and a newcomer made another) is not ours to remove.
        if gates
            .get(&self.id)
            .is_some_and(|g| Arc::ptr_eq(g, &self.gate))
            && Arc::strong_count(&self.gate) == 2
        {
            gates.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn one_holder_per_object_and_no_gate_left_behind() {
        let turns = Arc::new(Turns::default());
        let a = ObjectId::of(b"a");
        let first = turns.take(a).await;
        // Another object is independent.
        drop(turns.take(ObjectId::of(b"b")).await);

        let t = turns.clone();
        let waiter = tokio::spawn(async move { t.take(a).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "the second request waits");
        drop(first);
        let second = tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(turns.gates(), 1, "the waiter still holds the gate");
        drop(second);
        assert_eq!(turns.gates(), 0);

        // A wait that is cancelled leaves nothing behind either.
        let held = turns.take(a).await;
        let t = turns.clone();
        let cancelled = tokio::spawn(async move { t.take(a).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        cancelled.abort();
        let _ = cancelled.await;
        drop(held);
        assert_eq!(turns.gates(), 0);
    }

    #[tokio::test]
    async fn try_take_gets_a_free_turn_and_leaves_a_held_one_alone() {
        let turns = Turns::default();
        let a = ObjectId::of(b"a");
        let held = turns.take(a).await;
        assert!(turns.try_take(a).is_none(), "held by another request");
        assert_eq!(turns.gates(), 1, "the holder's gate stays");
        drop(held);
        assert_eq!(turns.gates(), 0);
        let taken = turns.try_take(a).expect("free");
        assert!(turns.try_take(a).is_none());
        drop(taken);
        assert_eq!(turns.gates(), 0, "nothing left behind");
    }
}
