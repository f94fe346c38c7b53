//! Times the random-window sampler on a dataset directory at B=64, T=1024.
//! `cargo run --release --example profile_sampler -- DATASET_DIR`
use gristmill::shards::sampler::Mode;
use gristmill::shards::{Dataset, Sampler, SamplerConfig};
use std::time::Instant;

fn main() {
    let dir = std::env::args().nth(1).expect("a dataset directory");
    let ds = Dataset::open(std::path::Path::new(&dir)).unwrap();
    let split = ds.split("train").unwrap().clone();
    let cfg = SamplerConfig {
        batch_size: 64,
        seq_len: 1024,
        stride: 1024,
        mode: Mode::Random,
        seed: 0,
        rank: 0,
        world_size: 1,
        packing: false,
        pad: 50256,
    };
    let mut sampler = Sampler::new(split, cfg).unwrap();
    let mut out = vec![0u16; 64 * 1025];
    let mut times = vec![];
    for _ in 0..15 {
        let (n, t) = (5000, Instant::now());
        for _ in 0..n {
            sampler.next_into(&mut out).unwrap();
        }
        times.push(t.elapsed().as_secs_f64() / n as f64 * 1e6);
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let gbs = |us: f64| (64 * 1025 * 2) as f64 / us / 1e3;
    println!(
        "next_into: median {:.1} us ({:.2} GB/s), best {:.1} us ({:.2} GB/s)",
        times[7],
        gbs(times[7]),
        times[0],
        gbs(times[0])
    );
}
