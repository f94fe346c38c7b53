//! Bytes -> rank lookup, the encoder's hottest operation (once per piece, more when merging).
//!
//! Almost every token is short (97% of o200k's are at most 15 bytes): such a token is packed
//! with its length into a `u128` key, so the lookup hashes and compares two integers, with no
//! pointer to chase into a separately allocated key. The key is built from a few overlapping
//! loads of the bytes rather than by copying them into a buffer (a copy of variable length
//! costs a call and a stalled store-to-load forward, more than the hash lookup itself).
//! Longer tokens live in an ordinary map keyed by their bytes.
//!
//! The short keys sit in an open-addressing table of 32-byte entries (one cache line holds
//! two) with linear probing, at most half full: a lookup is usually one cache line (a general
//! map reads a line of control bytes, then the entry's line). The encoder hashes a key once
//! ([`hash`]) for both its own cache and this table.

use super::hugepages::HugeSlice;
use super::Rank;
use rustc_hash::FxHashMap;

/// The packed form of up to `MAX_PACKED` bytes (see [`pack`]).
pub type Key = u128;

/// Tokens of up to this many bytes are packed into a [`Key`].
pub const MAX_PACKED: usize = 15;

#[derive(Clone, Debug, Default)]
pub struct TokenMap {
    short: ShortTable,
    long: FxHashMap<Box<[u8]>, Rank>,
}

/// No packed key is this: a packed key's top byte is its length, at most `MAX_PACKED`.
const EMPTY: Key = Key::MAX;

#[derive(Clone, Copy, Debug)]
#[repr(C, align(32))]
struct Entry {
    key: Key,
    rank: Rank,
}

/// Packed key -> rank, open addressing with linear probing, at most half full.
#[derive(Clone, Debug, Default)]
struct ShortTable {
    /// A power of two of entries (or none); `EMPTY` keys mark free entries.
    entries: HugeSlice<Entry>,
    /// 64 - log2(entries.len()): the hash's top bits pick the home entry.
    shift: u32,
    len: usize,
}

/// A hash of a packed key (two multiplies; its top bits are the well-mixed ones).
#[inline(always)]
pub fn hash(key: Key) -> u64 {
    let (low, high) = (key as u64, (key >> 64) as u64);
    (low.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ high).wrapping_mul(0xc2b2_ae3d_27d4_eb4f)
}

impl ShortTable {
    #[inline(always)]
    fn home(&self, hash: u64) -> usize {
        (hash >> self.shift) as usize
    }

    #[inline(always)]
    fn get(&self, key: Key, hash: u64) -> Option<Rank> {
        if self.entries.is_empty() {
            return None;
        }
        let mask = self.entries.len() - 1;
        let mut i = self.home(hash);
        loop {
            let e = &self.entries[i];
            if e.key == key {
                return Some(e.rank);
            }
            if e.key == EMPTY {
                return None;
            }
            i = (i + 1) & mask;
        }
    }

    fn insert(&mut self, key: Key, rank: Rank) -> Option<Rank> {
        if (self.len + 1) * 2 > self.entries.len() {
            self.grow_to(self.entries.len().max(8) * 2);
        }
        let mask = self.entries.len() - 1;
        let mut i = self.home(hash(key));
        loop {
            let e = &mut self.entries[i];
            if e.key == key {
                return Some(std::mem::replace(&mut e.rank, rank));
            }
            if e.key == EMPTY {
                *e = Entry { key, rank };
                self.len += 1;
                return None;
            }
            i = (i + 1) & mask;
        }
    }

    /// Rebuilds with `n` (a power of two) entries.
    fn grow_to(&mut self, n: usize) {
        let free = Entry {
            key: EMPTY,
            rank: 0,
        };
        let old = std::mem::replace(&mut self.entries, HugeSlice::filled(n, free));
        self.shift = 64 - n.trailing_zeros();
        self.len = 0;
        for e in old.iter().filter(|e| e.key != EMPTY) {
            self.insert(e.key, e.rank);
        }
    }

    fn reserve(&mut self, more: usize) {
        let want = ((self.len + more) * 2).next_power_of_two();
        if want > self.entries.len() {
            self.grow_to(want);
        }
    }
}

#[inline(always)]
fn load64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

#[inline(always)]
fn load32(b: &[u8], at: usize) -> u64 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes")) as u64
}

/// Up to 7 bytes, little-endian and zero-padded, with the length in the top byte.
#[inline(always)]
fn pack_small(b: &[u8]) -> u64 {
    let n = b.len();
    debug_assert!(n < 8);
    let bytes = if n >= 4 {
        // Two overlapping 4-byte loads; the overlap holds the same bytes in both.
        load32(b, 0) | (load32(b, n - 4) << (8 * (n - 4)))
    } else if n > 0 {
        b[0] as u64 | ((b[n / 2] as u64) << (8 * (n / 2))) | ((b[n - 1] as u64) << (8 * (n - 1)))
    } else {
        0
    };
    bytes | ((n as u64) << 56)
}

