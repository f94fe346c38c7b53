//! Overlapping the two halves of writing a dataset: the cores encode the next batch while
//! the batch before it is converted, hashed and written by [`DatasetWriter`].

use super::writer::{encode_planned, DatasetWriter, EncodedBatch};
use super::ShardError;
use crate::bpe::Encoder;

/// Feeds a [`DatasetWriter`] batch after batch, encoding each batch while the one before it
/// is written (so the cores are not idle while tokens are converted, hashed and written).
/// At most two batches are held: the one being written (as tokens) and the one being encoded.
/// The bytes written are those of [`DatasetWriter::add_texts`] called batch by batch; call
/// [`finish`](Self::finish) to write the last batch.
pub struct OverlappedWriter<'a> {
    writer: &'a mut DatasetWriter,
    encoder: &'a Encoder,
    /// The batch encoded but not yet written, with its source ids.
    pending: Option<(EncodedBatch, Vec<String>)>,
    /// The input position of the next batch given.
    next: u64,
}

impl<'a> OverlappedWriter<'a> {
    pub fn new(writer: &'a mut DatasetWriter, encoder: &'a Encoder) -> OverlappedWriter<'a> {
        let next = writer.next_position();
        OverlappedWriter {
            writer,
            encoder,
            pending: None,
            next,
        }
    }

    /// Takes the next input documents; encodes them while writing the batch before. Returns
    /// the tokens written (those of the batch before).
    pub fn push(&mut self, texts: Vec<String>, ids: Vec<String>) -> Result<u64, ShardError> {
        self.writer.check_batch(texts.len(), ids.len())?;
        let actions = self.writer.plan(self.next, texts.len());
        let first = self.next;
        self.next += texts.len() as u64;
        let pending = self.pending.take();
        let (writer, encoder) = (&mut *self.writer, self.encoder);
        let (written, encoded) = crate::parallel::install(|| {
            rayon::join(
                || match &pending {
                    Some((batch, ids)) => writer.write_encoded(batch, ids),
                    None => Ok(0),
                },
                || encode_planned(encoder, first, &texts, actions),
            )
        });
        drop(texts);
        self.pending = Some((encoded, ids));
        written
    }

    /// Writes the last batch; returns its tokens written.
    pub fn finish(mut self) -> Result<u64, ShardError> {
        match self.pending.take() {
            Some((batch, ids)) => self.writer.write_encoded(&batch, &ids),
            None => Ok(0),
        }
    }
}
