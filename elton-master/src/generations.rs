//! A bounded cache of immutable values by object id, in two generations:
//! new values go into the young one; when it has taken half the budget,
//! the old generation is dropped and the young one becomes old. A value
//! found in the old generation moves back into the young one. So what was
//! used since the last turn survives it, and a full cache never forgets
//! everything at once (the validator's caches used to be cleared whole
//! when full, and the next commit then read all its parent manifests again
//! from the slaves).

use std::collections::HashMap;

use elton_proto::ObjectId;

pub struct Generations<V> {
    young: HashMap<ObjectId, (V, usize)>,
    old: HashMap<ObjectId, (V, usize)>,
    young_cost: usize,
    /// Cost of both generations together, at most.
    limit: usize,
}

impl<V> Generations<V> {
    pub fn new(limit: usize) -> Self {
        Self {
            young: HashMap::new(),
            old: HashMap::new(),
            young_cost: 0,
            limit,
        }
    }

    /// The largest cost of one value that is kept: one value alone may not
    /// turn a generation over.
    pub fn max_cost(&self) -> usize {
        self.limit / 8
    }

    pub fn contains(&self, id: &ObjectId) -> bool {
        self.young.contains_key(id) || self.old.contains_key(id)
    }

    /// The value of `id`, moved into the young generation if it was old.
    pub fn get(&mut self, id: &ObjectId) -> Option<&mut V> {
        if let Some((value, cost)) = self.old.remove(id) {
            self.put_young(*id, value, cost);
        }
        self.young.get_mut(id).map(|(value, _)| value)
    }

    /// Keeps `value` unless it costs more than [`Self::max_cost`]; a value
    /// already kept under `id` stays as it is (values are immutable).
    pub fn insert(&mut self, id: ObjectId, value: V, cost: usize) {
        if cost > self.max_cost() || self.contains(&id) {
            return;
        }
        self.put_young(id, value, cost);
    }

    fn put_young(&mut self, id: ObjectId, value: V, cost: usize) {
        if self.young_cost + cost > self.limit / 2 {
            self.old = std::mem::take(&mut self.young);
            self.young_cost = 0;
        }
        self.young_cost += cost;
        self.young.insert(id, (value, cost));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> ObjectId {
        ObjectId::of(&[n])
    }

    #[test]
    fn what_was_used_since_the_last_turn_survives_it() {
        // Generations of 40: four values of 10 fill one.
        let mut g = Generations::new(80);
        for n in 0..4 {
            g.insert(id(n), n, 10);
        }
        // The fifth turns the generations over: 0..4 become old.
        g.insert(id(4), 4, 10);
        assert!((0..5).all(|n| g.contains(&id(n))));
        // Used since: moves back into the young generation.
        assert_eq!(g.get(&id(1)).copied(), Some(1));
        // Two more turn it over again: the old ones not used are gone.
        for n in 5..8 {
            g.insert(id(n), n, 10);
        }
        assert!(g.contains(&id(1)) && g.contains(&id(4)));
        assert!(!g.contains(&id(0)) && !g.contains(&id(2)) && !g.contains(&id(3)));
    }

    #[test]
    fn values_too_large_are_not_kept_and_kept_ones_are_not_replaced() {
        let mut g = Generations::new(80);
        g.insert(id(0), "large", 11);
        assert!(!g.contains(&id(0)));
        g.insert(id(1), "first", 1);
        g.insert(id(1), "second", 1);
        assert_eq!(g.get(&id(1)).copied(), Some("first"));
        // A value found can be changed in place (a page found canonical).
        *g.get(&id(1)).unwrap() = "changed";
        assert_eq!(g.get(&id(1)).copied(), Some("changed"));
    }
}
