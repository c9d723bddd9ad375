//! An ordered map held in one exactly sized, sorted slice, for maps made once and only
//! read after (a job's `resource_spec`).
//!
//! A `BTreeMap` takes a whole node with room for eleven entries even for one: a
//! `resource_spec` of one site with one amount took 931 bytes per job (a 544-byte node
//! of the outer map, a 368-byte node of the inner one), more than a third of a queued
//! job. [`FlatMap`] holds what it holds. It reads and serializes as a plain map, with
//! the same bytes as the `BTreeMap` it replaces: entries in key order, and a key given
//! twice keeps its last value.

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// See the module documentation.
#[derive(Clone, PartialEq)]
pub struct FlatMap<K, V>(Box<[(K, V)]>);

impl<K, V> Default for FlatMap<K, V> {
    fn default() -> Self {
        FlatMap(Box::new([]))
    }
}

impl<K: Ord, V> FlatMap<K, V> {
    /// No entries.
    pub fn new() -> Self {
        FlatMap::default()
    }

    /// How many entries.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The value of `key`.
    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        let at = self.0.binary_search_by(|(k, _)| k.borrow().cmp(key)).ok()?;
        Some(&self.0[at].1)
    }

    /// The entries in key order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (&K, &V)> + ExactSizeIterator {
        self.0.iter().map(|(k, v)| (k, v))
    }

    /// The values in key order.
    pub fn values(&self) -> impl DoubleEndedIterator<Item = &V> + ExactSizeIterator {
        self.0.iter().map(|(_, v)| v)
    }

    /// The map of `entries` as given in order: sorted by key, a repeated key keeping its
    /// last value (as inserting them one by one into a `BTreeMap` would), the slice sized
    /// to what is left.
    fn of_entries(mut entries: Vec<(K, V)>) -> Self {
        if !entries.is_sorted_by(|a, b| a.0 < b.0) {
            // Reversed, then sorted stably: the first of equal keys is the last given.
            entries.reverse();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            entries.dedup_by(|later, kept| later.0 == kept.0);
        }
        FlatMap(entries.into_boxed_slice())
    }
}

impl<K: Ord, V> FromIterator<(K, V)> for FlatMap<K, V> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(entries: I) -> Self {
        FlatMap::of_entries(entries.into_iter().collect())
    }
}

impl<K: Ord, V> From<BTreeMap<K, V>> for FlatMap<K, V> {
    fn from(map: BTreeMap<K, V>) -> Self {
        FlatMap(map.into_iter().collect())
    }
}

impl<K: Ord, V, const N: usize> From<[(K, V); N]> for FlatMap<K, V> {
    fn from(entries: [(K, V); N]) -> Self {
        FlatMap::of_entries(Vec::from(entries))
    }
}

impl<K: Ord + Borrow<Q>, Q: Ord + ?Sized, V> std::ops::Index<&Q> for FlatMap<K, V> {
    type Output = V;
    /// The value of `key`; panics when it has none (as `BTreeMap`'s index does).
    fn index(&self, key: &Q) -> &V {
        self.get(key).expect("no entry for the key in the FlatMap")
    }
}

impl<'a, K: Ord, V> IntoIterator for &'a FlatMap<K, V> {
    type Item = (&'a K, &'a V);
    type IntoIter = std::iter::Map<std::slice::Iter<'a, (K, V)>, fn(&'a (K, V)) -> (&'a K, &'a V)>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(k, v)| (k, v))
    }
}

impl<K: fmt::Debug, V: fmt::Debug> fmt::Debug for FlatMap<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, v)| (k, v)))
            .finish()
    }
}

impl<K: Serialize, V: Serialize> Serialize for FlatMap<K, V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(k, v)| (k, v)))
    }
}

impl<'de, K, V> Deserialize<'de> for FlatMap<K, V>
where
    K: Ord + Deserialize<'de>,
    V: Deserialize<'de>,
{
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Entries<K, V>(PhantomData<(K, V)>);
        impl<'de, K, V> Visitor<'de> for Entries<K, V>
        where
            K: Ord + Deserialize<'de>,
            V: Deserialize<'de>,
        {
            type Value = FlatMap<K, V>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                // Room for what the header claims only up to a bound: a hostile header
                // claims four billion entries in five bytes.
                let room = map.size_hint().unwrap_or(0).min(4096);
                let mut entries = Vec::with_capacity(room);
                while let Some(entry) = map.next_entry()? {
                    entries.push(entry);
                }
                Ok(FlatMap::of_entries(entries))
            }
        }
        deserializer.deserialize_map(Entries(PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any entries, in any order and with repeated keys, make the map a `BTreeMap`
        /// makes of them: the same lookups, the same order, the same bytes in MessagePack
        /// and JSON, and the bytes read back into the same map.
        #[test]
        fn reads_and_writes_as_a_btree_map(
            entries in proptest::collection::vec(("[a-e]{0,2}", any::<u16>()), 0..24),
            probe in "[a-e]{0,2}",
        ) {
            let model: BTreeMap<String, u16> = entries.iter().cloned().collect();
            let map: FlatMap<String, u16> = entries.iter().cloned().collect();
            prop_assert_eq!(map.len(), model.len());
            prop_assert_eq!(map.is_empty(), model.is_empty());
            prop_assert_eq!(map.get(probe.as_str()), model.get(probe.as_str()));
            prop_assert!(map.iter().eq(model.iter()));
            prop_assert!(map.iter().rev().eq(model.iter().rev()));
            prop_assert_eq!(&map, &FlatMap::from(model.clone()));
            let packed = rmp_serde::to_vec(&map).unwrap();
            prop_assert_eq!(&packed, &rmp_serde::to_vec(&model).unwrap());
            prop_assert_eq!(&rmp_serde::from_slice::<FlatMap<String, u16>>(&packed).unwrap(), &map);
            let json = serde_json::to_string(&map).unwrap();
            prop_assert_eq!(&json, &serde_json::to_string(&model).unwrap());
            prop_assert_eq!(&serde_json::from_str::<FlatMap<String, u16>>(&json).unwrap(), &map);
            prop_assert_eq!(format!("{map:?}"), format!("{model:?}"));
        }

        /// A map given with repeated or unordered keys reads as a `BTreeMap` reads it.
        #[test]
        fn repeated_keys_read_as_a_btree_map_reads_them(
            entries in proptest::collection::vec(("[a-c]", any::<u8>()), 0..12),
        ) {
            let body: Vec<String> = entries.iter().map(|(k, v)| format!("{k:?}:{v}")).collect();
            let json = format!("{{{}}}", body.join(","));
            let model: BTreeMap<String, u8> = serde_json::from_str(&json).unwrap();
            let map: FlatMap<String, u8> = serde_json::from_str(&json).unwrap();
            prop_assert!(map.iter().eq(model.iter()));
        }
    }

    #[test]
    fn a_hostile_length_reserves_no_more_than_the_bytes_hold() {
        // A map header claiming 2^32 - 1 entries, then nothing.
        let bytes = [0xdf, 0xff, 0xff, 0xff, 0xff];
        assert!(rmp_serde::from_slice::<FlatMap<String, u8>>(&bytes).is_err());
        assert!(serde_json::from_str::<FlatMap<String, u8>>("[]").is_err());
    }
}
