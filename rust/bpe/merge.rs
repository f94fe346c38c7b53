//! Merging the bytes of one piece by rank, as tiktoken does: repeatedly join the adjacent pair
//! whose concatenation has the lowest rank (the leftmost such pair on ties) until no adjacent
//! pair is a token.
//!
//! Short pieces (almost all of them in real text) use a flat array rescan: a few cache lines,
//! no allocation beyond two small vectors. Long pieces (a run of a million identical letters)
//! would make that quadratic, so above `HEAP_THRESHOLD` bytes a binary heap of candidate pairs
//! over a linked list of parts gives O(n log n); stale heap entries are skipped on pop. Both
//! pick the same pair at every step: the minimum by (rank, start offset).

use super::{Rank, RankMap};
use std::cmp::Reverse;
use std::collections::BinaryHeap;

const HEAP_THRESHOLD: usize = 256;

#[inline(always)]
fn rank_of(ranks: &RankMap, bytes: &[u8], limit: Rank) -> Rank {
    match ranks.get(bytes) {
        Some(r) if r < limit => r,
        _ => Rank::MAX,
    }
}

/// The boundaries of `piece`'s parts after merging with tokens of rank below `limit`:
/// part `i` is `piece[b[i]..b[i + 1]]`.
pub fn merge_boundaries(ranks: &RankMap, piece: &[u8], limit: Rank) -> Vec<usize> {
    if piece.len() > HEAP_THRESHOLD {
        merge_with_heap(ranks, piece, limit)
    } else {
        merge_by_scan(ranks, piece, limit)
    }
}

fn merge_by_scan(ranks: &RankMap, piece: &[u8], limit: Rank) -> Vec<usize> {
    let mut bounds: Vec<usize> = (0..=piece.len()).collect();
    // pair_ranks[i]: rank of parts i and i+1 joined.
    let mut pair_ranks: Vec<Rank> = (0..piece.len().saturating_sub(1))
        .map(|i| rank_of(ranks, &piece[i..i + 2], limit))
        .collect();
    loop {
        let mut best = (Rank::MAX, 0);
        for (i, &r) in pair_ranks.iter().enumerate() {
            if r < best.0 {
                best = (r, i);
            }
        }
        let (rank, i) = best;
        if rank == Rank::MAX {
            break;
        }
        bounds.remove(i + 1);
        pair_ranks.remove(i);
        if i > 0 {
            pair_ranks[i - 1] = rank_of(ranks, &piece[bounds[i - 1]..bounds[i + 1]], limit);
        }
        if i < pair_ranks.len() {
            pair_ranks[i] = rank_of(ranks, &piece[bounds[i]..bounds[i + 2]], limit);
        }
    }
    bounds
}

fn merge_with_heap(ranks: &RankMap, piece: &[u8], limit: Rank) -> Vec<usize> {
    let n = piece.len();
    const DEAD: usize = usize::MAX;
    // Parts are named by their start offset. end[s] is the end of the part starting at s (DEAD
    // once merged away); prev[s] the start of the part before it.
    let mut end: Vec<usize> = (1..=n).collect();
    let mut prev: Vec<usize> = (0..n).map(|s| s.wrapping_sub(1)).collect();
    let mut heap = BinaryHeap::with_capacity(n);
    for s in 0..n - 1 {
        let r = rank_of(ranks, &piece[s..s + 2], limit);
        if r != Rank::MAX {
            heap.push(Reverse((r, s, s + 2)));
        }
    }
    while let Some(Reverse((_, left, pair_end))) = heap.pop() {
        // Stale unless both parts still exist exactly as when the pair was pushed.
        let right = end[left];
        if right == DEAD || right >= n || end[right] != pair_end {
            continue;
        }
        end[left] = pair_end;
        end[right] = DEAD;
        if pair_end < n {
            prev[pair_end] = left;
            let r = rank_of(ranks, &piece[left..end[pair_end]], limit);
            if r != Rank::MAX {
                heap.push(Reverse((r, left, end[pair_end])));
            }
        }
        if left > 0 {
            let p = prev[left];
            let r = rank_of(ranks, &piece[p..pair_end], limit);
            if r != Rank::MAX {
                heap.push(Reverse((r, p, pair_end)));
            }
        }
    }
    let mut bounds = vec![0];
    let mut s = 0;
    while s < n {
        s = end[s];
        bounds.push(s);
    }
    bounds
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy_ranks(extra: &[&[u8]]) -> RankMap {
        let mut ranks: RankMap = (0..=255u8).map(|b| (vec![b], b as Rank)).collect();
        for (i, t) in extra.iter().enumerate() {
            ranks.insert(t, 256 + i as Rank);
        }
        ranks
    }

    #[test]
    fn scan_and_heap_agree() {
        let ranks = toy_ranks(&[b"aa", b"ab", b"aaa", b"ba", b"aab", b"aaaa", b"bab"]);
        let mut x: u64 = 12345;
        for len in [2usize, 3, 5, 17, 300, 1000] {
            for _ in 0..20 {
                let piece: Vec<u8> = (0..len)
                    .map(|_| {
                        x = x
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        if (x >> 33).is_multiple_of(3) {
                            b'b'
                        } else {
                            b'a'
                        }
                    })
                    .collect();
                assert_eq!(
                    merge_by_scan(&ranks, &piece, Rank::MAX),
                    merge_with_heap(&ranks, &piece, Rank::MAX)
                );
            }
        }
    }

    #[test]
    fn leftmost_lowest_rank_wins() {
        let ranks = toy_ranks(&[b"aa"]);
        assert_eq!(merge_boundaries(&ranks, b"aaa", Rank::MAX), vec![0, 2, 3]);
    }

    #[test]
    fn million_identical_bytes_is_fast_enough() {
        let ranks = toy_ranks(&[b"aa", b"aaaa", b"aaaaaaaa"]);
        let piece = vec![b'a'; 1_000_000];
        assert_eq!(
            merge_boundaries(&ranks, &piece, Rank::MAX).len() - 1,
            125_000
        );
    }
}
