//! The virtual keys of a state, by hash, in shards: a copy of the state shares every shard,
//! and a change copies only the shards it touches. A delta onto a state that requests in
//! flight still hold then copies a few hundred keys per changed key, not every key.

use std::collections::HashMap;
use std::sync::Arc;

use super::VirtualKey;

/// Shards, by the first byte of the key's hash (SHA-256 output, so evenly spread).
const SHARDS: usize = 256;

type Shard = HashMap<[u8; 32], Arc<VirtualKey>>;

/// Virtual keys by the SHA-256 of the clear key.
#[derive(Debug, Clone)]
pub(super) struct KeyMap {
    shards: Vec<Arc<Shard>>,
    len: usize,
}

impl KeyMap {
    /// An empty map for about `keys` keys.
    pub(super) fn with_capacity(keys: usize) -> Self {
        let per_shard = keys.div_ceil(SHARDS);
        KeyMap {
            shards: (0..SHARDS)
                .map(|_| Arc::new(HashMap::with_capacity(per_shard)))
                .collect(),
            len: 0,
        }
    }

    fn shard_of(hash: &[u8; 32]) -> usize {
        let [first, ..] = *hash;
        usize::from(first)
    }

    /// The key with this hash.
    pub(super) fn get(&self, hash: &[u8; 32]) -> Option<&Arc<VirtualKey>> {
        self.shards.get(Self::shard_of(hash))?.get(hash)
    }

    /// Adds or replaces a key (copying its shard first if another map shares it).
    pub(super) fn insert(&mut self, hash: [u8; 32], key: Arc<VirtualKey>) {
        if let Some(shard) = self.shards.get_mut(Self::shard_of(&hash)) {
            if Arc::make_mut(shard).insert(hash, key).is_none() {
                self.len += 1;
            }
        }
    }

    /// Removes a key (copying its shard first if another map shares it and holds it).
    pub(super) fn remove(&mut self, hash: &[u8; 32]) {
        if let Some(shard) = self.shards.get_mut(Self::shard_of(hash)) {
            if shard.contains_key(hash) && Arc::make_mut(shard).remove(hash).is_some() {
                self.len -= 1;
            }
        }
    }

    /// Number of keys.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Makes room for `additional` more keys.
    pub(super) fn reserve(&mut self, additional: usize) {
        let per_shard = additional.div_ceil(SHARDS);
        for shard in &mut self.shards {
            Arc::make_mut(shard).reserve(per_shard);
        }
    }

    /// Every key, in no order (tests).
    #[cfg(test)]
    pub(super) fn iter(&self) -> impl Iterator<Item = (&[u8; 32], &Arc<VirtualKey>)> {
        self.shards.iter().flat_map(|shard| shard.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(alias: &str) -> Arc<VirtualKey> {
        Arc::new(VirtualKey {
            alias: alias.into(),
            user_id: String::new(),
            team_id: String::new(),
            models: Vec::new(),
            blocked: false,
            expires_unix_ms: 0,
            budget: None,
            model_budgets: Vec::new(),
            limits: None,
            model_limits: Vec::new(),
        })
    }

    fn hash(first: u8, rest: u8) -> [u8; 32] {
        let mut hash = [rest; 32];
        hash[0] = first;
        hash
    }

    #[test]
    fn a_copy_shares_every_shard_until_one_is_changed() {
        let mut original = KeyMap::with_capacity(1000);
        for first in 0..=255u8 {
            for rest in 0..4u8 {
                original.insert(hash(first, rest), key("k"));
            }
        }
        assert_eq!(original.len(), 1024);
        let mut copy = original.clone();
        copy.insert(hash(7, 9), key("new"));
        copy.remove(&hash(8, 0));
        copy.remove(&hash(9, 200));
        copy.insert(hash(10, 1), key("changed"));
        assert_eq!(copy.len(), 1024);
        assert_eq!(original.len(), 1024);
        for (index, (mine, theirs)) in copy.shards.iter().zip(&original.shards).enumerate() {
            let touched = [7, 8, 10].contains(&index);
            assert_eq!(!Arc::ptr_eq(mine, theirs), touched, "shard {index}");
        }
        assert_eq!(copy.get(&hash(7, 9)).unwrap().alias, "new");
        assert!(original.get(&hash(7, 9)).is_none());
        assert!(copy.get(&hash(8, 0)).is_none());
        assert!(original.get(&hash(8, 0)).is_some());
        assert_eq!(copy.get(&hash(10, 1)).unwrap().alias, "changed");
        assert_eq!(original.get(&hash(10, 1)).unwrap().alias, "k");
        assert_eq!(copy.iter().count(), 1024);
    }
}
