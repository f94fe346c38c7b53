//! Bytes -> rank lookup, the encoder's hottest operation (once per piece, more when merging).
//!
//! Almost every token is short (97% of o200k's are at most 15 bytes): such a token is packed
//! with its length into a `u128` key, so the lookup hashes and compares two integers, with no
//! pointer to chase into a separately allocated key. The key is built from a few overlapping
//! loads of the bytes rather than by copying them into a buffer (a copy of variable length
//! costs a call and a stalled store-to-load forward, more than the hash lookup itself).
//! Longer tokens live in an ordinary map keyed by their bytes.

use super::Rank;
use rustc_hash::FxHashMap;

/// The packed form of up to `MAX_PACKED` bytes (see [`pack`]).
pub type Key = u128;

/// Tokens of up to this many bytes are packed into a [`Key`].
pub const MAX_PACKED: usize = 15;

#[derive(Clone, Debug, Default)]
pub struct TokenMap {
    short: FxHashMap<Key, Rank>,
    long: FxHashMap<Box<[u8]>, Rank>,
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
            Some(k) => self.short.get(&k).copied(),
            None => self.long.get(bytes).copied(),
        }
    }

    /// The rank of the bytes whose key is `key`.
    #[inline(always)]
    pub fn get_packed(&self, key: Key) -> Option<Rank> {
        self.short.get(&key).copied()
    }

    /// The rank of `bytes` (longer than [`MAX_PACKED`]).
    #[inline(always)]
    pub fn get_long(&self, bytes: &[u8]) -> Option<Rank> {
        self.long.get(bytes).copied()
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
        self.short.len() + self.long.len()
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

    proptest::proptest! {
        #[test]
        fn pack_is_the_copied_bytes_and_length(b in proptest::collection::vec(
            proptest::prelude::any::<u8>(), 0..20)) {
            proptest::prop_assert_eq!(pack(&b), pack_by_copy(&b));
        }
    }
}
