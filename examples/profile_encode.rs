//! Times the encoder's stages on a file of documents separated by U+001E.
//! `cargo run --release --example profile_encode -- FILE RANKS`
use gristmill::bpe::{vocab, Encoder, Pattern};
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let text = std::fs::read_to_string(&args[1]).unwrap();
    let docs: Vec<&str> = text.split('\u{1e}').collect();
    let ranks = vocab::read_tiktoken(std::path::Path::new(&args[2])).unwrap();
    let enc = Encoder::new(ranks, vec![], Pattern::new("gpt2").unwrap()).unwrap();
    let mb = text.len() as f64 / 1e6;
    for _ in 0..2 {
        let t = Instant::now();
        let mut n = 0;
        for d in &docs {
            enc.pattern().split(d, |_| n += 1).unwrap();
        }
        println!(
            "split:  {:.1} MB/s ({n} pieces)",
            mb / t.elapsed().as_secs_f64()
        );
        let t = Instant::now();
        let n: usize = docs.iter().map(|d| enc.count_ordinary(d)).sum();
        println!(
            "count:  {:.1} MB/s ({n} tokens)",
            mb / t.elapsed().as_secs_f64()
        );
        let t = Instant::now();
        let n: usize = docs.iter().map(|d| enc.encode_ordinary(d).len()).sum();
        println!(
            "encode: {:.1} MB/s ({n} tokens)",
            mb / t.elapsed().as_secs_f64()
        );
    }
}
