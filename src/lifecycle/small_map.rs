//! An ordered map sized to what it holds, for a run's per-participant facts.
//!
//! Most runs have a handful of participants, a few have thousands. An `imbl` map suits the
//! large ones (a report of one site among 10,000 copies a path, not the map), but even
//! two entries take a whole node with room for six. [`SmallMap`] holds up to [`FEW`]
//! entries in one shared, exactly sized, sorted slice and becomes an `imbl` map past
//! that, so a small run's map costs what it holds and a large run's keeps the
//! persistent map's costs. Either form is copied by a pointer; a change copies the small
//! slice (as changing an `imbl` node copies the node). It reads and serializes as a plain
//! ordered map (the same bytes as the `imbl` map it replaces).
//!
//! [`SparseSet`] and [`SparseMap`] are for the sets and maps that nearly every job keeps
//! empty: one pointer and no allocation while empty, an `imbl` set or map once not.

use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;

use imbl::OrdMap;
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The most entries held in the small form. A change then copies the whole slice (up to
/// 32 entries, where the `imbl` map copies a path of two or three nodes of six), and the
/// slice takes half the bytes: a finished job of ten sites 3,269 bytes against 6,496 with
/// the `imbl` form past eight entries (`cargo bench --bench state`, memory case
/// `finished-10000-ten-sites`).
pub const FEW: usize = 32;

/// See the module documentation.
#[derive(Clone)]
pub struct SmallMap<K, V>(Repr<K, V>);

/// Two variants, not three: the slice's pointer is never null, so the compiler tells
/// them apart by it and the whole takes 16 bytes (a run holds four of these maps; with
/// an `Empty` variant of its own, each took 24).
#[derive(Clone)]
enum Repr<K, V> {
    /// One to [`FEW`] entries, sorted by key.
    Few(Arc<[(K, V)]>),
    /// No entries (`None`: no allocation), or more than [`FEW`].
    Other(Option<Box<OrdMap<K, V>>>),
}

impl<K, V> Default for SmallMap<K, V> {
    fn default() -> Self {
        SmallMap(Repr::Other(None))
    }
}

impl<K: Ord + Clone, V: Clone> SmallMap<K, V> {
    /// No entries.
    pub fn new() -> Self {
        SmallMap::default()
    }

    /// How many entries.
    pub fn len(&self) -> usize {
        match &self.0 {
            Repr::Other(None) => 0,
            Repr::Few(few) => few.len(),
            Repr::Other(Some(map)) => map.len(),
        }
    }

    /// True without entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The value under `key`.
    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        match &self.0 {
            Repr::Other(None) => None,
            Repr::Few(few) => few
                .binary_search_by(|(k, _)| k.borrow().cmp(key))
                .ok()
                .map(|i| &few[i].1),
            Repr::Other(Some(map)) => map.get(key),
        }
    }

    /// Whether `key` has a value.
    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.get(key).is_some()
    }

    /// Sets the value under `key`, returning the one it replaces.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        match &mut self.0 {
            Repr::Other(None) => {
                self.0 = Repr::Few(Arc::from([(key, value)]));
                None
            }
            Repr::Few(few) => match few.binary_search_by(|(k, _)| k.cmp(&key)) {
                // Copied first when shared (`make_mut`: one allocation at the slice's
                // length), changed in place when not.
                Ok(i) => Some(std::mem::replace(&mut Arc::make_mut(few)[i].1, value)),
                Err(_) if few.len() == FEW => {
                    let mut map: OrdMap<K, V> = few.iter().cloned().collect();
                    map.insert(key, value);
                    self.0 = Repr::Other(Some(Box::new(map)));
                    None
                }
                Err(i) => {
                    *few = few[..i]
                        .iter()
                        .cloned()
                        .chain(std::iter::once((key, value)))
                        .chain(few[i..].iter().cloned())
                        .collect();
                    None
                }
            },
            Repr::Other(Some(map)) => map.insert(key, value),
        }
    }

    /// Makes this map share `other`'s slice when both are in the small form and hold the
    /// same entries (a run whose start answers repeat its deploy answers keeps one
    /// slice). At most [`FEW`] comparisons; the large form is left alone, so a large run
    /// pays nothing per answer. True when this call made them share (false when they
    /// already did, or differ).
    pub fn share_if_equal(&mut self, other: &SmallMap<K, V>) -> bool
    where
        V: PartialEq,
    {
        match (&self.0, &other.0) {
            (Repr::Few(mine), Repr::Few(theirs)) => {
                if Arc::ptr_eq(mine, theirs) || mine[..] != theirs[..] {
                    return false;
                }
                self.0 = Repr::Few(theirs.clone());
                true
            }
            _ => false,
        }
    }

    /// True when both hold the very same entries in memory (so they are equal without
    /// a look at them).
    pub fn shares_entries_with(&self, other: &SmallMap<K, V>) -> bool {
        match (&self.0, &other.0) {
            (Repr::Few(mine), Repr::Few(theirs)) => Arc::ptr_eq(mine, theirs),
            _ => false,
        }
    }

    /// The entries in key order.
    pub fn iter(&self) -> Iter<'_, K, V> {
        match &self.0 {
            Repr::Other(None) => Iter::Few([].iter()),
            Repr::Few(few) => Iter::Few(few.iter()),
            Repr::Other(Some(map)) => Iter::Many(map.iter()),
        }
    }

    /// The keys in order.
    pub fn keys(&self) -> impl Iterator<Item = &K> + '_ {
        self.iter().map(|(k, _)| k)
    }

    /// The values in key order.
    pub fn values(&self) -> impl Iterator<Item = &V> + '_ {
        self.iter().map(|(_, v)| v)
    }
}

