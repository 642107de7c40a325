//! Which models are loaded, and which to unload when the budget needs room: least recently used
//! first, never a pinned (resident) model, never one a slot is running right now. Pure
//! bookkeeping; the engine does the unloading.

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    bytes: u64,
    last_used: u64,
    pinned: bool,
    in_use: u32,
}

/// Loaded models with their weight bytes, use order, pin and in-use counts.
#[derive(Debug, Default)]
pub(crate) struct Lru {
    clock: u64,
    entries: BTreeMap<String, Entry>,
}

impl Lru {
    /// Nothing loaded.
    pub fn new() -> Self {
        Self::default()
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// Records a freshly loaded model (most recently used).
    pub fn insert(&mut self, name: &str, bytes: u64, pinned: bool) {
        let last_used = self.tick();
        self.entries.insert(name.to_owned(), Entry { bytes, last_used, pinned, in_use: 0 });
    }

    /// Forgets a model (unloaded).
    pub fn remove(&mut self, name: &str) {
        self.entries.remove(name);
    }

    /// Whether the model is recorded as loaded.
    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// Marks a model as running (not evictable) and most recently used; false if not loaded.
    pub fn acquire(&mut self, name: &str) -> bool {
        let now = self.tick();
        match self.entries.get_mut(name) {
            Some(e) => {
                e.in_use += 1;
                e.last_used = now;
                true
            }
            None => false,
        }
    }

    /// Ends one [`Lru::acquire`].
    pub fn release(&mut self, name: &str) {
        if let Some(e) = self.entries.get_mut(name) {
            e.in_use = e.in_use.saturating_sub(1);
        }
    }

    /// Changes whether a model may be evicted.
    pub fn set_pinned(&mut self, name: &str, pinned: bool) {
        if let Some(e) = self.entries.get_mut(name) {
            e.pinned = pinned;
        }
    }

    /// The models to unload, least recently used first, so that `need` bytes fit when `free` are
    /// free now; `exclude` is never chosen. `None` when even unloading every evictable model would
    /// not make room (then nothing should be unloaded).
    pub fn victims(&self, need: u64, free: u64, exclude: &str) -> Option<Vec<String>> {
        if need <= free {
            return Some(Vec::new());
        }
        let mut candidates: Vec<(&String, &Entry)> = self
            .entries
            .iter()
            .filter(|(name, e)| !e.pinned && e.in_use == 0 && name.as_str() != exclude)
            .collect();
        candidates.sort_by_key(|(_, e)| e.last_used);
        let mut freed = free;
        let mut chosen = Vec::new();
        for (name, e) in candidates {
            chosen.push(name.clone());
            freed = freed.saturating_add(e.bytes);
            if need <= freed {
                return Some(chosen);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lru(models: &[(&str, u64, bool)]) -> Lru {
        let mut l = Lru::new();
        for (name, bytes, pinned) in models {
            l.insert(name, *bytes, *pinned);
        }
        l
    }

    #[test]
    fn evicts_least_recently_used_first() {
        let mut l = lru(&[("a", 10, false), ("b", 10, false), ("c", 10, false)]);
        assert!(l.acquire("a"));
        l.release("a");
        assert_eq!(l.victims(15, 0, "x"), Some(vec!["b".to_owned(), "c".to_owned()]));
        assert_eq!(l.victims(5, 0, "x"), Some(vec!["b".to_owned()]));
        assert_eq!(l.victims(5, 5, "x"), Some(vec![]));
    }

    #[test]
    fn never_evicts_pinned_in_use_or_excluded() {
        let mut l = lru(&[("pinned", 100, true), ("busy", 100, false), ("me", 100, false), ("idle", 10, false)]);
        assert!(l.acquire("busy"));
        assert_eq!(l.victims(10, 0, "me"), Some(vec!["idle".to_owned()]));
        assert_eq!(l.victims(50, 0, "me"), None, "nothing evictable frees 50");
        l.release("busy");
        assert_eq!(l.victims(50, 0, "me"), Some(vec!["busy".to_owned()]));
        l.set_pinned("busy", true);
        assert_eq!(l.victims(50, 0, "me"), None);
    }

    #[test]
    fn removed_models_are_not_victims() {
        let mut l = lru(&[("a", 10, false)]);
        l.remove("a");
        assert!(!l.contains("a"));
        assert!(!l.acquire("a"));
        assert_eq!(l.victims(5, 0, "x"), None);
    }
}
