"""The one tokenizer definition shared by the data jobs and the model.

`pipelines/` (Beam) and `model/` (tf.data, the exported SavedModel) never
import each other, yet must tokenize identically. Both build their
tokenizer here, so a vocabulary learned by `pipelines.vocab`, the records
written by `pipelines.pretraining_data` and the strings a served model
receives all go through the same tensorflow-text ops with the same
settings. TensorFlow is imported lazily: `configs` itself stays TF-free.
"""

from __future__ import annotations

from configs import features

# Words longer than this (in UTF-8 bytes) become [UNK], as in BERT.
MAX_BYTES_PER_WORD = 100
SUFFIX_INDICATOR = "##"


def build_tokenizer(vocab: list[str], do_lower_case: bool = True):
    """Returns a `tensorflow_text.FastBertTokenizer` over `vocab`.

    Args:
        vocab: list[str], token i has id i; must contain the special tokens.
        do_lower_case: lower-case, NFD-normalize and strip accents (uncased
            vocabularies, as google-research/bert's `do_lower_case`).

    Output of `.tokenize(strings)`: int64 `RaggedTensor` of shape
    `[batch, (wordpieces)]`.
    """
    import tensorflow as tf
    import tensorflow_text as tf_text

    features.special_token_ids(vocab)  # fail early on a bad vocabulary
    return tf_text.FastBertTokenizer(
        vocab=list(vocab),
        suffix_indicator=SUFFIX_INDICATOR,
        max_bytes_per_word=MAX_BYTES_PER_WORD,
        token_out_type=tf.int64,
        unknown_token=features.UNK,
        lower_case_nfd_strip_accents=do_lower_case,
    )


def build_word_splitter(do_lower_case: bool = True):
    """Returns the pre-tokenizer `FastBertTokenizer` applies before WordPiece.

    tensorflow-text's `BasicTokenizer` with the same normalization: splits on
    whitespace and punctuation, isolates CJK characters. Used to count words
    when learning a vocabulary. Output of `.tokenize(strings)`: string
    `RaggedTensor` `[batch, (words)]`.
    """
    # Not exported at the package top level in tensorflow-text 2.21.
    from tensorflow_text.python.ops.bert_tokenizer import BasicTokenizer

    return BasicTokenizer(lower_case=do_lower_case)


def pack_classification_inputs(
    token_ids: list, *, max_seq_length: int, cls_id: int, sep_id: int
) -> dict:
    """Packs one or two tokenized segments as `[CLS] A [SEP] (B [SEP])`.

    The one definition of classification inputs, used by
    `pipelines.classification_data` (Beam, eager batches), `model.text_data`
    (tf.data) and the exported SavedModel (graph), so all three give the same
    ids for the same text. Over-long pairs are trimmed one token at a time
    from the longer segment (tensorflow-text's `RoundRobinTrimmer`), which
    matches google-research/bert's `_truncate_seq_pair`.

    Args:
        token_ids: list of one or two int `RaggedTensor`s `[batch, (tokens)]`
            of wordpiece ids without special tokens (`build_tokenizer` output).
        max_seq_length: int, length of every output row, specials included.
        cls_id, sep_id: ids of `[CLS]` and `[SEP]` in the vocabulary.

    Returns:
        dict with `input_ids`, `input_mask`, `segment_ids`: int64 tensors
        `[batch, max_seq_length]`, zero-padded.
    """
    import tensorflow_text as tf_text

    if len(token_ids) not in (1, 2):
        raise ValueError("pack_classification_inputs takes one or two segments")
    # Room for [CLS] and one [SEP] per segment.
    budget = max_seq_length - 1 - len(token_ids)
    trimmed = tf_text.RoundRobinTrimmer(max_seq_length=budget).trim(token_ids)
    ids, segments = tf_text.combine_segments(
        trimmed, start_of_sequence_id=cls_id, end_of_segment_id=sep_id
    )
    input_ids, input_mask = tf_text.pad_model_inputs(ids, max_seq_length)
    segment_ids, _ = tf_text.pad_model_inputs(segments, max_seq_length)
    return {
        features.INPUT_IDS: input_ids,
        features.INPUT_MASK: input_mask,
        features.SEGMENT_IDS: segment_ids,
    }