/// The entries of a [`SmallMap`] in key order.
pub enum Iter<'a, K, V> {
    /// Of the small form.
    Few(std::slice::Iter<'a, (K, V)>),
    /// Of the `imbl` form.
    Many(imbl::ordmap::Iter<'a, K, V, imbl::shared_ptr::DefaultSharedPtr>),
}

impl<'a, K: Ord, V> Iterator for Iter<'a, K, V> {
    type Item = (&'a K, &'a V);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Iter::Few(few) => few.next().map(|(k, v)| (k, v)),
            Iter::Many(many) => many.next(),
        }
    }
}

impl<'a, K: Ord + Clone, V: Clone> IntoIterator for &'a SmallMap<K, V> {
    type Item = (&'a K, &'a V);
    type IntoIter = Iter<'a, K, V>;

    fn into_iter(self) -> Iter<'a, K, V> {
        self.iter()
    }
}

impl<K: Ord + Clone, V: Clone> SmallMap<K, V> {
    /// The map of `entries` in any order; of equal keys the last wins, as inserting them
    /// in turn would. Entries already sorted without repeats (what a snapshot holds) are
    /// taken as they are: one slice built, nothing sorted or copied twice.
    fn from_entries(mut entries: Vec<(K, V)>) -> Self {
        if !entries.windows(2).all(|pair| pair[0].0 < pair[1].0) {
            // Stable, so equal keys stay in the order given; each run of them then
            // keeps its last value in its first slot.
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            entries.dedup_by(|later, kept| {
                let same = later.0 == kept.0;
                if same {
                    std::mem::swap(later, kept);
                }
                same
            });
        }
        match entries.len() {
            0 => SmallMap::new(),
            n if n <= FEW => SmallMap(Repr::Few(Arc::from(entries))),
            _ => SmallMap(Repr::Other(Some(Box::new(entries.into_iter().collect())))),
        }
    }
}

impl<K: Ord + Clone, V: Clone> FromIterator<(K, V)> for SmallMap<K, V> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(items: I) -> Self {
        SmallMap::from_entries(items.into_iter().collect())
    }
}

/// The traits a map type reads through its `len` and `iter`: equal when the entries are
/// (whatever the form), `Debug` and serialization as the plain map.
macro_rules! map_read_traits {
    ($map:ident) => {
        impl<K: Ord + Clone, V: Clone + PartialEq> PartialEq for $map<K, V> {
            fn eq(&self, other: &Self) -> bool {
                self.shares_entries_with(other)
                    || (self.len() == other.len() && self.iter().eq(other.iter()))
            }
        }

        impl<K: Ord + Clone, V: Clone + Eq> Eq for $map<K, V> {}

        impl<K: Ord + Clone + fmt::Debug, V: Clone + fmt::Debug> fmt::Debug for $map<K, V> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_map().entries(self.iter()).finish()
            }
        }

        impl<K: Ord + Clone + Serialize, V: Clone + Serialize> Serialize for $map<K, V> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_map(self.iter())
            }
        }
    };
}

