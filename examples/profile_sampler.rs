//! Times the random-window sampler on a dataset directory at B=64, T=1024, beside the floor
//! it works against: a plain loop copying as many random rows of the same split.
//! `cargo run --release --example profile_sampler -- DATASET_DIR`
use gristmill::shards::sampler::{Mode, Packing};
use gristmill::shards::{Dataset, Sampler, SamplerConfig};
use std::time::Instant;

fn main() {
    let dir = std::env::args().nth(1).expect("a dataset directory");
    let ds = Dataset::open(std::path::Path::new(&dir)).unwrap();
    let split = ds.split("train").unwrap().clone();
    let sampler_split = split.clone();
    let cfg = SamplerConfig {
        batch_size: 64,
        seq_len: 1024,
        stride: 1024,
        mode: Mode::Random,
        seed: 0,
        rank: 0,
        world_size: 1,
        packing: Packing::Off,
        pool: 1024, // best-fit packing only
        pad: 50256,
    };
    let mut sampler = Sampler::new(sampler_split, cfg).unwrap();
    let mut out = vec![0u16; 64 * 1025];
    let mut times = vec![];
    for _ in 0..15 {
        let (n, t) = (5000, Instant::now());
        for _ in 0..n {
            sampler.next_into(&mut out).unwrap();
        }
        times.push(t.elapsed().as_secs_f64() / n as f64 * 1e6);
    }
    // The floor: 64 rows at random multiples of 1024 in the split's first shard, one
    // `copy_from_slice` each (no permutation, no checks, no prefetching).
    let shard_tokens = split.shards()[0].len();
    let mut floor = vec![];
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..15 {
        let (n, t) = (5000, Instant::now());
        for _ in 0..n {
            for row in out.chunks_exact_mut(1025) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let start = (x % ((shard_tokens - 1025) / 1024)) * 1024;
                let src = split.slice::<u16>(start, start + 1025).unwrap().unwrap();
                row.copy_from_slice(src);
            }
        }
        floor.push(t.elapsed().as_secs_f64() / n as f64 * 1e6);
    }
    let gbs = |us: f64| (64 * 1025 * 2) as f64 / us / 1e3;
    for (name, mut t) in [("next_into", times), ("plain row copies", floor)] {
        t.sort_by(|a, b| a.total_cmp(b));
        println!(
            "{name}: median {:.1} us ({:.2} GB/s), best {:.1} us ({:.2} GB/s)",
            t[7],
            gbs(t[7]),
            t[0],
            gbs(t[0])
        );
    }
}
