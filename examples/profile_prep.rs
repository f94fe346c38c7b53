//! Times the document filters, and the parts of the Gopher repetition filter, on a JSONL file
//! of documents with a `text` field, on one thread.
//! `cargo run --release --example profile_prep -- FILE.jsonl`
use gristmill::text::gopher::{repetition, GopherRepetitionConfig};
use gristmill::text::words::split_words;
use gristmill::text::Pipeline;
use std::time::Instant;

fn main() {
    let path = std::env::args()
        .nth(1)
        .expect("usage: profile_prep FILE.jsonl");
    let raw = std::fs::read_to_string(&path).expect("readable file");
    let docs: Vec<String> = raw
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("a JSON line");
            v["text"].as_str().expect("a text field").to_string()
        })
        .collect();
    let mb = docs.iter().map(|d| d.len()).sum::<usize>() as f64 / 1e6;
    println!("{} documents, {mb:.1} MB", docs.len());
    let time = |name: &str, f: &dyn Fn(&str) -> usize| {
        let t = Instant::now();
        let n: usize = docs.iter().map(|d| f(d)).sum();
        let s = t.elapsed().as_secs_f64();
        println!(
            "{name:<28}{:>8.1} MB/s{:>8.0} docs/s  ({n})",
            mb / s,
            docs.len() as f64 / s
        );
    };
    let full = GopherRepetitionConfig::default();
    let lines_only = GopherRepetitionConfig {
        top_n_grams: vec![],
        dup_n_grams: vec![],
        ..Default::default()
    };
    let top_only = GopherRepetitionConfig {
        dup_n_grams: vec![],
        dup_line_frac: None,
        dup_para_frac: None,
        dup_line_char_frac: None,
        dup_para_char_frac: None,
        ..Default::default()
    };
    let dup_only = GopherRepetitionConfig {
        top_n_grams: vec![],
        dup_n_grams: full.dup_n_grams.clone(),
        ..top_only.clone()
    };
    if std::env::args().nth(2).as_deref() == Some("language-long") {
        // One long page (190,000 characters, C4's cap) against the same text in short pages.
        let long: String = docs.concat().chars().take(190_000).collect();
        let p = Pipeline::from_json(r#"[{"type": "language"}]"#).unwrap();
        for _ in 0..3 {
            let t = Instant::now();
            let mut st = vec![gristmill::text::FilterStats::default()];
            let out = p.apply(&long, &mut st);
            println!("language, 190k-char page: {:?} {out:?}", t.elapsed());
        }
        return;
    }
    if std::env::args().nth(2).as_deref() == Some("split") {
        for _ in 0..3 {
            time("split_words", &|d| split_words(d).len());
        }
        return;
    }
    if std::env::args().nth(2).as_deref() == Some("repetition") {
        // For `perf record`: the whole repetition filter only.
        for _ in 0..3 {
            time("repetition: all", &|d| {
                repetition(&full, d).ne(&gristmill::text::Verdict::Keep) as usize
            });
        }
        return;
    }
    for _ in 0..2 {
        time("split_words", &|d| split_words(d).len());
        time("repetition: lines+paras", &|d| {
            repetition(&lines_only, d).ne(&gristmill::text::Verdict::Keep) as usize
        });
        time("repetition: top n-grams", &|d| {
            repetition(&top_only, d).ne(&gristmill::text::Verdict::Keep) as usize
        });
        time("repetition: dup n-grams", &|d| {
            repetition(&dup_only, d).ne(&gristmill::text::Verdict::Keep) as usize
        });
        time("repetition: all", &|d| {
            repetition(&full, d).ne(&gristmill::text::Verdict::Keep) as usize
        });
        for kind in ["language", "fineweb", "gopher_quality", "c4"] {
            let p = Pipeline::from_json(&format!(r#"[{{"type": "{kind}"}}]"#)).unwrap();
            time(kind, &|d| {
                let mut st = vec![gristmill::text::FilterStats::default()];
                matches!(
                    p.apply(d, &mut st),
                    gristmill::text::Outcome::Removed { .. }
                ) as usize
            });
        }
    }
}