/// A set over a map of unit values (`$map<K, ()>`): the methods both set types share,
/// collecting and reading from a plain list, equality of members, `Debug`, and
/// serialization as the plain ordered set (the same bytes as an `imbl` set).
macro_rules! set_over_map {
    ($set:ident, $map:ident) => {
        impl<K: Ord + Clone> $set<K> {
            /// No members.
            pub fn new() -> Self {
                $set($map::new())
            }

            /// How many members.
            pub fn len(&self) -> usize {
                self.0.len()
            }

            /// True without members.
            pub fn is_empty(&self) -> bool {
                self.0.is_empty()
            }

            /// Whether `key` is a member.
            pub fn contains<Q>(&self, key: &Q) -> bool
            where
                K: Borrow<Q>,
                Q: Ord + ?Sized,
            {
                self.0.get(key).is_some()
            }

            /// Adds `key`; true when it was not a member.
            pub fn insert(&mut self, key: K) -> bool {
                self.0.insert(key, ()).is_none()
            }

            /// The members in order.
            pub fn iter(&self) -> impl Iterator<Item = &K> + '_ {
                self.0.keys()
            }
        }

        impl<K: Ord + Clone> FromIterator<K> for $set<K> {
            fn from_iter<I: IntoIterator<Item = K>>(members: I) -> Self {
                $set(members.into_iter().map(|k| (k, ())).collect())
            }
        }

        impl<'de, K: Ord + Clone + Deserialize<'de>> Deserialize<'de> for $set<K> {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let members = Vec::<K>::deserialize(deserializer)?;
                Ok(members.into_iter().collect())
            }
        }

        impl<K: Ord + Clone> PartialEq for $set<K> {
            fn eq(&self, other: &Self) -> bool {
                self.len() == other.len() && self.iter().eq(other.iter())
            }
        }

        impl<K: Ord + Clone> Eq for $set<K> {}

        impl<K: Ord + Clone + fmt::Debug> fmt::Debug for $set<K> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_set().entries(self.iter()).finish()
            }
        }

        impl<K: Ord + Clone + Serialize> Serialize for $set<K> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_seq(self.iter())
            }
        }
    };
}

map_read_traits!(SmallMap);
map_read_traits!(SparseMap);
set_over_map!(SmallSet, SmallMap);
set_over_map!(SparseSet, SparseMap);

impl<'de, K, V> Deserialize<'de> for SmallMap<K, V>
where
    K: Ord + Clone + Deserialize<'de>,
    V: Clone + Deserialize<'de>,
{
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Entries<K, V>(std::marker::PhantomData<(K, V)>);

        impl<'de, K, V> Visitor<'de> for Entries<K, V>
        where
            K: Ord + Clone + Deserialize<'de>,
            V: Clone + Deserialize<'de>,
        {
            type Value = SmallMap<K, V>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
                // Room for what the map says it holds, up to one past the small form (a
                // hostile count reserves no more than that).
                let mut entries = Vec::with_capacity(access.size_hint().unwrap_or(0).min(FEW + 1));
                while let Some(entry) = access.next_entry()? {
                    entries.push(entry);
                }
                Ok(SmallMap::from_entries(entries))
            }
        }

        deserializer.deserialize_map(Entries(std::marker::PhantomData))
    }
}

/// A set sized to what it holds: a [`SmallMap`] without values, read and serialized as a
/// plain ordered set (the same bytes as the `imbl` set it replaces).
#[derive(Clone, Default)]
pub struct SmallSet<K>(SmallMap<K, ()>);

/// A set that is nearly always empty (a run's lapsed, stopped and left-out sites): a
/// [`SparseMap`] without values, one pointer and no allocation while empty, where an
/// `imbl` set takes three words in every job whether or not it holds anything. It reads
/// and serializes as the plain ordered set (the same bytes as the `imbl` set it
/// replaces), and an emptied one gives its allocation back.
#[derive(Clone, Default)]
pub struct SparseSet<K>(SparseMap<K, ()>);