/// The key of `bytes` if it has at most [`MAX_PACKED`] of them: bytes 0-7 in the low half
/// (zero-padded, the length in its top byte when shorter than 8), bytes 8-14 in the high half
/// with the length in its top byte. Distinct byte strings get distinct keys.
#[inline(always)]
pub fn pack(bytes: &[u8]) -> Option<Key> {
    let n = bytes.len();
    if n < 8 {
        return Some(pack_small(bytes) as Key);
    }
    if n > MAX_PACKED {
        return None;
    }
    let low = load64(bytes, 0);
    // The last 8 bytes, shifted so that only bytes 8.. remain.
    let high = if n > 8 {
        load64(bytes, n - 8) >> (8 * (16 - n))
    } else {
        0
    };
    Some(low as Key | (((high | ((n as u64) << 56)) as Key) << 64))
}

impl TokenMap {
    #[inline(always)]
    pub fn get(&self, bytes: &[u8]) -> Option<Rank> {
        match pack(bytes) {
            Some(k) => self.short.get(k, hash(k)),
            None => self.long.get(bytes).copied(),
        }
    }

    /// The rank of the bytes whose key is `key`, `hash` being [`hash`]`(key)`.
    #[inline(always)]
    pub fn get_packed(&self, key: Key, hash: u64) -> Option<Rank> {
        self.short.get(key, hash)
    }

    #[inline(always)]
    pub fn contains(&self, bytes: &[u8]) -> bool {
        self.get(bytes).is_some()
    }

    /// Inserts `bytes -> rank`; returns the rank they had before, if any.
    pub fn insert(&mut self, bytes: &[u8], rank: Rank) -> Option<Rank> {
        match pack(bytes) {
            Some(k) => self.short.insert(k, rank),
            None => self.long.insert(bytes.into(), rank),
        }
    }

    pub fn len(&self) -> usize {
        self.short.len + self.long.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn reserve(&mut self, n: usize) {
        self.short.reserve(n);
    }
}

impl FromIterator<(Vec<u8>, Rank)> for TokenMap {
    fn from_iter<I: IntoIterator<Item = (Vec<u8>, Rank)>>(iter: I) -> Self {
        let mut m = TokenMap::default();
        for (b, r) in iter {
            m.insert(&b, r);
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The key by the obvious (slow) route: copy the bytes, write the length.
    fn pack_by_copy(b: &[u8]) -> Option<Key> {
        if b.len() > MAX_PACKED {
            return None;
        }
        let mut buf = [0u8; 16];
        buf[..b.len()].copy_from_slice(b);
        buf[if b.len() < 8 { 7 } else { 15 }] = b.len() as u8;
        Some(Key::from_le_bytes(buf))
    }

    #[test]
    fn short_and_long_keys() {
        let mut m = TokenMap::default();
        m.insert(b"", 1);
        m.insert(b"a", 2);
        m.insert(b"a\0", 3); // must differ from "a": the length is part of the key
        m.insert(b"1234567", 4);
        m.insert(b"12345678", 5);
        m.insert(b"123456789abcdef", 6);
        m.insert(b"123456789abcdef0", 7);
        m.insert(b"1234567\0", 8);
        assert_eq!(m.get(b""), Some(1));
        assert_eq!(m.get(b"a"), Some(2));
        assert_eq!(m.get(b"a\0"), Some(3));
        assert_eq!(m.get(b"1234567"), Some(4));
        assert_eq!(m.get(b"12345678"), Some(5));
        assert_eq!(m.get(b"123456789abcdef"), Some(6));
        assert_eq!(m.get(b"123456789abcdef0"), Some(7));
        assert_eq!(m.get(b"1234567\0"), Some(8));
        assert_eq!(m.get(b"123456789"), None);
        assert_eq!(m.get(b"123456789abcdef01"), None);
        assert_eq!(m.len(), 8);
    }

    #[test]
    fn table_agrees_with_a_hash_map_through_growth() {
        let mut m = TokenMap::default();
        let mut reference = std::collections::HashMap::new();
        let mut x: u64 = 7;
        for i in 0..20_000u32 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let len = (x >> 60) as usize; // 0..=15: all packed
            let bytes = &x.to_le_bytes().repeat(2)[..len];
            assert_eq!(m.insert(bytes, i), reference.insert(bytes.to_vec(), i));
        }
        assert_eq!(m.len(), reference.len());
        for (bytes, rank) in &reference {
            assert_eq!(m.get(bytes), Some(*rank));
        }
        assert_eq!(m.get(b"not a key here"), None);
    }

    proptest::proptest! {
        #[test]
        fn pack_is_the_copied_bytes_and_length(b in proptest::collection::vec(
            proptest::prelude::any::<u8>(), 0..20)) {
            proptest::prop_assert_eq!(pack(&b), pack_by_copy(&b));
        }
    }
}
