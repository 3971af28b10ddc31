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