impl<K: Ord + Clone> SparseSet<K> {
    /// Takes `key` out; true when it was a member.
    pub fn remove<Q>(&mut self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.0.remove(key).is_some()
    }

    /// Takes every member out.
    pub fn clear(&mut self) {
        self.0.clear();
    }
}

impl<K: Ord + Clone> Extend<K> for SparseSet<K> {
    fn extend<I: IntoIterator<Item = K>>(&mut self, members: I) {
        self.0.extend(members.into_iter().map(|k| (k, ())));
    }
}

/// A map that is nearly always empty (a run's reservation tokens, held only between the
/// dispatch and the start): one pointer and no allocation while empty, an `imbl` map
/// behind an `Arc` once not (copied by a count, changed by copying the path). It reads
/// and serializes as the plain ordered map, and an emptied one gives its allocation back.
#[derive(Clone, Default)]
pub struct SparseMap<K, V>(Option<Arc<OrdMap<K, V>>>);

impl<K: Ord + Clone, V: Clone> SparseMap<K, V> {
    /// No entries.
    pub fn new() -> Self {
        SparseMap(None)
    }

    /// How many entries.
    pub fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |map| map.len())
    }

    /// True without entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The value under `key`.
    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.0.as_ref()?.get(key)
    }

    /// True when both hold the very same map in memory.
    pub fn shares_entries_with(&self, other: &SparseMap<K, V>) -> bool {
        match (&self.0, &other.0) {
            (Some(mine), Some(theirs)) => Arc::ptr_eq(mine, theirs),
            _ => false,
        }
    }

    /// The entries in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> + '_ {
        self.0.iter().flat_map(|map| map.iter())
    }

    /// The keys in order.
    pub fn keys(&self) -> impl Iterator<Item = &K> + '_ {
        self.iter().map(|(k, _)| k)
    }

    /// Sets `key` to `value`; the value it replaced, if any.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        Arc::make_mut(self.0.get_or_insert_with(Default::default)).insert(key, value)
    }

    /// Takes `key` out; its value, if it was there.
    pub fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        let map = Arc::make_mut(self.0.as_mut()?);
        let removed = map.remove(key);
        if map.is_empty() {
            self.0 = None;
        }
        removed
    }

    /// Takes every entry out.
    pub fn clear(&mut self) {
        self.0 = None;
    }
}

impl<K: Ord + Clone, V: Clone> Extend<(K, V)> for SparseMap<K, V> {
    fn extend<I: IntoIterator<Item = (K, V)>>(&mut self, entries: I) {
        for (key, value) in entries {
            self.insert(key, value);
        }
    }
}

impl<K: Ord + Clone, V: Clone> FromIterator<(K, V)> for SparseMap<K, V> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(entries: I) -> Self {
        let map: OrdMap<K, V> = entries.into_iter().collect();
        SparseMap((!map.is_empty()).then(|| Arc::new(map)))
    }
}

impl<'a, K: Ord + Clone, V: Clone> IntoIterator for &'a SparseMap<K, V> {
    type Item = (&'a K, &'a V);
    type IntoIter = std::iter::FlatMap<
        std::option::Iter<'a, Arc<OrdMap<K, V>>>,
        imbl::ordmap::Iter<'a, K, V, imbl::shared_ptr::DefaultSharedPtr>,
        fn(
            &'a Arc<OrdMap<K, V>>,
        ) -> imbl::ordmap::Iter<'a, K, V, imbl::shared_ptr::DefaultSharedPtr>,
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().flat_map(|map| map.iter())
    }
}

