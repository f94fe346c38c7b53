//! Bytes -> rank lookup, the encoder's hottest operation (once per piece, more when merging).
//!
//! Most tokens are short: a token of up to 7 bytes is packed with its length into a `u64` key,
//! so the lookup hashes one integer and compares one integer, with no pointer to chase into a
//! separately allocated key. Longer tokens live in an ordinary map keyed by their bytes.

use super::Rank;
use rustc_hash::FxHashMap;

#[derive(Clone, Debug, Default)]
pub struct TokenMap {
    short: FxHashMap<u64, Rank>,
    long: FxHashMap<Box<[u8]>, Rank>,
}

#[inline(always)]
fn pack(bytes: &[u8]) -> Option<u64> {
    if bytes.len() > 7 {
        return None;
    }
    let mut buf = [0u8; 8];
    buf[..bytes.len()].copy_from_slice(bytes);
    buf[7] = bytes.len() as u8;
    Some(u64::from_le_bytes(buf))
}

impl TokenMap {
    #[inline(always)]
    pub fn get(&self, bytes: &[u8]) -> Option<Rank> {
        match pack(bytes) {
            Some(k) => self.short.get(&k).copied(),
            None => self.long.get(bytes).copied(),
        }
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

    #[test]
    fn short_and_long_keys() {
        let mut m = TokenMap::default();
        m.insert(b"", 1);
        m.insert(b"a", 2);
        m.insert(b"a\0", 3); // must differ from "a": the length is part of the key
        m.insert(b"1234567", 4);
        m.insert(b"12345678", 5);
        assert_eq!(m.get(b""), Some(1));
        assert_eq!(m.get(b"a"), Some(2));
        assert_eq!(m.get(b"a\0"), Some(3));
        assert_eq!(m.get(b"1234567"), Some(4));
        assert_eq!(m.get(b"12345678"), Some(5));
        assert_eq!(m.get(b"123456789"), None);
        assert_eq!(m.len(), 5);
    }
}
