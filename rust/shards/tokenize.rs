//! `gristmill tokenize` for JSON-lines files, as one pipeline whose stages overlap: reader
//! threads decompress (the next file while this one is parsed), the calling thread parses (on
//! the pool) and batches, an encoder thread encodes (on the pool) and writes. Without the
//! encoder thread, parsing batch `k + 1` would wait for encoding batch `k` to end, and the tail
//! of every batch (its last documents, on fewer threads than the pool has) would leave cores
//! idle.
//!
//! Memory is bounded by the batch size: the two readers hold up to a batch of input ahead
//! between them, one parsed batch waits in the channel, one is being encoded and one written.

use super::jsonl::{read_jsonl_batches, DocBatch, JsonlFields};
use super::overlapped::OverlappedWriter;
use super::writer::DatasetWriter;
use super::ShardError;
use crate::bpe::Encoder;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

/// Encodes the records of `paths`, in order (after the first `skip`), into `writer`, in
/// batches of at most `max_docs` documents or about `max_bytes` of text. `report(docs, bytes, tokens)` is called
/// between batches with the documents and bytes read and the tokens written since its last
/// call (an error from it stops the run). Returns the records in the files, skipped ones
/// included. The bytes written are those of [`DatasetWriter::add_texts`] called batch by batch.
pub fn tokenize_jsonl(
    writer: &mut DatasetWriter,
    encoder: &Encoder,
    paths: &[PathBuf],
    fields: &JsonlFields,
    (skip, max_docs, max_bytes): (u64, usize, usize),
    mut report: impl FnMut(usize, usize, u64) -> Result<(), ShardError>,
) -> Result<u64, ShardError> {
    let written = AtomicU64::new(0);
    let mut reported = 0u64;
    let mut report_since = |docs: usize, bytes: usize, written: &AtomicU64| {
        let now = written.load(Ordering::Relaxed);
        let tokens = now - std::mem::replace(&mut reported, now);
        report(docs, bytes, tokens)
    };
    let records = std::thread::scope(|scope| {
        // One parsed batch waits while the one before it is encoded.
        let (tx, rx) = mpsc::sync_channel::<DocBatch>(1);
        let written = &written;
        let encoding = scope.spawn(move || -> Result<(), ShardError> {
            let mut overlapped = OverlappedWriter::new(writer, encoder);
            for batch in rx {
                let n = overlapped.push(batch.texts, batch.ids)?;
                written.fetch_add(n, Ordering::Relaxed);
            }
            written.fetch_add(overlapped.finish()?, Ordering::Relaxed);
            Ok(())
        });
        let read = read_jsonl_batches(paths, fields, skip, max_docs, max_bytes, |batch| {
            let (docs, bytes) = (batch.texts.len(), batch.bytes);
            // A closed channel means the encoder stopped: its error is returned below.
            tx.send(batch)
                .map_err(|_| ShardError::Settings("the encoder stopped".into()))?;
            report_since(docs, bytes, written)
        });
        drop(tx); // ends the encoder's loop
        let encoded = encoding.join().expect("the encoder thread does not panic");
        encoded?;
        read
    })?;
    report_since(0, 0, &written)?;
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shards::jsonl::tests::fields;
    use crate::shards::manifest::SplitRule;
    use crate::shards::writer::tests::{byte_encoder, settings, snapshot, texts};
    use crate::shards::EotMode;
    use std::fs;
    use std::path::{Path, PathBuf};

    /// A JSON-lines file of `docs` (ids `id-<text>`) in `dir`, zstd-compressed for `.zst`.
    fn input(dir: &Path, name: &str, docs: &[String], tail: &str) -> PathBuf {
        let mut body: String = docs
            .iter()
            .map(|t| format!("{{\"id\": \"id-{t}\", \"text\": \"{t}\"}}\n"))
            .collect();
        body.push_str(tail);
        let path = dir.join(name);
        if name.ends_with(".zst") {
            fs::write(&path, zstd::encode_all(body.as_bytes(), 3).unwrap()).unwrap();
        } else {
            fs::write(&path, body).unwrap();
        }
        path
    }

    /// Tokenizes `inputs` into a new dataset `out` in batches of `batch` documents.
    fn run(
        inputs: &[PathBuf],
        out: &Path,
        shard_size: u64,
        batch: usize,
        report: impl FnMut(usize, usize, u64) -> Result<(), ShardError>,
    ) -> Result<u64, ShardError> {
        let s = settings(shard_size, EotMode::Append, SplitRule::ValFraction(0.1));
        let mut w = DatasetWriter::open(out, s)?;
        let n = tokenize_jsonl(
            &mut w,
            &byte_encoder(),
            inputs,
            &fields(),
            (0, batch, 1 << 20),
            report,
        )?;
        w.finish()?;
        Ok(n)
    }

    #[test]
    fn writes_what_add_texts_writes_and_reports_every_token() {
        let tmp = tempfile::tempdir().unwrap();
        let docs = texts(200);
        let path = input(tmp.path(), "in.jsonl.zst", &docs, "");
        let (mut docs_seen, mut tokens) = (0, 0);
        let piped = tmp.path().join("piped");
        let n = run(&[path], &piped, 64, 7, |d, _, t| {
            docs_seen += d;
            tokens += t;
            Ok(())
        })
        .unwrap();
        assert_eq!((n, docs_seen), (200, 200));
        // Every document's bytes and its end-of-text.
        let all: u64 = docs.iter().map(|t| t.len() as u64 + 1).sum();
        assert_eq!(tokens, all);

        let direct = tmp.path().join("direct");
        let s = settings(64, EotMode::Append, SplitRule::ValFraction(0.1));
        let mut w = DatasetWriter::open(&direct, s).unwrap();
        for chunk in docs.chunks(7) {
            let ids: Vec<String> = chunk.iter().map(|t| format!("id-{t}")).collect();
            w.add_texts(&byte_encoder(), chunk, &ids).unwrap();
        }
        w.finish().unwrap();
        assert_eq!(snapshot(&piped), snapshot(&direct));
    }

    #[test]
    fn many_files_write_what_their_concatenation_writes() {
        let tmp = tempfile::tempdir().unwrap();
        let docs = texts(300);
        let whole = input(tmp.path(), "whole.jsonl", &docs, "");
        // Uneven parts, compressed and not, more of them than files read at once.
        let cuts = [0, 1, 40, 41, 150, 220, 300];
        let parts: Vec<PathBuf> = cuts
            .windows(2)
            .enumerate()
            .map(|(i, w)| {
                let name = format!("part{i}.jsonl{}", if i % 2 == 0 { ".zst" } else { "" });
                input(tmp.path(), &name, &docs[w[0]..w[1]], "")
            })
            .collect();
        let (one, many) = (tmp.path().join("one"), tmp.path().join("many"));
        assert_eq!(run(&[whole], &one, 64, 7, |_, _, _| Ok(())).unwrap(), 300);
        assert_eq!(run(&parts, &many, 64, 7, |_, _, _| Ok(())).unwrap(), 300);
        assert_eq!(snapshot(&one), snapshot(&many));
    }

    #[test]
    fn a_bad_line_stops_the_run_with_its_number() {
        let tmp = tempfile::tempdir().unwrap();
        let tail = "{\"text\": 5}\n{\"text\": \"after\"}\n";
        let path = input(tmp.path(), "in.jsonl", &texts(100), tail);
        let err = run(&[path], &tmp.path().join("out"), 64, 4, |_, _, _| Ok(())).unwrap_err();
        assert!(matches!(err, ShardError::Input { line: 101, .. }), "{err}");
    }

    #[test]
    fn a_failing_report_or_writer_stops_the_run() {
        let tmp = tempfile::tempdir().unwrap();
        let path = input(tmp.path(), "in.jsonl", &texts(500), "");
        let mut calls = 0;
        let err = run(
            std::slice::from_ref(&path),
            &tmp.path().join("a"),
            16,
            4,
            |_, _, _| {
                calls += 1;
                Err(ShardError::Settings("interrupted".into()))
            },
        )
        .unwrap_err();
        assert_eq!((calls, err.to_string()), (1, "interrupted".to_string()));

        // The output directory turns into a file once the writer is open: the writer's error
        // comes back, not the reader's "the encoder stopped", and nothing waits forever.
        let out = tmp.path().join("b");
        let s = settings(16, EotMode::Append, SplitRule::ValFraction(0.0));
        let mut w = DatasetWriter::open(&out, s).unwrap();
        fs::remove_dir_all(&out).unwrap();
        fs::write(&out, b"").unwrap();
        let batches = (0, 4, 1 << 20);
        let err = tokenize_jsonl(
            &mut w,
            &byte_encoder(),
            &[path],
            &fields(),
            batches,
            |_, _, _| Ok(()),
        )
        .unwrap_err();
        assert!(matches!(err, ShardError::Io { .. }), "{err}");
    }
}