impl<'de, K, V> Deserialize<'de> for SparseMap<K, V>
where
    K: Ord + Clone + Deserialize<'de>,
    V: Clone + Deserialize<'de>,
{
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let map: OrdMap<K, V> = crate::lifecycle::state::cautious::map(deserializer)?;
        Ok(SparseMap((!map.is_empty()).then(|| Arc::new(map))))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    #[test]
    fn a_map_takes_two_words() {
        assert_eq!(std::mem::size_of::<SmallMap<String, u64>>(), 16);
        assert_eq!(std::mem::size_of::<SparseSet<String>>(), 8);
    }

    use super::*;

    proptest! {
        /// Any run of inserts reads as the same inserts into a `BTreeMap`, in either
        /// form, and a copy taken along the way keeps what it held.
        #[test]
        fn reads_as_a_btreemap(
            ops in proptest::collection::vec((0u8..24, any::<u16>()), 0..40),
            copy_at in 0usize..40,
        ) {
            let mut map: SmallMap<String, u16> = SmallMap::new();
            let mut model: BTreeMap<String, u16> = BTreeMap::new();
            let mut copy = None;
            for (step, (k, v)) in ops.into_iter().enumerate() {
                if step == copy_at {
                    copy = Some((map.clone(), model.clone()));
                }
                let key = format!("site-{k}");
                prop_assert_eq!(map.insert(key.clone(), v), model.insert(key, v));
                prop_assert_eq!(map.len(), model.len());
                prop_assert!(map.iter().eq(model.iter()));
                for k in 0..24 {
                    let key = format!("site-{k}");
                    prop_assert_eq!(map.get(key.as_str()), model.get(&key));
                }
            }
            if let Some((copy, model)) = copy {
                prop_assert!(copy.iter().eq(model.iter()));
            }
            // The bytes are those of the imbl map it replaces, and they read back.
            let imbl_map: OrdMap<String, u16> = model.clone().into_iter().collect();
            let bytes = rmp_serde::to_vec(&map).unwrap();
            prop_assert_eq!(&bytes, &rmp_serde::to_vec(&imbl_map).unwrap());
            let back: SmallMap<String, u16> = rmp_serde::from_slice(&bytes).unwrap();
            prop_assert_eq!(&back, &map);
        }

        /// Collected, or read from a map's bytes, in any order and with repeated keys,
        /// the map holds what inserting the entries in turn into a `BTreeMap` holds (the
        /// last of equal keys wins), in the form its size calls for; a set likewise.
        #[test]
        fn built_at_once_as_inserted_in_turn(
            entries in proptest::collection::vec((0u8..48, any::<u16>()), 0..80),
            sorted in any::<bool>(),
        ) {
            let mut entries: Vec<(String, u16)> =
                entries.into_iter().map(|(k, v)| (format!("site-{k:02}"), v)).collect();
            if sorted {
                // The snapshot's case: in key order (repeats still possible).
                entries.sort_by(|a, b| a.0.cmp(&b.0));
            }
            let mut model: BTreeMap<String, u16> = BTreeMap::new();
            for (k, v) in &entries {
                model.insert(k.clone(), *v);
            }
            let mut bytes = Vec::new();
            rmp::encode::write_map_len(&mut bytes, entries.len() as u32).unwrap();
            for (k, v) in &entries {
                rmp::encode::write_str(&mut bytes, k).unwrap();
                rmp::encode::write_uint(&mut bytes, u64::from(*v)).unwrap();
            }
            let collected: SmallMap<String, u16> = entries.iter().cloned().collect();
            let read: SmallMap<String, u16> = rmp_serde::from_slice(&bytes).unwrap();
            for map in [&collected, &read] {
                prop_assert!(map.iter().eq(model.iter()));
                let form_fits = match &map.0 {
                    Repr::Other(None) => model.is_empty(),
                    Repr::Few(few) => few.len() == model.len() && model.len() <= FEW,
                    Repr::Other(Some(many)) => many.len() == model.len() && model.len() > FEW,
                };
                prop_assert!(form_fits);
            }
            let members: SmallSet<String> = entries.iter().map(|(k, _)| k.clone()).collect();
            prop_assert!(members.iter().eq(model.keys()));
        }

        /// Sharing changes nothing a reader sees, and shares only equal small maps.
        #[test]
        fn sharing_keeps_the_entries(
            a in proptest::collection::btree_map(0u8..12, any::<bool>(), 0..12),
            b in proptest::collection::btree_map(0u8..12, any::<bool>(), 0..12),
        ) {
            let map = |m: &BTreeMap<u8, bool>| -> SmallMap<String, bool> {
                m.iter().map(|(k, v)| (format!("site-{k}"), *v)).collect()
            };
            let mut mine = map(&a);
            let theirs = map(&b);
            let shared = mine.share_if_equal(&theirs);
            prop_assert!(mine.iter().eq(map(&a).iter()));
            let small = (1..=FEW).contains(&a.len());
            prop_assert_eq!(shared, small && a == b);
            if let (Repr::Few(x), Repr::Few(y)) = (&mine.0, &theirs.0) {
                prop_assert_eq!(Arc::ptr_eq(x, y), shared);
            }
            // Once shared, a second call has nothing to do.
            prop_assert!(!mine.share_if_equal(&theirs));
        }

        /// The set reads and serializes as an `imbl` set of the same members.
        #[test]
        fn set_reads_as_an_imbl_set(members in proptest::collection::vec(0u8..24, 0..40)) {
            let mut set: SmallSet<String> = SmallSet::new();
            let mut model: imbl::OrdSet<String> = imbl::OrdSet::new();
            for m in members {
                let key = format!("report-{m}");
                prop_assert_eq!(set.insert(key.clone()), model.insert(key).is_none());
                prop_assert_eq!(set.len(), model.len());
                prop_assert!(set.iter().eq(model.iter()));
            }
            for m in 0..24 {
                let key = format!("report-{m}");
                prop_assert_eq!(set.contains(key.as_str()), model.contains(&key));
            }
            let bytes = rmp_serde::to_vec(&set).unwrap();
            prop_assert_eq!(&bytes, &rmp_serde::to_vec(&model).unwrap());
            let back: SmallSet<String> = rmp_serde::from_slice(&bytes).unwrap();
            prop_assert_eq!(&back, &set);
        }
        /// The sparse set reads and serializes as an `imbl` set of the same members,
        /// through inserts, removes and clears, and holds nothing once emptied.
        #[test]
        fn sparse_set_reads_as_an_imbl_set(
            ops in proptest::collection::vec((0u8..3, 0u8..12), 0..40),
        ) {
            let mut set: SparseSet<String> = SparseSet::new();
            let mut model: imbl::OrdSet<String> = imbl::OrdSet::new();
            for (op, m) in ops {
                let key = format!("site-{m}");
                match op {
                    0 => prop_assert_eq!(set.insert(key.clone()), model.insert(key).is_none()),
                    1 => prop_assert_eq!(set.remove(key.as_str()), model.remove(&key).is_some()),
                    _ => {
                        set.clear();
                        model.clear();
                    }
                }
                prop_assert_eq!(set.len(), model.len());
                prop_assert!(set.iter().eq(model.iter()));
                prop_assert_eq!(set.0 .0.is_none(), model.is_empty());
                for m in 0..12 {
                    let key = format!("site-{m}");
                    prop_assert_eq!(set.contains(key.as_str()), model.contains(&key));
                }
            }
            let bytes = rmp_serde::to_vec(&set).unwrap();
            prop_assert_eq!(&bytes, &rmp_serde::to_vec(&model).unwrap());
            let back: SparseSet<String> = rmp_serde::from_slice(&bytes).unwrap();
            prop_assert_eq!(&back, &set);
            prop_assert_eq!(back.0 .0.is_none(), model.is_empty());
        }

        /// The sparse map reads and serializes as an `imbl` map of the same entries.
        #[test]
        fn sparse_map_reads_as_an_imbl_map(
            ops in proptest::collection::vec((0u8..3, 0u8..12, any::<u16>()), 0..40),
        ) {
            let mut map: SparseMap<String, u16> = SparseMap::new();
            let mut model: OrdMap<String, u16> = OrdMap::new();
            for (op, k, v) in ops {
                let key = format!("site-{k}");
                match op {
                    0 => prop_assert_eq!(map.insert(key.clone(), v), model.insert(key, v)),
                    1 => prop_assert_eq!(map.remove(key.as_str()), model.remove(&key)),
                    _ => {
                        map.clear();
                        model.clear();
                    }
                }
                prop_assert_eq!(map.len(), model.len());
                prop_assert!(map.iter().eq(model.iter()));
                prop_assert_eq!(map.0.is_none(), model.is_empty());
                for k in 0..12 {
                    let key = format!("site-{k}");
                    prop_assert_eq!(map.get(key.as_str()), model.get(&key));
                }
            }
            let bytes = rmp_serde::to_vec(&map).unwrap();
            prop_assert_eq!(&bytes, &rmp_serde::to_vec(&model).unwrap());
            let back: SparseMap<String, u16> = rmp_serde::from_slice(&bytes).unwrap();
            prop_assert_eq!(&back, &map);
        }
    }
}
