//! Which models are loaded, and which to unload when the budget needs room: least recently used
//! first, never a pinned (resident) model, never one a slot is running right now. Pure
//! bookkeeping; the engine does the unloading.

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    /// Distinguishes this load of the model from earlier ones (releases of an older load are ignored).
    generation: u64,
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

    /// Records a freshly loaded model (most recently used); returns its generation.
    pub fn insert(&mut self, name: &str, bytes: u64, pinned: bool) -> u64 {
        let last_used = self.tick();
        self.entries.insert(
            name.to_owned(),
            Entry {
                generation: last_used,
                bytes,
                last_used,
                pinned,
                in_use: 0,
            },
        );
        last_used
    }

    /// Forgets a model (unloaded).
    pub fn remove(&mut self, name: &str) {
        self.entries.remove(name);
    }

    /// Whether the model is recorded as loaded.
    #[cfg(test)]
    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// Marks a model as running (not evictable) and most recently used; returns the generation
    /// to release, or `None` if it is not loaded.
    pub fn acquire(&mut self, name: &str) -> Option<u64> {
        let now = self.tick();
        let e = self.entries.get_mut(name)?;
        e.in_use += 1;
        e.last_used = now;
        Some(e.generation)
    }

    /// Ends one [`Lru::acquire`] of that generation (a no-op if the model was reloaded since).
    pub fn release(&mut self, name: &str, generation: u64) {
        if let Some(e) = self
            .entries
            .get_mut(name)
            .filter(|e| e.generation == generation)
        {
            e.in_use = e.in_use.saturating_sub(1);
        }
    }

    /// Forgets a model if no slot is running it; true if it was removed.
    pub fn remove_if_idle(&mut self, name: &str) -> bool {
        match self.entries.get(name) {
            Some(e) if e.in_use == 0 => {
                self.entries.remove(name);
                true
            }
            _ => false,
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
        let g = l.acquire("a").unwrap();
        l.release("a", g);
        assert_eq!(
            l.victims(15, 0, "x"),
            Some(vec!["b".to_owned(), "c".to_owned()])
        );
        assert_eq!(l.victims(5, 0, "x"), Some(vec!["b".to_owned()]));
        assert_eq!(l.victims(5, 5, "x"), Some(vec![]));
    }

    #[test]
    fn never_evicts_pinned_in_use_or_excluded() {
        let mut l = lru(&[
            ("pinned", 100, true),
            ("busy", 100, false),
            ("me", 100, false),
            ("idle", 10, false),
        ]);
        let g = l.acquire("busy").unwrap();
        assert!(!l.remove_if_idle("busy"));
        assert_eq!(l.victims(10, 0, "me"), Some(vec!["idle".to_owned()]));
        assert_eq!(l.victims(50, 0, "me"), None, "nothing evictable frees 50");
        l.release("busy", g);
        // idle is older than busy (just used), so it goes first, then busy.
        assert_eq!(
            l.victims(50, 0, "me"),
            Some(vec!["idle".to_owned(), "busy".to_owned()])
        );
        l.set_pinned("busy", true);
        assert_eq!(l.victims(50, 0, "me"), None);
    }

    #[test]
    fn removed_models_are_not_victims() {
        let mut l = lru(&[("a", 10, false)]);
        l.remove("a");
        assert!(!l.contains("a"));
        assert!(l.acquire("a").is_none());
        assert_eq!(l.victims(5, 0, "x"), None);
    }

    #[test]
    fn releases_of_an_older_load_are_ignored() {
        let mut l = lru(&[("a", 10, false)]);
        let old = l.acquire("a").unwrap();
        l.insert("a", 10, false); // reloaded (e.g. new precision) while the old copy ran
        let new = l.acquire("a").unwrap();
        l.release("a", old);
        assert!(!l.remove_if_idle("a"), "the new load is still in use");
        l.release("a", new);
        assert!(l.remove_if_idle("a"));
        assert_eq!(l.victims(5, 0, "x"), None);
    }
}
