"""WordPiece-tokenizes documents in batches: `TokenizeDocuments`.

The tokenizer is `configs.tokenization.build_tokenizer` (tensorflow-text's
`FastBertTokenizer`, the one every part of the project uses), built once per
DoFn instance in `setup()` and applied to all the lines of a batch of
documents in one call: per-string calls are dominated by TensorFlow's op
dispatch (about 70x slower measured on this corpus).
"""

from __future__ import annotations

import apache_beam as beam
import numpy as np

from configs import features, tokenization
from pipelines import text

# === Counters (namespace TokenizeDocuments) ===
NAMESPACE = "TokenizeDocuments"
DOCUMENTS_TOKENIZED = "documents-tokenized"
DOCUMENTS_EMPTY = "documents-skipped-empty"
SENTENCES = "sentences-tokenized"
SENTENCES_EMPTY = "sentences-skipped-without-tokens"
TOKENS = "tokens"
TOKENS_UNKNOWN = "tokens-unknown"

# Batches are sized in lines: enough to amortize one TensorFlow call, few
# enough to keep a batch of long documents in tens of MB.
MIN_BATCH_LINES = 256
MAX_BATCH_LINES = 16384


class _TokenizeBatchFn(beam.DoFn):
    """list of `(doc_id, lines)` -> `(fingerprint, flat, ends)` per document."""

    def __init__(self, vocab_path: str, do_lower_case: bool):
        self._vocab_path = vocab_path  # the vocab is read in setup(), not pickled
        self._do_lower_case = do_lower_case

    def setup(self):
        import tensorflow as tf

        vocab = features.read_vocab(self._vocab_path)
        self._tokenizer = tokenization.build_tokenizer(vocab, self._do_lower_case)
        self._unk_id = features.special_token_ids(vocab)[features.UNK]
        # Ids go through the bucket spill files: 2 bytes each when they fit.
        self._dtype = np.uint16 if len(vocab) <= 1 << 16 else np.int32
        self._tf = tf
        self._count = text.counter_fn(NAMESPACE)
        self._progress = text.Progress("TokenizeDocuments", "documents")

    def process(self, batch):
        lines = [line for _, doc_lines in batch for line in doc_lines]
        if lines:
            ragged = self._tokenizer.tokenize(self._tf.constant(lines))
            values = ragged.flat_values.numpy().astype(self._dtype)
            splits = ragged.row_splits.numpy()
        else:
            values, splits = np.zeros(0, self._dtype), np.zeros(1, np.int64)
        self._count(TOKENS, len(values))
        self._count(TOKENS_UNKNOWN, int(np.count_nonzero(values == self._unk_id)))
        self._progress.add(len(batch))
        line = 0
        for _, doc_lines in batch:
            n = len(doc_lines)
            starts, ends = splits[line : line + n], splits[line + 1 : line + n + 1]
            line += n
            keep = ends > starts  # lines of only control characters vanish
            self._count(SENTENCES, int(keep.sum()))
            self._count(SENTENCES_EMPTY, int(n - keep.sum()))
            if not keep.any():
                self._count(DOCUMENTS_EMPTY)
                continue
            if keep.all():
                flat = values[starts[0] : ends[-1]]
            else:
                starts, ends = starts[keep], ends[keep]
                flat = np.concatenate([values[s:e] for s, e in zip(starts, ends)])
            self._count(DOCUMENTS_TOKENIZED)
            yield (
                text.fingerprint(doc_lines),
                flat,
                np.cumsum(ends - starts).astype(np.int32),
            )


class TokenizeDocuments(beam.PTransform):
    """Tokenizes documents with tensorflow-text, in batches.

    Input: `(doc_id: str, lines: list[str])`. Output: one
    `(fingerprint: int, flat: np.ndarray, ends: np.ndarray[int32])` per
    document with at least one token: the WordPiece ids (uint16 for
    vocabularies of at most 65,536 tokens, else int32) of all its
    sentences back to back, and each sentence's end offset in `flat`.
    `fingerprint` is `text.fingerprint(lines)`, the document's identity for
    every later random choice. Documents without tokens are counted
    (`documents-skipped-empty`), not silently lost.
    """

    def __init__(self, *, vocab_path: str, do_lower_case: bool = True):
        super().__init__()
        self._vocab_path = vocab_path
        self._do_lower_case = do_lower_case

    def expand(self, docs):
        return (
            docs
            | "BatchDocuments"
            >> beam.BatchElements(
                min_batch_size=MIN_BATCH_LINES,
                max_batch_size=MAX_BATCH_LINES,
                element_size_fn=lambda doc: max(1, len(doc[1])),
            )
            | "Tokenize"
            >> beam.ParDo(_TokenizeBatchFn(self._vocab_path, self._do_lower_case))
        )
